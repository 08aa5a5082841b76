//! The `lsm` keyed state backend's working state: keyed state in tidemark's store, one
//! store per operator subtask, laid out key group first so that a key-group range of a
//! store is one contiguous range of its keys.
//!
//! Row keys (`format-spec/state-layout.md`, *LSM row layout*):
//!
//! ```text
//! [key group: u16 BE][state id: u32 BE][varint key length][serialized key][map user key]
//! ```
//!
//! A value, list or folding state has one row per key (no user key); a map state one row
//! per entry. The states' names, kinds and types are rows of their own, under the prefix
//! `ff ff` (above every key group), so a restored store knows its states.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::key_groups::{murmur3_32, MaxParallelism};
use super::keyed::{
    expired, live_list, split_stamp, KeyedStateBackend, StateId, StateKind, StateMeta, SystemClock,
    TtlClock,
};
use super::row_cache::{Cached, RowCache, DEFAULT_ROW_CACHE_BYTES};
use super::savepoint::{CanonicalWriter, CanonicalWritten, Record};
use crate::checkpoint::KeyGroupRange;
use crate::codec::{put_length_prefixed, put_varint, Decoder};
use crate::error::{Error, Result};
use crate::lsm::{CompactionFilter, Db, FilterDecision, Snapshot, WriteBatch};

/// Prefix of the rows that register states: above every key group (at most 2^15 - 1).
pub const REGISTRY_PREFIX: [u8; 2] = [0xff, 0xff];

/// Drops the values whose time to live has expired when compaction meets them: the
/// `lsm` backend's TTL cleanup. Give it to the store's [`crate::lsm::Options`] as its
/// compaction filter, and to [`LsmKeyedBackend::with_ttl_filter`], which tells it the
/// states' time to live.
pub struct TtlCompactionFilter {
    /// Kind and time to live (ms) of each state with one, by state id.
    states: RwLock<HashMap<u32, (StateKind, u64)>>,
    clock: Arc<dyn TtlClock>,
}

impl std::fmt::Debug for TtlCompactionFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCompactionFilter")
            .field("states", &self.states.read().len())
            .finish()
    }
}

impl TtlCompactionFilter {
    /// A filter measuring time with the system clock.
    pub fn new() -> Arc<Self> {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A filter measuring time with `clock`.
    pub fn with_clock(clock: Arc<dyn TtlClock>) -> Arc<Self> {
        Arc::new(TtlCompactionFilter {
            states: RwLock::new(HashMap::new()),
            clock,
        })
    }

    fn learn(&self, id: StateId, meta: &StateMeta) {
        let mut states = self.states.write();
        match meta.ttl_ms {
            Some(ttl) => states.insert(id.0, (meta.kind, ttl)),
            None => states.remove(&id.0),
        };
    }
}

impl CompactionFilter for TtlCompactionFilter {
    fn filter(&self, _level: usize, key: &[u8], value: &[u8]) -> FilterDecision {
        let Some(state) = key.get(2..6) else {
            return FilterDecision::Keep;
        };
        if key[..2] == REGISTRY_PREFIX {
            return FilterDecision::Keep;
        }
        let state = u32::from_be_bytes([state[0], state[1], state[2], state[3]]);
        let Some(&(kind, ttl)) = self.states.read().get(&state) else {
            return FilterDecision::Keep;
        };
        let now = self.clock.now_ms();
        if kind == StateKind::List {
            return match live_list(value, ttl, now) {
                None => FilterDecision::Remove,
                Some(std::borrow::Cow::Borrowed(_)) => FilterDecision::Keep,
                Some(std::borrow::Cow::Owned(kept)) => FilterDecision::Change(kept),
            };
        }
        match split_stamp(value) {
            Some((ts, _)) if expired(ts, ttl, now) => FilterDecision::Remove,
            _ => FilterDecision::Keep,
        }
    }
}

/// Keyed state in an LSM store.
#[derive(Debug)]
pub struct LsmKeyedBackend {
    filter: Option<Arc<TtlCompactionFilter>>,
    db: Arc<Db>,
    max: MaxParallelism,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    by_name: HashMap<String, StateId>,
    current: Option<Vec<u8>>,
    current_group: u16,
    row: Vec<u8>,
    cache: RefCell<RowCache>,
    /// Why the backend refuses calls: a write of evicted rows failed.
    failed: RefCell<Option<String>>,
}

fn registry_key(name: &str) -> Vec<u8> {
    let mut k = REGISTRY_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn encode_meta(id: StateId, m: &StateMeta) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&id.0.to_le_bytes());
    for f in [m.kind.as_str(), m.value_type.as_str()] {
        put_length_prefixed(&mut v, f.as_bytes());
    }
    put_varint(&mut v, m.ttl_ms.unwrap_or(0));
    v
}

