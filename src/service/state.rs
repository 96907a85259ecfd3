//! State changes asked by the client: pause, upload, cancel.

use super::{TaskRef, UploadError, Uploads};
use crate::domain::{CallbackCode, FieldError, TaskStatus};
use crate::store::StatusChange;

/// A state a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedState {
    Pause,
    Upload,
    Cancel,
}

impl RequestedState {
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        match text {
            "pause" => Ok(RequestedState::Pause),
            "upload" => Ok(RequestedState::Upload),
            "cancel" => Ok(RequestedState::Cancel),
            _ => Err(FieldError::new("status", "must be pause, upload or cancel").with_sent(text)),
        }
    }
}

impl Uploads {
    /// Returns the task's status afterwards.
    pub async fn change_state(&self, task_ref: &TaskRef, wanted: RequestedState) -> Result<TaskStatus, UploadError> {
        let task = self.authorized_task(task_ref).await?;
        let (from, to) = match (wanted, task.status) {
            (_, ended) if ended.has_ended() => return Err(UploadError::TaskEnded(ended)),
            (RequestedState::Pause, TaskStatus::Pause) | (RequestedState::Upload, TaskStatus::Upload) => {
                return Err(UploadError::SameState(task.status))
            }
            (RequestedState::Pause, _) => (TaskStatus::Upload, TaskStatus::Pause),
            (RequestedState::Upload, _) => (TaskStatus::Pause, TaskStatus::Upload),
            (RequestedState::Cancel, _) => {
                let open = [TaskStatus::Upload, TaskStatus::Pause];
                match self.end_task(&task, &open, CallbackCode::Cancelled, None, None, None).await? {
                    StatusChange::Made => {}
                    StatusChange::Refused(now) => return Err(UploadError::TaskEnded(now)),
                    StatusChange::NoSuchTask => return Err(UploadError::TaskNotFound(task.task_id)),
                }
                tracing::info!(task_id = task.task_id, status = %TaskStatus::Cancel, "task ended");
                self.remove_temp(&task).await;
                return Ok(TaskStatus::Cancel);
            }
        };
        // Another request may have changed the state since it was read: report what it is now.
        match self.store.change_status(task.task_id, from, to).await? {
            StatusChange::Refused(status) if status == to => Err(UploadError::SameState(status)),
            change => UploadError::for_change(task.task_id, change).map_or(Ok(to), Err),
        }
    }
}
