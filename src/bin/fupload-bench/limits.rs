//! What this machine can do at most, measured on the same bytes and file system as the server.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use fupload::domain::Md5Hex;
use fupload::hash::Md5;

/// MB/s (10^6 bytes) of one core computing md5 over `data`, with the md5 the server uses.
pub fn md5_mb_s(data: &[u8]) -> f64 {
    let started = Instant::now();
    std::hint::black_box(md5_in_pieces(data));
    mb_s(data.len(), started)
}

/// MB/s of computing md5 over `data` into two states, each on a thread of its own, as the server
/// hashes a block that continues its file's received prefix (its own md5 and the whole file's).
pub fn md5_twice_mb_s(data: &[u8]) -> f64 {
    let started = Instant::now();
    let (block, file) = std::thread::scope(|scope| {
        let file = scope.spawn(|| md5_in_pieces(data));
        (md5_in_pieces(data), file.join())
    });
    std::hint::black_box((block, file.ok()));
    mb_s(data.len(), started)
}

/// In pieces, as the server hashes.
fn md5_in_pieces(data: &[u8]) -> Md5Hex {
    let mut md5 = Md5::new();
    data.chunks(256 * 1024).for_each(|piece| md5.update(piece));
    md5.finish()
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

/// Writes back everything dirty on the file system of `dir`, so that a workload does not run
/// while the kernel writes out what the previous one left in the page cache (W1 and W2 leave
/// about 2 GiB dirty: W3 measured during that writeback varied from 260 to 700 uploads/s).
pub fn settle(dir: &Path) -> anyhow::Result<()> {
    nix::unistd::syncfs(std::fs::File::open(dir)?)?;
    Ok(())
}

/// Drops the files under `dir` (written back by `settle`) from the page cache, so that each run
/// starts with the same free memory. This VM is slow to hand out memory the guest has not used
/// yet, so with every run's files kept in the cache later runs spend more server CPU on the same
/// work (measured in the commit that added this).
pub fn release_page_cache(dir: &Path) -> anyhow::Result<()> {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    for entry in walk(dir)? {
        let file = std::fs::File::open(&entry)?;
        posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
    }
    Ok(())
}

/// The regular files under `dir`, recursively.
fn walk(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        match entry.file_type()? {
            kind if kind.is_dir() => files.extend(walk(&entry.path())?),
            kind if kind.is_file() => files.push(entry.path()),
            _ => {}
        }
    }
    Ok(files)
}

/// Writes everything back and empties the whole machine's page cache (root only). On a VM,
/// memory the guest has not used for a while can be slow to fill, so what ran before would
/// change the figures (docs/PERFORMANCE.md, "The machine").
pub fn drop_caches() -> anyhow::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("--drop-caches needs root")
}

pub fn mb_s(bytes: usize, since: Instant) -> f64 {
    bytes as f64 / 1e6 / since.elapsed().as_secs_f64()
}
