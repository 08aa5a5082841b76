//! The stream layer's word count, the job Flink's benchmarks measure, and recovery of a
//! keyed job with a large state.
//!
//! Throughput: a deterministic text of N words (Zipf, exponent 1, over 100,000 distinct
//! words; 10 words a line, in 4 files) read by `tidemark::stream::wordcount` (lines ->
//! words -> (word, 1) -> key_by -> sum -> every updated count written as `word count` into
//! an exactly-once file sink), with a checkpoint every second, for each state backend and
//! parallelism. Reported: words per second from the job's start to its end (the sink's
//! last commit included), and the checkpoints' end-to-end durations (trigger to
//! `_metadata`, from a `JobListener`), median and max. The committed output is checked: one
//! line per word read.
//!
//! Recovery: a keyed job builds about `MB` megabytes of value state (1 KiB of random bytes
//! per key), a checkpoint that holds all of it completes, and then a failure is injected;
//! the job restarts with no delay from that checkpoint. Reported: from the failure (the
//! listener's `restarting`) to the restore (`restored`), and to the first record the keyed
//! operator has processed after the restore (seen by a `process` operator behind it in an
//! attempt after the first).
//!
//! The same text feeds the Flink job of `benches/flink/run.sh`: with `TIDEMARK_WC_DIR` set
//! the text is kept in `<dir>/text` (and reused when it already has the same word count).
//!
//! Environment variables (defaults give a run of a few minutes):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `TIDEMARK_WC_WORDS` | 2000000 | words of the text; 0 skips the throughput runs |
//! | `TIDEMARK_WC_BACKENDS` | memory,filesystem,lsm | backends of the throughput runs |
//! | `TIDEMARK_WC_PARALLELISM` | 1,2 | parallelisms of the throughput runs |
//! | `TIDEMARK_WC_RUNS` | 1 | repetitions of each throughput run |
//! | `TIDEMARK_WC_CHAINING` | 1 | 0 runs every operator in threads of its own (`pipeline.operator-chaining.enabled: false`) |
//! | `TIDEMARK_WC_RECOVERY_MB` | 100 | state sizes of the recovery runs (MB); empty or 0 skips |
//! | `TIDEMARK_WC_RECOVERY_BACKENDS` | filesystem,lsm | backends of the recovery runs |
//! | `TIDEMARK_WC_DIR` | a temp dir | where the text is kept (for the Flink side) |
//! | `TIDEMARK_BENCH_DIR` | system temp | where jobs write checkpoints, state and output |

mod common;

/// The command line's allocator, so that the bench measures what `tidemark run` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tidemark::checkpoint::CheckpointId;
use tidemark::state::backend::{FsStateBackend, LsmStateBackend, MemoryStateBackend, StateBackend};
use tidemark::state::keyed::ValueStateDescriptor;
use tidemark::stream::{
    self, wordcount, CheckpointDone, FileSink, FileSource, GeneratorSource, JobControl,
    JobListener, JobOptions, KeyedContext, Output, RestartBackoff, StreamEnv, TaskContext,
};

/// Distinct words of the text.
const VOCABULARY: usize = 100_000;
/// Words a line.
const WORDS_PER_LINE: u64 = 10;
/// Files of the text (each one split of the file source).
const FILES: u64 = 4;
/// Bytes of value state a key of the recovery job holds.
const VALUE_BYTES: usize = 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        _ => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// Word of rank `r` (0 the most frequent): the bijective base-26 numeral of `r + 1` in
/// lower-case letters, so frequent words are short, as in a natural text.
fn word(r: usize) -> String {
    let mut n = r + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    String::from_utf8(letters).expect("ascii letters")
}

/// Writes the text of `words` words into `dir` (`part-0.txt` ..), unless a text of that
/// many words is there already (`_words` holds the count; files starting with `_` are
/// skipped by both tidemark's and Flink's file sources).
fn write_text(dir: &Path, words: u64) -> std::io::Result<()> {
    let marker = dir.join("_words");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == words.to_string()) {
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let vocabulary: Vec<String> = (0..VOCABULARY).map(word).collect();
    // Zipf with exponent 1: the cumulative weights of the ranks, sampled by bisection.
    let mut cdf = Vec::with_capacity(VOCABULARY);
    let mut total = 0.0f64;
    for r in 0..VOCABULARY {
        total += 1.0 / (r as f64 + 1.0);
        cdf.push(total);
    }
    let mut rng = common::Rng::new(20_261_202);
    let per_file = words.div_ceil(FILES);
    let mut left = words;
    for f in 0..FILES {
        let n = per_file.min(left);
        left -= n;
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(dir.join(format!("part-{f}.txt")))?,
        );
        let mut line = String::new();
        for i in 0..n {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
            let r = cdf.partition_point(|c| *c <= u).min(VOCABULARY - 1);
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&vocabulary[r]);
            if (i + 1) % WORDS_PER_LINE == 0 || i + 1 == n {
                line.push('\n');
                std::io::Write::write_all(&mut out, line.as_bytes())?;
                line.clear();
            }
        }
        std::io::Write::flush(&mut out)?;
    }
    std::fs::write(marker, format!("{words}\n"))
}

