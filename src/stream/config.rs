//! A job's configuration under Flink's keys: read from a Flink-style file, overridden on
//! the command line (`-D key=value`) and in code, checked once, and written next to the
//! job's checkpoints (`<job-dir>/job-config.json`) so that tools can show what was in force.
//!
//! Both the key names of the Flink the seed article describes (1.6: `state.backend`,
//! `state.checkpoints.dir`, `restart-strategy`, `execution.savepoint.path`, ...) and
//! today's (2.x: `state.backend.type`, `execution.checkpointing.dir`,
//! `restart-strategy.type`, `execution.state-recovery.path`, ...) are accepted; the state
//! backend's keys are handed to [`StateBackendConfig::set`], which owns them.
//!
//! Layers, later ones winning: the file, then `-D` settings, then settings made in code
//! (as in Flink, where what the program sets overrides the command line). Within a layer
//! the later setting wins, whichever of a key's names it uses (Flink prefers the new
//! name; a file that sets both names to different values gets a warning here).
//!
//! An unknown key is a warning ([`ConfigWarning`], also logged with `tracing::warn!`),
//! never an error: a `flink-conf.yaml` carries many keys tidemark has no use for. A bad
//! value is an error naming where it was set, the key, the value and what is accepted.
//!
//! ```
//! use std::path::Path;
//! use std::time::Duration;
//! use tidemark::stream::config::JobConfigBuilder;
//!
//! # fn main() -> tidemark::Result<()> {
//! let mut b = JobConfigBuilder::new();
//! b.load_str(
//!     "execution.checkpointing.interval: 200 ms\nrestart-strategy.type: fixed-delay\n",
//!     Path::new("flink-conf.yaml"),
//! )?;
//! b.dynamic_property("-Drestart-strategy.fixed-delay.attempts=3")?;
//! let (config, warnings) = b.build()?;
//! assert_eq!(config.checkpointing.interval, Some(Duration::from_millis(200)));
//! assert_eq!(config.restart.to_string(), "fixed-delay (3 attempts, 1 s apart)");
//! assert!(warnings.is_empty());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::restart::{ExponentialDelayConfig, RestartStrategyConfig};
use crate::checkpoint::{CheckpointConfig, ExternalizedCleanup, RestoreMode};
use crate::error::{Error, Result};
use crate::fs::{self, FileSystem};
use crate::state::config::{BackendKind, CheckpointStorageKind, StateBackendConfig};

/// The file, in the job directory, holding the configuration in force.
pub const JOB_CONFIG_FILE_NAME: &str = "job-config.json";
/// The largest configuration file read (`flink-conf.yaml` / `config.yaml`), and the largest
/// `job-config.json`.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;
/// The version of the JSON files of a job directory this build writes and reads.
pub const JOB_FILE_FORMAT_VERSION: u32 = 1;
/// The `interval` of `job-config.json` when checkpointing is off (Flink's
/// `Long.MAX_VALUE`).
pub const CHECKPOINTING_DISABLED_INTERVAL_MS: u64 = i64::MAX as u64;
/// The shortest checkpoint interval and timeout (Flink's 10 ms).
pub const MIN_CHECKPOINT_TIME: Duration = Duration::from_millis(10);
/// The most key groups a job may have (Flink's 2^15).
pub const MAX_MAX_PARALLELISM: u32 = 1 << 15;
/// `web.checkpoints.history` when not set: checkpoints shown in the statistics' history.
pub const DEFAULT_CHECKPOINT_HISTORY: usize = 10;
/// The largest `web.checkpoints.history` accepted.
pub const MAX_CHECKPOINT_HISTORY: usize = 100_000;
/// `taskmanager.network.memory.buffers-per-channel` when not set.
pub const DEFAULT_BUFFERS_PER_CHANNEL: usize = 4;
/// The largest `taskmanager.network.memory.buffers-per-channel` accepted.
pub const MAX_BUFFERS_PER_CHANNEL: usize = 65_536;

// ---------------------------------------------------------------------------------------
// Durations

/// Parses a duration in Flink's syntax: a whole number and an optional unit, with or
/// without a space between (`200`, `200ms`, `1 s`, `5 min`, `1h`, `2 d`). A plain number is
/// milliseconds. Units: `ns`, `us`/`µs`, `ms`, `s`, `m`/`min`, `h`, `d`, and spelled out
/// (`nano`, `micro`, `milli`, `sec`, `second`, `minute`, `hour`, `day`, each also plural).
pub fn parse_duration(key: &str, value: &str) -> Result<Duration> {
    let v = value.trim().to_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let bad = || {
        Error::InvalidOptions(format!(
            "{key} = {value:?}: not a duration (a whole number and an optional unit: ms, s, \
             min, h, d, also spelled out; a plain number is milliseconds)"
        ))
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let nanos_per_unit: u64 = match unit.trim() {
        "ns" | "nano" | "nanos" | "nanosecond" | "nanoseconds" => 1,
        "us" | "µs" | "micro" | "micros" | "microsecond" | "microseconds" => 1_000,
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
        "h" | "hour" | "hours" => 3_600_000_000_000,
        "d" | "day" | "days" => 86_400_000_000_000,
        _ => return Err(bad()),
    };
    let nanos = u128::from(n) * u128::from(nanos_per_unit);
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
    // The remainder of a division by 10^9 fits in u32.
    let sub = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// A duration in the largest unit that shows it exactly (`200 ms`, `1 s`, `10 min`, `1 h`);
/// [`parse_duration`] reads it back to the same value.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0 ms".into();
    }
    for (unit, per) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("min", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos % per == 0 {
            return format!("{} {unit}", nanos / per);
        }
    }
    format!("{nanos} ns")
}

/// A size in bytes in the largest binary unit that shows it exactly (`20 kb`, `5 mb`);
/// [`parse_memory_size`] reads it back.
fn format_memory_size(bytes: u64) -> String {
    for (unit, shift) in [("tb", 40), ("gb", 30), ("mb", 20), ("kb", 10)] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} b")
}

// ---------------------------------------------------------------------------------------
// Where a setting came from

/// Where a setting was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a configuration file.
    File {
        /// The file.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
    },
    /// A `-D key=value` argument.
    CommandLine,
    /// [`JobConfigBuilder::set`], in the job's code.
    Code,
}

impl Origin {
    /// The layer: later layers override earlier ones.
    fn layer(&self) -> u8 {
        match self {
            Origin::File { .. } => 0,
            Origin::CommandLine => 1,
            Origin::Code => 2,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::CommandLine => f.write_str("-D"),
            Origin::Code => f.write_str("set()"),
        }
    }
}

/// One `key: value` setting as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key as written (nested keys of `config.yaml` joined with dots).
    pub key: String,
    /// The value, unquoted; a list is joined with `;` (Flink's list syntax).
    pub value: String,
    /// Where it was set.
    pub origin: Origin,
}

/// A setting that has no effect, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where it was set.
    pub origin: Origin,
    /// The key.
    pub key: String,
    /// Why it is ignored.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.key, self.message)
    }
}

// ---------------------------------------------------------------------------------------
// The file

/// An open key of `config.yaml` waiting for nested keys or list items.
struct OpenKey {
    indent: usize,
    key: String,
    line: usize,
    children: usize,
    items: Vec<String>,
}

