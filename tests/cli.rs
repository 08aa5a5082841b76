//! The `tidemark` command, run as a process on stores and checkpoints made through the
//! library: what each command prints (JSON parsed back and checked), and how each fails.

mod common;
#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use store_checkpoint::checkpoint_db;
use tidemark::checkpoint::{
    CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore, JobId, KeyGroupRange,
    LocalStorage, SourceOffset,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, Options, WriteBatch};
use tidemark::state::lsm_snapshot::SubtaskId;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

fn tidemark(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tidemark");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit status non-zero, exactly one line on stderr, `tidemark:` first, naming `path`.
fn assert_fails_naming(r: &Run, path: &Path, what: &str) {
    assert_ne!(r.code, 0, "{what}: exit status 0\n{}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr is not one line:\n{}",
        r.stderr
    );
    assert!(lines[0].starts_with("tidemark: "), "{what}: {}", lines[0]);
    assert!(
        lines[0].contains(s(path)),
        "{what}: stderr does not name {}: {}",
        path.display(),
        lines[0]
    );
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
}

fn ok(r: &Run, what: &str) {
    assert_eq!(
        r.code, 0,
        "{what}: stderr: {}\nstdout: {}",
        r.stderr, r.stdout
    );
    assert!(r.stderr.is_empty(), "{what}: stderr: {}", r.stderr);
}

fn small_options() -> Options {
    Options {
        memtable_size_bytes: 64 << 10,
        ..Options::default()
    }
}

/// A store with one flushed table (keys `k000`..`k199`, one binary key, one deleted key),
/// and writes since then left in its WAL.
fn make_store(dir: &Path) -> PathBuf {
    let path = dir.join("db");
    let db = Db::open(&path, small_options()).unwrap();
    for i in 0..200 {
        db.put(format!("k{i:03}"), format!("v{i}")).unwrap();
    }
    db.put(b"bin\x00\xff\\", b"\x01\x02").unwrap();
    db.delete("k005").unwrap();
    db.flush().unwrap();
    let mut b = WriteBatch::new();
    b.put("late1", "x").put("late2", "y").delete("k001");
    db.write(b).unwrap();
    db.close().unwrap();
    path
}

fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn flip_bit(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Three incremental checkpoints of one store (two retained): `counter` is 1, 2, 3 in
/// checkpoints 1, 2, 3; `gone` is deleted in checkpoint 3. Returns the job directory.
fn make_checkpoints(dir: &Path) -> PathBuf {
    let db = Db::open(
        dir.join("work"),
        Options {
            wal: false,
            ..small_options()
        },
    )
    .unwrap();
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
    for round in 1..=3u64 {
        for i in 0..300 {
            db.put(format!("key{round}-{i:04}"), vec![b'x'; 50])
                .unwrap();
        }
        db.put("counter", round.to_string()).unwrap();
        if round == 1 {
            db.put("gone", "soon").unwrap();
        }
        if round == 3 {
            db.delete("gone").unwrap();
        }
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
    dir.join("checkpoints").join("job1")
}

#[test]
fn every_command_has_help() {
    let top = tidemark(&["--help"]);
    ok(&top, "--help");
    for cmd in ["inspect", "verify", "checkpoints", "get", "demo"] {
        assert!(top.stdout.contains(cmd), "{}", top.stdout);
        let r = tidemark(&[cmd, "--help"]);
        ok(&r, cmd);
        assert!(
            r.stdout.contains(&format!("Usage: tidemark {cmd}")),
            "{}",
            r.stdout
        );
    }
    let r = tidemark(&["--version"]);
    ok(&r, "--version");
    assert_eq!(
        r.stdout,
        format!("tidemark {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_with_the_usage_on_stderr() {
    for args in [
        &["frobnicate"][..],
        &["inspect"],
        &["inspect", "--nope", "x"],
        &["get", "x", "zz", "--hex"],
        &[],
    ] {
        let r = tidemark(args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert!(
            r.stderr.contains("Usage: tidemark"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    }
    let r = tidemark(&["demo", "--seconds", "0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--seconds"), "{}", r.stderr);
}

/// A table of format version 1 (the seed corpus keeps two) is still inspected, its filter
/// shown with the version 1 layout.
#[test]
fn inspect_reads_a_version_1_table() {
    let dir = tempfile::tempdir().unwrap();
    let sst = dir.path().join("000009.sst");
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus-seed/sst_open_scan/store-table-v1-0");
    std::fs::copy(seed, &sst).unwrap();
    let r = tidemark(&["inspect", s(&sst), "--json"]);
    ok(&r, "inspect version 1 sst");
    let j = r.json();
    assert_eq!(j["format_version"], 1);
    assert_eq!(j["filter"]["layout"], "spread");
    let r = tidemark(&["inspect", s(&sst)]);
    ok(&r, "inspect version 1 sst as text");
    assert!(r.stdout.contains("format version  1"), "{}", r.stdout);
    assert!(r.stdout.contains("spread layout"), "{}", r.stdout);
    let r = tidemark(&["verify", s(&sst)]);
    ok(&r, "verify version 1 sst");
}

#[test]
fn inspect_sst_prints_properties_and_escaped_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_store(dir.path());
    let sst = files_with(&db, ".sst").remove(0);
    let r = tidemark(&["inspect", s(&sst), "--json", "--entries"]);
    ok(&r, "inspect sst");
    let j = r.json();
    assert_eq!(j["format"], "sst");
    // 200 puts and one binary key; k005's put is shadowed by its tombstone in the same
    // memtable, so the flush writes the tombstone only.
    assert_eq!(j["num_entries"], 201);
    assert_eq!(j["num_deletions"], 1);
    assert_eq!(j["smallest"]["key"], "bin\\x00\\xff\\\\");
    assert_eq!(j["largest"]["key"], "k199");
    assert_eq!(j["compression"], "lz4");
    assert_eq!(j["filter"]["kind"], "bloom");
    assert_eq!(j["format_version"], 2);
    assert_eq!(j["filter"]["layout"], "lines");
    let blocks = j["blocks"].as_array().unwrap();
    assert_eq!(blocks.len() as u64, j["data_blocks"].as_u64().unwrap());
    let entries = j["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 201);
    assert_eq!(entries[0]["value"], "\\x01\\x02");
    let k005 = entries
        .iter()
        .find(|e| e["key"] == "k005" && e["kind"] == "delete");
    assert!(k005.is_some(), "no tombstone for k005");
    assert!(
        !entries
            .iter()
            .any(|e| e["key"] == "k005" && e["kind"] != "delete"),
        "the shadowed put of k005 was flushed"
    );
    assert!(entries.iter().all(|e| e["seq"].as_u64().unwrap() > 0));

    let text = tidemark(&["inspect", s(&sst), "--entries"]);
    ok(&text, "inspect sst text");
    assert!(text.stdout.contains("k005 @"), "{}", text.stdout);
    assert!(
        text.stdout.contains("bin\\x00\\xff\\\\ @"),
        "{}",
        text.stdout
    );
}

#[test]
fn inspect_wal_manifest_current_and_store_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_store(dir.path());

    let wal = files_with(&db, ".wal")
        .into_iter()
        .max_by_key(|w| std::fs::metadata(w).unwrap().len())
        .expect("a WAL");
    let r = tidemark(&["inspect", s(&wal), "--entries", "--json"]);
    ok(&r, "inspect wal");
    let j = r.json();
    assert_eq!(j["format"], "wal");
    assert_eq!(j["end"]["status"], "clean");
    let records = j["records"].as_array().unwrap();
    let last = records.last().unwrap();
    assert_eq!(last["ops"], 3);
    let ops: Vec<(&str, &str)> = last["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["key"].as_str().unwrap(), o["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        vec![("late1", "put"), ("late2", "put"), ("k001", "delete")]
    );

    let manifest = common::manifest_path(&db);
    let r = tidemark(&["inspect", s(&manifest), "--json"]);
    ok(&r, "inspect manifest");
    let j = r.json();
    assert_eq!(j["format"], "manifest");
    assert!(!j["edits"].as_array().unwrap().is_empty());

    let r = tidemark(&["inspect", s(&db.join("CURRENT")), "--json"]);
    ok(&r, "inspect CURRENT");
    let j = r.json();
    assert_eq!(
        j["manifest"],
        manifest.file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(j["manifest_exists"], true);

    let r = tidemark(&["inspect", s(&db), "--json"]);
    ok(&r, "inspect store");
    let j = r.json();
    assert_eq!(j["format"], "store");
    assert_eq!(j["table_files"], 1);
    assert_eq!(j["levels"][0]["files"], 1);
    assert!(!j["live_wals"].as_array().unwrap().is_empty());
    let text = tidemark(&["inspect", s(&db)]);
    ok(&text, "inspect store text");
    assert!(text.stdout.contains("live WAL"), "{}", text.stdout);
}

#[test]
fn verify_store_finds_a_flipped_bit_and_names_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_store(dir.path());
    let r = tidemark(&["verify", s(&db), "--json"]);
    ok(&r, "verify store");
    let j = r.json();
    assert_eq!(j["ok"], true);
    assert!(j["files"].as_array().unwrap().len() >= 4, "{j}");

    let sst = files_with(&db, ".sst").remove(0);
    flip_bit(&sst, 20);
    let r = tidemark(&["verify", s(&db)]);
    assert_fails_naming(&r, &db, "verify store with a flipped bit");
    assert_eq!(r.code, 1);
    let problems: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("PROBLEM"))
        .collect();
    assert!(!problems.is_empty(), "{}", r.stdout);
    assert!(problems.iter().all(|p| p.contains(s(&sst))), "{problems:?}");

    let r = tidemark(&["verify", s(&sst), "--json"]);
    assert_fails_naming(&r, &sst, "verify sst with a flipped bit");
    let j = r.json();
    assert_eq!(j["ok"], false);
    let r = tidemark(&["inspect", s(&sst), "--entries"]);
    assert_fails_naming(&r, &sst, "inspect --entries of a flipped bit");
}

#[test]
fn checkpoints_lists_newest_first_with_summary_and_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let r = tidemark(&["checkpoints", s(&job), "--json"]);
    ok(&r, "checkpoints");
    let j = r.json();
    assert_eq!(j["job_id"], "job1");
    let rows = j["checkpoints"].as_array().unwrap();
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![3, 2], "retention keeps two, newest first");
    for row in rows {
        assert_eq!(row["status"], "completed");
        assert_eq!(row["kind"], "incremental");
        assert!(row["bytes_placed"].as_u64().unwrap() <= row["bytes_full"].as_u64().unwrap());
    }
    // Checkpoint 3 reuses the tables checkpoint 2 placed.
    assert!(
        rows[0]["files_placed"].as_u64() < rows[0]["files_referenced"].as_u64(),
        "{j}"
    );
    assert_eq!(j["counts"]["completed"], 2);
    assert_eq!(j["orphans"].as_array().unwrap().len(), 0);
    assert!(
        j["full_size_bytes"]["max"].as_u64().unwrap()
            >= j["full_size_bytes"]["min"].as_u64().unwrap()
    );

    std::fs::write(job.join("shared/leftover.sst"), b"stale").unwrap();
    std::fs::create_dir(job.join("chk-4")).unwrap();
    let r = tidemark(&["checkpoints", s(&job), "--json"]);
    ok(&r, "checkpoints with leftovers");
    let j = r.json();
    assert_eq!(j["orphans"][0]["path"], "shared/leftover.sst");
    assert_eq!(j["checkpoints"][0]["status"], "incomplete");
    assert_eq!(j["counts"]["incomplete"], 1);
    let text = tidemark(&["checkpoints", s(&job)]);
    ok(&text, "checkpoints text");
    assert!(
        text.stdout.contains("shared/leftover.sst"),
        "{}",
        text.stdout
    );
}

#[test]
fn inspect_and_verify_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    for target in [job.join("chk-3"), job.join("chk-3/_metadata")] {
        let r = tidemark(&["inspect", s(&target), "--json"]);
        ok(&r, "inspect checkpoint");
        let j = r.json();
        assert_eq!(j["checkpoint_id"], 3);
        assert_eq!(j["kind"], "incremental");
        assert_eq!(j["format_version"], 3);
        assert_eq!(j["backends"], serde_json::json!(["lsm"]));
        assert_eq!(j["source_offsets"][0][2], 300);
        let sub = &j["subtasks"][0];
        assert_eq!(sub["max_parallelism"], 128);
        assert_eq!(sub["parallelism"], 1);
        let lsm = &sub["keyed_state"][0];
        assert_eq!(lsm["kind"], "incremental-lsm");
        assert_eq!(lsm["backend"], "lsm");
        assert_eq!(lsm["sequence"], lsm["lsm_last_sequence"]);
        let handles = lsm["handles"].as_array().unwrap();
        assert!(handles.iter().any(|h| h["role"] == "shared"));
        assert!(handles.iter().any(|h| h["role"] == "private"));
        assert!(handles
            .iter()
            .all(|h| h["crc32c"].as_str().unwrap().len() == 8));
        assert!(lsm["lsm_levels"].as_array().is_some(), "{sub}");
    }
    // A _metadata copied out of its job directory still shows what it holds.
    let copy = dir.path().join("metadata.copy");
    std::fs::copy(job.join("chk-3/_metadata"), &copy).unwrap();
    let r = tidemark(&["inspect", s(&copy), "--json"]);
    ok(&r, "inspect a copied _metadata");
    assert_eq!(r.json()["checkpoint_id"], 3);
    // Inspecting a job directory lists its checkpoints.
    let r = tidemark(&["inspect", s(&job), "--json"]);
    ok(&r, "inspect job");
    assert_eq!(r.json()["checkpoints"][0]["id"], 3);

    // A job directory means its latest checkpoint.
    let r = tidemark(&["verify", s(&job), "--json"]);
    ok(&r, "verify job");
    let j = r.json();
    assert_eq!(j["ok"], true);
    assert!(j["files"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("chk-3/_metadata"));

    let shared = files_with(&job.join("shared"), ".sst").remove(0);
    flip_bit(&shared, 3);
    let r = tidemark(&["verify", s(&job.join("chk-3"))]);
    assert_fails_naming(
        &r,
        &job.join("chk-3"),
        "verify checkpoint with a damaged file",
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("PROBLEM") && l.contains(s(&shared))),
        "{}",
        r.stdout
    );
}

#[test]
fn get_reads_each_checkpoint_as_of_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_checkpoints(dir.path());
    let get = |chk: &str, key: &str| tidemark(&["get", s(&job.join(chk)), key]);
    let r = get("chk-2", "counter");
    ok(&r, "get counter at 2");
    assert_eq!(r.stdout, "2\n");
    let r = get("chk-3", "counter");
    ok(&r, "get counter at 3");
    assert_eq!(r.stdout, "3\n");
    let r = get("chk-2", "gone");
    ok(&r, "get gone at 2");
    assert_eq!(r.stdout, "soon\n");
    let r = tidemark(&["get", s(&job), "key1-0042", "--json"]);
    ok(&r, "get from latest");
    let j = r.json();
    assert_eq!(j["found"], true);
    assert_eq!(j["checkpoint_id"], 3);
    assert_eq!(j["value"], "x".repeat(50));
    // "counter" in hex, value in hex.
    let r = tidemark(&["get", s(&job.join("chk-3")), "--hex", "636f756e746572"]);
    ok(&r, "get --hex");
    assert_eq!(r.stdout, "33\n");

    let r = get("chk-3", "gone");
    assert_fails_naming(&r, &job.join("chk-3"), "get of a deleted key");
    assert!(r.stderr.contains("was deleted"), "{}", r.stderr);
    let r = get("chk-3", "never-written");
    assert_fails_naming(&r, &job.join("chk-3"), "get of an absent key");
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    for cmd in [
        &["inspect"][..],
        &["verify"],
        &["checkpoints"],
        &["inspect", "--json"],
    ] {
        let mut args = cmd.to_vec();
        args.push(s(&missing));
        assert_fails_naming(
            &tidemark(&args),
            &missing,
            &format!("{cmd:?} of a missing path"),
        );
    }
    let r = tidemark(&["get", s(&missing), "k"]);
    assert_fails_naming(&r, &missing, "get from a missing path");

    let plain = dir.path().join("plain-dir");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), b"hello").unwrap();
    for cmd in ["inspect", "verify", "checkpoints"] {
        assert_fails_naming(
            &tidemark(&[cmd, s(&plain)]),
            &plain,
            &format!("{cmd} of a plain dir"),
        );
    }
    assert_fails_naming(
        &tidemark(&["get", s(&plain), "k"]),
        &plain,
        "get of a plain dir",
    );

    let mut noise = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..4096 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        noise.push((x >> 16) as u8);
    }
    for name in ["noise.bin", "000042.sst", "000043.wal", "MANIFEST-000044"] {
        let p = dir.path().join(name);
        std::fs::write(&p, &noise).unwrap();
        for cmd in ["inspect", "verify"] {
            assert_fails_naming(
                &tidemark(&[cmd, s(&p)]),
                &p,
                &format!("{cmd} of random bytes in {name}"),
            );
        }
    }

    let job = make_checkpoints(&dir.path().join("ck"));
    let meta = job.join("chk-3/_metadata");
    let bytes = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_naming(
        &tidemark(&["inspect", s(&meta)]),
        &meta,
        "inspect truncated _metadata",
    );
    assert_fails_naming(
        &tidemark(&["inspect", s(&job.join("chk-3"))]),
        &job.join("chk-3"),
        "inspect chk of truncated _metadata",
    );
    assert_fails_naming(
        &tidemark(&["verify", s(&meta)]),
        &meta,
        "verify truncated _metadata",
    );
    assert_fails_naming(
        &tidemark(&["checkpoints", s(&job)]),
        &job,
        "checkpoints with a truncated _metadata",
    );
    assert_fails_naming(
        &tidemark(&["get", s(&meta), "counter"]),
        &meta,
        "get from truncated _metadata",
    );
    std::fs::write(&meta, &bytes[..3]).unwrap();
    assert_fails_naming(
        &tidemark(&["inspect", s(&meta)]),
        &meta,
        "inspect 3-byte _metadata",
    );
}

