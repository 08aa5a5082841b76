//! The memtable: a skiplist of internal keys in an arena.
//!
//! Each entry is one node in an arena chunk: its header, its `next` pointers, the internal
//! key and the value, side by side, so a comparison during a search touches one cache line
//! region instead of chasing a second pointer to the key. Nodes are never freed or moved
//! while the memtable lives; the whole arena is dropped with it once it is flushed.
//!
//! Concurrency: any number of writers and readers at once. A writer takes the lock of its
//! thread's lane only to reserve arena space (a pointer bump); it builds its nodes outside
//! the lock and links each with a compare-and-swap per level, bottom up (RocksDB's
//! concurrent insert). A node is fully written before it is published by the release half
//! of that swap; readers follow pointers with acquire loads and take no lock.
//!
//! Each lane has an arena of its own, on a cache line of its own, and threads are spread
//! over the lanes: two writers on two cores neither move one lock's cache line between
//! them on every write nor build their nodes side by side in the same cache lines (where
//! each would take the line from the other). The size the lanes reserved reaches the
//! shared counter every [`SIZE_PUBLISH_BYTES`].

use std::cmp::Ordering;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::anon::map_anon;
use super::batch::WriteBatch;
use super::types::{
    compare_internal_keys, pack_trailer, parse_internal_key, FileNumber, InternalIterator,
    LookupKey, SeqNo, ValueKind, TRAILER_LEN,
};
use crate::error::Result;

/// Tallest tower a node can have; with a branching factor of 4 this serves about 4^12
/// (16 million) entries before searches lengthen.
const MAX_HEIGHT: usize = 12;
/// One node in `BRANCHING` is promoted to the next level.
const BRANCHING: u64 = 4;
/// Node header: key length, value length, height, padding (all u32).
const NODE_HEADER_BYTES: usize = 16;
const PTR_BYTES: usize = std::mem::size_of::<AtomicPtr<u8>>();
const _: () = assert!(PTR_BYTES == 8 && NODE_HEADER_BYTES % PTR_BYTES == 0);

/// A pointer to a node: `NODE_HEADER_BYTES` of header, `height` next pointers, key, value.
type NodePtr = *mut u8;

/// Bump allocator over zeroed, page-aligned chunks of anonymous memory that never move;
/// unmapped on drop.
///
/// Chunks grow from `FIRST_CHUNK_BYTES` to `MAX_CHUNK_BYTES`, so a small memtable stays
/// small, and a large one is made of chunks the kernel may back with 2 MiB pages
/// (`MADV_HUGEPAGE`): a memtable filled in random key order is read and written at random
/// places, and 4 KiB pages would make most of those accesses miss the TLB too.
///
/// The bump state is all a reservation touches; the chunks themselves are kept elsewhere
/// ([`MemTable`]'s `chunks`), so the state fits on one cache line with the rest of what
/// every insert writes.
struct Arena {
    /// Free bytes at the end of the last chunk, and where they start.
    free_at: *mut u8,
    free_bytes: usize,
    /// Chunks made so far (the next one's size grows with it).
    made: usize,
}

/// The first chunk of an arena.
const FIRST_CHUNK_BYTES: usize = 64 << 10;
/// The largest chunk (larger entries get a chunk of their own).
const MAX_CHUNK_BYTES: usize = 4 << 20;

impl Arena {
    fn new() -> Arena {
        Arena {
            free_at: ptr::null_mut(),
            free_bytes: 0,
            made: 0,
        }
    }

    /// `bytes` of zeroed memory, 8-byte aligned, valid while `chunks` keeps the chunks this
    /// arena made (a new chunk is pushed there).
    fn alloc(&mut self, bytes: usize, chunks: &Mutex<Vec<memmap2::MmapMut>>) -> *mut u8 {
        let bytes = bytes.next_multiple_of(8);
        if bytes > self.free_bytes {
            let next_chunk = (FIRST_CHUNK_BYTES << self.made.min(6)).min(MAX_CHUNK_BYTES);
            let chunk_bytes = bytes.max(next_chunk);
            let mut chunk = map_anon(chunk_bytes);
            if chunk_bytes >= 2 << 20 {
                // Only a hint: without it (or without huge pages) the memory is the same.
                #[cfg(target_os = "linux")]
                let _ = chunk.advise(memmap2::Advice::HugePage);
            }
            let start = chunk.as_mut_ptr();
            chunks.lock().push(chunk);
            self.made += 1;
            if bytes == chunk_bytes {
                // A chunk of its own: keep the current chunk's free space for later nodes.
                return start;
            }
            self.free_at = start;
            self.free_bytes = chunk_bytes;
        }
        let p = self.free_at;
        // SAFETY: `bytes <= free_bytes`, so the result stays inside the current chunk.
        self.free_at = unsafe { p.add(bytes) };
        self.free_bytes -= bytes;
        p
    }
}

/// What writers reserve space from, under a lane's lock.
struct Writer {
    arena: Arena,
    rng: u64,
    /// Entries reserved.
    entries: u64,
    /// Largest sequence number reserved.
    max_seq: u64,
}

