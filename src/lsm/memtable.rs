//! The memtable: a concurrent sorted map of internal keys in memory.
//!
//! Every entry is one allocation holding the internal key and the value side by side.
//! Readers never take a lock: the skiplist is lock-free. Writers are serialized by the
//! write path (the group-commit leader inserts), but the structure itself would allow more.
//! A memtable never removes an entry; it is dropped whole once flushed.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

use crossbeam_skiplist::map::Entry;
use crossbeam_skiplist::SkipMap;

use super::batch::WriteBatch;
use super::types::{
    append_internal_key, compare_internal_keys, parse_internal_key, seek_key, FileNumber,
    InternalIterator, SeqNo, ValueKind,
};
use crate::error::Result;

/// An internal key as an unsized type whose order is [`compare_internal_keys`], so the
/// skiplist can be searched with a borrowed key.
#[repr(transparent)]
#[derive(PartialEq, Eq)]
struct IKey([u8]);

impl IKey {
    fn new(b: &[u8]) -> &IKey {
        // SAFETY: IKey is #[repr(transparent)] over [u8], so the two references have the
        // same layout and the same lifetime.
        unsafe { &*(b as *const [u8] as *const IKey) }
    }
}

impl Ord for IKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_internal_keys(&self.0, &other.0)
    }
}

impl PartialOrd for IKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One entry: `internal key ++ value` in a single allocation.
struct MemEntry {
    buf: Box<[u8]>,
    key_len: u32,
}

impl MemEntry {
    fn key(&self) -> &[u8] {
        &self.buf[..self.key_len as usize]
    }
    fn value(&self) -> &[u8] {
        &self.buf[self.key_len as usize..]
    }
}

impl Borrow<IKey> for MemEntry {
    fn borrow(&self) -> &IKey {
        IKey::new(self.key())
    }
}

impl PartialEq for MemEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for MemEntry {}
impl PartialOrd for MemEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MemEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_internal_keys(self.key(), other.key())
    }
}

/// Per-entry overhead charged to the memtable's size (skiplist node, pointers).
const ENTRY_OVERHEAD_BYTES: usize = 64;

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
    map: SkipMap<MemEntry, ()>,
    size_bytes: AtomicUsize,
    entries: AtomicU64,
    /// The WAL file that records this memtable's writes (0 when the WAL is off).
    wal_number: FileNumber,
    /// Largest sequence number inserted.
    max_seq: AtomicU64,
}

impl std::fmt::Debug for MemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTable")
            .field("wal_number", &self.wal_number)
            .field("entries", &self.len())
            .field("size_bytes", &self.approximate_size())
            .finish()
    }
}

impl MemTable {
    /// An empty memtable whose writes are logged in WAL `wal_number`.
    pub fn new(wal_number: FileNumber) -> Self {
        MemTable {
            map: SkipMap::new(),
            size_bytes: AtomicUsize::new(0),
            entries: AtomicU64::new(0),
            wal_number,
            max_seq: AtomicU64::new(0),
        }
    }

    /// The WAL holding this memtable's writes.
    pub fn wal_number(&self) -> FileNumber {
        self.wal_number
    }

    /// Inserts one version of a key.
    pub fn add(&self, seq: SeqNo, kind: ValueKind, user_key: &[u8], value: &[u8]) {
        let charge = self.insert(seq, kind, user_key, value);
        self.account(1, charge, seq);
    }

    /// Inserts every operation of `batch`, numbered from `first_seq`.
    pub fn add_batch(&self, batch: &WriteBatch, first_seq: SeqNo) {
        let mut charge = 0;
        let mut n = 0;
        let mut last = first_seq;
        for op in batch.iter(first_seq) {
            charge += self.insert(op.seq, op.kind, op.key, op.value);
            n += 1;
            last = op.seq;
        }
        self.account(n, charge, last);
    }

