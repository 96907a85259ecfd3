//! Read-only questions for the operations endpoints: is the database answering, how many tasks
//! are open, how deep is the callback outbox.

use super::{SqliteStore, StoreError};
use crate::domain::TaskStatus;

impl SqliteStore {
    /// Reads a page of the database file through a reader connection.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query!("SELECT 1 AS one FROM upload_tasks LIMIT 1").fetch_optional(&mut *self.reader().await?).await?;
        Ok(())
    }

    /// How many tasks are in `upload`, `pause` and `verify` (statuses without tasks are left out).
    pub async fn open_task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT status AS "status: TaskStatus", COUNT(*) AS "tasks: u64" FROM upload_tasks
               WHERE status IN ('upload', 'pause', 'verify') GROUP BY status"#
        )
        .fetch_all(&mut *self.reader().await?)
        .await?;
        Ok(rows.into_iter().map(|row| (row.status, row.tasks)).collect())
    }

    /// Callbacks still to be delivered.
    pub async fn pending_callbacks(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query_scalar!(r#"SELECT COUNT(*) AS "pending: u64" FROM callback_outbox WHERE status = 'pending'"#)
            .fetch_one(&mut *self.reader().await?)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::TaskStatus;
    use crate::store::tasks::tests::new_task;
    use crate::store::test_support::temp_store;

    #[tokio::test]
    async fn counts_open_tasks_by_status() {
        let (store, _dir) = temp_store().await;
        store.ping().await.unwrap();
        assert!(store.open_task_counts().await.unwrap().is_empty());
        let (first, _) = store.create_or_resume_task(&new_task(10)).await.unwrap();
        store.create_or_resume_task(&new_task(11)).await.unwrap();
        store.create_or_resume_task(&new_task(12)).await.unwrap();
        store.change_status(first.task_id, TaskStatus::Upload, TaskStatus::Pause).await.unwrap();
        let mut counts = store.open_task_counts().await.unwrap();
        counts.sort_by_key(|(status, _)| status.as_str());
        assert_eq!(counts, vec![(TaskStatus::Pause, 1), (TaskStatus::Upload, 2)]);
        assert_eq!(store.pending_callbacks().await.unwrap(), 0);
    }
}
