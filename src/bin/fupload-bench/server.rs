//! The server under test as a child process on loopback, and the business server it calls back.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, Context};

pub const TOKEN: &str = "bench-token";

/// The server binary: `given`, or the `fupload-server` next to this binary.
pub fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("fupload-server"),
    };
    anyhow::ensure!(path.exists(), "{} not found: build it first (cargo build --release --bins)", path.display());
    Ok(path)
}

pub struct ServerProcess {
    child: Child,
    pub base: String,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `bin` on a free loopback port with its data in `dir` (created fresh).
    pub fn start(bin: &Path, dir: &Path, notify_url: &str, max_block_size: u64) -> anyhow::Result<Self> {
        let database = format!("sqlite://{}", dir.join("fupload.db").display());
        Self::start_node(bin, dir, dir, &database, notify_url, max_block_size)
    }

    /// Starts `bin` as one node of several: its config and log in `dir` (created fresh), the
    /// database at `database_url` and the temp and store directories in `shared` (those of every
    /// node).
    pub fn start_node(
        bin: &Path,
        dir: &Path,
        shared: &Path,
        database_url: &str,
        notify_url: &str,
        max_block_size: u64,
    ) -> anyhow::Result<Self> {
        let port = fresh_dir_and_port(dir)?;
        let config = dir.join("fupload.yml");
        std::fs::write(
            &config,
            format!(
                "server: {{host: \"127.0.0.1\", port: {port}, addr: \"http://127.0.0.1\"}}\n\
                 database: {{url: \"{database_url}\"}}\n\
                 tmpDir: \"{tmp}\"\nstoreDir: \"{store}\"\nmaxBlockSize: {max_block_size}\n\
                 bServer:\n  {TOKEN}: {{name: \"bench\", notifyUrl: \"{notify_url}\"}}\n",
                tmp = shared.join("tmp").display(),
                store = shared.join("store").display(),
            ),
        )?;
        #[expect(clippy::disallowed_methods, reason = "the bench measures the server binary it starts")]
        let mut command = Command::new(bin);
        command.arg("-c").arg(&config).env("RUST_LOG", "info");
        Self::spawn(command, port, dir)
    }

    /// Runs `command`, logging to `dir`/server.log, and waits until it listens on `port`.
    pub fn spawn(mut command: Command, port: u16, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join("server.log");
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let server = Self { child, base: format!("http://127.0.0.1:{port}"), log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("the server did not start; see {}", server.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// A field of the server's /proc status in KiB, e.g. `VmRSS:` (resident now).
    pub fn status_field(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident memory so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:").unwrap_or(0)
    }

    /// How long the finish of `task_id` took, from its log line.
    pub fn finish_ms(&self, task_id: &str) -> Option<f64> {
        let marker = format!("task_id={task_id} ");
        self.logged_values("task ended", &marker, "finish_ms=").first().copied()
    }

    /// How long the server took to answer each request to `route`, from its log lines.
    pub fn answered_ms(&self, route: &str) -> Vec<f64> {
        self.logged_values("request answered", &format!("route={route} "), "duration_ms=")
    }

    /// The `field` values of the log lines that contain both `event` and `marker`.
    fn logged_values(&self, event: &str, marker: &str, field: &str) -> Vec<f64> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(event) && l.contains(marker))
            .filter_map(|l| l.split(field).nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

/// Makes `dir` anew, and picks a free loopback port.
pub fn fresh_dir_and_port(dir: &Path) -> anyhow::Result<u16> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The server goes down with its handle, also when the benchmark stops on an error.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A business server that answers every callback with 200 and remembers where files went.
#[derive(Clone)]
pub struct CallbackSink {
    /// By task id.
    store_paths: Arc<Mutex<HashMap<String, String>>>,
    pub url: String,
    handle: ServerHandle,
}

impl CallbackSink {
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
        let store_paths = Arc::new(Mutex::new(HashMap::new()));
        let recorded = store_paths.clone();
        let server = HttpServer::new(move || {
            let recorded = recorded.clone();
            App::new().route(
                "/callback",
                web::post().to(move |body: web::Json<serde_json::Value>| {
                    let recorded = recorded.clone();
                    async move {
                        if let (Some(id), Some(path)) = (body["taskId"].as_i64(), body["storePath"].as_str()) {
                            recorded.lock().map(|mut r| r.insert(id.to_string(), path.to_owned())).ok();
                        }
                        HttpResponse::Ok().finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(Self { store_paths, url, handle })
    }

    /// Forgets the callbacks so far: a new server process numbers its tasks from 1 again, and an
    /// earlier run's callback for the same task id must not stand for this run's.
    pub fn forget_all(&self) {
        if let Ok(mut paths) = self.store_paths.lock() {
            paths.clear();
        }
    }

    pub fn store_path(&self, task_id: &str) -> Option<String> {
        self.store_paths.lock().ok()?.get(task_id).cloned()
    }

    /// The path task `task_id`'s callback names, once it has come (waiting up to `wait`).
    pub async fn store_path_within(&self, task_id: &str, wait: Duration) -> anyhow::Result<PathBuf> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(path) = self.store_path(task_id) {
                return Ok(path.into());
            }
            if Instant::now() >= deadline {
                bail!("no callback for task {task_id}");
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_new_run_does_not_see_the_last_runs_callbacks() {
        // Each run starts a fresh server whose task ids start at 1 again: before `forget_all`,
        // run 2 checked its task 3 against the file run 1's task 3 had stored.
        let sink = CallbackSink::start().unwrap();
        let callback = serde_json::json!({"taskId": 3, "storePath": "/store/w2-0-1.bin"});
        let reply = awc::Client::default().post(&sink.url).send_json(&callback).await.unwrap();
        assert!(reply.status().is_success());
        assert_eq!(sink.store_path("3").as_deref(), Some("/store/w2-0-1.bin"));
        sink.forget_all();
        assert_eq!(sink.store_path("3"), None);
        sink.stop().await;
    }
}
