//! `spec.protect` builds exactly the HPA, PDB and NetworkPolicy it asks for, owned by the
//! policy, and nothing when it does not ask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::crd::CoherencePolicy;
use coherence_operator::protect::{self, Target};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn policy(protect: Value, endpoint: &str) -> CoherencePolicy {
    serde_json::from_value(json!({
        "apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy",
        "metadata": {"name": "web", "namespace": "demo", "uid": "u-1"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sources": [{"name": "app", "prometheus": {"port": 9090, "metrics": ["up"]}}],
            "pcs": {"secretRef": {"name": "pcs", "key": "k"}},
            "verifier": {"endpoint": endpoint},
            "protect": protect,
        }
    }))
    .unwrap()
}

fn target() -> Target {
    serde_json::from_value::<LabelSelector>(json!({"matchLabels": {"app": "web", "tier": "front"}}))
        .map(|selector| Target {
            name: "web".into(),
            selector,
        })
        .unwrap()
}

/// Serialize → deserialize → serialize keeps every field.
fn strict<T: Serialize + DeserializeOwned>(obj: &T) -> Value {
    let v = serde_json::to_value(obj).unwrap();
    let back: T = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        v,
        "round trip lost a field"
    );
    v
}

const OWNER: &str = r#"[{"apiVersion":"coherence.dev/v1alpha1","kind":"CoherencePolicy","name":"web","uid":"u-1","controller":true,"blockOwnerDeletion":true}]"#;

fn owned(v: &Value) {
    assert_eq!(v["metadata"]["name"], "coherence-web-web");
    assert_eq!(v["metadata"]["namespace"], "demo");
    assert_eq!(
        v["metadata"]["ownerReferences"],
        serde_json::from_str::<Value>(OWNER).unwrap()
    );
    assert_eq!(v["metadata"]["labels"]["coherence.dev/target"], "web");
    assert_eq!(
        v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "coherence-operator"
    );
}

#[test]
fn hpa_pdb_and_network_policy_as_asked() {
    let p = policy(
        json!({
            "hpa": {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70},
            "pdb": {"maxUnavailable": "25%"},
            "networkPolicy": {"ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "edge"}}}]}
        }),
        "https://coherence-verifier.coherence.svc:8443",
    );
    let out = protect::protection(&p, &target()).unwrap();

    let hpa = strict::<HorizontalPodAutoscaler>(out.hpa.as_ref().unwrap());
    owned(&hpa);
    assert_eq!(
        hpa["spec"],
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 2, "maxReplicas": 6,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                          "target": {"type": "Utilization", "averageUtilization": 70}}}]
        })
    );

    let pdb = strict::<PodDisruptionBudget>(out.pdb.as_ref().unwrap());
    owned(&pdb);
    assert_eq!(
        pdb["spec"],
        json!({"selector": {"matchLabels": {"app": "web", "tier": "front"}}, "maxUnavailable": "25%"})
    );

    let np = strict::<NetworkPolicy>(out.network_policy.as_ref().unwrap());
    owned(&np);
    assert_eq!(
        np["spec"],
        json!({
            "podSelector": {"matchLabels": {"app": "web", "tier": "front"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "edge"}}}]},
                {"from": [{"namespaceSelector": {},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
                 "ports": [{"protocol": "TCP", "port": "coh-metrics"}]}
            ],
            "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "coherence"}}}],
                 "ports": [{"protocol": "TCP", "port": 8443}]},
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
            ]
        })
    );
}

