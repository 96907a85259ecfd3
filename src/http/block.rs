//! `POST uploadUrl`: one block as multipart/form-data (`startByte`, `endByte`, `partMd5`, `file`).
//!
//! With the text fields before `file` (the fast path) the bytes stream straight into the temp
//! file. If `file` comes first, it is spooled to a file in tmpDir until the range is known.

use std::time::Duration;

use actix_multipart::{Multipart, MultipartError};
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;

use super::body_guard::Meter;
use super::error::ApiError;
use super::info::{ranges_json, RangeJson};
use super::openapi::{BlockForm, Refusal, TaskParams};
use super::{envelope, task_ref};
use crate::domain::{FieldError, Md5Hex};
use crate::service::{BlockAccepted, IncomingBlock, UploadError, Uploads};

/// Text fields are short numbers and an md5; anything longer is refused.
const MAX_TEXT_FIELD: usize = 1024;
/// Unknown fields are read and dropped, up to this size each.
const MAX_IGNORED_FIELD: usize = 64 * 1024;
/// A block has four fields; a few extra ones (e.g. `partName`) are ignored, many are refused.
const MAX_FIELDS: usize = 32;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockJson {
    start_byte: u64,
    end_byte: u64,
    received_size: u64,
    #[schema(schema_with = super::openapi::task_status)]
    task_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expect_blocks: Option<Vec<RangeJson>>,
}

/// Receives one block of a task's file.
#[utoipa::path(
    post,
    path = "/api/upload/files/block",
    tag = "tasks",
    params(TaskParams),
    request_body(content = BlockForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "retCode 0: accepted; retCode 1: accepted but held no new bytes (data.expectBlocks \
            lists what is missing)", body = super::Envelope<BlockJson>),
        (status = 400, description = "retCode 6, 7 or 8: a field, the part md5 or the body length is wrong", body = Refusal),
        (status = 404, description = "retCode 2: no such task, or a wrong key", body = Refusal),
        (status = 409, description = "retCode 4 or 11: the task is paused or has ended", body = Refusal),
        (status = 413, description = "retCode 10: the block is larger than maxBlockSize", body = Refusal),
        (status = 416, description = "retCode 8: the range lies outside the file", body = Refusal),
        (status = 500, description = "retCode 3 or 20: disk or system error", body = Refusal),
        (status = 507, description = "retCode 3: disk full", body = Refusal),
    )
)]
pub async fn upload_block(
    uploads: web::Data<Uploads>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut block = uploads.incoming_block(&task_ref(&req)?).await?;
    let meter = Meter::default();
    let multipart = Multipart::new(req.headers(), meter.body(payload));
    let fields = read_fields(&mut block, &meter, multipart);
    match uploads.settings().server.client_body_timeout {
        seconds if seconds > 0.0 => tokio::select! {
            read = fields => read?,
            () = meter.ended_for(Duration::from_secs_f64(seconds)) => {
                return Err(ApiError::field("body", "bad multipart: the body ended inside a part"))
            }
        },
        _ => fields.await?,
    };
    Ok(reply(block.finish().await?, uploads.settings().server.client_body_timeout))
}

/// Reads the fields and hands each to the block as it comes (the `file` part as a stream).
async fn read_fields(block: &mut IncomingBlock<'_>, meter: &Meter, mut multipart: Multipart) -> Result<(), ApiError> {
    let mut fields = 0;
    while let Some(field) =
        multipart.try_next().await.map_err(|e| ApiError::field("body", format!("bad multipart: {e}")))?
    {
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(ApiError::field("body", format!("has more than {MAX_FIELDS} fields")));
        }
        let name = field.name().unwrap_or_default().to_owned();
        let field = meter.take(field);
        match name.as_str() {
            "file" => block.file(field).await?,
            "startByte" => block.start_byte(parse_offset("startByte", &read_text("startByte", field).await?)?),
            "endByte" => block.end_byte(parse_offset("endByte", &read_text("endByte", field).await?)?),
            "partMd5" => block.part_md5(Md5Hex::parse("partMd5", read_text("partMd5", field).await?.trim())?),
            _ => skip(field).await?,
        }
    }
    Ok(())
}

/// Seconds a client is asked to wait before it sends again the bytes another block in flight holds.
///
/// That block either ends soon (its bytes are then recorded) or stalls; a stalled body is given up
/// `server.clientBodyTimeout` after its last byte, which frees the bytes. A client asked to wait
/// that long at most, and no more than 5 s, sends them again soon after either.
fn in_flight_retry_after(client_body_timeout: f64) -> u32 {
    const MOST: u32 = 5;
    match client_body_timeout {
        seconds if seconds > 0.0 => (seconds.ceil() as u32).clamp(1, MOST),
        _ => MOST,
    }
}

fn reply(accepted: BlockAccepted, client_body_timeout: f64) -> HttpResponse {
    let retry_after = (!accepted.in_flight.is_empty()).then(|| in_flight_retry_after(client_body_timeout));
    let (ret_code, status) = match (accepted.new_bytes, retry_after) {
        (0, None) => ("1", "accepted, but the block held no new bytes: the server had all of them already".into()),
        (_, None) => ("0", "ok".to_owned()),
        (new_bytes, Some(seconds)) => (
            if new_bytes == 0 { "1" } else { "0" },
            format!(
                "accepted, but bytes {} of this block are being written by another block still in flight, so they \
                 are not recorded: send them again in {seconds} s (Retry-After), when that block has been recorded \
                 or given up",
                accepted.in_flight.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        ),
    };
    let data = BlockJson {
        start_byte: accepted.range.start(),
        end_byte: accepted.range.end(),
        received_size: accepted.received_size,
        task_status: accepted.task_status.as_str(),
        expect_blocks: accepted.expect_blocks.as_deref().map(ranges_json),
    };
    let mut response = envelope(StatusCode::OK, ret_code, status, data);
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response.extensions_mut().insert(AcceptedBytes(accepted.range.size()));
    response
}

/// The size of an accepted block, kept on the response for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct AcceptedBytes(pub u64);

fn parse_offset(field: &'static str, text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError(UploadError::InvalidField(FieldError::new(field, "must be a non-negative integer").with_sent(text)))
    })
}

/// The bytes of a multipart field.
trait FieldBytes: Stream<Item = Result<Bytes, MultipartError>> {}

impl<S: Stream<Item = Result<Bytes, MultipartError>>> FieldBytes for S {}

async fn read_text(name: &'static str, field: impl FieldBytes) -> Result<String, ApiError> {
    let mut field = std::pin::pin!(field);
    let mut bytes = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|e| ApiError::field(name, format!("cannot be read: {e}")))?;
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(ApiError::field(name, "is too long"));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| ApiError::field(name, "must be UTF-8 text"))
}

async fn skip(field: impl FieldBytes) -> Result<(), ApiError> {
    let mut field = std::pin::pin!(field);
    let mut seen = 0;
    while let Some(chunk) = field.next().await {
        seen += chunk.map_err(|e| ApiError::field("body", format!("cannot be read: {e}")))?.len();
        if seen > MAX_IGNORED_FIELD {
            return Err(ApiError::field("body", "an unknown field is too large"));
        }
    }
    Ok(())
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError(UploadError::InvalidField(e))
    }
}
