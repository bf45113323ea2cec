//! The operator against a real cluster (`KUBECONFIG`), with Coherence installed by the harness
//! (`e2e/README.md`). Without a cluster each test prints `e2e skipped: <reason>` and passes;
//! `COHERENCE_E2E_REQUIRED=1` makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_e2e::{
    FIELD_MANAGER, await_condition, cluster, find_condition, has_condition, poll, random_suffix,
    with_temp_ns,
};
use coherence_operator::crd::{CoherencePolicy, CoherencePolicySpec, FinOpsGate, FinOpsGateSpec};
use coherence_operator::inject::CONTAINER_NAME;
use coherence_operator::owner::POLICY_LABEL;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::conditions;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::fmt::Debug;
use std::time::Duration;

/// The workload's name, also its `app` label: the sidecar's workload name and the verifier's.
const APP: &str = "web";
/// Secret (`namespace/name`) with `tls.crt`, `tls.key`, `ca.crt` of a client the verifier
/// accepts; copied into the test namespace so the sidecars can report.
const CLIENT_CERT_ENV: &str = "COHERENCE_E2E_CLIENT_CERT_SECRET";
const CLIENT_CERT_DEFAULT: &str = "coherence/coherence-sidecar-client";
/// Where the installed verifier's PCS signing key is (`namespace/name`).
const PCS_SECRET_ENV: &str = "COHERENCE_E2E_PCS_SECRET";
const PCS_SECRET_DEFAULT: &str = "coherence/coherence-pcs";
/// The verifier as the sidecars reach it.
const VERIFIER_ENV: &str = "COHERENCE_E2E_VERIFIER_ENDPOINT";
const VERIFIER_DEFAULT: &str = "https://coherence-verifier.coherence.svc:8443";
/// Image of the test workload: a shell that serves a changing `/metrics` on 127.0.0.1:9090.
const APP_IMAGE_ENV: &str = "COHERENCE_E2E_APP_IMAGE";
const APP_IMAGE_DEFAULT: &str = "busybox:1.36";

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

/// A policy for the workload: scrape it every second, judge one-minute windows from three
/// samples, report every 10 s, and ask for an HPA, a PDB and a NetworkPolicy.
fn policy_spec() -> CoherencePolicySpec {
    serde_json::from_value(json!({
        "selector": {"matchLabels": {"app": APP}},
        "sources": [{"name": "app", "prometheus": {
            "port": 9090, "path": "/metrics",
            "metrics": ["demo_requests_total", "demo_latency_ms"], "interval": "1s"}}],
        "windows": ["1m"],
        "drift": {"minSamples": 3},
        "pcs": {"alg": "hmac", "secretRef": {"name": "coherence-pcs", "key": "PCS_HMAC_KEY"},
                "epoch": "10s"},
        "verifier": {"endpoint": env_or(VERIFIER_ENV, VERIFIER_DEFAULT),
                     "clientCertSecretRef": {"name": "coherence-sidecar-client"}},
        "protect": {
            "hpa": {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80},
            "pdb": {"minAvailable": 1},
            "networkPolicy": {"allowVerifierEgress": true},
        },
        "veto": {"mode": "shadow"},
    }))
    .unwrap()
}

/// A gate on the workload, priced per replica-hour, with the default thresholds.
fn gate_spec() -> FinOpsGateSpec {
    serde_json::from_value(json!({
        "targetRef": {"kind": "Deployment", "name": APP},
        "cost": {"costPerReplicaHourUsd": 0.02},
        "baseline": {"window": "1h"},
    }))
    .unwrap()
}

fn deployment(ns: &str) -> Deployment {
    // A counter and a latency that change every second, served as a Prometheus text file.
    let script = r#"mkdir -p /www; i=0
while true; do i=$((i+1))
  printf 'demo_requests_total %d\ndemo_latency_ms %d\n' $((i*10)) $((50 + i % 7)) > /www/m.tmp
  mv /www/m.tmp /www/metrics; sleep 1
done & exec httpd -f -p 127.0.0.1:9090 -h /www"#;
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": APP, "namespace": ns, "labels": {"app": APP}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": env_or(APP_IMAGE_ENV, APP_IMAGE_DEFAULT),
                    "command": ["sh", "-c", script],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                  "limits": {"memory": "64Mi"}},
                }]},
            },
        },
    }))
    .unwrap()
}

async fn apply<K>(api: &Api<K>, obj: &K) -> K
where
    K: Resource + Clone + Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}