#[test]
fn nothing_is_built_that_the_spec_does_not_ask_for() {
    let none = policy(Value::Null, "https://coherence-verifier.coherence.svc:8443");
    assert_eq!(
        protect::protection(&none, &target()).unwrap(),
        protect::Protection::default()
    );
    let only_pdb = policy(
        json!({"pdb": {"minAvailable": 1}}),
        "https://v.coherence.svc:8443",
    );
    let out = protect::protection(&only_pdb, &target()).unwrap();
    assert!(out.hpa.is_none() && out.network_policy.is_none());
    assert_eq!(
        serde_json::to_value(out.pdb.unwrap()).unwrap()["spec"]["minAvailable"],
        1
    );
    // A NetworkPolicy that neither isolates ingress nor allows verifier egress is no policy.
    let idle = policy(
        json!({"networkPolicy": {"allowVerifierEgress": false}}),
        "https://v.coherence.svc:8443",
    );
    assert!(
        protect::protection(&idle, &target())
            .unwrap()
            .network_policy
            .is_none()
    );
    // Defaults: allowVerifierEgress true, minReplicas 1, 80 % CPU.
    let d = policy(
        json!({"hpa": {"maxReplicas": 3}, "networkPolicy": {}}),
        "https://v.coherence.svc:8443",
    );
    let out = protect::protection(&d, &target()).unwrap();
    let hpa = serde_json::to_value(out.hpa.unwrap()).unwrap();
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
    let np = serde_json::to_value(out.network_policy.unwrap()).unwrap();
    assert_eq!(np["spec"]["policyTypes"], json!(["Egress"]));
}

#[test]
fn metrics_from_opens_the_sidecar_metrics_port_when_ingress_is_isolated() {
    let ingress = |network_policy: Value| {
        let p = policy(
            json!({ "networkPolicy": network_policy }),
            "https://v.coherence.svc:8443",
        );
        let np = protect::protection(&p, &target())
            .unwrap()
            .network_policy
            .unwrap();
        serde_json::to_value(np).unwrap()["spec"]["ingress"].clone()
    };
    let edge = json!([{"namespaceSelector": {"matchLabels": {"team": "edge"}}}]);
    // Listed peers: those may scrape, on the named port only.
    let monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    assert_eq!(
        ingress(json!({"ingressFrom": edge, "metricsFrom": monitoring})),
        json!([
            {"from": edge},
            {"from": monitoring, "ports": [{"protocol": "TCP", "port": "coh-metrics"}]}
        ])
    );
    // The default is the Prometheus Operator's Prometheus pods in any namespace.
    let default = ingress(json!({"ingressFrom": edge}));
    assert_eq!(
        default[1]["from"],
        json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}])
    );
    assert_eq!(default[1]["ports"][0]["port"], "coh-metrics");
    // `[]`: no metrics rule.
    assert_eq!(
        ingress(json!({"ingressFrom": edge, "metricsFrom": []})),
        json!([{"from": edge}])
    );
    // Ingress not isolated: no ingress rule at all (scrapes are not blocked).
    assert_eq!(ingress(json!({"metricsFrom": monitoring})), Value::Null);
}

#[test]
fn verifier_egress_follows_the_endpoint() {
    assert_eq!(
        protect::verifier_namespace("https://coherence-verifier.coherence.svc:8443").as_deref(),
        Some("coherence")
    );
    assert_eq!(
        protect::verifier_namespace("https://v.obs:8443").as_deref(),
        Some("obs")
    );
    assert_eq!(
        protect::verifier_namespace("https://v.obs.svc.cluster.local:8443/x").as_deref(),
        Some("obs")
    );
    assert_eq!(
        protect::verifier_namespace("https://verifier.example.com:8443"),
        None
    );
    assert_eq!(protect::verifier_namespace("https://10.0.0.7:8443"), None);
    let ext = policy(
        json!({"networkPolicy": {}}),
        "https://verifier.example.com:8443",
    );
    let np = serde_json::to_value(
        protect::protection(&ext, &target())
            .unwrap()
            .network_policy
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        np["spec"]["egress"][0],
        json!({"ports": [{"protocol": "TCP", "port": 8443}]})
    );
}

#[test]
fn bad_pdb_values_name_the_field() {
    for (pdb, field) in [
        (
            json!({"minAvailable": "150%"}),
            "spec.protect.pdb.minAvailable",
        ),
        (
            json!({"maxUnavailable": -1}),
            "spec.protect.pdb.maxUnavailable",
        ),
        (
            json!({"minAvailable": 1, "maxUnavailable": 1}),
            "spec.protect.pdb",
        ),
    ] {
        let p = policy(json!({"pdb": pdb}), "https://v.coherence.svc:8443");
        let e = protect::protection(&p, &target()).unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
        assert_eq!(e.metric_label(), "invalid_spec");
    }
}
