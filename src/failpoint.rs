//! Kill points for crash testing.
//!
//! The store and the checkpoint layer call [`hit`] at the steps where a crash matters most
//! (each name is listed in [`POINTS`]). Nothing happens unless a process has called
//! [`arm`]: then the chosen hit of the chosen point ends the process at once with
//! `SIGKILL`, exactly as a kill from outside would, leaving the files as the operating
//! system holds them at that instant. A crash-test driver arms a point in a child process,
//! lets it die there, and checks that the next open recovers every acknowledged write.
//!
//! An unarmed kill point costs one relaxed atomic load.
//!
//! ```no_run
//! // In a child process of a crash test: die at the second flush, after its table is
//! // written and before the manifest records it.
//! tidemark::failpoint::arm("flush.table_written", 2);
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Every kill point, in the order a store's life meets them.
pub const POINTS: &[&str] = &[
    // Db::open
    "open.locked",
    "open.manifest_rolled",
    "open.replay_table_written",
    "open.replay_edit_logged",
    "open.wal_created",
    "open.recovery_table_written",
    "open.recovery_edit_logged",
    "open.obsolete_deleted",
    // Manifest roll (also at open, and at creation before CURRENT exists)
    "manifest.roll_written",
    "manifest.roll_current_set",
    // Every version edit
    "manifest.edit_appended",
    // Memtable switch
    "switch.wal_created",
    // Flush
    "flush.table_written",
    "flush.edit_logged",
    "flush.wal_deleted",
    // Compaction
    "compaction.tables_written",
    "compaction.edit_logged",
    // Checkpoint of a store
    "checkpoint.files_placed",
    "checkpoint.metadata_written",
    "checkpoint.completed",
    // Retention
    "retention.checkpoint_removed",
];

static ARMED: AtomicBool = AtomicBool::new(false);

struct Armed {
    /// A name from [`POINTS`], or `*` for any point.
    name: String,
    /// Hits still to pass before the kill.
    remaining: u64,
}

static STATE: Mutex<Option<Armed>> = Mutex::new(None);

/// Arms a kill point: the `nth` hit (counting from 1) of `name` ends the process with
/// `SIGKILL`. `name` is one of [`POINTS`] or `*` (the `nth` hit of any point). Replaces
/// an earlier arming. An unknown name is refused, so a typo cannot make a test that never
/// kills.
pub fn arm(name: &str, nth: u64) -> crate::Result<()> {
    if name != "*" && !POINTS.contains(&name) {
        return Err(crate::Error::InvalidArgument(format!(
            "unknown kill point {name:?} (known: {})",
            POINTS.join(", ")
        )));
    }
    *STATE.lock() = Some(Armed {
        name: name.to_string(),
        remaining: nth.max(1),
    });
    ARMED.store(true, Ordering::Release);
    Ok(())
}

/// Disarms the kill point, if one is armed.
pub fn disarm() {
    ARMED.store(false, Ordering::Release);
    *STATE.lock() = None;
}

/// Marks that the process reached kill point `name`; ends it there when armed for it.
#[inline]
pub fn hit(name: &'static str) {
    if ARMED.load(Ordering::Relaxed) {
        hit_slow(name);
    }
}

#[cold]
fn hit_slow(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "kill point {name} is not in POINTS");
    let mut st = STATE.lock();
    let Some(a) = st.as_mut() else {
        return;
    };
    if a.name != "*" && a.name != name {
        return;
    }
    a.remaining -= 1;
    if a.remaining > 0 {
        return;
    }
    tracing::info!(point = name, "kill point reached: ending the process");
    // SAFETY: getpid and kill are async-signal-safe system calls with no memory
    // arguments; SIGKILL cannot be caught, so the call does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // Not reached; kept for a platform where the signal is delivered late.
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused() {
        assert!(arm("flush.no_such_step", 1).is_err());
        // Hits of points that are not armed do nothing.
        hit("flush.table_written");
    }
}
