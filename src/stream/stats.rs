//! Checkpoint statistics of a running job, as Flink's web UI and REST API show them
//! (`GET /jobs/:id/checkpoints`, `.../checkpoints/details/:id` and
//! `.../details/:id/subtasks/:vertex`), and the job's restart history.
//!
//! The checkpoint coordinator reports to a [`CheckpointStatsTracker`]: a checkpoint
//! triggered, each subtask's acknowledgement, completion, failure, discard; restores and
//! restarts. Every report is a few field updates under a short lock (no I/O, no
//! allocation beyond the checkpoint's own entry), and everything kept is bounded: the
//! history (`web.checkpoints.history`, default 10), the checkpoints in flight
//! ([`MAX_PENDING_CHECKPOINTS`]), the summary's percentile window ([`SUMMARY_WINDOW`], as
//! Flink's) and the restart history ([`MAX_RESTART_HISTORY`]).
//!
//! [`CheckpointStatsTracker::write`] stores a snapshot as `<job-dir>/checkpoint-stats.json`,
//! in Flink's field names (`format-spec/job-json.md`), so that `tidemark checkpoints` can
//! show it. The file is advisory: it is replaced through an fsynced temporary file (a
//! crash never leaves it torn) without a directory fsync (a crash may bring back the
//! previous version, which the next checkpoint replaces), since one more fsync per
//! checkpoint buys nothing the job needs. It is never read back by the job.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::config::{decode_job_file, encode_job_file, DEFAULT_CHECKPOINT_HISTORY};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::fs::{self, FileSystem};

/// The file, in the job directory, holding the statistics.
pub const CHECKPOINT_STATS_FILE_NAME: &str = "checkpoint-stats.json";
/// The largest `checkpoint-stats.json` read.
pub const MAX_CHECKPOINT_STATS_BYTES: u64 = 64 << 20;
/// Completed checkpoints the summary's percentiles are computed over (the newest;
/// min, max and average cover all). Flink's window: 10,000.
pub const SUMMARY_WINDOW: usize = 10_000;
/// Checkpoints in flight that are tracked; the oldest beyond it is counted as failed.
pub const MAX_PENDING_CHECKPOINTS: usize = 1024;
/// Restarts kept in the restart history (all are counted).
pub const MAX_RESTART_HISTORY: usize = 100;
/// The format name in `checkpoint-stats.json`'s header.
pub(crate) const CHECKPOINT_STATS_FORMAT: &str = "checkpoint-stats";

// ---------------------------------------------------------------------------------------
// What the coordinator reports

/// The format of a savepoint (Flink's `savepointFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SavepointFormat {
    /// Portable across state backends.
    Canonical,
    /// The backend's own files.
    Native,
}

/// One operator (Flink's job vertex) taking part in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskParallelism {
    /// The operator's id.
    pub operator_id: String,
    /// Its subtasks.
    pub num_subtasks: u32,
}

/// A checkpoint (or savepoint) was triggered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggeredCheckpoint {
    /// Its id.
    pub id: CheckpointId,
    /// When (unix ms).
    pub trigger_timestamp_ms: u64,
    /// `Some` for a savepoint.
    pub savepoint: Option<SavepointFormat>,
    /// The operators whose subtasks must acknowledge it.
    pub tasks: Vec<TaskParallelism>,
}

/// One subtask acknowledged a checkpoint: its state is snapshotted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubtaskAck {
    /// The operator.
    pub operator_id: String,
    /// The subtask's index, from 0.
    pub subtask_index: u32,
    /// When the acknowledgement arrived (unix ms).
    pub ack_timestamp_ms: u64,
    /// The backend's synchronous part.
    pub sync_duration_ms: u64,
    /// The backend's asynchronous part.
    pub async_duration_ms: u64,
    /// From the first barrier to the last at the subtask's inputs.
    pub alignment_duration_ms: u64,
    /// From the trigger to the first barrier reaching the subtask.
    pub start_delay_ms: u64,
    /// Bytes this checkpoint wrote for the subtask (Flink's `checkpointed_size`).
    pub checkpointed_size_bytes: u64,
    /// Bytes of the subtask's whole state, reused files included (`state_size`).
    pub state_size_bytes: u64,
    /// Bytes of records processed during alignment (`processed_data`).
    pub processed_data_bytes: u64,
}

/// The job was started from a checkpoint or savepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredCheckpoint {
    /// Its id.
    pub id: CheckpointId,
    /// When the restore happened (unix ms).
    pub restore_timestamp_ms: u64,
    /// Where it was (`chk-N`, or a savepoint directory).
    pub external_path: String,
    /// Whether it was a savepoint.
    pub is_savepoint: bool,
}

