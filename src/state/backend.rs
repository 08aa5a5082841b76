//! State backends behind one interface, as Flink's: a [`StateBackend`] creates, for one
//! operator subtask and its key groups, a keyed state backend and an operator state store,
//! fresh or restored from the handles of a checkpoint's `_metadata` (with the same or
//! another parallelism). Each snapshots in two parts: a synchronous part that copies no
//! keyed state (processing goes on as soon as it returns), then an asynchronous part that
//! writes the bytes into the pending checkpoint and returns the handles for `_metadata`.
//!
//! | backend | working state | checkpoint | Flink's name |
//! | --- | --- | --- | --- |
//! | [`MemoryStateBackend`] (`memory`) | heap | inline in `_metadata`, up to a size limit (default 5 MiB) | `MemoryStateBackend`; `hashmap` + `jobmanager` storage |
//! | [`FsStateBackend`] (`filesystem`) | heap | a file per subtask in `chk-N/`; inline below a threshold (default 20 KiB) | `FsStateBackend`; `hashmap` + `filesystem` storage |
//!
//! The caller (the stream layer) never matches on which backend it has.
//!
//! Savepoints: [`CheckpointedKeyedState::snapshot_sync_for`] takes the synchronous part a
//! checkpoint or savepoint kind needs: the backend's own snapshot (checkpoints, native
//! savepoints) or a canonical one ([`CheckpointedKeyedState::snapshot_sync_canonical`],
//! `format-spec/savepoint.md`), which every backend restores, with any parallelism. Its
//! asynchronous part writes into any [`SnapshotTarget`]: a checkpoint of the job
//! directory, or a self-contained savepoint ([`crate::checkpoint::PendingSavepoint`]).

use std::fmt::Debug;
use std::io::Write;
use std::sync::Arc;

use super::heap::{HeapKeyedBackend, HeapSnapshot, KeyGroupsData, KeyGroupsInput};
use super::key_groups::MaxParallelism;
use super::keyed::{KeyedStateBackend, SystemClock, TtlClock};
use super::operator::{
    OperatorSnapshot, OperatorStateSource, OperatorStateStore, Redistribution, WrittenState,
};
use crate::checkpoint::target::check_format;
use crate::checkpoint::{
    CheckpointId, CheckpointKind, CheckpointStorage, FileHandle, KeyGroupRange, KeyedState,
    KeyedStateHandle, NamedOperatorState, OperatorStateHandle, OperatorSubtaskState, PrivateWrite,
    RedistributionMode, SnapshotTarget, StateData,
};
use crate::codec::crc32c;
use crate::error::{Error, Result};

/// Flink's default limit of the memory backend's snapshot of one subtask
/// (`MemoryStateBackend.DEFAULT_MAX_STATE_SIZE`): 5 MiB.
pub const DEFAULT_MAX_STATE_SIZE: u64 = 5 << 20;

/// Flink's default size below which state goes inline into `_metadata` instead of a file
/// (`state.storage.fs.memory-threshold`): 20 KiB.
pub const DEFAULT_INLINE_THRESHOLD: u64 = 20 << 10;

/// The largest snapshot file a heap backend reads back (a hostile size is refused before
/// anything is allocated).
pub const MAX_SNAPSHOT_FILE_BYTES: u64 = 64 << 30;

/// Keyed state of a heap backend's subtask from this size up is restored a key group at a
/// time ([`HeapKeyedBackend::restore_inputs`] with `lazy`): records flow once the first
/// key groups they need are read, and the rest loads on a thread of its own. Smaller
/// state is read whole, its file's crc32c checked, before the subtask starts.
pub const LAZY_RESTORE_MIN_BYTES: u64 = 16 << 20;

/// Which operator subtask a backend serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskInfo {
    /// The operator's stable id (Flink's `uid`).
    pub operator_id: String,
    /// The subtask's index, below `parallelism`.
    pub subtask_index: u32,
    /// The operator's parallelism.
    pub parallelism: u32,
    /// The operator's number of key groups.
    pub max_parallelism: MaxParallelism,
}

impl SubtaskInfo {
    /// The key groups the subtask owns (Flink's contiguous range).
    pub fn key_groups(&self) -> Result<KeyGroupRange> {
        self.max_parallelism
            .range_for_subtask(self.parallelism, self.subtask_index)
    }

    /// The subtask as the LSM snapshot code names it.
    fn lsm_subtask(&self, key_groups: KeyGroupRange) -> super::lsm_snapshot::SubtaskId {
        super::lsm_snapshot::SubtaskId {
            operator_id: self.operator_id.clone(),
            subtask_index: self.subtask_index,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism.get(),
            key_groups,
        }
    }

    /// `<operator>_<index>`, for file names and errors.
    pub fn label(&self) -> String {
        format!("{}_{}", self.operator_id, self.subtask_index)
    }
}

/// What a restore reads: every subtask state of the operator in one checkpoint, and the
/// storage holding their files.
#[derive(Clone, Copy)]
pub struct RestoreFrom<'a> {
    /// The checkpoint's id.
    pub checkpoint_id: CheckpointId,
    /// The checkpoint's storage (its job directory).
    pub storage: &'a dyn CheckpointStorage,
    /// The operator's subtask states, one per old subtask.
    pub subtasks: &'a [OperatorSubtaskState],
}

impl Debug for RestoreFrom<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreFrom")
            .field("subtasks", &self.subtasks.len())
            .finish()
    }
}

