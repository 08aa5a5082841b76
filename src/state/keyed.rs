//! Keyed state with Flink's semantics: value, list, map, reducing and aggregating state,
//! each made from a named descriptor, read and written for the *current key* that the
//! caller (the stream layer's keyed context) sets.
//!
//! A [`KeyedStateBackend`] stores bytes: the serialized key, the state's id, an optional
//! sub-key (a map state's user key) and the serialized value. The typed states of this
//! module put user types through serde with [`postcard`], a compact format with a stable,
//! documented wire format; a user type only derives `Serialize` and `Deserialize`.
//!
//! ```
//! use tidemark::state::heap::HeapKeyedBackend;
//! use tidemark::state::key_groups::MaxParallelism;
//! use tidemark::state::keyed::{KeyedState, MapStateDescriptor, ValueStateDescriptor};
//!
//! # fn main() -> tidemark::Result<()> {
//! let max = MaxParallelism::default();
//! let mut backend = HeapKeyedBackend::new(max, max.full_range());
//! let mut state = KeyedState::new(&mut backend);
//! let clicks = ValueStateDescriptor::<u64>::new("clicks");
//! let pages = MapStateDescriptor::<String, u32>::new("pages");
//!
//! state.set_current_key(&"alice")?;
//! let n = state.value(&clicks)?.get()?.unwrap_or(0);
//! state.value(&clicks)?.update(&(n + 1))?;
//! state.map(&pages)?.put(&"/home".to_string(), &3)?;
//!
//! state.set_current_key(&"bob")?;
//! assert_eq!(state.value(&clicks)?.get()?, None);
//! state.set_current_key(&"alice")?;
//! assert_eq!(state.value(&clicks)?.get()?, Some(1));
//! assert_eq!(state.map(&pages)?.get(&"/home".to_string())?, Some(3));
//! # Ok(()) }
//! ```

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::key_groups::MaxParallelism;
use crate::checkpoint::KeyGroupRange;
use crate::error::{Error, Result};

/// What a keyed state is: the kind decides how its bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// One value per key.
    Value,
    /// A list of elements per key.
    List,
    /// A map of user keys to values per key.
    Map,
    /// One value per key, folded with a reduce function.
    Reducing,
    /// One accumulator per key, folded with an aggregate function.
    Aggregating,
}

impl StateKind {
    /// The kind's name, as stored in snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
        }
    }

    /// The kind named `s` in a snapshot.
    pub fn parse(s: &str) -> Option<StateKind> {
        Some(match s {
            "value" => StateKind::Value,
            "list" => StateKind::List,
            "map" => StateKind::Map,
            "reducing" => StateKind::Reducing,
            "aggregating" => StateKind::Aggregating,
            _ => return None,
        })
    }
}

/// What a backend knows of a state: its name (its identity across restores), its kind
/// and the name of the type of its values, which a restore checks against what the
/// operator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateMeta {
    /// The state's name, unique within an operator.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// The Rust type of its values (a map state's: `key type -> value type`).
    pub value_type: String,
    /// The time to live of its values in milliseconds, when TTL is enabled: each value
    /// (list element, map entry) then starts with its last-access timestamp (u64 LE,
    /// milliseconds since the Unix epoch).
    pub ttl_ms: Option<u64>,
}

impl StateMeta {
    /// Whether a state registered as `self` can be read as `other`: same kind, same value
    /// type, TTL on for both or off for both (its duration may change, as in Flink).
    pub fn compatible(&self, other: &StateMeta) -> bool {
        self.kind == other.kind
            && self.value_type == other.value_type
            && self.ttl_ms.is_some() == other.ttl_ms.is_some()
    }

    /// Why `other` cannot read a state registered as `self`, for errors.
    pub fn mismatch(&self, other: &StateMeta) -> String {
        let ttl = |m: &StateMeta| if m.ttl_ms.is_some() { " with TTL" } else { "" };
        format!(
            "state {:?} holds a {} state of {}{}, asked for as a {} state of {}{}",
            self.name,
            self.kind.as_str(),
            self.value_type,
            ttl(self),
            other.kind.as_str(),
            other.value_type,
            ttl(other)
        )
    }
}

