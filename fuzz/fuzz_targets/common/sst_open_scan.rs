// Fuzz check `sst_open_scan`: opening, scanning and looking up tables from hostile bytes.
//
// On every input:
// 1. Raw: the input as a table file. `Table::open`, a full scan, `get` of every key seen
//    and `verify` never panic; errors name the file. When the scan and `verify` both
//    succeed, `get` agrees with the scan on every entry and the bloom filter admits every
//    key. With `verify_checksums` off (data blocks unchecked) nothing panics either.
// 2. Built: entries and table options chosen by the input, written by `TableBuilder`: the
//    table opens, scans back exactly, `get` finds every entry, `verify` returns the crc32c
//    the builder computed.
// 3. Damaged: that built table with one byte changed (position and xor mask from the
//    input): every read either fails with an error naming the file or returns exactly
//    what the undamaged table returns. Never a wrong value.

use std::path::Path;
use std::sync::Arc;

use tidemark::fs::StdFs;
use tidemark::lsm::sst::{BlockCache, LookupResult, Table, TableBuilder, TableOptions};
use tidemark::lsm::types::{
    compare_internal_keys, make_internal_key, parse_internal_key, InternalIterator,
};
use tidemark::lsm::{Compression, FileNumber, SeqNo, ValueKind};

include!("support.rs");

