//! Security: upload keys, what a request without the key can make the server do, storeDir
//! confinement (`..`, absolute paths, symlinks, Unicode look-alikes), and every limit
//! on what a client may send or hold (body sizes, header size, slow heads, slow bodies, idle
//! keep-alive connections, concurrent connections). docs/SECURITY.md is the threat model.

use fupload_testkit::{helpers, raw_http};

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use helpers::*;
use raw_http::{exchange, post_head, send_partly, split_url, Raw};

fn key_of(url: &str) -> &str {
    &url[url.find("key=").unwrap() + 4..]
}

fn with_key(url: &str, key: &str) -> String {
    format!("{}key={key}", &url[..url.find("key=").unwrap()])
}

#[actix_web::test]
async fn upload_keys_are_128_random_bits() {
    let app = spawn_app().await;
    let mut keys = HashSet::new();
    for i in 0..64 {
        let task = app.new_task(&format!("k{i}.bin"), b"abc").await;
        let key = key_of(&task.upload_url).to_owned();
        assert!(key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{key}");
        keys.insert(key);
    }
    assert_eq!(keys.len(), 64, "all keys differ");
    // Every hex digit position varies across the keys: no fixed or counter-like part.
    for position in 0..32 {
        let digits: HashSet<u8> = keys.iter().map(|k| k.as_bytes()[position]).collect();
        assert!(digits.len() > 1, "position {position} is the same in 64 keys");
    }
}

#[actix_web::test]
async fn another_tasks_key_is_answered_exactly_like_an_unknown_task() {
    let app = spawn_app().await;
    let data = content(100, 1);
    let mine = app.new_task("mine.bin", &data).await;
    let theirs = app.new_task("theirs.bin", &data).await;
    let (addr, _) = split_url(&app.base);
    let (content_type, block) =
        multipart(&[("startByte", b"0"), ("endByte", b"99"), ("partMd5", md5_hex(&data).as_bytes()), ("file", &data)]);
    let state = br#"{"status":"cancel"}"#.to_vec();
    for (url, body) in [
        (&theirs.upload_url, Some((content_type.as_str(), block.clone()))),
        (&theirs.blocks_url, None),
        (&theirs.state_url, Some(("application/json", state.clone()))),
    ] {
        let (_, path) = split_url(url);
        let wrong_key = with_key(&path, key_of(&mine.upload_url));
        let unknown_task = path.replace(&format!("taskId={}", theirs.task_id), "taskId=987654");
        let replies: Vec<_> = [unknown_task, wrong_key]
            .iter()
            .map(|path| {
                let request = match &body {
                    Some((content_type, body)) => [post_head(path, content_type, body.len()), body.clone()].concat(),
                    None => format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
                };
                exchange(&addr, &request).unwrap()
            })
            .collect();
        assert_eq!((replies[0].status, replies[0].ret_code().as_str()), (404, "2"), "{path}");
        // The same headers, in whatever order (`connection: close` comes with either, by timing:
        // whether the unread body had all arrived when the reply was sent).
        let head = |reply: &raw_http::RawReply| {
            let mut lines: Vec<String> =
                reply.head_without_date().lines().filter(|l| !l.starts_with("connection:")).map(String::from).collect();
            lines.sort();
            lines
        };
        assert_eq!(head(&replies[0]), head(&replies[1]), "{path}");
        assert_eq!(replies[0].body, replies[1].body, "{path}");
    }
    assert_eq!(app.blocks_info(&theirs).await["status"], "upload", "nothing happened to their task");
}

/// Regression: a block's fields were read before its task and key were checked, so anyone could
/// make the server spool up to maxBlockSize per request to disk (file part first) without a key.
#[actix_web::test]
async fn a_block_without_the_key_is_refused_before_its_body_is_read() {
    let app = spawn_app().await;
    let task = app.new_task("a.bin", &content(1000, 2)).await;
    let (addr, path) = split_url(&with_key(&task.upload_url, &"0".repeat(32)));
    let head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n");
    let mut raw = Raw::connect(&addr);
    raw.set_read_timeout(Duration::from_secs(10));
    raw.send(&post_head(&path, &format!("multipart/form-data; boundary={BOUNDARY}"), 50 << 20)).unwrap();
    raw.send(head.as_bytes()).unwrap();
    raw.send(&vec![7u8; 256 << 10]).unwrap();
    // The reply comes without the other 49.7 MiB.
    let reply = raw.reply().expect("a reply before the body is complete");
    assert_eq!((reply.status, reply.ret_code().as_str()), (404, "2"));
    assert_eq!(app.tmp_files(), vec![format!("task-{}.part", task.task_id)], "nothing spooled");
}

/// Regression: the multipart parser buffers a part header until it ends; one that never ended
/// grew the server's memory without bound. Now a body may run at most 1 MiB ahead of the handler.
#[actix_web::test]
async fn a_part_header_that_never_ends_is_refused_early() {
    let app = spawn_app().await;
    let data = content(1000, 3);
    let task = app.new_task("a.bin", &data).await;
    let (addr, path) = split_url(&task.upload_url);
    let mut raw = Raw::connect(&addr);
    raw.set_read_timeout(Duration::from_secs(10));
    raw.send(&post_head(&path, &format!("multipart/form-data; boundary={BOUNDARY}"), 64 << 20)).unwrap();
    raw.send(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; x=\"").as_bytes()).unwrap();
    for _ in 0..64 {
        // The server stops reading once it refused the request.
        if raw.send(&vec![b'a'; 64 << 10]).is_err() {
            break;
        }
    }
    let reply = raw.reply().expect("a reply before the 64 MiB body is complete");
    assert_eq!((reply.status, reply.ret_code().as_str()), (400, "6"), "{}", reply.json());
    app.upload_all(&task, &data, 1000).await.expect(200, "0");
}