/// A subtask's keyed state, with its snapshots.
pub trait CheckpointedKeyedState: Send {
    /// The state itself.
    fn backend(&mut self) -> &mut dyn KeyedStateBackend;

    /// The synchronous part of a snapshot in the backend's own format (checkpoints and
    /// native savepoints): copies no state.
    fn snapshot_sync(&mut self) -> Result<Box<dyn KeyedSnapshot>>;

    /// The synchronous part of a snapshot in the canonical savepoint format
    /// (`format-spec/savepoint.md`), which every backend restores with any parallelism:
    /// copies no state either. Its asynchronous part writes into a canonical savepoint.
    fn snapshot_sync_canonical(&mut self) -> Result<Box<dyn KeyedSnapshot>>;

    /// The synchronous part of a snapshot for a checkpoint or savepoint of `kind`:
    /// canonical for a canonical savepoint, the backend's own otherwise.
    fn snapshot_sync_for(&mut self, kind: CheckpointKind) -> Result<Box<dyn KeyedSnapshot>> {
        match kind {
            CheckpointKind::CanonicalSavepoint => self.snapshot_sync_canonical(),
            CheckpointKind::Incremental | CheckpointKind::Full | CheckpointKind::Savepoint => {
                self.snapshot_sync()
            }
        }
    }
}

/// The asynchronous part of a keyed snapshot.
pub trait KeyedSnapshot: Send {
    /// Writes the snapshot into `target` (a checkpoint or a savepoint) and describes it.
    /// Several subtasks write into one target at once.
    fn write(self: Box<Self>, target: &dyn SnapshotTarget) -> Result<Vec<KeyedStateHandle>>;
}

/// One interface for every state backend.
pub trait StateBackend: Send + Sync + Debug {
    /// The backend's name, recorded in every handle it writes.
    fn name(&self) -> &'static str;

    /// The keyed state of subtask `info`, restored from `restore` if given (any old
    /// parallelism: each old handle's key groups that `info` owns are read).
    fn keyed_state(
        &self,
        info: &SubtaskInfo,
        restore: Option<RestoreFrom<'_>>,
    ) -> Result<Box<dyn CheckpointedKeyedState>>;

    /// The operator state of subtask `info`, redistributed from `restore` if given.
    fn operator_state(
        &self,
        info: &SubtaskInfo,
        restore: Option<RestoreFrom<'_>>,
    ) -> Result<OperatorStateStore> {
        match restore {
            None => Ok(OperatorStateStore::new()),
            Some(r) => restore_operator_state(info, r),
        }
    }

    /// Writes `snapshot` (the subtask's operator state) into `target` (a checkpoint or a
    /// savepoint: operator state has one format, which every backend reads).
    fn write_operator_state(
        &self,
        info: &SubtaskInfo,
        snapshot: &OperatorSnapshot,
        target: &dyn SnapshotTarget,
    ) -> Result<Vec<OperatorStateHandle>>;
}

/// Where a heap backend's snapshots go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeapStorage {
    /// Inline in `_metadata`, failing above the limit.
    JobManager { max_state_size: u64 },
    /// A private file of the checkpoint, inline below the threshold.
    Filesystem { inline_threshold: u64 },
}

impl HeapStorage {
    fn name(self) -> &'static str {
        match self {
            HeapStorage::JobManager { .. } => "memory",
            HeapStorage::Filesystem { .. } => "filesystem",
        }
    }

    /// Runs `write`, which streams a snapshot into the writer it is given, and puts the
    /// bytes where this storage keeps them: inline (refused above the memory backend's
    /// limit, as soon as the limit is passed), or the private file `name` of `pending`.
    /// The filesystem storage holds the bytes in memory only until they reach the inline
    /// threshold; from then on they stream into the file.
    fn write<T>(
        self,
        info: &SubtaskInfo,
        what: &str,
        name: &str,
        pending: &dyn SnapshotTarget,
        write: impl FnOnce(&mut dyn Write) -> Result<T>,
    ) -> Result<(StateData, T)> {
        let mut sink = SnapshotSink {
            storage: self,
            info,
            what,
            name,
            pending,
            to: Spill::Memory(Vec::new()),
            failure: None,
        };
        let written = match write(&mut sink) {
            Ok(w) => w,
            // The sink's own error (over the limit, the file) says more than the I/O error
            // the snapshot writer wrapped it in.
            Err(e) => return Err(sink.failure.take().unwrap_or(e)),
        };
        let data = match sink.to {
            Spill::Memory(bytes) => StateData::Inline(bytes),
            Spill::File(w) => StateData::File(w.finish()?),
        };
        Ok((data, written))
    }
}

/// Where a heap snapshot's bytes are while it is written.
enum Spill<'a> {
    /// Below the inline threshold (or the memory backend): in memory.
    Memory(Vec<u8>),
    /// At or over the inline threshold: streaming into a private file.
    File(Box<dyn PrivateWrite + 'a>),
}

/// The writer a heap snapshot is streamed into (see [`HeapStorage::write`]).
struct SnapshotSink<'a> {
    storage: HeapStorage,
    info: &'a SubtaskInfo,
    what: &'a str,
    name: &'a str,
    pending: &'a dyn SnapshotTarget,
    to: Spill<'a>,
    /// The error behind the last failed write.
    failure: Option<Error>,
}

