//! Placing a finished temp file into the store directory: no symlink followed below storeDir,
//! nothing created over an existing entry, names that fit NAME_MAX, and a copy across file
//! systems kept under the task's own name, so that a repeated finish finds its earlier link.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

/// The longest file name Linux file systems take, in bytes.
const NAME_MAX: usize = 255;
/// Below storeDir: where copies across file systems are made before they are linked.
const STAGING_DIR: &str = ".fupload";
/// How many numbered names a finish tries before it gives up.
const MAX_NUMBERED: u32 = 1000;
/// Directories and files are made as `fs::create_dir_all` and `File::create` make them: the
/// umask decides.
const DIR_MODE: u32 = 0o777;
const FILE_MODE: u32 = 0o666;

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The directory resolves to a place outside storeDir, or `.fupload` is a symlink.
    #[error("{} leaves storeDir", .0.display())]
    LeavesStoreDir(PathBuf),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<Errno> for PlaceError {
    fn from(errno: Errno) -> Self {
        PlaceError::Io(errno.into())
    }
}

impl From<PlaceError> for io::Error {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::Io(e) => e,
            leaves => io::Error::other(leaves),
        }
    }
}

/// Places the finished temp file `tmp` at `dir/file_name` without overwriting anything: if the
/// name is taken, the file becomes `name (1).ext`, `name (2).ext`, … (see `numbered`).
///
/// With a `root` (storeDir), `dir` is opened from the root one component at a time without
/// following symlinks (missing directories are made); a symlink met on the way is allowed only
/// if `dir` resolves inside the root, and the resolved path is then opened the same way. With no
/// root, `dir` is opened as it is. Either way every name is created in that open directory,
/// never through a symlink.
///
/// On one file system `tmp` itself is linked. Across two it is copied to the task's partial
/// (`.fupload/task-<id>.partial` below the root), fsynced and linked; the partial is kept until
/// the caller has recorded the finish and calls `remove_partial`. A repeat after any failure
/// finds the earlier link (the same inode) and returns it, never a second copy. Blocking.
pub fn place(
    tmp: &Path,
    root: Option<&Path>,
    dir: &Path,
    file_name: &str,
    task_id: i64,
    fsync: bool,
) -> Result<PathBuf, PlaceError> {
    let (root_fd, dir_fd) = match root {
        Some(root) => {
            let root_fd = open_root(root, Make::Missing)?;
            let dir_fd = open_below(&root_fd, root, dir, Make::Missing)?;
            (Some(root_fd), dir_fd)
        }
        None => {
            fs::create_dir_all(dir)?;
            (None, open_dir(dir)?)
        }
    };
    let placed = match link_without_clobbering(CWD, tmp.as_os_str(), dir_fd.as_fd(), file_name) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let staging = root_fd.as_ref().zip(root).map(|(fd, root)| open_staging_dir(fd, root)).transpose()?;
            copy_and_link(tmp, staging.as_ref(), &dir_fd, file_name, task_id)?
        }
        other => other?,
    };
    if fsync {
        rustix::fs::fsync(&dir_fd)?;
    }
    Ok(dir.join(placed))
}

