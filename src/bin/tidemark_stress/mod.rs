//! The crash stress tool, modelled on RocksDB's `db_stress` and `db_crashtest.py`.
//!
//! `run` is the writer: it opens a store, verifies it against the expected state, settles
//! the operations a kill left in flight, and writes a deterministic workload from several
//! threads (optionally with checkpoints running and a kill point armed). `crashtest` is the
//! driver: it runs writers on one store generation after generation, SIGKILLs each at a
//! random moment (or lets it die at a kill point inside the store), and stops at the first
//! verification failure.

pub mod ckpt;
pub mod crashtest;
pub mod expected;
pub mod run;
pub mod verify;
pub mod workload;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tidemark::lsm::{Options, SyncMode};

/// Exit status of a `run` that verified, wrote and closed.
pub const EXIT_OK: u8 = 0;
/// Exit status of a failed crash test (the driver).
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a command line that does not parse.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of a `run` whose store (or a checkpoint) disagrees with the expected state.
pub const EXIT_VERIFY: u8 = 3;
/// Exit status of a `run` whose store failed: it cannot be opened, or a read, write or
/// checkpoint returned an error.
pub const EXIT_STORE: u8 = 4;
/// Exit status of a `run` that could not use its expected-state file.
pub const EXIT_SETUP: u8 = 5;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "tidemark-stress",
    version,
    about = "crash stress test of tidemark stores: a writer SIGKILLed again and again, \
             verified after every kill"
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The two modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open and verify a store, then write to it until killed (or for --ops operations)
    Run(RunArgs),
    /// Run writers on one store and kill them again and again, verifying after each kill
    Crashtest(CrashtestArgs),
}

/// When the store's log is fsynced, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncArg {
    /// `none`: never by the write path.
    None,
    /// `periodic:MS`: every MS milliseconds.
    Periodic(u64),
    /// `group`: before each acknowledgement, shared by concurrent writers.
    Group,
    /// `per-write`: before each acknowledgement, alone.
    PerWrite,
}

impl SyncArg {
    /// The store's sync mode.
    pub fn mode(self) -> SyncMode {
        match self {
            SyncArg::None => SyncMode::None,
            SyncArg::Periodic(ms) => SyncMode::Periodic(Duration::from_millis(ms)),
            SyncArg::Group => SyncMode::GroupCommit,
            SyncArg::PerWrite => SyncMode::PerWrite,
        }
    }
}

impl FromStr for SyncArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SyncArg::None),
            "group" => Ok(SyncArg::Group),
            "per-write" => Ok(SyncArg::PerWrite),
            _ => match s.strip_prefix("periodic:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(SyncArg::Periodic(ms)),
                _ => Err(format!(
                    "{s:?}: expected none, periodic:MS (MS > 0), group or per-write"
                )),
            },
        }
    }
}

impl std::fmt::Display for SyncArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncArg::None => write!(f, "none"),
            SyncArg::Periodic(ms) => write!(f, "periodic:{ms}"),
            SyncArg::Group => write!(f, "group"),
            SyncArg::PerWrite => write!(f, "per-write"),
        }
    }
}

/// Arguments of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The store directory (created when missing)
    #[arg(long)]
    pub db: PathBuf,
    /// The expected-state file (created when missing)
    #[arg(long)]
    pub expected: PathBuf,
    /// Writer threads
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Keys each thread owns
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys_per_thread: u64,
    /// Log sync mode: none, periodic:MS, group or per-write
    #[arg(long, default_value = "none")]
    pub sync: SyncArg,
    /// Take checkpoints into this directory every 50-200 ms (and verify the retained ones
    /// at start)
    #[arg(long, value_name = "CKPT_DIR")]
    pub checkpoints: Option<PathBuf>,
    /// Checkpoints to retain
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub retained: u64,
    /// Die with SIGKILL at the --kill-nth hit of this kill point (a name of
    /// tidemark::failpoint::POINTS, or * for any)
    #[arg(long, value_name = "NAME")]
    pub kill_point: Option<String>,
    /// Which hit of --kill-point kills
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub kill_nth: u64,
    /// The workload seed (must stay the same for a store's whole life)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many operations per thread, close the store and exit 0
    #[arg(long, value_name = "M")]
    pub ops: Option<u64>,
    /// End with SIGKILL when the process with this id (the driver) is gone, so that a
    /// killed driver leaves no writer behind (set by `crashtest`; Linux only)
    #[arg(long, hide = true, value_name = "PID")]
    pub parent: Option<u32>,
    /// Memtable size in KiB (tables are cut at the same size)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub memtable_kib: u64,
    /// Static level sizes (`level_compaction_dynamic_level_bytes` off); `crashtest` draws
    /// it for one generation in four, so a store switches between both shapes across kills
    #[arg(long)]
    pub static_levels: bool,
}

