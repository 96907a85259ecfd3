//! Read-only questions for the operations endpoints: is the database answering, how many tasks
//! are open, how deep is the callback outbox.

use super::{Store, StoreError};
use crate::domain::TaskStatus;

impl Store {
    /// Reads a page of the database file through a reader connection.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT 1 FROM upload_tasks LIMIT 1")?.query([])?.next()?;
            Ok(())
        })
        .await
    }

    /// How many tasks are in `upload`, `pause` and `verify` (statuses without tasks are left out).
    pub async fn open_task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        self.read(|conn| {
            let mut query = conn.prepare_cached(
                "SELECT status, COUNT(*) FROM upload_tasks WHERE status IN ('upload', 'pause', 'verify') GROUP BY status",
            )?;
            let counts = query
                .query_map([], |row| Ok((row.get(0)?, u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0))))?
                .collect::<Result<_, _>>()?;
            Ok(counts)
        })
        .await
    }

    /// Callbacks still to be delivered.
    pub async fn pending_callbacks(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let sql = "SELECT COUNT(*) FROM callback_outbox WHERE status = 'pending'";
            let n: i64 = conn.prepare_cached(sql)?.query_row([], |row| row.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
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
        store.change_status(first.task_id, TaskStatus::Upload, TaskStatus::Pause).await.unwrap().unwrap();
        let mut counts = store.open_task_counts().await.unwrap();
        counts.sort_by_key(|(status, _)| status.as_str());
        assert_eq!(counts, vec![(TaskStatus::Pause, 1), (TaskStatus::Upload, 2)]);
        assert_eq!(store.pending_callbacks().await.unwrap(), 0);
    }
}
