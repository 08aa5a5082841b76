//! A store's live file set as an owned value, for the layers that copy stores elsewhere:
//! describe it ([`LiveSet::of`]), encode it to bytes and decode it back
//! ([`LiveSet::encode`], [`LiveSet::decode`]), open a store from a copy of its files
//! ([`LiveSet::restore`]), and read a key from its tables where they lie
//! ([`LiveSet::lookup`]).
//!
//! The bytes are one manifest version edit that recreates exactly the set
//! (`format-spec/manifest.md`, "version edit"): its tables with their levels, sizes, crc32c
//! and key ranges, the store's identity, and the sequence number the set is consistent at.
//! What the caller does with them (a checkpoint's private file, say) is its own business:
//! this module knows nothing of checkpoints.

use std::path::{Path, PathBuf};

use super::db::{Db, LiveFiles};
use super::filename::table_file_name;
use super::manifest::{NewFile, VersionEdit, MAX_MANIFEST_BYTES};
use super::options::Options;
use super::sst::{LookupResult, Table};
use super::types::{compare_internal_keys, user_key, FileNumber, SeqNo};
use crate::error::{Error, IoContext, Result};

/// The largest encoded live set [`LiveSet::decode`] is given by a careful caller (the
/// largest manifest a store writes).
pub const MAX_LIVE_SET_BYTES: u64 = MAX_MANIFEST_BYTES;

/// One table of a live set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSetTable {
    /// Its level.
    pub level: u32,
    /// Its file number.
    pub number: FileNumber,
    /// Its file name in a store directory (`000012.sst`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
    /// The smallest user key in it.
    pub smallest_key: Vec<u8>,
    /// The largest user key in it.
    pub largest_key: Vec<u8>,
    /// The largest sequence number of its entries.
    pub largest_seq: u64,
    /// Its number of entries (puts and tombstones).
    pub entries: u64,
}

impl LiveSetTable {
    fn of(f: &NewFile) -> LiveSetTable {
        LiveSetTable {
            level: f.level,
            number: f.number,
            name: table_file_name(f.number),
            size: f.size,
            crc32c: f.file_crc32c,
            smallest_key: user_key(&f.smallest).to_vec(),
            largest_key: user_key(&f.largest).to_vec(),
            largest_seq: f.largest_seq.0,
            entries: f.num_entries,
        }
    }

    /// True when `key` lies in the table's key range (it may hold the key).
    pub fn covers(&self, key: &[u8]) -> bool {
        self.smallest_key.as_slice() <= key && key <= self.largest_key.as_slice()
    }
}

/// The live tables of a store and the sequence number they are consistent at, as an owned
/// description that outlives the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSet {
    edit: VersionEdit,
}

/// What [`LiveSet::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSetLookup {
    /// The value, when the newest entry of the key is a put.
    pub value: Option<Vec<u8>>,
    /// True when the newest entry of the key is a tombstone.
    pub deleted: bool,
    /// The table holding that newest entry.
    pub table: Option<LiveSetTable>,
    /// The number of tables opened to answer.
    pub tables_searched: usize,
}

impl LiveSet {
    /// The description of a pinned file set.
    pub fn of(live: &LiveFiles) -> LiveSet {
        LiveSet {
            edit: live.manifest.clone(),
        }
    }