/// Arguments of `crashtest`.
#[derive(Debug, Clone, Args)]
pub struct CrashtestArgs {
    /// Directory of the run (must be empty or missing); kept on failure
    #[arg(long)]
    pub dir: PathBuf,
    /// Number of kills (default 100 unless --duration is given)
    #[arg(long, conflicts_with = "duration")]
    pub kills: Option<u64>,
    /// Kill again and again for this many seconds
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Log sync mode of the writers: none, periodic:MS, group or per-write
    #[arg(long, default_value = "none")]
    pub sync: SyncArg,
    /// Take checkpoints (with retention) while writing, and verify them after each kill
    #[arg(long)]
    pub checkpoints: bool,
    /// Checkpoints to retain
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub retained: u64,
    /// Let about half of the writers die at a random kill point inside the store
    #[arg(long)]
    pub kill_points: bool,
    /// Seed of every random choice (default: from the clock; printed)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Writer threads
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Keys each thread owns
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys_per_thread: u64,
    /// Longest time before a kill, in milliseconds
    #[arg(long, default_value_t = 300)]
    pub max_delay_ms: u64,
    /// How long a writer with a kill point armed may run before it is killed from outside
    #[arg(long, default_value_t = 1500)]
    pub kill_point_timeout_ms: u64,
    /// Memtable size in KiB of every writer (default: drawn for each writer from 16, 32,
    /// 64 and 256)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub memtable_kib: Option<u64>,
}

/// Memtable sizes a crash test draws from, in KiB: mostly tiny (flushes, compactions and
/// manifest rolls all the time), sometimes larger (logs that live longer).
pub const MEMTABLE_KIB_CHOICES: &[u64] = &[16, 32, 32, 64, 256];

/// The store options of every writer: small memtables, tables and manifest, so that
/// memtable switches, flushes, compactions and manifest rolls happen all the time.
pub fn store_options(sync: SyncArg, memtable_kib: u64, static_levels: bool) -> Options {
    Options {
        level_compaction_dynamic_level_bytes: !static_levels,
        sync: sync.mode(),
        memtable_size_bytes: (memtable_kib << 10) as usize,
        block_size_bytes: 1024,
        target_file_size_bytes: memtable_kib << 10,
        max_bytes_for_level_base: 4 * (memtable_kib << 10),
        l0_compaction_trigger: 2,
        max_manifest_bytes: 4096,
        block_cache_bytes: 1 << 20,
        ..Options::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_modes_parse_and_print_back() {
        for s in ["none", "periodic:20", "group", "per-write"] {
            assert_eq!(s.parse::<SyncArg>().unwrap().to_string(), s);
        }
        assert_eq!(
            "periodic:20".parse::<SyncArg>().unwrap().mode(),
            SyncMode::Periodic(Duration::from_millis(20))
        );
        for bad in ["periodic:0", "periodic:", "fsync", ""] {
            assert!(bad.parse::<SyncArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn store_options_are_valid_for_every_memtable_size() {
        for &kib in MEMTABLE_KIB_CHOICES.iter().chain(&[1, 65536]) {
            store_options(SyncArg::None, kib, kib % 2 == 0)
                .validate()
                .unwrap();
        }
    }
}
