//! `POST /api/upload/new/task`: the business server creates (or resumes) a task.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::openapi::{CreateTaskRequest, Refusal};
use super::{ok, task_url, BLOCKS_INFO_PATH, BLOCK_PATH, INSTANT_PATH, STATE_PATH};
use crate::service::{CreateTaskJson, UploadError, Uploads};
use crate::telemetry::metrics;

/// Bodies larger than this are refused: a create request is a few hundred bytes plus the
/// business server's feedBackParameter.
pub const MAX_CREATE_BODY: usize = 1 << 20;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskUrls {
    task_id: i64,
    upload_url: String,
    blocks_url: String,
    state_url: String,
    /// With a `challenge` only: where to answer it.
    #[serde(skip_serializing_if = "Option::is_none")]
    instant_url: Option<String>,
    /// Only for a create with `"instant": true` whose file is stored already (docs/API.md, section 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge: Option<ChallengeJson>,
}

/// The challenge of an instant upload.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeJson {
    /// 32 hex digits; the proof hashes them as ASCII text first.
    nonce: String,
    /// The byte ranges (inclusive) whose bytes follow the nonce in the proof, in this order.
    ranges: Vec<RangeJson>,
    /// Seconds from now the answer may take.
    expires_in: u64,
    /// Answers this task may still give, right or wrong.
    answers_left: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeJson {
    start_byte: u64,
    end_byte: u64,
}

/// Creates a task, or returns the unfinished task with the same fields again (resume).
#[utoipa::path(
    post,
    path = "/api/upload/new/task",
    tag = "tasks",
    request_body(content = CreateTaskRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "retCode 0: the task and its URLs", body = super::Envelope<TaskUrls>),
        (status = 400, description = "retCode 6: a field is wrong", body = Refusal),
        (status = 401, description = "retCode 1: unknown or missing token", body = Refusal),
        (status = 403, description = "retCode 9: storePath leaves storeDir", body = Refusal),
        (status = 413, description = "retCode 10: fileSize or body too large", body = Refusal),
        (status = 500, description = "retCode 3 or 20: disk or system error", body = Refusal),
        (status = 507, description = "retCode 3: disk full", body = Refusal),
    )
)]
pub async fn create_task(uploads: web::Data<Uploads>, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let body = match body.to_bytes_limited(MAX_CREATE_BODY).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(ApiError::field("body", format!("cannot be read: {e}"))),
        Err(_) => {
            return Err(UploadError::TooLarge(format!(
                "the create body is larger than {MAX_CREATE_BODY} bytes: send a smaller feedBackParameter"
            ))
            .into())
        }
    };
    let created = uploads.create_task(CreateTaskJson::parse(&body)?).await?;
    if created.created {
        metrics::task_created();
    }
    let base = uploads.settings().server.public_base_url();
    let url = |path| task_url(&base, path, created.task_id, &created.upload_key);
    Ok(ok(TaskUrls {
        task_id: created.task_id,
        upload_url: url(BLOCK_PATH),
        blocks_url: url(BLOCKS_INFO_PATH),
        state_url: url(STATE_PATH),
        instant_url: created.challenge.as_ref().map(|_| url(INSTANT_PATH)),
        challenge: created.challenge.map(|c| ChallengeJson {
            nonce: c.nonce,
            ranges: c.ranges.iter().map(|r| RangeJson { start_byte: r.start(), end_byte: r.end() }).collect(),
            expires_in: c.expires_in,
            answers_left: c.answers_left,
        }),
    }))
}