fn backend(name: &str, dir: &Path) -> Arc<dyn StateBackend> {
    match name {
        "memory" => Arc::new(MemoryStateBackend::new()),
        "filesystem" | "hashmap" => Arc::new(FsStateBackend::new()),
        "lsm" | "rocksdb" => Arc::new(LsmStateBackend::new(
            dir.join("lsm-local"),
            tidemark::lsm::Options::default(),
        )),
        other => panic!("unknown backend {other:?} (memory, filesystem, lsm)"),
    }
}

/// No restart: a throughput run that fails reports the failure.
struct NoRestart;
impl RestartBackoff for NoRestart {
    fn on_failure(&mut self, _now: Duration) -> Result<Duration, String> {
        Err("no restarts in a throughput run".into())
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// Restarts at once, any number of times.
struct Immediately;
impl RestartBackoff for Immediately {
    fn on_failure(&mut self, _now: Duration) -> Result<Duration, String> {
        Ok(Duration::ZERO)
    }
    fn describe(&self) -> String {
        "fixed-delay 0 ms".into()
    }
}

/// Completed checkpoints' end-to-end durations.
#[derive(Default)]
struct Checkpoints(Mutex<Vec<Duration>>);
impl JobListener for Checkpoints {
    fn checkpoint_completed(&self, c: &CheckpointDone) {
        self.0.lock().push(c.end_to_end);
    }
}

/// Lines in the committed files of a file sink.
fn committed_line_count(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read sink dir") {
        let e = e.expect("sink dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") {
            let bytes = std::fs::read(e.path()).expect("read committed file");
            n += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    n
}

struct Throughput {
    words_per_s: f64,
    secs: f64,
    checkpoints: Vec<f64>,
}

fn wordcount_run(text: &Path, words: u64, backend_name: &str, parallelism: u32) -> Throughput {
    let root = common::bench_root();
    let out = root.path().join("out");
    let env = StreamEnv::new();
    wordcount::build(&env, FileSource::new(text), FileSink::new(&out), None);
    let graph = env.build().expect("word count graph");
    let mut options = JobOptions::local(root.path().join("checkpoints"));
    options.parallelism = parallelism;
    options.chaining = env_u64("TIDEMARK_WC_CHAINING", 1) != 0;
    options.backend = backend(backend_name, root.path());
    options.checkpointing.interval = Some(Duration::from_secs(1));
    options.restart = Some(Arc::new(|| Box::new(NoRestart) as Box<dyn RestartBackoff>));
    let listener = Arc::new(Checkpoints::default());
    options.listeners.push(listener.clone());
    let start = Instant::now();
    let result = stream::execute(&graph, &options);
    let elapsed = start.elapsed();
    if let Err(e) = result {
        panic!("word count, {backend_name}, parallelism {parallelism}: {e}");
    }
    let lines = committed_line_count(&out);
    assert_eq!(
        lines, words,
        "{backend_name} p={parallelism}: every word's update is one committed line"
    );
    let checkpoints = listener.0.lock().iter().map(|d| ms(*d)).collect();
    Throughput {
        words_per_s: words as f64 / elapsed.as_secs_f64(),
        secs: elapsed.as_secs_f64(),
        checkpoints,
    }
}

/// What the recovery job's listener saw, in time since the run started.
#[derive(Default)]
struct RecoveryEvents {
    start: Mutex<Option<Instant>>,
    /// Keys written in the first attempt (all keyed subtasks).
    written: AtomicU64,
    keys: u64,
    /// The first checkpoint triggered after every key was written.
    full_checkpoint: Mutex<Option<CheckpointId>>,
    /// Set when that checkpoint completed: the injected failure may strike.
    ready: AtomicBool,
    state_bytes: AtomicU64,
    failed_at: Mutex<Option<Instant>>,
    restored_at: Mutex<Option<Instant>>,
    first_record_at: Mutex<Option<Instant>>,
    first_record_found_state: AtomicBool,
    checkpoint_ms: Mutex<Vec<f64>>,
}

impl JobListener for RecoveryEvents {
    fn restored(&self, _id: CheckpointId, _path: &Path) {
        let mut r = self.restored_at.lock();
        if r.is_none() && self.failed_at.lock().is_some() {
            *r = Some(Instant::now());
        }
    }
    fn checkpoint_triggered(&self, id: CheckpointId, _subtasks: usize) {
        // Records reach the keyed operator before the barrier the sources emit after
        // this trigger: if every key is written now, this checkpoint holds them all.
        if self.written.load(Ordering::SeqCst) >= self.keys {
            self.full_checkpoint.lock().get_or_insert(id);
        }
    }
    fn checkpoint_completed(&self, c: &CheckpointDone) {
        self.checkpoint_ms.lock().push(ms(c.end_to_end));
        if let Some(full) = *self.full_checkpoint.lock() {
            if c.id >= full {
                self.state_bytes.store(c.state_size, Ordering::SeqCst);
                self.ready.store(true, Ordering::SeqCst);
            }
        }
    }
    fn restarting(&self, _attempt: u32, _cause: &tidemark::Error, _delay: Duration) {
        self.failed_at.lock().get_or_insert_with(Instant::now);
    }
}

/// Key `k`'s value: 1 KiB of random bytes, incompressible, so that the state on disk has
/// its nominal size.
fn payload(k: u64) -> Vec<u8> {
    let mut rng = common::Rng::new(k);
    let mut v = Vec::with_capacity(VALUE_BYTES);
    while v.len() < VALUE_BYTES {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(VALUE_BYTES);
    v
}

struct Recovery {
    keys: u64,
    state_bytes: u64,
    build_secs: f64,
    to_restored: Duration,
    to_first_record: Duration,
    checkpoints: Vec<f64>,
}

/// The recovery job: records `0..keys` write 1 KiB of value state to key `i`; later ones
/// read key `i % keys` and pass on whether it held a value. A process operator before
/// the keyed one fails once a checkpoint with every key has completed (first attempt
/// only); one behind it notes the first record of a later attempt, then stops the job.
fn recovery_run(backend_name: &str, mb: u64, parallelism: u32) -> Recovery {
    let root = common::bench_root();
    let keys = (mb * 1_000_000 / VALUE_BYTES as u64).max(1);
    let events = Arc::new(RecoveryEvents {
        keys,
        ..RecoveryEvents::default()
    });
    let control = JobControl::new();
    let env = StreamEnv::new();
    let (e1, e2, e3) = (events.clone(), events.clone(), events.clone());
    let stopper = control.clone();
    env.source(GeneratorSource::new(None, move |i| (i % keys, i < keys)).with_splits(2))
        .uid("records")
        .process(
            move |rec: (u64, bool), ctx: &mut TaskContext, out: &mut Output<(u64, bool)>| {
                if ctx.attempt().number == 0 && !rec.1 && e1.ready.load(Ordering::SeqCst) {
                    return Err(tidemark::Error::Job("injected failure".into()));
                }
                out.collect(rec);
                Ok(())
            },
        )
        .uid("failure")
        .key_by(|(k, _): &(u64, bool)| *k)
        .process(
            move |(k, write): (u64, bool),
                  ctx: &mut KeyedContext<'_, u64>,
                  out: &mut Output<bool>| {
                let d = ValueStateDescriptor::<Vec<u8>>::new("payload");
                if write {
                    let v = payload(k);
                    ctx.state().value(&d)?.update(&v)?;
                    e2.written.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                } else {
                    let found = ctx.state().value(&d)?.get()?.is_some();
                    out.collect(found);
                    Ok(())
                }
            },
        )
        .uid("payloads")
        .process(
            move |found: bool, ctx: &mut TaskContext, _out: &mut Output<()>| {
                if ctx.attempt().number > 0 {
                    let mut first = e3.first_record_at.lock();
                    if first.is_none() {
                        *first = Some(Instant::now());
                        e3.first_record_found_state.store(found, Ordering::SeqCst);
                        stopper.stop();
                    }
                }
                Ok(())
            },
        )
        .uid("first-record");
    let graph = env.build().expect("recovery graph");
    let mut options = JobOptions::local(root.path().join("checkpoints"));
    options.parallelism = parallelism;
    options.backend = backend(backend_name, root.path());
    options.checkpointing.interval = Some(Duration::from_secs(1));
    options.restart = Some(Arc::new(|| {
        Box::new(Immediately) as Box<dyn RestartBackoff>
    }));
    options.listeners.push(events.clone());
    *events.start.lock() = Some(Instant::now());
    let start = Instant::now();
    let result = stream::execute_with_control(&graph, &options, &control)
        .unwrap_or_else(|e| panic!("recovery job, {backend_name}, {mb} MB: {e}"));
    assert!(result.attempts >= 2, "the injected failure did not fire");
    assert!(
        events.first_record_found_state.load(Ordering::SeqCst),
        "the first record after the restore did not find its key's state"
    );
    let failed = events.failed_at.lock().expect("restarting was called");
    let restored = events.restored_at.lock().expect("restored was called");
    let first = events
        .first_record_at
        .lock()
        .expect("a record after the restore");
    let checkpoints = events.checkpoint_ms.lock().clone();
    Recovery {
        keys,
        state_bytes: events.state_bytes.load(Ordering::SeqCst),
        build_secs: (failed - start).as_secs_f64(),
        to_restored: restored - failed,
        to_first_record: first - failed,
        checkpoints,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let words = env_u64("TIDEMARK_WC_WORDS", 2_000_000);
    let backends = env_list("TIDEMARK_WC_BACKENDS", "memory,filesystem,lsm");
    let parallelisms: Vec<u32> = env_list("TIDEMARK_WC_PARALLELISM", "1,2")
        .iter()
        .map(|p| p.parse().expect("TIDEMARK_WC_PARALLELISM: numbers"))
        .collect();
    let runs = env_u64("TIDEMARK_WC_RUNS", 1).max(1);
    let recovery_mb: Vec<u64> = env_list("TIDEMARK_WC_RECOVERY_MB", "100")
        .iter()
        .map(|m| m.parse().expect("TIDEMARK_WC_RECOVERY_MB: numbers"))
        .filter(|m| *m > 0)
        .collect();
    let recovery_backends = env_list("TIDEMARK_WC_RECOVERY_BACKENDS", "filesystem,lsm");

    if words > 0 {
        let kept = std::env::var_os("TIDEMARK_WC_DIR").map(PathBuf::from);
        let temp = common::bench_root();
        let text = match &kept {
            Some(d) => d.join("text"),
            None => temp.path().join("text"),
        };
        let t = Instant::now();
        write_text(&text, words).expect("write the text");
        println!(
            "text: {words} words, Zipf over {VOCABULARY} words, {FILES} files in {} ({:.1} s)",
            text.display(),
            t.elapsed().as_secs_f64()
        );
        println!(
            "{:<12} {:>3} {:>4} {:>9} {:>14} {:>6} {:>12} {:>12}",
            "backend", "p", "run", "seconds", "words/s", "ckpts", "ckpt median", "ckpt max"
        );
        for b in &backends {
            for &p in &parallelisms {
                for run in 1..=runs {
                    let r = wordcount_run(&text, words, b, p);
                    println!(
                        "{:<12} {:>3} {:>4} {:>9.2} {:>14.0} {:>6} {:>9.1} ms {:>9.1} ms",
                        b,
                        p,
                        run,
                        r.secs,
                        r.words_per_s,
                        r.checkpoints.len(),
                        median(&r.checkpoints),
                        max(&r.checkpoints)
                    );
                }
            }
        }
    }

    if !recovery_mb.is_empty() {
        println!(
            "{:<12} {:>6} {:>10} {:>12} {:>9} {:>13} {:>17} {:>12}",
            "backend",
            "MB",
            "keys",
            "state bytes",
            "build s",
            "to restored",
            "to first record",
            "ckpt median"
        );
        for &mb in &recovery_mb {
            for b in &recovery_backends {
                let r = recovery_run(b, mb, 2);
                println!(
                    "{:<12} {:>6} {:>10} {:>12} {:>9.1} {:>10.1} ms {:>14.1} ms {:>9.1} ms",
                    b,
                    mb,
                    r.keys,
                    r.state_bytes,
                    r.build_secs,
                    ms(r.to_restored),
                    ms(r.to_first_record),
                    median(&r.checkpoints)
                );
            }
        }
    }
}
