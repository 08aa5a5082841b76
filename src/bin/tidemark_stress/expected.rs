//! The expected state: a file mapped shared, so that every store to it survives a SIGKILL
//! of the writer (the page cache holds it), as in RocksDB's db_stress.
//!
//! Layout (all words little-endian u64 unless said otherwise):
//!
//! ```text
//! 0    magic "TMSTRESS"
//! 8    version (u32), threads (u32)
//! 16   keys per thread
//! 24   workload seed
//! 32   reserved (zeros) up to HEADER_BYTES
//! then per thread t, THREAD_BYTES(keys) each:
//!      next operation number (the count of acknowledged operations), reserved
//!      per key k: committed word, pending word
//! ```
//!
//! A word is a [`Word`]: 0 for "never written", otherwise the operation number and
//! whether it put or deleted the key. The write protocol: set `pending` of every key an
//! operation touches, write, and after the acknowledgement set `committed = pending`, clear
//! `pending`, then advance the thread's counter.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{compiler_fence, Ordering};

use memmap2::MmapMut;

use super::workload::Mutation;

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"TMSTRESS";
/// The layout version.
pub const VERSION: u32 = 1;
/// Bytes before the first thread's region.
pub const HEADER_BYTES: usize = 64;
/// Bytes of a thread's region before its first key slot.
pub const THREAD_HEADER_BYTES: usize = 16;
/// Bytes of one key slot.
pub const SLOT_BYTES: usize = 16;

/// Bytes of one thread's region.
pub fn thread_bytes(keys: u64) -> usize {
    THREAD_HEADER_BYTES + SLOT_BYTES * keys as usize
}

/// What an operation left in one key, encoded in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word(pub u64);

impl Word {
    /// The key was never written.
    pub const NEVER: Word = Word(0);

    /// Operation `n` did `m` to the key.
    pub fn new(n: u64, m: Mutation) -> Word {
        let del = u64::from(m == Mutation::Delete);
        Word(((n + 1) << 1) | del)
    }

    /// The operation that wrote the key, if any.
    pub fn op(self) -> Option<u64> {
        (self.0 != 0).then(|| (self.0 >> 1) - 1)
    }

    /// The operation whose value the store must show, or `None` when the key must be
    /// absent (never written or deleted).
    pub fn put_op(self) -> Option<u64> {
        (self.0 != 0 && self.0 & 1 == 0).then(|| (self.0 >> 1) - 1)
    }
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.op(), self.put_op()) {
            (None, _) => write!(f, "never written"),
            (Some(n), Some(_)) => write!(f, "put by op {n}"),
            (Some(n), None) => write!(f, "deleted by op {n}"),
        }
    }
}

/// The header of an expected-state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Writer threads.
    pub threads: u32,
    /// Keys per thread.
    pub keys: u64,
    /// The workload seed.
    pub seed: u64,
}

impl Header {
    /// The file's size.
    pub fn file_bytes(&self) -> usize {
        HEADER_BYTES + self.threads as usize * thread_bytes(self.keys)
    }

    fn encode(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.threads.to_le_bytes());
        b[16..24].copy_from_slice(&self.keys.to_le_bytes());
        b[24..32].copy_from_slice(&self.seed.to_le_bytes());
    }

    /// Decodes a header; `Ok(None)` for an all-zero one (a file created by a writer killed
    /// before it wrote the header).
    fn decode(b: &[u8]) -> Result<Option<Header>, String> {
        if b.len() < HEADER_BYTES {
            return Err(format!("{} bytes, shorter than the header", b.len()));
        }
        if b[..HEADER_BYTES].iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if &b[0..8] != MAGIC {
            return Err("not an expected-state file (bad magic)".into());
        }
        let version = u32::from_le_bytes(word4(&b[8..12]));
        if version != VERSION {
            return Err(format!("layout version {version}, expected {VERSION}"));
        }
        Ok(Some(Header {
            threads: u32::from_le_bytes(word4(&b[12..16])),
            keys: read_u64(b, 16),
            seed: read_u64(b, 24),
        }))
    }
}

fn word4(b: &[u8]) -> [u8; 4] {
    let mut w = [0; 4];
    w.copy_from_slice(&b[..4]);
    w
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn write_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    // Keep the protocol's stores in program order: a kill may come at any instant.
    compiler_fence(Ordering::SeqCst);
}

/// An expected-state file, mapped.
#[derive(Debug)]
pub struct ExpectedFile {
    map: MmapMut,
    header: Header,
}

