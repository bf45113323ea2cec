//! The sidecar configuration rendered from a policy is one the sidecar reads and accepts, with
//! every field the policy sets; the ConfigMap carries it with ownership and a content hash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::crd::{CoherencePolicy, CoherencePolicySpec};
use coherence_operator::render;
use coherence_sidecar::config::{Alg, Config};
use coherence_sidecar::sources::SourceConfig;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

fn policy(spec: Value) -> CoherencePolicy {
    serde_json::from_value(json!({
        "apiVersion": "coherence.dev/v1alpha1",
        "kind": "CoherencePolicy",
        "metadata": {"name": "web", "namespace": "demo", "uid": "0f1e2d3c", "generation": 3},
        "spec": spec,
    }))
    .unwrap()
}

fn full_spec() -> Value {
    json!({
        "selector": {"matchLabels": {"app": "web"}},
        "sources": [
            {"name": "app", "prometheus": {"port": 9090, "metrics": ["http_requests_total", "re:latency_.*"], "interval": "10s"}},
            {"name": "log", "jsonl": {"path": "/var/log/app/t.jsonl", "signals": ["qps", "latency_p95_ms"],
                                      "aesKeySecretRef": {"name": "aes", "key": "COHERENCE_AES_KEY"}}},
            {"name": "summary", "http": {"url": "http://127.0.0.1:8080/signals/summary",
                                         "tokenSecretRef": {"name": "tok", "key": "token"}, "pageSize": 50, "timeout": "5s"}}
        ],
        "windows": ["5m", "1h", "24h"],
        "drift": {"volatilityMedium": 0.12, "volatilityHigh": 0.3, "meanMediumBelow": 80.0, "meanHighBelow": 60.0,
                  "minSamples": 12, "signals": {"qps": {"volatilityHigh": 0.5}}},
        "detectors": {"varianceRatio": 2.0, "spikeSigma": 3.0, "trendIncrease": 0.25, "robustZ": 4.0,
                      "retryAmplification": 2.5, "allocVelocityMbS": 4.0},
        "pcs": {"scales": [2, 4, 8, 16], "alg": "ed25519", "secretRef": {"name": "pcs", "key": "PCS_ED25519_KEY_B64"},
                "epoch": "30s", "signal": "qps", "window": "5m"},
        "verifier": {"endpoint": "https://verifier.coherence.svc:8443"},
        "finops": {"qpsSignal": "qps", "latencySignal": "latency_p95_ms", "cpuHourUsd": 0.04, "memoryGibHourUsd": 0.005},
        "veto": {"mode": "enforce"}
    })
}

fn sidecar(yaml: &str) -> Config {
    let mut cfg = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let env = |k: &str| match k {
        "POD_NAMESPACE" => Some("demo".to_string()),
        "POD_NAME" => Some("web-0".to_string()),
        "WORKLOAD_NAME" => Some("web".to_string()),
        "POD_CPU_REQUEST" => Some("0.25".to_string()),
        "POD_MEMORY_REQUEST" => Some("268435456".to_string()),
        _ => None,
    };
    cfg.overlay_env(&env).unwrap();
    cfg.validate().unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    cfg
}

