//! Read-only views of the store's files for the commands: a log (WAL or manifest) read
//! record by record with its offsets and how it ends, and a store directory replayed from
//! its manifest into levels, without opening (or locking) the store.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs};
use crate::lsm::filename::{self, FileKind};
use crate::lsm::manifest::{read_current, NewFile, VersionEdit, MAX_MANIFEST_BYTES};
use crate::lsm::sst::Table;
use crate::lsm::types::{compare_internal_keys, FileNumber, SeqNo};
use crate::lsm::wal::{LogKind, LogRead, LogReader};

/// Largest WAL segment the commands read into memory.
pub const MAX_WAL_BYTES: u64 = 4 << 30;

/// How a log ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEnd {
    /// Cleanly (end of file, or only zeros follow).
    Eof,
    /// With a torn last record (a write cut by a crash, never acknowledged).
    TornTail {
        /// Where the damage starts.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// With damage followed by valid data: corruption.
    Corrupt {
        /// Where the damage starts.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// One record of a log, with the file offset of its first fragment.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// File offset of the record's first fragment header.
    pub offset: u64,
    /// The record's bytes.
    pub payload: Vec<u8>,
}

/// Every record of a log file, and how it ends.
#[derive(Debug, Clone)]
pub struct LogContents {
    /// File size in bytes.
    pub size_bytes: u64,
    /// The file number its header record names (0 for an empty log).
    pub number: FileNumber,
    /// The records, in order.
    pub records: Vec<LogRecord>,
    /// How reading stopped.
    pub end: LogEnd,
}

/// The number a file name gives a log of `kind`, if it follows the store's naming.
pub fn number_from_name(path: &Path, kind: LogKind) -> Option<FileNumber> {
    let name = path.file_name()?.to_str()?;
    match (filename::parse_file_name(name)?, kind) {
        (FileKind::Wal(n), LogKind::Wal) | (FileKind::Manifest(n), LogKind::Manifest) => Some(n),
        _ => None,
    }
}

/// Reads every record of the log at `path`. The header record must be of `kind` (and name
/// the number the file name carries, when it follows the store's naming). An empty WAL
/// (created, never written) is a log without records.
pub fn read_log(fs: &dyn FileSystem, path: &Path, kind: LogKind) -> Result<LogContents> {
    let max = match kind {
        LogKind::Wal => MAX_WAL_BYTES,
        LogKind::Manifest => MAX_MANIFEST_BYTES,
    };
    let data = fs.read_file(path, max)?;
    let expected = number_from_name(path, kind);
    let mut reader = LogReader::new(&data, path, kind, expected, kind == LogKind::Wal)?;
    let mut records = Vec::new();
    let end = loop {
        match reader.next() {
            LogRead::Record { offset, payload } => records.push(LogRecord {
                offset,
                payload: payload.into_owned(),
            }),
            LogRead::Eof => break LogEnd::Eof,
            LogRead::TornTail { offset, reason } => break LogEnd::TornTail { offset, reason },
            LogRead::Corrupt { offset, reason } => break LogEnd::Corrupt { offset, reason },
        }
    };
    Ok(LogContents {
        size_bytes: data.len() as u64,
        number: reader.number(),
        records,
        end,
    })
}

/// The decoded edits of a manifest, with their offsets.
pub fn decode_edits(path: &Path, log: &LogContents) -> Result<Vec<(u64, VersionEdit)>> {
    log.records
        .iter()
        .map(|r| VersionEdit::decode(&r.payload, path, r.offset).map(|e| (r.offset, e)))
        .collect()
}

/// The state a sequence of edits leaves: files per level and the counters.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// Files per level: level 0 newest first, deeper levels in key order.
    pub levels: Vec<Vec<NewFile>>,
    /// The store's identity.
    pub db_id: Option<String>,
    /// WALs numbered below this are retired.
    pub log_number: Option<FileNumber>,
    /// The next file number the store will use.
    pub next_file_number: Option<FileNumber>,
    /// The last sequence number in the tables (or the WALs retired).
    pub last_sequence: Option<SeqNo>,
    /// Edits that do not apply cleanly (a deleted file that is not live, a file added
    /// twice), one line each.
    pub problems: Vec<String>,
}

impl Replayed {
    /// Every file, level by level.
    pub fn files(&self) -> impl Iterator<Item = &NewFile> {
        self.levels.iter().flatten()
    }
}

/// Applies `edits` in order, from an empty store.
pub fn replay<'a>(edits: impl IntoIterator<Item = &'a VersionEdit>) -> Replayed {
    let mut r = Replayed::default();
    let mut live: BTreeMap<(u32, FileNumber), NewFile> = BTreeMap::new();
    for (i, e) in edits.into_iter().enumerate() {
        if e.db_id.is_some() {
            r.db_id.clone_from(&e.db_id);
        }
        r.log_number = e.log_number.or(r.log_number);
        r.next_file_number = e.next_file_number.or(r.next_file_number);
        r.last_sequence = e.last_sequence.or(r.last_sequence);
        for (level, n) in &e.deleted_files {
            if live.remove(&(*level, *n)).is_none() {
                r.problems.push(format!(
                    "edit {i} deletes {} from level {level}, where it is not live",
                    filename::table_file_name(*n)
                ));
            }
        }
        for f in &e.new_files {
            if live.insert((f.level, f.number), f.clone()).is_some() {
                r.problems.push(format!(
                    "edit {i} adds {} to level {} twice",
                    filename::table_file_name(f.number),
                    f.level
                ));
            }
        }
    }
    let max_level = live.keys().map(|(l, _)| *l as usize).max();
    r.levels = vec![Vec::new(); max_level.map_or(0, |l| l + 1)];
    for ((level, _), f) in live {
        if let Some(l) = r.levels.get_mut(level as usize) {
            l.push(f);
        }
    }
    if let Some(l0) = r.levels.first_mut() {
        l0.sort_by(|a, b| {
            b.largest_seq
                .cmp(&a.largest_seq)
                .then(b.number.cmp(&a.number))
        });
    }
    for l in r.levels.iter_mut().skip(1) {
        l.sort_by(
            |a, b| match compare_internal_keys(&a.smallest, &b.smallest) {
                Ordering::Equal => a.number.cmp(&b.number),
                o => o,
            },
        );
    }
    r
}

