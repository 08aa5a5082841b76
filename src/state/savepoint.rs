//! The canonical savepoint format (`format-spec/savepoint.md`): a subtask's keyed state as
//! key/value records per key group and per state, the same whichever backend wrote it, so
//! that a savepoint taken with one backend restores into any other, with any parallelism
//! (Flink's *canonical* savepoint format).
//!
//! A file is a header (the max parallelism, the key groups, and every state's name, kind,
//! value type and time to live), then one section per key group of chunks of records, then
//! a footer with the offset of every section. Both sides stream: [`CanonicalWriter`] holds
//! one chunk (about 64 KiB) at a time, [`CanonicalReader`] reads one chunk at a time and
//! seeks straight to the sections of the key groups it is asked for. Values are stored as
//! the backends store them (`format-spec/state-layout.md`, with their TTL stamps); a writer
//! leaves out what has expired.
//!
//! This module owns the format; it never knows where the file lies (the checkpoint layer
//! places it) nor how a backend keeps its state ([`restore_into`] goes through the
//! [`KeyedStateBackend`] trait).

use std::io::{Read, Seek, SeekFrom, Write};

use super::key_groups::MaxParallelism;
use super::keyed::{KeyedStateBackend, StateId, StateKind, StateMeta};
use crate::checkpoint::KeyGroupRange;
use crate::codec::{crc32c, crc32c_extend, put_length_prefixed, put_varint, Decoder};
use crate::error::{Error, Result};

/// Magic of a canonical savepoint file: `TDMKSAVP` in ASCII.
pub const CANONICAL_MAGIC: [u8; 8] = *b"TDMKSAVP";
/// The version of the canonical format this code writes and reads.
pub const CANONICAL_VERSION: u32 = 1;
/// Bytes of the header's fixed part: magic, version, header length, max parallelism, first
/// and last key group.
pub const FIXED_HEADER_BYTES: usize = CANONICAL_MAGIC.len() + 5 * 4;
/// The largest header (states included) a reader accepts.
pub const MAX_HEADER_BYTES: u32 = 64 << 20;
/// Bytes before a chunk's body: key group, record count, body length.
pub const CHUNK_HEADER_BYTES: usize = 3 * 4;
/// Bytes of a chunk without its body: its header and its crc32c.
pub const CHUNK_OVERHEAD_BYTES: usize = CHUNK_HEADER_BYTES + 4;
/// A writer closes a chunk once its body reaches this size.
pub const CHUNK_TARGET_BYTES: usize = 64 << 10;
/// The largest chunk body (so the largest record) a writer writes and a reader accepts.
pub const MAX_CHUNK_BODY_BYTES: u32 = 256 << 20;
/// Bytes of the trailer: the footer's offset and its crc32c.
pub const TRAILER_BYTES: usize = 8 + 4;
/// The most states one file holds.
pub const MAX_STATES: usize = 1 << 16;
/// The longest state name or value type.
pub const MAX_NAME_BYTES: usize = 4096;
/// The longest backend name.
pub const MAX_BACKEND_BYTES: usize = 64;

const _: () = assert!(CHUNK_TARGET_BYTES < MAX_CHUNK_BODY_BYTES as usize);
const _: () = assert!(FIXED_HEADER_BYTES == 28);

/// What a canonical file holds besides its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalHeader {
    /// The number of key groups of the operator's state.
    pub max_parallelism: MaxParallelism,
    /// The key groups the file holds, one section each.
    pub key_groups: KeyGroupRange,
    /// The backend that wrote it (information only: any backend reads it).
    pub backend: String,
    /// The states, by index (a record names its state by index).
    pub states: Vec<StateMeta>,
}

