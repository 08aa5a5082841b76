//! One subtask's run: its state, its inputs (with barrier alignment), its output, and its
//! side of a checkpoint (the synchronous part on its own thread, the asynchronous part on
//! another, then an acknowledgement to the coordinator).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};
use parking_lot::Mutex;

use super::channel::{peer_gone, EdgeOut, Output, Rx};
pub use super::config::CheckpointingMode;
use super::event::{Barrier, Event};
use crate::checkpoint::{
    CheckpointId, CheckpointKind, CheckpointStorage, FileHandle, OperatorSubtaskState,
    PendingCheckpoint, PendingSavepoint, PrivateWrite, SnapshotTarget, SourceOffset,
};
use crate::error::{Error, Result};
use crate::state::backend::{CheckpointedKeyedState, RestoreFrom, StateBackend, SubtaskInfo};
use crate::state::operator::OperatorStateStore;

/// A subtask of the job graph: (node, subtask index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TaskId {
    pub node: usize,
    pub subtask: u32,
}

/// From the coordinator to a subtask.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// (Sources only) take a snapshot and emit this barrier.
    Trigger(Barrier),
    /// The checkpoint completed: commit what it covers.
    Complete(CheckpointId),
    /// The checkpoint was aborted.
    Aborted(CheckpointId),
    /// (Sources only) the job is finishing: end the output.
    Finish,
}

/// Timings of one subtask's part of a checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AckMetrics {
    pub sync: Duration,
    pub async_: Duration,
    pub alignment: Duration,
    pub ack_timestamp_ms: u64,
}

/// From a subtask to the coordinator.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    Ack {
        id: CheckpointId,
        task: TaskId,
        state: Box<OperatorSubtaskState>,
        offsets: Vec<SourceOffset>,
        metrics: AckMetrics,
    },
    Decline {
        id: CheckpointId,
        task: TaskId,
        error: Error,
    },
    SourceExhausted {
        task: TaskId,
    },
    Finished {
        task: TaskId,
    },
    Failed {
        task: TaskId,
        error: Error,
    },
}

/// A checkpoint or a savepoint being taken.
pub(crate) enum Pending {
    Checkpoint(PendingCheckpoint),
    Savepoint(PendingSavepoint),
}

impl Pending {
    /// Where the subtasks' snapshots go.
    pub(crate) fn target(&self) -> &dyn SnapshotTarget {
        match self {
            Pending::Checkpoint(p) => p,
            Pending::Savepoint(p) => p,
        }
    }
}

/// A pending checkpoint or savepoint shared by the subtasks placing files into it (at the
/// same time).
pub(crate) type SharedPending = Arc<Pending>;

/// A snapshot target that refuses every write once its attempt is cancelled, so that the
/// asynchronous part of a snapshot (seconds of writing for a large heap state) stops at
/// its next write instead of holding up the restart, which aborts the checkpoint only
/// once no snapshot thread writes into it.
struct Abortable<'a> {
    inner: &'a dyn SnapshotTarget,
    cancel: &'a AtomicBool,
}

impl Abortable<'_> {
    fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Job(format!(
                "{} {} was abandoned: its attempt ended",
                self.inner.kind().as_str(),
                self.inner.id()
            )));
        }
        Ok(())
    }
}

/// [`Abortable`]'s writer: checks before every append.
struct AbortableWrite<'a> {
    inner: Box<dyn PrivateWrite + 'a>,
    target: &'a Abortable<'a>,
}

impl PrivateWrite for AbortableWrite<'_> {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.target.check()?;
        self.inner.append(data)
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    fn finish(self: Box<Self>) -> Result<FileHandle> {
        self.target.check()?;
        self.inner.finish()
    }
}

impl SnapshotTarget for Abortable<'_> {
    fn id(&self) -> CheckpointId {
        self.inner.id()
    }

    fn kind(&self) -> CheckpointKind {
        self.inner.kind()
    }

    fn private_writer(&self, name: &str) -> Result<Box<dyn PrivateWrite + '_>> {
        self.check()?;
        Ok(Box::new(AbortableWrite {
            inner: self.inner.private_writer(name)?,
            target: self,
        }))
    }

    fn place_private(&self, local_path: &std::path::Path, name: &str) -> Result<FileHandle> {
        self.check()?;
        self.inner.place_private(local_path, name)
    }

    fn place_shared(
        &self,
        owner: &str,
        local_path: &std::path::Path,
        local_name: &str,
        size: u64,
        crc32c: u32,
    ) -> Result<FileHandle> {
        self.check()?;
        self.inner
            .place_shared(owner, local_path, local_name, size, crc32c)
    }
}

