//! Files on disk: the task's temp file, written at offsets as a block streams in; whole-file md5;
//! and the move into the store directory. Blocking I/O runs on the blocking thread pool.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::domain::{ByteRange, Md5Hex};
use crate::hash::Md5;

/// Bytes handed to one `write` call at most: larger writes into freshly freed memory are slow
/// on some VMs, and this bounds the buffer per block in flight.
const WRITE_PIECE: usize = 256 * 1024;
/// Chunks queued between the request and its writer thread.
const QUEUED_CHUNKS: usize = 8;

/// Creates the temp file for a task (or a spool file), sized (sparsely) to the whole file; an
/// existing one keeps its bytes. A directory that was removed under the running server (an admin,
/// systemd-tmpfiles) is made again first.
pub fn create_temp(path: &Path, size: u64) -> io::Result<()> {
    let open = || OpenOptions::new().write(true).create(true).truncate(false).open(path);
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = path.parent().ok_or(e)?;
            make_dir_again("tmpDir", dir)?;
            open()?
        }
        other => other?,
    };
    file.set_len(size)
}

/// Writes the files of `sources`, each of its length, one after the other into `target` (made
/// already, of their total length), and syncs it: the final upload of a tus concatenation.
/// `io::copy` between files uses copy_file_range, which shares the blocks where the file system
/// can (btrfs, XFS) and copies in the kernel elsewhere.
pub fn concatenate(sources: &[(PathBuf, u64)], target: &Path) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = OpenOptions::new().write(true).open(target)?;
    let mut offset = 0;
    for (path, len) in sources {
        out.seek(SeekFrom::Start(offset))?;
        let copied = io::copy(&mut fs::File::open(path)?.take(*len), &mut out)?;
        if copied != *len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} holds {copied} bytes, not {len}", path.display()),
            ));
        }
        offset += len;
    }
    out.sync_data()
}

/// Makes `dir` (`what` names its setting) if it is missing, with a warning: the server made it at
/// start, so someone removed it since.
pub fn make_dir_again(what: &str, dir: &Path) -> io::Result<()> {
    if dir.try_exists()? {
        return Ok(());
    }
    tracing::warn!(dir = %dir.display(), "{what} is missing; making it again");
    fs::create_dir_all(dir)
}

/// What is on disk of a task's temp file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TempFile {
    Whole,
    /// Gone, or shorter than the file: only its first `on_disk` bytes can hold received data.
    Lost {
        on_disk: u64,
    },
}

/// Whether the temp file at `path` still has the whole file's length `size`.
pub fn temp_file(path: &Path, size: u64) -> io::Result<TempFile> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() >= size => Ok(TempFile::Whole),
        Ok(meta) => Ok(TempFile::Lost { on_disk: meta.len() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TempFile::Lost { on_disk: 0 }),
        Err(e) => Err(e),
    }
}

/// Bytes `range` of the file at `path` (a staged block read back for S3).
pub fn read_range(path: &Path, range: ByteRange) -> io::Result<Vec<u8>> {
    let len = usize::try_from(range.size()).map_err(io::Error::other)?;
    let mut bytes = vec![0; len];
    File::open(path)?.read_exact_at(&mut bytes, range.start())?;
    Ok(bytes)
}

pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A fresh name in `tmp_dir` for a block body held until its range is known.
pub fn spool_path(tmp_dir: &Path) -> io::Result<PathBuf> {
    let mut name = [0u8; 8];
    getrandom::getrandom(&mut name).map_err(io::Error::other)?;
    Ok(tmp_dir.join(format!("{SPOOL_PREFIX}{}.part", hex::encode(name))))
}

const SPOOL_PREFIX: &str = "spool-";

pub fn is_spool(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(SPOOL_PREFIX))
}

/// Where a block's body goes, and the md5s it is hashed into.
pub struct BlockFile {
    pub path: PathBuf,
    /// The bytes of the file the body holds.
    pub range: ByteRange,
    /// The parts of `range` to write (each inside it); the rest of the body is hashed only.
    pub writes: Vec<ByteRange>,
    /// The length the file was made with: a shorter one was cut short under the server.
    pub file_len: u64,
    /// The data is on disk before streaming returns.
    pub fsync: bool,
    /// The whole file's md5 over `[0, range.start)`, to go on over the body as well. Only for a
    /// body written whole: the md5 must be of the bytes on disk.
    pub file_md5: Option<Md5>,
}

