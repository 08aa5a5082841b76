//! Checkpoints taken while the writers write, and their verification after a kill.
//!
//! Each checkpoint also holds a private file `stress-expected`: for every thread, `lo`
//! (its operations `0..lo` were acknowledged before the checkpoint's synchronous part
//! began), `hi` (none of its operations from `hi` on had started when the synchronous part
//! ended) and the state of its keys after operations `0..lo`. A retained checkpoint is
//! right when, for every thread, its keys show the state after operations `0..m` for one
//! `m` in `lo..=hi`: all acknowledged writes, nothing that had not started, and no half of
//! a batch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tidemark::checkpoint::path::checkpoint_dirs;
use tidemark::checkpoint::{
    resolve, CheckpointConfig, CheckpointContent, CheckpointId, CheckpointKind, CheckpointStore,
    FileRole, JobId, KeyGroupRange, LocalStorage, OperatorStateHandle, SnapshotTarget as _,
    SourceOffset, StateData,
};
use tidemark::fs::{FileSystem as _, StdFs};
use tidemark::lsm::{Db, Options};
use tidemark::state::lsm_snapshot::{restore_store, snapshot_async, snapshot_sync, SubtaskId};

use super::expected::{Header, Word};
use super::verify::{observe, shows, Observed, Problems};
use super::workload::{self, key};

/// The job id of the checkpoints.
pub const JOB: &str = "stress";
/// The private file holding the expected state of a checkpoint.
pub const EXPECTED_FILE: &str = "stress-expected";
/// The backend name of the operator-state handle holding [`EXPECTED_FILE`].
pub const EXPECTED_BACKEND: &str = "stress-model";
const MAGIC: &[u8; 8] = b"TMSCKPT1";

/// A writer thread's acknowledged state, kept in memory for the checkpoint thread.
#[derive(Debug, Clone)]
pub struct Model {
    /// Operations `0..acked` are acknowledged.
    pub acked: u64,
    /// The state of each key after them.
    pub words: Vec<Word>,
}

/// What the writers share with the checkpoint thread.
#[derive(Debug)]
pub struct Shared {
    /// One model per thread.
    pub models: Vec<Mutex<Model>>,
    /// Per thread: one past the highest operation that may have reached the store.
    pub started: Vec<AtomicU64>,
}

fn subtask() -> SubtaskId {
    SubtaskId {
        operator_id: "stress".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).expect("a valid key-group range"),
    }
}

/// The job directory of the checkpoints under `dir`.
pub fn job_dir(dir: &Path) -> PathBuf {
    dir.join(JOB)
}

/// Opens the checkpoints under `dir` keeping `retained`, which removes what a kill left
/// unfinished; returns the store and the next checkpoint id (above every `chk-N`
/// directory found, finished or not).
pub fn open(dir: &Path, retained: usize) -> tidemark::Result<(CheckpointStore, u64)> {
    let job = job_dir(dir);
    let mut next = 1;
    if job.exists() {
        let dirs = checkpoint_dirs(StdFs.list_entries(&job)?);
        for id in dirs.ids.iter().chain(dirs.odd.iter().map(|(id, _)| id)) {
            next = next.max(id.0 + 1);
        }
    }
    let storage = LocalStorage::new(StdFs::shared(), dir, JobId::new(JOB)?);
    let store = CheckpointStore::open(
        Arc::new(storage),
        CheckpointConfig {
            num_retained: retained,
            ..CheckpointConfig::default()
        },
    )?;
    Ok((store, next))
}

