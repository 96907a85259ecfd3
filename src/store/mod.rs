//! The only place SQL appears. The database holds the truth: tasks, received ranges, the callback
//! outbox. `Store` is SQLite (`SqliteStore`, below: one process) or PostgreSQL (`postgres`: many
//! nodes, which also share their claims, finishes and callbacks in flight through it).
//!
//! The SQLite store runs on sqlx. One writer connection serialises every write (SQLite allows one
//! writer at a time anyway, and a single connection never meets SQLITE_BUSY from this process)
//! and commits the writes waiting for it together (`writer`). Reads go to a pool of read-only
//! connections that, with WAL, never wait for the writer. The WAL is copied into the database
//! file (checkpointed) by a connection of its own, a few times a second (`checkpoint`): a
//! checkpoint fsyncs, and on the writer every one of them stalled all writes.
//!
//! Queries are checked at compile time by sqlx's `query!` macros against the data in `.sqlx/`
//! (`scripts/sqlx-prepare.sh` makes it anew). The few statements whose text is not fixed (the
//! pragmas, the savepoints) are run by the tests.
//!
//! A long read elsewhere (an operator's `sqlite3` holding a snapshot) keeps the checkpoint from
//! copying the WAL, which then grows with every write and, without a limit, keeps its size on
//! disk after the reader left. So `checkpoint` truncates it once it is over `WAL_SIZE_LIMIT` and
//! entirely copied, and the writer keeps it to that size whenever it starts the WAL over.
//!
//! What is SQLite's own dialect is marked `Dialect:` where it appears (upserts, `json_each`,
//! `RETURNING`, the pragmas), so that a PostgreSQL backend is a second set of those statements.

mod instant;
mod migrations;
mod outbox;
mod postgres;
mod ranges;
mod readers;
mod stats;
mod tasks;
mod tus;
mod types;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use crate::config::Durability;
use crate::domain::{ByteRange, FileSize, Protocol, TaskStatus};
use readers::{Reader, Readers};
use writer::Writer;

pub use postgres::{PgStore, SharedClaim, TempDatabase};

pub use instant::{Challenge, FinishedFile, NewChallenge, PlacedFile};
pub use outbox::{DueCallback, DueCallbacks, NewCallback};
pub use ranges::{BlockCommit, BlockOutcome};
pub use tasks::{NewTask, StatusChange, Task, TaskEnding, TaskSpec};
pub use tus::GrantedCreation;

/// Errors of this layer: the database failed, holds something this version cannot read, or the
/// store is closed. `trouble` tells the failures of the database itself apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlx(sqlx::Error),
    /// The transaction a write ran in could not begin, keep the write, or commit.
    #[error("the write was not committed: {0}")]
    Transaction(TransactionFailure),
    #[error("the database holds what this version cannot read: {0}")]
    Unreadable(String),
    #[error(
        "database.url {0:?} is neither sqlite://<path of the database file> nor postgres://<user>@<host>/<database>"
    )]
    BadUrl(String),
    #[error("the store is closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => StoreError::Closed,
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Unreadable(e.to_string()),
            e => StoreError::Sqlx(e),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            e => StoreError::Unreadable(e.to_string()),
        }
    }
}

impl StoreError {
    /// What failed when the database itself did (its disk, its lock, its file), rather than a
    /// query, the data, or this process.
    pub fn trouble(&self) -> Option<Trouble> {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(e)) => match e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            {
                Some(e) => Trouble::of_sqlstate(e.code()),
                None => e.code().and_then(|code| code.parse().ok()).and_then(Trouble::of_code),
            },
            // PostgreSQL does not answer: it restarts, or the network to it is down.
            StoreError::Sqlx(sqlx::Error::PoolTimedOut) => Some(Trouble::Unwritable),
            StoreError::Sqlx(sqlx::Error::Io(e)) | StoreError::Io(e) => Trouble::of_io(e),
            StoreError::Transaction(failure) => failure.trouble,
            StoreError::Sqlx(_) | StoreError::Unreadable(_) | StoreError::BadUrl(_) | StoreError::Closed => None,
        }
    }
}

/// A failure of the database itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Trouble {
    /// SQLITE_FULL, or the OS said the volume or the quota is full.
    #[error("the database's disk is full")]
    Full,
    /// SQLITE_BUSY or SQLITE_LOCKED after `BUSY_TIMEOUT`: another process holds the lock.
    #[error("the database is locked by another process")]
    Busy,
    /// An I/O error, a read-only database or one that cannot be opened.
    #[error("the database cannot be written")]
    Unwritable,
}

