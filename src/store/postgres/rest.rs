//! The callback outbox, instant upload and the operations' counts on PostgreSQL: the statements
//! of `store::outbox`, `store::instant` and `store::stats`.

use std::time::{Duration, SystemTime};

use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{unsigned, PgStore, Written};
use crate::domain::TaskStatus;
use crate::store::instant::{ranges_json, ranges_of, Challenge, FinishedFile, NewChallenge, PlacedFile, CANDIDATES};
use crate::store::outbox::{DueCallback, DueCallbacks};
use crate::store::{now, timestamp, StoreError};

/// How long a node holds the callbacks it took to send: another node sends them again only after
/// this, when the first one died sending. Longer than a round of the outbox worker takes.
const CALLBACK_LEASE: Duration = Duration::from_secs(120);

fn finished_file_of(row: &PgRow) -> Result<FinishedFile, StoreError> {
    // inode and device are stored as their 64 bits in a signed BIGINT.
    Ok(FinishedFile {
        task_id: row.try_get("task_id")?,
        final_path: row.try_get("final_path")?,
        placed: PlacedFile {
            size: unsigned(row.try_get("placed_size")?)?,
            mtime_ns: row.try_get("placed_mtime_ns")?,
            inode: row.try_get::<i64, _>("placed_inode")? as u64,
            device: row.try_get::<i64, _>("placed_device")? as u64,
        },
    })
}

