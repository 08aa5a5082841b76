//! `tidemark inspect PATH`: prints what a store file, a store directory or a checkpoint
//! holds. It reads; it never repairs, opens the store or takes its lock.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::args::InspectArgs;
use super::detect::{self, Kind};
use super::output::{
    self, emit, escape_bytes, escape_bytes_cut, format_unix_ms, human_bytes, Format, Render,
};
use super::store::{self, LogContents, LogEnd, Replayed, StoreView};
use super::CliError;
use crate::error::Error;
use crate::fs::StdFs;
use crate::lsm::batch::decode_batch;
use crate::lsm::filename;
use crate::lsm::manifest::{read_current, NewFile, VersionEdit};
use crate::lsm::sst::bloom::FilterLayout;
use crate::lsm::sst::Table;
use crate::lsm::types::{parse_internal_key, InternalIterator, ValueKind};
use crate::lsm::wal::LogKind;
use crate::lsm::Compression;

/// Bytes of a value shown in text output before it is cut.
const TEXT_VALUE_MAX_BYTES: usize = 64;

/// Runs `inspect`.
pub fn run(args: &InspectArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let format = Format::from_json_flag(args.json);
    let path = args.path.as_path();
    match detect::detect(path)? {
        Kind::Sst => {
            let r = sst_report(path, args.entries).map_err(|e| CliError::at(path, e))?;
            emit(out, format, &r)
        }
        Kind::Wal => {
            let (r, damage) = wal_report(path, args.entries).map_err(|e| CliError::at(path, e))?;
            emit(out, format, &r)?;
            damage.map_or(Ok(()), |e| Err(CliError::at(path, e)))
        }
        Kind::Manifest => {
            let (r, damage) = manifest_report(path).map_err(|e| CliError::at(path, e))?;
            emit(out, format, &r)?;
            damage.map_or(Ok(()), |e| Err(CliError::at(path, e)))
        }
        Kind::Current => {
            let r = current_report(path).map_err(|e| CliError::at(path, e))?;
            emit(out, format, &r)
        }
        Kind::StoreDir => {
            let view = store::open_store_view(path).map_err(|e| CliError::at(path, e))?;
            emit(out, format, &StoreReport::new(&view))
        }
        Kind::Metadata | Kind::CheckpointDir | Kind::JobDir => {
            super::checkpoints::inspect(path, out, format)
        }
        Kind::ManifestSnapshot => super::checkpoints::inspect_manifest_snapshot(path, out, format),
        Kind::CanonicalSavepoint => {
            let r = canonical_report(path, args.entries).map_err(|e| CliError::at(path, e))?;
            emit(out, format, &r)
        }
    }
}