impl Trouble {
    /// From SQLite's (extended) result code: its low byte is the primary code.
    fn of_code(code: i32) -> Option<Self> {
        const BUSY: i32 = 5;
        const LOCKED: i32 = 6;
        const READONLY: i32 = 8;
        const IOERR: i32 = 10;
        const FULL: i32 = 13;
        const CANTOPEN: i32 = 14;
        match code & 0xff {
            FULL => Some(Trouble::Full),
            BUSY | LOCKED => Some(Trouble::Busy),
            IOERR | READONLY | CANTOPEN => Some(Trouble::Unwritable),
            _ => None,
        }
    }

    /// From PostgreSQL's SQLSTATE.
    fn of_sqlstate(code: &str) -> Option<Self> {
        match code {
            "53100" => Some(Trouble::Full),
            // Serialization failures, deadlocks, locks not available, too many connections.
            "40001" | "40P01" | "55P03" | "53300" => Some(Trouble::Busy),
            // Shutting down, starting up, read-only (a standby), lost connection.
            "57P01" | "57P02" | "57P03" | "25006" => Some(Trouble::Unwritable),
            _ if code.starts_with("08") => Some(Trouble::Unwritable),
            _ => None,
        }
    }

    fn of_io(e: &std::io::Error) -> Option<Self> {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some(Trouble::Full),
            // The connection to PostgreSQL failed.
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                Some(Trouble::Unwritable)
            }
            _ => None,
        }
    }
}

/// Why a write's transaction failed, kept as text (every write of the group gets a copy) with the
/// kind of failure when the database itself failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{why}")]
pub struct TransactionFailure {
    trouble: Option<Trouble>,
    why: String,
}

impl TransactionFailure {
    fn new(why: impl Into<String>) -> Self {
        TransactionFailure { trouble: None, why: why.into() }
    }
}

impl From<&StoreError> for TransactionFailure {
    fn from(e: &StoreError) -> Self {
        TransactionFailure { trouble: e.trouble(), why: e.to_string() }
    }
}

/// Database writes have been failing, since `since`, the last one with `error`.
#[derive(Debug, Clone)]
pub struct WritesFailing {
    pub trouble: Trouble,
    pub error: String,
    pub since: SystemTime,
}

/// How long a connection waits for a lock another process holds (say, a backup) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The WAL file's size that `checkpoint` brings it back to once a long reader has left, and that
/// the writer truncates it to when it starts it over. A few seconds of writes at full load fit
/// (so it is not truncated and regrown all the time), and it bounds the disk the WAL takes.
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// How long the checkpointer waits for the writer and readers when it truncates the WAL: the
/// writer waits for it meanwhile, so a short while, tried again at the next checkpoint.
const TRUNCATE_WAIT: Duration = Duration::from_millis(100);

/// WAL pages after which the writer checkpoints by itself: only a backstop, for when nothing
/// calls `checkpoint` (SQLite's default is 1,000).
const WRITER_CHECKPOINT_PAGES: u32 = 20_000;