/// Checks one fuzz input (see the file's first comment).
pub fn check(data: &[u8]) {
    let path = scratch_path("000009.sst");
    check_raw(&path, data);
    check_built(&path, data);
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Everything a reader can get out of a table, or the first error.
#[derive(Debug, PartialEq)]
struct Reading {
    entries: Entries,
    lookups: Vec<LookupResult>,
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write scratch table");
}

fn names_file(e: &tidemark::Error, path: &Path) -> bool {
    e.to_string().contains(&*path.to_string_lossy())
}

fn scan(t: &Arc<Table>) -> tidemark::Result<Entries> {
    let mut it = t.iter();
    it.seek_to_first();
    let mut out: Entries = Vec::new();
    while it.valid() {
        // A damaged table may repeat keys, but the iterator must make progress: its
        // entries are bounded by the file's size.
        assert!(out.len() as u64 <= t.file_size(), "scan does not end");
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    it.status().map(|()| out)
}

/// Opens, scans and looks up `keys` at `seqs` (plus every scanned entry).
fn read(path: &Path, verify: bool, probes: &[(Vec<u8>, SeqNo)]) -> tidemark::Result<Reading> {
    let cache = Some(BlockCache::new(1 << 20));
    let t = Table::open(&StdFs, path, FileNumber(9), cache, verify)?;
    let entries = scan(&t)?;
    let mut lookups = Vec::new();
    for (k, s) in probes {
        lookups.push(t.get(k, *s)?);
    }
    Ok(Reading { entries, lookups })
}

fn check_raw(path: &Path, data: &[u8]) {
    write(path, data);
    for verify in [true, false] {
        let t = match Table::open(&StdFs, path, FileNumber(9), None, verify) {
            Ok(t) => t,
            Err(e) => {
                assert!(names_file(&e, path), "error does not name the file: {e}");
                return;
            }
        };
        let scanned = scan(&t);
        if let Err(e) = &scanned {
            assert!(names_file(e, path), "error does not name the file: {e}");
        }
        let entries = scanned.unwrap_or_default();
        let mut lookups = Vec::new();
        for (k, _) in entries.iter().take(64) {
            if let Some(p) = parse_internal_key(k) {
                let _ = t.may_contain(p.user_key);
                lookups.push((p, t.get(p.user_key, p.seq)));
            }
        }
        let verified = t.verify();
        if let Err(e) = &verified {
            assert!(names_file(e, path), "error does not name the file: {e}");
        }
        if verify && verified.is_ok() {
            for w in entries.windows(2) {
                assert!(
                    compare_internal_keys(&w[0].0, &w[1].0).is_lt(),
                    "verified table out of order"
                );
            }
            for ((p, got), (_, value)) in lookups.iter().zip(&entries) {
                assert!(
                    t.may_contain(p.user_key),
                    "bloom filter rejects a key the table holds"
                );
                let want = match p.kind {
                    ValueKind::Put => LookupResult::Found(value.clone()),
                    ValueKind::Delete => LookupResult::Deleted,
                };
                assert_eq!(
                    got.as_ref().ok(),
                    Some(&want),
                    "get disagrees with the scan"
                );
            }
        }
    }
}

fn check_built(path: &Path, data: &[u8]) {
    let mut input = Input::new(data);
    let flip_at = input.u16();
    let flip_mask = input.byte();
    let opts = TableOptions {
        block_size_bytes: 1 + usize::from(input.u16() % 4096),
        restart_interval: 1 + usize::from(input.byte() % 17),
        compression: if input.byte() % 2 == 0 {
            Compression::Lz4
        } else {
            Compression::None
        },
        bloom_bits_per_key: u32::from(input.byte() % 21),
    };
    let mut entries: Entries = Vec::new();
    while !input.is_empty() && entries.len() < 200 {
        let key = input.bytes(12).to_vec();
        let seq = SeqNo(u64::from(input.u16()));
        let kind = if input.byte() % 4 == 0 {
            ValueKind::Delete
        } else {
            ValueKind::Put
        };
        let value = match kind {
            ValueKind::Delete => Vec::new(),
            ValueKind::Put => {
                let big = input.byte() % 32 == 0;
                input.bytes(if big { 20_000 } else { 100 }).to_vec()
            }
        };
        entries.push((make_internal_key(&key, seq, kind), value));
    }
    entries.sort_by(|a, b| compare_internal_keys(&a.0, &b.0));
    // A store never writes one user key twice at one sequence number.
    entries.dedup_by(|a, b| {
        let (pa, pb) = (parse_internal_key(&a.0), parse_internal_key(&b.0));
        pa.zip(pb)
            .is_some_and(|(x, y)| x.user_key == y.user_key && x.seq == y.seq)
    });
    if entries.is_empty() {
        return;
    }

    let (file, buf) = MemFile::open(&path.to_string_lossy());
    let mut b = TableBuilder::new(file, opts);
    for (k, v) in &entries {
        b.add(k, v).expect("add sorted entries");
    }
    let props = b.finish().expect("finish table");
    let bytes = buf.lock().unwrap().clone();
    assert_eq!(props.file_size, bytes.len() as u64);
    assert_eq!(props.num_entries, entries.len() as u64);
    write(path, &bytes);

    // Probes: every entry at its own sequence number, every key at the newest, and a key
    // that is absent.
    let mut probes: Vec<(Vec<u8>, SeqNo)> = Vec::new();
    let mut want = Vec::new();
    for (k, v) in &entries {
        let p = parse_internal_key(k).expect("built key parses");
        probes.push((p.user_key.to_vec(), p.seq));
        want.push(match p.kind {
            ValueKind::Put => LookupResult::Found(v.clone()),
            ValueKind::Delete => LookupResult::Deleted,
        });
    }
    // The fuzzer may well write the "absent" key itself: lengthen it until it is absent.
    let mut absent = b"\xff\xff\xff\xff absent".to_vec();
    while entries
        .iter()
        .any(|(k, _)| parse_internal_key(k).is_some_and(|p| p.user_key == absent.as_slice()))
    {
        absent.push(0);
    }
    probes.push((absent, SeqNo::MAX));
    want.push(LookupResult::NotFound);
    let good = read(path, true, &probes).expect("a built table reads back");
    assert_eq!(good.entries, entries, "scan differs from what was written");
    assert_eq!(good.lookups, want, "get differs from what was written");
    let t = Table::open(&StdFs, path, FileNumber(9), None, true).expect("reopen");
    assert_eq!(t.verify().expect("verify a built table"), props.file_crc32c);
    for (k, _) in &probes[..probes.len() - 1] {
        assert!(
            t.may_contain(k),
            "bloom filter rejects a key the table holds"
        );
    }
    drop(t);

    // One damaged byte: an error naming the file, or exactly the same reading.
    let mut damaged = bytes;
    let at = usize::from(flip_at) * damaged.len() / (usize::from(u16::MAX) + 1);
    damaged[at] ^= flip_mask.max(1);
    write(path, &damaged);
    match read(path, true, &probes) {
        Ok(r) => assert_eq!(
            r, good,
            "a damaged byte at {at} changed what the table returns"
        ),
        Err(e) => assert!(names_file(&e, path), "error does not name the file: {e}"),
    }
    if let Ok(t) = Table::open(&StdFs, path, FileNumber(9), None, true) {
        if let Err(e) = t.verify() {
            assert!(names_file(&e, path), "error does not name the file: {e}");
        }
    }
}
