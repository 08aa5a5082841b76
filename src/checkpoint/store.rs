//! The job's view of its checkpoints: which are retained, which shared files they
//! reference, how a new checkpoint is built and committed, and what is deleted when.
//!
//! The reference counts of `shared/` files are never stored: they are rebuilt from the
//! retained `_metadata` files at [`CheckpointStore::open`], so there is no second source of
//! truth that a crash could leave out of step. The order of every multi-step operation is
//! chosen so that a crash at any point leaves each retained checkpoint whole, and at worst
//! unreferenced leftovers that the next open deletes (see `format-spec/checkpoint-layout.md`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::ids::{CheckpointId, CheckpointKind};
use super::metadata::{
    FileHandle, FileRole, Metadata, OperatorSubtaskState, SourceOffset, MAX_METADATA_BYTES,
    METADATA_FILE_NAME,
};
use super::path::lexical_problem;
use super::restore::{RestoreInfo, RestoreMode};
use super::storage::CheckpointStorage;
use crate::codec;
use crate::error::{Error, Result};
use crate::fs::{DirEntryInfo, EntryKind, FileLock, Placement};

/// The directory of shared files, relative to the job directory.
pub const SHARED_DIR: &str = "shared";
/// The directory of task-owned files, relative to the job directory.
pub const TASKOWNED_DIR: &str = "taskowned";
/// Longest sanitized owner kept in a shared file's name.
const OWNER_NAME_MAX_BYTES: usize = 64;
/// Longest sanitized stem kept in a shared file's name.
const STEM_NAME_MAX_BYTES: usize = 128;
/// How many alternative names are tried before a placement gives up.
const NAME_ATTEMPTS_MAX: u32 = 1000;

/// What happens to retained checkpoints when the job ends (Flink's
/// `execution.checkpointing.externalized-checkpoint-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalizedCleanup {
    /// `NO_EXTERNALIZED_CHECKPOINTS`: checkpoints are deleted whenever the job terminates
    /// (a crash of the process deletes nothing, of course).
    #[default]
    NoExternalized,
    /// `RETAIN_ON_CANCELLATION`: kept when the job is cancelled or fails; deleted when it
    /// finishes.
    RetainOnCancellation,
    /// `DELETE_ON_CANCELLATION`: deleted when the job is cancelled or finishes; kept when
    /// it fails or is suspended.
    DeleteOnCancellation,
}

impl ExternalizedCleanup {
    /// Flink's name of the setting value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalizedCleanup::NoExternalized => "NO_EXTERNALIZED_CHECKPOINTS",
            ExternalizedCleanup::RetainOnCancellation => "RETAIN_ON_CANCELLATION",
            ExternalizedCleanup::DeleteOnCancellation => "DELETE_ON_CANCELLATION",
        }
    }

    /// Whether the retained checkpoints are deleted when the job ends with `how`
    /// (Flink's `CheckpointProperties` discard flags).
    pub fn discards_on(self, how: JobTermination) -> bool {
        use JobTermination::*;
        match self {
            ExternalizedCleanup::NoExternalized => true,
            ExternalizedCleanup::RetainOnCancellation => how == Finished,
            ExternalizedCleanup::DeleteOnCancellation => matches!(how, Finished | Cancelled),
        }
    }
}

impl FromStr for ExternalizedCleanup {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "NO_EXTERNALIZED_CHECKPOINTS" | "NO_EXTERNALIZED" => {
                Ok(ExternalizedCleanup::NoExternalized)
            }
            "RETAIN_ON_CANCELLATION" => Ok(ExternalizedCleanup::RetainOnCancellation),
            "DELETE_ON_CANCELLATION" => Ok(ExternalizedCleanup::DeleteOnCancellation),
            _ => Err(Error::InvalidOptions(format!(
                "externalized-checkpoint-retention {s:?}: expected NO_EXTERNALIZED_CHECKPOINTS, \
                 RETAIN_ON_CANCELLATION or DELETE_ON_CANCELLATION"
            ))),
        }
    }
}

/// How a job ended, for [`CheckpointStore::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobTermination {
    /// All input was processed.
    Finished,
    /// The user cancelled the job.
    Cancelled,
    /// The job failed and will not be restarted.
    Failed,
    /// The job was stopped to be resumed elsewhere.
    Suspended,
}

/// Options of a [`CheckpointStore`]. Plain values with Flink's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Completed checkpoints to keep (default 1; keys `execution.checkpointing.num-retained`
    /// and `state.checkpoints.num-retained`). Must be at least 1.
    pub num_retained: usize,
    /// What happens to retained checkpoints when the job ends (default
    /// [`ExternalizedCleanup::NoExternalized`]).
    pub cleanup: ExternalizedCleanup,
    /// Set when the job was started from a checkpoint: where from, and in which mode.
    pub restored: Option<RestoreInfo>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            num_retained: 1,
            cleanup: ExternalizedCleanup::NoExternalized,
            restored: None,
        }
    }
}

impl CheckpointConfig {
    /// Applies one `key = value` setting. Returns `Ok(false)` for a key this config does
    /// not know (so a caller can offer it to others), and an error for a bad value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "execution.checkpointing.num-retained" | "state.checkpoints.num-retained" => {
                self.num_retained = value.trim().parse().map_err(|_| {
                    Error::InvalidOptions(format!("{key} = {value:?}: not a whole number"))
                })?;
            }
            "execution.checkpointing.externalized-checkpoint-retention" => {
                self.cleanup = value.parse()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the options once, at open.
    pub fn validate(&self) -> Result<()> {
        if self.num_retained == 0 {
            return Err(Error::InvalidOptions(
                "execution.checkpointing.num-retained must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What a checkpoint wrote and what it merely referenced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Files written into the storage by this checkpoint (shared and private).
    pub files_placed: u64,
    /// Bytes of those files.
    pub bytes_placed: u64,
    /// Shared files reused from earlier checkpoints (or earlier in this one) without I/O.
    pub files_referenced: u64,
    /// Bytes of those files.
    pub bytes_referenced: u64,
    /// Placements done by hard link.
    pub files_linked: u64,
    /// Placements done by copying.
    pub files_copied: u64,
    /// Private files written from memory.
    pub files_written: u64,
}

/// The parts of `_metadata` that the caller supplies at commit; the store fills in the
/// id, job, kind and timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointContent {
    /// Per operator subtask state, whose handles come from this pending checkpoint.
    pub operator_states: Vec<OperatorSubtaskState>,
    /// Source positions.
    pub source_offsets: Vec<SourceOffset>,
    /// Free-form properties.
    pub properties: Vec<(String, String)>,
}

/// What retention deleted, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Checkpoints that were subsumed and deleted.
    pub discarded: Vec<CheckpointId>,
    /// Shared files deleted because no retained checkpoint referenced them any more.
    pub shared_files_deleted: Vec<String>,
    /// Deletions that failed; what they left behind is an unreferenced leftover that the
    /// next open deletes.
    pub errors: Vec<String>,
}

/// What [`CheckpointStore::open`] found and cleaned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Checkpoints found complete and retained.
    pub retained: Vec<CheckpointId>,
    /// `chk-<N>` directories without `_metadata` (unfinished) that were deleted.
    pub unfinished_deleted: Vec<CheckpointId>,
    /// Files in `shared/` that no retained checkpoint referenced, deleted.
    pub orphans_deleted: Vec<String>,
    /// Entries found where checkpoint files live that this store did not write and so
    /// left alone, one line each naming the path and what it is: a `chk-<N>` that is not
    /// a directory, anything in `shared/` not referenced that is not a regular file named
    /// as the store names shared files (a link, dangling or not, a directory, a FIFO, a
    /// name that is not UTF-8), and what an unfinished checkpoint's directory holds
    /// besides regular files.
    pub odd_entries: Vec<String>,
    /// Retention applied to what was found.
    pub retention: RetentionReport,
}

/// One retained checkpoint, as [`CheckpointStore::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// Its id.
    pub id: CheckpointId,
    /// Its kind.
    pub kind: CheckpointKind,
    /// When it was triggered (unix ms).
    pub trigger_timestamp_ms: u64,
    /// When its `_metadata` was written (unix ms).
    pub completion_timestamp_ms: u64,
    /// Distinct files it references.
    pub files_total: u64,
    /// Bytes of those files plus inline state (Flink's `state_size`).
    pub bytes_total: u64,
    /// Files it placed itself. For checkpoints found at open this is derived: private
    /// files plus shared files no older retained checkpoint references.
    pub files_placed: u64,
    /// Bytes it placed plus inline state (Flink's `checkpointed_size`).
    pub bytes_placed: u64,
    /// Its directory (Flink's `external_path`).
    pub external_path: PathBuf,
    /// False for a checkpoint this job must not delete (restored in no-claim mode).
    pub owned: bool,
}

