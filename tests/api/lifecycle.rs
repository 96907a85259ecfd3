use std::time::Duration;

use crate::helpers::*;

#[actix_web::test]
async fn idle_tasks_expire_with_their_temp_data() {
    let app = spawn_app_with(|s| s.task_timeout = 1).await;
    let data = content(1000, 40);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 99).await.expect(200, "0");
    let paused = app.new_task("b.bin", &data).await;
    app.set_state(&paused, "pause").await.expect(200, "0");
    app.wait_for_status(&task, "expire").await;
    app.wait_for_status(&paused, "expire").await;
    let callbacks = app.callbacks.wait_for(2).await;
    assert!(callbacks.iter().all(|c| c.json["retCode"] == "-1" && c.json["status"] == "time out"));
    assert!(app.tmp_files().is_empty());
    app.send_block(&task, &data, 100, 199).await.expect(409, "11");
}

#[actix_web::test]
async fn activity_keeps_a_task_alive() {
    let app = spawn_app_with(|s| s.task_timeout = 2).await;
    let data = content(600, 41);
    let task = app.new_task("a.bin", &data).await;
    for i in 0..5 {
        app.send_block(&task, &data, i * 100, i * 100 + 99).await.expect(200, "0");
        actix_web::rt::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(app.blocks_info(&task).await["status"], "upload");
}

#[actix_web::test]
async fn a_restart_mid_upload_loses_nothing_and_the_upload_finishes() {
    let app = spawn_app().await;
    let data = content(100_000, 42);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 29_999).await.expect(200, "0");
    app.send_block(&task, &data, 60_000, 79_999).await.expect(200, "0");
    let app = app.restart().await;
    // The old URLs name a server that is gone; the task is resumed by creating it again.
    let task = app.new_task("a.bin", &data).await;
    assert_eq!(app.blocks_info(&task).await["receivedSize"], 50_000);
    app.send_missing(&task, &data).await;
    assert_eq!(TestApp::stored_file(&app.callbacks.wait_for(1).await[0]), data);
}

#[actix_web::test]
async fn tasks_left_in_verify_are_verified_at_start_up() {
    let app = spawn_app().await;
    let data = content(1000, 43);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 499).await.expect(200, "0");
    let (settings, dir, callbacks) = app.stop().await;
    // As if the process died between the last block's commit and the finish.
    let tmp = dir.path().join(format!("tmp/task-{}.part", task.task_id));
    let mut file = std::fs::read(&tmp).unwrap();
    file[500..].copy_from_slice(&data[500..]);
    std::fs::write(&tmp, file).unwrap();
    execute_database(&settings.database.url, "UPDATE upload_tasks SET status = 'verify'");
    let _app = restart_on(settings, dir, callbacks.clone()).await;
    let callback = &callbacks.wait_for(1).await[0];
    assert_eq!(callback.json["retCode"], "0");
    assert_eq!(TestApp::stored_file(callback), data);
}

#[actix_web::test]
async fn pending_callbacks_survive_a_restart() {
    let app = spawn_app_with(|s| {
        s.callback.initial_backoff = 60.0;
        s.callback.max_backoff = 60.0;
    })
    .await;
    app.callbacks.answers.lock().unwrap().push(500);
    let task = app.new_task("a.bin", b"abc").await;
    app.send_block(&task, b"abc", 0, 2).await.expect(200, "0");
    for _ in 0..100 {
        if query(&app, "SELECT attempts FROM callback_outbox").await[0][0] == "1" {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let (settings, dir, callbacks) = app.stop().await;
    // Make the retry due now rather than in a minute.
    make_callbacks_due(&settings.database.url);
    let _app = restart_on(settings, dir, callbacks.clone()).await;
    assert_eq!(callbacks.wait_for(1).await[0].json["retCode"], "0");
}

#[actix_web::test]
async fn orphaned_temp_files_are_removed_at_start_up() {
    let app = spawn_app().await;
    let task = app.new_task("a.bin", b"abc").await;
    let (settings, dir, callbacks) = app.stop().await;
    std::fs::write(dir.path().join("tmp/task-999.part"), b"orphan").unwrap();
    std::fs::write(dir.path().join("tmp/spool-00.part"), b"spool").unwrap();
    // A spool file left long ago: on a database shared by many nodes, a young one may be another
    // node's body still arriving, and it stays.
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("tmp/spool-00.part"))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    std::fs::write(dir.path().join("tmp/spool-01.part"), b"spool").unwrap();
    let app = restart_on(settings, dir, callbacks).await;
    let mut expected = vec![format!("task-{}.part", task.task_id)];
    if !on_sqlite() {
        expected.push("spool-01.part".to_owned());
    }
    let mut left = app.tmp_files();
    left.sort_by_key(|name| name.starts_with("spool"));
    assert_eq!(left, expected);
}
