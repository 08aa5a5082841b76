//! Retention: which checkpoints are subsumed, and the order in which a checkpoint and the
//! shared files only it references are deleted so that a crash at any step leaves every
//! retained checkpoint whole.

use super::ids::CheckpointId;
use super::path::SHARED_DIR;
use super::storage::CheckpointStorage;
use super::store::{metadata_rel, Inner};
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

/// Deletes checkpoint `id`: `_metadata` first (made durable, so the checkpoint stops
/// existing before anything it references goes), then its directory, then the shared files
/// no other checkpoint references.
pub(super) fn discard(
    inner: &mut Inner,
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    report: &mut RetentionReport,
) -> bool {
    let dir = id.dir_name();
    if let Err(e) = storage.delete_file(&metadata_rel(id)) {
        report.errors.push(format!(
            "delete {}: {e}",
            storage.display_path(&metadata_rel(id)).display()
        ));
        return false;
    }
    let Some(done) = inner.completed.remove(&id) else {
        return false;
    };
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
    for p in done.metadata.shared_paths() {
        if inner.registry.release(p) {
            unreferenced.push(p.to_string());
        }
    }
    delete_shared(storage, &unreferenced, &mut report.errors);
    report.shared_files_deleted.extend(unreferenced);
    true
}

/// Keeps the newest `num_retained` owned checkpoints and discards the others.
pub(super) fn retain(
    inner: &mut Inner,
    storage: &dyn CheckpointStorage,
    num_retained: usize,
) -> RetentionReport {
    let mut report = RetentionReport::default();
    loop {
        let owned: Vec<CheckpointId> = inner
            .completed
            .iter()
            .filter(|(_, c)| c.owned)
            .map(|(id, _)| *id)
            .collect();
        if owned.len() <= num_retained {
            break;
        }
        let Some(&oldest) = owned.first() else { break };
        if !discard(inner, storage, oldest, &mut report) {
            break;
        }
    }
    for e in &report.errors {
        tracing::warn!("checkpoint retention: {e}");
    }
    report
}
