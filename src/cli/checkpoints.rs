//! `tidemark checkpoints DIR`, and `inspect` / `verify` of checkpoint paths.
//!
//! Everything here reads a job directory as it is. It never opens a
//! [`crate::checkpoint::CheckpointStore`], whose open cleans up (deletes unfinished
//! checkpoints and orphans, applies retention): a tool that looks must not change what it
//! looks at.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::args::CheckpointsArgs;
use super::detect::{self, Kind};
use super::inspect::{levels_json, write_levels, LevelJson, MinAvgMax};
use super::output::{emit, escape_bytes, format_unix_ms, human_bytes, Format, Render};
use super::progress;
use super::store;
use super::verify::{verify_sst_opened, Expected, VerifyReport};
use super::CliError;
use crate::checkpoint::metadata::{BODY_OFFSET, METADATA_FILE_NAME};
use crate::checkpoint::path::{checkpoint_dirs, metadata_rel, CheckpointDirs};
use crate::checkpoint::{recorded_placement, SHARED_DIR, TASKOWNED_DIR};
use crate::checkpoint::{
    resolve, CheckpointId, CheckpointStorage, FileHandle, FileRole, KeyedState, KeyedStateHandle,
    LocalStorage, LsmFileSet, Metadata, OperatorStateHandle, ResolvedCheckpoint, StateData,
};
use crate::error::{Error, IoContext};
use crate::fs::{DirEntryInfo, FileSystem, StdFs};
use crate::lsm::live_set::MAX_LIVE_SET_BYTES;
use crate::lsm::LiveSet;
use crate::state::lsm_snapshot::lsm_layout;
use crate::state::view::{keyed_contents, store_described_by, KeyedContents};

/// One `chk-<N>` directory of a job directory.
#[derive(Debug)]
pub enum ChkState {
    /// `_metadata` decodes.
    Completed(Box<Metadata>),
    /// No `_metadata`: unfinished (or crashed before completing).
    Incomplete,
    /// `_metadata` exists but does not decode.
    Damaged(Error),
}

/// A job directory as found.
#[derive(Debug)]
pub struct JobScan {
    /// The job directory.
    pub job_dir: PathBuf,
    /// Every `chk-<N>`, oldest first.
    pub checkpoints: Vec<(CheckpointId, ChkState)>,
    /// Files in `shared/`: name and size.
    pub shared_files: Vec<(String, u64)>,
    /// Files in `taskowned/`.
    pub taskowned_files: usize,
    /// Entries that are neither checkpoint directories nor regular files where checkpoint
    /// files live (a `chk-<N>` that is not a directory; a link, directory, FIFO or name
    /// that is not UTF-8 in `shared/`), one line each naming the path and what it is.
    pub odd_entries: Vec<String>,
}

fn entries_or_empty(dir: &Path) -> Result<Vec<DirEntryInfo>, Error> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => StdFs.list_entries(dir),
    }
}

/// Reads a job directory: every `chk-<N>` and its `_metadata`, and `shared/`.
pub fn scan_job(job_dir: &Path) -> Result<JobScan, Error> {
    let CheckpointDirs { ids, odd } = checkpoint_dirs(StdFs.list_entries(job_dir)?);
    let mut odd_entries: Vec<String> = odd
        .into_iter()
        .map(|(_, e)| {
            format!(
                "{}: {}, not a checkpoint directory",
                job_dir.join(&e.name).display(),
                e.describe()
            )
        })
        .collect();
    let mut checkpoints = Vec::with_capacity(ids.len());
    for id in ids {
        let mpath = job_dir.join(metadata_rel(id));
        let state = if !mpath.exists() {
            ChkState::Incomplete
        } else {
            match Metadata::read_inside(&StdFs, job_dir, &mpath) {
                Ok(m) if m.checkpoint_id != id => ChkState::Damaged(Error::corruption(
                    &mpath,
                    crate::checkpoint::metadata::BODY_OFFSET as u64,
                    format!(
                        "describes checkpoint {} but lies in {}",
                        m.checkpoint_id,
                        id.dir_name()
                    ),
                )),
                Ok(m) => ChkState::Completed(Box::new(m)),
                Err(e) => ChkState::Damaged(e),
            }
        };
        checkpoints.push((id, state));
    }
    let shared = job_dir.join(SHARED_DIR);
    let mut shared_files = Vec::new();
    for dir in [SHARED_DIR, TASKOWNED_DIR] {
        if let Ok(m) = std::fs::symlink_metadata(job_dir.join(dir)) {
            if !m.is_dir() {
                odd_entries.push(format!(
                    "{}: {}, not a directory",
                    job_dir.join(dir).display(),
                    crate::fs::file_type_name(&m.file_type())
                ));
            }
        }
    }
    for e in entries_or_empty(&shared)? {
        let p = shared.join(&e.name);
        if !e.is_plain_file() {
            odd_entries.push(format!("{}: {}", p.display(), e.describe()));
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) => shared_files.push((e.name, m.len())),
            Err(err) => odd_entries.push(format!("{}: {err}", p.display())),
        }
    }
    Ok(JobScan {
        job_dir: job_dir.to_path_buf(),
        checkpoints,
        shared_files,
        taskowned_files: entries_or_empty(&job_dir.join(TASKOWNED_DIR))?.len(),
        odd_entries,
    })
}

