//! A database made by release 0.1 (`tests/fixtures/release-0.1.db`: rusqlite_migration, the
//! schema version in `PRAGMA user_version`) opens in place with this build's store, which keeps
//! every task with all its fields, every received range and every callback, takes writes after
//! the upgrade, and opens it again as often as it is started.
//!
//! Everything is checked through the Store API where it shows it; what it does not show (the
//! timestamps, the outbox rows that are no longer due) is read with SQL in `sql` alone. The
//! expected values are the fixture's, written out (see tests/fixtures/release-0.1.sql): never
//! computed with this build's code, which may have changed since.

use std::path::Path;
use std::time::Duration;

use fupload::config::Durability;
use fupload::domain::{ByteRange, TaskStatus};
use fupload::store::{BlockOutcome, DueCallback, NewCallback, NewTask, StatusChange, Store, Task, TaskEnding};

/// Made once by release 0.1; see tests/fixtures/README.md.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/release-0.1.db");

/// A copy of the fixture in a temp dir of its own (the committed file is never opened), and its
/// `database.url`.
fn copy_of_fixture() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fupload.db");
    std::fs::copy(FIXTURE, &path).unwrap();
    let url = format!("sqlite://{}", path.display());
    (dir, url)
}

/// The one place the test opens a store.
async fn open(url: &str) -> Store {
    Store::open(url, Durability::Process, 2).await.unwrap()
}

/// The one place the test reads the database with SQL, for what the Store API does not show:
/// the rows as text, NULL as "NULL".
fn sql(url: &str, query: &str) -> Vec<Vec<String>> {
    fupload_testkit::helpers::query_database(url, query)
}

/// A task's fields as the fixture holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskFields<'a> {
    task_id: i64,
    upload_key: &'a str,
    business_server: &'a str,
    token_sha256: &'a str,
    user_id: &'a str,
    file_name: &'a str,
    file_size: u64,
    file_md5: &'a str,
    store_path: &'a str,
    store_dir: &'a str,
    feedback_parameter: &'a str,
    tmp_dir: &'a str,
    received_bytes: u64,
    status: TaskStatus,
    final_path: Option<&'a str>,
    error: Option<&'a str>,
    temp_generation: i64,
    finish_attempts: u64,
}

/// The one place the test looks into the store's task type.
fn fields_of(task: &Task) -> TaskFields<'_> {
    TaskFields {
        task_id: task.task_id,
        upload_key: &task.spec.upload_key,
        business_server: &task.spec.business_server,
        token_sha256: &task.spec.token_sha256,
        user_id: &task.spec.user_id,
        file_name: task.spec.file_name.as_str(),
        file_size: task.spec.file_size.bytes(),
        file_md5: task.spec.file_md5.as_ref().map_or("", |md5| md5.as_str()),
        store_path: &task.spec.store_path,
        store_dir: &task.spec.store_dir,
        feedback_parameter: &task.spec.feedback_parameter,
        tmp_dir: &task.tmp_dir,
        received_bytes: task.received_bytes,
        status: task.status,
        final_path: task.final_path.as_deref(),
        error: task.error.as_deref(),
        temp_generation: task.temp_generation,
        finish_attempts: task.finish_attempts,
    }
}

/// What every task of the fixture shares.
const COMMON: TaskFields<'static> = TaskFields {
    task_id: 0,
    upload_key: "",
    business_server: "cp1",
    token_sha256: "23c6f9a053f8384e61c24ab53ac87c0a7bfed31ff08ef6c41496c78b45cbcc52",
    user_id: "",
    file_name: "",
    file_size: 0,
    file_md5: "",
    store_path: "",
    store_dir: "",
    feedback_parameter: "",
    tmp_dir: "/var/tmp/fupload",
    received_bytes: 0,
    status: TaskStatus::Upload,
    final_path: None,
    error: None,
    temp_generation: 0,
    finish_attempts: 0,
};

