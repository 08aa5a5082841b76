//! Bit flips in every kind of file tidemark reads: the WAL, SSTs, the manifest, `CURRENT`,
//! a checkpoint's `_metadata`, manifest snapshot and shared tables, and a canonical
//! savepoint's `_metadata` and canonical files (restored unverified, so the format's own
//! checks must catch every flip).
//!
//! For each flipped bit (every bit of small files, a seeded sample of at least 2000 bits per
//! file type otherwise) a copy of the store is opened and read whole. The outcome must be
//! either an error whose message names the damaged file, or reads that return exactly the
//! original data. Never a panic (in any thread), never a wrong value.
//!
//! A restore from a checkpoint is verified first (sizes and crc32c of every file), so a
//! flipped checkpoint file must be refused by name before anything is placed.
//!
//! One outcome is indistinguishable from a crash and is accounted for explicitly: a flip in
//! the last WAL record may be taken for a torn tail and dropped; the store must then hold
//! exactly the original data minus that last write.

mod common;
#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

use store_checkpoint::checkpoint_db;
use tidemark::checkpoint::{
    resolve_verified, CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore, JobId,
    KeyGroupRange, LocalStorage,
};
use tidemark::fs::{FileLock, FileSystem, StdFs, WritableFile};
use tidemark::lsm::wal::{LogKind, LogRead, LogReader};
use tidemark::lsm::{Db, Options, SyncMode, WriteBatch};
use tidemark::state::lsm_snapshot::{restore_store, SubtaskId};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Panics in any thread (a background thread's panic would otherwise go unnoticed).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Sweeps run one at a time, so that a panic counted during a sweep is that sweep's own.
fn count_panics() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
    guard
}

/// The real file system without fsyncs: thousands of opens in a test, and no crash to
/// survive.
#[derive(Debug)]
struct NoSyncFs;

#[derive(Debug)]
struct NoSyncFile(Box<dyn WritableFile>);

