//! The one place where an outcome becomes (HTTP status, retCode, status text).

use std::fmt;
use std::io;

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};

use super::envelope;
use crate::domain::{FieldError, TaskStatus};
use crate::service::{RangeProblem, StorePathRefusal, UploadError};

/// Seconds a client is asked to wait before it retries a request the database was too busy for.
/// The request has already waited the store's busy timeout for the lock; a lock an operator or
/// a backup holds usually ends within seconds, and a retry soon after costs one request.
const BUSY_RETRY_AFTER_SECONDS: u32 = 5;

/// A refused request. Internal causes are logged, never sent.
#[derive(Debug)]
pub struct ApiError(pub UploadError);

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn field(field: &'static str, problem: impl Into<String>) -> Self {
        ApiError(UploadError::InvalidField(FieldError::new(field, problem)))
    }

    fn ret_code(&self) -> &'static str {
        ret_code(&self.0)
    }

    fn status_text(&self) -> String {
        status_text(&self.0)
    }
}

fn ret_code(e: &UploadError) -> &'static str {
    match e {
        UploadError::Unauthorized => "1",
        UploadError::TaskNotFound(_) => "2",
        UploadError::Disk(_) | UploadError::StoreDir(_) | UploadError::TempFileLost | UploadError::DatabaseFull(_) => {
            "3"
        }
        UploadError::Paused => "4",
        UploadError::SameState(_) => "5",
        UploadError::InvalidField(_) => "6",
        UploadError::PartMd5Mismatch { .. } | UploadError::ProofMismatch { .. } => "7",
        UploadError::BadRange(_) => "8",
        UploadError::StorePathNotAllowed(_) => "9",
        UploadError::TooLarge(_) => "10",
        UploadError::TaskEnded(_) => "11",
        UploadError::InstantRefused(_) => "12",
        UploadError::DatabaseBusy(_) | UploadError::ClaimLost | UploadError::Internal(_) => "20",
        // The tus and IETF refusals, never met on the fupload protocol's endpoints.
        UploadError::GrantRefused(_) => "1",
        UploadError::ChecksumMismatch { .. } => "7",
        UploadError::OffsetMismatch { .. } | UploadError::PastLength { .. } | UploadError::AppendInFlight => "8",
        UploadError::LengthChanged { .. } => "6",
        UploadError::FinalUpload => "11",
    }
}

