//! Sources: where records enter a job. A source subtask reads its splits, keeps its
//! position in operator state (so a restore replays from the checkpointed position, and a
//! rescale hands the splits to the new subtasks), and emits the coordinator's barriers.
//!
//! Two are built in: [`GeneratorSource`], a deterministic generator, and [`FileSource`],
//! the lines of a file or of every file in a directory.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::channel::Output;
use super::task::{Control, TaskBody, TaskContext, TaskEvent, TaskRuntime};
use crate::checkpoint::{CheckpointId, SourceOffset};
use crate::error::{Error, Result};
use crate::state::keyed::ListStateDescriptor;
use crate::state::operator::{OperatorStateStore, Redistribution};

/// What a [`SourceReader`] has for its subtask now.
#[derive(Debug)]
pub enum Poll<T> {
    /// A record.
    Ready(T),
    /// Nothing now; more may come.
    Idle,
    /// Nothing ever again (a bounded source at its end).
    Exhausted,
}

/// A source: creates one reader per subtask.
pub trait Source<T>: Send + Sync + 'static {
    /// The reader of subtask `index` of `parallelism`.
    fn reader(&self, index: u32, parallelism: u32) -> Result<Box<dyn SourceReader<T>>>;
}

/// One subtask's reader.
pub trait SourceReader<T>: Send {
    /// Takes the reader's position from `state`: restored from a checkpoint when
    /// `restored` (possibly with another parallelism), else empty.
    fn open(&mut self, state: &mut OperatorStateStore, restored: bool) -> Result<()>;
    /// The next record, if any.
    fn poll(&mut self) -> Result<Poll<T>>;
    /// Puts the reader's position into `state` for a checkpoint (called between two
    /// records) and returns it for `_metadata`'s source offsets.
    fn snapshot(&mut self, state: &mut OperatorStateStore) -> Result<Vec<SourceOffset>>;
    /// A checkpoint completed.
    fn notify_complete(&mut self, _id: CheckpointId) -> Result<()> {
        Ok(())
    }
}

/// Records polled between two looks at the coordinator's messages.
const POLL_BURST: usize = 64;

/// The task of a source subtask.
pub(crate) struct SourceTask<T> {
    pub reader: Box<dyn SourceReader<T>>,
    pub out: Output<T>,
}

impl<T: Clone + Send> TaskBody for SourceTask<T> {
    fn run(self: Box<Self>, rt: &mut TaskRuntime) -> Result<()> {
        let SourceTask {
            mut reader,
            mut out,
        } = *self;
        let mut ctx: TaskContext = rt.open_context()?;
        reader.open(&mut ctx.operator_state, ctx.restored.is_some())?;
        out.open()?;
        let mut exhausted = false;
        loop {
            if rt.cancelled() {
                return Err(Error::Cancelled);
            }
            // The coordinator's messages: between two records, never inside one.
            let wait = if exhausted {
                Some(Duration::from_millis(50))
            } else {
                None
            };
            let mut next = match wait {
                Some(d) => rt.control.recv_timeout(d).ok(),
                None => rt.control.try_recv().ok(),
            };
            while let Some(c) = next {
                match c {
                    Control::Trigger(b) => {
                        out.flush()?;
                        let offsets = named(reader.snapshot(&mut ctx.operator_state)?, rt);
                        rt.snapshot(&mut ctx, b, Duration::ZERO, offsets)?;
                        out.barrier(b)?;
                    }
                    Control::Complete(id) => {
                        reader.notify_complete(id)?;
                        out.control(c)?;
                    }
                    Control::Aborted(_) => out.control(c)?,
                    Control::Finish => {
                        out.end()?;
                        rt.join_asyncs();
                        return Ok(());
                    }
                }
                next = rt.control.try_recv().ok();
            }
            if exhausted {
                continue;
            }
            for _ in 0..POLL_BURST {
                match reader.poll()? {
                    Poll::Ready(r) => out.collect(r),
                    Poll::Idle => {
                        out.flush()?;
                        if let Ok(c) = rt.control.recv_timeout(Duration::from_millis(5)) {
                            // Put it back in front: handled at the top of the loop.
                            handle_now(c, rt, &mut ctx, &mut reader, &mut out)?;
                        }
                        break;
                    }
                    Poll::Exhausted => {
                        out.flush()?;
                        exhausted = true;
                        let _ = rt.events.send(TaskEvent::SourceExhausted { task: rt.id });
                        break;
                    }
                }
            }
            out.take_error()?;
        }
    }
}

