//! The two kinds of `coherence.dev/v1alpha1` (design §3): [`CoherencePolicy`] and
//! [`FinOpsGate`]. The CRDs are generated from these types (`coherence-operator crdgen`):
//! defaults come from the serde defaults, validation from schemars attributes and CEL rules,
//! so the API server refuses what the build step could not use.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of both kinds.
pub const GROUP: &str = "coherence.dev";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of both kinds.
pub const API_VERSION: &str = "coherence.dev/v1alpha1";
/// Default verifier endpoint: the chart's Service in namespace `coherence`.
pub const DEFAULT_VERIFIER_ENDPOINT: &str = "https://coherence-verifier.coherence.svc:8443";

/// A duration as the sidecar reads it: `250ms`, `15s`, `5m`, `1h`, `1d`.
const DURATION_RULE: &str = "self.matches('^[1-9][0-9]*(ms|s|m|h|d)$')";
const DURATION_MESSAGE: &str = "expected a positive duration like 250ms, 15s, 5m, 1h or 1d";

// ---------------------------------------------------------------------------------------------
// CoherencePolicy
// ---------------------------------------------------------------------------------------------

/// Which pods a policy governs, how their sidecar reads and judges signals, what protects the
/// workloads, and what a veto does.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "coherence.dev",
    version = "v1alpha1",
    kind = "CoherencePolicy",
    plural = "coherencepolicies",
    namespaced,
    status = "CoherencePolicyStatus",
    shortname = "cpol",
    category = "coherence",
    derive = "PartialEq",
    doc = "Selects pods for the Coherence sidecar and configures what it reads, how drift is judged, what protects the workloads and what a veto does.",
    printcolumn = r#"{"name": "PODS", "type": "integer", "jsonPath": ".status.matchedPods", "description": "pods the selector matches"}"#,
    printcolumn = r#"{"name": "INJECTED", "type": "integer", "jsonPath": ".status.injectedPods", "description": "matched pods running the sidecar"}"#,
    printcolumn = r#"{"name": "RISK", "type": "string", "jsonPath": ".status.driftRisk", "description": "worst drift risk of the selected workloads"}"#,
    printcolumn = r#"{"name": "VETO", "type": "string", "jsonPath": ".status.veto.action", "description": "active veto"}"#,
    printcolumn = r#"{"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "!has(self.pcs.window) || self.pcs.window in self.windows",
    "pcs.window must be one of windows"
))]
pub struct CoherencePolicySpec {
    /// Label selector of the pods (and through them, the workloads) this policy governs; it
    /// must not be empty (an empty selector would inject every pod of the namespace).
    #[x_kube(validation = (
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
        "selector must not be empty"
    ))]
    pub selector: LabelSelector,
    /// Where the sidecar reads signals; names are unique.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = ("self.all(s, self.exists_one(t, t.name == s.name))", "source names must be unique"))]
    pub sources: Vec<Source>,
    /// Rolling windows kept per signal, e.g. `["5m", "1h", "24h"]`.
    #[serde(default = "default_windows")]
    #[schemars(length(min = 1, max = 8), inner(length(max = 16)))]
    #[x_kube(
        validation = ("self.all(w, w.matches('^[1-9][0-9]*[smhd]$'))", "each window must look like 90s, 5m, 1h or 7d"),
        validation = ("self.all(w, self.exists_one(v, v == w))", "windows must be unique")
    )]
    pub windows: Vec<String>,
    /// Thresholds of the drift-risk rules (design §5).
    #[serde(default)]
    pub drift: DriftSpec,
    /// Thresholds of the detectors (design §5).
    #[serde(default)]
    pub detectors: DetectorsSpec,
    /// The Proof-of-Computation Summary of each epoch and its signing key.
    pub pcs: PcsSpec,
    /// Where records are delivered.
    #[serde(default)]
    pub verifier: VerifierSpec,
    /// FinOps samples: which signals carry qps and latency, and the pod's price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finops: Option<PolicyFinopsSpec>,
    /// Optional HPA, PDB and NetworkPolicy for the selected Deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protect: Option<ProtectSpec>,
    /// What a veto does.
    #[serde(default)]
    pub veto: VetoSpec,
}

