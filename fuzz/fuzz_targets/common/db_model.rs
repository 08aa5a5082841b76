// Fuzz check `db_model`: a sequence of operations chosen by the input, applied to an
// `lsm::Db` with tiny memtables and files (so flushes and compactions happen all the time)
// and to a `BTreeMap` model side by side. Every read must agree with the model: gets,
// range and prefix scans, snapshots (against a copy of the model taken with them), after
// reopens, and in a store restored from a pinned file set (`live_files` +
// `restore_manifest`) or from an incremental checkpoint (`snapshot_sync`/`snapshot_async`,
// `resolve_verified`, `restore_store`).
//
// The input is decoded by hand (one byte per decision) rather than with `arbitrary`, so the
// same function runs on stable in `tests/fuzz_corpus.rs`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use tidemark::fs::{link_or_copy, StdFs};
use tidemark::lsm::{Compression, Db, Options, SyncMode, WriteBatch};

include!("support.rs");

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Operations per input; each input opens a store, so it is kept short.
const MAX_OPS: usize = 150;
const MAX_SNAPSHOTS: usize = 4;

fn key(input: &mut Input) -> Vec<u8> {
    let b = input.byte();
    let mut k = vec![b'k', b % 24];
    if b >= 0xf0 {
        // Now and then a longer key sharing the prefix.
        k.extend_from_slice(input.bytes(20));
    }
    k
}

fn value(input: &mut Input) -> Vec<u8> {
    let b = input.byte();
    let len = if b >= 0xf8 {
        600 + usize::from(b)
    } else {
        usize::from(b % 40)
    };
    let fill = input.byte();
    (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
}

fn bound(input: &mut Input) -> Bound<Vec<u8>> {
    match input.byte() % 3 {
        0 => Bound::Unbounded,
        1 => Bound::Included(key(input)),
        _ => Bound::Excluded(key(input)),
    }
}

fn options(input: &mut Input) -> Options {
    let flags = input.byte();
    Options {
        memtable_size_bytes: 1024 << (flags & 3),
        target_file_size_bytes: 1024 << ((flags >> 2) & 3),
        max_bytes_for_level_base: 4096,
        l0_compaction_trigger: 2,
        block_size_bytes: 128,
        block_cache_bytes: if flags & 0x10 != 0 { 0 } else { 64 << 10 },
        compression: if flags & 0x20 != 0 {
            Compression::None
        } else {
            Compression::Lz4
        },
        wal: flags & 0x40 == 0,
        sync: SyncMode::None,
        ..Options::default()
    }
}

fn in_range(k: &[u8], lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    let above = match lo {
        Bound::Unbounded => true,
        Bound::Included(l) => k >= l.as_slice(),
        Bound::Excluded(l) => k > l.as_slice(),
    };
    let below = match hi {
        Bound::Unbounded => true,
        Bound::Included(h) => k <= h.as_slice(),
        Bound::Excluded(h) => k < h.as_slice(),
    };
    above && below
}

fn model_range(m: &Model, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.iter()
        .filter(|(k, _)| in_range(k, lo, hi))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn collect(it: tidemark::Result<tidemark::lsm::DbIterator>) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.expect("scan")
        .collect::<tidemark::Result<Vec<_>>>()
        .expect("scan item")
}

fn check_all(db: &Db, model: &Model, what: &str) {
    let all = collect(db.scan::<Vec<u8>>(..));
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all, want, "full scan differs from the model {what}");
}

fn open(dir: &Path, opts: &Options) -> Db {
    Db::open(dir, opts.clone()).expect("open store")
}

