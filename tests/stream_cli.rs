//! `tidemark run wordcount` driven as a user drives it: killed with SIGKILL at random
//! moments and resumed with `-s latest`, it commits exactly the output of a run that was
//! never killed, and leaves no file in `shared/` that no retained checkpoint references.

#[path = "common/stream.rs"]
mod stream_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use stream_common::expected_lines;
use tidemark::stream::committed_lines;

fn write_input(dir: &Path, lines: usize) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let mut counts = BTreeMap::new();
    let mut x = 99u64;
    for f in 0..2 {
        let mut text = String::new();
        for _ in 0..lines {
            for _ in 0..10 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = ((x >> 33) % 1000) as f64 / 1000.0;
                let w = format!("w{}", (r * r * 2000.0) as u64);
                *counts.entry(w.clone()).or_insert(0) += 1;
                text.push_str(&w);
                text.push(' ');
            }
            text.push('\n');
        }
        std::fs::write(dir.join(format!("in-{f}.txt")), text).unwrap();
    }
    counts
}

fn has_checkpoint(ck: &Path) -> bool {
    let Ok(jobs) = std::fs::read_dir(ck) else {
        return false;
    };
    jobs.flatten().any(|j| {
        std::fs::read_dir(j.path())
            .map(|es| es.flatten().any(|e| e.path().join("_metadata").exists()))
            .unwrap_or(false)
    })
}

/// Whether the job under `ck` recorded that it finished (`job-status.json`).
fn job_finished(ck: &Path) -> bool {
    let Ok(jobs) = std::fs::read_dir(ck) else {
        return false;
    };
    jobs.flatten().any(|j| {
        tidemark::stream::status::read_job_status(&j.path())
            .unwrap()
            .is_some_and(|s| s.finished())
    })
}

/// Every file in a job's `shared/` is referenced by a retained checkpoint's `_metadata`.
fn check_no_orphans(ck: &Path) {
    for job in std::fs::read_dir(ck).unwrap().flatten() {
        let shared = job.path().join("shared");
        let Ok(files) = std::fs::read_dir(&shared) else {
            continue;
        };
        let files: BTreeSet<String> = files
            .flatten()
            .map(|e| format!("shared/{}", e.file_name().to_string_lossy()))
            .collect();
        let mut referenced = BTreeSet::new();
        for e in std::fs::read_dir(job.path()).unwrap().flatten() {
            let m = e.path().join("_metadata");
            if m.exists() {
                let r = tidemark::checkpoint::resolve(&tidemark::fs::StdFs, &e.path()).unwrap();
                for h in r.metadata.file_handles() {
                    referenced.insert(h.path.clone());
                }
            }
        }
        let orphans: Vec<_> = files.difference(&referenced).collect();
        assert!(
            orphans.is_empty(),
            "{}: orphans {orphans:?}",
            job.path().display()
        );
    }
}

