//! After a restart: temp files checked, md5 states rebuilt, tasks left in `verify` finished,
//! files no open task owns removed.

use std::path::Path;

use super::finish::causes;
use super::{blocking, UploadError, Uploads};
use crate::blob;
use crate::domain::TaskStatus;

impl Uploads {
    /// After a restart: check the temp files of open tasks (a crash may have left one unmade, an
    /// admin may have removed tmpDir) and set their received ranges back to what is on disk, hash
    /// the received prefix of open tasks again (the md5 state was in memory), finish the tasks
    /// caught in `verify`, and remove temp files that no open task owns (tasks that ended before
    /// their temp file was removed, or were never recorded).
    pub async fn recover(&self) -> Result<(), UploadError> {
        // With S3 the received bytes are staged there, and the finish hashes the object: the
        // temp files hold nothing to check or hash.
        let open_tasks = match self.storage.s3() {
            None => &[TaskStatus::Upload, TaskStatus::Pause, TaskStatus::Verify][..],
            Some(_) => &[],
        };
        for &status in open_tasks {
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
        // Each entry with whether it was left unwritten for long, read on the blocking pool too.
        let entries = blocking(move || {
            blob::make_dir_again("tmpDir", &tmp_dir)?;
            let entries = std::fs::read_dir(&tmp_dir)?.collect::<Result<Vec<_>, _>>()?;
            Ok::<_, std::io::Error>(
                entries.iter().map(|entry| (entry.path(), idle_for_long(entry))).collect::<Vec<_>>(),
            )
        })
        .await?
        .map_err(|e| UploadError::disk("cannot read tmpDir", e))?;
        for (path, idle_for_long) in entries {
            let orphaned = match task_id_of_temp(&path) {
                Some(task_id) => !self.store.task(task_id).await?.is_some_and(|task| {
                    matches!(task.status, TaskStatus::Upload | TaskStatus::Pause | TaskStatus::Verify)
                }),
                // A spooled block body: its request is gone. On a shared tmpDir it may be another
                // node's, whose request is still arriving: only one idle for long is left behind.
                None => blob::is_spool(&path) && (self.store.shared().is_none() || idle_for_long),
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
/// How long a spool file on a shared tmpDir must have been left unwritten before a node that
/// starts takes it for left behind: far longer than a block body takes to arrive.
const SHARED_SPOOL_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

fn idle_for_long(entry: &std::fs::DirEntry) -> bool {
    let modified = entry.metadata().and_then(|meta| meta.modified());
    modified.is_ok_and(|at| at.elapsed().is_ok_and(|idle| idle > SHARED_SPOOL_IDLE))
}

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