#[actix_web::test]
async fn a_block_with_too_many_fields_is_refused() {
    let app = spawn_app().await;
    let data = content(10, 4);
    let task = app.new_task("a.bin", &data).await;
    let md5 = md5_hex(&data);
    let mut fields: Vec<(&str, &[u8])> = vec![("partName", b"x"); 40];
    fields.extend([("startByte", &b"0"[..]), ("endByte", b"9"), ("partMd5", md5.as_bytes()), ("file", &data)]);
    app.send_fields(&task.upload_url, &fields).await.expect(400, "6");
    assert_eq!(app.blocks_info(&task).await["receivedSize"], 0);
}

/// Creates a task for `content(100, seed)` in `storePath`: its data, the create's
/// body, and the reply.
async fn create_in(app: &TestApp, store_path: &str, seed: u8) -> (Vec<u8>, serde_json::Value, Reply) {
    let data = content(100, seed);
    let mut body = task_body("a.bin", &data);
    body["storePath"] = json!(store_path);
    let reply = app.create(&body).await;
    (data, body, reply)
}

/// Makes `storeDir/name` a symlink to a directory outside `storeDir`, and returns that directory.
fn link_out_of_store_dir(app: &TestApp, name: &str) -> std::path::PathBuf {
    let outside = app.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(app.path("store")).unwrap();
    std::os::unix::fs::symlink(&outside, app.path(&format!("store/{name}"))).unwrap();
    outside
}

#[actix_web::test]
async fn store_path_cannot_leave_store_dir_by_dots_absolute_paths_or_symlinks() {
    let app = spawn_app().await;
    let outside = link_out_of_store_dir(&app, "evil");
    let store = app.path("store").canonicalize().unwrap().display().to_string();
    let data = content(10, 5);
    for escape in [
        "../".to_owned(),
        "a/../../outside".to_owned(),
        "/etc".to_owned(),
        format!("{store}/../outside"),
        format!("{store}x/a"),
        "evil".to_owned(),
        "evil/deeper/".to_owned(),
        format!("{store}/evil/x"),
    ] {
        let mut body = task_body("a.bin", &data);
        body["storePath"] = json!(escape);
        app.create(&body).await.expect(403, "9");
    }
    for unusable in ["a\\..\\..\\x", "a\u{0}b", "a\nb"] {
        let mut body = task_body("a.bin", &data);
        body["storePath"] = json!(unusable);
        app.create(&body).await.expect(400, "6");
    }
    // Over-long UTF-8 for "../" is not UTF-8 at all.
    let overlong = format!(
        r#"{{"token":"{TOKEN}","userId":"1","fileName":"a","fileSize":1,"fileMd5":"{}","storePath":"#,
        md5_hex(b"x")
    );
    let mut raw = overlong.into_bytes();
    raw.extend_from_slice(b"\"\xC0\xAE\xC0\xAE\xC0\xAF\"}");
    app.post_raw("/api/upload/new/task", "application/json", raw).await.expect(400, "6");
    assert_eq!(query(&app, "SELECT COUNT(*) FROM upload_tasks").await[0][0], "0");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
}