fn default_windows() -> Vec<String> {
    vec!["1h".to_string()]
}

/// One place the sidecar reads signals from: exactly one of `prometheus`, `jsonl`, `http`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "(has(self.prometheus) ? 1 : 0) + (has(self.jsonl) ? 1 : 0) + (has(self.http) ? 1 : 0) == 1",
    "exactly one of prometheus, jsonl or http"
))]
pub struct Source {
    /// Unique name of the source (in the sidecar's `/status` and metric labels).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Scrape the workload's Prometheus endpoint on the pod's loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    /// Follow a JSON-lines file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<JsonlSource>,
    /// Pull a paged JSON API of coherence summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
}

/// Scrape `http://127.0.0.1:PORT/PATH`; the selected metrics are the signals.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Port of the workload's metrics endpoint.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Path of the metrics endpoint.
    #[serde(default = "default_metrics_path")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = ("self.startsWith('/')", "path must start with /"))]
    pub path: String,
    /// Metric names, or `re:<regex>` matched against the whole name: the signals.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    pub metrics: Vec<String>,
    /// Scrape interval.
    #[serde(default = "default_prometheus_interval")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = (DURATION_RULE, DURATION_MESSAGE))]
    pub interval: String,
}

fn default_metrics_path() -> String {
    "/metrics".to_string()
}

fn default_prometheus_interval() -> String {
    "15s".to_string()
}

/// Follow a JSON-lines file (a volume the workload writes and the sidecar reads).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JsonlSource {
    /// Absolute path of the file inside the pod.
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = ("self.startsWith('/')", "path must be absolute"))]
    pub path: String,
    /// Top-level number fields read as signals (default: every number but the timestamp).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub signals: Vec<String>,
    /// How often the file is checked.
    #[serde(default = "default_jsonl_interval")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = (DURATION_RULE, DURATION_MESSAGE))]
    pub interval: String,
    /// Lines are AES-256-GCM encrypted; the 32-byte key (base64) is in this Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aes_key_secret_ref: Option<SecretKeyRef>,
}

fn default_jsonl_interval() -> String {
    "1s".to_string()
}

/// Pull a paged JSON API of coherence summaries; its signals are `coherenceScore`,
/// `agentStates` and `eventCount`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// URL of the API (`http://` or `https://`).
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = ("self.startsWith('http://') || self.startsWith('https://')", "url must be http:// or https://"))]
    pub url: String,
    /// Bearer token in this Secret (mounted as a file, re-read when it rotates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Items per page asked for.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub page_size: u32,
    /// Timeout of one request (at most the interval).
    #[serde(default = "default_http_timeout")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = (DURATION_RULE, DURATION_MESSAGE))]
    pub timeout: String,
    /// Poll interval.
    #[serde(default = "default_http_interval")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = (DURATION_RULE, DURATION_MESSAGE))]
    pub interval: String,
}

fn default_page_size() -> u32 {
    100
}

fn default_http_timeout() -> String {
    "10s".to_string()
}

fn default_http_interval() -> String {
    "30s".to_string()
}

/// A key of a Secret in the policy's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the policy's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Drift-risk thresholds: these for every signal, `signals.NAME` overrides for one signal.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = ("self.volatilityHigh >= self.volatilityMedium", "volatilityHigh must be >= volatilityMedium"),
    validation = ("!has(self.meanHighBelow) || !has(self.meanMediumBelow) || self.meanMediumBelow >= self.meanHighBelow", "meanMediumBelow must be >= meanHighBelow")
)]
pub struct DriftSpec {
    /// Medium when `volatilityIndex = σ/|μ|` is above this.
    #[serde(default = "default_volatility_medium")]
    #[schemars(range(min = 0.0))]
    pub volatility_medium: f64,
    /// High when `volatilityIndex` is above this.
    #[serde(default = "default_volatility_high")]
    #[schemars(range(min = 0.0))]
    pub volatility_high: f64,
    /// Medium when the window's mean is below this (level-like signals, e.g. a 0–100 score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_medium_below: Option<f64>,
    /// High when the window's mean is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_high_below: Option<f64>,
    /// Fewer samples than this in a window is `insufficient_data`, never low.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_samples: u64,
    /// Per-signal overrides; fields left out keep the values above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub signals: BTreeMap<String, DriftOverride>,
}

