//! The heap keyed state backend through its public API (the state types and methods are
//! in tests/state_conformance.rs): snapshots that do not see later writes, restore with
//! the same and with another parallelism, bad snapshots, and a model test of random
//! operations interleaved with snapshot, restore and rescale.

use proptest::prelude::*;

#[path = "common/state_model.rs"]
mod state_model;
use state_model::{op, owner, Descs, Model, Op, MAX};
use tidemark::state::heap::{HeapKeyedBackend, HeapSnapshot, KeyGroupsSource, KeyGroupsWritten};
use tidemark::state::key_groups::MaxParallelism;
use tidemark::state::keyed::{
    KeyedState, KeyedStateBackend, MapStateDescriptor, ValueStateDescriptor,
};

fn full(max: u32) -> HeapKeyedBackend {
    let m = MaxParallelism::new(max).unwrap();
    HeapKeyedBackend::new(m, m.full_range())
}

/// A written snapshot: its bytes and where its key groups start.
type Written = (Vec<u8>, KeyGroupsWritten);

fn write(snap: &HeapSnapshot) -> Written {
    let mut out = Vec::new();
    let w = snap.write_to(&mut out).unwrap();
    assert_eq!(w.bytes, out.len() as u64);
    (out, w)
}

const COUNT: &str = "count";

fn count_desc() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new(COUNT)
}

fn set_count(b: &mut HeapKeyedBackend, key: u32, n: u64) {
    let mut s = KeyedState::new(b);
    s.set_current_key(&key).unwrap();
    s.value(&count_desc()).unwrap().update(&n).unwrap();
}

fn get_count(b: &mut HeapKeyedBackend, key: u32) -> Option<u64> {
    let mut s = KeyedState::new(b);
    s.set_current_key(&key).unwrap();
    let v = s.value(&count_desc()).unwrap().get().unwrap();
    v
}

#[test]
fn a_snapshot_sees_the_state_as_it_was_while_writes_go_on() {
    let mut b = full(128);
    for k in 0..2000u32 {
        set_count(&mut b, k, u64::from(k));
    }
    let snap = b.snapshot();
    for k in 0..2000u32 {
        set_count(&mut b, k, u64::from(k) + 1_000_000);
    }
    let (bytes, w) = write(&snap);
    // Equal states give equal bytes.
    assert_eq!(write(&snap).0, bytes);
    let m = MaxParallelism::default();
    let src = KeyGroupsSource {
        name: "snapshot",
        data: &bytes,
        offsets: &w.offsets,
    };
    let mut restored = HeapKeyedBackend::restore(m, m.full_range(), &[src]).unwrap();
    for k in 0..2000u32 {
        assert_eq!(get_count(&mut restored, k), Some(u64::from(k)));
        assert_eq!(get_count(&mut b, k), Some(u64::from(k) + 1_000_000));
    }
    assert_eq!(restored.approximate_bytes(), snap_bytes_of(&restored));
}

/// The byte count of a freshly restored backend, recounted from a new snapshot's restore.
fn snap_bytes_of(b: &HeapKeyedBackend) -> usize {
    let (bytes, w) = write(&b.snapshot());
    let src = KeyGroupsSource {
        name: "again",
        data: &bytes,
        offsets: &w.offsets,
    };
    HeapKeyedBackend::restore(b.max_parallelism(), b.key_groups(), &[src])
        .unwrap()
        .approximate_bytes()
}

