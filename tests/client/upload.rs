//! The client library: parallel blocks, resuming, retries, and the errors a person must act on.

use std::future::Future;

use fupload::client::{upload, ClientError, UploadOptions, WantedState};
use fupload::domain::{Md5Hex, TaskStatus};
use futures_util::future::{join, select, Either};

use crate::proxy::Snapshot;
use crate::support::{assert_stored, client, creator, open, scene};

const BLOCK: u64 = 256 * 1024;

/// Drives `upload` until `stop` is done, then drops it, as Ctrl-C or a crash would.
async fn interrupt<T: std::fmt::Debug>(upload: impl Future<Output = T>, stop: impl Future<Output = Snapshot>) {
    if let Either::Left((outcome, _)) = select(std::pin::pin!(upload), std::pin::pin!(stop)).await {
        panic!("the upload ended before it was interrupted: {outcome:?}");
    }
}

#[actix_web::test]
async fn blocks_go_out_in_parallel_and_the_file_is_stored_with_its_md5() {
    let s = scene("multi.bin", 5 * BLOCK as usize + 123).await;
    s.proxy.hold_after(0);
    let options = UploadOptions { block_size: BLOCK, parallel: 4 };
    let (uploaded, ()) = join(upload(&s.client, &s.task, &s.file, &options), async {
        // Four blocks held at the proxy at once: four requests in flight together.
        s.proxy.wait_until("4 blocks in flight", |counts| counts.held == 4).await;
        s.proxy.release_held();
    })
    .await;
    let uploaded = uploaded.unwrap();
    assert_eq!((uploaded.already_received, uploaded.sent_bytes), (0, s.file.size));
    let counts = s.proxy.counts();
    assert_eq!((counts.held, counts.forwarded), (4, 6), "never more than 4 in flight; 6 blocks in all");
    assert_stored(&s.app, &s.path).await;
}

#[actix_web::test]
async fn an_interrupted_upload_resumes_and_sends_only_the_missing_bytes() {
    let s = scene("resume.bin", 16 * BLOCK as usize + 1000).await;
    let options = UploadOptions { block_size: BLOCK, parallel: 3 };

    // First run: five blocks get through, then the network stops answering and the run is dropped.
    s.proxy.hold_after(5);
    let stalled = s.proxy.wait_until("5 blocks through and 3 held", |c| c.forwarded == 5 && c.held == 3);
    interrupt(upload(&s.client, &s.task, &s.file, &options), stalled).await;
    let received = s.client.blocks_info(&s.task).await.unwrap().received_size;
    assert_eq!(received, 5 * BLOCK);

    // Second run, as a new process would: hash, create (finding the same task), upload.
    s.proxy.forward_new();
    let before = s.proxy.counts();
    let second = client();
    let file = open(&s.path).await;
    let task = second.create_task(&creator(&s.proxy.url), &file).await.unwrap();
    assert_eq!(task, s.task, "the same unfinished task is found again");
    let uploaded = upload(&second, &task, &file, &options).await.unwrap();
    let missing = file.size - received;
    assert_eq!((uploaded.already_received, uploaded.sent_bytes), (received, missing));
    let after = s.proxy.counts();
    let requests = (after.forwarded - before.forwarded) as u64;
    let bytes = after.forwarded_bytes - before.forwarded_bytes;
    assert_eq!(requests, missing.div_ceil(BLOCK));
    assert!(
        (missing..missing + 1024 * requests).contains(&bytes),
        "the proxy saw {bytes} body bytes for {missing} missing bytes in {requests} blocks"
    );
    assert_stored(&s.app, &s.path).await;
}

#[actix_web::test]
async fn server_errors_are_tried_again_until_the_upload_finishes() {
    let s = scene("retry.bin", 4 * BLOCK as usize).await;
    s.proxy.fail_next(3);
    let uploaded =
        upload(&s.client, &s.task, &s.file, &UploadOptions { block_size: BLOCK, parallel: 2 }).await.unwrap();
    let counts = s.proxy.counts();
    assert_eq!((counts.failed, counts.forwarded), (3, 4));
    assert_eq!(uploaded.sent_bytes, s.file.size + 3 * BLOCK, "each refused block was sent again");
    assert_stored(&s.app, &s.path).await;
}

