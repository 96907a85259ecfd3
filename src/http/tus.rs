//! tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) under `/api/upload/tus`: core, creation,
//! creation-with-upload, creation-defer-length, termination, checksum, expiration and
//! concatenation. Thin: headers in, one service call, headers out. docs/API.md, section 9.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, HttpDate, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};

use super::error::TusRefusal;
use super::ietf;
use crate::domain::checksum::{ChecksumAlgorithm, ContentChecksum};
use crate::domain::{FieldError, Protocol, TaskStatus};
use crate::service::{Append, Concat, Creation, TaskRef, UploadError, UploadLength, UploadState, Uploads};

pub const TUS_PATH: &str = "/api/upload/tus";
const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,concatenation";
/// The content type of a tus PATCH (and of a creation with upload).
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// The tus endpoints; a request that names an IETF interop version is the IETF front end's.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let options = || web::method(Method::OPTIONS).to(options);
    let ietf = |route: actix_web::Route| route.guard(ietf::names_interop_version());
    cfg.service(
        web::resource([TUS_PATH, "/api/upload/tus/"])
            .route(ietf(web::post()).to(ietf::create))
            .route(web::post().to(create))
            .route(options()),
    )
    .service(
        web::resource("/api/upload/tus/{task_id}")
            .route(ietf(web::head()).to(ietf::head))
            .route(ietf(web::patch()).to(ietf::patch))
            .route(ietf(web::delete()).to(ietf::delete))
            .route(web::head().to(head))
            .route(web::patch().to(patch))
            .route(web::delete().to(delete))
            .route(options()),
    );
}

/// The URL a tus client uses for the task: its HEAD, PATCH and DELETE, with the task's key.
pub fn tus_url(base: &str, task_id: i64, key: &str) -> String {
    format!("{base}{TUS_PATH}/{task_id}?key={key}")
}

fn name(text: &'static str) -> HeaderName {
    HeaderName::from_static(text)
}

async fn options(uploads: web::Data<Uploads>) -> HttpResponse {
    let mut reply = tus_reply(StatusCode::NO_CONTENT);
    reply
        .insert_header((name("tus-version"), TUS_VERSION))
        .insert_header((name("tus-extension"), TUS_EXTENSIONS))
        .insert_header((name("tus-max-size"), uploads.settings().max_file_size.to_string()))
        .insert_header((name("tus-checksum-algorithm"), ChecksumAlgorithm::TUS))
        // The IETF draft's discovery: appends take application/partial-upload, within these limits.
        .insert_header((name("accept-patch"), ietf::PARTIAL_UPLOAD))
        .insert_header((name("upload-limit"), ietf::upload_limit(uploads.settings())));
    reply.finish()
}

async fn create(req: HttpRequest, uploads: web::Data<Uploads>, body: web::Payload) -> Result<HttpResponse, TusRefusal> {
    require_tus_resumable(&req)?;
    let headers = req.headers();
    if has_unsized_body(headers) {
        return Err(TusRefusal::LengthRequired);
    }
    let length = match (number(headers, "upload-length")?, text(headers, "upload-defer-length")) {
        (Some(length), None) => UploadLength::Known(length),
        (None, Some("1")) => UploadLength::Deferred,
        (None, Some(other)) => {
            return Err(field("Upload-Defer-Length", "must be 1 when it is sent", other).into());
        }
        (Some(_), Some(_)) => {
            return Err(UploadError::InvalidField(FieldError::new(
                "Upload-Length",
                "and Upload-Defer-Length are both sent: send one of them",
            ))
            .into())
        }
        (None, None) if concat_of(headers)?.is_some_and(|c| matches!(c, Concat::Final(_))) => UploadLength::Deferred,
        (None, None) => {
            return Err(UploadError::InvalidField(FieldError::new(
                "Upload-Length",
                "is required: send the upload's length, or Upload-Defer-Length: 1 to send it later",
            ))
            .into())
        }
    };
    let creation = Creation {
        grant: bearer(headers),
        length,
        concat: concat_of(headers)?,
        protocol: Protocol::Tus,
        file_md5: None,
    };
    let mut state = uploads.create_upload(creation).await?;
    let base = uploads.settings().server.public_base_url();
    let location = tus_url(&base, state.task_id, &state.upload_key);
    // creation-with-upload: the body holds the first bytes.
    let body_len = number(headers, "content-length")?.unwrap_or(0);
    if body_len > 0 {
        require_offset_stream(&req)?;
        let task_ref = TaskRef { task_id: state.task_id, key: Some(state.upload_key.clone()) };
        let append = Append {
            offset: 0,
            body_len,
            declared_length: None,
            checksum: checksum(headers)?,
            protocol: Protocol::Tus,
        };
        state = uploads.append(&task_ref, append, body).await?;
    }
    let mut reply = tus_reply(StatusCode::CREATED);
    reply.insert_header((LOCATION, location)).insert_header((name("upload-offset"), state.offset.to_string()));
    expires(&mut reply, &state);
    Ok(reply.finish())
}

