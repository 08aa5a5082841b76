// Fuzz check `manifest_replay`: the manifest reader, the version-edit decoder and the
// replay of edits into a version set, over hostile bytes.
//
// On every input:
// 1. The input as one version edit: decoding never panics; an edit that decodes encodes
//    back to an edit that decodes equal (the decoder accepts nothing the encoder cannot say).
// 2. The input as a whole manifest file (`read_manifest`, with the file number taken from
//    its header so the reader gets past it): never a panic; errors name the file.
// 3. The input cut into records, each decoded as an edit, the good ones replayed by
//    `VersionSet::recover`: never a panic, and a recovered version keeps its invariants
//    (levels >= 1 sorted and non-overlapping, every file's smallest key <= largest key).

use std::path::Path;
use std::sync::Arc;

use tidemark::fs::StdFs;
use tidemark::lsm::manifest::{read_manifest, VersionEdit};
use tidemark::lsm::types::{compare_internal_keys, user_key};
use tidemark::lsm::version::TableContext;
use tidemark::lsm::version_set::VersionSet;
use tidemark::lsm::FileNumber;

include!("support.rs");

const MANIFEST_NAME: &str = "MANIFEST-000005";

/// Checks one fuzz input (see the file's first comment).
pub fn check(data: &[u8]) {
    check_edit(data);
    check_manifest_file(data);
    check_recover(data);
}

fn check_edit(data: &[u8]) {
    let path = Path::new(MANIFEST_NAME);
    match VersionEdit::decode(data, path, 100) {
        Ok(edit) => {
            let mut buf = Vec::new();
            edit.encode(&mut buf);
            let again = VersionEdit::decode(&buf, path, 0).expect("a decoded edit re-encodes");
            assert_eq!(again, edit);
        }
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains(MANIFEST_NAME),
                "error does not name the file: {s}"
            );
        }
    }
}

fn check_manifest_file(data: &[u8]) {
    // Header record: 7-byte fragment header, 8-byte magic, u32 version, u8 kind, u64 number.
    let number = data
        .get(20..28)
        .map_or(5, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let path = scratch_path(&format!("MANIFEST-{number}"));
    std::fs::write(&path, data).expect("write scratch manifest");
    match read_manifest(&StdFs, &path, FileNumber(number)) {
        Ok(edits) => assert!(!edits.is_empty(), "a manifest without edits was accepted"),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains(&*path.to_string_lossy()),
                "error does not name the file: {s}"
            );
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn check_recover(data: &[u8]) {
    let mut input = Input::new(data);
    let mut edits = Vec::new();
    while !input.is_empty() && edits.len() < 32 {
        let record = input.bytes(400);
        if let Ok(e) = VersionEdit::decode(record, Path::new(MANIFEST_NAME), 0) {
            edits.push(e);
        }
    }
    let ctx = Arc::new(TableContext {
        dir: scratch_dir().to_path_buf(),
        fs: StdFs::shared(),
        cache: None,
        verify_checksums: true,
        table_reads: tidemark::lsm::TableReads::Positioned,
    });
    let Ok(vs) = VersionSet::recover(ctx, 7, &edits, Path::new(MANIFEST_NAME)) else {
        return;
    };
    let v = vs.current();
    for (level, files) in v.levels.iter().enumerate() {
        for f in files {
            assert!(
                compare_internal_keys(&f.smallest, &f.largest).is_le(),
                "table {} has smallest > largest",
                f.number
            );
        }
        if level == 0 {
            continue;
        }
        for pair in files.windows(2) {
            assert!(
                user_key(&pair[0].largest) < user_key(&pair[1].smallest),
                "tables {} and {} overlap in level {level}",
                pair[0].number,
                pair[1].number
            );
        }
    }
}
