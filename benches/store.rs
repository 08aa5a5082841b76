//! Store benchmarks: tidemark against fjall (and RocksDB with `--features bench-rocksdb`),
//! same keys, values, data sets and options of equal strength (see `common`).
//!
//! Groups (each with one entry per engine, throughput in operations):
//! - `fillseq`, `fillrandom`: a fresh store per iteration, N writes, WAL without fsync,
//!   timed up to the end of the flush and compactions they leave behind;
//! - `overwrite`: N random overwrites of a store preloaded with N keys, timed the same way;
//! - `update-zipf-1t`, `-2t`, `-4t`: unsynced updates of zipfian-chosen keys of a loaded
//!   store from 1, 2 and 4 threads;
//! - `ycsb-a-2t`, `ycsb-b-2t`: YCSB workloads A (50% reads, 50% updates) and B (95% reads)
//!   over zipfian-chosen keys from 2 threads;
//! - `synced-1t`, `synced-4t`: fdatasynced writes (group commit where the engine has it)
//!   from 1 and 4 threads;
//! - `readrandom-hit`, `readrandom-miss`, `seekrandom-100`: over a compacted store larger
//!   than the block cache;
//! - `machine`: the disk's own limits (append + fdatasync, sequential write bandwidth);
//! - `writeamp` (printed, not a criterion group): bytes written per logical byte by a
//!   random load and its compactions, then the time and bytes of a full compaction.
//!
//! - `memory` (printed, not a criterion group): each engine in a fresh child process
//!   loads N keys (default 8M) in random order, settles and reads at random; the peak
//!   resident memory (VmHWM) and its anonymous and file-backed parts are compared.
//!
//! `TIDEMARK_BENCH_SHORT=1` runs small data sets with few samples.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    bench_root, engines, key, load, open, pick, shuffled, value, Durability, Rng, Tuning, Zipfian,
};
use criterion::{Criterion, SamplingMode, Throughput};

/// Sizes of the write workloads: memtable and cache.
fn write_tuning() -> Tuning {
    Tuning {
        memtable_bytes: pick(1 << 20, 32 << 20),
        cache_bytes: pick(1 << 20, 64 << 20),
    }
}

/// Sizes of the read workloads: the block cache is smaller than the store.
fn read_tuning() -> Tuning {
    Tuning {
        memtable_bytes: pick(1 << 20, 32 << 20),
        cache_bytes: pick(1 << 20, 64 << 20),
    }
}

/// Configures a group whose every sample is exactly one iteration (a fixed amount of work
/// on a fixed data set), so every engine does the same work: one warm-up iteration, then
/// ten measured ones. Criterion warns that the samples exceed the (tiny) target time.
fn one_iteration_per_sample(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
}

fn fill(c: &mut Criterion, root: &Path, name: &str, random: bool) {
    let n: u64 = pick(20_000, 1_000_000);
    let mut g = c.benchmark_group(name);
    one_iteration_per_sample(&mut g);
    g.throughput(Throughput::Elements(n));
    for engine in engines() {
        let run = AtomicU64::new(0);
        g.bench_function(engine, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let i = run.fetch_add(1, Ordering::Relaxed);
                    let dir = root.join(format!("{name}-{engine}-{i}"));
                    let db = open(engine, &dir, Durability::Buffered, write_tuning());
                    let mut rng = Rng::new(42);
                    let start = Instant::now();
                    for s in 0..n {
                        let k = if random { rng.below(n) } else { s };
                        db.put(&key(k), &value(k, 0));
                    }
                    db.settle();
                    total += start.elapsed();
                    common::print_diagnostics(name, db.as_ref());
                    drop(db);
                    let _ = fs::remove_dir_all(&dir);
                }
                total
            })
        });
    }
    g.finish();
}

