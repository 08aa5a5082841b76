//! The state backends (`memory`, `filesystem`, `lsm`) through the one `StateBackend`
//! interface and a real checkpoint: keyed and operator state of three subtasks
//! checkpointed (the synchronous part copies nothing: writes after it are not in the
//! checkpoint), `_metadata` written and resolved, and every subtask restored into 1, 2 and
//! 4 subtasks, the heap ones also into the other heap backend; the memory backend's size
//! limit.

use std::path::Path;
use std::sync::Arc;

use tidemark::checkpoint::{
    resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
    CheckpointStore, JobId, KeyedState as Handle, LocalStorage, OperatorSubtaskState, StateData,
};
use tidemark::fs::StdFs;
use tidemark::state::backend::{
    FsStateBackend, LsmStateBackend, MemoryStateBackend, RestoreFrom, StateBackend, SubtaskInfo,
};
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{
    KeyedState, ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor,
};
use tidemark::state::operator::Redistribution;

const OP: &str = "counter";
const KEYS: u32 = 2000;

fn info(index: u32, parallelism: u32) -> SubtaskInfo {
    SubtaskInfo {
        operator_id: OP.into(),
        subtask_index: index,
        parallelism,
        max_parallelism: MaxParallelism::default(),
    }
}

fn count() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("count")
}
fn seen() -> MapStateDescriptor<u32, String> {
    MapStateDescriptor::new("seen")
}
fn offsets() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new("offsets")
}
fn names() -> ListStateDescriptor<String> {
    ListStateDescriptor::new("names")
}

fn owner(k: u32, p: u32) -> u32 {
    let m = MaxParallelism::default();
    let kb = postcard::to_stdvec(&k).unwrap();
    m.subtask_for_key_group(p, m.key_group_of(&kb)).unwrap()
}

fn job(root: &Path) -> CheckpointStore {
    let storage = LocalStorage::new(StdFs::shared(), root, JobId::new("job").unwrap());
    CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap()
}

/// Runs three subtasks of `backend`, checkpoints them as checkpoint 1, then keeps writing.
fn checkpoint_three(backend: &dyn StateBackend, root: &Path) -> tidemark::Result<()> {
    let store = job(root);
    let pending = store.begin(CheckpointId(1), CheckpointKind::Full)?;
    let mut states = Vec::new();
    let mut afterwards = Vec::new();
    for i in 0..3 {
        let info = info(i, 3);
        let mut keyed = backend.keyed_state(&info, None)?;
        let mut ops = backend.operator_state(&info, None)?;
        {
            let mut s = KeyedState::new(keyed.backend());
            for k in (0..KEYS).filter(|&k| owner(k, 3) == i) {
                s.set_current_key(&k)?;
                s.value(&count())?.update(&u64::from(k * 3))?;
                s.map(&seen())?.put(&k, &format!("k{k}"))?;
            }
        }
        ops.list(&offsets(), Redistribution::SplitDistribute)?
            .update(&[u64::from(i) * 10, u64::from(i) * 10 + 1])?;
        ops.list(&names(), Redistribution::Union)?
            .add(&format!("subtask-{i}"))?;
        // The synchronous part, then writes that the checkpoint must not see.
        let snap = keyed.snapshot_sync()?;
        let op_snap = ops.snapshot();
        {
            let mut s = KeyedState::new(keyed.backend());
            for k in (0..KEYS).filter(|&k| owner(k, 3) == i) {
                s.set_current_key(&k)?;
                s.value(&count())?.update(&999_999)?;
            }
        }
        ops.list(&offsets(), Redistribution::SplitDistribute)?
            .add(&777)?;
        let keyed_state = snap.write(&pending)?;
        let operator_state = backend.write_operator_state(&info, &op_snap, &pending)?;
        states.push(OperatorSubtaskState {
            operator_id: OP.into(),
            subtask_index: i,
            parallelism: 3,
            max_parallelism: 128,
            key_groups: info.key_groups()?,
            keyed_state,
            operator_state,
        });
        afterwards.push(keyed);
    }
    pending.commit(CheckpointContent {
        operator_states: states,
        source_offsets: Vec::new(),
        properties: Vec::new(),
    })?;
    Ok(())
}