/// The pending checkpoints of an attempt, by id, shared with the subtasks' asynchronous
/// parts.
#[derive(Clone, Default)]
pub(crate) struct PendingRegistry {
    inner: Arc<Mutex<HashMap<CheckpointId, SharedPending>>>,
}

impl PendingRegistry {
    pub(crate) fn insert(&self, id: CheckpointId, p: SharedPending) {
        self.inner.lock().insert(id, p);
    }
    pub(crate) fn get(&self, id: CheckpointId) -> Option<SharedPending> {
        self.inner.lock().get(&id).cloned()
    }
    pub(crate) fn remove(&self, id: CheckpointId) -> Option<SharedPending> {
        self.inner.lock().remove(&id)
    }
    pub(crate) fn ids(&self) -> Vec<CheckpointId> {
        self.inner.lock().keys().copied().collect()
    }
}

/// What a restore reads for one operator.
pub(crate) struct OperatorRestore {
    pub checkpoint_id: CheckpointId,
    pub storage: Arc<dyn CheckpointStorage>,
    pub subtasks: Vec<OperatorSubtaskState>,
}

/// Which attempt of the job this is.
#[derive(Debug, Clone)]
pub struct AttemptInfo {
    /// 0 for the first run, then one more per restart.
    pub number: u32,
    /// A token unique to this attempt (in this process and across processes).
    pub token: String,
}

/// What an operator sees of its subtask: who it is, its operator state, its keyed state,
/// and where it was restored from.
pub struct TaskContext {
    pub(crate) info: SubtaskInfo,
    pub(crate) keyed: Option<Box<dyn CheckpointedKeyedState>>,
    pub(crate) operator_state: OperatorStateStore,
    pub(crate) restored: Option<CheckpointId>,
    pub(crate) attempt: AttemptInfo,
    pub(crate) checkpointing: bool,
}

impl TaskContext {
    /// The subtask: operator id, index, parallelism, max parallelism.
    pub fn subtask(&self) -> &SubtaskInfo {
        &self.info
    }

    /// The subtask's operator state (list states, redistributed on rescale).
    pub fn operator_state(&mut self) -> &mut OperatorStateStore {
        &mut self.operator_state
    }

    /// The checkpoint this subtask's state was restored from, if any.
    pub fn restored_from(&self) -> Option<CheckpointId> {
        self.restored
    }

    /// Which attempt of the job runs.
    pub fn attempt(&self) -> &AttemptInfo {
        &self.attempt
    }

    /// True when the job takes checkpoints.
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }
}

/// Everything a subtask's thread needs besides its operator.
pub(crate) struct TaskRuntime {
    pub id: TaskId,
    pub info: SubtaskInfo,
    pub keyed: bool,
    pub cancel: Arc<AtomicBool>,
    pub control: Receiver<Control>,
    pub events: Sender<TaskEvent>,
    pub backend: Arc<dyn StateBackend>,
    pub restore: Option<Arc<OperatorRestore>>,
    pub pendings: PendingRegistry,
    pub mode: CheckpointingMode,
    pub attempt: AttemptInfo,
    pub checkpointing: bool,
    pub asyncs: Vec<JoinHandle<()>>,
}

