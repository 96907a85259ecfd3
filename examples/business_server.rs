//! The example business server. It owns its users and the token fupload knows it by: it asks
//! fupload to create upload tasks for its users, hands browsers upload grants, and receives
//! fupload's signed callbacks.
//!
//! - `POST /api/business/new/task` with `{userId, fileName, fileSize, fileMd5}` (what the client
//!   sends): forwards the task to fupload with the token, `storePath: "users/<userId>/"` and a
//!   `feedBackParameter`, and answers with fupload's reply (the task's URLs).
//! - `POST /api/business/grant` with `{userId, fileName, fileSize, fileMd5}` (`fileSize` may be
//!   null, `fileMd5` absent): answers `{grant, endpoint}`, an upload grant for that file signed with
//!   the token and the tus URL to create the upload at (docs/API.md, section 9.3).
//! - `POST /api/business/fupload/callback`: checks `X-Fupload-Signature` (HMAC-SHA256 of the raw
//!   body keyed by the token), answers 401 to a bad one, and logs the callback.
//! - `GET /api/business/callbacks`: the callbacks received with a valid signature, as a JSON array.
//! - `GET /`: the Uppy page (clients/uppy, built into `--page-dir`), which asks for a grant per file
//!   and uploads it to fupload with tus.
//!
//! With fupload running on the shipped config (its `bServer` entry points here and its `cors` lets
//! this server's page upload):
//!
//!     cargo run --release --bin fupload-server -- -c conf/fupload.yml
//!     (cd clients/uppy && npm ci && npm run build)
//!     cargo run --release --example business_server -- --fupload http://127.0.0.1:8080
//!
//! then open http://127.0.0.1:8090/ and pick a file, or upload from the command line:
//!
//!     cargo run --release --bin fupload-client -- upload FILE \
//!         --create-url http://127.0.0.1:8090/api/business/new/task --user-id 123

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use fupload::client::GrantClaims;
use fupload::http::tus::TUS_PATH;
use fupload::http::NEW_TASK_PATH;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::watch;

pub const NEW_TASK_ROUTE: &str = "/api/business/new/task";
pub const CALLBACK_ROUTE: &str = "/api/business/fupload/callback";
pub const GRANT_ROUTE: &str = "/api/business/grant";
pub const CALLBACKS_ROUTE: &str = "/api/business/callbacks";
/// Long enough to pick a file and start its upload; a resumed upload needs no new grant.
const GRANT_TTL_SECS: u64 = 600;

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
    /// The built Uppy page (`npm ci && npm run build` in clients/uppy), served at `/`.
    #[arg(long, default_value = DEFAULT_PAGE_DIR)]
    page_dir: PathBuf,
}

const DEFAULT_PAGE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/uppy/dist");

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)?;
    let business = Business::new(&args.fupload, &args.token).with_page_dir(args.page_dir);
    let server = serve(listener, business.clone())?;
    println!(
        "business server on http://{}: the Uppy page at /, POST {NEW_TASK_ROUTE}, POST {GRANT_ROUTE}, \
         callbacks on {CALLBACK_ROUTE}",
        args.listen
    );
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

/// What the business server knows: where fupload is, its token, the callbacks it received, where
/// its page is.
#[derive(Clone)]
pub struct Business {
    fupload_url: String,
    token: String,
    pub callbacks: Callbacks,
    page_dir: PathBuf,
}

impl Business {
    pub fn new(fupload_url: &str, token: &str) -> Self {
        let fupload_url = fupload_url.trim_end_matches('/').to_owned();
        let page_dir = PathBuf::from(DEFAULT_PAGE_DIR);
        Self { fupload_url, token: token.to_owned(), callbacks: Callbacks::default(), page_dir }
    }

