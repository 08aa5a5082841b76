//! Model test: random sequences of operations against the store and a `BTreeMap`, with
//! tiny memtables and level targets so that flushes, multi-level compactions, snapshots
//! held across compactions, and reopens all occur.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidemark::lsm::{Db, Options, SyncMode, WriteBatch};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u16),
    Delete(u16),
    Batch(Vec<(u16, Option<u16>)>),
    Get(u16),
    Scan(u16, u16),
    Prefix(u8),
    TakeSnapshot,
    ReadSnapshot(usize, u16, u16),
    DropSnapshot(usize),
    Flush,
    Compact,
    Reopen,
    /// Reopen with the other level sizing (dynamic or static).
    ReopenOtherSizing,
    Fill(u16, u8),
}

fn key(k: u16) -> Vec<u8> {
    format!("key{:04}", k % 600).into_bytes()
}

fn value(v: u16, k: u16) -> Vec<u8> {
    // Values of varying length so blocks and files cut at different points.
    let mut s = format!("v{v}-{k}-").into_bytes();
    s.resize(8 + (v as usize % 97), b'x');
    s
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (any::<u16>(), any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
        10 => any::<u16>().prop_map(Op::Delete),
        6 => prop::collection::vec((any::<u16>(), prop::option::of(any::<u16>())), 1..20).prop_map(Op::Batch),
        10 => any::<u16>().prop_map(Op::Get),
        4 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Op::Scan(a, b)),
        2 => (0u8..10).prop_map(Op::Prefix),
        3 => Just(Op::TakeSnapshot),
        4 => (any::<usize>(), any::<u16>(), any::<u16>()).prop_map(|(i, a, b)| Op::ReadSnapshot(i, a, b)),
        1 => any::<usize>().prop_map(Op::DropSnapshot),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        2 => Just(Op::Reopen),
        1 => Just(Op::ReopenOtherSizing),
        3 => (any::<u16>(), any::<u8>()).prop_map(|(k, n)| Op::Fill(k, n)),
    ]
}

fn opts(dynamic: bool) -> Options {
    Options {
        level_compaction_dynamic_level_bytes: dynamic,
        memtable_size_bytes: 2048,
        max_immutable_memtables: 2,
        block_size_bytes: 256,
        target_file_size_bytes: 2048,
        max_bytes_for_level_base: 8192,
        level_size_multiplier: 4,
        l0_compaction_trigger: 2,
        l0_slowdown_writes_trigger: 4,
        l0_stop_writes_trigger: 8,
        num_levels: 4,
        block_cache_bytes: 16 << 10,
        sync: SyncMode::None,
        ..Options::default()
    }
}

fn range_model(m: &Model, a: &[u8], b: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    if a > b {
        return Vec::new();
    }
    m.range(a.to_vec()..b.to_vec())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn collect(it: tidemark::lsm::DbIterator) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.map(|r| r.expect("scan error")).collect()
}

