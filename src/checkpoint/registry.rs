//! The shared-file registry: which files in `shared/` the retained and pending checkpoints
//! reference, how often, and under which identity a file can be reused instead of placed
//! again; and how shared files are named.
//!
//! The reference counts are never stored: the store rebuilds them from the retained
//! `_metadata` files at open.
//!
//! # The lock rule
//!
//! The registry lives in the store's one lock (`Core::inner`), which guards bookkeeping
//! only: **no file I/O happens while it is held** — no link, copy, fsync, write, rename,
//! stat or delete. Every operation that touches both the registry and the disk runs in
//! three steps: decide under the lock (and record the decision in the registry), do the
//! I/O with the lock released, then record the outcome under the lock again. What keeps
//! the steps from racing is the state each entry is in:
//!
//! - [`EntryState::Placing`]: a name reserved by one placer, which is linking or copying
//!   the file outside the lock. No one else is given that name, and no one reuses the
//!   entry (it is not in `by_identity` until it is placed). A placer that finds the name
//!   taken on disk by a file the registry does not know (`exists`, or the link's
//!   "already exists") drops its reservation and reserves the next name.
//! - [`EntryState::Placed`]: a whole file that checkpoints may reference; reuse is a
//!   reference count increment under the lock. `durable` tells whether `shared/` was
//!   synced since it was placed: a checkpoint that reuses a file not yet durable syncs
//!   `shared/` itself before its `_metadata` is written.
//! - [`EntryState::Deleting`]: its last reference was dropped (under the lock), so it was
//!   taken out of `by_identity` in the same step: from then on no pending checkpoint can
//!   reuse it, and retention or abort deletes it outside the lock. Its name stays
//!   reserved until the deletion is done and [`Registry::forget`] removes the entry, so a
//!   new placement never lands on a name that is being deleted.
//!
//! Two placers of the same file in one pending checkpoint are ordered by the pending
//! checkpoint's own bookkeeping (the second waits for the first's outcome); in two pending
//! checkpoints each places its own copy under its own name, unless the first placement
//! finished before the second looked (then the second reuses it).
//!
//! Lock order: a pending checkpoint's own lock may be held while the registry's lock is
//! taken, never the other way round.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::ids::CheckpointId;
use super::metadata::FileHandle;
use super::path::SHARED_DIR;
use crate::error::{Error, Result};

/// Longest sanitized owner kept in a shared file's name.
pub(super) const OWNER_NAME_MAX_BYTES: usize = 64;
/// Longest sanitized stem kept in a shared file's name.
pub(super) const STEM_NAME_MAX_BYTES: usize = 128;
/// How many alternative names are tried before a placement gives up.
pub(super) const NAME_ATTEMPTS_MAX: u32 = 1000;

/// Identity of a placed shared file: same owner, same name, same size and crc32c means the
/// same immutable file, which can be referenced instead of placed again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Identity {
    pub(super) owner: String,
    pub(super) local_name: String,
    pub(super) size: u64,
    pub(super) crc32c: u32,
}

/// Where a shared file is in its life (see the module's lock rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryState {
    /// Its name is reserved; the file is being linked or copied outside the lock.
    Placing,
    /// The file is whole; `durable` once `shared/` was synced after it was placed.
    Placed { durable: bool },
    /// Unreferenced: being deleted outside the lock; the name stays reserved.
    Deleting,
}

/// One file in `shared/` that the registry knows.
#[derive(Debug)]
pub(super) struct SharedEntry {
    pub(super) identity: Option<Identity>,
    pub(super) size: u64,
    pub(super) crc32c: u32,
    /// Completed and pending checkpoints that reference the file (each counts once).
    pub(super) refs: u32,
    /// False for files of checkpoints this job does not own: never deleted, never reused.
    pub(super) owned: bool,
    /// Where the file is in its life.
    pub(super) state: EntryState,
}

/// The shared files referenced by retained and pending checkpoints.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Every shared file known, by path relative to the job directory.
    pub(super) shared: BTreeMap<String, SharedEntry>,
    /// The owned, placed file to reuse for an identity.
    pub(super) by_identity: HashMap<Identity, String>,
}

/// Keeps `[A-Za-z0-9_.]` (and `-` when `dash` is true), maps the rest to `_`, truncates.
pub(super) fn sanitize(s: &str, dash: bool, max_bytes: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || (dash && ch == '-') {
                ch
            } else {
                '_'
            }
        })
        .take(max_bytes)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// `<owner>-<stem>-<crc:08x>[.<ext>]`, plus `suffix` before the extension. The owner never
