//! SIGINT and SIGTERM stop a running job cleanly (its subtasks are cancelled, its
//! retained checkpoints stay for a resume) instead of killing the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::stream::JobControl;

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Installs the handlers and a watcher that stops `control` when a signal comes.
pub fn stop_on_signal(control: &JobControl) {
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
                eprintln!("tidemark: stopping the job (signal received)");
                control.stop();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
}