fn default_volatility_medium() -> f64 {
    0.10
}

fn default_volatility_high() -> f64 {
    0.25
}

fn default_min_samples() -> u64 {
    coherence_core::window::DEFAULT_MIN_SAMPLES
}

impl Default for DriftSpec {
    fn default() -> Self {
        Self {
            volatility_medium: default_volatility_medium(),
            volatility_high: default_volatility_high(),
            mean_medium_below: None,
            mean_high_below: None,
            min_samples: default_min_samples(),
            signals: BTreeMap::new(),
        }
    }
}

/// Drift thresholds of one signal; each field left out keeps the policy-wide value.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = ("!has(self.volatilityHigh) || !has(self.volatilityMedium) || self.volatilityHigh >= self.volatilityMedium", "volatilityHigh must be >= volatilityMedium"),
    validation = ("!has(self.meanHighBelow) || !has(self.meanMediumBelow) || self.meanMediumBelow >= self.meanHighBelow", "meanMediumBelow must be >= meanHighBelow")
)]
pub struct DriftOverride {
    /// Medium when `volatilityIndex` is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub volatility_medium: Option<f64>,
    /// High when `volatilityIndex` is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub volatility_high: Option<f64>,
    /// Medium when the mean is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_medium_below: Option<f64>,
    /// High when the mean is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_high_below: Option<f64>,
    /// Fewer samples than this is `insufficient_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_samples: Option<u64>,
}

/// Detector thresholds (design §5).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DetectorsSpec {
    /// Variance escalation: flag when recent variance / baseline variance exceeds this.
    #[serde(default = "default_variance_ratio")]
    #[schemars(range(min = 1.0))]
    pub variance_ratio: f64,
    /// Spike: a point above `μ + k·σ` of the trailing baseline.
    #[serde(default = "default_spike_sigma")]
    #[schemars(range(min = 0.0))]
    pub spike_sigma: f64,
    /// Trend/leak: flag when the fitted start→end change exceeds this fraction.
    #[serde(default = "default_trend_increase")]
    #[schemars(range(min = 0.0))]
    pub trend_increase: f64,
    /// Robust z: flag `|0.6745·(x − median)/MAD|` above this.
    #[serde(default = "default_robust_z")]
    #[schemars(range(min = 0.0))]
    pub robust_z: f64,
    /// Retry storm: flag when outbound / inbound requests exceed this ratio.
    #[serde(default = "default_retry_amplification")]
    #[schemars(range(min = 0.0))]
    pub retry_amplification: f64,
    /// Memory fever: flag allocation faster than this many MB per second.
    #[serde(default = "default_alloc_velocity")]
    #[schemars(range(min = 0.0))]
    pub alloc_velocity_mb_s: f64,
}

fn default_variance_ratio() -> f64 {
    coherence_core::detect::DetectorConfig::default().variance_ratio
}

fn default_spike_sigma() -> f64 {
    coherence_core::detect::DetectorConfig::default().spike_sigma
}

fn default_trend_increase() -> f64 {
    coherence_core::detect::DetectorConfig::default().trend_increase
}

fn default_robust_z() -> f64 {
    coherence_core::detect::DetectorConfig::default().robust_z
}

fn default_retry_amplification() -> f64 {
    coherence_core::detect::DetectorConfig::default().retry_amplification
}

fn default_alloc_velocity() -> f64 {
    coherence_core::detect::DetectorConfig::default().alloc_velocity_mb_s
}

impl Default for DetectorsSpec {
    fn default() -> Self {
        Self {
            variance_ratio: default_variance_ratio(),
            spike_sigma: default_spike_sigma(),
            trend_increase: default_trend_increase(),
            robust_z: default_robust_z(),
            retry_amplification: default_retry_amplification(),
            alloc_velocity_mb_s: default_alloc_velocity(),
        }
    }
}