fn overwrite(c: &mut Criterion, root: &Path) {
    let n: u64 = pick(20_000, 1_000_000);
    let mut g = c.benchmark_group("overwrite");
    one_iteration_per_sample(&mut g);
    g.throughput(Throughput::Elements(n));
    for engine in engines() {
        let dir = root.join(format!("overwrite-{engine}"));
        let db = open(engine, &dir, Durability::Buffered, write_tuning());
        load(db.as_ref(), 0..n, 0);
        db.settle();
        let run = AtomicU64::new(1);
        g.bench_function(engine, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let version = run.fetch_add(1, Ordering::Relaxed);
                    let mut rng = Rng::new(1000 + version);
                    let start = Instant::now();
                    for _ in 0..n {
                        let k = rng.below(n);
                        db.put(&key(k), &value(k, version));
                    }
                    db.settle();
                    total += start.elapsed();
                    common::print_diagnostics("overwrite", db.as_ref());
                }
                total
            })
        });
        drop(db);
        let _ = fs::remove_dir_all(&dir);
    }
    g.finish();
}

fn synced(c: &mut Criterion, root: &Path, threads: u64) {
    let ops: u64 = pick(200, 2000);
    let name = format!("synced-{threads}t");
    let mut g = c.benchmark_group(&name);
    one_iteration_per_sample(&mut g);
    g.throughput(Throughput::Elements(ops));
    for engine in engines() {
        let dir = root.join(format!("{name}-{engine}"));
        let db = open(engine, &dir, Durability::Synced, write_tuning());
        let run = AtomicU64::new(0);
        g.bench_function(engine, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let i = run.fetch_add(1, Ordering::Relaxed);
                    let db = db.as_ref();
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            s.spawn(move || {
                                let mut rng = Rng::new(i * 64 + t);
                                for _ in 0..ops / threads {
                                    let k = rng.next_u64() >> 11;
                                    db.put(&key(k), &value(k, i));
                                }
                            });
                        }
                    });
                    total += start.elapsed();
                    common::print_diagnostics(&name, db);
                }
                total
            })
        });
        drop(db);
        let _ = fs::remove_dir_all(&dir);
    }
    g.finish();
}

/// Zipfian skew of the concurrent workloads (YCSB's default).
const ZIPF_THETA: f64 = 0.99;

/// `threads` threads each run `ops / threads` operations on a loaded store of `n` keys:
/// a get of a zipfian-chosen key with probability `read_percent`%, else an unsynced update
/// of one. `update-zipf-*` is the update-only case, `ycsb-a-2t` and `ycsb-b-2t` YCSB's
/// workloads A and B. Only the operations are timed; between iterations the store settles
/// (untimed), so each starts from a store without a backlog.
///
/// Where the CPU goes is printed per engine ([`CpuSplit`]): the workers' own time per
/// operation and the time of every other thread of the process (flushes, compactions, log
/// writers) per operation, during the operations and while settling after them.
fn concurrent(c: &mut Criterion, root: &Path, name: &str, threads: u64, read_percent: u64) {
    let n: u64 = pick(20_000, 1_000_000);
    let ops: u64 = pick(40_000, 1_000_000);
    let zipf = Zipfian::new(n, ZIPF_THETA, 0);
    let mut g = c.benchmark_group(name);
    one_iteration_per_sample(&mut g);
    g.throughput(Throughput::Elements(ops));
    for engine in engines() {
        let dir = root.join(format!("{name}-{engine}"));
        let db = open(engine, &dir, Durability::Buffered, write_tuning());
        load(db.as_ref(), shuffled(n, 3), 0);
        db.settle();
        let run = AtomicU64::new(1);
        let mut split = CpuSplit::default();
        g.bench_function(engine, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let version = run.fetch_add(1, Ordering::Relaxed);
                    let db = db.as_ref();
                    let zipf = &zipf;
                    let workers_cpu = AtomicU64::new(0);
                    let workers_cpu = &workers_cpu;
                    let process_before = common::process_cpu();
                    let start = Instant::now();
                    let found: u64 = std::thread::scope(|s| {
                        let handles: Vec<_> = (0..threads)
                            .map(|t| {
                                s.spawn(move || {
                                    let mut keys = zipf.reseeded(version * 64 + t);
                                    let mut coin = Rng::new(version * 64 + t + 32);
                                    let mut found = 0u64;
                                    let cpu_before = common::thread_cpu();
                                    for _ in 0..ops / threads {
                                        let k = keys.next();
                                        if coin.below(100) < read_percent {
                                            found += db.get(&key(k)) as u64;
                                        } else {
                                            db.put(&key(k), &value(k, version));
                                        }
                                    }
                                    let cpu = common::thread_cpu().saturating_sub(cpu_before);
                                    workers_cpu.fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
                                    found
                                })
                            })
                            .collect();
                        handles
                            .into_iter()
                            .map(|h| h.join().expect("worker thread"))
                            .sum()
                    });
                    let elapsed = start.elapsed();
                    let process_window = common::process_cpu().saturating_sub(process_before);
                    total += elapsed;
                    std::hint::black_box(found);
                    common::print_diagnostics(name, db);
                    let settle_before = common::process_cpu();
                    db.settle();
                    split.add(
                        ops / threads * threads,
                        elapsed,
                        Duration::from_nanos(workers_cpu.load(Ordering::Relaxed)),
                        process_window,
                        common::process_cpu().saturating_sub(settle_before),
                    );
                }
                total
            })
        });
        split.print(name, engine, threads);
        drop(db);
        let _ = fs::remove_dir_all(&dir);
    }
    g.finish();
}

