//! What the nodes on one database coordinate through it, each held under a lease in the
//! database's clock, so that a node that dies lets go of it once the lease runs out:
//! - the claims of blocks in flight (`block_claims`), so that a block on one node never writes
//!   bytes a block in flight on another claimed;
//! - the finish of a task in `verify` (`finish_holder`), so that one node at a time verifies and
//!   places its file.
//!
//! The holder renews a lease while it works (src/service/lease.rs).

use std::time::Duration;

use sqlx::Row;

use super::tasks::lock_task;
use super::{unsigned, PgStore, Written};
use crate::domain::{ByteRange, TaskStatus};
use crate::store::ranges::{from_sql, to_sql};
use crate::store::StoreError;

/// The parts of a block's range it claimed, and the claim's id.
#[derive(Debug)]
pub struct SharedClaim {
    pub claim_id: i64,
    pub ranges: Vec<ByteRange>,
}

impl PgStore {
    /// Claims the parts of `range` that no live claim of another block of the task holds, until
    /// `lease` from now. Claims whose lease ran out (their node died) are removed first.
    pub async fn claim_ranges(
        &self,
        task_id: i64,
        range: ByteRange,
        lease: Duration,
    ) -> Result<SharedClaim, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                // One claimer of the task at a time, on any node: what it reads is what it inserts
                // against. A task that takes no blocks (it ended meanwhile) gets no claim: its block
                // writes nothing, and its commit says why.
                if lock_task(conn, task_id).await?.is_none_or(|(status, _)| status != TaskStatus::Upload) {
                    return Ok(Written::Commit(SharedClaim { claim_id: 0, ranges: Vec::new() }));
                }
                sqlx::query("DELETE FROM block_claims WHERE task_id = $1 AND lease_until < now()")
                    .bind(task_id)
                    .execute(&mut *conn)
                    .await?;
                let rows = sqlx::query(
                    "SELECT start_byte, end_byte FROM block_claims WHERE task_id = $1 AND start_byte <= $3 AND end_byte >= $2",
                )
                .bind(task_id)
                .bind(to_sql(range.start()))
                .bind(to_sql(range.end()))
                .fetch_all(&mut *conn)
                .await?;
                let taken = rows.iter().map(|row| from_sql(row.try_get(0)?, row.try_get(1)?)).collect::<Result<Vec<_>, _>>()?;
                let ranges = range.minus(&taken);
                let claim_id: i64 = sqlx::query_scalar("SELECT nextval('block_claim_ids')").fetch_one(&mut *conn).await?;
                let (starts, ends): (Vec<i64>, Vec<i64>) =
                    ranges.iter().map(|r| (to_sql(r.start()), to_sql(r.end()))).unzip();
                sqlx::query(
                    "INSERT INTO block_claims (task_id, start_byte, end_byte, claim_id, lease_until)
                     SELECT $1, s, e, $4, now() + make_interval(secs => $5)
                     FROM UNNEST($2::BIGINT[], $3::BIGINT[]) AS parts (s, e)",
                )
                .bind(task_id)
                .bind(starts)
                .bind(ends)
                .bind(claim_id)
                .bind(lease.as_secs_f64())
                .execute(&mut *conn)
                .await?;
                Ok(Written::Commit(SharedClaim { claim_id, ranges }))
            })
        })
        .await
    }

    /// Extends the claim's lease to `lease` from now; `false` when it is gone (it ran out and
    /// another block removed it).
    pub async fn renew_claim(&self, claim_id: i64, lease: Duration) -> Result<bool, StoreError> {
        self.read(move |pool| {
            Box::pin(async move {
                let renewed = sqlx::query(
                    "UPDATE block_claims SET lease_until = now() + make_interval(secs => $2) WHERE claim_id = $1",
                )
                .bind(claim_id)
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await?;
                Ok(renewed.rows_affected() > 0)
            })
        })
        .await
    }

    pub async fn release_claim(&self, claim_id: i64) -> Result<(), StoreError> {
        self.read(move |pool| {
            Box::pin(async move {
                sqlx::query("DELETE FROM block_claims WHERE claim_id = $1").bind(claim_id).execute(&pool).await?;
                Ok(())
            })
        })
        .await
    }

    /// Removes the claims whose lease ran out (their node died, or their request was dropped
    /// before it learnt of the claim), of every task: those of a task no block claims again
    /// would stay. Returns how many.
    pub async fn remove_expired_claims(&self) -> Result<u64, StoreError> {
        self.read(|pool| {
            Box::pin(async move {
                let removed = sqlx::query("DELETE FROM block_claims WHERE lease_until < now()").execute(&pool).await?;
                Ok(removed.rows_affected())
            })
        })
        .await
    }

    /// Block claims recorded, live or not: none once every block has ended.
    pub async fn claims_recorded(&self) -> Result<u64, StoreError> {
        self.read(move |pool| {
            Box::pin(async move {
                unsigned(sqlx::query_scalar("SELECT COUNT(*) FROM block_claims").fetch_one(&pool).await?)
            })
        })
        .await
    }

    /// Takes (or, for its holder, renews) the finish of a task in `verify` until `lease` from
    /// now: `false` when the task is not in `verify` or another holder's lease is running.
    pub async fn hold_finish(&self, task_id: i64, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        let holder = holder.to_owned();
        self.read(move |pool| {
            Box::pin(async move {
                let held = sqlx::query(
                    "UPDATE upload_tasks SET finish_holder = $2, finish_lease_until = now() + make_interval(secs => $3)
             WHERE task_id = $1 AND status = 'verify'
               AND (finish_holder IS NULL OR finish_holder = $2 OR finish_lease_until < now())",
                )
                .bind(task_id)
                .bind(&holder)
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await?;
                Ok(held.rows_affected() == 1)
            })
        })
        .await
    }

    /// Lets go of the finish of a task, when `holder` holds it (a finish that will be tried again).
    pub async fn release_finish(&self, task_id: i64, holder: &str) -> Result<(), StoreError> {
        let holder = holder.to_owned();
        self.read(move |pool| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE upload_tasks SET finish_holder = NULL, finish_lease_until = NULL
             WHERE task_id = $1 AND finish_holder = $2",
                )
                .bind(task_id)
                .bind(&holder)
                .execute(&pool)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Tasks in `verify` whose finish no node holds: their node died, or none took them yet.
    pub async fn unheld_finishes(&self) -> Result<Vec<i64>, StoreError> {
        self.read(move |pool| {
            Box::pin(async move {
                Ok(sqlx::query_scalar(
                    "SELECT task_id FROM upload_tasks
             WHERE status = 'verify' AND (finish_holder IS NULL OR finish_lease_until < now()) ORDER BY task_id",
                )
                .fetch_all(&pool)
                .await?)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::test_support::temp_store;
    use crate::store::tasks::tests::new_task;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn claims_of_two_nodes_share_out_a_range_and_a_dead_nodes_run_out() {
        let Some((node_a, database)) = temp_store().await else { return };
        let node_b = PgStore::open(&database.url, 1).await.unwrap();
        let (task, _) = node_a.create_or_resume_task(&new_task(1000)).await.unwrap();
        let first = node_a.claim_ranges(task.task_id, r(100, 199), LONG).await.unwrap();
        assert_eq!(first.ranges, [r(100, 199)]);
        let second = node_b.claim_ranges(task.task_id, r(0, 299), LONG).await.unwrap();
        assert_eq!(second.ranges, [r(0, 99), r(200, 299)], "node B gets only what node A did not claim");
        assert!(node_b.claim_ranges(task.task_id, r(50, 250), LONG).await.unwrap().ranges.is_empty());
        node_a.release_claim(first.claim_id).await.unwrap();
        assert_eq!(node_b.claim_ranges(task.task_id, r(50, 250), LONG).await.unwrap().ranges, [r(100, 199)]);
        // A claim its node stopped renewing: free once its lease has run out.
        let (other, _) = node_a.create_or_resume_task(&new_task(2000)).await.unwrap();
        let short = node_a.claim_ranges(other.task_id, r(0, 999), Duration::from_millis(300)).await.unwrap();
        assert!(node_b.claim_ranges(other.task_id, r(0, 9), LONG).await.unwrap().ranges.is_empty());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(node_b.claim_ranges(other.task_id, r(0, 9), LONG).await.unwrap().ranges, [r(0, 9)]);
        assert!(!node_a.renew_claim(short.claim_id, LONG).await.unwrap(), "the claim that ran out is gone");
        // One that ran out and that no block of its task asks about again goes with the sweep.
        let (third, _) = node_a.create_or_resume_task(&new_task(3000)).await.unwrap();
        node_a.claim_ranges(third.task_id, r(0, 9), Duration::from_millis(100)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(node_b.remove_expired_claims().await.unwrap(), 1);
        node_b.claim_ranges(third.task_id, r(0, 9), LONG).await.unwrap();
        // A task that ends takes its claims with it, and one that ended gets none.
        let (ending, callback) = crate::store::outbox::tests::ending_with_callback(crate::domain::TaskStatus::Cancel);
        let open = [crate::domain::TaskStatus::Upload];
        node_a.end_task(third.task_id, &open, &ending, &callback).await.unwrap();
        assert!(node_a.claim_ranges(third.task_id, r(0, 9), LONG).await.unwrap().ranges.is_empty());
        node_a.end_task(task.task_id, &open, &ending, &callback).await.unwrap();
        node_a.end_task(other.task_id, &open, &ending, &callback).await.unwrap();
        assert_eq!(node_a.claims_recorded().await.unwrap(), 0, "no claim outlives its task");
        node_b.close().await;
        node_a.close().await;
    }

    #[tokio::test]
    async fn one_node_at_a_time_holds_a_finish_until_it_lets_go_or_its_lease_runs_out() {
        let Some((store, _database)) = temp_store().await else { return };
        let mut verifying = new_task(10);
        verifying.status = crate::domain::TaskStatus::Verify;
        let (task, _) = store.create_or_resume_task(&verifying).await.unwrap();
        let id = task.task_id;
        assert_eq!(store.unheld_finishes().await.unwrap(), [id]);
        assert!(store.hold_finish(id, "a", LONG).await.unwrap());
        assert!(store.hold_finish(id, "a", LONG).await.unwrap(), "its holder renews it");
        assert!(!store.hold_finish(id, "b", LONG).await.unwrap());
        assert!(store.unheld_finishes().await.unwrap().is_empty());
        store.release_finish(id, "b").await.unwrap();
        assert!(!store.hold_finish(id, "b", LONG).await.unwrap(), "only its holder lets it go");
        store.release_finish(id, "a").await.unwrap();
        assert!(store.hold_finish(id, "b", Duration::from_millis(200)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.unheld_finishes().await.unwrap(), [id], "b's lease ran out");
        assert!(store.hold_finish(id, "a", LONG).await.unwrap());
        // A task not in verify has no finish to hold.
        let (open, _) = store.create_or_resume_task(&new_task(11)).await.unwrap();
        assert!(!store.hold_finish(open.task_id, "a", LONG).await.unwrap());
    }

    #[tokio::test]
    async fn a_due_callback_goes_to_one_node_and_to_none_once_delivered() {
        let Some((node_a, database)) = temp_store().await else { return };
        let node_b = PgStore::open(&database.url, 1).await.unwrap();
        let task_id =
            crate::store::outbox::tests::ended_with_callback(&crate::store::Store::Postgres(node_a.clone()), 5).await;
        let (taken_a, taken_b) = tokio::join!(node_a.due_callbacks(10), node_b.due_callbacks(10));
        let (taken_a, taken_b) = (taken_a.unwrap(), taken_b.unwrap());
        let taken: Vec<i64> = taken_a.due.iter().chain(&taken_b.due).map(|c| c.task_id).collect();
        assert_eq!(taken, [task_id], "one of the nodes took it");
        let (holder, other) = if taken_a.due.is_empty() { (&node_b, &node_a) } else { (&node_a, &node_b) };
        assert!(other.due_callbacks(10).await.unwrap().due.is_empty(), "leased to the first");
        let next = other.due_callbacks(10).await.unwrap().next_due_in.expect("the lease's end is the next due");
        assert!(next > Duration::from_secs(60), "{next:?}");
        let callback_id = if taken_a.due.is_empty() { taken_b.due[0].callback_id } else { taken_a.due[0].callback_id };
        holder.callbacks_delivered(&[callback_id]).await.unwrap();
        assert!(other.due_callbacks(10).await.unwrap().due.is_empty());
        assert_eq!(holder.pending_callbacks().await.unwrap(), 0);
        node_b.close().await;
    }
}
