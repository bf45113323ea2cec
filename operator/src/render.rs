//! The sidecar's configuration file, rendered from a policy, and the ConfigMap that carries it.
//!
//! The file holds everything the policy decides; what differs per pod comes from the
//! environment the webhook sets (identity from the downward API, keys from Secrets), and the
//! certificate and token files from the volumes it mounts at the paths below.

use crate::crd::{CoherencePolicy, CoherencePolicySpec, Source};
use crate::error::Error;
use crate::owner;
use coherence_core::detect::DetectorConfig;
use coherence_core::window::{DriftThresholds, WindowSpan};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Directory of the client certificate volume (`ca.crt`, `tls.crt`, `tls.key`).
pub const TLS_DIR: &str = "/var/run/coherence/tls";
/// The outbox, on an `emptyDir`.
pub const OUTBOX_DIR: &str = "/var/run/coherence/outbox";
/// Directory of the configuration volume.
pub const CONFIG_DIR: &str = "/etc/coherence";
/// Key of the configuration in the ConfigMap (and file name in [`CONFIG_DIR`]).
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the sidecar also serves `/metrics` and `/healthz` (`api.metricsListen`), for
/// Prometheus; the injected container names the port [`METRICS_PORT_NAME`].
pub const METRICS_LISTEN: &str = "0.0.0.0:9104";
/// The port of [`METRICS_LISTEN`].
pub const METRICS_PORT: i32 = 9104;
/// Name of the sidecar container's metrics port (NetworkPolicy and PodMonitor refer to it).
pub const METRICS_PORT_NAME: &str = "coh-metrics";
/// Source Secrets are mounted at `SECRETS_DIR/<source name>/`.
pub const SECRETS_DIR: &str = "/var/run/coherence/secrets";

/// Name of the ConfigMap of `policy`.
pub fn config_map_name(policy: &str) -> String {
    owner::child_name(&["coherence-sidecar", policy], 253)
}

