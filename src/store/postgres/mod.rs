//! The store on PostgreSQL, for many fupload nodes on one database: the same tables and the same
//! `Store` API as on SQLite, and what the nodes share beyond them (`shared`): the claims of blocks
//! in flight, the finish of a task, the callbacks being sent, each held by one node under a lease.
//!
//! Every write is a transaction of its own on a pooled connection, run in a task of its own so
//! that it ends whole or not at all whatever becomes of the request that asked for it. Writes that
//! read a task's ranges and change them lock the task's row first (`FOR UPDATE`): two nodes'
//! blocks of one task commit one after the other, as the SQLite writer runs them.
//!
//! The statements are not checked at compile time (sqlx's macros check one database per crate,
//! SQLite's here): the store's tests and `tests/api` run on PostgreSQL in CI
//! (`scripts/postgres-tests.sh`).

mod ranges;
mod rest;
mod shared;
mod tasks;

pub use shared::SharedClaim;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use super::{now, StoreError, WriteOutcomes, WritesFailing};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a connection may take to come from the pool before the database counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections beside the readers' share: writes, and the shared claims' renewals.
const WRITE_CONNECTIONS: u32 = 4;

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The PostgreSQL store. Cheap to clone; every clone shares the pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Pooled>,
}

struct Pooled {
    pool: PgPool,
    writes: WriteOutcomes,
}

/// What a write asks of its transaction once it has run.
enum Written<T> {
    Commit(T),
    /// Nothing it did stays (a guarded change that found the task elsewhere).
    RollBack(T),
}

impl PgStore {
    /// Connects to the database `url` names, with a pool of `readers` + a few connections, and
    /// applies the migrations (PostgreSQL's migrator takes a lock: nodes starting together apply
    /// them once).
    pub async fn open(url: &str, readers: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|_| StoreError::BadUrl(url.to_owned()))?;
        // A write waits for a lock another session holds (a long transaction, a migration) as long
        // as on SQLite, then fails as busy: the client is told to come back.
        let lock_timeout = format!("{}ms", super::BUSY_TIMEOUT.as_millis());
        let options = options.options([("lock_timeout", lock_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(readers.max(1) + WRITE_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { inner: Arc::new(Pooled { pool, writes: WriteOutcomes::default() }) })
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Runs `write` in a transaction of its own, committed unless it asks otherwise, and keeps
    /// track of whether writes fail for the database's sake.
    async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<Written<T>, StoreError>> + Send + 'static,
    {
        let pool = self.inner.pool.clone();
        let outcome = tokio::spawn(async move {
            let mut transaction = pool.begin().await?;
            match write(&mut transaction).await? {
                Written::Commit(value) => {
                    transaction.commit().await?;
                    Ok(value)
                }
                Written::RollBack(value) => {
                    transaction.rollback().await?;
                    Ok(value)
                }
            }
        })
        .await
        // The write panicked: nothing of it was committed.
        .unwrap_or(Err(StoreError::Closed));
        self.inner.writes.record(&outcome);
        outcome
    }

    pub fn writes_failing(&self) -> Option<WritesFailing> {
        self.inner.writes.failing()
    }

    pub fn probe_write(&self) -> Option<BoxFuture<'_, Result<(), StoreError>>> {
        let in_flight = self.inner.writes.start_probe()?;
        Some(Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let _in_flight = in_flight;
                sqlx::query("UPDATE write_probe SET probed_at = $1 WHERE id = 1").bind(now()).execute(conn).await?;
                Ok(Written::Commit(()))
            })
        })))
    }

    /// Waits for the connections in use to come back, and closes them all.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

/// A count or size read back from a BIGINT column.
fn unsigned(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Unreadable(format!("stored count {value} is negative")))
}

/// A database of its own on a PostgreSQL server, for a test or a benchmark run: made by `create`,
/// dropped (with any connection still open to it) when this is dropped.
pub struct TempDatabase {
    /// The database's URL, for `database.url`.
    pub url: String,
    server_url: String,
    name: String,
}

impl TempDatabase {
    /// Makes a database with a random name on the server `server_url` names (any database of
    /// it: the new one replaces the path).
    pub async fn create(server_url: &str) -> Result<Self, StoreError> {
        use sqlx::Connection;
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let name = format!("fupload_test_{}", hex::encode(random));
        let mut server = PgConnection::connect(server_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut server).await?;
        server.close().await?;
        let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
        Ok(Self { url: format!("{base}/{name}"), server_url: server_url.to_owned(), name })
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Dropped where there may be no runtime, or one that must not block: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut server = PgConnection::connect(&server_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut server).await?;
                server.close().await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            tracing::warn!(database = %self.name, "the temporary database was not dropped");
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// The PostgreSQL server the tests may use (`postgres://user@host:port/db`), from
    /// `FUPLOAD_TEST_POSTGRES_URL`; `None` when it is not set (the tests that need one then
    /// say so and pass).
    pub fn server_url() -> Option<String> {
        std::env::var("FUPLOAD_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty())
    }

    /// A store on a database of its own on the test server.
    pub async fn temp_store() -> Option<(PgStore, TempDatabase)> {
        let Some(url) = server_url() else {
            eprintln!("FUPLOAD_TEST_POSTGRES_URL is not set: this test runs on SQLite only");
            return None;
        };
        let database = TempDatabase::create(&url).await.expect("create a test database");
        let store = PgStore::open(&database.url, 2).await.expect("open the test database");
        Some((store, database))
    }
}