/// CPU time of a concurrent workload, summed over its iterations.
#[derive(Default)]
struct CpuSplit {
    ops: u64,
    wall: Duration,
    /// The worker threads' own CPU time (the engine's calls and the harness's key chooser).
    workers: Duration,
    /// Every thread of the process while the workers ran.
    window: Duration,
    /// Every thread of the process while the store settled after them.
    settle: Duration,
}

impl CpuSplit {
    fn add(
        &mut self,
        ops: u64,
        wall: Duration,
        workers: Duration,
        window: Duration,
        settle: Duration,
    ) {
        self.ops += ops;
        self.wall += wall;
        self.workers += workers;
        self.window += window;
        self.settle += settle;
    }

    /// Prints the split per operation and what it bounds the rate to: `threads` workers
    /// cannot go faster than their own CPU time allows, and the process cannot use more
    /// than the machine's cores for the workers' time and the background work together.
    fn print(&self, name: &str, engine: &str, threads: u64) {
        if self.ops == 0 {
            return;
        }
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / self.ops as f64;
        let workers = per_op(self.workers);
        let during = per_op(self.window.saturating_sub(self.workers));
        let settling = per_op(self.settle);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let bound = (threads as f64 / workers).min(cores / (workers + during + settling)) * 1e6;
        eprintln!(
            "[{name}] {engine}: {:.0} ops/s; CPU per operation: workers {workers:.2} us, \
             other threads {during:.2} us during the operations + {settling:.2} us settling; \
             {cores} cores bound {threads} workers at {bound:.0} ops/s",
            self.ops as f64 / self.wall.as_secs_f64(),
        );
    }
}

