//! One block as a client sends it: its fields in any order, received as one use case. The HTTP
//! layer hands each field over as it parses it; the file part streams straight into the temp file
//! when its range is known, and is spooled in tmpDir until the range comes otherwise. `finish`
//! then checks the md5 and commits.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::Stream;

use super::block::{BlockAccepted, BlockTarget, ReceivedBlock};
use super::{blocking, TaskRef, UploadError, Uploads};
use crate::blob::{self, StreamError};
use crate::domain::{ByteRange, FieldError, Md5Hex};

/// A block being received: refused before any of its body is read when its task is unknown, the
/// key wrong, or the task takes no blocks.
pub struct IncomingBlock<'u> {
    uploads: &'u Uploads,
    target: BlockTarget,
    start_byte: Option<u64>,
    end_byte: Option<u64>,
    part_md5: Option<Md5Hex>,
    body: Option<Body>,
}

enum Body {
    Received(Box<ReceivedBlock>),
    Spooled(Spool),
}

impl Uploads {
    pub async fn incoming_block(&self, task_ref: &TaskRef) -> Result<IncomingBlock<'_>, UploadError> {
        let target = self.check_block_target(task_ref).await?;
        Ok(IncomingBlock { uploads: self, target, start_byte: None, end_byte: None, part_md5: None, body: None })
    }
}

impl IncomingBlock<'_> {
    pub fn start_byte(&mut self, start: u64) {
        self.start_byte = Some(start);
    }

    pub fn end_byte(&mut self, end: u64) {
        self.end_byte = Some(end);
    }

    pub fn part_md5(&mut self, md5: Md5Hex) {
        self.part_md5 = Some(md5);
    }

    /// The file part: streamed into the temp file if the range came before it, else spooled.
    pub async fn file<S, E>(&mut self, body: S) -> Result<(), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        if self.body.is_some() {
            return Err(FieldError::new("file", "is given twice").into());
        }
        let body = match (self.start_byte, self.end_byte) {
            (Some(start), Some(end)) => {
                let plan = self.uploads.plan_block(&self.target, start, end).await?;
                Body::Received(Box::new(self.uploads.receive_block(plan, body).await?))
            }
            _ => Body::Spooled(Spool::fill(self.uploads, body).await?),
        };
        self.body = Some(body);
        Ok(())
    }

    /// Once every field is in: a spooled body is streamed into the temp file now that its range
    /// is known, then the block's length and md5 are checked and its ranges committed.
    pub async fn finish(self) -> Result<BlockAccepted, UploadError> {
        let received = match self.body {
            None => return Err(FieldError::new("file", "is required").into()),
            Some(Body::Received(received)) => *received,
            Some(Body::Spooled(spool)) => {
                let start = self.start_byte.ok_or_else(|| FieldError::new("startByte", "is required"))?;
                let end = self.end_byte.ok_or_else(|| FieldError::new("endByte", "is required"))?;
                let plan = self.uploads.plan_block(&self.target, start, end).await?;
                let stream = blob::read_stream(&spool.path).await.map_err(UploadError::Disk)?;
                self.uploads.receive_block(plan, stream).await?
            }
        };
        self.uploads.commit_block(received, self.part_md5).await
    }
}

/// A file part that came before its range, held in tmpDir; removed on drop.
struct Spool {
    path: PathBuf,
}

impl Spool {
    async fn fill<S, E>(uploads: &Uploads, body: S) -> Result<Self, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let spool = Spool { path: blob::spool_path(&uploads.settings().tmp_dir).map_err(UploadError::Disk)? };
        let limit = uploads.settings().max_block_size;
        let whole = ByteRange::new(0, limit.saturating_sub(1)).ok_or_else(|| FieldError::new("file", "is empty"))?;
        let path = spool.path.clone();
        blocking(move || blob::create_temp(&path, 0)).await?.map_err(UploadError::Disk)?;
        match blob::stream_into(blob::BlockFile::whole(spool.path.clone(), whole), body, ()).await {
            Ok(_) => Ok(spool),
            Err(StreamError::TooLong(limit)) => Err(UploadError::TooLarge(format!(
                "the block is larger than the server's maxBlockSize of {limit} bytes: send blocks of at most \
                     {limit} bytes"
            ))),
            Err(StreamError::Body(e)) => Err(FieldError::new("file", format!("cannot be read: {e}")).into()),
            Err(StreamError::Disk(e)) => Err(UploadError::Disk(e)),
            Err(lost @ StreamError::TempFileLost { .. }) => {
                Err(UploadError::Disk(std::io::Error::new(std::io::ErrorKind::NotFound, lost.to_string())))
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = blob::remove_if_exists(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a spool file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskStatus;
    use crate::service::test_support::test_uploads;

    fn body(data: &[u8]) -> impl Stream<Item = Result<Bytes, String>> {
        futures_util::stream::iter([Ok(Bytes::copy_from_slice(data))])
    }

    #[tokio::test]
    async fn the_fields_may_come_in_any_order() {
        let t = test_uploads(|_| {}).await;
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let task = t.create(&data).await;
        let md5 = |part: &[u8]| Md5Hex::of_digest(&<md5::Md5 as md5::Digest>::digest(part));
        // The range first: streamed straight into the temp file.
        let mut first = t.uploads.incoming_block(&task).await.unwrap();
        first.start_byte(0);
        first.end_byte(9_999);
        first.file(body(&data[..10_000])).await.unwrap();
        first.part_md5(md5(&data[..10_000]));
        assert_eq!(first.finish().await.unwrap().task_status, TaskStatus::Upload);
        // The file part first: spooled until its range is known, and the spool removed after.
        let mut second = t.uploads.incoming_block(&task).await.unwrap();
        second.part_md5(md5(&data[10_000..]));
        second.file(body(&data[10_000..])).await.unwrap();
        assert!(second.file(body(b"again")).await.is_err(), "one file part");
        second.end_byte(19_999);
        second.start_byte(10_000);
        assert_eq!(second.finish().await.unwrap().task_status, TaskStatus::Finish);
        let spools = std::fs::read_dir(&t.uploads.settings().tmp_dir).unwrap();
        assert!(spools.into_iter().all(|entry| !blob::is_spool(&entry.unwrap().path())));
    }

    #[tokio::test]
    async fn a_block_without_its_file_part_or_range_is_refused() {
        let t = test_uploads(|_| {}).await;
        let task = t.create(b"abc").await;
        let no_file = t.uploads.incoming_block(&task).await.unwrap().finish().await;
        assert!(matches!(no_file, Err(UploadError::InvalidField(e)) if e.to_string().starts_with("file")));
        let mut no_range = t.uploads.incoming_block(&task).await.unwrap();
        no_range.file(body(b"abc")).await.unwrap();
        let refused = no_range.finish().await;
        assert!(matches!(refused, Err(UploadError::InvalidField(e)) if e.to_string().starts_with("startByte")));
    }
}
