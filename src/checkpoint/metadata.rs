//! `_metadata`: the manifest of one checkpoint, and the proof that it completed.
//!
//! This module owns the format (documented byte by byte in `format-spec/metadata.md`):
//! a magic, a format version, the body, and a crc32c over everything before it. The
//! decoder trusts nothing: every count and length is checked against the bytes that remain
//! and against a documented maximum before anything is allocated, every path is checked
//! for safety, and every error names the file and the offset.

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
/// The format version this code writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
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
/// Most handles in one operator-subtask state.
pub const MAX_HANDLES_PER_STATE: usize = 1 << 20;
/// Most source offsets in one checkpoint.
pub const MAX_SOURCE_OFFSETS: usize = 1 << 20;
/// Most properties in one checkpoint.
pub const MAX_PROPERTIES: usize = 1 << 16;

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

const TAG_FILE: u8 = 1;
const TAG_INLINE: u8 = 2;

/// Where a file of a checkpoint lives, and so who may delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileRole {
    /// Under `shared/`: may be referenced by several checkpoints; deleted when none does.
    Shared,
    /// Under `chk-<N>/`: belongs to checkpoint N alone and goes with its directory.
    Private,
}

impl FileRole {
    fn to_byte(self) -> u8 {
        match self {
            FileRole::Shared => 0,
            FileRole::Private => 1,
        }
    }

    fn from_byte(b: u8) -> Option<FileRole> {
        match b {
            0 => Some(FileRole::Shared),
            1 => Some(FileRole::Private),
            _ => None,
        }
    }

    /// `shared` or `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileRole::Shared => "shared",
            FileRole::Private => "private",
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
    /// Path relative to the job directory: `shared/…` or `chk-<N>/…`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
}

/// One piece of an operator subtask's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateHandle {
    /// State held in a file of the checkpoint.
    File(FileHandle),
    /// Small state held inside `_metadata` itself.
    Inline {
        /// What the bytes are, for the backend (e.g. `MANIFEST`).
        name: String,
        /// The state.
        bytes: Vec<u8>,
    },
}

/// The state of one operator subtask in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSubtaskState {
    /// The operator's id.
    pub operator_id: String,
    /// Index of the subtask among the operator's parallel instances.
    pub subtask_index: u32,
    /// The key groups whose state this subtask holds.
    pub key_groups: KeyGroupRange,
    /// The state itself.
    pub handles: Vec<StateHandle>,
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
    /// The state backend that wrote the state (e.g. `lsm`, `memory`).
    pub backend: String,
    /// Per operator subtask state.
    pub operator_states: Vec<OperatorSubtaskState>,
    /// Source positions to resume from.
    pub source_offsets: Vec<SourceOffset>,
    /// Free-form properties.
    pub properties: Vec<(String, String)>,
}

impl Metadata {
    /// Every file handle, in order of appearance (a file referenced twice appears twice).
    pub fn file_handles(&self) -> impl Iterator<Item = &FileHandle> {
        self.operator_states
            .iter()
            .flat_map(|s| s.handles.iter())
            .filter_map(|h| match h {
                StateHandle::File(f) => Some(f),
                StateHandle::Inline { .. } => None,
            })
    }

    /// The distinct paths of the shared files this checkpoint references.
    pub fn shared_paths(&self) -> BTreeSet<&str> {
        self.file_handles()
            .filter(|f| f.role == FileRole::Shared)
            .map(|f| f.path.as_str())
            .collect()
    }

    /// Total bytes of inline state.
    pub fn inline_bytes(&self) -> u64 {
        self.operator_states
            .iter()
            .flat_map(|s| s.handles.iter())
            .map(|h| match h {
                StateHandle::Inline { bytes, .. } => bytes.len() as u64,
                StateHandle::File(_) => 0,
            })
            .sum()
    }

