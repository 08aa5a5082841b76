//! Every file operation tidemark performs, behind one [`FileSystem`] trait, and the
//! durable-file helpers that encode the crash rules.
//!
//! The crash rules live here and nowhere else:
//! - a file that must survive a crash is written, then fsynced ([`WritableFile::sync`]);
//! - a file that replaces another is written to a temporary name, fsynced, renamed over the
//!   target, and then the directory is fsynced ([`write_atomic`]);
//! - a newly created or linked file is durable only after its directory is fsynced
//!   ([`FileSystem::sync_dir`]);
//! - a failed fsync poisons the file: every later `sync` on it fails too, because the
//!   kernel may have dropped the dirty pages and a retry that "succeeds" proves nothing.
//!
//! Reads go through plain [`std::fs::File`] handles (tables are memory-mapped), so a
//! test layer such as `tidemark::fault::FaultFs` only needs to intercept writes and metadata.
//! Every file opened for reading is opened by [`open_regular`]: regular files only, opened
//! without blocking (a FIFO never hangs a reader), checked on the opened descriptor; every
//! whole-file read is capped by its format's limit ([`read_capped`]), whatever size the file
//! reports; and where a file must lie inside a directory (the files of a job directory),
//! [`open_inside`] checks the canonical path of the file actually opened.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};

/// A file opened for appending, whose bytes become durable only on [`WritableFile::sync`].
pub trait WritableFile: Send + fmt::Debug {
    /// Appends `data` (buffered; see [`WritableFile::flush`]).
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Hands buffered bytes to the operating system (they survive a process crash, not a
    /// power cut).
    fn flush(&mut self) -> Result<()>;
    /// Flushes and fsyncs the file's data. After a failure the file is poisoned.
    fn sync(&mut self) -> Result<()>;
    /// Bytes appended so far (the file's logical length).
    fn len(&self) -> u64;
    /// True when nothing was appended.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The file's path, for error messages.
    fn path(&self) -> &Path;
}

/// How [`link_or_copy`] placed a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link: no bytes were copied.
    Linked,
    /// The file was copied (the link was impossible, e.g. across file systems).
    Copied,
}

/// An exclusive lock on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

/// The operations tidemark needs from a file system. [`StdFs`] is the real one.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates (or truncates) `path` for appending.
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>>;
    /// Creates `path` for a log that is fsynced often: the file may be extended ahead of the
    /// writes with zeros, `presize_step_bytes` at a time, so that most fsyncs need not
    /// commit a new file size. Readers of such a file must treat a zero-filled tail as its
    /// end. By default this is [`FileSystem::create`].
    fn create_presized(
        &self,
        path: &Path,
        presize_step_bytes: u64,
    ) -> Result<Box<dyn WritableFile>> {
        let _ = presize_step_bytes;
        self.create(path)
    }
    /// Like [`FileSystem::create_presized`], for a log that is rarely fsynced: appends may
    /// be copied into a shared memory mapping of the zeros instead of being written, so that
    /// an append costs no system call (the bytes still survive a process crash at once). An
    /// fsync of pages dirtied that way costs several times more on some file systems (ext4:
    /// about 3x), so a log fsynced on every write uses [`FileSystem::create_presized`]. By
    /// default this is [`FileSystem::create_presized`].
    fn create_presized_mapped(
        &self,
        path: &Path,
        presize_step_bytes: u64,
    ) -> Result<Box<dyn WritableFile>> {
        self.create_presized(path, presize_step_bytes)
    }
    /// Opens an existing regular file for reading (see [`open_regular`]): anything else
    /// (a directory, FIFO, socket or device, also behind a symlink) is
    /// [`Error::NotRegularFile`], and the open never blocks.
    fn open(&self, path: &Path) -> Result<File>;
    /// Renames `from` to `to`, replacing `to` (not durable until the directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> Result<()>;
    /// Removes a directory and everything below it.
    fn remove_dir_all(&self, path: &Path) -> Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> Result<()>;
    /// fsyncs a directory, making creations, renames and removals in it durable.
    fn sync_dir(&self, path: &Path) -> Result<()>;
    /// Creates a hard link `dst` to `src`.
    fn hard_link(&self, src: &Path, dst: &Path) -> Result<()>;
    /// Names of the entries of a directory, sorted. Names that are not UTF-8 are left out
    /// (tidemark writes none); [`FileSystem::list_entries`] shows them.
    fn list_dir(&self, path: &Path) -> Result<Vec<String>>;
    /// Every entry of a directory with what it is (symlinks not followed), sorted by name,
    /// names that are not UTF-8 included.
    fn list_entries(&self, path: &Path) -> Result<Vec<DirEntryInfo>> {
        list_entries(path)
    }
    /// Takes an exclusive, non-blocking lock on `path` (created if missing).
    fn lock(&self, path: &Path) -> Result<FileLock>;
    /// Size of a file in bytes.
    fn file_size(&self, path: &Path) -> Result<u64>;
    /// True when `path` exists.
    fn exists(&self, path: &Path) -> bool;

    /// Reads a whole regular file, refusing one larger than `max_bytes` (by its reported
    /// size, and by the bytes actually read: see [`read_capped`]).
    fn read_file(&self, path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
        let mut f = self.open(path)?;
        read_capped(&mut f, path, max_bytes)
    }
}

