//! The checked-in CRDs match the Rust types, carry the CEL rules and printer columns of design
//! §3, and the examples in `manifests/examples/` are valid objects of the types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::crd::{CoherencePolicy, FinOpsGate, TargetKind, VetoMode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    for (name, generated) in coherence_operator::crdgen::files().unwrap() {
        let on_disk = read(&format!("crds/{name}"));
        assert!(
            on_disk == generated,
            "crds/{name} differs from the Rust types: run `make crds` (cargo run -p coherence-operator -- crdgen --out-dir crds) and commit the result"
        );
    }
    let multi = coherence_operator::crdgen::multi_document().unwrap();
    assert_eq!(multi.matches("kind: CustomResourceDefinition").count(), 2);
}

fn crd(name: &str) -> (CustomResourceDefinition, Value) {
    let text = read(&format!("crds/{name}"));
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).unwrap();
    let v = serde_json::to_value(&crd).unwrap();
    (crd, v)
}

/// Every `x-kubernetes-validations` rule in the schema, with the path where it sits.
fn rules(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(rs)) = m.get("x-kubernetes-validations") {
                for r in rs {
                    out.push((path.to_string(), r["rule"].as_str().unwrap().to_string()));
                }
            }
            for (k, c) in m {
                rules(c, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| rules(c, path, out)),
        _ => {}
    }
}

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect()
}

fn has_rule(all: &[(String, String)], path_end: &str, rule_part: &str) -> bool {
    all.iter()
        .any(|(p, r)| p.ends_with(path_end) && r.contains(rule_part))
}

#[test]
fn policy_crd_has_names_columns_status_and_cel_rules() {
    let (crd, v) = crd("coherencepolicy.yaml");
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("coherencepolicies.coherence.dev")
    );
    assert_eq!(crd.spec.group, "coherence.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["cpol".to_string()]));
    let ver = &crd.spec.versions[0];
    assert_eq!(ver.name, "v1alpha1");
    assert!(ver.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<_> = columns(&crd).into_iter().map(|c| (c.0, c.2)).collect();
    let want = [
        ("PODS", ".status.matchedPods"),
        ("INJECTED", ".status.injectedPods"),
        ("RISK", ".status.driftRisk"),
        ("VETO", ".status.veto.action"),
        ("AGE", ".metadata.creationTimestamp"),
    ];
    assert_eq!(
        cols,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let mut all = Vec::new();
    rules(&v, "", &mut all);
    assert!(
        has_rule(&all, "/windows", "w.matches('^[1-9][0-9]*[smhd]$')"),
        "{all:?}"
    );
    assert!(has_rule(
        &all,
        "/drift",
        "self.volatilityHigh >= self.volatilityMedium"
    ));
    assert!(has_rule(
        &all,
        "/pdb",
        "has(self.minAvailable) != has(self.maxUnavailable)"
    ));
    assert!(has_rule(&all, "/sources/items", "has(self.prometheus)"));
    assert!(has_rule(&all, "/spec", "self.pcs.window in self.windows"));
    let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["windows"]["default"],
        serde_json::json!(["1h"])
    );
    assert_eq!(
        spec["properties"]["pcs"]["properties"]["scales"]["default"],
        serde_json::json!([2, 4, 8, 16, 32])
    );
    assert_eq!(
        spec["properties"]["veto"]["properties"]["mode"]["default"],
        "recommend"
    );
    assert_eq!(
        spec["properties"]["veto"]["properties"]["mode"]["enum"],
        serde_json::json!(["shadow", "recommend", "enforce"])
    );
    assert_eq!(
        spec["properties"]["verifier"]["default"]["endpoint"],
        "https://coherence-verifier.coherence.svc:8443"
    );
    assert_eq!(
        spec["properties"]["detectors"]["default"]["spikeSigma"],
        2.5
    );
    let status = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
    let cond = &status["properties"]["conditions"]["items"]["required"];
    for f in ["type", "status", "lastTransitionTime", "reason", "message"] {
        assert!(
            cond.as_array().unwrap().iter().any(|x| x == f),
            "{f} in {cond}"
        );
    }
}

#[test]
fn gate_crd_has_names_columns_and_cel_rules() {
    let (crd, v) = crd("finopsgate.yaml");
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("finopsgates.coherence.dev")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["fgate".to_string()]));
    let cols = columns(&crd);
    let want = [
        ("TARGET", "string", ".spec.targetRef.name"),
        ("FTI", "number", ".status.fti"),
        ("GRADE", "string", ".status.grade"),
        ("LAMBDA", "number", ".status.lambdaEffective"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ];
    assert_eq!(
        cols,
        want.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect::<Vec<_>>()
    );
    let mut all = Vec::new();
    rules(&v, "", &mut all);
    assert!(
        has_rule(&all, "/thresholds", "self.warn >= self.ok"),
        "{all:?}"
    );
    assert!(has_rule(&all, "/cost", "has(self.costPerReplicaHourUsd)"));
    assert!(has_rule(&all, "/baseline", "has(self.window)"));
    let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["thresholds"]["default"],
        serde_json::json!({"ok": 1.0, "warn": 1.05})
    );
    assert_eq!(spec["properties"]["enforce"]["default"], false);
    assert_eq!(
        spec["properties"]["targetRef"]["properties"]["kind"]["enum"],
        serde_json::json!(["Deployment", "StatefulSet"])
    );
}

#[test]
fn examples_deserialize_into_the_types() {
    let p: CoherencePolicy =
        serde_yaml_ng::from_str(&read("manifests/examples/coherencepolicy.yaml")).unwrap();
    assert_eq!(p.spec.windows, ["5m", "1h"]);
    assert_eq!(p.spec.veto.mode, VetoMode::Recommend);
    assert_eq!(p.spec.pcs.scales, [2, 4, 8, 16, 32], "default scales");
    assert_eq!(p.spec.detectors.variance_ratio, 1.5, "default detectors");
    assert!(p.spec.protect.as_ref().unwrap().hpa.is_some());
    coherence_operator::render::validate(&p.spec).unwrap();
    let g: FinOpsGate =
        serde_yaml_ng::from_str(&read("manifests/examples/finopsgate.yaml")).unwrap();
    assert_eq!(g.spec.target_ref.kind, TargetKind::Deployment);
    assert_eq!(g.spec.min_samples, 10);
    assert!(g.spec.enforce);
    let d: Deployment =
        serde_yaml_ng::from_str(&read("manifests/examples/deployment.yaml")).unwrap();
    let labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(
        p.spec.selector.match_labels.unwrap().get("app"),
        labels.get("app"),
        "the example policy selects the example Deployment"
    );
}
