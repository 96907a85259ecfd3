//! SIGTERM mid-upload, against the real `fupload-server` binary: the block that completes within
//! the grace period is recorded and answered, the block still arriving at the deadline is not,
//! and the database is left closed and clean. Also checks that `log.format: json` lines parse.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::helpers::{content, md5_hex, multipart, TOKEN};

/// Longest wait for any one thing the server should do.
const PATIENCE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    port: u16,
    /// Every stderr line, each parsed as JSON.
    logs: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Server {
    fn start(dir: &std::path::Path) -> Self {
        let config = format!(
            r#"
server: {{host: "127.0.0.1", port: 0, addr: "http://127.0.0.1"}}
database: {{url: "sqlite://{dir}/fupload.db"}}
tmpDir: "{dir}/tmp"
storeDir: "{dir}/store"
shutdownGrace: 2
log: {{format: json}}
bServer:
  {TOKEN}: {{name: "cp1", notifyUrl: "http://127.0.0.1:9/callback"}}
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("fupload.yml"), config).unwrap();
        #[expect(clippy::disallowed_methods, reason = "the test signals the server binary")]
        let mut child = Command::new(env!("CARGO_BIN_EXE_fupload-server"))
            .args(["-c", "fupload.yml"])
            .current_dir(dir)
            // The request-started lines are debug; they show when the server has taken up a request.
            .env("RUST_LOG", "info,fupload::http::observe=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let parsed = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|e| json!({"not_json": line, "error": e.to_string()}));
                if send.send(parsed).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child, port: 0, logs, seen: Vec::new() };
        let listening = server.wait_for_log("fupload-server listening");
        server.port = listening["port"].as_u64().unwrap() as u16;
        server
    }

    /// Waits for the log line whose message is `message`; panics after `PATIENCE`.
    fn wait_for_log(&mut self, message: &str) -> Value {
        self.wait_for_logs(1, |line| line["message"] == message).remove(0)
    }

    /// Waits until `n` log lines match; panics after `PATIENCE` without a new line.
    fn wait_for_logs(&mut self, n: usize, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        loop {
            let found: Vec<Value> = self.seen.iter().filter(|line| matches(line)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let line = self.logs.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("logs so far: {:?}", self.seen));
            self.seen.push(line);
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a new connection gets an answer to a `GET /healthz` (refused or closed unanswered: no).
fn served_a_new_connection(server: &Server) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", server.port)) else { return false };
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    !answer.is_empty()
}

/// The status and JSON body of an HTTP/1.1 reply read to its end (`Connection: close`).
fn read_reply(stream: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no reply: {text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn request_head(method: &str, url: &str, content_type: &str, length: usize) -> String {
    format!(
        "{method} {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         Connection: close\r\n\r\n"
    )
}

/// The path and query of a task URL from the create reply.
fn path_of(url: &str) -> &str {
    &url[url.find("/api/").unwrap()..]
}

/// A block request whose head and body, but for the last `held_back` bytes, are sent.
struct BlockInFlight {
    stream: TcpStream,
    rest: Vec<u8>,
}

fn start_block(server: &Server, url: &str, data: &[u8], start: usize, end: usize, held_back: usize) -> BlockInFlight {
    let part = &data[start..=end];
    let (content_type, body) = multipart(&[
        ("startByte", start.to_string().as_bytes()),
        ("endByte", end.to_string().as_bytes()),
        ("partMd5", md5_hex(part).as_bytes()),
        ("file", part),
    ]);
    let mut stream = server.connect();
    stream.write_all(request_head("POST", path_of(url), &content_type, body.len()).as_bytes()).unwrap();
    let (sent, rest) = body.split_at(body.len() - held_back);
    stream.write_all(sent).unwrap();
    BlockInFlight { stream, rest: rest.to_vec() }
}

#[test]
fn sigterm_lets_blocks_in_flight_finish_within_the_grace_period_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let data = content(256 * 1024, 70);
    let create =
        json!({"token": TOKEN, "userId": "1", "fileName": "a.bin", "fileSize": data.len(), "fileMd5": md5_hex(&data)})
            .to_string();
    let mut stream = server.connect();
    stream
        .write_all(request_head("POST", "/api/upload/new/task", "application/json", create.len()).as_bytes())
        .unwrap();
    stream.write_all(create.as_bytes()).unwrap();
    let (status, reply) = read_reply(&mut stream);
    assert_eq!(status, 200, "{reply}");
    let upload_url = reply["data"]["uploadUrl"].as_str().unwrap().to_owned();
    let task_id = reply["data"]["taskId"].as_i64().unwrap();

    // Two blocks on their way: most of their bytes sent (so the server is writing them), not all.
    let mut finishing = start_block(&server, &upload_url, &data, 0, 99_999, 1000);
    let mut cut_off = start_block(&server, &upload_url, &data, 100_000, 199_999, 1000);
    // Signal only once the server has taken up both requests (a connection still in the listen
    // queue at the signal would never be served).
    server.wait_for_logs(2, |line| {
        line["message"] == "request started" && line["span"]["route"] == "/api/upload/files/block"
    });
    let sigterm_at = std::time::Instant::now();
    kill(Pid::from_raw(server.child.id() as i32), Signal::SIGTERM).unwrap();
    server.wait_for_log("shutting down: no new connections, requests in flight may finish");

    // The server stops accepting new connections (the signal is handled a moment before the
    // listener closes, so a connection made in between may still be served).
    let deadline = std::time::Instant::now() + PATIENCE;
    while served_a_new_connection(&server) {
        assert!(std::time::Instant::now() < deadline, "new connections were still served after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The first block completes within the grace period: answered and recorded.
    finishing.stream.write_all(&finishing.rest).unwrap();
    let (status, reply) = read_reply(&mut finishing.stream);
    assert_eq!((status, reply["retCode"].as_str()), (200, Some("0")), "{reply}");
    assert_eq!(reply["data"]["receivedSize"], 100_000);

    // The second never completes: at the deadline its connection is dropped without an answer.
    let mut answer = Vec::new();
    let _ = cut_off.stream.read_to_end(&mut answer);
    assert!(answer.is_empty(), "the cut-off block was answered: {}", String::from_utf8_lossy(&answer));
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(sigterm_at.elapsed() >= Duration::from_secs(2), "the grace period was not waited for");
    server.wait_for_log("stopped; the database is closed");

    // Every log line was JSON, and the request line of the block carries its span's fields.
    let not_json: Vec<&Value> = server.seen.iter().filter(|line| line.get("not_json").is_some()).collect();
    assert!(not_json.is_empty(), "{not_json:?}");
    let block_log = server
        .seen
        .iter()
        .find(|line| line["message"] == "request answered" && line["span"]["route"] == "/api/upload/files/block")
        .expect("the block's request line");
    assert_eq!(block_log["span"]["task_id"], task_id);
    assert_eq!(block_log["span"]["ret_code"], "0");
    assert_eq!(block_log["span"]["status"], 200);
    assert!(block_log["duration_ms"].as_f64().is_some() && block_log["span"]["bytes"].as_u64() > Some(100_000));

    // The database was closed cleanly (WAL checkpointed and removed) and holds only the
    // completed block.
    let db = dir.path().join("fupload.db");
    assert!(!dir.path().join("fupload.db-wal").exists(), "the WAL was not checkpointed");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut query = conn.prepare("SELECT start_byte, end_byte FROM received_ranges ORDER BY 1").unwrap();
    let ranges: Vec<(i64, i64)> =
        query.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap();
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(ranges, vec![(0, 99_999)]);
    assert_eq!(integrity, "ok");
}
