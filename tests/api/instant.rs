//! Instant upload with proof of possession (docs/API.md, section 7): a create with
//! `"instant": true` of a file the same business server holds gets a challenge; only the right
//! answer in time finishes it, by a link; anything else falls back to uploading the bytes.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use fupload::config::BusinessServer;
use md5::Digest;
use serde_json::{json, Value};

use crate::helpers::{content, spawn_app, spawn_app_with, task_body, task_urls, TestApp, TOKEN};

const SIZE: usize = 100_000;

/// Uploads `data` as `hello/first.bin` the usual way and waits for its callback: the file the
/// server then holds.
async fn stored_original(app: &TestApp, data: &[u8]) -> String {
    let task = app.new_task("first.bin", data);
    let task = task.await;
    app.upload_all(&task, data, 32 << 10).await;
    let callbacks = app.callbacks.wait_for(1).await;
    assert_eq!(callbacks[0].json["retCode"], "0");
    assert!(callbacks[0].json.get("instant").is_none(), "a normal finish says nothing of instant");
    callbacks[0].json["storePath"].as_str().unwrap().to_owned()
}

/// A create of `data` as `other/second.bin` by `token`, with `"instant": true`.
async fn instant_create(app: &TestApp, token: &str, data: &[u8]) -> Value {
    let mut body = task_body("second.bin", data);
    body["token"] = json!(token);
    body["storePath"] = json!("other/");
    body["instant"] = json!(true);
    let reply = app.create(&body).await;
    reply.expect(200, "0");
    reply.json["data"].clone()
}

/// The right answer to `challenge` for `data`: md5(nonce || the ranges' bytes, in order).
fn proof(challenge: &Value, data: &[u8]) -> String {
    let mut md5 = md5::Md5::new();
    md5.update(challenge["nonce"].as_str().unwrap().as_bytes());
    for range in challenge["ranges"].as_array().unwrap() {
        let (start, end) = (range["startByte"].as_u64().unwrap() as usize, range["endByte"].as_u64().unwrap() as usize);
        md5.update(&data[start..=end]);
    }
    hex::encode(md5.finalize())
}

async fn answer(app: &TestApp, created: &Value, proof: &str) -> crate::helpers::Reply {
    app.post_json(created["instantUrl"].as_str().unwrap(), &json!({"proof": proof})).await
}

fn instant_from(app: &TestApp, task_id: i64) -> Option<i64> {
    let sql = format!("SELECT instant_from FROM upload_tasks WHERE task_id = {task_id}");
    let rows = crate::helpers::query_database(&app.settings.database.url, &sql);
    rows[0][0].parse().ok()
}

/// The task of `created` takes its bytes as usual and finishes with a normal callback.
async fn uploads_normally(app: &TestApp, created: &Value, data: &[u8], callbacks_before: usize) {
    let task = task_urls(&json!({ "data": created }));
    app.upload_all(&task, data, 32 << 10).await;
    let callbacks = app.callbacks.wait_for(callbacks_before + 1).await;
    let last = &callbacks[callbacks_before].json;
    assert_eq!((last["retCode"].as_str(), last["taskId"].as_i64()), (Some("0"), Some(task.task_id)));
    assert!(last.get("instant").is_none(), "{last}");
    assert_eq!(std::fs::read(last["storePath"].as_str().unwrap()).unwrap(), data);
    assert_eq!(instant_from(app, task.task_id), None);
}

#[actix_web::test]
async fn a_right_proof_finishes_the_task_at_once_by_a_link_and_the_original_stays() {
    let app = spawn_app().await;
    let data = content(SIZE, 3);
    let original = stored_original(&app, &data).await;
    let before = std::fs::metadata(&original).unwrap();

    let created = instant_create(&app, TOKEN, &data).await;
    let challenge = &created["challenge"];
    assert_eq!(challenge["nonce"].as_str().unwrap().len(), 32);
    assert_eq!(challenge["ranges"].as_array().unwrap().len(), 4);
    assert_eq!((challenge["expiresIn"].as_u64(), challenge["answersLeft"].as_u64()), (Some(60), Some(3)));
    assert!(created["instantUrl"].as_str().unwrap().contains("/api/upload/files/instant?taskId="));

    let reply = answer(&app, &created, &proof(challenge, &data)).await;
    reply.expect(200, "0");
    assert_eq!(reply.json["data"]["taskStatus"], "finish");
    let task_id = created["taskId"].as_i64().unwrap();
    let callbacks = app.callbacks.wait_for(2).await;
    let callback = &callbacks[1];
    assert!(callback.signature_is_valid());
    assert_eq!((callback.json["retCode"].as_str(), callback.json["instant"].as_bool()), (Some("0"), Some(true)));
    assert_eq!(callback.json["taskId"], task_id);
    assert_eq!(callback.json["data"], json!({"order": 42, "note": "keep me"}));
    let linked = callback.json["storePath"].as_str().unwrap();
    assert!(linked.ends_with("store/other/second.bin"), "{linked}");
    assert_eq!(std::fs::read(linked).unwrap(), data);
    // The original is where it was, untouched, and the new name is a link to it.
    let after = std::fs::metadata(&original).unwrap();
    assert_eq!((after.ino(), after.len(), after.mtime_nsec()), (before.ino(), before.len(), before.mtime_nsec()));
    assert_eq!(std::fs::metadata(linked).unwrap().ino(), before.ino());
    assert_eq!(instant_from(&app, task_id), Some(1));
    app.wait_for_empty_tmp_dir().await;
    // The task has ended: another answer, or a block, is refused.
    answer(&app, &created, &proof(challenge, &data)).await.expect(409, "11");
}

