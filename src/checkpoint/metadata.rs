//! `_metadata`: the manifest of one checkpoint, and the proof that it completed.
//!
//! This module owns the format (documented byte by byte in `format-spec/metadata.md`):
//! a magic, a format version, the body, and a crc32c over everything before it. The
//! decoder trusts nothing: every count and length is checked against the bytes that remain
//! and against a documented maximum before anything is allocated, every path is checked
//! for safety, and every error names the file and the offset.
//!
//! Version 2 (written) types every handle: keyed state is an incremental LSM file set, a
//! key-groups file or key groups inline, each with its backend and key-group range, and
//! the last two with the offset of every key group; operator state names its backend,
//! its data and, per named state, its redistribution mode and partition offsets. Version 1
//! (one backend for the whole checkpoint, untyped handles) is still read, and mapped onto
//! the version 2 types (see [`Metadata::decode`]).

use std::collections::BTreeSet;
use std::path::Path;

use super::ids::{job_id_problem, CheckpointId, CheckpointKind, JobId, KeyGroupRange};
use super::path::{check_handle_path, lexical_problem};
use crate::codec::{self, DecodeError, Decoder};
use crate::error::{Error, Result};
use crate::fs::FileSystem;

/// The first 8 bytes of every `_metadata` file.
pub const MAGIC: [u8; 8] = *b"TDMKCKPT";
/// The first 4 bytes of an Apache Flink `_metadata` (its magic number `0x4960672d`, big
/// endian, followed by its format version as a big-endian `u32`): recognized only to say
/// so when one is given to tidemark.
pub const FLINK_METADATA_MAGIC: [u8; 4] = 0x4960_672d_u32.to_be_bytes();
/// The format version this code writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this code reads (see [`Metadata::decode`] for how a version 1
/// file maps onto today's types).
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Byte offset of the format version (right after the magic).
pub const VERSION_OFFSET: usize = MAGIC.len();
/// Byte offset of the body (right after the version).
pub const BODY_OFFSET: usize = VERSION_OFFSET + std::mem::size_of::<u32>();
/// Size of the trailing crc32c.
pub const CRC_BYTES: usize = std::mem::size_of::<u32>();
/// The smallest file that can hold a header and a trailer.
pub const MIN_FILE_BYTES: usize = BODY_OFFSET + CRC_BYTES;

/// Largest `_metadata` file accepted (256 MiB).
pub const MAX_METADATA_BYTES: u64 = 256 << 20;
/// Largest name, path, operator id, backend, source, split or property key (bytes).
pub const MAX_NAME_BYTES: usize = 4096;
/// Largest property value (bytes).
pub const MAX_PROPERTY_VALUE_BYTES: usize = 1 << 20;
/// Largest inline state handle (bytes).
pub const MAX_INLINE_BYTES: usize = 64 << 20;
/// Most operator-subtask states in one checkpoint.
pub const MAX_OPERATOR_STATES: usize = 1 << 20;
/// Most keyed-state handles, and most operator-state handles, in one operator-subtask
/// state.
pub const MAX_HANDLES_PER_STATE: usize = 1 << 20;
/// Most source offsets in one checkpoint.
pub const MAX_SOURCE_OFFSETS: usize = 1 << 20;
/// Most properties in one checkpoint.
pub const MAX_PROPERTIES: usize = 1 << 16;
/// The largest max parallelism (number of key groups) of an operator: `2^15`, as Flink.
pub const MAX_KEY_GROUPS: u32 = 1 << 15;
/// Most tables in one incremental LSM file set.
pub const MAX_LSM_TABLES: usize = 1 << 20;
/// Most named states in one operator-state handle.
pub const MAX_NAMED_STATES: usize = 1 << 16;
/// Most partitions of one named operator state.
pub const MAX_PARTITIONS: usize = 1 << 20;

/// Decoding a `_metadata` of `n` bytes takes at most
/// `DECODE_MEMORY_FACTOR * n + DECODE_MEMORY_SLACK_BYTES` bytes of memory for the decoded
/// [`Metadata`] (besides the `n` bytes read): each vector is charged its capacity times its
/// element's size before it is allocated, each string and byte string the allocation it
/// takes ([`heap_cost`]), and a file whose decoded form would exceed the budget is refused
/// as a corruption. Small elements (an inline handle of a few bytes costs about 100 in
/// memory) are what the budget stops.
pub const DECODE_MEMORY_FACTOR: usize = 8;
/// The constant part of the decoding budget (see [`DECODE_MEMORY_FACTOR`]).
pub const DECODE_MEMORY_SLACK_BYTES: usize = 1 << 20;

/// What an allocation of `len` bytes costs, as a general-purpose allocator counts it
/// (glibc's malloc: a 8-byte header, 16-byte granules, 32 bytes at least); nothing for an
/// empty string or vector, which allocates nothing.
pub fn heap_cost(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.saturating_add(8).next_multiple_of(16).max(32)
    }
}

/// The memory a decoding may still take, charged before each allocation.
struct Budget {
    left: usize,
    total: usize,
}

impl Budget {
    fn for_file(len: usize) -> Budget {
        let total = len
            .saturating_mul(DECODE_MEMORY_FACTOR)
            .saturating_add(DECODE_MEMORY_SLACK_BYTES);
        // Room kept for the error that reports a spent budget.
        const ERROR_RESERVE: usize = 4096;
        Budget {
            left: total - ERROR_RESERVE,
            total,
        }
    }

    /// Charges `bytes`, or refuses at `offset` of `path` when the budget is spent.
    fn charge(&mut self, path: &Path, offset: u64, bytes: usize, what: &str) -> Result<()> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(Error::corruption(
                path,
                offset,
                format!(
                    "{what}: decoding would take more than {} bytes of memory \
                     ({DECODE_MEMORY_FACTOR} x the file's size + {DECODE_MEMORY_SLACK_BYTES})",
                    self.total
                ),
            )),
        }
    }

    /// Charges a vector of `n` elements of `T`.
    fn vec<T>(&mut self, path: &Path, offset: u64, n: usize, what: &str) -> Result<()> {
        self.charge(
            path,
            offset,
            heap_cost(n.saturating_mul(std::mem::size_of::<T>())),
            what,
        )
    }

    /// Charges a decoded string or byte string.
    fn bytes(&mut self, path: &Path, offset: u64, len: usize, what: &str) -> Result<()> {
        self.charge(path, offset, heap_cost(len), what)
    }
}

/// The name of the metadata file inside `chk-<N>/`.
pub const METADATA_FILE_NAME: &str = "_metadata";

/// Keyed-state handle kind: an incremental LSM file set.
const KIND_INCREMENTAL_LSM: u8 = 1;
/// Keyed-state handle kind: a file of key groups with their offsets.
const KIND_KEY_GROUPS_FILE: u8 = 2;
/// Keyed-state handle kind: key groups inline, with their offsets.
const KIND_KEY_GROUPS_INLINE: u8 = 3;
/// Keyed-state handle kind: a canonical savepoint file of key groups with their offsets
/// (version 3).
const KIND_CANONICAL_FILE: u8 = 4;
/// The first version with savepoints in their own directory, canonical savepoints and
/// canonical key-groups files.
const SAVEPOINT_VERSION: u32 = 3;
/// Operator-state data tag: a file.
const DATA_FILE: u8 = 1;
/// Operator-state data tag: inline bytes.
const DATA_INLINE: u8 = 2;

/// Where a file of a checkpoint lives, and so who may delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileRole {
    /// Under `shared/`: may be referenced by several checkpoints; deleted when none does.
    Shared,
    /// Under `chk-<N>/`: belongs to checkpoint N alone and goes with its directory.
    Private,
    /// In a self-contained savepoint's own directory, its path relative to that directory
    /// (where `_metadata` lies): the savepoint owns it, and it moves with the directory.
    /// Version 3 and later, only in savepoints.
    Savepoint,
}

impl FileRole {
    fn to_byte(self) -> u8 {
        match self {
            FileRole::Shared => 0,
            FileRole::Private => 1,
            FileRole::Savepoint => 2,
        }
    }

    fn from_byte(b: u8) -> Option<FileRole> {
        match b {
            0 => Some(FileRole::Shared),
            1 => Some(FileRole::Private),
            2 => Some(FileRole::Savepoint),
            _ => None,
        }
    }

    /// `shared`, `private` or `savepoint`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileRole::Shared => "shared",
            FileRole::Private => "private",
            FileRole::Savepoint => "savepoint",
        }
    }
}

/// A file a checkpoint references, with what is needed to verify it end to end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileHandle {
    /// Shared or private.
    pub role: FileRole,
    /// The file's name in the backend's working directory (e.g. `000012.sst`); a restore
    /// places the file back under this name.
    pub local_name: String,
    /// Path relative to the job directory (`shared/…` or `chk-<N>/…`), or, in a
    /// savepoint, to the savepoint directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
}

/// The files of an LSM store consistent at one sequence number (Flink's
/// `IncrementalRemoteKeyedStateHandle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmFileSet {
    /// Every write with a sequence number up to this one is in the tables; none after it.
    /// 0 in a set read from a version 1 `_metadata`, which did not record it.
    pub sequence: u64,
    /// The store's manifest snapshot: the version edit that recreates the file set.
    pub manifest: FileHandle,
    /// The store's tables (in a checkpoint, shared files that later checkpoints may
    /// reference again).
    pub tables: Vec<FileHandle>,
}

/// What a keyed-state handle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedState {
    /// An incremental LSM file set.
    IncrementalLsm(LsmFileSet),
    /// A file of key groups one after another (Flink's `KeyGroupsStateHandle`).
    KeyGroupsFile {
        /// The file.
        file: FileHandle,
        /// Per key group of the handle's range, in order: the byte offset in the file where
        /// its data starts (it ends where the next one starts, the last at the file's end).
        offsets: Vec<u64>,
    },
    /// Key groups held inside `_metadata` itself.
    KeyGroupsInline {
        /// The state.
        bytes: Vec<u8>,
        /// Per key group of the handle's range: where its data starts in `bytes`.
        offsets: Vec<u64>,
    },
    /// A canonical savepoint file (`format-spec/savepoint.md`; Flink's
    /// `KeyGroupsSavepointStateHandle`): key/value records per key group, readable by
    /// every backend.
    CanonicalFile {
        /// The file.
        file: FileHandle,
        /// Per key group of the handle's range, in order: where its section starts.
        offsets: Vec<u64>,
    },
}

/// One piece of an operator subtask's keyed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedStateHandle {
    /// The state backend that wrote it (`memory`, `filesystem`, `lsm`, ...).
    pub backend: String,
    /// The key groups it holds: inside its subtask's range.
    pub key_groups: KeyGroupRange,
    /// The state.
    pub state: KeyedState,
}

impl KeyedStateHandle {
    /// The files the handle references (for an LSM set: the tables, then the manifest).
    pub fn file_handles(&self) -> Vec<&FileHandle> {
        match &self.state {
            KeyedState::IncrementalLsm(set) => {
                set.tables.iter().chain(Some(&set.manifest)).collect()
            }
            KeyedState::KeyGroupsFile { file, .. } | KeyedState::CanonicalFile { file, .. } => {
                vec![file]
            }
            KeyedState::KeyGroupsInline { .. } => Vec::new(),
        }
    }

