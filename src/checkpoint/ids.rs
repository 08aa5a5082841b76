//! Identifiers of the checkpoint layer: checkpoint ids, job ids, key-group ranges and the
//! kind of a checkpoint. Each is a newtype so that they cannot be mixed up, and each that
//! can be read from disk or typed by a user validates itself on construction.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The number of a checkpoint; strictly increasing within a job (`chk-<N>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The checkpoint's directory name relative to the job directory: `chk-<N>`.
    pub fn dir_name(self) -> String {
        format!("chk-{}", self.0)
    }

    /// Parses a directory name of the exact form `chk-<N>` (decimal, no sign, no leading
    /// zeros), the only form [`CheckpointId::dir_name`] produces.
    pub fn from_dir_name(name: &str) -> Option<CheckpointId> {
        let digits = name.strip_prefix("chk-")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        // Rejects `chk-007`, so that one id has exactly one directory name.
        (n.to_string() == digits).then_some(CheckpointId(n))
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Longest job id accepted, in bytes.
pub const JOB_ID_MAX_BYTES: usize = 64;

/// The identifier of a job, and the name of its directory under the checkpoints directory.
///
/// 1 to [`JOB_ID_MAX_BYTES`] characters of `[A-Za-z0-9_-]`, so that it is always a single,
/// harmless path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

impl JobId {
    /// Validates `id` as a job id.
    pub fn new(id: impl Into<String>) -> Result<JobId> {
        let id = id.into();
        match job_id_problem(&id) {
            None => Ok(JobId(id)),
            Some(reason) => Err(Error::InvalidArgument(format!("job id {id:?}: {reason}"))),
        }
    }

    /// A fresh job id of 32 lowercase hex characters, shaped like Flink's.
    ///
    /// The bits come from the standard library's per-process random hash keys mixed with
    /// the clock, the process id and a counter: unique in practice, not cryptographic.
    pub fn random() -> JobId {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut halves = [0u64; 2];
        for (i, half) in halves.iter_mut().enumerate() {
            let mut h = RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_u64(count);
            h.write_usize(i);
            *half = h.finish();
        }
        JobId(format!("{:016x}{:016x}", halves[0], halves[1]))
    }

    /// The id as a string (also the job directory's name).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `id` is not a valid job id, or `None` when it is.
pub(crate) fn job_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("must not be empty");
    }
    if id.len() > JOB_ID_MAX_BYTES {
        return Some("longer than 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Some("may contain only A-Z, a-z, 0-9, '_' and '-'");
    }
    None
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = Error;
    fn from_str(s: &str) -> Result<JobId> {
        JobId::new(s)
    }
}

/// A contiguous, inclusive range of key groups owned by one operator subtask, as in Flink.
///
/// Never empty: `start <= end`, checked by [`KeyGroupRange::new`], the only way to make
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    start: u32,
    end: u32,
}

impl KeyGroupRange {
    /// The range `start..=end`; `start <= end` is required.
    pub fn new(start: u32, end: u32) -> Result<KeyGroupRange> {
        if start > end {
            return Err(Error::InvalidArgument(format!(
                "key-group range {start}..={end}: start is after end"
            )));
        }
        Ok(KeyGroupRange { start, end })
    }

    /// The range `0..=end`, which is never empty (every key group of an operator with
    /// `end + 1` key groups).
    pub fn up_to(end: u32) -> KeyGroupRange {
        KeyGroupRange { start: 0, end }
    }

    /// First key group of the range.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// Last key group of the range (inclusive).
    pub fn end(&self) -> u32 {
        self.end
    }

    /// The key groups of the range, in order.
    pub fn iter(&self) -> std::ops::RangeInclusive<u32> {
        self.start..=self.end
    }