/// `text`, cut after `max` characters (marked with `...`).
fn cut_text(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// A state of a canonical savepoint file.
#[derive(Debug, Clone, Serialize)]
pub struct CanonicalStateJson {
    /// Its name.
    pub name: String,
    /// Its kind (`value`, `list`, `map`, `reducing`, `aggregating`).
    pub kind: &'static str,
    /// The type of its values.
    pub value_type: String,
    /// Its time to live in milliseconds, when it has one.
    pub ttl_ms: Option<u64>,
    /// Its records in the file.
    pub records: u64,
}

/// One key group's section of a canonical savepoint file.
#[derive(Debug, Clone, Serialize)]
pub struct CanonicalGroupJson {
    /// The key group.
    pub key_group: u32,
    /// Where its section starts.
    pub offset: u64,
    /// Its bytes.
    pub bytes: u64,
    /// Its records.
    pub records: u64,
}

/// One record of a canonical savepoint file (with `--entries`).
#[derive(Debug, Clone, Serialize)]
pub struct CanonicalRecordJson {
    /// Its key group.
    pub key_group: u32,
    /// Its state's name.
    pub state: String,
    /// The serialized key, escaped.
    pub key: String,
    /// A map state's user key, escaped (empty for the other kinds).
    pub user_key: String,
    /// The value, escaped (cut in text output).
    pub value: String,
    /// The value's length in bytes.
    pub value_bytes: usize,
}

/// What `inspect` says of a canonical savepoint file: every section and record read and
/// checked.
#[derive(Debug, Clone, Serialize)]
pub struct CanonicalReport {
    /// `canonical-savepoint`.
    pub format: &'static str,
    /// The file.
    pub path: String,
    /// The format version.
    pub version: u32,
    /// The backend that wrote it.
    pub backend: String,
    /// The operator's max parallelism.
    pub max_parallelism: u32,
    /// First key group.
    pub key_group_start: u32,
    /// Last key group.
    pub key_group_end: u32,
    /// The file's size.
    pub size_bytes: u64,
    /// The header's size.
    pub header_bytes: u64,
    /// The records.
    pub records: u64,
    /// The states.
    pub states: Vec<CanonicalStateJson>,
    /// The key groups that hold records.
    pub key_groups: Vec<CanonicalGroupJson>,
    /// The records (with `--entries`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<CanonicalRecordJson>>,
}

/// Reads and checks the canonical savepoint file at `path` whole (with its records when
/// `entries`).
pub fn canonical_report(path: &Path, entries: bool) -> crate::Result<CanonicalReport> {
    use crate::state::savepoint::{CanonicalReader, CANONICAL_VERSION};
    let f = crate::fs::open_regular(path)?;
    let size = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let src = std::io::BufReader::with_capacity(1 << 16, f);
    let mut r = CanonicalReader::open(path.display().to_string(), src, size)?;
    let header = r.header().clone();
    let mut per_state = vec![0u64; header.states.len()];
    let mut groups = Vec::new();
    let mut listed = entries.then(Vec::new);
    let range = header.key_groups;
    let offsets = r.offsets().to_vec();
    let footer_at = size - (offsets.len() as u64 * 8 + 12 + 12);
    let mut total = 0u64;
    for g in range.start()..=range.end() {
        let i = (g - range.start()) as usize;
        let n = r.read_key_group(g, &mut |rec| {
            per_state[rec.state as usize] += 1;
            if let Some(list) = listed.as_mut() {
                list.push(CanonicalRecordJson {
                    key_group: g,
                    state: header.states[rec.state as usize].name.clone(),
                    key: escape_bytes(rec.key),
                    user_key: escape_bytes(rec.user_key),
                    value: escape_bytes(rec.value),
                    value_bytes: rec.value.len(),
                });
            }
            Ok(())
        })?;
        total += n;
        if n > 0 {
            let end = offsets.get(i + 1).copied().unwrap_or(footer_at);
            groups.push(CanonicalGroupJson {
                key_group: g,
                offset: offsets[i],
                bytes: end - offsets[i],
                records: n,
            });
        }
    }
    if total != r.records() {
        return Err(Error::corruption(
            path,
            footer_at,
            format!("{total} records, the footer records {}", r.records()),
        ));
    }
    Ok(CanonicalReport {
        format: "canonical-savepoint",
        path: path.display().to_string(),
        version: CANONICAL_VERSION,
        backend: header.backend.clone(),
        max_parallelism: header.max_parallelism.get(),
        key_group_start: range.start(),
        key_group_end: range.end(),
        size_bytes: size,
        header_bytes: r.header_bytes(),
        records: total,
        states: header
            .states
            .iter()
            .zip(per_state)
            .map(|(s, records)| CanonicalStateJson {
                name: s.name.clone(),
                kind: s.kind.as_str(),
                value_type: s.value_type.clone(),
                ttl_ms: s.ttl_ms,
                records,
            })
            .collect(),
        key_groups: groups,
        entries: listed,
    })
}

impl Render for CanonicalReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "canonical savepoint {}", self.path)?;
        writeln!(out, "  version         {}", self.version)?;
        writeln!(out, "  written by      the {} backend", self.backend)?;
        writeln!(out, "  max parallelism {}", self.max_parallelism)?;
        writeln!(
            out,
            "  key groups      {}..={} ({} holding records)",
            self.key_group_start,
            self.key_group_end,
            self.key_groups.len()
        )?;
        writeln!(
            out,
            "  size            {} (header {})",
            human_bytes(self.size_bytes),
            human_bytes(self.header_bytes)
        )?;
        writeln!(out, "  records         {}", self.records)?;
        writeln!(out, "  checksums       ok")?;
        writeln!(out, "  states ({}):", self.states.len())?;
        for s in &self.states {
            let ttl = s
                .ttl_ms
                .map(|t| format!(", ttl {t} ms"))
                .unwrap_or_default();
            writeln!(
                out,
                "    {:<20} {:<12} {} ({} records{ttl})",
                s.name, s.kind, s.value_type, s.records
            )?;
        }
        if let Some(entries) = &self.entries {
            writeln!(out, "  records:")?;
            for e in entries {
                writeln!(
                    out,
                    "    [{}] {} key={} user_key={} value={} ({} bytes)",
                    e.key_group,
                    e.state,
                    e.key,
                    e.user_key,
                    cut_text(&e.value, TEXT_VALUE_MAX_BYTES),
                    e.value_bytes
                )?;
            }
        }
        Ok(())
    }
}