/// When a state value's time to live is renewed (Flink's `StateTtlConfig.UpdateType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlUpdateType {
    /// On creation and on every write (Flink's default).
    #[default]
    OnCreateAndWrite,
    /// Also on every read.
    OnReadAndWrite,
}

/// Whether an expired value not yet cleaned up is returned (Flink's
/// `StateTtlConfig.StateVisibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlVisibility {
    /// Never (Flink's default).
    #[default]
    NeverReturnExpired,
    /// Until it is cleaned up.
    ReturnExpiredIfNotCleanedUp,
}

/// Time to live of a state's values (Flink's `StateTtlConfig`). Expired values are never
/// returned (by default), are removed when read, are left out of full snapshots, and
/// are removed from the heap backends as they are met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtlConfig {
    /// How long a value lives after its last renewal.
    pub ttl: std::time::Duration,
    /// What renews it.
    pub update_type: TtlUpdateType,
    /// Whether an expired value is returned before it is cleaned up.
    pub visibility: TtlVisibility,
}

impl StateTtlConfig {
    /// A time to live of `ttl`, renewed on create and write, expired values never
    /// returned: Flink's defaults.
    pub fn new(ttl: std::time::Duration) -> Self {
        StateTtlConfig {
            ttl,
            update_type: TtlUpdateType::default(),
            visibility: TtlVisibility::default(),
        }
    }

    /// Renew on `update_type`.
    pub fn update_type(mut self, update_type: TtlUpdateType) -> Self {
        self.update_type = update_type;
        self
    }

    /// Return expired values or not.
    pub fn visibility(mut self, visibility: TtlVisibility) -> Self {
        self.visibility = visibility;
        self
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// The time that TTL is measured against (Flink's `TtlTimeProvider`); tests inject one.
pub trait TtlClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl TtlClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// True when a TTL-stamped value (`bytes`, at least 8 bytes) stamped `ts` has expired at
/// `now` under `ttl_ms`.
pub fn expired(ts: u64, ttl_ms: u64, now: u64) -> bool {
    ts.saturating_add(ttl_ms) <= now
}

/// What of a TTL-stamped list value (framed elements, each stamped) is alive at `now`:
/// `None` when no element is; borrowed when all are; bytes that do not parse are kept.
pub fn live_list(bytes: &[u8], ttl_ms: u64, now: u64) -> Option<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    let fresh = |b: &[u8]| split_stamp(b).is_none_or(|(ts, _)| !expired(ts, ttl_ms, now));
    let mut kept = Vec::new();
    let mut rest = bytes;
    let mut all = true;
    while !rest.is_empty() {
        let Some((len, n)) = crate::codec::get_varint(rest) else {
            return Some(Cow::Borrowed(bytes));
        };
        let Some(e) = usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(n..n.checked_add(len)?))
        else {
            return Some(Cow::Borrowed(bytes));
        };
        if fresh(e) {
            crate::codec::put_varint(&mut kept, len);
            kept.extend_from_slice(e);
        } else {
            all = false;
        }
        rest = &rest[n + e.len()..];
    }
    match (all, kept.is_empty()) {
        (true, _) => Some(Cow::Borrowed(bytes)),
        (false, true) => None,
        (false, false) => Some(Cow::Owned(kept)),
    }
}

/// The timestamp of a TTL-stamped value, and the value after it.
pub fn split_stamp(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (ts, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*ts), rest))
}

/// The handle of a registered state within one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(pub u32);

/// What [`KeyedStateBackend::read_with`] calls with a value's bytes (`None`: no value).
pub type ValueReader<'a> = dyn FnMut(Option<&[u8]>) -> Result<()> + 'a;

/// The byte-level store of one operator subtask's keyed state, for the key groups it
/// owns. Every read and write is for the current key.
pub trait KeyedStateBackend: Send {
    /// The number of key groups of the operator's state.
    fn max_parallelism(&self) -> MaxParallelism;

    /// The key groups this backend owns.
    fn key_groups(&self) -> KeyGroupRange;

    /// Sets the current key from its serialized bytes: an error if its key group is not
    /// one this backend owns.
    fn set_current_key(&mut self, key: &[u8]) -> Result<()>;