/// Copies the PCS signing key the installed verifier verifies with (`PCS_SECRET_ENV`, default
/// `coherence/coherence-pcs`; a fresh random key when there is none, so records are refused
/// with 401 and signals stay unknown), and the verifier client certificate when the harness
/// provides one; returns whether it did (without it the sidecars cannot report).
async fn secrets(client: &Client, ns: &str) -> bool {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let key_source = env_or(PCS_SECRET_ENV, PCS_SECRET_DEFAULT);
    let Some((key_ns, key_name)) = key_source.split_once('/') else {
        panic!("{PCS_SECRET_ENV}={key_source}: expected namespace/name");
    };
    let installed = Api::<Secret>::namespaced(client.clone(), key_ns)
        .get_opt(key_name)
        .await
        .unwrap_or_else(|e| panic!("reading Secret {key_source}: {e}"));
    let pcs = match installed {
        Some(s) => Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("coherence-pcs".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: s.data,
            ..Default::default()
        },
        None => {
            eprintln!(
                "e2e: no Secret {key_source} ({PCS_SECRET_ENV}): a random PCS key is used, so \
                 the verifier refuses the sidecars' records"
            );
            serde_json::from_value(json!({
                "metadata": {"name": "coherence-pcs", "namespace": ns},
                "stringData": {"PCS_HMAC_KEY": random_suffix(48)},
            }))
            .unwrap()
        }
    };
    api.create(&PostParams::default(), &pcs).await.unwrap();

    let source = env_or(CLIENT_CERT_ENV, CLIENT_CERT_DEFAULT);
    let Some((src_ns, src_name)) = source.split_once('/') else {
        panic!("{CLIENT_CERT_ENV}={source}: expected namespace/name");
    };
    let from: Api<Secret> = Api::namespaced(client.clone(), src_ns);
    match from.get_opt(src_name).await {
        Ok(Some(s)) => {
            let copy = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("coherence-sidecar-client".into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                data: s.data,
                type_: s.type_,
                ..Default::default()
            };
            api.create(&PostParams::default(), &copy).await.unwrap();
            true
        }
        Ok(None) => {
            eprintln!(
                "e2e: no Secret {source} ({CLIENT_CERT_ENV}): the sidecars cannot report, so \
                 Ready is only expected to await signals"
            );
            false
        }
        Err(e) => {
            eprintln!(
                "e2e: Secret {source} unreadable ({e}); Ready is only expected to await signals"
            );
            false
        }
    }
}

/// The injected native sidecar of `pod`, if any: an init container named
/// `coherence-sidecar` with `restartPolicy: Always`.
fn native_sidecar(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.name == CONTAINER_NAME && c.restart_policy.as_deref() == Some("Always"))
        })
}

fn containers(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let names = |cs: Option<Vec<String>>| cs.unwrap_or_default().join(",");
    format!(
        "{}: init [{}] main [{}]",
        pod.name_any(),
        names(spec.and_then(|s| s.init_containers.as_ref()).map(|cs| {
            cs.iter()
                .map(|c| format!("{}({:?})", c.name, c.restart_policy))
                .collect()
        })),
        names(spec.map(|s| s.containers.iter().map(|c| c.name.clone()).collect())),
    )
}

/// The objects of a kind the policy with `uid` controls, by the policy label.
async fn owned<K>(client: &Client, ns: &str, policy: &str, uid: &str) -> Result<Vec<K>, String>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let items = api
        .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={policy}")))
        .await
        .map_err(|e| e.to_string())?
        .items;
    Ok(items
        .into_iter()
        .filter(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
        .collect())
}

/// The PrometheusRule API when the cluster serves it.
async fn prometheus_rules(client: &Client, ns: &str) -> Option<Api<DynamicObject>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get_opt(coherence_operator::alerts::CRD_NAME)
        .await
        .ok()??;
    let established = kube::runtime::wait::Condition::matches_object(
        &conditions::is_crd_established(),
        Some(&crd),
    );
    established.then(|| {
        Api::namespaced_with(
            client.clone(),
            ns,
            &coherence_operator::alerts::api_resource(),
        )
    })
}

#[tokio::test]
async fn a_policy_injects_protects_reports_and_cleans_up() {
    let Some(client) = cluster().await else {
        return;
    };
    let c = client.clone();
    with_temp_ns(&client, move |ns| policy_flow(c, ns)).await;
}

