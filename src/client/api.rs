//! The four requests of the protocol over awc, each tried again on network errors and 5xx.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use awc::body::SizedStream;
use awc::error::SendRequestError;
use awc::http::header::{CONTENT_TYPE, RETRY_AFTER};
use awc::SendClientRequest;
use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ClientError;
use super::file::LocalFile;
use super::progress::Progress;
use super::retry::RetryPolicy;
use super::task::{self, BlocksInfo, TaskCreator, TaskUrls, WantedState};
use crate::domain::{ByteRange, Md5Hex, TaskStatus};

/// The largest reply read: an `expectBlocks` list of a badly fragmented file can be long.
const MAX_REPLY: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub retry: RetryPolicy,
    /// How long one request may take, sending its block included.
    pub timeout: Duration,
    /// Whom https servers are checked against.
    pub tls: TlsRoots,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { retry: RetryPolicy::default(), timeout: Duration::from_secs(120), tls: TlsRoots::default() }
    }
}

/// The CAs an https server's certificate must chain to: Mozilla's roots (webpki-roots) and the
/// system's store, plus, with [`TlsRoots::with_ca_file`], those of a PEM file (a private CA).
/// Certificates are always verified.
#[derive(Clone)]
pub struct TlsRoots(Arc<rustls::ClientConfig>);

impl TlsRoots {
    /// The built-in roots and the CA certificates in the PEM file at `path`.
    pub fn with_ca_file(path: &Path) -> Result<Self, ClientError> {
        crate::tls::client_config(Some(path)).map(Self).map_err(|e| ClientError::Usage(format!("--ca-file: {e:#}")))
    }
}

impl Default for TlsRoots {
    fn default() -> Self {
        // Without a file to read, building the config cannot fail.
        Self(crate::tls::client_config(None).expect("the built-in TLS roots make a client config"))
    }
}

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRoots").finish_non_exhaustive()
    }
}

/// Talks to fupload (and to a business server, to create tasks). Not `Send`: use it on the
/// thread that made it.
pub struct Client {
    http: awc::Client,
    retry: RetryPolicy,
    progress: Rc<dyn Progress>,
    sent: Rc<Cell<u64>>,
}

/// The outcome of a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChanged {
    pub status: TaskStatus,
    /// The task was in that state already (retCode "5").
    pub already: bool,
}

/// What the server did with a block.
pub(super) enum BlockOutcome {
    /// Accepted (retCode "0", or "1" when the server had all its bytes already).
    Accepted,
    /// Accepted, but some of its bytes are being written by another block in flight (a stalled
    /// one, say): send it again after this delay (the reply's `Retry-After`).
    SendAgainAfter(Duration),
    /// The task takes no more blocks (retCode "11"): `blocksUrl` tells why.
    TaskEnded,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "retCode")]
    ret_code: Value,
    #[serde(default)]
    status: String,
    #[serde(default)]
    data: Value,
}

/// A reply in the envelope, with its HTTP status.
struct Reply {
    http: u16,
    ret_code: String,
    status: String,
    data: Value,
    /// The `Retry-After` header, in seconds.
    retry_after: Option<Duration>,
}

impl Reply {
    fn refused(self, what: &str) -> ClientError {
        ClientError::Refused { what: what.to_owned(), http: self.http, ret_code: self.ret_code, status: self.status }
    }
}

