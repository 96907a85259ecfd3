//! The IETF draft "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload), interop
//! versions 3 to 8, on the tus URLs: a request that sends `Upload-Draft-Interop-Version` is
//! served here, the others by tus. Thin, as tus: headers in, one service call, headers out; the
//! refusals are problem details (`IetfRefusal`). docs/API.md, section 10.

use actix_web::guard::{self, Guard};
use actix_web::http::header::{HeaderMap, HeaderName, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError};

use super::error::IetfRefusal;
use super::tus::{bearer, checksum, concat_of, has_unsized_body, number, required_offset, task_of, text, tus_url};
use crate::config::Settings;
use crate::domain::checksum::ContentChecksum;
use crate::domain::{Protocol, TaskStatus};
use crate::service::{Append, Creation, TaskRef, UploadError, UploadLength, UploadState, Uploads};

/// The interop versions served: 3 is draft-01 (`Upload-Incomplete`, as URLSession on iOS 17
/// sends it), 5 is draft-03 and 6 draft-05 (tus-js-client's `ietf-draft-03` and `-05`), 8 the
/// latest (draft-09 and on).
const INTEROP_VERSIONS: std::ops::RangeInclusive<u8> = 3..=8;
pub const INTEROP_VERSIONS_TEXT: &str = "3 to 8";
/// The media type of an append's content (interop version 6 and on).
pub const PARTIAL_UPLOAD: &str = "application/partial-upload";
const INTEROP_HEADER: &str = "upload-draft-interop-version";

/// Routes a request that names an interop version to this front end.
pub fn names_interop_version() -> impl Guard {
    guard::fn_guard(|ctx| ctx.head().headers().contains_key(INTEROP_HEADER))
}

/// `Upload-Limit`: the largest upload, the largest append, and how long an upload lives without
/// an append. `expires` is draft-05's name for `max-age`; a client ignores the key it does not know.
pub fn upload_limit(settings: &Settings) -> String {
    format!(
        "max-size={}, max-append-size={}, max-age={timeout}, expires={timeout}",
        settings.max_file_size,
        settings.max_block_size,
        timeout = settings.task_timeout
    )
}

/// The interop version a request names, which decides the completeness header and whether an
/// append must be typed.
#[derive(Debug, Clone, Copy)]
struct Interop(u8);

impl Interop {
    fn of(headers: &HeaderMap) -> Result<Self, IetfRefusal> {
        let sent = text(headers, INTEROP_HEADER).unwrap_or_default();
        match sent.parse::<u8>() {
            Ok(version) if INTEROP_VERSIONS.contains(&version) => Ok(Interop(version)),
            _ => Err(IetfRefusal::Version(sent.to_owned())),
        }
    }

    /// Version 3 says the opposite: `Upload-Incomplete`.
    fn completeness_header(self) -> &'static str {
        if self.0 == 3 {
            "Upload-Incomplete"
        } else {
            "Upload-Complete"
        }
    }

    /// Whether the request completes the upload: a structured-field boolean.
    fn complete(self, headers: &HeaderMap) -> Result<bool, IetfRefusal> {
        let header = self.completeness_header();
        let flag = match text(headers, header) {
            Some("?1") => true,
            Some("?0") => false,
            _ => return Err(IetfRefusal::Completeness(header)),
        };
        Ok(flag != (self.0 == 3))
    }

    fn mark_complete(self, reply: &mut HttpResponseBuilder, complete: bool) {
        let flag = if complete != (self.0 == 3) { "?1" } else { "?0" };
        reply.insert_header((self.completeness_header(), flag));
    }

    fn reply(self, status: StatusCode) -> HttpResponseBuilder {
        let mut reply = HttpResponse::build(status);
        reply.insert_header((HeaderName::from_static(INTEROP_HEADER), self.0.to_string()));
        reply
    }
}

/// Upload creation: the grant names the file; the request may carry the first bytes, or all.
pub async fn create(req: HttpRequest, uploads: web::Data<Uploads>, body: web::Payload) -> HttpResponse {
    answer(&uploads, create_upload(&req, &uploads, body).await)
}

/// Offset retrieval.
pub async fn head(req: HttpRequest, uploads: web::Data<Uploads>) -> HttpResponse {
    answer(&uploads, offset_of(&req, &uploads).await)
}

/// Upload append.
pub async fn patch(req: HttpRequest, uploads: web::Data<Uploads>, body: web::Payload) -> HttpResponse {
    answer(&uploads, append(&req, &uploads, body).await)
}

