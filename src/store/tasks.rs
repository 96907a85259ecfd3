//! The `upload_tasks` table: one row per task, its columns the task's history.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sqlx::{Executor, Sqlite, SqliteConnection};

use super::instant::PlacedFile;
use super::types::Timestamp;
use super::{now, outbox, timestamp, SqliteStore, StoreError};
use crate::domain::{ConcatRole, FileName, FileSize, Md5Hex, Protocol, TaskStatus};

/// What a task is: fixed when it is created.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub upload_key: String,
    pub business_server: String,
    pub token_sha256: String,
    pub user_id: String,
    pub file_name: FileName,
    /// With `length_deferred`, the most the file may grow to until its length is declared.
    pub file_size: FileSize,
    /// `None`: no md5 was named (a tus or IETF creation); the finish records the one it computed.
    pub file_md5: Option<Md5Hex>,
    pub store_path: String,
    /// The resolved absolute directory the file goes to.
    pub store_dir: String,
    pub feedback_parameter: String,
    /// The front end the task was created or uploaded through.
    pub protocol: Protocol,
    /// The client declares the length later (tus creation-defer-length).
    pub length_deferred: bool,
    pub concat_role: Option<ConcatRole>,
    /// The upload grant the task was created with.
    pub grant_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub task_id: i64,
    pub spec: TaskSpec,
    pub tmp_dir: String,
    /// Bytes received so far (the sum of its received ranges).
    pub received_bytes: u64,
    /// `[0, received_prefix)` is received without a gap (the tus offset).
    pub received_prefix: u64,
    pub status: TaskStatus,
    pub final_path: Option<String>,
    /// Why it failed; while it is open or in `verify`, the last problem it met (a lost temp file,
    /// a finish attempt that failed and is tried again).
    pub error: Option<String>,
    /// Moves on each time the temp file is made anew after it was lost.
    pub temp_generation: i64,
    /// Finish attempts that failed for a passing reason.
    pub finish_attempts: u64,
    /// The last accepted block or state change: expiry counts from here.
    pub updated_at: SystemTime,
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
    /// What identifies the file a finish placed, for a later instant upload of the same file.
    pub placed: Option<PlacedFile>,
    /// The finished task whose file an instant upload linked.
    pub instant_from: Option<i64>,
    /// The md5 the finish computed, recorded for a task that named none.
    pub computed_md5: Option<Md5Hex>,
}

/// What came of a status change guarded by the status the task must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Made,
    /// The task was in this status instead, and nothing was written.
    Refused(TaskStatus),
    NoSuchTask,
}

impl StatusChange {
    /// `Refused` or `NoSuchTask` for a task whose status is `current` (`None`: it does not exist).
    pub(super) fn refused(current: Option<TaskStatus>) -> Self {
        current.map_or(StatusChange::NoSuchTask, StatusChange::Refused)
    }
}

/// A row of `upload_tasks` as `task_row` reads it.
struct TaskRow {
    task_id: i64,
    upload_key: String,
    business_server: String,
    token_sha256: String,
    user_id: String,
    file_name: FileName,
    file_size: FileSize,
    file_md5: Option<Md5Hex>,
    store_path: String,
    store_dir: String,
    feedback_parameter: String,
    protocol: Protocol,
    length_deferred: bool,
    concat_role: Option<ConcatRole>,
    grant_id: Option<String>,
    tmp_dir: String,
    received_bytes: u64,
    status: TaskStatus,
    final_path: Option<String>,
    error: Option<String>,
    temp_generation: i64,
    finish_attempts: u64,
    updated_at: Timestamp,
    received_prefix: u64,
}

impl From<TaskRow> for Task {
    fn from(row: TaskRow) -> Self {
        Task {
            task_id: row.task_id,
            spec: TaskSpec {
                upload_key: row.upload_key,
                business_server: row.business_server,
                token_sha256: row.token_sha256,
                user_id: row.user_id,
                file_name: row.file_name,
                file_size: row.file_size,
                file_md5: row.file_md5,
                store_path: row.store_path,
                store_dir: row.store_dir,
                feedback_parameter: row.feedback_parameter,
                protocol: row.protocol,
                length_deferred: row.length_deferred,
                concat_role: row.concat_role,
                grant_id: row.grant_id,
            },
            tmp_dir: row.tmp_dir,
            received_bytes: row.received_bytes,
            status: row.status,
            final_path: row.final_path,
            error: row.error,
            temp_generation: row.temp_generation,
            finish_attempts: row.finish_attempts,
            updated_at: row.updated_at.0,
            received_prefix: row.received_prefix,
        }
    }
}

