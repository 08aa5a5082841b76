//! State backend benchmarks: each backend's operations against its baseline in the same
//! run, then checkpoint and restore of a large state.
//!
//! Operations (N = 1,000,000 keys; 50,000 with `TIDEMARK_BENCH_SHORT=1`), in operations per
//! second and as ratios in one run (the machine is shared and noisy; ratios are what
//! compare):
//! - value update: the `memory` backend against a `HashMap<Vec<u8>, Vec<u8>>` insert of the
//!   same serialized key and value bytes; the `lsm` backend against a raw `Db::put` of the
//!   same bytes (its row key and value) into a store with the same options;
//! - value get, list add, map put, map get, map iterate (100 entries per key) for both.
//!
//! Checkpoints (state of `TIDEMARK_BENCH_STATE_MB` MiB, default 1024; 64 in short mode):
//! for each backend the synchronous part, the total checkpoint time, and the restore time
//! (same parallelism), and for `filesystem` and `lsm` a rescale 2 -> 3 (restore into three
//! subtasks from two). The memory backend's checkpoints are inline in `_metadata`, which
//! is limited to small states: it is measured with a state below its limit.
//!
//! Canonical savepoints (state of `TIDEMARK_BENCH_SAVEPOINT_MB` MiB, default 100; 16 in
//! short mode) of each backend in 2 subtasks: the time to write the savepoint (synchronous
//! part, canonical files, `_metadata`), its size, the time to restore it into the same
//! backend with 2 subtasks, and into the `lsm` (or, from `lsm`, the `filesystem`) backend
//! with 3.
//!
//! `TIDEMARK_BENCH_STATE_PARTS` (`operations,checkpoints,savepoints`) and
//! `TIDEMARK_BENCH_STATE_BACKENDS` (`memory,filesystem,lsm`) pick what runs (default: all).
//!
//! A plain harness (each step is one long operation on a large state): every figure is
//! printed, nothing is asserted.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_root, pick, Rng};
use tidemark::checkpoint::{
    resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
    CheckpointStore, JobId, LocalStorage, OperatorSubtaskState, PendingSavepoint, SavepointFormat,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, Options, SyncMode};
use tidemark::state::backend::{
    FsStateBackend, LsmStateBackend, MemoryStateBackend, RestoreFrom, StateBackend, SubtaskInfo,
};
use tidemark::state::heap::HeapKeyedBackend;
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{
    KeyedState, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor,
};
use tidemark::state::lsm_keyed::LsmKeyedBackend;

/// A value of 100 bytes, as the store benchmarks use.
type Value = Vec<u8>;

fn value(n: u64) -> Value {
    let mut v = vec![0u8; 100];
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for chunk in v.chunks_mut(8).take(6) {
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        x = x.rotate_left(17).wrapping_add(1);
    }
    v
}

