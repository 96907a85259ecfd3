//! Crash test: the real `fupload-server` binary as a child process, uploads of many files in
//! parallel against it, killed with SIGKILL at random moments (seeded, the seed printed) — at any
//! time, mid-block, while a task is in `verify`, while a callback is in flight, right after a
//! start — and started again on the same database and directories, over and over.
//!
//! After each kill: every acknowledged byte is recorded and holds the right data in the temp file;
//! every finished file has the right content and md5. After each restart: temp files of ended
//! tasks are gone, and no task stays in `verify`. At the end every task has finished, every
//! callback was delivered at least once (and recorded as delivered), and tmpDir is empty.
//!
//! `FUPLOAD_CRASH_KILLS` sets the number of kills (40 by default, the CI run);
//! `FUPLOAD_CRASH_KILLS=200 cargo test --release --test crash -- --nocapture` is the soak mode.
//! `FUPLOAD_CRASH_SEED` repeats a run.

use fupload_testkit::{acks, helpers};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};

use acks::acknowledged;
use helpers::{md5_hex, multipart, StopOnDrop, TOKEN};

/// Files uploaded at once, and the clients sending blocks of each of them in parallel.
const GROUPS: usize = 4;
const CLIENTS_PER_FILE: usize = 3;
const MAX_BLOCK: usize = 192 << 10;

fn sleep(ms: u64) -> actix_web::rt::time::Sleep {
    actix_web::rt::time::sleep(Duration::from_millis(ms))
}

// ---------------------------------------------------------------------------------------------
// The business server: records callbacks; sometimes slow (so that kills land while a callback is
// in flight), sometimes answers 503 (so that the retry is exercised across kills).

#[derive(Clone)]
struct Receiver {
    state: Arc<ReceiverState>,
    url: String,
    _server: Arc<StopOnDrop>,
}

struct ReceiverState {
    rng: Mutex<StdRng>,
    in_flight: AtomicUsize,
    received: Mutex<Vec<Value>>,
}

async fn receive_callback(body: web::Bytes, state: web::Data<Arc<ReceiverState>>) -> HttpResponse {
    let (delay, refuse) = {
        let mut rng = state.rng.lock().unwrap();
        (if rng.random_bool(0.3) { rng.random_range(50..400) } else { 0 }, rng.random_bool(0.1))
    };
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    sleep(delay).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    if refuse {
        return HttpResponse::ServiceUnavailable().finish();
    }
    state.received.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    HttpResponse::Ok().finish()
}