impl PgStore {
    /// As on SQLite, and the callbacks returned are leased to this node (`CALLBACK_LEASE`): the
    /// outbox workers of the other nodes skip them meanwhile (`FOR UPDATE SKIP LOCKED` keeps two
    /// nodes from taking the same one at the same moment).
    pub async fn due_callbacks(&self, limit: u32) -> Result<DueCallbacks, StoreError> {
        let now = now();
        let lease = CALLBACK_LEASE.as_secs_f64();
        let taken_at = now.clone();
        let due = self
            .write(move |conn| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "UPDATE callback_outbox SET leased_until = now() + make_interval(secs => $3)
                         WHERE callback_id IN (
                             SELECT callback_id FROM callback_outbox
                             WHERE status = 'pending' AND next_attempt_at <= $1
                               AND (leased_until IS NULL OR leased_until < now())
                             ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                         RETURNING callback_id, task_id, notify_url, body, signature, attempts",
                    )
                    .bind(taken_at)
                    .bind(i64::from(limit))
                    .bind(lease)
                    .fetch_all(conn)
                    .await?;
                    let due = rows.iter().map(|row| {
                        Ok(DueCallback {
                            callback_id: row.try_get("callback_id")?,
                            task_id: row.try_get("task_id")?,
                            notify_url: row.try_get("notify_url")?,
                            body: row.try_get("body")?,
                            signature: row.try_get("signature")?,
                            attempts: unsigned(row.try_get("attempts")?)?,
                        })
                    });
                    due.collect::<Result<Vec<_>, StoreError>>().map(Written::Commit)
                })
            })
            .await?;
        // The next one due, or the next lease of another node to run out.
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) FILTER (WHERE next_attempt_at > $1) AS next,
                    EXTRACT(EPOCH FROM MIN(leased_until) FILTER (WHERE leased_until >= now()) - now())::FLOAT8
                        AS lease_ends_in
             FROM callback_outbox WHERE status = 'pending'",
        )
        .bind(&now)
        .fetch_one(self.pool())
        .await?;
        let next: Option<String> = row.try_get("next")?;
        let next = next.map(|at| {
            humantime::parse_rfc3339(&at)
                .ok()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO)
        });
        let lease_ends =
            row.try_get::<Option<f64>, _>("lease_ends_in")?.map(|secs| Duration::from_secs_f64(secs.max(0.0)));
        let next_due_in = match (next, lease_ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(DueCallbacks { due, next_due_in })
    }

    pub async fn callbacks_delivered(&self, callback_ids: &[i64]) -> Result<(), StoreError> {
        if callback_ids.is_empty() {
            return Ok(());
        }
        let ids = callback_ids.to_vec();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE callback_outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = $2,
                         last_error = NULL, leased_until = NULL
                     WHERE callback_id = ANY($1)",
                )
                .bind(ids)
                .bind(now())
                .execute(conn)
                .await?;
                Ok(Written::Commit(()))
            })
        })
        .await
    }

    pub async fn callback_attempt_failed(
        &self,
        callback_id: i64,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (status, next) = match retry_in {
            Some(delay) => ("pending", SystemTime::now() + delay),
            None => ("failed", SystemTime::now()),
        };
        let (error, next) = (error.to_owned(), timestamp(next));
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE callback_outbox SET status = $2, attempts = attempts + 1, next_attempt_at = $3,
                         last_error = $4, leased_until = NULL
                     WHERE callback_id = $1",
                )
                .bind(callback_id)
                .bind(status)
                .bind(next)
                .bind(error)
                .execute(conn)
                .await?;
                Ok(Written::Commit(()))
            })
        })
        .await
    }

    pub async fn finished_files_like(
        &self,
        business_server: &str,
        file_md5: &str,
        file_size: u64,
    ) -> Result<Vec<FinishedFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT task_id, final_path, placed_size, placed_mtime_ns, placed_inode, placed_device FROM upload_tasks
             WHERE business_server = $1 AND file_md5 = $2 AND file_size = $3 AND status = 'finish'
               AND placed_inode IS NOT NULL AND final_path IS NOT NULL
             ORDER BY task_id DESC LIMIT $4",
        )
        .bind(business_server)
        .bind(file_md5)
        .bind(i64::try_from(file_size).unwrap_or(i64::MAX))
        .bind(CANDIDATES)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(finished_file_of).collect()
    }

    pub async fn finished_file(&self, task_id: i64) -> Result<Option<FinishedFile>, StoreError> {
        let row = sqlx::query(
            "SELECT task_id, final_path, placed_size, placed_mtime_ns, placed_inode, placed_device FROM upload_tasks
             WHERE task_id = $1 AND status = 'finish' AND placed_inode IS NOT NULL AND final_path IS NOT NULL",
        )
        .bind(task_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(finished_file_of).transpose()
    }

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
                let stored: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO instant_challenges (task_id, source_task_id, nonce, ranges, expires_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (task_id) DO UPDATE
                         SET source_task_id = excluded.source_task_id, nonce = excluded.nonce,
                             ranges = excluded.ranges, expires_at = excluded.expires_at
                         WHERE instant_challenges.answers < $6
                     RETURNING answers",
                )
                .bind(task_id)
                .bind(source)
                .bind(nonce)
                .bind(ranges)
                .bind(expires_at)
                .bind(max_answers)
                .fetch_optional(conn)
                .await?;
                stored.map(unsigned).transpose().map(Written::Commit)
            })
        })
        .await
    }

    pub async fn count_answer(&self, task_id: i64) -> Result<Option<Challenge>, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                let row = sqlx::query(
                    "UPDATE instant_challenges SET answers = answers + 1 WHERE task_id = $1
                     RETURNING source_task_id, nonce, ranges, answers, expires_at <= $2 AS expired",
                )
                .bind(task_id)
                .bind(now())
                .fetch_optional(conn)
                .await?;
                let challenge = row.map(|row| {
                    Ok(Challenge {
                        source_task_id: row.try_get("source_task_id")?,
                        nonce: row.try_get("nonce")?,
                        ranges: ranges_of(row.try_get("ranges")?)?,
                        answers: unsigned(row.try_get("answers")?)?,
                        expired: row.try_get("expired")?,
                    })
                });
                challenge.transpose().map(Written::Commit)
            })
        })
        .await
    }

    pub async fn instant_from(&self, task_id: i64) -> Result<Option<i64>, StoreError> {
        let from: Option<Option<i64>> = sqlx::query_scalar("SELECT instant_from FROM upload_tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(from.flatten())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    pub async fn open_task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS tasks FROM upload_tasks
             WHERE status IN ('upload', 'pause', 'verify') GROUP BY status",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|row| Ok((row.try_get("status")?, unsigned(row.try_get("tasks")?)?))).collect()
    }

    pub async fn pending_callbacks(&self) -> Result<u64, StoreError> {
        unsigned(
            sqlx::query_scalar("SELECT COUNT(*) FROM callback_outbox WHERE status = 'pending'")
                .fetch_one(self.pool())
                .await?,
        )
    }
}
