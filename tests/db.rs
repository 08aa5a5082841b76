//! Scenarios of the store's public API: reads and writes, reopen, locking, snapshots,
//! scans, WAL recovery and its damage handling.

mod common;

use std::fs;
use std::path::Path;

use tidemark::lsm::{Db, Options, Snapshot, SyncMode, WalRecovery, WriteBatch};
use tidemark::Error;

fn small_opts() -> Options {
    Options {
        memtable_size_bytes: 4 << 10,
        target_file_size_bytes: 8 << 10,
        max_bytes_for_level_base: 32 << 10,
        l0_compaction_trigger: 2,
        sync: SyncMode::None,
        ..Options::default()
    }
}

/// Counts a writer thread out of a running count when it ends, even by a failed
/// assertion, so the threads that wait for the writers stop.
struct CountsOut<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for CountsOut<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Release);
    }
}

/// Spawns `writers` threads in `s`: thread `t` puts `kv(t, i)` for `i` in `0..per_writer`
/// and reads each write back as soon as it is acknowledged; each thread counts itself out
/// of `writing` when it ends.
fn spawn_writers_reading_back<'scope, 'env: 'scope>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    db: &'env Db,
    writing: &'env std::sync::atomic::AtomicU32,
    (writers, per_writer): (u32, u32),
    kv: impl Fn(u32, u32) -> (String, Vec<u8>) + Send + Copy + 'env,
) {
    for t in 0..writers {
        s.spawn(move || {
            let _done = CountsOut(writing);
            for i in 0..per_writer {
                let (k, v) = kv(t, i);
                db.put(&k, &v).unwrap();
                assert_eq!(
                    db.get(&k).unwrap(),
                    Some(v),
                    "{k}: an acknowledged write was not read back"
                );
            }
        });
    }
}

/// The number of keys `snap` holds under `prefix`, after checking that they are the first
/// ones a writer wrote, `key(0)`, `key(1)`, ... (its newest visible write, then every
/// earlier one: writes become visible in order).
fn assert_seen_without_gap(snap: &Snapshot, prefix: &str, key: impl Fn(usize) -> String) -> usize {
    let seen: Vec<_> = snap
        .prefix(prefix)
        .unwrap()
        .map(|kv| kv.unwrap().0)
        .collect();
    if let Some(last) = seen.last() {
        assert_eq!(
            last,
            &key(seen.len() - 1).into_bytes(),
            "{prefix}: writes seen with a gap"
        );
    }
    seen.len()
}

fn scan_all(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.scan::<&[u8]>(..).unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn put_get_delete_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        db.put(b"a", b"1").unwrap();
        db.put(b"b", b"2").unwrap();
        db.delete(b"a").unwrap();
        assert_eq!(db.get(b"a").unwrap(), None);
        assert_eq!(db.get(b"b").unwrap(), Some(b"2".to_vec()));
    }
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(db.get(b"a").unwrap(), None);
    assert_eq!(db.get(b"b").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn second_open_of_same_directory_fails_naming_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Db::open(dir.path(), Options::default()).unwrap();
    match Db::open(dir.path(), Options::default()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path().join("LOCK")),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn open_without_create_reports_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let opts = Options {
        create_if_missing: false,
        ..Options::default()
    };
    let e = Db::open(&missing, opts).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn batch_is_atomic_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut b = WriteBatch::new();
    b.put(b"k", b"1")
        .put(b"k", b"2")
        .delete(b"x")
        .put(b"y", b"3");
    db.write(b).unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"2".to_vec()));
    assert_eq!(scan_all(&db).len(), 2);
}

#[test]
fn snapshot_does_not_see_later_writes_across_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_opts()).unwrap();
    for i in 0..200u32 {
        db.put(format!("k{i:04}"), format!("old{i}")).unwrap();
    }
    let snap = db.snapshot();
    for i in 0..200u32 {
        if i % 2 == 0 {
            db.delete(format!("k{i:04}")).unwrap();
        } else {
            db.put(format!("k{i:04}"), format!("new{i}")).unwrap();
        }
    }
    db.put(b"zzz", b"late").unwrap();
    db.flush().unwrap();
    db.compact_range().unwrap();
    assert_eq!(snap.get(b"k0000").unwrap(), Some(b"old0".to_vec()));
    assert_eq!(db.get(b"k0000").unwrap(), None);
    assert_eq!(db.get(b"k0001").unwrap(), Some(b"new1".to_vec()));
    let old: Vec<_> = snap
        .scan::<&[u8]>(..)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(old.len(), 200);
    assert!(old.iter().all(|(_, v)| v.starts_with(b"old")));
    assert_eq!(scan_all(&db).len(), 101);
}

