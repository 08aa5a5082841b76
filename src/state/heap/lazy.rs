//! Restoring a heap backend a key group at a time.
//!
//! A restore reads the headers of its snapshots and plans where each key group's blocks
//! are; the key groups themselves are read (a positioned read of the block, its crc32c
//! checked) and decoded into shards when first used, and meanwhile by a thread of their own
//! from the first to the last, so that records flow before the whole state is in memory.
//!
//! Each key group goes `Pending` → `Loading` → `Done` → `Taken` (installed in the backend).
//! The processing thread takes a key group when a key of it is first set, waiting if the
//! loader is decoding it; a snapshot taken before a key group is installed holds the key
//! group as restored (its decoded shards, or it decodes them itself in its asynchronous
//! part), which is what the state of that key group still is. A key group that fails to
//! load fails every later use of the backend with the error that names the file and offset.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use super::{GroupLayout, Shard};
use crate::codec::crc32c;
use crate::error::{Error, Result};
use crate::state::keyed::{StateId, StateMeta};

/// Most bytes of a snapshot's header read on a restore (its states' names and types).
pub(super) const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Where the bytes of a key-groups snapshot are read from on a restore.
#[derive(Debug)]
pub enum KeyGroupsData {
    /// The whole snapshot in memory (inline in `_metadata`, or fetched from a storage that
    /// cannot be read in place).
    Bytes(Arc<[u8]>),
    /// A local file read in place, one key group's block at a time, by positioned reads.
    File {
        /// The opened file.
        file: File,
        /// Its size, as `_metadata` records it (and as the file was found to be).
        size: u64,
    },
}

impl KeyGroupsData {
    /// The size of the snapshot.
    pub fn len(&self) -> u64 {
        match self {
            KeyGroupsData::Bytes(b) => b.len() as u64,
            KeyGroupsData::File { size, .. } => *size,
        }
    }

    /// True for an empty snapshot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` bytes at `at`, named `name` in errors; a read past the end is corruption.
    pub(super) fn read(&self, name: &str, at: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        let past_end = || {
            Error::corruption(
                name,
                at,
                format!(
                    "{len} bytes at offset {at} run past the end of the {} bytes",
                    self.len()
                ),
            )
        };
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.len())
            .ok_or_else(past_end)?;
        match self {
            KeyGroupsData::Bytes(b) => Ok(Cow::Borrowed(&b[at as usize..end as usize])),
            KeyGroupsData::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len as usize];
                match file.read_exact_at(&mut buf, at) {
                    Ok(()) => Ok(Cow::Owned(buf)),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(past_end()),
                    Err(e) => Err(Error::io(
                        "read",
                        name,
                        std::io::Error::new(e.kind(), format!("{len} bytes at offset {at}: {e}")),
                    )),
                }
            }
        }
    }

    /// The body of key group `group`'s block at `at`, which ends at `end` (where the next
    /// one starts), its length and crc32c checked, and where the body starts. Nothing
    /// beyond the block is read or allocated, whatever its length field says.
    fn block(&self, name: &str, group: u32, at: u64, end: u64) -> Result<(Cow<'_, [u8]>, u64)> {
        if at.checked_add(8).is_none_or(|e| e > self.len()) {
            return Err(Error::corruption(
                name,
                at,
                format!("key group {group} starts past the end"),
            ));
        }
        let head = self.read(name, at, 8)?;
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let body_at = at + 8;
        if len
            .checked_add(4)
            .and_then(|n| n.checked_add(body_at))
            .is_none_or(|e| e > self.len())
        {
            return Err(Error::corruption(
                name,
                at,
                format!("key group {group} of {len} bytes runs past the end"),
            ));
        }
        if len.checked_add(12) != end.checked_sub(at) {
            return Err(Error::corruption(
                name,
                at,
                format!(
                    "key group {group} of {len} bytes does not fill its block ({at}..{end}, \
                     from its offset to the next key group's)"
                ),
            ));
        }
        let mut block = self.read(name, body_at, len + 4)?;
        let n = len as usize;
        let crc = u32::from_le_bytes(block[n..].try_into().expect("4 bytes"));
        if crc32c(&block[..n]) != crc {
            return Err(Error::corruption(
                name,
                at,
                format!("key group {group}: crc32c mismatch"),
            ));
        }
        match &mut block {
            Cow::Borrowed(b) => *b = &b[..n],
            Cow::Owned(v) => v.truncate(n),
        }
        Ok((block, body_at))
    }
}

