//! Reads a table: memory-maps the file, validates its footer, filter, properties and
//! index at open, and serves point lookups and iteration from then on without locks
//! (except the block cache's, once per decompressed block).
//!
//! A table is immutable once opened; nothing here writes to it. Every error names the file
//! and the byte offset where the damage was found.

use std::cmp::Ordering;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use memmap2::Mmap;

use super::block::{self, Block, BlockData, BlockIter, BLOCK_TRAILER_LEN, BLOCK_TYPE_LZ4};
use super::bloom::BloomFilter;
use super::cache::BlockCache;
use super::footer::{BlockHandle, Footer, FOOTER_LEN, FORMAT_VERSION};
use crate::codec::{self, DecodeError, Decoder};
use crate::error::{Error, IoContext, Result};
use crate::fs::FileSystem;
use crate::lsm::types::{
    compare_internal_keys, parse_internal_key, FileNumber, InternalIterator, LookupKey, SeqNo,
    ValueKind,
};
use crate::lsm::Compression;

/// What a table records about itself (its properties block), plus the file's size and,
/// when known, its crc32c.
#[derive(Debug, Clone, PartialEq)]
pub struct TableProperties {
    /// The table format version (1).
    pub format_version: u32,
    /// Entries (puts and tombstones).
    pub num_entries: u64,
    /// Tombstones among the entries.
    pub num_deletions: u64,
    /// Data blocks.
    pub num_data_blocks: u64,
    /// Sum of the internal key lengths, before prefix compression.
    pub raw_key_bytes: u64,
    /// Sum of the value lengths.
    pub raw_value_bytes: u64,
    /// Bytes of the data blocks on disk, trailers included (= offset of the first block
    /// after them).
    pub data_bytes: u64,
    /// Bytes of the index block on disk, trailer included.
    pub index_bytes: u64,
    /// Bytes of the filter block on disk, trailer included (0 without a filter).
    pub filter_bytes: u64,
    /// The first internal key.
    pub smallest_key: Vec<u8>,
    /// The last internal key.
    pub largest_key: Vec<u8>,
    /// The smallest sequence number of any entry.
    pub smallest_seq: SeqNo,
    /// The largest sequence number of any entry.
    pub largest_seq: SeqNo,
    /// The compression the table was written with (blocks that did not shrink enough are
    /// stored raw regardless).
    pub compression: Compression,
    /// Bloom filter bits per key (0: no filter).
    pub bloom_bits_per_key: u32,
    /// When the table was written, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The file's length in bytes (not stored in the block: from the builder, or the file).
    pub file_size: u64,
    /// crc32c of the whole file, as the builder computed it; 0 when read back by
    /// [`Table::open`] (see [`Table::verify`]).
    pub file_crc32c: u32,
}

/// Longest smallest/largest key a properties block may declare; it also bounds what a
/// damaged length field can make the reader allocate.
const MAX_PROPERTY_KEY_BYTES: u64 = 1 << 30;

fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Lz4 => 1,
    }
}

impl TableProperties {
    /// The properties block's bytes (everything but `file_size` and `file_crc32c`).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.smallest_key.len() + self.largest_key.len());
        codec::put_u32(&mut b, self.format_version);
        for v in [
            self.num_entries,
            self.num_deletions,
            self.num_data_blocks,
            self.raw_key_bytes,
            self.raw_value_bytes,
            self.data_bytes,
            self.index_bytes,
            self.filter_bytes,
            self.smallest_seq.0,
            self.largest_seq.0,
            self.created_unix_ms,
        ] {
            codec::put_u64(&mut b, v);
        }
        b.push(compression_code(self.compression));
        codec::put_u32(&mut b, self.bloom_bits_per_key);
        codec::put_length_prefixed(&mut b, &self.smallest_key);
        codec::put_length_prefixed(&mut b, &self.largest_key);
        b
    }

    /// Decodes a properties block found at `base`; every byte must be consumed.
    #[deny(clippy::indexing_slicing)]
    pub(crate) fn decode(bytes: &[u8], base: u64) -> Result<TableProperties, DecodeError> {
        let mut d = Decoder::new(bytes, base);
        let format_version = d.u32("format version")?;
        let mut next = |what: &str| d.u64(what);
        let num_entries = next("entry count")?;
        let num_deletions = next("deletion count")?;
        let num_data_blocks = next("data block count")?;
        let raw_key_bytes = next("raw key bytes")?;
        let raw_value_bytes = next("raw value bytes")?;
        let data_bytes = next("data bytes")?;
        let index_bytes = next("index bytes")?;
        let filter_bytes = next("filter bytes")?;
        let smallest_seq = SeqNo(next("smallest sequence")?);
        let largest_seq = SeqNo(next("largest sequence")?);
        let created_unix_ms = next("creation time")?;
        let at = d.offset();
        let compression = match d.u8("compression")? {
            0 => Compression::None,
            1 => Compression::Lz4,
            c => {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("unknown compression {c}"),
                })
            }
        };
        let bloom_bits_per_key = d.u32("bloom bits per key")?;
        let mut key = |what: &str| -> Result<Vec<u8>, DecodeError> {
            let at = d.offset();
            let n = d.varint_bounded(what, MAX_PROPERTY_KEY_BYTES.min(d.remaining() as u64))?;
            let k = d.bytes(n, what)?;
            if parse_internal_key(k).is_none() {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("{what} is not a valid internal key"),
                });
            }
            Ok(k.to_vec())
        };
        let smallest_key = key("smallest key")?;
        let largest_key = key("largest key")?;
        if !d.is_empty() {
            return Err(d.error(format!(
                "{} unexpected bytes after the properties",
                d.remaining()
            )));
        }
        Ok(TableProperties {
            format_version,
            num_entries,
            num_deletions,
            num_data_blocks,
            raw_key_bytes,
            raw_value_bytes,
            data_bytes,
            index_bytes,
            filter_bytes,
            smallest_key,
            largest_key,
            smallest_seq,
            largest_seq,
            compression,
            bloom_bits_per_key,
            created_unix_ms,
            file_size: 0,
            file_crc32c: 0,
        })
    }
}

