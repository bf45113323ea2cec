//! The verifier's Prometheus metrics (names from the design, §8), in the text exposition
//! format of `prometheus-client`.
//!
//! `flk_dedup_hits`, `flk_accepted` and `flk_escalated` keep the original stack's names, which
//! carry no `_total` suffix; the OpenMetrics text format only allows that suffix on counters,
//! so they are exported as gauges that only ever go up.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// `{route, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template (`/v1/pcs/submit`).
    pub route: String,
    /// HTTP status.
    pub code: u16,
}

/// `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `pcs` or `signals`.
    pub kind: String,
}

/// `{namespace, workload}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    /// Namespace.
    pub namespace: String,
    /// Workload.
    pub workload: String,
}

/// `{namespace, workload, signal, window}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// Namespace.
    pub namespace: String,
    /// Workload.
    pub workload: String,
    /// Signal.
    pub signal: String,
    /// Window span.
    pub window: String,
}

/// `{pattern}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PatternLabels {
    /// Primary pattern of the incident.
    pub pattern: String,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why a record was rejected.
    pub reason: String,
}

/// Every metric of the verifier.
#[derive(Clone)]
pub struct Metrics {
    /// `flk_ingest_total{kind}`: bodies received and written to the WAL.
    pub ingest: Family<KindLabels, Counter>,
    /// `flk_dedup_hits`: duplicates answered from the store.
    pub dedup_hits: Gauge,
    /// `flk_accepted`: first-applied records accepted.
    pub accepted: Gauge,
    /// `flk_escalated`: first-applied records escalated.
    pub escalated: Gauge,
    /// `coherence_rejected_total{reason}`.
    pub rejected: Family<ReasonLabels, Counter>,
    /// `coherence_verify_duration_seconds`.
    pub verify_duration: Histogram,
    /// `coherence_wal_fsync_duration_seconds`.
    pub wal_fsync: Histogram,
    /// `coherence_wal_bytes`.
    pub wal_bytes: Gauge,
    /// `coherence_wal_pending`: durable bodies waiting for the dedup store.
    pub wal_pending: Gauge,
    /// `coherence_dedup_store_up`.
    pub store_up: Gauge,
    /// `coherence_requests_total{route,code}`.
    pub requests: Family<RouteLabels, Counter>,
    /// `coherence_workload_drift_risk{namespace,workload}`.
    pub drift_risk: Family<WorkloadLabels, Gauge>,
    /// `coherence_workload_volatility_index{namespace,workload,signal,window}`.
    pub volatility: Family<SignalLabels, Gauge<f64, AtomicU64>>,
    /// `coherence_incidents_total{pattern}`.
    pub incidents: Family<PatternLabels, Counter>,
}

fn exp_buckets(start: f64, factor: f64, n: u16) -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(start, factor, n)
}

impl Metrics {
    /// The metrics and the registry that exports them.
    pub fn new() -> (Metrics, Registry) {
        let m = Metrics {
            ingest: Family::default(),
            dedup_hits: Gauge::default(),
            accepted: Gauge::default(),
            escalated: Gauge::default(),
            rejected: Family::default(),
            verify_duration: Histogram::new(exp_buckets(0.000_005, 2.0, 16)),
            wal_fsync: Histogram::new(exp_buckets(0.000_05, 2.0, 16)),
            wal_bytes: Gauge::default(),
            wal_pending: Gauge::default(),
            store_up: Gauge::default(),
            requests: Family::default(),
            drift_risk: Family::default(),
            volatility: Family::default(),
            incidents: Family::default(),
        };
        let mut r = Registry::default();
        r.register(
            "flk_ingest",
            "Bodies received and written to the WAL",
            m.ingest.clone(),
        );
        r.register(
            "flk_dedup_hits",
            "Duplicates answered with the stored outcome (monotonic)",
            m.dedup_hits.clone(),
        );
        r.register(
            "flk_accepted",
            "Records accepted on first application (monotonic)",
            m.accepted.clone(),
        );
        r.register(
            "flk_escalated",
            "Records escalated on first application (monotonic)",
            m.escalated.clone(),
        );
        r.register(
            "coherence_rejected",
            "Records rejected, by reason",
            m.rejected.clone(),
        );
        r.register(
            "coherence_verify_duration_seconds",
            "Time to parse and verify one record",
            m.verify_duration.clone(),
        );
        r.register(
            "coherence_wal_fsync_duration_seconds",
            "Time of one WAL group-commit fdatasync",
            m.wal_fsync.clone(),
        );
        r.register(
            "coherence_wal_bytes",
            "Bytes in the inbox WAL segments",
            m.wal_bytes.clone(),
        );
        r.register(
            "coherence_wal_pending",
            "Durable bodies not yet applied (dedup store unavailable)",
            m.wal_pending.clone(),
        );
        r.register(
            "coherence_dedup_store_up",
            "1 when the dedup store answers",
            m.store_up.clone(),
        );
        r.register(
            "coherence_requests",
            "Requests answered, by route and status code",
            m.requests.clone(),
        );
        r.register(
            "coherence_workload_drift_risk",
            "Worst drift risk of a workload's latest windows (0 low, 1 medium, 2 high)",
            m.drift_risk.clone(),
        );
        r.register(
            "coherence_workload_volatility_index",
            "Largest volatility index over a workload's pods, by signal and window",
            m.volatility.clone(),
        );
        r.register(
            "coherence_incidents",
            "Incidents opened, by primary pattern",
            m.incidents.clone(),
        );
        (m, r)
    }
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