/// Restores checkpoint 1 of `root` with `backend` into `p` subtasks and checks every key.
fn restore_and_check(backend: &dyn StateBackend, root: &Path, p: u32) {
    let r = resolve_verified(StdFs::shared(), &root.join("job"), false).unwrap();
    let storage = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &r.metadata.operator_states,
    };
    let mut all_offsets = Vec::new();
    for i in 0..p {
        let info = info(i, p);
        let mut keyed = backend.keyed_state(&info, Some(from)).unwrap();
        let mut ops = backend.operator_state(&info, Some(from)).unwrap();
        let mut s = KeyedState::new(keyed.backend());
        for k in (0..KEYS).filter(|&k| owner(k, p) == i) {
            s.set_current_key(&k).unwrap();
            assert_eq!(
                s.value(&count()).unwrap().get().unwrap(),
                Some(u64::from(k * 3)),
                "p {p}: key {k}"
            );
            assert_eq!(
                s.map(&seen()).unwrap().iter().unwrap(),
                vec![(k, format!("k{k}"))]
            );
        }
        all_offsets.extend(
            ops.list(&offsets(), Redistribution::SplitDistribute)
                .unwrap()
                .get()
                .unwrap(),
        );
        let n = ops
            .list(&names(), Redistribution::Union)
            .unwrap()
            .get()
            .unwrap();
        assert_eq!(n, vec!["subtask-0", "subtask-1", "subtask-2"]);
    }
    assert_eq!(
        all_offsets,
        vec![0, 1, 10, 11, 20, 21],
        "p {p}: each offset once"
    );
}

fn backends() -> Vec<(&'static str, Box<dyn StateBackend>)> {
    vec![
        ("memory", Box::new(MemoryStateBackend::new())),
        ("filesystem", Box::new(FsStateBackend::new())),
        (
            "filesystem-files",
            Box::new(FsStateBackend::with_inline_threshold(0)),
        ),
    ]
}

#[test]
fn checkpoint_and_restore_into_any_parallelism_and_the_other_heap_backend() {
    for (name, backend) in backends() {
        let tmp = tempfile::tempdir().unwrap();
        checkpoint_three(backend.as_ref(), tmp.path()).unwrap();
        let r = resolve_verified(StdFs::shared(), &tmp.path().join("job"), false).unwrap();
        let files = r
            .metadata
            .operator_states
            .iter()
            .flat_map(|s| s.keyed_state.iter())
            .filter(|h| matches!(h.state, Handle::KeyGroupsFile { .. }))
            .count();
        let inline_ops = r
            .metadata
            .operator_states
            .iter()
            .flat_map(|s| s.operator_state.iter())
            .filter(|h| matches!(h.data, StateData::Inline(_)))
            .count();
        match name {
            "filesystem-files" => assert_eq!((files, inline_ops), (3, 0), "{name}"),
            _ => assert_eq!(files, 0, "{name}: inline"),
        }
        for h in r
            .metadata
            .operator_states
            .iter()
            .flat_map(|s| s.keyed_state.iter())
        {
            assert_eq!(h.backend, backend.name());
        }
        for p in [1, 2, 3, 4] {
            restore_and_check(backend.as_ref(), tmp.path(), p);
        }
        // A heap snapshot restores into the other heap backend.
        for (_, other) in backends() {
            restore_and_check(other.as_ref(), tmp.path(), 2);
        }
    }
}

