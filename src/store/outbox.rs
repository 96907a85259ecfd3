//! The `callback_outbox` table: callbacks waiting for a 2xx from their business server.

use std::time::{Duration, SystemTime};

use super::{now, timestamp, SqliteStore, StoreError};

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
    pub attempts: u64,
}

/// What the outbox holds for its worker now.
#[derive(Debug)]
pub struct DueCallbacks {
    pub due: Vec<DueCallback>,
    /// How long until the next callback that is not due yet is due; `None` when there is none.
    pub next_due_in: Option<Duration>,
}

impl SqliteStore {
    /// Pending callbacks whose next attempt is due, oldest first (at most `limit`), and how long
    /// until the next of the others is due (`None`: no other is pending). The outbox worker asks
    /// this once per round.
    pub async fn due_callbacks(&self, limit: u32) -> Result<DueCallbacks, StoreError> {
        let now = now();
        let due = sqlx::query_as!(
            DueCallback,
            r#"SELECT callback_id AS "callback_id!", task_id, notify_url, body, signature, attempts AS "attempts: u64"
               FROM callback_outbox
               WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2"#,
            now,
            limit
        )
        .fetch_all(&mut *self.reader().await?)
        .await?;
        let next = sqlx::query_scalar!(
            r#"SELECT MIN(next_attempt_at) AS "next: String" FROM callback_outbox
               WHERE status = 'pending' AND next_attempt_at > ?1"#,
            now
        )
        .fetch_one(&mut *self.reader().await?)
        .await?;
        let next_due_in = next.map(|at| {
            humantime::parse_rfc3339(&at)
                .ok()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO)
        });
        Ok(DueCallbacks { due, next_due_in })
    }

    /// Marks callbacks delivered, all in one statement.
    pub async fn callbacks_delivered(&self, callback_ids: &[i64]) -> Result<(), StoreError> {
        if callback_ids.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(callback_ids).map_err(|e| StoreError::Unreadable(e.to_string()))?;
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                // Dialect: json_each takes the ids as one JSON text.
                sqlx::query!(
                    "UPDATE callback_outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = ?2,
                         last_error = NULL
                     WHERE callback_id IN (SELECT value FROM json_each(?1))",
                    ids,
                    now
                )
                .execute(conn)
                .await?;
                Ok(())
            })
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
        let (error, next) = (error.to_owned(), timestamp(next));
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query!(
                    "UPDATE callback_outbox SET status = ?2, attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4
                     WHERE callback_id = ?1",
                    callback_id,
                    status,
                    next,
                    error
                )
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::TaskStatus;
    use crate::store::tasks::tests::new_task;
    use crate::store::test_support::temp_store;
    use crate::store::{Store, TaskEnding};

    /// Creates a task of `file_size` bytes and ends it with a callback; returns its id.
    pub(crate) async fn ended_with_callback(store: &crate::store::Store, file_size: u64) -> i64 {
        let (task, _) = store.create_or_resume_task(&new_task(file_size)).await.unwrap();
        let (ending, callback) = ending_with_callback(TaskStatus::Finish);
        let ended = store.end_task(task.task_id, &[TaskStatus::Upload], &ending, &callback).await.unwrap();
        assert_eq!(ended, crate::store::StatusChange::Made);
        task.task_id
    }

    /// An ending in `status`, with a callback to nowhere.
    pub(crate) fn ending_with_callback(status: TaskStatus) -> (TaskEnding, NewCallback) {
        let ending = TaskEnding {
            status,
            final_path: None,
            error: None,
            idle_for: None,
            placed: None,
            instant_from: None,
            computed_md5: None,
        };
        let callback = NewCallback {
            ret_code: "0".into(),
            notify_url: "http://127.0.0.1:9/".into(),
            body: "{}".into(),
            signature: "s".into(),
            undeliverable: None,
        };
        (ending, callback)
    }

    #[tokio::test]
    async fn due_callbacks_come_with_how_long_until_the_next_of_the_others() {
        let (store, _dir) = temp_store().await;
        let none = store.due_callbacks(32).await.unwrap();
        assert!(none.due.is_empty() && none.next_due_in.is_none());
        ended_with_callback(&Store::Sqlite(store.clone()), 1).await;
        ended_with_callback(&Store::Sqlite(store.clone()), 2).await;
        let both = store.due_callbacks(32).await.unwrap();
        assert_eq!(both.due.len(), 2);
        assert_eq!(both.next_due_in, None, "nothing else is pending");
        let retried = both.due[0].callback_id;
        store.callback_attempt_failed(retried, "refused", Some(Duration::from_secs(60))).await.unwrap();
        let one = store.due_callbacks(32).await.unwrap();
        assert_eq!(one.due.iter().map(|c| c.callback_id).collect::<Vec<_>>(), vec![both.due[1].callback_id]);
        let next = one.next_due_in.unwrap();
        assert!(next > Duration::from_secs(55) && next <= Duration::from_secs(60), "{next:?}");
        assert_eq!(store.due_callbacks(1).await.unwrap().due.len(), 1, "at most the limit");
    }
}
