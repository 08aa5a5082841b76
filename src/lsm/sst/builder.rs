//! Writes a table: data blocks as entries arrive, then the filter, properties and index
//! blocks and the footer (layout in `format-spec/sst.md`).
//!
//! The builder checksums every byte it appends, so the whole-file crc32c that a checkpoint
//! records costs no second read of the file.

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::block::{self, BlockBuilder, BLOCK_TRAILER_LEN, BLOCK_TYPE_LZ4, BLOCK_TYPE_RAW};
use super::bloom::BloomBuilder;
use super::footer::{BlockHandle, Footer, FORMAT_VERSION};
use super::table::TableProperties;
use crate::codec;
use crate::error::{Error, Result};
use crate::fs::WritableFile;
use crate::lsm::types::{
    compare_internal_keys, make_internal_key, parse_internal_key, user_key, SeqNo, ValueKind,
};
use crate::lsm::{Compression, Options};

/// How a table is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// A data block is cut once its uncompressed size reaches this many bytes (values
    /// below 1 are treated as 1, i.e. one entry per block).
    pub block_size_bytes: usize,
    /// Entries between restart points in a data block (values below 1 are treated as 1).
    pub restart_interval: usize,
    /// Data block compression.
    pub compression: Compression,
    /// Bloom filter bits per user key; 0 writes no filter.
    pub bloom_bits_per_key: u32,
}

impl TableOptions {
    /// The table layout a store's options ask for.
    pub fn from_options(o: &Options) -> Self {
        TableOptions {
            block_size_bytes: o.block_size_bytes,
            restart_interval: o.block_restart_interval,
            compression: o.compression,
            bloom_bits_per_key: o.bloom_bits_per_key,
        }
    }
}

impl Default for TableOptions {
    /// The layout of [`Options::default`].
    fn default() -> Self {
        TableOptions::from_options(&Options::default())
    }
}

/// Appends to the file, tracking the offset and the running crc32c of every byte.
#[derive(Debug)]
struct Sink {
    file: Box<dyn WritableFile>,
    offset: u64,
    crc: u32,
}

impl Sink {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file.append(data)?;
        self.crc = codec::crc32c_extend(self.crc, data);
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Writes `stored` and its trailer; returns the block's handle.
    fn write_block(&mut self, stored: &[u8], block_type: u8) -> Result<BlockHandle> {
        let handle = BlockHandle {
            offset: self.offset,
            size: stored.len() as u64,
        };
        self.append(stored)?;
        self.append(&block::encode_trailer(stored, block_type))?;
        Ok(handle)
    }
}

/// Builds one table from internal keys added in strictly increasing order.
///
/// After any error the builder refuses further calls: the partial file must be deleted
/// by the caller.
#[derive(Debug)]
pub struct TableBuilder {
    sink: Sink,
    opts: TableOptions,
    data_block: BlockBuilder,
    index_block: BlockBuilder,
    bloom: Option<BloomBuilder>,
    /// Handle of the last written data block, whose index entry waits for the next key so
    /// that its separator can be shortened.
    pending_index: Option<BlockHandle>,
    last_key: Vec<u8>,
    smallest_key: Vec<u8>,
    num_entries: u64,
    num_deletions: u64,
    num_data_blocks: u64,
    raw_key_bytes: u64,
    raw_value_bytes: u64,
    smallest_seq: SeqNo,
    largest_seq: SeqNo,
    failed: bool,
}