/// Reads the settings of a configuration file: the `key: value` lines of `flink-conf.yaml`
/// and the nested maps of Flink 1.19+'s `config.yaml` (flattened to dotted keys), with
/// `#` comments, blank lines, quoted values and lists (block `- item` or flow `[a, b]`,
/// joined with `;`). `source` names the file in errors.
pub fn parse_config_text(text: &str, source: &Path) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    let mut open: Vec<OpenKey> = Vec::new();
    let origin = |line: usize| Origin::File {
        path: source.to_path_buf(),
        line,
    };
    let err = |line: usize, what: String| {
        Error::InvalidOptions(format!("{}:{line}: {what}", source.display()))
    };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        if content.trim().is_empty() || content.starts_with('#') {
            continue;
        }
        if content.starts_with('\t') {
            return Err(err(line_no, "a tab in the indentation (use spaces)".into()));
        }
        if let Some(item) = content
            .strip_prefix("- ")
            .or_else(|| (content.trim_end() == "-").then_some(""))
        {
            let value = scalar(item).map_err(|e| err(line_no, e))?;
            match open.last_mut() {
                Some(k) if k.indent <= indent => {
                    k.items.push(value);
                    continue;
                }
                _ => return Err(err(line_no, "a list item without a key above it".into())),
            }
        }
        let Some((key, rest)) = split_key(content) else {
            return Err(err(
                line_no,
                format!("expected `key: value`, found {:?}", content.trim()),
            ));
        };
        while open.last().is_some_and(|k| k.indent >= indent) {
            if let Some(k) = open.pop() {
                close_key(k, &mut out, source);
            }
        }
        let full_key = match open.last_mut() {
            Some(parent) => {
                if !parent.items.is_empty() {
                    return Err(err(
                        line_no,
                        format!("{:?} holds both list items and keys", parent.key),
                    ));
                }
                parent.children += 1;
                format!("{}.{key}", parent.key)
            }
            None => key.to_string(),
        };
        let value = scalar(rest).map_err(|e| err(line_no, format!("{full_key}: {e}")))?;
        if value.is_empty() && !is_quoted(rest) {
            open.push(OpenKey {
                indent,
                key: full_key,
                line: line_no,
                children: 0,
                items: Vec::new(),
            });
        } else {
            out.push(Setting {
                key: full_key,
                value,
                origin: origin(line_no),
            });
        }
    }
    while let Some(k) = open.pop() {
        close_key(k, &mut out, source);
    }
    Ok(out)
}

/// A key with nothing nested under it is a setting with its list items (or none).
fn close_key(k: OpenKey, out: &mut Vec<Setting>, source: &Path) {
    if k.children == 0 {
        out.push(Setting {
            key: k.key,
            value: k.items.join(";"),
            origin: Origin::File {
                path: source.to_path_buf(),
                line: k.line,
            },
        });
    }
}

/// Splits `key: value` (or a bare `key:`) at the first colon followed by a space or the
/// end of the line; keys never hold one, values may (`file:///data`).
fn split_key(content: &str) -> Option<(&str, &str)> {
    let bytes = content.as_bytes();
    let pos = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && matches!(bytes.get(i + 1), None | Some(b' ') | Some(b'\t'))
    })?;
    let key = content[..pos].trim();
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(key);
    (!key.is_empty()).then(|| (key, &content[pos + 1..]))
}

fn is_quoted(raw: &str) -> bool {
    let t = raw.trim_start();
    t.starts_with('"') || t.starts_with('\'')
}

/// A YAML scalar: quoted (with its escapes), or plain up to a ` #` comment; a flow list
/// `[a, b]` becomes `a;b`.
fn scalar(raw: &str) -> std::result::Result<String, String> {
    let t = raw.trim();
    if let Some(body) = t.strip_prefix('"') {
        let mut s = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return check_after_quote(chars.as_str(), s),
                '\\' => match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('\\') => s.push('\\'),
                    Some('"') => s.push('"'),
                    Some(other) => return Err(format!("unknown escape \\{other}")),
                    None => break,
                },
                c => s.push(c),
            }
        }
        return Err("a double-quoted value without its closing quote".into());
    }
    if let Some(body) = t.strip_prefix('\'') {
        let mut s = String::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    s.push('\'');
                    continue;
                }
                return check_after_quote(&chars.collect::<String>(), s);
            }
            s.push(c);
        }
        return Err("a single-quoted value without its closing quote".into());
    }
    let plain = match t.find(" #") {
        Some(p) => t[..p].trim_end(),
        None => t,
    };
    if let Some(list) = plain.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        let items: std::result::Result<Vec<String>, String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(scalar)
            .collect();
        return Ok(items?.join(";"));
    }
    Ok(plain.to_string())
}

fn check_after_quote(rest: &str, value: String) -> std::result::Result<String, String> {
    let rest = rest.trim();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(value)
    } else {
        Err(format!("text after the closing quote: {rest:?}"))
    }
}

// ---------------------------------------------------------------------------------------
// The typed configuration

/// The guarantee checkpoints give (`execution.checkpointing.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointingMode {
    /// `EXACTLY_ONCE`: barriers are aligned, so state reflects each record once.
    #[default]
    ExactlyOnce,
    /// `AT_LEAST_ONCE`: no alignment; after a restore, some records count twice.
    AtLeastOnce,
}

impl CheckpointingMode {
    /// Flink's name (`EXACTLY_ONCE`, `AT_LEAST_ONCE`).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointingMode::ExactlyOnce => "EXACTLY_ONCE",
            CheckpointingMode::AtLeastOnce => "AT_LEAST_ONCE",
        }
    }
}

/// How checkpoints are taken and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointingConfig {
    /// `execution.checkpointing.interval`: the time between checkpoint triggers; `None`
    /// (the default) turns checkpointing off. At least 10 ms.
    pub interval: Option<Duration>,
    /// `execution.checkpointing.mode`. Default exactly once.
    pub mode: CheckpointingMode,
    /// `execution.checkpointing.timeout`: a checkpoint not complete after this fails.
    /// Default 10 min.
    pub timeout: Duration,
    /// `execution.checkpointing.min-pause`: the least time between the end of one
    /// checkpoint and the trigger of the next. Default 0.
    pub min_pause: Duration,
    /// `execution.checkpointing.max-concurrent-checkpoints`. Default 1.
    pub max_concurrent: u32,
    /// `execution.checkpointing.tolerable-failed-checkpoints`: consecutive checkpoint
    /// failures (timeouts and asynchronous failures) tolerated before the job fails.
    /// Default 0.
    pub tolerable_failed: u32,
    /// `execution.checkpointing.externalized-checkpoint-retention`. Default
    /// `NO_EXTERNALIZED_CHECKPOINTS`.
    pub externalized: ExternalizedCleanup,
    /// `execution.checkpointing.num-retained` / `state.checkpoints.num-retained`. Default 1.
    pub num_retained: usize,
    /// `execution.checkpointing.dir` / `state.checkpoints.dir`.
    pub checkpoints_dir: Option<PathBuf>,
    /// `execution.checkpointing.savepoint-dir` / `state.savepoints.dir`.
    pub savepoints_dir: Option<PathBuf>,
}