/// Write amplification and full compaction, per engine (printed): a fresh store gets `n`
/// single-key writes of random keys (`n` distinct keys in random order, so every write
/// is new data), then settles; the bytes the process wrote meanwhile (WAL and tables,
/// `/proc/self/io`) are divided by the logical bytes (keys and values). Then a full
/// compaction (`Engine::compact`) is timed and its bytes counted the same way.
fn writeamp(root: &Path) {
    let n: u64 = pick(200_000, 8_000_000);
    let logical = n * (common::KEY_LEN + common::VALUE_LEN) as u64;
    let order = shuffled(n, 11);
    for engine in engines() {
        let dir = root.join(format!("writeamp-{engine}"));
        let db = match engine {
            // RocksDB counts its table bytes only with statistics on.
            #[cfg(feature = "bench-rocksdb")]
            "rocksdb" => Box::new(common::rocks::RocksEngine::open_counting(
                &dir,
                Durability::Buffered,
                write_tuning(),
            )),
            _ => open(engine, &dir, Durability::Buffered, write_tuning()),
        };
        let before = common::process_write_bytes();
        let tables_before = db.table_bytes_written();
        let start = Instant::now();
        for &k in &order {
            db.put(&key(k), &value(k, 0));
        }
        db.settle();
        let load_secs = start.elapsed().as_secs_f64();
        common::print_diagnostics("writeamp, after the load", db.as_ref());
        let after = common::process_write_bytes();
        let tables_after = db.table_bytes_written();
        let start = Instant::now();
        db.compact();
        let compact_secs = start.elapsed().as_secs_f64();
        let after_compact = common::process_write_bytes();
        let tables_compact = db.table_bytes_written();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let per_logical = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", (b - a) as f64 / logical as f64),
            _ => "n/a".into(),
        };
        let delta_mib = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.0} MiB", mib(b - a)),
            _ => "n/a".into(),
        };
        eprintln!(
            "writeamp {engine}: {n} random writes ({:.0} MiB logical) + settle in {load_secs:.1} s              ({:.0} ops/s): process bytes written per logical byte {} (tables only: {});              full compaction {compact_secs:.2} s, process bytes {} (tables only: {});              {:.0} MiB on disk after",
            mib(logical),
            n as f64 / load_secs,
            per_logical(before, after),
            per_logical(tables_before, tables_after),
            delta_mib(after, after_compact),
            delta_mib(tables_after, tables_compact),
            mib(common::dir_bytes(&dir)),
        );
        common::print_diagnostics("writeamp, after the full compaction", db.as_ref());
        drop(db);
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Opens one compacted read store per engine: keys `2i` for `i < n` (odd keys are misses
/// that fall between present keys), loaded in random order.
fn read_stores(root: &Path, n: u64) -> Vec<(&'static str, Box<dyn common::Engine>)> {
    let order = shuffled(n, 7);
    engines()
        .into_iter()
        .map(|engine| {
            let dir = root.join(format!("read-{engine}"));
            let db = open(engine, &dir, Durability::Buffered, read_tuning());
            load(db.as_ref(), order.iter().map(|i| 2 * i), 0);
            db.compact();
            assert!(db.get(&key(0)) && !db.get(&key(1)), "{engine}: read store");
            eprintln!(
                "read store {engine}: {} keys, {:.1} MiB on disk",
                n,
                common::dir_bytes(&dir) as f64 / (1 << 20) as f64
            );
            (engine, db)
        })
        .collect()
}

fn reads(c: &mut Criterion, root: &Path) {
    let n: u64 = pick(50_000, 2_000_000);
    let filtered = ["readrandom-hit", "readrandom-miss", "seekrandom-100"]
        .iter()
        .any(|g| wants(g));
    if !filtered {
        return;
    }
    let stores = read_stores(root, n);
    let configure = |g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>| {
        g.sample_size(pick(10, 20))
            .warm_up_time(pick(Duration::from_millis(200), Duration::from_secs(1)))
            .measurement_time(pick(Duration::from_secs(1), Duration::from_secs(5)));
    };
    for (name, miss) in [("readrandom-hit", 0u64), ("readrandom-miss", 1)] {
        let mut g = c.benchmark_group(name);
        configure(&mut g);
        const GETS: u64 = 1000;
        g.throughput(Throughput::Elements(GETS));
        for (engine, db) in &stores {
            let mut rng = Rng::new(99);
            g.bench_function(*engine, |b| {
                b.iter(|| {
                    let mut found = 0u64;
                    for _ in 0..GETS {
                        let k = 2 * rng.below(n) + miss;
                        found += db.get(&key(k)) as u64;
                    }
                    assert_eq!(found, if miss == 1 { 0 } else { GETS });
                    found
                })
            });
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("seekrandom-100");
        configure(&mut g);
        const SEEKS: u64 = 100;
        g.throughput(Throughput::Elements(SEEKS));
        for (engine, db) in &stores {
            let mut rng = Rng::new(5);
            g.bench_function(*engine, |b| {
                b.iter(|| {
                    let mut read = 0;
                    for _ in 0..SEEKS {
                        let k = 2 * rng.below(n);
                        read += db.scan(&key(k), 100);
                    }
                    read
                })
            });
        }
        g.finish();
    }
    for (engine, db) in stores {
        drop(db);
        let _ = fs::remove_dir_all(root.join(format!("read-{engine}")));
    }
}

fn machine(c: &mut Criterion, root: &Path) {
    use std::io::Write;
    let mut g = c.benchmark_group("machine");
    g.sample_size(pick(10, 20))
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(pick(Duration::from_secs(1), Duration::from_secs(3)));
    g.throughput(Throughput::Elements(1));
    for (label, data_only) in [
        ("append-128B-fdatasync", true),
        ("append-128B-fsync", false),
    ] {
        let path = root.join(format!("{label}.probe"));
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open probe");
        g.bench_function(label, |b| {
            b.iter(|| {
                f.write_all(&[0xA5; 128]).expect("append");
                if data_only {
                    f.sync_data().expect("fdatasync");
                } else {
                    f.sync_all().expect("fsync");
                }
            })
        });
        drop(f);
        let _ = fs::remove_file(&path);
    }
    {
        // The same appends into a file whose size was set beforehand (as a log that is
        // preallocated): fdatasync then need not commit a new file size.
        let label = "presized-128B-fdatasync";
        let path = root.join(format!("{label}.probe"));
        let mut f = fs::File::create(&path).expect("create probe");
        f.set_len(256 << 20).expect("set_len");
        let mut written = 0u64;
        g.bench_function(label, |b| {
            b.iter(|| {
                if written + 128 > 256 << 20 {
                    std::io::Seek::rewind(&mut f).expect("rewind");
                    written = 0;
                }
                f.write_all(&[0xA5; 128]).expect("write");
                written += 128;
                f.sync_data().expect("fdatasync");
            })
        });
        drop(f);
        let _ = fs::remove_file(&path);
    }
    let bytes: u64 = pick(16 << 20, 256 << 20);
    g.throughput(Throughput::Bytes(bytes));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("seq-write-1MiB-chunks-fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = common::seq_write_bandwidth(root, bytes as usize);
                total += Duration::from_secs_f64(bytes as f64 / d);
            }
            total
        })
    });
    g.finish();
}

