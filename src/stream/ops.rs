//! The built-in operators: stateless transformations and keyed functions with state.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::channel::{KeyedRecord, Output};
use super::task::{StreamOperator, TaskContext};
use crate::error::{Error, Result};
use crate::state::keyed::{KeyedState, ValueStateDescriptor};

pub(crate) struct Map<I, O>(pub Arc<dyn Fn(I) -> O + Send + Sync>);

impl<I: Send, O: Clone + Send> StreamOperator<I, O> for Map<I, O> {
    fn process(&mut self, rec: I, _ctx: &mut TaskContext, out: &mut Output<O>) -> Result<()> {
        out.collect((self.0)(rec));
        Ok(())
    }
}

pub(crate) struct Filter<T>(pub Arc<dyn Fn(&T) -> bool + Send + Sync>);

impl<T: Clone + Send> StreamOperator<T, T> for Filter<T> {
    fn process(&mut self, rec: T, _ctx: &mut TaskContext, out: &mut Output<T>) -> Result<()> {
        if (self.0)(&rec) {
            out.collect(rec);
        }
        Ok(())
    }
}

/// A function turning a record into any number.
pub(crate) type FlatMapFn<I, O> = Arc<dyn Fn(I, &mut Output<O>) + Send + Sync>;

/// A fallible function of a record with its subtask's context.
pub(crate) type ProcessFn<I, O> =
    Arc<dyn Fn(I, &mut TaskContext, &mut Output<O>) -> Result<()> + Send + Sync>;

pub(crate) struct FlatMap<I, O>(pub FlatMapFn<I, O>);

impl<I: Send, O: Clone + Send> StreamOperator<I, O> for FlatMap<I, O> {
    fn process(&mut self, rec: I, _ctx: &mut TaskContext, out: &mut Output<O>) -> Result<()> {
        (self.0)(rec, out);
        Ok(())
    }
}

/// A fallible function of one record, with the subtask's context.
pub(crate) struct TryProcess<I, O>(pub ProcessFn<I, O>);

impl<I: Send, O: Clone + Send> StreamOperator<I, O> for TryProcess<I, O> {
    fn process(&mut self, rec: I, ctx: &mut TaskContext, out: &mut Output<O>) -> Result<()> {
        (self.0)(rec, ctx, out)
    }
}

/// What a keyed function sees: the current key and that key's state.
pub struct KeyedContext<'a, K> {
    key: &'a K,
    state: KeyedState<'a>,
}

impl<'a, K> KeyedContext<'a, K> {
    /// The current key.
    pub fn key(&self) -> &K {
        self.key
    }

    /// The current key's state: `ctx.state().value(&descriptor)?`, etc.
    pub fn state(&mut self) -> &mut KeyedState<'a> {
        &mut self.state
    }
}

/// A function of a keyed stream's records, with keyed state (Flink's
/// `KeyedProcessFunction`). Closures `FnMut(I, &mut KeyedContext<K>, &mut Output<O>) ->
/// Result<()>` that are `Clone` implement it; each subtask gets its own clone.
pub trait KeyedProcessFunction<K, I, O>: Send + 'static {
    /// One record of the current key.
    fn process_element(
        &mut self,
        value: I,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Output<O>,
    ) -> Result<()>;
}

impl<K, I, O, F> KeyedProcessFunction<K, I, O> for F
where
    F: FnMut(I, &mut KeyedContext<'_, K>, &mut Output<O>) -> Result<()> + Send + 'static,
{
    fn process_element(
        &mut self,
        value: I,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Output<O>,
    ) -> Result<()> {
        self(value, ctx, out)
    }
}

pub(crate) struct KeyedProcess<K, I, O, F> {
    pub f: F,
    pub _t: PhantomData<fn(K, I, O)>,
}

impl<K, I, O, F> StreamOperator<KeyedRecord<I>, O> for KeyedProcess<K, I, O, F>
where
    K: DeserializeOwned + Send,
    I: Send,
    O: Clone + Send,
    F: KeyedProcessFunction<K, I, O>,
{
    fn process(
        &mut self,
        rec: KeyedRecord<I>,
        ctx: &mut TaskContext,
        out: &mut Output<O>,
    ) -> Result<()> {
        let key: K = postcard::from_bytes(rec.key.as_slice())
            .map_err(|e| Error::Job(format!("cannot deserialize a record's key: {e}")))?;
        let state = state_of_key(ctx, &rec, "a keyed function")?;
        let mut kctx = KeyedContext { key: &key, state };
        self.f.process_element(rec.rec, &mut kctx, out)
    }
}

/// The keyed state of the subtask, with `rec`'s key as the current key; `what` names the
/// operator when the subtask has no keyed state.
fn state_of_key<'c, T>(
    ctx: &'c mut TaskContext,
    rec: &KeyedRecord<T>,
    what: &str,
) -> Result<KeyedState<'c>> {
    let keyed = ctx
        .keyed
        .as_mut()
        .ok_or_else(|| Error::Job(format!("{what} without keyed state")))?;
    let mut state = KeyedState::new(keyed.backend());
    state.set_current_key_bytes(rec.key.as_slice())?;
    Ok(state)
}

