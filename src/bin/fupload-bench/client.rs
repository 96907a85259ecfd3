//! A minimal client of the upload protocol: create a task, send blocks as multipart with the text
//! fields first, the file part streamed in 256 KiB slices of shared memory (no copies).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::server::{CallbackSink, TOKEN};

const BOUNDARY: &str = "fupload-bench-boundary-0123456789";
const PIECE: usize = 256 * 1024;

/// A server the workloads upload to: fupload, or a tus server beside it for comparison.
pub trait Uploader {
    /// Uploads the whole file, its blocks in order, one after the other.
    async fn upload(&self, upload: &Upload) -> anyhow::Result<Uploaded>;
    /// Where the server stored the finished upload (waiting a little for it to say).
    async fn stored_path(&self, done: &Uploaded) -> anyhow::Result<PathBuf>;
}

pub struct BenchClient {
    client: awc::Client,
    base: String,
    sink: CallbackSink,
    /// The nodes the blocks go to in turn (their base URLs), for several nodes on one database.
    nodes: Vec<String>,
}

pub struct Task {
    pub task_id: i64,
    upload_url: String,
    pub blocks_url: String,
}

/// A file to upload: its bytes, md5 and the md5 of each block, all computed before timing.
pub struct Upload {
    pub name: String,
    pub data: Bytes,
    pub md5: String,
    pub block: usize,
    pub part_md5s: Vec<String>,
}

impl Upload {
    pub fn new(name: String, data: Bytes, block: usize) -> Self {
        let md5 = hex_md5(&data);
        let part_md5s = data.chunks(block).map(hex_md5).collect();
        Self { name, data, md5, block, part_md5s }
    }
}

pub fn hex_md5(data: &[u8]) -> String {
    fupload::hash::Md5::digest(data).as_str().to_owned()
}

/// What one upload came to: the server's id for it, and whether it is complete (fupload:
/// `finish`, its whole-file md5 verified).
pub struct Uploaded {
    pub id: String,
    pub complete: bool,
    pub status: String,
}

/// An awc client for the benchmark's loopback requests.
pub fn http_client() -> awc::Client {
    // Idle connections are dropped before the server's keep-alive (5 s) closes them: reusing
    // one the server has just closed fails the request ("connector has been disconnected").
    let connector = awc::Connector::new().conn_keep_alive(Duration::from_secs(2));
    awc::Client::builder().connector(connector).timeout(Duration::from_secs(120)).finish()
}

/// The file part's bytes `data[start..=end]` as pieces of shared memory (no copies).
pub fn pieces(data: &Bytes, start: usize, end: usize) -> impl Iterator<Item = Bytes> + '_ {
    (start..=end).step_by(PIECE).map(move |at| data.slice(at..(at + PIECE).min(end + 1)))
}

impl BenchClient {
    pub fn new(base: &str, sink: &CallbackSink) -> Self {
        Self { client: http_client(), base: base.to_owned(), sink: sink.clone(), nodes: Vec::new() }
    }

    /// A client that creates tasks at `nodes[0]` and sends each task's blocks to the nodes in
    /// turn, as a round-robin load balancer would.
    pub fn spread_over(nodes: &[String], sink: &CallbackSink) -> Self {
        Self { nodes: nodes.to_vec(), ..Self::new(&nodes[0], sink) }
    }

    async fn json(&self, request: awc::ClientRequest, body: Option<Value>) -> anyhow::Result<Value> {
        let mut response = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let json: Value = response.json().limit(64 << 20).await.context("reading the reply")?;
        Ok(json)
    }

    pub async fn create(&self, upload: &Upload) -> anyhow::Result<Task> {
        let body = json!({"token": TOKEN, "userId": "bench", "storePath": "bench/", "fileName": upload.name,
            "fileSize": upload.data.len(), "fileMd5": upload.md5});
        let reply = self.json(self.client.post(format!("{}/api/upload/new/task", self.base)), Some(body)).await?;
        if reply["retCode"] != "0" {
            bail!("create refused: {reply}");
        }
        let data = &reply["data"];
        Ok(Task {
            task_id: data["taskId"].as_i64().context("taskId")?,
            upload_url: data["uploadUrl"].as_str().context("uploadUrl")?.to_owned(),
            blocks_url: data["blocksUrl"].as_str().context("blocksUrl")?.to_owned(),
        })
    }

