//! Expiry: tasks with no accepted block or state change for `taskTimeout` end as `expire`.

use std::time::Duration;

use super::{UploadError, Uploads};
use crate::domain::{CallbackCode, TaskStatus};
use crate::store::StatusChange;

impl Uploads {
    /// Expires tasks idle for `taskTimeout`; returns how many.
    pub async fn expire_idle_tasks(&self) -> Result<usize, UploadError> {
        let timeout = Duration::from_secs(self.settings.task_timeout);
        let mut expired = 0;
        for task_id in self.store.idle_tasks(timeout).await? {
            let Some(task) = self.store.task(task_id).await? else { continue };
            let open = [TaskStatus::Upload, TaskStatus::Pause];
            if self.end_task(&task, &open, CallbackCode::Expired, None, None, Some(timeout)).await?
                == StatusChange::Made
            {
                tracing::info!(task_id, status = %TaskStatus::Expire, "task ended");
                self.remove_temp(&task).await;
                expired += 1;
            }
        }
        Ok(expired)
    }
}
