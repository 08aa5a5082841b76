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
use std::time::{Duration, Instant};

use crate::checkpoint::{
    restore::restore_file, CheckpointContent, CheckpointId, CheckpointKind, CheckpointStorage,
    CheckpointStore, CompletedCheckpoint, FileHandle, KeyGroupRange, KeyedState, KeyedStateHandle,
    LsmFileSet, OperatorSubtaskState, SnapshotTarget, SourceOffset,
};
use crate::codec::crc32c;
use crate::error::{Error, Result};
use crate::lsm::filename::table_file_name;
use crate::lsm::manifest::{NewFile, VersionEdit, MAX_MANIFEST_BYTES};
use crate::lsm::types::compare_internal_keys;
use crate::lsm::{Db, LiveFilesTicket, Options};

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

/// The asynchronous part: waits for the flush, places the store's files into `pending`,
/// and describes them.
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
    let mut bytes = Vec::new();
    live.manifest.encode(&mut bytes);
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

/// What [`checkpoint_store`] did and how long each part took.
#[derive(Debug)]
pub struct StoreCheckpoint {
    /// The completed checkpoint.
    pub completed: CompletedCheckpoint,
    /// Time writers were held up (the synchronous part).
    pub sync_duration: Duration,
    /// Time from start to durable `_metadata`.
    pub total_duration: Duration,
}

/// Takes one complete checkpoint `id` of a single store: synchronous part, asynchronous
/// part, `_metadata`. A failure aborts the pending checkpoint (nothing is left behind).
pub fn checkpoint_store(
    store: &CheckpointStore,
    id: CheckpointId,
    kind: CheckpointKind,
    db: &Db,
    subtask: &SubtaskId,
    source_offsets: Vec<SourceOffset>,
) -> Result<StoreCheckpoint> {
    let start = Instant::now();
    let ticket = snapshot_sync(db)?;
    let sync_duration = start.elapsed();
    let pending = store.begin(id, kind)?;
    let state = snapshot_async(ticket, &pending, subtask)?;
    let completed = pending.commit(CheckpointContent {
        operator_states: vec![state],
        source_offsets,
        properties: Vec::new(),
    })?;
    Ok(StoreCheckpoint {
        completed,
        sync_duration,
        total_duration: start.elapsed(),
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

/// Reads and decodes the manifest snapshot of an LSM file set, checking its size and crc
/// against the handle.
pub fn read_manifest_snapshot(
    storage: &dyn CheckpointStorage,
    set: &LsmFileSet,
) -> Result<VersionEdit> {
    let h = &set.manifest;
    let path = storage.display_path(&h.path);
    let bytes = storage.read_file(&h.path, MAX_MANIFEST_BYTES)?;
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
    VersionEdit::decode(&bytes, &path, 0)
}

/// The tables of an LSM subtask state, as its manifest snapshot lays them out, each with
/// the checkpoint file that holds it.
#[derive(Debug, Clone)]
pub struct LsmLayout {
    /// The manifest snapshot.
    pub edit: VersionEdit,
    /// Level by level (L0 newest first, deeper levels in key order): the table's record in
    /// the manifest snapshot, and the checkpoint file holding it.
    pub tables: Vec<(NewFile, FileHandle)>,
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
    let edit = read_manifest_snapshot(storage, set)?;
    let snapshot_seq = edit.last_sequence.map_or(0, |s| s.0);
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
    let mut files: Vec<&NewFile> = edit.new_files.iter().collect();
    files.sort_by(|a, b| {
        a.level.cmp(&b.level).then_with(|| {
            if a.level == 0 {
                b.largest_seq
                    .cmp(&a.largest_seq)
                    .then(b.number.cmp(&a.number))
            } else {
                compare_internal_keys(&a.smallest, &b.smallest)
            }
        })
    });
    let mut tables = Vec::with_capacity(files.len());
    for f in files {
        let name = table_file_name(f.number);
        let h = set
            .tables
            .iter()
            .find(|h| h.local_name == name)
            .ok_or_else(|| {
                Error::corruption(
                    metadata_path,
                    0,
                    format!(
                        "the manifest snapshot of {label} lists {name}, which the checkpoint does not hold"
                    ),
                )
            })?;
        if h.size != f.size || h.crc32c != f.file_crc32c {
            return Err(Error::corruption(
                storage.display_path(&h.path),
                0,
                format!(
                    "{name}: _metadata records {} bytes crc32c {:08x}, the manifest snapshot {} bytes crc32c {:08x}",
                    h.size, h.crc32c, f.size, f.file_crc32c
                ),
            ));
        }
        tables.push((f.clone(), h.clone()));
    }
    Ok(LsmLayout { edit, tables })
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
    let metadata_path = storage.display_path(&crate::checkpoint::restore::handle_metadata_rel(
        id,
        &set.manifest,
    ));
    let layout = lsm_layout(storage, &metadata_path, &state.label(), set)?;
    let fs = opts.fs.clone();
    fs.create_dir_all(dir)?;
    if !fs.list_dir(dir)?.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "restore target {} is not empty",
            dir.display()
        )));
    }
    for (_, h) in &layout.tables {
        restore_file(storage, id, h, dir)?;
    }
    fs.sync_dir(dir)?;
    Db::restore_manifest(fs.as_ref(), dir, &layout.edit)?;
    Db::open(dir, opts)
}
