use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn pause_refuses_blocks_until_upload() {
    let app = spawn_app().await;
    let data = content(1000, 20);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 499).await.expect(200, "0");
    let paused = app.set_state(&task, "pause").await;
    paused.expect(200, "0");
    assert_eq!(paused.json["data"], json!({"taskId": task.task_id, "status": "pause"}));
    app.set_state(&task, "pause").await.expect(409, "5");
    app.send_block(&task, &data, 500, 999).await.expect(409, "4");
    assert_eq!(app.blocks_info(&task).await["status"], "pause");
    app.set_state(&task, "upload").await.expect(200, "0");
    app.set_state(&task, "upload").await.expect(409, "5");
    app.send_block(&task, &data, 500, 999).await.expect(200, "0");
    assert_eq!(TestApp::stored_file(&app.callbacks.wait_for(1).await[0]), data);
    app.set_state(&task, "pause").await.expect(409, "11");
}

#[actix_web::test]
async fn cancel_deletes_the_temp_data_and_calls_back() {
    let app = spawn_app().await;
    let data = content(1000, 21);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 499).await.expect(200, "0");
    assert_eq!(app.tmp_files().len(), 1);
    app.set_state(&task, "cancel").await.expect(200, "0");
    assert!(app.tmp_files().is_empty());
    let callback = &app.callbacks.wait_for(1).await[0];
    assert_eq!((callback.json["retCode"].as_str(), callback.json["status"].as_str()), (Some("-3"), Some("cancelled")));
    assert!(callback.signature_is_valid());
    app.set_state(&task, "cancel").await.expect(409, "11");
    app.set_state(&task, "upload").await.expect(409, "11");
    app.send_block(&task, &data, 500, 999).await.expect(409, "11");
    assert_eq!(app.blocks_info(&task).await["status"], "cancel");
    // A create with the same fields starts a new task.
    assert_ne!(app.new_task("a.bin", &data).await.task_id, task.task_id);
}

#[actix_web::test]
async fn a_paused_task_can_be_cancelled() {
    let app = spawn_app().await;
    let task = app.new_task("a.bin", b"abc").await;
    app.set_state(&task, "pause").await.expect(200, "0");
    app.set_state(&task, "cancel").await.expect(200, "0");
    assert_eq!(app.callbacks.wait_for(1).await[0].json["retCode"], "-3");
}

#[actix_web::test]
async fn state_requests_that_are_wrong() {
    let app = spawn_app().await;
    let task = app.new_task("a.bin", b"abc").await;
    app.post_json(&task.state_url, &json!({"taskId": task.task_id, "status": "finish"})).await.expect(400, "6");
    app.post_json(&task.state_url, &json!({"taskId": task.task_id})).await.expect(400, "6");
    app.post_json(&task.state_url, &json!({"taskId": task.task_id + 1, "status": "pause"})).await.expect(400, "6");
    app.post_raw(&task.state_url, "application/json", b"{not json".to_vec()).await.expect(400, "6");
    // taskId may be left out of the body, or given as a string
    app.post_json(&task.state_url, &json!({"status": "pause"})).await.expect(200, "0");
    app.post_json(&task.state_url, &json!({"taskId": task.task_id.to_string(), "status": "upload"}))
        .await
        .expect(200, "0");
    // taskId in the body alone, without the URL's: still needs the key
    let bare = format!("{}/api/upload/files/state", app.base);
    app.post_json(&bare, &json!({"taskId": task.task_id, "status": "pause"})).await.expect(404, "2");
}