impl Client {
    pub fn new(options: ClientOptions, progress: Rc<dyn Progress>) -> Self {
        let http = awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(options.tls.0))
            .timeout(options.timeout)
            .disable_redirects()
            .finish();
        Self { http, retry: options.retry, progress, sent: Rc::new(Cell::new(0)) }
    }

    /// Bytes of files this client has handed to its connections, tries that failed included.
    pub fn sent_bytes(&self) -> u64 {
        self.sent.get()
    }

    pub(super) fn progress(&self) -> &dyn Progress {
        self.progress.as_ref()
    }

    /// Creates the task for `file`, or finds the unfinished one created with the same fields.
    pub async fn create_task(&self, creator: &TaskCreator, file: &LocalFile) -> Result<TaskUrls, ClientError> {
        let url = creator.url()?;
        let what = format!("creating the task at {url}");
        let body = creator.body(file);
        let reply = self.call(&what, || self.http.post(&url).send_json(&body)).await?;
        match reply.ret_code.as_str() {
            "0" => serde_json::from_value(reply.data).map_err(|e| bad_reply(&what, e)),
            _ => Err(reply.refused(&what)),
        }
    }

    /// What `blocksUrl` says: status, sizes and the missing ranges.
    pub async fn blocks_info(&self, task: &TaskUrls) -> Result<BlocksInfo, ClientError> {
        let what = format!("asking task {} for its expected blocks", task.task_id);
        let reply = self.call(&what, || self.http.get(&task.blocks_url).send()).await?;
        match reply.ret_code.as_str() {
            "0" => task::blocks_info(reply.data).map_err(|e| bad_reply(&what, e)),
            _ => Err(reply.refused(&what)),
        }
    }

    pub async fn change_state(&self, task: &TaskUrls, wanted: WantedState) -> Result<StateChanged, ClientError> {
        let what = format!("setting task {} to {}", task.task_id, wanted.as_str());
        let body = json!({"taskId": task.task_id, "status": wanted.as_str()});
        let reply = self.call(&what, || self.http.post(&task.state_url).send_json(&body)).await?;
        match reply.ret_code.as_str() {
            "0" => {
                let status = reply.data["status"].as_str().unwrap_or_default();
                let status = status.parse().map_err(|e| bad_reply(&what, e))?;
                Ok(StateChanged { status, already: false })
            }
            "5" => Ok(StateChanged { status: wanted.status(), already: true }),
            _ => Err(reply.refused(&what)),
        }
    }

    /// Answers the task's instant-upload challenge from `file`: whether the server took the proof
    /// and finished the task. A refusal (a wrong or late proof, the file gone from the server) is
    /// `false`: the task takes the bytes as usual.
    pub(super) async fn answer_challenge(&self, task: &TaskUrls, file: &LocalFile) -> Result<bool, ClientError> {
        let (Some(url), Some(challenge)) = (&task.instant_url, &task.challenge) else {
            return Ok(false);
        };
        let mut ranges = Vec::new();
        for range in &challenge.ranges {
            let bad =
                || bad_reply("reading the challenge", format!("bad range {}-{}", range.start_byte, range.end_byte));
            let range = ByteRange::new(range.start_byte, range.end_byte).filter(|r| r.end() < file.size);
            ranges.push(range.ok_or_else(bad)?);
        }
        let proof = file.proof(&challenge.nonce, &ranges).await?;
        let what = format!("answering the instant-upload challenge of task {}", task.task_id);
        let body = json!({"proof": proof.as_str()});
        let reply = self.call(&what, || self.http.post(url).send_json(&body)).await?;
        match reply.ret_code.as_str() {
            "0" => {
                self.progress.instant(task, None);
                Ok(true)
            }
            // Wrong, late, used up, or the file changed on the server: upload the bytes.
            "7" | "12" => {
                self.progress.instant(task, Some(&reply.status));
                Ok(false)
            }
            "4" => Err(ClientError::Paused { task_id: task.task_id, state_url: task.state_url.clone() }),
            "11" => Ok(false), // ended meanwhile: blocksUrl tells how
            _ => Err(reply.refused(&what)),
        }
    }

    /// Sends `range` of `file` as one block: its md5, then its bytes read from disk as they go.
    pub(super) async fn send_block(
        &self,
        task: &TaskUrls,
        file: &LocalFile,
        range: ByteRange,
    ) -> Result<BlockOutcome, ClientError> {
        let part_md5 = file.md5_of(range).await?;
        let what = format!("sending bytes {range} of task {}", task.task_id);
        let this_try = Rc::new(Cell::new(0u64));
        let reply = self
            .call(&what, || {
                let failed_try = this_try.replace(0);
                if failed_try > 0 {
                    self.progress.unsent(failed_try);
                }
                let (content_type, length, body) = self.block_body(file, range, &part_md5, this_try.clone());
                self.http
                    .post(&task.upload_url)
                    .insert_header((CONTENT_TYPE, content_type))
                    .send_body(SizedStream::new(length, body))
            })
            .await?;
        match (reply.ret_code.as_str(), reply.retry_after) {
            ("0" | "1", Some(delay)) => {
                self.progress.waiting(&what, delay, &reply.status);
                return Ok(BlockOutcome::SendAgainAfter(delay));
            }
            ("0" | "1", None) => return Ok(BlockOutcome::Accepted),
            _ => {}
        }
        match reply.ret_code.as_str() {
            "4" => Err(ClientError::Paused { task_id: task.task_id, state_url: task.state_url.clone() }),
            "11" => Ok(BlockOutcome::TaskEnded),
            _ => Err(reply.refused(&what)),
        }
    }

    /// A multipart body with the text fields before `file` (the server's fast path). Its
    /// boundary holds the part's md5, which the part's own bytes cannot contain but by a
    /// 2^-128 accident.
    fn block_body(
        &self,
        file: &LocalFile,
        range: ByteRange,
        part_md5: &Md5Hex,
        this_try: Rc<Cell<u64>>,
    ) -> (String, u64, stream::LocalBoxStream<'static, std::io::Result<Bytes>>) {
        let boundary = format!("fupload-{part_md5}");
        let mut head = String::new();
        for (name, value) in [
            ("startByte", range.start().to_string()),
            ("endByte", range.end().to_string()),
            ("partMd5", part_md5.to_string()),
        ] {
            head += &format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n");
        }
        head += &format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let length = head.len() as u64 + range.size() + tail.len() as u64;
        let (sent, progress) = (self.sent.clone(), self.progress.clone());
        let bytes = file.stream(range).inspect_ok(move |piece| {
            let n = piece.len() as u64;
            this_try.set(this_try.get() + n);
            sent.set(sent.get() + n);
            progress.sent(n);
        });
        let body = stream::once(async move { Ok(Bytes::from(head)) })
            .chain(bytes)
            .chain(stream::once(async move { Ok(Bytes::from(tail)) }))
            .boxed_local();
        (format!("multipart/form-data; boundary={boundary}"), length, body)
    }

    /// Sends the request `send` makes until it gets an answer that is not a 5xx (or 408, 429),
    /// waiting longer after each failure, at most `retry.attempts` times.
    async fn call(&self, what: &str, mut send: impl FnMut() -> SendClientRequest) -> Result<Reply, ClientError> {
        let mut failed = 0;
        loop {
            let cause = match send().await {
                Err(SendRequestError::Url(e)) => return Err(ClientError::Usage(format!("{what}: {e}"))),
                Err(SendRequestError::Http(e)) => return Err(ClientError::Usage(format!("{what}: {e}"))),
                Err(e) => e.to_string(),
                Ok(mut response) => {
                    let http = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match response.body().limit(MAX_REPLY).await {
                        Err(e) => format!("reading the reply: {e}"),
                        Ok(body) => match read_reply(http, &body) {
                            Ok(reply) if !is_transient(http) => return Ok(Reply { retry_after, ..reply }),
                            Err(problem) if !is_transient(http) => {
                                return Err(ClientError::BadReply { what: what.to_owned(), problem })
                            }
                            Ok(reply) => format!("HTTP {http}, retCode {}: {}", reply.ret_code, reply.status),
                            Err(_) => format!("HTTP {http}"),
                        },
                    }
                }
            };
            failed += 1;
            if !self.retry.tries_again_after(failed) {
                return Err(ClientError::GaveUp { what: what.to_owned(), attempts: failed, last: cause });
            }
            let delay = self.retry.delay_after(failed);
            self.progress.retrying(what, failed, delay, &cause);
            actix_web::rt::time::sleep(delay).await;
        }
    }
}

