//! The webhook with real `admission.k8s.io/v1` AdmissionReviews (`tests/data/`): the returned
//! JSON Patch is applied to the request's pod, which must stay a complete Pod; a second review
//! of the patched pod yields no patch. Also the TLS listener, the generated serving
//! certificate and the MutatingWebhookConfiguration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use coherence_operator::crd::CoherencePolicy;
use coherence_operator::inject::{CONTAINER_NAME, InjectOptions};
use coherence_operator::webhook::{self, PolicySource, SharedPolicies};
use http_body_util::BodyExt as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt as _;

fn data(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn policies() -> SharedPolicies {
    let p: CoherencePolicy = serde_json::from_value(data("policy-web.json")).unwrap();
    SharedPolicies::new(vec![p])
}

fn app() -> axum::Router {
    webhook::router(Arc::new(policies()), InjectOptions::default())
}

async fn post(app: axum::Router, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

/// Sends `review`; returns the response object of the answer.
async fn review(review: &Value) -> Value {
    let (status, body) = post(app(), serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let r = answer["response"].clone();
    assert_eq!(r["uid"], review["request"]["uid"], "the uid is echoed");
    assert_eq!(r["allowed"], true, "injection never denies: {r}");
    r
}

fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let b64 = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// Applies the answer's patch to the request's pod; checks it is still a complete Pod.
fn patched(review: &Value, response: &Value) -> Value {
    let patch = patch_of(response).unwrap_or_else(|| panic!("expected a patch: {response}"));
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    // Strict: the patched object is a Pod, and nothing in it is lost on a round trip.
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(strip_nulls(back), strip_nulls(pod.clone()), "round trip");
    pod
}

/// `null` members and empty `status` are what serde leaves out; they carry nothing.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .filter(|(k, v)| !(k == "status" && v == &json!({})))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

#[tokio::test]
async fn a_deployment_pod_gets_the_native_sidecar_and_keeps_everything_else() {
    let req = data("review-deployment-pod.json");
    let resp = review(&req).await;
    let pod = patched(&req, &resp);
    let original = &req["request"]["object"];

    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, [CONTAINER_NAME, "migrate"]);
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    let env: Vec<(&str, &Value)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, e)| *e).unwrap();
    assert_eq!(get("WORKLOAD_NAME")["value"], "web");
    assert_eq!(get("POD_CPU_REQUEST")["value"], "0.25");
    assert_eq!(
        get("COHERENCE_AES_KEY")["valueFrom"]["secretKeyRef"]["name"],
        "aes"
    );
    let vols: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        vols,
        [
            "app-logs",
            "kube-api-access-x7k2p",
            "coherence-config",
            "coherence-tls",
            "coherence-outbox",
            "coherence-token-2"
        ]
    );
    let tls = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "coherence-tls")
        .unwrap();
    assert_eq!(
        tls["projected"]["sources"][0]["secret"]["name"],
        "coherence-sidecar-client"
    );
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["coherence.dev/injected"], "web");
    assert_eq!(
        ann["prometheus.io/scrape"], "true",
        "existing annotations stay"
    );
    assert!(ann["coherence.dev/config-hash"].as_str().unwrap().len() == 64);
    // Only the sidecar, its volumes and two annotations changed.
    assert_eq!(pod["spec"]["containers"], original["spec"]["containers"]);
    assert_eq!(pod["metadata"]["labels"], original["metadata"]["labels"]);
    assert_eq!(pod["spec"]["tolerations"], original["spec"]["tolerations"]);
    assert!(resp.get("warnings").is_none());

    // The API server re-invokes with the patched pod: no second sidecar.
    let mut again = req.clone();
    again["request"]["object"] = pod;
    let resp2 = review(&again).await;
    assert!(patch_of(&resp2).is_none(), "{resp2}");
}