/// Runs `ops` from a store with dynamic (or static) level sizes; returns the deepest level
/// that held files at some point, compactions run, and the most levels below level 0
/// that held files at once.
fn run(ops: Vec<Op>, mut dynamic: bool) -> (usize, u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Some(Db::open(dir.path(), opts(dynamic)).unwrap());
    let mut model = Model::new();
    let mut snaps: Vec<(tidemark::lsm::Snapshot, Model)> = Vec::new();
    let mut deepest = 0;
    let mut compactions = 0;
    let mut most_levels = 0;
    for op in ops {
        let d = db.as_ref().unwrap();
        let st = d.stats();
        compactions = compactions.max(st.compactions);
        if let Some(l) = st.levels.iter().rposition(|l| l.files > 0) {
            deepest = deepest.max(l);
        }
        most_levels = most_levels.max(st.levels[1..].iter().filter(|l| l.files > 0).count());
        match op {
            Op::Put(k, v) => {
                d.put(key(k), value(v, k)).unwrap();
                model.insert(key(k), value(v, k));
            }
            Op::Delete(k) => {
                d.delete(key(k)).unwrap();
                model.remove(&key(k));
            }
            Op::Batch(items) => {
                let mut b = WriteBatch::new();
                for (k, v) in items {
                    match v {
                        Some(v) => {
                            b.put(key(k), value(v, k));
                            model.insert(key(k), value(v, k));
                        }
                        None => {
                            b.delete(key(k));
                            model.remove(&key(k));
                        }
                    }
                }
                d.write(b).unwrap();
            }
            Op::Fill(start, n) => {
                for i in 0..n as u16 {
                    let k = start.wrapping_add(i);
                    d.put(key(k), value(i, k)).unwrap();
                    model.insert(key(k), value(i, k));
                }
            }
            Op::Get(k) => {
                assert_eq!(
                    d.get(key(k)).unwrap(),
                    model.get(&key(k)).cloned(),
                    "get {k}"
                );
            }
            Op::Scan(a, b) => {
                let (a, b) = (key(a), key(b));
                let got = if a <= b {
                    collect(d.scan(a.clone()..b.clone()).unwrap())
                } else {
                    Vec::new()
                };
                assert_eq!(got, range_model(&model, &a, &b));
            }
            Op::Prefix(p) => {
                let prefix = format!("key0{p}").into_bytes();
                let got = collect(d.prefix(&prefix).unwrap());
                let want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want);
            }
            Op::TakeSnapshot => {
                if snaps.len() < 4 {
                    snaps.push((d.snapshot(), model.clone()));
                }
            }
            Op::ReadSnapshot(i, a, b) => {
                if !snaps.is_empty() {
                    let (s, m) = &snaps[i % snaps.len()];
                    assert_eq!(s.get(key(a)).unwrap(), m.get(&key(a)).cloned());
                    let (a, b) = (key(a), key(b));
                    if a <= b {
                        assert_eq!(
                            collect(s.scan(a.clone()..b.clone()).unwrap()),
                            range_model(m, &a, &b)
                        );
                    }
                }
            }
            Op::DropSnapshot(i) => {
                if !snaps.is_empty() {
                    snaps.remove(i % snaps.len());
                }
            }
            Op::Flush => d.flush().unwrap(),
            Op::Compact => d.compact_range().unwrap(),
            Op::Reopen | Op::ReopenOtherSizing => {
                if matches!(op, Op::ReopenOtherSizing) {
                    dynamic = !dynamic;
                }
                snaps.clear();
                db.take().unwrap().close().unwrap();
                db = Some(Db::open(dir.path(), opts(dynamic)).unwrap());
            }
        }
    }
    let d = db.as_ref().unwrap();
    let all = collect(d.scan::<&[u8]>(..).unwrap());
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all, want);
    for (s, m) in &snaps {
        let got = collect(s.scan::<&[u8]>(..).unwrap());
        let want: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(got, want, "snapshot at seq {}", s.seq());
    }
    drop(snaps);
    // Everything survives a final reopen.
    db.take().unwrap().close().unwrap();
    let d = Db::open(dir.path(), opts(dynamic)).unwrap();
    assert_eq!(collect(d.scan::<&[u8]>(..).unwrap()), want);
    (deepest, compactions, most_levels)
}

fn cases() -> u32 {
    std::env::var("TIDEMARK_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_btreemap_model(ops in prop::collection::vec(op(), 1..300), dynamic in any::<bool>()) {
        run(ops, dynamic);
    }
}

#[test]
fn long_sequence_reaches_deep_levels() {
    // A deterministic long run that is sure to reach level 2 and beyond.
    let mut ops = Vec::new();
    for i in 0..4000u16 {
        ops.push(Op::Put(i.wrapping_mul(7), i));
        if i % 500 == 0 {
            ops.push(Op::TakeSnapshot);
        }
        if i % 3 == 0 {
            ops.push(Op::Delete(i.wrapping_mul(5)));
        }
        if i % 1000 == 999 {
            ops.push(Op::Reopen);
        }
    }
    ops.push(Op::Compact);
    for dynamic in [false, true] {
        let (deepest, compactions, most_levels) = run(ops.clone(), dynamic);
        assert!(deepest >= 2, "deepest level reached: {deepest}");
        assert!(compactions >= 5, "compactions: {compactions}");
        assert!(
            most_levels >= 2,
            "levels holding data at once: {most_levels}"
        );
    }
}
