//! Snapshots of an LSM store into a checkpoint, and restore from one.
//!
//! The synchronous part ([`snapshot_sync`]) only switches the memtable and records the
//! sequence number: it copies no state. The asynchronous part ([`snapshot_async`]) waits
//! for the flush, pins the file set, places every SST in the checkpoint's `shared/`
//! directory (a hard link; nothing at all when a retained checkpoint already holds the
//! same file), and writes the store's manifest snapshot as a private file of the
//! checkpoint. Restore links the files into a fresh working directory and writes a
//! manifest there, so its cost grows with the number of files, not their bytes.

use std::path::Path;

use crate::checkpoint::{
    restore::{handle_metadata_rel, restore_file},
    CheckpointId, CheckpointStorage, FileHandle, KeyGroupRange, KeyedState, KeyedStateHandle,
    LsmFileSet, OperatorSubtaskState, SnapshotTarget,
};
use crate::codec::crc32c;
use crate::error::{Error, Result};
use crate::lsm::live_set::MAX_LIVE_SET_BYTES;
use crate::lsm::{Db, LiveFilesTicket, LiveSet, LiveSetTable, Options};

/// The backend name recorded in the keyed-state handles of `_metadata`.
pub const LSM_BACKEND: &str = "lsm";

/// Suffix of the private file holding a store's manifest snapshot (`<owner>.manifest`).
/// Only a name: `_metadata` records which file is the manifest snapshot.
pub const MANIFEST_SUFFIX: &str = ".manifest";

/// Which operator subtask a store belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskId {
    /// The operator's id.
    pub operator_id: String,
    /// The subtask's index.
    pub subtask_index: u32,
    /// The number of subtasks of the operator.
    pub parallelism: u32,
    /// The operator's max parallelism (its number of key groups).
    pub max_parallelism: u32,
    /// The key groups the subtask owns.
    pub key_groups: KeyGroupRange,
}

impl SubtaskId {
    /// The owner tag of the subtask's shared files.
    fn owner(&self) -> String {
        format!("{}_{}", self.operator_id, self.subtask_index)
    }
}

/// The synchronous part of a snapshot: switches the memtable. Writers may continue as soon
/// as it returns.
pub fn snapshot_sync(db: &Db) -> Result<LiveFilesTicket> {
    db.begin_live_files()
}

/// The asynchronous part: waits for the flush, places the store's files into `pending`
/// (a checkpoint or a native savepoint), writes the description of the file set
/// ([`LiveSet`]) as a private file, and returns the subtask's state for `_metadata`.
pub fn snapshot_async(
    ticket: LiveFilesTicket,
    pending: &dyn SnapshotTarget,
    subtask: &SubtaskId,
) -> Result<OperatorSubtaskState> {
    let live = ticket.wait()?;
    let owner = subtask.owner();
    let mut tables = Vec::new();
    for f in live.files() {
        tables.push(pending.place_shared(&owner, &f.path, &f.name, f.size, f.crc32c)?);
    }
    let bytes = LiveSet::of(&live).encode();
    let manifest = pending.write_private(&format!("{owner}{MANIFEST_SUFFIX}"), &bytes)?;
    Ok(OperatorSubtaskState {
        operator_id: subtask.operator_id.clone(),
        subtask_index: subtask.subtask_index,
        parallelism: subtask.parallelism,
        max_parallelism: subtask.max_parallelism,
        key_groups: subtask.key_groups,
        keyed_state: vec![KeyedStateHandle {
            backend: LSM_BACKEND.to_string(),
            key_groups: subtask.key_groups,
            state: KeyedState::IncrementalLsm(LsmFileSet {
                sequence: live.seq.0,
                manifest,
                tables,
            }),
        }],
        operator_state: Vec::new(),
    })
}

/// The one LSM file set of a subtask's state: an error when it has none (not `lsm` state)
/// or several (a store restores from one set; merging sets is a rescale).
pub fn lsm_file_set(state: &OperatorSubtaskState) -> Result<&LsmFileSet> {
    let mut sets = state.lsm_file_sets();
    match (sets.next(), sets.next()) {
        (Some((_, set)), None) => Ok(set),
        (None, _) => Err(Error::InvalidArgument(format!(
            "subtask {} of operator {} has no incremental LSM state: not an lsm checkpoint",
            state.subtask_index, state.operator_id
        ))),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "subtask {} of operator {} has {} LSM file sets; one store restores from one",
            state.subtask_index,
            state.operator_id,
            state.lsm_file_sets().count()
        ))),
    }
}

