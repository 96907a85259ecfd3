//! `received_ranges` on PostgreSQL: the statements of `store::ranges`, and the expected blocks as
//! the gaps between the ranges, computed in SQL.

use sqlx::{PgConnection, Row};

use super::tasks::{lock_task, task_row};
use super::{unsigned, PgStore, Written};
use crate::domain::{BlockMerge, ByteRange, TaskStatus};
use crate::store::ranges::{from_sql, to_sql, BlockCommit, BlockOutcome};
use crate::store::tasks::Task;
use crate::store::{now, StoreError};

/// Reads `(start_byte, end_byte)` rows as ranges.
fn ranges_of(rows: Vec<sqlx::postgres::PgRow>) -> Result<Vec<ByteRange>, StoreError> {
    rows.iter().map(|row| from_sql(row.try_get(0)?, row.try_get(1)?)).collect()
}

/// The stored ranges that overlap `[low, high]`: the last one starting before `low` if it reaches
/// it, and those starting inside.
async fn ranges_overlapping(
    conn: &mut PgConnection,
    task_id: i64,
    low: u64,
    high: u64,
) -> Result<Vec<ByteRange>, StoreError> {
    let rows = sqlx::query(
        "SELECT start_byte, end_byte FROM (
             SELECT start_byte, end_byte FROM received_ranges WHERE task_id = $1 AND start_byte < $2
             ORDER BY start_byte DESC LIMIT 1
         ) AS before WHERE end_byte >= $2
         UNION ALL
         SELECT start_byte, end_byte FROM received_ranges WHERE task_id = $1 AND start_byte BETWEEN $2 AND $3",
    )
    .bind(task_id)
    .bind(to_sql(low))
    .bind(to_sql(high))
    .fetch_all(conn)
    .await?;
    ranges_of(rows)
}

impl PgStore {
    pub async fn commit_block(
        &self,
        task_id: i64,
        temp_generation: i64,
        written: &[ByteRange],
    ) -> Result<BlockOutcome, StoreError> {
        let written = written.to_vec();
        self.write(move |conn| {
            Box::pin(async move {
                match lock_task(conn, task_id).await? {
                    None => return Ok(Written::Commit(BlockOutcome::NoSuchTask)),
                    Some((status, _)) if status != TaskStatus::Upload => {
                        return Ok(Written::Commit(BlockOutcome::NotUploading(status)))
                    }
                    Some((_, generation)) if generation != temp_generation => {
                        return Ok(Written::Commit(BlockOutcome::TempFileReplaced))
                    }
                    Some(_) => {}
                }
                let mut new_bytes = 0;
                for &range in &written {
                    let touching = ranges_overlapping(
                        conn,
                        task_id,
                        range.start().saturating_sub(1),
                        range.end().saturating_add(1),
                    )
                    .await?;
                    let merge = BlockMerge::of(range, &touching);
                    if merge.new_bytes == 0 {
                        continue;
                    }
                    new_bytes += merge.new_bytes;
                    // Every touching range starts inside the merged one, and no other range does.
                    let (start, end) = (to_sql(merge.merged.start()), to_sql(merge.merged.end()));
                    sqlx::query("DELETE FROM received_ranges WHERE task_id = $1 AND start_byte BETWEEN $2 AND $3")
                        .bind(task_id)
                        .bind(start)
                        .bind(end)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("INSERT INTO received_ranges (task_id, start_byte, end_byte) VALUES ($1, $2, $3)")
                        .bind(task_id)
                        .bind(start)
                        .bind(end)
                        .execute(&mut *conn)
                        .await?;
                }
                let row = sqlx::query(
                    "UPDATE upload_tasks SET updated_at = $2, received_bytes = received_bytes + $3,
                         status = CASE WHEN received_bytes + $3 >= file_size AND concat_role IS DISTINCT FROM 'partial'
                             THEN 'verify' ELSE status END
                     WHERE task_id = $1
                     RETURNING received_bytes, status,
                         COALESCE((SELECT end_byte + 1 FROM received_ranges WHERE task_id = $1 AND start_byte = 0), 0)
                             AS received_prefix",
                )
                .bind(task_id)
                .bind(now())
                .bind(to_sql(new_bytes))
                .fetch_one(&mut *conn)
                .await?;
                Ok(Written::Commit(BlockOutcome::Committed(BlockCommit {
                    new_bytes,
                    received_size: unsigned(row.try_get("received_bytes")?)?,
                    received_prefix: unsigned(row.try_get("received_prefix")?)?,
                    status: row.try_get("status")?,
                })))
            })
        })
        .await
    }