impl CanonicalHeader {
    /// Checks the header's limits, naming `name` (the file) in errors.
    fn check(&self, name: &str) -> Result<()> {
        let bad =
            |why: String| Error::InvalidArgument(format!("canonical savepoint {name}: {why}"));
        if self.key_groups.end() >= self.max_parallelism.get() {
            return Err(bad(format!(
                "key groups {} do not fit max parallelism {}",
                self.key_groups,
                self.max_parallelism.get()
            )));
        }
        if self.backend.is_empty() || self.backend.len() > MAX_BACKEND_BYTES {
            return Err(bad(format!("backend name {:?}", self.backend)));
        }
        if self.states.len() > MAX_STATES {
            return Err(bad(format!(
                "{} states, over {MAX_STATES}",
                self.states.len()
            )));
        }
        let mut names: Vec<&str> = self.states.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("state {:?} twice", w[0])));
        }
        for s in &self.states {
            if s.name.is_empty() || s.name.len() > MAX_NAME_BYTES {
                return Err(bad(format!("state name {:?}", s.name)));
            }
            if s.value_type.len() > MAX_NAME_BYTES {
                return Err(bad(format!("value type of state {:?}", s.name)));
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&CANONICAL_MAGIC);
        b.extend_from_slice(&CANONICAL_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // the header length, set below
        b.extend_from_slice(&self.max_parallelism.get().to_le_bytes());
        b.extend_from_slice(&self.key_groups.start().to_le_bytes());
        b.extend_from_slice(&self.key_groups.end().to_le_bytes());
        put_length_prefixed(&mut b, self.backend.as_bytes());
        put_varint(&mut b, self.states.len() as u64);
        for s in &self.states {
            put_length_prefixed(&mut b, s.name.as_bytes());
            put_length_prefixed(&mut b, s.kind.as_str().as_bytes());
            put_length_prefixed(&mut b, s.value_type.as_bytes());
            put_varint(&mut b, s.ttl_ms.unwrap_or(0));
        }
        let len = (b.len() + 4) as u32;
        b[12..16].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes the whole header `bytes` (crc included, already checked).
    fn decode(name: &str, bytes: &[u8]) -> Result<CanonicalHeader> {
        let err = |e: crate::codec::DecodeError| e.into_error(name);
        let mut d = Decoder::new(bytes, 0);
        d.bytes(12, "magic and version").map_err(err)?;
        let _len = d.u32("header length").map_err(err)?;
        let max = d.u32("max parallelism").map_err(err)?;
        let max =
            MaxParallelism::new(max).map_err(|e| Error::corruption(name, 16, e.to_string()))?;
        let start = d.u32("first key group").map_err(err)?;
        let end = d.u32("last key group").map_err(err)?;
        if start > end || end >= max.get() {
            return Err(Error::corruption(
                name,
                20,
                format!(
                    "key groups {start}..={end} do not fit max parallelism {}",
                    max.get()
                ),
            ));
        }
        let at = d.offset();
        let backend = d.length_prefixed_str("backend").map_err(err)?;
        if backend.is_empty() || backend.len() > MAX_BACKEND_BYTES {
            return Err(Error::corruption(
                name,
                at,
                format!("backend name of {} bytes", backend.len()),
            ));
        }
        let backend = backend.to_string();
        // A state takes at least 4 bytes (three lengths and a varint).
        let n = d
            .varint_bounded(
                "state count",
                (MAX_STATES as u64).min(d.remaining() as u64 / 4),
            )
            .map_err(err)?;
        let mut states: Vec<StateMeta> = Vec::with_capacity(n);
        for _ in 0..n {
            let at = d.offset();
            let s_name = d
                .length_prefixed_str("state name")
                .map_err(err)?
                .to_string();
            let kind = d.length_prefixed_str("state kind").map_err(err)?;
            let kind = StateKind::parse(kind).ok_or_else(|| {
                Error::corruption(name, at, format!("state {s_name:?}: unknown kind {kind:?}"))
            })?;
            let value_type = d
                .length_prefixed_str("value type")
                .map_err(err)?
                .to_string();
            let ttl_ms = d.varint("time to live").map_err(err)?;
            if s_name.is_empty()
                || s_name.len() > MAX_NAME_BYTES
                || value_type.len() > MAX_NAME_BYTES
            {
                return Err(Error::corruption(
                    name,
                    at,
                    "a state name or value type out of bounds",
                ));
            }
            if states.iter().any(|s| s.name == s_name) {
                return Err(Error::corruption(
                    name,
                    at,
                    format!("state {s_name:?} twice"),
                ));
            }
            states.push(StateMeta {
                name: s_name,
                kind,
                value_type,
                ttl_ms: (ttl_ms > 0).then_some(ttl_ms),
            });
        }
        if d.remaining() != 4 {
            return Err(Error::corruption(
                name,
                d.offset(),
                format!(
                    "{} bytes between the last state and the header crc32c",
                    d.remaining().saturating_sub(4)
                ),
            ));
        }
        Ok(CanonicalHeader {
            max_parallelism: max,
            // Checked above: start <= end.
            key_groups: KeyGroupRange::new(start, end)
                .map_err(|e| Error::corruption(name, 20, e.to_string()))?,
            backend,
            states,
        })
    }
}

/// What a [`CanonicalWriter`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalWritten {
    /// The key groups of the file.
    pub key_groups: KeyGroupRange,
    /// Where each key group's section starts, one per key group, in order.
    pub offsets: Vec<u64>,
    /// The records written.
    pub records: u64,
    /// The file's size in bytes.
    pub bytes: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
}

