//! `GET blocksUrl`: which byte ranges the task still expects.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::openapi::{Refusal, TaskParams};
use super::{ok, task_ref};
use crate::domain::ByteRange;
use crate::service::Uploads;

/// Inclusive byte range.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeJson {
    start_byte: u64,
    end_byte: u64,
}

impl From<&ByteRange> for RangeJson {
    fn from(range: &ByteRange) -> Self {
        RangeJson { start_byte: range.start(), end_byte: range.end() }
    }
}

pub fn ranges_json(ranges: &[ByteRange]) -> Vec<RangeJson> {
    ranges.iter().map(RangeJson::from).collect()
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlocksInfoJson {
    task_id: i64,
    total_size: u64,
    received_size: u64,
    #[schema(schema_with = super::openapi::task_status)]
    status: &'static str,
    expect_blocks: Vec<RangeJson>,
    /// The last problem the task met (a failed finish attempt that is tried again, a lost temp
    /// file), or why it failed; absent when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    /// Finish attempts that failed for a passing reason (the server tries again).
    #[serde(skip_serializing_if = "is_zero")]
    finish_attempts: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The byte ranges the task still expects, ascending, inclusive.
#[utoipa::path(
    get,
    path = "/api/upload/files/blocks/info",
    tag = "tasks",
    params(TaskParams),
    responses(
        (status = 200, description = "retCode 0", body = super::Envelope<BlocksInfoJson>),
        (status = 400, description = "retCode 6: taskId is missing or not an integer", body = Refusal),
        (status = 404, description = "retCode 2: no such task, or a wrong key", body = Refusal),
        (status = 500, description = "retCode 20: system error", body = Refusal),
    )
)]
pub async fn blocks_info(uploads: web::Data<Uploads>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let info = uploads.blocks_info(&task_ref(&req)?).await?;
    Ok(ok(BlocksInfoJson {
        task_id: info.task_id,
        total_size: info.total_size,
        received_size: info.received_size,
        status: info.status.as_str(),
        expect_blocks: ranges_json(&info.expect_blocks),
        last_error: info.last_error,
        finish_attempts: info.finish_attempts,
    }))
}
