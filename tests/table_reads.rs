//! How tables are read: positioned reads into the block cache (the default) against
//! memory mappings, through the public API. Both must return the same data; damage found
//! by a positioned read must be reported naming the file and the offset; the index and
//! filter blocks of open tables must be charged to the block cache and released when a
//! compaction drops their tables.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidemark::lsm::{BlockCacheAdmission, BlockCacheForm, Db, Options, SyncMode, TableReads};
use tidemark::Error;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn value(i: u32, version: u32) -> Vec<u8> {
    format!("value-{i}-{version}-{}", "v".repeat((i % 50) as usize)).into_bytes()
}

/// Small memtables and blocks, so that a few thousand keys make several tables of many
/// blocks.
fn options(reads: TableReads) -> Options {
    Options {
        sync: SyncMode::None,
        memtable_size_bytes: 64 << 10,
        block_size_bytes: 512,
        table_reads: reads,
        ..Options::default()
    }
}

/// [`options`] with a memtable that holds every test's keys: one flush, one table.
fn big_memtable(reads: TableReads) -> Options {
    Options {
        memtable_size_bytes: 8 << 20,
        compaction: false,
        ..options(reads)
    }
}

fn tables_in(dir: &Path) -> Vec<PathBuf> {
    common::files_with_extension(dir, "sst")
}

/// Every key's value (absent ones as `None`), then every entry of a scan.
type Contents = (Vec<Option<Vec<u8>>>, Vec<(Vec<u8>, Vec<u8>)>);

fn read_all(db: &Db, n: u32) -> Contents {
    let gets = (0..n + 10).map(|i| db.get(key(i)).unwrap()).collect();
    let scan = db
        .iter()
        .unwrap()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    (gets, scan)
}

#[test]
fn positioned_and_mapped_reads_return_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let n = 6000;
    {
        let db = Db::open(dir.path(), options(TableReads::Positioned)).unwrap();
        for version in 0..3 {
            for i in (0..n).filter(|i| (i + version) % 3 != 0) {
                db.put(key(i), value(i, version)).unwrap();
            }
            for i in (0..n).step_by(17 + version as usize) {
                db.delete(key(i)).unwrap();
            }
            db.flush().unwrap();
        }
        db.wait_for_compactions().unwrap();
        db.close().unwrap();
    }
    assert!(tables_in(dir.path()).len() > 1);
    let mut seen = Vec::new();
    let compressed = BlockCacheForm::CompressedUntilReused;
    let decompressed = BlockCacheForm::Decompressed;
    let big = Options::default().block_cache_bytes;
    let small = 48 << 10;
    let second_miss = BlockCacheAdmission::SecondMiss;
    let always = BlockCacheAdmission::Always;
    for (reads, form, cache_bytes, admission) in [
        (TableReads::Mapped, compressed, big, second_miss),
        (TableReads::Positioned, compressed, big, second_miss),
        (TableReads::Positioned, decompressed, big, second_miss),
        // Small enough that blocks are evicted in every form, and that blocks read once in
        // a while are declined unless every block is admitted.
        (TableReads::Positioned, compressed, small, second_miss),
        (TableReads::Positioned, decompressed, small, second_miss),
        (TableReads::Positioned, compressed, small, always),
        (TableReads::Mapped, compressed, small, second_miss),
        (TableReads::Mapped, compressed, small, always),
        (TableReads::Mapped, compressed, big, second_miss),
    ] {
        let o = Options {
            compaction: false,
            block_cache_form: form,
            block_cache_bytes: cache_bytes,
            block_cache_admission: admission,
            ..options(reads)
        };
        let db = Db::open(dir.path(), o).unwrap();
        // Again and again: from the block cache, held compressed until a block has been
        // hit enough to be held decompressed.
        let first = read_all(&db, n);
        let after_one_pass = db.stats();
        assert_eq!(
            after_one_pass.cache_compressed_bytes > 0,
            form == compressed && reads == TableReads::Positioned,
            "{after_one_pass:?}"
        );
        for _ in 0..10 {
            assert_eq!(
                first,
                read_all(&db, n),
                "{reads:?} {form:?} {cache_bytes} {admission:?}"
            );
        }
        assert!(first.0.iter().filter(|v| v.is_some()).count() > (n as usize) / 2);
        let stats = db.stats();
        assert!(stats.cache_hits > 0, "{stats:?}");
        assert!(stats.cache_compressed_bytes <= stats.cache_bytes);
        assert_eq!(
            stats.cache_compressed_hits > 0,
            form == compressed && reads == TableReads::Positioned,
            "{stats:?}"
        );
        assert!(stats.cache_bytes + stats.cache_bytes_reserved <= cache_bytes as u64);
        // Every read of a large cache is admitted (it has room); a small one declines
        // blocks unless told to admit every one.
        assert_eq!(
            stats.cache_declined > 0,
            cache_bytes == small && admission == second_miss,
            "{reads:?} {form:?} {admission:?} {stats:?}"
        );
        seen.push(first);
        db.close().unwrap();
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]));

    // A compaction reading its inputs sequentially writes the same data.
    let db = Db::open(dir.path(), options(TableReads::Positioned)).unwrap();
    db.compact_range().unwrap();
    assert_eq!(read_all(&db, n), seen[0]);
    db.close().unwrap();
}

/// Writes keys `0..n` into one table and closes the store; returns the table's path.
fn one_table(dir: &Path, n: u32) -> PathBuf {
    let db = Db::open(dir, big_memtable(TableReads::Positioned)).unwrap();
    for i in 0..n {
        db.put(key(i), value(i, 0)).unwrap();
    }
    db.flush().unwrap();
    db.close().unwrap();
    let tables = tables_in(dir);
    assert_eq!(tables.len(), 1, "{tables:?}");
    tables[0].clone()
}

