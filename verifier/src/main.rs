//! `coherence-verifier` binary.

fn main() {}