/// contains `-`, so the owner can be read back as the part before the first `-`.
pub(super) fn shared_name(owner: &str, local_name: &str, crc32c: u32, suffix: &str) -> String {
    let base = local_name.rsplit('/').next().unwrap_or(local_name);
    let (stem, ext) = match base.rfind('.') {
        Some(i) if i > 0 && i + 1 < base.len() => (&base[..i], &base[i + 1..]),
        _ => (base, ""),
    };
    let stem = sanitize(stem, true, STEM_NAME_MAX_BYTES);
    let mut name = format!("{owner}-{stem}-{crc32c:08x}{suffix}");
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&sanitize(ext, true, 16));
    }
    name
}

/// The identity of a shared file found in a `_metadata`, when its name carries an owner.
pub(super) fn identity_of(f: &FileHandle) -> Option<Identity> {
    let name = f.path.strip_prefix("shared/")?;
    if name.contains('/') {
        return None;
    }
    let (owner, _) = name.split_once('-')?;
    Some(Identity {
        owner: owner.to_string(),
        local_name: f.local_name.clone(),
        size: f.size,
        crc32c: f.crc32c,
    })
}

impl Registry {
    /// Adds one reference from a retained checkpoint found at open to the shared file `f`.
    pub(super) fn add_ref(&mut self, f: &FileHandle, owned: bool) {
        let e = self
            .shared
            .entry(f.path.clone())
            .or_insert_with(|| SharedEntry {
                identity: identity_of(f),
                size: f.size,
                crc32c: f.crc32c,
                refs: 0,
                owned,
                state: EntryState::Placed { durable: true },
            });
        if e.size != f.size || e.crc32c != f.crc32c {
            tracing::warn!(
                path = %f.path,
                "retained checkpoints disagree on the size or crc32c of a shared file"
            );
        }
        e.refs = e.refs.saturating_add(1);
        e.owned &= owned;
        if e.owned {
            if let Some(id) = &e.identity {
                self.by_identity.insert(id.clone(), f.path.clone());
            }
        }
    }

    /// Takes one more reference on the placed, owned file of `identity`, if there is one:
    /// its path, and whether it is durable.
    pub(super) fn reference(&mut self, identity: &Identity) -> Option<(String, bool)> {
        let path = self.by_identity.get(identity)?;
        let e = self.shared.get_mut(path)?;
        let EntryState::Placed { durable } = e.state else {
            return None;
        };
        e.refs = e.refs.saturating_add(1);
        Some((path.clone(), durable))
    }

    /// Reserves a fresh name in `shared/` for `identity`, placed by checkpoint `by`: the
    /// first name of [`shared_name`]'s sequence that the registry does not know and that
    /// is not in `skip` (names found taken on disk). The entry starts
    /// [`EntryState::Placing`] with the caller's one reference.
    pub(super) fn reserve(
        &mut self,
        identity: &Identity,
        by: CheckpointId,
        skip: &BTreeSet<String>,
    ) -> Result<String> {
        let candidates = std::iter::once(String::new()).chain((0..NAME_ATTEMPTS_MAX).map(|k| {
            if k == 0 {
                format!("-c{by}")
            } else {
                format!("-c{by}-{k}")
            }
        }));
        for suffix in candidates {
            let path = format!(
                "{SHARED_DIR}/{}",
                shared_name(
                    &identity.owner,
                    &identity.local_name,
                    identity.crc32c,
                    &suffix
                )
            );
            if self.shared.contains_key(&path) || skip.contains(&path) {
                continue;
            }
            self.shared.insert(
                path.clone(),
                SharedEntry {
                    identity: Some(identity.clone()),
                    size: identity.size,
                    crc32c: identity.crc32c,
                    refs: 1,
                    owned: true,
                    state: EntryState::Placing,
                },
            );
            return Ok(path);
        }
        Err(Error::InvalidArgument(format!(
            "no free name in {SHARED_DIR}/ for {:?} of {:?}",
            identity.local_name, identity.owner
        )))
    }

    /// Gives back a reservation whose name was found taken on disk (nothing was placed).
    pub(super) fn unreserve(&mut self, path: &str) {
        if self
            .shared
            .get(path)
            .is_some_and(|e| e.state == EntryState::Placing)
        {
            self.shared.remove(path);
        }
    }

    /// Records that the reserved `path` now holds its whole file: from now on it can be
    /// reused.
    pub(super) fn placed(&mut self, path: &str) {
        let Some(e) = self.shared.get_mut(path) else {
            return;
        };
        e.state = EntryState::Placed { durable: false };
        if let Some(id) = &e.identity {
            self.by_identity.insert(id.clone(), path.to_string());
        }
    }

    /// Records that `shared/` was synced after `path` was placed.
    pub(super) fn mark_durable(&mut self, path: &str) {
        if let Some(e) = self.shared.get_mut(path) {
            if let EntryState::Placed { .. } = e.state {
                e.state = EntryState::Placed { durable: true };
            }
        }
    }

