//! Building a job: sources, transformations, keyed functions and sinks, each with a
//! stable id (`uid`) and a parallelism, wired into a [`JobGraph`] that the runner
//! instantiates once per attempt.

use std::any::Any;
use std::cell::RefCell;
use std::fmt::Display;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::channel::{
    matrix, ByKey, EdgeOut, Forward, KeyedRecord, Output, Rebalance, RoutedOut, Rx,
};
use super::ops::{
    FailurePlan, Filter, FlatMap, FlatMapFn, InjectFailures, KeyedProcess, KeyedProcessFunction,
    Map, ProcessFn, Reduce, Summable, TryProcess,
};
use super::sink::{FileSink, PrintOperator, PrintSink};
use super::source::{Source, SourceTask};
use super::task::{ChainedTask, OperatorTask, StreamOperator, TaskBody, TaskContext, TaskRuntime};
use crate::error::{Error, Result};
use crate::state::key_groups::MaxParallelism;
use crate::state::keyed::ValueStateDescriptor;

/// What a stream's records must be: cloned when an output has several edges, and sent
/// between subtask threads.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}

/// What a key must be: serialized for its key group and as the state's key.
pub trait Key: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Key for T {}

pub(crate) type AnyBox = Box<dyn Any + Send>;

/// Creates an edge's channels for one attempt: per upstream subtask its
/// `Box<dyn EdgeOut<O>>`, per downstream subtask its `Vec<Rx<E>>`, both boxed as `Any`.
pub(crate) type EdgeMaker =
    Arc<dyn Fn(u32, u32, usize, MaxParallelism) -> (Vec<AnyBox>, Vec<AnyBox>) + Send + Sync>;

/// What a node's factory gets for one subtask.
pub(crate) struct NodeParts {
    pub subtask: u32,
    pub parallelism: u32,
    pub inputs: Vec<AnyBox>,
    pub outputs: Vec<AnyBox>,
    pub cancel: Arc<AtomicBool>,
}

pub(crate) type NodeFactory = Arc<dyn Fn(NodeParts) -> Result<Box<dyn TaskBody>> + Send + Sync>;

/// What a node's chained factory gets for one subtask that runs in its upstream
/// subtask's thread.
pub(crate) struct ChainParts {
    pub outputs: Vec<AnyBox>,
    pub cancel: Arc<AtomicBool>,
    pub runtime: TaskRuntime,
}

/// Makes one subtask of a node as an output edge of its upstream subtask (a
/// `Box<dyn EdgeOut<I>>` boxed as `Any`): the node chained to the one before it.
pub(crate) type ChainFactory = Arc<dyn Fn(ChainParts) -> Result<AnyBox> + Send + Sync>;

/// Whether an operator joins the chain of the one before it and lets the next join its
/// own (Flink's chaining strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chaining {
    /// Chained wherever the edges allow (the default).
    Always,
    /// Starts a new chain: never chained to the operator before it.
    Head,
    /// Neither chained to the operator before it nor to the one after.
    Never,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Source,
    Operator,
    Sink,
}

pub(crate) struct NodeSpec {
    pub uid: Option<String>,
    pub name: String,
    pub parallelism: Option<u32>,
    pub kind: NodeKind,
    pub keyed: bool,
    pub factory: NodeFactory,
    /// How the node runs chained to its upstream operator; `None` when it cannot (sources,
    /// keyed operators, whose input is partitioned by key).
    pub chained: Option<ChainFactory>,
    pub chaining: Chaining,
}

pub(crate) struct EdgeSpec {
    pub from: usize,
    pub to: usize,
    pub make: EdgeMaker,
    /// Records keep their subtask index when both sides have the same parallelism (no
    /// key partitioning, no rebalance): the edge may be a chain.
    pub forward: bool,
}

#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeSpec>,
    edges: Vec<EdgeSpec>,
    /// A misuse of the builder, reported by `build`.
    error: Option<String>,
}