#[actix_web::test]
async fn bytes_the_server_lost_are_sent_again() {
    // Half the file is on the server, then its tmpDir is removed (an admin, systemd-tmpfiles):
    // the run that sends the other half is told the first half is missing again, and sends it
    // too. The server then holds as many bytes as before that run, but other ones.
    let s = scene("lost.bin", 8 * BLOCK as usize).await;
    let options = UploadOptions { block_size: BLOCK, parallel: 2 };
    s.proxy.hold_after(4);
    let stalled = s.proxy.wait_until("4 blocks through and 2 held", |c| c.forwarded == 4 && c.held == 2);
    interrupt(upload(&s.client, &s.task, &s.file, &options), stalled).await;
    std::fs::remove_dir_all(&s.app.settings.tmp_dir).unwrap();
    s.proxy.forward_new();
    let uploaded = upload(&s.client, &s.task, &s.file, &options).await.unwrap();
    assert_eq!(uploaded.already_received, 4 * BLOCK);
    assert!(uploaded.sent_bytes >= s.file.size, "the lost half was sent again: {uploaded:?}");
    assert_stored(&s.app, &s.path).await;
}

#[actix_web::test]
async fn the_client_gives_up_after_its_tries() {
    let s = scene("down.bin", 1000).await;
    s.proxy.fail_next(1000);
    let error = upload(&s.client, &s.task, &s.file, &UploadOptions::default()).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 4, .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("HTTP 503") && message.contains("injected"), "{message}");
    assert_eq!(s.proxy.counts().failed, 4);
}

#[actix_web::test]
async fn a_paused_task_stops_the_upload_with_how_to_resume_it() {
    let s = scene("paused.bin", 3 * BLOCK as usize).await;
    let paused = s.client.change_state(&s.task, WantedState::Pause).await.unwrap();
    assert_eq!(paused.status, TaskStatus::Pause);
    let options = UploadOptions { block_size: BLOCK, parallel: 2 };
    let error = upload(&s.client, &s.task, &s.file, &options).await.unwrap_err();
    assert!(matches!(error, ClientError::Paused { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("task {} is paused", s.task.task_id)), "{message}");
    assert!(message.contains(&format!("fupload-client resume --url '{}'", s.task.state_url)), "{message}");
    assert_eq!(s.proxy.counts().forwarded, 0, "no block was sent to a paused task");

    let resumed = s.client.change_state(&s.task, WantedState::Resume).await.unwrap();
    assert_eq!((resumed.status, resumed.already), (TaskStatus::Upload, false));
    assert!(s.client.change_state(&s.task, WantedState::Resume).await.unwrap().already);
    upload(&s.client, &s.task, &s.file, &options).await.unwrap();
    assert_stored(&s.app, &s.path).await;
}

#[actix_web::test]
async fn a_whole_file_md5_mismatch_says_so() {
    let mut s = scene("changed.bin", 2 * BLOCK as usize).await;
    s.file.md5 = Md5Hex::parse("fileMd5", "0123456789abcdef0123456789abcdef").unwrap();
    let task = s.client.create_task(&creator(&s.proxy.url), &s.file).await.unwrap();
    let error = upload(&s.client, &task, &s.file, &UploadOptions { block_size: BLOCK, parallel: 2 }).await.unwrap_err();
    assert!(matches!(error, ClientError::TaskEnded { status: TaskStatus::Fail, .. }), "{error:?}");
    assert!(error.to_string().contains("md5 of the whole file differs"), "{error}");
    assert_eq!(s.app.callbacks.wait_for(1).await[0].json["retCode"], "-2");
}

#[actix_web::test]
async fn a_block_held_by_a_stalled_body_is_sent_again_once_the_stall_is_given_up() {
    // Another client's block for the same bytes sent its head and half its body, then stopped.
    // The server answers "held by a block in flight, send again in 1 s"; the client waits and
    // sends it again until the stalled body has been given up (clientBodyTimeout 1 s).
    use fupload::client::TaskCreator;
    use fupload_testkit::helpers::{multipart, spawn_app_with, TOKEN};
    use fupload_testkit::raw_http::send_partly;

    let app = spawn_app_with(|s| s.server.client_body_timeout = 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = crate::support::write_file(dir.path(), "stall.bin", 3 * BLOCK as usize);
    let file = open(&path).await;
    let creator = TaskCreator::Fupload {
        server: app.base.clone(),
        token: TOKEN.into(),
        user_id: crate::support::USER.into(),
        store_path: "up/".into(),
    };
    let c = client();
    let task = c.create_task(&creator, &file).await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let first = &bytes[..BLOCK as usize];
    let end = (BLOCK - 1).to_string();
    let md5 = crate::helpers::md5_hex(first);
    let (content_type, body) =
        multipart(&[("startByte", b"0"), ("endByte", end.as_bytes()), ("partMd5", md5.as_bytes()), ("file", first)]);
    let stalled = send_partly(&task.upload_url, &content_type, &body, body.len() / 2);
    actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    let options = UploadOptions { block_size: BLOCK, parallel: 2 };
    let uploaded = upload(&c, &task, &file, &options).await.expect("the upload completes after the stall");
    assert!(uploaded.sent_bytes > file.size, "the held block was sent again: {}", uploaded.sent_bytes);
    assert_stored(&app, &path).await;
    drop(stalled);
}