/// The outcome of [`Table::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupResult {
    /// The newest visible entry is a put of this value.
    Found(Vec<u8>),
    /// The newest visible entry is a tombstone.
    Deleted,
    /// The table holds no visible entry for the key.
    NotFound,
}

/// One data block, as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Offset of the block in the file.
    pub offset: u64,
    /// Bytes stored on disk, the 5-byte trailer excluded.
    pub stored_size: u64,
    /// True when the block is lz4-compressed.
    pub compressed: bool,
    /// The index key of the block: `>=` every key in it and `<` every key of the next
    /// block (the block's last key, or a shorter separator).
    pub last_key: Vec<u8>,
}

impl BlockInfo {
    fn handle(&self) -> BlockHandle {
        BlockHandle {
            offset: self.offset,
            size: self.stored_size,
        }
    }
}

/// An open, immutable table.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    file_number: FileNumber,
    map: Arc<Mmap>,
    props: TableProperties,
    blocks: Vec<BlockInfo>,
    /// The filter block's stored bytes within the mapping (validated at open).
    filter: Option<Range<usize>>,
    cache: Option<Arc<BlockCache>>,
    verify_checksums: bool,
    /// One flag per data block, set once its crc was checked: the file is immutable and
    /// lives in the store's own directory, so a block is checked once, not on every read
    /// (`verify` still checks every block every time).
    verified: Box<[AtomicBool]>,
}

impl Table {
    /// Memory-maps the table at `path` and validates its footer, index, filter and
    /// properties (the crc of each, always). With `verify_checksums` false, the crc of a
    /// data block is not checked when it is read. Every error names `path` and an offset.
    pub fn open(
        fs: &dyn FileSystem,
        path: &Path,
        file_number: FileNumber,
        cache: Option<Arc<BlockCache>>,
        verify_checksums: bool,
    ) -> Result<Arc<Table>> {
        let file = fs.open(path)?;
        Table::from_file(file, path, file_number, cache, verify_checksums)
    }

