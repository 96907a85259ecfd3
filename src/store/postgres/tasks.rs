//! `upload_tasks` on PostgreSQL: the statements of `store::tasks` and `store::tus`.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::{unsigned, PgStore, Written};
use crate::domain::{FileSize, Protocol, TaskStatus};
use crate::store::outbox::NewCallback;
use crate::store::tasks::{cutoff, NewTask, StatusChange, Task, TaskEnding, TaskSpec};
use crate::store::tus::GrantedCreation;
use crate::store::types::Timestamp;
use crate::store::{now, StoreError};

/// The columns a `Task` is read from, the received prefix among them.
macro_rules! task_columns {
    () => {
        "task_id, upload_key, business_server, token_sha256, user_id, file_name, file_size, file_md5, store_path,
         store_dir, feedback_parameter, protocol, length_deferred, concat_role, grant_id, tmp_dir, received_bytes,
         status, final_path, error, temp_generation, finish_attempts, updated_at,
         COALESCE((SELECT end_byte + 1 FROM received_ranges
                   WHERE received_ranges.task_id = upload_tasks.task_id AND start_byte = 0), 0) AS received_prefix"
    };
}

fn task_of(row: &PgRow) -> Result<Task, StoreError> {
    Ok(Task {
        task_id: row.try_get("task_id")?,
        spec: TaskSpec {
            upload_key: row.try_get("upload_key")?,
            business_server: row.try_get("business_server")?,
            token_sha256: row.try_get("token_sha256")?,
            user_id: row.try_get("user_id")?,
            file_name: row.try_get("file_name")?,
            file_size: row.try_get("file_size")?,
            file_md5: row.try_get("file_md5")?,
            store_path: row.try_get("store_path")?,
            store_dir: row.try_get("store_dir")?,
            feedback_parameter: row.try_get("feedback_parameter")?,
            protocol: row.try_get("protocol")?,
            length_deferred: row.try_get("length_deferred")?,
            concat_role: row.try_get("concat_role")?,
            grant_id: row.try_get("grant_id")?,
        },
        tmp_dir: row.try_get("tmp_dir")?,
        received_bytes: unsigned(row.try_get("received_bytes")?)?,
        status: row.try_get("status")?,
        final_path: row.try_get("final_path")?,
        error: row.try_get("error")?,
        temp_generation: row.try_get("temp_generation")?,
        finish_attempts: unsigned(row.try_get("finish_attempts")?)?,
        updated_at: row.try_get::<Timestamp, _>("updated_at")?.0,
        received_prefix: unsigned(row.try_get("received_prefix")?)?,
    })
}

