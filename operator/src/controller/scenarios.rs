//! Reconcile scenarios against the stateful fake API (`crate::fake`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::verifier::StaticVerifier;
use super::{Caches, Context, cache, gate, policy};
use crate::crd::{CoherencePolicy, FinOpsGate};
use crate::fake::{FakeApi, Write};
use crate::metrics::Metrics;
use crate::verifier::{
    FinopsSample, FinopsSummary, IncidentSummary, PodSummary, VetoSummary, WorkloadSummary,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::sync::Arc;

const NS: &str = "demo";
const NOW_MS: i64 = 1_750_000_000_000;

struct World {
    fake: FakeApi,
    verifier: Arc<StaticVerifier>,
    ctx: Arc<Context>,
}

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = format!(
        "{}/../manifests/examples/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn deployment(name: &str, paused: Option<bool>, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": {"app": "web", "name": name}},
            "paused": paused,
            "template": {
                "metadata": {"labels": {"app": "web", "name": name}},
                "spec": {"containers": [{"name": "app", "image": "web:1",
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]},
            },
        },
    })
}

fn pod(name: &str, injected: bool) -> Value {
    let ann = if injected {
        json!({"coherence.dev/injected": "web"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web", "name": "web"}, "annotations": ann},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]}})
}

impl World {
    fn new() -> World {
        Self::build(false)
    }

    /// A world whose cluster serves the PrometheusRule kind.
    fn with_prometheus_rules() -> World {
        Self::build(true)
    }

    fn build(prometheus_rules: bool) -> World {
        let fake = FakeApi::new();
        fake.insert("deployments", &deployment("web", None, json!({})));
        fake.insert("pods", &pod("web-1", true));
        fake.insert("pods", &pod("web-2", false));
        // A pod of another app is not counted.
        let mut other = pod("db-1", true);
        other["metadata"]["labels"] = json!({"app": "db"});
        fake.insert("pods", &other);
        let mut p: CoherencePolicy = example("coherencepolicy.yaml");
        p.metadata.namespace = Some(NS.into());
        fake.insert("coherencepolicies", &p);
        let verifier = Arc::new(StaticVerifier::new());
        let mut ctx = Context::new(
            fake.client(),
            verifier.clone(),
            Arc::new(Metrics::default()),
            None,
        );
        ctx.clock = Some(Timestamp::from_millisecond(NOW_MS).unwrap());
        ctx.prometheus_rules = prometheus_rules;
        World {
            fake,
            verifier,
            ctx: Arc::new(ctx),
        }
    }

    /// The same world, read through watched caches as `run` reads it.
    fn with_caches() -> World {
        let mut w = Self::build(false);
        let client = w.fake.client();
        let (pods, mut pod_writer) = cache::cache(cache::PodEntry::of);
        let (deployments, mut deployment_writer) = cache::cache(cache::DeploymentEntry::of);
        tokio::spawn(
            watcher(
                Api::<PartialObjectMeta<Pod>>::all(client.clone()),
                watcher::Config::default(),
            )
            .for_each(move |e| {
                if let Ok(e) = e {
                    pod_writer.apply(&e);
                }
                async {}
            }),
        );
        tokio::spawn(
            watcher(Api::<Deployment>::all(client), watcher::Config::default()).for_each(
                move |e| {
                    if let Ok(e) = e {
                        deployment_writer.apply(&e);
                    }
                    async {}
                },
            ),
        );
        Arc::get_mut(&mut w.ctx).unwrap().caches = Some(Caches { pods, deployments });
        w
    }

    /// Reconciles until `done` holds of the policy's status (the caches follow watches).
    async fn reconcile_until(&self, what: &str, done: impl Fn(&Value) -> bool) {
        for _ in 0..200 {
            self.reconcile_policy().await.unwrap();
            let p = self
                .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
                .unwrap();
            if done(&p["status"]) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("{what}: not reached");
    }

    fn policies(&self) -> Api<CoherencePolicy> {
        Api::namespaced(self.fake.client(), NS)
    }

    fn obj(&self, gv: &str, plural: &str, name: &str) -> Option<Value> {
        self.fake.get(gv, plural, NS, name)
    }

    async fn reconcile_policy(&self) -> Result<kube::runtime::controller::Action, super::Error> {
        let p = self.policies().get("web").await.unwrap();
        policy::reconcile(Arc::new(p), self.ctx.clone()).await
    }

    /// Two passes: the first adds the finalizer and does the work, the second finds the
    /// cluster as the first left it.
    async fn settle_policy(&self) {
        self.reconcile_policy().await.unwrap();
        self.reconcile_policy().await.unwrap();
    }

    async fn patch_policy(&self, patch: Value) {
        self.policies()
            .patch("web", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    fn paused(&self, name: &str) -> (Option<bool>, Option<String>) {
        let d = self.obj("apps/v1", "deployments", name).unwrap();
        (
            d.pointer("/spec/paused").and_then(Value::as_bool),
            d.pointer("/metadata/annotations/coherence.dev~1paused-by")
                .and_then(Value::as_str)
                .map(str::to_string),
        )
    }

    fn writes_to(&self, plural: &str) -> Vec<Write> {
        self.fake
            .writes()
            .into_iter()
            .filter(|w| w.path.contains(&format!("/{plural}")))
            .collect()
    }
}

fn summary(workload: &str, veto: bool) -> WorkloadSummary {
    WorkloadSummary {
        namespace: NS.into(),
        workload: workload.into(),
        drift_risk: "high".into(),
        updated_at: "2025-06-15T15:00:00Z".into(),
        pods: vec![PodSummary {
            pod: format!("{workload}-1"),
            epoch: 7,
            received_at: "2025-06-15T15:00:00Z".into(),
        }],
        incidents: vec![IncidentSummary {
            id: "inc-1".into(),
            end_ms: NOW_MS - 60_000,
        }],
        veto: veto.then(|| VetoSummary {
            action: "pause-rollout".into(),
            reason: "retry storm".into(),
            since: "2025-06-15T14:00:00Z".into(),
            risk: 0.9,
            incident_id: "inc-1".into(),
            pattern: "retry_storm".into(),
        }),
        finops: FinopsSummary::default(),
    }
}

fn condition(status: &Value, type_: &str) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap();
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
    )
}

fn s(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[tokio::test]
async fn creation_writes_owned_objects_and_status_without_verifier_data() {
    let w = World::new();
    w.reconcile_policy().await.unwrap();
    let p = w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap();
    assert_eq!(
        p["metadata"]["finalizers"],
        json!(["coherence.dev/cleanup"])
    );
    // The same pass goes on to the work: no second trigger is needed.
    assert!(w.obj("v1", "configmaps", "coherence-sidecar-web").is_some());

    w.reconcile_policy().await.unwrap();
    let policy: CoherencePolicy = serde_json::from_value(p).unwrap();
    let cm = w.obj("v1", "configmaps", "coherence-sidecar-web").unwrap();
    assert_eq!(
        cm["data"]["config.yaml"].as_str().unwrap(),
        crate::render::sidecar_config_yaml(&policy.spec).unwrap()
    );
    assert_eq!(cm["metadata"]["ownerReferences"][0]["name"], "web");
    assert_eq!(
        cm["metadata"]["ownerReferences"][0]["uid"],
        policy.metadata.uid.clone().unwrap()
    );

    let hpa = w
        .obj(
            "autoscaling/v2",
            "horizontalpodautoscalers",
            "coherence-web-web",
        )
        .unwrap();
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    );
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].clone(),
            hpa["spec"]["maxReplicas"].clone()
        ),
        (json!(2), json!(6))
    );
    let pdb = w
        .obj("policy/v1", "poddisruptionbudgets", "coherence-web-web")
        .unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"],
        json!({"matchLabels": {"app": "web", "name": "web"}})
    );
    let np = w
        .obj(
            "networking.k8s.io/v1",
            "networkpolicies",
            "coherence-web-web",
        )
        .unwrap();
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));

    let st = &w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"];
    assert_eq!(
        (st["matchedPods"].clone(), st["injectedPods"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(
        condition(st, "SidecarsInjected"),
        s("False", "NotAllInjected")
    );
    assert_eq!(condition(st, "SignalsHealthy"), s("Unknown", "NoData"));
    assert_eq!(condition(st, "Ready"), s("False", "NotAllInjected"));
    assert_eq!(condition(st, "Vetoed"), s("False", "NoVeto"));
    assert_eq!(st["observedGeneration"], 1);
    // Every apply went through the one field manager.
    for wr in w.fake.writes().iter().filter(|w| w.patch == "apply") {
        assert_eq!(wr.status / 100, 2, "{wr:?}");
    }
    assert_eq!(
        w.writes_to("events").len(),
        1,
        "one Event for the new conditions"
    );
}

#[tokio::test]
async fn a_trigger_with_a_copy_from_before_the_finalizer_is_not_refused() {
    let w = World::new();
    let stale = w.policies().get("web").await.unwrap();
    assert!(kube::ResourceExt::finalizers(&stale).is_empty());
    w.reconcile_policy().await.unwrap();
    w.fake.clear_writes();
    // A trigger that still holds the copy from before the first pass added the finalizer.
    policy::reconcile(Arc::new(stale), w.ctx.clone())
        .await
        .unwrap();
    let refused: Vec<Write> = w
        .fake
        .writes()
        .into_iter()
        .filter(|x| x.status >= 400)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let p = w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap();
    assert_eq!(
        p["metadata"]["finalizers"],
        json!(["coherence.dev/cleanup"])
    );
    assert_eq!(
        p["status"]["observedGeneration"],
        p["metadata"]["generation"]
    );
}

#[tokio::test]
async fn a_second_reconcile_writes_nothing() {
    let w = World::new();
    w.settle_policy().await;
    w.fake.clear_writes();
    w.reconcile_policy().await.unwrap();
    assert_eq!(w.fake.writes(), vec![], "no write, no Event");
}

#[tokio::test]
async fn a_spec_change_removes_what_is_no_longer_asked_for() {
    let w = World::new();
    w.settle_policy().await;
    w.patch_policy(json!({"spec": {"protect": {"pdb": null}}}))
        .await;
    w.fake.clear_writes();
    w.reconcile_policy().await.unwrap();
    assert!(
        w.obj("policy/v1", "poddisruptionbudgets", "coherence-web-web")
            .is_none()
    );
    assert!(
        w.obj(
            "autoscaling/v2",
            "horizontalpodautoscalers",
            "coherence-web-web"
        )
        .is_some()
    );
    let deletes: Vec<_> = w
        .fake
        .writes()
        .into_iter()
        .filter(|w| w.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert!(
        deletes[0]
            .path
            .ends_with("/poddisruptionbudgets/coherence-web-web")
    );
    // The status records the new generation.
    let st = &w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"];
    assert_eq!(st["observedGeneration"], 2);

    // Another window changes the ConfigMap and its hash.
    let before = w.obj("v1", "configmaps", "coherence-sidecar-web").unwrap();
    w.patch_policy(json!({"spec": {"windows": ["5m", "1h", "24h"]}}))
        .await;
    w.reconcile_policy().await.unwrap();
    let after = w.obj("v1", "configmaps", "coherence-sidecar-web").unwrap();
    assert_ne!(
        before["metadata"]["annotations"]["coherence.dev/config-hash"],
        after["metadata"]["annotations"]["coherence.dev/config-hash"]
    );
    assert!(
        after["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("24h")
    );
}

#[tokio::test]
async fn enforce_pauses_and_releases_only_what_it_paused() {
    let w = World::new();
    // `legacy` is paused by someone else and also vetoed: it must stay as it is.
    w.fake
        .insert("deployments", &deployment("legacy", Some(true), json!({})));
    w.patch_policy(json!({"spec": {"veto": {"mode": "enforce"}}}))
        .await;
    w.verifier.set(summary("web", true));
    w.verifier.set(summary("legacy", true));
    w.settle_policy().await;

    assert_eq!(w.paused("web"), (Some(true), Some("web".into())));
    assert_eq!(w.paused("legacy"), (Some(true), None));
    let st = &w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"];
    assert_eq!(condition(st, "Vetoed"), s("True", "PauseRollout"));
    assert_eq!(st["veto"]["action"], "pause-rollout");
    assert_eq!(w.writes_to("events").len(), 2, "conditions and veto Events");

    // The incident goes quiet: the veto clears and only `web` is released.
    w.verifier.set(summary("web", false));
    w.verifier.set(summary("legacy", false));
    w.reconcile_policy().await.unwrap();
    assert_eq!(w.paused("web"), (Some(false), None));
    assert_eq!(w.paused("legacy"), (Some(true), None));
    let st = &w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"];
    assert_eq!(condition(st, "Vetoed"), s("False", "NoVeto"));
    assert!(
        st.get("veto").is_none(),
        "the applied veto field is gone: {st}"
    );
}

#[tokio::test]
async fn recommend_mode_never_pauses() {
    let w = World::new();
    w.verifier.set(summary("web", true));
    w.settle_policy().await;
    assert_eq!(w.paused("web"), (None, None));
    let st = &w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"];
    assert_eq!(condition(st, "Vetoed"), s("True", "PauseRollout"));
}

#[tokio::test]
async fn a_verifier_outage_is_unknown_not_healthy() {
    let w = World::new();
    w.verifier.set_outage(Some("connection refused"));
    w.settle_policy().await;
    let st = &w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"];
    assert_eq!(
        condition(st, "SignalsHealthy"),
        s("Unknown", "VerifierUnavailable")
    );
}

#[tokio::test]
async fn deleting_a_policy_releases_and_removes_everything() {
    let w = World::new();
    w.patch_policy(json!({"spec": {"veto": {"mode": "enforce"}}}))
        .await;
    w.verifier.set(summary("web", true));
    w.settle_policy().await;
    assert_eq!(w.paused("web"), (Some(true), Some("web".into())));

    w.policies()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        w.obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
            .is_some(),
        "held by the finalizer"
    );
    w.reconcile_policy().await.unwrap();

    assert!(
        w.obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
            .is_none()
    );
    assert_eq!(w.paused("web"), (Some(false), None));
    assert_eq!(w.fake.names("v1", "configmaps", NS), Vec::<String>::new());
    assert_eq!(
        w.fake
            .names("autoscaling/v2", "horizontalpodautoscalers", NS),
        Vec::<String>::new()
    );
    assert_eq!(
        w.fake.names("policy/v1", "poddisruptionbudgets", NS),
        Vec::<String>::new()
    );
    assert_eq!(
        w.fake.names("networking.k8s.io/v1", "networkpolicies", NS),
        Vec::<String>::new()
    );
    assert_eq!(w.fake.names("apps/v1", "deployments", NS), ["web"]);
}

#[tokio::test]
async fn an_invalid_spec_waits_for_a_change() {
    let w = World::new();
    w.reconcile_policy().await.unwrap();
    w.patch_policy(json!({"spec": {"windows": ["60m", "1h"]}}))
        .await;
    let err = w.reconcile_policy().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(err.metric_label(), "invalid_spec");
    let st = &w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"];
    assert_eq!(condition(st, "Ready"), s("False", "InvalidSpec"));
    let p = w.policies().get("web").await.unwrap();
    let action = policy::error_policy(Arc::new(p), &err, w.ctx.clone());
    assert_eq!(action, kube::runtime::controller::Action::await_change());
}

fn samples(n: usize, at_ms: i64, qps: f64, latency: f64) -> Vec<FinopsSample> {
    (0..n)
        .map(|i| FinopsSample {
            at_ms: at_ms + i as i64 * 60_000,
            qps,
            latency_p95_ms: latency,
            infra_cost_usd: 0.0,
        })
        .collect()
}

#[tokio::test]
async fn a_failing_gate_with_enforce_vetoes_the_rollout() {
    failing_gate_vetoes_the_rollout(World::new()).await;
}

/// The same gate beside the caches `run` keeps: their Deployments have no pod spec, so a gate
/// that priced from the cache would find no requests; it must read its target through the API.
#[tokio::test]
async fn a_gate_beside_the_caches_prices_its_target_read_through_the_api() {
    failing_gate_vetoes_the_rollout(World::with_caches()).await;
}

async fn failing_gate_vetoes_the_rollout(w: World) {
    let d = w.obj("apps/v1", "deployments", "web").unwrap();
    let uid = d["metadata"]["uid"].as_str().unwrap().to_string();
    // The newest ReplicaSet (revision 2) is the last rollout, an hour ago.
    let rollout_ms = NOW_MS - 3_600_000;
    for (rev, created) in [
        ("1", "2025-01-01T00:00:00Z".to_string()),
        (
            "2",
            Timestamp::from_millisecond(rollout_ms).unwrap().to_string(),
        ),
    ] {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("web-{rev}"), "namespace": NS,
                "labels": {"app": "web", "name": "web"},
                "annotations": {"deployment.kubernetes.io/revision": rev},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": uid, "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
        }))
        .unwrap();
        w.fake.insert("replicasets", &rs);
        w.fake
            .modify("apps/v1", "replicasets", NS, &format!("web-{rev}"), |o| {
                o["metadata"]["creationTimestamp"] = json!(created);
            });
    }
    // Before the rollout: 100 qps at 80 ms; after: half the throughput at the same price.
    let mut recent = samples(20, rollout_ms - 30 * 60_000, 100.0, 80.0);
    recent.extend(samples(20, rollout_ms + 60_000, 50.0, 80.0));
    let mut wl = summary("web", false);
    wl.finops = FinopsSummary {
        samples: 40,
        recent,
    };
    w.verifier.set(wl);

    let mut g: FinOpsGate = example("finopsgate.yaml");
    g.metadata.namespace = Some(NS.into());
    w.fake.insert("finopsgates", &g);
    let gates: Api<FinOpsGate> = Api::namespaced(w.fake.client(), NS);
    for _ in 0..2 {
        let g = gates.get("web").await.unwrap();
        gate::reconcile(Arc::new(g), w.ctx.clone()).await.unwrap();
    }
    let st = &w
        .obj("coherence.dev/v1alpha1", "finopsgates", "web")
        .unwrap()["status"];
    assert_eq!(st["grade"], "FAIL", "{st}");
    assert!((st["fti"].as_f64().unwrap() - 2.0).abs() < 1e-9, "{st}");
    assert_eq!(
        st["explain"]["inputs"]["lastRollout"],
        Timestamp::from_millisecond(rollout_ms).unwrap().to_string()
    );
    assert_eq!(condition(st, "Passed"), s("False", "Fail"));
    // 500m and 512Mi requested by the template's one container.
    let inputs = &st["explain"]["inputs"];
    assert_eq!(inputs["costSource"], "requests", "{inputs}");
    assert_eq!(inputs["cpuRequestCores"], json!(0.5), "{inputs}");
    assert_eq!(inputs["memoryRequestGib"], json!(0.5), "{inputs}");
    assert_eq!(w.paused("web"), (Some(true), Some("finopsgate/web".into())));

    // Deleting the gate releases the rollout.
    gates.delete("web", &DeleteParams::default()).await.unwrap();
    let g = gates.get("web").await.unwrap();
    gate::reconcile(Arc::new(g), w.ctx.clone()).await.unwrap();
    assert_eq!(w.paused("web"), (Some(false), None));
    assert!(
        w.obj("coherence.dev/v1alpha1", "finopsgates", "web")
            .is_none()
    );
}

