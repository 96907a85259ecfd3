//! Thin HTTP handlers: extract, call the service, map the outcome to the JSON envelope.

mod block;
pub mod body_guard;
mod create_task;
pub mod error;
mod info;
mod state;

use actix_web::{web, HttpRequest, HttpResponse, Resource, Route};
use serde::{Deserialize, Serialize};

use crate::service::TaskRef;
use error::ApiError;

pub const NEW_TASK_PATH: &str = "/api/upload/new/task";
pub const BLOCK_PATH: &str = "/api/upload/files/block";
pub const BLOCKS_INFO_PATH: &str = "/api/upload/files/blocks/info";
pub const STATE_PATH: &str = "/api/upload/files/state";

/// Mounts every endpoint. A wrong method on a known path, and an unknown path, still get the
/// JSON envelope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint(NEW_TASK_PATH, web::post().to(create_task::create_task)))
        .service(endpoint(BLOCK_PATH, web::post().to(block::upload_block)))
        .service(endpoint(BLOCKS_INFO_PATH, web::get().to(info::blocks_info)))
        .service(endpoint(STATE_PATH, web::post().to(state::change_state)))
        .default_service(web::to(error::unknown_path));
}

fn endpoint(path: &str, route: Route) -> Resource {
    web::resource(path).route(route).default_service(web::to(error::method_not_allowed))
}

/// `{"retCode": …, "status": …, "data": …}`, the reply of every endpoint.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T: Serialize> {
    pub ret_code: &'static str,
    pub status: String,
    pub data: T,
}

fn ok<T: Serialize>(data: T) -> HttpResponse {
    HttpResponse::Ok().json(Envelope { ret_code: "0", status: "ok".into(), data })
}

#[derive(Deserialize)]
struct TaskQuery {
    #[serde(rename = "taskId")]
    task_id: Option<String>,
    key: Option<String>,
}

/// The `taskId` and `key` of the URL. `taskId` may be missing where the body can carry it.
fn task_query(req: &HttpRequest) -> Result<(Option<i64>, Option<String>), ApiError> {
    let query = web::Query::<TaskQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::field("query", format!("cannot be read: {e}")))?
        .into_inner();
    let task_id = query.task_id.as_deref().map(parse_task_id).transpose()?;
    Ok((task_id, query.key))
}

fn parse_task_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| ApiError::field("taskId", "must be an integer"))
}

/// The task named by the URL, which must carry `taskId`.
fn task_ref(req: &HttpRequest) -> Result<TaskRef, ApiError> {
    match task_query(req)? {
        (Some(task_id), key) => Ok(TaskRef { task_id, key }),
        (None, _) => Err(ApiError::field("taskId", "is required")),
    }
}

/// The public URL of `path` for the task.
fn task_url(base: &str, path: &str, task_id: i64, key: &str) -> String {
    format!("{base}{path}?taskId={task_id}&key={key}")
}
