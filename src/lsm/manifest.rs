//! The manifest: a log of version edits, and `CURRENT`, which names the live manifest
//! (format-spec/manifest.md describes both byte by byte).
//!
//! A manifest is a log ([`crate::lsm::wal`] framing, [`LogKind::Manifest`]) whose first
//! record is the full state of the store as one [`VersionEdit`] and whose later records are
//! the changes, each fsynced before it is acted on. `CURRENT` is replaced atomically
//! ([`crate::fs::write_atomic`]) and only ever names a manifest whose first edit is durable.
//!
//! This module owns the encoding and the files; what the edits mean (which files are live)
//! belongs to the version set. It never deletes a manifest.

use std::path::Path;

use crate::codec::{self, DecodeError, Decoder};
use crate::error::{Error, Result};
use crate::fs::{self, FileSystem};
use crate::lsm::filename::{self, FileKind};
use crate::lsm::types::{
    compare_internal_keys, parse_internal_key, FileNumber, SeqNo, TRAILER_LEN,
};
use crate::lsm::wal::{LogKind, LogRead, LogReader, LogWriter, BLOCK_SIZE, HEADER_SIZE};

/// Largest manifest [`read_manifest`] reads, and [`ManifestWriter::append`] lets grow: 1 GiB.
/// A store rewrites its manifest long before (the base edit of a store with a million files
/// is around 100 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Number of levels an edit may name (levels `0 .. MAX_LEVELS`), the largest `num_levels`
/// the options accept.
pub const MAX_LEVELS: u32 = 16;

/// Longest internal key an edit may carry: a user key of at most 64 KiB (the write batch's
/// limit) plus its 8-byte trailer.
pub const MAX_INTERNAL_KEY_BYTES: usize = 64 * 1024 + TRAILER_LEN;

/// Longest store identity ([`VersionEdit::db_id`]) in bytes.
pub const MAX_DB_ID_BYTES: usize = 128;

/// Largest `CURRENT` file [`read_current`] accepts. A valid one is at most 55 bytes.
pub const MAX_CURRENT_BYTES: u64 = 128;

/// The version of the `CURRENT` format this build writes and reads.
pub const CURRENT_FORMAT_VERSION: u32 = 1;

/// Field tags of an encoded [`VersionEdit`] (varints).
mod tag {
    pub const DB_ID: u64 = 1;
    pub const LOG_NUMBER: u64 = 2;
    pub const NEXT_FILE_NUMBER: u64 = 3;
    pub const LAST_SEQUENCE: u64 = 4;
    pub const COMPACT_POINTER: u64 = 5;
    pub const DELETED_FILE: u64 = 6;
    pub const NEW_FILE: u64 = 7;
}

/// An SST added to a level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    /// The level it joins, below [`MAX_LEVELS`].
    pub level: u32,
    /// Its file number (`<number>.sst`).
    pub number: FileNumber,
    /// Its size in bytes.
    pub size: u64,
    /// crc32c of the whole file, so a copy of it can be verified end to end.
    pub file_crc32c: u32,
    /// Its smallest internal key.
    pub smallest: Vec<u8>,
    /// Its largest internal key (not below `smallest`).
    pub largest: Vec<u8>,
    /// The smallest sequence number of its entries.
    pub smallest_seq: SeqNo,
    /// The largest sequence number of its entries (not below `smallest_seq`).
    pub largest_seq: SeqNo,
    /// Number of entries (puts and tombstones).
    pub num_entries: u64,
}

/// One change to the set of live files and counters, as recorded in a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// Random identity of a store, set in the first edit.
    pub db_id: Option<String>,
    /// WALs with a smaller number are obsolete.
    pub log_number: Option<FileNumber>,
    /// The next file number to hand out.
    pub next_file_number: Option<FileNumber>,
    /// The largest sequence number used.
    pub last_sequence: Option<SeqNo>,
    /// Where the next compaction of a level starts: (level, internal key).
    pub compact_pointers: Vec<(u32, Vec<u8>)>,
    /// Files removed: (level, number).
    pub deleted_files: Vec<(u32, FileNumber)>,
    /// Files added.
    pub new_files: Vec<NewFile>,
}

