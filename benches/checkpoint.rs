//! Checkpoint and restore benchmarks.
//!
//! A store of about 1 GiB (64 MiB with `TIDEMARK_BENCH_SHORT=1`) is loaded and compacted,
//! checkpointed once, and then, for each sample, 1% of its keys are overwritten and an
//! incremental checkpoint is taken. Reported per sample: the synchronous part, the total
//! time, and the bytes newly placed in the checkpoint; against them, the time of a durable
//! full copy of the same files, and (with `--features bench-rocksdb`) RocksDB's own
//! checkpoint (`Checkpoint::create_checkpoint`, hard links) after the same 1% change.
//! Restore: `restore_store` from the latest checkpoint into a fresh directory (including
//! the open), against a durable copy of the checkpoint's files.
//!
//! Each step is a single long operation on a 1 GiB data set, so this is a plain harness
//! that reports every sample and the median, not a criterion statistical loop.

mod common;

use std::fs;
#[cfg(feature = "bench-rocksdb")]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_root, key, pick, value, Durability, Rng, Tuning, KEY_LEN, VALUE_LEN};
use tidemark::checkpoint::{
    CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind, CheckpointStorage,
    CheckpointStore, CompletedCheckpoint, FileRole, JobId, KeyGroupRange, LocalStorage,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, WriteBatch};
use tidemark::state::lsm_snapshot::{restore_store, snapshot_async, snapshot_sync, SubtaskId};

/// One checkpoint of a store and how long its parts took.
struct Timed {
    completed: CompletedCheckpoint,
    /// Time writers were held up (the synchronous part).
    sync_duration: Duration,
    /// Time from start to durable `_metadata`.
    total_duration: Duration,
}

