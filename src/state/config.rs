//! The state backend's configuration under Flink's keys: the seed's (Flink 1.6:
//! `state.backend: jobmanager | filesystem | rocksdb`) and today's (Flink 1.13+:
//! `state.backend.type: hashmap | rocksdb` with `state.checkpoint-storage: jobmanager |
//! filesystem`) both work, and `lsm` names tidemark's own store.
//!
//! ```
//! use tidemark::state::config::StateBackendConfig;
//!
//! # fn main() -> tidemark::Result<()> {
//! let mut c = StateBackendConfig::default();
//! c.set("state.backend", "rocksdb")?;
//! c.set("state.backend.rocksdb.localdir", "/tmp/tidemark-state")?;
//! let backend = c.build(tidemark::lsm::Options::default())?;
//! assert_eq!(backend.name(), "lsm");
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use super::backend::{
    FsStateBackend, LsmStateBackend, MemoryStateBackend, StateBackend, DEFAULT_INLINE_THRESHOLD,
    DEFAULT_MAX_STATE_SIZE,
};
use crate::error::{Error, Result};

/// Which backend a configuration selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Heap state, snapshots inline in `_metadata` (Flink's `MemoryStateBackend`).
    Memory,
    /// Heap state, snapshots in files (Flink's `FsStateBackend`).
    Filesystem,
    /// tidemark's store, incremental checkpoints (Flink's `RocksDBStateBackend`).
    Lsm,
}

/// Where checkpoints of heap state go (Flink 1.13+'s `state.checkpoint-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointStorageKind {
    /// Inline in `_metadata` (Flink's `JobManagerCheckpointStorage`).
    JobManager,
    /// Files in the checkpoint directory (Flink's `FileSystemCheckpointStorage`).
    Filesystem,
}

/// The state backend's settings, with Flink's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StateBackendConfig {
    /// `state.backend` (1.6) or `state.backend.type` (1.13+). Default: heap (`hashmap`).
    pub heap_or_lsm: Option<BackendKind>,
    /// `state.checkpoint-storage`; unset: files when a checkpoint directory is set, else
    /// inline (Flink's rule).
    pub checkpoint_storage: Option<CheckpointStorageKind>,
    /// `state.checkpoints.dir` / `execution.checkpointing.dir`.
    pub checkpoints_dir: Option<PathBuf>,
    /// `state.backend.incremental` / `execution.checkpointing.incremental`; unset: true
    /// for the `lsm` backend (tidemark's default; Flink's is false).
    pub incremental: Option<bool>,
    /// `state.backend.lsm.localdir` / `state.backend.rocksdb.localdir`: where the `lsm`
    /// backend keeps its working stores. Default: `<temp dir>/tidemark-lsm`.
    pub lsm_local_dir: Option<PathBuf>,
    /// `state.backend.memory.max-state-size`: the memory backend's limit per subtask
    /// snapshot. Default 5 MiB.
    pub max_state_size: u64,
    /// `execution.checkpointing.data-inline-threshold` / `state.storage.fs.memory-threshold`:
    /// snapshots below it go inline into `_metadata`. Default 20 KiB.
    pub inline_threshold: u64,
    /// `state.backend.lsm.memory.managed` / `state.backend.rocksdb.memory.managed`: all
    /// `lsm` stores of the process share one memory budget. Default true (Flink's).
    pub managed_memory: bool,
    /// `taskmanager.memory.managed.size`: that budget (block cache and memtables of every
    /// store). Default 256 MiB, which suits a laptop.
    pub managed_memory_size: u64,
    /// `state.backend.lsm.memory.write-buffer-ratio` /
    /// `state.backend.rocksdb.memory.write-buffer-ratio`: the budget's share for memtables.
    /// Default 0.5 (Flink's).
    pub write_buffer_ratio: f64,
    /// `state.backend.lsm.row-cache.size`: the `lsm` backend's write-back cache of rows per
    /// subtask (see [`crate::state::row_cache`]), outside the managed memory; 0 turns it
    /// off. Default 16 MiB.
    pub lsm_row_cache_size: u64,
}

