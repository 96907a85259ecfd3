//! The read-only connections, each serving one read at a time. sqlx's `SqlitePool` would do, but
//! it hands a connection back through a task it spawns, which first pings the connection (a round
//! trip to its thread): that doubled the cost of every read.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::StoreError;

pub(super) struct Readers {
    /// `None` once closed.
    connections: Vec<Mutex<Option<SqliteConnection>>>,
    /// Where the next read starts looking for a free connection.
    next: AtomicUsize,
}

/// A reader connection, held for one read.
pub(super) type Reader<'a> = MappedMutexGuard<'a, SqliteConnection>;

impl Readers {
    pub fn new(connections: Vec<SqliteConnection>) -> Self {
        Self {
            connections: connections.into_iter().map(|conn| Mutex::new(Some(conn))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A free connection, or, when all are busy, the next one in turn once it is free.
    pub async fn acquire(&self) -> Result<Reader<'_>, StoreError> {
        let count = self.connections.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let free = (0..count).find_map(|i| self.connections[(start + i) % count].try_lock().ok());
        let held = match free {
            Some(held) => held,
            None => self.connections[start % count].lock().await,
        };
        MutexGuard::try_map(held, Option::as_mut).map_err(|_| StoreError::Closed)
    }

    /// Waits for the reads under way, then closes every connection.
    pub async fn close(&self) {
        for connection in &self.connections {
            if let Some(conn) = connection.lock().await.take() {
                if let Err(e) = conn.close().await {
                    tracing::warn!(error = %e, "a reader connection did not close cleanly");
                }
            }
        }
    }
}
