//! Instant upload: the files finished tasks placed, and the challenges instant creates were
//! answered with (the `instant_challenges` table).

use super::{now, timestamp, SqliteStore, StoreError};
use crate::domain::ByteRange;

/// What identifies a placed file: a file found at the task's final path with other values is
/// not the one that was verified (it was replaced, written to, or touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub device: u64,
}

/// A finished task's file, as its finish recorded it.
#[derive(Debug, Clone)]
pub struct FinishedFile {
    pub task_id: i64,
    pub final_path: String,
    pub placed: PlacedFile,
}

/// A challenge to store.
#[derive(Debug, Clone)]
pub struct NewChallenge {
    pub source_task_id: i64,
    pub nonce: String,
    pub ranges: Vec<ByteRange>,
    pub expires_at: std::time::SystemTime,
}

/// A stored challenge, as an answer finds it.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub source_task_id: i64,
    pub nonce: String,
    pub ranges: Vec<ByteRange>,
    /// Answers received, this one included.
    pub answers: u64,
    pub expired: bool,
}

struct FinishedRow {
    task_id: i64,
    final_path: String,
    placed_size: i64,
    placed_mtime_ns: i64,
    placed_inode: i64,
    placed_device: i64,
}

impl From<FinishedRow> for FinishedFile {
    fn from(row: FinishedRow) -> Self {
        // inode and device are stored as their 64 bits (SQLite's INTEGER is signed).
        FinishedFile {
            task_id: row.task_id,
            final_path: row.final_path,
            placed: PlacedFile {
                size: row.placed_size as u64,
                mtime_ns: row.placed_mtime_ns,
                inode: row.placed_inode as u64,
                device: row.placed_device as u64,
            },
        }
    }
}

/// How many finished files of the same content a create looks at (newest first): one is
/// enough, a few cover files removed or changed since.
pub(super) const CANDIDATES: i64 = 4;

pub(super) fn ranges_json(ranges: &[ByteRange]) -> String {
    let pairs: Vec<[u64; 2]> = ranges.iter().map(|r| [r.start(), r.end()]).collect();
    serde_json::to_string(&pairs).unwrap_or_default()
}

pub(super) fn ranges_of(json: &str) -> Result<Vec<ByteRange>, StoreError> {
    let pairs: Vec<[u64; 2]> =
        serde_json::from_str(json).map_err(|e| StoreError::Unreadable(format!("challenge ranges: {e}")))?;
    pairs
        .into_iter()
        .map(|[start, end]| {
            ByteRange::new(start, end).ok_or_else(|| StoreError::Unreadable(format!("challenge range {start}-{end}")))
        })
        .collect()
}

impl SqliteStore {
    /// The newest finished tasks of `business_server` with this content whose finish recorded
    /// the placed file.
    pub async fn finished_files_like(
        &self,
        business_server: &str,
        file_md5: &str,
        file_size: u64,
    ) -> Result<Vec<FinishedFile>, StoreError> {
        let size = i64::try_from(file_size).unwrap_or(i64::MAX);
        let rows = sqlx::query_as!(
            FinishedRow,
            r#"SELECT task_id AS "task_id!", final_path AS "final_path!", placed_size AS "placed_size!",
                   placed_mtime_ns AS "placed_mtime_ns!", placed_inode AS "placed_inode!",
                   placed_device AS "placed_device!"
               FROM upload_tasks
               WHERE business_server = ?1 AND file_md5 = ?2 AND file_size = ?3 AND status = 'finish'
                 AND placed_inode IS NOT NULL AND final_path IS NOT NULL
               ORDER BY task_id DESC LIMIT ?4"#,
            business_server,
            file_md5,
            size,
            CANDIDATES
        )
        .fetch_all(&mut *self.reader().await?)
        .await?;
        Ok(rows.into_iter().map(FinishedFile::from).collect())
    }

    /// The finished task `task_id`'s file, if it is still finished and recorded.
    pub async fn finished_file(&self, task_id: i64) -> Result<Option<FinishedFile>, StoreError> {
        let row = sqlx::query_as!(
            FinishedRow,
            r#"SELECT task_id AS "task_id!", final_path AS "final_path!", placed_size AS "placed_size!",
                   placed_mtime_ns AS "placed_mtime_ns!", placed_inode AS "placed_inode!",
                   placed_device AS "placed_device!"
               FROM upload_tasks
               WHERE task_id = ?1 AND status = 'finish' AND placed_inode IS NOT NULL AND final_path IS NOT NULL"#,
            task_id
        )
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        Ok(row.map(FinishedFile::from))
    }

