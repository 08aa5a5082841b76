//! A model test per state backend, through the one `StateBackend` interface: random keyed
//! operations on keys spread over the subtasks, interleaved with checkpoints (real ones, in
//! a checkpoint store) and restores from the latest checkpoint into a random parallelism,
//! against an in-memory model.

use std::collections::BTreeMap;
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
use tidemark::state::keyed::{
    KeyedState, ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor,
};

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u32),
    Clear(u16),
    MapPut(u16, u8, u32),
    MapRemove(u16, u8),
    Append(u16, u32),
    Checkpoint,
    Restore(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..200, any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u16..200).prop_map(Op::Clear),
        3 => (0u16..200, 0u8..8, any::<u32>()).prop_map(|(k, u, v)| Op::MapPut(k, u, v)),
        1 => (0u16..200, 0u8..8).prop_map(|(k, u)| Op::MapRemove(k, u)),
        2 => (0u16..200, any::<u32>()).prop_map(|(k, v)| Op::Append(k, v)),
        1 => Just(Op::Checkpoint),
        1 => (1u32..5).prop_map(Op::Restore),
    ]
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    value: BTreeMap<u16, u32>,
    map: BTreeMap<u16, BTreeMap<u8, u32>>,
    list: BTreeMap<u16, Vec<u32>>,
}

const MAX: u32 = 64;

fn info(i: u32, p: u32) -> SubtaskInfo {
    SubtaskInfo {
        operator_id: "op".into(),
        subtask_index: i,
        parallelism: p,
        max_parallelism: MaxParallelism::new(MAX).unwrap(),
    }
}

fn owner(k: u16, p: u32) -> usize {
    let m = MaxParallelism::new(MAX).unwrap();
    let kb = postcard::to_stdvec(&k).unwrap();
    m.subtask_for_key_group(p, m.key_group_of(&kb)).unwrap() as usize
}

struct Descs {
    v: ValueStateDescriptor<u32>,
    m: MapStateDescriptor<u8, u32>,
    l: ListStateDescriptor<u32>,
}

fn check(subtasks: &mut [Box<dyn CheckpointedKeyedState>], model: &Model, p: u32, d: &Descs) {
    for k in 0..200u16 {
        let mut s = KeyedState::new(subtasks[owner(k, p)].backend());
        s.set_current_key(&k).unwrap();
        assert_eq!(
            s.value(&d.v).unwrap().get().unwrap(),
            model.value.get(&k).copied()
        );
        let got: BTreeMap<u8, u32> = s.map(&d.m).unwrap().iter().unwrap().into_iter().collect();
        assert_eq!(
            got,
            model.map.get(&k).cloned().unwrap_or_default(),
            "key {k}"
        );
        assert_eq!(
            s.list(&d.l).unwrap().get().unwrap(),
            model.list.get(&k).cloned().unwrap_or_default()
        );
    }
}

fn run(backend: &dyn StateBackend, root: &Path, ops: Vec<Op>) {
    let d = Descs {
        v: ValueStateDescriptor::new("v"),
        m: MapStateDescriptor::new("m"),
        l: ListStateDescriptor::new("l"),
    };
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
        match op {
            Op::Put(k, v) => {
                let mut s = KeyedState::new(subtasks[owner(k, p)].backend());
                s.set_current_key(&k).unwrap();
                s.value(&d.v).unwrap().update(&v).unwrap();
                model.value.insert(k, v);
            }
            Op::Clear(k) => {
                let mut s = KeyedState::new(subtasks[owner(k, p)].backend());
                s.set_current_key(&k).unwrap();
                s.value(&d.v).unwrap().clear().unwrap();
                s.map(&d.m).unwrap().clear().unwrap();
                s.list(&d.l).unwrap().clear().unwrap();
                model.value.remove(&k);
                model.map.remove(&k);
                model.list.remove(&k);
            }
            Op::MapPut(k, u, v) => {
                let mut s = KeyedState::new(subtasks[owner(k, p)].backend());
                s.set_current_key(&k).unwrap();
                s.map(&d.m).unwrap().put(&u, &v).unwrap();
                model.map.entry(k).or_default().insert(u, v);
            }
            Op::MapRemove(k, u) => {
                let mut s = KeyedState::new(subtasks[owner(k, p)].backend());
                s.set_current_key(&k).unwrap();
                s.map(&d.m).unwrap().remove(&u).unwrap();
                if let Some(e) = model.map.get_mut(&k) {
                    e.remove(&u);
                    if e.is_empty() {
                        model.map.remove(&k);
                    }
                }
            }
            Op::Append(k, v) => {
                let mut s = KeyedState::new(subtasks[owner(k, p)].backend());
                s.set_current_key(&k).unwrap();
                s.list(&d.l).unwrap().add(&v).unwrap();
                model.list.entry(k).or_default().push(v);
            }
            Op::Checkpoint => {
                let snaps: Vec<_> = subtasks
                    .iter_mut()
                    .map(|s| s.snapshot_sync().unwrap())
                    .collect();
                let mut pending = store
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
                        keyed_state: snap.write(&mut pending).unwrap(),
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
        }
    }
    check(&mut subtasks, &model, p, &d);
}

fn cases() -> u32 {
    std::env::var("TIDEMARK_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn memory_backend_matches_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let tmp = tempfile::tempdir().unwrap();
        run(&MemoryStateBackend::new(), tmp.path(), ops);
    }

    #[test]
    fn filesystem_backend_matches_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let tmp = tempfile::tempdir().unwrap();
        run(&FsStateBackend::with_inline_threshold(0), tmp.path(), ops);
    }

    #[test]
    fn lsm_backend_matches_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let tmp = tempfile::tempdir().unwrap();
        let backend = LsmStateBackend::new(
            tmp.path().join("local"),
            tidemark::lsm::Options {
                memtable_size_bytes: 16 << 10,
                ..tidemark::lsm::Options::default()
            },
        );
        run(&backend, tmp.path(), ops);
    }
}
