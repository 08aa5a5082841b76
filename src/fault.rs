//! A fault-injecting file system for tests: [`FaultFs`] wraps the real file system
//! ([`StdFs`]), fails chosen operations with `EIO` or `ENOSPC` ([`FaultRule`]), and
//! simulates a power cut ([`FaultFs::power_cut`]).
//!
//! What a power cut models, and what it does not:
//! - File data: every file written through this `FaultFs` is cut back to the length it
//!   had at its last successful [`WritableFile::sync`]; a file never synced becomes empty.
//!   A failed sync does not advance that length (as on Linux, the dirty pages may be gone)
//!   and poisons the handle. Files this `FaultFs` never wrote are left as they are.
//! - Directory entries: a create, rename, hard link or removal is durable only once its
//!   directory is fsynced ([`FileSystem::sync_dir`]). Until then it is journaled and a power
//!   cut undoes it, newest first: a created file or link disappears, a renamed file goes back
//!   to its old name (and the file it replaced comes back), a removed file comes back with
//!   the contents it had when it was removed (cut to its synced length).
//! - A rename across directories becomes durable once either directory is fsynced (the
//!   real rule is murkier; tidemark renames only within a directory).
//! - Directory creation and `remove_dir_all` take effect at once and are never undone.
//! - Reads (`open`, `list_dir`, `file_size`, `exists`, `lock`) are never failed.
//!
//! After a power cut, handles created before it fail every call; the `FaultFs` itself stays
//! usable.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, IoContext, Result};
use crate::fs::{parent_dir, FileLock, FileSystem, StdFs, WritableFile};

/// The operation a [`FaultRule`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// [`FileSystem::create`].
    Create,
    /// [`WritableFile::append`] (each call is one operation).
    Write,
    /// [`WritableFile::sync`].
    Sync,
    /// [`FileSystem::rename`] (the path filter matches either name).
    Rename,
    /// [`FileSystem::hard_link`] (the path filter matches either name).
    Link,
    /// [`FileSystem::remove_file`] and [`FileSystem::remove_dir_all`].
    Remove,
    /// [`FileSystem::sync_dir`].
    SyncDir,
    /// [`FileSystem::create_dir_all`].
    CreateDir,
    /// Every operation above.
    Any,
}

/// The error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// `EIO` (os error 5).
    Eio,
    /// `ENOSPC` (os error 28).
    Enospc,
}

impl FaultError {
    /// The operating-system error this fault stands for.
    pub fn to_io_error(self) -> io::Error {
        match self {
            FaultError::Eio => io::Error::from_raw_os_error(5),
            FaultError::Enospc => io::Error::from_raw_os_error(28),
        }
    }
}

/// Fails matching operations: the first `skip` matches succeed, the next `times` (or all,
/// with `None`) fail with `error`.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// The operation the rule applies to.
    pub op: FaultOp,
    /// Only paths whose text contains this string match (None: every path).
    pub path_contains: Option<String>,
    /// The error to inject.
    pub error: FaultError,
    /// How many matching operations succeed before the rule fires.
    pub skip: u64,
    /// How many times the rule fires (None: forever).
    pub times: Option<u64>,
}

impl FaultRule {
    /// A rule that fails every `op` forever with `error`.
    pub fn always(op: FaultOp, error: FaultError) -> FaultRule {
        FaultRule {
            op,
            path_contains: None,
            error,
            skip: 0,
            times: None,
        }
    }

    /// Restricts the rule to paths containing `s`.
    pub fn on_path(mut self, s: impl Into<String>) -> FaultRule {
        self.path_contains = Some(s.into());
        self
    }

    /// Lets `n` matching operations succeed first.
    pub fn after(mut self, n: u64) -> FaultRule {
        self.skip = n;
        self
    }

    /// Fires only `n` times.
    pub fn times(mut self, n: u64) -> FaultRule {
        self.times = Some(n);
        self
    }

    fn matches(&self, op: FaultOp, paths: &[&Path]) -> bool {
        if self.op != FaultOp::Any && self.op != op {
            return false;
        }
        match &self.path_contains {
            None => true,
            Some(s) => paths
                .iter()
                .any(|p| p.to_string_lossy().contains(s.as_str())),
        }
    }
}