async fn policy_flow(client: Client, ns: String) {
    let can_report = secrets(&client, &ns).await;
    let policies: Api<CoherencePolicy> = Api::namespaced(client.clone(), &ns);
    let mut policy = CoherencePolicy::new(APP, policy_spec());
    policy.metadata.namespace = Some(ns.clone());
    apply(&policies, &policy).await;

    // Reconciled once (no pods yet): the operator, and through the same watch latency the
    // webhook, know the policy before the pods are created.
    let seen = await_condition(
        &policies,
        APP,
        Duration::from_secs(60),
        |p: Option<&CoherencePolicy>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| find_condition(&s.conditions, "Ready").is_some())
        },
    )
    .await
    .unwrap();
    let uid = seen.uid().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    apply(&deployments, &deployment(&ns)).await;

    // Pods come up with the native sidecar.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = format!("app={APP}");
    poll(
        "pods with the native sidecar",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?
                .items;
            if !list.is_empty() && list.iter().all(native_sidecar) {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    list.iter().map(containers).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;

    // Status: every pod injected; Ready once the verifier has judged the signals.
    let ready_timeout = Duration::from_secs(if can_report { 240 } else { 90 });
    let p = await_condition(
        &policies,
        APP,
        ready_timeout,
        move |p: Option<&CoherencePolicy>| {
            let Some(s) = p.and_then(|p| p.status.as_ref()) else {
                return false;
            };
            let ready = find_condition(&s.conditions, "Ready");
            has_condition(&s.conditions, "SidecarsInjected", "True")
                && s.observed_generation == p.and_then(|p| p.metadata.generation)
                && ready.is_some_and(|r| {
                    r.status == "True" || (!can_report && r.reason == "AwaitingSignals")
                })
        },
    )
    .await
    .unwrap();
    let s = p.status.as_ref().unwrap();
    assert!(
        s.matched_pods >= 1 && s.injected_pods == s.matched_pods,
        "{s:?}"
    );

    // Protection objects exist, one each, controlled by the policy.
    let hpas: Vec<HorizontalPodAutoscaler> = owned(&client, &ns, APP, &uid).await.unwrap();
    let pdbs: Vec<PodDisruptionBudget> = owned(&client, &ns, APP, &uid).await.unwrap();
    let nps: Vec<NetworkPolicy> = owned(&client, &ns, APP, &uid).await.unwrap();
    assert_eq!(hpas.len(), 1, "HPA of {APP}");
    assert_eq!(pdbs.len(), 1, "PDB of {APP}");
    assert_eq!(nps.len(), 1, "NetworkPolicy of {APP}");
    let hpa_target = &hpas[0].spec.as_ref().unwrap().scale_target_ref;
    assert_eq!(
        (hpa_target.kind.as_str(), hpa_target.name.as_str()),
        ("Deployment", APP)
    );
    let rules = prometheus_rules(&client, &ns).await;
    if let Some(rules) = &rules {
        let rule = rules
            .get(&coherence_operator::alerts::policy_rule_name(APP))
            .await
            .unwrap();
        assert!(rule.owner_references().iter().any(|r| r.uid == uid));
    }

    // Deleting the policy: the finalizer's cleanup removes everything it created.
    policies
        .delete(APP, &DeleteParams::default())
        .await
        .unwrap();
    await_condition(
        &policies,
        APP,
        Duration::from_secs(60),
        conditions::is_deleted(&uid),
    )
    .await;
    poll("owned objects deleted", Duration::from_secs(30), || async {
        let left = (
            owned::<HorizontalPodAutoscaler>(&client, &ns, APP, &uid)
                .await?
                .len(),
            owned::<PodDisruptionBudget>(&client, &ns, APP, &uid)
                .await?
                .len(),
            owned::<NetworkPolicy>(&client, &ns, APP, &uid).await?.len(),
            owned::<ConfigMap>(&client, &ns, APP, &uid).await?.len(),
        );
        let rule = match &rules {
            Some(api) => api
                .get_opt(&coherence_operator::alerts::policy_rule_name(APP))
                .await
                .map_err(|e| e.to_string())?
                .is_some(),
            None => false,
        };
        if left == (0, 0, 0, 0) && !rule {
            Ok(())
        } else {
            Err(format!(
                "(hpa, pdb, np, configmap) left: {left:?}, rule left: {rule}"
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn a_finops_gate_gets_a_grade() {
    let Some(client) = cluster().await else {
        return;
    };
    let c = client.clone();
    with_temp_ns(&client, move |ns| gate_flow(c, ns)).await;
}

async fn gate_flow(client: Client, ns: String) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    apply(&deployments, &deployment(&ns)).await;
    let mut gate = FinOpsGate::new(APP, gate_spec());
    gate.metadata.namespace = Some(ns.clone());
    let gates: Api<FinOpsGate> = Api::namespaced(client.clone(), &ns);
    apply(&gates, &gate).await;

    // Without samples the grade is UNKNOWN: still a grade, and Ready is there to say why.
    let g = await_condition(
        &gates,
        APP,
        Duration::from_secs(60),
        |g: Option<&FinOpsGate>| {
            g.and_then(|g| g.status.as_ref()).is_some_and(|s| {
                s.grade.is_some() && find_condition(&s.conditions, "Ready").is_some()
            })
        },
    )
    .await
    .unwrap();
    let s = g.status.as_ref().unwrap();
    assert!(
        ["OK", "WARN", "FAIL", "UNKNOWN"].contains(&s.grade.as_deref().unwrap()),
        "{s:?}"
    );
    assert!(find_condition(&s.conditions, "Passed").is_some(), "{s:?}");
    if let Some(rules) = prometheus_rules(&client, &ns).await {
        let name = coherence_operator::alerts::gate_rule_name(APP);
        let rule = rules.get(&name).await.unwrap();
        assert!(
            rule.owner_references()
                .iter()
                .any(|r| Some(&r.uid) == g.uid().as_ref())
        );
    }
    let uid = g.uid().unwrap();
    gates.delete(APP, &DeleteParams::default()).await.unwrap();
    await_condition(
        &gates,
        APP,
        Duration::from_secs(60),
        conditions::is_deleted(&uid),
    )
    .await;
}

/// Runs without a cluster: the objects the tests apply are ones the operator accepts.
#[test]
fn the_test_objects_are_valid() {
    coherence_operator::render::validate(&policy_spec()).unwrap();
    assert_eq!(gate_spec().target_ref.name, APP);
    let d = deployment("ns");
    let labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels.get("app").map(String::as_str), Some(APP));
}
