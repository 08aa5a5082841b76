//! Checkpoint directories and stores holding what a file system can hold besides regular
//! files: FIFOs, sockets, character devices behind symlinks, directories where files are
//! expected, and symlinks out of the job directory. Every case must end, within a
//! deadline, in a clear error or a reported entry, with nothing outside the job directory
//! read, linked or deleted.

#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store_checkpoint::checkpoint_db;
use tidemark::checkpoint::{
    resolve, resolve_verified, CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore,
    JobId, KeyGroupRange, LocalStorage, SnapshotTarget, SourceOffset,
};
use tidemark::fs::{FileSystem, StdFs};
use tidemark::lsm::{Db, Options};
use tidemark::state::lsm_snapshot::SubtaskId;
use tidemark::Error;

/// How long any single command or call may take before the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tidemark args` and kills it when it outlives [`DEADLINE`] (the test then fails).
fn tidemark(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tidemark");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("tidemark {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `f` on a thread and fails the test when it outlives [`DEADLINE`].
fn within_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit status 1, one line on stderr naming `path`, no panic.
fn assert_fails_naming(r: &Run, path: &Path, what: &str) {
    assert_eq!(
        r.code, 1,
        "{what}: exit status\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains(s(path)),
        "{what}: output does not name {}:\n{all}",
        path.display()
    );
}

fn small_options() -> Options {
    Options {
        memtable_size_bytes: 64 << 10,
        block_size_bytes: 1024,
        wal: false,
        ..Options::default()
    }
}

/// Two incremental checkpoints of one store under `dir/checkpoints/job1`; returns the job
/// directory.
fn make_checkpoints(dir: &Path) -> PathBuf {
    let db = Db::open(dir.join("work"), small_options()).unwrap();
    let storage = LocalStorage::new(
        StdFs::shared(),
        dir.join("checkpoints"),
        JobId::new("job1").unwrap(),
    );
    let store = CheckpointStore::open(
        Arc::new(storage),
        CheckpointConfig {
            num_retained: 2,
            ..CheckpointConfig::default()
        },
    )
    .unwrap();
    let subtask = SubtaskId {
        operator_id: "op".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).unwrap(),
    };
    for round in 1..=2u64 {
        for i in 0..300 {
            db.put(format!("key{round}-{i:04}"), vec![b'x'; 50])
                .unwrap();
        }
        db.put("counter", round.to_string()).unwrap();
        let offsets = vec![SourceOffset {
            source: "src".into(),
            split: "0".into(),
            offset: round * 100,
        }];
        checkpoint_db(
            &store,
            CheckpointId(round),
            CheckpointKind::Incremental,
            &db,
            &subtask,
            offsets,
        )
        .unwrap();
    }
    drop(store);
    db.close().unwrap();
    dir.join("checkpoints").join("job1")
}

/// The kinds of non-regular file a test puts where a file is expected.
#[derive(Debug, Clone, Copy)]
enum Special {
    Fifo,
    Socket,
    DevZero,
    DevNull,
    Directory,
}

const SPECIALS: [Special; 5] = [
    Special::Fifo,
    Special::Socket,
    Special::DevZero,
    Special::DevNull,
    Special::Directory,
];

/// Replaces `path` with `kind`; the returned value keeps a socket bound.
fn make_special(path: &Path, kind: Special) -> Option<std::os::unix::net::UnixListener> {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else if path.symlink_metadata().is_ok() {
        std::fs::remove_file(path).unwrap();
    }
    match kind {
        Special::Fifo => {
            let c = std::ffi::CString::new(s(path)).unwrap();
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
            assert_eq!(rc, 0, "mkfifo {}", path.display());
            None
        }
        Special::Socket => Some(std::os::unix::net::UnixListener::bind(path).unwrap()),
        Special::DevZero => {
            symlink("/dev/zero", path).unwrap();
            None
        }
        Special::DevNull => {
            symlink("/dev/null", path).unwrap();
            None
        }
        Special::Directory => {
            std::fs::create_dir(path).unwrap();
            None
        }
    }
}

/// The first shared SST and the private manifest of checkpoint 2.
fn files_of(job: &Path) -> (PathBuf, PathBuf) {
    let mut shared: Vec<PathBuf> = std::fs::read_dir(job.join("shared"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    shared.sort();
    let manifest = std::fs::read_dir(job.join("chk-2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| s(p).ends_with(".manifest"))
        .unwrap();
    (shared[0].clone(), manifest)
}

#[test]
fn special_files_in_a_checkpoint_fail_fast_naming_the_path() {
    for kind in SPECIALS {
        for place in ["_metadata", "shared", "private"] {
            let dir = tempfile::tempdir().unwrap();
            let job = make_checkpoints(dir.path());
            let chk = job.join("chk-2");
            let (sst, manifest) = files_of(&job);
            let target = match place {
                "_metadata" => chk.join("_metadata"),
                "shared" => sst,
                _ => manifest,
            };
            let _keep = make_special(&target, kind);
            let what = format!("{kind:?} as {place}");
            let r = tidemark(&["verify", s(&chk)]);
            assert_fails_naming(&r, &target, &format!("verify, {what}"));
            let r = tidemark(&["inspect", s(&chk)]);
            if place != "shared" {
                assert_fails_naming(&r, &target, &format!("inspect, {what}"));
            } else {
                // `inspect` lists a shared file from `_metadata` and does not open it.
                assert_eq!(r.code, 0, "inspect, {what}: {}", r.stderr);
            }
            let r = tidemark(&["get", s(&chk), "counter"]);
            if place != "shared" {
                assert_fails_naming(&r, &target, &format!("get, {what}"));
            } else {
                assert!(!r.stderr.contains("panicked"), "get, {what}: {}", r.stderr);
            }
            let r = tidemark(&["checkpoints", s(&job)]);
            assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
            if place == "_metadata" {
                assert!(
                    r.stdout.contains("damaged") || r.stderr.contains(s(&target)),
                    "checkpoints, {what}:\n{}{}",
                    r.stdout,
                    r.stderr
                );
            }
            let job2 = job.clone();
            let res = within_deadline("resolve_verified", move || {
                resolve_verified(StdFs::shared(), &job2.join("chk-2"), false).map(|_| ())
            });
            let e = res.expect_err(&what);
            assert!(e.to_string().contains(s(&target)), "{what}: {e}");
            if place == "_metadata" {
                assert!(matches!(e, Error::NotRegularFile { .. }), "{what}: {e:?}");
                let job2 = job.clone();
                let e = within_deadline("resolve", move || resolve(&StdFs, &job2).map(|_| ()))
                    .expect_err(&what);
                assert!(e.to_string().contains("not a regular file"), "{what}: {e}");
            }
        }
    }
}

#[test]
fn special_files_given_to_inspect_and_verify_fail_fast() {
    for kind in SPECIALS {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000001.sst");
        let _keep = make_special(&p, kind);
        for cmd in ["inspect", "verify"] {
            let r = tidemark(&[cmd, s(&p)]);
            assert_fails_naming(&r, &p, &format!("{cmd} of {kind:?}"));
        }
    }
}

#[test]
fn special_files_in_a_store_fail_fast_naming_the_path() {
    for kind in SPECIALS {
        for name in ["CURRENT", "MANIFEST", "WAL"] {
            let dir = tempfile::tempdir().unwrap();
            let db_dir = dir.path().join("db");
            let db = Db::open(&db_dir, Options::default()).unwrap();
            db.put("a", "1").unwrap();
            db.close().unwrap();
            let mut names: Vec<String> = std::fs::read_dir(&db_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            let target = match name {
                "CURRENT" => db_dir.join("CURRENT"),
                "MANIFEST" => {
                    db_dir.join(names.iter().find(|n| n.starts_with("MANIFEST-")).unwrap())
                }
                _ => db_dir.join(names.iter().find(|n| n.ends_with(".wal")).unwrap()),
            };
            let _keep = make_special(&target, kind);
            let what = format!("{kind:?} as {name}");
            for cmd in ["inspect", "verify"] {
                let r = tidemark(&[cmd, s(&db_dir)]);
                assert_ne!(r.code, 0, "{cmd}, {what}: {}", r.stdout);
                assert!(
                    !r.stderr.contains("panicked"),
                    "{cmd}, {what}: {}",
                    r.stderr
                );
                let all = format!("{}{}", r.stdout, r.stderr);
                assert!(all.contains(s(&target)), "{cmd}, {what}: {all}");
            }
            let d = db_dir.clone();
            let res = within_deadline("Db::open", move || {
                Db::open(&d, Options::default()).map(|_| ())
            });
            let e = res.expect_err(&what);
            assert!(e.to_string().contains(s(&target)), "Db::open, {what}: {e}");
        }
    }
}

#[test]
fn a_shared_file_linked_out_of_the_job_directory_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    // The same bytes outside: copies, so that a reader that followed the links would find
    // valid tables with the right sizes and crcs.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for e in std::fs::read_dir(job.join("shared")).unwrap() {
        let sst = e.unwrap().path();
        let copy = outside.join(sst.file_name().unwrap());
        std::fs::copy(&sst, &copy).unwrap();
        std::fs::remove_file(&sst).unwrap();
        symlink(&copy, &sst).unwrap();
    }
    let chk = job.join("chk-2");
    let r = tidemark(&["verify", s(&chk)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("unsafe path"), "{}", r.stdout);
    let r = tidemark(&["get", s(&chk), "counter"]);
    assert_eq!(
        r.code, 1,
        "get served a table outside the job: {}",
        r.stdout
    );
    assert!(
        r.stderr.contains("outside the job directory"),
        "{}",
        r.stderr
    );
    let e = resolve_verified(StdFs::shared(), &chk, false).unwrap_err();
    assert!(e.to_string().contains("unsafe path"), "{e}");
    // Nothing read it: its access time is not what matters (noatime mounts); what matters
    // is that the commands refused, which the assertions above showed.
    assert!(outside.exists());
}

#[test]
fn a_metadata_linked_out_of_the_job_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let m = job.join("chk-2/_metadata");
    std::fs::rename(&m, other.join("_metadata")).unwrap();
    symlink(other.join("_metadata"), &m).unwrap();
    let e = resolve(&StdFs, &job.join("chk-2")).unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e:?}");
    for cmd in ["inspect", "verify"] {
        let r = tidemark(&[cmd, s(&job.join("chk-2"))]);
        assert_eq!(r.code, 1, "{cmd}: {}{}", r.stdout, r.stderr);
        assert!(
            format!("{}{}", r.stdout, r.stderr).contains("outside the job directory"),
            "{cmd}: {}{}",
            r.stdout,
            r.stderr
        );
    }
}

#[test]
fn the_guarded_open_refuses_special_files_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    for kind in SPECIALS {
        let p = dir.path().join(format!("{kind:?}"));
        let _keep = make_special(&p, kind);
        let p2 = p.clone();
        let e = within_deadline("read_file", move || {
            StdFs.read_file(&p2, 1 << 20).map(|_| ())
        })
        .expect_err("special file read");
        match &e {
            Error::NotRegularFile { path, .. } => assert_eq!(path, &p),
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(e.to_string().contains(s(&p)), "{e}");
    }
}

#[test]
fn restore_places_the_real_file_behind_a_link_inside_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let mut reals = Vec::new();
    for e in std::fs::read_dir(job.join("shared")).unwrap() {
        let sst = e.unwrap().path();
        let name = sst.file_name().unwrap().to_str().unwrap().to_string();
        let real = job.join("shared").join(format!("real-{name}"));
        std::fs::rename(&sst, &real).unwrap();
        // Relative: placed as a link elsewhere, it would name another file.
        symlink(format!("real-{name}"), &sst).unwrap();
        reals.push(real);
    }
    let r = resolve_verified(StdFs::shared(), &job, false).unwrap();
    let restored = dir.path().join("restored");
    let db = tidemark::state::lsm_snapshot::restore_store(
        &r.storage(StdFs::shared()),
        r.checkpoint_id,
        &r.metadata.operator_states[0],
        &restored,
        small_options(),
    )
    .unwrap();
    assert_eq!(db.get("counter").unwrap().as_deref(), Some(&b"2"[..]));
    drop(db);
    use std::os::unix::fs::MetadataExt;
    let real_inodes: Vec<u64> = reals
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().ino())
        .collect();
    let mut placed = 0;
    for e in std::fs::read_dir(&restored).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(!m.file_type().is_symlink(), "{} is a link", p.display());
        if s(&p).ends_with(".sst") && real_inodes.contains(&m.ino()) {
            placed += 1;
        }
    }
    assert_eq!(
        placed,
        reals.len(),
        "every table placed is the verified file itself"
    );
}