#[test]
fn range_and_prefix_scans_respect_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_opts()).unwrap();
    for k in ["a", "ab", "abc", "abd", "b", "b\u{ff}", "c"] {
        db.put(k, k).unwrap();
    }
    db.flush().unwrap();
    db.put(b"abe", b"abe").unwrap();
    let keys = |it: tidemark::lsm::DbIterator| -> Vec<String> {
        it.map(|r| String::from_utf8(r.unwrap().0).unwrap())
            .collect()
    };
    assert_eq!(keys(db.prefix(b"ab").unwrap()), ["ab", "abc", "abd", "abe"]);
    assert_eq!(
        keys(db.scan(b"abc".as_slice()..b"b".as_slice()).unwrap()),
        ["abc", "abd", "abe"]
    );
    assert_eq!(
        keys(db.scan(b"abd".as_slice()..=b"b".as_slice()).unwrap()),
        ["abd", "abe", "b"]
    );
    assert_eq!(
        keys(db.scan(b"b".as_slice()..).unwrap()),
        ["b", "b\u{ff}", "c"]
    );
    assert_eq!(keys(db.prefix(b"").unwrap()).len(), 8);
}

#[test]
fn many_writes_flush_compact_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small_opts()).unwrap();
        for i in 0..5000u32 {
            db.put(format!("key{:06}", (i * 7919) % 5000), format!("v{i}"))
                .unwrap();
        }
        let s = db.stats();
        assert!(s.flushes > 0, "{s:?}");
        assert!(s.compactions > 0, "{s:?}");
    }
    let db = Db::open(dir.path(), small_opts()).unwrap();
    let all = scan_all(&db);
    assert_eq!(all.len(), 5000);
    for w in all.windows(2) {
        assert!(w[0].0 < w[1].0);
    }
}

#[test]
fn wal_disabled_store_keeps_data_after_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        wal: false,
        ..small_opts()
    };
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        db.put(b"k", b"v").unwrap();
        db.close().unwrap();
    }
    assert!(!fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".wal")));
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"v".to_vec()));
}

fn wal_files(dir: &Path) -> Vec<std::path::PathBuf> {
    common::files_with_extension(dir, "wal")
}

/// Length of a log without the zeros it was extended with ahead of its writes.
fn logical_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Leaves a store whose only data is in its WAL (the process "crashed" after writing).
fn store_with_unflushed_wal(dir: &Path, n: u32) {
    let db = Db::open(dir, Options::default()).unwrap();
    for i in 0..n {
        db.put(format!("k{i:03}"), vec![b'v'; 100]).unwrap();
    }
    // Leak the store: no close, no flush, like a killed process (the lock goes with it).
    std::mem::forget(db);
}

#[test]
fn torn_tail_of_last_wal_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("db");
    store_with_unflushed_wal(&d, 20);
    let wal = wal_files(&d).pop().unwrap();
    let len = logical_len(&fs::read(&wal).unwrap()) as u64;
    // Cut the last record in half.
    fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 50)
        .unwrap();
    // The leaked store still holds the lock in this process: open a copy.
    let copy = dir.path().join("copy");
    copy_dir(&d, &copy);
    let db = Db::open(&copy, Options::default()).unwrap();
    assert_eq!(db.get(b"k018").unwrap(), Some(vec![b'v'; 100]));
    assert_eq!(db.get(b"k019").unwrap(), None);
}