/// Takes incremental checkpoint `id` of `db`: synchronous part, asynchronous part,
/// `_metadata`.
fn checkpoint(store: &CheckpointStore, id: u64, db: &Db, subtask: &SubtaskId) -> Timed {
    let start = Instant::now();
    let ticket = snapshot_sync(db).expect("synchronous part");
    let sync_duration = start.elapsed();
    let pending = store
        .begin(CheckpointId(id), CheckpointKind::Incremental)
        .expect("begin");
    let state = snapshot_async(ticket, &pending, subtask).expect("asynchronous part");
    let completed = pending
        .commit(CheckpointContent {
            operator_states: vec![state],
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .expect("checkpoint");
    Timed {
        completed,
        sync_duration,
        total_duration: start.elapsed(),
    }
}

const MIB: f64 = (1 << 20) as f64;

fn tuning() -> Tuning {
    Tuning {
        memtable_bytes: 64 << 20,
        cache_bytes: 64 << 20,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// A batch of key-value pairs.
type Kvs = [([u8; KEY_LEN], [u8; VALUE_LEN])];

/// Loads sequential keys `from..to` (first value version) in batches of 1000 through `put`.
fn load_chunk(put: &mut dyn FnMut(&Kvs), from: u64, to: u64) {
    let mut batch = Vec::with_capacity(1000);
    for n in from..to {
        batch.push((key(n), value(n, 0)));
        if batch.len() == 1000 {
            put(&batch);
            batch.clear();
        }
    }
    if !batch.is_empty() {
        put(&batch);
    }
}

/// Keys changed by sample `s`: 1% of `n`, drawn at random.
fn changed_keys(n: u64, s: u64) -> Vec<u64> {
    let mut rng = Rng::new(10_000 + s);
    (0..n / 100).map(|_| rng.below(n)).collect()
}

fn tm_put(db: &Db, kvs: &Kvs) {
    let mut b = WriteBatch::new();
    for (k, v) in kvs {
        b.put(k, v);
    }
    db.write(b).expect("tidemark write");
}

/// Loads sequential keys until the store's tables hold `target` bytes; returns the key count.
fn load_tidemark(db: &Db, target: u64) -> u64 {
    let chunk = pick(100_000, 1_000_000);
    let mut n = 0;
    loop {
        load_chunk(&mut |kvs| tm_put(db, kvs), n, n + chunk);
        n += chunk;
        db.flush().expect("flush");
        if db.live_files().expect("live files").total_bytes() >= target {
            return n;
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; there are none to list here.
    }
    let root = bench_root();
    let root = root.path();
    println!("benchmark dir: {}", root.display());
    let limits = common::machine_limits(root);
    println!(
        "machine: append+fdatasync {:.3} ms, append+fsync {:.3} ms, sequential write {:.0} MiB/s",
        ms(limits.append_fdatasync),
        ms(limits.append_fsync),
        limits.seq_write_bytes_per_sec / MIB
    );

    let target: u64 = pick(64 << 20, 1 << 30);
    let samples: u64 = pick(2, 3);

    // ---- tidemark: load, compact, first checkpoint.
    let dir = root.join("tidemark-store");
    let opts = common::tidemark_options(Durability::Buffered, tuning());
    let db = Db::open(&dir, opts.clone()).expect("open");
    let t = Instant::now();
    let n = load_tidemark(&db, target);
    db.compact_range().expect("compact");
    let store_bytes = db.live_files().expect("live").total_bytes();
    println!(
        "tidemark store: {n} keys, {:.1} MiB in tables, loaded and compacted in {:.1} s",
        store_bytes as f64 / MIB,
        t.elapsed().as_secs_f64()
    );

    let storage = Arc::new(LocalStorage::new(
        StdFs::shared(),
        root.join("checkpoints"),
        JobId::new("bench").expect("job id"),
    ));
    let dyn_storage: Arc<dyn CheckpointStorage> = storage.clone();
    let store = CheckpointStore::open(dyn_storage.clone(), CheckpointConfig::default())
        .expect("checkpoint store");
    let subtask = SubtaskId {
        operator_id: "bench".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).expect("key groups"),
    };
    let first = checkpoint(&store, 1, &db, &subtask);
    println!(
        "tidemark first checkpoint: sync {:.3} ms, total {:.1} ms, placed {:.1} MiB in {} files",
        ms(first.sync_duration),
        ms(first.total_duration),
        first.completed.stats.bytes_placed as f64 / MIB,
        first.completed.stats.files_placed
    );

    // ---- incremental checkpoints after 1% changes.
    let (mut sync_ms, mut total_ms, mut placed_pct) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..samples {
        let keys = changed_keys(n, s);
        for c in keys.chunks(1000) {
            let kvs: Vec<_> = c.iter().map(|&k| (key(k), value(k, s + 1))).collect();
            tm_put(&db, &kvs);
        }
        let ck = checkpoint(&store, s + 2, &db, &subtask);
        let st = ck.completed.stats;
        let total = st.bytes_placed + st.bytes_referenced;
        let pct = 100.0 * st.bytes_placed as f64 / total as f64;
        sync_ms.push(ms(ck.sync_duration));
        total_ms.push(ms(ck.total_duration));
        placed_pct.push(pct);
        println!(
            "tidemark incremental #{s}: sync {:.3} ms, total {:.1} ms, placed {:.2} MiB in {} files \
             ({pct:.2}% of {:.1} MiB), referenced {} files",
            ms(ck.sync_duration),
            ms(ck.total_duration),
            st.bytes_placed as f64 / MIB,
            st.files_placed,
            total as f64 / MIB,
            st.files_referenced
        );
    }

    // ---- full durable copy of the same files.
    let mut copy_ms = Vec::new();
    for s in 0..samples {
        let live = db.live_files().expect("live");
        let files: Vec<PathBuf> = live.files().into_iter().map(|f| f.path).collect();
        let to = root.join(format!("full-copy-{s}"));
        let t = Instant::now();
        let bytes = common::copy_files_durably(&files, &to);
        let d = t.elapsed();
        copy_ms.push(ms(d));
        println!(
            "full copy #{s}: {:.1} MiB in {} files, {:.1} ms ({:.0} MiB/s)",
            bytes as f64 / MIB,
            files.len(),
            ms(d),
            bytes as f64 / MIB / d.as_secs_f64()
        );
        let _ = fs::remove_dir_all(&to);
    }

    // ---- restore from the latest checkpoint, against copying its files.
    let latest = store.latest().expect("a checkpoint");
    let state = &latest.operator_states[0];
    let ck_files: Vec<PathBuf> = state
        .file_handles()
        .filter(|f| f.role == FileRole::Shared)
        .map(|f| storage.job_dir().join(&f.path))
        .collect();
    drop(db);
    let (mut restore_ms, mut restore_copy_ms) = (Vec::new(), Vec::new());
    for s in 0..samples {
        let to = root.join(format!("restored-{s}"));
        let t = Instant::now();
        let restored = restore_store(
            dyn_storage.as_ref(),
            latest.checkpoint_id,
            state,
            &to,
            opts.clone(),
        )
        .expect("restore");
        let d = t.elapsed();
        assert!(restored.get(key(0)).expect("get").is_some());
        drop(restored);
        let _ = fs::remove_dir_all(&to);
        let to = root.join(format!("restore-copy-{s}"));
        let t = Instant::now();
        let bytes = common::copy_files_durably(&ck_files, &to);
        let dc = t.elapsed();
        let _ = fs::remove_dir_all(&to);
        restore_ms.push(ms(d));
        restore_copy_ms.push(ms(dc));
        println!(
            "restore #{s}: restore_store {:.1} ms; copying the checkpoint's {} files ({:.1} MiB) {:.1} ms",
            ms(d),
            ck_files.len(),
            bytes as f64 / MIB,
            ms(dc)
        );
    }
    drop(store);
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(root.join("checkpoints"));

    println!();
    println!("| figure | median | target | met |");
    println!("|---|---|---|---|");
    let m_sync = median(&sync_ms);
    let m_total = median(&total_ms);
    let m_pct = median(&placed_pct);
    let m_copy = median(&copy_ms);
    let m_restore = median(&restore_ms);
    let m_rcopy = median(&restore_copy_ms);
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "| incremental: bytes newly placed / store | {m_pct:.2}% | <= 5% | {} |",
        yes(m_pct <= 5.0)
    );
    println!(
        "| incremental: synchronous part | {m_sync:.3} ms | <= 10 ms | {} |",
        yes(m_sync <= 10.0)
    );
    println!(
        "| incremental: total / full copy | {m_total:.1} ms / {m_copy:.1} ms = {:.2}% | <= 10% | {} |",
        100.0 * m_total / m_copy,
        yes(m_total <= 0.1 * m_copy)
    );
    println!(
        "| restore / copy | {m_restore:.1} ms / {m_rcopy:.1} ms = {:.2}% | <= 10% | {} |",
        100.0 * m_restore / m_rcopy,
        yes(m_restore <= 0.1 * m_rcopy)
    );

    #[cfg(feature = "bench-rocksdb")]
    rocks_checkpoint(root, n, samples);
}

/// Bytes of the files in checkpoint `dir` that the previous checkpoint `prev` did not
/// already hold (compared by inode: a file hard-linked into both is not new). This is
/// what tidemark counts as "bytes placed".
#[cfg(feature = "bench-rocksdb")]
fn new_bytes(dir: &Path, prev: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let files = |d: &Path| -> Vec<fs::Metadata> {
        fs::read_dir(d)
            .expect("read checkpoint dir")
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .collect()
    };
    let old: HashSet<(u64, u64)> = files(prev).iter().map(|m| (m.dev(), m.ino())).collect();
    files(dir)
        .iter()
        .filter(|m| !old.contains(&(m.dev(), m.ino())))
        .map(|m| m.len())
        .sum()
}

/// RocksDB's own checkpoint after the same 1% changes of the same data set.
#[cfg(feature = "bench-rocksdb")]
fn rocks_checkpoint(root: &Path, n: u64, samples: u64) {
    use common::Engine;
    let dir = root.join("rocksdb-store");
    let e = common::rocks::RocksEngine::open(&dir, Durability::Buffered, tuning());
    let t = Instant::now();
    load_chunk(&mut |kvs| e.put_batch(kvs), 0, n);
    e.compact();
    let sst_bytes: u64 = fs::read_dir(&dir)
        .expect("read dir")
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|x| x == "sst"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "rocksdb store: {n} keys, {:.1} MiB in tables, loaded and compacted in {:.1} s",
        sst_bytes as f64 / MIB,
        t.elapsed().as_secs_f64()
    );
    let mut prev = root.join("rocksdb-ck-first");
    let t = Instant::now();
    rocksdb::checkpoint::Checkpoint::new(&e.db)
        .expect("checkpoint object")
        .create_checkpoint(&prev)
        .expect("first rocksdb checkpoint");
    println!("rocksdb first checkpoint: {:.1} ms", ms(t.elapsed()));
    let (mut total_ms, mut open_ms, mut placed_pct) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..samples {
        let keys = changed_keys(n, s);
        for c in keys.chunks(1000) {
            let kvs: Vec<_> = c.iter().map(|&k| (key(k), value(k, s + 1))).collect();
            e.put_batch(&kvs);
        }
        let to = root.join(format!("rocksdb-ck-{s}"));
        let t = Instant::now();
        rocksdb::checkpoint::Checkpoint::new(&e.db)
            .expect("checkpoint object")
            .create_checkpoint(&to)
            .expect("rocksdb checkpoint");
        let d = t.elapsed();
        let placed = new_bytes(&to, &prev);
        let all = common::dir_bytes(&to);
        // Restoring a RocksDB checkpoint on the same file system is opening it in place.
        let t = Instant::now();
        let opened =
            rocksdb::DB::open(&common::rocks::options(tuning(), Durability::Buffered), &to)
                .expect("open ck");
        let od = t.elapsed();
        drop(opened);
        total_ms.push(ms(d));
        open_ms.push(ms(od));
        let pct = 100.0 * placed as f64 / all as f64;
        placed_pct.push(pct);
        println!(
            "rocksdb checkpoint #{s}: total {:.1} ms (the API reports no separate synchronous part), \
             new files {:.2} MiB ({pct:.2}% of {:.1} MiB); open in place {:.1} ms",
            ms(d),
            placed as f64 / MIB,
            all as f64 / MIB,
            ms(od)
        );
        let _ = fs::remove_dir_all(&prev);
        prev = to;
    }
    println!(
        "| rocksdb checkpoint after 1% change (median) | total {:.1} ms, new files {:.2}%, open in place {:.1} ms |",
        median(&total_ms),
        median(&placed_pct),
        median(&open_ms)
    );
    drop(e);
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&prev);
}
