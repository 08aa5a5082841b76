//! Reads a log back: checks the header record, reassembles fragments into records, and
//! tells a torn tail (an unacknowledged write cut by a crash) from real corruption.
//!
//! The reader works on the whole file in memory (read or memory-mapped by the caller) and
//! never panics, whatever the bytes: every length is checked against the block and the
//! file before it is used, and a reassembled record can never grow larger than the file.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::{
    decode_header_payload, fragment_crc, FragmentType, LogKind, BLOCK_SIZE, HEADER_PAYLOAD_LEN,
    HEADER_RECORD_LEN, HEADER_SIZE,
};
use crate::codec;
use crate::error::{Error, Result};
use crate::lsm::types::FileNumber;

/// Bytes of crc32c work the reader spends, after finding damage, searching the rest of the
/// file for a valid fragment (which would make the damage corruption rather than a torn
/// tail). Random bytes cost about 32 bytes of crc per byte scanned, so this covers a damaged
/// tail of several megabytes; if the budget runs out the damage is reported as corruption,
/// the answer that loses nothing silently.
pub const RESYNC_SCAN_CRC_BUDGET_BYTES: u64 = 256 << 20;

/// One step of reading a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRead<'a> {
    /// A whole record, whose first fragment starts at `offset`.
    Record {
        /// File offset of the record's first fragment header.
        offset: u64,
        /// The record's bytes (borrowed when the record is one fragment).
        payload: Cow<'a, [u8]>,
    },
    /// The end of the log: the file ends, or only zeros follow.
    Eof,
    /// Damage after which no valid fragment follows up to the end of the file (a write
    /// that was torn by a crash; it was never acknowledged).
    TornTail {
        /// File offset where the damage starts.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Damage followed by valid data: real corruption.
    Corrupt {
        /// File offset where the damage starts.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// What the fragment layer found at the read position.
enum Step<'a> {
    Fragment {
        offset: usize,
        kind: FragmentType,
        payload: &'a [u8],
    },
    /// The file ends here, or only zeros follow.
    End,
    /// Bytes at `offset` are not a valid fragment; `scan_from` is where the search for a
    /// later valid fragment starts.
    Damage {
        offset: usize,
        reason: String,
        scan_from: usize,
    },
}

/// Reads the records of one log file held in memory.
#[derive(Debug)]
pub struct LogReader<'a> {
    data: &'a [u8],
    path: PathBuf,
    number: FileNumber,
    /// Offset of the next fragment header to read.
    pos: usize,
    /// Offset just after the last record returned (or after the header record).
    last_good_offset: usize,
    /// Set after Eof, TornTail or Corrupt: every later call returns Eof.
    done: bool,
    resync_budget_bytes: u64,
}