const TASKS: [TaskFields<'static>; 9] = [
    TaskFields {
        task_id: 1,
        upload_key: "5eed0000000000000000000000000001",
        user_id: "user-1",
        file_name: "年度报告 – Ünïcode 📁.mkv",
        file_size: 6_000_000_000,
        file_md5: "55a54008ad1ba589aa210d2629c1df41",
        store_path: "视频/2026/",
        store_dir: "/srv/fupload/store/视频/2026",
        feedback_parameter: r#"{"用户":"李雷","note":"ça va ✓","n":1}"#,
        received_bytes: 9_388_608,
        ..COMMON
    },
    TaskFields {
        task_id: 2,
        upload_key: "5eed0000000000000000000000000002",
        user_id: "user-2",
        file_name: "Zoë's café.pdf",
        file_size: 1_000_000,
        file_md5: "9e688c58a5487b8eaf69c9e1005ad0bf",
        store_path: "docs/",
        store_dir: "/srv/fupload/store/docs",
        feedback_parameter: r#"{"ticket":"Ω-42"}"#,
        received_bytes: 524_288,
        status: TaskStatus::Pause,
        ..COMMON
    },
    TaskFields {
        task_id: 3,
        upload_key: "5eed0000000000000000000000000003",
        user_id: "user-3",
        file_name: "retry.bin",
        file_size: 300_000,
        file_md5: "8666683506aacd900bbd5a74ac4edf68",
        store_path: "bin/",
        store_dir: "/srv/fupload/store/bin",
        feedback_parameter: "{}",
        received_bytes: 300_000,
        status: TaskStatus::Verify,
        error: Some("database is locked"),
        temp_generation: 1,
        finish_attempts: 2,
        ..COMMON
    },
    TaskFields {
        task_id: 4,
        upload_key: "5eed0000000000000000000000000004",
        user_id: "user-4",
        file_name: "Привет мир.txt",
        file_size: 12_345,
        file_md5: "ec7f7e7bb43742ce868145f71d37b53c",
        store_path: "docs/",
        store_dir: "/srv/fupload/store/docs",
        feedback_parameter: r#"{"orderId":"№ 7","tags":["ä","ß"]}"#,
        received_bytes: 12_345,
        status: TaskStatus::Finish,
        final_path: Some("/srv/fupload/store/docs/Привет мир.txt"),
        ..COMMON
    },
    TaskFields {
        task_id: 5,
        upload_key: "5eed0000000000000000000000000005",
        user_id: "user-5",
        file_name: "キャンセル.zip",
        file_size: 50_000,
        file_md5: "8bb6c17838643f9691cc6a4de6c51709",
        store_path: "zips/",
        store_dir: "/srv/fupload/store/zips",
        feedback_parameter: r#"{"a":1}"#,
        received_bytes: 10_000,
        status: TaskStatus::Cancel,
        ..COMMON
    },
    TaskFields {
        task_id: 6,
        upload_key: "5eed0000000000000000000000000006",
        user_id: "user-6",
        file_name: "expired.iso",
        file_size: 80_000,
        file_md5: "06eca1b437c7904cc3ce6546c8110110",
        store_path: "iso/",
        store_dir: "/srv/fupload/store/iso",
        feedback_parameter: r#"{"b":[1,2,3]}"#,
        received_bytes: 10_000,
        status: TaskStatus::Expire,
        ..COMMON
    },
    TaskFields {
        task_id: 7,
        upload_key: "5eed0000000000000000000000000007",
        user_id: "user-7",
        file_name: "bad md5.dat",
        file_size: 2_000,
        file_md5: "89e74e640b8c46257a29de0616794d5d",
        store_path: "dat/",
        store_dir: "/srv/fupload/store/dat",
        feedback_parameter: "null",
        received_bytes: 2_000,
        status: TaskStatus::Fail,
        error: Some("md5 mismatch: the received file's md5 is 9e107d9d372bb6826bd81d3542a419d6"),
        ..COMMON
    },
    TaskFields {
        task_id: 8,
        upload_key: "5eed0000000000000000000000000008",
        user_id: "user-8",
        file_name: "no-temp.bin",
        file_size: 4_096,
        file_md5: "e2ba905bf306f46faca223d3cb20e2cf",
        store_path: "bin/",
        store_dir: "/srv/fupload/store/bin",
        feedback_parameter: "{}",
        status: TaskStatus::Fail,
        error: Some("cannot create temp file: Permission denied (os error 13)"),
        ..COMMON
    },
    TaskFields {
        task_id: 9,
        upload_key: "5eed0000000000000000000000000009",
        user_id: "user-9",
        file_name: "empty.txt",
        file_size: 0,
        file_md5: "5e732a1878be2342dbfeff5fe3ca5aa3",
        store_path: "docs/",
        store_dir: "/srv/fupload/store/docs",
        feedback_parameter: r#"{"empty":true}"#,
        status: TaskStatus::Verify,
        ..COMMON
    },
];

