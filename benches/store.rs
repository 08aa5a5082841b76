//! Benchmarks (store).

fn main() {}