/// The store: SQLite in one process (the default), or PostgreSQL shared by many nodes, chosen by
/// `database.url`. Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Defines each method of `Store` as the same method of the backend it holds.
macro_rules! on_the_backend {
    ($($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(store) => store.$name($($arg),*).await,
                        Store::Postgres(store) => store.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

// What each method does is told where the SQLite backend defines it.
on_the_backend! {
    fn create_or_resume_task(&self, new: &NewTask) -> Result<(Task, bool), StoreError>;
    fn task(&self, task_id: i64) -> Result<Option<Task>, StoreError>;
    fn change_status(&self, task_id: i64, from: TaskStatus, to: TaskStatus) -> Result<StatusChange, StoreError>;
    fn end_task(&self, task_id: i64, from: &[TaskStatus], ending: &TaskEnding, callback: &NewCallback)
        -> Result<StatusChange, StoreError>;
    fn record_finish_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError>;
    fn record_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError>;
    fn delete_refused_task(&self, task_id: i64) -> Result<(), StoreError>;
    fn idle_tasks(&self, idle: Duration) -> Result<Vec<i64>, StoreError>;
    fn tasks_in_status(&self, status: TaskStatus) -> Result<Vec<i64>, StoreError>;
    fn commit_block(&self, task_id: i64, temp_generation: i64, written: &[ByteRange]) -> Result<BlockOutcome, StoreError>;
    fn reset_received_beyond(&self, task_id: i64, temp_generation: i64, on_disk: u64, why: &str)
        -> Result<Option<Task>, StoreError>;
    fn expected_blocks(&self, task_id: i64, file_size: u64) -> Result<Vec<ByteRange>, StoreError>;
    fn received_within(&self, task_id: i64, within: ByteRange) -> Result<Vec<ByteRange>, StoreError>;
    fn received_prefix(&self, task_id: i64) -> Result<u64, StoreError>;
    fn due_callbacks(&self, limit: u32) -> Result<DueCallbacks, StoreError>;
    fn callbacks_delivered(&self, callback_ids: &[i64]) -> Result<(), StoreError>;
    fn callback_attempt_failed(&self, callback_id: i64, error: &str, retry_in: Option<Duration>)
        -> Result<(), StoreError>;
    fn finished_files_like(&self, business_server: &str, file_md5: &str, file_size: u64)
        -> Result<Vec<FinishedFile>, StoreError>;
    fn finished_file(&self, task_id: i64) -> Result<Option<FinishedFile>, StoreError>;
    fn put_challenge(&self, task_id: i64, challenge: &NewChallenge, max_answers: u64) -> Result<Option<u64>, StoreError>;
    fn count_answer(&self, task_id: i64) -> Result<Option<Challenge>, StoreError>;
    fn instant_from(&self, task_id: i64) -> Result<Option<i64>, StoreError>;
    fn create_with_grant(&self, new: &NewTask, redeem: bool) -> Result<GrantedCreation, StoreError>;
    fn declare_length(&self, task_id: i64, size: FileSize) -> Result<StatusChange, StoreError>;
    fn set_protocol(&self, task_id: i64, protocol: Protocol) -> Result<(), StoreError>;
    fn join_partials(&self, final_id: i64, partials: &[i64], size: u64) -> Result<StatusChange, StoreError>;
    fn ping(&self) -> Result<(), StoreError>;
    fn open_task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError>;
    fn pending_callbacks(&self) -> Result<u64, StoreError>;
}

impl Store {
    /// Lets the writes under way finish, then closes every connection.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.close().await,
        }
    }

    /// Opens the database `url` names: `sqlite://<path>` (made if missing) with `readers`
    /// read-only connections, or `postgres://…` with a pool of `readers` + a few connections.
    /// Either way the migrations are applied.
    pub async fn open(url: &str, durability: Durability, readers: u32) -> Result<Self, StoreError> {
        if postgres::is_postgres_url(url) {
            Ok(Store::Postgres(PgStore::open(url, readers).await?))
        } else {
            Ok(Store::Sqlite(SqliteStore::open(url, durability, readers).await?))
        }
    }

    /// The WAL's checkpoint, for SQLite; `None` for PostgreSQL, which keeps its own WAL.
    pub async fn checkpoint(&self) -> Option<Result<WalCheckpoint, StoreError>> {
        match self {
            Store::Sqlite(store) => Some(store.checkpoint().await),
            Store::Postgres(_) => None,
        }
    }

    /// Since when, and how, writes fail; `None` once a write has committed since.
    pub fn writes_failing(&self) -> Option<WritesFailing> {
        match self {
            Store::Sqlite(store) => store.writes_failing(),
            Store::Postgres(store) => store.writes_failing(),
        }
    }

    /// A small write, to learn whether writes work again when nothing else writes. `None` while
    /// the last probe is still waiting.
    pub fn probe_write(&self) -> Option<BoxFuture<'_, Result<(), StoreError>>> {
        match self {
            Store::Sqlite(store) => store.probe_write().map(|probe| Box::pin(probe) as BoxFuture<'_, _>),
            Store::Postgres(store) => store.probe_write(),
        }
    }

    /// The coordination of many nodes, when the database is shared by them (PostgreSQL).
    pub fn shared(&self) -> Option<&PgStore> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(store) => Some(store),
        }
    }
}

/// The SQLite store. Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Connections>,
}

struct Connections {
    writer: Writer,
    readers: Readers,
    checkpointer: tokio::sync::Mutex<Option<SqliteConnection>>,
    wal: Wal,
    writes: WriteOutcomes,
}

/// The WAL file and the size it is kept to.
#[derive(Clone)]
struct Wal {
    path: PathBuf,
    limit: u64,
}

/// Whether the last writes failed for a failure of the database itself, for readiness.
#[derive(Default)]
pub(super) struct WriteOutcomes {
    /// Since when, and why, when the last write that could tell failed for the database's sake.
    failing: Mutex<Option<WritesFailing>>,
    /// A readiness probe write is waiting for the writer: one at a time is enough.
    probing: Arc<AtomicBool>,
}

impl WriteOutcomes {
    pub(super) fn failing(&self) -> Option<WritesFailing> {
        lock(&self.failing).clone()
    }

    /// Marks a probe under way, until the returned value is dropped; `None` while one is.
    pub(super) fn start_probe(&self) -> Option<ProbeInFlight> {
        (!self.probing.swap(true, Ordering::AcqRel)).then(|| ProbeInFlight(self.probing.clone()))
    }

