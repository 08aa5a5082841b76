// Fuzz check `checkpoint_tree`: the checkpoint layer against a hostile job directory tree.
//
// Every input is valid: it is read as a stream of small decisions (zeros once exhausted).
// A real store takes 1 to 3 checkpoints into a job directory (values written
// deterministically, so the state of each checkpoint is known); then the input chooses up
// to 6 mutations, each a kind applied at a place:
// - places: a `chk-N/_metadata`, a shared SST, a private `*.manifest`, `shared/` itself, a
//   `chk-N` itself, `taskowned/`, or an extra name (some not UTF-8) in the job directory,
//   `shared/`, a `chk-N` or `taskowned/`;
// - kinds (replacing what is there, or adding): a FIFO, a unix socket, a symlink to
//   `/dev/zero` or `/dev/null`, to a sentinel file outside the job directory or to the
//   directory holding it, a relative symlink (to a file or directory of the job, or
//   escaping to the sentinel), a dangling symlink, a directory, a hard link of a real
//   file, a regular file of chosen bytes; and, on a regular file, a truncation or a bit
//   flip.
// Then every read-only entry point (`resolve`, `resolve_verified`, restore of a verified
// and of an unverified checkpoint, `scan_job`, and the `checkpoints`, `verify` and
// `inspect` commands through `tidemark::cli::run`) and the owning one
// (`CheckpointStore::open`, its listing, then a drop or a `shutdown`) run against the tree,
// and the check asserts:
// - no panic, and the whole check finishes within `DEADLINE` (nothing blocks on a FIFO);
// - read-only entry points change nothing in the job directory;
// - nothing outside the job directory changes or disappears; the sentinel keeps its bytes
//   and mtime, is never hard-linked (its link count stays 1), and no file of a restore
//   directory shares its inode (nor is a symlink);
// - a checkpoint whose `chk-N`, `_metadata` or referenced files are not, after following
//   links inside the job directory, regular files with the bytes the checkpoint wrote is
//   refused by `resolve_verified` and by the `verify` command;
// - a verified restore holds exactly the data of the checkpoint it claims;
// - every entry of `shared/` that is not a regular file with a UTF-8 name is reported as
//   an odd entry by the listing.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidemark::checkpoint::{
    resolve, resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
    CheckpointStore, ExternalizedCleanup, JobId, JobTermination, KeyGroupRange, LocalStorage,
    ResolvedCheckpoint,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, Options, SyncMode};
use tidemark::state::lsm_snapshot::{restore_store, snapshot_async, snapshot_sync, SubtaskId};

include!("support.rs");

/// The whole check must finish within this time (a blocked open would exceed it).
const DEADLINE: Duration = Duration::from_secs(20);
const JOB: &str = "job";
const SENTINEL_BYTES: &[u8] =
    b"sentinel: outside the job directory; never read, linked or deleted\n";
/// Extra names the input may add (some not UTF-8, some the store's own).
const EXTRA_NAMES: &[&[u8]] = &[
    b"000900.sst",
    b"chk-9",
    b"chk-\xff",
    b"\xff\xfe.sst",
    b"_metadata",
    b"counter_0.manifest",
    b"LOCK",
    b"shared",
    b"x",
    b"chk-0",
];

/// Checks one fuzz input (see the file's first comment), under `DEADLINE`.
pub fn check(data: &[u8]) {
    let owned = data.to_vec();
    let step = Arc::new(Mutex::new(String::from("setup")));
    let step2 = Arc::clone(&step);
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        run(&owned, &step2);
        let _ = tx.send(());
    });
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(DEADLINE) {
        panic!(
            "checkpoint_tree: not finished after {DEADLINE:?}, blocked in: {}",
            step.lock().unwrap()
        );
    }
    if let Err(p) = worker.join() {
        std::panic::resume_unwind(p);
    }
}

fn set_step(step: &Mutex<String>, s: String) {
    *step.lock().unwrap() = s;
}

/// The state of checkpoint `n` as the setup writes it.
fn expected(n: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in 1..=n {
        for j in 0..5 {
            m.insert(
                format!("k{i}-{j}").into_bytes(),
                format!("v{i}-{j}").into_bytes(),
            );
        }
    }
    m.insert(b"common".to_vec(), format!("c{n}").into_bytes());
    if n >= 3 {
        m.remove(&b"k1-0"[..]);
    }
    m
}

