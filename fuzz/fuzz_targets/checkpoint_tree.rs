//! Fuzz target: see `common/checkpoint_tree.rs` for what it checks (the same function runs on
//! stable over the seed corpus and the regressions, in `tests/fuzz_corpus.rs`).
#![no_main]

#[path = "common/checkpoint_tree.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