    /// Bytes of state held inline.
    pub fn inline_bytes(&self) -> u64 {
        match &self.state {
            KeyedState::KeyGroupsInline { bytes, .. } => bytes.len() as u64,
            _ => 0,
        }
    }

    /// `incremental-lsm`, `key-groups-file`, `key-groups-inline` or `canonical-file`.
    pub fn kind_name(&self) -> &'static str {
        match self.state {
            KeyedState::IncrementalLsm(_) => "incremental-lsm",
            KeyedState::KeyGroupsFile { .. } => "key-groups-file",
            KeyedState::KeyGroupsInline { .. } => "key-groups-inline",
            KeyedState::CanonicalFile { .. } => "canonical-file",
        }
    }

    /// The per-key-group offsets, for the key-groups and canonical kinds.
    pub fn key_group_offsets(&self) -> Option<&[u64]> {
        match &self.state {
            KeyedState::IncrementalLsm(_) => None,
            KeyedState::KeyGroupsFile { offsets, .. }
            | KeyedState::KeyGroupsInline { offsets, .. }
            | KeyedState::CanonicalFile { offsets, .. } => Some(offsets),
        }
    }
}

/// Where a handle's bytes are: a file of the checkpoint, or inside `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateData {
    /// A file of the checkpoint.
    File(FileHandle),
    /// Bytes inside `_metadata`.
    Inline(Vec<u8>),
}

impl StateData {
    /// The number of bytes: the file's size, or the inline bytes' length.
    pub fn len(&self) -> u64 {
        match self {
            StateData::File(f) => f.size,
            StateData::Inline(b) => b.len() as u64,
        }
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a named operator state is spread over the subtasks of a restore with another
/// parallelism (Flink's `OperatorStateHandle.Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedistributionMode {
    /// The partitions of all subtasks are split evenly among the new subtasks (Flink's
    /// `SPLIT_DISTRIBUTE`, list state's even split).
    SplitDistribute,
    /// Every new subtask gets the partitions of all old subtasks (`UNION`).
    Union,
    /// Every subtask holds the same state; each new one gets one copy (`BROADCAST`).
    Broadcast,
}

impl RedistributionMode {
    fn to_byte(self) -> u8 {
        match self {
            RedistributionMode::SplitDistribute => 0,
            RedistributionMode::Union => 1,
            RedistributionMode::Broadcast => 2,
        }
    }

    fn from_byte(b: u8) -> Option<RedistributionMode> {
        match b {
            0 => Some(RedistributionMode::SplitDistribute),
            1 => Some(RedistributionMode::Union),
            2 => Some(RedistributionMode::Broadcast),
            _ => None,
        }
    }

    /// Flink's name: `SPLIT_DISTRIBUTE`, `UNION` or `BROADCAST`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedistributionMode::SplitDistribute => "SPLIT_DISTRIBUTE",
            RedistributionMode::Union => "UNION",
            RedistributionMode::Broadcast => "BROADCAST",
        }
    }
}

/// One named operator state in an operator-state handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedOperatorState {
    /// The state's name (unique in its handle).
    pub name: String,
    /// How it is redistributed on a rescale.
    pub mode: RedistributionMode,
    /// Where each of its partitions (list elements) starts in the handle's data, in order.
    pub offsets: Vec<u64>,
}

/// One piece of an operator subtask's operator (non-keyed) state (Flink's
/// `OperatorStreamStateHandle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorStateHandle {
    /// The state backend that wrote it.
    pub backend: String,
    /// The bytes of every named state.
    pub data: StateData,
    /// The named states the bytes hold.
    pub states: Vec<NamedOperatorState>,
}

/// The state of one operator subtask in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSubtaskState {
    /// The operator's id.
    pub operator_id: String,
    /// Index of the subtask among the operator's parallel instances: below `parallelism`.
    pub subtask_index: u32,
    /// The number of parallel subtasks the operator ran with.
    pub parallelism: u32,
    /// The operator's max parallelism: its number of key groups (`1..=`[`MAX_KEY_GROUPS`]).
    pub max_parallelism: u32,
    /// The key groups this subtask owned: inside `0..max_parallelism`.
    pub key_groups: KeyGroupRange,
    /// Keyed state, each handle inside `key_groups`.
    pub keyed_state: Vec<KeyedStateHandle>,
    /// Operator state.
    pub operator_state: Vec<OperatorStateHandle>,
}

impl OperatorSubtaskState {
    /// Every file the subtask's handles reference, keyed state first.
    pub fn file_handles(&self) -> impl Iterator<Item = &FileHandle> {
        self.keyed_state
            .iter()
            .flat_map(|h| h.file_handles())
            .chain(self.operator_state.iter().filter_map(|h| match &h.data {
                StateData::File(f) => Some(f),
                StateData::Inline(_) => None,
            }))
    }

    /// The subtask's incremental LSM file sets, with their handles.
    pub fn lsm_file_sets(&self) -> impl Iterator<Item = (&KeyedStateHandle, &LsmFileSet)> {
        self.keyed_state.iter().filter_map(|h| match &h.state {
            KeyedState::IncrementalLsm(set) => Some((h, set)),
            _ => None,
        })
    }

    /// `<operator id>_<subtask index>`.
    pub fn label(&self) -> String {
        format!("{}_{}", self.operator_id, self.subtask_index)
    }
}

/// Where a source had read up to when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOffset {
    /// The source's name.
    pub source: String,
    /// The split (partition, file, ...) of the source.
    pub split: String,
    /// The next position to read.
    pub offset: u64,
}

/// Everything `_metadata` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The checkpoint's id (`chk-<N>`).
    pub checkpoint_id: CheckpointId,
    /// The job that took it.
    pub job_id: JobId,
    /// Incremental, full or savepoint.
    pub kind: CheckpointKind,
    /// When the checkpoint was triggered (unix milliseconds).
    pub trigger_timestamp_ms: u64,
    /// When `_metadata` was written (unix milliseconds).
    pub completion_timestamp_ms: u64,
    /// Per operator subtask state.
    pub operator_states: Vec<OperatorSubtaskState>,
    /// Source positions to resume from.
    pub source_offsets: Vec<SourceOffset>,
    /// Free-form properties.
    pub properties: Vec<(String, String)>,
}

fn put_file(b: &mut Vec<u8>, f: &FileHandle) {
    b.push(f.role.to_byte());
    put_str(b, &f.local_name);
    put_str(b, &f.path);
    codec::put_u64(b, f.size);
    codec::put_u32(b, f.crc32c);
}

fn put_offsets(b: &mut Vec<u8>, offsets: &[u64]) {
    codec::put_varint(b, offsets.len() as u64);
    for o in offsets {
        codec::put_u64(b, *o);
    }
}

fn put_range(b: &mut Vec<u8>, r: KeyGroupRange) {
    codec::put_u32(b, r.start());
    codec::put_u32(b, r.end());
}

impl Metadata {
    /// Every file handle, in order of appearance (a file referenced twice appears twice).
    pub fn file_handles(&self) -> impl Iterator<Item = &FileHandle> {
        self.operator_states.iter().flat_map(|s| s.file_handles())
    }

    /// The distinct paths of the shared files this checkpoint references.
    pub fn shared_paths(&self) -> BTreeSet<&str> {
        self.file_handles()
            .filter(|f| f.role == FileRole::Shared)
            .map(|f| f.path.as_str())
            .collect()
    }

    /// Total bytes of inline state (keyed and operator).
    pub fn inline_bytes(&self) -> u64 {
        let mut n = 0u64;
        for s in &self.operator_states {
            for h in &s.keyed_state {
                n = n.saturating_add(h.inline_bytes());
            }
            for h in &s.operator_state {
                if let StateData::Inline(b) = &h.data {
                    n = n.saturating_add(b.len() as u64);
                }
            }
        }
        n
    }

    /// The distinct backends named by the handles.
    pub fn backends(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        for s in &self.operator_states {
            out.extend(s.keyed_state.iter().map(|h| h.backend.as_str()));
            out.extend(s.operator_state.iter().map(|h| h.backend.as_str()));
        }
        out
    }

