//! A checkpoint being built: the files placed into it, and its commit (writing
//! `_metadata`, from which moment it exists) or abort.
//!
//! Placing takes `&self`, so the subtasks of a job can place their files into one pending
//! checkpoint from their own threads at the same time (share it by reference or in an
//! `Arc`); commit and abort take it by value, so they run after every placement ended.
//! The pending checkpoint's own bookkeeping sits behind a lock of its own, and neither
//! that lock nor the store's is held during file I/O (see the registry's lock rule).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::ids::{CheckpointId, CheckpointKind};
use super::metadata::{
    FileHandle, FileRole, Metadata, OperatorSubtaskState, SourceOffset, METADATA_FILE_NAME,
};
use super::path::metadata_rel;
use super::path::{lexical_problem, SHARED_DIR};
use super::registry::{sanitize, Identity, OWNER_NAME_MAX_BYTES};
use super::retention::{delete_released, retain, RetentionReport};
use super::stats::{CheckpointStats, PLACED_BYTES_PROPERTY, PLACED_FILES_PROPERTY};
use super::storage::{staging_rel, CheckpointStorage, StagedFile};
use super::store::{now_ms, Completed, Core};
use super::target::{check_local_name, PrivateWrite, SnapshotTarget};
use crate::codec;
use crate::error::{Error, Result};
use crate::fs::Placement;

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

/// A checkpoint being built: files are placed into it, then it is committed or aborted.
/// Dropping it without either aborts it.
///
/// `Sync`: any number of threads may place files into it at once through `&self`.
#[derive(Debug)]
pub struct PendingCheckpoint {
    core: Arc<Core>,
    id: CheckpointId,
    kind: CheckpointKind,
    trigger_timestamp_ms: u64,
    /// What was placed so far. Taken before the store's lock when both are needed, and
    /// never held during file I/O.
    book: Mutex<Book>,
    finished: bool,
}

// Subtasks share one pending checkpoint across threads; a writer may move to another.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shareable::<PendingCheckpoint>();
    movable::<PrivateFileWriter<'static>>();
};

/// The bookkeeping of one pending checkpoint.
#[derive(Debug, Default)]
struct Book {
    /// Shared paths this checkpoint holds one reference on.
    referenced: BTreeSet<String>,
    /// Shared files placed, being placed, or referenced by this checkpoint, by identity.
    own: HashMap<Identity, Slot>,
    /// Private paths placed, written, or reserved by a placement under way.
    private: BTreeSet<String>,
    /// Directories below `chk-<N>/` holding private files: synced before `_metadata`.
    private_dirs: BTreeSet<String>,
    /// `shared/` must be synced before `_metadata`: this checkpoint placed a shared file,
    /// or reuses one placed by a checkpoint that is not complete yet.
    sync_shared: bool,
    stats: CheckpointStats,
}

/// A shared file of this checkpoint, by identity.
#[derive(Debug)]
enum Slot {
    /// One thread is placing it; others wait for the outcome.
    Placing(Arc<Flight>),
    /// Placed or referenced: later placements of the same file reuse this handle.
    Placed(FileHandle),
}

/// A placement under way that other placers of the same file wait for.
#[derive(Debug, Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Flight {
    fn wait(&self) {
        let mut done = self.done.lock();
        while !*done {
            self.cv.wait(&mut done);
        }
    }

    fn land(&self) {
        *self.done.lock() = true;
        self.cv.notify_all();
    }
}

/// Ends a placement: records its outcome in the book and wakes the waiting placers, also
/// when the placing thread unwinds.
struct FlightGuard<'a> {
    book: &'a Mutex<Book>,
    identity: Identity,
    flight: Arc<Flight>,
    placed: Option<FileHandle>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        {
            let mut book = self.book.lock();
            match self.placed.take() {
                Some(h) => {
                    book.own.insert(self.identity.clone(), Slot::Placed(h));
                }
                None => {
                    // Failed: the next placer of the same file tries anew.
                    book.own.remove(&self.identity);
                }
            }
        }
        self.flight.land();
    }
}

impl Book {
    fn count_reference(&mut self, size: u64) {
        self.stats.files_referenced += 1;
        self.stats.bytes_referenced = self.stats.bytes_referenced.saturating_add(size);
    }

