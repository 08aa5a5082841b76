//! The block format shared by data and index blocks, and the 5-byte trailer that follows
//! every block on disk.
//!
//! A block is a run of entries, each storing only the suffix of its key that differs from
//! the previous key, followed by an array of *restart points*: offsets of entries that
//! store their whole key, so that a reader can binary-search them and then scan forward.
//!
//! ```text
//! entry    := varint shared | varint non_shared | varint value_len
//!             | key_delta[non_shared] | value[value_len]
//! block    := entry* | restart_offset u32 LE * num_restarts | num_restarts u32 LE
//! on disk  := stored_block | type u8 | masked crc32c u32 LE over (stored_block ++ type)
//! ```
//!
//! Readers here never trust a byte: every length and offset is checked against the bytes
//! present, and a bad one becomes a [`DecodeError`] carrying the block's file offset.

use std::cmp::Ordering;
use std::sync::Arc;

use memmap2::Mmap;

use super::footer::BlockHandle;
use crate::codec::{self, DecodeError};
use crate::lsm::anon::ByteBuf;
use crate::lsm::types::{compare_internal_keys, parse_internal_key};

/// Bytes of the trailer after every block: compression type (1) + masked crc32c (4).
pub const BLOCK_TRAILER_LEN: usize = 5;

/// Trailer type byte: the block is stored as it is.
pub const BLOCK_TYPE_RAW: u8 = 0;
/// Trailer type byte: the block is `varint uncompressed_len ++ lz4 block`.
pub const BLOCK_TYPE_LZ4: u8 = 1;

/// The largest entry (key + value bytes) a block accepts: keeps every in-block offset far
/// below `u32::MAX`, the width of a restart offset.
pub const MAX_ENTRY_BYTES: usize = 1 << 30;

/// lz4 cannot expand data by more than this factor (a match is at most 255 bytes per
/// length byte); a larger claimed size is corruption, and the bound keeps a hostile length
/// field from causing an outsized allocation.
const LZ4_MAX_EXPANSION: u64 = 255;

/// Accumulates entries into one block.
#[derive(Debug)]
pub struct BlockBuilder {
    /// The entries, then (once finished) the restart array. A [`ByteBuf`]: a table's
    /// index block is one block, of a MiB or more in a 64 MiB table.
    buf: ByteBuf,
    /// The restart offsets, as the little-endian u32s the block ends with.
    restarts: ByteBuf,
    restart_interval: usize,
    entries_since_restart: usize,
    num_entries: usize,
    last_key: Vec<u8>,
    finished: bool,
}

impl BlockBuilder {
    /// A builder that stores a whole key every `restart_interval` entries (at least 1).
    pub fn new(restart_interval: usize) -> Self {
        BlockBuilder {
            buf: ByteBuf::new(),
            restarts: ByteBuf::from(&0u32.to_le_bytes()[..]),
            restart_interval: restart_interval.max(1),
            entries_since_restart: 0,
            num_entries: 0,
            last_key: Vec::new(),
            finished: false,
        }
    }

    /// Appends an entry.
    ///
    /// REQUIRES: `key` sorts after every key added since the last reset, and
    /// `key.len() + value.len() <= MAX_ENTRY_BYTES` (the table builder checks both).
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        assert!(!self.finished, "BlockBuilder::add after finish");
        assert!(key.len().saturating_add(value.len()) <= MAX_ENTRY_BYTES);
        let shared = if self.entries_since_restart < self.restart_interval {
            key.iter()
                .zip(self.last_key.iter())
                .take_while(|(a, b)| a == b)
                .count()
        } else {
            let at = offset_u32(self.buf.len());
            self.restarts.extend_from_slice(&at.to_le_bytes());
            self.entries_since_restart = 0;
            0
        };
        let non_shared = &key[shared..];
        for n in [shared, non_shared.len(), value.len()] {
            let (bytes, len) = codec::encode_varint(n as u64);
            self.buf.extend_from_slice(&bytes[..len]);
        }
        self.buf.extend_from_slice(non_shared);
        self.buf.extend_from_slice(value);
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(non_shared);
        self.entries_since_restart += 1;
        self.num_entries += 1;
    }

    /// Size the block would have if finished now.
    pub fn estimated_size(&self) -> usize {
        self.buf.len() + self.restarts.len() + 4
    }

    /// True when no entry was added since the last reset.
    pub fn is_empty(&self) -> bool {
        self.num_entries == 0
    }

    /// Entries added since the last reset.
    pub fn num_entries(&self) -> usize {
        self.num_entries
    }

    /// Appends the restart array and returns the finished block's bytes.
    pub fn finish(&mut self) -> &[u8] {
        if !self.finished {
            self.buf.extend_from_slice(&self.restarts);
            let count = offset_u32(self.restarts.len() / 4);
            self.buf.extend_from_slice(&count.to_le_bytes());
            self.finished = true;
        }
        &self.buf
    }

    /// Empties the builder for the next block.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.restarts.clear();
        self.restarts.extend_from_slice(&0u32.to_le_bytes());
        self.entries_since_restart = 0;
        self.num_entries = 0;
        self.last_key.clear();
        self.finished = false;
    }
}

