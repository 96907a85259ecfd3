//! Byte ranges that blocks in flight are writing, per task. A block writes only bytes that no
//! other block in flight has claimed and that are not yet received, so a block that is then
//! refused (bad md5, short body, dropped connection) cannot damage accepted bytes.
//!
//! One process keeps the claims in memory. Nodes that share a PostgreSQL database keep them in
//! its `block_claims` table, each under a lease its node renews while the block streams in, so
//! that a block on one node never writes what a block in flight on another claimed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::lease::{Lease, LeaseHeld, LetGo};
use crate::domain::ByteRange;
use crate::store::{PgStore, Store, StoreError};

/// How long a shared claim outlives a node that stops renewing it: the ranges of a block in
/// flight on a node that died are free again after this.
const SHARED_CLAIM_LEASE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub enum BlockClaims {
    InProcess(InFlightClaims),
    Shared(PgStore),
}

impl BlockClaims {
    /// In the database when it is shared by many nodes, else in memory.
    pub fn for_store(store: &Store) -> Self {
        match store.shared() {
            Some(shared) => BlockClaims::Shared(shared.clone()),
            None => BlockClaims::InProcess(InFlightClaims::default()),
        }
    }

    /// Claims the parts of `range` that no other block of the task has claimed.
    pub async fn claim(&self, task_id: i64, range: ByteRange) -> Result<Claim, StoreError> {
        match self {
            BlockClaims::InProcess(claims) => Ok(claims.claim(task_id, range)),
            BlockClaims::Shared(store) => {
                let taken_at = std::time::Instant::now();
                let claimed = store.claim_ranges(task_id, range, SHARED_CLAIM_LEASE).await?;
                if claimed.ranges.is_empty() {
                    // Every byte is another block's: this one writes nothing, and holds nothing.
                    return Ok(Claim { ranges: Vec::new(), hold: Hold::Nothing });
                }
                let claim_id = claimed.claim_id;
                let (renewing, releasing) = (store.clone(), store.clone());
                let lease = Lease::keep(
                    "block claim",
                    SHARED_CLAIM_LEASE,
                    taken_at,
                    Box::new(move || {
                        let store = renewing.clone();
                        Box::pin(async move { store.renew_claim(claim_id, SHARED_CLAIM_LEASE).await })
                    }),
                    Box::new(move || Box::pin(async move { releasing.release_claim(claim_id).await })),
                );
                Ok(Claim { ranges: claimed.ranges, hold: Hold::Shared(lease) })
            }
        }
    }
}

#[derive(Clone, Default)]
pub struct InFlightClaims {
    inner: Arc<Claims>,
}

#[derive(Default)]
struct Claims {
    /// Per task, the claimed ranges with the id of the claim that holds each.
    held: Mutex<HashMap<i64, Vec<(u64, ByteRange)>>>,
    next_claim: AtomicU64,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Vec<(u64, ByteRange)>>> {
        // Stays consistent even if a holder panicked: every change is a single push or retain.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The parts of a block's range that it may write; released on drop.
pub struct Claim {
    ranges: Vec<ByteRange>,
    hold: Hold,
}

enum Hold {
    InProcess {
        claims: Arc<Claims>,
        task_id: i64,
        claim_id: u64,
    },
    /// Let go when dropped.
    Shared(Lease),
    /// No bytes claimed.
    Nothing,
}

impl InFlightClaims {
    fn claim(&self, task_id: i64, range: ByteRange) -> Claim {
        let claim_id = self.inner.next_claim.fetch_add(1, Ordering::Relaxed);
        let mut held = self.inner.lock();
        let held = held.entry(task_id).or_default();
        let taken: Vec<ByteRange> = held.iter().map(|(_, r)| *r).collect();
        let ranges = range.minus(&taken);
        held.extend(ranges.iter().map(|r| (claim_id, *r)));
        Claim { ranges, hold: Hold::InProcess { claims: self.inner.clone(), task_id, claim_id } }
    }
}

impl Claim {
    pub fn ranges(&self) -> &[ByteRange] {
        &self.ranges
    }

    /// Whether the claim still holds, to be asked while its block writes: a shared claim whose
    /// renewals failed for too long (its node cannot reach the database) may soon be another
    /// block's, and its block must stop writing and not be recorded. `None`: a claim in memory,
    /// which holds until dropped.
    pub fn held(&self) -> Option<LeaseHeld> {
        match &self.hold {
            Hold::InProcess { .. } | Hold::Nothing => None,
            Hold::Shared(lease) => Some(lease.held().clone()),
        }
    }

    /// What tells when a shared claim, once dropped, is gone from the database. `None`: a claim
    /// in memory, which is gone as soon as it is dropped.
    pub fn let_go(&self) -> Option<LetGo> {
        match &self.hold {
            Hold::InProcess { .. } | Hold::Nothing => None,
            Hold::Shared(lease) => Some(lease.let_go()),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Hold::InProcess { claims, task_id, claim_id } = &self.hold else { return };
        let mut by_task = claims.lock();
        if let Some(held) = by_task.get_mut(task_id) {
            held.retain(|(id, _)| id != claim_id);
            if held.is_empty() {
                by_task.remove(task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    #[test]
    fn overlapping_claims_get_only_the_free_parts_until_released() {
        let claims = InFlightClaims::default();
        let first = claims.claim(1, r(10, 19));
        assert_eq!(first.ranges(), &[r(10, 19)]);
        let second = claims.claim(1, r(0, 29));
        assert_eq!(second.ranges(), &[r(0, 9), r(20, 29)]);
        assert_eq!(claims.claim(1, r(5, 25)).ranges(), &[] as &[ByteRange]);
        assert_eq!(claims.claim(2, r(5, 25)).ranges(), &[r(5, 25)], "other tasks are independent");
        drop(first);
        assert_eq!(claims.claim(1, r(5, 25)).ranges(), &[r(10, 19)]);
        drop(second);
        assert!(claims.inner.lock().is_empty());
    }
}