    /// The current key's serialized bytes, if one is set.
    fn current_key(&self) -> Option<&[u8]>;

    /// Registers a state (or finds it, by name): a state registered or restored under
    /// the same name with another kind or value type is an error naming it.
    fn register(&mut self, meta: &StateMeta) -> Result<StateId>;

    /// The value (a value, list or folding state's whole value, or a map state's entry
    /// under `user_key`) of the current key.
    fn get(&self, state: StateId, user_key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Calls `f` with what [`KeyedStateBackend::get`] returns, without copying the bytes
    /// where the backend keeps them in memory.
    fn read_with(&self, state: StateId, user_key: &[u8], f: &mut ValueReader<'_>) -> Result<()> {
        f(self.get(state, user_key)?.as_deref())
    }

    /// Writes the value of the current key.
    fn put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()>;

    /// Appends `bytes` to the value of the current key (a list's elements, framed by the
    /// caller); creates it when absent.
    fn append(&mut self, state: StateId, bytes: &[u8]) -> Result<()> {
        let mut v = self.get(state, &[])?.unwrap_or_default();
        v.extend_from_slice(bytes);
        self.put(state, &[], &v)
    }

    /// Removes the value of the current key (a map state's entry under `user_key`).
    fn remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()>;

    /// Every entry of a map state for the current key, ordered by user key bytes.
    fn entries(&self, state: StateId) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Removes everything the state holds for the current key.
    fn clear(&mut self, state: StateId) -> Result<()>;
}

fn encode<T: Serialize + ?Sized>(what: &str, v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v)
        .map_err(|e| Error::InvalidArgument(format!("cannot serialize {what}: {e}")))
}

thread_local! {
    /// The serialization buffer of [`with_encoded`], one per thread (a subtask's thread
    /// serializes a key and a value per record).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with `v` serialized, in a buffer reused across calls (no allocation per
/// record); a nested call gets a buffer of its own.
fn with_encoded<T: Serialize + ?Sized, R>(
    what: &str,
    v: &T,
    f: impl FnOnce(&[u8]) -> Result<R>,
) -> Result<R> {
    let mut buf = SCRATCH
        .with(|s| s.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
        .unwrap_or_default();
    buf.clear();
    let buf = postcard::to_extend(v, buf)
        .map_err(|e| Error::InvalidArgument(format!("cannot serialize {what}: {e}")))?;
    let out = f(&buf);
    // Kept for the next call unless it grew large (a one-off big value).
    if buf.capacity() <= 64 << 10 {
        SCRATCH.with(|s| {
            if let Ok(mut b) = s.try_borrow_mut() {
                *b = buf;
            }
        });
    }
    out
}

fn decode<T: DeserializeOwned>(state: &str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| {
        Error::InvalidArgument(format!(
            "state {state:?}: stored bytes do not decode as {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Appends one list element, framed: varint length, then the bytes.
fn frame(out: &mut Vec<u8>, element: &[u8]) {
    crate::codec::put_varint(out, element.len() as u64);
    out.extend_from_slice(element);
}

/// Splits a list value into its elements.
fn unframe<'a>(state: &str, mut bytes: &'a [u8]) -> Result<Vec<&'a [u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let bad = || Error::InvalidArgument(format!("state {state:?}: damaged list value"));
        let (len, n) = crate::codec::get_varint(bytes).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        let rest = &bytes[n..];
        if rest.len() < len {
            return Err(bad());
        }
        out.push(&rest[..len]);
        bytes = &rest[len..];
    }
    Ok(out)
}

macro_rules! descriptor {
    ($(#[$doc:meta])* $name:ident < $($t:ident),* > , $kind:expr, $ty:expr $(, $field:ident : $fty:ty)*) => {
        $(#[$doc])*
        pub struct $name<$($t),*> {
            name: String,
            ttl: Option<StateTtlConfig>,
            meta: StateMeta,
            $($field: $fty,)*
            _types: PhantomData<fn() -> ($($t,)*)>,
        }

        impl<$($t),*> std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("name", &self.name).finish()
            }
        }

        impl<$($t),*> $name<$($t),*> {
            /// The state's name.
            pub fn name(&self) -> &str {
                &self.name
            }

            /// What a backend records of the state (built once, with the descriptor).
            pub fn meta(&self) -> &StateMeta {
                &self.meta
            }

            fn base_meta(name: &str) -> StateMeta {
                StateMeta {
                    name: name.to_string(),
                    kind: $kind,
                    value_type: $ty,
                    ttl_ms: None,
                }
            }

            /// Gives the state's values a time to live.
            pub fn enable_ttl(mut self, ttl: StateTtlConfig) -> Self {
                self.ttl = Some(ttl);
                self.meta.ttl_ms = Some(ttl.ttl_ms());
                self
            }
        }
    };
}

descriptor!(
    /// Describes a [`ValueState`] of `T`.
    ValueStateDescriptor<T>, StateKind::Value, std::any::type_name::<T>().to_string()
);
descriptor!(
    /// Describes a [`ListState`] of elements `T`.
    ListStateDescriptor<T>, StateKind::List, std::any::type_name::<T>().to_string()
);
descriptor!(
    /// Describes a [`MapState`] from `K` to `V`.
    MapStateDescriptor<K, V>, StateKind::Map,
    format!("{} -> {}", std::any::type_name::<K>(), std::any::type_name::<V>())
);
descriptor!(
    /// Describes a [`ReducingState`] of `T` with its reduce function.
    ReducingStateDescriptor<T>, StateKind::Reducing, std::any::type_name::<T>().to_string(),
    reduce: ReduceFn<T>
);
descriptor!(
    /// Describes an [`AggregatingState`]: inputs `In` folded into an accumulator `Acc`
    /// (from `create`, by `add`), read as `Out` (by `result`).
    AggregatingStateDescriptor<In, Acc, Out>, StateKind::Aggregating,
    std::any::type_name::<Acc>().to_string(),
    aggregate: Arc<dyn AggregateFunction<In, Acc, Out>>
);

impl<T> ValueStateDescriptor<T> {
    /// A value state named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name: String = name.into();
        ValueStateDescriptor {
            meta: Self::base_meta(&name),
            name,
            ttl: None,
            _types: PhantomData,
        }
    }
}

impl<T> ListStateDescriptor<T> {
    /// A list state named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name: String = name.into();
        ListStateDescriptor {
            meta: Self::base_meta(&name),
            name,
            ttl: None,
            _types: PhantomData,
        }
    }
}

impl<K, V> MapStateDescriptor<K, V> {
    /// A map state named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name: String = name.into();
        MapStateDescriptor {
            meta: Self::base_meta(&name),
            name,
            ttl: None,
            _types: PhantomData,
        }
    }
}

