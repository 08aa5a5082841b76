//! Writes a table: data blocks as entries arrive, then the filter, properties and index
//! blocks and the footer (layout in `format-spec/sst.md`).
//!
//! The builder checksums every byte it appends, so the whole-file crc32c that a checkpoint
//! records costs no second read of the file.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use super::block::{self, BlockBuilder, BLOCK_TRAILER_LEN, BLOCK_TYPE_LZ4, BLOCK_TYPE_RAW};
use super::bloom::{BloomBuilder, FilterLayout};
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
        self.write_with_trailer(stored, &block::encode_trailer(stored, block_type))
    }

    /// Writes `stored` followed by its already computed `trailer`.
    fn write_with_trailer(
        &mut self,
        stored: &[u8],
        trailer: &[u8; BLOCK_TRAILER_LEN],
    ) -> Result<BlockHandle> {
        let handle = BlockHandle {
            offset: self.offset,
            size: stored.len() as u64,
        };
        self.append(stored)?;
        self.append(trailer)?;
        Ok(handle)
    }
}

/// A data block on its way to the file: the raw contents going to the compression thread,
/// and the stored form (compressed or raw, with its trailer) coming back.
#[derive(Debug, Default)]
struct BlockJob {
    raw: Vec<u8>,
    compressed: Vec<u8>,
    /// True when `compressed` holds the stored form; false: `raw` is stored.
    use_compressed: bool,
    trailer: [u8; BLOCK_TRAILER_LEN],
}

impl BlockJob {
    /// With `compress`, compresses `raw` (kept when it pays); computes the stored form's
    /// trailer.
    fn prepare(&mut self, compress: bool) {
        self.use_compressed = compress && block::compress_lz4_into(&self.raw, &mut self.compressed);
        self.trailer = block::encode_trailer(self.stored(), self.block_type());
    }

    fn stored(&self) -> &[u8] {
        if self.use_compressed {
            &self.compressed
        } else {
            &self.raw
        }
    }

    fn block_type(&self) -> u8 {
        if self.use_compressed {
            BLOCK_TYPE_LZ4
        } else {
            BLOCK_TYPE_RAW
        }
    }
}

/// Data blocks sent to the compression thread together: one hand-off (and at most one
/// wake-up of the thread) per batch rather than per block.
const BATCH_BLOCKS: usize = 16;

/// Batches handed to the compression thread before the builder waits for one back.
const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// A thread that compresses data blocks in the order they arrive, so that building the
/// next blocks (walking the source, encoding entries, the bloom filter) overlaps
/// compressing the last ones.
#[derive(Debug)]
struct CompressionThread {
    /// Batches to compress (`None` once the builder shuts the thread down).
    to_worker: Option<SyncSender<Vec<BlockJob>>>,
    /// Compressed batches, in the order they were sent.
    from_worker: Receiver<Vec<BlockJob>>,
    worker: Option<JoinHandle<()>>,
    /// The batch being filled.
    batch: Vec<BlockJob>,
    /// Batches sent and not yet received.
    in_flight: usize,
    /// Raw bytes of the blocks in `batch` and in flight.
    pending_bytes: u64,
    /// Jobs whose buffers can be reused.
    spare: Vec<BlockJob>,
}

impl CompressionThread {
    fn spawn() -> std::io::Result<Self> {
        let (to_worker, batches) = mpsc::sync_channel::<Vec<BlockJob>>(MAX_BATCHES_IN_FLIGHT);
        let (done, from_worker) = mpsc::channel::<Vec<BlockJob>>();
        let worker = std::thread::Builder::new()
            .name("tidemark-lz4".into())
            .spawn(move || {
                for mut batch in batches {
                    for job in &mut batch {
                        job.prepare(true);
                    }
                    if done.send(batch).is_err() {
                        return;
                    }
                }
            })?;
        Ok(CompressionThread {
            to_worker: Some(to_worker),
            from_worker,
            worker: Some(worker),
            batch: Vec::with_capacity(BATCH_BLOCKS),
            in_flight: 0,
            pending_bytes: 0,
            spare: Vec::new(),
        })
    }

