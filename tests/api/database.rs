//! The database in trouble: locked by another process for longer than the server waits.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Another process (an operator's sqlite3 or psql, say) in a write transaction on the server's
/// database.
fn hold_write_lock(app: &TestApp) -> DatabaseLock {
    DatabaseLock::hold(&app.settings.database.url)
}

fn assert_busy(Reply { status, retry_after, json }: &Reply) {
    assert_eq!((*status, json["retCode"].as_str()), (503, Some("20")), "{json}");
    let seconds: u64 = retry_after.as_deref().expect("a Retry-After header").parse().unwrap();
    assert!((1..=10).contains(&seconds), "Retry-After: {seconds}");
    assert!(json["status"].as_str().unwrap().starts_with("the database is busy"), "{json}");
}

#[actix_web::test]
async fn a_database_locked_by_another_process_is_answered_503_with_retry_after() {
    let app = spawn_app().await;
    let data = content(1000, 3);
    let task = app.new_task("a.bin", &data).await;
    let lock = hold_write_lock(&app);
    let (content_type, block_body) =
        multipart(&[("startByte", b"0"), ("endByte", b"999"), ("partMd5", md5_hex(&data).as_bytes()), ("file", &data)]);
    let create_url = format!("{}/api/upload/new/task", app.base);
    let create_body = task_body("b.bin", &data).to_string().into_bytes();
    // Both wait the store's busy timeout for the lock, side by side.
    let (block, create) = tokio::join!(
        app.post_raw(&task.upload_url, &content_type, block_body),
        app.post_raw(&create_url, "application/json", create_body.clone()),
    );
    assert_busy(&block);
    assert_busy(&create);
    assert_eq!(app.blocks_info(&task).await["receivedSize"], 0, "nothing of the block is recorded");
    drop(lock);
    // Once the lock is gone, the same requests go through.
    app.send_block(&task, &data, 0, 999).await.expect(200, "0");
    app.post_raw(&create_url, "application/json", create_body).await.expect(200, "0");
}

fn database_check(json: &Value) -> Value {
    let checks = json["checks"].as_array().unwrap();
    checks.iter().find(|check| check["name"] == "database").unwrap().clone()
}

#[actix_web::test]
async fn readyz_fails_while_database_writes_fail_and_recovers_without_traffic() {
    let app = spawn_app_with(|s| s.readiness.min_free_disk = 0).await;
    let data = content(10, 4);
    let lock = hold_write_lock(&app);
    app.create(&task_body("a.bin", &data)).await.expect(503, "20");
    let reply = app.get("/readyz").await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    let check = database_check(&reply.json);
    assert_eq!(check["ok"], false);
    let problem = check["problem"].as_str().unwrap();
    assert!(problem.contains("locked by another process"), "{problem}");
    assert!(!reply.json.to_string().contains(app.dir.path().to_str().unwrap()), "no paths in the reply");
    drop(lock);
    // No upload comes: readiness's own probe write finds that writes work again.
    let mut reply = app.get("/readyz").await;
    for _ in 0..100 {
        if reply.status == 200 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        reply = app.get("/readyz").await;
    }
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(database_check(&reply.json)["ok"], true);
}