impl<T> ReducingStateDescriptor<T> {
    /// A reducing state named `name` folding its values with `reduce`.
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(&T, &T) -> T + Send + Sync + 'static,
    ) -> Self {
        let name: String = name.into();
        ReducingStateDescriptor {
            meta: Self::base_meta(&name),
            name,
            ttl: None,
            reduce: Arc::new(reduce),
            _types: PhantomData,
        }
    }
}

/// The reduce function of a [`ReducingStateDescriptor`].
pub type ReduceFn<T> = Arc<dyn Fn(&T, &T) -> T + Send + Sync>;

/// Flink's `AggregateFunction`: how an [`AggregatingState`] folds its inputs.
pub trait AggregateFunction<In, Acc, Out>: Send + Sync {
    /// A new, empty accumulator.
    fn create(&self) -> Acc;
    /// Folds `input` into `acc`.
    fn add(&self, input: &In, acc: Acc) -> Acc;
    /// What the state reads as.
    fn result(&self, acc: &Acc) -> Out;
}

impl<In, Acc, Out> AggregatingStateDescriptor<In, Acc, Out> {
    /// An aggregating state named `name` folding with `aggregate`.
    pub fn new(
        name: impl Into<String>,
        aggregate: impl AggregateFunction<In, Acc, Out> + 'static,
    ) -> Self {
        let name: String = name.into();
        AggregatingStateDescriptor {
            meta: Self::base_meta(&name),
            name,
            ttl: None,
            aggregate: Arc::new(aggregate),
            _types: PhantomData,
        }
    }
}

/// Typed access to a keyed state backend: set the current key, then read and write the
/// states of that key.
pub struct KeyedState<'a> {
    backend: &'a mut dyn KeyedStateBackend,
    clock: &'a dyn TtlClock,
}

