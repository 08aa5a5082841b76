//! Savepoints: user-triggered, self-contained snapshots in a directory of their own
//! (Flink's layout):
//!
//! ```text
//! <savepoints-dir>/savepoint-<first 6 characters of the job id>-<12 random hex digits>/
//!     _metadata    written last, durably: its presence marks the savepoint complete
//!     ...          every file the savepoint references, paths relative to this directory
//! ```
//!
//! A savepoint references nothing outside its directory (no `shared/` of a job: an LSM
//! store's tables are hard-linked or copied in), so the directory can be moved or copied
//! elsewhere and still restores, through a storage rooted at it
//! ([`super::ResolvedCheckpoint::storage`]). It belongs to the user, not to the job: no
//! retention ever deletes it. Its `_metadata` (version 3) records that it is a savepoint
//! and its format ([`SavepointFormat`]), and every file handle has the role
//! [`FileRole::Savepoint`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ids::{CheckpointId, CheckpointKind, JobId, SavepointFormat};
use super::metadata::{FileHandle, FileRole, Metadata, METADATA_FILE_NAME};
use super::path::lexical_problem;
use super::pending::CheckpointContent;
use super::storage::{CheckpointStorage, LocalStorage};
use super::target::{check_local_name, PrivateWrite, SnapshotTarget};
use crate::codec;
use crate::error::{Error, Result};
use crate::fs::{parent_dir, temp_path, FileSystem, WritableFile};

/// Prefix of a savepoint directory's name.
pub const SAVEPOINT_DIR_PREFIX: &str = "savepoint-";

/// A savepoint being written: files are placed into its directory, then it is committed
/// (its `_metadata` written) or aborted (its directory removed). Dropping it without either
/// aborts it.
#[derive(Debug)]
pub struct PendingSavepoint {
    fs: Arc<dyn FileSystem>,
    storage: LocalStorage,
    dir: PathBuf,
    id: CheckpointId,
    format: SavepointFormat,
    trigger_timestamp_ms: u64,
    /// Paths (relative to the directory) written or placed so far (by several subtasks
    /// at once).
    files: parking_lot::Mutex<BTreeSet<String>>,
    finished: bool,
}

/// A savepoint whose `_metadata` is durable.
#[derive(Debug, Clone)]
pub struct CompletedSavepoint {
    /// The savepoint directory.
    pub dir: PathBuf,
    /// Its `_metadata`.
    pub metadata_path: PathBuf,
    /// What the `_metadata` holds.
    pub metadata: Metadata,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `name` with every character but `[A-Za-z0-9._-]` replaced by `_`, for file names.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl PendingSavepoint {
    /// Starts savepoint `id` of job `job_id` in `format`: creates a fresh directory
    /// `savepoint-<job>-<random>` under `savepoints_dir` (Flink's
    /// `state.savepoints.dir`).
    pub fn begin(
        fs: Arc<dyn FileSystem>,
        savepoints_dir: &Path,
        job_id: &JobId,
        id: CheckpointId,
        format: SavepointFormat,
    ) -> Result<PendingSavepoint> {
        let short: String = job_id.as_str().chars().take(6).collect();
        let random: String = JobId::random().as_str().chars().take(12).collect();
        let dir = savepoints_dir.join(format!("{SAVEPOINT_DIR_PREFIX}{short}-{random}"));
        if fs.exists(&dir) {
            return Err(Error::InvalidArgument(format!(
                "savepoint directory {} already exists",
                dir.display()
            )));
        }
        fs.create_dir_all(&dir)?;
        fs.sync_dir(savepoints_dir)?;
        Ok(PendingSavepoint {
            storage: LocalStorage::at_job_dir(fs.clone(), dir.clone(), job_id.clone()),
            fs,
            dir,
            id,
            format,
            trigger_timestamp_ms: now_ms(),
            files: parking_lot::Mutex::new(BTreeSet::new()),
            finished: false,
        })
    }

    /// The savepoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The savepoint's format.
    pub fn format(&self) -> SavepointFormat {
        self.format
    }

    /// A new file `name` of the savepoint: a safe relative path, not `_metadata`, not yet
    /// used; its parent directories are made.
    fn new_file(&self, name: &str) -> Result<String> {
        if let Some(reason) = lexical_problem(name) {
            return Err(Error::InvalidArgument(format!(
                "savepoint file name {name:?}: {reason}"
            )));
        }
        if name.starts_with(METADATA_FILE_NAME) {
            return Err(Error::InvalidArgument(format!(
                "savepoint file name {name:?} is reserved"
            )));
        }
        if !self.files.lock().insert(name.to_string()) {
            return Err(Error::InvalidArgument(format!(
                "savepoint file {name} was already placed"
            )));
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.storage.create_dir_all(parent)?;
        }
        Ok(name.to_string())
    }

    fn handle(&self, local_name: &str, path: String, size: u64, crc32c: u32) -> FileHandle {
        FileHandle {
            role: FileRole::Savepoint,
            local_name: local_name.to_string(),
            path,
            size,
            crc32c,
        }
    }

    /// Completes the savepoint: makes its directory durable, then writes `_metadata`
    /// atomically (from this moment the savepoint exists). On a failure the savepoint is
    /// aborted.
    pub fn commit(mut self, content: CheckpointContent) -> Result<CompletedSavepoint> {
        let result = self.commit_inner(content);
        if result.is_err() {
            if let Err(e) = self.abort_inner() {
                tracing::warn!("aborting savepoint {} after a failed commit: {e}", self.id);
            }
        }
        result
    }

    fn commit_inner(&mut self, content: CheckpointContent) -> Result<CompletedSavepoint> {
        for s in &content.operator_states {
            for f in s.file_handles() {
                if f.role != FileRole::Savepoint || !self.files.lock().contains(&f.path) {
                    return Err(Error::InvalidArgument(format!(
                        "savepoint {}: handle {} ({} file) was not placed by it",
                        self.id,
                        f.path,
                        f.role.as_str()
                    )));
                }
            }
        }
        let metadata_path = self.dir.join(METADATA_FILE_NAME);
        let metadata = Metadata {
            checkpoint_id: self.id,
            job_id: self.storage.job_id().clone(),
            kind: self.format.kind(),
            trigger_timestamp_ms: self.trigger_timestamp_ms,
            completion_timestamp_ms: now_ms(),
            operator_states: content.operator_states,
            source_offsets: content.source_offsets,
            properties: content.properties,
        };
        metadata.validate(&metadata_path)?;
        // Every file's bytes were synced as it was written or placed; their names now.
        let files = self.files.lock().clone();
        let dirs: BTreeSet<&str> = files
            .iter()
            .filter_map(|f| f.rsplit_once('/').map(|(d, _)| d))
            .collect();
        for d in dirs {
            self.storage.sync_dir(d)?;
        }
        self.storage.sync_dir("")?;
        self.storage
            .write_atomic(METADATA_FILE_NAME, &metadata.encode())?;
        self.finished = true;
        Ok(CompletedSavepoint {
            dir: self.dir.clone(),
            metadata_path,
            metadata,
        })
    }

    /// Gives the savepoint up: removes its directory.
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }

