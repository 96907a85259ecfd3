//! Receiving a block: plan which bytes it may write, stream it to the temp file, commit its ranges.

use crate::store::{BlockOutcome, Task};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::claims::Claim;
use super::{blocking, RangeProblem, TaskRef, UploadError, Uploads};
use crate::blob::{self, BlockFile, StreamError, StreamedBlock};
use crate::config::Durability;
use crate::domain::{ByteRange, FieldError, Md5Hex, TaskStatus};
use crate::hash::Md5;

/// Why a block's body stopped early.
#[derive(Debug, thiserror::Error)]
enum BodyEnd {
    #[error("{0}")]
    Body(String),
    #[error("the block's claim on its bytes ran out")]
    ClaimLost,
}

/// A task found uploading, with the right key, before its block's body was read. Its status may
/// change while the body arrives (a pause, a cancel): the commit checks it again, and bytes written
/// for an ended task are never recorded.
pub(crate) struct BlockTarget {
    task: Task,
}

impl BlockTarget {
    pub(super) fn task(&self) -> &Task {
        &self.task
    }
}

/// A block that may be received: the task is uploading, the range is valid, and the parts it
/// may write are claimed.
pub(crate) struct BlockPlan {
    task: Task,
    range: ByteRange,
    claim: Claim,
    /// The claimed parts minus what was already received: the bytes this block writes.
    writes: Vec<ByteRange>,
}

impl BlockPlan {
    /// No other block in flight holds a part of this block's range.
    pub(super) fn holds_whole_range(&self) -> bool {
        self.claim.ranges() == [self.range]
    }
}

/// A block whose body has been streamed to disk, waiting for its md5 check and commit.
pub(crate) struct ReceivedBlock {
    plan: BlockPlan,
    streamed: StreamedBlock,
}

impl ReceivedBlock {
    pub(super) fn body_len(&self) -> u64 {
        self.streamed.body_len
    }

    pub(super) fn md5(&self) -> Md5Hex {
        self.streamed.digest()
    }

    /// The block cut to the bytes its body held before it ended early (a tus PATCH whose
    /// connection broke: the bytes that came are kept). `None` when it held none.
    pub(super) fn cut_to_body(mut self) -> Option<Self> {
        let start = self.plan.range.start();
        let range = ByteRange::new(start, start + self.streamed.body_len.checked_sub(1)?)?;
        self.plan.writes = self.plan.writes.iter().filter_map(|part| part.intersection(&range)).collect();
        self.plan.range = range;
        Some(self)
    }
}

/// The reply to an accepted block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockAccepted {
    pub range: ByteRange,
    /// Bytes of this block that were not received before; 0 means retCode "1".
    pub new_bytes: u64,
    pub received_size: u64,
    /// `[0, received_prefix)` is received without a gap (the tus offset).
    pub received_prefix: u64,
    pub task_status: TaskStatus,
    /// What is still missing, when the block brought nothing new or part of its range is not
    /// recorded (another block in flight had claimed it).
    pub expect_blocks: Option<Vec<ByteRange>>,
    /// Parts of this block's range that another block still in flight had claimed and that are
    /// not recorded: the client is asked to send them again after a delay (`Retry-After`).
    pub in_flight: Vec<ByteRange>,
}

impl Uploads {
    /// Refuses a block for an unknown task, with a wrong key, or for a task that takes no blocks,
    /// before any of its body is read: nobody without the key makes the server read, spool or
    /// buffer a body.
    pub(crate) async fn check_block_target(&self, task_ref: &TaskRef) -> Result<BlockTarget, UploadError> {
        let task = self.authorized_task(task_ref).await?;
        match task.status {
            TaskStatus::Upload => Ok(BlockTarget { task }),
            other => Err(UploadError::for_status(other)),
        }
    }

