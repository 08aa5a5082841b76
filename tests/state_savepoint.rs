//! Savepoints through the public API: a canonical savepoint taken with each backend (every
//! state type, state with a time to live under an injected clock, operator state of both
//! redistribution modes) restored into each backend with 1, 2 and 4 subtasks from 3; a
//! native savepoint of each backend restored after its directory was moved and everything
//! else deleted; damaged savepoints refused naming the file, with nothing restored; a state
//! asked for under another type refused naming it; the canonical format round-trips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use tidemark::checkpoint::{
    resolve_verified, CheckpointContent, CheckpointId, JobId, KeyGroupRange, KeyedState as Handle,
    OperatorSubtaskState, PendingSavepoint, SavepointFormat,
};
use tidemark::fs::StdFs;
use tidemark::state::backend::{
    FsStateBackend, LsmStateBackend, MemoryStateBackend, RestoreFrom, StateBackend, SubtaskInfo,
};
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{
    AggregateFunction, AggregatingStateDescriptor, KeyedState, ListStateDescriptor,
    MapStateDescriptor, ReducingStateDescriptor, StateKind, StateMeta, StateTtlConfig, TtlClock,
    TtlVisibility, ValueStateDescriptor,
};
use tidemark::state::operator::Redistribution;
use tidemark::state::savepoint::{CanonicalHeader, CanonicalReader, CanonicalWriter, Record};

const OP: &str = "op";
const KEYS: u32 = 600;
/// When the state is first written, when part of it is written again, and when the
/// savepoint is taken: by then the first writes have expired (TTL 1 s), the second not.
const T0: u64 = 1_000_000;
const T1: u64 = T0 + 600;
const T2: u64 = T0 + 1100;

/// A clock the test moves by hand.
struct TestClock(AtomicU64);

impl TtlClock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn clock() -> Arc<TestClock> {
    Arc::new(TestClock(AtomicU64::new(T0)))
}

fn set(c: &TestClock, ms: u64) {
    c.0.store(ms, Ordering::SeqCst);
}

struct Average;

impl AggregateFunction<u64, (u64, u64), u64> for Average {
    fn create(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, input: &u64, acc: (u64, u64)) -> (u64, u64) {
        (acc.0 + input, acc.1 + 1)
    }
    fn result(&self, acc: &(u64, u64)) -> u64 {
        acc.0 / acc.1
    }
}

/// Every state type, and three with a time to live (with `visible`, read as visible until
/// cleaned up, so that a read shows what a restore really holds).
struct Descs {
    count: ValueStateDescriptor<u64>,
    events: ListStateDescriptor<u32>,
    seen: MapStateDescriptor<u32, String>,
    sum: ReducingStateDescriptor<u64>,
    avg: AggregatingStateDescriptor<u64, (u64, u64), u64>,
    recent: ValueStateDescriptor<u32>,
    recent_list: ListStateDescriptor<u32>,
    recent_map: MapStateDescriptor<u8, u32>,
}

fn descs(visible: bool) -> Descs {
    let ttl = StateTtlConfig::new(Duration::from_millis(1000));
    let ttl = if visible {
        ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp)
    } else {
        ttl
    };
    Descs {
        count: ValueStateDescriptor::new("count"),
        events: ListStateDescriptor::new("events"),
        seen: MapStateDescriptor::new("seen"),
        sum: ReducingStateDescriptor::new("sum", |a, b| a + b),
        avg: AggregatingStateDescriptor::new("avg", Average),
        recent: ValueStateDescriptor::new("recent").enable_ttl(ttl),
        recent_list: ListStateDescriptor::new("recent-list").enable_ttl(ttl),
        recent_map: MapStateDescriptor::new("recent-map").enable_ttl(ttl),
    }
}

fn info(index: u32, parallelism: u32) -> SubtaskInfo {
    SubtaskInfo {
        operator_id: OP.into(),
        subtask_index: index,
        parallelism,
        max_parallelism: MaxParallelism::default(),
    }
}

fn owner(k: u32, p: u32) -> u32 {
    let m = MaxParallelism::default();
    let kb = postcard::to_stdvec(&k).unwrap();
    m.subtask_for_key_group(p, m.key_group_of(&kb)).unwrap()
}

/// Whether key `k` was written again at `T1` (so its TTL'd state outlives the savepoint).
fn renewed(k: u32) -> bool {
    k % 3 == 0
}

fn job() -> JobId {
    JobId::new("a1b2c3d4e5f6-job").unwrap()
}