/// Each task's received ranges (inclusive), ascending.
const RANGES: [(i64, &[(u64, u64)]); 9] = [
    (1, &[(0, 4_194_303), (4_294_967_296, 4_299_161_599), (5_999_000_000, 5_999_999_999)]),
    (2, &[(0, 262_143), (524_288, 786_431)]),
    (3, &[(0, 299_999)]),
    (4, &[(0, 12_344)]),
    (5, &[(0, 9_999)]),
    (6, &[(10_000, 19_999)]),
    (7, &[(0, 1_999)]),
    (8, &[]),
    (9, &[]),
];

/// `created_at`, `updated_at`, `ended_at` of each task, in task order.
const TASK_TIMES: [[&str; 4]; 9] = [
    ["1", "2026-12-04T21:31:41.780Z", "2026-12-04T21:31:41.781Z", "NULL"],
    ["2", "2026-12-04T21:31:41.782Z", "2026-12-04T21:31:41.782Z", "NULL"],
    ["3", "2026-12-04T21:31:41.783Z", "2026-12-04T21:31:41.784Z", "NULL"],
    ["4", "2026-12-04T21:31:41.784Z", "2026-12-04T21:31:41.785Z", "2026-12-04T21:31:41.785Z"],
    ["5", "2026-12-04T21:31:41.785Z", "2026-12-04T21:31:41.786Z", "2026-12-04T21:31:41.786Z"],
    ["6", "2026-12-04T21:31:41.786Z", "2026-12-04T21:31:41.787Z", "2026-12-04T21:31:41.787Z"],
    ["7", "2026-12-04T21:31:41.787Z", "2026-12-04T21:31:41.787Z", "2026-12-04T21:31:41.787Z"],
    ["8", "2026-12-04T21:31:41.788Z", "2026-12-04T21:31:41.788Z", "2026-12-04T21:31:41.788Z"],
    ["9", "2026-12-04T21:31:41.788Z", "2026-12-04T21:31:41.788Z", "NULL"],
];

const NOTIFY_URL: &str = "http://business.example/fupload/notify";

