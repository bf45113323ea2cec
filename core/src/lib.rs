//! `coherence-core`: the pure, I/O-free heart of Coherence.
//!
//! Everything here takes values and returns values: the Proof-of-Computation Summary (PCS)
//! format and its canonical signing, the signals a PCS is made of, rolling windows and drift
//! risk, detectors, incident correlation, FinOps grading, the deterministic flight
//! simulator and the AES-GCM line format of encrypted JSONL. The binaries (`coherence`, `coherence-sidecar`, `coherence-verifier`,
//! `coherence-operator`) wire I/O around these functions.

pub mod canon;
pub mod collect;
pub mod detect;
pub mod finops;
pub mod incident;
pub mod linecipher;
pub mod merkle;
pub mod pcs;
pub mod report;
pub mod rng;
pub mod score;
pub mod signals;
pub mod sim;
pub mod stats;
pub mod telemetry;
pub mod window;

/// Version of the engine, carried in every explainable answer (`meta.engineVersion`).
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");