/// The job failed and the restart strategy decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// When the failure happened (unix ms).
    pub timestamp: u64,
    /// What failed.
    pub cause: String,
    /// Which restart this is (1 for the first); 0 when the strategy gave up.
    pub attempt: u32,
    /// The wait before the restart; `None` when the strategy gave up.
    pub delay: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// The document, in Flink's field names

/// `counts` of Flink's checkpoints response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Restores since the job started.
    pub restored: u64,
    /// Checkpoints triggered (including those that failed before they started).
    pub total: u64,
    /// Checkpoints in flight.
    pub in_progress: u64,
    /// Checkpoints completed.
    pub completed: u64,
    /// Checkpoints failed.
    pub failed: u64,
}

/// A percentile: a number, or `"NaN"` when there are no values (as Flink writes it).
#[derive(Debug, Clone, Copy)]
pub struct Percentile(pub f64);

impl PartialEq for Percentile {
    fn eq(&self, other: &Self) -> bool {
        (self.0.is_nan() && other.0.is_nan()) || self.0 == other.0
    }
}

impl Serialize for Percentile {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f64(self.0)
        } else {
            s.serialize_str("NaN")
        }
    }
}

impl<'de> Deserialize<'de> for Percentile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(f) => Ok(Percentile(f)),
            Raw::Text(t) if t == "NaN" => Ok(Percentile(f64::NAN)),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "a percentile must be a number or \"NaN\", not {t:?}"
            ))),
        }
    }
}

/// Min, max, average and percentiles of one measure (Flink's `StatsSummaryDto`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsSummaryJson {
    /// Smallest value (0 when there are none).
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// Average, rounded down.
    pub avg: u64,
    /// Median.
    pub p50: Percentile,
    /// 90th percentile.
    pub p90: Percentile,
    /// 95th percentile.
    pub p95: Percentile,
    /// 99th percentile.
    pub p99: Percentile,
    /// 99.9th percentile.
    pub p999: Percentile,
}

/// `summary` of Flink's checkpoints response: over completed checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Bytes each checkpoint wrote.
    pub checkpointed_size: StatsSummaryJson,
    /// Bytes of the whole state.
    pub state_size: StatsSummaryJson,
    /// Trigger to last acknowledgement, ms.
    pub end_to_end_duration: StatsSummaryJson,
    /// Always 0 (Flink's too, since 1.12).
    pub alignment_buffered: StatsSummaryJson,
    /// Bytes processed during alignment.
    pub processed_data: StatsSummaryJson,
    /// Always 0: no unaligned checkpoints.
    pub persisted_data: StatsSummaryJson,
}

/// The status of a checkpoint (Flink's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatus {
    /// Triggered, not all acknowledged or not yet written.
    InProgress,
    /// `_metadata` written.
    Completed,
    /// Failed or aborted.
    Failed,
}

impl CheckpointStatus {
    /// Flink's name (`IN_PROGRESS`, `COMPLETED`, `FAILED`).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointStatus::InProgress => "IN_PROGRESS",
            CheckpointStatus::Completed => "COMPLETED",
            CheckpointStatus::Failed => "FAILED",
        }
    }
}

/// Flink's `className` of a checkpoint entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointClass {
    /// In flight.
    InProgress,
    /// Completed.
    Completed,
    /// Failed.
    Failed,
}

/// One checkpoint, as Flink's history entries and details response show it. In the file,
/// `tasks` holds each operator's details (Flink's list responses leave it empty; `latest`
/// does here too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStatistics {
    /// `in_progress`, `completed` or `failed`.
    #[serde(rename = "className")]
    pub class_name: CheckpointClass,
    /// The checkpoint id.
    pub id: u64,
    /// Its status.
    pub status: CheckpointStatus,
    /// Whether it is a savepoint.
    pub is_savepoint: bool,
    /// A savepoint's format; `null` for a checkpoint.
    #[serde(rename = "savepointFormat")]
    pub savepoint_format: Option<SavepointFormat>,
    /// When it was triggered (unix ms).
    pub trigger_timestamp: u64,
    /// The last acknowledgement (unix ms); -1 before the first.
    pub latest_ack_timestamp: i64,
    /// Bytes it wrote.
    pub checkpointed_size: u64,
    /// Bytes of the whole state.
    pub state_size: u64,
    /// Trigger to last acknowledgement (to the failure, for a failed one), ms.
    pub end_to_end_duration: u64,
    /// Always 0.
    pub alignment_buffered: u64,
    /// Bytes processed during alignment.
    pub processed_data: u64,
    /// Always 0.
    pub persisted_data: u64,
    /// Subtasks that must acknowledge.
    pub num_subtasks: u32,
    /// Subtasks that did.
    pub num_acknowledged_subtasks: u32,
    /// `CHECKPOINT` or `SAVEPOINT`.
    pub checkpoint_type: String,
    /// Per operator id.
    pub tasks: BTreeMap<String, TaskStatistics>,
    /// Its directory (completed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_path: Option<String>,
    /// Whether it was deleted since (completed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<bool>,
    /// When it failed (failed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_timestamp: Option<u64>,
    /// Why it failed (failed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
}