/// Every outbox row: callback_id, task_id, ret_code, status, attempts, next_attempt_at,
/// last_error, created_at, delivered_at, body, signature.
const CALLBACKS: [[&str; 11]; 4] = [
    [
        "1",
        "4",
        "0",
        "delivered",
        "1",
        "2026-12-04T21:31:41.785Z",
        "NULL",
        "2026-12-04T21:31:41.785Z",
        "2026-12-04T21:31:41.789Z",
        r#"{"retCode":"0","status":"ok","data":{"orderId":"№ 7","tags":["ä","ß"]},"taskId":4,"userId":"user-4","fileName":"Привет мир.txt","fileSize":12345,"fileMd5":"ec7f7e7bb43742ce868145f71d37b53c","storePath":"/srv/fupload/store/docs/Привет мир.txt"}"#,
        "sha256=9982ae77e76062489e17475dce028bfb216fbfd2e074f706de4e04f4fcd38cef",
    ],
    [
        "2",
        "5",
        "-3",
        "pending",
        "0",
        "2026-12-04T21:31:41.786Z",
        "NULL",
        "2026-12-04T21:31:41.786Z",
        "NULL",
        r#"{"retCode":"-3","status":"cancelled","data":{"a":1},"taskId":5,"userId":"user-5","fileName":"キャンセル.zip","fileSize":50000,"fileMd5":"8bb6c17838643f9691cc6a4de6c51709","storePath":"/srv/fupload/store/zips/キャンセル.zip"}"#,
        "sha256=939eb5dd7a2817e35a78abcec7d0b68fe038b51c3b85343da61a969c6826136b",
    ],
    [
        "3",
        "6",
        "-1",
        "pending",
        "2",
        "2026-12-04T21:31:43.789Z",
        "HTTP 503 Service Unavailable",
        "2026-12-04T21:31:41.787Z",
        "NULL",
        r#"{"retCode":"-1","status":"time out","data":{"b":[1,2,3]},"taskId":6,"userId":"user-6","fileName":"expired.iso","fileSize":80000,"fileMd5":"06eca1b437c7904cc3ce6546c8110110","storePath":"/srv/fupload/store/iso/expired.iso"}"#,
        "sha256=5a31c462aa9b2f8bd0a589fcd29fc77b5f5c266fef435fd40f5ddeb830c461e1",
    ],
    [
        "4",
        "7",
        "-2",
        "failed",
        "2",
        "2026-12-04T21:31:41.789Z",
        "HTTP 410 Gone",
        "2026-12-04T21:31:41.787Z",
        "NULL",
        r#"{"retCode":"-2","status":"md5 error","data":null,"taskId":7,"userId":"user-7","fileName":"bad md5.dat","fileSize":2000,"fileMd5":"89e74e640b8c46257a29de0616794d5d","storePath":"/srv/fupload/store/dat/bad md5.dat"}"#,
        "sha256=03a082c9d8b4394620557c32fb811c4f83f8936850921be8a864cd0c524294ff",
    ],
];

fn r(start: u64, end: u64) -> ByteRange {
    ByteRange::new(start, end).unwrap()
}

fn ranges(pairs: &[(u64, u64)]) -> Vec<ByteRange> {
    pairs.iter().map(|&(start, end)| r(start, end)).collect()
}

/// Every range of the task, ascending.
async fn stored_ranges(store: &Store, task_id: i64) -> Vec<ByteRange> {
    let mut stored = store.received_within(task_id, r(0, i64::MAX as u64)).await.unwrap();
    stored.sort_by_key(ByteRange::start);
    stored
}

async fn sorted_open_counts(store: &Store) -> Vec<(TaskStatus, u64)> {
    let mut counts = store.open_task_counts().await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    counts
}

/// The outbox row of callback `n` (1-based) as the Store API shows a due one.
fn due(n: usize) -> DueCallback {
    let row = &CALLBACKS[n - 1];
    DueCallback {
        callback_id: row[0].parse().unwrap(),
        task_id: row[1].parse().unwrap(),
        notify_url: NOTIFY_URL.into(),
        body: row[9].into(),
        signature: row[10].into(),
        attempts: row[4].parse().unwrap(),
    }
}

fn due_fields(callback: &DueCallback) -> (i64, i64, &str, &str, &str, u64) {
    (
        callback.callback_id,
        callback.task_id,
        &callback.notify_url,
        &callback.body,
        &callback.signature,
        callback.attempts,
    )
}

/// The callbacks due now, and when the next other one is.
async fn due_now(store: &Store) -> (Vec<DueCallback>, Option<Duration>) {
    let due = store.due_callbacks(32).await.unwrap();
    (due.due, due.next_due_in)
}

fn assert_due(got: &[DueCallback], expected: &[DueCallback]) {
    let got: Vec<_> = got.iter().map(due_fields).collect();
    let expected: Vec<_> = expected.iter().map(due_fields).collect();
    assert_eq!(got, expected);
}