/// Where a job is built: `env.source(...)`, then transformations on the streams, then
/// [`StreamEnv::build`].
///
/// ```
/// use tidemark::stream::{GeneratorSource, StreamEnv};
///
/// let env = StreamEnv::new();
/// env.source(GeneratorSource::new(Some(100), |i| i % 7))
///     .uid("numbers")
///     .key_by(|n: &u64| *n)
///     .sum()
///     .uid("sums")
///     .print();
/// let graph = env.build().unwrap();
/// assert_eq!(graph.operator_ids(), vec!["numbers", "sums", "print-2"]);
/// ```
#[derive(Clone, Default)]
pub struct StreamEnv {
    g: Rc<RefCell<GraphBuilder>>,
}

impl std::fmt::Debug for StreamEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEnv")
            .field("nodes", &self.g.borrow().nodes.len())
            .finish()
    }
}

/// A stream of records of type `T`.
pub struct DataStream<T> {
    env: StreamEnv,
    heads: Vec<usize>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for DataStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStream")
            .field("heads", &self.heads)
            .finish()
    }
}

/// A stream partitioned by key: records of one key go to one subtask, whose keyed state
/// holds that key's state.
pub struct KeyedStream<K, T> {
    env: StreamEnv,
    heads: Vec<usize>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K, T> std::fmt::Debug for KeyedStream<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream")
            .field("heads", &self.heads)
            .finish()
    }
}

/// One record of two connected streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Either<A, B> {
    /// From the first stream.
    Left(A),
    /// From the second stream.
    Right(B),
}

fn take_inputs<I: 'static>(boxes: Vec<AnyBox>) -> Result<Vec<Rx<I>>> {
    let mut out = Vec::new();
    for b in boxes {
        let v = b
            .downcast::<Vec<Rx<I>>>()
            .map_err(|_| Error::Job("an edge's record type does not match its operator".into()))?;
        out.extend(*v);
    }
    Ok(out)
}

fn take_outputs<O: 'static>(boxes: Vec<AnyBox>) -> Result<Vec<Box<dyn EdgeOut<O>>>> {
    boxes
        .into_iter()
        .map(|b| {
            b.downcast::<Box<dyn EdgeOut<O>>>()
                .map(|o| *o)
                .map_err(|_| Error::Job("an edge's record type does not match its source".into()))
        })
        .collect()
}

/// An edge carrying `T` as it is: forward when both sides have the same parallelism,
/// round robin otherwise.
fn plain_edge<T: Data>() -> EdgeMaker {
    Arc::new(|up, down, cap, _max| {
        let (senders, receivers) = matrix::<T>(up, down, cap);
        let outs = senders
            .into_iter()
            .enumerate()
            .map(|(i, txs)| {
                let out: Box<dyn EdgeOut<T>> = if up == down {
                    Box::new(RoutedOut::new(txs, Forward(i)))
                } else {
                    Box::new(RoutedOut::new(
                        txs,
                        Rebalance {
                            next: i % down as usize,
                            n: down as usize,
                        },
                    ))
                };
                Box::new(out) as AnyBox
            })
            .collect();
        let ins = receivers
            .into_iter()
            .map(|r| Box::new(r) as AnyBox)
            .collect();
        (outs, ins)
    })
}

/// An edge carrying each `T` with its serialized key to the subtask owning the key's group.
fn keyed_edge<K: Key, T: Data>(key: Arc<dyn Fn(&T) -> K + Send + Sync>) -> EdgeMaker {
    Arc::new(move |up, down, cap, max| {
        let (senders, receivers) = matrix::<KeyedRecord<T>>(up, down, cap);
        let outs = senders
            .into_iter()
            .map(|txs| {
                let out: Box<dyn EdgeOut<T>> = Box::new(RoutedOut::new(
                    txs,
                    ByKey {
                        key: Arc::clone(&key),
                        max,
                        parallelism: down,
                        scratch: Vec::new(),
                    },
                ));
                Box::new(out) as AnyBox
            })
            .collect();
        let ins = receivers
            .into_iter()
            .map(|r| Box::new(r) as AnyBox)
            .collect();
        (outs, ins)
    })
}

impl StreamEnv {
    /// An empty job.
    pub fn new() -> Self {
        StreamEnv::default()
    }

    fn add_node(&self, spec: NodeSpec, inputs: Vec<(usize, EdgeMaker, bool)>) -> usize {
        let mut g = self.g.borrow_mut();
        let id = g.nodes.len();
        g.nodes.push(spec);
        for (from, make, forward) in inputs {
            g.edges.push(EdgeSpec {
                from,
                to: id,
                make,
                forward,
            });
        }
        id
    }

