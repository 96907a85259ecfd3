//! The workloads: W1 one large file, W2 several at once, W3 many small ones; and the gap query
//! over many received ranges.

use std::time::Instant;

use anyhow::{bail, ensure};
use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};

use crate::client::{hex_md5, BenchClient, Upload, Uploaded, Uploader};
use crate::limits::mb_s;
use crate::server::ServerProcess;

/// One file, blocks sent in order on one connection, timed from create to complete (fupload:
/// `finish`). Returns MB/s.
pub async fn w1(client: &impl Uploader, upload: &Upload) -> anyhow::Result<(f64, Uploaded)> {
    let started = Instant::now();
    let done = client.upload(upload).await?;
    let speed = mb_s(upload.data.len(), started);
    ensure!(done.complete, "W1 ended as {}", done.status);
    Ok((speed, done))
}

/// Several files at once, each in order; timed until the last one is complete. Returns MB/s.
pub async fn w2(client: &impl Uploader, uploads: &[Upload]) -> anyhow::Result<(f64, Vec<Uploaded>)> {
    let started = Instant::now();
    let done = futures_util::future::try_join_all(uploads.iter().map(|u| client.upload(u))).await?;
    let speed = mb_s(uploads.iter().map(|u| u.data.len()).sum(), started);
    if let Some(bad) = done.iter().find(|d| !d.complete) {
        bail!("W2 upload {} ended as {}", bad.id, bad.status);
    }
    Ok((speed, done))
}

/// Many one-block files, `parallel` at a time. Returns uploads per second, and what each upload
/// came to, in the order of `uploads`.
pub async fn w3(client: &impl Uploader, uploads: &[Upload], parallel: usize) -> anyhow::Result<(f64, Vec<Uploaded>)> {
    let started = Instant::now();
    let done: Vec<_> = stream::iter(uploads.iter().map(|u| client.upload(u))).buffered(parallel).try_collect().await?;
    let rate = uploads.len() as f64 / started.elapsed().as_secs_f64();
    if let Some(bad) = done.iter().find(|d| !d.complete) {
        bail!("W3 upload {} ended as {}", bad.id, bad.status);
    }
    Ok((rate, done))
}

/// Checks each stored file's md5 against its upload (outside any timing). The files stay until
/// the benchmark ends: on ext4, creating files soon after deleting many others is several times
/// slower (the allocator skips recently freed inodes), which would measure the benchmark's own
/// clean-up.
pub async fn verify_stored<'u>(
    client: &impl Uploader,
    done: &[Uploaded],
    uploads: impl IntoIterator<Item = &'u Upload>,
) -> anyhow::Result<()> {
    for (done, upload) in done.iter().zip(uploads) {
        let path = client.stored_path(done).await?;
        let stored = std::fs::read(&path)?;
        ensure!(hex_md5(&stored) == upload.md5, "{}: md5 differs from the upload's", path.display());
    }
    Ok(())
}

/// Median milliseconds of `GET blocksUrl` for a task with `ranges` non-adjacent received ranges:
/// the client's round trip, and the server's own time from its log.
pub async fn expect_blocks_ms(
    client: &BenchClient,
    server: &ServerProcess,
    ranges: usize,
) -> anyhow::Result<(f64, f64)> {
    let data = Bytes::from(vec![7u8; ranges * 2]);
    let upload = Upload::new("ranges.bin".into(), data.clone(), data.len());
    let task = client.create(&upload).await?;
    let one_byte_md5 = hex_md5(&[7u8]);
    stream::iter((0..ranges).map(|i| client.send_block(&task, &data, i * 2, i * 2, &one_byte_md5)))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let mut times = Vec::new();
    for _ in 0..21 {
        let (ms, info) = client.timed_blocks_info(&task).await?;
        times.push(ms);
        let gaps = info["data"]["expectBlocks"].as_array().map_or(0, Vec::len);
        ensure!(gaps == ranges, "expected {ranges} gaps, got {gaps}");
    }
    let mut answered = server.answered_ms("/api/upload/files/blocks/info");
    Ok((crate::median(&mut times), crate::median(&mut answered)))
}
