//! Where finished files go (`storage.kind`): `local` is the temp file in tmpDir moved into
//! storeDir (`blob`); `s3` is an S3-compatible bucket, written through staging objects and a
//! multipart upload (docs/SCALING.md says how). This module knows keys, parts and S3 requests; the
//! rules of when to stage, upload a part or complete are the service's (`service/object.rs`).

mod http;
pub mod s3;

use std::sync::Arc;

use crate::config::{Settings, StorageKind};
use crate::domain::ByteRange;

pub use s3::{S3Error, S3Storage};

/// The storage of one server. Cheap to clone.
#[derive(Clone)]
pub enum Storage {
    Local,
    S3(Arc<S3Storage>),
}

impl Storage {
    /// The storage the settings name; for `s3`, its connection thread is started.
    pub fn from_settings(settings: &Settings) -> std::io::Result<Self> {
        match settings.storage.kind {
            StorageKind::Local => Ok(Storage::Local),
            StorageKind::S3 => Ok(Storage::S3(Arc::new(S3Storage::new(&settings.storage.s3)?))),
        }
    }

    pub fn s3(&self) -> Option<&S3Storage> {
        match self {
            Storage::Local => None,
            Storage::S3(s3) => Some(s3),
        }
    }
}

/// Smallest part S3 takes (but for the last), and the most parts an upload may have.
const MIN_PART: u64 = 5 << 20;
const MAX_PARTS: u64 = 10_000;
const MIB: u64 = 1 << 20;

/// How a file of a given size is cut into multipart-upload parts: all of `part_size` bytes but
/// the last, which holds the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLayout {
    pub file_size: u64,
    pub part_size: u64,
}

impl PartLayout {
    /// The smallest multiple of 1 MiB that is at least 5 MiB and keeps the parts at most 10,000.
    pub fn for_size(file_size: u64) -> Self {
        let per_part = file_size.div_ceil(MAX_PARTS);
        let part_size = (per_part.div_ceil(MIB) * MIB).max(MIN_PART);
        Self { file_size, part_size }
    }

    /// Parts in the file: at least one (an empty file is one empty part).
    pub fn count(&self) -> u64 {
        self.file_size.div_ceil(self.part_size).max(1)
    }

    /// The bytes of part `number` (counted from 1); `None` for an empty part.
    pub fn range(&self, number: u64) -> Option<ByteRange> {
        let start = (number - 1) * self.part_size;
        let end = (start + self.part_size).min(self.file_size);
        (end > start).then(|| ByteRange::new(start, end - 1)).flatten()
    }

    /// The numbers of the parts `range` touches.
    pub fn parts_touching(&self, range: ByteRange) -> std::ops::RangeInclusive<u64> {
        (range.start() / self.part_size + 1)..=(range.end() / self.part_size + 1)
    }
}

/// A staging object's bytes of the file, read back from its key's last segment (`start-end`).
pub fn staged_range(key: &str) -> Option<ByteRange> {
    let name = key.rsplit('/').next()?;
    let (start, end) = name.split_once('-')?;
    ByteRange::new(start.parse().ok()?, end.parse().ok()?)
}

/// Which pieces of `staged` (with their offsets in their objects) make up `part`, starting each
/// byte from the staged range that goes on furthest: `None` if a byte of `part` is in none.
pub fn pieces_of(part: ByteRange, staged: &[ByteRange]) -> Option<Vec<(ByteRange, ByteRange)>> {
    let mut pieces = Vec::new();
    let mut at = part.start();
    loop {
        let from = staged.iter().filter(|r| r.start() <= at && at <= r.end()).max_by_key(|r| r.end())?;
        let end = from.end().min(part.end());
        pieces.push((*from, ByteRange::new(at, end)?));
        if end == part.end() {
            return Some(pieces);
        }
        at = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    #[test]
    fn parts_are_five_mib_until_ten_thousand_of_them_do_not_hold_the_file() {
        assert_eq!(PartLayout::for_size(0).part_size, MIN_PART);
        assert_eq!(PartLayout::for_size(0).count(), 1);
        assert_eq!(PartLayout::for_size(0).range(1), None);
        assert_eq!(PartLayout::for_size(MIN_PART * MAX_PARTS).part_size, MIN_PART);
        assert_eq!(PartLayout::for_size(MIN_PART * MAX_PARTS + 1).part_size, MIN_PART + MIB);
        let big = PartLayout::for_size(5 << 40);
        assert_eq!(big.part_size % MIB, 0);
        assert!(big.count() <= MAX_PARTS);
        assert!(PartLayout { part_size: big.part_size - MIB, ..big }.count() > MAX_PARTS);
    }

    #[test]
    fn the_last_part_holds_the_rest() {
        let layout = PartLayout::for_size(MIN_PART * 2 + 10);
        assert_eq!(layout.count(), 3);
        assert_eq!(layout.range(1), Some(r(0, MIN_PART - 1)));
        assert_eq!(layout.range(3), Some(r(2 * MIN_PART, 2 * MIN_PART + 9)));
        assert_eq!(layout.parts_touching(r(MIN_PART - 1, MIN_PART)), 1..=2);
        assert_eq!(layout.parts_touching(r(2 * MIN_PART + 9, 2 * MIN_PART + 9)), 3..=3);
    }

    #[test]
    fn a_part_is_made_of_the_staged_ranges_that_go_furthest() {
        let staged = [r(0, 9), r(5, 30), r(10, 12), r(31, 40)];
        assert_eq!(
            pieces_of(r(2, 35), &staged),
            Some(vec![(r(0, 9), r(2, 9)), (r(5, 30), r(10, 30)), (r(31, 40), r(31, 35))])
        );
        assert_eq!(pieces_of(r(0, 41), &staged), None);
        assert_eq!(pieces_of(r(0, 3), &[r(1, 3)]), None);
    }

    #[test]
    fn a_staging_key_names_its_range() {
        assert_eq!(staged_range("p/.fupload/task-1/blocks/00000000000000000005-00000000000000000009"), Some(r(5, 9)));
        assert_eq!(staged_range("p/.fupload/task-1/upload-id"), None);
    }
}