    /// Serializes into the `_metadata` format.
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
        put_str(&mut b, &self.backend);
        codec::put_varint(&mut b, self.operator_states.len() as u64);
        for s in &self.operator_states {
            put_str(&mut b, &s.operator_id);
            codec::put_varint(&mut b, u64::from(s.subtask_index));
            codec::put_u32(&mut b, s.key_groups.start);
            codec::put_u32(&mut b, s.key_groups.end);
            codec::put_varint(&mut b, s.handles.len() as u64);
            for h in &s.handles {
                match h {
                    StateHandle::File(f) => {
                        b.push(TAG_FILE);
                        b.push(f.role.to_byte());
                        put_str(&mut b, &f.local_name);
                        put_str(&mut b, &f.path);
                        codec::put_u64(&mut b, f.size);
                        codec::put_u32(&mut b, f.crc32c);
                    }
                    StateHandle::Inline { name, bytes } => {
                        b.push(TAG_INLINE);
                        put_str(&mut b, name);
                        codec::put_length_prefixed(&mut b, bytes);
                    }
                }
            }
        }
        codec::put_varint(&mut b, self.source_offsets.len() as u64);
        for o in &self.source_offsets {
            put_str(&mut b, &o.source);
            put_str(&mut b, &o.split);
            codec::put_u64(&mut b, o.offset);
        }
        codec::put_varint(&mut b, self.properties.len() as u64);
        for (k, v) in &self.properties {
            put_str(&mut b, k);
            put_str(&mut b, v);
        }
        let crc = codec::crc32c(&b);
        codec::put_u32(&mut b, crc);
        b
    }

    /// Checks that [`Metadata::decode`] will accept what [`Metadata::encode`] produces:
    /// limits, key-group ranges and path safety. `path` names the file for errors.
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

    /// Parses `_metadata` bytes; `path` names the file in errors.
    ///
    /// Rejects, with [`Error::Corruption`] naming the offset: files larger than
    /// [`MAX_METADATA_BYTES`], truncation, a wrong magic, a version other than
    /// [`FORMAT_VERSION`], a crc mismatch, any count or length beyond the bytes remaining
    /// or its maximum, unknown tags, invalid UTF-8, an invalid job id or key-group range,
    /// and trailing bytes. Rejects unsafe file paths with [`Error::UnsafePath`].
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
        if version != FORMAT_VERSION {
            let who = if version > FORMAT_VERSION {
                "written by a newer tidemark"
            } else {
                "unknown"
            };
            return Err(Error::corruption(
                path,
                VERSION_OFFSET as u64,
                format!(
                    "unsupported format version {version} ({who}); this reader understands {FORMAT_VERSION}"
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
        decode_body(&mut d, path, &mut budget)
    }
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

fn decode_body(d: &mut Decoder<'_>, path: &Path, budget: &mut Budget) -> Result<Metadata> {
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
    let kind = CheckpointKind::from_byte(kind_byte).ok_or_else(|| {
        Error::corruption(path, at, format!("unknown checkpoint kind {kind_byte}"))
    })?;
    let trigger_timestamp_ms = d.u64("trigger timestamp").map_err(c(path))?;
    let completion_timestamp_ms = d.u64("completion timestamp").map_err(c(path))?;
    let backend = get_string_in(d, path, budget, "backend", MAX_NAME_BYTES)?;

    // An operator state takes at least 11 bytes: id length, subtask, range, handle count.
    let at = d.offset();
    let n = d
        .varint_bounded(
            "operator state count",
            count_limit(d, MAX_OPERATOR_STATES, 11),
        )
        .map_err(c(path))?;
    budget.vec::<OperatorSubtaskState>(path, at, n, "operator states")?;
    let mut operator_states = Vec::with_capacity(n);
    for _ in 0..n {
        operator_states.push(decode_operator_state(d, path, checkpoint_id, budget)?);
    }

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
        backend,
        operator_states,
        source_offsets,
        properties,
    })
}

fn decode_operator_state(
    d: &mut Decoder<'_>,
    path: &Path,
    id: CheckpointId,
    budget: &mut Budget,
) -> Result<OperatorSubtaskState> {
    let operator_id = get_string_in(d, path, budget, "operator id", MAX_NAME_BYTES)?;
    let at = d.offset();
    let subtask = d
        .varint_bounded("subtask index", u64::from(u32::MAX))
        .map_err(c(path))?;
    let subtask_index = u32::try_from(subtask)
        .map_err(|_| Error::corruption(path, at, "subtask index exceeds u32"))?;
    let at = d.offset();
    let start = d.u32("key-group start").map_err(c(path))?;
    let end = d.u32("key-group end").map_err(c(path))?;
    let key_groups = KeyGroupRange::new(start, end).map_err(|_| {
        Error::corruption(
            path,
            at,
            format!("key-group range {start}..={end}: start is after end"),
        )
    })?;
    // A handle takes at least 3 bytes (tag, name length, and a role or a length).
    let at = d.offset();
    let n = d
        .varint_bounded("handle count", count_limit(d, MAX_HANDLES_PER_STATE, 3))
        .map_err(c(path))?;
    budget.vec::<StateHandle>(path, at, n, "handles")?;
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let at = d.offset();
        let tag = d.u8("handle tag").map_err(c(path))?;
        match tag {
            TAG_FILE => {
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
                handles.push(StateHandle::File(FileHandle {
                    role,
                    local_name,
                    path: entry,
                    size,
                    crc32c,
                }));
            }
            TAG_INLINE => {
                let name_at = d.offset();
                let name = get_string_in(d, path, budget, "inline name", MAX_NAME_BYTES)?;
                check_local_name(path, name_at, "inline name", &name)?;
                let len_at = d.offset();
                let n = d
                    .varint_bounded("inline length", MAX_INLINE_BYTES.min(d.remaining()) as u64)
                    .map_err(c(path))?;
                budget.bytes(path, len_at, n, "inline bytes")?;
                let bytes = d.bytes(n, "inline bytes").map_err(c(path))?.to_vec();
                handles.push(StateHandle::Inline { name, bytes });
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
    Ok(OperatorSubtaskState {
        operator_id,
        subtask_index,
        key_groups,
        handles,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small metadata value used by several tests (and the worked example of the spec).
    pub(crate) fn sample() -> Metadata {
        Metadata {
            checkpoint_id: CheckpointId(2),
            job_id: JobId::new("job1").unwrap(),
            kind: CheckpointKind::Incremental,
            trigger_timestamp_ms: 1_700_000_000_000,
            completion_timestamp_ms: 1_700_000_000_250,
            backend: "lsm".into(),
            operator_states: vec![OperatorSubtaskState {
                operator_id: "sum".into(),
                subtask_index: 0,
                key_groups: KeyGroupRange::new(0, 127).unwrap(),
                handles: vec![
                    StateHandle::File(FileHandle {
                        role: FileRole::Shared,
                        local_name: "000012.sst".into(),
                        path: "shared/sum_0-000012-1a2b3c4d.sst".into(),
                        size: 4096,
                        crc32c: 0x1a2b_3c4d,
                    }),
                    StateHandle::Inline {
                        name: "MANIFEST".into(),
                        bytes: vec![0xab, 0xcd],
                    },
                ],
            }],
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

    /// The worked example of `format-spec/metadata.md`, byte for byte.
    const SAMPLE_HEX: &str = concat!(
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
    fn sample_encoding_is_the_worked_example_of_the_spec() {
        let hex: String = sample()
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, SAMPLE_HEX);
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
        assert_eq!(Metadata::decode(&b, p()).unwrap(), m);
        m.validate(p()).unwrap();
        assert_eq!(m.shared_paths().len(), 1);
        assert_eq!(m.inline_bytes(), 2);
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
        let mut b = sample().encode();
        b[VERSION_OFFSET] = 2;
        let e = Metadata::decode(&b, p()).unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("newer"), "{e}");
        assert!(e.contains("offset 8"), "{e}");
    }

    /// Re-seals bytes with a correct crc, to reach the body checks behind the checksum.
    fn reseal(mut body_and_header: Vec<u8>) -> Vec<u8> {
        let crc = codec::crc32c(&body_and_header);
        codec::put_u32(&mut body_and_header, crc);
        body_and_header
    }

    #[test]
    fn hostile_counts_are_rejected_before_allocating() {
        let mut b = MAGIC.to_vec();
        codec::put_u32(&mut b, FORMAT_VERSION);
        codec::put_u64(&mut b, 1);
        put_str(&mut b, "job");
        b.push(0);
        codec::put_u64(&mut b, 0);
        codec::put_u64(&mut b, 0);
        put_str(&mut b, "lsm");
        codec::put_varint(&mut b, u64::MAX >> 1); // operator state count
        let e = Metadata::decode(&reseal(b), p()).unwrap_err();
        assert!(e.to_string().contains("operator state count"), "{e}");
    }

    #[test]
    fn unsafe_paths_in_handles_are_rejected() {
        for (role, bad) in [
            (FileRole::Shared, "/etc/passwd"),
            (FileRole::Shared, "shared/../../x"),
            (FileRole::Shared, "chk-2/x"),
            (FileRole::Private, "chk-3/x"),
            (FileRole::Private, "chk-2/../chk-1/x"),
        ] {
            let mut m = sample();
            m.operator_states[0].handles[0] = StateHandle::File(FileHandle {
                role,
                local_name: "a".into(),
                path: bad.into(),
                size: 1,
                crc32c: 1,
            });
            let e = Metadata::decode(&m.encode(), p()).unwrap_err();
            assert!(matches!(e, Error::UnsafePath { .. }), "{bad}: {e}");
            assert!(m.validate(p()).is_err());
        }
        let mut m = sample();
        if let StateHandle::File(f) = &mut m.operator_states[0].handles[0] {
            f.local_name = "../../outside".into();
        }
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

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,12}"
    }

    fn handle(id: u64) -> impl Strategy<Value = StateHandle> {
        prop_oneof![
            (any::<bool>(), name(), name(), any::<u64>(), any::<u32>()).prop_map(
                move |(shared, local, file, size, crc32c)| {
                    let (role, path) = if shared {
                        (FileRole::Shared, format!("shared/{file}.sst"))
                    } else {
                        (FileRole::Private, format!("chk-{id}/{file}"))
                    };
                    StateHandle::File(FileHandle {
                        role,
                        local_name: format!("{local}.sst"),
                        path,
                        size,
                        crc32c,
                    })
                }
            ),
            (name(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(name, bytes)| StateHandle::Inline { name, bytes }),
        ]
    }

    fn metadata() -> impl Strategy<Value = Metadata> {
        (
            any::<u64>(),
            "[A-Za-z0-9_-]{1,64}",
            0u8..3,
            any::<u64>(),
            any::<u64>(),
        )
            .prop_flat_map(|(id, job, kind, t0, t1)| {
                let state = (
                    ".{0,20}",
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    proptest::collection::vec(handle(id), 0..5),
                )
                    .prop_map(
                        |(operator_id, subtask_index, a, b, handles)| OperatorSubtaskState {
                            operator_id,
                            subtask_index,
                            key_groups: KeyGroupRange::new(a.min(b), a.max(b)).unwrap(),
                            handles,
                        },
                    );
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
                    ".{0,10}",
                    proptest::collection::vec(state, 0..4),
                    proptest::collection::vec(offset, 0..4),
                    proptest::collection::vec((".{0,8}", ".{0,30}"), 0..4),
                )
            })
            .prop_map(
                |(
                    (id, job, kind, t0, t1),
                    backend,
                    operator_states,
                    source_offsets,
                    properties,
                )| {
                    Metadata {
                        checkpoint_id: CheckpointId(id),
                        job_id: JobId::new(job).unwrap(),
                        kind: CheckpointKind::from_byte(kind).unwrap(),
                        trigger_timestamp_ms: t0,
                        completion_timestamp_ms: t1,
                        backend,
                        operator_states,
                        source_offsets,
                        properties,
                    }
                },
            )
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
