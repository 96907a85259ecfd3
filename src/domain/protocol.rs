//! The front ends a task can be uploaded through, and its part in a tus concatenation.

use std::fmt;
use std::str::FromStr;

/// The protocol a task was created or uploaded through; the callback names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The fuploadServer protocol (../shared/PROTOCOL.md).
    Fupload,
    /// tus 1.0.0.
    Tus,
    /// The IETF draft "Resumable Uploads for HTTP".
    Ietf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Fupload => "fupload",
            Protocol::Tus => "tus",
            Protocol::Ietf => "ietf",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}")]
pub struct UnknownWord(pub String);

impl FromStr for Protocol {
    type Err = UnknownWord;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "fupload" => Ok(Protocol::Fupload),
            "tus" => Ok(Protocol::Tus),
            "ietf" => Ok(Protocol::Ietf),
            other => Err(UnknownWord(other.to_owned())),
        }
    }
}

/// A task's part in a tus concatenation (the `concatenation` extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcatRole {
    /// Uploaded on its own, never finished or placed: a final upload takes its bytes.
    Partial,
    /// Made of partial uploads, then finished like any task.
    Final,
}

impl ConcatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ConcatRole::Partial => "partial",
            ConcatRole::Final => "final",
        }
    }
}

impl FromStr for ConcatRole {
    type Err = UnknownWord;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "partial" => Ok(ConcatRole::Partial),
            "final" => Ok(ConcatRole::Final),
            other => Err(UnknownWord(other.to_owned())),
        }
    }
}
