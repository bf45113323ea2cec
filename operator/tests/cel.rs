//! The CEL rules of the checked-in CRDs, evaluated as the API server would (defaults applied
//! first): valid objects pass, each invalid one fails with its rule's message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{ErrorKind, Validator};
use serde_json::{Value, json};

fn schema(file: &str) -> Value {
    let path = format!("{}/../crds/{file}", env!("CARGO_MANIFEST_DIR"));
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = crd.spec.versions[0].schema.as_ref().unwrap();
    serde_json::to_value(s.open_api_v3_schema.as_ref().unwrap()).unwrap()
}

fn policy() -> Value {
    json!({
        "apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sources": [
                {"name": "app", "prometheus": {"port": 9090, "metrics": ["up"], "interval": "250ms"}},
                {"name": "log", "jsonl": {"path": "/var/log/t.jsonl", "aesKeySecretRef": {"name": "a", "key": "k"}}},
                {"name": "api", "http": {"url": "https://api.local/x", "tokenSecretRef": {"name": "t", "key": "token"}}}
            ],
            "windows": ["5m", "1h"],
            "drift": {"volatilityMedium": 0.1, "volatilityHigh": 0.2, "meanMediumBelow": 80, "meanHighBelow": 60,
                      "signals": {"qps": {"volatilityMedium": 0.2, "volatilityHigh": 0.4}}},
            "pcs": {"secretRef": {"name": "pcs", "key": "k"}, "window": "1h", "scales": [2, 4, 8]},
            "finops": {"qpsSignal": "q", "latencySignal": "l", "costPerReplicaHourUsd": 0.02},
            "protect": {"hpa": {"minReplicas": 2, "maxReplicas": 4}, "pdb": {"minAvailable": "50%"},
                        "networkPolicy": {"ingressFrom": [{"podSelector": {}}]}},
            "veto": {"mode": "enforce"}
        }
    })
}

fn gate() -> Value {
    json!({
        "apiVersion": "coherence.dev/v1alpha1", "kind": "FinOpsGate",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "targetRef": {"kind": "Deployment", "name": "web"},
            "cost": {"cpuHourUsd": 0.04, "memoryGibHourUsd": 0.005},
            "baseline": {"qps": 100.0, "latencyP95Ms": 80.0, "costUsdPerHour": 0.02},
            "thresholds": {"ok": 1.0, "warn": 1.05}
        }
    })
}

/// The messages of the rules `obj` breaks; panics on a rule that cannot be evaluated.
fn broken(schema: &Value, obj: &Value) -> Vec<String> {
    match Validator::new().validate(schema, obj, None) {
        Ok(()) => vec![],
        Err(errs) => errs
            .iter()
            .map(|e| {
                assert_eq!(
                    e.kind,
                    ErrorKind::ValidationFailure,
                    "rule {} cannot be evaluated: {e}",
                    e.rule
                );
                e.to_string()
            })
            .collect(),
    }
}

fn with(mut obj: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = obj.pointer_mut(parent).unwrap();
    match target {
        Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        Value::Object(m) => {
            if value.is_null() {
                m.remove(key);
            } else {
                m.insert(key.to_string(), value);
            }
        }
        _ => panic!("{pointer}"),
    }
    obj
}

