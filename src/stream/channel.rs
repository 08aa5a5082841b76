//! Channels between subtasks and the outputs that route records into them.
//!
//! Every pair (upstream subtask, downstream subtask) of an edge has its own bounded
//! channel, so a downstream subtask can stop reading one input while it aligns barriers
//! and a slow consumer slows its producers (backpressure): nothing queues without bound.
//! Records travel in batches; an output flushes its batches when they are full, before a
//! barrier, at the end of input, and when its subtask has nothing else to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use serde::Serialize;

use super::event::{Barrier, Event};
use super::task::Control;
use crate::error::{Error, Result};
use crate::state::bytes::Bytes;
use crate::state::key_groups::MaxParallelism;

/// Records per batch.
pub(crate) const BATCH: usize = 256;

/// How long a blocked send waits before it looks at the cancel flag again.
const SEND_POLL: Duration = Duration::from_millis(20);

pub(crate) type Tx<T> = Sender<Event<T>>;
pub(crate) type Rx<T> = Receiver<Event<T>>;

/// The channels of one edge: `senders[up][down]`, `receivers[down][up]`.
pub(crate) type Matrix<T> = (Vec<Vec<Tx<T>>>, Vec<Vec<Rx<T>>>);

/// Creates the channels of one edge.
pub(crate) fn matrix<T>(up: u32, down: u32, capacity: usize) -> Matrix<T> {
    let mut senders: Vec<Vec<Tx<T>>> = (0..up).map(|_| Vec::new()).collect();
    let mut receivers: Vec<Vec<Rx<T>>> = (0..down).map(|_| Vec::new()).collect();
    for s in senders.iter_mut() {
        for r in receivers.iter_mut() {
            let (tx, rx) = bounded(capacity);
            s.push(tx);
            r.push(rx);
        }
    }
    (senders, receivers)
}

/// Sends `ev`, waiting while the channel is full, unless the attempt is cancelled.
pub(crate) fn send<T>(tx: &Tx<T>, mut ev: Event<T>, cancel: &AtomicBool) -> Result<()> {
    loop {
        match tx.send_timeout(ev, SEND_POLL) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(back)) => {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                ev = back;
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                return Err(peer_gone(cancel, || {
                    "a downstream subtask stopped reading".into()
                }));
            }
        }
    }
}

/// How long a subtask whose peer vanished waits for the attempt to be cancelled.
const PEER_GONE_WAIT: Duration = Duration::from_secs(2);

