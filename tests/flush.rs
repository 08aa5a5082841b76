//! A flush writes a key overwritten many times in one memtable once, unless a snapshot
//! still reads an older version: then it keeps exactly the versions open snapshots see;
//! a compaction keeps the same versions.

use tidemark::lsm::{Compression, Db, Options, SyncMode};

fn opts() -> Options {
    Options {
        memtable_size_bytes: 16 << 20,
        compression: Compression::None,
        sync: SyncMode::None,
        compaction: false,
        ..Options::default()
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("key{k:06}").into_bytes()
}

/// Entries in the level-0 tables of `db`.
fn level0_entries(db: &Db) -> u64 {
    let live = db.live_files().expect("live files");
    live.manifest
        .new_files
        .iter()
        .filter(|f| f.level == 0)
        .map(|f| f.num_entries)
        .sum()
}

#[test]
fn overwrites_in_one_memtable_are_flushed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts()).expect("open");
    for round in 0..50u64 {
        for k in 0..100 {
            db.put(key(k), format!("v{round}")).expect("put");
        }
    }
    // A key whose newest version is a tombstone keeps it (older tables may hold a value).
    db.delete(key(7)).expect("delete");
    db.flush().expect("flush");
    assert_eq!(level0_entries(&db), 100, "one version per key");
    assert_eq!(db.get(key(3)).expect("get"), Some(b"v49".to_vec()));
    assert_eq!(db.get(key(7)).expect("get"), None);
    drop(db);
    let db = Db::open(dir.path(), opts()).expect("reopen");
    assert_eq!(db.get(key(99)).expect("get"), Some(b"v49".to_vec()));
    assert_eq!(db.get(key(7)).expect("get"), None);
}

#[test]
fn a_flush_keeps_the_versions_open_snapshots_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts()).expect("open");
    db.put(key(1), "a").expect("put");
    db.put(key(1), "b").expect("put");
    let at_b = db.snapshot();
    db.put(key(1), "c").expect("put");
    db.put(key(1), "d").expect("put");
    let at_d = db.snapshot();
    db.put(key(1), "e").expect("put");
    db.delete(key(2)).expect("delete");
    db.put(key(2), "x").expect("put");
    let at_x = db.snapshot();
    db.delete(key(2)).expect("delete");
    db.flush().expect("flush");
    // Kept: e (newest), d (at_d), b (at_b); x (at_x) and the newest tombstone of key 2.
    assert_eq!(level0_entries(&db), 5);
    assert_eq!(at_b.get(key(1)).expect("get"), Some(b"b".to_vec()));
    assert_eq!(at_d.get(key(1)).expect("get"), Some(b"d".to_vec()));
    assert_eq!(at_x.get(key(1)).expect("get"), Some(b"e".to_vec()));
    assert_eq!(at_x.get(key(2)).expect("get"), Some(b"x".to_vec()));
    assert_eq!(db.get(key(1)).expect("get"), Some(b"e".to_vec()));
    assert_eq!(db.get(key(2)).expect("get"), None);
    drop((at_b, at_d, at_x));
    // With no snapshot open, the next memtable's overwrites collapse again.
    db.put(key(1), "f").expect("put");
    db.put(key(1), "g").expect("put");
    db.flush().expect("flush");
    assert_eq!(level0_entries(&db), 6);
    assert_eq!(db.get(key(1)).expect("get"), Some(b"g".to_vec()));
}