impl VersionEdit {
    /// Appends the encoding of this edit to `buf`: tagged fields in tag order.
    ///
    /// The encoding is only meaningful for an edit within the documented limits;
    /// [`ManifestWriter`] checks every edit (by decoding it) before writing it.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        if let Some(id) = &self.db_id {
            codec::put_varint(buf, tag::DB_ID);
            codec::put_length_prefixed(buf, id.as_bytes());
        }
        if let Some(n) = self.log_number {
            codec::put_varint(buf, tag::LOG_NUMBER);
            codec::put_varint(buf, n.0);
        }
        if let Some(n) = self.next_file_number {
            codec::put_varint(buf, tag::NEXT_FILE_NUMBER);
            codec::put_varint(buf, n.0);
        }
        if let Some(s) = self.last_sequence {
            codec::put_varint(buf, tag::LAST_SEQUENCE);
            codec::put_varint(buf, s.0);
        }
        for (level, key) in &self.compact_pointers {
            codec::put_varint(buf, tag::COMPACT_POINTER);
            codec::put_varint(buf, u64::from(*level));
            codec::put_length_prefixed(buf, key);
        }
        for (level, number) in &self.deleted_files {
            codec::put_varint(buf, tag::DELETED_FILE);
            codec::put_varint(buf, u64::from(*level));
            codec::put_varint(buf, number.0);
        }
        for f in &self.new_files {
            codec::put_varint(buf, tag::NEW_FILE);
            codec::put_varint(buf, u64::from(f.level));
            codec::put_varint(buf, f.number.0);
            codec::put_varint(buf, f.size);
            codec::put_u32(buf, f.file_crc32c);
            codec::put_length_prefixed(buf, &f.smallest);
            codec::put_length_prefixed(buf, &f.largest);
            codec::put_varint(buf, f.smallest_seq.0);
            codec::put_varint(buf, f.largest_seq.0);
            codec::put_varint(buf, f.num_entries);
        }
    }

    /// Tag-based decoding of the record at `offset` of `path`; unknown tags, repeated
    /// single-valued fields, bad lengths, levels `>= MAX_LEVELS`, keys without a valid
    /// internal-key trailer, smallest > largest: `Err(Corruption{path, offset, ..})`, the
    /// reason naming the byte of the edit where decoding stopped.
    pub fn decode(data: &[u8], path: &Path, offset: u64) -> Result<VersionEdit> {
        decode_edit(data).map_err(|e| {
            Error::corruption(
                path,
                offset,
                format!("version edit byte {}: {}", e.offset, e.reason),
            )
        })
    }
}

/// Decodes an edit; error offsets are relative to the start of `data`. Every entry consumes
/// at least two bytes, so the number of entries is bounded by the record's length.
fn decode_edit(data: &[u8]) -> Result<VersionEdit, DecodeError> {
    let mut d = Decoder::new(data, 0);
    let mut edit = VersionEdit::default();
    while !d.is_empty() {
        let at = d.offset();
        let t = d.varint("tag")?;
        let repeated = || DecodeError {
            offset: at,
            reason: format!("tag {t} appears twice"),
        };
        match t {
            tag::DB_ID => {
                let n = d.varint_bounded("db id length", MAX_DB_ID_BYTES as u64)?;
                let bytes = d.bytes(n, "db id")?;
                let id = std::str::from_utf8(bytes).map_err(|_| DecodeError {
                    offset: at,
                    reason: "db id is not UTF-8".to_string(),
                })?;
                if edit.db_id.replace(id.to_string()).is_some() {
                    return Err(repeated());
                }
            }
            tag::LOG_NUMBER => {
                let n = FileNumber(d.varint("log number")?);
                if edit.log_number.replace(n).is_some() {
                    return Err(repeated());
                }
            }
            tag::NEXT_FILE_NUMBER => {
                let n = FileNumber(d.varint("next file number")?);
                if edit.next_file_number.replace(n).is_some() {
                    return Err(repeated());
                }
            }
            tag::LAST_SEQUENCE => {
                let s = decode_seq(&mut d, "last sequence")?;
                if edit.last_sequence.replace(s).is_some() {
                    return Err(repeated());
                }
            }
            tag::COMPACT_POINTER => {
                let level = decode_level(&mut d)?;
                let key = decode_key(&mut d, "compact pointer")?;
                edit.compact_pointers.push((level, key.to_vec()));
            }
            tag::DELETED_FILE => {
                let level = decode_level(&mut d)?;
                let number = FileNumber(d.varint("deleted file number")?);
                edit.deleted_files.push((level, number));
            }
            tag::NEW_FILE => edit.new_files.push(decode_new_file(&mut d, at)?),
            other => {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("unknown tag {other}"),
                })
            }
        }
    }
    Ok(edit)
}

