//! `tidemark demo`: the whole seed in one command. A keyed word count over a generated
//! text, with the `lsm` state backend and a checkpoint every second, prints a line per
//! checkpoint; injected failures (an error, a panic, a failure in the middle of a
//! checkpoint) are restarted by the fixed-delay strategy; after `--seconds` the job is
//! stopped and the exact `tidemark run ... -s` command that resumes it is printed, then
//! run; last, the output is compared with a failure-free run of the same job.
//!
//! The demo writes only inside its directory, and only into a directory it created (it
//! leaves a marker file there); it refuses any other non-empty directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use parking_lot::Mutex;

use super::args::{DemoArgs, RunArgs};
use super::output::human_bytes;
use super::CliError;
use crate::checkpoint::{CheckpointId, JobId};
use crate::error::{Error, Result};
use crate::fs::{FileLock, FileSystem, StdFs};
use crate::stream::config::{JobConfig, JobConfigBuilder};
use crate::stream::{
    self, wordcount, CheckpointDone, FailureKind, FailurePlan, FileSink, FileSource, JobControl,
    JobListener, JobOptions, StreamEnv,
};

/// The marker file that says a directory belongs to the demo.
pub const MARKER: &str = ".tidemark-demo";
/// The lock a running demo holds on its directory for the whole run.
pub const DEMO_LOCK: &str = ".tidemark-demo.lock";
/// Lines of generated text per second of `--seconds` (the first run reads at most half
/// of them before it is stopped).
const LINES_PER_SECOND: u64 = 40_000;
/// Words per generated line.
const WORDS_PER_LINE: u64 = 8;
/// The vocabulary: a Zipf-like draw over this many words.
const VOCABULARY: u64 = 100_000;
/// The demo's parallelism.
const PARALLELISM: u32 = 2;

/// Where the demo puts things.
#[derive(Debug, Clone)]
pub struct DemoPaths {
    /// The demo directory.
    pub dir: PathBuf,
    /// The generated text.
    pub input: PathBuf,
    /// The word count's committed output.
    pub output: PathBuf,
    /// `<dir>/checkpoints`: one directory per job id.
    pub checkpoints: PathBuf,
    /// The `lsm` backend's working stores.
    pub local: PathBuf,
    /// The failure-free run's output.
    pub reference: PathBuf,
}

impl DemoPaths {
    /// The layout under `dir`.
    pub fn new(dir: &Path) -> DemoPaths {
        DemoPaths {
            dir: dir.to_path_buf(),
            input: dir.join("input"),
            output: dir.join("output"),
            checkpoints: dir.join("checkpoints"),
            local: dir.join("local"),
            reference: dir.join("reference"),
        }
    }
}

/// Makes `dir` an empty demo directory: creates it, or clears what an earlier demo left;
/// refuses a non-empty directory the demo did not create. Returns the demo's lock on the
/// directory, held for the whole run (a second demo on the same directory is refused;
/// job directories in use by a running job are refused by their own locks).
fn prepare(fs: &dyn FileSystem, p: &DemoPaths) -> Result<FileLock> {
    if p.dir.exists() {
        let names = fs.list_dir(&p.dir)?;
        if !names.is_empty() && !names.iter().any(|n| n == MARKER) {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty and was not made by the demo (no {MARKER}); give another --dir",
                p.dir.display()
            )));
        }
    }
    fs.create_dir_all(&p.dir)?;
    crate::fs::write_atomic(fs, &p.dir.join(MARKER), b"made by tidemark demo\n")?;
    let run_lock = fs.lock(&p.dir.join(DEMO_LOCK)).map_err(|e| match e {
        Error::Locked { path } => Error::InvalidArgument(format!(
            "another tidemark demo is running in {} (it holds {})",
            p.dir.display(),
            path.display()
        )),
        e => e,
    })?;
    for d in [&p.input, &p.output, &p.checkpoints, &p.local, &p.reference] {
        if d.exists() {
            fs.remove_dir_all(d)?;
        }
    }
    Ok(run_lock)
}

/// Writes `lines` lines of words drawn Zipf-like from the vocabulary, into two files.
fn write_input(dir: &Path, lines: u64) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut words = 0u64;
    for part in 0..2u64 {
        let path = dir.join(format!("text-{part}.txt"));
        let file = std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        for _ in 0..lines / 2 {
            for k in 0..WORDS_PER_LINE {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // 1/u is Zipf-like: rank r with probability ~ 1/r^2 ... 1/r.
                let u = ((x >> 11) as f64 / (1u64 << 53) as f64).max(1e-9);
                let rank = ((1.0 / u) as u64).min(VOCABULARY);
                let sep = if k + 1 == WORDS_PER_LINE { "\n" } else { " " };
                write!(w, "word{rank}{sep}").map_err(|e| Error::io("write", &path, e))?;
                words += 1;
            }
        }
        w.flush().map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(words)
}