async fn head(req: HttpRequest, uploads: web::Data<Uploads>) -> Result<HttpResponse, TusRefusal> {
    require_tus_resumable(&req)?;
    let state = uploads.upload(&task_of(&req)?).await?;
    if state.status.has_ended() && state.status != crate::domain::TaskStatus::Finish {
        return Err(UploadError::TaskEnded(state.status).into());
    }
    let mut reply = tus_reply(StatusCode::OK);
    reply.insert_header((CACHE_CONTROL, "no-store")).insert_header((name("upload-offset"), state.offset.to_string()));
    match state.length {
        Some(length) => reply.insert_header((name("upload-length"), length.to_string())),
        None => reply.insert_header((name("upload-defer-length"), "1")),
    };
    if let Some(role) = state.concat_role {
        // The final upload's list of partials is not kept: "final" alone says what it is.
        reply.insert_header((name("upload-concat"), role.as_str()));
    }
    expires(&mut reply, &state);
    Ok(reply.finish())
}

async fn patch(req: HttpRequest, uploads: web::Data<Uploads>, body: web::Payload) -> Result<HttpResponse, TusRefusal> {
    require_tus_resumable(&req)?;
    require_offset_stream(&req)?;
    let headers = req.headers();
    let offset = required_offset(headers)?;
    let body_len = number(headers, "content-length")?.ok_or(TusRefusal::LengthRequired)?;
    let append = Append {
        offset,
        body_len,
        declared_length: number(headers, "upload-length")?,
        checksum: checksum(headers)?,
        protocol: Protocol::Tus,
    };
    let state = uploads.append(&task_of(&req)?, append, body).await?;
    if state.status.has_ended() && state.status != TaskStatus::Finish {
        // The last bytes came but the file failed (its md5 was not the one named): the client must
        // not report success.
        return Err(UploadError::TaskEnded(state.status).into());
    }
    let mut reply = tus_reply(StatusCode::NO_CONTENT);
    reply.insert_header((name("upload-offset"), state.offset.to_string()));
    expires(&mut reply, &state);
    Ok(reply.finish())
}

async fn delete(req: HttpRequest, uploads: web::Data<Uploads>) -> Result<HttpResponse, TusRefusal> {
    require_tus_resumable(&req)?;
    uploads.terminate(&task_of(&req)?).await?;
    Ok(tus_reply(StatusCode::NO_CONTENT).finish())
}

fn tus_reply(status: StatusCode) -> HttpResponseBuilder {
    let mut reply = HttpResponse::build(status);
    reply.insert_header((name("tus-resumable"), TUS_VERSION));
    reply
}

fn expires(reply: &mut HttpResponseBuilder, state: &UploadState) {
    if let Some(at) = state.expires_at {
        reply.insert_header((name("upload-expires"), HttpDate::from(at).to_string()));
    }
}

fn require_tus_resumable(req: &HttpRequest) -> Result<(), TusRefusal> {
    match text(req.headers(), "tus-resumable") {
        Some(TUS_VERSION) => Ok(()),
        sent => Err(TusRefusal::Version(sent.map(str::to_owned))),
    }
}

fn require_offset_stream(req: &HttpRequest) -> Result<(), TusRefusal> {
    match req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(OFFSET_OCTET_STREAM) => Ok(()),
        sent => Err(TusRefusal::ContentType(sent.map(str::to_owned))),
    }
}