impl SnapshotSink<'_> {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        let buffered = match &mut self.to {
            Spill::File(w) => return w.append(data),
            Spill::Memory(bytes) => bytes,
        };
        let size = (buffered.len() + data.len()) as u64;
        match self.storage {
            HeapStorage::JobManager { max_state_size } if size > max_state_size => {
                Err(Error::InvalidArgument(format!(
                    "the {} snapshot of operator {:?} subtask {} is over {max_state_size} \
                     bytes, the memory backend's limit (state.backend.memory.max-state-size); \
                     use the filesystem or lsm backend",
                    self.what, self.info.operator_id, self.info.subtask_index
                )))
            }
            // Inline only while smaller than the threshold: from here on, a file.
            HeapStorage::Filesystem { inline_threshold } if size >= inline_threshold => {
                let mut w = self.pending.private_writer(self.name)?;
                w.append(buffered)?;
                w.append(data)?;
                self.to = Spill::File(w);
                Ok(())
            }
            _ => {
                buffered.extend_from_slice(data);
                Ok(())
            }
        }
    }
}

impl Write for SnapshotSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.append(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                let io = std::io::Error::other(e.to_string());
                self.failure = Some(e);
                Err(io)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The clock a backend measures state time to live with (Flink's `TtlTimeProvider`): the
/// system clock unless a test injects one.
#[derive(Clone)]
pub struct BackendClock(Arc<dyn TtlClock>);

impl BackendClock {
    /// The clock.
    pub fn get(&self) -> &Arc<dyn TtlClock> {
        &self.0
    }
}

impl Default for BackendClock {
    fn default() -> Self {
        BackendClock(Arc::new(SystemClock))
    }
}

impl Debug for BackendClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendClock")
    }
}

/// Flink's `MemoryStateBackend`: heap state, snapshots inline in `_metadata`.
#[derive(Debug, Clone)]
pub struct MemoryStateBackend {
    max_state_size: u64,
    clock: BackendClock,
}

impl MemoryStateBackend {
    /// With the default limit (5 MiB per subtask snapshot).
    pub fn new() -> Self {
        Self::with_max_state_size(DEFAULT_MAX_STATE_SIZE)
    }

    /// With a limit of `bytes` per subtask snapshot.
    pub fn with_max_state_size(bytes: u64) -> Self {
        MemoryStateBackend {
            max_state_size: bytes,
            clock: BackendClock::default(),
        }
    }

    /// Snapshots leave out the values expired by `clock` (tests inject one; the system
    /// clock by default).
    pub fn with_ttl_clock(mut self, clock: Arc<dyn TtlClock>) -> Self {
        self.clock = BackendClock(clock);
        self
    }
}

impl Default for MemoryStateBackend {
    fn default() -> Self {
        MemoryStateBackend::new()
    }
}

/// Flink's `FsStateBackend`: heap state, snapshots in a file per subtask.
#[derive(Debug, Clone)]
pub struct FsStateBackend {
    inline_threshold: u64,
    clock: BackendClock,
}

impl FsStateBackend {
    /// With the default inline threshold (20 KiB).
    pub fn new() -> Self {
        Self::with_inline_threshold(DEFAULT_INLINE_THRESHOLD)
    }

    /// Snapshots smaller than `bytes` go inline into `_metadata`.
    pub fn with_inline_threshold(bytes: u64) -> Self {
        FsStateBackend {
            inline_threshold: bytes,
            clock: BackendClock::default(),
        }
    }

    /// Snapshots leave out the values expired by `clock` (tests inject one; the system
    /// clock by default).
    pub fn with_ttl_clock(mut self, clock: Arc<dyn TtlClock>) -> Self {
        self.clock = BackendClock(clock);
        self
    }
}

impl Default for FsStateBackend {
    fn default() -> Self {
        FsStateBackend::new()
    }
}

macro_rules! heap_backend {
    ($ty:ty, $storage:expr) => {
        impl StateBackend for $ty {
            fn name(&self) -> &'static str {
                let s: fn(&$ty) -> HeapStorage = $storage;
                s(self).name()
            }

            fn keyed_state(
                &self,
                info: &SubtaskInfo,
                restore: Option<RestoreFrom<'_>>,
            ) -> Result<Box<dyn CheckpointedKeyedState>> {
                let s: fn(&$ty) -> HeapStorage = $storage;
                heap_keyed_state(s(self), &self.clock, info, restore)
            }

            fn write_operator_state(
                &self,
                info: &SubtaskInfo,
                snapshot: &OperatorSnapshot,
                pending: &dyn SnapshotTarget,
            ) -> Result<Vec<OperatorStateHandle>> {
                let s: fn(&$ty) -> HeapStorage = $storage;
                let s = s(self);
                write_operator_state(s, s.name(), info, snapshot, pending)
            }
        }
    };
}

heap_backend!(MemoryStateBackend, |b| HeapStorage::JobManager {
    max_state_size: b.max_state_size
});
heap_backend!(FsStateBackend, |b| HeapStorage::Filesystem {
    inline_threshold: b.inline_threshold
});

struct HeapKeyed {
    storage: HeapStorage,
    clock: BackendClock,
    info: SubtaskInfo,
    backend: HeapKeyedBackend,
}

struct HeapKeyedSnapshot {
    storage: HeapStorage,
    info: SubtaskInfo,
    snapshot: HeapSnapshot,
}

/// A heap backend's canonical snapshot: the same frozen view, written in the canonical
/// format.
struct HeapCanonicalSnapshot {
    backend: &'static str,
    info: SubtaskInfo,
    snapshot: HeapSnapshot,
}

impl CheckpointedKeyedState for HeapKeyed {
    fn backend(&mut self) -> &mut dyn KeyedStateBackend {
        &mut self.backend
    }

