//! Where the asynchronous part of a snapshot puts its files: a [`SnapshotTarget`] is either
//! a checkpoint of the job directory ([`super::PendingCheckpoint`]) or a self-contained savepoint
//! ([`super::savepoint::PendingSavepoint`]). A state backend writes through this trait and
//! never knows which one it has; the target decides paths, roles and durability.

use std::io::Write;
use std::path::Path;

use super::ids::{CheckpointId, CheckpointKind};
use super::metadata::FileHandle;
use crate::error::{Error, Result};

/// Writes one file's bytes as they come: `write` is called once with the file's writer.
pub type StreamedWrite<'a> = &'a mut dyn FnMut(&mut dyn Write) -> Result<()>;

/// A private file of a snapshot being written as a stream: its size and crc32c are
/// computed as the bytes pass; [`PrivateWrite::finish`] makes it durable and describes it.
/// Dropped unfinished, it leaves nothing behind.
pub trait PrivateWrite: Send {
    /// Appends `data`.
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Makes the file durable under its name and returns its handle.
    fn finish(self: Box<Self>) -> Result<FileHandle>;
}

/// A [`PrivateWrite`] as an [`std::io::Write`].
struct AsWrite<'a, 'b>(&'a mut (dyn PrivateWrite + 'b));

impl Write for AsWrite<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A checkpoint or savepoint being built, as a snapshot's asynchronous part sees it.
/// Shared: the subtasks of a job place their files into one target at the same time.
pub trait SnapshotTarget: Send + Sync {
    /// The checkpoint's id.
    fn id(&self) -> CheckpointId;

    /// What is being taken: a checkpoint, or a savepoint in which format.
    fn kind(&self) -> CheckpointKind;

    /// Writes `bytes` durably as a file `name` owned by this snapshot alone.
    fn write_private(&self, name: &str, bytes: &[u8]) -> Result<FileHandle> {
        let mut w = self.private_writer(name)?;
        w.append(bytes)?;
        w.finish()
    }

    /// Starts a file `name` owned by this snapshot alone, written as a stream.
    fn private_writer(&self, name: &str) -> Result<Box<dyn PrivateWrite + '_>>;

    /// Writes a file `name` owned by this snapshot alone from what `write` writes into it,
    /// durably, streamed (a large file is never held in memory).
    fn write_private_streamed(&self, name: &str, write: StreamedWrite<'_>) -> Result<FileHandle> {
        let mut w = self.private_writer(name)?;
        write(&mut AsWrite(w.as_mut()))?;
        w.finish()
    }

    /// Links or copies the local file `local_path` into the snapshot as `name`, owned by
    /// it alone.
    fn place_private(&self, local_path: &Path, name: &str) -> Result<FileHandle>;

    /// Adds the immutable local file `local_path` (named `local_name` in the owner's
    /// working directory, `size` bytes, crc32c `crc32c`) to the snapshot: shared with other
    /// checkpoints of the job where the target shares files, copied or linked into the
    /// savepoint where it does not.
    fn place_shared(
        &self,
        owner: &str,
        local_path: &Path,
        local_name: &str,
        size: u64,
        crc32c: u32,
    ) -> Result<FileHandle>;
}

/// Refuses the local name of a file to place ([`SnapshotTarget::place_shared`]) that is
/// not a lexically safe relative path (see [`super::path::lexical_problem`]).
pub(crate) fn check_local_name(local_name: &str) -> Result<()> {
    match super::path::lexical_problem(local_name) {
        Some(reason) => Err(Error::InvalidArgument(format!(
            "local name {local_name:?}: {reason}"
        ))),
        None => Ok(()),
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
