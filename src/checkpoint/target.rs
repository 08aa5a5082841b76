//! Where the asynchronous part of a snapshot puts its files: a [`SnapshotTarget`] is either
//! a checkpoint of the job directory ([`PendingCheckpoint`]) or a self-contained savepoint
//! ([`super::savepoint::PendingSavepoint`]). A state backend writes through this trait and
//! never knows which one it has; the target decides paths, roles and durability.

use std::io::Write;
use std::path::Path;

use super::ids::{CheckpointId, CheckpointKind};
use super::metadata::FileHandle;
use super::pending::PendingCheckpoint;
use crate::error::{Error, Result};

/// Writes one file's bytes as they come: `write` is called once with the file's writer.
pub type StreamedWrite<'a> = &'a mut dyn FnMut(&mut dyn Write) -> Result<()>;

/// A checkpoint or savepoint being built, as a snapshot's asynchronous part sees it.
pub trait SnapshotTarget: Send {
    /// The checkpoint's id.
    fn id(&self) -> CheckpointId;

    /// What is being taken: a checkpoint, or a savepoint in which format.
    fn kind(&self) -> CheckpointKind;

    /// Writes `bytes` durably as a file `name` owned by this snapshot alone.
    fn write_private(&mut self, name: &str, bytes: &[u8]) -> Result<FileHandle>;

    /// Writes a file `name` owned by this snapshot alone from what `write` writes into it,
    /// durably (so a large file need not be held in memory, where the target streams).
    fn write_private_streamed(
        &mut self,
        name: &str,
        write: StreamedWrite<'_>,
    ) -> Result<FileHandle>;

    /// Links or copies the local file `local_path` into the snapshot as `name`, owned by
    /// it alone.
    fn place_private(&mut self, local_path: &Path, name: &str) -> Result<FileHandle>;

    /// Adds the immutable local file `local_path` (named `local_name` in the owner's
    /// working directory, `size` bytes, crc32c `crc32c`) to the snapshot: shared with other
    /// checkpoints of the job where the target shares files, copied or linked into the
    /// savepoint where it does not.
    fn place_shared(
        &mut self,
        owner: &str,
        local_path: &Path,
        local_name: &str,
        size: u64,
        crc32c: u32,
    ) -> Result<FileHandle>;
}

impl SnapshotTarget for PendingCheckpoint {
    fn id(&self) -> CheckpointId {
        PendingCheckpoint::id(self)
    }

    fn kind(&self) -> CheckpointKind {
        PendingCheckpoint::kind(self)
    }

    fn write_private(&mut self, name: &str, bytes: &[u8]) -> Result<FileHandle> {
        PendingCheckpoint::write_private(self, name, bytes)
    }

    /// A checkpoint's private files are written whole ([`PendingCheckpoint::write_private`]):
    /// the bytes are gathered first.
    fn write_private_streamed(
        &mut self,
        name: &str,
        write: StreamedWrite<'_>,
    ) -> Result<FileHandle> {
        let mut bytes = Vec::new();
        write(&mut bytes)?;
        PendingCheckpoint::write_private(self, name, &bytes)
    }

    fn place_private(&mut self, local_path: &Path, name: &str) -> Result<FileHandle> {
        PendingCheckpoint::place_private(self, local_path, name)
    }

    fn place_shared(
        &mut self,
        owner: &str,
        local_path: &Path,
        local_name: &str,
        size: u64,
        crc32c: u32,
    ) -> Result<FileHandle> {
        PendingCheckpoint::place_shared(self, owner, local_path, local_name, size, crc32c)
    }
}

/// Refuses a snapshot of `format` written into a target of another kind: a canonical
/// snapshot belongs in a canonical savepoint, a native one anywhere else.
pub fn check_format(target: &dyn SnapshotTarget, canonical: bool) -> Result<()> {
    let is_canonical = target.kind() == CheckpointKind::CanonicalSavepoint;
    if canonical != is_canonical {
        let what = if canonical { "a canonical" } else { "a native" };
        return Err(Error::InvalidArgument(format!(
            "{what} snapshot cannot be written into {} {}: take the snapshot with \
             snapshot_sync_for(kind)",
            target.kind().as_str(),
            target.id()
        )));
    }
    Ok(())
}
