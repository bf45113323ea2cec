//! `coherence-sidecar`: the agent next to every workload container. It reads the workload's
//! signals (Prometheus scrape, JSONL, HTTP JSON, Datadog), keeps rolling windows, runs the
//! detectors, builds and signs a PCS and a SignalReport per epoch, keeps them in a durable
//! outbox and delivers them to the verifier over mTLS. It never sits on the request path.

pub mod api;
pub mod config;
pub mod deliver;
pub mod engine;
pub mod metrics;
pub mod outbox;
pub mod persist;
pub mod run;
pub mod sample;
pub mod sources;
pub mod state;
pub mod tls;
