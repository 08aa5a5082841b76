//! The log format shared by the write-ahead log and the manifest: crc32c-framed records in
//! fixed-size blocks (format-spec/wal.md describes it byte by byte).
//!
//! A log file is a sequence of [`BLOCK_SIZE`]-byte blocks (the last one may be short). A
//! record is cut into fragments that never cross a block boundary; each fragment carries a
//! [`HEADER_SIZE`]-byte header: masked crc32c of (type byte ++ payload), payload length,
//! fragment type. A block tail too short for a header is zero-filled. The first record of
//! every file is a header record naming the format version, the [`LogKind`] and the file
//! number, so that a manifest is never replayed as a WAL or one WAL as another.
//!
//! This module owns the framing only; what a record's payload means belongs to its user
//! (the write batch for WALs, version edits for the manifest). It never syncs on its own:
//! when bytes become durable is the caller's decision ([`LogWriter::sync`]).

pub mod reader;
pub mod writer;

pub use reader::{LogRead, LogReader};
pub use writer::LogWriter;

use crate::codec;
use crate::lsm::types::FileNumber;

/// Size of a log block in bytes. Fragments never cross a block boundary.
pub const BLOCK_SIZE: usize = 32 * 1024;

/// Size of a fragment header: masked crc32c (4), length (2), type (1).
pub const HEADER_SIZE: usize = CRC_SIZE + LENGTH_SIZE + TYPE_SIZE;

const CRC_SIZE: usize = 4;
const LENGTH_SIZE: usize = 2;
const TYPE_SIZE: usize = 1;
/// Offset of the masked crc32c in a fragment header.
pub(crate) const CRC_OFFSET: usize = 0;
/// Offset of the little-endian u16 payload length in a fragment header.
pub(crate) const LENGTH_OFFSET: usize = CRC_OFFSET + CRC_SIZE;
/// Offset of the fragment type byte in a fragment header.
pub(crate) const TYPE_OFFSET: usize = LENGTH_OFFSET + LENGTH_SIZE;

// The header layout is part of the on-disk format: 4 + 2 + 1 bytes, type last.
const _: () = assert!(HEADER_SIZE == 7 && TYPE_OFFSET + TYPE_SIZE == HEADER_SIZE);
// The largest fragment payload (a whole block minus its header) must fit the u16 length.
const _: () = assert!(BLOCK_SIZE - HEADER_SIZE <= u16::MAX as usize);
// The header record must fit in the first block as one FULL fragment.
const _: () = assert!(HEADER_RECORD_LEN <= BLOCK_SIZE);

/// The version of the log format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The magic that opens the header record's payload.
pub const LOG_MAGIC: [u8; 8] = *b"TDMRKLOG";

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + LOG_MAGIC.len();
const KIND_OFFSET: usize = VERSION_OFFSET + 4;
const NUMBER_OFFSET: usize = KIND_OFFSET + 1;
/// Length of the header record's payload: magic, version u32, kind u8, file number u64.
pub const HEADER_PAYLOAD_LEN: usize = NUMBER_OFFSET + 8;
/// Length of the header record on disk (one FULL fragment at offset 0).
pub const HEADER_RECORD_LEN: usize = HEADER_SIZE + HEADER_PAYLOAD_LEN;

/// Which kind of log a file is; recorded in its header record and checked on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// A write-ahead log segment (`<n>.wal`) of write batches.
    Wal,
    /// A manifest (`MANIFEST-<n>`) of version edits.
    Manifest,
}

impl LogKind {
    /// The byte that stands for this kind in the header record.
    pub fn to_u8(self) -> u8 {
        match self {
            LogKind::Wal => 1,
            LogKind::Manifest => 2,
        }
    }

    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<LogKind> {
        match b {
            1 => Some(LogKind::Wal),
            2 => Some(LogKind::Manifest),
            _ => None,
        }
    }

    /// A human name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            LogKind::Wal => "write-ahead log",
            LogKind::Manifest => "manifest",
        }
    }
}

/// The type of a fragment: a whole record, or its first, a middle or its last piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FragmentType {
    Full = 1,
    First = 2,
    Middle = 3,
    Last = 4,
}

impl FragmentType {
    pub(crate) fn from_u8(b: u8) -> Option<FragmentType> {
        match b {
            1 => Some(FragmentType::Full),
            2 => Some(FragmentType::First),
            3 => Some(FragmentType::Middle),
            4 => Some(FragmentType::Last),
            _ => None,
        }
    }
}

/// The masked crc32c stored in a fragment header: over the type byte, then the payload.
pub(crate) fn fragment_crc(kind: u8, payload: &[u8]) -> u32 {
    codec::mask_crc(codec::crc32c_extend(codec::crc32c(&[kind]), payload))
}

/// The header record's payload for a log of `kind` numbered `number`.
pub(crate) fn encode_header_payload(kind: LogKind, number: FileNumber) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_PAYLOAD_LEN);
    buf.extend_from_slice(&LOG_MAGIC);
    codec::put_u32(&mut buf, FORMAT_VERSION);
    buf.push(kind.to_u8());
    codec::put_u64(&mut buf, number.0);
    assert_eq!(buf.len(), HEADER_PAYLOAD_LEN, "header record layout");
    buf
}

/// What a header record says, once decoded and checked against the version this build reads.
pub(crate) fn decode_header_payload(payload: &[u8]) -> Result<(LogKind, FileNumber), String> {
    if payload.len() != HEADER_PAYLOAD_LEN {
        return Err(format!(
            "header record is {} bytes, expected {HEADER_PAYLOAD_LEN}",
            payload.len()
        ));
    }
    if payload.get(MAGIC_OFFSET..VERSION_OFFSET) != Some(&LOG_MAGIC[..]) {
        return Err("bad magic: not a tidemark log".to_string());
    }
    let version = codec::get_u32(payload, VERSION_OFFSET).ok_or("header record too short")?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported log format version {version} (this build reads version {FORMAT_VERSION})"
        ));
    }
    let kind_byte = *payload.get(KIND_OFFSET).ok_or("header record too short")?;
    let kind =
        LogKind::from_u8(kind_byte).ok_or_else(|| format!("unknown log kind {kind_byte}"))?;
    let number = codec::get_u64(payload, NUMBER_OFFSET).ok_or("header record too short")?;
    Ok((kind, FileNumber(number)))
}
