//! Large buffers in anonymous memory mappings, outside the C allocator.
//!
//! glibc's `malloc` serves a request above its mmap threshold (128 KiB at first) with a
//! mapping of its own, and raises the threshold to the size of every such block freed, up
//! to 32 MiB. Once a buffer of a few MiB has come and gone, every later buffer below that
//! size comes from heap arenas, which keep the memory freed in their middle. A store that
//! writes tables of 64 MiB builds index and filter blocks of about a MiB each, reads them
//! back at open and keeps them while the table lives: through the allocator, loading 8M
//! keys measured 15 MiB more peak RSS than with the threshold pinned. Buffers that can
//! grow that large live here instead: small ones on the heap as usual, large ones in
//! mappings of their own, given back to the kernel when dropped.

use std::alloc::{handle_alloc_error, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};

/// Size above which a [`ByteBuf`] moves to a mapping of its own: half of glibc's initial
/// mmap threshold, so that no buffer here is ever one `malloc` would map (and, freed,
/// raise the threshold with).
pub(crate) const MAP_ABOVE: usize = 64 << 10;

/// `bytes` of zeroed anonymous memory, page-aligned, or the process's out-of-memory
/// handling (as for any allocation that fails).
pub(crate) fn map_anon(bytes: usize) -> memmap2::MmapMut {
    match memmap2::MmapMut::map_anon(bytes) {
        Ok(map) => map,
        Err(_) => {
            handle_alloc_error(Layout::from_size_align(bytes, 8).unwrap_or(Layout::new::<u64>()))
        }
    }
}

/// A growable byte buffer: a `Vec` up to [`MAP_ABOVE`] bytes, an anonymous mapping
/// (doubling as it grows) past that.
pub(crate) struct ByteBuf {
    repr: Repr,
}

enum Repr {
    Heap(Vec<u8>),
    Mapped { map: memmap2::MmapMut, len: usize },
}

impl ByteBuf {
    /// An empty buffer (no allocation).
    pub(crate) const fn new() -> ByteBuf {
        ByteBuf {
            repr: Repr::Heap(Vec::new()),
        }
    }

    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> ByteBuf {
        let repr = if len <= MAP_ABOVE {
            Repr::Heap(vec![0; len])
        } else {
            Repr::Mapped {
                map: map_anon(len),
                len,
            }
        };
        ByteBuf { repr }
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        match &self.repr {
            Repr::Heap(v) => v.len(),
            Repr::Mapped { len, .. } => *len,
        }
    }

    /// Bytes it can hold without growing.
    pub(crate) fn capacity(&self) -> usize {
        match &self.repr {
            Repr::Heap(v) => v.capacity(),
            Repr::Mapped { map, .. } => map.len(),
        }
    }

    /// Whether its bytes live in a mapping of their own.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.repr, Repr::Mapped { .. })
    }

    /// Empties it, keeping its memory.
    pub(crate) fn clear(&mut self) {
        match &mut self.repr {
            Repr::Heap(v) => v.clear(),
            Repr::Mapped { len, .. } => *len = 0,
        }
    }

    /// Appends `bytes`.
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        match &mut self.repr {
            Repr::Heap(v) if v.len() + bytes.len() <= MAP_ABOVE => v.extend_from_slice(bytes),
            Repr::Mapped { map, len } if *len + bytes.len() <= map.len() => {
                map[*len..*len + bytes.len()].copy_from_slice(bytes);
                *len += bytes.len();
            }
            _ => {
                self.grow(bytes.len());
                self.extend_from_slice(bytes);
            }
        }
    }

    /// Moves the bytes to a mapping with room for `additional` more: at least twice the
    /// current capacity, so that appends stay amortized constant time.
    #[cold]
    fn grow(&mut self, additional: usize) {
        let len = self.len();
        let need = len
            .checked_add(additional)
            .unwrap_or_else(|| handle_alloc_error(Layout::new::<u64>()));
        let cap = need
            .max(self.capacity().saturating_mul(2))
            .max(2 * MAP_ABOVE);
        let mut map = map_anon(cap);
        map[..len].copy_from_slice(self);
        self.repr = Repr::Mapped { map, len };
    }
}

impl Default for ByteBuf {
    fn default() -> ByteBuf {
        ByteBuf::new()
    }
}

impl Deref for ByteBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.repr {
            Repr::Heap(v) => v,
            Repr::Mapped { map, len } => &map[..*len],
        }
    }
}

impl DerefMut for ByteBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.repr {
            Repr::Heap(v) => v,
            Repr::Mapped { map, len } => &mut map[..*len],
        }
    }
}

impl fmt::Debug for ByteBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBuf")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl From<&[u8]> for ByteBuf {
    fn from(bytes: &[u8]) -> ByteBuf {
        let mut b = if bytes.len() <= MAP_ABOVE {
            ByteBuf {
                repr: Repr::Heap(Vec::with_capacity(bytes.len())),
            }
        } else {
            ByteBuf {
                repr: Repr::Mapped {
                    map: map_anon(bytes.len()),
                    len: 0,
                },
            }
        };
        b.extend_from_slice(bytes);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_cross_into_a_mapping_and_keep_every_byte() {
        let mut b = ByteBuf::new();
        let mut model = Vec::new();
        let mut i = 0u32;
        while model.len() < 5 * MAP_ABOVE {
            let chunk: Vec<u8> = (0..(i % 97) as u8).map(|x| x ^ (i as u8)).collect();
            b.extend_from_slice(&chunk);
            model.extend_from_slice(&chunk);
            b.extend_from_slice(&[i as u8]);
            model.push(i as u8);
            assert_eq!(b.is_mapped(), model.len() > MAP_ABOVE);
            i += 1;
        }
        assert_eq!(&b[..], &model[..]);
        assert!(b.capacity() >= b.len());
        let cap = b.capacity();
        b.clear();
        assert_eq!(b.len(), 0);
        assert_eq!(b.capacity(), cap);
        b.extend_from_slice(b"again");
        assert_eq!(&b[..], b"again");
    }

    #[test]
    fn a_large_zeroed_buffer_is_mapped_and_writable() {
        let small = ByteBuf::zeroed(100);
        assert!(!small.is_mapped());
        assert_eq!(&small[..], &[0u8; 100][..]);
        let mut big = ByteBuf::zeroed(MAP_ABOVE + 1);
        assert!(big.is_mapped());
        assert!(big.iter().all(|&x| x == 0));
        big[MAP_ABOVE] = 7;
        assert_eq!(big[MAP_ABOVE], 7);
        let copy = ByteBuf::from(&big[..]);
        assert!(copy.is_mapped());
        assert_eq!(&copy[..], &big[..]);
        assert!(!ByteBuf::from(&b"x"[..]).is_mapped());
    }
}
