//! The word count: lines from files, split into words, counted per word with keyed state,
//! every updated count written to an exactly-once file sink as `word count`.
//!
//! Whatever the parallelism and however many failures, the committed output of a run
//! holds, for each word `w` seen `n` times, the lines `w 1` .. `w n`, each once: the
//! check that a run with failures equals a run without.

use std::sync::Arc;

use super::graph::{DataStream, StreamEnv};
use super::ops::FailurePlan;
use super::sink::FileSink;
use super::source::FileSource;

/// The operator ids of the word count, stable across versions (restores match on them).
pub const OPERATOR_IDS: [&str; 4] = ["lines", "words", "counts", "sink"];

/// The words of a line: runs of alphanumeric characters, lower-cased.
pub fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Adds the word count to `env`: `input` -> words -> per-word counts -> `sink`, with
/// `failures` injected after the split when given.
pub fn build(
    env: &StreamEnv,
    input: FileSource,
    sink: FileSink,
    failures: Option<Arc<FailurePlan>>,
) {
    let words: DataStream<String> = env
        .source(input)
        .uid(OPERATOR_IDS[0])
        .flat_map(|line: String, out| {
            for w in words(&line) {
                out.collect(w);
            }
        })
        .uid(OPERATOR_IDS[1]);
    let words = match failures {
        Some(plan) => words.inject_failures(plan).uid("failures"),
        None => words,
    };
    words
        .map(|w| (w, 1u64))
        .uid("pairs")
        .key_by(|(w, _): &(String, u64)| w.clone())
        .sum()
        .uid(OPERATOR_IDS[2])
        .map(|(w, n)| format!("{w} {n}"))
        .uid("format")
        .sink_to(sink)
        .uid(OPERATOR_IDS[3]);
}
