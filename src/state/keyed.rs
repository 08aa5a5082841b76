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
}

/// The handle of a registered state within one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(pub u32);

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

            /// What a backend records of the state.
            pub fn meta(&self) -> StateMeta {
                StateMeta {
                    name: self.name.clone(),
                    kind: $kind,
                    value_type: $ty,
                }
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
        ValueStateDescriptor {
            name: name.into(),
            _types: PhantomData,
        }
    }
}

impl<T> ListStateDescriptor<T> {
    /// A list state named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ListStateDescriptor {
            name: name.into(),
            _types: PhantomData,
        }
    }
}

impl<K, V> MapStateDescriptor<K, V> {
    /// A map state named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MapStateDescriptor {
            name: name.into(),
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
        ReducingStateDescriptor {
            name: name.into(),
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
        AggregatingStateDescriptor {
            name: name.into(),
            aggregate: Arc::new(aggregate),
            _types: PhantomData,
        }
    }
}

/// Typed access to a keyed state backend: set the current key, then read and write the
/// states of that key.
pub struct KeyedState<'a> {
    backend: &'a mut dyn KeyedStateBackend,
}

impl std::fmt::Debug for KeyedState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedState")
            .field("key_groups", &self.backend.key_groups())
            .finish()
    }
}

impl<'a> KeyedState<'a> {
    /// Typed access to `backend`.
    pub fn new(backend: &'a mut dyn KeyedStateBackend) -> Self {
        KeyedState { backend }
    }

    /// Sets the current key (serialized with postcard; its key group follows from those
    /// bytes).
    pub fn set_current_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<()> {
        let bytes = encode("the key", key)?;
        self.backend.set_current_key(&bytes)
    }

    /// The value state `d` of the current key.
    pub fn value<T: Serialize + DeserializeOwned>(
        &mut self,
        d: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<'_, T>> {
        let id = self.backend.register(&d.meta())?;
        Ok(ValueState {
            backend: &mut *self.backend,
            id,
            name: d.name.clone(),
            _t: PhantomData,
        })
    }

    /// The list state `d` of the current key.
    pub fn list<T: Serialize + DeserializeOwned>(
        &mut self,
        d: &ListStateDescriptor<T>,
    ) -> Result<ListState<'_, T>> {
        let id = self.backend.register(&d.meta())?;
        Ok(ListState {
            backend: &mut *self.backend,
            id,
            name: d.name.clone(),
            _t: PhantomData,
        })
    }

    /// The map state `d` of the current key.
    pub fn map<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &mut self,
        d: &MapStateDescriptor<K, V>,
    ) -> Result<MapState<'_, K, V>> {
        let id = self.backend.register(&d.meta())?;
        Ok(MapState {
            backend: &mut *self.backend,
            id,
            name: d.name.clone(),
            _t: PhantomData,
        })
    }

    /// The reducing state `d` of the current key.
    pub fn reducing<T: Serialize + DeserializeOwned>(
        &mut self,
        d: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<'_, T>> {
        let id = self.backend.register(&d.meta())?;
        Ok(ReducingState {
            backend: &mut *self.backend,
            id,
            name: d.name.clone(),
            reduce: d.reduce.clone(),
        })
    }

    /// The aggregating state `d` of the current key.
    pub fn aggregating<In, Acc: Serialize + DeserializeOwned, Out>(
        &mut self,
        d: &AggregatingStateDescriptor<In, Acc, Out>,
    ) -> Result<AggregatingState<'_, In, Acc, Out>> {
        let id = self.backend.register(&d.meta())?;
        Ok(AggregatingState {
            backend: &mut *self.backend,
            id,
            name: d.name.clone(),
            aggregate: d.aggregate.clone(),
        })
    }
}

/// One value per key (Flink's `ValueState`).
pub struct ValueState<'a, T> {
    backend: &'a mut dyn KeyedStateBackend,
    id: StateId,
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ValueState<'_, T> {
    /// The current key's value (Flink's `value()`).
    pub fn get(&self) -> Result<Option<T>> {
        match self.backend.get(self.id, &[])? {
            Some(b) => decode(&self.name, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the current key's value.
    pub fn update(&mut self, v: &T) -> Result<()> {
        let b = encode(&self.name, v)?;
        self.backend.put(self.id, &[], &b)
    }

    /// Removes the current key's value.
    pub fn clear(&mut self) -> Result<()> {
        self.backend.clear(self.id)
    }
}

/// A list of elements per key (Flink's `ListState`).
pub struct ListState<'a, T> {
    backend: &'a mut dyn KeyedStateBackend,
    id: StateId,
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ListState<'_, T> {
    /// The current key's elements, in the order they were added (empty when none).
    pub fn get(&self) -> Result<Vec<T>> {
        let Some(b) = self.backend.get(self.id, &[])? else {
            return Ok(Vec::new());
        };
        unframe(&self.name, &b)?
            .into_iter()
            .map(|e| decode(&self.name, e))
            .collect()
    }

    /// Appends one element.
    pub fn add(&mut self, v: &T) -> Result<()> {
        let mut b = Vec::new();
        frame(&mut b, &encode(&self.name, v)?);
        self.backend.append(self.id, &b)
    }

    /// Appends every element of `vs`.
    pub fn add_all<'v>(&mut self, vs: impl IntoIterator<Item = &'v T>) -> Result<()>
    where
        T: 'v,
    {
        let mut b = Vec::new();
        for v in vs {
            frame(&mut b, &encode(&self.name, v)?);
        }
        if b.is_empty() {
            return Ok(());
        }
        self.backend.append(self.id, &b)
    }

    /// Replaces the elements with `vs` (an empty `vs` clears the list).
    pub fn update<'v>(&mut self, vs: impl IntoIterator<Item = &'v T>) -> Result<()>
    where
        T: 'v,
    {
        let mut b = Vec::new();
        for v in vs {
            frame(&mut b, &encode(&self.name, v)?);
        }
        if b.is_empty() {
            return self.backend.clear(self.id);
        }
        self.backend.put(self.id, &[], &b)
    }

    /// Removes every element.
    pub fn clear(&mut self) -> Result<()> {
        self.backend.clear(self.id)
    }
}

