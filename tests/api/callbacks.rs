use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn the_callback_carries_the_task_and_a_valid_signature() {
    let app = spawn_app().await;
    let data = content(5000, 30);
    let task = app.new_task("report.pdf", &data).await;
    app.upload_all(&task, &data, 1000).await;
    let callbacks = app.callbacks.wait_for(1).await;
    let callback = &callbacks[0];
    assert!(callback.signature_is_valid(), "signature {}", callback.signature);
    let store_path = callback.json["storePath"].as_str().unwrap().to_owned();
    assert!(store_path.starts_with('/') && store_path.ends_with("/store/hello/report.pdf"), "{store_path}");
    assert_eq!(
        callback.json,
        json!({"retCode": "0", "status": "ok", "data": {"order": 42, "note": "keep me"}, "taskId": task.task_id,
            "userId": "123", "fileName": "report.pdf", "fileSize": 5000, "fileMd5": md5_hex(&data),
            "storePath": store_path})
    );
    // The feedBackParameter text is passed on verbatim, not re-serialised.
    let raw = String::from_utf8(callback.raw_body.clone()).unwrap();
    assert!(
        raw.contains(r#""data":{"note":"keep me","order":42}"#)
            || raw.contains(r#""data":{"order":42,"note":"keep me"}"#),
        "{raw}"
    );
    // Recorded once the business server's answer is back, a moment after it saw the callback.
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = query(&app, "SELECT status, attempts, last_error FROM callback_outbox").await;
        if rows[0][0] != "pending" {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rows, vec![vec!["delivered".to_string(), "1".into(), "NULL".into()]]);
}

#[actix_web::test]
async fn feedback_parameter_text_is_kept_byte_for_byte() {
    let app = spawn_app().await;
    let raw_json = format!(
        r#"{{"token":"{TOKEN}","userId":"1","fileName":"a","fileSize":1,"fileMd5":"{}","feedBackParameter":{{"b" : 1.50,"a":[ ]}}}}"#,
        md5_hex(b"x")
    );
    let reply = app.post_raw("/api/upload/new/task", "application/json", raw_json.into_bytes()).await;
    let task = task_urls(&reply.json);
    app.send_block(&task, b"x", 0, 0).await.expect(200, "0");
    let raw = String::from_utf8(app.callbacks.wait_for(1).await[0].raw_body.clone()).unwrap();
    assert!(raw.contains(r#""data":{"b" : 1.50,"a":[ ]}"#), "{raw}");
}

#[actix_web::test]
async fn failed_deliveries_are_retried_until_a_2xx() {
    let app = spawn_app().await;
    app.callbacks.answers.lock().unwrap().extend([500, 503, 404]);
    let task = app.new_task("a.bin", b"abc").await;
    app.send_block(&task, b"abc", 0, 2).await.expect(200, "0");
    let callbacks = app.callbacks.wait_for(1).await;
    assert_eq!(callbacks.len(), 1);
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.callbacks.callbacks().len(), 1, "no resend after a 2xx");
    let rows = query(&app, "SELECT status, attempts FROM callback_outbox").await;
    assert_eq!(rows, vec![vec!["delivered".to_string(), "4".into()]]);
}

#[actix_web::test]
async fn delivery_gives_up_after_max_attempts_and_keeps_the_last_error() {
    let app = spawn_app_with(|s| s.callback.max_attempts = 3).await;
    app.callbacks.answers.lock().unwrap().extend([500; 10]);
    let task = app.new_task("a.bin", b"abc").await;
    app.send_block(&task, b"abc", 0, 2).await.expect(200, "0");
    for _ in 0..100 {
        let rows = query(&app, "SELECT status, attempts, last_error FROM callback_outbox").await;
        if rows[0][0] == "failed" {
            assert_eq!(rows[0][1], "3");
            assert!(rows[0][2].contains("500"), "{rows:?}");
            assert_eq!(app.callbacks.answers.lock().unwrap().len(), 7, "exactly 3 attempts");
            return;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the callback never gave up");
}