/// Source offsets under the source operator's id, so `_metadata` tells sources apart.
fn named(mut offsets: Vec<SourceOffset>, rt: &TaskRuntime) -> Vec<SourceOffset> {
    for o in &mut offsets {
        o.source = rt.info.operator_id.clone();
    }
    offsets
}

/// A control message that arrived while the source was idle.
fn handle_now<T: Clone>(
    c: Control,
    rt: &mut TaskRuntime,
    ctx: &mut TaskContext,
    reader: &mut Box<dyn SourceReader<T>>,
    out: &mut Output<T>,
) -> Result<()> {
    match c {
        Control::Trigger(b) => {
            out.flush()?;
            let offsets = named(reader.snapshot(&mut ctx.operator_state)?, rt);
            rt.snapshot(ctx, b, Duration::ZERO, offsets)?;
            out.barrier(b)
        }
        Control::Complete(id) => {
            reader.notify_complete(id)?;
            out.control(c)
        }
        Control::Aborted(_) => out.control(c),
        // Finish comes only after the source reported itself exhausted.
        Control::Finish => Err(Error::Job(
            "finish sent to a source that is not done".into(),
        )),
    }
}

/// A split's position, as kept in operator state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SplitPosition {
    split: String,
    offset: u64,
}

fn positions_descriptor() -> ListStateDescriptor<SplitPosition> {
    ListStateDescriptor::new("source-positions")
}

/// The positions this subtask holds, restored or fresh.
fn load_positions(
    state: &mut OperatorStateStore,
    restored: bool,
    fresh: impl FnOnce() -> Vec<SplitPosition>,
) -> Result<Vec<SplitPosition>> {
    let d = positions_descriptor();
    let list = state.list(&d, Redistribution::SplitDistribute)?;
    if restored {
        list.get()
    } else {
        Ok(fresh())
    }
}

fn store_positions(state: &mut OperatorStateStore, positions: &[SplitPosition]) -> Result<()> {
    let d = positions_descriptor();
    let mut list = state.list(&d, Redistribution::SplitDistribute)?;
    list.update(positions.iter())
}

/// A deterministic generator: record `i` is `f(i)` for `i` in `0..count` (or forever), cut
/// into `splits` splits (split `j` yields the `i` with `i % splits == j`), spread over the
/// subtasks. Replaying from a position yields the same records, so a restore gives the
/// same results as a run that never failed. An optional rate limits records per second
/// per subtask.
pub struct GeneratorSource<T> {
    f: Arc<dyn Fn(u64) -> T + Send + Sync>,
    count: Option<u64>,
    splits: u32,
    rate: Option<u64>,
}

impl<T> std::fmt::Debug for GeneratorSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorSource")
            .field("count", &self.count)
            .field("splits", &self.splits)
            .finish()
    }
}

impl<T: Send + 'static> GeneratorSource<T> {
    /// Records `f(0)..f(count - 1)` (forever when `count` is `None`), in 16 splits.
    pub fn new(count: Option<u64>, f: impl Fn(u64) -> T + Send + Sync + 'static) -> Self {
        GeneratorSource {
            f: Arc::new(f),
            count,
            splits: 16,
            rate: None,
        }
    }

    /// Cuts the sequence into `splits` splits (the most subtasks that get records).
    pub fn with_splits(mut self, splits: u32) -> Self {
        self.splits = splits.max(1);
        self
    }

    /// At most `per_second` records per second per subtask.
    pub fn with_rate(mut self, per_second: u64) -> Self {
        self.rate = Some(per_second.max(1));
        self
    }
}

