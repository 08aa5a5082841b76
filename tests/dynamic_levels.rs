//! Dynamic level sizes (`Options::level_compaction_dynamic_level_bytes`): level 0 compacts
//! into the base level, the levels above it stay empty, the base level rises as the store
//! grows, a store written with static sizes settles at the bottom, reads are right while
//! levels in the middle are empty, and a random load matches a model across reopens.

use std::collections::BTreeMap;

use tidemark::lsm::{Compression, Db, DbStats, Options, SyncMode};

const LAST: usize = 6;
const BASE: u64 = 256 << 10;
const MULTIPLIER: u64 = 10;

/// Memtables larger than any batch the tests write, so only explicit flushes make tables
/// and the sequence of compactions does not depend on timing.
fn opts(dynamic: bool) -> Options {
    Options {
        memtable_size_bytes: 4 << 20,
        target_file_size_bytes: 64 << 10,
        max_bytes_for_level_base: BASE,
        level_size_multiplier: MULTIPLIER,
        l0_compaction_trigger: 2,
        compression: Compression::None,
        sync: SyncMode::None,
        level_compaction_dynamic_level_bytes: dynamic,
        ..Options::default()
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("key{k:08}").into_bytes()
}

fn value(k: u64, round: u64) -> Vec<u8> {
    let mut v = format!("{k}-{round}-").into_bytes();
    v.resize(100, b'v');
    v
}

/// A permutation of `0..n` (a multiplicative step coprime with `n`).
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    // Odd candidates, from a large prime on: one is coprime with n.
    let step = (0..n.max(1))
        .map(|i| 104_729 + 2 * (seed + i))
        .find(|s| gcd(*s, n) == 1)
        .unwrap_or(1);
    (0..n).map(|i| (i * step + seed) % n).collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The base level the dynamic sizes call for, from the level sizes alone.
fn expected_base_level(s: &DbStats) -> usize {
    let largest = s.levels[1..].iter().map(|l| l.bytes).max().unwrap_or(0);
    (1..=LAST)
        .find(|&l| {
            let mut t = largest;
            for _ in l..LAST {
                t /= MULTIPLIER;
            }
            t > BASE / MULTIPLIER
        })
        .unwrap_or(LAST)
}

/// Checks the shape of a settled store with dynamic sizes; returns its base level.
fn check_settled_shape(s: &DbStats) -> usize {
    let base = s.base_level;
    assert_eq!(base, expected_base_level(s), "{s:?}");
    for level in 1..base {
        assert_eq!(
            s.levels[level].files, 0,
            "level {level} above the base: {s:?}"
        );
        assert_eq!(s.level_target_bytes[level], u64::MAX);
    }
    let largest = s.levels[1..].iter().map(|l| l.bytes).max().unwrap_or(0);
    assert_eq!(s.level_target_bytes[LAST], largest.max(BASE), "{s:?}");
    // No level below the base is over its target once compactions are done, and the
    // levels holding data are contiguous down to the last one.
    for level in base..LAST {
        assert!(
            s.levels[level].bytes <= s.level_target_bytes[level],
            "level {level} over its target: {s:?}"
        );
        if s.levels[level].files > 0 {
            assert!(s.levels[level + 1].files > 0, "a gap below {level}: {s:?}");
        }
    }
    // Level 0 is below the trigger (2), or below twice the trigger while the base level,
    // which its compaction would rewrite, holds more bytes than it does.
    let l0 = &s.levels[0];
    assert!(
        l0.files < 2 || (l0.files < 4 && s.levels[base].bytes > l0.bytes),
        "level 0 not compacted: {s:?}"
    );
    base
}

/// Loads `n` distinct keys in random order, `batch` keys per flushed table, waiting for
/// the compactions after each; returns the stats after every round.
fn load(db: &Db, n: u64, batch: usize) -> Vec<DbStats> {
    let mut rounds = Vec::new();
    for chunk in shuffled(n, 3).chunks(batch) {
        for &k in chunk {
            db.put(key(k), value(k, 0)).unwrap();
        }
        db.flush().unwrap();
        db.wait_for_compactions().unwrap();
        rounds.push(db.stats());
    }
    rounds
}

fn check_all(db: &Db, n: u64, round: u64) {
    for k in (0..n).step_by(97) {
        assert_eq!(db.get(key(k)).unwrap(), Some(value(k, round)), "key {k}");
    }
    assert_eq!(db.get(key(n)).unwrap(), None);
    let mut count = 0u64;
    for (i, item) in db.iter().unwrap().enumerate() {
        let (k, v) = item.unwrap();
        assert_eq!(k, key(i as u64));
        assert_eq!(v, value(i as u64, round));
        count += 1;
    }
    assert_eq!(count, n);
}

/// Level 0 compacts straight into the last level while the store is small, and into a
/// level above only once the last level needs one; the levels above the base stay
/// empty. The same load with static sizes keeps level 1 as its base. (Which of the two
/// writes fewer compaction bytes depends on where tables happen to be cut: measured on
/// this load, dynamic sizes wrote 5% less at 40k keys with version 1 tables, 3% more with
/// version 2 tables, and 3-17% more at 60k and 80k keys with either; the test prints the
/// figures and asserts neither.)
#[test]
fn level_zero_compacts_into_the_base_level_which_rises_as_the_store_grows() {
    const N: u64 = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts(true)).unwrap();
    let rounds = load(&db, N, 1000);
    let bases: Vec<usize> = rounds.iter().map(check_settled_shape).collect();
    assert_eq!(bases[0], LAST, "a small store: {bases:?}");
    assert!(
        bases.windows(2).all(|w| w[1] <= w[0]),
        "a growing store's base level only rises: {bases:?}"
    );
    assert!(bases.contains(&(LAST - 1)), "{bases:?}");
    assert!(
        *bases.last().unwrap() <= LAST - 2,
        "4.4 MB of data want three levels: {bases:?}"
    );
    // The first compactions of level 0 go to the last level: nothing ever went to L1
    // while the store held less than the base size.
    let first_big = rounds
        .iter()
        .position(|s| s.levels[LAST].bytes > BASE)
        .unwrap();
    for s in &rounds[..first_big] {
        assert!(s.levels[1..LAST].iter().all(|l| l.files == 0), "{s:?}");
    }
    check_all(&db, N, 0);
    let dynamic = db.stats();
    drop(db);

    // The same load with static sizes.
    let dir2 = tempfile::tempdir().unwrap();
    let db = Db::open(dir2.path(), opts(false)).unwrap();
    let rounds = load(&db, N, 1000);
    assert!(rounds.iter().all(|s| s.base_level == 1));
    let fixed = db.stats();
    check_all(&db, N, 0);
    eprintln!(
        "compaction bytes written: dynamic {} (write amp {:.2}), static {} (write amp {:.2})",
        dynamic.compaction_bytes_written,
        dynamic.write_amplification(),
        fixed.compaction_bytes_written,
        fixed.write_amplification()
    );

    // Reopened either way, the store reads the same.
    drop(db);
    for dynamic in [true, false, true] {
        let db = Db::open(dir.path(), opts(dynamic)).unwrap();
        check_all(&db, N, 0);
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every point read, a full scan, a range and a prefix agree with `model`.
fn check_reads(db: &Db, model: &Model) {
    for k in 0..2001u64 {
        assert_eq!(db.get(key(k)).unwrap(), model.get(&key(k)).cloned(), "{k}");
    }
    let all: Vec<_> = db.iter().unwrap().map(|r| r.unwrap()).collect();
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all, want);
    let got: Vec<_> = db
        .scan(key(500)..key(700))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let want: Vec<_> = model
        .range(key(500)..key(700))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want);
    let got = db.prefix(b"key0000012").unwrap().count();
    let want = model
        .keys()
        .filter(|k| k.starts_with(b"key0000012"))
        .count();
    assert_eq!(got, want);
}