impl Default for CheckpointingConfig {
    fn default() -> Self {
        CheckpointingConfig {
            interval: None,
            mode: CheckpointingMode::ExactlyOnce,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failed: 0,
            externalized: ExternalizedCleanup::NoExternalized,
            num_retained: 1,
            checkpoints_dir: None,
            savepoints_dir: None,
        }
    }
}

/// Where a job starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryConfig {
    /// `execution.state-recovery.path` / `execution.savepoint.path`: a checkpoint or
    /// savepoint (`chk-N`, its `_metadata`, or a job directory) to restore.
    pub path: Option<PathBuf>,
    /// `execution.state-recovery.claim-mode` / `execution.savepoint-restore-mode`. Default
    /// `NO_CLAIM`.
    pub claim_mode: RestoreMode,
    /// `execution.state-recovery.ignore-unclaimed-state` /
    /// `execution.savepoint.ignore-unclaimed-state`: restore even when the snapshot holds
    /// state of operators the job no longer has. Default false.
    pub ignore_unclaimed_state: bool,
}

/// A job's configuration, with Flink's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    /// `parallelism.default`. Default 1.
    pub parallelism: u32,
    /// `pipeline.max-parallelism`: the number of key groups. Default 128.
    pub max_parallelism: u32,
    /// Checkpointing.
    pub checkpointing: CheckpointingConfig,
    /// The restart strategy in force: as configured (`restart-strategy.type` /
    /// `restart-strategy` and `restart-strategy.<name>.*`), or by the default rule
    /// ([`RestartStrategyConfig::default_for`]).
    pub restart: RestartStrategyConfig,
    /// The state backend's settings (its keys are [`StateBackendConfig::set`]'s).
    pub state_backend: StateBackendConfig,
    /// Where the job starts from.
    pub recovery: RecoveryConfig,
    /// `web.checkpoints.history`: checkpoints kept in the statistics' history. Default 10.
    pub checkpoint_history: usize,
    /// `taskmanager.network.memory.buffers-per-channel`: batches (of up to 256 records)
    /// buffered in each channel between two subtasks before the sender waits
    /// (backpressure). A barrier waits behind what is buffered, so fewer buffers make
    /// shorter checkpoints, more smooth out bursts. Default 4 (Flink's is 2 buffers of
    /// 32 KiB, plus 8 floating ones per input).
    pub buffers_per_channel: usize,
    /// `pipeline.operator-chaining.enabled` (older `pipeline.operator-chaining`): operators
    /// joined by a forward edge at the same parallelism run in one thread, calling each
    /// other, with no channel in between (Flink's operator chaining). Default true.
    pub operator_chaining: bool,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            parallelism: 1,
            max_parallelism: 128,
            checkpointing: CheckpointingConfig::default(),
            restart: RestartStrategyConfig::default_for(false),
            state_backend: StateBackendConfig::default(),
            recovery: RecoveryConfig::default(),
            checkpoint_history: DEFAULT_CHECKPOINT_HISTORY,
            buffers_per_channel: DEFAULT_BUFFERS_PER_CHANNEL,
            operator_chaining: true,
        }
    }
}

/// The keys this module reads, each with its older names.
const KEYS: &[(&str, &[&str])] = &[
    ("parallelism.default", &[]),
    ("pipeline.max-parallelism", &[]),
    ("execution.checkpointing.interval", &[]),
    ("execution.checkpointing.mode", &[]),
    ("execution.checkpointing.timeout", &[]),
    ("execution.checkpointing.min-pause", &[]),
    ("execution.checkpointing.max-concurrent-checkpoints", &[]),
    ("execution.checkpointing.tolerable-failed-checkpoints", &[]),
    (
        "execution.checkpointing.externalized-checkpoint-retention",
        &[],
    ),
    (
        "execution.checkpointing.num-retained",
        &["state.checkpoints.num-retained"],
    ),
    ("execution.checkpointing.dir", &["state.checkpoints.dir"]),
    (
        "execution.checkpointing.savepoint-dir",
        &["state.savepoints.dir"],
    ),
    ("restart-strategy.type", &["restart-strategy"]),
    ("restart-strategy.fixed-delay.attempts", &[]),
    ("restart-strategy.fixed-delay.delay", &[]),
    (
        "restart-strategy.failure-rate.max-failures-per-interval",
        &[],
    ),
    ("restart-strategy.failure-rate.failure-rate-interval", &[]),
    ("restart-strategy.failure-rate.delay", &[]),
    ("restart-strategy.exponential-delay.initial-backoff", &[]),
    ("restart-strategy.exponential-delay.max-backoff", &[]),
    ("restart-strategy.exponential-delay.backoff-multiplier", &[]),
    (
        "restart-strategy.exponential-delay.reset-backoff-threshold",
        &[],
    ),
    ("restart-strategy.exponential-delay.jitter-factor", &[]),
    (
        "execution.state-recovery.path",
        &["execution.savepoint.path"],
    ),
    (
        "execution.state-recovery.claim-mode",
        &["execution.savepoint-restore-mode"],
    ),
    (
        "execution.state-recovery.ignore-unclaimed-state",
        &["execution.savepoint.ignore-unclaimed-state"],
    ),
    ("web.checkpoints.history", &[]),
    ("taskmanager.network.memory.buffers-per-channel", &[]),
    (
        "pipeline.operator-chaining.enabled",
        &["pipeline.operator-chaining"],
    ),
];

/// The current name of `key` when this module reads it.
fn canonical_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|(name, old)| *name == key || old.contains(&key))
        .map(|(name, _)| *name)
}

/// A value of one of this module's keys, with where it was set.
struct Given<'a> {
    key: &'a str,
    value: &'a str,
    origin: &'a Origin,
}

impl Given<'_> {
    fn bad(&self, what: impl fmt::Display) -> Error {
        Error::InvalidOptions(format!(
            "{}: {} = {:?}: {what}",
            self.origin, self.key, self.value
        ))
    }

    fn duration(&self) -> Result<Duration> {
        parse_duration(self.key, self.value).map_err(|e| self.located(e))
    }

    fn located(&self, e: Error) -> Error {
        match e {
            Error::InvalidOptions(m) => Error::InvalidOptions(format!("{}: {m}", self.origin)),
            other => other,
        }
    }

    fn u32(&self, min: u32) -> Result<u32> {
        let n: u32 = self.value.trim().parse().map_err(|_| {
            self.bad(format_args!(
                "not a whole number from {min} to {}",
                u32::MAX
            ))
        })?;
        if n < min {
            return Err(self.bad(format_args!("must be at least {min}")));
        }
        Ok(n)
    }

    fn f64(&self) -> Result<f64> {
        self.value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| self.bad("not a number"))
    }

    fn bool(&self) -> Result<bool> {
        match self.value.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.bad("expected true or false")),
        }
    }

    /// A local path; `file:` URIs are accepted, other schemes are not.
    fn path(&self) -> Result<PathBuf> {
        let v = self.value.trim();
        if v.is_empty() {
            return Err(self.bad("an empty path"));
        }
        if let Some(rest) = v.strip_prefix("file://") {
            if rest.starts_with('/') {
                return Ok(PathBuf::from(rest));
            }
            return Err(self.bad("a file: URI with a host; expected file:///path"));
        }
        if let Some(rest) = v.strip_prefix("file:") {
            return Ok(PathBuf::from(rest));
        }
        if let Some(p) = v.find("://") {
            return Err(self.bad(format_args!(
                "a {} URI; tidemark stores checkpoints on local file systems only \
                 (a path or a file:// URI)",
                &v[..p]
            )));
        }
        Ok(PathBuf::from(v))
    }

    /// One of `names` (case and `-`/`_` ignored).
    fn choice<T: Copy>(&self, names: &[(&str, T)], accepted: &str) -> Result<T> {
        let v = self.value.trim().to_ascii_uppercase().replace('-', "_");
        names
            .iter()
            .find(|(n, _)| n.to_ascii_uppercase().replace('-', "_") == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| self.bad(format_args!("expected {accepted}")))
    }
}

