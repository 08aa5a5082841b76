//! Large buffers in anonymous memory mappings, outside the C allocator.
//!
//! glibc's `malloc` serves a request above its mmap threshold (128 KiB at first) with a
//! mapping of its own, and raises the threshold to the size of every such block freed, up
//! to 32 MiB. Once a buffer of a few MiB has come and gone, every later buffer below that
//! size comes from heap arenas, which keep the memory freed in their middle. A store that
//! writes tables of 64 MiB builds index and filter blocks of about a MiB each, reads them
//! back at open and keeps them while the table lives: through the allocator, loading 8M
//! keys measured 15 MiB more peak RSS than with the threshold pinned. Buffers that can
//! grow that large live here instead ([`AnonVec`]): small ones on the heap as usual,
//! large ones in mappings of their own, given back to the kernel when dropped.

use std::alloc::{handle_alloc_error, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};

/// Size in bytes above which an [`AnonVec`] moves to a mapping of its own: half of glibc's initial
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

/// Plain integers: any bit pattern (zero included) is a value, so a zeroed mapping holds
/// valid ones and bytes can be viewed as them.
pub(crate) trait Pod: Copy + Default + 'static + private::Sealed {}
impl Pod for u8 {}
impl Pod for u32 {}
impl Pod for u64 {}

mod private {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// A growable array of plain integers: a `Vec` up to [`MAP_ABOVE`] bytes, an anonymous
/// mapping (doubling as it grows) past that.
pub(crate) struct AnonVec<T: Pod> {
    repr: Repr<T>,
}

/// Bytes, the common case.
pub(crate) type ByteBuf = AnonVec<u8>;

enum Repr<T> {
    Heap(Vec<T>),
    /// `len` elements at the start of `map`, which holds `map.len() / size_of::<T>()`.
    Mapped {
        map: memmap2::MmapMut,
        len: usize,
    },
}

impl<T: Pod> AnonVec<T> {
    /// Elements that fit in [`MAP_ABOVE`] bytes.
    const HEAP_MAX: usize = MAP_ABOVE / std::mem::size_of::<T>();

    /// An empty array (no allocation).
    pub(crate) const fn new() -> Self {
        AnonVec {
            repr: Repr::Heap(Vec::new()),
        }
    }

    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        let repr = if len <= Self::HEAP_MAX {
            Repr::Heap(vec![T::default(); len])
        } else {
            Repr::Mapped {
                map: map_anon(Self::bytes_for(len)),
                len,
            }
        };
        AnonVec { repr }
    }

    /// Bytes of `n` elements, or the process's out-of-memory handling if that overflows.
    fn bytes_for(n: usize) -> usize {
        n.checked_mul(std::mem::size_of::<T>())
            .unwrap_or_else(|| handle_alloc_error(Layout::new::<u64>()))
    }

    /// Elements held.
    pub(crate) fn len(&self) -> usize {
        match &self.repr {
            Repr::Heap(v) => v.len(),
            Repr::Mapped { len, .. } => *len,
        }
    }

    /// Elements it can hold without growing.
    pub(crate) fn capacity(&self) -> usize {
        match &self.repr {
            Repr::Heap(v) => v.capacity(),
            Repr::Mapped { map, .. } => map.len() / std::mem::size_of::<T>(),
        }
    }

    /// Whether its elements live in a mapping of their own.
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

    /// Appends one element.
    pub(crate) fn push(&mut self, x: T) {
        self.extend_from_slice(std::slice::from_ref(&x));
    }

    /// Appends `xs`.
    pub(crate) fn extend_from_slice(&mut self, xs: &[T]) {
        let len = self.len();
        let fits = match &self.repr {
            Repr::Heap(v) => len + xs.len() <= Self::HEAP_MAX.max(v.capacity()),
            Repr::Mapped { .. } => len + xs.len() <= self.capacity(),
        };
        if !fits {
            self.grow(xs.len());
        }
        match &mut self.repr {
            Repr::Heap(v) => v.extend_from_slice(xs),
            Repr::Mapped { len, .. } => {
                let at = *len;
                *len += xs.len();
                self[at..].copy_from_slice(xs);
            }
        }
    }

    /// Sets the length to `len`, growing as needed, for a caller that overwrites every
    /// element: those past the old length keep whatever an earlier use left there (they
    /// are initialized, not cleared).
    pub(crate) fn resize_for_overwrite(&mut self, len: usize) {
        match &mut self.repr {
            Repr::Heap(v) if len <= Self::HEAP_MAX.max(v.capacity()) => v.resize(len, T::default()),
            _ => {
                if len > self.capacity() {
                    self.grow(len - self.len());
                }
                if let Repr::Mapped { len: l, .. } = &mut self.repr {
                    *l = len;
                }
            }
        }
    }

