//! [`Db`]: the store's public face — open and recovery, the group-commit write path,
//! reads through a lock-free view of memtables and files, snapshots, scans, flushes, and
//! the pinned file sets that checkpoints are built from.
//!
//! Locks, from outermost to innermost: the writer queue (`writers`), the store state
//! (`state`), the log (`log`). Readers take none of them: they load the current
//! [`SuperVersion`] from an `ArcSwap` and the visible sequence number from an atomic.
//!
//! Writes. A write takes its sequence numbers and appends its WAL record in one short
//! critical section under `log`, so the log's record order is the sequence order; it
//! inserts into the (concurrent) memtable outside any lock, and then its numbers become
//! visible in sequence order: once the write numbered just before it is visible, the
//! writer moves the visible number (`DbInner::last_seq`) to its own last number, so a
//! reader at sequence `s` sees every write up to `s` whole and nothing after. (A writer
//! whose predecessor is slow records its range and sleeps; the thread that makes the
//! predecessor visible moves the number over every recorded range that follows.) A write
//! returns once its numbers are visible. A memtable switch installs the readers' view
//! holding the new memtable before it releases `log`, so every visible write is in the
//! current view; a read loads the view first and the visible number after it.
//! Writes that are not fsynced (`SyncMode::None`, `Periodic`, or no WAL) go this way
//! straight from their own thread. Writes that are fsynced queue up in `writers`: the thread
//! at the head commits the queued batches as one group with one fsync (group commit).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::batch::{decode_batch, WriteBatch};
use super::filename::{self, parse_file_name, table_path, wal_path, FileKind};
use super::iter::{BoxedIter, MergingIter, UserIter};
use super::manifest::{
    read_current, read_manifest_with_tail, ManifestWriter, NewFile, VersionEdit,
};
use super::memtable::{MemLookup, MemTable};
use super::options::{Options, SyncMode, WalRecovery};
use super::sst::{BlockCache, TableBuilder, TableOptions};
use super::stats::{Counters, DbStats, LevelStats};
use super::types::{internal_seq, snapshot_stripe, user_key, FileNumber, SeqNo};
use super::version::{FilterCounts, TableContext, Version, VersionLookup};
use super::version_set::VersionSet;
use super::wal::{LogKind, LogRead, LogReader, LogWriter};
use crate::error::{Error, IoContext, Result};
use crate::fs::{FileLock, FileSystem};

/// WAL files are extended with zeros this far ahead of the writes, so a synced write's
/// fdatasync rarely has to commit a new file size (the log reader ends at a zero tail).
const WAL_PRESIZE_STEP_BYTES: u64 = 1 << 20;

/// Spins of a writer waiting for the writes numbered before it to become visible, before
/// it sleeps (a spin is a `pause`: some tens of cycles).
const SPINS_BEFORE_SLEEP: u32 = 2000;

/// Largest number of bytes of batches one group commit gathers.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// What a reader sees: the memtables and the files, as one consistent set.
pub struct SuperVersion {
    /// The active memtable.
    pub mem: Arc<MemTable>,
    /// Immutable memtables, newest first.
    pub imms: Vec<Arc<MemTable>>,
    /// The live files.
    pub version: Arc<Version>,
}

/// An immutable memtable waiting for its flush; `flushed` is set to the first version
/// that holds its contents.
struct Imm {
    mem: Arc<MemTable>,
    flushed: OnceLock<Arc<Version>>,
}

pub(crate) struct State {
    pub(crate) vs: VersionSet,
    mem: Arc<MemTable>,
    /// Oldest first.
    imms: Vec<Arc<Imm>>,
    /// A manual compaction requested by [`Db::compact_range`], run by the compaction thread.
    pub(crate) manual: Option<super::compaction::ManualCompaction>,
}

struct Slot {
    batch: Mutex<Option<WriteBatch>>,
    result: Mutex<Option<Result<()>>>,
    force_switch: bool,
}

/// What a write changes under the `log` lock: it takes sequence numbers and appends its
/// record in one critical section.
///
/// In C order so that what every write touches (the lock word before it, the memtable,
/// the numbers, the tallies) shares one cache line: that line moves between the writers'
/// cores once per write, not once per field.
#[repr(C)]
struct LogState {
    /// The memtable the writes logged in `wal` go to (the state's active memtable).
    mem: Arc<MemTable>,
    /// The last sequence number handed out: at or above the last visible one
    /// (`DbInner::last_seq`), above it while writes insert into the memtable.
    last_allocated: u64,
    /// Tallies of the write path, kept here rather than in shared atomics: every write
    /// holds this lock anyway, and a counter on a cache line of its own would move
    /// between the writers' cores on every write.
    tally: WriteTally,
    /// The WAL (None when the store runs without one).
    wal: Option<LogWriter>,
}

/// What [`Db::stats`] reports of the write path.
#[derive(Debug, Default, Clone, Copy)]
struct WriteTally {
    /// Batches committed.
    writes: u64,
    /// Groups committed (an unsynced write is a group of its own).
    groups: u64,
    /// Bytes of the batches (keys, values and their framing).
    user_bytes: u64,
    /// Bytes appended to WALs.
    wal_bytes: u64,
}

pub(crate) struct DbInner {
    pub(crate) dir: PathBuf,
    pub(crate) opts: Options,
    pub(crate) fs: Arc<dyn FileSystem>,
    _lock: FileLock,
    pub(crate) cache: Option<Arc<BlockCache>>,
    state: Mutex<State>,
    /// Signals the background thread, and waiters for flushes and compactions.
    bg_cv: Condvar,
    sv: ArcSwap<SuperVersion>,
    /// The largest sequence number visible to readers. Every unsynced write stores it:
    /// on cache lines of its own, so that the store does not evict what every write only
    /// reads (the read view, the options) from the other writers' caches.
    last_seq: CachePadded<AtomicU64>,
    /// Writes waiting for a group commit (fsynced writes only).
    writers: Mutex<VecDeque<Arc<Slot>>>,
    writers_cv: Condvar,
    /// On cache lines of its own: the other fields stay put while writers pass it around.
    log: CachePadded<Mutex<LogState>>,
    /// Threads sleeping until a write becomes visible, and where they sleep.
    publish_waiters: AtomicUsize,
    /// Writes done inserting whose predecessors are not visible yet, as `(prev, last)`:
    /// whoever makes `prev` visible publishes them too, so a stalled writer holds the
    /// others back for one wake-up, not one per writer queued behind it.
    publish_lock: Mutex<Vec<(u64, u64)>>,
    publish_cv: Condvar,
    /// With [`SyncMode::Periodic`]: logs retired at a memtable switch whose tail is not yet
    /// fsynced. The sync thread fsyncs them at its next tick, with the current log, so a
    /// power cut loses at most the writes of the last interval in either.
    retired_wals: Mutex<Vec<LogWriter>>,
    /// Sequence numbers of live snapshots, with counts.
    snapshots: Mutex<BTreeMap<u64, usize>>,
    pub(crate) counters: Counters,
    has_bg_error: AtomicBool,
    bg_error: Mutex<Option<Error>>,
    shutting_down: AtomicBool,
    /// Bytes of memtables this store has charged to `opts.memory_budget`.
    budget_charged: AtomicUsize,
    /// Snapshots taken so far (taken under the state lock).
    snapshot_epoch: AtomicU64,
}

/// An embedded, persistent, ordered key-value store.
///
/// ```
/// # fn main() -> tidemark::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let db = tidemark::lsm::Db::open(dir.path(), tidemark::lsm::Options::default())?;
/// db.put(b"apple", b"red")?;
/// db.put(b"banana", b"yellow")?;
/// assert_eq!(db.get(b"apple")?, Some(b"red".to_vec()));
/// let keys: Vec<_> = db.iter()?.map(|kv| kv.map(|(k, _)| k)).collect::<Result<_, _>>()?;
/// assert_eq!(keys, vec![b"apple".to_vec(), b"banana".to_vec()]);
/// # Ok(()) }
/// ```
pub struct Db {
    inner: Arc<DbInner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

/// A consistent read-only view of the store as of the moment it was taken. Compactions
/// keep every version a live snapshot can see.
pub struct Snapshot {
    inner: Arc<DbInner>,
    seq: SeqNo,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("seq", &self.seq).finish()
    }
}

/// An ordered scan over a key range; yields `(key, value)` pairs.
pub struct DbIterator {
    inner: UserIter<MergingIter>,
    started: bool,
    lower: Bound<Vec<u8>>,
    done: bool,
}

