//! The file being uploaded: opened once, hashed and read in pieces on the blocking thread pool,
//! never held whole in memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::error::ClientError;
use super::progress::Progress;
use crate::domain::{ByteRange, Md5Hex};
use crate::hash::Md5;

/// Bytes read and hashed at once while computing an md5.
const HASH_PIECE: usize = 1 << 20;
/// Bytes read at once while sending a block: the memory one block in flight holds.
pub(super) const SEND_PIECE: usize = 256 * 1024;

/// A file to upload, with what the task is created from.
#[derive(Debug, Clone)]
pub struct LocalFile {
    pub path: PathBuf,
    /// The name the task is created with (by default the path's last component).
    pub name: String,
    pub size: u64,
    pub md5: Md5Hex,
    /// All reads go to this one open file: a file replaced on disk during the upload is not mixed in.
    file: Arc<File>,
}

impl LocalFile {
    /// Opens `path` and computes its md5, telling `progress` as it goes.
    pub async fn open(path: &Path, name: Option<String>, progress: &dyn Progress) -> Result<Self, ClientError> {
        let fail = |source| ClientError::File { path: path.to_owned(), source };
        let file = Arc::new(File::open(path).map_err(fail)?);
        let metadata = file.metadata().map_err(fail)?;
        if !metadata.is_file() {
            return Err(fail(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let name = match name {
            Some(name) => name,
            None => path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| ClientError::Usage(format!("{}: cannot take a file name from it", path.display())))?
                .to_owned(),
        };
        let size = metadata.len();
        progress.hashing(path, size);
        let md5 = hash(&file, 0, size, &mut |n| progress.hashed(n)).await.map_err(fail)?;
        Ok(Self { path: path.to_owned(), name, size, md5, file })
    }

    /// The md5 of one block of the file.
    pub(super) async fn md5_of(&self, range: ByteRange) -> Result<Md5Hex, ClientError> {
        hash(&self.file, range.start(), range.size(), &mut |_| {}).await.map_err(|e| self.error(e))
    }

    /// The proof of an instant upload's challenge: md5 of the nonce's ASCII text, then the bytes
    /// of each range in order (docs/API.md, section 8).
    pub(super) async fn proof(&self, nonce: &str, ranges: &[ByteRange]) -> Result<Md5Hex, ClientError> {
        let mut md5 = Md5::new();
        md5.update(nonce.as_bytes());
        for range in ranges {
            let len = usize::try_from(range.size()).map_err(|e| self.error(io::Error::other(e)))?;
            let bytes = read_piece(self.file.clone(), range.start(), vec![0; len]).await.map_err(|e| self.error(e))?;
            md5.update(&bytes);
        }
        Ok(md5.finish())
    }

    /// The bytes of `range`, read as they are sent, in pieces of at most `SEND_PIECE`.
    pub(super) fn stream(&self, range: ByteRange) -> impl Stream<Item = io::Result<Bytes>> + 'static {
        let file = self.file.clone();
        futures_util::stream::try_unfold((range.start(), range.size()), move |(offset, left)| {
            let file = file.clone();
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let len = left.min(SEND_PIECE as u64) as usize;
                let piece = read_piece(file, offset, vec![0; len]).await?;
                Ok(Some((Bytes::from(piece), (offset + len as u64, left - len as u64))))
            }
        })
    }

    pub(super) fn error(&self, source: io::Error) -> ClientError {
        ClientError::File { path: self.path.clone(), source }
    }
}

/// The md5 of `len` bytes from `offset`, reporting each piece hashed.
async fn hash(file: &Arc<File>, offset: u64, len: u64, hashed: &mut dyn FnMut(u64)) -> io::Result<Md5Hex> {
    let mut md5 = Md5::new();
    let mut buffer = vec![0; HASH_PIECE.min(len as usize)];
    let mut done = 0;
    while done < len {
        buffer.truncate(HASH_PIECE.min((len - done) as usize));
        buffer = read_piece(file.clone(), offset + done, buffer).await?;
        md5.update(&buffer);
        done += buffer.len() as u64;
        hashed(buffer.len() as u64);
    }
    Ok(md5.finish())
}

/// Fills `buffer` from `offset` on the blocking thread pool. A file that ends early has changed
/// since it was measured: that is an error, not a short block.
async fn read_piece(file: Arc<File>, offset: u64, mut buffer: Vec<u8>) -> io::Result<Vec<u8>> {
    actix_web::rt::task::spawn_blocking(move || {
        file.read_exact_at(&mut buffer, offset).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(e.kind(), "the file got shorter during the upload"),
            _ => e,
        })?;
        Ok(buffer)
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;
    use md5::Digest;

    use super::*;
    use crate::client::Silent;

    #[actix_web::test]
    async fn md5_and_blocks_are_read_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let data: Vec<u8> = (0..HASH_PIECE * 2 + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = LocalFile::open(&path, None, &Silent).await.unwrap();
        assert_eq!((file.name.as_str(), file.size), ("data.bin", data.len() as u64));
        assert_eq!(file.md5, Md5Hex::of_digest(&md5::Md5::digest(&data)));
        let range = ByteRange::new(5, SEND_PIECE as u64 * 2 + 9).unwrap();
        let pieces: Vec<Bytes> = file.stream(range).try_collect().await.unwrap();
        assert_eq!(pieces.iter().map(Bytes::len).collect::<Vec<_>>(), vec![SEND_PIECE, SEND_PIECE, 5]);
        assert_eq!(pieces.concat(), &data[5..=SEND_PIECE * 2 + 9]);
        assert_eq!(
            file.md5_of(range).await.unwrap(),
            Md5Hex::of_digest(&md5::Md5::digest(&data[5..=SEND_PIECE * 2 + 9]))
        );
    }

    #[actix_web::test]
    async fn an_empty_file_has_the_empty_md5_and_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();
        let file = LocalFile::open(&path, Some("other".into()), &Silent).await.unwrap();
        assert_eq!((file.name.as_str(), file.md5.as_str()), ("other", "d41d8cd98f00b204e9800998ecf8427e"));
        assert!(matches!(LocalFile::open(dir.path(), None, &Silent).await, Err(ClientError::File { .. })));
    }

    #[actix_web::test]
    async fn a_file_that_shrank_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrinks");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let file = LocalFile::open(&path, None, &Silent).await.unwrap();
        std::fs::write(&path, [1u8; 10]).unwrap();
        let read: io::Result<Vec<Bytes>> = file.stream(ByteRange::new(0, 99).unwrap()).try_collect().await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