    /// Moves the elements to a mapping with room for `additional` more: at least twice
    /// the current capacity, so that appends stay amortized constant time.
    #[cold]
    fn grow(&mut self, additional: usize) {
        let len = self.len();
        let need = len
            .checked_add(additional)
            .unwrap_or_else(|| handle_alloc_error(Layout::new::<u64>()));
        let cap = need
            .max(self.capacity().saturating_mul(2))
            .max(2 * Self::HEAP_MAX);
        let old = std::mem::replace(
            &mut self.repr,
            Repr::Mapped {
                map: map_anon(Self::bytes_for(cap)),
                len,
            },
        );
        let from: &[T] = match &old {
            Repr::Heap(v) => v,
            Repr::Mapped { map, len } => Self::view(map, *len),
        };
        self.copy_from_slice(from);
    }

    /// The first `len` elements of `map`.
    fn view(map: &memmap2::MmapMut, len: usize) -> &[T] {
        assert!(Self::bytes_for(len) <= map.len());
        // SAFETY: the mapping is page-aligned (so aligned for T), at least `len` elements
        // long (checked above) and lives as long as the borrow; T is a plain integer, for
        // which every byte pattern is a value.
        unsafe { std::slice::from_raw_parts(map.as_ptr() as *const T, len) }
    }

    /// The first `len` elements of `map`, mutably.
    fn view_mut(map: &mut memmap2::MmapMut, len: usize) -> &mut [T] {
        assert!(Self::bytes_for(len) <= map.len());
        // SAFETY: as in `view`, and the borrow of `map` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut T, len) }
    }
}

impl<T: Pod> Default for AnonVec<T> {
    fn default() -> Self {
        AnonVec::new()
    }
}

impl<T: Pod> Deref for AnonVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.repr {
            Repr::Heap(v) => v,
            Repr::Mapped { map, len } => Self::view(map, *len),
        }
    }
}

impl<T: Pod> DerefMut for AnonVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.repr {
            Repr::Heap(v) => v,
            Repr::Mapped { map, len } => Self::view_mut(map, *len),
        }
    }
}

impl<T: Pod> fmt::Debug for AnonVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnonVec")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl<T: Pod> From<&[T]> for AnonVec<T> {
    fn from(xs: &[T]) -> Self {
        let mut v = if xs.len() <= Self::HEAP_MAX {
            AnonVec {
                repr: Repr::Heap(Vec::with_capacity(xs.len())),
            }
        } else {
            AnonVec {
                repr: Repr::Mapped {
                    map: map_anon(Self::bytes_for(xs.len())),
                    len: 0,
                },
            }
        };
        v.extend_from_slice(xs);
        v
    }
}

impl<T: Pod> FromIterator<T> for AnonVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut v = AnonVec::new();
        if iter.size_hint().0 > Self::HEAP_MAX {
            v.grow(iter.size_hint().0);
        }
        for x in iter {
            v.push(x);
        }
        v
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
            b.push(i as u8);
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
    fn resizing_for_overwrite_keeps_the_prefix_and_moves_to_a_mapping() {
        let mut b = ByteBuf::from(&b"head"[..]);
        b.resize_for_overwrite(10);
        assert_eq!(&b[..4], b"head");
        assert_eq!(b.len(), 10);
        b.resize_for_overwrite(3 * MAP_ABOVE);
        assert!(b.is_mapped());
        assert_eq!(b.len(), 3 * MAP_ABOVE);
        assert_eq!(&b[..4], b"head");
        b[3 * MAP_ABOVE - 1] = 9;
        b.resize_for_overwrite(5);
        assert_eq!(&b[..], b"head\0");
        b.resize_for_overwrite(3 * MAP_ABOVE);
        assert_eq!(b[3 * MAP_ABOVE - 1], 9, "no new mapping below the capacity");
    }

    #[test]
    fn wide_elements_cross_into_a_mapping_by_bytes() {
        let v: AnonVec<u64> = (0..MAP_ABOVE as u64 / 8).collect();
        assert!(!v.is_mapped());
        let mut w: AnonVec<u64> = (0..MAP_ABOVE as u64).collect();
        assert!(w.is_mapped());
        assert!(w.iter().copied().eq(0..MAP_ABOVE as u64));
        w.push(7);
        assert_eq!(w[MAP_ABOVE], 7);
        let mut u: AnonVec<u32> = AnonVec::new();
        for i in 0..MAP_ABOVE as u32 {
            u.push(i);
        }
        assert!(u.is_mapped());
        assert!(u.iter().copied().eq(0..MAP_ABOVE as u32));
        assert_eq!(&AnonVec::from(&v[..])[..], &v[..]);
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
