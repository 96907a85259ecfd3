//! The life of a task and the callback codes its endings send.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Accepting blocks.
    Upload,
    /// Refusing blocks until set back to `Upload`.
    Pause,
    /// All bytes are in; the whole-file md5 is being checked and the file moved.
    Verify,
    Finish,
    Fail,
    Cancel,
    Expire,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Upload,
        TaskStatus::Pause,
        TaskStatus::Verify,
        TaskStatus::Finish,
        TaskStatus::Fail,
        TaskStatus::Cancel,
        TaskStatus::Expire,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Upload => "upload",
            TaskStatus::Pause => "pause",
            TaskStatus::Verify => "verify",
            TaskStatus::Finish => "finish",
            TaskStatus::Fail => "fail",
            TaskStatus::Cancel => "cancel",
            TaskStatus::Expire => "expire",
        }
    }

    /// The state as a word for a sentence: "the task is paused".
    pub fn word(self) -> &'static str {
        match self {
            TaskStatus::Upload => "uploading",
            TaskStatus::Pause => "paused",
            TaskStatus::Verify => "being verified",
            TaskStatus::Finish => "finished",
            TaskStatus::Fail => "failed",
            TaskStatus::Cancel => "cancelled",
            TaskStatus::Expire => "expired",
        }
    }

    /// A task that has left `upload`/`pause` takes no more blocks or state changes.
    pub fn has_ended(self) -> bool {
        !matches!(self, TaskStatus::Upload | TaskStatus::Pause)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for TaskStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// The `retCode` of the callback an ended task sends to its business server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackCode {
    Finished,
    Expired,
    Md5Mismatch,
    Cancelled,
    StorageError,
}

impl CallbackCode {
    pub fn ret_code(self) -> &'static str {
        match self {
            CallbackCode::Finished => "0",
            CallbackCode::Expired => "-1",
            CallbackCode::Md5Mismatch => "-2",
            CallbackCode::Cancelled => "-3",
            CallbackCode::StorageError => "-4",
        }
    }

    pub fn status_text(self) -> &'static str {
        match self {
            CallbackCode::Finished => "ok",
            CallbackCode::Expired => "time out",
            CallbackCode::Md5Mismatch => "md5 error",
            CallbackCode::Cancelled => "cancelled",
            CallbackCode::StorageError => "storage error",
        }
    }

    /// The status a task ends in with this callback.
    pub fn final_status(self) -> TaskStatus {
        match self {
            CallbackCode::Finished => TaskStatus::Finish,
            CallbackCode::Expired => TaskStatus::Expire,
            CallbackCode::Md5Mismatch | CallbackCode::StorageError => TaskStatus::Fail,
            CallbackCode::Cancelled => TaskStatus::Cancel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        }
        assert!("Upload".parse::<TaskStatus>().is_err());
        assert!("".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn only_upload_and_pause_are_open() {
        let open: Vec<_> = TaskStatus::ALL.into_iter().filter(|s| !s.has_ended()).collect();
        assert_eq!(open, vec![TaskStatus::Upload, TaskStatus::Pause]);
    }
}