/// Converts an in-block offset to the on-disk u32. Blocks stay far below 4 GiB because one
/// entry is at most [`MAX_ENTRY_BYTES`] and a block is cut as soon as it reaches its
/// target size (at most 16 MiB by the store's options).
fn offset_u32(v: usize) -> u32 {
    u32::try_from(v).expect("block offsets stay below 4 GiB (entries are bounded)")
}

/// The trailer for `stored` bytes of the given type.
pub fn encode_trailer(stored: &[u8], block_type: u8) -> [u8; BLOCK_TRAILER_LEN] {
    let crc = codec::mask_crc(codec::crc32c_extend(codec::crc32c(stored), &[block_type]));
    let c = crc.to_le_bytes();
    [block_type, c[0], c[1], c[2], c[3]]
}

/// Replaces `out` with the lz4 form of `raw` (`varint raw_len ++ lz4 block`) and returns
/// true when it saves at least 1/8 of the block (false: store `raw`, and `out` holds
/// nothing useful). `out` is a buffer reused from block to block.
pub fn compress_lz4_into(raw: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    codec::put_varint(out, raw.len() as u64);
    let header = out.len();
    out.resize(
        header + lz4_flex::block::get_maximum_output_size(raw.len()),
        0,
    );
    match lz4_flex::block::compress_into(raw, &mut out[header..]) {
        Ok(n) => out.truncate(header + n),
        // The buffer has the documented maximum size; store the block raw if lz4 still
        // refuses.
        Err(_) => return false,
    }
    let saved = raw.len().saturating_sub(out.len());
    saved >= raw.len() / 8 && out.len() < raw.len()
}

/// Decompresses the stored bytes of an lz4 block found at `file_offset`, into `spare`
/// when it fits (see [`OwnedBlock`]).
#[deny(clippy::indexing_slicing)]
pub fn decompress_lz4(
    stored: &[u8],
    file_offset: u64,
    spare: Option<Arc<[u8]>>,
) -> Result<OwnedBlock, DecodeError> {
    let err = |reason: String| DecodeError {
        offset: file_offset,
        reason,
    };
    let (raw_len, n) = codec::get_varint(stored)
        .ok_or_else(|| err("lz4 block: bad uncompressed length".into()))?;
    let payload = stored.get(n..).unwrap_or_default();
    let limit = (payload.len() as u64)
        .saturating_mul(LZ4_MAX_EXPANSION)
        .saturating_add(16)
        .min(u64::from(u32::MAX));
    if raw_len > limit {
        return Err(err(format!(
            "lz4 block claims {raw_len} uncompressed bytes from {} stored bytes (limit {limit})",
            payload.len()
        )));
    }
    let raw_len = usize::try_from(raw_len)
        .map_err(|_| err(format!("lz4 block length {raw_len} does not fit in memory")))?;
    let mut out = OwnedBlock::buffer_for(raw_len, spare);
    let dst = out
        .bytes_mut()
        .ok_or_else(|| err("lz4 buffer is shared".into()))?;
    match lz4_flex::block::decompress_into(payload, dst) {
        Ok(written) if written == raw_len => Ok(out),
        Ok(written) => Err(err(format!(
            "lz4 block decompressed to {written} bytes, expected {raw_len}"
        ))),
        Err(e) => Err(err(format!("lz4 block does not decompress: {e}"))),
    }
}