/// Lanes of a memtable: threads are spread over them (see [`lane_of_thread`]).
const LANES: usize = 4;

/// A lane adds what it reserved to the memtable's shared size once it has this much: the
/// shared counter's cache line then moves between writers' cores once per this many bytes
/// written rather than on every write.
pub const SIZE_PUBLISH_BYTES: usize = 16 << 10;

/// Most bytes the lanes may hold unpublished at once: [`MemTable::published_size`] is at
/// most this far below [`MemTable::approximate_size`].
pub const MAX_UNPUBLISHED_BYTES: usize = LANES * SIZE_PUBLISH_BYTES;

/// The lane of the calling thread: threads take lanes in turn as they first write.
fn lane_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    LANE.with(|l| {
        if l.get() == usize::MAX {
            l.set(NEXT.fetch_add(1, AtomicOrdering::Relaxed) % LANES);
        }
        l.get()
    })
}

/// What a memtable knows about a key at a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemLookup {
    /// The newest visible version is a value.
    Found(Vec<u8>),
    /// The newest visible version is a tombstone.
    Deleted,
    /// No visible version.
    NotFound,
}

/// A sorted in-memory table of writes, tied to the WAL that holds the same writes.
pub struct MemTable {
    head: NodePtr,
    /// Read by every search; kept off the cache line every insert writes.
    max_height: AtomicUsize,
    /// The WAL file that records this memtable's writes (0 when the WAL is off).
    wal_number: FileNumber,
    /// Bytes the lanes published (all reserved bytes but each lane's `unpublished`).
    size_bytes: SizeLine,
    lanes: [Lane; LANES],
    /// The arenas' chunks: every node lives in one of them until the memtable is dropped.
    /// Locked only to add a chunk (under a lane's lock) and never on a write's path
    /// otherwise.
    chunks: Mutex<Vec<memmap2::MmapMut>>,
}

/// The shared size, read by every write (is there room?) and written once per
/// [`SIZE_PUBLISH_BYTES`], on a cache line of its own.
#[repr(align(64))]
struct SizeLine(AtomicUsize);

/// What an insert writes, on one cache line per lane.
#[repr(align(64))]
struct Lane {
    writer: Mutex<Writer>,
    /// Bytes reserved and not yet added to the memtable's shared `size_bytes`: written
    /// under `writer`, read without it.
    unpublished: AtomicUsize,
}
const _: () = assert!(std::mem::size_of::<Lane>() == 64);

// SAFETY: the raw node pointers point into the arenas' chunks, owned by the memtable
// (`chunks`), which live as long as the memtable; each arena's space is handed out under
// its lane's mutex, so no two writers build in the same bytes; nodes are published with
// compare-and-swaps that release and read with acquire loads, and a published node's key
// and value never change.
unsafe impl Send for MemTable {}
// SAFETY: as above.
unsafe impl Sync for MemTable {}

impl std::fmt::Debug for MemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTable")
            .field("wal_number", &self.wal_number)
            .field("entries", &self.len())
            .field("size_bytes", &self.approximate_size())
            .finish()
    }
}

// Node accessors. REQUIRES (all of them): `node` was built by `MemTable::new_node` (or is
// the head, for `next`) in an arena that is still alive.

/// The `level` next pointer of `node`. REQUIRES: `level < height(node)`.
unsafe fn next<'a>(node: NodePtr, level: usize) -> &'a AtomicPtr<u8> {
    // SAFETY: the caller guarantees the node has this level; the pointer array starts
    // 8-byte aligned right after the 16-byte header.
    unsafe { &*(node.add(NODE_HEADER_BYTES + level * PTR_BYTES) as *const AtomicPtr<u8>) }
}

unsafe fn header(node: NodePtr) -> (usize, usize, usize) {
    // SAFETY: the header is three u32 written before the node was published.
    unsafe {
        let h = node as *const u32;
        (*h as usize, *h.add(1) as usize, *h.add(2) as usize)
    }
}

/// The internal key of `node`.
unsafe fn node_key<'a>(node: NodePtr) -> &'a [u8] {
    // SAFETY: the key lies after the header and the pointers, written before publication.
    unsafe {
        let (key_len, _, height) = header(node);
        std::slice::from_raw_parts(node.add(NODE_HEADER_BYTES + height * PTR_BYTES), key_len)
    }
}

/// The value of `node`.
unsafe fn node_value<'a>(node: NodePtr) -> &'a [u8] {
    // SAFETY: the value follows the key.
    unsafe {
        let (key_len, value_len, height) = header(node);
        std::slice::from_raw_parts(
            node.add(NODE_HEADER_BYTES + height * PTR_BYTES + key_len),
            value_len,
        )
    }
}

/// Starts loading the node after `node` (null: none) into the cache. Nodes are laid out in
/// the arena in insertion order, so a scan in key order would otherwise wait for memory at
/// almost every step; with this, the next node arrives while the caller handles this one.
#[inline]
fn prefetch_successor(node: NodePtr) {
    if node.is_null() {
        return;
    }
    // SAFETY: a published node has level 0.
    let succ = unsafe { next(node, 0) }.load(AtomicOrdering::Acquire);
    if succ.is_null() {
        return;
    }
    prefetch_node(succ);
}

