//! The only place SQL appears. SQLite holds the truth: tasks, received ranges, the callback outbox.
//!
//! One writer connection serialises every write (SQLite allows one writer at a time anyway, and a
//! single connection never meets SQLITE_BUSY from this process). It sits behind a FIFO mutex, not
//! in a one-connection pool: the pool takes a connection back in a task it spawns and wakes the
//! next waiter in another, and while those waited for a busy worker thread the writer sat idle
//! (the mutex gave W3 +12% to +17%, see docs/PERFORMANCE.md). Readers use their own pool and,
//! with WAL, never wait for the writer. Statements are prepared once per connection and cached.
//! The WAL is copied into the database file (checkpointed) by a connection of its own, called
//! a few times a second (`checkpoint`): a checkpoint fsyncs, and on the writer every one of them
//! stalled all writes for about 8 ms (8% of the time in W3, see docs/PERFORMANCE.md).
//! Queries are checked at run time: the tests exercise every one of them.

mod outbox;
mod ranges;
mod stats;
mod tasks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Decode, Sqlite, SqliteConnection};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::config::Durability;
use crate::domain::TaskStatus;

pub use outbox::{DueCallback, NewCallback};
pub use ranges::BlockCommit;
pub use tasks::{NewTask, Task, TaskEnding, TaskSpec};

/// Errors of this layer: the database failed, or holds something this version cannot read.
pub type StoreError = sqlx::Error;

/// The longest wait for the writer connection before a write fails (as sqlx's pool would): a
/// use of it that never ends must show as errors, not stop every write for good.
const WRITER_WAIT: Duration = Duration::from_secs(30);

/// WAL pages after which the writer checkpoints by itself: only a backstop, for when nothing
/// calls `checkpoint` (SQLite's default is 1,000).
const WRITER_CHECKPOINT_PAGES: u32 = 20_000;

#[derive(Clone)]
pub struct Store {
    /// `None` once closed.
    writer: Arc<Mutex<Option<SqliteConnection>>>,
    reader: SqlitePool,
    checkpointer: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) the database at `url` and applies the migrations.
    pub async fn open(url: &str, durability: Durability, readers: u32) -> Result<Self, StoreError> {
        let synchronous = match durability {
            // In WAL mode NORMAL commits survive a process crash; FULL also fsyncs each commit.
            Durability::Process => SqliteSynchronous::Normal,
            Durability::Power => SqliteSynchronous::Full,
        };
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
        }
        let mut writer =
            options.clone().pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string()).connect().await?;
        sqlx::migrate!("./migrations").run(&mut writer).await?;
        let writer = Arc::new(Mutex::new(Some(writer)));
        let checkpointer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        let reader =
            SqlitePoolOptions::new().max_connections(readers.max(1)).connect_with(options.read_only(true)).await?;
        Ok(Self { writer, reader, checkpointer })
    }

    /// Copies what the WAL holds into the database file, as far as no reader still needs it,
    /// without waiting for (or holding up) the writer. Returns the frames in the WAL and how many
    /// of them are now in the database file.
    pub async fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
        let (_busy, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&self.checkpointer).await?;
        Ok((frames, copied))
    }

    /// The writer connection, once every earlier use of it has ended (first come, first served).
    async fn writer(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, StoreError> {
        let locked =
            tokio::time::timeout(WRITER_WAIT, self.writer.lock()).await.map_err(|_| StoreError::PoolTimedOut)?;
        MutexGuard::try_map(locked, Option::as_mut).map_err(|_| StoreError::PoolClosed)
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.checkpointer.close().await;
        if let Some(writer) = self.writer.lock().await.take() {
            if let Err(e) = writer.close().await {
                tracing::warn!(error = %e, "closing the writer connection failed");
            }
        }
    }
}

/// Timestamps are ISO-8601 UTC text with milliseconds, so they compare as text.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn now() -> String {
    timestamp(SystemTime::now())
}

impl sqlx::Type<Sqlite> for TaskStatus {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <str as sqlx::Type<Sqlite>>::type_info()
    }
}

impl<'r> Decode<'r, Sqlite> for TaskStatus {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(text.parse::<TaskStatus>()?)
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
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut *store.writer().await.unwrap())
            .await
            .unwrap();
        assert_eq!(pages, i64::from(WRITER_CHECKPOINT_PAGES));
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store on a fresh database file in its own temp dir.
    pub async fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        (Store::open(&url, Durability::Process, 2).await.unwrap(), dir)
    }
}