/// Runs three subtasks of `backend` (whose TTL clock is `clock`), writes every state type,
/// and takes a savepoint of `format` under `savepoints`; writes after the synchronous part
/// must not be in it. Returns the savepoint directory.
fn savepoint_three(
    backend: &dyn StateBackend,
    clock: &TestClock,
    savepoints: &Path,
    format: SavepointFormat,
) -> PathBuf {
    let d = descs(false);
    set(clock, T0);
    let mut keyed: Vec<_> = (0..3)
        .map(|i| backend.keyed_state(&info(i, 3), None).unwrap())
        .collect();
    let mut ops: Vec<_> = (0..3)
        .map(|i| backend.operator_state(&info(i, 3), None).unwrap())
        .collect();
    for (i, k) in keyed.iter_mut().enumerate() {
        let mut s = KeyedState::with_clock(k.backend(), clock);
        for key in (0..KEYS).filter(|&key| owner(key, 3) == i as u32) {
            s.set_current_key(&key).unwrap();
            s.value(&d.count)
                .unwrap()
                .update(&u64::from(key * 3))
                .unwrap();
            s.list(&d.events).unwrap().add_all(&[key, key + 1]).unwrap();
            s.map(&d.seen)
                .unwrap()
                .put(&key, &format!("k{key}"))
                .unwrap();
            for n in [u64::from(key), 2 * u64::from(key) + 2] {
                s.reducing(&d.sum).unwrap().add(&n).unwrap();
                s.aggregating(&d.avg).unwrap().add(&n).unwrap();
            }
            s.value(&d.recent).unwrap().update(&key).unwrap();
            s.list(&d.recent_list).unwrap().add(&key).unwrap();
            s.map(&d.recent_map).unwrap().put(&0, &key).unwrap();
        }
    }
    set(clock, T1);
    for (i, k) in keyed.iter_mut().enumerate() {
        let mut s = KeyedState::with_clock(k.backend(), clock);
        for key in (0..KEYS).filter(|&key| owner(key, 3) == i as u32 && renewed(key)) {
            s.set_current_key(&key).unwrap();
            s.value(&d.recent).unwrap().update(&(key + 100)).unwrap();
            s.list(&d.recent_list).unwrap().add(&(key + 100)).unwrap();
            s.map(&d.recent_map).unwrap().put(&1, &(key + 100)).unwrap();
        }
    }
    for (i, o) in ops.iter_mut().enumerate() {
        let i = i as u64;
        o.list(&offsets(), Redistribution::SplitDistribute)
            .unwrap()
            .update(&[i * 10, i * 10 + 1])
            .unwrap();
        o.list(&names(), Redistribution::Union)
            .unwrap()
            .add(&format!("subtask-{i}"))
            .unwrap();
    }
    set(clock, T2);
    let pending =
        PendingSavepoint::begin(StdFs::shared(), savepoints, &job(), CheckpointId(7), format)
            .unwrap();
    let mut states = Vec::new();
    for (i, (k, o)) in keyed.iter_mut().zip(&mut ops).enumerate() {
        let i = i as u32;
        let snap = k.snapshot_sync_for(format.kind()).unwrap();
        let op_snap = o.snapshot();
        // Written after the synchronous part: not in the savepoint.
        {
            let mut s = KeyedState::with_clock(k.backend(), clock);
            for key in (0..KEYS).filter(|&key| owner(key, 3) == i) {
                s.set_current_key(&key).unwrap();
                s.value(&d.count).unwrap().update(&999_999).unwrap();
            }
        }
        o.list(&offsets(), Redistribution::SplitDistribute)
            .unwrap()
            .add(&777)
            .unwrap();
        let info = info(i, 3);
        states.push(OperatorSubtaskState {
            operator_id: OP.into(),
            subtask_index: i,
            parallelism: 3,
            max_parallelism: 128,
            key_groups: info.key_groups().unwrap(),
            keyed_state: snap.write(&pending).unwrap(),
            operator_state: backend
                .write_operator_state(&info, &op_snap, &pending)
                .unwrap(),
        });
    }
    let done = pending
        .commit(CheckpointContent {
            operator_states: states,
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .unwrap();
    assert_eq!(done.metadata.kind, format.kind());
    assert!(done
        .dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("savepoint-a1b2c3-"));
    done.dir
}

fn offsets() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new("offsets")
}

fn names() -> ListStateDescriptor<String> {
    ListStateDescriptor::new("names")
}

/// Restores the savepoint at `path` with `backend` into `p` subtasks and checks every key
/// and the operator state against what was written. Expired values must be physically gone
/// (read as visible until cleaned up) unless the savepoint is a native one of the lsm
/// backend, whose tables keep them until compaction (as RocksDB's do).
fn restore_and_check(backend: &dyn StateBackend, clock: &TestClock, path: &Path, p: u32) {
    set(clock, T2);
    let r = resolve_verified(StdFs::shared(), path, false).unwrap();
    let native_lsm =
        r.metadata.kind == SavepointFormat::Native.kind() && r.metadata.backends().contains("lsm");
    let d = descs(!native_lsm);
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
        let mut s = KeyedState::with_clock(keyed.backend(), clock);
        for key in (0..KEYS).filter(|&key| owner(key, p) == i) {
            let at = format!(
                "{} into {} x{p}: key {key}",
                r.metadata.kind,
                backend.name()
            );
            s.set_current_key(&key).unwrap();
            let k = u64::from(key);
            assert_eq!(
                s.value(&d.count).unwrap().get().unwrap(),
                Some(k * 3),
                "{at}"
            );
            assert_eq!(
                s.list(&d.events).unwrap().get().unwrap(),
                vec![key, key + 1],
                "{at}"
            );
            assert_eq!(
                s.map(&d.seen).unwrap().iter().unwrap(),
                vec![(key, format!("k{key}"))],
                "{at}"
            );
            assert_eq!(
                s.reducing(&d.sum).unwrap().get().unwrap(),
                Some(3 * k + 2),
                "{at}"
            );
            assert_eq!(
                s.aggregating(&d.avg).unwrap().get().unwrap(),
                Some((3 * k + 2) / 2),
                "{at}"
            );
            // What had expired when the savepoint was taken is not in it.
            let live = renewed(key).then_some(key + 100);
            assert_eq!(s.value(&d.recent).unwrap().get().unwrap(), live, "{at}");
            assert_eq!(
                s.list(&d.recent_list).unwrap().get().unwrap(),
                live.into_iter().collect::<Vec<_>>(),
                "{at}"
            );
            assert_eq!(
                s.map(&d.recent_map).unwrap().iter().unwrap(),
                live.map(|v| (1u8, v)).into_iter().collect::<Vec<_>>(),
                "{at}"
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
    all_offsets.sort_unstable();
    assert_eq!(
        all_offsets,
        vec![0, 1, 10, 11, 20, 21],
        "p {p}: each offset once"
    );
}

/// The three backends, each with `clock` and its own local directory under `root`.
fn backends(root: &Path, clock: &Arc<TestClock>) -> Vec<Box<dyn StateBackend>> {
    let c: Arc<dyn TtlClock> = clock.clone();
    vec![
        Box::new(MemoryStateBackend::new().with_ttl_clock(c.clone())),
        Box::new(FsStateBackend::with_inline_threshold(0).with_ttl_clock(c.clone())),
        Box::new(
            LsmStateBackend::new(
                root.join(format!("lsm-{}", JobId::random())),
                tidemark::lsm::Options {
                    memtable_size_bytes: 64 << 10,
                    ..tidemark::lsm::Options::default()
                },
            )
            .with_ttl_clock(c),
        ),
    ]
}

#[test]
fn a_canonical_savepoint_of_any_backend_restores_into_any_backend_and_parallelism() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    for source in backends(tmp.path(), &clock) {
        let sp = savepoint_three(
            source.as_ref(),
            &clock,
            &tmp.path().join("savepoints"),
            SavepointFormat::Canonical,
        );
        let r = resolve_verified(StdFs::shared(), &sp, false).unwrap();
        for st in &r.metadata.operator_states {
            assert!(st.keyed_state.iter().all(|h| {
                h.backend == source.name() && matches!(h.state, Handle::CanonicalFile { .. })
            }));
        }
        for target in backends(tmp.path(), &clock) {
            for p in [1, 2, 4] {
                restore_and_check(target.as_ref(), &clock, &sp, p);
            }
        }
    }
}

#[test]
fn a_native_savepoint_restores_after_its_directory_was_moved_and_the_job_deleted() {
    let clock = clock();
    for i in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let job_root = tmp.path().join("job");
        let source = backends(&job_root, &clock).remove(i);
        let sp = savepoint_three(
            source.as_ref(),
            &clock,
            &job_root.join("savepoints"),
            SavepointFormat::Native,
        );
        let r = resolve_verified(StdFs::shared(), &sp, false).unwrap();
        assert_eq!(r.metadata.kind, SavepointFormat::Native.kind());
        assert!(r.metadata.file_handles().all(|f| !f.path.contains('/')));
        let moved = tmp.path().join("elsewhere").join("my-savepoint");
        std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
        std::fs::rename(&sp, &moved).unwrap();
        drop(source);
        std::fs::remove_dir_all(&job_root).unwrap();
        let target = backends(&tmp.path().join("restored"), &clock).remove(i);
        for p in [3, 2] {
            restore_and_check(target.as_ref(), &clock, &moved.join("_metadata"), p);
        }
    }
}

/// A canonical savepoint of the filesystem backend, its subtask 1's canonical file, and a
/// restore of that file's key groups with `backend`.
fn damaged(tmp: &Path, clock: &Arc<TestClock>, damage: impl Fn(&mut Vec<u8>)) -> (PathBuf, String) {
    let source = FsStateBackend::new().with_ttl_clock(clock.clone());
    let sp = savepoint_three(
        &source,
        clock,
        &tmp.join("savepoints"),
        SavepointFormat::Canonical,
    );
    let file = sp.join("op_1.canonical");
    let mut bytes = std::fs::read(&file).unwrap();
    damage(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();
    (sp, file.display().to_string())
}

/// Restores subtask `i` of `p` from the savepoint `sp` with `backend`.
fn restore_one(backend: &dyn StateBackend, sp: &Path, i: u32, p: u32) -> tidemark::Result<()> {
    let r = tidemark::checkpoint::resolve(StdFs::shared().as_ref(), sp)?;
    let storage = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &r.metadata.operator_states,
    };
    backend.keyed_state(&info(i, p), Some(from)).map(drop)
}

#[test]
fn a_truncated_or_bit_flipped_savepoint_file_is_refused_naming_it_and_nothing_is_restored() {
    let clock = clock();
    let cases: [(&str, Damage); 3] = [
        (
            "truncated",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 100)),
        ),
        (
            "bit flip in a record",
            Box::new(|b: &mut Vec<u8>| {
                let mid = b.len() / 2;
                b[mid] ^= 0x04;
            }),
        ),
        (
            "bit flip in the footer",
            Box::new(|b: &mut Vec<u8>| {
                let at = b.len() - 20;
                b[at] ^= 0x01;
            }),
        ),
    ];
    for (what, damage) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (sp, file) = damaged(tmp.path(), &clock, damage);
        let local = tmp.path().join("local");
        for backend in [
            Box::new(MemoryStateBackend::new()) as Box<dyn StateBackend>,
            Box::new(LsmStateBackend::new(
                &local,
                tidemark::lsm::Options::default(),
            )),
        ] {
            let e = restore_one(backend.as_ref(), &sp, 0, 1).unwrap_err();
            assert!(
                e.to_string().contains(&file),
                "{what}, {}: {e}",
                backend.name()
            );
            // The failed restore left no half-filled store behind.
            assert!(!local.join("lsm-op_0").exists(), "{what}");
            // The subtask that owns the file's key groups fails too; the others, whose key
            // groups do not meet it, restore without it.
            let e = restore_one(backend.as_ref(), &sp, 1, 3).unwrap_err();
            assert!(
                e.to_string().contains(&file),
                "{what}, {}: {e}",
                backend.name()
            );
            restore_one(backend.as_ref(), &sp, 0, 3).unwrap();
            restore_one(backend.as_ref(), &sp, 2, 3).unwrap();
        }
    }
}