/// Point reads, scans, prefixes and snapshots are right while data lies in level 0 and
/// the last level only, with every level between empty: newer values and tombstones in
/// level 0 hide older ones in the last level.
#[test]
fn reads_are_right_while_the_middle_levels_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        l0_compaction_trigger: 4,
        l0_slowdown_writes_trigger: 8,
        l0_stop_writes_trigger: 12,
        ..opts(true)
    };
    let db = Db::open(dir.path(), o.clone()).unwrap();
    let mut model = Model::new();
    for k in 0..2000u64 {
        db.put(key(k), value(k, 0)).unwrap();
        model.insert(key(k), value(k, 0));
    }
    db.flush().unwrap();
    db.compact_range().unwrap(); // everything in the last level
    let snap = db.snapshot();
    let snap_model = model.clone();
    // Two level-0 tables over it: overwrites and deletes, below the compaction trigger.
    for round in 1..=2u64 {
        for k in (0..2000u64).filter(|k| k % (3 + round) == 0) {
            if k % 2 == 0 {
                db.put(key(k), value(k, round)).unwrap();
                model.insert(key(k), value(k, round));
            } else {
                db.delete(key(k)).unwrap();
                model.remove(&key(k));
            }
        }
        db.flush().unwrap();
    }
    let s = db.stats();
    assert_eq!(s.levels[0].files, 2, "{s:?}");
    assert!(s.levels[1..LAST].iter().all(|l| l.files == 0), "{s:?}");
    assert!(s.levels[LAST].files > 0, "{s:?}");
    assert_eq!(s.base_level, LAST);

    check_reads(&db, &model);
    for k in 0..2000u64 {
        assert_eq!(snap.get(key(k)).unwrap(), snap_model.get(&key(k)).cloned());
    }
    assert_eq!(snap.iter().unwrap().count(), snap_model.len());
    drop(snap);
    drop(db);
    let db = Db::open(dir.path(), o).unwrap();
    check_reads(&db, &model);
    // Two more tables reach the trigger, but the last level, which a compaction of level
    // 0 would rewrite, holds more bytes than level 0: it waits for twice the trigger.
    // Then level 0 goes straight to the last level.
    for round in 3..=8u64 {
        db.put(key(round), value(round, round)).unwrap();
        model.insert(key(round), value(round, round));
        db.flush().unwrap();
        if round < 8 {
            db.wait_for_compactions().unwrap();
            let s = db.stats();
            assert_eq!(s.levels[0].files as u64, round, "{s:?}");
            assert_eq!(s.compactions, 0, "no compaction since the reopen: {s:?}");
            check_reads(&db, &model);
        }
    }
    db.wait_for_compactions().unwrap();
    let s = db.stats();
    assert_eq!(s.levels[0].files, 0, "{s:?}");
    assert!(s.levels[1..LAST].iter().all(|l| l.files == 0), "{s:?}");
    check_reads(&db, &model);
}