/// One operator's part of a checkpoint: Flink's per-task entry of the details response
/// plus its subtasks response (`summary`, `subtasks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatistics {
    /// The checkpoint id.
    pub id: u64,
    /// The checkpoint's status.
    pub status: CheckpointStatus,
    /// The operator's last acknowledgement (unix ms); -1 before the first.
    pub latest_ack_timestamp: i64,
    /// Bytes written for the operator.
    pub checkpointed_size: u64,
    /// Bytes of the operator's whole state.
    pub state_size: u64,
    /// Trigger to the operator's last acknowledgement, ms.
    pub end_to_end_duration: u64,
    /// Always 0.
    pub alignment_buffered: u64,
    /// Bytes processed during alignment.
    pub processed_data: u64,
    /// Always 0.
    pub persisted_data: u64,
    /// The operator's subtasks.
    pub num_subtasks: u32,
    /// Those that acknowledged.
    pub num_acknowledged_subtasks: u32,
    /// Over the acknowledged subtasks.
    pub summary: TaskSummary,
    /// Each subtask.
    pub subtasks: Vec<SubtaskStatistics>,
}

/// `checkpoint_duration` of a task summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DurationSummary {
    /// Synchronous part, ms.
    pub sync: StatsSummaryJson,
    /// Asynchronous part, ms.
    pub r#async: StatsSummaryJson,
}

/// `alignment` of a task summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlignmentSummary {
    /// Always 0.
    pub buffered: StatsSummaryJson,
    /// Bytes processed during alignment.
    pub processed: StatsSummaryJson,
    /// Always 0.
    pub persisted: StatsSummaryJson,
    /// Alignment time, ms.
    pub duration: StatsSummaryJson,
}

/// `summary` of Flink's subtasks response.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Bytes written per subtask.
    pub checkpointed_size: StatsSummaryJson,
    /// Bytes of state per subtask.
    pub state_size: StatsSummaryJson,
    /// Trigger to acknowledgement, ms.
    pub end_to_end_duration: StatsSummaryJson,
    /// Synchronous and asynchronous parts.
    pub checkpoint_duration: DurationSummary,
    /// Alignment.
    pub alignment: AlignmentSummary,
    /// Trigger to first barrier, ms.
    pub start_delay: StatsSummaryJson,
}

/// `checkpoint` of a subtask entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskDurations {
    /// Synchronous part, ms.
    pub sync: u64,
    /// Asynchronous part, ms.
    pub r#async: u64,
}

/// `alignment` of a subtask entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskAlignment {
    /// Always 0.
    pub buffered: u64,
    /// Bytes processed during alignment.
    pub processed: u64,
    /// Always 0.
    pub persisted: u64,
    /// Alignment time, ms.
    pub duration: u64,
}

/// An acknowledged subtask (Flink's `completed` subtask entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedSubtask {
    /// `completed`.
    #[serde(rename = "className")]
    pub class_name: String,
    /// Its index.
    pub index: u32,
    /// When it acknowledged (unix ms).
    pub ack_timestamp: u64,
    /// Trigger to acknowledgement, ms.
    pub end_to_end_duration: u64,
    /// Bytes written.
    pub checkpointed_size: u64,
    /// Bytes of its state.
    pub state_size: u64,
    /// Synchronous and asynchronous parts.
    pub checkpoint: SubtaskDurations,
    /// Alignment.
    pub alignment: SubtaskAlignment,
    /// Trigger to first barrier, ms.
    pub start_delay: u64,
    /// Always false.
    pub unaligned_checkpoint: bool,
    /// Always false.
    pub aborted: bool,
    /// `completed`.
    pub status: String,
}

/// A subtask that has not acknowledged (Flink's `pending` subtask entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSubtask {
    /// `pending`.
    #[serde(rename = "className")]
    pub class_name: String,
    /// Its index.
    pub index: u32,
    /// `pending_or_failed`.
    pub status: String,
}

/// One subtask's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SubtaskStatistics {
    /// Acknowledged.
    Completed(CompletedSubtask),
    /// Not (yet) acknowledged.
    Pending(PendingSubtask),
}

