//! The heap keyed state backend: the working state of the `memory` and `filesystem`
//! backends, in process memory, partitioned by key group, snapshotted without copying.
//!
//! Each key group's entries are spread over shards, each an `Arc` of a hash map. The
//! synchronous part of a snapshot ([`HeapKeyedBackend::snapshot`]) clones the shard
//! pointers (a few thousand reference counts, whatever the size of the state) and
//! returns a frozen view; processing goes on at once. A write to a shard that a snapshot
//! still holds copies that shard first (copy on write, one shard at a time: about 1/8192
//! of the state), so the snapshot keeps seeing the state as it was. The asynchronous part
//! ([`HeapSnapshot::write_to`]) serializes the frozen view, key group by key group, in the
//! key-groups format of `format-spec/state-layout.md`, and returns where each key group
//! starts, so a restore with another parallelism reads only the key groups it owns
//! ([`HeapKeyedBackend::restore`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use super::key_groups::{murmur3_32, MaxParallelism};
use super::keyed::{
    expired, live_list, split_stamp, KeyedStateBackend, StateId, StateKind, StateMeta, SystemClock,
    TtlClock, ValueReader,
};
use super::savepoint::{CanonicalWriter, CanonicalWritten, Record};
use crate::checkpoint::KeyGroupRange;
use crate::codec::{crc32c, put_length_prefixed, put_varint, Decoder};
use crate::error::{Error, Result};

mod lazy;
use super::bytes::Bytes;
pub use lazy::KeyGroupsData;

/// Magic of a key-groups snapshot: `TMKS` in ASCII.
pub const KEY_GROUPS_MAGIC: [u8; 4] = *b"TMKS";
/// Version of the key-groups snapshot format.
pub const KEY_GROUPS_VERSION: u32 = 1;
/// Shards of all key groups of one backend, about (fewer when a key group gets one).
const TARGET_SHARDS: u32 = 8192;
/// Most shards of one key group.
const MAX_SHARDS_PER_GROUP: u32 = 64;

/// One entry: a value (value, list and folding states) or a map.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Value(Bytes),
    Map(BTreeMap<Box<[u8]>, Box<[u8]>>),
}

impl Slot {
    fn heap_bytes(&self) -> usize {
        match self {
            Slot::Value(v) => v.len(),
            Slot::Map(m) => m.iter().map(|(k, v)| k.len() + v.len() + 48).sum(),
        }
    }
}

/// Entries of one shard, by state id (4 bytes, big-endian) followed by the key's bytes.
/// Hashed with foldhash, seeded at random per map (hashbrown's default hasher; std's
/// SipHash cost a fifth of a keyed update).
type Shard = HashMap<Bytes, Slot, foldhash::fast::RandomState>;

/// The key of an entry in a shard.
fn slot_key(out: &mut Vec<u8>, state: StateId, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&state.0.to_be_bytes());
    out.extend_from_slice(key);
}

/// Where the current key lives.
#[derive(Debug, Clone)]
struct Current {
    key: Vec<u8>,
    group: usize,
    shard: usize,
}

/// Keyed state in process memory for one operator subtask.
#[derive(Debug)]
pub struct HeapKeyedBackend {
    max: MaxParallelism,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    by_name: HashMap<String, StateId, foldhash::fast::RandomState>,
    shards_per_group: u32,
    /// `[key group - range.start][shard]`.
    groups: Vec<Vec<Arc<Shard>>>,
    current: Option<Current>,
    scratch: Vec<u8>,
    bytes: usize,
    /// Key groups of a restore not yet installed.
    lazy: Option<lazy::Lazy>,
}

impl HeapKeyedBackend {
    /// An empty backend owning the key groups `range` of `max`.
    pub fn new(max: MaxParallelism, range: KeyGroupRange) -> HeapKeyedBackend {
        let groups = range.len() as u32;
        let shards_per_group = (TARGET_SHARDS / groups.max(1)).clamp(1, MAX_SHARDS_PER_GROUP);
        HeapKeyedBackend {
            max,
            range,
            states: Vec::new(),
            by_name: HashMap::default(),
            shards_per_group,
            groups: (0..groups)
                .map(|_| {
                    (0..shards_per_group)
                        .map(|_| Arc::new(Shard::default()))
                        .collect()
                })
                .collect(),
            current: None,
            scratch: Vec::new(),
            bytes: 0,
            lazy: None,
        }
    }

