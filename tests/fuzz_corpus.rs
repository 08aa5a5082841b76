//! Replays every file of the fuzz seed corpora (`fuzz/corpus-seed/<target>/`) and of the
//! kept crash reproducers (`fuzz/regressions/<target>/`) through the same check functions
//! the cargo-fuzz targets run, so that what fuzzing once found stays fixed on stable.

#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[allow(dead_code, clippy::all)]
mod wal_replay {
    include!("../fuzz/fuzz_targets/common/wal_replay.rs");
}

#[allow(dead_code, clippy::all)]
mod sst_open_scan {
    include!("../fuzz/fuzz_targets/common/sst_open_scan.rs");
}

#[allow(dead_code, clippy::all)]
mod manifest_replay {
    include!("../fuzz/fuzz_targets/common/manifest_replay.rs");
}

#[allow(dead_code, clippy::all)]
mod metadata_decode {
    include!("../fuzz/fuzz_targets/common/metadata_decode.rs");
}

#[allow(dead_code, clippy::all)]
mod db_model {
    include!("../fuzz/fuzz_targets/common/db_model.rs");
}

#[allow(dead_code, clippy::all)]
mod checkpoint_tree {
    include!("../fuzz/fuzz_targets/common/checkpoint_tree.rs");
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus-seed", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for e in entries {
            let p = e.expect("list corpus").path();
            if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = inputs(target);
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{target}: input {} fails its check", f.display());
    }
    files.len()
}

#[test]
fn wal_replay_corpus_passes() {
    assert!(
        replay("wal_replay", wal_replay::check) > 0,
        "no seed inputs"
    );
}

#[test]
fn sst_open_scan_corpus_passes() {
    assert!(
        replay("sst_open_scan", sst_open_scan::check) > 0,
        "no seed inputs"
    );
}

#[test]
fn manifest_replay_corpus_passes() {
    assert!(
        replay("manifest_replay", manifest_replay::check) > 0,
        "no seed inputs"
    );
}

#[test]
fn metadata_decode_corpus_passes() {
    assert!(
        replay("metadata_decode", metadata_decode::check) > 0,
        "no seed inputs"
    );
}

#[test]
fn db_model_corpus_passes() {
    assert!(replay("db_model", db_model::check) > 0, "no seed inputs");
}

/// The `_metadata` `md` (a store's checkpoint 2) with, added, a subtask of each other
/// handle kind: a key-groups file, inline key groups, and file and inline operator state.
fn typed_handles_metadata(md: &[u8]) -> Vec<u8> {
    use tidemark::checkpoint::{
        FileHandle, FileRole, KeyGroupRange, KeyedState, KeyedStateHandle, Metadata,
        NamedOperatorState, OperatorStateHandle, OperatorSubtaskState, RedistributionMode,
        StateData,
    };
    let mut m = Metadata::decode(md, Path::new("chk-2/_metadata")).expect("seed decodes");
    let private = |name: &str, size: u64| FileHandle {
        role: FileRole::Private,
        local_name: name.into(),
        path: format!("chk-2/{name}"),
        size,
        crc32c: 0x1234_5678,
    };
    for (index, range) in [(0u32, (0u32, 1u32)), (1, (2, 3))] {
        let key_groups = KeyGroupRange::new(range.0, range.1).unwrap();
        let keyed = if index == 0 {
            KeyedState::KeyGroupsFile {
                file: private("win_0", 40),
                offsets: vec![0, 25],
            }
        } else {
            KeyedState::KeyGroupsInline {
                bytes: b"abcdef".to_vec(),
                offsets: vec![0, 6],
            }
        };
        m.operator_states.push(OperatorSubtaskState {
            operator_id: "win".into(),
            subtask_index: index,
            parallelism: 2,
            max_parallelism: 4,
            key_groups,
            keyed_state: vec![KeyedStateHandle {
                backend: if index == 0 { "filesystem" } else { "memory" }.into(),
                key_groups,
                state: keyed,
            }],
            operator_state: vec![OperatorStateHandle {
                backend: "memory".into(),
                data: if index == 0 {
                    StateData::File(private("win_0.op", 9))
                } else {
                    StateData::Inline(vec![1, 2, 3])
                },
                states: vec![
                    NamedOperatorState {
                        name: "offsets".into(),
                        mode: RedistributionMode::Union,
                        offsets: vec![0, 1],
                    },
                    NamedOperatorState {
                        name: "splits".into(),
                        mode: RedistributionMode::SplitDistribute,
                        offsets: vec![1, 2, 3],
                    },
                    NamedOperatorState {
                        name: "rules".into(),
                        mode: RedistributionMode::Broadcast,
                        offsets: vec![],
                    },
                ],
            }],
        });
    }
    m.validate(Path::new("chk-2/_metadata")).expect("valid");
    m.encode()
}