/// What a directory entry is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; `dangling` when what it names does not exist.
    Symlink {
        /// True when the link's target is missing.
        dangling: bool,
    },
    /// A FIFO, socket or device (described in words).
    Other(&'static str),
}

/// One entry of a directory, as [`FileSystem::list_entries`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryInfo {
    /// The name; bytes that are not UTF-8 are shown as `\xNN` (see `utf8`).
    pub name: String,
    /// False when the name is not valid UTF-8 (tidemark never writes such a name).
    pub utf8: bool,
    /// What the entry is itself.
    pub kind: EntryKind,
}

impl DirEntryInfo {
    /// True for a regular file with a UTF-8 name.
    pub fn is_plain_file(&self) -> bool {
        self.utf8 && self.kind == EntryKind::File
    }

    /// True for a directory (not a link to one) with a UTF-8 name.
    pub fn is_plain_dir(&self) -> bool {
        self.utf8 && self.kind == EntryKind::Dir
    }

    /// What the entry is, in words (`"a dangling symbolic link"`, ...), with a note when
    /// its name is not UTF-8.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            EntryKind::File => "a regular file",
            EntryKind::Dir => "a directory",
            EntryKind::Symlink { dangling: true } => "a dangling symbolic link",
            EntryKind::Symlink { dangling: false } => "a symbolic link",
            EntryKind::Other(what) => what,
        };
        if self.utf8 {
            kind.to_string()
        } else {
            format!("{kind} whose name is not UTF-8")
        }
    }
}

/// A file name with each byte that is not part of valid UTF-8 shown as `\xNN`.
fn escape_name(name: &std::ffi::OsStr) -> (String, bool) {
    use std::os::unix::ffi::OsStrExt;
    if let Some(s) = name.to_str() {
        return (s.to_string(), true);
    }
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    (out, false)
}

/// [`FileSystem::list_entries`] on the real file system.
pub fn list_entries(path: &Path) -> Result<Vec<DirEntryInfo>> {
    let rd = fs::read_dir(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            Error::io("list directory", path, e)
        }
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.ctx("list directory", path)?;
        let (name, utf8) = escape_name(&entry.file_name());
        let ft = entry.file_type().ctx("stat", &entry.path())?;
        let kind = if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink {
                dangling: fs::metadata(entry.path()).is_err(),
            }
        } else {
            EntryKind::Other(file_type_name(&ft))
        };
        out.push(DirEntryInfo { name, utf8, kind });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a file type is, in words, for errors (`"a FIFO (named pipe)"`, ...).
pub fn file_type_name(ft: &fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Maps a failed open of `path` for reading to tidemark's error: a missing file is
/// [`Error::NotFound`]; a path that cannot be opened because of what it is (a socket gives
/// `ENXIO`) is [`Error::NotRegularFile`].
fn open_error(path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        return Error::NotFound {
            path: path.to_path_buf(),
        };
    }
    if let Ok(m) = fs::metadata(path) {
        if !m.is_file() {
            return Error::NotRegularFile {
                path: path.to_path_buf(),
                kind: file_type_name(&m.file_type()),
            };
        }
    }
    Error::io("open", path, e)
}

