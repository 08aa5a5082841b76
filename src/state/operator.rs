//! Operator state: state that belongs to an operator subtask, not to a key (Flink's
//! `OperatorStateStore`), such as a source's read positions. It is list state, and how its
//! elements are redistributed when the parallelism changes is part of the state:
//!
//! - [`Redistribution::SplitDistribute`] (Flink's `getListState`): the elements of every old
//!   subtask are concatenated and split evenly, in contiguous runs, over the new subtasks;
//! - [`Redistribution::Union`] (Flink's `getUnionListState`): every new subtask gets every
//!   element of every old subtask.
//!
//! A snapshot copies the lists (operator state is small: positions, not data) and writes
//! them in the operator-state format of `format-spec/state-layout.md`, returning where every
//! element starts, so a restore reads only the elements its subtask gets.
//!
//! ```
//! use tidemark::state::keyed::ListStateDescriptor;
//! use tidemark::state::operator::{OperatorStateStore, OperatorStateSource, Redistribution};
//!
//! # fn main() -> tidemark::Result<()> {
//! let offsets = ListStateDescriptor::<u64>::new("offsets");
//! let mut store = OperatorStateStore::new();
//! store.list(&offsets, Redistribution::SplitDistribute)?.update(&[10, 20, 30, 40])?;
//! let mut file = Vec::new();
//! let written = store.snapshot().write_to(&mut file)?;
//!
//! // Restored into two subtasks: two elements each.
//! let src = OperatorStateSource { name: "op-0", data: &file, states: &written.states };
//! let mut second = OperatorStateStore::restore(1, 2, &[src])?;
//! assert_eq!(second.list(&offsets, Redistribution::SplitDistribute)?.get()?, vec![30, 40]);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::keyed::ListStateDescriptor;
use crate::codec::{crc32c, put_length_prefixed, put_varint, Decoder};
use crate::error::{Error, Result};

/// Magic of an operator-state snapshot: `TMOS` in ASCII.
pub const OPERATOR_STATE_MAGIC: [u8; 4] = *b"TMOS";
/// Version of the operator-state snapshot format.
pub const OPERATOR_STATE_VERSION: u32 = 1;

/// How an operator list state's elements are spread over subtasks on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Redistribution {
    /// Even split of all elements, in contiguous runs (Flink's `SPLIT_DISTRIBUTE`).
    SplitDistribute,
    /// Every subtask gets every element (Flink's `UNION`).
    Union,
}

impl Redistribution {
    /// Flink's name for the mode, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Redistribution::SplitDistribute => "SPLIT_DISTRIBUTE",
            Redistribution::Union => "UNION",
        }
    }

    /// The mode named `s`.
    pub fn parse(s: &str) -> Option<Redistribution> {
        match s {
            "SPLIT_DISTRIBUTE" => Some(Redistribution::SplitDistribute),
            "UNION" => Some(Redistribution::Union),
            _ => None,
        }
    }
}

/// One element of an old subtask's list: the index of its source and its offset there.
type Partition = (usize, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
struct NamedList {
    mode: Redistribution,
    value_type: String,
    elements: Vec<Vec<u8>>,
}

/// The operator state of one subtask.
#[derive(Debug, Clone, Default)]
pub struct OperatorStateStore {
    states: BTreeMap<String, NamedList>,
}

/// One state of a written snapshot: its name, mode and where each element starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenState {
    /// The state's name.
    pub name: String,
    /// How it is redistributed.
    pub mode: Redistribution,
    /// Where each element starts in the snapshot, in order.
    pub offsets: Vec<u64>,
}

/// What [`OperatorSnapshot::write_to`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorStateWritten {
    /// Every state, by name.
    pub states: Vec<WrittenState>,
    /// Bytes written.
    pub bytes: u64,
}

/// An operator-state snapshot to restore from: its bytes, what its writer returned, and a
/// name for errors.
#[derive(Debug, Clone, Copy)]
pub struct OperatorStateSource<'a> {
    /// Where the bytes come from, for errors.
    pub name: &'a str,
    /// The whole snapshot.
    pub data: &'a [u8],
    /// The states and their element offsets.
    pub states: &'a [WrittenState],
}

/// A copy of a subtask's operator state, taken by [`OperatorStateStore::snapshot`].
#[derive(Debug, Clone)]
pub struct OperatorSnapshot {
    states: BTreeMap<String, NamedList>,
}

impl OperatorStateStore {
    /// An empty store.
    pub fn new() -> Self {
        OperatorStateStore::default()
    }

