//! Leveled compaction: space amplification stays bounded under overwrites, deleted ranges
//! are reclaimed, write stalls are counted, and a failure during compaction makes the
//! store read-only without losing an acknowledged write.

use std::sync::Arc;

use tidemark::fault::{FaultError, FaultFs, FaultOp, FaultRule};
use tidemark::lsm::{Db, Options, SyncMode};
use tidemark::Error;

fn opts() -> Options {
    Options {
        memtable_size_bytes: 64 << 10,
        target_file_size_bytes: 64 << 10,
        max_bytes_for_level_base: 256 << 10,
        l0_compaction_trigger: 2,
        sync: SyncMode::None,
        compression: tidemark::lsm::Compression::None,
        ..Options::default()
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        // A table compaction deletes between the listing and the stat no longer counts.
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    let mut v = format!("{i}-{round}-").into_bytes();
    v.resize(100, b'v');
    v
}

#[test]
fn overwrites_settle_within_bounded_space_amplification() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    const KEYS: u32 = 10_000;
    let live_bytes = u64::from(KEYS) * (10 + 100);
    let mut peak_ratio: f64 = 0.0;
    for round in 0..30 {
        for i in 0..KEYS {
            db.put(format!("key{i:06}"), value(i, round)).unwrap();
        }
        db.flush().unwrap();
        let ratio = dir_bytes(dir.path()) as f64 / live_bytes as f64;
        peak_ratio = peak_ratio.max(ratio);
    }
    // Let background compaction catch up, then measure the settled size.
    let settled = wait_settled(&db, dir.path());
    let ratio = settled as f64 / live_bytes as f64;
    let stats = db.stats();
    eprintln!(
        "space amplification: settled {ratio:.2}, peak {peak_ratio:.2}; write amplification {:.2}; {} compactions",
        stats.write_amplification(),
        stats.compactions
    );
    assert!(stats.compactions > 10, "{stats:?}");
    assert!(
        ratio < 2.5,
        "settled space amplification {ratio:.2} (peak {peak_ratio:.2})"
    );
    assert!(peak_ratio < 6.0, "peak space amplification {peak_ratio:.2}");
    assert!(stats.write_amplification() > 1.0);
    for i in (0..KEYS).step_by(997) {
        assert_eq!(db.get(format!("key{i:06}")).unwrap(), Some(value(i, 29)));
    }
}

fn wait_settled(db: &Db, dir: &std::path::Path) -> u64 {
    let mut last = 0;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = dir_bytes(dir);
        let s = db.stats();
        if now == last && s.levels[0].files < 2 {
            return now;
        }
        last = now;
    }
    last
}

#[test]
fn deleted_ranges_are_reclaimed_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    for i in 0..20_000u32 {
        db.put(format!("key{i:06}"), value(i, 0)).unwrap();
    }
    db.compact_range().unwrap();
    let full = dir_bytes(dir.path());
    for i in 0..18_000u32 {
        db.delete(format!("key{i:06}")).unwrap();
    }
    db.compact_range().unwrap();
    let after = dir_bytes(dir.path());
    assert!(
        after * 5 < full,
        "after deleting 90%: {after} of {full} bytes remain"
    );
    assert_eq!(db.scan::<&[u8]>(..).unwrap().count(), 2000);
    assert_eq!(db.get("key000001").unwrap(), None);
    assert_eq!(db.get("key019999").unwrap(), Some(value(19_999, 0)));
}