impl std::fmt::Debug for DbIterator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbIterator")
            .field("done", &self.done)
            .finish()
    }
}

impl Iterator for DbIterator {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            let lower = std::mem::replace(&mut self.lower, Bound::Unbounded);
            match &lower {
                Bound::Unbounded => self.inner.seek(Bound::Unbounded),
                Bound::Included(k) => self.inner.seek(Bound::Included(k)),
                Bound::Excluded(k) => self.inner.seek(Bound::Excluded(k)),
            }
        } else {
            self.inner.advance();
        }
        if self.inner.valid() {
            return Some(Ok((self.inner.key().to_vec(), self.inner.value().to_vec())));
        }
        self.done = true;
        match self.inner.status() {
            Err(e) => Some(Err(e)),
            Ok(()) => None,
        }
    }
}

/// One file of a pinned file set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    /// Level of the file.
    pub level: usize,
    /// File number.
    pub number: FileNumber,
    /// File name in the store directory (`000012.sst`).
    pub name: String,
    /// Full path in the store directory.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
}

/// The live immutable files of a store and the sequence number they are consistent at.
/// While this value lives, none of its files is deleted.
pub struct LiveFiles {
    /// Every write with a sequence number `<= seq` is in the files; none after it.
    pub seq: SeqNo,
    /// The store's identity.
    pub db_id: String,
    /// A manifest edit that recreates exactly this file set (see [`Db::restore_manifest`]).
    pub manifest: VersionEdit,
    version: Arc<Version>,
}

impl std::fmt::Debug for LiveFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFiles")
            .field("seq", &self.seq)
            .field("files", &self.files().len())
            .finish()
    }
}

impl LiveFiles {
    /// The files, level by level.
    pub fn files(&self) -> Vec<LiveFile> {
        self.version
            .all_files()
            .map(|(level, f)| LiveFile {
                level,
                number: f.number,
                name: filename::table_file_name(f.number),
                path: f.path(),
                size: f.size,
                crc32c: f.file_crc32c,
            })
            .collect()
    }

    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.version.all_files().map(|(_, f)| f.size).sum()
    }
}

/// The synchronous part of taking a file set: the memtable was switched at `seq`; waiting
/// for the flush is the asynchronous part ([`LiveFilesTicket::wait`]).
pub struct LiveFilesTicket {
    inner: Arc<DbInner>,
    seq: SeqNo,
    wait_for: Option<Arc<Imm>>,
    ready: Option<Arc<Version>>,
}

impl std::fmt::Debug for LiveFilesTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFilesTicket")
            .field("seq", &self.seq)
            .finish()
    }
}

impl LiveFilesTicket {
    /// The sequence number the file set will be consistent at.
    pub fn seq(&self) -> SeqNo {
        self.seq
    }

    /// Waits until every write up to [`LiveFilesTicket::seq`] is in files, and pins them.
    pub fn wait(self) -> Result<LiveFiles> {
        let inner = &self.inner;
        let version = match (self.ready, &self.wait_for) {
            (Some(v), _) => v,
            (None, Some(imm)) => {
                let mut st = inner.state.lock();
                loop {
                    if let Some(v) = imm.flushed.get() {
                        break v.clone();
                    }
                    inner.check_bg_error()?;
                    inner.bg_cv.wait_for(&mut st, Duration::from_millis(100));
                }
            }
            (None, None) => inner.state.lock().vs.current(),
        };
        let st = inner.state.lock();
        let mut manifest = VersionEdit {
            db_id: Some(st.vs.db_id.clone()),
            log_number: Some(FileNumber(0)),
            next_file_number: Some(st.vs.next_file_number()),
            last_sequence: Some(self.seq),
            ..VersionEdit::default()
        };
        for (level, f) in version.all_files() {
            manifest.new_files.push(f.to_new_file(level as u32));
        }
        Ok(LiveFiles {
            seq: self.seq,
            db_id: st.vs.db_id.clone(),
            manifest,
            version,
        })
    }
}

/// A random identity for a new store: 128 bits from the standard library's randomly
/// seeded hasher keys (the operating system's randomness), as 32 hex digits.
fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", word(), word())
}

impl Db {
    /// Opens (or creates) the store in `path`, replaying its WAL.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let dir = path.as_ref().to_path_buf();
        let fs = opts.fs.clone();
        if !fs.exists(&dir) {
            if !opts.create_if_missing {
                return Err(Error::NotFound { path: dir });
            }
            fs.create_dir_all(&dir)?;
        }
        let lock = fs.lock(&dir.join(filename::LOCK))?;
        crate::failpoint::hit("open.locked");
        let cache = match &opts.memory_budget {
            Some(b) => Some(b.cache().for_new_store()),
            None => (opts.block_cache_bytes > 0).then(|| {
                BlockCache::with_policy(
                    opts.block_cache_bytes,
                    opts.block_cache_form,
                    opts.block_cache_admission,
                )
            }),
        };
        let ctx = Arc::new(TableContext {
            dir: dir.clone(),
            fs: fs.clone(),
            cache: cache.clone(),
            verify_checksums: opts.verify_checksums,
            table_reads: opts.table_reads,
        });
        let mut names = fs.list_dir(&dir)?;
        let current = dir.join(filename::CURRENT);
        let mut vs = if fs.exists(&current) {
            if opts.error_if_exists {
                return Err(Error::InvalidArgument(format!(
                    "a store already exists in {}",
                    dir.display()
                )));
            }
            let n = read_current(fs.as_ref(), &dir)?;
            let mpath = filename::manifest_path(&dir, n);
            let (edits, torn) = read_manifest_with_tail(fs.as_ref(), &mpath, n)?;
            let vs = VersionSet::recover(ctx.clone(), opts.num_levels, &edits, &mpath)?;
            check_tables_exist(fs.as_ref(), &vs, &mpath)?;
            if let Some(offset) = torn {
                // A torn last edit was never acknowledged, so nothing it would have
                // retired was deleted: the oldest log the manifest still needs must exist.
                let log = vs.log_number;
                if log.0 != 0 && !fs.exists(&wal_path(&dir, log)) {
                    return Err(Error::corruption(
                        &mpath,
                        offset,
                        format!(
                            "the last record is damaged, and log {log} that the edits before it need is gone: \
                             the damaged record was an acknowledged edit, not a torn write"
                        ),
                    ));
                }
            }
            vs
        } else {
            if !opts.create_if_missing {
                return Err(Error::NotFound { path: current });
            }
            // A store exists once CURRENT does. Before that, a creation that was
            // interrupted can have left a manifest of an empty store (and temp files):
            // nothing was ever acknowledged, so they are removed and the creation starts
            // over. Anything else without CURRENT is a damaged store, never overwritten.
            let leftovers = unfinished_creation(fs.as_ref(), &dir, &names).map_err(|stray| {
                Error::corruption(
                    &current,
                    0,
                    format!("CURRENT is missing but the directory holds store files ({stray})"),
                )
            })?;
            if !leftovers.is_empty() {
                tracing::warn!(dir = %dir.display(), files = ?leftovers, "removing the leftovers of a store creation that never finished");
                for name in &leftovers {
                    fs.remove_file(&dir.join(name))?;
                }
                fs.sync_dir(&dir)?;
                names.retain(|n| !leftovers.contains(n));
            }
            VersionSet::new_store(ctx.clone(), opts.num_levels, random_id())
        };
        // Logs and tables are created under numbers the manifest learns only with a later
        // edit: after a crash the directory can hold files numbered at or above the
        // manifest's next file number. Mark every number on disk used, so that no new
        // file ever takes the number of one that exists (LevelDB's MarkFileNumberUsed).
        if let Some(max) = names
            .iter()
            .filter_map(|n| match parse_file_name(n) {
                Some(FileKind::Wal(x) | FileKind::Table(x) | FileKind::Manifest(x)) => Some(x),
                _ => None,
            })
            .max()
        {
            vs.mark_file_number_used(max);
        }
        // A fresh manifest holding the recovered state; recovery flushes are logged in it.
        vs.roll_manifest()?;
        crate::failpoint::hit("open.manifest_rolled");
        vs.set_max_manifest_bytes(opts.max_manifest_bytes);

        let counters = Counters::default();
        let (mem, max_seq) = Self::replay_wals(&opts, &dir, &names, &mut vs, &counters)?;
        let last_seq = vs.last_sequence.max(max_seq);
        vs.last_sequence = last_seq;

