//! `tidemark demo`: a click stream counted per page, in tumbling windows of
//! [`WINDOW_EVENTS`] events, into a store; an incremental
//! checkpoint every second (taken while the writer keeps writing), a crash, a restore from
//! the latest checkpoint, and two checks: the restored counts equal the counts at that
//! checkpoint, and replaying the source from the checkpoint's offset gives the counts of
//! the run that never crashed.
//!
//! The demo writes only inside its directory, and only into a directory it created (it
//! leaves a marker file there); it refuses any other non-empty directory.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::args::DemoArgs;
use super::output::human_bytes;
use super::progress;
use super::CliError;
use crate::checkpoint::{
    resolve_verified, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind,
    CheckpointStats, CheckpointStorage as _, CheckpointStore, JobId, KeyGroupRange, LocalStorage,
    SourceOffset,
};
use crate::error::{Error, Result};
use crate::fs::{FileLock, FileSystem, StdFs};
use crate::lsm::{Db, Options, WriteBatch};
use crate::state::lsm_snapshot::{restore_store, snapshot_async, snapshot_sync, SubtaskId};

/// The marker file that says a directory belongs to the demo.
pub const MARKER: &str = ".tidemark-demo";
/// The demo's job id (its directory under `checkpoints/`).
pub const JOB_ID: &str = "click-counts";
/// The source's name in the checkpoints' source offsets.
pub const SOURCE: &str = "clicks";
/// Pages clicked: the key space.
pub const PAGES: u64 = 5_000;
/// Hot pages: half of all clicks go to these.
pub const HOT_PAGES: u64 = 100;
/// Events per tumbling window. A closed window is never written again, so its tables
/// settle in the deeper levels and incremental checkpoints keep referencing them.
pub const WINDOW_EVENTS: u64 = 20_000;
/// Events per write batch.
const BATCH_EVENTS: u64 = 200;
/// Time between checkpoints.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Retained checkpoints (Flink's `state.checkpoints.num-retained`).
const NUM_RETAINED: usize = 3;
/// Time the writer goes on after the last checkpoint, before the crash.
const WRITE_AFTER_LAST_CHECKPOINT: Duration = Duration::from_millis(200);

/// The key of the count of `page` in `window`.
pub fn count_key(window: u64, page: u64) -> Vec<u8> {
    format!("w{window:05}/page/{page:05}").into_bytes()
}

/// The (window, page) an event counts towards.
pub fn event_key(i: u64) -> (u64, u64) {
    (i / WINDOW_EVENTS, event_page(i))
}

/// The page clicked by event `i` of the source: a pure function of `i`, so that the source
/// can be replayed from any offset and yields the same events.
pub fn event_page(i: u64) -> u64 {
    // splitmix64
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z & 1 == 0 {
        (z >> 1) % HOT_PAGES
    } else {
        (z >> 1) % PAGES
    }
}

/// Counts per (window, page), as the operator's state.
pub type Counts = HashMap<(u64, u64), u64>;

/// Applies events `from..to` of the source to `db` (read the count, add one, write it
/// back), as a keyed counting operator does; mirrors them into `model`.
pub fn apply_events(db: &Db, from: u64, to: u64, model: &mut Counts) -> Result<()> {
    let mut i = from;
    while i < to {
        let end = to.min(i.saturating_add(BATCH_EVENTS));
        let mut batch = WriteBatch::new();
        // Counts updated earlier in this batch are not in the store yet.
        let mut pending: Counts = HashMap::new();
        for e in i..end {
            let (window, page) = event_key(e);
            let current = match pending.get(&(window, page)) {
                Some(c) => *c,
                None => match db.get(count_key(window, page))? {
                    None => 0,
                    Some(v) => parse_count(&v).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "window {window} page {page}: stored count {:?} is not a number",
                            String::from_utf8_lossy(&v)
                        ))
                    })?,
                },
            };
            pending.insert((window, page), current.saturating_add(1));
            *model.entry((window, page)).or_insert(0) += 1;
        }
        for ((window, page), count) in &pending {
            batch.put(count_key(*window, *page), count.to_string());
        }
        db.write(batch)?;
        i = end;
    }
    Ok(())
}