#[test]
fn failed_compaction_makes_store_read_only_and_reopen_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let fault = FaultFs::new();
    let with_fault = || Options {
        fs: fault.clone() as Arc<dyn tidemark::fs::FileSystem>,
        wal: true,
        ..opts()
    };
    let db = Db::open(dir.path(), with_fault()).unwrap();
    for i in 0..3000u32 {
        db.put(format!("key{i:06}"), value(i, 0)).unwrap();
    }
    db.flush().unwrap();
    // Every table written from now on fails with ENOSPC: the next compaction (or flush)
    // hits it. Acknowledged writes continue into the WAL until the error is recorded.
    fault.add_rule(FaultRule::always(FaultOp::Write, FaultError::Enospc).on_path(".sst"));
    let mut acked = 3000u32;
    let mut first_err = None;
    for i in 3000..60_000u32 {
        match db.put(format!("key{i:06}"), value(i, 0)) {
            Ok(()) => acked = i + 1,
            Err(e) => {
                first_err = Some(e);
                break;
            }
        }
    }
    let err = first_err.expect("writes kept succeeding although every table write fails");
    assert!(matches!(err, Error::ReadOnly(_)), "{err}");
    assert_eq!(
        err.io_kind(),
        Some(std::io::ErrorKind::StorageFull),
        "{err}"
    );
    assert!(
        err.to_string().contains(".sst"),
        "error names the file: {err}"
    );
    let bg = db.background_error().expect("background error recorded");
    assert_eq!(bg.io_kind(), Some(std::io::ErrorKind::StorageFull));
    // Reads still work while read-only.
    assert_eq!(db.get("key000001").unwrap(), Some(value(1, 0)));
    match db.put("more", "x") {
        Err(Error::ReadOnly(inner)) => {
            assert_eq!(inner.io_kind(), Some(std::io::ErrorKind::StorageFull))
        }
        other => panic!("{other:?}"),
    }
    drop(db);
    fault.clear_rules();
    let db = Db::open(dir.path(), with_fault()).unwrap();
    for i in 0..acked {
        assert_eq!(
            db.get(format!("key{i:06}")).unwrap(),
            Some(value(i, 0)),
            "acknowledged write {i} lost"
        );
    }
    db.compact_range().unwrap();
    assert_eq!(db.scan::<&[u8]>(..).unwrap().count() as u32, acked);
}

#[test]
fn stalls_are_counted_when_level0_falls_behind() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        memtable_size_bytes: 4 << 10,
        l0_compaction_trigger: 1,
        l0_slowdown_writes_trigger: 1,
        l0_stop_writes_trigger: 2,
        ..opts()
    };
    let db = Db::open(dir.path(), o).unwrap();
    for i in 0..20_000u32 {
        db.put(format!("key{i:06}"), value(i, 0)).unwrap();
    }
    let s = db.stats();
    assert!(s.slowdowns + s.stops > 0, "{s:?}");
    assert!(
        s.levels[0].files <= 2,
        "L0 kept below the stop trigger: {s:?}"
    );
}

/// Removes values starting with `x`, rewrites values starting with `c`.
#[derive(Debug)]
struct PrefixFilter;

impl tidemark::lsm::CompactionFilter for PrefixFilter {
    fn filter(&self, _level: usize, _key: &[u8], value: &[u8]) -> tidemark::lsm::FilterDecision {
        match value.first() {
            Some(b'x') => tidemark::lsm::FilterDecision::Remove,
            Some(b'c') => tidemark::lsm::FilterDecision::Change(b"changed".to_vec()),
            _ => tidemark::lsm::FilterDecision::Keep,
        }
    }
}

/// The compaction filter sees the newest value of each key: a removed value becomes a
/// tombstone (no older value comes back), a changed one is rewritten, and nothing changes
/// for an open snapshot.
#[test]
fn compaction_filter_removes_and_changes_without_resurrecting_older_values() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = tidemark::lsm::Options {
        compaction_filter: Some(std::sync::Arc::new(PrefixFilter)),
        ..tidemark::lsm::Options::default()
    };
    let db = tidemark::lsm::Db::open(tmp.path(), opts).unwrap();
    for i in 0..100u32 {
        db.put(format!("k{i:03}"), format!("old-{i}")).unwrap();
    }
    db.compact_range().unwrap(); // the old values at the bottom
    for i in 0..100u32 {
        let v = match i % 3 {
            0 => format!("x-{i}"),
            1 => format!("c-{i}"),
            _ => format!("keep-{i}"),
        };
        db.put(format!("k{i:03}"), v).unwrap();
    }
    // A snapshot holds the filter back: it still sees every value.
    let snap = db.snapshot();
    db.compact_range().unwrap();
    assert_eq!(db.stats().compaction_filter_removed, 0);
    assert_eq!(snap.get(b"k000").unwrap(), Some(b"x-0".to_vec()));
    drop(snap);
    db.compact_range().unwrap();
    let s = db.stats();
    assert_eq!(s.compaction_filter_removed, 34);
    assert_eq!(s.compaction_filter_changed, 33);
    for i in 0..100u32 {
        let want = match i % 3 {
            0 => None,
            1 => Some(b"changed".to_vec()),
            _ => Some(format!("keep-{i}").into_bytes()),
        };
        assert_eq!(db.get(format!("k{i:03}")).unwrap(), want, "k{i:03}");
    }
    let scanned = db.iter().unwrap().count();
    assert_eq!(scanned, 66);
}