/// Settings from a file, the command line and code, turned into a [`JobConfig`] by
/// [`JobConfigBuilder::build`].
#[derive(Debug, Clone, Default)]
pub struct JobConfigBuilder {
    settings: Vec<Setting>,
}

impl JobConfigBuilder {
    /// No settings: [`JobConfigBuilder::build`] gives Flink's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the settings of a configuration file (`flink-conf.yaml` or `config.yaml`; see
    /// [`parse_config_text`]). A file larger than [`MAX_CONFIG_FILE_BYTES`] is refused.
    pub fn load_file(&mut self, path: &Path) -> Result<&mut Self> {
        let mut f = fs::open_regular(path)?;
        let bytes = fs::read_capped(&mut f, path, MAX_CONFIG_FILE_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::corruption(
                path,
                e.utf8_error().valid_up_to() as u64,
                "a configuration file must be UTF-8 text",
            )
        })?;
        self.load_str(&text, path)
    }

    /// Adds the settings of configuration text; `source` names it in errors.
    pub fn load_str(&mut self, text: &str, source: &Path) -> Result<&mut Self> {
        self.settings.extend(parse_config_text(text, source)?);
        Ok(self)
    }

    /// Sets `key` from the job's code; this overrides the file and the command line.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.settings.push(Setting {
            key: key.into(),
            value: value.into(),
            origin: Origin::Code,
        });
        self
    }

    /// Adds a command-line setting, `-Dkey=value` or `key=value`; it overrides the file.
    pub fn dynamic_property(&mut self, arg: &str) -> Result<&mut Self> {
        let body = arg.strip_prefix("-D").unwrap_or(arg);
        let Some((key, value)) = body.split_once('=') else {
            return Err(Error::InvalidArgument(format!(
                "-D {body:?}: expected key=value"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "-D {body:?}: the key is empty"
            )));
        }
        self.settings.push(Setting {
            key: key.to_string(),
            value: value.trim().to_string(),
            origin: Origin::CommandLine,
        });
        Ok(self)
    }

    /// The settings given so far, in the order given.
    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    /// Checks every setting and builds the configuration. Unknown keys and settings that
    /// have no effect come back as warnings (and are logged); a bad value is an error.
    pub fn build(&self) -> Result<(JobConfig, Vec<ConfigWarning>)> {
        let mut ordered: Vec<&Setting> = self.settings.iter().collect();
        ordered.sort_by_key(|s| s.origin.layer());
        let mut warnings = Vec::new();
        let mut state_backend = StateBackendConfig::default();
        let mut mine: BTreeMap<&'static str, &Setting> = BTreeMap::new();
        for s in ordered {
            let key = s.key.trim();
            if let Some(name) = canonical_key(key) {
                if let Some(prev) = mine.get(name) {
                    if prev.origin.layer() == s.origin.layer()
                        && prev.key.trim() != key
                        && prev.value.trim() != s.value.trim()
                    {
                        warnings.push(ConfigWarning {
                            origin: prev.origin.clone(),
                            key: prev.key.clone(),
                            message: format!(
                                "overridden by {} = {:?} at {} (two names of one setting)",
                                key, s.value, s.origin
                            ),
                        });
                    }
                }
                mine.insert(name, s);
                continue;
            }
            match state_backend.set(key, &s.value) {
                Ok(true) => {}
                Ok(false) => warnings.push(ConfigWarning {
                    origin: s.origin.clone(),
                    key: key.to_string(),
                    message: "unknown key; ignored".into(),
                }),
                Err(Error::InvalidOptions(m)) => {
                    return Err(Error::InvalidOptions(format!("{}: {m}", s.origin)))
                }
                Err(e) => return Err(e),
            }
        }
        let get = |name: &str| {
            mine.get(name).map(|s| Given {
                key: s.key.trim(),
                value: s.value.as_str(),
                origin: &s.origin,
            })
        };

        let mut c = JobConfig {
            state_backend,
            ..JobConfig::default()
        };
        if let Some(g) = get("parallelism.default") {
            c.parallelism = g.u32(1)?;
        }
        if let Some(g) = get("pipeline.max-parallelism") {
            c.max_parallelism = g.u32(1)?;
            if c.max_parallelism > MAX_MAX_PARALLELISM {
                return Err(g.bad(format_args!("must be at most {MAX_MAX_PARALLELISM}")));
            }
        }
        if c.parallelism > c.max_parallelism {
            return Err(Error::InvalidOptions(format!(
                "parallelism.default ({}) must not exceed pipeline.max-parallelism ({})",
                c.parallelism, c.max_parallelism
            )));
        }
        let cp = &mut c.checkpointing;
        if let Some(g) = get("execution.checkpointing.interval") {
            let d = g.duration()?;
            if d < MIN_CHECKPOINT_TIME {
                return Err(
                    g.bad("must be at least 10 ms (leave the key out to turn checkpointing off)")
                );
            }
            cp.interval = Some(d);
        }
        if let Some(g) = get("execution.checkpointing.mode") {
            cp.mode = g.choice(
                &[
                    ("EXACTLY_ONCE", CheckpointingMode::ExactlyOnce),
                    ("AT_LEAST_ONCE", CheckpointingMode::AtLeastOnce),
                ],
                "EXACTLY_ONCE or AT_LEAST_ONCE",
            )?;
        }
        if let Some(g) = get("execution.checkpointing.timeout") {
            cp.timeout = g.duration()?;
            if cp.timeout < MIN_CHECKPOINT_TIME {
                return Err(g.bad("must be at least 10 ms"));
            }
        }
        if let Some(g) = get("execution.checkpointing.min-pause") {
            cp.min_pause = g.duration()?;
        }
        if let Some(g) = get("execution.checkpointing.max-concurrent-checkpoints") {
            cp.max_concurrent = g.u32(1)?;
        }
        if let Some(g) = get("execution.checkpointing.tolerable-failed-checkpoints") {
            cp.tolerable_failed = g.u32(0)?;
        }
        if let Some(g) = get("execution.checkpointing.externalized-checkpoint-retention") {
            cp.externalized = g.choice(
                &[
                    (
                        "NO_EXTERNALIZED_CHECKPOINTS",
                        ExternalizedCleanup::NoExternalized,
                    ),
                    (
                        "RETAIN_ON_CANCELLATION",
                        ExternalizedCleanup::RetainOnCancellation,
                    ),
                    (
                        "DELETE_ON_CANCELLATION",
                        ExternalizedCleanup::DeleteOnCancellation,
                    ),
                ],
                "NO_EXTERNALIZED_CHECKPOINTS, RETAIN_ON_CANCELLATION or DELETE_ON_CANCELLATION",
            )?;
        }
        if let Some(g) = get("execution.checkpointing.num-retained") {
            cp.num_retained = usize::try_from(g.u32(1)?).unwrap_or(usize::MAX);
        }
        if let Some(g) = get("execution.checkpointing.dir") {
            let p = g.path()?;
            c.state_backend.checkpoints_dir = Some(p.clone());
            cp.checkpoints_dir = Some(p);
        }
        if let Some(g) = get("execution.checkpointing.savepoint-dir") {
            cp.savepoints_dir = Some(g.path()?);
        }
        let checkpointing_on = cp.interval.is_some();
        c.restart = restart_from(&get, checkpointing_on, &mut warnings)?;
        if let Some(g) = get("execution.state-recovery.path") {
            c.recovery.path = Some(g.path()?);
        }
        if let Some(g) = get("execution.state-recovery.claim-mode") {
            if g.value.trim().eq_ignore_ascii_case("legacy") {
                return Err(g.bad(
                    "LEGACY is not supported (Flink 2.0 removed it too); expected CLAIM or NO_CLAIM",
                ));
            }
            c.recovery.claim_mode = g.choice(
                &[
                    ("CLAIM", RestoreMode::Claim),
                    ("NO_CLAIM", RestoreMode::NoClaim),
                ],
                "CLAIM or NO_CLAIM",
            )?;
        }
        if let Some(g) = get("execution.state-recovery.ignore-unclaimed-state") {
            c.recovery.ignore_unclaimed_state = g.bool()?;
        }
        if let Some(g) = get("web.checkpoints.history") {
            let n = g.u32(1)?;
            c.checkpoint_history = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CHECKPOINT_HISTORY)
                .ok_or_else(|| g.bad(format_args!("must be at most {MAX_CHECKPOINT_HISTORY}")))?;
        }
        if let Some(g) = get("taskmanager.network.memory.buffers-per-channel") {
            let n = g.u32(1)?;
            c.buffers_per_channel = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_BUFFERS_PER_CHANNEL)
                .ok_or_else(|| g.bad(format_args!("must be at most {MAX_BUFFERS_PER_CHANNEL}")))?;
        }
        if let Some(g) = get("pipeline.operator-chaining.enabled") {
            c.operator_chaining = g.bool()?;
        }
        for w in &warnings {
            tracing::warn!("job configuration: {w}");
        }
        Ok((c, warnings))
    }
}