impl LsmKeyedBackend {
    /// The keyed state of the key groups `range` of `max` in `db`, with the states the
    /// store already registers (a restored store's).
    pub fn open(db: Arc<Db>, max: MaxParallelism, range: KeyGroupRange) -> Result<Self> {
        if range.end() >= max.get() {
            return Err(Error::InvalidArgument(format!(
                "key groups {range} do not fit max parallelism {}",
                max.get()
            )));
        }
        let mut b = LsmKeyedBackend {
            filter: None,
            db,
            max,
            range,
            states: Vec::new(),
            by_name: HashMap::new(),
            current: None,
            current_group: 0,
            row: Vec::new(),
            cache: RefCell::new(RowCache::new(DEFAULT_ROW_CACHE_BYTES)),
            failed: RefCell::new(None),
        };
        let mut found: Vec<(StateId, StateMeta)> = Vec::new();
        for kv in b.db.prefix(REGISTRY_PREFIX)? {
            let (k, v) = kv?;
            let name = String::from_utf8(k[2..].to_vec())
                .map_err(|_| Error::corruption(b.db.path(), 0, "a state name that is not UTF-8"))?;
            let bad = |why: &str| {
                Error::corruption(
                    b.db.path(),
                    0,
                    format!("the registration of state {name:?}: {why}"),
                )
            };
            let mut d = Decoder::new(&v, 0);
            let id = d.u32("state id").map_err(|e| bad(&e.to_string()))?;
            let kind = d
                .length_prefixed_str("kind")
                .map_err(|e| bad(&e.to_string()))?;
            let ty = d
                .length_prefixed_str("type")
                .map_err(|e| bad(&e.to_string()))?;
            let ttl_ms = d.varint("time to live").map_err(|e| bad(&e.to_string()))?;
            let kind = StateKind::parse(kind).ok_or_else(|| bad("unknown kind"))?;
            let value_type = ty.to_string();
            found.push((
                StateId(id),
                StateMeta {
                    name,
                    kind,
                    value_type,
                    ttl_ms: (ttl_ms > 0).then_some(ttl_ms),
                },
            ));
        }
        found.sort_by_key(|(id, _)| *id);
        for (i, (id, meta)) in found.into_iter().enumerate() {
            if id.0 as usize != i {
                return Err(Error::corruption(
                    b.db.path(),
                    0,
                    format!("state ids are not 0..n: {:?} has id {}", meta.name, id.0),
                ));
            }
            b.by_name.insert(meta.name.clone(), id);
            b.states.push(meta);
        }
        Ok(b)
    }

    /// Tells `filter` (the store's compaction filter) the time to live of every state,
    /// registered now or later, so compaction drops their expired values.
    pub fn with_ttl_filter(mut self, filter: Arc<TtlCompactionFilter>) -> Self {
        for (i, meta) in self.states.iter().enumerate() {
            filter.learn(StateId(i as u32), meta);
        }
        self.filter = Some(filter);
        self
    }

    /// The states registered in the store, by id.
    pub fn states(&self) -> &[StateMeta] {
        &self.states
    }

