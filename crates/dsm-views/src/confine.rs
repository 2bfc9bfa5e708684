//! Path confinement: a peer names a file relative to the master's root and may never reach
//! anything outside it (the master may run as root).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// Longest path a peer may request, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Suffix of journal file names; requests for such names are refused.
pub(crate) const JOURNAL_SUFFIX: &str = ".dsm-journal";

/// Resolves `requested` under `root`, refusing anything that could lead outside it.
///
/// Refused: an empty path, a NUL byte, an absolute path, a `..` component, a path over
/// [`MAX_PATH_LEN`], a journal's name, and a symlink anywhere on the path whose target lies
/// outside the canonical root or does not exist (following a dangling link to create a file
/// could create it anywhere). `.` components are ignored.
///
/// The result is absolute and free of symlinks up to the first component that does not exist
/// yet. The check is done once: a local user who swaps a directory for a symlink between this
/// call and the `open` is not defended against (peers cannot, they only send requests); the
/// master file itself is opened with `O_NOFOLLOW`.
pub fn confine(root: &Path, requested: &str) -> Result<PathBuf> {
    let relative = check_syntax(requested)?;
    let root = canonical(root)?;
    let mut resolved = root.clone();
    let mut components = relative.components();
    // One pass per component; the path has at most MAX_PATH_LEN of them.
    for component in components.by_ref() {
        let Component::Normal(name) = component else {
            continue; // `.` (CurDir); `..` and roots were refused above.
        };
        resolved.push(name);
        match fs::symlink_metadata(&resolved) {
            Ok(meta) if meta.file_type().is_symlink() => {
                resolved = follow(&root, &resolved)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(source) => {
                return Err(Error::Resolve {
                    path: resolved,
                    source,
                });
            }
        }
    }
    // The rest does not exist yet: plain names, nothing to follow.
    resolved.extend(components.filter(|c| matches!(c, Component::Normal(_))));
    // A symlink inside the root may still lead to a journal.
    if is_journal_name(&resolved) {
        return Err(Error::PathReserved(requested.to_owned()));
    }
    Ok(resolved)
}

fn check_syntax(requested: &str) -> Result<&Path> {
    if requested.is_empty() {
        return Err(Error::PathEmpty);
    }
    if requested.len() > MAX_PATH_LEN {
        return Err(Error::PathTooLong {
            len: requested.len(),
            limit: MAX_PATH_LEN,
        });
    }
    if requested.contains('\0') {
        return Err(Error::PathNul);
    }
    let path = Path::new(requested);
    if path.is_absolute() {
        return Err(Error::PathAbsolute(requested.to_owned()));
    }
    let mut names = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => names += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err(Error::PathParent(requested.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::PathAbsolute(requested.to_owned()));
            }
        }
    }
    if names == 0 {
        return Err(Error::PathEmpty); // only `.` components: names the root itself
    }
    if is_journal_name(path) {
        return Err(Error::PathReserved(requested.to_owned()));
    }
    Ok(path)
}

fn is_journal_name(path: &Path) -> bool {
    path.file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.ends_with(JOURNAL_SUFFIX))
}

fn canonical(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|source| Error::Resolve {
        path: path.to_owned(),
        source,
    })
}

/// Resolves the symlink at `link` fully and checks that it stays under `root`.
fn follow(root: &Path, link: &Path) -> Result<PathBuf> {
    let target = match fs::canonicalize(link) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::DanglingSymlink(link.to_owned()));
        }
        Err(source) => {
            return Err(Error::Resolve {
                path: link.to_owned(),
                source,
            });
        }
    };
    if !target.starts_with(root) {
        return Err(Error::PathEscapes {
            path: link.to_owned(),
            target,
        });
    }
    Ok(target)
}