/// Opens `path` for reading if, and only if, it is a regular file (a symlink to one is
/// followed). The open uses `O_NONBLOCK` so that a FIFO cannot block it (and `O_NOCTTY`),
/// the type is checked with `fstat` on the opened descriptor, not on the path, and
/// `O_NONBLOCK` is then cleared. A directory, FIFO, socket or device is
/// [`Error::NotRegularFile`] naming the path and what it is; nothing is read from it.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let meta = file.metadata().ctx("stat", path)?;
    if !meta.is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_type_name(&meta.file_type()),
        });
    }
    clear_nonblocking(&file, path)?;
    Ok(file)
}

/// Clears `O_NONBLOCK` on an open descriptor.
fn clear_nonblocking(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is a valid descriptor owned by `file` for the duration of this call;
    // F_GETFL takes no argument and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(Error::io("fcntl", path, io::Error::last_os_error()));
    }
    // SAFETY: as above; F_SETFL takes an int argument and touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(Error::io("fcntl", path, io::Error::last_os_error()));
    }
    Ok(())
}

/// Asks that reads of `file` leave its access time alone (`O_NOATIME`), which saves the
/// kernel an access-time check and a clock read on every read: for a store's own tables,
/// read a block at a time. Best effort: where the process may not (it neither owns the
/// file nor has `CAP_FOWNER`) or the system has no such flag, nothing changes.
pub fn skip_access_times(file: &File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is a valid descriptor owned by `file` for the duration of these
        // calls; F_GETFL takes no argument, F_SETFL an int, and neither touches memory.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NOATIME);
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = file;
}

/// Reads all of `file` (opened from `path`) from its current position, refusing more
/// than `max_bytes`: the reported size is checked first, and then at most `max_bytes + 1`
/// bytes are read whatever the size said, so a file that grows, or lies about its size,
/// costs at most that much memory and time.
pub fn read_capped(file: &mut File, path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let reported = file.metadata().ctx("stat", path)?.len();
    if reported > max_bytes {
        return Err(Error::corruption(
            path,
            0,
            format!("file is {reported} bytes, larger than the limit of {max_bytes}"),
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(reported).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut buf)
        .ctx("read", path)?;
    if buf.len() as u64 > max_bytes {
        return Err(Error::corruption(
            path,
            max_bytes,
            format!("file holds more than the limit of {max_bytes} bytes"),
        ));
    }
    Ok(buf)
}

/// The canonical form of `path`, mapping a missing path to [`Error::NotFound`].
pub fn canonical(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            Error::io("canonicalize", path, e)
        }
    })
}

/// The canonical path of the file `file` (opened from `path`) actually is: the path
/// resolved with every symlink followed, checked to name the same inode as the descriptor
/// (so a file swapped between the open and the resolution is refused, never trusted).
pub fn opened_path(file: &File, path: &Path) -> Result<PathBuf> {
    let resolved = canonical(path)?;
    let opened = file.metadata().ctx("stat", path)?;
    let there = fs::metadata(&resolved).ctx("stat", &resolved)?;
    if (opened.dev(), opened.ino()) != (there.dev(), there.ino()) {
        return Err(Error::io(
            "open",
            path,
            io::Error::other("the file was replaced while it was being opened"),
        ));
    }
    Ok(resolved)
}

