//! Checkpointing semantics through the job API: barrier alignment with two inputs,
//! at-least-once, checkpoint time-outs and the tolerable-failure limit, and a rescale
//! through a stop and a resume.

#[path = "common/stream.rs"]
mod stream_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stream_common::{expected_lines, wordcount_graph, NoRestart, QuickRestart};
use tidemark::checkpoint::{resolve, CheckpointId, ExternalizedCleanup, RestoreMode};
use tidemark::fs::StdFs;
use tidemark::state::backend::{restore_operator_state, FsStateBackend, RestoreFrom, SubtaskInfo};
use tidemark::state::keyed::ListStateDescriptor;
use tidemark::state::operator::Redistribution;
use tidemark::stream::{
    self, CheckpointDone, CheckpointingMode, Either, FailureKind, FailurePlan, FileSource,
    GeneratorSource, JobControl, JobListener, JobOptions, RestartBackoff, RestoreSettings,
    StreamEnv,
};

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

struct StopAfter {
    id: u64,
    control: JobControl,
}
impl JobListener for StopAfter {
    fn checkpoint_completed(&self, c: &CheckpointDone) {
        if c.id.0 >= self.id {
            self.control.stop();
        }
    }
}

const COUNTS: &str = "counts";

/// Two inputs: a fast generator, and a slow one whose barrier lags behind many records.
/// The counter keeps how many records of each it processed, in operator state.
/// Returns, per retained checkpoint: (fast records counted, fast records the source had
/// emitted before its barrier).
fn two_inputs(mode: CheckpointingMode) -> Vec<(u64, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnv::new();
    let fast = env.source(GeneratorSource::new(None, |i| i)).uid("fast");
    let slow = env
        .source(GeneratorSource::new(None, |i| i))
        .uid("slow")
        .map(|x| {
            spin(Duration::from_micros(20));
            x
        })
        .uid("slow-map");
    fast.connect(slow)
        .process(|e: Either<u64, u64>, ctx, _out: &mut stream::Output<()>| {
            let d = ListStateDescriptor::<u64>::new(COUNTS);
            let mut l = ctx
                .operator_state()
                .list(&d, Redistribution::SplitDistribute)?;
            let mut v = l.get()?;
            if v.is_empty() {
                v = vec![0, 0];
            }
            match e {
                Either::Left(_) => v[0] += 1,
                Either::Right(_) => v[1] += 1,
            }
            l.update(v.iter())
        })
        .uid("counter");
    let graph = env.build().unwrap();
    let control = JobControl::new();
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.checkpointing.interval = Some(Duration::from_millis(40));
    options.checkpointing.mode = mode;
    options.checkpointing.num_retained = 10;
    options.checkpointing.cleanup = ExternalizedCleanup::RetainOnCancellation;
    options.listeners.push(Arc::new(StopAfter {
        id: 4,
        control: control.clone(),
    }));
    stream::execute_with_control(&graph, &options, &control).unwrap();
    let job_dir = dir.path().join("checkpoints").join(options.job_id.as_str());
    let mut out = Vec::new();
    for id in 1..=4u64 {
        let chk = job_dir.join(CheckpointId(id).dir_name());
        if !chk.join("_metadata").exists() {
            continue;
        }
        let r = resolve(&StdFs, &chk).unwrap();
        let storage = r.storage(StdFs::shared());
        let subtasks: Vec<_> = r
            .metadata
            .operator_states
            .iter()
            .filter(|s| s.operator_id == "counter")
            .cloned()
            .collect();
        let info = SubtaskInfo {
            operator_id: "counter".into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: Default::default(),
        };
        let mut store = restore_operator_state(
            &info,
            RestoreFrom {
                checkpoint_id: r.checkpoint_id,
                storage: &storage,
                subtasks: &subtasks,
            },
        )
        .unwrap();
        let d = ListStateDescriptor::<u64>::new(COUNTS);
        let counts = store
            .list(&d, Redistribution::SplitDistribute)
            .unwrap()
            .get()
            .unwrap();
        // The fast generator's splits: split j at next index n has emitted (n - j) / 16.
        let emitted: u64 = r
            .metadata
            .source_offsets
            .iter()
            .filter(|o| o.source == "fast")
            .map(|o| {
                let j: u64 = o.split.trim_start_matches("split-").parse().unwrap();
                (o.offset - j) / 16
            })
            .sum();
        out.push((counts.first().copied().unwrap_or(0), emitted));
    }
    assert!(!out.is_empty(), "no checkpoint completed");
    out
}

#[test]
fn exactly_once_holds_the_faster_input_back() {
    let seen = two_inputs(CheckpointingMode::ExactlyOnce);
    for (counted, emitted) in &seen {
        assert_eq!(
            counted, emitted,
            "state and source position disagree: {seen:?}"
        );
    }
}

