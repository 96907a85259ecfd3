//! Every bad input PROTOCOL.md names: the documented (HTTP status, retCode), nothing recorded,
//! and the server still completes a good upload afterwards.

use serde_json::{json, Value};

use crate::helpers::*;

fn example() -> Value {
    json!({"token": TOKEN, "userId": "123", "storePath": "hello/", "fileName": "a.bin",
        "fileSize": 100, "fileMd5": md5_hex(&content(100, 50))})
}

fn with(field: &str, value: Value) -> Value {
    let mut body = example();
    body[field] = value;
    body
}

fn without(field: &str) -> Value {
    let mut body = example();
    body.as_object_mut().unwrap().remove(field);
    body
}

async fn good_upload_still_works(app: &TestApp) {
    let data = content(3000, 51);
    let task = app.new_task("after.bin", &data).await;
    app.upload_all(&task, &data, 1000).await;
    let callbacks = app.callbacks.wait_for(1).await;
    let finished =
        callbacks.iter().find(|c| c.json["fileName"] == "after.bin").expect("a callback for the good upload");
    assert_eq!(TestApp::stored_file(finished), data);
}

#[actix_web::test]
async fn bad_create_requests() {
    let app = spawn_app_with(|s| s.max_file_size = 1_000_000).await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("missing token", without("token"), 401, "1"),
        ("unknown token", with("token", json!("nope")), 401, "1"),
        ("token of the wrong type", with("token", json!(1)), 401, "1"),
        ("missing fileName", without("fileName"), 400, "6"),
        ("fileName with a slash", with("fileName", json!("a/b")), 400, "6"),
        ("fileName ..", with("fileName", json!("..")), 400, "6"),
        ("fileName with NUL", with("fileName", json!("a\u{0}b")), 400, "6"),
        ("fileName of 256 bytes", with("fileName", json!("x".repeat(256))), 400, "6"),
        ("negative fileSize", with("fileSize", json!(-1)), 400, "6"),
        ("fractional fileSize", with("fileSize", json!(1.5)), 400, "6"),
        ("non-numeric fileSize", with("fileSize", json!("12abc")), 400, "6"),
        ("fileSize beyond 63 bits", with("fileSize", json!("9223372036854775808")), 400, "6"),
        ("missing fileSize", without("fileSize"), 400, "6"),
        ("short fileMd5", with("fileMd5", json!("abc")), 400, "6"),
        ("non-hex fileMd5", with("fileMd5", json!("z".repeat(32))), 400, "6"),
        ("missing userId", without("userId"), 400, "6"),
        ("userId of the wrong type", with("userId", json!({"id": 1})), 400, "6"),
        ("storePath escaping with ..", with("storePath", json!("../../etc/")), 403, "9"),
        ("absolute storePath outside storeDir", with("storePath", json!("/etc/")), 403, "9"),
        ("fileSize over maxFileSize", with("fileSize", json!(1_000_001)), 413, "10"),
    ];
    for (what, body, status, ret_code) in cases {
        let reply = app.create(&body).await;
        assert_eq!((reply.status, reply.ret_code()), (status, ret_code), "{what}: {}", reply.json);
        assert!(reply.json["status"].as_str().is_some_and(|s| !s.is_empty()), "{what}");
    }
    let field_named = app.create(&with("fileMd5", json!("abc"))).await;
    let text = field_named.json["status"].as_str().unwrap();
    assert!(
        text.starts_with("fileMd5 \"abc\": must be 32 hex digits"),
        "the field, the value sent, what is wrong: {text}"
    );
    for (what, body) in [("not JSON", &b"{\"token\":"[..]), ("a JSON array", b"[1,2]"), ("empty", b"")] {
        let reply = app.post_raw("/api/upload/new/task", "application/json", body.to_vec()).await;
        assert_eq!((reply.status, reply.ret_code()), (400, "6"), "{what}: {}", reply.json);
    }
    let huge = format!(r#"{{"token":"{TOKEN}","pad":"{}"}}"#, "x".repeat(2 << 20));
    app.post_raw("/api/upload/new/task", "application/json", huge.into_bytes()).await.expect(413, "10");
    assert_eq!(query(&app, "SELECT COUNT(*) FROM upload_tasks").await[0][0], "0", "nothing recorded");
    good_upload_still_works(&app).await;
}

