//! Injected I/O faults (EIO and ENOSPC on create, write, fsync, directory fsync and rename)
//! while the store writes its WAL, flushes a memtable, and compacts: the failing operation
//! (or the next write) reports an error naming the file, the store turns read-only with
//! that error, and a reopen once the fault is lifted finds every acknowledged write.

#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark::fault::{FaultError, FaultFs, FaultOp, FaultRule};
use tidemark::lsm::{Db, Options};
use tidemark::Error;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn opts(fs: &Arc<FaultFs>, compaction: bool) -> Options {
    Options {
        memtable_size_bytes: 4096,
        target_file_size_bytes: 8192,
        max_bytes_for_level_base: 32768,
        l0_compaction_trigger: 2,
        compaction,
        fs: fs.clone(),
        ..Options::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    format!("value-{round}-{i}-{}", "x".repeat((i % 7) as usize * 10)).into_bytes()
}

/// What the store must hold: acknowledged writes, plus keys whose last write failed and
/// may hold either their old value or the unacknowledged new one.
#[derive(Default)]
struct Expect {
    acked: Model,
    maybe: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Expect {
    fn put(&mut self, db: &Db, k: Vec<u8>, v: Vec<u8>) -> tidemark::Result<()> {
        match db.put(&k, &v) {
            Ok(()) => {
                self.acked.insert(k, v);
                Ok(())
            }
            Err(e) => {
                self.maybe.insert(k, v);
                Err(e)
            }
        }
    }

    fn check(&self, db: &Db, what: &str) {
        let got: Model = db.scan::<&[u8]>(..).unwrap().map(|r| r.unwrap()).collect();
        for (k, v) in &got {
            let ok = self.acked.get(k) == Some(v) || self.maybe.get(k) == Some(v);
            assert!(
                ok,
                "{what}: unexpected value for {:?}",
                String::from_utf8_lossy(k)
            );
        }
        for (k, v) in &self.acked {
            if self.maybe.contains_key(k) {
                continue;
            }
            assert_eq!(
                got.get(k),
                Some(v),
                "{what}: lost {:?}",
                String::from_utf8_lossy(k)
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Writes until one fails (WAL appends, fsyncs, memtable switches).
    Wal,
    /// A few writes, then an explicit flush.
    Flush,
    /// Two overlapping flushed tables (automatic compaction off), then `compact_range`.
    ManualCompaction,
    /// Two overlapping flushes trigger an automatic compaction.
    AutoCompaction,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    phase: Phase,
    op: FaultOp,
    path: Option<&'static str>,
    skip: u64,
}

const fn case(phase: Phase, op: FaultOp, path: Option<&'static str>, skip: u64) -> Case {
    Case {
        phase,
        op,
        path,
        skip,
    }
}

const CASES: &[Case] = &[
    case(Phase::Wal, FaultOp::Write, Some(".wal"), 40),
    case(Phase::Wal, FaultOp::Sync, Some(".wal"), 10),
    // The first WAL created after open is the one a full memtable switches to.
    case(Phase::Wal, FaultOp::Create, Some(".wal"), 0),
    case(Phase::Wal, FaultOp::SyncDir, None, 0),
    case(Phase::Flush, FaultOp::Create, Some(".sst"), 0),
    case(Phase::Flush, FaultOp::Write, Some(".sst"), 2),
    case(Phase::Flush, FaultOp::Sync, Some(".sst"), 0),
    // The flush's switch to a new WAL fsyncs the directory first; the table's fsync is next.
    case(Phase::Flush, FaultOp::SyncDir, None, 1),
    case(Phase::Flush, FaultOp::Write, Some("MANIFEST"), 0),
    case(Phase::Flush, FaultOp::Sync, Some("MANIFEST"), 0),
    case(Phase::ManualCompaction, FaultOp::Create, Some(".sst"), 0),
    case(Phase::ManualCompaction, FaultOp::Write, Some(".sst"), 5),
    case(Phase::ManualCompaction, FaultOp::Sync, Some(".sst"), 0),
    case(Phase::ManualCompaction, FaultOp::SyncDir, None, 0),
    case(Phase::ManualCompaction, FaultOp::Sync, Some("MANIFEST"), 0),
    // Two flushes create two tables; the third table is the compaction's output.
    case(Phase::AutoCompaction, FaultOp::Create, Some(".sst"), 2),
];

fn os_code(error: FaultError) -> &'static str {
    match error {
        FaultError::Eio => "os error 5",
        FaultError::Enospc => "os error 28",
    }
}

fn wait_for_background_error(db: &Db) -> Error {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = db.background_error() {
            return e;
        }
        assert!(Instant::now() < deadline, "no background error within 20 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the phase's workload; returns the first error a call reported, if any.
fn workload(db: &Db, fs: &FaultFs, c: &Case, rule: FaultRule, exp: &mut Expect) -> Option<Error> {
    match c.phase {
        Phase::Wal => {
            fs.add_rule(rule);
            for i in 0..2000 {
                if let Err(e) = exp.put(db, key(i), value(i, 0)) {
                    return Some(e);
                }
            }
            None
        }
        Phase::Flush => {
            for i in 0..20 {
                exp.put(db, key(i), value(i, 0)).unwrap();
            }
            fs.add_rule(rule);
            db.flush().err()
        }
        Phase::ManualCompaction | Phase::AutoCompaction => {
            if c.phase == Phase::AutoCompaction {
                fs.add_rule(rule.clone());
            }
            for round in 0..2 {
                for i in (round..60).step_by(2) {
                    exp.put(db, key(i), value(i, round)).unwrap();
                }
                db.flush().unwrap();
            }
            if c.phase == Phase::AutoCompaction {
                return None;
            }
            fs.add_rule(rule);
            db.compact_range().err()
        }
    }
}

fn run(c: &Case, error: FaultError) {
    let what = format!("{c:?} {error:?}");
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let compaction = c.phase != Phase::ManualCompaction;
    let mut exp = Expect::default();
    let rule = FaultRule {
        op: c.op,
        path_contains: c.path.map(str::to_string),
        error,
        skip: c.skip,
        times: None,
    };
    {
        let db = Db::open(dir.path(), opts(&fs, compaction)).unwrap();
        let reported = workload(&db, &fs, c, rule, &mut exp);
        if c.phase != Phase::AutoCompaction {
            let e = reported.unwrap_or_else(|| panic!("{what}: no call failed"));
            assert!(e.to_string().contains(os_code(error)), "{what}: {e}");
        }
        let bg = wait_for_background_error(&db);
        assert!(fs.injected() > 0, "{what}: the fault never fired");
        let msg = bg.to_string();
        assert!(
            msg.contains(os_code(error)),
            "{what}: background error {msg}"
        );
        if let Some(p) = c.path {
            assert!(
                msg.contains(p),
                "{what}: background error does not name the file: {msg}"
            );
        } else {
            assert!(
                msg.contains(&*dir.path().to_string_lossy()),
                "{what}: background error does not name the directory: {msg}"
            );
        }
        // Read-only from now on, with that error; reads still work.
        match db.put(b"after", b"fault") {
            Err(Error::ReadOnly(inner)) => assert_eq!(inner.to_string(), msg, "{what}"),
            other => panic!("{what}: a write after the fault returned {other:?}"),
        }
        assert!(matches!(db.flush(), Err(Error::ReadOnly(_))), "{what}");
        exp.check(&db, &format!("{what}, read-only store"));
    }
    fs.clear_rules();
    let db = Db::open(dir.path(), opts(&fs, compaction)).unwrap();
    exp.check(&db, &format!("{what}, reopened"));
    exp.put(&db, b"after".to_vec(), b"reopen".to_vec()).unwrap();
    db.compact_range().unwrap();
    exp.check(&db, &format!("{what}, reopened and compacted"));
}

#[test]
fn eio_anywhere_makes_the_store_read_only_and_loses_no_acknowledged_write() {
    for c in CASES {
        run(c, FaultError::Eio);
    }
}

#[test]
fn enospc_anywhere_makes_the_store_read_only_and_loses_no_acknowledged_write() {
    for c in CASES {
        run(c, FaultError::Enospc);
    }
}

#[test]
fn failed_rename_of_current_fails_the_open_naming_the_file_and_a_retry_succeeds() {
    for error in [FaultError::Eio, FaultError::Enospc] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let mut exp = Expect::default();
        {
            let db = Db::open(dir.path(), opts(&fs, true)).unwrap();
            for i in 0..300 {
                exp.put(&db, key(i), value(i, 0)).unwrap();
            }
        }
        // Every open writes a new manifest and points CURRENT at it by rename.
        fs.add_rule(FaultRule::always(FaultOp::Rename, error).on_path("CURRENT"));
        let e = Db::open(dir.path(), opts(&fs, true)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("CURRENT") && msg.contains(os_code(error)),
            "{msg}"
        );
        fs.clear_rules();
        let db = Db::open(dir.path(), opts(&fs, true)).unwrap();
        exp.check(&db, "after a failed rename");
    }
}

#[test]
fn failed_directory_creation_fails_the_open_naming_the_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let fs = FaultFs::new();
    fs.add_rule(FaultRule::always(FaultOp::CreateDir, FaultError::Enospc));
    let e = Db::open(&dir, opts(&fs, true)).unwrap_err();
    assert!(e.to_string().contains("store"), "{e}");
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::StorageFull));
    fs.clear_rules();
    Db::open(&dir, opts(&fs, true)).unwrap();
}

#[test]
fn a_fault_that_fires_once_still_leaves_the_store_read_only_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), opts(&fs, true)).unwrap();
    db.put(b"a", b"1").unwrap();
    fs.add_rule(
        FaultRule::always(FaultOp::Sync, FaultError::Eio)
            .on_path(".wal")
            .times(1),
    );
    assert!(db.put(b"b", b"2").is_err());
    // The fault is gone, but a log whose fsync failed is never trusted again.
    assert!(matches!(db.put(b"c", b"3"), Err(Error::ReadOnly(_))));
    drop(db);
    let db = Db::open(dir.path(), opts(&fs, true)).unwrap();
    assert_eq!(db.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.get(b"c").unwrap(), None);
}