    /// Queues a copy of `raw`; sends the batch when it is full. Fails only if the worker
    /// is gone.
    fn push(&mut self, raw: &[u8]) -> std::result::Result<(), ()> {
        let mut job = self.spare.pop().unwrap_or_default();
        job.raw.clear();
        job.raw.extend_from_slice(raw);
        self.pending_bytes += raw.len() as u64;
        self.batch.push(job);
        if self.batch.len() >= BATCH_BLOCKS {
            self.send_batch()?;
        }
        Ok(())
    }

    /// Sends the batch being filled, if it holds a block.
    fn send_batch(&mut self) -> std::result::Result<(), ()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let tx = self.to_worker.as_ref().ok_or(())?;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BLOCKS));
        tx.send(batch).map_err(|_| ())?;
        self.in_flight += 1;
        Ok(())
    }

    /// The oldest batch in flight, compressed: waits for it when `block` is set.
    fn receive(&mut self, block: bool) -> Option<Vec<BlockJob>> {
        if self.in_flight == 0 {
            return None;
        }
        let batch = if block {
            self.from_worker.recv().ok()
        } else {
            self.from_worker.try_recv().ok()
        };
        if let Some(b) = &batch {
            self.in_flight -= 1;
            self.pending_bytes -= b.iter().map(|j| j.raw.len() as u64).sum::<u64>();
        }
        batch
    }
}

impl Drop for CompressionThread {
    fn drop(&mut self) {
        self.to_worker = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
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
    /// True when a data block was cut and its index separator waits for the next key (so
    /// that it can be shortened).
    awaiting_separator: bool,
    /// Index separators and block handles of data blocks in order, paired into index
    /// entries as both become known (a handle is known once the block is written, which
    /// with a compression thread may come after later blocks were cut).
    separators: VecDeque<Vec<u8>>,
    handles: VecDeque<BlockHandle>,
    /// Compresses data blocks in the background, when enabled.
    compressor: Option<CompressionThread>,
    /// The buffers of a block prepared inline (without a compression thread).
    inline_job: BlockJob,
    last_key: Vec<u8>,
    smallest_key: Vec<u8>,
    num_entries: u64,
    num_deletions: u64,
    num_data_blocks: u64,
    raw_key_bytes: u64,
    raw_value_bytes: u64,
    smallest_seq: SeqNo,
    largest_seq: SeqNo,
    /// The format version written ([`FORMAT_VERSION`]; tests also write older ones).
    format_version: u32,
    failed: bool,
}

impl TableBuilder {
    /// A builder writing to `file`, which must be empty.
    pub fn new(file: Box<dyn WritableFile>, opts: TableOptions) -> Self {
        let offset = file.len();
        let bloom = (opts.bloom_bits_per_key > 0)
            .then(|| BloomBuilder::new(opts.bloom_bits_per_key, FilterLayout::Blocked));
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
            awaiting_separator: false,
            separators: VecDeque::new(),
            handles: VecDeque::new(),
            compressor: None,
            inline_job: BlockJob::default(),
            last_key: Vec::new(),
            smallest_key: Vec::new(),
            num_entries: 0,
            num_deletions: 0,
            num_data_blocks: 0,
            raw_key_bytes: 0,
            raw_value_bytes: 0,
            smallest_seq: SeqNo::MAX,
            largest_seq: SeqNo(0),
            format_version: FORMAT_VERSION,
            failed: false,
        }
    }

    /// Writes format `version` instead of [`FORMAT_VERSION`] (1: the filter layout of
    /// version 1), so that tests can check that older tables are still read.
    #[cfg(test)]
    pub(crate) fn with_format_version(mut self, version: u32) -> Self {
        let layout = FilterLayout::of_version(version).expect("a readable version");
        self.format_version = version;
        self.bloom = (self.opts.bloom_bits_per_key > 0)
            .then(|| BloomBuilder::new(self.opts.bloom_bits_per_key, layout));
        self
    }

