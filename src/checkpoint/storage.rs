//! Where checkpoint files are kept: the [`CheckpointStorage`] trait and [`LocalStorage`],
//! its implementation on a local (or mounted) file system.
//!
//! Every path given to a storage is relative to the job directory and is checked before it
//! is used: lexically (no absolute paths, `..`, `.`, backslashes or NULs) and, for a local
//! storage, physically (a symlink may not lead out of the job directory). A storage knows
//! files and directories only; which files belong to which checkpoint is the store's
//! business.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ids::JobId;
use super::path::{check_inside, lexical_problem};
use crate::codec;
use crate::error::{Error, IoContext, Result};
use crate::fs::{self, DirEntryInfo, EntryKind, FileLock, FileSystem, Placement};

/// The lock file of a job directory, held by the [`super::CheckpointStore`] that owns it.
pub const JOB_LOCK_FILE: &str = "LOCK";

/// Size and crc32c of a whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileChecksum {
    /// Size in bytes.
    pub size: u64,
    /// crc32c of all the bytes.
    pub crc32c: u32,
}

/// Size of the buffer used to checksum files.
const CHECKSUM_BUFFER_BYTES: usize = 1 << 20;

/// Reads `path` through `fs` and returns its size and crc32c (for callers that place a
/// local file and must describe it).
pub fn file_checksum(fs: &dyn FileSystem, path: &Path) -> Result<FileChecksum> {
    let mut f = fs.open(path)?;
    checksum_open_file(&mut f, path, u64::MAX)
}

/// Size and crc32c of the open regular file `f` (opened from `path`), refusing one larger
/// than `max_bytes` before reading it (by its reported size), and reading at most
/// `max_bytes + 1` bytes whatever the size said.
pub fn checksum_open_file(f: &mut File, path: &Path, max_bytes: u64) -> Result<FileChecksum> {
    let reported = f.metadata().ctx("stat", path)?.len();
    if reported > max_bytes {
        return Err(Error::corruption(
            path,
            0,
            format!("file is {reported} bytes, larger than the limit of {max_bytes}"),
        ));
    }
    let mut f = f.take(max_bytes.saturating_add(1));
    let mut buf = vec![0u8; CHECKSUM_BUFFER_BYTES];
    let mut crc = 0u32;
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        crc = codec::crc32c_extend(crc, chunk);
        size = size.saturating_add(n as u64);
    }
    if size > max_bytes {
        return Err(Error::corruption(
            path,
            max_bytes,
            format!("file holds more than the limit of {max_bytes} bytes"),
        ));
    }
    Ok(FileChecksum { size, crc32c: crc })
}

/// Where [`CheckpointStorage::create_staged`] writes `rel` until it is persisted.
pub fn staging_rel(rel: &str) -> String {
    format!("{rel}.tmp")
}

/// A file being written into a [`CheckpointStorage`] in pieces (see
/// [`CheckpointStorage::create_staged`]).
pub trait StagedFile: Send + fmt::Debug {
    /// Appends `data`.
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Makes the bytes durable and moves the file to its path (its directory still has to
    /// be synced).
    fn persist(self: Box<Self>) -> Result<()>;
}

impl StagedFile for fs::StagedWrite {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        fs::StagedWrite::append(self, data)
    }

    fn persist(self: Box<Self>) -> Result<()> {
        fs::StagedWrite::persist(*self)
    }
}

