//! What the store and checkpoint benchmarks share: the data set (keys, values, a seeded
//! generator), the engines behind one small trait with options of equal strength, and the
//! machine's own limits (fsync latency, sequential write bandwidth).
//!
//! Every engine gets the same keys and values in the same order, lz4 block compression,
//! 10 bloom bits per key, 4 KiB blocks, the same memtable and block cache sizes, and a
//! write-ahead log that is either handed to the operating system on every write
//! ([`Durability::Buffered`]) or made durable before every write is acknowledged
//! ([`Durability::Synced`]).

#![allow(dead_code)] // each bench binary uses its own part of this module

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Length of every key.
pub const KEY_LEN: usize = 16;
/// Length of every value.
pub const VALUE_LEN: usize = 100;

/// True when `TIDEMARK_BENCH_SHORT=1`: small data sets and few samples, for a quick check.
pub fn short_mode() -> bool {
    std::env::var("TIDEMARK_BENCH_SHORT").is_ok_and(|v| v == "1")
}

/// Picks the short-mode or full-mode figure.
pub fn pick<T>(short: T, full: T) -> T {
    if short_mode() {
        short
    } else {
        full
    }
}

/// Directory under which every benchmark store lives: `TIDEMARK_BENCH_DIR` or the system's
/// temp dir. The machine limits are measured in the same place.
pub fn bench_root() -> tempfile::TempDir {
    let base = std::env::var_os("TIDEMARK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&base).expect("create benchmark base dir");
    tempfile::Builder::new()
        .prefix("tidemark-bench-")
        .tempdir_in(base)
        .expect("create benchmark dir")
}

/// SplitMix64: a tiny seeded generator, so every engine sees the same sequence.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Key number `n` as 16 ASCII digits: sorts as the number does.
pub fn key(n: u64) -> [u8; KEY_LEN] {
    let mut k = [b'0'; KEY_LEN];
    let mut x = n;
    for b in k.iter_mut().rev() {
        *b = b'0' + (x % 10) as u8;
        x /= 10;
    }
    k
}

/// Value for key number `n` in version `version`: 50 random bytes then the same 50 again,
/// so lz4 halves it (as a typical compressible value).
pub fn value(n: u64, version: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    let mut rng = Rng::new(n.wrapping_mul(31).wrapping_add(version));
    for chunk in v[..VALUE_LEN / 2].chunks_mut(8) {
        let r = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    let (a, b) = v.split_at_mut(VALUE_LEN / 2);
    b.copy_from_slice(a);
    v
}

/// The numbers `0..n` in a seeded random order (Fisher-Yates).
pub fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Whether writes are fsynced before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The log is handed to the OS on every write, never fsynced by the write.
    Buffered,
    /// Every write is fdatasynced before it is acknowledged (concurrent writers may share one).
    Synced,
}

/// Sizes every engine is configured with.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Memtable (write buffer) size in bytes.
    pub memtable_bytes: usize,
    /// Block cache size in bytes.
    pub cache_bytes: usize,
}

/// Data block size for every engine.
pub const BLOCK_BYTES: usize = 4096;
/// Bloom filter bits per key for every engine.
pub const BLOOM_BITS: u32 = 10;

/// The operations the benchmarks need, on any engine. Failures panic: a benchmark that
/// cannot write has nothing to report.
pub trait Engine: Send + Sync {
    /// Short name (`tidemark`, `fjall`, `rocksdb`).
    fn name(&self) -> &'static str;
    /// One write.
    fn put(&self, k: &[u8], v: &[u8]);
    /// Many writes in one atomic batch (used to load data sets quickly).
    fn put_batch(&self, kvs: &[([u8; KEY_LEN], [u8; VALUE_LEN])]);
    /// Looks a key up; true when found.
    fn get(&self, k: &[u8]) -> bool;
    /// Seeks to the first key `>= start` and reads up to `n` entries; returns how many.
    fn scan(&self, start: &[u8], n: usize) -> usize;
    /// Flushes the memtable and compacts everything (major compaction).
    fn compact(&self);
    /// Flushes the memtable and waits until no flush or compaction is pending or running,
    /// so that the work a write load left behind is counted with it.
    fn settle(&self);
    /// Bytes the engine wrote to tables (flushes and compactions) so far, if it counts them.
    fn table_bytes_written(&self) -> Option<u64> {
        None
    }
    /// Engine statistics worth printing after a run (stalls, fsyncs, write amplification),
    /// if the engine offers them.
    fn diagnostics(&self) -> Option<String> {
        None
    }
}

