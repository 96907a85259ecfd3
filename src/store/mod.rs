//! The only place SQL appears. SQLite holds the truth: tasks, received ranges, the callback outbox.
//!
//! Each connection lives on a thread of its own (`threads`), and a transaction is one hand-off
//! to it. One writer connection serialises every write (SQLite allows one writer at a time anyway,
//! and a single connection never meets SQLITE_BUSY from this process), and commits the writes
//! waiting for it together. Readers have connections of their own and, with WAL, never wait for
//! the writer. Statements are prepared once per connection and cached.
//! The WAL is copied into the database file (checkpointed) by a connection of its own, called
//! a few times a second (`checkpoint`): a checkpoint fsyncs, and on the writer every one of them
//! stalled all writes for about 8 ms (8% of the time in W3, see docs/PERFORMANCE.md).
//! Queries are checked at run time: the tests exercise every one of them.
//!
//! A long read elsewhere (an operator's `sqlite3` holding a snapshot) keeps the checkpoint from
//! copying the WAL, which then grows with every write and, without a limit, keeps its size on
//! disk after the reader left. So `checkpoint` truncates it once it is over `WAL_SIZE_LIMIT` and
//! entirely copied, and the writer keeps it to that size whenever it starts the WAL over.

mod migrations;
mod outbox;
mod ranges;
mod stats;
mod tasks;
mod threads;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::config::Durability;
use crate::domain::TaskStatus;
use threads::{Readers, WriteSavepoint, Writer};

pub use outbox::{DueCallback, DueCallbacks, NewCallback};
pub use ranges::BlockCommit;
pub use tasks::{NewTask, Task, TaskEnding, TaskSpec};