fn parse_count(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Checks that `db` holds exactly `expected`: every page's count, and no other key.
pub fn check_counts(db: &Db, expected: &Counts) -> Result<usize> {
    for ((window, page), count) in expected {
        let got = db.get(count_key(*window, *page))?;
        if got.as_deref().and_then(parse_count) != Some(*count) {
            return Err(Error::InvalidArgument(format!(
                "window {window} page {page}: expected count {count}, the store holds {:?}",
                got.map(|v| String::from_utf8_lossy(&v).into_owned())
            )));
        }
    }
    let mut keys = 0usize;
    for kv in db.scan::<&[u8]>(..)? {
        kv?;
        keys += 1;
    }
    if keys != expected.len() {
        return Err(Error::InvalidArgument(format!(
            "the store holds {keys} keys, expected {}",
            expected.len()
        )));
    }
    Ok(keys)
}

/// The store options of the demo: small memtables and files, so that a few seconds of
/// writing make several tables, compactions, and checkpoints that share files. No WAL, as
/// for stream state: the checkpoint is the point of durability.
pub fn demo_options() -> Options {
    Options {
        wal: false,
        memtable_size_bytes: 1 << 20,
        target_file_size_bytes: 512 << 10,
        max_bytes_for_level_base: 2 << 20,
        block_cache_bytes: 8 << 20,
        ..Options::default()
    }
}

/// The subtask whose state the demo checkpoints.
pub fn demo_subtask() -> SubtaskId {
    SubtaskId {
        operator_id: "count".to_string(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange { start: 0, end: 127 },
    }
}

/// Where the demo puts things.
#[derive(Debug, Clone)]
pub struct DemoPaths {
    /// The demo directory.
    pub dir: PathBuf,
    /// The working store.
    pub db: PathBuf,
    /// `<dir>/checkpoints`.
    pub checkpoints: PathBuf,
    /// `<dir>/checkpoints/<job>`.
    pub job: PathBuf,
    /// The restored store.
    pub restored: PathBuf,
}

impl DemoPaths {
    /// The layout under `dir`.
    pub fn new(dir: &Path) -> DemoPaths {
        let checkpoints = dir.join("checkpoints");
        DemoPaths {
            dir: dir.to_path_buf(),
            db: dir.join("db"),
            job: checkpoints.join(JOB_ID),
            checkpoints,
            restored: dir.join("restored"),
        }
    }
}

/// The lock a running demo holds on its directory for the whole run.
pub const DEMO_LOCK: &str = ".tidemark-demo.lock";

/// Makes `dir` an empty demo directory: creates it, or clears what an earlier demo left;
/// refuses a non-empty directory the demo did not create. Returns the demo's lock on the
/// directory, to hold for the whole run: a second demo on the same directory is refused,
/// and so is a directory whose store or checkpoints someone has open (each store's `LOCK`
/// and the job directory's lock are taken before anything is removed).
fn prepare(fs: &dyn FileSystem, p: &DemoPaths) -> Result<FileLock> {
    if p.dir.exists() {
        let names = fs.list_dir(&p.dir)?;
        if !names.is_empty() && !names.iter().any(|n| n == MARKER) {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty and was not made by the demo (no {MARKER}); give another --dir",
                p.dir.display()
            )));
        }
    }
    fs.create_dir_all(&p.dir)?;
    crate::fs::write_atomic(fs, &p.dir.join(MARKER), b"made by tidemark demo\n")?;
    let run_lock = fs.lock(&p.dir.join(DEMO_LOCK)).map_err(|e| match e {
        Error::Locked { path } => Error::InvalidArgument(format!(
            "another tidemark demo is running in {} (it holds {})",
            p.dir.display(),
            path.display()
        )),
        e => e,
    })?;
    for store in [&p.db, &p.restored] {
        if store.exists() {
            // The store's own lock: an open store (of a demo, or of anyone) is never
            // removed under its owner.
            let _held = fs.lock(&store.join(crate::lsm::filename::LOCK))?;
            fs.remove_dir_all(store)?;
        }
    }
    if p.checkpoints.exists() {
        let job = LocalStorage::new(Arc::new(StdFs), &p.checkpoints, JobId::new(JOB_ID)?);
        let _held = if p.job.exists() {
            job.lock_owner()?
        } else {
            None
        };
        fs.remove_dir_all(&p.checkpoints)?;
    }
    Ok(run_lock)
}