/// A rule and how often it matched and fired.
#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    matched: u64,
    fired: u64,
}

/// The durable state of one file written through the `FaultFs` (shared by its links).
#[derive(Debug, Default)]
struct Inode {
    /// Length at the last successful sync.
    synced_len: u64,
}

type InodeRef = Arc<Mutex<Inode>>;

/// A directory-entry change not yet made durable by a directory fsync, and how to undo it.
#[derive(Debug)]
enum Undo {
    /// `path` was created where nothing was: remove it.
    Create { path: PathBuf },
    /// `from` was renamed to `to`: rename back, and restore what `to` held.
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<Saved>,
    },
    /// `dst` was linked: remove it.
    Link { dst: PathBuf },
    /// `path` was removed: put it back.
    Remove { path: PathBuf, saved: Saved },
}

/// The contents of a file that an undone operation must bring back.
#[derive(Debug)]
struct Saved {
    data: Vec<u8>,
    inode: Option<InodeRef>,
}

#[derive(Debug)]
struct Journaled {
    undo: Undo,
    /// Directories whose fsync makes the change durable.
    dirs: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<RuleState>,
    injected: u64,
    /// Files written through this file system, by (normalized) path.
    files: HashMap<PathBuf, InodeRef>,
    /// Directory changes not yet durable, oldest first.
    journal: Vec<Journaled>,
    /// Bumped by every power cut; handles of an older generation are dead.
    generation: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    /// Counts `op` against the rules; returns the error of the first rule that fires.
    fn check(&self, op: FaultOp, paths: &[&Path]) -> Option<io::Error> {
        let mut st = self.state.lock();
        let mut fire = None;
        for r in st.rules.iter_mut() {
            if !r.rule.matches(op, paths) {
                continue;
            }
            r.matched += 1;
            let exhausted = r.rule.times.is_some_and(|t| r.fired >= t);
            if fire.is_none() && r.matched > r.rule.skip && !exhausted {
                r.fired += 1;
                fire = Some(r.rule.error);
            }
        }
        if fire.is_some() {
            st.injected += 1;
        }
        fire.map(FaultError::to_io_error)
    }

    fn generation(&self) -> u64 {
        self.state.lock().generation
    }
}

/// A file system that injects faults and simulates power cuts (see the module docs).
#[derive(Debug, Default)]
pub struct FaultFs {
    shared: Arc<Shared>,
}

impl FaultFs {
    /// A fault-free file system over the real one.
    pub fn new() -> Arc<FaultFs> {
        Arc::new(FaultFs::default())
    }

    /// Adds a rule; rules are checked in order on every operation, and every matching rule
    /// counts the operation against its `skip`.
    pub fn add_rule(&self, rule: FaultRule) {
        self.shared.state.lock().rules.push(RuleState {
            rule,
            matched: 0,
            fired: 0,
        });
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        self.shared.state.lock().rules.clear();
    }

    /// Number of faults injected so far.
    pub fn injected(&self) -> u64 {
        self.shared.state.lock().injected
    }

