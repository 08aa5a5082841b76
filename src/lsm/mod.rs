//! The LSM store: write-ahead log, memtable, SSTables, manifest, compaction.
//!
//! This layer knows nothing of checkpoints, jobs or state types. What it offers the layers
//! above is a key-value store ([`Db`]) and, for checkpoints, "the set of live immutable
//! files plus the sequence number they are consistent at" ([`Db::live_files`]), described,
//! encoded and opened again from a copy by [`LiveSet`].

mod anon;
pub mod batch;
pub mod budget;
mod compaction;
pub mod db;
pub mod filename;
pub mod iter;
pub mod live_set;
pub mod manifest;
pub mod memtable;
pub mod options;
pub mod sst;
pub mod stats;
pub mod types;
pub mod version;
pub mod version_set;
pub mod wal;

pub use batch::WriteBatch;
pub use budget::MemoryBudget;
pub use db::{Db, DbIterator, LiveFile, LiveFiles, LiveFilesTicket, Snapshot};
pub use live_set::{LiveSet, LiveSetLookup, LiveSetTable};
pub use options::{
    CompactionFilter, Compression, FilterDecision, Options, SyncMode, TableReads, WalRecovery,
};
pub use sst::{BlockCacheAdmission, BlockCacheForm};
pub use stats::DbStats;
pub use types::{FileNumber, SeqNo, ValueKind};