impl Receiver {
    fn start(seed: u64) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/callback", listener.local_addr().unwrap().port());
        let state = Arc::new(ReceiverState {
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
            in_flight: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let server = HttpServer::new(move || {
            App::new().app_data(web::Data::new(shared.clone())).route("/callback", web::post().to(receive_callback))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let stop = Arc::new(StopOnDrop(server.handle()));
        actix_web::rt::spawn(server);
        Receiver { state, url, _server: stop }
    }

    fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Value> {
        self.state.received.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test, as a child process on a fixed port.

struct ServerProcess {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    base: String,
    child: Option<Child>,
}

impl ServerProcess {
    fn new(dir: &Path, notify_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.join("fupload.yml");
        std::fs::write(
            &config,
            format!(
                "server: {{host: \"127.0.0.1\", port: {port}, addr: \"http://127.0.0.1\"}}\n\
                 database: {{url: \"sqlite://{db}\"}}\n\
                 tmpDir: \"{tmp}\"\nstoreDir: \"{store}\"\n\
                 callback: {{timeout: 10, maxAttempts: 1000, initialBackoff: 0.05, maxBackoff: 0.5}}\n\
                 bServer:\n  {TOKEN}: {{name: \"cp1\", notifyUrl: \"{notify_url}\"}}\n",
                db = dir.join("fupload.db").display(),
                tmp = dir.join("tmp").display(),
                store = dir.join("store").display(),
            ),
        )
        .unwrap();
        // The binary under test stays the same for the whole run, even if cargo rebuilds it
        // meanwhile (a link keeps the old file; a copy if linking is not possible).
        let bin = dir.join("fupload-server");
        let built = Path::new(env!("CARGO_BIN_EXE_fupload-server"));
        if std::fs::hard_link(built, &bin).is_err() {
            std::fs::copy(built, &bin).unwrap();
        }
        ServerProcess {
            bin,
            config,
            log: dir.join("server.log"),
            base: format!("http://127.0.0.1:{port}"),
            child: None,
        }
    }

    /// Starts the server and waits until it serves (recovery is done before it serves).
    async fn start(&mut self, client: &awc::Client) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        #[expect(clippy::disallowed_methods, reason = "the test kills and restarts the server binary")]
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .env_clear()
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(format!("{}/ready", self.base)).send().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the server exited ({status}) at start-up:\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "the server did not start:\n{}", self.log_tail());
            sleep(10).await;
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The clients: groups of clients, each group uploading one file after another, its clients
// sending random (overlapping, sometimes corrupted, sometimes file-first) blocks in parallel.

#[derive(Debug, Clone)]
struct TaskUrls {
    task_id: i64,
    upload_url: String,
    blocks_url: String,
}

struct Job {
    name: String,
    md5: String,
    size: usize,
    /// Dropped once the finished file was checked.
    data: RefCell<Vec<u8>>,
    urls: RefCell<Option<TaskUrls>>,
    /// One client of the group creates the task; the others wait for its URLs.
    creating: Cell<bool>,
    done: Cell<bool>,
}

#[derive(Default)]
struct Group {
    index: usize,
    files: Cell<usize>,
    current: RefCell<Option<Rc<Job>>>,
}

#[derive(Default)]
struct Stats {
    kills_by_mode: BTreeMap<&'static str, usize>,
    with_blocks_in_flight: usize,
    with_callback_in_flight: usize,
    with_task_in_verify: usize,
    with_callback_pending: usize,
    blocks_acked: usize,
    bytes_acked: u64,
    corrupted_refused: usize,
    transport_errors: usize,
}

struct World {
    rng: RefCell<StdRng>,
    client: awc::Client,
    base: String,
    up: tokio::sync::watch::Sender<bool>,
    requests_in_flight: Cell<usize>,
    blocks_in_flight: Cell<usize>,
    stop_new_files: Cell<bool>,
    jobs: RefCell<HashMap<String, Rc<Job>>>,
    /// Acknowledged byte ranges by task.
    acked: RefCell<HashMap<i64, Vec<(u64, u64)>>>,
    errors: RefCell<Vec<String>>,
    stats: RefCell<Stats>,
}

/// The server went away (or the connection broke) before a reply.
struct Gone;

impl World {
    fn error(&self, message: String) {
        self.errors.borrow_mut().push(message);
    }

    fn chance(&self, p: f64) -> bool {
        self.rng.borrow_mut().random_bool(p)
    }

    fn below(&self, n: usize) -> usize {
        self.rng.borrow_mut().random_range(0..n.max(1))
    }

    async fn wait_until_up(&self) {
        let mut up = self.up.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    /// Sends a request and reads its JSON reply.
    async fn exchange(
        &self,
        request: awc::ClientRequest,
        body: Option<(String, Vec<u8>)>,
    ) -> Result<(u16, Value), Gone> {
        self.requests_in_flight.set(self.requests_in_flight.get() + 1);
        let sent = match body {
            Some((content_type, body)) => request.insert_header(("content-type", content_type)).send_body(body).await,
            None => request.send().await,
        };
        let reply = match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                response.json::<Value>().limit(16 << 20).await.map(|json| (status, json)).map_err(|_| Gone)
            }
            Err(_) => Err(Gone),
        };
        self.requests_in_flight.set(self.requests_in_flight.get() - 1);
        if reply.is_err() {
            self.stats.borrow_mut().transport_errors += 1;
        }
        reply
    }

    fn next_job(&self, group: &Group) -> Rc<Job> {
        let n = group.files.get();
        group.files.set(n + 1);
        let size = match self.below(100) {
            0..=4 => 0,
            5..=14 => 1 + self.below(100),
            15..=69 => 1 + self.below(256 << 10),
            _ => (256 << 10) + self.below(1280 << 10),
        };
        let mut data = vec![0u8; size];
        self.rng.borrow_mut().fill(&mut data[..]);
        let job = Rc::new(Job {
            name: format!("g{}-{n}.bin", group.index),
            md5: md5_hex(&data),
            size,
            data: RefCell::new(data),
            urls: RefCell::new(None),
            creating: Cell::new(false),
            done: Cell::new(false),
        });
        self.jobs.borrow_mut().insert(job.name.clone(), job.clone());
        job
    }

    /// The group's file to work on; `None` once no new files are started and the last is done.
    fn job_of(&self, group: &Group) -> Option<Rc<Job>> {
        let mut current = group.current.borrow_mut();
        if current.as_ref().is_none_or(|job| job.done.get()) {
            if self.stop_new_files.get() {
                return None;
            }
            *current = Some(self.next_job(group));
        }
        current.clone()
    }

    async fn create(&self, job: &Job) -> Result<(), Gone> {
        let body = json!({"token": TOKEN, "userId": "crash", "storePath": "crash/", "fileName": job.name,
            "fileSize": job.size, "fileMd5": job.md5});
        let request = self.client.post(format!("{}/api/upload/new/task", self.base));
        let (status, reply) =
            self.exchange(request, Some(("application/json".into(), body.to_string().into()))).await?;
        if (status, reply["retCode"].as_str()) != (200, Some("0")) {
            self.error(format!("create {}: {status} {reply}", job.name));
            return Ok(());
        }
        let data = &reply["data"];
        let urls = TaskUrls {
            task_id: data["taskId"].as_i64().unwrap(),
            upload_url: data["uploadUrl"].as_str().unwrap().to_owned(),
            blocks_url: data["blocksUrl"].as_str().unwrap().to_owned(),
        };
        let mut known = job.urls.borrow_mut();
        match known.as_ref() {
            Some(earlier) if earlier.task_id != urls.task_id => {
                self.error(format!("create of {} gave task {} after task {}", job.name, urls.task_id, earlier.task_id))
            }
            Some(_) => {}
            None => *known = Some(urls),
        }
        Ok(())
    }

    /// One step of a client: create the task, or send one block of what is still expected.
    async fn step(&self, job: &Job) -> Result<(), Gone> {
        let Some(urls) = job.urls.borrow().clone() else {
            if job.creating.replace(true) {
                sleep(10).await;
                return Ok(());
            }
            let created = self.create(job).await;
            job.creating.set(false);
            return created;
        };
        let (status, info) = self.exchange(self.client.get(&urls.blocks_url), None).await?;
        if status != 200 {
            self.error(format!("blocks info of {}: {status} {info}", job.name));
            return Ok(());
        }
        let info = &info["data"];
        match info["status"].as_str() {
            Some("finish") => {
                job.done.set(true);
                return Ok(());
            }
            Some("upload") => {}
            Some("verify") => {
                sleep(20).await;
                return Ok(());
            }
            other => {
                self.error(format!("task of {} is {other:?}: {info}", job.name));
                return Ok(());
            }
        }
        let gaps = info["expectBlocks"].as_array().cloned().unwrap_or_default();
        if gaps.is_empty() {
            sleep(10).await;
            return Ok(());
        }
        let gap = &gaps[self.below(gaps.len())];
        let (gap_start, gap_end) =
            (gap["startByte"].as_u64().unwrap() as usize, gap["endByte"].as_u64().unwrap() as usize);
        let mut start = if self.chance(0.6) { gap_start } else { gap_start + self.below(gap_end - gap_start + 1) };
        if self.chance(0.2) {
            start = start.saturating_sub(self.below(50_000)); // overlap bytes already received
        }
        let end = (start + self.below(MAX_BLOCK)).min(job.size - 1);
        let corrupted = self.chance(0.05);
        let (content_type, body) = {
            let data = job.data.borrow();
            let mut part = data[start..=end].to_vec();
            if corrupted {
                part.iter_mut().for_each(|b| *b = !*b);
            }
            let (s, e, md5) = (start.to_string(), end.to_string(), md5_hex(&data[start..=end]));
            let mut fields = vec![("startByte", s.as_bytes()), ("endByte", e.as_bytes()), ("partMd5", md5.as_bytes())];
            // File first sometimes: the body is spooled until its range is known.
            let at = if self.chance(0.1) { 0 } else { fields.len() };
            fields.insert(at, ("file", &part));
            multipart(&fields)
        };
        self.blocks_in_flight.set(self.blocks_in_flight.get() + 1);
        let reply = self.exchange(self.client.post(&urls.upload_url), Some((content_type, body))).await;
        self.blocks_in_flight.set(self.blocks_in_flight.get() - 1);
        let (status, reply) = reply?;
        match (corrupted, status, reply["retCode"].as_str().unwrap_or_default()) {
            (false, 200, "0" | "1") => {
                let acked = acknowledged(start as u64, end as u64, &reply);
                let mut stats = self.stats.borrow_mut();
                stats.blocks_acked += 1;
                stats.bytes_acked += acked.iter().map(|(s, e)| e - s + 1).sum::<u64>();
                self.acked.borrow_mut().entry(urls.task_id).or_default().extend(acked);
            }
            (true, 400, "7") => self.stats.borrow_mut().corrupted_refused += 1,
            (_, 409, "11") => {}
            (_, status, code) => self
                .error(format!("block {start}-{end} of {} (corrupted {corrupted}): {status} {code} {reply}", job.name)),
        }
        Ok(())
    }
}

async fn client_loop(world: Rc<World>, group: Rc<Group>) {
    loop {
        world.wait_until_up().await;
        let Some(job) = world.job_of(&group) else { return };
        if world.step(&job).await.is_err() {
            sleep(10).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kills and checks.

#[derive(Debug, Clone, Copy, PartialEq)]
enum KillMode {
    Anytime,
    MidBlock,
    DuringVerify,
    DuringCallback,
    RightAfterStart,
}

impl KillMode {
    fn name(self) -> &'static str {
        match self {
            KillMode::Anytime => "at a random moment",
            KillMode::MidBlock => "with a block in flight",
            KillMode::DuringVerify => "with a task in verify",
            KillMode::DuringCallback => "with a callback in flight",
            KillMode::RightAfterStart => "right after start-up",
        }
    }
}

/// The database state found after a kill.
#[derive(Default)]
struct Snapshot {
    open: HashSet<i64>,
    ended: HashSet<i64>,
    verifying: HashSet<i64>,
    pending_callbacks: usize,
}

struct Crash {
    world: Rc<World>,
    receiver: Receiver,
    dir: PathBuf,
    db_url: String,
    finished_checked: RefCell<HashSet<i64>>,
}

impl Crash {
    fn db(&self) -> rusqlite::Connection {
        helpers::open_database(&self.db_url)
    }

    /// Every task's status.
    async fn statuses(&self) -> HashMap<i64, String> {
        rows(&self.db(), "SELECT task_id, status FROM upload_tasks", |row| Ok((row.get(0)?, row.get(1)?)))
            .into_iter()
            .collect()
    }

    fn fail(&self, problem: String) -> ! {
        panic!("{problem}\nclient errors: {:?}", self.world.errors.borrow());
    }

    fn check_client_errors(&self) {
        if !self.world.errors.borrow().is_empty() {
            self.fail("the clients saw wrong replies".into());
        }
    }

    /// Waits until something is happening that `mode` wants to kill the server in.
    async fn wait_for_moment(&self, mode: KillMode) {
        let world = &self.world;
        match mode {
            KillMode::Anytime => sleep(world.below(700) as u64).await,
            KillMode::RightAfterStart => sleep(world.below(40) as u64).await,
            KillMode::MidBlock => {
                sleep(50 + world.below(250) as u64).await;
                self.poll(|| async { world.blocks_in_flight.get() > 0 }).await;
            }
            KillMode::DuringCallback => self.poll(|| async { self.receiver.in_flight() > 0 }).await,
            KillMode::DuringVerify => {
                let db = self.db();
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    let verifying: i64 = db
                        .query_row("SELECT COUNT(*) FROM upload_tasks WHERE status = 'verify'", [], |row| row.get(0))
                        .unwrap();
                    if verifying > 0 {
                        break;
                    }
                    sleep(2).await;
                }
            }
        }
    }

    /// Polls `condition` every 2 ms for up to 3 s.
    async fn poll<F: std::future::Future<Output = bool>>(&self, mut condition: impl FnMut() -> F) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !condition().await {
            sleep(2).await;
        }
    }

    /// With the server dead: acknowledged bytes recorded and right in the temp file; finished
    /// files right; nothing in an unexpected state.
    async fn check_after_kill(&self) -> Snapshot {
        let db = self.db();
        let tasks: Vec<(i64, String, String, Option<String>, String)> =
            rows(&db, "SELECT task_id, file_name, status, final_path, file_md5 FROM upload_tasks", |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
            });
        let range_rows: Vec<(i64, i64, i64)> =
            rows(&db, "SELECT task_id, start_byte, end_byte FROM received_ranges", |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            });
        let outbox: HashMap<i64, String> =
            rows(&db, "SELECT task_id, status FROM callback_outbox", |row| Ok((row.get(0)?, row.get(1)?)))
                .into_iter()
                .collect();
        drop(db);
        let mut ranges: HashMap<i64, Vec<(u64, u64)>> = HashMap::new();
        for (task_id, start, end) in range_rows {
            ranges.entry(task_id).or_default().push((start as u64, end as u64));
        }
        let mut snapshot =
            Snapshot { pending_callbacks: outbox.values().filter(|s| *s == "pending").count(), ..Snapshot::default() };
        for (task_id, name, status, final_path, md5) in tasks {
            let Some(job) = self.world.jobs.borrow().get(&name).cloned() else {
                self.fail(format!("task {task_id} for an unknown file {name}"));
            };
            match status.as_str() {
                "upload" | "pause" | "verify" => {
                    let recorded = ranges.get(&task_id).cloned().unwrap_or_default();
                    for &(s, e) in self.world.acked.borrow().get(&task_id).into_iter().flatten() {
                        if !recorded.iter().any(|&(rs, re)| rs <= s && e <= re) {
                            self.fail(format!("task {task_id}: acknowledged {s}-{e} not recorded: {recorded:?}"));
                        }
                    }
                    snapshot.open.insert(task_id);
                    let temp = match std::fs::read(self.dir.join(format!("tmp/task-{task_id}.part"))) {
                        Ok(temp) => temp,
                        // Killed between recording the task and making its temp file: the restart makes it.
                        Err(_) if !ranges.contains_key(&task_id) => Vec::new(),
                        Err(e) => self.fail(format!("task {task_id} ({status}): temp file: {e}")),
                    };
                    let data = job.data.borrow();
                    for &(s, e) in &recorded {
                        let (s, e) = (s as usize, e as usize);
                        if temp.get(s..=e) != data.get(s..=e) {
                            self.fail(format!("task {task_id}: recorded bytes {s}-{e} differ from the file's"));
                        }
                    }
                    if status == "verify" {
                        snapshot.verifying.insert(task_id);
                    }
                }
                "finish" => {
                    snapshot.ended.insert(task_id);
                    if !outbox.contains_key(&task_id) {
                        self.fail(format!("task {task_id} finished without a callback in the outbox"));
                    }
                    if self.finished_checked.borrow_mut().insert(task_id) {
                        let path = final_path.unwrap_or_default();
                        let stored = std::fs::read(&path).unwrap_or_else(|e| self.fail(format!("{path}: {e}")));
                        if md5_hex(&stored) != md5 || md5 != job.md5 || stored != *job.data.borrow() {
                            self.fail(format!("task {task_id}: the finished file {path} is wrong"));
                        }
                        job.data.replace(Vec::new());
                    }
                }
                other => self.fail(format!("task {task_id} of {name} ended as {other}")),
            }
        }
        snapshot
    }

    /// With the server serving again, before the clients go on: recovery removed the temp files
    /// of ended tasks and every spool file, and every open task has its temp file.
    async fn check_after_restart(&self, before: &Snapshot) {
        let statuses = self.statuses().await;
        // (A task in verify may have finished since, and rightly lost its temp file.)
        for task_id in &before.open {
            let uploading = matches!(statuses.get(task_id).map(String::as_str), Some("upload" | "pause"));
            if uploading && !self.dir.join(format!("tmp/task-{task_id}.part")).exists() {
                self.fail(format!("open task {task_id} has no temp file after a restart"));
            }
        }
        for task_id in &before.ended {
            let temp = self.dir.join(format!("tmp/task-{task_id}.part"));
            if temp.exists() {
                self.fail(format!("the temp file of ended task {task_id} is still there"));
            }
        }
        for entry in std::fs::read_dir(self.dir.join("tmp")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("spool-") {
                self.fail(format!("spool file {name} left after a restart"));
            }
        }
    }

    /// No task stays in `verify`: those caught in it are finished after the restart.
    async fn wait_until_verified(&self, verifying: &HashSet<i64>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let statuses = self.statuses().await;
            let stuck: Vec<&i64> =
                verifying.iter().filter(|id| statuses.get(id).is_some_and(|s| s == "verify")).collect();
            if stuck.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!("tasks stuck in verify after a restart: {stuck:?}"));
            }
            sleep(20).await;
        }
    }

    /// The end: every task finished and right, every callback delivered and recorded as such,
    /// tmpDir empty.
    async fn check_the_end(&self) -> (usize, usize, usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let tasks: Vec<(i64, String, Option<String>)> = loop {
            let db = self.db();
            let undelivered: i64 = db
                .query_row("SELECT COUNT(*) FROM callback_outbox WHERE status != 'delivered'", [], |row| row.get(0))
                .unwrap();
            let tasks = rows(&db, "SELECT task_id, status, final_path FROM upload_tasks", |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            });
            if undelivered == 0 {
                break tasks;
            }
            if Instant::now() > deadline {
                self.fail(format!("{undelivered} callbacks were never delivered"));
            }
            sleep(50).await;
        };
        let received = self.receiver.received();
        let mut deliveries: HashMap<i64, Vec<&Value>> = HashMap::new();
        for callback in &received {
            deliveries.entry(callback["taskId"].as_i64().unwrap_or(-1)).or_default().push(callback);
        }
        for (task_id, status, final_path) in &tasks {
            if status != "finish" {
                self.fail(format!("task {task_id} ended as {status}"));
            }
            let Some(callbacks) = deliveries.get(task_id) else { self.fail(format!("no callback for task {task_id}")) };
            for callback in callbacks {
                if callback["retCode"] != "0" || callback["storePath"].as_str() != final_path.as_deref() {
                    self.fail(format!("task {task_id}: callback {callback} for {final_path:?}"));
                }
            }
        }
        let left: Vec<_> = std::fs::read_dir(self.dir.join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
        if !left.is_empty() {
            self.fail(format!("tmpDir is not empty at the end: {left:?}"));
        }
        // Nothing in storeDir but the finished files: no second copy of a finish repeated after a
        // kill, no partial copy left behind.
        let placed: HashSet<PathBuf> =
            tasks.iter().filter_map(|(_, _, path)| path.as_ref().map(PathBuf::from)).collect();
        let stored = files_below(&self.dir.join("store"));
        let extra: Vec<_> = stored.iter().filter(|path| !placed.contains(*path)).collect();
        if !extra.is_empty() {
            self.fail(format!("storeDir holds files no task names: {extra:?}"));
        }
        let duplicates = deliveries.values().map(|d| d.len() - 1).sum();
        (tasks.len(), received.len(), duplicates)
    }
}