/// One row of the checkpoint list.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRow {
    /// Checkpoint id.
    pub id: u64,
    /// `completed`, `incomplete` (no `_metadata`) or `damaged` (`_metadata` unreadable).
    pub status: &'static str,
    /// `incremental`, `full` or `savepoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// When it was triggered (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_timestamp_ms: Option<u64>,
    /// When `_metadata` was written (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_timestamp_ms: Option<u64>,
    /// Completion minus trigger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Bytes this checkpoint placed: its private files, shared files no older retained
    /// checkpoint references, and inline state (Flink's checkpointed size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_placed: Option<u64>,
    /// Bytes of every file it references, plus inline state (Flink's full size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_full: Option<u64>,
    /// Files it placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_placed: Option<u64>,
    /// Distinct files it references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_referenced: Option<u64>,
    /// Its directory.
    pub external_path: String,
    /// Why it is damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts of checkpoints by status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// `chk-<N>` directories.
    pub total: usize,
    /// With a readable `_metadata`.
    pub completed: usize,
    /// Without `_metadata`.
    pub incomplete: usize,
    /// With an unreadable `_metadata`.
    pub damaged: usize,
}

/// A file of `shared/`.
#[derive(Debug, Clone, Serialize)]
pub struct SharedFileJson {
    /// Path relative to the job directory.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// What `checkpoints` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointsReport {
    /// The job directory.
    pub job_dir: String,
    /// The job id recorded in the newest readable `_metadata`.
    pub job_id: Option<String>,
    /// Newest first.
    pub checkpoints: Vec<CheckpointRow>,
    /// Full size over completed checkpoints.
    pub full_size_bytes: MinAvgMax,
    /// Placed size over completed checkpoints.
    pub placed_size_bytes: MinAvgMax,
    /// Counts by status.
    pub counts: Counts,
    /// Files in `shared/`.
    pub shared_files: usize,
    /// Their bytes.
    pub shared_bytes: u64,
    /// Files in `taskowned/`.
    pub taskowned_files: usize,
    /// Files in `shared/` that no completed checkpoint references; `None` when a damaged
    /// `_metadata` makes that unknowable.
    pub orphans: Option<Vec<SharedFileJson>>,
    /// Entries that are not what a job directory holds (see [`JobScan::odd_entries`]).
    pub odd_entries: Vec<String>,
}