fn small_options() -> Options {
    Options {
        sync: SyncMode::None,
        memtable_size_bytes: 64 << 10,
        block_cache_bytes: 64 << 10,
        flush_compression_thread: false,
        ..Options::default()
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// What one entry is, links not followed, for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryState {
    kind: &'static str,
    len: u64,
    ino: u64,
    mtime_ns: i128,
    link: Option<PathBuf>,
}

fn entry_state(p: &Path) -> Option<EntryState> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_symlink() {
        "link"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "other"
    };
    Some(EntryState {
        kind,
        // A directory's size changes with its entries' names only; it is compared through
        // the entries.
        len: if ft.is_dir() { 0 } else { m.len() },
        ino: m.ino(),
        mtime_ns: if ft.is_dir() {
            0
        } else {
            m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
        },
        link: std::fs::read_link(p).ok(),
    })
}

/// Every entry under `root` (links not followed), keyed by its path.
fn tree(root: &Path) -> BTreeMap<PathBuf, EntryState> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Some(s) = entry_state(&p) else { continue };
        if s.kind == "dir" {
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    todo.push(e.path());
                }
            }
        }
        out.insert(p, s);
    }
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    job_dir: PathBuf,
    outside: PathBuf,
    sentinel: PathBuf,
    /// Checkpoint ids taken, 1..=n.
    ids: Vec<u64>,
    /// For each checkpoint: every file it references (relative to the job directory, with
    /// its `_metadata`), with the bytes it wrote.
    files: BTreeMap<u64, Vec<(String, Vec<u8>)>>,
    metas: Vec<String>,
    ssts: Vec<String>,
    manifests: Vec<String>,
}

fn setup(inp: &mut Input) -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let sentinel = outside.join("sentinel");
    std::fs::write(&sentinel, SENTINEL_BYTES).unwrap();
    std::fs::write(outside.join("other.sst"), b"another file outside").unwrap();
    let ckpts = root.join("ckpts");
    let job_dir = ckpts.join(JOB);

    let n = 1 + (inp.byte() % 3) as u64;
    let storage = LocalStorage::new(StdFs::shared(), &ckpts, JobId::new(JOB).unwrap());
    let config = CheckpointConfig {
        num_retained: 3,
        ..CheckpointConfig::default()
    };
    let store = CheckpointStore::open(Arc::new(storage), config).expect("open checkpoint store");
    let db = Db::open(root.join("db"), small_options()).expect("open store");
    let subtask = SubtaskId {
        operator_id: "counter".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).unwrap(),
    };
    let mut files = BTreeMap::new();
    for i in 1..=n {
        for j in 0..5 {
            db.put(format!("k{i}-{j}"), format!("v{i}-{j}")).unwrap();
        }
        db.put(b"common", format!("c{i}")).unwrap();
        if i == 3 {
            db.delete(b"k1-0").unwrap();
        }
        let ticket = snapshot_sync(&db).expect("snapshot");
        let pending = store
            .begin(CheckpointId(i), CheckpointKind::Incremental)
            .expect("begin");
        let state = snapshot_async(ticket, &pending, &subtask).expect("snapshot");
        let c = pending
            .commit(CheckpointContent {
                operator_states: vec![state],
                source_offsets: vec![],
                properties: vec![],
            })
            .expect("checkpoint");
        let mut refs = Vec::new();
        let meta = format!("chk-{i}/_metadata");
        refs.push((meta.clone(), std::fs::read(job_dir.join(&meta)).unwrap()));
        for h in c.metadata.file_handles() {
            refs.push((
                h.path.clone(),
                std::fs::read(job_dir.join(&h.path)).unwrap(),
            ));
        }
        files.insert(i, refs);
    }
    drop(store);
    drop(db);
    let ids: Vec<u64> = (1..=n).collect();
    let metas = ids.iter().map(|i| format!("chk-{i}/_metadata")).collect();
    let mut ssts: Vec<String> = std::fs::read_dir(job_dir.join("shared"))
        .unwrap()
        .map(|e| format!("shared/{}", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    ssts.sort();
    let mut manifests = Vec::new();
    for i in &ids {
        for e in std::fs::read_dir(job_dir.join(format!("chk-{i}"))).unwrap() {
            let name = e.unwrap().file_name().to_str().unwrap().to_string();
            if name.ends_with(".manifest") {
                manifests.push(format!("chk-{i}/{name}"));
            }
        }
    }
    std::fs::create_dir_all(job_dir.join("taskowned")).unwrap();
    std::fs::write(job_dir.join("taskowned/task-state"), b"owned by the task").unwrap();
    Setup {
        _tmp: tmp,
        root,
        job_dir,
        outside,
        sentinel,
        ids,
        files,
        metas,
        ssts,
        manifests,
    }
}

fn pick<'a, T>(inp: &mut Input, v: &'a [T]) -> Option<&'a T> {
    if v.is_empty() {
        None
    } else {
        Some(&v[inp.byte() as usize % v.len()])
    }
}

