//! The expected-blocks listing: what a task has received, what it still expects, and why it waits.

use super::{TaskRef, UploadError, Uploads};
use crate::domain::{ByteRange, TaskStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksInfo {
    pub task_id: i64,
    pub total_size: u64,
    pub received_size: u64,
    pub status: TaskStatus,
    pub expect_blocks: Vec<ByteRange>,
    /// The last problem the task met: a finish that failed and is tried again, a lost temp file,
    /// or why it failed.
    pub last_error: Option<String>,
    pub finish_attempts: u64,
}

impl Uploads {
    pub async fn blocks_info(&self, task_ref: &TaskRef) -> Result<BlocksInfo, UploadError> {
        let task = self.authorized_task(task_ref).await?;
        let total_size = task.file_bytes();
        // The gaps as they are, also for an ended task: its `status` says it takes no more.
        let received_size = task.received_bytes;
        let expect_blocks = self.store.expected_blocks(task.task_id, total_size).await?;
        Ok(BlocksInfo {
            task_id: task.task_id,
            total_size,
            received_size,
            status: task.status,
            expect_blocks,
            last_error: task.error,
            finish_attempts: task.finish_attempts,
        })
    }
}
