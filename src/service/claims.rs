//! Byte ranges that blocks in flight are writing, per task. A block writes only bytes that no
//! other block in flight has claimed and that are not yet received, so a block that is then
//! refused (bad md5, short body, dropped connection) cannot damage accepted bytes.
//!
//! Releases are counted, so that a block can tell whether any other block of its task let go of
//! its claim (and so may have committed bytes) since a moment of its choosing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::ByteRange;

#[derive(Clone, Default)]
pub struct InFlightClaims {
    inner: Arc<Claims>,
}

/// Release counters, each shared by the tasks whose ids are equal modulo this: a task's count
/// moves with every release of its own claims, and sometimes with another task's (which only
/// costs a read). A fixed array needs no clean-up when tasks end.
const RELEASE_SLOTS: usize = 256;

#[derive(Default)]
struct Claims {
    by_task: Mutex<ClaimsByTask>,
    next_claim: AtomicU64,
}

struct ClaimsByTask {
    held: HashMap<i64, Vec<(u64, ByteRange)>>,
    /// `RELEASE_SLOTS` counters.
    releases: Vec<u64>,
}

impl Default for ClaimsByTask {
    fn default() -> Self {
        Self { held: HashMap::new(), releases: vec![0; RELEASE_SLOTS] }
    }
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, ClaimsByTask> {
        // Stays consistent even if a holder panicked: every change is a single push, retain or add.
        self.by_task.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClaimsByTask {
    fn releases_of(&mut self, task_id: i64) -> &mut u64 {
        &mut self.releases[task_id.rem_euclid(RELEASE_SLOTS as i64) as usize]
    }
}

/// How many claims of a task had been released at some moment (see `RELEASE_SLOTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Releases(u64);

/// The parts of a block's range that it may write; released on drop.
pub struct Claim {
    claims: Arc<Claims>,
    task_id: i64,
    claim_id: u64,
    ranges: Vec<ByteRange>,
    releases_before: Releases,
}

impl InFlightClaims {
    /// Claims the parts of `range` that no other block of the task has claimed.
    pub fn claim(&self, task_id: i64, range: ByteRange) -> Claim {
        let claim_id = self.inner.next_claim.fetch_add(1, Ordering::Relaxed);
        let mut by_task = self.inner.lock();
        let releases_before = Releases(*by_task.releases_of(task_id));
        let held = by_task.held.entry(task_id).or_default();
        let taken: Vec<ByteRange> = held.iter().map(|(_, r)| *r).collect();
        let ranges = range.minus(&taken);
        held.extend(ranges.iter().map(|r| (claim_id, *r)));
        Claim { claims: self.inner.clone(), task_id, claim_id, ranges, releases_before }
    }

    /// The task's release count now.
    pub fn releases(&self, task_id: i64) -> Releases {
        Releases(*self.inner.lock().releases_of(task_id))
    }
}

impl Claim {
    pub fn ranges(&self) -> &[ByteRange] {
        &self.ranges
    }

    /// Whether no claim of the task was released between `then` and this claim: no block of the
    /// task committed in between, since a block holds its claim until its commit is known. The
    /// parts claimed here were then received only if they were received at `then`.
    pub fn none_released_since(&self, then: Releases) -> bool {
        self.releases_before == then
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = self.claims.lock();
        // Counted in the same lock as the ranges go: a claim that can take them sees the count.
        let releases = claims.releases_of(self.task_id);
        *releases = releases.wrapping_add(1);
        if let Some(held) = claims.held.get_mut(&self.task_id) {
            held.retain(|(id, _)| *id != self.claim_id);
            if held.is_empty() {
                claims.held.remove(&self.task_id);
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
        assert!(claims.inner.lock().held.is_empty());
    }

    #[test]
    fn a_claim_tells_whether_another_of_its_task_was_released_since() {
        let claims = InFlightClaims::default();
        let before = claims.releases(1);
        let other_task = claims.releases(2);
        let first = claims.claim(1, r(0, 9));
        assert!(first.none_released_since(before), "nothing released yet");
        let second = claims.claim(1, r(10, 19));
        drop(first);
        assert!(!claims.claim(1, r(0, 9)).none_released_since(before), "the first was released");
        assert!(claims.claim(2, r(0, 9)).none_released_since(other_task), "another task's release");
        drop(second);
        let wrapped = 1 + RELEASE_SLOTS as i64;
        let shared = claims.releases(wrapped);
        drop(claims.claim(1, r(0, 9)));
        assert!(!claims.claim(wrapped, r(0, 9)).none_released_since(shared), "a shared slot errs on the safe side");
    }
}