/// An internal key, split, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct KeyJson {
    /// The user key, escaped ([`output::escape_bytes`]).
    pub key: String,
    /// The user key in hex.
    pub key_hex: String,
    /// Sequence number.
    pub seq: u64,
    /// `put` or `delete`.
    pub kind: &'static str,
}

impl KeyJson {
    /// Splits `ikey`; a key without a valid trailer shows as its raw bytes with seq 0.
    pub fn from_internal(ikey: &[u8]) -> KeyJson {
        match parse_internal_key(ikey) {
            Some(p) => KeyJson {
                key: escape_bytes(p.user_key),
                key_hex: output::hex(p.user_key),
                seq: p.seq.0,
                kind: kind_name(p.kind),
            },
            None => KeyJson {
                key: escape_bytes(ikey),
                key_hex: output::hex(ikey),
                seq: 0,
                kind: "invalid",
            },
        }
    }
}

impl std::fmt::Display for KeyJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} @{} {}", self.key, self.seq, self.kind)
    }
}

/// `put` or `delete`.
pub fn kind_name(k: ValueKind) -> &'static str {
    match k {
        ValueKind::Put => "put",
        ValueKind::Delete => "delete",
    }
}

/// One entry of an SST or one operation of a WAL record.
#[derive(Debug, Clone, Serialize)]
pub struct EntryJson {
    /// The user key, escaped.
    pub key: String,
    /// Sequence number.
    pub seq: u64,
    /// `put` or `delete`.
    pub kind: &'static str,
    /// The value, escaped (empty for a delete).
    pub value: String,
    /// The value's length in bytes.
    pub value_len: usize,
    #[serde(skip)]
    value_text: String,
}

impl EntryJson {
    fn new(user_key: &[u8], seq: u64, kind: ValueKind, value: &[u8]) -> EntryJson {
        EntryJson {
            key: escape_bytes(user_key),
            seq,
            kind: kind_name(kind),
            value: escape_bytes(value),
            value_len: value.len(),
            value_text: escape_bytes_cut(value, TEXT_VALUE_MAX_BYTES),
        }
    }

    fn write_text(&self, out: &mut dyn Write, indent: &str) -> io::Result<()> {
        match self.kind {
            "put" => writeln!(
                out,
                "{indent}{} @{} put = {}",
                self.key, self.seq, self.value_text
            ),
            _ => writeln!(out, "{indent}{} @{} {}", self.key, self.seq, self.kind),
        }
    }
}

/// Min, average and max of a set of sizes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MinAvgMax {
    /// Smallest.
    pub min: u64,
    /// Mean, rounded down.
    pub avg: u64,
    /// Largest.
    pub max: u64,
}

impl MinAvgMax {
    /// Over `values` (all zero when empty).
    pub fn of(values: impl IntoIterator<Item = u64>) -> MinAvgMax {
        let (mut n, mut sum, mut min, mut max) = (0u64, 0u128, u64::MAX, 0u64);
        for v in values {
            n += 1;
            sum += u128::from(v);
            min = min.min(v);
            max = max.max(v);
        }
        if n == 0 {
            return MinAvgMax::default();
        }
        MinAvgMax {
            min,
            avg: u64::try_from(sum / u128::from(n)).unwrap_or(u64::MAX),
            max,
        }
    }
}

/// A data block as the index lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BlockJson {
    /// Offset in the file.
    pub offset: u64,
    /// Bytes on disk, trailer excluded.
    pub stored_size: u64,
    /// lz4-compressed or raw.
    pub compressed: bool,
}

/// The bloom filter of a table.
#[derive(Debug, Clone, Serialize)]
pub struct FilterJson {
    /// Always `bloom`.
    pub kind: &'static str,
    /// Bits per key.
    pub bits_per_key: u32,
    /// Where a key's probes fall: `lines` (format version 2: all in one 64-byte line) or
    /// `spread` (version 1: anywhere in the filter).
    pub layout: &'static str,
    /// Bytes of the filter block on disk, trailer included.
    pub bytes: u64,
}

