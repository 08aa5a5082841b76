//! The keyed-state model shared by the model tests: random operations on keys spread over
//! the subtasks (a value, a map and a list state per key), applied to a backend and to an
//! in-memory model, and the comparison of the two.

use std::collections::BTreeMap;

use proptest::prelude::*;

use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{
    KeyedState, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor,
};

/// One step of a model test.
#[derive(Debug, Clone)]
pub enum Op {
    Put(u16, u32),
    Clear(u16),
    MapPut(u16, u8, u32),
    MapRemove(u16, u8),
    Append(u16, u32),
    /// Snapshot (or checkpoint) every subtask; the model remembers the state.
    Snapshot,
    /// Restore the last snapshot into this many subtasks.
    Restore(u32),
}

/// Operations on keys `0..keys`, map keys `0..map_keys`.
pub fn op(keys: u16, map_keys: u16) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    let u = (0..map_keys).prop_map(|u| u as u8);
    prop_oneof![
        6 => (k.clone(), any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => k.clone().prop_map(Op::Clear),
        3 => (k.clone(), u.clone(), any::<u32>()).prop_map(|(k, u, v)| Op::MapPut(k, u, v)),
        1 => (k.clone(), u).prop_map(|(k, u)| Op::MapRemove(k, u)),
        2 => (k, any::<u32>()).prop_map(|(k, v)| Op::Append(k, v)),
        1 => Just(Op::Snapshot),
        1 => (1u32..5).prop_map(Op::Restore),
    ]
}

/// The max parallelism of the model tests.
pub const MAX: u32 = 64;

/// The subtask of `p` that owns key `k`.
pub fn owner(k: u16, p: u32) -> usize {
    let m = MaxParallelism::new(MAX).unwrap();
    let kb = postcard::to_stdvec(&k).unwrap();
    m.subtask_for_key_group(p, m.key_group_of(&kb)).unwrap() as usize
}

/// The three states of every key.
pub struct Descs {
    v: ValueStateDescriptor<u32>,
    m: MapStateDescriptor<u8, u32>,
    l: ListStateDescriptor<u32>,
}

impl Default for Descs {
    fn default() -> Self {
        Descs {
            v: ValueStateDescriptor::new("v"),
            m: MapStateDescriptor::new("m"),
            l: ListStateDescriptor::new("l"),
        }
    }
}

/// What the states should hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    value: BTreeMap<u16, u32>,
    map: BTreeMap<u16, BTreeMap<u8, u32>>,
    list: BTreeMap<u16, Vec<u32>>,
}

impl Op {
    /// The key a keyed operation touches (0 for the others).
    pub fn key(&self) -> u16 {
        match *self {
            Op::Put(k, ..)
            | Op::Clear(k)
            | Op::MapPut(k, ..)
            | Op::MapRemove(k, ..)
            | Op::Append(k, ..) => k,
            Op::Snapshot | Op::Restore(_) => 0,
        }
    }
}

impl Model {
    /// Applies a keyed operation to `backend` (the key's owner) and to the model; returns
    /// false for `Snapshot` and `Restore`, which the caller handles.
    pub fn apply(&mut self, op: &Op, backend: &mut dyn KeyedStateBackend, d: &Descs) -> bool {
        if matches!(op, Op::Snapshot | Op::Restore(_)) {
            return false;
        }
        let k = op.key();
        let mut s = KeyedState::new(backend);
        s.set_current_key(&k).unwrap();
        match *op {
            Op::Put(_, v) => {
                s.value(&d.v).unwrap().update(&v).unwrap();
                self.value.insert(k, v);
            }
            Op::Clear(_) => {
                s.value(&d.v).unwrap().clear().unwrap();
                s.map(&d.m).unwrap().clear().unwrap();
                s.list(&d.l).unwrap().clear().unwrap();
                self.value.remove(&k);
                self.map.remove(&k);
                self.list.remove(&k);
            }
            Op::MapPut(_, u, v) => {
                s.map(&d.m).unwrap().put(&u, &v).unwrap();
                self.map.entry(k).or_default().insert(u, v);
            }
            Op::MapRemove(_, u) => {
                s.map(&d.m).unwrap().remove(&u).unwrap();
                if let Some(e) = self.map.get_mut(&k) {
                    e.remove(&u);
                    if e.is_empty() {
                        self.map.remove(&k);
                    }
                }
            }
            Op::Append(_, v) => {
                s.list(&d.l).unwrap().add(&v).unwrap();
                self.list.entry(k).or_default().push(v);
            }
            Op::Snapshot | Op::Restore(_) => unreachable!("handled above"),
        }
        true
    }

    /// Checks every key `0..keys` of `subtasks` (parallelism `subtasks.len()`).
    pub fn check(&self, keys: u16, subtasks: &mut [&mut dyn KeyedStateBackend], d: &Descs) {
        let p = subtasks.len() as u32;
        for k in 0..keys {
            let mut s = KeyedState::new(&mut *subtasks[owner(k, p)]);
            s.set_current_key(&k).unwrap();
            assert_eq!(
                s.value(&d.v).unwrap().get().unwrap(),
                self.value.get(&k).copied()
            );
            let got: BTreeMap<u8, u32> = s.map(&d.m).unwrap().iter().unwrap().into_iter().collect();
            assert_eq!(
                got,
                self.map.get(&k).cloned().unwrap_or_default(),
                "key {k}"
            );
            assert_eq!(
                s.list(&d.l).unwrap().get().unwrap(),
                self.list.get(&k).cloned().unwrap_or_default()
            );
        }
    }
}
