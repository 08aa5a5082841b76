//! Crash test: a child process writes and is SIGKILLed at random moments; after each kill
//! the store must hold every acknowledged write and nothing that was never written. It
//! runs with per-write sync and with no sync at all: a process crash (unlike a power cut)
//! loses nothing that was acknowledged in either mode.
//!
//! The default suite runs 20 kill points per mode; set `TIDEMARK_CRASH_ITERATIONS` for
//! more.

mod common;

use std::time::{Duration, Instant};

use tidemark::lsm::{Db, Options, SyncMode, WriteBatch};

const CHILD_ENV: &str = "TIDEMARK_CRASH_CHILD_DIR";
const SYNC_ENV: &str = "TIDEMARK_CRASH_CHILD_SYNC";

fn opts(sync: SyncMode) -> Options {
    Options {
        sync,
        memtable_size_bytes: 16 << 10,
        target_file_size_bytes: 16 << 10,
        max_bytes_for_level_base: 64 << 10,
        l0_compaction_trigger: 2,
        ..Options::default()
    }
}

fn value_for(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(20 + (i % 200) as usize, b'a' + (i % 26) as u8);
    v
}

/// Batch `n` writes keys `k(n, 0..3)`; a single put otherwise.
fn keys_of(n: u64) -> Vec<Vec<u8>> {
    if n % 5 == 0 {
        (0..3)
            .map(|j| format!("b{n:08}-{j}").into_bytes())
            .collect()
    } else {
        vec![format!("k{n:08}").into_bytes()]
    }
}

/// The child: writes forever, printing `ack N` after write N is acknowledged. Not a test:
/// the crash tests run it as their child process.
#[test]
#[ignore = "child process of the sigkill tests of this file"]
fn crash_child_writer() {
    let dir = std::env::var(CHILD_ENV)
        .expect("crash_child_writer is the child process of the sigkill tests, not a test");
    let sync = match std::env::var(SYNC_ENV).as_deref() {
        Ok("none") => SyncMode::None,
        _ => SyncMode::PerWrite,
    };
    let db = Db::open(&dir, opts(sync)).expect("child open");
    let start: u64 = std::env::var("TIDEMARK_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let stdout = std::io::stdout();
    for n in start.. {
        let keys = keys_of(n);
        if keys.len() == 1 && n % 7 != 3 {
            db.put(&keys[0], value_for(n)).expect("child put");
        } else {
            // One atomic write: the puts of `n` and, every seventh write, the delete of an
            // earlier key.
            let mut b = WriteBatch::new();
            for k in &keys {
                b.put(k, value_for(n));
            }
            if n % 7 == 3 {
                b.delete(format!("k{:08}", n - 2));
            }
            db.write(b).expect("child batch");
        }
        use std::io::Write;
        let mut out = stdout.lock();
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

/// Write `n + 2` deletes `k(n)` when `(n + 2) % 7 == 3` (a no-op when `n` was a batch).
fn deleted_by_later_write(n: u64) -> bool {
    (n + 2) % 7 == 3 && n % 5 != 0
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    sigkill_loses_no_acknowledged_write(SyncMode::PerWrite, "per-write");
}

#[test]
fn acknowledged_unsynced_writes_survive_sigkill() {
    sigkill_loses_no_acknowledged_write(SyncMode::None, "none");
}

fn sigkill_loses_no_acknowledged_write(sync: SyncMode, sync_name: &str) {
    let iterations = common::crash_iterations(20);
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let mut next: u64 = 0;
    // Writes in flight when a child was killed: each either happened whole or not at all.
    let mut unknown: std::collections::HashMap<u64, bool> = std::collections::HashMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for iteration in 0..iterations {
        let run_ms = 20 + common::next_seed(&mut seed) % 300;
        let mut child = common::ChildRun::spawn(
            "crash_child_writer",
            &[
                (CHILD_ENV, db_dir.display().to_string()),
                (SYNC_ENV, sync_name.to_string()),
                ("TIDEMARK_CRASH_START", next.to_string()),
            ],
            "ack ",
        );
        let ack = |line: String| line["ack ".len()..].parse::<u64>().unwrap();
        // Wait for the first acknowledgement, then let it run, then kill -9.
        let first = child.lines.recv_timeout(Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_millis(run_ms);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill();
        let mut last_acked = first.ok().map(ack);
        while let Ok(line) = child.lines.try_recv() {
            last_acked = Some(ack(line));
        }
        let db = Db::open(&db_dir, opts(sync)).unwrap();
        if std::env::var("TIDEMARK_CRASH_DEBUG").is_ok() {
            let keys: Vec<String> = db
                .scan::<&[u8]>(..)
                .unwrap()
                .map(|r| String::from_utf8(r.unwrap().0).unwrap())
                .collect();
            eprintln!("iteration {iteration}: start {next} last {last_acked:?} present {} first {:?} last {:?}", keys.len(), keys.first(), keys.last());
            eprintln!(
                "{:?}",
                std::fs::read_dir(&db_dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect::<Vec<_>>()
            );
        }
        let Some(last) = last_acked else {
            panic!("iteration {iteration}: the child acknowledged nothing");
        };
        // Every acknowledged write is there with its value (or deleted by a later ack).
        let happened = |n: u64| unknown.get(&n).copied().unwrap_or(n <= last);
        for n in 0..=last {
            if !happened(n) {
                continue;
            }
            for k in keys_of(n) {
                let got = db.get(&k).unwrap();
                if deleted_by_later_write(n) && n + 2 == last + 1 {
                    // Deleted by the write in flight: either outcome is allowed.
                    assert!(got.is_none() || got == Some(value_for(n)));
                } else if deleted_by_later_write(n) && happened(n + 2) {
                    assert_eq!(got, None, "iteration {iteration}: write {n} was deleted");
                } else {
                    assert_eq!(
                        got,
                        Some(value_for(n)),
                        "iteration {iteration}: acknowledged write {n} lost ({})",
                        String::from_utf8_lossy(&k)
                    );
                }
            }
        }
        // Nothing that was never written: at most the single in-flight write may exist.
        let in_flight = last + 1;
        for (k, _) in db.scan::<&[u8]>(..).unwrap().map(|r| r.unwrap()) {
            let s = String::from_utf8(k).unwrap();
            let n: u64 = s[1..9].parse().unwrap();
            assert!(
                n <= in_flight,
                "iteration {iteration}: key {s} was never written (last ack {last})"
            );
        }
        // The in-flight write is all-or-nothing.
        let present: Vec<bool> = keys_of(in_flight)
            .iter()
            .map(|k| db.get(k).unwrap().is_some())
            .collect();
        assert!(
            present.iter().all(|&p| p) || present.iter().all(|&p| !p),
            "batch {in_flight} half applied"
        );
        unknown.insert(in_flight, present[0]);
        next = in_flight + 1;
        drop(db);
    }
}