/// The sidecar configuration of `spec`, as a JSON value with the sidecar's camelCase keys.
/// Identity is left out: the sidecar takes it from `POD_NAMESPACE`, `POD_NAME` and
/// `WORKLOAD_NAME`.
pub fn sidecar_config(spec: &CoherencePolicySpec) -> Result<Value, Error> {
    validate(spec)?;
    let sources = spec
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| source(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    let d = &spec.drift;
    let mut drift_default = Map::new();
    drift_default.insert("volatilityMedium".into(), json!(d.volatility_medium));
    drift_default.insert("volatilityHigh".into(), json!(d.volatility_high));
    drift_default.insert("minSamples".into(), json!(d.min_samples));
    if let Some(v) = d.mean_medium_below {
        drift_default.insert("meanMediumBelow".into(), json!(v));
    }
    if let Some(v) = d.mean_high_below {
        drift_default.insert("meanHighBelow".into(), json!(v));
    }
    let mut drift = Map::new();
    drift.insert("default".into(), Value::Object(drift_default));
    if !d.signals.is_empty() {
        let signals =
            serde_json::to_value(&d.signals).map_err(|e| Error::Serialize(e.to_string()))?;
        drift.insert("signals".into(), signals);
    }
    let det = &spec.detectors;
    let mut pcs = Map::new();
    pcs.insert("scales".into(), json!(spec.pcs.scales));
    pcs.insert("alg".into(), json!(spec.pcs.alg.as_str()));
    if let Some(s) = &spec.pcs.signal {
        pcs.insert("signal".into(), json!(s));
    }
    if let Some(w) = &spec.pcs.window {
        pcs.insert("window".into(), json!(w));
    }
    let mut cfg = Map::new();
    cfg.insert("sources".into(), Value::Array(sources));
    cfg.insert("epoch".into(), json!(spec.pcs.epoch));
    cfg.insert("windows".into(), json!(spec.windows));
    cfg.insert("drift".into(), Value::Object(drift));
    cfg.insert(
        "detectors".into(),
        json!({
            "varianceRatio": det.variance_ratio,
            "spikeSigma": det.spike_sigma,
            "trendIncrease": det.trend_increase,
            "robustZ": det.robust_z,
            "retryAmplification": det.retry_amplification,
            "allocVelocityMbS": det.alloc_velocity_mb_s,
        }),
    );
    cfg.insert("pcs".into(), Value::Object(pcs));
    if let Some(f) = &spec.finops {
        let mut m = Map::new();
        m.insert("qpsSignal".into(), json!(f.qps_signal));
        m.insert("latencySignal".into(), json!(f.latency_signal));
        for (k, v) in [
            ("costPerReplicaHourUsd", f.cost_per_replica_hour_usd),
            ("cpuHourUsd", f.cpu_hour_usd),
            ("memoryGibHourUsd", f.memory_gib_hour_usd),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        cfg.insert("finops".into(), Value::Object(m));
    }
    cfg.insert(
        "verifier".into(),
        json!({
            "endpoint": spec.verifier.endpoint,
            "ca": format!("{TLS_DIR}/ca.crt"),
            "cert": format!("{TLS_DIR}/tls.crt"),
            "key": format!("{TLS_DIR}/tls.key"),
        }),
    );
    cfg.insert("outbox".into(), json!({ "dir": OUTBOX_DIR }));
    cfg.insert("api".into(), json!({ "metricsListen": METRICS_LISTEN }));
    Ok(Value::Object(cfg))
}

fn source(i: usize, s: &Source) -> Result<Value, Error> {
    let at = format!("spec.sources[{i}]");
    match (&s.prometheus, &s.jsonl, &s.http) {
        (Some(p), None, None) => Ok(json!({
            "type": "prometheus",
            "name": s.name,
            "url": format!("http://127.0.0.1:{}{}", p.port, p.path),
            "interval": p.interval,
            "metrics": p.metrics,
        })),
        (None, Some(j), None) => {
            let mut m = Map::new();
            m.insert("type".into(), json!("jsonl"));
            m.insert("name".into(), json!(s.name));
            m.insert("path".into(), json!(j.path));
            m.insert("interval".into(), json!(j.interval));
            if !j.signals.is_empty() {
                m.insert("signals".into(), json!(j.signals));
            }
            if j.aes_key_secret_ref.is_some() {
                // The key reaches the sidecar as COHERENCE_AES_KEY, set by the webhook.
                m.insert("encrypted".into(), json!(true));
            }
            Ok(Value::Object(m))
        }
        (None, None, Some(h)) => {
            let mut m = Map::new();
            m.insert("type".into(), json!("http"));
            m.insert("name".into(), json!(s.name));
            m.insert("url".into(), json!(h.url));
            m.insert("interval".into(), json!(h.interval));
            m.insert("timeout".into(), json!(h.timeout));
            m.insert("pageSize".into(), json!(h.page_size));
            if let Some(t) = &h.token_secret_ref {
                m.insert("tokenFile".into(), json!(token_file(&s.name, &t.key)));
            }
            Ok(Value::Object(m))
        }
        _ => Err(Error::invalid(
            at,
            "expected exactly one of prometheus, jsonl or http",
        )),
    }
}

/// Where the webhook mounts the token Secret of source `source`.
pub fn token_file(source: &str, key: &str) -> String {
    format!("{SECRETS_DIR}/{source}/{key}")
}

/// Checks what the CRD's schema cannot, with the sidecar's own rules, so an invalid policy
/// is reported on the policy instead of in every sidecar's log.
pub fn validate(spec: &CoherencePolicySpec) -> Result<(), Error> {
    let sel = &spec.selector;
    let labels = sel.match_labels.as_ref().is_some_and(|m| !m.is_empty());
    let exprs = sel
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty());
    if !(labels || exprs) {
        return Err(Error::invalid(
            "spec.selector",
            "expected matchLabels or matchExpressions: an empty selector would select every pod",
        ));
    }
    let mut spans = Vec::new();
    for (i, w) in spec.windows.iter().enumerate() {
        let span: WindowSpan = w.parse().map_err(|e: coherence_core::window::SpanError| {
            Error::invalid(format!("spec.windows[{i}]"), e.to_string())
        })?;
        if spans.contains(&span) {
            return Err(Error::invalid(
                format!("spec.windows[{i}]"),
                format!("{w} is the same span as an earlier window"),
            ));
        }
        spans.push(span);
    }
    if spans.is_empty() {
        return Err(Error::invalid(
            "spec.windows",
            "expected at least one window",
        ));
    }
    if let Some(w) = spec
        .pcs
        .window
        .as_ref()
        .filter(|w| !spec.windows.contains(w))
    {
        return Err(Error::invalid(
            "spec.pcs.window",
            format!("expected one of spec.windows, got {w:?}"),
        ));
    }
    let d = &spec.drift;
    let base = DriftThresholds {
        volatility_medium: d.volatility_medium,
        volatility_high: d.volatility_high,
        mean_medium_below: d.mean_medium_below,
        mean_high_below: d.mean_high_below,
        min_samples: d.min_samples,
    };
    base.validate()
        .map_err(|e| Error::invalid("spec.drift", e))?;
    for (name, o) in &d.signals {
        let t = DriftThresholds {
            volatility_medium: o.volatility_medium.unwrap_or(base.volatility_medium),
            volatility_high: o.volatility_high.unwrap_or(base.volatility_high),
            mean_medium_below: o.mean_medium_below.or(base.mean_medium_below),
            mean_high_below: o.mean_high_below.or(base.mean_high_below),
            min_samples: o.min_samples.unwrap_or(base.min_samples),
        };
        t.validate()
            .map_err(|e| Error::invalid(format!("spec.drift.signals.{name}"), e))?;
    }
    let det = &spec.detectors;
    DetectorConfig {
        variance_ratio: det.variance_ratio,
        spike_sigma: det.spike_sigma,
        trend_increase: det.trend_increase,
        robust_z: det.robust_z,
        retry_amplification: det.retry_amplification,
        alloc_velocity_mb_s: det.alloc_velocity_mb_s,
        ..DetectorConfig::default()
    }
    .validate()
    .map_err(|e| Error::invalid("spec.detectors", e))?;
    let scales = &spec.pcs.scales;
    if scales.len() < 2 || scales[0] == 0 || !scales.windows(2).all(|w| w[0] < w[1]) {
        return Err(Error::invalid(
            "spec.pcs.scales",
            format!("expected at least two positive, strictly increasing scales, got {scales:?}"),
        ));
    }
    let mut names = BTreeMap::new();
    let mut aes_key = None;
    for (i, s) in spec.sources.iter().enumerate() {
        if let Some(j) = names.insert(s.name.as_str(), i) {
            return Err(Error::invalid(
                format!("spec.sources[{i}].name"),
                format!("{:?} is already the name of spec.sources[{j}]", s.name),
            ));
        }
        if let Some(h) = &s.http {
            let (t, iv) = (duration_ms(&h.timeout), duration_ms(&h.interval));
            if let (Some(t), Some(iv)) = (t, iv)
                && t > iv
            {
                return Err(Error::invalid(
                    format!("spec.sources[{i}].http.timeout"),
                    format!(
                        "expected at most the interval ({}), got {}",
                        h.interval, h.timeout
                    ),
                ));
            }
        }
        if let Some(k) = s.jsonl.as_ref().and_then(|j| j.aes_key_secret_ref.as_ref()) {
            // The sidecar has one line key (COHERENCE_AES_KEY) for all its JSONL sources.
            match aes_key {
                None => aes_key = Some(k),
                Some(first) if first == k => {}
                Some(_) => {
                    return Err(Error::invalid(
                        format!("spec.sources[{i}].jsonl.aesKeySecretRef"),
                        "expected the same Secret key as the other encrypted sources: the sidecar holds one line key",
                    ));
                }
            }
        }
    }
    if spec.sources.is_empty() {
        return Err(Error::invalid(
            "spec.sources",
            "expected at least one source",
        ));
    }
    Ok(())
}

/// Milliseconds of a duration like `250ms`, `15s`, `5m`, `1h`, `1d`.
pub fn duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|ms| *ms > 0)
}