impl TableBuilder {
    /// A builder writing to `file`, which must be empty.
    pub fn new(file: Box<dyn WritableFile>, opts: TableOptions) -> Self {
        let offset = file.len();
        let bloom =
            (opts.bloom_bits_per_key > 0).then(|| BloomBuilder::new(opts.bloom_bits_per_key));
        TableBuilder {
            sink: Sink {
                file,
                offset,
                crc: 0,
            },
            data_block: BlockBuilder::new(opts.restart_interval),
            // Restart at every entry: the index is decoded whole at open, and full keys
            // keep its entries independent.
            index_block: BlockBuilder::new(1),
            opts,
            bloom,
            pending_index: None,
            last_key: Vec::new(),
            smallest_key: Vec::new(),
            num_entries: 0,
            num_deletions: 0,
            num_data_blocks: 0,
            raw_key_bytes: 0,
            raw_value_bytes: 0,
            smallest_seq: SeqNo::MAX,
            largest_seq: SeqNo(0),
            failed: false,
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::InvalidArgument(format!(
                "table builder for {} already failed",
                self.sink.file.path().display()
            )));
        }
        Ok(())
    }

    /// Adds an entry.
    ///
    /// REQUIRES: `ikey` is a valid internal key strictly greater (by
    /// [`compare_internal_keys`]) than the previous one; returns
    /// [`Error::InvalidArgument`] otherwise, and the builder stays usable.
    pub fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        let parsed = parse_internal_key(ikey).ok_or_else(|| {
            Error::InvalidArgument(format!("not an internal key: {:?}", Bytes(ikey)))
        })?;
        if self.num_entries > 0 && compare_internal_keys(ikey, &self.last_key) != Ordering::Greater
        {
            return Err(Error::InvalidArgument(format!(
                "table keys out of order: {:?} after {:?}",
                Bytes(ikey),
                Bytes(&self.last_key)
            )));
        }
        if ikey.len().saturating_add(value.len()) > block::MAX_ENTRY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "entry of {} key and {} value bytes exceeds the limit of {} bytes",
                ikey.len(),
                value.len(),
                block::MAX_ENTRY_BYTES
            )));
        }
        let r = self.add_checked(ikey, parsed.user_key, parsed.seq, parsed.kind, value);
        self.failed = r.is_err();
        r
    }

    fn add_checked(
        &mut self,
        ikey: &[u8],
        ukey: &[u8],
        seq: SeqNo,
        kind: ValueKind,
        value: &[u8],
    ) -> Result<()> {
        if let Some(handle) = self.pending_index.take() {
            let sep = shortest_separator(&self.last_key, ikey);
            let mut v = Vec::with_capacity(BlockHandle::MAX_VARINT_LEN);
            handle.encode_varint_to(&mut v);
            self.index_block.add(&sep, &v);
        }
        if let Some(bloom) = &mut self.bloom {
            if self.num_entries == 0 || user_key(&self.last_key) != ukey {
                bloom.add_key(ukey);
            }
        }
        if self.num_entries == 0 {
            self.smallest_key = ikey.to_vec();
        }
        self.data_block.add(ikey, value);
        self.last_key.clear();
        self.last_key.extend_from_slice(ikey);
        self.num_entries += 1;
        if kind == ValueKind::Delete {
            self.num_deletions += 1;
        }
        self.raw_key_bytes += ikey.len() as u64;
        self.raw_value_bytes += value.len() as u64;
        self.smallest_seq = self.smallest_seq.min(seq);
        self.largest_seq = self.largest_seq.max(seq);
        if self.data_block.estimated_size() >= self.opts.block_size_bytes {
            self.flush_data_block()?;
        }
        Ok(())
    }

    fn flush_data_block(&mut self) -> Result<()> {
        if self.data_block.is_empty() {
            return Ok(());
        }
        let raw = self.data_block.finish();
        let compressed = match self.opts.compression {
            Compression::Lz4 => block::compress_lz4(raw),
            Compression::None => None,
        };
        let handle = match &compressed {
            Some(c) => self.sink.write_block(c, BLOCK_TYPE_LZ4)?,
            None => self.sink.write_block(raw, BLOCK_TYPE_RAW)?,
        };
        self.data_block.reset();
        self.num_data_blocks += 1;
        self.pending_index = Some(handle);
        Ok(())
    }

    /// Entries added so far.
    pub fn num_entries(&self) -> u64 {
        self.num_entries
    }

    /// Bytes written so far plus the size of the block being built.
    pub fn estimated_file_size(&self) -> u64 {
        self.sink.offset + self.data_block.estimated_size() as u64
    }

    /// Writes the remaining data block, the filter, properties and index blocks and the
    /// footer, then fsyncs the file (the caller fsyncs the directory). Fails with
    /// [`Error::InvalidArgument`] if no entry was added.
    pub fn finish(mut self) -> Result<TableProperties> {
        self.check_usable()?;
        if self.num_entries == 0 {
            return Err(Error::InvalidArgument(format!(
                "table {} has no entries",
                self.sink.file.path().display()
            )));
        }
        self.flush_data_block()?;
        if let Some(handle) = self.pending_index.take() {
            let mut v = Vec::with_capacity(BlockHandle::MAX_VARINT_LEN);
            handle.encode_varint_to(&mut v);
            self.index_block.add(&self.last_key, &v);
        }
        let data_bytes = self.sink.offset;

        let filter = match &self.bloom {
            Some(b) => self.sink.write_block(&b.finish(), BLOCK_TYPE_RAW)?,
            None => BlockHandle::default(),
        };
        let filter_bytes = if self.bloom.is_some() {
            filter.size + BLOCK_TRAILER_LEN as u64
        } else {
            0
        };
        let index_contents = self.index_block.finish();
        let index_bytes = index_contents.len() as u64 + BLOCK_TRAILER_LEN as u64;

        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut props = TableProperties {
            format_version: FORMAT_VERSION,
            num_entries: self.num_entries,
            num_deletions: self.num_deletions,
            num_data_blocks: self.num_data_blocks,
            raw_key_bytes: self.raw_key_bytes,
            raw_value_bytes: self.raw_value_bytes,
            data_bytes,
            index_bytes,
            filter_bytes,
            smallest_key: std::mem::take(&mut self.smallest_key),
            largest_key: self.last_key.clone(),
            smallest_seq: self.smallest_seq,
            largest_seq: self.largest_seq,
            compression: self.opts.compression,
            bloom_bits_per_key: self.opts.bloom_bits_per_key,
            created_unix_ms,
            file_size: 0,
            file_crc32c: 0,
        };
        let properties = self.sink.write_block(&props.encode(), BLOCK_TYPE_RAW)?;
        let index = self.sink.write_block(index_contents, BLOCK_TYPE_RAW)?;
        let footer = Footer {
            filter,
            properties,
            index,
            format_version: FORMAT_VERSION,
        };
        self.sink.append(&footer.encode())?;
        self.sink.file.sync()?;
        props.file_size = self.sink.offset;
        props.file_crc32c = self.sink.crc;
        Ok(props)
    }
}

