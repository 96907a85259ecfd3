use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn blocks_in_order_finish_the_file_and_call_back() {
    let app = spawn_app().await;
    let data = content(300_000, 4);
    let task = app.new_task("movie.mp4", &data).await;
    let last = app.upload_all(&task, &data, 64 * 1024).await;
    last.expect(200, "0");
    assert_eq!(last.json["data"]["taskStatus"], "finish");
    assert_eq!(last.json["data"]["receivedSize"], 300_000);
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(TestApp::stored_file(callback), data);
    assert!(callback.json["storePath"].as_str().unwrap().ends_with("/store/hello/movie.mp4"));
    app.wait_for_empty_tmp_dir().await;
}

#[actix_web::test]
async fn blocks_out_of_order_and_gaps_in_expect_blocks() {
    let app = spawn_app().await;
    let data = content(1000, 5);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 500, 599).await.expect(200, "0");
    app.send_block(&task, &data, 100, 199).await.expect(200, "0");
    app.send_block(&task, &data, 999, 999).await.expect(200, "0");
    let info = app.blocks_info(&task).await;
    assert_eq!(info["receivedSize"], 201);
    assert_eq!(
        info["expectBlocks"],
        json!([{"startByte": 0, "endByte": 99}, {"startByte": 200, "endByte": 499}, {"startByte": 600, "endByte": 998}])
    );
    for (start, end) in [(600, 998), (0, 99), (200, 499)] {
        app.send_block(&task, &data, start, end).await.expect(200, "0");
    }
    assert_eq!(TestApp::stored_file(&app.callbacks.wait_for(1).await[0]), data);
}

#[actix_web::test]
async fn overlapping_and_repeated_blocks() {
    let app = spawn_app().await;
    let data = content(1000, 6);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 499).await.expect(200, "0");
    let repeat = app.send_block(&task, &data, 0, 499).await;
    repeat.expect(200, "1");
    assert_eq!(repeat.json["data"]["expectBlocks"], json!([{"startByte": 500, "endByte": 999}]));
    let inside = app.send_block(&task, &data, 100, 200).await;
    inside.expect(200, "1");
    let overlapping = app.send_block(&task, &data, 400, 799).await;
    overlapping.expect(200, "0");
    assert_eq!(overlapping.json["data"]["receivedSize"], 800);
    let rows =
        query(&app, &format!("SELECT start_byte, end_byte FROM received_ranges WHERE task_id = {}", task.task_id))
            .await;
    assert_eq!(rows, vec![vec!["0".to_string(), "799".to_string()]], "coalesced into one row");
    app.send_block(&task, &data, 0, 999).await.expect(200, "0");
    assert_eq!(TestApp::stored_file(&app.callbacks.wait_for(1).await[0]), data);
}

#[actix_web::test]
async fn fields_in_any_order_and_extra_fields() {
    let app = spawn_app().await;
    let data = content(2000, 7);
    let task = app.new_task("a.bin", &data).await;
    let first = &data[..1000];
    // file first: spooled until the range is known
    app.send_fields(
        &task.upload_url,
        &[("file", first), ("partMd5", md5_hex(first).as_bytes()), ("endByte", b"999"), ("startByte", b"0")],
    )
    .await
    .expect(200, "0");
    // partMd5 after the file, and an extra field
    let second = &data[1000..];
    app.send_fields(
        &task.upload_url,
        &[
            ("partName", b"part-2"),
            ("startByte", b"1000"),
            ("endByte", b"1999"),
            ("file", second),
            ("partMd5", md5_hex(second).as_bytes()),
        ],
    )
    .await
    .expect(200, "0");
    assert_eq!(TestApp::stored_file(&app.callbacks.wait_for(1).await[0]), data);
    app.wait_for_empty_tmp_dir().await;
}

#[actix_web::test]
async fn a_refused_block_does_not_damage_accepted_bytes() {
    let app = spawn_app().await;
    let data = content(1000, 8);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 499).await.expect(200, "0");
    // Right md5 of the good bytes, wrong bytes, over the accepted range and beyond.
    let mut corrupted = data[..700].to_vec();
    corrupted.iter_mut().for_each(|b| *b = !*b);
    app.send_fields(
        &task.upload_url,
        &[
            ("startByte", b"0"),
            ("endByte", b"699"),
            ("partMd5", md5_hex(&data[..700]).as_bytes()),
            ("file", &corrupted),
        ],
    )
    .await
    .expect(400, "7");
    assert_eq!(app.blocks_info(&task).await["receivedSize"], 500);
    app.send_block(&task, &data, 500, 999).await.expect(200, "0");
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "0");
    assert_eq!(TestApp::stored_file(callback), data);
}