impl std::fmt::Debug for KeyedState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedState")
            .field("key_groups", &self.backend.key_groups())
            .finish()
    }
}

/// One registered state of the current key, with its time to live.
struct Cell<'a> {
    backend: &'a mut dyn KeyedStateBackend,
    id: StateId,
    name: &'a str,
    ttl: Option<StateTtlConfig>,
    now: u64,
}

impl Cell<'_> {
    /// Stamps `payload` with the current time when the state has a TTL.
    fn stamp(&self, payload: &[u8]) -> Vec<u8> {
        match self.ttl {
            None => payload.to_vec(),
            Some(_) => {
                let mut v = Vec::with_capacity(8 + payload.len());
                v.extend_from_slice(&self.now.to_le_bytes());
                v.extend_from_slice(payload);
                v
            }
        }
    }

    /// What a stored value says: `None` when it has expired (and is not to be returned).
    /// `Some((payload, renew))`: `renew` when a read renews it.
    fn unstamp<'b>(&self, bytes: &'b [u8]) -> Result<Option<(&'b [u8], bool)>> {
        let Some(ttl) = self.ttl else {
            return Ok(Some((bytes, false)));
        };
        let (ts, payload) = split_stamp(bytes).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "state {:?}: a value without its TTL stamp",
                self.name
            ))
        })?;
        if expired(ts, ttl.ttl_ms(), self.now) {
            return Ok(match ttl.visibility {
                TtlVisibility::NeverReturnExpired => None,
                TtlVisibility::ReturnExpiredIfNotCleanedUp => Some((payload, false)),
            });
        }
        Ok(Some((
            payload,
            ttl.update_type == TtlUpdateType::OnReadAndWrite,
        )))
    }

    /// Reads the value under `user_key`: an expired one is removed (and, unless visible
    /// until cleaned up, not returned); a read that renews rewrites its stamp.
    fn read(&mut self, user_key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(raw) = self.backend.get(self.id, user_key)? else {
            return Ok(None);
        };
        if self.ttl.is_none() {
            // No stamp: the stored bytes are the payload.
            return Ok(Some(raw));
        }
        let (out, renew, gone) = match self.unstamp(&raw)? {
            None => (None, false, true),
            Some((p, renew)) => {
                let gone = self.ttl.is_some_and(|t| {
                    split_stamp(&raw).is_some_and(|(ts, _)| expired(ts, t.ttl_ms(), self.now))
                });
                (Some(p.to_vec()), renew, gone)
            }
        };
        if gone {
            self.backend.remove(self.id, user_key)?;
        } else if renew {
            if let Some(p) = &out {
                let b = self.stamp(p);
                self.backend.put(self.id, user_key, &b)?;
            }
        }
        Ok(out)
    }

    fn write(&mut self, user_key: &[u8], payload: &[u8]) -> Result<()> {
        if self.ttl.is_none() {
            return self.backend.put(self.id, user_key, payload);
        }
        let b = self.stamp(payload);
        self.backend.put(self.id, user_key, &b)
    }

    /// A list's live elements (expired ones dropped, and the list rewritten without them).
    fn read_list(&mut self) -> Result<Vec<Vec<u8>>> {
        let Some(raw) = self.backend.get(self.id, &[])? else {
            return Ok(Vec::new());
        };
        let elements = unframe(self.name, &raw)?;
        let Some(ttl) = self.ttl else {
            return Ok(elements.into_iter().map(<[u8]>::to_vec).collect());
        };
        // What is returned, and what stays stored: a survivor keeps its own stamp (only
        // `OnReadAndWrite` renews it); an expired element goes, after being returned once
        // when visible until cleaned up.
        let mut out = Vec::with_capacity(elements.len());
        let mut keep: Vec<Vec<u8>> = Vec::with_capacity(elements.len());
        let mut changed = false;
        for e in &elements {
            let (ts, payload) = split_stamp(e).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "state {:?}: a list element without its TTL stamp",
                    self.name
                ))
            })?;
            if expired(ts, ttl.ttl_ms(), self.now) {
                if ttl.visibility == TtlVisibility::ReturnExpiredIfNotCleanedUp {
                    out.push(payload.to_vec());
                }
                changed = true;
            } else {
                out.push(payload.to_vec());
                if ttl.update_type == TtlUpdateType::OnReadAndWrite {
                    keep.push(self.stamp(payload));
                    changed = true;
                } else {
                    keep.push(e.to_vec());
                }
            }
        }
        if changed {
            if keep.is_empty() {
                self.backend.clear(self.id)?;
            } else {
                let mut b = Vec::new();
                for k in &keep {
                    frame(&mut b, k);
                }
                self.backend.put(self.id, &[], &b)?;
            }
        }
        Ok(out)
    }

    fn write_list(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        if payloads.is_empty() {
            return self.backend.clear(self.id);
        }
        let mut b = Vec::new();
        for p in payloads {
            frame(&mut b, &self.stamp(p));
        }
        self.backend.put(self.id, &[], &b)
    }

    fn append_list(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        let mut b = Vec::new();
        for p in payloads {
            frame(&mut b, &self.stamp(p));
        }
        if b.is_empty() {
            return Ok(());
        }
        self.backend.append(self.id, &b)
    }

    /// A map's live entries (expired ones removed).
    fn read_entries(&mut self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let raw = self.backend.entries(self.id)?;
        if self.ttl.is_none() {
            return Ok(raw);
        }
        let mut out = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            if let Some(p) = self.read(&k)? {
                out.push((k, p));
            }
            let _ = v;
        }
        Ok(out)
    }
}