fn assert_corruption_at(e: &Error, path: &Path, offset: u64) {
    match e {
        Error::Corruption {
            path: p, offset: o, ..
        } => {
            assert_eq!(p, path, "{e}");
            assert_eq!(*o, offset, "{e}");
        }
        other => panic!("expected corruption in {}, got {other:?}", path.display()),
    }
    let s = e.to_string();
    assert!(s.contains(&path.display().to_string()), "{s}");
    assert!(s.contains(&offset.to_string()), "{s}");
}

/// A store over `path` (one table in `dir`) after a byte inside its first data block was
/// flipped, reading tables as `reads`, without compaction.
fn open_with_a_flipped_byte(dir: &Path, path: &Path, reads: TableReads) -> Db {
    let mut bytes = fs::read(path).unwrap();
    bytes[20] ^= 0x40;
    fs::write(path, &bytes).unwrap();
    Db::open(
        dir,
        Options {
            compaction: false,
            ..options(reads)
        },
    )
    .unwrap()
}

#[test]
fn a_damaged_block_read_with_a_positioned_read_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_table(dir.path(), 400);
    // The first data block starts at offset 0; damage a byte inside it.
    let db = open_with_a_flipped_byte(dir.path(), &path, TableReads::Positioned);
    let e = db.get(key(0)).unwrap_err();
    assert_corruption_at(&e, &path, 0);
    assert!(e.to_string().contains("checksum"), "{e}");
    // Still an error the second time: a damaged block never reaches the cache.
    assert_corruption_at(&db.get(key(0)).unwrap_err(), &path, 0);
    // A key in an undamaged block is still served.
    assert_eq!(db.get(key(399)).unwrap(), Some(value(399, 0)));
}

#[test]
fn a_table_cut_short_after_open_gives_a_short_read_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_table(dir.path(), 2000);
    let db = Db::open(
        dir.path(),
        Options {
            compaction: false,
            block_cache_bytes: 0,
            ..options(TableReads::Positioned)
        },
    )
    .unwrap();
    // Opens the table (its footer, index and filter are read now).
    assert_eq!(db.get(key(0)).unwrap(), Some(value(0, 0)));
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 4)
        .unwrap();
    // The last keys' blocks now lie past the end of the file.
    let e = db.get(key(1999)).unwrap_err();
    match &e {
        Error::Corruption {
            path: p,
            offset,
            reason,
        } => {
            assert_eq!(p, &path, "{e}");
            assert!(*offset >= len / 4 - 600 && *offset < len, "{e}");
            assert!(reason.contains("short read"), "{e}");
        }
        other => panic!("expected a short read, got {other:?}"),
    }
}

#[test]
fn index_and_filter_bytes_are_charged_to_the_cache_and_released_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), big_memtable(TableReads::Positioned)).unwrap();
    let n = 3000;
    // Three tables holding the same keys.
    for version in 0..3 {
        for i in 0..n {
            db.put(key(i), value(i, version)).unwrap();
        }
        db.flush().unwrap();
    }
    assert_eq!(db.stats().levels[0].files, 3);
    // Tables open on first use: a scan opens all three.
    assert_eq!(db.iter().unwrap().count(), n as usize);
    let before = db.stats();
    assert!(before.table_memory_bytes > 0, "{before:?}");
    assert_eq!(before.cache_bytes_reserved, before.table_memory_bytes);
    // Index and filter of three tables of 3,000 keys each: more than the filters alone.
    assert!(before.table_memory_bytes > 3 * 3000 * 10 / 8, "{before:?}");
    assert!(before.cache_bytes + before.cache_bytes_reserved <= 64 << 20);

    db.compact_range().unwrap();
    for i in (0..n).step_by(97) {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i, 2)));
    }
    // The inputs' tables close once no reader holds the version that listed them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = db.stats();
        if s.cache_bytes_reserved == s.table_memory_bytes || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        after.cache_bytes_reserved, after.table_memory_bytes,
        "{after:?}"
    );
    assert!(after.table_memory_bytes > 0);
    assert!(
        after.cache_bytes_reserved < before.cache_bytes_reserved / 2,
        "before {before:?}, after {after:?}"
    );
    db.close().unwrap();
}

#[test]
fn a_budget_charges_every_stores_tables_to_its_one_cache() {
    let budget = tidemark::lsm::MemoryBudget::new(8 << 20).unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let dbs: Vec<Db> = dirs
        .iter()
        .map(|d| {
            let o = Options {
                memory_budget: Some(budget.clone()),
                ..big_memtable(TableReads::Positioned)
            };
            Db::open(d.path(), o).unwrap()
        })
        .collect();
    for db in &dbs {
        for i in 0..2000 {
            db.put(key(i), value(i, 0)).unwrap();
        }
        db.flush().unwrap();
        assert_eq!(db.get(key(5)).unwrap(), Some(value(5, 0)));
    }
    let held: u64 = dbs.iter().map(|d| d.stats().table_memory_bytes).sum();
    assert!(held > 0);
    assert_eq!(budget.cache().stats().bytes_reserved, held);
    for db in dbs {
        db.close().unwrap();
    }
    assert_eq!(budget.cache().stats().bytes_reserved, 0);
}

#[test]
fn mapped_tables_are_still_served_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_table(dir.path(), 500);
    let db = open_with_a_flipped_byte(dir.path(), &path, TableReads::Mapped);
    assert_corruption_at(&db.get(key(0)).unwrap_err(), &path, 0);
    assert_eq!(db.get(key(499)).unwrap(), Some(value(499, 0)));
}