/// A checkpoint that was committed.
#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    /// What was written to `_metadata`.
    pub metadata: Metadata,
    /// What it placed and referenced.
    pub stats: CheckpointStats,
    /// Its directory.
    pub external_path: PathBuf,
    /// What retention did after it.
    pub retention: RetentionReport,
}

/// Identity of a placed shared file: same owner, same name, same size and crc32c means the
/// same immutable file, which can be referenced instead of placed again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    owner: String,
    local_name: String,
    size: u64,
    crc32c: u32,
}

#[derive(Debug)]
struct SharedEntry {
    identity: Option<Identity>,
    size: u64,
    crc32c: u32,
    /// Completed and pending checkpoints that reference the file (each counts once).
    refs: u32,
    /// False for files of checkpoints this job does not own: never deleted, never reused.
    owned: bool,
}

#[derive(Debug)]
struct Completed {
    metadata: Metadata,
    stats: CheckpointStats,
    owned: bool,
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    last_id: Option<CheckpointId>,
    completed: BTreeMap<CheckpointId, Completed>,
    pending: BTreeSet<CheckpointId>,
    shared: BTreeMap<String, SharedEntry>,
    by_identity: HashMap<Identity, String>,
    /// The next checkpoint places everything anew (first after a no-claim restore).
    force_full_next: bool,
}

#[derive(Debug)]
struct Core {
    /// The job directory's owner lock, held as long as the store or a pending checkpoint
    /// of it lives.
    owner: Mutex<Option<FileLock>>,
    storage: Arc<dyn CheckpointStorage>,
    config: CheckpointConfig,
    inner: Mutex<Inner>,
}

/// The checkpoints of one job in one [`CheckpointStorage`].
#[derive(Debug)]
pub struct CheckpointStore {
    core: Arc<Core>,
    report: OpenReport,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn metadata_rel(id: CheckpointId) -> String {
    format!("{}/{METADATA_FILE_NAME}", id.dir_name())
}

/// Keeps `[A-Za-z0-9_.]` (and `-` when `dash` is true), maps the rest to `_`, truncates.
fn sanitize(s: &str, dash: bool, max_bytes: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || (dash && ch == '-') {
                ch
            } else {
                '_'
            }
        })
        .take(max_bytes)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// `<owner>-<stem>-<crc:08x>[.<ext>]`, plus `suffix` before the extension. The owner never
/// contains `-`, so the owner can be read back as the part before the first `-`.
fn shared_name(owner: &str, local_name: &str, crc32c: u32, suffix: &str) -> String {
    let base = local_name.rsplit('/').next().unwrap_or(local_name);
    let (stem, ext) = match base.rfind('.') {
        Some(i) if i > 0 && i + 1 < base.len() => (&base[..i], &base[i + 1..]),
        _ => (base, ""),
    };
    let stem = sanitize(stem, true, STEM_NAME_MAX_BYTES);
    let mut name = format!("{owner}-{stem}-{crc32c:08x}{suffix}");
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&sanitize(ext, true, 16));
    }
    name
}

/// The identity of a shared file found in a `_metadata`, when its name carries an owner.
fn identity_of(f: &FileHandle) -> Option<Identity> {
    let name = f.path.strip_prefix("shared/")?;
    if name.contains('/') {
        return None;
    }
    let (owner, _) = name.split_once('-')?;
    Some(Identity {
        owner: owner.to_string(),
        local_name: f.local_name.clone(),
        size: f.size,
        crc32c: f.crc32c,
    })
}

/// Same directory, comparing canonical forms when both exist.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Inner {
    /// Adds one reference from a checkpoint to the shared file `f`.
    fn add_ref(&mut self, f: &FileHandle, owned: bool) {
        let e = self
            .shared
            .entry(f.path.clone())
            .or_insert_with(|| SharedEntry {
                identity: identity_of(f),
                size: f.size,
                crc32c: f.crc32c,
                refs: 0,
                owned,
            });
        if e.size != f.size || e.crc32c != f.crc32c {
            tracing::warn!(
                path = %f.path,
                "retained checkpoints disagree on the size or crc32c of a shared file"
            );
        }
        e.refs = e.refs.saturating_add(1);
        e.owned &= owned;
        if e.owned {
            if let Some(id) = &e.identity {
                self.by_identity.insert(id.clone(), f.path.clone());
            }
        }
    }

    /// Drops one reference to `path`; returns true when the file is now unreferenced and
    /// ours to delete (its entry is then removed).
    fn release(&mut self, path: &str) -> bool {
        let Some(e) = self.shared.get_mut(path) else {
            return false;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            return false;
        }
        let owned = e.owned;
        let identity = e.identity.clone();
        self.shared.remove(path);
        if let Some(id) = identity {
            if self.by_identity.get(&id).map(String::as_str) == Some(path) {
                self.by_identity.remove(&id);
                // Fall back to another live copy of the same file, newest name last.
                let other = self
                    .shared
                    .iter()
                    .rev()
                    .find(|(_, e)| e.owned && e.identity.as_ref() == Some(&id))
                    .map(|(p, _)| p.clone());
                if let Some(p) = other {
                    self.by_identity.insert(id, p);
                }
            }
        }
        owned
    }
}

/// Deletes the files in `paths` and makes the deletions durable; errors go to `errors`.
fn delete_shared(storage: &dyn CheckpointStorage, paths: &[String], errors: &mut Vec<String>) {
    if paths.is_empty() {
        return;
    }
    for p in paths {
        // Only a regular file is deleted: a link, a directory or anything else found
        // under a referenced name is not what the store placed there.
        match storage.entry_kind(p) {
            Ok(Some(EntryKind::File)) | Ok(None) => {}
            Ok(Some(kind)) => {
                errors.push(format!(
                    "{} is {}, not the file placed there; left alone",
                    storage.display_path(p).display(),
                    describe_kind(kind)
                ));
                continue;
            }
            Err(e) => {
                errors.push(format!("stat {}: {e}", storage.display_path(p).display()));
                continue;
            }
        }
        if let Err(e) = storage.delete_file(p) {
            errors.push(format!("delete {}: {e}", storage.display_path(p).display()));
        }
    }
    if let Err(e) = storage.sync_dir(SHARED_DIR) {
        errors.push(format!("sync {SHARED_DIR}: {e}"));
    }
}

/// What an entry kind is, in words.
fn describe_kind(kind: EntryKind) -> String {
    DirEntryInfo {
        name: String::new(),
        utf8: true,
        kind,
    }
    .describe()
}

/// True when `name` is one the store gives shared files:
/// `<owner>-<stem>-<crc32c:08x>[-c<N>[-<k>]][.<ext>]` (see [`shared_name`]).
fn is_shared_name(name: &str) -> bool {
    let stem = match name.rsplit_once('.') {
        Some((base, ext)) if !ext.is_empty() && !ext.contains('-') => base,
        _ => name,
    };
    let tokens: Vec<&str> = stem.split('-').collect();
    let hex8 = |t: &str| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let copy = |t: &str| t.strip_prefix('c').is_some_and(digits);
    let n = tokens.len();
    let crc_at = if n >= 5 && digits(tokens[n - 1]) && copy(tokens[n - 2]) {
        n - 3
    } else if n >= 4 && copy(tokens[n - 1]) {
        n - 2
    } else {
        n.wrapping_sub(1)
    };
    crc_at >= 2 && crc_at < n && hex8(tokens[crc_at]) && !tokens[0].is_empty()
}

