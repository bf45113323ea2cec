//! The ceilings the verifier is measured against (`make bench-verifier` runs it beside a real
//! load test and reports the verifier as a fraction of the lower ceiling):
//!
//! 1. verify-only throughput: `Verifier::verify_json` on pre-built signed PCS bodies, on every
//!    core, no I/O; for Ed25519 also with the signatures of `--sig-batch` records (default 64)
//!    checked together, as the verifier does for concurrent requests;
//! 2. the fsync rate of the WAL's file system at a given batch size: `write` of `batch`
//!    records of `bytes` each, then `fdatasync`, in a loop (the group-commit pattern), with the
//!    records per second it allows;
//! 3. full mTLS handshakes per second on one core (client and server sharing the core, no
//!    session resumption).
//!
//! `cargo run --release -p coherence-verifier --example ceiling -- [--dir DIR] [--batch B]
//! [--bytes N] [--seconds S]`; prints one JSON document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_core::pcs::{self, BuildInput, Params, Signer, Verifier};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn bodies(signer: &Signer, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let values: Vec<f64> = (0..60).map(|k| ((k * 31 + i * 7) % 97) as f64).collect();
            let events: Vec<Vec<u8>> = values.iter().map(|v| v.to_string().into_bytes()).collect();
            let shard = format!("shop/checkout/pod-{}", i % 50);
            let mut p = pcs::build(
                &BuildInput {
                    values: &values,
                    events: &events,
                    shard_id: &shard,
                    epoch: i as u64,
                    attempt: 1,
                    sent_at: "2026-11-01T00:00:00Z",
                    seed: 42,
                    scales: &[2, 4, 8, 16, 32],
                },
                &Params::default(),
            )
            .unwrap();
            signer.sign(&mut p).unwrap();
            p.to_json()
        })
        .collect()
}

/// Verify-only throughput with the signatures of `batch` records checked together (as the
/// verifier checks Ed25519 signatures of concurrent requests); `batch` 1 is the single check.
fn verify_rate(signer: &Signer, seconds: f64, batch: usize) -> (f64, usize) {
    let bodies = Arc::new(bodies(signer, 2000));
    let verifier = Arc::new(signer.verifier());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (b, v) = (bodies.clone(), verifier.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut i = t;
                while Instant::now() < deadline {
                    for _ in 0..64usize.div_ceil(batch) {
                        if batch == 1 {
                            let r = Verifier::verify_json(&v, &b[i % b.len()], &Params::default());
                            assert!(r.http_status() < 300);
                        } else {
                            let parsed: Vec<pcs::Pcs> = (0..batch)
                                .map(|k| pcs::Pcs::from_json(&b[(i + k) % b.len()]).unwrap())
                                .collect();
                            let messages: Vec<[u8; 32]> = parsed
                                .iter()
                                .map(|p| Verifier::signing_input(p).unwrap())
                                .collect();
                            let items: Vec<([u8; 32], &str)> = messages
                                .iter()
                                .zip(&parsed)
                                .map(|(m, p)| (*m, p.sig.as_str()))
                                .collect();
                            let sigs = v.verify_signatures(&items);
                            for (p, sig) in parsed.iter().zip(sigs) {
                                let r = Verifier::finish(p, &Params::default(), sig);
                                assert!(r.http_status() < 300);
                            }
                        }
                        i += batch;
                        n += batch as u64;
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (total as f64 / start.elapsed().as_secs_f64(), threads)
}

fn fsync_rate(dir: &std::path::Path, batch: usize, bytes: usize, seconds: f64) -> f64 {
    let path = dir.join(format!("ceiling-{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![b'x'; batch * bytes];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut syncs = 0u64;
    while Instant::now() < deadline {
        f.write_all(&chunk).unwrap();
        f.sync_data().unwrap();
        syncs += 1;
    }
    let rate = syncs as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    rate
}

fn handshake_rate(seconds: f64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    coherence_verifier::tls::certgen::generate(dir.path(), &[], 1).unwrap();
    let p = |n: &str| dir.path().join(n);
    let server = coherence_verifier::tls::server_config(
        &p("verifier.crt"),
        &p("verifier.key"),
        &p("ca.crt"),
    )
    .unwrap();
    let mut client =
        (*coherence_verifier::tls::client_config(&p("ca.crt"), &p("client.crt"), &p("client.key"))
            .unwrap())
        .clone();
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let a = acceptor.clone();
                tokio::spawn(async move {
                    let _ = a.accept(tcp).await;
                });
            }
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let mut n = 0u64;
        while Instant::now() < deadline {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let s = connector.connect(name.clone(), tcp).await.unwrap();
            assert!(s.get_ref().1.peer_certificates().is_some());
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn main() {
    let seconds: f64 = arg("--seconds", "3").parse().unwrap();
    let batch: usize = arg("--batch", "16").parse().unwrap();
    let bytes: usize = arg("--bytes", "1100").parse().unwrap();
    let dir = std::path::PathBuf::from(arg("--dir", "."));
    let sig_batch: usize = arg("--sig-batch", "64").parse().unwrap();
    let (hmac, threads) = verify_rate(&Signer::hmac(b"ceiling".to_vec()), seconds, 1);
    let ed_signer = Signer::ed25519_from_seed(&[7u8; 32]);
    let (ed, _) = verify_rate(&ed_signer, seconds, 1);
    let (ed_batched, _) = verify_rate(&ed_signer, seconds, sig_batch.max(1));
    let syncs = fsync_rate(&dir, batch, bytes, seconds);
    let hs = handshake_rate(seconds);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "verify_only_per_s": {"hmac": hmac, "ed25519": ed, "ed25519_batched": ed_batched, "sig_batch": sig_batch, "threads": threads},
            "fsync": {"dir": dir, "batch": batch, "record_bytes": bytes, "syncs_per_s": syncs, "records_per_s": syncs * batch as f64},
            "mtls_full_handshakes_per_s_one_core": hs,
            "seconds_each": seconds,
        }))
        .unwrap()
    );
}