/// Prints `e`'s diagnostics to stderr when `TIDEMARK_BENCH_STATS=1`.
pub fn print_diagnostics(label: &str, e: &dyn Engine) {
    if std::env::var("TIDEMARK_BENCH_STATS").is_ok_and(|v| v == "1") {
        if let Some(d) = e.diagnostics() {
            eprintln!("[{label}] {}: {d}", e.name());
        }
    }
}

/// Names of the engines compiled into this run, tidemark first; `TIDEMARK_BENCH_ENGINES`
/// (a comma-separated list) keeps only those named.
pub fn engines() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = vec!["tidemark", "fjall"];
    #[cfg(feature = "bench-rocksdb")]
    v.push("rocksdb");
    if let Ok(only) = std::env::var("TIDEMARK_BENCH_ENGINES") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        v.retain(|e| wanted.contains(e));
    }
    v
}

/// Opens (creating) engine `name` in `dir`.
pub fn open(name: &str, dir: &Path, durability: Durability, t: Tuning) -> Box<dyn Engine> {
    match name {
        "tidemark" => Box::new(TidemarkEngine::open(dir, durability, t)),
        "fjall" => Box::new(FjallEngine::open(dir, durability, t)),
        #[cfg(feature = "bench-rocksdb")]
        "rocksdb" => Box::new(rocks::RocksEngine::open(dir, durability, t)),
        other => panic!("unknown engine {other}"),
    }
}