/// The error of a subtask whose upstream or downstream peer vanished without ending. A
/// peer vanishes when it fails, and reports its own failure, which cancels the attempt:
/// this subtask then ends as cancelled, so the job's failure names the real cause, not
/// its echo. Only a peer that vanished without a word (`what`) is reported here.
pub(crate) fn peer_gone(cancel: &AtomicBool, what: impl FnOnce() -> String) -> Error {
    let deadline = std::time::Instant::now() + PEER_GONE_WAIT;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Error::Cancelled;
        }
        if std::time::Instant::now() >= deadline {
            return Error::Job(what());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Picks the downstream subtask of a record and turns it into what the edge carries.
pub(crate) trait Route<O, E>: Send {
    fn route(&mut self, rec: O) -> Result<(usize, E)>;
}

/// Same index downstream (both sides have the same parallelism).
pub(crate) struct Forward(pub usize);

impl<O> Route<O, O> for Forward {
    fn route(&mut self, rec: O) -> Result<(usize, O)> {
        Ok((self.0, rec))
    }
}

/// Round robin over the downstream subtasks.
pub(crate) struct Rebalance {
    pub next: usize,
    pub n: usize,
}

impl<O> Route<O, O> for Rebalance {
    fn route(&mut self, rec: O) -> Result<(usize, O)> {
        let t = self.next;
        self.next = (self.next + 1) % self.n;
        Ok((t, rec))
    }
}

/// A record of a keyed stream with its key, serialized as keyed state stores it (inline
/// when short): the sender serializes the key once to find its key group, and the keyed
/// operator sets it as the current key without serializing it again.
pub(crate) struct KeyedRecord<T> {
    /// The serialized key.
    pub key: Bytes,
    /// The record.
    pub rec: T,
}

/// By key group: the record goes, with its serialized key, to the subtask owning the
/// key's group.
pub(crate) struct ByKey<K, O> {
    pub key: Arc<dyn Fn(&O) -> K + Send + Sync>,
    pub max: MaxParallelism,
    pub parallelism: u32,
    pub scratch: Vec<u8>,
}

impl<K: Serialize, O> Route<O, KeyedRecord<O>> for ByKey<K, O> {
    fn route(&mut self, rec: O) -> Result<(usize, KeyedRecord<O>)> {
        let k = (self.key)(&rec);
        self.scratch.clear();
        self.scratch = postcard::to_extend(&k, std::mem::take(&mut self.scratch))
            .map_err(|e| Error::InvalidArgument(format!("cannot serialize a key: {e}")))?;
        let kg = self.max.key_group_of(&self.scratch);
        let t = self.max.subtask_for_key_group(self.parallelism, kg)?;
        Ok((
            t as usize,
            KeyedRecord {
                key: Bytes::new(&self.scratch),
                rec,
            },
        ))
    }
}

/// One subtask's side of one outgoing edge.
pub(crate) trait EdgeOut<O>: Send {
    /// Adds a record to its target's batch, sending the batch when full.
    fn push(&mut self, rec: O, cancel: &AtomicBool) -> Result<()>;
    /// Sends every non-empty batch.
    fn flush(&mut self, cancel: &AtomicBool) -> Result<()>;
    /// Flushes, then sends a barrier to every downstream subtask.
    fn barrier(&mut self, b: Barrier, cancel: &AtomicBool) -> Result<()>;
    /// Flushes, then tells every downstream subtask that this one has finished.
    fn end(&mut self, cancel: &AtomicBool) -> Result<()>;
    /// Opens what runs behind this output in the sender's thread (a chained operator):
    /// restores its state. Called once, before the first record.
    fn open(&mut self) -> Result<()> {
        Ok(())
    }
    /// A message of the coordinator, passed on to what runs behind this output in the
    /// sender's thread (a chained operator). Channels to other subtasks ignore it: their
    /// subtasks get their own.
    fn control(&mut self, _c: Control) -> Result<()> {
        Ok(())
    }
}

/// An [`EdgeOut`] over per-target channels and a route.
pub(crate) struct RoutedOut<O, E, R> {
    pub txs: Vec<Tx<E>>,
    pub bufs: Vec<Vec<E>>,
    pub route: R,
    pub _o: std::marker::PhantomData<fn(O)>,
}

impl<O, E, R> RoutedOut<O, E, R> {
    pub(crate) fn new(txs: Vec<Tx<E>>, route: R) -> Self {
        let bufs = txs.iter().map(|_| Vec::new()).collect();
        RoutedOut {
            txs,
            bufs,
            route,
            _o: std::marker::PhantomData,
        }
    }
}

impl<O, E: Send, R: Route<O, E>> EdgeOut<O> for RoutedOut<O, E, R> {
    fn push(&mut self, rec: O, cancel: &AtomicBool) -> Result<()> {
        let (t, e) = self.route.route(rec)?;
        let buf = &mut self.bufs[t];
        if buf.capacity() == 0 {
            buf.reserve(BATCH);
        }
        buf.push(e);
        if buf.len() >= BATCH {
            let batch = std::mem::replace(buf, Vec::with_capacity(BATCH));
            send(&self.txs[t], Event::Batch(batch), cancel)?;
        }
        Ok(())
    }

    fn flush(&mut self, cancel: &AtomicBool) -> Result<()> {
        for (t, buf) in self.bufs.iter_mut().enumerate() {
            if !buf.is_empty() {
                let batch = std::mem::take(buf);
                send(&self.txs[t], Event::Batch(batch), cancel)?;
            }
        }
        Ok(())
    }

    fn barrier(&mut self, b: Barrier, cancel: &AtomicBool) -> Result<()> {
        self.flush(cancel)?;
        for tx in &self.txs {
            send(tx, Event::Barrier(b), cancel)?;
        }
        Ok(())
    }

    fn end(&mut self, cancel: &AtomicBool) -> Result<()> {
        self.flush(cancel)?;
        for tx in &self.txs {
            send(tx, Event::End, cancel)?;
        }
        Ok(())
    }
}

/// Everything a subtask emits: one output per outgoing edge (a record goes to each).
pub struct Output<O> {
    edges: Vec<Box<dyn EdgeOut<O>>>,
    cancel: Arc<AtomicBool>,
    error: Option<Error>,
    emitted: u64,
}

impl<O: Clone> Output<O> {
    pub(crate) fn new(edges: Vec<Box<dyn EdgeOut<O>>>, cancel: Arc<AtomicBool>) -> Self {
        Output {
            edges,
            cancel,
            error: None,
            emitted: 0,
        }
    }

    /// Emits one record downstream. A failure to send (the attempt is being cancelled) is
    /// kept and reported when the subtask's function returns.
    pub fn collect(&mut self, rec: O) {
        if self.error.is_some() {
            return;
        }
        self.emitted += 1;
        let n = self.edges.len();
        if n == 0 {
            return;
        }
        for e in &mut self.edges[..n - 1] {
            if let Err(err) = e.push(rec.clone(), &self.cancel) {
                self.error = Some(err);
                return;
            }
        }
        if let Err(err) = self.edges[n - 1].push(rec, &self.cancel) {
            self.error = Some(err);
        }
    }

    /// Records emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// The error a [`Output::collect`] met, if any.
    pub(crate) fn take_error(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.take_error()?;
        for e in &mut self.edges {
            e.flush(&self.cancel)?;
        }
        Ok(())
    }

    pub(crate) fn barrier(&mut self, b: Barrier) -> Result<()> {
        self.take_error()?;
        for e in &mut self.edges {
            e.barrier(b, &self.cancel)?;
        }
        Ok(())
    }

    pub(crate) fn end(&mut self) -> Result<()> {
        self.take_error()?;
        for e in &mut self.edges {
            e.end(&self.cancel)?;
        }
        Ok(())
    }

    /// Opens the operators chained behind this output.
    pub(crate) fn open(&mut self) -> Result<()> {
        for e in &mut self.edges {
            e.open()?;
        }
        Ok(())
    }

    /// Passes a message of the coordinator to the operators chained behind this output.
    pub(crate) fn control(&mut self, c: Control) -> Result<()> {
        self.take_error()?;
        for e in &mut self.edges {
            e.control(c)?;
        }
        Ok(())
    }
}