    /// Simulates a power cut (see the module docs for what is modelled): undoes directory
    /// changes not made durable by a directory fsync, newest first, then cuts every file
    /// written through this file system to its synced length. Handles opened before the
    /// cut fail every later call.
    pub fn power_cut(&self) -> Result<()> {
        let mut st = self.shared.state.lock();
        st.generation += 1;
        let journal = std::mem::take(&mut st.journal);
        for j in journal.into_iter().rev() {
            undo(&mut st.files, j.undo)?;
        }
        for (path, inode) in &st.files {
            let synced = inode.lock().synced_len;
            match fs::metadata(path) {
                Ok(m) if m.len() > synced => {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .ctx("open", path)?;
                    f.set_len(synced).ctx("truncate", path)?;
                    f.sync_all().ctx("fsync", path)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn fail(&self, op: FaultOp, op_name: &'static str, paths: &[&Path]) -> Result<()> {
        match self.shared.check(op, paths) {
            Some(e) => Err(Error::io(op_name, paths[0], e)),
            None => Ok(()),
        }
    }

    fn journal(&self, undo: Undo, dirs: Vec<PathBuf>) {
        self.shared
            .state
            .lock()
            .journal
            .push(Journaled { undo, dirs });
    }

    /// What a file at `path` would hold after a power cut, with its inode if tracked.
    fn save(&self, path: &Path) -> Result<Saved> {
        let key = normalize(path);
        let inode = self.shared.state.lock().files.get(&key).cloned();
        let mut data = StdFs.read_file(path, u64::MAX)?;
        if let Some(i) = &inode {
            let synced = usize::try_from(i.lock().synced_len).unwrap_or(usize::MAX);
            data.truncate(synced);
        }
        Ok(Saved { data, inode })
    }
}

/// A path with `.` components and trailing separators removed, so that the same file
/// named two ways is one key.
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn dir_of(path: &Path) -> PathBuf {
    normalize(parent_dir(path))
}

fn restore(files: &mut HashMap<PathBuf, InodeRef>, path: &Path, saved: Saved) -> Result<()> {
    let mut f = File::create(path).ctx("restore", path)?;
    f.write_all(&saved.data).ctx("restore", path)?;
    f.sync_all().ctx("fsync", path)?;
    let key = normalize(path);
    match saved.inode {
        Some(i) => {
            files.insert(key, i);
        }
        None => {
            files.remove(&key);
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn undo(files: &mut HashMap<PathBuf, InodeRef>, u: Undo) -> Result<()> {
    match u {
        Undo::Create { path } | Undo::Link { dst: path } => {
            remove_if_present(&path)?;
            files.remove(&normalize(&path));
        }
        Undo::Rename { from, to, replaced } => {
            if to.exists() {
                fs::rename(&to, &from).ctx("rename", &to)?;
            }
            if let Some(i) = files.remove(&normalize(&to)) {
                files.insert(normalize(&from), i);
            }
            if let Some(saved) = replaced {
                restore(files, &to, saved)?;
            }
        }
        Undo::Remove { path, saved } => restore(files, &path, saved)?,
    }
    Ok(())
}

/// A file written through a [`FaultFs`].
#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn WritableFile>,
    inode: InodeRef,
    shared: Arc<Shared>,
    generation: u64,
    poisoned: bool,
}

impl FaultFile {
    fn usable(&self, op: &'static str) -> Result<()> {
        if self.shared.generation() != self.generation {
            return Err(Error::io(
                op,
                self.inner.path(),
                io::Error::other("the file system lost power since this file was opened"),
            ));
        }
        if self.poisoned {
            return Err(Error::io(
                op,
                self.inner.path(),
                io::Error::other("an earlier write or fsync of this file failed"),
            ));
        }
        Ok(())
    }
}

impl WritableFile for FaultFile {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.usable("write")?;
        if let Some(e) = self.shared.check(FaultOp::Write, &[self.inner.path()]) {
            self.poisoned = true;
            return Err(Error::io("write", self.inner.path(), e));
        }
        self.inner.append(data)
    }

    fn flush(&mut self) -> Result<()> {
        self.usable("write")?;
        self.inner.flush()
    }

    fn sync(&mut self) -> Result<()> {
        self.usable("fsync")?;
        if let Some(e) = self.shared.check(FaultOp::Sync, &[self.inner.path()]) {
            // As on Linux: the dirty data may be dropped, and a later fsync that "succeeds"
            // would prove nothing.
            self.poisoned = true;
            return Err(Error::io("fsync", self.inner.path(), e));
        }
        self.inner.sync()?;
        self.inode.lock().synced_len = self.inner.len();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }
}

impl FileSystem for FaultFs {
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        self.fail(FaultOp::Create, "create", &[path])?;
        let existed = path.exists();
        let inner = StdFs.create(path)?;
        let inode: InodeRef = Arc::default();
        let generation = {
            let mut st = self.shared.state.lock();
            st.files.insert(normalize(path), inode.clone());
            st.generation
        };
        if !existed {
            self.journal(
                Undo::Create {
                    path: path.to_path_buf(),
                },
                vec![dir_of(path)],
            );
        }
        Ok(Box::new(FaultFile {
            inner,
            inode,
            shared: self.shared.clone(),
            generation,
            poisoned: false,
        }))
    }

    fn open(&self, path: &Path) -> Result<File> {
        StdFs.open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.fail(FaultOp::Rename, "rename", &[from, to])?;
        let replaced = if to.exists() {
            Some(self.save(to)?)
        } else {
            None
        };
        StdFs.rename(from, to)?;
        {
            let mut st = self.shared.state.lock();
            match st.files.remove(&normalize(from)) {
                Some(i) => {
                    st.files.insert(normalize(to), i);
                }
                None => {
                    st.files.remove(&normalize(to));
                }
            }
        }
        let mut dirs = vec![dir_of(from)];
        if dir_of(to) != dirs[0] {
            dirs.push(dir_of(to));
        }
        self.journal(
            Undo::Rename {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            },
            dirs,
        );
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        self.fail(FaultOp::Remove, "remove", &[path])?;
        let saved = self.save(path).ok();
        StdFs.remove_file(path)?;
        self.shared.state.lock().files.remove(&normalize(path));
        if let Some(saved) = saved {
            self.journal(
                Undo::Remove {
                    path: path.to_path_buf(),
                    saved,
                },
                vec![dir_of(path)],
            );
        }
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> Result<()> {
        self.fail(FaultOp::Remove, "remove directory", &[path])?;
        StdFs.remove_dir_all(path)?;
        let root = normalize(path);
        let mut st = self.shared.state.lock();
        st.files.retain(|p, _| !p.starts_with(&root));
        // Changes below a removed directory can no longer be undone.
        st.journal
            .retain(|j| !j.dirs.iter().any(|d| d.starts_with(&root)));
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> Result<()> {
        self.fail(FaultOp::CreateDir, "create directory", &[path])?;
        StdFs.create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        self.fail(FaultOp::SyncDir, "fsync directory", &[path])?;
        StdFs.sync_dir(path)?;
        let dir = normalize(path);
        self.shared
            .state
            .lock()
            .journal
            .retain(|j| !j.dirs.contains(&dir));
        Ok(())
    }

    fn hard_link(&self, src: &Path, dst: &Path) -> Result<()> {
        self.fail(FaultOp::Link, "hard link", &[dst, src])?;
        StdFs.hard_link(src, dst)?;
        {
            let mut st = self.shared.state.lock();
            if let Some(i) = st.files.get(&normalize(src)).cloned() {
                st.files.insert(normalize(dst), i);
            }
        }
        self.journal(
            Undo::Link {
                dst: dst.to_path_buf(),
            },
            vec![dir_of(dst)],
        );
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        StdFs.list_dir(path)
    }

    fn lock(&self, path: &Path) -> Result<FileLock> {
        StdFs.lock(path)
    }

    fn file_size(&self, path: &Path) -> Result<u64> {
        StdFs.file_size(path)
    }

    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::write_atomic;

    fn write(fs: &FaultFs, path: &Path, data: &[u8], sync: bool) -> Result<()> {
        let mut f = fs.create(path)?;
        f.append(data)?;
        if sync {
            f.sync()
        } else {
            f.flush()
        }
    }

    #[test]
    fn rule_skips_then_fires_the_given_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        fs.add_rule(
            FaultRule::always(FaultOp::Create, FaultError::Enospc)
                .after(2)
                .times(1),
        );
        let p = |i: u32| dir.path().join(format!("f{i}"));
        assert!(fs.create(&p(0)).is_ok());
        assert!(fs.create(&p(1)).is_ok());
        let e = fs.create(&p(2)).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::StorageFull), "{e}");
        assert!(e.to_string().contains("f2"), "{e}");
        assert!(fs.create(&p(3)).is_ok());
        assert_eq!(fs.injected(), 1);
    }

    #[test]
    fn path_filter_limits_a_rule_and_clear_rules_lifts_it() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        fs.add_rule(FaultRule::always(FaultOp::Any, FaultError::Eio).on_path(".wal"));
        assert!(fs.create(&dir.path().join("1.sst")).is_ok());
        let e = fs.create(&dir.path().join("2.wal")).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::Error::from_raw_os_error(5).kind()));
        fs.clear_rules();
        assert!(fs.create(&dir.path().join("2.wal")).is_ok());
    }

