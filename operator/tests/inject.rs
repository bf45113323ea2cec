//! The pure injection step with plain values: what the patch adds, where, and when a pod is
//! left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::crd::CoherencePolicy;
use coherence_operator::inject::{
    self, CONTAINER_NAME, INJECTED_ANNOTATION, InjectOptions, Outcome, Skip,
};
use coherence_operator::render;
use coherence_sidecar::config::{Config, env as sidecar_env};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn policy(name: &str, created: &str, spec: Value) -> CoherencePolicy {
    serde_json::from_value(json!({
        "apiVersion": "coherence.dev/v1alpha1",
        "kind": "CoherencePolicy",
        "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "creationTimestamp": created},
        "spec": spec,
    }))
    .unwrap()
}

fn spec(selector: Value) -> Value {
    json!({
        "selector": selector,
        "sources": [
            {"name": "app", "prometheus": {"port": 9090, "metrics": ["http_requests_total"]}},
            {"name": "log", "jsonl": {"path": "/var/log/app/t.jsonl", "aesKeySecretRef": {"name": "aes", "key": "key"}}},
            {"name": "summary", "http": {"url": "http://127.0.0.1:8080/s", "tokenSecretRef": {"name": "tok", "key": "token"}}}
        ],
        "pcs": {"alg": "hmac", "secretRef": {"name": "coherence-pcs", "key": "PCS_HMAC_KEY"}},
        "finops": {"qpsSignal": "http_requests_total", "latencySignal": "latency_p95_ms", "cpuHourUsd": 0.04, "memoryGibHourUsd": 0.005}
    })
}

fn web_policy() -> CoherencePolicy {
    policy(
        "web",
        "2026-01-10T08:00:00Z",
        spec(json!({"matchLabels": {"app": "web"}})),
    )
}

fn pod_json() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8b6c5-",
            "namespace": "demo",
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5",
                                 "uid": "u1", "controller": true}]
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "web:1",
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}
            }]
        }
    })
}

fn pod(v: &Value) -> Pod {
    serde_json::from_value(v.clone()).unwrap()
}

/// Injects and applies the patch; returns the patched pod JSON.
fn injected(v: &Value, policies: &[CoherencePolicy], opts: &InjectOptions) -> Value {
    let out = inject::inject(&pod(v), policies, opts).unwrap();
    let Outcome::Injected(i) = out else {
        panic!("expected an injection, got {out:?}")
    };
    let mut doc = v.clone();
    json_patch::patch(&mut doc, &i.patch).unwrap();
    doc
}

fn sidecar(p: &Pod) -> Container {
    let s = p.spec.as_ref().unwrap();
    s.init_containers
        .iter()
        .flatten()
        .chain(&s.containers)
        .find(|c| c.name == CONTAINER_NAME)
        .cloned()
        .expect("the sidecar")
}

fn env_of(c: &Container) -> BTreeMap<String, Value> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => json!(v),
                (None, Some(f)) => serde_json::to_value(f).unwrap(),
                _ => Value::Null,
            };
            (e.name.clone(), v)
        })
        .collect()
}

