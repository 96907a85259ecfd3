//! SQLite connections, each on a thread of its own. A caller hands a connection's thread a closure
//! and awaits its result: a whole transaction is one hand-off, where an async driver (sqlx) made
//! every statement one, each waking two threads (docs/PERFORMANCE.md).
//!
//! The writer thread commits in groups: it takes every write waiting in its queue, runs each in a
//! savepoint of one transaction, commits once, and only then replies to each. Writes that come
//! together share one commit (and the pages they all touch are written to the WAL once), and a
//! write that fails rolls back only its own savepoint. The statements that begin and end the
//! transaction and the savepoints are prepared once: rusqlite's `Transaction` and `Savepoint`
//! parse them again at each use, 1.2% of the server's CPU in W3 (docs/PERFORMANCE.md).

use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{StoreError, TransactionFailure};

/// The most writes committed together, so that one commit's replies do not wait on too many.
const MOST_WRITES_PER_COMMIT: usize = 64;

/// A write: run in a savepoint (`None` when it could not get one), it says whether its changes
/// stay (or why not), and hands back its reply, to be sent once the commit is known.
type WriteJob = Box<dyn FnOnce(Option<&mut WriteSavepoint>) -> (Kept, WriteReply) + Send>;
/// `Ok` when the write's changes stay; else how it failed.
type Kept = Result<(), TransactionFailure>;
/// Takes the outcome of the write's transaction: committed, or why not.
type WriteReply = Box<dyn FnOnce(Result<(), TransactionFailure>) + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The writer's connection inside a write's savepoint.
pub struct WriteSavepoint<'c> {
    conn: &'c Connection,
}

impl Deref for WriteSavepoint<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl WriteSavepoint<'_> {
    /// Undoes what the write has written so far.
    pub fn rollback(&mut self) -> rusqlite::Result<()> {
        run(self.conn, "ROLLBACK TO write")
    }
}

/// Runs a statement that returns no rows, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Threads that each own a connection, taking work from one queue.
pub(super) struct ConnectionThreads<J> {
    /// `None` once stopped. Sends hold the lock, so none can slip in behind the stop.
    queue: Mutex<Option<flume::Sender<J>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub(super) type Writer = ConnectionThreads<WriteJob>;
pub(super) type Readers = ConnectionThreads<ReadJob>;

impl<J: Send + 'static> ConnectionThreads<J> {
    fn start(
        name: &str,
        connections: Vec<Connection>,
        serve: fn(Connection, flume::Receiver<J>),
    ) -> Result<Self, StoreError> {
        let (queue, jobs) = flume::unbounded();
        let threads = connections
            .into_iter()
            .map(|conn| {
                let jobs = jobs.clone();
                std::thread::Builder::new().name(name.to_owned()).spawn(move || serve(conn, jobs))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { queue: Mutex::new(Some(queue)), threads: Mutex::new(threads) })
    }

    fn send(&self, job: J) -> Result<(), StoreError> {
        let queue = lock(&self.queue);
        queue.as_ref().ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)
    }

    /// Lets the work already queued finish, then closes the connections and ends the threads.
    /// Work handed in afterwards fails with `Closed`.
    pub async fn stop(&self) {
        // With the only sender gone, each thread takes what is left in the queue and ends.
        drop(lock(&self.queue).take());
        let threads = std::mem::take(&mut *lock(&self.threads));
        let joined = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())));
        if let Err(e) = joined.await {
            tracing::warn!(error = %e, "a database thread did not end cleanly");
        }
    }
}

impl Readers {
    pub fn start_readers(name: &str, connections: Vec<Connection>) -> Result<Self, StoreError> {
        Self::start(name, connections, serve_reads)
    }

    /// Runs `read` on one of the connections.
    pub async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, outcome) = oneshot::channel();
        self.send(Box::new(move |conn| drop(reply.send(read(conn)))))?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }
}

impl Writer {
    pub fn start_writer(conn: Connection) -> Result<Self, StoreError> {
        Self::start("sqlite-writer", vec![conn], serve_writes)
    }