    /// Checks the range, and claims its unreceived bytes for this block.
    pub(crate) async fn plan_block(
        &self,
        target: &BlockTarget,
        start: u64,
        end: u64,
    ) -> Result<BlockPlan, UploadError> {
        let task = target.task.clone();
        let file_size = task.file_bytes();
        let range =
            ByteRange::new(start, end).ok_or(UploadError::BadRange(RangeProblem::StartAfterEnd { start, end }))?;
        if end >= file_size {
            return Err(UploadError::BadRange(RangeProblem::OutsideFile { start, end, size: file_size }));
        }
        if range.size() > self.settings.max_block_size {
            return Err(UploadError::TooLarge(format!(
                "the block of bytes {range} holds {} bytes, more than the server's maxBlockSize of {} bytes: send \
                 blocks of at most {} bytes",
                range.size(),
                self.settings.max_block_size,
                self.settings.max_block_size
            )));
        }
        // Claim first, then read what is received: a block that committed and released its
        // claim before this claim was made is visible to the read below. The task's row, read
        // before the claim, would not do: a block refused later would write over bytes received
        // in between (docs/RELIABILITY.md, section 9).
        let claim = self.claims.claim(task.task_id, range).await?;
        let received = self.store.received_within(task.task_id, range).await?;
        let writes: Vec<ByteRange> = claim.ranges().iter().flat_map(|part| part.minus(&received)).collect();
        Ok(BlockPlan { task, range, claim, writes })
    }

    /// The whole-file md5 up to the block, when the block writes all of its range and the task's
    /// prefix hasher stands there: the block is hashed on from it and never read back.
    fn whole_file_md5_before(&self, plan: &BlockPlan) -> Option<Md5> {
        let writes_all = plan.writes == [plan.range];
        writes_all.then(|| self.hashers.state_at(plan.task.task_id, plan.range.start())).flatten()
    }

