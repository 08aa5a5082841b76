//! Running a job: one thread per subtask, the checkpoint coordinator, and the restart
//! loop.
//!
//! The coordinator triggers a checkpoint at the sources, which snapshot their positions
//! and emit a barrier; each operator snapshots when the barrier has arrived on every input
//! (aligned in exactly-once mode), forwards it, and writes its snapshot on another thread;
//! when every subtask has acknowledged, the coordinator writes `_metadata` (the checkpoint
//! is complete only then), tells every subtask (sinks commit), and retention runs. A
//! checkpoint that fails or times out is aborted: no `_metadata`, none of its files left,
//! and it counts against the tolerable failures. A failure of any subtask (an error or a
//! panic) stops the attempt; the restart strategy decides whether and when a new attempt
//! starts from the latest completed checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use super::config::{write_job_config, JobConfig};
use super::event::Barrier;
use super::graph::{AnyBox, ChainParts, JobGraph, NodeKind, NodeParts};
use super::restart::{RestartDecision, RestartStrategy, RestartStrategyConfig};
use super::stats::{
    CheckpointStatsTracker, RestartRecord, RestoredCheckpoint, TaskParallelism, TriggeredCheckpoint,
};
use super::status::{write_job_status, JobStatusDocument};
use super::task::{
    AckMetrics, AttemptInfo, CheckpointingMode, Control, OperatorRestore, Pending, PendingRegistry,
    SharedPending, TaskEvent, TaskId, TaskRuntime,
};
use crate::checkpoint::{
    resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
    CheckpointStorage, CheckpointStore, ExternalizedCleanup, JobId, JobTermination, LocalStorage,
    Metadata, OperatorSubtaskState, PendingSavepoint, RestoreMode, SavepointFormat, SourceOffset,
};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs};
use crate::state::backend::{StateBackend, SubtaskInfo};
use crate::state::key_groups::MaxParallelism;

/// Decides, after each failure, whether and when the job restarts.
pub trait RestartBackoff: Send {
    /// A failure at `now` (time since the job started): `Ok(delay)` to restart after
    /// `delay`, `Err(reason)` to give up.
    fn on_failure(&mut self, now: Duration) -> std::result::Result<Duration, String>;
    /// The strategy's name and settings, for logs.
    fn describe(&self) -> String;
}

/// Where a job starts from (Flink's `-s`, `execution.state-recovery.*`).
#[derive(Debug, Clone)]
pub struct RestoreSettings {
    /// A `_metadata` file, a `chk-<N>` directory, or a job directory (its latest).
    pub path: PathBuf,
    /// Claim or no-claim.
    pub mode: RestoreMode,
    /// Allow state of operators that the job no longer has (dropped).
    pub allow_non_restored_state: bool,
}

/// Checkpointing settings (Flink's `execution.checkpointing.*`).
#[derive(Debug, Clone)]
pub struct CheckpointingOptions {
    /// Time between checkpoints; `None`: no checkpoints.
    pub interval: Option<Duration>,
    /// Aligned or not.
    pub mode: CheckpointingMode,
    /// A checkpoint not complete after this long is aborted (default 10 min).
    pub timeout: Duration,
    /// Least time from a checkpoint's completion to the next trigger (default 0).
    pub min_pause: Duration,
    /// Checkpoints in flight at once (default 1).
    pub max_concurrent: usize,
    /// Checkpoint failures in a row tolerated before the job fails (default 0).
    pub tolerable_failed: u32,
    /// Completed checkpoints kept (default 1).
    pub num_retained: usize,
    /// What happens to retained checkpoints when the job ends.
    pub cleanup: ExternalizedCleanup,
    /// Incremental checkpoints where the backend can take them.
    pub incremental: bool,
}

impl Default for CheckpointingOptions {
    fn default() -> Self {
        CheckpointingOptions {
            interval: None,
            mode: CheckpointingMode::ExactlyOnce,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failed: 0,
            num_retained: 1,
            cleanup: ExternalizedCleanup::NoExternalized,
            incremental: true,
        }
    }
}

/// Something told about the job's progress (a command line's live lines, statistics).
pub trait JobListener: Send + Sync {
    /// The job started or restarted from a checkpoint.
    fn restored(&self, _id: CheckpointId, _path: &std::path::Path) {}
    /// A checkpoint was triggered.
    fn checkpoint_triggered(&self, _id: CheckpointId, _subtasks: usize) {}
    /// A subtask acknowledged a checkpoint.
    fn checkpoint_acknowledged(&self, _ack: &SubtaskAck) {}
    /// A checkpoint completed.
    fn checkpoint_completed(&self, _c: &CheckpointDone) {}
    /// A checkpoint failed or was aborted.
    fn checkpoint_failed(&self, _id: CheckpointId, _message: &str) {}
    /// A savepoint completed in `dir`.
    fn savepoint_completed(&self, _id: CheckpointId, _dir: &std::path::Path) {}
    /// The job failed and restarts after `delay` (attempt `attempt`).
    fn restarting(&self, _attempt: u32, _cause: &Error, _delay: Duration) {}
}

/// A subtask's acknowledgement of a checkpoint.
#[derive(Debug, Clone)]
pub struct SubtaskAck {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The operator.
    pub operator_id: String,
    /// The subtask.
    pub subtask_index: u32,
    /// When it acknowledged (unix ms).
    pub ack_timestamp_ms: u64,
    /// Its synchronous part.
    pub sync: Duration,
    /// Its asynchronous part.
    pub async_: Duration,
    /// Its barrier alignment.
    pub alignment: Duration,
    /// Bytes of its state handles (files and inline).
    pub state_size: u64,
}

/// A completed checkpoint, as the coordinator saw it.
#[derive(Debug, Clone)]
pub struct CheckpointDone {
    /// Its id.
    pub id: CheckpointId,
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// When it was triggered (unix ms).
    pub trigger_timestamp_ms: u64,
    /// From trigger to `_metadata` written.
    pub end_to_end: Duration,
    /// Bytes this checkpoint wrote or linked anew (Flink's `checkpointed_size`).
    pub checkpointed_size: u64,
    /// Bytes of all state it references (Flink's `state_size`).
    pub state_size: u64,
    /// Its directory.
    pub external_path: PathBuf,
    /// The subtasks.
    pub subtasks: usize,
}

