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

mod migrations;
mod outbox;
mod ranges;
mod stats;
mod tasks;
mod threads;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};

use crate::config::Durability;
use crate::domain::TaskStatus;
use threads::{Readers, WriteSavepoint, Writer};

pub use outbox::{DueCallback, DueCallbacks, NewCallback};
pub use ranges::BlockCommit;
pub use tasks::{NewTask, Task, TaskEnding, TaskSpec};

/// Errors of this layer: the database failed, holds something this version cannot read, or the
/// store is closed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction a write ran in could not begin, keep the write, or commit.
    #[error("the write was not committed: {0}")]
    Transaction(String),
    #[error("the database holds what this version cannot read: {0}")]
    Unreadable(String),
    #[error("database.url {0:?} is not sqlite://<path of the database file>")]
    BadUrl(String),
    #[error("the store is closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How long a connection waits for a lock another process holds (say, a backup) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL pages after which the writer checkpoints by itself: only a backstop, for when nothing
/// calls `checkpoint` (SQLite's default is 1,000).
const WRITER_CHECKPOINT_PAGES: u32 = 20_000;

/// Prepared statements kept per connection: more than the store has.
const CACHED_STATEMENTS: usize = 64;

/// The store. Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct Store {
    inner: std::sync::Arc<Connections>,
}

struct Connections {
    writer: Writer,
    readers: Readers,
    checkpointer: Readers,
}

impl Store {
    /// Opens (creating if missing) the database at `url` (`sqlite://<path>`) and applies the
    /// migrations.
    pub async fn open(url: &str, durability: Durability, readers: u32) -> Result<Self, StoreError> {
        let path = database_path(url)?;
        let inner = tokio::task::spawn_blocking(move || Connections::open(&path, durability, readers.max(1)))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        Ok(Self { inner: std::sync::Arc::new(inner) })
    }

    /// Copies what the WAL holds into the database file, as far as no reader still needs it,
    /// without waiting for (or holding up) the writer. Returns the frames in the WAL and how many
    /// of them are now in the database file.
    pub async fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
        self.inner
            .checkpointer
            .read(|conn| {
                let (_busy, frames, copied): (i64, i64, i64) =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?;
                Ok((frames, copied))
            })
            .await
    }

    /// Runs `write` in the writer's next transaction (see `threads`).
    async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteSavepoint) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(write).await
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

impl Connections {
    fn open(path: &Path, durability: Durability, readers: u32) -> Result<Self, StoreError> {
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
        migrations::apply(&mut writer)?;
        let checkpointer = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE, synchronous)?;
        let readers = (0..readers)
            .map(|_| connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY, synchronous))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            writer: Writer::start_writer(writer)?,
            readers: Readers::start_readers("sqlite-reader", readers)?,
            checkpointer: Readers::start_readers("sqlite-checkpoint", vec![checkpointer])?,
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
        let (frames, copied) = store.checkpoint().await.unwrap();
        assert!(frames > 0, "the create went to the WAL");
        assert_eq!(copied, frames);
        let pages: i64 =
            store.write(|conn| Ok(conn.query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))?)).await.unwrap();
        assert_eq!(pages, i64::from(WRITER_CHECKPOINT_PAGES));
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
        let released = async { release.send(()).unwrap() };
        let ((), panicking, beside) = tokio::join!(released, panicking, beside);
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
        assert!(huge.is_err(), "a megabyte does not fit in 8 pages");
        for (filter, answer) in [("file_size = 2", small), ("file_size = 4", later)] {
            let recorded = count_tasks(&store, filter).await;
            assert_eq!(recorded == 1, answer.is_ok(), "the write with {filter} answered {answer:?}");
        }
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