/// Deletes the unfinished checkpoint `id` (a directory without `_metadata`): the regular
/// files in it, then the directory. Anything else in it (a link, a directory, a FIFO) is
/// reported in `odd` and left, with the directory. Returns whether the directory is gone.
fn delete_unfinished(
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    odd: &mut Vec<String>,
) -> Result<bool> {
    let dir = id.dir_name();
    let mut left = 0usize;
    for e in storage.list_entries(&dir)? {
        let rel = format!("{dir}/{}", e.name);
        if e.is_plain_file() {
            storage.delete_file(&rel)?;
        } else {
            left += 1;
            odd.push(format!(
                "{}: {} in an unfinished checkpoint; left alone, with its directory",
                storage.display_path(&rel).display(),
                e.describe()
            ));
        }
    }
    if left > 0 {
        return Ok(false);
    }
    storage.delete_dir(&dir)?;
    Ok(true)
}

/// Deletes checkpoint `id`: `_metadata` first (made durable, so the checkpoint stops
/// existing before anything it references goes), then its directory, then the shared files
/// no other checkpoint references.
fn discard(
    inner: &mut Inner,
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    report: &mut RetentionReport,
) -> bool {
    let dir = id.dir_name();
    if let Err(e) = storage.delete_file(&metadata_rel(id)) {
        report.errors.push(format!(
            "delete {}: {e}",
            storage.display_path(&metadata_rel(id)).display()
        ));
        return false;
    }
    let Some(done) = inner.completed.remove(&id) else {
        return false;
    };
    report.discarded.push(id);
    crate::failpoint::hit("retention.checkpoint_removed");
    if let Err(e) = storage.sync_dir(&dir) {
        // The deletion of `_metadata` may not be durable: keep its shared files (they
        // become leftovers for the next open rather than holes in a checkpoint that could
        // reappear after a crash).
        report.errors.push(format!("sync {dir}: {e}"));
        return true;
    }
    if let Err(e) = storage.delete_dir(&dir) {
        report.errors.push(format!("delete {dir}: {e}"));
    }
    if !done.owned {
        return true;
    }
    let mut unreferenced = Vec::new();
    for p in done.metadata.shared_paths() {
        if inner.release(p) {
            unreferenced.push(p.to_string());
        }
    }
    delete_shared(storage, &unreferenced, &mut report.errors);
    report.shared_files_deleted.extend(unreferenced);
    true
}

/// Keeps the newest `num_retained` owned checkpoints and discards the others.
fn retain(
    inner: &mut Inner,
    storage: &dyn CheckpointStorage,
    num_retained: usize,
) -> RetentionReport {
    let mut report = RetentionReport::default();
    loop {
        let owned: Vec<CheckpointId> = inner
            .completed
            .iter()
            .filter(|(_, c)| c.owned)
            .map(|(id, _)| *id)
            .collect();
        if owned.len() <= num_retained {
            break;
        }
        let Some(&oldest) = owned.first() else { break };
        if !discard(inner, storage, oldest, &mut report) {
            break;
        }
    }
    for e in &report.errors {
        tracing::warn!("checkpoint retention: {e}");
    }
    report
}

/// The `_metadata` property recording how many files a checkpoint placed (the rest of its
/// files it referenced, placed by earlier checkpoints).
pub const PLACED_FILES_PROPERTY: &str = "tidemark.files_placed";
/// The `_metadata` property recording the bytes of the files a checkpoint placed.
pub const PLACED_BYTES_PROPERTY: &str = "tidemark.bytes_placed";

