//! Resource faults: the disk filling up while a block is written or under the database, and the
//! business server down (refusing connections, or accepting them and never answering) for a long
//! time.
//!
//! Disk full is real: tmpDir, or the database's directory, is a small tmpfs that the test mounts
//! (it needs root, as CI has; elsewhere the test says why it is skipped). The store directory stays on the normal disk, so
//! the finish also takes the copy-across-file-systems path.

use fupload_testkit::helpers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fupload::config::BusinessServer;

use helpers::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        #[expect(clippy::disallowed_methods, reason = "the test mounts a small tmpfs to fill up")]
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !mounted.status.success() {
            return Err(String::from_utf8_lossy(&mounted.stderr).trim().to_owned());
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    /// The tmpfs for `what`, or `None` (the test is then skipped, saying why) where this process
    /// may not mount one.
    fn mount_or_skip(path: &Path, size: &str, what: &str) -> Option<Self> {
        Self::mount(path, size)
            .map_err(|why| {
                println!("SKIPPED: cannot mount a small tmpfs for {what} ({why}); run as root to test a full disk")
            })
            .ok()
    }

    fn resize(&self, size: &str) {
        #[expect(clippy::disallowed_methods, reason = "the test resizes its tmpfs")]
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), "tmpfs"])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        #[expect(clippy::disallowed_methods, reason = "the test unmounts its tmpfs")]
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[actix_web::test]
async fn a_full_disk_refuses_the_block_with_507_records_nothing_and_the_upload_resumes() {
    let mount_dir = tempfile::tempdir().unwrap();
    let tmp = mount_dir.path().join("tmp");
    let Some(tmpfs) = Tmpfs::mount_or_skip(&tmp, "1m", "tmpDir") else { return };
    let app = spawn_app_with(|s| s.tmp_dir = tmp.clone()).await;
    let data = content(3 << 20, 12);
    let task = app.new_task("big.bin", &data).await;
    let block = 256 << 10;
    // Fill the 1 MiB until a block does not fit.
    let mut refused_at = None;
    for start in (0..data.len()).step_by(block) {
        let before = app.blocks_info(&task).await["receivedSize"].as_u64().unwrap();
        let reply = app.send_block(&task, &data, start, start + block - 1).await;
        if reply.status == 200 {
            continue;
        }
        reply.expect(507, "3");
        assert_eq!(app.blocks_info(&task).await["receivedSize"].as_u64().unwrap(), before, "nothing recorded");
        refused_at = Some(start);
        break;
    }
    let refused_at = refused_at.expect("the 1 MiB tmpfs filled up");
    println!(
        "tmpDir on a 1 MiB tmpfs: a block at byte {refused_at} was refused with 507; resumed after a remount to 8 MiB"
    );
    assert!(refused_at >= 512 << 10, "blocks were accepted until the disk was full ({refused_at})");
    let ranges = query(&app, "SELECT start_byte, end_byte FROM received_ranges").await;
    assert_eq!(ranges, vec![vec!["0".to_string(), (refused_at - 1).to_string()]]);
    // A block whose file part comes first is spooled in tmpDir: refused the same way, nothing left.
    let part = &data[refused_at..refused_at + block];
    let (s, e) = (refused_at.to_string(), (refused_at + block - 1).to_string());
    app.send_fields(&task.upload_url, &[("file", part), ("startByte", s.as_bytes()), ("endByte", e.as_bytes())])
        .await
        .expect(507, "3");
    let left: Vec<String> =
        std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec![format!("task-{}.part", task.task_id)], "no spool file left");
    // Space comes back: the upload resumes where it stopped and finishes right.
    tmpfs.resize("8m");
    app.send_missing(&task, &data).await;
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "0");
    assert_eq!(TestApp::stored_file(callback), data);
    drop(app);
    drop(tmpfs);
}

/// Fills the file system of `dir` with one file, up to the last byte it takes.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut filler = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    while filler.write_all(&chunk[..1]).is_ok() {}
    path
}