    pub(super) fn record<T>(&self, outcome: &Result<T, StoreError>) {
        let trouble = match outcome {
            Ok(_) => None,
            Err(e) => match e.trouble() {
                Some(trouble) => Some((trouble, e)),
                None => return,
            },
        };
        let mut failing = lock(&self.failing);
        match (trouble, failing.take()) {
            (None, Some(was)) => tracing::info!(failed = %was.trouble, "database writes work again"),
            (None, None) => {}
            (Some((trouble, e)), was) => {
                if was.is_none() {
                    tracing::warn!(error = %e, "database writes fail");
                }
                let since = was.map_or_else(SystemTime::now, |was| was.since);
                *failing = Some(WritesFailing { trouble, error: e.to_string(), since });
            }
        }
    }
}

/// A lock that a panic elsewhere does not poison for good: what it guards stays consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) struct ProbeInFlight(Arc<AtomicBool>);

impl Drop for ProbeInFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a checkpoint found and left.
#[derive(Debug, Clone, Copy)]
pub struct WalCheckpoint {
    /// Frames in the WAL, and how many of them are in the database file now.
    pub frames: i64,
    pub copied: i64,
    /// The WAL file's size after the checkpoint.
    pub wal_bytes: u64,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://<path>`) and applies the
    /// migrations. `readers` read-only connections serve the reads.
    pub async fn open(url: &str, durability: Durability, readers: u32) -> Result<Self, StoreError> {
        Self::open_with_wal_limit(url, durability, readers, WAL_SIZE_LIMIT).await
    }

    /// As `open`, with the WAL kept to `wal_limit` bytes.
    async fn open_with_wal_limit(
        url: &str,
        durability: Durability,
        readers: u32,
        wal_limit: u64,
    ) -> Result<Self, StoreError> {
        let path = database_path(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let options = connect_options(&path, durability, wal_limit);
        let mut writer = options
            .clone()
            .create_if_missing(true)
            .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string())
            .connect()
            .await?;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut writer).await?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unreadable(format!("the database cannot use a WAL (journal_mode is {mode})")));
        }
        migrations::apply(&mut writer).await?;
        let checkpointer = options.clone().busy_timeout(TRUNCATE_WAIT).connect().await?;
        let mut reader_connections = Vec::new();
        for _ in 0..readers.max(1) {
            reader_connections.push(options.clone().read_only(true).connect().await?);
        }
        let mut wal_path = path.into_os_string();
        wal_path.push("-wal");
        let inner = Connections {
            writer: Writer::start(writer),
            readers: Readers::new(reader_connections),
            checkpointer: tokio::sync::Mutex::new(Some(checkpointer)),
            wal: Wal { path: wal_path.into(), limit: wal_limit },
            writes: WriteOutcomes::default(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Copies what the WAL holds into the database file, as far as no reader still needs it,
    /// without waiting for (or holding up) the writer. When all of it is copied and the WAL file
    /// is over its limit, empties the file too: this waits for the writer, but only then.
    pub async fn checkpoint(&self) -> Result<WalCheckpoint, StoreError> {
        let mut checkpointer = self.inner.checkpointer.lock().await;
        let conn = checkpointer.as_mut().ok_or(StoreError::Closed)?;
        let wal = &self.inner.wal;
        let (frames, copied) = run_checkpoint(conn, "PASSIVE").await?;
        let mut wal_bytes = wal.file_size().await?;
        if frames == copied && wal_bytes > wal.limit {
            // A reader that still needed the frames has left: without this the file keeps its
            // size until the server stops.
            run_checkpoint(conn, "TRUNCATE").await?;
            wal_bytes = wal.file_size().await?;
        }
        Ok(WalCheckpoint { frames, copied, wal_bytes })
    }

    /// Runs `write` in the writer's next transaction (see `writer`), and keeps track of whether
    /// writes fail for the database's sake.
    async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        let outcome = self.inner.writer.write(write).await;
        self.inner.writes.record(&outcome);
        outcome
    }

    /// A reader connection: each read runs in autocommit (no read transaction outlives it), so
    /// it sees every commit that returned before it began. A block's plan relies on that
    /// (docs/RELIABILITY.md, section 9).
    async fn reader(&self) -> Result<Reader<'_>, StoreError> {
        self.inner.readers.acquire().await
    }

    /// Since when, and how, writes fail; `None` once a write has committed since.
    pub fn writes_failing(&self) -> Option<WritesFailing> {
        self.inner.writes.failing()
    }

    /// A small write, to learn whether writes work again when nothing else writes. `None` while
    /// the last probe is still waiting for the writer.
    pub fn probe_write(&self) -> Option<impl std::future::Future<Output = Result<(), StoreError>> + '_> {
        let in_flight = self.inner.writes.start_probe()?;
        Some(self.write(move |conn| {
            Box::pin(async move {
                let _in_flight = in_flight;
                let now = now();
                sqlx::query!("UPDATE write_probe SET probed_at = ?1 WHERE id = 1", now).execute(conn).await?;
                Ok(())
            })
        }))
    }

    /// Lets the writes already handed in finish, then closes every connection.
    pub async fn close(&self) {
        self.inner.writer.stop().await;
        self.inner.readers.close().await;
        if let Some(checkpointer) = self.inner.checkpointer.lock().await.take() {
            if let Err(e) = checkpointer.close().await {
                tracing::warn!(error = %e, "the checkpoint connection did not close cleanly");
            }
        }
    }
}