/// `tidemark run wordcount` over `dir/in` into `dir/out` with checkpoints in `dir/ck`, at
/// parallelism 2, without restarts (a resume that cannot checkpoint fails the test instead
/// of restarting for ever), resumed with `-s latest` when `resume`.
fn wordcount(dir: &Path, interval_ms: u32, rate: u32, mode: &str, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    c.args(["run", "wordcount", "--parallelism", "2"])
        .args(["--interval-ms", &interval_ms.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--restore-mode", mode])
        .arg("--input")
        .arg(dir.join("in"))
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--checkpoint-dir")
        .arg(dir.join("ck"))
        .arg("-D")
        .arg(format!(
            "state.backend.lsm.localdir={}",
            dir.join("local").display()
        ))
        .args(["-D", "restart-strategy.type=none"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        c.args(["-s", "latest"]);
    }
    c
}

/// Starts `cmd`, kills it (SIGKILL) once a checkpoint is complete under `ck`, and returns
/// the job directory.
fn kill_after_first_checkpoint(mut cmd: Command, ck: &Path) -> std::path::PathBuf {
    let mut first = cmd.spawn().unwrap();
    while !has_checkpoint(ck) {
        assert!(first.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap();
    let _ = first.wait();
    std::fs::read_dir(ck)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

#[test]
fn sigkill_and_resume_with_latest_commits_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_input(&dir.path().join("in"), 40_000);
    let (output, ck) = (dir.path().join("out"), dir.path().join("ck"));
    // 20,000 lines a second per subtask: the 80,000 lines take about 2 s, so the kills
    // land while the job runs however fast the machine is.
    let run = |resume: bool| wordcount(dir.path(), 30, 20_000, "claim", resume);
    let mut seed = 12345u64;
    // A checkpoint a kill left unfinished, newer than every retained one (its directory
    // is deleted when the job opens its store; its id is never reused).
    let job = kill_after_first_checkpoint(run(false), &ck);
    let newest = std::fs::read_dir(&job)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("chk-")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    std::fs::create_dir(job.join(format!("chk-{}", newest + 3))).unwrap();
    let mut kills = 0;
    let mut finished = false;
    for _ in 0..4 {
        if job_finished(&ck) {
            // A kill landed after the job had processed everything: it recorded that it
            // finished before discarding its checkpoints.
            finished = true;
            break;
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let wait = Duration::from_millis(200 + (seed >> 33) % 900);
        let mut child = run(true).spawn().unwrap();
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
            let _ = child.wait();
        } else {
            // It finished before the kill (a slow machine): its output is complete, and
            // running it again would be a second job over the same input.
            let status = child.wait().unwrap();
            assert!(status.success(), "the job failed: {status}");
            finished = true;
            break;
        }
    }
    if !finished && !job_finished(&ck) {
        let done = run(true).output().unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    // The job finished: resuming it again is refused, and adds no output.
    let again = run(true).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("finished"), "{err}");
    assert!(kills >= 1, "the job finished before any kill");
    let got = committed_lines(&output).unwrap();
    let want = expected_lines(&counts);
    assert_eq!(got.len(), want.len(), "after {kills} kills");
    assert!(got == want, "output differs after {kills} kills");
    check_no_orphans(&ck);
}

#[test]
fn run_reads_a_flink_config_file_and_dynamic_properties() {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_input(&dir.path().join("in"), 2_000);
    let conf = dir.path().join("flink-conf.yaml");
    std::fs::write(
        &conf,
        "# the seed's keys\nstate.backend: filesystem\nexecution.checkpointing.interval: 20 ms\n\
         restart-strategy: fixed-delay\nsome.unknown.key: 1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["run", "wordcount", "--config"])
        .arg(&conf)
        .arg("--input")
        .arg(dir.path().join("in"))
        .arg("--output")
        .arg(dir.path().join("out"))
        .arg("--checkpoint-dir")
        .arg(dir.path().join("ck"))
        .args(["-D", "parallelism.default=2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("some.unknown.key"), "{stderr}");
    assert!(
        stdout.contains("Job has been submitted with JobID "),
        "{stdout}"
    );
    assert!(committed_lines(&dir.path().join("out")).unwrap() == expected_lines(&counts));
    let job = std::fs::read_dir(dir.path().join("ck"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let doc = tidemark::stream::config::read_job_config(&job.join("job-config.json")).unwrap();
    assert_eq!(doc.state_backend, "FsStateBackend");
    assert_eq!(doc.interval, 20);
    assert_eq!(
        doc.configuration
            .get("parallelism.default")
            .map(String::as_str),
        Some("2")
    );

    // A bad value names the key, the value and what is accepted.
    let bad = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args([
            "run",
            "wordcount",
            "--input",
            "x",
            "--output",
            "y",
            "--checkpoint-dir",
        ])
        .arg(dir.path().join("ck2"))
        .args(["-D", "state.backend=cassandra"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("cassandra") && stderr.contains("filesystem") && stderr.contains("lsm"),
        "{stderr}"
    );
}

/// Copies `from` into `to` (files and directories, recursively).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// A job that finished records it before discarding its checkpoints: when a kill cuts the
/// discard short and leaves an older checkpoint behind, `-s latest` neither resumes from
/// it (which would commit its replayed output a second time) nor starts over; it says the
/// job finished and completes the discard.
#[test]
fn a_finished_job_is_not_resumed_from_a_checkpoint_its_discard_left() {
    finished_job_then_resume("claim");
}

/// Resumed in no-claim mode, the job does not own the checkpoint it was restored from:
/// it keeps it when it finishes, and `-s latest` still refuses to resume the job.
#[test]
fn a_finished_job_restored_without_claim_keeps_its_restored_checkpoint() {
    finished_job_then_resume("no-claim");
}

fn finished_job_then_resume(mode: &str) {
    let claim = mode == "claim";
    let dir = tempfile::tempdir().unwrap();
    let counts = write_input(&dir.path().join("in"), 2_000);
    let (output, ck) = (dir.path().join("out"), dir.path().join("ck"));
    let run = |resume: bool, rate: u32| wordcount(dir.path(), 20, rate, mode, resume);
    // Slowly until a checkpoint is complete, then killed: that checkpoint is kept aside.
    let job = kill_after_first_checkpoint(run(false, 500), &ck);
    let saved = dir.path().join("saved");
    copy_tree(&job, &saved);
    // Resumed to the end: it finishes, records it, and discards its checkpoints.
    let done = run(true, 1_000_000).output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let status = tidemark::stream::status::read_job_status(&job)
        .unwrap()
        .unwrap();
    assert!(
        status.finished() && status.checkpoints_discarded,
        "{status:?}"
    );
    assert_eq!(status.checkpoints_kept.is_empty(), claim, "{status:?}");
    assert_eq!(has_checkpoint(&ck), !claim);
    let want = expected_lines(&counts);
    assert!(committed_lines(&output).unwrap() == want);
    if !claim {
        let again = run(true, 1_000_000).output().unwrap();
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(!again.status.success() && err.contains("finished"), "{err}");
        assert!(has_checkpoint(&ck), "the restored checkpoint is kept");
        assert!(
            committed_lines(&output).unwrap() == want,
            "no output was added"
        );
        return;
    }
    // As if a kill had cut the discard short: the older checkpoint and its files are back.
    for e in std::fs::read_dir(&saved).unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("chk-") || name == "shared" {
            copy_tree(&e.path(), &job.join(&name));
        }
    }
    assert!(has_checkpoint(&ck));
    let again = run(true, 1_000_000).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{err}");
    assert!(
        err.contains("finished") && err.contains("job-status.json"),
        "{err}"
    );
    assert!(err.contains("discarded 1 checkpoint"), "{err}");
    assert!(!has_checkpoint(&ck), "the discard was completed");
    let shared: Vec<_> = std::fs::read_dir(job.join("shared"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(shared.is_empty(), "{shared:?}");
    assert!(
        committed_lines(&output).unwrap() == want,
        "no output was added"
    );
}