impl BlockFile {
    /// The whole of `range` written, no fsync, the body's md5 only.
    pub fn whole(path: PathBuf, range: ByteRange) -> Self {
        Self { path, range, writes: vec![range], file_len: 0, fsync: false, file_md5: None }
    }
}

/// What streaming a block's body produced.
#[derive(Debug)]
pub struct StreamedBlock {
    /// Bytes the body held (all of them, written or not).
    pub body_len: u64,
    /// The md5 state over the whole body: its digest is the block's md5.
    md5: Md5,
    /// `BlockFile::file_md5` gone on over the body: the whole file's md5 over `[0, range.end]`.
    pub file_md5: Option<Md5>,
}

impl StreamedBlock {
    pub fn digest(&self) -> Md5Hex {
        self.md5.clone().finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the body is longer than {0} bytes")]
    TooLong(u64),
    #[error("the body ended early: {0}")]
    Body(String),
    #[error("the temp file is gone or shorter than it was made ({on_disk} bytes left)")]
    TempFileLost { on_disk: u64 },
    #[error(transparent)]
    Disk(#[from] io::Error),
}

/// Streams `body`, which holds the bytes of `target.range` of the file at `target.path`, hashing
/// all of it and writing only the parts inside `target.writes`. A body longer than the range is cut
/// off without writing past it.
///
/// `keep` is held by the writing thread until it has finished writing and handed back on success:
/// a claim on the written ranges must not be released while a write into them could still
/// happen, even if the request that started it is dropped.
///
/// The first `WRITE_PIECE` bytes are gathered here; a body that ends within them (a small block)
/// is written in one blocking call. A longer one goes on to a writer thread through a short queue.
pub async fn stream_into<S, E, K>(target: BlockFile, body: S, keep: K) -> Result<(StreamedBlock, K), StreamError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
    K: Send + 'static,
{
    let range = target.range;
    let mut body = std::pin::pin!(body);
    let mut body_len = 0u64;
    let mut next_chunk = async || -> Result<Option<Bytes>, StreamError> {
        match body.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(StreamError::Body(e.to_string())),
            Some(Ok(bytes)) => {
                body_len += bytes.len() as u64;
                if body_len > range.size() {
                    return Err(StreamError::TooLong(range.size()));
                }
                Ok(Some(bytes))
            }
        }
    };
    let mut gathered = Vec::new();
    let mut gathered_len = 0;
    let mut ended = false;
    while gathered_len < WRITE_PIECE {
        match next_chunk().await? {
            Some(chunk) => {
                gathered_len += chunk.len();
                gathered.push(chunk);
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    let (written, keep) = if ended {
        let write = move || (write_chunks(target, gathered), keep);
        tokio::task::spawn_blocking(write).await
    } else {
        let (chunks, queue) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
        let writer = tokio::task::spawn_blocking(move || {
            let written = write_chunks(target, gathered.into_iter().chain(Queue(queue)));
            (written, keep)
        });
        let mut outcome = Ok(());
        loop {
            match next_chunk().await {
                Ok(Some(chunk)) => {
                    if chunks.send(chunk).await.is_err() {
                        break; // the writer stopped on a disk error, which it reports below
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        drop(chunks);
        // Once the writer thread has ended nothing writes any more, so `keep` may go on any error.
        let joined = writer.await;
        outcome?;
        joined
    }
    .map_err(|e| StreamError::Disk(io::Error::other(e.to_string())))?;
    let (md5, file_md5) = written?;
    Ok((StreamedBlock { body_len, md5, file_md5 }, keep))
}

/// The chunks a request hands to its writer thread, taken as they come.
struct Queue(mpsc::Receiver<Bytes>);

impl Iterator for Queue {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        self.0.blocking_recv()
    }
}

/// Writes the chunks as `stream_into` says; returns the body's md5 and the whole file's.
///
/// A body that starts the file needs one md5 state: the file's md5 over it is the body's own. Any
/// other body that continues the file's md5 feeds a second state, on a scoped thread of its own,
/// the same chunks in memory: md-5 hashes one state at a time, so two states on this thread would
/// halve its speed (one upload's blocks go one after the other: W1 waits on this thread). With a
/// core free the two run side by side; on busy cores they cost the same CPU as on one thread (see
/// docs/PERFORMANCE.md).
fn write_chunks(target: BlockFile, chunks: impl IntoIterator<Item = Bytes>) -> Result<(Md5, Option<Md5>), StreamError> {
    let BlockFile { path, range, writes, file_len, fsync, file_md5 } = target;
    let file = match writes.is_empty() {
        true => None,
        false => Some(open_whole(&path, file_len)?),
    };
    let write =
        |on_chunk: &mut dyn FnMut(&Bytes)| write_and_hash(file.as_ref(), range, &writes, fsync, chunks, on_chunk);
    match file_md5 {
        None => Ok((write(&mut |_| {})?, None)),
        Some(file_md5) if file_md5.bytes_hashed() == 0 => {
            let md5 = write(&mut |_| {})?;
            Ok((md5.clone(), Some(md5)))
        }
        Some(mut file_md5) => std::thread::scope(|scope| {
            let (to_hasher, queue) = std::sync::mpsc::sync_channel::<Bytes>(QUEUED_CHUNKS);
            let hasher = std::thread::Builder::new().name("file-md5".into()).spawn_scoped(scope, move || {
                queue.iter().for_each(|chunk| file_md5.update(&chunk));
                file_md5
            })?;
            // The hasher ends when `feed` (the only sender) is dropped, after the last chunk or an error.
            let mut feed = move |chunk: &Bytes| drop(to_hasher.send(chunk.clone()));
            let md5 = write(&mut feed);
            drop(feed);
            let file_md5 = hasher.join().map_err(|_| io::Error::other("the whole file's md5 thread panicked"))?;
            Ok((md5?, Some(file_md5)))
        }),
    }
}

/// Writes the parts of the chunks inside `writes`, handing each chunk to `on_chunk` as well;
/// returns the md5 of all of them.
fn write_and_hash(
    file: Option<&File>,
    range: ByteRange,
    writes: &[ByteRange],
    fsync: bool,
    chunks: impl IntoIterator<Item = Bytes>,
    on_chunk: &mut dyn FnMut(&Bytes),
) -> Result<Md5, StreamError> {
    let mut pieces = file.map(PieceWriter::new);
    let mut md5 = Md5::new();
    let mut offset = range.start();
    for chunk in chunks {
        if chunk.is_empty() {
            continue;
        }
        on_chunk(&chunk);
        md5.update(&chunk);
        let chunk_range = ByteRange::new(offset, offset + chunk.len() as u64 - 1);
        if let (Some(pieces), Some(chunk_range)) = (pieces.as_mut(), chunk_range) {
            for target in writes.iter().filter_map(|w| w.intersection(&chunk_range)) {
                let from = (target.start() - offset) as usize;
                pieces.write_at(target.start(), &chunk[from..from + target.size() as usize])?;
            }
        }
        offset += chunk.len() as u64;
    }
    if let Some(mut pieces) = pieces {
        pieces.flush()?;
    }
    if let (Some(file), true) = (file, fsync) {
        file.sync_data()?;
    }
    Ok(md5)
}

/// Opens the file at `path` for writing if it still has its length `len`.
fn open_whole(path: &Path, len: u64) -> Result<File, StreamError> {
    let file = match OpenOptions::new().write(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StreamError::TempFileLost { on_disk: 0 }),
        other => other?,
    };
    match file.metadata()?.len() {
        on_disk if on_disk < len => Err(StreamError::TempFileLost { on_disk }),
        _ => Ok(file),
    }
}

/// Gathers contiguous bytes into pieces of up to `WRITE_PIECE` before writing them.
struct PieceWriter<'f> {
    file: &'f File,
    buffer: Vec<u8>,
    buffer_offset: u64,
}

impl<'f> PieceWriter<'f> {
    fn new(file: &'f File) -> Self {
        Self { file, buffer: Vec::with_capacity(WRITE_PIECE), buffer_offset: 0 }
    }

    fn write_at(&mut self, mut offset: u64, mut bytes: &[u8]) -> io::Result<()> {
        if self.buffer_offset + self.buffer.len() as u64 != offset {
            self.flush()?;
            self.buffer_offset = offset;
        }
        while !bytes.is_empty() {
            let room = WRITE_PIECE - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            offset += now.len() as u64;
            bytes = rest;
            if self.buffer.len() == WRITE_PIECE {
                self.flush()?;
                self.buffer_offset = offset;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.file.write_all_at(&self.buffer, self.buffer_offset)?;
            self.buffer_offset += self.buffer.len() as u64;
            self.buffer.clear();
        }
        Ok(())
    }
}

/// A stream of the file's bytes, in pieces, for sending a spooled body on.
pub async fn read_stream(path: &Path) -> io::Result<impl Stream<Item = io::Result<Bytes>>> {
    let file = tokio::fs::File::open(path).await?;
    Ok(tokio_util::io::ReaderStream::with_capacity(file, WRITE_PIECE))
}

mod place;
pub use place::{is_confined, place, remove_partial, staged_partials, PlaceError};

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> {
        futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn writes_only_the_given_ranges_and_hashes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.part");
        create_temp(&path, 10).unwrap();
        fs::write(&path, b"..........").unwrap();
        let target = BlockFile {
            path: path.clone(),
            range: r(2, 7),
            writes: vec![r(2, 3), r(6, 7)],
            file_len: 10,
            fsync: true,
            file_md5: None,
        };
        let (streamed, kept) = stream_into(target, body(&[b"abc", b"def"]), 7).await.unwrap();
        assert_eq!(kept, 7);
        assert_eq!(streamed.body_len, 6);
        assert_eq!(streamed.digest().as_str(), "e80b5017098950fc58aad83c8c14978e"); // md5("abcdef")
        assert_eq!(fs::read(&path).unwrap(), b"..ab..ef..");
    }

    #[tokio::test]
    async fn a_small_body_longer_than_its_range_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.part");
        fs::write(&path, b"....").unwrap();
        let result = stream_into(BlockFile::whole(path.clone(), r(0, 1)), body(&[b"ab", b"cd"]), ()).await;
        assert!(matches!(result, Err(StreamError::TooLong(2))));
        assert_eq!(fs::read(&path).unwrap(), b"....");
    }

    #[tokio::test]
    async fn a_streamed_body_longer_than_its_range_never_writes_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.part");
        let size = 2 * WRITE_PIECE as u64;
        fs::write(&path, vec![b'.'; size as usize + 10]).unwrap();
        let chunks: Vec<Result<Bytes, String>> = (0..3).map(|_| Ok(Bytes::from(vec![b'x'; WRITE_PIECE]))).collect();
        let whole = r(0, size - 1);
        let result = stream_into(BlockFile::whole(path.clone(), whole), futures_util::stream::iter(chunks), ()).await;
        assert!(matches!(result, Err(StreamError::TooLong(_))));
        assert_eq!(&fs::read(&path).unwrap()[size as usize..], b"..........");
    }

    #[tokio::test]
    async fn large_bodies_are_written_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.part");
        let size = 3 * WRITE_PIECE as u64 + 5;
        create_temp(&path, size).unwrap();
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, String>> = data.chunks(10_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let whole = r(0, size - 1);
        let (streamed, ()) =
            stream_into(BlockFile::whole(path.clone(), whole), futures_util::stream::iter(chunks), ()).await.unwrap();
        assert_eq!(streamed.body_len, size);
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(streamed.digest(), Md5::digest(&data));
        assert!(streamed.file_md5.is_none());
    }

    #[tokio::test]
    async fn the_whole_files_md5_goes_on_over_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.part");
        let data: Vec<u8> = (0..3 * WRITE_PIECE as u64).map(|i| (i % 253) as u8).collect();
        create_temp(&path, data.len() as u64).unwrap();
        // A block at a multiple of 64 (both md5s in step), one not, and one that starts the file.
        for start in [WRITE_PIECE, 1000, 0] {
            let mut file_md5 = Md5::new();
            file_md5.update(&data[..start]);
            let range = r(start as u64, data.len() as u64 - 1);
            let target = BlockFile { file_md5: Some(file_md5), ..BlockFile::whole(path.clone(), range) };
            let chunks: Vec<Result<Bytes, String>> =
                data[start..].chunks(10_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let (streamed, ()) = stream_into(target, futures_util::stream::iter(chunks), ()).await.unwrap();
            assert_eq!(streamed.digest(), Md5::digest(&data[start..]), "block at {start}");
            assert_eq!(streamed.file_md5.unwrap().finish(), Md5::digest(&data), "block at {start}");
        }
    }
}