    /// Copies into this backend's store every row of `from` (another backend's store)
    /// whose key group is in both backends' ranges, registering `from`'s states here by
    /// name (their ids may differ). Returns the rows copied. This is how a rescale cuts an
    /// old subtask's state: its cost grows with the bytes of the key groups it moves.
    pub fn copy_key_groups_from(&mut self, from: &LsmKeyedBackend) -> Result<u64> {
        let Some(both) = self.range.intersection(&from.range) else {
            return Ok(0);
        };
        let (lo, hi) = (both.start(), both.end());
        from.flush_row_cache()?;
        self.flush_row_cache()?;
        self.cache.get_mut().clear();
        let mut ids = Vec::with_capacity(from.states.len());
        for meta in from.states.clone() {
            ids.push(self.register(&meta)?);
        }
        let start = (lo as u16).to_be_bytes().to_vec();
        let end = ((hi + 1) as u16).to_be_bytes().to_vec();
        let mut batch = WriteBatch::new();
        let mut rows = 0u64;
        for kv in from.db.scan(start..end)? {
            let (mut k, v) = kv?;
            let bad =
                || Error::corruption(from.db.path(), 0, "a state row shorter than its prefix");
            let old = k.get(2..6).ok_or_else(bad)?;
            let old = u32::from_be_bytes([old[0], old[1], old[2], old[3]]) as usize;
            let new = ids.get(old).ok_or_else(|| {
                Error::corruption(
                    from.db.path(),
                    0,
                    format!("a row of unregistered state id {old}"),
                )
            })?;
            k[2..6].copy_from_slice(&new.0.to_be_bytes());
            batch.put(&k, &v);
            rows += 1;
            if batch.encoded_size() >= 1 << 20 {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok(rows)
    }

    /// Deletes every row of the key groups in `held` that lie outside this backend's
    /// range (the registry of states is kept). Returns the rows deleted.
    ///
    /// This is how a rescale trims a store restored by linking an old subtask's files: the
    /// old subtask held `held`, this one owns only part of it. Each row becomes a point
    /// tombstone (a key, no value), written in batches; compaction reclaims the space as it
    /// reaches them. The cost grows with the rows trimmed, not with the rows kept.
    pub fn delete_key_groups_outside(&mut self, held: KeyGroupRange) -> Result<u64> {
        let mut outside = Vec::new();
        if held.start() < self.range.start() {
            outside.push((held.start(), held.end().min(self.range.start() - 1)));
        }
        if held.end() > self.range.end() {
            outside.push((held.start().max(self.range.end() + 1), held.end()));
        }
        self.flush_row_cache()?;
        self.cache.get_mut().clear();
        let mut rows = 0u64;
        let mut batch = WriteBatch::new();
        for (lo, hi) in outside {
            // Key groups are below the max parallelism (at most 2^15), so `hi + 1` fits
            // in the 2-byte prefix and stays below the registry's prefix.
            let start = (lo as u16).to_be_bytes();
            let end = ((hi + 1) as u16).to_be_bytes();
            for kv in self.db.scan(start..end)? {
                let (k, _) = kv?;
                batch.delete(&k);
                rows += 1;
                if batch.encoded_size() >= 1 << 20 {
                    self.db.write(std::mem::take(&mut batch))?;
                }
            }
        }
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok(rows)
    }

    /// The synchronous part of a canonical snapshot: a consistent view of the store (no
    /// copy of state) and of the states registered now, with the time `clock` says, by
    /// which [`LsmCanonicalSnapshot::write_canonical`] leaves expired values out.
    pub fn canonical_snapshot(&self, clock: &dyn TtlClock) -> Result<LsmCanonicalSnapshot> {
        self.flush_row_cache()?;
        Ok(LsmCanonicalSnapshot {
            snapshot: self.db.snapshot(),
            path: self.db.path().to_path_buf(),
            max: self.max,
            range: self.range,
            states: self.states.clone(),
            now_ms: clock.now_ms(),
        })
    }

    /// Keeps up to about `bytes` of the rows written last in memory, writing them into
    /// the store later (see [`super::row_cache`]; default [`DEFAULT_ROW_CACHE_BYTES`]; 0
    /// turns it off). Rows of states with a time to live are never cached: compaction may
    /// drop them.
    pub fn with_row_cache(self, bytes: usize) -> Self {
        self.cache.replace(RowCache::new(bytes));
        self
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Whether rows of `state` go through the row cache: not when it is off, nor when
    /// compaction may drop them.
    fn cacheable(&self, state: StateId) -> bool {
        self.cache.borrow().budget() > 0
            && self
                .states
                .get(state.0 as usize)
                .is_some_and(|m| m.ttl_ms.is_none())
    }

    fn meta(&self, state: StateId) -> Result<&StateMeta> {
        self.states
            .get(state.0 as usize)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown state id {}", state.0)))
    }

    /// The row of the current key in `state`, with `user_key`, in `self.row`.
    fn set_row(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        self.meta(state)?;
        let key = self
            .current
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no current key is set".into()))?;
        self.row.clear();
        self.row
            .extend_from_slice(&self.current_group.to_be_bytes());
        self.row.extend_from_slice(&state.0.to_be_bytes());
        put_varint(&mut self.row, key.len() as u64);
        self.row.extend_from_slice(key);
        self.row.extend_from_slice(user_key);
        Ok(())
    }

    /// Writes `value` (`None`: a delete) under the row in `self.row`: into the row cache
    /// (the store gets it later), or into the store for a state the cache does not keep.
    fn write_row(&mut self, state: StateId, value: Option<&[u8]>) -> Result<()> {
        if !self.cacheable(state) {
            self.check_healthy()?;
            return match value {
                Some(v) => self.db.put(&self.row, v),
                None => self.db.delete(&self.row),
            };
        }
        let cache = self.cache.get_mut();
        cache.set(&self.row, value, true);
        if cache.over_changed_limit() {
            return self.flush_row_cache();
        }
        let mut cache = self.cache.borrow_mut();
        self.write_evicted(&mut cache)
    }

    fn check_healthy(&self) -> Result<()> {
        match &*self.failed.borrow() {
            Some(why) => Err(Error::io(
                "use keyed state",
                self.db.path(),
                std::io::Error::other(format!("unusable after a failed write: {why}")),
            )),
            None => Ok(()),
        }
    }

    /// Writes the changed rows the cache evicted into the store. If that fails the rows
    /// are gone from both, so the backend refuses every later call (the task fails and
    /// restores from its last checkpoint).
    fn write_evicted(&self, cache: &mut RowCache) -> Result<()> {
        self.check_healthy()?;
        let rows = cache.take_evicted();
        if rows.is_empty() {
            return Ok(());
        }
        self.write_or_fail(rows.iter().map(|(k, v)| (&k[..], v.as_deref())))
    }

    /// Writes `rows` (a value, or `None` for a delete) into the store as one batch; a
    /// failure makes the backend refuse every later call.
    fn write_or_fail<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<()> {
        let mut batch = WriteBatch::new();
        for (k, v) in rows {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            };
        }
        self.db.write(batch).inspect_err(|e| {
            *self.failed.borrow_mut() = Some(format!("writing rows from its row cache: {e}"));
        })
    }

    /// Writes every row changed in the row cache into the store, so that the store holds
    /// the whole state (before a snapshot, a savepoint or a scan). The rows stay cached.
    pub fn flush_row_cache(&self) -> Result<()> {
        self.check_healthy()?;
        let mut cache = self.cache.borrow_mut();
        if cache.dirty_rows() == 0 {
            return Ok(());
        }
        self.write_or_fail(cache.changed_rows())?;
        cache.mark_clean();
        Ok(())
    }
}

impl Drop for LsmKeyedBackend {
    /// Writes the rows changed in the row cache into the store (the store stays usable
    /// after the backend).
    fn drop(&mut self) {
        if let Err(e) = self.flush_row_cache() {
            tracing::warn!(
                "keyed state in {}: rows of the row cache not written: {e}",
                self.db.path().display()
            );
        }
    }
}

/// A consistent view of an LSM keyed backend, to be written in the canonical savepoint
/// format; taken by [`LsmKeyedBackend::canonical_snapshot`].
pub struct LsmCanonicalSnapshot {
    snapshot: Snapshot,
    path: std::path::PathBuf,
    max: MaxParallelism,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    now_ms: u64,
}

impl std::fmt::Debug for LsmCanonicalSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LsmCanonicalSnapshot")
            .field("path", &self.path)
            .field("range", &self.range)
            .finish()
    }
}