/// Starts loading the cache lines of `node`: a node of a small entry spans two or three
/// (header, pointers, key, value).
#[inline]
fn prefetch_node(node: NodePtr) {
    for line in 0..3 {
        prefetch(node.wrapping_add(line * 64));
    }
}

/// A hint to load the cache line holding `p`; it never faults, whatever `p` is.
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch only hints the cache: it
    // does not access memory, so any address is fine.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A tower height for a new node: `h` with probability about `(1 - 1/B) / B^(h-1)`.
fn random_height(rng: &mut u64) -> usize {
    let mut h = 1;
    while h < MAX_HEIGHT {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        if *rng % BRANCHING != 0 {
            break;
        }
        h += 1;
    }
    h
}

impl MemTable {
    /// An empty memtable whose writes are logged in WAL `wal_number`.
    pub fn new(wal_number: FileNumber) -> Self {
        let mut arena = Arena::new();
        let chunks = Mutex::new(Vec::new());
        let head = arena.alloc(NODE_HEADER_BYTES + MAX_HEIGHT * PTR_BYTES, &chunks);
        // SAFETY: `head` has room for the header; the arena zeroed the pointers (null).
        unsafe {
            let h = head as *mut u32;
            *h.add(2) = MAX_HEIGHT as u32;
        }
        let mut arena = Some(arena);
        let lanes = std::array::from_fn(|i| Lane {
            writer: Mutex::new(Writer {
                // Lane 0 goes on in the chunk that holds the head; the others make their own.
                arena: arena.take().unwrap_or_else(Arena::new),
                rng: (0x2545_f491_4f6c_dd1d ^ wal_number.0)
                    .wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    | 1,
                entries: 0,
                max_seq: 0,
            }),
            unpublished: AtomicUsize::new(0),
        });
        MemTable {
            head,
            max_height: AtomicUsize::new(1),
            wal_number,
            size_bytes: SizeLine(AtomicUsize::new(0)),
            lanes,
            chunks,
        }
    }

    /// The WAL holding this memtable's writes.
    pub fn wal_number(&self) -> FileNumber {
        self.wal_number
    }

    /// Inserts one version of a key. Any number of threads may insert at once.
    pub fn add(&self, seq: SeqNo, kind: ValueKind, user_key: &[u8], value: &[u8]) {
        let sizes = std::iter::once((user_key.len(), value.len()));
        let (mut at, mut rng) = self.reserve(sizes, 1, seq);
        // SAFETY: `at` is the reservation made for exactly this entry and `rng`.
        unsafe { self.place(&mut at, &mut rng, seq, kind, user_key, value) };
    }

