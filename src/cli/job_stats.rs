//! The job directory's `job-config.json` and `checkpoint-stats.json`, as `tidemark
//! checkpoints` shows them after its list: the configuration in force and the statistics
//! summary (counts, latest, the newest history rows, restarts).
//!
//! A missing file is not mentioned; a damaged one is shown as a problem line (and as
//! `{"error": ...}` in JSON) without failing the command: these files are advisory, and
//! the checkpoints themselves are what the list checks.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use super::output::{format_unix_ms, human_bytes, Render};
use crate::error::Error;
use crate::stream::config::{
    format_duration, read_job_config, JobConfigDocument, CHECKPOINTING_DISABLED_INTERVAL_MS,
    JOB_CONFIG_FILE_NAME,
};
use crate::stream::stats::{
    read_checkpoint_stats, CheckpointStatistics, CheckpointStatsDocument, StatsSummaryJson,
    CHECKPOINT_STATS_FILE_NAME,
};
use crate::stream::status::{read_job_status_file, JobStatusDocument, JOB_STATUS_FILE_NAME};

/// History rows shown in text.
const HISTORY_ROWS: usize = 5;

/// One of the job directory's JSON files: what it holds, or why it could not be read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum JobFile<T> {
    /// Read and checked.
    Read(Box<T>),
    /// Damaged or unreadable.
    Damaged {
        /// The error, naming the file.
        error: String,
    },
}

impl<T> JobFile<T> {
    fn load(job_dir: &Path, name: &str, read: fn(&Path) -> crate::Result<T>) -> Option<Self> {
        let path = job_dir.join(name);
        match read(&path) {
            Ok(t) => Some(JobFile::Read(Box::new(t))),
            Err(Error::NotFound { .. }) => None,
            Err(e) => Some(JobFile::Damaged {
                error: e.to_string(),
            }),
        }
    }
}

/// A report followed by the job directory's configuration and statistics.
#[derive(Debug, Serialize)]
pub struct WithJobFiles<'a, R: Render> {
    /// The report itself (its fields, in JSON).
    #[serde(flatten)]
    pub report: &'a R,
    /// `job-config.json`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_config: Option<JobFile<JobConfigDocument>>,
    /// `checkpoint-stats.json`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_stats: Option<JobFile<CheckpointStatsDocument>>,
    /// `job-status.json`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_status: Option<JobFile<JobStatusDocument>>,
}

/// `report` with the JSON files found in `job_dir`.
pub fn with_job_files<'a, R: Render>(job_dir: &Path, report: &'a R) -> WithJobFiles<'a, R> {
    WithJobFiles {
        report,
        job_config: JobFile::load(job_dir, JOB_CONFIG_FILE_NAME, read_job_config),
        checkpoint_stats: JobFile::load(job_dir, CHECKPOINT_STATS_FILE_NAME, read_checkpoint_stats),
        job_status: JobFile::load(job_dir, JOB_STATUS_FILE_NAME, read_job_status_file),
    }
}

impl<R: Render> Render for WithJobFiles<'_, R> {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        self.report.render_text(out)?;
        match &self.job_status {
            None => {}
            Some(JobFile::Damaged { error }) => writeln!(out, "job status: unreadable: {error}")?,
            Some(JobFile::Read(s)) => {
                let last = s
                    .last_checkpoint
                    .map_or("none".to_string(), |id| format!("chk-{id}"));
                writeln!(
                    out,
                    "job status ({JOB_STATUS_FILE_NAME}): {} at {}, last checkpoint {last}{}",
                    s.state,
                    format_unix_ms(s.end_time),
                    if s.finished() {
                        ": all input processed, nothing to resume"
                    } else {
                        ""
                    }
                )?
            }
        }
        match &self.job_config {
            None => {}
            Some(JobFile::Damaged { error }) => {
                writeln!(out, "configuration: unreadable: {error}")?
            }
            Some(JobFile::Read(c)) => write_config(out, c)?,
        }
        match &self.checkpoint_stats {
            None => Ok(()),
            Some(JobFile::Damaged { error }) => writeln!(out, "statistics: unreadable: {error}"),
            Some(JobFile::Read(s)) => write_stats(out, s),
        }
    }
}

fn ms(v: u64) -> String {
    format!("{v} ms")
}

fn duration(ms: u64) -> String {
    format_duration(std::time::Duration::from_millis(ms))
}