#[test]
fn demo_fails_restarts_stops_resumes_and_equals_a_failure_free_run() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let r = tidemark(&["demo", "--dir", s(&demo), "--seconds", "1"]);
    ok(&r, "demo");
    for needle in [
        "Checkpoint configuration:",
        "Job has been submitted with JobID",
        "checkpoint   1 completed",
        "FAILURE: ",
        "tidemark run wordcount --input",
        "The output equals the failure-free run's",
        "tidemark checkpoints",
    ] {
        assert!(r.stdout.contains(needle), "no {needle:?} in {}", r.stdout);
    }
    // The job's statistics and configuration are next to its checkpoints.
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("Look closer: tidemark checkpoints "))
        .unwrap();
    let job = line.trim_start_matches("Look closer: tidemark checkpoints ");
    assert!(Path::new(job).join("checkpoint-stats.json").exists());
    assert!(Path::new(job).join("job-config.json").exists());

    // A second run reuses its own directory; a foreign one is refused.
    ok(
        &tidemark(&["demo", "--dir", s(&demo), "--seconds", "1"]),
        "demo again",
    );
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), b"keep").unwrap();
    let r = tidemark(&["demo", "--dir", s(&foreign), "--seconds", "1"]);
    assert_fails_naming(&r, &foreign, "demo into a foreign directory");
    assert!(foreign.join("precious.txt").exists());
}