        // The WAL for new writes, then the edit that retires every older log.
        let (wal, wal_number) = if opts.wal {
            let n = vs.new_file_number();
            let w = create_wal(fs.as_ref(), &dir, n, opts.sync)?;
            fs.sync_dir(&dir)?;
            crate::failpoint::hit("open.wal_created");
            (Some(w), n)
        } else {
            (None, FileNumber(0))
        };
        let mut edit = VersionEdit {
            last_sequence: Some(last_seq),
            log_number: Some(wal_number),
            ..VersionEdit::default()
        };
        if !mem.is_empty() {
            let mem = Arc::new(mem);
            let number = vs.new_file_number();
            // No snapshot is open while the store opens.
            if let Some(nf) = write_level0_table(&opts, &dir, &mem, number, &[], &counters)? {
                edit.new_files.push(nf);
            }
            crate::failpoint::hit("open.recovery_table_written");
        }
        vs.log_and_apply(edit)?;
        crate::failpoint::hit("open.recovery_edit_logged");
        delete_obsolete_files(fs.as_ref(), &dir, &vs)?;
        crate::failpoint::hit("open.obsolete_deleted");

        let mem = Arc::new(MemTable::new(wal_number));
        let sv = SuperVersion {
            mem: mem.clone(),
            imms: Vec::new(),
            version: vs.current(),
        };
        let inner = Arc::new(DbInner {
            dir,
            fs,
            _lock: lock,
            cache,
            state: Mutex::new(State {
                vs,
                mem: mem.clone(),
                imms: Vec::new(),
                manual: None,
            }),
            bg_cv: Condvar::new(),
            sv: ArcSwap::from_pointee(sv),
            last_seq: CachePadded::new(AtomicU64::new(last_seq.0)),
            writers: Mutex::new(VecDeque::new()),
            writers_cv: Condvar::new(),
            log: CachePadded::new(Mutex::new(LogState {
                wal,
                mem,
                last_allocated: last_seq.0,
                tally: WriteTally::default(),
            })),
            publish_waiters: AtomicUsize::new(0),
            publish_lock: Mutex::new(Vec::new()),
            publish_cv: Condvar::new(),
            retired_wals: Mutex::new(Vec::new()),
            snapshots: Mutex::new(BTreeMap::new()),
            counters,
            has_bg_error: AtomicBool::new(false),
            bg_error: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            budget_charged: AtomicUsize::new(0),
            snapshot_epoch: AtomicU64::new(0),
            opts,
        });
        let mut threads = Vec::new();
        let bg = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tidemark-flush".into())
                .spawn(move || bg.flush_loop())
                .map_err(|e| Error::io("spawn flush thread", &inner.dir, e))?,
        );
        let bg = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tidemark-compact".into())
                .spawn(move || super::compaction::compaction_loop(bg))
                .map_err(|e| Error::io("spawn compaction thread", &inner.dir, e))?,
        );
        if let SyncMode::Periodic(every) = inner.opts.sync {
            let p = inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("tidemark-sync".into())
                    .spawn(move || p.periodic_sync_loop(every))
                    .map_err(|e| Error::io("spawn sync thread", &inner.dir, e))?,
            );
        }
        inner.bg_cv.notify_all();
        Ok(Db {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// Replays every WAL not yet retired into a memtable; returns it and the largest
    /// sequence number seen. Full memtables are flushed to level 0 along the way.
    ///
    /// A record whose sequence number is at or below the manifest's last sequence is
    /// already in a table (every edit that raises it holds the tables of everything up to
    /// it) and is skipped, so a log replayed twice (after a kill during a recovery flush,
    /// or one that outlived its flush) never puts a second copy of a sequence range in
    /// level 0 nor an older value above a newer one.
    fn replay_wals(
        opts: &Options,
        dir: &Path,
        names: &[String],
        vs: &mut VersionSet,
        counters: &Counters,
    ) -> Result<(MemTable, SeqNo)> {
        let fs = opts.fs.as_ref();
        let mut wals: Vec<FileNumber> = names
            .iter()
            .filter_map(|n| match parse_file_name(n) {
                Some(FileKind::Wal(w)) if w >= vs.log_number => Some(w),
                _ => None,
            })
            .collect();
        wals.sort();
        let mut mem = MemTable::new(FileNumber(0));
        let mut max_seq = SeqNo(0);
        let mut skipped = 0u64;
        // The manifest's word as recovered: flushes during this replay raise
        // `vs.last_sequence`, but only for records replayed here.
        let durable = vs.last_sequence;
        // A torn record is tolerated at the tail of the last log that holds records. Logs
        // after it that hold none were created by an open that died before its recovery
        // edit retired the older logs (or by a switch no write followed): they do not make
        // the torn tail of the log before them a damaged record.
        let mut last_with_records = 0;
        for (i, &w) in wals.iter().enumerate().rev() {
            if log_holds_records(fs, &wal_path(dir, w), w)? {
                last_with_records = i;
                break;
            }
        }
        'logs: for (i, &w) in wals.iter().enumerate() {
            let path = wal_path(dir, w);
            let last = i >= last_with_records;
            let map = map_log(fs, &path)?;
            let data: &[u8] = map.as_deref().unwrap_or(&[]);
            let mut reader = LogReader::new(data, &path, LogKind::Wal, Some(w), true)?;
            loop {
                match reader.next() {
                    LogRead::Record { offset, payload } => {
                        let batch = decode_batch(&payload, &path, offset)?;
                        for op in &batch.ops {
                            if op.seq <= durable {
                                skipped += 1;
                                continue;
                            }
                            mem.add(op.seq, op.kind, op.key, op.value);
                            max_seq = max_seq.max(op.seq);
                        }
                        if mem.approximate_size() >= opts.memtable_size_bytes {
                            let full =
                                Arc::new(std::mem::replace(&mut mem, MemTable::new(FileNumber(0))));
                            let number = vs.new_file_number();
                            // No snapshot is open while the store opens.
                            if let Some(nf) =
                                write_level0_table(opts, dir, &full, number, &[], counters)?
                            {
                                crate::failpoint::hit("open.replay_table_written");
                                let edit = VersionEdit {
                                    new_files: vec![nf],
                                    last_sequence: Some(max_seq),
                                    ..VersionEdit::default()
                                };
                                vs.log_and_apply(edit)?;
                                crate::failpoint::hit("open.replay_edit_logged");
                            }
                        }
                    }
                    LogRead::Eof => break,
                    LogRead::TornTail { offset, reason } if last => {
                        tracing::warn!(file = %path.display(), offset, %reason, "dropped a torn record at the tail of the log");
                        break;
                    }
                    LogRead::TornTail { offset, reason } | LogRead::Corrupt { offset, reason } => {
                        if opts.wal_recovery == WalRecovery::PointInTime {
                            tracing::warn!(file = %path.display(), offset, %reason, "point-in-time recovery stops at damaged log record");
                            break 'logs;
                        }
                        return Err(Error::corruption(&path, offset, reason));
                    }
                }
            }
        }
        if skipped > 0 {
            tracing::info!(
                skipped,
                last_sequence = durable.0,
                "log records already in tables were not replayed"
            );
        }
        Ok((mem, max_seq))
    }

    /// Writes `value` under `key`.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let mut b = WriteBatch::with_capacity(WriteBatch::put_size(key.len(), value.len()));
        b.put(key, value);
        self.write(b)
    }

    /// Deletes `key` (a no-op if absent).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.write(b)
    }

    /// Applies every operation of `batch` atomically.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        batch.validate()?;
        if batch.is_empty() {
            return Ok(());
        }
        self.inner.write_impl(Some(batch)).map(|_| ())
    }

    /// The newest value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.get_at(key.as_ref(), None)
    }

    /// A consistent view of the store as it is now.
    pub fn snapshot(&self) -> Snapshot {
        // Under the state lock, so that a compaction deciding whether its filter may run
        // sees every snapshot (see `DbInner::snapshot_epoch`).
        let _st = self.inner.state.lock();
        let mut snaps = self.inner.snapshots.lock();
        let seq = self.inner.visible_seq();
        *snaps.entry(seq.0).or_insert(0) += 1;
        self.inner.snapshot_epoch.fetch_add(1, Ordering::AcqRel);
        Snapshot {
            inner: self.inner.clone(),
            seq,
        }
    }

    /// Scans the keys in `range` in order.
    pub fn scan<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Result<DbIterator> {
        self.inner.iter_at(range, None)
    }

    /// Scans the keys that start with `prefix` in order.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<DbIterator> {
        self.inner.prefix_at(prefix.as_ref(), None)
    }

    /// Scans every key in order.
    pub fn iter(&self) -> Result<DbIterator> {
        self.scan::<&[u8]>(..)
    }

    /// Flushes the memtable to a table and waits for it.
    pub fn flush(&self) -> Result<()> {
        self.begin_live_files()?.wait().map(|_| ())
    }

    /// The synchronous part of pinning a consistent file set: switches the memtable (no
    /// copy of state). [`LiveFilesTicket::wait`] waits for the flush and pins the files.
    pub fn begin_live_files(&self) -> Result<LiveFilesTicket> {
        self.inner.check_bg_error()?;
        let (seq, wait_for, ready) = self
            .inner
            .write_impl(None)?
            .unwrap_or_else(|| (self.inner.visible_seq(), None, None));
        Ok(LiveFilesTicket {
            inner: self.inner.clone(),
            seq,
            wait_for,
            ready,
        })
    }

    /// Flushes and returns the live files and the sequence number they are consistent at.
    pub fn live_files(&self) -> Result<LiveFiles> {
        self.begin_live_files()?.wait()
    }

    /// Statistics of the store.
    pub fn stats(&self) -> DbStats {
        let sv = self.inner.sv.load();
        let mut s = DbStats {
            levels: sv
                .version
                .levels
                .iter()
                .map(|l| LevelStats {
                    files: l.len(),
                    bytes: l.iter().map(|f| f.size).sum(),
                })
                .collect(),
            ..DbStats::default()
        };
        let targets = super::compaction::targets_of(&self.inner, &sv.version);
        s.base_level = targets.base_level;
        s.level_target_bytes = targets.max_bytes;
        s.fill_counters(&self.inner.counters);
        let tally = self.inner.log.lock().tally;
        s.writes = tally.writes;
        s.write_groups = tally.groups;
        s.user_bytes_written = tally.user_bytes;
        s.wal_bytes_written = tally.wal_bytes;
        if let Some(c) = &self.inner.cache {
            let cs = c.stats();
            s.cache_hits = cs.hits;
            s.cache_misses = cs.misses;
            s.cache_compressed_hits = cs.compressed_hits;
            s.cache_compressed_bytes = cs.compressed_bytes;
            s.cache_declined = cs.declined;
            s.cache_bytes = cs.bytes_used;
            s.cache_bytes_reserved = cs.bytes_reserved;
        }
        s.table_memory_bytes = sv
            .version
            .levels
            .iter()
            .flatten()
            .filter_map(|f| f.opened_table())
            .map(|t| t.memory_bytes() as u64)
            .sum();
        s.memtable_bytes = (sv.mem.approximate_size()
            + sv.imms.iter().map(|m| m.approximate_size()).sum::<usize>())
            as u64;
        s.immutable_memtables = sv.imms.len();
        s.last_sequence = self.inner.visible_seq().0;
        s
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The store's identity (random, set when it was created).
    pub fn id(&self) -> String {
        self.inner.state.lock().vs.db_id.clone()
    }

    /// The background error that made the store read-only, if any.
    pub fn background_error(&self) -> Option<Error> {
        self.inner.bg_error.lock().clone()
    }

    /// Waits until no immutable memtable waits for its flush and no level needs an
    /// automatic compaction (the active memtable is left as it is: [`Db::flush`] first to
    /// include it). Returns the background error if one stops the work.
    pub fn wait_for_compactions(&self) -> Result<()> {
        let inner = &self.inner;
        let mut st = inner.state.lock();
        loop {
            inner.check_bg_error()?;
            let busy = !st.imms.is_empty()
                || st.manual.is_some()
                || (inner.opts.compaction
                    && super::compaction::needs_compaction(inner, &st.vs.current()));
            if !busy {
                return Ok(());
            }
            inner.bg_cv.notify_all();
            inner.bg_cv.wait_for(&mut st, Duration::from_millis(100));
        }
    }

    /// Merges every level into one (a manual full compaction: into the last level with
    /// dynamic level sizes, else the last level holding data or deeper while the data
    /// exceeds its target) and waits for it.
    pub fn compact_range(&self) -> Result<()> {
        self.flush()?;
        super::compaction::run_manual(&self.inner)
    }

    /// Writes `edit` (from [`LiveFiles::manifest`]) as the manifest of a new store in `dir`,
    /// whose table files were already placed there (linked or copied), so that
    /// [`Db::open`] opens exactly that file set.
    pub fn restore_manifest(fs: &dyn FileSystem, dir: &Path, edit: &VersionEdit) -> Result<()> {
        fs.create_dir_all(dir)?;
        if fs.exists(&dir.join(filename::CURRENT)) {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a store",
                dir.display()
            )));
        }
        for f in &edit.new_files {
            let p = table_path(dir, f.number);
            let size = fs.file_size(&p)?;
            if size != f.size {
                return Err(Error::corruption(
                    &p,
                    0,
                    format!("file is {size} bytes, the checkpoint records {}", f.size),
                ));
            }
        }
        let next = edit.next_file_number.unwrap_or(FileNumber(2));
        let number = FileNumber(next.0.max(2));
        let mut e = edit.clone();
        e.next_file_number = Some(FileNumber(number.0 + 1));
        e.log_number = Some(FileNumber(0));
        ManifestWriter::create(fs, dir, number, &e)?;
        super::manifest::set_current(fs, dir, number)
    }

    /// Flushes (when the WAL is off), stops the background work and closes the store.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut result = Ok(());
        if self.inner.check_bg_error().is_ok() {
            if !self.inner.opts.wal {
                result = self.flush();
            } else {
                result = self.inner.sync_retired_wals().map(|_| ());
                if let Some(w) = self.inner.log.lock().wal.as_mut() {
                    result = result.and(w.sync());
                }
            }
        }
        {
            let _st = self.inner.state.lock();
            self.inner.shutting_down.store(true, Ordering::Release);
            self.inner.bg_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if let Some(b) = &self.inner.opts.memory_budget {
            b.recharge(self.inner.budget_charged.swap(0, Ordering::Relaxed), 0);
        }
        result
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "error while closing the store");
        }
    }
}

