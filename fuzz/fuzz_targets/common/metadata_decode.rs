// Fuzz check `metadata_decode`: a checkpoint's `_metadata` from hostile bytes.
//
// On every input, decoded four times: as a whole `_metadata` file, and as the body of a
// version 3, a version 2 and a version 1 one (magic, version and a correct crc32c added, so
// the fuzzer gets past the checksum):
// - decoding never panics, and an error names the file;
// - every file path of a decoded `_metadata` stays inside the job directory (relative,
//   only normal components) and lies under `shared/` or its own `chk-<N>/`, or, a savepoint
//   file, in a version 3 savepoint (and then every file of it is one);
// - every keyed-state handle lies in its subtask's key groups, with one offset per key
//   group, non-decreasing and inside its data; every partition offset too;
// - a decoded `_metadata` encodes back (as version 3) to bytes that decode equal.

use std::path::{Component, Path};

use tidemark::checkpoint::metadata::{FORMAT_VERSION, MAGIC, OLDEST_READABLE_VERSION};
use tidemark::checkpoint::path::handle_path_problem;
use tidemark::checkpoint::{FileRole, KeyedState, Metadata, StateData};

const METADATA_PATH: &str = "/jobs/fuzz/chk-7/_metadata";

/// Checks one fuzz input (see the file's first comment).
pub fn check(data: &[u8]) {
    check_bytes(data);
    for version in [FORMAT_VERSION, 2, OLDEST_READABLE_VERSION] {
        let mut file = Vec::with_capacity(data.len() + 16);
        file.extend_from_slice(&MAGIC);
        file.extend_from_slice(&version.to_le_bytes());
        file.extend_from_slice(data);
        let crc = tidemark::codec::crc32c(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        check_bytes(&file);
    }
}

/// Offsets non-decreasing and at most `len`.
fn offsets_fit(offsets: &[u64], len: u64) -> bool {
    offsets.windows(2).all(|w| w[0] <= w[1]) && offsets.iter().all(|o| *o <= len)
}

fn confined(entry: &str) -> bool {
    let p = Path::new(entry);
    !entry.is_empty()
        && !entry.contains('\0')
        && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn check_bytes(bytes: &[u8]) {
    let path = Path::new(METADATA_PATH);
    let m = match Metadata::decode(bytes, path) {
        Ok(m) => m,
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains(METADATA_PATH),
                "error does not name the file: {s}"
            );
            return;
        }
    };
    let version = Metadata::version_of(bytes).unwrap_or(0);
    let self_contained = version >= 3 && m.kind.is_savepoint();
    for h in m.file_handles() {
        assert_eq!(
            h.role == FileRole::Savepoint,
            self_contained,
            "a {} file in a version {version} {}",
            h.role.as_str(),
            m.kind
        );
        assert!(
            confined(&h.path),
            "decoded path {:?} leaves the job directory",
            h.path
        );
        assert_eq!(
            handle_path_problem(&h.path, h.role, m.checkpoint_id),
            None,
            "decoded an unsafe path {:?}",
            h.path
        );
    }
    for s in &m.operator_states {
        assert!(s.subtask_index < s.parallelism && s.parallelism <= s.max_parallelism);
        assert!(s.key_groups.end() < s.max_parallelism);
        for h in &s.keyed_state {
            let r = h.key_groups;
            assert!(s.key_groups.contains_range(&r));
            let (offsets, len) = match &h.state {
                KeyedState::IncrementalLsm(_) => continue,
                KeyedState::KeyGroupsFile { file, offsets }
                | KeyedState::CanonicalFile { file, offsets } => (offsets, file.size),
                KeyedState::KeyGroupsInline { bytes, offsets } => (offsets, bytes.len() as u64),
            };
            assert_eq!(offsets.len() as u64, r.len(), "one offset per key group");
            assert!(offsets_fit(offsets, len), "key-group offsets {offsets:?} in {len}");
        }
        for h in &s.operator_state {
            let len = match &h.data {
                StateData::File(f) => f.size,
                StateData::Inline(b) => b.len() as u64,
            };
            for n in &h.states {
                assert!(offsets_fit(&n.offsets, len), "partition offsets in {len}");
            }
        }
    }
    let again = Metadata::decode(&m.encode(), path).expect("a decoded _metadata re-encodes");
    assert_eq!(again, m);
}
