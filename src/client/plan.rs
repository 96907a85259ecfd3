//! Which blocks to send for the ranges the server expects.

use crate::domain::ByteRange;

/// Splits the expected ranges into blocks of at most `block_size` bytes (at least 1), cut at
/// multiples of `block_size`: runs with the same block size cut a file the same way, so a resumed
/// upload sends whole blocks of the first run's grid.
pub fn blocks(expected: &[ByteRange], block_size: u64) -> Vec<ByteRange> {
    let block_size = block_size.max(1);
    let mut blocks = Vec::new();
    for range in expected {
        let mut start = range.start();
        loop {
            let grid_end = (start / block_size).saturating_mul(block_size).saturating_add(block_size - 1);
            let Some(block) = ByteRange::new(start, grid_end.min(range.end())) else { break };
            blocks.push(block);
            match block.end().checked_add(1) {
                Some(next) if next <= range.end() => start = next,
                _ => break,
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    #[test]
    fn a_whole_file_is_cut_into_blocks_with_a_short_last_one() {
        assert_eq!(blocks(&[r(0, 24)], 10), vec![r(0, 9), r(10, 19), r(20, 24)]);
        assert_eq!(blocks(&[r(0, 19)], 10), vec![r(0, 9), r(10, 19)]);
        assert_eq!(blocks(&[r(0, 0)], 10), vec![r(0, 0)]);
    }

    #[test]
    fn gaps_are_cut_on_the_block_grid() {
        assert_eq!(blocks(&[r(5, 24), r(40, 41)], 10), vec![r(5, 9), r(10, 19), r(20, 24), r(40, 41)]);
        assert_eq!(blocks(&[r(12, 17)], 10), vec![r(12, 17)]);
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(blocks(&[r(0, 2)], 0), vec![r(0, 0), r(1, 1), r(2, 2)]);
        assert_eq!(
            blocks(&[r(u64::MAX - 1, u64::MAX)], u64::MAX),
            vec![r(u64::MAX - 1, u64::MAX - 1), r(u64::MAX, u64::MAX)]
        );
        assert_eq!(blocks(&[r(0, 5)], u64::MAX), vec![r(0, 5)]);
    }
}