/// One engine configuration of the `memory` workload.
const MEMORY_VARIANTS: &[&str] = &[
    "tidemark",
    "tidemark-2buf",
    "tidemark-mapped",
    "tidemark-budget128",
    "fjall",
    #[cfg(feature = "bench-rocksdb")]
    "rocksdb",
    #[cfg(feature = "bench-rocksdb")]
    "rocksdb-2buf",
];

/// The env var that makes this binary a `memory` child: its value names the variant.
const MEMORY_CHILD_ENV: &str = "TIDEMARK_BENCH_MEMORY_CHILD";

/// Resident memory of this process from `/proc/self/status`, in KiB:
/// (VmHWM, VmRSS, RssAnon, RssFile).
fn proc_status_kib() -> (u64, u64, u64, u64) {
    let s = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("VmHWM:"),
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
    )
}

/// The memory workload's tuning: a 64 MiB memtable and a 64 MiB block cache for every
/// engine (the outside harness's sizes).
fn memory_tuning() -> Tuning {
    Tuning {
        memtable_bytes: pick(4 << 20, 64 << 20),
        cache_bytes: pick(4 << 20, 64 << 20),
    }
}

/// Opens the store of a `memory` variant: `tidemark` (default options: positioned table
/// reads, an active memtable and up to two immutable ones), `tidemark-2buf` (at most one
/// immutable memtable, as RocksDB's default `max_write_buffer_number = 2`), `rocksdb` (the
/// harness's options: three write buffers, as tidemark's default), `rocksdb-2buf` (its
/// default two), `tidemark-mapped` (tables read through memory mappings), `tidemark-budget128`
/// (one strict 128 MiB [`tidemark::lsm::MemoryBudget`]: 64 MiB for memtables, which
/// writers wait for flushes to stay within, in 32 MiB memtables; 64 MiB of block cache that
/// the tables' index and filter blocks are charged to) and `fjall`.
fn memory_engine(variant: &str, dir: &Path) -> Box<dyn common::Engine> {
    use tidemark::lsm::{Db, MemoryBudget, TableReads};
    let tidemark = |o: tidemark::lsm::Options| -> Box<dyn common::Engine> {
        Box::new(common::TidemarkEngine {
            db: Db::open(dir, o).expect("open tidemark"),
        })
    };
    let base = common::tidemark_options(Durability::Buffered, memory_tuning());
    match variant {
        "tidemark" | "fjall" => open(variant, dir, Durability::Buffered, memory_tuning()),
        #[cfg(feature = "bench-rocksdb")]
        "rocksdb" => open(variant, dir, Durability::Buffered, memory_tuning()),
        #[cfg(feature = "bench-rocksdb")]
        "rocksdb-2buf" => {
            let mut o = common::rocks::options(memory_tuning(), Durability::Buffered);
            o.set_max_write_buffer_number(2);
            Box::new(common::rocks::RocksEngine::open_with(
                dir,
                o,
                Durability::Buffered,
            ))
        }
        "tidemark-2buf" => tidemark(tidemark::lsm::Options {
            max_immutable_memtables: 1,
            ..base
        }),
        "tidemark-mapped" => tidemark(tidemark::lsm::Options {
            table_reads: TableReads::Mapped,
            ..base
        }),
        "tidemark-budget128" => tidemark(tidemark::lsm::Options {
            memory_budget: Some(
                MemoryBudget::new_strict(pick(8 << 20, 128 << 20)).expect("budget"),
            ),
            // Two memtables fill the budget's half for memtables.
            memtable_size_bytes: pick(2 << 20, 32 << 20),
            ..base
        }),
        other => panic!("unknown memory variant {other}"),
    }
}

