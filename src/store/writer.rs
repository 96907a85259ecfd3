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
/// the savepoints themselves fail, or a write panics, nothing of the group is committed.
async fn commit_together(conn: &mut SqliteConnection, mut writes: Vec<WriteJob>) {
    if writes.len() == 1 {
        if let Some(write) = writes.pop() {
            return commit_alone(conn, write).await;
        }
    }
    let mut replies = Vec::with_capacity(writes.len());
    // Dialect: SQLite takes the write lock at BEGIN IMMEDIATE.
    let committed = match run(conn, "BEGIN IMMEDIATE").await {
        Ok(()) => {
            let mut writes = writes.into_iter();
            let mut failed = None;
            for write in writes.by_ref() {
                match run_in_savepoint(conn, write).await {
                    Ok(reply) => replies.push(reply),
                    Err((reply, why)) => {
                        replies.extend(reply);
                        failed = Some(why);
                        break;
                    }
                }
            }
            // The writes after a failure are not run.
            for write in writes {
                replies.push(write(None).await.1);
            }
            let ended = match failed {
                Some(why) => Err(why),
                None => run(conn, "COMMIT").await.map_err(|e| TransactionFailure::from(&StoreError::from(e))),
            };
            if ended.is_err() {
                // Some errors have rolled the transaction back already; then there is nothing
                // left to roll back.
                if let Err(e) = run(conn, "ROLLBACK").await {
                    tracing::debug!(error = %e, "no transaction left to roll back");
                }
            }
            ended
        }
        Err(e) => {
            for write in writes {
                replies.push(write(None).await.1);
            }
            Err(TransactionFailure::from(&StoreError::from(e)))
        }
    };
    for reply in replies {
        reply(committed.clone());
    }
}

/// Runs `write` in a savepoint that is its transaction: it begins one when none is open, and
/// releasing it commits. Two statements around a write alone instead of four.
async fn commit_alone(conn: &mut SqliteConnection, write: WriteJob) {
    let committed = match run_in_savepoint(conn, write).await {
        Ok(reply) => return reply(Ok(())),
        Err((reply, why)) => {
            if let Err(e) = run(conn, "ROLLBACK").await {
                tracing::debug!(error = %e, "no transaction left to roll back");
            }
            (reply, why)
        }
    };
    if let (Some(reply), why) = committed {
        reply(Err(why));
    }
}

/// Runs `write` in a savepoint of the open transaction, then keeps or rolls back what it wrote.
/// `Err` when the transaction can no longer be trusted: the savepoint could not begin or end, or
/// the write panicked (its reply went with it).
async fn run_in_savepoint(
    conn: &mut SqliteConnection,
    write: WriteJob,
) -> Result<WriteReply, (Option<WriteReply>, TransactionFailure)> {
    if let Err(e) = run(conn, "SAVEPOINT write").await {
        return Err((Some(write(None).await.1), TransactionFailure::from(&StoreError::from(e))));
    }
    let Ok((kept, reply)) = AssertUnwindSafe(write(Some(&mut *conn))).catch_unwind().await else {
        return Err((None, TransactionFailure::new("a write panicked")));
    };
    let ended = match kept {
        Ok(()) => run(conn, "RELEASE write").await.map_err(|e| TransactionFailure::from(&StoreError::from(e))),
        // Some errors (a full disk, say) make SQLite roll the whole transaction back, and the
        // savepoint with it: then the group fails, for this write's reason.
        Err(failure) => match run(conn, "ROLLBACK TO write").await {
            Ok(()) => run(conn, "RELEASE write").await.map_err(|e| TransactionFailure::from(&StoreError::from(e))),
            Err(_) => Err(failure),
        },
    };
    match ended {
        Ok(()) => Ok(reply),
        Err(failure) => Err((Some(reply), failure)),
    }
}
