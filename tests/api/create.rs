use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn the_original_curl_example_answers_ok_with_keyed_absolute_urls() {
    let app = spawn_app().await;
    let reply = app
        .create(&json!({"token": TOKEN, "userId": "123", "storePath": "hello/", "fileName": "hello.mp4",
            "fileSize": "345000000", "fileMd5": "04465d416b4eca345976021db8698f15"}))
        .await;
    reply.expect(200, "0");
    assert_eq!(reply.json["status"], "ok");
    let task = task_urls(&reply.json);
    let key_part = format!("?taskId={}&key=", task.task_id);
    for (url, path) in [
        (&task.upload_url, "/api/upload/files/block"),
        (&task.blocks_url, "/api/upload/files/blocks/info"),
        (&task.state_url, "/api/upload/files/state"),
    ] {
        assert!(url.starts_with(&format!("{}{path}{key_part}", app.base)), "{url}");
        assert_eq!(url.len() - url.find("key=").unwrap() - 4, 32, "a 128-bit key: {url}");
    }
    let info = app.blocks_info(&task).await;
    assert_eq!(
        info,
        json!({"taskId": task.task_id, "totalSize": 345000000u64, "receivedSize": 0,
        "status": "upload", "expectBlocks": [{"startByte": 0, "endByte": 344999999u64}]})
    );
}

#[actix_web::test]
async fn creating_the_same_task_again_resumes_it() {
    let app = spawn_app().await;
    let data = content(1000, 1);
    let first = app.new_task("a.bin", &data).await;
    app.send_block(&first, &data, 0, 499).await.expect(200, "0");
    let again = app.new_task("a.bin", &data).await;
    assert_eq!(again.task_id, first.task_id);
    assert_eq!(again.upload_url, first.upload_url);
    assert_eq!(app.blocks_info(&again).await["receivedSize"], 500);
    let other_name = app.new_task("b.bin", &data).await;
    assert_ne!(other_name.task_id, first.task_id);
}

#[actix_web::test]
async fn integer_user_id_string_file_size_and_the_lowercase_alias_are_accepted() {
    let app = spawn_app().await;
    let data = content(10, 2);
    let reply = app
        .create(&json!({"token": TOKEN, "userId": 123, "fileName": "x.bin", "fileSize": "10",
            "fileMd5": md5_hex(&data).to_uppercase(), "feedbackParameter": [1, "two", {"3": null}]}))
        .await;
    reply.expect(200, "0");
    let task = task_urls(&reply.json);
    app.send_block(&task, &data, 0, 9).await.expect(200, "0");
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["userId"], "123");
    assert_eq!(callback.json["data"], json!([1, "two", {"3": null}]));
    assert_eq!(callback.json["fileMd5"], md5_hex(&data));
}

#[actix_web::test]
async fn urls_use_proxy_addr_when_set() {
    let app = spawn_app_with(|s| s.server.proxy_addr = "https://up.example.com/".into()).await;
    let task = app.new_task("a.bin", b"abc").await;
    assert!(
        task.upload_url.starts_with("https://up.example.com/api/upload/files/block?taskId="),
        "{}",
        task.upload_url
    );
}

#[actix_web::test]
async fn a_zero_byte_file_finishes_at_once() {
    let app = spawn_app().await;
    let task = app.new_task("empty.txt", b"").await;
    let info = app.blocks_info(&task).await;
    assert_eq!((info["status"].as_str(), info["expectBlocks"].as_array().map(Vec::len)), (Some("finish"), Some(0)));
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "0");
    assert_eq!(callback.json["fileMd5"], "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(TestApp::stored_file(callback), b"");
}

#[actix_web::test]
async fn bare_task_urls_work_when_upload_keys_are_not_required() {
    let app = spawn_app_with(|s| s.require_upload_key = false).await;
    let data = content(100, 3);
    let task = app.new_task("a.bin", &data).await;
    let bare = |url: &str| url[..url.find("&key=").unwrap()].to_owned();
    let bare_task = TaskUrls {
        task_id: task.task_id,
        upload_url: bare(&task.upload_url),
        blocks_url: bare(&task.blocks_url),
        state_url: bare(&task.state_url),
        tus_url: task.tus_url.clone(),
    };
    app.send_block(&bare_task, &data, 0, 99).await.expect(200, "0");
    assert_eq!(app.blocks_info(&bare_task).await["status"], "finish");
    let wrong_key = format!("{}&key={}", bare_task.blocks_url, "0".repeat(32));
    app.get(&wrong_key).await.expect(404, "2");
}
