//! Versions: the set of live SST files, level by level, and how an edit produces the next.
//!
//! A [`Version`] is immutable and shared (`Arc`): readers, iterators and pinned checkpoint
//! file sets hold the version they started with. A file leaves the store directory only
//! when (a) an edit durable in the manifest removed it, and (b) the last version that
//! lists it is dropped: [`FileMeta`]'s `Drop` deletes files marked obsolete.

use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};

use super::filename::table_path;
use super::iter::BoxedIter;
use super::manifest::NewFile;
use super::sst::bloom::hash64;
use super::sst::{BlockCache, LookupResult, Table};
use super::types::{compare_internal_keys, user_key, FileNumber, InternalIterator, SeqNo};
use super::TableReads;
use crate::error::{Error, Result};
use crate::fs::FileSystem;

/// What every file of a store shares: where it lives and how to open it.
#[derive(Debug)]
pub struct TableContext {
    /// The store directory.
    pub dir: PathBuf,
    /// The file system.
    pub fs: Arc<dyn FileSystem>,
    /// The block cache, if any.
    pub cache: Option<Arc<BlockCache>>,
    /// Verify block checksums on every read.
    pub verify_checksums: bool,
    /// How tables read their data blocks.
    pub table_reads: TableReads,
}

/// One live SST file.
#[derive(Debug)]
pub struct FileMeta {
    /// The file's number (`<number>.sst`).
    pub number: FileNumber,
    /// Size in bytes.
    pub size: u64,
    /// crc32c of the whole file, computed when it was written.
    pub file_crc32c: u32,
    /// Smallest internal key.
    pub smallest: Vec<u8>,
    /// Largest internal key.
    pub largest: Vec<u8>,
    /// Smallest sequence number in the file.
    pub smallest_seq: SeqNo,
    /// Largest sequence number in the file.
    pub largest_seq: SeqNo,
    /// Entries in the file.
    pub num_entries: u64,
    /// Set when a compaction is using this file as input.
    pub being_compacted: AtomicBool,
    table: OnceLock<Arc<Table>>,
    obsolete: AtomicBool,
    ctx: Arc<TableContext>,
}

impl FileMeta {
    /// Describes a file from its manifest record.
    pub fn from_new_file(f: &NewFile, ctx: Arc<TableContext>) -> FileMeta {
        FileMeta {
            number: f.number,
            size: f.size,
            file_crc32c: f.file_crc32c,
            smallest: f.smallest.clone(),
            largest: f.largest.clone(),
            smallest_seq: f.smallest_seq,
            largest_seq: f.largest_seq,
            num_entries: f.num_entries,
            being_compacted: AtomicBool::new(false),
            table: OnceLock::new(),
            obsolete: AtomicBool::new(false),
            ctx,
        }
    }

    /// The manifest record of this file at `level`.
    pub fn to_new_file(&self, level: u32) -> NewFile {
        NewFile {
            level,
            number: self.number,
            size: self.size,
            file_crc32c: self.file_crc32c,
            smallest: self.smallest.clone(),
            largest: self.largest.clone(),
            smallest_seq: self.smallest_seq,
            largest_seq: self.largest_seq,
            num_entries: self.num_entries,
        }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        table_path(&self.ctx.dir, self.number)
    }

    /// The opened table (opened on first use, then shared).
    pub fn table(&self) -> Result<Arc<Table>> {
        self.opened().cloned()
    }

    /// [`FileMeta::table`], borrowed: a lookup reads through it without touching the
    /// shared reference count (a cache line every reader thread would write).
    pub fn opened(&self) -> Result<&Arc<Table>> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = Table::open_with(
            self.ctx.fs.as_ref(),
            &self.path(),
            self.number,
            self.ctx.cache.clone(),
            self.ctx.verify_checksums,
            self.ctx.table_reads,
        )?;
        if t.file_size() != self.size {
            return Err(Error::corruption(
                self.path(),
                0,
                format!(
                    "file is {} bytes but the manifest records {}",
                    t.file_size(),
                    self.size
                ),
            ));
        }
        Ok(self.table.get_or_init(|| t))
    }

    /// The table, if it was opened already.
    pub fn opened_table(&self) -> Option<&Arc<Table>> {
        self.table.get()
    }

    /// Marks the file for deletion once no version lists it.
    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, AtomicOrdering::Release);
    }

    /// User key range of the file.
    pub fn user_range(&self) -> (&[u8], &[u8]) {
        (user_key(&self.smallest), user_key(&self.largest))
    }
}

impl Drop for FileMeta {
    fn drop(&mut self) {
        if !self.obsolete.load(AtomicOrdering::Acquire) {
            return;
        }
        if let Some(c) = &self.ctx.cache {
            c.erase_file(self.number);
        }
        // Close the table (its file or mapping) before unlinking.
        drop(self.table.take());
        let path = self.path();
        match self.ctx.fs.remove_file(&path) {
            Ok(()) => tracing::debug!(file = %path.display(), "deleted obsolete table"),
            // The next open removes files the manifest does not list.
            Err(e) => tracing::warn!(error = %e, "could not delete obsolete table"),
        }
    }
}

