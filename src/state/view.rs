//! Read-only views of the keyed state a checkpoint holds, for tools that look without
//! restoring: what each keyed-state handle holds ([`keyed_contents`]), and the newest
//! entry of a key in the backends' stores ([`KeyedStateView`]). They work from a resolved
//! `_metadata` for any backend, so a tool needs no edit when a backend is added.

use std::path::{Path, PathBuf};

use super::lsm_snapshot::{lsm_layout, read_live_set, LsmLayout};
use crate::checkpoint::{
    CheckpointStorage, KeyedState, KeyedStateHandle, LsmFileSet, Metadata, OperatorSubtaskState,
};
use crate::error::{Error, Result};
use crate::lsm::LiveSet;

/// What one keyed-state handle holds, as the backend that wrote it reads it.
#[derive(Debug, Clone)]
pub enum KeyedContents {
    /// A store's file set (the `lsm` backend): its tables level by level and the sequence
    /// number they are consistent at; its keys can be looked up ([`KeyedStateView`]).
    Store(LiveSet),
    /// Key groups serialized one after another (the heap backends, canonical savepoints):
    /// `_metadata` records where each key group starts; there is no store to search.
    KeyGroups,
}

/// Reads what `handle` holds: for a store's file set, the description of its tables
/// (checked against the size and crc32c `_metadata` records).
pub fn keyed_contents(
    storage: &dyn CheckpointStorage,
    handle: &KeyedStateHandle,
) -> Result<KeyedContents> {
    match &handle.state {
        KeyedState::IncrementalLsm(set) => Ok(KeyedContents::Store(read_live_set(storage, set)?)),
        KeyedState::KeyGroupsFile { .. }
        | KeyedState::KeyGroupsInline { .. }
        | KeyedState::CanonicalFile { .. } => Ok(KeyedContents::KeyGroups),
    }
}

/// The subtask state and keyed-state handle whose file set holds the private file `rel`
/// (a store's description, the manifest snapshot), if any handle of `metadata` names it.
pub fn store_described_by<'m>(
    metadata: &'m Metadata,
    rel: &str,
) -> Option<(&'m OperatorSubtaskState, &'m KeyedStateHandle)> {
    metadata.operator_states.iter().find_map(|s| {
        s.lsm_file_sets()
            .find(|(_, set)| set.manifest.path == rel)
            .map(|(h, _)| (s, h))
    })
}

/// The newest entry of a key in a checkpoint's keyed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLookup {
    /// The value, when the newest entry is a put.
    pub value: Option<Vec<u8>>,
    /// True when the newest entry is a deletion.
    pub deleted: bool,
    /// The checkpoint file that holds the entry.
    pub file: Option<PathBuf>,
    /// The level of that file in its store.
    pub level: Option<u32>,
    /// The subtask whose state holds it (`<operator>_<subtask>`).
    pub subtask: Option<String>,
    /// The number of files opened to answer.
    pub files_searched: usize,
}

/// A read-only view of the keyed state of one checkpoint, by the raw keys of the
/// backends' stores: each store's tables are read where they lie in the checkpoint,
/// newest first, as the store itself would search them.
pub struct KeyedStateView<'a> {
    storage: &'a dyn CheckpointStorage,
    metadata_path: PathBuf,
    stores: Vec<(&'a OperatorSubtaskState, &'a LsmFileSet)>,
}

impl std::fmt::Debug for KeyedStateView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStateView")
            .field("metadata_path", &self.metadata_path)
            .field("stores", &self.stores.len())
            .finish()
    }
}

impl<'a> KeyedStateView<'a> {
    /// The view of `metadata` (read from `metadata_path`, whose job directory `storage`
    /// reads), or an error when no handle of it holds a store that can be searched by key
    /// (saying which backends wrote its state).
    pub fn open(
        storage: &'a dyn CheckpointStorage,
        metadata_path: &Path,
        metadata: &'a Metadata,
    ) -> Result<KeyedStateView<'a>> {
        let stores: Vec<_> = metadata
            .operator_states
            .iter()
            .flat_map(|s| s.lsm_file_sets().map(move |(_, set)| (s, set)))
            .collect();
        if stores.is_empty() {
            let backends: Vec<&str> = metadata.backends().into_iter().collect();
            return Err(Error::InvalidArgument(format!(
                "checkpoint {} holds no LSM store (its state: {})",
                metadata.checkpoint_id,
                if backends.is_empty() {
                    "none".to_string()
                } else {
                    format!("backend {}", backends.join(", "))
                }
            )));
        }
        Ok(KeyedStateView {
            storage,
            metadata_path: metadata_path.to_path_buf(),
            stores,
        })
    }

    /// The newest entry of `key`, searched subtask by subtask up to the first store that
    /// holds one. A damaged file is an error naming it.
    pub fn get(&self, key: &[u8]) -> Result<KeyLookup> {
        let mut found = KeyLookup::default();
        for (s, set) in &self.stores {
            let LsmLayout { live_set, tables } =
                lsm_layout(self.storage, &self.metadata_path, &s.label(), set)?;
            let mut file = None;
            let hit = live_set.lookup(key, |t| {
                let (_, h) = tables
                    .iter()
                    .find(|(lt, _)| lt.number == t.number)
                    .ok_or_else(|| {
                        Error::corruption(
                            &self.metadata_path,
                            0,
                            format!("no checkpoint file holds {}", t.name),
                        )
                    })?;
                let path = self.storage.display_path(&h.path);
                let opened = self
                    .storage
                    .open_read(&h.path)?
                    .ok_or_else(|| Error::NotFound { path: path.clone() })?;
                file = Some(path.clone());
                Ok((opened, path))
            })?;
            found.files_searched += hit.tables_searched;
            if let Some(t) = hit.table {
                found.value = hit.value;
                found.deleted = hit.deleted;
                found.file = file;
                found.level = Some(t.level);
                found.subtask = Some(s.label());
                break;
            }
        }
        Ok(found)
    }
}
