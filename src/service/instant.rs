//! Instant upload with proof of possession (docs/API.md, section 8; docs/SECURITY.md, "Instant
//! upload"). A create with `"instant": true` whose file (fileMd5, fileSize) a finished task of the
//! same business server placed, still unchanged, gets a challenge: byte ranges of the file and a
//! nonce. Only the right answer, in time, finishes the task, by a link to that file (a copy across
//! file systems); anything else leaves the task taking blocks as usual.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use subtle::ConstantTimeEq;

use super::{blocking, UploadError, Uploads};
use crate::blob;
use crate::config::Durability;
use crate::domain::{ByteRange, CallbackCode, Md5Hex, TaskStatus};
use crate::hash::Md5;
use crate::store::{FinishedFile, NewChallenge, PlacedFile, StatusChange, Task, TaskEnding};

/// A challenge as the create reply offers it.
#[derive(Debug, Clone)]
pub struct OfferedChallenge {
    /// 32 hex digits.
    pub nonce: String,
    /// In the order their bytes are hashed.
    pub ranges: Vec<ByteRange>,
    /// Seconds the answer may take.
    pub expires_in: u64,
    pub answers_left: u64,
}

/// What identifies the file at `path` (not following a symlink there).
pub(super) fn identify(path: &Path) -> io::Result<PlacedFile> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{} is not a regular file", path.display())));
    }
    Ok(identity_of(&meta))
}

fn identity_of(meta: &std::fs::Metadata) -> PlacedFile {
    PlacedFile {
        size: meta.len(),
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
        inode: meta.ino(),
        device: meta.dev(),
    }
}

/// Whether the finished file is still at its path, as its finish recorded it.
fn unchanged(file: &FinishedFile) -> bool {
    identify(Path::new(&file.final_path)).is_ok_and(|now| now == file.placed)
}

/// The proof for `nonce` and `ranges` of the file: md5 of the nonce's 32 ASCII hex digits, then
/// the bytes of each range in order. `None` when the file is not, or stops being, the one
/// recorded.
pub fn proof(file: &FinishedFile, nonce: &str, ranges: &[ByteRange]) -> io::Result<Option<Md5Hex>> {
    let opened = File::open(&file.final_path)?;
    if identity_of(&opened.metadata()?) != file.placed || !unchanged(file) {
        return Ok(None);
    }
    let mut md5 = Md5::new();
    md5.update(nonce.as_bytes());
    let mut buffer = Vec::new();
    for range in ranges {
        buffer.resize(usize::try_from(range.size()).map_err(io::Error::other)?, 0);
        opened.read_exact_at(&mut buffer, range.start())?;
        md5.update(&buffer);
    }
    // Written to meanwhile: the bytes read may not be the verified file's.
    if identity_of(&opened.metadata()?) != file.placed {
        return Ok(None);
    }
    Ok(Some(md5.finish()))
}

/// `count` ranges of `len` bytes (the whole file if it is smaller) at random offsets of a file
/// of `size` bytes (at least 1).
fn random_ranges(size: u64, count: u64, len: u64) -> io::Result<Vec<ByteRange>> {
    let len = len.min(size).max(1);
    let starts = size - len + 1;
    (0..count)
        .map(|_| {
            let mut bits = [0u8; 8];
            getrandom::getrandom(&mut bits).map_err(io::Error::other)?;
            let start = u64::from_le_bytes(bits) % starts;
            ByteRange::new(start, start + len - 1).ok_or_else(|| io::Error::other("empty range"))
        })
        .collect()
}

fn nonce() -> io::Result<String> {
    let mut bits = [0u8; 16];
    getrandom::getrandom(&mut bits).map_err(io::Error::other)?;
    Ok(hex::encode(bits))
}

fn refused(why: impl Into<String>) -> UploadError {
    UploadError::InstantRefused(why.into())
}

impl Uploads {
    /// The challenge for a task just created (or found again) with `"instant": true`, if a
    /// finished file of its business server has its content and is unchanged; `None` otherwise,
    /// and then the task simply takes blocks.
    pub(super) async fn offer_challenge(&self, task: &Task) -> Result<Option<OfferedChallenge>, UploadError> {
        let size = task.file_bytes();
        if task.status != TaskStatus::Upload || size == 0 {
            return Ok(None);
        }
        let spec = &task.spec;
        let Some(file_md5) = &spec.file_md5 else { return Ok(None) };
        let candidates = self.store.finished_files_like(&spec.business_server, file_md5.as_str(), size).await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let Some(source) = blocking(move || candidates.into_iter().find(unchanged)).await? else {
            return Ok(None);
        };
        let instant = &self.settings.instant;
        let randomness = |e: io::Error| UploadError::Internal(anyhow::anyhow!("no randomness for a challenge: {e}"));
        let ranges = random_ranges(size, instant.ranges, instant.range_bytes).map_err(randomness)?;
        let challenge = NewChallenge {
            source_task_id: source.task_id,
            nonce: nonce().map_err(randomness)?,
            ranges,
            expires_at: SystemTime::now() + Duration::from_secs(instant.challenge_timeout),
        };
        let Some(answers) = self.store.put_challenge(task.task_id, &challenge, instant.max_answers).await? else {
            return Ok(None); // its answers are used up
        };
        Ok(Some(OfferedChallenge {
            nonce: challenge.nonce,
            ranges: challenge.ranges,
            expires_in: instant.challenge_timeout,
            answers_left: instant.max_answers.saturating_sub(answers),
        }))
    }