/// The child side of the `memory` workload: loads `n` keys in random order, settles,
/// reads `reads` random keys (every one present), and prints one `memory-result` line.
/// A sampler thread records the largest RssAnon and RssFile seen (every 20 ms).
fn memory_child(variant: &str) {
    let n: u64 = std::env::var("TIDEMARK_BENCH_MEMORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("TIDEMARK_BENCH_MEMORY_N");
    let reads: u64 = std::env::var("TIDEMARK_BENCH_MEMORY_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::path::PathBuf::from(
        std::env::var_os("TIDEMARK_BENCH_MEMORY_DIR").expect("TIDEMARK_BENCH_MEMORY_DIR"),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut anon, mut file) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let (_, _, a, f) = proc_status_kib();
                anon = anon.max(a);
                file = file.max(f);
                std::thread::sleep(Duration::from_millis(20));
            }
            (anon, file)
        })
    };
    let db = memory_engine(variant, &dir);
    let start = Instant::now();
    load(db.as_ref(), shuffled(n, 17), 0);
    db.settle();
    let load_secs = start.elapsed().as_secs_f64();
    let (hwm_load, ..) = proc_status_kib();
    let mut rng = Rng::new(23);
    let start = Instant::now();
    let mut found = 0u64;
    for _ in 0..reads {
        found += db.get(&key(rng.below(n))) as u64;
    }
    let read_secs = start.elapsed().as_secs_f64();
    assert_eq!(found, reads, "{variant}: every key read must be found");
    let (hwm, rss, anon, file) = proc_status_kib();
    stop.store(true, Ordering::Relaxed);
    let (peak_anon, peak_file) = sampler.join().expect("sampler");
    common::print_diagnostics("memory", db.as_ref());
    drop(db);
    println!(
        "memory-result {variant} {n} {load_secs:.3} {:.0} {hwm_load} {hwm} {rss} {anon} {file} {peak_anon} {peak_file}",
        reads as f64 / read_secs
    );
}

