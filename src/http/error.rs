//! The one place where an outcome becomes (HTTP status, retCode, status text).

use std::fmt;
use std::io;

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::envelope;
use crate::domain::FieldError;
use crate::service::{RangeProblem, UploadError};

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
        match &self.0 {
            UploadError::Unauthorized => "1",
            UploadError::TaskNotFound => "2",
            UploadError::Disk(_)
            | UploadError::StoreDir(_)
            | UploadError::TempFileLost
            | UploadError::DatabaseFull(_) => "3",
            UploadError::Paused => "4",
            UploadError::SameState(_) => "5",
            UploadError::InvalidField(_) => "6",
            UploadError::PartMd5Mismatch | UploadError::ProofMismatch { .. } => "7",
            UploadError::BadRange(_) => "8",
            UploadError::StorePathNotAllowed => "9",
            UploadError::TooLarge(_) => "10",
            UploadError::TaskEnded(_) => "11",
            UploadError::InstantRefused(_) => "12",
            UploadError::DatabaseBusy(_) | UploadError::Internal(_) => "20",
        }
    }

    fn status_text(&self) -> String {
        match &self.0 {
            // The cause stays in the log: it may name paths and internals.
            UploadError::Disk(e) if is_full(e) => {
                "disk full: tmpDir has no room for the temp file; free space there, then send this again".into()
            }
            UploadError::Disk(_) => "cannot create or write the temp file in tmpDir (disk error)".into(),
            UploadError::StoreDir(e) if is_full(e) => {
                "disk full: storeDir has no room for the file; free space there, then send this again".into()
            }
            UploadError::StoreDir(_) => "cannot make or read storeDir (disk error)".into(),
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
            other => other.to_string(),
        }
    }

    /// Seconds after which the request may be sent again, for refusals that pass.
    fn retry_after(&self) -> Option<u32> {
        match &self.0 {
            UploadError::TempFileLost => Some(1),
            UploadError::DatabaseBusy(_) => Some(BUSY_RETRY_AFTER_SECONDS),
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retCode {}: {}", self.ret_code(), self.status_text())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match &self.0 {
            UploadError::Unauthorized => StatusCode::UNAUTHORIZED,
            UploadError::TaskNotFound => StatusCode::NOT_FOUND,
            UploadError::Disk(e) | UploadError::StoreDir(e) if is_full(e) => StatusCode::INSUFFICIENT_STORAGE,
            // A lost temp file is a disk error to PROTOCOL.md ("3": 500/507); `Retry-After` says it passes.
            UploadError::Disk(_) | UploadError::StoreDir(_) | UploadError::TempFileLost | UploadError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            UploadError::DatabaseFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            UploadError::DatabaseBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            UploadError::Paused
            | UploadError::SameState(_)
            | UploadError::TaskEnded(_)
            | UploadError::InstantRefused(_) => StatusCode::CONFLICT,
            UploadError::InvalidField(_) | UploadError::PartMd5Mismatch | UploadError::ProofMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            UploadError::BadRange(RangeProblem::OutsideFile { .. }) => StatusCode::RANGE_NOT_SATISFIABLE,
            UploadError::BadRange(_) => StatusCode::BAD_REQUEST,
            UploadError::StorePathNotAllowed => StatusCode::FORBIDDEN,
            UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match &self.0 {
            UploadError::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
            UploadError::Disk(e) | UploadError::StoreDir(e) => tracing::error!(error = %e, "disk error"),
            UploadError::DatabaseFull(e) => tracing::error!(error = %e, "the database's disk is full"),
            UploadError::DatabaseBusy(e) => tracing::warn!(error = %e, "the database is locked by another process"),
            other => tracing::debug!(refusal = %other, "request refused"),
        }
        let mut response = envelope(self.status_code(), self.ret_code(), self.status_text(), serde_json::Value::Null);
        if let Some(seconds) = self.retry_after() {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
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
        assert_eq!(ApiError(UploadError::TempFileLost).retry_after(), Some(1));
    }
}