/// The uncompressed length an lz4 block's stored bytes claim (unchecked), to choose a
/// buffer for it.
pub fn lz4_uncompressed_len(stored: &[u8]) -> usize {
    codec::get_varint(stored).map_or(0, |(n, _)| usize::try_from(n).unwrap_or(0))
}

/// A block located and checked in the file: its stored bytes are `file[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlock {
    /// First byte of the stored block.
    pub start: usize,
    /// One past the last stored byte (the trailer starts here).
    pub end: usize,
    /// The trailer's type byte ([`BLOCK_TYPE_RAW`] or [`BLOCK_TYPE_LZ4`]).
    pub block_type: u8,
}

/// Locates the block `handle` points at within `file`, checks its trailer's type byte and,
/// when `verify_crc`, its checksum.
pub fn check_block(
    file: &[u8],
    handle: BlockHandle,
    verify_crc: bool,
) -> Result<StoredBlock, DecodeError> {
    check_block_in(file, 0, handle, verify_crc)
}

/// [`check_block`] within `buf`, the bytes of the file from offset `base` on (a block read
/// on its own, a readahead buffer, a table's metadata region). The returned range is
/// relative to `buf`; error offsets are the file's.
#[deny(clippy::indexing_slicing)]
pub fn check_block_in(
    buf: &[u8],
    base: u64,
    handle: BlockHandle,
    verify_crc: bool,
) -> Result<StoredBlock, DecodeError> {
    let err = |reason: String| DecodeError {
        offset: handle.offset,
        reason,
    };
    let buf_end = base + buf.len() as u64;
    let end_with_trailer = handle
        .end_with_trailer()
        .filter(|&e| e <= buf_end && handle.offset >= base)
        .ok_or_else(|| {
            err(format!(
                "block of {} bytes (+{BLOCK_TRAILER_LEN} trailer) extends past the end of the {buf_end}-byte file",
                handle.size,
            ))
        })?;
    // All three fit in usize: they are at most buf.len().
    let start = (handle.offset - base) as usize;
    let end = (handle.offset + handle.size - base) as usize;
    let trailer_end = (end_with_trailer - base) as usize;
    let stored = buf.get(start..end).unwrap_or_default();
    let trailer = buf.get(end..trailer_end).unwrap_or_default();
    let block_type = *trailer
        .first()
        .ok_or_else(|| err("block trailer is missing".into()))?;
    if block_type != BLOCK_TYPE_RAW && block_type != BLOCK_TYPE_LZ4 {
        return Err(err(format!("unknown block type {block_type}")));
    }
    if verify_crc {
        let stored_crc = codec::get_u32(trailer, 1)
            .map(codec::unmask_crc)
            .ok_or_else(|| err("block trailer is truncated".into()))?;
        let actual = codec::crc32c_extend(codec::crc32c(stored), &[block_type]);
        if stored_crc != actual {
            return Err(err(format!(
                "block checksum mismatch (stored {stored_crc:#010x}, computed {actual:#010x})"
            )));
        }
    }
    Ok(StoredBlock {
        start,
        end,
        block_type,
    })
}

/// The decoded bytes of the block `handle` points at within `buf` (the file's bytes from
/// `base` on): checked as [`check_block_in`] does, then decompressed or copied out, into
/// `spare` when it fits (see [`OwnedBlock`]).
pub fn decode_block_in(
    buf: &[u8],
    base: u64,
    handle: BlockHandle,
    verify_crc: bool,
    spare: Option<Arc<[u8]>>,
) -> Result<OwnedBlock, DecodeError> {
    let s = check_block_in(buf, base, handle, verify_crc)?;
    let stored = buf.get(s.start..s.end).unwrap_or_default();
    if s.block_type == BLOCK_TYPE_LZ4 {
        decompress_lz4(stored, handle.offset, spare)
    } else {
        Ok(OwnedBlock::copy_of(stored, spare))
    }
}