/// Writes `n` keys with static sizes and a level-1 target of `static_base` bytes (leaving
/// data in levels 1 and 2 only), reopens the store with dynamic sizes (and the usual
/// base) and waits; checks the data both ways; returns the stats.
fn migrate(n: u64, batch: usize, static_base: u64) -> DbStats {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let o = Options {
            max_bytes_for_level_base: static_base,
            ..opts(false)
        };
        let db = Db::open(dir.path(), o).unwrap();
        load(&db, n, batch);
        db.stats()
    };
    assert!(
        before.levels[1].files > 0 && before.levels[2].files > 0,
        "the test wants data in levels 1 and 2: {before:?}"
    );
    assert!(
        before.levels[3..].iter().all(|l| l.files == 0),
        "{before:?}"
    );
    let db = Db::open(dir.path(), opts(true)).unwrap();
    db.wait_for_compactions().unwrap();
    let s = db.stats();
    assert!(s.trivial_moves >= 2, "the levels moved down whole: {s:?}");
    check_settled_shape(&s);
    check_all(&db, n, 0);
    drop(db);
    let db = Db::open(dir.path(), opts(false)).unwrap();
    check_all(&db, n, 0);
    eprintln!("static {:?}\ndynamic {:?}", before.levels, s.levels);
    s
}

