//! A temp file lost under the running server (tmpDir cleaned by an admin or systemd-tmpfiles, a
//! file cut short): the task's received ranges are set back to what is really on disk and the
//! file is made anew, so the client is asked for those bytes again instead of the finish failing
//! the md5 after every byte was acknowledged.

use super::{blocking, UploadError, Uploads};
use crate::blob::{self, TempFile};
use crate::domain::TaskStatus;
use crate::store::Task;

impl Uploads {
    /// The task as it is once its temp file is known to hold what it recorded: repaired when it
    /// was lost or cut short. `None` when the task has ended meanwhile.
    pub(super) async fn check_temp(&self, task: &Task) -> Result<Option<Task>, UploadError> {
        let (path, size) = (task.tmp_path(), task.file_bytes());
        match blocking(move || blob::temp_file(&path, size)).await? {
            Ok(TempFile::Whole) => Ok(Some(task.clone())),
            Ok(TempFile::Lost { on_disk }) => {
                match self.repair_lost_temp(task.task_id, task.temp_generation, on_disk).await? {
                    Some(repaired) => Ok(Some(repaired)),
                    // Repaired by another meanwhile, or ended.
                    None => Ok(self.store.task(task.task_id).await?),
                }
            }
            Err(e) => Err(UploadError::disk("cannot look at the temp file", e)),
        }
    }

