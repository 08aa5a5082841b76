//! A checkpoint being built: the files placed into it, and its commit (writing
//! `_metadata`, from which moment it exists) or abort.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ids::{CheckpointId, CheckpointKind};
use super::metadata::{
    FileHandle, FileRole, Metadata, OperatorSubtaskState, SourceOffset, METADATA_FILE_NAME,
};
use super::path::{lexical_problem, SHARED_DIR};
use super::registry::{
    sanitize, shared_name, Identity, SharedEntry, NAME_ATTEMPTS_MAX, OWNER_NAME_MAX_BYTES,
};
use super::retention::{delete_shared, retain, RetentionReport};
use super::stats::{CheckpointStats, PLACED_BYTES_PROPERTY, PLACED_FILES_PROPERTY};
use super::storage::CheckpointStorage;
use super::store::{metadata_rel, now_ms, Completed, Core, Inner};
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
    /// A new pending checkpoint of the store `core`; the caller has registered `id` as
    /// pending and created its directory.
    pub(super) fn new(core: Arc<Core>, id: CheckpointId, kind: CheckpointKind) -> Self {
        PendingCheckpoint {
            core,
            id,
            kind,
            trigger_timestamp_ms: now_ms(),
            referenced: BTreeSet::new(),
            own: HashMap::new(),
            private: BTreeSet::new(),
            placed_shared: false,
            stats: CheckpointStats::default(),
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
                if let Some(path) = inner.registry.by_identity.get(&identity).cloned() {
                    if let Some(e) = inner.registry.shared.get_mut(&path) {
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
            inner.registry.shared.insert(
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
                    .registry
                    .by_identity
                    .insert(identity.clone(), path);
                self.own.insert(identity, h.clone());
                self.count_placement(size, placement);
                Ok(h)
            }
            Err(e) => {
                self.referenced.remove(&path);
                let unreferenced = self.core.inner.lock().registry.release(&path);
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
        let taken = |p: &str| -> Result<bool> {
            Ok(inner.registry.shared.contains_key(p) || storage.exists(p)?)
        };
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
                                .registry
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
            if !kept.contains(&p) && inner.registry.release(&p) {
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
            if inner.registry.release(&p) {
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