/// One record: a value (value, list, reducing or aggregating state: no user key) or a map
/// entry of one key of one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The state's index in the header.
    pub state: u32,
    /// The serialized key.
    pub key: &'a [u8],
    /// A map state's user key; empty for the other kinds.
    pub user_key: &'a [u8],
    /// The value as the backends store it (with its TTL stamps).
    pub value: &'a [u8],
}

/// Writes a canonical savepoint file to `W`, record by record, key group by key group,
/// holding one chunk in memory.
pub struct CanonicalWriter<W: Write> {
    out: W,
    name: String,
    header: CanonicalHeader,
    pos: u64,
    crc: u32,
    offsets: Vec<u64>,
    /// The key group whose section is open.
    open: Option<u32>,
    chunk: Vec<u8>,
    chunk_records: u32,
    records: u64,
}

impl<W: Write> std::fmt::Debug for CanonicalWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanonicalWriter")
            .field("name", &self.name)
            .field("pos", &self.pos)
            .finish()
    }
}

impl<W: Write> CanonicalWriter<W> {
    /// Starts a file on `out` (named `name` in errors) and writes its header.
    pub fn new(out: W, name: impl Into<String>, header: CanonicalHeader) -> Result<Self> {
        let name = name.into();
        header.check(&name)?;
        let mut w = CanonicalWriter {
            out,
            name,
            offsets: Vec::with_capacity(header.key_groups.len() as usize),
            header,
            pos: 0,
            crc: 0,
            open: None,
            chunk: Vec::with_capacity(CHUNK_TARGET_BYTES + 1024),
            chunk_records: 0,
            records: 0,
        };
        let bytes = w.header.encode();
        w.put(&bytes)?;
        Ok(w)
    }