#[test]
fn a_state_restored_under_another_type_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let source = MemoryStateBackend::new().with_ttl_clock(clock.clone());
    let sp = savepoint_three(&source, &clock, tmp.path(), SavepointFormat::Canonical);
    let r = resolve_verified(StdFs::shared(), &sp, false).unwrap();
    let storage = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &storage,
        subtasks: &r.metadata.operator_states,
    };
    for target in backends(tmp.path(), &clock) {
        let mut keyed = target.keyed_state(&info(0, 1), Some(from)).unwrap();
        let mut s = KeyedState::with_clock(keyed.backend(), clock.as_ref());
        s.set_current_key(&0u32).unwrap();
        let e = s
            .value(&ValueStateDescriptor::<String>::new("count"))
            .unwrap_err();
        assert!(
            e.to_string().contains("\"count\""),
            "{}: {e}",
            target.name()
        );
        let e = s
            .map(&MapStateDescriptor::<u32, u64>::new("seen"))
            .unwrap_err();
        assert!(e.to_string().contains("\"seen\""), "{}: {e}", target.name());
        let e = s
            .value(&ValueStateDescriptor::<u32>::new("recent"))
            .unwrap_err();
        assert!(e.to_string().contains("TTL"), "{}: {e}", target.name());
        // Asked for as written, the state is there.
        assert_eq!(
            s.value(&ValueStateDescriptor::<u64>::new("count"))
                .unwrap()
                .get()
                .unwrap(),
            Some(0)
        );
    }
    // Another max parallelism cannot map the key groups.
    let mut other = info(0, 1);
    other.max_parallelism = MaxParallelism::new(256).unwrap();
    let e = MemoryStateBackend::new()
        .keyed_state(&other, Some(from))
        .err()
        .unwrap();
    assert!(e.to_string().contains("max parallelism"), "{e}");
}

