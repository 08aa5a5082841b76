//! Sorted string tables (SSTs): immutable, block-based files of internal keys.
//!
//! A table is written once by a [`TableBuilder`] (a flush or a compaction output) and
//! then only read, by [`Table`] (with positioned reads into the block cache, or through a
//! memory mapping: [`crate::lsm::TableReads`]). This module owns the table
//! format, documented byte by byte in `format-spec/sst.md`; it never modifies, renames or
//! deletes a table file (the store's version set decides a file's life).
//!
//! - [`block`]: the data/index block format and the per-block trailer (type + crc32c).
//! - [`bloom`]: the per-table bloom filter over user keys and its hash.
//! - [`footer`]: block handles and the fixed-size footer.
//! - [`builder`]: writes a table.
//! - [`table`]: opens, validates, looks up and iterates a table.
//! - [`cache`]: the shared block cache (blocks as stored or decompressed, see
//!   [`BlockCacheForm`]).

pub mod block;
pub mod bloom;
pub mod builder;
pub mod cache;
pub mod footer;
pub mod table;

pub use builder::{TableBuilder, TableOptions};
pub use cache::{
    BlockCache, BlockCacheAdmission, BlockCacheForm, CacheStats, CachedBlock, Lookup, Spares,
};
pub use table::{BlockInfo, LookupResult, Table, TableIter, TableProperties};
