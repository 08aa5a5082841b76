//! Path safety: a path read from a checkpoint may name only a file inside the job directory.
//!
//! Two layers, both needed:
//! - lexical: relative, `/`-separated, only normal components, and in its place
//!   (`shared/…` for shared files, `chk-<N>/…` of its own checkpoint for private files);
//! - physical: when a file is opened, its canonical path (symlinks resolved) must still lie
//!   under the canonical job directory.

use std::io;
use std::path::Path;

use super::ids::CheckpointId;
use super::metadata::{FileRole, METADATA_FILE_NAME};
use crate::error::{Error, Result};
use crate::fs::DirEntryInfo;

/// The directory of shared files, relative to the job directory.
pub const SHARED_DIR: &str = "shared";
/// The directory of task-owned files, relative to the job directory.
pub const TASKOWNED_DIR: &str = "taskowned";

/// `chk-<N>/_metadata`: where checkpoint `id`'s `_metadata` lies, relative to the job
/// directory (the one place this path is built).
pub fn metadata_rel(id: CheckpointId) -> String {
    format!("{}/{METADATA_FILE_NAME}", id.dir_name())
}

/// What a job directory's listing holds where checkpoints live.
#[derive(Debug, Default)]
pub struct CheckpointDirs {
    /// The `chk-<N>` directories, by id, oldest first.
    pub ids: Vec<CheckpointId>,
    /// Entries named `chk-<N>` that are not plain directories (a file, a link...): not
    /// checkpoints, but their ids are taken.
    pub odd: Vec<(CheckpointId, DirEntryInfo)>,
}

/// Sorts a job directory's `entries` (as [`crate::fs::FileSystem::list_entries`] gives
/// them) into its checkpoint directories and the odd entries named like them; every other
/// entry is passed over (the one scan of a job directory for checkpoints).
pub fn checkpoint_dirs(entries: Vec<DirEntryInfo>) -> CheckpointDirs {
    let mut out = CheckpointDirs::default();
    for e in entries {
        let Some(id) = CheckpointId::from_dir_name(&e.name).filter(|_| e.utf8) else {
            continue;
        };
        if e.is_plain_dir() {
            out.ids.push(id);
        } else {
            out.odd.push((id, e));
        }
    }
    out.ids.sort();
    out
}

/// Why a relative storage path is lexically unsafe, or `None` when it is a sequence of
/// normal components.
pub fn lexical_problem(entry: &str) -> Option<String> {
    if entry.is_empty() {
        return Some("empty path".into());
    }
    if entry.contains('\0') {
        return Some("contains a NUL byte".into());
    }
    if entry.contains('\\') {
        return Some("contains a backslash".into());
    }
    if entry.starts_with('/') {
        return Some("absolute path".into());
    }
    for component in entry.split('/') {
        match component {
            "" => return Some("empty component (`//` or a trailing `/`)".into()),
            "." => return Some("`.` component".into()),
            ".." => return Some("`..` component".into()),
            _ => {}
        }
    }
    None
}

/// Why `entry` may not be the path of a `role` file of checkpoint `id`, or `None` when it
/// may: lexically safe, and under `shared/` (shared) or `chk-<id>/` (private); a savepoint
/// file anywhere in its savepoint directory but `_metadata` itself.
pub fn handle_path_problem(entry: &str, role: FileRole, id: CheckpointId) -> Option<String> {
    if let Some(p) = lexical_problem(entry) {
        return Some(p);
    }
    let expected = match role {
        FileRole::Shared => "shared/".to_string(),
        FileRole::Private => format!("{}/", id.dir_name()),
        FileRole::Savepoint => {
            let reserved = entry.split('/').next() == Some(super::METADATA_FILE_NAME);
            return reserved.then(|| "a savepoint file may not be named _metadata".to_string());
        }
    };
    let Some((first, rest)) = entry.split_once('/') else {
        return Some(format!(
            "a {} file must lie under {expected}",
            role.as_str()
        ));
    };
    let first_ok = match role {
        FileRole::Shared => first == "shared",
        FileRole::Private => first == id.dir_name(),
        FileRole::Savepoint => true,
    };
    if !first_ok || rest.is_empty() {
        return Some(format!(
            "a {} file must lie under {expected}",
            role.as_str()
        ));
    }
    None
}