    /// Inserts every operation of `batch`, numbered from `first_seq`. Any number of threads
    /// may insert at once.
    pub fn add_batch(&self, batch: &WriteBatch, first_seq: SeqNo) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        let sizes = batch
            .iter(first_seq)
            .map(|op| (op.key.len(), op.value.len()));
        let (mut at, mut rng) = self.reserve(sizes, n, SeqNo(first_seq.0 + n - 1));
        for op in batch.iter(first_seq) {
            // SAFETY: the reservation was sized for these entries in this order, with the
            // heights `rng` yields again.
            unsafe { self.place(&mut at, &mut rng, op.seq, op.kind, op.key, op.value) };
        }
    }

    /// Bytes of a node: header, `height` pointers, internal key, value; rounded up to the
    /// arena's alignment.
    fn node_bytes(height: usize, user_key_len: usize, value_len: usize) -> usize {
        (NODE_HEADER_BYTES + height * PTR_BYTES + user_key_len + TRAILER_LEN + value_len)
            .next_multiple_of(8)
    }

    /// Reserves arena space for entries of the given (key, value) lengths, under the lock
    /// of the calling thread's lane (a bump of its arena, its height generator and its
    /// counts, nothing more, all on the lane's cache line), and accounts for them. Returns
    /// where the first node goes and the generator state that yields the heights the
    /// reservation was sized with.
    fn reserve(
        &self,
        sizes: impl Iterator<Item = (usize, usize)>,
        entries: u64,
        max_seq: SeqNo,
    ) -> (NodePtr, u64) {
        // lane_of_thread() < LANES
        let lane = &self.lanes[lane_of_thread()];
        let mut w = lane.writer.lock();
        let start_rng = w.rng;
        let mut total = 0;
        for (k, v) in sizes {
            total += Self::node_bytes(random_height(&mut w.rng), k, v);
        }
        let at = w.arena.alloc(total, &self.chunks);
        w.entries += entries;
        w.max_seq = w.max_seq.max(max_seq.0);
        let unpublished = lane.unpublished.load(AtomicOrdering::Relaxed) + total;
        if unpublished >= SIZE_PUBLISH_BYTES {
            // Shared count first: a reader that sees the lane emptied sees it counted there
            // (see `approximate_size`).
            self.size_bytes
                .0
                .fetch_add(unpublished, AtomicOrdering::Relaxed);
            lane.unpublished.store(0, AtomicOrdering::Release);
        } else {
            lane.unpublished.store(unpublished, AtomicOrdering::Relaxed);
        }
        drop(w);
        (at, start_rng)
    }

    /// Builds a node at `*at` and links it into the list; advances `*at` past it.
    ///
    /// SAFETY: `*at` lies in a reservation of [`MemTable::reserve`] with room for this
    /// node at the height `rng` yields next, and no other thread writes there.
    unsafe fn place(
        &self,
        at: &mut NodePtr,
        rng: &mut u64,
        seq: SeqNo,
        kind: ValueKind,
        user_key: &[u8],
        value: &[u8],
    ) {
        let height = random_height(rng);
        let key_len = user_key.len() + TRAILER_LEN;
        let node = *at;
        // SAFETY: the caller reserved `node_bytes` here; nothing else can see the node
        // until it is linked below.
        unsafe {
            *at = node.add(Self::node_bytes(height, user_key.len(), value.len()));
            let h = node as *mut u32;
            *h = key_len as u32;
            *h.add(1) = value.len() as u32;
            *h.add(2) = height as u32;
            let k = node.add(NODE_HEADER_BYTES + height * PTR_BYTES);
            ptr::copy_nonoverlapping(user_key.as_ptr(), k, user_key.len());
            let trailer = pack_trailer(seq, kind).to_le_bytes();
            ptr::copy_nonoverlapping(trailer.as_ptr(), k.add(user_key.len()), TRAILER_LEN);
            ptr::copy_nonoverlapping(value.as_ptr(), k.add(key_len), value.len());
        }
        self.link(node, height);
    }

    /// The last node before `key` and the first node at or after it on `level`, searching
    /// from `before` (the head or a node of height > `level` whose key is `< key`).
    fn find_splice_for_level(
        &self,
        key: &[u8],
        mut before: NodePtr,
        level: usize,
    ) -> (NodePtr, NodePtr) {
        loop {
            // SAFETY: `before` is the head or a published node of height > `level`.
            let n = unsafe { next(before, level) }.load(AtomicOrdering::Acquire);
            // SAFETY: a non-null next pointer is a published node.
            if !n.is_null() && compare_internal_keys(unsafe { node_key(n) }, key) == Ordering::Less
            {
                before = n;
                continue;
            }
            return (before, n);
        }
    }

    /// Links a built node of `height` levels, bottom up, with a compare-and-swap per level
    /// (RocksDB's concurrent insert): a node is published on level 0 before any level
    /// above, so a reader that reaches it on some level finds it on every level below.
    /// A node whose internal key is already present (the same write twice) stays unlinked.
    fn link(&self, node: NodePtr, height: usize) {
        // SAFETY: the key was written before the node is linked.
        let key = unsafe { node_key(node) };
        let mut max = self.max_height.load(AtomicOrdering::Relaxed);
        while height > max {
            match self.max_height.compare_exchange_weak(
                max,
                height,
                AtomicOrdering::Relaxed,
                AtomicOrdering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => max = now,
            }
        }
        let mut prev = [self.head; MAX_HEIGHT];
        let mut succ = [ptr::null_mut(); MAX_HEIGHT];
        let mut x = self.head;
        for level in (0..self.max_height.load(AtomicOrdering::Relaxed)).rev() {
            (x, succ[level]) = self.find_splice_for_level(key, x, level);
            prev[level] = x;
        }
        for level in 0..height {
            loop {
                if level == 0 && !succ[0].is_null() {
                    // SAFETY: a published node.
                    if unsafe { node_key(succ[0]) } == key {
                        return;
                    }
                }
                // SAFETY: `prev[level]` is the head or a node of height > `level`; `node`
                // has `height` levels. Its own pointer is set before it is published.
                let linked = unsafe {
                    next(node, level).store(succ[level], AtomicOrdering::Relaxed);
                    next(prev[level], level)
                        .compare_exchange(
                            succ[level],
                            node,
                            AtomicOrdering::AcqRel,
                            AtomicOrdering::Acquire,
                        )
                        .is_ok()
                };
                if linked {
                    break;
                }
                // Another insert changed this link: search again from the node before.
                (prev[level], succ[level]) = self.find_splice_for_level(key, prev[level], level);
            }
        }
    }

    /// The first node whose key is `>= key` (null: none).
    fn find_greater_or_equal(&self, key: &[u8]) -> NodePtr {
        let mut x = self.head;
        let mut level = self.max_height.load(AtomicOrdering::Relaxed) - 1;
        loop {
            // SAFETY: `x` is the head or a published node of height > `level`.
            let n = unsafe { next(x, level) }.load(AtomicOrdering::Acquire);
            // SAFETY: a non-null next pointer is a published node.
            if !n.is_null() && compare_internal_keys(unsafe { node_key(n) }, key) == Ordering::Less
            {
                x = n;
                continue;
            }
            if level == 0 {
                return n;
            }
            level -= 1;
        }
    }

    /// The newest version of `user_key` with a sequence number `<= seq`.
    pub fn get(&self, user_key: &[u8], seq: SeqNo) -> MemLookup {
        let target = LookupKey::new(user_key, seq);
        let n = self.find_greater_or_equal(target.internal_key());
        if n.is_null() {
            return MemLookup::NotFound;
        }
        // SAFETY: a published node.
        let (key, value) = unsafe { (node_key(n), node_value(n)) };
        match parse_internal_key(key) {
            Some(p) if p.user_key == user_key => match p.kind {
                ValueKind::Put => MemLookup::Found(value.to_vec()),
                ValueKind::Delete => MemLookup::Deleted,
            },
            _ => MemLookup::NotFound,
        }
    }

    /// Bytes charged so far (nodes: keys, values, towers and headers), every lane's,
    /// without taking a lane's lock. Never less than what was charged before the call;
    /// while writers run it may count a lane's bytes twice (once in the lane, once
    /// published), at most [`MAX_UNPUBLISHED_BYTES`] over.
    pub fn approximate_size(&self) -> usize {
        // The lanes before the shared count: bytes a lane publishes in between are
        // counted twice, never missed.
        let unpublished: usize = self
            .lanes
            .iter()
            .map(|l| l.unpublished.load(AtomicOrdering::Acquire))
            .sum();
        unpublished + self.published_size()
    }

    /// Bytes charged and published to the shared count: less than
    /// [`MAX_UNPUBLISHED_BYTES`] below [`MemTable::approximate_size`], and read without
    /// touching the lanes that writers write.
    pub fn published_size(&self) -> usize {
        self.size_bytes.0.load(AtomicOrdering::Relaxed)
    }

    /// Whether the bytes charged are below `limit`: answered from the shared count alone
    /// while it is further below than the lanes may hold back, and from every lane only
    /// near the limit, so the check every write makes leaves the lanes' lines alone.
    pub fn is_below(&self, limit: usize) -> bool {
        self.published_size() + MAX_UNPUBLISHED_BYTES < limit || self.approximate_size() < limit
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.lanes.iter().map(|l| l.writer.lock().entries).sum()
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Largest sequence number inserted (0 when empty).
    pub fn max_seq(&self) -> SeqNo {
        SeqNo(
            self.lanes
                .iter()
                .map(|l| l.writer.lock().max_seq)
                .max()
                .unwrap_or(0),
        )
    }

    /// An iterator over the memtable that keeps it alive.
    pub fn iter(self: &Arc<Self>) -> MemTableIter {
        MemTableIter {
            node: ptr::null_mut(),
            mem: Arc::clone(self),
        }
    }

    /// Every entry in order, for a flush: reads the whole memtable once, faster than
    /// [`MemTable::iter`] (which waits for memory at almost every node of a memtable filled
    /// in random key order). The memtable must not change while the scan runs (an
    /// immutable memtable never does); entries added during the scan may be missed.
    pub fn ordered_scan(self: &Arc<Self>) -> OrderedScan {
        OrderedScan {
            nodes: self.nodes_in_order(),
            pos: 0,
            _mem: Arc::clone(self),
        }
    }

    /// The level-0 chain in key order, gathered by walking many key ranges at once: the
    /// ranges start at the nodes of an upper level, and the walks of `SCAN_WAYS` ranges are
    /// interleaved so that their (independent) loads from memory overlap.
    fn nodes_in_order(&self) -> NodeList {
        // Range starts: the nodes of the highest level holding at least MIN_RANGES nodes
        // (or of level 0 when none does: a tiny memtable).
        const MIN_RANGES: usize = 32;
        let mut starts: Vec<NodePtr> = Vec::new();
        for level in (0..self
            .max_height
            .load(AtomicOrdering::Acquire)
            .min(MAX_HEIGHT))
            .rev()
        {
            starts.clear();
            // SAFETY: the head has every level; a node reached at `level` has that level.
            let mut n = unsafe { next(self.head, level) }.load(AtomicOrdering::Acquire);
            while !n.is_null() {
                starts.push(n);
                // SAFETY: as above.
                n = unsafe { next(n, level) }.load(AtomicOrdering::Acquire);
            }
            if starts.len() >= MIN_RANGES || level == 0 {
                break;
            }
        }
        // SAFETY: the head has level 0.
        let first = unsafe { next(self.head, 0) }.load(AtomicOrdering::Acquire);
        if starts.first() != Some(&first) && !first.is_null() {
            starts.insert(0, first);
        }
        // Range r runs from starts[r] up to (not including) starts[r + 1], the last to the
        // end of the list.
        let end_of = |r: usize| starts.get(r + 1).copied().unwrap_or(ptr::null_mut());
        // Each range's pointers go in chunks of a fixed size, not a vector that doubles:
        // a range may hold a large share of the entries (see `NodeList`).
        let mut ranges: Vec<Vec<Vec<NodePtr>>> = vec![Vec::new(); starts.len()];
        // Cursors: (range, node) pairs, each walking its own range.
        let mut cursors: Vec<(usize, NodePtr)> = Vec::with_capacity(SCAN_WAYS);
        let mut next_range = 0;
        loop {
            while cursors.len() < SCAN_WAYS && next_range < starts.len() {
                cursors.push((next_range, starts[next_range]));
                next_range += 1;
            }
            if cursors.is_empty() {
                break;
            }
            let mut i = 0;
            while i < cursors.len() {
                let (r, n) = cursors[i];
                if n == end_of(r) || n.is_null() {
                    cursors.swap_remove(i);
                    continue;
                }
                let chunks = &mut ranges[r];
                match chunks.last_mut() {
                    Some(c) if c.len() < RANGE_CHUNK => c.push(n),
                    _ => {
                        let mut c = Vec::with_capacity(RANGE_CHUNK);
                        c.push(n);
                        chunks.push(c);
                    }
                }
                // SAFETY: a published node has level 0.
                let succ = unsafe { next(n, 0) }.load(AtomicOrdering::Acquire);
                prefetch(succ);
                cursors[i].1 = succ;
                i += 1;
            }
        }
        NodeList::concat(&ranges)
    }
}