#[tokio::test]
async fn a_bare_pod_without_volumes_or_annotations() {
    let req = data("review-bare-pod.json");
    let resp = review(&req).await;
    let pod = patched(&req, &resp);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], CONTAINER_NAME);
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 4);
    let env = pod["spec"]["initContainers"][0]["env"].as_array().unwrap();
    let wl = env.iter().find(|e| e["name"] == "WORKLOAD_NAME").unwrap();
    assert_eq!(wl["value"], "probe", "app.kubernetes.io/name comes first");
    // No memory request on the main container: POD_MEMORY_REQUEST is left out.
    assert!(!env.iter().any(|e| e["name"] == "POD_MEMORY_REQUEST"));
    assert_eq!(
        pod["metadata"]["annotations"]["coherence.dev/injected"],
        "web"
    );
}

#[tokio::test]
async fn opted_out_and_unselected_pods_are_admitted_unchanged() {
    for f in ["review-opt-out.json", "review-unselected.json"] {
        let resp = review(&data(f)).await;
        assert!(patch_of(&resp).is_none(), "{f}: {resp}");
        assert!(resp.get("patchType").is_none(), "{f}");
    }
}

#[tokio::test]
async fn plain_containers_when_native_sidecars_are_off() {
    let app = webhook::router(
        Arc::new(policies()),
        InjectOptions {
            native_sidecars: false,
            ..InjectOptions::default()
        },
    );
    let req = data("review-deployment-pod.json");
    let (status, body) = post(app, serde_json::to_vec(&req).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let pod = patched(&req, &answer["response"]);
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", CONTAINER_NAME]);
    assert_eq!(pod["spec"]["initContainers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn several_policies_the_oldest_is_used_with_a_warning() {
    let mut newer: Value = data("policy-web.json");
    newer["metadata"]["name"] = json!("web-too");
    newer["metadata"]["creationTimestamp"] = json!("2026-02-01T00:00:00Z");
    let src = policies();
    src.upsert(serde_json::from_value(newer).unwrap());
    assert_eq!(src.policies_in("demo").len(), 2);
    assert_eq!(src.policies_in("other").len(), 0);
    let app = webhook::router(Arc::new(src), InjectOptions::default());
    let (_, body) = post(
        app,
        serde_json::to_vec(&data("review-deployment-pod.json")).unwrap(),
    )
    .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let r = &answer["response"];
    assert_eq!(
        r["warnings"],
        json!(["policies web-too also select this pod; web (the oldest) was used"])
    );
}

/// `run`'s source: the watched store of packed policies. A review unpacks only the policies
/// of the pod's namespace whose selector matches the pod, and injects as with any source.
#[tokio::test]
async fn the_watched_store_serves_the_policies_selecting_the_pod() {
    use coherence_operator::packed::PackedPolicy;
    use kube::runtime::{reflector, watcher};
    let mut writer = reflector::store::Writer::<PackedPolicy>::default();
    let mut object = |v: Value| {
        let p: PackedPolicy = serde_json::from_value(v).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    };
    let web = data("policy-web.json");
    object(web.clone());
    let mut api = web.clone();
    api["metadata"]["name"] = json!("api");
    api["spec"]["selector"] = json!({"matchLabels": {"app": "api"}});
    object(api);
    let mut elsewhere = web.clone();
    elsewhere["metadata"]["namespace"] = json!("other");
    object(elsewhere);
    let mut broken = web.clone();
    broken["metadata"]["name"] = json!("broken");
    broken["spec"] = json!({"selector": 7});
    object(broken);
    let src = webhook::StorePolicies(writer.as_reader());

    let names = |ps: Vec<CoherencePolicy>| -> Vec<String> {
        let mut n: Vec<_> = ps.into_iter().map(|p| p.metadata.name.unwrap()).collect();
        n.sort();
        n
    };
    let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(names(src.policies_in("demo")), ["api", "web"]);
    assert_eq!(names(src.policies_in("other")), ["web"]);
    assert_eq!(
        names(src.policies_for("demo", &labels(&[("app", "web"), ("tier", "api")]))),
        ["web"]
    );
    assert!(
        src.policies_for("demo", &labels(&[("app", "web"), ("tier", "batch")]))
            .is_empty()
    );
    assert_eq!(
        names(src.policies_for("demo", &labels(&[("app", "api")]))),
        ["api"]
    );
    // The unpacked policy is the watched one.
    let unpacked = src.policies_for("demo", &labels(&[("app", "web")]));
    let want: CoherencePolicy = serde_json::from_value(web).unwrap();
    assert_eq!(unpacked[0].spec, want.spec);

    let app = webhook::router(Arc::new(src), InjectOptions::default());
    let review = data("review-deployment-pod.json");
    let (status, body) = post(app, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let pod = patched(&review, &answer["response"]);
    let containers = pod["spec"]["initContainers"].as_array().unwrap();
    assert!(
        containers.iter().any(|c| c["name"] == CONTAINER_NAME),
        "{pod}"
    );
}

#[tokio::test]
async fn an_invalid_policy_admits_the_pod_with_a_warning() {
    let mut bad: Value = data("policy-web.json");
    bad["spec"]["windows"] = json!(["60m", "1h"]);
    let app = webhook::router(
        Arc::new(SharedPolicies::new(vec![
            serde_json::from_value(bad).unwrap(),
        ])),
        InjectOptions::default(),
    );
    let (status, body) = post(
        app,
        serde_json::to_vec(&data("review-deployment-pod.json")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let r: Value = serde_json::from_slice::<Value>(&body).unwrap()["response"].clone();
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    let w = r["warnings"][0].as_str().unwrap();
    assert!(
        w.starts_with("coherence sidecar not injected: invalid spec: spec.windows[1]"),
        "{w}"
    );
}

#[tokio::test]
async fn malformed_reviews_are_400_with_the_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "expected an AdmissionReview"),
        (
            serde_json::to_vec(
                &json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                                        "request": data("review-bare-pod.json")["request"]}),
            )
            .unwrap(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            serde_json::to_vec(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            )
            .unwrap(),
            "expected request",
        ),
        (
            {
                let mut r = data("review-bare-pod.json");
                r["request"]["object"] =
                    json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "web"}});
                serde_json::to_vec(&r).unwrap()
            },
            "request.object: expected a Pod",
        ),
        (
            {
                let mut r = data("review-bare-pod.json");
                r["request"]["object"] = Value::Null;
                serde_json::to_vec(&r).unwrap()
            },
            "request.object: expected the Pod being created",
        ),
    ];
    for (body, want) in cases {
        let (status, text) = post(app(), body).await;
        let text = String::from_utf8(text).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(want), "{text}");
    }
}