#[test]
fn a_canonical_snapshot_goes_only_into_a_canonical_savepoint() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = MemoryStateBackend::new();
    let mut keyed = backend.keyed_state(&info(0, 1), None).unwrap();
    let native = PendingSavepoint::begin(
        StdFs::shared(),
        tmp.path(),
        &job(),
        CheckpointId(1),
        SavepointFormat::Native,
    )
    .unwrap();
    let e = keyed
        .snapshot_sync_canonical()
        .unwrap()
        .write(&native)
        .unwrap_err();
    assert!(e.to_string().contains("canonical"), "{e}");
    let dir = native.dir().to_path_buf();
    drop(native);
    assert!(!dir.exists(), "an unfinished savepoint leaves nothing");
}

/// A record as the test holds it: state, key, user key, value.
type Rec<S> = (S, Vec<u8>, Vec<u8>, Vec<u8>);

/// Damage done to a file's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// Records of a random canonical file.
fn records() -> impl Strategy<Value = Vec<Rec<u8>>> {
    proptest::collection::vec(
        (
            0u8..3,
            proptest::collection::vec(any::<u8>(), 0..12),
            proptest::collection::vec(any::<u8>(), 0..6),
            proptest::collection::vec(any::<u8>(), 0..300),
        ),
        0..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever is written reads back, record for record, and a cut of any key-group range
    /// reads exactly that range's records.
    #[test]
    fn the_canonical_format_round_trips(
        recs in records(),
        max in 1u32..40,
        cut in any::<(prop::sample::Index, prop::sample::Index)>(),
    ) {
        let m = MaxParallelism::new(max).unwrap();
        let range = m.full_range();
        let states: Vec<StateMeta> = [StateKind::Value, StateKind::List, StateKind::Map]
            .iter()
            .enumerate()
            .map(|(i, &kind)| StateMeta {
                name: format!("s{i}"),
                kind,
                value_type: "bytes".into(),
                ttl_ms: (i == 1).then_some(5000),
            })
            .collect();
        let mut by_group: BTreeMap<u32, Vec<Rec<u32>>> = BTreeMap::new();
        for (state, key, uk, value) in recs {
            let uk = if state == 2 { uk } else { Vec::new() };
            by_group.entry(m.key_group_of(&key)).or_default().push((u32::from(state), key, uk, value));
        }
        let header = CanonicalHeader {
            max_parallelism: m,
            key_groups: range,
            backend: "test".into(),
            states,
        };
        let mut w = CanonicalWriter::new(Vec::new(), "p.canonical", header.clone()).unwrap();
        for (g, rs) in &by_group {
            for (state, key, uk, value) in rs {
                w.record(*g, Record { state: *state, key, user_key: uk, value }).unwrap();
            }
        }
        let (bytes, written) = w.finish().unwrap();
        let size = bytes.len() as u64;
        let mut r = CanonicalReader::open("p.canonical", std::io::Cursor::new(bytes), size).unwrap();
        prop_assert_eq!(r.header(), &header);
        prop_assert_eq!(r.offsets(), &written.offsets[..]);
        let mut got: BTreeMap<u32, Vec<Rec<u32>>> = BTreeMap::new();
        r.read_all(&mut |g, rec| {
            got.entry(g).or_default().push((rec.state, rec.key.to_vec(), rec.user_key.to_vec(), rec.value.to_vec()));
            Ok(())
        }).unwrap();
        prop_assert_eq!(&got, &by_group);
        let (a, b) = (cut.0.index(max as usize) as u32, cut.1.index(max as usize) as u32);
        let part = KeyGroupRange::new(a.min(b), a.max(b)).unwrap();
        let mut seen = 0usize;
        for g in part.start()..=part.end() {
            seen += r.read_key_group(g, &mut |rec| {
                if m.key_group_of(rec.key) != g {
                    return Err(tidemark::Error::InvalidArgument(format!("a record out of key group {g}")));
                }
                Ok(())
            }).unwrap() as usize;
        }
        let want: usize = by_group.range(part.start()..=part.end()).map(|(_, v)| v.len()).sum();
        prop_assert_eq!(seen, want);
    }
}