/// Everything a run needs besides the graph.
#[derive(Clone)]
pub struct JobOptions {
    /// The job's id (its directory under the checkpoints directory).
    pub job_id: JobId,
    /// Parallelism of operators that set none (`parallelism.default`, default 1).
    pub parallelism: u32,
    /// Key groups of keyed state (`pipeline.max-parallelism`, default 128).
    pub max_parallelism: MaxParallelism,
    /// Where checkpoints go: `<dir>/<job-id>/chk-<N>`. Needed when checkpointing.
    pub checkpoints_dir: Option<PathBuf>,
    /// Checkpointing.
    pub checkpointing: CheckpointingOptions,
    /// The state backend.
    pub backend: Arc<dyn StateBackend>,
    /// Where the first attempt starts from.
    pub restore: Option<RestoreSettings>,
    /// Makes the restart strategy for the run; `None`: Flink's default rule (no restart
    /// without checkpointing, fixed-delay with unlimited attempts with it).
    pub restart: Option<Arc<dyn Fn() -> Box<dyn RestartBackoff> + Send + Sync>>,
    /// Batches (of up to 256 records) buffered per channel: backpressure beyond it
    /// (`taskmanager.network.memory.buffers-per-channel`, default 4).
    pub channel_capacity: usize,
    /// Chains operators joined by a forward edge at the same parallelism into one thread
    /// (`pipeline.operator-chaining.enabled`, default true).
    pub chaining: bool,
    /// Told about the job's progress.
    pub listeners: Vec<Arc<dyn JobListener>>,
    /// The configuration in force, written next to the job's checkpoints
    /// (`job-config.json`) so tools can show it.
    pub config: Option<JobConfig>,
}

impl JobOptions {
    /// Defaults for a job on this machine: a fresh job id, parallelism 1, 128 key groups,
    /// checkpoints (when an interval is set) under `checkpoints_dir`, the `filesystem`
    /// state backend, Flink's checkpointing defaults and default restart rule.
    pub fn local(checkpoints_dir: impl Into<PathBuf>) -> Self {
        JobOptions {
            job_id: JobId::random(),
            parallelism: 1,
            max_parallelism: MaxParallelism::default(),
            checkpoints_dir: Some(checkpoints_dir.into()),
            checkpointing: CheckpointingOptions::default(),
            backend: Arc::new(crate::state::backend::FsStateBackend::new()),
            restore: None,
            restart: None,
            channel_capacity: super::config::DEFAULT_BUFFERS_PER_CHANNEL,
            chaining: true,
            listeners: Vec::new(),
            config: None,
        }
    }

    /// The options `config` describes, for job `job_id`. The `lsm` backend's working
    /// stores go under `<state.backend.lsm.localdir>/<job-id>`, so jobs never share one.
    pub fn from_config(config: &JobConfig, job_id: JobId) -> Result<Self> {
        let mut backend_config = config.state_backend.clone();
        let local = backend_config
            .lsm_local_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("tidemark-lsm"));
        backend_config.lsm_local_dir = Some(local.join(job_id.as_str()));
        let backend: Arc<dyn StateBackend> =
            Arc::from(backend_config.build(crate::lsm::Options::default())?);
        let c = &config.checkpointing;
        let restart_config = config.restart.clone();
        RestartStrategy::new(restart_config.clone())?;
        Ok(JobOptions {
            job_id,
            parallelism: config.parallelism.max(1),
            max_parallelism: MaxParallelism::new(config.max_parallelism)?,
            checkpoints_dir: c.checkpoints_dir.clone(),
            checkpointing: CheckpointingOptions {
                interval: c.interval,
                mode: c.mode,
                timeout: c.timeout,
                min_pause: c.min_pause,
                max_concurrent: c.max_concurrent.max(1) as usize,
                tolerable_failed: c.tolerable_failed,
                num_retained: c.num_retained,
                cleanup: c.externalized,
                incremental: config.state_backend.incremental.unwrap_or(true),
            },
            backend,
            restore: config.recovery.path.clone().map(|path| RestoreSettings {
                path,
                mode: config.recovery.claim_mode,
                allow_non_restored_state: config.recovery.ignore_unclaimed_state,
            }),
            restart: Some(Arc::new(move || {
                match RestartStrategy::new(restart_config.clone()) {
                    Ok(s) => Box::new(s) as Box<dyn RestartBackoff>,
                    // Checked above; a strategy that cannot be built does not restart.
                    Err(_) => default_restart(false),
                }
            })),
            channel_capacity: config.buffers_per_channel,
            chaining: config.operator_chaining,
            listeners: Vec::new(),
            config: Some(config.clone()),
        })
    }
}

impl RestartBackoff for RestartStrategy {
    fn on_failure(&mut self, now: Duration) -> std::result::Result<Duration, String> {
        match RestartStrategy::on_failure(self, now) {
            RestartDecision::Restart { delay, .. } => Ok(delay),
            RestartDecision::GiveUp { reason } => Err(reason),
        }
    }
    fn describe(&self) -> String {
        self.config().to_string()
    }
}

impl std::fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobOptions")
            .field("job_id", &self.job_id)
            .field("parallelism", &self.parallelism)
            .field("max_parallelism", &self.max_parallelism)
            .field("checkpoints_dir", &self.checkpoints_dir)
            .field("checkpointing", &self.checkpointing)
            .field("backend", &self.backend)
            .field("restore", &self.restore)
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The job's id.
    pub job_id: JobId,
    /// Attempts it took (1 without failures).
    pub attempts: u32,
    /// Checkpoints completed.
    pub checkpoints_completed: u64,
    /// Checkpoints failed or aborted.
    pub checkpoints_failed: u64,
    /// The latest completed checkpoint's directory, if any is retained.
    pub latest_checkpoint: Option<PathBuf>,
    /// How the job ended.
    pub termination: JobTermination,
}

/// A savepoint asked for through [`JobControl`].
#[derive(Debug)]
pub(crate) struct SavepointRequest {
    dir: PathBuf,
    format: SavepointFormat,
    stop_after: bool,
    reply: std::sync::mpsc::Sender<Result<PathBuf>>,
}

/// Waits for a savepoint asked for through [`JobControl`].
#[derive(Debug)]
pub struct SavepointHandle(std::sync::mpsc::Receiver<Result<PathBuf>>);

impl SavepointHandle {
    /// The savepoint's directory once its `_metadata` is durable, or why it failed (also
    /// when the job ended first); `None` when `timeout` passed first.
    pub fn wait(&self, timeout: Duration) -> Option<Result<PathBuf>> {
        match self.0.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(Err(Error::Job(
                "the job ended before the savepoint completed".into(),
            ))),
        }
    }
}

