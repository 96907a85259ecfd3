//! Pure upload logic: no SQL, no HTTP, no file I/O.

pub mod byte_range;
pub mod checksum;
pub mod fields;
pub mod grant;
pub mod protocol;
pub mod store_path;
pub mod task_status;

pub use byte_range::{BlockMerge, ByteRange};
pub use fields::{FieldError, FileName, FileSize, Md5Hex, UploadKey};
pub use protocol::{ConcatRole, Protocol};
pub use task_status::{CallbackCode, TaskStatus};
