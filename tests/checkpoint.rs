//! Incremental checkpoints of an LSM store: what each checkpoint places, retention,
//! restore from every kind of path, damaged checkpoints, and SIGKILL during checkpointing
//! and cleanup.

#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use store_checkpoint::checkpoint_db;
use tidemark::checkpoint::CompletedCheckpoint;
use tidemark::checkpoint::{
    resolve, resolve_verified, CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore,
    JobId, KeyGroupRange, LocalStorage, RestoreMode, SourceOffset,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, Options, SyncMode};
use tidemark::state::lsm_snapshot::{restore_store, SubtaskId};
use tidemark::Error;

fn opts() -> Options {
    Options {
        memtable_size_bytes: 32 << 10,
        target_file_size_bytes: 32 << 10,
        max_bytes_for_level_base: 128 << 10,
        sync: SyncMode::None,
        wal: false,
        ..Options::default()
    }
}

fn subtask() -> SubtaskId {
    SubtaskId {
        operator_id: "counter".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).unwrap(),
    }
}

fn job_store(root: &Path, job: &str, retained: usize) -> CheckpointStore {
    let storage = LocalStorage::new(StdFs::shared(), root, JobId::new(job).unwrap());
    CheckpointStore::open(
        Arc::new(storage),
        CheckpointConfig {
            num_retained: retained,
            ..CheckpointConfig::default()
        },
    )
    .unwrap()
}

fn key(i: u64) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v = format!("{i}:{round}:").into_bytes();
    v.resize(100, b'.');
    v
}

fn dump(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.scan::<&[u8]>(..).unwrap().map(|r| r.unwrap()).collect()
}

fn offsets(n: u64) -> Vec<SourceOffset> {
    vec![SourceOffset {
        source: "generator".into(),
        split: "0".into(),
        offset: n,
    }]
}

/// Shared paths and the private manifest size of a completed checkpoint.
/// Takes incremental checkpoint `id` of `db`, recording the source at `offset`.
fn take(store: &CheckpointStore, db: &Db, id: u64, offset: u64) -> CompletedCheckpoint {
    checkpoint_db(
        store,
        CheckpointId(id),
        CheckpointKind::Incremental,
        db,
        &subtask(),
        offsets(offset),
    )
    .unwrap()
}

fn handles(c: &tidemark::checkpoint::CompletedCheckpoint) -> (HashSet<String>, u64, u64) {
    let mut shared = HashSet::new();
    let (mut shared_bytes, mut private_bytes) = (0, 0);
    for h in c.metadata.file_handles() {
        if h.path.starts_with("shared/") {
            shared.insert(h.path.clone());
            shared_bytes += h.size;
        } else {
            private_bytes += h.size;
        }
    }
    (shared, shared_bytes, private_bytes)
}

#[test]
fn incremental_checkpoint_links_only_new_ssts() {
    let dir = tempfile::tempdir().unwrap();
    // No background compaction: the file set changes only by the flushes below.
    let o = Options {
        compaction: false,
        ..opts()
    };
    let db = Db::open(dir.path().join("db"), o).unwrap();
    let store = job_store(&dir.path().join("chk"), "job1", 3);
    for i in 0..5000 {
        db.put(key(i), value(i, 0)).unwrap();
    }
    let c1 = take(&store, &db, 1, 5000);
    let (shared1, bytes1, _) = handles(&c1);
    let s1 = c1.stats;
    assert!(shared1.len() > 3);
    assert_eq!(s1.files_referenced, 0);
    assert_eq!(
        s1.files_placed as usize,
        shared1.len() + 1,
        "every SST plus the manifest snapshot"
    );
    assert_eq!(s1.files_linked as usize, shared1.len());
    assert_eq!(s1.files_copied, 0);

    // A small change: 1% of the keys.
    for i in (0..5000).step_by(100) {
        db.put(key(i), value(i, 1)).unwrap();
    }
    let c2 = take(&store, &db, 2, 5050);
    let (shared2, bytes2, manifest2) = handles(&c2);
    let new: Vec<_> = shared2.difference(&shared1).collect();
    assert_eq!(new.len(), 1, "one flush, one new SST: {new:?}");
    assert!(shared1.is_subset(&shared2));
    let s2 = c2.stats;
    assert_eq!(s2.files_placed, 2, "the new SST and the manifest snapshot");
    assert_eq!(s2.files_referenced as usize, shared1.len());
    assert_eq!(s2.bytes_referenced, bytes1);
    assert_eq!(s2.bytes_placed, bytes2 - bytes1 + manifest2);
    assert!(
        s2.bytes_placed * 20 < bytes2,
        "placed {} of {bytes2}",
        s2.bytes_placed
    );
}