impl LsmCanonicalSnapshot {
    /// Writes the view into `out` in the canonical savepoint format
    /// (`format-spec/savepoint.md`), named `name` in errors and recording `backend` as its
    /// writer: the rows in key order (key group first), what had expired at the moment of
    /// the snapshot left out (a list keeps its live elements).
    pub fn write_canonical<W: std::io::Write>(
        &self,
        out: W,
        name: &str,
        backend: &str,
    ) -> Result<(W, CanonicalWritten)> {
        let mut w =
            CanonicalWriter::for_snapshot(out, name, self.max, self.range, backend, &self.states)?;
        let start = (self.range.start() as u16).to_be_bytes();
        let end = (self.range.end() + 1).to_be_bytes();
        // Key groups are below 2^15: the end fits in the row's two bytes.
        let end = [end[2], end[3]];
        for kv in self.snapshot.scan(start..end)? {
            let (k, v) = kv?;
            let bad = |why: &str| Error::corruption(&self.path, 0, format!("a state row {why}"));
            let (Some(g), Some(id)) = (k.get(..2), k.get(2..6)) else {
                return Err(bad("shorter than its prefix"));
            };
            let group = u32::from(u16::from_be_bytes([g[0], g[1]]));
            let state = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            let meta = self
                .states
                .get(state as usize)
                .ok_or_else(|| bad(&format!("of unregistered state id {state}")))?;
            let rest = &k[6..];
            let (len, n) =
                crate::codec::get_varint(rest).ok_or_else(|| bad("with a damaged key length"))?;
            let key = usize::try_from(len)
                .ok()
                .and_then(|len| rest.get(n..n.checked_add(len)?))
                .ok_or_else(|| bad("with a key past its end"))?;
            let user_key = &rest[n + key.len()..];
            let value: std::borrow::Cow<'_, [u8]> = match meta.ttl_ms {
                None => std::borrow::Cow::Borrowed(&v),
                Some(ttl) if meta.kind == StateKind::List => {
                    match live_list(&v, ttl, self.now_ms) {
                        None => continue,
                        Some(live) => live,
                    }
                }
                Some(ttl) => match split_stamp(&v) {
                    Some((ts, _)) if expired(ts, ttl, self.now_ms) => continue,
                    _ => std::borrow::Cow::Borrowed(&v),
                },
            };
            w.record(
                group,
                Record {
                    state,
                    key,
                    user_key,
                    value: &value,
                },
            )?;
        }
        w.finish()
    }
}