#[test]
fn native_sidecar_is_the_first_init_container() {
    let mut v = pod_json();
    v["spec"]["initContainers"] = json!([{"name": "migrate", "image": "web:1"}]);
    let p = pod(&injected(&v, &[web_policy()], &InjectOptions::default()));
    let s = p.spec.unwrap();
    let init: Vec<&str> = s
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, [CONTAINER_NAME, "migrate"]);
    let c = &s.init_containers.unwrap()[0];
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        c.image.as_deref(),
        Some(
            format!(
                "ghcr.io/coherence-dev/coherence-sidecar:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );
    assert_eq!(
        c.args.as_deref().unwrap(),
        ["run", "--config", "/etc/coherence/config.yaml"]
    );
    assert_eq!(s.containers.len(), 1, "the app's containers are untouched");
}

#[test]
fn without_native_sidecars_it_is_a_plain_container() {
    let opts = InjectOptions {
        image: "registry.local/sidecar:dev".into(),
        native_sidecars: false,
    };
    let p = pod(&injected(&pod_json(), &[web_policy()], &opts));
    let s = p.spec.unwrap();
    assert!(s.init_containers.is_none());
    let names: Vec<&str> = s.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", CONTAINER_NAME]);
    assert_eq!(s.containers[1].restart_policy, None);
    assert_eq!(
        s.containers[1].image.as_deref(),
        Some("registry.local/sidecar:dev")
    );
}

#[test]
fn injecting_twice_is_injecting_once() {
    for native in [true, false] {
        let opts = InjectOptions {
            native_sidecars: native,
            ..InjectOptions::default()
        };
        let once = injected(&pod_json(), &[web_policy()], &opts);
        let again = inject::inject(&pod(&once), &[web_policy()], &opts).unwrap();
        assert_eq!(again, Outcome::Skipped(Skip::AlreadyInjected));
        // The container alone (annotations stripped) is enough to recognise it.
        let mut bare = once.clone();
        bare["metadata"]["annotations"] = json!({});
        assert_eq!(
            inject::inject(&pod(&bare), &[web_policy()], &opts).unwrap(),
            Outcome::Skipped(Skip::AlreadyInjected)
        );
    }
}

#[test]
fn opt_out_by_annotation_or_label() {
    let mut a = pod_json();
    a["metadata"]["annotations"] = json!({"coherence.dev/inject": "false"});
    let mut l = pod_json();
    l["metadata"]["labels"]["coherence.dev/inject"] = json!("false");
    for v in [a, l] {
        assert_eq!(
            inject::inject(&pod(&v), &[web_policy()], &InjectOptions::default()).unwrap(),
            Outcome::Skipped(Skip::OptedOut)
        );
    }
    // Anything else is not an opt-out.
    let mut t = pod_json();
    t["metadata"]["annotations"] = json!({"coherence.dev/inject": "true"});
    assert!(matches!(
        inject::inject(&pod(&t), &[web_policy()], &InjectOptions::default()).unwrap(),
        Outcome::Injected(_)
    ));
}

#[test]
fn pods_no_policy_selects_are_left_alone() {
    let mut other = pod_json();
    other["metadata"]["labels"]["app"] = json!("api");
    let mut elsewhere = pod_json();
    elsewhere["metadata"]["namespace"] = json!("prod");
    for v in [other, elsewhere] {
        assert_eq!(
            inject::inject(&pod(&v), &[web_policy()], &InjectOptions::default()).unwrap(),
            Outcome::Skipped(Skip::NoPolicy)
        );
    }
    assert_eq!(
        inject::inject(&pod(&pod_json()), &[], &InjectOptions::default()).unwrap(),
        Outcome::Skipped(Skip::NoPolicy)
    );
}

#[test]
fn selector_expressions_decide() {
    let p = policy(
        "canary-free",
        "2026-01-10T08:00:00Z",
        spec(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "track", "operator": "NotIn", "values": ["canary"]},
                {"key": "pod-template-hash", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "app", "operator": "In", "values": ["web", "www"]}
            ]
        })),
    );
    let decide = |labels: Value| {
        let mut v = pod_json();
        v["metadata"]["labels"] = labels;
        inject::inject(
            &pod(&v),
            std::slice::from_ref(&p),
            &InjectOptions::default(),
        )
        .unwrap()
    };
    assert!(matches!(
        decide(json!({"app": "web", "pod-template-hash": "1"})),
        Outcome::Injected(_)
    ));
    assert!(matches!(
        decide(json!({"app": "web", "pod-template-hash": "1", "track": "stable"})),
        Outcome::Injected(_)
    ));
    for labels in [
        json!({"app": "web", "pod-template-hash": "1", "track": "canary"}),
        json!({"app": "web"}),
        json!({"app": "web", "pod-template-hash": "1", "legacy": "yes"}),
    ] {
        assert_eq!(decide(labels), Outcome::Skipped(Skip::NoPolicy));
    }
}

#[test]
fn the_oldest_selecting_policy_wins_and_says_so() {
    let newer = policy(
        "a-newer",
        "2026-03-01T00:00:00Z",
        spec(json!({"matchLabels": {"app": "web"}})),
    );
    let older = policy(
        "z-older",
        "2026-01-01T00:00:00Z",
        spec(json!({"matchLabels": {"app": "web"}})),
    );
    let same_age = policy(
        "b-same",
        "2026-01-01T00:00:00Z",
        spec(json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})),
    );
    let out = inject::inject(
        &pod(&pod_json()),
        &[newer, older, same_age],
        &InjectOptions::default(),
    )
    .unwrap();
    let Outcome::Injected(i) = out else { panic!() };
    assert_eq!(i.policy, "b-same", "same age: the name decides");
    assert_eq!(i.also_selected_by, ["z-older", "a-newer"]);
    assert_eq!(
        i.note().unwrap(),
        "policies z-older, a-newer also select this pod; b-same (the oldest) was used"
    );
}