/// Like [`handle_path_problem`] but as an [`Error::UnsafePath`] naming `file` (the
/// `_metadata` that holds the entry).
pub fn check_handle_path(file: &Path, entry: &str, role: FileRole, id: CheckpointId) -> Result<()> {
    match handle_path_problem(entry, role, id) {
        None => Ok(()),
        Some(reason) => Err(Error::UnsafePath {
            path: file.to_path_buf(),
            entry: entry.to_string(),
            reason,
        }),
    }
}

use crate::fs::canonical;

/// Checks that `path` (below `job_dir`), or its nearest existing ancestor when it does not
/// exist yet, resolves inside the canonical `job_dir` once symlinks are followed.
///
/// `entry` is the relative path as written, for the error.
pub fn check_inside(job_dir: &Path, path: &Path, entry: &str) -> Result<()> {
    let root = match canonical(job_dir) {
        Ok(r) => r,
        // Nothing below a missing job directory exists, so nothing can lead out of it.
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut probe = path;
    let resolved = loop {
        match std::fs::canonicalize(probe) {
            Ok(p) => break p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match probe.parent() {
                Some(parent) if probe != job_dir => probe = parent,
                _ => return Ok(()),
            },
            Err(e) => return Err(Error::io("canonicalize", probe, e)),
        }
    };
    if resolved.starts_with(&root) {
        Ok(())
    } else {
        Err(Error::UnsafePath {
            path: job_dir.to_path_buf(),
            entry: entry.to_string(),
            reason: format!(
                "{} resolves to {} outside the job directory {}",
                path.display(),
                resolved.display(),
                root.display()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: CheckpointId = CheckpointId(7);

    #[test]
    fn traversal_and_odd_spellings_are_rejected() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "shared/../../x",
            "shared/./x",
            "shared//x",
            "shared/x/",
            "shared\\x",
            "shared/x\0",
            ".",
        ] {
            assert!(lexical_problem(bad).is_some(), "{bad:?}");
            assert!(
                handle_path_problem(bad, FileRole::Shared, ID).is_some(),
                "{bad:?}"
            );
        }
        assert!(lexical_problem("shared/a-1.sst").is_none());
    }

    #[test]
    fn files_must_sit_under_their_own_place() {
        assert!(handle_path_problem("shared/a.sst", FileRole::Shared, ID).is_none());
        assert!(handle_path_problem("chk-7/state", FileRole::Private, ID).is_none());
        assert!(handle_path_problem("chk-8/state", FileRole::Private, ID).is_some());
        assert!(handle_path_problem("chk-7/a.sst", FileRole::Shared, ID).is_some());
        assert!(handle_path_problem("shared/a.sst", FileRole::Private, ID).is_some());
        assert!(handle_path_problem("taskowned/a", FileRole::Shared, ID).is_some());
        let e = check_handle_path(
            Path::new("/j/chk-7/_metadata"),
            "a.sst",
            FileRole::Shared,
            ID,
        )
        .unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn symlink_out_of_the_job_directory_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(job.join("shared")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), job.join("shared/link")).unwrap();
        std::os::unix::fs::symlink(&outside, job.join("chk-7")).unwrap();
        let e = check_inside(&job, &job.join("shared/link"), "shared/link").unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
        // A file that does not exist yet, under a symlinked directory.
        let e = check_inside(&job, &job.join("chk-7/new"), "chk-7/new").unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
        std::fs::write(job.join("shared/ok"), b"y").unwrap();
        check_inside(&job, &job.join("shared/ok"), "shared/ok").unwrap();
        check_inside(&job, &job.join("shared/not-yet"), "shared/not-yet").unwrap();
    }
}
