//! One conformance suite for every keyed state backend (as Flink's StateBackendTestBase):
//! every state type and method, time to live (with a clock moved by hand), and type
//! checks, run against the heap and the LSM
//! backends through the `KeyedStateBackend` trait.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tidemark::lsm::{Db, Options};
use tidemark::state::heap::HeapKeyedBackend;
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{
    AggregateFunction, AggregatingStateDescriptor, KeyedState, KeyedStateBackend,
    ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, StateTtlConfig, TtlClock,
    TtlUpdateType, TtlVisibility, ValueStateDescriptor,
};
use tidemark::state::lsm_keyed::{LsmKeyedBackend, TtlCompactionFilter};

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
    let mut m = s.map(&map).unwrap();
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

/// A clock the test moves by hand.
struct TestClock(std::sync::atomic::AtomicU64);

impl TestClock {
    fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl TtlClock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn ttl_semantics(b: &mut dyn KeyedStateBackend) {
    let clock = TestClock(1_000_000.into());
    let ttl = StateTtlConfig::new(Duration::from_millis(1000));
    let value = ValueStateDescriptor::<u32>::new("v").enable_ttl(ttl);
    let renewed = ValueStateDescriptor::<u32>::new("r")
        .enable_ttl(ttl.update_type(TtlUpdateType::OnReadAndWrite));
    let visible = ValueStateDescriptor::<u32>::new("e")
        .enable_ttl(ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp));
    let list = ListStateDescriptor::<u32>::new("l").enable_ttl(ttl);
    let map = MapStateDescriptor::<u8, u32>::new("m").enable_ttl(ttl);
    let sum = ReducingStateDescriptor::<u64>::new("s", |a, b| a + b).enable_ttl(ttl);
    let base = 1_000_000;
    let mut s = KeyedState::with_clock(b, &clock);
    s.set_current_key("k").unwrap();
    s.value(&value).unwrap().update(&1).unwrap();
    s.value(&renewed).unwrap().update(&2).unwrap();
    s.value(&visible).unwrap().update(&3).unwrap();
    s.list(&list).unwrap().add(&10).unwrap();
    s.map(&map).unwrap().put(&1, &100).unwrap();
    s.reducing(&sum).unwrap().add(&5).unwrap();

    clock.set(base + 600);
    s.list(&list).unwrap().add(&11).unwrap();
    s.map(&map).unwrap().put(&2, &200).unwrap();
    assert_eq!(s.value(&renewed).unwrap().get().unwrap(), Some(2)); // renewed at 600

    clock.set(base + 999);
    assert_eq!(s.value(&value).unwrap().get().unwrap(), Some(1));
    clock.set(base + 1000);
    assert_eq!(
        s.value(&value).unwrap().get().unwrap(),
        None,
        "expired at its ttl"
    );
    assert_eq!(s.list(&list).unwrap().get().unwrap(), vec![11]);
    assert_eq!(s.map(&map).unwrap().iter().unwrap(), vec![(2, 200)]);
    assert_eq!(s.map(&map).unwrap().get(&1).unwrap(), None);
    // An expired reducing value starts again.
    s.reducing(&sum).unwrap().add(&7).unwrap();
    assert_eq!(s.reducing(&sum).unwrap().get().unwrap(), Some(7));
    assert_eq!(
        s.value(&renewed).unwrap().get().unwrap(),
        Some(2),
        "alive: renewed by a read"
    );
    // Returned once after it expired, then cleaned up.
    assert_eq!(s.value(&visible).unwrap().get().unwrap(), Some(3));
    assert_eq!(s.value(&visible).unwrap().get().unwrap(), None);
    // Expired values were removed from the backend, not just hidden.
    assert_eq!(
        s.value(
            &ValueStateDescriptor::<u32>::new("v")
                .enable_ttl(ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp))
        )
        .unwrap()
        .get()
        .unwrap(),
        None
    );

    clock.set(base + 2000);
    assert_eq!(s.value(&renewed).unwrap().get().unwrap(), None);
    assert!(s.list(&list).unwrap().get().unwrap().is_empty());
    assert!(s.map(&map).unwrap().is_empty().unwrap());
    // TTL on for a state without it (or off for one with it) is a type error.
    let e = s.value(&ValueStateDescriptor::<u32>::new("v")).unwrap_err();
    assert!(e.to_string().contains("TTL"), "{e}");
}

#[test]
fn time_to_live_in_every_backend() {
    for_each_backend(|a, _| ttl_semantics(a));
}