#[test]
fn restore_never_places_a_file_from_outside_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for e in std::fs::read_dir(job.join("shared")).unwrap() {
        let sst = e.unwrap().path();
        let copy = outside.join(sst.file_name().unwrap());
        std::fs::copy(&sst, &copy).unwrap();
        std::fs::remove_file(&sst).unwrap();
        symlink(&copy, &sst).unwrap();
    }
    // Even unverified (allow_unverified), the placement itself refuses.
    let r = resolve_verified(StdFs::shared(), &job, true).unwrap();
    let restored = dir.path().join("restored");
    let e = tidemark::state::lsm_snapshot::restore_store(
        &r.storage(StdFs::shared()),
        r.checkpoint_id,
        &r.metadata.operator_states[0],
        &restored,
        small_options(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e:?}");
    let linked_out = std::fs::read_dir(&restored)
        .unwrap()
        .filter(|e| s(&e.as_ref().unwrap().path()).ends_with(".sst"))
        .count();
    assert_eq!(linked_out, 0, "a table from outside the job was placed");
}

#[test]
fn a_symlinked_checkpoint_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let other = make_checkpoints(&dir.path().join("other"));
    // chk-3 of job1 is another job's checkpoint 2 (renamed so its id matches would not
    // help either: the directory itself is a link).
    symlink(other.join("chk-2"), job.join("chk-3")).unwrap();
    let e = resolve(&StdFs, &job.join("chk-3")).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let e = resolve(&StdFs, &job).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    for cmd in ["inspect", "verify"] {
        let r = tidemark(&[cmd, s(&job.join("chk-3"))]);
        assert_fails_naming(&r, &job.join("chk-3"), cmd);
        assert!(
            !r.stdout.contains("checkpoint 2 of job"),
            "{cmd} printed the other job's _metadata: {}",
            r.stdout
        );
    }
}

