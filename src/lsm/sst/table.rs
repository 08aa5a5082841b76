//! Reads a table: validates its footer, filter, properties and index at open (reading only
//! the metadata region after the data blocks), and serves point lookups and iteration
//! from then on without locks (except the block cache's, once per block). Data blocks are
//! read with positioned reads into the block cache, or in place from a memory mapping of
//! the file ([`TableReads`]).
//!
//! A table is immutable once opened; nothing here writes to it. Every error names the file
//! and the byte offset where the damage was found.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use memmap2::Mmap;

use super::block::{
    self, Block, BlockData, BlockIter, OwnedBlock, BLOCK_TRAILER_LEN, BLOCK_TYPE_LZ4,
};
use super::bloom::{hash64, FilterLayout, TableFilter};
use super::cache::{BlockCache, BlockCacheForm, CachedBlock, Lookup, Spares};
use super::footer::{BlockHandle, Footer, FOOTER_LEN};
use crate::codec::{self, DecodeError, Decoder};
use crate::error::{Error, IoContext, Result};
use crate::fs::FileSystem;
use crate::lsm::anon::{map_anon, AnonVec, ByteBuf};
use crate::lsm::types::{
    compare_bytes, compare_internal_keys, parse_internal_key, user_key, FileNumber,
    InternalIterator, LookupKey, SeqNo, ValueKind,
};
use crate::lsm::{Compression, TableReads};

/// What a table records about itself (its properties block), plus the file's size and,
/// when known, its crc32c.
#[derive(Debug, Clone, PartialEq)]
pub struct TableProperties {
    /// The table format version (1 or 2; they differ in the filter layout).
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

/// The index of a table, packed: every index key in one buffer and every block's offset
/// in one array, so that a table costs three heap allocations however many blocks it has.
/// The blocks tile the data region (checked at open), so a block's stored size is the
/// distance to the next block's offset less the trailer.
#[derive(Debug)]
struct PackedIndex {
    /// `offsets[i]`: where data block `i` starts; `offsets[n]`: the end of the data region.
    offsets: AnonVec<u64>,
    /// `key_ends[i]`: where the index key of block `i` ends in `keys` (it starts where the
    /// previous one ends).
    key_ends: AnonVec<u32>,
    /// The index keys, back to back. This and the arrays above and below are
    /// [`AnonVec`]s: in a 64 MiB table each holds a few hundred KiB.
    keys: ByteBuf,
    /// Length of the prefix every index key's user key shares.
    common_len: usize,
    /// `prefixes[i]`: the 8 bytes of block `i`'s user key after the shared prefix,
    /// big-endian, zero-padded ([`key_prefix`]). A lookup searches this dense array first
    /// and compares whole keys only among the blocks whose bytes there equal the
    /// target's: 8 bytes a block, and a binary search that touches one cache line a step
    /// instead of two scattered ones.
    prefixes: AnonVec<u64>,
    /// `fences[j] = prefixes[j * FENCE_STRIDE]`: small enough to stay in the processor's
    /// cache, so that a lookup misses it only in the one stride it then searches.
    fences: Box<[u64]>,
}

/// Blocks per fence of [`PackedIndex::fences`]: two cache lines of prefixes.
const FENCE_STRIDE: usize = 16;

/// The first 8 bytes of `user_key` as a big-endian integer, zero-padded: `a <= b` implies
/// `key_prefix(a) <= key_prefix(b)`, so the prefixes of sorted keys are sorted.
fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

impl PackedIndex {
    /// Number of data blocks.
    fn len(&self) -> usize {
        self.key_ends.len()
    }

    /// The index key of block `i` (empty when out of range).
    fn key(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            Some(p) => self.key_ends.get(p).copied().unwrap_or(0),
            None => 0,
        } as usize;
        let end = self.key_ends.get(i).copied().unwrap_or(0) as usize;
        self.keys.get(start..end).unwrap_or_default()
    }

    /// Where block `i` lies, `None` when out of range.
    fn handle(&self, i: usize) -> Option<BlockHandle> {
        let offset = *self.offsets.get(i)?;
        let next = *self.offsets.get(i + 1)?;
        Some(BlockHandle {
            offset,
            size: next.checked_sub(offset + BLOCK_TRAILER_LEN as u64)?,
        })
    }

