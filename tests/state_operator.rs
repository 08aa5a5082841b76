//! Operator list state: even split and union redistribution over any change of
//! parallelism, and bad snapshots.

use tidemark::state::keyed::ListStateDescriptor;
use tidemark::state::operator::{
    OperatorStateSource, OperatorStateStore, OperatorStateWritten, Redistribution,
};

fn offsets_desc() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new("offsets")
}

fn names_desc() -> ListStateDescriptor<String> {
    ListStateDescriptor::new("names")
}

/// Three subtasks: subtask `i` holds offsets `i*100 .. i*100 + 2 + i` (even split) and
/// the name `s<i>` (union).
fn three_subtasks() -> Vec<(Vec<u8>, OperatorStateWritten)> {
    (0..3u64)
        .map(|i| {
            let mut s = OperatorStateStore::new();
            let mut l = s
                .list(&offsets_desc(), Redistribution::SplitDistribute)
                .unwrap();
            for o in 0..2 + i {
                l.add(&(i * 100 + o)).unwrap();
            }
            s.list(&names_desc(), Redistribution::Union)
                .unwrap()
                .add(&format!("s{i}"))
                .unwrap();
            let mut out = Vec::new();
            let w = s.snapshot().write_to(&mut out).unwrap();
            assert_eq!(w.bytes, out.len() as u64);
            (out, w)
        })
        .collect()
}

fn sources(w: &[(Vec<u8>, OperatorStateWritten)]) -> Vec<OperatorStateSource<'_>> {
    w.iter()
        .map(|(data, w)| OperatorStateSource {
            name: "op",
            data,
            states: &w.states,
        })
        .collect()
}

#[test]
fn even_split_and_union_over_any_parallelism() {
    let w = three_subtasks();
    let srcs = sources(&w);
    let all: Vec<u64> = vec![0, 1, 100, 101, 102, 200, 201, 202, 203];
    for p in [1u32, 2, 3, 4, 9, 12] {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        for i in 0..p {
            let mut s = OperatorStateStore::restore(i, p, &srcs).unwrap();
            let mine = s
                .list(&offsets_desc(), Redistribution::SplitDistribute)
                .unwrap()
                .get()
                .unwrap();
            sizes.push(mine.len());
            seen.extend(mine);
            let names = s
                .list(&names_desc(), Redistribution::Union)
                .unwrap()
                .get()
                .unwrap();
            assert_eq!(
                names,
                vec!["s0", "s1", "s2"],
                "p {p}: union gives everything"
            );
        }
        assert_eq!(seen, all, "p {p}: every element once, in order");
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= 1, "p {p}: even split {sizes:?}");
    }
    assert!(OperatorStateStore::restore(2, 2, &srcs).is_err());
}

#[test]
fn mode_or_type_mismatch_and_damage_are_errors() {
    let w = three_subtasks();
    let srcs = sources(&w);
    let mut s = OperatorStateStore::restore(0, 1, &srcs).unwrap();
    let e = s.list(&offsets_desc(), Redistribution::Union).unwrap_err();
    assert!(e.to_string().contains("offsets"), "{e}");
    let e = s
        .list(
            &ListStateDescriptor::<String>::new("offsets"),
            Redistribution::SplitDistribute,
        )
        .unwrap_err();
    assert!(e.to_string().contains("offsets"), "{e}");

    let (data, written) = &w[2];
    for cut in [0, 5, data.len() / 2, data.len() - 1] {
        let src = OperatorStateSource {
            name: "chk-4/op-2.os",
            data: &data[..cut],
            states: &written.states,
        };
        let e = OperatorStateStore::restore(0, 1, &[src]).unwrap_err();
        assert!(e.to_string().contains("chk-4/op-2.os"), "cut {cut}: {e}");
    }
    for i in 0..data.len() {
        for bit in 0..8 {
            let mut d = data.clone();
            d[i] ^= 1 << bit;
            let src = OperatorStateSource {
                name: "chk-4/op-2.os",
                data: &d,
                states: &written.states,
            };
            if let Ok(mut s) = OperatorStateStore::restore(0, 1, &[src]) {
                // A flip the restore did not read changes nothing it returns.
                let got = s
                    .list(&offsets_desc(), Redistribution::SplitDistribute)
                    .unwrap()
                    .get()
                    .unwrap();
                assert_eq!(got, vec![200, 201, 202, 203], "flip {i}:{bit}");
            }
        }
    }
    // A record of the snapshot that disagrees with its header.
    let mut states = written.states.clone();
    for st in &mut states {
        st.mode = match st.mode {
            Redistribution::Union => Redistribution::SplitDistribute,
            Redistribution::SplitDistribute => Redistribution::Union,
        };
    }
    let src = OperatorStateSource {
        name: "x",
        data,
        states: &states,
    };
    assert!(OperatorStateStore::restore(0, 1, &[src]).is_err());
}