    /// True when the two ranges share at least one key group.
    pub fn overlaps(&self, other: &KeyGroupRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// True when every key group of `other` lies in this range.
    pub fn contains_range(&self, other: &KeyGroupRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// The key groups both ranges hold, if any.
    pub fn intersection(&self, other: &KeyGroupRange) -> Option<KeyGroupRange> {
        self.overlaps(other).then(|| KeyGroupRange {
            start: self.start.max(other.start),
            end: self.end.min(other.end),
        })
    }

    /// Number of key groups in the range (at least 1).
    pub fn len(&self) -> u64 {
        u64::from(self.end.saturating_sub(self.start)) + 1
    }

    /// Always false: a valid range holds at least one key group.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `key_group` lies in the range.
    pub fn contains(&self, key_group: u32) -> bool {
        self.start <= key_group && key_group <= self.end
    }
}

impl IntoIterator for KeyGroupRange {
    type Item = u32;
    type IntoIter = std::ops::RangeInclusive<u32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.start, self.end)
    }
}

/// What kind of snapshot a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointKind {
    /// Shares unchanged files with earlier checkpoints through `shared/`.
    Incremental,
    /// Places every file anew; references nothing placed by an earlier checkpoint.
    Full,
    /// A user-triggered snapshot in the backends' own formats (Flink's *native* savepoint):
    /// placed in full, and (in `_metadata` version 3) self-contained in its own directory.
    Savepoint,
    /// A user-triggered snapshot in the backend-independent canonical format
    /// (`format-spec/savepoint.md`; Flink's *canonical* savepoint): restores into any
    /// backend. Self-contained in its own directory. `_metadata` version 3 and later.
    CanonicalSavepoint,
}

/// The format of a savepoint's keyed state (Flink's `SavepointFormatType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SavepointFormat {
    /// Each backend's own snapshot format: fast to take and restore, restores only into
    /// the backend that wrote it.
    Native,
    /// The canonical format: key/value records per key group and state, restorable into
    /// any backend with any parallelism (Flink's default).
    #[default]
    Canonical,
}

impl SavepointFormat {
    /// The checkpoint kind of a savepoint in this format.
    pub fn kind(self) -> CheckpointKind {
        match self {
            SavepointFormat::Native => CheckpointKind::Savepoint,
            SavepointFormat::Canonical => CheckpointKind::CanonicalSavepoint,
        }
    }

    /// Flink's name: `native` or `canonical`.
    pub fn as_str(self) -> &'static str {
        match self {
            SavepointFormat::Native => "native",
            SavepointFormat::Canonical => "canonical",
        }
    }
}

impl fmt::Display for SavepointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SavepointFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" => Ok(SavepointFormat::Native),
            "canonical" => Ok(SavepointFormat::Canonical),
            _ => Err(Error::InvalidOptions(format!(
                "savepoint format {s:?}: expected native or canonical"
            ))),
        }
    }
}

impl CheckpointKind {
    /// The byte that encodes this kind in `_metadata`.
    pub fn to_byte(self) -> u8 {
        match self {
            CheckpointKind::Incremental => 0,
            CheckpointKind::Full => 1,
            CheckpointKind::Savepoint => 2,
            CheckpointKind::CanonicalSavepoint => 3,
        }
    }

    /// Inverse of [`CheckpointKind::to_byte`].
    pub fn from_byte(b: u8) -> Option<CheckpointKind> {
        match b {
            0 => Some(CheckpointKind::Incremental),
            1 => Some(CheckpointKind::Full),
            2 => Some(CheckpointKind::Savepoint),
            3 => Some(CheckpointKind::CanonicalSavepoint),
            _ => None,
        }
    }

    /// True when the checkpoint may reference files placed by earlier checkpoints.
    pub fn reuses_shared_files(self) -> bool {
        self == CheckpointKind::Incremental
    }

    /// The savepoint format, when this is a savepoint.
    pub fn savepoint_format(self) -> Option<SavepointFormat> {
        match self {
            CheckpointKind::Savepoint => Some(SavepointFormat::Native),
            CheckpointKind::CanonicalSavepoint => Some(SavepointFormat::Canonical),
            CheckpointKind::Incremental | CheckpointKind::Full => None,
        }
    }