    /// A stream read from `source`.
    pub fn source<T: Data, S: Source<T>>(&self, source: S) -> DataStream<T> {
        let source = Arc::new(source);
        let factory: NodeFactory = Arc::new(move |parts: NodeParts| {
            let reader = source.reader(parts.subtask, parts.parallelism)?;
            let outs = take_outputs::<T>(parts.outputs)?;
            Ok(Box::new(SourceTask {
                reader,
                out: Output::new(outs, parts.cancel),
            }) as Box<dyn TaskBody>)
        });
        let id = self.add_node(
            NodeSpec {
                uid: None,
                name: "source".into(),
                parallelism: None,
                kind: super::graph::NodeKind::Source,
                keyed: false,
                factory,
                chained: None,
                chaining: Chaining::Always,
            },
            Vec::new(),
        );
        DataStream {
            env: self.clone(),
            heads: vec![id],
            _t: PhantomData,
        }
    }

    /// The job as built: checks that every operator id is unique.
    pub fn build(self) -> Result<JobGraph> {
        let g = self.g.take();
        if let Some(e) = g.error {
            return Err(Error::InvalidArgument(e));
        }
        let mut nodes = g.nodes;
        let mut seen = std::collections::HashSet::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            let uid = n.uid.clone().unwrap_or_else(|| format!("{}-{i}", n.name));
            if !seen.insert(uid.clone()) {
                return Err(Error::InvalidArgument(format!(
                    "two operators have the uid {uid:?}: every operator needs its own"
                )));
            }
            n.uid = Some(uid);
        }
        if nodes.is_empty() {
            return Err(Error::InvalidArgument("a job needs a source".into()));
        }
        Ok(JobGraph {
            nodes,
            edges: g.edges,
        })
    }
}

impl<T: Data> DataStream<T> {
    /// The operator that produced this stream; `None` (and an error for `build`) for a
    /// union, which has no operator of its own.
    fn only_head(&self, what: &str) -> Option<usize> {
        match self.heads.as_slice() {
            [h] => Some(*h),
            _ => {
                self.env.g.borrow_mut().error.get_or_insert_with(|| {
                    format!("{what} applies to an operator, not to a union of streams")
                });
                None
            }
        }
    }

    /// Sets the stable id of the operator that produced this stream (Flink's `uid`):
    /// restored state is matched to operators by it. Without one, an id is made from the
    /// operator's name and position, which changes when the job's shape changes.
    pub fn uid(self, uid: impl Into<String>) -> Self {
        if let Some(h) = self.only_head("uid") {
            self.env.g.borrow_mut().nodes[h].uid = Some(uid.into());
        }
        self
    }

    /// Sets the parallelism of the operator that produced this stream.
    pub fn set_parallelism(self, parallelism: u32) -> Self {
        if let Some(h) = self.only_head("set_parallelism") {
            self.env.g.borrow_mut().nodes[h].parallelism = Some(parallelism.max(1));
        }
        self
    }

    /// Runs the operator that produced this stream in threads of its own: neither chained
    /// to the operator before it nor to the one after (Flink's `disableChaining`).
    pub fn disable_chaining(self) -> Self {
        self.set_chaining(Chaining::Never, "disable_chaining")
    }

    /// Starts a new chain at the operator that produced this stream: it is not chained to
    /// the operator before it, the ones after may chain to it (Flink's `startNewChain`).
    pub fn start_new_chain(self) -> Self {
        self.set_chaining(Chaining::Head, "start_new_chain")
    }

    fn set_chaining(self, chaining: Chaining, what: &str) -> Self {
        if let Some(h) = self.only_head(what) {
            self.env.g.borrow_mut().nodes[h].chaining = chaining;
        }
        self
    }

