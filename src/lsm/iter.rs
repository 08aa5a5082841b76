//! Iterators that combine sources: the merging iterator (a min-heap over children) and the
//! user-facing iterator that applies a snapshot's sequence number, hides older versions
//! and tombstones, and stops at the end of the requested range.

use std::cmp::Ordering;
use std::ops::Bound;

use super::types::{
    compare_internal_keys, parse_internal_key, seek_key, InternalIterator, SeqNo, ValueKind,
};
use crate::error::{Error, Result};

/// A boxed child iterator.
pub type BoxedIter = Box<dyn InternalIterator + Send>;

/// Merges sorted children into one sorted stream. Children earlier in the list win ties
/// (equal internal keys do not occur between distinct sources in a healthy store, but the
/// order keeps the result deterministic).
pub struct MergingIter {
    children: Vec<BoxedIter>,
    /// Indices of valid children, a binary min-heap by (key, index).
    heap: Vec<usize>,
}

impl MergingIter {
    /// Merges `children` (not yet positioned).
    pub fn new(children: Vec<BoxedIter>) -> Self {
        let n = children.len();
        MergingIter {
            children,
            heap: Vec::with_capacity(n),
        }
    }

    fn less(&self, a: usize, b: usize) -> bool {
        match compare_internal_keys(self.children[a].key(), self.children[b].key()) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => a < b,
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                return;
            }
            let r = l + 1;
            let mut m = l;
            if r < n && self.less(self.heap[r], self.heap[l]) {
                m = r;
            }
            if self.less(self.heap[m], self.heap[i]) {
                self.heap.swap(m, i);
                i = m;
            } else {
                return;
            }
        }
    }

    fn rebuild(&mut self) {
        self.heap.clear();
        for i in 0..self.children.len() {
            if self.children[i].valid() {
                self.heap.push(i);
            }
        }
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
    }
}

impl InternalIterator for MergingIter {
    fn valid(&self) -> bool {
        !self.heap.is_empty() && self.status().is_ok()
    }
    fn seek_to_first(&mut self) {
        for c in &mut self.children {
            c.seek_to_first();
        }
        self.rebuild();
    }
    fn seek(&mut self, target: &[u8]) {
        for c in &mut self.children {
            c.seek(target);
        }
        self.rebuild();
    }
    fn next(&mut self) {
        let Some(&top) = self.heap.first() else {
            return;
        };
        self.children[top].next();
        if self.children[top].valid() {
            self.sift_down(0);
        } else {
            let last = self.heap.len() - 1;
            self.heap.swap(0, last);
            self.heap.pop();
            self.sift_down(0);
        }
    }
    fn key(&self) -> &[u8] {
        match self.heap.first() {
            Some(&i) => self.children[i].key(),
            None => &[],
        }
    }
    fn value(&self) -> &[u8] {
        match self.heap.first() {
            Some(&i) => self.children[i].value(),
            None => &[],
        }
    }
    fn status(&self) -> Result<()> {
        for c in &self.children {
            c.status()?;
        }
        Ok(())
    }
}

/// The user-facing cursor: newest version of each key visible at a sequence number, no
/// tombstones, within `[lower, upper)` bounds.
pub struct UserIter<I: InternalIterator> {
    inner: I,
    seq: SeqNo,
    upper: Bound<Vec<u8>>,
    /// The current user key and value (copied out so `inner` can move past older versions).
    key: Vec<u8>,
    value: Vec<u8>,
    valid: bool,
    error: Option<Error>,
}

impl<I: InternalIterator> UserIter<I> {
    /// Wraps `inner`, showing what was visible at `seq` below `upper`.
    pub fn new(inner: I, seq: SeqNo, upper: Bound<Vec<u8>>) -> Self {
        UserIter {
            inner,
            seq,
            upper,
            key: Vec::new(),
            value: Vec::new(),
            valid: false,
            error: None,
        }
    }

    /// Positions at the first visible key `>= lower` (or the first key).
    pub fn seek(&mut self, lower: Bound<&[u8]>) {
        match lower {
            Bound::Unbounded => self.inner.seek_to_first(),
            Bound::Included(k) => self.inner.seek(&seek_key(k, self.seq)),
            Bound::Excluded(k) => {
                self.inner.seek(&seek_key(k, self.seq));
                // Skip every version of `k` itself.
                while self.inner.valid() && super::types::user_key(self.inner.key()) == k {
                    self.inner.next();
                }
            }
        }
        self.find_next_visible(None);
    }