/// A checkpoint whose asynchronous part runs on its own thread.
struct InFlight {
    id: CheckpointId,
    offset: u64,
    expected: Counts,
    sync: Duration,
    started: Instant,
    thread: JoinHandle<Result<CheckpointStats>>,
}

/// A completed checkpoint and the state it holds.
struct Done {
    id: CheckpointId,
    offset: u64,
    expected: Counts,
}

fn start_checkpoint(
    store: &Arc<CheckpointStore>,
    db: &Db,
    id: CheckpointId,
    offset: u64,
    model: &Counts,
) -> Result<InFlight> {
    let started = Instant::now();
    let mut pending = store.begin(id, CheckpointKind::Incremental)?;
    let ticket = snapshot_sync(db)?;
    let sync = started.elapsed();
    let subtask = demo_subtask();
    let thread = std::thread::Builder::new()
        .name(format!("checkpoint-{id}"))
        .spawn(move || {
            let state = snapshot_async(ticket, &mut pending, &subtask)?;
            let stats = pending.stats();
            pending.commit(CheckpointContent {
                operator_states: vec![state],
                source_offsets: vec![SourceOffset {
                    source: SOURCE.to_string(),
                    split: "0".to_string(),
                    offset,
                }],
                properties: vec![("demo.pages".to_string(), PAGES.to_string())],
            })?;
            Ok(stats)
        })
        .map_err(|e| Error::io("spawn checkpoint thread", store.storage().root(), e))?;
    Ok(InFlight {
        id,
        offset,
        expected: model.clone(),
        sync,
        started,
        thread,
    })
}

fn finish_checkpoint(
    f: InFlight,
    out: &mut dyn Write,
    pb: &indicatif::ProgressBar,
) -> std::result::Result<Done, CliError> {
    let stats = f
        .thread
        .join()
        .map_err(|_| CliError::Message(format!("checkpoint {} failed: its thread panicked", f.id)))?
        .map_err(|e| CliError::Message(format!("checkpoint {} failed: {e}", f.id)))?;
    let total = f.started.elapsed();
    tracing::info!(
        id = f.id.0,
        offset = f.offset,
        ?total,
        "checkpoint completed"
    );
    let line = format!(
        "{:>5}  {:>10}  {:>8.1} ms  {:>8.1} ms  {:>6} of {:<4}  {:>10}  {:>10}",
        f.id.0,
        f.offset,
        f.sync.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        stats.files_placed,
        stats.files_placed + stats.files_referenced,
        human_bytes(stats.bytes_placed),
        human_bytes(stats.bytes_placed + stats.bytes_referenced),
    );
    pb.suspend(|| writeln!(out, "{line}"))?;
    Ok(Done {
        id: f.id,
        offset: f.offset,
        expected: f.expected,
    })
}