/// Stops a running job, or asks it for a savepoint, from another thread.
#[derive(Debug, Clone, Default)]
pub struct JobControl {
    stop: Arc<AtomicBool>,
    savepoints: Arc<parking_lot::Mutex<Vec<SavepointRequest>>>,
}

impl JobControl {
    /// A handle that stops nothing until asked.
    pub fn new() -> Self {
        JobControl::default()
    }

    /// Asks the job to stop: it takes no more checkpoints, cancels its subtasks and ends
    /// as suspended (retained checkpoints stay, as the retention policy says for a
    /// suspension).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// True once [`JobControl::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks for a savepoint in `format` under `savepoints_dir`
    /// (`savepoint-<job>-<random>/`); the job goes on.
    pub fn trigger_savepoint(
        &self,
        savepoints_dir: impl Into<PathBuf>,
        format: SavepointFormat,
    ) -> SavepointHandle {
        self.request(savepoints_dir.into(), format, false)
    }

    /// Asks for a savepoint, then stops the job once it is complete (Flink's
    /// stop-with-savepoint). A savepoint that fails leaves the job running.
    pub fn stop_with_savepoint(
        &self,
        savepoints_dir: impl Into<PathBuf>,
        format: SavepointFormat,
    ) -> SavepointHandle {
        self.request(savepoints_dir.into(), format, true)
    }

    fn request(&self, dir: PathBuf, format: SavepointFormat, stop_after: bool) -> SavepointHandle {
        let (tx, rx) = std::sync::mpsc::channel();
        self.savepoints.lock().push(SavepointRequest {
            dir,
            format,
            stop_after,
            reply: tx,
        });
        SavepointHandle(rx)
    }

    fn take_savepoint_request(&self) -> Option<SavepointRequest> {
        let mut q = self.savepoints.lock();
        if q.is_empty() {
            None
        } else {
            Some(q.remove(0))
        }
    }
}

/// Runs `graph` with `options` until its sources are exhausted (bounded), it is stopped,
/// or its restart strategy gives up.
pub fn execute(graph: &JobGraph, options: &JobOptions) -> Result<JobResult> {
    execute_with_control(graph, options, &JobControl::new())
}

/// [`execute`], stoppable through `control`.
pub fn execute_with_control(
    graph: &JobGraph,
    options: &JobOptions,
    control: &JobControl,
) -> Result<JobResult> {
    Runner::new(graph, options, control)?.run()
}

struct Runner<'a> {
    graph: &'a JobGraph,
    options: &'a JobOptions,
    control: &'a JobControl,
    fs: Arc<dyn FileSystem>,
    store: Option<CheckpointStore>,
    /// The checkpoint the next attempt restores.
    restore_point: Option<RestorePoint>,
    next_id: u64,
    completed: u64,
    failed: u64,
    started: Instant,
    parallelism: Vec<u32>,
    /// Checkpoint statistics, kept in `<job-dir>/checkpoint-stats.json`.
    stats: Option<(Arc<CheckpointStatsTracker>, PathBuf)>,
    /// Files of the latest completed checkpoint: what a new one reuses.
    previous_files: std::collections::HashSet<String>,
}

#[derive(Clone)]
struct RestorePoint {
    metadata: Metadata,
    storage: Arc<dyn CheckpointStorage>,
    path: PathBuf,
}

enum AttemptEnd {
    Finished,
    Stopped,
    Failed(Error),
}