/// The filesystem backend streams a snapshot: bytes below its inline threshold stay in
/// `_metadata`; a snapshot that reaches it is written into a file as it is produced. Both
/// restore.
#[test]
fn a_snapshot_over_the_inline_threshold_streams_into_a_file_and_restores() {
    const THRESHOLD: u64 = 4096;
    let tmp = tempfile::tempdir().unwrap();
    let backend = FsStateBackend::with_inline_threshold(THRESHOLD);
    checkpoint_three(&backend, tmp.path()).unwrap();
    let r = resolve_verified(StdFs::shared(), &tmp.path().join("job"), false).unwrap();
    for st in &r.metadata.operator_states {
        for h in &st.keyed_state {
            match &h.state {
                Handle::KeyGroupsFile { file, .. } => {
                    assert!(file.size >= THRESHOLD, "{file:?}");
                    let on_disk = std::fs::metadata(tmp.path().join("job").join(&file.path));
                    assert_eq!(on_disk.unwrap().len(), file.size);
                }
                other => panic!("subtask {}: a keyed snapshot inline: {other:?}", st.label()),
            }
        }
        for h in &st.operator_state {
            match &h.data {
                StateData::Inline(b) => assert!((b.len() as u64) < THRESHOLD),
                StateData::File(f) => panic!("a small operator snapshot in a file: {f:?}"),
            }
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("job/chk-1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for p in [1, 2, 4] {
        restore_and_check(&backend, tmp.path(), p);
    }
}

#[test]
fn the_memory_backend_refuses_a_snapshot_over_its_limit_naming_what_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = MemoryStateBackend::with_max_state_size(4096);
    let e = checkpoint_three(&backend, tmp.path()).unwrap_err();
    let msg = e.to_string();
    for part in ["\"counter\"", "subtask 0", "4096", "bytes"] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
    // The checkpoint never completed.
    assert!(resolve_verified(StdFs::shared(), &tmp.path().join("job"), false).is_err());
}

#[test]
fn a_damaged_snapshot_file_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = FsStateBackend::with_inline_threshold(0);
    checkpoint_three(&backend, tmp.path()).unwrap();
    let file = tmp.path().join("job/chk-1/counter_1.keyed");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let r =
        tidemark::checkpoint::resolve(StdFs::shared().as_ref(), &tmp.path().join("job")).unwrap();
    let storage = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &r.metadata.operator_states,
    };
    let e = backend.keyed_state(&info(0, 1), Some(from)).err().unwrap();
    assert!(e.to_string().contains("counter_1.keyed"), "{e}");
    // Subtasks whose key groups do not meet the damaged file's restore without it.
    assert!(backend.keyed_state(&info(0, 3), Some(from)).is_ok());
}