impl Wal {
    /// 0 when there is no WAL file (yet, or after a clean close).
    async fn file_size(&self) -> Result<u64, StoreError> {
        match tokio::fs::metadata(&self.path).await {
            Ok(metadata) => Ok(metadata.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// `PRAGMA wal_checkpoint(mode)`: the frames in the WAL and how many are in the database file.
async fn run_checkpoint(conn: &mut SqliteConnection, mode: &str) -> Result<(i64, i64), StoreError> {
    // Dialect: SQLite's WAL.
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    let (_busy, frames, copied): (i64, i64, i64) = sqlx::query_as(&sql).fetch_one(conn).await?;
    Ok((frames, copied))
}

/// How every connection opens the database: WAL (which lets readers read while the writer
/// writes), `synchronous` by `durability`, foreign keys on, and the WAL's size limit.
fn connect_options(path: &Path, durability: Durability, wal_limit: u64) -> SqliteConnectOptions {
    let synchronous = match durability {
        // In WAL mode NORMAL commits survive a process crash; FULL also fsyncs each commit.
        Durability::Process => SqliteSynchronous::Normal,
        Durability::Power => SqliteSynchronous::Full,
    };
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
        .pragma("journal_size_limit", i64::try_from(wal_limit).unwrap_or(i64::MAX).to_string())
}

/// The database file `url` names: `sqlite://<path>` (or `sqlite:<path>`), the path relative to
/// the working directory unless it is absolute.
pub fn database_path(url: &str) -> Result<PathBuf, StoreError> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"));
    match path {
        Some(path) if !path.is_empty() && !path.contains('?') && !path.starts_with(':') => Ok(PathBuf::from(path)),
        _ => Err(StoreError::BadUrl(url.to_owned())),
    }
}

/// Timestamps are ISO-8601 UTC text with milliseconds, so they compare as text.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn now() -> String {
    timestamp(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_store;
    use super::*;
    use crate::domain::TaskStatus;
    use crate::store::tasks::tests::new_task;

    #[tokio::test]
    async fn the_checkpoint_connection_empties_the_wal_and_the_writer_only_backs_it_up() {
        let (store, _dir) = temp_store().await;
        store.create_or_resume_task(&new_task(100)).await.unwrap();
        let wal = store.checkpoint().await.unwrap();
        assert!(wal.frames > 0, "the create went to the WAL");
        assert_eq!(wal.copied, wal.frames);
        assert!(wal.wal_bytes > 0, "under its limit the WAL file stays, to be written again");
        let (pages, limit): (i64, i64) = store
            .write(|conn| {
                Box::pin(async move {
                    let pages = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut *conn).await?;
                    Ok((pages, sqlx::query_scalar("PRAGMA journal_size_limit").fetch_one(&mut *conn).await?))
                })
            })
            .await
            .unwrap();
        assert_eq!(pages, i64::from(WRITER_CHECKPOINT_PAGES));
        assert_eq!(limit, WAL_SIZE_LIMIT as i64, "the writer truncates the WAL to the limit when it starts it over");
    }

    #[tokio::test]
    async fn a_write_that_reads_first_waits_for_the_write_lock_another_connection_holds() {
        // The checkpointer's TRUNCATE holds the write lock a moment, as an operator's sqlite3 may.
        // A write whose first statement reads must wait for it like any other, not fail at once:
        // SQLite does not wait to turn a read transaction into a write one (tus creations got
        // 503s under load).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let store = SqliteStore::open(&format!("sqlite://{}", path.display()), Durability::Process, 2).await.unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let writing = store.clone();
        let write = tokio::spawn(async move {
            writing
                .write(|conn| {
                    Box::pin(async move {
                        let grants: i64 =
                            sqlx::query_scalar("SELECT COUNT(*) FROM redeemed_grants").fetch_one(&mut *conn).await?;
                        sqlx::query("DELETE FROM received_ranges WHERE task_id = -1").execute(&mut *conn).await?;
                        Ok(grants)
                    })
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(write.await.unwrap().unwrap(), 0);
        store.close().await;
    }

    #[tokio::test]
    async fn every_connection_has_the_pragmas_durability_asks_for() {
        for (durability, synchronous) in [(Durability::Process, 1), (Durability::Power, 2)] {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("test.db").display());
            let store = SqliteStore::open(&url, durability, 2).await.unwrap();
            let (writer_synchronous, foreign_keys, busy_ms): (i64, i64, i64) = store
                .write(|conn| {
                    Box::pin(async move {
                        let synchronous = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await?;
                        let foreign_keys = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *conn).await?;
                        Ok((
                            synchronous,
                            foreign_keys,
                            sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *conn).await?,
                        ))
                    })
                })
                .await
                .unwrap();
            assert_eq!((writer_synchronous, foreign_keys), (synchronous, 1), "{durability:?}");
            assert_eq!(busy_ms, BUSY_TIMEOUT.as_millis() as i64);
            let mode: String =
                sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *store.reader().await.unwrap()).await.unwrap();
            assert_eq!(mode, "wal");
            let reader_synchronous: i64 =
                sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *store.reader().await.unwrap()).await.unwrap();
            assert_eq!(reader_synchronous, synchronous);
            store.close().await;
        }
    }

    #[tokio::test]
    async fn once_a_long_reader_has_left_the_checkpoint_brings_the_wal_back_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let limit = 256 << 10;
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::open_with_wal_limit(&url, Durability::Process, 2, limit).await.unwrap();
        let wal_file = || std::fs::metadata(dir.path().join("test.db-wal")).map_or(0, |m| m.len());
        // An operator's sqlite3 in a read transaction: its snapshot keeps every frame after it.
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT COUNT(*) FROM upload_tasks", [], |row| row.get(0)).unwrap();
        for size in 1..=200 {
            let mut task = new_task(size);
            task.spec.feedback_parameter = "x".repeat(8 << 10);
            store.create_or_resume_task(&task).await.unwrap();
            if size % 20 == 0 {
                store.checkpoint().await.unwrap();
            }
        }
        let held = store.checkpoint().await.unwrap();
        assert!(held.copied < held.frames, "the reader holds frames back: {held:?}");
        assert!(held.wal_bytes > 4 * limit, "the WAL grew past its limit: {held:?}");
        reader.execute_batch("COMMIT").unwrap();
        let after = store.checkpoint().await.unwrap();
        assert!(after.wal_bytes <= limit, "{after:?}");
        assert!(wal_file() <= limit, "the file itself is {} bytes", wal_file());
        // The store goes on as before.
        let (task, _) = store.create_or_resume_task(&new_task(1000)).await.unwrap();
        assert!(store.task(task.task_id).await.unwrap().is_some());
        assert!(wal_file() > 0);
    }

