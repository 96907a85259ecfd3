//! The finish (verify, move into place, retried while it fails for a passing reason), and how a
//! task ends with its callback (also for cancel and expiry).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::lease::Lease;
use super::{blocking, business, UploadError, Uploads};
use crate::blob::{self, PlaceError};
use crate::callback;
use crate::config::Durability;
use crate::domain::{CallbackCode, Md5Hex, TaskStatus};
use crate::storage::S3Storage;
use crate::store::{NewCallback, StatusChange, Task, TaskEnding};

/// What checking and moving the finished temp file came to, when it did not fail for a passing
/// reason.
enum Verified {
    Placed(PathBuf),
    /// The object completed in S3, as its `s3://` URL.
    Stored(String),
    Md5Mismatch(Md5Hex),
    /// A symlink below storeDir leads out of it: the file is never placed there.
    LeavesStoreDir,
}

/// The tasks whose finish is running, so that no two run for one task at once; each with whether
/// another finish was asked for it meanwhile (the running one then looks again before it stops).
pub(super) type Finishing = Arc<Mutex<HashMap<i64, bool>>>;

/// A task's place in `Finishing`.
struct FinishGuard {
    finishing: Finishing,
    task_id: i64,
}

impl FinishGuard {
    /// The task's place, or `None` (and the running finish told to look again) if it is taken.
    fn take(finishing: &Finishing, task_id: i64) -> Option<Self> {
        let mut running = lock(finishing);
        match running.entry(task_id) {
            Entry::Occupied(mut asked) => {
                asked.insert(true);
                None
            }
            Entry::Vacant(place) => {
                place.insert(false);
                Some(FinishGuard { finishing: finishing.clone(), task_id })
            }
        }
    }

    /// Whether another finish was asked since the last look; if not, the place is let go.
    fn asked_again(&self) -> bool {
        let mut running = lock(&self.finishing);
        match running.get_mut(&self.task_id) {
            Some(asked) if *asked => {
                *asked = false;
                true
            }
            _ => {
                running.remove(&self.task_id);
                false
            }
        }
    }
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        lock(&self.finishing).remove(&self.task_id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each change is a single insert or remove: a panic elsewhere cannot leave half of one.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the attempts of one finish have learnt, so that a retry does not redo or undo it.
#[derive(Default)]
struct FinishProgress {
    /// The temp generation at which the whole-file md5 was found right: nothing writes to the
    /// file in `verify`, so a retry at the same generation need not hash it again.
    md5_matched_at: Option<i64>,
    /// The whole-file md5 as computed, once it was.
    computed_md5: Option<Md5Hex>,
    /// The file an attempt placed before its record failed.
    placed: Option<PlacedFile>,
}

/// A file an attempt placed in storeDir, and what it was then.
#[derive(Clone)]
struct PlacedFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// The temp generation whose file was verified and placed.
    generation: i64,
}

impl PlacedFile {
    fn of(path: PathBuf, generation: i64) -> std::io::Result<Self> {
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(PlacedFile { path, dev: meta.dev(), ino: meta.ino(), generation })
    }

    fn is(&self, meta: &std::fs::Metadata) -> bool {
        meta.dev() == self.dev && meta.ino() == self.ino
    }

    /// Still the file that was placed, and of the whole file's `size`: the verified file, even if
    /// the temp file is gone since. One cut short (it is the temp file's own inode, on one file
    /// system) is removed: the temp file is cut too, its bytes are asked for again, and the file
    /// is placed anew.
    fn still_whole(&self, size: u64) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if self.is(&meta) && meta.len() == size => true,
            Ok(meta) if self.is(&meta) => {
                self.remove();
                false
            }
            _ => false,
        }
    }

    /// The task's temp file was made anew since this was placed: removed unless it is the temp
    /// file itself (which the next placement finds again), so that it is not left beside the file
    /// the next finish places. Whether it is still there as the temp file.
    fn forget(&self, tmp: &Path) -> bool {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|meta| self.is(&meta));
        let the_temp_file = std::fs::metadata(tmp).is_ok_and(|meta| self.is(&meta));
        if ours && !the_temp_file {
            self.remove();
        }
        ours && the_temp_file
    }

    /// Removed if it is still ours: the task ends without it.
    fn remove_if_ours(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|meta| self.is(&meta)) {
            self.remove();
        }
    }

    fn remove(&self) {
        if let Err(e) = blob::remove_if_exists(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a file placed before");
        }
    }
}

