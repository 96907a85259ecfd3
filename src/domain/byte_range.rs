//! Inclusive byte ranges and the arithmetic the range bookkeeping needs.

use std::fmt;

/// An inclusive range of byte offsets, `start..=end`, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteRange {
    start: u64,
    end: u64,
}

impl ByteRange {
    /// `None` when `start > end`.
    pub fn new(start: u64, end: u64) -> Option<Self> {
        (start <= end).then_some(Self { start, end })
    }

    /// The whole of a file of `size` bytes; `None` for an empty file.
    pub fn whole(size: u64) -> Option<Self> {
        size.checked_sub(1).and_then(|last| Self::new(0, last))
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes in the range (at least one).
    pub fn size(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn intersection(&self, other: &ByteRange) -> Option<ByteRange> {
        Self::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// Overlapping or adjacent: the two could be stored as one range.
    fn touches(&self, other: &ByteRange) -> bool {
        self.start <= other.end.saturating_add(1) && other.start <= self.end.saturating_add(1)
    }

    /// The parts of `self` not covered by `taken`, in ascending order.
    /// `taken` may be in any order and may overlap.
    pub fn minus(&self, taken: &[ByteRange]) -> Vec<ByteRange> {
        let mut taken: Vec<ByteRange> = taken.iter().filter_map(|t| t.intersection(self)).collect();
        taken.sort();
        let mut free = Vec::new();
        let mut next = self.start;
        for t in taken {
            if t.start > next {
                free.push(ByteRange { start: next, end: t.start - 1 });
            }
            if t.end >= self.end {
                return free;
            }
            next = next.max(t.end + 1);
        }
        free.push(ByteRange { start: next, end: self.end });
        free
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The outcome of adding a received range to the stored ones it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMerge {
    /// The single range that replaces `added` and every stored range it touches.
    pub merged: ByteRange,
    /// Bytes of `added` that no stored range held.
    pub new_bytes: u64,
}

impl BlockMerge {
    /// `neighbours` are the stored ranges that touch `added`: disjoint and non-adjacent
    /// among themselves, as the store keeps them. Ranges that do not touch are ignored.
    pub fn of(added: ByteRange, neighbours: &[ByteRange]) -> Self {
        let mut merged = added;
        let mut already_held = 0;
        for stored in neighbours.iter().filter(|n| n.touches(&added)) {
            merged = ByteRange { start: merged.start.min(stored.start), end: merged.end.max(stored.end) };
            already_held += stored.size();
        }
        // The merged range is the union of `added` and the disjoint neighbours, so whatever
        // it holds beyond them is what `added` brought.
        BlockMerge { merged, new_bytes: merged.size() - already_held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    #[test]
    fn new_refuses_start_after_end_and_whole_refuses_empty_file() {
        assert_eq!(ByteRange::new(5, 4), None);
        assert_eq!(ByteRange::new(4, 4).map(|b| b.size()), Some(1));
        assert_eq!(ByteRange::whole(0), None);
        assert_eq!(ByteRange::whole(1), Some(r(0, 0)));
        assert_eq!(ByteRange::whole(u64::MAX).map(|b| b.end()), Some(u64::MAX - 1));
    }

    #[test]
    fn minus_leaves_the_uncovered_parts() {
        assert_eq!(r(0, 9).minus(&[]), vec![r(0, 9)]);
        assert_eq!(r(0, 9).minus(&[r(0, 9)]), vec![]);
        assert_eq!(r(0, 9).minus(&[r(20, 30)]), vec![r(0, 9)]);
        assert_eq!(r(0, 9).minus(&[r(3, 4), r(0, 0)]), vec![r(1, 2), r(5, 9)]);
        assert_eq!(r(5, 9).minus(&[r(0, 6), r(8, 100)]), vec![r(7, 7)]);
        assert_eq!(r(0, 9).minus(&[r(2, 6), r(3, 4)]), vec![r(0, 1), r(7, 9)]);
        assert_eq!(r(0, u64::MAX).minus(&[r(u64::MAX, u64::MAX)]), vec![r(0, u64::MAX - 1)]);
    }

    #[test]
    fn merge_with_nothing_is_all_new() {
        assert_eq!(BlockMerge::of(r(10, 19), &[]), BlockMerge { merged: r(10, 19), new_bytes: 10 });
    }

    #[test]
    fn merge_coalesces_adjacent_ranges_on_both_sides() {
        let m = BlockMerge::of(r(10, 19), &[r(0, 9), r(20, 29)]);
        assert_eq!(m, BlockMerge { merged: r(0, 29), new_bytes: 10 });
    }

    #[test]
    fn merge_counts_only_bytes_not_already_held() {
        let m = BlockMerge::of(r(5, 24), &[r(0, 9), r(20, 29)]);
        assert_eq!(m, BlockMerge { merged: r(0, 29), new_bytes: 10 });
        let repeat = BlockMerge::of(r(3, 4), &[r(0, 9)]);
        assert_eq!(repeat, BlockMerge { merged: r(0, 9), new_bytes: 0 });
    }

    #[test]
    fn merge_of_a_block_covering_everything_swallows_all_ranges() {
        let m = BlockMerge::of(r(0, 99), &[r(0, 0), r(10, 19), r(99, 99)]);
        assert_eq!(m, BlockMerge { merged: r(0, 99), new_bytes: 88 });
    }

    #[test]
    fn merge_ignores_ranges_that_do_not_touch() {
        let m = BlockMerge::of(r(10, 19), &[r(0, 8), r(21, 30)]);
        assert_eq!(m, BlockMerge { merged: r(10, 19), new_bytes: 10 });
    }
}