mod checkpoint {
    //! Faults while a checkpoint places its files and writes `_metadata`, and while
    //! retention deletes old checkpoints.

    use super::store_checkpoint::checkpoint_db;
    use super::*;
    use std::path::Path;
    use tidemark::checkpoint::CompletedCheckpoint;
    use tidemark::checkpoint::{
        resolve_verified, CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore, JobId,
        KeyGroupRange, LocalStorage,
    };
    use tidemark::fs::StdFs;
    use tidemark::state::lsm_snapshot::{restore_store, SubtaskId};

    const JOB: &str = "faultjob";

    /// Takes incremental checkpoint `id` of `db`.
    fn take(store: &CheckpointStore, db: &Db, id: u64) -> tidemark::Result<CompletedCheckpoint> {
        checkpoint_db(
            store,
            CheckpointId(id),
            CheckpointKind::Incremental,
            db,
            &subtask(),
            vec![],
        )
    }

    fn subtask() -> SubtaskId {
        SubtaskId {
            operator_id: "op".into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: KeyGroupRange::new(0, 127).unwrap(),
        }
    }

    fn job_store(fs: &Arc<FaultFs>, root: &Path, retained: usize) -> CheckpointStore {
        let storage = LocalStorage::new(fs.clone(), root, JobId::new(JOB).unwrap());
        let config = CheckpointConfig {
            num_retained: retained,
            ..CheckpointConfig::default()
        };
        CheckpointStore::open(Arc::new(storage), config).unwrap()
    }