#[actix_web::test]
async fn a_create_resuming_a_task_whose_directory_now_leaves_store_dir_is_refused() {
    // The directory is checked after the task is recorded (or found): a task found again is
    // checked too, and stays as it was; a task just recorded is deleted again (the test above).
    let app = spawn_app().await;
    let (_, body, created) = create_in(&app, "moved/", 7).await;
    created.expect(200, "0");
    let outside = link_out_of_store_dir(&app, "moved");
    app.create(&body).await.expect(403, "9");
    assert_eq!(query(&app, "SELECT COUNT(*) FROM upload_tasks").await[0][0], "1", "the first task stays");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
}

#[actix_web::test]
async fn a_symlink_swapped_in_after_the_create_is_caught_at_the_finish() {
    let app = spawn_app().await;
    // A directory below the link: made by the finish only once the check passed, never outside.
    let (data, _, reply) = create_in(&app, "later/sub/", 6).await;
    reply.expect(200, "0");
    let task = task_urls(&reply.json);
    let outside = link_out_of_store_dir(&app, "later");
    app.send_block(&task, &data, 0, 99).await.expect(200, "0");
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "-4", "storage error: {}", callback.json);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
}

/// A tmpDir on another file system than the store (/dev/shm is a tmpfs), kept as long as the
/// test holds it; `None` with the reason printed.
fn tmp_dir_on_another_file_system() -> Option<tempfile::TempDir> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(std::env::temp_dir()).ok()?.dev();
    match std::fs::metadata("/dev/shm") {
        Ok(shm) if shm.dev() != here => tempfile::tempdir_in("/dev/shm").ok(),
        _ => {
            eprintln!("skipped across file systems: /dev/shm is missing or on the temp dir's file system");
            None
        }
    }
}

/// A server whose tmpDir is on the store's file system, or (`across`) on another one. `None`
/// when there is no other file system here.
async fn spawn_app_across(
    across: bool,
    tweak: impl FnOnce(&mut fupload::config::Settings),
) -> Option<(TestApp, Option<tempfile::TempDir>)> {
    let other = if across { Some(tmp_dir_on_another_file_system()?) } else { None };
    let tmp_dir = other.as_ref().map(|dir| dir.path().to_path_buf());
    let app = spawn_app_with(|settings| {
        if let Some(tmp_dir) = tmp_dir {
            settings.tmp_dir = tmp_dir;
        }
        tweak(settings);
    })
    .await;
    Some((app, other))
}

/// Creates a task for `data` as `file_name` in `storePath`.
async fn create_for(app: &TestApp, store_path: &str, file_name: &str, data: &[u8]) -> TaskUrls {
    let mut body = task_body(file_name, data);
    body["storePath"] = json!(store_path);
    let reply = app.create(&body).await;
    reply.expect(200, "0");
    task_urls(&reply.json)
}

/// Sends all of `data` in one block and waits for the task's callback (the `n`th so far).
async fn finish_upload(app: &TestApp, task: &TaskUrls, data: &[u8], n: usize) -> serde_json::Value {
    app.send_block(task, data, 0, data.len() - 1).await.expect(200, "0");
    let callbacks = app.callbacks.wait_for(n).await;
    callbacks.into_iter().find(|c| c.json["taskId"] == task.task_id).expect("the task's callback").json
}

/// Uploads `data` as `file_name` into `storePath` and waits for its callback (the `n`th so far).
async fn upload_as(app: &TestApp, store_path: &str, file_name: &str, data: &[u8], n: usize) -> serde_json::Value {
    let task = create_for(app, store_path, file_name, data).await;
    finish_upload(app, &task, data, n).await
}

