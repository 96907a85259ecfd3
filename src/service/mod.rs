//! The use cases: create a task, receive a block, change state, list expected blocks, finish,
//! expire, recover after a restart. No HTTP here: the handlers call these.

mod block;
mod blocks_info;
mod business;
mod claims;
mod create;
mod expire;
mod finish;
mod incoming;
mod instant;
mod lease;
mod object;
mod recover;
mod state;
mod temp_file;
mod tus;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Settings;
use crate::domain::{ByteRange, FieldError, Md5Hex, TaskStatus, UploadKey};
use crate::prefix_hash::PrefixHashers;
use crate::storage::{S3Error, Storage};
use crate::store::{StatusChange, Store, StoreError, Task, Trouble};

pub use block::BlockAccepted;
pub use blocks_info::BlocksInfo;
pub use business::Authorized;
pub use business::BusinessServers;
pub use create::{CreateTask, CreatedTask};
pub use incoming::IncomingBlock;
pub use instant::{proof, OfferedChallenge};
pub use state::RequestedState;
pub use tus::{Append, Concat, Creation, UploadLength, UploadState, MAX_PARTIALS};

/// Why a request was refused. `http::error` maps each to its (HTTP status, retCode, text).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("not authorized")]
    Unauthorized,
    /// No such task, or a wrong or missing key: the two are told apart nowhere.
    #[error("cannot find task {0}")]
    TaskNotFound(i64),
    #[error("disk error")]
    Disk(#[source] io::Error),
    /// The task's temp file was lost or cut short under the server (tmpDir cleaned, say): its
    /// received bytes were set back to what is on disk, and the block must be sent again.
    #[error("the task's temp file was lost")]
    TempFileLost,
    #[error("task is paused")]
    Paused,
    #[error("task is already {0}")]
    SameState(TaskStatus),
    #[error("{0}")]
    InvalidField(FieldError),
    #[error("part md5 mismatch for bytes {range}: sent {sent}, computed {computed}")]
    PartMd5Mismatch { range: ByteRange, sent: Md5Hex, computed: Md5Hex },
    /// A wrong answer to an instant upload's challenge; the task takes blocks as before.
    #[error("the proof is not the md5 of the nonce and the challenge's byte ranges: {answers_left} answers left, else upload the bytes")]
    ProofMismatch { answers_left: u64 },
    /// No challenge to answer, or not any more (expired, answers used up, the file changed):
    /// the task takes blocks as before.
    #[error("instant upload refused: {0}")]
    InstantRefused(String),
    #[error("{0}")]
    BadRange(RangeProblem),
    /// storeDir could not be made, read or written.
    #[error("storeDir error")]
    StoreDir(#[source] io::Error),
    #[error("storePath {:?} not allowed", .0.requested)]
    StorePathNotAllowed(StorePathRefusal),
    #[error("{0}")]
    TooLarge(String),
    #[error("task is {0} and no longer accepts this")]
    TaskEnded(TaskStatus),
    /// The database's volume is full: nothing of the request was recorded.
    #[error("the database's disk is full")]
    DatabaseFull(#[source] StoreError),
    /// Another process held the database's lock for longer than the store waits.
    #[error("the database is busy")]
    DatabaseBusy(#[source] StoreError),
    /// A tus or IETF creation whose upload grant is missing, not valid, or used before.
    #[error("upload grant {0}")]
    GrantRefused(String),
    /// A tus or IETF append at another offset than the upload's.
    #[error("offset {sent} is not the upload's offset {expected}")]
    OffsetMismatch { expected: u64, sent: u64 },
    /// An append that would go past the upload's length.
    #[error("bytes up to {end} are past the upload's length of {length} bytes")]
    PastLength { length: u64, end: u64 },
    /// A length sent for an upload whose length is known and is another (an IETF client's
    /// `Upload-Length`, or the end of a request that completes the upload).
    #[error("length {sent} is not the upload's length of {length} bytes")]
    LengthChanged { length: u64, sent: u64 },
    /// The lease on the bytes of a block ran out while it arrived (this node could not reach the
    /// shared database for that long): another node may have claimed them, so it is not recorded.
    #[error("the block's claim on its bytes ran out before it was recorded")]
    ClaimLost,
    /// Another append to the same upload is still being received.
    #[error("another request is appending to this upload")]
    AppendInFlight,
    /// An append whose checksum did not match its body; nothing was recorded.
    #[error("the {algorithm} checksum of bytes {offset}-{end} does not match")]
    ChecksumMismatch { algorithm: crate::domain::checksum::ChecksumAlgorithm, offset: u64, end: u64 },
    /// An append to the final upload of a concatenation, which takes none.
    #[error("the final upload of a concatenation takes no appends")]
    FinalUpload,
    /// An S3 request failed (`storage.kind: s3`); `S3Error::Throttled` passes.
    #[error("storage error")]
    Storage(#[source] S3Error),
    #[error("unknown system error")]
    Internal(#[from] anyhow::Error),
}

/// A `storePath` that leaves `storeDir`, with what the reply tells about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePathRefusal {
    /// `storePath` as the create sent it.
    pub requested: String,
    /// Where it leads: `None` when its `..` climb above the root.
    pub resolved: Option<PathBuf>,
    pub store_dir: PathBuf,
    /// It lies inside `storeDir` as spelt, but a symlink on the way leads out.
    pub through_symlink: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeProblem {
    #[error("part index error: startByte {start} > endByte {end}")]
    StartAfterEnd { start: u64, end: u64 },
    #[error("part index error: range {start}-{end} is outside the file of {size} bytes")]
    OutsideFile { start: u64, end: u64, size: u64 },
    #[error("part index error: {0}")]
    BodyLength(String),
}

impl From<StoreError> for UploadError {
    fn from(e: StoreError) -> Self {
        match e.trouble() {
            Some(Trouble::Full) => UploadError::DatabaseFull(e),
            Some(Trouble::Busy) => UploadError::DatabaseBusy(e),
            Some(Trouble::Unwritable) | None => UploadError::Internal(anyhow::Error::new(e).context("database")),
        }
    }
}

impl From<FieldError> for UploadError {
    fn from(e: FieldError) -> Self {
        UploadError::InvalidField(e)
    }
}

impl UploadError {
    /// The refusal for a task found in `status` when it had to be elsewhere.
    fn for_status(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Pause => UploadError::Paused,
            TaskStatus::Upload => UploadError::Internal(anyhow::anyhow!("task changed state while in use")),
            ended => UploadError::TaskEnded(ended),
        }
    }

    /// The refusal for a guarded change the store did not make: `None` when it was made.
    pub(super) fn for_change(task_id: i64, change: StatusChange) -> Option<Self> {
        match change {
            StatusChange::Made => None,
            StatusChange::Refused(status) => Some(UploadError::for_status(status)),
            StatusChange::NoSuchTask => Some(UploadError::TaskNotFound(task_id)),
        }
    }

    fn disk(context: &str, e: io::Error) -> Self {
        UploadError::Disk(io::Error::new(e.kind(), format!("{context}: {e}")))
    }
}

/// How a request names a task: the `taskId` and `key` of its URL.
#[derive(Debug, Clone)]
pub struct TaskRef {
    pub task_id: i64,
    pub key: Option<String>,
}

/// The upload service. Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct Uploads {
    store: Store,
    settings: Arc<Settings>,
    business_servers: Arc<BusinessServers>,
    claims: claims::BlockClaims,
    /// Whole-file md5 of each task's received prefix, advanced as blocks arrive.
    hashers: Arc<PrefixHashers>,
    /// Woken when a callback is queued, so the outbox worker sends it at once.
    outbox_wakeup: Arc<Notify>,
    finishing: finish::Finishing,
    /// Who holds a finish in the shared database: this process, by a random id.
    finish_holder: Arc<str>,
    /// Where finished files go: storeDir, or an S3 bucket.
    storage: Storage,
}

impl Uploads {
    /// `settings` must have absolute `tmpDir` and `storeDir` (see `startup`). Fails when the
    /// background hashing threads (or, for S3 storage, its connection thread) cannot be started.
    pub fn new(store: Store, settings: Arc<Settings>) -> std::io::Result<Self> {
        let hashers = PrefixHashers::new(std::thread::available_parallelism().map_or(2, |n| n.get()))?;
        let storage = Storage::from_settings(&settings)?;
        Ok(Self {
            business_servers: Arc::new(BusinessServers::new(&settings.business_servers)),
            claims: claims::BlockClaims::for_store(&store),
            store,
            settings,
            hashers: Arc::new(hashers),
            outbox_wakeup: Arc::new(Notify::new()),
            finishing: finish::Finishing::default(),
            finish_holder: crate::domain::UploadKey::generate()?.as_str().into(),
            storage,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn outbox_wakeup(&self) -> Arc<Notify> {
        self.outbox_wakeup.clone()
    }

    /// The task, if it exists and the request carries its key. A wrong or missing key is
    /// answered exactly like an unknown task.
    async fn authorized_task(&self, task_ref: &TaskRef) -> Result<Task, UploadError> {
        let not_found = UploadError::TaskNotFound(task_ref.task_id);
        let task = self.store.task(task_ref.task_id).await?.ok_or(not_found)?;
        let key = UploadKey::from_stored(task.spec.upload_key.clone());
        let key_ok = match &task_ref.key {
            Some(candidate) => key.matches(candidate),
            None => !self.settings.require_upload_key,
        };
        if key_ok {
            Ok(task)
        } else {
            Err(UploadError::TaskNotFound(task_ref.task_id))
        }
    }
}

/// Runs blocking file work on the blocking pool, mapping a lost thread to an internal error.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| UploadError::Internal(anyhow::anyhow!("blocking task failed: {e}")))
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::HashMap;

    use super::block::BlockPlan;
    use super::*;
    use crate::config::BusinessServer;

    pub const TOKEN: &str = "cp1-secret";

    pub struct TestUploads {
        pub uploads: Uploads,
        pub dir: tempfile::TempDir,
    }

    impl TestUploads {
        /// Creates a task for `data`.
        pub async fn create(&self, data: &[u8]) -> TaskRef {
            use md5::Digest;
            let body = format!(
                r#"{{"token":"{TOKEN}","userId":"1","fileName":"f.bin","fileSize":{},"fileMd5":"{}"}}"#,
                data.len(),
                hex::encode(md5::Md5::digest(data))
            );
            let created = crate::http::create_from_body(&self.uploads, body.as_bytes()).await.unwrap();
            TaskRef { task_id: created.task_id, key: Some(created.upload_key) }
        }

        /// Sends `data[start..=end]` as one block, in 64 KiB chunks, with its md5.
        pub async fn send(
            &self,
            task: &TaskRef,
            data: &[u8],
            start: usize,
            end: usize,
        ) -> Result<BlockAccepted, UploadError> {
            let target = self.uploads.check_block_target(task).await?;
            let plan = self.uploads.plan_block(&target, start as u64, end as u64).await?;
            let part = &data[start..=end];
            self.stream_and_commit(plan, part, part).await
        }

        /// Streams `body` for `plan` in 64 KiB chunks and commits it, `partMd5` being the md5 of
        /// `md5_of` (the body itself, or the bytes a corrupted body should have held).
        pub async fn stream_and_commit(
            &self,
            plan: BlockPlan,
            body: &[u8],
            md5_of: &[u8],
        ) -> Result<BlockAccepted, UploadError> {
            use md5::Digest;
            let body = bytes::Bytes::copy_from_slice(body);
            let chunks: Vec<Result<bytes::Bytes, String>> =
                (0..body.len()).step_by(65536).map(|i| Ok(body.slice(i..(i + 65536).min(body.len())))).collect();
            let md5 = crate::domain::Md5Hex::of_digest(&md5::Md5::digest(md5_of));
            let received = self.uploads.receive_block(plan, futures_util::stream::iter(chunks)).await?;
            self.uploads.commit_block(received, Some(md5)).await
        }
    }

    /// The same service started again on its database and directories (the store must be closed),
    /// after its recovery.
    pub async fn restart(t: TestUploads) -> TestUploads {
        let settings = t.uploads.settings.clone();
        let store = Store::open(&settings.database.url, settings.durability, 2).await.unwrap();
        let uploads = Uploads::new(store, settings).unwrap();
        uploads.recover().await.unwrap();
        TestUploads { uploads, dir: t.dir }
    }

    /// As `test_uploads`, on a database of its own on the PostgreSQL test server, which goes with
    /// the `TempDatabase`; `None` (and a notice) without one.
    pub async fn test_uploads_on_postgres() -> Option<(TestUploads, crate::store::TempDatabase)> {
        let Some(server) = crate::store::test_support::postgres_server_url() else {
            eprintln!("FUPLOAD_TEST_POSTGRES_URL is not set: this test runs on PostgreSQL only");
            return None;
        };
        let database = crate::store::TempDatabase::create(&server).await.unwrap();
        let url = database.url.clone();
        Some((test_uploads(|settings| settings.database.url = url).await, database))
    }

    /// An upload service on a temp database and temp dirs, with one business server.
    pub async fn test_uploads(tweak: impl FnOnce(&mut Settings)) -> TestUploads {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut settings = Settings::from_yaml("{}", Vec::new()).unwrap();
        settings.tmp_dir = root.join("tmp");
        settings.store_dir = root.join("store");
        settings.database.url = format!("sqlite://{}", root.join("db.sqlite").display());
        settings.business_servers = HashMap::from([(
            TOKEN.to_owned(),
            BusinessServer { name: "cp1".into(), notify_url: "http://127.0.0.1:9/cb".into() },
        )]);
        tweak(&mut settings);
        std::fs::create_dir_all(&settings.tmp_dir).unwrap();
        std::fs::create_dir_all(&settings.store_dir).unwrap();
        let store = Store::open(&settings.database.url, settings.durability, 2).await.unwrap();
        TestUploads { uploads: Uploads::new(store, Arc::new(settings)).unwrap(), dir }
    }
}