    /// Checks an answer (`proof`, hex md5) to the task's challenge. The right one in time
    /// finishes the task by a link to the finished file, and returns `finish`; a refusal leaves
    /// the task as it is, taking blocks.
    pub async fn answer_challenge(&self, task_ref: &super::TaskRef, answer: &str) -> Result<TaskStatus, UploadError> {
        let task = self.authorized_task(task_ref).await?;
        if task.status != TaskStatus::Upload {
            return Err(UploadError::for_status(task.status));
        }
        let answer = Md5Hex::parse("proof", answer)?;
        let challenge = self
            .store
            .count_answer(task.task_id)
            .await?
            .ok_or_else(|| refused("no challenge was offered to this task (its create had no \"instant\": true, or no finished file matched): upload the bytes"))?;
        let max = self.settings.instant.max_answers;
        if challenge.answers > max {
            return Err(refused(format!("this task has used its {max} answers: upload the bytes")));
        }
        if challenge.expired {
            return Err(refused(format!(
                "the challenge expired ({} s after the create): upload the bytes, or create the task again for a new one",
                self.settings.instant.challenge_timeout
            )));
        }
        let gone = || refused("the file the challenge asked about is no longer stored as it was: upload the bytes");
        let source = self.store.finished_file(challenge.source_task_id).await?.ok_or_else(gone)?;
        let (checked, nonce, ranges) = (source.clone(), challenge.nonce.clone(), challenge.ranges.clone());
        let expected = match blocking(move || proof(&checked, &nonce, &ranges)).await? {
            Ok(Some(expected)) => expected,
            Ok(None) => return Err(gone()),
            Err(e) => {
                tracing::warn!(task_id = task.task_id, source = source.task_id, error = %e, "cannot read the file of an instant upload");
                return Err(gone());
            }
        };
        if !bool::from(expected.as_str().as_bytes().ct_eq(answer.as_str().as_bytes())) {
            return Err(UploadError::ProofMismatch { answers_left: max - challenge.answers });
        }
        self.finish_instantly(&task, &source).await
    }

    /// Links (across file systems: copies) the finished file into the task's directory and ends
    /// the task as `finish` with its callback. The original is never moved or changed.
    async fn finish_instantly(&self, task: &Task, source: &FinishedFile) -> Result<TaskStatus, UploadError> {
        let started = std::time::Instant::now();
        let (from, dir, name) = (source.clone(), PathBuf::from(&task.spec.store_dir), task.spec.file_name.clone());
        let root = self.settings.store_root().map(Path::to_path_buf);
        let (task_id, fsync) = (task.task_id, self.settings.durability == Durability::Power);
        let placed = blocking(move || -> io::Result<Option<(PathBuf, PlacedFile)>> {
            let original = Path::new(&from.final_path);
            // Checked again right before the link: `place` links the name as it finds it.
            if identify(original)? != from.placed {
                return Ok(None);
            }
            let path = blob::place(original, root.as_deref(), &dir, name.as_str(), task_id, fsync)?;
            let placed = identify(&path)?;
            let linked = placed.inode == from.placed.inode && placed.device == from.placed.device;
            // A copy must be of the file as it was, and the original must still be unchanged.
            let whole = linked || (placed.size == from.placed.size && identify(original)? == from.placed);
            if !whole {
                if path != original {
                    blob::remove_if_exists(&path)?;
                }
                return Ok(None);
            }
            Ok(Some((path, placed)))
        })
        .await?;
        let (path, placed) = match placed {
            Ok(Some(placed)) => placed,
            Ok(None) => {
                self.remove_partial(task).await;
                return Err(refused("the file the challenge asked about changed meanwhile: upload the bytes"));
            }
            Err(e) => {
                self.remove_partial(task).await;
                return Err(UploadError::StoreDir(e));
            }
        };
        let ending = TaskEnding {
            status: TaskStatus::Finish,
            final_path: Some(path.to_string_lossy().into_owned()),
            error: None,
            idle_for: None,
            placed: Some(placed),
            instant_from: Some(source.task_id),
            computed_md5: None,
        };
        match self.end_task_as(task, &[TaskStatus::Upload], CallbackCode::Finished, ending).await? {
            StatusChange::Made => {
                let finish_ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(task_id, from_task = source.task_id, finish_ms, "task finished by an instant upload");
                let uploads = self.clone();
                let task = task.clone();
                tokio::spawn(async move {
                    uploads.remove_temp(&task).await;
                    uploads.remove_partial(&task).await;
                });
                Ok(TaskStatus::Finish)
            }
            refusal => {
                // Paused, cancelled or completed by its blocks meanwhile: the link is not the task's.
                let original = PathBuf::from(&source.final_path);
                if path != original {
                    let _ = blocking(move || {
                        if identify(&path).is_ok_and(|now| now == placed) {
                            let _ = blob::remove_if_exists(&path);
                        }
                    })
                    .await;
                }
                self.remove_partial(task).await;
                Err(UploadError::for_change(task.task_id, refusal).unwrap_or(UploadError::TaskNotFound(task.task_id)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_lie_inside_the_file_and_small_files_are_asked_whole() {
        for _ in 0..100 {
            for range in random_ranges(10_000, 4, 4096).unwrap() {
                assert_eq!(range.size(), 4096);
                assert!(range.end() < 10_000);
            }
        }
        assert_eq!(random_ranges(10, 3, 4096).unwrap(), vec![ByteRange::new(0, 9).unwrap(); 3]);
        assert_eq!(random_ranges(1, 1, 4096).unwrap(), vec![ByteRange::new(0, 0).unwrap()]);
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