    /// Serializes into the `_metadata` format, version [`FORMAT_VERSION`].
    ///
    /// Encoding never fails; [`Metadata::validate`] says whether a reader will accept the
    /// result (the store validates before it writes).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&MAGIC);
        codec::put_u32(&mut b, FORMAT_VERSION);
        codec::put_u64(&mut b, self.checkpoint_id.0);
        put_str(&mut b, self.job_id.as_str());
        b.push(self.kind.to_byte());
        codec::put_u64(&mut b, self.trigger_timestamp_ms);
        codec::put_u64(&mut b, self.completion_timestamp_ms);
        codec::put_varint(&mut b, self.operator_states.len() as u64);
        for s in &self.operator_states {
            put_str(&mut b, &s.operator_id);
            codec::put_varint(&mut b, u64::from(s.subtask_index));
            codec::put_varint(&mut b, u64::from(s.parallelism));
            codec::put_varint(&mut b, u64::from(s.max_parallelism));
            put_range(&mut b, s.key_groups);
            codec::put_varint(&mut b, s.keyed_state.len() as u64);
            for h in &s.keyed_state {
                match &h.state {
                    KeyedState::IncrementalLsm(_) => b.push(KIND_INCREMENTAL_LSM),
                    KeyedState::KeyGroupsFile { .. } => b.push(KIND_KEY_GROUPS_FILE),
                    KeyedState::KeyGroupsInline { .. } => b.push(KIND_KEY_GROUPS_INLINE),
                    KeyedState::CanonicalFile { .. } => b.push(KIND_CANONICAL_FILE),
                }
                put_str(&mut b, &h.backend);
                put_range(&mut b, h.key_groups);
                match &h.state {
                    KeyedState::IncrementalLsm(set) => {
                        codec::put_u64(&mut b, set.sequence);
                        put_file(&mut b, &set.manifest);
                        codec::put_varint(&mut b, set.tables.len() as u64);
                        for f in &set.tables {
                            put_file(&mut b, f);
                        }
                    }
                    KeyedState::KeyGroupsFile { file, offsets }
                    | KeyedState::CanonicalFile { file, offsets } => {
                        put_file(&mut b, file);
                        put_offsets(&mut b, offsets);
                    }
                    KeyedState::KeyGroupsInline { bytes, offsets } => {
                        codec::put_length_prefixed(&mut b, bytes);
                        put_offsets(&mut b, offsets);
                    }
                }
            }
            codec::put_varint(&mut b, s.operator_state.len() as u64);
            for h in &s.operator_state {
                put_str(&mut b, &h.backend);
                match &h.data {
                    StateData::File(f) => {
                        b.push(DATA_FILE);
                        put_file(&mut b, f);
                    }
                    StateData::Inline(bytes) => {
                        b.push(DATA_INLINE);
                        codec::put_length_prefixed(&mut b, bytes);
                    }
                }
                codec::put_varint(&mut b, h.states.len() as u64);
                for n in &h.states {
                    put_str(&mut b, &n.name);
                    b.push(n.mode.to_byte());
                    put_offsets(&mut b, &n.offsets);
                }
            }
        }
        put_tail(&mut b, &self.source_offsets, &self.properties);
        b
    }

    /// Checks that [`Metadata::decode`] will accept what [`Metadata::encode`] produces:
    /// limits, key-group ranges and offsets, and path safety. `path` names the file for
    /// errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bytes = self.encode();
        let decoded = Metadata::decode(&bytes, path)?;
        if decoded != *self {
            // Only reachable through a field the format cannot represent.
            return Err(Error::InvalidArgument(format!(
                "metadata for {} does not survive encoding",
                path.display()
            )));
        }
        Ok(())
    }

    /// Reads and decodes the `_metadata` file at `path` (a regular file, read up to
    /// [`MAX_METADATA_BYTES`]).
    pub fn read(fs: &dyn FileSystem, path: &Path) -> Result<Metadata> {
        let bytes = fs.read_file(path, MAX_METADATA_BYTES)?;
        Metadata::decode(&bytes, path)
    }

    /// Like [`Metadata::read`] for the `_metadata` of a job directory: the file actually
    /// opened must lie inside `job_dir` once symlinks are followed
    /// ([`crate::fs::open_inside`]), or nothing is read.
    pub fn read_inside(fs: &dyn FileSystem, job_dir: &Path, path: &Path) -> Result<Metadata> {
        let entry = path
            .strip_prefix(job_dir)
            .unwrap_or(path)
            .display()
            .to_string();
        let (mut f, _) = crate::fs::open_inside(fs, job_dir, path, &entry)?;
        let bytes = crate::fs::read_capped(&mut f, path, MAX_METADATA_BYTES)?;
        Metadata::decode(&bytes, path)
    }

    /// The format version of `_metadata` bytes (the `u32` after the magic), if they are
    /// long enough to hold one; nothing is checked.
    pub fn version_of(bytes: &[u8]) -> Option<u32> {
        codec::get_u32(bytes, VERSION_OFFSET)
    }

    /// Parses `_metadata` bytes of version 1 or 2; `path` names the file in errors.
    ///
    /// Rejects, with [`Error::Corruption`] naming the offset: files larger than
    /// [`MAX_METADATA_BYTES`], truncation, a wrong magic, a version other than 1 or 2, a
    /// crc mismatch, any count or length beyond the bytes remaining or its maximum, unknown
    /// tags, kinds or redistribution modes, invalid UTF-8, an invalid job id, key-group
    /// range, parallelism or offset list, subtasks of one operator that overlap, and
    /// trailing bytes. Rejects unsafe file paths with [`Error::UnsafePath`].
    ///
    /// A version 1 file maps as `format-spec/metadata.md` describes: its global backend
    /// goes to every handle; an `lsm` subtask's shared files and its private `.manifest`
    /// file become one incremental LSM file set (sequence 0: not recorded); the max
    /// parallelism of an operator is the end of its highest key-group range plus one, its
    /// parallelism its number of subtasks. Any other version 1 state (inline handles, or
    /// files of another backend) has no typed equivalent and is refused.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Metadata> {
        let len = bytes.len();
        if len as u64 > MAX_METADATA_BYTES {
            return Err(Error::corruption(
                path,
                0,
                format!("{len} bytes, larger than the limit of {MAX_METADATA_BYTES}"),
            ));
        }
        let magic = bytes.get(..MAGIC.len()).ok_or_else(|| {
            Error::corruption(
                path,
                len as u64,
                format!("truncated: {len} bytes, no magic"),
            )
        })?;
        if magic != MAGIC {
            if magic.starts_with(&FLINK_METADATA_MAGIC) {
                let version = bytes
                    .get(4..8)
                    .and_then(|v| v.try_into().ok())
                    .map(u32::from_be_bytes)
                    .map_or_else(|| "unknown".to_string(), |v| v.to_string());
                return Err(Error::corruption(
                    path,
                    0,
                    format!(
                        "an Apache Flink _metadata (magic 0x4960672d, Flink metadata version \
                         {version}), not a tidemark one: tidemark reads and restores only the \
                         checkpoints it wrote"
                    ),
                ));
            }
            return Err(Error::corruption(
                path,
                0,
                "bad magic: not a tidemark _metadata file",
            ));
        }
        let version = codec::get_u32(bytes, VERSION_OFFSET)
            .ok_or_else(|| Error::corruption(path, len as u64, "truncated inside the header"))?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            let who = if version > FORMAT_VERSION {
                "written by a newer tidemark"
            } else {
                "unknown"
            };
            return Err(Error::corruption(
                path,
                VERSION_OFFSET as u64,
                format!(
                    "unsupported format version {version} ({who}); this reader understands \
                     {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}"
                ),
            ));
        }
        if len < MIN_FILE_BYTES {
            return Err(Error::corruption(
                path,
                len as u64,
                format!("truncated: {len} bytes, shorter than header and checksum"),
            ));
        }
        let crc_at = len - CRC_BYTES;
        let stored = codec::get_u32(bytes, crc_at)
            .ok_or_else(|| Error::corruption(path, crc_at as u64, "truncated checksum"))?;
        let covered = bytes.get(..crc_at).unwrap_or_default();
        let computed = codec::crc32c(covered);
        if stored != computed {
            return Err(Error::corruption(
                path,
                crc_at as u64,
                format!(
                    "checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (truncated or damaged)"
                ),
            ));
        }
        let body = covered.get(BODY_OFFSET..).unwrap_or_default();
        let mut d = Decoder::new(body, BODY_OFFSET as u64);
        let mut budget = Budget::for_file(len);
        decode_body(&mut d, path, &mut budget, version)
    }
}

/// The end of every version's encoding: source offsets, properties, then the crc32c of
/// everything before it.
fn put_tail(b: &mut Vec<u8>, source_offsets: &[SourceOffset], properties: &[(String, String)]) {
    codec::put_varint(b, source_offsets.len() as u64);
    for o in source_offsets {
        put_str(b, &o.source);
        put_str(b, &o.split);
        codec::put_u64(b, o.offset);
    }
    codec::put_varint(b, properties.len() as u64);
    for (k, v) in properties {
        put_str(b, k);
        put_str(b, v);
    }
    let crc = codec::crc32c(b);
    codec::put_u32(b, crc);
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    codec::put_length_prefixed(b, s.as_bytes());
}

/// Upper bound for a count whose elements take at least `min_bytes` each.
fn count_limit(d: &Decoder<'_>, max: usize, min_bytes: usize) -> u64 {
    let fits = d.remaining() / min_bytes.max(1);
    max.min(fits) as u64
}

/// [`get_string`], charged to `budget`.
fn get_string_in(
    d: &mut Decoder<'_>,
    path: &Path,
    budget: &mut Budget,
    what: &str,
    max: usize,
) -> Result<String> {
    let at = d.offset();
    let n = d
        .varint_bounded(what, max.min(d.remaining()) as u64)
        .map_err(c(path))?;
    budget.bytes(path, at, n, what)?;
    let raw = d.bytes(n, what).map_err(c(path))?;
    String::from_utf8(raw.to_vec())
        .map_err(|_| Error::corruption(path, at, format!("{what}: not valid UTF-8")))
}

/// A string that must not be empty (a backend or state name).
fn get_name_in(
    d: &mut Decoder<'_>,
    path: &Path,
    budget: &mut Budget,
    what: &str,
) -> Result<String> {
    let at = d.offset();
    let s = get_string_in(d, path, budget, what, MAX_NAME_BYTES)?;
    if s.is_empty() {
        return Err(Error::corruption(path, at, format!("{what} is empty")));
    }
    Ok(s)
}

/// Turns a decode error into the file's corruption error.
fn c(path: &Path) -> impl Fn(DecodeError) -> Error + '_ {
    move |e| e.into_error(path)
}

/// A name that becomes a path in a working directory on restore must be a safe relative
/// path too.
fn check_local_name(path: &Path, at: u64, what: &str, name: &str) -> Result<()> {
    match lexical_problem(name) {
        None => Ok(()),
        Some(reason) => Err(Error::UnsafePath {
            path: path.to_path_buf(),
            entry: name.to_string(),
            reason: format!("{what} at offset {at}: {reason}"),
        }),
    }
}

/// Smallest encoding of a version 2 operator subtask state: id length, subtask index,
/// parallelism, max parallelism (one byte each), range (8), two handle counts.
const MIN_SUBTASK_BYTES_V2: usize = 14;
/// Smallest encoding of a version 1 operator subtask state: id length, subtask, range,
/// handle count.
const MIN_SUBTASK_BYTES_V1: usize = 11;
/// Smallest encoding of a file handle: role, two non-empty names (2 each), size, crc.
const MIN_FILE_HANDLE_BYTES: usize = 17;
/// Smallest encoding of a keyed-state handle: kind, backend (2), range (8), and for
/// inline key groups the length, the offset count and one offset (8).
const MIN_KEYED_BYTES: usize = 21;
/// Smallest encoding of an operator-state handle: backend (2), data tag, an empty inline
/// length, the named-state count.
const MIN_OPERATOR_HANDLE_BYTES: usize = 5;
/// Smallest encoding of a named operator state: name (2), mode, offset count.
const MIN_NAMED_STATE_BYTES: usize = 4;

fn decode_body(
    d: &mut Decoder<'_>,
    path: &Path,
    budget: &mut Budget,
    version: u32,
) -> Result<Metadata> {
    let checkpoint_id = CheckpointId(d.u64("checkpoint id").map_err(c(path))?);
    let at = d.offset();
    let job = get_string_in(d, path, budget, "job id", super::ids::JOB_ID_MAX_BYTES)?;
    if let Some(reason) = job_id_problem(&job) {
        return Err(Error::corruption(
            path,
            at,
            format!("job id {job:?}: {reason}"),
        ));
    }
    let job_id = JobId::new(job).map_err(|e| Error::corruption(path, at, e.to_string()))?;
    let at = d.offset();
    let kind_byte = d.u8("kind").map_err(c(path))?;
    let kind = CheckpointKind::from_byte(kind_byte)
        .filter(|k| version >= SAVEPOINT_VERSION || *k != CheckpointKind::CanonicalSavepoint)
        .ok_or_else(|| {
            Error::corruption(path, at, format!("unknown checkpoint kind {kind_byte}"))
        })?;
    let trigger_timestamp_ms = d.u64("trigger timestamp").map_err(c(path))?;
    let completion_timestamp_ms = d.u64("completion timestamp").map_err(c(path))?;

    let (operator_states, starts) = if version == 1 {
        v1::decode_operator_states(d, path, checkpoint_id, budget)?
    } else {
        let at = d.offset();
        let n = d
            .varint_bounded(
                "operator state count",
                count_limit(d, MAX_OPERATOR_STATES, MIN_SUBTASK_BYTES_V2),
            )
            .map_err(c(path))?;
        budget.vec::<OperatorSubtaskState>(path, at, n, "operator states")?;
        budget.vec::<u64>(path, at, n, "operator state offsets")?;
        let mut states = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n);
        for _ in 0..n {
            starts.push(d.offset());
            states.push(decode_subtask(d, path, checkpoint_id, budget)?);
        }
        (states, starts)
    };
    check_subtasks(path, &operator_states, &starts, budget)?;
    check_savepoint_rules(path, version, kind, &operator_states, &starts)?;
    drop(starts);

    // A source offset takes at least 10 bytes.
    let at = d.offset();
    let n = d
        .varint_bounded(
            "source offset count",
            count_limit(d, MAX_SOURCE_OFFSETS, 10),
        )
        .map_err(c(path))?;
    budget.vec::<SourceOffset>(path, at, n, "source offsets")?;
    let mut source_offsets = Vec::with_capacity(n);
    for _ in 0..n {
        let source = get_string_in(d, path, budget, "source name", MAX_NAME_BYTES)?;
        let split = get_string_in(d, path, budget, "split name", MAX_NAME_BYTES)?;
        let offset = d.u64("source offset").map_err(c(path))?;
        source_offsets.push(SourceOffset {
            source,
            split,
            offset,
        });
    }

    let at = d.offset();
    let n = d
        .varint_bounded("property count", count_limit(d, MAX_PROPERTIES, 2))
        .map_err(c(path))?;
    budget.vec::<(String, String)>(path, at, n, "properties")?;
    let mut properties = Vec::with_capacity(n);
    for _ in 0..n {
        let k = get_string_in(d, path, budget, "property key", MAX_NAME_BYTES)?;
        let v = get_string_in(d, path, budget, "property value", MAX_PROPERTY_VALUE_BYTES)?;
        properties.push((k, v));
    }
    if !d.is_empty() {
        return Err(Error::corruption(
            path,
            d.offset(),
            format!("{} unexpected bytes after the body", d.remaining()),
        ));
    }
    Ok(Metadata {
        checkpoint_id,
        job_id,
        kind,
        trigger_timestamp_ms,
        completion_timestamp_ms,
        operator_states,
        source_offsets,
        properties,
    })
}