/// The result of a point lookup in a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionLookup {
    /// The newest visible version is a value.
    Found(Vec<u8>),
    /// The newest visible version is a tombstone.
    Deleted,
    /// No file has a visible version.
    NotFound,
}

/// Counts of bloom filter use during a lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct FilterCounts {
    /// Filters consulted.
    pub checked: u64,
    /// Lookups the filter answered "absent" (a table read avoided).
    pub useful: u64,
}

/// An immutable set of live files.
#[derive(Debug, Default)]
pub struct Version {
    /// `levels[0]`: newest first, may overlap. `levels[1..]`: sorted by key, disjoint.
    pub levels: Vec<Vec<Arc<FileMeta>>>,
}

impl Version {
    /// An empty version with `num_levels` levels.
    pub fn empty(num_levels: usize) -> Version {
        Version {
            levels: vec![Vec::new(); num_levels],
        }
    }

    /// Files in `level`.
    pub fn num_files(&self, level: usize) -> usize {
        self.levels.get(level).map_or(0, Vec::len)
    }

    /// Bytes in `level`.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels
            .get(level)
            .map_or(0, |l| l.iter().map(|f| f.size).sum())
    }

    /// Every file, with its level.
    pub fn all_files(&self) -> impl Iterator<Item = (usize, &Arc<FileMeta>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(l, fs)| fs.iter().map(move |f| (l, f)))
    }

    /// Newest version of `ukey` visible at `seq` in the files.
    ///
    /// Level 0 is searched by sequence number, not by file order: the entry with the
    /// largest sequence number among the L0 files wins. Files are ordered by their largest
    /// sequence number, so the search stops at the first file that cannot hold anything
    /// newer than the entry already found; when sequence ranges do not interleave (the
    /// normal case) that is the file after the first hit. Every entry in a deeper level is
    /// older than any L0 entry for the same key: an L0 compaction takes every L0 file,
    /// and whatever is flushed later is newer.
    pub fn get(&self, ukey: &[u8], seq: SeqNo, counts: &mut FilterCounts) -> Result<VersionLookup> {
        // The key's filter hash, computed once for every table asked.
        let hash = hash64(ukey);
        self.prefetch_filters(ukey, hash);
        for level in 0..self.levels.len() {
            if level == 0 {
                let mut best: Option<(SeqNo, VersionLookup)> = None;
                for f in self.files_covering(0, ukey) {
                    if best.as_ref().is_some_and(|(s, _)| *s >= f.largest_seq) {
                        break;
                    }
                    if let Some((s, r)) = lookup_file(f, ukey, hash, seq, counts)? {
                        if best.as_ref().is_none_or(|(b, _)| s > *b) {
                            best = Some((s, r));
                        }
                    }
                }
                if let Some((_, r)) = best {
                    return Ok(r);
                }
            } else if let Some(f) = self.files_covering(level, ukey).next() {
                if let Some((_, r)) = lookup_file(f, ukey, hash, seq, counts)? {
                    return Ok(r);
                }
            }
        }
        Ok(VersionLookup::NotFound)
    }

    /// The files of `level` whose user-key range covers `ukey`: any number in level 0
    /// (newest first), at most one in a deeper level (found by binary search). Stopping at
    /// a level-0 file whose largest sequence number is too small, as [`Version::get`]
    /// does, skips the same files whether or not the files not covering the key come
    /// between: the files are in descending order of that number.
    fn files_covering<'a>(
        &'a self,
        level: usize,
        ukey: &'a [u8],
    ) -> impl Iterator<Item = &'a Arc<FileMeta>> + 'a {
        let files = self.levels.get(level).map_or(&[][..], Vec::as_slice);
        let candidates = if level == 0 {
            files
        } else {
            // First file whose largest user key >= ukey.
            let i = files.partition_point(|f| user_key(&f.largest) < ukey);
            files.get(i..(i + 1).min(files.len())).unwrap_or_default()
        };
        candidates.iter().filter(move |f| {
            let (lo, hi) = f.user_range();
            lo <= ukey && ukey <= hi
        })
    }

    /// Starts loading the filter lines [`Version::get`] may read for `ukey` in every
    /// opened table that may hold it, so that their cache misses overlap instead of
    /// following each other. Tables not yet opened are left to the lookup.
    fn prefetch_filters(&self, ukey: &[u8], hash: u64) {
        for level in 0..self.levels.len() {
            for f in self.files_covering(level, ukey) {
                if let Some(t) = f.table.get() {
                    t.prefetch_filter(hash);
                }
            }
        }
    }

    /// Iterators over every file: one per L0 file, one concatenating iterator per level.
    pub fn iterators(&self, out: &mut Vec<BoxedIter>) {
        for (level, files) in self.levels.iter().enumerate() {
            if files.is_empty() {
                continue;
            }
            if level == 0 {
                for f in files {
                    out.push(Box::new(LevelIter::new(vec![f.clone()])));
                }
            } else {
                out.push(Box::new(LevelIter::new(files.clone())));
            }
        }
    }

    /// Files of `level` whose user-key range meets `[lo, hi]`.
    pub fn overlapping(&self, level: usize, lo: &[u8], hi: &[u8]) -> Vec<Arc<FileMeta>> {
        let Some(files) = self.levels.get(level) else {
            return Vec::new();
        };
        files
            .iter()
            .filter(|f| {
                let (a, b) = f.user_range();
                !(b < lo || a > hi)
            })
            .cloned()
            .collect()
    }
}