/// The files and bytes a checkpoint placed, as its `_metadata` records them (written by
/// every commit; `None` for a `_metadata` that does not record them).
pub fn recorded_placement(m: &Metadata) -> Option<(u64, u64)> {
    let get = |key: &str| {
        m.properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    Some((get(PLACED_FILES_PROPERTY)?, get(PLACED_BYTES_PROPERTY)?))
}

/// Stats of a checkpoint found at open: what it references that no older retained
/// checkpoint does counts as placed by it, unless its `_metadata` records what it placed
/// (then the rest was referenced).
fn derived_stats(m: &Metadata, older: &BTreeSet<String>) -> CheckpointStats {
    let mut s = derived_from_files(m, older);
    if let Some((files, bytes)) = recorded_placement(m) {
        let all_files = s.files_placed + s.files_referenced;
        let all_bytes = s.bytes_placed.saturating_add(s.bytes_referenced);
        if files <= all_files && bytes <= all_bytes {
            s.files_placed = files;
            s.files_referenced = all_files - files;
            s.bytes_placed = bytes;
            s.bytes_referenced = all_bytes - bytes;
        }
    }
    s
}

/// [`derived_stats`] from the files alone.
fn derived_from_files(m: &Metadata, older: &BTreeSet<String>) -> CheckpointStats {
    let mut s = CheckpointStats::default();
    let mut seen = BTreeSet::new();
    for f in m.file_handles() {
        if !seen.insert(f.path.as_str()) {
            continue;
        }
        if f.role == FileRole::Shared && older.contains(&f.path) {
            s.files_referenced += 1;
            s.bytes_referenced = s.bytes_referenced.saturating_add(f.size);
        } else {
            s.files_placed += 1;
            s.bytes_placed = s.bytes_placed.saturating_add(f.size);
        }
    }
    s
}

impl CheckpointStore {
    /// Opens the checkpoints of the storage's job: deletes unfinished `chk-<N>`
    /// directories, rebuilds the shared-file reference counts from the retained
    /// `_metadata` files, deletes shared files no retained checkpoint references, and
    /// applies retention.
    ///
    /// A `_metadata` that exists but cannot be decoded is an error (naming the file): it
    /// was written atomically, so it is damaged, not unfinished, and deleting it (or the
    /// shared files only it references) is a decision for a person.
    ///
    /// When the job was restored in no-claim mode from a checkpoint in this same job
    /// directory, everything found here belongs to that earlier run: nothing is deleted,
    /// nothing is reused, and the first checkpoint is full.
    pub fn open(storage: Arc<dyn CheckpointStorage>, config: CheckpointConfig) -> Result<Self> {
        config.validate()?;
        let mut foreign = false;
        let mut force_full_next = false;
        if let Some(r) = &config.restored {
            let here = same_dir(&r.job_dir, &storage.root());
            match r.mode {
                RestoreMode::Claim if !here => {
                    return Err(Error::InvalidOptions(format!(
                        "claim mode continues in the restored checkpoint's job directory {}, \
                         but this store is in {}",
                        r.job_dir.display(),
                        storage.root().display()
                    )))
                }
                RestoreMode::Claim => {}
                RestoreMode::NoClaim => {
                    foreign = here;
                    force_full_next = true;
                }
            }
        }
        // Before anything is read or deleted: a second owner would take the first one's
        // pending files for leftovers of a crash.
        let owner = storage.lock_owner()?;
        for d in [SHARED_DIR, TASKOWNED_DIR] {
            match storage.entry_kind(d)? {
                None => storage.create_dir_all(d)?,
                Some(EntryKind::Dir) => {}
                Some(kind) => {
                    return Err(Error::UnsafePath {
                        path: storage.root(),
                        entry: d.to_string(),
                        reason: format!(
                            "{} is {}, not a directory of the job directory",
                            storage.display_path(d).display(),
                            describe_kind(kind)
                        ),
                    })
                }
            }
        }
        let mut report = OpenReport::default();
        let mut inner = Inner {
            force_full_next,
            ..Inner::default()
        };
        let mut ids: Vec<CheckpointId> = Vec::new();
        for e in storage.list_entries("")? {
            let Some(id) = CheckpointId::from_dir_name(&e.name).filter(|_| e.utf8) else {
                continue;
            };
            if e.is_plain_dir() {
                ids.push(id);
            } else {
                // Ids keep increasing past it, but it is not read and not deleted.
                inner.last_id = inner.last_id.max(Some(id));
                report.odd_entries.push(format!(
                    "{}: {}, not a checkpoint directory; left alone",
                    storage.display_path(&e.name).display(),
                    e.describe()
                ));
            }
        }
        ids.sort();
        let mut older_shared = BTreeSet::new();
        for id in ids {
            inner.last_id = inner.last_id.max(Some(id));
            let rel = metadata_rel(id);
            if !storage.exists(&rel)? {
                if !foreign && delete_unfinished(storage.as_ref(), id, &mut report.odd_entries)? {
                    report.unfinished_deleted.push(id);
                }
                continue;
            }
            let path = storage.display_path(&rel);
            let bytes = storage.read_file(&rel, MAX_METADATA_BYTES)?;
            let metadata = Metadata::decode(&bytes, &path)?;
            if metadata.checkpoint_id != id {
                return Err(Error::corruption(
                    &path,
                    super::metadata::BODY_OFFSET as u64,
                    format!(
                        "describes checkpoint {} but lies in {}",
                        metadata.checkpoint_id,
                        id.dir_name()
                    ),
                ));
            }
            let stats = derived_stats(&metadata, &older_shared);
            for p in metadata.shared_paths() {
                older_shared.insert(p.to_string());
            }
            for p in metadata.shared_paths() {
                if let Some(f) = metadata.file_handles().find(|f| f.path == p) {
                    inner.add_ref(&f.clone(), !foreign);
                }
            }
            report.retained.push(id);
            inner.completed.insert(
                id,
                Completed {
                    metadata,
                    stats,
                    owned: !foreign,
                },
            );
        }
        if !report.unfinished_deleted.is_empty() {
            storage.sync_dir("")?;
        }
        if !foreign {
            report.retention = retain(&mut inner, storage.as_ref(), config.num_retained);
            let mut orphans = Vec::new();
            for e in storage.list_entries(SHARED_DIR)? {
                let rel = format!("{SHARED_DIR}/{}", e.name);
                if e.utf8 && inner.shared.contains_key(&rel) {
                    continue;
                }
                if e.is_plain_file() && is_shared_name(&e.name) {
                    orphans.push(rel);
                } else {
                    report.odd_entries.push(format!(
                        "{}: {}, not a shared file this store wrote; left alone",
                        storage.display_path(&rel).display(),
                        if e.kind == EntryKind::File && e.utf8 {
                            "a regular file not named as shared files are named".to_string()
                        } else {
                            e.describe()
                        }
                    ));
                }
            }
            let mut errors = Vec::new();
            delete_shared(storage.as_ref(), &orphans, &mut errors);
            if let Some(e) = errors.first() {
                return Err(Error::InvalidArgument(format!(
                    "could not delete leftover shared files: {e}"
                )));
            }
            report.orphans_deleted = orphans;
        }
        report
            .retained
            .retain(|id| inner.completed.contains_key(id));
        Ok(CheckpointStore {
            core: Arc::new(Core {
                owner: Mutex::new(owner),
                storage,
                config,
                inner: Mutex::new(inner),
            }),
            report,
        })
    }

    /// The job directory's lock file this store holds (`None` for a storage without
    /// locks).
    pub fn owner_lock_path(&self) -> Option<PathBuf> {
        self.core
            .owner
            .lock()
            .as_ref()
            .map(|l| l.path().to_path_buf())
    }

    /// What open found and cleaned.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Arc<dyn CheckpointStorage> {
        &self.core.storage
    }

    /// The options the store was opened with.
    pub fn config(&self) -> &CheckpointConfig {
        &self.core.config
    }

    /// Starts checkpoint `id` (strictly greater than every id seen before) and creates its
    /// directory. The kind becomes [`CheckpointKind::Full`] when an incremental checkpoint
    /// is asked for first after a no-claim restore.
    pub fn begin(&self, id: CheckpointId, kind: CheckpointKind) -> Result<PendingCheckpoint> {
        let mut inner = self.core.inner.lock();
        if inner.closed {
            return Err(Error::Closed);
        }
        if let Some(last) = inner.last_id {
            if id <= last {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint ids must increase: {id} does not follow {last}"
                )));
            }
        }
        let kind = if inner.force_full_next && kind == CheckpointKind::Incremental {
            CheckpointKind::Full
        } else {
            kind
        };
        self.core.storage.create_dir_all(&id.dir_name())?;
        inner.last_id = Some(id);
        inner.pending.insert(id);
        Ok(PendingCheckpoint {
            core: Arc::clone(&self.core),
            id,
            kind,
            trigger_timestamp_ms: now_ms(),
            referenced: BTreeSet::new(),
            own: HashMap::new(),
            private: BTreeSet::new(),
            placed_shared: false,
            stats: CheckpointStats::default(),
            finished: false,
        })
    }

    /// The retained checkpoints, oldest first.
    pub fn list(&self) -> Vec<CheckpointSummary> {
        let inner = self.core.inner.lock();
        inner
            .completed
            .values()
            .map(|c| summarize(self.core.storage.as_ref(), c))
            .collect()
    }

    /// The newest retained checkpoint's metadata.
    pub fn latest(&self) -> Option<Metadata> {
        let inner = self.core.inner.lock();
        inner.completed.values().last().map(|c| c.metadata.clone())
    }

    /// The metadata of retained checkpoint `id`.
    pub fn metadata(&self, id: CheckpointId) -> Option<Metadata> {
        self.core
            .inner
            .lock()
            .completed
            .get(&id)
            .map(|c| c.metadata.clone())
    }

    /// Files in `shared/` that no retained or pending checkpoint references (paths
    /// relative to the job directory).
    pub fn orphans(&self) -> Result<Vec<String>> {
        let names = self.core.storage.list_dir(SHARED_DIR)?;
        let inner = self.core.inner.lock();
        Ok(names
            .into_iter()
            .map(|n| format!("{SHARED_DIR}/{n}"))
            .filter(|p| !inner.shared.contains_key(p))
            .collect())
    }

    /// Ends the job's use of the store as after a cancellation.
    pub fn on_cancel(self) -> Result<RetentionReport> {
        self.shutdown(JobTermination::Cancelled)
    }

    /// Ends the job's use of the store: deletes every owned checkpoint and the shared files
    /// only they reference when the cleanup policy says so for `how`; `taskowned/` is
    /// never touched. Pending checkpoints can no longer commit.
    pub fn shutdown(self, how: JobTermination) -> Result<RetentionReport> {
        let storage = self.core.storage.as_ref();
        let mut inner = self.core.inner.lock();
        inner.closed = true;
        if !self.core.config.cleanup.discards_on(how) {
            return Ok(RetentionReport::default());
        }
        // Newest first: a crash midway leaves the oldest whole ones, never a gap in the
        // middle that a restore from "latest" could fall into.
        let ids: Vec<CheckpointId> = inner
            .completed
            .iter()
            .rev()
            .filter(|(_, c)| c.owned)
            .map(|(id, _)| *id)
            .collect();
        let mut report = RetentionReport::default();
        for id in ids {
            discard(&mut inner, storage, id, &mut report);
        }
        match report.errors.first() {
            None => Ok(report),
            Some(e) => Err(Error::InvalidArgument(format!(
                "checkpoint cleanup on {how:?} left files behind: {e}"
            ))),
        }
    }
}

fn summarize(storage: &dyn CheckpointStorage, c: &Completed) -> CheckpointSummary {
    let m = &c.metadata;
    let mut seen = BTreeSet::new();
    let (mut files, mut bytes) = (0u64, m.inline_bytes());
    for f in m.file_handles() {
        if seen.insert(f.path.as_str()) {
            files += 1;
            bytes = bytes.saturating_add(f.size);
        }
    }
    CheckpointSummary {
        id: m.checkpoint_id,
        kind: m.kind,
        trigger_timestamp_ms: m.trigger_timestamp_ms,
        completion_timestamp_ms: m.completion_timestamp_ms,
        files_total: files,
        bytes_total: bytes,
        files_placed: c.stats.files_placed,
        bytes_placed: c.stats.bytes_placed.saturating_add(m.inline_bytes()),
        external_path: storage.display_path(&m.checkpoint_id.dir_name()),
        owned: c.owned,
    }
}

/// A checkpoint being built: files are placed into it, then it is committed or aborted.
/// Dropping it without either aborts it.
#[derive(Debug)]
pub struct PendingCheckpoint {
    core: Arc<Core>,
    id: CheckpointId,
    kind: CheckpointKind,
    trigger_timestamp_ms: u64,
    /// Shared paths this checkpoint holds one reference on.
    referenced: BTreeSet<String>,
    /// Shared files placed or referenced by this checkpoint, by identity.
    own: HashMap<Identity, FileHandle>,
    /// Private paths placed or written.
    private: BTreeSet<String>,
    placed_shared: bool,
    stats: CheckpointStats,
    finished: bool,
}