#[actix_web::test]
async fn concurrent_overlapping_blocks_assemble_the_right_file() {
    let app = spawn_app().await;
    let data = content(200_000, 9);
    let task = app.new_task("a.bin", &data).await;
    let sends = (0..40).map(|i| {
        let start = (i * 7_919) % 150_000;
        app.send_block(&task, &data, start, start + 49_999)
    });
    for reply in futures_util::future::join_all(sends).await {
        assert!(reply.status == 200 || reply.ret_code() == "11", "{}", reply.json);
    }
    app.send_missing(&task, &data).await;
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "0");
    assert_eq!(TestApp::stored_file(callback), data);
    assert_eq!(app.callbacks.callbacks().len(), 1);
}

#[actix_web::test]
async fn md5_mismatch_of_the_whole_file_fails_the_task() {
    let app = spawn_app().await;
    let data = content(1000, 10);
    let mut body = task_body("a.bin", &data);
    body["fileMd5"] = json!(md5_hex(b"something else"));
    let reply = app.create(&body).await;
    let task = task_urls(&reply.json);
    let last = app.send_block(&task, &data, 0, 999).await;
    last.expect(200, "0");
    assert_eq!(last.json["data"]["taskStatus"], "fail");
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!((callback.json["retCode"].as_str(), callback.json["status"].as_str()), (Some("-2"), Some("md5 error")));
    app.wait_for_empty_tmp_dir().await;
    assert!(!app.path("store/hello/a.bin").exists());
    let error = query(&app, &format!("SELECT error FROM upload_tasks WHERE task_id = {}", task.task_id)).await;
    assert!(error[0][0].starts_with("md5 mismatch"), "{error:?}");
    app.send_block(&task, &data, 0, 9).await.expect(409, "11");
}

#[actix_web::test]
async fn an_existing_file_is_never_overwritten() {
    let app = spawn_app().await;
    std::fs::create_dir_all(app.path("store/hello")).unwrap();
    std::fs::write(app.path("store/hello/a.bin"), b"precious").unwrap();
    let data = content(100, 11);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 99).await.expect(200, "0");
    let callback = &app.callbacks.wait_for(1).await[0];
    assert!(callback.json["storePath"].as_str().unwrap().ends_with("/store/hello/a (1).bin"));
    assert_eq!(TestApp::stored_file(callback), data);
    assert_eq!(std::fs::read(app.path("store/hello/a.bin")).unwrap(), b"precious");
}

#[actix_web::test]
async fn a_block_after_tmp_dir_was_cleaned_is_refused_with_retry_after_and_the_lost_bytes_are_expected_again() {
    let app = spawn_app().await;
    let data = content(200_000, 6);
    let task = app.new_task("lost.bin", &data).await;
    app.send_block(&task, &data, 0, 99_999).await.expect(200, "0");
    std::fs::remove_dir_all(&app.settings.tmp_dir).unwrap();
    let lost = app.send_block(&task, &data, 100_000, 199_999).await;
    lost.expect(500, "3");
    assert_eq!(lost.retry_after.as_deref(), Some("1"));
    assert!(lost.json["status"].as_str().unwrap().contains("send this block again"), "{}", lost.json);
    let info = app.blocks_info(&task).await;
    assert_eq!(info["expectBlocks"], json!([{"startByte": 0, "endByte": 199_999}]));
    assert!(info["lastError"].as_str().unwrap().contains("temp file was lost"), "{info}");
    app.send_missing(&task, &data).await;
    assert_eq!(TestApp::stored_file(&app.callbacks.wait_for(1).await[0]), data);
}

#[actix_web::test]
async fn a_block_whose_bytes_a_stalled_block_holds_is_asked_again_with_retry_after() {
    use fupload_testkit::raw_http::send_partly;
    let app = spawn_app_with(|s| s.server.client_body_timeout = 1.0).await;
    let data = content(100_000, 12);
    let task = app.new_task("stall.bin", &data).await;
    let (content_type, body) = block_multipart(0, &data);
    // Headers and half the body, then nothing: the bytes stay claimed until the body times out.
    let stalled = send_partly(&task.upload_url, &content_type, &body, body.len() / 2);
    actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    let second = app.send_block(&task, &data, 0, 99_999).await;
    second.expect(200, "1");
    assert_eq!(second.retry_after.as_deref(), Some("1"), "{}", second.json);
    let text = second.json["status"].as_str().unwrap();
    assert!(text.contains("another block still in flight") && text.contains("0-99999"), "{text}");
    assert!(text.contains("send them again in 1 s (Retry-After)"), "{text}");
    assert_eq!(second.json["data"]["expectBlocks"], json!([{"startByte": 0, "endByte": 99_999}]));
    // Once the stalled body is given up, the block sent again is recorded.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1500)).await;
    let third = app.send_block(&task, &data, 0, 99_999).await;
    third.expect(200, "0");
    assert_eq!((third.retry_after, third.json["data"]["taskStatus"].as_str()), (None, Some("finish")));
    drop(stalled);
}
