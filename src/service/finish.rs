//! How tasks end: finish (verify, move into place), fail, cancel, expire; and recovery at start-up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{blocking, business, UploadError, Uploads};
use crate::blob::{self, PlaceError};
use crate::callback;
use crate::config::Durability;
use crate::domain::{CallbackCode, Md5Hex, TaskStatus};
use crate::store::{NewCallback, Task, TaskEnding};

/// What checking and moving the finished temp file came to, when it did not fail for a passing
/// reason.
enum Verified {
    Placed(PathBuf),
    Md5Mismatch(Md5Hex),
    /// A symlink below storeDir leads out of it: the file is never placed there.
    LeavesStoreDir,
}

/// The tasks whose finish is running, so that no two run for one task at once.
pub(super) type Finishing = Arc<Mutex<HashSet<i64>>>;

/// A task's place in `Finishing`, let go when dropped.
struct FinishGuard {
    finishing: Finishing,
    task_id: i64,
}

impl FinishGuard {
    fn take(finishing: &Finishing, task_id: i64) -> Option<Self> {
        let taken = finishing.lock().unwrap_or_else(|e| e.into_inner()).insert(task_id);
        taken.then(|| FinishGuard { finishing: finishing.clone(), task_id })
    }
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.finishing.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.task_id);
    }
}

/// An error and its causes in one line, for the log and the task's `error`.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn dir_of(task: &Task) -> String {
    task.spec.store_dir.clone()
}

/// How long a finish that failed for a passing reason waits before it tries again: doubling from
/// the first wait up to the longest, so a task completes soon after the trouble goes.
const FINISH_RETRY_FIRST: Duration = Duration::from_secs(1);
const FINISH_RETRY_LONGEST: Duration = Duration::from_secs(10);

/// How long a request that completed a file waits for its finish before replying `verify`.
const FINISH_WAIT: Duration = Duration::from_secs(5);

