//! End-to-end verification of a checkpoint: every file its `_metadata` references is
//! re-read and its size and crc32c compared with what the metadata recorded.

use std::collections::BTreeMap;

use super::ids::CheckpointId;
use super::metadata::{FileHandle, Metadata};
use super::path::handle_path_problem;
use super::storage::{CheckpointStorage, FileChecksum};
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
    verify_files(storage, metadata.checkpoint_id, metadata.file_handles())
}

/// [`verify`] of the files `handles` of checkpoint `id` (each distinct path once).
pub fn verify_files<'a>(
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    handles: impl Iterator<Item = &'a FileHandle>,
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut files: BTreeMap<&str, &FileHandle> = BTreeMap::new();
    for f in handles {
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
        if let Some(reason) = handle_path_problem(path, f.role, id) {
            report
                .problems
                .push(format!("unsafe path: {path:?}: {reason}"));
            continue;
        }
        // The size first, from the opened file: a file of the wrong size is reported
        // without being read (a huge or sparse file costs nothing), and the read that
        // follows stops one byte past the recorded size whatever happens meanwhile.
        let result = storage.file_size(path).and_then(|size| {
            if size != f.size {
                Ok(FileChecksum { size, crc32c: 0 })
            } else {
                storage.checksum(path, f.size)
            }
        });
        match result {
            Ok(sum) => {
                report.files_checked += 1;
                if sum.size != f.size {
                    report.problems.push(format!(
                        "wrong size: {}: expected {} bytes, found {}",
                        shown.display(),
                        f.size,
                        sum.size
                    ));
                } else {
                    report.bytes_checked = report.bytes_checked.saturating_add(sum.size);
                    if sum.crc32c != f.crc32c {
                        report.problems.push(format!(
                            "wrong crc32c: {}: expected {:#010x}, found {:#010x}",
                            shown.display(),
                            f.crc32c,
                            sum.crc32c
                        ));
                    }
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
            Err(Error::NotRegularFile { kind, .. }) => {
                report
                    .problems
                    .push(format!("not a regular file: {} is {kind}", shown.display()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ids::CheckpointKind::Incremental;
    use crate::checkpoint::metadata::FileRole;
    use crate::checkpoint::testutil::{abs, file_state, Fixture};

    const A: (&str, &[u8]) = ("000001.sst", b"aaaaaaaaaa");
    const B: (&str, &[u8]) = ("000002.sst", b"bbbbbbbbbbbbbbbbbbbb");
    const C: (&str, &[u8]) = ("000003.sst", b"ccccc");

    #[test]
    fn verify_catches_missing_file_wrong_size_and_wrong_crc() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let c = fx.checkpoint(&store, 1, Incremental, &[A, B, C]);
        let m = &c.metadata;
        let clean = verify(store.storage().as_ref(), m);
        assert!(clean.is_ok(), "{:?}", clean.problems);
        assert_eq!(clean.files_checked, 4);
        let find = |n: &str| m.file_handles().find(|f| f.local_name == n).unwrap();
        std::fs::remove_file(abs(&fx, find(A.0))).unwrap();
        std::fs::write(abs(&fx, find(B.0)), b"short").unwrap();
        let mut flipped = C.1.to_vec();
        flipped[0] ^= 1;
        std::fs::write(abs(&fx, find(C.0)), flipped).unwrap();
        let r = verify(store.storage().as_ref(), m);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        let all = r.problems.join("\n");
        assert!(
            all.contains("missing: ") && all.contains(&find(A.0).path),
            "{all}"
        );
        assert!(
            all.contains("wrong size: ") && all.contains(&find(B.0).path),
            "{all}"
        );
        assert!(
            all.contains("wrong crc32c: ") && all.contains(&find(C.0).path),
            "{all}"
        );
        assert!(matches!(r.into_result(), Err(Error::VerifyFailed { .. })));
    }

    #[test]
    fn verify_reports_unsafe_paths_without_reading_them() {
        let fx = Fixture::new();
        let store = fx.retaining(1);
        let mut m = fx.checkpoint(&store, 1, Incremental, &[A]).metadata;
        m.operator_states[0]
            .operator_state
            .push(file_state(FileHandle {
                role: FileRole::Shared,
                local_name: "x".into(),
                path: "../../etc/passwd".into(),
                size: 1,
                crc32c: 1,
            }));
        let r = verify(store.storage().as_ref(), &m);
        assert_eq!(r.problems.len(), 1);
        assert!(
            r.problems[0].starts_with("unsafe path: "),
            "{:?}",
            r.problems
        );
    }
}
