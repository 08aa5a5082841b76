//! Sinks: where records leave a job.
//!
//! [`FileSink`] is exactly-once, as Flink's `FileSink`: a subtask writes the records of a
//! checkpoint interval to an in-progress file under `<dir>/.inprogress/`; at the barrier
//! the file is synced and becomes *pending* (recorded in the checkpoint's operator state);
//! when the checkpoint completes the pending files are committed: renamed to their final
//! names in `<dir>` and the directory synced. A restore commits the pending files of the
//! checkpoint it restores (the completion may not have reached the sink before the
//! failure) and deletes every in-progress file of attempts that did not complete, whose
//! records the restored sources replay. So every record is in exactly one committed file,
//! whatever fails when. One directory per sink.
//!
//! [`PrintSink`] writes to standard output, at least once.

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::channel::Output;
use super::task::{StreamOperator, TaskContext};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::fs::FileSystem as _;
use crate::state::keyed::ListStateDescriptor;
use crate::state::operator::Redistribution;

/// The directory of in-progress and pending files, inside the sink's directory.
pub const IN_PROGRESS_DIR: &str = ".inprogress";

/// An exactly-once sink of lines (each record's `Display`) into files of a directory.
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    /// Committed files go to `dir` (created if missing), named `part-*`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSink { dir: dir.into() }
    }

    /// The sink's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn operator<T>(&self) -> FileSinkOperator<T> {
        FileSinkOperator {
            dir: self.dir.clone(),
            staging: self.dir.join(IN_PROGRESS_DIR),
            token: String::new(),
            subtask: 0,
            open: None,
            pending: Vec::new(),
            next_part: 0,
            line: String::new(),
            _t: std::marker::PhantomData,
        }
    }
}

/// The lines of every committed file of a [`FileSink`] directory, sorted: what the sink
/// produced, whatever the parallelism and however many failures it took.
pub fn committed_lines(dir: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for e in crate::fs::list_entries(dir)? {
        if e.is_plain_file() && e.name.starts_with("part-") {
            let path = dir.join(&e.name);
            let text = std::fs::read_to_string(&path).map_err(|er| Error::io("read", &path, er))?;
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines.sort();
    Ok(lines)
}

/// A file of a checkpoint interval that waits for its checkpoint to complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingFile {
    /// Its name under `.inprogress/`.
    staged: String,
    /// Its committed name in the sink's directory.
    committed: String,
    /// The checkpoint whose completion commits it.
    checkpoint: u64,
}

fn pending_descriptor() -> ListStateDescriptor<PendingFile> {
    ListStateDescriptor::new("file-sink-pending")
}

struct OpenFile {
    name: String,
    file: std::io::BufWriter<std::fs::File>,
    bytes: u64,
}

pub(crate) struct FileSinkOperator<T> {
    dir: PathBuf,
    staging: PathBuf,
    token: String,
    subtask: u32,
    open: Option<OpenFile>,
    pending: Vec<PendingFile>,
    next_part: u64,
    /// The line being written, reused from record to record.
    line: String,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T> FileSinkOperator<T> {
    /// Closes the open file, synced, and makes it pending for checkpoint `id`.
    fn close_open(&mut self, id: u64) -> Result<()> {
        let Some(mut f) = self.open.take() else {
            return Ok(());
        };
        let path = self.staging.join(&f.name);
        f.file.flush().map_err(|e| Error::io("write", &path, e))?;
        let file = f
            .file
            .into_inner()
            .map_err(|e| Error::io("write", &path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
        let committed = f
            .name
            .strip_suffix(".inprogress")
            .unwrap_or(&f.name)
            .to_string();
        self.pending.push(PendingFile {
            staged: f.name,
            committed: format!("part-{committed}"),
            checkpoint: id,
        });
        // The pending file's name must survive a crash as its bytes do.
        crate::fs::StdFs.sync_dir(&self.staging)
    }

    /// Commits the pending files of checkpoints up to `upto`.
    fn commit_upto(&mut self, upto: u64) -> Result<()> {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.checkpoint <= upto);
        self.pending = later;
        commit_files(&self.dir, &self.staging, &now)
    }
}

/// Renames each pending file to its committed name (a file already committed, by an
/// earlier attempt, is left as it is), then syncs the directory.
fn commit_files(dir: &Path, staging: &Path, files: &[PendingFile]) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    for p in files {
        let from = staging.join(&p.staged);
        let to = dir.join(&p.committed);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !to.exists() {
                    return Err(Error::Job(format!(
                        "the pending file {} of checkpoint {} is missing and was never \
                         committed as {}: its records are lost",
                        from.display(),
                        p.checkpoint,
                        to.display()
                    )));
                }
            }
            Err(e) => return Err(Error::io("rename", &from, e)),
        }
    }
    crate::fs::StdFs.sync_dir(dir)
}

