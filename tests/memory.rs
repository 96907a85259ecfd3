//! Memory stays flat while a block far larger than the per-block budget streams in. A test binary
//! of its own, so that no other test shares the process whose memory is measured.

use fupload_testkit::helpers;

use std::time::Duration;

use actix_web::body::SizedStream;
use bytes::Bytes;
use futures_util::stream;
use md5::{Digest, Md5};

use helpers::*;

const PIECE: usize = 256 * 1024;
const BLOCK: usize = 192 << 20;

/// A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (resident at the peak).
fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The `i`-th piece of the block, made on demand so the client holds no more than one.
fn piece(i: usize) -> Bytes {
    Bytes::from((0..PIECE).map(|j| ((i * 31 + j * 7) % 251) as u8).collect::<Vec<u8>>())
}

#[actix_web::test]
async fn a_block_much_larger_than_memory_is_streamed_with_flat_memory() {
    let app = spawn_app_with(|s| s.max_block_size = BLOCK as u64).await;
    let pieces = BLOCK / PIECE;
    let mut md5 = Md5::new();
    (0..pieces).for_each(|i| md5.update(piece(i)));
    let md5 = hex::encode(md5.finalize());
    let reply = app
        .create(&serde_json::json!({"token": TOKEN, "userId": "1", "fileName": "big.bin", "fileSize": BLOCK, "fileMd5": md5}))
        .await;
    let task = task_urls(&reply.json);

    let (content_type, fields) =
        multipart(&[("startByte", b"0"), ("endByte", (BLOCK - 1).to_string().as_bytes()), ("partMd5", md5.as_bytes())]);
    // `multipart` closes the body; open the file part after the text fields instead.
    let head_len = fields.len() - format!("--{BOUNDARY}--\r\n").len();
    let mut head = fields[..head_len].to_vec();
    head.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n").as_bytes(),
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n").into_bytes();
    let length = head.len() + BLOCK + tail.len();
    let body = stream::iter(
        std::iter::once(Bytes::from(head)).chain((0..pieces).map(piece)).chain(std::iter::once(Bytes::from(tail))),
    );
    let body = futures_util::StreamExt::map(body, Ok::<_, std::io::Error>);

    let baseline = memory_kib("VmRSS:");
    let client = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
    let mut response = client
        .post(&task.upload_url)
        .insert_header(("content-type", content_type))
        .send_body(SizedStream::new(length as u64, body))
        .await
        .unwrap();
    let reply: serde_json::Value = response.json().await.unwrap();
    // The process's peak ever is at least this upload's peak, so this over-states the growth.
    let peak = memory_kib("VmHWM:");
    assert_eq!(reply["retCode"], "0", "{reply}");
    assert_eq!(reply["data"]["taskStatus"], "finish", "{reply}");
    let grown_mib = (peak - baseline) / 1024;
    assert!(grown_mib < 32, "memory grew by {grown_mib} MiB for a {} MiB block", BLOCK >> 20);
}