impl KeyedStateBackend for LsmKeyedBackend {
    fn max_parallelism(&self) -> MaxParallelism {
        self.max
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn set_current_key(&mut self, key: &[u8]) -> Result<()> {
        let group = murmur3_32(key, 0) % self.max.get();
        if !self.range.contains(group) {
            return Err(Error::InvalidArgument(format!(
                "a key of key group {group} is not in this subtask's key groups {}",
                self.range
            )));
        }
        self.current_group = group as u16;
        let c = self.current.get_or_insert_with(Vec::new);
        c.clear();
        c.extend_from_slice(key);
        Ok(())
    }

    fn current_key(&self) -> Option<&[u8]> {
        self.current.as_deref()
    }

    fn register(&mut self, meta: &StateMeta) -> Result<StateId> {
        if let Some(&id) = self.by_name.get(&meta.name) {
            let have = &self.states[id.0 as usize];
            if !have.compatible(meta) {
                return Err(Error::InvalidArgument(have.mismatch(meta)));
            }
            if have.ttl_ms != meta.ttl_ms {
                // Another time to live for a registered state: recorded, and compaction
                // cleans up by it from now on, as reads do.
                self.db
                    .put(registry_key(&meta.name), encode_meta(id, meta))?;
                self.states[id.0 as usize].ttl_ms = meta.ttl_ms;
                if let Some(f) = &self.filter {
                    f.learn(id, meta);
                }
            }
            return Ok(id);
        }
        let id = StateId(self.states.len() as u32);
        self.db
            .put(registry_key(&meta.name), encode_meta(id, meta))?;
        if let Some(f) = &self.filter {
            f.learn(id, meta);
        }
        self.states.push(meta.clone());
        self.by_name.insert(meta.name.clone(), id);
        Ok(id)
    }

    fn get(&self, state: StateId, user_key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.meta(state)?;
        let key = self
            .current
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no current key is set".into()))?;
        let mut row = Vec::with_capacity(8 + key.len() + user_key.len());
        row.extend_from_slice(&self.current_group.to_be_bytes());
        row.extend_from_slice(&state.0.to_be_bytes());
        put_varint(&mut row, key.len() as u64);
        row.extend_from_slice(key);
        row.extend_from_slice(user_key);
        if !self.cacheable(state) {
            return self.db.get(&row);
        }
        let mut cache = self.cache.borrow_mut();
        let found = match cache.get(&row) {
            Cached::Value(v) => Some(v),
            Cached::Absent => None,
            // Not admitted on a read: under random reads of a large state the cache
            // would only churn. A row enters by a write (a read-modify-write reads it
            // from the store once, then finds it here until it is evicted).
            Cached::Unknown => self.db.get(&row)?,
        };
        self.write_evicted(&mut cache)?;
        Ok(found)
    }

    fn put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()> {
        self.set_row(state, user_key)?;
        self.write_row(state, Some(value))
    }

    fn remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        self.set_row(state, user_key)?;
        self.write_row(state, None)
    }

