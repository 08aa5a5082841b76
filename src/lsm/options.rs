//! Options of a store, with documented defaults, validated once at open.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs};
use crate::lsm::sst::{BlockCacheAdmission, BlockCacheForm};

/// When the write-ahead log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Every write is fsynced on its own before it is acknowledged.
    PerWrite,
    /// Every write is fsynced before it is acknowledged, and concurrent writers share one
    /// fsync (group commit). Same guarantee as [`SyncMode::PerWrite`], higher throughput.
    GroupCommit,
    /// A background thread fsyncs the log at this interval; a crash loses at most the
    /// writes of the last interval (a process crash alone loses nothing: the log is handed
    /// to the operating system on every write).
    Periodic(Duration),
    /// The log is handed to the operating system on every write but never fsynced by the
    /// write path (it is fsynced when a memtable is flushed and at close).
    None,
}

/// Block compression of SST data blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Blocks are stored as they are.
    None,
    /// lz4 (block format, lz4_flex) where it saves at least 1/8 of the block.
    Lz4,
}

/// How the data blocks of tables are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableReads {
    /// Each block is read with a positioned read (`pread`) into the block cache, raw
    /// blocks as well as compressed ones (held in the form `block_cache_form` says);
    /// compactions read their inputs sequentially
    /// through a readahead buffer of their own and leave the cache alone. The process's
    /// resident memory is bounded by the memtables, the block cache and the tables' index
    /// and filter blocks, whatever the size of the store: the operating system's page
    /// cache (not counted as the process's) keeps recently read table pages.
    #[default]
    Positioned,
    /// Each table is memory-mapped whole and raw blocks are read in place (only
    /// decompressed blocks go to the block cache). Reads of blocks in the page cache cost
    /// no system call, but every mapped page read stays resident in the process (as
    /// file-backed memory) until the kernel reclaims it, so the resident set grows with
    /// the store.
    Mapped,
}

/// What to do when the WAL is damaged at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRecovery {
    /// Drop a torn record at the tail of the last log (it was never acknowledged); any
    /// other damage fails the open with an error naming the file and offset.
    TolerateTornTail,
    /// Recover every record before the first damaged one and drop the rest (point in
    /// time recovery). Writes after the damage are lost; use when the open fails otherwise,
    /// for example after a power loss with [`SyncMode::None`] or [`SyncMode::Periodic`],
    /// which may leave an older log damaged while a newer one survived.
    PointInTime,
}

