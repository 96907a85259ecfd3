//! Callbacks to business servers: the body, and the outbox worker that delivers it.

mod worker;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::{CallbackCode, Protocol};
use crate::store::Task;

pub use worker::{backoff, run_outbox};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallbackBody<'a> {
    ret_code: &'a str,
    status: &'a str,
    /// The task's feedBackParameter, verbatim.
    data: &'a RawValue,
    task_id: i64,
    user_id: &'a str,
    file_name: &'a str,
    file_size: u64,
    /// The md5 fupload computed, or the task's own where the finish was not reached.
    file_md5: Option<&'a str>,
    store_path: &'a str,
    /// The front end the task was uploaded through, "tus" or "ietf"; absent for the fupload
    /// protocol, whose callback stays as the original's.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a str>,
    /// Only there when the task was finished by an instant upload.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    instant: bool,
}

/// The JSON POSTed to the business server when `task` ends with `code`. `store_path` is the
/// final path of a finished file, else where the file would have gone. `instant`: the task was
/// finished by an instant upload (`"instant": true` in the body).
pub fn body(task: &Task, code: CallbackCode, store_path: &str, instant: bool) -> String {
    let null = RawValue::NULL;
    let data = serde_json::from_str::<&RawValue>(&task.spec.feedback_parameter).unwrap_or(null);
    let body = CallbackBody {
        ret_code: code.ret_code(),
        status: code.status_text(),
        data,
        task_id: task.task_id,
        user_id: &task.spec.user_id,
        file_name: task.spec.file_name.as_str(),
        file_size: task.spec.file_size.bytes(),
        file_md5: task.spec.file_md5.as_ref().map(|md5| md5.as_str()),
        store_path,
        protocol: (task.spec.protocol != Protocol::Fupload).then(|| task.spec.protocol.as_str()),
        instant,
    };
    // Serialising strings, integers and already-valid JSON cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}