/// Removes whatever is at `p` without following a link.
fn remove_entry(p: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if m.is_dir() {
            let _ = std::fs::remove_dir_all(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One mutation chosen by the input; returns a description.
fn mutate(s: &Setup, inp: &mut Input) -> String {
    let chk_dirs: Vec<String> = s.ids.iter().map(|i| format!("chk-{i}")).collect();
    // The place, as bytes relative to the job directory.
    let place: Vec<u8> = match inp.byte() % 8 {
        0 => pick(inp, &s.metas)
            .cloned()
            .unwrap_or_default()
            .into_bytes(),
        1 => pick(inp, &s.ssts).cloned().unwrap_or_default().into_bytes(),
        2 => pick(inp, &s.manifests)
            .cloned()
            .unwrap_or_default()
            .into_bytes(),
        3 => b"shared".to_vec(),
        4 => pick(inp, &chk_dirs)
            .cloned()
            .unwrap_or_default()
            .into_bytes(),
        5 => b"taskowned".to_vec(),
        6 => {
            let parents = ["shared", "taskowned", "chk-1", "chk-2", "chk-3"];
            let parent = pick(inp, &parents).unwrap();
            let name = pick(inp, EXTRA_NAMES).unwrap();
            let mut p = parent.as_bytes().to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            p
        }
        _ => pick(inp, EXTRA_NAMES).unwrap().to_vec(),
    };
    if place.is_empty() {
        return String::from("no place");
    }
    let path = s.job_dir.join(os(&place));
    // The parent must be a real directory of the job (never write through a link).
    let parent_ok = path
        .parent()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.is_dir());
    if !parent_ok {
        return format!("{}: parent is not a directory", path.display());
    }
    let depth = place.iter().filter(|&&b| b == b'/').count();
    let up = "../".repeat(depth);
    let kind = inp.byte() % 13;
    let what = match kind {
        0 => {
            remove_entry(&path);
            let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
            unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
            "fifo".to_string()
        }
        1 => {
            remove_entry(&path);
            // The listener is dropped at once: the socket file stays, nobody accepts.
            let _ = std::os::unix::net::UnixListener::bind(&path);
            "socket".to_string()
        }
        2 | 3 | 4 | 5 | 7 => {
            let target: PathBuf = match kind {
                2 => "/dev/zero".into(),
                3 => "/dev/null".into(),
                4 => s.sentinel.clone(),
                5 => s.outside.clone(),
                _ => {
                    if inp.byte() % 2 == 0 {
                        "does-not-exist".into()
                    } else {
                        s.root.join("missing/nowhere")
                    }
                }
            };
            remove_entry(&path);
            let _ = std::os::unix::fs::symlink(&target, &path);
            format!("symlink to {}", target.display())
        }
        6 => {
            let mut targets: Vec<String> = Vec::new();
            targets.extend(s.metas.iter().cloned());
            targets.extend(s.ssts.iter().cloned());
            targets.extend(s.manifests.iter().cloned());
            targets.extend(["shared".to_string(), "taskowned".to_string()]);
            targets.extend(chk_dirs.iter().cloned());
            targets.push("../../outside/sentinel".into());
            targets.push("../../outside".into());
            targets.push(".".into());
            let t = pick(inp, &targets).unwrap();
            let target = format!("{up}{t}");
            remove_entry(&path);
            let _ = std::os::unix::fs::symlink(&target, &path);
            format!("relative symlink to {target}")
        }
        8 => {
            remove_entry(&path);
            let _ = std::fs::create_dir(&path);
            if inp.byte() % 2 == 1 {
                let _ = std::fs::write(path.join("inner"), b"inside a directory");
            }
            "directory".to_string()
        }
        9 => {
            let mut sources: Vec<&String> = Vec::new();
            sources.extend(s.metas.iter());
            sources.extend(s.ssts.iter());
            sources.extend(s.manifests.iter());
            let src = s.job_dir.join(pick(inp, &sources).unwrap());
            let is_file = std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file());
            if !is_file || src == path {
                return format!("{}: no regular file to link", path.display());
            }
            remove_entry(&path);
            let _ = std::fs::hard_link(&src, &path);
            format!("hard link of {}", src.display())
        }
        10 | 11 => {
            let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            if !is_file {
                return format!("{}: not a regular file", path.display());
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if bytes.is_empty() {
                return format!("{}: empty", path.display());
            }
            if kind == 10 {
                let keep = bytes.len() * inp.byte() as usize / 256;
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(keep as u64).unwrap();
                format!("truncated to {keep}")
            } else {
                let at = inp.u16() as usize % bytes.len();
                let bit = inp.byte() % 8;
                bytes[at] ^= 1 << bit;
                // Written in place (same inode, as a disk error would do).
                std::fs::write(&path, &bytes).unwrap();
                format!("bit {bit} of byte {at} flipped")
            }
        }
        _ => {
            let bytes = inp.bytes(64).to_vec();
            remove_entry(&path);
            let _ = std::fs::write(&path, &bytes);
            format!("regular file of {} bytes", bytes.len())
        }
    };
    format!("{}: {what}", path.display())
}

/// The bytes a reader gets at `rel` when links are followed, if the file it reaches is a
/// regular file whose canonical path lies in the job directory; `None` otherwise.
fn effective_content(s: &Setup, rel: &str) -> Option<Vec<u8>> {
    let canonical_job = std::fs::canonicalize(&s.job_dir).ok()?;
    let p = s.job_dir.join(rel);
    let real = std::fs::canonicalize(&p).ok()?;
    if !real.starts_with(&canonical_job) {
        return None;
    }
    let m = std::fs::metadata(&real).ok()?;
    if !m.is_file() {
        return None;
    }
    std::fs::read(&real).ok()
}

/// Whether checkpoint `id` must be refused: its directory is not a plain directory, or a
/// file it references does not hold the bytes it wrote.
fn must_fail(s: &Setup, id: u64) -> bool {
    let chk = s.job_dir.join(format!("chk-{id}"));
    if !std::fs::symlink_metadata(&chk).is_ok_and(|m| m.is_dir()) {
        return true;
    }
    s.files[&id]
        .iter()
        .any(|(rel, bytes)| effective_content(s, rel).as_deref() != Some(bytes.as_slice()))
}

fn db_contents(db: &Db) -> tidemark::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    db.iter()?.collect()
}

/// Checks that nothing in `dir` is a link or shares an inode with a file outside the job
/// directory.
fn check_restore_dir(s: &Setup, dir: &Path) {
    let outside: BTreeSet<(u64, u64)> = tree(&s.outside)
        .keys()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    for (p, st) in tree(dir) {
        assert_ne!(st.kind, "link", "restore placed a symlink: {}", p.display());
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            assert!(
                !outside.contains(&(m.dev(), m.ino())),
                "{} is a hard link of a file outside the job directory",
                p.display()
            );
        }
    }
}

