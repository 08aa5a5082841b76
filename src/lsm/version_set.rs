//! The version set: the current [`Version`], the counters that go with it (next file
//! number, last sequence, live WAL), and the manifest that makes each change durable.
//!
//! Every change to the set of live files is a [`VersionEdit`] that is first applied to a
//! copy of the current version (which checks the level invariants), then appended and
//! fsynced to the manifest, and only then installed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifest::{set_current, ManifestWriter, VersionEdit};
use super::types::{compare_internal_keys, user_key, FileNumber, SeqNo};
use super::version::{key_order, l0_order, FileMeta, TableContext, Version};
use crate::error::{Error, Result};

/// The current version and the store's counters.
#[derive(Debug)]
pub struct VersionSet {
    ctx: Arc<TableContext>,
    num_levels: usize,
    current: Arc<Version>,
    next_file_number: u64,
    /// Largest sequence number made durable in a table or logged in a WAL.
    pub last_sequence: SeqNo,
    /// WALs with a smaller number hold nothing that is not in a table.
    pub log_number: FileNumber,
    /// The store's random identity.
    pub db_id: String,
    /// Per level, the key where the next compaction of that level starts.
    pub compact_pointers: Vec<Vec<u8>>,
    manifest: Option<ManifestWriter>,
    /// Roll to a new manifest when the live one passes this size.
    max_manifest_bytes: u64,
}