    fn count_placement(&mut self, size: u64, placement: Placement) {
        self.stats.files_placed += 1;
        self.stats.bytes_placed = self.stats.bytes_placed.saturating_add(size);
        match placement {
            Placement::Linked => self.stats.files_linked += 1,
            Placement::Copied => self.stats.files_copied += 1,
        }
    }

    /// Whether `rel` (or the staging name of a file being written, which ends in `.tmp`)
    /// would collide with a private file of this checkpoint.
    fn private_taken(&self, rel: &str) -> bool {
        self.private.contains(rel)
            || self.private.contains(&staging_rel(rel))
            || rel
                .strip_suffix(".tmp")
                .is_some_and(|base| self.private.contains(base))
    }
}

/// The outcome of one attempt at placing a new shared file.
enum Attempt {
    Placed,
    /// The reserved name was taken on disk by a file the store does not know.
    NameTaken(String),
}

impl PendingCheckpoint {
    /// A new pending checkpoint of the store `core`; the caller has registered `id` as
    /// pending and created its directory.
    pub(super) fn new(core: Arc<Core>, id: CheckpointId, kind: CheckpointKind) -> Self {
        PendingCheckpoint {
            core,
            id,
            kind,
            trigger_timestamp_ms: now_ms(),
            book: Mutex::new(Book::default()),
            finished: false,
        }
    }

    /// The checkpoint's id.
    pub fn id(&self) -> CheckpointId {
        self.id
    }

    /// The checkpoint's kind (see [`CheckpointStore::begin`](super::CheckpointStore::begin)).
    pub fn kind(&self) -> CheckpointKind {
        self.kind
    }