/// The configuration as the YAML file the sidecar reads.
pub fn sidecar_config_yaml(spec: &CoherencePolicySpec) -> Result<String, Error> {
    let cfg = sidecar_config(spec)?;
    let body = serde_yaml_ng::to_string(&cfg).map_err(|e| Error::Serialize(e.to_string()))?;
    Ok(format!(
        "# Rendered by coherence-operator from a CoherencePolicy; edits are overwritten.\n{body}"
    ))
}

/// SHA-256 (hex) of a rendered configuration: the ConfigMap annotation that changes exactly
/// when the content does.
pub fn config_hash(yaml: &str) -> String {
    hex::encode(Sha256::digest(yaml.as_bytes()))
}

/// The ConfigMap `coherence-sidecar-<policy>` in the policy's namespace, controlled by it.
pub fn config_map(policy: &CoherencePolicy) -> Result<ConfigMap, Error> {
    let (ns, name) = owner::namespaced_name(policy)?;
    let yaml = sidecar_config_yaml(&policy.spec)?;
    let mut meta = owner::owned_meta(
        config_map_name(&name),
        &ns,
        owner::controller_ref(policy)?,
        owner::labels(&name, None),
    );
    meta.annotations = Some(BTreeMap::from([(
        owner::CONFIG_HASH_ANNOTATION.to_string(),
        config_hash(&yaml),
    )]));
    Ok(ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}