/// The demo's configuration, in Flink's keys.
fn demo_config(p: &DemoPaths) -> Result<JobConfig> {
    let mut b = JobConfigBuilder::new();
    for (k, v) in [
        ("state.backend", "lsm".to_string()),
        ("state.checkpoints.dir", p.checkpoints.display().to_string()),
        ("state.backend.lsm.localdir", p.local.display().to_string()),
        ("state.backend.incremental", "true".into()),
        ("execution.checkpointing.interval", "1 s".into()),
        ("execution.checkpointing.mode", "EXACTLY_ONCE".into()),
        (
            "execution.checkpointing.externalized-checkpoint-retention",
            "RETAIN_ON_CANCELLATION".into(),
        ),
        ("state.checkpoints.num-retained", "3".into()),
        ("restart-strategy", "fixed-delay".into()),
        ("restart-strategy.fixed-delay.attempts", "10".into()),
        ("restart-strategy.fixed-delay.delay", "500 ms".into()),
        ("parallelism.default", PARALLELISM.to_string()),
    ] {
        b.dynamic_property(&format!("{k}={v}"))?;
    }
    Ok(b.build()?.0)
}

/// The configuration as Flink's checkpoint configuration page shows it.
fn print_config(out: &mut dyn Write, c: &JobConfig) -> std::io::Result<()> {
    let d = c.document();
    let ms = |v: u64| -> String {
        if v % 1000 == 0 && v > 0 {
            format!("{}s", v / 1000)
        } else {
            format!("{v}ms")
        }
    };
    let rows = [
        (
            "Checkpointing Mode",
            d.mode.replace('_', " ").to_uppercase(),
        ),
        ("Checkpoint Storage", d.checkpoint_storage.clone()),
        ("State Backend", d.state_backend.clone()),
        ("Interval", ms(d.interval)),
        ("Timeout", ms(d.timeout)),
        ("Minimum Pause Between Checkpoints", ms(d.min_pause)),
        (
            "Maximum Concurrent Checkpoints",
            d.max_concurrent.to_string(),
        ),
        ("Unaligned Checkpoints", "Disabled".into()),
        (
            "Persist Checkpoints Externally",
            if d.externalization.enabled {
                if d.externalization.delete_on_cancellation {
                    "Enabled (delete on cancellation)".into()
                } else {
                    "Enabled (retain on cancellation)".into()
                }
            } else {
                "Disabled".into()
            },
        ),
        (
            "Tolerable Failed Checkpoints",
            d.tolerable_failed_checkpoints.to_string(),
        ),
        ("Restart Strategy", d.restart_strategy.description.clone()),
    ];
    writeln!(out, "Checkpoint configuration:")?;
    for (k, v) in rows {
        writeln!(out, "  {k:<36} {v}")?;
    }
    Ok(())
}

/// Sends live lines to the demo's output, and counts completed checkpoints.
struct Lines(
    Mutex<mpsc::Sender<String>>,
    Arc<std::sync::atomic::AtomicU64>,
);

impl Lines {
    fn send(&self, s: String) {
        let _ = self.0.lock().send(s);
    }
}

