//! `storage.kind: s3` in the use cases (docs/SCALING.md): a block's written bytes are staged in S3
//! before its commit, so that an acknowledged byte is in S3 whichever node took it; a part whose
//! bytes are all received is built from the staging objects and uploaded; the finish uploads
//! what is still missing (the upload's parts, as `ListParts` tells them, are the truth after a
//! restart or on another node), completes the upload and hashes the object back; a task that ends
//! leaves nothing in S3 but its finished object.

use bytes::{Bytes, BytesMut};

use super::{blocking, UploadError, Uploads};
use crate::blob;
use crate::domain::{ByteRange, Md5Hex};
use crate::hash::Md5;
use crate::storage::{self, PartLayout, S3Error, S3Storage};
use crate::store::Task;

/// Bytes of one staging object, and of one ranged GET, at most: what a block in flight holds in
/// memory.
const PIECE: u64 = 8 << 20;

/// A finished and checked object, or the md5 it had instead of the task's.
pub(super) enum ObjectVerified {
    Stored { url: String, md5: Md5Hex },
    Md5Mismatch(Md5Hex),
}

impl From<S3Error> for UploadError {
    fn from(e: S3Error) -> Self {
        UploadError::Storage(e)
    }
}

impl Uploads {
    fn object_key(s3: &S3Storage, task: &Task) -> String {
        s3.object_key(&task.spec.store_path, task.spec.file_name.as_str())
    }

    /// Stages the bytes `writes` of a block, read back from this node's temp file: S3 has them
    /// before the commit that acknowledges them. Nothing to do for `local` storage.
    pub(super) async fn stage_written(&self, task: &Task, writes: &[ByteRange]) -> Result<(), UploadError> {
        let Some(s3) = self.storage.s3() else { return Ok(()) };
        for write in writes {
            for piece in pieces(*write) {
                let path = task.tmp_path();
                let bytes = blocking(move || blob::read_range(&path, piece)).await?;
                let bytes = bytes.map_err(|e| UploadError::disk("cannot read the block back", e))?;
                s3.stage(task.task_id, piece, Bytes::from(bytes)).await?;
            }
        }
        Ok(())
    }

    /// After a commit: uploads each part that the bytes `writes` completed. A failure is only
    /// logged: the bytes are staged, and the finish uploads every part that is missing.
    pub(super) async fn upload_filled_parts(&self, task: &Task, writes: &[ByteRange]) {
        let Some(s3) = self.storage.s3() else { return };
        let layout = PartLayout::for_size(task.file_bytes());
        let mut numbers: Vec<u64> = writes.iter().flat_map(|w| layout.parts_touching(*w)).collect();
        numbers.dedup();
        for number in numbers {
            let Some(range) = layout.range(number) else { continue };
            let filled = match self.store.received_within(task.task_id, range).await {
                Ok(received) => received.iter().any(|r| r.start() <= range.start() && range.end() <= r.end()),
                Err(e) => {
                    tracing::warn!(task_id = task.task_id, error = %e, "cannot read the received ranges");
                    return;
                }
            };
            if filled {
                if let Err(e) = self.upload_part(s3, task, layout, number).await {
                    let error = super::finish::causes(&e);
                    tracing::warn!(task_id = task.task_id, part = number, error, "cannot upload a part yet");
                }
            }
        }
    }

    /// Builds part `number` from the staging objects, uploads it, and deletes the staging objects
    /// that lie wholly inside it (those across its ends wait for the task's end). Its ETag.
    async fn upload_part(
        &self,
        s3: &S3Storage,
        task: &Task,
        layout: PartLayout,
        number: u64,
    ) -> Result<String, UploadError> {
        let key = Self::object_key(s3, task);
        let upload_id = s3.upload_id(task.task_id, &key).await?;
        let part_number = u16::try_from(number).map_err(|e| UploadError::Internal(e.into()))?;
        let Some(range) = layout.range(number) else {
            // The one empty part of an empty file.
            return Ok(s3.upload_part(&key, &upload_id, part_number, Bytes::new()).await?);
        };
        let staged = s3.staged(task.task_id).await?;
        let ranges: Vec<ByteRange> = staged.iter().map(|(_, range)| *range).collect();
        let pieces = storage::pieces_of(range, &ranges).ok_or_else(|| {
            UploadError::Internal(anyhow::anyhow!("the staged bytes of part {number} ({range}) are not all in S3"))
        })?;
        let mut part = BytesMut::with_capacity(usize::try_from(range.size()).unwrap_or(0));
        for (object, piece) in pieces {
            let Some((key, _)) = staged.iter().find(|(_, r)| *r == object) else { continue };
            let within = ByteRange::new(piece.start() - object.start(), piece.end() - object.start());
            let bytes = s3.get(key, within).await?;
            let bytes = bytes
                .filter(|b| b.len() as u64 == piece.size())
                .ok_or_else(|| UploadError::Internal(anyhow::anyhow!("the staging object {key} is gone or short")))?;
            part.extend_from_slice(&bytes);
        }
        let etag = s3.upload_part(&key, &upload_id, part_number, part.freeze()).await?;
        for (key, staged_range) in &staged {
            if range.start() <= staged_range.start() && staged_range.end() <= range.end() {
                s3.delete(key).await?;
            }
        }
        Ok(etag)
    }