    /// The list state `d`, redistributed by `mode`: registered with that mode the first
    /// time; asked for again (or restored) with another mode or element type, an error
    /// naming it.
    pub fn list<T: Serialize + DeserializeOwned>(
        &mut self,
        d: &ListStateDescriptor<T>,
        mode: Redistribution,
    ) -> Result<OperatorListState<'_, T>> {
        let value_type = d.meta().value_type.clone();
        let list = self
            .states
            .entry(d.name().to_string())
            .or_insert_with(|| NamedList {
                mode,
                value_type: value_type.clone(),
                elements: Vec::new(),
            });
        if list.mode != mode || list.value_type != value_type {
            return Err(Error::InvalidArgument(format!(
                "operator state {:?} is a {} list of {}, asked for as a {} list of {}",
                d.name(),
                list.mode.as_str(),
                list.value_type,
                mode.as_str(),
                value_type
            )));
        }
        Ok(OperatorListState {
            name: d.name().to_string(),
            list,
            _t: std::marker::PhantomData,
        })
    }

    /// The names of the states held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.states.keys().map(String::as_str)
    }

    /// A copy of the state (the synchronous part of a snapshot).
    pub fn snapshot(&self) -> OperatorSnapshot {
        OperatorSnapshot {
            states: self.states.clone(),
        }
    }

    /// The operator state of subtask `index` of `parallelism`, redistributed from the
    /// snapshots of every old subtask (`sources`, in old subtask order).
    pub fn restore(
        index: u32,
        parallelism: u32,
        sources: &[OperatorStateSource<'_>],
    ) -> Result<OperatorStateStore> {
        if parallelism == 0 || index >= parallelism {
            return Err(Error::InvalidArgument(format!(
                "subtask {index} of parallelism {parallelism}"
            )));
        }
        // Per state: its mode, type and every (source, offset) in order.
        let mut plan: BTreeMap<&str, (Redistribution, Vec<Partition>)> = BTreeMap::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        for (si, src) in sources.iter().enumerate() {
            let header_types = read_header(src)?;
            for st in src.states {
                let ty = header_types.get(&st.name).ok_or_else(|| {
                    src.error(0, format!("state {:?} is not in the snapshot", st.name))
                })?;
                if let Some(prev) = types.insert(st.name.clone(), ty.clone()) {
                    if &prev != ty {
                        return Err(src.error(
                            0,
                            format!("state {:?} holds {ty} here and {prev} elsewhere", st.name),
                        ));
                    }
                }
                let e = plan
                    .entry(st.name.as_str())
                    .or_insert_with(|| (st.mode, Vec::new()));
                if e.0 != st.mode {
                    return Err(src.error(
                        0,
                        format!(
                            "state {:?} is {} here and {} elsewhere",
                            st.name,
                            st.mode.as_str(),
                            e.0.as_str()
                        ),
                    ));
                }
                e.1.extend(st.offsets.iter().map(|&o| (si, o)));
            }
        }
        let mut store = OperatorStateStore::new();
        for (name, (mode, parts)) in plan {
            let mine: &[Partition] = match mode {
                Redistribution::Union => &parts,
                Redistribution::SplitDistribute => {
                    let n = parts.len() as u64;
                    let (p, i) = (u64::from(parallelism), u64::from(index));
                    &parts[(i * n / p) as usize..((i + 1) * n / p) as usize]
                }
            };
            let mut elements = Vec::with_capacity(mine.len());
            for &(si, at) in mine {
                elements.push(read_element(&sources[si], at)?);
            }
            store.states.insert(
                name.to_string(),
                NamedList {
                    mode,
                    value_type: types.get(name).cloned().unwrap_or_default(),
                    elements,
                },
            );
        }
        Ok(store)
    }
}

impl OperatorSnapshot {
    /// True when the snapshot holds no named state (nothing to write).
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Writes the snapshot to `out` (the asynchronous part).
    pub fn write_to(&self, out: &mut dyn Write) -> Result<OperatorStateWritten> {
        let io = |e: std::io::Error| Error::io("write an operator-state snapshot", "<stream>", e);
        let mut header = Vec::new();
        header.extend_from_slice(&OPERATOR_STATE_MAGIC);
        header.extend_from_slice(&OPERATOR_STATE_VERSION.to_le_bytes());
        put_varint(&mut header, self.states.len() as u64);
        for (name, list) in &self.states {
            for field in [name.as_str(), list.mode.as_str(), list.value_type.as_str()] {
                put_length_prefixed(&mut header, field.as_bytes());
            }
        }
        header.extend_from_slice(&crc32c(&header).to_le_bytes());
        out.write_all(&header).map_err(io)?;
        let mut pos = header.len() as u64;
        let mut states = Vec::with_capacity(self.states.len());
        let mut buf = Vec::new();
        for (name, list) in &self.states {
            let mut offsets = Vec::with_capacity(list.elements.len());
            for e in &list.elements {
                buf.clear();
                put_varint(&mut buf, e.len() as u64);
                buf.extend_from_slice(e);
                buf.extend_from_slice(&crc32c(e).to_le_bytes());
                out.write_all(&buf).map_err(io)?;
                offsets.push(pos);
                pos += buf.len() as u64;
            }
            states.push(WrittenState {
                name: name.clone(),
                mode: list.mode,
                offsets,
            });
        }
        Ok(OperatorStateWritten { states, bytes: pos })
    }
}