/// Signing algorithm of PCS and SignalReports.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignAlg {
    /// HMAC-SHA256; the Secret key holds the shared key (`PCS_HMAC_KEY`).
    #[default]
    Hmac,
    /// Ed25519; the Secret key holds the base64 private key (`PCS_ED25519_KEY_B64`).
    Ed25519,
}

impl SignAlg {
    /// Lowercase name, as the sidecar reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            SignAlg::Hmac => "hmac",
            SignAlg::Ed25519 => "ed25519",
        }
    }
}

/// The PCS of each epoch.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PcsSpec {
    /// Box-counting scales, strictly increasing.
    #[serde(default = "default_scales")]
    #[schemars(length(min = 2, max = 16), inner(range(min = 1, max = 1048576)))]
    #[x_kube(validation = ("self.all(x, self.filter(y, y < x).size() == self.indexOf(x))", "scales must be strictly increasing"))]
    pub scales: Vec<u32>,
    /// Signing algorithm.
    #[serde(default)]
    pub alg: SignAlg,
    /// The signing key: a Secret key in the policy's namespace.
    pub secret_ref: SecretKeyRef,
    /// Length of an epoch: one PCS and one SignalReport per epoch.
    #[serde(default = "default_epoch")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = (DURATION_RULE, DURATION_MESSAGE))]
    pub epoch: String,
    /// Signal whose window the PCS summarises (default: the first signal seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub signal: Option<String>,
    /// Which of `windows` the PCS covers (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub window: Option<String>,
}

fn default_scales() -> Vec<u32> {
    vec![2, 4, 8, 16, 32]
}

fn default_epoch() -> String {
    "60s".to_string()
}

/// Where the sidecar delivers records.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifierSpec {
    /// Base URL of the verifier.
    #[serde(default = "default_verifier_endpoint")]
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = ("self.startsWith('https://') || self.startsWith('http://')", "endpoint must be an https:// (or, for development, http://) URL"))]
    pub endpoint: String,
    /// Secret with `ca.crt`, the CA of the verifier's certificate (default: `ca.crt` of the
    /// client-certificate Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
    /// Secret with `tls.crt` and `tls.key`, the sidecar's client certificate
    /// (`spiffe://coherence.dev/ns/<namespace>/sa/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
}

fn default_verifier_endpoint() -> String {
    DEFAULT_VERIFIER_ENDPOINT.to_string()
}

impl Default for VerifierSpec {
    fn default() -> Self {
        Self {
            endpoint: default_verifier_endpoint(),
            ca_secret_ref: None,
            client_cert_secret_ref: None,
        }
    }
}

/// FinOps samples of the sidecar: qps and latency signals, and the pod's price.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "has(self.costPerReplicaHourUsd) != (has(self.cpuHourUsd) || has(self.memoryGibHourUsd))",
    "set costPerReplicaHourUsd, or cpuHourUsd and memoryGibHourUsd, not both"
))]
pub struct PolicyFinopsSpec {
    /// Signal with requests per second.
    #[schemars(length(min = 1, max = 256))]
    pub qps_signal: String,
    /// Signal with p95 latency in ms.
    #[schemars(length(min = 1, max = 256))]
    pub latency_signal: String,
    /// Price of one replica-hour, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cost_per_replica_hour_usd: Option<f64>,
    /// Price of one CPU core-hour, USD (priced from the pod's CPU request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cpu_hour_usd: Option<f64>,
    /// Price of one GiB-hour of memory, USD (priced from the pod's memory request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub memory_gib_hour_usd: Option<f64>,
}

/// Objects that protect the selected Deployments.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtectSpec {
    /// A HorizontalPodAutoscaler (`autoscaling/v2`) per Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa: Option<HpaSpec>,
    /// A PodDisruptionBudget (`policy/v1`) per Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdb: Option<PdbSpec>,
    /// A NetworkPolicy (`networking.k8s.io/v1`) per Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
}

