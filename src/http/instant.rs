//! `POST instantUrl`: the client's answer to an instant upload's challenge (docs/API.md, section 8).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::openapi::{InstantAnswer, Refusal, TaskParams};
use super::{ok, task_ref};
use crate::service::Uploads;

/// An answer is a few dozen bytes.
const MAX_ANSWER_BODY: usize = 64 * 1024;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstantFinished {
    task_id: i64,
    #[schema(schema_with = super::openapi::task_status)]
    task_status: &'static str,
    /// Always true: the task was finished by the proof.
    instant: bool,
}

/// Answers the challenge of a create with `"instant": true`: `{"proof": md5(nonce || ranges)}`.
#[utoipa::path(
    post,
    path = "/api/upload/files/instant",
    tag = "tasks",
    params(TaskParams),
    request_body(content = InstantAnswer, content_type = "application/json"),
    responses(
        (status = 200, description = "retCode 0: the proof is right, the task is finished", body = super::Envelope<InstantFinished>),
        (status = 400, description = "retCode 7: a wrong proof (upload the bytes), or 6: a bad field", body = Refusal),
        (status = 404, description = "retCode 2: no such task, or a wrong key", body = Refusal),
        (status = 409, description = "retCode 12: no challenge, expired, answers used up or the file changed \
            (upload the bytes); 4 or 11: paused or ended", body = Refusal),
        (status = 500, description = "retCode 3 or 20: disk or system error", body = Refusal),
    )
)]
pub async fn answer(
    uploads: web::Data<Uploads>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let task = task_ref(&req)?;
    let body = match body.to_bytes_limited(MAX_ANSWER_BODY).await {
        Ok(Ok(bytes)) => bytes,
        _ => return Err(ApiError::field("body", "cannot be read or is too large")),
    };
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| ApiError::field("body", format!("must be a JSON object: {e}")))?;
    let proof = match json.get("proof") {
        Some(serde_json::Value::String(proof)) => proof,
        _ => return Err(ApiError::field("proof", "must be the md5 of the nonce and the challenge's ranges, in hex")),
    };
    let status = uploads.answer_challenge(&task, proof).await?;
    Ok(ok(InstantFinished { task_id: task.task_id, task_status: status.as_str(), instant: true }))
}