#[test]
fn every_field_of_the_policy_reaches_the_sidecar() {
    let p = policy(full_spec());
    let yaml = render::sidecar_config_yaml(&p.spec).unwrap();
    assert!(
        !yaml.contains("identity"),
        "identity comes from the environment:\n{yaml}"
    );
    let c = sidecar(&yaml);

    assert_eq!(c.sources.len(), 3);
    match &c.sources[0] {
        SourceConfig::Prometheus(s) => {
            assert_eq!(s.name, "app");
            assert_eq!(s.url, "http://127.0.0.1:9090/metrics");
            assert_eq!(s.interval.to_string(), "10s");
            assert_eq!(s.metrics, ["http_requests_total", "re:latency_.*"]);
        }
        other => panic!("expected prometheus, got {other:?}"),
    }
    match &c.sources[1] {
        SourceConfig::Jsonl(s) => {
            assert_eq!(s.path.to_str(), Some("/var/log/app/t.jsonl"));
            assert_eq!(
                s.signals.as_deref(),
                Some(&["qps".to_string(), "latency_p95_ms".to_string()][..])
            );
            assert!(s.encrypted);
            assert_eq!(s.interval.to_string(), "1s");
        }
        other => panic!("expected jsonl, got {other:?}"),
    }
    match &c.sources[2] {
        SourceConfig::Http(s) => {
            assert_eq!(s.page_size, 50);
            assert_eq!(s.timeout.to_string(), "5s");
            assert_eq!(s.interval.to_string(), "30s");
            assert_eq!(
                s.token_file.as_ref().unwrap().to_str(),
                Some("/var/run/coherence/secrets/summary/token")
            );
        }
        other => panic!("expected http, got {other:?}"),
    }
    let windows: Vec<i64> = c.windows.iter().map(|w| w.as_millis()).collect();
    assert_eq!(windows, [300_000, 3_600_000, 86_400_000]);
    assert_eq!(c.epoch.to_string(), "30s");
    let d = c.drift.default;
    assert_eq!(
        (d.volatility_medium, d.volatility_high, d.min_samples),
        (0.12, 0.3, 12)
    );
    assert_eq!(
        (d.mean_medium_below, d.mean_high_below),
        (Some(80.0), Some(60.0))
    );
    let q = c.drift.for_signal("qps");
    assert_eq!(
        (q.volatility_high, q.volatility_medium, q.mean_high_below),
        (0.5, 0.12, Some(60.0))
    );
    let det = c.detectors;
    assert_eq!(
        (
            det.variance_ratio,
            det.spike_sigma,
            det.trend_increase,
            det.robust_z,
            det.retry_amplification,
            det.alloc_velocity_mb_s
        ),
        (2.0, 3.0, 0.25, 4.0, 2.5, 4.0)
    );
    assert_eq!(c.pcs.scales, [2, 4, 8, 16]);
    assert_eq!(c.pcs.alg, Alg::Ed25519);
    assert_eq!(c.pcs.signal.as_deref(), Some("qps"));
    assert_eq!(c.pcs.window.map(|w| w.to_string()).as_deref(), Some("5m"));
    assert_eq!(c.verifier.endpoint, "https://verifier.coherence.svc:8443");
    assert_eq!(
        c.verifier.ca.as_ref().unwrap().to_str(),
        Some("/var/run/coherence/tls/ca.crt")
    );
    assert_eq!(
        c.verifier.cert.as_ref().unwrap().to_str(),
        Some("/var/run/coherence/tls/tls.crt")
    );
    assert_eq!(
        c.verifier.key.as_ref().unwrap().to_str(),
        Some("/var/run/coherence/tls/tls.key")
    );
    assert_eq!(c.outbox.dir.to_str(), Some("/var/run/coherence/outbox"));
    // `/metrics` and `/healthz` on the pod's address too, for Prometheus; the rest stays local.
    assert_eq!(
        c.api.metrics_listen,
        Some(std::net::SocketAddr::from(([0, 0, 0, 0], 9104)))
    );
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:9103");
    let f = c.finops.as_ref().unwrap();
    assert_eq!(
        (f.qps_signal.as_str(), f.latency_signal.as_str()),
        ("qps", "latency_p95_ms")
    );
    assert_eq!(
        (f.cpu_hour_usd, f.memory_gib_hour_usd),
        (Some(0.04), Some(0.005))
    );
    assert!((f.cost_per_hour().unwrap() - (0.04 * 0.25 + 0.005 * 0.25)).abs() < 1e-12);
}

#[test]
fn a_minimal_policy_renders_the_documented_defaults() {
    let p = policy(json!({
        "selector": {"matchLabels": {"app": "web"}},
        "sources": [{"name": "app", "prometheus": {"port": 8080, "metrics": ["up"]}}],
        "pcs": {"secretRef": {"name": "pcs", "key": "PCS_HMAC_KEY"}}
    }));
    let c = sidecar(&render::sidecar_config_yaml(&p.spec).unwrap());
    assert_eq!(
        c.windows.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        ["1h"]
    );
    assert_eq!(c.pcs.scales, [2, 4, 8, 16, 32]);
    assert_eq!(c.pcs.alg, Alg::Hmac);
    assert_eq!(c.epoch.get(), std::time::Duration::from_secs(60));
    assert_eq!(
        c.verifier.endpoint,
        "https://coherence-verifier.coherence.svc:8443"
    );
    assert_eq!(
        (
            c.drift.default.volatility_medium,
            c.drift.default.volatility_high
        ),
        (0.10, 0.25)
    );
    assert_eq!(
        c.detectors,
        coherence_core::detect::DetectorConfig::default()
    );
    assert!(c.finops.is_none());
    match &c.sources[0] {
        SourceConfig::Prometheus(s) => {
            assert_eq!(s.url, "http://127.0.0.1:8080/metrics");
            assert_eq!(s.interval.to_string(), "15s");
        }
        other => panic!("expected prometheus, got {other:?}"),
    }
}

