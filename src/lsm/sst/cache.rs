//! A sharded cache of blocks (CLOCK, an approximation of LRU), keyed by (store, file
//! number, block offset) and charged by bytes. Several stores can share one cache's
//! capacity ([`BlockCache::for_new_store`]): each sees its own file numbers.
//!
//! A block stored compressed enters the cache as stored (its lz4 payload, checked when it
//! was read) and is held decompressed once it has been hit [`PROMOTE_AFTER_HITS`] times
//! ([`BlockCacheForm::CompressedUntilReused`], the default): the same bytes hold as many
//! more blocks as compression saves, so more reads of a store larger than the cache hit,
//! while the blocks in demand cost no decompression. [`BlockCacheForm::Decompressed`]
//! caches every block decompressed.
//!
//! Tables read with positioned reads cache the blocks they read (those the cache admits,
//! below); mapped tables cache only blocks that had to be decompressed, decompressed (a
//! raw block is read in place from the mapping, and the mapping is the compressed form).
//! The index and filter blocks of open tables are charged to the same budget
//! ([`BlockCache::reserve`]): blocks use what the reservations leave. Each shard has its
//! own lock, held only for a map lookup or update, never while a block is read or
//! decompressed.
//!
//! Once a shard is full, a block that missed is cached only if it also missed a short
//! while before ([`BlockCacheAdmission::SecondMiss`], the default): each shard remembers
//! the blocks that missed lately in a small bitmap (one bit per hashed block, cleared
//! after as many misses as the shard holds blocks), and the caller caches a block only
//! when its bit was already set. Under reads spread over a store much larger than the
//! cache most blocks are read once in a while, and inserting each of them (copying it,
//! evicting another, updating the map twice) costs more than the few later reads that
//! would hit; blocks read twice in a short while are the ones that hit again. While a shard has
//! room for a block, the block is admitted.
//!
//! [`BlockCache::insert`] hands back the buffers of blocks it evicted when no reader
//! still holds them, for the inserting thread's next reads that miss to decode into (see
//! [`crate::lsm::sst::block::OwnedBlock`]): a read beyond the cache then costs no
//! allocation, no zeroing and no free.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::lsm::sst::block::OwnedBlock;
use crate::lsm::types::FileNumber;

/// Number of independently locked shards (a power of two).
const NUM_SHARDS: usize = 16;
const _: () = assert!(NUM_SHARDS.is_power_of_two());

/// Counters of a [`BlockCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found their block.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Hits that found the block held compressed (and decompressed it).
    pub compressed_hits: u64,
    /// Bytes of blocks held compressed now (part of `bytes_used`).
    pub compressed_bytes: u64,
    /// Blocks inserted.
    pub inserts: u64,
    /// Blocks evicted to make room (erased files are not counted).
    pub evictions: u64,
    /// Bytes of blocks held now.
    pub bytes_used: u64,
    /// The cache's capacity in bytes.
    pub capacity_bytes: u64,
    /// Bytes reserved for memory held outside the cache under its budget (the index and
    /// filter blocks of open tables): blocks may use only the capacity left over.
    pub bytes_reserved: u64,
    /// Misses whose block the cache declined to admit (read once lately, the cache full;
    /// see [`BlockCacheAdmission`]).
    pub declined: u64,
}

/// (store, file number, block offset).
type Key = (u64, FileNumber, u64);

/// Hashes a (store, file, offset) key with two multiplications: the keys are not chosen by an
/// adversary, and SipHash would cost more than the rest of a cache hit.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

#[derive(Debug)]
struct Slot {
    key: Key,
    block: OwnedBlock,
    /// Set by every hit; cleared by the clock hand, which evicts slots it finds clear.
    referenced: bool,
    /// `block` is the block's lz4 payload as stored, not the decompressed block.
    compressed: bool,
    /// Hits since the block was cached (saturating).
    hits: u8,
}

/// A block as the cache holds it.
#[derive(Debug, Clone)]
pub enum CachedBlock {
    /// Decompressed, ready to search.
    Decoded(OwnedBlock),
    /// The block's lz4 payload as it was stored (checked when it was read), to decompress.
    /// `promote` when the block is in demand (hit [`PROMOTE_AFTER_HITS`] times since it was
    /// cached): the caller then caches the decompressed block in its place
    /// ([`BlockCache::insert`]).
    Compressed {
        /// The stored bytes of the block (uncompressed length and lz4 payload).
        payload: OwnedBlock,
        /// Whether to cache the decompressed block in place of this one.
        promote: bool,
    },
}

