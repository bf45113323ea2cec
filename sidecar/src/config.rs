//! The sidecar's configuration: a YAML file (the operator renders it into a ConfigMap) overlaid
//! with the environment of design §7. Keys are camelCase, as in the CoherencePolicy it comes from.
//! Every error names the field (`sources[1].url`, `windows[0]`) and what was expected.

use crate::sample::Dur;
use crate::sources::SourceConfig;
use coherence_core::detect::{DetectorConfig, DetectorSignals};
use coherence_core::window::{DriftThresholds, WindowSpan};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration that cannot be used: the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Path of the field (`sources[0].interval`), or the environment variable.
    pub field: String,
    /// What was expected, and what was found.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Who this sidecar speaks for; empty fields come from the downward API environment.
    #[serde(default)]
    pub identity: IdentitySettings,
    /// Where signals are read.
    pub sources: Vec<SourceConfig>,
    /// Length of an epoch: one PCS and one SignalReport per epoch.
    #[serde(default = "default_epoch")]
    pub epoch: Dur,
    /// Rolling windows kept per signal.
    #[serde(default = "default_windows")]
    pub windows: Vec<WindowSpan>,
    /// Drift-risk thresholds: `default` for every signal, `signals.NAME` for one signal.
    #[serde(default)]
    pub drift: DriftSettings,
    /// Detector thresholds (design §5).
    #[serde(default)]
    pub detectors: DetectorConfig,
    /// Which signals feed which detectors.
    #[serde(default)]
    pub detector_signals: DetectorSignals,
    /// The PCS of each epoch.
    #[serde(default)]
    pub pcs: PcsSettings,
    /// FinOps samples (qps, latency, cost).
    #[serde(default)]
    pub finops: Option<FinopsSettings>,
    /// Where records are delivered.
    #[serde(default)]
    pub verifier: VerifierSettings,
    /// The durable queue of records to deliver.
    #[serde(default)]
    pub outbox: OutboxSettings,
    /// Retries and dead-lettering.
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// The local API.
    #[serde(default)]
    pub api: ApiSettings,
    /// Optional rolling persistence of computed metrics.
    #[serde(default)]
    pub persistence: PersistenceSettings,
    /// What goes into each SignalReport.
    #[serde(default)]
    pub report: ReportSettings,
}

/// Limits of the SignalReport, so a record stays well under the verifier's body limit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportSettings {
    /// Window statistics per report (signal × window). Beyond it the detector, FinOps and PCS
    /// signals go first, then the riskiest; the rest are left out and counted.
    #[serde(default = "default_max_windows")]
    pub max_windows: usize,
    /// Findings per report (the riskiest first).
    #[serde(default = "default_max_findings")]
    pub max_findings: usize,
}

fn default_max_windows() -> usize {
    160
}

fn default_max_findings() -> usize {
    32
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            max_windows: default_max_windows(),
            max_findings: default_max_findings(),
        }
    }
}

fn default_epoch() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

fn default_windows() -> Vec<WindowSpan> {
    WindowSpan::from_secs(3600).into_iter().collect()
}

/// `namespace`, `pod` and `workload` of the sidecar (the PCS `shard_id`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentitySettings {
    /// Namespace (env `POD_NAMESPACE`).
    #[serde(default)]
    pub namespace: String,
    /// Pod name (env `POD_NAME`).
    #[serde(default)]
    pub pod: String,
    /// Workload (Deployment, StatefulSet) name (env `WORKLOAD_NAME`).
    #[serde(default)]
    pub workload: String,
}

impl IdentitySettings {
    /// `<namespace>/<workload>/<pod>`.
    pub fn shard_id(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.workload, self.pod)
    }
}

/// Drift thresholds: one default and per-signal overrides. A partial entry keeps the rest of
/// what it overrides: `default` starts from volatility-only rules (0.10 / 0.25, no rule on the
/// level, 10 samples), and each `signals.NAME` starts from `default`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "DriftSettingsSpec")]
pub struct DriftSettings {
    /// Thresholds of every signal without its own.
    pub default: DriftThresholds,
    /// Per-signal thresholds.
    pub signals: BTreeMap<String, DriftThresholds>,
}