    fn abort_inner(&mut self) -> Result<()> {
        self.finished = true;
        if self.fs.exists(&self.dir) {
            self.fs.remove_dir_all(&self.dir)?;
        }
        self.fs.sync_dir(parent_dir(&self.dir))
    }
}

impl Drop for PendingSavepoint {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.abort_inner() {
                tracing::warn!(
                    "removing the unfinished savepoint {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}

/// A savepoint file being written: each write is appended and added to the running
/// crc32c. Dropped unfinished, its temporary file is removed.
struct SavepointFileWriter<'a> {
    savepoint: &'a PendingSavepoint,
    name: String,
    path: String,
    full: PathBuf,
    tmp: PathBuf,
    file: Option<Box<dyn WritableFile>>,
    size: u64,
    crc: u32,
}

impl PrivateWrite for SavepointFileWriter<'_> {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(Error::InvalidArgument(format!(
                "savepoint file {} failed earlier and cannot be written",
                self.full.display()
            )));
        };
        if let Err(e) = f.append(data) {
            self.file = None;
            return Err(e);
        }
        self.size += data.len() as u64;
        self.crc = codec::crc32c_extend(self.crc, data);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.size
    }

    fn finish(mut self: Box<Self>) -> Result<FileHandle> {
        let Some(mut f) = self.file.take() else {
            return Err(Error::InvalidArgument(format!(
                "savepoint file {} failed earlier and cannot be finished",
                self.full.display()
            )));
        };
        f.sync()?;
        drop(f);
        let fs = &self.savepoint.fs;
        fs.rename(&self.tmp, &self.full)?;
        fs.sync_dir(parent_dir(&self.full))?;
        let path = std::mem::take(&mut self.path);
        Ok(self.savepoint.handle(&self.name, path, self.size, self.crc))
    }
}

impl Drop for SavepointFileWriter<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = self.savepoint.fs.remove_file(&self.tmp);
        }
    }
}

impl SnapshotTarget for PendingSavepoint {
    fn id(&self) -> CheckpointId {
        self.id
    }

    fn kind(&self) -> CheckpointKind {
        self.format.kind()
    }

    /// Streams the file into a temporary file; `finish` fsyncs it, renames it into place
    /// and syncs its directory.
    fn private_writer(&self, name: &str) -> Result<Box<dyn PrivateWrite + '_>> {
        let path = self.new_file(name)?;
        let full = self.dir.join(&path);
        let tmp = temp_path(&full);
        let file = self.fs.create(&tmp)?;
        Ok(Box::new(SavepointFileWriter {
            savepoint: self,
            name: name.to_string(),
            path,
            full,
            tmp,
            file: Some(file),
            size: 0,
            crc: 0,
        }))
    }

    fn place_private(&self, local_path: &Path, name: &str) -> Result<FileHandle> {
        let path = self.new_file(name)?;
        self.storage.place_file(local_path, &path)?;
        let sum = self.storage.checksum(&path, u64::MAX)?;
        Ok(self.handle(name, path, sum.size, sum.crc32c))
    }

    /// Links (or copies) the file into the savepoint directory as `<owner>-<local name>`:
    /// a savepoint shares nothing with the job's checkpoints.
    fn place_shared(
        &self,
        owner: &str,
        local_path: &Path,
        local_name: &str,
        size: u64,
        crc32c: u32,
    ) -> Result<FileHandle> {
        check_local_name(local_name)?;
        let name = format!("{}-{}", sanitize(owner), sanitize(local_name));
        let path = self.new_file(&name)?;
        self.storage.place_file(local_path, &path)?;
        let placed = self.storage.file_size(&path)?;
        if placed != size {
            return Err(Error::corruption(
                self.dir.join(&path),
                0,
                format!(
                    "placed {placed} bytes of {}, expected {size}",
                    local_path.display()
                ),
            ));
        }
        Ok(self.handle(local_name, path, size, crc32c))
    }
}