    /// Like [`Table::open`], for a table already opened for reading from `path` (by a
    /// caller that checked where the opened file lies, for instance).
    pub fn from_file(
        file: std::fs::File,
        path: &Path,
        file_number: FileNumber,
        cache: Option<Arc<BlockCache>>,
        verify_checksums: bool,
    ) -> Result<Arc<Table>> {
        let len = file.metadata().ctx("stat", path)?.len();
        if len < (FOOTER_LEN + BLOCK_TRAILER_LEN) as u64 {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "file of {len} bytes is too short to be a table (footer is {FOOTER_LEN} bytes)"
                ),
            ));
        }
        // SAFETY: the mapping is read-only and tables are immutable: nothing in tidemark
        // writes to or truncates a table file after TableBuilder::finish, and files are
        // replaced only by creating new ones. Every byte read through the mapping is
        // validated before use, so its contents are never trusted, only its length.
        let map = unsafe { Mmap::map(&file) }.ctx("mmap", path)?;
        if map.len() as u64 != len {
            return Err(Error::corruption(
                path,
                0,
                format!("file changed size while opening ({len} -> {})", map.len()),
            ));
        }
        let map = Arc::new(map);
        let (props, blocks, filter) = validate(&map).map_err(|e| e.into_error(path))?;
        let verified = blocks.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Arc::new(Table {
            verified,
            path: path.to_path_buf(),
            file_number,
            map,
            props,
            blocks,
            filter,
            cache,
            verify_checksums,
        }))
    }

    /// The table's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table's file number.
    pub fn file_number(&self) -> FileNumber {
        self.file_number
    }

    /// The file's length in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The table's properties.
    pub fn properties(&self) -> &TableProperties {
        &self.props
    }

    /// The data blocks, in key order.
    pub fn data_blocks(&self) -> &[BlockInfo] {
        &self.blocks
    }

    /// False when `user_key` is certainly not in the table (the bloom filter's answer);
    /// true when it may be, or when the table has no filter.
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        let Some(range) = &self.filter else {
            return true;
        };
        let bytes = self.map.get(range.clone()).unwrap_or_default();
        // Validated at open; a failure here cannot happen, and "maybe" is always safe.
        BloomFilter::parse(bytes).map_or(true, |f| f.may_contain(user_key))
    }

    /// The newest entry for `user_key` with sequence number `<= seq`. Does not consult
    /// the bloom filter (the caller does, to count its statistics).
    pub fn get(&self, user_key: &[u8], seq: SeqNo) -> Result<LookupResult> {
        Ok(self
            .get_entry(user_key, seq)?
            .map_or(LookupResult::NotFound, |(_, r)| r))
    }

    /// [`Table::get`], also giving the sequence number of the entry found, so that a
    /// caller looking in several tables whose sequence ranges may interleave (level 0)
    /// can keep the newest. `None` when the table holds no visible entry for the key.
    pub fn get_entry(&self, user_key: &[u8], seq: SeqNo) -> Result<Option<(SeqNo, LookupResult)>> {
        let target = LookupKey::new(user_key, seq);
        let target = target.internal_key();
        let mut i = self.find_block(target);
        // The first key >= target is in block i, or else it is the first key of block
        // i + 1 (block i's index key lies between the two blocks).
        while i < self.blocks.len() {
            let mut it = self.block_iter(i)?;
            it.seek(target);
            if let Some(e) = it.error() {
                return Err(e.clone().into_error(&self.path));
            }
            if it.valid() {
                return Ok(match parse_internal_key(it.key()) {
                    Some(p) if p.user_key == user_key => Some((
                        p.seq,
                        match p.kind {
                            ValueKind::Put => LookupResult::Found(it.value().to_vec()),
                            ValueKind::Delete => LookupResult::Deleted,
                        },
                    )),
                    _ => None,
                });
            }
            i += 1;
        }
        Ok(None)
    }

    /// An iterator over every entry, in internal key order.
    pub fn iter(self: &Arc<Self>) -> TableIter {
        TableIter {
            table: Arc::clone(self),
            block_index: 0,
            block: None,
            status: None,
        }
    }

    /// Reads every data block, checking its crc (whatever `verify_checksums` was at open),
    /// its entries, their order and the counts the properties declare; then recomputes
    /// and returns the crc32c of the whole file.
    pub fn verify(&self) -> Result<u32> {
        let mut prev: Option<Vec<u8>> = None;
        let mut count: u64 = 0;
        for (i, info) in self.blocks.iter().enumerate() {
            let block = self.load_block(info, true, false, None)?;
            let mut it = block.iter();
            it.seek_to_first();
            let first_count = count;
            while it.valid() {
                let key = it.key();
                let in_order = prev
                    .as_deref()
                    .is_none_or(|p| compare_internal_keys(p, key) == Ordering::Less);
                if !in_order || compare_internal_keys(key, &info.last_key) == Ordering::Greater {
                    return Err(Error::corruption(
                        &self.path,
                        info.offset,
                        format!("data block {i}: keys out of order or beyond its index key"),
                    ));
                }
                prev = Some(key.to_vec());
                count += 1;
                it.next();
            }
            if let Some(e) = it.error() {
                return Err(e.clone().into_error(&self.path));
            }
            if count == first_count {
                return Err(Error::corruption(
                    &self.path,
                    info.offset,
                    format!("data block {i} is empty"),
                ));
            }
        }
        if count != self.props.num_entries {
            return Err(Error::corruption(
                &self.path,
                self.props.data_bytes,
                format!(
                    "data blocks hold {count} entries, properties declare {}",
                    self.props.num_entries
                ),
            ));
        }
        if prev.as_deref() != Some(&self.props.largest_key[..]) {
            return Err(Error::corruption(
                &self.path,
                self.props.data_bytes,
                "the last entry differs from the declared largest key",
            ));
        }
        Ok(codec::crc32c(&self.map))
    }

    /// Index of the first block whose index key is `>= target` (`blocks.len()` if none).
    fn find_block(&self, target: &[u8]) -> usize {
        self.blocks
            .partition_point(|b| compare_internal_keys(&b.last_key, target) == Ordering::Less)
    }

    fn block_iter(&self, i: usize) -> Result<BlockIter> {
        let info = self
            .blocks
            .get(i)
            .ok_or_else(|| Error::corruption(&self.path, 0, format!("no data block {i}")))?;
        Ok(self
            .load_block(info, self.verify_checksums, true, Some(i))?
            .iter())
    }

    /// Reads data block `info`: in place when raw, else from the cache or decompressed
    /// (and then cached, when `use_cache`). `index` names the block for the checked-once
    /// flags; without it the crc is checked whenever `verify_crc` is set.
    fn load_block(
        &self,
        info: &BlockInfo,
        verify_crc: bool,
        use_cache: bool,
        index: Option<usize>,
    ) -> Result<Block> {
        let cache = self.cache.as_ref().filter(|_| use_cache);
        if info.compressed {
            // A cached block was checked when it was inserted.
            if let Some(b) = cache.and_then(|c| c.get(self.file_number, info.offset)) {
                return Block::new(BlockData::Owned(b), info.offset)
                    .map_err(|e| e.into_error(&self.path));
            }
        }
        let flag = index.and_then(|i| self.verified.get(i));
        let check = verify_crc && !flag.is_some_and(|f| f.load(AtomicOrdering::Relaxed));
        let stored = block::check_block(&self.map, info.handle(), check)
            .map_err(|e| e.into_error(&self.path))?;
        if check {
            if let Some(f) = flag {
                f.store(true, AtomicOrdering::Relaxed);
            }
        }
        let data = if stored.block_type == BLOCK_TYPE_LZ4 {
            let bytes = self.map.get(stored.start..stored.end).unwrap_or_default();
            let b =
                block::decompress_lz4(bytes, info.offset).map_err(|e| e.into_error(&self.path))?;
            if let Some(c) = cache {
                c.insert(self.file_number, info.offset, Arc::clone(&b));
            }
            BlockData::Owned(b)
        } else {
            BlockData::Mapped {
                map: Arc::clone(&self.map),
                start: stored.start,
                end: stored.end,
            }
        };
        Block::new(data, info.offset).map_err(|e| e.into_error(&self.path))
    }
}

