//! The workloads: W1 one large file, W2 several at once, W3 many small ones; and the gap query
//! over many received ranges.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};

use crate::client::{hex_md5, BenchClient, Upload};
use crate::limits::mb_s;
use crate::server::{CallbackSink, ServerProcess};

pub struct W1 {
    pub task_id: i64,
    pub mb_s: f64,
    pub finish_ms: f64,
}

/// One file, blocks sent in order on one connection, timed from create to `finish`.
pub async fn w1(client: &BenchClient, server: &ServerProcess, upload: &Upload) -> anyhow::Result<W1> {
    let started = Instant::now();
    let done = client.upload(upload).await?;
    let speed = mb_s(upload.data.len(), started);
    ensure!(done.status == "finish", "W1 ended as {}", done.status);
    let finish_ms = server.finish_ms(done.task_id).context("no finish_ms in the server log")?;
    Ok(W1 { task_id: done.task_id, mb_s: speed, finish_ms })
}

/// Several files at once, each in order; timed until the last one finished. Returns MB/s.
pub async fn w2(client: &BenchClient, uploads: &[Upload]) -> anyhow::Result<(f64, Vec<i64>)> {
    let started = Instant::now();
    let done = futures_util::future::try_join_all(uploads.iter().map(|u| client.upload(u))).await?;
    let speed = mb_s(uploads.iter().map(|u| u.data.len()).sum(), started);
    if let Some(bad) = done.iter().find(|d| d.status != "finish") {
        bail!("W2 task {} ended as {}", bad.task_id, bad.status);
    }
    Ok((speed, done.iter().map(|d| d.task_id).collect()))
}

/// Many one-block files, `parallel` at a time. Returns uploads per second, and the task ids in
/// the order of `uploads`.
pub async fn w3(client: &BenchClient, uploads: &[Upload], parallel: usize) -> anyhow::Result<(f64, Vec<i64>)> {
    let started = Instant::now();
    let done: Vec<_> = stream::iter(uploads.iter().map(|u| client.upload(u))).buffered(parallel).try_collect().await?;
    let rate = uploads.len() as f64 / started.elapsed().as_secs_f64();
    if let Some(bad) = done.iter().find(|d| d.status != "finish") {
        bail!("W3 task {} ended as {}", bad.task_id, bad.status);
    }
    Ok((rate, done.iter().map(|d| d.task_id).collect()))
}

/// Checks each stored file's md5 against its upload (outside any timing). The files stay until
/// the benchmark ends: on ext4, creating files soon after deleting many others is several times
/// slower (the allocator skips recently freed inodes), which would measure the benchmark's own
/// clean-up.
pub async fn verify_stored(sink: &CallbackSink, tasks: &[i64], uploads: &[&Upload]) -> anyhow::Result<()> {
    for (task_id, upload) in tasks.iter().zip(uploads) {
        let mut path = sink.store_path(*task_id);
        for _ in 0..200 {
            if path.is_some() {
                break;
            }
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
            path = sink.store_path(*task_id);
        }
        let path = path.with_context(|| format!("no callback for task {task_id}"))?;
        let stored = std::fs::read(&path)?;
        ensure!(hex_md5(&stored) == upload.md5, "{path}: md5 differs from the upload's");
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
