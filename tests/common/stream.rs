//! Helpers shared by the stream tests: the word count's expected output, and restart
//! strategies that restart at once or never.

#![allow(dead_code)] // each test binary uses its own part of these helpers

use std::collections::BTreeMap;
use std::time::Duration;

use tidemark::stream::RestartBackoff;

/// What the word count commits for these counts, sorted: `w 1` .. `w n` for each word.
pub fn expected_lines(counts: &BTreeMap<String, u64>) -> Vec<String> {
    let mut v: Vec<String> = counts
        .iter()
        .flat_map(|(w, n)| (1..=*n).map(move |i| format!("{w} {i}")))
        .collect();
    v.sort();
    v
}

/// Restarts after 5 ms, always.
pub struct QuickRestart;

impl RestartBackoff for QuickRestart {
    fn on_failure(&mut self, _now: Duration) -> Result<Duration, String> {
        Ok(Duration::from_millis(5))
    }
    fn describe(&self) -> String {
        "fixed-delay 5 ms".into()
    }
}

/// Never restarts.
pub struct NoRestart;

impl RestartBackoff for NoRestart {
    fn on_failure(&mut self, _now: Duration) -> Result<Duration, String> {
        Err("restart-strategy none".into())
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// The word count over `input` into `output`, with `failures` injected when given.
pub fn wordcount_graph(
    input: &std::path::Path,
    output: &std::path::Path,
    failures: Option<std::sync::Arc<tidemark::stream::FailurePlan>>,
) -> tidemark::stream::JobGraph {
    let env = tidemark::stream::StreamEnv::new();
    tidemark::stream::wordcount::build(
        &env,
        tidemark::stream::FileSource::new(input),
        tidemark::stream::FileSink::new(output),
        failures,
    );
    env.build().unwrap()
}