/// Server trouble that may pass: worth another try.
fn is_transient(http: u16) -> bool {
    http >= 500 || http == 408 || http == 429
}

fn read_reply(http: u16, body: &[u8]) -> Result<Reply, String> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|_| {
        let start = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("HTTP {http} without the JSON envelope: {start:?}")
    })?;
    let ret_code = match envelope.ret_code {
        Value::String(code) => code,
        other => other.to_string(),
    };
    Ok(Reply { http, ret_code, status: envelope.status, data: envelope.data, retry_after: None })
}

fn bad_reply(what: &str, problem: impl std::fmt::Display) -> ClientError {
    ClientError::BadReply { what: what.to_owned(), problem: problem.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_from_the_envelope_with_any_ret_code_type() {
        let reply = read_reply(409, br#"{"retCode":"4","status":"task is paused","data":null}"#).unwrap();
        assert_eq!((reply.http, reply.ret_code.as_str(), reply.status.as_str()), (409, "4", "task is paused"));
        assert_eq!(read_reply(200, br#"{"retCode":0}"#).unwrap().ret_code, "0");
        let problem = read_reply(502, b"<html>Bad gateway</html>").err().unwrap();
        assert!(problem.contains("HTTP 502") && problem.contains("Bad gateway"), "{problem}");
    }

    #[test]
    fn only_server_trouble_is_tried_again() {
        assert!([500, 502, 503, 507, 408, 429].into_iter().all(is_transient));
        assert!(![200, 400, 401, 404, 409, 413, 416].into_iter().any(is_transient));
    }
}