    /// Inserts without updating the size counters; returns the bytes to charge.
    fn insert(&self, seq: SeqNo, kind: ValueKind, user_key: &[u8], value: &[u8]) -> usize {
        let mut buf = Vec::with_capacity(user_key.len() + 8 + value.len());
        append_internal_key(&mut buf, user_key, seq, kind);
        let key_len = buf.len() as u32;
        buf.extend_from_slice(value);
        let charge = buf.len() + ENTRY_OVERHEAD_BYTES;
        self.map.insert(
            MemEntry {
                buf: buf.into_boxed_slice(),
                key_len,
            },
            (),
        );
        charge
    }

    fn account(&self, entries: u64, bytes: usize, max_seq: SeqNo) {
        self.size_bytes.fetch_add(bytes, AtomicOrdering::Relaxed);
        self.entries.fetch_add(entries, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(max_seq.0, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` with a sequence number `<= seq`.
    pub fn get(&self, user_key: &[u8], seq: SeqNo) -> MemLookup {
        let target = seek_key(user_key, seq);
        let Some(e) = self.map.lower_bound(Bound::Included(IKey::new(&target))) else {
            return MemLookup::NotFound;
        };
        let entry = e.key();
        match parse_internal_key(entry.key()) {
            Some(p) if p.user_key == user_key => match p.kind {
                ValueKind::Put => MemLookup::Found(entry.value().to_vec()),
                ValueKind::Delete => MemLookup::Deleted,
            },
            _ => MemLookup::NotFound,
        }
    }

    /// Bytes charged so far (keys, values and per-entry overhead).
    pub fn approximate_size(&self) -> usize {
        self.size_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.entries.load(AtomicOrdering::Relaxed)
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Largest sequence number inserted (0 when empty).
    pub fn max_seq(&self) -> SeqNo {
        SeqNo(self.max_seq.load(AtomicOrdering::Relaxed))
    }

    /// An iterator over the memtable that keeps it alive.
    pub fn iter(self: &std::sync::Arc<Self>) -> MemTableIter {
        MemTableIter {
            cur: None,
            mem: self.clone(),
        }
    }
}

/// An [`InternalIterator`] over a memtable.
pub struct MemTableIter {
    // Field order matters: `cur` borrows from `mem` and must be dropped first.
    cur: Option<Entry<'static, MemEntry, ()>>,
    mem: std::sync::Arc<MemTable>,
}

impl MemTableIter {
    fn extend(e: Option<Entry<'_, MemEntry, ()>>) -> Option<Entry<'static, MemEntry, ()>> {
        // SAFETY: the entry borrows the skiplist owned by `self.mem`, an Arc that this
        // iterator holds for as long as the entry lives (the entry field is declared first,
        // so it is dropped before the Arc). The memtable is never mutated by removal.
        e.map(|e| unsafe {
            std::mem::transmute::<Entry<'_, MemEntry, ()>, Entry<'static, MemEntry, ()>>(e)
        })
    }
}

impl InternalIterator for MemTableIter {
    fn valid(&self) -> bool {
        self.cur.is_some()
    }
    fn seek_to_first(&mut self) {
        self.cur = None;
        let e = self.mem.map.front();
        self.cur = Self::extend(e);
    }
    fn seek(&mut self, target: &[u8]) {
        self.cur = None;
        let e = self.mem.map.lower_bound(Bound::Included(IKey::new(target)));
        self.cur = Self::extend(e);
    }
    fn next(&mut self) {
        if let Some(cur) = self.cur.as_mut() {
            if !cur.move_next() {
                self.cur = None;
            }
        }
    }
    fn key(&self) -> &[u8] {
        self.cur.as_ref().map(|e| e.key().key()).unwrap_or(&[])
    }
    fn value(&self) -> &[u8] {
        self.cur.as_ref().map(|e| e.key().value()).unwrap_or(&[])
    }
    fn status(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::types::user_key;
    use std::sync::Arc;

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
}