/// Granule that a decompressed block's buffer is rounded up to, so that a buffer the
/// block cache evicts fits the next block of about its size (see [`OwnedBlock`]).
pub const BLOCK_BUF_GRANULE: usize = 256;

/// A block held in memory (decompressed, or a compressed block's stored bytes in the block
/// cache): the first `len` bytes of `buf`. Buffers are allocated
/// in multiples of [`BLOCK_BUF_GRANULE`] so that the block cache can hand a buffer it
/// evicts (and nobody else holds) to the next read that misses, which then neither
/// allocates nor zeroes one and the eviction frees nothing; the cache charges the
/// buffer's whole length.
#[derive(Debug, Clone)]
pub struct OwnedBlock {
    buf: Arc<[u8]>,
    len: usize,
}

impl OwnedBlock {
    /// A block that is the whole of `buf`.
    pub fn exact(buf: Arc<[u8]>) -> Self {
        let len = buf.len();
        OwnedBlock { buf, len }
    }

    /// A zeroed block of `len` bytes to write into: `spare` when it is large enough, not
    /// much larger, and not shared; else a new buffer of `len` rounded up to the granule.
    fn buffer_for(len: usize, spare: Option<Arc<[u8]>>) -> Self {
        let rounded = len
            .div_ceil(BLOCK_BUF_GRANULE)
            .saturating_mul(BLOCK_BUF_GRANULE);
        if let Some(mut s) = spare {
            if OwnedBlock::buffer_fits(s.len(), len) && Arc::get_mut(&mut s).is_some() {
                return OwnedBlock { buf: s, len };
            }
        }
        // Collecting a length-known iterator into Arc<[u8]> allocates once, in place, so
        // the block is shared with the cache without another copy.
        OwnedBlock {
            buf: std::iter::repeat_n(0u8, rounded).collect(),
            len,
        }
    }

    /// A block holding a copy of `bytes`, in `spare` when it fits (as for a decompressed
    /// block).
    pub fn copy_of(bytes: &[u8], spare: Option<Arc<[u8]>>) -> Self {
        let mut out = OwnedBlock::buffer_for(bytes.len(), spare);
        match out.bytes_mut() {
            Some(dst) => dst.copy_from_slice(bytes),
            None => return OwnedBlock::exact(Arc::from(bytes)),
        }
        out
    }

    /// Whether a buffer of `buf_len` bytes would hold a block of `len` bytes without
    /// wasting more than the rounding of a new buffer would (see `buffer_for`).
    pub fn buffer_fits(buf_len: usize, len: usize) -> bool {
        let rounded = len
            .div_ceil(BLOCK_BUF_GRANULE)
            .saturating_mul(BLOCK_BUF_GRANULE);
        buf_len >= len && buf_len <= rounded.saturating_add(BLOCK_BUF_GRANULE)
    }

    /// The block's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The block's bytes to write into; `None` when the buffer is shared (never for one
    /// [`OwnedBlock::buffer_for`] just made).
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        Arc::get_mut(&mut self.buf).and_then(|b| b.get_mut(..self.len))
    }

    /// Another handle on the block's buffer (to reuse it once the block is dropped).
    pub fn share_buffer(&self) -> Arc<[u8]> {
        Arc::clone(&self.buf)
    }

    /// The memory the block holds: its buffer's length.
    pub fn charge(&self) -> usize {
        self.buf.len()
    }

    /// The buffer, for reuse by another block, when this was its last holder.
    pub fn into_spare(self) -> Option<Arc<[u8]>> {
        let mut buf = self.buf;
        Arc::get_mut(&mut buf).is_some().then_some(buf)
    }
}

/// The bytes of a decoded block: a range of the table's mapping (raw blocks are read in
/// place), or a decompressed buffer (shared with the block cache when cached).
#[derive(Debug, Clone)]
pub enum BlockData {
    /// `map[start..end]`, with the range already checked against the mapping.
    Mapped {
        /// The table's mapping.
        map: Arc<Mmap>,
        /// First byte of the block.
        start: usize,
        /// One past the block's last byte.
        end: usize,
    },
    /// A decompressed (or raw) block in memory.
    Owned(OwnedBlock),
}