#[test]
fn env_volumes_and_security_context() {
    let p = pod(&injected(
        &pod_json(),
        &[web_policy()],
        &InjectOptions::default(),
    ));
    let c = sidecar(&p);
    let env = env_of(&c);
    assert_eq!(
        env["POD_NAMESPACE"],
        json!({"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}})
    );
    assert_eq!(
        env["POD_NAME"],
        json!({"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}})
    );
    assert_eq!(env["WORKLOAD_NAME"], json!("web"));
    assert_eq!(env["PCS_SIGN_ALG"], json!("hmac"));
    assert_eq!(
        env["PCS_HMAC_KEY"],
        json!({"secretKeyRef": {"name": "coherence-pcs", "key": "PCS_HMAC_KEY", "optional": false}})
    );
    assert_eq!(
        env["COHERENCE_AES_KEY"],
        json!({"secretKeyRef": {"name": "aes", "key": "key", "optional": false}})
    );
    assert_eq!(env["POD_CPU_REQUEST"], json!("0.25"));
    assert_eq!(
        env["POD_MEMORY_REQUEST"],
        json!({"resourceFieldRef": {"containerName": "web", "resource": "requests.memory", "divisor": "1"}})
    );
    // Every variable is one the sidecar reads.
    let known = [
        sidecar_env::POD_NAMESPACE,
        sidecar_env::POD_NAME,
        sidecar_env::WORKLOAD_NAME,
        sidecar_env::SIGN_ALG,
        sidecar_env::POD_CPU_REQUEST,
        sidecar_env::POD_MEMORY_REQUEST,
        "PCS_HMAC_KEY",
        "PCS_ED25519_KEY_B64",
        coherence_sidecar::run::LINE_KEY_ENV,
    ];
    for k in env.keys() {
        assert!(
            known.contains(&k.as_str()),
            "{k} is not read by the sidecar"
        );
    }

    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    // The port of `api.metricsListen`, by the name the NetworkPolicy and the PodMonitor use.
    assert_eq!(
        serde_json::to_value(c.ports.as_ref().unwrap()).unwrap(),
        json!([{"name": "coh-metrics", "containerPort": 9104, "protocol": "TCP"}])
    );
    let r = serde_json::to_value(c.resources.as_ref().unwrap()).unwrap();
    assert_eq!(
        r,
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}})
    );

    // Mounts at the paths the rendered configuration names.
    let mounts: BTreeMap<String, String> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), m.name.clone()))
        .collect();
    let cfg_yaml = render::sidecar_config_yaml(&web_policy().spec).unwrap();
    let cfg = Config::from_yaml(&cfg_yaml).unwrap();
    let mounted = |path: &std::path::Path| {
        mounts
            .keys()
            .any(|m| path.starts_with(m) && path != std::path::Path::new(m))
    };
    for p in [
        cfg.verifier.ca.clone().unwrap(),
        cfg.verifier.cert.clone().unwrap(),
        cfg.verifier.key.clone().unwrap(),
        std::path::PathBuf::from(render::token_file("summary", "token")),
        std::path::PathBuf::from("/etc/coherence/config.yaml"),
    ] {
        assert!(mounted(&p), "{} is on no volume: {mounts:?}", p.display());
    }
    assert_eq!(
        mounts.get(render::OUTBOX_DIR).map(String::as_str),
        Some("coherence-outbox")
    );

    let vols: BTreeMap<String, Value> = p
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), serde_json::to_value(v).unwrap()))
        .collect();
    assert_eq!(
        vols["coherence-config"]["configMap"]["name"],
        "coherence-sidecar-web"
    );
    assert_eq!(vols["coherence-outbox"]["emptyDir"], json!({}));
    let tls = &vols["coherence-tls"]["projected"]["sources"][0]["secret"];
    assert_eq!(
        tls["name"], "coherence-sidecar-tls",
        "the documented default"
    );
    let keys: Vec<&str> = tls["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(vols["coherence-token-2"]["secret"]["secretName"], "tok");

    let ann = p.metadata.annotations.unwrap();
    assert_eq!(ann[INJECTED_ANNOTATION], "web");
    assert_eq!(
        ann["coherence.dev/config-hash"],
        render::config_hash(&cfg_yaml)
    );
}

#[test]
fn ed25519_ca_secret_and_replica_prices() {
    let mut s = spec(json!({"matchLabels": {"app": "web"}}));
    s["pcs"] = json!({"alg": "ed25519", "secretRef": {"name": "pcs", "key": "ed"}});
    s["verifier"] =
        json!({"clientCertSecretRef": {"name": "client"}, "caSecretRef": {"name": "ca"}});
    s["finops"] = json!({"qpsSignal": "q", "latencySignal": "l", "costPerReplicaHourUsd": 0.02});
    let p = pod(&injected(
        &pod_json(),
        &[policy("web", "2026-01-10T08:00:00Z", s)],
        &InjectOptions::default(),
    ));
    let env = env_of(&sidecar(&p));
    assert_eq!(env["PCS_SIGN_ALG"], json!("ed25519"));
    assert!(env.contains_key("PCS_ED25519_KEY_B64") && !env.contains_key("PCS_HMAC_KEY"));
    assert!(
        !env.contains_key("POD_CPU_REQUEST") && !env.contains_key("POD_MEMORY_REQUEST"),
        "priced per replica: no requests needed"
    );
    let v = serde_json::to_value(p.spec.unwrap().volumes.unwrap()).unwrap();
    let tls = v
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "coherence-tls")
        .unwrap();
    assert_eq!(
        tls["projected"]["sources"],
        json!([
            {"secret": {"name": "client", "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}], "optional": false}},
            {"secret": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}], "optional": false}}
        ])
    );
}

