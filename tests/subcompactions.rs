//! Subcompactions (`Options::max_subcompactions`): a compaction split into key ranges merged
//! side by side gives the same keys, values and versions as one merged alone, its output
//! files stay disjoint and in order, snapshots keep their view, and the store reopens.

use std::collections::BTreeMap;

use tidemark::lsm::{Compression, Db, Options, SyncMode};

/// Small tables, so that a full compaction reads many target-sized files and splits.
fn opts(ways: usize, dynamic: bool) -> Options {
    Options {
        memtable_size_bytes: 256 << 10,
        target_file_size_bytes: 32 << 10,
        max_bytes_for_level_base: 256 << 10,
        l0_compaction_trigger: 2,
        compression: Compression::Lz4,
        sync: SyncMode::None,
        max_subcompactions: ways,
        level_compaction_dynamic_level_bytes: dynamic,
        ..Options::default()
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("key{k:08}").into_bytes()
}

fn value(k: u64, round: u64) -> Vec<u8> {
    let mut v = format!("{k}-{round}-").into_bytes();
    v.resize(60 + (k % 50) as usize, b'v');
    v
}

/// A random load (a fixed xorshift sequence): puts, overwrites and deletes of 20,000 keys
/// in batches, recorded in `model`.
fn load(db: &Db, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, rounds: u64, seed: u64) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..rounds {
        let mut b = tidemark::lsm::WriteBatch::new();
        for _ in 0..500 {
            let k = next() % 20_000;
            if next() % 8 == 0 {
                b.delete(key(k));
                model.remove(&key(k));
            } else {
                b.put(key(k), value(k, round));
                model.insert(key(k), value(k, round));
            }
        }
        db.write(b).expect("write");
    }
}

fn check(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    let got: Vec<(Vec<u8>, Vec<u8>)> = db
        .iter()
        .expect("iter")
        .map(|r| r.expect("entry"))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(got.len(), want.len(), "{what}: number of keys");
    assert!(got == want, "{what}: contents differ from the model");
    for k in (0..20_000).step_by(97) {
        assert_eq!(
            db.get(key(k)).expect("get"),
            model.get(&key(k)).cloned(),
            "{what}: key {k}"
        );
    }
}

/// A file's user-key range.
type Span = (Vec<u8>, Vec<u8>);

/// Every level below 0 is a run of disjoint files in key order.
fn check_disjoint(db: &Db) {
    let live = db.live_files().expect("live files");
    let mut by_level: BTreeMap<u32, Vec<Span>> = BTreeMap::new();
    for f in &live.manifest.new_files {
        let user = |k: &[u8]| k[..k.len() - 8].to_vec();
        by_level
            .entry(f.level)
            .or_default()
            .push((user(&f.smallest), user(&f.largest)));
    }
    for (level, mut files) in by_level {
        if level == 0 {
            continue;
        }
        files.sort();
        for w in files.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "level {level}: files overlap: {:?} .. {:?} and {:?} .. {:?}",
                String::from_utf8_lossy(&w[0].0),
                String::from_utf8_lossy(&w[0].1),
                String::from_utf8_lossy(&w[1].0),
                String::from_utf8_lossy(&w[1].1)
            );
        }
    }
}

#[test]
fn a_split_full_compaction_matches_the_model_and_an_unsplit_one() {
    for dynamic in [true, false] {
        let mut results = Vec::new();
        for ways in [1, 3] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut model = BTreeMap::new();
            let db = Db::open(dir.path(), opts(ways, dynamic)).expect("open");
            load(&db, &mut model, 120, 7);
            db.flush().expect("flush");
            db.wait_for_compactions().expect("settle");
            load(&db, &mut model, 40, 11);
            db.compact_range().expect("full compaction");
            let s = db.stats();
            let files_below_0: usize = s.levels[1..].iter().map(|l| l.files).sum();
            assert_eq!(s.levels[0].files, 0, "{s:?}");
            if ways == 1 {
                assert_eq!(s.subcompactions, 0, "{s:?}");
            } else {
                assert!(s.subcompactions >= 1, "no compaction was split: {s:?}");
            }
            assert!(files_below_0 > 3, "{s:?}");
            check(&db, &model, &format!("ways {ways}, dynamic {dynamic}"));
            check_disjoint(&db);
            let all: Vec<(Vec<u8>, Vec<u8>)> =
                db.iter().expect("iter").map(|r| r.expect("e")).collect();
            drop(db);
            let db = Db::open(dir.path(), opts(ways, dynamic)).expect("reopen");
            check(
                &db,
                &model,
                &format!("ways {ways}, dynamic {dynamic}, reopened"),
            );
            results.push(all);
        }
        assert!(results[0] == results[1], "split and unsplit results differ");
    }
}

#[test]
fn a_snapshot_keeps_its_view_through_split_compactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts(4, true)).expect("open");
    let mut model = BTreeMap::new();
    load(&db, &mut model, 80, 3);
    let frozen = model.clone();
    let snap = db.snapshot();
    load(&db, &mut model, 80, 5);
    db.flush().expect("flush");
    db.wait_for_compactions().expect("settle");
    db.compact_range().expect("full compaction");
    assert!(db.stats().subcompactions >= 1, "{:?}", db.stats());
    let seen: BTreeMap<Vec<u8>, Vec<u8>> = snap
        .iter()
        .expect("snapshot iter")
        .map(|r| r.expect("entry"))
        .collect();
    assert!(seen == frozen, "the snapshot's view changed");
    check(&db, &model, "newest");
    check_disjoint(&db);
    drop(snap);
    db.compact_range()
        .expect("full compaction after the snapshot");
    check(&db, &model, "after the snapshot closed");
}

#[test]
fn zero_subcompactions_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Db::open(dir.path(), opts(0, true)).expect_err("0 ways");
    assert!(err.to_string().contains("max_subcompactions"), "{err}");
}