/// What `inspect` prints for an SST.
#[derive(Debug, Clone, Serialize)]
pub struct SstReport {
    /// Always `sst`.
    pub format: &'static str,
    /// The file.
    pub path: String,
    /// File size.
    pub file_size_bytes: u64,
    /// Table format version.
    pub format_version: u32,
    /// When it was written (ms since the epoch).
    pub created_unix_ms: u64,
    /// Entries (puts and tombstones).
    pub num_entries: u64,
    /// Tombstones.
    pub num_deletions: u64,
    /// The first internal key.
    pub smallest: KeyJson,
    /// The last internal key.
    pub largest: KeyJson,
    /// Smallest sequence number.
    pub smallest_seq: u64,
    /// Largest sequence number.
    pub largest_seq: u64,
    /// `lz4` or `none`.
    pub compression: &'static str,
    /// Number of data blocks.
    pub data_blocks: u64,
    /// Data blocks stored compressed.
    pub compressed_blocks: u64,
    /// Bytes of data blocks on disk, trailers included.
    pub data_bytes: u64,
    /// Stored sizes of the data blocks.
    pub block_size_bytes: MinAvgMax,
    /// Bytes of the index block.
    pub index_bytes: u64,
    /// Key bytes before prefix compression.
    pub raw_key_bytes: u64,
    /// Value bytes before compression.
    pub raw_value_bytes: u64,
    /// The filter, if any.
    pub filter: Option<FilterJson>,
    /// Every data block.
    pub blocks: Vec<BlockJson>,
    /// Every entry, with `--entries`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<EntryJson>>,
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Lz4 => "lz4",
    }
}

/// Every entry of `table`, in order.
pub fn table_entries(table: &Arc<Table>) -> crate::Result<Vec<EntryJson>> {
    let mut it = table.iter();
    it.seek_to_first();
    let mut v = Vec::new();
    while it.valid() {
        let k = it.key();
        let e = match parse_internal_key(k) {
            Some(p) => EntryJson::new(p.user_key, p.seq.0, p.kind, it.value()),
            None => {
                return Err(Error::corruption(
                    table.path(),
                    0,
                    format!("entry {} has an invalid internal key", v.len()),
                ))
            }
        };
        v.push(e);
        it.next();
    }
    it.status()?;
    Ok(v)
}

/// Opens `path` as a table and describes it.
pub fn sst_report(path: &Path, entries: bool) -> crate::Result<SstReport> {
    let table = store::open_table(path)?;
    let p = table.properties();
    let blocks: Vec<BlockJson> = table
        .data_blocks()?
        .iter()
        .map(|b| BlockJson {
            offset: b.offset,
            stored_size: b.stored_size,
            compressed: b.compressed,
        })
        .collect();
    let entries = if entries {
        Some(table_entries(&table)?)
    } else {
        None
    };
    Ok(SstReport {
        format: "sst",
        path: path.display().to_string(),
        file_size_bytes: table.file_size(),
        format_version: p.format_version,
        created_unix_ms: p.created_unix_ms,
        num_entries: p.num_entries,
        num_deletions: p.num_deletions,
        smallest: KeyJson::from_internal(&p.smallest_key),
        largest: KeyJson::from_internal(&p.largest_key),
        smallest_seq: p.smallest_seq.0,
        largest_seq: p.largest_seq.0,
        compression: compression_name(p.compression),
        data_blocks: p.num_data_blocks,
        compressed_blocks: blocks.iter().filter(|b| b.compressed).count() as u64,
        data_bytes: p.data_bytes,
        block_size_bytes: MinAvgMax::of(blocks.iter().map(|b| b.stored_size)),
        index_bytes: p.index_bytes,
        raw_key_bytes: p.raw_key_bytes,
        raw_value_bytes: p.raw_value_bytes,
        filter: (p.bloom_bits_per_key > 0 && p.filter_bytes > 0).then_some(FilterJson {
            kind: "bloom",
            bits_per_key: p.bloom_bits_per_key,
            layout: match FilterLayout::of_version(p.format_version) {
                Some(FilterLayout::Blocked) => "lines",
                Some(FilterLayout::Spread) => "spread",
                None => "unknown",
            },
            bytes: p.filter_bytes,
        }),
        blocks,
        entries,
    })
}

fn size(n: u64) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else {
        format!("{} ({n} bytes)", human_bytes(n))
    }
}

