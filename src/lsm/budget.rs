//! One memory budget for many stores (Flink's managed memory for RocksDB: one block
//! cache and one write-buffer limit shared by every state backend of a process).
//!
//! With the `lsm` state backend every operator subtask has a store of its own, so
//! per-store memtables and caches would multiply with the parallelism. Stores opened with
//! the same [`MemoryBudget`] ([`crate::lsm::Options::memory_budget`]) share one block cache
//! and count their memtables against one write-buffer limit: a store whose write finds the
//! stores' memtables together over the limit switches its own memtable for a flush
//! (RocksDB's write buffer manager does the same).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::sst::BlockCache;
use crate::error::{Error, Result};

/// Flink's default share of managed memory for write buffers
/// (`state.backend.rocksdb.memory.write-buffer-ratio`).
pub const DEFAULT_WRITE_BUFFER_RATIO: f64 = 0.5;

/// A store's memtable smaller than this is not switched for the budget: switching tiny
/// memtables would only make tiny tables.
pub const MIN_BUDGET_FLUSH_BYTES: usize = 64 << 10;

/// Memory shared by several stores: a block cache and a limit on their memtables.
#[derive(Debug)]
pub struct MemoryBudget {
    total_bytes: usize,
    write_buffer_bytes: usize,
    cache: Arc<BlockCache>,
    memtables: AtomicUsize,
    strict: bool,
}

impl MemoryBudget {
    /// `total_bytes` shared by every store opened with it: half for memtables, half for
    /// the block cache (Flink's default ratio).
    pub fn new(total_bytes: usize) -> Result<Arc<MemoryBudget>> {
        MemoryBudget::with_write_buffer_ratio(total_bytes, DEFAULT_WRITE_BUFFER_RATIO)
    }

    /// `total_bytes`, of which `ratio` (in `(0, 1)`) for memtables and the rest for the
    /// block cache.
    pub fn with_write_buffer_ratio(total_bytes: usize, ratio: f64) -> Result<Arc<MemoryBudget>> {
        MemoryBudget::build(total_bytes, ratio, false)
    }

    /// [`MemoryBudget::new`], kept strictly: a store whose write finds the memtables over
    /// the limit while its own previous memtable is still being flushed waits for that
    /// flush instead of switching to yet another memtable (RocksDB's write buffer manager
    /// with `allow_stall`). The memtables then stay within the limit plus one small
    /// memtable per store, at the cost of writers waiting for flushes.
    pub fn new_strict(total_bytes: usize) -> Result<Arc<MemoryBudget>> {
        MemoryBudget::build(total_bytes, DEFAULT_WRITE_BUFFER_RATIO, true)
    }

    fn build(total_bytes: usize, ratio: f64, strict: bool) -> Result<Arc<MemoryBudget>> {
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(Error::InvalidOptions(format!(
                "write buffer ratio {ratio} is not between 0 and 1"
            )));
        }
        if total_bytes < 1 << 20 {
            return Err(Error::InvalidOptions(format!(
                "a memory budget of {total_bytes} bytes is below 1 MiB"
            )));
        }
        let write_buffer_bytes = (total_bytes as f64 * ratio) as usize;
        Ok(Arc::new(MemoryBudget {
            total_bytes,
            write_buffer_bytes,
            cache: BlockCache::new(total_bytes - write_buffer_bytes),
            memtables: AtomicUsize::new(0),
            strict,
        }))
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// The limit on the memtables of all its stores together.
    pub fn write_buffer_bytes(&self) -> usize {
        self.write_buffer_bytes
    }

    /// Bytes of memtables (active and waiting for their flush) its stores hold now.
    pub fn memtable_bytes(&self) -> usize {
        self.memtables.load(Ordering::Relaxed)
    }

    /// The shared block cache (each store reads through a view of its own).
    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    /// True when writers wait for flushes rather than go over the limit
    /// ([`MemoryBudget::new_strict`]).
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// True when the stores' memtables together are over the limit.
    pub fn over(&self) -> bool {
        self.memtable_bytes() > self.write_buffer_bytes
    }

    /// Moves one store's charge from `from` to `to` bytes.
    pub(crate) fn recharge(&self, from: usize, to: usize) {
        if to >= from {
            self.memtables.fetch_add(to - from, Ordering::Relaxed);
        } else {
            self.memtables.fetch_sub(from - to, Ordering::Relaxed);
        }
    }
}