/// `latest.restored` of Flink's checkpoints response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredJson {
    /// The restored checkpoint's id.
    pub id: u64,
    /// When (unix ms).
    pub restore_timestamp: u64,
    /// Whether it was a savepoint.
    pub is_savepoint: bool,
    /// Where it was.
    pub external_path: String,
}

/// `latest` of Flink's checkpoints response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    /// The newest completed checkpoint.
    pub completed: Option<CheckpointStatistics>,
    /// The newest completed savepoint.
    pub savepoint: Option<CheckpointStatistics>,
    /// The newest failed checkpoint.
    pub failed: Option<CheckpointStatistics>,
    /// The newest restore.
    pub restored: Option<RestoredJson>,
}

/// The restart history (tidemark's addition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarts {
    /// Failures the restart strategy was asked about.
    pub total: u64,
    /// The newest first, at most [`MAX_RESTART_HISTORY`].
    pub history: Vec<RestartRecord>,
}

/// `<job-dir>/checkpoint-stats.json`: Flink's checkpoints response (`counts`, `summary`,
/// `latest`, `history`, the newest first) with each history entry's details, plus the
/// restart history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStatsDocument {
    /// Counts.
    pub counts: Counts,
    /// Over completed checkpoints.
    pub summary: Summary,
    /// The newest of each kind.
    pub latest: Latest,
    /// Recent checkpoints, the newest first.
    pub history: Vec<CheckpointStatistics>,
    /// Restarts.
    pub restarts: Restarts,
}

// ---------------------------------------------------------------------------------------
// The tracker

/// Min, max, sum and count over all values, and the newest [`SUMMARY_WINDOW`] values for
/// percentiles (Flink's `StatsSummary`).
#[derive(Debug, Clone, Default)]
struct StatsSummary {
    min: u64,
    max: u64,
    sum: u128,
    count: u64,
    window: VecDeque<u64>,
    window_size: usize,
}

impl StatsSummary {
    fn with_window(window_size: usize) -> Self {
        StatsSummary {
            window_size,
            ..Self::default()
        }
    }

    fn add(&mut self, v: u64) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += u128::from(v);
        if self.window_size > 0 {
            if self.window.len() == self.window_size {
                self.window.pop_front();
            }
            self.window.push_back(v);
        }
    }

    fn json(&self) -> StatsSummaryJson {
        let mut sorted: Vec<u64> = self.window.iter().copied().collect();
        sorted.sort_unstable();
        let p = |q: f64| Percentile(percentile(&sorted, q));
        StatsSummaryJson {
            min: if self.count == 0 { 0 } else { self.min },
            max: self.max,
            avg: u64::try_from(self.sum.checked_div(u128::from(self.count)).unwrap_or(0))
                .unwrap_or(u64::MAX),
            p50: p(0.5),
            p90: p(0.9),
            p95: p(0.95),
            p99: p(0.99),
            p999: p(0.999),
        }
    }

    fn of(values: impl Iterator<Item = u64>) -> StatsSummaryJson {
        let mut s = StatsSummary::with_window(usize::MAX);
        for v in values {
            s.add(v);
        }
        s.json()
    }
}

/// The `quantile` (0 to 1) of `sorted` as Flink computes it: Apache Commons Math's
/// default ("legacy") estimate, position `quantile (n + 1)` interpolated between its
/// neighbours, with Flink's own floating-point steps (the quantile times 100, then divided
/// by 100) so that the last digits agree too. NaN when `sorted` is empty.
pub fn percentile(sorted: &[u64], quantile: f64) -> f64 {
    let n = sorted.len();
    let (Some(first), Some(last)) = (sorted.first(), sorted.last()) else {
        return f64::NAN;
    };
    let fraction = (quantile * 100.0) / 100.0;
    let pos = if fraction == 0.0 {
        0.0
    } else if fraction == 1.0 {
        n as f64 + 1.0
    } else {
        fraction * (n as f64 + 1.0)
    };
    if pos < 1.0 {
        return *first as f64;
    }
    if pos >= n as f64 {
        return *last as f64;
    }
    let below = pos.floor();
    // 1 <= below < n here, so both neighbours exist.
    let i = below as usize;
    match (sorted.get(i - 1), sorted.get(i)) {
        (Some(lo), Some(hi)) => *lo as f64 + (pos - below) * (*hi as f64 - *lo as f64),
        _ => *last as f64,
    }
}

#[derive(Debug, Clone, Copy)]
struct AckRecord {
    ack_ms: u64,
    sync_ms: u64,
    async_ms: u64,
    alignment_ms: u64,
    start_delay_ms: u64,
    checkpointed: u64,
    state: u64,
    processed: u64,
}