/// Pointers per chunk of a range of `MemTable::nodes_in_order` (32 KiB).
const RANGE_CHUNK: usize = 4096;

/// Node pointers in one anonymous mapping, given back to the kernel when dropped.
///
/// A flush's list holds one pointer per entry (3.5 MB for a 64 MiB memtable of small
/// entries). From the C allocator, freeing a buffer that large raises its mmap threshold,
/// after which the next flush's list and every other buffer below that size come from
/// heap arenas that keep their memory: measured at 23 MiB of peak RSS loading 8M keys.
struct NodeList {
    map: Option<memmap2::MmapMut>,
    len: usize,
}

impl NodeList {
    /// The pointers of `ranges`, one after another.
    fn concat(ranges: &[Vec<Vec<NodePtr>>]) -> NodeList {
        let len: usize = ranges.iter().flatten().map(Vec::len).sum();
        if len == 0 {
            return NodeList { map: None, len };
        }
        let mut map = map_anon(len * PTR_BYTES);
        // SAFETY: the mapping is page-aligned, `len * PTR_BYTES` bytes long, and owned here;
        // zeroed bytes are null pointers, all overwritten below.
        let slots =
            unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut NodePtr, len) };
        let mut at = 0;
        for r in ranges.iter().flatten() {
            slots[at..at + r.len()].copy_from_slice(r);
            at += r.len();
        }
        NodeList {
            map: Some(map),
            len,
        }
    }

    fn as_slice(&self) -> &[NodePtr] {
        match &self.map {
            // SAFETY: as in `concat`: `len` pointers, all written there, in a mapping that
            // lives as long as `self`.
            Some(map) => unsafe {
                std::slice::from_raw_parts(map.as_ptr() as *const NodePtr, self.len)
            },
            None => &[],
        }
    }
}

