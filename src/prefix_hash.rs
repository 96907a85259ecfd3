//! Incremental whole-file md5: per task, an md5 state over the contiguous received prefix of its
//! temp file. A block that starts where the prefix ends takes the state with it (`state_at`), is
//! hashed on from it as it streams in, and hands it back once committed (`adopt`): an upload that
//! arrives in order is never read back, and its digest is ready when its last byte is. Blocks that
//! arrive out of order are read back (from the page cache, usually) in the background once the gap
//! before them is filled. The state lives in memory only: after a restart the prefix is hashed
//! again from the file, once.
//!
//! The background hashing runs on its own threads, one per core, at a lower priority: it is never
//! what a request waits for (the finish hashes whatever is left itself), so when the cores are
//! busy the requests and the block writers go first.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::Md5Hex;
use crate::hash::Md5;

/// Bytes read per `read` call.
const READ_PIECE: usize = 256 * 1024;
/// Bytes one background run hashes before it lets other tasks' hashers have the thread.
const RUN_SLICE: u64 = 64 << 20;
/// The background threads' nice value. At 5 a thread gets about a quarter of a core that normal
/// threads also want: it keeps up with an in-order upload while giving way to the writers.
const BACKGROUND_NICENESS: i32 = 5;

/// The prefix hashers of all tasks in progress.
pub struct PrefixHashers {
    by_task: Mutex<HashMap<i64, Arc<PrefixHasher>>>,
    /// Hashers with work to do, taken by the background threads.
    due: flume::Sender<Arc<PrefixHasher>>,
    /// Bytes read back from temp files, all tasks together (tests and benchmarks read it).
    bytes_read: Arc<AtomicU64>,
}

