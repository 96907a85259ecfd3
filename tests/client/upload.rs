//! The client library: parallel blocks, resuming, retries, and the errors a person must act on.

use std::future::Future;

use fupload::client::{upload, ClientError, UploadOptions, WantedState};
use fupload::domain::{Md5Hex, TaskStatus};
use futures_util::future::{join, select, Either};

use crate::proxy::{spawn_behind_proxy, Snapshot};
use crate::support::{assert_stored, client, creator, open, write_file};

const BLOCK: u64 = 256 * 1024;

/// Drives `upload` until `stop` is done, then drops it, as Ctrl-C or a crash would.
async fn interrupt<T: std::fmt::Debug>(upload: impl Future<Output = T>, stop: impl Future<Output = Snapshot>) {
    match select(std::pin::pin!(upload), std::pin::pin!(stop)).await {
        Either::Left((outcome, _)) => panic!("the upload ended before it was interrupted: {outcome:?}"),
        Either::Right(_) => {}
    }
}

#[actix_web::test]
async fn blocks_go_out_in_parallel_and_the_file_is_stored_with_its_md5() {
    let (app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "multi.bin", 5 * BLOCK as usize + 123);
    let client = client();
    let file = open(&path).await;
    let task = client.create_task(&creator(&proxy.url), &file).await.unwrap();
    proxy.hold_after(0);
    let options = UploadOptions { block_size: BLOCK, parallel: 4 };
    let (uploaded, ()) = join(upload(&client, &task, &file, &options), async {
        // Four blocks held at the proxy at once: four requests in flight together.
        proxy.wait_until("4 blocks in flight", |counts| counts.held == 4).await;
        proxy.release_held();
    })
    .await;
    let uploaded = uploaded.unwrap();
    assert_eq!((uploaded.already_received, uploaded.sent_bytes), (0, file.size));
    let counts = proxy.counts();
    assert_eq!((counts.held, counts.forwarded), (4, 6), "never more than 4 in flight; 6 blocks in all");
    assert_stored(&app, &path).await;
}

#[actix_web::test]
async fn an_interrupted_upload_resumes_and_sends_only_the_missing_bytes() {
    let (app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "resume.bin", 16 * BLOCK as usize + 1000);
    let options = UploadOptions { block_size: BLOCK, parallel: 3 };

    // First run: five blocks get through, then the network stops answering and the run is dropped.
    proxy.hold_after(5);
    let first = client();
    let file = open(&path).await;
    let task = first.create_task(&creator(&proxy.url), &file).await.unwrap();
    let stalled = proxy.wait_until("5 blocks through and 3 held", |c| c.forwarded == 5 && c.held == 3);
    interrupt(upload(&first, &task, &file, &options), stalled).await;
    drop(first);
    let received = client().blocks_info(&task).await.unwrap().received_size;
    assert_eq!(received, 5 * BLOCK);

    // Second run, as a new process would: hash, create (finding the same task), upload.
    proxy.forward_new();
    let before = proxy.counts();
    let second = client();
    let file = open(&path).await;
    let again = second.create_task(&creator(&proxy.url), &file).await.unwrap();
    assert_eq!(again, task, "the same unfinished task is found again");
    let uploaded = upload(&second, &again, &file, &options).await.unwrap();
    let missing = file.size - received;
    assert_eq!((uploaded.already_received, uploaded.sent_bytes), (received, missing));
    let after = proxy.counts();
    let requests = (after.forwarded - before.forwarded) as u64;
    let bytes = after.forwarded_bytes - before.forwarded_bytes;
    assert_eq!(requests, missing.div_ceil(BLOCK));
    assert!(
        (missing..missing + 1024 * requests).contains(&bytes),
        "the proxy saw {bytes} body bytes for {missing} missing bytes in {requests} blocks"
    );
    assert_stored(&app, &path).await;
}

#[actix_web::test]
async fn server_errors_are_tried_again_until_the_upload_finishes() {
    let (app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "retry.bin", 4 * BLOCK as usize);
    let client = client();
    let file = open(&path).await;
    let task = client.create_task(&creator(&proxy.url), &file).await.unwrap();
    proxy.fail_next(3);
    let uploaded = upload(&client, &task, &file, &UploadOptions { block_size: BLOCK, parallel: 2 }).await.unwrap();
    let counts = proxy.counts();
    assert_eq!((counts.failed, counts.forwarded), (3, 4));
    assert_eq!(uploaded.sent_bytes, file.size + 3 * BLOCK, "each refused block was sent again");
    assert_stored(&app, &path).await;
}

#[actix_web::test]
async fn the_client_gives_up_after_its_tries() {
    let (_app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "down.bin", 1000);
    let client = client();
    let file = open(&path).await;
    let task = client.create_task(&creator(&proxy.url), &file).await.unwrap();
    proxy.fail_next(1000);
    let error = upload(&client, &task, &file, &UploadOptions::default()).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 4, .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("HTTP 503") && message.contains("injected"), "{message}");
    assert_eq!(proxy.counts().failed, 4);
}

#[actix_web::test]
async fn a_paused_task_stops_the_upload_with_how_to_resume_it() {
    let (app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "paused.bin", 3 * BLOCK as usize);
    let client = client();
    let file = open(&path).await;
    let task = client.create_task(&creator(&proxy.url), &file).await.unwrap();
    assert_eq!(client.change_state(&task, WantedState::Pause).await.unwrap().status, TaskStatus::Pause);
    let options = UploadOptions { block_size: BLOCK, parallel: 2 };
    let error = upload(&client, &task, &file, &options).await.unwrap_err();
    assert!(matches!(error, ClientError::Paused { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("task {} is paused", task.task_id)), "{message}");
    assert!(message.contains(&format!("fupload-client resume --url '{}'", task.state_url)), "{message}");
    assert_eq!(proxy.counts().forwarded, 0, "no block was sent to a paused task");

    let resumed = client.change_state(&task, WantedState::Resume).await.unwrap();
    assert_eq!((resumed.status, resumed.already), (TaskStatus::Upload, false));
    assert!(client.change_state(&task, WantedState::Resume).await.unwrap().already);
    upload(&client, &task, &file, &options).await.unwrap();
    assert_stored(&app, &path).await;
}

#[actix_web::test]
async fn a_whole_file_md5_mismatch_says_so() {
    let (app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "changed.bin", 2 * BLOCK as usize);
    let client = client();
    let mut file = open(&path).await;
    file.md5 = Md5Hex::parse("fileMd5", "0123456789abcdef0123456789abcdef").unwrap();
    let task = client.create_task(&creator(&proxy.url), &file).await.unwrap();
    let error = upload(&client, &task, &file, &UploadOptions { block_size: BLOCK, parallel: 2 }).await.unwrap_err();
    assert!(matches!(error, ClientError::TaskEnded { status: TaskStatus::Fail, .. }), "{error:?}");
    assert!(error.to_string().contains("md5 of the whole file differs"), "{error}");
    assert_eq!(app.callbacks.wait_for(1).await[0].json["retCode"], "-2");
}