#[test]
fn corrupt_wal_record_is_an_error_naming_file_and_offset_unless_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("db");
    store_with_unflushed_wal(&d, 20);
    let wal = wal_files(&d).pop().unwrap();
    let mut bytes = fs::read(&wal).unwrap();
    let mid = logical_len(&bytes) / 2;
    bytes[mid] ^= 0x10;
    fs::write(&wal, &bytes).unwrap();
    let copy = dir.path().join("copy");
    copy_dir(&d, &copy);
    let e = Db::open(&copy, Options::default()).unwrap_err();
    let msg = e.to_string();
    assert!(e.is_corruption(), "{msg}");
    assert!(msg.contains(".wal") && msg.contains("offset"), "{msg}");
    let opts = Options {
        wal_recovery: WalRecovery::PointInTime,
        ..Options::default()
    };
    let db = Db::open(&copy, opts).unwrap();
    assert_eq!(db.get(b"k000").unwrap(), Some(vec![b'v'; 100]));
    assert_eq!(db.get(b"k019").unwrap(), None);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn corrupt_manifest_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small_opts()).unwrap();
        for i in 0..300u32 {
            db.put(format!("k{i}"), b"v").unwrap();
        }
        db.flush().unwrap();
    }
    let manifest = common::manifest_path(dir.path());
    let mut bytes = fs::read(&manifest).unwrap();
    bytes[40] ^= 0x01;
    fs::write(&manifest, &bytes).unwrap();
    let e = Db::open(dir.path(), small_opts()).unwrap_err();
    assert!(e.to_string().contains("MANIFEST-"), "{e}");
}

#[test]
fn group_commit_from_many_threads_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(
        Db::open(
            dir.path(),
            Options {
                sync: SyncMode::GroupCommit,
                ..small_opts()
            },
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    db.put(format!("t{t}-{i:04}"), format!("{i}")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = db.stats();
    assert_eq!(s.writes, 800);
    assert!(s.wal_syncs <= 800);
    assert_eq!(scan_all(&db).len(), 800);
}

/// Unsynced writers insert in parallel; a reader's snapshot still sees whole batches and,
/// for each writer, a prefix of its writes (numbers become visible in order), across
/// memtable switches, flushes and compactions; every write survives a reopen.
#[test]
fn unsynced_writers_in_parallel_publish_whole_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    const THREADS: u32 = 4;
    const PER_THREAD: u32 = 3000;
    {
        let db = Db::open(dir.path(), small_opts()).unwrap();
        let writing = std::sync::atomic::AtomicU32::new(THREADS);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (db, writing) = (&db, &writing);
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        let mut b = WriteBatch::new();
                        b.put(format!("a{t}-{i:05}"), format!("{i}"));
                        b.put(format!("b{t}-{i:05}"), format!("{i}"));
                        db.write(b).unwrap();
                    }
                    writing.fetch_sub(1, std::sync::atomic::Ordering::Release);
                });
            }
            s.spawn(|| {
                let mut checks = 0;
                while writing.load(std::sync::atomic::Ordering::Acquire) > 0 || checks == 0 {
                    checks += 1;
                    let snap = db.snapshot();
                    for t in 0..THREADS {
                        let a = assert_seen_without_gap(&snap, &format!("a{t}-"), |i| {
                            format!("a{t}-{i:05}")
                        });
                        let b_count = snap.prefix(format!("b{t}-")).unwrap().count();
                        assert_eq!(a, b_count, "a batch seen in part (thread {t})");
                    }
                }
            });
        });
        let s = db.stats();
        assert_eq!(s.writes, u64::from(THREADS * PER_THREAD));
        assert!(s.flushes > 0, "the test should cross memtable switches");
        assert_eq!(scan_all(&db).len() as u32, 2 * THREADS * PER_THREAD);
    }
    let db = Db::open(dir.path(), small_opts()).unwrap();
    assert_eq!(scan_all(&db).len() as u32, 2 * THREADS * PER_THREAD);
    for t in 0..THREADS {
        let k = format!("b{t}-{:05}", PER_THREAD - 1);
        assert_eq!(
            db.get(k).unwrap(),
            Some(format!("{}", PER_THREAD - 1).into_bytes())
        );
    }
}