/// Checks one fuzz input (see the file's first comment).
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let opts = options(&mut input);
    // tmpfs when there is one: the store fsyncs its manifest and tables.
    let root = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let dir = root.path().join("db");
    let mut db = Some(open(&dir, &opts));
    let mut model = Model::new();
    let mut snapshots: Vec<(tidemark::lsm::Snapshot, Model)> = Vec::new();
    let mut restores = 0u32;

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let d = db.as_ref().expect("store is open");
        match input.byte() % 14 {
            0..=3 => {
                let (k, v) = (key(&mut input), value(&mut input));
                d.put(&k, &v).expect("put");
                model.insert(k, v);
            }
            4 => {
                let k = key(&mut input);
                d.delete(&k).expect("delete");
                model.remove(&k);
            }
            5 => {
                let mut b = WriteBatch::new();
                let mut staged = model.clone();
                for _ in 0..1 + input.byte() % 8 {
                    let k = key(&mut input);
                    if input.byte() % 3 == 0 {
                        b.delete(&k);
                        staged.remove(&k);
                    } else {
                        let v = value(&mut input);
                        b.put(&k, &v);
                        staged.insert(k, v);
                    }
                }
                d.write(b).expect("write batch");
                model = staged;
            }
            6 => {
                let k = key(&mut input);
                assert_eq!(d.get(&k).expect("get"), model.get(&k).cloned(), "get {k:?}");
            }
            7 => {
                let (lo, hi) = (bound(&mut input), bound(&mut input));
                let got = collect(d.scan((lo.clone(), hi.clone())));
                assert_eq!(got, model_range(&model, &lo, &hi), "scan {lo:?}..{hi:?}");
            }
            8 => {
                let p = key(&mut input);
                let got = collect(d.prefix(&p));
                let want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| k.starts_with(&p))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "prefix {p:?}");
            }
            9 => {
                if snapshots.len() >= MAX_SNAPSHOTS {
                    snapshots.remove(0);
                }
                snapshots.push((d.snapshot(), model.clone()));
            }
            10 => {
                let i = usize::from(input.byte());
                if !snapshots.is_empty() {
                    let (s, m) = &snapshots[i % snapshots.len()];
                    let k = key(&mut input);
                    assert_eq!(s.get(&k).expect("snapshot get"), m.get(&k).cloned());
                    let all = collect(s.scan::<Vec<u8>>(..));
                    let want: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    assert_eq!(all, want, "snapshot scan differs from its model");
                }
            }
            11 => {
                if input.byte() % 2 == 0 {
                    d.flush().expect("flush");
                } else {
                    d.compact_range().expect("compact");
                }
                check_all(d, &model, "after flush/compaction");
            }
            12 => {
                snapshots.clear();
                db.take().expect("store is open").close().expect("close");
                let reopened = open(&dir, &opts);
                check_all(&reopened, &model, "after reopen");
                db = Some(reopened);
            }
            _ => {
                if restores >= 2 {
                    continue;
                }
                restores += 1;
                if input.byte() % 2 == 0 {
                    // Through the checkpoint layer: incremental checkpoint, verified restore.
                    use tidemark::checkpoint::{
                        resolve_verified, CheckpointConfig, CheckpointId, CheckpointKind,
                        CheckpointStore, JobId, KeyGroupRange, LocalStorage,
                    };
                    use tidemark::checkpoint::CheckpointContent;
                    use tidemark::state::lsm_snapshot::{
                        restore_store, snapshot_async, snapshot_sync, SubtaskId,
                    };
                    let storage = LocalStorage::new(
                        StdFs::shared(),
                        root.path(),
                        JobId::new("model").unwrap(),
                    );
                    let store = CheckpointStore::open(
                        std::sync::Arc::new(storage),
                        CheckpointConfig::default(),
                    )
                    .expect("checkpoint store");
                    let subtask = SubtaskId {
                        operator_id: "op".into(),
                        subtask_index: 0,
                        parallelism: 1,
                        max_parallelism: 128,
                        key_groups: KeyGroupRange::new(0, 127).unwrap(),
                    };
                    let id = CheckpointId(u64::from(restores));
                    let ticket = snapshot_sync(d).expect("snapshot");
                    let pending = store.begin(id, CheckpointKind::Incremental).expect("begin");
                    let state = snapshot_async(ticket, &pending, &subtask).expect("snapshot");
                    pending
                        .commit(CheckpointContent {
                            operator_states: vec![state],
                            source_offsets: vec![],
                            properties: vec![],
                        })
                        .expect("checkpoint");
                    let chk = root.path().join("model").join(format!("chk-{restores}"));
                    let r = resolve_verified(StdFs::shared(), &chk, false).expect("resolve");
                    let target = root.path().join(format!("from-checkpoint-{restores}"));
                    let restored = restore_store(
                        &r.storage(StdFs::shared()),
                        r.checkpoint_id,
                        &r.metadata.operator_states[0],
                        &target,
                        opts.clone(),
                    )
                    .expect("restore");
                    check_all(&restored, &model, "in a store restored from a checkpoint");
                    continue;
                }
                let live = d.live_files().expect("live files");
                let target = root.path().join(format!("restored-{restores}"));
                std::fs::create_dir_all(&target).expect("restore dir");
                for f in live.files() {
                    link_or_copy(&StdFs, &f.path, &target.join(&f.name)).expect("link table");
                }
                Db::restore_manifest(&StdFs, &target, &live.manifest).expect("restore manifest");
                drop(live);
                let restored = open(&target, &opts);
                check_all(&restored, &model, "in a restored store");
            }
        }
    }
    if let Some(d) = db.take() {
        check_all(&d, &model, "at the end");
        drop(snapshots);
        d.close().expect("close");
    }
}
