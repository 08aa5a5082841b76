//! `tidemark run wordcount`: the built-in keyed word count over files, into an
//! exactly-once file sink, with checkpoints, restarts and resumes configured as a Flink
//! user knows them (`-D key=value`, `--config flink-conf.yaml`, `-s <checkpoint>`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use super::args::RunArgs;
use super::CliError;
use crate::checkpoint::{resolve, CheckpointId, JobId};
use crate::error::{Error, Result};
use crate::fs::StdFs;
use crate::stream::config::{JobConfig, JobConfigBuilder};
use crate::stream::status::{complete_finished_discard, job_status_path, read_job_status};
use crate::stream::{
    self, wordcount, CheckpointDone, FileSink, FileSource, JobControl, JobGraph, JobListener,
    JobOptions, JobResult, StreamEnv,
};

/// Runs `tidemark run`.
pub fn run(a: &RunArgs, out: &mut dyn Write) -> std::result::Result<(), CliError> {
    let at = |e: Error| CliError::at(&a.checkpoint_dir, e);
    let (config, job_id) = configure(a).map_err(at)?;
    writeln!(out, "Job has been submitted with JobID {job_id}")?;
    out.flush()?;
    let control = JobControl::new();
    let savepoint = a.savepoint_on_stop.then(|| {
        let dir = config
            .checkpointing
            .savepoints_dir
            .clone()
            .unwrap_or_else(|| a.checkpoint_dir.join("savepoints"));
        (dir, crate::checkpoint::SavepointFormat::Canonical)
    });
    super::signals::stop_on_signal(&control, savepoint);
    let (tx, rx) = mpsc::channel::<String>();
    let mut options = JobOptions::from_config(&config, job_id.clone()).map_err(at)?;
    options.listeners.push(Arc::new(Lines(Mutex::new(tx))));
    let env = StreamEnv::new();
    let source = match a.rate {
        Some(r) => FileSource::new(&a.input).with_rate(r),
        None => FileSource::new(&a.input),
    };
    wordcount::build(&env, source, FileSink::new(&a.output), None);
    let graph = env.build().map_err(at)?;
    let result = execute_printing(graph, options, &control, rx, out, &at)?;
    writeln!(
        out,
        "Job {} {:?} after {} attempt{}: {} checkpoints completed, {} failed",
        result.job_id,
        result.termination,
        result.attempts,
        if result.attempts == 1 { "" } else { "s" },
        result.checkpoints_completed,
        result.checkpoints_failed
    )?;
    match &result.latest_checkpoint {
        Some(chk) => writeln!(
            out,
            "Resume with: tidemark run wordcount --input {} --output {} --checkpoint-dir {} -s {}",
            a.input.display(),
            a.output.display(),
            a.checkpoint_dir.display(),
            chk.join(crate::checkpoint::METADATA_FILE_NAME).display()
        )?,
        None => writeln!(out, "Output committed in {}", a.output.display())?,
    }
    Ok(())
}