/// A file handle without a tag: role, local name, path, size, crc32c.
fn decode_file(
    d: &mut Decoder<'_>,
    path: &Path,
    id: CheckpointId,
    budget: &mut Budget,
) -> Result<FileHandle> {
    let role_at = d.offset();
    let role_byte = d.u8("file role").map_err(c(path))?;
    let role = FileRole::from_byte(role_byte).ok_or_else(|| {
        Error::corruption(path, role_at, format!("unknown file role {role_byte}"))
    })?;
    let name_at = d.offset();
    let local_name = get_string_in(d, path, budget, "local name", MAX_NAME_BYTES)?;
    check_local_name(path, name_at, "local name", &local_name)?;
    let entry = get_string_in(d, path, budget, "file path", MAX_NAME_BYTES)?;
    check_handle_path(path, &entry, role, id)?;
    let size = d.u64("file size").map_err(c(path))?;
    let crc32c = d.u32("file crc32c").map_err(c(path))?;
    Ok(FileHandle {
        role,
        local_name,
        path: entry,
        size,
        crc32c,
    })
}

/// A key-group range: start and end (inclusive), start not after end.
fn decode_range(d: &mut Decoder<'_>, path: &Path, what: &str) -> Result<KeyGroupRange> {
    let at = d.offset();
    let start = d.u32("key-group start").map_err(c(path))?;
    let end = d.u32("key-group end").map_err(c(path))?;
    KeyGroupRange::new(start, end).map_err(|_| {
        Error::corruption(
            path,
            at,
            format!("{what} key-group range {start}..={end}: start is after end"),
        )
    })
}

/// A list of offsets into `data_len` bytes: `count` (checked against `expected` when
/// given), then each offset, non-decreasing and at most `data_len`.
fn decode_offsets(
    d: &mut Decoder<'_>,
    path: &Path,
    budget: &mut Budget,
    what: &str,
    max: usize,
    expected: Option<u64>,
    data_len: u64,
) -> Result<Vec<u64>> {
    let at = d.offset();
    let n = d
        .varint_bounded(&format!("{what} count"), count_limit(d, max, 8))
        .map_err(c(path))?;
    if let Some(want) = expected {
        if n as u64 != want {
            return Err(Error::corruption(
                path,
                at,
                format!("{what}: {n} offsets for {want} key groups (one per key group)"),
            ));
        }
    }
    budget.vec::<u64>(path, at, n, what)?;
    let mut offsets = Vec::with_capacity(n);
    let mut prev = 0u64;
    for i in 0..n {
        let at = d.offset();
        let o = d.u64(what).map_err(c(path))?;
        if o < prev {
            return Err(Error::corruption(
                path,
                at,
                format!("{what}: offset {i} is {o}, before the previous one ({prev})"),
            ));
        }
        if o > data_len {
            return Err(Error::corruption(
                path,
                at,
                format!("{what}: offset {i} is {o}, past the end of its {data_len} bytes"),
            ));
        }
        prev = o;
        offsets.push(o);
    }
    Ok(offsets)
}

fn decode_subtask(
    d: &mut Decoder<'_>,
    path: &Path,
    id: CheckpointId,
    budget: &mut Budget,
) -> Result<OperatorSubtaskState> {
    let operator_id = get_string_in(d, path, budget, "operator id", MAX_NAME_BYTES)?;
    let at = d.offset();
    let subtask_index = d
        .varint_bounded("subtask index", u64::from(MAX_KEY_GROUPS) - 1)
        .map_err(c(path))? as u32;
    let par_at = d.offset();
    let parallelism = d
        .varint_bounded("parallelism", u64::from(MAX_KEY_GROUPS))
        .map_err(c(path))? as u32;
    let max_at = d.offset();
    let max_parallelism = d
        .varint_bounded("max parallelism", u64::from(MAX_KEY_GROUPS))
        .map_err(c(path))? as u32;
    if max_parallelism == 0 {
        return Err(Error::corruption(path, max_at, "max parallelism 0"));
    }
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(Error::corruption(
            path,
            par_at,
            format!(
                "parallelism {parallelism} is outside 1..={max_parallelism} (the max parallelism)"
            ),
        ));
    }
    if subtask_index >= parallelism {
        return Err(Error::corruption(
            path,
            at,
            format!("subtask index {subtask_index} is not below the parallelism {parallelism}"),
        ));
    }
    let range_at = d.offset();
    let key_groups = decode_range(d, path, "subtask")?;
    if key_groups.end() >= max_parallelism {
        return Err(Error::corruption(
            path,
            range_at,
            format!(
                "key-group range {key_groups} of subtask {operator_id}_{subtask_index} reaches \
                 past the max parallelism {max_parallelism}"
            ),
        ));
    }

    let at = d.offset();
    let n = d
        .varint_bounded(
            "keyed-state handle count",
            count_limit(d, MAX_HANDLES_PER_STATE, MIN_KEYED_BYTES),
        )
        .map_err(c(path))?;
    budget.vec::<KeyedStateHandle>(path, at, n, "keyed-state handles")?;
    let mut keyed_state = Vec::with_capacity(n);
    for _ in 0..n {
        keyed_state.push(decode_keyed(d, path, id, budget, key_groups)?);
    }

    let at = d.offset();
    let n = d
        .varint_bounded(
            "operator-state handle count",
            count_limit(d, MAX_HANDLES_PER_STATE, MIN_OPERATOR_HANDLE_BYTES),
        )
        .map_err(c(path))?;
    budget.vec::<OperatorStateHandle>(path, at, n, "operator-state handles")?;
    let mut operator_state = Vec::with_capacity(n);
    for _ in 0..n {
        operator_state.push(decode_operator_handle(d, path, id, budget)?);
    }
    Ok(OperatorSubtaskState {
        operator_id,
        subtask_index,
        parallelism,
        max_parallelism,
        key_groups,
        keyed_state,
        operator_state,
    })
}

fn decode_keyed(
    d: &mut Decoder<'_>,
    path: &Path,
    id: CheckpointId,
    budget: &mut Budget,
    subtask_range: KeyGroupRange,
) -> Result<KeyedStateHandle> {
    let at = d.offset();
    let kind = d.u8("keyed-state handle kind").map_err(c(path))?;
    if !(KIND_INCREMENTAL_LSM..=KIND_CANONICAL_FILE).contains(&kind) {
        return Err(Error::corruption(
            path,
            at,
            format!("unknown keyed-state handle kind {kind}"),
        ));
    }
    let backend = get_name_in(d, path, budget, "backend")?;
    let range_at = d.offset();
    let key_groups = decode_range(d, path, "handle")?;
    if !subtask_range.contains_range(&key_groups) {
        return Err(Error::corruption(
            path,
            range_at,
            format!(
                "keyed-state handle key groups {key_groups} lie outside its subtask's \
                 {subtask_range}"
            ),
        ));
    }
    let state = match kind {
        KIND_INCREMENTAL_LSM => {
            let sequence = d.u64("sequence number").map_err(c(path))?;
            let manifest = decode_file(d, path, id, budget)?;
            let at = d.offset();
            let n = d
                .varint_bounded(
                    "table count",
                    count_limit(d, MAX_LSM_TABLES, MIN_FILE_HANDLE_BYTES),
                )
                .map_err(c(path))?;
            budget.vec::<FileHandle>(path, at, n, "tables")?;
            let mut tables = Vec::with_capacity(n);
            for _ in 0..n {
                tables.push(decode_file(d, path, id, budget)?);
            }
            KeyedState::IncrementalLsm(LsmFileSet {
                sequence,
                manifest,
                tables,
            })
        }
        KIND_KEY_GROUPS_FILE | KIND_CANONICAL_FILE => {
            let file = decode_file(d, path, id, budget)?;
            let offsets = decode_offsets(
                d,
                path,
                budget,
                "key-group offsets",
                MAX_KEY_GROUPS as usize,
                Some(key_groups.len()),
                file.size,
            )?;
            if kind == KIND_CANONICAL_FILE {
                KeyedState::CanonicalFile { file, offsets }
            } else {
                KeyedState::KeyGroupsFile { file, offsets }
            }
        }
        _ => {
            let bytes = get_inline(d, path, budget)?;
            let offsets = decode_offsets(
                d,
                path,
                budget,
                "key-group offsets",
                MAX_KEY_GROUPS as usize,
                Some(key_groups.len()),
                bytes.len() as u64,
            )?;
            KeyedState::KeyGroupsInline { bytes, offsets }
        }
    };
    Ok(KeyedStateHandle {
        backend,
        key_groups,
        state,
    })
}

/// Inline bytes: a length (at most [`MAX_INLINE_BYTES`]) and the bytes, charged.
fn get_inline(d: &mut Decoder<'_>, path: &Path, budget: &mut Budget) -> Result<Vec<u8>> {
    let len_at = d.offset();
    let n = d
        .varint_bounded("inline length", MAX_INLINE_BYTES.min(d.remaining()) as u64)
        .map_err(c(path))?;
    budget.bytes(path, len_at, n, "inline bytes")?;
    Ok(d.bytes(n, "inline bytes").map_err(c(path))?.to_vec())
}