impl OperatorStateSource<'_> {
    fn error(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::corruption(self.name, offset, reason)
    }
}

/// The states' element types, by name, from a snapshot's header.
fn read_header(src: &OperatorStateSource<'_>) -> Result<BTreeMap<String, String>> {
    let mut d = Decoder::new(src.data, 0);
    let err = |e: crate::codec::DecodeError| e.into_error(src.name);
    if d.bytes(4, "magic").map_err(err)? != OPERATOR_STATE_MAGIC {
        return Err(src.error(0, "not an operator-state snapshot (bad magic)"));
    }
    let version = d.u32("version").map_err(err)?;
    if version != OPERATOR_STATE_VERSION {
        return Err(src.error(
            4,
            format!("operator-state snapshot version {version} is not supported (this build reads {OPERATOR_STATE_VERSION})"),
        ));
    }
    let n = d
        .varint_bounded("state count", d.remaining() as u64 / 3)
        .map_err(err)?;
    let mut types = BTreeMap::new();
    let mut listed = Vec::with_capacity(n);
    for _ in 0..n {
        let at = d.offset();
        let name = d
            .length_prefixed_str("state name")
            .map_err(err)?
            .to_string();
        let mode = d.length_prefixed_str("mode").map_err(err)?.to_string();
        let ty = d
            .length_prefixed_str("element type")
            .map_err(err)?
            .to_string();
        let mode = Redistribution::parse(&mode)
            .ok_or_else(|| src.error(at, format!("unknown redistribution mode {mode:?}")))?;
        listed.push((name.clone(), mode));
        types.insert(name, ty);
    }
    let end = d.offset() as usize;
    let crc = d.u32("header crc32c").map_err(err)?;
    if crc32c(&src.data[..end]) != crc {
        return Err(src.error(end as u64, "header crc32c mismatch"));
    }
    // What the caller says of the snapshot must be what the snapshot says of itself.
    let said: Vec<(String, Redistribution)> = src
        .states
        .iter()
        .map(|s| (s.name.clone(), s.mode))
        .collect();
    if said != listed {
        return Err(src.error(
            0,
            "the states and modes recorded for it do not match its header",
        ));
    }
    // Elements lie one after another, state by state, after the header: their offsets
    // strictly increase inside the data (so no element is read twice or across states).
    let mut after = end as u64 + 4;
    for st in src.states {
        for &o in &st.offsets {
            if o < after || o >= src.data.len() as u64 {
                return Err(src.error(
                    o,
                    format!(
                        "element offset {o} of state {:?} is out of order or past the end",
                        st.name
                    ),
                ));
            }
            after = o + 1;
        }
    }
    Ok(types)
}

fn read_element(src: &OperatorStateSource<'_>, at: u64) -> Result<Vec<u8>> {
    let start = usize::try_from(at)
        .ok()
        .filter(|&s| s <= src.data.len())
        .ok_or_else(|| src.error(at, "an element starts past the end"))?;
    let mut d = Decoder::new(&src.data[start..], at);
    let err = |e: crate::codec::DecodeError| e.into_error(src.name);
    let e = d.length_prefixed("element").map_err(err)?;
    let crc = d.u32("element crc32c").map_err(err)?;
    if crc32c(e) != crc {
        return Err(src.error(at, "element crc32c mismatch"));
    }
    Ok(e.to_vec())
}

/// An operator list state (Flink's `ListState` from the `OperatorStateStore`).
pub struct OperatorListState<'a, T> {
    name: String,
    list: &'a mut NamedList,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for OperatorListState<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorListState")
            .field("name", &self.name)
            .field("elements", &self.list.elements.len())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> OperatorListState<'_, T> {
    /// The elements.
    pub fn get(&self) -> Result<Vec<T>> {
        self.list
            .elements
            .iter()
            .map(|e| {
                postcard::from_bytes(e).map_err(|err| {
                    Error::InvalidArgument(format!(
                        "operator state {:?}: stored bytes do not decode as {}: {err}",
                        self.name,
                        std::any::type_name::<T>()
                    ))
                })
            })
            .collect()
    }

    /// Appends one element.
    pub fn add(&mut self, v: &T) -> Result<()> {
        let b = postcard::to_stdvec(v).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot serialize operator state {:?}: {e}",
                self.name
            ))
        })?;
        self.list.elements.push(b);
        Ok(())
    }

    /// Replaces the elements.
    pub fn update<'v>(&mut self, vs: impl IntoIterator<Item = &'v T>) -> Result<()>
    where
        T: 'v,
    {
        self.list.elements.clear();
        for v in vs {
            self.add(v)?;
        }
        Ok(())
    }

    /// Removes every element.
    pub fn clear(&mut self) {
        self.list.elements.clear();
    }
}