#[test]
fn restore_into_one_two_and_four_subtasks_from_three() {
    let m = MaxParallelism::default();
    let keys = 3000u32;
    // Three subtasks, each holding the keys of its key groups.
    let mut old: Vec<HeapKeyedBackend> = (0..3)
        .map(|i| HeapKeyedBackend::new(m, m.range_for_subtask(3, i).unwrap()))
        .collect();
    for k in 0..keys {
        let kb = postcard::to_stdvec(&k).unwrap();
        let g = m.key_group_of(&kb);
        let owner = m.subtask_for_key_group(3, g).unwrap() as usize;
        set_count(&mut old[owner], k, u64::from(k) * 7);
        let mut s = KeyedState::new(&mut old[owner]);
        s.set_current_key(&k).unwrap();
        s.map(&MapStateDescriptor::<u32, u32>::new("m"))
            .unwrap()
            .put(&k, &(k + 1))
            .unwrap();
    }
    let written: Vec<(Vec<u8>, KeyGroupsWritten)> =
        old.iter().map(|b| write(&b.snapshot())).collect();
    let sources: Vec<KeyGroupsSource<'_>> = written
        .iter()
        .enumerate()
        .map(|(i, (bytes, w))| KeyGroupsSource {
            name: ["a", "b", "c"][i],
            data: bytes,
            offsets: &w.offsets,
        })
        .collect();
    for p in [1u32, 2, 3, 4] {
        let mut new: Vec<HeapKeyedBackend> = (0..p)
            .map(|i| HeapKeyedBackend::restore(m, m.range_for_subtask(p, i).unwrap(), &sources))
            .collect::<tidemark::Result<_>>()
            .unwrap();
        let total: usize = new.iter().map(|b| b.approximate_bytes()).sum();
        let before: usize = old.iter().map(|b| b.approximate_bytes()).sum();
        assert_eq!(total, before, "p {p}: every entry restored exactly once");
        for k in 0..keys {
            let kb = postcard::to_stdvec(&k).unwrap();
            let owner = m.subtask_for_key_group(p, m.key_group_of(&kb)).unwrap() as usize;
            assert_eq!(
                get_count(&mut new[owner], k),
                Some(u64::from(k) * 7),
                "p {p}"
            );
            let mut s = KeyedState::new(&mut new[owner]);
            s.set_current_key(&k).unwrap();
            let md = MapStateDescriptor::<u32, u32>::new("m");
            let mut mm = s.map(&md).unwrap();
            assert_eq!(mm.iter().unwrap(), vec![(k, k + 1)]);
            // Other subtasks refuse the key: it is not in their key groups.
            for (i, b) in new.iter_mut().enumerate() {
                if i != owner {
                    assert!(b.set_current_key(&kb).is_err());
                }
            }
        }
    }
}

#[test]
fn damaged_snapshots_are_errors_naming_the_source() {
    let mut b = full(128);
    for k in 0..500u32 {
        set_count(&mut b, k, 1);
    }
    let (bytes, w) = write(&b.snapshot());
    let m = MaxParallelism::default();
    let restore = |data: &[u8], offsets: &[u64]| {
        HeapKeyedBackend::restore(
            m,
            m.full_range(),
            &[KeyGroupsSource {
                name: "chk-3/op-0.kg",
                data,
                offsets,
            }],
        )
    };
    // Truncated anywhere.
    for cut in [0, 3, 10, 30, bytes.len() / 2, bytes.len() - 1] {
        let e = restore(&bytes[..cut], &w.offsets).unwrap_err();
        assert!(e.to_string().contains("chk-3/op-0.kg"), "cut {cut}: {e}");
    }
    // Every bit of a sample of bytes: an error, never a different state.
    let mut flipped = 0;
    for i in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
        for bit in 0..8 {
            let mut d = bytes.clone();
            d[i] ^= 1 << bit;
            match restore(&d, &w.offsets) {
                Err(e) => assert!(e.to_string().contains("chk-3/op-0.kg"), "{e}"),
                Ok(mut r) => {
                    // Only a flip that changes nothing the restore reads may pass.
                    for k in 0..500u32 {
                        assert_eq!(get_count(&mut r, k), Some(1), "flip {i}:{bit}");
                    }
                }
            }
            flipped += 1;
        }
    }
    assert!(flipped > 500);
    // Offsets that do not match the snapshot.
    assert!(restore(&bytes, &w.offsets[1..]).is_err());
    let mut off = w.offsets.clone();
    off[5] += 1;
    assert!(restore(&bytes, &off).is_err());
    // Another max parallelism.
    let other = MaxParallelism::new(256).unwrap();
    let e = HeapKeyedBackend::restore(
        other,
        other.full_range(),
        &[KeyGroupsSource {
            name: "x",
            data: &bytes,
            offsets: &w.offsets,
        }],
    )
    .unwrap_err();
    assert!(e.to_string().contains("max parallelism"), "{e}");
    // Restored under another type.
    let mut r = restore(&bytes, &w.offsets).unwrap();
    let mut s = KeyedState::new(&mut r);
    s.set_current_key(&1u32).unwrap();
    let e = s
        .value(&ValueStateDescriptor::<String>::new(COUNT))
        .unwrap_err();
    assert!(e.to_string().contains("count"), "{e}");
}