#[test]
fn policy_rules_accept_the_valid_and_refuse_the_invalid() {
    let s = schema("coherencepolicy.yaml");
    assert_eq!(broken(&s, &policy()), Vec::<String>::new());
    let example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!(
            "{}/../manifests/examples/coherencepolicy.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(broken(&s, &example), Vec::<String>::new());
    let cases = [
        (
            "/spec/windows",
            json!(["5m", "1x"]),
            "each window must look like",
        ),
        (
            "/spec/windows",
            json!(["5m", "5m"]),
            "windows must be unique",
        ),
        (
            "/spec/pcs/window",
            json!("24h"),
            "pcs.window must be one of windows",
        ),
        (
            "/spec/pcs/scales",
            json!([4, 2, 8]),
            "scales must be strictly increasing",
        ),
        (
            "/spec/drift/volatilityHigh",
            json!(0.05),
            "volatilityHigh must be >= volatilityMedium",
        ),
        (
            "/spec/drift/meanHighBelow",
            json!(90),
            "meanMediumBelow must be >= meanHighBelow",
        ),
        (
            "/spec/drift/signals/qps",
            json!({"volatilityMedium": 0.5, "volatilityHigh": 0.4}),
            "volatilityHigh must be >= volatilityMedium",
        ),
        (
            "/spec/sources/0/jsonl",
            json!({"path": "/x"}),
            "exactly one of prometheus, jsonl or http",
        ),
        (
            "/spec/sources/1/name",
            json!("app"),
            "source names must be unique",
        ),
        (
            "/spec/sources/0/prometheus/interval",
            json!("10 seconds"),
            "expected a positive duration",
        ),
        (
            "/spec/sources/0/prometheus/path",
            json!("metrics"),
            "path must start with /",
        ),
        (
            "/spec/sources/1/jsonl/path",
            json!("t.jsonl"),
            "path must be absolute",
        ),
        (
            "/spec/sources/2/http/url",
            json!("ftp://x/y"),
            "url must be http:// or https://",
        ),
        (
            "/spec/protect/pdb/maxUnavailable",
            json!(1),
            "set exactly one of minAvailable and maxUnavailable",
        ),
        (
            "/spec/protect/hpa/maxReplicas",
            json!(1),
            "maxReplicas must be >= minReplicas",
        ),
        ("/spec/finops/cpuHourUsd", json!(0.04), "not both"),
        (
            "/spec/verifier",
            json!({"endpoint": "verifier:8443"}),
            "endpoint must be an https://",
        ),
        ("/spec/selector", json!({}), "selector must not be empty"),
        (
            "/spec/selector",
            json!({"matchLabels": {}}),
            "selector must not be empty",
        ),
    ];
    for (ptr, v, msg) in cases {
        let errs = broken(&s, &with(policy(), ptr, v.clone()));
        assert!(
            errs.iter().any(|e| e.contains(msg)),
            "{ptr} = {v}: expected {msg:?}, got {errs:?}"
        );
    }
    // Defaults are what the rules see: a policy without windows gets ["1h"], so a PCS window of
    // 1h is valid and one of 5m is not.
    let p = with(
        with(policy(), "/spec/windows", Value::Null),
        "/spec/pcs/window",
        json!("1h"),
    );
    assert_eq!(broken(&s, &p), Vec::<String>::new());
    let p = with(p, "/spec/pcs/window", json!("5m"));
    assert_eq!(broken(&s, &p).len(), 1);
}

#[test]
fn gate_rules_accept_the_valid_and_refuse_the_invalid() {
    let s = schema("finopsgate.yaml");
    assert_eq!(broken(&s, &gate()), Vec::<String>::new());
    let window = with(gate(), "/spec/baseline", json!({"window": "1h"}));
    assert_eq!(broken(&s, &window), Vec::<String>::new());
    let per_replica = with(gate(), "/spec/cost", json!({"costPerReplicaHourUsd": 0.02}));
    assert_eq!(broken(&s, &per_replica), Vec::<String>::new());
    let sts = with(
        gate(),
        "/spec/targetRef",
        json!({"kind": "StatefulSet", "name": "db"}),
    );
    assert_eq!(broken(&s, &sts), Vec::<String>::new());
    let errs = broken(&s, &with(sts, "/spec/enforce", json!(true)));
    assert!(
        errs.iter()
            .any(|e| e.contains("enforce needs a Deployment target")),
        "{errs:?}"
    );
    let cases = [
        (
            "/spec/thresholds",
            json!({"ok": 1.1, "warn": 1.0}),
            "warn must be >= ok",
        ),
        ("/spec/thresholds", json!({"ok": 1.2}), "warn must be >= ok"),
        (
            "/spec/cost",
            json!({"costPerReplicaHourUsd": 0.02, "cpuHourUsd": 0.04}),
            "set exactly one of costPerReplicaHourUsd",
        ),
        (
            "/spec/cost",
            json!({"cpuHourUsd": 0.04}),
            "set exactly one of costPerReplicaHourUsd",
        ),
        (
            "/spec/cost",
            json!({}),
            "set exactly one of costPerReplicaHourUsd",
        ),
        (
            "/spec/baseline",
            json!({"window": "1h", "qps": 10.0}),
            "set window, or qps",
        ),
        (
            "/spec/baseline",
            json!({"qps": 10.0}),
            "an explicit baseline needs",
        ),
        ("/spec/baseline/qps", json!(0.0), "qps must be positive"),
    ];
    for (ptr, v, msg) in cases {
        let errs = broken(&s, &with(gate(), ptr, v.clone()));
        assert!(
            errs.iter().any(|e| e.contains(msg)),
            "{ptr} = {v}: expected {msg:?}, got {errs:?}"
        );
    }
}