/// A key `sep` with `last <= sep < next` that is short when the user keys allow it:
/// the shortest prefix of `last`'s user key with its last byte incremented, tagged with
/// the largest sequence number so it sorts before every real entry of that user key.
/// Falls back to `last` itself.
pub(crate) fn shortest_separator(last: &[u8], next: &[u8]) -> Vec<u8> {
    let (a, b) = (user_key(last), user_key(next));
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if let (Some(&ca), Some(&cb)) = (a.get(common), b.get(common)) {
        if ca < 0xff && ca + 1 < cb {
            let mut short = a[..=common].to_vec();
            short[common] = ca + 1;
            let sep = make_internal_key(&short, SeqNo::MAX, ValueKind::Put);
            if compare_internal_keys(last, &sep) != Ordering::Greater
                && compare_internal_keys(&sep, next) == Ordering::Less
            {
                return sep;
            }
        }
    }
    last.to_vec()
}

/// Debug-prints a key as escaped bytes.
struct Bytes<'a>(&'a [u8]);

impl std::fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, StdFs};

    fn ik(k: &[u8], seq: u64, kind: ValueKind) -> Vec<u8> {
        make_internal_key(k, SeqNo(seq), kind)
    }

    #[test]
    fn separator_is_between_blocks_and_short() {
        let last = ik(b"abcdefgh", 5, ValueKind::Put);
        let next = ik(b"abzz", 9, ValueKind::Put);
        let sep = shortest_separator(&last, &next);
        assert_eq!(user_key(&sep), b"abd");
        assert_eq!(compare_internal_keys(&last, &sep), Ordering::Less);
        assert_eq!(compare_internal_keys(&sep, &next), Ordering::Less);
        // Same user key, or adjacent bytes: fall back to the last key.
        let same = ik(b"abcdefgh", 4, ValueKind::Put);
        assert_eq!(shortest_separator(&last, &same), last);
        let adjacent = ik(b"abd", 1, ValueKind::Put);
        assert_eq!(shortest_separator(&last, &adjacent), last);
        let prefix_next = ik(b"abcdefghi", 1, ValueKind::Put);
        assert_eq!(shortest_separator(&last, &prefix_next), last);
    }

    #[test]
    fn out_of_order_and_malformed_keys_are_invalid_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdFs.create(&dir.path().join("1.sst")).unwrap();
        let mut b = TableBuilder::new(f, TableOptions::default());
        b.add(&ik(b"b", 5, ValueKind::Put), b"v").unwrap();
        for bad in [
            ik(b"a", 9, ValueKind::Put),
            ik(b"b", 5, ValueKind::Put),
            ik(b"b", 6, ValueKind::Put),
            b"short".to_vec(),
        ] {
            assert!(matches!(b.add(&bad, b"v"), Err(Error::InvalidArgument(_))));
        }
        // Still usable after a rejected key.
        b.add(&ik(b"b", 4, ValueKind::Delete), b"").unwrap();
        let p = b.finish().unwrap();
        assert_eq!((p.num_entries, p.num_deletions), (2, 1));
    }

    #[test]
    fn empty_table_cannot_be_finished() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdFs.create(&dir.path().join("1.sst")).unwrap();
        let b = TableBuilder::new(f, TableOptions::default());
        assert!(matches!(b.finish(), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn estimated_size_grows_with_entries() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdFs.create(&dir.path().join("1.sst")).unwrap();
        let mut b = TableBuilder::new(f, TableOptions::default());
        let before = b.estimated_file_size();
        for i in 0..1000u32 {
            b.add(&ik(&i.to_be_bytes(), 1, ValueKind::Put), &[0u8; 100])
                .unwrap();
        }
        assert!(b.estimated_file_size() > before + 1000);
        assert_eq!(b.num_entries(), 1000);
        let p = b.finish().unwrap();
        assert!(p.num_data_blocks > 1);
    }
}