/// Whether the working store of subtask `label` holds a table hard-linked from the
/// checkpoint (a link has more than one name).
fn links_checkpoint_tables(local: &Path, label: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(local.join(format!("lsm-{label}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .any(|p| std::fs::metadata(p).unwrap().nlink() > 1)
}

/// A rescale links the old store whose key groups lie mostly inside the new subtask's,
/// then deletes its rows of the key groups the new subtask does not own; an old store
/// that only partly overlaps is cut by copying its rows.
#[test]
fn an_lsm_rescale_links_the_old_store_it_mostly_keeps_and_trims_it() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = LsmStateBackend::new(tmp.path().join("local"), tidemark::lsm::Options::default());
    checkpoint_three(&backend, &tmp.path().join("ckpt")).unwrap();
    let r = resolve_verified(StdFs::shared(), &tmp.path().join("ckpt/job"), false).unwrap();
    let storage = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &r.metadata.operator_states,
    };
    // 3 -> 4: subtask 0 (0..=31) lies inside old subtask 0 (0..=42): linked, then trimmed.
    // Subtask 1 (32..=63) holds 11 of old 0's 43 key groups and 21 of old 1's: copied.
    let local = tmp.path().join("local-4");
    let restored = LsmStateBackend::new(&local, tidemark::lsm::Options::default());
    for (i, linked) in [(0, true), (1, false)] {
        let info = info(i, 4);
        let range = info.key_groups().unwrap();
        let mut keyed = restored.keyed_state(&info, Some(from)).unwrap();
        assert_eq!(
            links_checkpoint_tables(&local, &info.label()),
            linked,
            "subtask {i} of 4"
        );
        {
            let mut s = KeyedState::new(keyed.backend());
            for k in (0..KEYS).filter(|&k| owner(k, 4) == i) {
                s.set_current_key(&k).unwrap();
                assert_eq!(
                    s.value(&count()).unwrap().get().unwrap(),
                    Some(u64::from(k * 3))
                );
            }
        }
        drop(keyed);
        // Every row left in the store belongs to the subtask's key groups.
        let db = tidemark::lsm::Db::open(
            local.join(format!("lsm-{}", info.label())),
            tidemark::lsm::Options {
                wal: false,
                ..tidemark::lsm::Options::default()
            },
        )
        .unwrap();
        let mut rows = 0;
        for kv in db.iter().unwrap() {
            let (k, _) = kv.unwrap();
            if k[..2] == tidemark::state::lsm_keyed::REGISTRY_PREFIX {
                continue;
            }
            let kg = u32::from(u16::from_be_bytes([k[0], k[1]]));
            assert!(range.contains(kg), "subtask {i}: a row of key group {kg}");
            rows += 1;
        }
        assert!(rows > 0);
    }
}

#[test]
fn the_lsm_backend_checkpoints_incrementally_and_restores_into_any_parallelism() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = LsmStateBackend::new(tmp.path().join("local"), tidemark::lsm::Options::default());
    checkpoint_three(&backend, &tmp.path().join("ckpt")).unwrap();
    let r = resolve_verified(StdFs::shared(), &tmp.path().join("ckpt/job"), false).unwrap();
    for st in &r.metadata.operator_states {
        assert!(st
            .keyed_state
            .iter()
            .all(|h| matches!(h.state, Handle::IncrementalLsm(_))));
        assert!(!st.operator_state.is_empty());
    }
    // The same with a row cache of a few rows: changed rows reach the store by eviction
    // and at the snapshot, never after it.
    let small = LsmStateBackend::new(
        tmp.path().join("local-small-cache"),
        tidemark::lsm::Options::default(),
    )
    .with_row_cache(4096);
    checkpoint_three(&small, &tmp.path().join("ckpt-small-cache")).unwrap();
    for p in [3, 2] {
        let restored = LsmStateBackend::new(
            tmp.path().join(format!("local-small-cache-{p}")),
            tidemark::lsm::Options::default(),
        )
        .with_row_cache(4096);
        restore_and_check(&restored, &tmp.path().join("ckpt-small-cache"), p);
    }
    // The same parallelism links the files; another cuts the old stores' key groups.
    for p in [3, 1, 2, 4] {
        let restored = LsmStateBackend::new(
            tmp.path().join(format!("local-{p}")),
            tidemark::lsm::Options::default(),
        );
        restore_and_check(&restored, &tmp.path().join("ckpt"), p);
        // Scratch directories of the cut are gone; one working store per subtask is left.
        let left = std::fs::read_dir(tmp.path().join(format!("local-{p}")))
            .unwrap()
            .count();
        assert_eq!(left, p as usize);
    }
    // A heap backend does not read an LSM file set, and says so.
    let storage = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &r.metadata.operator_states,
    };
    let e = MemoryStateBackend::new()
        .keyed_state(&info(0, 3), Some(from))
        .err()
        .unwrap();
    assert!(e.to_string().contains("incremental LSM"), "{e}");
}

#[test]
fn a_checkpoint_whose_key_groups_leave_a_gap_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = FsStateBackend::new();
    checkpoint_three(&backend, tmp.path()).unwrap();
    let r = resolve_verified(StdFs::shared(), &tmp.path().join("job"), false).unwrap();
    let storage = r.storage(StdFs::shared());
    // Without the middle subtask's state, key groups 43..=85 have no source.
    let two: Vec<OperatorSubtaskState> = r
        .metadata
        .operator_states
        .iter()
        .filter(|s| s.subtask_index != 1)
        .cloned()
        .collect();
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &two,
    };
    for b in [&backend as &dyn StateBackend, &MemoryStateBackend::new()] {
        let e = b.keyed_state(&info(0, 1), Some(from)).err().unwrap();
        assert!(e.to_string().contains("key group 43"), "{e}");
        // A subtask whose key groups are all there restores.
        assert!(b.keyed_state(&info(0, 3), Some(from)).is_ok());
    }
}