    fn snapshot_sync(&mut self) -> Result<Box<dyn KeyedSnapshot>> {
        Ok(Box::new(HeapKeyedSnapshot {
            storage: self.storage,
            info: self.info.clone(),
            snapshot: self.backend.snapshot_at(self.clock.get().as_ref()),
        }))
    }

    fn snapshot_sync_canonical(&mut self) -> Result<Box<dyn KeyedSnapshot>> {
        Ok(Box::new(HeapCanonicalSnapshot {
            backend: self.storage.name(),
            info: self.info.clone(),
            snapshot: self.backend.snapshot_at(self.clock.get().as_ref()),
        }))
    }
}

impl KeyedSnapshot for HeapCanonicalSnapshot {
    fn write(self: Box<Self>, target: &dyn SnapshotTarget) -> Result<Vec<KeyedStateHandle>> {
        write_canonical(
            target,
            &self.info.label(),
            self.backend,
            &mut |out, name| Ok(self.snapshot.write_canonical(out, name, self.backend)?.1),
        )
    }
}

/// Writes a canonical snapshot into `target` as the file `<operator>_<index>.canonical`
/// through `write` (given the file's writer and name) and describes it.
fn write_canonical(
    target: &dyn SnapshotTarget,
    label: &str,
    backend: &str,
    write: &mut dyn FnMut(
        &mut dyn std::io::Write,
        &str,
    ) -> Result<super::savepoint::CanonicalWritten>,
) -> Result<Vec<KeyedStateHandle>> {
    check_format(target, true)?;
    let name = format!("{label}.canonical");
    let mut written = None;
    let file = target.write_private_streamed(&name, &mut |out| {
        written = Some(write(out, &name)?);
        Ok(())
    })?;
    let written = written.ok_or_else(|| {
        Error::InvalidArgument(format!("the canonical snapshot {name} was not written"))
    })?;
    if written.bytes != file.size || written.crc32c != file.crc32c {
        return Err(Error::corruption(
            &file.path,
            0,
            format!(
                "{} bytes with crc32c {:08x} were written, the file holds {} with {:08x}",
                written.bytes, written.crc32c, file.size, file.crc32c
            ),
        ));
    }
    Ok(vec![KeyedStateHandle {
        backend: backend.to_string(),
        key_groups: written.key_groups,
        state: KeyedState::CanonicalFile {
            file,
            offsets: written.offsets,
        },
    }])
}

impl KeyedSnapshot for HeapKeyedSnapshot {
    fn write(self: Box<Self>, pending: &dyn SnapshotTarget) -> Result<Vec<KeyedStateHandle>> {
        check_format(pending, false)?;
        let name = format!("{}.keyed", self.info.label());
        let (data, written) =
            self.storage
                .write(&self.info, "keyed state", &name, pending, |out| {
                    self.snapshot.write_to(out)
                })?;
        let state = match data {
            StateData::Inline(bytes) => KeyedState::KeyGroupsInline {
                bytes,
                offsets: written.offsets,
            },
            StateData::File(file) => KeyedState::KeyGroupsFile {
                file,
                offsets: written.offsets,
            },
        };
        Ok(vec![KeyedStateHandle {
            backend: self.storage.name().to_string(),
            key_groups: written.range,
            state,
        }])
    }
}

/// Checks that the old subtasks' key-group ranges cover `range` (a checkpoint whose ranges
/// leave a gap would restore some keys as absent: an error, naming the first missing key
/// group).
fn check_coverage(info: &SubtaskInfo, range: KeyGroupRange, r: &RestoreFrom<'_>) -> Result<()> {
    let mut ranges: Vec<KeyGroupRange> = r.subtasks.iter().map(|s| s.key_groups).collect();
    ranges.sort_by_key(|k| k.start());
    let mut next = range.start();
    for k in ranges {
        if k.start() > next {
            break;
        }
        next = next.max(k.end().saturating_add(1));
        if next > range.end() {
            return Ok(());
        }
    }
    Err(Error::InvalidArgument(format!(
        "operator {:?}: the checkpoint holds no state for key group {next}, which subtask {} \
         owns: its subtasks' key groups leave a gap",
        info.operator_id, info.subtask_index
    )))
}

/// Reads a checkpoint file `f` whole, checking its size and crc32c.
fn read_checked(storage: &dyn CheckpointStorage, f: &FileHandle) -> Result<Vec<u8>> {
    let path = storage.display_path(&f.path);
    if f.size > MAX_SNAPSHOT_FILE_BYTES {
        return Err(Error::corruption(
            &path,
            0,
            format!(
                "a snapshot of {} bytes is over the limit of {MAX_SNAPSHOT_FILE_BYTES}",
                f.size
            ),
        ));
    }
    let bytes = storage.read_file(&f.path, f.size)?;
    if bytes.len() as u64 != f.size {
        return Err(Error::corruption(
            &path,
            0,
            format!(
                "file is {} bytes, _metadata records {}",
                bytes.len(),
                f.size
            ),
        ));
    }
    let crc = crc32c(&bytes);
    if crc != f.crc32c {
        return Err(Error::corruption(
            &path,
            0,
            format!("crc32c {crc:08x}, _metadata records {:08x}", f.crc32c),
        ));
    }
    Ok(bytes)
}

/// True when `r` holds canonical savepoint state.
fn is_canonical(r: &RestoreFrom<'_>) -> bool {
    r.subtasks
        .iter()
        .flat_map(|s| &s.keyed_state)
        .any(|h| matches!(h.state, KeyedState::CanonicalFile { .. }))
}