    #[tokio::test]
    async fn failures_of_the_database_itself_are_told_apart() {
        // SQLite's result codes, extended ones included (their low byte is the primary code).
        for (code, trouble) in [
            (13, Some(Trouble::Full)),        // SQLITE_FULL
            (5, Some(Trouble::Busy)),         // SQLITE_BUSY
            (6, Some(Trouble::Busy)),         // SQLITE_LOCKED
            (778, Some(Trouble::Unwritable)), // SQLITE_IOERR_WRITE
            (8, Some(Trouble::Unwritable)),   // SQLITE_READONLY
            (14, Some(Trouble::Unwritable)),  // SQLITE_CANTOPEN
            (787, None),                      // SQLITE_CONSTRAINT_FOREIGNKEY
        ] {
            assert_eq!(Trouble::of_code(code), trouble, "code {code}");
        }
        // A real error of sqlx's, and the copy the writer's group commit hands every write.
        let (store, _dir) = temp_store().await;
        let violation = store
            .write(|conn| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO received_ranges VALUES (4242, 0, 1)").execute(conn).await?;
                    Ok(())
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(violation, StoreError::Sqlx(sqlx::Error::Database(_))), "{violation:?}");
        assert_eq!(violation.trouble(), None);
        let failure = TransactionFailure { trouble: Some(Trouble::Full), why: "full".into() };
        assert_eq!(StoreError::Transaction(failure).trouble(), Some(Trouble::Full));
        for kind in [std::io::ErrorKind::StorageFull, std::io::ErrorKind::QuotaExceeded] {
            assert_eq!(StoreError::Io(kind.into()).trouble(), Some(Trouble::Full));
        }
        assert_eq!(StoreError::Io(std::io::ErrorKind::PermissionDenied.into()).trouble(), None);
        assert_eq!(StoreError::Closed.trouble(), None);
    }

    /// How many tasks `filter` (an SQL condition) selects.
    async fn count_tasks(store: &SqliteStore, filter: &'static str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM upload_tasks WHERE {filter}");
        sqlx::query_scalar(&sql).fetch_one(&mut *store.reader().await.unwrap()).await.unwrap()
    }