    /// Sends `data[start..=end]` (a slice of shared memory) with its md5; returns the reply.
    pub async fn send_block(
        &self,
        task: &Task,
        data: &Bytes,
        start: usize,
        end: usize,
        md5: &str,
    ) -> anyhow::Result<Value> {
        self.send_block_to(&task.upload_url, data, start, end, md5).await
    }

    /// As `send_block`, to `upload_url`.
    async fn send_block_to(
        &self,
        upload_url: &str,
        data: &Bytes,
        start: usize,
        end: usize,
        md5: &str,
    ) -> anyhow::Result<Value> {
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"startByte\"\r\n\r\n{start}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"endByte\"\r\n\r\n{end}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"partMd5\"\r\n\r\n{md5}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        let length = head.len() + (end - start + 1) + tail.len();
        let mut pieces = vec![Bytes::from(head)];
        pieces.extend(self::pieces(data, start, end));
        pieces.push(Bytes::from(tail));
        let stream = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
        let mut response = self
            .client
            .post(upload_url)
            .insert_header(("content-type", format!("multipart/form-data; boundary={BOUNDARY}")))
            .send_body(SizedStream::new(length as u64, stream))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let reply: Value = response.json().limit(64 << 20).await.context("reading the block reply")?;
        if reply["retCode"] != "0" {
            bail!("block {start}-{end} refused: {reply}");
        }
        Ok(reply)
    }

    /// The path task `task_id`'s callback names, once it has come (waiting up to `wait`).
    pub async fn stored_path_within(&self, task_id: &str, wait: Duration) -> anyhow::Result<PathBuf> {
        self.sink.store_path_within(task_id, wait).await
    }

    pub async fn blocks_info(&self, task: &Task) -> anyhow::Result<Value> {
        self.json(self.client.get(&task.blocks_url), None).await
    }

    /// `GET blocksUrl`: the milliseconds until the whole reply is in (parsing it is the client's
    /// business, not timed), and the parsed reply.
    pub async fn timed_blocks_info(&self, task: &Task) -> anyhow::Result<(f64, Value)> {
        let started = Instant::now();
        let mut response = self.client.get(&task.blocks_url).send().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = response.body().limit(64 << 20).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok((ms, serde_json::from_slice(&body)?))
    }
}

impl Uploader for BenchClient {
    /// Creates the task and sends every block in order, one after the other; the last block's
    /// reply waits for the finish.
    async fn upload(&self, upload: &Upload) -> anyhow::Result<Uploaded> {
        let task = self.create(upload).await?;
        let mut status = String::new();
        for (i, md5) in upload.part_md5s.iter().enumerate() {
            let start = i * upload.block;
            let end = (start + upload.block).min(upload.data.len()) - 1;
            let upload_url = match self.nodes.get(i % self.nodes.len().max(1)) {
                Some(node) => task.upload_url.replacen(&self.base, node, 1),
                None => task.upload_url.clone(),
            };
            let reply = self.send_block_to(&upload_url, &upload.data, start, end, md5).await?;
            status = reply["data"]["taskStatus"].as_str().unwrap_or_default().to_owned();
        }
        let waited = Instant::now();
        while status == "verify" && waited.elapsed() < Duration::from_secs(60) {
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            status = self.blocks_info(&task).await?["data"]["status"].as_str().unwrap_or_default().to_owned();
        }
        Ok(Uploaded { id: task.task_id.to_string(), complete: status == "finish", status })
    }

    /// From the task's callback.
    async fn stored_path(&self, done: &Uploaded) -> anyhow::Result<PathBuf> {
        self.stored_path_within(&done.id, Duration::from_secs(5)).await
    }
}