impl PendingCheckpoint {
    /// The checkpoint's id.
    pub fn id(&self) -> CheckpointId {
        self.id
    }

    /// The checkpoint's kind (see [`CheckpointStore::begin`]).
    pub fn kind(&self) -> CheckpointKind {
        self.kind
    }

    /// What was placed and referenced so far.
    pub fn stats(&self) -> CheckpointStats {
        self.stats
    }

    /// When the checkpoint was begun (unix ms).
    pub fn trigger_timestamp_ms(&self) -> u64 {
        self.trigger_timestamp_ms
    }

    /// Releases the job directory's owner lock as a crash of the process would, for tests
    /// that simulate one by forgetting a pending checkpoint.
    #[cfg(test)]
    pub(crate) fn release_owner_lock_as_in_a_crash(&self) {
        self.core.owner.lock().take();
    }

    /// Adds the immutable local file `local_path` (named `local_name` in the owner's
    /// working directory, `size` bytes, crc32c `crc32c`) to the checkpoint's shared files.
    ///
    /// When a retained checkpoint, or this one, already references a file with the same
    /// owner, name, size and crc32c, returns a handle to it without any I/O. Otherwise (and
    /// always for a full checkpoint or savepoint) links or copies it into `shared/` under a
    /// new name `<owner>-<stem>-<crc32c>.<ext>` and checks its size.
    pub fn place_shared(
        &mut self,
        owner: &str,
        local_path: &Path,
        local_name: &str,
        size: u64,
        crc32c: u32,
    ) -> Result<FileHandle> {
        if let Some(reason) = lexical_problem(local_name) {
            return Err(Error::InvalidArgument(format!(
                "local name {local_name:?}: {reason}"
            )));
        }
        let identity = Identity {
            owner: sanitize(owner, false, OWNER_NAME_MAX_BYTES),
            local_name: local_name.to_string(),
            size,
            crc32c,
        };
        if let Some(h) = self.own.get(&identity) {
            self.stats.files_referenced += 1;
            self.stats.bytes_referenced = self.stats.bytes_referenced.saturating_add(size);
            return Ok(h.clone());
        }
        let storage = Arc::clone(&self.core.storage);
        let path = {
            let mut inner = self.core.inner.lock();
            if inner.closed {
                return Err(Error::Closed);
            }
            if self.kind.reuses_shared_files() {
                if let Some(path) = inner.by_identity.get(&identity).cloned() {
                    if let Some(e) = inner.shared.get_mut(&path) {
                        if !self.referenced.contains(&path) {
                            e.refs = e.refs.saturating_add(1);
                            self.referenced.insert(path.clone());
                        }
                        let h = FileHandle {
                            role: FileRole::Shared,
                            local_name: local_name.to_string(),
                            path,
                            size,
                            crc32c,
                        };
                        self.own.insert(identity, h.clone());
                        self.stats.files_referenced += 1;
                        self.stats.bytes_referenced =
                            self.stats.bytes_referenced.saturating_add(size);
                        return Ok(h);
                    }
                }
            }
            // Reserve a fresh name under the lock; the I/O happens outside it.
            let path = self.free_name(&inner, storage.as_ref(), &identity)?;
            inner.shared.insert(
                path.clone(),
                SharedEntry {
                    identity: Some(identity.clone()),
                    size,
                    crc32c,
                    refs: 1,
                    owned: true,
                },
            );
            self.referenced.insert(path.clone());
            path
        };
        self.placed_shared = true;
        match place_checked(storage.as_ref(), local_path, &path, size) {
            Ok(placement) => {
                let h = FileHandle {
                    role: FileRole::Shared,
                    local_name: local_name.to_string(),
                    path: path.clone(),
                    size,
                    crc32c,
                };
                self.core
                    .inner
                    .lock()
                    .by_identity
                    .insert(identity.clone(), path);
                self.own.insert(identity, h.clone());
                self.count_placement(size, placement);
                Ok(h)
            }
            Err(e) => {
                self.referenced.remove(&path);
                let unreferenced = self.core.inner.lock().release(&path);
                if unreferenced {
                    let _ = storage.delete_file(&path);
                }
                Err(e)
            }
        }
    }

    fn free_name(
        &self,
        inner: &Inner,
        storage: &dyn CheckpointStorage,
        id: &Identity,
    ) -> Result<String> {
        let taken =
            |p: &str| -> Result<bool> { Ok(inner.shared.contains_key(p) || storage.exists(p)?) };
        let first = format!(
            "{SHARED_DIR}/{}",
            shared_name(&id.owner, &id.local_name, id.crc32c, "")
        );
        if !taken(&first)? {
            return Ok(first);
        }
        for k in 0..NAME_ATTEMPTS_MAX {
            let suffix = if k == 0 {
                format!("-c{}", self.id)
            } else {
                format!("-c{}-{k}", self.id)
            };
            let p = format!(
                "{SHARED_DIR}/{}",
                shared_name(&id.owner, &id.local_name, id.crc32c, &suffix)
            );
            if !taken(&p)? {
                return Ok(p);
            }
        }
        Err(Error::InvalidArgument(format!(
            "no free name in {SHARED_DIR}/ for {:?} of {:?}",
            id.local_name, id.owner
        )))
    }

    fn count_placement(&mut self, size: u64, placement: Placement) {
        self.stats.files_placed += 1;
        self.stats.bytes_placed = self.stats.bytes_placed.saturating_add(size);
        match placement {
            Placement::Linked => self.stats.files_linked += 1,
            Placement::Copied => self.stats.files_copied += 1,
        }
    }

    fn private_rel(&self, name: &str) -> Result<String> {
        if let Some(reason) = lexical_problem(name) {
            return Err(Error::InvalidArgument(format!(
                "private file name {name:?}: {reason}"
            )));
        }
        if name == METADATA_FILE_NAME || name.starts_with("_metadata") {
            return Err(Error::InvalidArgument(format!(
                "private file name {name:?} is reserved"
            )));
        }
        let rel = format!("{}/{name}", self.id.dir_name());
        if self.private.contains(&rel) {
            return Err(Error::InvalidArgument(format!(
                "private file {rel} was already placed"
            )));
        }
        if let Some((parent, _)) = rel.rsplit_once('/') {
            if parent != self.id.dir_name() {
                self.core.storage.create_dir_all(parent)?;
            }
        }
        Ok(rel)
    }

    /// Links or copies the local file `local_path` into `chk-<N>/<name>`; the handle's
    /// size and crc32c are read from the placed file.
    pub fn place_private(&mut self, local_path: &Path, name: &str) -> Result<FileHandle> {
        self.check_open()?;
        let rel = self.private_rel(name)?;
        let storage = Arc::clone(&self.core.storage);
        let placement = storage.place_file(local_path, &rel)?;
        self.private.insert(rel.clone());
        let sum = storage.checksum(&rel, u64::MAX)?;
        self.count_placement(sum.size, placement);
        Ok(FileHandle {
            role: FileRole::Private,
            local_name: name.to_string(),
            path: rel,
            size: sum.size,
            crc32c: sum.crc32c,
        })
    }

