//! Recognizes what a path holds from the bytes themselves: an SST by the magic in its
//! footer, a WAL or manifest by the kind byte of its log header record, a `_metadata` by
//! its magic, `CURRENT` by its text; a directory by the files in it. The file name is only
//! a hint, used when the bytes say nothing (an empty log, a damaged file), so that the
//! error then comes from the reader of the format the name promises.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use super::CliError;
use crate::checkpoint::metadata::{
    FLINK_METADATA_MAGIC, MAGIC as METADATA_MAGIC, METADATA_FILE_NAME,
};
use crate::checkpoint::CheckpointId;
use crate::checkpoint::SHARED_DIR;
use crate::error::{Error, IoContext};
use crate::fs::{FileSystem, StdFs};
use crate::lsm::filename::{self, FileKind};
use crate::lsm::sst::footer::{FOOTER_LEN, MAGIC_OFFSET as FOOTER_MAGIC_OFFSET, TABLE_MAGIC};
use crate::lsm::wal::{LogKind, HEADER_RECORD_LEN, HEADER_SIZE, LOG_MAGIC};
use crate::state::lsm_snapshot::MANIFEST_SUFFIX;
use crate::state::savepoint::CANONICAL_MAGIC;

/// Offset of the kind byte in a log file: fragment header, magic, version u32.
const LOG_KIND_OFFSET: usize = HEADER_SIZE + LOG_MAGIC.len() + 4;
const _: () = assert!(LOG_KIND_OFFSET < HEADER_RECORD_LEN);

/// What a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A sorted table (`<n>.sst`).
    Sst,
    /// A write-ahead log segment (`<n>.wal`).
    Wal,
    /// A manifest (`MANIFEST-<n>`).
    Manifest,
    /// `CURRENT`.
    Current,
    /// A checkpoint's `_metadata`.
    Metadata,
    /// An LSM store's manifest snapshot, private to a checkpoint (`chk-N/<owner>.manifest`:
    /// one version edit, checked by the size and crc32c `_metadata` records).
    ManifestSnapshot,
    /// A canonical savepoint file (`<operator>_<index>.canonical` of a savepoint,
    /// `format-spec/savepoint.md`).
    CanonicalSavepoint,
    /// A store's working directory (holds `CURRENT`).
    StoreDir,
    /// One checkpoint directory (`chk-N`, holds `_metadata`).
    CheckpointDir,
    /// A checkpoint job directory (`shared/`, `chk-N/`...).
    JobDir,
}

impl Kind {
    /// A name for people.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Sst => "SST",
            Kind::Wal => "WAL",
            Kind::Manifest => "manifest",
            Kind::Current => "CURRENT",
            Kind::Metadata => "checkpoint _metadata",
            Kind::ManifestSnapshot => "LSM manifest snapshot of a checkpoint",
            Kind::CanonicalSavepoint => "canonical savepoint file",
            Kind::StoreDir => "store directory",
            Kind::CheckpointDir => "checkpoint directory",
            Kind::JobDir => "checkpoint job directory",
        }
    }
}

/// True when `name` is a checkpoint directory name (`chk-<N>`).
pub fn is_chk_name(name: &str) -> bool {
    CheckpointId::from_dir_name(name).is_some()
}

/// Recognizes what `path` holds.
pub fn detect(path: &Path) -> Result<Kind, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CliError::at(
                path,
                Error::NotFound {
                    path: path.to_path_buf(),
                },
            )
        } else {
            CliError::at(path, Error::io("stat", path, e))
        }
    })?;
    let kind = if meta.is_dir() {
        detect_dir(path)
    } else {
        detect_file(path, meta.len())
    }?;
    tracing::debug!(path = %path.display(), kind = kind.describe(), "recognized");
    Ok(kind)
}

fn detect_dir(path: &Path) -> Result<Kind, CliError> {
    let names = StdFs.list_dir(path).map_err(|e| CliError::at(path, e))?;
    let has = |n: &str| names.iter().any(|x| x == n);
    if has(filename::CURRENT) {
        return Ok(Kind::StoreDir);
    }
    if has(METADATA_FILE_NAME) {
        return Ok(Kind::CheckpointDir);
    }
    let dir_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if is_chk_name(dir_name) {
        return Err(CliError::Message(format!(
            "{}: incomplete checkpoint: no {METADATA_FILE_NAME} (a checkpoint exists only once \
             its {METADATA_FILE_NAME} is written)",
            path.display()
        )));
    }
    if has(SHARED_DIR) || names.iter().any(|n| is_chk_name(n)) {
        return Ok(Kind::JobDir);
    }
    // A checkpoints directory holds job directories: say which, rather than just "no".
    let jobs: Vec<&String> = names
        .iter()
        .filter(|n| {
            let sub = path.join(n);
            sub.join(SHARED_DIR).is_dir()
                || StdFs
                    .list_dir(&sub)
                    .is_ok_and(|inner| inner.iter().any(|x| is_chk_name(x)))
        })
        .take(5)
        .collect();
    if !jobs.is_empty() {
        let list: Vec<&str> = jobs.iter().map(|s| s.as_str()).collect();
        return Err(CliError::Message(format!(
            "{}: a checkpoints directory; give one of its job directories: {}",
            path.display(),
            list.join(", ")
        )));
    }
    Err(CliError::Message(format!(
        "{}: neither a store directory (no CURRENT) nor a checkpoint directory (no \
         {METADATA_FILE_NAME}, chk-N or {SHARED_DIR}/)",
        path.display()
    )))
}