/// Keyed reduce: keeps the reduction of each key in a value state and emits it after
/// every record, as Flink's `reduce`.
pub(crate) struct Reduce<T> {
    pub f: Arc<dyn Fn(T, T) -> T + Send + Sync>,
    pub desc: ValueStateDescriptor<T>,
}

impl<T> StreamOperator<KeyedRecord<T>, T> for Reduce<T>
where
    T: Serialize + DeserializeOwned + Clone + Send,
{
    fn process(
        &mut self,
        rec: KeyedRecord<T>,
        ctx: &mut TaskContext,
        out: &mut Output<T>,
    ) -> Result<()> {
        let mut state = state_of_key(ctx, &rec, "reduce")?;
        let mut v = state.value(&self.desc)?;
        let next = match v.get()? {
            Some(acc) => (self.f)(acc, rec.rec),
            None => rec.rec,
        };
        v.update(&next)?;
        out.collect(next);
        Ok(())
    }
}

/// Records that [`crate::stream::KeyedStream::sum`] adds up: numbers, and pairs whose second
/// field is a number (the first is kept from the first record, as Flink's `sum(1)`).
pub trait Summable: Clone {
    /// `self + other`.
    fn sum(self, other: Self) -> Self;
}

macro_rules! summable {
    ($($t:ty),*) => {$(
        impl Summable for $t {
            fn sum(self, other: Self) -> Self {
                self + other
            }
        }
        impl<A: Clone> Summable for (A, $t) {
            fn sum(self, other: Self) -> Self {
                (self.0, self.1 + other.1)
            }
        }
    )*};
}

summable!(u32, u64, i32, i64, f32, f64, usize);

/// How an injected failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The operator returns an error.
    Error,
    /// The operator panics.
    Panic,
}

/// Failures to inject into a job, for testing its recovery: each fires once, when the
/// records seen by the injecting operator (all its subtasks, all attempts: replayed
/// records count again) reach its count, or when that operator takes its n-th snapshot
/// (counted the same way), so a failure can strike in the middle of a checkpoint.
#[derive(Debug, Default)]
pub struct FailurePlan {
    at_records: Vec<(u64, FailureKind, std::sync::atomic::AtomicBool)>,
    at_snapshots: Vec<(u64, FailureKind, std::sync::atomic::AtomicBool)>,
    records: std::sync::atomic::AtomicU64,
    snapshots: std::sync::atomic::AtomicU64,
    fired: std::sync::atomic::AtomicU64,
}

impl FailurePlan {
    /// No failures.
    pub fn new() -> Self {
        FailurePlan::default()
    }

    /// Fails when `count` records have been seen.
    pub fn at_record(mut self, count: u64, kind: FailureKind) -> Self {
        self.at_records
            .push((count, kind, std::sync::atomic::AtomicBool::new(false)));
        self
    }

    /// Fails in the `n`-th snapshot (1-based) of the injecting operator's subtasks.
    pub fn at_snapshot(mut self, n: u64, kind: FailureKind) -> Self {
        self.at_snapshots
            .push((n, kind, std::sync::atomic::AtomicBool::new(false)));
        self
    }

    /// Failures injected so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Failures planned.
    pub fn planned(&self) -> usize {
        self.at_records.len() + self.at_snapshots.len()
    }

    fn check(
        &self,
        list: &[(u64, FailureKind, std::sync::atomic::AtomicBool)],
        n: u64,
        what: &str,
    ) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        for (at, kind, done) in list {
            if n >= *at && !done.swap(true, SeqCst) {
                self.fired.fetch_add(1, SeqCst);
                let msg = format!("injected failure at {what} {n}");
                match kind {
                    FailureKind::Error => return Err(Error::Job(msg)),
                    FailureKind::Panic => panic!("{msg}"),
                }
            }
        }
        Ok(())
    }
}

pub(crate) struct InjectFailures<T> {
    pub plan: Arc<FailurePlan>,
    pub _t: PhantomData<fn(T)>,
}

impl<T: Clone + Send> StreamOperator<T, T> for InjectFailures<T> {
    fn process(&mut self, rec: T, _ctx: &mut TaskContext, out: &mut Output<T>) -> Result<()> {
        let n = self
            .plan
            .records
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.plan.check(&self.plan.at_records, n, "record")?;
        out.collect(rec);
        Ok(())
    }

    fn prepare_snapshot(
        &mut self,
        _id: crate::checkpoint::CheckpointId,
        _ctx: &mut TaskContext,
    ) -> Result<()> {
        let n = self
            .plan
            .snapshots
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.plan.check(&self.plan.at_snapshots, n, "snapshot")
    }
}