/// The `memory` workload: for each variant and each key count, a fresh child process
/// (this binary with [`MEMORY_CHILD_ENV`] set) loads the keys, settles, reads at random
/// and reports its peak resident memory; the parent prints a table with each variant's
/// ratio to the first.
///
/// `TIDEMARK_BENCH_MEMORY_KEYS` (default `8000000`, comma-separated for several),
/// `TIDEMARK_BENCH_MEMORY_VARIANTS` (default every variant) and
/// `TIDEMARK_BENCH_MEMORY_READS` (default 1,000,000) change what runs.
fn memory(root: &Path) {
    let sizes: Vec<u64> = std::env::var("TIDEMARK_BENCH_MEMORY_KEYS")
        .unwrap_or_else(|_| pick("100000", "8000000").to_string())
        .split(',')
        .map(|s| s.trim().parse().expect("TIDEMARK_BENCH_MEMORY_KEYS"))
        .collect();
    let variants: Vec<String> = std::env::var("TIDEMARK_BENCH_MEMORY_VARIANTS")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|_| MEMORY_VARIANTS.iter().map(|s| s.to_string()).collect());
    let reads = std::env::var("TIDEMARK_BENCH_MEMORY_READS")
        .unwrap_or_else(|_| pick("100000", "1000000").to_string());
    let exe = std::env::current_exe().expect("current exe");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for &n in &sizes {
        let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
        for variant in &variants {
            let dir = root.join(format!("memory-{variant}-{n}"));
            let out = std::process::Command::new(&exe)
                .env(MEMORY_CHILD_ENV, variant)
                .env("TIDEMARK_BENCH_MEMORY_N", n.to_string())
                .env("TIDEMARK_BENCH_MEMORY_READS", &reads)
                .env("TIDEMARK_BENCH_MEMORY_DIR", &dir)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run memory child");
            let _ = fs::remove_dir_all(&dir);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix("memory-result "))
                .unwrap_or_else(|| panic!("{variant}: child failed ({}): {stdout}", out.status));
            let figures: Vec<f64> = line
                .split_whitespace()
                .skip(2)
                .map(|x| x.parse().expect("memory figure"))
                .collect();
            rows.push((variant.clone(), figures));
        }
        eprintln!(
            "\nmemory, {n} keys of 16+100 bytes loaded in random order, {reads} random reads; \
             64 MiB memtable, 64 MiB block cache; MiB"
        );
        eprintln!(
            "{:<22} {:>8} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10} {:>8}",
            "variant",
            "load s",
            "reads/s",
            "HWM load",
            "VmHWM",
            "RssAnon",
            "RssFile",
            "max anon",
            "max file",
            "HWM ratio",
            "reads x"
        );
        let base = rows.first().map(|r| r.1.clone()).unwrap_or_default();
        for (variant, f) in &rows {
            eprintln!(
                "{:<22} {:>8.1} {:>10.0} {:>9.0} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>9.0} {:>10.2} {:>8.2}",
                variant,
                f[0],
                f[1],
                mib(f[2] as u64),
                mib(f[3] as u64),
                mib(f[5] as u64),
                mib(f[6] as u64),
                mib(f[7] as u64),
                mib(f[8] as u64),
                f[3] / base[3],
                f[1] / base[1],
            );
        }
    }
}

/// True when the command line's filter (if any), taken as a substring of `group/engine`,
/// could select a benchmark of group `g`.
fn wants(g: &str) -> bool {
    // Criterion's options that take a value: their values are not filters.
    const WITH_VALUE: &[&str] = &[
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
        "--color",
        "--format",
        "-s",
        "-b",
        "-c",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters: Vec<&String> = Vec::new();
    let mut skip_next = false;
    for a in &args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if a.starts_with('-') {
            skip_next = WITH_VALUE.contains(&a.as_str());
        } else {
            filters.push(a);
        }
    }
    filters.is_empty()
        || filters.iter().any(|f| {
            f.contains(g)
                || engines()
                    .iter()
                    .any(|e| format!("{g}/{e}").contains(f.as_str()))
        })
}

fn main() {
    if let Ok(variant) = std::env::var(MEMORY_CHILD_ENV) {
        return memory_child(&variant);
    }
    let root = bench_root();
    eprintln!("benchmark stores under {}", root.path().display());
    let mut c = Criterion::default().configure_from_args();
    if wants("machine") {
        machine(&mut c, root.path());
    }
    if wants("fillseq") {
        fill(&mut c, root.path(), "fillseq", false);
    }
    if wants("fillrandom") {
        fill(&mut c, root.path(), "fillrandom", true);
    }
    if wants("overwrite") {
        overwrite(&mut c, root.path());
    }
    if wants("synced-1t") {
        synced(&mut c, root.path(), 1);
    }
    if wants("synced-4t") {
        synced(&mut c, root.path(), 4);
    }
    for threads in [1, 2, 4] {
        let name = format!("update-zipf-{threads}t");
        if wants(&name) {
            concurrent(&mut c, root.path(), &name, threads, 0);
        }
    }
    if wants("ycsb-a-2t") {
        concurrent(&mut c, root.path(), "ycsb-a-2t", 2, 50);
    }
    if wants("ycsb-b-2t") {
        concurrent(&mut c, root.path(), "ycsb-b-2t", 2, 95);
    }
    if wants("writeamp") {
        writeamp(root.path());
    }
    reads(&mut c, root.path());
    if wants("memory") {
        memory(root.path());
    }
    c.final_summary();
}
