//! Store statistics: counters kept with relaxed atomics on the hot paths, and the
//! [`DbStats`] snapshot that [`crate::lsm::Db::stats`] returns.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by reads, flushes, compactions and stalls. (The write path's
/// own tallies live beside the log, under its lock: see `lsm::db`.)
#[derive(Debug, Default)]
pub struct Counters {
    /// fsyncs of WALs.
    pub wal_syncs: AtomicU64,
    /// Bytes written by memtable flushes.
    pub flush_bytes_written: AtomicU64,
    /// Memtables flushed.
    pub flushes: AtomicU64,
    /// Bytes read by compactions.
    pub compaction_bytes_read: AtomicU64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: AtomicU64,
    /// Compactions run (trivial moves included).
    pub compactions: AtomicU64,
    /// Compactions that only moved a file to the next level.
    pub trivial_moves: AtomicU64,
    /// Key ranges of compactions merged on a thread of their own, beside the compaction
    /// thread (see `Options::max_subcompactions`).
    pub subcompactions: AtomicU64,
    /// Values the compaction filter removed.
    pub compaction_filter_removed: AtomicU64,
    /// Values the compaction filter changed.
    pub compaction_filter_changed: AtomicU64,
    /// Compactions whose filtered output was dropped because a snapshot opened meanwhile.
    pub compaction_filter_discarded: AtomicU64,
    /// Writes delayed because L0 passed the slowdown trigger.
    pub slowdowns: AtomicU64,
    /// Times writes stopped to wait for a flush or compaction.
    pub stops: AtomicU64,
    /// Total microseconds writers spent delayed or stopped.
    pub stall_micros: AtomicU64,
    /// Bloom filters consulted by point lookups.
    pub bloom_checked: StripedCounter,
    /// Point lookups a bloom filter answered without reading the table.
    pub bloom_useful: StripedCounter,
    /// Point lookups.
    pub gets: StripedCounter,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A counter that many threads add to at once (the read path's): each thread adds to one
/// of `STRIPES` cells, each on a cache line of its own, so two readers on two cores do
/// not pass one line back and forth on every lookup; a read of the counter sums the cells.
#[derive(Debug, Default)]
pub struct StripedCounter {
    cells: [PaddedU64; STRIPES],
}

/// Cells of a [`StripedCounter`].
const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedU64(AtomicU64);

impl StripedCounter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
            };
        }
        let i = STRIPE.with(|s| *s);
        // i < STRIPES by construction.
        self.cells[i].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of every cell.
    pub fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// Files and bytes of one level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Number of files.
    pub files: usize,
    /// Total bytes.
    pub bytes: u64,
}

/// A point-in-time copy of a store's statistics.
#[derive(Debug, Clone, Default)]
pub struct DbStats {
    /// Per level: files and bytes.
    pub levels: Vec<LevelStats>,
    /// The level that level-0 compactions write to (1 with static level sizes; see
    /// `Options::level_compaction_dynamic_level_bytes`).
    pub base_level: usize,
    /// Per level, its target size: a level above its target is compacted into the next.
    /// `u64::MAX` for level 0 (compacted by its file count) and for the levels above the
    /// base level (which stay empty). The last level is never compacted by size; with
    /// dynamic level sizes its target is the size of the largest level (at most its
    /// static target).
    pub level_target_bytes: Vec<u64>,
    /// Bytes of keys and values written by the user.
    pub user_bytes_written: u64,
    /// Write batches accepted.
    pub writes: u64,
    /// Bytes appended to WALs.
    pub wal_bytes_written: u64,
    /// fsyncs of WALs.
    pub wal_syncs: u64,
    /// Write groups committed.
    pub write_groups: u64,
    /// Bytes written by flushes.
    pub flush_bytes_written: u64,
    /// Memtables flushed.
    pub flushes: u64,
    /// Bytes read by compactions.
    pub compaction_bytes_read: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Compactions run.
    pub compactions: u64,
    /// Trivial moves among them.
    pub trivial_moves: u64,
    /// Key ranges of compactions merged on a thread of their own, beside the compaction
    /// thread (see `Options::max_subcompactions`).
    pub subcompactions: u64,
    /// Values the compaction filter removed.
    pub compaction_filter_removed: u64,
    /// Values the compaction filter changed.
    pub compaction_filter_changed: u64,
    /// Compactions whose filtered output was dropped because a snapshot opened meanwhile.
    pub compaction_filter_discarded: u64,
    /// Writes delayed by the L0 slowdown trigger.
    pub slowdowns: u64,
    /// Write stops (waiting for flush or compaction).
    pub stops: u64,
    /// Microseconds writers spent stalled.
    pub stall_micros: u64,
    /// Bloom filters consulted.
    pub bloom_checked: u64,
    /// Lookups a bloom filter answered.
    pub bloom_useful: u64,
    /// Point lookups.
    pub gets: u64,
    /// Block cache hits.
    pub cache_hits: u64,
    /// Block cache misses.
    pub cache_misses: u64,
    /// Block cache hits that found the block held compressed (see
    /// [`crate::lsm::BlockCacheForm`]).
    pub cache_compressed_hits: u64,
    /// Bytes of blocks the block cache holds compressed (part of `cache_bytes`).
    pub cache_compressed_bytes: u64,
    /// Block cache misses whose block was read but not cached (see
    /// [`crate::lsm::BlockCacheAdmission`]).
    pub cache_declined: u64,
    /// Bytes held by the block cache.
    pub cache_bytes: u64,
    /// Bytes charged to the block cache for memory held outside it (the index and filter
    /// blocks of open tables; with a shared [`crate::lsm::MemoryBudget`], of every store's
    /// tables). Blocks use the cache's capacity less these.
    pub cache_bytes_reserved: u64,
    /// Bytes of index and filter blocks held in memory by the open tables of the current
    /// version (charged to the block cache when there is one).
    pub table_memory_bytes: u64,
    /// Bytes in the active and immutable memtables.
    pub memtable_bytes: u64,
    /// Immutable memtables waiting for flush.
    pub immutable_memtables: usize,
    /// Last sequence number.
    pub last_sequence: u64,
}

impl DbStats {
    /// Bytes written to tables (flush + compaction) per byte written by the user.
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes_written == 0 {
            return 0.0;
        }
        (self.flush_bytes_written + self.compaction_bytes_written) as f64
            / self.user_bytes_written as f64
    }

    /// Bytes in all levels.
    pub fn total_table_bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.bytes).sum()
    }

    pub(crate) fn fill_counters(&mut self, c: &Counters) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.wal_syncs = g(&c.wal_syncs);
        self.flush_bytes_written = g(&c.flush_bytes_written);
        self.flushes = g(&c.flushes);
        self.compaction_bytes_read = g(&c.compaction_bytes_read);
        self.compaction_bytes_written = g(&c.compaction_bytes_written);
        self.compactions = g(&c.compactions);
        self.trivial_moves = g(&c.trivial_moves);
        self.subcompactions = g(&c.subcompactions);
        self.compaction_filter_removed = g(&c.compaction_filter_removed);
        self.compaction_filter_changed = g(&c.compaction_filter_changed);
        self.compaction_filter_discarded = g(&c.compaction_filter_discarded);
        self.slowdowns = g(&c.slowdowns);
        self.stops = g(&c.stops);
        self.stall_micros = g(&c.stall_micros);
        self.bloom_checked = c.bloom_checked.get();
        self.bloom_useful = c.bloom_useful.get();
        self.gets = c.gets.get();
    }
}