impl Task {
    /// The file's size in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.spec.file_size.bytes()
    }

    /// The temp file the task's blocks are written into.
    pub fn tmp_path(&self) -> PathBuf {
        Path::new(&self.tmp_dir).join(format!("task-{}.part", self.task_id))
    }
}

/// The task `task_id`, read through `db` (the readers, or the writer inside a write).
pub(super) async fn task_row<'e>(
    db: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<Task>, StoreError> {
    let row = sqlx::query_as!(
        TaskRow,
        r#"SELECT task_id AS "task_id!", upload_key, business_server, token_sha256, user_id,
               file_name AS "file_name: FileName", file_size AS "file_size: FileSize",
               file_md5 AS "file_md5: Md5Hex", store_path, store_dir, feedback_parameter,
               protocol AS "protocol: Protocol", length_deferred AS "length_deferred: bool",
               concat_role AS "concat_role: ConcatRole", grant_id, tmp_dir,
               received_bytes AS "received_bytes: u64", status AS "status: TaskStatus", final_path, error,
               temp_generation, finish_attempts AS "finish_attempts: u64", updated_at AS "updated_at: Timestamp",
               COALESCE((SELECT end_byte + 1 FROM received_ranges WHERE task_id = upload_tasks.task_id AND start_byte = 0), 0)
                   AS "received_prefix!: u64"
           FROM upload_tasks WHERE task_id = ?1"#,
        task_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Task::from))
}

impl SqliteStore {
    /// The unfinished task with these same identifying fields, or a new one. Returns the task
    /// and whether it was created now. A unique index keeps one unfinished task per identity,
    /// so racing creates of the same file end with the same task.
    pub async fn create_or_resume_task(&self, new: &NewTask) -> Result<(Task, bool), StoreError> {
        let new = new.clone();
        self.write(move |conn| Box::pin(async move { insert_or_find(conn, &new).await })).await
    }

    pub async fn task(&self, task_id: i64) -> Result<Option<Task>, StoreError> {
        task_row(&mut *self.reader().await?, task_id).await
    }

