//! One checkpoint of a plain store, through the public API: the lsm backend's synchronous
//! part (switch the memtable), a pending checkpoint, the asynchronous part (link the
//! tables, write the store's description), and the commit that writes `_metadata`. A
//! running job's checkpoints are the stream layer coordinator's; these tests drive one
//! store by hand.

#![allow(dead_code)] // each test binary uses its own part of these helpers

use tidemark::checkpoint::{
    CheckpointContent, CheckpointId, CheckpointKind, CheckpointStore, CompletedCheckpoint,
    SourceOffset,
};
use tidemark::lsm::Db;
use tidemark::state::lsm_snapshot::{snapshot_async, snapshot_sync, SubtaskId};

/// Takes checkpoint `id` of `kind` of `db` (the state of `subtask`) into `store`; a
/// failure aborts the pending checkpoint.
pub fn checkpoint_db(
    store: &CheckpointStore,
    id: CheckpointId,
    kind: CheckpointKind,
    db: &Db,
    subtask: &SubtaskId,
    source_offsets: Vec<SourceOffset>,
) -> tidemark::Result<CompletedCheckpoint> {
    let ticket = snapshot_sync(db)?;
    let pending = store.begin(id, kind)?;
    let state = snapshot_async(ticket, &pending, subtask)?;
    pending.commit(CheckpointContent {
        operator_states: vec![state],
        source_offsets,
        properties: Vec::new(),
    })
}