impl<'a> LogReader<'a> {
    /// Validates the header record. `data` is the whole file (the caller reads or mmaps it).
    ///
    /// A file shorter than the header record, or holding only zeros, or whose damaged
    /// header record is followed by zeros only (a crash while the header was copied into
    /// a presized file), is an empty log when `allow_empty` is set (a crash right after
    /// the file was created) and an error otherwise. Every other problem with the header
    /// record (checksum, magic, version, kind other than `kind`, number other than
    /// `expected_number`) is an error.
    pub fn new(
        data: &'a [u8],
        path: &Path,
        kind: LogKind,
        expected_number: Option<FileNumber>,
        allow_empty: bool,
    ) -> Result<Self> {
        let mut reader = LogReader {
            data,
            path: path.to_path_buf(),
            number: expected_number.unwrap_or_default(),
            pos: 0,
            last_good_offset: 0,
            done: false,
            resync_budget_bytes: RESYNC_SCAN_CRC_BUDGET_BYTES,
        };
        let unwritten = data.len() < HEADER_RECORD_LEN || data.iter().all(|&b| b == 0);
        if unwritten {
            if allow_empty {
                return Ok(reader.into_empty());
            }
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "{} of {} bytes holds no header record ({HEADER_RECORD_LEN} bytes)",
                    kind.name(),
                    data.len()
                ),
            ));
        }
        let bad =
            |reason: String| Error::corruption(path, 0, format!("bad header record: {reason}"));
        let payload = match reader.read_fragment() {
            Step::Fragment {
                kind: FragmentType::Full,
                payload,
                ..
            } => payload,
            Step::Fragment { kind: t, .. } => {
                return Err(bad(format!("a {t:?} fragment instead of a FULL one")))
            }
            Step::End => return Err(bad("only zeros".to_string())),
            Step::Damage { reason, .. } => {
                // A presized (zero-filled) log whose header record was cut short by a
                // crash while it was being copied in: the file's counterpart of one shorter
                // than the header record. Nothing after the header was ever written.
                let torn_header = data[HEADER_RECORD_LEN..].iter().all(|&b| b == 0);
                if allow_empty && torn_header {
                    return Ok(reader.into_empty());
                }
                return Err(bad(reason));
            }
        };
        if payload.len() != HEADER_PAYLOAD_LEN {
            return Err(bad(format!(
                "{} bytes, expected {HEADER_PAYLOAD_LEN}",
                payload.len()
            )));
        }
        let (found_kind, number) = decode_header_payload(payload).map_err(bad)?;
        if found_kind != kind {
            return Err(bad(format!(
                "the file is a {}, expected a {}",
                found_kind.name(),
                kind.name()
            )));
        }
        if let Some(expected) = expected_number {
            if number != expected {
                return Err(bad(format!(
                    "it names file number {number}, expected {expected}"
                )));
            }
        }
        reader.number = number;
        reader.last_good_offset = reader.pos;
        Ok(reader)
    }

    /// This reader as the reader of an empty log: every call to `next` returns Eof.
    fn into_empty(mut self) -> Self {
        self.pos = self.data.len();
        self.done = true;
        self
    }

    /// The next record, or why there is none. Never panics, whatever the bytes.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> LogRead<'a> {
        if self.done {
            return LogRead::Eof;
        }
        // (offset of the FIRST fragment, bytes so far) while a record is being reassembled.
        // The buffer only ever holds bytes copied out of `data`, so it stays below its size.
        let mut partial: Option<(usize, Vec<u8>)> = None;
        loop {
            match self.read_fragment() {
                Step::End => {
                    self.done = true;
                    return match partial {
                        None => LogRead::Eof,
                        Some((start, _)) => LogRead::TornTail {
                            offset: start as u64,
                            reason: format!(
                                "the record starting at offset {start} has no LAST fragment \
                                 before the end of the file"
                            ),
                        },
                    };
                }
                Step::Damage {
                    offset,
                    reason,
                    scan_from,
                } => {
                    let reason = match &partial {
                        Some((start, _)) => {
                            format!("{reason} (in the record starting at offset {start})")
                        }
                        None => reason,
                    };
                    return self.damage(offset, reason, scan_from);
                }
                Step::Fragment {
                    offset,
                    kind,
                    payload,
                } => match (kind, partial.as_mut()) {
                    (FragmentType::Full, None) => {
                        self.last_good_offset = self.pos;
                        return LogRead::Record {
                            offset: offset as u64,
                            payload: Cow::Borrowed(payload),
                        };
                    }
                    (FragmentType::First, None) => {
                        partial = Some((offset, payload.to_vec()));
                    }
                    (FragmentType::Middle, Some((_, buf))) => buf.extend_from_slice(payload),
                    (FragmentType::Last, Some((start, buf))) => {
                        buf.extend_from_slice(payload);
                        let record = LogRead::Record {
                            offset: *start as u64,
                            payload: Cow::Owned(std::mem::take(buf)),
                        };
                        self.last_good_offset = self.pos;
                        return record;
                    }
                    (FragmentType::Full | FragmentType::First, Some((start, _))) => {
                        let start = *start;
                        return self.damage(
                            start,
                            format!(
                                "the record starting at offset {start} has no LAST fragment: \
                                 a {kind:?} fragment follows at offset {offset}"
                            ),
                            start.saturating_add(1),
                        );
                    }
                    (FragmentType::Middle | FragmentType::Last, None) => {
                        return self.damage(
                            offset,
                            format!("a {kind:?} fragment without a FIRST fragment"),
                            self.pos,
                        );
                    }
                },
            }
        }
    }

    /// The file number named by the header record (the expected number, or 0, for an
    /// empty log).
    pub fn number(&self) -> FileNumber {
        self.number
    }

    /// Offset just after the last good record returned (after the header record before
    /// the first one; 0 for an empty log).
    pub fn last_good_offset(&self) -> u64 {
        self.last_good_offset as u64
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends reading at damage found at `offset`, classifying it.
    fn damage(&mut self, offset: usize, reason: String, scan_from: usize) -> LogRead<'a> {
        self.done = true;
        self.pos = self.data.len();
        if self.valid_fragment_after(scan_from) {
            LogRead::Corrupt {
                offset: offset as u64,
                reason,
            }
        } else {
            LogRead::TornTail {
                offset: offset as u64,
                reason,
            }
        }
    }

    /// True when a valid fragment starts anywhere at or after `from` (or when the search
    /// budget runs out before that is settled).
    fn valid_fragment_after(&mut self, from: usize) -> bool {
        let data = self.data;
        let mut p = from;
        while p < data.len() {
            let in_block = p % BLOCK_SIZE;
            if in_block + HEADER_SIZE > BLOCK_SIZE {
                p = p.saturating_add(BLOCK_SIZE - in_block);
                continue;
            }
            let Some(header) = header_at(data, p) else {
                return false; // too few bytes left for a header
            };
            p += 1;
            if FragmentType::from_u8(header.kind).is_none() {
                continue;
            }
            let len = usize::from(header.len);
            let start = p - 1 + HEADER_SIZE;
            if in_block + HEADER_SIZE + len > BLOCK_SIZE {
                continue;
            }
            let Some(payload) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
                continue;
            };
            let cost = len as u64 + 1;
            if cost > self.resync_budget_bytes {
                return true;
            }
            self.resync_budget_bytes -= cost;
            if fragment_crc(header.kind, payload) == header.crc {
                return true;
            }
        }
        false
    }

    /// Reads the fragment at the read position and advances past it.
    fn read_fragment(&mut self) -> Step<'a> {
        let data = self.data;
        loop {
            let pos = self.pos;
            let Some(rest) = data.get(pos..) else {
                return Step::End;
            };
            if rest.is_empty() {
                return Step::End;
            }
            let left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE;
            if left_in_block < HEADER_SIZE {
                let trailer = rest.get(..left_in_block).unwrap_or(rest);
                if trailer.iter().any(|&b| b != 0) {
                    return Step::Damage {
                        offset: pos,
                        reason: "non-zero bytes in a block trailer".to_string(),
                        scan_from: pos + 1,
                    };
                }
                self.pos = pos + trailer.len();
                continue;
            }
            if rest.iter().take(HEADER_SIZE).all(|&b| b == 0) && rest.iter().all(|&b| b == 0) {
                return Step::End;
            }
            let damage = |reason: String| Step::Damage {
                offset: pos,
                reason,
                scan_from: pos + 1,
            };
            let Some(header) = header_at(data, pos) else {
                return damage(format!(
                    "fragment header cut short: {} of {HEADER_SIZE} bytes before the end of the file",
                    rest.len()
                ));
            };
            let Some(kind) = FragmentType::from_u8(header.kind) else {
                return damage(format!("unknown fragment type {}", header.kind));
            };
            let len = usize::from(header.len);
            if HEADER_SIZE + len > left_in_block {
                return damage(format!(
                    "fragment length {len} runs past the end of its block ({} bytes left)",
                    left_in_block - HEADER_SIZE
                ));
            }
            let start = pos + HEADER_SIZE;
            let Some(payload) = data.get(start..start + len) else {
                return damage(format!(
                    "fragment length {len} runs past the end of the file ({} bytes left)",
                    data.len().saturating_sub(start)
                ));
            };
            if fragment_crc(header.kind, payload) != header.crc {
                return damage(format!("checksum mismatch in a {kind:?} fragment"));
            }
            self.pos = start + len;
            return Step::Fragment {
                offset: pos,
                kind,
                payload,
            };
        }
    }
}