#[derive(Debug, Clone)]
struct TaskEntry {
    operator_id: String,
    acks: Vec<Option<AckRecord>>,
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    savepoint: Option<SavepointFormat>,
    trigger_ms: u64,
    status: CheckpointStatus,
    tasks: Vec<TaskEntry>,
    num_subtasks: u32,
    num_acked: u32,
    latest_ack_ms: Option<u64>,
    checkpointed: u64,
    state: u64,
    processed: u64,
    external_path: Option<String>,
    discarded: bool,
    failure: Option<(u64, String)>,
}

impl Entry {
    fn end_to_end_ms(&self) -> u64 {
        let end = match &self.failure {
            Some((at, _)) => Some(*at),
            None => self.latest_ack_ms,
        };
        end.map_or(0, |e| e.saturating_sub(self.trigger_ms))
    }

    fn json(&self, with_tasks: bool) -> CheckpointStatistics {
        let class_name = match self.status {
            CheckpointStatus::InProgress => CheckpointClass::InProgress,
            CheckpointStatus::Completed => CheckpointClass::Completed,
            CheckpointStatus::Failed => CheckpointClass::Failed,
        };
        let completed = self.status == CheckpointStatus::Completed;
        CheckpointStatistics {
            class_name,
            id: self.id,
            status: self.status,
            is_savepoint: self.savepoint.is_some(),
            savepoint_format: self.savepoint,
            trigger_timestamp: self.trigger_ms,
            latest_ack_timestamp: ack_json(self.latest_ack_ms),
            checkpointed_size: self.checkpointed,
            state_size: self.state,
            end_to_end_duration: self.end_to_end_ms(),
            alignment_buffered: 0,
            processed_data: self.processed,
            persisted_data: 0,
            num_subtasks: self.num_subtasks,
            num_acknowledged_subtasks: self.num_acked,
            checkpoint_type: if self.savepoint.is_some() {
                "SAVEPOINT"
            } else {
                "CHECKPOINT"
            }
            .into(),
            tasks: if with_tasks {
                self.tasks
                    .iter()
                    .map(|t| (t.operator_id.clone(), self.task_json(t)))
                    .collect()
            } else {
                BTreeMap::new()
            },
            external_path: if completed {
                self.external_path.clone()
            } else {
                None
            },
            discarded: completed.then_some(self.discarded),
            failure_timestamp: self.failure.as_ref().map(|(at, _)| *at),
            failure_message: self.failure.as_ref().map(|(_, m)| m.clone()),
        }
    }

    fn task_json(&self, t: &TaskEntry) -> TaskStatistics {
        let acked: Vec<&AckRecord> = t.acks.iter().flatten().collect();
        let latest = acked.iter().map(|a| a.ack_ms).max();
        let since_trigger = |ms: u64| ms.saturating_sub(self.trigger_ms);
        let sum = |f: fn(&AckRecord) -> u64| acked.iter().map(|a| f(a)).sum::<u64>();
        let summary_of = |f: fn(&AckRecord) -> u64| StatsSummary::of(acked.iter().map(|a| f(a)));
        let trigger_ms = self.trigger_ms;
        let zeros = StatsSummary::of(acked.iter().map(|_| 0));
        TaskStatistics {
            id: self.id,
            status: self.status,
            latest_ack_timestamp: ack_json(latest),
            checkpointed_size: sum(|a| a.checkpointed),
            state_size: sum(|a| a.state),
            end_to_end_duration: latest.map_or(0, since_trigger),
            alignment_buffered: 0,
            processed_data: sum(|a| a.processed),
            persisted_data: 0,
            num_subtasks: len_u32(t.acks.len()),
            num_acknowledged_subtasks: len_u32(acked.len()),
            summary: TaskSummary {
                checkpointed_size: summary_of(|a| a.checkpointed),
                state_size: summary_of(|a| a.state),
                end_to_end_duration: StatsSummary::of(
                    acked.iter().map(|a| a.ack_ms.saturating_sub(trigger_ms)),
                ),
                checkpoint_duration: DurationSummary {
                    sync: summary_of(|a| a.sync_ms),
                    r#async: summary_of(|a| a.async_ms),
                },
                alignment: AlignmentSummary {
                    buffered: zeros,
                    processed: summary_of(|a| a.processed),
                    persisted: zeros,
                    duration: summary_of(|a| a.alignment_ms),
                },
                start_delay: summary_of(|a| a.start_delay_ms),
            },
            subtasks: t
                .acks
                .iter()
                .enumerate()
                .map(|(i, a)| match a {
                    Some(a) => SubtaskStatistics::Completed(CompletedSubtask {
                        class_name: "completed".into(),
                        index: len_u32(i),
                        ack_timestamp: a.ack_ms,
                        end_to_end_duration: since_trigger(a.ack_ms),
                        checkpointed_size: a.checkpointed,
                        state_size: a.state,
                        checkpoint: SubtaskDurations {
                            sync: a.sync_ms,
                            r#async: a.async_ms,
                        },
                        alignment: SubtaskAlignment {
                            buffered: 0,
                            processed: a.processed,
                            persisted: 0,
                            duration: a.alignment_ms,
                        },
                        start_delay: a.start_delay_ms,
                        unaligned_checkpoint: false,
                        aborted: false,
                        status: "completed".into(),
                    }),
                    None => SubtaskStatistics::Pending(PendingSubtask {
                        class_name: "pending".into(),
                        index: len_u32(i),
                        status: "pending_or_failed".into(),
                    }),
                })
                .collect(),
        }
    }
}