#[test]
fn version_1_seed_still_decodes_as_an_lsm_file_set() {
    use tidemark::checkpoint::{KeyedState, Metadata};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seed/metadata_decode");
    let v1 = std::fs::read(root.join("v1-checkpoint-2")).expect("read the version 1 seed");
    assert_eq!(Metadata::version_of(&v1), Some(1));
    let m = Metadata::decode(&v1, Path::new("seedjob/chk-2/_metadata")).unwrap();
    assert_eq!(m.operator_states.len(), 1);
    let s = &m.operator_states[0];
    assert_eq!((s.parallelism, s.max_parallelism), (1, 128));
    assert_eq!(s.keyed_state.len(), 1);
    assert_eq!(s.keyed_state[0].backend, "lsm");
    let KeyedState::IncrementalLsm(set) = &s.keyed_state[0].state else {
        panic!("{:?}", s.keyed_state[0]);
    };
    assert_eq!(set.manifest.path, "chk-2/counter_0.manifest");
    assert!(!set.tables.is_empty());
    assert!(set.tables.iter().all(|t| t.local_name.ends_with(".sst")));
    // The same checkpoint written again (as version 3) reads back the same.
    let v3 = m.encode();
    assert_eq!(Metadata::version_of(&v3), Some(3));
    assert_eq!(
        Metadata::decode(&v3, Path::new("chk-2/_metadata")).unwrap(),
        m
    );
    // The seeds of version 2 hold every handle kind.
    let typed = std::fs::read(root.join("typed-handles")).expect("read the typed seed");
    let t = Metadata::decode(&typed, Path::new("chk-2/_metadata")).unwrap();
    let kinds: std::collections::BTreeSet<_> = t
        .operator_states
        .iter()
        .flat_map(|s| s.keyed_state.iter().map(|h| h.kind_name()))
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    // The savepoint seed (version 3) is a canonical savepoint of canonical files.
    let sp = std::fs::read(root.join("canonical-savepoint")).expect("read the savepoint seed");
    assert_eq!(Metadata::version_of(&sp), Some(3));
    let m = Metadata::decode(&sp, Path::new("savepoint-seedjo-0/_metadata")).unwrap();
    assert_eq!(
        m.kind,
        tidemark::checkpoint::CheckpointKind::CanonicalSavepoint
    );
    assert_eq!(
        sp,
        savepoint_metadata(&typed),
        "the seed is what its writer writes"
    );
    let kinds: std::collections::BTreeSet<_> = m
        .operator_states
        .iter()
        .flat_map(|s| s.keyed_state.iter().map(|h| h.kind_name()))
        .collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["canonical-file"]);
}

/// The typed-handles seed `typed` made a canonical savepoint: its key-groups file a
/// canonical file, every file in the savepoint directory, the other keyed state left out.
fn savepoint_metadata(typed: &[u8]) -> Vec<u8> {
    use tidemark::checkpoint::{CheckpointKind, FileRole, KeyedState, Metadata, StateData};
    let mut m = Metadata::decode(typed, Path::new("chk-2/_metadata")).expect("seed decodes");
    m.kind = CheckpointKind::CanonicalSavepoint;
    let relocate = |f: &mut tidemark::checkpoint::FileHandle| {
        f.role = FileRole::Savepoint;
        f.path = f.path.rsplit('/').next().unwrap_or_default().to_string();
    };
    for s in &mut m.operator_states {
        s.keyed_state
            .retain(|h| matches!(h.state, KeyedState::KeyGroupsFile { .. }));
        for h in &mut s.keyed_state {
            if let KeyedState::KeyGroupsFile { file, offsets } = &h.state {
                let (mut file, offsets) = (file.clone(), offsets.clone());
                relocate(&mut file);
                h.state = KeyedState::CanonicalFile { file, offsets };
            }
        }
        for h in &mut s.operator_state {
            if let StateData::File(f) = &mut h.data {
                relocate(f);
            }
        }
    }
    m.validate(Path::new("savepoint-seedjo-0/_metadata"))
        .expect("valid");
    m.encode()
}

/// Writes the savepoint seeds (from the typed-handles seed):
/// `cargo test --test fuzz_corpus -- --ignored regenerate_savepoint_seed`.
#[test]
#[ignore = "writes fuzz/corpus-seed; run by hand when the format changes"]
fn regenerate_savepoint_seed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seed/metadata_decode");
    let typed = std::fs::read(root.join("typed-handles")).unwrap();
    let sp = savepoint_metadata(&typed);
    std::fs::write(root.join("canonical-savepoint"), &sp).unwrap();
    std::fs::write(root.join("canonical-savepoint-body"), &sp[12..sp.len() - 4]).unwrap();
}

#[test]
fn checkpoint_tree_corpus_passes() {
    assert!(
        replay("checkpoint_tree", checkpoint_tree::check) > 0,
        "no seed inputs"
    );
}

