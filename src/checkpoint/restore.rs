//! Finding a checkpoint to restore from, and the restore modes.
//!
//! A restore target may be given as `chk-<N>/_metadata`, as a `chk-<N>` directory, as a
//! job directory (meaning its latest completed checkpoint), or as a savepoint: its
//! directory or its `_metadata` (a savepoint is self-contained, so its directory is the
//! root its paths start from). Nothing here modifies the
//! target: what the new job may do with it is its [`RestoreMode`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use super::ids::CheckpointId;
use super::metadata::{FileHandle, FileRole, Metadata, BODY_OFFSET, METADATA_FILE_NAME};
use super::path::{check_handle_path, checkpoint_dirs, lexical_problem};
use super::storage::{CheckpointStorage, LocalStorage};
use super::verify::{verify, VerifyReport};
use crate::error::{Error, Result};
use crate::fs::{parent_dir, FileSystem, Placement};

/// What a restored job may do with the checkpoint it started from (Flink's
/// `execution.state-recovery.claim-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreMode {
    /// The job continues in the restored checkpoint's job directory and owns it:
    /// retention deletes the restored checkpoint once newer ones subsume it.
    Claim,
    /// The restored checkpoint is never modified or deleted; new checkpoints go to the new
    /// job's directory and the first one is full.
    #[default]
    NoClaim,
}

impl RestoreMode {
    /// Flink's name (`CLAIM`, `NO_CLAIM`).
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::Claim => "CLAIM",
            RestoreMode::NoClaim => "NO_CLAIM",
        }
    }
}

impl fmt::Display for RestoreMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RestoreMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "CLAIM" => Ok(RestoreMode::Claim),
            "NO_CLAIM" | "NOCLAIM" => Ok(RestoreMode::NoClaim),
            _ => Err(Error::InvalidOptions(format!(
                "restore mode {s:?}: expected claim or no_claim"
            ))),
        }
    }
}

/// Where a job was restored from, for [`super::CheckpointConfig::restored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInfo {
    /// The restored checkpoint's job directory.
    pub job_dir: PathBuf,
    /// The restored checkpoint.
    pub checkpoint_id: CheckpointId,
    /// Claim or no-claim.
    pub mode: RestoreMode,
}

/// A completed checkpoint (or savepoint) found by [`resolve`].
#[derive(Debug, Clone)]
pub struct ResolvedCheckpoint {
    /// The directory the checkpoint's relative paths start from: its job directory, or a
    /// savepoint's own directory.
    pub job_dir: PathBuf,
    /// The checkpoint's id.
    pub checkpoint_id: CheckpointId,
    /// Its `_metadata` file.
    pub metadata_path: PathBuf,
    /// The decoded `_metadata`.
    pub metadata: Metadata,
}

impl ResolvedCheckpoint {
    /// A storage reading the checkpoint's job directory (a savepoint's own directory).
    pub fn storage(&self, fs: Arc<dyn FileSystem>) -> LocalStorage {
        LocalStorage::at_job_dir(fs, self.job_dir.clone(), self.metadata.job_id.clone())
    }

    /// What a store of the restored job needs to know about where it came from.
    pub fn restore_info(&self, mode: RestoreMode) -> RestoreInfo {
        RestoreInfo {
            job_dir: self.job_dir.clone(),
            checkpoint_id: self.checkpoint_id,
            mode,
        }
    }

    /// Verifies every referenced file (see [`verify`]).
    pub fn verify(&self, fs: Arc<dyn FileSystem>) -> VerifyReport {
        verify(&self.storage(fs), &self.metadata)
    }

    /// Verifies the checkpoint and refuses it ([`Error::VerifyFailed`]) when a problem is
    /// found, unless `allow_unverified` is set (the report then lists the problems).
    pub fn check(&self, fs: Arc<dyn FileSystem>, allow_unverified: bool) -> Result<VerifyReport> {
        let report = self.verify(fs);
        if allow_unverified {
            for p in &report.problems {
                tracing::warn!("restoring an unverified checkpoint: {p}");
            }
            return Ok(report);
        }
        report.into_result()
    }
}