/// Builds the list; the error is the first damaged `_metadata`, if any.
pub fn checkpoints_report(scan: &JobScan) -> (CheckpointsReport, Option<Error>) {
    let mut rows = Vec::new();
    let mut counts = Counts::default();
    let mut older_shared: BTreeSet<&str> = BTreeSet::new();
    let mut referenced: BTreeSet<&str> = BTreeSet::new();
    let mut first_damage = None;
    let mut job_id = None;
    for (id, state) in &scan.checkpoints {
        counts.total += 1;
        let external_path = scan.job_dir.join(id.dir_name()).display().to_string();
        let mut row = CheckpointRow {
            id: id.0,
            status: "incomplete",
            kind: None,
            trigger_timestamp_ms: None,
            completion_timestamp_ms: None,
            duration_ms: None,
            bytes_placed: None,
            bytes_full: None,
            files_placed: None,
            files_referenced: None,
            external_path,
            error: None,
        };
        match state {
            ChkState::Incomplete => counts.incomplete += 1,
            ChkState::Damaged(e) => {
                counts.damaged += 1;
                row.status = "damaged";
                row.error = Some(e.to_string());
                if first_damage.is_none() {
                    first_damage = Some(e.clone());
                }
            }
            ChkState::Completed(m) => {
                counts.completed += 1;
                job_id = Some(m.job_id.as_str().to_string());
                let mut seen = BTreeSet::new();
                let inline = m.inline_bytes();
                let (mut full, mut placed) = (inline, inline);
                let (mut files, mut files_placed) = (0u64, 0u64);
                for f in m.file_handles() {
                    if !seen.insert(f.path.as_str()) {
                        continue;
                    }
                    files += 1;
                    full = full.saturating_add(f.size);
                    let reused =
                        f.role == FileRole::Shared && older_shared.contains(f.path.as_str());
                    if !reused {
                        files_placed += 1;
                        placed = placed.saturating_add(f.size);
                    }
                }
                for p in m.shared_paths() {
                    older_shared.insert(p);
                    referenced.insert(p);
                }
                // What the run placed, when `_metadata` records it: the oldest retained
                // checkpoint reused files of checkpoints no longer here.
                if let Some((f, b)) = recorded_placement(m) {
                    if f <= files && b <= full {
                        files_placed = f;
                        placed = b.saturating_add(inline);
                    }
                }
                row.status = "completed";
                row.kind = Some(m.kind.as_str());
                row.trigger_timestamp_ms = Some(m.trigger_timestamp_ms);
                row.completion_timestamp_ms = Some(m.completion_timestamp_ms);
                row.duration_ms = Some(
                    m.completion_timestamp_ms
                        .saturating_sub(m.trigger_timestamp_ms),
                );
                row.bytes_placed = Some(placed);
                row.bytes_full = Some(full);
                row.files_placed = Some(files_placed);
                row.files_referenced = Some(files);
            }
        }
        rows.push(row);
    }
    rows.reverse();
    let completed = || rows.iter().filter(|r| r.status == "completed");
    let orphans = (counts.damaged == 0).then(|| {
        scan.shared_files
            .iter()
            .map(|(n, s)| (format!("{SHARED_DIR}/{n}"), *s))
            .filter(|(p, _)| !referenced.contains(p.as_str()))
            .map(|(path, size_bytes)| SharedFileJson { path, size_bytes })
            .collect()
    });
    let report = CheckpointsReport {
        job_dir: scan.job_dir.display().to_string(),
        job_id,
        full_size_bytes: MinAvgMax::of(completed().filter_map(|r| r.bytes_full)),
        placed_size_bytes: MinAvgMax::of(completed().filter_map(|r| r.bytes_placed)),
        checkpoints: rows,
        counts,
        shared_files: scan.shared_files.len(),
        shared_bytes: scan.shared_files.iter().map(|(_, s)| *s).sum(),
        taskowned_files: scan.taskowned_files,
        orphans,
        odd_entries: scan.odd_entries.clone(),
    };
    (report, first_damage)
}

impl Render for CheckpointsReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "job {} ({})",
            self.job_id.as_deref().unwrap_or("?"),
            self.job_dir
        )?;
        writeln!(
            out,
            "    ID  STATUS      COMPLETED                    DURATION      PLACED   FULL SIZE   FILES PLACED  KIND"
        )?;
        for r in &self.checkpoints {
            match r.status {
                "completed" => writeln!(
                    out,
                    "{:>6}  {:<10}  {:<27}  {:>8}  {:>10}  {:>10}  {:>13}  {}",
                    r.id,
                    r.status,
                    r.completion_timestamp_ms
                        .map(format_unix_ms)
                        .unwrap_or_default(),
                    format!("{} ms", r.duration_ms.unwrap_or(0)),
                    human_bytes(r.bytes_placed.unwrap_or(0)),
                    human_bytes(r.bytes_full.unwrap_or(0)),
                    format!(
                        "{} of {}",
                        r.files_placed.unwrap_or(0),
                        r.files_referenced.unwrap_or(0)
                    ),
                    r.kind.unwrap_or("?")
                )?,
                "damaged" => writeln!(
                    out,
                    "{:>6}  {:<10}  {}",
                    r.id,
                    r.status,
                    r.error.as_deref().unwrap_or("")
                )?,
                _ => writeln!(
                    out,
                    "{:>6}  {:<10}  (no {METADATA_FILE_NAME}: never completed)",
                    r.id, r.status
                )?,
            }
        }
        let line = |out: &mut dyn Write, what: &str, m: &MinAvgMax| {
            writeln!(
                out,
                "  {what:<10}  min {:>10}  avg {:>10}  max {:>10}",
                human_bytes(m.min),
                human_bytes(m.avg),
                human_bytes(m.max)
            )
        };
        writeln!(out, "summary over {} completed:", self.counts.completed)?;
        line(out, "full size", &self.full_size_bytes)?;
        line(out, "placed", &self.placed_size_bytes)?;
        writeln!(
            out,
            "counts: {} completed, {} incomplete, {} damaged",
            self.counts.completed, self.counts.incomplete, self.counts.damaged
        )?;
        writeln!(
            out,
            "{SHARED_DIR}/: {} files, {}; {TASKOWNED_DIR}/: {} files",
            self.shared_files,
            human_bytes(self.shared_bytes),
            self.taskowned_files
        )?;
        if !self.odd_entries.is_empty() {
            writeln!(
                out,
                "odd entries: {} (not written by tidemark; left alone):",
                self.odd_entries.len()
            )?;
            for e in &self.odd_entries {
                writeln!(out, "  {e}")?;
            }
        }
        match &self.orphans {
            None => writeln!(
                out,
                "orphans: unknown (a damaged {METADATA_FILE_NAME} may reference files in {SHARED_DIR}/)"
            ),
            Some(o) if o.is_empty() => writeln!(out, "orphans: none"),
            Some(o) => {
                writeln!(
                    out,
                    "orphans: {} file(s) in {SHARED_DIR}/ that no retained checkpoint references:",
                    o.len()
                )?;
                for f in o {
                    writeln!(out, "  {} ({})", f.path, human_bytes(f.size_bytes))?;
                }
                Ok(())
            }
        }
    }
}