    pub fn with_page_dir(self, page_dir: PathBuf) -> Self {
        Self { page_dir, ..self }
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

    fn all(&self) -> Vec<Value> {
        self.received.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Waits for the callback number `n` (from 0) and returns it.
    pub async fn nth(&self, n: usize) -> Value {
        let mut count = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = count.wait_for(|count| *count > n).await;
        self.received.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[n].clone()
    }
}

/// Serves the business server's endpoints and page on `listener`.
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
        .route(GRANT_ROUTE, web::post().to(grant))
        .route(CALLBACK_ROUTE, web::post().to(callback))
        .route(CALLBACKS_ROUTE, web::get().to(callbacks))
        .route("/", web::get().to(page_index))
        .route("/{file}", web::get().to(page_file));
}

/// The id of a user, if it is a plain name. A real business server knows its users; this one
/// takes any plain id and files each user's uploads under users/<userId>/.
fn plain_user_id(user_id: &Value) -> Option<String> {
    let user_id = match user_id {
        Value::String(id) => id.clone(),
        Value::Number(id) if id.is_u64() => id.to_string(),
        _ => return None,
    };
    let plain = !user_id.is_empty()
        && user_id.len() <= 64
        && user_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then_some(user_id)
}

const BAD_USER_ID: &str = "userId: must be 1-64 letters, digits, - or _";

/// What fupload hands back in the callback of a user's upload.
fn feed_back_parameter(user_id: &str) -> Value {
    json!({"userId": user_id, "via": "example business server"})
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
    let Some(user_id) = plain_user_id(&request.user_id) else {
        return envelope(StatusCode::BAD_REQUEST, "6", BAD_USER_ID);
    };
    let task = json!({
        "token": business.token,
        "userId": user_id,
        "storePath": format!("users/{user_id}/"),
        "fileName": request.file_name,
        "fileSize": request.file_size,
        "fileMd5": request.file_md5,
        "instant": request.instant,
        "feedBackParameter": feed_back_parameter(&user_id),
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

/// What a page sends for a grant: the file it is about to upload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrantRequest {
    user_id: Value,
    file_name: String,
    /// `null`: the client tells the length later.
    file_size: Option<u64>,
    #[serde(default)]
    file_md5: Option<String>,
}

async fn grant(request: web::Json<GrantRequest>, business: web::Data<Business>) -> HttpResponse {
    let request = request.into_inner();
    // A real business server authenticates its user first (its session, its login) and takes the
    // id from there rather than from the body: a grant lets whoever holds it upload into that
    // user's folder. fupload checks the file's fields when the grant is used.
    let Some(user_id) = plain_user_id(&request.user_id) else {
        return envelope(StatusCode::BAD_REQUEST, "6", BAD_USER_ID);
    };
    let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let mut claims = match GrantClaims::new(&user_id, &request.file_name, request.file_size, now_secs, GRANT_TTL_SECS) {
        Ok(claims) => claims,
        Err(e) => return envelope(StatusCode::INTERNAL_SERVER_ERROR, "20", &format!("no random grant id: {e}")),
    };
    claims.store_path = format!("users/{user_id}/");
    claims.file_md5 = request.file_md5;
    claims.feed_back_parameter = serde_json::value::to_raw_value(&feed_back_parameter(&user_id)).ok();
    HttpResponse::Ok().json(json!({
        "grant": claims.sign(&business.token),
        // Where the browser creates the upload: fupload's URL as this server was given it.
        "endpoint": format!("{}{TUS_PATH}", business.fupload_url),
    }))
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

async fn callbacks(business: web::Data<Business>) -> HttpResponse {
    HttpResponse::Ok().json(business.callbacks.all())
}

async fn page_index(business: web::Data<Business>) -> HttpResponse {
    page(&business.page_dir, "index.html").await
}

async fn page_file(file: web::Path<String>, business: web::Data<Business>) -> HttpResponse {
    page(&business.page_dir, &file).await
}

/// A file of the built page. Only plain names are served, so nothing outside `dir` can be named.
async fn page(dir: &Path, file: &str) -> HttpResponse {
    let plain = !file.starts_with('.') && file.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let body = if plain { tokio::fs::read(dir.join(file)).await.ok() } else { None };
    let Some(body) = body else {
        let index = dir.join("index.html");
        let text = match tokio::fs::try_exists(&index).await {
            Ok(true) => "no such file\n".to_owned(),
            _ => format!(
                "The Uppy page is not built: run `npm ci && npm run build` in clients/uppy (looked for {}).\n",
                index.display()
            ),
        };
        return HttpResponse::NotFound().content_type("text/plain; charset=utf-8").body(text);
    };
    let content_type = match file.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    HttpResponse::Ok().content_type(content_type).body(body)
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
        let listed: Value = call_and_read_body_json(&app, TestRequest::get().uri(CALLBACKS_ROUTE).to_request()).await;
        assert_eq!(listed, json!([{"retCode": "0", "taskId": 7}]));
    }

    #[actix_web::test]
    async fn a_grant_is_signed_with_the_token_for_the_users_folder() {
        let business = Business::new("http://127.0.0.1:1/", TOKEN);
        let app = init_service(App::new().configure(|cfg| routes(cfg, business))).await;
        for file_size in [json!(5), json!(null)] {
            let request = TestRequest::post()
                .uri(GRANT_ROUTE)
                .set_json(json!({"userId": 7, "fileName": "a.bin", "fileSize": file_size}))
                .to_request();
            let reply: Value = call_and_read_body_json(&app, request).await;
            assert_eq!(reply["endpoint"], "http://127.0.0.1:1/api/upload/tus");
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let grant = reply["grant"].as_str().unwrap();
            let (token, grant) = fupload::domain::grant::verify(grant, [TOKEN], now).unwrap();
            assert_eq!((token, grant.user_id.as_str(), grant.store_path.as_str()), (TOKEN, "7", "users/7/"));
            assert_eq!(grant.file_size.is_some(), file_size.is_number());
            let feedback: Value = serde_json::from_str(&grant.feedback_parameter).unwrap();
            assert_eq!(feedback["userId"], "7");
        }
        let request = TestRequest::post()
            .uri(GRANT_ROUTE)
            .set_json(json!({"userId": "a/b", "fileName": "a.bin", "fileSize": 5}))
            .to_request();
        let reply: Value = call_and_read_body_json(&app, request).await;
        assert_eq!(reply["retCode"], "6");
    }

    #[actix_web::test]
    async fn the_page_is_served_from_its_directory_or_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let business = Business::new("http://127.0.0.1:1", TOKEN).with_page_dir(dir.path().into());
        let app = init_service(App::new().configure(|cfg| routes(cfg, business))).await;
        let get = |uri: &str| TestRequest::get().uri(uri).to_request();
        let missing = call_service(&app, get("/")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let text = actix_web::body::to_bytes(missing.into_body()).await.unwrap();
        assert!(String::from_utf8_lossy(&text).contains("npm ci && npm run build"));

        std::fs::write(dir.path().join("index.html"), "<html></html>").unwrap();
        std::fs::write(dir.path().join("page.js"), "").unwrap();
        std::fs::write(dir.path().join(".hidden"), "").unwrap();
        let index = call_service(&app, get("/")).await;
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(index.headers().get("content-type").unwrap(), "text/html; charset=utf-8");
        assert_eq!(
            call_service(&app, get("/page.js")).await.headers().get("content-type").unwrap(),
            "text/javascript; charset=utf-8"
        );
        for refused in ["/.hidden", "/..%2Fetc", "/nothing.js"] {
            assert_eq!(call_service(&app, get(refused)).await.status(), StatusCode::NOT_FOUND, "{refused}");
        }
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
