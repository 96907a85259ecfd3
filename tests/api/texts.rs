//! The status text of every retCode a client or business server can provoke over HTTP: a sentence
//! with the field, the value and what to do. Codes "3" and "20" (disk and system trouble) are
//! checked where errors are mapped (`http::error::tests::every_ret_code_has_a_sentence`).

use serde_json::json;

use crate::helpers::*;

/// Asserts (HTTP status, retCode) and that the status text holds every one of `words`.
fn says(what: &str, reply: &Reply, http: u16, ret_code: &str, words: &[&str]) {
    assert_eq!((reply.status, reply.ret_code()), (http, ret_code), "{what}: {}", reply.json);
    let text = reply.json["status"].as_str().unwrap_or_default();
    for word in words {
        assert!(text.contains(word), "{what}: {word:?} is missing from {text:?}");
    }
}

#[actix_web::test]
async fn every_ret_code_says_what_is_wrong_and_what_to_do() {
    let app = spawn_app_with(|s| {
        s.max_file_size = 1_000_000;
        s.max_block_size = 100_000;
    })
    .await;
    let data = content(200_000, 3);
    let task = app.new_task("t.bin", &data).await;
    let store_dir = app.settings.store_dir.display().to_string();

    // "0" and "1" on a block.
    says("a new block", &app.send_block(&task, &data, 0, 999).await, 200, "0", &["ok"]);
    let again = app.send_block(&task, &data, 0, 999).await;
    says("a repeated block", &again, 200, "1", &["no new bytes", "had all of them already"]);

    // "1" on create: the token.
    let mut body = task_body("t.bin", &data);
    body["token"] = json!("wrong");
    says("unknown token", &app.create(&body).await, 401, "1", &["token", "bServer"]);

    // "2": a wrong key, and a bare URL, answered alike.
    let bare = task.upload_url.split("&key=").next().unwrap().to_owned();
    let wrong_key = format!("{bare}&key=0123456789abcdef0123456789abcdef");
    for url in [&bare, &wrong_key] {
        let fields: &[(&str, &[u8])] = &[("startByte", b"0"), ("endByte", b"0"), ("file", b"x")];
        let reply = app.send_fields(url, fields).await;
        says(
            url,
            &reply,
            404,
            "2",
            &["taskId and key", "exactly as the create returned it", "requireUploadKey: false"],
        );
    }

    // "6": the field and what it must be.
    let mut body = task_body("t.bin", &data);
    body["fileMd5"] = json!("xyz");
    says("a bad fileMd5", &app.create(&body).await, 400, "6", &["fileMd5", "32 hex digits"]);

    // "7": both md5s.
    let part = &data[1000..=1999];
    let wrong = md5_hex(b"other bytes");
    let fields: &[(&str, &[u8])] =
        &[("startByte", b"1000"), ("endByte", b"1999"), ("partMd5", wrong.as_bytes()), ("file", part)];
    let reply = app.send_fields(&task.upload_url, fields).await;
    says("a wrong partMd5", &reply, 400, "7", &["1000-1999", &wrong, &md5_hex(part), "send the block again"]);

    // "8": the values and the rule.
    let fields: &[(&str, &[u8])] = &[("startByte", b"10"), ("endByte", b"5"), ("file", b"x")];
    let reply = app.send_fields(&task.upload_url, fields).await;
    says("start after end", &reply, 400, "8", &["startByte 10", "endByte 5", "inclusive"]);
    let fields: &[(&str, &[u8])] = &[("startByte", b"199999"), ("endByte", b"200000"), ("file", b"xx")];
    let reply = app.send_fields(&task.upload_url, fields).await;
    says("past the end", &reply, 416, "8", &["199999-200000", "200000 bytes", "at most 199999"]);

    // "9": storeDir, where the path leads, and why.
    let mut body = task_body("t.bin", &data);
    body["storePath"] = json!("/tmp/business/");
    let reply = app.create(&body).await;
    says("the original demo's storePath", &reply, 403, "9", &["\"/tmp/business/\"", "/tmp/business", &store_dir]);
    says("the original demo's storePath", &reply, 403, "9", &["outside storeDir", "relative to storeDir"]);

    // "10": the size and the limit.
    let mut body = task_body("t.bin", &data);
    body["fileSize"] = json!(2_000_000);
    says("a file too large", &app.create(&body).await, 413, "10", &["fileSize 2000000", "maxFileSize of 1000000"]);
    let reply = app.send_block(&task, &data, 0, 100_000).await;
    says("a block too large", &reply, 413, "10", &["maxBlockSize of 100000", "at most 100000 bytes"]);

    // "4" and "5": states are words.
    app.set_state(&task, "pause").await.expect(200, "0");
    let reply = app.send_block(&task, &data, 2000, 2999).await;
    says("a block for a paused task", &reply, 409, "4", &["is paused", "\"status\":\"upload\""]);
    says("pause again", &app.set_state(&task, "pause").await, 409, "5", &["already paused", "resume"]);
    app.set_state(&task, "upload").await.expect(200, "0");
    says("upload again", &app.set_state(&task, "upload").await, 409, "5", &["already uploading"]);

    // "11": ended, in words.
    app.set_state(&task, "cancel").await.expect(200, "0");
    let reply = app.send_block(&task, &data, 2000, 2999).await;
    says("a block for a cancelled task", &reply, 409, "11", &["is cancelled", "create a new task"]);
    let finished = app.new_task("small.bin", b"abc").await;
    app.send_block(&finished, b"abc", 0, 2).await.expect(200, "0");
    app.wait_for_status(&finished, "finish").await;
    let reply = app.set_state(&finished, "pause").await;
    says("a change to a finished task", &reply, 409, "11", &["is finished", "nothing is left to do"]);
    assert_ne!(reply.json["status"], "task is finish and no longer accepts this", "the original's text");
}