/// Runs `checkpoints`.
pub fn run(args: &CheckpointsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dir = args.dir.as_path();
    match detect::detect(dir)? {
        Kind::JobDir => {}
        Kind::CheckpointDir => {
            return Err(CliError::Message(format!(
                "{}: a single checkpoint directory; give its job directory ({})",
                dir.display(),
                crate::fs::parent_dir(dir).display()
            )))
        }
        k => {
            return Err(CliError::Message(format!(
                "{}: a {}, not a checkpoint job directory",
                dir.display(),
                k.describe()
            )))
        }
    }
    list(dir, out, Format::from_json_flag(args.json))
}

fn list(dir: &Path, out: &mut dyn Write, format: Format) -> Result<(), CliError> {
    let scan = scan_job(dir).map_err(|e| CliError::at(dir, e))?;
    let (report, damage) = checkpoints_report(&scan);
    emit(out, format, &super::job_stats::with_job_files(dir, &report))?;
    match damage {
        Some(e) => Err(CliError::at(dir, e)),
        None => Ok(()),
    }
}

/// A file handle, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct HandleJson {
    /// `shared`, `private` or `inline`.
    pub role: &'static str,
    /// Path relative to the job directory (empty for inline state).
    pub path: String,
    /// Name in the backend's working directory (empty for inline state).
    pub local_name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// crc32c, 8 hex digits (absent for inline state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
}

/// One keyed-state handle, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct KeyedJson {
    /// `incremental-lsm`, `key-groups-file` or `key-groups-inline`.
    pub kind: &'static str,
    /// The backend that wrote it.
    pub backend: String,
    /// First key group.
    pub key_group_start: u32,
    /// Last key group (inclusive).
    pub key_group_end: u32,
    /// Its files (for an LSM set: the tables, then the manifest snapshot) or inline bytes.
    pub handles: Vec<HandleJson>,
    /// For an LSM set: the sequence number `_metadata` records (0: a version 1 file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// For key groups in a file or inline: where each key group starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_group_offsets: Option<Vec<u64>>,
    /// For an LSM set: the levels of the store's manifest snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsm_levels: Option<Vec<LevelJson>>,
    /// For an LSM set: the sequence number the manifest snapshot is consistent at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsm_last_sequence: Option<u64>,
    /// Why the manifest snapshot could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsm_error: Option<String>,
}

/// One named operator state, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct NamedStateJson {
    /// Its name.
    pub name: String,
    /// `SPLIT_DISTRIBUTE`, `UNION` or `BROADCAST`.
    pub mode: &'static str,
    /// Where each partition starts in the handle's data.
    pub offsets: Vec<u64>,
}

/// One operator-state handle, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorJson {
    /// The backend that wrote it.
    pub backend: String,
    /// Its file or inline bytes.
    pub data: HandleJson,
    /// The named states in it.
    pub states: Vec<NamedStateJson>,
}

/// One operator subtask's state, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct SubtaskJson {
    /// Operator id.
    pub operator_id: String,
    /// Subtask index.
    pub subtask_index: u32,
    /// Subtasks of the operator.
    pub parallelism: u32,
    /// The operator's max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// First key group.
    pub key_group_start: u32,
    /// Last key group (inclusive).
    pub key_group_end: u32,
    /// Keyed state.
    pub keyed_state: Vec<KeyedJson>,
    /// Operator state.
    pub operator_state: Vec<OperatorJson>,
}

/// What `inspect` prints for a checkpoint (`_metadata` or `chk-<N>`).
#[derive(Debug, Clone, Serialize)]
pub struct MetadataReport {
    /// Always `checkpoint`.
    pub format: &'static str,
    /// The `_metadata` file.
    pub path: String,
    /// The `_metadata` format version the file was written in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_version: Option<u32>,
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// Job id.
    pub job_id: String,
    /// Kind.
    pub kind: &'static str,
    /// Trigger time (ms since the epoch).
    pub trigger_timestamp_ms: u64,
    /// Completion time (ms since the epoch).
    pub completion_timestamp_ms: u64,
    /// The state backends its handles name.
    pub backends: Vec<String>,
    /// Distinct files referenced.
    pub files: usize,
    /// Their bytes plus inline state.
    pub bytes_full: u64,
    /// Per subtask state.
    pub subtasks: Vec<SubtaskJson>,
    /// Source offsets: source, split, offset.
    pub source_offsets: Vec<(String, String, u64)>,
    /// Properties.
    pub properties: Vec<(String, String)>,
}