#[test]
fn checks_accept_empty_and_tiny_inputs() {
    for data in [&b""[..], b"\0", b"\xff\xff\xff", &[7u8; 40]] {
        wal_replay::check(data);
        sst_open_scan::check(data);
        manifest_replay::check(data);
        metadata_decode::check(data);
        db_model::check(data);
    }
}

/// Regenerates the seed corpora from real stores:
/// `cargo test --test fuzz_corpus -- --ignored regenerate_seed_corpora`.
#[test]
#[ignore = "writes fuzz/corpus-seed; run by hand when a format changes"]
fn regenerate_seed_corpora() {
    use tidemark::lsm::{Db, Options, SyncMode, WriteBatch};

    let seed_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seed");
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = seed_root.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    let files_with = |dir: &Path, suffix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.to_string_lossy().ends_with(suffix)
                    || p.file_name().unwrap().to_string_lossy().starts_with(suffix)
            })
            .collect();
        v.sort();
        v
    };

    // A store with two small tables, an unflushed WAL and a manifest.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync: SyncMode::None,
        block_size_bytes: 256,
        ..Options::default()
    };
    {
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        for round in 0..2u32 {
            for i in 0..60u32 {
                db.put(format!("key{i:03}"), format!("value-{round}-{i}"))
                    .unwrap();
            }
            db.delete(format!("key{:03}", round * 7)).unwrap();
            db.flush().unwrap();
        }
        let mut b = WriteBatch::new();
        b.put(b"batch-a", b"1")
            .delete(b"key001")
            .put(b"batch-b", vec![b'x'; 300]);
        db.write(b).unwrap();
        db.put(b"last", b"write").unwrap();
        // Leave the WAL unflushed by dropping without a flush.
    }
    for (i, p) in files_with(dir.path(), ".wal").iter().enumerate() {
        let data = std::fs::read(p).unwrap();
        if !data.is_empty() {
            put("wal_replay", &format!("store-wal-{i}"), &data);
        }
    }
    for (i, p) in files_with(dir.path(), ".sst").iter().enumerate() {
        put(
            "sst_open_scan",
            &format!("store-table-{i}"),
            &std::fs::read(p).unwrap(),
        );
    }
    for (i, p) in files_with(dir.path(), "MANIFEST-").iter().enumerate() {
        put(
            "manifest_replay",
            &format!("store-manifest-{i}"),
            &std::fs::read(p).unwrap(),
        );
    }

    // A checkpoint of a store: its _metadata, whole and without magic, version and crc (the
    // target's second reading adds them).
    {
        use store_checkpoint::checkpoint_db;
        use tidemark::checkpoint::{
            CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore, JobId, KeyGroupRange,
            LocalStorage, SourceOffset,
        };
        use tidemark::state::lsm_snapshot::SubtaskId;
        let root = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(
            tidemark::fs::StdFs::shared(),
            root.path(),
            JobId::new("seedjob").unwrap(),
        );
        let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap();
        let db = Db::open(root.path().join("db"), opts.clone()).unwrap();
        let subtask = SubtaskId {
            operator_id: "counter".into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: KeyGroupRange::new(0, 127).unwrap(),
        };
        for id in 1..=2u64 {
            for i in 0..20u32 {
                db.put(format!("k{id}-{i}"), b"v").unwrap();
            }
            let offsets = vec![SourceOffset {
                source: "numbers".into(),
                split: "0".into(),
                offset: id * 100,
            }];
            let c = checkpoint_db(
                &store,
                CheckpointId(id),
                CheckpointKind::Incremental,
                &db,
                &subtask,
                offsets,
            )
            .unwrap();
            let _ = c;
        }
        let md = std::fs::read(root.path().join("seedjob/chk-2/_metadata")).unwrap();
        put("metadata_decode", "checkpoint-2", &md);
        put(
            "metadata_decode",
            "checkpoint-2-body",
            &md[12..md.len() - 4],
        );
        // Every handle kind of version 2 (the store above writes only LSM file sets).
        let typed = typed_handles_metadata(&md);
        put("metadata_decode", "typed-handles", &typed);
        put(
            "metadata_decode",
            "typed-handles-body",
            &typed[12..typed.len() - 4],
        );
    }

    // Decision streams for the built/framed modes and the model: seeded pseudo-random bytes.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand_bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    for (i, n) in [64usize, 300, 1200].iter().enumerate() {
        put("wal_replay", &format!("stream-{i}"), &rand_bytes(*n));
        put("sst_open_scan", &format!("stream-{i}"), &rand_bytes(*n));
        put("manifest_replay", &format!("stream-{i}"), &rand_bytes(*n));
    }
    put("metadata_decode", "stream-0", &rand_bytes(200));
    for (i, n) in [40usize, 200, 600, 1500, 3000].iter().enumerate() {
        put("db_model", &format!("stream-{i}"), &rand_bytes(*n));
    }
}