    pub async fn reset_received_beyond(
        &self,
        task_id: i64,
        temp_generation: i64,
        on_disk: u64,
        why: &str,
    ) -> Result<Option<Task>, StoreError> {
        let why = why.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                let takes_repair =
                    |status| matches!(status, TaskStatus::Upload | TaskStatus::Pause | TaskStatus::Verify);
                match lock_task(conn, task_id).await? {
                    Some((status, generation)) if takes_repair(status) && generation == temp_generation => {}
                    _ => return Ok(Written::Commit(None)),
                }
                let on_disk = to_sql(on_disk);
                sqlx::query("DELETE FROM received_ranges WHERE task_id = $1 AND start_byte >= $2")
                    .bind(task_id)
                    .bind(on_disk)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("UPDATE received_ranges SET end_byte = $2 - 1 WHERE task_id = $1 AND end_byte >= $2")
                    .bind(task_id)
                    .bind(on_disk)
                    .execute(&mut *conn)
                    .await?;
                // A task in verify had every byte; it keeps them all only if the file was not cut.
                sqlx::query(
                    "UPDATE upload_tasks SET
                         received_bytes = (SELECT COALESCE(SUM(end_byte - start_byte + 1), 0)::BIGINT
                                           FROM received_ranges WHERE task_id = $1),
                         status = CASE WHEN status = 'verify' AND $2 < file_size THEN 'upload' ELSE status END,
                         temp_generation = temp_generation + 1, error = $3, updated_at = $4
                     WHERE task_id = $1",
                )
                .bind(task_id)
                .bind(on_disk)
                .bind(why)
                .bind(now())
                .execute(&mut *conn)
                .await?;
                task_row(conn, task_id).await.map(Written::Commit)
            })
        })
        .await
    }

    /// The gaps between the stored ranges and after the last, within `[0, file_size)`.
    pub async fn expected_blocks(&self, task_id: i64, file_size: u64) -> Result<Vec<ByteRange>, StoreError> {
        let rows = sqlx::query(
            "SELECT gap_start, gap_end FROM (
                 SELECT COALESCE(LAG(end_byte) OVER (ORDER BY start_byte) + 1, 0) AS gap_start,
                        start_byte - 1 AS gap_end
                 FROM received_ranges WHERE task_id = $1
                 UNION ALL
                 SELECT COALESCE(MAX(end_byte) + 1, 0), $2 - 1 FROM received_ranges WHERE task_id = $1
             ) AS gaps WHERE gap_start <= gap_end ORDER BY gap_start",
        )
        .bind(task_id)
        .bind(to_sql(file_size))
        .fetch_all(self.pool())
        .await?;
        ranges_of(rows)
    }

    pub async fn received_within(&self, task_id: i64, within: ByteRange) -> Result<Vec<ByteRange>, StoreError> {
        ranges_overlapping(&mut *self.pool().acquire().await?, task_id, within.start(), within.end()).await
    }

    pub async fn received_prefix(&self, task_id: i64) -> Result<u64, StoreError> {
        let prefix: Option<i64> =
            sqlx::query_scalar("SELECT end_byte + 1 FROM received_ranges WHERE task_id = $1 AND start_byte = 0")
                .bind(task_id)
                .fetch_optional(self.pool())
                .await?;
        prefix.map_or(Ok(0), unsigned)
    }
}