impl VersionSet {
    /// Rebuilds the state recorded by the edits of a manifest (at `path`, for errors).
    pub fn recover(
        ctx: Arc<TableContext>,
        num_levels: usize,
        edits: &[VersionEdit],
        path: &Path,
    ) -> Result<VersionSet> {
        let mut vs = VersionSet {
            ctx,
            num_levels,
            current: Arc::new(Version::empty(num_levels)),
            next_file_number: 2,
            last_sequence: SeqNo(0),
            log_number: FileNumber(0),
            db_id: String::new(),
            compact_pointers: vec![Vec::new(); num_levels],
            manifest: None,
            max_manifest_bytes: u64::MAX,
        };
        for edit in edits {
            let v = vs
                .apply(edit)
                .map_err(|reason| Error::corruption(path, 0, reason))?;
            vs.current = Arc::new(v);
            vs.absorb_counters(edit);
        }
        if vs.db_id.is_empty() {
            return Err(Error::corruption(
                path,
                0,
                "the manifest never records the store's id",
            ));
        }
        // A manifest written by a store with more levels than this one is configured for.
        let max_file = vs
            .current
            .all_files()
            .map(|(_, f)| f.number.0)
            .max()
            .unwrap_or(0);
        if max_file >= vs.next_file_number {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "table {max_file} is not below the next file number {}",
                    vs.next_file_number
                ),
            ));
        }
        Ok(vs)
    }

    /// A fresh set for a new store.
    pub fn new_store(ctx: Arc<TableContext>, num_levels: usize, db_id: String) -> VersionSet {
        VersionSet {
            ctx,
            num_levels,
            current: Arc::new(Version::empty(num_levels)),
            next_file_number: 2,
            last_sequence: SeqNo(0),
            log_number: FileNumber(0),
            db_id,
            compact_pointers: vec![Vec::new(); num_levels],
            manifest: None,
            max_manifest_bytes: u64::MAX,
        }
    }

    /// Rolls the manifest whenever it grows past `bytes`.
    pub fn set_max_manifest_bytes(&mut self, bytes: u64) {
        self.max_manifest_bytes = bytes;
    }

    fn absorb_counters(&mut self, edit: &VersionEdit) {
        if let Some(id) = &edit.db_id {
            self.db_id = id.clone();
        }
        if let Some(n) = edit.log_number {
            self.log_number = n;
        }
        if let Some(n) = edit.next_file_number {
            self.next_file_number = self.next_file_number.max(n.0);
        }
        if let Some(s) = edit.last_sequence {
            self.last_sequence = self.last_sequence.max(s);
        }
        for (level, key) in &edit.compact_pointers {
            if let Some(p) = self.compact_pointers.get_mut(*level as usize) {
                *p = key.clone();
            }
        }
    }

    /// The current version.
    pub fn current(&self) -> Arc<Version> {
        self.current.clone()
    }

    /// Number of levels.
    pub fn num_levels(&self) -> usize {
        self.num_levels
    }

    /// Allocates a file number.
    pub fn new_file_number(&mut self) -> FileNumber {
        let n = self.next_file_number;
        self.next_file_number += 1;
        FileNumber(n)
    }

    /// Raises the next file number above `used`, a number found on disk.
    pub fn mark_file_number_used(&mut self, used: FileNumber) {
        self.next_file_number = self.next_file_number.max(used.0.saturating_add(1));
    }

    /// The next file number that will be allocated.
    pub fn next_file_number(&self) -> FileNumber {
        FileNumber(self.next_file_number)
    }

    /// The number of the live manifest, if one is open.
    pub fn manifest_number(&self) -> Option<FileNumber> {
        self.manifest.as_ref().map(|m| m.number())
    }

    /// Size of the live manifest in bytes.
    pub fn manifest_size(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.file_size())
    }

    /// The table context shared by every file.
    pub fn table_context(&self) -> &Arc<TableContext> {
        &self.ctx
    }

    /// Applies `edit` to the current version, returning the next one or why it is invalid.
    fn apply(&self, edit: &VersionEdit) -> std::result::Result<Version, String> {
        let base = &self.current;
        let mut levels: Vec<Vec<Arc<FileMeta>>> = base.levels.clone();
        let mut removed: HashMap<FileNumber, Arc<FileMeta>> = HashMap::new();
        for &(level, number) in &edit.deleted_files {
            let files = levels.get_mut(level as usize).ok_or_else(|| {
                format!("edit deletes table {number} from level {level}, beyond the last level")
            })?;
            let pos = files
                .iter()
                .position(|f| f.number == number)
                .ok_or_else(|| {
                    format!("edit deletes table {number} that level {level} does not hold")
                })?;
            removed.insert(number, files.remove(pos));
        }
        for nf in &edit.new_files {
            let level = nf.level as usize;
            if level >= self.num_levels {
                return Err(format!(
                    "edit adds table {} to level {level}, but the store has {} levels",
                    nf.number, self.num_levels
                ));
            }
            let meta = match removed.remove(&nf.number) {
                // A trivial move: the same file at another level.
                Some(m) => m,
                None => {
                    if levels.iter().flatten().any(|f| f.number == nf.number) {
                        return Err(format!("edit adds table {} twice", nf.number));
                    }
                    Arc::new(FileMeta::from_new_file(nf, self.ctx.clone()))
                }
            };
            levels[level].push(meta);
        }
        levels[0].sort_by(l0_order);
        for (level, files) in levels.iter_mut().enumerate().skip(1) {
            files.sort_by(key_order);
            for pair in files.windows(2) {
                if user_key(&pair[0].largest) >= user_key(&pair[1].smallest) {
                    return Err(format!(
                        "tables {} and {} overlap in level {level}",
                        pair[0].number, pair[1].number
                    ));
                }
            }
        }
        for f in levels.iter().flatten() {
            if compare_internal_keys(&f.smallest, &f.largest).is_gt() {
                return Err(format!(
                    "table {} has smallest key above its largest",
                    f.number
                ));
            }
        }
        Ok(Version { levels })
    }

    /// Makes `edit` durable in the manifest and installs the version it produces. Files it
    /// removes are deleted once no reader holds an older version.
    pub fn log_and_apply(&mut self, mut edit: VersionEdit) -> Result<Arc<Version>> {
        edit.next_file_number = Some(FileNumber(self.next_file_number));
        edit.last_sequence = Some(
            edit.last_sequence
                .unwrap_or(self.last_sequence)
                .max(self.last_sequence),
        );
        let next = self.apply(&edit).map_err(|reason| {
            Error::InvalidArgument(format!("internal: invalid version edit: {reason}"))
        })?;
        let manifest = self.manifest.as_mut().ok_or(Error::Closed)?;
        manifest.append(&edit)?;
        crate::failpoint::hit("manifest.edit_appended");
        let live: std::collections::HashSet<FileNumber> =
            next.all_files().map(|(_, f)| f.number).collect();
        for (_, f) in self.current.all_files() {
            if !live.contains(&f.number) {
                f.mark_obsolete();
            }
        }
        self.current = Arc::new(next);
        self.absorb_counters(&edit);
        if self.manifest_size() > self.max_manifest_bytes {
            if let Some(old) = self.roll_manifest()? {
                // CURRENT names the new manifest durably: the old one is garbage.
                self.ctx.fs.remove_file(&old)?;
            }
        }
        Ok(self.current.clone())
    }

    /// An edit that recreates the whole current state (the first edit of a new manifest).
    pub fn snapshot_edit(&self) -> VersionEdit {
        let mut e = VersionEdit {
            db_id: Some(self.db_id.clone()),
            log_number: Some(self.log_number),
            next_file_number: Some(FileNumber(self.next_file_number)),
            last_sequence: Some(self.last_sequence),
            ..VersionEdit::default()
        };
        for (level, f) in self.current.all_files() {
            e.new_files.push(f.to_new_file(level as u32));
        }
        for (level, key) in self.compact_pointers.iter().enumerate() {
            if !key.is_empty() {
                e.compact_pointers.push((level as u32, key.clone()));
            }
        }
        e
    }

    /// Starts a new manifest holding the current state and points `CURRENT` at it.
    /// Returns the path of the manifest it replaces, if any.
    pub fn roll_manifest(&mut self) -> Result<Option<PathBuf>> {
        let number = self.new_file_number();
        let snapshot = self.snapshot_edit();
        let fs = self.ctx.fs.clone();
        let w = ManifestWriter::create(fs.as_ref(), &self.ctx.dir, number, &snapshot)?;
        crate::failpoint::hit("manifest.roll_written");
        set_current(fs.as_ref(), &self.ctx.dir, number)?;
        crate::failpoint::hit("manifest.roll_current_set");
        let old = self
            .manifest
            .replace(w)
            .map(|m| super::filename::manifest_path(&self.ctx.dir, m.number()));
        Ok(old)
    }
}