/// Reads the description of the file set of `set` (its manifest snapshot), checking its
/// size and crc32c against the handle.
pub fn read_live_set(storage: &dyn CheckpointStorage, set: &LsmFileSet) -> Result<LiveSet> {
    let h = &set.manifest;
    let path = storage.display_path(&h.path);
    let bytes = storage.read_file(&h.path, MAX_LIVE_SET_BYTES)?;
    if bytes.len() as u64 != h.size || crc32c(&bytes) != h.crc32c {
        return Err(Error::corruption(
            &path,
            0,
            format!(
                "manifest snapshot is {} bytes with crc32c {:08x}; _metadata records {} bytes, {:08x}",
                bytes.len(),
                crc32c(&bytes),
                h.size,
                h.crc32c
            ),
        ));
    }
    LiveSet::decode(&bytes, &path)
}

/// The tables of an LSM subtask state, as its manifest snapshot lays them out, each with
/// the checkpoint file that holds it.
#[derive(Debug, Clone)]
pub struct LsmLayout {
    /// The file set the manifest snapshot describes.
    pub live_set: LiveSet,
    /// In search order (level 0 newest first, deeper levels in key order): each table of
    /// the manifest snapshot, and the checkpoint file holding it.
    pub tables: Vec<(LiveSetTable, FileHandle)>,
}

/// Reads the manifest snapshot of `set` and pairs every table it lists with the file of
/// the set holding it, checking that both record the same size and crc32c, and that the
/// snapshot is consistent at the set's sequence number. `metadata_path` names the
/// `_metadata` in errors, `label` the subtask.
pub fn lsm_layout(
    storage: &dyn CheckpointStorage,
    metadata_path: &Path,
    label: &str,
    set: &LsmFileSet,
) -> Result<LsmLayout> {
    let live_set = read_live_set(storage, set)?;
    let snapshot_seq = live_set.sequence().unwrap_or(0);
    // 0: a set read from a version 1 `_metadata`, which did not record it.
    if set.sequence != 0 && snapshot_seq != set.sequence {
        return Err(Error::corruption(
            storage.display_path(&set.manifest.path),
            0,
            format!(
                "the manifest snapshot of {label} is consistent at sequence {snapshot_seq}; \
                 _metadata records {}",
                set.sequence
            ),
        ));
    }
    let mut tables = Vec::new();
    for t in live_set.tables() {
        let name = &t.name;
        let h = set
            .tables
            .iter()
            .find(|h| &h.local_name == name)
            .ok_or_else(|| {
                Error::corruption(
                    metadata_path,
                    0,
                    format!(
                        "the manifest snapshot of {label} lists {name}, which the checkpoint does not hold"
                    ),
                )
            })?;
        if h.size != t.size || h.crc32c != t.crc32c {
            return Err(Error::corruption(
                storage.display_path(&h.path),
                0,
                format!(
                    "{name}: _metadata records {} bytes crc32c {:08x}, the manifest snapshot {} bytes crc32c {:08x}",
                    h.size, h.crc32c, t.size, t.crc32c
                ),
            ));
        }
        tables.push((t, h.clone()));
    }
    Ok(LsmLayout { live_set, tables })
}

/// Restores the store of one subtask from checkpoint `id` into the empty directory `dir`
/// (files are hard-linked when possible), and opens it.
pub fn restore_store(
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    state: &OperatorSubtaskState,
    dir: &Path,
    opts: Options,
) -> Result<Db> {
    let set = lsm_file_set(state)?;
    let metadata_path = storage.display_path(&handle_metadata_rel(id, &set.manifest));
    let layout = lsm_layout(storage, &metadata_path, &state.label(), set)?;
    layout.live_set.restore(dir, opts, |t, _| {
        let (_, h) = layout
            .tables
            .iter()
            .find(|(lt, _)| lt.number == t.number)
            .ok_or_else(|| {
                Error::corruption(
                    &metadata_path,
                    0,
                    format!("no checkpoint file holds {}", t.name),
                )
            })?;
        restore_file(storage, id, h, dir).map(|_| ())
    })
}