#[actix_web::test]
async fn a_wrong_proof_is_refused_and_the_upload_then_completes_normally() {
    let app = spawn_app().await;
    let data = content(SIZE, 4);
    stored_original(&app, &data).await;
    let created = instant_create(&app, TOKEN, &data).await;
    let wrong = proof(&created["challenge"], &content(SIZE, 5));
    let reply = answer(&app, &created, &wrong).await;
    reply.expect(400, "7");
    assert!(reply.json["status"].as_str().unwrap().contains("2 answers left"), "{}", reply.json);
    answer(&app, &created, "not hex").await.expect(400, "6");
    uploads_normally(&app, &created, &data, 1).await;
}

#[actix_web::test]
async fn answers_are_limited_per_task_even_across_repeated_creates() {
    let app = spawn_app_with(|settings| settings.instant.max_answers = 2).await;
    let data = content(SIZE, 6);
    stored_original(&app, &data).await;
    let created = instant_create(&app, TOKEN, &data).await;
    let zeros = "0".repeat(32);
    answer(&app, &created, &zeros).await.expect(400, "7");
    // The same create again returns the same task with a new challenge, not more answers.
    let again = instant_create(&app, TOKEN, &data).await;
    assert_eq!(again["taskId"], created["taskId"]);
    assert_eq!(again["challenge"]["answersLeft"], 1);
    answer(&app, &again, &zeros).await.expect(400, "7");
    let used_up = instant_create(&app, TOKEN, &data).await;
    assert!(used_up.get("challenge").is_none(), "{used_up}");
    // Even the right answer is refused now.
    let reply = answer(&app, &again, &proof(&again["challenge"], &data)).await;
    reply.expect(409, "12");
    uploads_normally(&app, &created, &data, 1).await;
}

#[actix_web::test]
async fn a_late_proof_is_refused_and_the_task_takes_the_bytes() {
    let app = spawn_app_with(|settings| settings.instant.challenge_timeout = 1).await;
    let data = content(SIZE, 7);
    stored_original(&app, &data).await;
    let created = instant_create(&app, TOKEN, &data).await;
    assert_eq!(created["challenge"]["expiresIn"], 1);
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let reply = answer(&app, &created, &proof(&created["challenge"], &data)).await;
    reply.expect(409, "12");
    assert!(reply.json["status"].as_str().unwrap().contains("expired"), "{}", reply.json);
    uploads_normally(&app, &created, &data, 1).await;
}

#[actix_web::test]
async fn another_business_servers_file_is_not_offered() {
    let other_token = "cp2-secret";
    let app = spawn_app_with(|settings| {
        let notify_url = settings.business_servers[TOKEN].notify_url.clone();
        settings.business_servers.insert(other_token.into(), BusinessServer { name: "cp2".into(), notify_url });
    })
    .await;
    let data = content(SIZE, 8);
    stored_original(&app, &data).await;
    let created = instant_create(&app, other_token, &data).await;
    assert!(created.get("challenge").is_none() && created.get("instantUrl").is_none(), "{created}");
    // Answering anyway is refused: there is no challenge.
    let url = created["stateUrl"].as_str().unwrap().replace("/files/state", "/files/instant");
    app.post_json(&url, &json!({"proof": "0".repeat(32)})).await.expect(409, "12");
    uploads_normally(&app, &created, &data, 1).await;
}

#[actix_web::test]
async fn a_create_without_instant_gets_no_challenge() {
    let app = spawn_app().await;
    let data = content(SIZE, 9);
    stored_original(&app, &data).await;
    let mut body = task_body("second.bin", &data);
    body["storePath"] = json!("other/");
    let reply = app.create(&body).await;
    reply.expect(200, "0");
    assert!(reply.json["data"].get("challenge").is_none(), "{}", reply.json);
}

#[actix_web::test]
async fn a_changed_original_is_not_offered_and_a_change_after_the_offer_refuses_the_proof() {
    let app = spawn_app().await;
    let data = content(SIZE, 10);
    let original = stored_original(&app, &data).await;

    // Offered, then the original changes (same size, same bytes even: its mtime moves on).
    let created = instant_create(&app, TOKEN, &data).await;
    let challenge = created["challenge"].clone();
    assert!(challenge.is_object(), "{created}");
    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&original, &data).unwrap();
    let reply = answer(&app, &created, &proof(&challenge, &data)).await;
    reply.expect(409, "12");
    // No longer offered at all.
    let again = instant_create(&app, TOKEN, &data).await;
    assert!(again.get("challenge").is_none(), "{again}");
    uploads_normally(&app, &created, &data, 1).await;

    // A file replaced by another (a new inode) is not offered either.
    let third = content(SIZE, 11);
    let app = spawn_app().await;
    let original = stored_original(&app, &third).await;
    std::fs::remove_file(&original).unwrap();
    std::fs::write(&original, &third).unwrap();
    let created = instant_create(&app, TOKEN, &third).await;
    assert!(created.get("challenge").is_none(), "{created}");
}
