// Fuzz check `metadata_decode`: a checkpoint's `_metadata` from hostile bytes.
//
// On every input, decoded twice: as a whole `_metadata` file, and as the body of one
// (magic, version and a correct crc32c added, so the fuzzer gets past the checksum):
// - decoding never panics, and an error names the file;
// - every file path of a decoded `_metadata` stays inside the job directory (relative,
//   only normal components) and lies under `shared/` or its own `chk-<N>/`;
// - a decoded `_metadata` encodes back to bytes that decode equal.

use std::path::{Component, Path};

use tidemark::checkpoint::metadata::{FORMAT_VERSION, MAGIC};
use tidemark::checkpoint::path::handle_path_problem;
use tidemark::checkpoint::Metadata;

const METADATA_PATH: &str = "/jobs/fuzz/chk-7/_metadata";

/// Checks one fuzz input (see the file's first comment).
pub fn check(data: &[u8]) {
    check_bytes(data);
    let mut file = Vec::with_capacity(data.len() + 16);
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(data);
    let crc = tidemark::codec::crc32c(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    check_bytes(&file);
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
    for h in m.file_handles() {
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
    let again = Metadata::decode(&m.encode(), path).expect("a decoded _metadata re-encodes");
    assert_eq!(again, m);
}
