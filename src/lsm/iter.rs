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
///
/// Generic over the child type so that a merge of one kind of child (a compaction's level
/// iterators) compares keys without a virtual call per comparison; the default, boxed
/// children, serves scans over memtables and tables together.
///
/// A child that stops with an error leaves the heap like one that ran out; its error is
/// kept, and from then on the merge is not valid (its entries would be missing from the
/// stream). Every child reports an error only by stopping (`valid()` false), so the heap
/// holds only children without one, and `valid()` needs no look at the others.
pub struct MergingIter<I: InternalIterator = BoxedIter> {
    children: Vec<I>,
    /// Indices of valid children, a binary min-heap by (key, index).
    heap: Vec<usize>,
    /// The first error a child stopped with since the last positioning.
    error: Option<Error>,
    /// The heap position (1 or 2) of the smaller child of the root, when known: while the
    /// top child keeps yielding the smallest key (a long run from one source, the common
    /// case in a compaction), each step costs one comparison instead of two.
    runner_up: Option<usize>,
}

impl<I: InternalIterator> MergingIter<I> {
    /// Merges `children` (not yet positioned).
    pub fn new(children: Vec<I>) -> Self {
        let n = children.len();
        MergingIter {
            children,
            heap: Vec::with_capacity(n),
            error: None,
            runner_up: None,
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

    /// Keeps the error of child `i`, which has stopped, if it stopped on one.
    fn note_stopped(&mut self, i: usize) {
        if self.error.is_none() {
            if let Err(e) = self.children[i].status() {
                self.error = Some(e);
            }
        }
    }

    /// Restores the heap after the top child advanced (still valid), first comparing it
    /// with the root's smaller child only.
    fn fix_top(&mut self) {
        let n = self.heap.len();
        if n < 2 {
            return;
        }
        let second = match self.runner_up {
            Some(s) => s,
            None => {
                let s = if n > 2 && self.less(self.heap[2], self.heap[1]) {
                    2
                } else {
                    1
                };
                self.runner_up = Some(s);
                s
            }
        };
        if self.less(self.heap[second], self.heap[0]) {
            self.heap.swap(0, second);
            self.runner_up = None;
            self.sift_down(second);
        }
    }

    fn rebuild(&mut self) {
        self.heap.clear();
        self.error = None;
        self.runner_up = None;
        for i in 0..self.children.len() {
            if self.children[i].valid() {
                self.heap.push(i);
            } else {
                self.note_stopped(i);
            }
        }
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
    }
}

impl<I: InternalIterator> InternalIterator for MergingIter<I> {
    fn valid(&self) -> bool {
        !self.heap.is_empty() && self.error.is_none()
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
            self.fix_top();
        } else {
            self.note_stopped(top);
            let last = self.heap.len() - 1;
            self.heap.swap(0, last);
            self.heap.pop();
            self.runner_up = None;
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
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
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

    /// A sorted run in memory that stops with an error when it would reach entry `fail_at`.
    struct Run {
        keys: Vec<Vec<u8>>,
        pos: usize,
        fail_at: usize,
        failed: bool,
    }

    impl Run {
        fn new(user_keys: &[&str], seq: u64, fail_at: usize) -> Self {
            let mut keys: Vec<Vec<u8>> = user_keys
                .iter()
                .map(|k| {
                    crate::lsm::types::make_internal_key(k.as_bytes(), SeqNo(seq), ValueKind::Put)
                })
                .collect();
            keys.sort_by(|a, b| compare_internal_keys(a, b));
            Run {
                keys,
                pos: 0,
                fail_at,
                failed: false,
            }
        }
        fn settle(&mut self) {
            self.failed = self.pos >= self.fail_at && self.pos < self.keys.len();
        }
    }

    impl InternalIterator for Run {
        fn valid(&self) -> bool {
            !self.failed && self.pos < self.keys.len()
        }
        fn seek_to_first(&mut self) {
            self.pos = 0;
            self.settle();
        }
        fn seek(&mut self, target: &[u8]) {
            self.pos = self
                .keys
                .partition_point(|k| compare_internal_keys(k, target) == Ordering::Less);
            self.settle();
        }
        fn next(&mut self) {
            self.pos += 1;
            self.settle();
        }
        fn key(&self) -> &[u8] {
            &self.keys[self.pos]
        }
        fn value(&self) -> &[u8] {
            b"v"
        }
        fn status(&self) -> Result<()> {
            if self.failed {
                Err(Error::corruption("run", self.pos as u64, "injected"))
            } else {
                Ok(())
            }
        }
    }

    fn user_keys<I: InternalIterator>(m: &mut MergingIter<I>) -> Vec<String> {
        let mut out = Vec::new();
        while m.valid() {
            let k = crate::lsm::types::user_key(m.key());
            out.push(String::from_utf8(k.to_vec()).expect("utf-8 key"));
            m.next();
        }
        out
    }

    #[test]
    fn merge_of_concrete_children_is_sorted_with_newer_versions_first() {
        let mut m = MergingIter::new(vec![
            Run::new(&["b", "d", "f"], 9, usize::MAX),
            Run::new(&["a", "d", "g"], 5, usize::MAX),
            Run::new(&["c", "e"], 1, usize::MAX),
        ]);
        m.seek_to_first();
        assert_eq!(user_keys(&mut m), ["a", "b", "c", "d", "d", "e", "f", "g"]);
        assert!(m.status().is_ok());
        m.seek(&seek_key(b"d", SeqNo::MAX));
        assert!(m.valid());
        // Both runs hold "d": the newer version (seq 9) sorts first.
        assert_eq!(
            crate::lsm::types::parse_internal_key(m.key()).map(|p| p.seq),
            Some(SeqNo(9))
        );
    }

    #[test]
    fn a_child_that_stops_on_an_error_ends_the_merge_with_that_error() {
        // The second run fails on reaching its third entry ("e"): the merge must not go on
        // past it with the other run's keys alone, as if the run had ended.
        let mut m = MergingIter::new(vec![
            Run::new(&["a", "c", "f", "g", "h"], 2, usize::MAX),
            Run::new(&["b", "d", "e", "i"], 1, 2),
        ]);
        m.seek_to_first();
        let seen = user_keys(&mut m);
        assert_eq!(seen, ["a", "b", "c", "d"]);
        let err = m.status().expect_err("the failed run's error");
        assert!(err.to_string().contains("injected"), "{err}");
        // A child that fails as the merge is positioned is reported the same way.
        m.seek(&seek_key(b"e", SeqNo::MAX));
        assert!(!m.valid());
        assert!(m.status().is_err());
        // Positioned where the failing run holds nothing more to read, the merge is whole.
        m.seek(&seek_key(b"i", SeqNo(0)));
        assert!(!m.valid());
        assert!(m.status().is_ok());
        m.seek(&seek_key(b"a", SeqNo::MAX));
        assert!(m.valid(), "a fresh positioning clears the earlier error");
        assert_eq!(user_keys(&mut m), ["a", "b", "c", "d"]);
    }

    proptest::proptest! {
        /// Any number of runs, long runs from one source among short ones (the shape a
        /// compaction sees), positioned anywhere: the merge yields exactly the sorted union
        /// from the target on.
        #[test]
        fn merge_yields_the_sorted_union_from_any_position(
            runs in proptest::collection::vec(proptest::collection::btree_set(0u16..400, 0..120), 1..9),
            target in 0u16..420,
        ) {
            let mut all: Vec<Vec<u8>> = Vec::new();
            let children: Vec<Run> = runs
                .iter()
                .enumerate()
                .map(|(i, keys)| {
                    let names: Vec<String> = keys.iter().map(|k| format!("{k:03}")).collect();
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let run = Run::new(&refs, i as u64 + 1, usize::MAX);
                    all.extend(run.keys.iter().cloned());
                    run
                })
                .collect();
            all.sort_by(|a, b| compare_internal_keys(a, b));
            let mut m = MergingIter::new(children);
            let target = seek_key(format!("{target:03}").as_bytes(), SeqNo::MAX);
            m.seek(&target);
            let from = all.partition_point(|k| compare_internal_keys(k, &target) == Ordering::Less);
            for k in &all[from..] {
                proptest::prop_assert!(m.valid());
                proptest::prop_assert_eq!(m.key(), &k[..]);
                m.next();
            }
            proptest::prop_assert!(!m.valid());
            proptest::prop_assert!(m.status().is_ok());
        }
    }
}