/// Upload cancellation: the task is cancelled and its callback says so.
pub async fn delete(req: HttpRequest, uploads: web::Data<Uploads>) -> HttpResponse {
    answer(&uploads, cancel(&req, &uploads).await)
}

type Outcome = Result<HttpResponse, IetfRefusal>;

fn answer(uploads: &Uploads, outcome: Outcome) -> HttpResponse {
    outcome.unwrap_or_else(|refusal| {
        let mut reply = refusal.error_response();
        // A 413 for the server's limits names them.
        if reply.status() == StatusCode::PAYLOAD_TOO_LARGE {
            if let Ok(limit) = upload_limit(uploads.settings()).parse() {
                reply.headers_mut().insert(HeaderName::from_static("upload-limit"), limit);
            }
        }
        reply
    })
}

async fn create_upload(req: &HttpRequest, uploads: &Uploads, body: web::Payload) -> Outcome {
    let headers = req.headers();
    let interop = Interop::of(headers)?;
    let complete = interop.complete(headers)?;
    if has_unsized_body(headers) {
        return Err(IetfRefusal::LengthRequired);
    }
    let content_len = number(headers, "content-length")?;
    let declared = number(headers, "upload-length")?;
    let length = match consistent_length(declared, complete.then_some(content_len.unwrap_or(0)), 0) {
        Ok(Some(length)) => UploadLength::Known(length),
        Ok(None) => UploadLength::Deferred,
        Err(refusal) => return Err(refusal),
    };
    let file_md5 = text(headers, "repr-digest")
        .map(ContentChecksum::md5_of_repr_digest)
        .transpose()
        .map_err(UploadError::InvalidField)?
        .flatten();
    let concat = concat_of(headers)?;
    let creation = Creation { grant: bearer(headers), length, concat, protocol: Protocol::Ietf, file_md5 };
    let mut state = uploads.create_upload(creation).await?;
    let location = tus_url(&uploads.settings().server.public_base_url(), state.task_id, &state.upload_key);
    let content_len = content_len.unwrap_or(0);
    if content_len > 0 {
        let task_ref = TaskRef { task_id: state.task_id, key: Some(state.upload_key.clone()) };
        let append = Append {
            offset: 0,
            body_len: content_len,
            declared_length: complete.then_some(content_len),
            checksum: checksum(headers)?,
            protocol: Protocol::Ietf,
        };
        state = uploads.append(&task_ref, append, body).await?;
    }
    let mut reply = match state.status.has_ended() || state.status == TaskStatus::Verify {
        true => completed(interop, uploads, state).await?,
        false => {
            let mut reply = interop.reply(StatusCode::CREATED);
            interop.mark_complete(&mut reply, false);
            reply.insert_header(("upload-offset", state.offset));
            reply
        }
    };
    reply.insert_header((LOCATION, location)).insert_header(("upload-limit", upload_limit(uploads.settings())));
    Ok(reply.finish())
}

/// The upload's length from its two indicators: `Upload-Length`, and the end of a request that
/// completes the upload. They must agree.
fn consistent_length(declared: Option<u64>, completing: Option<u64>, offset: u64) -> Result<Option<u64>, IetfRefusal> {
    let completing = match completing.map(|len| offset.checked_add(len)) {
        Some(None) => return Err(IetfRefusal::LengthRequired),
        Some(Some(end)) => Some(end),
        None => None,
    };
    match (declared, completing) {
        (Some(declared), Some(completing)) if declared != completing => {
            Err(IetfRefusal::InconsistentLength { declared, completing })
        }
        (declared, completing) => Ok(declared.or(completing)),
    }
}

/// The reply to a request after which the upload is complete: 200 once the file is stored (its
/// md5 as `Repr-Digest`), 202 while it is still being verified, and a refusal when it failed.
async fn completed(
    interop: Interop,
    uploads: &Uploads,
    state: UploadState,
) -> Result<HttpResponseBuilder, IetfRefusal> {
    let task_ref = TaskRef { task_id: state.task_id, key: Some(state.upload_key.clone()) };
    let state = match state.status {
        TaskStatus::Finish => uploads.upload(&task_ref).await?,
        _ => state,
    };
    let status = match state.status {
        TaskStatus::Finish => StatusCode::OK,
        TaskStatus::Verify => StatusCode::ACCEPTED,
        ended => return Err(UploadError::TaskEnded(ended).into()),
    };
    let mut reply = interop.reply(status);
    interop.mark_complete(&mut reply, true);
    reply.insert_header(("upload-offset", state.offset));
    if let Some(md5) = &state.file_md5 {
        reply.insert_header(("repr-digest", ContentChecksum::repr_digest_of(md5)));
    }
    Ok(reply)
}