/// Removes the task's partial, once its finish is recorded (or has failed for good): in
/// `.fupload` below the root, and the in-directory one in `dir`. Missing ones are fine.
pub fn remove_partial(root: Option<&Path>, dir: &Path, task_id: i64) -> io::Result<()> {
    let dir_fd = match root {
        Some(root) => {
            let root_fd = match open_root(root, Make::Nothing) {
                Err(PlaceError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            };
            match open_child_dir(&root_fd, OsStr::new(STAGING_DIR), Make::Nothing) {
                Ok(Some(staging)) => remove_at(&staging, &staged_name(task_id))?,
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            match open_below(&root_fd, root, dir, Make::Nothing) {
                Ok(dir_fd) => dir_fd,
                // Nothing of the task's can be there: the finish never created anything in it.
                Err(PlaceError::LeavesStoreDir(_)) => return Ok(()),
                Err(PlaceError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(PlaceError::Io(e)) => return Err(e),
            }
        }
        None => match open_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        },
    };
    remove_at(&dir_fd, &in_dir_staged_name(task_id))
}

/// The task ids of the partials in `root/.fupload`, for the start-up recovery to remove those
/// whose task is no longer being finished; empty when there is no such directory.
pub fn staged_partials(root: &Path) -> io::Result<Vec<i64>> {
    let root_fd = match open_root(root, Make::Nothing) {
        Err(PlaceError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other?,
    };
    let staging = match open_child_dir(&root_fd, OsStr::new(STAGING_DIR), Make::Nothing) {
        Ok(Some(staging)) => staging,
        Ok(None) => return Err(PlaceError::LeavesStoreDir(root.join(STAGING_DIR)).into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut task_ids = Vec::new();
    for entry in rustix::fs::Dir::new(staging)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy();
        if let Some(task_id) = name.strip_prefix("task-").and_then(|n| n.strip_suffix(".partial")) {
            task_ids.extend(task_id.parse::<i64>().ok());
        }
    }
    Ok(task_ids)
}

fn staged_name(task_id: i64) -> String {
    format!("task-{task_id}.partial")
}

/// The partial's name in the target directory itself, when `.fupload` is on another file system
/// than the target (a mount below storeDir) or there is no root.
fn in_dir_staged_name(task_id: i64) -> String {
    format!(".{STAGING_DIR}-task-{task_id}.partial")
}

/// Whether opening a directory makes what is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Make {
    Missing,
    Nothing,
}

/// Opens storeDir itself (a symlink here is the operator's own). A missing one is made again:
/// an admin may have removed it, and that must not fail a complete upload.
fn open_root(root: &Path, make: Make) -> Result<OwnedFd, PlaceError> {
    match open_dir(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && make == Make::Missing => {
            super::make_dir_again("storeDir", root)?;
            Ok(open_dir(root)?)
        }
        other => Ok(other?),
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Opens `dir` from the open root without following a symlink below it. A symlink on the way is
/// followed only when `dir` resolves inside the root: the resolved path is then walked the same
/// way, so that a symlink swapped in meanwhile is refused. Checked before anything is made.
fn open_below(root_fd: &OwnedFd, root: &Path, dir: &Path, make: Make) -> Result<OwnedFd, PlaceError> {
    if let Some(below) = dir.strip_prefix(root).ok().filter(|below| only_names(below)) {
        if let Some(dir_fd) = walk(root_fd, below, make)? {
            return Ok(dir_fd);
        }
    }
    let leaves = || PlaceError::LeavesStoreDir(dir.to_path_buf());
    let resolved = resolved_below(root, dir)?.ok_or_else(leaves)?;
    walk(root_fd, &resolved, make)?.ok_or_else(leaves)
}

fn only_names(path: &Path) -> bool {
    path.components().all(|part| matches!(part, Component::Normal(_)))
}

/// Opens `below` from `root_fd` one directory at a time; `None` when a component is a symlink.
fn walk(root_fd: &OwnedFd, below: &Path, make: Make) -> io::Result<Option<OwnedFd>> {
    let mut dir = root_fd.try_clone()?;
    for part in below.components() {
        let Component::Normal(name) = part else { return Ok(None) };
        match open_child_dir(&dir, name, make)? {
            Some(child) => dir = child,
            None => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// Opens the directory `name` in `parent` without following a symlink; `None` if it is one.
fn open_child_dir(parent: &OwnedFd, name: &OsStr, make: Make) -> io::Result<Option<OwnedFd>> {
    let open = || {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(parent, name, flags, Mode::empty())
    };
    let opened = match open() {
        Err(Errno::NOENT) if make == Make::Missing => {
            match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => open(),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    match opened {
        Ok(dir) => Ok(Some(dir)),
        Err(Errno::LOOP | Errno::NOTDIR) if stat_at(parent, name).is_ok_and(|s| file_type(&s) == FileType::Symlink) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens (making it if need be) `.fupload` below the root; a symlink there is refused.
fn open_staging_dir(root_fd: &OwnedFd, root: &Path) -> Result<OwnedFd, PlaceError> {
    open_child_dir(root_fd, OsStr::new(STAGING_DIR), Make::Missing)?
        .ok_or_else(|| PlaceError::LeavesStoreDir(root.join(STAGING_DIR)))
}

/// Whether `dir` (which need not exist yet) lies inside `root` once symlinks are followed:
/// the deepest part of `dir` that exists must resolve to a place inside `root`.
pub fn is_confined(root: &Path, dir: &Path) -> io::Result<bool> {
    fs::metadata(root)?;
    Ok(spelled_inside_without_links(root, dir) || resolved_below(root, dir)?.is_some())
}

/// `dir` resolved (the deepest part that exists, with symlinks followed, and the rest as
/// spelled), relative to the resolved `root`; `None` when it is not inside.
fn resolved_below(root: &Path, dir: &Path) -> io::Result<Option<PathBuf>> {
    let root = root.canonicalize()?;
    let mut existing = dir;
    while fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => return Ok(None),
        }
    }
    let (Ok(real), Ok(rest)) = (existing.canonicalize(), dir.strip_prefix(existing)) else { return Ok(None) };
    Ok(real.strip_prefix(&root).ok().filter(|_| only_names(rest)).map(|below| below.join(rest)))
}

/// The common case, in one `lstat` per directory below `root` (resolving both paths costs a
/// `readlink` per directory of each, every upload twice): `dir` is spelled inside `root` and
/// nothing of it below `root` is a symlink.
fn spelled_inside_without_links(root: &Path, dir: &Path) -> bool {
    let Ok(below) = dir.strip_prefix(root) else { return false };
    if !only_names(below) {
        return false;
    }
    let mut path = root.to_path_buf();
    for part in below.components() {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return false,
            Ok(_) => {}
            // Nothing below a missing directory exists, let alone a link.
            Err(_) => return true,
        }
    }
    true
}

/// Copies `tmp` to the task's partial and links that into `dir_fd`: the partial in `staging`
/// (`.fupload`) when given and on the target's file system, else in the target directory.
fn copy_and_link(
    tmp: &Path,
    staging: Option<&OwnedFd>,
    dir_fd: &OwnedFd,
    file_name: &str,
    task_id: i64,
) -> io::Result<String> {
    if let Some(staging) = staging {
        let staged = staged_name(task_id);
        match stage_and_link(tmp, staging, &staged, dir_fd, file_name) {
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => remove_at(staging, &staged)?,
            other => return other,
        }
    }
    stage_and_link(tmp, dir_fd, &in_dir_staged_name(task_id), dir_fd, file_name)
}

/// Links the partial `staging/staged` into `dir_fd` under a free name. A partial already linked
/// there by an earlier attempt is the answer; any other is replaced by a fresh, fsynced copy.
fn stage_and_link(
    tmp: &Path,
    staging: &OwnedFd,
    staged: &str,
    dir_fd: &OwnedFd,
    file_name: &str,
) -> io::Result<String> {
    let staged_name = OsStr::new(staged);
    if let Ok(earlier) = stat_at(staging, staged_name) {
        if file_type(&earlier) == FileType::RegularFile && earlier.st_nlink > 1 {
            if let Some(linked) = find_link(dir_fd.as_fd(), file_name, staged, file_id(&earlier)) {
                return Ok(linked);
            }
        }
    }
    remove_at(staging, staged)?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut copy = File::from(rustix::fs::openat(staging, staged, flags, Mode::from_raw_mode(FILE_MODE))?);
    io::copy(&mut File::open(tmp)?, &mut copy)?;
    copy.sync_all()?;
    link_without_clobbering(staging.as_fd(), staged_name, dir_fd.as_fd(), file_name)
}

/// Links `source_dir/source` into `dir` as `file_name` or the first free numbered name, and
/// returns the name. A link to the same file already there (an earlier attempt) is returned.
fn link_without_clobbering(
    source_dir: BorrowedFd<'_>,
    source: &OsStr,
    dir: BorrowedFd<'_>,
    file_name: &str,
) -> io::Result<String> {
    let source_stat = stat_at(source_dir, source)?;
    let source_id = file_id(&source_stat);
    // Linked before: found wherever it is, even if a name before it was freed since.
    let source_name = source.to_str().unwrap_or_default();
    if source_stat.st_nlink > 1 {
        if let Some(linked) = find_link(dir, file_name, source_name, source_id) {
            return Ok(linked);
        }
    }
    for candidate in candidates(file_name, source_name) {
        match rustix::fs::linkat(source_dir, source, dir, candidate.as_str(), AtFlags::empty()) {
            Ok(()) => return Ok(candidate),
            Err(Errno::EXIST) if stat_at(dir, OsStr::new(&candidate)).is_ok_and(|s| file_id(&s) == source_id) => {
                return Ok(candidate);
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{file_name}: {MAX_NUMBERED} files of that name already exist"),
    ))
}

/// The candidate name in `dir` that is a link to the file `id`, if any.
fn find_link(dir: BorrowedFd<'_>, file_name: &str, source: &str, id: (u64, u64)) -> Option<String> {
    candidates(file_name, source).find(|candidate| stat_at(dir, OsStr::new(candidate)).is_ok_and(|s| file_id(&s) == id))
}

/// The names a file may get, less `source`: a file named like its own in-directory partial must
/// not be taken as placed under that name (the partial is removed later).
fn candidates<'a>(file_name: &'a str, source: &'a str) -> impl Iterator<Item = String> + 'a {
    (0..MAX_NUMBERED).map(|n| numbered(file_name, n)).filter(move |candidate| candidate != source)
}

/// `lstat` relative to a directory: a symlink is the link itself.
fn stat_at<Fd: AsFd>(dir: Fd, name: &OsStr) -> Result<Stat, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// What makes two names the same file.
fn file_id(stat: &Stat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

fn remove_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `name`, then `name (1).ext`, `name (2).ext`, … , each at most NAME_MAX bytes: a longer one
/// keeps its extension and shortens the stem; with no room left for a stem, the whole name is
/// shortened and ` (n)` appended. Names are cut at a UTF-8 character boundary.
fn numbered(file_name: &str, n: u32) -> String {
    if n == 0 {
        return file_name.to_owned();
    }
    let number = format!(" ({n})");
    if let Some((stem, ext)) = file_name.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) {
        let stem = cut(stem, NAME_MAX.saturating_sub(number.len() + 1 + ext.len()));
        if !stem.is_empty() {
            return format!("{stem}{number}.{ext}");
        }
    }
    format!("{}{number}", cut(file_name, NAME_MAX - number.len()))
}

/// The longest start of `text` of at most `max` bytes that ends at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let end = (0..=max.min(text.len())).rev().find(|&end| text.is_char_boundary(end)).unwrap_or(0);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, MetadataExt};

    use super::*;

    /// The name lengths the tests place: short, just below and at the lengths where a numbered
    /// name or the old partial's name stopped fitting, and the longest allowed.
    const NAME_LENGTHS: [usize; 6] = [1, 238, 239, 251, 252, 255];

    /// A name of `len` bytes, with an extension when there is room for one.
    fn name_of(len: usize) -> String {
        if len < 5 {
            "x".repeat(len)
        } else {
            format!("{}.bin", "é".repeat((len - 4) / 2) + &"x".repeat((len - 4) % 2))
        }
    }

    /// A directory on another file system than the system temp dir (/dev/shm is a tmpfs), or
    /// `None` with the reason printed.
    fn other_file_system() -> Option<tempfile::TempDir> {
        let shm = Path::new("/dev/shm");
        let here = fs::metadata(std::env::temp_dir()).ok()?.dev();
        match fs::metadata(shm) {
            Ok(meta) if meta.dev() != here => tempfile::tempdir_in(shm).ok(),
            _ => {
                eprintln!("skipped across file systems: /dev/shm is missing or on the temp dir's file system");
                None
            }
        }
    }

    struct Setup {
        _tmp_dir: Option<tempfile::TempDir>,
        dir: tempfile::TempDir,
        tmp_in: PathBuf,
        root: PathBuf,
    }

    /// A store root in the temp dir, and temp files on the same file system or another one.
    fn setup(across: bool) -> Option<Setup> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        fs::create_dir(&root).unwrap();
        let (tmp_dir, tmp_in) = if across {
            let other = other_file_system()?;
            let path = other.path().to_path_buf();
            (Some(other), path)
        } else {
            (None, dir.path().to_path_buf())
        };
        Some(Setup { _tmp_dir: tmp_dir, dir, tmp_in, root })
    }

    impl Setup {
        fn temp_file(&self, task_id: i64, data: &[u8]) -> PathBuf {
            let path = self.tmp_in.join(format!("task-{task_id}.part"));
            fs::write(&path, data).unwrap();
            path
        }

        /// A directory outside the root holding `victim`, whose content must never change.
        fn outside(&self) -> (PathBuf, PathBuf) {
            let outside = self.dir.path().join("outside");
            fs::create_dir_all(&outside).unwrap();
            let victim = outside.join("victim");
            fs::write(&victim, b"victim").unwrap();
            (outside, victim)
        }

        fn assert_untouched(&self, outside: &Path, victim: &Path) {
            assert_eq!(fs::read(victim).unwrap(), b"victim");
            let entries: Vec<_> = fs::read_dir(outside).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(entries, ["victim"], "nothing made outside storeDir");
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn numbered_names_fit_name_max() {
        assert_eq!(numbered("hello.mp4", 0), "hello.mp4");
        assert_eq!(numbered("hello.mp4", 1), "hello (1).mp4");
        assert_eq!(numbered("archive", 2), "archive (2)");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
        let huge_extension = format!("a.{}", "e".repeat(252));
        for len in NAME_LENGTHS {
            for name in [name_of(len), "é".repeat(len / 2), huge_extension.clone()] {
                for n in [1, 10, 999] {
                    let numbered = numbered(&name, n);
                    assert!(numbered.len() <= NAME_MAX, "{numbered:?}: {} bytes", numbered.len());
                    assert!(numbered.contains(&format!(" ({n})")), "{numbered:?}");
                    assert_ne!(numbered, name);
                }
            }
        }
        // The extension is kept and the stem shortened at a character boundary.
        let long = name_of(255);
        let first = numbered(&long, 1);
        assert!(first.ends_with(" (1).bin") && first.len() == 254, "{first:?}: {}", first.len());
        // No room for a stem: the whole name is shortened.
        let whole = numbered(&huge_extension, 3);
        assert_eq!(whole, format!("{} (3)", &huge_extension[..251]));
    }

    #[test]
    fn long_names_are_placed_twice_on_one_file_system_and_across_two() {
        for across in [false, true] {
            let Some(s) = setup(across) else { continue };
            for (i, len) in NAME_LENGTHS.into_iter().enumerate() {
                // One directory each: shortened numbered names of different lengths may be alike.
                let (name, dir) = (name_of(len), s.root.join(format!("a/{len}")));
                let first = s.temp_file(2 * i as i64, b"first");
                let second = s.temp_file(2 * i as i64 + 1, b"second");
                let placed = place(&first, Some(&s.root), &dir, &name, 2 * i as i64, false).unwrap();
                assert_eq!(placed, dir.join(&name));
                let again = place(&second, Some(&s.root), &dir, &name, 2 * i as i64 + 1, true).unwrap();
                let again_name = again.file_name().unwrap().to_str().unwrap();
                assert_eq!(again_name, numbered(&name, 1), "across: {across}");
                assert!(again_name.len() <= NAME_MAX);
                assert_eq!(fs::read(&placed).unwrap(), b"first");
                assert_eq!(fs::read(&again).unwrap(), b"second");
            }
        }
    }

    #[test]
    fn a_repeated_finish_across_file_systems_returns_its_first_link() {
        let Some(s) = setup(true) else { return };
        let dir = s.root.join("d");
        let tmp = s.temp_file(7, b"data");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("big.bin"), b"other").unwrap();
        let placed = place(&tmp, Some(&s.root), &dir, "big.bin", 7, false).unwrap();
        // A failure between the link and the record: the finish runs again.
        assert_eq!(place(&tmp, Some(&s.root), &dir, "big.bin", 7, false).unwrap(), placed);
        assert_eq!(names_in(&dir), ["big (1).bin", "big.bin"], "one copy");
        assert_eq!(names_in(&s.root.join(STAGING_DIR)), ["task-7.partial"], "kept until recorded");
        assert_eq!(staged_partials(&s.root).unwrap(), [7]);
        remove_partial(Some(&s.root), &dir, 7).unwrap();
        assert!(names_in(&s.root.join(STAGING_DIR)).is_empty());
        assert_eq!(names_in(&dir), ["big (1).bin", "big.bin"]);
        assert_eq!(fs::read(&placed).unwrap(), b"data");
    }

    #[test]
    fn a_partial_left_unlinked_is_copied_again() {
        let Some(s) = setup(true) else { return };
        let dir = s.root.join("d");
        let tmp = s.temp_file(8, b"complete");
        // A crash during the copy: the partial is short and linked nowhere.
        fs::create_dir_all(s.root.join(STAGING_DIR)).unwrap();
        fs::write(s.root.join(STAGING_DIR).join(staged_name(8)), b"comp").unwrap();
        let placed = place(&tmp, Some(&s.root), &dir, "f.bin", 8, false).unwrap();
        assert_eq!(fs::read(placed).unwrap(), b"complete");
    }

    #[test]
    fn a_repeat_on_one_file_system_finds_its_link_even_if_an_earlier_name_was_freed() {
        let Some(s) = setup(false) else { return };
        let dir = s.root.join("d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("hello.mp4"), b"old").unwrap();
        let tmp = s.temp_file(1, b"new");
        let placed = place(&tmp, Some(&s.root), &dir, "hello.mp4", 1, true).unwrap();
        assert_eq!(placed, dir.join("hello (1).mp4"));
        fs::remove_file(dir.join("hello.mp4")).unwrap();
        assert_eq!(place(&tmp, Some(&s.root), &dir, "hello.mp4", 1, false).unwrap(), placed);
        assert_eq!(names_in(&dir), ["hello (1).mp4"]);
    }

    #[test]
    fn symlinks_at_the_directory_components_are_refused_before_anything_is_made() {
        for across in [false, true] {
            let Some(s) = setup(across) else { continue };
            let (outside, victim) = s.outside();
            let tmp = s.temp_file(1, b"data");
            fs::create_dir_all(s.root.join("a")).unwrap();
            symlink(&outside, s.root.join("top")).unwrap();
            symlink(&outside, s.root.join("a/mid")).unwrap();
            for dir in [s.root.join("top"), s.root.join("top/sub"), s.root.join("a/mid/sub/deeper")] {
                let refused = place(&tmp, Some(&s.root), &dir, "victim", 1, false);
                assert!(matches!(refused, Err(PlaceError::LeavesStoreDir(_))), "{}: {refused:?}", dir.display());
                s.assert_untouched(&outside, &victim);
            }
        }
    }

    #[test]
    fn symlinks_at_the_file_names_are_never_followed() {
        for across in [false, true] {
            let Some(s) = setup(across) else { continue };
            let (outside, victim) = s.outside();
            let dir = s.root.join("d");
            fs::create_dir_all(&dir).unwrap();
            symlink(&victim, dir.join("v.bin")).unwrap();
            symlink(&victim, dir.join("v (1).bin")).unwrap();
            let tmp = s.temp_file(1, b"data");
            let placed = place(&tmp, Some(&s.root), &dir, "v.bin", 1, false).unwrap();
            assert_eq!(placed, dir.join("v (2).bin"), "placed beside the links");
            assert_eq!(fs::read(&placed).unwrap(), b"data");
            s.assert_untouched(&outside, &victim);
        }
    }

    #[test]
    fn symlinks_at_the_staging_names_are_never_followed() {
        let Some(s) = setup(true) else { return };
        let (outside, victim) = s.outside();
        let dir = s.root.join("d");
        let tmp = s.temp_file(1, b"data");
        // `.fupload` itself: refused.
        symlink(&outside, s.root.join(STAGING_DIR)).unwrap();
        let refused = place(&tmp, Some(&s.root), &dir, "f.bin", 1, false);
        assert!(matches!(refused, Err(PlaceError::LeavesStoreDir(_))), "{refused:?}");
        assert!(staged_partials(&s.root).is_err());
        s.assert_untouched(&outside, &victim);
        // The partial in `.fupload`: replaced, the file outside unchanged.
        fs::remove_file(s.root.join(STAGING_DIR)).unwrap();
        fs::create_dir(s.root.join(STAGING_DIR)).unwrap();
        symlink(&victim, s.root.join(STAGING_DIR).join(staged_name(1))).unwrap();
        assert_eq!(fs::read(place(&tmp, Some(&s.root), &dir, "f.bin", 1, false).unwrap()).unwrap(), b"data");
        s.assert_untouched(&outside, &victim);
        // The in-directory partial (no root: staged in the target directory).
        symlink(&victim, dir.join(in_dir_staged_name(2))).unwrap();
        let tmp = s.temp_file(2, b"more");
        let placed = place(&tmp, None, &dir, "g.bin", 2, false).unwrap();
        assert_eq!(fs::read(&placed).unwrap(), b"more");
        s.assert_untouched(&outside, &victim);
        remove_partial(None, &dir, 2).unwrap();
        assert_eq!(names_in(&dir), ["f.bin", "g.bin"]);
    }

    #[test]
    fn staging_falls_back_to_the_target_directory_when_it_cannot_be_linked_from_fupload() {
        // `.fupload` on another file system than the target (a mount below storeDir) is
        // imitated with a staging directory on /dev/shm and the target on the temp dir.
        let Some(s) = setup(true) else { return };
        let target = s.root.join("d");
        fs::create_dir_all(&target).unwrap();
        let (staging, dir_fd) = (open_dir(&s.tmp_in).unwrap(), open_dir(&target).unwrap());
        let tmp = s.temp_file(3, b"data");
        let placed = copy_and_link(&tmp, Some(&staging), &dir_fd, "f.bin", 3).unwrap();
        assert_eq!(placed, "f.bin");
        assert_eq!(copy_and_link(&tmp, Some(&staging), &dir_fd, "f.bin", 3).unwrap(), placed, "found again");
        assert_eq!(names_in(&target), [in_dir_staged_name(3), "f.bin".to_owned()]);
        assert!(!s.tmp_in.join(staged_name(3)).exists(), "the copy that could not be linked is gone");
        remove_partial(Some(&s.root), &target, 3).unwrap();
        assert_eq!(names_in(&target), ["f.bin"]);
    }

    #[test]
    fn a_file_named_like_its_own_partial_is_not_lost() {
        let Some(s) = setup(true) else { return };
        let tmp = s.temp_file(4, b"data");
        let name = in_dir_staged_name(4);
        let placed = place(&tmp, None, &s.root, &name, 4, false).unwrap();
        remove_partial(None, &s.root, 4).unwrap();
        assert_eq!(fs::read(placed).unwrap(), b"data");
    }

    #[test]
    fn links_that_stay_inside_the_root_are_followed() {
        for across in [false, true] {
            let Some(s) = setup(across) else { continue };
            fs::create_dir_all(s.root.join("real/b")).unwrap();
            symlink(s.root.join("real"), s.root.join("inner")).unwrap();
            symlink("b", s.root.join("real/relative")).unwrap();
            for (i, dir) in ["inner/b/c", "real/relative", "inner/relative/new"].into_iter().enumerate() {
                let tmp = s.temp_file(i as i64, b"data");
                let placed = place(&tmp, Some(&s.root), &s.root.join(dir), "f.bin", i as i64, false).unwrap();
                assert_eq!(placed, s.root.join(dir).join("f.bin"));
                assert!(placed.canonicalize().unwrap().starts_with(s.root.join("real/b")));
            }
        }
    }

    #[test]
    fn a_missing_store_dir_is_made_again_with_a_warning() {
        let Some(s) = setup(false) else { return };
        fs::remove_dir(&s.root).unwrap();
        let tmp = s.temp_file(1, b"data");
        let (placed, logged) = crate::telemetry::capture_logs(crate::config::LogFormat::Pretty, || {
            place(&tmp, Some(&s.root), &s.root.join("a"), "f.bin", 1, false)
        });
        assert_eq!(fs::read(placed.unwrap()).unwrap(), b"data");
        assert!(logged.contains("WARN") && logged.contains("storeDir is missing"), "{logged}");
    }

    #[test]
    fn staged_partials_are_the_task_ids_in_fupload() {
        let Some(s) = setup(false) else { return };
        assert!(staged_partials(&s.root).unwrap().is_empty(), "no .fupload yet");
        let staging = s.root.join(STAGING_DIR);
        fs::create_dir(&staging).unwrap();
        for name in ["task-3.partial", "task-12.partial", "task-x.partial", "notes.txt"] {
            fs::write(staging.join(name), b"").unwrap();
        }
        let mut task_ids = staged_partials(&s.root).unwrap();
        task_ids.sort();
        assert_eq!(task_ids, [3, 12]);
        remove_partial(Some(&s.root), &s.root.join("never-made"), 3).unwrap();
        assert_eq!(names_in(&staging), ["notes.txt", "task-12.partial", "task-x.partial"]);
    }

    #[test]
    fn symlinks_out_of_the_root_are_not_confined() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("link")).unwrap();
        assert!(is_confined(&root, &root.join("a/b")).unwrap());
        assert!(!is_confined(&root, &root.join("link/b")).unwrap());
        assert!(!is_confined(&root, &outside).unwrap());
        // A link that stays inside is followed, not refused.
        fs::create_dir_all(root.join("real/b")).unwrap();
        symlink(root.join("real"), root.join("inner")).unwrap();
        assert!(is_confined(&root, &root.join("inner/b/c")).unwrap());
        assert!(is_confined(&root, &root.join("real/b/c/d")).unwrap());
        // Through a link to the root itself, as the old check did.
        symlink(&root, dir.path().join("root-link")).unwrap();
        assert!(is_confined(&dir.path().join("root-link"), &root.join("real/b")).unwrap());
        assert!(is_confined(&root, &dir.path().join("root-link/real")).unwrap());
        assert!(is_confined(&dir.path().join("missing"), &root).is_err(), "a missing root is an error");
    }
}