/// `default` cases, or `TIDEMARK_MODEL_CASES`.
fn cases(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("TIDEMARK_MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(24))]

    /// Random operations on keys spread over the subtasks, interleaved with snapshots and
    /// restores into a random parallelism (from the last snapshot), against a model.
    #[test]
    fn heap_backend_matches_the_model(
        ops in proptest::collection::vec(op(300, 256), 1..300),
        lazy in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut restores = 0;
        let m = MaxParallelism::new(MAX).unwrap();
        let d = Descs::default();
        let p = 2u32;
        let mut subtasks: Vec<HeapKeyedBackend> =
            (0..p).map(|i| HeapKeyedBackend::new(m, m.range_for_subtask(p, i).unwrap())).collect();
        let mut model = Model::default();
        let mut last: Option<(Vec<Written>, Model)> = None;
        for op in ops {
            let owner = owner(op.key(), subtasks.len() as u32);
            if model.apply(&op, &mut subtasks[owner], &d) {
                continue;
            }
            match op {
                Op::Snapshot => {
                    let w: Vec<_> = subtasks.iter().map(|b| write(&b.snapshot())).collect();
                    last = Some((w, model.clone()));
                }
                Op::Restore(new_p) => {
                    if let Some((w, snap_model)) = &last {
                        restores += 1;
                        let sources: Vec<KeyGroupsSource<'_>> = w
                            .iter()
                            .map(|(bytes, kw)| KeyGroupsSource { name: "s", data: bytes, offsets: &kw.offsets })
                            .collect();
                        subtasks = (0..new_p)
                            .map(|i| {
                                let range = m.range_for_subtask(new_p, i).unwrap();
                                if lazy {
                                    // Read in place, a key group at a time.
                                    let inputs = w
                                        .iter()
                                        .enumerate()
                                        .map(|(j, x)| input_file(dir.path(), &format!("{restores}-{i}-{j}"), x))
                                        .collect();
                                    HeapKeyedBackend::restore_inputs(m, range, inputs, true)
                                } else {
                                    HeapKeyedBackend::restore(m, range, &sources)
                                }
                            })
                            .collect::<tidemark::Result<_>>()
                            .unwrap();
                        model = snap_model.clone();
                    }
                }
                _ => {}
            }
        }
        let mut views: Vec<&mut dyn KeyedStateBackend> =
            subtasks.iter_mut().map(|b| b as &mut dyn KeyedStateBackend).collect();
        model.check(300, &mut views, &d);
    }
}

/// A snapshot whose header registers no state but whose block holds an entry (checksums
/// all correct) is an error, not a panic.
#[test]
fn an_entry_of_no_registered_state_is_an_error() {
    let m = MaxParallelism::default();
    let key = postcard::to_stdvec(&5u32).unwrap();
    let g = m.key_group_of(&key);
    let mut data = b"TMKS".to_vec();
    for v in [1u32, 128, 0, 127] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data.push(0); // no states
    let crc = crc32c::crc32c(&data);
    data.extend_from_slice(&crc.to_le_bytes());
    let mut offsets = Vec::new();
    for group in 0..128u32 {
        offsets.push(data.len() as u64);
        let mut body = Vec::new();
        if group == g {
            body.extend_from_slice(&[1, 0, key.len() as u8]);
            body.extend_from_slice(&key);
            body.extend_from_slice(&[0, 1, 42]);
        } else {
            body.push(0);
        }
        data.extend_from_slice(&(body.len() as u64).to_le_bytes());
        data.extend_from_slice(&body);
        data.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    }
    let src = KeyGroupsSource {
        name: "crafted",
        data: &data,
        offsets: &offsets,
    };
    let e = HeapKeyedBackend::restore(m, m.full_range(), &[src]).unwrap_err();
    assert!(e.to_string().contains("crafted"), "{e}");
}

/// `written` as a file of `dir`, to restore from in place.
fn input_file(
    dir: &std::path::Path,
    name: &str,
    (bytes, w): &Written,
) -> tidemark::state::heap::KeyGroupsInput {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    tidemark::state::heap::KeyGroupsInput {
        name: path.display().to_string(),
        data: tidemark::state::heap::KeyGroupsData::File {
            file: std::fs::File::open(&path).unwrap(),
            size: bytes.len() as u64,
        },
        offsets: w.offsets.clone(),
        key_groups: w.range,
    }
}

fn counts(keys: u32) -> HeapKeyedBackend {
    let mut b = full(128);
    for k in 0..keys {
        set_count(&mut b, k, u64::from(k) * 3);
    }
    b
}

#[test]
fn a_lazy_restore_reads_key_groups_as_they_are_used_and_snapshots_the_rest_as_restored() {
    let dir = tempfile::tempdir().unwrap();
    let keys = 5000u32;
    let original = write(&counts(keys).snapshot());
    let m = MaxParallelism::new(128).unwrap();
    let mut r = HeapKeyedBackend::restore_inputs(
        m,
        m.full_range(),
        vec![input_file(dir.path(), "a.keyed", &original)],
        true,
    )
    .unwrap();
    // A snapshot before any key group is used holds the state as restored.
    let untouched = r.snapshot();
    // Change every other key while that snapshot is not yet written.
    for k in (0..keys).step_by(2) {
        assert_eq!(get_count(&mut r, k), Some(u64::from(k) * 3));
        set_count(&mut r, k, 7);
    }
    assert_eq!(
        write(&untouched).0,
        original.0,
        "the snapshot saw later writes"
    );
    let half = r.snapshot();
    for k in 0..keys {
        let want = if k % 2 == 0 { 7 } else { u64::from(k) * 3 };
        assert_eq!(get_count(&mut r, k), Some(want), "key {k}");
    }
    // Every key group is installed now: the byte count is the state's.
    assert_eq!(r.approximate_bytes(), snap_bytes_of(&r));
    let (bytes, w) = write(&half);
    let again = HeapKeyedBackend::restore(
        m,
        m.full_range(),
        &[KeyGroupsSource {
            name: "half",
            data: &bytes,
            offsets: &w.offsets,
        }],
    );
    let mut again = again.unwrap();
    for k in 0..keys {
        let want = if k % 2 == 0 { 7 } else { u64::from(k) * 3 };
        assert_eq!(get_count(&mut again, k), Some(want), "key {k}");
    }
}

#[test]
fn a_damaged_key_group_fails_a_lazy_restore_when_it_is_read_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, w) = write(&counts(3000).snapshot());
    let m = MaxParallelism::new(128).unwrap();
    let key = 17u32;
    let g = m.key_group_of(&postcard::to_stdvec(&key).unwrap()) as usize;
    // A byte inside key group g's body.
    let at = w.offsets[g] as usize + 8 + 3;
    bytes[at] ^= 0x40;
    let input = input_file(dir.path(), "damaged.keyed", &(bytes, w.clone()));
    let name = input.name.clone();
    let mut r = HeapKeyedBackend::restore_inputs(m, m.full_range(), vec![input], true).unwrap();
    let snap = r.snapshot();
    let mut s = KeyedState::new(&mut r);
    let e = s.set_current_key(&key).unwrap_err().to_string();
    assert!(e.contains(&name), "{e}");
    assert!(e.contains(&format!("key group {g}")), "{e}");
    assert!(e.contains(&format!("{}", w.offsets[g])), "{e}");
    // Once a key group failed, every key fails: the state is not whole.
    let other = (0..3000u32)
        .find(|k| m.key_group_of(&postcard::to_stdvec(k).unwrap()) as usize != g)
        .unwrap();
    assert!(s.set_current_key(&other).is_err());
    // A snapshot that holds the damaged key group cannot be written.
    let e = snap.write_to(&mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains(&name), "{e}");
    // Read whole before returning, the same damage fails the restore itself.
    let input = input_file(dir.path(), "damaged2.keyed", &{
        let (mut b, w) = write(&counts(3000).snapshot());
        b[at] ^= 0x40;
        (b, w)
    });
    let e = HeapKeyedBackend::restore_inputs(m, m.full_range(), vec![input], false).unwrap_err();
    assert!(e.to_string().contains("damaged2.keyed"), "{e}");
}