/// Checks that every old subtask of `r` has the max parallelism of `info`.
fn check_max_parallelism(info: &SubtaskInfo, r: &RestoreFrom<'_>) -> Result<()> {
    for st in r.subtasks {
        if st.max_parallelism != info.max_parallelism.get() {
            return Err(Error::InvalidArgument(format!(
                "operator {:?} was checkpointed with max parallelism {} and is restored with \
                 {}: key groups cannot be mapped (pipeline.max-parallelism must not change)",
                info.operator_id,
                st.max_parallelism,
                info.max_parallelism.get()
            )));
        }
    }
    Ok(())
}

/// Buffer of a canonical savepoint file being read.
const CANONICAL_READ_BUFFER_BYTES: usize = 256 << 10;

/// Restores into `backend` (fresh, owning the key groups of `info`) what every canonical
/// savepoint file of `r` holds of its key groups: each file that meets them is opened
/// (header and footer checked against `_metadata`), and only the sections of those key
/// groups are read. Any other kind of keyed state beside canonical state is an error.
fn restore_canonical(
    backend: &mut dyn KeyedStateBackend,
    info: &SubtaskInfo,
    r: &RestoreFrom<'_>,
) -> Result<()> {
    let range = backend.key_groups();
    check_max_parallelism(info, r)?;
    check_coverage(info, range, r)?;
    for st in r.subtasks {
        for h in &st.keyed_state {
            if h.key_groups.end() < range.start() || range.end() < h.key_groups.start() {
                continue;
            }
            let KeyedState::CanonicalFile { file, offsets } = &h.state else {
                return Err(Error::InvalidArgument(format!(
                    "subtask {} holds {} state of backend {:?} beside canonical savepoint state",
                    st.label(),
                    h.kind_name(),
                    h.backend
                )));
            };
            let name = r.storage.display_path(&file.path).display().to_string();
            match r.storage.open_read(&file.path)? {
                Some(f) => {
                    let size = f.metadata().map_err(|e| Error::io("stat", &name, e))?.len();
                    check_size(&name, size, file.size)?;
                    let src = std::io::BufReader::with_capacity(CANONICAL_READ_BUFFER_BYTES, f);
                    let reader = super::savepoint::CanonicalReader::open(&name, src, size)?;
                    restore_canonical_file(backend, h, offsets, reader)?;
                }
                None => {
                    let bytes = read_checked(r.storage, file)?;
                    let size = bytes.len() as u64;
                    let src = std::io::Cursor::new(bytes);
                    let reader = super::savepoint::CanonicalReader::open(&name, src, size)?;
                    restore_canonical_file(backend, h, offsets, reader)?;
                }
            }
        }
    }
    Ok(())
}

/// A file of `size` bytes that `_metadata` records as `recorded` bytes: truncated or grown.
fn check_size(name: &str, size: u64, recorded: u64) -> Result<()> {
    if size != recorded {
        return Err(Error::corruption(
            name,
            size.min(recorded),
            format!("file is {size} bytes, _metadata records {recorded} (truncated or replaced)"),
        ));
    }
    Ok(())
}

fn restore_canonical_file<R: std::io::Read + std::io::Seek>(
    backend: &mut dyn KeyedStateBackend,
    h: &KeyedStateHandle,
    offsets: &[u64],
    mut reader: super::savepoint::CanonicalReader<R>,
) -> Result<()> {
    let holds = reader.header().key_groups;
    if holds != h.key_groups {
        return Err(Error::corruption(
            reader.name(),
            0,
            format!(
                "the file holds key groups {holds}, _metadata records {}",
                h.key_groups
            ),
        ));
    }
    if reader.offsets() != offsets {
        return Err(Error::corruption(
            reader.name(),
            0,
            "the key-group offsets of its footer differ from those _metadata records",
        ));
    }
    super::savepoint::restore_into(backend, &mut reader)?;
    Ok(())
}