    /// The approximate heap bytes of the entries (keys and values, not the maps' own
    /// overhead), so a job can see its state's size.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes
    }

    /// The states registered or restored, by id.
    pub fn states(&self) -> &[StateMeta] {
        &self.states
    }

    /// The synchronous part of a snapshot: a frozen view of the state, taken in time that
    /// grows with the number of shards, not the bytes of the state.
    pub fn snapshot(&self) -> HeapSnapshot {
        self.snapshot_at(&SystemClock)
    }

    /// [`HeapKeyedBackend::snapshot`], with TTL measured by `clock`: values expired at the
    /// moment of the snapshot are left out of it.
    pub fn snapshot_at(&self, clock: &dyn TtlClock) -> HeapSnapshot {
        HeapSnapshot {
            max: self.max,
            range: self.range,
            states: self.states.clone(),
            groups: self.groups.clone(),
            restored: self.lazy.as_ref().map(|l| l.frozen()),
            now_ms: clock.now_ms(),
        }
    }

    /// A backend owning `range` of `max`, holding the key groups of `range` found in
    /// `sources` (key-groups snapshots, with the offsets their writers returned). Key
    /// groups outside `range` are not read; each one read has its checksum and every
    /// key's key group checked.
    pub fn restore(
        max: MaxParallelism,
        range: KeyGroupRange,
        sources: &[KeyGroupsSource<'_>],
    ) -> Result<HeapKeyedBackend> {
        let mut b = HeapKeyedBackend::new(max, range);
        for src in sources {
            b.restore_one(src)?;
        }
        Ok(b)
    }

    fn restore_one(&mut self, src: &KeyGroupsSource<'_>) -> Result<()> {
        let header = read_header(src)?;
        let ids = self.register_header(src.name, &header, src.offsets.len())?;
        let both = header.range.intersection(&self.range);
        for g in both.into_iter().flatten() {
            let i = (g - header.range.start()) as usize;
            let at = src.offsets[i];
            self.read_group(src, g, at, &ids)?;
        }
        Ok(())
    }

    /// Checks a snapshot's `header` (of `name`, restored with `offsets` offsets) against
    /// this backend and registers its states: the backend's ids of the snapshot's state
    /// indexes.
    fn register_header(
        &mut self,
        name: &str,
        header: &Header,
        offsets: usize,
    ) -> Result<Vec<StateId>> {
        if header.max != self.max {
            return Err(Error::corruption(
                name,
                0,
                format!(
                    "written with max parallelism {}, restored with {}: key groups cannot be mapped",
                    header.max.get(),
                    self.max.get()
                ),
            ));
        }
        if offsets as u64 != header.range.len() {
            return Err(Error::corruption(
                name,
                0,
                format!(
                    "{offsets} offsets for the {} key groups {}",
                    header.range.len(),
                    header.range
                ),
            ));
        }
        header.states.iter().map(|m| self.register(m)).collect()
    }

    /// A backend owning `range` of `max`, restored from the key-groups snapshots `inputs`
    /// (each with the offsets its writer returned and the key groups `_metadata` records
    /// for it). Only the headers are read here, each checked (crc32c, max parallelism,
    /// key groups, offsets). With `lazy`, a key group is read (its block's crc32c and every
    /// key's key group checked) when a key of it is first set, and meanwhile by a thread of
    /// its own, so records flow before the whole state is in memory; a key group that
    /// fails to load fails every later use of the backend, naming the file and offset.
    /// Without, every key group is read before this returns.
    ///
    /// [`HeapKeyedBackend::approximate_bytes`] counts a key group once it is installed.
    pub fn restore_inputs(
        max: MaxParallelism,
        range: KeyGroupRange,
        inputs: Vec<KeyGroupsInput>,
        lazy: bool,
    ) -> Result<HeapKeyedBackend> {
        let mut b = HeapKeyedBackend::new(max, range);
        let mut sources = Vec::with_capacity(inputs.len());
        let mut plan: Vec<Vec<lazy::Block>> = vec![Vec::new(); b.groups.len()];
        for input in inputs {
            let header = input.header()?;
            if header.range != input.key_groups {
                return Err(Error::corruption(
                    &input.name,
                    0,
                    format!(
                        "the snapshot holds key groups {}, _metadata records {}",
                        header.range, input.key_groups
                    ),
                ));
            }
            let ids = b.register_header(&input.name, &header, input.offsets.len())?;
            let both = header.range.intersection(&range);
            for g in both.into_iter().flatten() {
                let i = (g - header.range.start()) as usize;
                plan[(g - range.start()) as usize].push(lazy::Block {
                    source: sources.len(),
                    at: input.offsets[i],
                    end: input
                        .offsets
                        .get(i + 1)
                        .copied()
                        .unwrap_or(input.data.len()),
                });
            }
            sources.push(lazy::Source {
                name: input.name,
                data: input.data,
                ids,
            });
        }
        b.lazy = lazy::Lazy::start(b.layout(), b.states.clone(), sources, plan, lazy);
        if !lazy {
            for gi in 0..b.groups.len() {
                b.install(gi)?;
            }
        }
        Ok(b)
    }

    /// Installs key group index `gi` if a restore has not yet: read and decoded here, or
    /// taken from the restore's loader.
    fn install(&mut self, gi: usize) -> Result<()> {
        let Some(l) = &mut self.lazy else {
            return Ok(());
        };
        if let Some(e) = l.failure() {
            return Err(e);
        }
        if l.is_pending(gi) {
            let (shards, added) = l.take(gi)?;
            self.groups[gi] = shards;
            self.bytes = self.bytes.wrapping_add_signed(added);
        }
        if l.is_done() {
            self.lazy = None;
        }
        Ok(())
    }

    fn read_group(
        &mut self,
        src: &KeyGroupsSource<'_>,
        group: u32,
        at: u64,
        ids: &[StateId],
    ) -> Result<()> {
        let (body, body_at) = block_in(src.name, src.data, group, at)?;
        let layout = self.layout();
        let gi = (group - self.range.start()) as usize;
        let added = layout.decode_body(
            &self.states,
            src.name,
            body,
            body_at,
            group,
            ids,
            &mut self.groups[gi],
        )?;
        self.bytes = self.bytes.wrapping_add_signed(added);
        Ok(())
    }

    /// How key groups map to shards in this backend.
    fn layout(&self) -> GroupLayout {
        GroupLayout {
            max: self.max,
            first_group: self.range.start(),
            shards_per_group: self.shards_per_group,
        }
    }

    /// The group index and shard of a key with hash `h`.
    fn locate(&self, h: u32) -> (usize, usize) {
        self.layout().locate(h)
    }

    fn current(&self) -> Result<&Current> {
        self.current
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no current key is set".into()))
    }

    fn check_state(&self, state: StateId) -> Result<&StateMeta> {
        self.states
            .get(state.0 as usize)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown state id {}", state.0)))
    }

    /// The shard of the current key, for writing (copied first if a snapshot holds it),
    /// the entry's key in it, and the byte count to keep up to date.
    fn entry_parts(&mut self, state: StateId) -> Result<(&mut Shard, &[u8], &mut usize)> {
        self.check_state(state)?;
        let HeapKeyedBackend {
            current,
            scratch,
            groups,
            bytes,
            ..
        } = self;
        let c = current
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no current key is set".into()))?;
        slot_key(scratch, state, &c.key);
        Ok((
            Arc::make_mut(&mut groups[c.group][c.shard]),
            scratch.as_slice(),
            bytes,
        ))
    }

    /// The bytes [`KeyedStateBackend::get`] returns, where they are kept.
    fn value_bytes(&self, state: StateId, user_key: &[u8]) -> Result<Option<&[u8]>> {
        Ok(match self.slot(state)? {
            None => None,
            Some(Slot::Value(v)) => Some(v),
            Some(Slot::Map(m)) => m.get(user_key).map(|v| &v[..]),
        })
    }

    fn slot(&self, state: StateId) -> Result<Option<&Slot>> {
        self.check_state(state)?;
        let c = self.current()?;
        let shard = &self.groups[c.group][c.shard];
        // The entry's key on the stack when it is short (no allocation per read).
        let mut short = [0u8; 64];
        if let Some(buf) = short.get_mut(..4 + c.key.len()) {
            buf[..4].copy_from_slice(&state.0.to_be_bytes());
            buf[4..].copy_from_slice(&c.key);
            return Ok(shard.get(&*buf));
        }
        let mut k = Vec::with_capacity(4 + c.key.len());
        slot_key(&mut k, state, &c.key);
        Ok(shard.get(k.as_slice()))
    }
}