/// Runs `demo`.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> std::result::Result<(), CliError> {
    let fs = StdFs::shared();
    let p = DemoPaths::new(&args.dir);
    let _run_lock = prepare(fs.as_ref(), &p).map_err(|e| CliError::at(&p.dir, e))?;
    let at_db = |e: Error| CliError::at(&p.db, e);
    let at_job = |e: Error| CliError::at(&p.job, e);

    let db = Db::open(&p.db, demo_options()).map_err(at_db)?;
    let job = JobId::new(JOB_ID).map_err(at_job)?;
    let storage = LocalStorage::new(fs.clone(), &p.checkpoints, job);
    let config = CheckpointConfig {
        num_retained: NUM_RETAINED,
        ..CheckpointConfig::default()
    };
    let store = Arc::new(CheckpointStore::open(Arc::new(storage), config).map_err(at_job)?);

    writeln!(
        out,
        "counting clicks on {PAGES} pages per window of {WINDOW_EVENTS} events into {} for {} s;\n\
         an incremental checkpoint every second into {} ({NUM_RETAINED} retained)\n",
        p.db.display(),
        args.seconds,
        p.job.display()
    )?;
    writeln!(
        out,
        "{:>5}  {:>10}  {:>11}  {:>11}  {:>14}  {:>10}  {:>10}",
        "chk", "offset", "sync part", "total", "files placed", "placed", "full size"
    )?;

    let pb = progress::spinner("demo");
    let mut model = Counts::new();
    let mut events = 0u64;
    let mut next_id = 1u64;
    let mut in_flight: Option<InFlight> = None;
    let mut last: Option<Done> = None;
    let start = Instant::now();
    let mut next_checkpoint = start + CHECKPOINT_INTERVAL;
    let mut stop_at: Option<Instant> = None;

    loop {
        apply_events(&db, events, events + BATCH_EVENTS, &mut model).map_err(at_db)?;
        events += BATCH_EVENTS;
        pb.set_message(format!("{events} events, {} checkpoints", next_id - 1));
        if in_flight.as_ref().is_some_and(|f| f.thread.is_finished()) {
            if let Some(f) = in_flight.take() {
                last = Some(finish_checkpoint(f, out, &pb)?);
            }
        }
        let now = Instant::now();
        if let Some(t) = stop_at {
            if now >= t {
                break;
            }
            continue;
        }
        let started = next_id - 1;
        if in_flight.is_none() && started < args.seconds && now >= next_checkpoint {
            let id = CheckpointId(next_id);
            next_id += 1;
            in_flight = Some(start_checkpoint(&store, &db, id, events, &model).map_err(at_job)?);
            next_checkpoint = now + CHECKPOINT_INTERVAL;
        } else if in_flight.is_none() && started >= args.seconds && last.is_some() {
            // The last checkpoint completed; write a little more, then crash.
            stop_at = Some(now + WRITE_AFTER_LAST_CHECKPOINT);
        }
    }
    pb.finish_and_clear();
    let last = last.ok_or_else(|| CliError::Message("no checkpoint completed".into()))?;
    let lost = events - last.offset;

    // The crash: no close (no flush), the working directory gone.
    std::mem::forget(db);
    fs.remove_dir_all(&p.db).map_err(at_db)?;
    writeln!(
        out,
        "\ncrash:   the store was dropped without a close after {events} events ({lost} after \
         checkpoint {}), and {} was deleted",
        last.id,
        p.db.display()
    )?;

    let t = Instant::now();
    let resolved = resolve_verified(fs.clone(), &p.job, false).map_err(at_job)?;
    let state = resolved
        .metadata
        .operator_states
        .first()
        .ok_or_else(|| CliError::Message(format!("{}: no state", p.job.display())))?;
    let restored = restore_store(
        &resolved.storage(fs.clone()),
        resolved.checkpoint_id,
        state,
        &p.restored,
        demo_options(),
    )
    .map_err(|e| CliError::at(&p.restored, e))?;
    let files = resolved.metadata.file_handles().count();
    writeln!(
        out,
        "restore: checkpoint {} (latest) verified ({files} files) and restored into {} in {:.1} ms",
        resolved.checkpoint_id,
        p.restored.display(),
        t.elapsed().as_secs_f64() * 1e3
    )?;
    if resolved.checkpoint_id != last.id {
        return Err(CliError::Message(format!(
            "{}: the latest checkpoint is {}, expected {}",
            p.job.display(),
            resolved.checkpoint_id,
            last.id
        )));
    }
    let keys = check_counts(&restored, &last.expected).map_err(|e| {
        CliError::Message(format!(
            "{}: restored state differs: {e}",
            p.restored.display()
        ))
    })?;
    writeln!(
        out,
        "check:   all {keys} counts equal the state at checkpoint {} (source offset {})",
        last.id, last.offset
    )?;
    let mut replayed = last.expected.clone();
    apply_events(&restored, last.offset, events, &mut replayed)
        .map_err(|e| CliError::at(&p.restored, e))?;
    check_counts(&restored, &model).map_err(|e| {
        CliError::Message(format!(
            "{}: replayed state differs: {e}",
            p.restored.display()
        ))
    })?;
    writeln!(
        out,
        "replay:  events {}..{events} read again from the source; every count equals the run \
         that never crashed",
        last.offset
    )?;
    restored.close().map_err(|e| CliError::at(&p.restored, e))?;

    let chk = p.job.join(last.id.dir_name());
    let window = last.offset.saturating_sub(1) / WINDOW_EVENTS;
    let hot = String::from_utf8_lossy(&count_key(window, 7)).into_owned();
    let sst = first_shared_sst(&p.job);
    writeln!(out, "\nlook at what it left:")?;
    writeln!(out, "  tidemark checkpoints {}", p.job.display())?;
    writeln!(out, "  tidemark inspect {}", chk.display())?;
    writeln!(out, "  tidemark verify {}", p.job.display())?;
    writeln!(out, "  tidemark get {} {hot}", chk.display())?;
    if let Some(sst) = sst {
        writeln!(out, "  tidemark inspect --entries {}", sst.display())?;
    }
    writeln!(out, "  tidemark inspect {}", p.restored.display())?;
    Ok(())
}