#[test]
fn at_least_once_lets_the_faster_input_run_ahead() {
    let seen = two_inputs(CheckpointingMode::AtLeastOnce);
    for (counted, emitted) in &seen {
        assert!(
            counted >= emitted,
            "a record before the barrier is missing: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|(c, e)| c > e),
        "the fast input never ran ahead of its barrier: {seen:?}"
    );
}

fn slow_job(records: u64) -> tidemark::stream::JobGraph {
    let env = StreamEnv::new();
    env.source(GeneratorSource::new(Some(records), |i| i))
        .uid("numbers")
        .map(|x| {
            spin(Duration::from_micros(20));
            x
        })
        .uid("slow")
        // In its own thread: the barrier waits behind the records buffered before it.
        .disable_chaining();
    env.build().unwrap()
}

#[test]
fn checkpoints_that_time_out_are_aborted_and_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let graph = slow_job(30_000);
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.checkpointing.timeout = Duration::from_millis(20);
    options.checkpointing.tolerable_failed = 1_000_000;
    options.checkpointing.cleanup = ExternalizedCleanup::RetainOnCancellation;
    let r = stream::execute(&graph, &options).unwrap();
    assert!(r.checkpoints_failed >= 1, "{r:?}");
    // No aborted checkpoint left a directory behind.
    let job_dir = dir.path().join("checkpoints").join(options.job_id.as_str());
    if job_dir.exists() {
        for e in std::fs::read_dir(&job_dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("chk-") {
                assert!(
                    e.path().join("_metadata").exists(),
                    "{name} has no _metadata"
                );
            }
        }
    }
}

#[test]
fn exceeding_the_tolerable_failures_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let graph = slow_job(1_000_000);
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.checkpointing.timeout = Duration::from_millis(10);
    options.checkpointing.tolerable_failed = 0;
    options.restart = Some(Arc::new(|| Box::new(NoRestart) as Box<dyn RestartBackoff>));
    let err = stream::execute(&graph, &options).unwrap_err().to_string();
    assert!(err.contains("tolerable"), "{err}");
}

fn write_words(dir: &Path, lines: usize) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let mut counts = BTreeMap::new();
    let mut text = String::new();
    let mut x = 7u64;
    for _ in 0..lines {
        for _ in 0..6 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = format!("w{}", (x >> 33) % 300);
            *counts.entry(w.clone()).or_insert(0) += 1;
            text.push_str(&w);
            text.push(' ');
        }
        text.push('\n');
    }
    std::fs::write(dir.join("input.txt"), text).unwrap();
    counts
}

#[test]
fn at_least_once_may_duplicate_but_never_loses() {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_words(&dir.path().join("in"), 8000);
    let plan = Arc::new(
        FailurePlan::new()
            .at_record(10_000, FailureKind::Error)
            .at_record(30_000, FailureKind::Panic),
    );
    let out = dir.path().join("out");
    let graph = wordcount_graph(&dir.path().join("in"), &out, Some(Arc::clone(&plan)));
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.parallelism = 2;
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.checkpointing.mode = CheckpointingMode::AtLeastOnce;
    options.restart = Some(Arc::new(|| {
        Box::new(QuickRestart) as Box<dyn RestartBackoff>
    }));
    stream::execute(&graph, &options).unwrap();
    let got: std::collections::BTreeSet<String> =
        stream::committed_lines(&out).unwrap().into_iter().collect();
    for line in expected_lines(&counts) {
        assert!(got.contains(&line), "lost {line:?}");
    }
    assert!(plan.fired() >= 2);
}

#[test]
fn rescale_through_a_stop_and_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_words(&dir.path().join("in"), 200_000);
    let out = dir.path().join("out");
    let build = || wordcount_graph(&dir.path().join("in"), &out, None);
    let control = JobControl::new();
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.parallelism = 2;
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.checkpointing.cleanup = ExternalizedCleanup::RetainOnCancellation;
    options.listeners.push(Arc::new(StopAfter {
        id: 2,
        control: control.clone(),
    }));
    let first = stream::execute_with_control(&build(), &options, &control).unwrap();
    let partial = stream::committed_lines(&out).unwrap().len();
    assert!(
        partial < expected_lines(&counts).len(),
        "the first run was not stopped early: {first:?}"
    );
    let job_dir = dir.path().join("checkpoints").join(first.job_id.as_str());
    let mut resumed = options.clone();
    resumed.parallelism = 3;
    resumed.listeners.clear();
    resumed.restore = Some(RestoreSettings {
        path: job_dir,
        mode: RestoreMode::Claim,
        allow_non_restored_state: false,
    });
    stream::execute(&build(), &resumed).unwrap();
    assert!(stream::committed_lines(&out).unwrap() == expected_lines(&counts));
}