/// One snapshot a restore reads from: its name for errors, its bytes, and its state
/// indexes mapped to the backend's state ids.
#[derive(Debug)]
pub(super) struct Source {
    pub(super) name: String,
    pub(super) data: KeyGroupsData,
    pub(super) ids: Vec<StateId>,
}

/// Where one block of a key group is: in source `source`, from `at` up to `end` (the next
/// key group's offset, or the end of the snapshot).
#[derive(Debug, Clone, Copy)]
pub(super) struct Block {
    pub(super) source: usize,
    pub(super) at: u64,
    pub(super) end: u64,
}

/// Shards of a key group as decoded, and the change of the backend's byte count.
pub(super) type Loaded = (Vec<Arc<Shard>>, isize);

enum Load {
    Pending,
    Loading,
    Done(Result<Loaded>),
    Taken,
}

/// What the processing thread, the loader thread and snapshots share.
struct Shared {
    layout: GroupLayout,
    states: Vec<StateMeta>,
    sources: Vec<Source>,
    /// Per key group (index from the backend's first): the blocks holding its entries.
    plan: Vec<Vec<Block>>,
    slots: Mutex<Vec<Load>>,
    ready: Condvar,
    stop: AtomicBool,
    failed: OnceLock<Error>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("sources", &self.sources.len())
            .field("groups", &self.plan.len())
            .field("failed", &self.failed.get())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Load>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and decodes key group index `gi` from its blocks.
    fn decode(&self, gi: usize) -> Result<Loaded> {
        let group = self.layout.first_group + gi as u32;
        let run = || -> Result<Loaded> {
            let mut shards: Vec<Arc<Shard>> = (0..self.layout.shards_per_group)
                .map(|_| Arc::new(Shard::default()))
                .collect();
            let mut added = 0isize;
            for b in &self.plan[gi] {
                let s = &self.sources[b.source];
                let (body, body_at) = s.data.block(&s.name, group, b.at, b.end)?;
                added += self.layout.decode_body(
                    &self.states,
                    &s.name,
                    &body,
                    body_at,
                    group,
                    &s.ids,
                    &mut shards,
                )?;
            }
            Ok((shards, added))
        };
        catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| {
            let (src, at) = self.plan[gi].first().map_or((0, 0), |b| (b.source, b.at));
            let name = self
                .sources
                .get(src)
                .map_or("<snapshot>", |s| s.name.as_str());
            Err(Error::corruption(
                name,
                at,
                format!("decoding key group {group} panicked"),
            ))
        })
    }

    /// Key group index `gi`, decoded by whoever gets to it first: taken out of the shared
    /// slots when `take` (the processing thread installs it), left there for others
    /// otherwise. A key group already taken is decoded again from its blocks (its
    /// state as restored, which a snapshot taken before it was installed still needs).
    fn obtain(&self, gi: usize, take: bool) -> Result<Loaded> {
        let mut slots = self.lock();
        loop {
            match &slots[gi] {
                Load::Loading => {
                    slots = self
                        .ready
                        .wait(slots)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Load::Taken => {
                    drop(slots);
                    return self.decode(gi);
                }
                Load::Done(Ok(_)) if take => {
                    let Load::Done(r) = std::mem::replace(&mut slots[gi], Load::Taken) else {
                        unreachable!("matched as done")
                    };
                    return r;
                }
                Load::Done(r) => return r.clone(),
                Load::Pending => {
                    slots[gi] = Load::Loading;
                    drop(slots);
                    let r = self.decode(gi);
                    if let Err(e) = &r {
                        let _ = self.failed.set(e.clone());
                    }
                    let mut slots = self.lock();
                    slots[gi] = match &r {
                        Ok(_) if take => Load::Taken,
                        _ => Load::Done(r.clone()),
                    };
                    self.ready.notify_all();
                    return r;
                }
            }
        }
    }

    /// The loader: every key group not yet loaded, first to last, until stopped or one
    /// fails.
    fn load_all(&self) {
        for gi in 0..self.plan.len() {
            if self.stop.load(Ordering::Relaxed) || self.failed.get().is_some() {
                return;
            }
            if !matches!(self.lock()[gi], Load::Pending) {
                continue;
            }
            if self.obtain(gi, false).is_err() {
                return;
            }
        }
    }
}