    /// True when positioned at a key.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The current key. REQUIRES: `valid()`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current value. REQUIRES: `valid()`.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Moves to the next visible key.
    pub fn advance(&mut self) {
        if !self.valid {
            return;
        }
        let skip = std::mem::take(&mut self.key);
        self.find_next_visible(Some(&skip));
        if !self.valid {
            self.key = Vec::new();
        }
    }

    /// The error that ended iteration, if any.
    pub fn status(&self) -> Result<()> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn past_upper(&self, k: &[u8]) -> bool {
        match &self.upper {
            Bound::Unbounded => false,
            Bound::Included(u) => k > u.as_slice(),
            Bound::Excluded(u) => k >= u.as_slice(),
        }
    }

    /// Moves `inner` to the newest visible version of the next user key that is not
    /// `skip` and not deleted, and copies it out.
    fn find_next_visible(&mut self, skip: Option<&[u8]>) {
        self.valid = false;
        let mut skipping: Option<Vec<u8>> = skip.map(|s| s.to_vec());
        while self.inner.valid() {
            let Some(p) = parse_internal_key(self.inner.key()) else {
                self.error = Some(Error::corruption(
                    "<iterator>",
                    0,
                    "an entry's key has no valid internal-key trailer",
                ));
                return;
            };
            if self.past_upper(p.user_key) {
                break;
            }
            let hidden = p.seq > self.seq || skipping.as_deref().is_some_and(|s| s == p.user_key);
            if !hidden {
                match p.kind {
                    ValueKind::Put => {
                        self.key.clear();
                        self.key.extend_from_slice(p.user_key);
                        self.value.clear();
                        self.value.extend_from_slice(self.inner.value());
                        self.valid = true;
                        return;
                    }
                    ValueKind::Delete => {
                        // Hide this key's older versions too.
                        let mut s = skipping.take().unwrap_or_default();
                        s.clear();
                        s.extend_from_slice(p.user_key);
                        skipping = Some(s);
                    }
                }
            }
            self.inner.next();
        }
        if let Err(e) = self.inner.status() {
            self.error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::memtable::MemTable;
    use crate::lsm::types::FileNumber;
    use std::sync::Arc;

    fn collect<I: InternalIterator>(it: &mut UserIter<I>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = Vec::new();
        while it.valid() {
            v.push((it.key().to_vec(), it.value().to_vec()));
            it.advance();
        }
        v
    }

    #[test]
    fn merge_hides_old_versions_tombstones_and_future_writes() {
        let old = Arc::new(MemTable::new(FileNumber(1)));
        old.add(SeqNo(1), ValueKind::Put, b"a", b"a1");
        old.add(SeqNo(2), ValueKind::Put, b"b", b"b2");
        old.add(SeqNo(3), ValueKind::Put, b"c", b"c3");
        let new = Arc::new(MemTable::new(FileNumber(2)));
        new.add(SeqNo(4), ValueKind::Delete, b"b", b"");
        new.add(SeqNo(5), ValueKind::Put, b"a", b"a5");
        new.add(SeqNo(6), ValueKind::Put, b"d", b"d6");
        let mk = |seq, upper| {
            let m = MergingIter::new(vec![Box::new(new.iter()), Box::new(old.iter())]);
            UserIter::new(m, SeqNo(seq), upper)
        };
        let mut it = mk(9, Bound::Unbounded);
        it.seek(Bound::Unbounded);
        let got = collect(&mut it);
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), b"a5".to_vec()),
                (b"c".to_vec(), b"c3".to_vec()),
                (b"d".to_vec(), b"d6".to_vec())
            ]
        );
        let mut it = mk(3, Bound::Excluded(b"c".to_vec()));
        it.seek(Bound::Unbounded);
        assert_eq!(
            collect(&mut it),
            vec![
                (b"a".to_vec(), b"a1".to_vec()),
                (b"b".to_vec(), b"b2".to_vec())
            ]
        );
        let mut it = mk(9, Bound::Unbounded);
        it.seek(Bound::Excluded(b"a"));
        assert_eq!(collect(&mut it)[0].0, b"c".to_vec());
    }
}
