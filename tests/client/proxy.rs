//! An in-test HTTP proxy between the client and fupload: counts the block requests and their
//! bytes, answers 503 to some, and holds others forever (a network that stopped answering).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use fupload::http::BLOCK_PATH;
use tokio::sync::watch;

use crate::helpers::{spawn_app_with, StopOnDrop, TestApp};

pub struct Proxy {
    pub url: String,
    state: Arc<ProxyState>,
    _server: StopOnDrop,
}

struct ProxyState {
    upstream: String,
    /// Block requests still to answer with 503.
    to_fail: AtomicUsize,
    /// Block requests still to forward before holding the rest; `usize::MAX`: no limit.
    to_forward: AtomicUsize,
    /// Held requests wait for this to turn true (never, if nobody releases them).
    release: watch::Sender<bool>,
    counts: Counts,
}

/// What went through the proxy so far.
#[derive(Debug, Default)]
pub struct Counts {
    pub failed: AtomicUsize,
    pub held: AtomicUsize,
    /// Block requests fupload answered.
    pub forwarded: AtomicUsize,
    /// Body bytes (multipart, so a little more than the file bytes) of those.
    pub forwarded_bytes: AtomicU64,
}

/// The counts at one moment, to compare runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub failed: usize,
    pub held: usize,
    pub forwarded: usize,
    pub forwarded_bytes: u64,
}

impl Counts {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            failed: self.failed.load(Ordering::SeqCst),
            held: self.held.load(Ordering::SeqCst),
            forwarded: self.forwarded.load(Ordering::SeqCst),
            forwarded_bytes: self.forwarded_bytes.load(Ordering::SeqCst),
        }
    }
}

/// fupload behind a proxy: the task URLs fupload hands out point at the proxy.
pub async fn spawn_behind_proxy() -> (TestApp, Proxy) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let app = spawn_app_with(|settings| settings.server.proxy_addr = url.clone()).await;
    let proxy = Proxy::start(listener, url, app.base.clone());
    (app, proxy)
}

impl Proxy {
    fn start(listener: TcpListener, url: String, upstream: String) -> Self {
        let state = Arc::new(ProxyState {
            upstream,
            to_fail: AtomicUsize::new(0),
            to_forward: AtomicUsize::new(usize::MAX),
            release: watch::channel(false).0,
            counts: Counts::default(),
        });
        let in_app = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::from(in_app.clone()))
                .app_data(web::Data::new(awc::Client::builder().timeout(Duration::from_secs(60)).finish()))
                .app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::to(forward))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let stop = StopOnDrop(server.handle());
        actix_web::rt::spawn(server);
        Proxy { url, state, _server: stop }
    }

    pub fn counts(&self) -> Snapshot {
        self.state.counts.snapshot()
    }

    /// Answers the next `n` block requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.state.to_fail.store(n, Ordering::SeqCst);
    }

    /// Forwards `n` more block requests, then holds every later one.
    pub fn hold_after(&self, n: usize) {
        self.state.to_forward.store(n, Ordering::SeqCst);
    }

    /// Forwards new block requests again; held ones stay held (their client gave up on them).
    pub fn forward_new(&self) {
        self.state.to_forward.store(usize::MAX, Ordering::SeqCst);
    }

    /// Forwards the held requests and every new one.
    pub fn release_held(&self) {
        self.forward_new();
        self.state.release.send_replace(true);
    }

    /// Waits until the counts satisfy `done`; panics after 20 s.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        for _ in 0..2000 {
            let counts = self.counts();
            if done(&counts) {
                return counts;
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy never saw {what}: {:?}", self.counts());
    }
}

async fn forward(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<ProxyState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let is_block = request.path() == BLOCK_PATH;
    if is_block && take_one(&state.to_fail) {
        state.counts.failed.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"retCode": "20", "status": "injected by the test proxy", "data": null}));
    }
    if is_block && !take_one(&state.to_forward) {
        state.counts.held.fetch_add(1, Ordering::SeqCst);
        let mut release = state.release.subscribe();
        let _ = release.wait_for(|released| *released).await;
    }
    let url = format!("{}{}", state.upstream, request.uri());
    let body_len = body.len() as u64;
    let mut reply = match client.request_from(url, request.head()).send_body(body).await {
        Ok(reply) => reply,
        Err(e) => return HttpResponse::BadGateway().body(e.to_string()),
    };
    let reply_body = reply.body().limit(16 << 20).await.unwrap_or_default();
    if is_block {
        state.counts.forwarded.fetch_add(1, Ordering::SeqCst);
        state.counts.forwarded_bytes.fetch_add(body_len, Ordering::SeqCst);
    }
    HttpResponse::build(StatusCode::from_u16(reply.status().as_u16()).unwrap())
        .content_type("application/json")
        .body(reply_body)
}

/// Takes one from `counter` unless it is 0; `usize::MAX` never runs out.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            0 => None,
            usize::MAX => Some(n),
            n => Some(n - 1),
        })
        .is_ok()
}