/// The task `task_id`, read through `conn` (in a write, or from the pool).
pub(super) async fn task_row(conn: &mut PgConnection, task_id: i64) -> Result<Option<Task>, StoreError> {
    let row = sqlx::query(concat!("SELECT ", task_columns!(), " FROM upload_tasks WHERE task_id = $1"))
        .bind(task_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(task_of).transpose()
}

/// The task's status, and its temp generation, with its row locked until the write ends: the
/// writes of one task's ranges, on any node, run one after the other.
pub(super) async fn lock_task(conn: &mut PgConnection, task_id: i64) -> Result<Option<(TaskStatus, i64)>, StoreError> {
    let row = sqlx::query("SELECT status, temp_generation FROM upload_tasks WHERE task_id = $1 FOR UPDATE")
        .bind(task_id)
        .fetch_optional(conn)
        .await?;
    row.map(|row| Ok((row.try_get("status")?, row.try_get("temp_generation")?))).transpose()
}

pub(super) async fn status_of(conn: &mut PgConnection, task_id: i64) -> Result<Option<TaskStatus>, StoreError> {
    Ok(sqlx::query_scalar("SELECT status FROM upload_tasks WHERE task_id = $1")
        .bind(task_id)
        .fetch_optional(conn)
        .await?)
}

/// `Made` when a guarded update changed the task's row, else why not.
async fn guarded_change(conn: &mut PgConnection, task_id: i64, rows_affected: u64) -> Result<StatusChange, StoreError> {
    match rows_affected {
        1 => Ok(StatusChange::Made),
        _ => Ok(StatusChange::refused(status_of(conn, task_id).await?)),
    }
}

/// The new task and `true`, or the unfinished task it repeats and `false`.
async fn insert_or_find(conn: &mut PgConnection, new: &NewTask) -> Result<(Task, bool), StoreError> {
    let (spec, now) = (&new.spec, now());
    let created = sqlx::query(concat!(
        "INSERT INTO upload_tasks (upload_key, business_server, token_sha256, user_id, file_name, file_size,
             file_md5, store_path, store_dir, feedback_parameter, tmp_dir, status, created_at, updated_at,
             protocol, length_deferred, concat_role, grant_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16, $17)
         ON CONFLICT (token_sha256, user_id, file_md5, file_size, file_name, store_dir)
             WHERE status IN ('upload', 'pause', 'verify') DO NOTHING
         RETURNING ",
        task_columns!()
    ))
    .bind(&spec.upload_key)
    .bind(&spec.business_server)
    .bind(&spec.token_sha256)
    .bind(&spec.user_id)
    .bind(&spec.file_name)
    .bind(spec.file_size)
    .bind(&spec.file_md5)
    .bind(&spec.store_path)
    .bind(&spec.store_dir)
    .bind(&spec.feedback_parameter)
    .bind(&new.tmp_dir)
    .bind(new.status)
    .bind(&now)
    .bind(spec.protocol)
    .bind(spec.length_deferred)
    .bind(spec.concat_role)
    .bind(&spec.grant_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = created {
        return Ok((task_of(&row)?, true));
    }
    // The insert waited for the transaction that holds the same identity to end: the task it made
    // is committed and unfinished, as a statement begun now sees.
    let found = sqlx::query(concat!(
        "SELECT ",
        task_columns!(),
        " FROM upload_tasks
         WHERE token_sha256 = $1 AND user_id = $2 AND file_md5 IS NOT DISTINCT FROM $3 AND file_size = $4
           AND file_name = $5 AND store_dir = $6 AND status IN ('upload', 'pause', 'verify')"
    ))
    .bind(&spec.token_sha256)
    .bind(&spec.user_id)
    .bind(&spec.file_md5)
    .bind(spec.file_size)
    .bind(&spec.file_name)
    .bind(&spec.store_dir)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        Some(row) => Ok((task_of(&row)?, false)),
        // It ended in between: the create is tried again, and makes a new task.
        None => Err(StoreError::Transaction(crate::store::TransactionFailure::new(
            "the unfinished task of the same file ended while the create ran; create it again",
        ))),
    }
}

impl PgStore {
    pub async fn create_or_resume_task(&self, new: &NewTask) -> Result<(Task, bool), StoreError> {
        let new = new.clone();
        self.write(move |conn| Box::pin(async move { insert_or_find(conn, &new).await.map(Written::Commit) })).await
    }

    pub async fn task(&self, task_id: i64) -> Result<Option<Task>, StoreError> {
        self.read(move |pool| Box::pin(async move { task_row(&mut *pool.acquire().await?, task_id).await })).await
    }