    /// The end of the data region.
    fn data_end(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Index of the first block whose index key is `>= target` (`len()` if none).
    fn find(&self, target: &[u8]) -> usize {
        // Blocks whose prefix is below the target's hold only smaller keys, those above
        // only greater ones: whole keys need comparing only in between.
        let target_user = user_key(target);
        let common = user_key(self.key(0))
            .get(..self.common_len)
            .unwrap_or_default();
        let p = match target_user.get(..self.common_len) {
            Some(head) if head == common => key_prefix(&target_user[self.common_len..]),
            // Every index key starts with `common`: the target is below all of them or
            // above all of them.
            _ if compare_bytes(target_user, common) == Ordering::Less => return 0,
            _ => return self.len(),
        };
        // The fences narrow the search to one stride of `prefixes`: the first prefix >= p
        // lies after the last fence below p and at or before the first fence >= p.
        let j = self.fences.partition_point(|&x| x < p);
        let start = (j * FENCE_STRIDE).saturating_sub(FENCE_STRIDE - 1);
        let end = (j * FENCE_STRIDE).min(self.prefixes.len());
        let window = self.prefixes.get(start..end).unwrap_or_default();
        let mut lo = start + window.partition_point(|&x| x < p);
        // Blocks sharing the target's prefix: usually none or one, all of them when the
        // keys differ only past the prefix.
        let mut hi = lo;
        while hi < self.prefixes.len() && self.prefixes[hi] == p {
            hi += 1;
            if hi - lo == FENCE_STRIDE {
                hi += self.prefixes[hi..].partition_point(|&x| x == p);
                break;
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if compare_internal_keys(self.key(mid), target) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Heap bytes held.
    fn heap_bytes(&self) -> usize {
        self.offsets.len() * 8
            + self.key_ends.len() * 4
            + self.keys.len()
            + (self.prefixes.len() + self.fences.len()) * 8
    }
}

/// Where a table's bytes come from.
#[derive(Debug)]
enum Source {
    /// Positioned reads of the open file.
    File(std::fs::File),
    /// A read-only mapping of the whole file.
    Mapped(Arc<Mmap>),
}

/// Bytes a compaction's table iterator reads ahead at once.
pub const COMPACTION_READAHEAD_BYTES: usize = 256 << 10;

thread_local! {
    /// Each thread's buffer for positioned reads of single blocks (see `load_positioned`);
    /// it grows to the largest block the thread read, and shrinks back past
    /// [`READ_BUF_KEEP_BYTES`].
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Buffers of blocks the cache evicted when this thread inserted one, newest first,
    /// for the thread's next block reads to decode into (see [`block::OwnedBlock`]): a
    /// few, since a cache holding blocks compressed evicts buffers of two sizes.
    static SPARE_BLOCKS: std::cell::RefCell<[Option<Arc<[u8]>>; SPARES_KEPT]> =
        const { std::cell::RefCell::new([const { None }; SPARES_KEPT]) };
    /// The buffer of the last block this thread decoded without caching it (a block the
    /// cache holds compressed or declined, or read with no cache), unless larger than
    /// [`READ_BUF_KEEP_BYTES`]: the thread's next such block reuses it once the reader of
    /// the last one dropped it.
    static SCRATCH_BLOCK: std::cell::Cell<Option<Arc<[u8]>>> = const { std::cell::Cell::new(None) };
}

/// Decodes a block for a read that will not cache it with `decode`, handing it this
/// thread's scratch buffer (which it reuses when no reader holds it any more).
fn decode_uncached(
    decode: impl FnOnce(Option<Arc<[u8]>>) -> Result<OwnedBlock, DecodeError>,
) -> Result<OwnedBlock, DecodeError> {
    let b = decode(SCRATCH_BLOCK.with(|s| s.take()))?;
    if b.charge() <= READ_BUF_KEEP_BYTES {
        SCRATCH_BLOCK.with(|s| s.set(Some(b.share_buffer())));
    }
    Ok(b)
}

/// Decompresses the lz4 block `stored` (at `offset`) for a read that will not cache it.
fn decompress_uncached(stored: &[u8], offset: u64) -> Result<OwnedBlock, DecodeError> {
    decode_uncached(|scratch| block::decompress_lz4(stored, offset, scratch))
}

/// Decompresses the lz4 block `stored` (at `offset` of table `file`) and caches it in
/// `cache`, into a spare buffer of the thread's; with no cache, into the scratch buffer.
fn decompress_and_cache(
    cache: Option<&Arc<BlockCache>>,
    file: FileNumber,
    offset: u64,
    stored: &[u8],
) -> Result<OwnedBlock, DecodeError> {
    let Some(c) = cache else {
        return decompress_uncached(stored, offset);
    };
    let spare = take_spare_block(block::lz4_uncompressed_len(stored));
    let b = block::decompress_lz4(stored, offset, spare)?;
    cache_block(c, file, offset, b.clone());
    Ok(b)
}

/// Buffers a thread keeps for its next block reads.
const SPARES_KEPT: usize = 4;

/// Keeps the buffers the cache handed back for this thread's next reads (the oldest kept
/// ones make room).
fn keep_spare_blocks(spares: Spares) {
    SPARE_BLOCKS.with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else {
            return;
        };
        for spare in spares.0.into_iter().flatten() {
            if spare.len() <= READ_BUF_KEEP_BYTES {
                kept.rotate_right(1);
                kept[0] = Some(spare);
            }
        }
    });
}

/// Caches `block` (decompressed) and keeps the buffer the cache hands back.
fn cache_block(cache: &BlockCache, file: FileNumber, offset: u64, block: OwnedBlock) {
    keep_spare_blocks(cache.insert(file, offset, block));
}

/// A spare buffer of this thread's that fits a block of `len` bytes, for a block that
/// will be cached (a block that will not be decodes into the scratch buffer instead).
fn take_spare_block(len: usize) -> Option<Arc<[u8]>> {
    SPARE_BLOCKS.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        s.iter_mut()
            .find(|b| {
                b.as_ref()
                    .is_some_and(|b| OwnedBlock::buffer_fits(b.len(), len))
            })?
            .take()
    })
}

/// The largest buffer a thread keeps for positioned reads between reads.
const READ_BUF_KEEP_BYTES: usize = 256 << 10;

/// A compaction's window onto a table: the file's bytes from `start` on.
#[derive(Debug, Default)]
struct Readahead {
    /// A [`ByteBuf`]: at 256 KiB, from the C allocator it would raise the mmap threshold.
    buf: ByteBuf,
    start: u64,
}

/// An open, immutable table.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    file_number: FileNumber,
    source: Source,
    file_size: u64,
    props: TableProperties,
    index: PackedIndex,
    /// The filter block, validated at open.
    filter: Option<TableFilter>,
    cache: Option<Arc<BlockCache>>,
    verify_checksums: bool,
    /// Mapped tables only: one flag per data block, set once its crc was checked: the
    /// file is immutable and lives in the store's own directory, so a mapped block is
    /// checked once, not on every read (`verify` still checks every block every time).
    /// A block read with a positioned read is checked whenever it is read from the file.
    verified: Box<[AtomicBool]>,
    /// Bytes of index and filter charged to the block cache (released on drop).
    reserved: usize,
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Some(c) = &self.cache {
            c.release(self.reserved);
        }
    }
}

/// Reads `buf.len()` bytes at `offset` of `source`; a read past the end of the file is a
/// corruption naming `path` and `offset`, any other failure an I/O error saying where.
fn read_exact_at(source: &Source, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    let len = buf.len();
    let short = || {
        Error::corruption(
            path,
            offset,
            format!("short read: {len} bytes at offset {offset} run past the end of the file"),
        )
    };
    match source {
        Source::File(f) => {
            use std::os::unix::fs::FileExt;
            match f.read_exact_at(buf, offset) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(short()),
                Err(e) => Err(Error::io(
                    "read",
                    path,
                    std::io::Error::new(e.kind(), format!("{len} bytes at offset {offset}: {e}")),
                )),
            }
        }
        Source::Mapped(map) => {
            let start = usize::try_from(offset).map_err(|_| short())?;
            let bytes = start
                .checked_add(buf.len())
                .and_then(|end| map.get(start..end))
                .ok_or_else(short)?;
            buf.copy_from_slice(bytes);
            Ok(())
        }
    }
}