    /// Compresses data blocks on a second thread while this one builds the next: for a
    /// large table about half the wall time when compression is on (the work is the
    /// same). The file's bytes are identical either way. Without compression, or if the
    /// thread cannot be started, blocks are compressed inline.
    pub fn with_compression_thread(mut self) -> Self {
        if self.opts.compression == Compression::Lz4 && self.compressor.is_none() {
            match CompressionThread::spawn() {
                Ok(c) => self.compressor = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a compression thread; compressing inline")
                }
            }
        }
        self
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
        if self.awaiting_separator {
            self.awaiting_separator = false;
            self.separators
                .push_back(shortest_separator(&self.last_key, ikey));
            self.add_index_entries();
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
        if let Some(c) = &mut self.compressor {
            if c.push(raw).is_err() {
                return Err(self.compressor_stopped());
            }
            self.write_compressed_blocks(false)?;
        } else {
            // Inline: the same preparation, in a job whose buffers are reused.
            let mut job = std::mem::take(&mut self.inline_job);
            job.raw.clear();
            job.raw.extend_from_slice(raw);
            job.prepare(self.opts.compression == Compression::Lz4);
            let written = self.write_prepared(&job);
            self.inline_job = job;
            written?;
        }
        self.data_block.reset();
        self.num_data_blocks += 1;
        self.awaiting_separator = true;
        Ok(())
    }

    /// Writes the blocks the compression thread finished, in order; with `wait`, sends the
    /// partly filled batch and writes every block.
    fn write_compressed_blocks(&mut self, wait: bool) -> Result<()> {
        if wait {
            if let Some(c) = &mut self.compressor {
                if c.send_batch().is_err() {
                    return Err(self.compressor_stopped());
                }
            }
        }
        loop {
            let Some(c) = &mut self.compressor else {
                return Ok(());
            };
            // Keep at most MAX_BATCHES_IN_FLIGHT batches queued: wait for the oldest beyond.
            let must_wait = wait || c.in_flight >= MAX_BATCHES_IN_FLIGHT;
            let Some(batch) = c.receive(must_wait) else {
                if must_wait && c.in_flight > 0 {
                    return Err(self.compressor_stopped());
                }
                return Ok(());
            };
            for job in &batch {
                self.write_prepared(job)?;
            }
            if let Some(c) = &mut self.compressor {
                c.spare.extend(batch);
            }
        }
    }

    /// The error when the compression thread is gone (it cannot fail; only a panic ends
    /// it early).
    fn compressor_stopped(&self) -> Error {
        Error::InvalidArgument(format!(
            "the compression thread of {} stopped",
            self.sink.file.path().display()
        ))
    }

    /// Writes a compressed job's stored block and records its handle.
    fn write_prepared(&mut self, job: &BlockJob) -> Result<()> {
        let handle = self.sink.write_with_trailer(job.stored(), &job.trailer)?;
        self.handles.push_back(handle);
        self.add_index_entries();
        Ok(())
    }

    /// Adds the index entries whose separator and block handle are both known.
    fn add_index_entries(&mut self) {
        while let (Some(sep), Some(handle)) = (self.separators.front(), self.handles.front()) {
            let mut v = Vec::with_capacity(BlockHandle::MAX_VARINT_LEN);
            handle.encode_varint_to(&mut v);
            self.index_block.add(sep, &v);
            self.separators.pop_front();
            self.handles.pop_front();
        }
    }

    /// Cuts the last data block and writes every data block still in flight, completing
    /// the index.
    fn finish_data_blocks(&mut self) -> Result<()> {
        self.flush_data_block()?;
        self.write_compressed_blocks(true)?;
        if self.awaiting_separator {
            self.awaiting_separator = false;
            self.separators.push_back(self.last_key.clone());
            self.add_index_entries();
        }
        self.compressor = None;
        debug_assert!(self.separators.is_empty() && self.handles.is_empty());
        Ok(())
    }

    /// Entries added so far.
    pub fn num_entries(&self) -> u64 {
        self.num_entries
    }