fn status_text(e: &UploadError) -> String {
    match e {
        UploadError::ProofMismatch { answers_left } => format!(
            "proof is not the md5 of the nonce and the challenge's byte ranges: {answers_left} answers left; \
                 answer again, or upload the bytes to uploadUrl as usual"
        ),
        UploadError::InstantRefused(why) => {
            format!("instant upload refused: {why}; upload the bytes to uploadUrl as usual")
        }
        UploadError::Unauthorized => "token is missing or is not the token of a business server in the fupload \
                config (bServer): send the token your business server was given"
            .into(),
        // One text, byte for byte, for any unknown task and any wrong key (not even the taskId
        // differs): it tells nothing about which it was.
        UploadError::TaskNotFound(_) => "cannot find a task with this taskId and key: use the task URL exactly \
                as the create returned it, with its key parameter (a server set to requireUploadKey: false also \
                takes the original's bare ?taskId= URLs)"
            .into(),
        // The cause stays in the log: it may name paths and internals.
        UploadError::Disk(e) if is_full(e) => {
            "disk full: tmpDir has no room for the temp file; free space there, then send this again".into()
        }
        UploadError::Disk(_) => "cannot create or write the temp file in tmpDir (disk error, the cause is in the \
                server's log): ask the operator to check tmpDir, then send this again"
            .into(),
        UploadError::StoreDir(e) if is_full(e) => {
            "disk full: storeDir has no room for the file; free space there, then send this again".into()
        }
        UploadError::StoreDir(_) => "cannot make or read storeDir (disk error, the cause is in the server's \
                log): ask the operator to check storeDir, then send this again"
            .into(),
        UploadError::TempFileLost => "the task's temp file was lost on the server (was tmpDir cleaned?); the \
                bytes that were not on disk are expected again: send this block again, and ask blocksUrl what else \
                is expected"
            .into(),
        UploadError::DatabaseFull(_) => "disk full: the volume of the upload database has no space left, so \
                                             this request was not recorded; free space there, then retry the request"
            .into(),
        UploadError::DatabaseBusy(_) => "the database is busy: another process holds its lock (say, an sqlite3 \
                                             shell in a write transaction), so this request was not recorded; \
                                             retry it in a few seconds"
            .into(),
        UploadError::ClaimLost => "this server could not reach its database while the block arrived, and its \
                claim on the block's bytes ran out: the block was not recorded; send it again"
            .into(),
        UploadError::Paused => "the task is paused and takes no blocks: set its status back to upload at its \
                stateUrl ({\"status\":\"upload\"}), then send this block again"
            .into(),
        UploadError::SameState(status) => format!(
            "status: the task is already {}, so nothing changed{}",
            status.word(),
            match status {
                TaskStatus::Pause => " (send {\"status\":\"upload\"} to resume it)",
                _ => " (send its blocks, or {\"status\":\"pause\"} to pause it)",
            }
        ),
        // "field: problem", the problem saying what the field must be.
        UploadError::InvalidField(e) => format!("{e}: correct {} and send the request again", e.field),
        UploadError::PartMd5Mismatch { range, sent, computed } => format!(
            "part md5 mismatch for bytes {range}: partMd5 sent {sent}, the server computed {computed} over the \
                 bytes it received; the block was changed on the way or partMd5 was computed over other bytes: \
                 send the block again with the md5 of exactly these bytes"
        ),
        UploadError::BadRange(RangeProblem::StartAfterEnd { start, end }) => format!(
            "part index error: startByte {start} is after endByte {end}; endByte is the block's last byte, \
                 inclusive (bytes 0 to 999 are startByte 0, endByte 999)"
        ),
        UploadError::BadRange(RangeProblem::OutsideFile { start, end, size }) => format!(
            "part index error: bytes {start}-{end} are outside the file of {size} bytes; endByte must be at \
                 most {} (fileSize - 1)",
            size.saturating_sub(1)
        ),
        UploadError::BadRange(RangeProblem::BodyLength(problem)) => format!(
            "part index error: {problem}; the file part must hold exactly endByte - startByte + 1 bytes: send \
                 the block again"
        ),
        UploadError::StorePathNotAllowed(refusal) => store_path_text(refusal),
        UploadError::TooLarge(problem) => problem.clone(),
        UploadError::TaskEnded(status) => format!(
            "the task is {} and takes no more blocks or state changes: {}",
            status.word(),
            match status {
                TaskStatus::Finish => "its file is stored, nothing is left to do",
                TaskStatus::Verify => "all its bytes are in; ask blocksUrl until it says finish or fail",
                TaskStatus::Fail => {
                    "the file's md5 differed from fileMd5 or the file could not be stored; create a new task to \
                         upload it again"
                }
                _ => "create a new task to upload the file again",
            }
        ),
        UploadError::Internal(_) => "unknown system error (the cause is in the server's log): try again later, \
                and tell the operator if it goes on"
            .into(),
        UploadError::GrantRefused(why) => format!("the upload grant {why}"),
        UploadError::OffsetMismatch { expected, sent } => format!(
            "Upload-Offset {sent} is not the upload's offset {expected}: ask HEAD for the offset and send the bytes \
                 from there"
        ),
        UploadError::PastLength { length, end } => format!(
            "the body would write up to byte {end}, past the upload's length of {length} bytes: send at most \
                 Upload-Length - Upload-Offset bytes"
        ),
        UploadError::LengthChanged { length, sent } => format!(
            "the length {sent} is not the upload's length of {length} bytes, which cannot change: send \
                 Upload-Length {length}, and complete the upload with its last byte"
        ),
        UploadError::AppendInFlight => "another request is still sending bytes to this upload: wait for it to \
                end (or a few seconds), ask HEAD for the offset, and go on from there"
            .into(),
        UploadError::ChecksumMismatch { algorithm, offset, end } => format!(
            "the {algorithm} checksum sent does not match bytes {offset}-{end} as received, so none of them was \
                 kept: send them again"
        ),
        UploadError::FinalUpload => "this is the final upload of a concatenation: it takes no bytes of its own; \
                send them to its partial uploads"
            .into(),
    }
}