/// A map per key (Flink's `MapState`).
pub struct MapState<'a, K, V> {
    backend: &'a mut dyn KeyedStateBackend,
    id: StateId,
    name: String,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> MapState<'_, K, V> {
    /// The value under `k`.
    pub fn get(&self, k: &K) -> Result<Option<V>> {
        let kb = encode(&self.name, k)?;
        match self.backend.get(self.id, &kb)? {
            Some(b) => decode(&self.name, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the value under `k`.
    pub fn put(&mut self, k: &K, v: &V) -> Result<()> {
        let kb = encode(&self.name, k)?;
        let vb = encode(&self.name, v)?;
        self.backend.put(self.id, &kb, &vb)
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
        let kb = encode(&self.name, k)?;
        self.backend.remove(self.id, &kb)
    }

    /// True when there is an entry under `k`.
    pub fn contains(&self, k: &K) -> Result<bool> {
        let kb = encode(&self.name, k)?;
        Ok(self.backend.get(self.id, &kb)?.is_some())
    }

    /// Every entry, ordered by the serialized bytes of its key.
    pub fn iter(&self) -> Result<Vec<(K, V)>> {
        self.backend
            .entries(self.id)?
            .into_iter()
            .map(|(k, v)| Ok((decode(&self.name, &k)?, decode(&self.name, &v)?)))
            .collect()
    }

    /// Every key.
    pub fn keys(&self) -> Result<Vec<K>> {
        self.backend
            .entries(self.id)?
            .into_iter()
            .map(|(k, _)| decode(&self.name, &k))
            .collect()
    }

    /// Every value.
    pub fn values(&self) -> Result<Vec<V>> {
        self.backend
            .entries(self.id)?
            .into_iter()
            .map(|(_, v)| decode(&self.name, &v))
            .collect()
    }

    /// True when the map has no entry.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.backend.entries(self.id)?.is_empty())
    }

    /// Removes every entry.
    pub fn clear(&mut self) -> Result<()> {
        self.backend.clear(self.id)
    }
}

/// One value per key folded with a reduce function (Flink's `ReducingState`).
pub struct ReducingState<'a, T> {
    backend: &'a mut dyn KeyedStateBackend,
    id: StateId,
    name: String,
    reduce: ReduceFn<T>,
}

impl<T: Serialize + DeserializeOwned> ReducingState<'_, T> {
    /// The folded value.
    pub fn get(&self) -> Result<Option<T>> {
        match self.backend.get(self.id, &[])? {
            Some(b) => decode(&self.name, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Folds `v` into the value (or starts it with `v`).
    pub fn add(&mut self, v: &T) -> Result<()> {
        let next = match self.get()? {
            Some(cur) => (self.reduce)(&cur, v),
            None => return self.backend.put(self.id, &[], &encode(&self.name, v)?),
        };
        let b = encode(&self.name, &next)?;
        self.backend.put(self.id, &[], &b)
    }

    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.backend.clear(self.id)
    }
}

/// One accumulator per key (Flink's `AggregatingState`).
pub struct AggregatingState<'a, In, Acc, Out> {
    backend: &'a mut dyn KeyedStateBackend,
    id: StateId,
    name: String,
    aggregate: Arc<dyn AggregateFunction<In, Acc, Out>>,
}

impl<In, Acc: Serialize + DeserializeOwned, Out> AggregatingState<'_, In, Acc, Out> {
    /// The result of the accumulator, `None` when nothing was added.
    pub fn get(&self) -> Result<Option<Out>> {
        match self.backend.get(self.id, &[])? {
            Some(b) => {
                let acc: Acc = decode(&self.name, &b)?;
                Ok(Some(self.aggregate.result(&acc)))
            }
            None => Ok(None),
        }
    }

    /// Folds `input` into the accumulator.
    pub fn add(&mut self, input: &In) -> Result<()> {
        let acc = match self.backend.get(self.id, &[])? {
            Some(b) => decode(&self.name, &b)?,
            None => self.aggregate.create(),
        };
        let acc = self.aggregate.add(input, acc);
        let b = encode(&self.name, &acc)?;
        self.backend.put(self.id, &[], &b)
    }

    /// Removes the accumulator.
    pub fn clear(&mut self) -> Result<()> {
        self.backend.clear(self.id)
    }
}

macro_rules! debug_by_name {
    ($($ty:ident < $($t:ident),* >),*) => {$(
        impl<$($t),*> std::fmt::Debug for $ty<'_, $($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty)).field("name", &self.name).finish()
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
