//! `crashtest`: the driver, as RocksDB's `db_crashtest.py`. It runs writers on one store
//! generation after generation and kills each one: from outside with SIGKILL after a
//! random delay (drawn so that many kills land while the writer opens, recovers and
//! verifies the store), or from inside at a random kill point. Every writer verifies the
//! store as the previous kill left it before it writes; a writer that exits by itself is a
//! failure, and the run stops there, keeping its directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::expected::read_counters;
use super::workload::{mix, Rng};
use super::{
    CrashtestArgs, EXIT_FAILED, EXIT_OK, EXIT_STORE, EXIT_USAGE, EXIT_VERIFY, MEMTABLE_KIB_CHOICES,
};

/// Kills when neither `--kills` nor `--duration` is given.
const DEFAULT_KILLS: u64 = 100;
/// How long the final verification may take.
const FINAL_TIMEOUT: Duration = Duration::from_secs(300);

/// How one generation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// SIGKILL from outside after this many milliseconds.
    Delay(u64),
    /// Die at the `nth` hit of kill point `name`.
    Point { name: String, nth: u64 },
    /// No kill: verify, write nothing, close.
    Verify,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Delay(ms) => write!(f, "SIGKILL after {ms} ms"),
            Plan::Point { name, nth } => write!(f, "kill point {name} (hit {nth})"),
            Plan::Verify => write!(f, "final verification"),
        }
    }
}

/// What a writer printed and how it ended.
#[derive(Debug)]
struct Outcome {
    status: ExitStatus,
    killed_by_us: bool,
    opened: bool,
    verified: bool,
    /// Time from the start to the `verified` line.
    startup: Option<Duration>,
    keys_verified: u64,
    checkpoints_verified: u64,
    stderr: String,
}