impl WritableFile for NoSyncFile {
    fn append(&mut self, data: &[u8]) -> tidemark::Result<()> {
        self.0.append(data)
    }
    fn flush(&mut self) -> tidemark::Result<()> {
        self.0.flush()
    }
    fn sync(&mut self) -> tidemark::Result<()> {
        self.0.flush()
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl FileSystem for NoSyncFs {
    fn create(&self, path: &Path) -> tidemark::Result<Box<dyn WritableFile>> {
        Ok(Box::new(NoSyncFile(StdFs.create(path)?)))
    }
    fn open(&self, path: &Path) -> tidemark::Result<fs::File> {
        StdFs.open(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> tidemark::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> tidemark::Result<()> {
        StdFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> tidemark::Result<()> {
        StdFs.remove_dir_all(path)
    }
    fn create_dir_all(&self, path: &Path) -> tidemark::Result<()> {
        StdFs.create_dir_all(path)
    }
    fn sync_dir(&self, _path: &Path) -> tidemark::Result<()> {
        Ok(())
    }
    fn hard_link(&self, src: &Path, dst: &Path) -> tidemark::Result<()> {
        StdFs.hard_link(src, dst)
    }
    fn list_dir(&self, path: &Path) -> tidemark::Result<Vec<String>> {
        StdFs.list_dir(path)
    }
    fn lock(&self, path: &Path) -> tidemark::Result<FileLock> {
        StdFs.lock(path)
    }
    fn file_size(&self, path: &Path) -> tidemark::Result<u64> {
        StdFs.file_size(path)
    }
    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
}

fn opts() -> Options {
    Options {
        memtable_size_bytes: 1 << 20,
        compaction: false,
        block_size_bytes: 256,
        sync: SyncMode::None,
        fs: Arc::new(NoSyncFs),
        ..Options::default()
    }
}

/// Scratch space: tmpfs when there is one.
fn scratch() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// xorshift64*, for seeded samples of bit positions.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Every bit of a file of at most `budget` bits, else `budget` distinct sampled bits.
fn bits_to_flip(len_bytes: usize, budget: usize, seed: u64) -> Vec<usize> {
    let bits = len_bytes * 8;
    if bits <= budget {
        return (0..bits).collect();
    }
    let mut rng = Rng(seed | 1);
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < budget {
        chosen.insert(rng.below(bits as u64) as usize);
    }
    chosen.into_iter().collect()
}

fn flip(path: &Path, bit: usize) {
    let mut data = fs::read(path).unwrap();
    data[bit / 8] ^= 1 << (bit % 8);
    fs::write(path, data).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "LOCK" {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Reads everything: a full scan, and a get of every key in `probes` (which must agree
/// with the scan).
fn read_all(db: &Db, probes: &[Vec<u8>]) -> tidemark::Result<Model> {
    let mut got = Model::new();
    for r in db.scan::<&[u8]>(..)? {
        let (k, v) = r?;
        got.insert(k, v);
    }
    for k in probes {
        let v = db.get(k)?;
        assert_eq!(v.as_ref(), got.get(k), "get and scan disagree on {k:?}");
    }
    Ok(got)
}

/// How the flips of one file type turned out.
#[derive(Default)]
struct Tally {
    flips: usize,
    errors: usize,
    harmless: usize,
    torn_tail: usize,
    bad: Vec<String>,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} flips: {} errors naming the file, {} harmless, {} dropped as a torn tail, {} bad",
            self.flips,
            self.errors,
            self.harmless,
            self.torn_tail,
            self.bad.len()
        )
    }
}

/// The store under test: two tables, a WAL with unflushed writes, a manifest, CURRENT.
struct Store {
    dir: tempfile::TempDir,
    model: Model,
    /// The model without the last write (a put of a new key).
    model_minus_last: Model,
    /// Where the last WAL record starts.
    last_record_offset: u64,
    wal_name: String,
    /// Where the manifest's last record (the last flush's edit) starts.
    manifest_last_record_offset: u64,
    probes: Vec<Vec<u8>>,
}

/// Offset of the last record of the log (WAL or manifest) in `data`.
fn log_last_record_offset(data: &[u8], path: &Path, kind: LogKind) -> u64 {
    let mut r = LogReader::new(data, path, kind, None, false).unwrap();
    let mut last = None;
    while let LogRead::Record { offset, .. } = r.next() {
        last = Some(offset);
    }
    last.unwrap()
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:04}").into_bytes()
}

fn build_store() -> Store {
    let dir = scratch();
    let mut model = Model::new();
    let db = Db::open(dir.path(), opts()).unwrap();
    let put = |db: &Db, k: Vec<u8>, v: Vec<u8>, model: &mut Model| {
        db.put(&k, &v).unwrap();
        model.insert(k, v);
    };
    for i in 0..80 {
        put(
            &db,
            key(i),
            format!("first-{i}").repeat(3).into_bytes(),
            &mut model,
        );
    }
    db.flush().unwrap();
    for i in (0..80).step_by(3) {
        put(&db, key(i), format!("second-{i}").into_bytes(), &mut model);
    }
    for i in (1..80).step_by(7) {
        db.delete(key(i)).unwrap();
        model.remove(&key(i));
    }
    db.flush().unwrap();
    // Unflushed writes, left in the WAL.
    for i in 100..120 {
        put(&db, key(i), format!("wal-{i}").into_bytes(), &mut model);
    }
    let mut b = WriteBatch::new();
    b.put(key(5), b"batch")
        .delete(key(6))
        .put(key(200), b"batch-new");
    db.write(b).unwrap();
    model.insert(key(5), b"batch".to_vec());
    model.remove(&key(6));
    model.insert(key(200), b"batch-new".to_vec());
    let wal_name = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .max()
        .unwrap();
    let model_minus_last = model.clone();
    let last_record_offset = fs::metadata(dir.path().join(&wal_name)).unwrap().len();
    put(
        &db,
        b"zz-last".to_vec(),
        b"the last write".to_vec(),
        &mut model,
    );
    db.close().unwrap();
    let mut probes: Vec<Vec<u8>> = (0..210).map(key).collect();
    probes.push(b"zz-last".to_vec());
    let manifest = common::manifest_path(dir.path());
    let manifest_last_record_offset =
        log_last_record_offset(&fs::read(&manifest).unwrap(), &manifest, LogKind::Manifest);
    let wal = dir.path().join(&wal_name);
    assert_eq!(
        log_last_record_offset(&fs::read(&wal).unwrap(), &wal, LogKind::Wal),
        last_record_offset,
        "the last write is the WAL's last record"
    );
    Store {
        dir,
        model,
        model_minus_last,
        last_record_offset,
        wal_name,
        manifest_last_record_offset,
        probes,
    }
}

/// Opens a copy of the store with one bit of `name` flipped and judges the outcome.
fn trial(store: &Store, scratch: &Path, name: &str, bit: usize, tally: &mut Tally) {
    let copy = scratch.join("copy");
    let _ = fs::remove_dir_all(&copy);
    copy_dir(store.dir.path(), &copy);
    flip(&copy.join(name), bit);
    tally.flips += 1;
    let panics_before = PANICS.load(Ordering::SeqCst);
    let outcome = std::panic::catch_unwind(|| {
        let db = Db::open(&copy, opts())?;
        read_all(&db, &store.probes)
    });
    let at = format!("{name} bit {bit} (byte {})", bit / 8);
    if PANICS.load(Ordering::SeqCst) != panics_before {
        tally.bad.push(format!("{at}: panicked"));
        return;
    }
    match outcome {
        Err(_) => tally.bad.push(format!("{at}: panicked")),
        Ok(Err(e)) => {
            if e.to_string().contains(name) {
                tally.errors += 1;
            } else {
                tally
                    .bad
                    .push(format!("{at}: error does not name the file: {e}"));
            }
        }
        Ok(Ok(got)) => {
            let in_last_record =
                name == store.wal_name && (bit / 8) as u64 >= store.last_record_offset;
            if got == store.model {
                tally.harmless += 1;
            } else if in_last_record && got == store.model_minus_last {
                tally.torn_tail += 1;
            } else {
                let differ = store
                    .model
                    .iter()
                    .filter(|(k, v)| got.get(*k) != Some(v))
                    .count()
                    + got.keys().filter(|k| !store.model.contains_key(*k)).count();
                tally
                    .bad
                    .push(format!("{at}: opened and read {differ} wrong entries"));
            }
        }
    }
}

/// Flips bits of every file of `kind` (a suffix, `CURRENT` or `MANIFEST`) for which
/// `keep(byte offset)` holds.
fn sweep(
    store: &Store,
    kind: &str,
    budget_bits_per_kind: usize,
    keep: &dyn Fn(u64) -> bool,
) -> Tally {
    let scratch = scratch();
    let mut names: Vec<String> = fs::read_dir(store.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| match kind {
            "CURRENT" => n == "CURRENT",
            "MANIFEST" => n.starts_with("MANIFEST-"),
            suffix => n.ends_with(suffix),
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "the store has no {kind} file");
    let mut tally = Tally::default();
    let per_file = budget_bits_per_kind.div_ceil(names.len());
    for (i, name) in names.iter().enumerate() {
        let len = fs::metadata(store.dir.path().join(name)).unwrap().len() as usize;
        for bit in bits_to_flip(len, per_file, 0x5eed + i as u64) {
            if !keep((bit / 8) as u64) {
                continue;
            }
            trial(store, scratch.path(), name, bit, &mut tally);
        }
    }
    eprintln!("{kind}: {tally}");
    tally
}

fn assert_clean(kind: &str, tally: &Tally) {
    assert!(
        tally.bad.is_empty(),
        "{kind}: {tally}; first bad outcomes:\n{}",
        tally
            .bad
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn undamaged_store_reads_back_its_model() {
    let store = build_store();
    let scratch = scratch();
    let copy = scratch.path().join("copy");
    copy_dir(store.dir.path(), &copy);
    let db = Db::open(&copy, opts()).unwrap();
    assert_eq!(read_all(&db, &store.probes).unwrap(), store.model);
    let names: Vec<_> = fs::read_dir(store.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".sst")).count(),
        2,
        "{names:?}"
    );
}

#[test]
fn every_flip_in_the_wal_is_an_error_naming_it_or_a_dropped_torn_tail() {
    let _serial = count_panics();
    let store = build_store();
    let t = sweep(&store, ".wal", 2000, &|_| true);
    assert_clean("WAL", &t);
    assert!(
        t.torn_tail > 0,
        "no flip in the last record was seen as a torn tail"
    );
}

#[test]
fn every_flip_in_a_table_is_an_error_naming_it() {
    let _serial = count_panics();
    let store = build_store();
    assert_clean("SST", &sweep(&store, ".sst", 2000, &|_| true));
}

#[test]
fn every_flip_in_the_manifest_before_its_last_record_is_an_error_naming_it() {
    let _serial = count_panics();
    let store = build_store();
    let last = store.manifest_last_record_offset;
    let t = sweep(&store, "MANIFEST", 4000, &|byte| byte < last);
    assert_clean("MANIFEST", &t);
    assert!(t.flips >= 1000, "{t}");
}

/// A flip in the manifest's last record makes `read_manifest` take it for a torn tail and
/// drop it. That record is the last flush's edit: it added the flushed table and retired
/// the WAL holding the same writes, which the flush then deleted. The store opens without
/// the table and without the WAL, and reads return the values from before that flush
/// (deleted keys come back): wrong values, silently.
#[test]
fn every_flip_in_the_last_manifest_record_is_an_error_naming_it() {
    let _serial = count_panics();
    let store = build_store();
    let last = store.manifest_last_record_offset;
    assert_clean(
        "MANIFEST",
        &sweep(&store, "MANIFEST", 4000, &|byte| byte >= last),
    );
}

#[test]
fn every_flip_in_current_is_an_error_naming_it() {
    let _serial = count_panics();
    let store = build_store();
    assert_clean("CURRENT", &sweep(&store, "CURRENT", 2000, &|_| true));
}

/// A checkpoint of the store (one incremental checkpoint of a store with two tables):
/// `_metadata`, the private manifest snapshot and the shared tables.
struct Checkpoint {
    root: tempfile::TempDir,
    model: Model,
    probes: Vec<Vec<u8>>,
}

const JOB: &str = "flipjob";

fn build_checkpoint() -> Checkpoint {
    let root = scratch();
    let storage = LocalStorage::new(StdFs::shared(), root.path(), JobId::new(JOB).unwrap());
    let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap();
    let db = Db::open(root.path().join("db"), opts()).unwrap();
    let subtask = SubtaskId {
        operator_id: "op".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).unwrap(),
    };
    for i in 0..80 {
        db.put(key(i), format!("first-{i}").repeat(3)).unwrap();
    }
    db.flush().unwrap();
    for i in (0..80).step_by(3) {
        db.put(key(i), format!("second-{i}")).unwrap();
    }
    for i in (1..80).step_by(7) {
        db.delete(key(i)).unwrap();
    }
    checkpoint_db(
        &store,
        CheckpointId(1),
        CheckpointKind::Incremental,
        &db,
        &subtask,
        vec![],
    )
    .unwrap();
    let model: Model = db.scan::<&[u8]>(..).unwrap().map(|r| r.unwrap()).collect();
    Checkpoint {
        root,
        model,
        probes: (0..90).map(key).collect(),
    }
}

/// Every file of the checkpoint's job directory, relative to it.
fn checkpoint_files(job_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![job_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(job_dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Restores the checkpoint (verified) into `target` and reads it whole.
fn restore_and_read(c: &Checkpoint, target: &Path) -> tidemark::Result<Model> {
    let chk = c.root.path().join(JOB).join("chk-1");
    let fs: Arc<dyn FileSystem> = Arc::new(NoSyncFs);
    let r = resolve_verified(fs.clone(), &chk, false)?;
    let state = r
        .metadata
        .operator_states
        .first()
        .ok_or_else(|| tidemark::Error::InvalidArgument("no operator state".into()))?;
    let storage = r.storage(fs);
    let db = restore_store(&storage, r.checkpoint_id, state, target, opts())?;
    read_all(&db, &c.probes)
}

fn checkpoint_sweep(c: &Checkpoint, select: &dyn Fn(&Path) -> bool, budget: usize) -> Tally {
    let job_dir = c.root.path().join(JOB);
    let files: Vec<PathBuf> = checkpoint_files(&job_dir)
        .into_iter()
        .filter(|p| select(p))
        .collect();
    assert!(!files.is_empty());
    let scratch = scratch();
    let mut tally = Tally::default();
    let per_file = budget.div_ceil(files.len());
    for (i, rel) in files.iter().enumerate() {
        let path = job_dir.join(rel);
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        let len = fs::metadata(&path).unwrap().len() as usize;
        for bit in bits_to_flip(len, per_file, 0xc4ec + i as u64) {
            let target = scratch.path().join("restored");
            let _ = fs::remove_dir_all(&target);
            // Restores only read the checkpoint: flip in place, and back afterwards.
            flip(&path, bit);
            tally.flips += 1;
            let panics_before = PANICS.load(Ordering::SeqCst);
            let outcome = std::panic::catch_unwind(|| restore_and_read(c, &target));
            flip(&path, bit);
            let at = format!("{} bit {bit}", rel.display());
            if PANICS.load(Ordering::SeqCst) != panics_before {
                tally.bad.push(format!("{at}: panicked"));
                continue;
            }
            match outcome {
                Err(_) => tally.bad.push(format!("{at}: panicked")),
                Ok(Err(e)) if e.to_string().contains(&name) => tally.errors += 1,
                Ok(Err(e)) => tally
                    .bad
                    .push(format!("{at}: error does not name the file: {e}")),
                Ok(Ok(got)) if got == c.model => tally.harmless += 1,
                Ok(Ok(_)) => tally.bad.push(format!("{at}: restored wrong data")),
            }
        }
    }
    tally
}

#[test]
fn every_flip_in_a_checkpoint_metadata_is_an_error_naming_it() {
    let _serial = count_panics();
    let c = build_checkpoint();
    // The sweep runs over the format version written today.
    let md = fs::read(c.root.path().join(JOB).join("chk-1/_metadata")).unwrap();
    assert_eq!(
        tidemark::checkpoint::Metadata::version_of(&md),
        Some(tidemark::checkpoint::metadata::FORMAT_VERSION)
    );
    let t = checkpoint_sweep(&c, &|p| p.ends_with("_metadata"), 4000);
    eprintln!("_metadata: {t}");
    assert_clean("_metadata", &t);
}

#[test]
fn every_flip_in_a_checkpoint_manifest_snapshot_or_shared_table_is_an_error_naming_it() {
    let _serial = count_panics();
    let c = build_checkpoint();
    let t = checkpoint_sweep(&c, &|p| p.to_string_lossy().ends_with(".manifest"), 2000);
    eprintln!("checkpoint manifest snapshot: {t}");
    assert_clean("manifest snapshot", &t);
    let t = checkpoint_sweep(&c, &|p| p.starts_with("shared"), 2000);
    eprintln!("checkpoint shared tables: {t}");
    assert_clean("shared tables", &t);
}

/// A canonical savepoint of two subtasks of the filesystem backend (a value per key), and
/// what it holds.
struct Savepoint {
    root: tempfile::TempDir,
    dir: PathBuf,
    model: BTreeMap<u32, u64>,
}

fn sp_info(index: u32, parallelism: u32) -> tidemark::state::backend::SubtaskInfo {
    tidemark::state::backend::SubtaskInfo {
        operator_id: "op".into(),
        subtask_index: index,
        parallelism,
        max_parallelism: tidemark::state::key_groups::MaxParallelism::new(16).unwrap(),
    }
}

fn build_savepoint() -> Savepoint {
    use tidemark::checkpoint::{CheckpointContent, OperatorSubtaskState, PendingSavepoint};
    use tidemark::state::backend::{FsStateBackend, StateBackend};
    use tidemark::state::keyed::{KeyedState, ValueStateDescriptor};
    let root = scratch();
    let backend = FsStateBackend::new();
    let d = ValueStateDescriptor::<u64>::new("v");
    let mut model = BTreeMap::new();
    let pending = PendingSavepoint::begin(
        StdFs::shared(),
        root.path(),
        &JobId::new(JOB).unwrap(),
        CheckpointId(4),
        tidemark::checkpoint::SavepointFormat::Canonical,
    )
    .unwrap();
    let mut states = Vec::new();
    for i in 0..2 {
        let info = sp_info(i, 2);
        let mut keyed = backend.keyed_state(&info, None).unwrap();
        let mut s = KeyedState::new(keyed.backend());
        for k in 0..60u32 {
            if s.set_current_key(&k).is_ok() {
                s.value(&d).unwrap().update(&u64::from(k * 7)).unwrap();
                model.insert(k, u64::from(k * 7));
            }
        }
        states.push(OperatorSubtaskState {
            operator_id: "op".into(),
            subtask_index: i,
            parallelism: 2,
            max_parallelism: 16,
            key_groups: info.key_groups().unwrap(),
            keyed_state: keyed
                .snapshot_sync_canonical()
                .unwrap()
                .write(&pending)
                .unwrap(),
            operator_state: Vec::new(),
        });
    }
    let done = pending
        .commit(CheckpointContent {
            operator_states: states,
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .unwrap();
    Savepoint {
        dir: done.dir,
        root,
        model,
    }
}

/// Restores the savepoint (not verified: the formats' own checks only) into one subtask of
/// the memory backend and reads every key.
fn restore_savepoint(sp: &Savepoint) -> tidemark::Result<BTreeMap<u32, u64>> {
    use tidemark::state::backend::{MemoryStateBackend, RestoreFrom, StateBackend};
    use tidemark::state::keyed::{KeyedState, ValueStateDescriptor};
    let r = tidemark::checkpoint::resolve(&NoSyncFs, &sp.dir)?;
    let storage = r.storage(Arc::new(NoSyncFs));
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &r.metadata.operator_states,
    };
    let mut keyed = MemoryStateBackend::new().keyed_state(&sp_info(0, 1), Some(from))?;
    let mut s = KeyedState::new(keyed.backend());
    let d = ValueStateDescriptor::<u64>::new("v");
    let mut got = BTreeMap::new();
    for k in 0..70u32 {
        s.set_current_key(&k)?;
        if let Some(v) = s.value(&d)?.get()? {
            got.insert(k, v);
        }
    }
    Ok(got)
}

#[test]
fn every_flip_in_a_canonical_savepoint_is_an_error_naming_the_file() {
    let _serial = count_panics();
    let sp = build_savepoint();
    assert_eq!(restore_savepoint(&sp).unwrap(), sp.model);
    let _ = &sp.root;
    let mut files: Vec<PathBuf> = fs::read_dir(&sp.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let len = fs::metadata(&path).unwrap().len() as usize;
        let mut tally = Tally::default();
        for bit in bits_to_flip(len, 1500, 0x5a5e) {
            flip(&path, bit);
            tally.flips += 1;
            let panics_before = PANICS.load(Ordering::SeqCst);
            let outcome = std::panic::catch_unwind(|| restore_savepoint(&sp));
            flip(&path, bit);
            let at = format!("{name} bit {bit}");
            if PANICS.load(Ordering::SeqCst) != panics_before {
                tally.bad.push(format!("{at}: panicked"));
                continue;
            }
            match outcome {
                Err(_) => tally.bad.push(format!("{at}: panicked")),
                Ok(Err(e)) if e.to_string().contains(&name) => tally.errors += 1,
                Ok(Err(e)) => tally
                    .bad
                    .push(format!("{at}: error does not name the file: {e}")),
                Ok(Ok(got)) if got == sp.model => tally.harmless += 1,
                Ok(Ok(_)) => tally.bad.push(format!("{at}: restored wrong data")),
            }
        }
        eprintln!("savepoint {name}: {tally}");
        assert_clean(&name, &tally);
    }
}