/// The restart strategy from `restart-strategy.*`, or the default rule.
fn restart_from<'a>(
    get: &impl Fn(&str) -> Option<Given<'a>>,
    checkpointing_on: bool,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<RestartStrategyConfig> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        None,
        Fixed,
        Rate,
        Exp,
    }
    let kind = match get("restart-strategy.type") {
        Some(g) => Some(g.choice(
            &[
                ("none", Kind::None),
                ("off", Kind::None),
                ("disable", Kind::None),
                ("fixed-delay", Kind::Fixed),
                ("fixeddelay", Kind::Fixed),
                ("failure-rate", Kind::Rate),
                ("failurerate", Kind::Rate),
                ("exponential-delay", Kind::Exp),
                ("exponentialdelay", Kind::Exp),
            ],
            "none (off, disable), fixed-delay, failure-rate or exponential-delay",
        )?),
        None => None,
    };
    let strategy = match kind {
        None => RestartStrategyConfig::default_for(checkpointing_on),
        Some(Kind::None) => RestartStrategyConfig::None,
        Some(Kind::Fixed) => {
            let mut attempts = super::restart::DEFAULT_FIXED_DELAY_ATTEMPTS;
            let mut delay = super::restart::DEFAULT_RESTART_DELAY;
            if let Some(g) = get("restart-strategy.fixed-delay.attempts") {
                attempts = g.u32(0)?;
            }
            if let Some(g) = get("restart-strategy.fixed-delay.delay") {
                delay = g.duration()?;
            }
            RestartStrategyConfig::FixedDelay { attempts, delay }
        }
        Some(Kind::Rate) => {
            let mut max = super::restart::DEFAULT_MAX_FAILURES_PER_INTERVAL;
            let mut interval = super::restart::DEFAULT_FAILURE_RATE_INTERVAL;
            let mut delay = super::restart::DEFAULT_RESTART_DELAY;
            if let Some(g) = get("restart-strategy.failure-rate.max-failures-per-interval") {
                max = g.u32(1)?;
            }
            if let Some(g) = get("restart-strategy.failure-rate.failure-rate-interval") {
                interval = g.duration()?;
                if interval.is_zero() {
                    return Err(g.bad("must be longer than 0 ms"));
                }
            }
            if let Some(g) = get("restart-strategy.failure-rate.delay") {
                delay = g.duration()?;
            }
            RestartStrategyConfig::FailureRate {
                max_failures_per_interval: max,
                interval,
                delay,
            }
        }
        Some(Kind::Exp) => {
            let mut e = ExponentialDelayConfig::default();
            let p = "restart-strategy.exponential-delay";
            if let Some(g) = get(&format!("{p}.initial-backoff")) {
                e.initial_backoff = g.duration()?;
                if e.initial_backoff < Duration::from_millis(1) {
                    return Err(g.bad("must be at least 1 ms"));
                }
            }
            if let Some(g) = get(&format!("{p}.max-backoff")) {
                e.max_backoff = g.duration()?;
            }
            if let Some(g) = get(&format!("{p}.backoff-multiplier")) {
                e.backoff_multiplier = g.f64()?;
                if e.backoff_multiplier <= 1.0 {
                    return Err(g.bad("must be greater than 1"));
                }
            }
            if let Some(g) = get(&format!("{p}.reset-backoff-threshold")) {
                e.reset_backoff_threshold = g.duration()?;
                if e.reset_backoff_threshold < Duration::from_millis(1) {
                    return Err(g.bad("must be at least 1 ms"));
                }
            }
            if let Some(g) = get(&format!("{p}.jitter-factor")) {
                e.jitter_factor = g.f64()?;
                if !(0.0..=1.0).contains(&e.jitter_factor) {
                    return Err(g.bad("must be between 0 and 1"));
                }
            }
            RestartStrategyConfig::ExponentialDelay(e)
        }
    };
    strategy.validate()?;
    // Settings of a strategy not in force have no effect: say so.
    let in_force = strategy.name();
    for (name, _) in KEYS {
        let Some(rest) = name.strip_prefix("restart-strategy.") else {
            continue;
        };
        let Some((family, _)) = rest.split_once('.') else {
            continue;
        };
        if family != in_force || kind.is_none() {
            if let Some(g) = get(name) {
                warnings.push(ConfigWarning {
                    origin: g.origin.clone(),
                    key: g.key.to_string(),
                    message: format!(
                        "ignored: the restart strategy in force is {}{}",
                        in_force,
                        if kind.is_none() {
                            " (the default; set restart-strategy.type to choose one)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
    }
    Ok(strategy)
}

impl JobConfig {
    /// The configuration from settings given as pairs (in order, as from code).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(JobConfig, Vec<ConfigWarning>)> {
        let mut b = JobConfigBuilder::new();
        for (k, v) in pairs {
            b.set(k, v);
        }
        b.build()
    }

    /// Whether checkpoints are taken (an interval is set).
    pub fn checkpointing_enabled(&self) -> bool {
        self.checkpointing.interval.is_some()
    }

    /// The options of the job's [`crate::checkpoint::CheckpointStore`].
    pub fn checkpoint_store_config(&self) -> CheckpointConfig {
        CheckpointConfig {
            num_retained: self.checkpointing.num_retained,
            cleanup: self.checkpointing.externalized,
            ..CheckpointConfig::default()
        }
    }

    /// Every setting in force under its current key name, defaults included (optional
    /// settings that are unset are left out). Building from these gives this
    /// configuration back.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        let cp = &self.checkpointing;
        put("parallelism.default", self.parallelism.to_string());
        put("pipeline.max-parallelism", self.max_parallelism.to_string());
        if let Some(i) = cp.interval {
            put("execution.checkpointing.interval", format_duration(i));
        }
        put("execution.checkpointing.mode", cp.mode.as_str().into());
        put(
            "execution.checkpointing.timeout",
            format_duration(cp.timeout),
        );
        put(
            "execution.checkpointing.min-pause",
            format_duration(cp.min_pause),
        );
        put(
            "execution.checkpointing.max-concurrent-checkpoints",
            cp.max_concurrent.to_string(),
        );
        put(
            "execution.checkpointing.tolerable-failed-checkpoints",
            cp.tolerable_failed.to_string(),
        );
        put(
            "execution.checkpointing.externalized-checkpoint-retention",
            cp.externalized.as_str().into(),
        );
        put(
            "execution.checkpointing.num-retained",
            cp.num_retained.to_string(),
        );
        if let Some(d) = &cp.checkpoints_dir {
            put("execution.checkpointing.dir", d.display().to_string());
        }
        if let Some(d) = &cp.savepoints_dir {
            put(
                "execution.checkpointing.savepoint-dir",
                d.display().to_string(),
            );
        }
        put("restart-strategy.type", self.restart.name().into());
        match &self.restart {
            RestartStrategyConfig::None => {}
            RestartStrategyConfig::FixedDelay { attempts, delay } => {
                put(
                    "restart-strategy.fixed-delay.attempts",
                    attempts.to_string(),
                );
                put(
                    "restart-strategy.fixed-delay.delay",
                    format_duration(*delay),
                );
            }
            RestartStrategyConfig::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
            } => {
                put(
                    "restart-strategy.failure-rate.max-failures-per-interval",
                    max_failures_per_interval.to_string(),
                );
                put(
                    "restart-strategy.failure-rate.failure-rate-interval",
                    format_duration(*interval),
                );
                put(
                    "restart-strategy.failure-rate.delay",
                    format_duration(*delay),
                );
            }
            RestartStrategyConfig::ExponentialDelay(e) => {
                let p = "restart-strategy.exponential-delay";
                put(
                    &format!("{p}.initial-backoff"),
                    format_duration(e.initial_backoff),
                );
                put(&format!("{p}.max-backoff"), format_duration(e.max_backoff));
                put(
                    &format!("{p}.backoff-multiplier"),
                    e.backoff_multiplier.to_string(),
                );
                put(
                    &format!("{p}.reset-backoff-threshold"),
                    format_duration(e.reset_backoff_threshold),
                );
                put(&format!("{p}.jitter-factor"), e.jitter_factor.to_string());
            }
        }
        if let Some(p) = &self.recovery.path {
            put("execution.state-recovery.path", p.display().to_string());
        }
        put(
            "execution.state-recovery.claim-mode",
            self.recovery.claim_mode.as_str().into(),
        );
        put(
            "execution.state-recovery.ignore-unclaimed-state",
            self.recovery.ignore_unclaimed_state.to_string(),
        );
        put(
            "web.checkpoints.history",
            self.checkpoint_history.to_string(),
        );
        put(
            "taskmanager.network.memory.buffers-per-channel",
            self.buffers_per_channel.to_string(),
        );
        put(
            "pipeline.operator-chaining.enabled",
            self.operator_chaining.to_string(),
        );
        for (k, v) in state_backend_settings(&self.state_backend) {
            put(k, v);
        }
        m
    }

    /// Flink's name of the state backend's class for this configuration
    /// (`HashMapStateBackend`'s place is taken by tidemark's two heap backends).
    pub fn state_backend_name(&self) -> &'static str {
        match self.state_backend.kind() {
            BackendKind::Memory => "MemoryStateBackend",
            BackendKind::Filesystem => "FsStateBackend",
            BackendKind::Lsm => "LsmStateBackend",
        }
    }

    /// Flink's name of the checkpoint storage's class for this configuration.
    pub fn checkpoint_storage_name(&self) -> &'static str {
        match self.state_backend.kind() {
            BackendKind::Memory => "JobManagerCheckpointStorage",
            BackendKind::Filesystem | BackendKind::Lsm => "FileSystemCheckpointStorage",
        }
    }

    /// The `job-config.json` document of this configuration.
    pub fn document(&self) -> JobConfigDocument {
        let cp = &self.checkpointing;
        JobConfigDocument {
            mode: match cp.mode {
                CheckpointingMode::ExactlyOnce => "exactly_once",
                CheckpointingMode::AtLeastOnce => "at_least_once",
            }
            .into(),
            interval: cp
                .interval
                .map_or(CHECKPOINTING_DISABLED_INTERVAL_MS, duration_ms),
            timeout: duration_ms(cp.timeout),
            min_pause: duration_ms(cp.min_pause),
            max_concurrent: cp.max_concurrent,
            externalization: Externalization {
                enabled: cp.externalized != ExternalizedCleanup::NoExternalized,
                delete_on_cancellation: cp.externalized
                    == ExternalizedCleanup::DeleteOnCancellation,
            },
            state_backend: self.state_backend_name().into(),
            checkpoint_storage: self.checkpoint_storage_name().into(),
            unaligned_checkpoints: false,
            tolerable_failed_checkpoints: cp.tolerable_failed,
            aligned_checkpoint_timeout: 0,
            state_changelog_enabled: false,
            restart_strategy: RestartStrategyJson {
                kind: self.restart.name().into(),
                description: self.restart.to_string(),
            },
            configuration: self.settings(),
        }
    }
}