/// Restores `r` into a fresh directory; with `verified`, checks its data is checkpoint
/// `r.checkpoint_id`'s exactly.
fn restore(s: &Setup, r: &ResolvedCheckpoint, verified: bool, k: &mut u32, step: &Mutex<String>) {
    *k += 1;
    let dir = s.root.join(format!("restore-{k}"));
    set_step(
        step,
        format!(
            "restore_store of chk-{} into {}",
            r.checkpoint_id.0,
            dir.display()
        ),
    );
    let Some(state) = r.metadata.operator_states.first() else {
        return;
    };
    let res = restore_store(
        &r.storage(StdFs::shared()),
        r.checkpoint_id,
        state,
        &dir,
        small_options(),
    );
    if let Ok(db) = res {
        let id = r.checkpoint_id.0;
        let contents = db_contents(&db);
        if verified {
            assert!(
                s.ids.contains(&id),
                "restored a checkpoint never taken: {id}"
            );
            let got = contents.expect("a verified restore reads back");
            assert_eq!(
                got,
                expected(id),
                "a verified restore of chk-{id} holds other data"
            );
        }
        drop(db);
    }
    check_restore_dir(s, &dir);
}

fn cli(args: &[&OsStr], step: &Mutex<String>) -> Result<(), String> {
    let mut argv: Vec<OsString> = vec!["tidemark".into()];
    argv.extend(args.iter().map(|a| a.to_os_string()));
    set_step(step, format!("tidemark {:?}", &argv[1..]));
    let parsed = tidemark::cli::parse(argv).map_err(|e| e.one_line())?;
    let mut out = Vec::new();
    tidemark::cli::run(&parsed, &mut out).map_err(|e| e.one_line())
}

