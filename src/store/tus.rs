//! What the tus and IETF front ends record beyond a block: grants redeemed, a length declared
//! late, partial uploads joined into a final one, the protocol a task is used through.

use super::tasks::{guarded_change, insert_or_find, status_of};
use super::{now, writer, NewTask, SqliteStore, StatusChange, StoreError, Task};
use crate::domain::{FileSize, Protocol, TaskStatus};

/// What came of a creation with an upload grant.
#[derive(Debug)]
pub enum GrantedCreation {
    Created(Task),
    /// An unfinished task of the same file, user and directory existed: it is resumed.
    Resumed(Task),
    /// The grant was redeemed before: nothing was written.
    GrantUsed,
}

impl SqliteStore {
    /// Creates the task (or finds the unfinished one it repeats). With `redeem`, the task's grant
    /// is redeemed in the same write, so that a grant creates at most one upload; without, the
    /// grant must not be redeemed yet (a partial upload of a concatenation).
    pub async fn create_with_grant(&self, new: &NewTask, redeem: bool) -> Result<GrantedCreation, StoreError> {
        let new = new.clone();
        let grant_id = new.spec.grant_id.clone().unwrap_or_default();
        self.write(move |conn| {
            Box::pin(async move {
                let redeemed = sqlx::query_scalar!(
                    r#"SELECT task_id AS "task_id!" FROM redeemed_grants WHERE grant_id = ?1"#,
                    grant_id
                )
                .fetch_optional(&mut *conn)
                .await?;
                if redeemed.is_some() {
                    return Ok(GrantedCreation::GrantUsed);
                }
                let (task, created) = insert_or_find(conn, &new).await?;
                if redeem {
                    let now = now();
                    sqlx::query!(
                        "INSERT INTO redeemed_grants (grant_id, task_id, redeemed_at) VALUES (?1, ?2, ?3)",
                        grant_id,
                        task.task_id,
                        now
                    )
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(if created { GrantedCreation::Created(task) } else { GrantedCreation::Resumed(task) })
            })
        })
        .await
    }

    /// Sets the length of a task created with its length deferred, if it is still uploading and
    /// has received no more than that; the task goes to `verify` if that completes it (a partial
    /// upload stays open for its final one). Returns the status it is in now.
    pub async fn declare_length(&self, task_id: i64, size: FileSize) -> Result<StatusChange, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                let changed = sqlx::query!(
                    "UPDATE upload_tasks SET file_size = ?2, length_deferred = 0, updated_at = ?3,
                         status = CASE WHEN received_bytes >= ?2 AND concat_role IS NOT 'partial'
                             THEN 'verify' ELSE status END
                     WHERE task_id = ?1 AND status = 'upload' AND length_deferred = 1 AND received_bytes <= ?2",
                    task_id,
                    size,
                    now
                )
                .execute(&mut *conn)
                .await?;
                guarded_change(conn, task_id, changed.rows_affected()).await
            })
        })
        .await
    }

    /// Records that a task made through the fupload protocol is uploaded through `protocol`.
    pub async fn set_protocol(&self, task_id: i64, protocol: Protocol) -> Result<(), StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query!("UPDATE upload_tasks SET protocol = ?2 WHERE task_id = ?1", task_id, protocol)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// The final upload of a concatenation took the bytes of `partials` (its temp file holds them
    /// all now): in one write, each partial ends (`finish`, `joined_into` the final task; a
    /// partial has no callback and no file of its own), and the final task has received its
    /// whole file and goes to `verify`. `StatusChange::Refused` with nothing written when a
    /// partial is no longer open and complete, or the final task no longer uploading.
    pub async fn join_partials(&self, final_id: i64, partials: &[i64], size: u64) -> Result<StatusChange, StoreError> {
        let partials = serde_json::to_string(partials).map_err(|e| StoreError::Unreadable(e.to_string()))?;
        let (end, size) = (i64::try_from(size).unwrap_or(i64::MAX) - 1, i64::try_from(size).unwrap_or(i64::MAX));
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                // Dialect: json_each takes the ids as one JSON text.
                let joined = sqlx::query!(
                    "UPDATE upload_tasks SET status = 'finish', joined_into = ?1, updated_at = ?3, ended_at = ?3
                     WHERE task_id IN (SELECT value FROM json_each(?2)) AND concat_role = 'partial'
                       AND status = 'upload' AND length_deferred = 0 AND received_bytes = file_size",
                    final_id,
                    partials,
                    now
                )
                .execute(&mut *conn)
                .await?;
                let wanted: i64 = sqlx::query_scalar!(r#"SELECT COUNT(*) AS "n!: i64" FROM json_each(?1)"#, partials)
                    .fetch_one(&mut *conn)
                    .await?;
                if joined.rows_affected() != u64::try_from(wanted).unwrap_or(0) {
                    writer::undo(conn).await?;
                    return Ok(StatusChange::Refused(TaskStatus::Upload));
                }
                let received = sqlx::query!(
                    "INSERT INTO received_ranges (task_id, start_byte, end_byte) VALUES (?, 0, ?);
                     UPDATE upload_tasks SET received_bytes = ?, status = 'verify', updated_at = ?
                     WHERE task_id = ? AND status = 'upload' AND received_bytes = 0",
                    final_id,
                    end,
                    size,
                    now,
                    final_id
                )
                .execute(&mut *conn)
                .await?;
                // The insert and the update: two rows.
                if received.rows_affected() != 2 {
                    writer::undo(conn).await?;
                    return Ok(StatusChange::refused(status_of(conn, final_id).await?));
                }
                Ok(StatusChange::Made)
            })
        })
        .await
    }
}
