//! How tasks end: finish (verify, move into place), fail, cancel, expire; and recovery at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{blocking, business, UploadError, Uploads};
use crate::blob;
use crate::callback;
use crate::config::Durability;
use crate::domain::{CallbackCode, Md5Hex, TaskStatus};
use crate::store::{NewCallback, Task, TaskEnding};

/// What checking and moving the finished temp file came to.
enum Verified {
    Placed(PathBuf),
    Md5Mismatch(Md5Hex),
}

impl Uploads {
    /// Finishes a task in `verify` on its own task, so that a client hanging up does not cut
    /// the finish short.
    pub fn spawn_finish(&self, task: Task) -> JoinHandle<Result<TaskStatus, UploadError>> {
        let uploads = self.clone();
        tokio::spawn(async move {
            let task_id = task.task_id;
            let finished = uploads.finish(task).await;
            if let Err(e) = &finished {
                tracing::error!(task_id, error = ?e, "finishing the task failed; it is retried at the next start");
            }
            finished
        })
    }

    /// Verifies the whole-file md5 of a task that is in `verify` (the caller has just seen it
    /// enter or found it there), moves the file into place and ends the task with its callback.
    /// Returns the status the task is in afterwards.
    pub(super) async fn finish(&self, task: Task) -> Result<TaskStatus, UploadError> {
        let started = std::time::Instant::now();
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
        let verified = blocking(move || -> std::io::Result<Verified> {
            let md5 = hashers.finish(task_id, &tmp, size)?;
            if md5.as_str() != expected {
                return Ok(Verified::Md5Mismatch(md5));
            }
            // Confined again here, without following a symlink: one may have appeared since the create.
            Ok(Verified::Placed(blob::place(&tmp, root.as_deref(), &dir, &name, task_id, fsync)?))
        })
        .await?;
        let (code, final_path, error) = match verified {
            Ok(Verified::Placed(path)) => (CallbackCode::Finished, Some(path.to_string_lossy().into_owned()), None),
            Ok(Verified::Md5Mismatch(got)) => {
                (CallbackCode::Md5Mismatch, None, Some(format!("md5 mismatch: the received file's md5 is {got}")))
            }
            Err(e) => (CallbackCode::StorageError, None, Some(format!("cannot move the file into place: {e}"))),
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

    /// A crash between recording a task and making its temp file leaves an open task without one
    /// (an empty file's task is recorded straight in `verify`): make it, so that the task can go on.
    async fn make_missing_temp(&self, task: &Task) {
        let (path, size) = (task.tmp_path(), u64::try_from(task.spec.file_size).unwrap_or(0));
        let made = blocking(move || match path.try_exists() {
            Ok(false) => blob::create_temp(&path, size).map(|()| true),
            other => other.map(|_| false),
        })
        .await;
        match made {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                tracing::warn!(task_id = task.task_id, received_bytes = task.received_bytes, "made a missing temp file")
            }
            Ok(Err(e)) => tracing::error!(task_id = task.task_id, error = %e, "cannot make a missing temp file"),
            Err(e) => tracing::error!(task_id = task.task_id, error = ?e, "cannot make a missing temp file"),
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

    /// After a restart: make temp files a crash left unmade, hash the received prefix of open tasks
    /// again (the md5 state was in memory),
    /// finish the tasks caught in `verify`, and remove temp files that no open task owns (tasks that
    /// ended before their temp file was removed, or were never recorded).
    pub async fn recover(&self) -> Result<(), UploadError> {
        for status in [TaskStatus::Upload, TaskStatus::Pause, TaskStatus::Verify] {
            for task_id in self.store.tasks_in_status(status).await? {
                if let Some(task) = self.store.task(task_id).await? {
                    self.make_missing_temp(&task).await;
                    if status != TaskStatus::Verify {
                        let prefix = self.store.received_prefix(task_id).await?;
                        self.hashers.track(task_id, &task.tmp_path());
                        self.hashers.advance(task_id, prefix);
                    }
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
        let entries = blocking(move || std::fs::read_dir(&tmp_dir).and_then(|dir| dir.collect::<Result<Vec<_>, _>>()))
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
}