/// Ranges walked at once by [`MemTable::ordered_scan`].
const SCAN_WAYS: usize = 8;

/// Nodes ahead of the current one that [`OrderedScan`] asks the cache to load.
const SCAN_PREFETCH_DISTANCE: usize = 8;

/// Every entry of a memtable in order (see [`MemTable::ordered_scan`]).
pub struct OrderedScan {
    /// The nodes, in key order. They point into `_mem`'s arena, which the `Arc` keeps.
    nodes: NodeList,
    pos: usize,
    _mem: Arc<MemTable>,
}

// SAFETY: the node pointers refer to immutable data in the arena of the memtable this scan
// keeps alive, and MemTable is Sync.
unsafe impl Send for OrderedScan {}

impl std::fmt::Debug for OrderedScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedScan")
            .field("entries", &self.nodes.len)
            .field("pos", &self.pos)
            .finish()
    }
}

impl OrderedScan {
    /// Entries in the scan.
    pub fn len(&self) -> usize {
        self.nodes.len
    }

    /// True when the memtable was empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.len == 0
    }

    /// The next entry (internal key, value), or `None` at the end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<(&[u8], &[u8])> {
        let nodes = self.nodes.as_slice();
        let node = *nodes.get(self.pos)?;
        if let Some(&ahead) = nodes.get(self.pos + SCAN_PREFETCH_DISTANCE) {
            prefetch_node(ahead);
        }
        self.pos += 1;
        // SAFETY: a published node of the memtable this scan holds.
        Some(unsafe { (node_key(node), node_value(node)) })
    }
}

/// An [`InternalIterator`] over a memtable.
pub struct MemTableIter {
    /// The current node (null: not valid). Points into `mem`'s arena, which the `Arc` keeps.
    node: NodePtr,
    mem: Arc<MemTable>,
}

// SAFETY: the node pointer refers to immutable data in the arena of the memtable this
// iterator keeps alive, and MemTable is Sync.
unsafe impl Send for MemTableIter {}