    /// Runs `write` in a savepoint of the writer's next transaction, and returns its result once
    /// that transaction is committed. If `write` fails, its changes are rolled back and the other
    /// writes of the transaction go on; it gets its own error, also when that ended the
    /// transaction. `write` may also roll its savepoint back itself and succeed, having written
    /// nothing.
    pub async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteSavepoint) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, outcome) = oneshot::channel();
        self.send(Box::new(move |savepoint: Option<&mut WriteSavepoint>| {
            let result = savepoint.map(write);
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
        }))?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }
}

/// A lock that a panic elsewhere does not poison for good: what it guards stays consistent.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Each read runs in autocommit (no read transaction outlives it), so it sees every commit that
/// returned before it began: a block's plan relies on that (docs/RELIABILITY.md, section 9).
fn serve_reads(conn: Connection, jobs: flume::Receiver<ReadJob>) {
    for read in jobs.iter() {
        // A read that panics loses its reply (its caller gets `Closed`), not the thread.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| read(&conn)));
    }
}

fn serve_writes(conn: Connection, jobs: flume::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut writes = vec![first];
        writes.extend(jobs.try_iter().take(MOST_WRITES_PER_COMMIT - 1));
        commit_together(&conn, writes);
    }
}

/// Runs `writes` in one transaction, each in a savepoint of its own, and replies to each once the
/// transaction is committed or failed. A write that fails has only its savepoint rolled back; when
/// the savepoints themselves fail, or a write panics, nothing of the group is committed.
fn commit_together(conn: &Connection, writes: Vec<WriteJob>) {
    let mut replies = Vec::with_capacity(writes.len());
    let committed = match run(conn, "BEGIN IMMEDIATE") {
        Ok(()) => {
            let mut writes = writes.into_iter();
            let failed = writes.by_ref().find_map(|write| match run_in_savepoint(conn, write) {
                Ok(reply) => {
                    replies.push(reply);
                    None
                }
                Err((reply, why)) => {
                    replies.extend(reply);
                    Some(why)
                }
            });
            // The writes after a failure are not run.
            replies.extend(writes.map(|write| write(None).1));
            let ended = match failed {
                Some(why) => Err(why),
                None => run(conn, "COMMIT").map_err(TransactionFailure::from),
            };
            if ended.is_err() && !conn.is_autocommit() {
                if let Err(e) = run(conn, "ROLLBACK") {
                    tracing::error!(error = %e, "cannot roll back a failed group of writes");
                }
            }
            ended
        }
        Err(e) => {
            replies.extend(writes.into_iter().map(|write| write(None).1));
            Err(e.into())
        }
    };
    for reply in replies {
        reply(committed.clone());
    }
}

/// Runs `write` in a savepoint of the open transaction, then keeps or rolls back what it wrote.
/// `Err` when the transaction can no longer be trusted: the savepoint could not begin or end, or
/// the write panicked (its reply went with it).
fn run_in_savepoint(
    conn: &Connection,
    write: WriteJob,
) -> Result<WriteReply, (Option<WriteReply>, TransactionFailure)> {
    if let Err(e) = run(conn, "SAVEPOINT write") {
        return Err((Some(write(None).1), e.into()));
    }
    let mut savepoint = WriteSavepoint { conn };
    let Ok((kept, reply)) = panic::catch_unwind(AssertUnwindSafe(|| write(Some(&mut savepoint)))) else {
        return Err((None, TransactionFailure::new("a write panicked")));
    };
    let ended = match kept {
        Ok(()) => run(conn, "RELEASE write").map_err(TransactionFailure::from),
        // Some errors (a full disk, say) make SQLite roll the whole transaction back. A savepoint
        // begun now would be a transaction of its own, and commit the next write whatever came
        // of the rest: the group fails, for this write's reason.
        Err(failure) if conn.is_autocommit() => Err(failure),
        Err(_) => savepoint.rollback().and_then(|()| run(conn, "RELEASE write")).map_err(TransactionFailure::from),
    };
    match ended {
        Ok(()) => Ok(reply),
        Err(failure) => Err((Some(reply), failure)),
    }
}
