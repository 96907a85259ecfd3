//! Bad input, systematically: proptest generates block uploads (multipart framing, boundaries,
//! missing, repeated and unknown parts, fields after the file, non-UTF-8, absurd numbers, huge
//! part headers, truncated bodies, connections dropped mid-block) and create requests (any JSON in
//! any field, broken JSON, non-UTF-8), sends them byte for byte to the real server, and checks
//! each reply against what the request deserves: a 4xx with one of the retCodes its defects call
//! for (or acceptance, when it has none), nothing recorded for a refused request, no panic, and
//! the server still serving at the end. tus and IETF requests (any method, path, and the headers
//! both protocols read, with good, nearly good and absurd values) must never get a 5xx, and a
//! refused one must record no byte. Accepted blocks carry the file's true bytes, so the temp
//! file is checked byte for byte at the end too.
//!
//! `FUPLOAD_FUZZ_CASES` sets the cases per property (300 by default, the CI run), e.g.
//! `FUPLOAD_FUZZ_CASES=20000 cargo test --release --test fuzz_requests`.
//! (A cargo-fuzz/libFuzzer target is not used: it needs a nightly toolchain.)

use fupload_testkit::{helpers, raw_http};

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Once};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use fupload::http::body_guard::MAX_BUFFERED;
use helpers::{content, md5_hex, spawn_app_with, task_urls, TaskUrls, TOKEN};
use raw_http::{post_head, split_url, Raw, RawReply};