#[test]
fn heap_snapshots_leave_out_expired_values() {
    let clock = TestClock(5_000.into());
    let m = MaxParallelism::default();
    let mut b = HeapKeyedBackend::new(m, m.full_range());
    let ttl = StateTtlConfig::new(Duration::from_millis(100));
    let v = ValueStateDescriptor::<u32>::new("v").enable_ttl(ttl);
    let l = ListStateDescriptor::<u32>::new("l").enable_ttl(ttl);
    {
        let mut s = KeyedState::with_clock(&mut b, &clock);
        for k in 0..100u32 {
            s.set_current_key(&k).unwrap();
            s.value(&v).unwrap().update(&k).unwrap();
            s.list(&l).unwrap().add(&k).unwrap();
        }
        clock.set(5_060);
        for k in 0..50u32 {
            s.set_current_key(&k).unwrap();
            s.value(&v).unwrap().update(&(k + 1000)).unwrap();
            s.list(&l).unwrap().add(&(k + 1000)).unwrap();
        }
    }
    clock.set(5_120); // the first writes have expired, the second have not
    let snap = b.snapshot_at(&clock);
    let mut bytes = Vec::new();
    let w = snap.write_to(&mut bytes).unwrap();
    let src = tidemark::state::heap::KeyGroupsSource {
        name: "s",
        data: &bytes,
        offsets: &w.offsets,
    };
    let mut r = HeapKeyedBackend::restore(m, m.full_range(), &[src]).unwrap();
    assert!(r.approximate_bytes() < b.approximate_bytes());
    let mut s = KeyedState::with_clock(&mut r, &clock);
    // Visible-if-not-cleaned-up reads show what the snapshot really holds.
    let vv = ValueStateDescriptor::<u32>::new("v")
        .enable_ttl(ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp));
    let lv = ListStateDescriptor::<u32>::new("l")
        .enable_ttl(ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp));
    for k in 0..100u32 {
        s.set_current_key(&k).unwrap();
        let want = (k < 50).then_some(k + 1000);
        assert_eq!(s.value(&vv).unwrap().get().unwrap(), want, "key {k}");
        assert_eq!(
            s.list(&lv).unwrap().get().unwrap(),
            want.into_iter().collect::<Vec<_>>()
        );
    }
}

struct SharedClock(Arc<TestClock>);

impl TtlClock for SharedClock {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
}

/// In the lsm backend, compaction drops expired values (and expired list elements) through
/// the store's compaction filter: the rows are gone from the store, not only hidden.
#[test]
fn lsm_compaction_drops_expired_state() {
    let clock = Arc::new(TestClock(10_000.into()));
    let filter = TtlCompactionFilter::with_clock(Arc::new(SharedClock(clock.clone())));
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options {
        compaction_filter: Some(filter.clone()),
        ..Options::default()
    };
    let db = Arc::new(Db::open(tmp.path(), opts).unwrap());
    let m = MaxParallelism::default();
    let mut b = LsmKeyedBackend::open(db.clone(), m, m.full_range())
        .unwrap()
        .with_ttl_filter(filter);
    let ttl = StateTtlConfig::new(Duration::from_millis(100));
    let v = ValueStateDescriptor::<u32>::new("v").enable_ttl(ttl);
    let l = ListStateDescriptor::<u32>::new("l").enable_ttl(ttl);
    let keep = ValueStateDescriptor::<u32>::new("keep");
    {
        let mut s = KeyedState::with_clock(&mut b, clock.as_ref());
        for k in 0..200u32 {
            s.set_current_key(&k).unwrap();
            s.value(&v).unwrap().update(&k).unwrap();
            s.list(&l).unwrap().add(&k).unwrap();
            s.value(&keep).unwrap().update(&k).unwrap();
        }
        clock.set(10_050);
        for k in 0..100u32 {
            s.set_current_key(&k).unwrap();
            s.list(&l).unwrap().add(&(k + 1000)).unwrap();
        }
    }
    clock.set(10_120); // the values and the first elements have expired
    db.compact_range().unwrap();
    let st = db.stats();
    assert_eq!(
        st.compaction_filter_removed, 300,
        "200 values, 100 whole lists"
    );
    assert_eq!(
        st.compaction_filter_changed, 100,
        "100 lists keep one element"
    );
    let mut s = KeyedState::with_clock(&mut b, clock.as_ref());
    let visible = |d: &str| {
        ValueStateDescriptor::<u32>::new(d)
            .enable_ttl(ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp))
    };
    let lv = ListStateDescriptor::<u32>::new("l")
        .enable_ttl(ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp));
    for k in 0..200u32 {
        s.set_current_key(&k).unwrap();
        assert_eq!(
            s.value(&visible("v")).unwrap().get().unwrap(),
            None,
            "key {k}"
        );
        let want: Vec<u32> = if k < 100 { vec![k + 1000] } else { vec![] };
        assert_eq!(s.list(&lv).unwrap().get().unwrap(), want, "key {k}");
        assert_eq!(s.value(&keep).unwrap().get().unwrap(), Some(k));
    }
}

