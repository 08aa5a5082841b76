//! The LSM store: write-ahead log, memtable, SSTables, manifest, compaction.
//!
//! This layer knows nothing of checkpoints, jobs or state types. What it offers the layers
//! above is a key-value store ([`Db`]) and, for checkpoints, "the set of live immutable
//! files plus the sequence number they are consistent at" ([`Db::live_files`]).

pub mod batch;
pub mod filename;
pub mod iter;
pub mod manifest;
pub mod memtable;
pub mod options;
pub mod sst;
pub mod types;
pub mod wal;

pub use options::{Compression, Options, SyncMode, WalRecovery};
pub use types::{FileNumber, SeqNo, ValueKind};