/// Errors of this layer: the database failed, holds something this version cannot read, or the
/// store is closed. `trouble` tells the failures of the database itself apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction a write ran in could not begin, keep the write, or commit.
    #[error("the write was not committed: {0}")]
    Transaction(TransactionFailure),
    #[error("the database holds what this version cannot read: {0}")]
    Unreadable(String),
    #[error("database.url {0:?} is not sqlite://<path of the database file>")]
    BadUrl(String),
    #[error("the store is closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// What failed when the database itself did (its disk, its lock, its file), rather than a
    /// query, the data, or this process.
    pub fn trouble(&self) -> Option<Trouble> {
        match self {
            StoreError::Sqlite(e) => Trouble::of_sqlite(e),
            StoreError::Transaction(failure) => failure.trouble,
            StoreError::Io(e) => Trouble::of_io(e),
            StoreError::Unreadable(_) | StoreError::BadUrl(_) | StoreError::Closed => None,
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
    fn of_sqlite(e: &rusqlite::Error) -> Option<Self> {
        match e.sqlite_error_code()? {
            ErrorCode::DiskFull => Some(Trouble::Full),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some(Trouble::Busy),
            ErrorCode::SystemIoFailure | ErrorCode::ReadOnly | ErrorCode::CannotOpen => Some(Trouble::Unwritable),
            _ => None,
        }
    }

    fn of_io(e: &std::io::Error) -> Option<Self> {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Some(Trouble::Full),
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

impl From<rusqlite::Error> for TransactionFailure {
    fn from(e: rusqlite::Error) -> Self {
        TransactionFailure { trouble: Trouble::of_sqlite(&e), why: e.to_string() }
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

/// Prepared statements kept per connection: more than the store has.
const CACHED_STATEMENTS: usize = 64;

/// The store. Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Connections>,
}

struct Connections {
    writer: Writer,
    readers: Readers,
    checkpointer: Readers,
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
struct WriteOutcomes {
    /// Since when, and why, when the last write that could tell failed for the database's sake.
    failing: Mutex<Option<WritesFailing>>,
    /// A readiness probe write is waiting for the writer: one at a time is enough.
    probing: Arc<AtomicBool>,
}

impl WriteOutcomes {
    fn record<T>(&self, outcome: &Result<T, StoreError>) {
        let trouble = match outcome {
            Ok(_) => None,
            Err(e) => match e.trouble() {
                Some(trouble) => Some((trouble, e)),
                None => return,
            },
        };
        let mut failing = threads::lock(&self.failing);
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

struct ProbeInFlight(Arc<AtomicBool>);

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

impl Store {
    /// Opens (creating if missing) the database at `url` (`sqlite://<path>`) and applies the
    /// migrations.
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
        let inner =
            tokio::task::spawn_blocking(move || Connections::open(&path, durability, readers.max(1), wal_limit))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Copies what the WAL holds into the database file, as far as no reader still needs it,
    /// without waiting for (or holding up) the writer. When all of it is copied and the WAL file
    /// is over its limit, empties the file too: this waits for the writer, but only then.
    pub async fn checkpoint(&self) -> Result<WalCheckpoint, StoreError> {
        let wal = self.inner.wal.clone();
        self.inner
            .checkpointer
            .read(move |conn| {
                let (frames, copied) = run_checkpoint(conn, "PASSIVE")?;
                let mut wal_bytes = wal.file_size()?;
                if frames == copied && wal_bytes > wal.limit {
                    // A reader that still needed the frames has left: without this the file
                    // keeps its size until the server stops.
                    run_checkpoint(conn, "TRUNCATE")?;
                    wal_bytes = wal.file_size()?;
                }
                Ok(WalCheckpoint { frames, copied, wal_bytes })
            })
            .await
    }

    /// Runs `write` in the writer's next transaction (see `threads`), and keeps track of whether
    /// writes fail for the database's sake.
    async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteSavepoint) -> Result<T, StoreError> + Send + 'static,
    {
        let outcome = self.inner.writer.write(write).await;
        self.inner.writes.record(&outcome);
        outcome
    }

    /// Since when, and how, writes fail; `None` once a write has committed since.
    pub fn writes_failing(&self) -> Option<WritesFailing> {
        threads::lock(&self.inner.writes.failing).clone()
    }

    /// A small write, to learn whether writes work again when nothing else writes. `None` while
    /// the last probe is still waiting for the writer.
    pub fn probe_write(&self) -> Option<impl std::future::Future<Output = Result<(), StoreError>> + '_> {
        let probing = &self.inner.writes.probing;
        if probing.swap(true, Ordering::AcqRel) {
            return None;
        }
        let in_flight = ProbeInFlight(probing.clone());
        Some(self.write(move |conn| {
            let _in_flight = in_flight;
            conn.prepare_cached("UPDATE write_probe SET probed_at = ?1 WHERE id = 1")?.execute([now()])?;
            Ok(())
        }))
    }

    /// Runs `read` on one of the reader connections.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.readers.read(read).await
    }

    /// Lets the work already handed in finish, then closes every connection.
    pub async fn close(&self) {
        self.inner.readers.stop().await;
        self.inner.checkpointer.stop().await;
        self.inner.writer.stop().await;
    }
}

impl Wal {
    /// 0 when there is no WAL file (yet, or after a clean close).
    fn file_size(&self) -> Result<u64, StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(metadata) => Ok(metadata.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// `PRAGMA wal_checkpoint(mode)`: the frames in the WAL and how many are in the database file.
fn run_checkpoint(conn: &Connection, mode: &str) -> Result<(i64, i64), StoreError> {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    let (_busy, frames, copied): (i64, i64, i64) =
        conn.query_row(&sql, [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    Ok((frames, copied))
}

impl Connections {
    fn open(path: &Path, durability: Durability, readers: u32, wal_limit: u64) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let synchronous = match durability {
            // In WAL mode NORMAL commits survive a process crash; FULL also fsyncs each commit.
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        let mut writer = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE, synchronous)?;
        writer.pragma_update(None, "foreign_keys", true)?;
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        let limit = i64::try_from(wal_limit).unwrap_or(i64::MAX);
        writer.pragma_update(None, "journal_size_limit", limit)?;
        migrations::apply(&mut writer)?;
        let checkpointer = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE, synchronous)?;
        checkpointer.pragma_update(None, "journal_size_limit", limit)?;
        checkpointer.busy_timeout(TRUNCATE_WAIT)?;
        let readers = (0..readers)
            .map(|_| connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY, synchronous))
            .collect::<Result<_, _>>()?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        Ok(Self {
            writer: Writer::start_writer(writer)?,
            readers: Readers::start_readers("sqlite-reader", readers)?,
            checkpointer: Readers::start_readers("sqlite-checkpoint", vec![checkpointer])?,
            wal: Wal { path: wal_path.into(), limit: wal_limit },
            writes: WriteOutcomes::default(),
        })
    }
}

/// A connection to the database in WAL mode (which lets readers read while the writer writes).
fn connect(path: &Path, flags: OpenFlags, synchronous: &str) -> Result<Connection, StoreError> {
    // Each connection is used by one thread at a time: SQLite's own mutexes are not needed.
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
    if !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unreadable(format!("the database cannot use a WAL (journal_mode is {mode})")));
        }
    }
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
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

impl FromSql for TaskStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse::<TaskStatus>().map_err(|e| FromSqlError::Other(e.into()))
    }
}

impl rusqlite::ToSql for TaskStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_store;
    use super::*;
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
                let pages = conn.query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))?;
                Ok((pages, conn.query_row("PRAGMA journal_size_limit", [], |row| row.get(0))?))
            })
            .await
            .unwrap();
        assert_eq!(pages, i64::from(WRITER_CHECKPOINT_PAGES));
        assert_eq!(limit, WAL_SIZE_LIMIT as i64, "the writer truncates the WAL to the limit when it starts it over");
    }

    #[tokio::test]
    async fn once_a_long_reader_has_left_the_checkpoint_brings_the_wal_back_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let limit = 256 << 10;
        let url = format!("sqlite://{}", path.display());
        let store = Store::open_with_wal_limit(&url, Durability::Process, 2, limit).await.unwrap();
        let wal_file = || std::fs::metadata(dir.path().join("test.db-wal")).map_or(0, |m| m.len());
        // An operator's sqlite3 in a read transaction: its snapshot keeps every frame after it.
        let reader = Connection::open(&path).unwrap();
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

    #[test]
    fn failures_of_the_database_itself_are_told_apart() {
        let sqlite = |code| StoreError::Sqlite(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None));
        for (code, trouble) in [
            (rusqlite::ffi::SQLITE_FULL, Some(Trouble::Full)),
            (rusqlite::ffi::SQLITE_BUSY, Some(Trouble::Busy)),
            (rusqlite::ffi::SQLITE_LOCKED, Some(Trouble::Busy)),
            (rusqlite::ffi::SQLITE_IOERR_WRITE, Some(Trouble::Unwritable)),
            (rusqlite::ffi::SQLITE_READONLY, Some(Trouble::Unwritable)),
            (rusqlite::ffi::SQLITE_CANTOPEN, Some(Trouble::Unwritable)),
            (rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY, None),
        ] {
            assert_eq!(sqlite(code).trouble(), trouble, "code {code}");
            // Through the writer's group commit, which hands every write a copy of the failure.
            let failure = TransactionFailure::from(&sqlite(code));
            assert_eq!(StoreError::Transaction(failure).trouble(), trouble, "code {code}");
        }
        for kind in [std::io::ErrorKind::StorageFull, std::io::ErrorKind::QuotaExceeded] {
            assert_eq!(StoreError::Io(kind.into()).trouble(), Some(Trouble::Full));
        }
        assert_eq!(StoreError::Io(std::io::ErrorKind::PermissionDenied.into()).trouble(), None);
        assert_eq!(StoreError::Closed.trouble(), None);
    }

    /// How many tasks `filter` (an SQL condition) selects.
    async fn count_tasks(store: &Store, filter: &'static str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM upload_tasks WHERE {filter}");
        store.read(move |conn| Ok(conn.query_row(&sql, [], |row| row.get(0))?)).await.unwrap()
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_its_group_and_the_writer_goes_on() {
        let (store, _dir) = temp_store().await;
        let (one, two) = (new_task(1), new_task(2));
        let release = test_support::hold_writer(&store).await;
        let panicking = store.write(|_| -> Result<(), StoreError> { panic!("a bug in a write") });
        let beside = store.create_or_resume_task(&one);
        // Released last: join! polls in order the first time, so both writes are queued by then.
        let released = async { release.send(()).unwrap() };
        let (panicking, beside, ()) = tokio::join!(panicking, beside, released);
        assert!(matches!(panicking, Err(StoreError::Closed)), "{panicking:?}");
        assert!(matches!(beside, Err(StoreError::Transaction(_))), "{beside:?}");
        assert_eq!(count_tasks(&store, "TRUE").await, 0, "nothing of the group was committed");
        store.create_or_resume_task(&two).await.unwrap();
        let panicking_read = store.read(|_| -> Result<(), StoreError> { panic!("a bug in a read") }).await;
        assert!(matches!(panicking_read, Err(StoreError::Closed)), "{panicking_read:?}");
        store.task(1).await.unwrap();
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
        let own = store.write(|conn| Ok(conn.execute("INSERT INTO no_such_table VALUES (1)", [])?)).await;
        assert!(own.is_err());
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
        let ending = store.write(|conn| -> Result<(), StoreError> {
            conn.execute_batch("ROLLBACK")?;
            let full = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL);
            Err(rusqlite::Error::SqliteFailure(full, None).into())
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
        let probed: String = store
            .read(|conn| Ok(conn.query_row("SELECT probed_at FROM write_probe WHERE id = 1", [], |row| row.get(0))?))
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
        // Queued together while the writer is held up by the first write.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = store.write(move |_| Ok(held.recv().is_ok()));
        let good = store.create_or_resume_task(&one);
        let failing = store.write(|conn| {
            conn.execute("UPDATE upload_tasks SET status = 'finish'", [])?;
            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        });
        let also_good = store.create_or_resume_task(&two);
        let released = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            release.send(()).unwrap();
        };
        let ((), first, good, failing, also_good) = tokio::join!(released, first, good, failing, also_good);
        assert!(first.unwrap(), "the first write was held until the others were queued");
        assert!(matches!(failing, Err(StoreError::Sqlite(_))), "{failing:?}");
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

    /// Keeps the writer busy until the returned sender sends (or is dropped): writes handed in
    /// meanwhile wait in its queue.
    pub async fn hold_writer(store: &Store) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, holding) = tokio::sync::oneshot::channel();
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(move |_| {
                    let _ = started.send(());
                    let _ = held.recv();
                    Ok(())
                })
                .await
        });
        holding.await.unwrap();
        release
    }

    /// Lets the database grow by at most `pages` more pages (SQLite's `max_page_count`, on the
    /// writer's connection): a full disk, injected where a mount is not at hand.
    pub async fn limit_growth(store: &Store, pages: i64) {
        store
            .write(move |conn| {
                let now: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                Ok(conn.pragma_update(None, "max_page_count", now + pages)?)
            })
            .await
            .unwrap()
    }

    /// Makes every write that queues a callback fail, as a full or failing database would, until
    /// `allow_callbacks` (a temporary trigger on the writer's connection).
    pub async fn refuse_callbacks(store: &Store) {
        let sql = "CREATE TEMP TRIGGER refuse_callbacks BEFORE INSERT ON callback_outbox
                   BEGIN SELECT RAISE(ABORT, 'injected fault: the database cannot take the callback'); END";
        store.write(move |conn| Ok(conn.execute_batch(sql)?)).await.unwrap()
    }

    pub async fn allow_callbacks(store: &Store) {
        store.write(|conn| Ok(conn.execute_batch("DROP TRIGGER temp.refuse_callbacks")?)).await.unwrap()
    }

    /// A store on a fresh database file in its own temp dir.
    pub async fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        (Store::open(&url, Durability::Process, 2).await.unwrap(), dir)
    }
}