#[test]
fn retention_keeps_referenced_files_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db"), opts()).unwrap();
    let root = dir.path().join("chk");
    let store = job_store(&root, "job1", 2);
    for round in 0..5u64 {
        for i in 0..2000 {
            if i % 3 == round % 3 {
                db.put(key(i), value(i, round)).unwrap();
            }
        }
        db.compact_range().unwrap();
        take(&store, &db, round + 1, round);
    }
    let job = root.join("job1");
    let mut chks: Vec<_> = fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("chk-"))
        .collect();
    chks.sort();
    assert_eq!(chks, ["chk-4", "chk-5"]);
    // Every file in shared/ is referenced by a retained checkpoint, and every reference exists.
    let mut referenced = HashSet::new();
    for c in &chks {
        let r = resolve(&StdFs, &job.join(c)).unwrap();
        for h in r.metadata.file_handles() {
            assert!(job.join(&h.path).exists(), "{}", h.path);
            referenced.insert(h.path.clone());
        }
        assert!(r.verify(StdFs::shared()).is_ok());
    }
    for e in fs::read_dir(job.join("shared")).unwrap() {
        let name = format!("shared/{}", e.unwrap().file_name().to_string_lossy());
        assert!(
            referenced.contains(&name),
            "unreferenced shared file {name} was kept"
        );
    }
    assert!(store.orphans().unwrap().is_empty());
}

fn build_three_checkpoints(root: &Path) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let db_dir = root.join("db");
    let db = Db::open(&db_dir, opts()).unwrap();
    let store = job_store(&root.join("chk"), "job1", 3);
    let mut states = Vec::new();
    for round in 0..3u64 {
        for i in 0..1500 {
            db.put(key(i * (round + 1)), value(i, round)).unwrap();
        }
        db.delete(key(7)).unwrap();
        take(&store, &db, round + 1, round);
        states.push(dump(&db));
    }
    // Writes after the last checkpoint are not in any checkpoint.
    db.put(b"after", b"x").unwrap();
    states
}

fn restore_from(path: &Path, target: &Path) -> Db {
    let r = resolve_verified(StdFs::shared(), path, false).unwrap();
    let storage = r.storage(StdFs::shared());
    restore_store(
        &storage,
        r.checkpoint_id,
        &r.metadata.operator_states[0],
        target,
        opts(),
    )
    .unwrap()
}

#[test]
fn restore_gives_exactly_the_state_at_the_checkpoint_for_every_path_form() {
    let dir = tempfile::tempdir().unwrap();
    let states = build_three_checkpoints(dir.path());
    let job = dir.path().join("chk/job1");
    let forms: Vec<(PathBuf, usize)> = vec![
        (job.clone(), 2),                 // latest
        (job.join("chk-2/_metadata"), 1), // a _metadata file
        (job.join("chk-1"), 0),           // a chk-N directory
    ];
    for (n, (path, idx)) in forms.into_iter().enumerate() {
        let target = dir.path().join(format!("restored{n}"));
        let db = restore_from(&path, &target);
        assert_eq!(dump(&db), states[idx], "restore from {}", path.display());
        assert_eq!(db.get(b"after").unwrap(), None);
        // The restored store is a working store: it takes writes and reopens.
        db.put(b"new", b"1").unwrap();
        db.close().unwrap();
        let db = Db::open(&target, opts()).unwrap();
        assert_eq!(db.get(b"new").unwrap(), Some(b"1".to_vec()));
    }
}

#[test]
fn restore_links_files_instead_of_copying() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    build_three_checkpoints(dir.path());
    let target = dir.path().join("restored");
    let db = restore_from(&dir.path().join("chk/job1"), &target);
    let live = db.live_files().unwrap();
    assert!(!live.files().is_empty());
    for f in live.files() {
        assert!(
            fs::metadata(&f.path).unwrap().nlink() >= 2,
            "{} was copied",
            f.name
        );
    }
}