/// The key groups of a restored backend not yet installed, held by the backend.
#[derive(Debug)]
pub(super) struct Lazy {
    shared: Arc<Shared>,
    pending: Vec<bool>,
    remaining: usize,
}

impl Lazy {
    /// Plans a lazy restore of the key groups of `plan` (per key group index, the blocks of
    /// `sources` holding it); `None` when no key group has a block. With `background`, a
    /// thread loads every key group, first to last, meanwhile.
    pub(super) fn start(
        layout: GroupLayout,
        states: Vec<StateMeta>,
        sources: Vec<Source>,
        plan: Vec<Vec<Block>>,
        background: bool,
    ) -> Option<Lazy> {
        let pending: Vec<bool> = plan.iter().map(|p| !p.is_empty()).collect();
        let remaining = pending.iter().filter(|&&p| p).count();
        if remaining == 0 {
            return None;
        }
        let slots = pending
            .iter()
            .map(|&p| if p { Load::Pending } else { Load::Taken })
            .collect();
        let shared = Arc::new(Shared {
            layout,
            states,
            sources,
            plan,
            slots: Mutex::new(slots),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
            failed: OnceLock::new(),
        });
        if background {
            let s = shared.clone();
            // Without the thread, key groups load when used: slower, not wrong.
            let _ = std::thread::Builder::new()
                .name("tidemark-restore".into())
                .spawn(move || s.load_all());
        }
        Some(Lazy {
            shared,
            pending,
            remaining,
        })
    }

    /// The first error a key group failed to load with, if any did.
    pub(super) fn failure(&self) -> Option<Error> {
        self.shared.failed.get().cloned()
    }

    /// True while key group index `gi` is not installed.
    pub(super) fn is_pending(&self, gi: usize) -> bool {
        self.pending[gi]
    }

    /// True once every key group is installed.
    pub(super) fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// Key group index `gi`, to install: decoded here, or by the loader (waiting for it
    /// if it is decoding it now).
    pub(super) fn take(&mut self, gi: usize) -> Result<Loaded> {
        let loaded = self.shared.obtain(gi, true)?;
        self.pending[gi] = false;
        self.remaining -= 1;
        Ok(loaded)
    }

    /// The key groups not installed now, for a snapshot.
    pub(super) fn frozen(&self) -> Frozen {
        Frozen {
            shared: self.shared.clone(),
            pending: self.pending.clone(),
        }
    }
}

impl Drop for Lazy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The key groups a snapshot saw not yet installed: their state is the restored one.
#[derive(Debug, Clone)]
pub(super) struct Frozen {
    shared: Arc<Shared>,
    pending: Vec<bool>,
}

impl Frozen {
    /// Key group index `gi` as restored when the snapshot did not see it installed,
    /// `None` when the snapshot holds it.
    pub(super) fn restored(&self, gi: usize) -> Result<Option<Vec<Arc<Shard>>>> {
        if !self.pending[gi] {
            return Ok(None);
        }
        Ok(Some(self.shared.obtain(gi, false)?.0))
    }
}