/// HPA settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = ("self.maxReplicas >= self.minReplicas", "maxReplicas must be >= minReplicas"))]
pub struct HpaSpec {
    /// Fewest replicas.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilization (percent of requests) the HPA keeps.
    #[serde(
        default = "default_cpu_target",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_cpu_target() -> i32 {
    80
}

/// PDB settings: exactly one of `minAvailable` and `maxUnavailable`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "has(self.minAvailable) != has(self.maxUnavailable)",
    "set exactly one of minAvailable and maxUnavailable"
))]
pub struct PdbSpec {
    /// Pods that must stay available (a number or a percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Pods that may be unavailable (a number or a percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// NetworkPolicy settings.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Isolate egress of the selected pods to the verifier (TCP 8443) and DNS. Other egress
    /// must then be allowed by other NetworkPolicies.
    #[serde(default = "default_true")]
    pub allow_verifier_egress: bool,
    /// Isolate ingress to these peers; empty leaves ingress as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub ingress_from: Vec<NetworkPolicyPeer>,
    /// When ingress is isolated (`ingressFrom` is not empty), these peers may also reach the
    /// sidecar's metrics port (`coh-metrics`, 9104). Default: the Prometheus Operator's
    /// Prometheus pods (`app.kubernetes.io/name: prometheus`) in any namespace; `[]` allows
    /// none.
    #[serde(default = "default_metrics_from")]
    #[schemars(length(max = 32))]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            allow_verifier_egress: true,
            ingress_from: Vec::new(),
            metrics_from: default_metrics_from(),
        }
    }
}

/// The Prometheus Operator's Prometheus pods, in any namespace.
pub fn default_metrics_from() -> Vec<NetworkPolicyPeer> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some(std::collections::BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "prometheus".to_string(),
            )])),
            match_expressions: None,
        }),
        ip_block: None,
    }]
}

fn default_true() -> bool {
    true
}

/// What a veto does.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VetoSpec {
    /// `shadow`, `recommend` or `enforce`.
    #[serde(default)]
    pub mode: VetoMode,
    /// A veto is released when its incident has had no new finding for this long.
    #[serde(default = "default_clear_after")]
    #[schemars(length(max = 16), regex(pattern = r"^[1-9][0-9]*(s|m|h)$"))]
    pub clear_after: String,
}

fn default_clear_after() -> String {
    "15m".to_string()
}

impl Default for VetoSpec {
    fn default() -> Self {
        Self {
            mode: VetoMode::default(),
            clear_after: default_clear_after(),
        }
    }
}

/// What a veto does.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VetoMode {
    /// Status only.
    Shadow,
    /// Status, an Event and the `coherence_veto_active` metric.
    #[default]
    Recommend,
    /// As `recommend`, and the selected Deployments' rollouts are paused while the veto holds.
    Enforce,
}

/// What the operator observed of a policy.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoherencePolicyStatus {
    /// `Ready`, `SidecarsInjected`, `SignalsHealthy`, `Vetoed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods the selector matches.
    #[serde(default)]
    pub matched_pods: u32,
    /// Matched pods running the sidecar.
    #[serde(default)]
    pub injected_pods: u32,
    /// Worst drift risk of the selected workloads (`low`, `medium`, `high`); absent without data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_risk: Option<String>,
    /// Newest report the verifier received for the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<Time>,
    /// The active veto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veto: Option<VetoStatus>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An active veto.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VetoStatus {
    /// `shed-load`, `circuit-break` or `pause-rollout`.
    pub action: String,
    /// Why that action.
    pub reason: String,
    /// Start of the incident behind the veto.
    pub since: Time,
    /// The incidents behind the veto, one per vetoed workload.
    #[serde(default)]
    pub evidence: Vec<VetoEvidence>,
}

/// One incident behind a veto.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VetoEvidence {
    /// Workload name.
    pub workload: String,
    /// The verifier's incident id.
    pub incident_id: String,
    /// Primary pattern (`seizure`, `fever`, `auto_immune`, ...).
    pub pattern: String,
    /// Risk in [0, 1].
    pub risk: f64,
    /// Action recommended for this workload.
    pub action: String,
    /// Newest finding of the incident (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finding: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// FinOpsGate
// ---------------------------------------------------------------------------------------------