    /// What was placed and referenced so far.
    pub fn stats(&self) -> CheckpointStats {
        self.book.lock().stats
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

    /// Places (or reuses) the file of `identity`, which no other thread of this checkpoint
    /// is placing.
    fn place_shared_once(&self, identity: &Identity, local_path: &Path) -> Result<FileHandle> {
        let handle = |path: String| FileHandle {
            role: FileRole::Shared,
            local_name: identity.local_name.clone(),
            path,
            size: identity.size,
            crc32c: identity.crc32c,
        };
        let mut taken_on_disk = BTreeSet::new();
        loop {
            // Decide under the locks: reuse, or reserve a name.
            let path = {
                let mut book = self.book.lock();
                let mut inner = self.core.inner.lock();
                if inner.closed {
                    return Err(Error::Closed);
                }
                if self.kind.reuses_shared_files() {
                    if let Some((path, durable)) = inner.registry.reference(identity) {
                        if !book.referenced.insert(path.clone()) {
                            // Already held through another identity's handle: one
                            // reference per checkpoint.
                            inner.registry.release(&path);
                        }
                        drop(inner);
                        book.sync_shared |= !durable;
                        book.count_reference(identity.size);
                        return Ok(handle(path));
                    }
                }
                let path = inner.registry.reserve(identity, self.id, &taken_on_disk)?;
                book.referenced.insert(path.clone());
                path
            };
            // The I/O, with no lock held.
            match self.place_new_shared(&path, local_path, identity.size) {
                Ok(Attempt::Placed) => return Ok(handle(path)),
                Ok(Attempt::NameTaken(path)) => {
                    self.book.lock().referenced.remove(&path);
                    self.core.inner.lock().registry.unreserve(&path);
                    taken_on_disk.insert(path);
                }
                Err(e) => {
                    let unreferenced = {
                        let mut book = self.book.lock();
                        book.referenced.remove(&path);
                        self.core.inner.lock().registry.release(&path)
                    };
                    if unreferenced {
                        // Whatever the failed placement left under its reserved name.
                        let _ = self.core.storage.delete_file(&path);
                        self.core.inner.lock().registry.forget(&path);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Places `local_path` at the reserved `path` and records it as placed.
    fn place_new_shared(&self, path: &str, local_path: &Path, size: u64) -> Result<Attempt> {
        let storage = self.core.storage.as_ref();
        // The registry knows no file of this name; one found on disk is not ours (left by
        // a crash, or someone else's): never written over.
        if storage.exists(path)? {
            return Ok(Attempt::NameTaken(path.to_string()));
        }
        let placement = match place_checked(storage, local_path, path, size) {
            Ok(p) => p,
            Err(e) if e.io_kind() == Some(io::ErrorKind::AlreadyExists) => {
                return Ok(Attempt::NameTaken(path.to_string()))
            }
            Err(e) => return Err(e),
        };
        let mut book = self.book.lock();
        self.core.inner.lock().registry.placed(path);
        book.sync_shared = true;
        book.count_placement(size, placement);
        drop(book);
        Ok(Attempt::Placed)
    }

    /// Reserves the private file `name` (relative to `chk-<N>/`): checks the name, creates
    /// its directory below `chk-<N>/` if it has one. Returns its path relative to the job
    /// directory; the caller gives the reservation back with `unreserve` if it fails.
    fn reserve_private(&self, name: &str) -> Result<String> {
        self.check_open()?;
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
        let dir = self.id.dir_name();
        let rel = format!("{dir}/{name}");
        let parent = rel
            .rsplit_once('/')
            .map(|(p, _)| p.to_string())
            .filter(|p| *p != dir);
        {
            let mut book = self.book.lock();
            if book.private_taken(&rel) {
                return Err(Error::InvalidArgument(format!(
                    "private file {rel} was already placed (or its name collides with the \
                     staging name of one being written)"
                )));
            }
            book.private.insert(rel.clone());
            if let Some(p) = &parent {
                // Every directory between `chk-<N>/` and the file is synced at commit.
                let mut d = p.as_str();
                while d != dir {
                    book.private_dirs.insert(d.to_string());
                    d = d.rsplit_once('/').map_or(dir.as_str(), |(up, _)| up);
                }
            }
        }
        if let Some(p) = parent {
            if let Err(e) = self.core.storage.create_dir_all(&p) {
                self.unreserve(&rel);
                return Err(e);
            }
        }
        Ok(rel)
    }

    fn unreserve(&self, rel: &str) {
        self.book.lock().private.remove(rel);
    }

    /// Starts writing the private file `chk-<N>/<name>` as a stream: the writer computes
    /// its size and crc32c as the bytes pass, and [`PrivateFileWriter::finish`] makes it
    /// durable (fsync, rename; its directory is synced before `_metadata` is written) and
    /// returns its handle. Dropped unfinished, it removes what it wrote.
    pub fn private_writer(&self, name: &str) -> Result<PrivateFileWriter<'_>> {
        let rel = self.reserve_private(name)?;
        match self.core.storage.create_staged(&rel) {
            Ok(file) => Ok(PrivateFileWriter {
                pending: self,
                name: name.to_string(),
                rel,
                file: Some(file),
                size: 0,
                crc32c: 0,
            }),
            Err(e) => {
                self.unreserve(&rel);
                Err(e)
            }
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.core.inner.lock().closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Every file handle of `content` must come from this checkpoint.
    fn check_handles(&self, book: &Book, content: &CheckpointContent) -> Result<()> {
        let inner = self.core.inner.lock();
        for s in &content.operator_states {
            for f in s.file_handles() {
                let ok = match f.role {
                    FileRole::Shared => {
                        book.referenced.contains(&f.path)
                            && inner
                                .registry
                                .shared
                                .get(&f.path)
                                .is_some_and(|e| e.size == f.size && e.crc32c == f.crc32c)
                    }
                    FileRole::Private => book.private.contains(&f.path),
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
        let stats = self.book.get_mut().stats;
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
            stats.files_placed.to_string(),
        ));
        properties.push((
            PLACED_BYTES_PROPERTY.to_string(),
            stats.bytes_placed.to_string(),
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
        let core = Arc::clone(&self.core);
        let storage = core.storage.as_ref();
        let rel = metadata_rel(self.id);
        let path = storage.display_path(&rel);
        let stats = self.book.get_mut().stats;
        // No placement can be under way: they all borrow `self`.
        self.check_handles(&self.book.lock(), content)?;
        metadata.validate(&path)?;
        let bytes = metadata.encode();
        let dir = self.id.dir_name();
        let (sync_shared, private_dirs) = {
            let book = self.book.get_mut();
            (book.sync_shared, std::mem::take(&mut book.private_dirs))
        };
        if sync_shared {
            storage.sync_dir(SHARED_DIR)?;
        }
        // Deepest first, so each directory's entry in its parent is synced after it.
        for d in private_dirs.iter().rev() {
            storage.sync_dir(d)?;
        }
        storage.sync_dir(&dir)?;
        crate::failpoint::hit("checkpoint.files_placed");
        let unreferenced = {
            let _open = core.lifecycle.read();
            if core.inner.lock().closed {
                return Err(Error::Closed);
            }
            storage.write_atomic(&rel, &bytes)?;
            crate::failpoint::hit("checkpoint.metadata_written");
            // Durable: the checkpoint exists. Nothing below may fail it.
            self.finished = true;
            let referenced = std::mem::take(&mut self.book.get_mut().referenced);
            let mut inner = core.inner.lock();
            inner.pending.remove(&self.id);
            let kept: BTreeSet<&str> = metadata.shared_paths().into_iter().collect();
            let mut unreferenced = Vec::new();
            for p in referenced {
                if kept.contains(p.as_str()) {
                    inner.registry.mark_durable(&p);
                } else if inner.registry.release(&p) {
                    unreferenced.push(p);
                }
            }
            if self.kind != CheckpointKind::Incremental {
                inner.force_full_next = false;
            }
            inner.completed.insert(
                self.id,
                Completed {
                    metadata: metadata.clone(),
                    stats,
                    owned: true,
                },
            );
            unreferenced
        };
        let mut retention = RetentionReport::default();
        delete_released(&core.inner, storage, &unreferenced, &mut retention.errors);
        retention.shared_files_deleted.extend(unreferenced);
        let more = retain(&core.inner, storage, core.config.num_retained);
        retention.discarded.extend(more.discarded);
        retention
            .shared_files_deleted
            .extend(more.shared_files_deleted);
        retention.errors.extend(more.errors);
        crate::failpoint::hit("checkpoint.completed");
        Ok(CompletedCheckpoint {
            metadata,
            stats,
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
        let core = Arc::clone(&self.core);
        let storage = core.storage.as_ref();
        let referenced = std::mem::take(&mut self.book.get_mut().referenced);
        let unreferenced: Vec<String> = {
            let mut inner = core.inner.lock();
            inner.pending.remove(&self.id);
            referenced
                .into_iter()
                .filter(|p| inner.registry.release(p))
                .collect()
        };
        let dir_result = storage.delete_dir(&self.id.dir_name());
        let mut errors = Vec::new();
        delete_released(&core.inner, storage, &unreferenced, &mut errors);
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

/// A private file of a pending checkpoint being written as a stream (see
/// [`PendingCheckpoint::private_writer`]). Implements [`std::io::Write`]; the size and
/// crc32c of the handle are computed from the bytes as they pass.
#[derive(Debug)]
pub struct PrivateFileWriter<'a> {
    pending: &'a PendingCheckpoint,
    name: String,
    rel: String,
    file: Option<Box<dyn StagedFile>>,
    size: u64,
    crc32c: u32,
}

impl PrivateFileWriter<'_> {
    /// Appends `data`.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(Error::InvalidArgument(format!(
                "private file {} failed earlier and cannot be written",
                self.rel
            )));
        };
        if let Err(e) = f.append(data) {
            // A failed append leaves the file in an unknown state: it can only be dropped.
            self.file = None;
            return Err(e);
        }
        self.size += data.len() as u64;
        self.crc32c = codec::crc32c_extend(self.crc32c, data);
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Makes the file durable under its name (fsync, rename; its directory is synced
    /// before the checkpoint's `_metadata` is written) and returns its handle.
    pub fn finish(mut self) -> Result<FileHandle> {
        let Some(f) = self.file.take() else {
            return Err(Error::InvalidArgument(format!(
                "private file {} failed earlier and cannot be finished",
                self.rel
            )));
        };
        f.persist()?;
        let handle = FileHandle {
            role: FileRole::Private,
            local_name: std::mem::take(&mut self.name),
            path: std::mem::take(&mut self.rel),
            size: self.size,
            crc32c: self.crc32c,
        };
        let mut book = self.pending.book.lock();
        book.stats.files_placed += 1;
        book.stats.files_written += 1;
        book.stats.bytes_placed = book.stats.bytes_placed.saturating_add(self.size);
        Ok(handle)
    }
}

impl PrivateWrite for PrivateFileWriter<'_> {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        PrivateFileWriter::append(self, data)
    }

    fn written(&self) -> u64 {
        self.size
    }

    fn finish(self: Box<Self>) -> Result<FileHandle> {
        PrivateFileWriter::finish(*self)
    }
}

impl io::Write for PrivateFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PrivateFileWriter<'_> {
    fn drop(&mut self) {
        if !self.rel.is_empty() {
            // Unfinished: the staged file removes itself; the name is free again.
            self.file = None;
            self.pending.unreserve(&self.rel);
        }
    }
}

impl SnapshotTarget for PendingCheckpoint {
    fn id(&self) -> CheckpointId {
        self.id
    }

    fn kind(&self) -> CheckpointKind {
        self.kind
    }

    fn private_writer(&self, name: &str) -> Result<Box<dyn PrivateWrite + '_>> {
        Ok(Box::new(PendingCheckpoint::private_writer(self, name)?))
    }

    /// Links or copies the local file `local_path` into `chk-<N>/<name>`; the handle's
    /// size and crc32c are read from the placed file.
    fn place_private(&self, local_path: &Path, name: &str) -> Result<FileHandle> {
        let rel = self.reserve_private(name)?;
        let storage = self.core.storage.as_ref();
        let placed = storage
            .place_file(local_path, &rel)
            .and_then(|placement| Ok((placement, storage.checksum(&rel, u64::MAX)?)));
        let (placement, sum) = match placed {
            Ok(x) => x,
            Err(e) => {
                let _ = storage.delete_file(&rel);
                self.unreserve(&rel);
                return Err(e);
            }
        };
        self.book.lock().count_placement(sum.size, placement);
        Ok(FileHandle {
            role: FileRole::Private,
            local_name: name.to_string(),
            path: rel,
            size: sum.size,
            crc32c: sum.crc32c,
        })
    }

    /// Adds the immutable local file `local_path` (named `local_name` in the owner's
    /// working directory, `size` bytes, crc32c `crc32c`) to the checkpoint's shared files.
    ///
    /// When a retained checkpoint, or this one, already references a file with the same
    /// owner, name, size and crc32c, returns a handle to it without any I/O. Otherwise (and
    /// always for a full checkpoint or savepoint) links or copies it into `shared/` under a
    /// new name `<owner>-<stem>-<crc32c>.<ext>` and checks its size.
    ///
    /// Threads placing the same file into this checkpoint at once get the same handle: one
    /// places it, the others wait for it and count it as referenced.
    fn place_shared(
        &self,
        owner: &str,
        local_path: &Path,
        local_name: &str,
        size: u64,
        crc32c: u32,
    ) -> Result<FileHandle> {
        check_local_name(local_name)?;
        let identity = Identity {
            owner: sanitize(owner, false, OWNER_NAME_MAX_BYTES),
            local_name: local_name.to_string(),
            size,
            crc32c,
        };
        let mut guard = loop {
            let mut book = self.book.lock();
            match book.own.get(&identity) {
                Some(Slot::Placed(h)) => {
                    let h = h.clone();
                    book.count_reference(size);
                    return Ok(h);
                }
                Some(Slot::Placing(flight)) => {
                    let flight = Arc::clone(flight);
                    drop(book);
                    flight.wait();
                }
                None => {
                    let flight = Arc::new(Flight::default());
                    book.own
                        .insert(identity.clone(), Slot::Placing(Arc::clone(&flight)));
                    break FlightGuard {
                        book: &self.book,
                        identity: identity.clone(),
                        flight,
                        placed: None,
                    };
                }
            }
        };
        let h = self.place_shared_once(&identity, local_path)?;
        guard.placed = Some(h.clone());
        Ok(h)
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
    use std::io::Write;
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::checkpoint::testutil::{content, Fixture};
    use crate::checkpoint::verify::verify;
    use crate::checkpoint::CheckpointKind::Incremental;
    use crate::checkpoint::CheckpointStore;

    const THREADS: usize = 4;
    const COMMON: (&str, &[u8]) = ("000100.sst", b"the same table in every subtask");

    /// Every file under the job directory, relative to it (the lock file aside).
    fn all_files(fx: &Fixture) -> BTreeSet<String> {
        let root = fx.job_dir();
        let mut out = BTreeSet::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        out.remove(crate::checkpoint::JOB_LOCK_FILE);
        out
    }

    /// Subtask `i` of a checkpoint: its own table, the table every subtask has, a private
    /// file written whole and one written as a stream.
    fn place_subtask(fx: &Fixture, pending: &PendingCheckpoint, i: usize) -> Vec<FileHandle> {
        let own_name = format!("00000{i}.sst");
        let own_bytes = format!("table of subtask {i}").repeat(i + 1);
        let own = fx.work_dir().join(&own_name);
        let common = fx.work_dir().join(COMMON.0);
        let mut handles = vec![
            pending
                .place_shared(
                    &format!("op_{i}"),
                    &own,
                    &own_name,
                    own_bytes.len() as u64,
                    codec::crc32c(own_bytes.as_bytes()),
                )
                .unwrap(),
            pending
                .place_shared(
                    "op_0",
                    &common,
                    COMMON.0,
                    COMMON.1.len() as u64,
                    codec::crc32c(COMMON.1),
                )
                .unwrap(),
            pending
                .write_private(&format!("op_{i}.manifest"), own_bytes.as_bytes())
                .unwrap(),
        ];
        let mut w = pending.private_writer(&format!("op_{i}/state")).unwrap();
        for k in 0..100 {
            writeln!(w, "subtask {i} line {k}").unwrap();
        }
        handles.push(w.finish().unwrap());
        handles
    }

    fn write_local_files(fx: &Fixture) {
        for i in 0..THREADS {
            let bytes = format!("table of subtask {i}").repeat(i + 1);
            fx.state_file(&format!("00000{i}.sst"), bytes.as_bytes());
        }
        fx.state_file(COMMON.0, COMMON.1);
    }

    fn place_from_threads(fx: &Fixture, pending: &PendingCheckpoint) -> Vec<Vec<FileHandle>> {
        let barrier = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|i| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        place_subtask(fx, pending, i)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        })
    }

    #[test]
    fn four_threads_place_into_one_checkpoint_and_it_verifies() {
        let fx = Fixture::new();
        write_local_files(&fx);
        let store = fx.retaining(1);
        let pending = store.begin(CheckpointId(1), Incremental).unwrap();
        let per_thread = place_from_threads(&fx, &pending);
        // The table every subtask placed is one file, under one name.
        let common: BTreeSet<&str> = per_thread.iter().map(|h| h[1].path.as_str()).collect();
        assert_eq!(common.len(), 1, "{common:?}");
        let s = pending.stats();
        assert_eq!(s.files_placed, (THREADS + 1 + 2 * THREADS) as u64, "{s:?}");
        assert_eq!(s.files_referenced, (THREADS - 1) as u64, "{s:?}");
        assert_eq!(s.files_written, (2 * THREADS) as u64, "{s:?}");
        let handles: Vec<FileHandle> = per_thread.into_iter().flatten().collect();
        let done = pending.commit(content(handles)).unwrap();
        assert!(verify(store.storage().as_ref(), &done.metadata).is_ok());
        assert_eq!(fx.shared_count(), THREADS + 1);
        let files = all_files(&fx);
        assert!(
            !files.iter().any(|f| f.ends_with(".tmp")),
            "no staging file is left: {files:?}"
        );
        drop(store);
        // A fresh open finds nothing to clean and the checkpoint whole.
        let store = fx.retaining(1);
        assert!(store.open_report().orphans_deleted.is_empty());
        fx.assert_all_verify(&store);
    }

    #[test]
    fn abort_after_concurrent_placement_leaves_no_new_file() {
        let fx = Fixture::new();
        write_local_files(&fx);
        let store = fx.retaining(1);
        // An earlier checkpoint holds the common table, which the next one reuses.
        fx.checkpoint(&store, 1, Incremental, &[COMMON]);
        let before = all_files(&fx);
        let pending = store.begin(CheckpointId(2), Incremental).unwrap();
        let per_thread = place_from_threads(&fx, &pending);
        assert_eq!(pending.stats().files_referenced, THREADS as u64);
        assert!(per_thread.iter().all(|h| before.contains(&h[1].path)));
        pending.abort().unwrap();
        assert_eq!(all_files(&fx), before);
        fx.assert_all_verify(&store);
        assert!(store.orphans().unwrap().is_empty());
    }

    #[test]
    fn a_name_taken_on_disk_by_an_unknown_file_is_passed_over() {
        let fx = Fixture::new();
        write_local_files(&fx);
        let store = fx.retaining(1);
        let first_name = format!(
            "{SHARED_DIR}/{}",
            super::super::registry::shared_name("op_0", COMMON.0, codec::crc32c(COMMON.1), "")
        );
        let stray = fx.job_dir().join(&first_name);
        std::fs::write(&stray, b"not ours").unwrap();
        let pending = store.begin(CheckpointId(1), Incremental).unwrap();
        let common = fx.work_dir().join(COMMON.0);
        let h = pending
            .place_shared(
                "op_0",
                &common,
                COMMON.0,
                COMMON.1.len() as u64,
                codec::crc32c(COMMON.1),
            )
            .unwrap();
        assert_ne!(h.path, first_name);
        let done = pending.commit(content(vec![h])).unwrap();
        assert!(verify(store.storage().as_ref(), &done.metadata).is_ok());
        assert_eq!(std::fs::read(&stray).unwrap(), b"not ours");
    }

    #[test]
    fn dropped_private_writer_removes_its_file_and_frees_the_name() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let pending = store.begin(CheckpointId(1), Incremental).unwrap();
        let mut w = pending.private_writer("big").unwrap();
        w.write_all(&[7u8; 5000]).unwrap();
        assert!(pending.private_writer("big").is_err(), "name in use");
        assert!(
            pending.write_private("big.tmp", b"x").is_err(),
            "staging name in use"
        );
        drop(w);
        assert!(!fx.job_dir().join("chk-1/big.tmp").exists());
        assert!(!fx.job_dir().join("chk-1/big").exists());
        let mut w = pending.private_writer("big").unwrap();
        w.write_all(b"small").unwrap();
        let h = w.finish().unwrap();
        assert_eq!((h.size, h.crc32c), (5, codec::crc32c(b"small")));
        let done = pending.commit(content(vec![h])).unwrap();
        assert!(verify(store.storage().as_ref(), &done.metadata).is_ok());
    }

    /// Two threads checkpoint at once, every checkpoint reusing the same table, while
    /// retention (one retained) deletes the checkpoints they subsume: every retained
    /// checkpoint stays whole and nothing is left unreferenced.
    #[test]
    fn concurrent_checkpoints_and_retention_keep_reused_files() {
        let fx = Fixture::new();
        write_local_files(&fx);
        let store: CheckpointStore = fx.retaining(1);
        let next_id = StdMutex::new(0u64);
        std::thread::scope(|s| {
            for t in 0..2 {
                let (fx, store, next_id) = (&fx, &store, &next_id);
                s.spawn(move || {
                    for _ in 0..15 {
                        let pending = {
                            let mut id = next_id.lock().unwrap();
                            *id += 1;
                            store.begin(CheckpointId(*id), Incremental).unwrap()
                        };
                        let mut handles = place_subtask(fx, &pending, t);
                        handles.truncate(2);
                        let done = pending.commit(content(handles)).unwrap();
                        assert!(done.retention.errors.is_empty(), "{:?}", done.retention);
                    }
                });
            }
        });
        fx.assert_all_verify(&store);
        assert!(store.orphans().unwrap().is_empty());
        assert_eq!(store.list().len(), 1);
        drop(store);
        let store = fx.retaining(1);
        assert!(store.open_report().orphans_deleted.is_empty());
        fx.assert_all_verify(&store);
    }
}
