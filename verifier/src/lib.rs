//! `coherence-verifier`: the evidence store every sidecar pushes to — mTLS ingest, an inbox
//! write-ahead log written before any parsing, verification of PCS and signal reports,
//! deduplication (memory, Redis, PostgreSQL), the workload summary API, Prometheus metrics and
//! the web dashboard.

pub mod api;
pub mod client;
pub mod dedup;
pub mod ingest;
pub mod limit;
pub mod metrics;
pub mod serve;
pub mod sigbatch;
pub mod tls;
pub mod ui;
pub mod views;
pub mod wal;