impl<'a> KeyedState<'a> {
    /// Typed access to `backend`, with TTL measured by the system clock.
    pub fn new(backend: &'a mut dyn KeyedStateBackend) -> Self {
        KeyedState {
            backend,
            clock: &SystemClock,
        }
    }

    /// Typed access to `backend`, with TTL measured by `clock`.
    pub fn with_clock(backend: &'a mut dyn KeyedStateBackend, clock: &'a dyn TtlClock) -> Self {
        KeyedState { backend, clock }
    }

    /// Sets the current key (serialized with postcard; its key group follows from those
    /// bytes).
    pub fn set_current_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<()> {
        with_encoded("the key", key, |bytes| self.backend.set_current_key(bytes))
    }

    /// Sets the current key from its serialized bytes (as [`KeyedState::set_current_key`]
    /// serializes it): a keyed stream's records arrive with their key serialized once, by
    /// the sender that routed them.
    pub(crate) fn set_current_key_bytes(&mut self, key: &[u8]) -> Result<()> {
        self.backend.set_current_key(key)
    }

    fn cell<'s>(
        &'s mut self,
        meta: &'s StateMeta,
        ttl: Option<StateTtlConfig>,
    ) -> Result<Cell<'s>> {
        let id = self.backend.register(meta)?;
        Ok(Cell {
            backend: &mut *self.backend,
            id,
            name: &meta.name,
            ttl,
            // Only a state with a time to live reads the clock.
            now: if ttl.is_some() {
                self.clock.now_ms()
            } else {
                0
            },
        })
    }

    /// The value state `d` of the current key.
    pub fn value<'s, T: Serialize + DeserializeOwned>(
        &'s mut self,
        d: &'s ValueStateDescriptor<T>,
    ) -> Result<ValueState<'s, T>> {
        Ok(ValueState {
            cell: self.cell(d.meta(), d.ttl)?,
            _t: PhantomData,
        })
    }

    /// The list state `d` of the current key.
    pub fn list<'s, T: Serialize + DeserializeOwned>(
        &'s mut self,
        d: &'s ListStateDescriptor<T>,
    ) -> Result<ListState<'s, T>> {
        Ok(ListState {
            cell: self.cell(d.meta(), d.ttl)?,
            _t: PhantomData,
        })
    }

    /// The map state `d` of the current key.
    pub fn map<'s, K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &'s mut self,
        d: &'s MapStateDescriptor<K, V>,
    ) -> Result<MapState<'s, K, V>> {
        Ok(MapState {
            cell: self.cell(d.meta(), d.ttl)?,
            _t: PhantomData,
        })
    }

    /// The reducing state `d` of the current key.
    pub fn reducing<'s, T: Serialize + DeserializeOwned>(
        &'s mut self,
        d: &'s ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<'s, T>> {
        Ok(ReducingState {
            cell: self.cell(d.meta(), d.ttl)?,
            reduce: d.reduce.clone(),
        })
    }

    /// The aggregating state `d` of the current key.
    pub fn aggregating<'s, In, Acc: Serialize + DeserializeOwned, Out>(
        &'s mut self,
        d: &'s AggregatingStateDescriptor<In, Acc, Out>,
    ) -> Result<AggregatingState<'s, In, Acc, Out>> {
        Ok(AggregatingState {
            cell: self.cell(d.meta(), d.ttl)?,
            aggregate: d.aggregate.clone(),
        })
    }
}