/// tidemark's options for a benchmark. `TIDEMARK_BENCH_TABLE_READS=mapped` reads tables
/// through memory mappings instead of positioned reads (the default);
/// `TIDEMARK_BENCH_CACHE_FORM=decompressed` caches every block decompressed (default: the
/// option's, compressed until reused); `TIDEMARK_BENCH_CACHE_ADMISSION=always` caches every
/// block that missed (default: the option's, on a second miss once the cache is full);
/// `TIDEMARK_BENCH_SUBCOMPACTIONS=<n>` sets `max_subcompactions` (default: the option's).
pub fn tidemark_options(durability: Durability, t: Tuning) -> tidemark::lsm::Options {
    use tidemark::lsm::{
        BlockCacheAdmission, BlockCacheForm, Compression, Options, SyncMode, TableReads,
    };
    Options {
        block_cache_form: match std::env::var("TIDEMARK_BENCH_CACHE_FORM").as_deref() {
            Ok("decompressed") => BlockCacheForm::Decompressed,
            _ => BlockCacheForm::default(),
        },
        block_cache_admission: match std::env::var("TIDEMARK_BENCH_CACHE_ADMISSION").as_deref() {
            Ok("always") => BlockCacheAdmission::Always,
            _ => BlockCacheAdmission::default(),
        },
        table_reads: match std::env::var("TIDEMARK_BENCH_TABLE_READS").as_deref() {
            Ok("mapped") => TableReads::Mapped,
            _ => TableReads::Positioned,
        },
        sync: match durability {
            Durability::Buffered => SyncMode::None,
            Durability::Synced => SyncMode::GroupCommit,
        },
        memtable_size_bytes: t.memtable_bytes,
        compression: Compression::Lz4,
        bloom_bits_per_key: BLOOM_BITS,
        block_cache_bytes: t.cache_bytes,
        block_size_bytes: BLOCK_BYTES,
        max_subcompactions: std::env::var("TIDEMARK_BENCH_SUBCOMPACTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Options::default().max_subcompactions),
        ..Options::default()
    }
}

/// tidemark.
pub struct TidemarkEngine {
    /// The store.
    pub db: tidemark::lsm::Db,
}

impl TidemarkEngine {
    /// Opens a store in `dir`.
    pub fn open(dir: &Path, durability: Durability, t: Tuning) -> Self {
        let db =
            tidemark::lsm::Db::open(dir, tidemark_options(durability, t)).expect("open tidemark");
        TidemarkEngine { db }
    }
}

impl Engine for TidemarkEngine {
    fn name(&self) -> &'static str {
        "tidemark"
    }
    fn put(&self, k: &[u8], v: &[u8]) {
        self.db.put(k, v).expect("tidemark put");
    }
    fn put_batch(&self, kvs: &[([u8; KEY_LEN], [u8; VALUE_LEN])]) {
        let mut b = tidemark::lsm::WriteBatch::new();
        for (k, v) in kvs {
            b.put(k, v);
        }
        self.db.write(b).expect("tidemark write");
    }
    fn get(&self, k: &[u8]) -> bool {
        self.db.get(k).expect("tidemark get").is_some()
    }
    fn scan(&self, start: &[u8], n: usize) -> usize {
        let it = self.db.scan(start..).expect("tidemark scan");
        let mut c = 0;
        for kv in it.take(n) {
            let (k, v) = kv.expect("tidemark scan entry");
            std::hint::black_box((k, v));
            c += 1;
        }
        c
    }
    fn compact(&self) {
        self.db.flush().expect("tidemark flush");
        self.db.compact_range().expect("tidemark compact_range");
    }
    fn settle(&self) {
        self.db.flush().expect("tidemark flush");
        self.db
            .wait_for_compactions()
            .expect("tidemark wait for compactions");
    }
    fn table_bytes_written(&self) -> Option<u64> {
        let s = self.db.stats();
        Some(s.flush_bytes_written + s.compaction_bytes_written)
    }
    fn diagnostics(&self) -> Option<String> {
        let s = self.db.stats();
        let files: Vec<usize> = s.levels.iter().map(|l| l.files).collect();
        Some(format!(
            "writes {} in {} groups, wal fsyncs {}, flushes {} ({} MiB), compactions {} \
             ({} MiB, {} trivial), write amp {:.2}, slowdowns {}, stops {}, stalled {:.1} ms, \
             files per level {:?}",
            s.writes,
            s.write_groups,
            s.wal_syncs,
            s.flushes,
            s.flush_bytes_written >> 20,
            s.compactions,
            s.compaction_bytes_written >> 20,
            s.trivial_moves,
            s.write_amplification(),
            s.slowdowns,
            s.stops,
            s.stall_micros as f64 / 1000.0,
            files
        ))
    }
}

/// fjall, one keyspace.
pub struct FjallEngine {
    db: fjall::Database,
    ks: fjall::Keyspace,
    durability: Durability,
}

impl FjallEngine {
    /// Opens a database with one keyspace `bench` in `dir`.
    pub fn open(dir: &Path, durability: Durability, t: Tuning) -> Self {
        use fjall::config::{
            BlockSizePolicy, BloomConstructionPolicy, CompressionPolicy, FilterPolicy,
            FilterPolicyEntry, PinningPolicy,
        };
        let db = fjall::Database::builder(dir)
            .cache_size(t.cache_bytes as u64)
            .open()
            .expect("open fjall");
        let memtable = t.memtable_bytes as u64;
        let ks = db
            .keyspace("bench", move || {
                fjall::KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .data_block_size_policy(BlockSizePolicy::all(BLOCK_BYTES as u32))
                    .data_block_compression_policy(CompressionPolicy::all(
                        fjall::CompressionType::Lz4,
                    ))
                    .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(
                        BloomConstructionPolicy::BitsPerKey(BLOOM_BITS as f32),
                    )))
                    // tidemark keeps every table's index and filter in memory (outside
                    // the block cache); so does fjall here, on every level.
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_pinning_policy(PinningPolicy::all(true))
            })
            .expect("open fjall keyspace");
        FjallEngine { db, ks, durability }
    }
}