fn decode_operator_handle(
    d: &mut Decoder<'_>,
    path: &Path,
    id: CheckpointId,
    budget: &mut Budget,
) -> Result<OperatorStateHandle> {
    let backend = get_name_in(d, path, budget, "backend")?;
    let at = d.offset();
    let data = match d.u8("operator-state data tag").map_err(c(path))? {
        DATA_FILE => StateData::File(decode_file(d, path, id, budget)?),
        DATA_INLINE => StateData::Inline(get_inline(d, path, budget)?),
        other => {
            return Err(Error::corruption(
                path,
                at,
                format!("unknown operator-state data tag {other}"),
            ))
        }
    };
    let at = d.offset();
    let n = d
        .varint_bounded(
            "named state count",
            count_limit(d, MAX_NAMED_STATES, MIN_NAMED_STATE_BYTES),
        )
        .map_err(c(path))?;
    budget.vec::<NamedOperatorState>(path, at, n, "named states")?;
    let mut states = Vec::with_capacity(n);
    for _ in 0..n {
        let name = get_name_in(d, path, budget, "operator state name")?;
        let mode_at = d.offset();
        let mode_byte = d.u8("redistribution mode").map_err(c(path))?;
        let mode = RedistributionMode::from_byte(mode_byte).ok_or_else(|| {
            Error::corruption(
                path,
                mode_at,
                format!("operator state {name:?}: unknown redistribution mode {mode_byte}"),
            )
        })?;
        let offsets = decode_offsets(
            d,
            path,
            budget,
            "partition offsets",
            MAX_PARTITIONS,
            None,
            data.len(),
        )?;
        states.push(NamedOperatorState {
            name,
            mode,
            offsets,
        });
    }
    // Names are unique in a handle: sort references (charged) and compare neighbours.
    budget.vec::<&str>(path, at, states.len(), "named state check")?;
    let mut names: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::corruption(
            path,
            at,
            format!("operator state {:?} named twice in one handle", w[0]),
        ));
    }
    drop(names);
    Ok(OperatorStateHandle {
        backend,
        data,
        states,
    })
}