fn run(data: &[u8], step: &Mutex<String>) {
    let mut inp = Input::new(data);
    let s = setup(&mut inp);
    let sentinel_before = std::fs::symlink_metadata(&s.sentinel).unwrap();
    let mut mutations = Vec::new();
    for _ in 0..inp.byte() % 7 {
        mutations.push(mutate(&s, &mut inp));
    }
    let ctx = mutations.join("; ");
    if std::env::var_os("CHECKPOINT_TREE_TRACE").is_some() {
        eprintln!("checkpoints 1..={}; {ctx}", s.ids.len());
    }
    let outside_before = tree(&s.outside);
    let job_before = tree(&s.job_dir);
    let fs = StdFs::shared();
    let mut restores = 0u32;

    // Read-only entry points.
    let mut resolve_paths: Vec<PathBuf> = vec![s.job_dir.clone()];
    for i in &s.ids {
        resolve_paths.push(s.job_dir.join(format!("chk-{i}")));
        resolve_paths.push(s.job_dir.join(format!("chk-{i}/_metadata")));
    }
    for p in &resolve_paths {
        set_step(step, format!("resolve {}", p.display()));
        let _ = resolve(fs.as_ref(), p);
        set_step(step, format!("resolve_verified {}", p.display()));
        let r = resolve_verified(Arc::clone(&fs), p, false);
        if let Some(i) = s.ids.iter().find(|i| p.ends_with(format!("chk-{i}"))) {
            if must_fail(&s, *i) {
                assert!(
                    r.is_err(),
                    "{ctx}: resolve_verified accepts damaged chk-{i}"
                );
            }
        }
        if let Ok(r) = r {
            let id = r.checkpoint_id.0;
            assert!(
                s.ids.contains(&id),
                "{ctx}: resolved a checkpoint never taken: {id}"
            );
            assert!(
                !must_fail(&s, id),
                "{ctx}: resolve_verified accepts damaged chk-{id}"
            );
            if p == &s.job_dir || inp.byte() % 4 == 0 {
                restore(&s, &r, true, &mut restores, step);
            }
        }
    }
    set_step(step, "resolve_verified (allow unverified)".into());
    if let Ok(r) = resolve_verified(Arc::clone(&fs), &s.job_dir, true) {
        restore(&s, &r, false, &mut restores, step);
    }

    set_step(step, "scan_job".into());
    if let Ok(scan) = tidemark::cli::checkpoints::scan_job(&s.job_dir) {
        let shared = s.job_dir.join("shared");
        if std::fs::symlink_metadata(&shared).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&shared).unwrap().flatten() {
                let plain = e.file_name().to_str().is_some()
                    && std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_file());
                if !plain {
                    let shown = e.file_name().to_string_lossy().into_owned();
                    let stem = shown.split('\u{fffd}').next().unwrap_or("").to_string();
                    assert!(
                        scan.odd_entries
                            .iter()
                            .any(|l| l.contains("shared/") && l.contains(&stem)),
                        "{ctx}: shared/{shown} is not reported: {:?}",
                        scan.odd_entries
                    );
                }
            }
        }
    }
    let job = s.job_dir.as_os_str();
    let _ = cli(&[os(b"checkpoints"), job], step);
    let _ = cli(&[os(b"checkpoints"), os(b"--json"), job], step);
    let _ = cli(&[os(b"verify"), job], step);
    let _ = cli(&[os(b"inspect"), job], step);
    for i in &s.ids {
        let chk = s.job_dir.join(format!("chk-{i}"));
        let v = cli(&[os(b"verify"), chk.as_os_str()], step);
        if must_fail(&s, *i) {
            assert!(v.is_err(), "{ctx}: verify passes damaged chk-{i}");
        }
        let _ = cli(&[os(b"inspect"), chk.as_os_str()], step);
    }
    // Every entry the tree holds, given to inspect and verify (a FIFO must not block).
    let mut inspected = 0;
    for p in job_before.keys() {
        if p == &s.job_dir || inspected >= 24 {
            continue;
        }
        inspected += 1;
        let _ = cli(&[os(b"inspect"), p.as_os_str()], step);
        if inp.byte() % 2 == 0 {
            let _ = cli(&[os(b"verify"), p.as_os_str()], step);
        }
    }
    set_step(step, "compare after read-only calls".into());
    assert_eq!(
        tree(&s.job_dir),
        job_before,
        "{ctx}: a read-only entry point changed the job directory"
    );
    check_outside(&s, &outside_before, &sentinel_before, &ctx);

    // The owning entry point.
    let config = CheckpointConfig {
        num_retained: 1 + (inp.byte() % 3) as usize,
        cleanup: match inp.byte() % 3 {
            0 => ExternalizedCleanup::NoExternalized,
            1 => ExternalizedCleanup::RetainOnCancellation,
            _ => ExternalizedCleanup::DeleteOnCancellation,
        },
        restored: None,
    };
    let storage = LocalStorage::new(
        fs.clone(),
        s.job_dir.parent().unwrap(),
        JobId::new(JOB).unwrap(),
    );
    set_step(step, "CheckpointStore::open".into());
    if let Ok(store) = CheckpointStore::open(Arc::new(storage), config) {
        let _ = store.list();
        let _ = store.latest();
        let _ = store.orphans();
        let how = match inp.byte() % 5 {
            0 => None,
            1 => Some(JobTermination::Finished),
            2 => Some(JobTermination::Cancelled),
            3 => Some(JobTermination::Failed),
            _ => Some(JobTermination::Suspended),
        };
        set_step(step, format!("CheckpointStore::shutdown({how:?})"));
        match how {
            None => drop(store),
            Some(h) => {
                let _ = store.shutdown(h);
            }
        }
    }
    check_outside(&s, &outside_before, &sentinel_before, &ctx);

    // Read-only again, on what the owner left.
    set_step(step, "resolve_verified after the owner".into());
    if let Ok(r) = resolve_verified(Arc::clone(&fs), &s.job_dir, false) {
        restore(&s, &r, true, &mut restores, step);
    }
    set_step(step, "scan_job after the owner".into());
    let _ = tidemark::cli::checkpoints::scan_job(&s.job_dir);
    check_outside(&s, &outside_before, &sentinel_before, &ctx);
    set_step(step, "cleanup".into());
}

fn check_outside(
    s: &Setup,
    before: &BTreeMap<PathBuf, EntryState>,
    sentinel_before: &std::fs::Metadata,
    ctx: &str,
) {
    assert_eq!(
        &tree(&s.outside),
        before,
        "{ctx}: something outside the job directory changed"
    );
    let m = std::fs::symlink_metadata(&s.sentinel).expect("the sentinel exists");
    assert_eq!(
        std::fs::read(&s.sentinel).unwrap(),
        SENTINEL_BYTES,
        "{ctx}: sentinel changed"
    );
    assert_eq!(m.ino(), sentinel_before.ino());
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (sentinel_before.mtime(), sentinel_before.mtime_nsec()),
        "{ctx}: sentinel's mtime changed"
    );
    assert_eq!(m.nlink(), 1, "{ctx}: the sentinel was hard-linked");
}