impl<T: Send + 'static> Source<T> for GeneratorSource<T> {
    fn reader(&self, index: u32, parallelism: u32) -> Result<Box<dyn SourceReader<T>>> {
        Ok(Box::new(GeneratorReader {
            f: Arc::clone(&self.f),
            count: self.count,
            splits: self.splits,
            index,
            parallelism,
            positions: Vec::new(),
            current: 0,
            rate: self.rate,
            started: Instant::now(),
            emitted: 0,
        }))
    }
}

struct GeneratorReader<T> {
    f: Arc<dyn Fn(u64) -> T + Send + Sync>,
    count: Option<u64>,
    splits: u32,
    index: u32,
    parallelism: u32,
    /// (split, next index)
    positions: Vec<(u32, u64)>,
    current: usize,
    rate: Option<u64>,
    started: Instant,
    emitted: u64,
}

impl<T: Send> SourceReader<T> for GeneratorReader<T> {
    fn open(&mut self, state: &mut OperatorStateStore, restored: bool) -> Result<()> {
        let (splits, index, p) = (self.splits, self.index, self.parallelism);
        let loaded = load_positions(state, restored, || {
            (0..splits)
                .filter(|s| s % p == index)
                .map(|s| SplitPosition {
                    split: format!("split-{s}"),
                    offset: u64::from(s),
                })
                .collect()
        })?;
        self.positions = loaded
            .into_iter()
            .map(|sp| {
                let s = sp
                    .split
                    .strip_prefix("split-")
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|s| *s < splits)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "generator split {:?} is not one of this generator's {splits}",
                            sp.split
                        ))
                    })?;
                Ok((s, sp.offset))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll<T>> {
        if let Some(rate) = self.rate {
            let allowed = self.started.elapsed().as_secs_f64() * rate as f64;
            if self.emitted as f64 >= allowed {
                std::thread::sleep(Duration::from_millis(1));
                return Ok(Poll::Idle);
            }
        }
        let n = self.positions.len();
        for _ in 0..n {
            let k = self.current % n;
            self.current = self.current.wrapping_add(1);
            let (_, next) = &mut self.positions[k];
            if self.count.is_none_or(|c| *next < c) {
                let i = *next;
                *next += u64::from(self.splits);
                self.emitted += 1;
                return Ok(Poll::Ready((self.f)(i)));
            }
        }
        Ok(Poll::Exhausted)
    }

    fn snapshot(&mut self, state: &mut OperatorStateStore) -> Result<Vec<SourceOffset>> {
        let positions: Vec<SplitPosition> = self
            .positions
            .iter()
            .map(|(s, next)| SplitPosition {
                split: format!("split-{s}"),
                offset: *next,
            })
            .collect();
        store_positions(state, &positions)?;
        Ok(positions
            .into_iter()
            .map(|p| SourceOffset {
                source: "generator".into(),
                split: p.split,
                offset: p.offset,
            })
            .collect())
    }
}

/// The lines of a file, or of every regular file in a directory (sorted by name, each
/// file one split), without their line ends. Bounded: the job ends when every line was
/// read. A line that is not UTF-8 fails the job with an error naming the file and offset.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    rate: Option<u64>,
}

impl FileSource {
    /// The lines under `path` (a file or a directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource {
            path: path.into(),
            rate: None,
        }
    }

    /// At most `lines_per_second` lines per second per subtask.
    pub fn with_rate(mut self, lines_per_second: u64) -> Self {
        self.rate = Some(lines_per_second.max(1));
        self
    }

    /// The files read, in split order.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        list_input_files(&self.path)
    }
}

/// The regular files `path` names: itself, or the files of the directory, sorted.
fn list_input_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{}: neither a file nor a directory",
            path.display()
        )));
    }
    let mut files: Vec<PathBuf> = crate::fs::list_entries(path)?
        .into_iter()
        // Hidden and underscore files are skipped, as Flink's file sources skip them.
        .filter(|e| e.is_plain_file() && !e.name.starts_with('.') && !e.name.starts_with('_'))
        .map(|e| path.join(&e.name))
        .collect();
    files.sort();
    Ok(files)
}