impl BlockData {
    /// The block's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            BlockData::Mapped { map, start, end } => map.get(*start..*end).unwrap_or_default(),
            BlockData::Owned(b) => b.as_slice(),
        }
    }
}

/// A block whose restart array was validated, ready to iterate.
#[derive(Debug, Clone)]
pub struct Block {
    data: BlockData,
    restarts_offset: usize,
    num_restarts: usize,
    file_offset: u64,
}

impl Block {
    /// Validates the restart array of `data`, a block found at `file_offset`.
    #[deny(clippy::indexing_slicing)]
    pub fn new(data: BlockData, file_offset: u64) -> Result<Block, DecodeError> {
        let bytes = data.as_slice();
        let err = |reason: String| DecodeError {
            offset: file_offset,
            reason,
        };
        let len = bytes.len();
        let count_at = len
            .checked_sub(4)
            .ok_or_else(|| err(format!("block of {len} bytes is too short")))?;
        let num_restarts = codec::get_u32(bytes, count_at)
            .ok_or_else(|| err("block restart count is missing".into()))?
            as usize;
        if num_restarts == 0 {
            return Err(err("block has no restart points".into()));
        }
        let restarts_offset = num_restarts
            .checked_mul(4)
            .and_then(|n| count_at.checked_sub(n))
            .ok_or_else(|| {
                err(format!(
                    "block of {len} bytes cannot hold {num_restarts} restart points"
                ))
            })?;
        Ok(Block {
            data,
            restarts_offset,
            num_restarts,
            file_offset,
        })
    }

    /// The block's file offset (used in error messages).
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }

    /// An iterator over the block's entries, not yet positioned.
    pub fn iter(self) -> BlockIter {
        BlockIter {
            block: self,
            next_pos: 0,
            key: Vec::new(),
            value_start: 0,
            value_end: 0,
            valid: false,
            err: None,
        }
    }
}

/// One decoded entry header.
struct EntryHeader {
    shared: usize,
    key_start: usize,
    key_end: usize,
    value_end: usize,
}

/// Decodes the entry at `pos`, checking that it ends at or before `limit`.
#[deny(clippy::indexing_slicing)]
fn decode_entry(data: &[u8], pos: usize, limit: usize) -> Result<EntryHeader, String> {
    // Fast path: the three lengths are one-byte varints (keys and values under 128 bytes).
    if let Some(&[shared, non_shared, value_len]) = data.get(pos..pos.saturating_add(3)) {
        if (shared | non_shared | value_len) < 0x80 && pos + 3 <= limit {
            let key_start = pos + 3;
            let key_end = key_start + usize::from(non_shared);
            let value_end = key_end + usize::from(value_len);
            if value_end <= limit {
                return Ok(EntryHeader {
                    shared: usize::from(shared),
                    key_start,
                    key_end,
                    value_end,
                });
            }
        }
    }
    let region = data
        .get(pos..limit)
        .ok_or_else(|| format!("entry offset {pos} is past the entries' end {limit}"))?;
    let mut d = codec::Decoder::new(region, 0);
    let bad = |e: DecodeError| format!("entry at byte {pos}: {}", e.reason);
    let shared = d
        .varint_bounded("shared key length", limit as u64)
        .map_err(bad)?;
    let non_shared = d
        .varint_bounded("unshared key length", d.remaining() as u64)
        .map_err(bad)?;
    let value_len = d
        .varint_bounded("value length", d.remaining() as u64)
        .map_err(bad)?;
    let key_start = pos + (region.len() - d.remaining());
    let key_end = key_start
        .checked_add(non_shared)
        .filter(|&e| e <= limit)
        .ok_or_else(|| format!("entry at byte {pos}: key runs past the entries' end"))?;
    let value_end = key_end
        .checked_add(value_len)
        .filter(|&e| e <= limit)
        .ok_or_else(|| format!("entry at byte {pos}: value runs past the entries' end"))?;
    Ok(EntryHeader {
        shared,
        key_start,
        key_end,
        value_end,
    })
}