/// Seconds after which the request may be sent again, for refusals that pass.
fn retry_after(e: &UploadError) -> Option<u32> {
    match e {
        UploadError::TempFileLost | UploadError::AppendInFlight | UploadError::ClaimLost => Some(1),
        UploadError::DatabaseBusy(_) => Some(BUSY_RETRY_AFTER_SECONDS),
        _ => None,
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retCode {}: {}", self.ret_code(), self.status_text())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        http_status(&self.0)
    }

    fn error_response(&self) -> HttpResponse {
        log_refusal(&self.0);
        let mut response = envelope(self.status_code(), self.ret_code(), self.status_text(), serde_json::Value::Null);
        if let Some(seconds) = retry_after(&self.0) {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The HTTP status of a refusal on the fupload protocol's endpoints (PROTOCOL.md).
fn http_status(e: &UploadError) -> StatusCode {
    match e {
        UploadError::Unauthorized => StatusCode::UNAUTHORIZED,
        UploadError::TaskNotFound(_) => StatusCode::NOT_FOUND,
        UploadError::Disk(e) | UploadError::StoreDir(e) if is_full(e) => StatusCode::INSUFFICIENT_STORAGE,
        // A lost temp file is a disk error to PROTOCOL.md ("3": 500/507); `Retry-After` says it passes.
        UploadError::Disk(_) | UploadError::StoreDir(_) | UploadError::TempFileLost | UploadError::Internal(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        UploadError::DatabaseFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        UploadError::DatabaseBusy(_) | UploadError::ClaimLost => StatusCode::SERVICE_UNAVAILABLE,
        UploadError::Paused
        | UploadError::SameState(_)
        | UploadError::TaskEnded(_)
        | UploadError::InstantRefused(_) => StatusCode::CONFLICT,
        UploadError::InvalidField(_) | UploadError::PartMd5Mismatch { .. } | UploadError::ProofMismatch { .. } => {
            StatusCode::BAD_REQUEST
        }
        UploadError::BadRange(RangeProblem::OutsideFile { .. }) => StatusCode::RANGE_NOT_SATISFIABLE,
        UploadError::BadRange(_) => StatusCode::BAD_REQUEST,
        UploadError::StorePathNotAllowed(_) => StatusCode::FORBIDDEN,
        UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        UploadError::GrantRefused(_) => StatusCode::UNAUTHORIZED,
        UploadError::OffsetMismatch { .. } | UploadError::AppendInFlight => StatusCode::CONFLICT,
        UploadError::PastLength { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        UploadError::LengthChanged { .. } => StatusCode::BAD_REQUEST,
        UploadError::ChecksumMismatch { .. } => StatusCode::BAD_REQUEST,
        UploadError::FinalUpload => StatusCode::FORBIDDEN,
    }
}

fn log_refusal(e: &UploadError) {
    match e {
        UploadError::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
        UploadError::Disk(e) | UploadError::StoreDir(e) => tracing::error!(error = %e, "disk error"),
        UploadError::DatabaseFull(e) => tracing::error!(error = %e, "the database's disk is full"),
        UploadError::DatabaseBusy(e) => tracing::warn!(error = %e, "the database is locked by another process"),
        other => tracing::debug!(refusal = %other, "request refused"),
    }
}

/// A refused tus or IETF request: the status code the protocol gives it, and the same sentence as
/// the fupload protocol's reply, as plain text.
#[derive(Debug)]
pub enum TusRefusal {
    Upload(UploadError),
    /// `Tus-Resumable` missing, or a version this server does not speak.
    Version(Option<String>),
    /// A PATCH whose body is not `application/offset+octet-stream`.
    ContentType(Option<String>),
    /// A PATCH without `Content-Length`.
    LengthRequired,
}

impl From<UploadError> for TusRefusal {
    fn from(e: UploadError) -> Self {
        TusRefusal::Upload(e)
    }
}

impl fmt::Display for TusRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TusRefusal::Upload(e) => f.write_str(&status_text(e)),
            TusRefusal::Version(sent) => write!(
                f,
                "Tus-Resumable {}: this server speaks tus 1.0.0; send Tus-Resumable: 1.0.0",
                sent.as_deref().map_or_else(|| "is missing".to_owned(), |v| format!("{v:?} is not supported"))
            ),
            TusRefusal::ContentType(sent) => write!(
                f,
                "Content-Type {}: a PATCH body must be sent as application/offset+octet-stream",
                sent.as_deref().map_or_else(|| "is missing".to_owned(), |v| format!("{v:?} is wrong"))
            ),
            TusRefusal::LengthRequired => {
                f.write_str("Content-Length is required: send each PATCH with the length of its body")
            }
        }
    }
}

impl ResponseError for TusRefusal {
    fn status_code(&self) -> StatusCode {
        match self {
            TusRefusal::Version(_) => StatusCode::PRECONDITION_FAILED,
            TusRefusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TusRefusal::LengthRequired => StatusCode::LENGTH_REQUIRED,
            // tus's checksum extension: "460 Checksum Mismatch".
            TusRefusal::Upload(UploadError::ChecksumMismatch { .. } | UploadError::PartMd5Mismatch { .. }) => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            TusRefusal::Upload(e) => resumable_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let upload_error = if let TusRefusal::Upload(e) = self { Some(e) } else { None };
        let mut reply = refusal_reply(self.status_code(), upload_error);
        reply.insert_header(("Tus-Resumable", "1.0.0")).content_type("text/plain; charset=utf-8");
        if let TusRefusal::Version(_) = self {
            reply.insert_header(("Tus-Version", "1.0.0"));
        }
        reply.body(self.to_string())
    }
}

/// The reply to a refusal of the tus or IETF endpoints, begun: an upload error is logged and gets
/// `Retry-After` when waiting helps, as on the fupload protocol's endpoints.
fn refusal_reply(status: StatusCode, upload_error: Option<&UploadError>) -> HttpResponseBuilder {
    let mut reply = HttpResponse::build(status);
    if let Some(e) = upload_error {
        log_refusal(e);
        if let Some(seconds) = retry_after(e) {
            reply.insert_header((RETRY_AFTER, HeaderValue::from(seconds)));
        }
    }
    reply
}

/// The status of a refusal on the tus and IETF endpoints, where it is not the fupload protocol's.
fn resumable_status(e: &UploadError) -> StatusCode {
    match e {
        UploadError::Unauthorized | UploadError::GrantRefused(_) => StatusCode::UNAUTHORIZED,
        UploadError::Paused | UploadError::AppendInFlight => StatusCode::LOCKED,
        UploadError::TaskEnded(TaskStatus::Finish | TaskStatus::Verify) => StatusCode::CONFLICT,
        UploadError::TaskEnded(_) => StatusCode::GONE,
        UploadError::BadRange(_) | UploadError::SameState(_) => StatusCode::BAD_REQUEST,
        other => http_status(other),
    }
}

/// A refused request of the IETF draft: RFC 9457 problem details, with the draft's problem types
/// where it has one, and the same sentence as the other protocols as `detail`.
#[derive(Debug)]
pub enum IetfRefusal {
    Upload(UploadError),
    /// An `Upload-Draft-Interop-Version` this server does not speak.
    Version(String),
    /// `Upload-Complete` (or interop version 3's `Upload-Incomplete`) missing or not a boolean.
    Completeness(&'static str),
    /// A PATCH whose body is not `application/partial-upload`.
    ContentType(Option<String>),
    /// A request with content but no `Content-Length`.
    LengthRequired,
    /// Two lengths in one request that differ.
    InconsistentLength {
        declared: u64,
        completing: u64,
    },
}

/// The draft's problem types (section "Problem Types").
const MISMATCHING_OFFSET: &str = "https://iana.org/assignments/http-problem-types#mismatching-upload-offset";
const COMPLETED_UPLOAD: &str = "https://iana.org/assignments/http-problem-types#completed-upload";
const INCONSISTENT_LENGTH: &str = "https://iana.org/assignments/http-problem-types#inconsistent-upload-length";

impl From<UploadError> for IetfRefusal {
    fn from(e: UploadError) -> Self {
        IetfRefusal::Upload(e)
    }
}

impl fmt::Display for IetfRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IetfRefusal::Upload(e) => f.write_str(&status_text(e)),
            IetfRefusal::Version(sent) => write!(
                f,
                "Upload-Draft-Interop-Version {sent:?} is not one this server speaks: send one of {}",
                super::ietf::INTEROP_VERSIONS_TEXT
            ),
            IetfRefusal::Completeness(header) => {
                write!(f, "{header} is required and must be ?0 or ?1: say whether this request completes the upload")
            }
            IetfRefusal::ContentType(sent) => write!(
                f,
                "Content-Type {}: an append must be sent as application/partial-upload",
                sent.as_deref().map_or_else(|| "is missing".to_owned(), |v| format!("{v:?} is wrong"))
            ),
            IetfRefusal::LengthRequired => {
                f.write_str("Content-Length is required: send each request that has content with its length")
            }
            IetfRefusal::InconsistentLength { declared, completing } => write!(
                f,
                "Upload-Length {declared} differs from the {completing} bytes this request completes the upload with: \
                 send one length"
            ),
        }
    }
}

impl IetfRefusal {
    /// The problem type and title (RFC 9457), and its extension members.
    fn problem(&self) -> (&'static str, &'static str, Option<(u64, u64)>) {
        match self {
            IetfRefusal::Upload(UploadError::OffsetMismatch { expected, sent }) => {
                (MISMATCHING_OFFSET, "offset from request does not match offset of resource", Some((*expected, *sent)))
            }
            IetfRefusal::Upload(UploadError::TaskEnded(TaskStatus::Finish | TaskStatus::Verify)) => {
                (COMPLETED_UPLOAD, "upload is already completed", None)
            }
            IetfRefusal::Upload(UploadError::LengthChanged { .. } | UploadError::PastLength { .. })
            | IetfRefusal::InconsistentLength { .. } => {
                (INCONSISTENT_LENGTH, "inconsistent length values for upload", None)
            }
            _ => ("about:blank", self.status_code().canonical_reason().unwrap_or("Error"), None),
        }
    }
}

impl ResponseError for IetfRefusal {
    fn status_code(&self) -> StatusCode {
        match self {
            IetfRefusal::Version(_) | IetfRefusal::Completeness(_) | IetfRefusal::InconsistentLength { .. } => {
                StatusCode::BAD_REQUEST
            }
            IetfRefusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IetfRefusal::LengthRequired => StatusCode::LENGTH_REQUIRED,
            IetfRefusal::Upload(
                UploadError::TaskEnded(TaskStatus::Finish | TaskStatus::Verify)
                | UploadError::LengthChanged { .. }
                | UploadError::PastLength { .. }
                | UploadError::ChecksumMismatch { .. },
            ) => StatusCode::BAD_REQUEST,
            IetfRefusal::Upload(e) => resumable_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (kind, title, offsets) = self.problem();
        let mut problem = serde_json::json!({
            "type": kind, "title": title, "status": status.as_u16(), "detail": self.to_string(),
        });
        let upload_error = if let IetfRefusal::Upload(e) = self { Some(e) } else { None };
        let mut reply = refusal_reply(status, upload_error);
        if let Some((expected, provided)) = offsets {
            problem["expected-offset"] = expected.into();
            problem["provided-offset"] = provided.into();
            reply.insert_header(("Upload-Offset", expected));
        }
        reply.content_type("application/problem+json").body(problem.to_string())
    }
}

/// Names storeDir and where the storePath leads: the business server that sent it holds a token,
/// and cannot fix its storePath without knowing either.
fn store_path_text(refusal: &StorePathRefusal) -> String {
    let StorePathRefusal { requested, resolved, store_dir, through_symlink } = refusal;
    let store_dir = store_dir.display();
    let leads = match (resolved, through_symlink) {
        (Some(path), false) => format!("resolves to {}, which is outside storeDir {store_dir}", path.display()),
        (Some(path), true) => {
            format!("resolves to {}, where a symlink leads outside storeDir {store_dir}", path.display())
        }
        (None, _) => format!("climbs above the root with \"..\", out of storeDir {store_dir}"),
    };
    let example = resolved
        .as_deref()
        .and_then(|p| p.file_name())
        .map_or_else(|| "\"videos/\"".to_owned(), |name| format!("\"{}/\"", name.to_string_lossy()));
    format!(
        "storePath {requested:?} {leads}: files may only be stored inside storeDir; send a path relative to \
         storeDir (such as {example}) or an absolute path inside {store_dir}"
    )
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

pub async fn method_not_allowed() -> HttpResponse {
    envelope(StatusCode::METHOD_NOT_ALLOWED, "6", "method not allowed on this path".into(), serde_json::Value::Null)
}

pub async fn unknown_path() -> HttpResponse {
    envelope(StatusCode::NOT_FOUND, "6", "no such endpoint".into(), serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(e: UploadError) -> (u16, &'static str, String) {
        let e = ApiError(e);
        (e.status_code().as_u16(), e.ret_code(), e.status_text())
    }

    #[test]
    fn disk_refusals_name_the_place_that_failed() {
        // A missing storeDir used to be reported as "cannot create or write the temp file".
        let gone = || io::Error::from(io::ErrorKind::NotFound);
        let full = || io::Error::from(io::ErrorKind::StorageFull);
        let (status, code, text) = refusal(UploadError::StoreDir(gone()));
        assert_eq!((status, code), (500, "3"));
        assert!(text.contains("storeDir") && !text.contains("temp file"), "{text}");
        let (status, code, text) = refusal(UploadError::StoreDir(full()));
        assert_eq!((status, code), (507, "3"));
        assert!(text.starts_with("disk full: storeDir"), "{text}");
        let (status, code, text) = refusal(UploadError::Disk(full()));
        assert_eq!((status, code), (507, "3"));
        assert!(text.starts_with("disk full: tmpDir"), "{text}");
        let (status, code, text) = refusal(UploadError::TempFileLost);
        assert_eq!((status, code), (500, "3"));
        assert!(text.contains("send this block again"), "{text}");
        assert_eq!(retry_after(&UploadError::TempFileLost), Some(1));
    }

    #[test]
    fn every_ret_code_has_a_sentence() {
        use std::path::PathBuf;

        use crate::domain::{ByteRange, Md5Hex};
        // The codes that are hard to provoke over HTTP ("3", "20") and the variants of all others;
        // tests/api/texts.rs checks the rest through real requests.
        let md5 = |s: &str| Md5Hex::parse("partMd5", s).unwrap();
        let refusal = |resolved: Option<&str>, through_symlink| StorePathRefusal {
            requested: "/tmp/business/".into(),
            resolved: resolved.map(PathBuf::from),
            store_dir: PathBuf::from("/srv/store"),
            through_symlink,
        };
        let cases: Vec<(UploadError, u16, &str, &[&str])> = vec![
            (UploadError::Unauthorized, 401, "1", &["token", "bServer"]),
            (UploadError::TaskNotFound(7), 404, "2", &["taskId and key", "with its key", "requireUploadKey: false"]),
            (UploadError::Disk(io::Error::other("x")), 500, "3", &["tmpDir", "send this again"]),
            (UploadError::StoreDir(io::Error::other("x")), 500, "3", &["storeDir", "send this again"]),
            (UploadError::TempFileLost, 500, "3", &["send this block again"]),
            (UploadError::Paused, 409, "4", &["paused", "stateUrl"]),
            (UploadError::SameState(TaskStatus::Pause), 409, "5", &["already paused"]),
            (UploadError::SameState(TaskStatus::Upload), 409, "5", &["already uploading"]),
            (
                UploadError::InvalidField(FieldError::new("fileMd5", "must be 32 hex digits")),
                400,
                "6",
                &["fileMd5: must"],
            ),
            (
                UploadError::PartMd5Mismatch {
                    range: ByteRange::new(0, 9).unwrap(),
                    sent: md5("00000000000000000000000000000000"),
                    computed: md5("ffffffffffffffffffffffffffffffff"),
                },
                400,
                "7",
                &["bytes 0-9", "sent 00000000000000000000000000000000", "computed ffffffffffffffffffffffffffffffff"],
            ),
            (
                UploadError::ProofMismatch { answers_left: 2 },
                400,
                "7",
                &["proof", "2 answers left", "upload the bytes"],
            ),
            (UploadError::BadRange(RangeProblem::StartAfterEnd { start: 3, end: 2 }), 400, "8", &["startByte 3"]),
            (
                UploadError::BadRange(RangeProblem::OutsideFile { start: 0, end: 10, size: 10 }),
                416,
                "8",
                &["at most 9"],
            ),
            (UploadError::BadRange(RangeProblem::BodyLength("short".into())), 400, "8", &["short", "exactly"]),
            (
                UploadError::StorePathNotAllowed(refusal(Some("/tmp/business"), false)),
                403,
                "9",
                &["\"/tmp/business/\" resolves to /tmp/business", "outside storeDir /srv/store", "\"business/\""],
            ),
            (UploadError::StorePathNotAllowed(refusal(None, false)), 403, "9", &["climbs above", "/srv/store"]),
            (UploadError::StorePathNotAllowed(refusal(Some("/srv/store/l"), true)), 403, "9", &["a symlink"]),
            (UploadError::TooLarge("fileSize 2 is larger".into()), 413, "10", &["fileSize 2"]),
            (UploadError::TaskEnded(TaskStatus::Finish), 409, "11", &["is finished", "nothing is left to do"]),
            (UploadError::TaskEnded(TaskStatus::Fail), 409, "11", &["is failed", "create a new task"]),
            (UploadError::TaskEnded(TaskStatus::Cancel), 409, "11", &["is cancelled"]),
            (UploadError::TaskEnded(TaskStatus::Expire), 409, "11", &["is expired"]),
            (UploadError::TaskEnded(TaskStatus::Verify), 409, "11", &["being verified", "blocksUrl"]),
            (
                UploadError::InstantRefused("the challenge has expired".into()),
                409,
                "12",
                &["expired", "upload the bytes"],
            ),
            (UploadError::Internal(anyhow::anyhow!("secret cause")), 500, "20", &["server's log", "try again"]),
        ];
        for (error, http, code, words) in cases {
            let what = format!("{error:?}");
            let (status, ret_code, text) = super::tests::refusal(error);
            assert_eq!((status, ret_code), (http, code), "{what}");
            for word in words {
                assert!(text.contains(word), "{what}: {word:?} is not in {text:?}");
            }
            assert!(!text.contains("secret"), "{text}");
            for bare in ["is pause ", "is finish ", "already pause ", "already pause,", "already upload "] {
                assert!(!text.contains(bare), "states are words: {text}");
            }
        }
    }
}