/// A store written with static sizes reopened with dynamic sizes moves its levels down
/// whole (level 2 to the last level, level 1 to the one above), and has the dynamic
/// shape once its compactions are done; reopened with static sizes again, it reads the
/// same.
#[test]
fn a_store_written_with_static_sizes_settles_into_the_dynamic_shape() {
    let s = migrate(12_000, 1000, BASE);
    assert_eq!(s.base_level, LAST - 1, "{s:?}");
    assert_eq!(s.compaction_bytes_written, 0, "moves only: {s:?}");
}

/// A store smaller than the base size held in two levels: moved down to the last two,
/// the upper one is more than the dynamic sizes call for (one level is enough while the
/// largest holds less than the base size), so it is compacted into the last level.
#[test]
fn a_level_above_the_wanted_base_level_is_drained() {
    let s = migrate(1500, 100, 32 << 10);
    assert_eq!(s.base_level, LAST, "{s:?}");
    assert!(s.levels[1..LAST].iter().all(|l| l.files == 0), "{s:?}");
    assert!(s.compaction_bytes_written > 0, "{s:?}");
}

/// A random load of overwrites and deletes, with memtables small enough that flushes and
/// compactions run in the background while it writes, matches a `BTreeMap` before and
/// after reopening, and after a full compaction (into the last level).
#[test]
fn random_load_with_many_compactions_matches_a_model_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        memtable_size_bytes: 32 << 10,
        target_file_size_bytes: 16 << 10,
        max_bytes_for_level_base: 64 << 10,
        level_size_multiplier: 4,
        ..opts(true)
    };
    let mut db = Db::open(dir.path(), o.clone()).unwrap();
    let mut model = Model::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let verify = |db: &Db, model: &Model| {
        let all: Vec<_> = db.iter().unwrap().map(|r| r.unwrap()).collect();
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(all.len(), want.len());
        assert!(all == want, "scan differs from the model");
    };
    let mut bases = Vec::new();
    for round in 0..6u64 {
        for _ in 0..25_000 {
            let r = next();
            let k = r % 20_000;
            if r % 7 == 0 {
                db.delete(key(k)).unwrap();
                model.remove(&key(k));
            } else {
                db.put(key(k), value(k, round)).unwrap();
                model.insert(key(k), value(k, round));
            }
            if r % 1009 == 0 {
                assert_eq!(
                    db.get(key(r % 20_000)).unwrap(),
                    model.get(&key(r % 20_000)).cloned()
                );
            }
        }
        verify(&db, &model);
        bases.push(db.stats().base_level);
        if round % 2 == 1 {
            db.close().unwrap();
            db = Db::open(dir.path(), o.clone()).unwrap();
            verify(&db, &model);
        }
    }
    db.wait_for_compactions().unwrap();
    let s = db.stats();
    assert!(s.compactions > 20, "{s:?}");
    assert!(
        bases.iter().any(|&b| b < LAST),
        "the store grew past one level: {bases:?}"
    );
    verify(&db, &model);
    db.compact_range().unwrap();
    let s = db.stats();
    assert!(s.levels[..LAST].iter().all(|l| l.files == 0), "{s:?}");
    verify(&db, &model);
    db.close().unwrap();
    let db = Db::open(dir.path(), o).unwrap();
    verify(&db, &model);
    for k in (0..20_000u64).step_by(13) {
        assert_eq!(db.get(key(k)).unwrap(), model.get(&key(k)).cloned(), "{k}");
    }
}