fn heap_keyed_state(
    storage: HeapStorage,
    clock: &BackendClock,
    info: &SubtaskInfo,
    restore: Option<RestoreFrom<'_>>,
) -> Result<Box<dyn CheckpointedKeyedState>> {
    let range = info.key_groups()?;
    let backend = match restore {
        None => HeapKeyedBackend::new(info.max_parallelism, range),
        Some(r) if is_canonical(&r) => {
            let mut b = HeapKeyedBackend::new(info.max_parallelism, range);
            restore_canonical(&mut b, info, &r)?;
            b
        }
        Some(r) => {
            check_coverage(info, range, &r)?;
            // Every handle that holds key groups of `range`; read a key group at a time
            // when the state is large, so records flow before all of it is in memory.
            let handles: Vec<_> = r
                .subtasks
                .iter()
                .flat_map(|st| st.keyed_state.iter().map(move |h| (st, h)))
                .filter(|(_, h)| h.key_groups.overlaps(&range))
                .collect();
            let bytes: u64 = handles
                .iter()
                .map(|(_, h)| match &h.state {
                    KeyedState::KeyGroupsInline { bytes, .. } => bytes.len() as u64,
                    KeyedState::KeyGroupsFile { file, .. } => file.size,
                    _ => 0,
                })
                .sum();
            let lazy = bytes >= LAZY_RESTORE_MIN_BYTES;
            let mut inputs = Vec::with_capacity(handles.len());
            for (st, h) in handles {
                if st.max_parallelism != info.max_parallelism.get() {
                    return Err(Error::InvalidArgument(format!(
                        "operator {:?} was checkpointed with max parallelism {} and is restored \
                         with {}: key groups cannot be mapped (pipeline.max-parallelism must \
                         not change)",
                        info.operator_id,
                        st.max_parallelism,
                        info.max_parallelism.get()
                    )));
                }
                let (name, data, offsets) = match &h.state {
                    KeyedState::KeyGroupsInline { bytes, offsets } => (
                        format!("inline keyed state of {} in _metadata", st.label()),
                        KeyGroupsData::Bytes(Arc::from(bytes.as_slice())),
                        offsets.clone(),
                    ),
                    KeyedState::KeyGroupsFile { file, offsets } => {
                        let name = r.storage.display_path(&file.path).display().to_string();
                        let opened = if lazy {
                            r.storage.open_read(&file.path)?
                        } else {
                            None
                        };
                        let data = match opened {
                            Some(f) => {
                                let size =
                                    f.metadata().map_err(|e| Error::io("stat", &name, e))?.len();
                                check_size(&name, size, file.size)?;
                                KeyGroupsData::File { file: f, size }
                            }
                            None => KeyGroupsData::Bytes(Arc::from(read_checked(r.storage, file)?)),
                        };
                        (name, data, offsets.clone())
                    }
                    KeyedState::IncrementalLsm(_) | KeyedState::CanonicalFile { .. } => {
                        return Err(Error::InvalidArgument(format!(
                            "subtask {} holds an incremental LSM file set (backend {:?}): \
                             the {} backend restores key-groups snapshots; take a canonical \
                             savepoint to switch backends",
                            st.label(),
                            h.backend,
                            storage.name()
                        )))
                    }
                };
                inputs.push(KeyGroupsInput {
                    name,
                    data,
                    offsets,
                    key_groups: h.key_groups,
                });
            }
            HeapKeyedBackend::restore_inputs(info.max_parallelism, range, inputs, lazy)?
        }
    };
    Ok(Box::new(HeapKeyed {
        storage,
        clock: clock.clone(),
        info: info.clone(),
        backend,
    }))
}

fn to_mode(r: Redistribution) -> RedistributionMode {
    match r {
        Redistribution::SplitDistribute => RedistributionMode::SplitDistribute,
        Redistribution::Union => RedistributionMode::Union,
    }
}

fn write_operator_state(
    storage: HeapStorage,
    backend: &str,
    info: &SubtaskInfo,
    snapshot: &OperatorSnapshot,
    pending: &dyn SnapshotTarget,
) -> Result<Vec<OperatorStateHandle>> {
    if snapshot.is_empty() {
        return Ok(Vec::new());
    }
    let name = format!("{}.operator", info.label());
    let (data, written) = storage.write(info, "operator state", &name, pending, |out| {
        snapshot.write_to(out)
    })?;
    Ok(vec![OperatorStateHandle {
        backend: backend.to_string(),
        data,
        states: written
            .states
            .into_iter()
            .map(|s| NamedOperatorState {
                name: s.name,
                mode: to_mode(s.mode),
                offsets: s.offsets,
            })
            .collect(),
    }])
}

/// Operator state of `info`, redistributed from every old subtask's handles (any backend
/// that wrote them in the operator-state format).
pub fn restore_operator_state(
    info: &SubtaskInfo,
    r: RestoreFrom<'_>,
) -> Result<OperatorStateStore> {
    let mut loaded: Vec<(String, Vec<u8>, Vec<WrittenState>)> = Vec::new();
    for st in r.subtasks {
        for h in &st.operator_state {
            let (name, bytes) = match &h.data {
                StateData::Inline(b) => (
                    format!("inline operator state of {} in _metadata", st.label()),
                    b.clone(),
                ),
                StateData::File(f) => (
                    r.storage.display_path(&f.path).display().to_string(),
                    read_checked(r.storage, f)?,
                ),
            };
            let mut states = Vec::with_capacity(h.states.len());
            for s in &h.states {
                let mode = match s.mode {
                    RedistributionMode::SplitDistribute => Redistribution::SplitDistribute,
                    RedistributionMode::Union => Redistribution::Union,
                    RedistributionMode::Broadcast => {
                        return Err(Error::InvalidArgument(format!(
                            "operator state {:?} of {} is broadcast state, which this backend \
                             does not hold",
                            s.name,
                            st.label()
                        )))
                    }
                };
                states.push(WrittenState {
                    name: s.name.clone(),
                    mode,
                    offsets: s.offsets.clone(),
                });
            }
            loaded.push((name, bytes, states));
        }
    }
    let sources: Vec<OperatorStateSource<'_>> = loaded
        .iter()
        .map(|(name, data, states)| OperatorStateSource { name, data, states })
        .collect();
    OperatorStateStore::restore(info.subtask_index, info.parallelism, &sources)
}

/// Flink's `RocksDBStateBackend` with incremental checkpoints, on tidemark's store: each
/// subtask's keyed state in a store of its own under a local working directory (WAL off:
/// the checkpoint is the point of durability), checkpointed by hard-linking its tables into
/// `shared/`; values whose time to live expired are dropped by compaction.
#[derive(Debug, Clone)]
pub struct LsmStateBackend {
    local_dir: std::path::PathBuf,
    options: crate::lsm::Options,
    inline_threshold: u64,
    clock: BackendClock,
    row_cache: usize,
}

