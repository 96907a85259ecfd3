//! rustus, a tus server (Rust, actix), driven through the same workloads for a side-by-side
//! figure (`--rustus <binary>`). An upload is a tus creation (`POST`) and one `PATCH` per block,
//! in order, each with `Upload-Checksum: md5 …` (tus's checksum extension), so that rustus checks
//! each block's md5 as fupload checks its `partMd5`; rustus must be built with its `hashers`
//! feature. It does not fsync and computes no whole-file md5: it still does less per byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use actix_web::body::SizedStream;
use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;

use crate::client::{http_client, pieces, Upload, Uploaded, Uploader};
use crate::server::{fresh_dir_and_port, ServerProcess};

/// Starts rustus on a free loopback port, its files and their info in `dir` (created fresh).
/// `max_body_size` must take a whole block.
pub fn start_rustus(bin: &Path, dir: &Path, max_body_size: u64) -> anyhow::Result<ServerProcess> {
    let port = fresh_dir_and_port(dir)?;
    #[expect(clippy::disallowed_methods, reason = "the bench starts rustus to compare with")]
    let mut command = Command::new(bin);
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--max-body-size", &max_body_size.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .arg("--info-dir")
        .arg(dir);
    ServerProcess::spawn(command, port, dir)
}

pub struct TusClient {
    client: awc::Client,
    base: String,
    data_dir: PathBuf,
}

impl TusClient {
    pub fn new(base: &str, data_dir: &Path) -> Self {
        Self { client: http_client(), base: base.to_owned(), data_dir: data_dir.to_path_buf() }
    }

    fn request(&self, method: awc::http::Method, url: &str) -> awc::ClientRequest {
        self.client.request(method, url).insert_header(("Tus-Resumable", "1.0.0"))
    }

    /// Creates an upload and sends a byte with a wrong `Upload-Checksum`: unless rustus refuses it
    /// (417, or tus's 460), it checks no checksum and the comparison would not be fair.
    pub async fn check_it_verifies_checksums(&self) -> anyhow::Result<()> {
        let url = self.create(1).await?;
        let wrong = format!("md5 {}", BASE64.encode([0u8; 16]));
        let patched =
            self.patch(&url, 0, &wrong, futures_util::stream::iter([Ok(Bytes::from_static(b"x"))]), 1).await?;
        match patched.status().as_u16() {
            417 | 460 => Ok(()),
            status => bail!("rustus took a block with a wrong md5 ({status}): build it with --features hashers"),
        }
    }

    /// A tus creation of `length` bytes; the upload's URL.
    async fn create(&self, length: usize) -> anyhow::Result<String> {
        let created = self
            .request(awc::http::Method::POST, &format!("{}/files/", self.base))
            .insert_header(("Upload-Length", length.to_string()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(created.status().as_u16() == 201, "tus create refused: {}", created.status());
        let location = created.headers().get("location").and_then(|l| l.to_str().ok()).context("no Location")?;
        Ok(if location.starts_with("http") { location.to_owned() } else { format!("{}{location}", self.base) })
    }

    async fn patch<S>(
        &self,
        url: &str,
        offset: usize,
        checksum: &str,
        body: S,
        len: usize,
    ) -> anyhow::Result<awc::ClientResponse<impl futures_util::Stream>>
    where
        S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + 'static,
    {
        self.request(awc::http::Method::PATCH, url)
            .insert_header(("Upload-Offset", offset.to_string()))
            .insert_header(("Upload-Checksum", checksum.to_owned()))
            .insert_header(("Content-Type", "application/offset+octet-stream"))
            .send_body(SizedStream::new(len as u64, body))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Uploader for TusClient {
    async fn upload(&self, upload: &Upload) -> anyhow::Result<Uploaded> {
        let url = self.create(upload.data.len()).await?;
        let mut offset = 0;
        for (start, part_md5) in (0..upload.data.len()).step_by(upload.block).zip(&upload.part_md5s) {
            let checksum = format!("md5 {}", BASE64.encode(hex::decode(part_md5)?));
            let end = (start + upload.block).min(upload.data.len()) - 1;
            let body: Vec<Bytes> = pieces(&upload.data, start, end).collect();
            let body = futures_util::stream::iter(body.into_iter().map(Ok::<Bytes, std::io::Error>));
            let patched = self.patch(&url, start, &checksum, body, end - start + 1).await?;
            ensure!(patched.status().as_u16() == 204, "PATCH at {start} refused: {}", patched.status());
            offset = patched.headers().get("upload-offset").and_then(|o| o.to_str().ok()?.parse().ok()).unwrap_or(0);
        }
        let id = url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned();
        let complete = offset == upload.data.len();
        Ok(Uploaded { status: format!("{offset} bytes received"), id, complete })
    }

    /// rustus keeps a file under its id in the data directory.
    async fn stored_path(&self, done: &Uploaded) -> anyhow::Result<PathBuf> {
        let path = self.data_dir.join(&done.id);
        if !path.is_file() {
            bail!("{} not found", path.display());
        }
        Ok(path)
    }
}