#[test]
fn a_handle_whose_key_groups_differ_from_its_snapshot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = MemoryStateBackend::new();
    checkpoint_three(&backend, tmp.path()).unwrap();
    let r = resolve_verified(StdFs::shared(), &tmp.path().join("job"), false).unwrap();
    let storage = r.storage(StdFs::shared());
    let mut states = r.metadata.operator_states.clone();
    // Subtask 0 claims one key group less than its snapshot holds.
    let h = &mut states[0].keyed_state[0];
    h.key_groups = tidemark::checkpoint::KeyGroupRange::new(0, 41).unwrap();
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &states,
    };
    let e = backend.keyed_state(&info(0, 1), Some(from)).err().unwrap();
    assert!(e.to_string().contains("0..=42"), "{e}");
}

/// Checkpoints one subtask of the filesystem backend holding `keys` values of `size`
/// bytes as checkpoint `id` of `root`; `from` restores it first.
fn checkpoint_big(
    root: &Path,
    id: u64,
    keys: u32,
    size: usize,
    from: Option<RestoreFrom<'_>>,
) -> tidemark::Result<()> {
    let backend = FsStateBackend::with_inline_threshold(0);
    let store = job(root);
    let pending = store.begin(CheckpointId(id), CheckpointKind::Full)?;
    let mut keyed = backend.keyed_state(&info(0, 1), from)?;
    if from.is_none() {
        let mut s = KeyedState::new(keyed.backend());
        let d = ValueStateDescriptor::<Vec<u8>>::new("big");
        for k in 0..keys {
            s.set_current_key(&k)?;
            s.value(&d)?.update(&vec![k as u8; size])?;
        }
    }
    // Nothing used since the restore: the snapshot holds the state as restored.
    let keyed_state = keyed.snapshot_sync()?.write(&pending)?;
    pending.commit(CheckpointContent {
        operator_states: vec![OperatorSubtaskState {
            operator_id: OP.into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: info(0, 1).key_groups()?,
            keyed_state,
            operator_state: Vec::new(),
        }],
        source_offsets: Vec::new(),
        properties: Vec::new(),
    })?;
    Ok(())
}

#[test]
fn large_heap_state_restores_a_key_group_at_a_time_and_damage_shows_when_read() {
    use tidemark::state::backend::LAZY_RESTORE_MIN_BYTES;
    let tmp = tempfile::tempdir().unwrap();
    let (keys, size) = (6000u32, 4096usize);
    assert!(u64::from(keys) * size as u64 > LAZY_RESTORE_MIN_BYTES);
    checkpoint_big(tmp.path(), 1, keys, size, None).unwrap();
    let restore = |check: &dyn Fn(RestoreFrom<'_>)| {
        let r = tidemark::checkpoint::resolve(StdFs::shared().as_ref(), &tmp.path().join("job"))
            .unwrap();
        let storage = r.storage(StdFs::shared());
        check(RestoreFrom {
            checkpoint_id: r.checkpoint_id,
            storage: &storage,
            subtasks: &r.metadata.operator_states,
        });
    };
    // Checkpoint 2 taken by a restored subtask before it used any key, then every key of
    // it read back.
    restore(&|from| checkpoint_big(tmp.path(), 2, keys, size, Some(from)).unwrap());
    restore(&|from| {
        assert_eq!(from.checkpoint_id, CheckpointId(2));
        let backend = FsStateBackend::with_inline_threshold(0);
        let mut keyed = backend.keyed_state(&info(0, 1), Some(from)).unwrap();
        let mut s = KeyedState::new(keyed.backend());
        let d = ValueStateDescriptor::<Vec<u8>>::new("big");
        for k in 0..keys {
            s.set_current_key(&k).unwrap();
            assert_eq!(
                s.value(&d).unwrap().get().unwrap(),
                Some(vec![k as u8; size])
            );
        }
    });
    // A flipped byte: the restore starts, the key group fails when it is read.
    let file = tmp.path().join("job/chk-2/counter_0.keyed");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    restore(&|from| {
        let backend = FsStateBackend::with_inline_threshold(0);
        let mut keyed = backend.keyed_state(&info(0, 1), Some(from)).unwrap();
        let mut s = KeyedState::new(keyed.backend());
        let e = (0..keys)
            .find_map(|k| s.set_current_key(&k).err())
            .expect("the damaged key group fails");
        assert!(e.to_string().contains("counter_0.keyed"), "{e}");
    });
}
