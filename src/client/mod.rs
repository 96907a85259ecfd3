//! The fupload client: creates (or finds again) a task, asks which byte ranges the server still
//! expects, and sends them in parallel blocks read from disk, retrying network errors and 5xx.
//!
//! Everything here runs on one thread (awc's client is not `Send`): drive it from an actix/tokio
//! current-thread runtime, e.g. `actix_web::rt::System::new().block_on(…)`. Concurrency comes
//! from futures, file reads run on the blocking thread pool.
//!
//! ```no_run
//! # async fn example() -> Result<(), fupload::client::ClientError> {
//! use std::rc::Rc;
//! use fupload::client::{upload, Client, ClientOptions, LocalFile, Silent, TaskCreator, UploadOptions};
//!
//! let client = Client::new(ClientOptions::default(), Rc::new(Silent));
//! let file = LocalFile::open("movie.mp4".as_ref(), None, &Silent).await?;
//! let creator = TaskCreator::BusinessServer {
//!     create_url: "http://127.0.0.1:8090/api/business/new/task".into(),
//!     user_id: "123".into(),
//! };
//! let task = client.create_task(&creator, &file).await?;
//! let uploaded = upload(&client, &task, &file, &UploadOptions::default()).await?;
//! println!("task {} finished, {} bytes sent", uploaded.task.task_id, uploaded.sent_bytes);
//! # Ok(()) }
//! ```

mod api;
mod error;
mod file;
mod plan;
mod progress;
mod retry;
mod task;
mod upload;

pub use api::{Client, ClientOptions, StateChanged, TlsRoots};
pub use error::ClientError;
pub use file::LocalFile;
pub use plan::blocks;
pub use progress::{DisplayMode, Progress, Reporter, Silent};
pub use retry::RetryPolicy;
pub use task::{BlocksInfo, Challenge, ChallengeRange, TaskCreator, TaskUrls, WantedState};
pub use upload::{upload, UploadOptions, Uploaded};

/// Upload grants, made by a business server for a client that creates its own upload (Uppy, tuspy,
/// URLSession): `GrantClaims::new(…)`, set `store_path` and the rest, then `sign(token)`. The grant
/// goes in `Authorization: Bearer <grant>` of the tus creation (docs/API.md, section 9.3).
pub use crate::domain::grant::GrantClaims;