fn seed() -> u64 {
    std::env::var("FUPLOAD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

/// Every regular file below `dir`, its real path.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(files_below(&path)),
            false => files.push(path.canonicalize().unwrap_or(path)),
        }
    }
    files
}

#[actix_web::test]
async fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    kill_9_at_random_moments(None, 40).await;
}

/// The same with tmpDir on another file system (a tmpfs, `/dev/shm`) than storeDir: every finish
/// copies the file, and a finish repeated after a kill must find its own copy.
#[actix_web::test]
async fn kill_9_during_finishes_across_file_systems_leaves_one_copy_of_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").ok().filter(|shm| {
        use std::os::unix::fs::MetadataExt;
        let dev = |path: &Path| std::fs::metadata(path).map(|m| m.dev()).ok();
        dev(shm.path()) != dev(dir.path())
    });
    match shm {
        Some(shm) => kill_9_at_random_moments(Some(shm), 20).await,
        None => println!("skipped: /dev/shm is missing or on the same file system as the temp dir"),
    }
}

/// The crash test; `tmp_elsewhere` holds tmpDir when it is to be on another file system.
async fn kill_9_at_random_moments(tmp_elsewhere: Option<tempfile::TempDir>, default_kills: usize) {
    let seed = seed();
    let kills: usize = std::env::var("FUPLOAD_CRASH_KILLS").ok().and_then(|n| n.parse().ok()).unwrap_or(default_kills);
    println!(
        "crash test: seed {seed}, {kills} kills (FUPLOAD_CRASH_SEED={seed} FUPLOAD_CRASH_KILLS={kills} repeats it)"
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    if let Some(elsewhere) = &tmp_elsewhere {
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("tmp")).unwrap();
    }
    let receiver = Receiver::start(seed);
    let mut server = ServerProcess::new(dir.path(), &receiver.url);
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let world = Rc::new(World {
        rng: RefCell::new(StdRng::seed_from_u64(seed)),
        client: client.clone(),
        base: server.base.clone(),
        up: tokio::sync::watch::Sender::new(false),
        requests_in_flight: Cell::new(0),
        blocks_in_flight: Cell::new(0),
        stop_new_files: Cell::new(false),
        jobs: RefCell::new(HashMap::new()),
        acked: RefCell::new(HashMap::new()),
        errors: RefCell::new(Vec::new()),
        stats: RefCell::new(Stats::default()),
    });
    let crash = Crash {
        world: world.clone(),
        receiver: receiver.clone(),
        dir: dir.path().to_path_buf(),
        db_url: format!("sqlite://{}", dir.path().join("fupload.db").display()),
        finished_checked: RefCell::new(HashSet::new()),
    };
    let clients: Vec<_> = (0..GROUPS)
        .flat_map(|index| {
            let group = Rc::new(Group { index, ..Group::default() });
            let world = world.clone();
            (0..CLIENTS_PER_FILE).map(move |_| actix_web::rt::spawn(client_loop(world.clone(), group.clone())))
        })
        .collect();

    let modes = [
        KillMode::Anytime,
        KillMode::MidBlock,
        KillMode::DuringVerify,
        KillMode::DuringCallback,
        KillMode::RightAfterStart,
    ];
    let mut snapshot = Snapshot::default();
    for _ in 0..kills {
        server.start(&client).await;
        crash.check_after_restart(&snapshot).await;
        let mode = modes[world.below(modes.len())];
        if mode != KillMode::RightAfterStart {
            crash.wait_until_verified(&snapshot.verifying).await;
        }
        world.up.send_replace(true);
        crash.wait_for_moment(mode).await;
        world.up.send_replace(false);
        let (blocks, callbacks) = (world.blocks_in_flight.get(), receiver.in_flight());
        server.kill();
        // Let every request in flight end (with its reply, if it was sent before the kill).
        let deadline = Instant::now() + Duration::from_secs(30);
        while world.requests_in_flight.get() > 0 && Instant::now() < deadline {
            sleep(5).await;
        }
        crash.check_client_errors();
        snapshot = crash.check_after_kill().await;
        let mut stats = world.stats.borrow_mut();
        *stats.kills_by_mode.entry(mode.name()).or_default() += 1;
        stats.with_blocks_in_flight += usize::from(blocks > 0);
        stats.with_callback_in_flight += usize::from(callbacks > 0);
        stats.with_task_in_verify += usize::from(!snapshot.verifying.is_empty());
        stats.with_callback_pending += usize::from(snapshot.pending_callbacks > 0);
    }

    // The last start: the files being uploaded are finished, no new ones are begun.
    server.start(&client).await;
    crash.check_after_restart(&snapshot).await;
    world.stop_new_files.set(true);
    world.up.send_replace(true);
    let all_done =
        actix_web::rt::time::timeout(Duration::from_secs(120), futures_util::future::join_all(clients)).await;
    if all_done.is_err() {
        crash.fail(format!("the uploads did not finish after the last restart:\n{}", server.log_tail()));
    }
    crash.check_client_errors();
    crash.check_after_kill().await;
    let (tasks, callbacks, duplicates) = crash.check_the_end().await;
    server.kill();

    let stats = world.stats.borrow();
    println!("crash test passed in {:.0?}: seed {seed}, {kills} kills", started.elapsed());
    for (mode, n) in &stats.kills_by_mode {
        println!("  killed {mode}: {n}");
    }
    println!(
        "  kills that hit: a block in flight {}, a callback in flight {}, a task in verify {}, a callback pending {}",
        stats.with_blocks_in_flight,
        stats.with_callback_in_flight,
        stats.with_task_in_verify,
        stats.with_callback_pending
    );
    println!(
        "  {tasks} files finished and checked; {} blocks ({} bytes) acknowledged; {} corrupted blocks refused; \
         {callbacks} callbacks received ({duplicates} repeats after a kill); {} requests cut off",
        stats.blocks_acked, stats.bytes_acked, stats.corrupted_refused, stats.transport_errors
    );
}

