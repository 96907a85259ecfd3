//! The example business server. It owns its users and the token fupload knows it by: it asks
//! fupload to create upload tasks for its users, and receives fupload's signed callbacks.
//!
//! - `POST /api/business/new/task` with `{userId, fileName, fileSize, fileMd5}` (what the client
//!   sends): forwards the task to fupload with the token, `storePath: "users/<userId>/"` and a
//!   `feedBackParameter`, and answers with fupload's reply (the task's URLs).
//! - `POST /api/business/fupload/callback`: checks `X-Fupload-Signature` (HMAC-SHA256 of the raw
//!   body keyed by the token), answers 401 to a bad one, and logs the callback.
//!
//! With fupload running on the shipped config (its `bServer` entry points here):
//!
//!     cargo run --release --example business_server -- --fupload http://127.0.0.1:8080
//!     cargo run --release --bin fupload-client -- upload FILE \
//!         --create-url http://127.0.0.1:8090/api/business/new/task --user-id 123

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use fupload::http::NEW_TASK_PATH;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::watch;

pub const NEW_TASK_ROUTE: &str = "/api/business/new/task";
pub const CALLBACK_ROUTE: &str = "/api/business/fupload/callback";

/// The example business server.
#[derive(Parser)]
#[command(name = "business_server")]
struct Args {
    /// Address to listen on (fupload's `bServer.<token>.notifyUrl` must point here).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// fupload's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    fupload: String,
    /// The token fupload's config lists for this business server.
    #[arg(long, env = "FUPLOAD_TOKEN", default_value = "cp1-secret")]
    token: String,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)?;
    let business = Business::new(&args.fupload, &args.token);
    let server = serve(listener, business.clone())?;
    println!("business server on http://{}: POST {NEW_TASK_ROUTE}, callbacks on {CALLBACK_ROUTE}", args.listen);
    let printer = actix_web::rt::spawn(print_callbacks(business.callbacks));
    server.await?;
    printer.abort();
    Ok(())
}

async fn print_callbacks(callbacks: Callbacks) {
    for n in 0.. {
        let callback = callbacks.nth(n).await;
        println!("callback (signature valid): {callback}");
    }
}

/// What the business server knows: where fupload is, its token, the callbacks it received.
#[derive(Clone)]
pub struct Business {
    fupload_url: String,
    token: String,
    pub callbacks: Callbacks,
}

impl Business {
    pub fn new(fupload_url: &str, token: &str) -> Self {
        let fupload_url = fupload_url.trim_end_matches('/').to_owned();
        Self { fupload_url, token: token.to_owned(), callbacks: Callbacks::default() }
    }
}

/// The callbacks received with a valid signature, in order of arrival.
#[derive(Clone)]
pub struct Callbacks {
    received: Arc<Mutex<Vec<Value>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Default for Callbacks {
    fn default() -> Self {
        Self { received: Arc::default(), count: Arc::new(watch::channel(0).0) }
    }
}

impl Callbacks {
    fn record(&self, callback: Value) {
        let mut received = self.received.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        received.push(callback);
        self.count.send_replace(received.len());
    }

    /// Waits for the callback number `n` (from 0) and returns it.
    pub async fn nth(&self, n: usize) -> Value {
        let mut count = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = count.wait_for(|count| *count > n).await;
        self.received.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[n].clone()
    }
}

/// Serves the business server's two endpoints on `listener`.
pub fn serve(listener: TcpListener, business: Business) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || App::new().configure(|cfg| routes(cfg, business.clone())))
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run())
}

fn routes(cfg: &mut web::ServiceConfig, business: Business) {
    // awc's client is not Send: one per worker, made on the worker's thread.
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    cfg.app_data(web::Data::new(business))
        .app_data(web::Data::new(client))
        .route(NEW_TASK_ROUTE, web::post().to(new_task))
        .route(CALLBACK_ROUTE, web::post().to(callback));
}

/// What a client asks for: the fields of the original example business server.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewTask {
    user_id: Value,
    file_name: Value,
    file_size: Value,
    file_md5: Value,
    /// Asks fupload for an instant upload; passed on as it is.
    #[serde(default)]
    instant: Value,
}

async fn new_task(
    request: web::Json<NewTask>,
    business: web::Data<Business>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let request = request.into_inner();
    // A real business server knows its users; this one takes any plain id and files each
    // user's uploads under users/<userId>/.
    let user_id = match &request.user_id {
        Value::String(id) => id.clone(),
        Value::Number(id) if id.is_u64() => id.to_string(),
        _ => String::new(),
    };
    if user_id.is_empty()
        || user_id.len() > 64
        || !user_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return envelope(StatusCode::BAD_REQUEST, "6", "userId: must be 1-64 letters, digits, - or _");
    }
    let task = json!({
        "token": business.token,
        "userId": user_id,
        "storePath": format!("users/{user_id}/"),
        "fileName": request.file_name,
        "fileSize": request.file_size,
        "fileMd5": request.file_md5,
        "instant": request.instant,
        "feedBackParameter": {"userId": user_id, "via": "example business server"},
    });
    let url = format!("{}{NEW_TASK_PATH}", business.fupload_url);
    let mut reply = match client.post(&url).send_json(&task).await {
        Ok(reply) => reply,
        Err(e) => return envelope(StatusCode::BAD_GATEWAY, "20", &format!("cannot reach fupload: {e}")),
    };
    match reply.body().await {
        // fupload's reply as it is: the client reads the task's URLs from it.
        Ok(body) => HttpResponse::build(reply.status()).content_type("application/json").body(body),
        Err(e) => envelope(StatusCode::BAD_GATEWAY, "20", &format!("cannot read fupload's reply: {e}")),
    }
}