/// Drift thresholds as written: every field optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftSpec {
    /// Medium when `volatilityIndex` is above this.
    pub volatility_medium: Option<f64>,
    /// High when `volatilityIndex` is above this.
    pub volatility_high: Option<f64>,
    /// Medium when the mean is below this.
    pub mean_medium_below: Option<f64>,
    /// High when the mean is below this.
    pub mean_high_below: Option<f64>,
    /// Fewer samples than this is `insufficient_data`.
    pub min_samples: Option<u64>,
}

impl DriftSpec {
    /// `base` with the fields this spec sets.
    pub fn over(&self, base: DriftThresholds) -> DriftThresholds {
        DriftThresholds {
            volatility_medium: self.volatility_medium.unwrap_or(base.volatility_medium),
            volatility_high: self.volatility_high.unwrap_or(base.volatility_high),
            mean_medium_below: self.mean_medium_below.or(base.mean_medium_below),
            mean_high_below: self.mean_high_below.or(base.mean_high_below),
            min_samples: self.min_samples.unwrap_or(base.min_samples),
        }
    }
}

/// `drift` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftSettingsSpec {
    /// Overrides of the volatility-only defaults.
    #[serde(default)]
    pub default: DriftSpec,
    /// Per-signal overrides of `default`.
    #[serde(default)]
    pub signals: BTreeMap<String, DriftSpec>,
}

impl From<DriftSettingsSpec> for DriftSettings {
    fn from(spec: DriftSettingsSpec) -> Self {
        let default = spec.default.over(DriftThresholds::volatility_only());
        let signals = spec
            .signals
            .iter()
            .map(|(k, v)| (k.clone(), v.over(default)))
            .collect();
        Self { default, signals }
    }
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettingsSpec::default().into()
    }
}

impl DriftSettings {
    /// The thresholds of `signal`.
    pub fn for_signal(&self, signal: &str) -> &DriftThresholds {
        self.signals.get(signal).unwrap_or(&self.default)
    }
}

/// Signing algorithm of PCS and SignalReports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alg {
    /// HMAC-SHA256 with `PCS_HMAC_KEY`.
    #[default]
    Hmac,
    /// Ed25519 with `PCS_ED25519_KEY_B64`.
    Ed25519,
}

/// The PCS of each epoch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PcsSettings {
    /// Signal whose window values the PCS summarises (default: the first signal seen).
    #[serde(default)]
    pub signal: Option<String>,
    /// Which configured window the PCS covers (default: the first).
    #[serde(default)]
    pub window: Option<WindowSpan>,
    /// Box-counting scales.
    #[serde(default = "default_scales")]
    pub scales: Vec<u32>,
    /// Seed of the coh★ directions.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Signing algorithm (env `PCS_SIGN_ALG` overrides).
    #[serde(default)]
    pub alg: Alg,
}

fn default_scales() -> Vec<u32> {
    vec![2, 4, 8, 16, 32]
}

fn default_seed() -> u64 {
    42
}

impl Default for PcsSettings {
    fn default() -> Self {
        Self {
            signal: None,
            window: None,
            scales: default_scales(),
            seed: default_seed(),
            alg: Alg::default(),
        }
    }
}

/// FinOps: which signals carry qps and latency, and how the pod is priced.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FinopsSettings {
    /// Signal with requests per second (a counter scraped as a rate works).
    pub qps_signal: String,
    /// Signal with p95 latency in ms, or a Prometheus histogram family (`NAME` or
    /// `NAME_bucket`) whose p95 the engine computes from the epoch's bucket deltas.
    pub latency_signal: String,
    /// Price of one replica-hour, USD (or use the requests and prices below).
    #[serde(default)]
    pub cost_per_replica_hour_usd: Option<f64>,
    /// Price of one CPU core-hour, USD.
    #[serde(default)]
    pub cpu_hour_usd: Option<f64>,
    /// Price of one GiB-hour of memory, USD.
    #[serde(default)]
    pub memory_gib_hour_usd: Option<f64>,
    /// The pod's CPU request, cores (env `POD_CPU_REQUEST` from the downward API).
    #[serde(default)]
    pub cpu_request_cores: Option<f64>,
    /// The pod's memory request, GiB (env `POD_MEMORY_REQUEST` in bytes).
    #[serde(default)]
    pub memory_request_gib: Option<f64>,
}