/// The file operations the checkpoint layer needs, relative to one job directory.
///
/// Object safe, so that a remote implementation can stand in for [`LocalStorage`]. An
/// empty relative path (`""`) names the job directory itself where a directory is meant.
pub trait CheckpointStorage: Send + Sync + fmt::Debug {
    /// The job this storage belongs to.
    fn job_id(&self) -> &JobId;
    /// The job directory (for a remote storage, a URL-like path), for messages and for
    /// external paths.
    fn root(&self) -> PathBuf;
    /// `root()` joined with `rel`, for messages.
    fn display_path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root()
        } else {
            self.root().join(rel)
        }
    }
    /// Creates a directory (and the job directory and any parents).
    fn create_dir_all(&self, rel: &str) -> Result<()>;
    /// Takes the exclusive owner lock of the job directory (creating it if needed), held
    /// until the returned lock is dropped; a second owner gets [`Error::JobLocked`]
    /// naming the lock file. `Ok(None)` for a storage that has no locks.
    fn lock_owner(&self) -> Result<Option<FileLock>>;
    /// Places the local file `local` at `rel` by hard link, or by a synced copy when a
    /// link is impossible. On return the file's bytes are durable; its directory entry is
    /// durable once [`CheckpointStorage::sync_dir`] of its directory returns.
    fn place_file(&self, local: &Path, rel: &str) -> Result<Placement>;
    /// Writes a small file so that it is either absent or whole after a crash (temp file,
    /// fsync, rename, directory fsync).
    fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<()>;
    /// Starts writing the file `rel` in pieces. The bytes go to [`staging_rel`]`(rel)`
    /// until [`StagedFile::persist`] makes them durable and moves them to `rel`, whose
    /// directory entry is durable once [`CheckpointStorage::sync_dir`] of its directory
    /// returns. Dropped unpersisted, the staged file is removed.
    fn create_staged(&self, rel: &str) -> Result<Box<dyn StagedFile>>;
    /// Reads a whole regular file, refusing one larger than `max_bytes` (by its reported
    /// size or by the bytes read) and, for a local storage, one whose canonical path leaves
    /// the job directory.
    fn read_file(&self, rel: &str, max_bytes: u64) -> Result<Vec<u8>>;
    /// Names of a directory's entries, sorted; [`Error::NotFound`] when it is missing.
    fn list_dir(&self, rel: &str) -> Result<Vec<String>>;
    /// A directory's entries with what each is (links not followed), sorted, names that
    /// are not UTF-8 included; [`Error::NotFound`] when it is missing.
    fn list_entries(&self, rel: &str) -> Result<Vec<DirEntryInfo>>;
    /// What the entry `rel` is itself (a link is not followed); `None` when it is missing.
    fn entry_kind(&self, rel: &str) -> Result<Option<EntryKind>>;
    /// True when a file or directory exists at `rel`.
    fn exists(&self, rel: &str) -> Result<bool>;
    /// Size of a regular file in bytes (read from the opened file, checked as `read_file`
    /// checks it; nothing is read).
    fn file_size(&self, rel: &str) -> Result<u64>;
    /// Size and crc32c of a regular file, read end to end; a file larger than `max_bytes`
    /// is refused before it is read (and no more than `max_bytes + 1` bytes are read).
    fn checksum(&self, rel: &str, max_bytes: u64) -> Result<FileChecksum>;
    /// Deletes a file; a file that is already gone is not an error.
    fn delete_file(&self, rel: &str) -> Result<()>;
    /// Deletes a directory and everything in it; one already gone is not an error.
    fn delete_dir(&self, rel: &str) -> Result<()>;
    /// Makes creations, links, renames and deletions in a directory durable.
    fn sync_dir(&self, rel: &str) -> Result<()>;
    /// Places the stored file `rel` at the local path `dst` (link, or copy), for restore.
    fn fetch(&self, rel: &str, dst: &Path) -> Result<Placement>;
    /// A local path through which `rel` can be read in place, when the storage is local;
    /// `Ok(None)` for a remote storage (use [`CheckpointStorage::fetch`]).
    fn open_local(&self, rel: &str) -> Result<Option<PathBuf>>;
    /// The regular file `rel` opened for reading in place (its canonical path checked
    /// inside the job directory), when the storage is local; `Ok(None)` for a remote
    /// storage.
    fn open_read(&self, rel: &str) -> Result<Option<File>>;
}

/// A [`CheckpointStorage`] on a [`FileSystem`]: the job directory is
/// `<checkpoints_dir>/<job_id>`. Every operation goes through the file-system trait, so
/// fault injection sees them all.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    fs: Arc<dyn FileSystem>,
    job_dir: PathBuf,
    job_id: JobId,
}

impl LocalStorage {
    /// The storage of `job_id` under `checkpoints_dir`. Does no I/O.
    pub fn new(fs: Arc<dyn FileSystem>, checkpoints_dir: impl AsRef<Path>, job_id: JobId) -> Self {
        let job_dir = checkpoints_dir.as_ref().join(job_id.as_str());
        LocalStorage {
            fs,
            job_dir,
            job_id,
        }
    }

    /// A storage on an existing job directory whose name need not be the job id (a moved
    /// or renamed checkpoint directory). Does no I/O.
    pub fn at_job_dir(fs: Arc<dyn FileSystem>, job_dir: impl Into<PathBuf>, job_id: JobId) -> Self {
        LocalStorage {
            fs,
            job_dir: job_dir.into(),
            job_id,
        }
    }

    /// The job directory.
    pub fn job_dir(&self) -> &Path {
        &self.job_dir
    }

    /// The file system underneath.
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    /// Lexical check only: `rel` joined to the job directory (`""` is the job directory).
    fn join(&self, rel: &str) -> Result<PathBuf> {
        if rel.is_empty() {
            return Ok(self.job_dir.clone());
        }
        if let Some(reason) = lexical_problem(rel) {
            return Err(Error::UnsafePath {
                path: self.job_dir.clone(),
                entry: rel.to_string(),
                reason,
            });
        }
        Ok(self.job_dir.join(rel))
    }

