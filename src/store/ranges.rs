//! The `received_ranges` table: coalesced inclusive byte ranges, and the gaps between them.

use sqlx::{Executor, Sqlite, SqliteConnection};

use super::tasks::{status_of, task_row, Task};
use super::{now, writer, SqliteStore, StoreError};
use crate::domain::{BlockMerge, ByteRange, TaskStatus};

/// The state of a task after a block's ranges were committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCommit {
    /// Bytes the block added that were not recorded before.
    pub new_bytes: u64,
    pub received_size: u64,
    /// `[0, received_prefix)` is received without a gap.
    pub received_prefix: u64,
    /// `Verify` when this block completed the file, else `Upload`.
    pub status: TaskStatus,
}

/// What came of recording a block's ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOutcome {
    Committed(BlockCommit),
    /// The task is not in `upload` but in this status; nothing was written.
    NotUploading(TaskStatus),
    /// The task's temp file was made anew since the block was planned: its bytes went into the
    /// lost file, and nothing was written.
    TempFileReplaced,
    NoSuchTask,
}

pub(super) fn to_sql(offset: u64) -> i64 {
    // Offsets are below the file size, which FileSize keeps within 63 bits.
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// A range as `received_ranges` writes it: `start-end`.
fn parse_range(text: &str) -> Result<ByteRange, StoreError> {
    text.split_once('-').and_then(|(start, end)| Some((start.parse().ok()?, end.parse().ok()?))).map_or_else(
        || Err(StoreError::Unreadable(format!("stored range {text:?} is not start-end"))),
        |(start, end)| from_sql(start, end),
    )
}

pub(super) fn from_sql(start: i64, end: i64) -> Result<ByteRange, StoreError> {
    u64::try_from(start)
        .ok()
        .zip(u64::try_from(end).ok())
        .and_then(|(start, end)| ByteRange::new(start, end))
        .ok_or_else(|| StoreError::Unreadable(format!("stored range {start}-{end} is not a valid range")))
}

impl SqliteStore {
    /// Records `written` (ranges of the task's temp file that now hold the block's bytes) in one
    /// write: each range is merged with the ranges it touches; the task must still be `upload`
    /// with its temp file of `temp_generation`; its byte count and idle clock move on; and it goes
    /// to `verify` if the file is now complete. Nothing is written unless it is `Committed`.
    pub async fn commit_block(
        &self,
        task_id: i64,
        temp_generation: i64,
        written: &[ByteRange],
    ) -> Result<BlockOutcome, StoreError> {
        let written = written.to_vec();
        self.write(move |conn| {
            Box::pin(async move {
                let updated = match record_ranges(conn, task_id, temp_generation, &written).await {
                    Ok(updated) => updated,
                    // Ranges of a task that does not exist.
                    Err(StoreError::Sqlx(sqlx::Error::Database(e))) if e.is_foreign_key_violation() => {
                        writer::undo(conn).await?;
                        return Ok(BlockOutcome::NoSuchTask);
                    }
                    Err(e) => return Err(e),
                };
                let Some(updated) = updated else {
                    writer::undo(conn).await?;
                    return Ok(match status_of(conn, task_id).await? {
                        // In upload, so its temp generation has moved on.
                        Some(TaskStatus::Upload) => BlockOutcome::TempFileReplaced,
                        Some(status) => BlockOutcome::NotUploading(status),
                        None => BlockOutcome::NoSuchTask,
                    });
                };
                Ok(BlockOutcome::Committed(updated))
            })
        })
        .await
    }

    /// The task's temp file of generation `temp_generation` holds only its first `on_disk` bytes
    /// (it was lost, or cut short): forgets what was received beyond them, notes `why` as the
    /// task's last problem, and moves the temp generation on, so that no block written into the
    /// old file is recorded. A task in `verify` that loses bytes goes back to `upload`. Returns the
    /// task as it is now; `None`, with nothing written, when it is neither open nor in `verify`,
    /// or its generation has moved on already (another repair came first: what it saw on disk is
    /// no longer what is there).
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
                let current = sqlx::query!(
                    r#"SELECT status AS "status: TaskStatus", temp_generation FROM upload_tasks WHERE task_id = ?1"#,
                    task_id
                )
                .fetch_optional(&mut *conn)
                .await?;
                let takes_repair =
                    |status| matches!(status, TaskStatus::Upload | TaskStatus::Pause | TaskStatus::Verify);
                if !current.is_some_and(|row| takes_repair(row.status) && row.temp_generation == temp_generation) {
                    return Ok(None);
                }
                let (on_disk, now) = (to_sql(on_disk), now());
                sqlx::query!("DELETE FROM received_ranges WHERE task_id = ?1 AND start_byte >= ?2", task_id, on_disk)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query!(
                    "UPDATE received_ranges SET end_byte = ?2 - 1 WHERE task_id = ?1 AND end_byte >= ?2",
                    task_id,
                    on_disk
                )
                .execute(&mut *conn)
                .await?;
                // A task in verify had every byte; it keeps them all only if the file was not cut.
                sqlx::query!(
                    "UPDATE upload_tasks SET
                         received_bytes = (SELECT COALESCE(SUM(end_byte - start_byte + 1), 0)
                                           FROM received_ranges WHERE task_id = ?1),
                         status = CASE WHEN status = 'verify' AND ?2 < file_size THEN 'upload' ELSE status END,
                         temp_generation = temp_generation + 1, error = ?3, updated_at = ?4
                     WHERE task_id = ?1",
                    task_id,
                    on_disk,
                    why,
                    now
                )
                .execute(&mut *conn)
                .await?;
                task_row(conn, task_id).await
            })
        })
        .await
    }

    /// The byte ranges of `[0, file_size)` not yet received, ascending.
    pub async fn expected_blocks(&self, task_id: i64, file_size: u64) -> Result<Vec<ByteRange>, StoreError> {
        let received = self.received_ranges(task_id).await?;
        Ok(ByteRange::whole(file_size).map_or_else(Vec::new, |whole| whole.minus(&received)))
    }

    /// Every stored range of the task, in a plain scan (faster than computing the gaps in SQL
    /// with a window function), as one text of `start-end,…`: sqlx hands each row over from its
    /// connection's thread on its own, and a task with 10,000 ranges took four times as long.
    async fn received_ranges(&self, task_id: i64) -> Result<Vec<ByteRange>, StoreError> {
        // Dialect: group_concat.
        let text = sqlx::query_scalar!(
            r#"SELECT group_concat(start_byte || '-' || end_byte) AS "ranges: String"
               FROM received_ranges WHERE task_id = ?1"#,
            task_id
        )
        .fetch_one(&mut *self.reader().await?)
        .await?;
        text.as_deref().unwrap_or_default().split_terminator(',').map(parse_range).collect()
    }

    /// The stored ranges that overlap `within`.
    pub async fn received_within(&self, task_id: i64, within: ByteRange) -> Result<Vec<ByteRange>, StoreError> {
        ranges_overlapping(&mut *self.reader().await?, task_id, within.start(), within.end()).await
    }

    /// The length of the gap-free received run from byte 0.
    pub async fn received_prefix(&self, task_id: i64) -> Result<u64, StoreError> {
        let prefix = sqlx::query_scalar!(
            r#"SELECT end_byte + 1 AS "received_prefix!: u64" FROM received_ranges WHERE task_id = ?1 AND start_byte = 0"#,
            task_id
        )
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        Ok(prefix.unwrap_or(0))
    }
}