fn decode_new_file(d: &mut Decoder<'_>, at: u64) -> Result<NewFile, DecodeError> {
    let f = NewFile {
        level: decode_level(d)?,
        number: FileNumber(d.varint("file number")?),
        size: d.varint("file size")?,
        file_crc32c: d.u32("file crc32c")?,
        smallest: decode_key(d, "smallest key")?.to_vec(),
        largest: decode_key(d, "largest key")?.to_vec(),
        smallest_seq: decode_seq(d, "smallest sequence")?,
        largest_seq: decode_seq(d, "largest sequence")?,
        num_entries: d.varint("entry count")?,
    };
    let bad = |reason: String| DecodeError { offset: at, reason };
    if compare_internal_keys(&f.smallest, &f.largest).is_gt() {
        return Err(bad(format!(
            "file {}: smallest key sorts after largest key",
            f.number
        )));
    }
    if f.smallest_seq > f.largest_seq {
        return Err(bad(format!(
            "file {}: smallest sequence {} above largest sequence {}",
            f.number, f.smallest_seq, f.largest_seq
        )));
    }
    Ok(f)
}

fn decode_level(d: &mut Decoder<'_>) -> Result<u32, DecodeError> {
    let at = d.offset();
    let level = d.varint_bounded("level", u64::from(MAX_LEVELS - 1))?;
    u32::try_from(level).map_err(|_| DecodeError {
        offset: at,
        reason: format!("level {level}"),
    })
}

fn decode_seq(d: &mut Decoder<'_>, what: &str) -> Result<SeqNo, DecodeError> {
    let at = d.offset();
    let s = d.varint(what)?;
    if s > SeqNo::MAX.0 {
        return Err(DecodeError {
            offset: at,
            reason: format!(
                "{what} {s} exceeds the largest sequence number {}",
                SeqNo::MAX
            ),
        });
    }
    Ok(SeqNo(s))
}

fn decode_key<'a>(d: &mut Decoder<'a>, what: &str) -> Result<&'a [u8], DecodeError> {
    let at = d.offset();
    let n = d.varint_bounded(what, MAX_INTERNAL_KEY_BYTES as u64)?;
    let key = d.bytes(n, what)?;
    if parse_internal_key(key).is_none() {
        return Err(DecodeError {
            offset: at,
            reason: format!("{what} has no valid internal-key trailer"),
        });
    }
    Ok(key)
}

/// The encoding of `edit`, checked by decoding it again: an edit outside the documented
/// limits, or one that would not read back equal, is refused before any byte is written.
fn encode_checked(edit: &VersionEdit) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    edit.encode(&mut buf);
    match decode_edit(&buf) {
        Ok(back) if back == *edit => Ok(buf),
        Ok(_) => Err(Error::InvalidArgument(
            "version edit does not read back equal to itself".to_string(),
        )),
        Err(e) => Err(Error::InvalidArgument(format!(
            "invalid version edit: {}",
            e.reason
        ))),
    }
}

/// Upper bound of the bytes a record of `payload_bytes` adds to a log: one header per
/// fragment and at most one zero-filled block trailer per fragment.
fn log_bytes_max(payload_bytes: u64) -> u64 {
    let fragment_payload = (BLOCK_SIZE - HEADER_SIZE) as u64;
    let fragments = payload_bytes / fragment_payload + 2;
    payload_bytes.saturating_add(fragments.saturating_mul(2 * HEADER_SIZE as u64))
}

/// Appends version edits to one manifest, fsyncing each.
#[derive(Debug)]
pub struct ManifestWriter {
    log: LogWriter,
    number: FileNumber,
    /// The first error; every later call returns it again.
    failed: Option<Error>,
}

impl ManifestWriter {
    /// Creates `MANIFEST-<number>` in `dir`, writes `base` (the full current state) as its
    /// first edit and fsyncs the file AND the directory. Does not touch `CURRENT`. On
    /// failure a partial file may remain; it is unreferenced and safe to delete.
    pub fn create(
        fs: &dyn FileSystem,
        dir: &Path,
        number: FileNumber,
        base: &VersionEdit,
    ) -> Result<Self> {
        let record = encode_checked(base)?;
        let path = filename::manifest_path(dir, number);
        let file = fs.create(&path)?;
        let mut w = ManifestWriter {
            log: LogWriter::new(file, LogKind::Manifest, number)?,
            number,
            failed: None,
        };
        w.write(&record)?;
        fs.sync_dir(dir)?;
        Ok(w)
    }