/// Buffers of evicted blocks that nobody else held, handed back by an insert for the
/// caller's next reads to decode into (see [`OwnedBlock`]).
#[derive(Debug, Default)]
pub struct Spares(pub [Option<Arc<[u8]>>; 2]);

impl Spares {
    /// Whether no buffer was handed back.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

impl CachedBlock {
    /// The bytes held: the decompressed block, or the stored payload of a compressed one.
    pub fn bytes(&self) -> &[u8] {
        match self {
            CachedBlock::Decoded(b) | CachedBlock::Compressed { payload: b, .. } => b.as_slice(),
        }
    }
}

/// In what form the cache holds a block that is stored compressed in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockCacheForm {
    /// As stored (lz4), from the read that missed until the block is hit
    /// [`PROMOTE_AFTER_HITS`] times, then decompressed. A cache of a given size holds as
    /// many more blocks as compression saves, which makes more reads of a store larger than
    /// the cache hits; each hit of a block held compressed decompresses it, and blocks in
    /// demand are held decompressed, so a working set that fits pays no decompression.
    #[default]
    CompressedUntilReused,
    /// Always decompressed: every hit is free of decompression; the cache holds fewer
    /// blocks.
    Decompressed,
}

/// Which blocks that missed a full cache takes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockCacheAdmission {
    /// A block that missed is cached if it also missed a short while before (within as
    /// many misses of its shard as the shard holds blocks), or while its shard has room
    /// for it. Reads spread over a store larger than the cache then skip the work of caching
    /// blocks that would be evicted before they are read again; blocks in demand miss
    /// twice in a short while and are cached.
    #[default]
    SecondMiss,
    /// Every block that missed is cached.
    Always,
}

/// A shard's memory of the blocks that missed lately, for [`BlockCacheAdmission::SecondMiss`]:
/// one bit per hashed key, all cleared once as many misses have been recorded as the
/// shard holds blocks (a block whose misses come further apart than that is declined each
/// time). The bits are allocated at the shard's first miss.
#[derive(Debug, Default)]
struct Doorkeeper {
    /// Empty until first used; then `nbits / 64` words.
    bits: Vec<u64>,
    /// A power of two.
    nbits: usize,
    recorded: usize,
}

/// Most blocks of [`DOORKEEPER_BLOCK_BYTES`] a doorkeeper is sized for: a shard's bits take
/// at most 512 KiB however large the cache is configured.
const MAX_DOORKEEPER_BLOCKS: usize = 1 << 18;

impl Doorkeeper {
    /// A doorkeeper for a shard that holds up to `capacity_blocks` blocks of 4 KiB: 16 bits
    /// per such block, so that a window of twice as many smaller blocks (blocks held
    /// compressed) still has eight bits per block, and a key never seen is taken for a
    /// seen one at most about one time in eight.
    fn new(capacity_blocks: usize) -> Doorkeeper {
        let blocks = capacity_blocks.clamp(64, MAX_DOORKEEPER_BLOCKS);
        Doorkeeper {
            bits: Vec::new(),
            nbits: (blocks * 16).next_power_of_two(),
            recorded: 0,
        }
    }

