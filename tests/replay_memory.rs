//! A log is mapped, not read into memory, for its replay: a log extended to 1 GiB of
//! sparse zeros (as presizing extends logs, only larger) replays its records, stops at the
//! zero tail, and the heap does not grow with the file. Measured with a counting allocator.
//!
//! One test function only: the allocator counts every thread of this binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tidemark::lsm::{Db, Options, SyncMode};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_huge_sparse_log_replays_in_bounded_memory() {
    let opts = || Options {
        sync: SyncMode::None,
        ..Options::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    {
        let db = Db::open(&dir, opts()).unwrap();
        for i in 0..100u32 {
            db.put(format!("k{i:03}"), format!("v{i}")).unwrap();
        }
        drop(db);
    }
    let logs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let size: u64 = 1 << 30;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(&logs[0]))
        .unwrap()
        .set_len(size)
        .unwrap();

    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let db = Db::open(&dir, opts()).unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - base;
    for i in 0..100u32 {
        assert_eq!(
            db.get(format!("k{i:03}")).unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
    assert!(!dir.join(&logs[0]).exists(), "the replayed log is retired");
    assert!(
        peak < 64 << 20,
        "open took {peak} bytes of heap for a {size}-byte log"
    );
}