/// The state backend's settings under their current key names (the checkpoint directory
/// is [`JobConfig::settings`]'s own).
fn state_backend_settings(s: &StateBackendConfig) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    match s.heap_or_lsm {
        Some(BackendKind::Lsm) => v.push(("state.backend.type", "lsm".to_string())),
        Some(BackendKind::Memory) => v.push(("state.backend.type", "hashmap".to_string())),
        // Only the older key selects the filesystem backend outright.
        Some(BackendKind::Filesystem) => v.push(("state.backend", "filesystem".to_string())),
        None => {}
    }
    match s.checkpoint_storage {
        Some(CheckpointStorageKind::JobManager) => {
            v.push(("state.checkpoint-storage", "jobmanager".to_string()))
        }
        Some(CheckpointStorageKind::Filesystem) => {
            v.push(("state.checkpoint-storage", "filesystem".to_string()))
        }
        None => {}
    }
    if let Some(i) = s.incremental {
        v.push(("execution.checkpointing.incremental", i.to_string()));
    }
    if let Some(d) = &s.lsm_local_dir {
        v.push(("state.backend.lsm.localdir", d.display().to_string()));
    }
    v.push((
        "state.backend.memory.max-state-size",
        format_memory_size(s.max_state_size),
    ));
    v.push((
        "execution.checkpointing.data-inline-threshold",
        format_memory_size(s.inline_threshold),
    ));
    v.push((
        "state.backend.lsm.memory.managed",
        s.managed_memory.to_string(),
    ));
    v.push((
        "taskmanager.memory.managed.size",
        format_memory_size(s.managed_memory_size),
    ));
    v.push((
        "state.backend.lsm.memory.write-buffer-ratio",
        s.write_buffer_ratio.to_string(),
    ));
    v.push((
        "state.backend.lsm.row-cache.size",
        format_memory_size(s.lsm_row_cache_size),
    ));
    v
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// job-config.json

