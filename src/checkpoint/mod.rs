//! Checkpoint storage: Flink's directory layout, `_metadata`, the shared-file registry,
//! retention, verification and restore targets.
//!
//! ```text
//! <savepoints-dir>/savepoint-<job>-<random>/   a self-contained savepoint: `_metadata`
//!                                             and every file it references
//! <checkpoints-dir>/<job-id>/
//!     shared/      files referenced by one or more checkpoints (hard-linked, incremental)
//!     taskowned/   files owned by the running job; never deleted by checkpoint cleanup
//!     chk-<N>/     one checkpoint's private files, and `_metadata`, written last
//! ```
//!
//! A checkpoint exists if and only if its `_metadata` is durable. This layer knows files,
//! checksums and metadata; it never knows how a state backend lays out keys, and it never
//! depends on the LSM store.

pub mod config;
pub mod ids;
pub mod metadata;
pub mod path;
pub mod pending;
mod registry;
pub mod restore;
pub mod retention;
pub mod savepoint;
pub mod stats;
pub mod storage;
pub mod store;
pub mod target;
pub mod verify;

pub use config::{CheckpointConfig, ExternalizedCleanup, JobTermination};
pub use ids::{CheckpointId, CheckpointKind, JobId, KeyGroupRange, SavepointFormat};
pub use metadata::{
    FileHandle, FileRole, KeyedState, KeyedStateHandle, LsmFileSet, Metadata, NamedOperatorState,
    OperatorStateHandle, OperatorSubtaskState, RedistributionMode, SourceOffset, StateData,
    MAX_METADATA_BYTES, METADATA_FILE_NAME,
};
pub use path::{SHARED_DIR, TASKOWNED_DIR};
pub use pending::{CheckpointContent, CompletedCheckpoint, PendingCheckpoint, PrivateFileWriter};
pub use restore::{resolve, resolve_verified, ResolvedCheckpoint, RestoreInfo, RestoreMode};
pub use retention::RetentionReport;
pub use savepoint::{CompletedSavepoint, PendingSavepoint};
pub use stats::{
    recorded_placement, CheckpointStats, CheckpointSummary, PLACED_BYTES_PROPERTY,
    PLACED_FILES_PROPERTY,
};
pub use storage::{file_checksum, CheckpointStorage, FileChecksum, LocalStorage, JOB_LOCK_FILE};
pub use store::{CheckpointStore, OpenReport};
pub use target::{PrivateWrite, SnapshotTarget};
pub use verify::{verify, verify_files, VerifyReport};

#[cfg(test)]
pub(crate) mod testutil;
