//! `coherence-verifier`: the evidence store every sidecar pushes to — mTLS ingest, an inbox
//! write-ahead log written before any parsing, verification of PCS and signal reports,
//! deduplication (memory, Redis, PostgreSQL), the workload summary API and Prometheus metrics.

pub mod client;
pub mod dedup;
pub mod tls;