/// The default managed memory of the `lsm` backend: 256 MiB.
pub const DEFAULT_MANAGED_MEMORY_SIZE: u64 = 256 << 20;

impl Default for StateBackendConfig {
    fn default() -> Self {
        StateBackendConfig {
            heap_or_lsm: None,
            checkpoint_storage: None,
            checkpoints_dir: None,
            incremental: None,
            lsm_local_dir: None,
            max_state_size: DEFAULT_MAX_STATE_SIZE,
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
            managed_memory: true,
            managed_memory_size: DEFAULT_MANAGED_MEMORY_SIZE,
            write_buffer_ratio: crate::lsm::budget::DEFAULT_WRITE_BUFFER_RATIO,
            lsm_row_cache_size: crate::state::row_cache::DEFAULT_ROW_CACHE_BYTES as u64,
        }
    }
}

/// Accepted values of `state.backend`.
const LEGACY_NAMES: &str = "jobmanager, memory, filesystem, fs, rocksdb, lsm";
/// Accepted values of `state.backend.type`.
const TYPE_NAMES: &str = "hashmap, rocksdb, lsm";

/// A size in Flink's syntax: a number and an optional unit (`b`, `k`/`kb`, `m`/`mb`,
/// `g`/`gb`, `t`/`tb`, also spelled out as `kibibytes` etc.), binary multiples.
pub fn parse_memory_size(key: &str, value: &str) -> Result<u64> {
    let v = value.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let bad = || {
        Error::InvalidOptions(format!(
            "{key} = {value:?}: not a memory size (a number and a unit such as 20kb, 5 mb, 1g)"
        ))
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim() {
        "" | "b" | "bytes" => 0,
        "k" | "kb" | "kibibytes" => 10,
        "m" | "mb" | "mebibytes" => 20,
        "g" | "gb" | "gibibytes" => 30,
        "t" | "tb" | "tebibytes" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::InvalidOptions(format!(
            "{key} = {value:?}: expected true or false"
        ))),
    }
}