#[test]
fn requests_the_main_container_does_not_set_are_left_out() {
    let mut v = pod_json();
    v["spec"]["containers"] = json!([
        {"name": "proxy", "image": "proxy:1", "resources": {"requests": {"cpu": "50m"}}},
        {"name": "web", "image": "web:1", "resources": {"requests": {"memory": "1Gi"}}}
    ]);
    v["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/default-container": "web"});
    let env = env_of(&sidecar(&pod(&injected(
        &v,
        &[web_policy()],
        &InjectOptions::default(),
    ))));
    assert!(!env.contains_key("POD_CPU_REQUEST"));
    assert_eq!(
        env["POD_MEMORY_REQUEST"]["resourceFieldRef"]["containerName"],
        "web"
    );
}

#[test]
fn existing_volumes_and_annotations_are_kept() {
    let mut v = pod_json();
    v["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    v["metadata"]["annotations"] = json!({"team": "edge"});
    let p = pod(&injected(&v, &[web_policy()], &InjectOptions::default()));
    let names: Vec<String> = p
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        names,
        [
            "data",
            "coherence-config",
            "coherence-tls",
            "coherence-outbox",
            "coherence-token-2"
        ]
    );
    let ann = p.metadata.annotations.unwrap();
    assert_eq!(ann["team"], "edge");
    assert_eq!(ann[INJECTED_ANNOTATION], "web");
}

#[test]
fn a_reserved_volume_name_is_an_error_naming_it() {
    let mut v = pod_json();
    v["spec"]["volumes"] =
        json!([{"name": "x", "emptyDir": {}}, {"name": "coherence-outbox", "emptyDir": {}}]);
    let e = inject::inject(&pod(&v), &[web_policy()], &InjectOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid spec: spec.volumes[1].name: \"coherence-outbox\" is reserved for the Coherence sidecar"
    );
}

#[test]
fn workload_name_resolution() {
    let meta = |v: Value| -> ObjectMeta { serde_json::from_value(v).unwrap() };
    let cases = [
        (
            json!({"labels": {"app.kubernetes.io/name": "shop", "app": "web"}}),
            Some("shop"),
        ),
        (json!({"labels": {"app": "web"}}), Some("web")),
        // A label that is no Kubernetes name is passed over.
        (
            json!({"labels": {"app.kubernetes.io/name": "Web_Shop", "app": "web"}}),
            Some("web"),
        ),
        // A Deployment's pod: the ReplicaSet's name less the pod-template-hash.
        (
            json!({"labels": {"pod-template-hash": "7d9f8b6c5"}, "generateName": "web-7d9f8b6c5-",
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5", "uid": "u", "controller": true}]}),
            Some("web"),
        ),
        (
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}],
                   "name": "db-0"}),
            Some("db"),
        ),
        (
            json!({"generateName": "web-7d9f8b6c5-", "labels": {"pod-template-hash": "7d9f8b6c5"}}),
            Some("web"),
        ),
        (json!({"name": "probe"}), Some("probe")),
        (json!({"labels": {"app": "UPPER"}}), None),
    ];
    for (m, want) in cases {
        assert_eq!(
            inject::workload_name(&meta(m.clone())).as_deref(),
            want,
            "{m}"
        );
    }
}

#[test]
fn the_rendered_config_and_the_injected_env_make_a_valid_sidecar() {
    // What the kubelet would resolve for the injected env, overlaid on the rendered file.
    let p = pod(&injected(
        &pod_json(),
        &[web_policy()],
        &InjectOptions::default(),
    ));
    let env = env_of(&sidecar(&p));
    let resolved = |k: &str| -> Option<String> {
        match k {
            "POD_NAMESPACE" => Some("demo".into()),
            "POD_NAME" => Some("web-7d9f8b6c5-abcde".into()),
            "POD_MEMORY_REQUEST" => Some("268435456".into()),
            _ => env.get(k).and_then(Value::as_str).map(str::to_string),
        }
    };
    let mut cfg =
        Config::from_yaml(&render::sidecar_config_yaml(&web_policy().spec).unwrap()).unwrap();
    cfg.overlay_env(&resolved).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.identity.shard_id(), "demo/web/web-7d9f8b6c5-abcde");
    let f = cfg.finops.unwrap();
    assert_eq!(f.cpu_request_cores, Some(0.25));
    assert_eq!(f.memory_request_gib, Some(0.25));
}