impl Snapshot {
    /// The sequence number this snapshot reads at.
    pub fn seq(&self) -> SeqNo {
        self.seq
    }

    /// The value of `key` as of the snapshot.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.get_at(key.as_ref(), Some(self.seq))
    }

    /// Scans `range` as of the snapshot.
    pub fn scan<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Result<DbIterator> {
        self.inner.iter_at(range, Some(self.seq))
    }

    /// Scans the keys starting with `prefix` as of the snapshot.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<DbIterator> {
        self.inner.prefix_at(prefix.as_ref(), Some(self.seq))
    }

    /// Scans every key as of the snapshot.
    pub fn iter(&self) -> Result<DbIterator> {
        self.scan::<&[u8]>(..)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snaps = self.inner.snapshots.lock();
        if let Some(c) = snaps.get_mut(&self.seq.0) {
            *c -= 1;
            if *c == 0 {
                snaps.remove(&self.seq.0);
            }
        }
    }
}

/// Creates WAL `number` in `dir` and writes its header record. A log fsynced on every
/// write is written with system calls; one that is rarely fsynced may be written through a
/// memory mapping (no system call per write; see [`FileSystem::create_presized_mapped`]).
fn create_wal(
    fs: &dyn FileSystem,
    dir: &Path,
    number: FileNumber,
    sync: SyncMode,
) -> Result<LogWriter> {
    let path = wal_path(dir, number);
    // Numbers are never reused (open marks every number on disk used); a log that exists
    // under a new log's number may hold records not yet in a table: never truncate it.
    if fs.exists(&path) {
        return Err(Error::InvalidArgument(format!(
            "internal: new log {} already exists; refusing to overwrite it",
            path.display()
        )));
    }
    let file = match sync {
        SyncMode::PerWrite | SyncMode::GroupCommit => {
            fs.create_presized(&path, WAL_PRESIZE_STEP_BYTES)?
        }
        SyncMode::Periodic(_) | SyncMode::None => {
            fs.create_presized_mapped(&path, WAL_PRESIZE_STEP_BYTES)?
        }
    };
    LogWriter::new(file, LogKind::Wal, number)
}

/// The smallest key greater than every key starting with `prefix` (None: no such key).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

