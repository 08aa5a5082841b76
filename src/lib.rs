//! tidemark: an embedded state store for stream processing.
//!
//! Its core is an LSM store with a write-ahead log ([`lsm`]); checkpoints of it are sets
//! of hard-linked immutable SST files plus a `_metadata` manifest, laid out as Apache
//! Flink lays out its checkpoints ([`checkpoint`]).
//!
//! A store, an incremental checkpoint of it, and a restore from the checkpoint:
//!
//! ```
//! use std::sync::Arc;
//! use tidemark::checkpoint::{
//!     resolve_verified, CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore, JobId,
//!     KeyGroupRange, LocalStorage,
//! };
//! use tidemark::fs::StdFs;
//! use tidemark::lsm::{Db, Options};
//! use tidemark::state::lsm_snapshot::{checkpoint_store, restore_store, SubtaskId};
//!
//! # fn main() -> tidemark::Result<()> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let root = tmp.path();
//! let db = Db::open(root.join("working"), Options::default())?;
//! db.put(b"clicks:alice", b"3")?;
//!
//! let storage = LocalStorage::new(StdFs::shared(), root.join("checkpoints"), JobId::new("job-1")?);
//! let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default())?;
//! let subtask = SubtaskId {
//!     operator_id: "counter".into(),
//!     subtask_index: 0,
//!     parallelism: 1,
//!     max_parallelism: 128,
//!     key_groups: KeyGroupRange::new(0, 127)?,
//! };
//! let done = checkpoint_store(&store, CheckpointId(1), CheckpointKind::Incremental, &db, &subtask, vec![])?;
//! assert!(done.completed.external_path.ends_with("job-1/chk-1"));
//!
//! db.put(b"clicks:alice", b"4")?; // after the checkpoint: not in it
//!
//! // Restore the latest checkpoint of the job into a fresh working directory.
//! let found = resolve_verified(StdFs::shared(), &root.join("checkpoints/job-1"), false)?;
//! let restored = restore_store(
//!     &found.storage(StdFs::shared()),
//!     found.checkpoint_id,
//!     &found.metadata.operator_states[0],
//!     &root.join("restored"),
//!     Options::default(),
//! )?;
//! assert_eq!(restored.get(b"clicks:alice")?, Some(b"3".to_vec()));
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
