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
use std::ptr::NonNull;

/// Size in bytes above which an [`AnonVec`] moves to a mapping of its own: half of
/// glibc's initial mmap threshold, so that no buffer here is ever one `malloc` would map
/// (and, freed, raise the threshold with).
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
    /// The first element, in `mem`; refreshed whenever `mem` changes, so that reading
    /// the elements costs no branch on where they live (index searches read them in
    /// tight loops).
    ptr: NonNull<T>,
    len: usize,
    mem: Mem<T>,
}

/// Bytes, the common case.
pub(crate) type ByteBuf = AnonVec<u8>;

enum Mem<T> {
    /// The elements are exactly the vector's.
    Heap(Vec<T>),
    /// `len` elements at the start of the mapping, which has room for
    /// `map.len() / size_of::<T>()`.
    Mapped(memmap2::MmapMut),
}

// SAFETY: an AnonVec owns its memory (a Vec or a mapping) outright; `ptr` points into it
// and is only read through `&self` and written through `&mut self`, like a Vec's. T is a
// plain integer.
unsafe impl<T: Pod> Send for AnonVec<T> {}
// SAFETY: as above: shared references only read.
unsafe impl<T: Pod> Sync for AnonVec<T> {}

impl<T: Pod> AnonVec<T> {
    /// Elements that fit in [`MAP_ABOVE`] bytes.
    const HEAP_MAX: usize = MAP_ABOVE / std::mem::size_of::<T>();

    /// An empty array (no allocation).
    pub(crate) fn new() -> Self {
        Self::on_heap(Vec::new())
    }

    fn on_heap(mut v: Vec<T>) -> Self {
        AnonVec {
            ptr: NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len: v.len(),
            mem: Mem::Heap(v),
        }
    }

    /// A mapping with room for `cap` elements, holding none yet.
    fn mapped(cap: usize) -> Self {
        let mut map = map_anon(Self::bytes_for(cap).max(1));
        AnonVec {
            ptr: NonNull::new(map.as_mut_ptr() as *mut T).unwrap_or(NonNull::dangling()),
            len: 0,
            mem: Mem::Mapped(map),
        }
    }

    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        if len <= Self::HEAP_MAX {
            Self::on_heap(vec![T::default(); len])
        } else {
            let mut v = Self::mapped(len);
            // The mapping is zeroed.
            v.len = len;
            v
        }
    }

    /// Bytes of `n` elements, or the process's out-of-memory handling if that overflows.
    fn bytes_for(n: usize) -> usize {
        n.checked_mul(std::mem::size_of::<T>())
            .unwrap_or_else(|| handle_alloc_error(Layout::new::<u64>()))
    }

    /// Elements held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Elements it can hold without growing.
    pub(crate) fn capacity(&self) -> usize {
        match &self.mem {
            Mem::Heap(v) => v.capacity(),
            Mem::Mapped(map) => map.len() / std::mem::size_of::<T>(),
        }
    }

    /// Whether its elements live in a mapping of their own.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.mem, Mem::Mapped(_))
    }

    /// Empties it, keeping its memory.
    pub(crate) fn clear(&mut self) {
        if let Mem::Heap(v) = &mut self.mem {
            v.clear();
        }
        self.len = 0;
    }

    /// Appends one element.
    pub(crate) fn push(&mut self, x: T) {
        self.extend_from_slice(std::slice::from_ref(&x));
    }

    /// Appends `xs`.
    pub(crate) fn extend_from_slice(&mut self, xs: &[T]) {
        let need = self.len + xs.len();
        let fits = match &self.mem {
            Mem::Heap(v) => need <= Self::HEAP_MAX.max(v.capacity()),
            Mem::Mapped(_) => need <= self.capacity(),
        };
        if !fits {
            self.grow(xs.len());
        }
        match &mut self.mem {
            Mem::Heap(v) => {
                v.extend_from_slice(xs);
                self.ptr = NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling());
                self.len = v.len();
            }
            Mem::Mapped(_) => {
                let at = self.len;
                self.len = need;
                self[at..].copy_from_slice(xs);
            }
        }
    }

    /// Sets the length to `len`, growing as needed, for a caller that overwrites every
    /// element: those past the old length keep whatever an earlier use left there (they
    /// are initialized, not cleared).
    pub(crate) fn resize_for_overwrite(&mut self, len: usize) {
        if let Mem::Heap(v) = &mut self.mem {
            if len <= Self::HEAP_MAX.max(v.capacity()) {
                v.resize(len, T::default());
                self.ptr = NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling());
                self.len = v.len();
                return;
            }
        }
        if len > self.capacity() {
            self.grow(len - self.len);
        }
        // Mapped now: the bytes up to the capacity are initialized (zeroed or written).
        self.len = len;
    }

    /// Moves the elements to a mapping with room for `additional` more: at least twice
    /// the current capacity, so that appends stay amortized constant time.
    #[cold]
    fn grow(&mut self, additional: usize) {
        let need = self
            .len
            .checked_add(additional)
            .unwrap_or_else(|| handle_alloc_error(Layout::new::<u64>()));
        let cap = need
            .max(self.capacity().saturating_mul(2))
            .max(2 * Self::HEAP_MAX);
        let mut bigger = Self::mapped(cap);
        bigger.len = self.len;
        bigger.copy_from_slice(self);
        *self = bigger;
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
        // SAFETY: `ptr` points at `len` initialized elements of `mem` (a Vec's elements,
        // or the start of a page-aligned mapping with room for at least `len`, every byte
        // of it zeroed or written), which live as long as `self` and move only through
        // `&mut self`, which refreshes `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> DerefMut for AnonVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and the borrow of `self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
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
            Self::on_heap(Vec::with_capacity(xs.len()))
        } else {
            Self::mapped(xs.len())
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