fn ack_json(ms: Option<u64>) -> i64 {
    ms.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX))
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The six measures of the job summary.
#[derive(Debug, Clone)]
struct JobSummary {
    checkpointed: StatsSummary,
    state: StatsSummary,
    end_to_end: StatsSummary,
    buffered: StatsSummary,
    processed: StatsSummary,
    persisted: StatsSummary,
}

#[derive(Debug)]
struct State {
    history_size: usize,
    counts: Counts,
    pending: BTreeMap<u64, Entry>,
    /// Finished checkpoints, oldest first, at most `history_size`.
    finished: VecDeque<Entry>,
    summary: JobSummary,
    latest_completed: Option<Entry>,
    latest_savepoint: Option<Entry>,
    latest_failed: Option<Entry>,
    latest_restored: Option<RestoredJson>,
    restarts: Restarts,
}

/// Collects a job's checkpoint statistics; see the module documentation. Shared by
/// reference: every method takes `&self`.
#[derive(Debug)]
pub struct CheckpointStatsTracker {
    state: Mutex<State>,
    /// Serializes [`CheckpointStatsTracker::write`]s, which share a temporary file.
    writing: Mutex<()>,
}

impl Default for CheckpointStatsTracker {
    fn default() -> Self {
        Self::new(DEFAULT_CHECKPOINT_HISTORY)
    }
}

impl CheckpointStatsTracker {
    /// A tracker keeping `history_size` checkpoints in its history
    /// (`web.checkpoints.history`; at least 1).
    pub fn new(history_size: usize) -> Self {
        let window = || StatsSummary::with_window(SUMMARY_WINDOW);
        CheckpointStatsTracker {
            state: Mutex::new(State {
                history_size: history_size.max(1),
                counts: Counts::default(),
                pending: BTreeMap::new(),
                finished: VecDeque::new(),
                summary: JobSummary {
                    checkpointed: window(),
                    state: window(),
                    end_to_end: window(),
                    buffered: window(),
                    processed: window(),
                    persisted: window(),
                },
                latest_completed: None,
                latest_savepoint: None,
                latest_failed: None,
                latest_restored: None,
                restarts: Restarts::default(),
            }),
            writing: Mutex::new(()),
        }
    }

    /// A checkpoint was triggered. A second report of an id in flight is ignored (false).
    pub fn report_triggered(&self, t: TriggeredCheckpoint) -> bool {
        let mut s = self.state.lock();
        if s.pending.contains_key(&t.id.0) {
            return false;
        }
        let num_subtasks = t
            .tasks
            .iter()
            .fold(0u32, |n, task| n.saturating_add(task.num_subtasks));
        let entry = Entry {
            id: t.id.0,
            savepoint: t.savepoint,
            trigger_ms: t.trigger_timestamp_ms,
            status: CheckpointStatus::InProgress,
            tasks: t
                .tasks
                .into_iter()
                .map(|task| TaskEntry {
                    operator_id: task.operator_id,
                    acks: vec![None; usize::try_from(task.num_subtasks).unwrap_or(0)],
                })
                .collect(),
            num_subtasks,
            num_acked: 0,
            latest_ack_ms: None,
            checkpointed: 0,
            state: 0,
            processed: 0,
            external_path: None,
            discarded: false,
            failure: None,
        };
        s.counts.total += 1;
        s.pending.insert(t.id.0, entry);
        if s.pending.len() > MAX_PENDING_CHECKPOINTS {
            if let Some((_, mut oldest)) = s.pending.pop_first() {
                let at = oldest.latest_ack_ms.unwrap_or(oldest.trigger_ms);
                oldest.failure = Some((
                    at,
                    format!(
                        "statistics dropped: more than {MAX_PENDING_CHECKPOINTS} checkpoints \
                         in flight and no outcome reported"
                    ),
                ));
                s.finish_failed(oldest);
            }
        }
        s.counts.in_progress = s.pending.len() as u64;
        true
    }

