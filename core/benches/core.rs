//! Benchmarks of coherence-core (in progress).
fn main() {}