    pub async fn change_status(
        &self,
        task_id: i64,
        from: TaskStatus,
        to: TaskStatus,
    ) -> Result<StatusChange, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                let changed = sqlx::query(
                    "UPDATE upload_tasks SET status = $3, updated_at = $4 WHERE task_id = $1 AND status = $2",
                )
                .bind(task_id)
                .bind(from)
                .bind(to)
                .bind(now())
                .execute(&mut *conn)
                .await?;
                guarded_change(conn, task_id, changed.rows_affected()).await.map(Written::Commit)
            })
        })
        .await
    }

    pub async fn end_task(
        &self,
        task_id: i64,
        from: &[TaskStatus],
        ending: &TaskEnding,
        callback: &NewCallback,
    ) -> Result<StatusChange, StoreError> {
        let from: Vec<String> = from.iter().map(|s| s.as_str().to_owned()).collect();
        let (ending, callback) = (ending.clone(), callback.clone());
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                let idle_since = ending.idle_for.map(cutoff);
                let placed = ending.placed;
                // inode and device keep their 64 bits in a signed BIGINT.
                let ended = sqlx::query(
                    "UPDATE upload_tasks SET status = $1, final_path = $2, error = $3, updated_at = $4, ended_at = $4,
                         placed_size = $5, placed_mtime_ns = $6, placed_inode = $7, placed_device = $8,
                         instant_from = $9, file_md5 = COALESCE(file_md5, $10), finish_lease_until = NULL
                     WHERE task_id = $11 AND status = ANY($12) AND ($13::text IS NULL OR updated_at < $13)",
                )
                .bind(ending.status)
                .bind(&ending.final_path)
                .bind(&ending.error)
                .bind(&now)
                .bind(placed.map(|p| i64::try_from(p.size).unwrap_or(i64::MAX)))
                .bind(placed.map(|p| p.mtime_ns))
                .bind(placed.map(|p| p.inode as i64))
                .bind(placed.map(|p| p.device as i64))
                .bind(ending.instant_from)
                .bind(ending.computed_md5)
                .bind(task_id)
                .bind(&from)
                .bind(idle_since)
                .execute(&mut *conn)
                .await?;
                if ended.rows_affected() != 1 {
                    return Ok(Written::RollBack(StatusChange::refused(status_of(conn, task_id).await?)));
                }
                // The claims of its blocks still in flight go with it: it takes no more bytes.
                sqlx::query("DELETE FROM block_claims WHERE task_id = $1").bind(task_id).execute(&mut *conn).await?;
                let callback_status = if callback.undeliverable.is_some() { "failed" } else { "pending" };
                sqlx::query(
                    "INSERT INTO callback_outbox (task_id, ret_code, notify_url, body, signature, status,
                         next_attempt_at, last_error, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7)",
                )
                .bind(task_id)
                .bind(&callback.ret_code)
                .bind(&callback.notify_url)
                .bind(&callback.body)
                .bind(&callback.signature)
                .bind(callback_status)
                .bind(&now)
                .bind(&callback.undeliverable)
                .execute(&mut *conn)
                .await?;
                Ok(Written::Commit(StatusChange::Made))
            })
        })
        .await
    }

    pub async fn record_finish_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE upload_tasks SET finish_attempts = finish_attempts + 1, error = $2
                     WHERE task_id = $1 AND status = 'verify'",
                )
                .bind(task_id)
                .bind(error)
                .execute(conn)
                .await?;
                Ok(Written::Commit(()))
            })
        })
        .await
    }

    pub async fn record_failure(&self, task_id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE upload_tasks SET status = 'fail', error = $2, updated_at = $3, ended_at = $3 WHERE task_id = $1",
                )
                .bind(task_id)
                .bind(error)
                .bind(now())
                .execute(conn)
                .await?;
                Ok(Written::Commit(()))
            })
        })
        .await
    }

    pub async fn delete_refused_task(&self, task_id: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "DELETE FROM upload_tasks WHERE task_id = $1 AND received_bytes = 0 AND status IN ('upload', 'verify')
                       AND NOT EXISTS (SELECT 1 FROM callback_outbox WHERE task_id = $1)",
                )
                .bind(task_id)
                .execute(conn)
                .await?;
                Ok(Written::Commit(()))
            })
        })
        .await
    }

    pub async fn idle_tasks(&self, idle: Duration) -> Result<Vec<i64>, StoreError> {
        self.read(move |pool| {
            Box::pin(async move {
                Ok(sqlx::query_scalar(
                    "SELECT task_id FROM upload_tasks WHERE status IN ('upload', 'pause') AND updated_at < $1
                     ORDER BY task_id",
                )
                .bind(cutoff(idle))
                .fetch_all(&pool)
                .await?)
            })
        })
        .await
    }

    pub async fn tasks_in_status(&self, status: TaskStatus) -> Result<Vec<i64>, StoreError> {
        self.read(move |pool| {
            Box::pin(async move {
                Ok(sqlx::query_scalar("SELECT task_id FROM upload_tasks WHERE status = $1 ORDER BY task_id")
                    .bind(status)
                    .fetch_all(&pool)
                    .await?)
            })
        })
        .await
    }

    pub async fn create_with_grant(&self, new: &NewTask, redeem: bool) -> Result<GrantedCreation, StoreError> {
        let new = new.clone();
        let grant_id = new.spec.grant_id.clone().unwrap_or_default();
        self.write(move |conn| {
            Box::pin(async move {
                let redeemed: Option<i64> =
                    sqlx::query_scalar("SELECT task_id FROM redeemed_grants WHERE grant_id = $1")
                        .bind(&grant_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                if redeemed.is_some() {
                    return Ok(Written::RollBack(GrantedCreation::GrantUsed));
                }
                let (task, created) = insert_or_find(conn, &new).await?;
                if redeem {
                    // Another node may redeem the same grant at the same moment: the second insert
                    // waits for the first, finds the grant taken, and its creation is undone.
                    let inserted = sqlx::query(
                        "INSERT INTO redeemed_grants (grant_id, task_id, redeemed_at) VALUES ($1, $2, $3)
                         ON CONFLICT (grant_id) DO NOTHING",
                    )
                    .bind(&grant_id)
                    .bind(task.task_id)
                    .bind(now())
                    .execute(&mut *conn)
                    .await?;
                    if inserted.rows_affected() == 0 {
                        return Ok(Written::RollBack(GrantedCreation::GrantUsed));
                    }
                }
                Ok(Written::Commit(if created {
                    GrantedCreation::Created(task)
                } else {
                    GrantedCreation::Resumed(task)
                }))
            })
        })
        .await
    }

    pub async fn declare_length(&self, task_id: i64, size: FileSize) -> Result<StatusChange, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                let changed = sqlx::query(
                    "UPDATE upload_tasks SET file_size = $2, length_deferred = FALSE, updated_at = $3,
                         status = CASE WHEN received_bytes >= $2 AND concat_role IS DISTINCT FROM 'partial'
                             THEN 'verify' ELSE status END
                     WHERE task_id = $1 AND status = 'upload' AND length_deferred AND received_bytes <= $2",
                )
                .bind(task_id)
                .bind(size)
                .bind(now())
                .execute(&mut *conn)
                .await?;
                guarded_change(conn, task_id, changed.rows_affected()).await.map(Written::Commit)
            })
        })
        .await
    }

    pub async fn set_protocol(&self, task_id: i64, protocol: Protocol) -> Result<(), StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE upload_tasks SET protocol = $2 WHERE task_id = $1")
                    .bind(task_id)
                    .bind(protocol)
                    .execute(conn)
                    .await?;
                Ok(Written::Commit(()))
            })
        })
        .await
    }

    pub async fn join_partials(&self, final_id: i64, partials: &[i64], size: u64) -> Result<StatusChange, StoreError> {
        let partials = partials.to_vec();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                let joined = sqlx::query(
                    "UPDATE upload_tasks SET status = 'finish', joined_into = $1, updated_at = $3, ended_at = $3
                     WHERE task_id = ANY($2) AND concat_role = 'partial'
                       AND status = 'upload' AND NOT length_deferred AND received_bytes = file_size",
                )
                .bind(final_id)
                .bind(&partials)
                .bind(&now)
                .execute(&mut *conn)
                .await?;
                if joined.rows_affected() != partials.len() as u64 {
                    return Ok(Written::RollBack(StatusChange::Refused(TaskStatus::Upload)));
                }
                let received = sqlx::query(
                    "UPDATE upload_tasks SET received_bytes = $2, status = 'verify', updated_at = $3
                     WHERE task_id = $1 AND status = 'upload' AND received_bytes = 0",
                )
                .bind(final_id)
                .bind(size)
                .bind(&now)
                .execute(&mut *conn)
                .await?;
                if received.rows_affected() != 1 {
                    return Ok(Written::RollBack(StatusChange::refused(status_of(conn, final_id).await?)));
                }
                sqlx::query("INSERT INTO received_ranges (task_id, start_byte, end_byte) VALUES ($1, 0, $2)")
                    .bind(final_id)
                    .bind(size - 1)
                    .execute(&mut *conn)
                    .await?;
                Ok(Written::Commit(StatusChange::Made))
            })
        })
        .await
    }
}