// ---------------------------------------------------------------------------------------------
// Crash points the kill test found, replayed exactly.

/// Regression: a crash after a task was recorded but before its temp file was made left an open
/// task without one; every block was then refused as a disk error (500), for good.
#[actix_web::test]
async fn a_crash_before_the_temp_file_was_made_does_not_block_the_task() {
    let app = helpers::spawn_app().await;
    let data = helpers::content(1000, 120);
    let task = app.new_task("a.bin", &data).await;
    let (settings, dir, callbacks) = app.stop().await;
    std::fs::remove_file(dir.path().join(format!("tmp/task-{}.part", task.task_id))).unwrap();
    let app = helpers::restart_on(settings, dir, callbacks).await;
    // The business server asks again (it never got the reply), and the client uploads.
    let task = app.new_task("a.bin", &data).await;
    app.upload_all(&task, &data, 300).await;
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "0");
    assert_eq!(helpers::TestApp::stored_file(callback), data);
}

/// Regression: the same crash for an empty file, which is recorded straight in `verify`, left it
/// in `verify` for good: the finish at each start failed on the missing temp file.
#[actix_web::test]
async fn a_crash_before_the_temp_file_of_an_empty_file_was_made_does_not_leave_it_in_verify() {
    let app = helpers::spawn_app().await;
    let task = app.new_task("empty.txt", b"abc").await;
    let (settings, dir, callbacks) = app.stop().await;
    helpers::execute_database(
        &settings.database.url,
        "UPDATE upload_tasks SET file_size = 0, file_md5 = 'd41d8cd98f00b204e9800998ecf8427e', status = 'verify'",
    );
    std::fs::remove_file(dir.path().join(format!("tmp/task-{}.part", task.task_id))).unwrap();
    let _app = helpers::restart_on(settings, dir, callbacks.clone()).await;
    let callback = &callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "0");
    assert_eq!(helpers::TestApp::stored_file(callback), b"");
}

/// Every row of `sql`, each read by `read`.
fn rows<T>(db: &rusqlite::Connection, sql: &str, read: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>) -> Vec<T> {
    let mut query = db.prepare(sql).unwrap();
    query.query_map([], read).unwrap().collect::<Result<_, _>>().unwrap()
}