/// The store holds the fixture exactly as release 0.1 wrote it.
async fn assert_as_written(store: &Store, url: &str) {
    for expected in TASKS {
        let task = store.task(expected.task_id).await.unwrap().expect("every task is kept");
        assert_eq!(fields_of(&task), expected);
    }
    assert!(store.task(10).await.unwrap().is_none(), "no task was added");
    for (task_id, pairs) in RANGES {
        assert_eq!(stored_ranges(store, task_id).await, ranges(pairs), "task {task_id}'s ranges");
        let task = &TASKS[usize::try_from(task_id - 1).unwrap()];
        let gaps = ByteRange::whole(task.file_size).map_or_else(Vec::new, |whole| whole.minus(&ranges(pairs)));
        assert_eq!(store.expected_blocks(task_id, task.file_size).await.unwrap(), gaps, "task {task_id}'s gaps");
    }
    // The gaps of the large task, written out: one of them crosses 4 GiB.
    assert_eq!(
        store.expected_blocks(1, 6_000_000_000).await.unwrap(),
        vec![r(4_194_304, 4_294_967_295), r(4_299_161_600, 5_998_999_999)]
    );
    assert_eq!(
        store.received_within(1, r(4_294_967_295, 4_294_967_296)).await.unwrap(),
        vec![r(4_294_967_296, 4_299_161_599)]
    );
    assert_eq!(store.received_prefix(1).await.unwrap(), 4_194_304);
    assert_eq!(store.received_prefix(6).await.unwrap(), 0);

    let in_status = |status| store.tasks_in_status(status);
    for (status, ids) in [
        (TaskStatus::Upload, vec![1]),
        (TaskStatus::Pause, vec![2]),
        (TaskStatus::Verify, vec![3, 9]),
        (TaskStatus::Finish, vec![4]),
        (TaskStatus::Cancel, vec![5]),
        (TaskStatus::Expire, vec![6]),
        (TaskStatus::Fail, vec![7, 8]),
    ] {
        assert_eq!(in_status(status).await.unwrap(), ids, "{status}");
    }
    assert_eq!(
        sorted_open_counts(store).await,
        vec![(TaskStatus::Pause, 1), (TaskStatus::Upload, 1), (TaskStatus::Verify, 2)]
    );
    // Idle since the fixture was made: the expiry sweep would take both open tasks.
    assert_eq!(store.idle_tasks(Duration::from_secs(60)).await.unwrap(), vec![1, 2]);

    // Both pending callbacks are due (their next attempts are long past), oldest first; the
    // delivered one and the failed one are not, and nothing else is pending.
    assert_eq!(store.pending_callbacks().await.unwrap(), 2);
    let (due_now, next_due_in) = due_now(store).await;
    assert_due(&due_now, &[due(2), due(3)]);
    assert_eq!(next_due_in, None);

    let times = sql(url, "SELECT task_id, created_at, updated_at, ended_at FROM upload_tasks ORDER BY task_id");
    assert_eq!(times, TASK_TIMES);
    let outbox = sql(
        url,
        "SELECT callback_id, task_id, ret_code, status, attempts, next_attempt_at, last_error, created_at,
             delivered_at, body, signature
         FROM callback_outbox ORDER BY callback_id",
    );
    assert_eq!(outbox, CALLBACKS);
    assert_eq!(sql(url, "SELECT DISTINCT notify_url FROM callback_outbox"), [[NOTIFY_URL]]);
}

