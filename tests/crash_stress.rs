//! The crash stress tool (`tidemark-stress`) on short runs: for each sync mode, with and
//! without checkpoints and retention running, a writer is SIGKILLed again and again on one
//! store and the store is verified against the expected state after every kill; two runs
//! also let writers die at kill points inside the store. Then proof that the verifier can
//! fail: a store that lost a write, holds a stale value or half a batch makes `run` exit 3.
//!
//! `TIDEMARK_STRESS_KILLS` sets the kills of each crash test (defaults below, 550 in all);
//! `TIDEMARK_STRESS_SEED` shifts the fixed seeds, for other choices of kill moments, kill
//! points and memtable sizes. Long runs: see the README.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tidemark::lsm::{Db, Options};

const EXE: &str = env!("CARGO_BIN_EXE_tidemark-stress");

fn kills(default: u64) -> u64 {
    std::env::var("TIDEMARK_STRESS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `crashtest` with `args` in a fresh directory; on failure the directory is kept and
/// the driver's report shown.
fn crashtest(default_kills: u64, seed: u64, args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let kills = kills(default_kills).to_string();
    let seed = std::env::var("TIDEMARK_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(seed, |base| base.wrapping_add(seed))
        .to_string();
    let out = Command::new(EXE)
        .args(["crashtest", "--dir"])
        .arg(&run)
        .args([
            "--kills",
            &kills,
            "--seed",
            &seed,
            "--keys-per-thread",
            "500",
        ])
        .args(["--kill-point-timeout-ms", "1000"])
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if !out.status.success() {
        let kept = dir.keep();
        panic!(
            "crashtest {args:?} failed ({}); directory kept at {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            out.status,
            kept.display()
        );
    }
    assert!(stdout.contains("crashtest passed"), "{stdout}");
    // The summary names the kills; the run is not vacuous.
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("kills "))
        .unwrap_or_else(|| panic!("no kills line in {stdout}"));
    let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n >= kills.parse().unwrap(), "{stdout}");
    eprintln!("{stdout}");
}

#[test]
fn kills_with_sync_none() {
    crashtest(60, 11, &["--sync", "none", "--threads", "2"]);
}

#[test]
fn kills_with_sync_none_and_checkpoints() {
    let args = ["--sync", "none", "--checkpoints", "--retained", "2"];
    crashtest(50, 12, &args);
}

#[test]
fn kills_with_periodic_sync() {
    crashtest(50, 13, &["--sync", "periodic:20", "--threads", "2"]);
}

#[test]
fn kills_with_periodic_sync_and_checkpoints() {
    let args = ["--sync", "periodic:50", "--checkpoints", "--retained", "3"];
    crashtest(50, 14, &args);
}

#[test]
fn kills_with_group_commit() {
    crashtest(50, 15, &["--sync", "group"]);
}

#[test]
fn kills_with_group_commit_and_checkpoints() {
    let args = ["--sync", "group", "--checkpoints", "--retained", "1"];
    crashtest(50, 16, &args);
}

#[test]
fn kills_with_per_write_sync() {
    crashtest(50, 17, &["--sync", "per-write", "--threads", "3"]);
}

#[test]
fn kills_with_per_write_sync_and_checkpoints() {
    let args = ["--sync", "per-write", "--checkpoints", "--retained", "2"];
    crashtest(50, 18, &args);
}

#[test]
fn kills_at_kill_points_with_checkpoints() {
    let args = ["--sync", "none", "--checkpoints", "--kill-points"];
    crashtest(80, 19, &args);
}

#[test]
fn kills_at_kill_points_with_group_commit() {
    let args = ["--sync", "group", "--threads", "2", "--kill-points"];
    crashtest(60, 20, &args);
}

// The verifier can fail.

const THREADS: u64 = 2;
const KEYS: u64 = 40;

/// `run` on `dir` (store `db`, expected state `expected`, checkpoints in `checkpoints`
/// when that directory exists) for `ops` operations per thread.
fn run(dir: &Path, ops: u64) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.arg("run")
        .arg("--db")
        .arg(dir.join("db"))
        .arg("--expected")
        .arg(dir.join("expected"))
        .args(["--threads", &THREADS.to_string()])
        .args(["--keys-per-thread", &KEYS.to_string(), "--seed", "5"])
        .args(["--ops", &ops.to_string()]);
    if dir.join("checkpoints").exists() {
        cmd.arg("--checkpoints").arg(dir.join("checkpoints"));
    }
    cmd.output().unwrap()
}