    /// Streams the block's body into the temp file, writing only the planned parts. A refused
    /// block's claim is gone before the refusal is: the client may send the bytes again at once.
    pub(crate) async fn receive_block<S, E>(&self, plan: BlockPlan, body: S) -> Result<ReceivedBlock, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let let_go = plan.claim.let_go();
        let received = self.stream_block(plan, body).await;
        if let (Err(_), Some(let_go)) = (&received, let_go) {
            let_go.wait().await;
        }
        received
    }

    async fn stream_block<S, E>(&self, plan: BlockPlan, body: S) -> Result<ReceivedBlock, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let (task_id, generation) = (plan.task.task_id, plan.task.temp_generation);
        if self.storage.s3().is_some() {
            // With S3 the temp file is this node's scratch for the blocks it takes: made here if
            // another node created the task, or this node's tmpDir was emptied.
            let (path, size) = (plan.task.tmp_path(), plan.task.file_bytes());
            blocking(move || blob::create_temp(&path, size))
                .await?
                .map_err(|e| UploadError::disk("cannot make the temp file", e))?;
        }
        let target = BlockFile {
            path: plan.task.tmp_path(),
            range: plan.range,
            writes: plan.writes.clone(),
            file_len: plan.task.file_bytes(),
            fsync: self.settings.durability == Durability::Power,
            file_md5: self.whole_file_md5_before(&plan),
        };
        // A shared claim that stops holding stops the body, before another node may claim the
        // same bytes: nothing more of it is written.
        let claim_held = plan.claim.held();
        let held_while_streaming = claim_held.clone();
        let body = body.map(move |chunk| match &held_while_streaming {
            Some(held) if !held.holds() => Err(BodyEnd::ClaimLost),
            _ => chunk.map_err(|e| BodyEnd::Body(e.to_string())),
        });
        match blob::stream_into(target, body, plan).await {
            Ok((streamed, plan)) => Ok(ReceivedBlock { plan, streamed }),
            Err(_) if claim_held.is_some_and(|held| !held.holds()) => Err(self.claim_lost(task_id).await),
            Err(e @ (StreamError::TooLong(_) | StreamError::Body(_))) => {
                Err(UploadError::BadRange(RangeProblem::BodyLength(e.to_string())))
            }
            // A task that ended meanwhile (cancel, expiry) had its temp file removed: that is the
            // answer, not a disk error.
            Err(e @ (StreamError::Disk(_) | StreamError::TempFileLost { .. })) => {
                let task = self.store.task(task_id).await?.ok_or(UploadError::TaskNotFound(task_id))?;
                match (task.status, e) {
                    (TaskStatus::Upload, StreamError::TempFileLost { on_disk }) => {
                        // What this block saw on disk is of the file it was planned for: if the
                        // file was made anew since, the repair is not done again. With S3 the
                        // received bytes are staged there, not in this file: nothing to repair.
                        if self.storage.s3().is_none() {
                            self.repair_lost_temp(task_id, generation, on_disk).await?;
                        }
                        Err(UploadError::TempFileLost)
                    }
                    (TaskStatus::Upload, StreamError::Disk(e)) => Err(UploadError::disk("cannot write block", e)),
                    (status, _) => Err(UploadError::for_status(status)),
                }
            }
        }
    }

    /// Why a block whose shared claim stopped holding is refused: its task ended (which took its
    /// claims), or the claim ran out.
    async fn claim_lost(&self, task_id: i64) -> UploadError {
        match self.store.task(task_id).await {
            Ok(Some(task)) if task.status != TaskStatus::Upload => UploadError::for_status(task.status),
            Ok(Some(_)) => UploadError::ClaimLost,
            Ok(None) => UploadError::TaskNotFound(task_id),
            Err(e) => e.into(),
        }
    }

    /// Checks the body's length and md5, then commits the written ranges. If the block completed
    /// the file, waits a little for the finish so the reply can say `finish`.
    pub(crate) async fn commit_block(
        &self,
        block: ReceivedBlock,
        part_md5: Option<Md5Hex>,
    ) -> Result<BlockAccepted, UploadError> {
        if part_md5.is_none() && self.settings.check_tmp_md5 {
            return Err(FieldError::new("partMd5", "is required (checkTmpMd5 is on)").into());
        }
        self.commit_checked_block(block, part_md5).await
    }

    /// As `commit_block`, for a block whose content the caller has checked otherwise (a tus
    /// checksum) or that the server takes unchecked. The reply waits until the block's claim is
    /// gone, as `receive_block`'s does.
    pub(super) async fn commit_checked_block(
        &self,
        block: ReceivedBlock,
        part_md5: Option<Md5Hex>,
    ) -> Result<BlockAccepted, UploadError> {
        let let_go = block.plan.claim.let_go();
        let accepted = self.commit_received(block, part_md5).await;
        if let Some(let_go) = let_go {
            let_go.wait().await;
        }
        accepted
    }

    async fn commit_received(
        &self,
        block: ReceivedBlock,
        part_md5: Option<Md5Hex>,
    ) -> Result<BlockAccepted, UploadError> {
        let ReceivedBlock { plan, streamed } = block;
        if streamed.body_len != plan.range.size() {
            return Err(UploadError::BadRange(RangeProblem::BodyLength(format!(
                "the file part holds {} bytes, the range {} needs {}",
                streamed.body_len,
                plan.range,
                plan.range.size()
            ))));
        }
        if let Some(sent) = part_md5.filter(|sent| *sent != streamed.digest()) {
            return Err(UploadError::PartMd5Mismatch { range: plan.range, sent, computed: streamed.digest() });
        }
        let BlockPlan { mut task, range, claim, writes, .. } = plan;
        if claim.held().is_some_and(|held| !held.holds()) {
            return Err(self.claim_lost(task.task_id).await);
        }
        // An acknowledged byte is in the storage whichever node took it.
        self.stage_written(&task, &writes).await?;
        // The claim stays until the commit is known, even if this request is dropped meanwhile: a
        // write handed to the store commits whether anyone waits for it or not, and no other block
        // may claim and write these bytes before they show as received.
        let (store, task_id, generation) = (self.store.clone(), task.task_id, task.temp_generation);
        let committing = tokio::spawn(async move {
            let commit = store.commit_block(task_id, generation, &writes).await;
            (commit, claim, writes)
        });
        let (commit, claim, writes) = committing
            .await
            .map_err(|e| UploadError::Internal(anyhow::anyhow!("the block's commit did not end: {e}")))?;
        let commit = match commit? {
            BlockOutcome::Committed(commit) => commit,
            BlockOutcome::TempFileReplaced => return Err(UploadError::TempFileLost),
            BlockOutcome::NotUploading(status) => return Err(UploadError::for_status(status)),
            BlockOutcome::NoSuchTask => return Err(UploadError::TaskNotFound(task.task_id)),
        };
        // Parts of the range that other blocks in flight had claimed were not written by this one.
        let left_to_others = !range.minus(claim.ranges()).is_empty();
        drop(claim);
        let (task_id, file_size) = (task.task_id, task.file_bytes());
        if let Some(file_md5) = streamed.file_md5 {
            // Before `advance`: with the block's bytes hashed, the hasher has nothing to read back.
            self.hashers.adopt(task_id, range.start(), file_md5);
        }
        let mut task_status = commit.status;
        if task_status == TaskStatus::Upload {
            match self.storage.s3() {
                None => self.hashers.advance(task_id, commit.received_prefix),
                // The finish hashes the object itself; the parts this block filled go up now.
                Some(_) => self.upload_filled_parts(&task, &writes).await,
            }
        } else {
            // The finish hashes what is left itself, at once.
            task.status = TaskStatus::Verify;
            task_status = self.finish_and_wait(task).await;
        }
        // The reply never acknowledges a byte that is not committed: if another block's part of
        // this range is not recorded (yet, or ever: that block may fail), it lists what is missing.
        let in_flight = match left_to_others && commit.status == TaskStatus::Upload {
            true => range.minus(&self.store.received_within(task_id, range).await?),
            false => Vec::new(),
        };
        let unrecorded = !in_flight.is_empty();
        let expect_blocks = match commit.new_bytes == 0 || unrecorded {
            true => Some(self.store.expected_blocks(task_id, file_size).await?),
            false => None,
        };
        Ok(BlockAccepted {
            range,
            new_bytes: commit.new_bytes,
            received_size: commit.received_size,
            received_prefix: commit.received_prefix,
            task_status,
            expect_blocks,
            in_flight,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::service::test_support::{test_uploads, TestUploads};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// A service, `len` bytes of data, their task, and the task's block target, taken at once.
    async fn task_and_target(len: usize) -> (TestUploads, Vec<u8>, TaskRef, BlockTarget) {
        let t = test_uploads(|_| {}).await;
        let data = data(len);
        let task = t.create(&data).await;
        let target = t.uploads.check_block_target(&task).await.unwrap();
        (t, data, task, target)
    }

    #[tokio::test]
    async fn an_in_order_upload_is_hashed_while_it_arrives_and_never_read_back() {
        let t = test_uploads(|_| {}).await;
        let data = data(3 << 20);
        let task = t.create(&data).await;
        let mut last = None;
        for start in (0..data.len()).step_by(512 << 10) {
            last = Some(t.send(&task, &data, start, start + (512 << 10) - 1).await.unwrap());
        }
        assert_eq!(last.unwrap().task_status, TaskStatus::Finish);
        // Each block went on from the whole-file md5 where the one before it ended.
        assert_eq!(t.uploads.hashers.bytes_read(), 0);
    }

    #[tokio::test]
    async fn a_refused_block_leaves_the_whole_file_md5_where_it_was() {
        // The refused block hashed a copy of the whole-file md5 on over its corrupted bytes; the
        // copy goes with it, and the block sent again continues from the prefix as before.
        let t = test_uploads(|_| {}).await;
        let data = data(1 << 20);
        let (task, half) = (t.create(&data).await, 1 << 19);
        t.send(&task, &data, 0, half - 1).await.unwrap();
        let target = t.uploads.check_block_target(&task).await.unwrap();
        let plan = t.uploads.plan_block(&target, half as u64, data.len() as u64 - 1).await.unwrap();
        assert!(t.uploads.whole_file_md5_before(&plan).is_some(), "the block continues the received prefix");
        let corrupted: Vec<u8> = data[half..].iter().map(|b| !b).collect();
        let refused = t.stream_and_commit(plan, &corrupted, &data[half..]).await;
        assert!(matches!(refused, Err(UploadError::PartMd5Mismatch { .. })), "{refused:?}");
        let last = t.send(&task, &data, half, data.len() - 1).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Finish, "the whole-file md5 matched");
        assert_eq!(t.uploads.hashers.bytes_read(), 0);
    }

    #[tokio::test]
    async fn a_file_sent_in_one_block_is_never_read_back() {
        let t = test_uploads(|_| {}).await;
        let data = data(300_000);
        let task = t.create(&data).await;
        let only = t.send(&task, &data, 0, data.len() - 1).await.unwrap();
        assert_eq!(only.task_status, TaskStatus::Finish);
        assert_eq!(t.uploads.hashers.bytes_read(), 0);
    }

    #[tokio::test]
    async fn a_first_block_that_others_overlapped_is_read_back_not_adopted() {
        // The block [0, 199_999] writes only [0, 99_999]: the rest was received before, so its
        // md5 state is not that of the file's bytes as written, and the finish reads the file.
        let t = test_uploads(|_| {}).await;
        let mut data = data(300_000);
        let task = t.create(&data).await;
        t.send(&task, &data, 100_000, data.len() - 1).await.unwrap();
        data[150_000] ^= 0xff; // what the second block carries differs where it overlaps
        let last = t.send(&task, &data, 0, 199_999).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Finish);
        assert_eq!(t.uploads.hashers.bytes_read(), 300_000);
    }

    #[tokio::test]
    async fn a_failed_block_planned_from_an_old_task_row_leaves_bytes_received_since_alone() {
        // A block's task row is read before it claims its range; another block may commit in
        // between. The crash test once finished a file whose first bytes a corrupted block had
        // overwritten after they were received (the plan trusted the row's `received_bytes` of 0).
        let (t, data, task, target) = task_and_target(200_000).await;
        t.send(&task, &data, 0, 99_999).await.unwrap();
        let plan = t.uploads.plan_block(&target, 0, 199_999).await.unwrap();
        assert_eq!(plan.writes, [ByteRange::new(100_000, 199_999).unwrap()]);
        let corrupted: Vec<u8> = data.iter().map(|b| !b).collect();
        let refused = t.stream_and_commit(plan, &corrupted, &data).await;
        assert!(matches!(refused, Err(UploadError::PartMd5Mismatch { .. })), "{refused:?}");
        let last = t.send(&task, &data, 100_000, 199_999).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Finish);
        let placed = t.uploads.store().task(task.task_id).await.unwrap().unwrap().final_path.unwrap();
        assert!(std::fs::read(placed).unwrap() == data, "the finished file holds the received bytes");
    }

    #[tokio::test]
    async fn a_block_dropped_while_its_commit_waits_keeps_its_bytes_claimed_until_it_commits() {
        // The commit, once handed to the writer, lands whether the request waits or not. Had the
        // claim gone with the request, another block could claim the bytes, see them unreceived,
        // and write over them (with corrupted bytes, say) before the first commit showed.
        use futures_util::FutureExt;
        let (t, data, task, target) = task_and_target(100).await;
        let plan = t.uploads.plan_block(&target, 0, 49).await.unwrap();
        let body = futures_util::stream::iter([Ok::<_, String>(bytes::Bytes::copy_from_slice(&data[..50]))]);
        let received = t.uploads.receive_block(plan, body).await.unwrap();
        let md5 = crate::domain::Md5Hex::of_digest(&<md5::Md5 as md5::Digest>::digest(&data[..50]));
        let release = crate::store::test_support::hold_writer(t.uploads.store()).await;
        assert!(t.uploads.commit_block(received, Some(md5)).now_or_never().is_none(), "waits for the writer");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let again = t.uploads.plan_block(&target, 0, 49).await.unwrap();
        assert!(again.writes.is_empty(), "the dropped block's bytes were claimed again: {:?}", again.writes);
        drop(again);
        release.send(()).unwrap();
        let range = ByteRange::new(0, 49).unwrap();
        for _ in 0..500 {
            if t.uploads.store().received_within(task.task_id, range).await.unwrap() == [range] {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("the dropped block's commit never landed");
    }

    #[tokio::test]
    async fn a_refused_blocks_claim_is_gone_from_the_database_before_its_refusal_is_out() {
        // A refusal tells the client to send the bytes again, and it may at once. A shared claim
        // was let go only after the refusal, so the block sent again could find its bytes still
        // claimed and be told to wait (the security tests did, now and then, on PostgreSQL).
        let Some((t, _database)) = super::super::test_support::test_uploads_on_postgres().await else { return };
        let shared = t.uploads.store().shared().expect("a PostgreSQL store").clone();
        let data = data(100_000);
        let task = t.create(&data).await;
        let target = t.uploads.check_block_target(&task).await.unwrap();

        let plan = t.uploads.plan_block(&target, 0, 99_999).await.unwrap();
        let cut = futures_util::stream::iter([Ok(bytes::Bytes::copy_from_slice(&data[..10])), Err("cut off")]);
        let refused = t.uploads.receive_block(plan, cut).await;
        assert!(matches!(refused, Err(UploadError::BadRange(_))), "{:?}", refused.err());
        assert_eq!(shared.claims_recorded().await.unwrap(), 0, "the claim outlived a refusal while streaming");

        let plan = t.uploads.plan_block(&target, 0, 99_999).await.unwrap();
        let corrupted: Vec<u8> = data.iter().map(|b| !b).collect();
        let refused = t.stream_and_commit(plan, &corrupted, &data).await;
        assert!(matches!(refused, Err(UploadError::PartMd5Mismatch { .. })), "{refused:?}");
        assert_eq!(shared.claims_recorded().await.unwrap(), 0, "the claim outlived a refusal at the commit");

        let last = t.send(&task, &data, 0, 99_999).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Finish);
        assert_eq!(shared.claims_recorded().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_task_paused_while_a_block_arrives_refuses_it_at_the_commit() {
        let (t, data, task, target) = task_and_target(100_000).await;
        t.uploads.change_state(&task, crate::service::RequestedState::Pause).await.unwrap();
        let plan = t.uploads.plan_block(&target, 0, 99_999).await.unwrap();
        let refused = t.stream_and_commit(plan, &data, &data).await;
        assert!(matches!(refused, Err(UploadError::Paused)), "{refused:?}");
        let stored = t.uploads.store().task(task.task_id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.received_bytes), (TaskStatus::Pause, 0));
    }

    #[tokio::test]
    async fn out_of_order_blocks_are_hashed_once_the_gap_before_them_is_filled() {
        let t = test_uploads(|_| {}).await;
        let data = data(1 << 20);
        let task = t.create(&data).await;
        t.send(&task, &data, 500_000, data.len() - 1).await.unwrap();
        t.send(&task, &data, 0, 99).await.unwrap();
        let last = t.send(&task, &data, 100, 499_999).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Finish);
        // The two blocks that continued the prefix were hashed as they arrived (the second one
        // from byte 100, out of step with its own md5); the one that came before the gap is read
        // back once.
        assert_eq!(t.uploads.hashers.bytes_read(), data.len() as u64 - 500_000);
    }

    #[tokio::test]
    async fn after_a_restart_the_received_prefix_is_hashed_again_once() {
        let t = test_uploads(|_| {}).await;
        let data = data(2 << 20);
        let task = t.create(&data).await;
        t.send(&task, &data, 0, (1 << 20) - 1).await.unwrap();
        t.uploads.store().close().await;
        let again = crate::service::test_support::restart(t).await;
        // The first MiB is read again once (the md5 state was in memory), in the background.
        let rehashed = async {
            while again.uploads.hashers.state_at(task.task_id, 1 << 20).is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), rehashed).await.unwrap();
        let last = again.send(&task, &data, 1 << 20, data.len() - 1).await.unwrap();
        assert_eq!(last.task_status, TaskStatus::Finish);
        // The second MiB went on from the state hashed again, and was not read.
        assert_eq!(again.uploads.hashers.bytes_read(), 1 << 20);
    }
}
