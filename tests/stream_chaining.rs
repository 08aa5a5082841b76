//! Operator chaining: operators joined by a forward edge at the same parallelism run in
//! their upstream subtask's thread, unless the operator (`disable_chaining`,
//! `start_new_chain`) or the job (`pipeline.operator-chaining.enabled`) says otherwise;
//! a chained operator keeps its own state through failures, restarts and checkpoints.

#[path = "common/stream.rs"]
mod stream_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stream_common::QuickRestart;
use tidemark::state::keyed::ListStateDescriptor;
use tidemark::state::operator::Redistribution;
use tidemark::stream::{
    self, DataStream, FailureKind, FailurePlan, FileSink, GeneratorSource, JobOptions,
    RestartBackoff, StreamEnv,
};

/// Threads each operator's records were processed in, by operator.
type Seen = Arc<Mutex<BTreeMap<&'static str, BTreeSet<String>>>>;

fn record(seen: &Seen, op: &'static str) {
    let name = std::thread::current().name().unwrap_or("").to_string();
    seen.lock().unwrap().entry(op).or_default().insert(name);
}

/// numbers (parallelism 2) -> a -> b, with `shape` applied to `a`; returns the threads
/// each of `a` and `b` ran in.
fn threads_of(
    shape: impl FnOnce(DataStream<u64>) -> DataStream<u64>,
    chaining: bool,
) -> BTreeMap<&'static str, BTreeSet<String>> {
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let env = StreamEnv::new();
    let (sa, sb) = (Arc::clone(&seen), Arc::clone(&seen));
    let a = env
        .source(GeneratorSource::new(Some(2_000), |i| i))
        .uid("numbers")
        .set_parallelism(2)
        .map(move |x| {
            record(&sa, "a");
            x
        })
        .uid("a")
        .set_parallelism(2);
    shape(a)
        .process(move |_x: u64, _ctx, _out: &mut stream::Output<()>| {
            record(&sb, "b");
            Ok(())
        })
        .uid("b")
        .set_parallelism(2);
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.chaining = chaining;
    stream::execute(&env.build().unwrap(), &options).unwrap();
    let seen = seen.lock().unwrap().clone();
    seen
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn forward_operators_run_in_their_sources_threads() {
    let seen = threads_of(|a| a, true);
    assert_eq!(seen["a"], names(&["numbers_0", "numbers_1"]), "{seen:?}");
    assert_eq!(seen["b"], names(&["numbers_0", "numbers_1"]), "{seen:?}");
}

#[test]
fn without_chaining_every_operator_has_its_own_threads() {
    let seen = threads_of(|a| a, false);
    assert_eq!(seen["a"], names(&["a_0", "a_1"]), "{seen:?}");
    assert_eq!(seen["b"], names(&["b_0", "b_1"]), "{seen:?}");
}

#[test]
fn start_new_chain_and_disable_chaining_split_the_chain() {
    // `a` starts a chain of its own; `b` joins it.
    let seen = threads_of(|a| a.start_new_chain(), true);
    assert_eq!(seen["a"], names(&["a_0", "a_1"]), "{seen:?}");
    assert_eq!(seen["b"], names(&["a_0", "a_1"]), "{seen:?}");
    // `a` is chained to nothing, before or after.
    let seen = threads_of(|a| a.disable_chaining(), true);
    assert_eq!(seen["a"], names(&["a_0", "a_1"]), "{seen:?}");
    assert_eq!(seen["b"], names(&["b_0", "b_1"]), "{seen:?}");
}

#[test]
fn a_different_parallelism_breaks_the_chain() {
    let seen = threads_of(|a| a.map(|x| x).uid("c").set_parallelism(3), true);
    assert_eq!(seen["a"], names(&["numbers_0", "numbers_1"]), "{seen:?}");
    assert_eq!(seen["b"], names(&["b_0", "b_1"]), "{seen:?}");
}

/// A chained operator counts its subtask's records in operator state and emits
/// `subtask-count` for each into an exactly-once sink chained behind it, with failures
/// (errors and panics, one inside a checkpoint) injected in the chain before it.
/// Whatever the failures, each subtask's committed lines are `s-1` .. `s-n`, once each,
/// and the `n`s add up to the records: the count was restored from each checkpoint, the
/// source replayed from the same one, and the sink committed each line once.
fn counted_through_failures(chaining: bool) {
    const RECORDS: u64 = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let plan = Arc::new(
        FailurePlan::new()
            .at_record(9_000, FailureKind::Error)
            .at_record(21_000, FailureKind::Panic)
            .at_snapshot(7, FailureKind::Error),
    );
    let env = StreamEnv::new();
    env.source(GeneratorSource::new(Some(RECORDS), |i| i).with_rate(40_000))
        .uid("numbers")
        .set_parallelism(2)
        .inject_failures(Arc::clone(&plan))
        .uid("failures")
        .set_parallelism(2)
        .process(|_x: u64, ctx, out: &mut stream::Output<String>| {
            let subtask = ctx.subtask().subtask_index;
            let d = ListStateDescriptor::<u64>::new("count");
            let mut l = ctx
                .operator_state()
                .list(&d, Redistribution::SplitDistribute)?;
            let n = l.get()?.first().copied().unwrap_or(0) + 1;
            l.update([n].iter())?;
            out.collect(format!("{subtask}-{n}"));
            Ok(())
        })
        .uid("count")
        .set_parallelism(2)
        .sink_to(FileSink::new(&out))
        .uid("sink")
        .set_parallelism(2);
    let mut options = JobOptions::local(dir.path().join("checkpoints"));
    options.chaining = chaining;
    options.checkpointing.interval = Some(Duration::from_millis(50));
    options.restart = Some(Arc::new(|| {
        Box::new(QuickRestart) as Box<dyn RestartBackoff>
    }));
    let r = stream::execute(&env.build().unwrap(), &options).unwrap();
    assert_eq!(plan.fired(), 3, "{r:?}");
    // Each failure ends its attempt; two that come at the same moment (a record's and a
    // snapshot's, on a loaded machine) end the same one.
    assert!((2..=4).contains(&r.attempts), "{r:?}");
    let lines = stream::committed_lines(&out).unwrap();
    let mut per_subtask: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for l in &lines {
        let (s, n) = l.split_once('-').unwrap();
        per_subtask
            .entry(s.parse().unwrap())
            .or_default()
            .push(n.parse().unwrap());
    }
    let mut total = 0;
    for (s, mut ns) in per_subtask {
        ns.sort_unstable();
        let n = ns.len() as u64;
        assert_eq!(ns, (1..=n).collect::<Vec<_>>(), "subtask {s}");
        total += n;
    }
    assert_eq!(total, RECORDS);
}

#[test]
fn a_chained_operator_keeps_its_state_through_failures() {
    counted_through_failures(true);
}

#[test]
fn the_same_job_unchained_gives_the_same_output() {
    counted_through_failures(false);
}
