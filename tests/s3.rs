//! `storage.kind: s3` against an S3 server: blocks out of order become staged objects and parts,
//! the finish completes the upload and checks the object's md5, a cancel aborts the upload, and a
//! restart on an emptied tmpDir (another node, in effect) finishes from what is in S3.
//!
//! Runs when `FUPLOAD_TEST_S3_ENDPOINT` names an S3 server that takes path-style requests and
//! creates buckets (moto: `scripts/s3-tests.sh` starts one); skipped with a notice otherwise.

use fupload_testkit::helpers;

use std::io::Write;
use std::time::Duration;

use fupload::config::{Settings, StorageKind};
use helpers::*;

const MIB: usize = 1 << 20;

/// The S3 server, or `None` (and a notice) when the tests are not to run.
fn endpoint() -> Option<String> {
    let endpoint = std::env::var("FUPLOAD_TEST_S3_ENDPOINT").ok().filter(|e| !e.is_empty());
    if endpoint.is_none() {
        // Past the test harness's capture, so that a plain `cargo test` shows it.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: set FUPLOAD_TEST_S3_ENDPOINT to an S3 server (scripts/s3-tests.sh starts moto)"
        );
    }
    endpoint
}

/// A bucket of its own for each test, made on the server.
struct Bucket {
    endpoint: String,
    name: String,
    client: awc::Client,
}

impl Bucket {
    async fn create(endpoint: String, name: &str) -> Self {
        let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
        let bucket = Bucket { endpoint, name: name.to_owned(), client };
        let response = bucket.client.put(bucket.url("")).send().await.unwrap();
        assert!(response.status().is_success(), "creating bucket {name}: {}", response.status());
        bucket
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint, self.name)
    }

    fn storage(&self, settings: &mut Settings) {
        settings.storage.kind = StorageKind::S3;
        settings.storage.s3.endpoint = self.endpoint.clone();
        settings.storage.s3.bucket = self.name.clone();
        settings.storage.s3.prefix = "uploads".into();
        settings.storage.s3.path_style = true;
    }

    async fn get(&self, key: &str) -> (u16, Vec<u8>) {
        let mut response = self.client.get(self.url(key)).send().await.unwrap();
        (response.status().as_u16(), response.body().limit(64 << 20).await.unwrap().to_vec())
    }

    /// A listing's body: `?uploads` (the multipart uploads in progress) or `?list-type=2&prefix=…`.
    async fn list(&self, query: &str) -> String {
        let mut response = self.client.get(format!("{}?{query}", self.url(""))).send().await.unwrap();
        assert!(response.status().is_success(), "{query}: {}", response.status());
        String::from_utf8(response.body().limit(16 << 20).await.unwrap().to_vec()).unwrap()
    }

    /// Keys under the tasks' staging prefix, and multipart uploads in progress.
    async fn leftovers(&self) -> (usize, usize) {
        let objects = self.list("list-type=2&prefix=uploads/.fupload/").await.matches("<Key>").count();
        let uploads = self.list("uploads").await.matches("<UploadId>").count();
        (objects, uploads)
    }

    /// Waits for the clean-up that follows a task's ending (it runs after the task is recorded as
    /// ended); panics after 10 s.
    async fn wait_until_clean(&self) {
        for _ in 0..200 {
            if self.leftovers().await == (0, 0) {
                return;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("left in S3 (objects, uploads): {:?}", self.leftovers().await);
    }
}

/// Blocks of `data` in an order that is not the file's: sizes that cross part boundaries, and the
/// small last part first.
fn shuffled_blocks(len: usize) -> Vec<(usize, usize)> {
    let cuts = [0, 3 * MIB + 17, 5 * MIB, 7 * MIB + 5, 10 * MIB, 12 * MIB + 3, len];
    let mut blocks: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1] - 1)).collect();
    blocks.reverse();
    blocks.swap(1, 3);
    blocks
}