impl KeyedStateBackend for HeapKeyedBackend {
    fn max_parallelism(&self) -> MaxParallelism {
        self.max
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn set_current_key(&mut self, key: &[u8]) -> Result<()> {
        let h = murmur3_32(key, 0);
        let group = h % self.max.get();
        if !self.range.contains(group) {
            return Err(Error::InvalidArgument(format!(
                "a key of key group {group} is not in this subtask's key groups {}",
                self.range
            )));
        }
        let (group, shard) = self.locate(h);
        if self.lazy.is_some() {
            self.install(group)?;
        }
        match &mut self.current {
            Some(c) => {
                c.key.clear();
                c.key.extend_from_slice(key);
                c.group = group;
                c.shard = shard;
            }
            None => {
                self.current = Some(Current {
                    key: key.to_vec(),
                    group,
                    shard,
                })
            }
        }
        Ok(())
    }

    fn current_key(&self) -> Option<&[u8]> {
        self.current.as_ref().map(|c| c.key.as_slice())
    }

    fn register(&mut self, meta: &StateMeta) -> Result<StateId> {
        if let Some(&id) = self.by_name.get(&meta.name) {
            let have = &self.states[id.0 as usize];
            if !have.compatible(meta) {
                return Err(Error::InvalidArgument(have.mismatch(meta)));
            }
            // A restored state asked for with another time to live: the new one rules
            // snapshots from now on, as it rules reads.
            self.states[id.0 as usize].ttl_ms = meta.ttl_ms;
            return Ok(id);
        }
        let id = StateId(self.states.len() as u32);
        self.states.push(meta.clone());
        self.by_name.insert(meta.name.clone(), id);
        Ok(id)
    }

    fn get(&self, state: StateId, user_key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.value_bytes(state, user_key)?.map(<[u8]>::to_vec))
    }

