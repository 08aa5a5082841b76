//! Helpers shared by the crash tests: the kill-point count, a seeded generator, and a
//! child process that runs one ignored test of the same test binary and reports its
//! progress on stdout until it is SIGKILLed.

#![allow(dead_code)] // each test binary uses its own part of these helpers

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

/// Kill points to run: `TIDEMARK_CRASH_ITERATIONS`, or `default`.
pub fn crash_iterations(default: u64) -> u64 {
    std::env::var("TIDEMARK_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The files of `dir` whose extension is `ext`, sorted.
pub fn files_with_extension(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// A xorshift64 step: the next value of a seeded sequence.
pub fn next_seed(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A child process running the test `test_name` of this test binary, with its stdout lines
/// that start with `prefix` forwarded to `lines`.
pub struct ChildRun {
    child: Child,
    reader: Option<JoinHandle<()>>,
    /// The child's progress lines, in order.
    pub lines: Receiver<String>,
}

impl ChildRun {
    /// Starts the child with `envs` set. The child is an ignored test (it is no test on
    /// its own), run alone with `--ignored --exact`.
    pub fn spawn(test_name: &str, envs: &[(&str, String)], prefix: &'static str) -> ChildRun {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args([
            test_name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(prefix) {
                    let _ = tx.send(line);
                }
            }
        });
        ChildRun {
            child,
            reader: Some(reader),
            lines,
        }
    }

    /// SIGKILLs the child and waits for it and for the end of its output.
    pub fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
    }
}

/// The store's manifest file in `dir` (the first `MANIFEST-*` entry).
pub fn manifest_path(dir: &std::path::Path) -> std::path::PathBuf {
    let mut manifests: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST-"))
        })
        .collect();
    manifests.sort();
    manifests.into_iter().next().expect("a MANIFEST-* file")
}