    /// Sets the task's received ranges back to the first `on_disk` bytes its temp file of
    /// `temp_generation` still holds, and makes the file (and tmpDir) again. Returns the task as
    /// it is now; `None` when it has ended meanwhile (its temp file was removed on purpose) or
    /// another repair came first.
    pub(super) async fn repair_lost_temp(
        &self,
        task_id: i64,
        temp_generation: i64,
        on_disk: u64,
    ) -> Result<Option<Task>, UploadError> {
        let why = format!(
            "the temp file was lost or cut short (was tmpDir cleaned?): {on_disk} bytes were kept, the bytes \
             after them are expected again"
        );
        let reset = self.store.reset_received_beyond(task_id, temp_generation, on_disk, &why).await?;
        let Some(task) = reset else { return Ok(None) };
        let (path, size) = (task.tmp_path(), task.file_bytes());
        let made = blocking(move || blob::create_temp(&path, size)).await?;
        made.map_err(|e| UploadError::disk("cannot make the lost temp file again", e))?;
        tracing::warn!(
            task_id,
            on_disk,
            received_bytes = task.received_bytes,
            status = %task.status,
            "the temp file was lost or cut short; the bytes not on disk are expected again"
        );
        // The whole-file md5 state was of the old file's bytes.
        self.hashers.forget(task_id);
        if matches!(task.status, TaskStatus::Upload | TaskStatus::Pause) {
            self.hashers.track(task_id, &task.tmp_path());
            self.hashers.advance(task_id, self.store.received_prefix(task_id).await?);
        }
        Ok(Some(task))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::domain::{ByteRange, Md5Hex};
    use crate::service::test_support::{restart, test_uploads, TestUploads};
    use crate::service::{TaskRef, UploadError};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 251) as u8).collect()
    }

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    async fn expected(t: &TestUploads, task: &TaskRef) -> Vec<ByteRange> {
        t.uploads.blocks_info(task).await.unwrap().expect_blocks
    }

    /// Sends what the task expects, then returns the finished file's bytes.
    async fn send_missing_and_read_back(t: &TestUploads, task: &TaskRef, data: &[u8]) -> Vec<u8> {
        for gap in expected(t, task).await {
            t.send(task, data, gap.start() as usize, gap.end() as usize).await.unwrap();
        }
        let stored = t.uploads.store().task(task.task_id).await.unwrap().unwrap();
        assert_eq!(stored.status, TaskStatus::Finish, "{:?}", stored.error);
        fs::read(stored.final_path.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_block_after_tmp_dir_was_removed_makes_it_again_and_asks_for_the_lost_bytes() {
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let task = t.create(&data).await;
        t.send(&task, &data, 0, 49_999).await.unwrap();
        fs::remove_dir_all(&t.uploads.settings().tmp_dir).unwrap();
        let refused = t.send(&task, &data, 50_000, 99_999).await;
        assert!(matches!(refused, Err(UploadError::TempFileLost)), "{refused:?}");
        assert!(t.uploads.settings().tmp_dir.is_dir(), "tmpDir is made again");
        assert_eq!(expected(&t, &task).await, [r(0, 99_999)], "the lost bytes are expected again");
        let info = t.uploads.blocks_info(&task).await.unwrap();
        assert!(info.last_error.unwrap().contains("temp file was lost"));
        assert_eq!(send_missing_and_read_back(&t, &task, &data).await, data);
    }

    #[tokio::test]
    async fn a_temp_file_cut_short_keeps_the_bytes_still_on_disk() {
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let task = t.create(&data).await;
        t.send(&task, &data, 0, 59_999).await.unwrap();
        t.send(&task, &data, 60_000, 79_999).await.unwrap();
        let path = t.uploads.store().task(task.task_id).await.unwrap().unwrap().tmp_path();
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(70_000).unwrap();
        let refused = t.send(&task, &data, 80_000, 99_999).await;
        assert!(matches!(refused, Err(UploadError::TempFileLost)), "{refused:?}");
        assert_eq!(expected(&t, &task).await, [r(70_000, 99_999)]);
        assert_eq!(fs::metadata(&path).unwrap().len(), 100_000, "the file has its length again");
        assert_eq!(send_missing_and_read_back(&t, &task, &data).await, data);
    }

    #[tokio::test]
    async fn a_block_written_into_the_lost_temp_file_is_not_recorded() {
        // The block opened the old file before it was removed; another block has since found it
        // gone and made a new one. Recording the first block would acknowledge bytes that are not
        // in the new file: the md5 would fail at the finish.
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let task = t.create(&data).await;
        let target = t.uploads.check_block_target(&task).await.unwrap();
        let plan = t.uploads.plan_block(&target, 0, 49_999).await.unwrap();
        let body = futures_util::stream::iter([Ok::<_, String>(bytes::Bytes::copy_from_slice(&data[..50_000]))]);
        let received = t.uploads.receive_block(plan, body).await.unwrap();
        fs::remove_file(t.uploads.store().task(task.task_id).await.unwrap().unwrap().tmp_path()).unwrap();
        let found_gone = t.send(&task, &data, 50_000, 99_999).await;
        assert!(matches!(found_gone, Err(UploadError::TempFileLost)), "{found_gone:?}");
        let md5 = Md5Hex::of_digest(&<md5::Md5 as md5::Digest>::digest(&data[..50_000]));
        let refused = t.uploads.commit_block(received, Some(md5)).await;
        assert!(matches!(refused, Err(UploadError::TempFileLost)), "{refused:?}");
        assert_eq!(expected(&t, &task).await, [r(0, 99_999)]);
        assert_eq!(send_missing_and_read_back(&t, &task, &data).await, data);
    }

    #[tokio::test]
    async fn after_a_restart_a_lost_temp_file_is_asked_for_again() {
        // Before, the start made an empty temp file and kept reporting the lost bytes as received:
        // the client never sent them again, and the task failed its md5.
        let t = test_uploads(|_| {}).await;
        let data = data(100_000);
        let task = t.create(&data).await;
        t.send(&task, &data, 0, 49_999).await.unwrap();
        let tmp_dir = t.uploads.settings().tmp_dir.clone();
        t.uploads.store().close().await;
        fs::remove_dir_all(&tmp_dir).unwrap();
        let t = restart(t).await;
        assert_eq!(expected(&t, &task).await, [r(0, 99_999)]);
        assert_eq!(send_missing_and_read_back(&t, &task, &data).await, data);
    }
}
