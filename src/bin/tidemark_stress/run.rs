//! `run`: the writer process.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tidemark::lsm::{Db, WriteBatch};

use super::ckpt::{self, Model, Shared};
use super::expected::{ExpectedFile, Header, ThreadSlots, Word};
use super::verify::{self, Problems};
use super::workload::{self, key, Mutation, Rng};
use super::{store_options, RunArgs, EXIT_OK, EXIT_SETUP, EXIT_STORE, EXIT_USAGE, EXIT_VERIFY};

/// Prints one progress line on stdout and flushes it (the driver reads it while we run).
fn say(line: &str) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn report(what: &str, problems: &Problems, dir: &Path) {
    eprintln!(
        "VERIFICATION FAILED: {what}: {} problem(s)",
        problems.lines.len()
    );
    for line in problems.lines.iter().take(200) {
        eprintln!("  {line}");
    }
    if problems.lines.len() > 200 {
        eprintln!("  ... and {} more", problems.lines.len() - 200);
    }
    // The files as the failure found them (a later open changes them).
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                format!("{} ({len} B)", e.file_name().to_string_lossy())
            })
            .collect();
        files.sort();
        eprintln!("files in {} now: {}", dir.display(), files.join(", "));
    }
}

/// Asks the kernel to SIGKILL this process when its parent ends, then checks that the
/// parent is still `driver` (it may have ended before the request).
#[cfg(target_os = "linux")]
fn die_with_parent(driver: u32) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if r != 0 {
        eprintln!("tidemark-stress run: prctl(PR_SET_PDEATHSIG) failed");
    }
    if std::os::unix::process::parent_id() != driver {
        std::process::exit(i32::from(EXIT_SETUP));
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_driver: u32) {}

/// Runs the writer; returns its exit status.
pub fn run(a: &RunArgs) -> u8 {
    if let Some(driver) = a.parent {
        die_with_parent(driver);
    }
    if let Some(name) = &a.kill_point {
        if let Err(e) = tidemark::failpoint::arm(name, a.kill_nth) {
            eprintln!("tidemark-stress run: {e}");
            return EXIT_USAGE;
        }
    }
    let header = Header {
        threads: a.threads,
        keys: a.keys_per_thread,
        seed: a.seed,
    };
    let mut expected = match ExpectedFile::open(&a.expected, header) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tidemark-stress run: expected state: {e}");
            return EXIT_SETUP;
        }
    };
    let opts = store_options(a.sync, a.memtable_kib, a.static_levels);
    let db = match Db::open(&a.db, opts.clone()) {
        Ok(db) => db,
        Err(e) => {
            eprintln!(
                "STORE FAILED: cannot open the store {}: {e}",
                a.db.display()
            );
            return EXIT_STORE;
        }
    };
    say("opened");

    // Verify the store, and the retained checkpoints, before touching anything.
    let mut problems = Problems::default();
    let what = format!("store {}", a.db.display());
    let seen = match verify::observe(&db, header, &what, &mut problems) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("STORE FAILED: reading {what}: {e}");
            return EXIT_STORE;
        }
    };
    let mut threads = expected.threads();
    verify::check(&seen, &threads, &mut problems);
    if !problems.is_empty() {
        report(&what, &problems, &a.db);
        return EXIT_VERIFY;
    }
    let mut checkpoints = None;
    if let Some(dir) = &a.checkpoints {
        let opened = ckpt::open(dir, a.retained as usize).and_then(|(store, next)| {
            let n = ckpt::verify_retained(&store, dir, header, &opts, &mut problems)?;
            Ok((store, next, n))
        });
        match opened {
            Ok((store, next, n)) => {
                if !problems.is_empty() {
                    report(&format!("checkpoints in {}", dir.display()), &problems, dir);
                    return EXIT_VERIFY;
                }
                checkpoints = Some((store, next));
                say(&format!("checkpoints verified {n}"));
            }
            Err(e) => {
                eprintln!(
                    "VERIFICATION FAILED: the checkpoints in {} cannot be opened or restored: {e}",
                    dir.display()
                );
                return EXIT_VERIFY;
            }
        }
    }
    let settled = verify::resolve(&seen, &mut threads);
    say(&format!(
        "verified {} keys ({settled} in-flight writes found applied)",
        u64::from(header.threads) * header.keys
    ));

    let shared = Shared {
        models: threads
            .iter()
            .map(|s| {
                Mutex::new(Model {
                    acked: s.counter(),
                    words: (0..header.keys).map(|k| s.committed(k)).collect(),
                })
            })
            .collect(),
        started: threads
            .iter()
            .map(|s| AtomicU64::new(s.counter() + 1))
            .collect(),
    };
    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    let writers_done = AtomicBool::new(false);
    let failure: Mutex<Option<Failure>> = Mutex::new(None);
    let fail = |msg: Failure| {
        failure.lock().get_or_insert(msg);
        stop.store(true, Ordering::SeqCst);
    };
    std::thread::scope(|s| {
        let writers: Vec<_> = threads
            .into_iter()
            .enumerate()
            .map(|(t, slots)| {
                let (db, shared, stop, acked, fail) = (&db, &shared, &stop, &acked, &fail);
                s.spawn(move || {
                    if let Err(e) = write(db, header, t as u32, slots, a.ops, shared, stop, acked) {
                        fail(e);
                    }
                })
            })
            .collect();
        if let Some((store, first)) = &checkpoints {
            let (db, shared, stop, fail, done) = (&db, &shared, &stop, &fail, &writers_done);
            s.spawn(move || {
                let mut r = Rng::new(&[header.seed, *first, 0x636b]);
                let mut id = *first;
                // Every 50-200 ms while the writers write, and once more when they have
                // finished (--ops), so that the last checkpoint holds every write.
                let mut last = false;
                while !last {
                    let wait = Instant::now() + Duration::from_millis(r.range(50, 200));
                    while Instant::now() < wait && !last {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        last = done.load(Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if let Err(e) = ckpt::take(store, id, db, header, shared) {
                        fail(Failure::Store(format!("checkpoint {id} failed: {e}")));
                        return;
                    }
                    id += 1;
                }
            });
        }
        let (stop, acked, done) = (&stop, &acked, &writers_done);
        s.spawn(move || {
            let mut last = 0;
            while !done.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(25));
                let n = acked.load(Ordering::SeqCst);
                if n != last {
                    say(&format!("acked {n}"));
                    last = n;
                }
            }
        });
        for w in writers {
            if w.join().is_err() {
                fail(Failure::Store("a writer thread panicked".into()));
            }
        }
        writers_done.store(true, Ordering::SeqCst);
    });
    match failure.lock().take() {
        Some(Failure::Store(msg)) => {
            eprintln!("STORE FAILED: {msg}");
            return EXIT_STORE;
        }
        Some(Failure::Verify(problems)) => {
            report(
                &format!("store {} while writing", a.db.display()),
                &problems,
                &a.db,
            );
            return EXIT_VERIFY;
        }
        None => {}
    }
    say(&format!("acked {}", acked.load(Ordering::SeqCst)));
    if let Err(e) = db.close() {
        eprintln!("STORE FAILED: close: {e}");
        return EXIT_STORE;
    }
    say("closed");
    EXIT_OK
}

