//! `GET blocksUrl`: which byte ranges the task still expects.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::{ok, task_ref};
use crate::domain::ByteRange;
use crate::service::Uploads;

#[derive(Serialize)]
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlocksInfoJson {
    task_id: i64,
    total_size: u64,
    received_size: u64,
    status: &'static str,
    expect_blocks: Vec<RangeJson>,
}

pub async fn blocks_info(uploads: web::Data<Uploads>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let info = uploads.blocks_info(&task_ref(&req)?).await?;
    Ok(ok(BlocksInfoJson {
        task_id: info.task_id,
        total_size: info.total_size,
        received_size: info.received_size,
        status: info.status.as_str(),
        expect_blocks: ranges_json(&info.expect_blocks),
    }))
}