    fn read_with(&self, state: StateId, user_key: &[u8], f: &mut ValueReader<'_>) -> Result<()> {
        f(self.value_bytes(state, user_key)?)
    }

    fn put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()> {
        let is_map = self.check_state(state)?.kind == StateKind::Map;
        let (shard, key, bytes) = self.entry_parts(state)?;
        match shard.get_mut(key) {
            Some(Slot::Map(m)) if is_map => {
                *bytes += user_key.len() + value.len() + 48;
                if let Some(old) = m.insert(Box::from(user_key), Box::from(value)) {
                    *bytes -= user_key.len() + old.len() + 48;
                }
            }
            Some(Slot::Value(v)) if !is_map => {
                *bytes = *bytes + value.len() - v.len();
                v.set(value);
            }
            _ => {
                let slot = if is_map {
                    Slot::Map(BTreeMap::from([(Box::from(user_key), Box::from(value))]))
                } else {
                    Slot::Value(Bytes::new(value))
                };
                *bytes += key.len() + slot.heap_bytes();
                if let Some(old) = shard.insert(Bytes::new(key), slot) {
                    *bytes -= key.len() + old.heap_bytes();
                }
            }
        }
        Ok(())
    }

    fn append(&mut self, state: StateId, more: &[u8]) -> Result<()> {
        if self.check_state(state)?.kind == StateKind::Map {
            return Err(Error::InvalidArgument(format!(
                "state {:?} is a map state: nothing can be appended to it",
                self.states[state.0 as usize].name
            )));
        }
        let (shard, key, bytes) = self.entry_parts(state)?;
        *bytes += more.len();
        match shard.get_mut(key) {
            Some(Slot::Value(v)) => v.extend(more),
            _ => {
                *bytes += key.len();
                shard.insert(Bytes::new(key), Slot::Value(Bytes::new(more)));
            }
        }
        Ok(())
    }

    fn remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        let is_map = self.check_state(state)?.kind == StateKind::Map;
        if !is_map {
            return self.clear(state);
        }
        let (shard, key, bytes) = self.entry_parts(state)?;
        if let Some(Slot::Map(m)) = shard.get_mut(key) {
            if let Some(old) = m.remove(user_key) {
                *bytes -= user_key.len() + old.len() + 48;
            }
            if m.is_empty() {
                shard.remove(key);
                *bytes -= key.len();
            }
        }
        Ok(())
    }

    fn entries(&self, state: StateId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(match self.slot(state)? {
            Some(Slot::Map(m)) => m.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            _ => Vec::new(),
        })
    }

    fn clear(&mut self, state: StateId) -> Result<()> {
        let (shard, key, bytes) = self.entry_parts(state)?;
        if let Some(old) = shard.remove(key) {
            *bytes -= key.len() + old.heap_bytes();
        }
        Ok(())
    }
}