/// Why a writer stopped early.
#[derive(Debug)]
enum Failure {
    /// The store returned an error.
    Store(String),
    /// The store returned something the expected state rules out.
    Verify(Problems),
}

/// Operations between two scans of a thread's own keys while it writes.
const SCAN_EVERY_OPS: u64 = 1000;

/// One writer thread: operations from its counter on, each recorded in the expected state
/// before and after the store acknowledges it. Between its operations none of its keys is
/// in flight, so it also reads them back while the others write: one random key by `get`
/// after every eighth operation, and all of them by a prefix scan every
/// [`SCAN_EVERY_OPS`] operations.
#[allow(clippy::too_many_arguments)]
fn write(
    db: &Db,
    h: Header,
    t: u32,
    mut slots: ThreadSlots<'_>,
    ops: Option<u64>,
    shared: &Shared,
    stop: &AtomicBool,
    acked: &AtomicU64,
) -> Result<(), Failure> {
    let first = slots.counter();
    let end = ops.map_or(u64::MAX, |m| first.saturating_add(m));
    let mut n = first;
    while n < end && !stop.load(Ordering::SeqCst) {
        let op = workload::op(h.seed, t, n, h.keys);
        shared.started[t as usize].fetch_max(n + 1, Ordering::SeqCst);
        for &(k, m) in &op.writes {
            slots.set_pending(k, Word::new(n, m));
        }
        let result = if op.batch {
            let mut b = WriteBatch::new();
            for &(k, m) in &op.writes {
                match m {
                    Mutation::Put => b.put(key(t, k), workload::value(h.seed, t, n, k)),
                    Mutation::Delete => b.delete(key(t, k)),
                };
            }
            db.write(b)
        } else {
            let (k, m) = op.writes[0];
            match m {
                Mutation::Put => db.put(key(t, k), workload::value(h.seed, t, n, k)),
                Mutation::Delete => db.delete(key(t, k)),
            }
        };
        if let Err(e) = result {
            return Err(Failure::Store(format!(
                "thread {t} op {n}: write failed: {e}"
            )));
        }
        for &(k, _) in &op.writes {
            slots.set_committed(k, slots.pending(k));
            slots.set_pending(k, Word::NEVER);
        }
        slots.set_counter(n + 1);
        {
            let mut model = shared.models[t as usize].lock();
            for &(k, m) in &op.writes {
                model.words[k as usize] = Word::new(n, m);
            }
            model.acked = n + 1;
        }
        acked.fetch_add(1, Ordering::SeqCst);
        n += 1;
        let mut r = Rng::new(&[h.seed, u64::from(t), n, 0x7264]);
        if r.below(8) == 0 {
            let k = r.below(h.keys);
            let v = db
                .get(key(t, k))
                .map_err(|e| Failure::Store(format!("thread {t} after op {}: get: {e}", n - 1)))?;
            let mut problems = Problems::default();
            verify::check_own_key(h, t, k, v.as_deref(), &slots, "get", &mut problems);
            if !problems.is_empty() {
                return Err(Failure::Verify(problems));
            }
        }
        if (n - first) % SCAN_EVERY_OPS == 0 {
            let mut problems = Problems::default();
            verify::scan_own_keys(db, h, t, &slots, &mut problems)
                .map_err(|e| Failure::Store(format!("thread {t} after op {}: scan: {e}", n - 1)))?;
            if !problems.is_empty() {
                return Err(Failure::Verify(problems));
            }
        }
    }
    Ok(())
}