fn detect_file(path: &Path, len: u64) -> Result<Kind, CliError> {
    let mut f = StdFs.open(path).map_err(|e| CliError::at(path, e))?;
    let mut head = vec![0u8; HEADER_RECORD_LEN.min(len as usize)];
    f.read_exact(&mut head)
        .ctx("read", path)
        .map_err(|e| CliError::at(path, e))?;
    if len >= FOOTER_LEN as u64 {
        let mut tail = [0u8; FOOTER_LEN];
        f.seek(SeekFrom::End(-(FOOTER_LEN as i64)))
            .and_then(|_| f.read_exact(&mut tail))
            .ctx("read", path)
            .map_err(|e| CliError::at(path, e))?;
        let magic = tail.get(FOOTER_MAGIC_OFFSET..FOOTER_MAGIC_OFFSET + 8);
        if magic == Some(&TABLE_MAGIC.to_le_bytes()[..]) {
            return Ok(Kind::Sst);
        }
    }
    if head.get(HEADER_SIZE..HEADER_SIZE + LOG_MAGIC.len()) == Some(&LOG_MAGIC[..]) {
        return match head
            .get(LOG_KIND_OFFSET)
            .copied()
            .and_then(LogKind::from_u8)
        {
            Some(LogKind::Wal) => Ok(Kind::Wal),
            Some(LogKind::Manifest) => Ok(Kind::Manifest),
            None => Err(CliError::at(
                path,
                Error::corruption(
                    path,
                    LOG_KIND_OFFSET as u64,
                    "a tidemark log of an unknown kind (neither WAL nor manifest)",
                ),
            )),
        };
    }
    if head.starts_with(&CANONICAL_MAGIC) {
        return Ok(Kind::CanonicalSavepoint);
    }
    if head.starts_with(&METADATA_MAGIC) || head.starts_with(&FLINK_METADATA_MAGIC) {
        // A Flink `_metadata` goes to the `_metadata` reader, which names it as Flink's.
        return Ok(Kind::Metadata);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if head.starts_with(b"MANIFEST-") {
        return Ok(Kind::Current);
    }
    // The bytes said nothing: fall back on the name, so the format's own reader explains
    // what is wrong with the file.
    match filename::parse_file_name(name) {
        Some(FileKind::Table(_)) => return Ok(Kind::Sst),
        Some(FileKind::Wal(_)) => return Ok(Kind::Wal),
        Some(FileKind::Manifest(_)) => return Ok(Kind::Manifest),
        Some(FileKind::Current) => return Ok(Kind::Current),
        _ => {}
    }
    if name == METADATA_FILE_NAME {
        return Ok(Kind::Metadata);
    }
    let in_checkpoint = path
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(is_chk_name);
    if in_checkpoint && name.ends_with(MANIFEST_SUFFIX) {
        return Ok(Kind::ManifestSnapshot);
    }
    Err(CliError::Message(format!(
        "{}: not a tidemark file: no SST footer magic, no log header record, no \
         {METADATA_FILE_NAME} magic ({len} bytes)",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_not_recognized_and_the_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("noise.bin");
        let bytes: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&p, bytes).unwrap();
        let e = detect(&p).unwrap_err().to_string();
        assert!(
            e.contains("noise.bin") && e.contains("not a tidemark file"),
            "{e}"
        );
    }

    #[test]
    fn names_are_hints_when_bytes_say_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("000007.wal", Kind::Wal),
            ("000007.sst", Kind::Sst),
            ("MANIFEST-000002", Kind::Manifest),
            ("_metadata", Kind::Metadata),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, b"").unwrap();
            assert_eq!(detect(&p).unwrap(), kind, "{name}");
        }
    }

    #[test]
    fn directories_are_told_apart_by_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = detect(dir.path()).unwrap_err().to_string();
        assert!(e.contains("neither a store directory"), "{e}");
        let job = dir.path().join("job");
        std::fs::create_dir_all(job.join("chk-3")).unwrap();
        assert_eq!(detect(&job).unwrap(), Kind::JobDir);
        let e = detect(&job.join("chk-3")).unwrap_err().to_string();
        assert!(e.contains("incomplete checkpoint"), "{e}");
        std::fs::write(job.join("chk-3/_metadata"), b"x").unwrap();
        assert_eq!(detect(&job.join("chk-3")).unwrap(), Kind::CheckpointDir);
        let missing = dir.path().join("nope");
        assert!(detect(&missing).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn chk_names() {
        assert!(is_chk_name("chk-12"));
        assert!(!is_chk_name("chk-"));
        assert!(!is_chk_name("chk-1a"));
    }
}