/// Regression (issue 13): a name of 252–255 bytes lost its second upload (`name (1).bin` was too
/// long) and, across file systems, any name of 239–255 bytes its first (the copy's name was).
#[actix_web::test]
async fn long_file_names_are_stored_twice_on_one_file_system_and_across_two() {
    for across in [false, true] {
        let Some((app, _tmp_dir)) = spawn_app_across(across, |_| {}).await else { continue };
        let mut n = 0;
        for len in [1, 238, 239, 251, 252, 255] {
            let name = if len < 5 { "x".repeat(len) } else { format!("{}.bin", "n".repeat(len - 4)) };
            let store_path = format!("len{len}/");
            let mut placed = Vec::new();
            for seed in [1u8, 2] {
                n += 1;
                let data = content(100, seed.wrapping_add(len as u8));
                let callback = upload_as(&app, &store_path, &name, &data, n).await;
                assert_eq!(callback["retCode"], "0", "{len} bytes, across: {across}: {callback}");
                let path = std::path::PathBuf::from(callback["storePath"].as_str().unwrap());
                assert_eq!(std::fs::read(&path).unwrap(), data);
                placed.push(path.file_name().unwrap().to_str().unwrap().to_owned());
            }
            assert_eq!(placed[0], name);
            assert!(placed[1].contains(" (1)") && placed[1].len() <= 255, "{placed:?}");
        }
    }
}

/// Regression (issue 13): across file systems, a link planted at the copy's name made the finish
/// write the upload into the file outside storeDir. Every name the finish uses, each planted
/// with a link out of storeDir: the upload is placed beside the link, or refused as leaving.
#[actix_web::test]
async fn symlinks_planted_at_every_name_the_finish_uses_never_lead_outside() {
    for across in [false, true] {
        let Some((app, _tmp_dir)) = spawn_app_across(across, |_| {}).await else { continue };
        let outside = app.path("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let victim = outside.join("victim.bin");
        std::fs::write(&victim, b"victim").unwrap();
        let link_to = |target: &std::path::Path, at: &str| {
            let at = app.path(&format!("store/{at}"));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, at).unwrap();
        };
        // Directory components, linked after the create (which would refuse them): refused.
        let mut n = 0;
        let mut tasks = Vec::new();
        for (store_path, seed) in [("top/", 20), ("top/sub/", 21), ("mid/link/deeper/", 22)] {
            std::fs::create_dir_all(app.path(&format!("store/{store_path}"))).unwrap();
            tasks.push((create_for(&app, store_path, "victim.bin", &content(100, seed)).await, content(100, seed)));
        }
        std::fs::remove_dir_all(app.path("store/top")).unwrap();
        std::fs::remove_dir_all(app.path("store/mid/link")).unwrap();
        link_to(&outside, "top");
        link_to(&outside, "mid/link");
        for (task, data) in tasks {
            n += 1;
            let callback = finish_upload(&app, &task, &data, n).await;
            assert_eq!(callback["retCode"], "-4", "{callback}");
        }
        // The final name and the numbered names: placed beside the links.
        link_to(&victim, "names/victim.bin");
        link_to(&victim, "names/victim (1).bin");
        // Where the copy across file systems was made before (the issue's reproduction).
        link_to(&victim, "names/.victim.bin.fupload-partial");
        n += 1;
        let data = content(100, 23);
        let callback = upload_as(&app, "names/", "victim.bin", &data, n).await;
        assert_eq!(callback["retCode"], "0", "{callback}");
        assert_eq!(callback["storePath"], app.path("store/names/victim (2).bin").to_str().unwrap());
        assert_eq!(std::fs::read(callback["storePath"].as_str().unwrap()).unwrap(), data);
        if across {
            // `.fupload` (made by the finish above): refused.
            std::fs::remove_dir_all(app.path("store/.fupload")).unwrap();
            link_to(&outside, ".fupload");
            n += 1;
            let callback = upload_as(&app, "staged/", "victim.bin", &content(100, 24), n).await;
            assert_eq!(callback["retCode"], "-4", "{callback}");
            // The partial in `.fupload`: replaced, and the upload placed. The next task's id is
            // the next one SQLite hands out.
            std::fs::remove_file(app.path("store/.fupload")).unwrap();
            let next_id: i64 = query(&app, "SELECT MAX(task_id) FROM upload_tasks").await[0][0].parse().unwrap();
            link_to(&victim, &format!(".fupload/task-{}.partial", next_id + 1));
            n += 1;
            let data = content(100, 25);
            let callback = upload_as(&app, "staged/", "victim.bin", &data, n).await;
            assert_eq!((&callback["retCode"], callback["taskId"].as_i64()), (&json!("0"), Some(next_id + 1)));
            assert_eq!(std::fs::read(callback["storePath"].as_str().unwrap()).unwrap(), data);
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim", "the file outside is never written");
        let entries: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["victim.bin"], "nothing made outside storeDir");
    }
}