    fn then<O: Data, Op: StreamOperator<T, O> + 'static>(
        self,
        name: &str,
        kind: NodeKind,
        make: impl Fn() -> Op + Send + Sync + 'static,
    ) -> DataStream<O> {
        let make = Arc::new(make);
        let make_chained = Arc::clone(&make);
        let factory: NodeFactory = Arc::new(move |parts: NodeParts| {
            let inputs = take_inputs::<T>(parts.inputs)?;
            let outs = take_outputs::<O>(parts.outputs)?;
            Ok(Box::new(OperatorTask {
                op: make(),
                inputs,
                out: Output::new(outs, parts.cancel),
            }) as Box<dyn TaskBody>)
        });
        let chained: ChainFactory = Arc::new(move |parts: ChainParts| {
            let outs = take_outputs::<O>(parts.outputs)?;
            let task: Box<dyn EdgeOut<T>> = Box::new(ChainedTask::new(
                make_chained(),
                Output::new(outs, parts.cancel),
                parts.runtime,
            ));
            Ok(Box::new(task) as AnyBox)
        });
        let inputs = self
            .heads
            .iter()
            .map(|h| (*h, plain_edge::<T>(), true))
            .collect();
        let id = self.env.add_node(
            NodeSpec {
                uid: None,
                name: name.into(),
                parallelism: None,
                kind,
                keyed: false,
                factory,
                chained: Some(chained),
                chaining: Chaining::Always,
            },
            inputs,
        );
        DataStream {
            env: self.env,
            heads: vec![id],
            _t: PhantomData,
        }
    }

    /// Each record turned into one.
    pub fn map<O: Data>(self, f: impl Fn(T) -> O + Send + Sync + 'static) -> DataStream<O> {
        let f: Arc<dyn Fn(T) -> O + Send + Sync> = Arc::new(f);
        self.then("map", NodeKind::Operator, move || Map(Arc::clone(&f)))
    }

    /// The records for which `f` is true.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DataStream<T> {
        let f: Arc<dyn Fn(&T) -> bool + Send + Sync> = Arc::new(f);
        self.then("filter", NodeKind::Operator, move || Filter(Arc::clone(&f)))
    }

    /// Each record turned into any number: `f` calls `out.collect(..)` for each.
    pub fn flat_map<O: Data>(
        self,
        f: impl Fn(T, &mut Output<O>) + Send + Sync + 'static,
    ) -> DataStream<O> {
        let f: FlatMapFn<T, O> = Arc::new(f);
        self.then("flat_map", NodeKind::Operator, move || {
            FlatMap(Arc::clone(&f))
        })
    }

    /// A fallible function of each record with its subtask's context (operator state,
    /// subtask index): an error fails the job, and the restart strategy decides.
    pub fn process<O: Data>(
        self,
        f: impl Fn(T, &mut TaskContext, &mut Output<O>) -> Result<()> + Send + Sync + 'static,
    ) -> DataStream<O> {
        let f: ProcessFn<T, O> = Arc::new(f);
        self.then("process", NodeKind::Operator, move || {
            TryProcess(Arc::clone(&f))
        })
    }

    /// Passes records through and fails as `plan` says (for testing recovery).
    pub fn inject_failures(self, plan: Arc<FailurePlan>) -> DataStream<T> {
        self.then("inject_failures", NodeKind::Operator, move || {
            InjectFailures {
                plan: Arc::clone(&plan),
                _t: PhantomData,
            }
        })
    }

    /// Partitions the stream by `key`.
    pub fn key_by<K: Key>(
        self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        KeyedStream {
            env: self.env,
            heads: self.heads,
            key: Arc::new(key),
        }
    }

    /// Both streams as one (the next operator has two inputs, whose barriers it aligns).
    pub fn union(mut self, other: DataStream<T>) -> DataStream<T> {
        self.heads.extend(other.heads);
        self
    }

    /// Two streams of different types as one of [`Either`] (the next operator has two
    /// inputs, whose barriers it aligns).
    pub fn connect<U: Data>(self, other: DataStream<U>) -> DataStream<Either<T, U>> {
        let left = self.map(Either::Left);
        let right = other.map(Either::Right);
        left.union(right)
    }

    /// Writes each record's line into `sink`'s directory, exactly once.
    pub fn sink_to(self, sink: FileSink) -> DataStream<()>
    where
        T: Display,
    {
        self.then("file_sink", NodeKind::Sink, move || sink.operator::<T>())
    }

    /// Prints each record (at least once).
    pub fn print(self) -> DataStream<()>
    where
        T: Display,
    {
        self.print_with(PrintSink::new())
    }

    /// Prints each record with `sink`'s settings.
    pub fn print_with(self, sink: PrintSink) -> DataStream<()>
    where
        T: Display,
    {
        let prefix = sink.prefix;
        self.then("print", NodeKind::Sink, move || PrintOperator {
            prefix: prefix.clone(),
            _t: PhantomData,
        })
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    fn keyed<O: Data, Op: StreamOperator<KeyedRecord<T>, O> + 'static>(
        self,
        name: &str,
        make: impl Fn() -> Op + Send + Sync + 'static,
    ) -> DataStream<O> {
        let factory: NodeFactory = Arc::new(move |parts: NodeParts| {
            let inputs = take_inputs::<KeyedRecord<T>>(parts.inputs)?;
            let outs = take_outputs::<O>(parts.outputs)?;
            Ok(Box::new(OperatorTask {
                op: make(),
                inputs,
                out: Output::new(outs, parts.cancel),
            }) as Box<dyn TaskBody>)
        });
        let inputs = self
            .heads
            .iter()
            .map(|h| (*h, keyed_edge::<K, T>(Arc::clone(&self.key)), false))
            .collect();
        let id = self.env.add_node(
            NodeSpec {
                uid: None,
                name: name.into(),
                parallelism: None,
                kind: NodeKind::Operator,
                keyed: true,
                factory,
                chained: None,
                chaining: Chaining::Always,
            },
            inputs,
        );
        DataStream {
            env: self.env,
            heads: vec![id],
            _t: PhantomData,
        }
    }

    /// A function of each record with the state of its key (Flink's `process` on a keyed
    /// stream). Each subtask gets a clone of `f`.
    pub fn process<O: Data, F: KeyedProcessFunction<K, T, O> + Clone + Sync>(
        self,
        f: F,
    ) -> DataStream<O> {
        self.keyed("keyed_process", move || KeyedProcess {
            f: f.clone(),
            _t: PhantomData,
        })
    }

    /// The running reduction of each key, emitted after every record (Flink's `reduce`).
    pub fn reduce(self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DataStream<T>
    where
        T: Serialize + DeserializeOwned,
    {
        let f: Arc<dyn Fn(T, T) -> T + Send + Sync> = Arc::new(f);
        self.keyed("reduce", move || Reduce {
            f: Arc::clone(&f),
            desc: ValueStateDescriptor::new("reduce"),
        })
    }

    /// The running sum of each key (numbers, or the second field of pairs), emitted after
    /// every record (Flink's `sum`).
    pub fn sum(self) -> DataStream<T>
    where
        T: Summable + Serialize + DeserializeOwned,
    {
        self.reduce(Summable::sum)
    }
}