#[test]
fn a_second_owner_of_a_job_directory_is_refused_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let open = || {
        CheckpointStore::open(
            Arc::new(LocalStorage::new(
                StdFs::shared(),
                dir.path().join("checkpoints"),
                JobId::new("job1").unwrap(),
            )),
            CheckpointConfig {
                num_retained: 2,
                ..CheckpointConfig::default()
            },
        )
    };
    let first = open().unwrap();
    assert_eq!(first.owner_lock_path(), Some(job.join("LOCK")));
    // A checkpoint in progress: its directory and a shared file not yet in any _metadata,
    // which a second owner would take for leftovers of a crash.
    let pending = first
        .begin(CheckpointId(3), CheckpointKind::Incremental)
        .unwrap();
    let local = dir.path().join("000099.sst");
    std::fs::write(&local, b"pending table").unwrap();
    let sum = tidemark::checkpoint::file_checksum(&StdFs, &local).unwrap();
    let h = pending
        .place_shared("op_0", &local, "000099.sst", sum.size, sum.crc32c)
        .unwrap();
    let before: Vec<_> = std::fs::read_dir(job.join("shared"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    match open() {
        Err(Error::JobLocked { path }) => assert_eq!(path, job.join("LOCK")),
        other => panic!("a second owner was not refused: {:?}", other.map(|_| ())),
    }
    let e = open().map(|_| ()).unwrap_err();
    assert!(e.to_string().contains(s(&job.join("LOCK"))), "{e}");
    assert!(
        job.join(&h.path).exists(),
        "the pending shared file was deleted"
    );
    assert!(
        job.join("chk-3").exists(),
        "the pending checkpoint was deleted"
    );
    let after: Vec<_> = std::fs::read_dir(job.join("shared"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after);
    // Read-only tools need no lock and change nothing.
    for cmd in ["checkpoints", "verify", "inspect"] {
        let r = tidemark(&[cmd, s(&job)]);
        assert_eq!(
            r.code, 0,
            "{cmd} while the store is open: {}{}",
            r.stdout, r.stderr
        );
    }
    assert!(job.join(&h.path).exists() && job.join("chk-3").exists());
    drop(pending);
    drop(first);
    // Once the owner is gone, the next one opens (and cleans up what was left).
    let again = open().unwrap();
    assert!(!job.join("chk-3").exists());
    drop(again);
}

#[test]
fn verify_checks_the_size_before_reading_a_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let (sst, _) = files_of(&job);
    // A sparse 64 GiB file where a table of a few KiB should be: reading it would take
    // minutes; comparing its size takes nothing.
    let f = std::fs::OpenOptions::new().write(true).open(&sst).unwrap();
    f.set_len(64 << 30).unwrap();
    drop(f);
    let start = Instant::now();
    let r = tidemark(&["verify", s(&job.join("chk-2"))]);
    let took = start.elapsed();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("wrong size"), "{}", r.stdout);
    assert!(r.stdout.contains(s(&sst)), "{}", r.stdout);
    assert!(took < Duration::from_secs(10), "verify took {took:?}");
    let job2 = job.clone();
    let start = Instant::now();
    let e = within_deadline("resolve_verified", move || {
        resolve_verified(StdFs::shared(), &job2, false).map(|_| ())
    })
    .unwrap_err();
    assert!(e.to_string().contains("wrong size"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// Fills `job` with what a job directory should not hold; returns the paths that must be
/// reported and a file outside the job that must survive.
fn make_odd_entries(job: &Path, outside: &Path) -> (Vec<PathBuf>, PathBuf) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let shared = job.join("shared");
    let dangling = shared.join("op_0-000123-0badf00d.sst");
    symlink(outside.join("missing"), &dangling).unwrap();
    let linked_out = shared.join("op_0-000124-0badf00d.sst");
    symlink(&victim, &linked_out).unwrap();
    let subdir = shared.join("op_0-000125-0badf00d.sst");
    std::fs::create_dir(&subdir).unwrap();
    std::fs::write(subdir.join("inner"), b"x").unwrap();
    let fifo = shared.join("op_0-000126-0badf00d.sst");
    make_special(&fifo, Special::Fifo);
    let non_utf8 = shared.join(std::ffi::OsStr::from_bytes(
        b"op_0-000127-0badf00d-\xff.sst",
    ));
    std::fs::write(&non_utf8, b"x").unwrap();
    let chk_file = job.join("chk-9");
    std::fs::write(&chk_file, b"not a directory").unwrap();
    let chk_link = job.join("chk-8");
    symlink(outside, &chk_link).unwrap();
    // An unfinished checkpoint holding a link out and a FIFO, besides a regular file.
    let unfinished = job.join("chk-7");
    std::fs::create_dir(&unfinished).unwrap();
    std::fs::write(unfinished.join("op_0.manifest"), b"half").unwrap();
    symlink(&victim, unfinished.join("link")).unwrap();
    make_special(&unfinished.join("fifo"), Special::Fifo);
    let reported = vec![
        dangling,
        linked_out,
        subdir,
        fifo,
        chk_file,
        chk_link,
        unfinished.join("link"),
        unfinished.join("fifo"),
    ];
    (reported, victim)
}

#[test]
fn listing_reports_odd_entries_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let (reported, victim) = make_odd_entries(&job, &dir.path().join("outside"));
    let r = tidemark(&["checkpoints", s(&job)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("odd entries"), "{}", r.stdout);
    for p in &reported[..6] {
        assert!(
            r.stdout.contains(s(p)),
            "{} not reported:\n{}",
            p.display(),
            r.stdout
        );
    }
    assert!(r.stdout.contains("\\xff"), "non-UTF-8 name:\n{}", r.stdout);
    assert!(r.stdout.contains("dangling symbolic link"), "{}", r.stdout);
    assert!(r.stdout.contains("    2  completed"), "{}", r.stdout);
    let r = tidemark(&["checkpoints", "--json", s(&job)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["odd_entries"].as_array().unwrap().len() >= 7, "{v}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
}

#[test]
fn cleanup_deletes_only_regular_files_it_wrote_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let outside = dir.path().join("outside");
    let (reported, victim) = make_odd_entries(&job, &outside);
    let store = CheckpointStore::open(
        Arc::new(LocalStorage::new(
            StdFs::shared(),
            dir.path().join("checkpoints"),
            JobId::new("job1").unwrap(),
        )),
        CheckpointConfig {
            num_retained: 2,
            ..CheckpointConfig::default()
        },
    )
    .unwrap();
    let odd = store.open_report().odd_entries.join("\n");
    for p in &reported {
        assert!(odd.contains(s(p)), "{} not reported:\n{odd}", p.display());
        assert!(p.symlink_metadata().is_ok(), "{} was deleted", p.display());
    }
    assert!(odd.contains("\\xff"), "{odd}");
    assert!(
        !job.join("chk-7/op_0.manifest").exists(),
        "the unfinished checkpoint's own file stays"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(outside.join("victim").exists());
    assert_eq!(store.list().len(), 2);
    // Ids go on past the odd chk-9.
    assert!(store
        .begin(CheckpointId(9), CheckpointKind::Incremental)
        .is_err());
    drop(
        store
            .begin(CheckpointId(10), CheckpointKind::Incremental)
            .unwrap(),
    );
}

#[test]
fn a_shared_directory_that_is_a_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    std::fs::write(job.join("taskowned/state"), b"task-owned").unwrap();
    std::fs::remove_dir_all(job.join("shared")).unwrap();
    symlink("taskowned", job.join("shared")).unwrap();
    let e = CheckpointStore::open(
        Arc::new(LocalStorage::new(
            StdFs::shared(),
            dir.path().join("checkpoints"),
            JobId::new("job1").unwrap(),
        )),
        CheckpointConfig::default(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(e.to_string().contains(s(&job.join("shared"))), "{e}");
    assert_eq!(
        std::fs::read(job.join("taskowned/state")).unwrap(),
        b"task-owned"
    );
    let r = tidemark(&["checkpoints", s(&job)]);
    assert!(
        r.stdout.contains("not a directory") || r.stderr.contains("shared"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        std::fs::read(job.join("taskowned/state")).unwrap(),
        b"task-owned"
    );
}

/// Three incremental checkpoints, two retained; returns the job directory and what the run
/// said checkpoint 2 placed (files placed, files in all).
fn three_checkpoints(dir: &Path) -> (PathBuf, u64, u64) {
    let db = Db::open(dir.join("work"), small_options()).unwrap();
    let storage = LocalStorage::new(
        StdFs::shared(),
        dir.join("checkpoints"),
        JobId::new("job1").unwrap(),
    );
    let store = CheckpointStore::open(
        Arc::new(storage),
        CheckpointConfig {
            num_retained: 2,
            ..CheckpointConfig::default()
        },
    )
    .unwrap();
    let subtask = SubtaskId {
        operator_id: "op".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).unwrap(),
    };
    let mut said = (0, 0);
    for round in 1..=3u64 {
        for i in 0..300 {
            db.put(format!("key{round}-{i:04}"), vec![b'x'; 50])
                .unwrap();
        }
        let c = checkpoint_db(
            &store,
            CheckpointId(round),
            CheckpointKind::Incremental,
            &db,
            &subtask,
            Vec::new(),
        )
        .unwrap();
        let st = c.stats;
        if round == 2 {
            said = (st.files_placed, st.files_placed + st.files_referenced);
        }
    }
    drop(store);
    db.close().unwrap();
    (dir.join("checkpoints/job1"), said.0, said.1)
}

#[test]
fn newcomer_papercuts() {
    let dir = tempfile::tempdir().unwrap();
    let (job, placed, all) = three_checkpoints(dir.path());
    assert!(placed < all, "checkpoint 2 reused files of checkpoint 1");
    // The oldest retained checkpoint shows what the run placed, not everything.
    let r = tidemark(&["checkpoints", "--json", s(&job)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let row = v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == 2)
        .unwrap()
        .clone();
    assert_eq!(row["files_placed"], placed, "{row}");
    assert_eq!(row["files_referenced"], all, "{row}");
    let r = tidemark(&["checkpoints", s(&job)]);
    assert!(
        r.stdout.contains(&format!("{placed} of {all}")),
        "{}",
        r.stdout
    );

    // Key-group ranges in Flink's inclusive form.
    let chk = job.join("chk-3");
    let r = tidemark(&["inspect", s(&chk)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("key groups 0..=127"), "{}", r.stdout);

    // A private manifest snapshot is recognized, and checked against _metadata.
    let manifest = std::fs::read_dir(&chk)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| s(p).ends_with(".manifest"))
        .unwrap();
    let r = tidemark(&["inspect", s(&manifest)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("LSM manifest snapshot"), "{}", r.stdout);
    assert!(r.stdout.contains("match"), "{}", r.stdout);
    let r = tidemark(&["verify", s(&manifest)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // A key argument that is not UTF-8 points at \xNN and --hex.
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("get")
        .arg(&chk)
        .arg(std::ffi::OsStr::from_bytes(b"key\xff"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("key\\xff") && err.contains("--hex"), "{err}");

    // An undecodable _metadata is counted with its size.
    let m = job.join("chk-2/_metadata");
    let mut bytes = std::fs::read(&m).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 0x40;
    std::fs::write(&m, &bytes).unwrap();
    let r = tidemark(&["verify", s(&job.join("chk-2"))]);
    assert_eq!(r.code, 1);
    assert!(!r.stdout.contains("(0 B)"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("{len} B")), "{}", r.stdout);

    // A Flink _metadata is named as Flink's.
    let flink = job.join("chk-9");
    std::fs::create_dir(&flink).unwrap();
    let mut fb = vec![0x49, 0x60, 0x67, 0x2d, 0, 0, 0, 3];
    fb.extend_from_slice(&[0u8; 100]);
    std::fs::write(flink.join("_metadata"), fb).unwrap();
    for cmd in ["inspect", "verify"] {
        let r = tidemark(&[cmd, s(&flink.join("_metadata"))]);
        assert_eq!(r.code, 1, "{cmd}");
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(all.contains("Apache Flink"), "{cmd}: {all}");
        assert!(!all.contains("bad magic"), "{cmd}: {all}");
    }
}
