//! Where a task's file may go: `storePath` resolved against `storeDir` by path arithmetic alone.
//! (Symlinks are the file system's business: `blob::confine` checks them.)

use std::path::{Component, Path, PathBuf};

use super::FieldError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorePathError {
    /// The text itself is unusable (control characters, backslashes).
    Invalid(FieldError),
    /// The path leaves `storeDir`: it resolves to this path, or (`None`) its `..` climb above the root.
    Escapes(Option<PathBuf>),
}

/// Resolves `requested` into an absolute, `..`-free directory inside `store_dir`.
///
/// `store_dir` must be absolute. `None` means the config's `storeDir: ""`: any absolute path
/// is allowed, as the original did, and a relative one is taken from `cwd`.
pub fn resolve(store_dir: Option<&Path>, cwd: &Path, requested: &str) -> Result<PathBuf, StorePathError> {
    if requested.chars().any(char::is_control) || requested.contains('\\') {
        return Err(StorePathError::Invalid(FieldError::new(
            "storePath",
            "must not contain control characters or backslashes",
        )));
    }
    let requested = Path::new(requested);
    let base = store_dir.unwrap_or(cwd);
    let joined = if requested.is_absolute() { requested.to_path_buf() } else { base.join(requested) };
    let resolved = normalize(&joined).ok_or(StorePathError::Escapes(None))?;
    match store_dir {
        Some(root) if !resolved.starts_with(normalize(root).ok_or(StorePathError::Escapes(None))?) => {
            Err(StorePathError::Escapes(Some(resolved)))
        }
        _ => Ok(resolved),
    }
}

/// Removes `.` and folds `..` into its parent; `None` if `..` climbs above the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_store(requested: &str) -> Result<PathBuf, StorePathError> {
        resolve(Some(Path::new("/srv/store")), Path::new("/cwd"), requested)
    }

    #[test]
    fn relative_paths_land_under_store_dir() {
        assert_eq!(in_store("hello/").unwrap(), Path::new("/srv/store/hello"));
        assert_eq!(in_store("").unwrap(), Path::new("/srv/store"));
        assert_eq!(in_store("./a/./b/../c").unwrap(), Path::new("/srv/store/a/c"));
        assert_eq!(in_store("..ab/").unwrap(), Path::new("/srv/store/..ab"));
    }

    #[test]
    fn absolute_paths_must_stay_inside() {
        assert_eq!(in_store("/srv/store/videos/2026/").unwrap(), Path::new("/srv/store/videos/2026"));
        assert_eq!(in_store("/srv/store").unwrap(), Path::new("/srv/store"));
        for escape in ["/etc", "/srv/storex/a", "/srv/store/../x", "../x", "a/../../x", "/../../etc", "a/../.."] {
            assert!(matches!(in_store(escape), Err(StorePathError::Escapes(_))), "{escape}");
        }
        assert_eq!(in_store("/etc/x/"), Err(StorePathError::Escapes(Some(PathBuf::from("/etc/x")))));
        assert_eq!(in_store("../../../.."), Err(StorePathError::Escapes(None)));
    }

    #[test]
    fn unusable_text_is_a_parameter_error() {
        for bad in ["a\0b", "a\nb", "..\\..\\windows"] {
            assert!(matches!(in_store(bad), Err(StorePathError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn empty_store_dir_allows_any_absolute_path() {
        let open = |p| resolve(None, Path::new("/cwd"), p);
        assert_eq!(open("/var/data/x").unwrap(), Path::new("/var/data/x"));
        assert_eq!(open("rel").unwrap(), Path::new("/cwd/rel"));
        assert_eq!(open("/.."), Err(StorePathError::Escapes(None)));
    }
}