impl<T: Display + Send> StreamOperator<T, ()> for FileSinkOperator<T> {
    fn open(&mut self, ctx: &mut TaskContext) -> Result<()> {
        std::fs::create_dir_all(&self.staging).map_err(|e| Error::io("mkdir", &self.staging, e))?;
        self.token = ctx.attempt().token.clone();
        self.subtask = ctx.subtask().subtask_index;
        let d = pending_descriptor();
        let restored = ctx
            .operator_state()
            .list(&d, Redistribution::Union)?
            .get()?;
        // Every subtask gets every pending file (union); the first commits them all.
        if self.subtask == 0 {
            commit_files(&self.dir, &self.staging, &restored)?;
            for e in crate::fs::list_entries(&self.staging)? {
                if e.is_plain_file() && !e.name.starts_with(&format!("{}-", self.token)) {
                    let path = self.staging.join(&e.name);
                    std::fs::remove_file(&path).map_err(|er| Error::io("remove", &path, er))?;
                }
            }
        }
        ctx.operator_state()
            .list(&d, Redistribution::Union)?
            .clear();
        Ok(())
    }

    fn process(&mut self, rec: T, _ctx: &mut TaskContext, _out: &mut Output<()>) -> Result<()> {
        if self.open.is_none() {
            let name = format!(
                "{}-{}-{}.inprogress",
                self.token, self.subtask, self.next_part
            );
            self.next_part += 1;
            let path = self.staging.join(&name);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::io("create", &path, e))?;
            self.open = Some(OpenFile {
                name,
                file: std::io::BufWriter::with_capacity(256 << 10, file),
                bytes: 0,
            });
        }
        if let Some(f) = self.open.as_mut() {
            use std::fmt::Write as _;
            self.line.clear();
            write!(self.line, "{rec}").map_err(|_| {
                Error::Job(format!(
                    "file sink subtask {}: a record's Display failed",
                    self.subtask
                ))
            })?;
            self.line.push('\n');
            f.file
                .write_all(self.line.as_bytes())
                .map_err(|e| Error::io("write", self.staging.join(&f.name), e))?;
            f.bytes += self.line.len() as u64;
        }
        Ok(())
    }

    fn prepare_snapshot(&mut self, id: CheckpointId, ctx: &mut TaskContext) -> Result<()> {
        self.close_open(id.0)?;
        let d = pending_descriptor();
        ctx.operator_state()
            .list(&d, Redistribution::Union)?
            .update(self.pending.iter())
    }

    fn notify_complete(&mut self, id: CheckpointId, _ctx: &mut TaskContext) -> Result<()> {
        self.commit_upto(id.0)
    }

    fn end_input(&mut self, ctx: &mut TaskContext, _out: &mut Output<()>) -> Result<()> {
        if ctx.checkpointing() {
            // The final checkpoint covered every record; its completion committed them.
            if self.open.as_ref().is_some_and(|f| f.bytes > 0) {
                return Err(Error::Job(format!(
                    "file sink subtask {}: records arrived after the final checkpoint",
                    self.subtask
                )));
            }
            return Ok(());
        }
        // Without checkpoints, the end of input commits everything.
        self.close_open(u64::MAX)?;
        self.commit_upto(u64::MAX)
    }
}

/// Writes every record's `Display` to standard output, one per line (at least once:
/// replayed records print again).
#[derive(Debug, Clone, Default)]
pub struct PrintSink {
    pub(crate) prefix: Option<String>,
}

impl PrintSink {
    /// Lines as they are.
    pub fn new() -> Self {
        PrintSink::default()
    }

    /// Lines prefixed by `prefix> `, as Flink's `print(prefix)`.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        PrintSink {
            prefix: Some(prefix.into()),
        }
    }
}

pub(crate) struct PrintOperator<T> {
    pub prefix: Option<String>,
    pub _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Display + Send> StreamOperator<T, ()> for PrintOperator<T> {
    fn process(&mut self, rec: T, ctx: &mut TaskContext, _out: &mut Output<()>) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        let r = match &self.prefix {
            Some(p) => writeln!(stdout, "{p}:{}> {rec}", ctx.subtask().subtask_index + 1),
            None => writeln!(stdout, "{rec}"),
        };
        r.map_err(|e| Error::io("write", "<stdout>", e))
    }
}