/// Options of a store. Build with `Options::default()` and change fields.
#[derive(Debug, Clone)]
pub struct Options {
    /// Create the directory and an empty store if none exists. Default: true.
    pub create_if_missing: bool,
    /// Fail the open if a store already exists. Default: false.
    pub error_if_exists: bool,
    /// Write a write-ahead log. Without it, writes since the last flush are lost in a crash
    /// (the stream layer turns it off: checkpoints are its point of durability). Default: true.
    pub wal: bool,
    /// When the log is fsynced. Default: [`SyncMode::GroupCommit`].
    pub sync: SyncMode,
    /// What to do when the WAL is damaged at open. Default: [`WalRecovery::TolerateTornTail`].
    pub wal_recovery: WalRecovery,
    /// A memtable becomes immutable and is flushed when it holds this many bytes.
    /// Default: 64 MiB.
    pub memtable_size_bytes: usize,
    /// Immutable memtables waiting for flush before writes stop. Default: 2.
    pub max_immutable_memtables: usize,
    /// Target size of an uncompressed SST data block. Default: 4 KiB.
    pub block_size_bytes: usize,
    /// Keys between restart points in a block. Default: 16.
    pub block_restart_interval: usize,
    /// Data block compression. Default: [`Compression::Lz4`].
    pub compression: Compression,
    /// A flush compresses data blocks on a second thread while the flush thread builds the
    /// next ones, so that it ends sooner (a checkpoint and a writer stalled on a full
    /// memtable wait for it); the CPU work is the same. The table is byte for byte the same
    /// either way. Compactions compress inline on the compaction thread. Default: true.
    pub flush_compression_thread: bool,
    /// Bloom filter bits per key (0 disables the filter). Default: 10 (about 1% false positives).
    pub bloom_bits_per_key: u32,
    /// Bytes of blocks kept in the block cache (0 disables it), each charged by its buffer
    /// (the block rounded up to 256 bytes, so that an evicted block's buffer can take the
    /// next block read; each thread that reads keeps at most four such buffers between
    /// reads, and one more for a block it decompressed without caching it). The index and
    /// filter blocks of open tables are charged to the same budget. Default: 64 MiB.
    pub block_cache_bytes: usize,
    /// In what form the block cache holds blocks stored compressed: as stored until they
    /// have been hit [`PROMOTE_AFTER_HITS`](super::sst::cache::PROMOTE_AFTER_HITS) times,
    /// or always decompressed ([`BlockCacheForm`]). Ignored under a
    /// [`MemoryBudget`](super::budget::MemoryBudget), whose cache always has the default
    /// form. Default: [`BlockCacheForm::CompressedUntilReused`].
    pub block_cache_form: BlockCacheForm,
    /// Which blocks that missed a full block cache it takes in: those that also missed a
    /// short while before, or all of them ([`BlockCacheAdmission`]). Ignored under a
    /// [`MemoryBudget`](super::budget::MemoryBudget), whose cache always has the default
    /// policy. Default: [`BlockCacheAdmission::SecondMiss`].
    pub block_cache_admission: BlockCacheAdmission,
    /// How table data blocks are read. Default: [`TableReads::Positioned`].
    pub table_reads: TableReads,
    /// Verify the crc32c of every block read. Default: true.
    pub verify_checksums: bool,
    /// Run compactions in the background. Default: true.
    pub compaction: bool,
    /// Number of levels (L0 .. L(n-1)). Default: 7.
    pub num_levels: usize,
    /// L0 files that trigger a compaction into the base level (L1 with static level
    /// sizes). While the base-level files such a compaction would rewrite hold more bytes
    /// than L0, it waits for twice this many files (at most `l0_slowdown_writes_trigger`),
    /// which halves the bytes written per flushed byte when the base level is large next
    /// to a flush (a store growing from empty rewrites its last level this way).
    /// Default: 4.
    pub l0_compaction_trigger: usize,
    /// L0 files at which each write is delayed by 1 ms. Default: 20.
    pub l0_slowdown_writes_trigger: usize,
    /// L0 files at which writes wait for compaction. Default: 36.
    pub l0_stop_writes_trigger: usize,
    /// Target total size of the base level (the level level-0 compacts into). With static
    /// level sizes the base level is L1 and each deeper level's target is
    /// `level_size_multiplier` times larger; with dynamic sizes (see
    /// `level_compaction_dynamic_level_bytes`) it is the base level's largest nominal
    /// target and every level's smallest. Default: 256 MiB.
    pub max_bytes_for_level_base: u64,
    /// Size ratio between adjacent levels. Default: 10.
    pub level_size_multiplier: u64,
    /// Dynamic level sizes, as RocksDB's option of the same name: the level targets are
    /// worked out from the size of the largest level below L0 (normally the last level),
    /// each level `level_size_multiplier` times smaller than the one below; the shallowest
    /// level whose target is above `max_bytes_for_level_base / level_size_multiplier` is
    /// the base level, L0 compacts straight into it, and the levels above it stay empty
    /// (no target is set below `max_bytes_for_level_base`). A store growing from empty
    /// thus writes its data first into the last level and adds levels above only as the
    /// data needs them, which writes fewer bytes per byte stored than static targets do,
    /// where L1 of up to `max_bytes_for_level_base` is rewritten by every L0 compaction
    /// however small the store. Levels holding data above the base level the sizes call
    /// for (a store that shrank, or was written with static sizes) are compacted down, and
    /// a manual full compaction writes to the last level. When false, the static targets:
    /// L1 is `max_bytes_for_level_base` and each deeper level `level_size_multiplier`
    /// times the one above. Either way the files and the manifest are the same format, so
    /// a store can be reopened with the other setting. Default: true.
    pub level_compaction_dynamic_level_bytes: bool,
    /// Compaction output files are cut at this size. Default: 64 MiB.
    pub target_file_size_bytes: u64,
    /// Threads one compaction may merge with (RocksDB's option of the same name): a
    /// compaction reading at least two target-sized files' worth of bytes is split at
    /// input file boundaries into up to this many key ranges of about equal input bytes,
    /// merged side by side, one thread each (the compaction thread takes the first); the
    /// output is the same set of keys and versions in the same files' order. 1 merges every
    /// compaction on the compaction thread alone. Default: the machine's available
    /// parallelism, at most 4.
    pub max_subcompactions: usize,
    /// When the manifest grows past this size, a new one holding only the current state
    /// replaces it. Default: 64 MiB.
    pub max_manifest_bytes: u64,
    /// The file system every file operation goes through. Default: the real one.
    pub fs: Arc<dyn FileSystem>,
    /// Asked, during compaction, about the newest value of each key (see
    /// [`CompactionFilter`]). Default: none.
    pub compaction_filter: Option<Arc<dyn CompactionFilter>>,
    /// Memory shared with other stores: when set, the store reads through the budget's
    /// block cache (`block_cache_bytes` is ignored) and counts its memtables against the
    /// budget's write-buffer limit. Default: none.
    pub memory_budget: Option<Arc<super::budget::MemoryBudget>>,
}