struct PrefixHasher {
    path: PathBuf,
    /// `[0, received_prefix)` is received and committed: safe to hash.
    received_prefix: AtomicU64,
    /// A background run is scheduled or going on.
    running: AtomicBool,
    /// The md5 of `[0, state.bytes_hashed())`.
    state: Mutex<Md5>,
    bytes_read: Arc<AtomicU64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is complete before the lock is let go; a panic cannot leave half of one.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PrefixHashers {
    /// Starts `threads` background threads; they end when this is dropped.
    pub fn new(threads: usize) -> io::Result<Self> {
        let (due, queue) = flume::unbounded();
        for _ in 0..threads.max(1) {
            let (queue, requeue) = (queue.clone(), due.downgrade());
            std::thread::Builder::new().name("prefix-hash".into()).spawn(move || hash_in_background(queue, requeue))?;
        }
        Ok(Self { by_task: Mutex::default(), due, bytes_read: Arc::default() })
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Starts keeping the whole-file md5 of a task that takes blocks (created, or open at a
    /// restart). Only tracked tasks are hashed ahead: a block's late `advance` or `adopt` after
    /// the task's finish or end (which `forget` it) leaves nothing behind.
    pub fn track(&self, task_id: i64, path: &Path) {
        lock(&self.by_task).entry(task_id).or_insert_with(|| Arc::new(PrefixHasher::new(path, &self.bytes_read)));
    }

    fn find(&self, task_id: i64) -> Option<Arc<PrefixHasher>> {
        lock(&self.by_task).get(&task_id).cloned()
    }

    /// `[0, prefix)` of the task's file is received: hash it in the background.
    pub fn advance(&self, task_id: i64, prefix: u64) {
        let Some(hasher) = self.find(task_id).filter(|_| prefix > 0) else { return };
        hasher.received_prefix.fetch_max(prefix, Ordering::SeqCst);
        if hasher.running.swap(true, Ordering::SeqCst) {
            return; // the run going on will see the new prefix
        }
        // Cannot fail: the threads hold the receiving ends for as long as `self` lives.
        let _ = self.due.send(hasher);
    }

    /// The whole-file md5 over `[0, start)`, when it is at hand: a block that starts there can
    /// hash the file on from it as it streams in (`adopt`), instead of the block being read back
    /// later. None when the hasher is elsewhere (behind: blocks arrived out of order, or the
    /// server restarted), busy, or not kept for the task.
    pub fn state_at(&self, task_id: i64, start: u64) -> Option<Md5> {
        let hasher = self.find(task_id)?;
        // try_lock: a background run holds the lock while it reads, and this runs on an async worker.
        let state = hasher.state.try_lock().ok()?;
        (state.bytes_hashed() == start).then(|| state.clone())
    }

    /// A committed block starting at `start` was hashed into the whole-file md5 as it streamed in,
    /// from `state_at(start)` on: the hasher goes on from `md5` instead of reading the block back.
    /// Nothing happens if the hasher has moved or is busy: it reads as usual.
    pub fn adopt(&self, task_id: i64, start: u64, md5: Md5) {
        let Some(hasher) = self.find(task_id) else { return };
        let Ok(mut state) = hasher.state.try_lock() else { return };
        if state.bytes_hashed() == start {
            *state = md5;
        }
    }

    /// The md5 of the task's whole file of `size` bytes: hashes whatever the background has not
    /// yet, then forgets the task. Blocking.
    pub fn finish(&self, task_id: i64, path: &Path, size: u64) -> io::Result<Md5Hex> {
        let hasher = self.find(task_id).unwrap_or_else(|| Arc::new(PrefixHasher::new(path, &self.bytes_read)));
        let digest = {
            let mut state = lock(&hasher.state);
            hasher.hash_to(&mut state, size)?;
            state.clone().finish()
        };
        self.forget(task_id);
        Ok(digest)
    }

    /// Drops the task's state (it ended without a finish).
    pub fn forget(&self, task_id: i64) {
        lock(&self.by_task).remove(&task_id);
    }
}

/// A background thread: runs due hashers a slice at a time, one cut short going behind the others.
/// Ends once `PrefixHashers` is dropped (it holds the only lasting sender).
fn hash_in_background(queue: flume::Receiver<Arc<PrefixHasher>>, requeue: flume::WeakSender<Arc<PrefixHasher>>) {
    // Linux keeps a nice value per thread. Failing to lower the priority only costs speed.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICENESS) {
        tracing::debug!(error = %e, "background hashing runs at normal priority");
    }
    for hasher in queue.iter() {
        if hasher.run_slice() {
            if let Some(due) = requeue.upgrade() {
                let _ = due.send(hasher);
            }
        }
    }
}

impl PrefixHasher {
    fn new(path: &Path, bytes_read: &Arc<AtomicU64>) -> Self {
        PrefixHasher {
            path: path.to_path_buf(),
            received_prefix: AtomicU64::new(0),
            running: AtomicBool::new(false),
            state: Mutex::new(Md5::new()),
            bytes_read: bytes_read.clone(),
        }
    }

    /// Hashes towards the received prefix for at most `RUN_SLICE` bytes. Returns whether it
    /// stopped with work left (and so is still `running`).
    fn run_slice(&self) -> bool {
        let (hashed, cut_short) = {
            let mut state = lock(&self.state);
            let prefix = self.received_prefix.load(Ordering::SeqCst);
            let until = prefix.min(state.bytes_hashed().saturating_add(RUN_SLICE));
            if let Err(e) = self.hash_to(&mut state, until) {
                // The finish reads again and reports the error then.
                tracing::warn!(path = %self.path.display(), error = %e, "background hashing stopped");
                self.running.store(false, Ordering::SeqCst);
                return false;
            }
            (state.bytes_hashed(), until < prefix)
        };
        if cut_short {
            return true;
        }
        self.running.store(false, Ordering::SeqCst);
        // A prefix that grew after the load above saw `running` still set and started nothing.
        self.received_prefix.load(Ordering::SeqCst) > hashed && !self.running.swap(true, Ordering::SeqCst)
    }

    fn hash_to(&self, md5: &mut Md5, until: u64) -> io::Result<()> {
        if md5.bytes_hashed() >= until {
            return Ok(());
        }
        let file = File::open(&self.path)?;
        let mut buffer = vec![0u8; READ_PIECE];
        while md5.bytes_hashed() < until {
            let hashed = md5.bytes_hashed();
            let want = (until - hashed).min(READ_PIECE as u64) as usize;
            let got = file.read_at(&mut buffer[..want], hashed)?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the temp file is shorter than its received bytes",
                ));
            }
            md5.update(&buffer[..got]);
            self.bytes_read.fetch_add(got as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp directory (kept while it lives) holding a file of `data`.
    fn file_of(data: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, data).unwrap();
        (dir, path)
    }

    fn md5_of(data: &[u8]) -> Md5Hex {
        use md5::Digest;
        Md5Hex::of_digest(&md5::Md5::digest(data))
    }

    #[tokio::test]
    async fn finish_without_any_advance_hashes_the_whole_file() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let (_dir, path) = file_of(&data);
        let hashers = PrefixHashers::new(2).unwrap();
        assert_eq!(hashers.finish(1, &path, data.len() as u64).unwrap(), md5_of(&data));
        assert_eq!(hashers.bytes_read(), data.len() as u64);
        assert!(lock(&hashers.by_task).is_empty());
    }

    #[tokio::test]
    async fn background_hashing_reads_each_byte_once() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, path) = file_of(&data);
        let hashers = PrefixHashers::new(1).unwrap();
        hashers.track(7, &path);
        for prefix in [1, 100_000, 100_000, 2_000_000, 2_999_999] {
            hashers.advance(7, prefix);
            tokio::task::yield_now().await;
        }
        let digest = tokio::task::spawn_blocking(move || {
            let digest = hashers.finish(7, &path, 3_000_000).unwrap();
            (digest, hashers.bytes_read())
        })
        .await
        .unwrap();
        assert_eq!(digest, (md5_of(&data), 3_000_000));
    }

    #[tokio::test]
    async fn a_late_advance_or_adopt_after_the_finish_keeps_nothing() {
        // A block that committed before another completed the file can reach `advance` and
        // `adopt` after the finish has run and forgotten the task.
        let (_dir, path) = file_of(b"abc");
        let hashers = PrefixHashers::new(1).unwrap();
        hashers.track(1, &path);
        hashers.finish(1, &path, 3).unwrap();
        hashers.advance(1, 3);
        hashers.adopt(1, 0, Md5::new());
        assert!(hashers.state_at(1, 3).is_none());
        assert!(lock(&hashers.by_task).is_empty());
    }

    #[tokio::test]
    async fn a_short_file_is_an_error_not_a_wrong_digest() {
        let (_dir, path) = file_of(b"abc");
        let hashers = PrefixHashers::new(1).unwrap();
        assert_eq!(hashers.finish(1, &path, 10).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