impl FinopsSettings {
    /// Cost of the pod per hour, USD, from the replica price or from requests × prices.
    pub fn cost_per_hour(&self) -> Option<f64> {
        if let Some(c) = self.cost_per_replica_hour_usd {
            return Some(c);
        }
        match (
            self.cpu_hour_usd,
            self.cpu_request_cores,
            self.memory_gib_hour_usd,
            self.memory_request_gib,
        ) {
            (Some(cp), Some(cr), mp, mr) => Some(cp * cr + mp.unwrap_or(0.0) * mr.unwrap_or(0.0)),
            (None, _, Some(mp), Some(mr)) => Some(mp * mr),
            _ => None,
        }
    }
}

/// Where the verifier is and the TLS files of the client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifierSettings {
    /// Base URL (env `ENDPOINT`), e.g. `https://localhost:8443`.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// CA bundle that signs the verifier's certificate (env `COHERENCE_TLS_CA`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (env `COHERENCE_TLS_CERT`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client key (env `COHERENCE_TLS_KEY`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Timeout of one delivery request.
    #[serde(default = "default_request_timeout")]
    pub timeout: Dur,
}

fn default_endpoint() -> String {
    "https://localhost:8443".into()
}

fn default_request_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            endpoint: default_endpoint(),
            ca: None,
            cert: None,
            key: None,
            timeout: default_request_timeout(),
        }
    }
}

/// The outbox: where, how large.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxSettings {
    /// Directory of the outbox segments and the dead-letter file.
    #[serde(default = "default_outbox_dir")]
    pub dir: PathBuf,
    /// Bytes of pending records kept; beyond it the oldest go to the dead-letter file.
    #[serde(default = "default_outbox_max_bytes")]
    pub max_bytes: u64,
    /// Size at which a segment is closed and a new one started.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
}

fn default_outbox_dir() -> PathBuf {
    PathBuf::from("./outbox")
}

fn default_outbox_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_segment_bytes() -> u64 {
    4 * 1024 * 1024
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            dir: default_outbox_dir(),
            max_bytes: default_outbox_max_bytes(),
            segment_bytes: default_segment_bytes(),
        }
    }
}

/// Retries: exponential backoff with full jitter, capped; dead-letter after `maxAttempts`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySettings {
    /// First backoff.
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Dur,
    /// Largest backoff.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
    /// Attempts before a record goes to the dead-letter file.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_backoff_base() -> Dur {
    Dur(std::time::Duration::from_millis(200))
}

fn default_backoff_max() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

fn default_max_attempts() -> u32 {
    50
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            backoff_base: default_backoff_base(),
            backoff_max: default_backoff_max(),
            max_attempts: default_max_attempts(),
        }
    }
}

/// The local API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiSettings {
    /// Listen address (default `127.0.0.1:9103`).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// A second address serving `/metrics` and `/healthz` only (plain HTTP), e.g.
    /// `0.0.0.0:9104` for Prometheus; none by default.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9103))
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            metrics_listen: None,
        }
    }
}

/// Where computed metrics are kept, if anywhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistenceKind {
    /// Not kept.
    #[default]
    None,
    /// Appended to a CSV file.
    Csv,
    /// Inserted into the SQLite table `rolling_metrics`.
    Sqlite,
}

