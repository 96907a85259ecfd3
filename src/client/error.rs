//! Why the client stopped, said so that a person knows what to do next.

use std::io;
use std::path::PathBuf;

use crate::domain::TaskStatus;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A bad argument: an unusable URL, a block size of zero, …
    #[error("{0}")]
    Usage(String),
    /// Network errors or 5xx replies on every try.
    #[error("gave up {what} after {attempts} attempts: {last}")]
    GaveUp { what: String, attempts: u32, last: String },
    /// A 4xx reply: the server refused, trying again would not help.
    #[error("{what}: refused with HTTP {http}, retCode {ret_code}: {status}")]
    Refused { what: String, http: u16, ret_code: String, status: String },
    #[error(
        "task {task_id} is paused: resume it with `fupload-client resume --url '{state_url}'`, then run the upload again"
    )]
    Paused { task_id: i64, state_url: String },
    #[error("{}", ended_message(*task_id, *status))]
    TaskEnded { task_id: i64, status: TaskStatus },
    #[error("unexpected reply {what}: {problem}")]
    BadReply { what: String, problem: String },
    #[error("task {task_id}: the server still expects bytes that were sent and accepted; giving up")]
    NoProgress { task_id: i64 },
}

fn ended_message(task_id: i64, status: TaskStatus) -> String {
    match status {
        TaskStatus::Fail => format!(
            "task {task_id} failed: the server's md5 of the whole file differs from the fileMd5 given at creation \
             (did the file change during the upload?), or the server could not store the file; \
             run the upload again to start a new task"
        ),
        TaskStatus::Cancel => format!("task {task_id} was cancelled"),
        TaskStatus::Expire => format!(
            "task {task_id} expired: no block arrived for longer than the server's taskTimeout; \
             run the upload again to start a new task"
        ),
        other => format!("task {task_id} is {other} and takes no more blocks"),
    }
}
