//! Power cuts at seeded random points of a workload (puts, deletes, batches, flushes, with
//! background compactions) on a store that fsyncs every write (`SyncMode::PerWrite`).
//!
//! Each point: a store holding data from an earlier, cleanly closed session is reopened on a
//! [`FaultFs`] whose rule kills every file operation after the first `S` (the machine dies
//! there, wherever that falls: in a WAL append, a flush, a compaction, the open itself);
//! the workload runs until its first error; the store is dropped; [`FaultFs::power_cut`]
//! throws away everything not made durable; the store is reopened on the real file system
//! and must hold exactly the acknowledged writes: every one of them, and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidemark::fault::{FaultError, FaultFs, FaultOp, FaultRule};
use tidemark::fs::{FileSystem, StdFs};
use tidemark::lsm::{Db, Options, SyncMode, WriteBatch};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// xorshift64*: a small seeded generator, so every point is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn opts(fs: Arc<dyn FileSystem>) -> Options {
    Options {
        memtable_size_bytes: 4096,
        target_file_size_bytes: 8192,
        max_bytes_for_level_base: 32768,
        l0_compaction_trigger: 2,
        sync: SyncMode::PerWrite,
        fs,
        ..Options::default()
    }
}

fn key(rng: &mut Rng) -> Vec<u8> {
    format!("key{:04}", rng.below(150)).into_bytes()
}

fn value(rng: &mut Rng, op: usize) -> Vec<u8> {
    let len = if rng.below(10) == 0 {
        300 + rng.below(900)
    } else {
        rng.below(60)
    };
    let mut v = format!("op{op}:").into_bytes();
    v.resize(v.len() + len as usize, b'a' + (op % 26) as u8);
    v
}

/// Runs `ops` operations; acknowledged ones go into `model`. Stops at the first error.
fn workload(db: &Db, rng: &mut Rng, ops: usize, model: &mut Model) -> Result<(), tidemark::Error> {
    for op in 0..ops {
        match rng.below(20) {
            0..=11 => {
                let (k, v) = (key(rng), value(rng, op));
                db.put(&k, &v)?;
                model.insert(k, v);
            }
            12..=14 => {
                let k = key(rng);
                db.delete(&k)?;
                model.remove(&k);
            }
            15..=18 => {
                let mut b = WriteBatch::new();
                let mut staged = model.clone();
                for _ in 0..1 + rng.below(5) {
                    let k = key(rng);
                    if rng.below(3) == 0 {
                        b.delete(&k);
                        staged.remove(&k);
                    } else {
                        let v = value(rng, op);
                        b.put(&k, &v);
                        staged.insert(k, v);
                    }
                }
                db.write(b)?;
                *model = staged;
            }
            _ => db.flush()?,
        }
    }
    Ok(())
}

fn contents(db: &Db) -> Model {
    db.scan::<&[u8]>(..).unwrap().map(|r| r.unwrap()).collect()
}

/// One power cut; returns whether the machine died before the workload ended.
fn power_cut_point(seed: u64) -> bool {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let mut model = Model::new();

    // An earlier session, closed cleanly.
    {
        let db = Db::open(dir.path(), opts(fs.clone())).unwrap();
        let ops = 60 + rng.below(120) as usize;
        workload(&db, &mut rng, ops, &mut model).unwrap();
        db.close().unwrap();
    }

    // The machine dies after `survivors` more file operations.
    let survivors = rng.below(1500);
    fs.add_rule(FaultRule::always(FaultOp::Any, FaultError::Eio).after(survivors));
    let died = match Db::open(dir.path(), opts(fs.clone())) {
        Ok(db) => {
            let r = workload(&db, &mut rng, 400, &mut model);
            drop(db);
            r.is_err()
        }
        Err(_) => true,
    };
    fs.power_cut().unwrap();

    let db = Db::open(dir.path(), opts(StdFs::shared()))
        .unwrap_or_else(|e| panic!("seed {seed}: reopen after the power cut failed: {e}"));
    let got = contents(&db);
    if got != model {
        let lost: Vec<_> = model
            .keys()
            .filter(|k| got.get(*k) != model.get(*k))
            .collect();
        let extra: Vec<_> = got.keys().filter(|k| !model.contains_key(*k)).collect();
        panic!(
            "seed {seed} (cut after {survivors} file operations): {} keys differ, {} unexpected; \
             first differing {:?}, first unexpected {:?}",
            lost.len(),
            extra.len(),
            lost.first().map(|k| String::from_utf8_lossy(k)),
            extra.first().map(|k| String::from_utf8_lossy(k)),
        );
    }
    // The recovered store works.
    db.put(b"after", b"cut").unwrap();
    assert_eq!(db.get(b"after").unwrap(), Some(b"cut".to_vec()));
    died
}

#[test]
fn every_acknowledged_write_and_nothing_else_survives_a_power_cut() {
    let mut died = 0;
    for seed in 0..24 {
        if power_cut_point(seed) {
            died += 1;
        }
    }
    // Most points must cut into the workload (or the open) rather than after it.
    assert!(died >= 16, "only {died} of 24 points cut the workload");
}

#[test]
fn a_power_cut_after_a_clean_close_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let mut rng = Rng(7);
    let mut model = Model::new();
    {
        let db = Db::open(dir.path(), opts(fs.clone())).unwrap();
        workload(&db, &mut rng, 300, &mut model).unwrap();
        db.close().unwrap();
    }
    fs.power_cut().unwrap();
    let db = Db::open(dir.path(), opts(StdFs::shared())).unwrap();
    assert_eq!(contents(&db), model);
}