impl Engine for FjallEngine {
    fn name(&self) -> &'static str {
        "fjall"
    }
    fn put(&self, k: &[u8], v: &[u8]) {
        match self.durability {
            // insert() writes the journal and flushes it to the OS (PersistMode::Buffer).
            Durability::Buffered => self.ks.insert(k, v).expect("fjall insert"),
            Durability::Synced => {
                let mut b = self
                    .db
                    .batch()
                    .durability(Some(fjall::PersistMode::SyncData));
                b.insert(&self.ks, k, v);
                b.commit().expect("fjall synced commit");
            }
        }
    }
    fn put_batch(&self, kvs: &[([u8; KEY_LEN], [u8; VALUE_LEN])]) {
        let mut b = self.db.batch();
        for (k, v) in kvs {
            b.insert(&self.ks, k.as_slice(), v.as_slice());
        }
        b.commit().expect("fjall batch commit");
    }
    fn get(&self, k: &[u8]) -> bool {
        self.ks.get(k).expect("fjall get").is_some()
    }
    fn scan(&self, start: &[u8], n: usize) -> usize {
        let mut c = 0;
        for g in self.ks.range(start..).take(n) {
            let kv = g.into_inner().expect("fjall scan entry");
            std::hint::black_box(kv);
            c += 1;
        }
        c
    }
    fn compact(&self) {
        self.ks
            .rotate_memtable_and_wait()
            .expect("fjall rotate memtable");
        self.ks.major_compact().expect("fjall major compaction");
    }
    fn settle(&self) {
        self.ks
            .rotate_memtable_and_wait()
            .expect("fjall rotate memtable");
        // fjall offers no wait for its compactions: poll until nothing is queued or
        // running for a few checks in a row (a compaction may schedule the next one).
        let mut idle = 0;
        while idle < 5 {
            if self.db.outstanding_flushes() == 0 && self.db.active_compactions() == 0 {
                idle += 1;
            } else {
                idle = 0;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// RocksDB through the `rocksdb` crate.
#[cfg(feature = "bench-rocksdb")]
pub mod rocks {
    use super::*;

    /// RocksDB's options for a benchmark.
    pub fn options(t: Tuning, durability: Durability) -> rocksdb::Options {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        o.set_write_buffer_size(t.memtable_bytes);
        // As many memtables as tidemark may hold: the active one and the immutable ones.
        let buffers = 1 + tidemark::lsm::Options::default().max_immutable_memtables;
        o.set_max_write_buffer_number(buffers as i32);
        // As many threads per compaction as tidemark's default (the machine's cores, up
        // to 4); RocksDB's own default is 1.
        let ways = tidemark::lsm::Options::default().max_subcompactions;
        o.set_max_subcompactions(ways as u32);
        if durability == Durability::Synced {
            // Reused log files are already allocated, so an fdatasync need not commit a
            // new file size (tidemark presizes its logs for the same reason).
            o.set_recycle_log_file_num(4);
        }
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut bb = rocksdb::BlockBasedOptions::default();
        bb.set_block_size(BLOCK_BYTES);
        bb.set_bloom_filter(BLOOM_BITS as f64, false);
        bb.set_block_cache(&rocksdb::Cache::new_lru_cache(t.cache_bytes));
        o.set_block_based_table_factory(&bb);
        o
    }

    /// RocksDB.
    pub struct RocksEngine {
        /// The database.
        pub db: rocksdb::DB,
        wo: rocksdb::WriteOptions,
        /// The options it was opened with, when they collect statistics (see
        /// [`RocksEngine::open_counting`]).
        stats: Option<rocksdb::Options>,
    }

    impl RocksEngine {
        /// Opens a database in `dir`.
        pub fn open(dir: &Path, durability: Durability, t: Tuning) -> Self {
            Self::open_with(dir, options(t, durability), durability)
        }

        /// Opens a database in `dir` with options `o`.
        pub fn open_with(dir: &Path, o: rocksdb::Options, durability: Durability) -> Self {
            let db = rocksdb::DB::open(&o, dir).expect("open rocksdb");
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(durability == Durability::Synced);
            RocksEngine {
                db,
                wo,
                stats: None,
            }
        }

        /// Opens a database in `dir` that collects statistics, so that it reports the
        /// bytes its flushes and compactions write (statistics cost RocksDB a few percent
        /// of its write rate, so only the workloads that report bytes use this).
        pub fn open_counting(dir: &Path, durability: Durability, t: Tuning) -> Self {
            let mut o = options(t, durability);
            o.enable_statistics();
            let mut e = Self::open_with(dir, o.clone(), durability);
            e.stats = Some(o);
            e
        }
    }

    impl Engine for RocksEngine {
        fn name(&self) -> &'static str {
            "rocksdb"
        }
        fn put(&self, k: &[u8], v: &[u8]) {
            self.db.put_opt(k, v, &self.wo).expect("rocksdb put");
        }
        fn put_batch(&self, kvs: &[([u8; KEY_LEN], [u8; VALUE_LEN])]) {
            let mut b = rocksdb::WriteBatch::default();
            for (k, v) in kvs {
                b.put(k, v);
            }
            self.db.write_opt(b, &self.wo).expect("rocksdb write");
        }
        fn get(&self, k: &[u8]) -> bool {
            self.db.get_pinned(k).expect("rocksdb get").is_some()
        }
        fn scan(&self, start: &[u8], n: usize) -> usize {
            let mut it = self.db.raw_iterator();
            it.seek(start);
            let mut c = 0;
            while c < n && it.valid() {
                std::hint::black_box((it.key(), it.value()));
                c += 1;
                it.next();
            }
            it.status().expect("rocksdb scan");
            c
        }
        fn compact(&self) {
            self.db.flush().expect("rocksdb flush");
            self.db.compact_range::<&[u8], &[u8]>(None, None);
        }
        fn diagnostics(&self) -> Option<String> {
            use rocksdb::statistics::Ticker;
            let o = self.stats.as_ref()?;
            let files: Vec<u64> = (0..7)
                .map(|l| {
                    let p = format!("rocksdb.num-files-at-level{l}");
                    self.db.property_int_value(&p).ok().flatten().unwrap_or(0)
                })
                .collect();
            Some(format!(
                "flushes {} MiB, compactions {} MiB, files per level {files:?}",
                o.get_ticker_count(Ticker::FlushWriteBytes) >> 20,
                o.get_ticker_count(Ticker::CompactWriteBytes) >> 20,
            ))
        }
        fn table_bytes_written(&self) -> Option<u64> {
            use rocksdb::statistics::Ticker;
            let o = self.stats.as_ref()?;
            Some(
                o.get_ticker_count(Ticker::FlushWriteBytes)
                    + o.get_ticker_count(Ticker::CompactWriteBytes),
            )
        }
        fn settle(&self) {
            self.db.flush().expect("rocksdb flush");
            let busy = |p: &str| {
                self.db
                    .property_int_value(p)
                    .expect("rocksdb property")
                    .unwrap_or(0)
                    > 0
            };
            loop {
                let pending = busy("rocksdb.mem-table-flush-pending")
                    || busy("rocksdb.num-running-flushes")
                    || busy("rocksdb.compaction-pending")
                    || busy("rocksdb.num-running-compactions");
                if !pending {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Loads keys `keys` (value version `version`) in batches of 1000.
pub fn load(e: &dyn Engine, keys: impl IntoIterator<Item = u64>, version: u64) {
    let mut batch = Vec::with_capacity(1000);
    for n in keys {
        batch.push((key(n), value(n, version)));
        if batch.len() == 1000 {
            e.put_batch(&batch);
            batch.clear();
        }
    }
    if !batch.is_empty() {
        e.put_batch(&batch);
    }
}

/// Bytes this process has caused to be written to storage so far (`write_bytes` of
/// `/proc/self/io`: page-cache pages dirtied by `write` or through a mapping), or None
/// where the kernel does not report it.
pub fn process_write_bytes() -> Option<u64> {
    let io = fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time used so far by the calling thread (`clock`: `CLOCK_THREAD_CPUTIME_ID`) or by
/// the whole process (`CLOCK_PROCESS_CPUTIME_ID`); zero where the clock is missing.
fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time every thread of the process has used.
pub fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// YCSB's scrambled zipfian key chooser: item ranks drawn with P(rank i) proportional to
/// 1 / (i + 1)^theta (Gray et al., "Quickly generating billion-record synthetic
/// databases"), then hashed (FNV-1a) onto `0..n` so the hot keys are spread over the key
/// space instead of clustered at its start.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    rng: Rng,
}

impl Zipfian {
    /// A chooser over `0..n` with skew `theta` (YCSB's default is 0.99), seeded.
    pub fn new(n: u64, theta: f64, seed: u64) -> Zipfian {
        let zeta = |m: u64| (1..=m).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(n);
        let zeta_2 = zeta(2);
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
            rng: Rng::new(seed),
        }
    }

    /// The same distribution with another seed (the zeta sum is not recomputed).
    pub fn reseeded(&self, seed: u64) -> Zipfian {
        Zipfian {
            rng: Rng::new(seed),
            ..self.clone()
        }
    }

    /// The next key number in `0..n`.
    pub fn next(&mut self) -> u64 {
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zeta_n;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + 0.5f64.powf(self.theta) {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in rank.min(self.n - 1).to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h % self.n
    }
}

/// Total bytes of the regular files under `dir` (recursively).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// Copies `files` into the new directory `to` and makes the copy durable (each file and
/// the directory fsynced), as a backup by plain copy would. Returns bytes copied.
pub fn copy_files_durably(files: &[PathBuf], to: &Path) -> u64 {
    fs::create_dir_all(to).expect("create copy dir");
    let mut bytes = 0;
    for f in files {
        let dst = to.join(f.file_name().expect("file name"));
        bytes += fs::copy(f, &dst).expect("copy file");
        File::open(&dst)
            .and_then(|d| d.sync_all())
            .expect("fsync copy");
    }
    File::open(to)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
    bytes
}

/// The machine's limits on the disk of `dir`.
#[derive(Debug, Clone, Copy)]
pub struct MachineLimits {
    /// Median latency of appending 128 bytes to a file and fdatasyncing it.
    pub append_fdatasync: Duration,
    /// Median latency of appending 128 bytes and fsyncing (data and metadata).
    pub append_fsync: Duration,
    /// Sequential write bandwidth (bytes/s): 1 MiB writes, fdatasync at the end.
    pub seq_write_bytes_per_sec: f64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Appends 128 bytes and syncs, `n` times; returns the median latency.
pub fn append_sync_latency(dir: &Path, n: usize, data_only: bool) -> Duration {
    let path = dir.join(if data_only {
        "fdatasync.probe"
    } else {
        "fsync.probe"
    });
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open probe file");
    let rec = [0xA5u8; 128];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&rec).expect("append");
        if data_only {
            f.sync_data().expect("fdatasync");
        } else {
            f.sync_all().expect("fsync");
        }
        lat.push(t.elapsed());
    }
    drop(f);
    let _ = fs::remove_file(&path);
    median(lat)
}

/// Writes `bytes` sequentially in 1 MiB writes and fdatasyncs once; returns bytes/s.
pub fn seq_write_bandwidth(dir: &Path, bytes: usize) -> f64 {
    let path = dir.join("seqwrite.probe");
    let chunk: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 + 3) as u8).collect();
    let mut f = File::create(&path).expect("create probe file");
    let t = Instant::now();
    let mut written = 0;
    while written < bytes {
        f.write_all(&chunk).expect("write");
        written += chunk.len();
    }
    f.sync_data().expect("fdatasync");
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    let _ = fs::remove_file(&path);
    written as f64 / secs
}

/// Measures the machine's limits in `dir`.
pub fn machine_limits(dir: &Path) -> MachineLimits {
    let n = pick(50, 500);
    MachineLimits {
        append_fdatasync: append_sync_latency(dir, n, true),
        append_fsync: append_sync_latency(dir, n, false),
        seq_write_bytes_per_sec: seq_write_bandwidth(dir, pick(64 << 20, 1 << 30)),
    }
}
