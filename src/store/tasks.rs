//! The `upload_tasks` table: one row per task, its columns the task's history.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{now, outbox, timestamp, Store, StoreError};
use crate::domain::TaskStatus;

/// What a task is: fixed when it is created.
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct Task {
    pub task_id: i64,
    pub spec: TaskSpec,
    pub tmp_dir: String,
    /// Bytes received so far (the sum of its received ranges).
    pub received_bytes: i64,
    pub status: TaskStatus,
    pub final_path: Option<String>,
    /// Why it failed; while it is open or in `verify`, the last problem it met (a lost temp file,
    /// a finish attempt that failed and is tried again).
    pub error: Option<String>,
    /// Moves on each time the temp file is made anew after it was lost.
    pub temp_generation: i64,
    /// Finish attempts that failed for a passing reason.
    pub finish_attempts: i64,
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

/// The columns `Task::from_row` reads, in its order.
pub(super) const TASK_COLUMNS: &str =
    "task_id, upload_key, business_server, token_sha256, user_id, file_name, file_size, \
     file_md5, store_path, store_dir, feedback_parameter, tmp_dir, received_bytes, status, final_path, error, \
     temp_generation, finish_attempts";

impl Task {
    /// The file's size in bytes (stored as SQLite's signed integer; FileSize keeps it within
    /// 63 bits).
    pub fn file_bytes(&self) -> u64 {
        u64::try_from(self.spec.file_size).unwrap_or(0)
    }

    /// The temp file the task's blocks are written into.
    pub fn tmp_path(&self) -> PathBuf {
        Path::new(&self.tmp_dir).join(format!("task-{}.part", self.task_id))
    }

    pub(super) fn from_row(row: &Row) -> rusqlite::Result<Self> {
        Ok(Self {
            task_id: row.get(0)?,
            spec: TaskSpec {
                upload_key: row.get(1)?,
                business_server: row.get(2)?,
                token_sha256: row.get(3)?,
                user_id: row.get(4)?,
                file_name: row.get(5)?,
                file_size: row.get(6)?,
                file_md5: row.get(7)?,
                store_path: row.get(8)?,
                store_dir: row.get(9)?,
                feedback_parameter: row.get(10)?,
            },
            tmp_dir: row.get(11)?,
            received_bytes: row.get(12)?,
            status: row.get(13)?,
            final_path: row.get(14)?,
            error: row.get(15)?,
            temp_generation: row.get(16)?,
            finish_attempts: row.get(17)?,
        })
    }
}

impl Store {
    /// The unfinished task with these same identifying fields, or a new one. Returns the task
    /// and whether it was created now. A unique index keeps one unfinished task per identity,
    /// so racing creates of the same file end with the same task.
    pub async fn create_or_resume_task(&self, new: &NewTask) -> Result<(Task, bool), StoreError> {
        let new = new.clone();
        self.write(move |conn| {
            if let Some(created) = insert_task(conn, &new)? {
                return Ok((created, true));
            }
            // The write is the only one running: the task the insert ran into is still there.
            let spec = &new.spec;
            let existing = conn
                .prepare_cached(&format!(
                    "SELECT {TASK_COLUMNS} FROM upload_tasks
                     WHERE token_sha256 = ?1 AND user_id = ?2 AND file_md5 = ?3 AND file_size = ?4
                       AND file_name = ?5 AND store_dir = ?6 AND status IN ('upload', 'pause', 'verify')"
                ))?
                .query_row(
                    params![
                        spec.token_sha256,
                        spec.user_id,
                        spec.file_md5,
                        spec.file_size,
                        spec.file_name,
                        spec.store_dir
                    ],
                    Task::from_row,
                )?;
            Ok((existing, false))
        })
        .await
    }

    pub async fn task(&self, task_id: i64) -> Result<Option<Task>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {TASK_COLUMNS} FROM upload_tasks WHERE task_id = ?1");
            Ok(conn.prepare_cached(&sql)?.query_row([task_id], Task::from_row).optional()?)
        })
        .await
    }

    /// Moves the task from `from` to `to`. `Err(current)` when the task was not in `from`
    /// (`None` if it does not exist); the change and the check are one write, so racing
    /// requests cannot both make it.
    pub async fn change_status(
        &self,
        task_id: i64,
        from: TaskStatus,
        to: TaskStatus,
    ) -> Result<Result<(), Option<TaskStatus>>, StoreError> {
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE upload_tasks SET status = ?3, updated_at = ?4 WHERE task_id = ?1 AND status = ?2",
                )?
                .execute(params![task_id, from, to, now()])?;
            match changed {
                1 => Ok(Ok(())),
                _ => Ok(Err(status_of(conn, task_id)?)),
            }
        })
        .await
    }

    /// Ends a task that is in one of `from` (and, with `idle_for`, idle that long), and queues its
    /// callback, in one write. `Err(current)` when it was not, and nothing is written.
    pub async fn end_task(
        &self,
        task_id: i64,
        from: &[TaskStatus],
        ending: &TaskEnding,
        callback: &outbox::NewCallback,
    ) -> Result<Result<(), Option<TaskStatus>>, StoreError> {
        let from_json = serde_json::to_string(&from.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .map_err(|e| StoreError::Unreadable(e.to_string()))?;
        let (ending, callback) = (ending.clone(), callback.clone());
        self.write(move |conn| {
            let now = now();
            let ended = conn
                .prepare_cached(
                    "UPDATE upload_tasks SET status = ?2, final_path = ?3, error = ?4, updated_at = ?5, ended_at = ?5
                     WHERE task_id = ?1 AND status IN (SELECT value FROM json_each(?6))
                       AND (?7 IS NULL OR updated_at < ?7)",
                )?
                .execute(params![
                    task_id,
                    ending.status,
                    ending.final_path,
                    ending.error,
                    now,
                    from_json,
                    ending.idle_for.map(cutoff)
                ])?;
            if ended == 0 {
                return Ok(Err(status_of(conn, task_id)?));
            }
            outbox::insert(conn, task_id, &callback, &now)?;
            Ok(Ok(()))
        })
        .await
    }

    /// Records a finish attempt of a task in `verify` that failed for a passing reason; the
    /// running server tries again.
    pub async fn record_finish_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE upload_tasks SET finish_attempts = finish_attempts + 1, error = ?2
                 WHERE task_id = ?1 AND status = 'verify'",
            )?
            .execute(params![task_id, error])?;
            Ok(())
        })
        .await
    }

    /// Ends a task that could not be set up (its temp file could not be made) without a callback:
    /// the business server got the error as the reply to its create request.
    pub async fn record_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE upload_tasks SET status = 'fail', error = ?2, updated_at = ?3, ended_at = ?3 WHERE task_id = ?1",
            )?
            .execute(params![task_id, error, now()])?;
            Ok(())
        })
        .await
    }

    /// Deletes a task its create has just refused (its directory leaves storeDir), as if it had
    /// never been made. Its create's client never learns its id, and AUTOINCREMENT never gives
    /// the id out again. A concurrent identical create may have found it meanwhile (its own check
    /// nearly always refuses it too); a task that has since received bytes or ended (it has a
    /// callback) is left as it is.
    pub async fn delete_refused_task(&self, task_id: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "DELETE FROM upload_tasks WHERE task_id = ?1 AND received_bytes = 0
                   AND status IN ('upload', 'verify')
                   AND NOT EXISTS (SELECT 1 FROM callback_outbox WHERE task_id = ?1)",
            )?
            .execute([task_id])?;
            Ok(())
        })
        .await
    }

    /// Tasks in `upload` or `pause` with no activity for `idle`.
    pub async fn idle_tasks(&self, idle: Duration) -> Result<Vec<i64>, StoreError> {
        self.read(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT task_id FROM upload_tasks WHERE status IN ('upload', 'pause') AND updated_at < ?1 ORDER BY task_id",
            )?;
            let ids = query.query_map([cutoff(idle)], |row| row.get(0))?.collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
    }

    pub async fn tasks_in_status(&self, status: TaskStatus) -> Result<Vec<i64>, StoreError> {
        self.read(move |conn| {
            let mut query =
                conn.prepare_cached("SELECT task_id FROM upload_tasks WHERE status = ?1 ORDER BY task_id")?;
            let ids = query.query_map([status], |row| row.get(0))?.collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
    }
}

/// Inserts the task unless an unfinished one with the same identity exists (`None`).
fn insert_task(conn: &Connection, new: &NewTask) -> Result<Option<Task>, StoreError> {
    let spec = &new.spec;
    let sql = format!(
        "INSERT INTO upload_tasks (upload_key, business_server, token_sha256, user_id, file_name, file_size,
             file_md5, store_path, store_dir, feedback_parameter, tmp_dir, status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)
         ON CONFLICT (token_sha256, user_id, file_md5, file_size, file_name, store_dir)
             WHERE status IN ('upload', 'pause', 'verify') DO NOTHING
         RETURNING {TASK_COLUMNS}"
    );
    let created = conn
        .prepare_cached(&sql)?
        .query_row(
            params![
                spec.upload_key,
                spec.business_server,
                spec.token_sha256,
                spec.user_id,
                spec.file_name,
                spec.file_size,
                spec.file_md5,
                spec.store_path,
                spec.store_dir,
                spec.feedback_parameter,
                new.tmp_dir,
                new.status,
                now()
            ],
            Task::from_row,
        )
        .optional()?;
    Ok(created)
}

