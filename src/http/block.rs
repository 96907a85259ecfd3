//! `POST uploadUrl`: one block as multipart/form-data (`startByte`, `endByte`, `partMd5`, `file`).
//!
//! With the text fields before `file` (the fast path) the bytes stream straight into the temp
//! file. If `file` comes first, it is spooled to a file in tmpDir until the range is known.

use std::path::PathBuf;
use std::time::Duration;

use actix_multipart::{Multipart, MultipartError};
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
use crate::blob;
use crate::domain::{ByteRange, FieldError, Md5Hex};
use crate::service::{BlockAccepted, BlockTarget, ReceivedBlock, UploadError, Uploads};

/// Text fields are short numbers and an md5; anything longer is refused.
const MAX_TEXT_FIELD: usize = 1024;
/// Unknown fields are read and dropped, up to this size each.
const MAX_IGNORED_FIELD: usize = 64 * 1024;
/// A block has four fields; a few extra ones (e.g. `partName`) are ignored, many are refused.
const MAX_FIELDS: usize = 32;

#[derive(Default)]
struct TextFields {
    start_byte: Option<u64>,
    end_byte: Option<u64>,
    part_md5: Option<Md5Hex>,
}

enum Body {
    Received(Box<ReceivedBlock>),
    Spooled(Spool),
}

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
    let target = uploads.check_block_target(&task_ref(&req)?).await?;
    let meter = Meter::default();
    let multipart = Multipart::new(req.headers(), meter.body(payload));
    let fields = read_fields(&uploads, &target, &meter, multipart);
    let (text, body) = match uploads.settings().server.client_body_timeout {
        seconds if seconds > 0.0 => tokio::select! {
            read = fields => read?,
            () = meter.ended_for(Duration::from_secs_f64(seconds)) => {
                return Err(ApiError::field("body", "bad multipart: the body ended inside a part"))
            }
        },
        _ => fields.await?,
    };
    let received = match body {
        None => return Err(ApiError::field("file", "is required")),
        Some(Body::Received(received)) => *received,
        Some(Body::Spooled(spool)) => {
            let (start, end) = range_fields(&text)?;
            let plan = uploads.plan_block(&target, start, end).await?;
            let stream = blob::read_stream(&spool.path).await.map_err(UploadError::Disk)?;
            uploads.receive_block(plan, stream).await?
        }
    };
    let accepted = uploads.commit_block(received, text.part_md5).await?;
    Ok(reply(accepted))
}

/// Reads the fields, streaming the `file` part to the temp file (or a spool) as it comes.
async fn read_fields(
    uploads: &Uploads,
    target: &BlockTarget,
    meter: &Meter,
    mut multipart: Multipart,
) -> Result<(TextFields, Option<Body>), ApiError> {
    let mut text = TextFields::default();
    let mut body = None;
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
            "file" if body.is_some() => return Err(ApiError::field("file", "is given twice")),
            "file" => body = Some(receive_file(uploads, target, &text, field).await?),
            "startByte" => text.start_byte = Some(parse_offset("startByte", &read_text("startByte", field).await?)?),
            "endByte" => text.end_byte = Some(parse_offset("endByte", &read_text("endByte", field).await?)?),
            "partMd5" => text.part_md5 = Some(Md5Hex::parse("partMd5", read_text("partMd5", field).await?.trim())?),
            _ => skip(field).await?,
        }
    }
    Ok((text, body))
}

fn reply(accepted: BlockAccepted) -> HttpResponse {
    let (ret_code, status) = match accepted.new_bytes {
        0 => ("1", "accepted, but the block held no new bytes"),
        _ => ("0", "ok"),
    };
    let data = BlockJson {
        start_byte: accepted.range.start(),
        end_byte: accepted.range.end(),
        received_size: accepted.received_size,
        task_status: accepted.task_status.as_str(),
        expect_blocks: accepted.expect_blocks.as_deref().map(ranges_json),
    };
    let mut response = envelope(StatusCode::OK, ret_code, status.into(), data);
    response.extensions_mut().insert(AcceptedBytes(accepted.range.size()));
    response
}

/// The size of an accepted block, kept on the response for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct AcceptedBytes(pub u64);

/// Streams the `file` part to the temp file if its range is known, else spools it.
async fn receive_file(
    uploads: &Uploads,
    target: &BlockTarget,
    text: &TextFields,
    field: impl FieldBytes,
) -> Result<Body, ApiError> {
    match (text.start_byte, text.end_byte) {
        (Some(start), Some(end)) => {
            let plan = uploads.plan_block(target, start, end).await?;
            Ok(Body::Received(Box::new(uploads.receive_block(plan, field).await?)))
        }
        _ => Ok(Body::Spooled(Spool::fill(uploads, field).await?)),
    }
}

fn range_fields(text: &TextFields) -> Result<(u64, u64), ApiError> {
    let start = text.start_byte.ok_or_else(|| ApiError::field("startByte", "is required"))?;
    let end = text.end_byte.ok_or_else(|| ApiError::field("endByte", "is required"))?;
    Ok((start, end))
}

fn parse_offset(field: &'static str, text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| ApiError::field(field, "must be a non-negative integer"))
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

/// A `file` part that came before its range, held in tmpDir; removed on drop.
struct Spool {
    path: PathBuf,
}

impl Spool {
    async fn fill(uploads: &Uploads, field: impl FieldBytes) -> Result<Self, ApiError> {
        let spool = Spool { path: blob::spool_path(&uploads.settings().tmp_dir).map_err(UploadError::Disk)? };
        let limit = uploads.settings().max_block_size;
        let whole = ByteRange::new(0, limit.saturating_sub(1)).ok_or_else(|| ApiError::field("file", "is empty"))?;
        let path = spool.path.clone();
        tokio::task::spawn_blocking(move || blob::create_temp(&path, 0))
            .await
            .map_err(|e| UploadError::Internal(anyhow::anyhow!("{e}")))?
            .map_err(UploadError::Disk)?;
        match blob::stream_into(blob::BlockFile::whole(spool.path.clone(), whole), field, ()).await {
            Ok(_) => Ok(spool),
            Err(blob::StreamError::TooLong(limit)) => {
                Err(UploadError::TooLarge(format!("block is larger than maxBlockSize {limit}")).into())
            }
            Err(blob::StreamError::Body(e)) => Err(ApiError::field("file", format!("cannot be read: {e}"))),
            Err(blob::StreamError::Disk(e)) => Err(UploadError::Disk(e).into()),
            Err(lost @ blob::StreamError::TempFileLost { .. }) => {
                Err(UploadError::Disk(std::io::Error::new(std::io::ErrorKind::NotFound, lost.to_string())).into())
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = blob::remove_if_exists(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a spool file");
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError(UploadError::InvalidField(e))
    }
}
