//! The `upload_tasks` table: one row per task, its columns the task's history.

use std::time::{Duration, SystemTime};

use super::{now, outbox, timestamp, Store, StoreError};
use crate::domain::TaskStatus;

/// What a task is: fixed when it is created.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskSpec {
    pub upload_key: String,
    pub business_server: String,
    pub token_sha256: String,
    pub user_id: String,
    pub file_name: String,
    pub file_size: i64,
    pub file_md5: String,
    pub store_path: String,
    /// The resolved absolute directory the file goes to.
    pub store_dir: String,
    pub feedback_parameter: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Task {
    pub task_id: i64,
    #[sqlx(flatten)]
    pub spec: TaskSpec,
    pub tmp_path: String,
    pub status: TaskStatus,
    pub final_path: Option<String>,
    pub error: Option<String>,
}

/// A task to create; the rest is filled in by the store.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub spec: TaskSpec,
    /// Directory of the temp file, which is named after the task id.
    pub tmp_dir: String,
    /// `Upload`, or `Verify` for a file with nothing to receive.
    pub status: TaskStatus,
}

/// How a task ends: the final status and the columns that record it.
#[derive(Debug, Clone)]
pub struct TaskEnding {
    pub status: TaskStatus,
    pub final_path: Option<String>,
    pub error: Option<String>,
    /// Only end the task if it has also been idle this long (expiry: a block may just have come).
    pub idle_for: Option<Duration>,
}

const TASK_COLUMNS: &str = "task_id, upload_key, business_server, token_sha256, user_id, file_name, file_size, \
     file_md5, store_path, store_dir, feedback_parameter, tmp_path, status, final_path, error";

impl Store {
    /// The unfinished task with these same identifying fields, or a new one. Returns the task
    /// and whether it was created now.
    pub async fn create_or_resume_task(&self, new: &NewTask) -> Result<(Task, bool), StoreError> {
        let mut tx = self.writer.begin().await?;
        let existing = sqlx::query_as::<_, Task>(&format!(
            "SELECT {TASK_COLUMNS} FROM upload_tasks
             WHERE token_sha256 = ?1 AND user_id = ?2 AND file_md5 = ?3 AND file_size = ?4
               AND file_name = ?5 AND store_dir = ?6 AND status IN ('upload', 'pause', 'verify')
             ORDER BY task_id DESC LIMIT 1"
        ))
        .bind(&new.spec.token_sha256)
        .bind(&new.spec.user_id)
        .bind(&new.spec.file_md5)
        .bind(new.spec.file_size)
        .bind(&new.spec.file_name)
        .bind(&new.spec.store_dir)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(task) = existing {
            return Ok((task, false));
        }
        let now = now();
        let task_id: i64 = sqlx::query_scalar(
            "INSERT INTO upload_tasks (upload_key, business_server, token_sha256, user_id, file_name, file_size,
                 file_md5, store_path, store_dir, feedback_parameter, tmp_path, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '', ?11, ?12, ?12)
             RETURNING task_id",
        )
        .bind(&new.spec.upload_key)
        .bind(&new.spec.business_server)
        .bind(&new.spec.token_sha256)
        .bind(&new.spec.user_id)
        .bind(&new.spec.file_name)
        .bind(new.spec.file_size)
        .bind(&new.spec.file_md5)
        .bind(&new.spec.store_path)
        .bind(&new.spec.store_dir)
        .bind(&new.spec.feedback_parameter)
        .bind(new.status.as_str())
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        let tmp_path = format!("{}/task-{task_id}.part", new.tmp_dir.trim_end_matches('/'));
        let task = sqlx::query_as::<_, Task>(&format!(
            "UPDATE upload_tasks SET tmp_path = ?2 WHERE task_id = ?1 RETURNING {TASK_COLUMNS}"
        ))
        .bind(task_id)
        .bind(&tmp_path)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((task, true))
    }

    pub async fn task(&self, task_id: i64) -> Result<Option<Task>, StoreError> {
        sqlx::query_as::<_, Task>(&format!("SELECT {TASK_COLUMNS} FROM upload_tasks WHERE task_id = ?1"))
            .bind(task_id)
            .fetch_optional(&self.reader)
            .await
    }

    /// The task's status, read by the writer so that it sees the latest commit.
    pub(super) async fn status_of(
        conn: &mut sqlx::SqliteConnection,
        task_id: i64,
    ) -> Result<Option<TaskStatus>, StoreError> {
        sqlx::query_scalar("SELECT status FROM upload_tasks WHERE task_id = ?1")
            .bind(task_id)
            .fetch_optional(conn)
            .await
    }

    /// Moves the task from `from` to `to`. `Err(current)` when the task was not in `from`
    /// (`None` if it does not exist); the change and the check are one statement, so racing
    /// requests cannot both make it.
    pub async fn change_status(
        &self,
        task_id: i64,
        from: TaskStatus,
        to: TaskStatus,
    ) -> Result<Result<(), Option<TaskStatus>>, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let changed =
            sqlx::query("UPDATE upload_tasks SET status = ?3, updated_at = ?4 WHERE task_id = ?1 AND status = ?2")
                .bind(task_id)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(now())
                .execute(&mut *conn)
                .await?
                .rows_affected();
        if changed == 1 {
            Ok(Ok(()))
        } else {
            Ok(Err(Self::status_of(&mut conn, task_id).await?))
        }
    }

    /// Ends a task that is in one of `from`, and queues its callback, in one transaction.
    /// `Err(current)` when it was not in `from`, and nothing is written.
    pub async fn end_task(
        &self,
        task_id: i64,
        from: &[TaskStatus],
        ending: &TaskEnding,
        callback: &outbox::NewCallback,
    ) -> Result<Result<(), Option<TaskStatus>>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let current = Self::status_of(&mut tx, task_id).await?;
        if !current.is_some_and(|status| from.contains(&status)) {
            return Ok(Err(current));
        }
        if let Some(idle) = ending.idle_for {
            let last_activity: String = sqlx::query_scalar("SELECT updated_at FROM upload_tasks WHERE task_id = ?1")
                .bind(task_id)
                .fetch_one(&mut *tx)
                .await?;
            if last_activity >= cutoff(idle) {
                return Ok(Err(current));
            }
        }
        let now = now();
        sqlx::query(
            "UPDATE upload_tasks SET status = ?2, final_path = ?3, error = ?4, updated_at = ?5, ended_at = ?5
             WHERE task_id = ?1",
        )
        .bind(task_id)
        .bind(ending.status.as_str())
        .bind(&ending.final_path)
        .bind(&ending.error)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        outbox::insert(&mut tx, task_id, callback, &now).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Ends a task that could not be set up (its temp file could not be made) without a callback:
    /// the business server got the error as the reply to its create request.
    pub async fn record_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE upload_tasks SET status = 'fail', error = ?2, updated_at = ?3, ended_at = ?3 WHERE task_id = ?1",
        )
        .bind(task_id)
        .bind(error)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Tasks in `upload` or `pause` with no activity for `idle`.
    pub async fn idle_tasks(&self, idle: Duration) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT task_id FROM upload_tasks WHERE status IN ('upload', 'pause') AND updated_at < ?1 ORDER BY task_id",
        )
        .bind(cutoff(idle))
        .fetch_all(&self.reader)
        .await
    }

    pub async fn tasks_in_status(&self, status: TaskStatus) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar("SELECT task_id FROM upload_tasks WHERE status = ?1 ORDER BY task_id")
            .bind(status.as_str())
            .fetch_all(&self.reader)
            .await
    }
}