/// A running writer with its output being read.
struct Writer {
    child: Child,
    lines: Receiver<(Instant, String)>,
    started: Instant,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl Writer {
    fn spawn(exe: &Path, args: &[OsString]) -> std::io::Result<Writer> {
        let started = Instant::now();
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let (tx, lines) = channel();
        let stdout = std::thread::spawn(move || {
            if let Some(out) = out {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut err) = err {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf);
                s = String::from_utf8_lossy(&buf).into_owned();
            }
            s
        });
        Ok(Writer {
            child,
            lines,
            started,
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// Waits until the writer exits or `deadline` passes, then SIGKILLs it if it still
    /// runs; collects its output.
    fn finish(mut self, deadline: Instant) -> std::io::Result<Outcome> {
        let mut killed_by_us = false;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            let now = Instant::now();
            if now >= deadline {
                // Child::kill sends SIGKILL on Unix. A writer that exited just before
                // it keeps its own status: that exit is what counts.
                self.child.kill()?;
                let st = self.child.wait()?;
                killed_by_us = st.signal() == Some(libc::SIGKILL);
                break st;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
        };
        if let Some(h) = self.stdout.take() {
            let _ = h.join();
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let mut o = Outcome {
            status,
            killed_by_us,
            opened: false,
            verified: false,
            startup: None,
            keys_verified: 0,
            checkpoints_verified: 0,
            stderr,
        };
        for (at, line) in self.lines.try_iter() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("opened"), _, _) => o.opened = true,
                (Some("verified"), Some(n), _) => {
                    o.verified = true;
                    o.startup = Some(at - self.started);
                    o.keys_verified = n.parse().unwrap_or(0);
                }
                (Some("checkpoints"), Some("verified"), Some(n)) => {
                    o.checkpoints_verified = n.parse().unwrap_or(0);
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

#[derive(Debug, Default)]
struct Stats {
    generations: u64,
    kills_outside: u64,
    kills_during_open: u64,
    kills_during_verify: u64,
    kills_while_writing: u64,
    points_hit: BTreeMap<String, u64>,
    points_missed: u64,
    verifications: u64,
    keys_verified: u64,
    checkpoints_verified: u64,
    /// How long a writer takes from its start to the end of its verification (a running
    /// average), in milliseconds.
    startup_ms: u64,
}

impl Stats {
    fn kills(&self) -> u64 {
        self.kills_outside + self.points_hit.values().sum::<u64>()
    }
}

fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(0), _) => "exit status 0 (it was to be killed, not to finish)".into(),
        (Some(c), _) if c == i32::from(EXIT_VERIFY) => {
            "exit status 3: the store (or a checkpoint) disagrees with the expected state".into()
        }
        (Some(c), _) if c == i32::from(EXIT_STORE) => {
            "exit status 4: the store failed (open, read, write or checkpoint error)".into()
        }
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "ended without status".into(),
    }
}

fn shell_quote(s: &std::ffi::OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn command_line(exe: &Path, args: &[OsString]) -> String {
    std::iter::once(shell_quote(exe.as_os_str()))
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Copies the files of `src` into `dst`, recursively: regular files of `link_dirs` (whose
/// files are immutable once written) as hard links, the others byte for byte. `skip`
/// names entries left out.
fn copy_tree(src: &Path, dst: &Path, link: bool, skip: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (from, to) = (e.path(), dst.join(&name));
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree(&from, &to, link, skip)?;
        } else if ty.is_file() {
            let linked = link && std::fs::hard_link(&from, &to).is_ok();
            if !linked {
                match std::fs::copy(&from, &to) {
                    Ok(_) => {}
                    // Removed between the listing and the copy (a writer never runs
                    // while we copy, but be lenient with a racing cleanup).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Runs the crash test; returns its exit status.
pub fn crashtest(a: &CrashtestArgs) -> u8 {
    match drive(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidemark-stress crashtest: {e}");
            EXIT_FAILED
        }
    }
}

fn drive(a: &CrashtestArgs) -> Result<u8, String> {
    let seed = a.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        mix(t ^ u64::from(std::process::id())) % 1_000_000_000
    });
    let dir = &a.dir;
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if entries.next().is_some() {
            eprintln!(
                "tidemark-stress crashtest: {} is not empty; give a new or empty directory",
                dir.display()
            );
            return Ok(EXIT_USAGE);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("the running executable: {e}"))?;
    let db = dir.join("db");
    let expected = dir.join("expected");
    let ckpt_dir = dir.join("checkpoints");
    let before = dir.join("before-generation");

    let mut base: Vec<OsString> = vec!["run".into(), "--db".into(), db.clone().into()];
    base.extend(["--expected".into(), expected.clone().into()]);
    for (k, v) in [
        ("--threads", a.threads.to_string()),
        ("--keys-per-thread", a.keys_per_thread.to_string()),
        ("--sync", a.sync.to_string()),
        ("--seed", seed.to_string()),
    ] {
        base.extend([k.into(), v.into()]);
    }
    if a.checkpoints {
        base.extend(["--checkpoints".into(), ckpt_dir.clone().into()]);
        base.extend(["--retained".into(), a.retained.to_string().into()]);
    }
    let points: Vec<&str> = tidemark::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| a.checkpoints || !(p.starts_with("checkpoint.") || p.starts_with("retention.")))
        .chain(["*"])
        .collect();

    let mut reproduce = format!(
        "{} crashtest --dir NEW_DIR --seed {seed} --sync {} --threads {} --keys-per-thread {} --max-delay-ms {}",
        shell_quote(exe.as_os_str()),
        a.sync,
        a.threads,
        a.keys_per_thread,
        a.max_delay_ms
    );
    if a.checkpoints {
        reproduce += &format!(" --checkpoints --retained {}", a.retained);
    }
    if let Some(kib) = a.memtable_kib {
        reproduce += &format!(" --memtable-kib {kib}");
    }
    if a.kill_points {
        reproduce += &format!(
            " --kill-points --kill-point-timeout-ms {}",
            a.kill_point_timeout_ms
        );
    }
    match (a.kills, a.duration) {
        (_, Some(d)) => reproduce += &format!(" --duration {d}"),
        (k, None) => reproduce += &format!(" --kills {}", k.unwrap_or(DEFAULT_KILLS)),
    }
    println!(
        "crashtest: seed {seed}, sync {}, {} threads x {} keys, checkpoints {}, kill points {}, in {}",
        a.sync,
        a.threads,
        a.keys_per_thread,
        if a.checkpoints {
            format!("on ({} retained)", a.retained)
        } else {
            "off".into()
        },
        if a.kill_points { "on" } else { "off" },
        dir.display()
    );

    let mut rng = Rng::new(&[seed, 0x6472_6976]);
    let mut stats = Stats {
        startup_ms: 50,
        ..Stats::default()
    };
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let target_kills = a.kills.unwrap_or(DEFAULT_KILLS);
    let done = |stats: &Stats| match a.duration {
        Some(d) => start.elapsed() >= Duration::from_secs(d),
        None => stats.kills() >= target_kills,
    };
    // The generations that kill, then two that only verify: one after the last kill, one
    // after a clean close.
    let mut finals = 0;
    loop {
        let plan = if !done(&stats) {
            if a.kill_points && stats.generations == 0 {
                // The store does not exist yet: die while it is being created.
                Plan::Point {
                    name: "*".into(),
                    nth: rng.range(1, 3),
                }
            } else if a.kill_points && rng.below(2) == 0 {
                let name = points[rng.below(points.len() as u64) as usize].to_string();
                // Mostly early hits, so that rare points are reached before the timeout.
                let nth = match rng.below(4) {
                    0 | 1 => rng.range(1, 2),
                    2 => rng.range(1, 5),
                    _ => rng.range(1, 20),
                };
                Plan::Point { name, nth }
            } else {
                // A third of the kills while the writer starts, opens (recovers) and
                // verifies the store, the others while it writes, up to --max-delay-ms
                // after its verification.
                let ms = if rng.below(3) == 0 {
                    stats.startup_ms * rng.below(1001) / 1000
                } else {
                    stats.startup_ms + rng.below(a.max_delay_ms + 1)
                };
                Plan::Delay(ms)
            }
        } else if finals < 2 {
            finals += 1;
            Plan::Verify
        } else {
            break;
        };
        stats.generations += 1;
        let generation = stats.generations;

        // Keep the directory as the last kill left it, for a failure's post-mortem.
        if db.exists() {
            let _ = std::fs::remove_dir_all(&before);
            let copied = copy_tree(&db, &before.join("db"), false, &[])
                .and_then(|_| std::fs::copy(&expected, before.join("expected")).map(|_| ()))
                .and_then(|_| {
                    if ckpt_dir.exists() {
                        copy_tree(
                            &ckpt_dir,
                            &before.join("checkpoints"),
                            true,
                            &["restore-check"],
                        )
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = copied {
                return Err(format!(
                    "copying the store before generation {generation}: {e}"
                ));
            }
        }

        let mut args = base.clone();
        let memtable_kib = a.memtable_kib.unwrap_or_else(|| {
            MEMTABLE_KIB_CHOICES[rng.below(MEMTABLE_KIB_CHOICES.len() as u64) as usize]
        });
        args.extend(["--memtable-kib".into(), memtable_kib.to_string().into()]);
        // Static level sizes now and then: the store reopens with the other shape.
        let static_levels = rng.below(4) == 0;
        if static_levels {
            args.push("--static-levels".into());
        }
        let deadline = match &plan {
            Plan::Delay(ms) => Duration::from_millis(*ms),
            Plan::Point { name, nth } => {
                args.extend(["--kill-point".into(), name.into()]);
                args.extend(["--kill-nth".into(), nth.to_string().into()]);
                Duration::from_millis(a.kill_point_timeout_ms)
            }
            Plan::Verify => {
                args.extend(["--ops".into(), "0".into()]);
                FINAL_TIMEOUT
            }
        };
        // The writer ends with the driver (not shown in the command lines printed).
        let mut spawn_args = args.clone();
        spawn_args.extend(["--parent".into(), std::process::id().to_string().into()]);
        let writer =
            Writer::spawn(&exe, &spawn_args).map_err(|e| format!("starting a writer: {e}"))?;
        let o = writer
            .finish(Instant::now() + deadline)
            .map_err(|e| format!("waiting for a writer: {e}"))?;
        if let Some(d) = o.startup {
            stats.startup_ms = (stats.startup_ms * 7 + d.as_millis() as u64).div_ceil(8);
        }
        if o.verified {
            stats.verifications += 1;
            stats.keys_verified += o.keys_verified;
        }
        stats.checkpoints_verified += o.checkpoints_verified;

        let ok = match (&plan, o.killed_by_us) {
            (Plan::Verify, false) => o.status.success() && o.verified,
            (Plan::Verify, true) => false,
            (_, true) => {
                stats.kills_outside += 1;
                if matches!(plan, Plan::Point { .. }) {
                    stats.points_missed += 1;
                }
                if !o.opened {
                    stats.kills_during_open += 1;
                } else if !o.verified {
                    stats.kills_during_verify += 1;
                } else {
                    stats.kills_while_writing += 1;
                }
                true
            }
            (Plan::Point { name, .. }, false) if o.status.signal() == Some(libc::SIGKILL) => {
                *stats.points_hit.entry(name.clone()).or_default() += 1;
                true
            }
            _ => false,
        };
        if !ok {
            let what = if o.killed_by_us {
                format!("did not finish within {} s", deadline.as_secs())
            } else {
                describe(&o.status)
            };
            eprintln!();
            eprintln!(
                "CRASHTEST FAILED at generation {generation} ({plan}) after {} kills: the writer {what}",
                stats.kills()
            );
            eprintln!("writer: {}", command_line(&exe, &args));
            eprintln!("--- its stderr ---");
            eprint!("{}", o.stderr);
            if !o.stderr.ends_with('\n') {
                eprintln!();
            }
            eprintln!("---");
            eprintln!("kept for inspection: {}", dir.display());
            if before.exists() {
                eprintln!(
                    "the store as the last kill left it (before this writer opened it): {}",
                    before.display()
                );
                let mut again = base.clone();
                for a in again.iter_mut() {
                    if *a == db.as_os_str() {
                        *a = before.join("repro/db").into();
                    } else if *a == expected.as_os_str() {
                        *a = before.join("repro/expected").into();
                    } else if *a == ckpt_dir.as_os_str() {
                        *a = before.join("repro/checkpoints").into();
                    }
                }
                again.extend(["--memtable-kib".into(), memtable_kib.to_string().into()]);
                if static_levels {
                    again.push("--static-levels".into());
                }
                again.extend(["--ops".into(), "0".into()]);
                eprintln!(
                    "re-run this verification on a copy of it:\n  rm -rf {r} && mkdir {r} && cp -a {b}/db {b}/expected {r}/ && \
                     {{ ! [ -d {b}/checkpoints ] || cp -a {b}/checkpoints {r}/; }} && {cmd}",
                    r = shell_quote(before.join("repro").as_os_str()),
                    b = shell_quote(before.as_os_str()),
                    cmd = command_line(&exe, &again)
                );
            }
            eprintln!(
                "reproduce the run (the kill timing differs from run to run):\n  {reproduce}"
            );
            print_summary(&stats, &expected, start, 1);
            return Ok(EXIT_FAILED);
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            println!(
                "  {:>6.0} s: generation {generation}, {} kills, {} ops acknowledged",
                start.elapsed().as_secs_f64(),
                stats.kills(),
                acknowledged(&expected)
            );
        }
    }
    print_summary(&stats, &expected, start, 0);
    Ok(EXIT_OK)
}

fn acknowledged(expected: &Path) -> u64 {
    read_counters(expected).map_or(0, |c| c.iter().sum())
}

fn print_summary(s: &Stats, expected: &Path, start: Instant, failures: u64) {
    let hit: u64 = s.points_hit.values().sum();
    println!(
        "{}",
        if failures == 0 {
            "crashtest passed"
        } else {
            "crashtest FAILED"
        }
    );
    println!("  generations            {}", s.generations);
    println!(
        "  kills                  {} (from outside {}: {} while opening, {} while verifying, {} while writing; at kill points {hit})",
        s.kills(),
        s.kills_outside,
        s.kills_during_open,
        s.kills_during_verify,
        s.kills_while_writing
    );
    if !s.points_hit.is_empty() || s.points_missed > 0 {
        let list: Vec<String> = s
            .points_hit
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "  kill points hit        {hit} ({}); {} armed but not reached before the timeout",
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            },
            s.points_missed
        );
    }
    println!("  ops acknowledged       {}", acknowledged(expected));
    println!(
        "  keys verified          {} (in {} verifications)",
        s.keys_verified, s.verifications
    );
    println!("  checkpoints verified   {}", s.checkpoints_verified);
    println!(
        "  writer start-up       {} ms to verified (running average)",
        s.startup_ms
    );
    println!("  failures               {failures}");
    println!(
        "  time                   {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