type Validated = (TableProperties, Vec<BlockInfo>, Option<Range<usize>>);

/// Checks everything a table must satisfy before it is served: footer, block layout,
/// filter, properties, index, and their agreement with each other.
#[deny(clippy::indexing_slicing)]
fn validate(map: &[u8]) -> Result<Validated, DecodeError> {
    let len = map.len();
    let footer_at = len.checked_sub(FOOTER_LEN).ok_or_else(|| DecodeError {
        offset: 0,
        reason: format!("file of {len} bytes is shorter than the footer"),
    })?;
    let footer_bytes = map.get(footer_at..).unwrap_or_default();
    let footer = Footer::decode(footer_bytes, footer_at as u64)?;
    let at = |offset: u64, reason: String| DecodeError { offset, reason };

    // Layout: data blocks | filter? | properties | index | footer, with no gaps.
    let props_end = footer
        .properties
        .end_with_trailer()
        .ok_or_else(|| at(footer_at as u64, "properties handle overflows".into()))?;
    let index_end = footer
        .index
        .end_with_trailer()
        .ok_or_else(|| at(footer_at as u64, "index handle overflows".into()))?;
    if index_end != footer_at as u64 || props_end != footer.index.offset {
        return Err(at(
            footer_at as u64,
            format!(
                "footer handles do not tile the file: properties {:?}, index {:?}, footer at {footer_at}",
                footer.properties, footer.index
            ),
        ));
    }
    let data_end = if footer.has_filter() {
        let filter_end = footer
            .filter
            .end_with_trailer()
            .ok_or_else(|| at(footer_at as u64, "filter handle overflows".into()))?;
        if filter_end != footer.properties.offset {
            return Err(at(
                footer_at as u64,
                format!(
                    "filter block {:?} does not end where the properties begin ({})",
                    footer.filter, footer.properties.offset
                ),
            ));
        }
        footer.filter.offset
    } else {
        footer.properties.offset
    };

    // Metadata blocks: the crc is always checked here, whatever verify_checksums says.
    let read_meta = |h: BlockHandle, what: &str| -> Result<&[u8], DecodeError> {
        let s = block::check_block(map, h, true).map_err(|e| DecodeError {
            offset: e.offset,
            reason: format!("{what} block: {}", e.reason),
        })?;
        if s.block_type != block::BLOCK_TYPE_RAW {
            return Err(at(h.offset, format!("{what} block must be stored raw")));
        }
        Ok(map.get(s.start..s.end).unwrap_or_default())
    };

    let filter = if footer.has_filter() {
        let bytes = read_meta(footer.filter, "filter")?;
        BloomFilter::parse(bytes).map_err(|r| at(footer.filter.offset, r))?;
        let start = footer.filter.offset as usize;
        Some(start..start + bytes.len())
    } else {
        None
    };

    let mut props = TableProperties::decode(
        read_meta(footer.properties, "properties")?,
        footer.properties.offset,
    )?;
    props.file_size = len as u64;
    let index_bytes = read_meta(footer.index, "index")?;
    let blocks = decode_index(map, index_bytes, footer.index.offset, data_end)?;
    check_properties(&props, &footer, &blocks, data_end)?;
    Ok((props, blocks, filter))
}

/// Decodes the index block into one [`BlockInfo`] per data block, checking that the
/// blocks tile `[0, data_end)` in order and that the index keys strictly increase.
#[deny(clippy::indexing_slicing)]
fn decode_index(
    map: &[u8],
    index: &[u8],
    index_offset: u64,
    data_end: u64,
) -> Result<Vec<BlockInfo>, DecodeError> {
    let at = |reason: String| DecodeError {
        offset: index_offset,
        reason: format!("index block: {reason}"),
    };
    let data = BlockData::Owned(Arc::from(index));
    let mut it = Block::new(data, index_offset)?.iter();
    it.seek_to_first();
    let mut blocks: Vec<BlockInfo> = Vec::new();
    let mut expected_offset = 0u64;
    while it.valid() {
        let mut d = Decoder::new(it.value(), index_offset);
        let h = BlockHandle::decode_varint(&mut d)?;
        if !d.is_empty() {
            return Err(at(format!("entry {} has trailing bytes", blocks.len())));
        }
        if h.offset != expected_offset {
            return Err(at(format!(
                "data block {} starts at {}, expected {expected_offset}",
                blocks.len(),
                h.offset
            )));
        }
        let end = h
            .end_with_trailer()
            .filter(|&e| e <= data_end)
            .ok_or_else(|| {
                at(format!(
                    "data block {} ({:?}) runs past the data region end {data_end}",
                    blocks.len(),
                    h
                ))
            })?;
        if let Some(prev) = blocks.last() {
            if compare_internal_keys(&prev.last_key, it.key()) != Ordering::Less {
                return Err(at(format!(
                    "keys of entries {} and {} are out of order",
                    blocks.len() - 1,
                    blocks.len()
                )));
            }
        }
        // The trailer's type byte sits right after the stored bytes; end <= data_end <= len.
        let type_at = (h.offset + h.size) as usize;
        let compressed = match map.get(type_at) {
            Some(&block::BLOCK_TYPE_RAW) => false,
            Some(&BLOCK_TYPE_LZ4) => true,
            other => {
                return Err(DecodeError {
                    offset: h.offset,
                    reason: format!("data block has unknown type {other:?}"),
                })
            }
        };
        blocks.push(BlockInfo {
            offset: h.offset,
            stored_size: h.size,
            compressed,
            last_key: it.key().to_vec(),
        });
        expected_offset = end;
        it.next();
    }
    if let Some(e) = it.error() {
        return Err(e.clone());
    }
    if blocks.is_empty() {
        return Err(at("no data blocks".into()));
    }
    if expected_offset != data_end {
        return Err(at(format!(
            "data blocks end at {expected_offset}, the data region at {data_end}"
        )));
    }
    Ok(blocks)
}