/// One value per key (Flink's `ValueState`).
pub struct ValueState<'a, T> {
    cell: Cell<'a>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ValueState<'_, T> {
    /// The current key's value (Flink's `value()`).
    pub fn get(&mut self) -> Result<Option<T>> {
        if self.cell.ttl.is_none() {
            // No stamp to check: decode the stored bytes where they are.
            let (name, mut out) = (self.cell.name, None);
            self.cell.backend.read_with(self.cell.id, &[], &mut |b| {
                if let Some(b) = b {
                    out = Some(decode(name, b)?);
                }
                Ok(())
            })?;
            return Ok(out);
        }
        match self.cell.read(&[])? {
            Some(b) => decode(self.cell.name, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the current key's value.
    pub fn update(&mut self, v: &T) -> Result<()> {
        let cell = &mut self.cell;
        with_encoded(cell.name, v, |b| cell.write(&[], b))
    }

    /// Removes the current key's value.
    pub fn clear(&mut self) -> Result<()> {
        self.cell.backend.clear(self.cell.id)
    }
}

/// A list of elements per key (Flink's `ListState`).
pub struct ListState<'a, T> {
    cell: Cell<'a>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ListState<'_, T> {
    /// The current key's elements, in the order they were added (empty when none).
    pub fn get(&mut self) -> Result<Vec<T>> {
        self.cell
            .read_list()?
            .iter()
            .map(|e| decode(self.cell.name, e))
            .collect()
    }

    /// Appends one element.
    pub fn add(&mut self, v: &T) -> Result<()> {
        let b = encode(self.cell.name, v)?;
        self.cell.append_list(&[b])
    }

    /// Appends every element of `vs`.
    pub fn add_all<'v>(&mut self, vs: impl IntoIterator<Item = &'v T>) -> Result<()>
    where
        T: 'v,
    {
        let bs = vs
            .into_iter()
            .map(|v| encode(self.cell.name, v))
            .collect::<Result<Vec<_>>>()?;
        self.cell.append_list(&bs)
    }

    /// Replaces the elements with `vs` (an empty `vs` clears the list).
    pub fn update<'v>(&mut self, vs: impl IntoIterator<Item = &'v T>) -> Result<()>
    where
        T: 'v,
    {
        let bs = vs
            .into_iter()
            .map(|v| encode(self.cell.name, v))
            .collect::<Result<Vec<_>>>()?;
        self.cell.write_list(&bs)
    }

    /// Removes every element.
    pub fn clear(&mut self) -> Result<()> {
        self.cell.backend.clear(self.cell.id)
    }
}

/// A map per key (Flink's `MapState`).
pub struct MapState<'a, K, V> {
    cell: Cell<'a>,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> MapState<'_, K, V> {
    /// The value under `k`.
    pub fn get(&mut self, k: &K) -> Result<Option<V>> {
        let kb = encode(self.cell.name, k)?;
        match self.cell.read(&kb)? {
            Some(b) => decode(self.cell.name, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the value under `k`.
    pub fn put(&mut self, k: &K, v: &V) -> Result<()> {
        let kb = encode(self.cell.name, k)?;
        let vb = encode(self.cell.name, v)?;
        self.cell.write(&kb, &vb)
    }

    /// Sets every entry of `entries`.
    pub fn put_all<'e>(&mut self, entries: impl IntoIterator<Item = (&'e K, &'e V)>) -> Result<()>
    where
        K: 'e,
        V: 'e,
    {
        for (k, v) in entries {
            self.put(k, v)?;
        }
        Ok(())
    }

    /// Removes the entry under `k`.
    pub fn remove(&mut self, k: &K) -> Result<()> {
        let kb = encode(self.cell.name, k)?;
        self.cell.backend.remove(self.cell.id, &kb)
    }

    /// True when there is an entry under `k`.
    pub fn contains(&mut self, k: &K) -> Result<bool> {
        let kb = encode(self.cell.name, k)?;
        Ok(self.cell.read(&kb)?.is_some())
    }

    /// Every entry, ordered by the serialized bytes of its key.
    pub fn iter(&mut self) -> Result<Vec<(K, V)>> {
        let name = self.cell.name;
        self.cell
            .read_entries()?
            .into_iter()
            .map(|(k, v)| Ok((decode(name, &k)?, decode(name, &v)?)))
            .collect()
    }

    /// Every key.
    pub fn keys(&mut self) -> Result<Vec<K>> {
        let name = self.cell.name;
        self.cell
            .read_entries()?
            .into_iter()
            .map(|(k, _)| decode(name, &k))
            .collect()
    }

    /// Every value.
    pub fn values(&mut self) -> Result<Vec<V>> {
        let name = self.cell.name;
        self.cell
            .read_entries()?
            .into_iter()
            .map(|(_, v)| decode(name, &v))
            .collect()
    }

    /// True when the map has no entry.
    pub fn is_empty(&mut self) -> Result<bool> {
        Ok(self.cell.read_entries()?.is_empty())
    }

    /// Removes every entry.
    pub fn clear(&mut self) -> Result<()> {
        self.cell.backend.clear(self.cell.id)
    }
}

/// One value per key folded with a reduce function (Flink's `ReducingState`).
pub struct ReducingState<'a, T> {
    cell: Cell<'a>,
    reduce: ReduceFn<T>,
}

impl<T: Serialize + DeserializeOwned> ReducingState<'_, T> {
    /// The folded value.
    pub fn get(&mut self) -> Result<Option<T>> {
        match self.cell.read(&[])? {
            Some(b) => decode(self.cell.name, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Folds `v` into the value (or starts it with `v`).
    pub fn add(&mut self, v: &T) -> Result<()> {
        let next = match self.get()? {
            Some(cur) => encode(self.cell.name, &(self.reduce)(&cur, v))?,
            None => encode(self.cell.name, v)?,
        };
        self.cell.write(&[], &next)
    }

    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.cell.backend.clear(self.cell.id)
    }
}

/// One accumulator per key (Flink's `AggregatingState`).
pub struct AggregatingState<'a, In, Acc, Out> {
    cell: Cell<'a>,
    aggregate: Arc<dyn AggregateFunction<In, Acc, Out>>,
}

impl<In, Acc: Serialize + DeserializeOwned, Out> AggregatingState<'_, In, Acc, Out> {
    /// The result of the accumulator, `None` when nothing was added.
    pub fn get(&mut self) -> Result<Option<Out>> {
        match self.cell.read(&[])? {
            Some(b) => {
                let acc: Acc = decode(self.cell.name, &b)?;
                Ok(Some(self.aggregate.result(&acc)))
            }
            None => Ok(None),
        }
    }

    /// Folds `input` into the accumulator.
    pub fn add(&mut self, input: &In) -> Result<()> {
        let acc = match self.cell.read(&[])? {
            Some(b) => decode(self.cell.name, &b)?,
            None => self.aggregate.create(),
        };
        let acc = self.aggregate.add(input, acc);
        let b = encode(self.cell.name, &acc)?;
        self.cell.write(&[], &b)
    }

    /// Removes the accumulator.
    pub fn clear(&mut self) -> Result<()> {
        self.cell.backend.clear(self.cell.id)
    }
}

macro_rules! debug_by_name {
    ($($ty:ident < $($t:ident),* >),*) => {$(
        impl<$($t),*> std::fmt::Debug for $ty<'_, $($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty)).field("name", &self.cell.name).finish()
            }
        }
    )*};
}

debug_by_name!(
    ValueState<T>,
    ListState<T>,
    MapState<K, V>,
    ReducingState<T>,
    AggregatingState<In, Acc, Out>
);
