//! The `upload_tasks` table: one row per task, its columns the task's history.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sqlx::Connection;

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
    pub tmp_dir: String,
    /// Bytes received so far (the sum of its received ranges).
    pub received_bytes: i64,
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
     file_md5, store_path, store_dir, feedback_parameter, tmp_dir, received_bytes, status, final_path, error";

impl Task {
    /// The temp file the task's blocks are written into.
    pub fn tmp_path(&self) -> PathBuf {
        Path::new(&self.tmp_dir).join(format!("task-{}.part", self.task_id))
    }
}

impl Store {
    /// The unfinished task with these same identifying fields, or a new one. Returns the task
    /// and whether it was created now. A unique index keeps one unfinished task per identity,
    /// so racing creates of the same file end with the same task.
    pub async fn create_or_resume_task(&self, new: &NewTask) -> Result<(Task, bool), StoreError> {
        // The open task found on conflict may end before it is read back: then insert again.
        for _ in 0..3 {
            if let Some(created) = self.insert_task(new).await? {
                return Ok((created, true));
            }
            let existing = sqlx::query_as::<_, Task>(&format!(
                "SELECT {TASK_COLUMNS} FROM upload_tasks
                 WHERE token_sha256 = ?1 AND user_id = ?2 AND file_md5 = ?3 AND file_size = ?4
                   AND file_name = ?5 AND store_dir = ?6 AND status IN ('upload', 'pause', 'verify')"
            ))
            .bind(&new.spec.token_sha256)
            .bind(&new.spec.user_id)
            .bind(&new.spec.file_md5)
            .bind(new.spec.file_size)
            .bind(&new.spec.file_name)
            .bind(&new.spec.store_dir)
            .fetch_optional(&mut *self.writer().await?)
            .await?;
            if let Some(task) = existing {
                return Ok((task, false));
            }
        }
        Err(StoreError::Protocol("an unfinished task kept appearing and ending during a create".into()))
    }

    /// Inserts the task unless an unfinished one with the same identity exists (`None`).
    async fn insert_task(&self, new: &NewTask) -> Result<Option<Task>, StoreError> {
        let now = now();
        sqlx::query_as::<_, Task>(&format!(
            "INSERT INTO upload_tasks (upload_key, business_server, token_sha256, user_id, file_name, file_size,
                 file_md5, store_path, store_dir, feedback_parameter, tmp_dir, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)
             ON CONFLICT (token_sha256, user_id, file_md5, file_size, file_name, store_dir)
                 WHERE status IN ('upload', 'pause', 'verify') DO NOTHING
             RETURNING {TASK_COLUMNS}"
        ))
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
        .bind(&new.tmp_dir)
        .bind(new.status.as_str())
        .bind(&now)
        .fetch_optional(&mut *self.writer().await?)
        .await
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
        let mut conn = self.writer().await?;
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

    /// Ends a task that is in one of `from` (and, with `idle_for`, idle that long), and queues its
    /// callback, in one transaction. `Err(current)` when it was not, and nothing is written.
    pub async fn end_task(
        &self,
        task_id: i64,
        from: &[TaskStatus],
        ending: &TaskEnding,
        callback: &outbox::NewCallback,
    ) -> Result<Result<(), Option<TaskStatus>>, StoreError> {
        let from_json = serde_json::to_string(&from.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .map_err(|e| StoreError::Protocol(e.to_string()))?;
        let now = now();
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let ended = sqlx::query(
            "UPDATE upload_tasks SET status = ?2, final_path = ?3, error = ?4, updated_at = ?5, ended_at = ?5
             WHERE task_id = ?1 AND status IN (SELECT value FROM json_each(?6))
               AND (?7 IS NULL OR updated_at < ?7)",
        )
        .bind(task_id)
        .bind(ending.status.as_str())
        .bind(&ending.final_path)
        .bind(&ending.error)
        .bind(&now)
        .bind(from_json)
        .bind(ending.idle_for.map(cutoff))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if ended == 0 {
            return Ok(Err(Self::status_of(&mut tx, task_id).await?));
        }
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
        .execute(&mut *self.writer().await?)
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
        assert_eq!(first.tmp_path(), Path::new(&format!("/tmp/x/task-{}.part", first.task_id)));
        assert_eq!(first.spec.feedback_parameter, "{\"a\": 1}");
        let (again, created) = store.create_or_resume_task(&new_task(10)).await.unwrap();
        assert!(!created);
        assert_eq!(again.task_id, first.task_id);
        let (other, created) = store.create_or_resume_task(&new_task(11)).await.unwrap();
        assert!(created);
        assert_ne!(other.task_id, first.task_id);
    }

    #[tokio::test]
    async fn racing_creates_of_the_same_file_get_the_same_task() {
        let (store, _dir) = temp_store().await;
        let task = new_task(10);
        let (a, b) = tokio::join!(store.create_or_resume_task(&task), store.create_or_resume_task(&task));
        let ((a, a_created), (b, b_created)) = (a.unwrap(), b.unwrap());
        assert_eq!(a.task_id, b.task_id);
        assert!(a_created != b_created, "exactly one of them created it");
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
