//! Benchmarks (checkpoint).

fn main() {}
