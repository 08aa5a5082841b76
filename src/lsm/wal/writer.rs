//! Appends records to a log file, cutting them into block-aligned fragments.
//!
//! The writer owns the block arithmetic and nothing else: it never decides when to sync,
//! and after any failed write it refuses further appends, because the bytes that reached
//! the file are then unknown and a later record could land behind a hole.

use std::path::Path;

use super::{
    encode_header_payload, fragment_crc, FragmentType, LogKind, BLOCK_SIZE, HEADER_RECORD_LEN,
    HEADER_SIZE,
};
use crate::error::{Error, Result};
use crate::fs::WritableFile;
use crate::lsm::types::FileNumber;

/// Zeros used to fill a block tail too short for a fragment header.
const ZERO_TRAILER: [u8; HEADER_SIZE] = [0; HEADER_SIZE];

/// Writes a log: a header record, then records appended one by one.
#[derive(Debug)]
pub struct LogWriter {
    file: Box<dyn WritableFile>,
    /// Bytes already used in the current block, in `0 .. BLOCK_SIZE`.
    block_offset_bytes: usize,
    /// The first failure; every later call returns it again.
    failed: Option<Error>,
}

impl LogWriter {
    /// Starts a log of `kind` numbered `number` in the empty `file` and writes the header
    /// record (not synced).
    pub fn new(file: Box<dyn WritableFile>, kind: LogKind, number: FileNumber) -> Result<Self> {
        if !file.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "a log must start in an empty file, {} holds {} bytes",
                file.path().display(),
                file.len()
            )));
        }
        let mut w = LogWriter {
            file,
            block_offset_bytes: 0,
            failed: None,
        };
        w.add_record(&encode_header_payload(kind, number))?;
        assert_eq!(
            w.len(),
            HEADER_RECORD_LEN as u64,
            "header record is one FULL fragment"
        );
        Ok(w)
    }

    /// Appends one record (buffered: see [`LogWriter::flush`] and [`LogWriter::sync`]).
    /// Any length is accepted; long records are cut into fragments.
    pub fn add_record(&mut self, payload: &[u8]) -> Result<()> {
        self.check_failed()?;
        let r = self.write_fragments(payload);
        self.remember(r)
    }

    /// Hands buffered bytes to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.check_failed()?;
        let r = self.file.flush();
        self.remember(r)
    }

    /// Flushes and fsyncs the file.
    pub fn sync(&mut self) -> Result<()> {
        self.check_failed()?;
        let r = self.file.sync();
        self.remember(r)
    }

    /// The log's length in bytes, including buffered bytes.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// True when nothing was written (never, once [`LogWriter::new`] returned).
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn remember(&mut self, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn write_fragments(&mut self, payload: &[u8]) -> Result<()> {
        let mut rest = payload;
        let mut first = true;
        // An empty record still writes one (empty) FULL fragment, so the loop runs at
        // least once; every later iteration consumes at least one byte or moves to a new
        // block, so it ends after at most len / (BLOCK_SIZE - HEADER_SIZE) + 2 rounds.
        loop {
            let left_in_block = BLOCK_SIZE - self.block_offset_bytes;
            if left_in_block < HEADER_SIZE {
                self.file.append(&ZERO_TRAILER[..left_in_block])?;
                self.block_offset_bytes = 0;
                continue;
            }
            let room = left_in_block - HEADER_SIZE;
            let n = rest.len().min(room);
            let last = n == rest.len();
            let kind = match (first, last) {
                (true, true) => FragmentType::Full,
                (true, false) => FragmentType::First,
                (false, false) => FragmentType::Middle,
                (false, true) => FragmentType::Last,
            };
            let (fragment, tail) = rest.split_at(n);
            self.emit(kind, fragment)?;
            rest = tail;
            first = false;
            if last {
                return Ok(());
            }
        }
    }

    fn emit(&mut self, kind: FragmentType, payload: &[u8]) -> Result<()> {
        let end = self.block_offset_bytes + HEADER_SIZE + payload.len();
        assert!(end <= BLOCK_SIZE, "fragment crosses a block boundary");
        let len = u16::try_from(payload.len())
            .map_err(|_| Error::InvalidArgument(format!("fragment of {} bytes", payload.len())))?;
        let mut header = [0u8; HEADER_SIZE];
        header[super::CRC_OFFSET..super::LENGTH_OFFSET]
            .copy_from_slice(&fragment_crc(kind as u8, payload).to_le_bytes());
        header[super::LENGTH_OFFSET..super::TYPE_OFFSET].copy_from_slice(&len.to_le_bytes());
        header[super::TYPE_OFFSET] = kind as u8;
        self.file.append(&header)?;
        self.file.append(payload)?;
        self.block_offset_bytes = end % BLOCK_SIZE;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, StdFs};
    use std::path::PathBuf;

    /// The worked example of format-spec/wal.md: WAL 7 holding "hello" and an empty record.
    const EXAMPLE_HEX: &str = "\
        6b d7 51 1e 15 00 01 54 44 4d 52 4b 4c 4f 47 01 \
        00 00 00 01 07 00 00 00 00 00 00 00 0b b9 57 58 \
        05 00 01 68 65 6c 6c 6f 05 2b 28 43 00 00 01";

    fn unhex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn small_log_matches_the_worked_example_in_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000007.wal");
        let file = StdFs.create(&path).unwrap();
        let mut w = LogWriter::new(file, LogKind::Wal, FileNumber(7)).unwrap();
        assert_eq!(w.len(), HEADER_RECORD_LEN as u64);
        w.add_record(b"hello").unwrap();
        w.add_record(b"").unwrap();
        w.sync().unwrap();
        assert_eq!(w.path(), path);
        assert_eq!(std::fs::read(&path).unwrap(), unhex(EXAMPLE_HEX));
    }

    #[test]
    fn a_log_must_start_in_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StdFs.create(&dir.path().join("1.wal")).unwrap();
        file.append(b"x").unwrap();
        let e = LogWriter::new(file, LogKind::Wal, FileNumber(1)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    /// A file whose appends fail once `capacity` bytes were accepted.
    #[derive(Debug)]
    struct FullDisk {
        path: PathBuf,
        len: u64,
        capacity: u64,
    }

    impl WritableFile for FullDisk {
        fn append(&mut self, data: &[u8]) -> Result<()> {
            if self.len + data.len() as u64 > self.capacity {
                return Err(Error::io(
                    "write",
                    &self.path,
                    std::io::Error::other("disk full"),
                ));
            }
            self.len += data.len() as u64;
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
        fn sync(&mut self) -> Result<()> {
            Ok(())
        }
        fn len(&self) -> u64 {
            self.len
        }
        fn path(&self) -> &Path {
            &self.path
        }
    }

    #[test]
    fn after_a_failed_write_every_call_returns_the_same_error() {
        let file = Box::new(FullDisk {
            path: PathBuf::from("/db/000003.wal"),
            len: 0,
            capacity: 100,
        });
        let mut w = LogWriter::new(file, LogKind::Wal, FileNumber(3)).unwrap();
        let e = w.add_record(&[1; 200]).unwrap_err();
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::Other));
        let again = w.add_record(b"small").unwrap_err();
        assert_eq!(again.to_string(), e.to_string());
        assert_eq!(w.sync().unwrap_err().to_string(), e.to_string());
        assert_eq!(w.flush().unwrap_err().to_string(), e.to_string());
    }

    #[test]
    fn fragments_never_cross_a_block_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("9.wal");
        let mut w =
            LogWriter::new(StdFs.create(&path).unwrap(), LogKind::Wal, FileNumber(9)).unwrap();
        for n in [BLOCK_SIZE * 2 + 5, 1, BLOCK_SIZE - 3, 0, 40_000] {
            w.add_record(&vec![0xa5; n]).unwrap();
        }
        w.sync().unwrap();
        let data = std::fs::read(&path).unwrap();
        // Walk the fragment chain by lengths alone: every header sits inside one block.
        let mut pos = 0;
        while pos < data.len() {
            let left = BLOCK_SIZE - pos % BLOCK_SIZE;
            if left < HEADER_SIZE {
                assert!(data[pos..pos + left].iter().all(|&b| b == 0));
                pos += left;
                continue;
            }
            let len = u16::from_le_bytes([data[pos + 4], data[pos + 5]]) as usize;
            assert!(
                HEADER_SIZE + len <= left,
                "fragment at {pos} crosses its block"
            );
            pos += HEADER_SIZE + len;
        }
        assert_eq!(pos, data.len());
    }
}
