//! The shared-file registry: which files in `shared/` the retained and pending checkpoints
//! reference, how often, and under which identity a file can be reused instead of placed
//! again; and how shared files are named.
//!
//! The reference counts are never stored: the store rebuilds them from the retained
//! `_metadata` files at open.

use std::collections::{BTreeMap, HashMap};

use super::metadata::FileHandle;

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

#[derive(Debug)]
pub(super) struct SharedEntry {
    pub(super) identity: Option<Identity>,
    pub(super) size: u64,
    pub(super) crc32c: u32,
    /// Completed and pending checkpoints that reference the file (each counts once).
    pub(super) refs: u32,
    /// False for files of checkpoints this job does not own: never deleted, never reused.
    pub(super) owned: bool,
}

/// The shared files referenced by retained and pending checkpoints.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Every referenced shared file, by path relative to the job directory.
    pub(super) shared: BTreeMap<String, SharedEntry>,
    /// The owned file to reuse for an identity.
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
    /// Adds one reference from a checkpoint to the shared file `f`.
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

    /// Drops one reference to `path`; returns true when the file is now unreferenced and
    /// ours to delete (its entry is then removed).
    pub(super) fn release(&mut self, path: &str) -> bool {
        let Some(e) = self.shared.get_mut(path) else {
            return false;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            return false;
        }
        let owned = e.owned;
        let identity = e.identity.clone();
        self.shared.remove(path);
        if let Some(id) = identity {
            if self.by_identity.get(&id).map(String::as_str) == Some(path) {
                self.by_identity.remove(&id);
                // Fall back to another live copy of the same file, newest name last.
                let other = self
                    .shared
                    .iter()
                    .rev()
                    .find(|(_, e)| e.owned && e.identity.as_ref() == Some(&id))
                    .map(|(p, _)| p.clone());
                if let Some(p) = other {
                    self.by_identity.insert(id, p);
                }
            }
        }
        owned
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