    /// Writes `bytes` durably as `chk-<N>/<name>`.
    pub fn write_private(&mut self, name: &str, bytes: &[u8]) -> Result<FileHandle> {
        self.check_open()?;
        let rel = self.private_rel(name)?;
        self.core.storage.write_atomic(&rel, bytes)?;
        self.private.insert(rel.clone());
        let size = bytes.len() as u64;
        self.stats.files_placed += 1;
        self.stats.files_written += 1;
        self.stats.bytes_placed = self.stats.bytes_placed.saturating_add(size);
        Ok(FileHandle {
            role: FileRole::Private,
            local_name: name.to_string(),
            path: rel,
            size,
            crc32c: codec::crc32c(bytes),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.core.inner.lock().closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Every file handle of `content` must come from this checkpoint.
    fn check_handles(&self, content: &CheckpointContent) -> Result<()> {
        let inner = self.core.inner.lock();
        for s in &content.operator_states {
            for f in s.file_handles() {
                let ok = match f.role {
                    FileRole::Shared => {
                        self.referenced.contains(&f.path)
                            && inner
                                .shared
                                .get(&f.path)
                                .is_some_and(|e| e.size == f.size && e.crc32c == f.crc32c)
                    }
                    FileRole::Private => self.private.contains(&f.path),
                    // A checkpoint of the job directory places no savepoint files.
                    FileRole::Savepoint => false,
                };
                if !ok {
                    return Err(Error::InvalidArgument(format!(
                        "checkpoint {}: handle {} ({} bytes, crc32c {:#010x}) was not placed by it",
                        self.id, f.path, f.size, f.crc32c
                    )));
                }
            }
        }
        Ok(())
    }

    /// Completes the checkpoint: makes every placed file durable, writes `_metadata`
    /// atomically (from this moment the checkpoint exists), then applies retention. On a
    /// failure before `_metadata` is durable the checkpoint is aborted.
    pub fn commit(mut self, content: CheckpointContent) -> Result<CompletedCheckpoint> {
        // What this checkpoint placed, as it happened: a later reader cannot tell it from
        // the files alone once the checkpoints it reused files from are gone.
        let mut properties: Vec<(String, String)> = content
            .properties
            .iter()
            .filter(|(k, _)| k != PLACED_FILES_PROPERTY && k != PLACED_BYTES_PROPERTY)
            .cloned()
            .collect();
        properties.push((
            PLACED_FILES_PROPERTY.to_string(),
            self.stats.files_placed.to_string(),
        ));
        properties.push((
            PLACED_BYTES_PROPERTY.to_string(),
            self.stats.bytes_placed.to_string(),
        ));
        let metadata = Metadata {
            checkpoint_id: self.id,
            job_id: self.core.storage.job_id().clone(),
            kind: self.kind,
            trigger_timestamp_ms: self.trigger_timestamp_ms,
            completion_timestamp_ms: now_ms(),
            operator_states: content.operator_states.clone(),
            source_offsets: content.source_offsets.clone(),
            properties,
        };
        let result = self.commit_inner(&content, metadata);
        if result.is_err() {
            if let Err(e) = self.abort_inner() {
                tracing::warn!("aborting checkpoint {} after a failed commit: {e}", self.id);
            }
        }
        result
    }

    fn commit_inner(
        &mut self,
        content: &CheckpointContent,
        metadata: Metadata,
    ) -> Result<CompletedCheckpoint> {
        let storage = Arc::clone(&self.core.storage);
        let rel = metadata_rel(self.id);
        let path = storage.display_path(&rel);
        self.check_handles(content)?;
        metadata.validate(&path)?;
        let bytes = metadata.encode();
        let dir = self.id.dir_name();
        if self.placed_shared {
            storage.sync_dir(SHARED_DIR)?;
        }
        storage.sync_dir(&dir)?;
        crate::failpoint::hit("checkpoint.files_placed");
        let mut inner = self.core.inner.lock();
        if inner.closed {
            return Err(Error::Closed);
        }
        storage.write_atomic(&rel, &bytes)?;
        crate::failpoint::hit("checkpoint.metadata_written");
        // Durable: the checkpoint exists. Nothing below may fail it.
        self.finished = true;
        inner.pending.remove(&self.id);
        let kept: BTreeSet<String> = metadata
            .shared_paths()
            .into_iter()
            .map(String::from)
            .collect();
        let mut unreferenced = Vec::new();
        for p in std::mem::take(&mut self.referenced) {
            if !kept.contains(&p) && inner.release(&p) {
                unreferenced.push(p);
            }
        }
        let mut retention = RetentionReport::default();
        delete_shared(storage.as_ref(), &unreferenced, &mut retention.errors);
        retention.shared_files_deleted.extend(unreferenced);
        if self.kind != CheckpointKind::Incremental {
            inner.force_full_next = false;
        }
        inner.completed.insert(
            self.id,
            Completed {
                metadata: metadata.clone(),
                stats: self.stats,
                owned: true,
            },
        );
        let more = retain(&mut inner, storage.as_ref(), self.core.config.num_retained);
        retention.discarded.extend(more.discarded);
        retention
            .shared_files_deleted
            .extend(more.shared_files_deleted);
        retention.errors.extend(more.errors);
        crate::failpoint::hit("checkpoint.completed");
        Ok(CompletedCheckpoint {
            metadata,
            stats: self.stats,
            external_path: storage.display_path(&dir),
            retention,
        })
    }

    /// Abandons the checkpoint: deletes `chk-<N>` and the shared files no other checkpoint
    /// references.
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }

    fn abort_inner(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let storage = Arc::clone(&self.core.storage);
        let mut inner = self.core.inner.lock();
        inner.pending.remove(&self.id);
        let dir_result = storage.delete_dir(&self.id.dir_name());
        let mut unreferenced = Vec::new();
        for p in std::mem::take(&mut self.referenced) {
            if inner.release(&p) {
                unreferenced.push(p);
            }
        }
        drop(inner);
        let mut errors = Vec::new();
        delete_shared(storage.as_ref(), &unreferenced, &mut errors);
        dir_result?;
        match errors.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(Error::InvalidArgument(format!(
                "aborting checkpoint {}: {e}",
                self.id
            ))),
        }
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.abort_inner() {
                tracing::warn!("aborting dropped checkpoint {}: {e}", self.id);
            }
        }
    }
}

