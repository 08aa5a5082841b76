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

#[test]
fn sigkill_and_resume_with_latest_commits_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let counts = write_input(&dir.path().join("in"), 40_000);
    let (input, output, ck) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("ck"),
    );
    let local = format!(
        "state.backend.lsm.localdir={}",
        dir.path().join("local").display()
    );
    let run = |resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        c.args([
            "run",
            "wordcount",
            "--parallelism",
            "2",
            "--interval-ms",
            "30",
            // 20,000 lines a second per subtask: the 80,000 lines take about 2 s, so the
            // kills land while the job runs however fast the machine is.
            "--rate",
            "20000",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--checkpoint-dir")
        .arg(&ck)
        // No restarts: a resume that cannot checkpoint fails the test instead of
        // restarting for ever.
        .args(["--restore-mode", "claim", "-D", &local])
        .args(["-D", "restart-strategy.type=none"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if resume {
            c.args(["-s", "latest"]);
        }
        c
    };
    let mut seed = 12345u64;
    // A checkpoint a kill left unfinished, newer than every retained one (its directory
    // is deleted when the job opens its store; its id is never reused).
    let mut first = run(false).spawn().unwrap();
    while !has_checkpoint(&ck) {
        assert!(first.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    first.kill().unwrap();
    let _ = first.wait();
    let job = std::fs::read_dir(&ck)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
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
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let wait = Duration::from_millis(200 + (seed >> 33) % 900);
        let mut child = run(has_checkpoint(&ck)).spawn().unwrap();
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
    if !finished {
        let done = run(has_checkpoint(&ck)).output().unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
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