const FILE_SIZE: usize = 4 << 20;
const MAX_BLOCK: u64 = 4096;
const MAX_FILE: u64 = FILE_SIZE as u64;
const BOUNDARY: &str = "fuzz-boundary-q1w2e3";

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in the process (the server's threads included).
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn cases() -> u32 {
    std::env::var("FUPLOAD_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300)
}

/// The real server in-process on its own thread (the test thread blocks on sockets), with one
/// task for the fuzzed blocks.
struct Server {
    addr: String,
    base: String,
    task: TaskUrls,
    tmp_dir: std::path::PathBuf,
    db_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(data: Vec<u8>) -> Self {
        let (started, info) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let app = spawn_app_with(|s| {
                    s.max_block_size = MAX_BLOCK;
                    s.max_file_size = MAX_FILE;
                    // Bodies that end inside a part are refused this long after they end.
                    s.server.client_body_timeout = 0.3;
                })
                .await;
                let task = app.new_task("fuzz.bin", &data).await;
                let db_url = app.settings.database.url.clone();
                started.send((app.base.clone(), task, app.path("tmp"), db_url)).unwrap();
                let _ = stopped.await;
                app.stop().await;
            })
        });
        let (base, task, tmp_dir, db_url) = info.recv().unwrap();
        Server { addr: split_url(&base).0, base, task, tmp_dir, db_url, stop: Some(stop), thread: Some(thread) }
    }

    fn get(&self, url: &str) -> RawReply {
        let (_, path) = split_url(url);
        let mut raw = Raw::connect(&self.addr);
        raw.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        raw.reply().unwrap()
    }

    fn received_size(&self) -> u64 {
        self.get(&self.task.blocks_url).json()["data"]["receivedSize"].as_u64().unwrap()
    }

    fn task_count(&self) -> i64 {
        helpers::query_database(&self.db_url, "SELECT COUNT(*) FROM upload_tasks")[0][0].parse().unwrap()
    }

    /// A whole upload of a new file still works.
    fn still_serving(&self) {
        let data = content(3000, 77);
        let create = json!({"token": TOKEN, "userId": "1", "fileName": "after.bin", "fileSize": 3000,
            "fileMd5": md5_hex(&data)})
        .to_string();
        let mut raw = Raw::connect(&self.addr);
        raw.send(&[post_head("/api/upload/new/task", "application/json", create.len()), create.into_bytes()].concat())
            .unwrap();
        let task = task_urls(&raw.reply().unwrap().json());
        let (content_type, body) = helpers::block_multipart(0, &data);
        let (_, path) = split_url(&task.upload_url);
        let mut raw = Raw::connect(&self.addr);
        raw.send(&[post_head(&path, &content_type, body.len()), body].concat()).unwrap();
        let reply = raw.reply().unwrap().json();
        assert_eq!(reply["data"]["taskStatus"], "finish", "{reply}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a request deserves: the (HTTP status, retCode) pairs it may be refused with, and whether
/// it may be accepted (it has no defect, or only ones the server may rightly read past).
#[derive(Debug)]
struct Deserves {
    refusals: BTreeSet<(u16, &'static str)>,
    acceptable: bool,
}

impl Default for Deserves {
    fn default() -> Self {
        Deserves { refusals: BTreeSet::new(), acceptable: true }
    }
}

impl Deserves {
    fn only(status: u16, code: &'static str) -> Self {
        Deserves { refusals: [(status, code)].into(), acceptable: false }
    }

    /// A defect that must be refused.
    fn refused(&mut self, status: u16, code: &'static str) {
        self.refusals.insert((status, code));
        self.acceptable = false;
    }

    /// A defect the server may refuse or read past.
    fn may_refuse(&mut self, status: u16, code: &'static str) {
        self.refusals.insert((status, code));
    }

    fn check(&self, reply: &RawReply) -> Result<bool, TestCaseError> {
        let code = reply.ret_code();
        prop_assert!(reply.json()["status"].as_str().is_some_and(|s| !s.is_empty()), "no status text: {reply:?}");
        if reply.status == 200 && (code == "0" || code == "1") {
            prop_assert!(self.acceptable, "accepted, but it deserves {:?}: {}", self.refusals, reply.json());
            return Ok(true);
        }
        let refused = self.refusals.iter().any(|(status, c)| *status == reply.status && *c == code);
        prop_assert!(refused, "got {} {code}, deserves {self:?}: {}", reply.status, reply.json());
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks

#[derive(Debug, Clone)]
enum Text {
    Missing,
    /// A number, written as the server should read it.
    Number(u64),
    /// Anything else: bytes as sent.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Md5Field {
    Right,
    Wrong,
    Missing,
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Framing {
    Good,
    NoClosingBoundary,
    /// The body cut at this fraction, with a Content-Length that says so.
    Truncated(f64),
    /// The body cut at this fraction and the connection dropped; Content-Length says more.
    Dropped(f64),
    Preamble,
    JunkPartHeader,
    NoDisposition,
    HugePartHeader(usize),
}

#[derive(Debug, Clone)]
enum ContentType {
    Good,
    OtherBoundary,
    NoBoundary,
    Json,
    Missing,
}

#[derive(Debug, Clone)]
struct BlockCase {
    start: Text,
    end: Text,
    md5: Md5Field,
    body_delta: i64,
    file_first: bool,
    file: u8, // 0: none, 1: one, 2: two
    extras: Vec<(Vec<u8>, usize)>,
    framing: Framing,
    content_type: ContentType,
}

fn number_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"1e3".to_vec()),
        Just(b"0x10".to_vec()),
        Just(b"12abc".to_vec()),
        Just(b"99999999999999999999999".to_vec()),
        Just(b"\xff\xfe5".to_vec()),
        Just(vec![b'7'; 2000]),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn offsets() -> impl Strategy<Value = (Text, Text)> {
    let size = FILE_SIZE as u64;
    prop_oneof![
        6 => (0..size, 1..=MAX_BLOCK).prop_map(move |(s, len)| (Text::Number(s), Text::Number((s + len - 1).min(size - 1)))),
        1 => (1..size, 1..1000u64).prop_map(|(s, back)| (Text::Number(s), Text::Number(s.saturating_sub(back)))),
        1 => (0..size, 0..u64::MAX).prop_map(move |(s, e)| (Text::Number(s), Text::Number(e.max(size)))),
        1 => (0..size - 2 * MAX_BLOCK, MAX_BLOCK + 1..2 * MAX_BLOCK).prop_map(|(s, len)| (Text::Number(s), Text::Number(s + len - 1))),
        1 => Just((Text::Number(u64::MAX), Text::Number(u64::MAX))),
        1 => (number_text(), 0..size).prop_map(|(raw, e)| (Text::Raw(raw), Text::Number(e))),
        1 => (0..size, number_text()).prop_map(|(s, raw)| (Text::Number(s), Text::Raw(raw))),
        1 => (0..size).prop_map(|s| (Text::Missing, Text::Number(s))),
        1 => (0..size).prop_map(|s| (Text::Number(s), Text::Missing)),
    ]
}

fn block_cases() -> impl Strategy<Value = BlockCase> {
    let md5 = prop_oneof![
        6 => Just(Md5Field::Right),
        1 => Just(Md5Field::Wrong),
        1 => Just(Md5Field::Missing),
        1 => prop_oneof![
            Just(b"not-an-md5".to_vec()),
            Just(vec![b'A'; 32]),
            Just(vec![b'g'; 32]),
            Just(vec![b'a'; 2000]),
            prop::collection::vec(any::<u8>(), 0..40)
        ]
        .prop_map(Md5Field::Raw),
    ];
    let delta = prop_oneof![8 => Just(0i64), 1 => -100..0i64, 1 => 1..100i64];
    let extra = (
        prop_oneof![
            Just(b"partName".to_vec()),
            Just(b"".to_vec()),
            Just(b"startbyte".to_vec()),
            Just(b"\xff\xfename".to_vec()),
            "[a-zA-Z]{1,12}".prop_map(String::into_bytes)
        ],
        prop_oneof![9 => 0..200usize, 1 => 60_000..70_000usize],
    );
    let framing = prop_oneof![
        12 => Just(Framing::Good),
        1 => Just(Framing::NoClosingBoundary),
        1 => (0.0..1.0f64).prop_map(Framing::Truncated),
        1 => (0.0..1.0f64).prop_map(Framing::Dropped),
        1 => Just(Framing::Preamble),
        1 => Just(Framing::JunkPartHeader),
        1 => Just(Framing::NoDisposition),
        1 => prop_oneof![1_000..5_000usize, 100_000..200_000usize, 1_100_000..1_300_000usize].prop_map(Framing::HugePartHeader),
    ];
    let content_type = prop_oneof![
        16 => Just(ContentType::Good),
        1 => Just(ContentType::OtherBoundary),
        1 => Just(ContentType::NoBoundary),
        1 => Just(ContentType::Json),
        1 => Just(ContentType::Missing),
    ];
    let file = prop_oneof![18 => Just(1u8), 1 => Just(0u8), 1 => Just(2u8)];
    let extras = prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(extra, 1..3), 1 => prop::collection::vec((Just(b"x".to_vec()), Just(1usize)), 30..34)];
    (offsets(), md5, delta, any::<bool>(), file, extras, framing, content_type).prop_map(
        |((start, end), md5, body_delta, file_first, file, extras, framing, content_type)| BlockCase {
            start,
            end,
            md5,
            body_delta,
            file_first: file_first && file > 0,
            file,
            extras,
            framing,
            content_type,
        },
    )
}

fn part(name: &[u8], value: &[u8], extra_header: Option<&[u8]>, disposition: bool) -> Vec<u8> {
    let mut out = format!("--{BOUNDARY}\r\n").into_bytes();
    if disposition {
        out.extend_from_slice(b"Content-Disposition: form-data; name=\"");
        out.extend_from_slice(name);
        out.extend_from_slice(if name == b"file" { b"\"; filename=\"blob\"\r\n" } else { b"\"\r\n" });
    }
    if let Some(header) = extra_header {
        out.extend_from_slice(header);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out
}

fn text_bytes(text: &Text) -> Option<Vec<u8>> {
    match text {
        Text::Missing => None,
        Text::Number(n) => Some(n.to_string().into_bytes()),
        Text::Raw(raw) => Some(raw.clone()),
    }
}

/// The number the server reads from an offset field, as it documents: trimmed decimal digits.
fn offset_value(text: &Text) -> Option<u64> {
    match text {
        Text::Missing => None,
        Text::Number(n) => Some(*n),
        Text::Raw(raw) if raw.len() <= 1024 => std::str::from_utf8(raw).ok()?.trim().parse().ok(),
        Text::Raw(_) => None,
    }
}

/// The request's bytes, how to send it, and what it deserves.
fn render(case: &BlockCase, data: &[u8]) -> (Vec<u8>, Option<usize>, Deserves) {
    let mut deserves = Deserves::default();
    let (start, end) = (offset_value(&case.start), offset_value(&case.end));
    if start.is_none() || end.is_none() {
        deserves.refused(400, "6");
    }
    // The body: the file's true bytes from startByte on (so an accepted block writes only truth).
    let body_start = start.filter(|s| *s < FILE_SIZE as u64).unwrap_or(0) as usize;
    let range_len = match (start, end) {
        (Some(s), Some(e)) if s <= e => (e - s + 1).min(MAX_BLOCK * 2),
        _ => 100,
    };
    let body_len = (range_len as i64 + case.body_delta).max(0) as usize;
    let body = &data[body_start..(body_start + body_len).min(data.len())];
    if let (Some(s), Some(e)) = (start, end) {
        if s > e {
            deserves.refused(400, "8");
        } else if e >= FILE_SIZE as u64 {
            deserves.refused(416, "8");
        } else if e - s + 1 > MAX_BLOCK {
            deserves.refused(413, "10");
        } else if body.len() as u64 != e - s + 1 {
            deserves.refused(400, "8");
        }
    }
    if body.len() as u64 > MAX_BLOCK {
        deserves.refused(413, "10"); // spooled (file first) bodies are cut off at maxBlockSize
    }
    let md5 = match &case.md5 {
        Md5Field::Right => Some(md5_hex(body).into_bytes()),
        Md5Field::Wrong => {
            deserves.refused(400, "7");
            Some(md5_hex(b"something else").into_bytes())
        }
        Md5Field::Missing => None,
        Md5Field::Raw(raw) => {
            let valid = std::str::from_utf8(raw)
                .ok()
                .map(str::trim)
                .is_some_and(|t| raw.len() <= 1024 && t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
            if !valid {
                deserves.refused(400, "6");
            } else if !std::str::from_utf8(raw).unwrap().trim().eq_ignore_ascii_case(&md5_hex(body)) {
                deserves.refused(400, "7");
            }
            Some(raw.clone())
        }
    };
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (name, value) in [("startByte", text_bytes(&case.start)), ("endByte", text_bytes(&case.end)), ("partMd5", md5)]
    {
        if let Some(value) = value {
            fields.push((name.as_bytes().to_vec(), value));
        }
    }
    if case.file == 0 {
        deserves.refused(400, "6");
    }
    for i in 0..case.file {
        let at = if case.file_first && i == 0 { 0 } else { fields.len() };
        fields.insert(at, (b"file".to_vec(), body.to_vec()));
    }
    if case.file == 2 {
        deserves.refused(400, "6");
    }
    for (name, len) in &case.extras {
        if *len > 64 * 1024 {
            deserves.refused(400, "6");
        }
        if name.is_empty() || std::str::from_utf8(name).is_err() {
            // A part without a usable name: malformed, or an unknown field to skip.
            deserves.may_refuse(400, "6");
        }
        fields.insert(fields.len() / 2, (name.clone(), vec![b'e'; *len]));
    }
    if fields.len() > 32 {
        deserves.refused(400, "6");
    }
    let mut bytes = Vec::new();
    if matches!(case.framing, Framing::Preamble) {
        bytes.extend_from_slice(b"this is a preamble\r\n");
    }
    let huge_header = match case.framing {
        Framing::HugePartHeader(size) => Some([b"X-Huge: ".to_vec(), vec![b'h'; size]].concat()),
        _ => None,
    };
    for (i, (name, value)) in fields.iter().enumerate() {
        let last = i + 1 == fields.len();
        let header = match (&case.framing, &huge_header) {
            (Framing::JunkPartHeader, _) if last => Some(&b"X-Junk: \xff\xfe\x80"[..]),
            (_, Some(huge)) if last => Some(huge.as_slice()),
            _ => None,
        };
        let disposition = !(matches!(case.framing, Framing::NoDisposition) && last);
        bytes.extend(part(name, value, header, disposition));
    }
    bytes.extend(format!("--{BOUNDARY}--\r\n").into_bytes());
    let mut send_only = None;
    match case.framing {
        Framing::Good => {}
        // The parser may read past these; the request then stands or falls by its fields.
        Framing::Preamble | Framing::JunkPartHeader => deserves.may_refuse(400, "6"),
        Framing::HugePartHeader(size) if (size as u64) < MAX_BUFFERED => deserves.may_refuse(400, "6"),
        Framing::HugePartHeader(_) | Framing::NoDisposition => deserves.refused(400, "6"),
        Framing::NoClosingBoundary | Framing::Truncated(_) => {
            let cut = match case.framing {
                Framing::Truncated(at) => (bytes.len() as f64 * at) as usize,
                _ => bytes.len() - format!("--{BOUNDARY}--\r\n").len(),
            };
            bytes.truncate(cut);
            // Bad multipart, or a short body if the cut is inside the file part.
            deserves.refused(400, "6");
            deserves.may_refuse(400, "8");
        }
        Framing::Dropped(at) => send_only = Some((bytes.len() as f64 * at) as usize),
    }
    if !matches!(case.content_type, ContentType::Good) {
        deserves.refused(400, "6");
    }
    (bytes, send_only, deserves)
}

fn content_type_header(kind: &ContentType) -> Option<String> {
    match kind {
        ContentType::Good => Some(format!("multipart/form-data; boundary={BOUNDARY}")),
        ContentType::OtherBoundary => Some("multipart/form-data; boundary=not-the-one".into()),
        ContentType::NoBoundary => Some("multipart/form-data".into()),
        ContentType::Json => Some("application/json".into()),
        ContentType::Missing => None,
    }
}

#[test]
fn fuzzed_block_uploads_get_their_documented_refusal_and_record_nothing() {
    count_panics();
    let data = content(FILE_SIZE, 33);
    let server = Server::start(data.clone());
    let (_, path) = split_url(&server.task.upload_url);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let (accepted, refused, dropped) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let outcome = runner.run(&block_cases(), |case| {
        let before = server.received_size();
        let (body, send_only, deserves) = render(&case, &data);
        let head = match content_type_header(&case.content_type) {
            Some(content_type) => post_head(&path, &content_type, body.len()),
            None => format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        };
        let mut raw = Raw::connect(&server.addr);
        let sent = raw.send(&head).and_then(|()| raw.send(&body[..send_only.unwrap_or(body.len())]));
        let took = match send_only {
            // Dropped mid-request: no reply to wait for.
            Some(_) => {
                drop(raw);
                dropped.set(dropped.get() + 1);
                false
            }
            None => match raw.reply() {
                Ok(reply) => deserves.check(&reply)?,
                // The server may stop reading and answer before the whole body is sent.
                Err(e) => return Err(TestCaseError::fail(format!("no reply ({e}; sent: {sent:?})"))),
            },
        };
        let after = server.received_size();
        if took {
            accepted.set(accepted.get() + 1);
            prop_assert!(after >= before);
        } else {
            refused.set(refused.get() + usize::from(send_only.is_none()));
            prop_assert_eq!(after, before, "a refused block recorded bytes");
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // Every recorded byte is the file's own.
    let info = server.get(&server.task.blocks_url).json();
    let temp = std::fs::read(server.tmp_dir.join(format!("task-{}.part", server.task.task_id))).unwrap();
    let mut missing = vec![false; FILE_SIZE];
    for gap in info["data"]["expectBlocks"].as_array().unwrap() {
        let (s, e) = (gap["startByte"].as_u64().unwrap() as usize, gap["endByte"].as_u64().unwrap() as usize);
        missing[s..=e].iter_mut().for_each(|m| *m = true);
    }
    let wrong = (0..FILE_SIZE).filter(|&i| !missing[i] && temp[i] != data[i]).count();
    assert_eq!(wrong, 0, "recorded bytes that differ from the file's");
    server.still_serving();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");
    println!(
        "fuzzed blocks: {} cases, {} accepted, {} refused, {} dropped mid-request; {} bytes recorded",
        cases(),
        accepted.get(),
        refused.get(),
        dropped.get(),
        info["data"]["receivedSize"]
    );
}

// ---------------------------------------------------------------------------------------------
// Creates

#[derive(Debug, Clone)]
enum Body {
    Object(Vec<(String, Value)>, Option<String>),
    NotAnObject(Value),
    Bytes(Vec<u8>),
    Truncated(f64),
    NonUtf8,
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn create_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    let token = prop_oneof![8 => Just(json!(TOKEN)), 1 => Just(json!("nope")), 1 => any_json(), 1 => Just(json!(null))];
    let user_id = prop_oneof![6 => "[a-z0-9]{1,8}".prop_map(Value::String), 2 => any::<i64>().prop_map(|n| json!(n)), 1 => any_json()];
    let file_name = prop_oneof![
        6 => "[a-zA-Z0-9 ._-]{1,20}".prop_filter("not . or ..", |n| n != "." && n != "..").prop_map(Value::String),
        1 => prop_oneof![Just(""), Just("."), Just(".."), Just("a/b"), Just("a\\b"), Just("a\u{0}b"), Just("a\u{7f}"), Just("\u{202e}gpj.exe"), Just("数据.bin")].prop_map(|s| json!(s)),
        1 => Just(json!("n".repeat(256))),
        1 => any_json(),
    ];
    let file_size = prop_oneof![
        6 => (0..=MAX_FILE).prop_map(|n| json!(n)),
        2 => (0..=MAX_FILE).prop_map(|n| json!(n.to_string())),
        1 => prop_oneof![Just(json!(-1)), Just(json!(1.5)), Just(json!("12a")), Just(json!("")), Just(json!(" 1")), Just(json!("9223372036854775808")), Just(json!(u64::MAX)), Just(json!(MAX_FILE + 1))],
        1 => any_json(),
    ];
    let file_md5 = prop_oneof![6 => "[0-9a-fA-F]{32}".prop_map(Value::String), 1 => "[0-9a-z]{0,40}".prop_map(Value::String), 1 => any_json()];
    let store_path = prop_oneof![
        4 => "[a-z]{0,6}(/[a-z]{1,6}){0,2}/?".prop_map(Value::String),
        1 => prop_oneof![Just("../"), Just("/etc"), Just("a/../../x"), Just("a\\b"), Just("a\nb"), Just("./a/./b/.."), Just("\u{FF0E}\u{FF0E}/x")].prop_map(|s| json!(s)),
        1 => any_json(),
    ];
    let parameter = any_json();
    (
        prop::option::weighted(0.95, token),
        prop::option::weighted(0.95, user_id),
        prop::option::weighted(0.95, file_name),
        prop::option::weighted(0.95, file_size),
        prop::option::weighted(0.95, file_md5),
        prop::option::weighted(0.8, store_path),
        prop::option::weighted(0.7, parameter),
        prop::option::weighted(0.2, ("[a-z]{1,8}", any_json())),
    )
        .prop_map(|(token, user_id, name, size, md5, store_path, parameter, extra)| {
            [
                ("token", token),
                ("userId", user_id),
                ("fileName", name),
                ("fileSize", size),
                ("fileMd5", md5),
                ("storePath", store_path),
                ("feedBackParameter", parameter),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .chain(extra)
            .collect()
        })
}

fn create_bodies() -> impl Strategy<Value = Body> {
    prop_oneof![
        14 => (create_fields(), prop::option::weighted(0.05, Just("x".repeat((1 << 20) + 10)))).prop_map(|(f, pad)| Body::Object(f, pad)),
        1 => any_json().prop_filter("not an object", |v| !v.is_object()).prop_map(Body::NotAnObject),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Bytes),
        1 => (0.0..1.0f64).prop_map(Body::Truncated),
        1 => Just(Body::NonUtf8),
    ]
}

/// What a create deserves, field by field, as docs/API.md describes them.
fn create_deserves(fields: &[(String, Value)]) -> Deserves {
    let get = |k: &str| fields.iter().find(|(name, _)| name == k).map(|(_, v)| v);
    let mut deserves = Deserves::default();
    if get("token") != Some(&json!(TOKEN)) {
        deserves.refused(401, "1");
        return deserves;
    }
    let valid_user =
        matches!(get("userId"), Some(Value::String(_))) || get("userId").is_some_and(|v| v.is_i64() || v.is_u64());
    if !valid_user {
        deserves.refused(400, "6");
    }
    match get("fileName") {
        Some(Value::String(n))
            if !n.is_empty()
                && n.len() <= 255
                && n != "."
                && n != ".."
                && !n.contains(['/', '\\'])
                && !n.chars().any(char::is_control) => {}
        _ => deserves.refused(400, "6"),
    }
    let size = match get("fileSize") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse::<u64>().ok(),
        _ => None,
    };
    match size {
        Some(size) if size > i64::MAX as u64 => deserves.refused(400, "6"),
        Some(size) if size > MAX_FILE => deserves.refused(413, "10"),
        Some(_) => {}
        None => deserves.refused(400, "6"),
    }
    match get("fileMd5") {
        Some(Value::String(m)) if m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        _ => deserves.refused(400, "6"),
    }
    match get("storePath") {
        None => {}
        Some(Value::String(p)) if p.chars().any(char::is_control) || p.contains('\\') => deserves.refused(400, "6"),
        Some(Value::String(p)) => {
            let mut depth = 0i32;
            let mut escapes = p.starts_with('/');
            for part in p.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        depth -= 1;
                        escapes |= depth < 0;
                    }
                    _ => depth += 1,
                }
            }
            if escapes {
                deserves.refused(403, "9");
            }
        }
        Some(_) => deserves.refused(400, "6"),
    }
    deserves
}

#[test]
fn fuzzed_creates_get_their_documented_refusal_and_record_nothing() {
    count_panics();
    let server = Server::start(content(FILE_SIZE, 34));
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let created = RefCell::new(BTreeSet::new());
    let refused = Cell::new(0);
    let outcome = runner.run(&create_bodies(), |body| {
        let (bytes, deserves) = match &body {
            Body::Object(fields, pad) => {
                let mut object: serde_json::Map<String, Value> = fields.iter().cloned().collect();
                let mut deserves = create_deserves(fields);
                if let Some(pad) = pad {
                    object.insert("pad".into(), json!(pad));
                    deserves = Deserves::only(413, "10");
                }
                (Value::Object(object).to_string().into_bytes(), deserves)
            }
            Body::NotAnObject(value) => (value.to_string().into_bytes(), Deserves::only(400, "6")),
            Body::Bytes(bytes) => {
                // Random bytes could spell a JSON object without a token.
                (bytes.clone(), Deserves { refusals: [(400, "6"), (401, "1")].into(), acceptable: false })
            }
            Body::Truncated(at) => {
                let full = json!({"token": TOKEN, "userId": "1", "fileName": "t.bin", "fileSize": 5,
                    "fileMd5": md5_hex(b"hello")})
                .to_string();
                let cut = ((full.len() - 1) as f64 * at) as usize;
                (full.as_bytes()[..cut].to_vec(), Deserves::only(400, "6"))
            }
            Body::NonUtf8 => {
                let mut bytes = format!(r#"{{"token":"{TOKEN}","userId":"1","fileName":"a"#).into_bytes();
                bytes.extend_from_slice(b"\xff\xfe\",\"fileSize\":1,\"fileMd5\":\"0123456789abcdef0123456789abcdef\"}");
                (bytes, Deserves::only(400, "6"))
            }
        };
        let mut raw = Raw::connect(&server.addr);
        raw.send(&[post_head("/api/upload/new/task", "application/json", bytes.len()), bytes].concat()).unwrap();
        let reply = raw.reply().map_err(|e| TestCaseError::fail(format!("no reply: {e}")))?;
        if deserves.check(&reply)? {
            let task_id = reply.json()["data"]["taskId"].as_i64().unwrap();
            prop_assert!(reply.json()["data"]["uploadUrl"].as_str().is_some_and(|u| u.starts_with(&server.base)));
            created.borrow_mut().insert(task_id);
        } else {
            refused.set(refused.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // Refused creates recorded nothing: the tasks are the fuzz task and the accepted ones.
    let created = created.into_inner().len();
    assert_eq!(server.task_count(), 1 + created as i64);
    server.still_serving();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");
    println!("fuzzed creates: {} cases, {created} tasks created or resumed, {} refused", cases(), refused.get());
}

/// A tus or IETF request: a method, a path, headers from those the two protocols read (with
/// values that parse, values that nearly do and absurd ones), and a body sent in full.
#[derive(Debug, Clone)]
struct ResumableCase {
    method: &'static str,
    path: usize,
    headers: Vec<(&'static str, String)>,
    body_len: usize,
    content_length: bool,
}

fn header_values(name: &'static str) -> BoxedStrategy<(&'static str, String)> {
    let number = prop_oneof![
        (0u64..5000).prop_map(|n| n.to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just(" 1e3".to_owned()),
        "[ -~]{0,12}",
    ];
    let values: BoxedStrategy<String> = match name {
        "upload-offset" | "upload-length" => number.boxed(),
        "upload-checksum" => prop_oneof![
            Just("md5 1B2M2Y8AsgTpgAmY7PhCfg==".to_owned()),
            Just("sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=".to_owned()),
            Just("crc32 AAAA".to_owned()),
            Just("md5".to_owned()),
            "[ -~]{0,40}",
        ]
        .boxed(),
        "content-digest" | "repr-digest" => prop_oneof![
            Just("md5=:1B2M2Y8AsgTpgAmY7PhCfg==:".to_owned()),
            Just("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:".to_owned()),
            Just("sha-256=:!!:, md5=:x:".to_owned()),
            "[ -~]{0,40}",
        ]
        .boxed(),
        "upload-concat" => prop_oneof![
            Just("partial".to_owned()),
            Just("final;".to_owned()),
            Just("final;/api/upload/tus/1 /api/upload/tus/2?key=x".to_owned()),
            "final;[ -~]{0,60}",
        ]
        .boxed(),
        "upload-draft-interop-version" => prop_oneof![(2u8..10).prop_map(|v| v.to_string()), "[ -~]{0,4}"].boxed(),
        "upload-complete" | "upload-incomplete" => {
            prop_oneof![Just("?1".to_owned()), Just("?0".to_owned()), "[ -~]{0,3}"].boxed()
        }
        "content-type" => prop_oneof![
            Just("application/offset+octet-stream".to_owned()),
            Just("application/partial-upload".to_owned()),
            "[ -~]{0,30}",
        ]
        .boxed(),
        _ => "[ -~]{0,30}".boxed(),
    };
    values.prop_map(move |value| (name, value)).boxed()
}

const RESUMABLE_HEADERS: [&str; 13] = [
    "tus-resumable",
    "upload-offset",
    "upload-length",
    "upload-defer-length",
    "upload-checksum",
    "upload-concat",
    "upload-metadata",
    "upload-draft-interop-version",
    "upload-complete",
    "upload-incomplete",
    "content-digest",
    "repr-digest",
    "content-type",
];

fn resumable_cases() -> impl Strategy<Value = ResumableCase> {
    let header = prop::sample::select(RESUMABLE_HEADERS.to_vec()).prop_flat_map(header_values);
    (
        prop::sample::select(vec!["POST", "HEAD", "PATCH", "PATCH", "DELETE", "OPTIONS"]),
        0usize..5,
        prop::collection::vec(header, 0..8),
        prop::bool::weighted(0.5),
        prop_oneof![Just(0usize), 1usize..3000, Just(MAX_BLOCK as usize + 1)],
        prop::bool::weighted(0.9),
    )
        .prop_map(|(method, path, mut headers, tus_version, body_len, content_length)| {
            if tus_version {
                headers.push(("tus-resumable", "1.0.0".into()));
            }
            ResumableCase { method, path, headers, body_len, content_length }
        })
}

#[test]
fn fuzzed_tus_and_ietf_requests_never_harm_the_server() {
    use fupload::domain::grant::GrantClaims;
    count_panics();
    let data = content(FILE_SIZE, 35);
    let server = Server::start(data.clone());
    let (_, tus_path) = split_url(&server.task.tus_url);
    let paths = [
        "/api/upload/tus".to_owned(),
        tus_path.clone(),
        tus_path.replace("key=", "key=0"),
        "/api/upload/tus/abc".to_owned(),
        "/api/upload/tus/99999999999999999999?key=x".to_owned(),
    ];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let grant = |n: usize| {
        let size = [None, Some(0), Some(1000), Some(MAX_FILE), Some(MAX_FILE + 1)][n % 5];
        GrantClaims::new("9", &format!("fuzz-{n}.bin"), size, now, 600).unwrap().sign(TOKEN)
    };
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let case_number = Cell::new(0usize);
    let outcome = runner.run(&resumable_cases(), |case| {
        let n = case_number.get();
        case_number.set(n + 1);
        let before = server.received_size();
        let mut request = format!("{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", case.method, paths[case.path]);
        if n.is_multiple_of(3) {
            request.push_str(&format!("Authorization: Bearer {}\r\n", grant(n)));
        }
        for (name, value) in &case.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if case.content_length {
            request.push_str(&format!("Content-Length: {}\r\n", case.body_len));
        }
        let offset = before as usize;
        let body = &data[offset.min(data.len())..(offset + case.body_len).min(data.len())];
        let mut raw = Raw::connect(&server.addr);
        raw.set_read_timeout(std::time::Duration::from_secs(10));
        raw.send(
            &[format!("{request}\r\n").into_bytes(), if case.content_length { body.to_vec() } else { Vec::new() }]
                .concat(),
        )
        .map_err(|e| TestCaseError::fail(format!("send: {e}")))?;
        let reply = raw.reply().map_err(|e| TestCaseError::fail(format!("no reply to {case:?}: {e}")))?;
        prop_assert!(reply.status >= 200 && reply.status < 500, "{case:?}: {}", reply.head);
        if reply.status >= 400 {
            prop_assert_eq!(server.received_size(), before, "a refused request recorded bytes: {:?}", case);
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    server.still_serving();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");
}
