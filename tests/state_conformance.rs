//! One conformance suite for every keyed state backend (as Flink's StateBackendTestBase):
//! every state type and method, and type checks, run against the heap and the LSM
//! backends through the `KeyedStateBackend` trait.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use tidemark::lsm::{Db, Options};
use tidemark::state::heap::HeapKeyedBackend;
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{
    AggregateFunction, AggregatingStateDescriptor, KeyedState, KeyedStateBackend,
    ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, ValueStateDescriptor,
};
use tidemark::state::lsm_keyed::LsmKeyedBackend;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Click {
    page: String,
    millis: u64,
}

struct Average;

impl AggregateFunction<u64, (u64, u64), f64> for Average {
    fn create(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, input: &u64, acc: (u64, u64)) -> (u64, u64) {
        (acc.0 + input, acc.1 + 1)
    }
    fn result(&self, acc: &(u64, u64)) -> f64 {
        acc.0 as f64 / acc.1 as f64
    }
}

fn every_state_type_and_method(b: &mut dyn KeyedStateBackend) {
    let mut s = KeyedState::new(b);
    let value = ValueStateDescriptor::<Click>::new("last-click");
    let list = ListStateDescriptor::<u32>::new("events");
    let map = MapStateDescriptor::<String, u64>::new("per-page");
    let sum = ReducingStateDescriptor::<u64>::new("sum", |a, b| a + b);
    let avg = AggregatingStateDescriptor::new("avg", Average);

    for user in ["alice", "bob"] {
        s.set_current_key(user).unwrap();
        assert_eq!(s.value(&value).unwrap().get().unwrap(), None);
        assert!(s.list(&list).unwrap().get().unwrap().is_empty());
        assert!(s.map(&map).unwrap().is_empty().unwrap());
        assert_eq!(s.reducing(&sum).unwrap().get().unwrap(), None);
        assert_eq!(s.aggregating(&avg).unwrap().get().unwrap(), None);
        let click = Click {
            page: format!("/{user}"),
            millis: 7,
        };
        s.value(&value).unwrap().update(&click).unwrap();
        s.list(&list).unwrap().add(&1).unwrap();
        s.list(&list).unwrap().add_all(&[2, 3]).unwrap();
        s.map(&map).unwrap().put(&"/a".into(), &1).unwrap();
        s.map(&map)
            .unwrap()
            .put_all([(&"/c".to_string(), &3), (&"/b".to_string(), &2)])
            .unwrap();
        for n in [5u64, 10, 15] {
            s.reducing(&sum).unwrap().add(&n).unwrap();
            s.aggregating(&avg).unwrap().add(&n).unwrap();
        }
    }
    s.set_current_key("alice").unwrap();
    assert_eq!(
        s.value(&value).unwrap().get().unwrap().unwrap().page,
        "/alice"
    );
    assert_eq!(s.list(&list).unwrap().get().unwrap(), vec![1, 2, 3]);
    s.list(&list).unwrap().update(&[9]).unwrap();
    assert_eq!(s.list(&list).unwrap().get().unwrap(), vec![9]);
    s.list(&list).unwrap().update(&[]).unwrap();
    assert!(s.list(&list).unwrap().get().unwrap().is_empty());
    let m = s.map(&map).unwrap();
    assert_eq!(m.get(&"/b".into()).unwrap(), Some(2));
    assert!(m.contains(&"/c".into()).unwrap());
    assert!(!m.contains(&"/z".into()).unwrap());
    assert_eq!(m.keys().unwrap().len(), 3);
    let mut values = m.values().unwrap();
    values.sort();
    assert_eq!(values, vec![1, 2, 3]);
    let mut m = s.map(&map).unwrap();
    m.remove(&"/a".into()).unwrap();
    assert_eq!(m.iter().unwrap().len(), 2);
    m.clear().unwrap();
    assert!(m.is_empty().unwrap());
    assert_eq!(s.reducing(&sum).unwrap().get().unwrap(), Some(30));
    assert_eq!(s.aggregating(&avg).unwrap().get().unwrap(), Some(10.0));
    s.value(&value).unwrap().clear().unwrap();
    s.reducing(&sum).unwrap().clear().unwrap();
    s.aggregating(&avg).unwrap().clear().unwrap();
    assert_eq!(s.value(&value).unwrap().get().unwrap(), None);
    assert_eq!(s.reducing(&sum).unwrap().get().unwrap(), None);
    // Bob's state is untouched by everything done to Alice's.
    s.set_current_key("bob").unwrap();
    assert_eq!(s.list(&list).unwrap().get().unwrap(), vec![1, 2, 3]);
    assert_eq!(s.map(&map).unwrap().iter().unwrap().len(), 3);
    assert_eq!(s.reducing(&sum).unwrap().get().unwrap(), Some(30));
}

