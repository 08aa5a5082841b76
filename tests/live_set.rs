//! The store's live-set surface, through the public API: describe a store's file set,
//! encode and decode it, open a new store from a copy of its files, read a key from the
//! tables where they lie; damaged descriptions are errors, never panics.

use std::path::{Path, PathBuf};

use tidemark::lsm::manifest::VersionEdit;
use tidemark::lsm::{Db, FileNumber, LiveSet, LiveSetTable, Options};

fn options() -> Options {
    Options {
        memtable_size_bytes: 32 << 10,
        ..Options::default()
    }
}

/// A store with tables over two levels (`key0007` deleted before the last compaction,
/// `key0008` deleted and `key0001` rewritten after it), and its live set.
fn store_with_tables(dir: &Path) -> (Db, LiveSet) {
    let db = Db::open(dir, options()).unwrap();
    for round in 0..3 {
        for i in 0..400 {
            db.put(format!("key{i:04}"), format!("v{round}-{i}"))
                .unwrap();
        }
        db.delete("key0007").unwrap();
        db.flush().unwrap();
    }
    db.compact_range().unwrap();
    db.put("key0001", "newest").unwrap();
    db.delete("key0008").unwrap();
    let live = db.live_files().unwrap();
    (db, LiveSet::of(&live))
}

fn open_in(
    dir: &Path,
) -> impl FnMut(&LiveSetTable) -> tidemark::Result<(std::fs::File, PathBuf)> + '_ {
    move |t| {
        let p = dir.join(&t.name);
        let f = std::fs::File::open(&p).map_err(|e| tidemark::Error::io("open", &p, e))?;
        Ok((f, p))
    }
}

#[test]
fn encode_decode_restore_reopen_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, set) = store_with_tables(&tmp.path().join("db"));
    let back = LiveSet::decode(&set.encode(), Path::new("set")).unwrap();
    assert_eq!(back, set);
    assert_eq!(back.sequence(), Some(db.stats().last_sequence));
    assert_eq!(back.store_id(), Some(db.id().as_str()));
    let tables = back.tables();
    assert!(tables.len() >= 2, "{tables:?}");
    assert_eq!(back.levels().concat(), tables);
    assert_eq!(
        back.total_bytes(),
        tables.iter().map(|t| t.size).sum::<u64>()
    );
    // The newest write is in level 0, searched first.
    assert_eq!(tables[0].level, 0);
    assert!(tables[0].covers(b"key0001"));

    let src = db.path().to_path_buf();
    let found = back.lookup(b"key0001", open_in(&src)).unwrap();
    assert_eq!(found.value.as_deref(), Some(&b"newest"[..]));
    assert_eq!(found.table.as_ref().map(|t| t.level), Some(0));
    assert_eq!(found.tables_searched, 1);
    let found = back.lookup(b"key0399", open_in(&src)).unwrap();
    assert_eq!(found.value.as_deref(), Some(&b"v2-399"[..]));
    let found = back.lookup(b"key0008", open_in(&src)).unwrap();
    assert!(found.deleted && found.value.is_none());
    assert_eq!(found.table.map(|t| t.level), Some(0));
    // Compaction into the last level dropped the tombstone: nothing left of the key.
    let found = back.lookup(b"key0007", open_in(&src)).unwrap();
    assert!(!found.deleted && found.value.is_none());
    let found = back.lookup(b"nothing", open_in(&src)).unwrap();
    assert_eq!(
        (found.value, found.deleted, found.table),
        (None, false, None)
    );

    // Writes after the set was taken are not in it.
    db.put("key0001", "later").unwrap();
    db.flush().unwrap();
    let restored_dir = tmp.path().join("restored");
    let mut placed = 0;
    let restored = back
        .restore(&restored_dir, options(), |t, to| {
            placed += 1;
            std::fs::hard_link(src.join(&t.name), to)
                .map_err(|e| tidemark::Error::io("link", to, e))
        })
        .unwrap();
    assert_eq!(placed, tables.len());
    assert_eq!(restored.get("key0001").unwrap(), Some(b"newest".to_vec()));
    assert_eq!(restored.get("key0007").unwrap(), None);
    assert_eq!(restored.get("key0008").unwrap(), None);
    assert_eq!(restored.iter().unwrap().count(), 398);
    restored.put("key0002", "own").unwrap();
    restored.close().unwrap();
    let reopened = Db::open(&restored_dir, options()).unwrap();
    assert_eq!(reopened.get("key0002").unwrap(), Some(b"own".to_vec()));
    assert_eq!(reopened.get("key0001").unwrap(), Some(b"newest".to_vec()));
    drop(reopened);

    // Into a directory that is not empty: refused before anything is placed.
    let e = back
        .restore(&restored_dir, options(), |_, _| panic!("placed a file"))
        .unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");

    // A placed file of the wrong size is refused.
    let e = back
        .restore(&tmp.path().join("short"), options(), |_, to| {
            std::fs::write(to, b"short").map_err(|e| tidemark::Error::io("write", to, e))
        })
        .unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
}

#[test]
fn damaged_descriptions_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, set) = store_with_tables(&tmp.path().join("db"));
    let bytes = set.encode();
    let path = Path::new("chk-1/op_0.manifest");
    for cut in 0..bytes.len() {
        match LiveSet::decode(&bytes[..cut], path) {
            Ok(partial) => assert!(partial.tables().len() <= set.tables().len()),
            Err(e) => assert!(e.to_string().contains("op_0.manifest"), "{e}"),
        }
    }
    let mut x: u32 = 7;
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        b[i] ^= (x >> 16) as u8 | 1;
        match LiveSet::decode(&b, path) {
            Err(e) => assert!(e.to_string().contains("op_0.manifest"), "{e}"),
            // A flip that still decodes: reading through it errors or answers, never panics.
            Ok(damaged) => {
                let _ = damaged.lookup(b"key0100", open_in(db.path()));
            }
        }
    }
    let edit = VersionEdit::decode(&bytes, path, 0).unwrap();
    let mut twice = edit.clone();
    twice.new_files.push(twice.new_files[0].clone());
    let mut b = Vec::new();
    twice.encode(&mut b);
    let e = LiveSet::decode(&b, path).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let mut deleting = edit;
    deleting.deleted_files.push((1, FileNumber(3)));
    let mut b = Vec::new();
    deleting.encode(&mut b);
    assert!(LiveSet::decode(&b, path).is_err());
}
