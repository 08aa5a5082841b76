//! `job-status.json`: how a job's last run ended, kept beside its checkpoints.
//!
//! A job that processed all its input commits its last output with a final checkpoint and
//! then discards its checkpoints (as Flink does when a job finishes). Resuming such a job
//! would replay input whose output is already committed: from an older checkpoint a kill
//! left behind during the discard, or, with every checkpoint gone, as a new job from the
//! start. So the job records that it finished, durably, *before* it discards anything;
//! `tidemark run -s latest` reads the record and refuses to resume a finished job.
//!
//! The file is framed like the other JSON files of a job directory (format name
//! `job-status`, format-spec/job-json.md) and written with temp file, fsync, rename and
//! directory fsync.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{decode_job_file, encode_job_file};
use crate::checkpoint::{
    CheckpointConfig, CheckpointStorage, CheckpointStore, JobId, JobTermination, LocalStorage,
};
use crate::error::{Error, Result};
use crate::fs::{self, FileSystem, StdFs};

/// The file name of a job's status in its job directory.
pub const JOB_STATUS_FILE_NAME: &str = "job-status.json";
/// The format name in `job-status.json`'s header.
const JOB_STATUS_FORMAT: &str = "job-status";
/// The largest `job-status.json` read.
const MAX_STATUS_FILE_BYTES: u64 = 64 << 10;

/// How a job's last run ended, in the field names of Flink's job details response
/// (`GET /jobs/:id`: `jid`, `state`, `end-time`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatusDocument {
    /// The job id.
    pub jid: String,
    /// Flink's terminal job state: `FINISHED`, `CANCELED`, `FAILED` or `SUSPENDED`.
    pub state: String,
    /// When the run ended, in milliseconds since the Unix epoch.
    #[serde(rename = "end-time")]
    pub end_time: u64,
    /// The id of the run's latest completed checkpoint (for a finished job: the one that
    /// committed its last output), if it completed any.
    pub last_checkpoint: Option<u64>,
    /// Whether the job's checkpoints are discarded as it ends (they are once a job
    /// finishes, unless a kill cut the discard short).
    pub checkpoints_discarded: bool,
    /// Checkpoints in the job directory that the job does not own and never discards: the
    /// one it was restored from in no-claim mode, and the earlier run's ones beside it.
    #[serde(default)]
    pub checkpoints_kept: Vec<u64>,
}

impl JobStatusDocument {
    /// Whether the job processed all its input: nothing is left to resume.
    pub fn finished(&self) -> bool {
        self.state == JobTermination::Finished.flink_state()
    }
}

impl JobTermination {
    /// Flink's name of this terminal job state.
    pub fn flink_state(self) -> &'static str {
        match self {
            JobTermination::Finished => "FINISHED",
            JobTermination::Cancelled => "CANCELED",
            JobTermination::Failed => "FAILED",
            JobTermination::Suspended => "SUSPENDED",
        }
    }
}

/// The path of `job-status.json` in `job_dir`.
pub fn job_status_path(job_dir: &Path) -> PathBuf {
    job_dir.join(JOB_STATUS_FILE_NAME)
}

/// Writes `<job_dir>/job-status.json` durably (temp file, fsync, rename, directory fsync).
pub fn write_job_status(
    fs: &dyn FileSystem,
    job_dir: &Path,
    status: &JobStatusDocument,
) -> Result<()> {
    let bytes = encode_job_file(JOB_STATUS_FORMAT, status)?;
    fs::write_atomic(fs, &job_status_path(job_dir), &bytes)
}

/// Reads the status of the job in `job_dir`: `None` when it has no `job-status.json` (it
/// never ended, or ended before this file existed). A damaged or hostile file is an error
/// naming it.
pub fn read_job_status(job_dir: &Path) -> Result<Option<JobStatusDocument>> {
    match read_job_status_file(&job_status_path(job_dir)) {
        Err(Error::NotFound { .. }) => Ok(None),
        r => r.map(Some),
    }
}

/// Reads a `job-status.json` file. A damaged or hostile file is an error naming it.
pub fn read_job_status_file(path: &Path) -> Result<JobStatusDocument> {
    decode_job_file(path, JOB_STATUS_FORMAT, MAX_STATUS_FILE_BYTES)
}

/// Completes the discard of a finished job's checkpoints that a kill cut short: when the
/// job in `job_dir` recorded that it finished and discards its checkpoints, opens its
/// checkpoints (which deletes unfinished ones and shared files none references) and
/// discards those left, as the job would have. Returns how many it discarded; 0 for a job
/// that did not finish or keeps its checkpoints, and for a directory that also holds
/// checkpoints the job does not own (`checkpoints_kept`). The job must not be running (its
/// directory's owner lock is taken).
pub fn complete_finished_discard(job_dir: &Path) -> Result<usize> {
    let Some(status) = read_job_status(job_dir)? else {
        return Ok(0);
    };
    if !status.finished() || !status.checkpoints_discarded || !status.checkpoints_kept.is_empty() {
        // A directory that also holds checkpoints the job does not own is left as it is:
        // which files only the discarded checkpoints referenced is for a person to decide.
        return Ok(0);
    }
    let (Some(parent), Some(name)) = (job_dir.parent(), job_dir.file_name()) else {
        return Ok(0);
    };
    let job_id = JobId::new(name.to_string_lossy())?;
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalStorage::new(StdFs::shared(), parent, job_id));
    let store = CheckpointStore::open(storage, CheckpointConfig::default())?;
    let left = store.list().len();
    store.shutdown(JobTermination::Finished)?;
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_job_status(dir.path()).unwrap(), None);
        let s = JobStatusDocument {
            jid: "0123456789abcdef0123456789abcdef".into(),
            state: JobTermination::Finished.flink_state().into(),
            end_time: 1_700_000_000_000,
            last_checkpoint: Some(7),
            checkpoints_discarded: true,
            checkpoints_kept: vec![],
        };
        write_job_status(&crate::fs::StdFs, dir.path(), &s).unwrap();
        let back = read_job_status(dir.path()).unwrap().unwrap();
        assert_eq!(back, s);
        assert!(back.finished());
        let path = job_status_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_job_status(dir.path()).unwrap_err().to_string();
        assert!(e.contains(JOB_STATUS_FILE_NAME), "{e}");
    }
}