    /// Moves the task from `from` to `to`. The change and the check are one write, so racing
    /// requests cannot both make it.
    pub async fn change_status(
        &self,
        task_id: i64,
        from: TaskStatus,
        to: TaskStatus,
    ) -> Result<StatusChange, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                let changed = sqlx::query!(
                    "UPDATE upload_tasks SET status = ?3, updated_at = ?4 WHERE task_id = ?1 AND status = ?2",
                    task_id,
                    from,
                    to,
                    now
                )
                .execute(&mut *conn)
                .await?;
                guarded_change(conn, task_id, changed.rows_affected()).await
            })
        })
        .await
    }

    /// Ends a task that is in one of `from` (and, with `idle_for`, idle that long), and queues its
    /// callback, in one write. Nothing is written unless the change is `Made`.
    pub async fn end_task(
        &self,
        task_id: i64,
        from: &[TaskStatus],
        ending: &TaskEnding,
        callback: &outbox::NewCallback,
    ) -> Result<StatusChange, StoreError> {
        let from_json = serde_json::to_string(&from.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .map_err(|e| StoreError::Unreadable(e.to_string()))?;
        let (ending, callback) = (ending.clone(), callback.clone());
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                let idle_since = ending.idle_for.map(cutoff);
                let callback_status = if callback.undeliverable.is_some() { "failed" } else { "pending" };
                let placed = ending.placed;
                // inode and device keep their 64 bits in SQLite's signed INTEGER.
                let (placed_size, placed_mtime_ns, placed_inode, placed_device) = (
                    placed.map(|p| i64::try_from(p.size).unwrap_or(i64::MAX)),
                    placed.map(|p| p.mtime_ns),
                    placed.map(|p| p.inode as i64),
                    placed.map(|p| p.device as i64),
                );
                // One round trip, two statements: the callback is queued only if the task ended
                // (`changes()`). sqlx binds the values of such a query in order, one per `?`.
                // Dialect: json_each takes the list of statuses as one JSON text; changes().
                let queued = sqlx::query_scalar!(
                    r#"UPDATE upload_tasks SET status = ?, final_path = ?, error = ?, updated_at = ?, ended_at = ?,
                           placed_size = ?, placed_mtime_ns = ?, placed_inode = ?, placed_device = ?, instant_from = ?,
                           file_md5 = COALESCE(file_md5, ?)
                       WHERE task_id = ? AND status IN (SELECT value FROM json_each(?))
                         AND (? IS NULL OR updated_at < ?);
                       INSERT INTO callback_outbox (task_id, ret_code, notify_url, body, signature, status,
                           next_attempt_at, last_error, created_at)
                       SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE changes() = 1
                       RETURNING callback_id AS "callback_id!""#,
                    ending.status,
                    ending.final_path,
                    ending.error,
                    now,
                    now,
                    placed_size,
                    placed_mtime_ns,
                    placed_inode,
                    placed_device,
                    ending.instant_from,
                    ending.computed_md5,
                    task_id,
                    from_json,
                    idle_since,
                    idle_since,
                    task_id,
                    callback.ret_code,
                    callback.notify_url,
                    callback.body,
                    callback.signature,
                    callback_status,
                    now,
                    callback.undeliverable,
                    now
                )
                .fetch_optional(&mut *conn)
                .await?;
                match queued {
                    Some(_) => Ok(StatusChange::Made),
                    None => Ok(StatusChange::refused(status_of(conn, task_id).await?)),
                }
            })
        })
        .await
    }

    /// Records a finish attempt of a task in `verify` that failed for a passing reason; the
    /// running server tries again.
    pub async fn record_finish_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query!(
                    "UPDATE upload_tasks SET finish_attempts = finish_attempts + 1, error = ?2
                     WHERE task_id = ?1 AND status = 'verify'",
                    task_id,
                    error
                )
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Ends a task that could not be set up (its temp file could not be made) without a callback:
    /// the business server got the error as the reply to its create request.
    pub async fn record_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                sqlx::query!(
                    "UPDATE upload_tasks SET status = 'fail', error = ?2, updated_at = ?3, ended_at = ?3 WHERE task_id = ?1",
                    task_id,
                    error,
                    now
                )
                .execute(conn)
                .await?;
                Ok(())
            })
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
            Box::pin(async move {
                sqlx::query!(
                    "DELETE FROM upload_tasks WHERE task_id = ?1 AND received_bytes = 0
                       AND status IN ('upload', 'verify')
                       AND NOT EXISTS (SELECT 1 FROM callback_outbox WHERE task_id = ?1)",
                    task_id
                )
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Tasks in `upload` or `pause` with no activity for `idle`.
    pub async fn idle_tasks(&self, idle: Duration) -> Result<Vec<i64>, StoreError> {
        let idle_since = cutoff(idle);
        Ok(sqlx::query_scalar!(
            r#"SELECT task_id AS "task_id!" FROM upload_tasks
               WHERE status IN ('upload', 'pause') AND updated_at < ?1 ORDER BY task_id"#,
            idle_since
        )
        .fetch_all(&mut *self.reader().await?)
        .await?)
    }

    pub async fn tasks_in_status(&self, status: TaskStatus) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT task_id AS "task_id!" FROM upload_tasks WHERE status = ?1 ORDER BY task_id"#,
            status
        )
        .fetch_all(&mut *self.reader().await?)
        .await?)
    }
}

/// The new task and `true`, or the unfinished task it repeats and `false`.
pub(super) async fn insert_or_find(conn: &mut SqliteConnection, new: &NewTask) -> Result<(Task, bool), StoreError> {
    if let Some(created) = insert_task(conn, new).await? {
        return Ok((created, true));
    }
    // The write is the only one running: the task the insert ran into is still there.
    let task_id = unfinished_task_like(conn, &new.spec).await?;
    let task = task_row(&mut *conn, task_id)
        .await?
        .ok_or_else(|| StoreError::Unreadable(format!("task {task_id} is gone in its own write")))?;
    Ok((task, false))
}

/// `Made` when a guarded update changed the task's row, else why not.
pub(super) async fn guarded_change(
    conn: &mut SqliteConnection,
    task_id: i64,
    rows_affected: u64,
) -> Result<StatusChange, StoreError> {
    match rows_affected {
        1 => Ok(StatusChange::Made),
        _ => Ok(StatusChange::refused(status_of(conn, task_id).await?)),
    }
}