/// A canonical savepoint of one subtask holding `keys` keys of a value state and a map
/// state, taken with the memory backend; returns its canonical file.
fn canonical_savepoint(root: &Path, keys: u32) -> PathBuf {
    use tidemark::checkpoint::{CheckpointContent, OperatorSubtaskState, PendingSavepoint};
    use tidemark::state::backend::{MemoryStateBackend, StateBackend, SubtaskInfo};
    use tidemark::state::key_groups::MaxParallelism;
    use tidemark::state::keyed::{KeyedState, MapStateDescriptor, ValueStateDescriptor};
    let info = SubtaskInfo {
        operator_id: "win".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: MaxParallelism::new(8).unwrap(),
    };
    let backend = MemoryStateBackend::new();
    let mut keyed = backend.keyed_state(&info, None).unwrap();
    {
        let mut s = KeyedState::new(keyed.backend());
        for k in 0..keys {
            s.set_current_key(&k).unwrap();
            s.value(&ValueStateDescriptor::<u64>::new("count"))
                .unwrap()
                .update(&u64::from(k))
                .unwrap();
            s.map(&MapStateDescriptor::<String, u32>::new("pages"))
                .unwrap()
                .put(&"/home".to_string(), &k)
                .unwrap();
        }
    }
    let pending = PendingSavepoint::begin(
        StdFs::shared(),
        root,
        &JobId::new("clijob").unwrap(),
        CheckpointId(3),
        tidemark::checkpoint::SavepointFormat::Canonical,
    )
    .unwrap();
    let keyed_state = keyed
        .snapshot_sync_canonical()
        .unwrap()
        .write(&pending)
        .unwrap();
    let done = pending
        .commit(CheckpointContent {
            operator_states: vec![OperatorSubtaskState {
                operator_id: "win".into(),
                subtask_index: 0,
                parallelism: 1,
                max_parallelism: 8,
                key_groups: KeyGroupRange::new(0, 7).unwrap(),
                keyed_state,
                operator_state: Vec::new(),
            }],
            source_offsets: Vec::new(),
            properties: Vec::new(),
        })
        .unwrap();
    done.dir.join("win_0.canonical")
}