#[test]
fn a_lazy_restore_checks_headers_and_recorded_key_groups_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = MaxParallelism::new(128).unwrap();
    let (mut bytes, w) = write(&counts(100).snapshot());
    // The recorded key groups differ from the snapshot's.
    let mut input = input_file(dir.path(), "a.keyed", &(bytes.clone(), w.clone()));
    input.key_groups = tidemark::checkpoint::KeyGroupRange::new(0, 63).unwrap();
    let e = HeapKeyedBackend::restore_inputs(m, m.full_range(), vec![input], true).unwrap_err();
    assert!(e.to_string().contains("_metadata records 0..=63"), "{e}");
    // A damaged header.
    bytes[5] ^= 1;
    let input = input_file(dir.path(), "b.keyed", &(bytes, w.clone()));
    let e = HeapKeyedBackend::restore_inputs(m, m.full_range(), vec![input], true).unwrap_err();
    assert!(e.to_string().contains("b.keyed"), "{e}");
    // A file shorter than recorded: the key groups past its end fail when read.
    let (bytes, w) = write(&counts(100).snapshot());
    let short = (bytes[..bytes.len() / 2].to_vec(), w.clone());
    let mut input = input_file(dir.path(), "c.keyed", &short);
    if let tidemark::state::heap::KeyGroupsData::File { size, .. } = &mut input.data {
        *size = bytes.len() as u64;
    }
    let mut r = HeapKeyedBackend::restore_inputs(m, m.full_range(), vec![input], false);
    let e = r.as_mut().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("c.keyed") && e.contains("past the end"), "{e}");
}

