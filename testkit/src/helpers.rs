//! Spawns the real server on a random loopback port with temp dirs, plus a callback receiver,
//! and talks HTTP to them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use fupload::config::{BusinessServer, Settings};
use fupload::startup::Application;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use sha2::Sha256;

pub const TOKEN: &str = "cp1-secret";

pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// Deterministic test data.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32 % 32) as u8 ^ seed).collect()
}

/// A callback the business server received.
#[derive(Debug, Clone)]
pub struct Callback {
    pub signature: String,
    pub raw_body: Vec<u8>,
    pub json: Value,
}

impl Callback {
    pub fn signature_is_valid(&self) -> bool {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(TOKEN.as_bytes()).unwrap();
        mac.update(&self.raw_body);
        self.signature == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// An in-test business server that records callbacks and answers with a settable status.
#[derive(Clone)]
pub struct CallbackReceiver {
    pub received: Arc<Mutex<Vec<Callback>>>,
    /// Statuses to answer with, in order; when empty, 200.
    pub answers: Arc<Mutex<Vec<u16>>>,
    pub url: String,
    _server: Arc<StopOnDrop>,
}

async fn record_callback(req: HttpRequest, body: web::Bytes, receiver: web::Data<CallbackReceiver>) -> HttpResponse {
    let answer = {
        let mut answers = receiver.answers.lock().unwrap();
        if answers.is_empty() {
            200
        } else {
            answers.remove(0)
        }
    };
    if answer == 200 {
        let signature =
            req.headers().get("x-fupload-signature").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        receiver.received.lock().unwrap().push(Callback { signature, raw_body: body.to_vec(), json });
    }
    HttpResponse::build(StatusCode::from_u16(answer).unwrap()).finish()
}

impl CallbackReceiver {
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// A receiver that serves https with `server.tls`-like files: a certificate and its key.
    pub async fn start_https(cert: &crate::tls::IssuedCert) -> Self {
        let served = fupload::tls::ServerCert::load(&cert.cert_file, &cert.key_file).unwrap();
        Self::start_on(Some(served.server_config().unwrap())).await
    }

    async fn start_on(tls: Option<rustls::ServerConfig>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}/api/business/fupload/callback");
        let slot: Arc<Mutex<Option<CallbackReceiver>>> = Arc::new(Mutex::new(None));
        let slot_in_app = slot.clone();
        let server = HttpServer::new(move || {
            let receiver = slot_in_app.lock().unwrap().clone().expect("receiver is set before serving");
            App::new()
                .app_data(web::Data::new(receiver))
                .route("/api/business/fupload/callback", web::post().to(record_callback))
        })
        .workers(1)
        .disable_signals();
        let server = match tls {
            Some(config) => server.listen_rustls_0_23(listener, config),
            None => server.listen(listener),
        }
        .unwrap()
        .run();
        let receiver = CallbackReceiver { received, answers, url, _server: Arc::new(StopOnDrop(server.handle())) };
        *slot.lock().unwrap() = Some(receiver.clone());
        actix_web::rt::spawn(server);
        receiver
    }

    pub fn callbacks(&self) -> Vec<Callback> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` callbacks arrived; panics after 15 s.
    pub async fn wait_for(&self, n: usize) -> Vec<Callback> {
        for _ in 0..300 {
            let got = self.callbacks();
            if got.len() >= n {
                return got;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} callbacks, got {:?}", self.callbacks());
    }
}

/// Stops a server when the test lets go of it (the stop command is sent at once).
pub struct StopOnDrop(pub ServerHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        drop(self.0.stop(false));
    }
}

pub struct TestApp {
    pub base: String,
    pub settings: Settings,
    pub dir: Arc<tempfile::TempDir>,
    pub callbacks: CallbackReceiver,
    handle: ServerHandle,
    _server: StopOnDrop,
    running: actix_web::rt::task::JoinHandle<anyhow::Result<()>>,
    client: awc::Client,
}

/// A task as the create reply describes it.
#[derive(Debug, Clone)]
pub struct TaskUrls {
    pub task_id: i64,
    pub upload_url: String,
    pub blocks_url: String,
    pub state_url: String,
    pub tus_url: String,
}

/// A reply: HTTP status, the JSON envelope, and its `Retry-After` header if it had one.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub json: Value,
    pub retry_after: Option<String>,
}

impl Reply {
    async fn of<S>(response: &mut awc::ClientResponse<S>) -> Self
    where
        S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
    {
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let json = response.json::<Value>().limit(16 << 20).await.unwrap_or(Value::Null);
        Reply { status: response.status().as_u16(), json, retry_after }
    }

    pub fn ret_code(&self) -> &str {
        self.json["retCode"].as_str().unwrap_or("<none>")
    }

    /// Asserts (HTTP status, retCode), showing the whole reply when they differ.
    pub fn expect(&self, status: u16, ret_code: &str) -> &Self {
        assert_eq!((self.status, self.ret_code()), (status, ret_code), "reply: {}", self.json);
        self
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let callbacks = CallbackReceiver::start().await;
    let mut settings = Settings::from_yaml("{}", Vec::new()).unwrap();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.database.url = database_url(dir.path()).await;
    settings.tmp_dir = dir.path().join("tmp");
    settings.store_dir = dir.path().join("store");
    settings.callback.initial_backoff = 0.05;
    settings.callback.max_backoff = 0.2;
    settings.business_servers =
        HashMap::from([(TOKEN.to_owned(), BusinessServer { name: "cp1".into(), notify_url: callbacks.url.clone() })]);
    tweak(&mut settings);
    start(settings, dir, callbacks).await
}

/// A server on an existing database and directories.
pub async fn restart_on(settings: Settings, dir: Arc<tempfile::TempDir>, callbacks: CallbackReceiver) -> TestApp {
    start(settings, dir, callbacks).await
}

async fn start(settings: Settings, dir: Arc<tempfile::TempDir>, callbacks: CallbackReceiver) -> TestApp {
    let app = Application::build(settings.clone()).await.expect("the app builds");
    let scheme = if settings.server.tls.files().is_some() { "https" } else { "http" };
    let base = format!("{scheme}://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let running = actix_web::rt::spawn(app.run_until_stopped());
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    TestApp { base, settings, dir, callbacks, _server: StopOnDrop(handle.clone()), handle, running, client }
}

impl TestApp {
    /// Stops the server and its workers, as a shutdown would.
    pub async fn stop(self) -> (Settings, Arc<tempfile::TempDir>, CallbackReceiver) {
        self.handle.stop(false).await;
        self.running.await.unwrap().unwrap();
        (self.settings, self.dir, self.callbacks)
    }

    /// A new server on the same database and directories.
    pub async fn restart(self) -> TestApp {
        let (settings, dir, callbacks) = self.stop().await;
        start(settings, dir, callbacks).await
    }

    pub fn path(&self, relative: &str) -> std::path::PathBuf {
        self.dir.path().join(relative)
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> Reply {
        self.post_raw(url, "application/json", body.to_string().into_bytes()).await
    }

    pub async fn post_raw(&self, url: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let url = self.absolute(url);
        let mut response =
            self.client.post(url).insert_header(("content-type", content_type)).send_body(body).await.unwrap();
        Reply::of(&mut response).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        let mut response = self.client.get(self.absolute(url)).send().await.unwrap();
        Reply::of(&mut response).await
    }

    /// Any request, with extra headers; the reply's status, headers and body as they came.
    pub async fn request(
        &self,
        method: awc::http::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
        self.request_with_body(method, url, headers, Vec::new()).await
    }

    /// As `request`, with a body (sent with its Content-Length, even when empty).
    pub async fn request_with_body(
        &self,
        method: awc::http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
        let mut request = self.client.request(method, self.absolute(url));
        for header in headers {
            request = request.insert_header(*header);
        }
        let mut response = request.send_body(body).await.unwrap();
        let body = response.body().limit(16 << 20).await.unwrap().to_vec();
        (response.status().as_u16(), response.headers().clone(), body)
    }

    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.base)
        }
    }

    pub async fn create(&self, body: &Value) -> Reply {
        self.post_json("/api/upload/new/task", body).await
    }

    /// Creates a task for `data` with the example fields.
    pub async fn new_task(&self, file_name: &str, data: &[u8]) -> TaskUrls {
        let reply = self.create(&task_body(file_name, data)).await;
        reply.expect(200, "0");
        task_urls(&reply.json)
    }

    /// Sends `data[start..=end]` as one block with its md5.
    pub async fn send_block(&self, task: &TaskUrls, data: &[u8], start: usize, end: usize) -> Reply {
        let (content_type, body) = block_multipart(start, &data[start..=end]);
        self.post_raw(&task.upload_url, &content_type, body).await
    }

    pub async fn send_fields(&self, url: &str, fields: &[(&str, &[u8])]) -> Reply {
        let (content_type, body) = multipart(fields);
        self.post_raw(url, &content_type, body).await
    }

    /// Sends all of `data` in blocks of `block` bytes, in order.
    pub async fn upload_all(&self, task: &TaskUrls, data: &[u8], block: usize) -> Reply {
        let mut last = None;
        for start in (0..data.len()).step_by(block) {
            let end = (start + block).min(data.len()) - 1;
            let reply = self.send_block(task, data, start, end).await;
            assert_eq!(reply.status, 200, "{}", reply.json);
            last = Some(reply);
        }
        last.expect("data is not empty")
    }

    /// Sends every range `blocksUrl` still expects, one block each.
    pub async fn send_missing(&self, task: &TaskUrls, data: &[u8]) {
        let info = self.blocks_info(task).await;
        for gap in info["expectBlocks"].as_array().unwrap() {
            let (start, end) = (gap["startByte"].as_u64().unwrap() as usize, gap["endByte"].as_u64().unwrap() as usize);
            self.send_block(task, data, start, end).await.expect(200, "0");
        }
    }

    pub async fn blocks_info(&self, task: &TaskUrls) -> Value {
        let reply = self.get(&task.blocks_url).await;
        reply.expect(200, "0");
        reply.json["data"].clone()
    }

    pub async fn set_state(&self, task: &TaskUrls, status: &str) -> Reply {
        self.post_json(&task.state_url, &json!({"taskId": task.task_id, "status": status})).await
    }

    /// Waits until the task reaches `status`; panics after 15 s.
    pub async fn wait_for_status(&self, task: &TaskUrls, status: &str) -> Value {
        for _ in 0..300 {
            let info = self.blocks_info(task).await;
            if info["status"] == status {
                return info;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {} never reached {status}: {}", task.task_id, self.blocks_info(task).await);
    }

    /// The stored file of a finished task, as its callback names it.
    pub fn stored_file(callback: &Callback) -> Vec<u8> {
        std::fs::read(callback.json["storePath"].as_str().unwrap()).unwrap()
    }

    /// Waits until tmpDir is empty (a finish removes its temp file after it replies); panics
    /// after 15 s.
    pub async fn wait_for_empty_tmp_dir(&self) {
        for _ in 0..300 {
            if self.tmp_files().is_empty() {
                return;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("files left in tmpDir: {:?}", self.tmp_files());
    }

    pub fn tmp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.path("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

pub fn task_body(file_name: &str, data: &[u8]) -> Value {
    json!({
        "token": TOKEN, "userId": "123", "storePath": "hello/", "fileName": file_name,
        "fileSize": data.len(), "fileMd5": md5_hex(data),
        "feedBackParameter": {"order": 42, "note": "keep me"}
    })
}

pub fn task_urls(json: &Value) -> TaskUrls {
    let data = &json["data"];
    TaskUrls {
        task_id: data["taskId"].as_i64().unwrap(),
        upload_url: data["uploadUrl"].as_str().unwrap().to_owned(),
        blocks_url: data["blocksUrl"].as_str().unwrap().to_owned(),
        state_url: data["stateUrl"].as_str().unwrap().to_owned(),
        tus_url: data["tusUrl"].as_str().unwrap().to_owned(),
    }
}

/// The multipart body of a block: `part` at byte `start`, with its md5.
pub fn block_multipart(start: usize, part: &[u8]) -> (String, Vec<u8>) {
    let end = start + part.len() - 1;
    multipart(&[
        ("startByte", start.to_string().as_bytes()),
        ("endByte", end.to_string().as_bytes()),
        ("partMd5", md5_hex(part).as_bytes()),
        ("file", part),
    ])
}

pub const BOUNDARY: &str = "fupload-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart/form-data body with the fields in the given order (`file` as a file part).
pub fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        if *name == "file" {
            body.extend_from_slice(
                b"Content-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            );
        } else {
            body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// The databases (schemas) made on the PostgreSQL test server: kept until the test binary ends (a
/// test restarts its server on the same one), and gone with the server, which `.ci/run` throws
/// away. A few pages each.
static POSTGRES_DATABASES: std::sync::Mutex<Vec<fupload::store::TempDatabase>> = std::sync::Mutex::new(Vec::new());

/// The PostgreSQL server the tests run on instead of SQLite, when `FUPLOAD_TEST_POSTGRES_URL`
/// names one (scripts/postgres-tests.sh).
pub fn postgres_server() -> Option<String> {
    std::env::var("FUPLOAD_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty())
}

/// Whether the tests run on SQLite: a few look into its file, or hold its lock, themselves.
pub fn on_sqlite() -> bool {
    postgres_server().is_none()
}

/// A `database.url` for a test's server: a new database on the PostgreSQL test server, or a
/// SQLite file in `dir`.
pub async fn database_url(dir: &std::path::Path) -> String {
    match postgres_server() {
        Some(server) => {
            let database = fupload::store::TempDatabase::create(&server).await.expect("a test database");
            let url = database.url.clone();
            POSTGRES_DATABASES.lock().unwrap_or_else(|e| e.into_inner()).push(database);
            url
        }
        None => format!("sqlite://{}", dir.join("fupload.db").display()),
    }
}

/// Rows of a query on the task database, as text.
pub async fn query(app: &TestApp, sql: &str) -> Vec<Vec<String>> {
    query_database(&app.settings.database.url, sql)
}

/// Rows of a query on the database at `url` (a `database.url`), as text; NULL as `"NULL"`.
pub fn query_database(url: &str, sql: &str) -> Vec<Vec<String>> {
    if url.starts_with("postgres") {
        return query_postgres(url, sql);
    }
    use rusqlite::types::ValueRef;
    let conn = open_database(url);
    let mut query = conn.prepare(sql).unwrap();
    let columns = query.column_count();
    let rows = query.query_map([], |row| {
        (0..columns)
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    ValueRef::Null => "NULL".to_owned(),
                    ValueRef::Integer(n) => n.to_string(),
                    ValueRef::Real(x) => x.to_string(),
                    ValueRef::Text(text) | ValueRef::Blob(text) => String::from_utf8_lossy(text).into_owned(),
                })
            })
            .collect::<rusqlite::Result<Vec<String>>>()
    });
    rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
}

/// `query_database` on PostgreSQL: each row as JSON (which keeps the columns' order), its values
/// as SQLite's would read (booleans as 1 and 0).
fn query_postgres(url: &str, sql: &str) -> Vec<Vec<String>> {
    let wrapped = format!(
        "SELECT json_build_array(VARIADIC ARRAY(SELECT value FROM json_each(row_to_json(q))))::text FROM ({sql}) AS q"
    );
    let rows: Vec<String> =
        on_postgres(url, move |conn| Box::pin(async move { sqlx::query_scalar(&wrapped).fetch_all(conn).await }));
    let text = |value: &Value| match value {
        Value::Null => "NULL".to_owned(),
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    rows.iter()
        .map(|row| serde_json::from_str::<Vec<Value>>(row).expect("a row as JSON").iter().map(text).collect())
        .collect()
}

/// Runs `statement` on the database at `url` (SQLite or PostgreSQL).
pub fn execute_database(url: &str, statement: &str) {
    if url.starts_with("postgres") {
        let statement = statement.to_owned();
        on_postgres(url, move |conn| Box::pin(async move { sqlx::query(&statement).execute(conn).await.map(drop) }));
    } else {
        open_database(url).execute(statement, []).unwrap();
    }
}

/// Runs `work` on a connection of its own to the PostgreSQL database at `url`, on a thread with
/// a runtime of its own (the callers are not async).
fn on_postgres<T: Send + 'static>(
    url: &str,
    work: impl for<'c> FnOnce(&'c mut sqlx::PgConnection) -> futures_util::future::BoxFuture<'c, Result<T, sqlx::Error>>
        + Send
        + 'static,
) -> T {
    use sqlx::Connection;
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let result = work(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            result
        })
    })
    .join()
    .unwrap()
}

/// Another process (an operator's sqlite3 or psql, say) in a write transaction on the database at
/// `url` that holds the tables' write lock until this is dropped.
pub enum DatabaseLock {
    Sqlite(rusqlite::Connection),
    /// The thread whose connection holds the lock, and what tells it to let go.
    Postgres(Option<std::sync::mpsc::Sender<()>>, Option<std::thread::JoinHandle<()>>),
}

impl DatabaseLock {
    pub fn hold(url: &str) -> Self {
        Self::hold_tables(url, "upload_tasks, received_ranges, callback_outbox, write_probe")
    }

    /// As `hold`, on PostgreSQL for the writes to `tables` only (on SQLite, every table's).
    pub fn hold_tables(url: &str, tables: &str) -> Self {
        if !url.starts_with("postgres") {
            let conn = open_database(url);
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            return DatabaseLock::Sqlite(conn);
        }
        use sqlx::Connection;
        let (url, (release, released), (held, holding)) =
            (url.to_owned(), std::sync::mpsc::channel(), std::sync::mpsc::channel());
        let lock = format!("LOCK TABLE {tables} IN EXCLUSIVE MODE");
        let holder = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                let mut transaction = conn.begin().await.unwrap();
                // Reads go on; every write waits.
                sqlx::query(&lock).execute(&mut *transaction).await.unwrap();
                held.send(()).unwrap();
                let _ = released.recv();
                transaction.rollback().await.unwrap();
            })
        });
        holding.recv().unwrap();
        DatabaseLock::Postgres(Some(release), Some(holder))
    }
}

impl Drop for DatabaseLock {
    fn drop(&mut self) {
        if let DatabaseLock::Postgres(release, holder) = self {
            drop(release.take());
            if let Some(holder) = holder.take() {
                let _ = holder.join();
            }
        }
    }
}

/// A connection of the test's own to the database at `url` (the server's `database.url`).
pub fn open_database(url: &str) -> rusqlite::Connection {
    rusqlite::Connection::open(fupload::store::database_path(url).unwrap()).unwrap()
}

/// Makes every callback waiting for a retry due now, in the (stopped) server's database at `url`.
pub fn make_callbacks_due(url: &str) {
    execute_database(url, "UPDATE callback_outbox SET next_attempt_at = '2000-01-01T00:00:00.000Z'");
}
