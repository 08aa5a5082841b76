//! A model test per state backend, through the one `StateBackend` interface: random keyed
//! operations on keys spread over the subtasks, interleaved with checkpoints (real ones, in
//! a checkpoint store) and restores from the latest checkpoint into a random parallelism,
//! against an in-memory model.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use tidemark::checkpoint::{
    resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
    CheckpointStore, JobId, LocalStorage, OperatorSubtaskState,
};
use tidemark::fs::StdFs;
use tidemark::state::backend::{
    CheckpointedKeyedState, FsStateBackend, LsmStateBackend, MemoryStateBackend, RestoreFrom,
    StateBackend, SubtaskInfo,
};
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::KeyedStateBackend;

#[path = "common/state_model.rs"]
mod state_model;
use state_model::{op, owner, Descs, Model, Op, MAX};

fn info(i: u32, p: u32) -> SubtaskInfo {
    SubtaskInfo {
        operator_id: "op".into(),
        subtask_index: i,
        parallelism: p,
        max_parallelism: MaxParallelism::new(MAX).unwrap(),
    }
}

fn run(backend: &dyn StateBackend, root: &Path, ops: Vec<Op>) {
    let d = Descs::default();
    let storage = LocalStorage::new(
        StdFs::shared(),
        root.join("ckpt"),
        JobId::new("job").unwrap(),
    );
    let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap();
    let mut p = 2u32;
    let mut subtasks: Vec<Box<dyn CheckpointedKeyedState>> = (0..p)
        .map(|i| backend.keyed_state(&info(i, p), None).unwrap())
        .collect();
    let mut model = Model::default();
    let mut last: Option<Model> = None;
    let mut next_id = 1u64;
    for op in ops {
        let owner = owner(op.key(), p);
        if model.apply(&op, subtasks[owner].backend(), &d) {
            continue;
        }
        match op {
            Op::Snapshot => {
                let snaps: Vec<_> = subtasks
                    .iter_mut()
                    .map(|s| s.snapshot_sync().unwrap())
                    .collect();
                let pending = store
                    .begin(CheckpointId(next_id), CheckpointKind::Incremental)
                    .unwrap();
                let mut states = Vec::new();
                for (i, snap) in snaps.into_iter().enumerate() {
                    let i = i as u32;
                    states.push(OperatorSubtaskState {
                        operator_id: "op".into(),
                        subtask_index: i,
                        parallelism: p,
                        max_parallelism: MAX,
                        key_groups: info(i, p).key_groups().unwrap(),
                        keyed_state: snap.write(&pending).unwrap(),
                        operator_state: Vec::new(),
                    });
                }
                pending
                    .commit(CheckpointContent {
                        operator_states: states,
                        source_offsets: Vec::new(),
                        properties: Vec::new(),
                    })
                    .unwrap();
                next_id += 1;
                last = Some(model.clone());
            }
            Op::Restore(new_p) => {
                if let Some(snap_model) = &last {
                    // The old subtasks are gone, as after a failure.
                    subtasks.clear();
                    let r =
                        resolve_verified(StdFs::shared(), &root.join("ckpt/job"), false).unwrap();
                    let st = r.storage(StdFs::shared());
                    let from = RestoreFrom {
                        checkpoint_id: r.checkpoint_id,
                        storage: &st,
                        subtasks: &r.metadata.operator_states,
                    };
                    subtasks = (0..new_p)
                        .map(|i| backend.keyed_state(&info(i, new_p), Some(from)).unwrap())
                        .collect();
                    p = new_p;
                    model = snap_model.clone();
                }
            }
            _ => {}
        }
    }
    let mut views: Vec<&mut dyn KeyedStateBackend> =
        subtasks.iter_mut().map(|s| s.backend()).collect();
    model.check(200, &mut views, &d);
}

fn cases() -> u32 {
    std::env::var("TIDEMARK_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// An lsm backend under `root` whose stores flush often (16 KiB memtables).
fn small_lsm(root: &std::path::Path) -> LsmStateBackend {
    LsmStateBackend::new(
        root.join("local"),
        tidemark::lsm::Options {
            memtable_size_bytes: 16 << 10,
            ..tidemark::lsm::Options::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn memory_backend_matches_the_model(ops in proptest::collection::vec(op(200, 8), 1..200)) {
        let tmp = tempfile::tempdir().unwrap();
        run(&MemoryStateBackend::new(), tmp.path(), ops);
    }

    #[test]
    fn filesystem_backend_matches_the_model(ops in proptest::collection::vec(op(200, 8), 1..200)) {
        let tmp = tempfile::tempdir().unwrap();
        run(&FsStateBackend::with_inline_threshold(0), tmp.path(), ops);
    }

    #[test]
    fn lsm_backend_matches_the_model(ops in proptest::collection::vec(op(200, 8), 1..200)) {
        let tmp = tempfile::tempdir().unwrap();
        run(&small_lsm(tmp.path()), tmp.path(), ops);
    }

    /// A row cache of a few rows: changed rows leave it (and reach the store) between
    /// every two operations, snapshots and restores included.
    #[test]
    fn lsm_backend_with_a_tiny_row_cache_matches_the_model(
        ops in proptest::collection::vec(op(200, 8), 1..200)
    ) {
        let tmp = tempfile::tempdir().unwrap();
        run(&small_lsm(tmp.path()).with_row_cache(600), tmp.path(), ops);
    }
}