#[actix_web::test]
async fn a_full_database_disk_is_answered_507_and_writes_resume_once_there_is_room() {
    let mount_dir = tempfile::tempdir().unwrap();
    let db_dir = mount_dir.path().join("db");
    let Some(tmpfs) = Tmpfs::mount_or_skip(&db_dir, "4m", "the database") else { return };
    let app = spawn_app_with(|s| s.database.url = format!("sqlite://{}", db_dir.join("fupload.db").display())).await;
    let data = content(1000, 5);
    let task = app.new_task("a.bin", &data).await;
    let filler = fill_up(&db_dir);
    // More than the WAL holds already, so that it must grow.
    let mut big = task_body("big.bin", &data);
    big["feedBackParameter"] = serde_json::json!("x".repeat(512 << 10));
    let reply = app.create(&big).await;
    reply.expect(507, "3");
    let text = reply.json["status"].as_str().unwrap();
    assert!(text.starts_with("disk full: the volume of the upload database"), "{text}");
    assert!(text.contains("retry"), "{text}");
    std::fs::remove_file(filler).unwrap();
    app.create(&big).await.expect(200, "0");
    app.send_block(&task, &data, 0, 999).await.expect(200, "0");
    assert_eq!(app.callbacks.wait_for(1).await[0].json["retCode"], "0");
    drop(app);
    drop(tmpfs);
}

/// Uploads `n` small files to the end, so that `n` callbacks are due.
async fn finish_files(app: &TestApp, n: usize) {
    for i in 0..n {
        let data = content(100, i as u8);
        let task = app.new_task(&format!("f{i}.bin"), &data).await;
        app.send_block(&task, &data, 0, 99).await.expect(200, "0");
    }
}

/// Waits until no callback is pending; returns (status, attempts, last_error) of each.
async fn outbox_settled(app: &TestApp) -> Vec<Vec<String>> {
    for _ in 0..400 {
        let rows = query(app, "SELECT status, attempts, last_error FROM callback_outbox ORDER BY task_id").await;
        if rows.iter().all(|row| row[0] != "pending") {
            return rows;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("callbacks still pending: {:?}", query(app, "SELECT * FROM callback_outbox").await);
}

fn unreachable_business_server(url: String) -> impl FnOnce(&mut fupload::config::Settings) {
    move |s| {
        s.business_servers =
            HashMap::from([(TOKEN.to_owned(), BusinessServer { name: "cp1".into(), notify_url: url })]);
        s.callback.max_attempts = 5;
        s.callback.initial_backoff = 0.05;
        s.callback.max_backoff = 0.2;
        s.callback.timeout = 1;
    }
}

#[actix_web::test]
async fn a_business_server_that_is_down_gets_capped_retries_and_a_visible_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = spawn_app_with(unreachable_business_server(format!("http://127.0.0.1:{port}/cb"))).await;
    finish_files(&app, 10).await;
    let rows = outbox_settled(&app).await;
    assert_eq!(rows.len(), 10, "one callback per ended task, no more");
    for row in rows {
        assert_eq!(row[0], "failed");
        assert_eq!(row[1], "5", "attempts capped at callback.maxAttempts");
        assert!(row[2].contains("cannot reach the business server"), "{row:?}");
    }
    // Given up means given up: nothing is sent later, and the server goes on serving.
    finish_files(&app, 1).await;
}

#[actix_web::test]
async fn a_business_server_that_never_answers_is_timed_out_and_given_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/cb", listener.local_addr().unwrap().port());
    // Accepts every connection and keeps it, silent, until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let app = spawn_app_with(move |s| {
        unreachable_business_server(url)(s);
        s.callback.max_attempts = 2;
    })
    .await;
    finish_files(&app, 3).await;
    let rows = outbox_settled(&app).await;
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!((row[0].as_str(), row[1].as_str()), ("failed", "2"));
        assert!(row[2].to_lowercase().contains("timeout") || row[2].contains("timed out"), "{row:?}");
    }
}

/// A business server that refuses everything until `open`, then answers at once, except for the
/// callback of `slow_task`, which it holds for 4 s, and with `refuse_even_tasks`, those of tasks
/// with an even id, which it refuses.
#[derive(Clone)]
struct SlowBusiness {
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refuse_even_tasks: std::sync::Arc<std::sync::atomic::AtomicBool>,
    slow_task: std::sync::Arc<std::sync::atomic::AtomicI64>,
    url: String,
    _server: std::sync::Arc<StopOnDrop>,
}

async fn slow_business_answer(
    body: actix_web::web::Json<serde_json::Value>,
    this: actix_web::web::Data<SlowBusiness>,
) -> actix_web::HttpResponse {
    use std::sync::atomic::Ordering;
    let even = body["taskId"].as_i64().is_some_and(|id| id % 2 == 0);
    if !this.open.load(Ordering::SeqCst) || (even && this.refuse_even_tasks.load(Ordering::SeqCst)) {
        return actix_web::HttpResponse::ServiceUnavailable().finish();
    }
    if body["taskId"].as_i64() == Some(this.slow_task.load(Ordering::SeqCst)) {
        actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    }
    actix_web::HttpResponse::Ok().finish()
}