async fn callback(request: HttpRequest, body: web::Bytes, business: web::Data<Business>) -> HttpResponse {
    let signature = request.headers().get("x-fupload-signature").and_then(|value| value.to_str().ok());
    if !signature_is_valid(&business.token, &body, signature) {
        eprintln!("refused a callback with a missing or wrong X-Fupload-Signature");
        return envelope(StatusCode::UNAUTHORIZED, "1", "bad signature");
    }
    match serde_json::from_slice(&body) {
        Ok(callback) => {
            business.callbacks.record(callback);
            envelope(StatusCode::OK, "0", "ok")
        }
        Err(_) => envelope(StatusCode::BAD_REQUEST, "6", "body: must be JSON"),
    }
}

/// Whether `signature` is `sha256=<hex HMAC-SHA256 of body keyed by token>`, compared in
/// constant time.
pub fn signature_is_valid(token: &str, body: &[u8], signature: Option<&str>) -> bool {
    let Some(digest) =
        signature.and_then(|s| s.strip_prefix("sha256=")).and_then(|hex_digits| hex::decode(hex_digits).ok())
    else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()) else { return false };
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

fn envelope(status: StatusCode, ret_code: &str, text: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"retCode": ret_code, "status": text, "data": null}))
}

#[cfg(test)]
mod tests {
    use actix_web::test::{call_and_read_body_json, call_service, init_service, TestRequest};

    use super::*;

    const TOKEN: &str = "Jefe";
    const BODY: &[u8] = b"what do ya want for nothing?";
    // RFC 4231, test case 2.
    const SIGNATURE: &str = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

    #[test]
    fn the_signature_check_takes_the_real_signature_only() {
        assert!(signature_is_valid(TOKEN, BODY, Some(SIGNATURE)));
        assert!(!signature_is_valid(TOKEN, b"what do ya want for nothing!", Some(SIGNATURE)), "tampered body");
        let tampered = SIGNATURE.replace("5bdc", "5bdd");
        assert!(!signature_is_valid(TOKEN, BODY, Some(&tampered)), "tampered signature");
        assert!(!signature_is_valid("other", BODY, Some(SIGNATURE)), "another token");
        assert!(!signature_is_valid(TOKEN, BODY, Some(SIGNATURE.trim_start_matches("sha256="))), "no prefix");
        assert!(!signature_is_valid(TOKEN, BODY, Some("sha256=zz")), "not hex");
        assert!(!signature_is_valid(TOKEN, BODY, None), "missing");
    }

    #[actix_web::test]
    async fn the_callback_endpoint_records_signed_callbacks_and_refuses_tampered_ones() {
        let business = Business::new("http://127.0.0.1:1", TOKEN);
        let app = init_service(App::new().configure(|cfg| routes(cfg, business.clone()))).await;
        let body = br#"{"retCode":"0","taskId":7}"#;
        let signature = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(TOKEN.as_bytes()).unwrap();
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        };
        let post = |body: &'static [u8], signature: Option<&str>| {
            let request = TestRequest::post().uri(CALLBACK_ROUTE).set_payload(body);
            match signature {
                Some(signature) => request.insert_header(("x-fupload-signature", signature.to_owned())),
                None => request,
            }
            .to_request()
        };
        let tampered = br#"{"retCode":"0","taskId":8}"#;
        assert_eq!(call_service(&app, post(tampered, Some(&signature))).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(call_service(&app, post(body, None)).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(call_service(&app, post(body, Some(&signature))).await.status(), StatusCode::OK);
        assert_eq!(business.callbacks.nth(0).await, json!({"retCode": "0", "taskId": 7}));
        assert_eq!(business.callbacks.received.lock().unwrap().len(), 1, "only the valid one was recorded");
    }

    #[actix_web::test]
    async fn a_user_id_that_is_not_a_plain_name_is_refused() {
        let business = Business::new("http://127.0.0.1:1", TOKEN);
        let app = init_service(App::new().configure(|cfg| routes(cfg, business))).await;
        let request = TestRequest::post()
            .uri(NEW_TASK_ROUTE)
            .set_json(json!({"userId": "../x", "fileName": "a", "fileSize": 1, "fileMd5": "0"}))
            .to_request();
        let reply: Value = call_and_read_body_json(&app, request).await;
        assert_eq!(reply["retCode"], "6");
    }
}