/// A cursor over one block's entries. A malformed entry makes it invalid with
/// [`BlockIter::error`] set; it never panics on bad bytes.
#[derive(Debug, Clone)]
pub struct BlockIter {
    block: Block,
    next_pos: usize,
    key: Vec<u8>,
    value_start: usize,
    value_end: usize,
    valid: bool,
    err: Option<DecodeError>,
}

impl BlockIter {
    /// True when positioned at an entry.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The current key (empty when not valid).
    pub fn key(&self) -> &[u8] {
        if self.valid {
            &self.key
        } else {
            &[]
        }
    }

    /// The current value (empty when not valid).
    pub fn value(&self) -> &[u8] {
        if !self.valid {
            return &[];
        }
        self.block
            .data
            .as_slice()
            .get(self.value_start..self.value_end)
            .unwrap_or_default()
    }

    /// The corruption that stopped the iterator, if any.
    pub fn error(&self) -> Option<&DecodeError> {
        self.err.as_ref()
    }

    /// The block this iterator walks.
    pub fn block(&self) -> &Block {
        &self.block
    }

    fn corrupt(&mut self, reason: String) {
        self.valid = false;
        self.err = Some(DecodeError {
            offset: self.block.file_offset,
            reason: format!("block at offset {}: {reason}", self.block.file_offset),
        });
    }

    /// Positions at the first entry.
    pub fn seek_to_first(&mut self) {
        if self.err.is_some() {
            return;
        }
        self.next_pos = 0;
        self.key.clear();
        self.parse_next();
    }

    /// Advances to the next entry. Does nothing when not valid.
    pub fn next(&mut self) {
        if self.valid {
            self.parse_next();
        }
    }