/// Unsynced writers read their own writes back at once, and a reader sees every key's value
/// only grow, while memtables switch because they fill up and because of concurrent
/// flushes and pinned file sets: a write must be visible to a `get` from the moment it is
/// acknowledged, whichever memtable it went to.
#[test]
fn unsynced_writes_are_read_back_across_concurrent_memtable_switches() {
    use std::sync::atomic::{AtomicU32, Ordering};
    const WRITERS: u32 = 8;
    const KEYS: u32 = 16;
    const PER_WRITER: u32 = 2500;
    let dir = tempfile::tempdir().unwrap();
    // Room for many immutable memtables: writers seldom wait for a flush, so memtables
    // switch at the writers' pace.
    let opts = Options {
        max_immutable_memtables: 16,
        ..small_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let writing = AtomicU32::new(WRITERS);
    let key = |t: u32, k: u32| format!("w{t}-{k:02}");
    let value = |i: u32| format!("{i:08}").into_bytes();
    std::thread::scope(|s| {
        spawn_writers_reading_back(s, &db, &writing, (WRITERS, PER_WRITER), |t, i| {
            (key(t, i % KEYS), value(i))
        });
        // Flushes and pinned file sets switch the memtable while the writers write.
        s.spawn(|| {
            let mut n = 0u32;
            while writing.load(Ordering::Acquire) > 0 {
                n += 1;
                if n % 2 == 0 {
                    db.flush().unwrap();
                } else {
                    db.begin_live_files().unwrap().wait().unwrap();
                }
            }
        });
        // Every key's value only grows (each writer writes its keys in increasing order).
        s.spawn(|| {
            let mut seen = vec![None::<Vec<u8>>; (WRITERS * KEYS) as usize];
            while writing.load(Ordering::Acquire) > 0 {
                for t in 0..WRITERS {
                    for k in 0..KEYS {
                        let v = db.get(key(t, k)).unwrap();
                        let last = &mut seen[(t * KEYS + k) as usize];
                        assert!(v >= *last, "{}: read {v:?} after {last:?}", key(t, k));
                        *last = v;
                    }
                }
            }
        });
    });
    let s = db.stats();
    assert!(
        s.flushes > 10,
        "the test should cross many memtable switches"
    );
    for t in 0..WRITERS {
        for k in 0..KEYS {
            let last = (PER_WRITER - 1 - k) / KEYS * KEYS + k;
            assert_eq!(db.get(key(t, k)).unwrap(), Some(value(last)));
        }
    }
}

/// Many more unsynced writers than cores: writers lose their processor in the middle of
/// a write, and the ones numbered after them record their ranges and sleep until whoever
/// makes the stalled write visible publishes them all. Every write is read back by its
/// writer as soon as it is acknowledged, and a reader's snapshot sees each writer's writes
/// as a prefix (numbers become visible in order, none skipped, none lost).
#[test]
fn more_unsynced_writers_than_cores_publish_in_order_and_read_their_writes() {
    use std::sync::atomic::{AtomicU32, Ordering};
    const WRITERS: u32 = 16;
    const PER_WRITER: u32 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_size_bytes: 1 << 20,
        ..small_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let writing = AtomicU32::new(WRITERS);
    let key = |t: u32, i: u32| format!("w{t:02}-{i:05}");
    std::thread::scope(|s| {
        spawn_writers_reading_back(s, &db, &writing, (WRITERS, PER_WRITER), |t, i| {
            (key(t, i), i.to_le_bytes().to_vec())
        });
        s.spawn(|| {
            let mut checks = 0;
            while writing.load(Ordering::Acquire) > 0 || checks == 0 {
                checks += 1;
                let snap = db.snapshot();
                for t in 0..WRITERS {
                    assert_seen_without_gap(&snap, &format!("w{t:02}-"), |i| key(t, i as u32));
                }
            }
        });
    });
    assert_eq!(db.stats().writes, u64::from(WRITERS * PER_WRITER));
    assert_eq!(scan_all(&db).len() as u32, WRITERS * PER_WRITER);
}

#[test]
fn live_files_pin_a_consistent_set() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_opts()).unwrap();
    for i in 0..1000u32 {
        db.put(format!("k{i:05}"), vec![b'x'; 50]).unwrap();
    }
    let ticket = db.begin_live_files().unwrap();
    let seq = ticket.seq();
    db.put(b"after", b"1").unwrap();
    let live = ticket.wait().unwrap();
    assert_eq!(live.seq, seq);
    assert!(!live.files().is_empty());
    // Compaction may replace files, but pinned ones stay on disk while `live` lives.
    db.compact_range().unwrap();
    for f in live.files() {
        assert!(f.path.exists(), "{}", f.path.display());
        assert_eq!(fs::metadata(&f.path).unwrap().len(), f.size);
    }
}