impl<'a> Runner<'a> {
    fn new(graph: &'a JobGraph, options: &'a JobOptions, control: &'a JobControl) -> Result<Self> {
        let fs: Arc<dyn FileSystem> = StdFs::shared();
        let parallelism: Vec<u32> = graph
            .nodes
            .iter()
            .map(|n| n.parallelism.unwrap_or(options.parallelism).max(1))
            .collect();
        for (i, n) in graph.nodes.iter().enumerate() {
            if n.keyed {
                options.max_parallelism.check_parallelism(parallelism[i])?;
            }
        }
        let mut restore_point = None;
        let mut restored_info = None;
        if let Some(r) = &options.restore {
            let resolved = resolve_verified(Arc::clone(&fs), &r.path, false)?;
            check_restorable(
                graph,
                &resolved.metadata,
                options,
                r.allow_non_restored_state,
            )?;
            restored_info = Some(resolved.restore_info(r.mode));
            restore_point = Some(RestorePoint {
                storage: Arc::new(resolved.storage(Arc::clone(&fs))),
                path: resolved.metadata_path.clone(),
                metadata: resolved.metadata,
            });
        }
        let checkpointing = options.checkpointing.interval.is_some();
        let store = match (&options.checkpoints_dir, checkpointing) {
            (Some(dir), true) => {
                let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalStorage::new(
                    Arc::clone(&fs),
                    dir,
                    options.job_id.clone(),
                ));
                let config = CheckpointConfig {
                    num_retained: options.checkpointing.num_retained,
                    cleanup: options.checkpointing.cleanup,
                    restored: restored_info,
                };
                Some(CheckpointStore::open(storage, config)?)
            }
            (None, true) => {
                return Err(Error::InvalidOptions(
                    "checkpointing is on (execution.checkpointing.interval) but no \
                     checkpoint directory is set (state.checkpoints.dir)"
                        .into(),
                ))
            }
            _ => None,
        };
        let mut next_id = restore_point
            .as_ref()
            .map(|r| r.metadata.checkpoint_id.0 + 1)
            .unwrap_or(1);
        if let Some(s) = &store {
            // Past every id the store has seen: a checkpoint a kill left unfinished (its
            // directory deleted when the store opened) keeps its id, which is never
            // reused; starting below it would fail every trigger.
            next_id = next_id.max(s.next_id().0);
        }
        let mut stats = None;
        if let Some(s) = &store {
            let job_dir = s.storage().root();
            let history = options
                .config
                .as_ref()
                .map(|c| c.checkpoint_history)
                .unwrap_or(10);
            if let Some(c) = &options.config {
                write_job_config(fs.as_ref(), &job_dir, c)?;
            }
            stats = Some((Arc::new(CheckpointStatsTracker::new(history)), job_dir));
        }
        let previous_files = store
            .as_ref()
            .and_then(|s| s.latest())
            .map(|m| m.file_handles().map(|f| f.path.clone()).collect())
            .unwrap_or_default();
        Ok(Runner {
            graph,
            options,
            control,
            fs,
            store,
            restore_point,
            next_id,
            completed: 0,
            failed: 0,
            started: Instant::now(),
            parallelism,
            stats,
            previous_files,
        })
    }

    fn run(mut self) -> Result<JobResult> {
        let mut restart = match &self.options.restart {
            Some(make) => make(),
            None => default_restart(self.store.is_some()),
        };
        let mut attempt = 0u32;
        loop {
            if let Some(r) = &self.restore_point {
                for l in &self.options.listeners {
                    l.restored(r.metadata.checkpoint_id, &r.path);
                }
                if let Some((t, _)) = &self.stats {
                    t.report_restored(RestoredCheckpoint {
                        id: r.metadata.checkpoint_id,
                        restore_timestamp_ms: super::now_ms(),
                        external_path: r.path.display().to_string(),
                        is_savepoint: false,
                    });
                }
            }
            let end = self.run_attempt(attempt);
            match end {
                Ok(AttemptEnd::Finished) => {
                    return self.finish(attempt + 1, JobTermination::Finished)
                }
                Ok(AttemptEnd::Stopped) => {
                    return self.finish(attempt + 1, JobTermination::Suspended)
                }
                Ok(AttemptEnd::Failed(cause)) | Err(cause) => {
                    if self.control.is_stopped() {
                        return self.finish(attempt + 1, JobTermination::Suspended);
                    }
                    match restart.on_failure(self.started.elapsed()) {
                        Ok(delay) => {
                            attempt += 1;
                            tracing::warn!(
                                "job {} failed ({cause}); restart {attempt} in {delay:?}",
                                self.options.job_id
                            );
                            for l in &self.options.listeners {
                                l.restarting(attempt, &cause, delay);
                            }
                            if let Some((t, _)) = &self.stats {
                                t.report_restart(RestartRecord {
                                    timestamp: super::now_ms(),
                                    cause: cause.to_string(),
                                    attempt,
                                    delay: Some(delay.as_millis() as u64),
                                });
                            }
                            self.persist_stats();
                            std::thread::sleep(delay);
                            if let Some(s) = &self.store {
                                if let Some(m) = s.latest() {
                                    let path = s
                                        .storage()
                                        .display_path(&m.checkpoint_id.dir_name())
                                        .join(crate::checkpoint::METADATA_FILE_NAME);
                                    self.restore_point = Some(RestorePoint {
                                        metadata: m,
                                        storage: Arc::clone(s.storage()),
                                        path,
                                    });
                                }
                            }
                        }
                        Err(reason) => {
                            if let Some((t, _)) = &self.stats {
                                t.report_restart(RestartRecord {
                                    timestamp: super::now_ms(),
                                    cause: cause.to_string(),
                                    attempt: 0,
                                    delay: None,
                                });
                            }
                            self.persist_stats();
                            // A job that gives up keeps its checkpoints, whatever the
                            // retention policy, for a manual resume (`-s`).
                            if let Some(s) = &self.store {
                                if let Err(e) = self.record_end(s, JobTermination::Failed, false) {
                                    tracing::warn!("job {}: {e}", self.options.job_id);
                                }
                            }
                            let kept = self
                                .store
                                .take()
                                .and_then(|s| s.list().last().map(|c| c.external_path.clone()));
                            return Err(Error::Job(format!(
                                "job {} failed and is not restarted ({reason}; {}): {cause}{}",
                                self.options.job_id,
                                restart.describe(),
                                match kept {
                                    Some(p) => format!(
                                        "; its latest checkpoint {} is kept for a resume with -s",
                                        p.display()
                                    ),
                                    None => String::new(),
                                }
                            )));
                        }
                    }
                }
            }
        }
    }

    /// Writes the statistics next to the checkpoints (a failure to is logged, not fatal:
    /// the statistics are for people, the checkpoints are the state).
    fn persist_stats(&self) {
        if let Some((t, dir)) = &self.stats {
            if let Err(e) = t.write(self.fs.as_ref(), dir) {
                tracing::warn!("writing checkpoint statistics: {e}");
            }
        }
    }

    /// Writes `job-status.json`: how this run ended, and whether its checkpoints are
    /// about to be discarded.
    fn record_end(
        &self,
        store: &CheckpointStore,
        how: JobTermination,
        discards: bool,
    ) -> Result<()> {
        let list = store.list();
        write_job_status(
            self.fs.as_ref(),
            &store.storage().root(),
            &JobStatusDocument {
                jid: self.options.job_id.to_string(),
                state: how.flink_state().into(),
                end_time: super::now_ms(),
                last_checkpoint: list.last().map(|c| c.id.0),
                checkpoints_discarded: discards,
                checkpoints_kept: list.iter().filter(|c| !c.owned).map(|c| c.id.0).collect(),
            },
        )
    }

    fn finish(mut self, attempts: u32, how: JobTermination) -> Result<JobResult> {
        let latest_checkpoint = self
            .store
            .as_ref()
            .and_then(|s| s.list().last().map(|c| c.external_path.clone()));
        let mut kept = latest_checkpoint.clone();
        if let Some(store) = self.store.take() {
            let discards = store.config().cleanup.discards_on(how);
            // Recorded durably before any checkpoint is discarded: a kill during the
            // discard must not leave an older checkpoint that looks resumable.
            self.record_end(&store, how, discards)?;
            store.shutdown(how)?;
            if discards {
                kept = None;
            }
        }
        Ok(JobResult {
            job_id: self.options.job_id.clone(),
            attempts,
            checkpoints_completed: self.completed,
            checkpoints_failed: self.failed,
            latest_checkpoint: kept,
            termination: how,
        })
    }

    /// One attempt: builds the subtasks, restores them, coordinates checkpoints.
    fn run_attempt(&mut self, number: u32) -> Result<AttemptEnd> {
        let graph = self.graph;
        let opts = self.options;
        let cancel = Arc::new(AtomicBool::new(false));
        let (ev_tx, ev_rx) = unbounded::<TaskEvent>();
        let pendings = PendingRegistry::default();
        let token = format!("{}-{number}", random_token());
        let attempt = AttemptInfo { number, token };
        // Which operators run chained to the one before them, in its threads.
        let chained_to = graph.chained_to(&self.parallelism, opts.chaining);
        // The channels of every edge between chains.
        let mut outs: Vec<Vec<Vec<AnyBox>>> = self
            .parallelism
            .iter()
            .map(|p| (0..*p).map(|_| Vec::new()).collect())
            .collect();
        let mut ins: Vec<Vec<Vec<AnyBox>>> = self
            .parallelism
            .iter()
            .map(|p| (0..*p).map(|_| Vec::new()).collect())
            .collect();
        for e in &graph.edges {
            if chained_to[e.to] == Some(e.from) {
                continue;
            }
            let (o, i) = (e.make)(
                self.parallelism[e.from],
                self.parallelism[e.to],
                opts.channel_capacity.max(1),
                opts.max_parallelism,
            );
            for (s, b) in o.into_iter().enumerate() {
                outs[e.from][s].push(b);
            }
            for (s, b) in i.into_iter().enumerate() {
                ins[e.to][s].push(b);
            }
        }
        // What each operator restores.
        let restores: HashMap<String, Arc<OperatorRestore>> = match &self.restore_point {
            None => HashMap::new(),
            Some(r) => {
                let mut by_op: HashMap<String, Vec<OperatorSubtaskState>> = HashMap::new();
                for s in &r.metadata.operator_states {
                    by_op
                        .entry(s.operator_id.clone())
                        .or_default()
                        .push(s.clone());
                }
                by_op
                    .into_iter()
                    .map(|(k, subtasks)| {
                        (
                            k,
                            Arc::new(OperatorRestore {
                                checkpoint_id: r.metadata.checkpoint_id,
                                storage: Arc::clone(&r.storage),
                                subtasks,
                            }),
                        )
                    })
                    .collect()
            }
        };
        let checkpointing = self.store.is_some();
        let runtime = |node: usize, subtask: u32, control: Receiver<Control>| {
            let uid = graph.uid(node).to_string();
            TaskRuntime {
                id: TaskId { node, subtask },
                info: SubtaskInfo {
                    operator_id: uid.clone(),
                    subtask_index: subtask,
                    parallelism: self.parallelism[node],
                    max_parallelism: opts.max_parallelism,
                },
                keyed: graph.nodes[node].keyed,
                cancel: Arc::clone(&cancel),
                control,
                events: ev_tx.clone(),
                backend: Arc::clone(&opts.backend),
                restore: restores.get(&uid).cloned(),
                pendings: pendings.clone(),
                mode: opts.checkpointing.mode,
                attempt: attempt.clone(),
                checkpointing,
                asyncs: Vec::new(),
            }
        };
        let mut spawn_error = None;
        // Chained operators become output edges of their upstream subtasks, the last of
        // a chain first (a node's inputs come before it in the graph).
        let mut chained_tasks = 0usize;
        for node in (0..graph.nodes.len()).rev() {
            let (Some(up), Some(make)) = (chained_to[node], graph.nodes[node].chained.as_ref())
            else {
                continue;
            };
            for subtask in 0..self.parallelism[node] {
                // The coordinator's messages reach a chained subtask through its chain's
                // head: its own control channel stays empty.
                let (_, control) = crossbeam_channel::bounded(0);
                let parts = ChainParts {
                    outputs: std::mem::take(&mut outs[node][subtask as usize]),
                    cancel: Arc::clone(&cancel),
                    runtime: runtime(node, subtask, control),
                };
                match make(parts) {
                    Ok(edge) => outs[up][subtask as usize].push(edge),
                    Err(e) => spawn_error = Some(e),
                }
                chained_tasks += 1;
            }
        }
        let mut tasks: Vec<(TaskId, Sender<Control>, JoinHandle<()>)> = Vec::new();
        let mut sources = Vec::new();
        for (node, spec) in graph.nodes.iter().enumerate() {
            if spawn_error.is_some() {
                break;
            }
            if chained_to[node].is_some() {
                continue;
            }
            let p = self.parallelism[node];
            for subtask in (0..p).rev() {
                let parts = NodeParts {
                    subtask,
                    parallelism: p,
                    inputs: std::mem::take(&mut ins[node][subtask as usize]),
                    outputs: std::mem::take(&mut outs[node][subtask as usize]),
                    cancel: Arc::clone(&cancel),
                };
                let body = match (spec.factory)(parts) {
                    Ok(b) => b,
                    Err(e) => {
                        spawn_error = Some(e);
                        break;
                    }
                };
                let (ctl_tx, ctl_rx) = unbounded();
                let mut rt = runtime(node, subtask, ctl_rx);
                let id = rt.id;
                let label = rt.info.label();
                let thread_name = label.clone();
                let handle = std::thread::Builder::new()
                    .name(thread_name)
                    .spawn(move || {
                        IN_SUBTASK.with(|f| f.set(true));
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| body.run(&mut rt)));
                        rt.join_asyncs();
                        let ev = match r {
                            Ok(Ok(())) => TaskEvent::Finished { task: id },
                            Ok(Err(error)) => TaskEvent::Failed { task: id, error },
                            Err(panic) => TaskEvent::Failed {
                                task: id,
                                error: Error::Job(format!(
                                    "subtask {label} panicked: {}",
                                    panic_message(&panic)
                                )),
                            },
                        };
                        let _ = rt.events.send(ev);
                    })
                    .map_err(|e| Error::Job(format!("cannot start a subtask thread: {e}")));
                match handle {
                    Ok(h) => tasks.push((id, ctl_tx, h)),
                    Err(e) => {
                        spawn_error = Some(e);
                        break;
                    }
                }
                if spec.kind == NodeKind::Source {
                    sources.push(id);
                }
            }
        }
        // The edges of chains whose head never started (and their snapshot threads).
        drop(outs);
        drop(ev_tx);
        let controls: HashMap<TaskId, Sender<Control>> =
            tasks.iter().map(|(id, tx, _)| (*id, tx.clone())).collect();
        let n_tasks = tasks.len() + chained_tasks;
        let end = match spawn_error {
            Some(e) => AttemptEnd::Failed(e),
            None => self.coordinate(&ev_rx, &controls, &sources, &pendings, n_tasks),
        };
        // Stop whatever still runs, and wait for it (and its snapshot threads).
        cancel.store(true, Ordering::SeqCst);
        drop(controls);
        let mut first_failure = None;
        for (_, tx, h) in tasks {
            drop(tx);
            let _ = h.join();
        }
        while let Ok(ev) = ev_rx.try_recv() {
            if let TaskEvent::Failed { error, .. } = ev {
                if !matches!(error, Error::Cancelled) && first_failure.is_none() {
                    first_failure = Some(error);
                }
            }
        }
        for id in pendings.ids() {
            self.abort(&pendings, id, "the attempt ended");
        }
        let _ = first_failure;
        Ok(end)
    }

    /// The checkpoint coordinator of one attempt.
    fn coordinate(
        &mut self,
        events: &Receiver<TaskEvent>,
        controls: &HashMap<TaskId, Sender<Control>>,
        sources: &[TaskId],
        pendings: &PendingRegistry,
        n_tasks: usize,
    ) -> AttemptEnd {
        let opts = &self.options.checkpointing;
        let interval = if self.store.is_some() {
            opts.interval
        } else {
            None
        };
        let mut in_flight: BTreeMap<CheckpointId, InFlight> = BTreeMap::new();
        let mut exhausted = 0usize;
        let mut exhausted_sources = std::collections::HashSet::new();
        let mut finished_tasks = std::collections::HashSet::new();
        let mut finishing = false;
        let mut final_id: Option<CheckpointId> = None;
        let mut finish_sent = false;
        let mut failures_in_row = 0u32;
        let mut last_trigger = Instant::now();
        let mut last_completion: Option<Instant> = None;
        loop {
            if self.control.is_stopped() {
                return AttemptEnd::Stopped;
            }
            // Savepoints asked for, one at a time, between checkpoints.
            if !finishing && in_flight.is_empty() {
                if let Some(r) = self.control.take_savepoint_request() {
                    let reply = r.reply.clone();
                    match self.trigger(pendings, controls, sources, n_tasks, Some(r)) {
                        Ok(f) => {
                            in_flight.insert(f.id, f);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
            // Time-outs.
            let now = Instant::now();
            let timed_out: Vec<CheckpointId> = in_flight
                .iter()
                .filter(|(_, f)| now.duration_since(f.started) > opts.timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in timed_out {
                let msg = format!(
                    "checkpoint {id} expired before completing ({:?})",
                    opts.timeout
                );
                if let Some(r) = in_flight.remove(&id).and_then(|f| f.savepoint) {
                    // A savepoint's failure is its requester's news, not a checkpoint's.
                    let _ = r.reply.send(Err(Error::Job(msg.clone())));
                    self.fail_checkpoint(pendings, controls, id, &msg);
                    continue;
                }
                self.fail_checkpoint(pendings, controls, id, &msg);
                failures_in_row += 1;
                if final_id == Some(id) {
                    final_id = None;
                }
            }
            if failures_in_row > opts.tolerable_failed {
                return AttemptEnd::Failed(Error::Job(format!(
                    "exceeded checkpoint tolerable failure threshold ({} failed in a row, \
                     execution.checkpointing.tolerable-failed-checkpoints = {})",
                    failures_in_row, opts.tolerable_failed
                )));
            }
            // Triggers.
            let all_exhausted = !sources.is_empty() && exhausted == sources.len();
            if all_exhausted && !finishing {
                finishing = true;
            }
            if finishing && !finish_sent {
                if interval.is_none() {
                    for s in sources {
                        let _ = controls[s].send(Control::Finish);
                    }
                    finish_sent = true;
                } else if final_id.is_none() && in_flight.is_empty() {
                    match self.trigger(pendings, controls, sources, n_tasks, None) {
                        Ok(f) => {
                            final_id = Some(f.id);
                            in_flight.insert(f.id, f);
                        }
                        Err(e) => {
                            self.failed += 1;
                            failures_in_row += 1;
                            tracing::warn!("final checkpoint not triggered: {e}");
                        }
                    }
                }
            } else if let Some(iv) = interval {
                let paused = last_completion.is_none_or(|t| t.elapsed() >= opts.min_pause);
                if !finishing
                    && last_trigger.elapsed() >= iv
                    && in_flight.len() < opts.max_concurrent.max(1)
                    && paused
                {
                    last_trigger = Instant::now();
                    match self.trigger(pendings, controls, sources, n_tasks, None) {
                        Ok(f) => {
                            in_flight.insert(f.id, f);
                        }
                        Err(e) => {
                            self.failed += 1;
                            failures_in_row += 1;
                            tracing::warn!("checkpoint not triggered: {e}");
                        }
                    }
                }
            }
            let wait = match interval {
                Some(iv) => iv
                    .saturating_sub(last_trigger.elapsed())
                    .clamp(Duration::from_millis(1), Duration::from_millis(50)),
                None => Duration::from_millis(50),
            };
            let ev = match events.recv_timeout(wait) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return AttemptEnd::Failed(Error::Job("every subtask vanished".into()))
                }
            };
            match ev {
                TaskEvent::Failed { task, error } => {
                    let label = format!("{}_{}", self.graph.uid(task.node), task.subtask);
                    return AttemptEnd::Failed(match error {
                        Error::Job(m) if m.contains(&label) => Error::Job(m),
                        e => Error::Job(format!("subtask {label} failed: {e}")),
                    });
                }
                TaskEvent::Finished { task } => {
                    if finished_tasks.insert(task) && finished_tasks.len() == n_tasks {
                        return AttemptEnd::Finished;
                    }
                }
                TaskEvent::SourceExhausted { task } => {
                    if exhausted_sources.insert(task) {
                        exhausted += 1;
                    }
                }
                TaskEvent::Decline { id, task, error } => {
                    if let Some(f) = in_flight.remove(&id) {
                        let msg = format!(
                            "subtask {}_{} declined checkpoint {id}: {error}",
                            self.graph.uid(task.node),
                            task.subtask
                        );
                        self.fail_checkpoint(pendings, controls, id, &msg);
                        if let Some(r) = f.savepoint {
                            let _ = r.reply.send(Err(Error::Job(msg)));
                            continue;
                        }
                        failures_in_row += 1;
                        if final_id == Some(id) {
                            final_id = None;
                        }
                    }
                }
                TaskEvent::Ack {
                    id,
                    task,
                    state,
                    offsets,
                    metrics,
                } => {
                    let Some(f) = in_flight.get_mut(&id) else {
                        continue;
                    };
                    let ack = SubtaskAck {
                        id,
                        operator_id: state.operator_id.clone(),
                        subtask_index: state.subtask_index,
                        ack_timestamp_ms: metrics.ack_timestamp_ms,
                        sync: metrics.sync,
                        async_: metrics.async_,
                        alignment: metrics.alignment,
                        state_size: state_bytes(&state),
                    };
                    for l in &self.options.listeners {
                        l.checkpoint_acknowledged(&ack);
                    }
                    if let Some((t, _)) = &self.stats {
                        let new_bytes: u64 =
                            state
                                .file_handles()
                                .filter(|h| !self.previous_files.contains(&h.path))
                                .map(|h| h.size)
                                .sum::<u64>()
                                .saturating_add(ack.state_size.saturating_sub(
                                    state.file_handles().map(|h| h.size).sum::<u64>(),
                                ));
                        t.report_acknowledged(
                            id,
                            &super::stats::SubtaskAck {
                                operator_id: ack.operator_id.clone(),
                                subtask_index: ack.subtask_index,
                                ack_timestamp_ms: ack.ack_timestamp_ms,
                                sync_duration_ms: ack.sync.as_millis() as u64,
                                async_duration_ms: ack.async_.as_millis() as u64,
                                alignment_duration_ms: ack.alignment.as_millis() as u64,
                                start_delay_ms: 0,
                                checkpointed_size_bytes: new_bytes,
                                state_size_bytes: ack.state_size,
                                processed_data_bytes: 0,
                            },
                        );
                    }
                    f.acks.insert(task, (*state, metrics));
                    f.offsets.extend(offsets);
                    if f.acks.len() < f.expected {
                        continue;
                    }
                    let Some(f) = in_flight.remove(&id) else {
                        continue;
                    };
                    let stop_after = f.savepoint.as_ref().is_some_and(|r| r.stop_after);
                    match self.complete(pendings, f) {
                        Ok(()) if stop_after => {
                            // The sinks commit what the savepoint covers now if they can;
                            // a restore from the savepoint commits whatever they could not.
                            for tx in controls.values() {
                                let _ = tx.send(Control::Complete(id));
                            }
                            return AttemptEnd::Stopped;
                        }
                        Ok(()) => {
                            failures_in_row = 0;
                            last_completion = Some(Instant::now());
                            for tx in controls.values() {
                                let _ = tx.send(Control::Complete(id));
                            }
                            if final_id == Some(id) && !finish_sent {
                                for s in sources {
                                    let _ = controls[s].send(Control::Finish);
                                }
                                finish_sent = true;
                            }
                        }
                        Err(e) => {
                            let msg = format!("checkpoint {id} could not be completed: {e}");
                            self.fail_checkpoint(pendings, controls, id, &msg);
                            failures_in_row += 1;
                            if final_id == Some(id) {
                                final_id = None;
                            }
                        }
                    }
                }
            }
        }
    }

    fn trigger(
        &mut self,
        pendings: &PendingRegistry,
        controls: &HashMap<TaskId, Sender<Control>>,
        sources: &[TaskId],
        n_tasks: usize,
        savepoint: Option<SavepointRequest>,
    ) -> Result<InFlight> {
        let id = CheckpointId(self.next_id);
        let pending = match &savepoint {
            None => {
                let store = self
                    .store
                    .as_ref()
                    .ok_or_else(|| Error::Job("no checkpoint store".into()))?;
                let kind = if self.options.checkpointing.incremental {
                    CheckpointKind::Incremental
                } else {
                    CheckpointKind::Full
                };
                Pending::Checkpoint(store.begin(id, kind)?)
            }
            Some(r) => Pending::Savepoint(PendingSavepoint::begin(
                Arc::clone(&self.fs),
                &r.dir,
                &self.options.job_id,
                id,
                r.format,
            )?),
        };
        self.next_id += 1;
        let (trigger_ms, kind) = match &pending {
            Pending::Checkpoint(p) => (p.trigger_timestamp_ms(), p.kind()),
            Pending::Savepoint(_) => (super::now_ms(), pending.target().kind()),
        };
        pendings.insert(id, Arc::new(pending));
        for l in &self.options.listeners {
            l.checkpoint_triggered(id, n_tasks);
        }
        if let Some((t, _)) = &self.stats {
            t.report_triggered(TriggeredCheckpoint {
                id,
                trigger_timestamp_ms: trigger_ms,
                savepoint: savepoint.as_ref().map(|r| match r.format {
                    SavepointFormat::Canonical => super::stats::SavepointFormat::Canonical,
                    SavepointFormat::Native => super::stats::SavepointFormat::Native,
                }),
                tasks: self
                    .graph
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, _)| TaskParallelism {
                        operator_id: self.graph.uid(i).to_string(),
                        num_subtasks: self.parallelism[i],
                    })
                    .collect(),
            });
        }
        let barrier = Barrier {
            id,
            timestamp_ms: trigger_ms,
            kind,
        };
        for s in sources {
            let _ = controls[s].send(Control::Trigger(barrier));
        }
        Ok(InFlight {
            id,
            kind,
            started: Instant::now(),
            trigger_ms,
            expected: n_tasks,
            acks: HashMap::new(),
            offsets: Vec::new(),
            savepoint,
        })
    }

    /// Writes `_metadata` of a checkpoint every subtask acknowledged.
    fn complete(&mut self, pendings: &PendingRegistry, f: InFlight) -> Result<()> {
        let shared = pendings
            .remove(f.id)
            .ok_or_else(|| Error::Job(format!("checkpoint {} is not pending", f.id)))?;
        let pending = unwrap_pending(shared)?;
        let savepoint = f.savepoint;
        let mut operator_states: Vec<OperatorSubtaskState> =
            f.acks.into_values().map(|(s, _)| s).collect();
        operator_states.sort_by(|a, b| {
            (a.operator_id.as_str(), a.subtask_index)
                .cmp(&(b.operator_id.as_str(), b.subtask_index))
        });
        let mut source_offsets: Vec<SourceOffset> = f.offsets;
        source_offsets.sort_by(|a, b| (&a.source, &a.split).cmp(&(&b.source, &b.split)));
        let subtasks = operator_states.len();
        let content = CheckpointContent {
            operator_states,
            source_offsets,
            properties: vec![("job-id".into(), self.options.job_id.as_str().into())],
        };
        let done = match pending {
            Pending::Checkpoint(p) => p.commit(content)?,
            Pending::Savepoint(p) => {
                let result = p.commit(content);
                if let Some((t, _)) = &self.stats {
                    match &result {
                        Ok(c) => {
                            t.report_completed(f.id, &c.dir.display().to_string());
                        }
                        Err(e) => {
                            t.report_failed(f.id, super::now_ms(), &e.to_string());
                        }
                    }
                }
                self.persist_stats();
                let reply = result.as_ref().map(|c| c.dir.clone()).map_err(Clone::clone);
                if let Some(r) = savepoint {
                    let _ = r.reply.send(reply);
                }
                let c = result?;
                for l in &self.options.listeners {
                    l.savepoint_completed(f.id, &c.dir);
                }
                return Ok(());
            }
        };
        self.completed += 1;
        let info = CheckpointDone {
            id: f.id,
            kind: f.kind,
            trigger_timestamp_ms: f.trigger_ms,
            end_to_end: f.started.elapsed(),
            checkpointed_size: done
                .stats
                .bytes_placed
                .saturating_add(done.metadata.inline_bytes()),
            state_size: done
                .metadata
                .file_handles()
                .map(|h| h.size)
                .sum::<u64>()
                .saturating_add(done.metadata.inline_bytes()),
            external_path: done.external_path.clone(),
            subtasks,
        };
        for l in &self.options.listeners {
            l.checkpoint_completed(&info);
        }
        self.previous_files = done
            .metadata
            .file_handles()
            .map(|f| f.path.clone())
            .collect();
        if let Some((t, _)) = &self.stats {
            t.report_completed(f.id, &info.external_path.display().to_string());
            for d in &done.retention.discarded {
                t.report_discarded(*d);
            }
        }
        self.persist_stats();
        Ok(())
    }

    fn fail_checkpoint(
        &mut self,
        pendings: &PendingRegistry,
        controls: &HashMap<TaskId, Sender<Control>>,
        id: CheckpointId,
        msg: &str,
    ) {
        self.failed += 1;
        tracing::warn!("{msg}");
        for l in &self.options.listeners {
            l.checkpoint_failed(id, msg);
        }
        if let Some((t, _)) = &self.stats {
            t.report_failed(id, super::now_ms(), msg);
        }
        self.persist_stats();
        for tx in controls.values() {
            let _ = tx.send(Control::Aborted(id));
        }
        self.abort(pendings, id, msg);
    }

    /// Aborts pending checkpoint `id` once no snapshot thread writes into it any more.
    fn abort(&mut self, pendings: &PendingRegistry, id: CheckpointId, why: &str) {
        let Some(shared) = pendings.remove(id) else {
            return;
        };
        match unwrap_pending(shared) {
            Ok(p) => {
                let r = match p {
                    Pending::Checkpoint(p) => p.abort(),
                    Pending::Savepoint(p) => p.abort(),
                };
                if let Err(e) = r {
                    tracing::warn!("aborting checkpoint {id} ({why}): {e}");
                }
            }
            Err(e) => tracing::warn!("aborting checkpoint {id} ({why}): {e}"),
        }
    }
}