#[test]
fn restore_refuses_state_of_an_operator_the_job_lacks() {
    let dir = tempfile::tempdir().unwrap();
    write_words(&dir.path().join("in"), 20_000);
    let control = JobControl::new();
    let graph = wordcount_graph(&dir.path().join("in"), &dir.path().join("out"), None);
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.backend = Arc::new(FsStateBackend::new());
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.checkpointing.cleanup = ExternalizedCleanup::RetainOnCancellation;
    options.listeners.push(Arc::new(StopAfter {
        id: 2,
        control: control.clone(),
    }));
    let first = stream::execute_with_control(&graph, &options, &control).unwrap();
    // Another job without the "counts" operator.
    let env = StreamEnv::new();
    env.source(FileSource::new(dir.path().join("in")))
        .uid("lines")
        .print();
    let mut other = JobOptions::local(dir.path().join("checkpoints2"));
    other.restore = Some(RestoreSettings {
        path: dir.path().join("checkpoints").join(first.job_id.as_str()),
        mode: RestoreMode::NoClaim,
        allow_non_restored_state: false,
    });
    let err = stream::execute(&env.build().unwrap(), &other)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("counts") && err.contains("allow-non-restored-state"),
        "{err}"
    );
}

#[test]
fn a_job_that_gives_up_keeps_its_checkpoints_for_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_words(&dir.path().join("in"), 60_000);
    let out = dir.path().join("out");
    let plan = Arc::new(FailurePlan::new().at_record(250_000, FailureKind::Error));
    let build =
        |plan: Option<Arc<FailurePlan>>| wordcount_graph(&dir.path().join("in"), &out, plan);
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.restart = Some(Arc::new(|| Box::new(NoRestart) as Box<dyn RestartBackoff>));
    let err = stream::execute(&build(Some(plan)), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("injected failure") && err.contains("kept"),
        "{err}"
    );
    // The default retention (NO_EXTERNALIZED_CHECKPOINTS) did not delete them: resume.
    let job_dir = dir.path().join("checkpoints").join(options.job_id.as_str());
    let status = stream::status::read_job_status(&job_dir).unwrap().unwrap();
    assert_eq!(status.state, "FAILED");
    assert!(!status.finished() && !status.checkpoints_discarded);
    assert!(status.last_checkpoint.is_some());
    let mut resumed = options.clone();
    resumed.restore = Some(RestoreSettings {
        path: job_dir.clone(),
        mode: RestoreMode::Claim,
        allow_non_restored_state: true,
    });
    stream::execute(&build(None), &resumed).unwrap();
    assert!(stream::committed_lines(&out).unwrap() == expected_lines(&counts));
    let status = stream::status::read_job_status(&job_dir).unwrap().unwrap();
    assert!(
        status.finished() && status.checkpoints_discarded,
        "{status:?}"
    );
}

struct SavepointAfter {
    id: u64,
    control: JobControl,
    dir: std::path::PathBuf,
    done: std::sync::Mutex<Option<tidemark::stream::SavepointHandle>>,
}
impl JobListener for SavepointAfter {
    fn checkpoint_completed(&self, c: &CheckpointDone) {
        let mut d = self.done.lock().unwrap();
        if c.id.0 >= self.id && d.is_none() {
            *d = Some(self.control.stop_with_savepoint(
                self.dir.clone(),
                tidemark::checkpoint::SavepointFormat::Canonical,
            ));
        }
    }
}

#[test]
fn stop_with_a_canonical_savepoint_then_resume_with_another_backend_and_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_words(&dir.path().join("in"), 200_000);
    let out = dir.path().join("out");
    let build = || wordcount_graph(&dir.path().join("in"), &out, None);
    let control = JobControl::new();
    let savepoints = dir.path().join("savepoints");
    let listener = Arc::new(SavepointAfter {
        id: 2,
        control: control.clone(),
        dir: savepoints.clone(),
        done: std::sync::Mutex::new(None),
    });
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.parallelism = 2;
    options.backend = Arc::new(tidemark::state::backend::LsmStateBackend::new(
        dir.path().join("local"),
        tidemark::lsm::Options::default(),
    ));
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.listeners.push(listener.clone());
    stream::execute_with_control(&build(), &options, &control).unwrap();
    let handle = listener
        .done
        .lock()
        .unwrap()
        .take()
        .expect("no savepoint asked for");
    let sp = handle
        .wait(Duration::from_secs(60))
        .expect("savepoint timed out")
        .expect("savepoint failed");
    assert!(sp.join("_metadata").exists());
    assert!(
        sp.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("savepoint-"),
        "{}",
        sp.display()
    );
    let partial = stream::committed_lines(&out).unwrap().len();
    assert!(
        partial < expected_lines(&counts).len(),
        "the job was not stopped early"
    );
    // The savepoint is self-contained: move it, then resume from it with the
    // filesystem backend and parallelism 3.
    let moved = dir.path().join("moved-savepoint");
    std::fs::rename(&sp, &moved).unwrap();
    let mut resumed = JobOptions::local(dir.path().join("checkpoints2"));
    resumed.parallelism = 3;
    resumed.checkpointing.interval = Some(Duration::from_millis(5));
    resumed.restore = Some(RestoreSettings {
        path: moved,
        mode: RestoreMode::NoClaim,
        allow_non_restored_state: false,
    });
    stream::execute(&build(), &resumed).unwrap();
    assert!(stream::committed_lines(&out).unwrap() == expected_lines(&counts));
}