#[test]
fn manifest_is_rolled_when_it_grows_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        max_manifest_bytes: 4096,
        ..small_opts()
    };
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        for i in 0..3000u32 {
            db.put(format!("k{i:05}"), vec![b'x'; 64]).unwrap();
        }
        db.flush().unwrap();
        assert!(db.stats().flushes > 20);
    }
    let manifests: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("MANIFEST-"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let size = fs::metadata(dir.path().join(&manifests[0])).unwrap().len();
    assert!(size < 3 * 4096, "manifest of {size} bytes");
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(scan_all(&db).len(), 3000);
}

#[test]
fn an_open_iterator_keeps_its_files_across_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_opts()).unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:05}"), format!("v{i}")).unwrap();
    }
    db.flush().unwrap();
    let mut it = db.iter().unwrap();
    let first = it.next().unwrap().unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:05}"), b"new").unwrap();
    }
    db.compact_range().unwrap();
    // The iterator reads the version it started with, from files compaction replaced.
    let rest: Vec<_> = it.map(|r| r.unwrap()).collect();
    assert_eq!(first, (b"k00000".to_vec(), b"v0".to_vec()));
    assert_eq!(rest.len(), 1999);
    assert!(rest.iter().all(|(_, v)| v.starts_with(b"v")));
}

#[test]
fn periodic_sync_mode_fsyncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        sync: SyncMode::Periodic(std::time::Duration::from_millis(20)),
        ..Options::default()
    };
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        db.put(b"k", b"v").unwrap();
        let before = db.stats().wal_syncs;
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            db.stats().wal_syncs > before,
            "no background fsync in 200 ms"
        );
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn periodic_sync_mode_fsyncs_the_logs_retired_at_a_memtable_switch() {
    // A memtable switch hands the old log to the sync thread, which fsyncs it at its next
    // tick with the current one: the old log's tail is not left unsynced until the flush.
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            sync: SyncMode::Periodic(std::time::Duration::from_millis(400)),
            memtable_size_bytes: 1024,
            ..Options::default()
        },
    )
    .unwrap();
    let before = db.stats().wal_syncs;
    // Ten writes of 2 KiB: each after the first finds the memtable full and switches it.
    for i in 0..10u32 {
        db.put(format!("k{i}"), vec![b'v'; 2048]).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let syncs = db.stats().wal_syncs - before;
    assert!(
        syncs >= 10,
        "{syncs} fsyncs: the nine retired logs and the current one should each be fsynced"
    );
}

#[test]
fn per_write_sync_fsyncs_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            sync: SyncMode::PerWrite,
            ..Options::default()
        },
    )
    .unwrap();
    let before = db.stats().wal_syncs;
    for i in 0..10u32 {
        db.put(i.to_be_bytes(), b"v").unwrap();
    }
    assert_eq!(db.stats().wal_syncs - before, 10);
}

#[test]
fn unsynced_log_across_many_presize_steps_replays_after_a_crash() {
    // SyncMode::None writes the log through a mapping of the zeros written ahead of it,
    // re-mapped at every 1 MiB step: records (and one batch larger than a step) that
    // cross the steps must all come back, with no close and no fsync.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("db");
    let opts = || Options {
        sync: SyncMode::None,
        memtable_size_bytes: 64 << 20,
        ..Options::default()
    };
    let value = |i: u32| vec![(i % 251) as u8; 10 + (i as usize * 37) % 3000];
    let db = Db::open(&d, opts()).unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:05}"), value(i)).unwrap();
    }
    let mut big = WriteBatch::new();
    for j in 0..3u32 {
        big.put(format!("big{j}"), vec![b'b' + j as u8; 600 << 10]);
    }
    db.write(big).unwrap();
    db.put("after", "big").unwrap();
    assert!(
        wal_files(&d)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum::<u64>()
            > 4 << 20
    );
    std::mem::forget(db);
    let copy = dir.path().join("copy");
    copy_dir(&d, &copy);
    let db = Db::open(&copy, opts()).unwrap();
    for i in 0..2000u32 {
        assert_eq!(
            db.get(format!("k{i:05}")).unwrap(),
            Some(value(i)),
            "k{i:05}"
        );
    }
    for j in 0..3u32 {
        assert_eq!(
            db.get(format!("big{j}")).unwrap(),
            Some(vec![b'b' + j as u8; 600 << 10])
        );
    }
    assert_eq!(db.get("after").unwrap(), Some(b"big".to_vec()));
}