impl Render for SstReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "SST {}", self.path)?;
        writeln!(out, "  size            {}", size(self.file_size_bytes))?;
        writeln!(out, "  format version  {}", self.format_version)?;
        writeln!(
            out,
            "  created         {}",
            format_unix_ms(self.created_unix_ms)
        )?;
        writeln!(
            out,
            "  entries         {} ({} deletions)",
            self.num_entries, self.num_deletions
        )?;
        writeln!(out, "  smallest key    {}", self.smallest)?;
        writeln!(out, "  largest key     {}", self.largest)?;
        writeln!(
            out,
            "  sequence range  {} ..= {}",
            self.smallest_seq, self.largest_seq
        )?;
        writeln!(
            out,
            "  data blocks     {} ({} compressed), {}; block size min {} avg {} max {}",
            self.data_blocks,
            self.compressed_blocks,
            size(self.data_bytes),
            self.block_size_bytes.min,
            self.block_size_bytes.avg,
            self.block_size_bytes.max
        )?;
        writeln!(
            out,
            "  raw data        keys {}, values {}",
            human_bytes(self.raw_key_bytes),
            human_bytes(self.raw_value_bytes)
        )?;
        writeln!(out, "  index block     {}", size(self.index_bytes))?;
        writeln!(out, "  compression     {}", self.compression)?;
        match &self.filter {
            Some(f) => writeln!(
                out,
                "  filter          bloom, {} bits/key, {} layout, {}",
                f.bits_per_key,
                f.layout,
                size(f.bytes)
            )?,
            None => writeln!(out, "  filter          none")?,
        }
        if let Some(entries) = &self.entries {
            writeln!(out, "  entries:")?;
            for e in entries {
                e.write_text(out, "    ")?;
            }
        }
        Ok(())
    }
}

/// How a log ended, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct LogEndJson {
    /// `clean`, `torn_tail` or `corrupt`.
    pub status: &'static str,
    /// Where the damage starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// What was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LogEndJson {
    fn of(end: &LogEnd) -> LogEndJson {
        match end {
            LogEnd::Eof => LogEndJson {
                status: "clean",
                offset: None,
                reason: None,
            },
            LogEnd::TornTail { offset, reason } => LogEndJson {
                status: "torn_tail",
                offset: Some(*offset),
                reason: Some(reason.clone()),
            },
            LogEnd::Corrupt { offset, reason } => LogEndJson {
                status: "corrupt",
                offset: Some(*offset),
                reason: Some(reason.clone()),
            },
        }
    }

    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        match (self.status, self.offset, &self.reason) {
            ("clean", _, _) => writeln!(out, "  end             clean"),
            ("torn_tail", Some(o), Some(r)) => writeln!(
                out,
                "  end             torn tail at offset {o} (a write cut by a crash, never acknowledged): {r}"
            ),
            (_, o, r) => writeln!(
                out,
                "  end             CORRUPT at offset {}: {}",
                o.unwrap_or(0),
                r.as_deref().unwrap_or("")
            ),
        }
    }
}

/// One WAL record.
#[derive(Debug, Clone, Serialize)]
pub struct WalRecordJson {
    /// Offset of its first fragment.
    pub offset: u64,
    /// Bytes of the record (the write batch).
    pub bytes: usize,
    /// Sequence number of its first operation.
    pub first_seq: u64,
    /// Number of operations.
    pub ops: usize,
    /// The operations, with `--entries`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<EntryJson>>,
}

/// What `inspect` prints for a WAL segment.
#[derive(Debug, Clone, Serialize)]
pub struct WalReport {
    /// Always `wal`.
    pub format: &'static str,
    /// The file.
    pub path: String,
    /// The number its header record names.
    pub file_number: u64,
    /// File size.
    pub file_size_bytes: u64,
    /// Records in order.
    pub records: Vec<WalRecordJson>,
    /// Total operations.
    pub total_ops: u64,
    /// How the log ends.
    pub end: LogEndJson,
}

/// Reads the WAL at `path`; the error is the damage that stopped reading, if any (the
/// report holds every record before it).
pub fn wal_report(path: &Path, entries: bool) -> crate::Result<(WalReport, Option<Error>)> {
    let log = store::read_log(&StdFs, path, LogKind::Wal)?;
    let mut records = Vec::with_capacity(log.records.len());
    let mut total_ops = 0u64;
    for r in &log.records {
        let batch = decode_batch(&r.payload, path, r.offset)?;
        total_ops += batch.ops.len() as u64;
        records.push(WalRecordJson {
            offset: r.offset,
            bytes: r.payload.len(),
            first_seq: batch.first_seq.0,
            ops: batch.ops.len(),
            entries: entries.then(|| {
                batch
                    .ops
                    .iter()
                    .map(|op| EntryJson::new(op.key, op.seq.0, op.kind, op.value))
                    .collect()
            }),
        });
    }
    let damage = corrupt_end(path, &log);
    Ok((
        WalReport {
            format: "wal",
            path: path.display().to_string(),
            file_number: log.number.0,
            file_size_bytes: log.size_bytes,
            records,
            total_ops,
            end: LogEndJson::of(&log.end),
        },
        damage,
    ))
}