impl InternalIterator for MemTableIter {
    fn valid(&self) -> bool {
        !self.node.is_null()
    }
    fn seek_to_first(&mut self) {
        // SAFETY: the head has every level.
        self.node = unsafe { next(self.mem.head, 0) }.load(AtomicOrdering::Acquire);
        prefetch_successor(self.node);
    }
    fn seek(&mut self, target: &[u8]) {
        self.node = self.mem.find_greater_or_equal(target);
    }
    fn next(&mut self) {
        if !self.node.is_null() {
            // SAFETY: a published node has level 0.
            self.node = unsafe { next(self.node, 0) }.load(AtomicOrdering::Acquire);
            prefetch_successor(self.node);
        }
    }
    fn key(&self) -> &[u8] {
        if self.node.is_null() {
            return &[];
        }
        // SAFETY: a published node of the memtable this iterator holds.
        unsafe { node_key(self.node) }
    }
    fn value(&self) -> &[u8] {
        if self.node.is_null() {
            return &[];
        }
        // SAFETY: as above.
        unsafe { node_value(self.node) }
    }
    fn status(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::types::{seek_key, user_key};

    #[test]
    fn get_sees_newest_visible_version() {
        let m = MemTable::new(FileNumber(1));
        m.add(SeqNo(1), ValueKind::Put, b"k", b"v1");
        m.add(SeqNo(3), ValueKind::Put, b"k", b"v3");
        m.add(SeqNo(5), ValueKind::Delete, b"k", b"");
        assert_eq!(m.get(b"k", SeqNo(0)), MemLookup::NotFound);
        assert_eq!(m.get(b"k", SeqNo(2)), MemLookup::Found(b"v1".to_vec()));
        assert_eq!(m.get(b"k", SeqNo(4)), MemLookup::Found(b"v3".to_vec()));
        assert_eq!(m.get(b"k", SeqNo(9)), MemLookup::Deleted);
        assert_eq!(m.get(b"j", SeqNo(9)), MemLookup::NotFound);
        assert_eq!(m.get(b"kk", SeqNo(9)), MemLookup::NotFound);
        assert_eq!(m.max_seq(), SeqNo(5));
    }

    #[test]
    fn ordered_scan_yields_what_the_iterator_yields() {
        for n in [0u64, 1, 2, 31, 200, 60_000] {
            let m = Arc::new(MemTable::new(FileNumber(1)));
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ n;
            for seq in 1..=n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Random keys, some written twice (two versions), values of varied size
                // (some larger than a chunk of the arena's first size).
                let key = format!("key{:06}", x % (n * 3 / 4 + 1));
                let len = if seq % 5000 == 0 {
                    100_000
                } else {
                    (x % 300) as usize
                };
                let kind = if seq % 11 == 0 {
                    ValueKind::Delete
                } else {
                    ValueKind::Put
                };
                m.add(SeqNo(seq), kind, key.as_bytes(), &vec![seq as u8; len]);
            }
            let mut want = Vec::new();
            let mut it = m.iter();
            it.seek_to_first();
            while it.valid() {
                want.push((it.key().to_vec(), it.value().to_vec()));
                it.next();
            }
            assert_eq!(want.len() as u64, n);
            let mut scan = m.ordered_scan();
            assert_eq!(scan.len() as u64, n);
            assert_eq!(scan.is_empty(), n == 0);
            let mut got = Vec::new();
            while let Some((k, v)) = scan.next() {
                got.push((k.to_vec(), v.to_vec()));
            }
            assert!(scan.next().is_none());
            assert!(
                got == want,
                "{n} entries: the scan differs from the iterator"
            );
        }
    }

    #[test]
    fn iterator_walks_in_internal_key_order() {
        let m = Arc::new(MemTable::new(FileNumber(1)));
        m.add(SeqNo(2), ValueKind::Put, b"b", b"2");
        m.add(SeqNo(1), ValueKind::Put, b"a", b"1");
        m.add(SeqNo(3), ValueKind::Put, b"a", b"3");
        let mut it = m.iter();
        it.seek_to_first();
        let mut seen = Vec::new();
        while it.valid() {
            let p = parse_internal_key(it.key()).unwrap();
            seen.push((p.user_key.to_vec(), p.seq.0, it.value().to_vec()));
            it.next();
        }
        assert_eq!(
            seen,
            vec![
                (b"a".to_vec(), 3, b"3".to_vec()),
                (b"a".to_vec(), 1, b"1".to_vec()),
                (b"b".to_vec(), 2, b"2".to_vec())
            ]
        );
        it.seek(&seek_key(b"a", SeqNo(2)));
        assert_eq!(user_key(it.key()), b"a");
        assert_eq!(it.value(), b"1");
        drop(m);
        it.next();
        assert_eq!(it.value(), b"2");
    }

