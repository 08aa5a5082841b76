//! The word count end to end, per backend, with parallelism 1 and 3: failures injected
//! at random records (errors and panics) and in the middle of checkpoints, restarted by a
//! fixed-delay strategy, produce exactly the committed output of a run without failures.

#[path = "common/stream.rs"]
mod stream_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use stream_common::{expected_lines, wordcount_graph, QuickRestart};
use tidemark::state::backend::{FsStateBackend, LsmStateBackend, MemoryStateBackend, StateBackend};
use tidemark::stream::{self, FailureKind, FailurePlan, JobOptions, RestartBackoff};

/// A small deterministic text: `lines` lines of words drawn from a skewed vocabulary.
fn write_input(dir: &Path, files: usize, lines: usize, seed: u64) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let mut counts = BTreeMap::new();
    let mut x = seed;
    for f in 0..files {
        let mut text = String::new();
        for _ in 0..lines {
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Skewed: small numbers far more often.
                let r = (x % 1000) as f64 / 1000.0;
                let w = format!("w{}", (r * r * r * 500.0) as u64);
                *counts.entry(w.clone()).or_insert(0) += 1;
                text.push_str(&w);
                text.push(' ');
            }
            text.push('\n');
        }
        std::fs::write(dir.join(format!("part-{f}.txt")), text).unwrap();
    }
    counts
}

fn backend(name: &str, dir: &Path) -> Arc<dyn StateBackend> {
    match name {
        "memory" => Arc::new(MemoryStateBackend::new()),
        "filesystem" => Arc::new(FsStateBackend::new()),
        _ => Arc::new(LsmStateBackend::new(
            dir.join("lsm-local"),
            tidemark::lsm::Options::default(),
        )),
    }
}

fn run(backend_name: &str, parallelism: u32, failures: bool) {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_input(&dir.path().join("in"), 3, 3000, 42);
    let out = dir.path().join("out");
    let plan = Arc::new(
        FailurePlan::new()
            .at_record(9_000, FailureKind::Error)
            .at_record(31_000, FailureKind::Panic)
            .at_snapshot(4, FailureKind::Error)
            .at_record(55_000, FailureKind::Error)
            .at_snapshot(11, FailureKind::Panic),
    );
    let graph = wordcount_graph(
        &dir.path().join("in"),
        &out,
        failures.then(|| Arc::clone(&plan)),
    );
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.parallelism = parallelism;
    options.backend = backend(backend_name, dir.path());
    options.checkpointing.interval = Some(Duration::from_millis(5));
    options.restart = Some(Arc::new(|| {
        Box::new(QuickRestart) as Box<dyn RestartBackoff>
    }));
    let result = stream::execute(&graph, &options).unwrap();
    let lines = stream::committed_lines(&out).unwrap();
    let expected = expected_lines(&counts);
    assert_eq!(
        lines.len(),
        expected.len(),
        "{backend_name} p={parallelism}: line count"
    );
    assert!(
        lines == expected,
        "{backend_name} p={parallelism}: output differs"
    );
    if failures {
        assert!(plan.fired() >= 3, "only {} failures fired", plan.fired());
        // Two subtasks may fail in the same attempt.
        assert!(result.attempts >= 3 && u64::from(result.attempts) <= plan.fired() + 1);
    } else {
        assert_eq!(result.attempts, 1);
    }
    assert!(result.checkpoints_completed >= 1);
    // Nothing in progress is left behind.
    let staging: Vec<_> = std::fs::read_dir(out.join(".inprogress"))
        .unwrap()
        .collect();
    assert!(
        staging.is_empty(),
        "{} in-progress files left",
        staging.len()
    );
}

#[test]
fn memory_p1_without_failures() {
    run("memory", 1, false);
}

#[test]
fn filesystem_p1_with_failures() {
    run("filesystem", 1, true);
}

#[test]
fn filesystem_p3_with_failures() {
    run("filesystem", 3, true);
}

#[test]
fn memory_p3_with_failures() {
    run("memory", 3, true);
}

#[test]
fn lsm_p1_with_failures() {
    run("lsm", 1, true);
}

#[test]
fn lsm_p3_with_failures() {
    run("lsm", 3, true);
}
