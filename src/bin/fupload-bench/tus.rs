//! rustus, a tus server (Rust, actix), driven through the same workloads for a side-by-side
//! figure (`--rustus <binary>`). An upload is a tus creation (`POST`) and one `PATCH` per block,
//! in order. rustus checks no md5 and does not fsync: it does less per byte than fupload.

use std::path::{Path, PathBuf};
use std::process::Command;

use actix_web::body::SizedStream;
use anyhow::{bail, ensure, Context};
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
}

impl Uploader for TusClient {
    async fn upload(&self, upload: &Upload) -> anyhow::Result<Uploaded> {
        let created = self
            .request(awc::http::Method::POST, &format!("{}/files/", self.base))
            .insert_header(("Upload-Length", upload.data.len().to_string()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(created.status().as_u16() == 201, "tus create refused: {}", created.status());
        let location = created.headers().get("location").and_then(|l| l.to_str().ok()).context("no Location")?;
        let url = if location.starts_with("http") { location.to_owned() } else { format!("{}{location}", self.base) };
        let mut offset = 0;
        for start in (0..upload.data.len()).step_by(upload.block) {
            let end = (start + upload.block).min(upload.data.len()) - 1;
            let body: Vec<Bytes> = pieces(&upload.data, start, end).collect();
            let body = futures_util::stream::iter(body.into_iter().map(Ok::<Bytes, std::io::Error>));
            let patched = self
                .request(awc::http::Method::PATCH, &url)
                .insert_header(("Upload-Offset", start.to_string()))
                .insert_header(("Content-Type", "application/offset+octet-stream"))
                .send_body(SizedStream::new((end - start + 1) as u64, body))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
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
