//! Identifiers, the internal key encoding, and the iterator contract shared by every part
//! of the store.
//!
//! An *internal key* is the user key followed by an 8-byte little-endian trailer
//! `(sequence << 8) | kind`. Internal keys order by user key ascending (bytewise), then by
//! sequence number descending, then by kind descending, so that the newest version of a key
//! comes first and a seek to `(key, snapshot_seq)` lands on the newest version a snapshot
//! may see.

use std::cmp::Ordering;
use std::fmt;

use crate::error::Result;

/// A write's sequence number: every write in a batch gets the next one, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SeqNo(pub u64);

impl SeqNo {
    /// The largest sequence number an internal key can carry (56 bits).
    pub const MAX: SeqNo = SeqNo((1 << 56) - 1);
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The number naming a WAL, SST or manifest file (`000042.sst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FileNumber(pub u64);

impl fmt::Display for FileNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// What an internal key records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ValueKind {
    /// A tombstone: the key was deleted.
    Delete = 0,
    /// A value was written.
    Put = 1,
}

impl ValueKind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<ValueKind> {
        match b {
            0 => Some(ValueKind::Delete),
            1 => Some(ValueKind::Put),
            _ => None,
        }
    }
}

/// Length of the trailer appended to a user key.
pub const TRAILER_LEN: usize = 8;

/// The kind used when seeking: it sorts first among equal (key, seq).
pub const KIND_FOR_SEEK: ValueKind = ValueKind::Put;

/// Packs a sequence number and kind into a trailer value.
#[inline]
pub fn pack_trailer(seq: SeqNo, kind: ValueKind) -> u64 {
    debug_assert!(seq <= SeqNo::MAX);
    (seq.0 << 8) | kind as u64
}

/// Appends the internal key for `(user_key, seq, kind)` to `buf`.
#[inline]
pub fn append_internal_key(buf: &mut Vec<u8>, user_key: &[u8], seq: SeqNo, kind: ValueKind) {
    buf.extend_from_slice(user_key);
    buf.extend_from_slice(&pack_trailer(seq, kind).to_le_bytes());
}

/// The internal key for `(user_key, seq, kind)`.
pub fn make_internal_key(user_key: &[u8], seq: SeqNo, kind: ValueKind) -> Vec<u8> {
    let mut v = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    append_internal_key(&mut v, user_key, seq, kind);
    v
}

/// The key to seek to for the newest version of `user_key` visible at `seq`.
pub fn seek_key(user_key: &[u8], seq: SeqNo) -> Vec<u8> {
    make_internal_key(user_key, seq, KIND_FOR_SEEK)
}

/// Bytes of user key a [`LookupKey`] holds without a heap allocation.
const LOOKUP_INLINE_BYTES: usize = 64;

/// The seek key of a point lookup, built on the stack for keys up to 64 bytes (a lookup
/// would otherwise allocate once per memtable and table it consults).
pub struct LookupKey {
    inline: [u8; LOOKUP_INLINE_BYTES + TRAILER_LEN],
    len: usize,
    heap: Vec<u8>,
}

impl LookupKey {
    /// The key to seek to for the newest version of `user_key` visible at `seq`.
    #[inline]
    pub fn new(user_key: &[u8], seq: SeqNo) -> LookupKey {
        let trailer = pack_trailer(seq, KIND_FOR_SEEK).to_le_bytes();
        let mut k = LookupKey {
            inline: [0; LOOKUP_INLINE_BYTES + TRAILER_LEN],
            len: user_key.len() + TRAILER_LEN,
            heap: Vec::new(),
        };
        if user_key.len() <= LOOKUP_INLINE_BYTES {
            k.inline[..user_key.len()].copy_from_slice(user_key);
            k.inline[user_key.len()..k.len].copy_from_slice(&trailer);
        } else {
            k.heap = seek_key(user_key, seq);
        }
        k
    }

    /// The internal key.
    #[inline]
    pub fn internal_key(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// An internal key split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The user's key.
    pub user_key: &'a [u8],
    /// The write's sequence number.
    pub seq: SeqNo,
    /// Put or delete.
    pub kind: ValueKind,
}

/// Splits an internal key; `None` when it is too short or its kind byte is unknown.
#[inline]
pub fn parse_internal_key(ikey: &[u8]) -> Option<ParsedKey<'_>> {
    let split = ikey.len().checked_sub(TRAILER_LEN)?;
    let (user_key, t) = ikey.split_at(split);
    let mut a = [0u8; 8];
    a.copy_from_slice(t);
    let trailer = u64::from_le_bytes(a);
    let kind = ValueKind::from_u8((trailer & 0xff) as u8)?;
    Some(ParsedKey {
        user_key,
        seq: SeqNo(trailer >> 8),
        kind,
    })
}

/// The user-key part of an internal key (the whole slice if it is too short to have a
/// trailer; callers validate keys read from disk with [`parse_internal_key`]).
#[inline]
pub fn user_key(ikey: &[u8]) -> &[u8] {
    &ikey[..ikey.len().saturating_sub(TRAILER_LEN)]
}

/// The stripe of a version numbered `seq` among the open snapshots (`snapshots`: the
/// numbers they read at, ascending): the index of the oldest snapshot that reads it
/// (`snapshots.len()`: only readers of the newest state). Two versions of a key in one
/// stripe are read by the same readers, who all see the newer: flushes and compactions
/// keep one version of a key per stripe.
#[inline]
pub fn snapshot_stripe(snapshots: &[u64], seq: u64) -> usize {
    snapshots.partition_point(|&s| s < seq)
}

/// The sequence number of an internal key (0 if it is too short to have a trailer).
#[inline]
pub fn internal_seq(ikey: &[u8]) -> u64 {
    trailer(ikey) >> 8
}

#[inline]
fn trailer(ikey: &[u8]) -> u64 {
    let n = ikey.len();
    if n < TRAILER_LEN {
        return 0;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&ikey[n - TRAILER_LEN..]);
    u64::from_le_bytes(a)
}

/// Bytewise order of two slices, as `<[u8]>::cmp`, eight bytes at a time: keys are short,
/// and an inline word compare beats a call into `memcmp` on the memtable's hot path.
#[inline]
pub fn compare_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    let (mut ca, mut cb) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let mut xa = [0u8; 8];
        let mut ya = [0u8; 8];
        xa.copy_from_slice(x);
        ya.copy_from_slice(y);
        let (x, y) = (u64::from_be_bytes(xa), u64::from_be_bytes(ya));
        if x != y {
            return x.cmp(&y);
        }
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// Orders internal keys: user key ascending, then trailer (sequence, kind) descending.
#[inline]
pub fn compare_internal_keys(a: &[u8], b: &[u8]) -> Ordering {
    match compare_bytes(user_key(a), user_key(b)) {
        Ordering::Equal => trailer(b).cmp(&trailer(a)),
        o => o,
    }
}

/// A cursor over internal keys in [`compare_internal_keys`] order, in the style of
/// LevelDB's iterators: positioned or not ([`InternalIterator::valid`]), with an error
/// state ([`InternalIterator::status`]) that ends iteration.
///
/// Implemented by the memtable, SST tables, level concatenations and the merging iterator.
pub trait InternalIterator {
    /// True when positioned at an entry.
    fn valid(&self) -> bool;
    /// Positions at the first entry.
    fn seek_to_first(&mut self);
    /// Positions at the first entry whose internal key is `>= target`.
    fn seek(&mut self, target: &[u8]);
    /// Advances. REQUIRES: `valid()`.
    fn next(&mut self);
    /// The current internal key. REQUIRES: `valid()`.
    fn key(&self) -> &[u8];
    /// The current value. REQUIRES: `valid()`.
    fn value(&self) -> &[u8];
    /// The error that made the iterator stop early, if any.
    fn status(&self) -> Result<()>;
}

impl<I: InternalIterator + ?Sized> InternalIterator for Box<I> {
    fn valid(&self) -> bool {
        (**self).valid()
    }
    fn seek_to_first(&mut self) {
        (**self).seek_to_first()
    }
    fn seek(&mut self, target: &[u8]) {
        (**self).seek(target)
    }
    fn next(&mut self) {
        (**self).next()
    }
    fn key(&self) -> &[u8] {
        (**self).key()
    }
    fn value(&self) -> &[u8] {
        (**self).value()
    }
    fn status(&self) -> Result<()> {
        (**self).status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_sorts_first() {
        let a5 = make_internal_key(b"a", SeqNo(5), ValueKind::Put);
        let a9 = make_internal_key(b"a", SeqNo(9), ValueKind::Delete);
        let ab1 = make_internal_key(b"ab", SeqNo(1), ValueKind::Put);
        assert_eq!(compare_internal_keys(&a9, &a5), Ordering::Less);
        assert_eq!(compare_internal_keys(&a5, &ab1), Ordering::Less);
        assert_eq!(
            compare_internal_keys(&seek_key(b"a", SeqNo(7)), &a5),
            Ordering::Less
        );
        assert_eq!(
            compare_internal_keys(&seek_key(b"a", SeqNo(7)), &a9),
            Ordering::Greater
        );
    }

    #[test]
    fn compare_bytes_agrees_with_slice_order() {
        let samples: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![1],
            vec![0xff; 7],
            vec![0xff; 8],
            vec![0xff; 9],
            b"abcdefgh".to_vec(),
            b"abcdefgh\x00".to_vec(),
            b"abcdefgi".to_vec(),
            b"abcdefghijklmnopq".to_vec(),
            b"abcdefghijklmnopr".to_vec(),
            b"abcdefghijklmnop".to_vec(),
        ];
        for a in &samples {
            for b in &samples {
                assert_eq!(compare_bytes(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn lookup_key_equals_seek_key_for_short_and_long_keys() {
        for len in [0, 1, 63, 64, 65, 300] {
            let k = vec![b'x'; len];
            assert_eq!(
                LookupKey::new(&k, SeqNo(42)).internal_key(),
                &seek_key(&k, SeqNo(42))[..]
            );
        }
    }

    #[test]
    fn parse_rejects_short_and_unknown_kind() {
        assert!(parse_internal_key(b"short").is_none());
        let mut k = make_internal_key(b"k", SeqNo(3), ValueKind::Put);
        let p = parse_internal_key(&k).unwrap();
        assert_eq!(
            (p.user_key, p.seq, p.kind),
            (&b"k"[..], SeqNo(3), ValueKind::Put)
        );
        let n = k.len();
        k[n - 8] = 7;
        assert!(parse_internal_key(&k).is_none());
    }
}