fn corrupt_end(path: &Path, log: &LogContents) -> Option<Error> {
    match &log.end {
        LogEnd::Corrupt { offset, reason } => {
            Some(Error::corruption(path, *offset, reason.clone()))
        }
        _ => None,
    }
}

impl Render for WalReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "WAL {}", self.path)?;
        writeln!(out, "  file number     {}", self.file_number)?;
        writeln!(out, "  size            {}", size(self.file_size_bytes))?;
        writeln!(
            out,
            "  records         {} ({} operations)",
            self.records.len(),
            self.total_ops
        )?;
        self.end.write_text(out)?;
        if !self.records.is_empty() {
            writeln!(
                out,
                "  {:>10}  {:>10}  {:>6}  {:>8}",
                "offset", "first seq", "ops", "bytes"
            )?;
        }
        for r in &self.records {
            writeln!(
                out,
                "  {:>10}  {:>10}  {:>6}  {:>8}",
                r.offset, r.first_seq, r.ops, r.bytes
            )?;
            for e in r.entries.iter().flatten() {
                e.write_text(out, "      ")?;
            }
        }
        Ok(())
    }
}

/// A table as a manifest edit (or a checkpoint's manifest snapshot) records it.
#[derive(Debug, Clone, Serialize)]
pub struct TableFileJson {
    /// Level.
    pub level: u32,
    /// File name (`000012.sst`).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// crc32c of the whole file, 8 hex digits.
    pub crc32c: String,
    /// Entries.
    pub entries: u64,
    /// First internal key.
    pub smallest: KeyJson,
    /// Last internal key.
    pub largest: KeyJson,
    /// Smallest sequence number.
    pub smallest_seq: u64,
    /// Largest sequence number.
    pub largest_seq: u64,
}

impl TableFileJson {
    /// From a manifest's record of a file.
    pub fn of(f: &NewFile) -> TableFileJson {
        TableFileJson {
            level: f.level,
            name: filename::table_file_name(f.number),
            size_bytes: f.size,
            crc32c: format!("{:08x}", f.file_crc32c),
            entries: f.num_entries,
            smallest: KeyJson::from_internal(&f.smallest),
            largest: KeyJson::from_internal(&f.largest),
            smallest_seq: f.smallest_seq.0,
            largest_seq: f.largest_seq.0,
        }
    }

    /// One line of text.
    pub fn write_text(&self, out: &mut dyn Write, indent: &str) -> io::Result<()> {
        writeln!(
            out,
            "{indent}L{} {}  {:>10}  crc32c {}  {} entries  seq {}..={}  [{} .. {}]",
            self.level,
            self.name,
            human_bytes(self.size_bytes),
            self.crc32c,
            self.entries,
            self.smallest_seq,
            self.largest_seq,
            self.smallest.key,
            self.largest.key
        )
    }
}

/// One version edit.
#[derive(Debug, Clone, Serialize)]
pub struct EditJson {
    /// Offset of its record in the manifest (absent for an edit held elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Store identity, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_id: Option<String>,
    /// WALs numbered below this are retired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_number: Option<u64>,
    /// Next file number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_file_number: Option<u64>,
    /// Last sequence number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
    /// Compaction cursors: level and escaped internal key.
    pub compact_pointers: Vec<(u32, KeyJson)>,
    /// Files removed: level and name.
    pub deleted_files: Vec<(u32, String)>,
    /// Files added.
    pub new_files: Vec<TableFileJson>,
}

impl EditJson {
    /// From an edit.
    pub fn of(offset: Option<u64>, e: &VersionEdit) -> EditJson {
        EditJson {
            offset,
            db_id: e.db_id.clone(),
            log_number: e.log_number.map(|n| n.0),
            next_file_number: e.next_file_number.map(|n| n.0),
            last_sequence: e.last_sequence.map(|s| s.0),
            compact_pointers: e
                .compact_pointers
                .iter()
                .map(|(l, k)| (*l, KeyJson::from_internal(k)))
                .collect(),
            deleted_files: e
                .deleted_files
                .iter()
                .map(|(l, n)| (*l, filename::table_file_name(*n)))
                .collect(),
            new_files: e.new_files.iter().map(TableFileJson::of).collect(),
        }
    }

