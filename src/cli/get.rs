//! `tidemark get CHECKPOINT KEY`: reads one key from a retained checkpoint where its files
//! lie, without restoring it, through the state layer's read-only view
//! ([`KeyedStateView`]): a store's tables are opened from `shared/`, newest level-0 table
//! first, then one table per deeper level, as the store itself would search them.

use std::io::{self, Write};

use serde::Serialize;

use super::args::GetArgs;
use super::checkpoints::{resolve_checkpoint, storage_for};
use super::output::{emit, escape_bytes, hex, Format, Render};
use super::CliError;
use crate::state::view::KeyedStateView;

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

/// Runs `get`.
pub fn run(args: &GetArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.checkpoint.as_path();
    let r = resolve_checkpoint(path)?;
    let m = &r.metadata;
    let storage = storage_for(&r);
    let view = KeyedStateView::open(storage.as_ref(), &r.metadata_path, m)
        .map_err(|e| CliError::at(&r.metadata_path, e))?;
    let key = args.key.as_slice();
    let found = view.get(key).map_err(|e| CliError::at(path, e))?;
    let report = GetReport {
        checkpoint: r.metadata_path.display().to_string(),
        checkpoint_id: m.checkpoint_id.0,
        key: escape_bytes(key),
        key_hex: hex(key),
        found: found.value.is_some(),
        deleted: found.deleted,
        value: found.value.as_deref().map(escape_bytes),
        value_hex: found.value.as_deref().map(hex),
        file: found.file.map(|f| f.display().to_string()),
        level: found.level,
        subtask: found.subtask,
        tables_searched: found.files_searched,
        hex_output: args.hex,
    };
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