fn lsm_options() -> Options {
    Options {
        wal: false,
        sync: SyncMode::None,
        memtable_size_bytes: 64 << 20,
        block_cache_bytes: 64 << 20,
        ..Options::default()
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn report(op: &str, what: &str, ours: f64, base_name: &str, base: f64) {
    println!(
        "{op:<14} {what:<8} {ours:>12.0} ops/s   {base_name:<14} {base:>12.0} ops/s   ratio {:.2}x",
        ours / base
    );
}

/// Times `f` over keys `0..n` in a random order.
fn timed(n: u64, seed: u64, mut f: impl FnMut(u64)) -> Duration {
    let mut rng = Rng::new(seed);
    let order: Vec<u64> = (0..n).map(|_| rng.below(n)).collect();
    let t = Instant::now();
    for &k in &order {
        f(k);
    }
    t.elapsed()
}

fn operations(root: &Path) {
    let n: u64 = pick(50_000, 1_000_000);
    let max = MaxParallelism::default();
    let value_d = ValueStateDescriptor::<Value>::new("v");
    let list_d = ListStateDescriptor::<u64>::new("l");
    let map_d = MapStateDescriptor::<u32, u64>::new("m");

    // Baselines: the same serialized bytes into a HashMap, and into a raw store.
    let key_bytes = |k: u64| postcard::to_stdvec(&k).unwrap();
    let value_bytes = |k: u64| postcard::to_stdvec(&value(k)).unwrap();
    let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let hashmap = timed(n, 1, |k| {
        map.insert(key_bytes(k), value_bytes(k));
    });
    drop(map);
    let raw = Db::open(root.join("raw"), lsm_options()).unwrap();
    let raw_put = timed(n, 1, |k| {
        // The lsm backend's row: key group, state id, length, key; then the value.
        let kb = key_bytes(k);
        let mut row = Vec::with_capacity(8 + kb.len());
        row.extend_from_slice(&(max.key_group_of(&kb) as u16).to_be_bytes());
        row.extend_from_slice(&0u32.to_be_bytes());
        row.push(kb.len() as u8);
        row.extend_from_slice(&kb);
        raw.put(&row, value_bytes(k)).unwrap();
    });
    drop(raw);

    let mut heap = HeapKeyedBackend::new(max, max.full_range());
    let lsm_db = Arc::new(Db::open(root.join("lsm"), lsm_options()).unwrap());
    let mut lsm = LsmKeyedBackend::open(lsm_db, max, max.full_range()).unwrap();
    let backends: [(&str, &mut dyn KeyedStateBackend, &str, Duration); 2] = [
        ("memory", &mut heap, "hashmap insert", hashmap),
        ("lsm", &mut lsm, "Db::put", raw_put),
    ];
    for (name, b, base_name, base) in backends {
        let mut s = KeyedState::new(b);
        let update = timed(n, 1, |k| {
            s.set_current_key(&k).unwrap();
            s.value(&value_d).unwrap().update(&value(k)).unwrap();
        });
        report(
            "value update",
            name,
            rate(n, update),
            base_name,
            rate(n, base),
        );
        let get = timed(n, 2, |k| {
            s.set_current_key(&k).unwrap();
            s.value(&value_d).unwrap().get().unwrap();
        });
        println!("{:<14} {name:<8} {:>12.0} ops/s", "value get", rate(n, get));
        let add = timed(n, 3, |k| {
            s.set_current_key(&k).unwrap();
            s.list(&list_d).unwrap().add(&k).unwrap();
        });
        println!("{:<14} {name:<8} {:>12.0} ops/s", "list add", rate(n, add));
        let keys = n / 100;
        let put = timed(n, 4, |i| {
            s.set_current_key(&(i % keys)).unwrap();
            s.map(&map_d)
                .unwrap()
                .put(&((i / keys) as u32), &i)
                .unwrap();
        });
        println!("{:<14} {name:<8} {:>12.0} ops/s", "map put", rate(n, put));
        let get = timed(n, 5, |i| {
            s.set_current_key(&(i % keys)).unwrap();
            s.map(&map_d).unwrap().get(&((i / keys) as u32)).unwrap();
        });
        println!("{:<14} {name:<8} {:>12.0} ops/s", "map get", rate(n, get));
        let mut entries = 0u64;
        let iter = timed(keys, 6, |k| {
            s.set_current_key(&k).unwrap();
            entries += s.map(&map_d).unwrap().iter().unwrap().len() as u64;
        });
        println!(
            "{:<14} {name:<8} {:>12.0} entries/s",
            "map iterate",
            rate(entries, iter)
        );
    }
}

/// The asynchronous parts of `snaps` (subtask `i` of `parallelism` each) written into
/// `target`, as the subtask states of operator `op`.
fn subtask_states(
    snaps: Vec<Box<dyn tidemark::state::backend::KeyedSnapshot>>,
    target: &dyn tidemark::checkpoint::SnapshotTarget,
    parallelism: u32,
    max: MaxParallelism,
) -> Vec<OperatorSubtaskState> {
    snaps
        .into_iter()
        .enumerate()
        .map(|(i, snap)| {
            let i = i as u32;
            OperatorSubtaskState {
                operator_id: "op".into(),
                subtask_index: i,
                parallelism,
                max_parallelism: max.get(),
                key_groups: info(i, parallelism).key_groups().unwrap(),
                keyed_state: snap.write(target).unwrap(),
                operator_state: Vec::new(),
            }
        })
        .collect()
}

fn info(index: u32, parallelism: u32) -> SubtaskInfo {
    SubtaskInfo {
        operator_id: "op".into(),
        subtask_index: index,
        parallelism,
        max_parallelism: MaxParallelism::default(),
    }
}

/// Fills `parallelism` subtasks of `backend` with `bytes` of state (about 130 bytes a key),
/// checkpoints them, restores them with the same parallelism and into `rescale_to`.
fn checkpoints(
    backend: &dyn StateBackend,
    root: &Path,
    bytes: u64,
    parallelism: u32,
    rescale_to: Option<u32>,
) {
    let keys = bytes / 130;
    let max = MaxParallelism::default();
    let d = ValueStateDescriptor::<Value>::new("v");
    let storage = LocalStorage::new(
        StdFs::shared(),
        root.join("ckpt"),
        JobId::new("job").unwrap(),
    );
    let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap();
    let mut subtasks = Vec::new();
    for i in 0..parallelism {
        subtasks.push(backend.keyed_state(&info(i, parallelism), None).unwrap());
    }
    let t = Instant::now();
    for k in 0..keys {
        let kb = postcard::to_stdvec(&k).unwrap();
        let owner = max
            .subtask_for_key_group(parallelism, max.key_group_of(&kb))
            .unwrap();
        let mut s = KeyedState::new(subtasks[owner as usize].backend());
        s.set_current_key(&k).unwrap();
        s.value(&d).unwrap().update(&value(k)).unwrap();
    }
    let fill = t.elapsed();
    let t = Instant::now();
    let mut snaps = Vec::new();
    let mut sync = Duration::ZERO;
    for st in subtasks.iter_mut() {
        let s0 = Instant::now();
        snaps.push(st.snapshot_sync().unwrap());
        sync = sync.max(s0.elapsed());
    }
    let pending = store
        .begin(CheckpointId(1), CheckpointKind::Incremental)
        .unwrap();
    let states = subtask_states(snaps, &pending, parallelism, max);
    pending
        .commit(CheckpointContent {
            operator_states: states,
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .unwrap();
    let total = t.elapsed();
    drop(subtasks);
    let r = resolve_verified(StdFs::shared(), &root.join("ckpt/job"), false).unwrap();
    let st = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &st,
        subtasks: &r.metadata.operator_states,
    };
    let t = Instant::now();
    for i in 0..parallelism {
        backend
            .keyed_state(&info(i, parallelism), Some(from))
            .unwrap();
    }
    let restore = t.elapsed();
    print!(
        "checkpoint {:<10} {:>6} MiB in {parallelism} subtasks: fill {:>8.0} ms, sync part {:>7.3} ms (largest subtask), total {:>8.1} ms, restore {:>8.1} ms",
        backend.name(),
        bytes >> 20,
        fill.as_secs_f64() * 1e3,
        sync.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3
    );
    if let Some(p) = rescale_to {
        let t = Instant::now();
        for i in 0..p {
            backend.keyed_state(&info(i, p), Some(from)).unwrap();
        }
        print!(
            ", rescale {parallelism}->{p} {:>8.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    println!();
}

/// Restores the savepoint at `dir` with `backend` into `p` subtasks; returns the time.
fn restore_savepoint(backend: &dyn StateBackend, dir: &Path, p: u32) -> Duration {
    let r = resolve_verified(StdFs::shared(), dir, false).unwrap();
    let st = r.storage(StdFs::shared());
    let from = RestoreFrom {
        checkpoint_id: r.checkpoint_id,
        storage: &st,
        subtasks: &r.metadata.operator_states,
    };
    let t = Instant::now();
    let restored: Vec<_> = (0..p)
        .map(|i| backend.keyed_state(&info(i, p), Some(from)).unwrap())
        .collect();
    let took = t.elapsed();
    drop(restored);
    took
}

/// Fills 2 subtasks of `backend` with `bytes` of state (about 130 bytes a key), takes a
/// canonical savepoint, and restores it into `backend` (2 subtasks) and `other` (3).
fn savepoints(backend: &dyn StateBackend, other: &dyn StateBackend, root: &Path, bytes: u64) {
    let keys = bytes / 130;
    let parallelism = 2;
    let max = MaxParallelism::default();
    let d = ValueStateDescriptor::<Value>::new("v");
    let mut subtasks: Vec<_> = (0..parallelism)
        .map(|i| backend.keyed_state(&info(i, parallelism), None).unwrap())
        .collect();
    for k in 0..keys {
        let kb = postcard::to_stdvec(&k).unwrap();
        let owner = max
            .subtask_for_key_group(parallelism, max.key_group_of(&kb))
            .unwrap();
        let mut s = KeyedState::new(subtasks[owner as usize].backend());
        s.set_current_key(&k).unwrap();
        s.value(&d).unwrap().update(&value(k)).unwrap();
    }
    let t = Instant::now();
    let snaps: Vec<_> = subtasks
        .iter_mut()
        .map(|s| s.snapshot_sync_canonical().unwrap())
        .collect();
    let pending = PendingSavepoint::begin(
        StdFs::shared(),
        root,
        &JobId::new("job").unwrap(),
        CheckpointId(1),
        SavepointFormat::Canonical,
    )
    .unwrap();
    let states = subtask_states(snaps, &pending, parallelism, max);
    let done = pending
        .commit(CheckpointContent {
            operator_states: states,
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .unwrap();
    let write = t.elapsed();
    drop(subtasks);
    let size: u64 = done.metadata.file_handles().map(|f| f.size).sum();
    let same = restore_savepoint(backend, &done.dir, parallelism);
    let into_other = restore_savepoint(other, &done.dir, 3);
    println!(
        "savepoint  {:<10} {:>6} MiB in {parallelism} subtasks: write {:>8.1} ms ({:>6.0} MiB/s, {} MiB canonical), restore {:>8.1} ms, into {} x3 {:>8.1} ms",
        backend.name(),
        bytes >> 20,
        write.as_secs_f64() * 1e3,
        (bytes >> 20) as f64 / write.as_secs_f64(),
        size >> 20,
        same.as_secs_f64() * 1e3,
        other.name(),
        into_other.as_secs_f64() * 1e3
    );
}

/// True when `what` is listed in the environment variable `name` (a comma-separated
/// list; unset or empty: everything).
fn selected(name: &str, what: &str) -> bool {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|p| p.trim() == what),
        _ => true,
    }
}

fn main() {
    let root = bench_root();
    let part = |p: &str| selected("TIDEMARK_BENCH_STATE_PARTS", p);
    let backend = |b: &str| selected("TIDEMARK_BENCH_STATE_BACKENDS", b);
    if part("operations") {
        println!("== operations");
        operations(&root.path().join("ops"));
    }
    let mb: u64 = std::env::var("TIDEMARK_BENCH_STATE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(pick(64, 1024));
    if part("checkpoints") {
        println!("== checkpoints");
        if backend("memory") {
            checkpoints(
                &MemoryStateBackend::new(),
                &root.path().join("mem"),
                4 << 20,
                1,
                None,
            );
        }
        if backend("filesystem") {
            checkpoints(
                &FsStateBackend::new(),
                &root.path().join("fs"),
                mb << 20,
                2,
                Some(3),
            );
        }
        if backend("lsm") {
            let lsm = LsmStateBackend::new(root.path().join("lsm-local"), lsm_options());
            checkpoints(&lsm, &root.path().join("lsm"), mb << 20, 2, Some(3));
        }
    }
    let sp_mb: u64 = std::env::var("TIDEMARK_BENCH_SAVEPOINT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(pick(16, 100));
    if part("savepoints") {
        println!("== canonical savepoints");
        let sp = root.path().join("savepoints");
        let lsm_sp = LsmStateBackend::new(root.path().join("lsm-sp-local"), lsm_options());
        let lsm_other = LsmStateBackend::new(root.path().join("lsm-sp-other"), lsm_options());
        if backend("memory") {
            savepoints(&MemoryStateBackend::new(), &lsm_other, &sp, sp_mb << 20);
        }
        if backend("filesystem") {
            savepoints(&FsStateBackend::new(), &lsm_other, &sp, sp_mb << 20);
        }
        if backend("lsm") {
            savepoints(&lsm_sp, &FsStateBackend::new(), &sp, sp_mb << 20);
        }
    }
}