fn ttl_lists_and_changed_durations(b: &mut dyn KeyedStateBackend) {
    let clock = TestClock(0.into());
    let ttl = StateTtlConfig::new(Duration::from_millis(100));
    let list = ListStateDescriptor::<u32>::new("l").enable_ttl(ttl);
    let shown = ListStateDescriptor::<u32>::new("shown")
        .enable_ttl(ttl.visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp));
    let mut s = KeyedState::with_clock(b, &clock);
    s.set_current_key("k").unwrap();
    s.list(&list).unwrap().add(&1).unwrap();
    s.list(&shown).unwrap().add(&1).unwrap();
    clock.set(50);
    s.list(&list).unwrap().add(&2).unwrap();
    clock.set(120);
    assert_eq!(s.list(&list).unwrap().get().unwrap(), vec![2]);
    // The survivor kept its own stamp (50): a read does not renew it by default.
    clock.set(160);
    assert!(s.list(&list).unwrap().get().unwrap().is_empty());
    // Returned once after it expired, then gone, as for a value.
    assert_eq!(s.list(&shown).unwrap().get().unwrap(), vec![1]);
    assert!(s.list(&shown).unwrap().get().unwrap().is_empty());
    // A longer time to live for a registered state rules from then on.
    let v100 = ValueStateDescriptor::<u32>::new("v").enable_ttl(ttl);
    let v1000 = ValueStateDescriptor::<u32>::new("v")
        .enable_ttl(StateTtlConfig::new(Duration::from_millis(1000)));
    s.value(&v100).unwrap().update(&7).unwrap();
    clock.set(660);
    assert_eq!(s.value(&v1000).unwrap().get().unwrap(), Some(7));
}

#[test]
fn ttl_lists_and_changed_durations_in_every_backend() {
    for_each_backend(|a, _| ttl_lists_and_changed_durations(a));
}

/// A snapshot restored and asked for with a longer time to live keeps values alive by the
/// new duration in the next snapshot (heap) and in compaction (lsm).
#[test]
fn a_longer_ttl_after_restore_keeps_values_in_snapshots_and_compaction() {
    let clock = Arc::new(TestClock(0.into()));
    let short = ValueStateDescriptor::<u32>::new("v")
        .enable_ttl(StateTtlConfig::new(Duration::from_millis(100)));
    let long = ValueStateDescriptor::<u32>::new("v")
        .enable_ttl(StateTtlConfig::new(Duration::from_millis(1000)));
    let m = MaxParallelism::default();
    // Heap: snapshot, restore, switch to the long TTL, snapshot again at t = 500.
    let mut b = HeapKeyedBackend::new(m, m.full_range());
    {
        let mut s = KeyedState::with_clock(&mut b, clock.as_ref());
        s.set_current_key("k").unwrap();
        s.value(&short).unwrap().update(&7).unwrap();
    }
    let roundtrip = |b: &HeapKeyedBackend, clock: &TestClock| {
        let mut bytes = Vec::new();
        let w = b.snapshot_at(clock).write_to(&mut bytes).unwrap();
        let src = tidemark::state::heap::KeyGroupsSource {
            name: "s",
            data: &bytes,
            offsets: &w.offsets,
        };
        HeapKeyedBackend::restore(m, m.full_range(), &[src]).unwrap()
    };
    let mut r = roundtrip(&b, &clock);
    clock.set(500);
    {
        let mut s = KeyedState::with_clock(&mut r, clock.as_ref());
        s.set_current_key("k").unwrap();
        assert_eq!(s.value(&long).unwrap().get().unwrap(), Some(7));
    }
    let mut r2 = roundtrip(&r, &clock);
    let mut s = KeyedState::with_clock(&mut r2, clock.as_ref());
    s.set_current_key("k").unwrap();
    assert_eq!(s.value(&long).unwrap().get().unwrap(), Some(7));

    // lsm: the store registered the short TTL; the long one must rule compaction.
    let tmp = tempfile::tempdir().unwrap();
    clock.set(0);
    let filter = TtlCompactionFilter::with_clock(Arc::new(SharedClock(clock.clone())));
    let opts = || Options {
        compaction_filter: Some(filter.clone()),
        ..Options::default()
    };
    {
        let db = Arc::new(Db::open(tmp.path(), opts()).unwrap());
        let mut b = LsmKeyedBackend::open(db, m, m.full_range())
            .unwrap()
            .with_ttl_filter(filter.clone());
        let mut s = KeyedState::with_clock(&mut b, clock.as_ref());
        s.set_current_key("k").unwrap();
        s.value(&short).unwrap().update(&7).unwrap();
    }
    let db = Arc::new(Db::open(tmp.path(), opts()).unwrap());
    let mut b = LsmKeyedBackend::open(db.clone(), m, m.full_range())
        .unwrap()
        .with_ttl_filter(filter.clone());
    clock.set(500);
    let mut s = KeyedState::with_clock(&mut b, clock.as_ref());
    s.set_current_key("k").unwrap();
    assert_eq!(s.value(&long).unwrap().get().unwrap(), Some(7));
    db.compact_range().unwrap();
    assert_eq!(s.value(&long).unwrap().get().unwrap(), Some(7));
}
