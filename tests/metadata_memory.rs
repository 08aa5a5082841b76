//! The memory a `_metadata` decoding takes is bounded by `DECODE_MEMORY_FACTOR` times the
//! file's size plus `DECODE_MEMORY_SLACK_BYTES` (format-spec/metadata.md), whatever the
//! file is built of: measured with a counting allocator over files built for the most
//! memory per byte.
//!
//! One test function only: the allocator counts every thread of this binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use tidemark::checkpoint::metadata::{heap_cost, DECODE_MEMORY_FACTOR, DECODE_MEMORY_SLACK_BYTES};
use tidemark::checkpoint::{
    CheckpointId, CheckpointKind, FileHandle, FileRole, JobId, KeyGroupRange, KeyedState,
    KeyedStateHandle, LsmFileSet, Metadata, NamedOperatorState, OperatorStateHandle,
    OperatorSubtaskState, RedistributionMode, SourceOffset, StateData,
};

/// Counts the bytes live on the heap, each allocation as the allocator spends it
/// ([`heap_cost`]), and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live =
            LIVE.fetch_add(heap_cost(layout.size()), Ordering::SeqCst) + heap_cost(layout.size());
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(heap_cost(layout.size()), Ordering::SeqCst);
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Decodes `bytes` and returns whether it was accepted and the peak heap growth.
fn measure(bytes: &[u8]) -> (bool, usize) {
    let path = Path::new("chk-1/_metadata");
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let decoded = Metadata::decode(bytes, path);
    let peak = PEAK.load(Ordering::SeqCst) - base;
    let ok = decoded.is_ok();
    drop(decoded);
    (ok, peak)
}

fn header(states: Vec<OperatorSubtaskState>) -> Metadata {
    Metadata {
        checkpoint_id: CheckpointId(1),
        job_id: JobId::new("j").unwrap(),
        kind: CheckpointKind::Incremental,
        trigger_timestamp_ms: 1,
        completion_timestamp_ms: 2,
        operator_states: states,
        source_offsets: Vec::new(),
        properties: Vec::new(),
    }
}

/// Subtask `index` of operator `op`, owning key group `index` of 32768.
fn subtask(op: &str, index: u32) -> OperatorSubtaskState {
    OperatorSubtaskState {
        operator_id: op.into(),
        subtask_index: index,
        parallelism: 1 << 15,
        max_parallelism: 1 << 15,
        key_groups: KeyGroupRange::new(index, index).unwrap(),
        keyed_state: Vec::new(),
        operator_state: Vec::new(),
    }
}

fn tiny_file() -> FileHandle {
    FileHandle {
        role: FileRole::Shared,
        local_name: "a".into(),
        path: "shared/a".into(),
        size: 0,
        crc32c: 0,
    }
}

/// Files of about `target` bytes, each made of the elements that cost most memory per
/// byte of encoding.
fn hostile_files(n: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut one = subtask("o", 0);
    one.operator_state = (0..n)
        .map(|_| OperatorStateHandle {
            backend: "b".into(),
            data: StateData::Inline(Vec::new()),
            states: Vec::new(),
        })
        .collect();
    let tiny_operator_handles = header(vec![one]);
    let mut one = subtask("o", 0);
    one.keyed_state = (0..n / 4)
        .map(|_| KeyedStateHandle {
            backend: "b".into(),
            key_groups: KeyGroupRange::new(0, 0).unwrap(),
            state: KeyedState::KeyGroupsInline {
                bytes: Vec::new(),
                offsets: vec![0],
            },
        })
        .collect();
    let tiny_keyed_handles = header(vec![one]);
    let mut one = subtask("o", 0);
    one.operator_state = vec![OperatorStateHandle {
        backend: "b".into(),
        data: StateData::Inline(Vec::new()),
        states: (0..(n / 4).min(1 << 16))
            .map(|i| NamedOperatorState {
                name: format!("{i:x}"),
                mode: RedistributionMode::Union,
                offsets: Vec::new(),
            })
            .collect(),
    }];
    let tiny_named_states = header(vec![one]);
    let mut one = subtask("o", 0);
    one.keyed_state = vec![KeyedStateHandle {
        backend: "lsm".into(),
        key_groups: KeyGroupRange::new(0, 0).unwrap(),
        state: KeyedState::IncrementalLsm(LsmFileSet {
            sequence: 1,
            manifest: tiny_file(),
            tables: (0..n / 4).map(|_| tiny_file()).collect(),
        }),
    }];
    let tiny_files = header(vec![one]);
    // Distinct operators, one subtask each; and one operator of many subtasks.
    let empty_states = header((0..n / 3).map(|i| subtask(&format!("{i:x}"), 0)).collect());
    let many_subtasks = header(
        (0..(n / 3).min(1 << 15))
            .map(|i| subtask("o", i as u32))
            .collect(),
    );
    let mut offsets = header(Vec::new());
    offsets.source_offsets = (0..n / 3)
        .map(|i| SourceOffset {
            source: "s".into(),
            split: "p".into(),
            offset: i as u64,
        })
        .collect();
    let mut properties = header(Vec::new());
    properties.properties = (0..(n / 2).min(1 << 16))
        .map(|_| ("k".into(), "v".into()))
        .collect();
    let mut one = subtask("o", 0);
    one.keyed_state = vec![KeyedStateHandle {
        backend: "memory".into(),
        key_groups: KeyGroupRange::new(0, 0).unwrap(),
        state: KeyedState::KeyGroupsInline {
            bytes: vec![7u8; 4 * n],
            offsets: vec![0],
        },
    }];
    let big_inline = header(vec![one]);
    vec![
        (
            "tiny operator-state handles",
            tiny_operator_handles.encode(),
        ),
        ("tiny keyed-state handles", tiny_keyed_handles.encode()),
        ("tiny named states", tiny_named_states.encode()),
        ("tiny file handles", tiny_files.encode()),
        ("empty operator states", empty_states.encode()),
        ("subtasks of one operator", many_subtasks.encode()),
        ("source offsets", offsets.encode()),
        ("properties", properties.encode()),
        ("one large inline handle", big_inline.encode()),
    ]
}

#[test]
fn decoding_memory_is_bounded_by_a_constant_times_the_file_size() {
    let mut refused = Vec::new();
    for n in [1_000usize, 100_000, 1_000_000] {
        for (what, bytes) in hostile_files(n) {
            let bound = DECODE_MEMORY_FACTOR * bytes.len() + DECODE_MEMORY_SLACK_BYTES;
            let (ok, peak) = measure(&bytes);
            assert!(
                peak <= bound,
                "{what} ({n}): {} bytes took {peak} bytes to decode, over the bound {bound}",
                bytes.len()
            );
            if !ok {
                refused.push((what, n));
            }
        }
    }
    // The bound has teeth: a file of a million tiny operator-state handles (about 5 MiB,
    // which would take about 30 times its size) is refused, not decoded.
    assert!(
        refused.contains(&("tiny operator-state handles", 1_000_000)),
        "{refused:?}"
    );
    // What the store writes is never refused: small files of any shape, and large ones of
    // realistic elements.
    for (what, n) in [
        ("tiny operator-state handles", 1_000),
        ("tiny keyed-state handles", 1_000),
        ("subtasks of one operator", 1_000_000),
        ("tiny file handles", 1_000_000),
        ("one large inline handle", 1_000_000),
    ] {
        assert!(!refused.contains(&(what, n)), "{what} ({n}) refused");
    }
}