#[test]
fn a_compaction_keeps_one_version_per_snapshot_stripe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts()).expect("open");
    // Versions of key 1 spread over four level-0 tables, with snapshots between them.
    db.put(key(1), "a").expect("put");
    db.flush().expect("flush");
    db.put(key(1), "b").expect("put");
    let at_b = db.snapshot();
    db.flush().expect("flush");
    db.put(key(1), "c").expect("put");
    db.flush().expect("flush");
    db.put(key(1), "d").expect("put");
    let at_d = db.snapshot();
    db.put(key(1), "e").expect("put");
    db.delete(key(2)).expect("delete");
    db.flush().expect("flush");
    db.compact_range().expect("full compaction");
    // Kept: e (newest), d (at_d), b (at_b), and key 2's tombstone (newer than both
    // snapshots, so not seen by every reader).
    assert_eq!(level0_entries(&db), 0);
    let live = db.live_files().expect("live files");
    let entries: u64 = live.manifest.new_files.iter().map(|f| f.num_entries).sum();
    assert_eq!(entries, 4, "e, d, b and key 2's tombstone");
    assert_eq!(at_b.get(key(1)).expect("get"), Some(b"b".to_vec()));
    assert_eq!(at_d.get(key(1)).expect("get"), Some(b"d".to_vec()));
    assert_eq!(db.get(key(1)).expect("get"), Some(b"e".to_vec()));
    drop((at_b, at_d));
    // (A full compaction leaves a store already in one run of the last level alone: give
    // it a new table to merge.)
    db.put(key(3), "z").expect("put");
    db.compact_range().expect("full compaction");
    let live = db.live_files().expect("live files");
    let entries: u64 = live.manifest.new_files.iter().map(|f| f.num_entries).sum();
    assert_eq!(
        entries, 2,
        "e and z once no snapshot is open (the tombstone dropped)"
    );
    assert_eq!(db.get(key(1)).expect("get"), Some(b"e".to_vec()));
    assert_eq!(db.get(key(2)).expect("get"), None);
}

/// Sequence numbers of every table, as (smallest, largest), in level order.
fn table_seqs(db: &Db) -> Vec<(u64, u64)> {
    let live = db.live_files().expect("live files");
    live.manifest
        .new_files
        .iter()
        .map(|f| (f.smallest_seq.0, f.largest_seq.0))
        .collect()
}

#[test]
fn puts_every_reader_sees_go_to_the_bottom_with_sequence_number_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts()).expect("open");
    for k in 0..100 {
        db.put(key(k), "old").expect("put");
    }
    let at_old = db.snapshot();
    for k in 0..50 {
        db.put(key(k), "new").expect("put");
    }
    db.flush().expect("flush");
    db.compact_range().expect("full compaction");
    // The newer versions of keys 0-49 are not seen by `at_old`: they keep their numbers;
    // the versions `at_old` reads are seen by every reader, and go to zero.
    let seqs = table_seqs(&db);
    assert_eq!(seqs.len(), 1, "{seqs:?}");
    assert_eq!(seqs[0], (0, 150), "{seqs:?}");
    assert_eq!(at_old.get(key(10)).expect("get"), Some(b"old".to_vec()));
    assert_eq!(db.get(key(10)).expect("get"), Some(b"new".to_vec()));
    assert_eq!(db.get(key(80)).expect("get"), Some(b"old".to_vec()));
    drop(at_old);
    // A newer put of a zeroed key wins over it, in level 0 and after the next compaction.
    db.put(key(80), "newest").expect("put");
    db.flush().expect("flush");
    assert_eq!(db.get(key(80)).expect("get"), Some(b"newest".to_vec()));
    db.compact_range().expect("full compaction");
    assert_eq!(
        table_seqs(&db),
        vec![(0, 0)],
        "no snapshot: every entry at zero"
    );
    let snap = db.snapshot();
    assert_eq!(snap.get(key(80)).expect("get"), Some(b"newest".to_vec()));
    assert_eq!(db.get(key(10)).expect("get"), Some(b"new".to_vec()));
    assert_eq!(db.get(key(90)).expect("get"), Some(b"old".to_vec()));
    let all: Vec<_> = db
        .iter()
        .expect("iter")
        .map(|r| r.expect("entry"))
        .collect();
    assert_eq!(all.len(), 100);
    drop((snap, db));
    let db = Db::open(dir.path(), opts()).expect("reopen");
    assert_eq!(db.get(key(80)).expect("get"), Some(b"newest".to_vec()));
    // New writes still get numbers above every number ever handed out.
    db.put(key(5), "later").expect("put");
    db.flush().expect("flush");
    let seqs = table_seqs(&db);
    assert!(seqs.iter().any(|&(lo, _)| lo > 150), "{seqs:?}");
    assert_eq!(db.get(key(5)).expect("get"), Some(b"later".to_vec()));
}