/// Multipart fields by name, in order.
type Fields = Vec<(&'static str, Vec<u8>)>;

#[actix_web::test]
async fn bad_blocks() {
    let app = spawn_app_with(|s| {
        s.max_block_size = 1000;
        s.check_tmp_md5 = true;
    })
    .await;
    let data = content(2000, 52);
    let task = app.new_task("a.bin", &data).await;
    let url = task.upload_url.clone();
    let part = &data[..100];
    let md5 = md5_hex(part);
    let good = |start: &'static [u8], end: &'static [u8]| -> Fields {
        vec![
            ("startByte", start.to_vec()),
            ("endByte", end.to_vec()),
            ("partMd5", md5.clone().into_bytes()),
            ("file", part.to_vec()),
        ]
    };
    let mut cases: Vec<(&str, Fields, u16, &str)> = vec![
        ("non-numeric startByte", good(b"zero", b"99"), 400, "6"),
        ("negative startByte", good(b"-1", b"99"), 400, "6"),
        ("start after end", good(b"99", b"0"), 400, "8"),
        ("end beyond the file", good(b"1950", b"2049"), 416, "8"),
        ("body longer than the range", good(b"0", b"49"), 400, "8"),
        ("body shorter than the range", good(b"0", b"199"), 400, "8"),
        ("block over maxBlockSize", good(b"0", b"1999"), 413, "10"),
        ("huge number", good(b"99999999999999999999999", b"99"), 400, "6"),
    ];
    let mut missing_file = good(b"0", b"99");
    missing_file.pop();
    cases.push(("missing file", missing_file, 400, "6"));
    let mut missing_end = good(b"0", b"99");
    missing_end.remove(1);
    cases.push(("missing endByte", missing_end, 400, "6"));
    let mut missing_md5 = good(b"0", b"99");
    missing_md5.remove(2);
    cases.push(("missing partMd5 with checkTmpMd5", missing_md5, 400, "6"));
    let mut bad_md5_text = good(b"0", b"99");
    bad_md5_text[2].1 = b"not-an-md5".to_vec();
    cases.push(("partMd5 that is not hex", bad_md5_text, 400, "6"));
    let mut wrong_md5 = good(b"0", b"99");
    wrong_md5[2].1 = md5_hex(b"other bytes").into_bytes();
    cases.push(("wrong partMd5", wrong_md5, 400, "7"));
    let mut twice = good(b"0", b"99");
    twice.push(("file", part.to_vec()));
    cases.push(("two file parts", twice, 400, "6"));
    for (what, fields, status, ret_code) in cases {
        let fields: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let reply = app.send_fields(&url, &fields).await;
        assert_eq!((reply.status, reply.ret_code()), (status, ret_code), "{what}: {}", reply.json);
    }
    app.post_raw(&url, "application/json", b"{}".to_vec()).await.expect(400, "6");
    app.post_raw(&url, "multipart/form-data; boundary=x", b"garbage".to_vec()).await.expect(400, "6");
    app.post_raw(&url, "multipart/form-data", b"--x\r\n".to_vec()).await.expect(400, "6");
    let ranges = query(&app, "SELECT COUNT(*) FROM received_ranges").await;
    assert_eq!(ranges[0][0], "0", "nothing recorded");
    assert_eq!(app.blocks_info(&task).await["receivedSize"], 0);
    let only_tmp = app.tmp_files();
    assert_eq!(only_tmp, vec![format!("task-{}.part", task.task_id)]);
    good_upload_still_works(&app).await;
}

#[actix_web::test]
async fn unknown_tasks_and_wrong_keys_look_the_same() {
    let app = spawn_app().await;
    let data = content(100, 53);
    let task = app.new_task("a.bin", &data).await;
    let swap_key = |url: &str, key: &str| format!("{}&key={key}", &url[..url.find("&key=").unwrap()]);
    let cases = [
        swap_key(&task.blocks_url, &"0".repeat(32)),
        swap_key(&task.blocks_url, ""),
        task.blocks_url[..task.blocks_url.find("&key=").unwrap()].to_owned(),
        task.blocks_url.replace(&format!("taskId={}", task.task_id), "taskId=999"),
    ];
    let mut replies = Vec::new();
    for url in cases {
        let reply = app.get(&url).await;
        reply.expect(404, "2");
        replies.push(reply.json);
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "{replies:?}");
    app.send_block(&TaskUrls { upload_url: swap_key(&task.upload_url, "x"), ..task.clone() }, &data, 0, 99)
        .await
        .expect(404, "2");
    app.get("/api/upload/files/blocks/info").await.expect(400, "6");
    app.get("/api/upload/files/blocks/info?taskId=abc").await.expect(400, "6");
    good_upload_still_works(&app).await;
}

#[actix_web::test]
async fn wrong_methods_and_paths_get_the_envelope() {
    let app = spawn_app().await;
    let get_create = app.get("/api/upload/new/task").await;
    get_create.expect(405, "6");
    assert_eq!(get_create.json["data"], Value::Null);
    app.post_json("/api/upload/files/blocks/info?taskId=1", &json!({})).await.expect(405, "6");
    app.get("/api/upload/files/block?taskId=1").await.expect(405, "6");
    app.get("/api/upload/files/state?taskId=1").await.expect(405, "6");
    app.get("/nowhere").await.expect(404, "6");
    good_upload_still_works(&app).await;
}