/// What a [`CompactionFilter`] decides for a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterDecision {
    /// Keep the value as it is.
    Keep,
    /// Remove the key: the value becomes a tombstone (dropped where nothing older can lie
    /// below it), so no older value of the key comes back.
    Remove,
    /// Replace the value with these bytes.
    Change(Vec<u8>),
}

/// A hook that compaction calls for the newest value of each key it rewrites, so that an
/// application can drop or rewrite values by their contents (the state layer drops values
/// whose time to live has expired). A compaction calls it only when no snapshot is open
/// as it starts, and drops its output if a snapshot opens while it runs (a snapshot's view
/// never changes); never for tombstones; it must be cheap, as it runs on the compaction
/// thread. Values it would remove stay readable until a compaction meets them; a manual
/// compaction (`Db::compact_range`) meets every value.
pub trait CompactionFilter: Send + Sync + std::fmt::Debug {
    /// The decision for `value`, the newest value of `key`, going to `level`.
    fn filter(&self, level: usize, key: &[u8], value: &[u8]) -> FilterDecision;
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create_if_missing: true,
            error_if_exists: false,
            wal: true,
            sync: SyncMode::GroupCommit,
            wal_recovery: WalRecovery::TolerateTornTail,
            memtable_size_bytes: 64 << 20,
            max_immutable_memtables: 2,
            block_size_bytes: 4096,
            block_restart_interval: 16,
            compression: Compression::Lz4,
            flush_compression_thread: true,
            bloom_bits_per_key: 10,
            block_cache_bytes: 64 << 20,
            block_cache_form: BlockCacheForm::default(),
            block_cache_admission: BlockCacheAdmission::default(),
            table_reads: TableReads::Positioned,
            verify_checksums: true,
            compaction: true,
            num_levels: 7,
            l0_compaction_trigger: 4,
            l0_slowdown_writes_trigger: 20,
            l0_stop_writes_trigger: 36,
            max_bytes_for_level_base: 256 << 20,
            level_size_multiplier: 10,
            level_compaction_dynamic_level_bytes: true,
            target_file_size_bytes: 64 << 20,
            max_subcompactions: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            max_manifest_bytes: 64 << 20,
            fs: StdFs::shared(),
            compaction_filter: None,
            memory_budget: None,
        }
    }
}

impl Options {
    /// Checks the options for consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOptions(m));
        if self.memtable_size_bytes < 1024 {
            return bad(format!(
                "memtable_size_bytes = {} is below 1 KiB",
                self.memtable_size_bytes
            ));
        }
        if self.max_immutable_memtables == 0 {
            return bad("max_immutable_memtables must be at least 1".into());
        }
        if !(64..=(16 << 20)).contains(&self.block_size_bytes) {
            return bad(format!(
                "block_size_bytes = {} is outside 64 B ..= 16 MiB",
                self.block_size_bytes
            ));
        }
        if !(1..=1024).contains(&self.block_restart_interval) {
            return bad("block_restart_interval must be in 1 ..= 1024".into());
        }
        if self.bloom_bits_per_key > 64 {
            return bad("bloom_bits_per_key must be at most 64".into());
        }
        if !(2..=16).contains(&self.num_levels) {
            return bad("num_levels must be in 2 ..= 16".into());
        }
        if self.l0_compaction_trigger == 0
            || self.l0_slowdown_writes_trigger < self.l0_compaction_trigger
            || self.l0_stop_writes_trigger < self.l0_slowdown_writes_trigger
        {
            return bad(
                "need 0 < l0_compaction_trigger <= l0_slowdown_writes_trigger <= l0_stop_writes_trigger"
                    .into(),
            );
        }
        if self.level_size_multiplier < 2 {
            return bad("level_size_multiplier must be at least 2".into());
        }
        if self.max_subcompactions == 0 {
            return bad("max_subcompactions must be at least 1".into());
        }
        if self.target_file_size_bytes < 1024 || self.max_bytes_for_level_base < 1024 {
            return bad(
                "target_file_size_bytes and max_bytes_for_level_base must be at least 1 KiB".into(),
            );
        }
        if self.max_manifest_bytes < 4096 {
            return bad("max_manifest_bytes must be at least 4 KiB".into());
        }
        if let SyncMode::Periodic(d) = self.sync {
            if d.is_zero() {
                return bad("SyncMode::Periodic needs a non-zero interval".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Options::default().validate().unwrap();
        let o = Options {
            block_size_bytes: 1,
            ..Options::default()
        };
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("block_size_bytes"), "{e}");
    }
}