    /// A write of one statement that fails for its own sake: there is no such table.
    async fn failing_write(store: &SqliteStore) -> Result<(), StoreError> {
        store
            .write(|conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE upload_tasks SET status = 'finish'").execute(&mut *conn).await?;
                    sqlx::query("INSERT INTO no_such_table VALUES (1)").execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .await
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_its_group_and_the_writer_goes_on() {
        let (store, _dir) = temp_store().await;
        let (one, two) = (new_task(1), new_task(2));
        let release = test_support::hold_writer(&store).await;
        let panicking = store.write(|_| -> BoxFuture<'_, Result<(), StoreError>> { panic!("a bug in a write") });
        let beside = store.create_or_resume_task(&one);
        // Released last: join! polls in order the first time, so both writes are queued by then.
        let released = async { release.send(()).unwrap() };
        let (panicking, beside, ()) = tokio::join!(panicking, beside, released);
        assert!(matches!(panicking, Err(StoreError::Closed)), "{panicking:?}");
        assert!(matches!(beside, Err(StoreError::Transaction(_))), "{beside:?}");
        assert_eq!(count_tasks(&store, "TRUE").await, 0, "nothing of the group was committed");
        store.create_or_resume_task(&two).await.unwrap();
    }

    #[tokio::test]
    async fn on_a_full_disk_every_write_is_answered_as_it_was_recorded() {
        let (store, _dir) = temp_store().await;
        store.create_or_resume_task(&new_task(1)).await.unwrap();
        test_support::limit_growth(&store, 8).await;
        let mut huge = new_task(3);
        huge.spec.feedback_parameter = "x".repeat(1 << 20);
        let (small, later) = (new_task(2), new_task(4));
        let release = test_support::hold_writer(&store).await;
        let released = async { release.send(()).unwrap() };
        let (_, small, huge, later) = tokio::join!(
            released,
            store.create_or_resume_task(&small),
            store.create_or_resume_task(&huge),
            store.create_or_resume_task(&later)
        );
        let huge = huge.expect_err("a megabyte does not fit in 8 pages");
        assert_eq!(huge.trouble(), Some(Trouble::Full), "{huge:?}");
        for (filter, answer) in [("file_size = 2", small), ("file_size = 4", later)] {
            let recorded = count_tasks(&store, filter).await;
            assert_eq!(recorded == 1, answer.is_ok(), "the write with {filter} answered {answer:?}");
            if let Err(e) = answer {
                assert_eq!(e.trouble(), Some(Trouble::Full), "the group failed for the full disk: {e:?}");
            }
        }
        // Alone, so that no write committed beside it clears the record.
        let mut huge = new_task(6);
        huge.spec.feedback_parameter = "x".repeat(1 << 20);
        assert!(store.create_or_resume_task(&huge).await.is_err());
        let failing = store.writes_failing().expect("writes are failing");
        assert_eq!(failing.trouble, Trouble::Full);
        // A write that fails for its own sake says nothing about the database.
        assert!(failing_write(&store).await.is_err());
        assert_eq!(store.writes_failing().map(|f| f.since), Some(failing.since), "still failing since then");
        store.create_or_resume_task(&new_task(5)).await.unwrap();
        assert!(store.writes_failing().is_none(), "a committed write clears it");
    }

    #[tokio::test]
    async fn a_write_whose_error_ended_the_transaction_fails_its_group_for_that_reason() {
        let (store, _dir) = temp_store().await;
        let (one, two) = (new_task(1), new_task(2));
        let release = test_support::hold_writer(&store).await;
        let before = store.create_or_resume_task(&one);
        // As SQLite does on some full disks: the statement's error rolls the transaction back.
        let ending = store.write(|conn| -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async move {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                Err(StoreError::Io(std::io::ErrorKind::StorageFull.into()))
            })
        });
        let after = store.create_or_resume_task(&two);
        // Released last: join! polls in order the first time, so the three writes are one group.
        let released = async { release.send(()).unwrap() };
        let (before, ending, after, ()) = tokio::join!(before, ending, after, released);
        for (which, outcome) in [("before", before.map(drop)), ("ending", ending), ("after", after.map(drop))] {
            let e = outcome.expect_err(which);
            assert_eq!(e.trouble(), Some(Trouble::Full), "{which}: {e:?}");
        }
        assert_eq!(count_tasks(&store, "TRUE").await, 0, "nothing of the group was committed");
    }

    #[tokio::test]
    async fn a_probe_write_commits_and_one_at_a_time_waits_for_the_writer() {
        let (store, _dir) = temp_store().await;
        let release = test_support::hold_writer(&store).await;
        let first = store.probe_write().expect("no probe is waiting");
        assert!(store.probe_write().is_none(), "the first one is still waiting");
        let released = async { release.send(()).unwrap() };
        let ((), first) = tokio::join!(released, first);
        first.unwrap();
        store.probe_write().expect("the first one is done").await.unwrap();
        let probed: String = sqlx::query_scalar("SELECT probed_at FROM write_probe WHERE id = 1")
            .fetch_one(&mut *store.reader().await.unwrap())
            .await
            .unwrap();
        assert!(!probed.is_empty(), "the probe wrote its row");
    }

    #[test]
    fn database_urls_name_a_file() {
        assert_eq!(database_path("sqlite://data/fupload.db").unwrap(), Path::new("data/fupload.db"));
        assert_eq!(database_path("sqlite:///var/lib/f.db").unwrap(), Path::new("/var/lib/f.db"));
        assert_eq!(database_path("sqlite:f.db").unwrap(), Path::new("f.db"));
        for bad in ["", "postgres://x/y", "sqlite://", "sqlite::memory:", "sqlite://f.db?mode=ro", "f.db"] {
            assert!(matches!(database_path(bad), Err(StoreError::BadUrl(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_failed_write_undoes_only_itself_among_the_writes_committed_with_it() {
        let (store, _dir) = temp_store().await;
        let (one, two) = (new_task(1), new_task(2));
        // Queued together while the writer is held up.
        let release = test_support::hold_writer(&store).await;
        let good = store.create_or_resume_task(&one);
        let failing = failing_write(&store);
        let also_good = store.create_or_resume_task(&two);
        let released = async { release.send(()).unwrap() };
        let (good, failing, also_good, ()) = tokio::join!(good, failing, also_good, released);
        assert!(matches!(failing, Err(StoreError::Sqlx(_))), "{failing:?}");
        let (good, also_good) = (good.unwrap().0, also_good.unwrap().0);
        assert_eq!(count_tasks(&store, "TRUE").await, 2);
        for task in [good, also_good] {
            assert_eq!(
                store.task(task.task_id).await.unwrap().unwrap().status,
                TaskStatus::Upload,
                "the failed write's update is undone"
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    pub use crate::store::postgres::test_support::server_url as postgres_server_url;

    /// The SQLite store that the faults below are injected into.
    pub trait OnSqlite {
        fn on_sqlite(&self) -> &SqliteStore;
    }

    impl OnSqlite for SqliteStore {
        fn on_sqlite(&self) -> &SqliteStore {
            self
        }
    }

    impl OnSqlite for Store {
        fn on_sqlite(&self) -> &SqliteStore {
            match self {
                Store::Sqlite(store) => store,
                Store::Postgres(_) => panic!("the service's unit tests run on SQLite"),
            }
        }
    }

    /// Keeps the writer busy until the returned sender sends (or is dropped): writes handed in
    /// meanwhile wait in its queue.
    pub async fn hold_writer(store: &impl OnSqlite) -> tokio::sync::oneshot::Sender<()> {
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let (started, holding) = tokio::sync::oneshot::channel();
        let store = store.on_sqlite().clone();
        tokio::spawn(async move {
            store
                .write(move |_| {
                    Box::pin(async move {
                        let _ = started.send(());
                        let _ = held.await;
                        Ok(())
                    })
                })
                .await
        });
        holding.await.unwrap();
        release
    }

    /// Lets the database grow by at most `pages` more pages (SQLite's `max_page_count`, on the
    /// writer's connection): a full disk, injected where a mount is not at hand.
    pub async fn limit_growth(store: &SqliteStore, pages: i64) {
        store
            .write(move |conn| {
                Box::pin(async move {
                    let now: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *conn).await?;
                    let limit = format!("PRAGMA max_page_count = {}", now + pages);
                    sqlx::query(&limit).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .await
            .unwrap()
    }

    /// Runs `sql` on the writer's connection.
    async fn on_the_writer(store: &SqliteStore, sql: &'static str) {
        store
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(sql).execute(conn).await?;
                    Ok(())
                })
            })
            .await
            .unwrap()
    }

    /// Makes every write that queues a callback fail, as a full or failing database would, until
    /// `allow_callbacks` (a temporary trigger on the writer's connection).
    pub async fn refuse_callbacks(store: &impl OnSqlite) {
        let sql = "CREATE TEMP TRIGGER refuse_callbacks BEFORE INSERT ON callback_outbox
                   BEGIN SELECT RAISE(ABORT, 'injected fault: the database cannot take the callback'); END";
        on_the_writer(store.on_sqlite(), sql).await
    }

    pub async fn allow_callbacks(store: &impl OnSqlite) {
        on_the_writer(store.on_sqlite(), "DROP TRIGGER temp.refuse_callbacks").await
    }

    /// A store on a fresh database file in its own temp dir.
    pub async fn temp_store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        (SqliteStore::open(&url, Durability::Process, 2).await.unwrap(), dir)
    }
}