    /// Stores the task's challenge in place of an earlier one, keeping the count of answers
    /// (a repeated create does not give a task more tries): the answers given so far. `None`
    /// when the task has used up `max_answers` and no challenge is stored.
    pub async fn put_challenge(
        &self,
        task_id: i64,
        challenge: &NewChallenge,
        max_answers: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (source, nonce) = (challenge.source_task_id, challenge.nonce.clone());
        let (ranges, expires_at) = (ranges_json(&challenge.ranges), timestamp(challenge.expires_at));
        let max_answers = i64::try_from(max_answers).unwrap_or(i64::MAX);
        self.write(move |conn| {
            Box::pin(async move {
                // Dialect: the upsert, and RETURNING.
                let stored = sqlx::query_scalar!(
                    r#"INSERT INTO instant_challenges (task_id, source_task_id, nonce, ranges, expires_at)
                       VALUES (?1, ?2, ?3, ?4, ?5)
                       ON CONFLICT (task_id) DO UPDATE
                           SET source_task_id = excluded.source_task_id, nonce = excluded.nonce,
                               ranges = excluded.ranges, expires_at = excluded.expires_at
                           WHERE instant_challenges.answers < ?6
                       RETURNING answers AS "answers: u64""#,
                    task_id,
                    source,
                    nonce,
                    ranges,
                    expires_at,
                    max_answers
                )
                .fetch_optional(conn)
                .await?;
                Ok(stored)
            })
        })
        .await
    }

    /// Counts an answer to the task's challenge and returns the challenge; `None` when it has
    /// none. The count is written before the answer is checked, so racing answers cannot
    /// exceed the limit.
    pub async fn count_answer(&self, task_id: i64) -> Result<Option<Challenge>, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                let now = now();
                let row = sqlx::query!(
                    r#"UPDATE instant_challenges SET answers = answers + 1 WHERE task_id = ?1
                       RETURNING source_task_id, nonce, ranges, answers AS "answers: u64",
                           expires_at <= ?2 AS "expired!: bool""#,
                    task_id,
                    now
                )
                .fetch_optional(conn)
                .await?;
                row.map(|row| {
                    Ok(Challenge {
                        source_task_id: row.source_task_id,
                        nonce: row.nonce,
                        ranges: ranges_of(&row.ranges)?,
                        answers: row.answers,
                        expired: row.expired,
                    })
                })
                .transpose()
            })
        })
        .await
    }

    /// The task the file of `task_id` was linked from, if it was finished by an instant upload.
    pub async fn instant_from(&self, task_id: i64) -> Result<Option<i64>, StoreError> {
        let from = sqlx::query_scalar!("SELECT instant_from FROM upload_tasks WHERE task_id = ?1", task_id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        Ok(from.flatten())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::domain::TaskStatus;
    use crate::store::tasks::tests::new_task;
    use crate::store::test_support::temp_store;

    fn challenge(source: i64, expires_in: Duration) -> NewChallenge {
        NewChallenge {
            source_task_id: source,
            nonce: "n".repeat(32),
            ranges: vec![ByteRange::new(0, 3).unwrap(), ByteRange::new(5, 9).unwrap()],
            expires_at: SystemTime::now() + expires_in,
        }
    }

    #[tokio::test]
    async fn answers_are_counted_and_a_repeated_challenge_keeps_the_count() {
        let (store, _dir) = temp_store().await;
        let (task, _) = store.create_or_resume_task(&new_task(10)).await.unwrap();
        assert!(store.count_answer(task.task_id).await.unwrap().is_none(), "no challenge yet");
        let id = task.task_id;
        assert_eq!(store.put_challenge(id, &challenge(id, Duration::from_secs(60)), 2).await.unwrap(), Some(0));
        let first = store.count_answer(id).await.unwrap().unwrap();
        assert_eq!((first.answers, first.expired, first.ranges.len()), (1, false, 2));
        assert_eq!(store.put_challenge(id, &challenge(id, Duration::ZERO), 2).await.unwrap(), Some(1));
        let second = store.count_answer(id).await.unwrap().unwrap();
        assert_eq!((second.answers, second.expired), (2, true));
        assert!(store.put_challenge(id, &challenge(id, Duration::from_secs(60)), 2).await.unwrap().is_none());
        assert_eq!(store.task(id).await.unwrap().unwrap().status, TaskStatus::Upload);
    }
}