/// The rules of savepoints (version 3): a savepoint is self-contained, so each of its files
/// has the role `savepoint` (a path relative to the savepoint directory), and no file of a
/// checkpoint has it; canonical key-groups files are the keyed state of canonical
/// savepoints and of nothing else. Before version 3 neither the role nor the handle kind
/// existed. `starts` holds each subtask's offset in the file, for errors.
fn check_savepoint_rules(
    path: &Path,
    version: u32,
    kind: CheckpointKind,
    states: &[OperatorSubtaskState],
    starts: &[u64],
) -> Result<()> {
    let self_contained = version >= SAVEPOINT_VERSION && kind.is_savepoint();
    for (i, s) in states.iter().enumerate() {
        let at = starts.get(i).copied().unwrap_or(0);
        for f in s.file_handles() {
            if (f.role == FileRole::Savepoint) != self_contained {
                let why = if self_contained {
                    format!(
                        "a savepoint's files lie in its own directory (role savepoint), but {} \
                         of subtask {} has role {}",
                        f.path,
                        s.label(),
                        f.role.as_str()
                    )
                } else {
                    format!(
                        "{} of subtask {} has role savepoint, which only a version 3 savepoint \
                         holds (this is a version {version} {})",
                        f.path,
                        s.label(),
                        kind.as_str()
                    )
                };
                return Err(Error::corruption(path, at, why));
            }
        }
        for h in &s.keyed_state {
            let canonical = matches!(h.state, KeyedState::CanonicalFile { .. });
            let canonical_savepoint = kind == CheckpointKind::CanonicalSavepoint;
            if canonical != canonical_savepoint {
                return Err(Error::corruption(
                    path,
                    at,
                    format!(
                        "subtask {}: a {} {} keyed-state handle in a {}: canonical files are \
                         the keyed state of canonical savepoints only",
                        s.label(),
                        h.backend,
                        h.kind_name(),
                        kind.as_str()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks across subtasks: the subtasks of one operator agree on parallelism and max
/// parallelism, have distinct indices and do not overlap in key groups. `starts` holds
/// each subtask's offset in the file, for errors.
fn check_subtasks(
    path: &Path,
    states: &[OperatorSubtaskState],
    starts: &[u64],
    budget: &mut Budget,
) -> Result<()> {
    let at_of = |i: usize| starts.get(i).copied().unwrap_or(0);
    budget.vec::<usize>(path, at_of(0), states.len(), "subtask check")?;
    let mut order: Vec<usize> = (0..states.len()).collect();
    order.sort_unstable_by(|&a, &b| {
        let (x, y) = (&states[a], &states[b]);
        (x.operator_id.as_str(), x.key_groups.start())
            .cmp(&(y.operator_id.as_str(), y.key_groups.start()))
    });
    for w in order.windows(2) {
        let (a, b) = (&states[w[0]], &states[w[1]]);
        if a.operator_id != b.operator_id {
            continue;
        }
        let at = at_of(w[1]);
        if a.parallelism != b.parallelism || a.max_parallelism != b.max_parallelism {
            return Err(Error::corruption(
                path,
                at,
                format!(
                    "subtasks {} and {} disagree: parallelism {} and {}, max parallelism {} and {}",
                    a.label(),
                    b.label(),
                    a.parallelism,
                    b.parallelism,
                    a.max_parallelism,
                    b.max_parallelism
                ),
            ));
        }
        if a.key_groups.end() >= b.key_groups.start() {
            return Err(Error::corruption(
                path,
                at,
                format!(
                    "subtasks {} and {} of operator {:?} overlap in key groups ({} and {})",
                    a.subtask_index, b.subtask_index, a.operator_id, a.key_groups, b.key_groups
                ),
            ));
        }
    }
    order.sort_unstable_by(|&a, &b| {
        let (x, y) = (&states[a], &states[b]);
        (x.operator_id.as_str(), x.subtask_index).cmp(&(y.operator_id.as_str(), y.subtask_index))
    });
    for w in order.windows(2) {
        let (a, b) = (&states[w[0]], &states[w[1]]);
        if a.operator_id == b.operator_id && a.subtask_index == b.subtask_index {
            return Err(Error::corruption(
                path,
                at_of(w[1]),
                format!("subtask {} appears twice", b.label()),
            ));
        }
    }
    Ok(())
}

/// Reading version 1: one backend for the checkpoint, untyped handles.
mod v1 {
    use super::*;

    /// Version 1 handle tags.
    const TAG_FILE: u8 = 1;
    const TAG_INLINE: u8 = 2;
    /// The backend name of the only version 1 state with a typed equivalent.
    const LSM: &str = "lsm";
    /// How a version 1 `lsm` subtask named its manifest snapshot.
    const MANIFEST_SUFFIX: &str = ".manifest";

    /// A version 1 handle.
    enum Handle {
        File(FileHandle),
        Inline,
    }

    /// The backend, then the operator states (mapped onto version 2), with their offsets.
    pub(super) fn decode_operator_states(
        d: &mut Decoder<'_>,
        path: &Path,
        id: CheckpointId,
        budget: &mut Budget,
    ) -> Result<(Vec<OperatorSubtaskState>, Vec<u64>)> {
        let backend_at = d.offset();
        let backend = get_string_in(d, path, budget, "backend", MAX_NAME_BYTES)?;
        let at = d.offset();
        let n = d
            .varint_bounded(
                "operator state count",
                count_limit(d, MAX_OPERATOR_STATES, MIN_SUBTASK_BYTES_V1),
            )
            .map_err(c(path))?;
        budget.vec::<OperatorSubtaskState>(path, at, n, "operator states")?;
        budget.vec::<u64>(path, at, n, "operator state offsets")?;
        let mut states = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n);
        for _ in 0..n {
            starts.push(d.offset());
            states.push(decode_subtask(d, path, id, budget, &backend, backend_at)?);
        }
        // Neither parallelism was recorded: the operator's subtask count and the end of
        // its highest range plus one (exact for everything version 1 was written by: one
        // subtask owning every key group).
        budget.vec::<usize>(path, at, n, "operator grouping")?;
        let mut order: Vec<usize> = (0..states.len()).collect();
        order.sort_unstable_by(|&a, &b| states[a].operator_id.cmp(&states[b].operator_id));
        let mut i = 0;
        while i < order.len() {
            let first = &states[order[i]];
            let mut j = i;
            let (mut top_index, mut top_end) = (0u32, 0u32);
            while let Some(s) = order.get(j).map(|&k| &states[k]) {
                if s.operator_id != first.operator_id {
                    break;
                }
                top_index = top_index.max(s.subtask_index);
                top_end = top_end.max(s.key_groups.end());
                j += 1;
            }
            let count = u32::try_from(j - i).unwrap_or(u32::MAX);
            let max_parallelism = top_end.saturating_add(1);
            let parallelism = count.max(top_index.saturating_add(1));
            if max_parallelism > MAX_KEY_GROUPS || parallelism > max_parallelism {
                return Err(Error::corruption(
                    path,
                    starts[order[i]],
                    format!(
                        "version 1 operator {:?}: {parallelism} subtasks over {max_parallelism} \
                         key groups cannot be read as version 2 (at most {MAX_KEY_GROUPS} key \
                         groups, at least one per subtask)",
                        first.operator_id
                    ),
                ));
            }
            for &k in &order[i..j] {
                states[k].parallelism = parallelism;
                states[k].max_parallelism = max_parallelism;
            }
            i = j;
        }
        Ok((states, starts))
    }

    fn decode_subtask(
        d: &mut Decoder<'_>,
        path: &Path,
        id: CheckpointId,
        budget: &mut Budget,
        backend: &str,
        backend_at: u64,
    ) -> Result<OperatorSubtaskState> {
        let start_at = d.offset();
        let operator_id = get_string_in(d, path, budget, "operator id", MAX_NAME_BYTES)?;
        let at = d.offset();
        let subtask = d
            .varint_bounded("subtask index", u64::from(u32::MAX))
            .map_err(c(path))?;
        let subtask_index = u32::try_from(subtask)
            .map_err(|_| Error::corruption(path, at, "subtask index exceeds u32"))?;
        let key_groups = decode_range(d, path, "subtask")?;
        // A handle takes at least 3 bytes (tag, name length, and a role or a length).
        let at = d.offset();
        let n = d
            .varint_bounded("handle count", count_limit(d, MAX_HANDLES_PER_STATE, 3))
            .map_err(c(path))?;
        budget.vec::<Handle>(path, at, n, "handles")?;
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            let at = d.offset();
            let tag = d.u8("handle tag").map_err(c(path))?;
            match tag {
                TAG_FILE => handles.push(Handle::File(decode_file(d, path, id, budget)?)),
                TAG_INLINE => {
                    let name_at = d.offset();
                    let name = get_string_in(d, path, budget, "inline name", MAX_NAME_BYTES)?;
                    check_local_name(path, name_at, "inline name", &name)?;
                    let bytes = get_inline(d, path, budget)?;
                    drop((name, bytes));
                    handles.push(Handle::Inline);
                }
                other => {
                    return Err(Error::corruption(
                        path,
                        at,
                        format!("unknown handle tag {other}"),
                    ))
                }
            }
        }
        let mut keyed_state = Vec::new();
        if !handles.is_empty() {
            let refuse = |why: &str| {
                Error::corruption(
                    path,
                    start_at,
                    format!(
                        "version 1 state of subtask {operator_id}_{subtask_index} (backend \
                         {backend:?}) cannot be read as version 2: {why}"
                    ),
                )
            };
            if backend != LSM {
                return Err(refuse("only lsm state has a typed equivalent"));
            }
            budget.vec::<KeyedStateHandle>(path, start_at, 1, "keyed-state handles")?;
            budget.vec::<FileHandle>(path, start_at, handles.len(), "tables")?;
            budget.bytes(path, backend_at, backend.len(), "backend")?;
            let mut manifest = None;
            let mut tables = Vec::with_capacity(handles.len());
            for h in handles {
                match h {
                    Handle::Inline => return Err(refuse("an inline handle")),
                    Handle::File(f)
                        if f.role == FileRole::Private
                            && f.local_name.ends_with(MANIFEST_SUFFIX) =>
                    {
                        if manifest.replace(f).is_some() {
                            return Err(refuse("two manifest snapshots"));
                        }
                    }
                    Handle::File(f) => tables.push(f),
                }
            }
            let manifest = manifest.ok_or_else(|| refuse("no manifest snapshot"))?;
            keyed_state.push(KeyedStateHandle {
                backend: backend.to_string(),
                key_groups,
                state: KeyedState::IncrementalLsm(LsmFileSet {
                    sequence: 0,
                    manifest,
                    tables,
                }),
            });
        }
        Ok(OperatorSubtaskState {
            operator_id,
            subtask_index,
            // Set by the caller once every subtask of the operator is known.
            parallelism: 0,
            max_parallelism: 0,
            key_groups,
            keyed_state,
            operator_state: Vec::new(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(role: FileRole, local: &str, path: &str, size: u64, crc32c: u32) -> FileHandle {
        FileHandle {
            role,
            local_name: local.into(),
            path: path.into(),
            size,
            crc32c,
        }
    }

    fn range(start: u32, end: u32) -> KeyGroupRange {
        KeyGroupRange::new(start, end).unwrap()
    }

    /// A small metadata value used by several tests (and the worked example of the spec):
    /// a source with operator state, an `lsm` operator, and subtask 1 of 2 of a
    /// `filesystem` operator.
    pub(crate) fn sample() -> Metadata {
        Metadata {
            checkpoint_id: CheckpointId(2),
            job_id: JobId::new("job1").unwrap(),
            kind: CheckpointKind::Incremental,
            trigger_timestamp_ms: 1_700_000_000_000,
            completion_timestamp_ms: 1_700_000_000_250,
            operator_states: vec![
                OperatorSubtaskState {
                    operator_id: "src".into(),
                    subtask_index: 0,
                    parallelism: 1,
                    max_parallelism: 4,
                    key_groups: range(0, 3),
                    keyed_state: vec![],
                    operator_state: vec![OperatorStateHandle {
                        backend: "memory".into(),
                        data: StateData::Inline(vec![0x0a, 0x0b, 0x0c]),
                        states: vec![NamedOperatorState {
                            name: "splits".into(),
                            mode: RedistributionMode::SplitDistribute,
                            offsets: vec![0, 2],
                        }],
                    }],
                },
                OperatorSubtaskState {
                    operator_id: "sum".into(),
                    subtask_index: 0,
                    parallelism: 1,
                    max_parallelism: 4,
                    key_groups: range(0, 3),
                    keyed_state: vec![KeyedStateHandle {
                        backend: "lsm".into(),
                        key_groups: range(0, 3),
                        state: KeyedState::IncrementalLsm(LsmFileSet {
                            sequence: 42,
                            manifest: file(
                                FileRole::Private,
                                "sum_0.manifest",
                                "chk-2/sum_0.manifest",
                                120,
                                0x0bad_f00d,
                            ),
                            tables: vec![file(
                                FileRole::Shared,
                                "000012.sst",
                                "shared/sum_0-000012-1a2b3c4d.sst",
                                4096,
                                0x1a2b_3c4d,
                            )],
                        }),
                    }],
                    operator_state: vec![],
                },
                OperatorSubtaskState {
                    operator_id: "win".into(),
                    subtask_index: 1,
                    parallelism: 2,
                    max_parallelism: 4,
                    key_groups: range(2, 3),
                    keyed_state: vec![KeyedStateHandle {
                        backend: "filesystem".into(),
                        key_groups: range(2, 3),
                        state: KeyedState::KeyGroupsFile {
                            file: file(FileRole::Private, "win_1", "chk-2/win_1", 30, 0x0102_0304),
                            offsets: vec![0, 12],
                        },
                    }],
                    operator_state: vec![],
                },
            ],
            source_offsets: vec![SourceOffset {
                source: "in".into(),
                split: "0".into(),
                offset: 42,
            }],
            properties: vec![("k".into(), "v".into())],
        }
    }

    fn p() -> &'static Path {
        Path::new("/ckpt/job1/chk-2/_metadata")
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The worked example of `format-spec/metadata.md`, byte for byte.
    const SAMPLE_HEX: &str = concat!(
        "54444d4b434b50540300000002000000",
        "00000000046a6f6231000068e5cf8b01",
        "0000fa68e5cf8b010000030373726300",
        "010400000000030000000001066d656d",
        "6f727902030a0b0c010673706c697473",
        "00020000000000000000020000000000",
        "00000373756d00010400000000030000",
        "000101036c736d00000000030000002a",
        "00000000000000010e73756d5f302e6d",
        "616e69666573741463686b2d322f7375",
        "6d5f302e6d616e696665737478000000",
        "000000000df0ad0b01000a3030303031",
        "322e737374207368617265642f73756d",
        "5f302d3030303031322d316132623363",
        "34642e73737400100000000000004d3c",
        "2b1a000377696e010204020000000300",
        "000001020a66696c6573797374656d02",
        "00000003000000010577696e5f310b63",
        "686b2d322f77696e5f311e0000000000",
        "0000040302010200000000000000000c",
        "00000000000000000102696e01302a00",
        "00000000000001016b01761a782856",
    );

    #[test]
    fn sample_encoding_is_the_worked_example_of_the_spec() {
        assert_eq!(hex(&sample().encode()), SAMPLE_HEX);
    }

    #[test]
    fn a_flink_metadata_is_named_as_flinks() {
        // Flink's header: magic 0x4960672d and version 4, both big endian, then its body.
        let mut flink = vec![0x49, 0x60, 0x67, 0x2d, 0, 0, 0, 4];
        flink.extend_from_slice(&[0u8; 64]);
        let e = Metadata::decode(&flink, Path::new("chk-3/_metadata")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("Apache Flink") && m.contains("version 4"), "{m}");
        assert!(!m.contains("bad magic"), "{m}");
    }

    #[test]
    fn sample_round_trips_and_validates() {
        let m = sample();
        let b = m.encode();
        assert_eq!(Metadata::version_of(&b), Some(3));
        assert_eq!(Metadata::decode(&b, p()).unwrap(), m);
        m.validate(p()).unwrap();
        assert_eq!(m.shared_paths().len(), 1);
        assert_eq!(m.file_handles().count(), 3);
        assert_eq!(m.inline_bytes(), 3);
        assert_eq!(
            m.backends().into_iter().collect::<Vec<_>>(),
            ["filesystem", "lsm", "memory"]
        );
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let b = sample().encode();
        for n in 0..b.len() {
            let e = Metadata::decode(&b[..n], p()).unwrap_err();
            assert!(e.is_corruption(), "length {n}: {e}");
            assert!(e.to_string().contains("chk-2/_metadata"), "{e}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let b = sample().encode();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut x = b.clone();
                x[i] ^= 1 << bit;
                assert!(Metadata::decode(&x, p()).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn wrong_magic_and_future_version_are_named() {
        let mut b = sample().encode();
        b[0] = b'X';
        let e = Metadata::decode(&b, p()).unwrap_err().to_string();
        assert!(e.contains("bad magic") && e.contains("offset 0"), "{e}");
        for (v, who) in [(4u8, "newer"), (0, "unknown")] {
            let mut b = sample().encode();
            b[VERSION_OFFSET] = v;
            let e = Metadata::decode(&b, p()).unwrap_err().to_string();
            assert!(
                e.contains(&format!("version {v}")) && e.contains(who),
                "{e}"
            );
            assert!(e.contains("offset 8"), "{e}");
        }
    }

    /// Re-seals bytes with a correct crc, to reach the body checks behind the checksum.
    fn reseal(mut body_and_header: Vec<u8>) -> Vec<u8> {
        let crc = codec::crc32c(&body_and_header);
        codec::put_u32(&mut body_and_header, crc);
        body_and_header
    }

    /// Header bytes up to the operator states, of `version`.
    fn header_bytes(version: u32) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        codec::put_u32(&mut b, version);
        codec::put_u64(&mut b, 2);
        put_str(&mut b, "job");
        b.push(0);
        codec::put_u64(&mut b, 0);
        codec::put_u64(&mut b, 0);
        b
    }

    #[test]
    fn hostile_counts_are_rejected_before_allocating() {
        let mut b = header_bytes(FORMAT_VERSION);
        codec::put_varint(&mut b, u64::MAX >> 1); // operator state count
        let e = Metadata::decode(&reseal(b), p()).unwrap_err();
        assert!(e.to_string().contains("operator state count"), "{e}");
    }

    #[test]
    fn unsafe_paths_in_handles_are_rejected() {
        fn set_table(m: &mut Metadata, f: FileHandle) {
            if let KeyedState::IncrementalLsm(set) = &mut m.operator_states[1].keyed_state[0].state
            {
                set.tables[0] = f;
            }
        }
        for (role, bad) in [
            (FileRole::Shared, "/etc/passwd"),
            (FileRole::Shared, "shared/../../x"),
            (FileRole::Shared, "chk-2/x"),
            (FileRole::Private, "chk-3/x"),
            (FileRole::Private, "chk-2/../chk-1/x"),
        ] {
            let mut m = sample();
            set_table(&mut m, file(role, "a", bad, 1, 1));
            let e = Metadata::decode(&m.encode(), p()).unwrap_err();
            assert!(matches!(e, Error::UnsafePath { .. }), "{bad}: {e}");
            assert!(m.validate(p()).is_err());
        }
        let mut m = sample();
        set_table(
            &mut m,
            file(FileRole::Shared, "../../outside", "shared/x", 1, 1),
        );
        let e = Metadata::decode(&m.encode(), p()).unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = sample().encode();
        b.truncate(b.len() - CRC_BYTES);
        b.push(0);
        let e = Metadata::decode(&reseal(b), p()).unwrap_err().to_string();
        assert!(e.contains("unexpected bytes"), "{e}");
    }

    /// Asserts that `m` encodes to a file the decoder refuses as corrupt, naming the file,
    /// an offset and `needle`.
    fn refused(m: &Metadata, needle: &str) {
        let e = Metadata::decode(&m.encode(), p()).unwrap_err();
        let s = e.to_string();
        assert!(e.is_corruption(), "{needle}: {s}");
        assert!(s.contains("chk-2/_metadata") && s.contains("offset"), "{s}");
        assert!(s.contains(needle), "wanted {needle:?}: {s}");
        assert!(m.validate(p()).is_err());
    }

    fn with_win_offsets(offsets: Vec<u64>) -> Metadata {
        let mut m = sample();
        if let KeyedState::KeyGroupsFile { offsets: o, .. } =
            &mut m.operator_states[2].keyed_state[0].state
        {
            *o = offsets;
        }
        m
    }

    #[test]
    fn key_group_offsets_are_checked() {
        refused(&with_win_offsets(vec![12, 0]), "before the previous one");
        refused(
            &with_win_offsets(vec![0, 31]),
            "past the end of its 30 bytes",
        );
        refused(&with_win_offsets(vec![0]), "1 offsets for 2 key groups");
        refused(
            &with_win_offsets(vec![0, 1, 2]),
            "3 offsets for 2 key groups",
        );
        // An empty last key group ends exactly at the end.
        with_win_offsets(vec![0, 30]).validate(p()).unwrap();
        let mut m = sample();
        m.operator_states[2].keyed_state[0].state = KeyedState::KeyGroupsInline {
            bytes: vec![1, 2],
            offsets: vec![0, 3],
        };
        refused(&m, "past the end of its 2 bytes");
        let mut m = sample();
        m.operator_states[0].operator_state[0].states[0].offsets = vec![2, 1];
        refused(
            &m,
            "partition offsets: offset 1 is 1, before the previous one",
        );
        m.operator_states[0].operator_state[0].states[0].offsets = vec![4];
        refused(&m, "past the end of its 3 bytes");
    }

    #[test]
    fn key_group_ranges_and_parallelism_are_checked() {
        let mut m = sample();
        m.operator_states[2].keyed_state[0].key_groups = range(1, 2);
        m.operator_states[2].keyed_state[0].state = KeyedState::KeyGroupsInline {
            bytes: vec![],
            offsets: vec![0, 0],
        };
        refused(&m, "outside its subtask's 2..=3");
        let mut m = sample();
        m.operator_states[1].key_groups = range(0, 4);
        refused(&m, "reaches past the max parallelism 4");
        let mut m = sample();
        m.operator_states[2].subtask_index = 2;
        refused(&m, "subtask index 2 is not below the parallelism 2");
        let mut m = sample();
        m.operator_states[2].parallelism = 5;
        refused(&m, "parallelism 5 is outside 1..=4");
        let mut m = sample();
        m.operator_states[0].parallelism = 0;
        refused(&m, "parallelism 0");
        let mut m = sample();
        m.operator_states[0].max_parallelism = 0;
        refused(&m, "max parallelism 0");
        let mut m = sample();
        m.operator_states[0].max_parallelism = MAX_KEY_GROUPS + 1;
        refused(&m, "max parallelism: 32769 exceeds the limit 32768");
    }

    #[test]
    fn subtasks_of_one_operator_must_fit_together() {
        let win0 = |r: KeyGroupRange, index: u32| OperatorSubtaskState {
            operator_id: "win".into(),
            subtask_index: index,
            parallelism: 2,
            max_parallelism: 4,
            key_groups: r,
            keyed_state: vec![],
            operator_state: vec![],
        };
        let mut m = sample();
        m.operator_states.push(win0(range(0, 1), 0));
        m.validate(p()).unwrap();
        let mut m = sample();
        m.operator_states.push(win0(range(1, 2), 0));
        refused(&m, "overlap in key groups (1..=2 and 2..=3)");
        let mut m = sample();
        m.operator_states.push(win0(range(0, 1), 1));
        refused(&m, "subtask win_1 appears twice");
        let mut m = sample();
        let mut other = win0(range(0, 1), 0);
        other.max_parallelism = 8;
        m.operator_states.push(other);
        refused(&m, "max parallelism 8 and 4");
        // Other operators may use the same key groups.
        let mut m = sample();
        let mut other = win0(range(2, 3), 1);
        other.operator_id = "win2".into();
        m.operator_states.push(other);
        m.validate(p()).unwrap();
    }

    #[test]
    fn names_modes_and_kinds_are_checked() {
        let mut m = sample();
        m.operator_states[1].keyed_state[0].backend = String::new();
        refused(&m, "backend is empty");
        let mut m = sample();
        let dup = m.operator_states[0].operator_state[0].states[0].clone();
        m.operator_states[0].operator_state[0].states.push(dup);
        refused(&m, "\"splits\" named twice");
        // An unknown redistribution mode: the byte after the name `splits`.
        let b = sample().encode();
        let name_at = b.windows(6).position(|w| w == b"splits").unwrap();
        let mut x = b[..b.len() - CRC_BYTES].to_vec();
        x[name_at + 6] = 3;
        let e = Metadata::decode(&reseal(x), p()).unwrap_err().to_string();
        assert!(
            e.contains("unknown redistribution mode 3")
                && e.contains(&format!("offset {}", name_at + 6)),
            "{e}"
        );
        // An unknown keyed-state kind: the byte before the backend `lsm`.
        let lsm_at = b.windows(4).position(|w| w == b"\x03lsm").unwrap();
        let mut x = b[..b.len() - CRC_BYTES].to_vec();
        x[lsm_at - 1] = 5;
        let e = Metadata::decode(&reseal(x), p()).unwrap_err().to_string();
        assert!(e.contains("unknown keyed-state handle kind 5"), "{e}");
    }

    #[test]
    fn redistribution_modes_have_flinks_names() {
        let names: Vec<_> = [
            RedistributionMode::SplitDistribute,
            RedistributionMode::Union,
            RedistributionMode::Broadcast,
        ]
        .iter()
        .map(|m| (m.as_str(), m.to_byte()))
        .collect();
        assert_eq!(
            names,
            [("SPLIT_DISTRIBUTE", 0), ("UNION", 1), ("BROADCAST", 2)]
        );
    }

    /// A version 1 handle, for the version 1 writer below.
    pub(crate) enum V1Handle {
        File(FileHandle),
        Inline { name: String, bytes: Vec<u8> },
    }

    /// A version 1 operator subtask state: operator id, subtask index, key groups,
    /// handles.
    pub(crate) type V1State = (String, u32, KeyGroupRange, Vec<V1Handle>);

    /// The version 1 writer, kept to test that version 1 is still read: `m`'s header,
    /// source offsets and properties, with one `backend` and untyped `states`.
    pub(crate) fn encode_v1(m: &Metadata, backend: &str, states: &[V1State]) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&MAGIC);
        codec::put_u32(&mut b, 1);
        codec::put_u64(&mut b, m.checkpoint_id.0);
        put_str(&mut b, m.job_id.as_str());
        b.push(m.kind.to_byte());
        codec::put_u64(&mut b, m.trigger_timestamp_ms);
        codec::put_u64(&mut b, m.completion_timestamp_ms);
        put_str(&mut b, backend);
        codec::put_varint(&mut b, states.len() as u64);
        for (operator_id, subtask_index, key_groups, handles) in states {
            put_str(&mut b, operator_id);
            codec::put_varint(&mut b, u64::from(*subtask_index));
            codec::put_u32(&mut b, key_groups.start());
            codec::put_u32(&mut b, key_groups.end());
            codec::put_varint(&mut b, handles.len() as u64);
            for h in handles {
                match h {
                    V1Handle::File(f) => {
                        b.push(1);
                        put_file(&mut b, f);
                    }
                    V1Handle::Inline { name, bytes } => {
                        b.push(2);
                        put_str(&mut b, name);
                        codec::put_length_prefixed(&mut b, bytes);
                    }
                }
            }
        }
        put_tail(&mut b, &m.source_offsets, &m.properties);
        b
    }

    fn sst() -> FileHandle {
        file(
            FileRole::Shared,
            "000012.sst",
            "shared/sum_0-000012-1a2b3c4d.sst",
            4096,
            0x1a2b_3c4d,
        )
    }

    /// The version 1 worked example of `format-spec/metadata.md`, byte for byte.
    const V1_SAMPLE_HEX: &str = concat!(
        "54444d4b434b50540100000002000000",
        "00000000046a6f6231000068e5cf8b01",
        "0000fa68e5cf8b010000036c736d0103",
        "73756d00000000007f0000000201000a",
        "3030303031322e737374207368617265",
        "642f73756d5f302d3030303031322d31",
        "613262336334642e7373740010000000",
        "0000004d3c2b1a02084d414e49464553",
        "5402abcd0102696e01302a0000000000",
        "000001016b017617b43777",
    );

    #[test]
    fn the_version_1_writer_is_the_version_1_spec() {
        let v1 = encode_v1(
            &sample(),
            "lsm",
            &[(
                "sum".into(),
                0,
                range(0, 127),
                vec![
                    V1Handle::File(sst()),
                    V1Handle::Inline {
                        name: "MANIFEST".into(),
                        bytes: vec![0xab, 0xcd],
                    },
                ],
            )],
        );
        assert_eq!(hex(&v1), V1_SAMPLE_HEX);
        // Its inline manifest has no version 2 equivalent: refused, naming why.
        let e = Metadata::decode(&v1, p()).unwrap_err().to_string();
        assert!(
            e.contains("version 1 state of subtask sum_0") && e.contains("inline handle"),
            "{e}"
        );
        assert!(e.contains("offset 47"), "{e}");
    }

    fn v1_lsm_states() -> Vec<V1State> {
        let manifest = file(
            FileRole::Private,
            "sum_0.manifest",
            "chk-2/sum_0.manifest",
            120,
            7,
        );
        vec![(
            "sum".into(),
            0,
            range(0, 127),
            vec![V1Handle::File(sst()), V1Handle::File(manifest)],
        )]
    }

    #[test]
    fn version_1_lsm_state_reads_as_an_incremental_lsm_set() {
        let header = sample();
        let v1 = encode_v1(&header, "lsm", &v1_lsm_states());
        assert_eq!(Metadata::version_of(&v1), Some(1));
        let m = Metadata::decode(&v1, p()).unwrap();
        let want = OperatorSubtaskState {
            operator_id: "sum".into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: range(0, 127),
            keyed_state: vec![KeyedStateHandle {
                backend: "lsm".into(),
                key_groups: range(0, 127),
                state: KeyedState::IncrementalLsm(LsmFileSet {
                    sequence: 0,
                    manifest: file(
                        FileRole::Private,
                        "sum_0.manifest",
                        "chk-2/sum_0.manifest",
                        120,
                        7,
                    ),
                    tables: vec![sst()],
                }),
            }],
            operator_state: vec![],
        };
        assert_eq!(m.operator_states, vec![want]);
        assert_eq!(m.source_offsets, header.source_offsets);
        assert_eq!(m.properties, header.properties);
        assert_eq!(m.checkpoint_id, header.checkpoint_id);
        // Written again, it is version 2 and reads the same.
        let v2 = m.encode();
        assert_eq!(Metadata::version_of(&v2), Some(FORMAT_VERSION));
        assert_eq!(Metadata::decode(&v2, p()).unwrap(), m);
        // Every bit flip of a version 1 file is still detected.
        for i in 0..v1.len() {
            for bit in 0..8 {
                let mut x = v1.clone();
                x[i] ^= 1 << bit;
                assert!(Metadata::decode(&x, p()).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn version_1_state_without_a_typed_equivalent_is_refused() {
        let header = sample();
        let e = Metadata::decode(&encode_v1(&header, "test", &v1_lsm_states()), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("only lsm state"), "{e}");
        let mut no_manifest = v1_lsm_states();
        no_manifest[0].3.pop();
        let e = Metadata::decode(&encode_v1(&header, "lsm", &no_manifest), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no manifest snapshot"), "{e}");
        // A subtask with no handles reads as one with no state, whatever the backend.
        let empty = vec![("op".into(), 0, range(0, 127), vec![])];
        let m = Metadata::decode(&encode_v1(&header, "test", &empty), p()).unwrap();
        assert!(m.operator_states[0].keyed_state.is_empty());
        // Two version 1 subtasks of one operator that overlap are refused as in version 2.
        let mut two = v1_lsm_states();
        two.push(("sum".into(), 1, range(100, 127), vec![]));
        let e = Metadata::decode(&encode_v1(&header, "lsm", &two), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlap"), "{e}");
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,12}"
    }

    fn file_handle(id: u64) -> impl Strategy<Value = FileHandle> {
        (any::<bool>(), name(), name(), any::<u64>(), any::<u32>()).prop_map(
            move |(shared, local, f, size, crc32c)| {
                let (role, path) = if shared {
                    (FileRole::Shared, format!("shared/{f}.sst"))
                } else {
                    (FileRole::Private, format!("chk-{id}/{f}"))
                };
                FileHandle {
                    role,
                    local_name: format!("{local}.sst"),
                    path,
                    size,
                    crc32c,
                }
            },
        )
    }

    /// `n` sorted offsets at most `len`, from random fractions.
    fn offsets_within(fractions: &[u16], len: u64) -> Vec<u64> {
        let mut v: Vec<u64> = fractions
            .iter()
            .map(|f| ((u128::from(*f) * u128::from(len)) / u128::from(u16::MAX)) as u64)
            .collect();
        v.sort_unstable();
        v
    }

    fn keyed_handle(id: u64, r: KeyGroupRange) -> impl Strategy<Value = KeyedStateHandle> {
        let n = r.len() as usize;
        (
            0u8..3,
            name(),
            any::<u64>(),
            file_handle(id),
            proptest::collection::vec(file_handle(id), 0..4),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u16>(), n..=n),
        )
            .prop_map(move |(kind, backend, sequence, f, tables, bytes, fr)| {
                let state = match kind {
                    0 => KeyedState::IncrementalLsm(LsmFileSet {
                        sequence,
                        manifest: f,
                        tables,
                    }),
                    1 => KeyedState::KeyGroupsFile {
                        offsets: offsets_within(&fr, f.size),
                        file: f,
                    },
                    _ => KeyedState::KeyGroupsInline {
                        offsets: offsets_within(&fr, bytes.len() as u64),
                        bytes,
                    },
                };
                KeyedStateHandle {
                    backend,
                    key_groups: r,
                    state,
                }
            })
    }

    fn operator_handle(id: u64) -> impl Strategy<Value = OperatorStateHandle> {
        (
            name(),
            any::<bool>(),
            file_handle(id),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::btree_map(
                name(),
                (0u8..3, proptest::collection::vec(any::<u16>(), 0..5)),
                0..3,
            ),
        )
            .prop_map(|(backend, inline, f, bytes, named)| {
                let data = if inline {
                    StateData::Inline(bytes)
                } else {
                    StateData::File(f)
                };
                let len = data.len();
                let states = named
                    .into_iter()
                    .map(|(name, (mode, fr))| NamedOperatorState {
                        name,
                        mode: RedistributionMode::from_byte(mode).unwrap(),
                        offsets: offsets_within(&fr, len),
                    })
                    .collect();
                OperatorStateHandle {
                    backend,
                    data,
                    states,
                }
            })
    }

    /// The subtasks of one operator: Flink's ranges for `present` of `parallelism`
    /// subtasks over `max` key groups.
    fn operator(id: u64, op: String) -> impl Strategy<Value = Vec<OperatorSubtaskState>> {
        (1u32..=16)
            .prop_flat_map(|max| (Just(max), 1..=max))
            .prop_flat_map(move |(max, parallelism)| {
                let op = op.clone();
                let subtasks: Vec<_> = (0..parallelism.min(3))
                    .map(|i| {
                        let (m, p, i64_) = (u64::from(max), u64::from(parallelism), u64::from(i));
                        let r = range(
                            (i64_ * m).div_ceil(p) as u32,
                            ((i64_ + 1) * m).div_ceil(p) as u32 - 1,
                        );
                        let op = op.clone();
                        (
                            proptest::collection::vec(keyed_handle(id, r), 0..3),
                            proptest::collection::vec(operator_handle(id), 0..2),
                        )
                            .prop_map(
                                move |(keyed_state, operator_state)| OperatorSubtaskState {
                                    operator_id: op.clone(),
                                    subtask_index: i,
                                    parallelism,
                                    max_parallelism: max,
                                    key_groups: r,
                                    keyed_state,
                                    operator_state,
                                },
                            )
                    })
                    .collect();
                subtasks
            })
    }

    fn metadata() -> impl Strategy<Value = Metadata> {
        (
            any::<u64>(),
            "[A-Za-z0-9_-]{1,64}",
            0u8..4,
            any::<u64>(),
            any::<u64>(),
        )
            .prop_flat_map(|(id, job, kind, t0, t1)| {
                let offset =
                    (".{0,10}", ".{0,10}", any::<u64>()).prop_map(|(source, split, offset)| {
                        SourceOffset {
                            source,
                            split,
                            offset,
                        }
                    });
                (
                    Just((id, job, kind, t0, t1)),
                    proptest::collection::btree_set(".{0,20}", 0..3).prop_flat_map(move |ops| {
                        ops.into_iter()
                            .map(|op| operator(id, op))
                            .collect::<Vec<_>>()
                    }),
                    proptest::collection::vec(offset, 0..4),
                    proptest::collection::vec((".{0,8}", ".{0,30}"), 0..4),
                )
            })
            .prop_map(
                |((id, job, kind, t0, t1), operators, source_offsets, properties)| {
                    let mut m = Metadata {
                        checkpoint_id: CheckpointId(id),
                        job_id: JobId::new(job).unwrap(),
                        kind: CheckpointKind::from_byte(kind).unwrap(),
                        trigger_timestamp_ms: t0,
                        completion_timestamp_ms: t1,
                        operator_states: operators.into_iter().flatten().collect(),
                        source_offsets,
                        properties,
                    };
                    if m.kind.is_savepoint() {
                        as_savepoint(&mut m);
                    }
                    m
                },
            )
    }

    /// Makes a checkpoint's content a self-contained savepoint's of `m.kind`: every file in
    /// the savepoint directory; in a canonical savepoint every keyed-state file a
    /// canonical file (and no other keyed state).
    fn as_savepoint(m: &mut Metadata) {
        let canonical = m.kind == CheckpointKind::CanonicalSavepoint;
        let relocate = |f: &mut FileHandle| {
            f.role = FileRole::Savepoint;
            f.path = f
                .path
                .split_once('/')
                .map_or(f.path.clone(), |(_, rest)| rest.to_string());
        };
        for s in &mut m.operator_states {
            if canonical {
                s.keyed_state.retain_mut(|h| {
                    match std::mem::replace(
                        &mut h.state,
                        KeyedState::KeyGroupsInline {
                            bytes: Vec::new(),
                            offsets: Vec::new(),
                        },
                    ) {
                        KeyedState::KeyGroupsFile { file, offsets } => {
                            h.state = KeyedState::CanonicalFile { file, offsets };
                            true
                        }
                        _ => false,
                    }
                });
            }
            for h in &mut s.keyed_state {
                match &mut h.state {
                    KeyedState::IncrementalLsm(set) => {
                        relocate(&mut set.manifest);
                        set.tables.iter_mut().for_each(relocate);
                    }
                    KeyedState::KeyGroupsFile { file, .. }
                    | KeyedState::CanonicalFile { file, .. } => relocate(file),
                    KeyedState::KeyGroupsInline { .. } => {}
                }
            }
            for h in &mut s.operator_state {
                if let StateData::File(f) = &mut h.data {
                    relocate(f);
                }
            }
        }
    }

    /// A canonical savepoint: files in its own directory, a canonical keyed-state file and
    /// inline operator state.
    fn savepoint_sample() -> Metadata {
        let mut m = sample();
        m.kind = CheckpointKind::CanonicalSavepoint;
        as_savepoint(&mut m);
        m
    }

    #[test]
    fn a_savepoint_round_trips_and_its_rules_are_checked() {
        let m = savepoint_sample();
        let b = m.encode();
        assert_eq!(Metadata::decode(&b, p()).unwrap(), m);
        let files: Vec<_> = m
            .file_handles()
            .map(|f| (f.role, f.path.as_str()))
            .collect();
        assert_eq!(files, [(FileRole::Savepoint, "win_1")]);

        // A savepoint file in a checkpoint, a checkpoint file in a savepoint.
        let mut bad = m.clone();
        bad.kind = CheckpointKind::Full;
        let e = Metadata::decode(&bad.encode(), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("role savepoint") && e.contains("win_1"), "{e}");
        let mut bad = sample();
        bad.kind = CheckpointKind::Savepoint;
        let e = Metadata::decode(&bad.encode(), p())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("its own directory") && e.contains("role shared"),
            "{e}"
        );
        // A canonical file in a native savepoint; native keyed state in a canonical one.
        let mut bad = m.clone();
        bad.kind = CheckpointKind::Savepoint;
        let e = Metadata::decode(&bad.encode(), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("canonical-file") && e.contains("win_1"), "{e}");
        let mut native = sample();
        native.kind = CheckpointKind::Savepoint;
        as_savepoint(&mut native);
        Metadata::decode(&native.encode(), p()).unwrap();
        native.kind = CheckpointKind::CanonicalSavepoint;
        let e = Metadata::decode(&native.encode(), p())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("incremental-lsm") && e.contains("canonical savepoints only"),
            "{e}"
        );
        // `_metadata` itself is no savepoint file.
        let mut bad = m.clone();
        for s in &mut bad.operator_states {
            for h in &mut s.keyed_state {
                if let KeyedState::CanonicalFile { file, .. } = &mut h.state {
                    file.path = METADATA_FILE_NAME.into();
                }
            }
        }
        assert!(matches!(
            Metadata::decode(&bad.encode(), p()),
            Err(Error::UnsafePath { .. })
        ));
    }

    #[test]
    fn what_version_3_added_is_refused_in_older_versions() {
        // The savepoint bytes relabelled as version 2: the canonical kind is unknown there.
        let b = savepoint_sample().encode();
        let mut x = b[..b.len() - CRC_BYTES].to_vec();
        x[VERSION_OFFSET] = 2;
        let e = Metadata::decode(&reseal(x), p()).unwrap_err().to_string();
        assert!(e.contains("unknown checkpoint kind 3"), "{e}");
        // A native savepoint of version 2 keeps version 2's rules: files in its job
        // directory, and no savepoint role.
        let mut native = sample();
        native.kind = CheckpointKind::Savepoint;
        let mut x = native.encode();
        x.truncate(x.len() - CRC_BYTES);
        x[VERSION_OFFSET] = 2;
        assert_eq!(Metadata::decode(&reseal(x), p()).unwrap(), native);
        as_savepoint(&mut native);
        let mut x = native.encode();
        x.truncate(x.len() - CRC_BYTES);
        x[VERSION_OFFSET] = 2;
        let e = Metadata::decode(&reseal(x), p()).unwrap_err().to_string();
        assert!(e.contains("only a version 3 savepoint"), "{e}");
    }

    proptest! {
        #[test]
        fn random_metadata_round_trips(m in metadata()) {
            let b = m.encode();
            prop_assert_eq!(Metadata::decode(&b, p()).unwrap(), m);
        }

        #[test]
        fn random_damage_never_panics(m in metadata(), cut in any::<prop::sample::Index>(),
                                      flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut b = m.encode();
            let i = flip.index(b.len());
            b[i] ^= 1 << bit;
            prop_assert!(Metadata::decode(&b, p()).is_err());
            let n = cut.index(b.len());
            let _ = Metadata::decode(&b[..n], p());
        }
    }
}