fn lookup_file(
    f: &FileMeta,
    ukey: &[u8],
    hash: u64,
    seq: SeqNo,
    counts: &mut FilterCounts,
) -> Result<Option<(SeqNo, VersionLookup)>> {
    if f.smallest_seq > seq {
        return Ok(None); // every entry is newer than the reader
    }
    let t = f.opened()?;
    counts.checked += 1;
    if !t.may_contain_hash(hash) {
        counts.useful += 1;
        return Ok(None);
    }
    Ok(t.get_entry(ukey, seq)?.and_then(|(s, r)| match r {
        LookupResult::Found(v) => Some((s, VersionLookup::Found(v))),
        LookupResult::Deleted => Some((s, VersionLookup::Deleted)),
        LookupResult::NotFound => None,
    }))
}

/// Orders L0 files by their largest sequence number, newest first (then by number).
pub fn l0_order(a: &Arc<FileMeta>, b: &Arc<FileMeta>) -> Ordering {
    b.largest_seq
        .cmp(&a.largest_seq)
        .then_with(|| b.number.cmp(&a.number))
}

/// Orders files of deeper levels by smallest key.
pub fn key_order(a: &Arc<FileMeta>, b: &Arc<FileMeta>) -> Ordering {
    compare_internal_keys(&a.smallest, &b.smallest)
}

/// A cursor over a sorted run of non-overlapping files, opening each table on demand.
pub struct LevelIter {
    files: Vec<Arc<FileMeta>>,
    index: usize,
    cur: Option<Box<dyn InternalIterator + Send>>,
    error: Option<Error>,
    /// Read each table with [`Table::sequential_iter`] (a compaction's input).
    sequential: bool,
}

impl LevelIter {
    /// Iterates `files` (sorted, disjoint).
    pub fn new(files: Vec<Arc<FileMeta>>) -> LevelIter {
        LevelIter {
            index: files.len(),
            files,
            cur: None,
            error: None,
            sequential: false,
        }
    }

    /// Iterates `files` (sorted, disjoint) once from the start, as a compaction does:
    /// each table through a readahead buffer, past the block cache.
    pub fn sequential(files: Vec<Arc<FileMeta>>) -> LevelIter {
        LevelIter {
            sequential: true,
            ..LevelIter::new(files)
        }
    }

    fn open(&mut self, i: usize) {
        self.index = i;
        self.cur = None;
        if let Some(f) = self.files.get(i) {
            match f.table() {
                Ok(t) if self.sequential => self.cur = Some(Box::new(t.sequential_iter())),
                Ok(t) => self.cur = Some(Box::new(t.iter())),
                Err(e) => self.error = Some(e),
            }
        }
    }

    fn skip_exhausted(&mut self) {
        while self.error.is_none() {
            match &self.cur {
                Some(c) if c.valid() => return,
                Some(c) => {
                    if let Err(e) = c.status() {
                        self.error = Some(e);
                        return;
                    }
                }
                None => return,
            }
            let next = self.index + 1;
            if next >= self.files.len() {
                self.cur = None;
                self.index = self.files.len();
                return;
            }
            self.open(next);
            if let Some(c) = self.cur.as_mut() {
                c.seek_to_first();
            }
        }
    }
}

impl InternalIterator for LevelIter {
    fn valid(&self) -> bool {
        self.error.is_none() && self.cur.as_ref().is_some_and(|c| c.valid())
    }
    fn seek_to_first(&mut self) {
        self.error = None;
        self.open(0);
        if let Some(c) = self.cur.as_mut() {
            c.seek_to_first();
        }
        self.skip_exhausted();
    }
    fn seek(&mut self, target: &[u8]) {
        self.error = None;
        let i = self
            .files
            .partition_point(|f| compare_internal_keys(&f.largest, target) == Ordering::Less);
        self.open(i);
        if let Some(c) = self.cur.as_mut() {
            c.seek(target);
        }
        self.skip_exhausted();
    }
    fn next(&mut self) {
        if let Some(c) = self.cur.as_mut() {
            c.next();
        }
        self.skip_exhausted();
    }
    fn key(&self) -> &[u8] {
        self.cur.as_ref().map_or(&[], |c| c.key())
    }
    fn value(&self) -> &[u8] {
        self.cur.as_ref().map_or(&[], |c| c.value())
    }
    fn status(&self) -> Result<()> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match &self.cur {
            Some(c) => c.status(),
            None => Ok(()),
        }
    }
}
