//! The fake API server of the tests, served over plain HTTP, seeded with a population of
//! CoherencePolicies and their workloads: the real `coherence-operator run` can be pointed at
//! it (through a kubeconfig) to measure the operator's own process (`bench/operator_rss.py`).
//!
//! ```text
//! cargo run --release -p coherence-operator --features fake --example fake_apiserver -- \
//!     --listen 127.0.0.1:0 --policies 2000 --deployments-per-policy 1 --pods-per-deployment 2
//! ```
//!
//! Prints `listening on http://ADDR` once it serves. Seeds both CRDs (established) and the
//! population of `FakeApi::seed`: per policy `app-i` in namespace `ns-(i/40)`, its Deployments
//! whose pod template it selects, and their pods (the first of each carrying the injection
//! annotation).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::fake::{FakeApi, Population};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() {
    let listen = arg("--listen", "127.0.0.1:0");
    let count = |name: &str, default: &str| -> usize {
        let v = arg(name, default);
        v.parse().unwrap_or_else(|_| {
            eprintln!("fake_apiserver: {name}: expected a count, got {v:?}");
            std::process::exit(64)
        })
    };
    let population = Population {
        policies: count("--policies", "2000"),
        deployments_per_policy: count("--deployments-per-policy", "1"),
        pods_per_deployment: count("--pods-per-deployment", "2"),
    };
    let fake = FakeApi::new();
    fake.seed_crds();
    fake.seed(population);
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