#[actix_web::test]
async fn blocks_out_of_order_become_an_object_with_the_right_md5() {
    let Some(endpoint) = endpoint() else { return };
    let bucket = Bucket::create(endpoint, "fupload-order").await;
    let app = spawn_app_with(|s| bucket.storage(s)).await;
    // Three parts of 5 MiB and a small last one.
    let data = content(15 * MIB + 123, 7);
    let task = app.new_task("big.bin", &data).await;
    let blocks = shuffled_blocks(data.len());
    for (i, (start, end)) in blocks.iter().enumerate() {
        let reply = app.send_block(&task, &data, *start, *end).await;
        reply.expect(200, "0");
        if i + 1 < blocks.len() {
            assert_eq!(reply.json["data"]["taskStatus"], "upload", "{}", reply.json);
        }
    }
    app.wait_for_status(&task, "finish").await;
    let callback = app.callbacks.wait_for(1).await.remove(0);
    assert_eq!(callback.json["storePath"], "s3://fupload-order/uploads/hello/big.bin", "{}", callback.json);
    let (status, stored) = bucket.get("uploads/hello/big.bin").await;
    assert_eq!(status, 200);
    assert_eq!(md5_hex(&stored), md5_hex(&data));
    // The staging objects, the upload-id record and the upload itself are gone.
    bucket.wait_until_clean().await;
}

#[actix_web::test]
async fn a_cancel_aborts_the_multipart_upload() {
    let Some(endpoint) = endpoint() else { return };
    let bucket = Bucket::create(endpoint, "fupload-cancel").await;
    let app = spawn_app_with(|s| bucket.storage(s)).await;
    let data = content(11 * MIB, 3);
    let task = app.new_task("gone.bin", &data).await;
    // A whole first part (so the upload exists) and some staged bytes of the second.
    app.send_block(&task, &data, 0, 6 * MIB).await.expect(200, "0");
    let (objects, uploads) = bucket.leftovers().await;
    assert!(objects >= 1 && uploads == 1, "before the cancel: {objects} objects, {uploads} uploads");
    app.set_state(&task, "cancel").await.expect(200, "0");
    assert_eq!(bucket.leftovers().await, (0, 0));
    assert_eq!(bucket.get("uploads/hello/gone.bin").await.0, 404);
}

#[actix_web::test]
async fn a_restart_on_an_empty_tmp_dir_finishes_from_what_is_in_s3() {
    let Some(endpoint) = endpoint() else { return };
    let bucket = Bucket::create(endpoint, "fupload-restart").await;
    let app = spawn_app_with(|s| bucket.storage(s)).await;
    let data = content(12 * MIB + 1, 9);
    let task = app.new_task("resumed.bin", &data).await;
    // Part 1 whole (uploaded), part 2 partly (staged only).
    app.send_block(&task, &data, 0, 5 * MIB - 1).await.expect(200, "0");
    app.send_block(&task, &data, 5 * MIB, 8 * MIB).await.expect(200, "0");
    // Part 1 went up and its staging object was deleted: left are part 2's and the upload-id record.
    assert_eq!(bucket.leftovers().await, (2, 1));
    let (settings, dir, callbacks) = app.stop().await;
    // The node that took those blocks is gone with its disk.
    std::fs::remove_dir_all(&settings.tmp_dir).unwrap();
    std::fs::create_dir_all(&settings.tmp_dir).unwrap();
    let app = restart_on(settings, dir, callbacks).await;
    // The old URLs name a server that is gone; the task is resumed by creating it again.
    let task = app.new_task("resumed.bin", &data).await;
    app.send_missing(&task, &data).await;
    app.wait_for_status(&task, "finish").await;
    let (status, stored) = bucket.get("uploads/hello/resumed.bin").await;
    assert_eq!(status, 200);
    assert_eq!(md5_hex(&stored), md5_hex(&data));
    bucket.wait_until_clean().await;
}

#[actix_web::test]
async fn a_file_whose_md5_is_not_the_tasks_fails_and_leaves_no_object() {
    let Some(endpoint) = endpoint() else { return };
    let bucket = Bucket::create(endpoint, "fupload-mismatch").await;
    let app = spawn_app_with(|s| bucket.storage(s)).await;
    let data = content(6 * MIB, 5);
    let mut body = task_body("wrong.bin", &data);
    body["fileMd5"] = md5_hex(b"other bytes").into();
    let reply = app.create(&body).await;
    reply.expect(200, "0");
    let task = task_urls(&reply.json);
    app.send_block(&task, &data, 0, data.len() - 1).await;
    app.wait_for_status(&task, "fail").await;
    assert_eq!(bucket.get("uploads/hello/wrong.bin").await.0, 404);
    bucket.wait_until_clean().await;
}