impl TaskRuntime {
    /// Creates (or restores) the subtask's state.
    pub(crate) fn open_context(&self) -> Result<TaskContext> {
        let restore = self.restore.as_deref().map(|r| RestoreFrom {
            checkpoint_id: r.checkpoint_id,
            storage: r.storage.as_ref(),
            subtasks: &r.subtasks,
        });
        let keyed = if self.keyed {
            Some(self.backend.keyed_state(&self.info, restore)?)
        } else {
            None
        };
        let operator_state = self.backend.operator_state(&self.info, restore)?;
        Ok(TaskContext {
            info: self.info.clone(),
            keyed,
            operator_state,
            restored: self.restore.as_ref().map(|r| r.checkpoint_id),
            attempt: self.attempt.clone(),
            checkpointing: self.checkpointing,
        })
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The synchronous part of this subtask's snapshot for `b`, then the asynchronous part
    /// on its own thread, which acknowledges (or declines) to the coordinator.
    pub(crate) fn snapshot(
        &mut self,
        ctx: &mut TaskContext,
        b: Barrier,
        alignment: Duration,
        offsets: Vec<SourceOffset>,
    ) -> Result<()> {
        let sync_start = Instant::now();
        let keyed = match ctx.keyed.as_mut() {
            Some(k) => Some(k.snapshot_sync_for(b.kind)?),
            None => None,
        };
        let op = ctx.operator_state.snapshot();
        let sync = sync_start.elapsed();
        let backend = Arc::clone(&self.backend);
        let info = self.info.clone();
        let pendings = self.pendings.clone();
        let events = self.events.clone();
        let cancel = Arc::clone(&self.cancel);
        let task = self.id;
        let handle = std::thread::Builder::new()
            .name(format!("{}-async", info.label()))
            .spawn(move || {
                let started = Instant::now();
                let result = (|| -> Result<OperatorSubtaskState> {
                    let pending = pendings
                        .get(b.id)
                        .ok_or_else(|| Error::Job(format!("checkpoint {} was aborted", b.id)))?;
                    let target = Abortable {
                        inner: pending.target(),
                        cancel: &cancel,
                    };
                    let keyed_state = match keyed {
                        Some(k) => k.write(&target)?,
                        None => Vec::new(),
                    };
                    let operator_state = backend.write_operator_state(&info, &op, &target)?;
                    Ok(OperatorSubtaskState {
                        operator_id: info.operator_id.clone(),
                        subtask_index: info.subtask_index,
                        parallelism: info.parallelism,
                        max_parallelism: info.max_parallelism.get(),
                        key_groups: info.key_groups()?,
                        keyed_state,
                        operator_state,
                    })
                })();
                let ev = match result {
                    Ok(state) => TaskEvent::Ack {
                        id: b.id,
                        task,
                        state: Box::new(state),
                        offsets,
                        metrics: AckMetrics {
                            sync,
                            async_: started.elapsed(),
                            alignment,
                            ack_timestamp_ms: super::now_ms(),
                        },
                    },
                    Err(error) => TaskEvent::Decline {
                        id: b.id,
                        task,
                        error,
                    },
                };
                let _ = events.send(ev);
            })
            .map_err(|e| Error::Job(format!("cannot start a snapshot thread: {e}")))?;
        self.asyncs.retain(|h| !h.is_finished());
        self.asyncs.push(handle);
        Ok(())
    }

    /// Waits for every asynchronous snapshot part this subtask started.
    pub(crate) fn join_asyncs(&mut self) {
        for h in self.asyncs.drain(..) {
            let _ = h.join();
        }
    }
}

/// An operator with one logical input (several channels: every upstream subtask of every
/// input edge) and one output.
pub(crate) trait StreamOperator<I, O>: Send {
    /// Called once the state is restored, before the first record.
    fn open(&mut self, _ctx: &mut TaskContext) -> Result<()> {
        Ok(())
    }
    /// One record.
    fn process(&mut self, rec: I, ctx: &mut TaskContext, out: &mut Output<O>) -> Result<()>;
    /// Before the state is snapshotted for checkpoint `id`: put what must survive into
    /// the operator or keyed state.
    fn prepare_snapshot(&mut self, _id: CheckpointId, _ctx: &mut TaskContext) -> Result<()> {
        Ok(())
    }
    /// Checkpoint `id` completed.
    fn notify_complete(&mut self, _id: CheckpointId, _ctx: &mut TaskContext) -> Result<()> {
        Ok(())
    }
    /// Every input has ended.
    fn end_input(&mut self, _ctx: &mut TaskContext, _out: &mut Output<O>) -> Result<()> {
        Ok(())
    }
}

/// A subtask's body, run on its own thread.
pub(crate) trait TaskBody: Send {
    fn run(self: Box<Self>, rt: &mut TaskRuntime) -> Result<()>;
}

/// How long an idle subtask waits before it looks at the cancel flag again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// The task of a [`StreamOperator`].
pub(crate) struct OperatorTask<I, O, Op> {
    pub op: Op,
    pub inputs: Vec<Rx<I>>,
    pub out: Output<O>,
}

/// A barrier alignment in progress.
struct Alignment {
    barrier: Barrier,
    started: Instant,
    arrived: Vec<bool>,
}

impl<I: Send, O: Clone + Send, Op: StreamOperator<I, O>> TaskBody for OperatorTask<I, O, Op> {
    fn run(self: Box<Self>, rt: &mut TaskRuntime) -> Result<()> {
        let OperatorTask {
            mut op,
            inputs,
            mut out,
        } = *self;
        let mut ctx = rt.open_context()?;
        op.open(&mut ctx)?;
        out.open()?;
        let n = inputs.len();
        let mut ended = vec![false; n];
        let mut align: Option<Alignment> = None;
        let exactly_once = rt.mode == CheckpointingMode::ExactlyOnce;
        let control = rt.control.clone();
        'outer: loop {
            if ended.iter().all(|e| *e) {
                break;
            }
            // The inputs read from: not ended, and not held back by an alignment.
            let mut sel = Select::new();
            let mut map = Vec::with_capacity(n);
            for i in 0..n {
                let held = exactly_once && align.as_ref().is_some_and(|a| a.arrived[i]);
                if !ended[i] && !held {
                    map.push(i);
                    sel.recv(&inputs[i]);
                }
            }
            let ctrl = sel.recv(&control);
            loop {
                let oper = match sel.select_timeout(IDLE_POLL) {
                    Ok(o) => o,
                    Err(_) => {
                        if rt.cancelled() {
                            return Err(Error::Cancelled);
                        }
                        out.flush()?;
                        continue;
                    }
                };
                if oper.index() == ctrl {
                    match oper.recv(&control) {
                        Ok(c) => handle_control(c, &mut op, &mut ctx, &mut out)?,
                        Err(_) => return Err(Error::Cancelled),
                    }
                    continue;
                }
                let i = map[oper.index()];
                match oper.recv(&inputs[i]) {
                    Ok(Event::Batch(batch)) => {
                        for rec in batch {
                            op.process(rec, &mut ctx, &mut out)?;
                        }
                        out.flush()?;
                    }
                    Ok(Event::Barrier(b)) => {
                        let start = match &align {
                            Some(a) if a.barrier.id == b.id => false,
                            // An older checkpoint's alignment is given up (it was aborted
                            // or its barrier overtaken); a barrier older than the one
                            // being aligned is late and ignored.
                            Some(a) if a.barrier.id > b.id => continue,
                            _ => true,
                        };
                        if start {
                            align = Some(Alignment {
                                barrier: b,
                                started: Instant::now(),
                                arrived: vec![false; n],
                            });
                        }
                        if let Some(a) = align.as_mut() {
                            a.arrived[i] = true;
                        }
                        if try_complete(rt, &mut align, &ended, &mut op, &mut ctx, &mut out)? {
                            continue 'outer;
                        }
                        if exactly_once {
                            continue 'outer;
                        }
                    }
                    Ok(Event::End) => {
                        ended[i] = true;
                        try_complete(rt, &mut align, &ended, &mut op, &mut ctx, &mut out)?;
                        continue 'outer;
                    }
                    Err(_) => {
                        return Err(peer_gone(&rt.cancel, || {
                            format!(
                                "an upstream subtask of {} vanished without ending",
                                rt.info.label()
                            )
                        }));
                    }
                }
            }
        }
        op.end_input(&mut ctx, &mut out)?;
        out.end()?;
        // Notifications the coordinator sent before the end of input reached this
        // subtask (the final checkpoint's completion above all) are handled before it ends.
        while let Ok(c) = rt.control.try_recv() {
            handle_control(c, &mut op, &mut ctx, &mut out)?;
        }
        rt.join_asyncs();
        Ok(())
    }
}