/// Rolling persistence of computed metrics.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistenceSettings {
    /// `none`, `csv` or `sqlite` (env `PERSISTENCE`).
    #[serde(default)]
    pub kind: PersistenceKind,
    /// File (default `rolling_metrics.csv` or `rolling_metrics.db` in the outbox directory).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Rows older than this are deleted (SQLite) or the file rotated (CSV); default 7d.
    #[serde(default)]
    pub retention: Option<Dur>,
}

/// A source's error with the path inside the source (`sources[0].interval`): the sources are
/// an internally tagged list, which serde reads through a buffer that forgets inner paths, so
/// each one is read again on its own, by its `type`.
fn source_error(text: &str) -> Option<ConfigError> {
    use crate::sources::{datadog, http, jsonl, prometheus};
    use serde::de::DeserializeOwned;
    use serde_yaml_ng::Value;
    fn check<T: DeserializeOwned>(v: Value) -> Result<(), (String, String)> {
        serde_path_to_error::deserialize::<_, T>(v)
            .map(|_| ())
            .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
    }
    let doc: Value = serde_yaml_ng::from_str(text).ok()?;
    let list = doc.get("sources")?.as_sequence()?;
    for (i, item) in list.iter().enumerate() {
        let mut map = item.as_mapping()?.clone();
        let kind = map.remove("type")?;
        let body = Value::Mapping(map);
        let result = match kind.as_str()? {
            "prometheus" => check::<prometheus::PrometheusConfig>(body),
            "jsonl" => check::<jsonl::JsonlConfig>(body),
            "http" => check::<http::HttpConfig>(body),
            "datadog" => check::<datadog::DatadogConfig>(body),
            _ => continue,
        };
        if let Err((path, message)) = result {
            let field = if path == "." {
                format!("sources[{i}]")
            } else {
                format!("sources[{i}].{path}")
            };
            return Some(ConfigError::new(field, message));
        }
    }
    None
}

/// Environment variables the configuration reads (design §7 and the downward API).
pub mod env {
    /// Namespace of the pod (downward API `metadata.namespace`).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Name of the pod (downward API `metadata.name`).
    pub const POD_NAME: &str = "POD_NAME";
    /// Name of the workload (a downward API label, e.g. `metadata.labels['app']`).
    pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
    /// The verifier's base URL.
    pub const ENDPOINT: &str = "ENDPOINT";
    /// CA bundle of the verifier.
    pub const TLS_CA: &str = "COHERENCE_TLS_CA";
    /// Client certificate.
    pub const TLS_CERT: &str = "COHERENCE_TLS_CERT";
    /// Client key.
    pub const TLS_KEY: &str = "COHERENCE_TLS_KEY";
    /// Signing algorithm.
    pub const SIGN_ALG: &str = "PCS_SIGN_ALG";
    /// `none`, `csv` or `sqlite`.
    pub const PERSISTENCE: &str = "PERSISTENCE";
    /// The pod's CPU request in cores (downward API `requests.cpu`, divisor 1m gives millicores:
    /// write it as a number of cores, e.g. `0.25`).
    pub const POD_CPU_REQUEST: &str = "POD_CPU_REQUEST";
    /// The pod's memory request in bytes (downward API `requests.memory`).
    pub const POD_MEMORY_REQUEST: &str = "POD_MEMORY_REQUEST";
}

impl Config {
    /// Reads `path`, overlays the environment read through `lookup`, and validates.
    pub fn load(
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        let mut cfg = Config::from_yaml(&text)?;
        cfg.overlay_env(lookup)?;
        // Relative paths are relative to the directory the sidecar runs in, as a user expects
        // from a file they wrote next to `certs/`.
        cfg.validate()?;
        for (i, s) in cfg.sources.iter_mut().enumerate() {
            s.resolve_env(&format!("sources[{i}]"), lookup)?;
        }
        Ok(cfg)
    }