    /// Records a miss of the key hashed to `hash`, forgetting every key once `window`
    /// misses (at least 64, at most one per eight bits) have been recorded; returns whether
    /// the key was recorded already.
    fn check_and_record(&mut self, hash: u64, window: usize) -> bool {
        if self.bits.is_empty() {
            self.bits = vec![0; self.nbits / 64];
        }
        let bit = (hash >> 32) as usize & (self.nbits - 1);
        let Some(word) = self.bits.get_mut(bit / 64) else {
            return true;
        };
        let mask = 1u64 << (bit % 64);
        let seen = *word & mask != 0;
        *word |= mask;
        self.recorded += 1;
        if self.recorded >= window.clamp(64, self.nbits / 8) {
            self.bits.fill(0);
            self.recorded = 0;
        }
        seen
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The block, as the cache holds it.
    Hit(CachedBlock),
    /// Not cached; `admit` says whether the caller should cache the block once it has read it.
    Miss {
        /// Whether to cache the block (see [`BlockCacheAdmission`]).
        admit: bool,
    },
}

/// Hits after which a block held compressed is held decompressed instead.
pub const PROMOTE_AFTER_HITS: u8 = 8;

/// The block size a doorkeeper's bits are reckoned in.
const DOORKEEPER_BLOCK_BYTES: usize = 4096;

/// One shard: a CLOCK approximation of LRU. A hit only sets the slot's reference bit, so
/// it costs one hash lookup; eviction sweeps the hand over the slots, giving each
/// referenced block a second chance.
#[derive(Debug, Default)]
struct Shard {
    map: KeyMap<usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    hand: usize,
    used_bytes: usize,
    /// Bytes of the slots held compressed.
    compressed_bytes: usize,
    /// Lookups of this shard that found / missed their block (counted under the shard's
    /// lock, which a lookup holds anyway, rather than in atomics shared by every reader).
    hits: u64,
    misses: u64,
    compressed_hits: u64,
    declined: u64,
    /// The blocks that missed lately, under [`BlockCacheAdmission::SecondMiss`].
    doorkeeper: Option<Doorkeeper>,
}

impl Shard {
    fn touch(&mut self, key: Key) -> Option<CachedBlock> {
        let i = *self.map.get(&key)?;
        let slot = self.slots.get_mut(i)?.as_mut()?;
        slot.referenced = true;
        slot.hits = slot.hits.saturating_add(1);
        let block = slot.block.clone();
        Some(if slot.compressed {
            self.compressed_hits += 1;
            CachedBlock::Compressed {
                payload: block,
                promote: slot.hits >= PROMOTE_AFTER_HITS,
            }
        } else {
            CachedBlock::Decoded(block)
        })
    }

    fn remove_slot(&mut self, i: usize) -> Option<Slot> {
        let slot = self.slots.get_mut(i)?.take()?;
        self.map.remove(&slot.key);
        self.used_bytes -= slot.block.charge();
        if slot.compressed {
            self.compressed_bytes -= slot.block.charge();
        }
        self.free.push(i);
        Some(slot)
    }

    fn remove(&mut self, key: &Key) -> Option<Slot> {
        let i = *self.map.get(key)?;
        self.remove_slot(i)
    }

    /// Evicts one block chosen by the clock hand; `None` when the shard is empty.
    fn evict_one(&mut self) -> Option<Slot> {
        if self.map.is_empty() {
            return None;
        }
        // At most two sweeps: the first clears reference bits, the second finds a victim.
        for _ in 0..2 * self.slots.len() {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            match self.slots.get_mut(i) {
                Some(Some(slot)) if slot.referenced => slot.referenced = false,
                Some(Some(_)) => return self.remove_slot(i),
                _ => {}
            }
        }
        None
    }