/// Takes checkpoint `id` of `db` while the writers run.
pub fn take(
    store: &CheckpointStore,
    id: u64,
    db: &Db,
    h: Header,
    shared: &Shared,
) -> tidemark::Result<()> {
    let models: Vec<Model> = shared.models.iter().map(|m| m.lock().clone()).collect();
    let ticket = snapshot_sync(db)?;
    let hi: Vec<u64> = shared
        .started
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .collect();
    let pending = store.begin(CheckpointId(id), CheckpointKind::Incremental)?;
    let mut state = snapshot_async(ticket, &pending, &subtask())?;
    let mut bytes = Vec::with_capacity(32 + h.threads as usize * (16 + 8 * h.keys as usize));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&u64::from(h.threads).to_le_bytes());
    bytes.extend_from_slice(&h.keys.to_le_bytes());
    bytes.extend_from_slice(&h.seed.to_le_bytes());
    let mut offsets = Vec::new();
    for (t, m) in models.iter().enumerate() {
        bytes.extend_from_slice(&m.acked.to_le_bytes());
        bytes.extend_from_slice(&hi[t].to_le_bytes());
        for w in &m.words {
            bytes.extend_from_slice(&w.0.to_le_bytes());
        }
        offsets.push(SourceOffset {
            source: format!("writer-{t}"),
            split: "acknowledged".into(),
            offset: m.acked,
        });
    }
    let handle = pending.write_private(EXPECTED_FILE, &bytes)?;
    // The expected state rides along as the operator's own (non-keyed) state.
    state.operator_state.push(OperatorStateHandle {
        backend: EXPECTED_BACKEND.to_string(),
        data: StateData::File(handle),
        states: Vec::new(),
    });
    pending.commit(CheckpointContent {
        operator_states: vec![state],
        source_offsets: offsets,
        properties: vec![("stress.seed".into(), h.seed.to_string())],
    })?;
    Ok(())
}

struct ThreadBounds {
    lo: u64,
    hi: u64,
    words: Vec<Word>,
}

fn decode(bytes: &[u8], h: Header) -> Result<Vec<ThreadBounds>, String> {
    let per = 16 + 8 * h.keys as usize;
    if bytes.len() != 32 + h.threads as usize * per || &bytes[..8] != MAGIC {
        return Err(format!("{EXPECTED_FILE} is not of this run's layout"));
    }
    let word = |at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if (word(8), word(16), word(24)) != (u64::from(h.threads), h.keys, h.seed) {
        return Err(format!("{EXPECTED_FILE} describes another workload"));
    }
    Ok((0..h.threads as usize)
        .map(|t| {
            let at = 32 + t * per;
            ThreadBounds {
                lo: word(at),
                hi: word(at + 8),
                words: (0..h.keys as usize)
                    .map(|k| Word(word(at + 16 + 8 * k)))
                    .collect(),
            }
        })
        .collect())
}

/// Verifies every retained checkpoint: its files (size and crc32c), then a restore of it
/// into a scratch directory, read by `get` and by scan and held against its expected
/// state. Returns how many were checked.
pub fn verify_retained(
    store: &CheckpointStore,
    dir: &Path,
    h: Header,
    opts: &Options,
    problems: &mut Problems,
) -> tidemark::Result<usize> {
    let scratch = dir.join("restore-check");
    let list = store.list();
    for c in &list {
        let name = c.id.dir_name();
        let what = format!("checkpoint {name}");
        let r = resolve(&StdFs, &job_dir(dir).join(&name))?;
        let report = r.verify(StdFs::shared());
        if !report.is_ok() {
            problems.push(format!("{what} fails verification: {:?}", report.problems));
            continue;
        }
        let storage = r.storage(StdFs::shared());
        let Some(state) = r.metadata.operator_states.first() else {
            problems.push(format!("{what} holds no operator state"));
            continue;
        };
        let handle = state.operator_state.iter().find_map(|hd| match &hd.data {
            StateData::File(f) if f.role == FileRole::Private && f.local_name == EXPECTED_FILE => {
                Some(f)
            }
            _ => None,
        });
        let Some(handle) = handle else {
            problems.push(format!("{what} has no {EXPECTED_FILE}"));
            continue;
        };
        use tidemark::checkpoint::CheckpointStorage;
        let bytes = storage.read_file(&handle.path, 64 << 20)?;
        let bounds = match decode(&bytes, h) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{what}: {e}"));
                continue;
            }
        };
        let rm =
            |p: &Path| std::fs::remove_dir_all(p).map_err(|e| tidemark::Error::io("remove", p, e));
        if scratch.exists() {
            rm(&scratch)?;
        }
        let db = restore_store(&storage, r.checkpoint_id, state, &scratch, opts.clone())?;
        let seen = observe(&db, h, &what, problems)?;
        drop(db);
        rm(&scratch)?;
        for (t, b) in bounds.iter().enumerate() {
            check_thread(&seen, h, t as u32, b, &what, problems);
        }
    }
    Ok(list.len())
}