/// Cross-checks the properties against the footer and the index.
fn check_properties(
    p: &TableProperties,
    footer: &Footer,
    blocks: &[BlockInfo],
    data_end: u64,
) -> Result<(), DecodeError> {
    let trailer = BLOCK_TRAILER_LEN as u64;
    let filter_bytes = if footer.has_filter() {
        footer.filter.size + trailer
    } else {
        0
    };
    let problem = if p.format_version != FORMAT_VERSION {
        Some(format!(
            "format version {} in the properties",
            p.format_version
        ))
    } else if p.num_data_blocks != blocks.len() as u64 {
        Some(format!(
            "{} data blocks declared, the index has {}",
            p.num_data_blocks,
            blocks.len()
        ))
    } else if p.data_bytes != data_end {
        Some(format!(
            "data bytes {} declared, data region is {data_end}",
            p.data_bytes
        ))
    } else if p.index_bytes != footer.index.size + trailer {
        Some(format!("index bytes {} declared", p.index_bytes))
    } else if p.filter_bytes != filter_bytes || footer.has_filter() != (p.bloom_bits_per_key > 0) {
        Some(format!(
            "filter bytes {} / bits per key {} disagree with the footer",
            p.filter_bytes, p.bloom_bits_per_key
        ))
    } else if p.num_entries < p.num_data_blocks || p.num_deletions > p.num_entries {
        Some(format!(
            "{} entries with {} deletions in {} blocks",
            p.num_entries, p.num_deletions, p.num_data_blocks
        ))
    } else if p.smallest_seq > p.largest_seq {
        Some("smallest sequence exceeds largest".into())
    } else if compare_internal_keys(&p.smallest_key, &p.largest_key) == Ordering::Greater {
        Some("smallest key exceeds largest key".into())
    } else if blocks
        .last()
        .is_some_and(|b| compare_internal_keys(&p.largest_key, &b.last_key) == Ordering::Greater)
    {
        Some("largest key is beyond the last index key".into())
    } else {
        None
    };
    match problem {
        Some(reason) => Err(DecodeError {
            offset: footer.properties.offset,
            reason: format!("properties block: {reason}"),
        }),
        None => Ok(()),
    }
}

/// An iterator over a table's entries, holding the table alive. Send, lock-free.
#[derive(Debug)]
pub struct TableIter {
    table: Arc<Table>,
    block_index: usize,
    block: Option<BlockIter>,
    status: Option<Error>,
}

