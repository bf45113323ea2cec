//! Reconciles 2,000 CoherencePolicies against the in-process fake API server and prints the
//! time per reconcile and the process's resident set.
//!
//! Setup (`FakeApi::seed`): 50 namespaces × 40 policies; each policy selects its own
//! Deployment with two pods (one injected); every policy asks for an HPA, a PDB and a
//! NetworkPolicy; half the workloads have verifier data. Three sequential passes, timed separately: (1) adds the finalizer,
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
use coherence_operator::fake::{FakeApi, POLICIES_PER_NAMESPACE, Population};
use coherence_operator::metrics::Metrics;
use coherence_operator::verifier::{PodSummary, WorkloadSummary};
use kube::api::Api;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Half the workloads have verifier data (their first pod reported).
fn verifier_data(verifier: &StaticVerifier, names: &[(String, String)]) {
    for (ns, name) in names.iter().step_by(2) {
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
        let names = fake.seed(Population {
            policies: n,
            ..Population::default()
        });
        verifier_data(&verifier, &names);
        let mut ctx = Context::new(fake.client(), verifier, Arc::new(Metrics::default()), None);
        ctx.clock = Some(k8s_openapi::jiff::Timestamp::now());
        let ctx = Arc::new(ctx);
        println!(
            "reconcile bench: {n} policies in {} namespaces, {} objects in the fake API",
            n.div_ceil(POLICIES_PER_NAMESPACE),
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