/// Completes the alignment when every input has delivered the barrier or ended: the
/// snapshot, then the barrier downstream. True when it completed.
fn try_complete<I, O: Clone, Op: StreamOperator<I, O>>(
    rt: &mut TaskRuntime,
    align: &mut Option<Alignment>,
    ended: &[bool],
    op: &mut Op,
    ctx: &mut TaskContext,
    out: &mut Output<O>,
) -> Result<bool> {
    let Some(a) = align.as_ref() else {
        return Ok(false);
    };
    if !a.arrived.iter().zip(ended).all(|(a, e)| *a || *e) {
        return Ok(false);
    }
    let b = a.barrier;
    let alignment = a.started.elapsed();
    *align = None;
    op.prepare_snapshot(b.id, ctx)?;
    rt.snapshot(ctx, b, alignment, Vec::new())?;
    out.barrier(b)?;
    Ok(true)
}

/// A message of the coordinator for this subtask, then for the operators chained behind
/// it.
fn handle_control<I, O: Clone, Op: StreamOperator<I, O>>(
    c: Control,
    op: &mut Op,
    ctx: &mut TaskContext,
    out: &mut Output<O>,
) -> Result<()> {
    match c {
        Control::Complete(id) => op.notify_complete(id, ctx)?,
        Control::Aborted(id) => {
            tracing::debug!("{}: checkpoint {id} aborted", ctx.info.label());
        }
        Control::Trigger(_) | Control::Finish => return Ok(()),
    }
    out.control(c)
}

