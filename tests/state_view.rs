//! The state layer's read-only views of a checkpoint, through the public API: what each
//! keyed-state handle holds (a store's file set for the `lsm` backend, key groups for the
//! heap backends), and key lookups in the stores where their files lie.

#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::path::Path;
use std::sync::Arc;

use store_checkpoint::checkpoint_db;
use tidemark::checkpoint::{
    resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
    CheckpointStore, JobId, KeyGroupRange, LocalStorage, OperatorSubtaskState,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, Options};
use tidemark::state::backend::{MemoryStateBackend, StateBackend, SubtaskInfo};
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{KeyedState, ValueStateDescriptor};
use tidemark::state::lsm_snapshot::SubtaskId;
use tidemark::state::view::{keyed_contents, store_described_by, KeyedContents, KeyedStateView};

fn job(root: &Path) -> CheckpointStore {
    let storage = LocalStorage::new(StdFs::shared(), root, JobId::new("job").unwrap());
    CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap()
}

fn subtask(index: u32) -> SubtaskId {
    SubtaskId {
        operator_id: "op".into(),
        subtask_index: index,
        parallelism: 2,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(index * 64, index * 64 + 63).unwrap(),
    }
}

#[test]
fn a_store_checkpoint_is_looked_up_by_key_and_described() {
    let tmp = tempfile::tempdir().unwrap();
    let store = job(tmp.path());
    let opts = Options {
        memtable_size_bytes: 16 << 10,
        ..Options::default()
    };
    // Two subtasks' stores in one checkpoint: `a` only in the first, `b` in the second,
    // `gone` deleted in the second.
    let db0 = Db::open(tmp.path().join("db0"), opts.clone()).unwrap();
    let db1 = Db::open(tmp.path().join("db1"), opts).unwrap();
    for i in 0..300 {
        db0.put(format!("fill{i:03}"), "x".repeat(40)).unwrap();
    }
    db0.put("a", "1").unwrap();
    db1.put("gone", "soon").unwrap();
    db1.flush().unwrap();
    db1.delete("gone").unwrap();
    db1.put("b", "2").unwrap();
    let pending = store
        .begin(CheckpointId(1), CheckpointKind::Incremental)
        .unwrap();
    let mut states = Vec::new();
    for (i, db) in [&db0, &db1].into_iter().enumerate() {
        let ticket = tidemark::state::lsm_snapshot::snapshot_sync(db).unwrap();
        states.push(
            tidemark::state::lsm_snapshot::snapshot_async(ticket, &pending, &subtask(i as u32))
                .unwrap(),
        );
    }
    pending
        .commit(CheckpointContent {
            operator_states: states,
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .unwrap();
    db0.put("a", "after").unwrap();

    let r = resolve_verified(StdFs::shared(), &tmp.path().join("job"), false).unwrap();
    let storage = r.storage(StdFs::shared());
    let view = KeyedStateView::open(&storage, &r.metadata_path, &r.metadata).unwrap();
    let a = view.get(b"a").unwrap();
    assert_eq!(a.value.as_deref(), Some(&b"1"[..]));
    assert_eq!(a.subtask.as_deref(), Some("op_0"));
    assert!(a
        .file
        .as_ref()
        .unwrap()
        .starts_with(tmp.path().join("job/shared")));
    let b = view.get(b"b").unwrap();
    assert_eq!(
        (b.value.as_deref(), b.subtask.as_deref()),
        (Some(&b"2"[..]), Some("op_1"))
    );
    let gone = view.get(b"gone").unwrap();
    assert!(gone.deleted && gone.value.is_none());
    assert_eq!(gone.level, Some(0));
    let none = view.get(b"never").unwrap();
    assert_eq!((none.value, none.deleted, none.file), (None, false, None));

    for s in &r.metadata.operator_states {
        for h in &s.keyed_state {
            let KeyedContents::Store(set) = keyed_contents(&storage, h).unwrap() else {
                panic!("an lsm handle holds a store");
            };
            assert!(!set.tables().is_empty());
            let manifest = &h.file_handles().last().unwrap().path;
            let (found, fh) = store_described_by(&r.metadata, manifest).unwrap();
            assert_eq!((found.subtask_index, fh), (s.subtask_index, h));
        }
    }
    assert!(store_described_by(&r.metadata, "chk-1/none.manifest").is_none());

    // A damaged description is an error naming its file, for both views.
    let h = &r.metadata.operator_states[1].keyed_state[0];
    let manifest = tmp
        .path()
        .join("job")
        .join(&h.file_handles().last().unwrap().path);
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&manifest, &bytes).unwrap();
    let e = keyed_contents(&storage, h).unwrap_err();
    assert!(e.to_string().contains(manifest.to_str().unwrap()), "{e}");
    let e = view.get(b"b").unwrap_err();
    assert!(e.to_string().contains(manifest.to_str().unwrap()), "{e}");
    // The first subtask's store still answers.
    assert_eq!(view.get(b"a").unwrap().value.as_deref(), Some(&b"1"[..]));
}

#[test]
fn heap_state_holds_key_groups_and_no_store_to_search() {
    let tmp = tempfile::tempdir().unwrap();
    let store = job(tmp.path());
    let backend = MemoryStateBackend::new();
    let info = SubtaskInfo {
        operator_id: "op".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: MaxParallelism::default(),
    };
    let mut keyed = backend.keyed_state(&info, None).unwrap();
    let mut s = KeyedState::new(keyed.backend());
    s.set_current_key(&7u32).unwrap();
    s.value(&ValueStateDescriptor::<u64>::new("count"))
        .unwrap()
        .update(&1)
        .unwrap();
    let snap = keyed.snapshot_sync().unwrap();
    let pending = store.begin(CheckpointId(1), CheckpointKind::Full).unwrap();
    let keyed_state = snap.write(&pending).unwrap();
    pending
        .commit(CheckpointContent {
            operator_states: vec![OperatorSubtaskState {
                operator_id: "op".into(),
                subtask_index: 0,
                parallelism: 1,
                max_parallelism: 128,
                key_groups: info.key_groups().unwrap(),
                keyed_state,
                operator_state: Vec::new(),
            }],
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .unwrap();
    let r = resolve_verified(StdFs::shared(), &tmp.path().join("job"), false).unwrap();
    let storage = r.storage(StdFs::shared());
    let h = &r.metadata.operator_states[0].keyed_state[0];
    assert!(matches!(
        keyed_contents(&storage, h).unwrap(),
        KeyedContents::KeyGroups
    ));
    let e = KeyedStateView::open(&storage, &r.metadata_path, &r.metadata).unwrap_err();
    assert!(e.to_string().contains("backend memory"), "{e}");

    // A plain store's checkpoint in another job: searchable.
    let other = tmp.path().join("other");
    let store = job(&other);
    let db = Db::open(tmp.path().join("db"), Options::default()).unwrap();
    db.put("k", "v").unwrap();
    checkpoint_db(
        &store,
        CheckpointId(1),
        CheckpointKind::Incremental,
        &db,
        &SubtaskId {
            operator_id: "op".into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: KeyGroupRange::new(0, 127).unwrap(),
        },
        Vec::new(),
    )
    .unwrap();
    let r = resolve_verified(StdFs::shared(), &other.join("job"), false).unwrap();
    let storage = r.storage(StdFs::shared());
    let view = KeyedStateView::open(&storage, &r.metadata_path, &r.metadata).unwrap();
    assert_eq!(view.get(b"k").unwrap().value.as_deref(), Some(&b"v"[..]));
}
