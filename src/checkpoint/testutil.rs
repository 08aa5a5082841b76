//! Test fixtures: a temporary checkpoints directory, plain files standing in for a
//! backend's state, and ways to "crash" between the steps of a checkpoint.

use std::path::PathBuf;
use std::sync::Arc;

use super::ids::{CheckpointId, CheckpointKind, JobId, KeyGroupRange};
use super::metadata::{
    FileHandle, OperatorStateHandle, OperatorSubtaskState, SourceOffset, StateData,
};
use super::storage::{CheckpointStorage, LocalStorage};
use super::target::SnapshotTarget;
use super::verify::verify;
use super::{
    CheckpointConfig, CheckpointContent, CheckpointStore, CompletedCheckpoint, PendingCheckpoint,
};
use crate::codec;
use crate::fs::{FileSystem, StdFs};

pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub fs: Arc<dyn FileSystem>,
    pub job: JobId,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            fs: StdFs::shared(),
            job: JobId::new("job-a").unwrap(),
        }
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.path().join("checkpoints")
    }

    pub fn job_dir(&self) -> PathBuf {
        self.checkpoints_dir().join(self.job.as_str())
    }

    /// The backend's working directory, where "state files" are written.
    pub fn work_dir(&self) -> PathBuf {
        let p = self.dir.path().join("work");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn storage(&self) -> Arc<dyn CheckpointStorage> {
        Arc::new(LocalStorage::new(
            Arc::clone(&self.fs),
            self.checkpoints_dir(),
            self.job.clone(),
        ))
    }

    pub fn open(&self, config: CheckpointConfig) -> CheckpointStore {
        CheckpointStore::open(self.storage(), config).unwrap()
    }

    pub fn retaining(&self, n: usize) -> CheckpointStore {
        self.open(CheckpointConfig {
            num_retained: n,
            ..CheckpointConfig::default()
        })
    }

    /// Writes a state file into the working directory (if not there yet) and returns its
    /// path.
    pub fn state_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.work_dir().join(name);
        if !p.exists() {
            std::fs::write(&p, bytes).unwrap();
        }
        p
    }

    /// Places `files` (name, contents) as shared files of `pending` for owner `op_0`.
    pub fn place(&self, pending: &PendingCheckpoint, files: &[(&str, &[u8])]) -> Vec<FileHandle> {
        files
            .iter()
            .map(|(name, bytes)| {
                let p = self.state_file(name, bytes);
                pending
                    .place_shared("op_0", &p, name, bytes.len() as u64, codec::crc32c(bytes))
                    .unwrap()
            })
            .collect()
    }

    /// One whole checkpoint of `files` plus a small private file.
    pub fn checkpoint(
        &self,
        store: &CheckpointStore,
        id: u64,
        kind: CheckpointKind,
        files: &[(&str, &[u8])],
    ) -> CompletedCheckpoint {
        let pending = store.begin(CheckpointId(id), kind).unwrap();
        let mut handles = self.place(&pending, files);
        let private = pending
            .write_private("op_0.manifest", format!("manifest of {id}").as_bytes())
            .unwrap();
        handles.push(private);
        pending.commit(content(handles)).unwrap()
    }

    /// Number of entries in `shared/`.
    pub fn shared_count(&self) -> usize {
        std::fs::read_dir(self.job_dir().join("shared"))
            .unwrap()
            .count()
    }

    /// Checkpoint directories present on disk, by id.
    pub fn chk_dirs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(self.job_dir())
            .unwrap()
            .filter_map(|e| {
                CheckpointId::from_dir_name(e.unwrap().file_name().to_str()?).map(|c| c.0)
            })
            .collect();
        v.sort();
        v
    }

    /// Asserts that every checkpoint the store retains verifies end to end.
    pub fn assert_all_verify(&self, store: &CheckpointStore) {
        for s in store.list() {
            let m = store.metadata(s.id).unwrap();
            let r = verify(store.storage().as_ref(), &m);
            assert!(r.is_ok(), "checkpoint {} fails: {:?}", s.id, r.problems);
        }
    }
}

/// A test backend's operator-state handle holding the file `f`.
pub(crate) fn file_state(f: FileHandle) -> OperatorStateHandle {
    OperatorStateHandle {
        backend: "test".into(),
        data: StateData::File(f),
        states: Vec::new(),
    }
}

/// One subtask whose state is `files`, one operator-state handle each.
pub(crate) fn content(files: Vec<FileHandle>) -> CheckpointContent {
    CheckpointContent {
        operator_states: vec![OperatorSubtaskState {
            operator_id: "op".into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: KeyGroupRange::new(0, 127).unwrap(),
            keyed_state: Vec::new(),
            operator_state: files.into_iter().map(file_state).collect(),
        }],
        source_offsets: vec![SourceOffset {
            source: "numbers".into(),
            split: "0".into(),
            offset: 10,
        }],
        properties: vec![],
    }
}

/// Where a simulated crash stops a checkpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Crash {
    /// Files placed, `_metadata` never written.
    BeforeMetadata,
    /// `_metadata.tmp` written, never renamed.
    DuringMetadataWrite,
}

/// Runs checkpoint `id` up to `crash`, then forgets the pending checkpoint so that no
/// cleanup runs, as if the process died there.
pub(crate) fn crash_checkpoint(
    fx: &Fixture,
    store: &CheckpointStore,
    id: u64,
    files: &[(&str, &[u8])],
    crash: Crash,
) {
    let pending = store
        .begin(CheckpointId(id), CheckpointKind::Incremental)
        .unwrap();
    fx.place(&pending, files);
    pending.write_private("op_0.manifest", b"half").unwrap();
    if let Crash::DuringMetadataWrite = crash {
        let tmp = fx.job_dir().join(format!("chk-{id}/_metadata.tmp"));
        std::fs::write(tmp, b"partial").unwrap();
    }
    pending.release_owner_lock_as_in_a_crash();
    std::mem::forget(pending);
}

/// Simulates a crash of retention halfway through discarding checkpoint `id`: its
/// `_metadata` is gone, but its directory and shared files are still there.
pub(crate) fn crash_mid_retention(fx: &Fixture, id: u64) {
    std::fs::remove_file(fx.job_dir().join(format!("chk-{id}/_metadata"))).unwrap();
}

/// A file handle's absolute path.
pub(crate) fn abs(fx: &Fixture, h: &FileHandle) -> PathBuf {
    fx.job_dir().join(&h.path)
}
