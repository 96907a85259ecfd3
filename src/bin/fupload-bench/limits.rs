//! What this machine can do at most, measured on the same bytes and file system as the server.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use fupload::checksum::Md5;

/// MB/s (10^6 bytes) of one core computing md5 over `data`, with the md5 the server uses.
pub fn md5_mb_s(data: &[u8]) -> f64 {
    let started = Instant::now();
    // In pieces, as the server hashes.
    let mut md5 = Md5::new();
    data.chunks(256 * 1024).for_each(|piece| md5.update(piece));
    std::hint::black_box(md5.finish());
    mb_s(data.len(), started)
}

/// MB/s of writing `data` to a new file `path` in 256 KiB pieces, then fsync. The file stays
/// (see `workloads::verify_stored` on deleting during the benchmark).
pub fn write_fsync_mb_s(path: &Path, data: &[u8]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    for piece in data.chunks(256 * 1024) {
        file.write_all(piece)?;
    }
    file.sync_all()?;
    Ok(mb_s(data.len(), started))
}

pub fn mb_s(bytes: usize, since: Instant) -> f64 {
    bytes as f64 / 1e6 / since.elapsed().as_secs_f64()
}
