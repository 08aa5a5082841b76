//! tidemark: an embedded state store for stream processing.
//!
//! Its core is an LSM store with a write-ahead log ([`lsm`]); checkpoints of it are sets
//! of hard-linked immutable SST files plus a `_metadata` manifest, laid out as Apache
//! Flink lays out its checkpoints ([`checkpoint`]).
//!
//! Keyed state in the `lsm` backend ([`state`]), an incremental checkpoint of it, and a
//! restore from the checkpoint:
//!
//! ```
//! use std::sync::Arc;
//! use tidemark::checkpoint::{
//!     resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
//!     CheckpointStore, JobId, LocalStorage, OperatorSubtaskState,
//! };
//! use tidemark::fs::StdFs;
//! use tidemark::lsm::Options;
//! use tidemark::state::backend::{LsmStateBackend, RestoreFrom, StateBackend, SubtaskInfo};
//! use tidemark::state::key_groups::MaxParallelism;
//! use tidemark::state::keyed::{KeyedState, ValueStateDescriptor};
//!
//! # fn main() -> tidemark::Result<()> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let root = tmp.path();
//! let backend = LsmStateBackend::new(root.join("working"), Options::default());
//! let subtask = SubtaskInfo {
//!     operator_id: "counter".into(),
//!     subtask_index: 0,
//!     parallelism: 1,
//!     max_parallelism: MaxParallelism::default(),
//! };
//! let clicks = ValueStateDescriptor::<u64>::new("clicks");
//! let mut keyed = backend.keyed_state(&subtask, None)?;
//! let mut state = KeyedState::new(keyed.backend());
//! state.set_current_key("alice")?;
//! state.value(&clicks)?.update(&3)?;
//!
//! // The synchronous part copies no state; the asynchronous part links the store's tables
//! // into the checkpoint's `shared/` directory.
//! let storage = LocalStorage::new(StdFs::shared(), root.join("checkpoints"), JobId::new("job-1")?);
//! let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default())?;
//! let snapshot = keyed.snapshot_sync()?;
//! let mut state = KeyedState::new(keyed.backend());
//! state.set_current_key("alice")?;
//! state.value(&clicks)?.update(&4)?; // after the synchronous part: not in the checkpoint
//! let pending = store.begin(CheckpointId(1), CheckpointKind::Incremental)?;
//! let keyed_state = snapshot.write(&pending)?;
//! let done = pending.commit(CheckpointContent {
//!     operator_states: vec![OperatorSubtaskState {
//!         operator_id: subtask.operator_id.clone(),
//!         subtask_index: 0,
//!         parallelism: 1,
//!         max_parallelism: subtask.max_parallelism.get(),
//!         key_groups: subtask.key_groups()?,
//!         keyed_state,
//!         operator_state: Vec::new(),
//!     }],
//!     source_offsets: Vec::new(),
//!     properties: Vec::new(),
//! })?;
//! assert!(done.external_path.ends_with("job-1/chk-1"));
//! drop(keyed);
//!
//! // Restore the latest checkpoint of the job (with any parallelism).
//! let found = resolve_verified(StdFs::shared(), &root.join("checkpoints/job-1"), false)?;
//! let storage = found.storage(StdFs::shared());
//! let from = RestoreFrom {
//!     checkpoint_id: found.checkpoint_id,
//!     storage: &storage,
//!     subtasks: &found.metadata.operator_states,
//! };
//! let mut restored = backend.keyed_state(&subtask, Some(from))?;
//! let mut state = KeyedState::new(restored.backend());
//! state.set_current_key("alice")?;
//! assert_eq!(state.value(&clicks)?.get()?, Some(3));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod error;
pub mod failpoint;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fs;
pub mod lsm;
pub mod state;
pub mod stream;

pub use error::{Error, Result};