/// `externalization` of Flink's `GET /jobs/:id/checkpoints/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Externalization {
    /// Retained checkpoints outlive a cancelled job (any retention but
    /// `NO_EXTERNALIZED_CHECKPOINTS`).
    pub enabled: bool,
    /// `DELETE_ON_CANCELLATION`.
    pub delete_on_cancellation: bool,
}

/// The restart strategy in `job-config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartStrategyJson {
    /// `none`, `fixed-delay`, `failure-rate` or `exponential-delay`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The strategy and its settings in words.
    pub description: String,
}

/// `<job-dir>/job-config.json`: the fields of Flink's `GET /jobs/:id/checkpoints/config`
/// response (durations in milliseconds), then tidemark's: the restart strategy and every
/// setting in force. Flink's `checkpoints_after_tasks_finish`,
/// `changelog_periodic_materialization_interval` and `changelog_storage` are left out:
/// tidemark has neither finished-task checkpoints nor a changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConfigDocument {
    /// `exactly_once` or `at_least_once`.
    pub mode: String,
    /// The checkpoint interval; [`CHECKPOINTING_DISABLED_INTERVAL_MS`] when off.
    pub interval: u64,
    /// The checkpoint timeout.
    pub timeout: u64,
    /// The least pause between checkpoints.
    pub min_pause: u64,
    /// Checkpoints in flight at once, at most.
    pub max_concurrent: u32,
    /// What happens to retained checkpoints at cancellation.
    pub externalization: Externalization,
    /// The state backend's class name (`LsmStateBackend`, `FsStateBackend`,
    /// `MemoryStateBackend`).
    pub state_backend: String,
    /// The checkpoint storage's class name (Flink's).
    pub checkpoint_storage: String,
    /// Always false: tidemark's barriers are aligned.
    pub unaligned_checkpoints: bool,
    /// Consecutive checkpoint failures tolerated.
    pub tolerable_failed_checkpoints: u32,
    /// Always 0: no switch to unaligned checkpoints.
    pub aligned_checkpoint_timeout: u64,
    /// Always false: no changelog.
    pub state_changelog_enabled: bool,
    /// The restart strategy in force.
    pub restart_strategy: RestartStrategyJson,
    /// Every setting in force ([`JobConfig::settings`]).
    pub configuration: BTreeMap<String, String>,
}

impl JobConfigDocument {
    /// The configuration the document records, rebuilt from its settings.
    pub fn job_config(&self) -> Result<JobConfig> {
        let (c, _) = JobConfig::from_pairs(
            self.configuration
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Ok(c)
    }
}

/// The path of `job-config.json` in `job_dir`.
pub fn job_config_path(job_dir: &Path) -> PathBuf {
    job_dir.join(JOB_CONFIG_FILE_NAME)
}

/// Writes `<job_dir>/job-config.json` durably (temp file, fsync, rename, directory fsync):
/// the configuration a restarted job or a tool finds is the one in force.
pub fn write_job_config(fs: &dyn FileSystem, job_dir: &Path, config: &JobConfig) -> Result<()> {
    let bytes = encode_job_file(JOB_CONFIG_FORMAT, &config.document())?;
    fs::write_atomic(fs, &job_config_path(job_dir), &bytes)
}

/// Reads a `job-config.json` (the file, or the job directory holding it). A damaged or
/// hostile file is an error naming it.
pub fn read_job_config(path: &Path) -> Result<JobConfigDocument> {
    let path = if path.is_dir() {
        job_config_path(path)
    } else {
        path.to_path_buf()
    };
    decode_job_file(&path, JOB_CONFIG_FORMAT, MAX_CONFIG_FILE_BYTES)
}

/// The format name in `job-config.json`'s header.
pub(crate) const JOB_CONFIG_FORMAT: &str = "job-config";

// ---------------------------------------------------------------------------------------
// The framing of a job directory's JSON files (format-spec/job-json.md)

/// What every JSON file of a job directory starts with, up to the format name.
const HEADER_START: &str = "{\"tidemark_format\": \"";
const HEADER_VERSION: &str = "\", \"format_version\": ";
const HEADER_CRC: &str = ", \"crc32c\": \"";
/// Hex digits of the checksum.
const CRC_HEX_LEN: usize = 8;

/// The bytes of a JSON file of a job directory: a header with the format's name, version
/// and the crc32c of everything after the checksum's closing quote, then the fields of
/// `body` (a JSON object with at least one field), pretty-printed.
pub(crate) fn encode_job_file<T: Serialize>(format: &str, body: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_vec_pretty(body)
        .map_err(|e| Error::InvalidArgument(format!("cannot encode {format}: {e}")))?;
    // The body's fields continue the header's object: drop the body's opening brace.
    let fields = match json.split_first() {
        Some((b'{', rest)) if rest.iter().any(|b| !b.is_ascii_whitespace() && *b != b'}') => rest,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{format}: the document is not a JSON object with fields"
            )))
        }
    };
    let mut tail = Vec::with_capacity(fields.len() + 3);
    tail.extend_from_slice(b"\",");
    tail.extend_from_slice(fields);
    tail.push(b'\n');
    let crc = crate::codec::crc32c(&tail);
    let mut out = format!(
        "{HEADER_START}{format}{HEADER_VERSION}{JOB_FILE_FORMAT_VERSION}{HEADER_CRC}{crc:08x}"
    )
    .into_bytes();
    out.extend_from_slice(&tail);
    Ok(out)
}

/// Reads and checks a file written by [`encode_job_file`]: at most `max_bytes`, the
/// expected format and version, the checksum, then the fields. Every failure is
/// [`Error::Corruption`] naming the file and the offset.
pub(crate) fn decode_job_file<T: DeserializeOwned>(
    path: &Path,
    format: &str,
    max_bytes: u64,
) -> Result<T> {
    let mut f = fs::open_regular(path)?;
    let bytes = fs::read_capped(&mut f, path, max_bytes)?;
    decode_job_bytes(path, &bytes, format)
}

