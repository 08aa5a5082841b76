//! `tidemark verify PATH`: checks every checksum of what `PATH` holds and reports each
//! problem on its own line, naming its file. It reads; it never repairs.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use super::args::VerifyArgs;
use super::detect::{self, Kind};
use super::output::{emit, human_bytes, Format, Render};
use super::progress;
use super::store::{self, LogEnd, StoreView};
use super::CliError;
use crate::fs::StdFs;
use crate::lsm::batch::decode_batch;
use crate::lsm::filename;
use crate::lsm::manifest::VersionEdit;
use crate::lsm::wal::LogKind;

/// One file checked.
#[derive(Debug, Clone, Serialize)]
pub struct CheckedFile {
    /// The file.
    pub path: String,
    /// What it is (`sst`, `wal`, `manifest`, `current`, `metadata`, `shared`, `private`...).
    pub kind: String,
    /// Its size in bytes, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Its crc32c (8 hex digits), when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    /// `ok` or `damaged`.
    pub status: &'static str,
    /// What was checked, or a note (a torn WAL tail).
    pub detail: String,
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// What was verified.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// True when no problem was found.
    pub ok: bool,
    /// Every file checked.
    pub files: Vec<CheckedFile>,
    /// One line per problem, each naming its file.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// An empty report for `path` of `kind`.
    pub fn new(path: &Path, kind: Kind) -> VerifyReport {
        VerifyReport {
            path: path.display().to_string(),
            kind,
            ok: true,
            files: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Records a problem (a line that names its file).
    pub fn problem(&mut self, line: impl Into<String>) {
        self.ok = false;
        self.problems.push(line.into());
    }

    /// Records a checked file; a `problem` also goes to the problem list.
    pub fn file(
        &mut self,
        path: &Path,
        kind: &str,
        size_bytes: Option<u64>,
        crc32c: Option<u32>,
        result: Result<String, String>,
    ) {
        tracing::info!(path = %path.display(), kind, ok = result.is_ok(), "checked");
        let (status, detail) = match result {
            Ok(d) => ("ok", d),
            Err(problem) => {
                self.problem(problem.clone());
                ("damaged", problem)
            }
        };
        self.files.push(CheckedFile {
            path: path.display().to_string(),
            kind: kind.to_string(),
            size_bytes,
            crc32c: crc32c.map(|c| format!("{c:08x}")),
            status,
            detail,
        });
    }
}

impl Render for VerifyReport {
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()> {
        for f in &self.files {
            if f.status == "ok" {
                writeln!(out, "ok       {}  {}", f.path, f.detail)?;
            }
        }
        for p in &self.problems {
            writeln!(out, "PROBLEM  {p}")?;
        }
        let bytes: u64 = self.files.iter().filter_map(|f| f.size_bytes).sum();
        writeln!(
            out,
            "{}: {} file{} ({}) checked, {} problem{}",
            self.path,
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" },
            human_bytes(bytes),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )
    }
}

/// Runs `verify`.
pub fn run(args: &VerifyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = args.path.as_path();
    let kind = detect::detect(path)?;
    let report = verify_path(path, kind)?;
    emit(out, Format::from_json_flag(args.json), &report)?;
    if report.ok {
        Ok(())
    } else {
        Err(CliError::Problems {
            path: path.to_path_buf(),
            count: report.problems.len(),
        })
    }
}

/// Verifies `path`, already recognized as `kind`.
pub fn verify_path(path: &Path, kind: Kind) -> Result<VerifyReport, CliError> {
    let mut r = VerifyReport::new(path, kind);
    match kind {
        Kind::Sst => verify_sst(&mut r, path, None),
        Kind::Wal => verify_log(&mut r, path, LogKind::Wal),
        Kind::Manifest => verify_log(&mut r, path, LogKind::Manifest),
        Kind::Current => {
            let dir = crate::fs::parent_dir(path);
            let res = crate::lsm::manifest::read_current(&StdFs, dir)
                .map(|n| format!("names {}", filename::manifest_file_name(n)))
                .map_err(|e| e.to_string());
            r.file(path, "current", None, None, res);
        }
        Kind::StoreDir => verify_store(&mut r, path),
        Kind::Metadata | Kind::CheckpointDir | Kind::JobDir => {
            super::checkpoints::verify_checkpoint(&mut r, path, kind)?
        }
        Kind::ManifestSnapshot => super::checkpoints::verify_manifest_snapshot(&mut r, path),
        Kind::CanonicalSavepoint => {
            let res = super::inspect::canonical_report(path, false)
                .map(|c| {
                    format!(
                        "{} records of {} states in key groups {}..={}",
                        c.records,
                        c.states.len(),
                        c.key_group_start,
                        c.key_group_end
                    )
                })
                .map_err(|e| e.to_string());
            r.file(path, "canonical-savepoint", None, None, res);
        }
    }
    Ok(r)
}

/// What a manifest says a table must be.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// Size in bytes.
    pub size_bytes: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
}

/// Opens the table at `path`, checks every block's crc, entry order and counts, and the
/// whole-file crc against `expected` when given.
pub fn verify_sst(r: &mut VerifyReport, path: &Path, expected: Option<Expected>) {
    verify_sst_opened(r, path, crate::fs::open_regular(path), expected)
}

/// [`verify_sst`] of a table already opened from `path` (or the error of that open).
pub fn verify_sst_opened(
    r: &mut VerifyReport,
    path: &Path,
    opened: crate::Result<std::fs::File>,
    expected: Option<Expected>,
) {
    let size = opened
        .as_ref()
        .ok()
        .and_then(|f| f.metadata().ok())
        .map(|m| m.len());
    let res = (|| {
        let file = opened.map_err(|e| e.to_string())?;
        if let (Some(e), Some(s)) = (expected, size) {
            if e.size_bytes != s {
                return Err(format!(
                    "{}: file is {s} bytes, the manifest records {}",
                    path.display(),
                    e.size_bytes
                ));
            }
        }
        let table = store::open_table_file(file, path).map_err(|e| e.to_string())?;
        let crc = table.verify().map_err(|e| e.to_string())?;
        if let Some(e) = expected {
            if e.crc32c != crc {
                return Err(format!(
                    "{}: whole-file crc32c is {crc:08x}, the manifest records {:08x}",
                    path.display(),
                    e.crc32c
                ));
            }
        }
        Ok((crc, table.properties().num_data_blocks))
    })();
    match res {
        Ok((crc, blocks)) => {
            let detail = format!(
                "{blocks} block crcs, whole-file crc32c {crc:08x}{}",
                if expected.is_some() {
                    " matches the manifest"
                } else {
                    ""
                }
            );
            r.file(path, "sst", size, Some(crc), Ok(detail));
        }
        Err(p) => r.file(path, "sst", size, None, Err(p)),
    }
}

/// Reads every record of a log and decodes it (write batches for a WAL, version edits for
/// a manifest). A torn tail is noted, not a problem: it is a write a crash cut before it
/// was acknowledged.
pub fn verify_log(r: &mut VerifyReport, path: &Path, kind: LogKind) {
    let kind_name = match kind {
        LogKind::Wal => "wal",
        LogKind::Manifest => "manifest",
    };
    let size = std::fs::metadata(path).ok().map(|m| m.len());
    let res = (|| {
        let log = store::read_log(&StdFs, path, kind).map_err(|e| e.to_string())?;
        for rec in &log.records {
            match kind {
                LogKind::Wal => {
                    decode_batch(&rec.payload, path, rec.offset).map_err(|e| e.to_string())?;
                }
                LogKind::Manifest => {
                    VersionEdit::decode(&rec.payload, path, rec.offset)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if kind == LogKind::Manifest && log.records.is_empty() {
            return Err(format!(
                "{}: manifest holds no version edit",
                path.display()
            ));
        }
        let n = log.records.len();
        match log.end {
            LogEnd::Eof => Ok(format!("{n} records")),
            LogEnd::TornTail { offset, .. } => Ok(format!(
                "{n} records, then a torn tail at offset {offset} (never acknowledged)"
            )),
            LogEnd::Corrupt { offset, reason } => Err(format!(
                "corruption in {} at offset {offset}: {reason}",
                path.display()
            )),
        }
    })();
    r.file(path, kind_name, size, None, res);
}

/// CURRENT, the manifest, every table the manifest lists (size, blocks, crc) and every
/// live WAL.
pub fn verify_store(r: &mut VerifyReport, dir: &Path) {
    let view = match store::open_store_view(dir) {
        Ok(v) => v,
        Err(e) => {
            r.problem(e.to_string());
            return;
        }
    };
    r.file(
        &dir.join(filename::CURRENT),
        "current",
        None,
        None,
        Ok(format!(
            "names {}",
            filename::manifest_file_name(view.manifest_number)
        )),
    );
    verify_manifest_of(r, &view);
    let tables: Vec<_> = view.state.files().cloned().collect();
    let pb = progress::bar(tables.len() as u64, "verify");
    for f in &tables {
        let p = view.path_of(&filename::table_file_name(f.number));
        pb.set_message(p.display().to_string());
        if !p.exists() {
            r.file(
                &p,
                "sst",
                None,
                None,
                Err(format!(
                    "{}: missing (the manifest lists it at level {})",
                    p.display(),
                    f.level
                )),
            );
        } else {
            verify_sst(
                r,
                &p,
                Some(Expected {
                    size_bytes: f.size,
                    crc32c: f.file_crc32c,
                }),
            );
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    for w in view.live_wals() {
        verify_log(r, &view.path_of(&w.name), LogKind::Wal);
    }
}

fn verify_manifest_of(r: &mut VerifyReport, view: &StoreView) {
    let detail = match &view.manifest.end {
        LogEnd::TornTail { offset, .. } => format!(
            "{} edits, then a torn tail at offset {offset} (never acknowledged)",
            view.edits.len()
        ),
        _ => format!("{} edits", view.edits.len()),
    };
    r.file(
        &view.manifest_path,
        "manifest",
        Some(view.manifest.size_bytes),
        None,
        Ok(detail),
    );
    for p in &view.state.problems {
        r.problem(format!("{}: {p}", view.manifest_path.display()));
    }
}