    /// Appends one edit and fsyncs. After any error (including an edit refused as invalid
    /// or one that would grow the file past [`MAX_MANIFEST_BYTES`]) the writer is unusable
    /// and returns that error again: the caller starts a new manifest.
    pub fn append(&mut self, edit: &VersionEdit) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = encode_checked(edit).and_then(|record| self.write(&record));
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// The manifest's file number.
    pub fn number(&self) -> FileNumber {
        self.number
    }

    /// The manifest's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.log.len()
    }

    fn write(&mut self, record: &[u8]) -> Result<()> {
        let grown = self
            .log
            .len()
            .saturating_add(log_bytes_max(record.len() as u64));
        if grown > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{} would exceed {MAX_MANIFEST_BYTES} bytes; start a new manifest",
                self.log.path().display()
            )));
        }
        self.log.add_record(record)?;
        self.log.sync()
    }
}

/// The exact contents of `CURRENT` naming manifest `number`.
fn current_contents(number: FileNumber) -> String {
    let name = filename::manifest_file_name(number);
    let crc = codec::crc32c(name.as_bytes());
    format!("{name}\nformat={CURRENT_FORMAT_VERSION} crc32c={crc:08x}\n")
}

/// Points `CURRENT` in `dir` at `MANIFEST-<number>`, atomically and durably. The manifest
/// must exist (its first edit already fsynced, as [`ManifestWriter::create`] leaves it).
pub fn set_current(fs: &dyn FileSystem, dir: &Path, number: FileNumber) -> Result<()> {
    let manifest = filename::manifest_path(dir, number);
    if !fs.exists(&manifest) {
        return Err(Error::NotFound { path: manifest });
    }
    let path = dir.join(filename::CURRENT);
    fs::write_atomic(fs, &path, current_contents(number).as_bytes())
}

/// The number of the manifest `CURRENT` in `dir` names. Anything but the exact format
/// (see format-spec/manifest.md) is a corruption error naming `CURRENT`.
pub fn read_current(fs: &dyn FileSystem, dir: &Path) -> Result<FileNumber> {
    let path = dir.join(filename::CURRENT);
    let data = fs.read_file(&path, MAX_CURRENT_BYTES)?;
    parse_current(&data).map_err(|reason| {
        Error::corruption(
            &path,
            0,
            format!("{reason} (contents: {:?})", String::from_utf8_lossy(&data)),
        )
    })
}