#[test]
fn inspect_shows_a_canonical_savepoint_file_and_names_a_damaged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let file = canonical_savepoint(tmp.path(), 20);
    let r = tidemark(&["inspect", s(&file), "--json"]);
    ok(&r, "inspect canonical savepoint");
    let j = r.json();
    assert_eq!(j["format"], "canonical-savepoint");
    assert_eq!(j["backend"], "memory");
    assert_eq!(j["max_parallelism"], 8);
    assert_eq!(
        (j["key_group_start"].as_u64(), j["key_group_end"].as_u64()),
        (Some(0), Some(7))
    );
    assert_eq!(j["records"], 40);
    let states: Vec<(String, String, u64)> = j["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                s["records"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("count".into(), "value".into(), 20),
            ("pages".into(), "map".into(), 20)
        ]
    );
    let groups = j["key_groups"].as_array().unwrap();
    let per_group: u64 = groups.iter().map(|g| g["records"].as_u64().unwrap()).sum();
    assert_eq!(per_group, 40);
    assert!(j.get("entries").is_none());
    // With --entries, every record, its state named.
    let text = tidemark(&["inspect", s(&file), "--entries"]);
    ok(&text, "inspect canonical savepoint text");
    assert!(
        text.stdout.contains("canonical savepoint"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("written by      the memory backend"),
        "{}",
        text.stdout
    );
    assert_eq!(
        text.stdout.matches(" pages key=").count(),
        20,
        "{}",
        text.stdout
    );
    // verify reads it end to end too.
    ok(
        &tidemark(&["verify", s(&file)]),
        "verify canonical savepoint",
    );
    // A flipped bit in a record: both commands fail, naming the file.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    assert_fails_naming(&tidemark(&["inspect", s(&file)]), &file, "inspect damaged");
    let r = tidemark(&["verify", s(&file)]);
    assert_ne!(r.code, 0, "verify damaged: {}", r.stdout);
}