/// Opens the regular file `path` through `fs` and checks that the file actually opened
/// lies inside the directory `root` once every symlink is followed: a file whose
/// canonical path leaves `root` is [`Error::UnsafePath`] and nothing is read from it.
/// `entry` names the file in the error (its path relative to `root`, as written).
/// Returns the file and its canonical path.
pub fn open_inside(
    fs: &dyn FileSystem,
    root: &Path,
    path: &Path,
    entry: &str,
) -> Result<(File, PathBuf)> {
    let file = fs.open(path)?;
    let opened = opened_path(&file, path)?;
    let root_canonical = canonical(root)?;
    if !opened.starts_with(&root_canonical) {
        return Err(Error::UnsafePath {
            path: root.to_path_buf(),
            entry: entry.to_string(),
            reason: format!(
                "{} resolves to {} outside the job directory {}",
                path.display(),
                opened.display(),
                root_canonical.display()
            ),
        });
    }
    Ok((file, opened))
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

impl StdFs {
    /// A shared handle to the real file system.
    pub fn shared() -> Arc<dyn FileSystem> {
        Arc::new(StdFs)
    }
}

/// Buffer size of [`StdWritableFile`]: large enough that appends of small records do not
/// each become a system call.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// An open file that refuses every use after one of its writes or fsyncs failed: the
/// bytes that reached it are then unknown, and the kernel may have dropped dirty pages
/// that a later fsync would wrongly report as written.
struct PoisoningFile {
    file: File,
    path: PathBuf,
    poisoned: bool,
}

impl PoisoningFile {
    /// Creates (or truncates) `path` for writing (and reading, with `read`).
    fn create(path: &Path, read: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(read)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .ctx("create", path)?;
        Ok(PoisoningFile {
            file,
            path: path.to_path_buf(),
            poisoned: false,
        })
    }

    fn check(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::io(
                "write",
                &self.path,
                io::Error::other("an earlier write or fsync of this file failed"),
            ));
        }
        Ok(())
    }

    /// Poisons the file and names it in the error of `op`.
    fn fail(&mut self, op: &'static str, e: io::Error) -> Error {
        self.poisoned = true;
        Error::io(op, &self.path, e)
    }

    /// Writes `data` at the file position.
    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(|e| self.fail("write", e))
    }

    /// Writes zeros over `[from, to)` without moving the file position.
    fn write_zeros(&mut self, from: u64, to: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let zeros = vec![0u8; 64 * 1024];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            if let Err(e) = self.file.write_all_at(&zeros[..n], at) {
                return Err(self.fail("write", e));
            }
            at += n as u64;
        }
        Ok(())
    }

    /// fdatasyncs the file.
    fn sync_data(&mut self) -> Result<()> {
        self.check()?;
        self.file.sync_data().map_err(|e| self.fail("fsync", e))
    }
}

/// A buffered file on the real file system.
pub struct StdWritableFile {
    file: PoisoningFile,
    buf: Vec<u8>,
    len: u64,
    /// Extend the file with zeros this many bytes at a time (0: never).
    presize_step_bytes: u64,
    /// The file's size on disk, zeros included, when presizing.
    presized_to: u64,
}

impl fmt::Debug for StdWritableFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdWritableFile")
            .field("path", &self.file.path)
            .field("len", &self.len)
            .finish()
    }
}

impl StdWritableFile {
    /// Creates (or truncates) `path`; with a non-zero step, the file is extended with zeros
    /// that many bytes at a time ahead of the writes.
    fn create(path: &Path, presize_step_bytes: u64) -> Result<Box<dyn WritableFile>> {
        Ok(Box::new(StdWritableFile {
            file: PoisoningFile::create(path, false)?,
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
            len: 0,
            presize_step_bytes,
            presized_to: 0,
        }))
    }

    /// Writes zeros past the end of the file, ahead of the logical length, so that the
    /// writes that follow overwrite allocated blocks and an fdatasync need not commit a new
    /// file size. The zeros are written at their offsets; the file position is unchanged.
    fn extend_with_zeros(&mut self) -> Result<()> {
        let target = self.len.div_ceil(self.presize_step_bytes) * self.presize_step_bytes
            + self.presize_step_bytes;
        self.file.write_zeros(self.presized_to, target)?;
        self.presized_to = target;
        Ok(())
    }
}