    /// A subtask acknowledged checkpoint `id`. False (nothing recorded) when the
    /// checkpoint is not in flight, the operator or index is not part of it, or the subtask
    /// already acknowledged.
    pub fn report_acknowledged(&self, id: CheckpointId, ack: &SubtaskAck) -> bool {
        let mut s = self.state.lock();
        let Some(e) = s.pending.get_mut(&id.0) else {
            return false;
        };
        let Some(task) = e
            .tasks
            .iter_mut()
            .find(|t| t.operator_id == ack.operator_id)
        else {
            return false;
        };
        let Some(slot) = usize::try_from(ack.subtask_index)
            .ok()
            .and_then(|i| task.acks.get_mut(i))
        else {
            return false;
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(AckRecord {
            ack_ms: ack.ack_timestamp_ms,
            sync_ms: ack.sync_duration_ms,
            async_ms: ack.async_duration_ms,
            alignment_ms: ack.alignment_duration_ms,
            start_delay_ms: ack.start_delay_ms,
            checkpointed: ack.checkpointed_size_bytes,
            state: ack.state_size_bytes,
            processed: ack.processed_data_bytes,
        });
        e.num_acked = e.num_acked.saturating_add(1);
        e.latest_ack_ms = e.latest_ack_ms.max(Some(ack.ack_timestamp_ms));
        e.checkpointed = e.checkpointed.saturating_add(ack.checkpointed_size_bytes);
        e.state = e.state.saturating_add(ack.state_size_bytes);
        e.processed = e.processed.saturating_add(ack.processed_data_bytes);
        true
    }

    /// Checkpoint `id` completed: its `_metadata` is at `external_path`. False when it
    /// was not in flight.
    pub fn report_completed(&self, id: CheckpointId, external_path: &str) -> bool {
        let mut s = self.state.lock();
        let Some(mut e) = s.pending.remove(&id.0) else {
            return false;
        };
        e.status = CheckpointStatus::Completed;
        e.external_path = Some(external_path.to_string());
        s.counts.completed += 1;
        s.counts.in_progress = s.pending.len() as u64;
        let end_to_end = e.end_to_end_ms();
        let sum = &mut s.summary;
        sum.checkpointed.add(e.checkpointed);
        sum.state.add(e.state);
        sum.end_to_end.add(end_to_end);
        sum.buffered.add(0);
        sum.processed.add(e.processed);
        sum.persisted.add(0);
        let mut latest = e.clone();
        latest.tasks.clear();
        if e.savepoint.is_some() {
            s.latest_savepoint = Some(latest);
        } else {
            s.latest_completed = Some(latest);
        }
        s.push_finished(e);
        true
    }

    /// Checkpoint `id` failed at `failure_timestamp_ms` (unix ms). False when it was not
    /// in flight.
    pub fn report_failed(
        &self,
        id: CheckpointId,
        failure_timestamp_ms: u64,
        message: &str,
    ) -> bool {
        let mut s = self.state.lock();
        let Some(mut e) = s.pending.remove(&id.0) else {
            return false;
        };
        e.failure = Some((failure_timestamp_ms, message.to_string()));
        s.finish_failed(e);
        true
    }

    /// A checkpoint failed before it was triggered (no subtask was asked): it counts as
    /// triggered and failed, with no history entry (as Flink counts them).
    pub fn report_failed_before_trigger(&self) {
        let mut s = self.state.lock();
        s.counts.total += 1;
        s.counts.failed += 1;
    }

    /// Completed checkpoint `id` was deleted (subsumed by newer ones).
    pub fn report_discarded(&self, id: CheckpointId) {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        for e in s
            .finished
            .iter_mut()
            .chain(s.latest_completed.as_mut())
            .chain(s.latest_savepoint.as_mut())
        {
            if e.id == id.0 && e.status == CheckpointStatus::Completed {
                e.discarded = true;
            }
        }
    }

    /// The job was restored from a checkpoint or savepoint.
    pub fn report_restored(&self, r: RestoredCheckpoint) {
        let mut s = self.state.lock();
        s.counts.restored += 1;
        s.latest_restored = Some(RestoredJson {
            id: r.id.0,
            restore_timestamp: r.restore_timestamp_ms,
            is_savepoint: r.is_savepoint,
            external_path: r.external_path,
        });
    }

    /// The job failed; `record` says what the restart strategy decided.
    pub fn report_restart(&self, record: RestartRecord) {
        let mut s = self.state.lock();
        s.restarts.total += 1;
        s.restarts.history.insert(0, record);
        s.restarts.history.truncate(MAX_RESTART_HISTORY);
    }

    /// The statistics now, in Flink's shape.
    pub fn snapshot(&self) -> CheckpointStatsDocument {
        let s = self.state.lock();
        let mut history: Vec<&Entry> = s.pending.values().chain(s.finished.iter()).collect();
        history.sort_by(|a, b| b.id.cmp(&a.id));
        history.truncate(s.history_size);
        let sum = &s.summary;
        CheckpointStatsDocument {
            counts: s.counts,
            summary: Summary {
                checkpointed_size: sum.checkpointed.json(),
                state_size: sum.state.json(),
                end_to_end_duration: sum.end_to_end.json(),
                alignment_buffered: sum.buffered.json(),
                processed_data: sum.processed.json(),
                persisted_data: sum.persisted.json(),
            },
            latest: Latest {
                completed: s.latest_completed.as_ref().map(|e| e.json(false)),
                savepoint: s.latest_savepoint.as_ref().map(|e| e.json(false)),
                failed: s.latest_failed.as_ref().map(|e| e.json(false)),
                restored: s.latest_restored.clone(),
            },
            history: history.into_iter().map(|e| e.json(true)).collect(),
            restarts: s.restarts.clone(),
        }
    }

    /// Writes a snapshot to `<job_dir>/checkpoint-stats.json`, replacing it through an
    /// fsynced temporary file without a directory fsync (see the module documentation).
    pub fn write(&self, fs: &dyn FileSystem, job_dir: &Path) -> Result<()> {
        let doc = self.snapshot();
        let bytes = encode_job_file(CHECKPOINT_STATS_FORMAT, &doc)?;
        let _one_writer = self.writing.lock();
        fs::write_replace(fs, &checkpoint_stats_path(job_dir), &bytes)
    }
}

impl State {
    fn finish_failed(&mut self, mut e: Entry) {
        e.status = CheckpointStatus::Failed;
        self.counts.failed += 1;
        self.counts.in_progress = self.pending.len() as u64;
        let mut latest = e.clone();
        latest.tasks.clear();
        self.latest_failed = Some(latest);
        self.push_finished(e);
    }