const RULES: (&str, &str) = ("monitoring.coreos.com/v1", "prometheusrules");

fn alerts_by_group(rule: &Value) -> Vec<(String, Vec<String>)> {
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let alerts = g["rules"].as_array().unwrap();
            (
                g["name"].as_str().unwrap().to_string(),
                alerts
                    .iter()
                    .map(|r| r["alert"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_policy_gets_its_prometheus_rule_and_loses_it_on_delete() {
    let w = World::with_prometheus_rules();
    w.settle_policy().await;
    let p = w.policies().get("web").await.unwrap();
    let rule = w.obj(RULES.0, RULES.1, "coherence-policy-web").unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        alerts_by_group(&rule),
        vec![
            (
                "coherence.policy".to_string(),
                vec![
                    "CoherenceDriftRiskHigh".to_string(),
                    "CoherenceVetoActive".to_string()
                ]
            ),
            (
                "coherence.sidecar".to_string(),
                vec![
                    "CoherenceOutboxBacklog".to_string(),
                    "CoherenceDeadLetterGrowth".to_string()
                ]
            ),
        ]
    );
    assert_eq!(
        rule["spec"]["groups"][0]["rules"][0]["expr"],
        r#"coherence_workload_drift_risk{namespace="demo",workload=~"web"} >= 2"#
    );
    let owner = &rule["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"].as_str(), p.metadata.uid.as_deref());
    assert_eq!(owner["controller"], true);
    let applied = w
        .writes_to("prometheusrules")
        .into_iter()
        .map(|w| (w.method, w.patch))
        .collect::<Vec<_>>();
    assert_eq!(applied, [("PATCH".to_string(), "apply".to_string())]);

    // Steady: the rule is not sent again.
    w.fake.clear_writes();
    w.reconcile_policy().await.unwrap();
    assert_eq!(w.writes_to("prometheusrules"), vec![]);

    w.policies()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    w.reconcile_policy().await.unwrap();
    assert!(
        w.obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
            .is_none()
    );
    assert_eq!(
        w.fake.names(RULES.0, RULES.1, NS),
        Vec::<String>::new(),
        "deleted by the cleanup"
    );
}

#[tokio::test]
async fn without_the_prometheus_rule_kind_no_rule_is_made() {
    let w = World::new();
    w.settle_policy().await;
    assert_eq!(w.fake.names(RULES.0, RULES.1, NS), Vec::<String>::new());
    assert_eq!(w.writes_to("prometheusrules"), vec![]);
}

#[tokio::test]
async fn a_rule_of_the_same_name_owned_by_someone_else_is_left_alone() {
    let w = World::with_prometheus_rules();
    w.fake.insert(
        RULES.1,
        &json!({"apiVersion": RULES.0, "kind": "PrometheusRule",
            "metadata": {"name": "coherence-policy-web", "namespace": NS},
            "spec": {"groups": []}}),
    );
    w.settle_policy().await;
    w.policies()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    w.reconcile_policy().await.unwrap();
    let rule = w.obj(RULES.0, RULES.1, "coherence-policy-web").unwrap();
    assert_eq!(rule["spec"]["groups"], json!([]), "never applied over");
    assert!(rule["metadata"].get("ownerReferences").is_none());
}

#[tokio::test]
async fn a_gate_gets_its_prometheus_rule_and_loses_it_on_delete() {
    let w = World::with_prometheus_rules();
    let mut g: FinOpsGate = example("finopsgate.yaml");
    g.metadata.namespace = Some(NS.into());
    w.fake.insert("finopsgates", &g);
    let gates: Api<FinOpsGate> = Api::namespaced(w.fake.client(), NS);
    for _ in 0..2 {
        let g = gates.get("web").await.unwrap();
        gate::reconcile(Arc::new(g), w.ctx.clone()).await.unwrap();
    }
    let g = gates.get("web").await.unwrap();
    let rule = w.obj(RULES.0, RULES.1, "coherence-finopsgate-web").unwrap();
    assert_eq!(
        alerts_by_group(&rule),
        vec![(
            "coherence.finops".to_string(),
            vec!["CoherenceFinOpsGateFail".to_string()]
        )]
    );
    assert_eq!(
        rule["spec"]["groups"][0]["rules"][0]["expr"],
        r#"coherence_finops_grade{namespace="demo",gate="web"} == 2"#
    );
    assert_eq!(
        rule["metadata"]["ownerReferences"][0]["uid"].as_str(),
        g.metadata.uid.as_deref()
    );

    gates.delete("web", &DeleteParams::default()).await.unwrap();
    let g = gates.get("web").await.unwrap();
    gate::reconcile(Arc::new(g), w.ctx.clone()).await.unwrap();
    assert!(
        w.obj("coherence.dev/v1alpha1", "finopsgates", "web")
            .is_none()
    );
    assert_eq!(w.fake.names(RULES.0, RULES.1, NS), Vec::<String>::new());
}

#[tokio::test]
async fn cached_reads_count_like_listing_and_follow_the_watches() {
    let w = World::with_caches();
    w.settle_policy().await;
    let st = w
        .obj("coherence.dev/v1alpha1", "coherencepolicies", "web")
        .unwrap()["status"]
        .clone();
    assert_eq!(
        (st["matchedPods"].clone(), st["injectedPods"].clone()),
        (json!(2), json!(1))
    );
    assert!(
        w.obj(
            "autoscaling/v2",
            "horizontalpodautoscalers",
            "coherence-web-web"
        )
        .is_some()
    );
    // Steady passes read pods and Deployments from the caches only.
    let (pods, deployments) = (w.fake.reads_of("pods"), w.fake.reads_of("deployments"));
    w.fake.clear_writes();
    w.reconcile_policy().await.unwrap();
    assert_eq!(w.fake.writes(), vec![]);
    assert_eq!(
        (w.fake.reads_of("pods"), w.fake.reads_of("deployments")),
        (pods, deployments),
        "no list through the API"
    );

    // A new injected pod: seen once the watch delivers it.
    w.fake.insert("pods", &pod("web-3", true));
    w.reconcile_until("three pods, two injected", |st| {
        st["matchedPods"] == json!(3) && st["injectedPods"] == json!(2)
    })
    .await;

    // The Deployment goes: its protection goes with it.
    Api::<Deployment>::namespaced(w.fake.client(), NS)
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    for _ in 0..200 {
        w.reconcile_policy().await.unwrap();
        if w.obj(
            "autoscaling/v2",
            "horizontalpodautoscalers",
            "coherence-web-web",
        )
        .is_none()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the HPA of a deleted Deployment was not removed");
}
