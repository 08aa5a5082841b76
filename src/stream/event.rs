//! What flows between subtasks: batches of records, checkpoint barriers and the end of
//! input, as Flink's stream elements.

use crate::checkpoint::CheckpointId;

/// A checkpoint barrier: sources put it into their output when the coordinator triggers a
/// checkpoint; every operator snapshots its state when the barrier has arrived on all its
/// inputs (aligned, in exactly-once mode), then forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint it belongs to.
    pub id: CheckpointId,
    /// When the coordinator triggered it (unix ms).
    pub timestamp_ms: u64,
    /// A checkpoint or a savepoint.
    pub kind: SnapshotKind,
}

/// What a barrier asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// A periodic checkpoint.
    Checkpoint,
    /// A savepoint: a checkpoint a person asked for, kept until that person deletes it.
    Savepoint,
}

/// One element of a channel between two subtasks.
#[derive(Debug)]
pub(crate) enum Event<T> {
    /// Records, in order (channels carry batches: one send per batch, not per record).
    Batch(Vec<T>),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The sender has finished: no more events on this channel.
    End,
}