impl LsmStateBackend {
    /// Stores under `local_dir` (Flink's `state.backend.rocksdb.localdir`), opened with
    /// `options` (the log is turned off).
    pub fn new(local_dir: impl Into<std::path::PathBuf>, options: crate::lsm::Options) -> Self {
        LsmStateBackend {
            local_dir: local_dir.into(),
            options: crate::lsm::Options {
                wal: false,
                ..options
            },
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
            clock: BackendClock::default(),
            row_cache: super::row_cache::DEFAULT_ROW_CACHE_BYTES,
        }
    }

    /// Each keyed backend keeps a write-back cache of about `bytes` of its rows (see
    /// [`super::row_cache`]; default [`super::row_cache::DEFAULT_ROW_CACHE_BYTES`]; 0
    /// turns it off).
    pub fn with_row_cache(mut self, bytes: usize) -> Self {
        self.row_cache = bytes;
        self
    }

    /// Compaction and canonical snapshots leave out the values expired by `clock` (tests
    /// inject one; the system clock by default).
    pub fn with_ttl_clock(mut self, clock: Arc<dyn TtlClock>) -> Self {
        self.clock = BackendClock(clock);
        self
    }

    /// A store for `info`'s key groups in `dir`, filled from the canonical savepoint
    /// files of `r`; on a failure the directory is removed (nothing half restored stays).
    fn restore_canonical(
        &self,
        info: &SubtaskInfo,
        range: KeyGroupRange,
        r: &RestoreFrom<'_>,
        dir: std::path::PathBuf,
        opts: crate::lsm::Options,
        filter: Arc<super::lsm_keyed::TtlCompactionFilter>,
    ) -> Result<Box<dyn CheckpointedKeyedState>> {
        let db = Arc::new(crate::lsm::Db::open(&dir, opts)?);
        let restored =
            super::lsm_keyed::LsmKeyedBackend::open(db.clone(), info.max_parallelism, range)
                .map(|b| b.with_ttl_filter(filter).with_row_cache(self.row_cache))
                .and_then(|mut b| restore_canonical(&mut b, info, r).map(|()| b));
        match restored {
            Ok(backend) => Ok(Box::new(LsmKeyed {
                db,
                backend,
                subtask: info.lsm_subtask(range),
                clock: self.clock.clone(),
            })),
            Err(e) => {
                drop(db);
                let fs = self.options.fs.clone();
                if let Err(rm) = fs.remove_dir_all(&dir) {
                    tracing::warn!("removing {} after a failed restore: {rm}", dir.display());
                }
                Err(e)
            }
        }
    }

    /// A rescale. The old subtask whose key groups lie mostly inside `range` (at least
    /// half of them; the one with the most, if several) is the base: its files are linked
    /// into the working directory as in a same-parallelism restore, and its rows of key
    /// groups outside `range` are deleted. The rows of `range` held by every other old
    /// subtask that meets it are copied in (each old store restored by links into a
    /// scratch directory, read, and removed). Without a base the store starts empty and
    /// everything is copied. See `format-spec/state-layout.md` for what this costs.
    fn rescale(
        &self,
        info: &SubtaskInfo,
        range: KeyGroupRange,
        r: RestoreFrom<'_>,
        dir: std::path::PathBuf,
        opts: crate::lsm::Options,
        filter: std::sync::Arc<super::lsm_keyed::TtlCompactionFilter>,
    ) -> Result<Box<dyn CheckpointedKeyedState>> {
        let fs = self.options.fs.clone();
        let base = rescale_base(range, r.subtasks);
        let db = match base {
            Some(st) => {
                super::lsm_snapshot::restore_store(r.storage, r.checkpoint_id, st, &dir, opts)?
            }
            None => crate::lsm::Db::open(&dir, opts)?,
        };
        let db = std::sync::Arc::new(db);
        let mut backend =
            super::lsm_keyed::LsmKeyedBackend::open(db.clone(), info.max_parallelism, range)?
                .with_ttl_filter(filter)
                .with_row_cache(self.row_cache);
        if let Some(st) = base {
            backend.delete_key_groups_outside(st.key_groups)?;
        }
        for st in r.subtasks {
            let k = st.key_groups;
            if !k.overlaps(&range) || base.is_some_and(|b| std::ptr::eq(b, st)) {
                continue;
            }
            let scratch =
                self.local_dir
                    .join(format!("lsm-{}-from-{}", info.label(), st.subtask_index));
            if fs.exists(&scratch) {
                fs.remove_dir_all(&scratch)?;
            }
            let old_db = super::lsm_snapshot::restore_store(
                r.storage,
                r.checkpoint_id,
                st,
                &scratch,
                crate::lsm::Options {
                    compaction: false,
                    ..self.options.clone()
                },
            )?;
            let old = super::lsm_keyed::LsmKeyedBackend::open(
                std::sync::Arc::new(old_db),
                info.max_parallelism,
                k,
            )?
            .with_row_cache(0);
            backend.copy_key_groups_from(&old)?;
            drop(old);
            fs.remove_dir_all(&scratch)?;
        }
        Ok(Box::new(LsmKeyed {
            db,
            backend,
            subtask: info.lsm_subtask(range),
            clock: self.clock.clone(),
        }))
    }

    /// The working directory of subtask `info`: removed and made anew, as the state is
    /// rebuilt from the checkpoint (or empty).
    fn working_dir(&self, info: &SubtaskInfo) -> Result<std::path::PathBuf> {
        let fs = self.options.fs.clone();
        let dir = self.local_dir.join(format!("lsm-{}", info.label()));
        if fs.exists(&dir) {
            fs.remove_dir_all(&dir)?;
        }
        fs.create_dir_all(&self.local_dir)?;
        Ok(dir)
    }
}

