//! Thin HTTP handlers: extract, call the service, map the outcome to the JSON envelope.

mod block;
pub mod body_guard;
pub mod cors;
mod create_task;
pub mod error;
pub mod ietf;
mod info;
mod instant;
pub mod observe;
pub mod openapi;
mod ops;
mod state;
pub mod tus;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, Resource, Route};
use serde::{Deserialize, Serialize};

use crate::service::TaskRef;
use error::ApiError;

pub const NEW_TASK_PATH: &str = "/api/upload/new/task";
pub const BLOCK_PATH: &str = "/api/upload/files/block";
pub const BLOCKS_INFO_PATH: &str = "/api/upload/files/blocks/info";
pub const STATE_PATH: &str = "/api/upload/files/state";
pub const INSTANT_PATH: &str = "/api/upload/files/instant";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
pub const METRICS_PATH: &str = "/metrics";
pub const OPENAPI_PATH: &str = "/api/openapi.json";

pub use cors::cors;
pub use create_task::create_from_body;

/// Mounts every endpoint. A wrong method on a known path, and an unknown path, still get the
/// JSON envelope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint(NEW_TASK_PATH, web::post().to(create_task::create_task)))
        .service(endpoint(BLOCK_PATH, web::post().to(block::upload_block)))
        .service(endpoint(BLOCKS_INFO_PATH, web::get().to(info::blocks_info)))
        .service(endpoint(STATE_PATH, web::post().to(state::change_state)))
        .service(endpoint(INSTANT_PATH, web::post().to(instant::answer)))
        .service(endpoint(HEALTHZ_PATH, web::get().to(ops::healthz)))
        .service(endpoint(READYZ_PATH, web::get().to(ops::readyz)))
        .service(endpoint(METRICS_PATH, web::get().to(ops::metrics)))
        .service(endpoint(OPENAPI_PATH, web::get().to(ops::openapi)))
        .configure(tus::configure)
        .default_service(web::to(error::unknown_path));
}

fn endpoint(path: &str, route: Route) -> Resource {
    web::resource(path).route(route).default_service(web::to(error::method_not_allowed))
}

/// `{"retCode": …, "status": …, "data": …}`, the reply of every endpoint.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T: Serialize> {
    pub ret_code: &'static str,
    pub status: String,
    pub data: T,
}

/// The retCode a reply carried, kept on the response for the request log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetCode(pub &'static str);

/// An envelope reply; every reply of the task endpoints is built here.
fn envelope<T: Serialize>(http: StatusCode, ret_code: &'static str, status: String, data: T) -> HttpResponse {
    let mut response = HttpResponse::build(http).json(Envelope { ret_code, status, data });
    response.extensions_mut().insert(RetCode(ret_code));
    response
}

fn ok<T: Serialize>(data: T) -> HttpResponse {
    envelope(StatusCode::OK, "0", "ok".into(), data)
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