#[tokio::test]
async fn other_kinds_and_operations_pass() {
    let mut update = data("review-deployment-pod.json");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let mut cm = data("review-bare-pod.json");
    cm["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    cm["request"]["object"] =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    for r in [update, cm] {
        let resp = review(&r).await;
        assert!(patch_of(&resp).is_none(), "{resp}");
    }
}

#[test]
fn the_webhook_configuration() {
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let cfg = webhook::mutating_webhook_configuration(&webhook::WebhookConfigOptions {
        ca_bundle: Some(ca.into()),
        ..webhook::WebhookConfigOptions::default()
    });
    let v = serde_json::to_value(&cfg).unwrap();
    // It is an admissionregistration.k8s.io/v1 object.
    let _: MutatingWebhookConfiguration = serde_json::from_value(v.clone()).unwrap();
    let w = &v["webhooks"][0];
    assert_eq!(w["name"], "sidecar-injector.coherence.dev");
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(
        w["objectSelector"],
        json!({"matchExpressions": [{"key": "coherence.dev/inject", "operator": "NotIn", "values": ["false"]}]})
    );
    assert_eq!(
        w["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", "kube-public", "kube-node-lease", "coherence"])
    );
    assert_eq!(
        w["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        w["clientConfig"]["service"],
        json!({"name": "coherence-operator-webhook", "namespace": "coherence", "path": "/mutate", "port": 443})
    );
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(w["clientConfig"]["caBundle"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, ca.as_bytes());

    let fail = webhook::mutating_webhook_configuration(&webhook::WebhookConfigOptions {
        failure_policy: "Fail".into(),
        ..webhook::WebhookConfigOptions::default()
    });
    let w = &fail.webhooks.unwrap()[0];
    assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
    assert!(w.client_config.ca_bundle.is_none());

    // The caBundle patch, merged the way a strategic merge patch on `webhooks` (key `name`) does.
    let patch = webhook::ca_bundle_patch(webhook::CONFIGURATION_NAME, ca);
    assert_eq!(patch["metadata"]["name"], webhook::CONFIGURATION_NAME);
    assert_eq!(patch["webhooks"][0]["name"], webhook::WEBHOOK_NAME);
    assert_eq!(
        patch["webhooks"][0]["clientConfig"]["caBundle"],
        v["webhooks"][0]["clientConfig"]["caBundle"]
    );
}

#[tokio::test]
async fn served_over_tls_with_a_generated_certificate() {
    let cert = webhook::generate_serving_cert("coherence-operator-webhook", "coherence").unwrap();
    let tls = webhook::server_config(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(webhook::serve(
        listener,
        tls,
        app(),
        async move {
            let _ = stop_rx.await;
        },
        std::time::Duration::from_secs(2),
    ));

    let host = "coherence-operator-webhook.coherence.svc";
    let client = client_for(&cert.ca_pem, host, addr);
    let req = data("review-deployment-pod.json");
    let resp = client
        .post(format!("https://{host}:{}/mutate", addr.port()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&req).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let pod = patched(&req, &answer["response"]);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], CONTAINER_NAME);

    // A name the certificate does not carry is refused by the client.
    let wrong = client_for(&cert.ca_pem, "elsewhere.example", addr);
    assert!(
        wrong
            .post(format!("https://elsewhere.example:{}/mutate", addr.port()))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&req).unwrap())
            .send()
            .await
            .is_err()
    );

    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn serving_cert_names_and_bad_pem() {
    assert_eq!(
        webhook::service_dns_names("svc", "ns"),
        ["svc", "svc.ns", "svc.ns.svc", "svc.ns.svc.cluster.local"]
    );
    let e = webhook::server_config(b"nothing", b"nothing").unwrap_err();
    assert!(e.to_string().starts_with("tls.crt:"), "{e}");
    let cert = webhook::generate_serving_cert("a", "b").unwrap();
    let other = webhook::generate_serving_cert("a", "b").unwrap();
    let e = webhook::server_config(cert.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected the key of the certificate"),
        "{e}"
    );
}