impl StateBackendConfig {
    /// Applies one `key = value` setting. Returns `Ok(false)` for a key this config does not
    /// know (so a caller can offer it to others), and an error for a bad value (an unknown
    /// backend name lists the accepted ones).
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        let v = value.trim();
        match key {
            "state.backend" => {
                let (kind, storage) = match v.to_ascii_lowercase().as_str() {
                    "jobmanager" | "memory" => {
                        (BackendKind::Memory, CheckpointStorageKind::JobManager)
                    }
                    "filesystem" | "fs" => {
                        (BackendKind::Filesystem, CheckpointStorageKind::Filesystem)
                    }
                    "rocksdb" | "lsm" => (BackendKind::Lsm, CheckpointStorageKind::Filesystem),
                    _ => {
                        return Err(Error::InvalidOptions(format!(
                            "{key} = {value:?}: unknown state backend (accepted: {LEGACY_NAMES})"
                        )))
                    }
                };
                self.heap_or_lsm = Some(kind);
                self.checkpoint_storage = Some(storage);
            }
            "state.backend.type" => {
                self.heap_or_lsm = Some(match v.to_ascii_lowercase().as_str() {
                    "hashmap" => BackendKind::Memory,
                    "rocksdb" | "lsm" => BackendKind::Lsm,
                    _ => {
                        return Err(Error::InvalidOptions(format!(
                            "{key} = {value:?}: unknown state backend type (accepted: {TYPE_NAMES})"
                        )))
                    }
                });
            }
            "state.checkpoint-storage" => {
                self.checkpoint_storage = Some(match v.to_ascii_lowercase().as_str() {
                    "jobmanager" => CheckpointStorageKind::JobManager,
                    "filesystem" => CheckpointStorageKind::Filesystem,
                    _ => {
                        return Err(Error::InvalidOptions(format!(
                            "{key} = {value:?}: unknown checkpoint storage (accepted: jobmanager, filesystem)"
                        )))
                    }
                });
            }
            "state.checkpoints.dir" | "execution.checkpointing.dir" => {
                self.checkpoints_dir = Some(PathBuf::from(v));
            }
            "state.backend.incremental" | "execution.checkpointing.incremental" => {
                self.incremental = Some(parse_bool(key, v)?);
            }
            "state.backend.lsm.localdir" | "state.backend.rocksdb.localdir" => {
                self.lsm_local_dir = Some(PathBuf::from(v));
            }
            "state.backend.memory.max-state-size" => {
                self.max_state_size = parse_memory_size(key, v)?;
            }
            "execution.checkpointing.data-inline-threshold"
            | "state.storage.fs.memory-threshold" => {
                self.inline_threshold = parse_memory_size(key, v)?;
            }
            "state.backend.lsm.memory.managed" | "state.backend.rocksdb.memory.managed" => {
                self.managed_memory = parse_bool(key, v)?;
            }
            "state.backend.lsm.row-cache.size" => {
                self.lsm_row_cache_size = parse_memory_size(key, v)?;
            }
            "taskmanager.memory.managed.size" => {
                self.managed_memory_size = parse_memory_size(key, v)?;
            }
            "state.backend.lsm.memory.write-buffer-ratio"
            | "state.backend.rocksdb.memory.write-buffer-ratio" => {
                let r: f64 = v.parse().map_err(|_| {
                    Error::InvalidOptions(format!("{key} = {value:?}: not a number"))
                })?;
                if !(r > 0.0 && r < 1.0) {
                    return Err(Error::InvalidOptions(format!(
                        "{key} = {value:?}: must be between 0 and 1"
                    )));
                }
                self.write_buffer_ratio = r;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The backend the settings select (Flink's rules: `hashmap` state with `jobmanager`
    /// storage is the memory backend, with `filesystem` storage the filesystem backend; no
    /// storage set means filesystem when a checkpoint directory is set).
    pub fn kind(&self) -> BackendKind {
        match self.heap_or_lsm {
            Some(BackendKind::Lsm) => BackendKind::Lsm,
            _ => match self.checkpoint_storage {
                Some(CheckpointStorageKind::JobManager) => BackendKind::Memory,
                Some(CheckpointStorageKind::Filesystem) => BackendKind::Filesystem,
                None if self.checkpoints_dir.is_some() => BackendKind::Filesystem,
                None => BackendKind::Memory,
            },
        }
    }

    /// Whether checkpoints are incremental (only the `lsm` backend's can be).
    pub fn is_incremental(&self) -> bool {
        self.kind() == BackendKind::Lsm && self.incremental.unwrap_or(true)
    }

    /// The backend, with `lsm_options` for the `lsm` backend's stores (given a memory
    /// budget of the managed size unless managed memory is off or the options bring one).
    pub fn build(&self, lsm_options: crate::lsm::Options) -> Result<Box<dyn StateBackend>> {
        let mut lsm_options = lsm_options;
        if self.kind() == BackendKind::Lsm
            && self.managed_memory
            && lsm_options.memory_budget.is_none()
        {
            let size = usize::try_from(self.managed_memory_size).map_err(|_| {
                Error::InvalidOptions(
                    "taskmanager.memory.managed.size does not fit in memory".into(),
                )
            })?;
            lsm_options.memory_budget = Some(crate::lsm::MemoryBudget::with_write_buffer_ratio(
                size,
                self.write_buffer_ratio,
            )?);
        }
        Ok(match self.kind() {
            BackendKind::Memory => {
                Box::new(MemoryStateBackend::with_max_state_size(self.max_state_size))
            }
            BackendKind::Filesystem => {
                Box::new(FsStateBackend::with_inline_threshold(self.inline_threshold))
            }
            BackendKind::Lsm => {
                let dir = self
                    .lsm_local_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("tidemark-lsm"));
                let cache = usize::try_from(self.lsm_row_cache_size).map_err(|_| {
                    Error::InvalidOptions(
                        "state.backend.lsm.row-cache.size does not fit in memory".into(),
                    )
                })?;
                Box::new(LsmStateBackend::new(dir, lsm_options).with_row_cache(cache))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(settings: &[(&str, &str)]) -> BackendKind {
        let mut c = StateBackendConfig::default();
        for (k, v) in settings {
            assert!(c.set(k, v).unwrap(), "{k}");
        }
        c.kind()
    }

    #[test]
    fn old_and_new_keys_select_the_same_backends() {
        assert_eq!(kind_of(&[]), BackendKind::Memory);
        assert_eq!(
            kind_of(&[("state.backend", "jobmanager")]),
            BackendKind::Memory
        );
        assert_eq!(
            kind_of(&[("state.backend", "filesystem")]),
            BackendKind::Filesystem
        );
        assert_eq!(kind_of(&[("state.backend", "rocksdb")]), BackendKind::Lsm);
        assert_eq!(kind_of(&[("state.backend", "lsm")]), BackendKind::Lsm);
        assert_eq!(
            kind_of(&[("state.backend.type", "hashmap")]),
            BackendKind::Memory
        );
        assert_eq!(
            kind_of(&[
                ("state.backend.type", "hashmap"),
                ("state.checkpoint-storage", "filesystem")
            ]),
            BackendKind::Filesystem
        );
        assert_eq!(
            kind_of(&[
                ("state.backend.type", "hashmap"),
                ("state.checkpoints.dir", "/c")
            ]),
            BackendKind::Filesystem
        );
        assert_eq!(
            kind_of(&[("state.backend.type", "rocksdb")]),
            BackendKind::Lsm
        );
    }

    #[test]
    fn values_are_checked_and_unknown_keys_passed_on() {
        let mut c = StateBackendConfig::default();
        let e = c.set("state.backend", "redis").unwrap_err();
        assert!(e.to_string().contains(LEGACY_NAMES), "{e}");
        let e = c.set("state.backend.type", "memory").unwrap_err();
        assert!(e.to_string().contains(TYPE_NAMES), "{e}");
        assert!(c.set("state.backend.incremental", "yes").is_err());
        assert!(!c.set("restart-strategy.type", "none").unwrap());
        c.set("execution.checkpointing.data-inline-threshold", "1 kb")
            .unwrap();
        assert_eq!(c.inline_threshold, 1024);
        c.set("state.backend.memory.max-state-size", "10mb")
            .unwrap();
        assert_eq!(c.max_state_size, 10 << 20);
        assert!(c
            .set("state.backend.memory.max-state-size", "10 parsecs")
            .is_err());
        assert_eq!(parse_memory_size("k", "20KB").unwrap(), 20 << 10);
        assert_eq!(parse_memory_size("k", "3").unwrap(), 3);
        assert_eq!(parse_memory_size("k", "2g").unwrap(), 2 << 30);
        assert!(parse_memory_size("k", "99999999999999999999t").is_err());
        c.set("state.backend", "rocksdb").unwrap();
        assert!(c.is_incremental());
        c.set("execution.checkpointing.incremental", "false")
            .unwrap();
        assert!(!c.is_incremental());
    }

    #[test]
    fn managed_memory_settings() {
        let mut c = StateBackendConfig::default();
        c.set("state.backend.rocksdb.memory.managed", "false")
            .unwrap();
        assert!(!c.managed_memory);
        c.set("taskmanager.memory.managed.size", "64mb").unwrap();
        assert_eq!(c.managed_memory_size, 64 << 20);
        c.set("state.backend.rocksdb.memory.write-buffer-ratio", "0.25")
            .unwrap();
        assert_eq!(c.write_buffer_ratio, 0.25);
        assert!(c
            .set("state.backend.lsm.memory.write-buffer-ratio", "1.5")
            .is_err());
    }

    #[test]
    fn build_gives_the_named_backend() {
        for (v, name) in [
            ("jobmanager", "memory"),
            ("filesystem", "filesystem"),
            ("rocksdb", "lsm"),
        ] {
            let mut c = StateBackendConfig::default();
            c.set("state.backend", v).unwrap();
            let b = c.build(crate::lsm::Options::default()).unwrap();
            assert_eq!(b.name(), name);
        }
    }
}