impl Table {
    /// Opens the table at `path` for positioned reads ([`TableReads::Positioned`]) and
    /// validates its footer, index, filter and properties (the crc of each, always). With
    /// `verify_checksums` false, the crc of a data block is not checked when it is read.
    /// Every error names `path` and an offset.
    pub fn open(
        fs: &dyn FileSystem,
        path: &Path,
        file_number: FileNumber,
        cache: Option<Arc<BlockCache>>,
        verify_checksums: bool,
    ) -> Result<Arc<Table>> {
        Table::open_with(
            fs,
            path,
            file_number,
            cache,
            verify_checksums,
            TableReads::Positioned,
        )
    }

    /// [`Table::open`], reading data blocks as `reads` says.
    pub fn open_with(
        fs: &dyn FileSystem,
        path: &Path,
        file_number: FileNumber,
        cache: Option<Arc<BlockCache>>,
        verify_checksums: bool,
        reads: TableReads,
    ) -> Result<Arc<Table>> {
        let file = fs.open(path)?;
        crate::fs::skip_access_times(&file);
        Table::from_file_with(file, path, file_number, cache, verify_checksums, reads)
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
        Table::from_file_with(
            file,
            path,
            file_number,
            cache,
            verify_checksums,
            TableReads::Positioned,
        )
    }

