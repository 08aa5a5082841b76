//! The stream layer: jobs of sources, operators and sinks, one thread per subtask, with
//! keyed state from [`crate::state`], checkpoint barriers and a checkpoint coordinator,
//! an exactly-once file sink, and restart strategies, configured with Flink's keys
//! ([`config`]), with checkpoint statistics in the shape of Flink's monitoring
//! ([`stats`]).
//!
//! This layer sits on [`crate::state`] and [`crate::checkpoint`]; it never matches on a
//! state backend's kind, and the command line above it only calls it.
//!
//! ```
//! use std::sync::Arc;
//! use tidemark::stream::{self, FileSink, GeneratorSource, JobOptions, StreamEnv};
//!
//! # fn main() -> tidemark::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let env = StreamEnv::new();
//! env.source(GeneratorSource::new(Some(1000), |i| (i % 10, 1u64)))
//!     .uid("numbers")
//!     .key_by(|(k, _): &(u64, u64)| *k)
//!     .sum()
//!     .uid("counts")
//!     .map(|(k, n)| format!("{k} {n}"))
//!     .sink_to(FileSink::new(dir.path().join("out")));
//! let graph = env.build()?;
//! let mut options = JobOptions::local(dir.path().join("checkpoints"));
//! options.checkpointing.interval = Some(std::time::Duration::from_millis(50));
//! let result = stream::execute(&graph, &options)?;
//! assert_eq!(result.attempts, 1);
//! let lines = stream::committed_lines(&dir.path().join("out"))?;
//! assert_eq!(lines.len(), 1000);
//! assert!(lines.contains(&"3 100".to_string()));
//! # Ok(()) }
//! ```

mod channel;
pub mod config;
pub mod event;
mod graph;
mod job;
mod ops;
pub mod restart;
pub mod sink;
pub mod source;
pub mod stats;
pub mod status;
mod task;

pub use channel::Output;
pub use graph::{Data, DataStream, Either, JobGraph, Key, KeyedStream, StreamEnv};
pub use job::{
    execute, execute_with_control, panic_is_handled_here, CheckpointDone, CheckpointingOptions,
    JobControl, JobListener, JobOptions, JobResult, RestartBackoff, RestoreSettings,
    SavepointHandle, SubtaskAck,
};
pub use ops::{FailureKind, FailurePlan, KeyedContext, KeyedProcessFunction, Summable};
pub mod wordcount;
pub use sink::{committed_lines, FileSink, PrintSink};
pub use source::{FileSource, GeneratorSource, Poll, Source, SourceReader};
pub use task::{AttemptInfo, CheckpointingMode, TaskContext};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