impl WritableFile for StdWritableFile {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file.check()?;
        if self.buf.len() + data.len() > WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        if data.len() >= WRITE_BUFFER_BYTES {
            self.file.write_all(data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        self.len += data.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file.check()?;
        if self.presize_step_bytes > 0 && self.len > self.presized_to {
            self.extend_with_zeros()?;
        }
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn path(&self) -> &Path {
        &self.file.path
    }
}

/// The first zeros a [`MappedLogFile`] writes ahead (later steps double up to its step).
#[cfg(target_os = "linux")]
const MAPPED_FIRST_STEP_BYTES: u64 = 64 << 10;

/// A presized log written through a shared memory mapping of its zero-filled region
/// (Linux only; see [`FileSystem::create_presized_mapped`]).
///
/// The file is extended with zeros by `write` system calls, a step at a time, before any
/// record lands there. Used only on file systems that overwrite a file's blocks in place
/// (ext2/3/4, XFS, tmpfs): they reserve (and later allocate) those blocks at that write, so
/// a full disk is reported by it, naming the file, and never surfaces later as a fault on a
/// store into the mapping. A copy-on-write file system (btrfs, ZFS, bcachefs) allocates
/// anew at every store, and a store on a full disk would end the process (`SIGBUS`); there,
/// and where a file cannot be mapped, the log is written with `write`. An append is then a copy into the page cache:
/// the bytes survive a crash of the process at once, exactly as after a `write`, without
/// a system call per record. `fdatasync` on Linux writes back every dirty page of the
/// file, however it was dirtied (the page cache is one), so [`WritableFile::sync`] is a
/// plain `fdatasync`.
#[cfg(target_os = "linux")]
struct MappedLogFile {
    file: PoisoningFile,
    /// Bytes appended so far.
    len: u64,
    /// The file's size: the appended bytes, then zeros.
    presized_to: u64,
    step: u64,
    /// Maps `[map_start, presized_to)`.
    map: Option<memmap2::MmapMut>,
    map_start: u64,
}

/// True when `file` is on a file system that overwrites a file's allocated blocks in place
/// (ext2/3/4, XFS, tmpfs), where a store into a mapping of written zeros needs no new
/// space.
#[cfg(target_os = "linux")]
fn overwrites_in_place(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: the descriptor is open for the life of `file`, and fstatfs writes at most one
    // `statfs` into the buffer, which is one.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it filled the struct (which was zeroed before anyway).
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let kind = st.f_type as i64;
    matches!(kind, EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC | TMPFS_MAGIC)
}

#[cfg(target_os = "linux")]
impl fmt::Debug for MappedLogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedLogFile")
            .field("path", &self.file.path)
            .field("len", &self.len)
            .field("presized_to", &self.presized_to)
            .finish()
    }
}

#[cfg(target_os = "linux")]
impl MappedLogFile {
    /// Creates `path` and maps its first zeros; `None` when the file system is not one that
    /// overwrites in place, or the file cannot be mapped (the caller then writes it with
    /// `write`).
    fn try_create(path: &Path, step: u64) -> Result<Option<Box<dyn WritableFile>>> {
        let file = PoisoningFile::create(path, true)?;
        if !overwrites_in_place(&file.file) {
            return Ok(None);
        }
        let mut f = MappedLogFile {
            file,
            len: 0,
            presized_to: 0,
            step,
            map: None,
            map_start: 0,
        };
        f.grow_to(0)?;
        Ok(f.remap()
            .is_ok()
            .then(|| Box::new(f) as Box<dyn WritableFile>))
    }

    /// Extends the file with zeros to hold at least `end` bytes, then maps the region from
    /// the current length to the new size.
    fn extend_to(&mut self, end: u64) -> Result<()> {
        self.grow_to(end)?;
        self.remap()
    }

    /// Extends the file with zeros to a multiple of the current step that holds at least
    /// `end` bytes and at least one step more than before. The steps start at 64 KiB and
    /// double up to `step`, so that creating a log (which holds writers up at a memtable
    /// switch) writes few zeros.
    fn grow_to(&mut self, end: u64) -> Result<()> {
        let step = self
            .presized_to
            .max(MAPPED_FIRST_STEP_BYTES)
            .min(self.step)
            .max(1);
        let target = end.max(self.presized_to + step).next_multiple_of(step);
        self.file.write_zeros(self.presized_to, target)?;
        self.presized_to = target;
        Ok(())
    }

    /// Maps `[len, presized_to)`, replacing the previous mapping.
    fn remap(&mut self) -> Result<()> {
        let len = match usize::try_from(self.presized_to - self.len) {
            Ok(n) => n,
            Err(_) => {
                let e = io::Error::other("the region to map does not fit in memory");
                return Err(self.file.fail("map", e));
            }
        };
        // SAFETY: the mapping covers `[self.len, presized_to)`, which lies inside the file
        // (the zeros written before made it `presized_to` bytes long), so no access through
        // it is past the end of the file. The file was created (truncated) by this value,
        // is written only through this mapping from now on, and is never truncated while
        // mapped: the store's directory lock keeps other tidemark processes away, and its
        // readers read with `read`, not through references into this memory. Only this
        // value's `&mut` methods touch the mapping.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(self.len)
                .len(len)
                .map_mut(&self.file.file)
        };
        match map {
            Ok(m) => {
                self.map = Some(m);
                self.map_start = self.len;
                Ok(())
            }
            Err(e) => Err(self.file.fail("map", e)),
        }
    }
}