/// Two stores with 64 MiB memtables sharing `budget`, each given 12,000 puts of 1 KB over
/// 6,000 keys (values ending in `a` and `b`): the stores, their directory, and the most
/// memtable bytes the budget held along the way.
fn two_stores_filled(
    budget: &std::sync::Arc<tidemark::lsm::MemoryBudget>,
) -> (tempfile::TempDir, Db, Db, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        Db::open(
            tmp.path().join(name),
            Options {
                sync: tidemark::lsm::SyncMode::None,
                memtable_size_bytes: 64 << 20,
                memory_budget: Some(budget.clone()),
                ..Options::default()
            },
        )
        .unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let value = vec![b'v'; 1000];
    let mut peak = 0;
    for i in 0..12_000u32 {
        let k = format!("key-{:06}", i % 6000);
        a.put(&k, [&value[..], b"a"].concat()).unwrap();
        b.put(&k, [&value[..], b"b"].concat()).unwrap();
        peak = peak.max(budget.memtable_bytes());
    }
    (tmp, a, b, peak)
}

/// A strict budget: writers wait for their store's pending flush instead of holding more
/// memtables, so the stores' memtables stay close to the limit.
#[test]
fn a_strict_memory_budget_keeps_memtables_within_its_limit() {
    let budget = tidemark::lsm::MemoryBudget::new_strict(8 << 20).unwrap();
    assert!(budget.is_strict());
    let (_tmp, a, b, peak) = two_stores_filled(&budget);
    let limit = budget.write_buffer_bytes();
    assert!(
        peak < limit + limit / 4,
        "memtables peaked at {peak} bytes for a limit of {limit}"
    );
    assert!(a.stats().flushes >= 3 && b.stats().flushes >= 3);
    for i in (0..6000u32).step_by(7) {
        let k = format!("key-{i:06}");
        assert_eq!(a.get(&k).unwrap().unwrap().last(), Some(&b'a'));
        assert_eq!(b.get(&k).unwrap().unwrap().last(), Some(&b'b'));
    }
}

/// Two stores sharing one memory budget: their memtables together stay near the budget's
/// write-buffer limit (each store flushes its own memtable when a write finds them over
/// it), far below their own memtable sizes; they read through one cache, whose blocks
/// never mix their files (both use the same file numbers).
#[test]
fn stores_sharing_a_memory_budget_stay_within_it_and_never_mix_blocks() {
    let budget = tidemark::lsm::MemoryBudget::new(8 << 20).unwrap();
    let (_tmp, a, b, peak) = two_stores_filled(&budget);
    let limit = budget.write_buffer_bytes();
    assert!(
        peak < 2 * limit,
        "memtables peaked at {peak} bytes for a limit of {limit}"
    );
    assert!(a.stats().flushes >= 3 && b.stats().flushes >= 3);
    a.compact_range().unwrap();
    b.compact_range().unwrap();
    for i in (0..6000u32).step_by(7) {
        let k = format!("key-{i:06}");
        assert_eq!(a.get(&k).unwrap().unwrap().last(), Some(&b'a'));
        assert_eq!(b.get(&k).unwrap().unwrap().last(), Some(&b'b'));
    }
    assert!(
        budget.cache().stats().inserts > 0,
        "reads went through the shared cache"
    );
    drop(a);
    drop(b);
    assert_eq!(
        budget.memtable_bytes(),
        0,
        "closed stores release their charge"
    );
}
