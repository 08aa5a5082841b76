//! SIGINT and SIGTERM stop a running job cleanly (its subtasks are cancelled, its
//! retained checkpoints stay for a resume) instead of killing the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::path::PathBuf;

use crate::checkpoint::SavepointFormat;
use crate::stream::JobControl;

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Installs the handlers and a watcher that stops `control` when a signal comes: with a
/// savepoint into `savepoint` first when given (Flink's stop-with-savepoint; if the
/// savepoint fails, the job stops anyway and its checkpoints stay).
pub fn stop_on_signal(control: &JobControl, savepoint: Option<(PathBuf, SavepointFormat)>) {
    // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the
    // handler stays valid for the life of the process (a static function).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let control = control.clone();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if SIGNALLED.load(Ordering::SeqCst) {
                match &savepoint {
                    None => eprintln!("tidemark: stopping the job (signal received)"),
                    Some((dir, format)) => {
                        eprintln!(
                            "tidemark: stopping the job with a savepoint under {} (signal received)",
                            dir.display()
                        );
                        let h = control.stop_with_savepoint(dir.clone(), *format);
                        match h.wait(Duration::from_secs(600)) {
                            Some(Ok(dir)) => {
                                eprintln!("tidemark: savepoint completed: {}", dir.display())
                            }
                            Some(Err(e)) => eprintln!("tidemark: the savepoint failed: {e}"),
                            None => eprintln!("tidemark: the savepoint timed out"),
                        }
                    }
                }
                control.stop();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
}