/// Runs the job on its own thread and prints the lines its listeners send (through `rx`)
/// as they come, until it ends.
pub(crate) fn execute_printing(
    graph: JobGraph,
    options: JobOptions,
    control: &JobControl,
    rx: mpsc::Receiver<String>,
    out: &mut dyn Write,
    at: &dyn Fn(Error) -> CliError,
) -> std::result::Result<JobResult, CliError> {
    let job = std::thread::Builder::new()
        .name("job".into())
        .spawn({
            let control = control.clone();
            move || stream::execute_with_control(&graph, &options, &control)
        })
        .map_err(|e| at(Error::Job(format!("cannot start the job: {e}"))))?;
    for line in rx {
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    job.join()
        .map_err(|_| at(Error::Job("the job's thread panicked".into())))?
        .map_err(at)
}

/// The configuration in force: the file, then the command line's options and `-D`
/// settings; and the job id (a new one, or the resumed checkpoint's).
fn configure(a: &RunArgs) -> Result<(JobConfig, JobId)> {
    let mut b = JobConfigBuilder::new();
    if let Some(f) = &a.config {
        b.load_file(f)?;
    }
    // The command's defaults, for what neither the file nor -D sets.
    let given = |b: &JobConfigBuilder, keys: &[&str]| {
        b.settings().iter().any(|s| keys.contains(&s.key.trim()))
            || a.dynamic.iter().any(|d| {
                let d = d.strip_prefix("-D").unwrap_or(d).trim_start();
                keys.iter().any(|k| d.starts_with(&format!("{k}=")))
            })
    };
    let mut defaults = String::new();
    for (keys, default) in [
        (
            &["execution.checkpointing.interval"][..],
            "execution.checkpointing.interval: 1 s",
        ),
        (
            &["execution.checkpointing.externalized-checkpoint-retention"][..],
            "execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION",
        ),
        (
            &["state.backend", "state.backend.type"][..],
            "state.backend: lsm",
        ),
    ] {
        if !given(&b, keys) {
            defaults.push_str(default);
            defaults.push('\n');
        }
    }
    b.load_str(&defaults, Path::new("<tidemark run defaults>"))?;
    b.dynamic_property(&format!(
        "state.checkpoints.dir={}",
        a.checkpoint_dir.display()
    ))?;
    if let Some(be) = &a.backend {
        b.dynamic_property(&format!("state.backend={be}"))?;
    }
    if let Some(p) = a.parallelism {
        b.dynamic_property(&format!("parallelism.default={p}"))?;
    }
    if let Some(ms) = a.interval_ms {
        b.dynamic_property(&format!("execution.checkpointing.interval={ms}ms"))?;
    }
    for d in &a.dynamic {
        b.dynamic_property(d)?;
    }
    let mut job_id = None;
    if let Some(s) = &a.from {
        let path = if s == Path::new("latest") {
            latest_job_dir(&a.checkpoint_dir)?
        } else {
            s.clone()
        };
        let resolved = resolve(&StdFs, &path)?;
        if let Some(job_dir) = resolved.metadata_path.parent().and_then(Path::parent) {
            if let Ok(Some(st)) = read_job_status(job_dir) {
                if st.finished() {
                    eprintln!(
                        "tidemark: warning: job {} finished ({}): resuming it from checkpoint \
                         {} replays input whose output is already committed",
                        st.jid,
                        job_status_path(job_dir).display(),
                        resolved.metadata.checkpoint_id.0
                    );
                }
            }
        }
        job_id = Some(resolved.metadata.job_id.clone());
        b.dynamic_property(&format!(
            "execution.state-recovery.path={}",
            resolved.metadata_path.display()
        ))?;
    }
    if let Some(m) = &a.restore_mode {
        b.dynamic_property(&format!("execution.state-recovery.claim-mode={m}"))?;
    }
    if a.allow_non_restored_state {
        b.dynamic_property("execution.state-recovery.ignore-unclaimed-state=true")?;
    }
    let (config, warnings) = b.build()?;
    for w in warnings {
        eprintln!("tidemark: warning: {w}");
    }
    Ok((config, job_id.unwrap_or_else(JobId::random)))
}

/// The job directory under `dir` whose latest checkpoint is the newest. A job that
/// finished (its `job-status.json` says so) is never resumed: when it ended after every
/// other job's latest checkpoint, `-s latest` is an error saying that it finished, not a
/// resume from a checkpoint its discard left behind nor a new run over committed output.
pub fn latest_job_dir(dir: &Path) -> Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut finished: Option<(u64, PathBuf, String)> = None;
    for e in crate::fs::list_entries(dir)? {
        if e.kind != crate::fs::EntryKind::Dir || !e.utf8 {
            continue;
        }
        let job = dir.join(&e.name);
        if let Some(st) = read_job_status(&job)? {
            if st.finished() {
                if finished.as_ref().is_none_or(|(t, _, _)| st.end_time > *t) {
                    finished = Some((st.end_time, job, st.jid));
                }
                continue;
            }
        }
        if let Ok(r) = resolve(&StdFs, &job) {
            let t = r.metadata.completion_timestamp_ms;
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, job));
            }
        }
    }
    if let Some((end, job, jid)) = finished {
        if best.as_ref().is_none_or(|(t, _)| end >= *t) {
            // A kill during the job's discard of its checkpoints left some behind.
            let left = complete_finished_discard(&job)?;
            if left > 0 {
                eprintln!(
                    "tidemark: discarded {left} checkpoint(s) of finished job {jid} that its \
                     end left behind"
                );
            }
            return Err(Error::CheckpointNotFound {
                path: job_status_path(&job),
                reason: format!(
                    "job {jid} finished (all its input processed, its output committed): \
                     there is nothing to resume with -s latest; run without -s to start a \
                     new job"
                ),
            });
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| Error::CheckpointNotFound {
            path: dir.to_path_buf(),
            reason: "no job directory here holds a completed checkpoint to resume (-s latest)"
                .into(),
        })
}

use parking_lot::Mutex;

/// Live lines, one per checkpoint and restart, sent to the command's output.
struct Lines(Mutex<mpsc::Sender<String>>);

impl JobListener for Lines {
    fn restored(&self, id: CheckpointId, path: &Path) {
        let _ = self
            .0
            .lock()
            .send(format!("restored checkpoint {id} from {}", path.display()));
    }
    fn checkpoint_completed(&self, c: &CheckpointDone) {
        let _ = self.0.lock().send(format!(
            "checkpoint {} completed in {} ms: {} ({} new), {} subtasks, {}",
            c.id,
            c.end_to_end.as_millis(),
            super::output::human_bytes(c.state_size),
            super::output::human_bytes(c.checkpointed_size),
            c.subtasks,
            c.external_path.display()
        ));
    }
    fn checkpoint_failed(&self, id: CheckpointId, message: &str) {
        let _ = self
            .0
            .lock()
            .send(format!("checkpoint {id} failed: {message}"));
    }
    fn restarting(&self, attempt: u32, cause: &Error, delay: std::time::Duration) {
        let _ = self.0.lock().send(format!(
            "job failed ({cause}); restart {attempt} in {} ms",
            delay.as_millis()
        ));
    }
}
