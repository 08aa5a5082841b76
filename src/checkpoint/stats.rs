//! What a checkpoint placed and referenced: the counts kept while it is built, the
//! properties its `_metadata` records them in, and the figures derived for checkpoints
//! found at open.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::ids::{CheckpointId, CheckpointKind};
use super::metadata::{FileRole, Metadata};
use super::storage::CheckpointStorage;
use super::store::Completed;

/// What a checkpoint wrote and what it merely referenced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Files written into the storage by this checkpoint (shared and private).
    pub files_placed: u64,
    /// Bytes of those files.
    pub bytes_placed: u64,
    /// Shared files reused from earlier checkpoints (or earlier in this one) without I/O.
    pub files_referenced: u64,
    /// Bytes of those files.
    pub bytes_referenced: u64,
    /// Placements done by hard link.
    pub files_linked: u64,
    /// Placements done by copying.
    pub files_copied: u64,
    /// Private files written from memory.
    pub files_written: u64,
}

/// One retained checkpoint, as [`CheckpointStore::list`](super::CheckpointStore::list)
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// Its id.
    pub id: CheckpointId,
    /// Its kind.
    pub kind: CheckpointKind,
    /// When it was triggered (unix ms).
    pub trigger_timestamp_ms: u64,
    /// When its `_metadata` was written (unix ms).
    pub completion_timestamp_ms: u64,
    /// Distinct files it references.
    pub files_total: u64,
    /// Bytes of those files plus inline state (Flink's `state_size`).
    pub bytes_total: u64,
    /// Files it placed itself. For checkpoints found at open this is derived: private
    /// files plus shared files no older retained checkpoint references.
    pub files_placed: u64,
    /// Bytes it placed plus inline state (Flink's `checkpointed_size`).
    pub bytes_placed: u64,
    /// Its directory (Flink's `external_path`).
    pub external_path: PathBuf,
    /// False for a checkpoint this job must not delete (restored in no-claim mode).
    pub owned: bool,
}

/// The `_metadata` property recording how many files a checkpoint placed (the rest of its
/// files it referenced, placed by earlier checkpoints).
pub const PLACED_FILES_PROPERTY: &str = "tidemark.files_placed";
/// The `_metadata` property recording the bytes of the files a checkpoint placed.
pub const PLACED_BYTES_PROPERTY: &str = "tidemark.bytes_placed";

/// The files and bytes a checkpoint placed, as its `_metadata` records them (written by
/// every commit; `None` for a `_metadata` that does not record them).
pub fn recorded_placement(m: &Metadata) -> Option<(u64, u64)> {
    let get = |key: &str| {
        m.properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    Some((get(PLACED_FILES_PROPERTY)?, get(PLACED_BYTES_PROPERTY)?))
}

/// Stats of a checkpoint found at open: what it references that no older retained
/// checkpoint does counts as placed by it, unless its `_metadata` records what it placed
/// (then the rest was referenced).
pub(super) fn derived_stats(m: &Metadata, older: &BTreeSet<String>) -> CheckpointStats {
    let mut s = derived_from_files(m, older);
    if let Some((files, bytes)) = recorded_placement(m) {
        let all_files = s.files_placed + s.files_referenced;
        let all_bytes = s.bytes_placed.saturating_add(s.bytes_referenced);
        if files <= all_files && bytes <= all_bytes {
            s.files_placed = files;
            s.files_referenced = all_files - files;
            s.bytes_placed = bytes;
            s.bytes_referenced = all_bytes - bytes;
        }
    }
    s
}

/// [`derived_stats`] from the files alone.
fn derived_from_files(m: &Metadata, older: &BTreeSet<String>) -> CheckpointStats {
    let mut s = CheckpointStats::default();
    let mut seen = BTreeSet::new();
    for f in m.file_handles() {
        if !seen.insert(f.path.as_str()) {
            continue;
        }
        if f.role == FileRole::Shared && older.contains(&f.path) {
            s.files_referenced += 1;
            s.bytes_referenced = s.bytes_referenced.saturating_add(f.size);
        } else {
            s.files_placed += 1;
            s.bytes_placed = s.bytes_placed.saturating_add(f.size);
        }
    }
    s
}

pub(super) fn summarize(storage: &dyn CheckpointStorage, c: &Completed) -> CheckpointSummary {
    let m = &c.metadata;
    let mut seen = BTreeSet::new();
    let (mut files, mut bytes) = (0u64, m.inline_bytes());
    for f in m.file_handles() {
        if seen.insert(f.path.as_str()) {
            files += 1;
            bytes = bytes.saturating_add(f.size);
        }
    }
    CheckpointSummary {
        id: m.checkpoint_id,
        kind: m.kind,
        trigger_timestamp_ms: m.trigger_timestamp_ms,
        completion_timestamp_ms: m.completion_timestamp_ms,
        files_total: files,
        bytes_total: bytes,
        files_placed: c.stats.files_placed,
        bytes_placed: c.stats.bytes_placed.saturating_add(m.inline_bytes()),
        external_path: storage.display_path(&m.checkpoint_id.dir_name()),
        owned: c.owned,
    }
}
