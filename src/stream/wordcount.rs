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

/// An output line, `word count`, built without the formatting machinery (one per update).
pub fn line(word: &str, n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(word.len() + 1 + digits.len() - at);
    s.push_str(word);
    s.push(' ');
    s.extend(digits[at..].iter().map(|&d| d as char));
    s
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
        .map(|(w, n)| line(&w, n))
        .uid("format")
        .sink_to(sink)
        .uid(OPERATOR_IDS[3]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_the_word_a_space_and_the_count() {
        for n in [0u64, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(line("tide", n), format!("tide {n}"));
        }
        assert_eq!(line("", 7), " 7");
    }
}
