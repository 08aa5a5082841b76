//! Retention: which checkpoints are subsumed, and the order in which a checkpoint and the
//! shared files only it references are deleted so that a crash at any step leaves every
//! retained checkpoint whole.

use parking_lot::Mutex;

use super::ids::CheckpointId;
use super::path::metadata_rel;
use super::path::SHARED_DIR;
use super::storage::CheckpointStorage;
use super::store::Inner;
use crate::fs::{DirEntryInfo, EntryKind};

/// What retention deleted, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Checkpoints that were subsumed and deleted.
    pub discarded: Vec<CheckpointId>,
    /// Shared files deleted because no retained checkpoint referenced them any more.
    pub shared_files_deleted: Vec<String>,
    /// Deletions that failed; what they left behind is an unreferenced leftover that the
    /// next open deletes.
    pub errors: Vec<String>,
}

/// Deletes the files in `paths` and makes the deletions durable; errors go to `errors`.
pub(super) fn delete_shared(
    storage: &dyn CheckpointStorage,
    paths: &[String],
    errors: &mut Vec<String>,
) {
    if paths.is_empty() {
        return;
    }
    for p in paths {
        // Only a regular file is deleted: a link, a directory or anything else found
        // under a referenced name is not what the store placed there.
        match storage.entry_kind(p) {
            Ok(Some(EntryKind::File)) | Ok(None) => {}
            Ok(Some(kind)) => {
                errors.push(format!(
                    "{} is {}, not the file placed there; left alone",
                    storage.display_path(p).display(),
                    describe_kind(kind)
                ));
                continue;
            }
            Err(e) => {
                errors.push(format!("stat {}: {e}", storage.display_path(p).display()));
                continue;
            }
        }
        if let Err(e) = storage.delete_file(p) {
            errors.push(format!("delete {}: {e}", storage.display_path(p).display()));
        }
    }
    if let Err(e) = storage.sync_dir(SHARED_DIR) {
        errors.push(format!("sync {SHARED_DIR}: {e}"));
    }
}

/// What an entry kind is, in words.
pub(super) fn describe_kind(kind: EntryKind) -> String {
    DirEntryInfo {
        name: String::new(),
        utf8: true,
        kind,
    }
    .describe()
}

/// Deletes the shared files in `paths`, which [`Registry::release`] handed out for deletion,
/// then forgets their entries (see the registry's lock rule: the lock is not held while
/// the files are deleted).
///
/// [`Registry::release`]: super::registry::Registry::release
pub(super) fn delete_released(
    inner: &Mutex<Inner>,
    storage: &dyn CheckpointStorage,
    paths: &[String],
    errors: &mut Vec<String>,
) {
    if paths.is_empty() {
        return;
    }
    delete_shared(storage, paths, errors);
    let mut inner = inner.lock();
    for p in paths {
        inner.registry.forget(p);
    }
}

/// Deletes checkpoint `id`: `_metadata` first (made durable, so the checkpoint stops
/// existing before anything it references goes), then its directory, then the shared files
/// no other checkpoint references. Returns false when `id` is not retained (any more) or
/// its `_metadata` could not be deleted (it then stays retained).
///
/// The checkpoint leaves the retained set under the lock before any I/O, so two
/// retentions (or a retention and a shutdown) never delete the same checkpoint; its shared
/// files are released only once its `_metadata` is gone for good.
pub(super) fn discard(
    inner: &Mutex<Inner>,
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    report: &mut RetentionReport,
) -> bool {
    let Some(done) = inner.lock().completed.remove(&id) else {
        return false;
    };
    let dir = id.dir_name();
    if let Err(e) = storage.delete_file(&metadata_rel(id)) {
        report.errors.push(format!(
            "delete {}: {e}",
            storage.display_path(&metadata_rel(id)).display()
        ));
        inner.lock().completed.insert(id, done);
        return false;
    }
    report.discarded.push(id);
    crate::failpoint::hit("retention.checkpoint_removed");
    if let Err(e) = storage.sync_dir(&dir) {
        // The deletion of `_metadata` may not be durable: keep its shared files (they
        // become leftovers for the next open rather than holes in a checkpoint that could
        // reappear after a crash).
        report.errors.push(format!("sync {dir}: {e}"));
        return true;
    }
    if let Err(e) = storage.delete_dir(&dir) {
        report.errors.push(format!("delete {dir}: {e}"));
    }
    if !done.owned {
        return true;
    }
    let mut unreferenced = Vec::new();
    {
        let mut inner = inner.lock();
        for p in done.metadata.shared_paths() {
            if inner.registry.release(p) {
                unreferenced.push(p.to_string());
            }
        }
    }
    delete_released(inner, storage, &unreferenced, &mut report.errors);
    report.shared_files_deleted.extend(unreferenced);
    true
}

/// Keeps the newest `num_retained` owned checkpoints and discards the others.
pub(super) fn retain(
    inner: &Mutex<Inner>,
    storage: &dyn CheckpointStorage,
    num_retained: usize,
) -> RetentionReport {
    let mut report = RetentionReport::default();
    loop {
        let oldest = {
            let inner = inner.lock();
            let owned: Vec<CheckpointId> = inner
                .completed
                .iter()
                .filter(|(_, c)| c.owned)
                .map(|(id, _)| *id)
                .collect();
            if owned.len() <= num_retained {
                break;
            }
            owned.first().copied()
        };
        let Some(oldest) = oldest else { break };
        if !discard(inner, storage, oldest, &mut report) {
            break;
        }
    }
    for e in &report.errors {
        tracing::warn!("checkpoint retention: {e}");
    }
    report
}