fn file_json(f: &FileHandle) -> HandleJson {
    HandleJson {
        role: f.role.as_str(),
        path: f.path.clone(),
        local_name: f.local_name.clone(),
        size_bytes: f.size,
        crc32c: Some(format!("{:08x}", f.crc32c)),
    }
}

fn inline_json(bytes: &[u8]) -> HandleJson {
    HandleJson {
        role: "inline",
        path: String::new(),
        local_name: String::new(),
        size_bytes: bytes.len() as u64,
        crc32c: None,
    }
}

fn keyed_json(h: &KeyedStateHandle) -> KeyedJson {
    let (handles, sequence) = match &h.state {
        KeyedState::IncrementalLsm(set) => (
            h.file_handles().into_iter().map(file_json).collect(),
            Some(set.sequence),
        ),
        KeyedState::KeyGroupsFile { file, .. } | KeyedState::CanonicalFile { file, .. } => {
            (vec![file_json(file)], None)
        }
        KeyedState::KeyGroupsInline { bytes, .. } => (vec![inline_json(bytes)], None),
    };
    KeyedJson {
        kind: h.kind_name(),
        backend: h.backend.clone(),
        key_group_start: h.key_groups.start(),
        key_group_end: h.key_groups.end(),
        handles,
        sequence,
        key_group_offsets: h.key_group_offsets().map(<[u64]>::to_vec),
        lsm_levels: None,
        lsm_last_sequence: None,
        lsm_error: None,
    }
}

fn operator_json(h: &OperatorStateHandle) -> OperatorJson {
    OperatorJson {
        backend: h.backend.clone(),
        data: match &h.data {
            StateData::File(f) => file_json(f),
            StateData::Inline(b) => inline_json(b),
        },
        states: h
            .states
            .iter()
            .map(|n| NamedStateJson {
                name: n.name.clone(),
                mode: n.mode.as_str(),
                offsets: n.offsets.clone(),
            })
            .collect(),
    }
}

/// The format version in the header of the `_metadata` at `path`, if it can be read.
fn format_version_of(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut f = crate::fs::open_regular(path).ok()?;
    let mut header = [0u8; BODY_OFFSET];
    f.read_exact(&mut header).ok()?;
    Metadata::version_of(&header)
}

/// The storage of a resolved checkpoint (read-only use).
fn storage_of(r: &ResolvedCheckpoint) -> LocalStorage {
    r.storage(StdFs::shared())
}