/// The pending checkpoint itself, once every snapshot thread has let go of it (they do
/// right after acknowledging or declining; a thread still writing is waited for).
fn unwrap_pending(mut shared: SharedPending) -> Result<Pending> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match Arc::try_unwrap(shared) {
            Ok(p) => return Ok(p),
            Err(back) => {
                if Instant::now() > deadline {
                    return Err(Error::Job(
                        "a snapshot thread held a pending checkpoint for 10 minutes".into(),
                    ));
                }
                shared = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

struct InFlight {
    id: CheckpointId,
    kind: CheckpointKind,
    started: Instant,
    trigger_ms: u64,
    expected: usize,
    acks: HashMap<TaskId, (OperatorSubtaskState, AckMetrics)>,
    offsets: Vec<SourceOffset>,
    /// Set for a savepoint: where, and who waits for it.
    savepoint: Option<SavepointRequest>,
}

fn state_bytes(s: &OperatorSubtaskState) -> u64 {
    let files: u64 = s.file_handles().map(|f| f.size).sum();
    let keyed: u64 = s.keyed_state.iter().map(|h| h.inline_bytes()).sum();
    let operator: u64 = s
        .operator_state
        .iter()
        .map(|h| match &h.data {
            crate::checkpoint::StateData::Inline(b) => b.len() as u64,
            crate::checkpoint::StateData::File(_) => 0,
        })
        .sum();
    files.saturating_add(keyed).saturating_add(operator)
}

/// Checks that a checkpoint fits the job: every operator state it holds belongs to an
/// operator of the job (unless allowed), with the job's max parallelism.
fn check_restorable(
    graph: &JobGraph,
    m: &Metadata,
    options: &JobOptions,
    allow_non_restored: bool,
) -> Result<()> {
    let ids: std::collections::HashSet<&str> = graph.operator_ids().into_iter().collect();
    for s in &m.operator_states {
        if !ids.contains(s.operator_id.as_str()) {
            let has_state =
                !s.keyed_state.is_empty() || s.operator_state.iter().any(|h| !h.states.is_empty());
            if has_state && !allow_non_restored {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint {} holds state of operator {:?}, which the job does not have; \
                     pass --allow-non-restored-state to drop it",
                    m.checkpoint_id, s.operator_id
                )));
            }
            continue;
        }
        if s.max_parallelism != options.max_parallelism.get() {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {} was taken with max parallelism {} for operator {:?}, the job \
                 has {} (pipeline.max-parallelism must not change between a checkpoint and \
                 its restore)",
                m.checkpoint_id,
                s.max_parallelism,
                s.operator_id,
                options.max_parallelism.get()
            )));
        }
    }
    Ok(())
}

thread_local! {
    static IN_SUBTASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True on a subtask's thread, where a panic is caught and handled as a failure of the
/// job (the restart strategy decides): a process-wide panic hook can stay quiet there.
pub fn panic_is_handled_here() -> bool {
    IN_SUBTASK.with(|f| f.get())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// 16 hex digits from the clock, the process id and a counter.
pub(crate) fn random_token() -> String {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = t ^ (u64::from(std::process::id()) << 32) ^ c.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!("{z:016x}")
}

/// Flink's default when no strategy is configured
/// ([`RestartStrategyConfig::default_for`]): none without checkpointing, fixed-delay with
/// unlimited attempts with it.
fn default_restart(checkpointing: bool) -> Box<dyn RestartBackoff> {
    struct GiveUp;
    impl RestartBackoff for GiveUp {
        fn on_failure(&mut self, _now: Duration) -> std::result::Result<Duration, String> {
            Err("restart-strategy none".into())
        }
        fn describe(&self) -> String {
            "none".into()
        }
    }
    match RestartStrategy::new(RestartStrategyConfig::default_for(checkpointing)) {
        Ok(s) => Box::new(s),
        Err(_) => Box::new(GiveUp),
    }
}