/// The stored ranges that overlap `[low, high]`: those starting inside it, plus the last one
/// starting before `low` if it reaches `low`. Both parts walk the primary key.
async fn ranges_overlapping<'e>(
    db: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    low: u64,
    high: u64,
) -> Result<Vec<ByteRange>, StoreError> {
    let (low, high) = (to_sql(low), to_sql(high));
    let rows = sqlx::query!(
        r#"SELECT start_byte AS "start_byte!", end_byte AS "end_byte!" FROM (
               SELECT start_byte, end_byte FROM received_ranges WHERE task_id = ?1 AND start_byte < ?2
               ORDER BY start_byte DESC LIMIT 1
           ) WHERE end_byte >= ?2
           UNION ALL
           SELECT start_byte, end_byte FROM received_ranges WHERE task_id = ?1 AND start_byte BETWEEN ?2 AND ?3"#,
        task_id,
        low,
        high
    )
    .fetch_all(db)
    .await?;
    rows.into_iter().map(|row| from_sql(row.start_byte, row.end_byte)).collect()
}

/// Merges each of `written` with the stored ranges it overlaps or touches, and moves the task's
/// byte count, status and idle clock on, if it is in `upload` at `temp_generation` (`None`
/// otherwise, with its changes to undo). Each range takes two round trips, the read of what it
/// touches and the merge, and the last range's merge carries the task's update.
async fn record_ranges(
    conn: &mut SqliteConnection,
    task_id: i64,
    temp_generation: i64,
    written: &[ByteRange],
) -> Result<Option<BlockCommit>, StoreError> {
    let mut new_bytes = 0;
    let mut last = None;
    for (i, &range) in written.iter().enumerate() {
        let touching =
            ranges_overlapping(&mut *conn, task_id, range.start().saturating_sub(1), range.end().saturating_add(1))
                .await?;
        let merge = BlockMerge::of(range, &touching);
        new_bytes += merge.new_bytes;
        if i + 1 == written.len() {
            last = Some(merge.merged);
        } else if merge.new_bytes > 0 {
            // Every touching range starts inside the merged one, and no other range does.
            let (start, end) = (to_sql(merge.merged.start()), to_sql(merge.merged.end()));
            sqlx::query!(
                "DELETE FROM received_ranges WHERE task_id = ? AND start_byte BETWEEN ? AND ?;
                 INSERT INTO received_ranges (task_id, start_byte, end_byte) VALUES (?, ?, ?)",
                task_id,
                start,
                end,
                task_id,
                start,
                end
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    let (now, new_bytes_sql) = (now(), to_sql(new_bytes));
    // Dialect: RETURNING.
    let updated = match last {
        // The merged range replaces the ones it touches (itself, when it adds nothing). One round
        // trip, three statements: sqlx binds the values in order, one per `?`.
        Some(merged) => {
            let (start, end) = (to_sql(merged.start()), to_sql(merged.end()));
            sqlx::query_as!(
                TaskProgress,
                r#"DELETE FROM received_ranges WHERE task_id = ? AND start_byte BETWEEN ? AND ?;
                   INSERT INTO received_ranges (task_id, start_byte, end_byte) VALUES (?, ?, ?);
                   UPDATE upload_tasks SET updated_at = ?, received_bytes = received_bytes + ?,
                       status = CASE WHEN received_bytes + ? >= file_size AND concat_role IS NOT 'partial'
                           THEN 'verify' ELSE status END
                   WHERE task_id = ? AND status = 'upload' AND temp_generation = ?
                   RETURNING received_bytes AS "received_bytes: u64", status AS "status: TaskStatus",
                       (SELECT end_byte + 1 FROM received_ranges WHERE task_id = upload_tasks.task_id AND start_byte = 0)
                           AS "received_prefix: u64""#,
                task_id,
                start,
                end,
                task_id,
                start,
                end,
                now,
                new_bytes_sql,
                new_bytes_sql,
                task_id,
                temp_generation
            )
            .fetch_optional(&mut *conn)
            .await?
        }
        // Every byte of the block went to blocks in flight beside it: the task's clock moves on.
        None => {
            sqlx::query_as!(
                TaskProgress,
                r#"UPDATE upload_tasks SET updated_at = ?2
                   WHERE task_id = ?1 AND status = 'upload' AND temp_generation = ?3
                   RETURNING received_bytes AS "received_bytes: u64", status AS "status: TaskStatus",
                       (SELECT end_byte + 1 FROM received_ranges WHERE task_id = ?1 AND start_byte = 0)
                           AS "received_prefix: u64""#,
                task_id,
                now,
                temp_generation
            )
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    Ok(updated.map(|task| BlockCommit {
        new_bytes,
        received_size: task.received_bytes,
        received_prefix: task.received_prefix.unwrap_or(0),
        status: task.status,
    }))
}

/// What `record_ranges` reads back of the task it updated.
struct TaskProgress {
    received_bytes: u64,
    status: TaskStatus,
    received_prefix: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tasks::tests::new_task;
    use crate::store::test_support::temp_store;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    async fn task_of(store: &SqliteStore, size: u64) -> i64 {
        store.create_or_resume_task(&new_task(size)).await.unwrap().0.task_id
    }

    async fn received_bytes(store: &SqliteStore, task_id: i64) -> u64 {
        store.task(task_id).await.unwrap().unwrap().received_bytes
    }

    async fn stored(store: &SqliteStore, task_id: i64) -> Vec<ByteRange> {
        let mut ranges = store.received_within(task_id, r(0, u64::MAX >> 2)).await.unwrap();
        ranges.sort_by_key(|range| range.start());
        ranges
    }

    async fn commit(store: &SqliteStore, task_id: i64, range: ByteRange) -> BlockCommit {
        committed(store.commit_block(task_id, 0, &[range]).await.unwrap())
    }

    fn committed(outcome: BlockOutcome) -> BlockCommit {
        match outcome {
            BlockOutcome::Committed(commit) => commit,
            other => panic!("not committed: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_fresh_task_expects_the_whole_file() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 100).await;
        assert_eq!(store.expected_blocks(id, 100).await.unwrap(), vec![r(0, 99)]);
        assert_eq!(received_bytes(&store, id).await, 0);
    }

    #[tokio::test]
    async fn gaps_at_the_start_middle_and_end() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 100).await;
        assert_eq!(commit(&store, id, r(10, 19)).await.received_prefix, 0);
        commit(&store, id, r(40, 49)).await;
        assert_eq!(store.expected_blocks(id, 100).await.unwrap(), vec![r(0, 9), r(20, 39), r(50, 99)]);
        assert_eq!(commit(&store, id, r(0, 0)).await.received_prefix, 1);
        assert_eq!(commit(&store, id, r(99, 99)).await.received_prefix, 1);
        assert_eq!(store.expected_blocks(id, 100).await.unwrap(), vec![r(1, 9), r(20, 39), r(50, 98)]);
        assert_eq!(received_bytes(&store, id).await, 22);
    }

    #[tokio::test]
    async fn adjacent_and_overlapping_blocks_coalesce_into_one_row() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 100).await;
        assert_eq!(commit(&store, id, r(20, 29)).await.new_bytes, 10);
        assert_eq!(commit(&store, id, r(30, 39)).await.new_bytes, 10);
        assert_eq!(commit(&store, id, r(5, 19)).await.new_bytes, 15);
        assert_eq!(commit(&store, id, r(35, 44)).await.new_bytes, 5);
        assert_eq!(stored(&store, id).await, vec![r(5, 44)]);
        let repeat = commit(&store, id, r(10, 20)).await;
        assert_eq!((repeat.new_bytes, repeat.received_size), (0, 40));
        assert_eq!(stored(&store, id).await, vec![r(5, 44)]);
    }

    #[tokio::test]
    async fn a_block_bridging_two_ranges_merges_all_three() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 100).await;
        commit(&store, id, r(0, 9)).await;
        commit(&store, id, r(20, 29)).await;
        commit(&store, id, r(50, 59)).await;
        assert_eq!(commit(&store, id, r(10, 19)).await.new_bytes, 10);
        assert_eq!(stored(&store, id).await, vec![r(0, 29), r(50, 59)]);
    }

    #[tokio::test]
    async fn the_last_byte_completes_the_file_and_moves_it_to_verify() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 100).await;
        assert_eq!(commit(&store, id, r(0, 98)).await.status, TaskStatus::Upload);
        let last = commit(&store, id, r(99, 99)).await;
        assert_eq!(
            last,
            BlockCommit { new_bytes: 1, received_size: 100, received_prefix: 100, status: TaskStatus::Verify }
        );
        assert_eq!(store.expected_blocks(id, 100).await.unwrap(), vec![]);
        assert_eq!(
            store.commit_block(id, 0, &[r(0, 0)]).await.unwrap(),
            BlockOutcome::NotUploading(TaskStatus::Verify)
        );
    }

    #[tokio::test]
    async fn single_byte_file_and_a_block_covering_everything() {
        let (store, _dir) = temp_store().await;
        let one = task_of(&store, 1).await;
        assert_eq!(store.expected_blocks(one, 1).await.unwrap(), vec![r(0, 0)]);
        assert_eq!(commit(&store, one, r(0, 0)).await.status, TaskStatus::Verify);
        let big = task_of(&store, 1000).await;
        commit(&store, big, r(3, 3)).await;
        commit(&store, big, r(500, 600)).await;
        let all = commit(&store, big, r(0, 999)).await;
        assert_eq!((all.new_bytes, all.status), (1000 - 1 - 101, TaskStatus::Verify));
        assert_eq!(stored(&store, big).await, vec![r(0, 999)]);
    }

    #[tokio::test]
    async fn blocks_are_refused_unless_the_task_is_uploading() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 100).await;
        store.change_status(id, TaskStatus::Upload, TaskStatus::Pause).await.unwrap();
        assert_eq!(store.commit_block(id, 0, &[r(0, 9)]).await.unwrap(), BlockOutcome::NotUploading(TaskStatus::Pause));
        assert_eq!(store.commit_block(4242, 0, &[r(0, 9)]).await.unwrap(), BlockOutcome::NoSuchTask);
        assert_eq!(stored(&store, id).await, vec![]);
    }

    #[tokio::test]
    async fn received_within_finds_the_overlapping_ranges() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 100).await;
        for range in [r(0, 9), r(20, 29), r(40, 49)] {
            commit(&store, id, range).await;
        }
        assert_eq!(store.received_within(id, r(5, 25)).await.unwrap(), vec![r(0, 9), r(20, 29)]);
        assert_eq!(store.received_within(id, r(10, 19)).await.unwrap(), vec![]);
        assert_eq!(store.received_within(id, r(29, 40)).await.unwrap(), vec![r(20, 29), r(40, 49)]);
        assert_eq!(store.received_within(id, r(50, 99)).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn gap_query_stays_right_with_many_ranges() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 30_000).await;
        let ranges: Vec<ByteRange> = (0..10_000).map(|i| r(i * 3, i * 3 + 1)).collect();
        committed(store.commit_block(id, 0, &ranges).await.unwrap());
        let gaps = store.expected_blocks(id, 30_000).await.unwrap();
        assert_eq!(gaps.len(), 10_000);
        assert_eq!(gaps[0], r(2, 2));
        assert_eq!(gaps[9_999], r(29_999, 29_999));
    }

    #[tokio::test]
    async fn a_commit_dropped_half_way_records_all_or_nothing_and_the_writer_goes_on() {
        // A request dropped mid-commit: its write, once handed to the writer, runs whole or not
        // at all, and the writer goes on with the next.
        use futures_util::FutureExt;
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 1_000).await;
        // Dropped after 0 to 390 polls: before, inside and (the last ones) after the transaction.
        for polls in (0..40u64).map(|n| n * 10) {
            let range = [r(polls * 2, polls * 2 + 9)];
            let mut dropped = std::pin::pin!(store.commit_block(id, 0, &range));
            for _ in 0..polls {
                if (&mut dropped).now_or_never().is_some() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        commit(&store, id, r(900, 999)).await;
        let stored = stored(&store, id).await;
        assert!(stored.contains(&r(900, 999)));
        let stored_bytes: u64 = stored.iter().map(ByteRange::size).sum();
        assert_eq!(received_bytes(&store, id).await, stored_bytes, "{stored:?}");
    }

    #[tokio::test]
    async fn writes_handed_in_before_the_close_are_committed_and_none_is_left_waiting() {
        let (store, _dir) = temp_store().await;
        let id = task_of(&store, 1_000).await;
        let blocks: Vec<[ByteRange; 1]> = (0..20u64).map(|i| [r(i * 10, i * 10 + 9)]).collect();
        let commits = futures_util::future::join_all(blocks.iter().map(|block| store.commit_block(id, 0, block)));
        // Polled in order: every commit is handed to the writer before the close begins.
        let (committed, ()) = tokio::join!(commits, store.close());
        assert!(committed.iter().all(|c| matches!(c, Ok(BlockOutcome::Committed(_)))), "{committed:?}");
        let late = tokio::time::timeout(std::time::Duration::from_secs(5), store.received_prefix(id)).await;
        assert!(matches!(late, Ok(Err(StoreError::Closed))), "{late:?}");
    }

    #[tokio::test]
    async fn a_closed_store_refuses_writes() {
        let (store, _dir) = temp_store().await;
        store.close().await;
        assert!(matches!(store.create_or_resume_task(&new_task(10)).await, Err(StoreError::Closed)));
    }
}