    fn contents(db: &Db) -> Model {
        db.scan::<&[u8]>(..).unwrap().map(|r| r.unwrap()).collect()
    }

    fn write_round(db: &Db, round: u32) {
        for i in (round * 7..round * 7 + 200).step_by(3) {
            db.put(key(i), value(i, round)).unwrap();
        }
    }

    fn restored(root: &Path, chk: &str, target: &Path) -> Model {
        let path = root.join(JOB).join(chk);
        let r = resolve_verified(StdFs::shared(), &path, false).unwrap();
        let storage = r.storage(StdFs::shared());
        let db = restore_store(
            &storage,
            r.checkpoint_id,
            &r.metadata.operator_states[0],
            target,
            Options::default(),
        )
        .unwrap();
        contents(&db)
    }

    #[test]
    fn a_fault_while_checkpointing_fails_that_checkpoint_only() {
        let cases = [
            (FaultOp::Link, "shared"),
            (FaultOp::Create, "chk-2"),
            (FaultOp::Sync, "chk-2"),
            (FaultOp::SyncDir, JOB),
            (FaultOp::Rename, "_metadata"),
        ];
        for (op, path) in cases {
            for error in [FaultError::Eio, FaultError::Enospc] {
                let what = format!("{op:?} {error:?} on {path}");
                let root = tempfile::tempdir().unwrap();
                let fs = FaultFs::new();
                let store = job_store(&fs, root.path(), 3);
                let db = Db::open(root.path().join("db"), opts(&fs, true)).unwrap();
                write_round(&db, 1);
                take(&store, &db, 1).unwrap();
                let state1 = contents(&db);

                write_round(&db, 2);
                fs.add_rule(FaultRule::always(op, error).on_path(path));
                let e = take(&store, &db, 2).map(|_| ()).unwrap_err();
                let msg = e.to_string();
                assert!(msg.contains(os_code(error)), "{what}: {msg}");
                assert!(fs.injected() > 0, "{what}");
                fs.clear_rules();
                // The failed checkpoint does not exist; the earlier one is intact.
                let ids: Vec<_> = store.list().iter().map(|c| c.id).collect();
                assert_eq!(ids, vec![CheckpointId(1)], "{what}");
                assert!(
                    !root.path().join(JOB).join("chk-2/_metadata").exists(),
                    "{what}"
                );
                // The store itself is unaffected (the fault hit checkpoint files only).
                db.put(b"after", b"fault").unwrap();
                take(&store, &db, 3).unwrap();
                let state3 = contents(&db);
                assert_eq!(
                    restored(root.path(), "chk-1", &root.path().join("r1")),
                    state1,
                    "{what}"
                );
                assert_eq!(
                    restored(root.path(), "chk-3", &root.path().join("r3")),
                    state3,
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn a_failed_deletion_in_retention_is_reported_and_the_new_checkpoint_stands() {
        for error in [FaultError::Eio, FaultError::Enospc] {
            let root = tempfile::tempdir().unwrap();
            let fs = FaultFs::new();
            let store = job_store(&fs, root.path(), 1);
            let db = Db::open(root.path().join("db"), opts(&fs, true)).unwrap();
            write_round(&db, 1);
            take(&store, &db, 1).unwrap();
            db.compact_range().unwrap();
            write_round(&db, 2);
            fs.add_rule(FaultRule::always(FaultOp::Remove, error).on_path(JOB));
            let done = take(&store, &db, 2).unwrap();
            assert!(fs.injected() > 0);
            assert!(!done.retention.errors.is_empty(), "{:?}", done.retention);
            assert!(
                done.retention.errors.iter().all(|e| e.contains(JOB)),
                "retention errors must name what they could not delete: {:?}",
                done.retention.errors
            );
            let state2 = contents(&db);
            fs.clear_rules();
            assert_eq!(
                restored(root.path(), "chk-2", &root.path().join("r2")),
                state2
            );
            // A later open of the checkpoint store cleans up what retention left behind.
            drop(store);
            let reopened = job_store(&fs, root.path(), 1);
            let ids: Vec<_> = reopened.list().iter().map(|c| c.id).collect();
            assert_eq!(ids, vec![CheckpointId(2)]);
            assert!(!root.path().join(JOB).join("chk-1").exists());
            assert_eq!(reopened.orphans().unwrap(), Vec::<String>::new());
            assert_eq!(
                restored(root.path(), "chk-2", &root.path().join("r2b")),
                state2
            );
        }
    }
}
