//! Reading the model folder's files with errors that say what is wrong with the path: missing, a
//! directory or a FIFO in its place (checked before opening: opening a FIFO would block for
//! ever), unreadable, a symlink loop, not UTF-8.

use std::io::{ErrorKind, Read};
use std::path::{Component, Path};

use crate::error::{Error, Result};

/// What to do when the file does not exist.
#[derive(Clone, Copy)]
pub(crate) enum IfMissing {
    /// It is required: an `Error::MissingFile` with this hint.
    Fail(&'static str),
    /// It is optional: `Ok(None)`.
    Skip,
}

fn problem(path: &Path, what: &'static str, problem: String) -> Error {
    Error::ModelFile {
        path: path.to_path_buf(),
        what,
        problem,
    }
}

fn io_problem(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied => {
            "cannot be read: permission denied (give the process read access to it)".into()
        }
        _ if e.raw_os_error() == Some(40) => {
            "is a symlink loop (a link that points back to itself); replace it with the file".into()
        }
        _ => format!("cannot be read: {e}"),
    }
}

/// Check that `path` is a regular file that can be opened (following symlinks), without ever
/// opening anything else. `Ok(false)` when it does not exist and `missing` is `Skip`.
pub(crate) fn check_regular(path: &Path, what: &'static str, missing: IfMissing) -> Result<bool> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(problem(
                    path,
                    what,
                    "is a symlink to a file that does not exist".into(),
                ));
            }
            return match missing {
                IfMissing::Skip => Ok(false),
                IfMissing::Fail(hint) => Err(Error::MissingFile {
                    path: path.to_path_buf(),
                    what,
                    hint,
                }),
            };
        }
        Err(e) => return Err(problem(path, what, io_problem(&e))),
    };
    if meta.is_dir() {
        return Err(problem(path, what, "is a directory, not a file".into()));
    }
    if !meta.is_file() {
        return Err(problem(
            path,
            what,
            "is not a regular file (a FIFO, socket or device); setblock reads only regular files"
                .into(),
        ));
    }
    std::fs::File::open(path).map_err(|e| problem(path, what, io_problem(&e)))?;
    Ok(true)
}

/// Read a UTF-8 text file of the model folder (a leading byte-order mark is dropped).
pub(crate) fn read_text(
    path: &Path,
    what: &'static str,
    missing: IfMissing,
) -> Result<Option<String>> {
    if !check_regular(path, what, missing)? {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| problem(path, what, io_problem(&e)))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        problem(
            path,
            what,
            format!(
                "is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    Ok(Some(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    }))
}

/// True when `name` is a relative path that stays inside the folder (no `..`, not absolute).
pub(crate) fn inside_folder(name: &str) -> bool {
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}