    fn entries(&self, state: StateId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if self.meta(state)?.kind != StateKind::Map {
            return Ok(Vec::new());
        }
        let key = self
            .current
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no current key is set".into()))?;
        let mut prefix = Vec::with_capacity(8 + key.len());
        prefix.extend_from_slice(&self.current_group.to_be_bytes());
        prefix.extend_from_slice(&state.0.to_be_bytes());
        put_varint(&mut prefix, key.len() as u64);
        prefix.extend_from_slice(key);
        self.flush_row_cache()?;
        let mut out = Vec::new();
        for kv in self.db.prefix(&prefix)? {
            let (k, v) = kv?;
            out.push((k[prefix.len()..].to_vec(), v));
        }
        Ok(out)
    }

    fn clear(&mut self, state: StateId) -> Result<()> {
        if self.meta(state)?.kind != StateKind::Map {
            self.set_row(state, &[])?;
            return self.write_row(state, None);
        }
        let user_keys: Vec<Vec<u8>> = self.entries(state)?.into_iter().map(|(k, _)| k).collect();
        if user_keys.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(user_keys.len());
        for uk in &user_keys {
            self.set_row(state, uk)?;
            rows.push(self.row.clone());
        }
        self.write_or_fail(rows.iter().map(|r| (&r[..], None)))?;
        let cache = self.cache.get_mut();
        for row in rows {
            cache.set(&row, None, false);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::Options;
    use crate::state::keyed::{KeyedState, ValueStateDescriptor};

    /// The example of format-spec/state-layout.md: the row layout is an on-disk format.
    #[test]
    fn row_layout_is_pinned() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(tmp.path(), Options::default()).unwrap());
        let m = MaxParallelism::default();
        let mut b = LsmKeyedBackend::open(db.clone(), m, m.full_range()).unwrap();
        let mut s = KeyedState::new(&mut b);
        s.set_current_key("alice").unwrap();
        s.value(&ValueStateDescriptor::<u8>::new("v"))
            .unwrap()
            .update(&7)
            .unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = db.iter().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 1, "the value waits in the row cache: {rows:?}");
        b.flush_row_cache().unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = db.iter().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(
            rows[0],
            (
                vec![0x00, 0x69, 0, 0, 0, 0, 0x06, 0x05, b'a', b'l', b'i', b'c', b'e'],
                vec![7]
            )
        );
        let mut reg = vec![0xff, 0xff];
        reg.extend_from_slice(b"v");
        let mut meta = vec![0, 0, 0, 0, 5];
        meta.extend_from_slice(b"value");
        meta.push(2);
        meta.extend_from_slice(b"u8");
        meta.push(0); // no time to live
        assert_eq!(rows[1], (reg, meta));
    }
}