/// A frozen view of a [`HeapKeyedBackend`], taken by [`HeapKeyedBackend::snapshot`].
#[derive(Debug, Clone)]
pub struct HeapSnapshot {
    max: MaxParallelism,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    groups: Vec<Vec<Arc<Shard>>>,
    /// Key groups of a restore not installed when the snapshot was taken.
    restored: Option<lazy::Frozen>,
    now_ms: u64,
}

/// Where each key group of a written snapshot starts, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroupsWritten {
    /// The key groups written.
    pub range: KeyGroupRange,
    /// One offset per key group of `range`, in order: where its block starts.
    pub offsets: Vec<u64>,
    /// Bytes written.
    pub bytes: u64,
}

impl HeapSnapshot {
    /// The entries of one key group's `shards` that are live at the snapshot's time, in
    /// key order (so equal states give equal bytes).
    fn live_entries<'s>(&'s self, shards: &'s [Arc<Shard>]) -> Vec<(&'s [u8], Cow<'s, Slot>)> {
        let mut entries: Vec<(&[u8], Cow<'_, Slot>)> = shards
            .iter()
            .flat_map(|s| s.iter())
            .filter_map(|(k, v)| {
                let state = u32::from_be_bytes([k[0], k[1], k[2], k[3]]) as usize;
                let meta = self.states.get(state)?;
                live(v, meta, self.now_ms).map(|v| (&k[..], v))
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }

    /// Key group index `i` as restored, when the snapshot was taken before a restore
    /// installed it; `None` when the snapshot holds it.
    fn restored(&self, i: usize) -> Result<Option<Vec<Arc<Shard>>>> {
        match &self.restored {
            Some(r) => r.restored(i),
            None => Ok(None),
        }
    }

    /// The key groups of the snapshot.
    pub fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    /// Serializes the snapshot into `out` (the asynchronous part), in the key-groups
    /// format: entries of each key group in the order of their bytes, so equal states
    /// give equal bytes.
    pub fn write_to(&self, out: &mut dyn Write) -> Result<KeyGroupsWritten> {
        let io = |e: std::io::Error| Error::io("write a key-groups snapshot", "<stream>", e);
        let mut header = Vec::new();
        header.extend_from_slice(&KEY_GROUPS_MAGIC);
        header.extend_from_slice(&KEY_GROUPS_VERSION.to_le_bytes());
        header.extend_from_slice(&self.max.get().to_le_bytes());
        header.extend_from_slice(&self.range.start().to_le_bytes());
        header.extend_from_slice(&self.range.end().to_le_bytes());
        put_varint(&mut header, self.states.len() as u64);
        for s in &self.states {
            for field in [s.name.as_str(), s.kind.as_str(), s.value_type.as_str()] {
                put_length_prefixed(&mut header, field.as_bytes());
            }
            put_varint(&mut header, s.ttl_ms.unwrap_or(0));
        }
        let crc = crc32c(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        out.write_all(&header).map_err(io)?;
        let mut pos = header.len() as u64;
        let mut offsets = Vec::with_capacity(self.groups.len());
        let mut body = Vec::new();
        for (i, shards) in self.groups.iter().enumerate() {
            let restored = self.restored(i)?;
            let entries = self.live_entries(restored.as_deref().unwrap_or(shards));
            body.clear();
            put_varint(&mut body, entries.len() as u64);
            for (k, slot) in entries {
                let (state, key) = k.split_at(4);
                let state = u32::from_be_bytes([state[0], state[1], state[2], state[3]]);
                put_varint(&mut body, u64::from(state));
                put_varint(&mut body, key.len() as u64);
                body.extend_from_slice(key);
                match slot.as_ref() {
                    Slot::Value(v) => {
                        body.push(0);
                        put_varint(&mut body, v.len() as u64);
                        body.extend_from_slice(v);
                    }
                    Slot::Map(m) => {
                        body.push(1);
                        put_varint(&mut body, m.len() as u64);
                        for (mk, mv) in m {
                            put_varint(&mut body, mk.len() as u64);
                            body.extend_from_slice(mk);
                            put_varint(&mut body, mv.len() as u64);
                            body.extend_from_slice(mv);
                        }
                    }
                }
            }
            offsets.push(pos);
            out.write_all(&(body.len() as u64).to_le_bytes())
                .map_err(io)?;
            out.write_all(&body).map_err(io)?;
            out.write_all(&crc32c(&body).to_le_bytes()).map_err(io)?;
            pos += 8 + body.len() as u64 + 4;
        }
        Ok(KeyGroupsWritten {
            range: self.range,
            offsets,
            bytes: pos,
        })
    }
}

impl HeapSnapshot {
    /// Serializes the snapshot into `out` in the canonical savepoint format
    /// (`format-spec/savepoint.md`), named `name` in errors and recording `backend` as its
    /// writer: entries of each key group in the order of their bytes, values expired at
    /// the moment of the snapshot left out.
    pub fn write_canonical<W: Write>(
        &self,
        out: W,
        name: &str,
        backend: &str,
    ) -> Result<(W, CanonicalWritten)> {
        let mut w =
            CanonicalWriter::for_snapshot(out, name, self.max, self.range, backend, &self.states)?;
        for (i, shards) in self.groups.iter().enumerate() {
            let group = self.range.start() + i as u32;
            let restored = self.restored(i)?;
            let entries = self.live_entries(restored.as_deref().unwrap_or(shards));
            for (k, slot) in entries {
                let (state, key) = k.split_at(4);
                let state = u32::from_be_bytes([state[0], state[1], state[2], state[3]]);
                match slot.as_ref() {
                    Slot::Value(v) => w.record(
                        group,
                        Record {
                            state,
                            key,
                            user_key: &[],
                            value: v,
                        },
                    )?,
                    Slot::Map(m) => {
                        for (mk, mv) in m {
                            w.record(
                                group,
                                Record {
                                    state,
                                    key,
                                    user_key: mk,
                                    value: mv,
                                },
                            )?;
                        }
                    }
                }
            }
        }
        w.finish()
    }
}

/// What of `slot` is alive at `now` under its state's time to live: `None` when
/// nothing is. Bytes that do not carry a stamp are kept as they are.
fn live<'s>(slot: &'s Slot, meta: &StateMeta, now: u64) -> Option<Cow<'s, Slot>> {
    let Some(ttl) = meta.ttl_ms else {
        return Some(Cow::Borrowed(slot));
    };
    let fresh = |b: &[u8]| split_stamp(b).is_none_or(|(ts, _)| !expired(ts, ttl, now));
    match slot {
        Slot::Value(v) if meta.kind == StateKind::List => match live_list(v, ttl, now)? {
            Cow::Borrowed(_) => Some(Cow::Borrowed(slot)),
            Cow::Owned(kept) => Some(Cow::Owned(Slot::Value(Bytes::from(kept)))),
        },
        Slot::Value(v) => fresh(v).then_some(Cow::Borrowed(slot)),
        Slot::Map(m) => {
            if m.values().all(|v| fresh(v)) {
                return Some(Cow::Borrowed(slot));
            }
            let kept: BTreeMap<Box<[u8]>, Box<[u8]>> = m
                .iter()
                .filter(|(_, v)| fresh(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (!kept.is_empty()).then_some(Cow::Owned(Slot::Map(kept)))
        }
    }
}

/// A key-groups snapshot to restore from: its bytes, the offsets its writer returned, and
/// a name for errors (its file, or where it was inline).
#[derive(Debug, Clone, Copy)]
pub struct KeyGroupsSource<'a> {
    /// Where the bytes come from, for errors.
    pub name: &'a str,
    /// The whole snapshot.
    pub data: &'a [u8],
    /// One offset per key group of the snapshot's range.
    pub offsets: &'a [u64],
}

impl KeyGroupsSource<'_> {
    fn error(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::corruption(self.name, offset, reason)
    }
}

/// How the key groups of one backend map to its shards: what decoding a key group's
/// block needs to know of the backend it goes into.
#[derive(Debug, Clone, Copy)]
struct GroupLayout {
    max: MaxParallelism,
    first_group: u32,
    shards_per_group: u32,
}

impl GroupLayout {
    /// The group index (from the backend's first key group) and shard of a key with hash
    /// `h`.
    fn locate(&self, h: u32) -> (usize, usize) {
        let max = self.max.get();
        let group = h % max;
        let shard = (h / max) % self.shards_per_group;
        ((group - self.first_group) as usize, shard as usize)
    }

