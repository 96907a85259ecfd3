//! The workloads through tus: against rustus, a tus server (Rust, actix), for a side-by-side
//! figure (`--rustus <binary>`), and against fupload's own tus endpoint (unless `--no-tus`). An
//! upload is a tus creation (`POST`) and one `PATCH` per block, in order, each with
//! `Upload-Checksum: md5 …` (tus's checksum extension), so that the server checks each block's
//! md5 as fupload checks its `partMd5`; rustus must be built with its `hashers` feature. rustus
//! does not fsync and computes no whole-file md5: it still does less per byte. fupload's tus
//! creation carries an upload grant (made before any timing) naming the file's md5, which
//! fupload checks at the finish as it checks the `fileMd5` of its own protocol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use actix_web::body::SizedStream;
use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use fupload::domain::grant::GrantClaims;

use crate::client::{hex_md5, http_client, pieces, Upload, Uploaded, Uploader};
use crate::server::{fresh_dir_and_port, CallbackSink, ServerProcess, TOKEN};

/// Where fupload serves tus.
const FUPLOAD_TUS_PATH: &str = "/api/upload/tus";
/// The upload that checks that the server checks checksums.
const PROBE: &str = "checksum-probe.bin";

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

/// The tus server driven, and what differs between them.
enum TusServer {
    /// rustus keeps a file under its id in its data directory.
    Rustus { data_dir: PathBuf },
    /// fupload: each creation needs an upload grant (by file name); the stored file is where its
    /// callback says.
    Fupload { grants: HashMap<String, String>, sink: CallbackSink },
}

pub struct TusClient {
    client: awc::Client,
    base: String,
    /// Where creations go.
    creation_url: String,
    server: TusServer,
}

impl TusClient {
    pub fn rustus(base: &str, data_dir: &Path) -> Self {
        let server = TusServer::Rustus { data_dir: data_dir.to_path_buf() };
        Self { client: http_client(), base: base.to_owned(), creation_url: format!("{base}/files/"), server }
    }

    /// fupload's tus endpoint, with a grant for each of `uploads` (and for the checksum probe).
    pub fn fupload<'u>(
        base: &str,
        sink: &CallbackSink,
        uploads: impl IntoIterator<Item = &'u Upload>,
    ) -> anyhow::Result<Self> {
        let now_secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
        let grant = |name: &str, data: &[u8]| -> anyhow::Result<(String, String)> {
            let mut claims = GrantClaims::new("bench", name, Some(data.len() as u64), now_secs, 3600)?;
            claims.store_path = "bench/".into();
            claims.file_md5 = Some(hex_md5(data));
            Ok((name.to_owned(), claims.sign(TOKEN)))
        };
        let mut grants = HashMap::from([grant(PROBE, b"x")?]);
        for upload in uploads {
            let (name, signed) = grant(&upload.name, &upload.data)?;
            grants.insert(name, signed);
        }
        let server = TusServer::Fupload { grants, sink: sink.clone() };
        let creation_url = format!("{base}{FUPLOAD_TUS_PATH}");
        Ok(Self { client: http_client(), base: base.to_owned(), creation_url, server })
    }

    fn request(&self, method: awc::http::Method, url: &str) -> awc::ClientRequest {
        self.client.request(method, url).insert_header(("Tus-Resumable", "1.0.0"))
    }

    /// Creates an upload and sends a byte with a wrong `Upload-Checksum`: unless the server
    /// refuses it (rustus: 417; tus: 460), it checks no checksum and the comparison would not be fair.
    pub async fn check_it_verifies_checksums(&self) -> anyhow::Result<()> {
        let url = self.create(PROBE, 1).await?;
        let wrong = format!("md5 {}", BASE64.encode([0u8; 16]));
        let patched =
            self.patch(&url, 0, &wrong, futures_util::stream::iter([Ok(Bytes::from_static(b"x"))]), 1).await?;
        match patched.status().as_u16() {
            417 | 460 => Ok(()),
            status => {
                bail!("the tus server took a block with a wrong md5 ({status}): build rustus with --features hashers")
            }
        }
    }

    /// A tus creation of the upload `name` of `length` bytes; the upload's URL.
    async fn create(&self, name: &str, length: usize) -> anyhow::Result<String> {
        let mut request = self
            .request(awc::http::Method::POST, &self.creation_url)
            .insert_header(("Upload-Length", length.to_string()));
        if let TusServer::Fupload { grants, .. } = &self.server {
            let grant = grants.get(name).with_context(|| format!("no grant made for {name}"))?;
            request = request.insert_header(("Authorization", format!("Bearer {grant}")));
        }
        let created = request.send().await.map_err(|e| anyhow::anyhow!("{e}"))?;
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
    /// The creation, then a PATCH per block; fupload's reply to the last one waits for the
    /// finish, as its protocol's reply to the last block does.
    async fn upload(&self, upload: &Upload) -> anyhow::Result<Uploaded> {
        let url = self.create(&upload.name, upload.data.len()).await?;
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
        // The last path segment, without fupload's `?key=…`: rustus's upload id, fupload's task id.
        let path = url.split('?').next().unwrap_or_default();
        let id = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned();
        let complete = offset == upload.data.len();
        Ok(Uploaded { status: format!("{offset} bytes received"), id, complete })
    }

    async fn stored_path(&self, done: &Uploaded) -> anyhow::Result<PathBuf> {
        match &self.server {
            TusServer::Rustus { data_dir } => {
                let path = data_dir.join(&done.id);
                if !path.is_file() {
                    bail!("{} not found", path.display());
                }
                Ok(path)
            }
            TusServer::Fupload { sink, .. } => sink.store_path_within(&done.id, Duration::from_secs(5)).await,
        }
    }
}
