//! The writer: one sqlx connection, driven by one task, that commits in groups. It takes every
//! write waiting in its queue, runs each in a savepoint of one transaction, commits once, and only
//! then replies to each. Writes that come together share one commit (and the pages they all touch
//! are written to the WAL once), and a write that fails rolls back only its own savepoint.
//!
//! A write handed in runs whole or not at all, whatever becomes of the request that handed it in:
//! the task runs it, not the caller.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{lock, StoreError, TransactionFailure};

/// The most writes committed together, so that one commit's replies do not wait on too many.
const MOST_WRITES_PER_COMMIT: usize = 64;

/// A write: run in a savepoint (`None` when it could not get one), it says whether its changes
/// stay (or why not), and hands back its reply, to be sent once the commit is known.
type WriteJob = Box<dyn for<'c> FnOnce(Option<&'c mut SqliteConnection>) -> BoxFuture<'c, (Kept, WriteReply)> + Send>;
/// `Ok` when the write's changes stay; else how it failed.
type Kept = Result<(), TransactionFailure>;
/// Takes the outcome of the write's transaction: committed, or why not.
type WriteReply = Box<dyn FnOnce(Result<(), TransactionFailure>) + Send>;

pub(super) struct Writer {
    /// `None` once stopped. Sends hold the lock, so none can slip in behind the stop.
    queue: Mutex<Option<mpsc::UnboundedSender<WriteJob>>>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the task that owns `conn`, on the current runtime.
    pub fn start(conn: SqliteConnection) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve_writes(conn, jobs));
        Self { queue: Mutex::new(Some(queue)), task: tokio::sync::Mutex::new(Some(task)) }
    }

    /// Runs `write` in a savepoint of the writer's next transaction, and returns its result once
    /// that transaction is committed. If `write` fails, its changes are rolled back and the other
    /// writes of the transaction go on; it gets its own error, also when that ended the
    /// transaction. `write` may also roll its savepoint back itself (`undo`) and succeed, having
    /// written nothing.
    pub async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        let (reply, outcome) = oneshot::channel();
        let job: WriteJob = Box::new(move |savepoint: Option<&mut SqliteConnection>| {
            Box::pin(async move {
                let result = match savepoint {
                    Some(conn) => Some(write(conn).await),
                    None => None,
                };
                let kept = match &result {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(TransactionFailure::from(e)),
                    None => Err(TransactionFailure::new("not run")),
                };
                let reply = move |committed: Result<(), TransactionFailure>| {
                    let outcome = match (committed, result) {
                        (_, Some(Err(e))) => Err(e),
                        (Err(failure), _) => Err(StoreError::Transaction(failure)),
                        (Ok(()), Some(Ok(value))) => Ok(value),
                        (Ok(()), None) => Err(StoreError::Closed),
                    };
                    drop(reply.send(outcome));
                };
                (kept, Box::new(reply) as WriteReply)
            })
        });
        {
            let queue = lock(&self.queue);
            queue.as_ref().ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)?;
        }
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the writes already queued finish, then closes the connection. Writes handed in
    /// afterwards fail with `Closed`.
    pub async fn stop(&self) {
        // With the only sender gone, the task takes what is left in the queue and ends.
        drop(lock(&self.queue).take());
        if let Some(task) = self.task.lock().await.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the database writer did not end cleanly");
            }
        }
    }
}

/// Undoes what the write has written so far in its savepoint.
pub(super) async fn undo(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    run(conn, "ROLLBACK TO write").await.map_err(StoreError::from)
}

/// Runs a statement that returns no rows (prepared once per connection, as sqlx caches them).
async fn run(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(drop)
}

async fn serve_writes(mut conn: SqliteConnection, mut jobs: mpsc::UnboundedReceiver<WriteJob>) {
    while let Some(first) = jobs.recv().await {
        let mut writes = vec![first];
        while writes.len() < MOST_WRITES_PER_COMMIT {
            match jobs.try_recv() {
                Ok(write) => writes.push(write),
                Err(_) => break,
            }
        }
        commit_together(&mut conn, writes).await;
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "the database writer's connection did not close cleanly");
    }
}

/// Runs `writes` in one transaction, each in a savepoint of its own, and replies to each once the
/// transaction is committed or failed. A write that fails has only its savepoint rolled back; when
/// the statements around the writes fail, or a write panics, nothing of the group is committed.
///
/// The statements between two writes (the one's RELEASE, the next one's SAVEPOINT) and those
/// that begin and end the transaction go to the connection together, one round trip to its thread
/// where there were up to three.
async fn commit_together(conn: &mut SqliteConnection, writes: Vec<WriteJob>) {
    let mut replies = Vec::with_capacity(writes.len());
    // Dialect: SQLite takes the write lock at BEGIN IMMEDIATE, waiting for it up to the busy
    // timeout; a transaction begun by its first statement (a SAVEPOINT alone) that reads first
    // would fail at once if another connection (the checkpointer) held the lock at its first write.
    let mut glue = String::from("BEGIN IMMEDIATE; ");
    // The failure of the last write run, which is also why the group fails when the statements
    // after it fail: some errors (a full disk, say) roll the whole transaction back.
    let mut failed_write: Option<TransactionFailure> = None;
    let mut failed = None;
    let mut writes = writes.into_iter();
    for write in writes.by_ref() {
        glue.push_str("SAVEPOINT write");
        if let Err(e) = run_together(conn, &glue).await {
            replies.push(write(None).await.1);
            failed = Some(failed_write.take().unwrap_or_else(|| failure_of(e)));
            break;
        }
        let Ok((kept, reply)) = AssertUnwindSafe(write(Some(&mut *conn))).catch_unwind().await else {
            // Its reply went with it.
            failed = Some(TransactionFailure::new("a write panicked"));
            break;
        };
        replies.push(reply);
        failed_write = kept.err();
        glue =
            String::from(if failed_write.is_some() { "ROLLBACK TO write; RELEASE write; " } else { "RELEASE write; " });
    }
    // The writes after a failure are not run.
    for write in writes {
        replies.push(write(None).await.1);
    }
    let committed = match failed {
        Some(why) => Err(why),
        None => {
            glue.push_str("COMMIT");
            run_together(conn, &glue).await.map_err(|e| failed_write.take().unwrap_or_else(|| failure_of(e)))
        }
    };
    if committed.is_err() {
        // Some errors have rolled the transaction back already; then there is nothing left to roll
        // back.
        if let Err(e) = run(conn, "ROLLBACK").await {
            tracing::debug!(error = %e, "no transaction left to roll back");
        }
    }
    for reply in replies {
        reply(committed.clone());
    }
}

/// Runs statements that return no rows, in one round trip.
async fn run_together(conn: &mut SqliteConnection, statements: &str) -> Result<(), sqlx::Error> {
    sqlx::query(statements).execute(conn).await.map(drop)
}

fn failure_of(e: sqlx::Error) -> TransactionFailure {
    TransactionFailure::from(&StoreError::from(e))
}
