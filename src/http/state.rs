//! `POST stateUrl`: pause, resume (`upload`) or cancel a task.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::openapi::{Refusal, StateRequest};
use super::{ok, parse_task_id, task_query};
use crate::service::{RequestedState, TaskRef, Uploads};

/// A state request is a few dozen bytes.
const MAX_STATE_BODY: usize = 64 * 1024;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateJson {
    task_id: i64,
    #[schema(schema_with = super::openapi::task_status)]
    status: &'static str,
}

/// Pauses, resumes (`upload`) or cancels a task.
#[utoipa::path(
    post,
    path = "/api/upload/files/state",
    tag = "tasks",
    params(
        ("taskId" = Option<i64>, Query, description = "The task, from its URL (or given in the body)"),
        ("key" = Option<String>, Query, description = "The task's upload key, from its URL")
    ),
    request_body(content = StateRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "retCode 0: the task's status now", body = super::Envelope<StateJson>),
        (status = 400, description = "retCode 6: a field is wrong", body = Refusal),
        (status = 404, description = "retCode 2: no such task, or a wrong key", body = Refusal),
        (status = 409, description = "retCode 5 or 11: already in that state, or the task has ended", body = Refusal),
        (status = 500, description = "retCode 3 or 20: disk or system error", body = Refusal),
    )
)]
pub async fn change_state(
    uploads: web::Data<Uploads>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (url_task_id, key) = task_query(&req)?;
    let body = match body.to_bytes_limited(MAX_STATE_BODY).await {
        Ok(Ok(bytes)) => bytes,
        _ => return Err(ApiError::field("body", "cannot be read or is too large")),
    };
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| ApiError::field("body", format!("must be a JSON object: {e}")))?;
    let body_task_id = match json.get("taskId") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            Some(n.as_i64().ok_or_else(|| ApiError::field("taskId", "must be an integer"))?)
        }
        Some(serde_json::Value::String(text)) => Some(parse_task_id(text)?),
        Some(_) => return Err(ApiError::field("taskId", "must be an integer")),
    };
    let task_id = match (url_task_id, body_task_id) {
        (Some(url), Some(body)) if url != body => {
            return Err(ApiError::field("taskId", "the body's taskId differs from the URL's"))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Err(ApiError::field("taskId", "is required")),
    };
    let wanted = match json.get("status") {
        Some(serde_json::Value::String(text)) => {
            RequestedState::parse(text).map_err(crate::service::UploadError::from)?
        }
        _ => return Err(ApiError::field("status", "must be pause, upload or cancel")),
    };
    let status = uploads.change_state(&TaskRef { task_id, key }, wanted).await?;
    Ok(ok(StateJson { task_id, status: status.as_str() }))
}