    #[test]
    fn failed_write_poisons_the_handle() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        fs.add_rule(FaultRule::always(FaultOp::Write, FaultError::Eio).times(1));
        let mut f = fs.create(&dir.path().join("a")).unwrap();
        assert!(f.append(b"x").is_err());
        assert!(f.append(b"y").is_err());
        assert!(f.sync().is_err());
    }

    #[test]
    fn failed_sync_poisons_the_handle_and_leaves_data_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let fs = FaultFs::new();
        let mut f = fs.create(&p).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        f.append(b"durable").unwrap();
        f.sync().unwrap();
        fs.add_rule(FaultRule::always(FaultOp::Sync, FaultError::Eio).times(1));
        f.append(b" lost").unwrap();
        let e = f.sync().unwrap_err();
        assert!(e.to_string().contains("fsync"), "{e}");
        // The rule fired once; the handle still refuses.
        assert!(f.sync().is_err());
        drop(f);
        fs.power_cut().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"durable");
    }

    #[test]
    fn power_cut_truncates_to_synced_length_and_empties_unsynced_files() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let mut fa = fs.create(&a).unwrap();
        fa.append(b"hello").unwrap();
        fa.sync().unwrap();
        fa.append(b" world").unwrap();
        fa.flush().unwrap();
        write(&fs, &b, b"never synced", false).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"hello world");
        fs.power_cut().unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"hello");
        assert_eq!(fs::read(&b).unwrap(), b"");
        // Handles from before the cut are dead.
        assert!(fa.append(b"!").is_err());
        assert!(fa.sync().is_err());
    }

    #[test]
    fn power_cut_removes_files_created_since_the_last_directory_sync() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let kept = dir.path().join("kept");
        let lost = dir.path().join("lost");
        write(&fs, &kept, b"k", true).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        write(&fs, &lost, b"l", true).unwrap();
        fs.power_cut().unwrap();
        assert_eq!(fs::read(&kept).unwrap(), b"k");
        assert!(!lost.exists());
    }

    #[test]
    fn power_cut_undoes_an_unsynced_rename_and_restores_the_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let cur = dir.path().join("CURRENT");
        write_atomic(fs.as_ref(), &cur, b"old").unwrap();
        // write_atomic without its final directory fsync.
        let tmp = dir.path().join("CURRENT.tmp");
        write(&fs, &tmp, b"new", true).unwrap();
        fs.rename(&tmp, &cur).unwrap();
        assert_eq!(fs::read(&cur).unwrap(), b"new");
        fs.power_cut().unwrap();
        assert_eq!(fs::read(&cur).unwrap(), b"old");
        assert!(!tmp.exists());
    }

    #[test]
    fn power_cut_keeps_a_synced_rename() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let cur = dir.path().join("CURRENT");
        write_atomic(fs.as_ref(), &cur, b"one").unwrap();
        write_atomic(fs.as_ref(), &cur, b"two").unwrap();
        fs.power_cut().unwrap();
        assert_eq!(fs::read(&cur).unwrap(), b"two");
    }

    #[test]
    fn power_cut_brings_back_an_unsynced_removal_and_drops_an_unsynced_link() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let a = dir.path().join("a");
        let l = dir.path().join("l");
        let mut f = fs.create(&a).unwrap();
        f.append(b"synced").unwrap();
        f.sync().unwrap();
        f.append(b"+unsynced").unwrap();
        f.flush().unwrap();
        drop(f);
        fs.sync_dir(dir.path()).unwrap();
        fs.hard_link(&a, &l).unwrap();
        fs.remove_file(&a).unwrap();
        fs.power_cut().unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"synced");
        assert!(!l.exists());
    }

    #[test]
    fn rename_and_sync_dir_faults_leave_the_namespace_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let a = dir.path().join("a");
        write(&fs, &a, b"x", true).unwrap();
        fs.add_rule(FaultRule::always(FaultOp::Rename, FaultError::Eio));
        fs.add_rule(FaultRule::always(FaultOp::SyncDir, FaultError::Enospc));
        assert!(fs.rename(&a, &dir.path().join("b")).is_err());
        assert!(a.exists());
        assert!(fs.sync_dir(dir.path()).is_err());
        fs.power_cut().unwrap();
        // The directory was never synced, so the creation is undone.
        assert!(!a.exists());
        assert_eq!(fs.injected(), 2);
    }

    #[test]
    fn files_not_written_through_the_fault_fs_are_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outside");
        fs::write(&p, b"as is").unwrap();
        let fs = FaultFs::new();
        fs.power_cut().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"as is");
    }
}
