//! The upload: ask which ranges the server expects, send them in parallel blocks, repeat until
//! nothing is missing, then wait for the server to verify and store the file.

use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use super::api::{BlockOutcome, Client};
use super::error::ClientError;
use super::file::LocalFile;
use super::plan;
use super::task::TaskUrls;
use crate::domain::{ByteRange, TaskStatus};

/// How often `blocksUrl` is asked while the server verifies the file.
const VERIFY_POLL: Duration = Duration::from_millis(250);

/// How long one block is sent again and again while the server says another block in flight
/// holds its bytes. A stalled block is given up after the server's `clientBodyTimeout` (60 s by
/// default); only a server without that limit holds them longer.
const MOST_IN_FLIGHT_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    /// Bytes per block (the server refuses blocks over its `maxBlockSize`, 64 MiB by default).
    pub block_size: u64,
    /// Blocks in flight at once.
    pub parallel: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self { block_size: 8 << 20, parallel: 4 }
    }
}

/// A finished upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub task: TaskUrls,
    pub file_size: u64,
    /// Bytes the server had before this upload sent any (from an earlier, interrupted run).
    pub already_received: u64,
    /// Bytes of the file this upload sent, tries that failed and were repeated included.
    pub sent_bytes: u64,
    /// Finished by an instant upload: the server held the file, and took a proof instead.
    pub instant: bool,
}

/// Uploads what `task` is missing of `file` and waits until the task is `finish`.
///
/// Dropping the future stops the upload: blocks in flight are abandoned (the server keeps none
/// of their bytes), everything acknowledged stays, and running this again sends only the rest.
pub async fn upload(
    client: &Client,
    task: &TaskUrls,
    file: &LocalFile,
    options: &UploadOptions,
) -> Result<Uploaded, ClientError> {
    if options.block_size == 0 || options.parallel == 0 {
        return Err(ClientError::Usage("the block size and the parallel blocks must be at least 1".into()));
    }
    let sent_before = client.sent_bytes();
    // The server offered an instant upload: a right proof finishes the task without the bytes.
    let instant = task.challenge.is_some() && client.answer_challenge(task, file).await?;
    let mut already_received = None;
    let mut expected_before_round = None;
    loop {
        let info = client.blocks_info(task).await?;
        already_received.get_or_insert(info.received_size);
        match info.status {
            TaskStatus::Upload if !info.expect_blocks.is_empty() => {
                // The same gaps after a round that sent them: the server takes the blocks but
                // records none. (Fewer bytes received than before is not that: the server lost
                // some, its tmpDir cleaned say, and asks for them again.)
                if expected_before_round.as_ref() == Some(&info.expect_blocks) {
                    return Err(ClientError::NoProgress { task_id: task.task_id });
                }
                expected_before_round = Some(info.expect_blocks.clone());
                client.progress().uploading(task, info.received_size, info.total_size);
                let blocks = plan::blocks(&info.expect_blocks, options.block_size);
                send_blocks(client, task, file, blocks, options.parallel).await?;
            }
            // All bytes are in: the server is verifying the md5 and moving the file.
            TaskStatus::Upload | TaskStatus::Verify => {
                client.progress().verifying();
                actix_web::rt::time::sleep(VERIFY_POLL).await;
            }
            TaskStatus::Finish => {
                return Ok(Uploaded {
                    task: task.clone(),
                    file_size: info.total_size,
                    already_received: already_received.unwrap_or(info.received_size),
                    sent_bytes: client.sent_bytes() - sent_before,
                    instant,
                })
            }
            TaskStatus::Pause => {
                return Err(ClientError::Paused { task_id: task.task_id, state_url: task.state_url.clone() })
            }
            status => return Err(ClientError::TaskEnded { task_id: task.task_id, status }),
        }
    }
}

/// Sends `blocks`, `parallel` at a time. Returns early, without error, when the task stops
/// taking blocks: the caller asks `blocksUrl` why.
async fn send_blocks(
    client: &Client,
    task: &TaskUrls,
    file: &LocalFile,
    blocks: Vec<ByteRange>,
    parallel: usize,
) -> Result<(), ClientError> {
    let mut waiting = blocks.into_iter().map(|block| (block, Duration::ZERO));
    let mut in_flight = FuturesUnordered::new();
    // A block whose bytes another block in flight holds is sent again after the delay the server
    // asked for, in its place among the blocks in flight.
    let send = |block: ByteRange, delay: Duration, waited: Duration| async move {
        if !delay.is_zero() {
            actix_web::rt::time::sleep(delay).await;
        }
        (block, waited + delay, client.send_block(task, file, block).await)
    };
    loop {
        while in_flight.len() < parallel {
            match waiting.next() {
                Some((block, waited)) => in_flight.push(send(block, Duration::ZERO, waited)),
                None => break,
            }
        }
        match in_flight.next().await {
            None | Some((_, _, Ok(BlockOutcome::TaskEnded))) => return Ok(()),
            Some((_, _, Ok(BlockOutcome::Accepted))) => {}
            Some((block, waited, Ok(BlockOutcome::SendAgainAfter(delay)))) => {
                if waited >= MOST_IN_FLIGHT_WAIT {
                    return Err(ClientError::NoProgress { task_id: task.task_id });
                }
                in_flight.push(send(block, delay.max(Duration::from_millis(100)), waited));
            }
            Some((_, _, Err(error @ ClientError::GaveUp { .. }))) => return Err(explain(client, task, error).await),
            Some((_, _, Err(error))) => return Err(error),
        }
    }
}

/// A block that kept failing may have met a task that was paused or ended meanwhile (a server
/// may drop the connection instead of reading a refused block): say that if so.
async fn explain(client: &Client, task: &TaskUrls, error: ClientError) -> ClientError {
    match client.blocks_info(task).await.map(|info| info.status) {
        Ok(TaskStatus::Pause) => ClientError::Paused { task_id: task.task_id, state_url: task.state_url.clone() },
        Ok(status) if status.has_ended() && status != TaskStatus::Verify && status != TaskStatus::Finish => {
            ClientError::TaskEnded { task_id: task.task_id, status }
        }
        _ => error,
    }
}