/// The task's status, read by the writer so that it sees the latest write.
pub(super) fn status_of(conn: &Connection, task_id: i64) -> Result<Option<TaskStatus>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT status FROM upload_tasks WHERE task_id = ?1")?
        .query_row([task_id], |row| row.get(0))
        .optional()?)
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
    async fn a_refused_task_is_deleted_unless_it_has_since_received_bytes_or_ended() {
        // A concurrent identical create may have found the task before its own create refused it.
        let (store, _dir) = temp_store().await;
        let (fresh, _) = store.create_or_resume_task(&new_task(10)).await.unwrap();
        store.delete_refused_task(fresh.task_id).await.unwrap();
        assert!(store.task(fresh.task_id).await.unwrap().is_none());
        let (received, _) = store.create_or_resume_task(&new_task(11)).await.unwrap();
        let first_bytes = crate::domain::ByteRange::new(0, 4).unwrap();
        store.commit_block(received.task_id, 0, &[first_bytes]).await.unwrap().unwrap();
        let ended = crate::store::outbox::tests::ended_with_callback(&store, 12).await;
        for kept in [received.task_id, ended] {
            store.delete_refused_task(kept).await.unwrap();
            assert!(store.task(kept).await.unwrap().is_some(), "task {kept} is kept");
        }
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
