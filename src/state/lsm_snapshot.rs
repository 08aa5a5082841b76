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
    CheckpointStore, CompletedCheckpoint, FileHandle, FileRole, KeyGroupRange,
    OperatorSubtaskState, PendingCheckpoint, SourceOffset, StateHandle,
};
use crate::codec::crc32c;
use crate::error::{Error, Result};
use crate::lsm::filename::table_file_name;
use crate::lsm::manifest::{NewFile, VersionEdit, MAX_MANIFEST_BYTES};
use crate::lsm::types::compare_internal_keys;
use crate::lsm::{Db, LiveFilesTicket, Options};

/// The backend name recorded in `_metadata`.
pub const LSM_BACKEND: &str = "lsm";

/// Suffix of the private file holding a store's manifest snapshot.
pub const MANIFEST_SUFFIX: &str = ".manifest";

/// Which operator subtask a store belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskId {
    /// The operator's id.
    pub operator_id: String,
    /// The subtask's index.
    pub subtask_index: u32,
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
    pending: &mut PendingCheckpoint,
    subtask: &SubtaskId,
) -> Result<OperatorSubtaskState> {
    let live = ticket.wait()?;
    let owner = subtask.owner();
    let mut handles = Vec::new();
    for f in live.files() {
        let h = pending.place_shared(&owner, &f.path, &f.name, f.size, f.crc32c)?;
        handles.push(StateHandle::File(h));
    }
    let mut manifest = Vec::new();
    live.manifest.encode(&mut manifest);
    let h = pending.write_private(&format!("{owner}{MANIFEST_SUFFIX}"), &manifest)?;
    handles.push(StateHandle::File(h));
    Ok(OperatorSubtaskState {
        operator_id: subtask.operator_id.clone(),
        subtask_index: subtask.subtask_index,
        key_groups: subtask.key_groups,
        handles,
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
    let mut pending = store.begin(id, kind)?;
    let state = snapshot_async(ticket, &mut pending, subtask)?;
    let completed = pending.commit(CheckpointContent {
        backend: LSM_BACKEND.to_string(),
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

fn file_handles(state: &OperatorSubtaskState) -> impl Iterator<Item = &FileHandle> {
    state.handles.iter().filter_map(|h| match h {
        StateHandle::File(f) => Some(f),
        StateHandle::Inline { .. } => None,
    })
}

/// Reads and decodes the manifest snapshot of a subtask's state, checking its crc.
pub fn read_manifest_snapshot(
    storage: &dyn CheckpointStorage,
    state: &OperatorSubtaskState,
) -> Result<VersionEdit> {
    let h = file_handles(state)
        .find(|h| h.role == FileRole::Private && h.local_name.ends_with(MANIFEST_SUFFIX))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "subtask {} of operator {} has no LSM manifest snapshot: not an lsm checkpoint",
                state.subtask_index, state.operator_id
            ))
        })?;
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

/// Reads the manifest snapshot of `state` and pairs every table it lists with the shared
/// file holding it, checking that both record the same size and crc32c. `metadata_path`
/// names the `_metadata` in errors.
pub fn lsm_layout(
    storage: &dyn CheckpointStorage,
    metadata_path: &Path,
    state: &OperatorSubtaskState,
) -> Result<LsmLayout> {
    let edit = read_manifest_snapshot(storage, state)?;
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
        let h = file_handles(state)
            .find(|h| h.role == FileRole::Shared && h.local_name == name)
            .ok_or_else(|| {
                Error::corruption(
                    metadata_path,
                    0,
                    format!(
                        "the manifest snapshot of {}_{} lists {name}, which the checkpoint does not hold",
                        state.operator_id, state.subtask_index
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
    let metadata_path = storage.display_path(&format!("{}/_metadata", id.dir_name()));
    let layout = lsm_layout(storage, &metadata_path, state)?;
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