    /// Text lines.
    pub fn write_text(&self, out: &mut dyn Write, title: &str) -> io::Result<()> {
        let mut fields = Vec::new();
        if let Some(v) = &self.db_id {
            fields.push(format!("db_id {v}"));
        }
        if let Some(v) = self.log_number {
            fields.push(format!("log_number {v}"));
        }
        if let Some(v) = self.next_file_number {
            fields.push(format!("next_file {v}"));
        }
        if let Some(v) = self.last_sequence {
            fields.push(format!("last_seq {v}"));
        }
        writeln!(out, "  {title}  {}", fields.join("  "))?;
        for (l, k) in &self.compact_pointers {
            writeln!(out, "      compact pointer L{l} {k}")?;
        }
        for (l, n) in &self.deleted_files {
            writeln!(out, "      - L{l} {n}")?;
        }
        for f in &self.new_files {
            f.write_text(out, "      + ")?;
        }
        Ok(())
    }
}

/// Files and bytes of one level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelJson {
    /// Level number.
    pub level: usize,
    /// Number of files.
    pub files: usize,
    /// Bytes of the files.
    pub bytes: u64,
    /// The files (level 0 newest first, deeper levels in key order).
    pub tables: Vec<TableFileJson>,
}

/// The levels a replay leaves.
pub fn levels_json(r: &Replayed) -> Vec<LevelJson> {
    r.levels
        .iter()
        .enumerate()
        .map(|(level, files)| LevelJson {
            level,
            files: files.len(),
            bytes: files.iter().map(|f| f.size).sum(),
            tables: files.iter().map(TableFileJson::of).collect(),
        })
        .collect()
}

/// Text lines for levels, each starting with `indent`.
pub fn write_levels(out: &mut dyn Write, levels: &[LevelJson], indent: &str) -> io::Result<()> {
    if levels.iter().all(|l| l.files == 0) {
        return writeln!(out, "{indent}levels          (no tables)");
    }
    for l in levels {
        if l.files == 0 {
            continue;
        }
        writeln!(
            out,
            "{indent}L{}  {} file{}, {}",
            l.level,
            l.files,
            if l.files == 1 { "" } else { "s" },
            human_bytes(l.bytes)
        )?;
        for t in &l.tables {
            t.write_text(out, &format!("{indent}    "))?;
        }
    }
    Ok(())
}

/// What `inspect` prints for a manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestReport {
    /// Always `manifest`.
    pub format: &'static str,
    /// The file.
    pub path: String,
    /// The number its header record names.
    pub file_number: u64,
    /// File size.
    pub file_size_bytes: u64,
    /// Every edit, in order.
    pub edits: Vec<EditJson>,
    /// How the log ends.
    pub end: LogEndJson,
    /// The levels after every edit.
    pub levels: Vec<LevelJson>,
}

/// Reads the manifest at `path`; the error is the damage that stopped reading, if any.
pub fn manifest_report(path: &Path) -> crate::Result<(ManifestReport, Option<Error>)> {
    let log = store::read_log(&StdFs, path, LogKind::Manifest)?;
    let edits = store::decode_edits(path, &log)?;
    let replayed = store::replay(edits.iter().map(|(_, e)| e));
    let damage = corrupt_end(path, &log);
    Ok((
        ManifestReport {
            format: "manifest",
            path: path.display().to_string(),
            file_number: log.number.0,
            file_size_bytes: log.size_bytes,
            edits: edits
                .iter()
                .map(|(o, e)| EditJson::of(Some(*o), e))
                .collect(),
            end: LogEndJson::of(&log.end),
            levels: levels_json(&replayed),
        },
        damage,
    ))
}

impl Render for ManifestReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "MANIFEST {}", self.path)?;
        writeln!(out, "  file number     {}", self.file_number)?;
        writeln!(out, "  size            {}", size(self.file_size_bytes))?;
        writeln!(out, "  edits           {}", self.edits.len())?;
        self.end.write_text(out)?;
        for (i, e) in self.edits.iter().enumerate() {
            e.write_text(out, &format!("edit {i} @{}", e.offset.unwrap_or(0)))?;
        }
        writeln!(out, "  after all edits:")?;
        write_levels(out, &self.levels, "  ")
    }
}

/// What `inspect` prints for `CURRENT`.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentReport {
    /// Always `current`.
    pub format: &'static str,
    /// The file.
    pub path: String,
    /// The manifest it names.
    pub manifest: String,
    /// Whether that manifest exists beside it.
    pub manifest_exists: bool,
}

fn current_report(path: &Path) -> crate::Result<CurrentReport> {
    let dir = crate::fs::parent_dir(path);
    if path.file_name().and_then(|n| n.to_str()) != Some(filename::CURRENT) {
        return Err(Error::InvalidArgument(format!(
            "{} looks like a CURRENT file; only a file named CURRENT is read as one",
            path.display()
        )));
    }
    let n = read_current(&StdFs, dir)?;
    Ok(CurrentReport {
        format: "current",
        path: path.display().to_string(),
        manifest: filename::manifest_file_name(n),
        manifest_exists: filename::manifest_path(dir, n).exists(),
    })
}