impl Source<String> for FileSource {
    fn reader(&self, index: u32, parallelism: u32) -> Result<Box<dyn SourceReader<String>>> {
        Ok(Box::new(FileReader {
            root: self.path.clone(),
            index,
            parallelism,
            splits: Vec::new(),
            current: None,
            line: Vec::new(),
            rate: self.rate,
            started: Instant::now(),
            emitted: 0,
        }))
    }
}

struct FileReader {
    root: PathBuf,
    index: u32,
    parallelism: u32,
    /// (file, next byte offset, done)
    splits: Vec<(PathBuf, u64, bool)>,
    /// The open split: its index in `splits` and the reader.
    current: Option<(usize, BufReader<std::fs::File>)>,
    line: Vec<u8>,
    rate: Option<u64>,
    started: Instant,
    emitted: u64,
}

impl FileReader {
    fn split_name(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }
}

impl SourceReader<String> for FileReader {
    fn open(&mut self, state: &mut OperatorStateStore, restored: bool) -> Result<()> {
        let files = list_input_files(&self.root)?;
        let (index, p) = (self.index, self.parallelism);
        let fresh: Vec<SplitPosition> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 % p == index)
            .map(|(_, f)| SplitPosition {
                split: self.split_name(f),
                offset: 0,
            })
            .collect();
        let loaded = load_positions(state, restored, || fresh)?;
        self.splits = loaded
            .into_iter()
            .map(|sp| {
                let path = if self.root.is_file() {
                    self.root.clone()
                } else {
                    self.root.join(&sp.split)
                };
                (path, sp.offset, false)
            })
            .collect();
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll<String>> {
        if let Some(rate) = self.rate {
            if self.emitted as f64 >= self.started.elapsed().as_secs_f64() * rate as f64 {
                std::thread::sleep(Duration::from_millis(1));
                return Ok(Poll::Idle);
            }
            self.emitted += 1;
        }
        loop {
            if self.current.is_none() {
                let Some(i) = self.splits.iter().position(|s| !s.2) else {
                    return Ok(Poll::Exhausted);
                };
                let (path, offset, _) = &self.splits[i];
                let mut f = crate::fs::open_regular(path)?;
                f.seek(SeekFrom::Start(*offset))
                    .map_err(|e| Error::io("seek", path, e))?;
                self.current = Some((i, BufReader::with_capacity(256 << 10, f)));
            }
            let Some((i, r)) = self.current.as_mut() else {
                continue;
            };
            let i = *i;
            self.line.clear();
            let n = r
                .read_until(b'\n', &mut self.line)
                .map_err(|e| Error::io("read", &self.splits[i].0, e))?;
            if n == 0 {
                self.splits[i].2 = true;
                self.current = None;
                continue;
            }
            let start = self.splits[i].1;
            self.splits[i].1 += n as u64;
            let mut l: &[u8] = &self.line;
            if l.last() == Some(&b'\n') {
                l = &l[..l.len() - 1];
                if l.last() == Some(&b'\r') {
                    l = &l[..l.len() - 1];
                }
            }
            return match std::str::from_utf8(l) {
                Ok(s) => Ok(Poll::Ready(s.to_string())),
                Err(e) => Err(Error::corruption(
                    &self.splits[i].0,
                    start + e.valid_up_to() as u64,
                    "a line that is not UTF-8",
                )),
            };
        }
    }

    fn snapshot(&mut self, state: &mut OperatorStateStore) -> Result<Vec<SourceOffset>> {
        let positions: Vec<SplitPosition> = self
            .splits
            .iter()
            .map(|(p, off, _)| SplitPosition {
                split: self.split_name(p),
                offset: *off,
            })
            .collect();
        store_positions(state, &positions)?;
        Ok(positions
            .into_iter()
            .map(|p| SourceOffset {
                source: "file".into(),
                split: p.split,
                offset: p.offset,
            })
            .collect())
    }
}