    /// Lexical and physical check: `rel` (or, when it does not exist yet, its nearest
    /// existing ancestor) resolves inside the job directory.
    fn guard(&self, rel: &str) -> Result<PathBuf> {
        let p = self.join(rel)?;
        if !rel.is_empty() {
            check_inside(&self.job_dir, &p, rel)?;
        }
        Ok(p)
    }

    /// Opens the regular file `rel` for reading: the lexical and physical checks of
    /// `guard` before the open, and the canonical path of the file actually opened checked
    /// inside the job directory after it. Returns the path, the file and its canonical path.
    fn open_checked(&self, rel: &str) -> Result<(PathBuf, File, PathBuf)> {
        let p = self.guard(rel)?;
        let (f, canonical) = fs::open_inside(self.fs.as_ref(), &self.job_dir, &p, rel)?;
        Ok((p, f, canonical))
    }

    /// The parent directory of `rel` must resolve inside the job directory; `rel` itself
    /// may be a symlink (deleting one removes the link, not its target).
    fn guard_parent(&self, rel: &str) -> Result<PathBuf> {
        let p = self.join(rel)?;
        if let Some(parent) = p.parent() {
            if parent != self.job_dir && p != self.job_dir {
                check_inside(&self.job_dir, parent, rel)?;
            }
        }
        Ok(p)
    }
}

/// Maps the "already gone" outcome of a deletion to success.
fn ignore_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::NotFound { .. }) => Ok(()),
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => Ok(()),
        other => other,
    }
}

impl CheckpointStorage for LocalStorage {
    fn job_id(&self) -> &JobId {
        &self.job_id
    }

    fn root(&self) -> PathBuf {
        self.job_dir.clone()
    }

    fn create_dir_all(&self, rel: &str) -> Result<()> {
        self.fs.create_dir_all(&self.job_dir)?;
        let p = self.guard(rel)?;
        self.fs.create_dir_all(&p)
    }

    fn lock_owner(&self) -> Result<Option<FileLock>> {
        self.fs.create_dir_all(&self.job_dir)?;
        let p = self.join(JOB_LOCK_FILE)?;
        match self.fs.lock(&p) {
            Ok(l) => Ok(Some(l)),
            Err(Error::Locked { path }) => Err(Error::JobLocked { path }),
            Err(e) => Err(e),
        }
    }

    fn place_file(&self, local: &Path, rel: &str) -> Result<Placement> {
        let dst = self.guard(rel)?;
        let placement = fs::link_or_copy(self.fs.as_ref(), local, &dst)?;
        if placement == Placement::Linked {
            // A copy was synced by `link_or_copy`; a link shares the source's inode, whose
            // data the source's writer may not have synced yet.
            let f = self.fs.open(&dst)?;
            f.sync_all().ctx("fsync", &dst)?;
        }
        Ok(placement)
    }

    fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let p = self.guard(rel)?;
        fs::write_atomic(self.fs.as_ref(), &p, bytes)
    }

    fn create_staged(&self, rel: &str) -> Result<Box<dyn StagedFile>> {
        let p = self.guard(rel)?;
        Ok(Box::new(fs::StagedWrite::create(Arc::clone(&self.fs), &p)?))
    }

    fn read_file(&self, rel: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let (p, mut f, _) = self.open_checked(rel)?;
        fs::read_capped(&mut f, &p, max_bytes)
    }

    fn list_dir(&self, rel: &str) -> Result<Vec<String>> {
        let p = self.guard(rel)?;
        self.fs.list_dir(&p)
    }

    fn list_entries(&self, rel: &str) -> Result<Vec<DirEntryInfo>> {
        let p = self.guard(rel)?;
        self.fs.list_entries(&p)
    }

    fn entry_kind(&self, rel: &str) -> Result<Option<EntryKind>> {
        let p = self.guard_parent(rel)?;
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat", &p, e)),
        };
        let ft = m.file_type();
        Ok(Some(if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink {
                dangling: std::fs::metadata(&p).is_err(),
            }
        } else {
            EntryKind::Other(fs::file_type_name(&ft))
        }))
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        let p = self.guard_parent(rel)?;
        Ok(self.fs.exists(&p))
    }

    fn file_size(&self, rel: &str) -> Result<u64> {
        let (p, f, _) = self.open_checked(rel)?;
        Ok(f.metadata().ctx("stat", &p)?.len())
    }

    fn checksum(&self, rel: &str, max_bytes: u64) -> Result<FileChecksum> {
        let (p, mut f, _) = self.open_checked(rel)?;
        checksum_open_file(&mut f, &p, max_bytes)
    }

    fn delete_file(&self, rel: &str) -> Result<()> {
        let p = self.guard_parent(rel)?;
        ignore_missing(self.fs.remove_file(&p))
    }

    fn delete_dir(&self, rel: &str) -> Result<()> {
        if rel.is_empty() {
            return Err(Error::InvalidArgument(
                "refusing to delete the job directory through a relative path".into(),
            ));
        }
        let p = self.guard_parent(rel)?;
        ignore_missing(self.fs.remove_dir_all(&p))
    }

    fn sync_dir(&self, rel: &str) -> Result<()> {
        let p = self.guard(rel)?;
        self.fs.sync_dir(&p)
    }

    fn fetch(&self, rel: &str, dst: &Path) -> Result<Placement> {
        // The real file (every symlink resolved, checked inside the job directory) is
        // placed, never a link: a relative link placed elsewhere would name other bytes.
        let (_, f, real) = self.open_checked(rel)?;
        let opened = f.metadata().ctx("stat", &real)?;
        let placement = fs::link_or_copy(self.fs.as_ref(), &real, dst)?;
        let placed = std::fs::symlink_metadata(dst).ctx("stat", dst)?;
        let same = placed.is_file()
            && match placement {
                Placement::Linked => (placed.dev(), placed.ino()) == (opened.dev(), opened.ino()),
                Placement::Copied => placed.len() == opened.len(),
            };
        if !same {
            let _ = self.fs.remove_file(dst);
            return Err(Error::io(
                "place",
                dst,
                std::io::Error::other(format!(
                    "{} changed while it was being placed",
                    real.display()
                )),
            ));
        }
        Ok(placement)
    }

    fn open_local(&self, rel: &str) -> Result<Option<PathBuf>> {
        let (p, _, _) = self.open_checked(rel)?;
        Ok(Some(p))
    }

    fn open_read(&self, rel: &str) -> Result<Option<File>> {
        let (_, f, _) = self.open_checked(rel)?;
        Ok(Some(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    fn storage(dir: &Path) -> LocalStorage {
        LocalStorage::new(StdFs::shared(), dir, JobId::new("job").unwrap())
    }

    #[test]
    fn place_read_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        s.create_dir_all("shared").unwrap();
        let local = dir.path().join("000001.sst");
        std::fs::write(&local, b"hello").unwrap();
        assert_eq!(
            s.place_file(&local, "shared/a.sst").unwrap(),
            Placement::Linked
        );
        s.sync_dir("shared").unwrap();
        assert_eq!(s.list_dir("shared").unwrap(), vec!["a.sst".to_string()]);
        assert_eq!(s.file_size("shared/a.sst").unwrap(), 5);
        assert_eq!(
            s.checksum("shared/a.sst", 5).unwrap(),
            FileChecksum {
                size: 5,
                crc32c: codec::crc32c(b"hello")
            }
        );
        assert_eq!(s.read_file("shared/a.sst", 5).unwrap(), b"hello");
        assert!(s.read_file("shared/a.sst", 4).is_err());
        s.write_atomic("shared/b", b"x").unwrap();
        assert!(s.exists("shared/b").unwrap());
        s.delete_file("shared/b").unwrap();
        s.delete_file("shared/b").unwrap(); // idempotent
        assert!(!s.exists("shared/b").unwrap());
        let out = dir.path().join("restored.sst");
        s.fetch("shared/a.sst", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        assert_eq!(
            s.open_local("shared/a.sst").unwrap(),
            Some(dir.path().join("job/shared/a.sst"))
        );
        s.delete_dir("shared").unwrap();
        s.delete_dir("shared").unwrap();
        assert!(matches!(s.list_dir("shared"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn traversal_is_refused_before_any_io() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        s.create_dir_all("").unwrap();
        for bad in ["../x", "/etc/passwd", "shared/../../x", "a\\b", "./x"] {
            assert!(
                matches!(s.read_file(bad, 10), Err(Error::UnsafePath { .. })),
                "{bad}"
            );
            assert!(matches!(s.delete_file(bad), Err(Error::UnsafePath { .. })));
        }
        assert!(s.delete_dir("").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_directory_out_of_the_job_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(dir.path());
        s.create_dir_all("").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep me").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("job/shared")).unwrap();
        assert!(matches!(
            s.delete_file("shared/victim"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            s.read_file("shared/victim", 100),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            s.open_local("shared/victim"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(outside.join("victim").exists());
    }
}
