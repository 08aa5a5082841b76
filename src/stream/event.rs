//! What flows between subtasks: batches of records, checkpoint barriers and the end of
//! input, as Flink's stream elements.

use crate::checkpoint::{CheckpointId, CheckpointKind};

/// A checkpoint barrier: sources put it into their output when the coordinator triggers a
/// checkpoint; every operator snapshots its state when the barrier has arrived on all its
/// inputs (aligned, in exactly-once mode), then forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint it belongs to.
    pub id: CheckpointId,
    /// When the coordinator triggered it (unix ms).
    pub timestamp_ms: u64,
    /// A checkpoint (incremental or full) or a savepoint (native or canonical): what each
    /// backend's synchronous part takes.
    pub kind: CheckpointKind,
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