    /// Decodes the checked `body` of key group `group`'s block (at `body_at` of `name`)
    /// into `shards`, the key group's shards, mapping the snapshot's state indexes through
    /// `ids` into `states`. Returns the change of the entries' byte count.
    #[allow(clippy::too_many_arguments)]
    fn decode_body(
        &self,
        states: &[StateMeta],
        name: &str,
        body: &[u8],
        body_at: u64,
        group: u32,
        ids: &[StateId],
        shards: &mut [Arc<Shard>],
    ) -> Result<isize> {
        let corrupt = |at: u64, reason: String| Error::corruption(name, at, reason);
        let mut d = Decoder::new(body, body_at);
        let err = |e: crate::codec::DecodeError| e.into_error(name);
        let count = d
            .varint_bounded("entry count", body.len() as u64)
            .map_err(err)?;
        if count > 0 && ids.is_empty() {
            return Err(corrupt(
                body_at,
                format!("key group {group} holds entries of no state"),
            ));
        }
        if shards.iter().all(|s| s.is_empty()) {
            // A fresh key group: room for its entries at once, not by doubling.
            let each = count / shards.len().max(1) + count / (8 * shards.len().max(1)) + 1;
            for s in shards.iter_mut() {
                Arc::make_mut(s).reserve(each);
            }
        }
        let mut added = 0isize;
        let mut scratch = Vec::new();
        for _ in 0..count {
            let at = d.offset();
            let state = d
                .varint_bounded("state index", ids.len().saturating_sub(1) as u64)
                .map_err(err)?;
            let key = d.length_prefixed("key").map_err(err)?;
            if self.max.key_group_of(key) != group {
                return Err(corrupt(
                    at,
                    format!(
                        "a key of key group {} in key group {group}",
                        self.max.key_group_of(key)
                    ),
                ));
            }
            let slot = match d.u8("entry kind").map_err(err)? {
                0 => Slot::Value(Bytes::new(d.length_prefixed("value").map_err(err)?)),
                1 => {
                    let n = d
                        .varint_bounded("map entries", d.remaining() as u64)
                        .map_err(err)?;
                    let mut m = BTreeMap::new();
                    for _ in 0..n {
                        let k = d.length_prefixed("map key").map_err(err)?;
                        let v = d.length_prefixed("map value").map_err(err)?;
                        m.insert(Box::from(k), Box::from(v));
                    }
                    Slot::Map(m)
                }
                k => return Err(corrupt(at, format!("unknown entry kind {k}"))),
            };
            let id = ids[state];
            let meta = &states[id.0 as usize];
            if matches!(slot, Slot::Map(_)) != (meta.kind == StateKind::Map) {
                return Err(corrupt(
                    at,
                    format!(
                        "an entry of state {:?} is not laid out as a {} state",
                        meta.name,
                        meta.kind.as_str()
                    ),
                ));
            }
            let (_, s) = self.locate(murmur3_32(key, 0));
            slot_key(&mut scratch, id, key);
            added += (scratch.len() + slot.heap_bytes()) as isize;
            let shard = Arc::make_mut(&mut shards[s]);
            if let Some(old) = shard.insert(Bytes::new(&scratch), slot) {
                added -= (scratch.len() + old.heap_bytes()) as isize;
            }
        }
        if !d.is_empty() {
            return Err(corrupt(
                d.offset(),
                format!("bytes after the last entry of key group {group}"),
            ));
        }
        Ok(added)
    }
}

/// The body of key group `group`'s block at `at` of the in-memory snapshot `data` (named
/// `name` in errors), its crc32c checked, and where the body starts.
fn block_in<'d>(name: &str, data: &'d [u8], group: u32, at: u64) -> Result<(&'d [u8], u64)> {
    let start = usize::try_from(at)
        .ok()
        .filter(|&s| s <= data.len())
        .ok_or_else(|| {
            Error::corruption(name, at, format!("key group {group} starts past the end"))
        })?;
    let mut d = Decoder::new(&data[start..], at);
    let len = d.u64("key group length").map_err(|e| e.into_error(name))?;
    let body_at = d.offset();
    let body = usize::try_from(len)
        .ok()
        .and_then(|n| d.bytes(n, "key group body").ok())
        .ok_or_else(|| {
            Error::corruption(
                name,
                at,
                format!("key group {group} of {len} bytes runs past the end"),
            )
        })?;
    let crc = d.u32("key group crc32c").map_err(|e| e.into_error(name))?;
    if crc32c(body) != crc {
        return Err(Error::corruption(
            name,
            at,
            format!("key group {group}: crc32c mismatch"),
        ));
    }
    Ok((body, body_at))
}