/// An error and its causes in one line, for the log and the task's `error`.
pub(super) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// How long a finish that failed for a passing reason waits before it tries again: doubling from
/// the first wait up to the longest, so a task completes soon after the trouble goes.
const FINISH_RETRY_FIRST: Duration = Duration::from_secs(1);
const FINISH_RETRY_LONGEST: Duration = Duration::from_secs(10);

/// How long a request that completed a file waits for its finish before replying `verify`.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// How long the finish of a task outlives its node on a shared database: another node takes it
/// on after this.
const FINISH_LEASE: Duration = Duration::from_secs(60);

impl Uploads {
    /// Finishes a task in `verify` on its own task, so that a client hanging up does not cut the
    /// finish short. A finish that fails for a passing reason (the database busy or full, a disk
    /// error) is tried again with backoff until the task ends: its bytes are kept meanwhile, and
    /// its `error` and `finish_attempts` say why it waits. One finish runs per task at a time; one
    /// asked meanwhile is left to it, and it looks at the task again before it stops.
    pub fn spawn_finish(&self, task: Task) -> JoinHandle<Result<TaskStatus, UploadError>> {
        let uploads = self.clone();
        tokio::spawn(async move {
            let Some(finishing) = FinishGuard::take(&uploads.finishing, task.task_id) else {
                return Ok(TaskStatus::Verify);
            };
            // Another node is finishing it, or the database cannot say: its sweeper looks again.
            let Some(_held) = uploads.hold_finish(task.task_id).await else {
                return Ok(TaskStatus::Verify);
            };
            let mut task = task;
            loop {
                let outcome = uploads.finish_until_done(task.clone()).await;
                if !finishing.asked_again() {
                    return outcome;
                }
                match uploads.store.task(task.task_id).await {
                    Ok(Some(now)) if now.status == TaskStatus::Verify => task = now,
                    _ => return outcome,
                }
            }
        })
    }