/// The old subtask a rescale into `range` restores by linking (see
/// [`LsmStateBackend::rescale`]): the one with the most key groups inside `range`, if at
/// least half of its key groups lie there (otherwise trimming it would delete more rows
/// than linking it saves copying).
fn rescale_base(
    range: KeyGroupRange,
    subtasks: &[OperatorSubtaskState],
) -> Option<&OperatorSubtaskState> {
    let inside = |st: &OperatorSubtaskState| {
        range
            .intersection(&st.key_groups)
            .map_or(0, |both| both.len())
    };
    subtasks
        .iter()
        .filter(|st| 2 * inside(st) >= st.key_groups.len())
        .max_by_key(|st| (inside(st), std::cmp::Reverse(st.subtask_index)))
}

struct LsmKeyed {
    db: std::sync::Arc<crate::lsm::Db>,
    backend: super::lsm_keyed::LsmKeyedBackend,
    subtask: super::lsm_snapshot::SubtaskId,
    clock: BackendClock,
}

struct LsmCanonicalKeyedSnapshot {
    label: String,
    snapshot: super::lsm_keyed::LsmCanonicalSnapshot,
}

impl KeyedSnapshot for LsmCanonicalKeyedSnapshot {
    fn write(self: Box<Self>, target: &dyn SnapshotTarget) -> Result<Vec<KeyedStateHandle>> {
        let backend = super::lsm_snapshot::LSM_BACKEND;
        write_canonical(target, &self.label, backend, &mut |out, name| {
            Ok(self.snapshot.write_canonical(out, name, backend)?.1)
        })
    }
}

struct LsmKeyedSnapshot {
    ticket: crate::lsm::LiveFilesTicket,
    subtask: super::lsm_snapshot::SubtaskId,
}

impl CheckpointedKeyedState for LsmKeyed {
    fn backend(&mut self) -> &mut dyn KeyedStateBackend {
        &mut self.backend
    }

    fn snapshot_sync(&mut self) -> Result<Box<dyn KeyedSnapshot>> {
        self.backend.flush_row_cache()?;
        Ok(Box::new(LsmKeyedSnapshot {
            ticket: super::lsm_snapshot::snapshot_sync(&self.db)?,
            subtask: self.subtask.clone(),
        }))
    }

    fn snapshot_sync_canonical(&mut self) -> Result<Box<dyn KeyedSnapshot>> {
        Ok(Box::new(LsmCanonicalKeyedSnapshot {
            label: format!(
                "{}_{}",
                self.subtask.operator_id, self.subtask.subtask_index
            ),
            snapshot: self.backend.canonical_snapshot(self.clock.get().as_ref())?,
        }))
    }
}

impl KeyedSnapshot for LsmKeyedSnapshot {
    fn write(self: Box<Self>, pending: &dyn SnapshotTarget) -> Result<Vec<KeyedStateHandle>> {
        check_format(pending, false)?;
        let state = super::lsm_snapshot::snapshot_async(self.ticket, pending, &self.subtask)?;
        Ok(state.keyed_state)
    }
}

impl StateBackend for LsmStateBackend {
    fn name(&self) -> &'static str {
        super::lsm_snapshot::LSM_BACKEND
    }

    fn keyed_state(
        &self,
        info: &SubtaskInfo,
        restore: Option<RestoreFrom<'_>>,
    ) -> Result<Box<dyn CheckpointedKeyedState>> {
        let range = info.key_groups()?;
        let dir = self.working_dir(info)?;
        let filter = super::lsm_keyed::TtlCompactionFilter::with_clock(self.clock.get().clone());
        let opts = crate::lsm::Options {
            compaction_filter: Some(filter.clone()),
            ..self.options.clone()
        };
        let db = match restore {
            None => crate::lsm::Db::open(&dir, opts)?,
            Some(r) if is_canonical(&r) => {
                return self.restore_canonical(info, range, &r, dir, opts, filter)
            }
            Some(r) => {
                check_coverage(info, range, &r)?;
                check_max_parallelism(info, &r)?;
                // The same key groups: link the old file set (time grows with the number of
                // files, not their bytes). Otherwise (a rescale) cut: copy the rows of this
                // subtask's key groups out of every old store that holds some.
                match r.subtasks.iter().find(|st| st.key_groups == range) {
                    Some(state) => super::lsm_snapshot::restore_store(
                        r.storage,
                        r.checkpoint_id,
                        state,
                        &dir,
                        opts,
                    )?,
                    None => return self.rescale(info, range, r, dir, opts, filter),
                }
            }
        };
        let db = std::sync::Arc::new(db);
        let backend =
            super::lsm_keyed::LsmKeyedBackend::open(db.clone(), info.max_parallelism, range)?
                .with_ttl_filter(filter)
                .with_row_cache(self.row_cache);
        Ok(Box::new(LsmKeyed {
            db,
            backend,
            subtask: info.lsm_subtask(range),
            clock: self.clock.clone(),
        }))
    }

    fn write_operator_state(
        &self,
        info: &SubtaskInfo,
        snapshot: &OperatorSnapshot,
        pending: &dyn SnapshotTarget,
    ) -> Result<Vec<OperatorStateHandle>> {
        let storage = HeapStorage::Filesystem {
            inline_threshold: self.inline_threshold,
        };
        write_operator_state(storage, self.name(), info, snapshot, pending)
    }
}