#[test]
fn invalid_specs_name_the_field() {
    let bad = |patch: &dyn Fn(&mut Value)| {
        let mut s = full_spec();
        patch(&mut s);
        let spec: CoherencePolicySpec = serde_json::from_value(s).unwrap();
        render::sidecar_config(&spec).unwrap_err().to_string()
    };
    assert!(bad(&|s| s["selector"] = json!({"matchLabels": {}})).contains("spec.selector"));
    assert!(bad(&|s| s["windows"] = json!(["5m", "2x"])).contains("spec.windows[1]"));
    assert!(bad(&|s| s["windows"] = json!(["60m", "1h"])).contains("spec.windows[1]"));
    assert!(bad(&|s| s["pcs"]["window"] = json!("7d")).contains("spec.pcs.window"));
    assert!(bad(&|s| s["pcs"]["scales"] = json!([4, 2])).contains("spec.pcs.scales"));
    assert!(bad(&|s| s["drift"]["volatilityHigh"] = json!(0.05)).contains("spec.drift"));
    assert!(
        bad(&|s| s["drift"]["signals"]["qps"] = json!({"volatilityHigh": 0.01}))
            .contains("spec.drift.signals.qps")
    );
    assert!(bad(&|s| s["detectors"]["varianceRatio"] = json!(0.5)).contains("spec.detectors"));
    assert!(
        bad(&|s| s["sources"][2]["http"]["timeout"] = json!("1m"))
            .contains("spec.sources[2].http.timeout")
    );
    assert!(bad(&|s| s["sources"][1]["name"] = json!("app")).contains("spec.sources[1].name"));
    assert!(bad(&|s| s["sources"][0]["jsonl"] = json!({"path": "/x"})).contains("spec.sources[0]"));
    let two_keys = bad(&|s| {
        let mut extra = s["sources"][1].clone();
        extra["name"] = json!("log2");
        extra["jsonl"]["aesKeySecretRef"]["name"] = json!("other");
        s["sources"].as_array_mut().unwrap().push(extra);
    });
    assert!(
        two_keys.contains("spec.sources[3].jsonl.aesKeySecretRef"),
        "{two_keys}"
    );
}

#[test]
fn config_map_is_owned_labelled_and_hashed() {
    let p = policy(full_spec());
    let cm = render::config_map(&p).unwrap();
    let v = serde_json::to_value(&cm).unwrap();
    assert_eq!(v["metadata"]["name"], "coherence-sidecar-web");
    assert_eq!(v["metadata"]["namespace"], "demo");
    assert_eq!(
        v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "coherence-operator"
    );
    assert_eq!(v["metadata"]["labels"]["coherence.dev/policy"], "web");
    assert_eq!(
        v["metadata"]["ownerReferences"],
        json!([{"apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy", "name": "web",
                "uid": "0f1e2d3c", "controller": true, "blockOwnerDeletion": true}])
    );
    let yaml = v["data"]["config.yaml"].as_str().unwrap();
    let hash = v["metadata"]["annotations"]["coherence.dev/config-hash"]
        .as_str()
        .unwrap();
    assert_eq!(hash, render::config_hash(yaml));
    assert_eq!(hash.len(), 64);
    // Rendering is deterministic, and the hash follows the content.
    assert_eq!(render::config_map(&p).unwrap(), cm);
    let mut q = p.clone();
    q.spec.windows.push("7d".into());
    let other = render::config_map(&q).unwrap();
    assert_ne!(other.metadata.annotations, cm.metadata.annotations);
    // Strict round trip through the k8s-openapi type.
    let back: ConfigMap = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
    // Without a uid the object did not come from the API server: no owner reference.
    let mut anon = p.clone();
    anon.metadata.uid = None;
    assert_eq!(
        render::config_map(&anon).unwrap_err().metric_label(),
        "missing_metadata"
    );
}