    /// Starts the file of a backend's snapshot on `out` (named `name` in errors): the
    /// header records `states`, the key groups `key_groups` of `max_parallelism`, and
    /// `backend` as the writer.
    pub fn for_snapshot(
        out: W,
        name: &str,
        max_parallelism: MaxParallelism,
        key_groups: KeyGroupRange,
        backend: &str,
        states: &[StateMeta],
    ) -> Result<Self> {
        let header = CanonicalHeader {
            max_parallelism,
            key_groups,
            backend: backend.to_string(),
            states: states.to_vec(),
        };
        CanonicalWriter::new(out, name, header)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.name, e))?;
        self.crc = crc32c_extend(self.crc, bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the open chunk, if it holds records.
    fn flush_chunk(&mut self) -> Result<()> {
        let Some(group) = self.open else {
            return Ok(());
        };
        if self.chunk_records == 0 {
            return Ok(());
        }
        let body = std::mem::take(&mut self.chunk);
        self.put_chunk(group, self.chunk_records, &body)?;
        self.chunk = body;
        self.chunk.clear();
        self.chunk_records = 0;
        Ok(())
    }

    fn put_chunk(&mut self, group: u32, count: u32, body: &[u8]) -> Result<()> {
        let mut head = [0u8; CHUNK_HEADER_BYTES];
        head[0..4].copy_from_slice(&group.to_le_bytes());
        head[4..8].copy_from_slice(&count.to_le_bytes());
        head[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
        let crc = crc32c_extend(crc32c(&head), body);
        self.put(&head)?;
        self.put(body)?;
        self.put(&crc.to_le_bytes())
    }

    /// Closes the open section (its last chunk, then the end chunk).
    fn close_group(&mut self) -> Result<()> {
        if let Some(group) = self.open {
            self.flush_chunk()?;
            self.put_chunk(group, 0, &[])?;
            self.open = None;
        }
        Ok(())
    }

    /// Closes the open section and opens every section up to `group` (the ones between
    /// stay empty).
    fn advance_to(&mut self, group: u32) -> Result<()> {
        self.close_group()?;
        let next = self.header.key_groups.start() + self.offsets.len() as u32;
        for g in next..=group {
            self.offsets.push(self.pos);
            self.open = Some(g);
            if g < group {
                self.close_group()?;
            }
        }
        Ok(())
    }

    /// Appends one record of key group `group` (groups come in ascending order).
    pub fn record(&mut self, group: u32, r: Record<'_>) -> Result<()> {
        if !self.header.key_groups.contains(group) {
            return Err(invalid(
                &self.name,
                format!(
                    "key group {group} is not in the file's {}",
                    self.header.key_groups
                ),
            ));
        }
        match self.open {
            Some(g) if g == group => {}
            Some(g) if g > group => {
                return Err(invalid(
                    &self.name,
                    format!("key group {group} after key group {g}"),
                ))
            }
            _ if (group as usize)
                < self.header.key_groups.start() as usize + self.offsets.len() =>
            {
                return Err(invalid(
                    &self.name,
                    format!("key group {group} after its section was closed"),
                ))
            }
            _ => self.advance_to(group)?,
        }
        let meta = self.header.states.get(r.state as usize).ok_or_else(|| {
            invalid(
                &self.name,
                format!(
                    "state index {} of {} states",
                    r.state,
                    self.header.states.len()
                ),
            )
        })?;
        if meta.kind != StateKind::Map && !r.user_key.is_empty() {
            return Err(invalid(
                &self.name,
                format!(
                    "a user key for state {:?}, a {} state",
                    meta.name,
                    meta.kind.as_str()
                ),
            ));
        }
        let of = self.header.max_parallelism.key_group_of(r.key);
        if of != group {
            return Err(invalid(
                &self.name,
                format!("a key of key group {of} written under key group {group}"),
            ));
        }
        let size = 3 * 10 + 5 + r.key.len() + r.user_key.len() + r.value.len();
        if size > MAX_CHUNK_BODY_BYTES as usize {
            return Err(invalid(
                &self.name,
                format!(
                "a record of state {:?} of {size} bytes, over the limit of {MAX_CHUNK_BODY_BYTES}",
                meta.name
            ),
            ));
        }
        if !self.chunk.is_empty() && self.chunk.len() + size > MAX_CHUNK_BODY_BYTES as usize {
            self.flush_chunk()?;
        }
        put_varint(&mut self.chunk, u64::from(r.state));
        put_length_prefixed(&mut self.chunk, r.key);
        put_length_prefixed(&mut self.chunk, r.user_key);
        put_length_prefixed(&mut self.chunk, r.value);
        self.chunk_records += 1;
        self.records += 1;
        if self.chunk.len() >= CHUNK_TARGET_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Closes every section, writes the footer and the trailer, and flushes `W`.
    pub fn finish(mut self) -> Result<(W, CanonicalWritten)> {
        self.advance_to(self.header.key_groups.end())?;
        self.close_group()?;
        debug_assert_eq!(self.offsets.len() as u64, self.header.key_groups.len());
        let footer_at = self.pos;
        let mut footer = Vec::with_capacity(self.offsets.len() * 8 + 12);
        for o in &self.offsets {
            footer.extend_from_slice(&o.to_le_bytes());
        }
        footer.extend_from_slice(&self.records.to_le_bytes());
        let crc = crc32c(&footer);
        footer.extend_from_slice(&crc.to_le_bytes());
        let at = footer_at.to_le_bytes();
        footer.extend_from_slice(&at);
        footer.extend_from_slice(&crc32c(&at).to_le_bytes());
        self.put(&footer)?;
        self.out
            .flush()
            .map_err(|e| Error::io("write", &self.name, e))?;
        let written = CanonicalWritten {
            key_groups: self.header.key_groups,
            offsets: std::mem::take(&mut self.offsets),
            records: self.records,
            bytes: self.pos,
            crc32c: self.crc,
        };
        Ok((self.out, written))
    }
}

/// Reads a canonical savepoint file from `R` (a file, or bytes in a cursor): the header and
/// footer when opened, then the sections of the key groups asked for, one chunk at a time.
pub struct CanonicalReader<R: Read + Seek> {
    name: String,
    src: R,
    size: u64,
    header: CanonicalHeader,
    header_bytes: u64,
    offsets: Vec<u64>,
    footer_at: u64,
    records: u64,
    buf: Vec<u8>,
    /// Where `src` is positioned (`u64::MAX`: unknown), so sequential reads do not seek.
    pos: u64,
}

impl<R: Read + Seek> std::fmt::Debug for CanonicalReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanonicalReader")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish()
    }
}

/// The whole bytes of a chunk's header, for its checks.
struct ChunkHead {
    group: u32,
    count: u32,
    len: u32,
    bytes: [u8; CHUNK_HEADER_BYTES],
}