fn owned_bound<K: AsRef<[u8]>>(b: Bound<&K>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Writes `mem` as table `number` in `dir` (fsynced, directory fsynced). None if empty.
///
/// A version of a key is left out when the next newer version of the same key in `mem` is
/// seen by every reader that could see it: when no open snapshot (`snapshots`: their
/// sequence numbers, ascending) reads at a number from the older version's up to (not
/// including) the newer one's. RocksDB's flush drops versions by the same rule. A key
/// overwritten many times in one memtable is thus flushed once (once per snapshot in
/// between), not once per write. The newest version of every key, tombstones included,
/// is always kept.
pub(crate) fn write_level0_table(
    opts: &Options,
    dir: &Path,
    mem: &Arc<MemTable>,
    number: FileNumber,
    snapshots: &[u64],
    counters: &Counters,
) -> Result<Option<NewFile>> {
    if mem.is_empty() {
        return Ok(None);
    }
    let path = table_path(dir, number);
    let result = (|| {
        let file = opts.fs.create(&path)?;
        let mut b = TableBuilder::new(file, TableOptions::from_options(opts));
        if opts.flush_compression_thread {
            b = b.with_compression_thread();
        }
        let mut scan = mem.ordered_scan();
        // The user key of the last entry kept and its version's stripe (the scan yields
        // a key's versions newest first).
        let mut prev_key: Vec<u8> = Vec::new();
        let mut prev_stripe: Option<usize> = None;
        while let Some((key, value)) = scan.next() {
            let (ukey, here) = (user_key(key), snapshot_stripe(snapshots, internal_seq(key)));
            if prev_stripe.is_some() && ukey == prev_key.as_slice() {
                if prev_stripe == Some(here) {
                    continue;
                }
            } else {
                prev_key.clear();
                prev_key.extend_from_slice(ukey);
            }
            prev_stripe = Some(here);
            b.add(key, value)?;
        }
        let props = b.finish()?;
        opts.fs.sync_dir(dir)?;
        Ok(props)
    })();
    let props = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = opts.fs.remove_file(&path);
            return Err(e);
        }
    };
    Counters::add(&counters.flush_bytes_written, props.file_size);
    Counters::add(&counters.flushes, 1);
    Ok(Some(NewFile {
        level: 0,
        number,
        size: props.file_size,
        file_crc32c: props.file_crc32c,
        smallest: props.smallest_key.clone(),
        largest: props.largest_key.clone(),
        smallest_seq: props.smallest_seq,
        largest_seq: props.largest_seq,
        num_entries: props.num_entries,
    }))
}

