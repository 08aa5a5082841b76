//! The job's view of its checkpoints: which are retained, which shared files they
//! reference, how a new checkpoint is built and committed, and what is deleted when.
//!
//! The reference counts of `shared/` files are never stored: they are rebuilt from the
//! retained `_metadata` files at [`CheckpointStore::open`], so there is no second source of
//! truth that a crash could leave out of step. The order of every multi-step operation is
//! chosen so that a crash at any point leaves each retained checkpoint whole, and at worst
//! unreferenced leftovers that the next open deletes (see `format-spec/checkpoint-layout.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::config::{CheckpointConfig, JobTermination};
use super::ids::{CheckpointId, CheckpointKind};
use super::metadata::{Metadata, MAX_METADATA_BYTES};
use super::path::{checkpoint_dirs, metadata_rel, CheckpointDirs, SHARED_DIR, TASKOWNED_DIR};
use super::pending::PendingCheckpoint;
use super::registry::{is_shared_name, Registry};
use super::restore::RestoreMode;
use super::retention::{delete_shared, describe_kind, discard, retain, RetentionReport};
use super::stats::{derived_stats, summarize, CheckpointStats, CheckpointSummary};
use super::storage::CheckpointStorage;
use crate::error::{Error, Result};
use crate::fs::{EntryKind, FileLock};

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

/// A retained checkpoint.
#[derive(Debug)]
pub(super) struct Completed {
    pub(super) metadata: Metadata,
    pub(super) stats: CheckpointStats,
    pub(super) owned: bool,
}

/// The store's state under its one lock.
#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) closed: bool,
    pub(super) last_id: Option<CheckpointId>,
    pub(super) completed: BTreeMap<CheckpointId, Completed>,
    pub(super) pending: BTreeSet<CheckpointId>,
    pub(super) registry: Registry,
    /// The next checkpoint places everything anew (first after a no-claim restore).
    pub(super) force_full_next: bool,
}

/// What the store and its pending checkpoints share.
#[derive(Debug)]
pub(super) struct Core {
    /// The job directory's owner lock, held as long as the store or a pending checkpoint
    /// of it lives.
    pub(super) owner: Mutex<Option<FileLock>>,
    pub(super) storage: Arc<dyn CheckpointStorage>,
    pub(super) config: CheckpointConfig,
    /// Held shared by a commit from its last check of `closed` until its `_metadata` is
    /// written and recorded, and exclusively by a shutdown while it closes the store: so a
    /// checkpoint either completes before the shutdown (and the shutdown's cleanup sees
    /// it) or not at all. Never held with `inner`'s lock taken first.
    pub(super) lifecycle: RwLock<()>,
    /// The bookkeeping, the shared-file registry among it. No file I/O happens while it
    /// is held (see the registry's lock rule).
    pub(super) inner: Mutex<Inner>,
}