/// Describes a resolved checkpoint; the error is the first LSM manifest snapshot that
/// could not be read, if any.
pub fn metadata_report(r: &ResolvedCheckpoint) -> (MetadataReport, Option<Error>) {
    let m = &r.metadata;
    let storage = storage_of(r);
    let mut first_error = None;
    let subtasks = m
        .operator_states
        .iter()
        .map(|s| {
            let keyed_state = s
                .keyed_state
                .iter()
                .map(|h| {
                    let mut j = keyed_json(h);
                    match keyed_contents(&storage, h) {
                        Ok(KeyedContents::Store(set)) => {
                            let replayed = store::replay([set.as_version_edit()]);
                            j.lsm_levels = Some(levels_json(&replayed));
                            j.lsm_last_sequence = set.sequence();
                        }
                        Ok(KeyedContents::KeyGroups) => {}
                        Err(e) => {
                            j.lsm_error = Some(e.to_string());
                            first_error.get_or_insert(e);
                        }
                    }
                    j
                })
                .collect();
            SubtaskJson {
                operator_id: s.operator_id.clone(),
                subtask_index: s.subtask_index,
                parallelism: s.parallelism,
                max_parallelism: s.max_parallelism,
                key_group_start: s.key_groups.start(),
                key_group_end: s.key_groups.end(),
                keyed_state,
                operator_state: s.operator_state.iter().map(operator_json).collect(),
            }
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut bytes_full = m.inline_bytes();
    for f in m.file_handles() {
        if seen.insert(f.path.as_str()) {
            bytes_full = bytes_full.saturating_add(f.size);
        }
    }
    (
        MetadataReport {
            format: "checkpoint",
            path: r.metadata_path.display().to_string(),
            format_version: format_version_of(&r.metadata_path),
            checkpoint_id: m.checkpoint_id.0,
            job_id: m.job_id.as_str().to_string(),
            kind: m.kind.as_str(),
            trigger_timestamp_ms: m.trigger_timestamp_ms,
            completion_timestamp_ms: m.completion_timestamp_ms,
            backends: m.backends().into_iter().map(str::to_string).collect(),
            files: seen.len(),
            bytes_full,
            subtasks,
            source_offsets: m
                .source_offsets
                .iter()
                .map(|o| (o.source.clone(), o.split.clone(), o.offset))
                .collect(),
            properties: m.properties.clone(),
        },
        first_error,
    )
}

/// At most this many offsets of a list are printed as text (all of them in JSON).
const TEXT_OFFSETS: usize = 8;

/// `0, 12, 40` (and `… (N in all)` past [`TEXT_OFFSETS`]).
fn offsets_text(offsets: &[u64]) -> String {
    let mut s: Vec<String> = offsets
        .iter()
        .take(TEXT_OFFSETS)
        .map(u64::to_string)
        .collect();
    if offsets.len() > TEXT_OFFSETS {
        s.push(format!("… ({} in all)", offsets.len()));
    }
    if s.is_empty() {
        "none".to_string()
    } else {
        s.join(", ")
    }
}

fn write_handle(out: &mut dyn Write, h: &HandleJson, indent: &str) -> io::Result<()> {
    if h.role == "inline" {
        return writeln!(out, "{indent}inline   {}", human_bytes(h.size_bytes));
    }
    writeln!(
        out,
        "{indent}{:<8} {}  {}  {:>10}  crc32c {}",
        h.role,
        h.path,
        h.local_name,
        human_bytes(h.size_bytes),
        h.crc32c.as_deref().unwrap_or("-")
    )
}

impl Render for MetadataReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "checkpoint {} of job {} ({})",
            self.checkpoint_id, self.job_id, self.path
        )?;
        if let Some(v) = self.format_version {
            writeln!(out, "  format          _metadata version {v}")?;
        }
        writeln!(out, "  kind            {}", self.kind)?;
        writeln!(
            out,
            "  triggered       {}",
            format_unix_ms(self.trigger_timestamp_ms)
        )?;
        writeln!(
            out,
            "  completed       {} ({} ms later)",
            format_unix_ms(self.completion_timestamp_ms),
            self.completion_timestamp_ms
                .saturating_sub(self.trigger_timestamp_ms)
        )?;
        writeln!(
            out,
            "  backends        {}",
            if self.backends.is_empty() {
                "none (no state)".to_string()
            } else {
                self.backends.join(", ")
            }
        )?;
        writeln!(
            out,
            "  files           {} ({})",
            self.files,
            human_bytes(self.bytes_full)
        )?;
        for (source, split, offset) in &self.source_offsets {
            writeln!(out, "  source offset   {source}/{split} = {offset}")?;
        }
        for (k, v) in &self.properties {
            writeln!(out, "  property        {k} = {v}")?;
        }
        for s in &self.subtasks {
            writeln!(
                out,
                "  operator {} subtask {} of {} (key groups {}..={} of {})",
                s.operator_id,
                s.subtask_index,
                s.parallelism,
                s.key_group_start,
                s.key_group_end,
                s.max_parallelism
            )?;
            for k in &s.keyed_state {
                writeln!(
                    out,
                    "    keyed state {} (backend {}, key groups {}..={})",
                    k.kind, k.backend, k.key_group_start, k.key_group_end
                )?;
                for h in &k.handles {
                    write_handle(out, h, "      ")?;
                }
                if let Some(offsets) = &k.key_group_offsets {
                    writeln!(out, "      key groups start at {}", offsets_text(offsets))?;
                }
                if let Some(levels) = &k.lsm_levels {
                    writeln!(
                        out,
                        "      LSM manifest snapshot: consistent at sequence {}",
                        k.lsm_last_sequence
                            .map_or("?".to_string(), |v| v.to_string())
                    )?;
                    write_levels(out, levels, "        ")?;
                }
                if let Some(e) = &k.lsm_error {
                    writeln!(out, "      LSM manifest snapshot UNREADABLE: {e}")?;
                }
            }
            for o in &s.operator_state {
                writeln!(out, "    operator state (backend {})", o.backend)?;
                write_handle(out, &o.data, "      ")?;
                for n in &o.states {
                    writeln!(
                        out,
                        "      {} {}: partitions start at {}",
                        escape_bytes(n.name.as_bytes()),
                        n.mode,
                        offsets_text(&n.offsets)
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Resolves a checkpoint path (a `_metadata`, a `chk-<N>`, or a job directory meaning
/// its latest completed checkpoint), reading only.
pub fn resolve_checkpoint(path: &Path) -> Result<ResolvedCheckpoint, CliError> {
    resolve(&StdFs, path).map_err(|e| CliError::at(path, e))
}

/// `inspect` of a checkpoint path.
pub fn inspect(path: &Path, out: &mut dyn Write, format: Format) -> Result<(), CliError> {
    if detect::detect(path)? == Kind::JobDir {
        return list(path, out, format);
    }
    let mut in_place = true;
    let r = match resolve(&StdFs, path) {
        Ok(r) => r,
        // A `_metadata` outside a `chk-<N>` (copied away, say) still shows what it holds.
        Err(Error::CheckpointNotFound { .. }) if path.is_file() => {
            let metadata = Metadata::read(&StdFs, path).map_err(|e| CliError::at(path, e))?;
            in_place = false;
            ResolvedCheckpoint {
                job_dir: crate::fs::parent_dir(crate::fs::parent_dir(path)).to_path_buf(),
                checkpoint_id: metadata.checkpoint_id,
                metadata_path: path.to_path_buf(),
                metadata,
            }
        }
        Err(e) => return Err(CliError::at(path, e)),
    };
    let (report, err) = metadata_report(&r);
    emit(out, format, &report)?;
    match err {
        // Out of its job directory, the files it references are not expected to be found.
        Some(e) if in_place => Err(CliError::at(path, e)),
        _ => Ok(()),
    }
}

/// What `inspect` prints for a checkpoint's LSM manifest snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestSnapshotReport {
    /// Always `lsm-manifest-snapshot`.
    pub format: &'static str,
    /// The file.
    pub path: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its crc32c.
    pub crc32c: u32,
    /// The `_metadata` that records the file's size and crc32c, when found and checked.
    pub checked_against: Option<String>,
    /// The subtask whose store it describes (`<operator>_<subtask>`), when known.
    pub subtask: Option<String>,
    /// The sequence number the snapshot is consistent at.
    pub last_sequence: Option<u64>,
    /// The level layout it records.
    pub levels: Vec<LevelJson>,
}

impl Render for ManifestSnapshotReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "LSM manifest snapshot {}", self.path)?;
        writeln!(
            out,
            "  size            {} ({} bytes), crc32c {:08x}",
            human_bytes(self.size_bytes),
            self.size_bytes,
            self.crc32c
        )?;
        match &self.checked_against {
            Some(m) => writeln!(out, "  checked         size and crc32c match {m}")?,
            None => writeln!(
                out,
                "  checked         not against a _metadata (none names this file)"
            )?,
        }
        if let Some(s) = &self.subtask {
            writeln!(out, "  subtask         {s}")?;
        }
        if let Some(seq) = self.last_sequence {
            writeln!(out, "  consistent at   sequence {seq}")?;
        }
        write_levels(out, &self.levels, "  ")
    }
}

/// Reads the manifest snapshot at `path` (a private file of a checkpoint), checked
/// against its checkpoint's `_metadata` when that names it.
fn manifest_snapshot_report(path: &Path) -> Result<ManifestSnapshotReport, Error> {
    let mut f = crate::fs::open_regular(path)?;
    let bytes = crate::fs::read_capped(&mut f, path, MAX_LIVE_SET_BYTES)?;
    let crc32c = crate::codec::crc32c(&bytes);
    let mut checked_against = None;
    let mut subtask = None;
    if let (Some(chk_dir), Some(name)) = (path.parent(), path.file_name()) {
        if let Ok(r) = resolve(&StdFs, chk_dir) {
            let rel = format!("{}/{}", r.checkpoint_id.dir_name(), name.to_string_lossy());
            if let Some((s, h)) = store_described_by(&r.metadata, &rel) {
                // The same checks a restore makes: size and crc32c from `_metadata`.
                keyed_contents(&storage_of(&r), h)?;
                checked_against = Some(r.metadata_path.display().to_string());
                subtask = Some(s.label());
            }
        }
    }
    let set = LiveSet::decode(&bytes, path)?;
    let replayed = store::replay([set.as_version_edit()]);
    Ok(ManifestSnapshotReport {
        format: "lsm-manifest-snapshot",
        path: path.display().to_string(),
        size_bytes: bytes.len() as u64,
        crc32c,
        checked_against,
        subtask,
        last_sequence: set.sequence(),
        levels: levels_json(&replayed),
    })
}

/// `inspect` of a checkpoint's LSM manifest snapshot.
pub fn inspect_manifest_snapshot(
    path: &Path,
    out: &mut dyn Write,
    format: Format,
) -> Result<(), CliError> {
    let r = manifest_snapshot_report(path).map_err(|e| CliError::at(path, e))?;
    emit(out, format, &r)
}

/// `verify` of a checkpoint's LSM manifest snapshot: it decodes, and its size and crc32c
/// match the `_metadata` that names it.
pub fn verify_manifest_snapshot(r: &mut VerifyReport, path: &Path) {
    match manifest_snapshot_report(path) {
        Ok(m) => r.file(
            path,
            "lsm-manifest",
            Some(m.size_bytes),
            Some(m.crc32c),
            Ok(match m.checked_against {
                Some(md) => format!("decodes; size and crc32c match {md}"),
                None => "decodes (no _metadata names it)".to_string(),
            }),
        ),
        Err(e) => {
            let size = crate::fs::open_regular(path)
                .and_then(|f| f.metadata().ctx("stat", path))
                .ok()
                .map(|m| m.len());
            r.file(path, "lsm-manifest", size, None, Err(e.to_string()))
        }
    }
}

/// `verify` of a checkpoint path: `_metadata` decodes (magic, version, crc, paths), every
/// referenced file has its recorded size and crc32c, and for the LSM backend the manifest
/// snapshot lists only tables the checkpoint holds, with matching sizes and crcs, each of
/// which opens and passes the table's own block checks.
pub fn verify_checkpoint(r: &mut VerifyReport, path: &Path, _kind: Kind) -> Result<(), CliError> {
    let resolved = match resolve(&StdFs, path) {
        Ok(x) => x,
        Err(e @ Error::CheckpointNotFound { .. }) => return Err(CliError::at(path, e)),
        Err(e) => {
            let mp = if path.is_dir() {
                path.join(METADATA_FILE_NAME)
            } else {
                path.to_path_buf()
            };
            // The file was read even though it does not decode: count its bytes.
            let size = crate::fs::open_regular(&mp)
                .and_then(|f| f.metadata().ctx("stat", &mp))
                .ok()
                .map(|m| m.len());
            r.file(&mp, "metadata", size, None, Err(e.to_string()));
            return Ok(());
        }
    };
    let m = &resolved.metadata;
    let storage = storage_of(&resolved);
    let mp = &resolved.metadata_path;
    r.file(
        mp,
        "metadata",
        StdFs
            .open(mp)
            .and_then(|f| f.metadata().ctx("stat", mp))
            .ok()
            .map(|x| x.len()),
        None,
        Ok(format!(
            "checkpoint {} ({}), {} subtask state(s)",
            m.checkpoint_id,
            m.kind,
            m.operator_states.len()
        )),
    );
    // Group the handles by path, so that two handles disagreeing about one file are found.
    let mut by_path: BTreeMap<&str, Vec<&FileHandle>> = BTreeMap::new();
    for f in m.file_handles() {
        by_path.entry(f.path.as_str()).or_default().push(f);
    }
    let pb = progress::bar(by_path.len() as u64, "verify");
    for (rel, handles) in &by_path {
        let shown = storage.display_path(rel);
        pb.set_message(rel.to_string());
        let rep =
            crate::checkpoint::verify_files(&storage, m.checkpoint_id, handles.iter().copied());
        let first = handles.first().copied();
        let role = first.map_or("file", |h| h.role.as_str());
        let (size, crc) = first.map_or((None, None), |h| (Some(h.size), Some(h.crc32c)));
        if rep.problems.is_empty() {
            r.file(
                &shown,
                role,
                size,
                crc,
                Ok("size and crc32c match _metadata".into()),
            );
        } else {
            r.file(&shown, role, size, None, Err(rep.problems.join("; ")));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    for s in &m.operator_states {
        for (_, set) in s.lsm_file_sets() {
            verify_lsm_set(r, &storage, mp, &s.label(), set);
        }
    }
    Ok(())
}

fn verify_lsm_set(
    r: &mut VerifyReport,
    storage: &LocalStorage,
    metadata_path: &Path,
    label: &str,
    set: &LsmFileSet,
) {
    match lsm_layout(storage, metadata_path, label, set) {
        Err(e) => r.problem(e.to_string()),
        Ok(layout) => {
            let pb = progress::bar(layout.tables.len() as u64, "tables");
            for (t, h) in &layout.tables {
                let p = storage.display_path(&h.path);
                pb.set_message(h.path.clone());
                // Only a regular file inside the job directory is opened; anything else
                // is already reported with the file's own line (size and crc).
                if let Ok(Some(file)) = storage.open_read(&h.path) {
                    // This adds the table's own checks, which name the damaged block's
                    // offset.
                    let mut scratch = VerifyReport::new(&p, Kind::Sst);
                    let expected = Expected {
                        size_bytes: t.size,
                        crc32c: t.crc32c,
                    };
                    verify_sst_opened(&mut scratch, &p, Ok(file), Some(expected));
                    for problem in scratch.problems {
                        r.problem(problem);
                    }
                }
                pb.inc(1);
            }
            pb.finish_and_clear();
            r.files.push(super::verify::CheckedFile {
                path: format!(
                    "{} (LSM manifest snapshot of {label})",
                    metadata_path.display()
                ),
                kind: "lsm-manifest".to_string(),
                size_bytes: None,
                crc32c: None,
                status: "ok",
                detail: format!(
                    "{} tables, consistent at sequence {}",
                    layout.tables.len(),
                    layout.live_set.sequence().unwrap_or(0)
                ),
            });
        }
    }
}

/// A checkpoint's job directory storage, for commands that read its files.
pub fn storage_for(r: &ResolvedCheckpoint) -> Arc<LocalStorage> {
    Arc::new(storage_of(r))
}
