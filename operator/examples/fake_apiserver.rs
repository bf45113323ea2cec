//! The fake API server of the tests, served over plain HTTP, seeded with a population of
//! CoherencePolicies and their workloads: the real `coherence-operator run` can be pointed at
//! it (through a kubeconfig) to measure the operator's own process (`bench/operator_rss.py`).
//!
//! ```text
//! cargo run --release -p coherence-operator --features fake --example fake_apiserver -- \
//!     --listen 127.0.0.1:0 --policies 2000
//! ```
//!
//! Prints `listening on http://ADDR` once it serves. Seeds: both CRDs (established), and per
//! policy `app-i` in namespace `ns-(i/40)` a Deployment whose pod template it selects and two
//! pods (one carrying the injection annotation).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::fake::FakeApi;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;

const PER_NAMESPACE: usize = 40;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn seed_crds(fake: &FakeApi) {
    for doc in [
        include_str!("../../crds/coherencepolicy.yaml"),
        include_str!("../../crds/finopsgate.yaml"),
    ] {
        let mut crd: Value = serde_yaml_ng::from_str(doc).expect("a CRD in crds/");
        crd["status"] = json!({"conditions": [
            {"type": "Established", "status": "True"},
            {"type": "NamesAccepted", "status": "True"},
        ]});
        fake.insert("customresourcedefinitions", &crd);
    }
}

fn seed(fake: &FakeApi, n: usize) {
    for i in 0..n {
        let ns = format!("ns-{}", i / PER_NAMESPACE);
        let name = format!("app-{i}");
        fake.insert(
            "deployments",
            &json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "app", "image": "app:1",
                            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}]}}},
            }),
        );
        for p in 0..2 {
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{name}-{p}"), "namespace": ns,
                    "labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            });
            if p == 0 {
                pod["metadata"]["annotations"] = json!({"coherence.dev/injected": name});
            }
            fake.insert("pods", &pod);
        }
        fake.insert(
            "coherencepolicies",
            &json!({
                "apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "selector": {"matchLabels": {"app": name}},
                    "sources": [{"name": "app", "prometheus": {"port": 9090, "path": "/metrics",
                        "metrics": ["http_requests_total", "latency_p95_ms"], "interval": "15s"}}],
                    "windows": ["5m", "1h"],
                    "pcs": {"alg": "hmac", "secretRef": {"name": "coherence-pcs", "key": "PCS_HMAC_KEY"}, "epoch": "60s"},
                    "protect": {
                        "hpa": {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70},
                        "pdb": {"minAvailable": 1},
                        "networkPolicy": {"allowVerifierEgress": true},
                    },
                    "veto": {"mode": "enforce"},
                },
            }),
        );
    }
}

#[tokio::main]
async fn main() {
    let listen = arg("--listen", "127.0.0.1:0");
    let n: usize = arg("--policies", "2000")
        .parse()
        .expect("--policies: a count");
    let fake = FakeApi::new();
    seed_crds(&fake);
    seed(&fake, n);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("--listen");
    println!("listening on http://{}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let fake = fake.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let fake = fake.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(fake.serve(&parts, &bytes))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