/// Inserts the task unless an unfinished one with the same identity exists (`None`).
async fn insert_task(conn: &mut SqliteConnection, new: &NewTask) -> Result<Option<Task>, StoreError> {
    let (spec, now) = (&new.spec, now());
    // Dialect: the upsert names the partial unique index's columns and condition; RETURNING.
    let created = sqlx::query_as!(
        TaskRow,
        r#"INSERT INTO upload_tasks (upload_key, business_server, token_sha256, user_id, file_name, file_size,
               file_md5, store_path, store_dir, feedback_parameter, tmp_dir, status, created_at, updated_at,
               protocol, length_deferred, concat_role, grant_id)
           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15, ?16, ?17)
           ON CONFLICT (token_sha256, user_id, file_md5, file_size, file_name, store_dir)
               WHERE status IN ('upload', 'pause', 'verify') DO NOTHING
           RETURNING task_id AS "task_id!", upload_key, business_server, token_sha256, user_id,
               file_name AS "file_name: FileName", file_size AS "file_size: FileSize",
               file_md5 AS "file_md5: Md5Hex", store_path, store_dir, feedback_parameter,
               protocol AS "protocol: Protocol", length_deferred AS "length_deferred: bool",
               concat_role AS "concat_role: ConcatRole", grant_id, tmp_dir,
               received_bytes AS "received_bytes: u64", status AS "status: TaskStatus", final_path, error,
               temp_generation, finish_attempts AS "finish_attempts: u64", updated_at AS "updated_at: Timestamp",
               COALESCE((SELECT end_byte + 1 FROM received_ranges WHERE task_id = upload_tasks.task_id AND start_byte = 0), 0)
                   AS "received_prefix!: u64""#,
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
        now,
        spec.protocol,
        spec.length_deferred,
        spec.concat_role,
        spec.grant_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(created.map(Task::from))
}

/// The unfinished task with the identity of `spec`.
async fn unfinished_task_like(conn: &mut SqliteConnection, spec: &TaskSpec) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT task_id AS "task_id!" FROM upload_tasks
           WHERE token_sha256 = ?1 AND user_id = ?2 AND file_md5 IS ?3 AND file_size = ?4
             AND file_name = ?5 AND store_dir = ?6 AND status IN ('upload', 'pause', 'verify')"#,
        spec.token_sha256,
        spec.user_id,
        spec.file_md5,
        spec.file_size,
        spec.file_name,
        spec.store_dir
    )
    .fetch_one(conn)
    .await?)
}

/// The task's status, read by the writer so that it sees the latest write.
pub(super) async fn status_of(conn: &mut SqliteConnection, task_id: i64) -> Result<Option<TaskStatus>, StoreError> {
    Ok(sqlx::query_scalar!(r#"SELECT status AS "status: TaskStatus" FROM upload_tasks WHERE task_id = ?1"#, task_id)
        .fetch_optional(conn)
        .await?)
}

/// The timestamp `idle` ago.
pub(super) fn cutoff(idle: Duration) -> String {
    timestamp(SystemTime::now().checked_sub(idle).unwrap_or(SystemTime::UNIX_EPOCH))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::test_support::temp_store;

    pub(crate) fn new_task(file_size: u64) -> NewTask {
        NewTask {
            spec: TaskSpec {
                upload_key: "k".repeat(32),
                business_server: "cp1".into(),
                token_sha256: "t".into(),
                user_id: "123".into(),
                file_name: FileName::parse("hello.mp4").unwrap(),
                file_size: FileSize::new(file_size).unwrap(),
                file_md5: Some(Md5Hex::parse("fileMd5", &"0".repeat(32)).unwrap()),
                protocol: Protocol::Fupload,
                length_deferred: false,
                concat_role: None,
                grant_id: None,
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
        let committed = store.commit_block(received.task_id, 0, &[first_bytes]).await.unwrap();
        assert!(matches!(committed, crate::store::BlockOutcome::Committed(_)), "{committed:?}");
        let ended =
            crate::store::outbox::tests::ended_with_callback(&crate::store::Store::Sqlite(store.clone()), 12).await;
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
        assert_eq!(store.change_status(id, TaskStatus::Upload, TaskStatus::Pause).await.unwrap(), StatusChange::Made);
        assert_eq!(
            store.change_status(id, TaskStatus::Upload, TaskStatus::Pause).await.unwrap(),
            StatusChange::Refused(TaskStatus::Pause)
        );
        assert_eq!(
            store.change_status(999, TaskStatus::Upload, TaskStatus::Pause).await.unwrap(),
            StatusChange::NoSuchTask
        );
        assert_eq!(store.task(id).await.unwrap().unwrap().status, TaskStatus::Pause);
    }
}
