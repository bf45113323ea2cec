//! Reconciles 2,000 CoherencePolicies against the in-process fake API server and prints the
//! time per reconcile and the process's resident set.
//!
//! Setup: 50 namespaces × 40 policies; each policy selects its own Deployment with two pods
//! (one injected); every policy asks for an HPA, a PDB and a NetworkPolicy; half the workloads
//! have verifier data. Three sequential passes, timed separately: (1) adds the finalizer,
//! (2) creates the ConfigMap, HPA, PDB, NetworkPolicy and status, (3) a steady pass that finds
//! nothing to change. RSS is read from `/proc/self/status` (`VmRSS`, `VmHWM`); it includes the
//! fake API's store (every object as JSON) and the client, so it bounds the operator's own
//! share from above.
//!
//! `make bench-operator` (`cargo bench -p coherence-operator --features fake --bench reconcile`).
//! `COHERENCE_BENCH_POLICIES` changes the number of policies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::controller::verifier::StaticVerifier;
use coherence_operator::controller::{Context, policy};
use coherence_operator::crd::CoherencePolicy;
use coherence_operator::fake::FakeApi;
use coherence_operator::metrics::Metrics;
use coherence_operator::verifier::{PodSummary, WorkloadSummary};
use kube::api::Api;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PER_NAMESPACE: usize = 40;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn policy(ns: &str, name: &str) -> CoherencePolicy {
    serde_json::from_value(json!({
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
    }))
    .unwrap()
}

fn populate(fake: &FakeApi, verifier: &StaticVerifier, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
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
                        "spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
            }),
        );
        for p in 0..2 {
            fake.insert(
                "pods",
                &json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("{name}-{p}"), "namespace": ns,
                        "labels": {"app": name},
                        "annotations": {"coherence.dev/injected": if p == 0 { "true" } else { "false" }}},
                    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
                }),
            );
        }
        fake.insert("coherencepolicies", &policy(&ns, &name));
        if i % 2 == 0 {
            verifier.set(WorkloadSummary {
                namespace: ns.clone(),
                workload: name.clone(),
                drift_risk: "low".into(),
                updated_at: "2025-06-15T15:00:00Z".into(),
                pods: vec![PodSummary {
                    pod: format!("{name}-0"),
                    epoch: 1,
                    received_at: "2025-06-15T15:00:00Z".into(),
                }],
                ..WorkloadSummary::default()
            });
        }
        out.push((ns, name));
    }
    out
}

async fn pass(
    ctx: &Arc<Context>,
    fake: &FakeApi,
    names: &[(String, String)],
) -> (Duration, u64, usize) {
    let requests = fake.requests();
    fake.clear_writes();
    let start = Instant::now();
    for (ns, name) in names {
        let api: Api<CoherencePolicy> = Api::namespaced(ctx.client.clone(), ns);
        let p = api.get(name).await.unwrap();
        policy::reconcile(Arc::new(p), ctx.clone()).await.unwrap();
    }
    (
        start.elapsed(),
        fake.requests() - requests,
        fake.writes().len(),
    )
}

fn main() {
    let n: usize = std::env::var("COHERENCE_BENCH_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rss_start = rss_kib("VmRSS:");
    rt.block_on(async {
        let fake = FakeApi::new();
        let verifier = Arc::new(StaticVerifier::new());
        let names = populate(&fake, &verifier, n);
        let mut ctx = Context::new(fake.client(), verifier, Arc::new(Metrics::default()), None);
        ctx.clock = Some(k8s_openapi::jiff::Timestamp::now());
        let ctx = Arc::new(ctx);
        println!(
            "reconcile bench: {n} policies in {} namespaces, {} objects in the fake API",
            n.div_ceil(PER_NAMESPACE),
            fake.len()
        );
        for label in ["finalizer", "create", "steady"] {
            let (t, requests, writes) = pass(&ctx, &fake, &names).await;
            println!(
                "  {label:<9} {:>8.1} µs/reconcile  {:>5.1} requests/reconcile  {:>5} writes  ({:.2} s total)",
                t.as_secs_f64() * 1e6 / n as f64,
                requests as f64 / n as f64,
                writes,
                t.as_secs_f64()
            );
        }
        println!(
            "  objects after: {} ({} KiB as JSON, with the last applied configurations)",
            fake.len(),
            fake.stored_bytes() / 1024
        );
    });
    println!(
        "  RSS: {} KiB at start, {} KiB now, {} KiB peak (includes the fake API's store)",
        rss_start,
        rss_kib("VmRSS:"),
        rss_kib("VmHWM:")
    );
}