/// A key-groups snapshot to restore from ([`HeapKeyedBackend::restore_inputs`]): owned,
/// read in place when it is a local file.
#[derive(Debug)]
pub struct KeyGroupsInput {
    /// Where the bytes come from, for errors.
    pub name: String,
    /// The snapshot's bytes.
    pub data: KeyGroupsData,
    /// One offset per key group of the snapshot's range, as its writer returned them.
    pub offsets: Vec<u64>,
    /// The key groups `_metadata` records for the snapshot.
    pub key_groups: KeyGroupRange,
}

impl KeyGroupsInput {
    /// The snapshot's header, read and checked: the bytes before its first key group.
    fn header(&self) -> Result<Header> {
        let end = match self.offsets.first() {
            Some(&first) if first <= lazy::MAX_HEADER_BYTES => first,
            Some(&first) => {
                return Err(Error::corruption(
                    &self.name,
                    0,
                    format!(
                        "the first key group starts at {first}: a header over {} bytes",
                        lazy::MAX_HEADER_BYTES
                    ),
                ))
            }
            None => {
                return Err(Error::corruption(
                    &self.name,
                    0,
                    "no key-group offsets recorded for the snapshot",
                ))
            }
        };
        let bytes = self.data.read(&self.name, 0, end)?;
        read_header(&KeyGroupsSource {
            name: &self.name,
            data: &bytes,
            offsets: &self.offsets,
        })
    }
}