impl TableIter {
    /// The table this iterator reads.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    fn fail(&mut self, e: Error) {
        self.status = Some(e);
        self.block = None;
    }

    /// Loads block `i` (not positioned); clears the iterator past the last block.
    fn load(&mut self, i: usize) -> bool {
        self.block_index = i;
        if i >= self.table.blocks.len() {
            self.block = None;
            return false;
        }
        match self.table.block_iter(i) {
            Ok(it) => {
                self.block = Some(it);
                true
            }
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// Moves past exhausted blocks to the first entry of the next non-empty one.
    fn skip_exhausted_blocks(&mut self) {
        loop {
            let Some(b) = &self.block else { return };
            if b.valid() {
                return;
            }
            if let Some(e) = b.error() {
                let e = e.clone().into_error(&self.table.path);
                return self.fail(e);
            }
            if !self.load(self.block_index + 1) {
                return;
            }
            if let Some(b) = &mut self.block {
                b.seek_to_first();
            }
        }
    }
}

impl InternalIterator for TableIter {
    fn valid(&self) -> bool {
        self.status.is_none() && self.block.as_ref().is_some_and(BlockIter::valid)
    }

    fn seek_to_first(&mut self) {
        self.status = None;
        if self.load(0) {
            if let Some(b) = &mut self.block {
                b.seek_to_first();
            }
            self.skip_exhausted_blocks();
        }
    }

    fn seek(&mut self, target: &[u8]) {
        self.status = None;
        let i = self.table.find_block(target);
        if self.load(i) {
            if let Some(b) = &mut self.block {
                b.seek(target);
            }
            self.skip_exhausted_blocks();
        }
    }

    fn next(&mut self) {
        if !self.valid() {
            return;
        }
        if let Some(b) = &mut self.block {
            b.next();
        }
        self.skip_exhausted_blocks();
    }

    fn key(&self) -> &[u8] {
        self.block.as_ref().map_or(&[], BlockIter::key)
    }

    fn value(&self) -> &[u8] {
        self.block.as_ref().map_or(&[], BlockIter::value)
    }

    fn status(&self) -> Result<()> {
        match &self.status {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;
    use crate::lsm::sst::builder::{TableBuilder, TableOptions};
    use crate::lsm::types::make_internal_key;
    use proptest::prelude::*;

    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn opts(block_size_bytes: usize, compression: Compression, bits: u32) -> TableOptions {
        TableOptions {
            block_size_bytes,
            restart_interval: 4,
            compression,
            bloom_bits_per_key: bits,
        }
    }

    fn ik(k: &[u8], seq: u64, kind: ValueKind) -> Vec<u8> {
        make_internal_key(k, SeqNo(seq), kind)
    }

    /// `n` user keys, each with 1..=3 versions; every fifth newest version is a tombstone.
    fn sample_entries(n: u32) -> Entries {
        let mut out = Vec::new();
        for i in 0..n {
            let user = format!("user/{:06}/{}", i * 7, "x".repeat((i % 5) as usize));
            let versions = 1 + i % 3;
            for v in (0..versions).rev() {
                let seq = 10 + u64::from(i) * 3 + u64::from(v);
                let kind = if v == versions - 1 && i % 5 == 0 {
                    ValueKind::Delete
                } else {
                    ValueKind::Put
                };
                let value = match kind {
                    ValueKind::Put => format!("value-{i}-{v}-{}", "abc".repeat((i % 13) as usize)),
                    ValueKind::Delete => String::new(),
                };
                out.push((ik(user.as_bytes(), seq, kind), value.into_bytes()));
            }
        }
        out
    }

    fn write_table(path: &Path, entries: &Entries, o: TableOptions) -> TableProperties {
        let mut b = TableBuilder::new(StdFs.create(path).unwrap(), o);
        for (k, v) in entries {
            b.add(k, v).unwrap();
        }
        b.finish().unwrap()
    }

    fn open(path: &Path) -> Result<Arc<Table>> {
        Table::open(&StdFs, path, FileNumber(7), None, true)
    }

    fn collect(t: &Arc<Table>) -> Result<Entries> {
        let mut it = t.iter();
        it.seek_to_first();
        let mut out = Vec::new();
        while it.valid() {
            out.push((it.key().to_vec(), it.value().to_vec()));
            it.next();
        }
        it.status().map(|()| out)
    }

    fn assert_corruption_names(e: &Error, path: &Path) {
        match e {
            Error::Corruption { path: p, .. } => assert_eq!(p, path, "{e}"),
            other => panic!(
                "expected corruption naming {}, got {other:?}",
                path.display()
            ),
        }
        assert!(e.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn round_trip_many_keys_with_every_compression_and_block_size() {
        let entries = sample_entries(3000);
        for compression in [Compression::None, Compression::Lz4] {
            for block_size in [64usize, 4096] {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("000007.sst");
                let built = write_table(&path, &entries, opts(block_size, compression, 10));
                let t = open(&path).unwrap();
                assert_eq!(collect(&t).unwrap(), entries);
                let mut read_back = t.properties().clone();
                assert_eq!(read_back.file_crc32c, 0);
                read_back.file_crc32c = built.file_crc32c;
                assert_eq!(read_back, built);
                assert_eq!(t.file_size(), built.file_size);
                assert_eq!(t.data_blocks().len() as u64, built.num_data_blocks);
                assert_eq!(built.smallest_key, entries[0].0);
                assert_eq!(built.largest_key, entries[entries.len() - 1].0);
                let any_compressed = t.data_blocks().iter().any(|b| b.compressed);
                assert_eq!(any_compressed, compression == Compression::Lz4);
                if block_size == 64 {
                    assert!(built.num_data_blocks > 500);
                }
                assert_eq!(t.verify().unwrap(), built.file_crc32c);
            }
        }
    }

    #[test]
    fn get_returns_newest_visible_version_and_tombstones() {
        let entries: Entries = vec![
            (ik(b"a", 9, ValueKind::Put), b"a9".to_vec()),
            (ik(b"a", 5, ValueKind::Delete), vec![]),
            (ik(b"a", 3, ValueKind::Put), b"a3".to_vec()),
            (ik(b"b", 4, ValueKind::Put), b"b4".to_vec()),
            (ik(b"c", 1, ValueKind::Delete), vec![]),
        ];
        // Tiny blocks put the versions of "a" in different blocks.
        for block_size in [1usize, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("1.sst");
            write_table(&path, &entries, opts(block_size, Compression::Lz4, 10));
            let t = open(&path).unwrap();
            use LookupResult::*;
            let get = |k: &[u8], s: u64| t.get(k, SeqNo(s)).unwrap();
            assert_eq!(get(b"a", 100), Found(b"a9".to_vec()));
            assert_eq!(get(b"a", 9), Found(b"a9".to_vec()));
            assert_eq!(get(b"a", 8), Deleted);
            assert_eq!(get(b"a", 5), Deleted);
            assert_eq!(get(b"a", 4), Found(b"a3".to_vec()));
            assert_eq!(get(b"a", 3), Found(b"a3".to_vec()));
            assert_eq!(get(b"a", 2), NotFound);
            assert_eq!(get(b"b", 3), NotFound);
            assert_eq!(get(b"b", 4), Found(b"b4".to_vec()));
            assert_eq!(get(b"c", 1), Deleted);
            assert_eq!(get(b"", 100), NotFound);
            assert_eq!(get(b"aa", 100), NotFound);
            assert_eq!(get(b"d", 100), NotFound);
        }
    }

    #[test]
    fn get_agrees_with_a_model_for_every_key_and_snapshot() {
        let entries = sample_entries(400);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write_table(&path, &entries, opts(128, Compression::Lz4, 10));
        let t = Table::open(
            &StdFs,
            &path,
            FileNumber(1),
            Some(BlockCache::new(1 << 20)),
            true,
        )
        .unwrap();
        let model = |user: &[u8], seq: SeqNo| {
            entries
                .iter()
                .filter_map(|(k, v)| parse_internal_key(k).map(|p| (p, v)))
                .find(|(p, _)| p.user_key == user && p.seq <= seq)
                .map_or(LookupResult::NotFound, |(p, v)| match p.kind {
                    ValueKind::Put => LookupResult::Found(v.clone()),
                    ValueKind::Delete => LookupResult::Deleted,
                })
        };
        for (k, _) in entries.iter().step_by(3) {
            let p = parse_internal_key(k).unwrap();
            for seq in [p.seq.0 - 1, p.seq.0, p.seq.0 + 1, u64::MAX >> 8] {
                let got = t.get(p.user_key, SeqNo(seq)).unwrap();
                assert_eq!(got, model(p.user_key, SeqNo(seq)), "{k:?} @ {seq}");
            }
        }
        let stats = t.cache.as_ref().unwrap().stats();
        assert!(stats.hits > 0 && stats.inserts > 0, "{stats:?}");
    }

    #[test]
    fn seek_lands_on_first_key_at_or_after_target() {
        let entries = sample_entries(500);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write_table(&path, &entries, opts(200, Compression::None, 0));
        let t = open(&path).unwrap();
        let mut it = t.iter();
        let mut targets: Vec<Vec<u8>> = entries.iter().map(|(k, _)| k.clone()).collect();
        for i in (0..3500u32).step_by(7) {
            targets.push(ik(format!("user/{i:06}").as_bytes(), 11, ValueKind::Put));
            targets.push(ik(
                format!("user/{i:06}/x").as_bytes(),
                u64::MAX >> 8,
                ValueKind::Put,
            ));
        }
        targets.push(ik(b"", 0, ValueKind::Delete));
        targets.push(ik(b"zzz", 0, ValueKind::Delete));
        for target in &targets {
            let want = entries
                .partition_point(|(k, _)| compare_internal_keys(k, target) == Ordering::Less);
            it.seek(target);
            it.status().unwrap();
            match entries.get(want) {
                Some((k, v)) => {
                    assert!(it.valid());
                    assert_eq!((it.key(), it.value()), (&k[..], &v[..]));
                    it.next();
                    assert_eq!(it.valid(), want + 1 < entries.len());
                }
                None => assert!(!it.valid()),
            }
        }
    }

    #[test]
    fn bloom_filter_has_no_false_negatives_and_few_false_positives() {
        let entries: Entries = (0..5000u32)
            .map(|i| (ik(format!("k{i}").as_bytes(), 1, ValueKind::Put), vec![1]))
            .collect::<Vec<_>>();
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| compare_internal_keys(&a.0, &b.0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write_table(&path, &sorted, opts(4096, Compression::Lz4, 10));
        let t = open(&path).unwrap();
        for i in 0..5000u32 {
            assert!(t.may_contain(format!("k{i}").as_bytes()));
        }
        let fp = (0..10_000u32)
            .filter(|i| t.may_contain(format!("absent{i}").as_bytes()))
            .count();
        assert!(
            fp < 250,
            "{fp} false positives in 10000 (about 1% expected)"
        );

        let no_filter = dir.path().join("2.sst");
        let p = write_table(&no_filter, &sorted, opts(4096, Compression::Lz4, 0));
        assert_eq!(p.filter_bytes, 0);
        assert!(open(&no_filter).unwrap().may_contain(b"absent"));
    }

    #[test]
    fn whole_file_crc_equals_crc32c_of_the_file_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let p = write_table(&path, &sample_entries(300), opts(512, Compression::Lz4, 10));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(p.file_size, bytes.len() as u64);
        assert_eq!(p.file_crc32c, codec::crc32c(&bytes));
        assert_eq!(open(&path).unwrap().verify().unwrap(), p.file_crc32c);
    }

    /// A small table and the byte ranges of its parts.
    struct Regions {
        _dir: tempfile::TempDir,
        path: PathBuf,
        bytes: Vec<u8>,
        footer: Footer,
        entries: Entries,
    }

    fn small_table(compression: Compression) -> Regions {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000042.sst");
        let entries = sample_entries(60);
        write_table(&path, &entries, opts(256, compression, 10));
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - FOOTER_LEN;
        let footer = Footer::decode(&bytes[at..], at as u64).unwrap();
        Regions {
            _dir: dir,
            path,
            bytes,
            footer,
            entries,
        }
    }

    fn with_trailer(h: BlockHandle) -> Range<usize> {
        h.offset as usize..h.end_with_trailer().unwrap() as usize
    }

    /// Flips one bit of every byte in `range` (a different bit per byte), one at a time,
    /// and hands each damaged file to `check`.
    fn flip_each_byte(r: &Regions, range: Range<usize>, mut check: impl FnMut(&Path)) {
        for i in range {
            let mut b = r.bytes.clone();
            b[i] ^= 1 << (i % 8);
            std::fs::write(&r.path, &b).unwrap();
            check(&r.path);
        }
        std::fs::write(&r.path, &r.bytes).unwrap();
    }

    #[test]
    fn corrupt_data_block_is_reported_at_get_iteration_and_verify() {
        for compression in [Compression::None, Compression::Lz4] {
            let r = small_table(compression);
            let first = open(&r.path).unwrap().data_blocks()[0].clone();
            let first_key = parse_internal_key(&r.entries[0].0).unwrap();
            let range = first.offset as usize..(first.offset + first.stored_size) as usize + 5;
            flip_each_byte(&r, range, |path| {
                // Open reads only the trailer's type byte of each data block.
                let t = match open(path) {
                    Ok(t) => t,
                    Err(e) => return assert_corruption_names(&e, path),
                };
                let e = t.get(first_key.user_key, SeqNo::MAX).unwrap_err();
                assert_corruption_names(&e, path);
                assert_corruption_names(&collect(&t).unwrap_err(), path);
                assert_corruption_names(&t.verify().unwrap_err(), path);
                // Without per-read checksums the damage may go unseen, but never panics.
                let t = Table::open(&StdFs, path, FileNumber(42), None, false).unwrap();
                let _ = t.get(first_key.user_key, SeqNo::MAX);
                let _ = collect(&t);
                assert!(t.verify().is_err());
            });
        }
    }

    #[test]
    fn corrupt_index_filter_properties_or_footer_fails_open_naming_the_file() {
        let r = small_table(Compression::Lz4);
        let len = r.bytes.len();
        let parts = [
            ("index", with_trailer(r.footer.index)),
            ("filter", with_trailer(r.footer.filter)),
            ("properties", with_trailer(r.footer.properties)),
            ("footer", len - FOOTER_LEN..len),
        ];
        for (what, range) in parts {
            assert!(!range.is_empty(), "{what}");
            flip_each_byte(&r, range, |path| {
                let e = open(path).unwrap_err();
                assert_corruption_names(&e, path);
            });
        }
        open(&r.path).unwrap();
    }

    #[test]
    fn corrupt_index_block_reports_file_and_offset() {
        let r = small_table(Compression::None);
        let mut b = r.bytes.clone();
        b[r.footer.index.offset as usize + 1] ^= 0x10;
        std::fs::write(&r.path, &b).unwrap();
        match open(&r.path).unwrap_err() {
            Error::Corruption {
                path,
                offset,
                reason,
            } => {
                assert_eq!(path, r.path);
                assert_eq!(offset, r.footer.index.offset);
                assert!(reason.contains("index"), "{reason}");
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn truncated_files_are_rejected_at_open() {
        let r = small_table(Compression::Lz4);
        for keep in [0, 1, 10, FOOTER_LEN, r.bytes.len() / 2, r.bytes.len() - 1] {
            std::fs::write(&r.path, &r.bytes[..keep]).unwrap();
            let e = open(&r.path).unwrap_err();
            assert_corruption_names(&e, &r.path);
        }
        // Extra bytes at the end move the footer: also rejected.
        let mut longer = r.bytes.clone();
        longer.extend_from_slice(&[0; 3]);
        std::fs::write(&r.path, &longer).unwrap();
        assert_corruption_names(&open(&r.path).unwrap_err(), &r.path);
    }

    #[test]
    fn random_bytes_are_rejected_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("9.sst");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in [100usize, 4096, 100_000] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 7;
                    x ^= x >> 9;
                    x as u8
                })
                .collect();
            std::fs::write(&path, &bytes).unwrap();
            assert_corruption_names(&open(&path).unwrap_err(), &path);
        }
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("5.sst");
        assert!(matches!(open(&path), Err(Error::NotFound { .. })));
    }

    #[test]
    fn iterator_is_send_and_outlives_its_table_handle() {
        fn assert_send<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let entries = sample_entries(50);
        write_table(&path, &entries, opts(100, Compression::Lz4, 10));
        let mut it = open(&path).unwrap().iter();
        assert_send(&it);
        let handle = std::thread::spawn(move || {
            it.seek_to_first();
            let mut n = 0;
            while it.valid() {
                n += 1;
                it.next();
            }
            n
        });
        assert_eq!(handle.join().unwrap(), entries.len());
    }

    /// Prints the worked example of `format-spec/sst.md`:
    /// `cargo test --lib print_spec_example -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn print_spec_example() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.sst");
        let entries: Entries = vec![
            (ik(b"apple", 2, ValueKind::Put), b"red".to_vec()),
            (ik(b"apple", 1, ValueKind::Delete), vec![]),
            (ik(b"cherry", 3, ValueKind::Put), b"dark".to_vec()),
        ];
        let o = TableOptions {
            block_size_bytes: 36,
            restart_interval: 16,
            compression: Compression::None,
            bloom_bits_per_key: 10,
        };
        let p = write_table(&path, &entries, o);
        let bytes = std::fs::read(&path).unwrap();
        for (i, chunk) in bytes.chunks(16).enumerate() {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "{:04x}: {:<47}  {}",
                i * 16,
                hex.join(" "),
                chunk.escape_ascii()
            );
        }
        println!("{p:#?}");
        let t = open(&path).unwrap();
        println!("{:#?}", t.data_blocks());
        let at = bytes.len() - FOOTER_LEN;
        println!("{:#?}", Footer::decode(&bytes[at..], at as u64).unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn open_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("1.sst");
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(t) = open(&path) {
                let _ = collect(&t);
                let _ = t.verify();
            }
        }

        #[test]
        fn damaged_tables_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let r = small_table(Compression::Lz4);
            let mut b = r.bytes.clone();
            for (i, x) in flips {
                let at = i.index(b.len());
                b[at] ^= x.max(1);
            }
            std::fs::write(&r.path, &b).unwrap();
            for verify in [true, false] {
                if let Ok(t) = Table::open(&StdFs, &r.path, FileNumber(1), None, verify) {
                    let _ = collect(&t);
                    let _ = t.verify();
                    let _ = t.get(b"user/000007/xx", SeqNo::MAX);
                    let mut it = t.iter();
                    it.seek(&r.entries[10].0);
                    while it.valid() { it.next(); }
                }
            }
        }
    }
}