/// A file found in a store directory.
#[derive(Debug, Clone)]
pub struct DirFile {
    /// Its name.
    pub name: String,
    /// What its name says it is.
    pub kind: Option<FileKind>,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// A store directory, read without opening the store.
#[derive(Debug, Clone)]
pub struct StoreView {
    /// The directory.
    pub dir: PathBuf,
    /// The manifest `CURRENT` names.
    pub manifest_path: PathBuf,
    /// Its number.
    pub manifest_number: FileNumber,
    /// The manifest's records and how it ends.
    pub manifest: LogContents,
    /// The edits, with their offsets.
    pub edits: Vec<(u64, VersionEdit)>,
    /// The state they leave.
    pub state: Replayed,
    /// Every file in the directory, by name.
    pub files: Vec<DirFile>,
}

impl StoreView {
    /// WAL segments not yet retired (their writes are not all in tables), oldest first.
    pub fn live_wals(&self) -> Vec<&DirFile> {
        let retired_below = self.state.log_number.unwrap_or_default();
        self.files
            .iter()
            .filter(|f| matches!(f.kind, Some(FileKind::Wal(n)) if n >= retired_below))
            .collect()
    }

    /// Path of a file of the store.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Reads `CURRENT`, the manifest it names, and the directory listing of `dir`.
pub fn open_store_view(dir: &Path) -> Result<StoreView> {
    let fs = StdFs;
    let manifest_number = read_current(&fs, dir)?;
    let manifest_path = filename::manifest_path(dir, manifest_number);
    if !fs.exists(&manifest_path) {
        return Err(Error::NotFound {
            path: manifest_path,
        });
    }
    let manifest = read_log(&fs, &manifest_path, LogKind::Manifest)?;
    if let LogEnd::Corrupt { offset, reason } = &manifest.end {
        return Err(Error::corruption(&manifest_path, *offset, reason.clone()));
    }
    let edits = decode_edits(&manifest_path, &manifest)?;
    if edits.is_empty() {
        return Err(Error::corruption(
            &manifest_path,
            0,
            "manifest holds no version edit",
        ));
    }
    let state = replay(edits.iter().map(|(_, e)| e));
    let mut files = Vec::new();
    for name in fs.list_dir(dir)? {
        let p = dir.join(&name);
        let md = std::fs::metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
        let kind = filename::parse_file_name(&name);
        if !md.is_file() {
            // A name the store uses on something that is not a regular file is damage;
            // anything else not a file (a directory, say) is not the store's.
            if kind.is_some() {
                return Err(Error::NotRegularFile {
                    path: p,
                    kind: crate::fs::file_type_name(&md.file_type()),
                });
            }
            continue;
        }
        files.push(DirFile {
            kind,
            size_bytes: md.len(),
            name,
        });
    }
    Ok(StoreView {
        dir: dir.to_path_buf(),
        manifest_path,
        manifest_number,
        manifest,
        edits,
        state,
        files,
    })
}

/// Opens the table at `path` standalone (no cache; data block crcs checked on read). Its
/// number comes from its name when it follows the store's naming, else 0.
pub fn open_table(path: &Path) -> Result<Arc<Table>> {
    open_table_file(StdFs.open(path)?, path)
}

/// Like [`open_table`], for a table already opened (the file number from `path`'s name).
pub fn open_table_file(file: std::fs::File, path: &Path) -> Result<Arc<Table>> {
    let number = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(filename::parse_file_name)
        .and_then(|k| match k {
            FileKind::Table(n) => Some(n),
            _ => None,
        })
        .unwrap_or_default();
    Table::from_file(file, path, number, None, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::types::{make_internal_key, ValueKind};

    fn nf(level: u32, n: u64, lo: &[u8], seq: u64) -> NewFile {
        NewFile {
            level,
            number: FileNumber(n),
            size: 100,
            file_crc32c: 1,
            smallest: make_internal_key(lo, SeqNo(seq), ValueKind::Put),
            largest: make_internal_key(lo, SeqNo(seq), ValueKind::Put),
            smallest_seq: SeqNo(seq),
            largest_seq: SeqNo(seq),
            num_entries: 1,
        }
    }

    #[test]
    fn replay_orders_level0_newest_first_and_deeper_levels_by_key() {
        let e1 = VersionEdit {
            new_files: vec![
                nf(0, 5, b"a", 10),
                nf(0, 6, b"a", 20),
                nf(1, 7, b"m", 1),
                nf(1, 8, b"c", 2),
            ],
            ..VersionEdit::default()
        };
        let e2 = VersionEdit {
            deleted_files: vec![(0, FileNumber(5)), (0, FileNumber(99))],
            last_sequence: Some(SeqNo(20)),
            ..VersionEdit::default()
        };
        let r = replay([&e1, &e2]);
        let nums = |l: usize| r.levels[l].iter().map(|f| f.number.0).collect::<Vec<_>>();
        assert_eq!(nums(0), vec![6]);
        assert_eq!(nums(1), vec![8, 7]);
        assert_eq!(r.last_sequence, Some(SeqNo(20)));
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].contains("000099.sst"), "{:?}", r.problems);
    }
}