    /// Positions at the first entry whose key is `>= target` (internal key order); not
    /// valid when every key is smaller.
    pub fn seek(&mut self, target: &[u8]) {
        if self.err.is_some() {
            return;
        }
        // Binary search for the last restart point whose key is < target, then scan.
        let mut lo = 0usize;
        let mut hi = self.block.num_restarts - 1;
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match self.key_at_restart(mid) {
                Ok(k) if compare_internal_keys(k, target) == Ordering::Less => lo = mid,
                Ok(_) => hi = mid - 1,
                Err(reason) => return self.corrupt(reason),
            }
        }
        match self.restart_point(lo) {
            Ok(p) => self.next_pos = p,
            Err(reason) => return self.corrupt(reason),
        }
        self.key.clear();
        loop {
            self.parse_next();
            if !self.valid || compare_internal_keys(&self.key, target) != Ordering::Less {
                return;
            }
        }
    }

    #[deny(clippy::indexing_slicing)]
    fn restart_point(&self, i: usize) -> Result<usize, String> {
        let at = self.block.restarts_offset + i * 4;
        let p = codec::get_u32(self.block.data.as_slice(), at)
            .ok_or_else(|| format!("restart point {i} is missing"))? as usize;
        if p >= self.block.restarts_offset {
            return Err(format!(
                "restart point {i} = {p} is past the entries' end {}",
                self.block.restarts_offset
            ));
        }
        Ok(p)
    }

    #[deny(clippy::indexing_slicing)]
    fn key_at_restart(&self, i: usize) -> Result<&[u8], String> {
        let pos = self.restart_point(i)?;
        let data = self.block.data.as_slice();
        let e = decode_entry(data, pos, self.block.restarts_offset)?;
        if e.shared != 0 {
            return Err(format!(
                "entry at restart point {i} (byte {pos}) shares {} key bytes",
                e.shared
            ));
        }
        let key = data.get(e.key_start..e.key_end).unwrap_or_default();
        if parse_internal_key(key).is_none() {
            return Err(format!("entry at byte {pos} has a malformed internal key"));
        }
        Ok(key)
    }

    #[deny(clippy::indexing_slicing)]
    fn parse_next(&mut self) {
        let pos = self.next_pos;
        let limit = self.block.restarts_offset;
        if pos >= limit {
            self.valid = false;
            return;
        }
        let data = self.block.data.as_slice();
        let e = match decode_entry(data, pos, limit) {
            Ok(e) => e,
            Err(reason) => return self.corrupt(reason),
        };
        if e.shared > self.key.len() {
            let reason = format!(
                "entry at byte {pos} shares {} bytes of a {}-byte previous key",
                e.shared,
                self.key.len()
            );
            return self.corrupt(reason);
        }
        let delta = data.get(e.key_start..e.key_end).unwrap_or_default();
        self.key.truncate(e.shared);
        self.key.extend_from_slice(delta);
        if parse_internal_key(&self.key).is_none() {
            return self.corrupt(format!("entry at byte {pos} has a malformed internal key"));
        }
        self.value_start = e.key_end;
        self.value_end = e.value_end;
        self.next_pos = e.value_end;
        self.valid = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::types::{make_internal_key, SeqNo, ValueKind};

    fn ik(k: &str, seq: u64) -> Vec<u8> {
        make_internal_key(k.as_bytes(), SeqNo(seq), ValueKind::Put)
    }

    fn build(keys: &[Vec<u8>], interval: usize) -> Arc<[u8]> {
        let mut b = BlockBuilder::new(interval);
        for (i, k) in keys.iter().enumerate() {
            b.add(k, format!("v{i}").as_bytes());
        }
        Arc::from(b.finish())
    }

    fn iter_of(bytes: Arc<[u8]>) -> Result<BlockIter, DecodeError> {
        Ok(Block::new(BlockData::Owned(OwnedBlock::exact(bytes)), 77)?.iter())
    }

    #[test]
    fn block_round_trips_with_every_restart_interval() {
        let keys: Vec<_> = (0..100).map(|i| ik(&format!("key{i:04}"), 1)).collect();
        for interval in [1, 2, 3, 16, 1000] {
            let mut it = iter_of(build(&keys, interval)).unwrap();
            it.seek_to_first();
            for (i, k) in keys.iter().enumerate() {
                assert!(it.valid());
                assert_eq!(it.key(), &k[..]);
                assert_eq!(it.value(), format!("v{i}").as_bytes());
                it.next();
            }
            assert!(!it.valid());
            assert!(it.error().is_none());
        }
    }

    #[test]
    fn seek_finds_first_key_at_or_after_target() {
        let keys: Vec<_> = (0..50).map(|i| ik(&format!("k{:03}", i * 2), 1)).collect();
        let mut it = iter_of(build(&keys, 4)).unwrap();
        it.seek(&ik("k010", 1));
        assert_eq!(it.key(), &ik("k010", 1)[..]);
        it.seek(&ik("k011", 1));
        assert_eq!(it.key(), &ik("k012", 1)[..]);
        it.seek(&ik("a", 1));
        assert_eq!(it.key(), &ik("k000", 1)[..]);
        it.seek(&ik("z", 1));
        assert!(!it.valid());
        assert!(it.error().is_none());
    }

    #[test]
    fn lz4_is_used_only_when_it_saves_an_eighth() {
        let compressible = vec![b'a'; 4096];
        let mut c = Vec::new();
        assert!(
            compress_lz4_into(&compressible, &mut c),
            "repetitive data compresses"
        );
        assert_eq!(
            decompress_lz4(&c, 0, None).unwrap().as_slice(),
            &compressible[..]
        );
        let mut x = 0x1234_5678u32;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(!compress_lz4_into(&random, &mut c));
    }

    #[test]
    fn a_block_decompresses_into_a_spare_buffer_that_fits() {
        let raw: Vec<u8> = (0..4100u32).map(|i| (i % 7) as u8).collect();
        let mut c = Vec::new();
        assert!(compress_lz4_into(&raw, &mut c));
        // A new buffer is rounded up to the granule; the block is only its first bytes.
        let fresh = decompress_lz4(&c, 0, None).unwrap();
        assert_eq!(fresh.as_slice(), &raw[..]);
        assert_eq!(
            fresh.charge(),
            4100usize.next_multiple_of(BLOCK_BUF_GRANULE)
        );
        // A spare of about the size, held by nobody else, is reused, whatever it held.
        let spare: Arc<[u8]> = Arc::from(vec![0xEEu8; fresh.charge()]);
        let at = spare.as_ptr();
        let reused = decompress_lz4(&c, 0, Some(spare)).unwrap();
        assert_eq!(reused.as_slice(), &raw[..]);
        assert_eq!(reused.as_slice().as_ptr(), at);
        // Too small or far too large: a new buffer of the rounded size.
        let spare = reused.into_spare().expect("last holder");
        assert_eq!(
            OwnedBlock::buffer_for(10, Some(spare)).charge(),
            BLOCK_BUF_GRANULE
        );
        let small: Arc<[u8]> = Arc::from(vec![0u8; 4000]);
        let big: Arc<[u8]> = Arc::from(vec![0u8; 64 << 10]);
        for spare in [small, big] {
            let b = decompress_lz4(&c, 0, Some(spare)).unwrap();
            assert_eq!(b.as_slice(), &raw[..]);
            assert_eq!(b.charge(), 4352);
        }
        // Shared: never written, a new buffer instead.
        let shared: Arc<[u8]> = Arc::from(vec![0u8; 4352]);
        let other_holder = Arc::clone(&shared);
        let b = decompress_lz4(&c, 0, Some(shared)).unwrap();
        assert_eq!(b.as_slice(), &raw[..]);
        assert_ne!(b.as_slice().as_ptr(), other_holder.as_ptr());
        assert!(
            other_holder.iter().all(|&x| x == 0),
            "a shared spare is never written"
        );
        // Raw (stored uncompressed) blocks are copied into a spare the same way.
        let spare: Arc<[u8]> = Arc::from(vec![9u8; 256]);
        let at = spare.as_ptr();
        let mut stored = b"raw block".to_vec();
        stored.extend_from_slice(&encode_trailer(b"raw block", BLOCK_TYPE_RAW));
        let handle = BlockHandle { offset: 0, size: 9 };
        let copied = decode_block_in(&stored, 0, handle, true, Some(spare)).unwrap();
        assert_eq!(copied.as_slice(), b"raw block");
        assert_eq!(copied.as_slice().as_ptr(), at);
        // A block still shared with a reader is not given up for reuse.
        let held = fresh.clone();
        assert!(fresh.into_spare().is_none());
        assert!(held.into_spare().is_some());
    }

    #[test]
    fn lz4_with_inflated_length_is_rejected() {
        let mut c = Vec::new();
        codec::put_varint(&mut c, 1 << 31);
        c.extend_from_slice(&lz4_flex::block::compress(b"hello"));
        let e = decompress_lz4(&c, 4242, None).unwrap_err();
        assert_eq!(e.offset, 4242);
    }

    #[test]
    fn trailer_checksum_detects_a_flipped_bit() {
        let stored = b"block bytes".to_vec();
        let mut file = stored.clone();
        file.extend_from_slice(&encode_trailer(&stored, BLOCK_TYPE_RAW));
        let h = BlockHandle {
            offset: 0,
            size: stored.len() as u64,
        };
        assert!(check_block(&file, h, true).is_ok());
        for bit in 0..file.len() * 8 {
            let mut f = file.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(check_block(&f, h, true).is_err(), "bit {bit}");
        }
        let past = BlockHandle {
            offset: 1,
            size: stored.len() as u64,
        };
        assert!(check_block(&file, past, true).is_err());
    }

    #[test]
    fn garbage_blocks_never_panic() {
        let mut x = 7u64;
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect();
            if let Ok(mut it) = iter_of(Arc::from(bytes)) {
                it.seek_to_first();
                let mut n = 0;
                while it.valid() && n < 1000 {
                    it.next();
                    n += 1;
                }
                it.seek(&ik("m", 3));
            }
        }
    }

    #[test]
    fn truncated_entry_is_reported_with_block_offset() {
        let good = build(&[ik("key", 1)], 16);
        // Claim a value longer than the block in the only entry (third varint, byte 2).
        let mut bad = good.to_vec();
        bad[2] = 0x7f;
        let mut it = iter_of(Arc::from(bad)).unwrap();
        it.seek_to_first();
        assert!(!it.valid());
        let e = it.error().unwrap();
        assert_eq!(e.offset, 77);
        assert!(e.reason.contains("block at offset 77"), "{}", e.reason);
    }
}