    /// [`Table::from_file`], reading data blocks as `reads` says. Open reads the footer and
    /// then the metadata region after the data blocks (filter, properties, index), never
    /// the data blocks themselves. Index and filter stay in memory, charged to `cache`'s
    /// budget ([`BlockCache::reserve`]) for as long as the table is open.
    pub fn from_file_with(
        file: std::fs::File,
        path: &Path,
        file_number: FileNumber,
        cache: Option<Arc<BlockCache>>,
        verify_checksums: bool,
        reads: TableReads,
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
        let source = match reads {
            TableReads::Positioned => Source::File(file),
            TableReads::Mapped => {
                // SAFETY: the mapping is read-only and tables are immutable: nothing in
                // tidemark writes to or truncates a table file after TableBuilder::finish,
                // and files are replaced only by creating new ones. Every byte read through
                // the mapping is validated before use, so its contents are never trusted,
                // only its length.
                let map = unsafe { Mmap::map(&file) }.ctx("mmap", path)?;
                if map.len() as u64 != len {
                    return Err(Error::corruption(
                        path,
                        0,
                        format!("file changed size while opening ({len} -> {})", map.len()),
                    ));
                }
                Source::Mapped(Arc::new(map))
            }
        };
        let footer_at = len - FOOTER_LEN as u64;
        let mut footer_bytes = [0u8; FOOTER_LEN];
        read_exact_at(&source, path, &mut footer_bytes, footer_at)?;
        let footer = Footer::decode(&footer_bytes, footer_at).map_err(|e| e.into_error(path))?;
        let data_end = check_layout(&footer, footer_at).map_err(|e| e.into_error(path))?;
        let meta_len = usize::try_from(footer_at - data_end).map_err(|_| {
            Error::corruption(path, data_end, "metadata region does not fit in memory")
        })?;
        // The region is read into a mapping of its own, not the heap (see `ByteBuf`),
        // and the index is decoded in place from it.
        let mut meta = map_anon(meta_len.max(1));
        read_exact_at(&source, path, &mut meta[..meta_len], data_end)?;
        let meta = Arc::new(meta.make_read_only().ctx("mprotect metadata of", path)?);
        let (mut props, index, filter) =
            validate_meta(&meta, meta_len, data_end, &footer).map_err(|e| e.into_error(path))?;
        drop(meta);
        props.file_size = len;
        let verified = match source {
            Source::Mapped(_) => (0..index.len()).map(|_| AtomicBool::new(false)).collect(),
            Source::File(_) => Box::default(),
        };
        let reserved = index.heap_bytes() + filter.as_ref().map_or(0, TableFilter::memory_bytes);
        if let Some(c) = &cache {
            c.reserve(reserved);
        }
        Ok(Arc::new(Table {
            verified,
            path: path.to_path_buf(),
            file_number,
            source,
            file_size: len,
            props,
            index,
            filter,
            cache,
            verify_checksums,
            reserved,
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
        self.file_size
    }

    /// The table's properties.
    pub fn properties(&self) -> &TableProperties {
        &self.props
    }

    /// Bytes of memory the open table holds for its index and filter (charged to its
    /// block cache's budget, if it has a cache).
    pub fn memory_bytes(&self) -> usize {
        self.reserved
    }

    /// How the table reads its data blocks.
    pub fn reads(&self) -> TableReads {
        match self.source {
            Source::File(_) => TableReads::Positioned,
            Source::Mapped(_) => TableReads::Mapped,
        }
    }

    /// Number of data blocks.
    pub fn num_data_blocks(&self) -> usize {
        self.index.len()
    }

    /// The data blocks, in key order. Reads each block's trailer type byte to say whether
    /// it is compressed (meant for inspection, not for the read path).
    pub fn data_blocks(&self) -> Result<Vec<BlockInfo>> {
        (0..self.index.len())
            .map(|i| {
                let h = self.handle(i)?;
                let mut t = [0u8; 1];
                read_exact_at(&self.source, &self.path, &mut t, h.offset + h.size)?;
                let compressed = match t[0] {
                    block::BLOCK_TYPE_RAW => false,
                    BLOCK_TYPE_LZ4 => true,
                    other => {
                        return Err(Error::corruption(
                            &self.path,
                            h.offset,
                            format!("data block has unknown type {other}"),
                        ))
                    }
                };
                Ok(BlockInfo {
                    offset: h.offset,
                    stored_size: h.size,
                    compressed,
                    last_key: self.index.key(i).to_vec(),
                })
            })
            .collect()
    }

    /// False when `user_key` is certainly not in the table (the bloom filter's answer);
    /// true when it may be, or when the table has no filter.
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        self.may_contain_hash(hash64(user_key))
    }

    /// Starts loading the part of the filter that [`Table::may_contain_hash`] will read
    /// for `h`, without waiting for it (see [`super::bloom::BloomFilter::prefetch_hash`]).
    pub fn prefetch_filter(&self, h: u64) {
        if let Some(f) = &self.filter {
            f.view().prefetch_hash(h);
        }
    }

    /// [`Table::may_contain`] for a key whose [`hash64`] is `h`: a lookup through several
    /// tables hashes its key once.
    pub fn may_contain_hash(&self, h: u64) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| f.view().may_contain_hash(h))
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
        let mut i = self.index.find(target);
        // The first key >= target is in block i, or else it is the first key of block
        // i + 1 (block i's index key lies between the two blocks).
        while i < self.index.len() {
            let mut it = self.block_iter(i, None)?;
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

    /// An iterator over every entry, in internal key order, reading through the block
    /// cache.
    pub fn iter(self: &Arc<Self>) -> TableIter {
        TableIter {
            table: Arc::clone(self),
            block_index: 0,
            block: None,
            status: None,
            readahead: None,
        }
    }

    /// An iterator for a compaction, which reads every block once in order: a positioned
    /// table is read through a readahead buffer of [`COMPACTION_READAHEAD_BYTES`] and
    /// leaves the block cache alone; a mapped table is read as [`Table::iter`] does.
    pub fn sequential_iter(self: &Arc<Self>) -> TableIter {
        let mut it = self.iter();
        if matches!(self.source, Source::File(_)) {
            it.readahead = Some(Readahead::default());
        }
        it
    }

    /// Reads every data block, checking its crc (whatever `verify_checksums` was at open),
    /// its entries, their order and the counts the properties declare; then recomputes
    /// and returns the crc32c of the whole file.
    pub fn verify(&self) -> Result<u32> {
        let mut prev: Option<Vec<u8>> = None;
        let mut count: u64 = 0;
        let mut ra = Readahead::default();
        for i in 0..self.index.len() {
            let block = self.load_sequential(i, &mut ra, true)?;
            let offset = self.handle(i)?.offset;
            let last_key = self.index.key(i);
            let mut it = block.iter();
            it.seek_to_first();
            let first_count = count;
            while it.valid() {
                let key = it.key();
                let in_order = prev
                    .as_deref()
                    .is_none_or(|p| compare_internal_keys(p, key) == Ordering::Less);
                if !in_order || compare_internal_keys(key, last_key) == Ordering::Greater {
                    return Err(Error::corruption(
                        &self.path,
                        offset,
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
                    offset,
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
        self.file_crc32c()
    }

    /// The crc32c of the whole file, read again.
    fn file_crc32c(&self) -> Result<u32> {
        match &self.source {
            Source::Mapped(map) => Ok(codec::crc32c(map)),
            Source::File(_) => {
                let mut crc = 0;
                let mut buf = vec![0u8; COMPACTION_READAHEAD_BYTES];
                let mut at = 0u64;
                while at < self.file_size {
                    let n = (self.file_size - at).min(buf.len() as u64) as usize;
                    let chunk = buf.get_mut(..n).unwrap_or_default();
                    read_exact_at(&self.source, &self.path, chunk, at)?;
                    crc = codec::crc32c_extend(crc, chunk);
                    at += n as u64;
                }
                Ok(crc)
            }
        }
    }

    fn handle(&self, i: usize) -> Result<BlockHandle> {
        self.index
            .handle(i)
            .ok_or_else(|| Error::corruption(&self.path, 0, format!("no data block {i}")))
    }

    /// An iterator over block `i`, read through the cache, or through `ra` when given.
    fn block_iter(&self, i: usize, ra: Option<&mut Readahead>) -> Result<BlockIter> {
        let block = match ra {
            Some(ra) => self.load_sequential(i, ra, self.verify_checksums)?,
            None => match &self.source {
                Source::File(_) => self.load_positioned(i)?,
                Source::Mapped(map) => self.load_mapped(map, i)?,
            },
        };
        Ok(block.iter())
    }

    /// Reads block `i` from the cache, or with one positioned read of the block and its
    /// trailer, checked (when `verify_checksums`) and then cached if the cache admits it:
    /// decompressed, or as stored when the cache holds blocks compressed until they are
    /// reused.
    fn load_positioned(&self, i: usize) -> Result<Block> {
        let h = self.handle(i)?;
        let cache = self.cache.as_ref();
        let corrupt = |e: DecodeError| e.into_error(&self.path);
        // A cached block was checked when it was read.
        let stored_bytes = usize::try_from(h.size).unwrap_or(usize::MAX);
        let admit = match cache.map(|c| c.lookup(self.file_number, h.offset, stored_bytes)) {
            Some(Lookup::Hit(CachedBlock::Decoded(b))) => {
                return Block::new(BlockData::Owned(b), h.offset).map_err(corrupt)
            }
            Some(Lookup::Hit(CachedBlock::Compressed { payload, promote })) => {
                let stored = payload.as_slice();
                let raw_len = block::lz4_uncompressed_len(stored);
                let promote_to = cache.filter(|c| promote && c.would_cache(raw_len));
                let b = decompress_and_cache(promote_to, self.file_number, h.offset, stored)
                    .map_err(corrupt)?;
                return Block::new(BlockData::Owned(b), h.offset).map_err(corrupt);
            }
            Some(Lookup::Miss { admit }) => admit,
            None => false,
        };
        // A block the cache declines is read as if there were no cache.
        let cache = cache.filter(|_| admit);
        let n = usize::try_from(h.size)
            .ok()
            .and_then(|s| s.checked_add(BLOCK_TRAILER_LEN))
            .ok_or_else(|| Error::corruption(&self.path, h.offset, "block size overflows"))?;
        let compressed_form = cache.filter(|c| c.form() == BlockCacheForm::CompressedUntilReused);
        // The stored block is read into a buffer of the thread's, kept between reads: a
        // read that misses the cache would otherwise allocate and zero one each time.
        let data = READ_BUF.with(|cell| -> Result<OwnedBlock> {
            let mut owned = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let buf = match guard.as_deref_mut() {
                Ok(b) => b,
                // Not expected (no read calls back into another), but never panic for it.
                Err(_) => &mut owned,
            };
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let r = read_exact_at(&self.source, &self.path, &mut buf[..n], h.offset)
                .and_then(|()| self.decode_read(&buf[..n], h, cache, compressed_form));
            if buf.capacity() > READ_BUF_KEEP_BYTES {
                *buf = Vec::new();
            }
            r
        })?;
        Block::new(BlockData::Owned(data), h.offset).map_err(corrupt)
    }

    /// Checks and decodes block `h` read into `buf` and caches it in `cache` (none: the
    /// block is decoded into the thread's scratch buffer and not cached): as stored when
    /// `compressed_form` is given and the block is compressed (the decompressed block is
    /// then the caller's alone), else decompressed or copied.
    fn decode_read(
        &self,
        buf: &[u8],
        h: BlockHandle,
        cache: Option<&Arc<BlockCache>>,
        compressed_form: Option<&Arc<BlockCache>>,
    ) -> Result<OwnedBlock> {
        let corrupt = |e: DecodeError| e.into_error(&self.path);
        let s = block::check_block_in(buf, h.offset, h, self.verify_checksums).map_err(corrupt)?;
        let stored = buf.get(s.start..s.end).unwrap_or_default();
        if let (Some(c), BLOCK_TYPE_LZ4) = (compressed_form, s.block_type) {
            // Cached only once it is known to decompress.
            let data = decompress_uncached(stored, h.offset).map_err(corrupt)?;
            let payload = OwnedBlock::copy_of(stored, take_spare_block(stored.len()));
            keep_spare_blocks(c.insert_compressed(self.file_number, h.offset, payload));
            return Ok(data);
        }
        if s.block_type == BLOCK_TYPE_LZ4 {
            return decompress_and_cache(cache, self.file_number, h.offset, stored)
                .map_err(corrupt);
        }
        let Some(c) = cache else {
            return decode_uncached(|scratch| Ok(OwnedBlock::copy_of(stored, scratch)))
                .map_err(corrupt);
        };
        let data = OwnedBlock::copy_of(stored, take_spare_block(stored.len()));
        cache_block(c, self.file_number, h.offset, data.clone());
        Ok(data)
    }

    /// Reads block `i` through `ra`, refilling it from the block's offset when the block
    /// is not all in it; the block is checked when `verify_crc` and never cached.
    fn load_sequential(&self, i: usize, ra: &mut Readahead, verify_crc: bool) -> Result<Block> {
        let h = self.handle(i)?;
        let end = h
            .end_with_trailer()
            .ok_or_else(|| Error::corruption(&self.path, h.offset, "block size overflows"))?;
        let in_buf = h.offset >= ra.start && end <= ra.start + ra.buf.len() as u64;
        if !in_buf {
            let want = (self.index.data_end().saturating_sub(h.offset))
                .min(COMPACTION_READAHEAD_BYTES as u64)
                .max(end - h.offset);
            let want = usize::try_from(want).map_err(|_| {
                Error::corruption(&self.path, h.offset, "block does not fit in memory")
            })?;
            ra.buf.resize_for_overwrite(want);
            ra.start = h.offset;
            if let Err(e) = read_exact_at(&self.source, &self.path, &mut ra.buf, h.offset) {
                ra.buf.clear();
                return Err(e);
            }
        }
        let data = block::decode_block_in(&ra.buf, ra.start, h, verify_crc, None)
            .map_err(|e| e.into_error(&self.path))?;
        Block::new(BlockData::Owned(data), h.offset).map_err(|e| e.into_error(&self.path))
    }

    /// Reads block `i` of a mapped table: in place when raw, else from the cache or
    /// decompressed (and then cached). Its crc is checked on its first read only.
    fn load_mapped(&self, map: &Arc<Mmap>, i: usize) -> Result<Block> {
        let h = self.handle(i)?;
        let cache = self.cache.as_ref();
        let type_at = usize::try_from(h.offset + h.size).unwrap_or(usize::MAX);
        let mut admit = false;
        if map.get(type_at) == Some(&BLOCK_TYPE_LZ4) {
            // A cached block was checked when it was inserted. A mapped table caches only
            // decompressed blocks.
            let stored_bytes = usize::try_from(h.size).unwrap_or(usize::MAX);
            match cache.map(|c| c.lookup(self.file_number, h.offset, stored_bytes)) {
                Some(Lookup::Hit(CachedBlock::Decoded(b))) => {
                    return Block::new(BlockData::Owned(b), h.offset)
                        .map_err(|e| e.into_error(&self.path));
                }
                Some(Lookup::Miss { admit: a }) => admit = a,
                // A block held as stored is never cached by a mapped table (the mapping is
                // that form): decoded from the mapping, not cached again.
                Some(Lookup::Hit(CachedBlock::Compressed { .. })) | None => {}
            }
        }
        let cache = cache.filter(|_| admit);
        let flag = self.verified.get(i);
        let check = self.verify_checksums && !flag.is_some_and(|f| f.load(AtomicOrdering::Relaxed));
        let stored = block::check_block(map, h, check).map_err(|e| e.into_error(&self.path))?;
        if check {
            if let Some(f) = flag {
                f.store(true, AtomicOrdering::Relaxed);
            }
        }
        let data = if stored.block_type == BLOCK_TYPE_LZ4 {
            let bytes = map.get(stored.start..stored.end).unwrap_or_default();
            let b = decompress_and_cache(cache, self.file_number, h.offset, bytes)
                .map_err(|e| e.into_error(&self.path))?;
            BlockData::Owned(b)
        } else {
            BlockData::Mapped {
                map: Arc::clone(map),
                start: stored.start,
                end: stored.end,
            }
        };
        Block::new(data, h.offset).map_err(|e| e.into_error(&self.path))
    }
}

/// Checks that the footer's handles tile the end of the file (data blocks | filter? |
/// properties | index | footer, no gaps) and returns where the data blocks end.
fn check_layout(footer: &Footer, footer_at: u64) -> Result<u64, DecodeError> {
    let at = |offset: u64, reason: String| DecodeError { offset, reason };
    let props_end = footer
        .properties
        .end_with_trailer()
        .ok_or_else(|| at(footer_at, "properties handle overflows".into()))?;
    let index_end = footer
        .index
        .end_with_trailer()
        .ok_or_else(|| at(footer_at, "index handle overflows".into()))?;
    if index_end != footer_at || props_end != footer.index.offset {
        return Err(at(
            footer_at,
            format!(
                "footer handles do not tile the file: properties {:?}, index {:?}, footer at {footer_at}",
                footer.properties, footer.index
            ),
        ));
    }
    if footer.has_filter() {
        let filter_end = footer
            .filter
            .end_with_trailer()
            .ok_or_else(|| at(footer_at, "filter handle overflows".into()))?;
        if filter_end != footer.properties.offset {
            return Err(at(
                footer_at,
                format!(
                    "filter block {:?} does not end where the properties begin ({})",
                    footer.filter, footer.properties.offset
                ),
            ));
        }
        Ok(footer.filter.offset)
    } else {
        Ok(footer.properties.offset)
    }
}

type Validated = (TableProperties, PackedIndex, Option<TableFilter>);

/// Checks the metadata region `meta[..len]` (the file's bytes from `data_end` up to the
/// footer): filter, properties, index, and their agreement with each other and the footer.
#[deny(clippy::indexing_slicing)]
fn validate_meta(
    meta: &Arc<Mmap>,
    len: usize,
    data_end: u64,
    footer: &Footer,
) -> Result<Validated, DecodeError> {
    let at = |offset: u64, reason: String| DecodeError { offset, reason };
    let region = meta.get(..len).unwrap_or_default();
    // Metadata blocks: the crc is always checked here, whatever verify_checksums says.
    let locate = |h: BlockHandle, what: &str| -> Result<std::ops::Range<usize>, DecodeError> {
        let s = block::check_block_in(region, data_end, h, true).map_err(|e| DecodeError {
            offset: e.offset,
            reason: format!("{what} block: {}", e.reason),
        })?;
        if s.block_type != block::BLOCK_TYPE_RAW {
            return Err(at(h.offset, format!("{what} block must be stored raw")));
        }
        Ok(s.start..s.end)
    };
    let read_meta = |h: BlockHandle, what: &str| -> Result<&[u8], DecodeError> {
        Ok(region.get(locate(h, what)?).unwrap_or_default())
    };

    let layout = FilterLayout::of_version(footer.format_version).ok_or_else(|| {
        at(
            footer.filter.offset,
            format!(
                "no filter layout for format version {}",
                footer.format_version
            ),
        )
    })?;
    let filter = if footer.has_filter() {
        let bytes = read_meta(footer.filter, "filter")?;
        Some(TableFilter::parse(bytes, layout).map_err(|r| at(footer.filter.offset, r))?)
    } else {
        None
    };

    let props = TableProperties::decode(
        read_meta(footer.properties, "properties")?,
        footer.properties.offset,
    )?;
    let range = locate(footer.index, "index")?;
    let index_block = BlockData::Mapped {
        map: Arc::clone(meta),
        start: range.start,
        end: range.end,
    };
    let index = decode_index(index_block, footer.index.offset, data_end)?;
    check_properties(&props, footer, &index, data_end)?;
    Ok((props, index, filter))
}

/// Decodes the index block into a [`PackedIndex`], checking that the blocks tile
/// `[0, data_end)` in order and that the index keys strictly increase.
#[deny(clippy::indexing_slicing)]
fn decode_index(
    data: BlockData,
    index_offset: u64,
    data_end: u64,
) -> Result<PackedIndex, DecodeError> {
    let at = |reason: String| DecodeError {
        offset: index_offset,
        reason: format!("index block: {reason}"),
    };
    let mut it = Block::new(data, index_offset)?.iter();
    it.seek_to_first();
    let mut offsets: AnonVec<u64> = AnonVec::new();
    let mut key_ends: AnonVec<u32> = AnonVec::new();
    let mut keys = ByteBuf::new();
    let mut prev_key: Option<std::ops::Range<usize>> = None;
    let mut expected_offset = 0u64;
    while it.valid() {
        let n = key_ends.len();
        let mut d = Decoder::new(it.value(), index_offset);
        let h = BlockHandle::decode_varint(&mut d)?;
        if !d.is_empty() {
            return Err(at(format!("entry {n} has trailing bytes")));
        }
        if h.offset != expected_offset {
            return Err(at(format!(
                "data block {n} starts at {}, expected {expected_offset}",
                h.offset
            )));
        }
        let end = h
            .end_with_trailer()
            .filter(|&e| e <= data_end)
            .ok_or_else(|| {
                at(format!(
                    "data block {n} ({h:?}) runs past the data region end {data_end}"
                ))
            })?;
        if let Some(p) = &prev_key {
            let prev = keys.get(p.clone()).unwrap_or_default();
            if compare_internal_keys(prev, it.key()) != Ordering::Less {
                return Err(at(format!(
                    "keys of entries {} and {n} are out of order",
                    n - 1
                )));
            }
        }
        let start = keys.len();
        keys.extend_from_slice(it.key());
        let key_end =
            u32::try_from(keys.len()).map_err(|_| at("index keys exceed 4 GiB".into()))?;
        prev_key = Some(start..keys.len());
        offsets.push(h.offset);
        key_ends.push(key_end);
        expected_offset = end;
        it.next();
    }
    if let Some(e) = it.error() {
        return Err(e.clone());
    }
    if key_ends.is_empty() {
        return Err(at("no data blocks".into()));
    }
    if expected_offset != data_end {
        return Err(at(format!(
            "data blocks end at {expected_offset}, the data region at {data_end}"
        )));
    }
    offsets.push(data_end);
    let mut index = PackedIndex {
        offsets,
        key_ends,
        keys,
        common_len: 0,
        prefixes: AnonVec::new(),
        fences: Box::default(),
    };
    // The keys are in order, so the prefix the first and last share is everyone's.
    let first = user_key(index.key(0));
    let last = user_key(index.key(index.len() - 1));
    index.common_len = first.iter().zip(last).take_while(|(a, b)| a == b).count();
    index.prefixes = (0..index.len())
        .map(|i| {
            key_prefix(
                user_key(index.key(i))
                    .get(index.common_len..)
                    .unwrap_or_default(),
            )
        })
        .collect();
    index.fences = index
        .prefixes
        .iter()
        .step_by(FENCE_STRIDE)
        .copied()
        .collect();
    Ok(index)
}

/// Cross-checks the properties against the footer and the index.
fn check_properties(
    p: &TableProperties,
    footer: &Footer,
    index: &PackedIndex,
    data_end: u64,
) -> Result<(), DecodeError> {
    let trailer = BLOCK_TRAILER_LEN as u64;
    let filter_bytes = if footer.has_filter() {
        footer.filter.size + trailer
    } else {
        0
    };
    let problem = if p.format_version != footer.format_version {
        Some(format!(
            "format version {} in the properties, {} in the footer",
            p.format_version, footer.format_version
        ))
    } else if p.num_data_blocks != index.len() as u64 {
        Some(format!(
            "{} data blocks declared, the index has {}",
            p.num_data_blocks,
            index.len()
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
    } else if index.len() > 0
        && compare_internal_keys(&p.largest_key, index.key(index.len() - 1)) == Ordering::Greater
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
    /// A compaction's readahead buffer ([`Table::sequential_iter`]).
    readahead: Option<Readahead>,
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
        if i >= self.table.index.len() {
            self.block = None;
            return false;
        }
        match self.table.block_iter(i, self.readahead.as_mut()) {
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
        let i = self.table.index.find(target);
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
    use crate::lsm::sst::cache::PROMOTE_AFTER_HITS;
    use crate::lsm::types::make_internal_key;
    use proptest::prelude::*;
    use std::ops::Range;

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

    /// Index and filter blocks, index keys and offsets larger than the heap side of an
    /// `AnonVec`, so that building, opening and reading go through mapped buffers (and a
    /// sequential read through a mapped readahead).
    #[test]
    fn a_table_whose_index_and_filter_are_mapped_reads_every_key() {
        let entries: Entries = (0..80_000u32)
            .map(|i| {
                let k = format!("key{i:08}");
                (
                    ik(k.as_bytes(), 1, ValueKind::Put),
                    i.to_le_bytes().to_vec(),
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000007.sst");
        let built = write_table(&path, &entries, opts(64, Compression::Lz4, 10));
        assert!(built.filter_bytes > crate::lsm::anon::MAP_ABOVE as u64);
        assert!(built.index_bytes > crate::lsm::anon::MAP_ABOVE as u64);
        let t = open(&path).unwrap();
        assert!(t.index.keys.is_mapped() && t.index.offsets.is_mapped());
        assert!(t.filter.as_ref().is_some_and(|f| f.is_mapped()));
        for (i, (k, v)) in entries.iter().enumerate().step_by(7) {
            let user = user_key(k);
            assert!(t.may_contain(user), "key {i}");
            assert_eq!(
                t.get(user, SeqNo(5)).unwrap(),
                LookupResult::Found(v.clone())
            );
        }
        assert_eq!(
            t.get(b"key99999999", SeqNo(5)).unwrap(),
            LookupResult::NotFound
        );
        let mut it = t.sequential_iter();
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            assert_eq!(it.key(), &entries[n].0[..]);
            n += 1;
            it.next();
        }
        it.status().unwrap();
        assert_eq!(n, entries.len());
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
                assert_eq!(t.num_data_blocks() as u64, built.num_data_blocks);
                assert_eq!(built.smallest_key, entries[0].0);
                assert_eq!(built.largest_key, entries[entries.len() - 1].0);
                let any_compressed = t.data_blocks().unwrap().iter().any(|b| b.compressed);
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
        let entries = sample_entries(2000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write_table(&path, &entries, opts(1024, Compression::Lz4, 10));
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
        // Every form of the cache, large and small enough to evict; each pass reads every
        // block again: held compressed, promoted, decompressed.
        let mut bytes_after_first_pass = Vec::new();
        for form in [
            BlockCacheForm::CompressedUntilReused,
            BlockCacheForm::Decompressed,
        ] {
            for capacity in [1 << 20, 16 * 3000] {
                let cache = BlockCache::with_form(capacity, form);
                let t = Table::open(&StdFs, &path, FileNumber(1), Some(Arc::clone(&cache)), true)
                    .unwrap();
                // A scan reads every block once.
                assert_eq!(collect(&t).unwrap(), entries);
                if capacity == 1 << 20 {
                    bytes_after_first_pass.push(cache.stats().bytes_used);
                }
                for pass in 0..=PROMOTE_AFTER_HITS + 1 {
                    for (k, _) in entries.iter().step_by(5) {
                        let p = parse_internal_key(k).unwrap();
                        for seq in [p.seq.0 - 1, p.seq.0, p.seq.0 + 1, u64::MAX >> 8] {
                            let got = t.get(p.user_key, SeqNo(seq)).unwrap();
                            assert_eq!(
                                got,
                                model(p.user_key, SeqNo(seq)),
                                "{form:?} {capacity} pass {pass}: {k:?} @ {seq}"
                            );
                        }
                    }
                    let stats = cache.stats();
                    assert!(stats.bytes_reserved < capacity as u64, "{stats:?}");
                    assert!(stats.bytes_used + stats.bytes_reserved <= capacity as u64);
                }
                let stats = cache.stats();
                assert!(stats.hits > 0 && stats.inserts > 0, "{stats:?}");
                if capacity == 16 * 3000 {
                    assert!(stats.evictions > 0, "{stats:?}");
                }
            }
        }
        // The blocks read once (by the scan) take less room held as stored.
        assert!(
            bytes_after_first_pass[0] < bytes_after_first_pass[1],
            "{bytes_after_first_pass:?}"
        );
    }

    #[test]
    fn get_finds_keys_in_a_long_run_of_blocks_with_equal_prefixes() {
        // No shared prefix (the first and last keys differ in their first byte), and 200
        // one-entry blocks whose first 8 bytes are equal: lookups go past the fences'
        // stride through the run.
        let mut keys: Vec<Vec<u8>> = (0..200u32)
            .map(|i| [b"a0000000".as_slice(), &i.to_be_bytes()].concat())
            .collect();
        keys.insert(0, b"0".to_vec());
        keys.push(b"b".to_vec());
        let entries: Entries = keys
            .iter()
            .map(|k| (ik(k, 1, ValueKind::Put), k.clone()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write_table(&path, &entries, opts(1, Compression::None, 0));
        let t = open(&path).unwrap();
        assert_eq!(t.num_data_blocks(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            let target = LookupKey::new(k, SeqNo::MAX);
            assert_eq!(t.index.find(target.internal_key()), i, "{k:?}");
            assert_eq!(
                t.get(k, SeqNo::MAX).unwrap(),
                LookupResult::Found(k.clone())
            );
            let mut after = k.clone();
            after.push(0);
            assert_eq!(t.get(&after, SeqNo::MAX).unwrap(), LookupResult::NotFound);
        }
        assert_eq!(
            t.get(b"a0000000", SeqNo::MAX).unwrap(),
            LookupResult::NotFound
        );
        assert_eq!(t.get(b"c", SeqNo::MAX).unwrap(), LookupResult::NotFound);
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

    /// Tables of format version 1 (filter probes spread over the whole filter) are still
    /// read: every entry, every lookup, and a filter with no false negatives. A reader
    /// taking this version 1 filter (3,750 bytes) for version 2 would refuse to open it
    /// (not whole 64-byte lines); one taking a version 2 filter for version 1 would miss
    /// keys.
    #[test]
    fn version_1_tables_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let entries = sample_entries(3000);
        for (version, name) in [(1, "1.sst"), (2, "2.sst")] {
            let path = dir.path().join(name);
            let mut b = TableBuilder::new(
                StdFs.create(&path).unwrap(),
                opts(512, Compression::Lz4, 10),
            )
            .with_format_version(version);
            for (k, v) in &entries {
                b.add(k, v).unwrap();
            }
            let p = b.finish().unwrap();
            assert_eq!(p.format_version, version);
            let bytes = std::fs::read(&path).unwrap();
            let at = bytes.len() - FOOTER_LEN;
            assert_eq!(
                Footer::decode(&bytes[at..], at as u64)
                    .unwrap()
                    .format_version,
                version
            );
            let t = open(&path).unwrap();
            assert_eq!(t.properties().format_version, version);
            assert_eq!(collect(&t).unwrap(), entries);
            for (k, _) in &entries {
                let ukey = user_key(k);
                assert!(
                    t.may_contain(ukey),
                    "version {version}: {}",
                    ukey.escape_ascii()
                );
                assert!(t.get_entry(ukey, SeqNo::MAX).unwrap().is_some());
            }
            let fp = (0..10_000u32)
                .filter(|i| t.may_contain(format!("absent{i}").as_bytes()))
                .count();
            assert!(fp < 250, "version {version}: {fp} false positives in 10000");
            t.verify().unwrap();
        }
    }

    /// The version 1 worked example that `format-spec/sst.md` showed until version 2,
    /// byte for byte: still opened, verified and read.
    #[test]
    fn the_version_1_worked_example_is_still_read() {
        const HEX: &str = "\
            000d036170706c6501020000000000007265640508000001000000000000000000000100\
            0000009e6ed20c000e0463686572727901030000000000006461726b0000000001000000\
            001970432010402080000201040700f806d37a0100000003000000000000000100000000\
            0000000200000000000000280000000000000007000000000000004d0000000000000032\
            000000000000000e0000000000000001000000000000000300000000000000453af211a2\
            010000000a0000000d6170706c6501020000000000000e63686572727901030000000000\
            00002bfbef5b0009026201ffffffffffffff0026000e0263686572727901030000000000\
            002b1d000000000e0000000200000000d5fb8b774d000000000000000900000000000000\
            5b000000000000007e00000000000000de000000000000002d0000000000000001000000\
            746964656d535354889c7a18";
        let hex: String = HEX.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(bytes.len(), 336);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.sst");
        std::fs::write(&path, &bytes).unwrap();
        let t = open(&path).unwrap();
        assert_eq!(t.properties().format_version, 1);
        assert_eq!(t.verify().unwrap(), crc32c::crc32c(&bytes));
        assert!(t.may_contain(b"apple") && t.may_contain(b"cherry"));
        assert_eq!(
            t.get(b"apple", SeqNo(2)).unwrap(),
            LookupResult::Found(b"red".to_vec())
        );
        assert_eq!(t.get(b"apple", SeqNo(1)).unwrap(), LookupResult::Deleted);
        assert_eq!(
            t.get(b"cherry", SeqNo(3)).unwrap(),
            LookupResult::Found(b"dark".to_vec())
        );
        assert_eq!(t.get(b"banana", SeqNo(3)).unwrap(), LookupResult::NotFound);
    }

    /// A footer and properties that disagree on the format version, or a version this
    /// build does not read, fail open naming the file.
    #[test]
    fn a_table_with_an_unknown_or_mismatched_version_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        // 256 keys at 10 bits: a version 1 filter of 320 bytes, whole 64-byte lines, so
        // that only the properties tell the two versions apart.
        let entries: Entries = (0..256u32)
            .map(|i| {
                (
                    ik(format!("k{i:04}").as_bytes(), 1, ValueKind::Put),
                    vec![1],
                )
            })
            .collect();
        let mut b = TableBuilder::new(
            StdFs.create(&path).unwrap(),
            opts(4096, Compression::None, 10),
        )
        .with_format_version(1);
        for (k, v) in &entries {
            b.add(k, v).unwrap();
        }
        b.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        let at = good.len() - FOOTER_LEN;
        let footer = Footer::decode(&good[at..], at as u64).unwrap();
        assert_eq!(footer.filter.size, 320 + 1);
        for (version, want) in [
            (2, "format version 1 in the properties, 2 in the footer"),
            (3, "unsupported table format version 3"),
            (0, "unsupported table format version 0"),
        ] {
            let mut bad = good.clone();
            let f = Footer {
                format_version: version,
                ..footer
            };
            bad[at..].copy_from_slice(&f.encode());
            std::fs::write(&path, &bad).unwrap();
            let e = open(&path).unwrap_err();
            assert_corruption_names(&e, &path);
            assert!(e.to_string().contains(want), "{e}");
        }
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
            let first = open(&r.path).unwrap().data_blocks().unwrap()[0].clone();
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
        println!("{:#?}", t.data_blocks().unwrap());
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

        /// Keys of 0-12 bytes from a four-letter alphabet with zeros in it: many share
        /// their first 8 bytes (or are prefixes of one another), so lookups go through
        /// the prefix array's ties and zero padding; every key and probe agrees with a
        /// model.
        #[test]
        fn get_with_shared_and_short_prefixes_agrees_with_a_model(
            keys in proptest::collection::btree_set(
                proptest::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 0xff]), 0..12),
                1..300,
            ),
            probes in proptest::collection::vec(
                proptest::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 0xff]), 0..12),
                0..100,
            ),
            common in proptest::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 0xff]), 0..10),
            block_size in prop::sample::select(vec![1usize, 48, 4096]),
        ) {
            // Every key starts with `common`; probes with and without it fall inside and
            // outside the keys' shared prefix.
            let with_common = |k: &Vec<u8>| [common.as_slice(), k].concat();
            let keys: std::collections::BTreeSet<Vec<u8>> = keys.iter().map(with_common).collect();
            let probes: Vec<Vec<u8>> =
                probes.iter().flat_map(|p| [p.clone(), with_common(p)]).collect();
            let entries: Entries = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (ik(k, 5 + i as u64, ValueKind::Put), k.clone()))
                .collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("1.sst");
            write_table(&path, &entries, opts(block_size, Compression::Lz4, 0));
            let t = open(&path).unwrap();
            for k in keys.iter().chain(probes.iter()) {
                let want = if keys.contains(k) {
                    LookupResult::Found(k.clone())
                } else {
                    LookupResult::NotFound
                };
                prop_assert_eq!(t.get(k, SeqNo::MAX).unwrap(), want, "{:?}", k);
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
