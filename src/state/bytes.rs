//! Bytes of a heap backend's entry key or value, or of a serialized key on its way to a keyed
//! operator, inline when short.
//!
//! Most keys (a state id and a serialized word, id or small struct) and most values
//! (counters, sums, small structs) fit in 30 bytes: kept in the hash table's own slot,
//! they cost no allocation and a lookup reads no other memory to compare a key or return a
//! value.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Longest bytes kept inline.
const INLINE: usize = 30;

/// Bytes, inline up to 30 bytes, on the heap beyond.
#[derive(Clone)]
pub(crate) enum Bytes {
    /// `buf[..len]`.
    Inline { len: u8, buf: [u8; INLINE] },
    /// Longer bytes.
    Heap(Vec<u8>),
}

impl Bytes {
    /// A copy of `b`.
    pub(crate) fn new(b: &[u8]) -> Bytes {
        if b.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..b.len()].copy_from_slice(b);
            Bytes::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            Bytes::Heap(b.to_vec())
        }
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..*len as usize],
            Bytes::Heap(v) => v,
        }
    }

    /// Replaces the bytes with `b` (reusing a heap buffer that is there).
    pub(crate) fn set(&mut self, b: &[u8]) {
        match self {
            Bytes::Heap(v) if b.len() > INLINE => {
                v.clear();
                v.extend_from_slice(b);
            }
            _ => *self = Bytes::new(b),
        }
    }

    /// Appends `more`.
    pub(crate) fn extend(&mut self, more: &[u8]) {
        match self {
            Bytes::Heap(v) => v.extend_from_slice(more),
            Bytes::Inline { len, buf } => {
                let have = *len as usize;
                let n = have + more.len();
                if n <= INLINE {
                    buf[have..n].copy_from_slice(more);
                    *len = n as u8;
                } else {
                    let mut v = Vec::with_capacity(n);
                    v.extend_from_slice(&buf[..have]);
                    v.extend_from_slice(more);
                    *self = Bytes::Heap(v);
                }
            }
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        if v.len() <= INLINE {
            Bytes::new(&v)
        } else {
            Bytes::Heap(v)
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, so that a table keyed by `Bytes` is searched by `&[u8]`.
        self.as_slice().hash(state)
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Bytes {}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Bytes) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Bytes) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn inline_and_heap_bytes_behave_as_slices() {
        for n in [0usize, 1, 29, 30, 31, 100] {
            let data: Vec<u8> = (0..n as u8).collect();
            let b = Bytes::new(&data);
            assert_eq!(b.as_slice(), &data[..]);
            assert_eq!(matches!(b, Bytes::Inline { .. }), n <= INLINE);
            assert_eq!(Bytes::from(data.clone()), b);
            let mut m: HashMap<Bytes, u32> = HashMap::new();
            m.insert(b.clone(), 7);
            assert_eq!(m.get(&data[..]), Some(&7), "found by slice, {n} bytes");
        }
    }

    #[test]
    fn set_and_extend_cross_the_inline_limit_both_ways() {
        let mut b = Bytes::new(b"abc");
        b.extend(&[1u8; 27]);
        assert_eq!(b.len(), 30);
        assert!(matches!(b, Bytes::Inline { .. }));
        b.extend(b"x");
        assert!(matches!(b, Bytes::Heap(_)));
        assert_eq!(&b[..3], b"abc");
        assert_eq!(b[30], b'x');
        b.set(&[9u8; 40]);
        assert_eq!(b.as_slice(), &[9u8; 40][..]);
        b.set(b"short");
        assert!(matches!(b, Bytes::Inline { .. }));
        assert_eq!(b.as_slice(), b"short");
    }
}