/// Grades the cost of a workload's delivered performance against a baseline.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "coherence.dev",
    version = "v1alpha1",
    kind = "FinOpsGate",
    plural = "finopsgates",
    namespaced,
    status = "FinOpsGateStatus",
    shortname = "fgate",
    category = "coherence",
    derive = "PartialEq",
    doc = "Grades a Deployment's or StatefulSet's cost per delivered performance (FTI) against a baseline and can veto its rollout.",
    printcolumn = r#"{"name": "TARGET", "type": "string", "jsonPath": ".spec.targetRef.name", "description": "the graded workload"}"#,
    printcolumn = r#"{"name": "FTI", "type": "number", "jsonPath": ".status.fti", "description": "mean FinOps Trade-off Index"}"#,
    printcolumn = r#"{"name": "GRADE", "type": "string", "jsonPath": ".status.grade", "description": "OK, WARN, FAIL or UNKNOWN"}"#,
    printcolumn = r#"{"name": "LAMBDA", "type": "number", "jsonPath": ".status.lambdaEffective", "description": "lambda_effective"}"#,
    printcolumn = r#"{"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "!self.enforce || self.targetRef.kind == 'Deployment'",
    "enforce needs a Deployment target: a StatefulSet rollout cannot be paused"
))]
pub struct FinOpsGateSpec {
    /// The graded workload, in the gate's namespace.
    pub target_ref: TargetRef,
    /// How the workload is priced.
    pub cost: CostSpec,
    /// What the samples are compared with.
    pub baseline: BaselineSpec,
    /// Grade thresholds.
    #[serde(default)]
    pub thresholds: GateThresholds,
    /// Parameters of λ_effective.
    #[serde(default)]
    pub lambda: LambdaSpec,
    /// Priced samples needed for a grade; fewer is `UNKNOWN`.
    #[serde(default = "default_gate_min_samples")]
    #[schemars(range(min = 1, max = 100000))]
    pub min_samples: u64,
    /// A `FAIL` vetoes the target's rollout: the Deployment is paused while it holds.
    #[serde(default)]
    pub enforce: bool,
}

fn default_gate_min_samples() -> u64 {
    10
}

/// Kind of a gate's target.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
}

impl TargetKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
        }
    }
}

/// `{kind, name}` of the graded workload.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `Deployment` or `StatefulSet`.
    pub kind: TargetKind,
    /// Name in the gate's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Price: per replica-hour, or the pod's requests × unit prices.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "has(self.costPerReplicaHourUsd) ? !(has(self.cpuHourUsd) || has(self.memoryGibHourUsd)) : (has(self.cpuHourUsd) && has(self.memoryGibHourUsd))",
    "set exactly one of costPerReplicaHourUsd, or cpuHourUsd with memoryGibHourUsd"
))]
pub struct CostSpec {
    /// Price of one replica-hour, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cost_per_replica_hour_usd: Option<f64>,
    /// Price of one CPU core-hour, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cpu_hour_usd: Option<f64>,
    /// Price of one GiB-hour of memory, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub memory_gib_hour_usd: Option<f64>,
}

/// The baseline: explicit per-replica values, or medians of the samples in a window before
/// the target's last rollout.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "has(self.window) != (has(self.qps) || has(self.latencyP95Ms) || has(self.costUsdPerHour))",
    "set window, or qps, latencyP95Ms and costUsdPerHour"
))]
#[x_kube(validation = (
    "has(self.window) || (has(self.qps) && has(self.latencyP95Ms) && has(self.costUsdPerHour))",
    "an explicit baseline needs qps, latencyP95Ms and costUsdPerHour"
))]
pub struct BaselineSpec {
    /// Requests per second one replica serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    #[x_kube(validation = ("self > 0.0", "qps must be positive"))]
    pub qps: Option<f64>,
    /// p95 latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = ("self > 0.0", "latencyP95Ms must be positive"))]
    pub latency_p95_ms: Option<f64>,
    /// Cost of one replica-hour, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = ("self > 0.0", "costUsdPerHour must be positive"))]
    pub cost_usd_per_hour: Option<f64>,
    /// Take the medians of the samples in this window before the last rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = r"^[1-9][0-9]*[smhd]$"))]
    pub window: Option<String>,
}

