//! The `callback_outbox` table: callbacks waiting for a 2xx from their business server.

use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection};

use super::{now, timestamp, Store, StoreError};

/// A callback to queue with the task's ending.
#[derive(Debug, Clone)]
pub struct NewCallback {
    pub ret_code: String,
    pub notify_url: String,
    pub body: String,
    pub signature: String,
    /// Set when the callback cannot be sent at all (its business server is gone from the
    /// config): the row is written as `failed` with this error, for the record.
    pub undeliverable: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DueCallback {
    pub callback_id: i64,
    pub task_id: i64,
    pub notify_url: String,
    pub body: String,
    pub signature: String,
    pub attempts: i64,
}

pub(super) fn insert(conn: &Connection, task_id: i64, callback: &NewCallback, now: &str) -> Result<(), StoreError> {
    let status = if callback.undeliverable.is_some() { "failed" } else { "pending" };
    conn.prepare_cached(
        "INSERT INTO callback_outbox (task_id, ret_code, notify_url, body, signature, status, next_attempt_at,
             last_error, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7)",
    )?
    .execute(params![
        task_id,
        callback.ret_code,
        callback.notify_url,
        callback.body,
        callback.signature,
        status,
        now,
        callback.undeliverable
    ])?;
    Ok(())
}

impl Store {
    /// Pending callbacks whose next attempt is due, oldest first.
    pub async fn due_callbacks(&self, limit: u32) -> Result<Vec<DueCallback>, StoreError> {
        self.read(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT callback_id, task_id, notify_url, body, signature, attempts FROM callback_outbox
                 WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2",
            )?;
            let due = query
                .query_map(params![now(), limit], |row| {
                    Ok(DueCallback {
                        callback_id: row.get(0)?,
                        task_id: row.get(1)?,
                        notify_url: row.get(2)?,
                        body: row.get(3)?,
                        signature: row.get(4)?,
                        attempts: row.get(5)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(due)
        })
        .await
    }

    /// How long until the next pending callback is due; `None` when none is pending.
    pub async fn next_callback_due_in(&self) -> Result<Option<Duration>, StoreError> {
        let next: Option<String> = self
            .read(|conn| {
                let sql = "SELECT MIN(next_attempt_at) FROM callback_outbox WHERE status = 'pending'";
                Ok(conn.prepare_cached(sql)?.query_row([], |row| row.get(0))?)
            })
            .await?;
        Ok(next.map(|at| {
            humantime::parse_rfc3339(&at)
                .ok()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO)
        }))
    }

    /// Marks callbacks delivered, all in one statement.
    pub async fn callbacks_delivered(&self, callback_ids: &[i64]) -> Result<(), StoreError> {
        if callback_ids.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(callback_ids).map_err(|e| StoreError::Unreadable(e.to_string()))?;
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE callback_outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = ?2,
                     last_error = NULL
                 WHERE callback_id IN (SELECT value FROM json_each(?1))",
            )?
            .execute(params![ids, now()])?;
            Ok(())
        })
        .await
    }

    /// Records a failed attempt: the callback is tried again after `retry_in`, or, with `None`,
    /// gives up as `failed`. `last_error` stays visible either way.
    pub async fn callback_attempt_failed(
        &self,
        callback_id: i64,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (status, next) = match retry_in {
            Some(delay) => ("pending", SystemTime::now() + delay),
            None => ("failed", SystemTime::now()),
        };
        let error = error.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE callback_outbox SET status = ?2, attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4
                 WHERE callback_id = ?1",
            )?
            .execute(params![callback_id, status, timestamp(next), error])?;
            Ok(())
        })
        .await
    }
}
