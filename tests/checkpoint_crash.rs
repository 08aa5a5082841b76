//! SIGKILL during checkpointing and retention: a child process writes, checkpoints every
//! few hundred writes (keeping 2), and restarts from its latest checkpoint after each kill
//! (claim mode, same job directory). After every kill, each retained checkpoint must verify
//! and restore to exactly the state its source offset describes.
//!
//! `TIDEMARK_CRASH_ITERATIONS` sets the number of kills (default 12).

mod common;
#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use store_checkpoint::checkpoint_db;
use tidemark::checkpoint::{
    resolve, CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore, JobId, KeyGroupRange,
    LocalStorage, RestoreMode, SourceOffset,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, Options, SyncMode};
use tidemark::state::lsm_snapshot::{restore_store, SubtaskId};

const CHILD_ENV: &str = "TIDEMARK_CKPT_CRASH_DIR";
const KEYS: u64 = 4000;

fn opts() -> Options {
    Options {
        wal: false,
        sync: SyncMode::None,
        memtable_size_bytes: 16 << 10,
        target_file_size_bytes: 16 << 10,
        max_bytes_for_level_base: 64 << 10,
        l0_compaction_trigger: 2,
        ..Options::default()
    }
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

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(60, b'#');
    v
}

fn key(i: u64) -> Vec<u8> {
    format!("k{:06}", i % KEYS).into_bytes()
}

/// The state after writes `0..n`.
fn model(n: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in n.saturating_sub(KEYS)..n {
        m.insert(key(i), value(i));
    }
    m
}

fn open_store(root: &Path, restored: Option<tidemark::checkpoint::RestoreInfo>) -> CheckpointStore {
    let storage = LocalStorage::new(
        StdFs::shared(),
        root.join("chk"),
        JobId::new("job").unwrap(),
    );
    CheckpointStore::open(
        Arc::new(storage),
        CheckpointConfig {
            num_retained: 2,
            restored,
            ..CheckpointConfig::default()
        },
    )
    .unwrap()
}

/// The child: writes and checkpoints forever, printing `chk ID N` after each checkpoint.
/// Not a test: `retained_checkpoints_survive_sigkill` runs it as its child process.
#[test]
#[ignore = "child process of retained_checkpoints_survive_sigkill"]
fn checkpoint_crash_child() {
    let root = std::env::var(CHILD_ENV).expect(
        "checkpoint_crash_child is the child process of retained_checkpoints_survive_sigkill, \
         not a test",
    );
    let root = Path::new(&root);
    let job = root.join("chk/job");
    let latest = if job.exists() {
        resolve(&StdFs, &job).ok()
    } else {
        None
    };
    let store = open_store(
        root,
        latest.as_ref().map(|r| r.restore_info(RestoreMode::Claim)),
    );
    let work = root.join(format!("work-{}", std::process::id()));
    let (db, mut n, mut id) = match &latest {
        Some(r) => {
            let db = restore_store(
                &r.storage(StdFs::shared()),
                r.checkpoint_id,
                &r.metadata.operator_states[0],
                &work,
                opts(),
            )
            .unwrap();
            (db, r.metadata.source_offsets[0].offset, r.checkpoint_id.0)
        }
        None => (Db::open(&work, opts()).unwrap(), 0, 0),
    };
    loop {
        for _ in 0..300 {
            db.put(key(n), value(n)).unwrap();
            n += 1;
        }
        id += 1;
        let offsets = vec![SourceOffset {
            source: "gen".into(),
            split: "0".into(),
            offset: n,
        }];
        checkpoint_db(
            &store,
            CheckpointId(id),
            CheckpointKind::Incremental,
            &db,
            &subtask(),
            offsets,
        )
        .unwrap();
        println!("chk {id} {n}");
    }
}

#[test]
fn retained_checkpoints_survive_sigkill() {
    let iterations = common::crash_iterations(12);
    let dir = tempfile::tempdir().unwrap();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut completed_total = 0;
    for iteration in 0..iterations {
        common::next_seed(&mut seed);
        let mut child = common::ChildRun::spawn(
            "checkpoint_crash_child",
            &[(CHILD_ENV, dir.path().display().to_string())],
            "chk ",
        );
        // Let at least one checkpoint complete, then kill at a random moment.
        child
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("child completed no checkpoint");
        std::thread::sleep(Duration::from_millis(seed % 250));
        child.kill();
        let rx = &child.lines;
        completed_total += 1 + rx.try_iter().count();

        // Before any cleanup: every checkpoint that has a _metadata verifies and restores.
        let job = dir.path().join("chk/job");
        let mut found = 0;
        for name in std::fs::read_dir(&job)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
        {
            if !name.starts_with("chk-") || !job.join(&name).join("_metadata").exists() {
                continue;
            }
            found += 1;
            let r = resolve(&StdFs, &job.join(&name)).unwrap();
            let report = r.verify(StdFs::shared());
            assert!(
                report.is_ok(),
                "iteration {iteration}: {name} fails verify: {:?}",
                report.problems
            );
            let target = dir.path().join(format!("check-{iteration}-{name}"));
            let db = restore_store(
                &r.storage(StdFs::shared()),
                r.checkpoint_id,
                &r.metadata.operator_states[0],
                &target,
                opts(),
            )
            .unwrap();
            let n = r.metadata.source_offsets[0].offset;
            let got: BTreeMap<_, _> = db
                .scan::<&[u8]>(..)
                .unwrap()
                .map(|kv| kv.unwrap())
                .collect();
            assert_eq!(
                got,
                model(n),
                "iteration {iteration}: {name} does not hold the state at offset {n}"
            );
            drop(db);
            std::fs::remove_dir_all(&target).unwrap();
        }
        assert!(found >= 1, "iteration {iteration}: no retained checkpoint");
        // Opening the store cleans what the crash left and leaves no orphans.
        let latest = resolve(&StdFs, &job).unwrap();
        let store = open_store(dir.path(), Some(latest.restore_info(RestoreMode::Claim)));
        assert!(
            store.orphans().unwrap().is_empty(),
            "iteration {iteration}: orphans after open"
        );
        assert!(store.list().len() <= 2);
        drop(store);
        // Old working directories of killed children are the job's business, not the test's.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("work-")
            {
                std::fs::remove_dir_all(p).unwrap();
            }
        }
    }
    assert!(completed_total >= iterations as usize);
}