fn first_shared_sst(job: &Path) -> Option<PathBuf> {
    let shared = job.join(crate::checkpoint::SHARED_DIR);
    StdFs
        .list_dir(&shared)
        .ok()?
        .into_iter()
        .find(|n| n.ends_with(".sst"))
        .map(|n| shared.join(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_replays_the_same_events() {
        let a: Vec<u64> = (0..1000).map(event_page).collect();
        let b: Vec<u64> = (0..1000).map(event_page).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|p| *p < PAGES));
        assert_eq!(event_key(WINDOW_EVENTS + 3).0, 1);
        let hot = a.iter().filter(|p| **p < HOT_PAGES).count();
        assert!(hot > 400, "{hot}");
    }

    #[test]
    fn counting_applies_each_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), demo_options()).unwrap();
        let mut model = Counts::new();
        apply_events(&db, 0, 1000, &mut model).unwrap();
        apply_events(&db, 1000, 1500, &mut model).unwrap();
        assert_eq!(model.values().sum::<u64>(), 1500);
        assert_eq!(check_counts(&db, &model).unwrap(), model.len());
    }

    #[test]
    fn demo_removes_nothing_a_running_owner_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = DemoPaths::new(dir.path());
        let first = prepare(&StdFs, &p).unwrap();
        let e = prepare(&StdFs, &p).unwrap_err();
        assert!(
            e.to_string().contains("another tidemark demo is running"),
            "{e}"
        );
        drop(first);
        // A store open in db/: its LOCK stops the demo before it removes anything.
        let db = Db::open(&p.db, demo_options()).unwrap();
        db.put("k", "v").unwrap();
        let e = prepare(&StdFs, &p).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e:?}");
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(p.db.exists());
        drop(db);
        // A checkpoint store open on the job directory: its lock stops the demo too.
        let storage =
            LocalStorage::new(StdFs::shared(), &p.checkpoints, JobId::new(JOB_ID).unwrap());
        let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap();
        let e = prepare(&StdFs, &p).unwrap_err();
        assert!(matches!(e, Error::JobLocked { .. }), "{e:?}");
        assert!(p.job.join("shared").exists());
        drop(store);
        let _lock = prepare(&StdFs, &p).unwrap();
        assert!(!p.db.exists() && !p.checkpoints.exists());
    }

    #[test]
    fn demo_refuses_a_directory_it_did_not_make() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), b"x").unwrap();
        let e = prepare(&StdFs, &DemoPaths::new(dir.path())).unwrap_err();
        assert!(e.to_string().contains("not made by the demo"), "{e}");
        assert!(dir.path().join("precious").exists());
    }
}