/// An operator chained to the one before it (Flink's operator chaining): it runs in its
/// upstream subtask's thread, which calls it for each record as an output edge, with no
/// channel and no batch in between. It keeps its own state, snapshots and
/// acknowledgements (its own [`TaskRuntime`]), so checkpoints, restores and rescaling see
/// it as a subtask like any other; the coordinator's messages reach it through the head
/// of its chain.
pub(crate) struct ChainedTask<I, O, Op> {
    op: Op,
    out: Output<O>,
    rt: TaskRuntime,
    ctx: Option<TaskContext>,
    _i: PhantomData<fn(I)>,
}

impl<I, O, Op> ChainedTask<I, O, Op> {
    pub(crate) fn new(op: Op, out: Output<O>, rt: TaskRuntime) -> Self {
        ChainedTask {
            op,
            out,
            rt,
            ctx: None,
            _i: PhantomData,
        }
    }
}

fn not_open(rt: &TaskRuntime) -> Error {
    Error::Job(format!(
        "chained subtask {} used before it was opened",
        rt.info.label()
    ))
}

impl<I: Send, O: Clone + Send, Op: StreamOperator<I, O>> EdgeOut<I> for ChainedTask<I, O, Op> {
    fn open(&mut self) -> Result<()> {
        let mut ctx = self.rt.open_context()?;
        self.op.open(&mut ctx)?;
        self.ctx = Some(ctx);
        self.out.open()
    }

    fn push(&mut self, rec: I, _cancel: &AtomicBool) -> Result<()> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(not_open(&self.rt));
        };
        self.op.process(rec, ctx, &mut self.out)
    }

    fn flush(&mut self, _cancel: &AtomicBool) -> Result<()> {
        self.out.flush()
    }

    fn barrier(&mut self, b: Barrier, _cancel: &AtomicBool) -> Result<()> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(not_open(&self.rt));
        };
        self.out.take_error()?;
        self.op.prepare_snapshot(b.id, ctx)?;
        self.rt.snapshot(ctx, b, Duration::ZERO, Vec::new())?;
        self.out.barrier(b)
    }

    fn end(&mut self, _cancel: &AtomicBool) -> Result<()> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(not_open(&self.rt));
        };
        self.op.end_input(ctx, &mut self.out)?;
        self.out.end()?;
        self.rt.join_asyncs();
        let _ = self
            .rt
            .events
            .send(TaskEvent::Finished { task: self.rt.id });
        Ok(())
    }

    fn control(&mut self, c: Control) -> Result<()> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(not_open(&self.rt));
        };
        handle_control(c, &mut self.op, ctx, &mut self.out)
    }
}

impl<I, O, Op> Drop for ChainedTask<I, O, Op> {
    fn drop(&mut self) {
        // Its snapshot threads end before the chain's thread does, as a subtask's do.
        self.rt.join_asyncs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{CheckpointConfig, CheckpointStore, JobId, LocalStorage};
    use crate::fs::StdFs;

    #[test]
    fn an_abandoned_snapshot_stops_at_its_next_write_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(
            StdFs::shared(),
            dir.path(),
            JobId::new("00000000000000000000000000000001").unwrap(),
        );
        let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap();
        let pending = store
            .begin(CheckpointId(1), CheckpointKind::Incremental)
            .unwrap();
        let cancel = AtomicBool::new(false);
        let target = Abortable {
            inner: &pending,
            cancel: &cancel,
        };
        // Before the cancel: writes go through.
        let done = target.write_private("a", b"whole").unwrap();
        assert_eq!(done.size, 5);
        let mut w = target.private_writer("b").unwrap();
        w.append(b"first part").unwrap();
        cancel.store(true, Ordering::SeqCst);
        let e = w.append(b"second part").unwrap_err();
        assert!(e.to_string().contains("abandoned"), "{e}");
        drop(w);
        assert!(target.private_writer("c").is_err());
        assert!(target.write_private("d", b"x").is_err());
        let local = dir.path().join("local.sst");
        std::fs::write(&local, b"table").unwrap();
        assert!(target
            .place_shared("op", &local, "local.sst", 5, crate::codec::crc32c(b"table"))
            .is_err());
        assert!(target.place_private(&local, "e").is_err());
        pending.abort().unwrap();
        let job_dir = dir.path().join("00000000000000000000000000000001");
        assert!(!job_dir.join("chk-1").exists());
        assert!(store.orphans().unwrap().is_empty());
    }
}
