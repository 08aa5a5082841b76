//! `tidemark get CHECKPOINT KEY`: reads one key from a retained LSM checkpoint where its
//! files lie, without restoring it: the tables of the store's manifest snapshot are opened
//! from `shared/`, newest level-0 table first, then one table per deeper level, as the
//! store itself would search them.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use super::args::GetArgs;
use super::checkpoints::{lsm_layout, resolve_checkpoint, storage_for};
use super::output::{emit, escape_bytes, hex, Format, Render};
use super::CliError;
use crate::checkpoint::CheckpointStorage;
use crate::lsm::manifest::NewFile;
use crate::lsm::sst::{LookupResult, Table};
use crate::lsm::types::{user_key, SeqNo};

/// What `get` prints.
#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    /// The checkpoint's `_metadata`.
    pub checkpoint: String,
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// The key, escaped.
    pub key: String,
    /// The key in hex.
    pub key_hex: String,
    /// True when a value was found.
    pub found: bool,
    /// True when the newest entry is a tombstone.
    pub deleted: bool,
    /// The value, escaped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
    /// The checkpoint file it was read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Level of that table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// Operator and subtask whose state held it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtask: Option<String>,
    /// Tables opened to answer.
    pub tables_searched: usize,
    #[serde(skip)]
    hex_output: bool,
}

impl Render for GetReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        match (&self.value, &self.value_hex) {
            (Some(v), Some(h)) => writeln!(out, "{}", if self.hex_output { h } else { v }),
            _ => Ok(()),
        }
    }
}

/// True when `ukey` may lie in `f` (its user-key range covers it).
fn covers(f: &NewFile, ukey: &[u8]) -> bool {
    user_key(&f.smallest) <= ukey && ukey <= user_key(&f.largest)
}

/// Runs `get`.
pub fn run(args: &GetArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.checkpoint.as_path();
    let r = resolve_checkpoint(path)?;
    let m = &r.metadata;
    // Only an LSM file set can be searched for a key; the handles say which they are.
    let sets: Vec<_> = m
        .operator_states
        .iter()
        .flat_map(|s| s.lsm_file_sets().map(move |(_, set)| (s, set)))
        .collect();
    if sets.is_empty() {
        let backends: Vec<&str> = m.backends().into_iter().collect();
        return Err(CliError::Message(format!(
            "{}: checkpoint {} holds no LSM store (its state: {})",
            r.metadata_path.display(),
            m.checkpoint_id,
            if backends.is_empty() {
                "none".to_string()
            } else {
                format!("backend {}", backends.join(", "))
            }
        )));
    }
    let storage = storage_for(&r);
    let key = args.key.as_slice();
    let mut report = GetReport {
        checkpoint: r.metadata_path.display().to_string(),
        checkpoint_id: m.checkpoint_id.0,
        key: escape_bytes(key),
        key_hex: hex(key),
        found: false,
        deleted: false,
        value: None,
        value_hex: None,
        file: None,
        level: None,
        subtask: None,
        tables_searched: 0,
        hex_output: args.hex,
    };
    'subtasks: for (s, set) in sets {
        let layout = lsm_layout(storage.as_ref(), &r.metadata_path, &s.label(), set)
            .map_err(|e| CliError::at(path, e))?;
        let seq = layout.edit.last_sequence.unwrap_or(SeqNo::MAX);
        for (f, h) in layout.tables.iter().filter(|(f, _)| covers(f, key)) {
            let file = storage.display_path(&h.path);
            let table = open_checked(storage.as_ref(), &h.path, &file, f)
                .map_err(|e| CliError::at(&file, e))?;
            report.tables_searched += 1;
            if !table.may_contain(key) {
                continue;
            }
            let found = table.get(key, seq).map_err(|e| CliError::at(&file, e))?;
            let (value, deleted) = match found {
                LookupResult::NotFound => continue,
                LookupResult::Deleted => (None, true),
                LookupResult::Found(v) => (Some(v), false),
            };
            report.found = value.is_some();
            report.deleted = deleted;
            report.value_hex = value.as_deref().map(hex);
            report.value = value.as_deref().map(escape_bytes);
            report.file = Some(file.display().to_string());
            report.level = Some(f.level);
            report.subtask = Some(format!("{}_{}", s.operator_id, s.subtask_index));
            break 'subtasks;
        }
    }
    emit(out, Format::from_json_flag(args.json), &report)?;
    if report.found {
        return Ok(());
    }
    Err(CliError::Message(format!(
        "{}: key {:?} {} in checkpoint {} ({} table{} searched)",
        r.metadata_path.display(),
        report.key,
        if report.deleted {
            "was deleted"
        } else {
            "not found"
        },
        m.checkpoint_id,
        report.tables_searched,
        if report.tables_searched == 1 { "" } else { "s" }
    )))
}

/// Opens a checkpoint table (a regular file whose canonical path lies inside the job
/// directory) after checking its size against the manifest snapshot.
fn open_checked(
    storage: &dyn CheckpointStorage,
    rel: &str,
    file: &Path,
    f: &NewFile,
) -> crate::Result<std::sync::Arc<Table>> {
    let opened = storage
        .open_read(rel)?
        .ok_or_else(|| crate::Error::NotFound {
            path: file.to_path_buf(),
        })?;
    let size = opened
        .metadata()
        .map_err(|e| crate::Error::io("stat", file, e))?
        .len();
    if size != f.size {
        return Err(crate::Error::corruption(
            file,
            0,
            format!("file is {size} bytes, the checkpoint records {}", f.size),
        ));
    }
    Table::from_file(opened, file, f.number, None, true)
}