fn write_config(out: &mut dyn Write, c: &JobConfigDocument) -> io::Result<()> {
    let setting = |k: &str| c.configuration.get(k).map_or("?", String::as_str);
    writeln!(out, "configuration ({JOB_CONFIG_FILE_NAME}):")?;
    if c.interval == CHECKPOINTING_DISABLED_INTERVAL_MS {
        writeln!(out, "  checkpointing   off")?;
    } else {
        writeln!(
            out,
            "  checkpointing   every {}, {}, timeout {}, min pause {}, at most {} at once, {} failure(s) tolerated",
            duration(c.interval),
            c.mode,
            duration(c.timeout),
            duration(c.min_pause),
            c.max_concurrent,
            c.tolerable_failed_checkpoints
        )?;
    }
    writeln!(
        out,
        "  retention       keep {}, {}",
        setting("execution.checkpointing.num-retained"),
        setting("execution.checkpointing.externalized-checkpoint-retention")
    )?;
    writeln!(
        out,
        "  state backend   {} with {}",
        c.state_backend, c.checkpoint_storage
    )?;
    writeln!(out, "  restart         {}", c.restart_strategy.description)
}

fn write_stats(out: &mut dyn Write, s: &CheckpointStatsDocument) -> io::Result<()> {
    let c = &s.counts;
    writeln!(out, "statistics ({CHECKPOINT_STATS_FILE_NAME}):")?;
    writeln!(
        out,
        "  counts          {} triggered, {} in progress, {} completed, {} failed, {} restored",
        c.total, c.in_progress, c.completed, c.failed, c.restored
    )?;
    let line = |out: &mut dyn Write, what: &str, e: &CheckpointStatistics| {
        write!(
            out,
            "  {what:<15} #{} triggered {}, {}, state {} (wrote {})",
            e.id,
            format_unix_ms(e.trigger_timestamp),
            ms(e.end_to_end_duration),
            human_bytes(e.state_size),
            human_bytes(e.checkpointed_size)
        )?;
        match (&e.external_path, &e.failure_message) {
            (Some(p), _) => writeln!(out, ", {p}"),
            (_, Some(m)) => writeln!(out, ": {m}"),
            _ => writeln!(out),
        }
    };
    if let Some(e) = &s.latest.completed {
        line(out, "latest", e)?;
    }
    if let Some(e) = &s.latest.savepoint {
        line(out, "latest savepoint", e)?;
    }
    if let Some(e) = &s.latest.failed {
        line(out, "latest failed", e)?;
    }
    if let Some(r) = &s.latest.restored {
        writeln!(
            out,
            "  restored        #{} at {} from {}{}",
            r.id,
            format_unix_ms(r.restore_timestamp),
            r.external_path,
            if r.is_savepoint { " (savepoint)" } else { "" }
        )?;
    }
    let row = |out: &mut dyn Write, what: &str, m: &StatsSummaryJson, show: fn(u64) -> String| {
        writeln!(
            out,
            "    {what:<13} min {:>10}  avg {:>10}  max {:>10}  p99 {:>10}",
            show(m.min),
            show(m.avg),
            show(m.max),
            if m.p99.0.is_finite() {
                show(m.p99.0 as u64)
            } else {
                "-".into()
            }
        )
    };
    writeln!(out, "  summary over {} completed:", c.completed)?;
    row(out, "end to end", &s.summary.end_to_end_duration, ms)?;
    row(out, "state size", &s.summary.state_size, human_bytes)?;
    row(
        out,
        "checkpointed",
        &s.summary.checkpointed_size,
        human_bytes,
    )?;
    writeln!(
        out,
        "  history (newest {} of {} kept):",
        s.history.len().min(HISTORY_ROWS),
        s.history.len()
    )?;
    writeln!(
        out,
        "        ID  STATUS       TRIGGERED                    DURATION  STATE SIZE       WROTE  ACKED"
    )?;
    for e in s.history.iter().take(HISTORY_ROWS) {
        writeln!(
            out,
            "    {:>6}  {:<11}  {:<27}  {:>8}  {:>10}  {:>10}  {}/{}",
            e.id,
            e.status.as_str(),
            format_unix_ms(e.trigger_timestamp),
            ms(e.end_to_end_duration),
            human_bytes(e.state_size),
            human_bytes(e.checkpointed_size),
            e.num_acknowledged_subtasks,
            e.num_subtasks
        )?;
    }
    if s.restarts.total > 0 {
        write!(out, "  restarts        {}", s.restarts.total)?;
        match s.restarts.history.first() {
            Some(r) => writeln!(
                out,
                " (latest at {}: {}; {})",
                format_unix_ms(r.timestamp),
                r.cause,
                match r.delay {
                    Some(d) => format!("restart {} after {}", r.attempt, ms(d)),
                    None => "gave up".into(),
                }
            ),
            None => writeln!(out),
        }?;
    }
    Ok(())
}