impl Uploads {
    /// Finishes a task in `verify` on its own task, so that a client hanging up does not cut the
    /// finish short. A finish that fails for a passing reason (the database busy or full, a disk
    /// error) is tried again with backoff until the task ends: its bytes are kept meanwhile, and
    /// its `error` and `finish_attempts` say why it waits. One finish runs per task at a time; a
    /// second one asked meanwhile leaves it to the first.
    pub fn spawn_finish(&self, task: Task) -> JoinHandle<Result<TaskStatus, UploadError>> {
        let uploads = self.clone();
        tokio::spawn(async move {
            let Some(_finishing) = FinishGuard::take(&uploads.finishing, task.task_id) else {
                return Ok(TaskStatus::Verify);
            };
            uploads.finish_until_done(task).await
        })
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
        // Once an attempt found the md5 right, the next ones do not hash the file again: nothing
        // writes to it in `verify`, and a lost file sends the task back to `upload`.
        let mut md5_matched = false;
        loop {
            let failed = match self.finish(task.clone(), &mut md5_matched).await {
                Ok(status) => return Ok(status),
                Err(failed) => causes(&failed),
            };
            tracing::warn!(task_id, error = failed, retry_in = ?wait, "finishing the task failed; it is tried again");
            if let Err(e) = self.store.record_finish_failure(task_id, &failed).await {
                tracing::warn!(task_id, error = %e, "cannot record the failed finish attempt");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(FINISH_RETRY_LONGEST);
            // The task may have lost its temp file meanwhile, and be uploading again.
            if let Ok(Some(now)) = self.store.task(task_id).await {
                if now.status != TaskStatus::Verify {
                    return Ok(now.status);
                }
                task = now;
            }
        }
    }

    /// Verifies the whole-file md5 of a task that is in `verify` (the caller has just seen it
    /// enter or found it there), moves the file into place and ends the task with its callback.
    /// Returns the status the task is in afterwards. `Err` when it failed for a passing reason
    /// and the task is still in `verify`: the caller tries again. `md5_matched` says whether an
    /// earlier attempt found the md5 right, and is set when this one does.
    async fn finish(&self, task: Task, md5_matched: &mut bool) -> Result<TaskStatus, UploadError> {
        let started = std::time::Instant::now();
        // A temp file lost or cut short since its bytes came: they are asked for again.
        let task = match self.check_temp(&task).await? {
            Some(task) if task.status == TaskStatus::Verify => task,
            Some(task) => return Ok(task.status),
            None => return Ok(self.store.task(task.task_id).await?.map_or(TaskStatus::Verify, |t| t.status)),
        };
        let task_id = task.task_id;
        let (tmp, dir, name, expected) = (
            task.tmp_path(),
            PathBuf::from(&task.spec.store_dir),
            task.spec.file_name.clone(),
            task.spec.file_md5.clone(),
        );
        let (hashers, size) = (self.hashers.clone(), u64::try_from(task.spec.file_size).unwrap_or(0));
        let root = self.settings.store_root().map(Path::to_path_buf);
        let fsync = self.settings.durability == Durability::Power;
        let matched_before = *md5_matched;
        let (matched, verified) = blocking(move || -> (bool, Result<Verified, UploadError>) {
            if !matched_before {
                let md5 = match hashers.finish(task_id, &tmp, size) {
                    Ok(md5) => md5,
                    Err(e) => return (false, Err(UploadError::disk("cannot read the temp file", e))),
                };
                if md5.as_str() != expected {
                    return (false, Ok(Verified::Md5Mismatch(md5)));
                }
            }
            // Confined again here, without following a symlink: one may have appeared since the
            // create. A missing storeDir is made again.
            let placed = match blob::place(&tmp, root.as_deref(), &dir, &name, task_id, fsync) {
                Ok(path) => Ok(Verified::Placed(path)),
                Err(PlaceError::LeavesStoreDir(_)) => Ok(Verified::LeavesStoreDir),
                Err(PlaceError::Io(e)) => Err(UploadError::StoreDir(e)),
            };
            (true, placed)
        })
        .await?;
        *md5_matched = matched;
        let (code, final_path, error) = match verified? {
            Verified::Placed(path) => (CallbackCode::Finished, Some(path.to_string_lossy().into_owned()), None),
            Verified::Md5Mismatch(got) => {
                (CallbackCode::Md5Mismatch, None, Some(format!("md5 mismatch: the received file's md5 is {got}")))
            }
            Verified::LeavesStoreDir => {
                (CallbackCode::StorageError, None, Some(format!("{} leaves storeDir", dir_of(&task))))
            }
        };
        let ended = self.end_task(&task, &[TaskStatus::Verify], code, final_path, error, None).await?;
        // The reply does not wait for the temp file's removal: after a crash before it, the file
        // belongs to no open task, and the next start removes it.
        let uploads = self.clone();
        tokio::spawn(async move {
            uploads.remove_temp(&task).await;
            uploads.remove_partial(&task).await;
        });
        Ok(match ended {
            Ok(()) => {
                // From the last block's commit to here: what a client waits for after its last byte.
                let finish_ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(task_id, status = %code.final_status(), finish_ms, "task ended");
                code.final_status()
            }
            Err(now) => now.unwrap_or(code.final_status()),
        })
    }

    /// Ends `task` if it is in one of `from` (and, with `idle_for`, still idle that long),
    /// queuing its callback in the same transaction. `Err(current)` when it was not. The caller
    /// logs the ending (the finish with how long it took: one line per task ended).
    pub(super) async fn end_task(
        &self,
        task: &Task,
        from: &[TaskStatus],
        code: CallbackCode,
        final_path: Option<String>,
        error: Option<String>,
        idle_for: Option<Duration>,
    ) -> Result<Result<(), Option<TaskStatus>>, UploadError> {
        let reported_path = final_path.clone().unwrap_or_else(|| {
            Path::new(&task.spec.store_dir).join(&task.spec.file_name).to_string_lossy().into_owned()
        });
        let body = callback::body(task, code, &reported_path);
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
        let ending = TaskEnding { status: code.final_status(), final_path, error, idle_for };
        let ended = self.store.end_task(task.task_id, from, &ending, &callback).await?;
        if ended.is_ok() {
            self.hashers.forget(task.task_id);
            crate::telemetry::metrics::task_ended(ending.status);
            self.outbox_wakeup.notify_one();
        }
        Ok(ended)
    }

    pub(super) async fn remove_temp(&self, task: &Task) {
        let path = task.tmp_path();
        if let Ok(Err(e)) = blocking(move || blob::remove_if_exists(&path)).await {
            tracing::warn!(task_id = task.task_id, error = %e, "cannot remove the temp file");
        }
    }

    /// Expires tasks idle for `taskTimeout`; returns how many.
    pub async fn expire_idle_tasks(&self) -> Result<usize, UploadError> {
        let timeout = Duration::from_secs(self.settings.task_timeout);
        let mut expired = 0;
        for task_id in self.store.idle_tasks(timeout).await? {
            let Some(task) = self.store.task(task_id).await? else { continue };
            let open = [TaskStatus::Upload, TaskStatus::Pause];
            if self.end_task(&task, &open, CallbackCode::Expired, None, None, Some(timeout)).await?.is_ok() {
                tracing::info!(task_id, status = %TaskStatus::Expire, "task ended");
                self.remove_temp(&task).await;
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// After a restart: check the temp files of open tasks (a crash may have left one unmade, an
    /// admin may have removed tmpDir) and set their received ranges back to what is on disk, hash
    /// the received prefix of open tasks again (the md5 state was in memory), finish the tasks
    /// caught in `verify`, and remove temp files that no open task owns (tasks that ended before
    /// their temp file was removed, or were never recorded).
    pub async fn recover(&self) -> Result<(), UploadError> {
        for status in [TaskStatus::Upload, TaskStatus::Pause, TaskStatus::Verify] {
            for task_id in self.store.tasks_in_status(status).await? {
                let Some(task) = self.store.task(task_id).await? else { continue };
                let task = match self.check_temp(&task).await {
                    Ok(Some(task)) => task,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(task_id, error = causes(&e), "cannot check the temp file");
                        task
                    }
                };
                if matches!(task.status, TaskStatus::Upload | TaskStatus::Pause) {
                    let prefix = self.store.received_prefix(task_id).await?;
                    self.hashers.track(task_id, &task.tmp_path());
                    self.hashers.advance(task_id, prefix);
                }
            }
        }
        for task_id in self.store.tasks_in_status(TaskStatus::Verify).await? {
            if let Some(task) = self.store.task(task_id).await? {
                tracing::info!(task_id, "verifying a task left in verify");
                self.spawn_finish(task);
            }
        }
        self.remove_orphaned_partials().await?;
        let tmp_dir = self.settings.tmp_dir.clone();
        let entries = blocking(move || {
            blob::make_dir_again("tmpDir", &tmp_dir)?;
            std::fs::read_dir(&tmp_dir)?.collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|e| UploadError::disk("cannot read tmpDir", e))?;
        for entry in entries {
            let path = entry.path();
            let orphaned = match task_id_of_temp(&path) {
                Some(task_id) => !self.store.task(task_id).await?.is_some_and(|task| {
                    matches!(task.status, TaskStatus::Upload | TaskStatus::Pause | TaskStatus::Verify)
                }),
                // A spooled block body: its request is gone.
                None => blob::is_spool(&path),
            };
            if !orphaned {
                continue;
            }
            tracing::info!(path = %path.display(), "removing an orphaned temp file");
            if let Ok(Err(e)) = blocking(move || blob::remove_if_exists(&path)).await {
                tracing::warn!(error = %e, "cannot remove an orphaned temp file");
            }
        }
        Ok(())
    }
}

/// The partial copies of a finish across file systems (`blob::place`).
impl Uploads {
    /// The copy a finish across file systems keeps until the task's ending is recorded.
    async fn remove_partial(&self, task: &Task) {
        let (root, dir, task_id) =
            (self.settings.store_root().map(Path::to_path_buf), PathBuf::from(&task.spec.store_dir), task.task_id);
        if let Ok(Err(e)) = blocking(move || blob::remove_partial(root.as_deref(), &dir, task_id)).await {
            tracing::warn!(task_id, error = %e, "cannot remove the partial copy");
        }
    }

    /// Removes the partials in storeDir/.fupload whose task is not being finished: a crash came
    /// after the task's ending was recorded and before its partial was removed.
    async fn remove_orphaned_partials(&self) -> Result<(), UploadError> {
        let Some(root) = self.settings.store_root().map(Path::to_path_buf) else { return Ok(()) };
        let read_root = root.clone();
        let task_ids = match blocking(move || blob::staged_partials(&read_root)).await? {
            Ok(task_ids) => task_ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read storeDir/.fupload");
                return Ok(());
            }
        };
        for task_id in task_ids {
            let task = self.store.task(task_id).await?;
            if task.as_ref().is_some_and(|task| task.status == TaskStatus::Verify) {
                continue;
            }
            tracing::info!(task_id, "removing an orphaned partial copy");
            // An unknown task's directory is unknown: storeDir itself is all there is to look in.
            let (root, dir) = (root.clone(), task.map_or_else(|| root.clone(), |task| task.spec.store_dir.into()));
            if let Ok(Err(e)) = blocking(move || blob::remove_partial(Some(&root), &dir, task_id)).await {
                tracing::warn!(task_id, error = %e, "cannot remove an orphaned partial copy");
            }
        }
        Ok(())
    }
}

/// `task-123.part` → 123.
fn task_id_of_temp(path: &Path) -> Option<i64> {
    path.file_name()?.to_str()?.strip_prefix("task-")?.strip_suffix(".part")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_file_names_map_back_to_task_ids() {
        assert_eq!(task_id_of_temp(Path::new("/t/task-12.part")), Some(12));
        assert_eq!(task_id_of_temp(Path::new("/t/task-x.part")), None);
        assert_eq!(task_id_of_temp(Path::new("/t/spool-1.part")), None);
    }

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

    #[tokio::test]
    async fn a_temp_file_lost_while_the_finish_waits_is_asked_for_again() {
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
        assert_eq!(last_block.unwrap().task_status, TaskStatus::Upload, "back to upload, not an md5 failure");
        let again = t.send(&task, &data, 0, 99_999).await.unwrap();
        assert_eq!(again.task_status, TaskStatus::Finish);
        assert_eq!(std::fs::read(stored(&t, &task).await.final_path.unwrap()).unwrap(), data);
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