/// Thread `t`'s keys in the checkpoint must show the state after operations `0..m` for
/// some `m` in `lo..=hi`.
fn check_thread(
    seen: &Observed,
    h: Header,
    t: u32,
    b: &ThreadBounds,
    what: &str,
    problems: &mut Problems,
) {
    let row = &seen.get[t as usize];
    let scan = &seen.scan[t as usize];
    let mut words = b.words.clone();
    let mismatches = |words: &[Word]| -> Vec<usize> {
        (0..row.len())
            .filter(|&k| !shows(row[k], words[k]) || !shows(scan[k], words[k]))
            .collect()
    };
    let mut best = (b.lo, mismatches(&words));
    if best.1.is_empty() {
        return;
    }
    for m in b.lo..b.hi {
        for (k, mutation) in workload::op(h.seed, t, m, h.keys).writes {
            words[k as usize] = Word::new(m, mutation);
        }
        let miss = mismatches(&words);
        if miss.is_empty() {
            return;
        }
        if miss.len() < best.1.len() {
            best = (m + 1, miss);
        }
    }
    // Describe the nearest state against the closest prefix.
    let mut words = b.words.clone();
    for m in b.lo..best.0 {
        for (k, mutation) in workload::op(h.seed, t, m, h.keys).writes {
            words[k as usize] = Word::new(m, mutation);
        }
    }
    let detail: Vec<String> = best
        .1
        .iter()
        .take(8)
        .map(|&k| {
            format!(
                "{} shows {} where ops 0..{} leave it {}",
                key(t, k as u64),
                row[k],
                best.0,
                words[k]
            )
        })
        .collect();
    problems.push(format!(
        "{what}: the keys of thread {t} match the state after ops 0..m for no m in {}..={} \
         (ops 0..{} were acknowledged before the checkpoint); nearest, m = {}: {} keys differ: {}",
        b.lo,
        b.hi,
        b.lo,
        best.0,
        best.1.len(),
        detail.join("; ")
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tidemark_stress::verify::Seen;

    const H: Header = Header {
        threads: 1,
        keys: 8,
        seed: 3,
    };

    /// The words of thread 0's keys after its operations `0..m`.
    fn after(m: u64) -> Vec<Word> {
        let mut words = vec![Word::NEVER; H.keys as usize];
        for n in 0..m {
            for (k, mutation) in workload::op(H.seed, 0, n, H.keys).writes {
                words[k as usize] = Word::new(n, mutation);
            }
        }
        words
    }

    fn shown(words: &[Word]) -> Observed {
        let row: Vec<Seen> = words
            .iter()
            .map(|w| w.put_op().map_or(Seen::Absent, Seen::Put))
            .collect();
        Observed {
            get: vec![row.clone()],
            scan: vec![row],
        }
    }

    fn problems_for(m: u64, lo: u64, hi: u64) -> usize {
        let b = ThreadBounds {
            lo,
            hi,
            words: after(lo),
        };
        let mut p = Problems::default();
        check_thread(&shown(&after(m)), H, 0, &b, "chk", &mut p);
        p.lines.len()
    }

    #[test]
    fn a_checkpoint_holds_a_prefix_between_its_bounds() {
        // Ops 0..40 acknowledged before it, 0..43 possibly started.
        for m in 40..=43 {
            assert_eq!(problems_for(m, 40, 43), 0, "prefix 0..{m}");
        }
        // Missing an acknowledged op, or holding one that had not started: find two ops
        // that change the state (a delete of an absent key does not).
        let missing = (0..40).rev().find(|&m| after(m) != after(40)).unwrap();
        assert_eq!(problems_for(missing, 40, 43), 1);
        let later = (44..200).find(|&m| after(m) != after(43)).unwrap();
        assert_eq!(problems_for(later, 40, 43), 1);
    }
}