fn run_ok(dir: &Path, ops: u64) {
    let out = run(dir, ops);
    assert!(
        out.status.success(),
        "run --ops {ops}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
}

/// Runs the verification and expects it to fail naming `needle`.
fn run_fails(dir: &Path, needle: &str) -> String {
    let out = run(dir, 0);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected exit 3; stderr:\n{stderr}"
    );
    assert!(stderr.contains("VERIFICATION FAILED"), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    stderr
}

/// The expected-state file's layout (see `src/bin/tidemark_stress/expected.rs`).
fn slot_offset(t: u64, k: u64) -> usize {
    (64 + t * (16 + 16 * KEYS) + 16 + 16 * k) as usize
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn set_word(b: &mut [u8], at: usize, w: u64) {
    b[at..at + 8].copy_from_slice(&w.to_le_bytes());
}

/// Thread 0's keys whose committed word is a put, with the op that put them.
fn committed_puts(expected: &Path) -> Vec<(u64, u64)> {
    let b = std::fs::read(expected).unwrap();
    (0..KEYS)
        .filter_map(|k| {
            let w = word(&b, slot_offset(0, k));
            (w != 0 && w & 1 == 0).then(|| (k, (w >> 1) - 1))
        })
        .collect()
}

fn store(dir: &Path) -> PathBuf {
    dir.join("db")
}

#[test]
fn verifier_catches_a_tampered_expected_state() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(dir.path(), 300);
    run_ok(dir.path(), 0); // an untouched store verifies
    let expected = dir.path().join("expected");
    let (k, n) = committed_puts(&expected)[0];
    let mut b = std::fs::read(&expected).unwrap();
    // Claim a later op put the key.
    set_word(&mut b, slot_offset(0, k), (n + 2) << 1);
    std::fs::write(&expected, &b).unwrap();
    let stderr = run_fails(
        dir.path(),
        &format!("key t0-{k}: the store shows the value of op {n}"),
    );
    assert!(stderr.contains(&format!("put by op {}", n + 1)), "{stderr}");
}

#[test]
fn verifier_catches_a_half_applied_batch() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(dir.path(), 300);
    let expected = dir.path().join("expected");
    let puts = committed_puts(&expected);
    let ((a, na), (b_key, _)) = (puts[0], puts[1]);
    let mut b = std::fs::read(&expected).unwrap();
    // Pretend one op was in flight on keys a and b: a shows its write, b does not.
    let op = (na + 1) << 1;
    set_word(&mut b, slot_offset(0, a), op + (1 << 20)); // committed: something older
    set_word(&mut b, slot_offset(0, a) + 8, op); // pending: what a shows
    set_word(&mut b, slot_offset(0, b_key) + 8, op); // pending: b does not show it
    std::fs::write(&expected, &b).unwrap();
    run_fails(
        dir.path(),
        &format!("op {na} of thread 0 is half applied: t0-{a} show its writes, t0-{b_key} do not"),
    );
}

#[test]
fn verifier_catches_a_lost_write() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(dir.path(), 300);
    let (k, _) = committed_puts(&dir.path().join("expected"))[0];
    let db = Db::open(store(dir.path()), Options::default()).unwrap();
    db.delete(format!("t0-{k}")).unwrap();
    db.close().unwrap();
    run_fails(dir.path(), &format!("key t0-{k}: the store shows no value"));
}

#[test]
fn verifier_catches_a_stale_value() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(dir.path(), 200);
    let expected = dir.path().join("expected");
    let before = committed_puts(&expected);
    let db = Db::open(store(dir.path()), Options::default()).unwrap();
    let old: Vec<(u64, u64, Vec<u8>)> = before
        .iter()
        .map(|&(k, n)| (k, n, db.get(format!("t0-{k}")).unwrap().unwrap()))
        .collect();
    db.close().unwrap();
    run_ok(dir.path(), 400);
    // A key put again since: write its older value back.
    let after = committed_puts(&expected);
    let (k, n_old, v) = old
        .into_iter()
        .find(|(k, n, _)| after.iter().any(|(k2, n2)| k2 == k && n2 != n))
        .expect("a key rewritten by the second run");
    let db = Db::open(store(dir.path()), Options::default()).unwrap();
    db.put(format!("t0-{k}"), v).unwrap();
    db.close().unwrap();
    run_fails(
        dir.path(),
        &format!("key t0-{k}: the store shows the value of op {n_old}"),
    );
}

#[test]
fn verifier_catches_a_foreign_value() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(dir.path(), 100);
    let db = Db::open(store(dir.path()), Options::default()).unwrap();
    db.put("t0-3", "1:5:3:abc").unwrap(); // names thread 1
    db.put("zz", "x").unwrap(); // not a workload key
    db.close().unwrap();
    let stderr = run_fails(
        dir.path(),
        "key t0-3 by get: value \"1:5:3:abc\" names key t1-3",
    );
    assert!(stderr.contains("the scan returns key \"zz\""), "{stderr}");
}

#[test]
fn verifier_catches_a_damaged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("checkpoints")).unwrap();
    run_ok(dir.path(), 200); // ends with a checkpoint of every write
    run_ok(dir.path(), 0); // which verifies and restores
    let shared = dir.path().join("checkpoints/stress/shared");
    let table = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .expect("a table in shared/");
    let mut b = std::fs::read(&table).unwrap();
    b[10] ^= 0x40;
    // Shared files are hard links of the store's tables: write a copy, not through the link.
    std::fs::remove_file(&table).unwrap();
    std::fs::write(&table, &b).unwrap();
    run_fails(dir.path(), "fails verification");
}