fn not_found(path: &Path, reason: impl Into<String>) -> Error {
    Error::CheckpointNotFound {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn is_dir(fs: &dyn FileSystem, path: &Path) -> bool {
    fs.list_dir(path).is_ok()
}

fn dir_checkpoint_id(dir: &Path) -> Option<CheckpointId> {
    CheckpointId::from_dir_name(dir.file_name()?.to_str()?)
}

/// Refuses a `chk-<N>` that is a symlink: a checkpoint directory lies in its job
/// directory, and a link would make another job's (or another checkpoint's) files pass for
/// this one's.
fn refuse_symlinked_dir(chk_dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(chk_dir) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::UnsafePath {
            path: parent_dir(chk_dir).to_path_buf(),
            entry: chk_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            reason: format!(
                "{} is a symbolic link; a checkpoint directory must be a directory of its job directory",
                chk_dir.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// Reads `<chk_dir>/_metadata` and checks that it describes checkpoint `id`.
fn load(fs: &dyn FileSystem, chk_dir: &Path, id: CheckpointId) -> Result<ResolvedCheckpoint> {
    refuse_symlinked_dir(chk_dir)?;
    let metadata_path = chk_dir.join(METADATA_FILE_NAME);
    if !fs.exists(&metadata_path) {
        return Err(not_found(
            chk_dir,
            format!(
                "{} has no {METADATA_FILE_NAME}: the checkpoint never completed",
                id.dir_name()
            ),
        ));
    }
    let job_dir = parent_dir(chk_dir);
    let metadata = Metadata::read_inside(fs, job_dir, &metadata_path)?;
    if metadata.checkpoint_id != id {
        return Err(Error::corruption(
            &metadata_path,
            BODY_OFFSET as u64,
            format!(
                "describes checkpoint {} but lies in {}",
                metadata.checkpoint_id,
                id.dir_name()
            ),
        ));
    }
    Ok(ResolvedCheckpoint {
        job_dir: job_dir.to_path_buf(),
        checkpoint_id: id,
        metadata_path,
        metadata,
    })
}

/// Reads the `_metadata` of the savepoint directory `dir`: it must describe a savepoint
/// (only a savepoint's `_metadata` lies outside a `chk-<N>` directory).
fn load_savepoint(fs: &dyn FileSystem, dir: &Path) -> Result<ResolvedCheckpoint> {
    let metadata_path = dir.join(METADATA_FILE_NAME);
    let metadata = Metadata::read_inside(fs, dir, &metadata_path)?;
    if !metadata.kind.is_savepoint() {
        return Err(not_found(
            &metadata_path,
            format!(
                "describes {} checkpoint {}, which lies in a chk-<N> directory of its job \
                 directory; only a savepoint's _metadata lies in a directory of its own",
                metadata.kind, metadata.checkpoint_id
            ),
        ));
    }
    Ok(ResolvedCheckpoint {
        job_dir: dir.to_path_buf(),
        checkpoint_id: metadata.checkpoint_id,
        metadata_path,
        metadata,
    })
}

/// Finds the checkpoint `path` names: a `chk-<N>/_metadata` file, a `chk-<N>` directory,
/// a job directory (its latest completed checkpoint), or a savepoint (its directory or its
/// `_metadata`). Anything else is [`Error::CheckpointNotFound`] naming the path; a damaged
/// `_metadata` is a corruption.
pub fn resolve(fs: &dyn FileSystem, path: &Path) -> Result<ResolvedCheckpoint> {
    if !fs.exists(path) {
        return Err(not_found(path, "does not exist"));
    }
    if !is_dir(fs, path) {
        if path.file_name().and_then(|n| n.to_str()) != Some(METADATA_FILE_NAME) {
            return Err(not_found(
                path,
                "expected a chk-<N>/_metadata file, a chk-<N> directory, a job directory or \
                 a savepoint",
            ));
        }
        let chk_dir = parent_dir(path);
        return match dir_checkpoint_id(chk_dir) {
            Some(id) => load(fs, chk_dir, id),
            None => load_savepoint(fs, chk_dir),
        };
    }
    if let Some(id) = dir_checkpoint_id(path) {
        return load(fs, path, id);
    }
    if fs.exists(&path.join(METADATA_FILE_NAME)) {
        return load_savepoint(fs, path);
    }
    // Entries named `chk-<N>` that are not plain directories are tried too: `load` refuses
    // them by name rather than passing over them silently.
    let dirs = checkpoint_dirs(fs.list_entries(path)?);
    let mut ids = dirs.ids;
    ids.extend(dirs.odd.iter().map(|(id, _)| *id));
    ids.sort();
    for id in ids.into_iter().rev() {
        if fs.exists(&path.join(super::path::metadata_rel(id))) {
            return load(fs, &path.join(id.dir_name()), id);
        }
    }
    Err(not_found(
        path,
        "no completed checkpoint (chk-<N>/_metadata) in this directory",
    ))
}

/// [`resolve`], then [`ResolvedCheckpoint::check`].
pub fn resolve_verified(
    fs: Arc<dyn FileSystem>,
    path: &Path,
    allow_unverified: bool,
) -> Result<ResolvedCheckpoint> {
    let resolved = resolve(fs.as_ref(), path)?;
    resolved.check(fs, allow_unverified)?;
    Ok(resolved)
}

/// Where the `_metadata` holding `handle` lies relative to its storage: `chk-<N>/_metadata`,
/// or a savepoint's own `_metadata`.
pub fn handle_metadata_rel(id: CheckpointId, handle: &FileHandle) -> String {
    match handle.role {
        FileRole::Savepoint => METADATA_FILE_NAME.to_string(),
        FileRole::Shared | FileRole::Private => super::path::metadata_rel(id),
    }
}

/// Places the checkpoint file `handle` of checkpoint `id` into the working directory
/// `dst_dir` under its local name (link, or copy), after checking both paths for safety;
/// checks the placed size. Returns the local path and how it was placed.
pub fn restore_file(
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    handle: &FileHandle,
    dst_dir: &Path,
) -> Result<(PathBuf, Placement)> {
    let metadata_path = storage.display_path(&handle_metadata_rel(id, handle));
    check_handle_path(&metadata_path, &handle.path, handle.role, id)?;
    if let Some(reason) = lexical_problem(&handle.local_name) {
        return Err(Error::UnsafePath {
            path: metadata_path,
            entry: handle.local_name.clone(),
            reason,
        });
    }
    let dst = dst_dir.join(&handle.local_name);
    let placement = storage.fetch(&handle.path, &dst)?;
    let size = std::fs::symlink_metadata(&dst)
        .map_err(|e| Error::io("stat", &dst, e))?
        .len();
    if size != handle.size {
        return Err(Error::VerifyFailed {
            problems: vec![format!(
                "wrong size: {}: expected {} bytes, found {size}",
                storage.display_path(&handle.path).display(),
                handle.size
            )],
        });
    }
    Ok((dst, placement))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ids::CheckpointKind::Incremental;
    use crate::checkpoint::testutil::{abs, Fixture};

    const A: (&str, &[u8]) = ("000001.sst", b"aaaaaaaaaa");
    const B: (&str, &[u8]) = ("000002.sst", b"bbbbbbbbbbbbbbbbbbbb");

    #[test]
    fn resolve_accepts_metadata_file_checkpoint_dir_and_job_dir() {
        let fx = Fixture::new();
        let store = fx.retaining(2);
        fx.checkpoint(&store, 1, Incremental, &[A]);
        fx.checkpoint(&store, 2, Incremental, &[A, B]);
        // An unfinished newer checkpoint is passed over when resolving a job directory.
        std::fs::create_dir_all(fx.job_dir().join("chk-3")).unwrap();
        let fs = fx.fs.as_ref();
        let by_file = resolve(fs, &fx.job_dir().join("chk-1/_metadata")).unwrap();
        assert_eq!(by_file.checkpoint_id, CheckpointId(1));
        assert_eq!(by_file.job_dir, fx.job_dir());
        let by_dir = resolve(fs, &fx.job_dir().join("chk-1")).unwrap();
        assert_eq!(by_dir.metadata, by_file.metadata);
        let by_job = resolve(fs, &fx.job_dir()).unwrap();
        assert_eq!(by_job.checkpoint_id, CheckpointId(2));
        assert_eq!(by_job.metadata_path, fx.job_dir().join("chk-2/_metadata"));
        assert!(by_job.check(Arc::clone(&fx.fs), false).unwrap().is_ok());
    }

    #[test]
    fn resolve_names_the_path_when_there_is_no_checkpoint() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        fx.checkpoint(&store, 1, Incremental, &[A]);
        std::fs::create_dir_all(fx.job_dir().join("chk-9")).unwrap();
        let fs = fx.fs.as_ref();
        for p in [
            fx.job_dir().join("nope"),
            fx.job_dir().join("chk-9"),
            fx.job_dir().join("shared"),
            fx.job_dir().join("chk-1/op_0.manifest"),
        ] {
            match resolve(fs, &p) {
                Err(Error::CheckpointNotFound { path, reason }) => {
                    assert_eq!(path, p, "{reason}")
                }
                other => panic!("{}: {other:?}", p.display()),
            }
        }
    }

    #[test]
    fn unverified_checkpoint_is_refused_unless_allowed() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let c = fx.checkpoint(&store, 1, Incremental, &[A, B]);
        let a = c
            .metadata
            .file_handles()
            .find(|f| f.local_name == A.0)
            .unwrap();
        std::fs::remove_file(abs(&fx, a)).unwrap();
        let fs = Arc::clone(&fx.fs);
        match resolve_verified(Arc::clone(&fs), &fx.job_dir(), false) {
            Err(Error::VerifyFailed { problems }) => {
                assert_eq!(problems.len(), 1);
                assert!(problems[0].starts_with("missing: ") && problems[0].contains(&a.path));
            }
            other => panic!("{other:?}"),
        }
        let r = resolve_verified(fs, &fx.job_dir(), true).unwrap();
        assert_eq!(r.checkpoint_id, CheckpointId(1));
    }

    #[test]
    fn restore_file_places_the_file_under_its_local_name() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let c = fx.checkpoint(&store, 1, Incremental, &[A]);
        let r = resolve(fx.fs.as_ref(), &fx.job_dir()).unwrap();
        let storage = r.storage(Arc::clone(&fx.fs));
        let out = fx.dir.path().join("restored");
        std::fs::create_dir_all(&out).unwrap();
        for h in c.metadata.file_handles() {
            let (p, _) = restore_file(&storage, r.checkpoint_id, h, &out).unwrap();
            assert_eq!(p, out.join(&h.local_name));
        }
        assert_eq!(std::fs::read(out.join(A.0)).unwrap(), A.1);
        let mut bad = c.metadata.file_handles().next().unwrap().clone();
        bad.local_name = "../escape".into();
        assert!(matches!(
            restore_file(&storage, r.checkpoint_id, &bad, &out),
            Err(Error::UnsafePath { .. })
        ));
    }

    #[test]
    fn restore_modes_parse_flink_spellings() {
        assert_eq!("claim".parse::<RestoreMode>().unwrap(), RestoreMode::Claim);
        assert_eq!(
            "NO_CLAIM".parse::<RestoreMode>().unwrap(),
            RestoreMode::NoClaim
        );
        assert_eq!(
            "no-claim".parse::<RestoreMode>().unwrap(),
            RestoreMode::NoClaim
        );
        assert!("legacy".parse::<RestoreMode>().is_err());
        assert_eq!(RestoreMode::default(), RestoreMode::NoClaim);
    }
}