/// Checks that every table the manifest lists is in the directory with its recorded size
/// (a stat per file), so a lost file fails the open instead of a later read.
fn check_tables_exist(fs: &dyn FileSystem, vs: &VersionSet, manifest: &Path) -> Result<()> {
    for (level, f) in vs.current().all_files() {
        let path = f.path();
        match fs.file_size(&path) {
            Ok(size) if size == f.size => {}
            Ok(size) => {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!(
                        "table is {size} bytes, but {} records {} (level {level})",
                        manifest.display(),
                        f.size
                    ),
                ))
            }
            Err(e) => {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!(
                        "table listed at level {level} by {} cannot be read: {e}",
                        manifest.display()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Removes what the store no longer needs: retired WALs, old manifests, tables no version
/// lists, and leftovers of interrupted atomic writes. Run at open, under the lock.
/// Maps a log for its replay (`None` for an empty file). A log is as long as its writes
/// made it, with no format limit to read it against, so it is mapped rather than read
/// into memory: a log of presized zeros (or a sparse one) costs only the pages the reader
/// touches before it meets the zero tail. The open is the guarded one: a FIFO or device
/// in a log's place is an error naming it.
fn map_log(fs: &dyn FileSystem, path: &Path) -> Result<Option<memmap2::Mmap>> {
    let file = fs.open(path)?;
    let len = file.metadata().ctx("stat", path)?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the mapping is read-only, and a log being replayed is not written: the
    // store's LOCK keeps other openers out, and this open writes only to new logs. Every
    // byte read through it is checked (fragment crc32c, lengths) before use, so only its
    // length is trusted; as with tables, the store does not defend against another
    // process truncating the file while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.ctx("mmap", path)?;
    Ok(Some(map))
}

/// True when the log at `path` holds at least one record after its header (a damaged one
/// counts: only the absence of any record makes a log empty).
fn log_holds_records(fs: &dyn FileSystem, path: &Path, number: FileNumber) -> Result<bool> {
    let map = map_log(fs, path)?;
    let data: &[u8] = map.as_deref().unwrap_or(&[]);
    let mut reader = LogReader::new(data, path, LogKind::Wal, Some(number), true)?;
    Ok(!matches!(reader.next(), LogRead::Eof))
}

/// The files of a directory without `CURRENT` when they are only what an interrupted
/// creation leaves: manifests that list no table (a torn or unreadable one included) and
/// temp files, next to the lock, with no log and no table. `Err` names the first file that shows a store existed here.
fn unfinished_creation(
    fs: &dyn FileSystem,
    dir: &Path,
    names: &[String],
) -> std::result::Result<Vec<String>, String> {
    let mut leftovers = Vec::new();
    for name in names {
        match parse_file_name(name) {
            Some(FileKind::Lock) | None => {}
            Some(FileKind::Temp) => leftovers.push(name.clone()),
            Some(FileKind::Manifest(n)) => {
                let path = dir.join(name);
                match read_manifest_with_tail(fs, &path, n) {
                    Ok((edits, _)) if edits.iter().all(|e| e.new_files.is_empty()) => {
                        leftovers.push(name.clone())
                    }
                    Ok(_) => return Err(format!("{name}, which lists tables")),
                    // Cut short by the kill (even inside its header): with no log and no
                    // table beside it, there is nothing it could point to.
                    Err(_) => leftovers.push(name.clone()),
                }
            }
            Some(FileKind::Wal(_) | FileKind::Table(_) | FileKind::Current) => {
                return Err(name.clone())
            }
        }
    }
    Ok(leftovers)
}

fn delete_obsolete_files(fs: &dyn FileSystem, dir: &Path, vs: &VersionSet) -> Result<()> {
    let live: HashSet<FileNumber> = vs.current().all_files().map(|(_, f)| f.number).collect();
    let manifest = vs.manifest_number();
    for name in fs.list_dir(dir)? {
        let remove = match parse_file_name(&name) {
            // Log number 0: the store runs without a log, and the recovery edit holds every
            // record of the old ones.
            Some(FileKind::Wal(n)) => vs.log_number.0 == 0 || n < vs.log_number,
            Some(FileKind::Manifest(n)) => Some(n) != manifest,
            Some(FileKind::Table(n)) => !live.contains(&n),
            Some(FileKind::Temp) => true,
            _ => false,
        };
        if remove {
            tracing::debug!(file = %name, "removing obsolete file");
            fs.remove_file(&dir.join(&name))?;
        }
    }
    fs.sync_dir(dir)
}

/// What a memtable switch for a flush leaves to wait for: the sequence number it is
/// consistent at, and either the immutable memtable whose flush completes it or the
/// version that already holds everything.
type Switched = (SeqNo, Option<Arc<Imm>>, Option<Arc<Version>>);
type SwitchOutcome = Option<Switched>;

impl DbInner {
    pub(crate) fn visible_seq(&self) -> SeqNo {
        SeqNo(self.last_seq.load(Ordering::Acquire))
    }

    pub(crate) fn check_bg_error(&self) -> Result<()> {
        if self.has_bg_error.load(Ordering::Acquire) {
            if let Some(e) = self.bg_error.lock().clone() {
                return Err(match e {
                    Error::ReadOnly(_) => e,
                    other => Error::ReadOnly(Arc::new(other)),
                });
            }
        }
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Records the first background error; the store is read-only from then on.
    pub(crate) fn set_bg_error(&self, e: Error) {
        let mut g = self.bg_error.lock();
        if g.is_none() {
            tracing::error!(error = %e, "store is now read-only");
            *g = Some(e);
            self.has_bg_error.store(true, Ordering::Release);
        }
        drop(g);
        self.bg_cv.notify_all();
    }

    /// Charges the memory budget (if any) with this store's memtables as they are now.
    fn recharge_budget(&self, st: &State) {
        if let Some(b) = &self.opts.memory_budget {
            let now = st.mem.approximate_size()
                + st.imms
                    .iter()
                    .map(|i| i.mem.approximate_size())
                    .sum::<usize>();
            let before = self.budget_charged.swap(now, Ordering::Relaxed);
            b.recharge(before, now);
        }
    }

    /// The number of snapshots taken so far.
    pub(crate) fn snapshot_epoch(&self) -> u64 {
        self.snapshot_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn has_snapshots(&self) -> bool {
        !self.snapshots.lock().is_empty()
    }

    /// The sequence numbers the open snapshots read at, ascending.
    pub(crate) fn snapshot_seqs(&self) -> Vec<u64> {
        self.snapshots.lock().keys().copied().collect()
    }

    /// The sequence number a read of the view `_sv` runs at: a snapshot's, or (`None`)
    /// the visible one, read after the view was loaded.
    ///
    /// In that order, every write visible when the view was loaded is in it (a memtable
    /// switch installs the view holding the new memtable before a write into it can
    /// become visible), and the read shows the store as of some moment during the call:
    /// writes that become visible later in memtables the view lacks are all numbered
    /// after every write in the view's memtables. The other order could pair a number
    /// with a newer view whose compaction dropped the versions visible at that number
    /// (compactions keep only what the visible number and live snapshots can see). It
    /// takes the view so that it cannot be called before one is loaded.
    fn read_seq(&self, _sv: &SuperVersion, seq: Option<SeqNo>) -> SeqNo {
        seq.unwrap_or_else(|| self.visible_seq())
    }

    /// Reads `key` at `seq` (`None`: the newest visible state).
    fn get_at(&self, key: &[u8], seq: Option<SeqNo>) -> Result<Option<Vec<u8>>> {
        self.counters.gets.add(1);
        let sv = self.sv.load();
        let seq = self.read_seq(&sv, seq);
        match sv.mem.get(key, seq) {
            MemLookup::Found(v) => return Ok(Some(v)),
            MemLookup::Deleted => return Ok(None),
            MemLookup::NotFound => {}
        }
        for m in &sv.imms {
            match m.get(key, seq) {
                MemLookup::Found(v) => return Ok(Some(v)),
                MemLookup::Deleted => return Ok(None),
                MemLookup::NotFound => {}
            }
        }
        let mut counts = FilterCounts::default();
        let r = sv.version.get(key, seq, &mut counts);
        self.counters.bloom_checked.add(counts.checked);
        self.counters.bloom_useful.add(counts.useful);
        Ok(match r? {
            VersionLookup::Found(v) => Some(v),
            VersionLookup::Deleted | VersionLookup::NotFound => None,
        })
    }

    /// Scans `range` at `seq` (`None`: the newest visible state).
    fn iter_at<K: AsRef<[u8]>>(
        &self,
        range: impl RangeBounds<K>,
        seq: Option<SeqNo>,
    ) -> Result<DbIterator> {
        let sv = self.sv.load_full();
        let seq = self.read_seq(&sv, seq);
        let mut children: Vec<BoxedIter> =
            Vec::with_capacity(2 + sv.imms.len() + sv.version.levels.len());
        children.push(Box::new(sv.mem.iter()));
        for m in &sv.imms {
            children.push(Box::new(m.iter()));
        }
        sv.version.iterators(&mut children);
        let merged = MergingIter::new(children);
        Ok(DbIterator {
            inner: UserIter::new(merged, seq, owned_bound(range.end_bound())),
            started: false,
            lower: owned_bound(range.start_bound()),
            done: false,
        })
    }

    fn prefix_at(&self, prefix: &[u8], seq: Option<SeqNo>) -> Result<DbIterator> {
        match prefix_successor(prefix) {
            Some(end) => self.iter_at(prefix.to_vec()..end, seq),
            None => self.iter_at(prefix.to_vec().., seq),
        }
    }

    fn install_super_version(&self, st: &State) {
        self.sv.store(Arc::new(SuperVersion {
            mem: st.mem.clone(),
            imms: st.imms.iter().rev().map(|i| i.mem.clone()).collect(),
            version: st.vs.current(),
        }));
    }

    /// True when writes are fsynced before they are acknowledged, and so commit in groups.
    fn group_commit(&self) -> bool {
        self.opts.wal && matches!(self.opts.sync, SyncMode::PerWrite | SyncMode::GroupCommit)
    }

    /// Commits a write (or, with `None`, switches the memtable for a flush).
    fn write_impl(&self, batch: Option<WriteBatch>) -> Result<SwitchOutcome> {
        if self.group_commit() {
            return self.write_queued(batch);
        }
        self.check_bg_error()?;
        match batch {
            Some(b) => self.write_direct(b).map(|()| None),
            None => self.switch_for_flush().map(Some),
        }
    }

    /// A write that needs no fsync, from the writer's own thread: numbers and log record
    /// under the `log` lock, the memtable insert outside it.
    fn write_direct(&self, mut batch: WriteBatch) -> Result<()> {
        if !self.has_room() {
            drop(self.wait_for_room(false)?);
        }
        let n = batch.len() as u64;
        let (mem, prev) = {
            let mut log = self.log.lock();
            let prev = log.last_allocated;
            let last = prev + n;
            if last > SeqNo::MAX.0 {
                return Err(Error::InvalidArgument("sequence numbers exhausted".into()));
            }
            batch.encode_with_seq(SeqNo(prev + 1));
            if let Some(w) = log.wal.as_mut() {
                let before = w.len();
                if let Err(e) = w.add_record(batch.encoded()).and_then(|()| w.flush()) {
                    // A failed append leaves the log in an unknown state: never write to
                    // it again. No number was handed out.
                    drop(log);
                    self.set_bg_error(e.clone());
                    return Err(e);
                }
                log.tally.wal_bytes += w.len() - before;
            }
            log.last_allocated = last;
            log.tally.writes += 1;
            log.tally.groups += 1;
            log.tally.user_bytes += batch.encoded_size() as u64;
            (Arc::as_ptr(&log.mem), prev)
        };
        // SAFETY: the memtable numbered this write under `log`, which holds it until
        // `switch_memtable` replaces it; the switch keeps it (in the state's immutable
        // memtables) and waits, before handing it to a flush, until every write numbered
        // for it is visible, which this one is only after `complete` below. So the memtable
        // outlives this borrow, without a reference count that every writer would write.
        let mem = unsafe { &*mem };
        mem.add_batch(&batch, SeqNo(prev + 1));
        self.complete(prev, prev + n);
        Ok(())
    }

    /// Whether a write may go ahead without looking at the store state: the memtable has
    /// room and level 0 is below the slowdown trigger (the answer may be stale by a switch
    /// or a compaction, which only makes a write take the slow path once more or fill the
    /// memtable by one write more). A store under a shared memory budget always checks
    /// the state, which keeps the budget's charge current.
    fn has_room(&self) -> bool {
        if self.opts.memory_budget.is_some() {
            return false;
        }
        let sv = self.sv.load();
        sv.mem.is_below(self.opts.memtable_size_bytes)
            && (!self.opts.compaction
                || sv.version.num_files(0) < self.opts.l0_slowdown_writes_trigger)
    }

    /// Makes the write numbered `prev + 1 ..= last`, now in the memtable, visible, and
    /// returns once it is. Numbers are handed out without gaps under `log`, so `last_seq`
    /// reaches `prev` exactly when the write before this one is visible, and then only
    /// this write's range may move it further: the writes publish in number order.
    ///
    /// Usually the write before is visible within a few spins, and this thread moves
    /// `last_seq` without a lock. Otherwise (a writer before it lost its processor) it
    /// records its range in `publish_lock` and sleeps: the thread that makes `prev`
    /// visible publishes every recorded range that continues it, in one step, and wakes
    /// them all. Whoever moves `last_seq` owns the range that starts at its value: the
    /// lock-free store is made only by the write whose `prev` it is, which no one else has
    /// recorded, and the publishers under the lock only extend it over recorded ranges.
    fn complete(&self, prev: u64, last: u64) {
        if last == prev {
            self.wait_visible(prev);
            return;
        }
        if self.spin_until_visible(prev) {
            self.last_seq.store(last, Ordering::SeqCst);
            // A waiter counts itself before it looks at `last_seq` (both SeqCst): either it
            // sees this store, or this load sees it and publishes what it recorded.
            if self.publish_waiters.load(Ordering::SeqCst) > 0 {
                let mut done = self.publish_lock.lock();
                self.publish_recorded(&mut done);
            }
            return;
        }
        self.publish_waiters.fetch_add(1, Ordering::SeqCst);
        let mut done = self.publish_lock.lock();
        let mut recorded = false;
        loop {
            let visible = self.last_seq.load(Ordering::SeqCst);
            if visible >= last {
                // Published by the thread that made `prev` visible.
                break;
            }
            if visible == prev {
                if recorded {
                    done.retain(|&(p, _)| p != prev);
                }
                self.last_seq.store(last, Ordering::SeqCst);
                self.publish_recorded(&mut done);
                break;
            }
            if !recorded {
                done.push((prev, last));
                recorded = true;
            }
            // No wake-up is lost: see `wait_visible`.
            self.publish_cv
                .wait_for(&mut done, Duration::from_millis(10));
        }
        drop(done);
        self.publish_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Under `publish_lock`: moves `last_seq` over every recorded range that continues it
    /// and wakes the sleepers.
    fn publish_recorded(&self, done: &mut Vec<(u64, u64)>) {
        let start = self.last_seq.load(Ordering::SeqCst);
        let mut visible = start;
        while let Some(i) = done.iter().position(|&(p, _)| p == visible) {
            visible = done.swap_remove(i).1;
        }
        // Stored only when it moves: with nothing recorded at `start`, the range after it
        // belongs to a writer that may be storing its own end right now.
        if visible != start {
            self.last_seq.store(visible, Ordering::SeqCst);
        }
        self.publish_cv.notify_all();
    }

    /// Spins while the writes up to `seq` insert (about a microsecond); false if they are
    /// not visible by then.
    fn spin_until_visible(&self, seq: u64) -> bool {
        for _ in 0..SPINS_BEFORE_SLEEP {
            if self.last_seq.load(Ordering::Acquire) >= seq {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Waits until every write numbered up to `seq` is visible: spins while the writes
    /// before insert, then sleeps on `publish_cv` (a writer before may have lost its
    /// processor, and spinning would keep it from getting one back).
    fn wait_visible(&self, seq: u64) {
        if self.spin_until_visible(seq) {
            return;
        }
        self.publish_waiters.fetch_add(1, Ordering::SeqCst);
        let mut g = self.publish_lock.lock();
        // A publisher without the lock reads `publish_waiters` after it moves `last_seq`
        // (both SeqCst) and, seeing a waiter, takes `publish_lock`; a publisher under it
        // always notifies there. This thread holds the lock from the check to the wait: no
        // wake-up is lost. The timeout only bounds the damage of a mistake.
        while self.last_seq.load(Ordering::SeqCst) < seq {
            self.publish_cv.wait_for(&mut g, Duration::from_millis(10));
        }
        drop(g);
        self.publish_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Queues a fsynced write (or, with `None`, a memtable switch) and waits for it to
    /// commit; the thread at the head of the queue commits the queued writes as one group.
    fn write_queued(&self, batch: Option<WriteBatch>) -> Result<SwitchOutcome> {
        self.check_bg_error()?;
        let force_switch = batch.is_none();
        let slot = Arc::new(Slot {
            batch: Mutex::new(batch),
            result: Mutex::new(None),
            force_switch,
        });
        let mut q = self.writers.lock();
        q.push_back(slot.clone());
        loop {
            if let Some(r) = slot.result.lock().take() {
                return r.map(|()| None);
            }
            if q.front().is_some_and(|f| Arc::ptr_eq(f, &slot)) {
                break;
            }
            self.writers_cv.wait(&mut q);
        }
        // This thread leads: gather a group behind it.
        let mut group: Vec<Arc<Slot>> = vec![slot.clone()];
        if !force_switch && self.opts.sync != SyncMode::PerWrite {
            let mut bytes = slot.batch.lock().as_ref().map_or(0, |b| b.encoded_size());
            for s in q.iter().skip(1) {
                if s.force_switch || bytes >= MAX_GROUP_BYTES {
                    break;
                }
                bytes += s.batch.lock().as_ref().map_or(0, |b| b.encoded_size());
                group.push(s.clone());
            }
        }
        drop(q);
        let outcome = if force_switch {
            self.switch_for_flush().map(Some)
        } else {
            self.commit_group(&group).map(|()| None)
        };
        let mut q = self.writers.lock();
        for s in &group {
            let front = q.pop_front();
            debug_assert!(front.is_some_and(|f| Arc::ptr_eq(&f, s)));
            if !Arc::ptr_eq(s, &slot) {
                *s.result.lock() = Some(outcome.as_ref().map(|_| ()).map_err(Clone::clone));
            }
        }
        self.writers_cv.notify_all();
        drop(q);
        outcome
    }

    /// Makes room and switches the memtable so the current one gets flushed.
    fn switch_for_flush(&self) -> Result<Switched> {
        let mut st = self.wait_for_room(true)?;
        // Read before the emptiness check: a write numbered at or below `seq` counted its
        // entries in the memtable before it became visible.
        let seq = self.visible_seq();
        if st.mem.is_empty() {
            return Ok(match st.imms.last() {
                Some(imm) => (seq, Some(imm.clone()), None),
                None => (seq, None, Some(st.vs.current())),
            });
        }
        let (imm, seq) = self.switch_memtable(&mut st)?;
        Ok((seq, Some(imm), None))
    }

    /// Stalls while L0 or the immutable memtables are too far behind, and switches the
    /// memtable when it is full (or `force` is set). Returns with the state locked.
    fn wait_for_room(&self, force: bool) -> Result<MutexGuard<'_, State>> {
        let mut delayed = false;
        let mut st = self.state.lock();
        loop {
            self.check_bg_error()?;
            let l0 = st.vs.current().num_files(0);
            let compaction = self.opts.compaction;
            if compaction
                && !delayed
                && l0 >= self.opts.l0_slowdown_writes_trigger
                && l0 < self.opts.l0_stop_writes_trigger
            {
                // Give compaction a little room without stopping the writer.
                delayed = true;
                Counters::add(&self.counters.slowdowns, 1);
                let t = Instant::now();
                MutexGuard::unlocked(&mut st, || std::thread::sleep(Duration::from_millis(1)));
                Counters::add(&self.counters.stall_micros, t.elapsed().as_micros() as u64);
                continue;
            }
            self.recharge_budget(&st);
            let mem_size = st.mem.approximate_size();
            // Over the shared budget, the store that writes switches its own memtable.
            let budget_full = self.opts.memory_budget.as_ref().is_some_and(|b| {
                b.over()
                    && mem_size
                        >= super::budget::MIN_BUDGET_FLUSH_BYTES.min(self.opts.memtable_size_bytes)
            });
            let mem_full = mem_size >= self.opts.memtable_size_bytes || budget_full;
            if !mem_full && !force {
                return Ok(st);
            }
            // A strict budget over its limit: wait for this store's pending flush rather
            // than hold one more memtable.
            let budget_wait = budget_full
                && !st.imms.is_empty()
                && self
                    .opts
                    .memory_budget
                    .as_ref()
                    .is_some_and(|b| b.is_strict());
            if st.imms.len() >= self.opts.max_immutable_memtables
                || budget_wait
                || (compaction && l0 >= self.opts.l0_stop_writes_trigger)
            {
                Counters::add(&self.counters.stops, 1);
                let t = Instant::now();
                self.bg_cv.notify_all();
                self.bg_cv.wait_for(&mut st, Duration::from_millis(100));
                Counters::add(&self.counters.stall_micros, t.elapsed().as_micros() as u64);
                continue;
            }
            if mem_full && !force {
                self.switch_memtable(&mut st)?;
            }
            return Ok(st);
        }
    }

    /// Makes the active memtable immutable and starts a new one with a new WAL. Returns
    /// the immutable memtable and the last sequence number it holds; every write numbered
    /// up to it is in it and visible when this returns.
    ///
    /// Readers must find the new memtable from the moment a write into it can become
    /// visible: that is as soon as the `log` lock is released (a write numbered after the
    /// switch becomes visible once the writes before it finish, and nothing else holds it
    /// back). So the read view that holds it, with the old memtable among the immutable
    /// ones, is installed before the `log` lock is released. The old memtable may still
    /// receive the inserts of writes numbered before the switch; readers skip them until
    /// they are visible, and the flush takes it only after they are (the state lock is
    /// held until then).
    fn switch_memtable(&self, st: &mut State) -> Result<(Arc<Imm>, SeqNo)> {
        let wal_number = if self.opts.wal {
            st.vs.new_file_number()
        } else {
            FileNumber(0)
        };
        let new_mem = Arc::new(MemTable::new(wal_number));
        let r: Result<(u64, Arc<Imm>)> = (|| {
            let w = if self.opts.wal {
                let w = create_wal(self.fs.as_ref(), &self.dir, wal_number, self.opts.sync)?;
                self.fs.sync_dir(&self.dir)?;
                crate::failpoint::hit("switch.wal_created");
                Some(w)
            } else {
                None
            };
            let mut log = self.log.lock();
            if let Some(old) = log.wal.as_mut() {
                match self.opts.sync {
                    // Every acknowledged write in the old log is already fsynced; this
                    // fsync only covers the log's tail and is cheap.
                    SyncMode::PerWrite | SyncMode::GroupCommit => {
                        old.sync()?;
                        Counters::add(&self.counters.wal_syncs, 1);
                    }
                    // An fsync of a memtable's worth of log here would stall every
                    // writer (and a checkpoint's synchronous part). None promises
                    // nothing on power loss, and the flush makes the data durable;
                    // Periodic's sync thread fsyncs the old log at its next tick.
                    SyncMode::Periodic(_) | SyncMode::None => old.flush()?,
                }
            }
            if let (Some(old), SyncMode::Periodic(_)) = (log.wal.take(), self.opts.sync) {
                self.retired_wals.lock().push(old);
            }
            log.wal = w;
            let old_mem = std::mem::replace(&mut log.mem, new_mem.clone());
            assert!(
                Arc::ptr_eq(&old_mem, &st.mem),
                "the log and the state name different active memtables"
            );
            // Still under `log`: no write into the new memtable is numbered yet.
            let old = std::mem::replace(&mut st.mem, new_mem);
            let imm = Arc::new(Imm {
                mem: old,
                flushed: OnceLock::new(),
            });
            st.imms.push(imm.clone());
            self.install_super_version(st);
            Ok((log.last_allocated, imm))
        })();
        let (last, imm) = match r {
            Ok(r) => r,
            Err(e) => {
                self.set_bg_error(e.clone());
                return Err(e);
            }
        };
        // Writes numbered for the old memtable finish their inserts before it is handed
        // to the flush (they hold no lock, so waiting under the state lock is safe).
        self.wait_visible(last);
        self.bg_cv.notify_all();
        Ok((imm, SeqNo(last)))
    }

    /// Logs and applies a group of batches, with one fsync. Runs only on the leader.
    fn commit_group(&self, group: &[Arc<Slot>]) -> Result<()> {
        drop(self.wait_for_room(false)?);
        let mut batches: Vec<(WriteBatch, SeqNo)> = Vec::with_capacity(group.len());
        let mut log = self.log.lock();
        let prev = log.last_allocated;
        let mut seq = prev;
        let mut user_bytes = 0u64;
        for s in group {
            let Some(mut b) = s.batch.lock().take() else {
                continue;
            };
            let first = SeqNo(seq + 1);
            seq += b.len() as u64;
            if seq > SeqNo::MAX.0 {
                return Err(Error::InvalidArgument("sequence numbers exhausted".into()));
            }
            b.encode_with_seq(first);
            user_bytes += b.encoded_size() as u64;
            batches.push((b, first));
        }
        let r: Result<u64> = (|| {
            let w = log.wal.as_mut().ok_or(Error::Closed)?;
            let before = w.len();
            for (b, _) in &batches {
                w.add_record(b.encoded())?;
            }
            w.sync()?;
            Counters::add(&self.counters.wal_syncs, 1);
            Ok(w.len() - before)
        })();
        let wal_bytes = match r {
            Ok(n) => n,
            Err(e) => {
                // A failed append or fsync leaves the log in an unknown state: never
                // write to it again. No number was handed out.
                drop(log);
                self.set_bg_error(e.clone());
                return Err(e);
            }
        };
        log.last_allocated = seq;
        log.tally.writes += batches.len() as u64;
        log.tally.groups += 1;
        log.tally.user_bytes += user_bytes;
        log.tally.wal_bytes += wal_bytes;
        let mem = log.mem.clone();
        drop(log);
        for (b, first) in &batches {
            mem.add_batch(b, *first);
        }
        self.complete(prev, seq);
        Ok(())
    }

    fn periodic_sync_loop(&self, every: Duration) {
        let mut st = self.state.lock();
        // (log number, length) at the last fsync: an idle log is not fsynced again.
        let mut synced: Option<(PathBuf, u64)> = None;
        let mut next_tick = Instant::now() + every;
        while !self.shutting_down.load(Ordering::Acquire) {
            // Wake only at the tick (or to stop): other work notifies the same condvar.
            if Instant::now() < next_tick {
                self.bg_cv.wait_until(&mut st, next_tick);
                continue;
            }
            next_tick = Instant::now() + every;
            if self.has_bg_error.load(Ordering::Acquire) {
                continue;
            }
            let r = MutexGuard::unlocked(&mut st, || -> Result<u64> {
                let mut fsyncs = self.sync_retired_wals()?;
                if let Some(w) = self.log.lock().wal.as_mut() {
                    let now = (w.path().to_path_buf(), w.len());
                    if synced.as_ref() != Some(&now) {
                        w.sync()?;
                        synced = Some(now);
                        fsyncs += 1;
                    }
                }
                Ok(fsyncs)
            });
            match r {
                Ok(n) => Counters::add(&self.counters.wal_syncs, n),
                Err(e) => self.set_bg_error(e),
            }
        }
    }

    /// fsyncs and closes the logs retired since the last call; returns how many.
    fn sync_retired_wals(&self) -> Result<u64> {
        let retired = std::mem::take(&mut *self.retired_wals.lock());
        let n = retired.len() as u64;
        for mut w in retired {
            w.sync()?;
        }
        Ok(n)
    }

    /// The flush thread: turns immutable memtables into level-0 tables, oldest first.
    fn flush_loop(self: Arc<Self>) {
        let mut st = self.state.lock();
        loop {
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let next = st.imms.first().cloned();
            match next {
                Some(imm) if !self.has_bg_error() => {
                    if let Err(e) = self.flush_imm(&mut st, &imm) {
                        self.set_bg_error(e);
                    }
                    self.bg_cv.notify_all();
                }
                _ => {
                    self.bg_cv.wait_for(&mut st, Duration::from_millis(500));
                }
            }
        }
    }

    /// Flushes the oldest immutable memtable. Called with the state locked; unlocks
    /// while the table is written.
    fn flush_imm(&self, st: &mut MutexGuard<'_, State>, imm: &Arc<Imm>) -> Result<()> {
        let number = st.vs.new_file_number();
        // A snapshot opened from now on reads at a number above every write of `imm`, and
        // so sees the newest version of each of its keys: the snapshots open now are the
        // ones the flush must keep older versions for.
        let snapshots = self.snapshot_seqs();
        let new_file = MutexGuard::unlocked(st, || {
            write_level0_table(
                &self.opts,
                &self.dir,
                &imm.mem,
                number,
                &snapshots,
                &self.counters,
            )
        })?;
        crate::failpoint::hit("flush.table_written");
        // Memtables are flushed oldest first and replay skips what tables hold, so a new
        // level-0 table is newer than every table: L0 never holds one sequence range twice.
        debug_assert!(new_file.as_ref().is_none_or(|nf| {
            st.vs
                .current()
                .all_files()
                .all(|(_, f)| f.largest_seq < nf.smallest_seq)
        }));
        // The oldest log still needed is the next memtable's.
        let log_number = if self.opts.wal {
            st.imms
                .get(1)
                .map_or(st.mem.wal_number(), |i| i.mem.wal_number())
        } else {
            FileNumber(0)
        };
        let edit = VersionEdit {
            log_number: Some(log_number),
            last_sequence: Some(imm.mem.max_seq()),
            new_files: new_file.into_iter().collect(),
            ..VersionEdit::default()
        };
        let version = st.vs.log_and_apply(edit)?;
        crate::failpoint::hit("flush.edit_logged");
        st.imms.remove(0);
        self.recharge_budget(st);
        let _ = imm.flushed.set(version);
        self.install_super_version(st);
        if self.opts.wal {
            let old = wal_path(&self.dir, imm.mem.wal_number());
            if imm.mem.wal_number() < log_number && self.fs.exists(&old) {
                if let Err(e) = self.fs.remove_file(&old) {
                    tracing::warn!(error = %e, "could not delete a retired log");
                }
                crate::failpoint::hit("flush.wal_deleted");
            }
        }
        Ok(())
    }
}

impl DbInner {
    pub(crate) fn state(&self) -> &Mutex<State> {
        &self.state
    }
    pub(crate) fn bg_condvar(&self) -> &Condvar {
        &self.bg_cv
    }
    pub(crate) fn publish(&self, st: &State) {
        self.install_super_version(st);
    }
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
    pub(crate) fn has_bg_error(&self) -> bool {
        self.has_bg_error.load(Ordering::Acquire)
    }
}