/// With `storeDir: ""` the copy across file systems is made in the target directory, under a
/// name of the task's: a link planted there is replaced, not written through (and so is one at
/// the name the copy had before, `.NAME.fupload-partial`).
#[actix_web::test]
async fn with_no_store_dir_a_link_at_the_in_directory_partial_is_not_followed() {
    let Some((app, _tmp_dir)) = spawn_app_across(true, |s| s.store_dir = Default::default()).await else { return };
    let victim = app.path("victim.bin");
    std::fs::write(&victim, b"victim").unwrap();
    let dir = app.path("anywhere");
    std::fs::create_dir_all(&dir).unwrap();
    for name in [".fupload-task-1.partial", ".a.bin.fupload-partial"] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    let data = content(100, 26);
    let callback = upload_as(&app, dir.to_str().unwrap(), "a.bin", &data, 1).await;
    assert_eq!((&callback["retCode"], callback["taskId"].as_i64()), (&json!("0"), Some(1)), "{callback}");
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), data);
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
}

/// Regression (issue 13): a finish repeated after a failure between the link and the record
/// stored a second copy across file systems (`big300 (1).bin`) and left the first behind.
#[actix_web::test]
async fn a_finish_repeated_across_file_systems_keeps_one_copy() {
    let Some((app, tmp_dir)) = spawn_app_across(true, |_| {}).await else { return };
    let data = content(300_000, 27);
    let callback = upload_as(&app, "big/", "big300.bin", &data, 1).await;
    assert_eq!(callback["retCode"], "0", "{callback}");
    let (task_id, placed) = (callback["taskId"].as_i64().unwrap(), callback["storePath"].as_str().unwrap().to_owned());
    let (settings, dir, callbacks) = app.stop().await;
    // Back to the moment after the link and before the record: the task in verify with no
    // callback, its temp file and its partial (the placed file's inode) still there. And a
    // partial no task owns.
    let db = &settings.database.url;
    execute_database(
        db,
        &format!("UPDATE upload_tasks SET status = 'verify', final_path = NULL WHERE task_id = {task_id}"),
    );
    execute_database(db, &format!("DELETE FROM callback_outbox WHERE task_id = {task_id}"));
    std::fs::write(settings.tmp_dir.join(format!("task-{task_id}.part")), &data).unwrap();
    let staging = settings.store_dir.join(".fupload");
    std::fs::hard_link(&placed, staging.join(format!("task-{task_id}.partial"))).unwrap();
    std::fs::write(staging.join("task-999.partial"), b"orphan").unwrap();
    let app = restart_on(settings, dir, callbacks).await;
    let again = &app.callbacks.wait_for(2).await[1];
    assert_eq!((&again.json["retCode"], &again.json["storePath"]), (&json!("0"), &json!(placed)));
    let names = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    // The partial and the temp file are removed after the reply.
    for _ in 0..300 {
        if names(&staging).is_empty() && names(&app.settings.tmp_dir).is_empty() {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(names(&staging), Vec::<String>::new(), "no partial left");
    assert_eq!(names(&app.settings.tmp_dir), Vec::<String>::new(), "no temp file left");
    assert_eq!(names(&app.path("store/big")), ["big300.bin"], "one copy");
    assert_eq!(std::fs::read(&placed).unwrap(), data);
    drop(tmp_dir);
}

#[actix_web::test]
async fn unicode_look_alikes_are_plain_names_inside_store_dir() {
    let app = spawn_app().await;
    let store = app.path("store").canonicalize().unwrap();
    let cases = [
        ("\u{FF0E}\u{FF0E}\u{FF0F}\u{FF0E}\u{FF0E}\u{FF0F}etc", "passwd"), // fullwidth ../../
        ("%2e%2e/%2e%2e/etc", "%2e%2e"),                                   // URL-encoded dots
        ("\u{2024}\u{2024}/x", "\u{2024}\u{2024}"),                        // one-dot leaders
        ("..\u{200B}/x", "..\u{200B}"),                                    // dots and a zero-width space
        ("a\u{2215}..\u{2215}..", "b\u{2044}c"),                           // division and fraction slashes
    ];
    for (i, (store_path, file_name)) in cases.iter().enumerate() {
        let data = content(20, 10 + i as u8);
        let mut body = task_body(file_name, &data);
        body["storePath"] = json!(store_path);
        let reply = app.create(&body).await;
        reply.expect(200, "0");
        app.send_block(&task_urls(&reply.json), &data, 0, 19).await.expect(200, "0");
    }
    let callbacks = app.callbacks.wait_for(cases.len()).await;
    for callback in &callbacks {
        assert_eq!(callback.json["retCode"], "0");
        let placed = std::path::Path::new(callback.json["storePath"].as_str().unwrap());
        assert!(placed.canonicalize().unwrap().starts_with(&store), "{}", placed.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Limits: each with the reply a client gets, and the server still serving afterwards.

/// Waits until the server serves: the raw-socket calls below block this thread, on which the
/// in-process server is started.
async fn serving(app: &TestApp) {
    // The server starts once its future is first polled; then the blocking calls may begin.
    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    let (addr, _) = split_url(&app.base);
    let reply = exchange(&addr, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(reply.status, 404);
}

async fn still_serving(app: &TestApp) {
    let data = content(1000, 99);
    let task = app.new_task("still.bin", &data).await;
    app.upload_all(&task, &data, 1000).await.expect(200, "0");
}

#[actix_web::test]
async fn json_bodies_are_limited() {
    let app = spawn_app().await;
    let task = app.new_task("a.bin", b"abc").await;
    let huge_create = format!(r#"{{"token":"{TOKEN}","pad":"{}"}}"#, "x".repeat((1 << 20) + 1));
    app.post_raw("/api/upload/new/task", "application/json", huge_create.into_bytes()).await.expect(413, "10");
    let huge_state = format!(r#"{{"status":"pause","pad":"{}"}}"#, "x".repeat(64 << 10));
    app.post_raw(&task.state_url, "application/json", huge_state.into_bytes()).await.expect(400, "6");
    assert_eq!(app.blocks_info(&task).await["status"], "upload");
    still_serving(&app).await;
}

#[actix_web::test]
async fn blocks_are_limited_to_max_block_size_also_when_spooled() {
    let app = spawn_app_with(|s| s.max_block_size = 1000).await;
    let data = content(5000, 7);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 1000).await.expect(413, "10");
    // File first: the size is known only while it is spooled.
    let part = &data[..2000];
    app.send_fields(&task.upload_url, &[("file", part), ("startByte", b"0"), ("endByte", b"1999")])
        .await
        .expect(413, "10");
    assert_eq!(app.tmp_files(), vec![format!("task-{}.part", task.task_id)], "spool removed");
    app.send_block(&task, &data, 0, 999).await.expect(200, "0");
}

#[actix_web::test]
async fn request_heads_are_limited() {
    let app = spawn_app().await;
    serving(&app).await;
    let (addr, _) = split_url(&app.base);
    let big_header = format!(
        "GET /api/upload/files/blocks/info?taskId=1 HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200 << 10)
    );
    assert_eq!(exchange(&addr, big_header.as_bytes()).unwrap().status, 431);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /api/upload/files/blocks/info?taskId=1 HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let status = exchange(&addr, many_headers.as_bytes()).map(|r| r.status).unwrap_or(0);
    assert!(status == 400 || status == 431 || status == 0, "{status}");
    still_serving(&app).await;
}

#[actix_web::test]
async fn a_client_slow_to_send_its_head_is_cut_off() {
    let app = spawn_app_with(|s| s.server.client_request_timeout = 1.0).await;
    serving(&app).await;
    let (addr, _) = split_url(&app.base);
    let mut raw = Raw::connect(&addr);
    raw.set_read_timeout(Duration::from_secs(5));
    raw.send(b"POST /api/upload/new/task HTTP/1.1\r\nHost: x\r\n").unwrap();
    let reply = raw.reply().unwrap();
    assert_eq!(reply.status, 408);
    assert!(raw.closed_by_server());
    still_serving(&app).await;
}

#[actix_web::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_app_with(|s| s.server.keep_alive = 1.0).await;
    let task = app.new_task("a.bin", b"abc").await;
    let (addr, path) = split_url(&task.blocks_url);
    let mut raw = Raw::connect(&addr);
    raw.set_read_timeout(Duration::from_secs(5));
    raw.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(raw.reply().unwrap().status, 200);
    assert!(raw.closed_by_server(), "closed after 1 s idle, well before the 5 s read timeout");
}

/// Regression: a block whose client went silent mid-body (a dead network path sends no FIN) held
/// its connection and its claim on the block's bytes for good: every other block for those bytes
/// was answered "no new bytes" while they stayed missing, so the upload could never finish.
#[actix_web::test]
async fn a_body_that_stops_arriving_releases_its_bytes() {
    let app = spawn_app_with(|s| s.server.client_body_timeout = 0.3).await;
    let data = content(100_000, 8);
    let task = app.new_task("a.bin", &data).await;
    let (content_type, body) = block_multipart(0, &data);
    let mut silent = send_partly(&task.upload_url, &content_type, &body, body.len() / 2);
    silent.set_read_timeout(Duration::from_secs(5));
    // The server gives the silent block up and says why.
    let reply = silent.reply().unwrap();
    assert!(matches!((reply.status, reply.ret_code().as_str()), (400, "8" | "6")), "{}", reply.json());
    // The same bytes from another connection are written and recorded.
    let resent = app.send_block(&task, &data, 0, 99_999).await;
    resent.expect(200, "0");
    assert_eq!(resent.json["data"]["taskStatus"], "finish", "{}", resent.json);
    // A create body that stops is given up too.
    let create_url = format!("{}/api/upload/new/task", app.base);
    let mut stalled = send_partly(&create_url, "application/json", &[b'{'; 100], 10);
    stalled.set_read_timeout(Duration::from_secs(5));
    assert_eq!(stalled.reply().unwrap().status, 400);
}

#[actix_web::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let app = spawn_app_with(|s| {
        s.server.max_connections = workers;
        s.server.client_request_timeout = 30.0;
    })
    .await;
    serving(&app).await;
    let (addr, _) = split_url(&app.base);
    // Every connection slot held by a client that is still sending its head.
    let mut held: Vec<Raw> = (0..workers)
        .map(|_| {
            let mut raw = Raw::connect(&addr);
            raw.send(b"GET /api/upload/files/blocks/info?taskId=1 HTTP/1.1\r\n").unwrap();
            raw
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut waiting = Raw::connect(&addr);
    waiting.set_read_timeout(Duration::from_secs(1));
    waiting.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(waiting.reply().is_err(), "no reply while every slot is taken");
    held.pop();
    waiting.set_read_timeout(Duration::from_secs(10));
    assert_eq!(waiting.reply().unwrap().status, 404, "served once a slot is free");
    drop(held);
    still_serving(&app).await;
}

/// Regression: a multipart body that ended inside a part (no closing boundary) left the parser
/// waiting for good: the request never got a reply and held its connection and its block's bytes.
#[actix_web::test]
async fn a_body_that_ends_inside_a_part_is_refused_not_left_hanging() {
    let app = spawn_app_with(|s| s.server.client_body_timeout = 1.0).await;
    let data = content(1000, 9);
    let task = app.new_task("a.bin", &data).await;
    let (content_type, mut body) =
        multipart(&[("startByte", b"0"), ("endByte", b"999"), ("partMd5", md5_hex(&data).as_bytes()), ("file", &data)]);
    body.truncate(body.len() - format!("--{BOUNDARY}--\r\n").len());
    let mut raw = send_partly(&task.upload_url, &content_type, &body, body.len());
    raw.set_read_timeout(Duration::from_secs(10));
    let reply = raw.reply().expect("a reply, not a hang");
    assert_eq!((reply.status, reply.ret_code().as_str()), (400, "6"), "{}", reply.json());
    app.send_block(&task, &data, 0, 999).await.expect(200, "0");
}
