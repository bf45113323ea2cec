//! The verifier's answer to `GET /v1/workloads/{namespace}/{workload}` (design §6), the part
//! the operator reads. Fields the operator does not use are ignored, missing ones default, so
//! a newer verifier stays readable.

use serde::Deserialize;

/// One workload's summary.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSummary {
    /// Namespace.
    pub namespace: String,
    /// Workload name.
    pub workload: String,
    /// `low`, `medium`, `high` or `insufficient_data`.
    pub drift_risk: String,
    /// Newest record applied (RFC 3339).
    pub updated_at: String,
    /// Pods that reported.
    pub pods: Vec<PodSummary>,
    /// Incidents of the retained findings.
    pub incidents: Vec<IncidentSummary>,
    /// The newest incident with a recommended action.
    pub veto: Option<VetoSummary>,
    /// FinOps samples.
    pub finops: FinopsSummary,
}

/// One pod's newest report.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSummary {
    /// Pod name.
    pub pod: String,
    /// Epoch of its newest report.
    pub epoch: u64,
    /// When it arrived (RFC 3339).
    pub received_at: String,
}

/// An incident, as far as the veto needs it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IncidentSummary {
    /// Stable id.
    pub id: String,
    /// Latest finding, ms since the epoch.
    pub end_ms: i64,
}

/// The verifier's veto recommendation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VetoSummary {
    /// `shed-load`, `circuit-break`, `pause-rollout`.
    pub action: String,
    /// Why.
    pub reason: String,
    /// Incident start (RFC 3339).
    pub since: String,
    /// Risk in [0, 1].
    pub risk: f64,
    /// Incident id.
    pub incident_id: String,
    /// Primary pattern.
    pub pattern: String,
}

/// FinOps samples of a workload.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FinopsSummary {
    /// Samples retained.
    pub samples: u64,
    /// The newest samples.
    pub recent: Vec<FinopsSample>,
}

/// One FinOps sample of one pod and epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FinopsSample {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Requests per second of the pod.
    pub qps: f64,
    /// p95 latency, ms.
    pub latency_p95_ms: f64,
    /// Cost of the epoch as the sidecar priced it, USD.
    pub infra_cost_usd: f64,
}

impl WorkloadSummary {
    /// Parses the verifier's JSON.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, crate::Error> {
        serde_json::from_value(v.clone()).map_err(|e| crate::Error::Verifier(e.to_string()))
    }

    /// End of the incident `id`, ms, when the summary lists it.
    pub fn incident_end_ms(&self, id: &str) -> Option<i64> {
        self.incidents.iter().find(|i| i.id == id).map(|i| i.end_ms)
    }
}