async fn offset_of(req: &HttpRequest, uploads: &Uploads) -> Outcome {
    let interop = Interop::of(req.headers())?;
    let task_ref = task_of(req)?;
    let state = uploads.upload(&task_ref).await?;
    let complete = match state.status {
        TaskStatus::Finish | TaskStatus::Verify => true,
        TaskStatus::Upload | TaskStatus::Pause => false,
        ended => return Err(UploadError::TaskEnded(ended).into()),
    };
    let mut reply = interop.reply(StatusCode::NO_CONTENT);
    interop.mark_complete(&mut reply, complete);
    reply
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header(("upload-offset", state.offset))
        .insert_header(("upload-limit", upload_limit(uploads.settings())));
    if let Some(length) = state.length {
        reply.insert_header(("upload-length", length));
    }
    Ok(reply.finish())
}

async fn append(req: &HttpRequest, uploads: &Uploads, body: web::Payload) -> Outcome {
    let headers = req.headers();
    let interop = Interop::of(headers)?;
    if interop.0 >= 6 {
        let content_type = text(headers, CONTENT_TYPE.as_str());
        if content_type.and_then(|t| t.split(';').next()).map(str::trim) != Some(PARTIAL_UPLOAD) {
            return Err(IetfRefusal::ContentType(content_type.map(str::to_owned)));
        }
    }
    let complete = interop.complete(headers)?;
    let offset = required_offset(headers)?;
    let body_len = number(headers, "content-length")?.ok_or(IetfRefusal::LengthRequired)?;
    let declared = number(headers, "upload-length")?;
    let declared_length = consistent_length(declared, complete.then_some(body_len), offset)?;
    let task_ref = task_of(req)?;
    let append = Append { offset, body_len, declared_length, checksum: checksum(headers)?, protocol: Protocol::Ietf };
    let state = match uploads.append(&task_ref, append, body).await {
        Ok(state) => state,
        // The client did not hear that its last request completed the upload, and says so again.
        Err(UploadError::TaskEnded(TaskStatus::Finish | TaskStatus::Verify)) if complete && body_len == 0 => {
            let state = uploads.upload(&task_ref).await?;
            if state.offset != offset {
                return Err(UploadError::OffsetMismatch { expected: state.offset, sent: offset }.into());
            }
            state
        }
        Err(e) => return Err(e.into()),
    };
    if state.status.has_ended() || state.status == TaskStatus::Verify {
        return Ok(completed(interop, uploads, state).await?.finish());
    }
    let mut reply = interop.reply(StatusCode::NO_CONTENT);
    interop.mark_complete(&mut reply, false);
    reply.insert_header(("upload-offset", state.offset));
    Ok(reply.finish())
}

async fn cancel(req: &HttpRequest, uploads: &Uploads) -> Outcome {
    let interop = Interop::of(req.headers())?;
    let task_ref = task_of(req)?;
    uploads.terminate(&task_ref).await?;
    Ok(interop.reply(StatusCode::NO_CONTENT).finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_length_indicators_must_agree() {
        assert_eq!(consistent_length(Some(10), Some(4), 6).unwrap(), Some(10));
        assert_eq!(consistent_length(None, Some(4), 6).unwrap(), Some(10));
        assert_eq!(consistent_length(Some(10), None, 6).unwrap(), Some(10));
        assert_eq!(consistent_length(None, None, 6).unwrap(), None);
        assert!(matches!(
            consistent_length(Some(11), Some(4), 6),
            Err(IetfRefusal::InconsistentLength { declared: 11, completing: 10 })
        ));
        assert!(consistent_length(None, Some(u64::MAX), 6).is_err());
    }

    #[test]
    fn version_3_says_incomplete_where_the_others_say_complete() {
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("upload-incomplete"), "?0".parse().unwrap());
        headers.insert(HeaderName::from_static("upload-complete"), "?0".parse().unwrap());
        assert!(Interop(3).complete(&headers).unwrap());
        assert!(!Interop(6).complete(&headers).unwrap());
        headers.remove("upload-complete");
        assert!(matches!(Interop(8).complete(&headers), Err(IetfRefusal::Completeness("Upload-Complete"))));
    }
}