struct Header {
    max: MaxParallelism,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
}

fn read_header(src: &KeyGroupsSource<'_>) -> Result<Header> {
    let mut d = Decoder::new(src.data, 0);
    let err = |e: crate::codec::DecodeError| e.into_error(src.name);
    let magic = d.bytes(4, "magic").map_err(err)?;
    if magic != KEY_GROUPS_MAGIC {
        return Err(src.error(0, "not a key-groups snapshot (bad magic)"));
    }
    let version = d.u32("version").map_err(err)?;
    if version != KEY_GROUPS_VERSION {
        return Err(src.error(4, format!("key-groups snapshot version {version} is not supported (this build reads {KEY_GROUPS_VERSION})")));
    }
    let max = d.u32("max parallelism").map_err(err)?;
    let max = MaxParallelism::new(max).map_err(|e| src.error(8, e.to_string()))?;
    let start = d.u32("first key group").map_err(err)?;
    let end = d.u32("last key group").map_err(err)?;
    if start > end || end >= max.get() {
        return Err(src.error(
            12,
            format!(
                "key groups {start}..={end} do not fit max parallelism {}",
                max.get()
            ),
        ));
    }
    let n = d
        .varint_bounded("state count", d.remaining() as u64 / 3)
        .map_err(err)?;
    let mut states = Vec::with_capacity(n);
    for _ in 0..n {
        let at = d.offset();
        let name = d
            .length_prefixed_str("state name")
            .map_err(err)?
            .to_string();
        let kind = d
            .length_prefixed_str("state kind")
            .map_err(err)?
            .to_string();
        let value_type = d
            .length_prefixed_str("value type")
            .map_err(err)?
            .to_string();
        let ttl_ms = d.varint("time to live").map_err(err)?;
        let kind = super::keyed::StateKind::parse(&kind)
            .ok_or_else(|| src.error(at, format!("unknown state kind {kind:?}")))?;
        states.push(StateMeta {
            name,
            kind,
            value_type,
            ttl_ms: (ttl_ms > 0).then_some(ttl_ms),
        });
    }
    let end_of_header = d.offset() as usize;
    let crc = d.u32("header crc32c").map_err(err)?;
    if crc32c(&src.data[..end_of_header]) != crc {
        return Err(src.error(end_of_header as u64, "header crc32c mismatch"));
    }
    Ok(Header {
        max,
        range: KeyGroupRange::new(start, end).map_err(|e| src.error(12, e.to_string()))?,
        states,
    })
}