    /// Bytes written so far plus the size of the blocks being built or compressed
    /// (uncompressed: an overestimate).
    pub fn estimated_file_size(&self) -> u64 {
        let in_flight = self.compressor.as_ref().map_or(0, |c| c.pending_bytes);
        self.sink.offset + in_flight + self.data_block.estimated_size() as u64
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
        let r = self.finish_data_blocks();
        self.failed = r.is_err();
        r?;
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
            format_version: self.format_version,
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
            format_version: self.format_version,
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
    use crate::lsm::types::InternalIterator;
    use std::fs;
    use std::path::Path;

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

    /// Entries whose values compress (and some that do not), over many blocks.
    fn mixed_entries(n: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..n)
            .map(|i| {
                let value: Vec<u8> = if i % 3 == 0 {
                    (0..120)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                } else {
                    format!("value-{i}-")
                        .repeat(1 + (i % 9) as usize)
                        .into_bytes()
                };
                let kind = if i % 17 == 0 {
                    ValueKind::Delete
                } else {
                    ValueKind::Put
                };
                (ik(format!("key{i:08}").as_bytes(), 1, kind), value)
            })
            .collect()
    }

    fn build(
        path: &Path,
        entries: &[(Vec<u8>, Vec<u8>)],
        opts: TableOptions,
        thread: bool,
    ) -> TableProperties {
        let mut b = TableBuilder::new(StdFs.create(path).unwrap(), opts);
        if thread {
            b = b.with_compression_thread();
        }
        for (k, v) in entries {
            b.add(k, v).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn compression_thread_writes_the_same_blocks() {
        let dir = tempfile::tempdir().unwrap();
        for (n, compression) in [
            (1, Compression::Lz4),
            (40, Compression::Lz4),
            (20_000, Compression::Lz4),
            (3_000, Compression::None),
        ] {
            let entries = mixed_entries(n);
            let opts = TableOptions {
                compression,
                ..TableOptions::default()
            };
            let (a, b) = (dir.path().join("inline.sst"), dir.path().join("thread.sst"));
            let pa = build(&a, &entries, opts.clone(), false);
            let pb = build(&b, &entries, opts.clone(), true);
            assert_eq!(
                (
                    pa.num_data_blocks,
                    pa.data_bytes,
                    pa.index_bytes,
                    pa.filter_bytes
                ),
                (
                    pb.num_data_blocks,
                    pb.data_bytes,
                    pb.index_bytes,
                    pb.filter_bytes
                ),
                "{n} entries"
            );
            assert!(
                n < 10_000
                    || pa.num_data_blocks > (2 * BATCH_BLOCKS * MAX_BATCHES_IN_FLIGHT) as u64
            );
            // Data blocks and filter are byte for byte the same (the properties hold the
            // creation time); the index comes after the properties.
            let (fa, fb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
            let body = (pa.data_bytes + pa.filter_bytes) as usize;
            assert_eq!(fa[..body], fb[..body], "{n} entries");
            let index = pa.index_bytes as usize + crate::lsm::sst::footer::FOOTER_LEN;
            assert_eq!(fa[fa.len() - index..], fb[fb.len() - index..]);
            // And the table reads back whole.
            let t = crate::lsm::sst::table::Table::open(
                &StdFs,
                &b,
                crate::lsm::types::FileNumber(1),
                None,
                true,
            )
            .unwrap();
            t.verify().unwrap();
            let mut it = t.iter();
            it.seek_to_first();
            for (k, v) in &entries {
                assert!(it.valid(), "{n} entries");
                assert_eq!((it.key(), it.value()), (&k[..], &v[..]));
                it.next();
            }
            assert!(!it.valid());
            it.status().unwrap();
        }
    }

    #[test]
    #[cfg(feature = "fault-injection")]
    fn a_write_failure_with_the_compression_thread_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let fault = crate::fault::FaultFs::new();
        fault.add_rule(
            crate::fault::FaultRule::always(
                crate::fault::FaultOp::Write,
                crate::fault::FaultError::Enospc,
            )
            .after(25),
        );
        let path = dir.path().join("000009.sst");
        let mut b = TableBuilder::new(fault.create(&path).unwrap(), TableOptions::default())
            .with_compression_thread();
        let mut err = None;
        for (k, v) in mixed_entries(20_000) {
            if let Err(e) = b.add(&k, &v) {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => b.finish().unwrap_err(),
        };
        assert!(err.to_string().contains("000009.sst"), "{err}");
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