/// The three fields of a fragment header.
struct RawHeader {
    crc: u32,
    len: u16,
    kind: u8,
}

fn header_at(data: &[u8], pos: usize) -> Option<RawHeader> {
    let h = data.get(pos..pos.checked_add(HEADER_SIZE)?)?;
    let crc = codec::get_u32(h, super::CRC_OFFSET)?;
    let len_bytes = h.get(super::LENGTH_OFFSET..super::TYPE_OFFSET)?;
    let len = u16::from_le_bytes([*len_bytes.first()?, *len_bytes.get(1)?]);
    let kind = *h.get(super::TYPE_OFFSET)?;
    Some(RawHeader { crc, len, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, StdFs};
    use crate::lsm::wal::{encode_header_payload, LogWriter, FORMAT_VERSION};
    use proptest::prelude::*;

    const PATH: &str = "/db/000007.wal";

    /// Writes a WAL numbered 7 holding `records` and returns its bytes.
    fn write_log(records: &[Vec<u8>]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000007.wal");
        let mut w =
            LogWriter::new(StdFs.create(&path).unwrap(), LogKind::Wal, FileNumber(7)).unwrap();
        for r in records {
            w.add_record(r).unwrap();
        }
        w.sync().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, w.len());
        data
    }

    fn open(data: &[u8]) -> LogReader<'_> {
        LogReader::new(
            data,
            Path::new(PATH),
            LogKind::Wal,
            Some(FileNumber(7)),
            false,
        )
        .unwrap()
    }

    /// Every record up to the first non-record step, with offsets, and that step.
    fn read_all(data: &[u8]) -> (Vec<(u64, Vec<u8>)>, LogRead<'static>) {
        let mut r = open(data);
        let mut out = Vec::new();
        loop {
            match r.next() {
                LogRead::Record { offset, payload } => out.push((offset, payload.into_owned())),
                end => {
                    let end = match end {
                        LogRead::Eof => LogRead::Eof,
                        LogRead::TornTail { offset, reason } => {
                            LogRead::TornTail { offset, reason }
                        }
                        LogRead::Corrupt { offset, reason } => LogRead::Corrupt { offset, reason },
                        LogRead::Record { .. } => unreachable!(),
                    };
                    assert_eq!(r.next(), LogRead::Eof, "reading stops after {end:?}");
                    return (out, end);
                }
            }
        }
    }

    fn payloads(records: &[(u64, Vec<u8>)]) -> Vec<Vec<u8>> {
        records.iter().map(|(_, p)| p.clone()).collect()
    }

    /// One hand-made fragment.
    fn fragment(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = fragment_crc(kind, payload).to_le_bytes().to_vec();
        f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        f.push(kind);
        f.extend_from_slice(payload);
        f
    }

    fn header_record() -> Vec<u8> {
        fragment(1, &encode_header_payload(LogKind::Wal, FileNumber(7)))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn small_block_spanning_and_multi_megabyte_records_round_trip() {
        let records = vec![
            b"foo".to_vec(),
            Vec::new(),
            pattern(BLOCK_SIZE + 1000, 1),
            b"bar".to_vec(),
            pattern(3 * 1024 * 1024 + 17, 2),
            pattern(10, 3),
        ];
        let data = write_log(&records);
        let (read, end) = read_all(&data);
        assert_eq!(end, LogRead::Eof);
        assert_eq!(payloads(&read), records);
        assert_eq!(read[0].0, HEADER_RECORD_LEN as u64);
        let mut r = open(&data);
        while let LogRead::Record { .. } = r.next() {}
        assert_eq!(r.last_good_offset(), data.len() as u64);
        assert_eq!(r.number(), FileNumber(7));
    }

    #[test]
    fn record_ending_exactly_at_block_boundary_leaves_no_trailer() {
        let fill = BLOCK_SIZE - HEADER_RECORD_LEN - HEADER_SIZE;
        let records = vec![pattern(fill, 4), b"next".to_vec()];
        let data = write_log(&records);
        assert_eq!(data.len(), BLOCK_SIZE + HEADER_SIZE + 4);
        let (read, end) = read_all(&data);
        assert_eq!(end, LogRead::Eof);
        assert_eq!(payloads(&read), records);
        assert_eq!(read[1].0, BLOCK_SIZE as u64);
    }

    #[test]
    fn block_tail_shorter_than_a_header_is_zero_filled_and_skipped() {
        let fill = BLOCK_SIZE - HEADER_RECORD_LEN - HEADER_SIZE - 3;
        let records = vec![pattern(fill, 5), b"next".to_vec()];
        let data = write_log(&records);
        assert_eq!(&data[BLOCK_SIZE - 3..BLOCK_SIZE], &[0, 0, 0]);
        let (read, end) = read_all(&data);
        assert_eq!(end, LogRead::Eof);
        assert_eq!(payloads(&read), records);
        assert_eq!(read[1].0, BLOCK_SIZE as u64);
    }

    #[test]
    fn exactly_a_header_left_in_a_block_holds_an_empty_first_fragment() {
        let fill = BLOCK_SIZE - HEADER_RECORD_LEN - 2 * HEADER_SIZE;
        let records = vec![pattern(fill, 6), b"spills".to_vec()];
        let data = write_log(&records);
        assert_eq!(data[BLOCK_SIZE - 1], FragmentType::First as u8);
        let (read, end) = read_all(&data);
        assert_eq!(end, LogRead::Eof);
        assert_eq!(payloads(&read), records);
        assert_eq!(read[1].0, (BLOCK_SIZE - HEADER_SIZE) as u64);
    }

    #[test]
    fn zeros_running_to_the_end_of_the_file_are_eof() {
        let records = vec![b"a".to_vec(), pattern(BLOCK_SIZE, 7)];
        let mut data = write_log(&records);
        data.extend(std::iter::repeat_n(0, 2 * BLOCK_SIZE + 5));
        let (read, end) = read_all(&data);
        assert_eq!((payloads(&read), end), (records, LogRead::Eof));
    }

    #[test]
    fn torn_tail_at_every_byte_of_the_last_record_keeps_every_earlier_record() {
        // The last record starts 100 bytes before the end of the first block and spans it.
        let first_len = BLOCK_SIZE - 100 - HEADER_RECORD_LEN - HEADER_SIZE;
        let records = vec![pattern(first_len, 8), pattern(300, 9)];
        let data = write_log(&records);
        let last_start = BLOCK_SIZE - 100;
        for cut in last_start..data.len() {
            let (read, end) = read_all(&data[..cut]);
            assert_eq!(payloads(&read), records[..1], "cut at {cut}");
            match end {
                LogRead::Eof => {}
                LogRead::TornTail { offset, .. } => {
                    assert!(offset >= last_start as u64, "cut at {cut}: {offset}")
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let (read, end) = read_all(&data);
        assert_eq!((payloads(&read), end), (records, LogRead::Eof));
    }

    #[test]
    fn flipped_bit_in_a_middle_record_is_corrupt_at_its_offset() {
        let records = vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()];
        let mut data = write_log(&records);
        let (good, _) = read_all(&data);
        let two_at = good[1].0;
        data[two_at as usize + HEADER_SIZE + 1] ^= 0x10;
        let (read, end) = read_all(&data);
        assert_eq!(payloads(&read), records[..1]);
        match end {
            LogRead::Corrupt { offset, reason } => {
                assert_eq!(offset, two_at);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flipped_bit_in_the_last_record_is_a_torn_tail() {
        let records = vec![b"one".to_vec(), b"two".to_vec()];
        let mut data = write_log(&records);
        let n = data.len();
        data[n - 1] ^= 1;
        let (read, end) = read_all(&data);
        assert_eq!(payloads(&read), records[..1]);
        assert!(matches!(end, LogRead::TornTail { .. }), "{end:?}");
    }

    #[test]
    fn flipped_bit_in_the_header_record_is_an_error() {
        let data = write_log(&[b"x".to_vec()]);
        for i in 0..HEADER_RECORD_LEN {
            let mut bad = data.clone();
            bad[i] ^= 0x04;
            let e = LogReader::new(&bad, Path::new(PATH), LogKind::Wal, None, true).unwrap_err();
            match e {
                Error::Corruption { path, offset, .. } => {
                    assert_eq!((path.to_str().unwrap(), offset), (PATH, 0))
                }
                other => panic!("byte {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn header_record_cut_short_in_presized_zeros_is_empty_only_when_allowed() {
        let data = write_log(&[]);
        for cut in 1..HEADER_RECORD_LEN {
            let mut torn = vec![0u8; 4096];
            torn[..cut].copy_from_slice(&data[..cut]);
            if torn.iter().all(|&b| b == 0) || data[cut..HEADER_RECORD_LEN].iter().all(|&b| b == 0)
            {
                continue; // nothing written, or the bytes cut off were zeros anyway
            }
            let mut r = LogReader::new(&torn, Path::new(PATH), LogKind::Wal, None, true)
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(r.next(), LogRead::Eof, "cut at {cut}");
            assert_eq!(r.last_good_offset(), 0);
            let e = LogReader::new(&torn, Path::new(PATH), LogKind::Wal, None, false).unwrap_err();
            assert!(e.is_corruption() && e.to_string().contains(PATH), "{e}");
            // Anything written after the damaged header makes it damage, not a torn write.
            torn[HEADER_RECORD_LEN + 100] = 1;
            let e = LogReader::new(&torn, Path::new(PATH), LogKind::Wal, None, true).unwrap_err();
            assert!(e.is_corruption(), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn wal_read_as_manifest_is_an_error() {
        let data = write_log(&[b"x".to_vec()]);
        let e = LogReader::new(&data, Path::new(PATH), LogKind::Manifest, None, true).unwrap_err();
        assert!(e.to_string().contains("expected a manifest"), "{e}");
    }

    #[test]
    fn header_naming_another_file_number_is_an_error() {
        let data = write_log(&[]);
        let e = LogReader::new(
            &data,
            Path::new(PATH),
            LogKind::Wal,
            Some(FileNumber(8)),
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected 000008"), "{e}");
        let r = LogReader::new(&data, Path::new(PATH), LogKind::Wal, None, false).unwrap();
        assert_eq!(r.number(), FileNumber(7));
    }

    #[test]
    fn future_format_version_is_rejected() {
        let mut payload = encode_header_payload(LogKind::Wal, FileNumber(7));
        payload[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let data = fragment(1, &payload);
        let e = LogReader::new(&data, Path::new(PATH), LogKind::Wal, None, true).unwrap_err();
        assert!(
            e.to_string().contains("unsupported log format version 2"),
            "{e}"
        );
    }

    #[test]
    fn short_or_zeroed_file_is_empty_only_when_allowed() {
        let data = write_log(&[]);
        for bytes in [&[][..], &data[..HEADER_RECORD_LEN - 1], &[0u8; 100][..]] {
            let mut r = LogReader::new(bytes, Path::new(PATH), LogKind::Wal, None, true).unwrap();
            assert_eq!(r.next(), LogRead::Eof);
            assert_eq!(r.last_good_offset(), 0);
            let e = LogReader::new(bytes, Path::new(PATH), LogKind::Wal, None, false).unwrap_err();
            assert!(e.is_corruption() && e.to_string().contains(PATH), "{e}");
        }
        let mut r = open(&data);
        assert_eq!(r.next(), LogRead::Eof);
        assert_eq!(r.last_good_offset(), HEADER_RECORD_LEN as u64);
    }

    #[test]
    fn orphan_fragments_and_unfinished_records_are_damage() {
        let h = header_record();
        let full = fragment(1, b"ok");
        let cases: Vec<(Vec<Vec<u8>>, bool)> = vec![
            // LAST without FIRST at the end: nothing valid follows.
            (vec![fragment(4, b"tail")], false),
            // MIDDLE without FIRST, then a valid record.
            (vec![fragment(3, b"mid"), full.clone()], true),
            // FIRST interrupted by a FULL record.
            (vec![fragment(2, b"first"), full.clone()], true),
            // FIRST with no LAST before the end of the file.
            (vec![fragment(2, b"first"), fragment(3, b"mid")], false),
            // Unknown fragment type, then a valid record.
            (vec![fragment(9, b"???"), full.clone()], true),
        ];
        for (i, (frags, corrupt)) in cases.into_iter().enumerate() {
            let data: Vec<u8> = std::iter::once(h.clone()).chain(frags).flatten().collect();
            let (read, end) = read_all(&data);
            assert!(read.is_empty(), "case {i}");
            match end {
                LogRead::Corrupt { offset, .. } if corrupt => {
                    assert_eq!(offset, HEADER_RECORD_LEN as u64, "case {i}")
                }
                LogRead::TornTail { offset, .. } if !corrupt => {
                    assert_eq!(offset, HEADER_RECORD_LEN as u64, "case {i}")
                }
                other => panic!("case {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn length_running_past_the_block_is_damage() {
        let mut frag = fragment(1, b"abc");
        frag[4..6].copy_from_slice(&u16::MAX.to_le_bytes());
        let mut data = header_record();
        data.extend_from_slice(&frag);
        let (_, end) = read_all(&data);
        match end {
            LogRead::TornTail { reason, .. } => {
                assert!(reason.contains("past the end"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_zero_block_trailer_is_damage() {
        let fill = BLOCK_SIZE - HEADER_RECORD_LEN - HEADER_SIZE - 3;
        let mut data = write_log(&[pattern(fill, 5), b"next".to_vec()]);
        data[BLOCK_SIZE - 2] = 1;
        let (read, end) = read_all(&data);
        assert_eq!(read.len(), 1);
        assert!(
            matches!(end, LogRead::Corrupt { offset, .. } if offset == (BLOCK_SIZE - 3) as u64),
            "{end:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_never_panic_the_reader(
            bytes in proptest::collection::vec(any::<u8>(), 0..40_000),
            with_header in any::<bool>(),
        ) {
            let data = if with_header {
                let mut d = header_record();
                d.extend_from_slice(&bytes);
                d
            } else {
                bytes
            };
            if let Ok(mut r) = LogReader::new(&data, Path::new(PATH), LogKind::Wal, None, true) {
                for _ in 0..data.len() + 2 {
                    if !matches!(r.next(), LogRead::Record { .. }) {
                        break;
                    }
                }
                prop_assert!(r.last_good_offset() <= data.len() as u64);
            }
        }

        #[test]
        fn mutated_logs_never_panic_and_only_return_original_records(
            sizes in proptest::collection::vec(0usize..20_000, 1..8),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), 1u8..=255), 0..4),
            zero_run in proptest::option::of((any::<proptest::sample::Index>(), 1usize..300)),
            cut in proptest::option::of(any::<proptest::sample::Index>()),
        ) {
            let records: Vec<Vec<u8>> =
                sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
            let mut data = write_log(&records);
            let body = HEADER_RECORD_LEN..data.len();
            for (at, mask) in flips {
                let i = body.start + at.index(body.len());
                data[i] ^= mask;
            }
            if let Some((at, len)) = zero_run {
                let i = body.start + at.index(body.len());
                let end = (i + len).min(data.len());
                data[i..end].fill(0);
            }
            if let Some(at) = cut {
                data.truncate(body.start + at.index(body.len()));
            }
            let (read, _) = read_all(&data);
            prop_assert!(read.len() <= records.len());
            prop_assert_eq!(payloads(&read), records[..read.len()].to_vec());
        }
    }
}