#[test]
fn no_claim_restore_takes_a_full_first_checkpoint_and_never_touches_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    build_three_checkpoints(dir.path());
    let old_job = dir.path().join("chk/job1");
    let r = resolve(&StdFs, &old_job).unwrap();
    let before: Vec<_> = fs::read_dir(old_job.join("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let db = restore_from(&old_job, &dir.path().join("restored"));
    let storage = LocalStorage::new(
        StdFs::shared(),
        dir.path().join("chk"),
        JobId::new("job2").unwrap(),
    );
    let store = CheckpointStore::open(
        Arc::new(storage),
        CheckpointConfig {
            num_retained: 1,
            restored: Some(r.restore_info(RestoreMode::NoClaim)),
            ..CheckpointConfig::default()
        },
    )
    .unwrap();
    for id in 1..=3 {
        db.put(format!("x{id}"), b"1").unwrap();
        let c = take(&store, &db, id, id);
        if id == 1 {
            assert_eq!(c.metadata.kind, CheckpointKind::Full);
            assert_eq!(c.stats.files_referenced, 0);
        }
    }
    let after: Vec<_> = fs::read_dir(old_job.join("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
    assert!(resolve(&StdFs, &old_job.join("chk-3"))
        .unwrap()
        .verify(StdFs::shared())
        .is_ok());
}

fn expect_error(path: &Path, needle: &str) -> Error {
    let e = match resolve_verified(StdFs::shared(), path, false) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e,
    };
    let text = match &e {
        Error::VerifyFailed { problems } => problems.join("\n"),
        other => other.to_string(),
    };
    assert!(
        text.contains(needle),
        "error {text} does not mention {needle}"
    );
    e
}

#[test]
fn damaged_checkpoints_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    build_three_checkpoints(dir.path());
    let job = dir.path().join("chk/job1");
    // Truncated _metadata.
    let m1 = job.join("chk-1/_metadata");
    let bytes = fs::read(&m1).unwrap();
    fs::write(&m1, &bytes[..bytes.len() / 2]).unwrap();
    let e = expect_error(&m1, "chk-1/_metadata");
    assert!(e.is_corruption(), "{e}");
    // A flipped bit in _metadata.
    let m2 = job.join("chk-2/_metadata");
    let mut bytes = fs::read(&m2).unwrap();
    bytes[20] ^= 4;
    fs::write(&m2, &bytes).unwrap();
    expect_error(&m2, "chk-2/_metadata");
    // A missing shared file, and a wrong crc in another.
    let r = resolve(&StdFs, &job.join("chk-3")).unwrap();
    let shared: Vec<_> = r
        .metadata
        .file_handles()
        .filter(|h| h.path.starts_with("shared/"))
        .cloned()
        .collect();
    assert!(shared.len() >= 2);
    fs::remove_file(job.join(&shared[0].path)).unwrap();
    let victim = job.join(&shared[1].path);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    fs::remove_file(&victim).unwrap(); // break the hard link before changing the bytes
    fs::write(&victim, &bytes).unwrap();
    let e = expect_error(&job.join("chk-3"), &shared[0].path);
    match e {
        Error::VerifyFailed { problems } => {
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(&shared[0].path) && p.contains("missing")),
                "{problems:?}"
            );
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(&shared[1].path) && p.contains("crc")),
                "{problems:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn path_traversal_in_metadata_is_rejected() {
    use tidemark::checkpoint::{FileHandle, FileRole, KeyedState, Metadata};
    let dir = tempfile::tempdir().unwrap();
    build_three_checkpoints(dir.path());
    let job = dir.path().join("chk/job1");
    let m = job.join("chk-3/_metadata");
    let mut meta = Metadata::read(&StdFs, &m).unwrap();
    for evil in [
        "../../etc/passwd",
        "/etc/passwd",
        "shared/../../x",
        "chk-9/file",
    ] {
        let mut bad = meta.clone();
        let KeyedState::IncrementalLsm(set) = &mut bad.operator_states[0].keyed_state[0].state
        else {
            panic!("not an LSM file set: {:?}", bad.operator_states[0]);
        };
        set.tables.push(FileHandle {
            role: FileRole::Shared,
            local_name: "000001.sst".into(),
            path: evil.into(),
            size: 1,
            crc32c: 0,
        });
        // Encode bypassing validation: the decoder must refuse it.
        let bytes = bad.encode();
        fs::write(&m, &bytes).unwrap();
        let e = resolve(&StdFs, &m).unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{evil}: {e}");
        assert!(e.to_string().contains("chk-3/_metadata"), "{e}");
    }
    meta.operator_states.clear();
}