/// The task of the URL's path, with the `key` of its query.
pub(super) fn task_of(req: &HttpRequest) -> Result<TaskRef, UploadError> {
    let id = req.match_info().get("task_id").unwrap_or_default();
    let task_id = id.parse().map_err(|_| field("task id", "must be an integer in the upload URL", id))?;
    let key = web::Query::<KeyQuery>::from_query(req.query_string()).ok().and_then(|q| q.into_inner().key);
    Ok(TaskRef { task_id, key })
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// `Upload-Concat`: `partial`, or `final;<url> <url> …` naming the partial uploads in order.
pub(super) fn concat_of(headers: &HeaderMap) -> Result<Option<Concat>, UploadError> {
    let Some(value) = text(headers, "upload-concat") else { return Ok(None) };
    if value == "partial" {
        return Ok(Some(Concat::Partial));
    }
    let Some(urls) = value.strip_prefix("final;") else {
        return Err(field("Upload-Concat", "must be partial or final;<url> <url> …", value));
    };
    let parts = urls.split_whitespace().map(|url| {
        task_of_url(url)
            .ok_or_else(|| field("Upload-Concat", "names a URL that is not a tus upload of this server", url))
    });
    Ok(Some(Concat::Final(parts.collect::<Result<_, _>>()?)))
}

/// The task of an upload URL as this server hands them out (absolute or just the path).
fn task_of_url(url: &str) -> Option<TaskRef> {
    let rest = &url[url.find(TUS_PATH)? + TUS_PATH.len()..];
    let rest = rest.strip_prefix('/')?;
    let (id, query) = rest.split_once('?').unwrap_or((rest, ""));
    let key = web::Query::<KeyQuery>::from_query(query).ok().and_then(|q| q.into_inner().key);
    Some(TaskRef { task_id: id.parse().ok()?, key })
}

pub(super) fn checksum(headers: &HeaderMap) -> Result<Option<ContentChecksum>, UploadError> {
    let tus = text(headers, "upload-checksum").map(ContentChecksum::from_tus);
    let digest = || text(headers, "content-digest").map(ContentChecksum::from_content_digest);
    tus.or_else(digest).transpose().map_err(UploadError::InvalidField)
}

/// Whether the request has content of no declared length (`Transfer-Encoding: chunked`): a
/// creation must say how many bytes it carries, or they would be taken for none.
pub(super) fn has_unsized_body(headers: &HeaderMap) -> bool {
    headers.contains_key("transfer-encoding") && !headers.contains_key("content-length")
}

/// `Upload-Offset` of an append, which both protocols require.
pub(super) fn required_offset(headers: &HeaderMap) -> Result<u64, UploadError> {
    number(headers, "upload-offset")?
        .ok_or_else(|| UploadError::InvalidField(FieldError::new("Upload-Offset", "is required: ask HEAD for it")))
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = text(headers, "authorization")?;
    value.strip_prefix("Bearer ").map(|grant| grant.trim().to_owned())
}

pub(super) fn text<'h>(headers: &'h HeaderMap, header: &'static str) -> Option<&'h str> {
    headers.get(header).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::trim)
}

pub(super) fn number(headers: &HeaderMap, header: &'static str) -> Result<Option<u64>, UploadError> {
    text(headers, header)
        .map(|value| {
            value.parse::<u64>().map_err(|_| field(display_name(header), "must be a non-negative integer", value))
        })
        .transpose()
}

fn display_name(header: &'static str) -> &'static str {
    match header {
        "upload-length" => "Upload-Length",
        "upload-offset" => "Upload-Offset",
        "content-length" => "Content-Length",
        other => other,
    }
}

pub(super) fn field(name: &'static str, problem: &str, sent: &str) -> UploadError {
    UploadError::InvalidField(FieldError::new(name, problem).with_sent(sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls_in_a_final_concatenation_name_their_tasks() {
        let task = task_of_url("http://127.0.0.1:8080/api/upload/tus/17?key=ab12").unwrap();
        assert_eq!((task.task_id, task.key.as_deref()), (17, Some("ab12")));
        let bare = task_of_url("/api/upload/tus/3").unwrap();
        assert_eq!((bare.task_id, bare.key), (3, None));
        assert!(task_of_url("http://elsewhere/files/3").is_none());
        assert!(task_of_url("/api/upload/tus/x?key=1").is_none());
    }
}