/// Grade thresholds: OK ≤ `ok` < WARN ≤ `warn` < FAIL.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = ("self.warn >= self.ok", "warn must be >= ok"))]
pub struct GateThresholds {
    /// Highest FTI graded OK.
    #[serde(default = "default_ok")]
    #[x_kube(validation = ("self > 0.0", "ok must be positive"))]
    pub ok: f64,
    /// Highest FTI graded WARN.
    #[serde(default = "default_warn")]
    pub warn: f64,
}

fn default_ok() -> f64 {
    coherence_core::finops::Thresholds::default().ok
}

fn default_warn() -> f64 {
    coherence_core::finops::Thresholds::default().warn
}

impl Default for GateThresholds {
    fn default() -> Self {
        Self {
            ok: default_ok(),
            warn: default_warn(),
        }
    }
}

/// λ_effective = `sibg · exp(−asdpi · days since the last rollout)`.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LambdaSpec {
    /// λ_SIBG: the weight right after a rollout.
    #[serde(default = "default_sibg")]
    #[schemars(range(min = 0.0))]
    pub sibg: f64,
    /// λ_ASDPI: decay per day.
    #[serde(default = "default_asdpi")]
    #[schemars(range(min = 0.0))]
    pub asdpi: f64,
}

fn default_sibg() -> f64 {
    coherence_core::finops::LambdaParams::default().sibg
}

fn default_asdpi() -> f64 {
    coherence_core::finops::LambdaParams::default().asdpi
}

impl Default for LambdaSpec {
    fn default() -> Self {
        Self {
            sibg: default_sibg(),
            asdpi: default_asdpi(),
        }
    }
}

/// What the operator computed for a gate.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FinOpsGateStatus {
    /// Mean FTI of the priced samples; absent without samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fti: Option<f64>,
    /// `OK`, `WARN`, `FAIL` or `UNKNOWN` (too few samples: never `OK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<String>,
    /// λ_effective; absent when the last rollout time is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_effective: Option<f64>,
    /// Samples priced.
    #[serde(default)]
    pub samples: u64,
    /// When the grade was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<Time>,
    /// Inputs, medians and formulas behind the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<GateExplain>,
    /// `Passed`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How a gate's numbers were made.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateExplain {
    /// FTI formula.
    pub formula: String,
    /// λ formula.
    pub lambda_formula: String,
    /// What went in.
    pub inputs: GateInputs,
    /// Medians of the evaluated samples.
    pub medians: GateMedians,
    /// The baseline used (per replica).
    pub baseline: GateBaseline,
    /// Samples excluded, by reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub excluded: BTreeMap<String, u64>,
    /// Per-sample grade counts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grades: BTreeMap<String, u64>,
    /// Engine version of the computation.
    pub engine_version: String,
}

/// Inputs of a gate's evaluation.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateInputs {
    /// Cost of one replica-hour, USD, as priced.
    pub cost_per_replica_hour_usd: f64,
    /// `costPerReplicaHourUsd` or `requests`.
    pub cost_source: String,
    /// CPU request of one pod, cores (priced from requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request_cores: Option<f64>,
    /// Memory request of one pod, GiB (priced from requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request_gib: Option<f64>,
    /// Samples received from the verifier.
    pub samples_received: u64,
    /// Samples evaluated (since the last rollout when it is known).
    pub samples_evaluated: u64,
    /// Oldest evaluated sample (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    /// Newest evaluated sample (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    /// The target's last rollout (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout: Option<String>,
    /// Days since the last rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_since_change: Option<f64>,
    /// Priced samples needed for a grade.
    pub min_samples: u64,
    /// Grade thresholds.
    pub thresholds: GateThresholds,
    /// λ parameters.
    pub lambda: LambdaSpec,
}

/// Medians of the evaluated samples.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateMedians {
    /// Median qps per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    /// Median p95 latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
}

/// The baseline a gate used.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateBaseline {
    /// `explicit` or `window`.
    pub source: String,
    /// Requests per second one replica serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    /// p95 latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// Cost of one replica-hour, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd_per_hour: Option<f64>,
    /// Samples the window baseline was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
}