/// Removes every value (slowly, so a snapshot can be opened while it runs).
#[derive(Debug)]
struct SlowRemoveAll;

impl tidemark::lsm::CompactionFilter for SlowRemoveAll {
    fn filter(&self, _level: usize, _key: &[u8], _value: &[u8]) -> tidemark::lsm::FilterDecision {
        std::thread::sleep(std::time::Duration::from_micros(200));
        tidemark::lsm::FilterDecision::Remove
    }
}

/// A snapshot opened while a filtering compaction runs keeps seeing every value (the
/// compaction's output is dropped), and a manual compaction with a filter reaches every
/// file of the last level, not only those under the level above.
#[test]
fn compaction_filter_respects_snapshots_opened_meanwhile_and_reaches_the_whole_last_level() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = |filter: bool| tidemark::lsm::Options {
        compaction_filter: filter.then(|| {
            std::sync::Arc::new(SlowRemoveAll)
                as std::sync::Arc<dyn tidemark::lsm::CompactionFilter>
        }),
        target_file_size_bytes: 16 << 10,
        ..tidemark::lsm::Options::default()
    };
    {
        let db = tidemark::lsm::Db::open(tmp.path(), opts(false)).unwrap();
        for i in 0..2000u32 {
            db.put(format!("k{i:05}"), [b'v'; 40]).unwrap();
        }
        db.compact_range().unwrap(); // many files in the last level
        db.put("k00000", "newer").unwrap(); // a little data above them, at one end
    }
    let db = std::sync::Arc::new(tidemark::lsm::Db::open(tmp.path(), opts(true)).unwrap());
    let d2 = db.clone();
    let compaction = std::thread::spawn(move || d2.compact_range());
    std::thread::sleep(std::time::Duration::from_millis(50));
    let snap = db.snapshot();
    compaction.join().unwrap().unwrap();
    for i in (0..2000u32).step_by(97) {
        assert!(
            snap.get(format!("k{i:05}").as_bytes()).unwrap().is_some(),
            "k{i:05} vanished under an open snapshot"
        );
    }
    assert!(db.stats().compaction_filter_discarded >= 1);
    drop(snap);
    db.compact_range().unwrap();
    assert_eq!(
        db.iter().unwrap().count(),
        0,
        "the filter met every file of the last level"
    );
}

fn level_of_each_file(db: &Db) -> Vec<(usize, tidemark::lsm::FileNumber)> {
    let mut files: Vec<_> = db
        .live_files()
        .unwrap()
        .files()
        .into_iter()
        .map(|f| (f.level, f.number))
        .collect();
    files.sort_by_key(|&(_, n)| n);
    files
}

/// Level-0 files that overlap nothing below (nor each other) move down as they are: the
/// same file numbers one level lower, no byte written by compaction; reopened, the store
/// holds the same files and every value.
/// With static level sizes they go to level 1; with dynamic sizes (the default) to the
/// base level, the last level of a store this small.
#[test]
fn non_overlapping_files_move_down_without_being_rewritten() {
    move_down_without_rewriting(false, 1);
    move_down_without_rewriting(true, Options::default().num_levels - 1);
}