impl ExpectedFile {
    /// Opens the file at `path`, creating it for `want` when it does not exist (or was
    /// left without a header). An existing file must describe the same workload.
    pub fn open(path: &Path, want: Header) -> Result<ExpectedFile, String> {
        let ctx = |e: std::io::Error| format!("{}: {e}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(ctx)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(ctx)?;
        let len = file.metadata().map_err(ctx)?.len();
        if len == 0 {
            file.set_len(want.file_bytes() as u64).map_err(ctx)?;
        }
        // SAFETY: the mapping is of a regular file that only this process writes while it
        // runs (the driver starts one writer at a time and reads the file only after the
        // writer has died); its length is checked below before any access beyond the
        // header, and it is never truncated while mapped.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(ctx)?;
        let found = Header::decode(&map).map_err(|e| format!("{}: {e}", path.display()))?;
        let header = match found {
            None => {
                if map.len() != want.file_bytes() {
                    return Err(format!(
                        "{}: {} bytes without a header",
                        path.display(),
                        map.len()
                    ));
                }
                want.encode(&mut map[..HEADER_BYTES]);
                want
            }
            Some(h) if h == want => h,
            Some(h) => {
                return Err(format!(
                    "{}: describes {} threads x {} keys with seed {}; this run has {} x {} with seed {}",
                    path.display(),
                    h.threads,
                    h.keys,
                    h.seed,
                    want.threads,
                    want.keys,
                    want.seed
                ))
            }
        };
        if map.len() != header.file_bytes() {
            return Err(format!(
                "{}: {} bytes, expected {}",
                path.display(),
                map.len(),
                header.file_bytes()
            ));
        }
        Ok(ExpectedFile { map, header })
    }

    /// One exclusive view per thread.
    pub fn threads(&mut self) -> Vec<ThreadSlots<'_>> {
        let per = thread_bytes(self.header.keys);
        self.map[HEADER_BYTES..]
            .chunks_exact_mut(per)
            .map(|buf| ThreadSlots { buf })
            .collect()
    }
}

/// Reads the per-thread counters of an expected-state file without mapping it (for the
/// driver, between writers).
pub fn read_counters(path: &Path) -> Result<Vec<u64>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(h) = Header::decode(&b).map_err(|e| format!("{}: {e}", path.display()))? else {
        return Ok(Vec::new());
    };
    if b.len() != h.file_bytes() {
        return Err(format!("{}: truncated", path.display()));
    }
    Ok((0..h.threads)
        .map(|t| read_u64(&b, HEADER_BYTES + t as usize * thread_bytes(h.keys)))
        .collect())
}

/// One thread's counter and key slots.
#[derive(Debug)]
pub struct ThreadSlots<'a> {
    buf: &'a mut [u8],
}

impl ThreadSlots<'_> {
    /// The number of the thread's next operation.
    pub fn counter(&self) -> u64 {
        read_u64(self.buf, 0)
    }

    /// Sets the number of the thread's next operation.
    pub fn set_counter(&mut self, n: u64) {
        write_u64(self.buf, 0, n);
    }

    /// Key `k`'s committed word.
    pub fn committed(&self, k: u64) -> Word {
        Word(read_u64(
            self.buf,
            THREAD_HEADER_BYTES + SLOT_BYTES * k as usize,
        ))
    }

    /// Key `k`'s pending word.
    pub fn pending(&self, k: u64) -> Word {
        Word(read_u64(
            self.buf,
            THREAD_HEADER_BYTES + SLOT_BYTES * k as usize + 8,
        ))
    }

    /// Sets key `k`'s committed word.
    pub fn set_committed(&mut self, k: u64, w: Word) {
        write_u64(self.buf, THREAD_HEADER_BYTES + SLOT_BYTES * k as usize, w.0);
    }

    /// Sets key `k`'s pending word.
    pub fn set_pending(&mut self, k: u64, w: Word) {
        write_u64(
            self.buf,
            THREAD_HEADER_BYTES + SLOT_BYTES * k as usize + 8,
            w.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_name_the_operation_and_what_it_did() {
        assert_eq!(Word::NEVER.op(), None);
        assert_eq!(Word::NEVER.put_op(), None);
        let p = Word::new(0, Mutation::Put);
        assert_eq!((p.op(), p.put_op()), (Some(0), Some(0)));
        let d = Word::new(41, Mutation::Delete);
        assert_eq!((d.op(), d.put_op()), (Some(41), None));
        assert_eq!(d.to_string(), "deleted by op 41");
        assert_eq!(Word::new(7, Mutation::Put).to_string(), "put by op 7");
    }

    #[test]
    fn the_file_keeps_what_was_written_and_refuses_another_workload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/expected");
        let h = Header {
            threads: 2,
            keys: 3,
            seed: 9,
        };
        {
            let mut f = ExpectedFile::open(&path, h).unwrap();
            let mut t = f.threads();
            t[1].set_committed(2, Word::new(5, Mutation::Put));
            t[1].set_pending(0, Word::new(6, Mutation::Delete));
            t[1].set_counter(6);
        }
        let mut f = ExpectedFile::open(&path, h).unwrap();
        let t = f.threads();
        assert_eq!(t[1].committed(2), Word::new(5, Mutation::Put));
        assert_eq!(t[1].pending(0), Word::new(6, Mutation::Delete));
        assert_eq!(t[1].counter(), 6);
        assert_eq!(t[0].counter(), 0);
        assert_eq!(read_counters(&path).unwrap(), vec![0, 6]);
        let other = Header { seed: 10, ..h };
        assert!(ExpectedFile::open(&path, other)
            .unwrap_err()
            .contains("seed 9"));
    }

    #[test]
    fn a_file_left_without_its_header_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("expected");
        let h = Header {
            threads: 1,
            keys: 4,
            seed: 1,
        };
        std::fs::write(&path, vec![0u8; h.file_bytes()]).unwrap();
        let mut f = ExpectedFile::open(&path, h).unwrap();
        assert_eq!(f.threads()[0].counter(), 0);
        assert_eq!(&std::fs::read(&path).unwrap()[..8], MAGIC);
    }
}