#[tokio::test]
async fn a_release_0_1_database_opens_in_place_and_keeps_everything() {
    let (_dir, url) = copy_of_fixture();
    assert!(!Path::new(&format!("{FIXTURE}-wal")).exists(), "the fixture is the one file");

    let store = open(&url).await;
    assert_as_written(&store, &url).await;
    store.close().await;

    // Opened again (the upgrade, if any, is done): nothing changes.
    let store = open(&url).await;
    assert_as_written(&store, &url).await;

    // Writes work: a block that bridges the large task's first gap, across 4 GiB ...
    let BlockOutcome::Committed(bridged) = store.commit_block(1, 0, &[r(4_194_304, 4_294_967_295)]).await.unwrap()
    else {
        panic!("the block bridging the first gap is refused");
    };
    assert_eq!(bridged.new_bytes, 4_290_772_992);
    assert_eq!((bridged.received_size, bridged.received_prefix), (4_300_161_600, 4_299_161_600));
    assert_eq!(bridged.status, TaskStatus::Upload);
    // ... the paused task still refuses blocks ...
    assert_eq!(store.commit_block(2, 0, &[r(0, 9)]).await.unwrap(), BlockOutcome::NotUploading(TaskStatus::Pause));
    // ... the paused task resumes ...
    assert_eq!(store.change_status(2, TaskStatus::Pause, TaskStatus::Upload).await.unwrap(), StatusChange::Made);
    // ... the task in verify finishes, its callback queued behind the fixture's ...
    let finish = TaskEnding {
        status: TaskStatus::Finish,
        final_path: Some("/srv/fupload/store/bin/retry.bin".into()),
        error: None,
        idle_for: None,
        placed: None,
        instant_from: None,
        computed_md5: None,
    };
    let callback = NewCallback {
        ret_code: "0".into(),
        notify_url: NOTIFY_URL.into(),
        body: "{}".into(),
        signature: "sha256=00".into(),
        undeliverable: None,
    };
    assert_eq!(store.end_task(3, &[TaskStatus::Verify], &finish, &callback).await.unwrap(), StatusChange::Made);
    store.callbacks_delivered(&[2]).await.unwrap();
    // ... the unique index of open tasks still resumes one: the empty file in verify ...
    let empty = store.task(9).await.unwrap().unwrap();
    let resume = NewTask { spec: empty.spec.clone(), tmp_dir: empty.tmp_dir.clone(), status: TaskStatus::Verify };
    let (resumed, created) = store.create_or_resume_task(&resume).await.unwrap();
    assert_eq!((resumed.task_id, created), (9, false));
    // ... and a new task gets an id no fixture task had: AUTOINCREMENT's sequence is kept (the
    // resume above may have used one up).
    let finished = store.task(4).await.unwrap().unwrap();
    let again = NewTask { spec: finished.spec.clone(), tmp_dir: finished.tmp_dir.clone(), status: TaskStatus::Upload };
    let (new, created) = store.create_or_resume_task(&again).await.unwrap();
    assert!(created);
    assert!(new.task_id > 9, "task ids are never given out again: {}", new.task_id);
    store.close().await;

    // And the writes are there when it is opened once more.
    let store = open(&url).await;
    assert_eq!(stored_ranges(&store, 1).await, ranges(&[(0, 4_299_161_599), (5_999_000_000, 5_999_999_999)]));
    assert_eq!(store.task(1).await.unwrap().unwrap().received_bytes, 4_300_161_600);
    let task_3 = store.task(3).await.unwrap().unwrap();
    assert_eq!(task_3.status, TaskStatus::Finish);
    assert_eq!(task_3.final_path.as_deref(), Some("/srv/fupload/store/bin/retry.bin"));
    assert_eq!(store.task(2).await.unwrap().unwrap().status, TaskStatus::Upload);
    assert_eq!(sorted_open_counts(&store).await, vec![(TaskStatus::Upload, 3), (TaskStatus::Verify, 1)]);
    assert_eq!(store.pending_callbacks().await.unwrap(), 2);
    assert_eq!(store.task(new.task_id).await.unwrap().unwrap().status, TaskStatus::Upload);
    let (due_now, _) = due_now(&store).await;
    let queued = DueCallback {
        callback_id: 5, // the fixture's last was 4
        task_id: 3,
        body: "{}".into(),
        signature: "sha256=00".into(),
        attempts: 0,
        ..due(3)
    };
    assert_due(&due_now, &[due(3), queued]);
    store.close().await;
}