    /// The finish with `s3` storage: uploads the parts `ListParts` does not show, completes the
    /// upload, and hashes the object back. Deletes the object if its md5 is not the task's.
    /// `Err` for a passing failure (S3 unreachable, say): the finish is tried again, and finds an
    /// upload already completed (`ListParts` says it is gone) to check again.
    pub(super) async fn verify_object(&self, s3: &S3Storage, task: &Task) -> Result<ObjectVerified, UploadError> {
        let key = Self::object_key(s3, task);
        let layout = PartLayout::for_size(task.file_bytes());
        let upload_id = s3.upload_id(task.task_id, &key).await?;
        if let Some(uploaded) = s3.list_parts(&key, &upload_id).await? {
            let mut etags = Vec::new();
            for number in 1..=layout.count() {
                let size = layout.range(number).map_or(0, |r| r.size());
                let listed = uploaded.iter().find(|p| u64::from(p.number) == number && p.size == size);
                etags.push(match listed {
                    Some(part) => part.etag.clone(),
                    None => self.upload_part(s3, task, layout, number).await?,
                });
            }
            s3.complete(&key, &upload_id, &etags).await?;
        }
        let mut md5 = Md5::new();
        for piece in ByteRange::whole(task.file_bytes()).map(pieces).into_iter().flatten() {
            let bytes = s3.get(&key, Some(piece)).await?;
            let bytes = bytes
                .filter(|b| b.len() as u64 == piece.size())
                .ok_or_else(|| UploadError::Internal(anyhow::anyhow!("the completed object {key} is gone or short")))?;
            md5 = blocking(move || {
                md5.update(&bytes);
                md5
            })
            .await?;
        }
        let md5 = md5.finish();
        if task.spec.file_md5.as_ref().is_some_and(|expected| *expected != md5) {
            s3.delete(&key).await?;
            return Ok(ObjectVerified::Md5Mismatch(md5));
        }
        Ok(ObjectVerified::Stored { url: s3.object_url(&key), md5 })
    }

    /// A task that ended: its upload aborted unless completed, its staging objects deleted. A
    /// failure is logged: what is left costs storage, not correctness (a bucket lifecycle rule
    /// for `.fupload/` and for incomplete uploads takes it away, docs/SCALING.md).
    pub(super) async fn discard_object_upload(&self, task: &Task) {
        let Some(s3) = self.storage.s3() else { return };
        if let Err(e) = s3.discard(task.task_id, &Self::object_key(s3, task)).await {
            tracing::warn!(task_id = task.task_id, error = %e, "cannot remove the task's upload and staging objects");
        }
    }
}

/// `range` cut into pieces of at most `PIECE` bytes.
fn pieces(range: ByteRange) -> impl Iterator<Item = ByteRange> {
    (range.start()..=range.end())
        .step_by(PIECE as usize)
        .filter_map(move |start| ByteRange::new(start, (start + PIECE - 1).min(range.end())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_cut_into_pieces_of_at_most_eight_mib() {
        let r = |start, end| ByteRange::new(start, end).unwrap();
        assert_eq!(pieces(r(3, 9)).collect::<Vec<_>>(), vec![r(3, 9)]);
        assert_eq!(pieces(r(0, PIECE)).collect::<Vec<_>>(), vec![r(0, PIECE - 1), r(PIECE, PIECE)]);
    }
}