    /// True for both savepoint kinds.
    pub fn is_savepoint(self) -> bool {
        self.savepoint_format().is_some()
    }

    /// Lowercase name (`incremental`, `full`, `savepoint`, `canonical-savepoint`).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Incremental => "incremental",
            CheckpointKind::Full => "full",
            CheckpointKind::Savepoint => "savepoint",
            CheckpointKind::CanonicalSavepoint => "canonical-savepoint",
        }
    }
}

impl fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_dir_names_round_trip_and_reject_other_spellings() {
        assert_eq!(CheckpointId(17).dir_name(), "chk-17");
        assert_eq!(
            CheckpointId::from_dir_name("chk-17"),
            Some(CheckpointId(17))
        );
        for bad in [
            "chk-",
            "chk-007",
            "chk--1",
            "chk-1a",
            "chk-+1",
            "shared",
            "chk-99999999999999999999",
        ] {
            assert_eq!(CheckpointId::from_dir_name(bad), None, "{bad}");
        }
        assert_eq!(CheckpointId::from_dir_name("chk-0"), Some(CheckpointId(0)));
    }

    #[test]
    fn job_id_accepts_flink_shape_and_rejects_path_tricks() {
        let r = JobId::random();
        assert_eq!(r.as_str().len(), 32);
        assert!(r.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(JobId::random(), r);
        assert!(JobId::new("my-job_1").is_ok());
        assert!(JobId::new("a".repeat(64)).is_ok());
        for bad in ["", "..", "a/b", "a b", "é", "a\\b"] {
            assert!(JobId::new(bad).is_err(), "{bad:?}");
        }
        assert!(JobId::new("a".repeat(65)).is_err());
    }

    #[test]
    fn key_group_range_is_inclusive_and_validated() {
        let r = KeyGroupRange::new(0, 127).unwrap();
        assert_eq!(r.len(), 128);
        assert!(r.contains(127) && !r.contains(128));
        assert_eq!(KeyGroupRange::new(5, 5).unwrap().len(), 1);
        assert!(KeyGroupRange::new(6, 5).is_err());
        assert_eq!((r.start(), r.end()), (0, 127));
        assert_eq!(r.iter().count(), 128);
    }

    #[test]
    fn key_group_ranges_meet_contain_and_intersect() {
        let r = |a, b| KeyGroupRange::new(a, b).unwrap();
        assert!(r(0, 42).overlaps(&r(42, 85)));
        assert!(!r(0, 42).overlaps(&r(43, 85)));
        assert!(r(0, 63).contains_range(&r(0, 42)));
        assert!(!r(0, 63).contains_range(&r(43, 85)));
        assert_eq!(r(0, 63).intersection(&r(43, 85)), Some(r(43, 63)));
        assert_eq!(r(0, 42).intersection(&r(43, 85)), None);
        assert_eq!(r(3, 5).into_iter().collect::<Vec<_>>(), vec![3, 4, 5]);
    }

    #[test]
    fn kind_bytes_round_trip() {
        for k in [
            CheckpointKind::Incremental,
            CheckpointKind::Full,
            CheckpointKind::Savepoint,
            CheckpointKind::CanonicalSavepoint,
        ] {
            assert_eq!(CheckpointKind::from_byte(k.to_byte()), Some(k));
            assert_eq!(k.is_savepoint(), k.savepoint_format().is_some());
        }
        assert_eq!(CheckpointKind::from_byte(4), None);
        for f in [SavepointFormat::Native, SavepointFormat::Canonical] {
            assert_eq!(f.kind().savepoint_format(), Some(f));
            assert_eq!(f.as_str().parse::<SavepointFormat>().unwrap(), f);
        }
        assert!("rocksdb".parse::<SavepointFormat>().is_err());
    }
}