    /// The bytes that [`LiveSet::decode`] reads back.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.edit.encode(&mut buf);
        buf
    }

    /// Decodes the bytes of [`LiveSet::encode`]; `path` names their file in errors. A
    /// damaged or hostile description is a corruption error naming the byte where decoding
    /// stopped; one that deletes files (a manifest edit that is not a live set) or lists a
    /// table twice is refused too.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<LiveSet> {
        let edit = VersionEdit::decode(bytes, path, 0)?;
        if !edit.deleted_files.is_empty() {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "a live set removes no files; this one removes {}",
                    edit.deleted_files.len()
                ),
            ));
        }
        let mut numbers: Vec<FileNumber> = edit.new_files.iter().map(|f| f.number).collect();
        numbers.sort_unstable();
        if let Some(w) = numbers.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::corruption(
                path,
                0,
                format!("the live set lists table {} twice", table_file_name(w[0])),
            ));
        }
        Ok(LiveSet { edit })
    }

    /// The sequence number the set is consistent at: every write up to it is in the
    /// tables, none after it (`None` in a description that does not record it).
    pub fn sequence(&self) -> Option<u64> {
        self.edit.last_sequence.map(|s| s.0)
    }

    /// The manifest version edit the set is (for tools that show it as a store's manifest
    /// records it).
    pub fn as_version_edit(&self) -> &VersionEdit {
        &self.edit
    }

    /// The identity of the store the set was taken from, if recorded.
    pub fn store_id(&self) -> Option<&str> {
        self.edit.db_id.as_deref()
    }

    /// The tables in the order a read searches them: level 0 newest first, then each deeper
    /// level in key order.
    pub fn tables(&self) -> Vec<LiveSetTable> {
        let mut files: Vec<&NewFile> = self.edit.new_files.iter().collect();
        files.sort_by(|a, b| {
            a.level.cmp(&b.level).then_with(|| {
                if a.level == 0 {
                    b.largest_seq
                        .cmp(&a.largest_seq)
                        .then(b.number.cmp(&a.number))
                } else {
                    compare_internal_keys(&a.smallest, &b.smallest).then(a.number.cmp(&b.number))
                }
            })
        });
        files.into_iter().map(LiveSetTable::of).collect()
    }

    /// The tables, each level's in search order (see [`LiveSet::tables`]); one entry per
    /// level down to the deepest that holds a table.
    pub fn levels(&self) -> Vec<Vec<LiveSetTable>> {
        let mut levels: Vec<Vec<LiveSetTable>> = Vec::new();
        for t in self.tables() {
            let l = t.level as usize;
            if levels.len() <= l {
                levels.resize_with(l + 1, Vec::new);
            }
            levels[l].push(t);
        }
        levels
    }

    /// Total bytes of the tables.
    pub fn total_bytes(&self) -> u64 {
        self.edit
            .new_files
            .iter()
            .fold(0u64, |n, f| n.saturating_add(f.size))
    }

    /// Opens a new store in `dir` (absent or empty) holding exactly this set. `place` puts
    /// each table's file at the path it is given (in `dir`), by a hard link or a copy; each
    /// placed file must have the size the set records. The directory is fsynced before the
    /// store's manifest is written.
    pub fn restore(
        &self,
        dir: &Path,
        opts: Options,
        mut place: impl FnMut(&LiveSetTable, &Path) -> Result<()>,
    ) -> Result<Db> {
        let fs = opts.fs.clone();
        fs.create_dir_all(dir)?;
        if !fs.list_dir(dir)?.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "restore target {} is not empty",
                dir.display()
            )));
        }
        for t in self.tables() {
            place(&t, &dir.join(&t.name))?;
        }
        fs.sync_dir(dir)?;
        Db::restore_manifest(fs.as_ref(), dir, &self.edit)?;
        Db::open(dir, opts)
    }

    /// Reads `key` from the tables where they lie, without restoring a store: as the store
    /// would, the tables whose key range covers `key` are searched in order (see
    /// [`LiveSet::tables`]) up to the first that holds an entry of it, as of the set's
    /// sequence number. `open` opens a table's file for reading and returns the path to
    /// name in errors; the file must have the size the set records. Every block read is
    /// checked against its crc32c.
    pub fn lookup(
        &self,
        key: &[u8],
        mut open: impl FnMut(&LiveSetTable) -> Result<(std::fs::File, PathBuf)>,
    ) -> Result<LiveSetLookup> {
        let seq = self.edit.last_sequence.unwrap_or(SeqNo::MAX);
        let mut found = LiveSetLookup {
            value: None,
            deleted: false,
            table: None,
            tables_searched: 0,
        };
        for t in self.tables().into_iter().filter(|t| t.covers(key)) {
            let (file, path) = open(&t)?;
            let size = file.metadata().ctx("stat", &path)?.len();
            if size != t.size {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!("file is {size} bytes, the live set records {}", t.size),
                ));
            }
            let table = Table::from_file(file, &path, t.number, None, true)?;
            found.tables_searched += 1;
            if !table.may_contain(key) {
                continue;
            }
            match table.get(key, seq)? {
                LookupResult::NotFound => continue,
                LookupResult::Deleted => found.deleted = true,
                LookupResult::Found(v) => found.value = Some(v),
            }
            found.table = Some(t);
            break;
        }
        Ok(found)
    }
}