    /// Parses the YAML text; the error names the field's path.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "config".to_string()
            } else {
                path
            };
            let mut message = e.into_inner().to_string();
            // The YAML parser prefixes its own, coarser path; the field already says where.
            if let Some((head, rest)) = message.split_once(": ") {
                let path_like = head
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b));
                if path_like && field.starts_with(head) {
                    message = rest.to_string();
                }
            }
            if field.starts_with("sources[") {
                if let Some(precise) = source_error(text) {
                    return precise;
                }
            }
            ConfigError::new(field, message)
        })
    }

    /// Applies the environment: it overrides the file (design §7).
    pub fn overlay_env(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get(env::POD_NAMESPACE) {
            self.identity.namespace = v;
        }
        if let Some(v) = get(env::POD_NAME) {
            self.identity.pod = v;
        }
        if let Some(v) = get(env::WORKLOAD_NAME) {
            self.identity.workload = v;
        }
        if let Some(v) = get(env::ENDPOINT) {
            self.verifier.endpoint = v;
        }
        if let Some(v) = get(env::TLS_CA) {
            self.verifier.ca = Some(PathBuf::from(v));
        }
        if let Some(v) = get(env::TLS_CERT) {
            self.verifier.cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get(env::TLS_KEY) {
            self.verifier.key = Some(PathBuf::from(v));
        }
        if let Some(v) = get(env::SIGN_ALG) {
            self.pcs.alg = match v.trim() {
                "hmac" => Alg::Hmac,
                "ed25519" => Alg::Ed25519,
                other => {
                    return Err(ConfigError::new(
                        env::SIGN_ALG,
                        format!("expected hmac or ed25519, got {other:?}"),
                    ));
                }
            };
        }
        if let Some(v) = get(env::PERSISTENCE) {
            self.persistence.kind = match v.trim() {
                "none" => PersistenceKind::None,
                "csv" => PersistenceKind::Csv,
                "sqlite" => PersistenceKind::Sqlite,
                other => {
                    return Err(ConfigError::new(
                        env::PERSISTENCE,
                        format!("expected none, csv or sqlite, got {other:?}"),
                    ));
                }
            };
        }
        if let Some(f) = self.finops.as_mut() {
            if let Some(v) = get(env::POD_CPU_REQUEST) {
                let cores: f64 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|c: &f64| c.is_finite() && *c > 0.0)
                    .ok_or_else(|| {
                        ConfigError::new(
                            env::POD_CPU_REQUEST,
                            format!("expected a positive number of cores, got {v:?}"),
                        )
                    })?;
                f.cpu_request_cores = Some(cores);
            }
            if let Some(v) = get(env::POD_MEMORY_REQUEST) {
                let bytes: f64 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|b: &f64| b.is_finite() && *b > 0.0)
                    .ok_or_else(|| {
                        ConfigError::new(
                            env::POD_MEMORY_REQUEST,
                            format!("expected a positive number of bytes, got {v:?}"),
                        )
                    })?;
                f.memory_request_gib = Some(bytes / (1024.0 * 1024.0 * 1024.0));
            }
        }
        Ok(())
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.identity;
        for (field, value, var) in [
            ("identity.namespace", &id.namespace, env::POD_NAMESPACE),
            ("identity.workload", &id.workload, env::WORKLOAD_NAME),
            ("identity.pod", &id.pod, env::POD_NAME),
        ] {
            let ok = !value.is_empty()
                && value.len() <= 253
                && value.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !ok {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "expected a Kubernetes name (lowercase letters, digits, '-', '.'), from the file or {var}, got {value:?}"
                    ),
                ));
            }
        }
        if let Some(m) = self.api.metrics_listen {
            if m.port() == self.api.listen.port()
                && (m.ip() == self.api.listen.ip()
                    || m.ip().is_unspecified()
                    || self.api.listen.ip().is_unspecified())
            {
                return Err(ConfigError::new(
                    "api.metricsListen",
                    format!(
                        "expected another address than api.listen ({}), got {m}",
                        self.api.listen
                    ),
                ));
            }
        }
        if self.sources.is_empty() {
            return Err(ConfigError::new("sources", "expected at least one source"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            s.validate(&at)?;
            if !names.insert(s.name()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("expected a unique name, {:?} is used twice", s.name()),
                ));
            }
        }
        if self.epoch.get() < std::time::Duration::from_secs(1) {
            return Err(ConfigError::new("epoch", "expected at least 1s"));
        }
        if self.windows.is_empty() {
            return Err(ConfigError::new("windows", "expected at least one window"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, w) in self.windows.iter().enumerate() {
            if !seen.insert(*w) {
                return Err(ConfigError::new(
                    format!("windows[{i}]"),
                    format!("{w} is listed twice"),
                ));
            }
        }
        self.drift
            .default
            .validate()
            .map_err(|e| ConfigError::new("drift.default", e))?;
        for (name, t) in &self.drift.signals {
            t.validate()
                .map_err(|e| ConfigError::new(format!("drift.signals.{name}"), e))?;
        }
        self.detectors
            .validate()
            .map_err(|e| ConfigError::new("detectors", e))?;
        let p = &self.pcs;
        if p.scales.len() < 2 || p.scales[0] == 0 || !p.scales.windows(2).all(|w| w[0] < w[1]) {
            return Err(ConfigError::new(
                "pcs.scales",
                format!(
                    "expected at least two positive, strictly increasing scales, got {:?}",
                    p.scales
                ),
            ));
        }
        if let Some(w) = p.window {
            if !self.windows.contains(&w) {
                return Err(ConfigError::new(
                    "pcs.window",
                    format!("expected one of the configured windows, got {w}"),
                ));
            }
        }
        if let Some(f) = &self.finops {
            for (field, v) in [
                ("finops.costPerReplicaHourUsd", f.cost_per_replica_hour_usd),
                ("finops.cpuHourUsd", f.cpu_hour_usd),
                ("finops.memoryGibHourUsd", f.memory_gib_hour_usd),
                ("finops.cpuRequestCores", f.cpu_request_cores),
                ("finops.memoryRequestGib", f.memory_request_gib),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(ConfigError::new(
                            field,
                            format!("expected a finite number ≥ 0, got {v}"),
                        ));
                    }
                }
            }
            if f.cost_per_hour().is_none() {
                return Err(ConfigError::new(
                    "finops",
                    "expected costPerReplicaHourUsd, or cpuHourUsd with the CPU request (cpuRequestCores or POD_CPU_REQUEST), or memoryGibHourUsd with the memory request",
                ));
            }
        }
        let v = &self.verifier;
        let scheme_ok = v.endpoint.starts_with("https://") || v.endpoint.starts_with("http://");
        if !scheme_ok {
            return Err(ConfigError::new(
                "verifier.endpoint",
                format!(
                    "expected an https:// (or, for development, http://) URL, got {:?}",
                    v.endpoint
                ),
            ));
        }
        if v.endpoint.starts_with("https://") {
            for (field, var, p) in [
                ("verifier.ca", env::TLS_CA, &v.ca),
                ("verifier.cert", env::TLS_CERT, &v.cert),
                ("verifier.key", env::TLS_KEY, &v.key),
            ] {
                if p.is_none() {
                    return Err(ConfigError::new(
                        field,
                        format!("expected a file path (or {var}) for the https endpoint"),
                    ));
                }
            }
        }
        if self.outbox.max_bytes < 64 * 1024 {
            return Err(ConfigError::new(
                "outbox.maxBytes",
                "expected at least 65536",
            ));
        }
        if self.outbox.segment_bytes < 4096 || self.outbox.segment_bytes > self.outbox.max_bytes {
            return Err(ConfigError::new(
                "outbox.segmentBytes",
                "expected at least 4096 and at most outbox.maxBytes",
            ));
        }
        if self.report.max_windows == 0 || self.report.max_windows > 1000 {
            return Err(ConfigError::new("report.maxWindows", "expected 1 to 1000"));
        }
        if self.report.max_findings > 1000 {
            return Err(ConfigError::new(
                "report.maxFindings",
                "expected at most 1000",
            ));
        }
        let d = &self.delivery;
        if d.backoff_base > d.backoff_max {
            return Err(ConfigError::new(
                "delivery.backoffMax",
                "expected at least delivery.backoffBase",
            ));
        }
        if d.max_attempts == 0 {
            return Err(ConfigError::new(
                "delivery.maxAttempts",
                "expected at least 1",
            ));
        }
        Ok(())
    }

    /// The window a PCS covers: `pcs.window`, else the first window.
    pub fn pcs_window(&self) -> Option<WindowSpan> {
        self.pcs.window.or_else(|| self.windows.first().copied())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(&format!(
            "identity: {{namespace: a, workload: b, pod: c}}\nsources: []\n{extra}"
        ))
    }

    #[test]
    fn partial_drift_thresholds_keep_the_rest_of_what_they_override() {
        let c = parse(
            "drift:\n  default: {volatilityHigh: 0.5}\n  signals:\n    score: {meanHighBelow: 60, meanMediumBelow: 80}\n",
        )
        .unwrap();
        let d = c.drift.for_signal("latency");
        assert_eq!((d.volatility_medium, d.volatility_high), (0.10, 0.5));
        assert_eq!((d.mean_high_below, d.mean_medium_below), (None, None));
        let s = c.drift.for_signal("score");
        assert_eq!(s.volatility_high, 0.5);
        assert_eq!(
            (s.mean_high_below, s.mean_medium_below),
            (Some(60.0), Some(80.0))
        );
        assert_eq!(
            parse("").unwrap().drift.default,
            DriftThresholds::volatility_only()
        );
    }

    #[test]
    fn the_metrics_address_is_optional_and_must_be_another_address() {
        assert_eq!(parse("").unwrap().api.metrics_listen, None);
        let c = parse("api: {metricsListen: 0.0.0.0:9104}").unwrap();
        assert_eq!(
            c.api.metrics_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 9104)))
        );
        let e = parse("api: {metricsListen: everywhere}").unwrap_err();
        assert_eq!(e.field, "api.metricsListen", "{e}");
        let mut c = c;
        c.sources.clear();
        c.api.metrics_listen = Some(SocketAddr::from(([0, 0, 0, 0], 9103)));
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "api.metricsListen", "{e}");
        assert!(e.message.contains("127.0.0.1:9103"), "{e}");
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = parse("drift: {default: {volatilityHigh: lots}}").unwrap_err();
        assert_eq!(e.field, "drift.default.volatilityHigh", "{e}");
        let e = parse("windows: [1m, 2x]").unwrap_err();
        assert_eq!(e.field, "windows[1]", "{e}");
        let e = parse("pcs: {scales: [2, 4], sign: hmac}").unwrap_err();
        assert!(e.field.starts_with("pcs"), "{e}");
        assert!(e.message.contains("sign"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut c = parse("verifier: {endpoint: \"https://a:1\"}\nfinops: {qpsSignal: q, latencySignal: l, cpuHourUsd: 0.04}").unwrap();
        let env = |k: &str| match k {
            "ENDPOINT" => Some("https://b:2".to_string()),
            "POD_NAME" => Some("web-7".to_string()),
            "POD_CPU_REQUEST" => Some("0.25".to_string()),
            "POD_MEMORY_REQUEST" => Some("1073741824".to_string()),
            "PERSISTENCE" => Some("sqlite".to_string()),
            _ => None,
        };
        c.overlay_env(&env).unwrap();
        assert_eq!(c.verifier.endpoint, "https://b:2");
        assert_eq!(c.identity.pod, "web-7");
        assert_eq!(c.persistence.kind, PersistenceKind::Sqlite);
        let f = c.finops.as_ref().unwrap();
        assert_eq!(
            (f.cpu_request_cores, f.memory_request_gib),
            (Some(0.25), Some(1.0))
        );
        assert_eq!(f.cost_per_hour(), Some(0.01));
        let bad = |k: &str| (k == "PCS_SIGN_ALG").then(|| "rsa".to_string());
        let e = c.overlay_env(&bad).unwrap_err();
        assert_eq!(e.field, "PCS_SIGN_ALG");
    }
}
