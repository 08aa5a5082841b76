//! End-to-end verification of a checkpoint: every file its `_metadata` references is
//! re-read and its size and crc32c compared with what the metadata recorded.

use std::collections::BTreeMap;

use super::metadata::{FileHandle, Metadata};
use super::path::handle_path_problem;
use super::storage::CheckpointStorage;
use crate::error::{Error, Result};

/// The outcome of [`verify`]: one line per problem, each naming the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Distinct files read end to end.
    pub files_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Problems found, one per line, each naming a path.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(self)` when clean, else [`Error::VerifyFailed`] listing the problems.
    pub fn into_result(self) -> Result<Self> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(Error::VerifyFailed {
                problems: self.problems,
            })
        }
    }
}

/// Recomputes the size and crc32c of every file `metadata` references (each distinct path
/// once) and reports each missing file, wrong size, wrong crc, unsafe path, and two
/// handles that disagree about one file.
pub fn verify(storage: &dyn CheckpointStorage, metadata: &Metadata) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut files: BTreeMap<&str, &FileHandle> = BTreeMap::new();
    for f in metadata.file_handles() {
        match files.get(f.path.as_str()) {
            None => {
                files.insert(&f.path, f);
            }
            Some(first) if first.size != f.size || first.crc32c != f.crc32c => {
                report.problems.push(format!(
                    "conflicting handles: {}: recorded as {} bytes crc32c {:#010x} and as {} bytes crc32c {:#010x}",
                    storage.display_path(&f.path).display(),
                    first.size,
                    first.crc32c,
                    f.size,
                    f.crc32c
                ));
            }
            Some(_) => {}
        }
    }
    for (path, f) in files {
        let shown = storage.display_path(path);
        if let Some(reason) = handle_path_problem(path, f.role, metadata.checkpoint_id) {
            report
                .problems
                .push(format!("unsafe path: {path:?}: {reason}"));
            continue;
        }
        match storage.checksum(path) {
            Ok(sum) => {
                report.files_checked += 1;
                report.bytes_checked = report.bytes_checked.saturating_add(sum.size);
                if sum.size != f.size {
                    report.problems.push(format!(
                        "wrong size: {}: expected {} bytes, found {}",
                        shown.display(),
                        f.size,
                        sum.size
                    ));
                } else if sum.crc32c != f.crc32c {
                    report.problems.push(format!(
                        "wrong crc32c: {}: expected {:#010x}, found {:#010x}",
                        shown.display(),
                        f.crc32c,
                        sum.crc32c
                    ));
                }
            }
            Err(Error::NotFound { .. }) => {
                report
                    .problems
                    .push(format!("missing: {}", shown.display()));
            }
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                report
                    .problems
                    .push(format!("missing: {}", shown.display()));
            }
            Err(Error::UnsafePath { reason, .. }) => {
                report
                    .problems
                    .push(format!("unsafe path: {}: {reason}", shown.display()));
            }
            Err(e) => {
                report
                    .problems
                    .push(format!("unreadable: {}: {e}", shown.display()));
            }
        }
    }
    report
}