fn move_down_without_rewriting(dynamic: bool, level_below: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Memtables large enough that only the explicit flushes make tables.
    let opts = || Options {
        l0_compaction_trigger: 2,
        memtable_size_bytes: 1 << 20,
        target_file_size_bytes: 1 << 20,
        max_bytes_for_level_base: 64 << 20,
        level_compaction_dynamic_level_bytes: dynamic,
        ..opts()
    };
    let db = Db::open(dir.path(), opts()).unwrap();
    // Two flushes of disjoint key ranges (ascending keys, as a sequential load writes).
    for part in 0..2u32 {
        for i in part * 500..(part + 1) * 500 {
            db.put(format!("key{i:06}"), value(i, 0)).unwrap();
        }
        db.flush().unwrap();
    }
    db.wait_for_compactions().unwrap();
    let s = db.stats();
    assert!(s.trivial_moves >= 1, "{s:?}");
    assert_eq!(s.compaction_bytes_written, 0, "a move writes no table");
    assert_eq!(s.levels[0].files, 0);
    let files = level_of_each_file(&db);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files.iter().all(|&(level, _)| level == level_below),
        "{files:?}"
    );
    // A third range: moved again, beside the others.
    for i in 1000..1500u32 {
        db.put(format!("key{i:06}"), value(i, 0)).unwrap();
    }
    db.flush().unwrap();
    for i in 1500..2000u32 {
        db.put(format!("key{i:06}"), value(i, 0)).unwrap();
    }
    db.flush().unwrap();
    db.wait_for_compactions().unwrap();
    assert_eq!(db.stats().compaction_bytes_written, 0);
    let files = level_of_each_file(&db);
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        files.iter().all(|&(level, _)| level == level_below),
        "{files:?}"
    );
    drop(db);

    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(
        level_of_each_file(&db),
        files,
        "the moves are in the manifest"
    );
    for i in (0..2000u32).step_by(37) {
        assert_eq!(db.get(format!("key{i:06}")).unwrap(), Some(value(i, 0)));
    }
    assert_eq!(db.iter().unwrap().count(), 2000);
}

/// Overlapping level-0 files are merged, not moved.
#[test]
fn overlapping_files_are_merged_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_size_bytes: 1 << 20,
        ..opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for round in 0..2u32 {
        for i in 0..500u32 {
            db.put(format!("key{i:06}"), value(i, round)).unwrap();
        }
        db.flush().unwrap();
    }
    db.wait_for_compactions().unwrap();
    let s = db.stats();
    assert_eq!(s.trivial_moves, 0, "{s:?}");
    assert!(s.compaction_bytes_written > 0);
    for i in (0..500u32).step_by(7) {
        assert_eq!(db.get(format!("key{i:06}")).unwrap(), Some(value(i, 1)));
    }
}

/// A full compaction merges every level in one pass: it writes each live byte once, and
/// leaves one sorted run.
#[test]
fn full_compaction_writes_the_live_data_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    for round in 0..4u32 {
        for i in 0..4000u32 {
            let k = (i * 7919 + round) % 4000;
            db.put(format!("key{k:06}"), value(k, round)).unwrap();
        }
    }
    db.flush().unwrap();
    db.wait_for_compactions().unwrap();
    let before = db.stats();
    assert!(
        before.levels.iter().filter(|l| l.files > 0).count() > 1,
        "the test wants data on more than one level: {before:?}"
    );
    db.compact_range().unwrap();
    let after = db.stats();
    let written = after.compaction_bytes_written - before.compaction_bytes_written;
    let live = after.total_table_bytes();
    assert_eq!(
        written, live,
        "a full compaction writes the live tables once"
    );
    assert_eq!(after.levels.iter().filter(|l| l.files > 0).count(), 1);
    // Already one run: a second full compaction has nothing to do.
    db.compact_range().unwrap();
    assert_eq!(
        db.stats().compaction_bytes_written,
        after.compaction_bytes_written
    );
    assert_eq!(db.iter().unwrap().count(), 4000);
}