    /// The finish of the task, held for this node while it runs when the database is shared: `None`
    /// when another node holds it. In one process the guard of `spawn_finish` is enough.
    async fn hold_finish(&self, task_id: i64) -> Option<Option<Lease>> {
        let Some(shared) = self.store.shared() else { return Some(None) };
        let taken_at = std::time::Instant::now();
        match shared.hold_finish(task_id, &self.finish_holder, FINISH_LEASE).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(task_id, error = %e, "cannot take the finish; it is tried again");
                return None;
            }
        }
        let renewing = (shared.clone(), self.finish_holder.clone());
        let releasing = renewing.clone();
        Some(Some(Lease::keep(
            "finish",
            FINISH_LEASE,
            taken_at,
            Box::new(move || {
                let (store, holder) = renewing.clone();
                Box::pin(async move { store.hold_finish(task_id, &holder, FINISH_LEASE).await })
            }),
            Box::new(move || Box::pin(async move { releasing.0.release_finish(task_id, &releasing.1).await })),
        )))
    }

    /// On a shared database: removes the block claims whose lease ran out, and finishes the tasks
    /// in `verify` whose finish no node holds (the node that held it died). Returns how many
    /// finishes it took on.
    pub async fn take_over_finishes(&self) -> Result<usize, UploadError> {
        let Some(shared) = self.store.shared() else { return Ok(0) };
        let removed = shared.remove_expired_claims().await?;
        if removed > 0 {
            tracing::info!(claims = removed, "removed block claims whose lease ran out");
        }
        let mut taken = 0;
        for task_id in shared.unheld_finishes().await? {
            if let Some(task) = self.store.task(task_id).await?.filter(|task| task.status == TaskStatus::Verify) {
                tracing::info!(task_id, "finishing a task in verify that no node holds");
                drop(self.spawn_finish(task));
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// Finishes the task, and waits for it up to `FINISH_WAIT`: the status to reply with.
    pub(super) async fn finish_and_wait(&self, task: Task) -> TaskStatus {
        match tokio::time::timeout(FINISH_WAIT, self.spawn_finish(task)).await {
            Ok(Ok(Ok(status))) => status,
            _ => TaskStatus::Verify,
        }
    }

    async fn finish_until_done(&self, mut task: Task) -> Result<TaskStatus, UploadError> {
        let task_id = task.task_id;
        let mut wait = FINISH_RETRY_FIRST;
        let mut progress = FinishProgress::default();
        loop {
            let failed = match self.finish(task.clone(), &mut progress).await {
                Ok(status) if status.has_ended() => return Ok(status),
                Ok(open) => {
                    // Its temp file was lost: the task takes the bytes again, and a file placed
                    // before (the old file's, or a link to the temp file being written again) is
                    // not the task's.
                    if let Some(placed) = progress.placed.take() {
                        blocking(move || placed.remove_if_ours()).await?;
                    }
                    return Ok(open);
                }
                Err(failed) => causes(&failed),
            };
            tracing::warn!(task_id, error = failed, retry_in = ?wait, "finishing the task failed; it is tried again");
            if let Err(e) = self.store.record_finish_failure(task_id, &failed).await {
                tracing::warn!(task_id, error = %e, "cannot record the failed finish attempt");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(FINISH_RETRY_LONGEST);
            // The task may have lost its temp file meanwhile, and be uploading again: the next
            // attempt says so.
            if let Ok(Some(now)) = self.store.task(task_id).await {
                task = now;
            }
        }
    }

    /// Verifies the whole-file md5 of a task that is in `verify` (the caller has just seen it
    /// enter or found it there), moves the file into place and ends the task with its callback.
    /// Returns the status the task is in afterwards. `Err` when it failed for a passing reason
    /// and the task is still in `verify`: the caller tries again with the same `progress`.
    async fn finish(&self, task: Task, progress: &mut FinishProgress) -> Result<TaskStatus, UploadError> {
        let started = std::time::Instant::now();
        let size = task.file_bytes();
        // An earlier attempt placed the verified file, then failed to record it: that file is the
        // answer while it is whole and the task has the same temp file, even if that is gone since.
        let placed = match progress.placed.take() {
            Some(placed) if placed.generation == task.temp_generation => {
                blocking(move || placed.still_whole(size).then_some(placed)).await?
            }
            Some(stale) => {
                let tmp = task.tmp_path();
                let (kept, stale) = blocking(move || (stale.forget(&tmp), stale)).await?;
                progress.placed = kept.then_some(stale);
                None
            }
            None => None,
        };
        let verified = match (placed, self.storage.s3()) {
            (Some(placed), _) => {
                progress.placed = Some(placed.clone());
                Verified::Placed(placed.path)
            }
            (None, Some(s3)) => self.verify_stored(s3, &task, progress).await?,
            (None, None) => {
                // A temp file lost or cut short since its bytes came: they are asked for again.
                let task = match self.check_temp(&task).await? {
                    Some(task) if task.status == TaskStatus::Verify => task,
                    other => return Ok(other.map_or(TaskStatus::Verify, |task| task.status)),
                };
                self.verify_and_place(&task, progress).await?
            }
        };
        if !matches!(verified, Verified::Placed(_)) {
            // A file an earlier attempt placed from this same temp file is not the task's.
            if let Some(placed) = progress.placed.take() {
                blocking(move || placed.remove_if_ours()).await?;
            }
        }
        // What identifies the placed file, for a later instant upload of it (none if it cannot
        // be read: the task finishes all the same).
        let identity = match &verified {
            Verified::Placed(path) => {
                let path = path.clone();
                blocking(move || super::instant::identify(&path).ok()).await?
            }
            _ => None,
        };
        let (code, final_path, error) = match verified {
            Verified::Placed(path) => (CallbackCode::Finished, Some(path.to_string_lossy().into_owned()), None),
            Verified::Stored(url) => (CallbackCode::Finished, Some(url), None),
            Verified::Md5Mismatch(got) => {
                (CallbackCode::Md5Mismatch, None, Some(format!("md5 mismatch: the received file's md5 is {got}")))
            }
            Verified::LeavesStoreDir => {
                (CallbackCode::StorageError, None, Some(format!("{} leaves storeDir", task.spec.store_dir)))
            }
        };
        // The callback carries the md5 fupload computed where the task named none.
        let computed_md5 = task.spec.file_md5.is_none().then(|| progress.computed_md5.clone()).flatten();
        let mut task = task;
        task.spec.file_md5 = task.spec.file_md5.or_else(|| computed_md5.clone());
        let ending = TaskEnding {
            status: code.final_status(),
            final_path,
            error,
            idle_for: None,
            placed: identity,
            instant_from: None,
            computed_md5,
        };
        let ended = self.end_task_as(&task, &[TaskStatus::Verify], code, ending).await?;
        Ok(match ended {
            StatusChange::Made => {
                // From the last block's commit to here: what a client waits for after its last byte.
                let finish_ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(task_id = task.task_id, status = %code.final_status(), finish_ms, "task ended");
                // The reply does not wait for the temp file's removal: after a crash before it,
                // the file belongs to no open task, and the next start removes it.
                let uploads = self.clone();
                tokio::spawn(async move {
                    uploads.remove_temp(&task).await;
                    uploads.remove_partial(&task).await;
                });
                code.final_status()
            }
            StatusChange::Refused(now) => now,
            StatusChange::NoSuchTask => code.final_status(),
        })
    }

    /// The object completed in S3 and checked (`service/object.rs`); `Err` for a passing failure.
    async fn verify_stored(
        &self,
        s3: &S3Storage,
        task: &Task,
        progress: &mut FinishProgress,
    ) -> Result<Verified, UploadError> {
        Ok(match self.verify_object(s3, task).await? {
            super::object::ObjectVerified::Stored { url, md5 } => {
                progress.computed_md5 = Some(md5);
                Verified::Stored(url)
            }
            super::object::ObjectVerified::Md5Mismatch(md5) => Verified::Md5Mismatch(md5),
        })
    }

    /// Checks the whole-file md5 (unless `progress` says it matched at this temp generation) and
    /// places the file; `Err` for a passing failure.
    async fn verify_and_place(&self, task: &Task, progress: &mut FinishProgress) -> Result<Verified, UploadError> {
        let (task_id, generation) = (task.task_id, task.temp_generation);
        if progress.md5_matched_at != Some(generation) {
            let (hashers, tmp, size) = (self.hashers.clone(), task.tmp_path(), task.file_bytes());
            let md5 = blocking(move || hashers.finish(task_id, &tmp, size)).await?;
            let md5 = md5.map_err(|e| UploadError::disk("cannot read the temp file", e))?;
            // A task that named no md5 (a tus upload, say) takes the one computed.
            if task.spec.file_md5.as_ref().is_some_and(|expected| *expected != md5) {
                return Ok(Verified::Md5Mismatch(md5));
            }
            progress.md5_matched_at = Some(generation);
            progress.computed_md5 = Some(md5);
        }
        let (tmp, dir, name) = (task.tmp_path(), PathBuf::from(&task.spec.store_dir), task.spec.file_name.clone());
        let root = self.settings.store_root().map(Path::to_path_buf);
        let fsync = self.settings.durability == Durability::Power;
        // Confined again here, without following a symlink: one may have appeared since the
        // create. A missing storeDir is made again.
        let placed = blocking(move || {
            let path = blob::place(&tmp, root.as_deref(), &dir, name.as_str(), task_id, fsync)?;
            PlacedFile::of(path, generation).map_err(PlaceError::Io)
        })
        .await?;
        match placed {
            Ok(placed) => {
                progress.placed = Some(placed.clone());
                Ok(Verified::Placed(placed.path))
            }
            Err(PlaceError::LeavesStoreDir(_)) => Ok(Verified::LeavesStoreDir),
            Err(PlaceError::Io(e)) => Err(UploadError::StoreDir(e)),
        }
    }

    /// Ends `task` if it is in one of `from` (and, with `idle_for`, still idle that long),
    /// queuing its callback in the same transaction; nothing is written unless it is `Made`. The caller
    /// logs the ending (the finish with how long it took: one line per task ended).
    pub(super) async fn end_task(
        &self,
        task: &Task,
        from: &[TaskStatus],
        code: CallbackCode,
        final_path: Option<String>,
        error: Option<String>,
        idle_for: Option<Duration>,
    ) -> Result<StatusChange, UploadError> {
        let ending = TaskEnding {
            status: code.final_status(),
            final_path,
            error,
            idle_for,
            placed: None,
            instant_from: None,
            computed_md5: None,
        };
        self.end_task_as(task, from, code, ending).await
    }

    /// As `end_task`, with the whole `ending` given (a finish records its placed file; an instant
    /// upload also the task it linked from, and its callback says `"instant": true`).
    pub(super) async fn end_task_as(
        &self,
        task: &Task,
        from: &[TaskStatus],
        code: CallbackCode,
        ending: TaskEnding,
    ) -> Result<StatusChange, UploadError> {
        let reported_path = ending.final_path.clone().unwrap_or_else(|| {
            Path::new(&task.spec.store_dir).join(task.spec.file_name.as_str()).to_string_lossy().into_owned()
        });
        let body = callback::body(task, code, &reported_path, ending.instant_from.is_some());
        let callback = match self.business_servers.by_token_sha256(&task.spec.token_sha256) {
            Some((token, server)) => NewCallback {
                ret_code: code.ret_code().to_owned(),
                notify_url: server.notify_url.clone(),
                signature: business::sign(token, body.as_bytes()),
                body,
                undeliverable: None,
            },
            None => NewCallback {
                ret_code: code.ret_code().to_owned(),
                notify_url: String::new(),
                signature: String::new(),
                body,
                undeliverable: Some(format!(
                    "business server {:?} is no longer in the config",
                    task.spec.business_server
                )),
            },
        };
        let ended = self.store.end_task(task.task_id, from, &ending, &callback).await?;
        if ended == StatusChange::Made {
            self.hashers.forget(task.task_id);
            crate::telemetry::metrics::task_ended(ending.status);
            self.outbox_wakeup.notify_one();
        }
        Ok(ended)
    }

    /// Removes what an ended task kept: its temp file, and with S3 its upload and staging objects.
    pub(super) async fn remove_temp(&self, task: &Task) {
        let path = task.tmp_path();
        if let Ok(Err(e)) = blocking(move || blob::remove_if_exists(&path)).await {
            tracing::warn!(task_id = task.task_id, error = %e, "cannot remove the temp file");
        }
        self.discard_object_upload(task).await;
    }
}

/// The partial copy of a finish across file systems (`blob::place`).
impl Uploads {
    /// The copy a finish across file systems keeps until the task's ending is recorded.
    pub(super) async fn remove_partial(&self, task: &Task) {
        let (root, dir, task_id) =
            (self.settings.store_root().map(Path::to_path_buf), PathBuf::from(&task.spec.store_dir), task.task_id);
        if let Ok(Err(e)) = blocking(move || blob::remove_partial(root.as_deref(), &dir, task_id)).await {
            tracing::warn!(task_id, error = %e, "cannot remove the partial copy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::service::test_support::{test_uploads, TestUploads};
    use crate::service::TaskRef;
    use crate::store::test_support::{allow_callbacks, refuse_callbacks};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    async fn stored(t: &TestUploads, task: &TaskRef) -> Task {
        t.uploads.store().task(task.task_id).await.unwrap().unwrap()
    }

    /// Waits until the task's finish has failed once for a reason that passes.
    async fn first_failed_finish(t: &TestUploads, task: &TaskRef) -> Task {
        for _ in 0..500 {
            let now = stored(t, task).await;
            if now.finish_attempts > 0 {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the finish never failed");
    }

    /// The names in a directory, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let names = std::fs::read_dir(dir).into_iter().flatten();
        let mut names: Vec<String> = names.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// The names in storeDir but its staging directory, once that is empty again (the partial
    /// copy is removed after the finish is recorded).
    async fn store_dir_files(t: &TestUploads) -> Vec<String> {
        let store_dir = &t.uploads.settings().store_dir;
        for _ in 0..200 {
            if names_in(&store_dir.join(".fupload")).is_empty() {
                return names_in(store_dir).into_iter().filter(|name| name != ".fupload").collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a partial copy was left in storeDir/.fupload: {:?}", names_in(&store_dir.join(".fupload")));
    }

    /// A temp dir on another file system than the store, where the machine has one (`/dev/shm`).
    fn other_file_system(than: &Path) -> Option<tempfile::TempDir> {
        use std::os::unix::fs::MetadataExt;
        let shm = tempfile::tempdir_in("/dev/shm").ok()?;
        let (a, b) = (std::fs::metadata(shm.path()).ok()?, std::fs::metadata(than).ok()?);
        (a.dev() != b.dev()).then_some(shm)
    }

    #[tokio::test]
    async fn a_finish_that_fails_in_the_database_is_tried_again_until_the_task_ends() {
        let probe = tempfile::tempdir().unwrap();
        let shm = other_file_system(probe.path());
        if shm.is_none() {
            eprintln!("/dev/shm is missing or on the same file system: only one file system is tried");
        }
        for tmp_elsewhere in [None, shm.as_ref()] {
            let t = test_uploads(|s| {
                if let Some(shm) = tmp_elsewhere {
                    s.tmp_dir = shm.path().join("tmp");
                }
            })
            .await;
            let data = data(100_000);
            let task = t.create(&data).await;
            t.send(&task, &data, 0, 49_999).await.unwrap();
            refuse_callbacks(t.uploads.store()).await;
            let last_block = t.send(&task, &data, 50_000, 99_999);
            let room_made = async {
                let waiting = first_failed_finish(&t, &task).await;
                assert_eq!(waiting.status, TaskStatus::Verify);
                assert!(waiting.error.unwrap().contains("cannot take the callback"), "the reason is recorded");
                assert!(t.uploads.blocks_info(&task).await.unwrap().last_error.is_some(), "and shown");
                allow_callbacks(t.uploads.store()).await;
            };
            let (last_block, ()) = tokio::join!(last_block, room_made);
            assert_eq!(last_block.unwrap().task_status, TaskStatus::Finish, "finished by a retry");
            assert_eq!(t.uploads.hashers.bytes_read(), 0, "the retry did not hash the file again");
            let finished = stored(&t, &task).await;
            assert_eq!(std::fs::read(finished.final_path.unwrap()).unwrap(), data);
            assert_eq!(store_dir_files(&t).await, ["f.bin"], "one copy, whatever the file systems");
        }
    }

    /// A task whose file goes to `storeDir/sub/`, with a file (not a directory) there: its finish
    /// fails for a passing reason before it places anything. Returns the blocking file's path.
    async fn task_whose_directory_is_blocked(t: &TestUploads, data: &[u8]) -> (TaskRef, PathBuf) {
        use md5::Digest;
        let body = serde_json::json!({"token": crate::service::test_support::TOKEN, "userId": "1",
            "storePath": "sub/", "fileName": "f.bin", "fileSize": data.len(),
            "fileMd5": hex::encode(md5::Md5::digest(data))});
        let created = crate::http::create_from_body(&t.uploads, body.to_string().as_bytes()).await.unwrap();
        let blocking_file = t.uploads.settings().store_dir.join("sub");
        std::fs::write(&blocking_file, b"not a directory").unwrap();
        (TaskRef { task_id: created.task_id, key: Some(created.upload_key) }, blocking_file)
    }

    #[tokio::test]
    async fn a_temp_file_lost_while_the_finish_waits_is_asked_for_again() {
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let (task, blocking_file) = task_whose_directory_is_blocked(&t, &data).await;
        let last_block = t.send(&task, &data, 0, 99_999);
        let lost = async {
            let waiting = first_failed_finish(&t, &task).await;
            std::fs::remove_file(waiting.tmp_path()).unwrap();
            std::fs::remove_file(&blocking_file).unwrap();
        };
        let (last_block, ()) = tokio::join!(last_block, lost);
        assert_eq!(last_block.unwrap().task_status, TaskStatus::Upload, "back to upload, not an md5 failure");
        let again = t.send(&task, &data, 0, 99_999).await.unwrap();
        assert_eq!(again.task_status, TaskStatus::Finish);
        assert_eq!(std::fs::read(stored(&t, &task).await.final_path.unwrap()).unwrap(), data);
    }

    #[tokio::test]
    async fn a_temp_file_lost_after_the_finish_placed_it_ends_with_the_placed_file() {
        // The placed file is the verified one: asking for the bytes again would leave it behind
        // beside a second copy (found by review).
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let task = t.create(&data).await;
        refuse_callbacks(t.uploads.store()).await;
        let last_block = t.send(&task, &data, 0, 99_999);
        let lost = async {
            let waiting = first_failed_finish(&t, &task).await;
            std::fs::remove_file(waiting.tmp_path()).unwrap();
            allow_callbacks(t.uploads.store()).await;
        };
        let (last_block, ()) = tokio::join!(last_block, lost);
        assert_eq!(last_block.unwrap().task_status, TaskStatus::Finish);
        assert_eq!(std::fs::read(stored(&t, &task).await.final_path.unwrap()).unwrap(), data);
        assert_eq!(store_dir_files(&t).await, ["f.bin"]);
    }

    /// Sends `body` as the block at `start`, with no partMd5.
    async fn send_without_md5(t: &TestUploads, task: &TaskRef, body: &[u8], start: u64) -> TaskStatus {
        let target = t.uploads.check_block_target(task).await.unwrap();
        let plan = t.uploads.plan_block(&target, start, start + body.len() as u64 - 1).await.unwrap();
        let body = futures_util::stream::iter([Ok::<_, String>(bytes::Bytes::copy_from_slice(body))]);
        let received = t.uploads.receive_block(plan, body).await.unwrap();
        t.uploads.commit_block(received, None).await.unwrap().task_status
    }

    /// The task once it has ended (polled for up to 15 s).
    async fn ended(t: &TestUploads, task: &TaskRef) -> Task {
        for _ in 0..1500 {
            let now = stored(t, task).await;
            if !matches!(now.status, TaskStatus::Verify | TaskStatus::Upload) {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the task never ended: {:?}", stored(t, task).await.status);
    }

    #[tokio::test]
    async fn a_retry_after_the_file_was_sent_again_checks_the_new_bytes() {
        // Found by review: the retry skipped the md5 it had found right for the earlier bytes,
        // and placed bytes sent again (here: wrong ones) without hashing them.
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let task = t.create(&data).await;
        refuse_callbacks(t.uploads.store()).await;
        let last_block = t.send(&task, &data, 0, 99_999);
        let meanwhile = async {
            let waiting = first_failed_finish(&t, &task).await;
            allow_callbacks(t.uploads.store()).await;
            // A block found the file lost (its repair comes while the finish waits to retry).
            let now = t.uploads.repair_lost_temp(task.task_id, waiting.temp_generation, 0).await.unwrap().unwrap();
            assert_eq!(now.status, TaskStatus::Upload);
            let wrong: Vec<u8> = data.iter().map(|b| !b).collect();
            assert_eq!(send_without_md5(&t, &task, &wrong, 0).await, TaskStatus::Verify);
        };
        let (_, ()) = tokio::join!(last_block, meanwhile);
        let end = ended(&t, &task).await;
        assert_eq!(end.status, TaskStatus::Fail, "placed as {:?}", end.final_path);
        assert!(store_dir_files(&t).await.is_empty(), "nothing of the first bytes is left in storeDir");
    }

    #[tokio::test]
    async fn a_finish_asked_while_another_runs_is_not_lost() {
        // Found by review: the running finish could stop just as the second one was refused.
        let t = test_uploads(|_| {}).await;
        let data = data(10_000);
        let task = t.create(&data).await;
        let running = FinishGuard::take(&t.uploads.finishing, task.task_id).unwrap();
        let last = t.send(&task, &data, 0, 9_999).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Verify, "left to the finish that runs");
        assert!(running.asked_again(), "which is told to look again");
        assert!(!running.asked_again(), "once");
        drop(running);
        let row = stored(&t, &task).await;
        assert_eq!(t.uploads.spawn_finish(row).await.unwrap().unwrap(), TaskStatus::Finish);
    }

    #[tokio::test]
    async fn a_repair_of_a_temp_file_made_anew_since_is_not_done_again() {
        // Two blocks found the file gone; the second one's repair, with what it saw before the
        // first one's, would forget bytes received in the new file in between (found by review).
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let task = t.create(&data).await;
        let before = stored(&t, &task).await.temp_generation;
        t.uploads.repair_lost_temp(task.task_id, before, 0).await.unwrap().unwrap();
        t.send(&task, &data, 0, 49_999).await.unwrap();
        assert!(t.uploads.repair_lost_temp(task.task_id, before, 0).await.unwrap().is_none());
        assert_eq!(stored(&t, &task).await.received_bytes, 50_000, "the bytes of the new file are kept");
    }

    #[tokio::test]
    async fn a_removed_store_dir_is_made_again_and_the_upload_finishes() {
        // Before, the finish failed the task ("-4") and deleted its complete temp file.
        let t = test_uploads(|_| {}).await;
        let data = data(10_000);
        let task = t.create(&data).await;
        std::fs::remove_dir_all(&t.uploads.settings().store_dir).unwrap();
        let last = t.send(&task, &data, 0, 9_999).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Finish);
        assert_eq!(store_dir_files(&t).await, ["f.bin"]);
        std::fs::remove_dir_all(&t.uploads.settings().store_dir).unwrap();
        std::fs::remove_dir_all(&t.uploads.settings().tmp_dir).unwrap();
        let other = data[..5_000].to_vec();
        let task = t.create(&other).await; // both directories made again
        assert_eq!(t.send(&task, &other, 0, 4_999).await.unwrap().task_status, TaskStatus::Finish);
    }
}
