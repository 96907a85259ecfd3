//! S3 requests: signed by rusty-s3 (presigned URLs, so no body hashing), sent by awc on the
//! connection thread (`http.rs`), retried with backoff when S3 says it is busy or the connection
//! fails. The key layout, under `storage.s3.prefix`:
//! - `<storePath>/<fileName>`: the finished object, built by a multipart upload;
//! - `.fupload/task-<id>/upload-id`: that upload's id, written once (`If-None-Match: *`), so that
//!   every node, and a node after a restart, finds the same upload;
//! - `.fupload/task-<id>/blocks/<start>-<end>`: the staged bytes of accepted blocks, until the
//!   part they belong to is uploaded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use md5::Digest;
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CompleteMultipartUploadResponse, CreateMultipartUpload,
    DeleteObject, GetObject, ListObjectsV2, ListParts, PutObject, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::http::{Connection, Reply, Request};
use crate::config::S3Settings;
use crate::domain::ByteRange;

/// How long a signed URL stays valid: longer than any retry of its request.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Tries of one request, and the wait before the second (doubling after it).
const ATTEMPTS: u32 = 4;
const FIRST_WAIT: Duration = Duration::from_millis(200);
/// How long one request may take, a part's upload included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// S3 answered 503 (SlowDown) to every try: the request may be made again later.
    #[error("S3 {operation}: the service is throttling requests (HTTP 503) after {ATTEMPTS} tries")]
    Throttled { operation: &'static str },
    #[error("S3 {operation}: HTTP {status} {code}: {message}")]
    Refused { operation: &'static str, status: u16, code: String, message: String },
    #[error("S3 {operation}: {error}")]
    Transport { operation: &'static str, error: String },
    #[error("S3 {operation}: the reply cannot be read: {error}")]
    Reply { operation: &'static str, error: String },
}

impl S3Error {
    fn has_code(&self, wanted: &str) -> bool {
        matches!(self, S3Error::Refused { code, .. } if code == wanted)
    }
}

/// A part as `ListParts` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub number: u16,
    pub etag: String,
    pub size: u64,
}

pub struct S3Storage {
    bucket: Bucket,
    credentials: Option<Credentials>,
    /// `""` or the configured prefix with one `/` after it.
    prefix: String,
    connection: Connection,
    /// The multipart upload of each task this node has met, so that only the first use asks S3.
    upload_ids: Mutex<HashMap<i64, String>>,
}

impl S3Storage {
    pub fn new(settings: &S3Settings) -> std::io::Result<Self> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let endpoint = settings.endpoint.parse().map_err(|e| invalid(format!("storage.s3.endpoint: {e}")))?;
        let style = if settings.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let region = match settings.region.as_str() {
            "" => std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            region => region.to_owned(),
        };
        let bucket = Bucket::new(endpoint, style, settings.bucket.clone(), region)
            .map_err(|e| invalid(format!("storage.s3: {e:?} (an IP address as endpoint needs pathStyle)")))?;
        let prefix = match settings.prefix.trim_matches('/') {
            "" => String::new(),
            prefix => format!("{prefix}/"),
        };
        Ok(Self {
            bucket,
            credentials: Credentials::from_env(),
            prefix,
            connection: Connection::start(REQUEST_TIMEOUT)?,
            upload_ids: Mutex::new(HashMap::new()),
        })
    }

    /// The finished file's key: `storePath` (relative, as below storeDir) then `fileName`.
    pub fn object_key(&self, store_path: &str, file_name: &str) -> String {
        let dirs: Vec<&str> = store_path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
        match dirs.is_empty() {
            true => format!("{}{file_name}", self.prefix),
            false => format!("{}{}/{file_name}", self.prefix, dirs.join("/")),
        }
    }

    /// `s3://bucket/key`, as the callback's finalPath names the object.
    pub fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    fn task_prefix(&self, task_id: i64) -> String {
        format!("{}.fupload/task-{task_id}/", self.prefix)
    }

    fn staging_prefix(&self, task_id: i64) -> String {
        format!("{}blocks/", self.task_prefix(task_id))
    }

    /// Zero-padded, so that a listing comes in the order of the file.
    fn staging_key(&self, task_id: i64, range: ByteRange) -> String {
        format!("{}{:020}-{:020}", self.staging_prefix(task_id), range.start(), range.end())
    }

    /// Sends what `build` signs, trying again while S3 is busy (500, 502, 503, 504) or the
    /// connection fails; the URL is signed anew for each try.
    async fn request(&self, operation: &'static str, build: impl Fn() -> Request) -> Result<Reply, S3Error> {
        let mut wait = FIRST_WAIT;
        let mut attempt = 1;
        loop {
            let outcome = self.connection.send(build()).await;
            let passing = match &outcome {
                Ok(reply) => matches!(reply.status, 500 | 502 | 503 | 504),
                Err(_) => true,
            };
            if !passing || attempt == ATTEMPTS {
                return match outcome {
                    Ok(reply) if reply.status < 300 => Ok(reply),
                    Ok(reply) if reply.status == 503 => Err(S3Error::Throttled { operation }),
                    Ok(reply) => Err(refusal(operation, &reply)),
                    Err(error) => Err(S3Error::Transport { operation, error }),
                };
            }
            tracing::debug!(operation, attempt, "S3 request failed for a passing reason; trying again");
            tokio::time::sleep(wait).await;
            wait *= 2;
            attempt += 1;
        }
    }

    /// Puts `body` under `key` with its Content-MD5, so that S3 refuses bytes changed on the way.
    async fn put(&self, operation: &'static str, key: &str, body: Bytes, only_new: bool) -> Result<Reply, S3Error> {
        let content_md5 = content_md5(&body);
        self.request(operation, || {
            let mut action = PutObject::new(&self.bucket, self.credentials.as_ref(), key);
            action.headers_mut().insert("content-md5", content_md5.clone());
            let mut headers = vec![("content-md5", content_md5.clone())];
            if only_new {
                action.headers_mut().insert("if-none-match", "*");
                headers.push(("if-none-match", "*".to_owned()));
            }
            Request { method: awc::http::Method::PUT, url: action.sign(SIGNED_FOR).into(), headers, body: body.clone() }
        })
        .await
    }

    /// Bytes `range` of the object (`None`: all of it); `None` if there is no such object.
    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>, S3Error> {
        let got = self
            .request("GetObject", || {
                let action = GetObject::new(&self.bucket, self.credentials.as_ref(), key);
                let headers =
                    range.map(|r| ("range", format!("bytes={}-{}", r.start(), r.end()))).into_iter().collect();
                Request {
                    method: awc::http::Method::GET,
                    url: action.sign(SIGNED_FOR).into(),
                    headers,
                    body: Bytes::new(),
                }
            })
            .await;
        match got {
            Ok(reply) => Ok(Some(reply.body)),
            Err(e) if e.has_code("NoSuchKey") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the object; one that is not there is no error (S3 answers 204 either way).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.request("DeleteObject", || {
            let action = DeleteObject::new(&self.bucket, self.credentials.as_ref(), key);
            Request {
                method: awc::http::Method::DELETE,
                url: action.sign(SIGNED_FOR).into(),
                headers: Vec::new(),
                body: Bytes::new(),
            }
        })
        .await
        .map(drop)
    }

    /// The keys under `prefix`, in order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let reply = self
                .request("ListObjectsV2", || {
                    let mut action = ListObjectsV2::new(&self.bucket, self.credentials.as_ref());
                    action.with_prefix(prefix);
                    if let Some(token) = &token {
                        action.with_continuation_token(token.as_str());
                    }
                    Request {
                        method: awc::http::Method::GET,
                        url: action.sign(SIGNED_FOR).into(),
                        headers: Vec::new(),
                        body: Bytes::new(),
                    }
                })
                .await?;
            let listed = ListObjectsV2::parse_response(&String::from_utf8_lossy(&reply.body))
                .map_err(|e| S3Error::Reply { operation: "ListObjectsV2", error: e.to_string() })?;
            keys.extend(listed.contents.into_iter().map(|object| object.key));
            match listed.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Stages the bytes `range` of task `task_id`'s file.
    pub async fn stage(&self, task_id: i64, range: ByteRange, body: Bytes) -> Result<(), S3Error> {
        self.put("PutObject (staging)", &self.staging_key(task_id, range), body, false).await.map(drop)
    }

    /// The staged ranges of the task, each with its key.
    pub async fn staged(&self, task_id: i64) -> Result<Vec<(String, ByteRange)>, S3Error> {
        let keys = self.list(&self.staging_prefix(task_id)).await?;
        Ok(keys.into_iter().filter_map(|key| super::staged_range(&key).map(|range| (key, range))).collect())
    }

    /// The task's multipart upload into `key`: the one recorded in S3, or a new one recorded
    /// there. Two nodes starting one at once both write the record only if it is absent: the
    /// loser aborts its own and takes the winner's.
    pub async fn upload_id(&self, task_id: i64, key: &str) -> Result<String, S3Error> {
        if let Some(id) = self.cached_upload_id(task_id) {
            return Ok(id);
        }
        let record = format!("{}upload-id", self.task_prefix(task_id));
        let id = match self.get(&record, None).await? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let created = self.create_upload(key).await?;
                let put = self.put("PutObject (upload id)", &record, Bytes::from(created.clone()), true).await;
                match put {
                    Ok(_) => created,
                    Err(e) if e.has_code("PreconditionFailed") => {
                        self.abort(key, &created).await?;
                        let winner = self.get(&record, None).await?;
                        let winner = winner
                            .ok_or(S3Error::Reply { operation: "GetObject (upload id)", error: "gone".into() })?;
                        String::from_utf8_lossy(&winner).into_owned()
                    }
                    Err(e) => {
                        self.abort(key, &created).await?;
                        return Err(e);
                    }
                }
            }
        };
        lock(&self.upload_ids).insert(task_id, id.clone());
        Ok(id)
    }

    fn cached_upload_id(&self, task_id: i64) -> Option<String> {
        lock(&self.upload_ids).get(&task_id).cloned()
    }

    async fn create_upload(&self, key: &str) -> Result<String, S3Error> {
        let reply = self
            .request("CreateMultipartUpload", || {
                let url = self.create_upload_url(key);
                Request { method: awc::http::Method::POST, url, headers: Vec::new(), body: Bytes::new() }
            })
            .await?;
        let created = CreateMultipartUpload::parse_response(&String::from_utf8_lossy(&reply.body))
            .map_err(|e| S3Error::Reply { operation: "CreateMultipartUpload", error: e.to_string() })?;
        Ok(created.upload_id().to_owned())
    }

    /// `CreateMultipartUpload`'s URL with `?uploads=`, as AWS's own clients send it: rusty-s3
    /// signs `?uploads=1`, which S3 takes but moto's server answers with a 500.
    fn create_upload_url(&self, key: &str) -> String {
        let url = self.bucket.object_url(key);
        let query = std::iter::once(("uploads", ""));
        match &self.credentials {
            Some(c) => rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Post,
                url,
                c.key(),
                c.secret(),
                c.token(),
                self.bucket.region(),
                SIGNED_FOR.as_secs(),
                query,
                std::iter::empty(),
            )
            .into(),
            None => format!("{url}?uploads="),
        }
    }

    /// Uploads part `number` with its Content-MD5; the part's ETag. Uploading the same bytes
    /// again (two nodes, or a retry) replaces the part with an equal one.
    pub async fn upload_part(&self, key: &str, upload_id: &str, number: u16, body: Bytes) -> Result<String, S3Error> {
        let content_md5 = content_md5(&body);
        let reply = self
            .request("UploadPart", || {
                let mut action = UploadPart::new(&self.bucket, self.credentials.as_ref(), key, number, upload_id);
                action.headers_mut().insert("content-md5", content_md5.clone());
                let headers = vec![("content-md5", content_md5.clone())];
                Request {
                    method: awc::http::Method::PUT,
                    url: action.sign(SIGNED_FOR).into(),
                    headers,
                    body: body.clone(),
                }
            })
            .await?;
        reply.etag.ok_or(S3Error::Reply { operation: "UploadPart", error: "no ETag".into() })
    }

    /// The parts uploaded so far; `None` if the upload is no longer there (completed or aborted).
    pub async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>, S3Error> {
        let mut parts = Vec::new();
        let mut marker = None;
        loop {
            let listed = self
                .request("ListParts", || {
                    let mut action = ListParts::new(&self.bucket, self.credentials.as_ref(), key, upload_id);
                    if let Some(marker) = marker {
                        action.set_part_number_marker(marker);
                    }
                    Request {
                        method: awc::http::Method::GET,
                        url: action.sign(SIGNED_FOR).into(),
                        headers: Vec::new(),
                        body: Bytes::new(),
                    }
                })
                .await;
            let reply = match listed {
                Ok(reply) => reply,
                Err(e) if e.has_code("NoSuchUpload") => return Ok(None),
                Err(e) => return Err(e),
            };
            let listed = ListParts::parse_response(&String::from_utf8_lossy(&reply.body))
                .map_err(|e| S3Error::Reply { operation: "ListParts", error: e.to_string() })?;
            parts.extend(listed.parts.into_iter().map(|p| UploadedPart {
                number: p.number,
                etag: p.etag,
                size: p.size,
            }));
            match listed.next_part_number_marker {
                Some(next) => marker = Some(next),
                None => return Ok(Some(parts)),
            }
        }
    }

    /// Completes the upload from the parts' ETags, part 1 first.
    pub async fn complete(&self, key: &str, upload_id: &str, etags: &[String]) -> Result<(), S3Error> {
        let reply = self
            .request("CompleteMultipartUpload", || {
                let action = CompleteMultipartUpload::new(
                    &self.bucket,
                    self.credentials.as_ref(),
                    key,
                    upload_id,
                    etags.iter().map(String::as_str),
                );
                let url = action.sign(SIGNED_FOR).into();
                Request { method: awc::http::Method::POST, url, headers: Vec::new(), body: Bytes::from(action.body()) }
            })
            .await?;
        // S3 can answer 200 and still fail, with an Error document as the body.
        let body = String::from_utf8_lossy(&reply.body);
        CompleteMultipartUploadResponse::parse(&body).map_err(|_| refusal("CompleteMultipartUpload", &reply))?;
        Ok(())
    }

    /// Aborts the upload; one already gone (completed, aborted) is no error.
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let aborted = self
            .request("AbortMultipartUpload", || {
                let action = AbortMultipartUpload::new(&self.bucket, self.credentials.as_ref(), key, upload_id);
                Request {
                    method: awc::http::Method::DELETE,
                    url: action.sign(SIGNED_FOR).into(),
                    headers: Vec::new(),
                    body: Bytes::new(),
                }
            })
            .await;
        match aborted {
            Err(e) if !e.has_code("NoSuchUpload") => Err(e),
            _ => Ok(()),
        }
    }

    /// Everything the task left in S3 but the finished object: its upload aborted (if it was not
    /// completed), its staging objects and its upload-id record deleted.
    pub async fn discard(&self, task_id: i64, key: &str) -> Result<(), S3Error> {
        let record = format!("{}upload-id", self.task_prefix(task_id));
        let id = match self.cached_upload_id(task_id) {
            Some(id) => Some(id),
            None => self.get(&record, None).await?.map(|id| String::from_utf8_lossy(&id).into_owned()),
        };
        if let Some(id) = id {
            self.abort(key, &id).await?;
        }
        for leftover in self.list(&self.task_prefix(task_id)).await? {
            self.delete(&leftover).await?;
        }
        lock(&self.upload_ids).remove(&task_id);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each change is a single insert or remove: a panic elsewhere cannot leave half of one.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

fn refusal(operation: &'static str, reply: &Reply) -> S3Error {
    let body = String::from_utf8_lossy(&reply.body);
    S3Error::Refused {
        operation,
        status: reply.status,
        code: xml_text(&body, "Code").unwrap_or_default(),
        message: xml_text(&body, "Message").unwrap_or_default(),
    }
}

/// The text of the first `<tag>` of an S3 Error document.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(prefix: &str) -> S3Storage {
        let settings = S3Settings {
            bucket: "b".into(),
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            prefix: prefix.into(),
            path_style: true,
        };
        S3Storage::new(&settings).unwrap()
    }

    #[test]
    fn keys_put_the_prefix_first_and_drop_empty_segments() {
        let s3 = storage("/uploads/");
        assert_eq!(s3.object_key("/a//b/./", "f.bin"), "uploads/a/b/f.bin");
        assert_eq!(s3.object_key("", "f.bin"), "uploads/f.bin");
        assert_eq!(storage("").object_key("/a", "f.bin"), "a/f.bin");
        let range = ByteRange::new(5, 9).unwrap();
        assert_eq!(
            s3.staging_key(7, range),
            "uploads/.fupload/task-7/blocks/00000000000000000005-00000000000000000009"
        );
        assert_eq!(super::super::staged_range(&s3.staging_key(7, range)), Some(range));
    }

    #[test]
    fn an_error_document_gives_its_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>";
        let reply = Reply { status: 503, etag: None, body: Bytes::from(body) };
        match refusal("PutObject", &reply) {
            S3Error::Refused { status, code, message, .. } => {
                assert_eq!((status, code.as_str(), message.as_str()), (503, "SlowDown", "Reduce your rate"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(xml_text("<Error></Error>", "Code"), None);
    }

    #[test]
    fn content_md5_is_the_base64_of_the_raw_digest() {
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    #[test]
    fn a_part_upload_signs_its_content_md5() {
        let s3 = storage("");
        let mut action = UploadPart::new(&s3.bucket, None, "k", 3, "id");
        action.headers_mut().insert("content-md5", "x");
        let url = action.sign(SIGNED_FOR);
        assert_eq!(url.as_str(), "http://127.0.0.1:9/b/k?partNumber=3&uploadId=id");
        let credentials = Credentials::new("key", "secret");
        let mut action = UploadPart::new(&s3.bucket, Some(&credentials), "k", 3, "id");
        action.headers_mut().insert("content-md5", "x");
        let url = action.sign(SIGNED_FOR);
        assert!(url.query().unwrap().contains("X-Amz-SignedHeaders=content-md5%3Bhost"), "{url}");
    }
}