proptest! {
    #![proptest_config(cases(48))]

    /// A damaged snapshot (a flipped byte, a length field overwritten with anything, or a
    /// cut), restored a key group at a time from a file: never a panic; every key reads its
    /// value or the restore, a key or a snapshot fails naming the file; a restore that
    /// reads everything before it returns fails the same way or not at all.
    #[test]
    fn a_damaged_snapshot_restored_lazily_never_panics_and_never_reads_wrong(
        at in any::<prop::sample::Index>(),
        damage in 0u8..3,
        value in any::<u64>(),
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let keys = 400u32;
        let (mut bytes, w) = write(&counts(keys).snapshot());
        let m = MaxParallelism::new(128).unwrap();
        let i = at.index(bytes.len());
        let original = bytes.clone();
        match damage {
            0 => bytes[i] ^= 1 << bit,
            1 => {
                // A block's length field.
                let g = at.index(w.offsets.len());
                let o = w.offsets[g] as usize;
                bytes[o..o + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ => bytes.truncate(i),
        }
        prop_assume!(bytes != original);
        for lazy in [true, false] {
            let mut input = input_file(dir.path(), &format!("x{lazy}.keyed"), &(bytes.clone(), w.clone()));
            if let tidemark::state::heap::KeyGroupsData::File { size, .. } = &mut input.data {
                *size = bytes.len() as u64;
            }
            let name = input.name.clone();
            let named = |e: tidemark::Error| -> Result<(), TestCaseError> {
                prop_assert!(e.to_string().contains(&name), "{}", e);
                Ok(())
            };
            let mut r = match HeapKeyedBackend::restore_inputs(m, m.full_range(), vec![input], lazy) {
                Ok(r) => r,
                Err(e) => { named(e)?; continue; }
            };
            prop_assert!(lazy, "damage {} at {} went unseen by a restore that read it all", damage, i);
            let snap = r.snapshot();
            let mut failed = false;
            for k in 0..keys {
                let mut s = KeyedState::new(&mut r);
                match s.set_current_key(&k) {
                    Ok(()) => {
                        let v = s.value(&count_desc()).unwrap().get().unwrap();
                        prop_assert_eq!(v, Some(u64::from(k) * 3), "key {}", k);
                    }
                    Err(e) => { named(e)?; failed = true; break; }
                }
            }
            if let Err(e) = snap.write_to(&mut Vec::new()) {
                named(e)?;
                failed = true;
            }
            // Every byte is under a checksum: the damage is found once everything is read.
            prop_assert!(failed, "damage {} at {} went unseen", damage, i);
        }
    }
}