/// The checkpoints of one job in one [`CheckpointStorage`].
#[derive(Debug)]
pub struct CheckpointStore {
    core: Arc<Core>,
    report: OpenReport,
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Same directory, comparing canonical forms when both exist.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
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
        let CheckpointDirs { ids, odd } = checkpoint_dirs(storage.list_entries("")?);
        for (id, e) in odd {
            // Ids keep increasing past it, but it is not read and not deleted.
            inner.last_id = inner.last_id.max(Some(id));
            report.odd_entries.push(format!(
                "{}: {}, not a checkpoint directory; left alone",
                storage.display_path(&e.name).display(),
                e.describe()
            ));
        }
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
                    inner.registry.add_ref(&f.clone(), !foreign);
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
        let inner = Mutex::new(inner);
        if !foreign {
            report.retention = retain(&inner, storage.as_ref(), config.num_retained);
            let known: BTreeSet<String> = inner.lock().registry.shared.keys().cloned().collect();
            let mut orphans = Vec::new();
            for e in storage.list_entries(SHARED_DIR)? {
                let rel = format!("{SHARED_DIR}/{}", e.name);
                if e.utf8 && known.contains(&rel) {
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
        {
            let g = inner.lock();
            report.retained.retain(|id| g.completed.contains_key(id));
        }
        Ok(CheckpointStore {
            core: Arc::new(Core {
                owner: Mutex::new(owner),
                storage,
                config,
                lifecycle: RwLock::new(()),
                inner,
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
    /// is asked for first after a no-claim restore. A savepoint is no checkpoint of the job
    /// directory: it is written by [`super::PendingSavepoint`] into a directory of its own.
    pub fn begin(&self, id: CheckpointId, kind: CheckpointKind) -> Result<PendingCheckpoint> {
        if kind.is_savepoint() {
            return Err(Error::InvalidArgument(format!(
                "{kind} {id}: a savepoint is self-contained in a directory of its own; begin it \
                 with PendingSavepoint::begin"
            )));
        }
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
        let before = inner.last_id.replace(id);
        inner.pending.insert(id);
        drop(inner);
        if let Err(e) = self.core.storage.create_dir_all(&id.dir_name()) {
            let mut inner = self.core.inner.lock();
            inner.pending.remove(&id);
            if inner.last_id == Some(id) {
                inner.last_id = before;
            }
            return Err(e);
        }
        Ok(PendingCheckpoint::new(Arc::clone(&self.core), id, kind))
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

    /// The id the next checkpoint must have at least: one past every checkpoint id this
    /// store has seen (retained, begun, and the unfinished or odd `chk-N` entries it found
    /// when it opened, whose ids are never reused).
    pub fn next_id(&self) -> CheckpointId {
        CheckpointId(self.core.inner.lock().last_id.map_or(1, |id| id.0 + 1))
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
            .filter(|p| !inner.registry.is_referenced(p))
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
        {
            // Waits for commits writing their `_metadata`; later ones see `closed`.
            let _closing = self.core.lifecycle.write();
            self.core.inner.lock().closed = true;
        }
        if !self.core.config.cleanup.discards_on(how) {
            return Ok(RetentionReport::default());
        }
        // Newest first: a crash midway leaves the oldest whole ones, never a gap in the
        // middle that a restore from "latest" could fall into.
        let ids: Vec<CheckpointId> = self
            .core
            .inner
            .lock()
            .completed
            .iter()
            .rev()
            .filter(|(_, c)| c.owned)
            .map(|(id, _)| *id)
            .collect();
        let mut report = RetentionReport::default();
        for id in ids {
            discard(&self.core.inner, storage, id, &mut report);
        }
        match report.errors.first() {
            None => Ok(report),
            Some(e) => Err(Error::InvalidArgument(format!(
                "checkpoint cleanup on {how:?} left files behind: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::config::ExternalizedCleanup;

    use crate::checkpoint::pending::CompletedCheckpoint;
    use crate::checkpoint::target::SnapshotTarget;
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
        assert_eq!(store.next_id(), CheckpointId(4), "3 is never reused");
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
        let p = store.begin(CheckpointId(1), Full).unwrap();
        let h1 = fx.place(&p, &[A]);
        let h2 = fx.place(&p, &[A]);
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
        let p = store.begin(CheckpointId(2), Incremental).unwrap();
        fx.place(&p, &[A, B]);
        p.write_private("x", b"x").unwrap();
        assert_eq!(fx.shared_count(), 2);
        p.abort().unwrap();
        assert_eq!(fx.shared_count(), 1);
        assert_eq!(fx.chk_dirs(), vec![1]);
        // Dropping a pending checkpoint aborts it too.
        let p = store.begin(CheckpointId(3), Incremental).unwrap();
        fx.place(&p, &[C]);
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
        let p = store.begin(CheckpointId(1), Incremental).unwrap();
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
        let p = store.begin(CheckpointId(1), Incremental).unwrap();
        let h = fx.place(&p, &[A]);
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
}