/// A client trusting only `ca_pem`, reaching `host` at `addr`.
fn client_for(ca_pem: &str, host: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(host, addr)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = webhook::generate_serving_cert("hook", "coherence").unwrap();
    std::fs::write(&crt, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let certs = webhook::ReloadingCert::new(&crt, &key, std::time::Duration::ZERO).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(webhook::serve(
        listener,
        certs.server_config().unwrap(),
        app(),
        async move {
            let _ = stop_rx.await;
        },
        std::time::Duration::from_secs(2),
    ));
    let host = "hook.coherence.svc";
    let url = format!("https://{host}:{}/mutate", addr.port());
    let body = serde_json::to_vec(&data("review-bare-pod.json")).unwrap();
    let send = |ca: &str| {
        client_for(ca, host, addr)
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    assert_eq!(send(&first.ca_pem).await.unwrap().status(), 200);

    // Renewed in place (another CA, as a regenerated one would be).
    let second = webhook::generate_serving_cert("hook", "coherence").unwrap();
    std::fs::write(&crt, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    assert_eq!(send(&second.ca_pem).await.unwrap().status(), 200);
    assert!(
        send(&first.ca_pem).await.is_err(),
        "the old certificate is gone"
    );

    // A half-written renewal keeps the current pair.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    assert!(certs.reload().is_err());
    assert_eq!(send(&second.ca_pem).await.unwrap().status(), 200);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