impl<R: Read + Seek> CanonicalReader<R> {
    /// Opens the `size` bytes of `src` (named `name` in errors): reads and checks the
    /// header, the trailer and the footer. Nothing else is read.
    pub fn open(name: impl Into<String>, mut src: R, size: u64) -> Result<Self> {
        let name = name.into();
        let min = (FIXED_HEADER_BYTES + 4 + CHUNK_OVERHEAD_BYTES + 12 + TRAILER_BYTES) as u64;
        if size < min {
            return Err(Error::corruption(
                &name,
                size,
                format!("truncated: {size} bytes, shorter than the smallest canonical savepoint ({min})"),
            ));
        }
        let mut fixed = [0u8; 16];
        read_at(&mut src, &name, 0, &mut fixed)?;
        if fixed[..8] != CANONICAL_MAGIC {
            return Err(Error::corruption(
                &name,
                0,
                "bad magic: not a canonical savepoint file",
            ));
        }
        let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if version != CANONICAL_VERSION {
            let who = if version > CANONICAL_VERSION {
                " (written by a newer tidemark)"
            } else {
                ""
            };
            return Err(Error::corruption(
                &name,
                8,
                format!("canonical savepoint version {version}{who} is not supported; this reader reads {CANONICAL_VERSION}"),
            ));
        }
        let header_len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
        let header_max = (size - TRAILER_BYTES as u64).min(u64::from(MAX_HEADER_BYTES));
        if u64::from(header_len) < (FIXED_HEADER_BYTES + 4) as u64
            || u64::from(header_len) > header_max
        {
            return Err(Error::corruption(
                &name,
                12,
                format!(
                    "header length {header_len} is outside {}..={header_max}",
                    FIXED_HEADER_BYTES + 4
                ),
            ));
        }
        let mut head = vec![0u8; header_len as usize];
        read_at(&mut src, &name, 0, &mut head)?;
        let crc_at = head.len() - 4;
        let stored = u32::from_le_bytes([
            head[crc_at],
            head[crc_at + 1],
            head[crc_at + 2],
            head[crc_at + 3],
        ]);
        if crc32c(&head[..crc_at]) != stored {
            return Err(Error::corruption(
                &name,
                crc_at as u64,
                "header crc32c mismatch",
            ));
        }
        let header = CanonicalHeader::decode(&name, &head)?;
        let k = header.key_groups.len();

        let mut trailer = [0u8; TRAILER_BYTES];
        let trailer_at = size - TRAILER_BYTES as u64;
        read_at(&mut src, &name, trailer_at, &mut trailer)?;
        let footer_at = u64::from_le_bytes(trailer[..8].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(trailer[8..].try_into().unwrap_or_default());
        if crc32c(&trailer[..8]) != crc {
            return Err(Error::corruption(
                &name,
                trailer_at,
                "trailer crc32c mismatch (truncated or damaged)",
            ));
        }
        let footer_len = k * 8 + 12;
        if footer_at.checked_add(footer_len) != Some(trailer_at)
            || footer_at < u64::from(header_len) + k * CHUNK_OVERHEAD_BYTES as u64
        {
            return Err(Error::corruption(
                &name,
                trailer_at,
                format!("footer at {footer_at} does not fit {k} key groups before the trailer at {trailer_at}"),
            ));
        }
        let mut footer = vec![0u8; footer_len as usize];
        read_at(&mut src, &name, footer_at, &mut footer)?;
        let crc_at = footer.len() - 4;
        let stored = u32::from_le_bytes(footer[crc_at..].try_into().unwrap_or_default());
        if crc32c(&footer[..crc_at]) != stored {
            return Err(Error::corruption(
                &name,
                footer_at + crc_at as u64,
                "footer crc32c mismatch",
            ));
        }
        let mut d = Decoder::new(&footer[..crc_at], footer_at);
        let mut offsets = Vec::with_capacity(k as usize);
        let mut next = u64::from(header_len);
        for i in 0..k {
            let at = d.offset();
            let o = d.u64("key-group offset").map_err(|e| e.into_error(&name))?;
            // Every section holds at least its end chunk.
            let last = footer_at - (k - i) * CHUNK_OVERHEAD_BYTES as u64;
            if (i == 0 && o != next) || o < next || o > last {
                return Err(Error::corruption(
                    &name,
                    at,
                    format!(
                        "key group {} starts at {o}, outside {next}..={last}",
                        header.key_groups.start() as u64 + i
                    ),
                ));
            }
            next = o + CHUNK_OVERHEAD_BYTES as u64;
            offsets.push(o);
        }
        let records = d.u64("record count").map_err(|e| e.into_error(&name))?;
        Ok(CanonicalReader {
            name,
            src,
            size,
            header,
            header_bytes: u64::from(header_len),
            offsets,
            footer_at,
            records,
            buf: Vec::new(),
            pos: u64::MAX,
        })
    }

    /// The file's name, as errors give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header.
    pub fn header(&self) -> &CanonicalHeader {
        &self.header
    }

    /// Where each key group's section starts, as the footer records it.
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// The number of records, as the footer records it.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The size of the file's header in bytes.
    pub fn header_bytes(&self) -> u64 {
        self.header_bytes
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `buf.len()` bytes at `at`, seeking only when not already there.
    fn read_exact_at(&mut self, at: u64, buf: &mut [u8]) -> Result<()> {
        let result = if self.pos == at {
            read_here(&mut self.src, &self.name, at, buf)
        } else {
            read_at(&mut self.src, &self.name, at, buf)
        };
        self.pos = match result {
            Ok(()) => at + buf.len() as u64,
            Err(_) => u64::MAX,
        };
        result
    }

    fn read_head(&mut self, at: u64) -> Result<ChunkHead> {
        let mut bytes = [0u8; CHUNK_HEADER_BYTES];
        self.read_exact_at(at, &mut bytes)?;
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Ok(ChunkHead {
            group: word(0),
            count: word(4),
            len: word(8),
            bytes,
        })
    }

    /// Reads the section of key group `group`, calling `f` for each record in order;
    /// returns the number of records. Each chunk's crc32c is checked before any of its
    /// records is handed out, and each record's key is checked to lie in `group`.
    pub fn read_key_group(
        &mut self,
        group: u32,
        f: &mut dyn FnMut(Record<'_>) -> Result<()>,
    ) -> Result<u64> {
        let range = self.header.key_groups;
        if !range.contains(group) {
            return Err(Error::InvalidArgument(format!(
                "canonical savepoint {}: key group {group} is not in its {range}",
                self.name
            )));
        }
        let i = (group - range.start()) as usize;
        let mut at = self.offsets[i];
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.footer_at);
        let mut records = 0u64;
        loop {
            if at + CHUNK_OVERHEAD_BYTES as u64 > end {
                return Err(Error::corruption(
                    &self.name,
                    at,
                    format!("the section of key group {group} ends at {end} without its end chunk"),
                ));
            }
            let head = self.read_head(at)?;
            if head.group != group {
                return Err(Error::corruption(
                    &self.name,
                    at,
                    format!(
                        "a chunk of key group {} in the section of key group {group}",
                        head.group
                    ),
                ));
            }
            let body_len = u64::from(head.len);
            let chunk_end = at + CHUNK_OVERHEAD_BYTES as u64 + body_len;
            if head.len > MAX_CHUNK_BODY_BYTES || chunk_end > end {
                return Err(Error::corruption(
                    &self.name,
                    at + 8,
                    format!("a chunk body of {body_len} bytes runs past the section of key group {group}"),
                ));
            }
            if (head.count == 0) != (head.len == 0) {
                return Err(Error::corruption(
                    &self.name,
                    at + 4,
                    format!("a chunk of {} records in {body_len} bytes", head.count),
                ));
            }
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(head.len as usize + 4, 0);
            if let Err(e) = self.read_exact_at(at + CHUNK_HEADER_BYTES as u64, &mut buf) {
                self.buf = buf;
                return Err(e);
            }
            let (body, crc) = buf.split_at(head.len as usize);
            let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
            if crc32c_extend(crc32c(&head.bytes), body) != crc {
                self.buf = buf;
                return Err(Error::corruption(
                    &self.name,
                    at,
                    format!("key group {group}: chunk crc32c mismatch"),
                ));
            }
            let result =
                self.records_of(group, at + CHUNK_HEADER_BYTES as u64, head.count, body, f);
            self.buf = buf;
            records += result?;
            at = chunk_end;
            if head.count == 0 {
                break;
            }
        }
        if at != end {
            return Err(Error::corruption(
                &self.name,
                at,
                format!(
                    "{} bytes after the end chunk of key group {group}",
                    end - at
                ),
            ));
        }
        Ok(records)
    }

    /// Hands out the `count` records of a checked chunk body found at `base`.
    fn records_of(
        &self,
        group: u32,
        base: u64,
        count: u32,
        body: &[u8],
        f: &mut dyn FnMut(Record<'_>) -> Result<()>,
    ) -> Result<u64> {
        let err = |e: crate::codec::DecodeError| e.into_error(&self.name);
        let mut d = Decoder::new(body, base);
        let states = &self.header.states;
        for _ in 0..count {
            let at = d.offset();
            let state = d
                .varint_bounded("state index", states.len().saturating_sub(1) as u64)
                .map_err(err)?;
            if states.is_empty() {
                return Err(Error::corruption(&self.name, at, "a record of no state"));
            }
            let key = d.length_prefixed("key").map_err(err)?;
            let user_key = d.length_prefixed("user key").map_err(err)?;
            let value = d.length_prefixed("value").map_err(err)?;
            let meta = &states[state];
            let of = self.header.max_parallelism.key_group_of(key);
            if of != group {
                return Err(Error::corruption(
                    &self.name,
                    at,
                    format!("a key of key group {of} in the section of key group {group}"),
                ));
            }
            if meta.kind != StateKind::Map && !user_key.is_empty() {
                return Err(Error::corruption(
                    &self.name,
                    at,
                    format!(
                        "a user key in a record of state {:?}, a {} state",
                        meta.name,
                        meta.kind.as_str()
                    ),
                ));
            }
            f(Record {
                state: state as u32,
                key,
                user_key,
                value,
            })?;
        }
        if !d.is_empty() {
            return Err(Error::corruption(
                &self.name,
                d.offset(),
                format!("{} bytes after the last record of a chunk", d.remaining()),
            ));
        }
        Ok(u64::from(count))
    }

    /// Reads every section, calling `f` with each record's key group and the record;
    /// checks the record count of the footer. Returns the records read.
    pub fn read_all(&mut self, f: &mut dyn FnMut(u32, Record<'_>) -> Result<()>) -> Result<u64> {
        let range = self.header.key_groups;
        let mut total = 0u64;
        for g in range.start()..=range.end() {
            total += self.read_key_group(g, &mut |r| f(g, r))?;
        }
        if total != self.records {
            return Err(Error::corruption(
                &self.name,
                self.footer_at + self.offsets.len() as u64 * 8,
                format!("{total} records, the footer records {}", self.records),
            ));
        }
        Ok(total)
    }
}

/// A writer's refusal of a record, naming the file.
fn invalid(name: &str, why: String) -> Error {
    Error::InvalidArgument(format!("canonical savepoint {name}: {why}"))
}

/// Reads exactly `buf.len()` bytes at `at`; running out of file is a truncation.
fn read_at<R: Read + Seek>(src: &mut R, name: &str, at: u64, buf: &mut [u8]) -> Result<()> {
    src.seek(SeekFrom::Start(at))
        .map_err(|e| Error::io("seek", name, e))?;
    read_here(src, name, at, buf)
}

/// Reads exactly `buf.len()` bytes from where `src` is (`at`, for errors).
fn read_here<R: Read>(src: &mut R, name: &str, at: u64, buf: &mut [u8]) -> Result<()> {
    src.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corruption(
                name,
                at,
                format!("truncated: {} bytes wanted here", buf.len()),
            )
        } else {
            Error::io("read", name, e)
        }
    })
}

/// Restores into `backend` the records of the key groups that both `backend` and the file
/// hold: registers the file's states (a state the backend already holds under another
/// kind, value type or TTL setting is an error naming it and the file), then writes every
/// record. Returns the records restored.
pub fn restore_into<R: Read + Seek>(
    backend: &mut dyn KeyedStateBackend,
    reader: &mut CanonicalReader<R>,
) -> Result<u64> {
    let header = reader.header().clone();
    if header.max_parallelism != backend.max_parallelism() {
        return Err(Error::InvalidArgument(format!(
            "{} was written with max parallelism {} and is restored with {}: key groups cannot \
             be mapped (pipeline.max-parallelism must not change)",
            reader.name(),
            header.max_parallelism.get(),
            backend.max_parallelism().get()
        )));
    }
    let mut ids: Vec<StateId> = Vec::with_capacity(header.states.len());
    for meta in &header.states {
        let id = backend
            .register(meta)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", reader.name())))?;
        ids.push(id);
    }
    let mine = backend.key_groups();
    let lo = mine.start().max(header.key_groups.start());
    let hi = mine.end().min(header.key_groups.end());
    let mut restored = 0u64;
    for g in lo..=hi {
        if lo > hi {
            break;
        }
        restored += reader.read_key_group(g, &mut |r| {
            backend.set_current_key(r.key)?;
            backend.put(ids[r.state as usize], r.user_key, r.value)
        })?;
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header(states: Vec<StateMeta>) -> CanonicalHeader {
        CanonicalHeader {
            max_parallelism: MaxParallelism::new(4).unwrap(),
            key_groups: KeyGroupRange::new(1, 3).unwrap(),
            backend: "memory".into(),
            states,
        }
    }

    fn meta(name: &str, kind: StateKind) -> StateMeta {
        StateMeta {
            name: name.into(),
            kind,
            value_type: "u8".into(),
            ttl_ms: None,
        }
    }

    /// A key of key group `g` of 4.
    fn key_of(g: u32) -> Vec<u8> {
        let m = MaxParallelism::new(4).unwrap();
        (0u8..=255)
            .map(|b| vec![b])
            .find(|k| m.key_group_of(k) == g)
            .unwrap()
    }

    #[test]
    fn a_written_file_reads_back_record_for_record() {
        let h = header(vec![meta("v", StateKind::Value), meta("m", StateKind::Map)]);
        let mut w = CanonicalWriter::new(Vec::new(), "t", h.clone()).unwrap();
        let (k1, k3) = (key_of(1), key_of(3));
        w.record(
            1,
            Record {
                state: 0,
                key: &k1,
                user_key: b"",
                value: b"one",
            },
        )
        .unwrap();
        w.record(
            3,
            Record {
                state: 1,
                key: &k3,
                user_key: b"u",
                value: b"three",
            },
        )
        .unwrap();
        let (bytes, written) = w.finish().unwrap();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert_eq!(written.crc32c, crc32c(&bytes));
        assert_eq!(written.records, 2);
        let size = bytes.len() as u64;
        let mut r = CanonicalReader::open("t", Cursor::new(bytes), size).unwrap();
        assert_eq!(r.header(), &h);
        assert_eq!(r.offsets(), &written.offsets[..]);
        let mut seen = Vec::new();
        r.read_all(&mut |g, rec| {
            seen.push((
                g,
                rec.state,
                rec.key.to_vec(),
                rec.user_key.to_vec(),
                rec.value.to_vec(),
            ));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (1, 0, k1, vec![], b"one".to_vec()),
                (3, 1, k3, b"u".to_vec(), b"three".to_vec())
            ]
        );
        assert_eq!(r.read_key_group(2, &mut |_| Ok(())).unwrap(), 0);
    }

    /// The worked example of `format-spec/savepoint.md`, byte for byte: max parallelism 2,
    /// both key groups, one value state `n` of `u8`, the key `01` (key group 1) holding 7.
    #[test]
    fn the_worked_example_is_the_spec() {
        let m = MaxParallelism::new(2).unwrap();
        assert_eq!(m.key_group_of(&[1]), 1);
        let h = CanonicalHeader {
            max_parallelism: m,
            key_groups: m.full_range(),
            backend: "memory".into(),
            states: vec![StateMeta {
                name: "n".into(),
                kind: StateKind::Value,
                value_type: "u8".into(),
                ttl_ms: None,
            }],
        };
        let mut w = CanonicalWriter::new(Vec::new(), "t", h).unwrap();
        w.record(
            1,
            Record {
                state: 0,
                key: &[1],
                user_key: &[],
                value: &[7],
            },
        )
        .unwrap();
        let (bytes, written) = w.finish().unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, WORKED_EXAMPLE_HEX);
        assert_eq!(written.offsets, vec![52, 68]);
    }

    const WORKED_EXAMPLE_HEX: &str = concat!(
        "54444d4b534156500100000034000000020000000000000001000000066d656d",
        "6f727901016e0576616c756502753800077275b3000000000000000000000000",
        "5db5602b010000000100000006000000000101000107fd575a00010000000000",
        "0000000000006d61111a34000000000000004400000000000000010000000000",
        "00007802ad3a6a00000000000000b5e26b4b",
    );

    #[test]
    fn a_writer_refuses_what_a_reader_would_refuse() {
        let h = header(vec![meta("v", StateKind::Value)]);
        let mut w = CanonicalWriter::new(Vec::new(), "t", h).unwrap();
        let k2 = key_of(2);
        assert!(w
            .record(
                1,
                Record {
                    state: 0,
                    key: &k2,
                    user_key: b"",
                    value: b""
                }
            )
            .is_err());
        assert!(w
            .record(
                2,
                Record {
                    state: 1,
                    key: &k2,
                    user_key: b"",
                    value: b""
                }
            )
            .is_err());
        assert!(w
            .record(
                2,
                Record {
                    state: 0,
                    key: &k2,
                    user_key: b"x",
                    value: b""
                }
            )
            .is_err());
        w.record(
            2,
            Record {
                state: 0,
                key: &k2,
                user_key: b"",
                value: b"",
            },
        )
        .unwrap();
        let k1 = key_of(1);
        let e = w
            .record(
                1,
                Record {
                    state: 0,
                    key: &k1,
                    user_key: b"",
                    value: b"",
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("after"), "{e}");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_naming_the_file() {
        let h = header(vec![meta("v", StateKind::Value)]);
        let mut w = CanonicalWriter::new(Vec::new(), "t", h).unwrap();
        for g in 1..=3 {
            let k = key_of(g);
            w.record(
                g,
                Record {
                    state: 0,
                    key: &k,
                    user_key: b"",
                    value: &[g as u8; 20],
                },
            )
            .unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        let read = |b: Vec<u8>| -> Result<u64> {
            let n = b.len() as u64;
            let mut r = CanonicalReader::open("sp.canonical", Cursor::new(b), n)?;
            r.read_all(&mut |_, _| Ok(()))
        };
        assert_eq!(read(bytes.clone()).unwrap(), 3);
        for cut in 0..bytes.len() {
            let e = read(bytes[..cut].to_vec()).unwrap_err();
            assert!(e.to_string().contains("sp.canonical"), "cut {cut}: {e}");
        }
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let e = read(b).unwrap_err();
            assert!(e.to_string().contains("sp.canonical"), "bit {bit}: {e}");
        }
    }
}