/// [`decode_job_file`] on bytes already read.
pub(crate) fn decode_job_bytes<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    format: &str,
) -> Result<T> {
    let corrupt = |offset: usize, reason: String| Error::corruption(path, offset as u64, reason);
    let mut pos = 0usize;
    let expect = |pos: &mut usize, lit: &str, what: &str| -> Result<()> {
        match bytes.get(*pos..*pos + lit.len()) {
            Some(b) if b == lit.as_bytes() => {
                *pos += lit.len();
                Ok(())
            }
            _ => Err(corrupt(*pos, format!("expected {what} ({lit:?})"))),
        }
    };
    expect(
        &mut pos,
        HEADER_START,
        &format!("a tidemark {format} file to start with its header"),
    )?;
    let name_len = bytes
        .get(pos..)
        .and_then(|b| b.iter().take(64).position(|c| *c == b'"'))
        .ok_or_else(|| corrupt(pos, "the format name does not end".into()))?;
    let name = String::from_utf8_lossy(&bytes[pos..pos + name_len]).into_owned();
    if name != format {
        return Err(corrupt(
            pos,
            format!("a tidemark {name:?} file, not {format:?}"),
        ));
    }
    pos += name_len;
    expect(&mut pos, HEADER_VERSION, "the format version")?;
    let digits = bytes.get(pos..).map_or(0, |b| {
        b.iter().take(10).take_while(|c| c.is_ascii_digit()).count()
    });
    let version: u32 = std::str::from_utf8(&bytes[pos..pos + digits])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(pos, "the format version is not a number".into()))?;
    if version != JOB_FILE_FORMAT_VERSION {
        return Err(corrupt(
            pos,
            format!(
                "format version {version} is not supported (this build reads version \
                 {JOB_FILE_FORMAT_VERSION})"
            ),
        ));
    }
    pos += digits;
    expect(&mut pos, HEADER_CRC, "the checksum")?;
    let crc_at = pos;
    let stored = bytes
        .get(pos..pos + CRC_HEX_LEN)
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt(pos, "the checksum is not 8 hex digits".into()))?;
    pos += CRC_HEX_LEN;
    let tail = &bytes[pos..];
    let actual = crate::codec::crc32c(tail);
    if actual != stored {
        return Err(corrupt(
            crc_at,
            format!(
                "checksum mismatch: the header says {stored:08x}, the {} bytes after it \
                 have {actual:08x}",
                tail.len()
            ),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        corrupt(
            offset_of(bytes, e.line(), e.column()),
            format!("not a valid {format} document: {e}"),
        )
    })
}

/// The byte offset of a 1-based line and column.
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(bytes.len(), |(i, _)| i + 1)
    };
    (line_start + column.saturating_sub(1)).min(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::config::parse_memory_size;

    #[test]
    fn durations_in_flink_syntax() {
        let d = |v: &str| parse_duration("k", v).unwrap();
        assert_eq!(d("200"), Duration::from_millis(200));
        assert_eq!(d("200ms"), Duration::from_millis(200));
        assert_eq!(d("1 s"), Duration::from_secs(1));
        assert_eq!(d("5 min"), Duration::from_secs(300));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("2 minutes"), Duration::from_secs(120));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1 d"), Duration::from_secs(86400));
        assert_eq!(d("10 SECONDS"), Duration::from_secs(10));
        assert_eq!(d("7 millis"), Duration::from_millis(7));
        assert_eq!(d("3us"), Duration::from_micros(3));
        for bad in [
            "",
            "ms",
            "1.5 s",
            "-1 s",
            "10 parsecs",
            "99999999999999999999999 d",
        ] {
            let e = parse_duration("execution.checkpointing.timeout", bad).unwrap_err();
            assert!(
                e.to_string().contains("execution.checkpointing.timeout"),
                "{e}"
            );
        }
        for d in [
            Duration::ZERO,
            Duration::from_millis(200),
            Duration::from_secs(90),
            Duration::from_secs(3600),
            Duration::from_micros(1500),
            Duration::from_nanos(7),
        ] {
            assert_eq!(parse_duration("k", &format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn memory_sizes_format_back_to_themselves() {
        for n in [
            0u64,
            1,
            1000,
            1024,
            20 << 10,
            5 << 20,
            3 << 30,
            1 << 40,
            (1 << 20) + 1,
        ] {
            assert_eq!(parse_memory_size("k", &format_memory_size(n)).unwrap(), n);
        }
    }

    #[test]
    fn yaml_nesting_quotes_lists_and_comments() {
        let text = "\
# comment
a.b: 1   # trailing comment
nested:
  x: \"quoted # not a comment\"
  deeper:
    y: 'it''s'
list:
  - one
  - two
flow: [a, 'b c']
empty:
url: file:///data/x
";
        let s = parse_config_text(text, Path::new("c.yaml")).unwrap();
        let got: Vec<(&str, &str)> = s
            .iter()
            .map(|s| (s.key.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.b", "1"),
                ("nested.x", "quoted # not a comment"),
                ("nested.deeper.y", "it's"),
                ("list", "one;two"),
                ("flow", "a;b c"),
                ("empty", ""),
                ("url", "file:///data/x"),
            ]
        );
        assert_eq!(
            s[2].origin,
            Origin::File {
                path: "c.yaml".into(),
                line: 6
            }
        );
        for (bad, what) in [
            ("no separator here\n", "c.yaml:1"),
            ("a: \"open\n", "closing quote"),
            ("- item\n", "without a key"),
            ("a:\n\tb: 1\n", "tab"),
        ] {
            let e = parse_config_text(bad, Path::new("c.yaml")).unwrap_err();
            assert!(e.to_string().contains(what), "{bad:?}: {e}");
        }
    }

    #[test]
    fn framing_rejects_other_formats_versions_and_damage() {
        let doc = JobConfig::default().document();
        let bytes = encode_job_file(JOB_CONFIG_FORMAT, &doc).unwrap();
        let p = Path::new("job-config.json");
        let back: JobConfigDocument = decode_job_bytes(p, &bytes, JOB_CONFIG_FORMAT).unwrap();
        assert_eq!(back, doc);
        let e = decode_job_bytes::<JobConfigDocument>(p, &bytes, "checkpoint-stats").unwrap_err();
        assert!(e.to_string().contains("not \"checkpoint-stats\""), "{e}");
        let v2 = String::from_utf8(bytes.clone()).unwrap().replacen(
            "\"format_version\": 1",
            "\"format_version\": 2",
            1,
        );
        let e =
            decode_job_bytes::<JobConfigDocument>(p, v2.as_bytes(), JOB_CONFIG_FORMAT).unwrap_err();
        assert!(e.to_string().contains("version 2 is not supported"), "{e}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        let e = decode_job_bytes::<JobConfigDocument>(p, &flipped, JOB_CONFIG_FORMAT).unwrap_err();
        assert!(
            e.is_corruption() && e.to_string().contains("checksum mismatch"),
            "{e}"
        );
        for cut in [0, 5, 30, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode_job_bytes::<JobConfigDocument>(p, &bytes[..cut], JOB_CONFIG_FORMAT).is_err()
            );
        }
    }
}
