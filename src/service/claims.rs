//! Byte ranges that blocks in flight are writing, per task. A block writes only bytes that no
//! other block in flight has claimed and that are not yet received, so a block that is then
//! refused (bad md5, short body, dropped connection) cannot damage accepted bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::ByteRange;

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
    claims: Arc<Claims>,
    task_id: i64,
    claim_id: u64,
    ranges: Vec<ByteRange>,
}

impl InFlightClaims {
    /// Claims the parts of `range` that no other block of the task has claimed.
    pub fn claim(&self, task_id: i64, range: ByteRange) -> Claim {
        let claim_id = self.inner.next_claim.fetch_add(1, Ordering::Relaxed);
        let mut held = self.inner.lock();
        let held = held.entry(task_id).or_default();
        let taken: Vec<ByteRange> = held.iter().map(|(_, r)| *r).collect();
        let ranges = range.minus(&taken);
        held.extend(ranges.iter().map(|r| (claim_id, *r)));
        Claim { claims: self.inner.clone(), task_id, claim_id, ranges }
    }
}

impl Claim {
    pub fn ranges(&self) -> &[ByteRange] {
        &self.ranges
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut by_task = self.claims.lock();
        if let Some(held) = by_task.get_mut(&self.task_id) {
            held.retain(|(id, _)| *id != self.claim_id);
            if held.is_empty() {
                by_task.remove(&self.task_id);
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
