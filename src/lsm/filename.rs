//! Names of the files in a store directory, and their parsing.

use std::path::{Path, PathBuf};

use super::types::FileNumber;

/// Name of the lock file held while a store is open.
pub const LOCK: &str = "LOCK";
/// Name of the file that names the live manifest.
pub const CURRENT: &str = "CURRENT";

/// The kinds of file a store directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `<n>.wal`
    Wal(FileNumber),
    /// `<n>.sst`
    Table(FileNumber),
    /// `MANIFEST-<n>`
    Manifest(FileNumber),
    /// `CURRENT`
    Current,
    /// `LOCK`
    Lock,
    /// `*.tmp`: an unfinished atomic write
    Temp,
}

/// `<dir>/<n>.wal`
pub fn wal_path(dir: &Path, n: FileNumber) -> PathBuf {
    dir.join(format!("{n}.wal"))
}

/// `<dir>/<n>.sst`
pub fn table_path(dir: &Path, n: FileNumber) -> PathBuf {
    dir.join(format!("{n}.sst"))
}

/// The file name of table `n` (`000042.sst`).
pub fn table_file_name(n: FileNumber) -> String {
    format!("{n}.sst")
}

/// `<dir>/MANIFEST-<n>`
pub fn manifest_path(dir: &Path, n: FileNumber) -> PathBuf {
    dir.join(manifest_file_name(n))
}

/// The file name of manifest `n` (`MANIFEST-000042`).
pub fn manifest_file_name(n: FileNumber) -> String {
    format!("MANIFEST-{n}")
}

/// Classifies a file name found in a store directory.
pub fn parse_file_name(name: &str) -> Option<FileKind> {
    if name == CURRENT {
        return Some(FileKind::Current);
    }
    if name == LOCK {
        return Some(FileKind::Lock);
    }
    if name.ends_with(".tmp") {
        return Some(FileKind::Temp);
    }
    if let Some(n) = name.strip_prefix("MANIFEST-") {
        return parse_number(n).map(FileKind::Manifest);
    }
    if let Some(n) = name.strip_suffix(".wal") {
        return parse_number(n).map(FileKind::Wal);
    }
    if let Some(n) = name.strip_suffix(".sst") {
        return parse_number(n).map(FileKind::Table);
    }
    None
}

fn parse_number(s: &str) -> Option<FileNumber> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().map(FileNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let d = Path::new("/db");
        let n = FileNumber(42);
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name(wal_path(d, n)), "000042.wal");
        assert_eq!(
            parse_file_name(&name(wal_path(d, n))),
            Some(FileKind::Wal(n))
        );
        assert_eq!(
            parse_file_name(&name(table_path(d, n))),
            Some(FileKind::Table(n))
        );
        assert_eq!(
            parse_file_name(&name(manifest_path(d, n))),
            Some(FileKind::Manifest(n))
        );
        assert_eq!(parse_file_name("CURRENT"), Some(FileKind::Current));
        assert_eq!(parse_file_name("x.sst"), None);
        assert_eq!(parse_file_name("-1.sst"), None);
        assert_eq!(parse_file_name("CURRENT.tmp"), Some(FileKind::Temp));
    }
}