    /// Drops one reference to `path`; returns true when the file is now unreferenced and
    /// ours to delete. Its entry then turns [`EntryState::Deleting`] and leaves
    /// `by_identity` (nobody can reuse it any more); the caller deletes the file outside
    /// the lock and then calls [`Registry::forget`]. An unreferenced file that is not ours
    /// is forgotten at once.
    pub(super) fn release(&mut self, path: &str) -> bool {
        let Some(e) = self.shared.get_mut(path) else {
            return false;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 || e.state == EntryState::Deleting {
            return false;
        }
        let owned = e.owned;
        let identity = e.identity.clone();
        if owned {
            e.state = EntryState::Deleting;
        } else {
            self.shared.remove(path);
        }
        if let Some(id) = identity {
            if self.by_identity.get(&id).map(String::as_str) == Some(path) {
                self.by_identity.remove(&id);
                // Fall back to another placed copy of the same file, newest name last.
                let other = self
                    .shared
                    .iter()
                    .rev()
                    .find(|(_, e)| {
                        e.owned
                            && matches!(e.state, EntryState::Placed { .. })
                            && e.identity.as_ref() == Some(&id)
                    })
                    .map(|(p, _)| p.clone());
                if let Some(p) = other {
                    self.by_identity.insert(id, p);
                }
            }
        }
        owned
    }

    /// Removes the entry of a file whose deletion (after [`Registry::release`] returned
    /// true) is done, successful or not: its name may be given out again.
    pub(super) fn forget(&mut self, path: &str) {
        if self
            .shared
            .get(path)
            .is_some_and(|e| e.state == EntryState::Deleting && e.refs == 0)
        {
            self.shared.remove(path);
        }
    }

    /// True when `path` is a file some retained or pending checkpoint references (or is
    /// placing).
    pub(super) fn is_referenced(&self, path: &str) -> bool {
        self.shared
            .get(path)
            .is_some_and(|e| e.state != EntryState::Deleting)
    }
}

/// True when `name` is one the store gives shared files:
/// `<owner>-<stem>-<crc32c:08x>[-c<N>[-<k>]][.<ext>]` (see [`shared_name`]).
pub(super) fn is_shared_name(name: &str) -> bool {
    let stem = match name.rsplit_once('.') {
        Some((base, ext)) if !ext.is_empty() && !ext.contains('-') => base,
        _ => name,
    };
    let tokens: Vec<&str> = stem.split('-').collect();
    let hex8 = |t: &str| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let copy = |t: &str| t.strip_prefix('c').is_some_and(digits);
    let n = tokens.len();
    let crc_at = if n >= 5 && digits(tokens[n - 1]) && copy(tokens[n - 2]) {
        n - 3
    } else if n >= 4 && copy(tokens[n - 1]) {
        n - 2
    } else {
        n.wrapping_sub(1)
    };
    crc_at >= 2 && crc_at < n && hex8(tokens[crc_at]) && !tokens[0].is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::FileRole;

    #[test]
    fn shared_names_are_recognized() {
        for ok in [
            "op_0-000004-b2fc1dc1.sst",
            "count_0-000188-d4b0ca41.sst",
            "op_0-000004-b2fc1dc1-c3.sst",
            "op_0-000004-b2fc1dc1-c3-2.sst",
            "op_0-a-b-0badf00d",
            &shared_name("sum_0", "000012.sst", 0xdead_beef, "-c7"),
        ] {
            assert!(is_shared_name(ok), "{ok}");
        }
        for bad in [
            "stray.sst",
            "000004.sst",
            "op_0-b2fc1dc1.sst",
            "-000004-b2fc1dc1.sst",
            "op_0-000004-b2fc1dc.sst",
            "op_0-000004-b2fc1dc1-x3.sst",
        ] {
            assert!(!is_shared_name(bad), "{bad}");
        }
    }

    #[test]
    fn shared_names_carry_owner_and_never_contain_a_dash_in_the_owner() {
        assert_eq!(
            shared_name(&sanitize("map-1/0", false, 64), "000012.sst", 0xab, ""),
            "map_1_0-000012-000000ab.sst"
        );
        assert_eq!(
            shared_name("o", "MANIFEST", 1, "-c3"),
            "o-MANIFEST-00000001-c3"
        );
        let f = FileHandle {
            role: FileRole::Shared,
            local_name: "000012.sst".into(),
            path: "shared/map_1_0-000012-000000ab.sst".into(),
            size: 1,
            crc32c: 0xab,
        };
        assert_eq!(identity_of(&f).unwrap().owner, "map_1_0");
    }
}