#[cfg(target_os = "linux")]
impl WritableFile for MappedLogFile {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file.check()?;
        let end = self.len + data.len() as u64;
        if end > self.presized_to || self.map.is_none() {
            self.extend_to(end)?;
        }
        let map = self.map.as_mut().ok_or(Error::Closed)?;
        let at = (self.len - self.map_start) as usize;
        map[at..at + data.len()].copy_from_slice(data);
        self.len = end;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // The appended bytes are in the page cache already.
        self.file.check()
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn path(&self) -> &Path {
        &self.file.path
    }
}

impl FileSystem for StdFs {
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        StdWritableFile::create(path, 0)
    }

    fn create_presized(
        &self,
        path: &Path,
        presize_step_bytes: u64,
    ) -> Result<Box<dyn WritableFile>> {
        StdWritableFile::create(path, presize_step_bytes)
    }

    fn create_presized_mapped(
        &self,
        path: &Path,
        presize_step_bytes: u64,
    ) -> Result<Box<dyn WritableFile>> {
        #[cfg(target_os = "linux")]
        if presize_step_bytes > 0 {
            if let Some(f) = MappedLogFile::try_create(path, presize_step_bytes)? {
                return Ok(f);
            }
        }
        StdWritableFile::create(path, presize_step_bytes)
    }

    fn open(&self, path: &Path) -> Result<File> {
        open_regular(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        fs::rename(from, to).ctx("rename", from)
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        fs::remove_file(path).ctx("remove", path)
    }

    fn remove_dir_all(&self, path: &Path) -> Result<()> {
        fs::remove_dir_all(path).ctx("remove directory", path)
    }

    fn create_dir_all(&self, path: &Path) -> Result<()> {
        fs::create_dir_all(path).ctx("create directory", path)
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .ctx("open directory", path)?;
        dir.sync_all().ctx("fsync directory", path)
    }

    fn hard_link(&self, src: &Path, dst: &Path) -> Result<()> {
        fs::hard_link(src, dst).ctx("hard link", dst)
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                Error::io("list directory", path, e)
            }
        })? {
            let entry = entry.ctx("list directory", path)?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn lock(&self, path: &Path) -> Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .ctx("open lock file", path)?;
        let meta = file.metadata().ctx("stat", path)?;
        if !meta.is_file() {
            return Err(Error::NotRegularFile {
                path: path.to_path_buf(),
                kind: file_type_name(&meta.file_type()),
            });
        }
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => Ok(FileLock {
                file,
                path: path.to_path_buf(),
            }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(11) => {
                Err(Error::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => Err(Error::io("lock", path, e)),
        }
    }

    fn file_size(&self, path: &Path) -> Result<u64> {
        Ok(fs::metadata(path).ctx("stat", path)?.len())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Replaces `path` with `data` so that after a crash it holds either the old or the new
/// contents, never a mix: write `path.tmp`, fsync, rename, fsync the directory.
pub fn write_atomic(fs: &dyn FileSystem, path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let mut f = fs.create(&tmp)?;
    f.append(data)?;
    f.sync()?;
    drop(f);
    fs.rename(&tmp, path)?;
    fs.sync_dir(parent_dir(path))
}

/// Replaces `path` with `data` through a temporary file that is fsynced before the
/// rename, but does not fsync the directory: after a crash the file holds the old bytes or
/// the new ones in full, never a torn or empty file, though the last replacement (or a
/// first creation) may be lost. For advisory files rewritten often, such as a job's
/// checkpoint statistics, where an older version after a power loss is harmless and a
/// directory fsync per update is not worth its cost.
pub fn write_replace(fs: &dyn FileSystem, path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let mut f = fs.create(&tmp)?;
    f.append(data)?;
    f.sync()?;
    drop(f);
    fs.rename(&tmp, path)
}

/// A file written in pieces that appears at its path whole or not at all: the bytes go to
/// [`temp_path`]`(path)`; [`StagedWrite::persist`] fsyncs that file and renames it over
/// `path`. The caller makes the rename durable by syncing the directory (so that many
/// files can share one directory sync). Dropped before it is persisted, the temporary file
/// is removed.
#[derive(Debug)]
pub struct StagedWrite {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    tmp: PathBuf,
    file: Option<Box<dyn WritableFile>>,
    persisted: bool,
}

impl StagedWrite {
    /// Starts writing `path` (its temporary file is created, or truncated).
    pub fn create(fs: Arc<dyn FileSystem>, path: &Path) -> Result<StagedWrite> {
        let tmp = temp_path(path);
        let file = fs.create(&tmp)?;
        Ok(StagedWrite {
            fs,
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
            persisted: false,
        })
    }

    /// Appends `data`.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        match self.file.as_mut() {
            Some(f) => f.append(data),
            None => Err(Error::io(
                "write",
                &self.tmp,
                io::Error::other("the staged file was already closed"),
            )),
        }
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.len())
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fsyncs the file and renames it to its path; its directory is not synced.
    pub fn persist(mut self) -> Result<()> {
        let Some(mut f) = self.file.take() else {
            return Err(Error::io(
                "fsync",
                &self.tmp,
                io::Error::other("the staged file was already closed"),
            ));
        };
        f.sync()?;
        drop(f);
        self.fs.rename(&self.tmp, &self.path)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for StagedWrite {
    fn drop(&mut self) {
        if !self.persisted {
            drop(self.file.take());
            if let Err(e) = self.fs.remove_file(&self.tmp) {
                if e.io_kind() != Some(io::ErrorKind::NotFound) {
                    tracing::warn!("removing unfinished {}: {e}", self.tmp.display());
                }
            }
        }
    }
}

/// The temporary name [`write_atomic`] and [`StagedWrite`] use for `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Places `src` at `dst` by hard link, or by a synced copy when linking is impossible
/// (across file systems, or a file system without links). The caller syncs `dst`'s
/// directory.
pub fn link_or_copy(fs: &dyn FileSystem, src: &Path, dst: &Path) -> Result<Placement> {
    match fs.hard_link(src, dst) {
        Ok(()) => Ok(Placement::Linked),
        Err(e) if link_impossible(&e) => {
            copy_file(fs, src, dst)?;
            Ok(Placement::Copied)
        }
        Err(e) => Err(e),
    }
}

fn link_impossible(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => {
            // EXDEV (18): cross-device link; EPERM (1) / ENOTSUP (95) / EMLINK (31):
            // the file system refuses links or this file has too many.
            matches!(
                source.raw_os_error(),
                Some(18) | Some(1) | Some(95) | Some(31)
            ) || source.kind() == io::ErrorKind::Unsupported
        }
        _ => false,
    }
}

/// Copies `src` to `dst` and fsyncs `dst`.
pub fn copy_file(fs: &dyn FileSystem, src: &Path, dst: &Path) -> Result<u64> {
    let mut input = fs.open(src)?;
    let mut out = fs.create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).ctx("read", src)?;
        if n == 0 {
            break;
        }
        out.append(&buf[..n])?;
    }
    out.sync()?;
    Ok(out.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("CURRENT");
        write_atomic(&StdFs, &p, b"one").unwrap();
        write_atomic(&StdFs, &p, b"two!").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two!");
        assert!(!temp_path(&p).exists());
    }

    #[test]
    fn presized_file_holds_its_bytes_then_zeros() {
        // A written file keeps a step of zeros ahead of its last write; a mapped one only
        // needs room for it.
        presized_holds_bytes_then_zeros(|p| StdFs.create_presized(p, 4096).unwrap(), 4);
        presized_holds_bytes_then_zeros(|p| StdFs.create_presized_mapped(p, 4096).unwrap(), 3);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_mapped_log_starts_small_and_grows_by_doubling_steps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000002.wal");
        let mut f = StdFs.create_presized_mapped(&p, 1 << 20).unwrap();
        f.append(b"header").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            64 << 10,
            "a first step of 64 KiB"
        );
        let record: Vec<u8> = (0..=250u8).collect();
        let mut written = 6u64;
        let mut sizes = Vec::new();
        while written < 3 << 20 {
            f.append(&record).unwrap();
            written += record.len() as u64;
            let size = fs::metadata(&p).unwrap().len();
            if sizes.last() != Some(&size) {
                sizes.push(size);
            }
        }
        f.sync().unwrap();
        assert!(
            sizes.windows(2).all(|w| w[1] - w[0] <= 2 << 20),
            "{sizes:?}"
        );
        let bytes = fs::read(&p).unwrap();
        assert!(bytes.len() as u64 >= written && bytes.len() as u64 <= written + (1 << 20));
        assert_eq!(&bytes[..6], b"header");
        for (i, chunk) in bytes[6..written as usize].chunks(record.len()).enumerate() {
            assert_eq!(chunk, &record[..chunk.len()], "record {i}");
        }
        assert!(bytes[written as usize..].iter().all(|&b| b == 0));
    }

    fn presized_holds_bytes_then_zeros(
        create: impl Fn(&Path) -> Box<dyn WritableFile>,
        final_steps: usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000001.wal");
        let mut f = create(&p);
        f.append(b"hello").unwrap();
        f.flush().unwrap();
        assert_eq!(
            &fs::read(&p).unwrap()[..5],
            b"hello",
            "flushed bytes are the operating system's (they survive a process crash)"
        );
        f.sync().unwrap();
        f.append(&[7u8; 5000]).unwrap();
        f.sync().unwrap();
        assert_eq!(f.len(), 5005);
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            2 * 4096,
            "a step ahead of the first write"
        );
        f.append(&[7u8; 4000]).unwrap();
        f.sync().unwrap();
        let bytes = fs::read(&p).unwrap();
        assert_eq!(
            bytes.len(),
            final_steps * 4096,
            "extended again once the writes passed the zeros"
        );
        assert_eq!(&bytes[..5], b"hello");
        assert!(bytes[5..9005].iter().all(|&b| b == 7));
        assert!(bytes[9005..].iter().all(|&b| b == 0));
    }

    #[test]
    fn second_lock_fails_naming_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("LOCK");
        let _l = StdFs.lock(&p).unwrap();
        match StdFs.lock(&p) {
            Err(Error::Locked { path }) => assert_eq!(path, p),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn link_or_copy_links_on_same_fs() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"data").unwrap();
        let b = dir.path().join("b");
        assert_eq!(link_or_copy(&StdFs, &a, &b).unwrap(), Placement::Linked);
        assert_eq!(fs::read(&b).unwrap(), b"data");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_file_of_ours_is_opened_blocking_and_may_skip_access_times() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        fs::write(&p, b"data").unwrap();
        let f = open_regular(&p).unwrap();
        // SAFETY: F_GETFL on a descriptor `f` owns; no memory is touched.
        let flags = || unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert!(flags() >= 0);
        assert_eq!(flags() & (libc::O_NONBLOCK | libc::O_NOATIME), 0);
        skip_access_times(&f);
        assert_ne!(flags() & libc::O_NOATIME, 0, "a file the process owns");
        assert_eq!(flags() & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"data");
    }

    #[test]
    fn a_read_is_capped_whatever_size_the_file_reports() {
        // Files of /proc report a size of 0 and hold more: the cap must hold anyway.
        let p = Path::new("/proc/self/maps");
        if !p.exists() {
            return;
        }
        let mut f = open_regular(p).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        let e = read_capped(&mut f, p, 16).unwrap_err();
        assert!(e.to_string().contains("more than the limit of 16"), "{e}");
        let all = StdFs.read_file(p, 1 << 30).unwrap();
        assert!(all.len() > 16);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        match StdFs.open(&p) {
            Err(Error::NotRegularFile { path, kind }) => {
                assert_eq!(path, p);
                assert!(kind.contains("FIFO"), "{kind}");
            }
            other => panic!("{other:?}"),
        }
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = StdFs.read_file(&link, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        let e = StdFs.read_file(dir.path(), u64::MAX).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
    }

    #[test]
    fn open_inside_checks_the_file_actually_opened() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        fs::create_dir_all(&job).unwrap();
        fs::write(dir.path().join("secret"), b"s").unwrap();
        fs::write(job.join("mine"), b"m").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), job.join("out")).unwrap();
        std::os::unix::fs::symlink("mine", job.join("in")).unwrap();
        let e = open_inside(&StdFs, &job, &job.join("out"), "out").unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{e:?}");
        let (_, canonical_path) = open_inside(&StdFs, &job, &job.join("in"), "in").unwrap();
        assert_eq!(canonical_path, canonical(&job.join("mine")).unwrap());
    }

    #[test]
    fn missing_file_is_not_found_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        match StdFs.open(&p) {
            Err(Error::NotFound { path }) => assert_eq!(path, p),
            other => panic!("{other:?}"),
        }
    }
}