/// Places `local` at `rel` and checks the placed size against `size`.
fn place_checked(
    storage: &dyn CheckpointStorage,
    local: &Path,
    rel: &str,
    size: u64,
) -> Result<Placement> {
    let placement = storage.place_file(local, rel)?;
    let found = storage.file_size(rel)?;
    if found != size {
        let _ = storage.delete_file(rel);
        return Err(Error::InvalidArgument(format!(
            "{} is {found} bytes, but was described as {size}",
            local.display()
        )));
    }
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::testutil::{
        abs, content, crash_checkpoint, crash_mid_retention, Crash, Fixture,
    };
    use crate::checkpoint::verify::verify;
    use CheckpointKind::*;

    const A: (&str, &[u8]) = ("000001.sst", b"aaaaaaaaaa");
    const B: (&str, &[u8]) = ("000002.sst", b"bbbbbbbbbbbbbbbbbbbb");
    const C: (&str, &[u8]) = ("000003.sst", b"ccccc");
    const D: (&str, &[u8]) = ("000004.sst", b"dddddddd");

    fn shared_of(c: &CompletedCheckpoint) -> BTreeSet<String> {
        c.metadata
            .shared_paths()
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn second_checkpoint_with_one_new_file_places_exactly_one_file() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let first = fx.checkpoint(&store, 1, Incremental, &[A, B]);
        assert_eq!(first.stats.files_placed, 3); // two shared + the private manifest
        assert_eq!(first.stats.files_linked, 2);
        let second = fx.checkpoint(&store, 2, Incremental, &[A, B, C]);
        let s = second.stats;
        assert_eq!(s.files_placed - s.files_written, 1, "{s:?}");
        assert_eq!(s.files_linked, 1);
        assert_eq!(s.files_referenced, 2);
        assert_eq!(s.bytes_referenced, (A.1.len() + B.1.len()) as u64);
        assert_eq!(
            s.bytes_placed,
            C.1.len() as u64 + b"manifest of 2".len() as u64
        );
        assert_eq!(fx.shared_count(), 3);
        assert_eq!(second.retention.discarded, vec![CheckpointId(1)]);
        assert_eq!(fx.chk_dirs(), vec![2]);
        let summary = store.list();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].files_total, 4);
        assert_eq!(summary[0].files_placed, 2);
        assert_eq!(summary[0].external_path, fx.job_dir().join("chk-2"));
        fx.assert_all_verify(&store);
    }

    #[test]
    fn retention_keeps_files_still_referenced_and_deletes_the_rest() {
        let fx = Fixture::new();
        let store = fx.retaining(2);
        let c1 = fx.checkpoint(&store, 1, Incremental, &[A, B]);
        let _c2 = fx.checkpoint(&store, 2, Incremental, &[A, C]);
        let c3 = fx.checkpoint(&store, 3, Incremental, &[C, D]);
        assert_eq!(c3.retention.discarded, vec![CheckpointId(1)]);
        // B was only in chk-1: gone. A is still in chk-2: kept.
        let b_path = c1
            .metadata
            .file_handles()
            .find(|f| f.local_name == B.0)
            .unwrap();
        let a_path = c1
            .metadata
            .file_handles()
            .find(|f| f.local_name == A.0)
            .unwrap();
        assert_eq!(c3.retention.shared_files_deleted, vec![b_path.path.clone()]);
        assert!(!abs(&fx, b_path).exists());
        assert!(abs(&fx, a_path).exists());
        assert_eq!(fx.chk_dirs(), vec![2, 3]);
        let c4 = fx.checkpoint(&store, 4, Incremental, &[D]);
        // chk-2 goes; A and C... C is still in chk-3.
        assert_eq!(c4.retention.discarded, vec![CheckpointId(2)]);
        assert!(!abs(&fx, a_path).exists());
        assert_eq!(fx.shared_count(), 2); // C, D
        assert!(store.orphans().unwrap().is_empty());
        fx.assert_all_verify(&store);
    }

    #[test]
    fn shared_names_are_recognized() {
        for ok in [
            "op_0-000004-b2fc1dc1.sst",
            "count_0-000188-d4b0ca41.sst",
            "op_0-000004-b2fc1dc1-c3.sst",
            "op_0-000004-b2fc1dc1-c3-2.sst",
            "op_0-a-b-0badf00d",
            &shared_name("sum_0", "000012.sst", 0xdead_beef, "-c7"),
        ] {
            assert!(is_shared_name(ok), "{ok}");
        }
        for bad in [
            "stray.sst",
            "000004.sst",
            "op_0-b2fc1dc1.sst",
            "-000004-b2fc1dc1.sst",
            "op_0-000004-b2fc1dc.sst",
            "op_0-000004-b2fc1dc1-x3.sst",
        ] {
            assert!(!is_shared_name(bad), "{bad}");
        }
    }

    #[test]
    fn reopen_rebuilds_refcounts_deletes_unfinished_and_orphans() {
        let fx = Fixture::new();
        let store = fx.retaining(2);
        fx.checkpoint(&store, 1, Incremental, &[A, B]);
        fx.checkpoint(&store, 2, Incremental, &[A, C]);
        crash_checkpoint(&fx, &store, 3, &[A, D], Crash::BeforeMetadata);
        assert_eq!(
            store.orphans().unwrap().len(),
            0,
            "D is held by the pending checkpoint"
        );
        drop(store);
        std::fs::write(
            fx.job_dir().join("shared/op_9-000077-0badf00d.sst"),
            b"left by a crash",
        )
        .unwrap();
        // Not named as the store names shared files: not provably the store's.
        std::fs::write(fx.job_dir().join("shared/stray.sst"), b"someone's").unwrap();

        let store = fx.retaining(2);
        let r = store.open_report();
        assert_eq!(r.retained, vec![CheckpointId(1), CheckpointId(2)]);
        assert_eq!(r.unfinished_deleted, vec![CheckpointId(3)]);
        assert_eq!(r.orphans_deleted.len(), 2, "{:?}", r.orphans_deleted); // D and op_9
        assert_eq!(r.odd_entries.len(), 1, "{:?}", r.odd_entries);
        assert!(
            r.odd_entries[0].contains("shared/stray.sst"),
            "{:?}",
            r.odd_entries
        );
        assert!(fx.job_dir().join("shared/stray.sst").exists());
        assert_eq!(fx.chk_dirs(), vec![1, 2]);
        assert_eq!(fx.shared_count(), 4); // A, B, C and stray.sst
        fx.assert_all_verify(&store);
        // Ids continue after the unfinished one; refcounts are right: chk-4 subsumes
        // chk-1 and only B goes.
        assert!(store.begin(CheckpointId(3), Incremental).is_err());
        let c4 = fx.checkpoint(&store, 4, Incremental, &[A, C]);
        assert_eq!(c4.stats.files_referenced, 2, "identity survives the reopen");
        assert_eq!(c4.retention.shared_files_deleted.len(), 1);
        assert!(c4.retention.shared_files_deleted[0].contains("000002"));
        fx.assert_all_verify(&store);
    }

    #[test]
    fn crash_at_any_step_leaves_every_retained_checkpoint_whole() {
        for crash in [Crash::BeforeMetadata, Crash::DuringMetadataWrite] {
            let fx = Fixture::new();
            let store = fx.retaining(2);
            fx.checkpoint(&store, 1, Incremental, &[A, B]);
            fx.checkpoint(&store, 2, Incremental, &[B, C]);
            crash_checkpoint(&fx, &store, 3, &[C, D], crash);
            drop(store);
            let store = fx.retaining(2);
            assert_eq!(store.list().len(), 2, "{crash:?}");
            fx.assert_all_verify(&store);
            assert!(store.orphans().unwrap().is_empty());
        }
        // Retention interrupted after `_metadata` of the oldest went away.
        let fx = Fixture::new();
        let store = fx.retaining(2);
        fx.checkpoint(&store, 1, Incremental, &[A, B]);
        fx.checkpoint(&store, 2, Incremental, &[B, C]);
        drop(store);
        crash_mid_retention(&fx, 1);
        let store = fx.retaining(2);
        assert_eq!(
            store.open_report().unfinished_deleted,
            vec![CheckpointId(1)]
        );
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.open_report().orphans_deleted.len(), 1); // A
        assert_eq!(fx.shared_count(), 2);
        fx.assert_all_verify(&store);
    }

    #[test]
    fn full_checkpoint_places_every_file_anew() {
        let fx = Fixture::new();
        let store = fx.retaining(2);
        let c1 = fx.checkpoint(&store, 1, Incremental, &[A, B]);
        let c2 = fx.checkpoint(&store, 2, Full, &[A, B]);
        assert_eq!(c2.stats.files_referenced, 0);
        assert_eq!(c2.stats.files_placed, 3);
        assert!(shared_of(&c1).is_disjoint(&shared_of(&c2)));
        assert_eq!(fx.shared_count(), 4);
        // The next incremental one reuses the newest copies.
        let c3 = fx.checkpoint(&store, 3, Incremental, &[A, B]);
        assert_eq!(c3.stats.files_referenced, 2);
        assert_eq!(shared_of(&c3), shared_of(&c2));
        assert_eq!(fx.shared_count(), 2, "chk-1's copies went with it");
        fx.assert_all_verify(&store);
    }

    #[test]
    fn same_file_twice_in_one_checkpoint_is_placed_once() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let mut p = store.begin(CheckpointId(1), Full).unwrap();
        let h1 = fx.place(&mut p, &[A]);
        let h2 = fx.place(&mut p, &[A]);
        assert_eq!(h1, h2);
        assert_eq!(p.stats().files_placed, 1);
        assert_eq!(p.stats().files_referenced, 1);
        let mut handles = h1;
        handles.extend(h2);
        p.commit(content(handles)).unwrap();
        fx.assert_all_verify(&store);
    }

    #[test]
    fn abort_removes_the_directory_and_only_the_files_it_placed() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        fx.checkpoint(&store, 1, Incremental, &[A]);
        let mut p = store.begin(CheckpointId(2), Incremental).unwrap();
        fx.place(&mut p, &[A, B]);
        p.write_private("x", b"x").unwrap();
        assert_eq!(fx.shared_count(), 2);
        p.abort().unwrap();
        assert_eq!(fx.shared_count(), 1);
        assert_eq!(fx.chk_dirs(), vec![1]);
        // Dropping a pending checkpoint aborts it too.
        let mut p = store.begin(CheckpointId(3), Incremental).unwrap();
        fx.place(&mut p, &[C]);
        drop(p);
        assert_eq!(fx.shared_count(), 1);
        assert_eq!(fx.chk_dirs(), vec![1]);
        fx.assert_all_verify(&store);
    }

    #[test]
    fn checkpoint_ids_must_increase() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        fx.checkpoint(&store, 5, Incremental, &[A]);
        assert!(store.begin(CheckpointId(5), Incremental).is_err());
        assert!(store.begin(CheckpointId(4), Incremental).is_err());
        let p = store.begin(CheckpointId(6), Incremental).unwrap();
        p.abort().unwrap();
        assert!(
            store.begin(CheckpointId(6), Incremental).is_err(),
            "aborted ids are used up"
        );
    }

    #[test]
    fn commit_refuses_handles_it_did_not_place() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let c1 = fx.checkpoint(&store, 1, Incremental, &[A]);
        let foreign = c1.metadata.file_handles().next().unwrap().clone();
        let p = store.begin(CheckpointId(2), Incremental).unwrap();
        let e = p.commit(content(vec![foreign])).unwrap_err();
        assert!(e.to_string().contains("was not placed by it"), "{e}");
        assert_eq!(fx.chk_dirs(), vec![1], "the failed commit was aborted");
        fx.assert_all_verify(&store);
    }

    #[test]
    fn wrong_size_is_refused_at_placement() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let mut p = store.begin(CheckpointId(1), Incremental).unwrap();
        let path = fx.state_file(A.0, A.1);
        assert!(p.place_shared("op", &path, A.0, 999, 0).is_err());
        assert_eq!(fx.shared_count(), 0);
        assert!(p.place_shared("op", &path, "../escape", 10, 0).is_err());
        assert!(p.write_private("_metadata", b"x").is_err());
    }

    #[test]
    fn damaged_metadata_stops_open_naming_the_file() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        fx.checkpoint(&store, 1, Incremental, &[A]);
        drop(store);
        let p = fx.job_dir().join("chk-1/_metadata");
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 0x40;
        std::fs::write(&p, b).unwrap();
        let e = CheckpointStore::open(fx.storage(), CheckpointConfig::default()).unwrap_err();
        assert!(
            e.is_corruption() && e.to_string().contains("chk-1/_metadata"),
            "{e}"
        );
        assert_eq!(fx.shared_count(), 1, "nothing was deleted");
    }

    #[test]
    fn cancel_follows_the_cleanup_policy() {
        for (policy, kept) in [
            (ExternalizedCleanup::NoExternalized, false),
            (ExternalizedCleanup::RetainOnCancellation, true),
            (ExternalizedCleanup::DeleteOnCancellation, false),
        ] {
            let fx = Fixture::new();
            let store = fx.open(CheckpointConfig {
                num_retained: 2,
                cleanup: policy,
                restored: None,
            });
            fx.checkpoint(&store, 1, Incremental, &[A, B]);
            fx.checkpoint(&store, 2, Incremental, &[B, C]);
            std::fs::write(fx.job_dir().join("taskowned/x"), b"task").unwrap();
            let report = store.on_cancel().unwrap();
            assert!(fx.job_dir().join("taskowned/x").exists(), "{policy:?}");
            if kept {
                assert_eq!(fx.chk_dirs(), vec![1, 2]);
                assert_eq!(fx.shared_count(), 3);
                let store = fx.retaining(2);
                fx.assert_all_verify(&store);
            } else {
                assert_eq!(report.discarded, vec![CheckpointId(2), CheckpointId(1)]);
                assert!(fx.chk_dirs().is_empty(), "{policy:?}");
                assert_eq!(fx.shared_count(), 0, "{policy:?}");
            }
        }
        assert!(!ExternalizedCleanup::DeleteOnCancellation.discards_on(JobTermination::Failed));
        assert!(ExternalizedCleanup::RetainOnCancellation.discards_on(JobTermination::Finished));
    }

    #[test]
    fn pending_checkpoint_cannot_commit_after_shutdown() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let mut p = store.begin(CheckpointId(1), Incremental).unwrap();
        let h = fx.place(&mut p, &[A]);
        store.shutdown(JobTermination::Suspended).unwrap();
        assert!(matches!(p.commit(content(h)), Err(Error::Closed)));
        assert_eq!(fx.shared_count(), 0);
    }

    #[test]
    fn no_claim_restore_in_the_same_directory_never_deletes_the_old_run() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        fx.checkpoint(&store, 1, Incremental, &[A, B]);
        drop(store);
        let restored = crate::checkpoint::restore::resolve(fx.fs.as_ref(), &fx.job_dir()).unwrap();
        let store = fx.open(CheckpointConfig {
            num_retained: 1,
            restored: Some(restored.restore_info(RestoreMode::NoClaim)),
            ..CheckpointConfig::default()
        });
        let c2 = fx.checkpoint(&store, 2, Incremental, &[A, B]);
        assert_eq!(
            c2.metadata.kind, Full,
            "first checkpoint after no-claim is full"
        );
        assert_eq!(c2.stats.files_referenced, 0);
        let c3 = fx.checkpoint(&store, 3, Incremental, &[A, B, C]);
        assert_eq!(c3.metadata.kind, Incremental);
        assert_eq!(c3.stats.files_referenced, 2);
        // chk-1 is not ours: retention passes over it; chk-2 is ours and subsumed.
        assert_eq!(c3.retention.discarded, vec![CheckpointId(2)]);
        assert_eq!(fx.chk_dirs(), vec![1, 3]);
        assert!(verify(store.storage().as_ref(), &restored.metadata).is_ok());
        store.on_cancel().unwrap();
        assert_eq!(fx.chk_dirs(), vec![1]);
        assert!(verify(fx.storage().as_ref(), &restored.metadata).is_ok());
    }

    #[test]
    fn no_claim_restore_elsewhere_starts_full_and_claim_elsewhere_is_refused() {
        let old = Fixture::new();
        let store = old.retaining(1);
        old.checkpoint(&store, 1, Incremental, &[A]);
        drop(store);
        let restored =
            crate::checkpoint::restore::resolve(old.fs.as_ref(), &old.job_dir()).unwrap();
        let new = Fixture::new();
        let e = CheckpointStore::open(
            new.storage(),
            CheckpointConfig {
                restored: Some(restored.restore_info(RestoreMode::Claim)),
                ..CheckpointConfig::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("claim"), "{e}");
        let store = new.open(CheckpointConfig {
            restored: Some(restored.restore_info(RestoreMode::NoClaim)),
            ..CheckpointConfig::default()
        });
        let p = store.begin(CheckpointId(2), Incremental).unwrap();
        assert_eq!(p.kind(), Full);
    }

    #[test]
    fn claim_restore_owns_and_subsumes_the_restored_checkpoint() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        fx.checkpoint(&store, 1, Incremental, &[A, B]);
        drop(store);
        let restored = crate::checkpoint::restore::resolve(fx.fs.as_ref(), &fx.job_dir()).unwrap();
        let store = fx.open(CheckpointConfig {
            restored: Some(restored.restore_info(RestoreMode::Claim)),
            ..CheckpointConfig::default()
        });
        let c2 = fx.checkpoint(&store, 2, Incremental, &[A, C]);
        assert_eq!(c2.stats.files_referenced, 1);
        assert_eq!(c2.retention.discarded, vec![CheckpointId(1)]);
        assert_eq!(fx.shared_count(), 2);
    }

    #[test]
    fn config_accepts_flink_keys_and_rejects_zero_retained() {
        let mut c = CheckpointConfig::default();
        assert!(c.set("state.checkpoints.num-retained", "3").unwrap());
        assert_eq!(c.num_retained, 3);
        assert!(c.set("execution.checkpointing.num-retained", "2").unwrap());
        assert_eq!(c.num_retained, 2);
        assert!(c
            .set(
                "execution.checkpointing.externalized-checkpoint-retention",
                "RETAIN_ON_CANCELLATION"
            )
            .unwrap());
        assert_eq!(c.cleanup, ExternalizedCleanup::RetainOnCancellation);
        assert!(!c.set("execution.checkpointing.interval", "1s").unwrap());
        assert!(c.set("state.checkpoints.num-retained", "x").is_err());
        c.num_retained = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn shared_names_carry_owner_and_never_contain_a_dash_in_the_owner() {
        assert_eq!(
            shared_name(&sanitize("map-1/0", false, 64), "000012.sst", 0xab, ""),
            "map_1_0-000012-000000ab.sst"
        );
        assert_eq!(
            shared_name("o", "MANIFEST", 1, "-c3"),
            "o-MANIFEST-00000001-c3"
        );
        let f = FileHandle {
            role: FileRole::Shared,
            local_name: "000012.sst".into(),
            path: "shared/map_1_0-000012-000000ab.sst".into(),
            size: 1,
            crc32c: 0xab,
        };
        assert_eq!(identity_of(&f).unwrap().owner, "map_1_0");
    }
}