fn a_state_asked_for_under_another_type_is_an_error_naming_it(
    b: &mut dyn KeyedStateBackend,
    empty: &mut dyn KeyedStateBackend,
) {
    let mut s = KeyedState::new(b);
    s.set_current_key(&1u32).unwrap();
    s.value(&ValueStateDescriptor::<u64>::new("count"))
        .unwrap()
        .update(&3)
        .unwrap();
    let e = s
        .value(&ValueStateDescriptor::<String>::new("count"))
        .unwrap_err();
    assert!(e.to_string().contains("\"count\""), "{e}");
    let e = s
        .list(&ListStateDescriptor::<u64>::new("count"))
        .unwrap_err();
    assert!(e.to_string().contains("list"), "{e}");
    // Without a current key there is nothing to read.
    let mut s = KeyedState::new(empty);
    assert!(s
        .value(&ValueStateDescriptor::<u64>::new("count"))
        .unwrap()
        .get()
        .is_err());
}

/// Runs `suite` against a fresh backend of each kind (and a second one where it needs two).
fn for_each_backend(suite: impl Fn(&mut dyn KeyedStateBackend, &mut dyn KeyedStateBackend)) {
    let m = MaxParallelism::default();
    let mut a = HeapKeyedBackend::new(m, m.full_range());
    let mut b = HeapKeyedBackend::new(m, m.full_range());
    suite(&mut a, &mut b);
    let tmp = tempfile::tempdir().unwrap();
    let lsm = |name: &str| {
        let db = Arc::new(Db::open(tmp.path().join(name), Options::default()).unwrap());
        LsmKeyedBackend::open(db, m, m.full_range()).unwrap()
    };
    let (mut a, mut b) = (lsm("a"), lsm("b"));
    suite(&mut a, &mut b);
}

#[test]
fn every_state_type_and_method_in_every_backend() {
    for_each_backend(|a, _| every_state_type_and_method(a));
}

#[test]
fn type_checks_in_every_backend() {
    for_each_backend(a_state_asked_for_under_another_type_is_an_error_naming_it);
}

#[test]
fn lsm_backend_keeps_its_states_across_reopen_and_refuses_foreign_key_groups() {
    let m = MaxParallelism::default();
    let tmp = tempfile::tempdir().unwrap();
    let range = m.range_for_subtask(2, 1).unwrap();
    let counts = ValueStateDescriptor::<u64>::new("counts");
    {
        let db = Arc::new(Db::open(tmp.path(), Options::default()).unwrap());
        let mut b = LsmKeyedBackend::open(db, m, range).unwrap();
        let mut s = KeyedState::new(&mut b);
        let mut mine = 0;
        for k in 0..200u32 {
            match s.set_current_key(&k) {
                Ok(()) => {
                    s.value(&counts).unwrap().update(&u64::from(k)).unwrap();
                    mine += 1;
                }
                Err(e) => assert!(e.to_string().contains("key group"), "{e}"),
            }
        }
        assert!(
            mine > 50 && mine < 150,
            "{mine} of 200 keys in half the key groups"
        );
    }
    let db = Arc::new(Db::open(tmp.path(), Options::default()).unwrap());
    let mut b = LsmKeyedBackend::open(db, m, range).unwrap();
    let mut s = KeyedState::new(&mut b);
    assert!(s
        .value(&ValueStateDescriptor::<String>::new("counts"))
        .is_err());
    for k in 0..200u32 {
        if s.set_current_key(&k).is_ok() {
            assert_eq!(s.value(&counts).unwrap().get().unwrap(), Some(u64::from(k)));
        }
    }
}
