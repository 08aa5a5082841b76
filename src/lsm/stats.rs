//! Store statistics: counters kept with relaxed atomics on the hot paths, and the
//! [`DbStats`] snapshot that [`crate::lsm::Db::stats`] returns.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by the write path, reads, flushes and compactions.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of keys and values written by the user.
    pub user_bytes_written: AtomicU64,
    /// Write batches accepted.
    pub writes: AtomicU64,
    /// Bytes appended to WALs.
    pub wal_bytes_written: AtomicU64,
    /// fsyncs of WALs.
    pub wal_syncs: AtomicU64,
    /// Write groups committed (a group shares one WAL append and fsync).
    pub write_groups: AtomicU64,
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
    pub bloom_checked: AtomicU64,
    /// Point lookups a bloom filter answered without reading the table.
    pub bloom_useful: AtomicU64,
    /// Point lookups.
    pub gets: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
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
    /// Bytes held by the block cache.
    pub cache_bytes: u64,
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
        self.user_bytes_written = g(&c.user_bytes_written);
        self.writes = g(&c.writes);
        self.wal_bytes_written = g(&c.wal_bytes_written);
        self.wal_syncs = g(&c.wal_syncs);
        self.write_groups = g(&c.write_groups);
        self.flush_bytes_written = g(&c.flush_bytes_written);
        self.flushes = g(&c.flushes);
        self.compaction_bytes_read = g(&c.compaction_bytes_read);
        self.compaction_bytes_written = g(&c.compaction_bytes_written);
        self.compactions = g(&c.compactions);
        self.trivial_moves = g(&c.trivial_moves);
        self.compaction_filter_removed = g(&c.compaction_filter_removed);
        self.compaction_filter_changed = g(&c.compaction_filter_changed);
        self.compaction_filter_discarded = g(&c.compaction_filter_discarded);
        self.slowdowns = g(&c.slowdowns);
        self.stops = g(&c.stops);
        self.stall_micros = g(&c.stall_micros);
        self.bloom_checked = g(&c.bloom_checked);
        self.bloom_useful = g(&c.bloom_useful);
        self.gets = g(&c.gets);
    }
}