    fn push_finished(&mut self, e: Entry) {
        self.finished.push_back(e);
        while self.finished.len() > self.history_size {
            self.finished.pop_front();
        }
    }
}

/// The path of `checkpoint-stats.json` in `job_dir`.
pub fn checkpoint_stats_path(job_dir: &Path) -> PathBuf {
    job_dir.join(CHECKPOINT_STATS_FILE_NAME)
}

/// Reads a `checkpoint-stats.json` (the file, or the job directory holding it). A damaged
/// or hostile file is an error naming it, never a panic.
pub fn read_checkpoint_stats(path: &Path) -> Result<CheckpointStatsDocument> {
    let path = if path.is_dir() {
        checkpoint_stats_path(path)
    } else {
        path.to_path_buf()
    };
    decode_job_file(&path, CHECKPOINT_STATS_FORMAT, MAX_CHECKPOINT_STATS_BYTES)
}

/// Reads `checkpoint-stats.json` from bytes; `path` names it in errors.
pub fn decode_checkpoint_stats(path: &Path, bytes: &[u8]) -> Result<CheckpointStatsDocument> {
    super::config::decode_job_bytes(path, bytes, CHECKPOINT_STATS_FORMAT)
}

/// The bytes [`CheckpointStatsTracker::write`] stores for `doc`.
pub fn encode_checkpoint_stats(doc: &CheckpointStatsDocument) -> Result<Vec<u8>> {
    encode_job_file(CHECKPOINT_STATS_FORMAT, doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_flinks_estimate() {
        // Flink 2.3's running job: state sizes of its four completed checkpoints.
        let v = [242350, 479757, 698748, 927417];
        assert_eq!(percentile(&v, 0.5), 589252.5);
        assert_eq!(percentile(&v, 0.9), 927417.0);
        assert_eq!(percentile(&[5], 0.5), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&ten, 0.5), 5.5);
        assert_eq!(percentile(&ten, 0.05), 1.0);
        assert_eq!(percentile(&ten, 0.95), 10.0);
        assert_eq!(percentile(&ten, 1.0), 10.0);
    }

    #[test]
    fn summary_window_is_bounded_but_min_max_avg_cover_all() {
        let mut s = StatsSummary::with_window(3);
        for v in [100, 1, 2, 3] {
            s.add(v);
        }
        let j = s.json();
        assert_eq!((j.min, j.max, j.avg), (1, 100, 26));
        assert_eq!(s.window.len(), 3);
        assert_eq!(j.p999, Percentile(3.0));
    }
}