fn parse_current(data: &[u8]) -> Result<FileNumber, String> {
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8 text".to_string())?;
    let body = text
        .strip_suffix('\n')
        .ok_or("does not end with a newline")?;
    let (name, check) = body
        .split_once('\n')
        .ok_or("expected two lines: a manifest name and a checksum line")?;
    let number = match filename::parse_file_name(name) {
        Some(FileKind::Manifest(n)) if filename::manifest_file_name(n) == name => n,
        _ => return Err(format!("{name:?} is not a manifest file name")),
    };
    let rest = check
        .strip_prefix("format=")
        .ok_or("second line does not start with \"format=\"")?;
    let (version, crc) = rest
        .split_once(' ')
        .ok_or("second line is not \"format=<version> crc32c=<8 hex digits>\"")?;
    if version != CURRENT_FORMAT_VERSION.to_string() {
        return Err(format!(
            "unsupported CURRENT format {version:?} (this build reads {CURRENT_FORMAT_VERSION})"
        ));
    }
    let hex = crc
        .strip_prefix("crc32c=")
        .filter(|h| h.len() == 8 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or("checksum is not \"crc32c=\" and 8 lowercase hex digits")?;
    let stored = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
    let actual = codec::crc32c(name.as_bytes());
    if stored != actual {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok(number)
}

/// Replays a manifest: all edits in order. A torn last record is dropped (that edit was
/// never acknowledged); any other damage is an error naming the file and offset, and so is
/// a manifest without any edit (its base edit is always written before `CURRENT` names it).
pub fn read_manifest(
    fs: &dyn FileSystem,
    path: &Path,
    number: FileNumber,
) -> Result<Vec<VersionEdit>> {
    read_manifest_with_tail(fs, path, number).map(|(edits, _)| edits)
}

/// [`read_manifest`], also giving the offset of the torn last record it dropped, if any,
/// so that the caller can check that nothing the dropped edit did is missing.
pub fn read_manifest_with_tail(
    fs: &dyn FileSystem,
    path: &Path,
    number: FileNumber,
) -> Result<(Vec<VersionEdit>, Option<u64>)> {
    let data = fs.read_file(path, MAX_MANIFEST_BYTES)?;
    let mut torn = None;
    let mut reader = LogReader::new(&data, path, LogKind::Manifest, Some(number), false)?;
    let mut edits = Vec::new();
    loop {
        match reader.next() {
            LogRead::Record { offset, payload } => {
                edits.push(VersionEdit::decode(&payload, path, offset)?)
            }
            LogRead::Eof => break,
            LogRead::TornTail { offset, reason } => {
                // Every edit is fsynced before anything depends on it, so only the edit
                // being appended when the process died may be torn: cut short by the end
                // of the file. A last record whose bytes are all there but fail their
                // checksum was damaged after it was acknowledged (and the log it retired
                // may be gone): that is corruption, never a torn write.
                if complete_fragment_at(&data, offset) {
                    return Err(Error::corruption(
                        path,
                        offset,
                        format!(
                            "{reason}; the record is complete, so it was damaged after it was written"
                        ),
                    ));
                }
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    reason = %reason,
                    "dropping the torn last record of a manifest"
                );
                torn = Some(offset);
                break;
            }
            LogRead::Corrupt { offset, reason } => {
                return Err(Error::corruption(path, offset, reason))
            }
        }
    }
    if edits.is_empty() {
        return Err(Error::corruption(
            path,
            reader.last_good_offset(),
            "manifest holds no version edit",
        ));
    }
    Ok((edits, torn))
}

/// True when a fragment header at `offset` is not zero-filled and its whole payload lies
/// within `data` (the fragment is complete, whatever its checksum says).
fn complete_fragment_at(data: &[u8], offset: u64) -> bool {
    let Ok(at) = usize::try_from(offset) else {
        return false;
    };
    let Some(header) = data.get(at..at.saturating_add(HEADER_SIZE)) else {
        return false;
    };
    if header.iter().all(|&b| b == 0) {
        return false;
    }
    let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
    at.saturating_add(HEADER_SIZE).saturating_add(len) <= data.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;
    use crate::lsm::types::{make_internal_key, ValueKind};
    use proptest::prelude::*;

    fn ikey(user_key: &[u8], seq: u64) -> Vec<u8> {
        make_internal_key(user_key, SeqNo(seq), ValueKind::Put)
    }

    fn new_file(level: u32, number: u64) -> NewFile {
        NewFile {
            level,
            number: FileNumber(number),
            size: 4096 + number,
            file_crc32c: 0xdead_beef,
            smallest: ikey(b"apple", 9),
            largest: ikey(b"pear", 3),
            smallest_seq: SeqNo(3),
            largest_seq: SeqNo(9),
            num_entries: 100,
        }
    }

    fn base_edit() -> VersionEdit {
        VersionEdit {
            db_id: Some("4f1c2a9e-db".to_string()),
            log_number: Some(FileNumber(4)),
            next_file_number: Some(FileNumber(12)),
            last_sequence: Some(SeqNo(1000)),
            compact_pointers: vec![(1, ikey(b"m", 5))],
            deleted_files: vec![(0, FileNumber(2))],
            new_files: vec![new_file(0, 10), new_file(1, 11)],
        }
    }

    fn small_edit(i: u64) -> VersionEdit {
        VersionEdit {
            last_sequence: Some(SeqNo(1000 + i)),
            new_files: vec![new_file(0, 20 + i)],
            ..VersionEdit::default()
        }
    }

    fn decode_err(bytes: &[u8]) -> String {
        let e = VersionEdit::decode(bytes, Path::new("/db/MANIFEST-000005"), 77).unwrap_err();
        match &e {
            Error::Corruption { path, offset, .. } => {
                assert_eq!(path, Path::new("/db/MANIFEST-000005"));
                assert_eq!(*offset, 77);
            }
            other => panic!("{other:?}"),
        }
        e.to_string()
    }

    /// The worked example of format-spec/manifest.md: MANIFEST-000005 holding one edit.
    const EXAMPLE_MANIFEST_HEX: &str = "\
        14 e6 84 39 15 00 01 54 44 4d 52 4b 4c 4f 47 01 \
        00 00 00 02 05 00 00 00 00 00 00 00 c0 76 5e a4 \
        2e 00 01 02 04 03 0c 04 e8 07 07 00 0a 80 20 ef \
        be ad de 0d 61 70 70 6c 65 01 09 00 00 00 00 00 \
        00 0c 70 65 61 72 01 03 00 00 00 00 00 00 03 09 \
        64";

    #[test]
    fn small_manifest_matches_the_worked_example_in_the_spec() {
        let edit = VersionEdit {
            log_number: Some(FileNumber(4)),
            next_file_number: Some(FileNumber(12)),
            last_sequence: Some(SeqNo(1000)),
            new_files: vec![NewFile {
                size: 4096,
                ..new_file(0, 10)
            }],
            ..VersionEdit::default()
        };
        let dir = tempfile::tempdir().unwrap();
        ManifestWriter::create(&StdFs, dir.path(), FileNumber(5), &edit).unwrap();
        set_current(&StdFs, dir.path(), FileNumber(5)).unwrap();
        let bytes = std::fs::read(filename::manifest_path(dir.path(), FileNumber(5))).unwrap();
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let expected: Vec<&str> = EXAMPLE_MANIFEST_HEX.split_whitespace().collect();
        assert_eq!(hex, expected);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("CURRENT")).unwrap(),
            "MANIFEST-000005\nformat=1 crc32c=b949be95\n"
        );
    }

    #[test]
    fn edit_round_trips() {
        let mut buf = Vec::new();
        base_edit().encode(&mut buf);
        let back = VersionEdit::decode(&buf, Path::new("m"), 0).unwrap();
        assert_eq!(back, base_edit());
        let mut empty = Vec::new();
        VersionEdit::default().encode(&mut empty);
        assert!(empty.is_empty());
        assert_eq!(
            VersionEdit::decode(&empty, Path::new("m"), 0).unwrap(),
            VersionEdit::default()
        );
    }

    #[test]
    fn decode_rejects_what_the_format_forbids() {
        let encoded = |e: VersionEdit| {
            let mut b = Vec::new();
            e.encode(&mut b);
            b
        };
        assert!(decode_err(&[99]).contains("unknown tag 99"));
        let level16 = VersionEdit {
            deleted_files: vec![(16, FileNumber(1))],
            ..VersionEdit::default()
        };
        assert!(decode_err(&encoded(level16)).contains("level"));
        let short_key = VersionEdit {
            compact_pointers: vec![(1, b"short".to_vec())],
            ..VersionEdit::default()
        };
        assert!(decode_err(&encoded(short_key)).contains("internal-key trailer"));
        let reversed = VersionEdit {
            new_files: vec![NewFile {
                smallest: ikey(b"z", 1),
                largest: ikey(b"a", 1),
                ..new_file(0, 1)
            }],
            ..VersionEdit::default()
        };
        assert!(decode_err(&encoded(reversed)).contains("sorts after"));
        let seqs = VersionEdit {
            new_files: vec![NewFile {
                smallest_seq: SeqNo(5),
                largest_seq: SeqNo(4),
                ..new_file(0, 1)
            }],
            ..VersionEdit::default()
        };
        assert!(decode_err(&encoded(seqs)).contains("smallest sequence"));
        let mut twice = encoded(VersionEdit {
            log_number: Some(FileNumber(1)),
            ..VersionEdit::default()
        });
        twice.extend_from_slice(&twice.clone());
        assert!(decode_err(&twice).contains("twice"));
        let mut big_seq = vec![tag::LAST_SEQUENCE as u8];
        codec::put_varint(&mut big_seq, SeqNo::MAX.0 + 1);
        assert!(decode_err(&big_seq).contains("last sequence"));
        let mut huge_key = vec![tag::COMPACT_POINTER as u8, 0];
        codec::put_varint(&mut huge_key, 1 << 40);
        assert!(decode_err(&huge_key).contains("exceeds the limit"));
        let full = encoded(base_edit());
        for cut in 0..full.len() {
            // A cut on a field boundary is a smaller valid edit; elsewhere it is an error.
            let back = VersionEdit::decode(&full[..cut], Path::new("m"), 0).ok();
            assert_ne!(back, Some(base_edit()), "cut at {cut}");
        }
    }

    #[test]
    fn manifest_round_trips_and_current_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            ManifestWriter::create(&StdFs, dir.path(), FileNumber(5), &base_edit()).unwrap();
        for i in 0..3 {
            w.append(&small_edit(i)).unwrap();
        }
        assert_eq!(w.number(), FileNumber(5));
        let path = filename::manifest_path(dir.path(), FileNumber(5));
        assert_eq!(w.file_size(), std::fs::metadata(&path).unwrap().len());
        set_current(&StdFs, dir.path(), FileNumber(5)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("CURRENT")).unwrap(),
            format!(
                "MANIFEST-000005\nformat=1 crc32c={:08x}\n",
                codec::crc32c(b"MANIFEST-000005")
            )
        );
        assert_eq!(read_current(&StdFs, dir.path()).unwrap(), FileNumber(5));
        let edits = read_manifest(&StdFs, &path, FileNumber(5)).unwrap();
        let expected: Vec<_> = std::iter::once(base_edit())
            .chain((0..3).map(small_edit))
            .collect();
        assert_eq!(edits, expected);
    }

    #[test]
    fn set_current_refuses_a_missing_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let e = set_current(&StdFs, dir.path(), FileNumber(9)).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert!(!dir.path().join("CURRENT").exists());
    }

    #[test]
    fn damaged_current_is_rejected_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("CURRENT");
        let good = current_contents(FileNumber(5));
        let mut damaged: Vec<Vec<u8>> = Vec::new();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone().into_bytes();
                b[i] ^= 1 << bit;
                damaged.push(b);
            }
        }
        for cut in 0..good.len() {
            damaged.push(good.as_bytes()[..cut].to_vec());
        }
        damaged.push(format!("{good}extra\n").into_bytes());
        damaged.push(good.to_uppercase().into_bytes());
        damaged.push(b"MANIFEST-000005\n".to_vec()); // the unversioned, unchecked form
        let crc5 = codec::crc32c(b"MANIFEST-5");
        damaged.push(format!("MANIFEST-5\nformat=1 crc32c={crc5:08x}\n").into_bytes());
        let crc = codec::crc32c(b"MANIFEST-000005");
        damaged.push(format!("MANIFEST-000005\nformat=2 crc32c={crc:08x}\n").into_bytes());
        damaged.push(vec![b'x'; 200]);
        for bad in damaged {
            std::fs::write(&current, &bad).unwrap();
            let e = read_current(&StdFs, dir.path()).unwrap_err();
            assert!(e.is_corruption(), "{bad:?}: {e}");
            assert!(e.to_string().contains(current.to_str().unwrap()), "{e}");
        }
        std::fs::write(&current, &good).unwrap();
        assert_eq!(read_current(&StdFs, dir.path()).unwrap(), FileNumber(5));
    }

    #[test]
    fn missing_current_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_current(&StdFs, dir.path()).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
    }

    #[test]
    fn torn_last_edit_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            ManifestWriter::create(&StdFs, dir.path(), FileNumber(5), &base_edit()).unwrap();
        w.append(&small_edit(0)).unwrap();
        let before_last = w.file_size();
        w.append(&small_edit(1)).unwrap();
        let path = filename::manifest_path(dir.path(), FileNumber(5));
        let full = std::fs::read(&path).unwrap();
        for cut in before_last as usize..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let edits = read_manifest(&StdFs, &path, FileNumber(5)).unwrap();
            assert_eq!(edits, vec![base_edit(), small_edit(0)], "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bit_in_an_edit_is_an_error_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            ManifestWriter::create(&StdFs, dir.path(), FileNumber(5), &base_edit()).unwrap();
        let second_at = w.file_size();
        w.append(&small_edit(0)).unwrap();
        w.append(&small_edit(1)).unwrap();
        let path = filename::manifest_path(dir.path(), FileNumber(5));
        let mut data = std::fs::read(&path).unwrap();
        data[second_at as usize + HEADER_SIZE + 3] ^= 0x20;
        std::fs::write(&path, &data).unwrap();
        match read_manifest(&StdFs, &path, FileNumber(5)).unwrap_err() {
            Error::Corruption {
                path: p, offset, ..
            } => {
                assert_eq!((p, offset), (path, second_at));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn manifest_without_edits_or_of_another_kind_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = filename::manifest_path(dir.path(), FileNumber(5));
        let mut log = LogWriter::new(
            StdFs.create(&path).unwrap(),
            LogKind::Manifest,
            FileNumber(5),
        )
        .unwrap();
        log.sync().unwrap();
        let e = read_manifest(&StdFs, &path, FileNumber(5)).unwrap_err();
        assert!(e.to_string().contains("no version edit"), "{e}");
        let mut wal =
            LogWriter::new(StdFs.create(&path).unwrap(), LogKind::Wal, FileNumber(5)).unwrap();
        let mut b = Vec::new();
        base_edit().encode(&mut b);
        wal.add_record(&b).unwrap();
        wal.sync().unwrap();
        let e = read_manifest(&StdFs, &path, FileNumber(5)).unwrap_err();
        assert!(e.to_string().contains("expected a manifest"), "{e}");
        std::fs::write(&path, b"").unwrap();
        assert!(read_manifest(&StdFs, &path, FileNumber(5))
            .unwrap_err()
            .is_corruption());
    }

    #[test]
    fn invalid_edit_writes_nothing_and_disables_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let bad = VersionEdit {
            deleted_files: vec![(MAX_LEVELS, FileNumber(1))],
            ..VersionEdit::default()
        };
        let e = ManifestWriter::create(&StdFs, dir.path(), FileNumber(5), &bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(!filename::manifest_path(dir.path(), FileNumber(5)).exists());

        let mut w =
            ManifestWriter::create(&StdFs, dir.path(), FileNumber(6), &base_edit()).unwrap();
        let size = w.file_size();
        let e = w.append(&bad).unwrap_err();
        assert_eq!(w.file_size(), size);
        let again = w.append(&small_edit(0)).unwrap_err();
        assert_eq!(again.to_string(), e.to_string());
    }

    fn arb_ikey() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(any::<u8>(), 0..24),
            0..=SeqNo::MAX.0,
            any::<bool>(),
        )
            .prop_map(|(k, s, put)| {
                let kind = if put {
                    ValueKind::Put
                } else {
                    ValueKind::Delete
                };
                make_internal_key(&k, SeqNo(s), kind)
            })
    }

    fn arb_new_file() -> impl Strategy<Value = NewFile> {
        (
            (0..MAX_LEVELS, any::<u64>(), any::<u64>(), any::<u32>()),
            (arb_ikey(), arb_ikey()),
            (0..=SeqNo::MAX.0, 0..=SeqNo::MAX.0, any::<u64>()),
        )
            .prop_map(|((level, number, size, crc), (a, b), (s1, s2, n))| {
                let (smallest, largest) = if compare_internal_keys(&a, &b).is_gt() {
                    (b, a)
                } else {
                    (a, b)
                };
                NewFile {
                    level,
                    number: FileNumber(number),
                    size,
                    file_crc32c: crc,
                    smallest,
                    largest,
                    smallest_seq: SeqNo(s1.min(s2)),
                    largest_seq: SeqNo(s1.max(s2)),
                    num_entries: n,
                }
            })
    }

    fn arb_edit() -> impl Strategy<Value = VersionEdit> {
        (
            proptest::option::of("[a-z0-9-]{1,40}"),
            proptest::option::of(any::<u64>().prop_map(FileNumber)),
            proptest::option::of(any::<u64>().prop_map(FileNumber)),
            proptest::option::of((0..=SeqNo::MAX.0).prop_map(SeqNo)),
            proptest::collection::vec((0..MAX_LEVELS, arb_ikey()), 0..4),
            proptest::collection::vec((0..MAX_LEVELS, any::<u64>().prop_map(FileNumber)), 0..6),
            proptest::collection::vec(arb_new_file(), 0..6),
        )
            .prop_map(|(db_id, log, next, last, cps, dels, news)| VersionEdit {
                db_id,
                log_number: log,
                next_file_number: next,
                last_sequence: last,
                compact_pointers: cps,
                deleted_files: dels,
                new_files: news,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_edits_round_trip(edit in arb_edit()) {
            let buf = encode_checked(&edit).unwrap();
            prop_assert_eq!(VersionEdit::decode(&buf, Path::new("m"), 0).unwrap(), edit);
        }

        #[test]
        fn random_bytes_never_panic_the_edit_decoder(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = VersionEdit::decode(&bytes, Path::new("m"), 0);
        }
    }
}