/// The timestamp `idle` ago.
fn cutoff(idle: Duration) -> String {
    timestamp(SystemTime::now().checked_sub(idle).unwrap_or(SystemTime::UNIX_EPOCH))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    pub(crate) fn new_task(file_size: i64) -> NewTask {
        NewTask {
            spec: TaskSpec {
                upload_key: "k".repeat(32),
                business_server: "cp1".into(),
                token_sha256: "t".into(),
                user_id: "123".into(),
                file_name: "hello.mp4".into(),
                file_size,
                file_md5: "0".repeat(32),
                store_path: "hello/".into(),
                store_dir: "/store/hello".into(),
                feedback_parameter: "{\"a\": 1}".into(),
            },
            tmp_dir: "/tmp/x/".into(),
            status: TaskStatus::Upload,
        }
    }

    #[tokio::test]
    async fn create_resumes_the_unfinished_task_with_the_same_fields() {
        let (store, _dir) = temp_store().await;
        let (first, created) = store.create_or_resume_task(&new_task(10)).await.unwrap();
        assert!(created);
        assert_eq!(first.tmp_path, format!("/tmp/x/task-{}.part", first.task_id));
        assert_eq!(first.spec.feedback_parameter, "{\"a\": 1}");
        let (again, created) = store.create_or_resume_task(&new_task(10)).await.unwrap();
        assert!(!created);
        assert_eq!(again.task_id, first.task_id);
        let (other, created) = store.create_or_resume_task(&new_task(11)).await.unwrap();
        assert!(created);
        assert_ne!(other.task_id, first.task_id);
    }

    #[tokio::test]
    async fn status_changes_are_guarded() {
        let (store, _dir) = temp_store().await;
        let (task, _) = store.create_or_resume_task(&new_task(10)).await.unwrap();
        let id = task.task_id;
        assert_eq!(store.change_status(id, TaskStatus::Upload, TaskStatus::Pause).await.unwrap(), Ok(()));
        assert_eq!(
            store.change_status(id, TaskStatus::Upload, TaskStatus::Pause).await.unwrap(),
            Err(Some(TaskStatus::Pause))
        );
        assert_eq!(store.change_status(999, TaskStatus::Upload, TaskStatus::Pause).await.unwrap(), Err(None));
        assert_eq!(store.task(id).await.unwrap().unwrap().status, TaskStatus::Pause);
    }
}