/// A built job: its operators and edges, instantiated anew for every attempt.
pub struct JobGraph {
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) edges: Vec<EdgeSpec>,
}

impl std::fmt::Debug for JobGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobGraph")
            .field("operators", &self.operator_ids())
            .finish()
    }
}

impl JobGraph {
    /// The operators' ids, in the order they were added.
    pub fn operator_ids(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .map(|n| n.uid.as_deref().unwrap_or(""))
            .collect()
    }

    pub(crate) fn uid(&self, node: usize) -> &str {
        self.nodes[node].uid.as_deref().unwrap_or("")
    }

    /// For each node, the node it runs chained to (in that node's subtasks' threads), or
    /// `None` when it heads a chain of its own. A node joins its upstream's chain when it
    /// has that one input, forward, at the same parallelism, and neither side refuses
    /// (`disable_chaining`, `start_new_chain`, or `enabled` false:
    /// `pipeline.operator-chaining.enabled`).
    pub(crate) fn chained_to(&self, parallelism: &[u32], enabled: bool) -> Vec<Option<usize>> {
        let mut inputs = vec![0usize; self.nodes.len()];
        for e in &self.edges {
            inputs[e.to] += 1;
        }
        let mut up = vec![None; self.nodes.len()];
        if !enabled {
            return up;
        }
        for e in &self.edges {
            let (from, to) = (&self.nodes[e.from], &self.nodes[e.to]);
            if e.forward
                && inputs[e.to] == 1
                && parallelism[e.from] == parallelism[e.to]
                && to.chained.is_some()
                && to.chaining == Chaining::Always
                && from.chaining != Chaining::Never
            {
                up[e.to] = Some(e.from);
            }
        }
        up
    }
}