impl JobListener for Lines {
    fn restored(&self, id: CheckpointId, path: &Path) {
        self.send(format!("  restored checkpoint {id} ({})", path.display()));
    }
    fn checkpoint_completed(&self, c: &CheckpointDone) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.send(format!(
            "  checkpoint {:>3} completed in {:>5} ms: state {:>10}, {:>10} new",
            c.id.0,
            c.end_to_end.as_millis(),
            human_bytes(c.state_size),
            human_bytes(c.checkpointed_size),
        ));
    }
    fn checkpoint_failed(&self, id: CheckpointId, message: &str) {
        self.send(format!("  checkpoint {id} failed: {message}"));
    }
    fn restarting(&self, attempt: u32, cause: &Error, delay: Duration) {
        self.send(format!(
            "  FAILURE: {cause}\n  restart {attempt} (fixed-delay) in {} ms, from the latest checkpoint",
            delay.as_millis()
        ));
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> std::result::Result<(), CliError> {
    let p = DemoPaths::new(&args.dir);
    let at = |e: Error| CliError::at(&p.dir, e);
    let fs = StdFs;
    let _lock = prepare(&fs, &p).map_err(at)?;
    let lines = LINES_PER_SECOND * args.seconds.max(1) * 2;
    let words = write_input(&p.input, lines).map_err(at)?;
    writeln!(
        out,
        "tidemark demo in {}: a keyed word count over {} words ({} lines, {} distinct \
         words at most) into an exactly-once file sink",
        p.dir.display(),
        words,
        lines,
        VOCABULARY
    )?;
    let config = demo_config(&p).map_err(at)?;
    print_config(out, &config)?;
    let job_id = JobId::random();
    writeln!(out, "Job has been submitted with JobID {job_id}")?;
    out.flush()?;

    // The first run: failures injected, stopped after --seconds.
    let mut options = JobOptions::from_config(&config, job_id.clone()).map_err(at)?;
    let (tx, rx) = mpsc::channel::<String>();
    let completed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    options
        .listeners
        .push(Arc::new(Lines(Mutex::new(tx), Arc::clone(&completed))));
    let plan = Arc::new(
        FailurePlan::new()
            .at_record(words / 50, FailureKind::Error)
            .at_snapshot(3, FailureKind::Panic)
            .at_record(words / 12, FailureKind::Panic),
    );
    let env = StreamEnv::new();
    let rate = LINES_PER_SECOND / u64::from(PARALLELISM) / 2;
    wordcount::build(
        &env,
        FileSource::new(&p.input).with_rate(rate),
        FileSink::new(&p.output),
        Some(Arc::clone(&plan)),
    );
    let graph = env.build().map_err(at)?;
    let control = JobControl::new();
    super::signals::stop_on_signal(&control, None);
    let stopper = {
        let control = control.clone();
        let seconds = args.seconds;
        // Stops after --seconds, once a checkpoint has completed (there is one to resume).
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(seconds);
            while !control.is_stopped()
                && (std::time::Instant::now() < until
                    || completed.load(std::sync::atomic::Ordering::SeqCst) == 0)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            control.stop();
        })
    };
    let result = super::run::execute_printing(graph, options, &control, rx, out, &at)?;
    let _ = stopper.join();
    writeln!(
        out,
        "Job {} stopped after {} s: {} attempt(s) ({} injected failure(s)), {} checkpoint(s) \
         completed, {} failed",
        result.job_id,
        args.seconds,
        result.attempts,
        plan.fired(),
        result.checkpoints_completed,
        result.checkpoints_failed
    )?;
    let Some(chk) = result.latest_checkpoint.clone() else {
        return Err(at(Error::Job(
            "the job was stopped before its first checkpoint completed".into(),
        )));
    };
    let metadata = chk.join(crate::checkpoint::METADATA_FILE_NAME);
    let local = format!("state.backend.lsm.localdir={}", p.local.display());
    writeln!(
        out,
        "\nResume it with:\n  tidemark run wordcount --input {} --output {} --checkpoint-dir {} \
         --backend lsm --parallelism {PARALLELISM} -D {local} -s {}\n",
        p.input.display(),
        p.output.display(),
        p.checkpoints.display(),
        metadata.display()
    )?;
    writeln!(out, "Resuming it now (what that command does):")?;
    super::run::run(
        &RunArgs {
            job: "wordcount".into(),
            input: p.input.clone(),
            output: p.output.clone(),
            checkpoint_dir: p.checkpoints.clone(),
            backend: Some("lsm".into()),
            parallelism: Some(PARALLELISM),
            interval_ms: None,
            config: None,
            dynamic: vec![local],
            from: Some(metadata),
            allow_non_restored_state: false,
            restore_mode: None,
            savepoint_on_stop: false,
            rate: None,
        },
        out,
    )?;

    // The same job without failures, checkpoints or stops.
    writeln!(out, "\nA failure-free run of the same job, for comparison:")?;
    let env = StreamEnv::new();
    wordcount::build(
        &env,
        FileSource::new(&p.input),
        FileSink::new(&p.reference),
        None,
    );
    let mut reference = JobOptions::local(p.checkpoints.join("reference"));
    reference.parallelism = PARALLELISM;
    reference.checkpoints_dir = None;
    stream::execute(&env.build().map_err(at)?, &reference).map_err(at)?;
    let got = stream::committed_lines(&p.output).map_err(at)?;
    let want = stream::committed_lines(&p.reference).map_err(at)?;
    if got != want {
        return Err(at(Error::Job(format!(
            "the output ({} lines) differs from the failure-free run's ({} lines)",
            got.len(),
            want.len()
        ))));
    }
    writeln!(
        out,
        "The output equals the failure-free run's: {} lines (one per updated count), \
         exactly once, after {} failure(s), a stop and a resume.",
        got.len(),
        plan.fired()
    )?;
    writeln!(
        out,
        "Look closer: tidemark checkpoints {}",
        p.checkpoints.join(job_id.as_str()).display()
    )?;
    Ok(())
}