    fn insert(&mut self, key: Key, block: OwnedBlock, compressed: bool) {
        let charge = block.charge();
        let slot = Slot {
            key,
            block,
            referenced: false,
            compressed,
            hits: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.map.insert(key, i);
        self.used_bytes += charge;
        if compressed {
            self.compressed_bytes += charge;
        }
    }
}

/// The shards and counters that every view of one cache shares.
#[derive(Debug)]
struct Core {
    shards: Vec<Mutex<Shard>>,
    shard_capacity_bytes: usize,
    capacity_bytes: usize,
    inserts: AtomicU64,
    evictions: AtomicU64,
    next_store: AtomicU64,
    /// Bytes reserved by [`BlockCache::reserve`].
    reserved: AtomicUsize,
    form: BlockCacheForm,
    admission: BlockCacheAdmission,
}

/// A thread-safe, sharded LRU of blocks: one store's view of a cache whose capacity may be
/// shared with other stores.
#[derive(Debug)]
pub struct BlockCache {
    core: Arc<Core>,
    store: u64,
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` of blocks (0 caches nothing). A block
    /// larger than one shard's share (`capacity_bytes / 16`) is not cached.
    pub fn new(capacity_bytes: usize) -> Arc<BlockCache> {
        BlockCache::with_form(capacity_bytes, BlockCacheForm::default())
    }

    /// [`BlockCache::new`], holding blocks stored compressed in the given `form`.
    pub fn with_form(capacity_bytes: usize, form: BlockCacheForm) -> Arc<BlockCache> {
        BlockCache::with_policy(capacity_bytes, form, BlockCacheAdmission::default())
    }

    /// [`BlockCache::new`], holding blocks in the given `form` and taking in the blocks
    /// that missed as `admission` says.
    pub fn with_policy(
        capacity_bytes: usize,
        form: BlockCacheForm,
        admission: BlockCacheAdmission,
    ) -> Arc<BlockCache> {
        let shard_capacity_bytes = capacity_bytes / NUM_SHARDS;
        let shard = || Shard {
            doorkeeper: (admission == BlockCacheAdmission::SecondMiss)
                .then(|| Doorkeeper::new(shard_capacity_bytes / DOORKEEPER_BLOCK_BYTES)),
            ..Shard::default()
        };
        Arc::new(BlockCache {
            core: Arc::new(Core {
                shards: (0..NUM_SHARDS).map(|_| Mutex::new(shard())).collect(),
                shard_capacity_bytes,
                capacity_bytes,
                inserts: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                next_store: AtomicU64::new(1),
                reserved: AtomicUsize::new(0),
                form,
                admission,
            }),
            store: 0,
        })
    }

    /// A view of the same cache (same capacity, same blocks, same counters) for another
    /// store: its file numbers never meet this view's.
    pub fn for_new_store(&self) -> Arc<BlockCache> {
        Arc::new(BlockCache {
            core: Arc::clone(&self.core),
            store: self.core.next_store.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The form in which this cache holds blocks stored compressed.
    pub fn form(&self) -> BlockCacheForm {
        self.core.form
    }

    /// How blocks that missed are taken in.
    pub fn admission(&self) -> BlockCacheAdmission {
        self.core.admission
    }

    /// A hash of `key`: its top bits pick the shard, the next ones a doorkeeper bit.
    fn hash(key: &Key) -> u64 {
        ((key.0.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ key.1 .0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ key.2)
            .wrapping_mul(0xff51_afd7_ed55_8ccd)
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        self.shard_of(Self::hash(key))
    }

    /// The shard of a key hashed to `hash`.
    fn shard_of(&self, hash: u64) -> &Mutex<Shard> {
        let i = (hash >> 60) as usize & (NUM_SHARDS - 1);
        // i < NUM_SHARDS == shards.len()
        &self.core.shards[i]
    }

    /// The cached block at `offset` of table `file`, marking it most recently used.
    pub fn get(&self, file: FileNumber, offset: u64) -> Option<CachedBlock> {
        match self.lookup(file, offset, 0) {
            Lookup::Hit(b) => Some(b),
            Lookup::Miss { .. } => None,
        }
    }

    /// [`BlockCache::get`], saying on a miss whether the caller should cache the block of
    /// about `bytes` it then reads ([`BlockCacheAdmission`]: always while the shard has
    /// room for it; a declined miss is counted).
    pub fn lookup(&self, file: FileNumber, offset: u64, bytes: usize) -> Lookup {
        let key = (self.store, file, offset);
        let hash = Self::hash(&key);
        let limit = self.shard_limit();
        let mut shard = self.shard_of(hash).lock();
        if let Some(found) = shard.touch(key) {
            shard.hits += 1;
            return Lookup::Hit(found);
        }
        shard.misses += 1;
        let room = shard.used_bytes + bytes <= limit;
        let held = shard.map.len();
        let admit = match &mut shard.doorkeeper {
            Some(d) => d.check_and_record(hash, held) || room,
            None => true,
        };
        if !admit {
            shard.declined += 1;
        }
        Lookup::Miss { admit }
    }

    /// Whether a block of `bytes` would be cached now (it fits in one shard's room).
    pub fn would_cache(&self, bytes: usize) -> bool {
        bytes <= self.shard_limit()
    }

    /// What one shard may hold now: its share of the capacity less its share of the
    /// reservations.
    fn shard_limit(&self) -> usize {
        let reserved = self.core.reserved.load(Ordering::Relaxed) / NUM_SHARDS;
        self.core.shard_capacity_bytes.saturating_sub(reserved)
    }

    /// Caches `block` as the block at `offset` of table `file`, evicting the least
    /// recently used blocks of its shard to make room. Returns the buffers of up to two
    /// evicted blocks that nobody else holds, for the caller to read its next blocks into.
    pub fn insert(&self, file: FileNumber, offset: u64, block: OwnedBlock) -> Spares {
        self.insert_as(file, offset, block, false)
    }

    /// Caches `payload`, the stored bytes of the lz4 block at `offset` of table `file`
    /// (checked), as [`BlockCache::insert`] does a decompressed block. A hit returns it
    /// as [`CachedBlock::Compressed`].
    pub fn insert_compressed(&self, file: FileNumber, offset: u64, payload: OwnedBlock) -> Spares {
        self.insert_as(file, offset, payload, true)
    }

    fn insert_as(
        &self,
        file: FileNumber,
        offset: u64,
        block: OwnedBlock,
        compressed: bool,
    ) -> Spares {
        let mut spares = Spares::default();
        let charge = block.charge();
        let limit = self.shard_limit();
        if charge > limit {
            return spares;
        }
        let key = (self.store, file, offset);
        let mut shard = self.shard(&key).lock();
        // A block cached again (decompressed in place of its compressed form) replaces it.
        let replaced = shard.remove(&key);
        let mut evicted = 0;
        let mut dropped = Vec::new();
        while shard.used_bytes + charge > limit {
            let Some(slot) = shard.evict_one() else {
                break;
            };
            evicted += 1;
            if let Some(free) = spares.0.iter_mut().find(|s| s.is_none()) {
                *free = slot.block.into_spare();
            } else {
                dropped.push(slot);
            }
        }
        shard.insert(key, block, compressed);
        drop(shard);
        // Buffers are freed outside the shard's lock.
        drop((replaced, dropped));
        self.core.inserts.fetch_add(1, Ordering::Relaxed);
        self.core.evictions.fetch_add(evicted, Ordering::Relaxed);
        spares
    }

    /// Charges `bytes` of memory held elsewhere (a table's index and filter) to the cache's
    /// budget: blocks are evicted until they fit in what is left. A reservation larger
    /// than the capacity leaves no room for blocks; it is never refused, since the memory
    /// it stands for is already held.
    pub fn reserve(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.core.reserved.fetch_add(bytes, Ordering::Relaxed);
        let limit = self.shard_limit();
        let mut evicted = 0;
        for s in &self.core.shards {
            let mut shard = s.lock();
            while shard.used_bytes > limit && shard.evict_one().is_some() {
                evicted += 1;
            }
        }
        self.core.evictions.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Returns `bytes` reserved by [`BlockCache::reserve`] (a table was closed).
    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .core
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(bytes))
            });
    }

    /// Drops every block of this store's table `file` (called when the file is deleted).
    pub fn erase_file(&self, file: FileNumber) {
        for s in &self.core.shards {
            let mut shard = s.lock();
            let keys: Vec<Key> = shard
                .map
                .keys()
                .filter(|k| k.0 == self.store && k.1 == file)
                .copied()
                .collect();
            for k in keys {
                shard.remove(&k);
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.core;
        let mut t = CacheStats::default();
        for shard in &c.shards {
            let s = shard.lock();
            t.bytes_used += s.used_bytes as u64;
            t.compressed_bytes += s.compressed_bytes as u64;
            t.hits += s.hits;
            t.misses += s.misses;
            t.compressed_hits += s.compressed_hits;
            t.declined += s.declined;
        }
        CacheStats {
            inserts: c.inserts.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            capacity_bytes: c.capacity_bytes as u64,
            bytes_reserved: c.reserved.load(Ordering::Relaxed) as u64,
            ..t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize, fill: u8) -> OwnedBlock {
        OwnedBlock::exact(Arc::from(vec![fill; n]))
    }

    #[test]
    fn hit_after_insert_and_miss_before() {
        let c = BlockCache::new(1 << 20);
        assert!(c.get(FileNumber(1), 0).is_none());
        c.insert(FileNumber(1), 0, block(100, 7));
        assert_eq!(c.get(FileNumber(1), 0).unwrap().bytes(), &[7u8; 100][..]);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.inserts, s.bytes_used), (1, 1, 1, 100));
    }

    /// Whether a lookup of (`f`, `offset`) missed and was told to cache the block.
    fn admitted(c: &BlockCache, f: FileNumber, offset: u64) -> bool {
        match c.lookup(f, offset, 4096) {
            Lookup::Miss { admit } => admit,
            Lookup::Hit(b) => panic!("unexpected hit at {offset}: {b:?}"),
        }
    }

    #[test]
    fn a_full_cache_admits_a_block_on_its_second_miss_only() {
        let f = FileNumber(3);
        for admission in [BlockCacheAdmission::SecondMiss, BlockCacheAdmission::Always] {
            // Two blocks of 4 KiB fill a shard.
            let c = BlockCache::with_policy(16 * 8192, BlockCacheForm::default(), admission);
            assert_eq!(c.admission(), admission);
            // While there is room, a block is admitted on its first miss.
            assert!(admitted(&c, f, 1 << 40));
            for i in 0..200 {
                c.insert(f, i * 4096, block(4096, 1));
            }
            assert!(c.stats().evictions > 0);
            let mut declined = 0;
            for i in 0..64 {
                let offset = (1 << 30) + i * 4096;
                if !admitted(&c, f, offset) {
                    declined += 1;
                    // Missed again: admitted.
                    assert!(admitted(&c, f, offset), "{offset}");
                }
            }
            let s = c.stats();
            assert_eq!(s.declined, declined);
            match admission {
                // A block never seen is taken for a seen one rarely (its bit set by
                // another): a few hundred bits per shard, a few blocks recorded.
                BlockCacheAdmission::SecondMiss => assert!(declined >= 56, "{declined}"),
                BlockCacheAdmission::Always => assert_eq!(declined, 0),
            }
        }
    }

    #[test]
    fn the_doorkeeper_forgets_everything_after_its_window() {
        // 64 blocks: 1,024 bits, a window of 64 to 128 misses.
        let mut d = Doorkeeper::new(64);
        assert!(d.bits.is_empty(), "allocated when first used");
        let h = |i: u64| i << 32;
        for i in 0..50 {
            assert!(!d.check_and_record(h(i), 100), "{i}");
        }
        assert_eq!(d.bits.len(), 1024 / 64);
        for i in 0..49 {
            assert!(d.check_and_record(h(i), 100), "{i}");
        }
        // The 100th miss fills the window: everything is forgotten.
        assert!(d.check_and_record(h(49), 100));
        for i in 0..50 {
            assert!(!d.check_and_record(h(i), 100), "{i}");
        }
        // The window is at least 64 misses and at most one per eight bits.
        let mut d = Doorkeeper::new(64);
        for i in 0..63 {
            assert!(!d.check_and_record(h(i), 1), "{i}");
        }
        assert!(!d.check_and_record(h(63), 1));
        assert!(!d.check_and_record(h(0), 1), "forgotten after 64");
        let mut d = Doorkeeper::new(64);
        for i in 0..127 {
            assert!(!d.check_and_record(h(i), usize::MAX), "{i}");
        }
        assert!(!d.check_and_record(h(127), usize::MAX));
        assert!(!d.check_and_record(h(0), usize::MAX), "forgotten after 128");
        // However large the cache, the bits stay bounded.
        let mut d = Doorkeeper::new(usize::MAX / 4096);
        assert!(!d.check_and_record(h(1), 100));
        assert_eq!(d.bits.len() * 8, MAX_DOORKEEPER_BLOCKS * 16 / 8);
    }

    #[test]
    fn usage_never_exceeds_capacity_and_lru_is_evicted_first() {
        let c = BlockCache::new(16 * 1000);
        for off in 0..10_000u64 {
            c.insert(FileNumber(3), off * 4096, block(300, 1));
            assert!(c.stats().bytes_used <= 16 * 1000);
        }
        assert!(c.stats().evictions > 0);
        // Within one shard: keep touching one block while inserting others of the same
        // shard; it must survive.
        let c = BlockCache::new(16 * 1000);
        let keep = (FileNumber(9), 0u64);
        c.insert(keep.0, keep.1, block(300, 2));
        for off in 1..2000u64 {
            c.insert(FileNumber(9), off * 4096, block(300, 1));
            assert!(c.get(keep.0, keep.1).is_some(), "evicted after {off}");
        }
    }

    #[test]
    fn an_insert_hands_back_an_evicted_buffer_nobody_holds() {
        // One shard's worth: 16 shards of 1000 bytes, blocks of 600 (one fits a shard).
        let c = BlockCache::new(16 * 1000);
        let file = FileNumber(4);
        // Two offsets of one shard: find a second offset that lands with offset 0.
        let shard_of = |off: u64| {
            let key = (c.store, file, off);
            std::ptr::from_ref(c.shard(&key))
        };
        let other = (1..10_000u64)
            .map(|i| i * 4096)
            .find(|&off| shard_of(off) == shard_of(0))
            .expect("a second offset in the shard");
        let first = block(600, 1);
        let first_ptr = first.as_slice().as_ptr();
        assert!(c.insert(file, 0, first).is_empty(), "nothing evicted yet");
        let [spare, none] = c.insert(file, other, block(600, 2)).0;
        assert!(none.is_none(), "one block evicted");
        let spare = spare.expect("the evicted buffer");
        assert_eq!(spare.as_ptr(), first_ptr, "the evicted block's own buffer");
        assert!(c.get(file, 0).is_none());
        assert_eq!(
            c.stats().bytes_used,
            600,
            "a handed-back buffer is not charged"
        );
        // A block a reader still holds is evicted but not handed back.
        let held = c.get(file, other).expect("cached");
        assert!(c.insert(file, 0, block(600, 3)).is_empty());
        assert_eq!(held.bytes(), &[2u8; 600][..], "the reader's copy is intact");
    }

    #[test]
    fn a_compressed_block_is_held_as_stored_until_hit_enough_then_decompressed() {
        let c = BlockCache::new(1 << 20);
        let f = FileNumber(7);
        assert_eq!(c.form(), BlockCacheForm::CompressedUntilReused);
        assert!(c.insert_compressed(f, 0, block(40, 9)).is_empty());
        assert_eq!((c.stats().bytes_used, c.stats().compressed_bytes), (40, 40));
        for hit in 1..=PROMOTE_AFTER_HITS {
            match c.get(f, 0) {
                Some(CachedBlock::Compressed { payload, promote }) => {
                    assert_eq!(payload.as_slice(), &[9u8; 40][..]);
                    assert_eq!(promote, hit >= PROMOTE_AFTER_HITS, "hit {hit}");
                }
                other => panic!("hit {hit}: {other:?}"),
            }
        }
        // The caller caches the decompressed block in its place: charged instead of it.
        assert!(c.insert(f, 0, block(100, 1)).is_empty());
        assert_eq!((c.stats().bytes_used, c.stats().compressed_bytes), (100, 0));
        assert!(matches!(c.get(f, 0), Some(CachedBlock::Decoded(b)) if b.as_slice() == [1u8; 100]));
        let s = c.stats();
        assert_eq!((s.hits, s.inserts), (u64::from(PROMOTE_AFTER_HITS) + 1, 2));
        assert_eq!(s.compressed_hits, u64::from(PROMOTE_AFTER_HITS));
        assert_eq!(
            BlockCache::with_form(1 << 20, BlockCacheForm::Decompressed).form(),
            BlockCacheForm::Decompressed
        );
        // A decompressed block too large for a shard would not be cached: the caller
        // keeps the stored form rather than decompress it for a refused insert.
        let c = BlockCache::new(16 * 1000);
        assert!(c.would_cache(1000) && !c.would_cache(1001));
        c.reserve(16 * 100);
        assert!(c.would_cache(900) && !c.would_cache(901));
    }

    #[test]
    fn an_insert_hands_back_at_most_two_buffers_and_frees_the_rest() {
        // One shard of 1000 bytes: five blocks of 200, then one of 1000 evicts all five.
        let c = BlockCache::new(16 * 1000);
        let f = FileNumber(2);
        let key = |off: u64| (c.store, f, off);
        let first = std::ptr::from_ref(c.shard(&key(0)));
        let same: Vec<u64> = (0..100_000u64)
            .map(|i| i * 4096)
            .filter(|&o| std::ptr::eq(c.shard(&key(o)), first))
            .take(6)
            .collect();
        for &o in &same[..5] {
            assert!(c.insert_compressed(f, o, block(200, 1)).is_empty());
        }
        let [a, b] = c.insert(f, same[5], block(1000, 2)).0;
        assert_eq!(
            (a.map(|x| x.len()), b.map(|x| x.len())),
            (Some(200), Some(200))
        );
        let s = c.stats();
        assert_eq!(
            (s.evictions, s.bytes_used, s.compressed_bytes),
            (5, 1000, 0)
        );
    }

    #[test]
    fn oversized_blocks_are_not_cached() {
        let c = BlockCache::new(1600);
        c.insert(FileNumber(1), 0, block(101, 0));
        assert!(c.get(FileNumber(1), 0).is_none());
        let c = BlockCache::new(0);
        c.insert(FileNumber(1), 0, block(1, 0));
        assert_eq!(c.stats().bytes_used, 0);
    }

    #[test]
    fn erase_file_drops_only_that_file() {
        let c = BlockCache::new(1 << 20);
        for off in 0..50u64 {
            c.insert(FileNumber(1), off, block(10, 1));
            c.insert(FileNumber(2), off, block(10, 2));
        }
        c.erase_file(FileNumber(1));
        assert_eq!(c.stats().bytes_used, 500);
        assert!(c.get(FileNumber(1), 3).is_none());
        assert!(c.get(FileNumber(2), 3).is_some());
    }

    #[test]
    fn views_for_other_stores_share_capacity_but_never_blocks() {
        let a = BlockCache::new(1 << 20);
        let b = a.for_new_store();
        a.insert(FileNumber(5), 0, block(10, 1));
        b.insert(FileNumber(5), 0, block(10, 2));
        assert_eq!(a.get(FileNumber(5), 0).unwrap().bytes(), &[1u8; 10][..]);
        assert_eq!(b.get(FileNumber(5), 0).unwrap().bytes(), &[2u8; 10][..]);
        assert_eq!(a.stats().bytes_used, 20);
        b.erase_file(FileNumber(5));
        b.reserve(7);
        assert_eq!(a.stats().bytes_reserved, 7);
        b.release(7);
        assert_eq!(a.stats().bytes_reserved, 0);
        assert!(b.get(FileNumber(5), 0).is_none());
        assert!(a.get(FileNumber(5), 0).is_some());
    }

    #[test]
    fn reservations_shrink_the_room_for_blocks_and_are_released() {
        let c = BlockCache::new(16 * 1000);
        for off in 0..2000u64 {
            c.insert(FileNumber(1), off, block(100, 1));
        }
        assert!(c.stats().bytes_used > 12_000, "{:?}", c.stats());
        c.reserve(8000);
        let s = c.stats();
        assert_eq!(s.bytes_reserved, 8000);
        assert!(s.bytes_used <= 8000, "{s:?}");
        for off in 2000..4000u64 {
            c.insert(FileNumber(1), off, block(100, 1));
            assert!(c.stats().bytes_used <= 8000);
        }
        c.release(8000);
        assert_eq!(c.stats().bytes_reserved, 0);
        for off in 4000..6000u64 {
            c.insert(FileNumber(1), off, block(100, 1));
        }
        assert!(c.stats().bytes_used > 12_000, "{:?}", c.stats());
        // Reserving more than the capacity leaves no room, and is still counted.
        c.reserve(1 << 20);
        assert_eq!(c.stats().bytes_used, 0);
        c.insert(FileNumber(1), 0, block(1, 1));
        assert!(c.get(FileNumber(1), 0).is_none());
    }

    #[test]
    fn concurrent_use_is_safe() {
        let c = BlockCache::new(64 * 1024);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let c = &c;
                s.spawn(move || {
                    for i in 0..2000u64 {
                        c.insert(FileNumber(t), i, block(64, t as u8));
                        if let Some(b) = c.get(FileNumber(t), i / 2) {
                            assert!(b.bytes().iter().all(|&x| x == t as u8));
                        }
                    }
                });
            }
        });
        assert!(c.stats().bytes_used <= 64 * 1024);
    }
}