impl Render for CurrentReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "CURRENT {}", self.path)?;
        writeln!(
            out,
            "  names           {}{}",
            self.manifest,
            if self.manifest_exists {
                ""
            } else {
                " (MISSING)"
            }
        )?;
        writeln!(out, "  checksum        ok")
    }
}

/// A file of a store directory.
#[derive(Debug, Clone, Serialize)]
pub struct DirFileJson {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// What `inspect` prints for a store directory.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// Always `store`.
    pub format: &'static str,
    /// The directory.
    pub path: String,
    /// The store's identity.
    pub db_id: Option<String>,
    /// The manifest `CURRENT` names.
    pub manifest: String,
    /// Its size.
    pub manifest_size_bytes: u64,
    /// Its number of edits.
    pub manifest_edits: usize,
    /// Last sequence number recorded in the manifest.
    pub last_sequence: Option<u64>,
    /// Next file number.
    pub next_file_number: Option<u64>,
    /// WALs below this number are retired.
    pub log_number: Option<u64>,
    /// Table files and bytes.
    pub table_files: usize,
    /// Bytes of the tables.
    pub table_bytes: u64,
    /// Levels.
    pub levels: Vec<LevelJson>,
    /// WAL segments not yet retired.
    pub live_wals: Vec<DirFileJson>,
    /// Files the manifest does not account for (obsolete, temporary, unknown).
    pub other_files: Vec<DirFileJson>,
}

impl StoreReport {
    /// Describes a store view.
    pub fn new(v: &StoreView) -> StoreReport {
        let live_tables: std::collections::HashSet<String> = v
            .state
            .files()
            .map(|f| filename::table_file_name(f.number))
            .collect();
        let live_wals: Vec<DirFileJson> = v
            .live_wals()
            .into_iter()
            .map(|f| DirFileJson {
                name: f.name.clone(),
                size_bytes: f.size_bytes,
            })
            .collect();
        let manifest_name = filename::manifest_file_name(v.manifest_number);
        let other_files = v
            .files
            .iter()
            .filter(|f| {
                let known = match f.kind {
                    Some(filename::FileKind::Table(_)) => live_tables.contains(&f.name),
                    Some(filename::FileKind::Wal(_)) => live_wals.iter().any(|w| w.name == f.name),
                    Some(filename::FileKind::Manifest(_)) => f.name == manifest_name,
                    Some(filename::FileKind::Current) | Some(filename::FileKind::Lock) => true,
                    _ => false,
                };
                !known
            })
            .map(|f| DirFileJson {
                name: f.name.clone(),
                size_bytes: f.size_bytes,
            })
            .collect();
        let levels = levels_json(&v.state);
        StoreReport {
            format: "store",
            path: v.dir.display().to_string(),
            db_id: v.state.db_id.clone(),
            manifest: manifest_name,
            manifest_size_bytes: v.manifest.size_bytes,
            manifest_edits: v.edits.len(),
            last_sequence: v.state.last_sequence.map(|s| s.0),
            next_file_number: v.state.next_file_number.map(|n| n.0),
            log_number: v.state.log_number.map(|n| n.0),
            table_files: levels.iter().map(|l| l.files).sum(),
            table_bytes: levels.iter().map(|l| l.bytes).sum(),
            levels,
            live_wals,
            other_files,
        }
    }
}

impl Render for StoreReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "store {}", self.path)?;
        writeln!(
            out,
            "  id              {}",
            self.db_id.as_deref().unwrap_or("-")
        )?;
        writeln!(
            out,
            "  manifest        {} ({}, {} edits)",
            self.manifest,
            human_bytes(self.manifest_size_bytes),
            self.manifest_edits
        )?;
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        writeln!(out, "  last sequence   {}", opt(self.last_sequence))?;
        writeln!(out, "  next file       {}", opt(self.next_file_number))?;
        writeln!(
            out,
            "  tables          {} files, {}",
            self.table_files,
            size(self.table_bytes)
        )?;
        write_levels(out, &self.levels, "  ")?;
        if self.live_wals.is_empty() {
            writeln!(out, "  live WAL        none")?;
        }
        for w in &self.live_wals {
            writeln!(out, "  live WAL        {} ({})", w.name, size(w.size_bytes))?;
        }
        for f in &self.other_files {
            writeln!(
                out,
                "  other file      {} ({}): not referenced by the manifest",
                f.name,
                size(f.size_bytes)
            )?;
        }
        Ok(())
    }
}