    #[test]
    fn concurrent_writers_lose_no_entry_and_keep_the_order() {
        let m = Arc::new(MemTable::new(FileNumber(1)));
        const PER_THREAD: u64 = 5000;
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        // Interleaved key ranges, so the threads race for the same links.
                        let k =
                            ((i * 4 + t).wrapping_mul(0x9e37_79b9_7f4a_7c15) % 7919).to_be_bytes();
                        let seq = SeqNo(t * PER_THREAD + i + 1);
                        if i % 3 == 0 {
                            let mut b = WriteBatch::new();
                            b.put(k, seq.0.to_le_bytes());
                            m.add_batch(&b, seq);
                        } else {
                            m.add(seq, ValueKind::Put, &k, &seq.0.to_le_bytes());
                        }
                    }
                });
            }
        });
        assert_eq!(m.len(), 4 * PER_THREAD);
        assert_eq!(m.max_seq(), SeqNo(4 * PER_THREAD));
        // Every lane's bytes count: at least header, one pointer, key, trailer and value
        // per entry; the shared count lags by less than what the lanes may hold back.
        let size = m.approximate_size();
        assert!(size >= 4 * PER_THREAD as usize * (NODE_HEADER_BYTES + PTR_BYTES + 8 + 8 + 8));
        assert!(m.published_size() <= size && size - m.published_size() < MAX_UNPUBLISHED_BYTES);
        // The threads wrote through more than one lane (they take lanes in turn).
        let lanes_used = m
            .lanes
            .iter()
            .filter(|l| l.writer.lock().entries > 0)
            .count();
        assert!(lanes_used >= 2, "{lanes_used}");
        let mut it = m.iter();
        it.seek_to_first();
        let mut seen = std::collections::HashSet::new();
        let mut prev: Option<Vec<u8>> = None;
        while it.valid() {
            if let Some(p) = &prev {
                assert_eq!(compare_internal_keys(p, it.key()), Ordering::Less);
            }
            let seq = u64::from_le_bytes(it.value().try_into().unwrap());
            assert!(seen.insert(seq), "sequence {seq} twice");
            prev = Some(it.key().to_vec());
            it.next();
        }
        assert_eq!(seen.len() as u64, 4 * PER_THREAD);
        // Every level's chain is sorted too: a lookup of each entry finds it.
        for seq in 1..=4 * PER_THREAD {
            let (t, i) = ((seq - 1) / PER_THREAD, (seq - 1) % PER_THREAD);
            let k = ((i * 4 + t).wrapping_mul(0x9e37_79b9_7f4a_7c15) % 7919).to_be_bytes();
            assert!(matches!(
                m.get(&k, SeqNo(u64::MAX >> 8)),
                MemLookup::Found(_)
            ));
        }
    }

    #[test]
    fn readers_see_a_sorted_list_while_a_writer_inserts() {
        let m = Arc::new(MemTable::new(FileNumber(1)));
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for i in 0..20_000u64 {
                    let k = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 5000).to_be_bytes();
                    m.add(SeqNo(i + 1), ValueKind::Put, &k, &i.to_le_bytes());
                }
                done.store(true, AtomicOrdering::Release);
            });
            for _ in 0..2 {
                s.spawn(|| {
                    while !done.load(AtomicOrdering::Acquire) {
                        let mut it = m.iter();
                        it.seek_to_first();
                        let mut prev: Option<Vec<u8>> = None;
                        let mut n = 0;
                        while it.valid() {
                            if let Some(p) = &prev {
                                assert_eq!(compare_internal_keys(p, it.key()), Ordering::Less);
                            }
                            prev = Some(it.key().to_vec());
                            n += 1;
                            it.next();
                        }
                        assert!(n <= 20_000);
                    }
                });
            }
            writer.join().unwrap();
        });
        assert_eq!(m.len(), 20_000);
        let mut it = m.iter();
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        assert_eq!(n, 20_000);
    }

    #[test]
    fn large_values_get_chunks_of_their_own() {
        let m = MemTable::new(FileNumber(1));
        let big = vec![7u8; 3 << 20];
        m.add(SeqNo(1), ValueKind::Put, b"a", b"small");
        m.add(SeqNo(2), ValueKind::Put, b"b", &big);
        m.add(SeqNo(3), ValueKind::Put, b"c", b"small");
        assert_eq!(m.get(b"b", SeqNo(9)), MemLookup::Found(big));
        assert_eq!(m.get(b"c", SeqNo(9)), MemLookup::Found(b"small".to_vec()));
        assert!(m.approximate_size() > 3 << 20);
    }

    proptest::proptest! {
        #[test]
        fn memtable_matches_a_sorted_model(ops in proptest::collection::vec((0u16..300, proptest::bool::ANY, 0u8..40), 1..400)) {
            let m = Arc::new(MemTable::new(FileNumber(1)));
            let mut model = std::collections::BTreeMap::new();
            for (i, (k, put, vlen)) in ops.iter().enumerate() {
                let seq = SeqNo(i as u64 + 1);
                let key = format!("k{k}").into_bytes();
                let value = vec![*vlen; *vlen as usize];
                let kind = if *put { ValueKind::Put } else { ValueKind::Delete };
                m.add(seq, kind, &key, &value);
                model.insert(crate::lsm::types::make_internal_key(&key, seq, kind), value);
            }
            let mut sorted: Vec<_> = model.into_iter().collect();
            sorted.sort_by(|a, b| compare_internal_keys(&a.0, &b.0));
            let mut it = m.iter();
            it.seek_to_first();
            for (k, v) in &sorted {
                proptest::prop_assert!(it.valid());
                proptest::prop_assert_eq!(it.key(), &k[..]);
                proptest::prop_assert_eq!(it.value(), &v[..]);
                it.next();
            }
            proptest::prop_assert!(!it.valid());
        }
    }
}