impl SlowBusiness {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/cb", listener.local_addr().unwrap().port());
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slow_task = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(-1));
        let slot: std::sync::Arc<std::sync::Mutex<Option<SlowBusiness>>> = Default::default();
        let in_app = slot.clone();
        let server = actix_web::HttpServer::new(move || {
            let this = in_app.lock().unwrap().clone().expect("set before serving");
            actix_web::App::new()
                .app_data(actix_web::web::Data::new(this))
                .route("/cb", actix_web::web::post().to(slow_business_answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let this = SlowBusiness {
            open,
            refuse_even_tasks: Default::default(),
            slow_task,
            url,
            _server: std::sync::Arc::new(StopOnDrop(server.handle())),
        };
        *slot.lock().unwrap() = Some(this.clone());
        actix_web::rt::spawn(server);
        this
    }
}

/// A server whose callbacks go to `business`, retried only after a minute.
async fn app_calling(business: &SlowBusiness) -> TestApp {
    let url = business.url.clone();
    spawn_app_with(move |s| {
        unreachable_business_server(url)(s);
        s.callback.max_attempts = 10;
        s.callback.initial_backoff = 60.0;
        s.callback.max_backoff = 60.0;
        s.callback.timeout = 10;
    })
    .await
}

/// With `n` callbacks refused once each: opens the business server, and restarts the server with
/// all of them due at once, so that they go out in one batch.
async fn refused_once_then_all_due(app: TestApp, business: &SlowBusiness, n: usize) -> TestApp {
    for _ in 0..100 {
        if query(&app, "SELECT COUNT(*) FROM callback_outbox WHERE attempts = 1").await[0][0] == n.to_string() {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    business.open.store(true, std::sync::atomic::Ordering::SeqCst);
    let (settings, dir, callbacks) = app.stop().await;
    make_callbacks_due(&settings.database.url);
    restart_on(settings, dir, callbacks).await
}

/// Regression: the attempts of one batch were recorded by the sends themselves, while the worker
/// recorded the delivered ones between polls of those sends. A refused callback's send waiting for
/// the writer connection (which is handed out first come, first served), unpolled, while the
/// worker waited for it too, stopped every write of the server for good. The crash test hung so.
#[actix_web::test]
async fn refused_and_delivered_callbacks_of_one_batch_are_all_recorded() {
    let business = SlowBusiness::start();
    let app = app_calling(&business).await;
    finish_files(&app, 16).await;
    business.refuse_even_tasks.store(true, std::sync::atomic::Ordering::SeqCst);
    let app = refused_once_then_all_due(app, &business, 16).await;
    let parity = "SELECT SUM(task_id % 2), COUNT(*) - SUM(task_id % 2) FROM callback_outbox";
    let expected = query(&app, parity).await.remove(0);
    let settled = "SELECT (SELECT COUNT(*) FROM callback_outbox WHERE status = 'delivered' AND task_id % 2 = 1),
                          (SELECT COUNT(*) FROM callback_outbox WHERE attempts = 2 AND task_id % 2 = 0)";
    let mut counts = Vec::new();
    for _ in 0..100 {
        counts = query(&app, settled).await.remove(0);
        if counts == expected {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts, expected, "delivered odd tasks, second attempts of even ones, within 5 s");
    // And the writer is free: another upload goes through to the end.
    finish_files(&app, 1).await;
}

/// Regression: deliveries were recorded only once the whole batch of callbacks was answered, so a
/// slow business server held back the record of every other callback sent with it; a crash in
/// that window sent them all again (the crash test counted 6.5 deliveries per task).
#[actix_web::test]
async fn a_slow_callback_does_not_hold_back_the_record_of_the_others() {
    use std::sync::atomic::Ordering;
    let business = SlowBusiness::start();
    let app = app_calling(&business).await;
    finish_files(&app, 4).await;
    let slow = query(&app, "SELECT MIN(task_id) FROM callback_outbox").await[0][0].parse().unwrap();
    business.slow_task.store(slow, Ordering::SeqCst);
    let app = refused_once_then_all_due(app, &business, 4).await;
    // The three fast ones are recorded while the slow one is still being answered.
    let mut delivered = String::new();
    for _ in 0..40 {
        delivered = query(&app, "SELECT COUNT(*) FROM callback_outbox WHERE status = 'delivered'").await[0][0].clone();
        if delivered == "3" {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered, "3", "the fast callbacks recorded within 2 s, the slow one answers after 4 s");
    let slow_status = query(&app, &format!("SELECT status FROM callback_outbox WHERE task_id = {slow}")).await;
    assert_eq!(slow_status[0][0], "pending");
}
