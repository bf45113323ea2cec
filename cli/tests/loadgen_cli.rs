//! `coherence loadgen` against a small mTLS test server on 127.0.0.1 that answers like the
//! verifier would: 200 for a valid signature, 401 for a bad one, 403 for a foreign namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot run its binary should fail loudly

use bytes::Bytes;
use coherence_core::pcs::{Params, Verifier};
use coherence_core::report::SignalReport;
use coherence_verifier::tls::{self, Identity, certgen};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

const KEY: &str = "loadgen-test-key";

/// Variables of the test's own environment that must not reach the process.
const ENV_VARS: &[&str] = &[
    "ENDPOINT",
    "COHERENCE_TLS_CA",
    "COHERENCE_TLS_CERT",
    "COHERENCE_TLS_KEY",
    "PCS_SIGN_ALG",
    "PCS_HMAC_KEY",
    "PCS_HMAC_KEYS",
    "PCS_ED25519_KEY_B64",
    "PCS_ED25519_PUB_B64",
];

fn loadgen(args: &[&str], with_key: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coherence"));
    cmd.arg("loadgen").args(args);
    for v in ENV_VARS {
        cmd.env_remove(v);
    }
    if with_key {
        cmd.env("PCS_HMAC_KEY", KEY);
    }
    cmd.output().expect("run coherence")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn answer(id: &Identity, path: &str, body: &[u8]) -> u16 {
    let verifier = Verifier::hmac(vec![KEY.as_bytes().to_vec()]);
    let Ok(text) = std::str::from_utf8(body) else {
        return 400;
    };
    let namespace = |shard: &str| shard.split('/').next().unwrap_or("").to_owned();
    match path {
        "/v1/pcs/submit" => {
            let report = verifier.verify_json(text, &Params::default());
            let ns = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v["shard_id"].as_str().map(namespace))
                .unwrap_or_default();
            if report.http_status() == 200 && !id.allows(&ns) {
                403
            } else {
                report.http_status()
            }
        }
        "/v1/signals/submit" => match SignalReport::from_json(text) {
            Err(_) => 400,
            Ok(r) => match r.verify(&verifier) {
                Err(e) => e.http_status(),
                Ok(_) if !id.allows(r.namespace()) => 403,
                Ok(_) => 200,
            },
        },
        _ => 404,
    }
}

/// Serves mTLS HTTP/1.1 on a port of 127.0.0.1 from a thread of its own, for the whole test.
fn serve(dir: &certgen::Generated) -> SocketAddr {
    let config = tls::server_config(&dir.verifier.cert, &dir.verifier.key, &dir.ca.cert).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let id = Identity::from_peer_certs(
                        tls.get_ref().1.peer_certificates().unwrap_or(&[]),
                    )
                    .unwrap();
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let id = id.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = answer(&id, &path, &body);
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(format!(
                                "{{\"status\":{status}}}"
                            ))));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

fn certs(dir: &Path) -> certgen::Generated {
    certgen::generate(dir, &[certgen::ClientSpec::new("a", "shop").unwrap()], 30).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn count(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

#[test]
fn mixed_load_over_mtls_gets_the_expected_answers_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(&dir.path().join("certs"));
    let addr = serve(&g);
    let record = dir.path().join("record.jsonl");
    let out = dir.path().join("summary.json");
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let o = loadgen(
        &[
            "--endpoint",
            &endpoint,
            "--certs",
            s(&dir.path().join("certs")),
            "--rate",
            "200",
            "--duration",
            "1s",
            "--concurrency",
            "8",
            "--dup-fraction",
            "0.1",
            "--invalid-fraction",
            "0.1",
            "--signals-fraction",
            "0.1",
            "--record",
            s(&record),
            "--out",
            s(&out),
        ],
        true,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).expect("one JSON summary on stdout");
    let from_file: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(summary, from_file);

    assert_eq!(summary["planned"], 200);
    assert_eq!(summary["sent"], 200);
    assert_eq!(summary["answered"], 200);
    assert_eq!(summary["transport_errors"], 0);
    assert_eq!(summary["requested_rate"], 200.0);
    let mix = &summary["mix"];
    for (kind, expected) in [("pcs", 140), ("dup", 20), ("invalid", 20), ("signals", 20)] {
        assert!(
            (count(mix, kind) - expected).abs() <= 1,
            "{kind}: {}",
            mix[kind]
        );
    }
    let status = &summary["status"];
    assert_eq!(
        count(status, "200"),
        count(mix, "pcs") + count(mix, "dup") + count(mix, "signals"),
        "{summary}"
    );
    assert_eq!(count(status, "401"), count(mix, "invalid"), "{summary}");
    assert_eq!(status.as_object().unwrap().len(), 2, "{summary}");
    // One connection per request in flight at most, one handshake per connection.
    let connections = count(&summary, "connections");
    assert!((1..=8).contains(&connections), "{summary}");
    assert_eq!(
        count(&summary, "handshakes") + count(&summary, "resumed_handshakes"),
        connections
    );
    for q in ["p50", "p95", "p99", "max"] {
        assert!(summary["latency_ms"][q].is_number(), "{summary}");
    }

    let lines: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    let seqs: HashSet<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.len(), 200);
    let mut fresh = HashMap::new();
    let mut dups = Vec::new();
    for l in &lines {
        let kind = l["kind"].as_str().unwrap();
        let status = l["status"].as_i64().unwrap();
        match kind {
            "pcs" => {
                assert_eq!(status, 200, "{l}");
                let id = l["pcs_id"].as_str().unwrap().to_owned();
                assert_eq!(id.len(), 64);
                assert!(fresh.insert(id, status).is_none(), "pcs_id sent twice: {l}");
            }
            "dup" => {
                assert_eq!(status, 200, "{l}");
                dups.push(l["pcs_id"].as_str().unwrap().to_owned());
            }
            "invalid" => {
                assert_eq!(status, 401, "{l}");
                assert!(l["pcs_id"].is_string(), "{l}");
            }
            "signals" => {
                assert_eq!(status, 200, "{l}");
                assert!(l["report_id"].is_string(), "{l}");
            }
            other => panic!("unknown kind {other}"),
        }
    }
    assert_eq!(dups.len() as i64, count(mix, "dup"));
    for d in &dups {
        assert!(
            fresh.contains_key(d),
            "a resend of a pcs_id never sent fresh: {d}"
        );
    }
}

#[test]
fn a_namespaced_client_submits_for_its_namespace_only() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(&dir.path().join("certs"));
    let addr = serve(&g);
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let (_, pair) = &g.clients[0];
    let base = [
        "--endpoint",
        &endpoint,
        "--ca",
        s(&g.ca.cert),
        "--cert",
        s(&pair.cert),
        "--key",
        s(&pair.key),
        "--rate",
        "100",
        "--duration",
        "200ms",
        "--signals-fraction",
        "0.5",
    ];
    // The certificate's namespace is used when none is given.
    let o = loadgen(&base, true);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["namespaces"], serde_json::json!(["shop"]));
    assert_eq!(count(&summary["status"], "200"), 20, "{summary}");

    // Another namespace is refused by the server, and loadgen says it will be.
    let mut args = base.to_vec();
    args.extend(["--namespace", "payments"]);
    let o = loadgen(&args, true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("expect 403"), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(count(&summary["status"], "403"), 20, "{summary}");
}

#[test]
fn configuration_errors_exit_64_and_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let https = [
        "--endpoint",
        "https://127.0.0.1:9",
        "--rate",
        "10",
        "--duration",
        "1s",
    ];
    let o = loadgen(&https, true);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--certs DIR"), "{}", stderr(&o));

    let http = ["--endpoint", "http://127.0.0.1:9", "--duration", "1s"];
    for (extra, flag) in [
        (&["--rate", "0"][..], "--rate"),
        (
            &["--rate", "10", "--dup-fraction", "1.5"][..],
            "--dup-fraction",
        ),
        (
            &[
                "--rate",
                "10",
                "--dup-fraction",
                "0.6",
                "--invalid-fraction",
                "0.6",
            ][..],
            "--dup-fraction, --invalid-fraction",
        ),
        (&["--rate", "10", "--namespace", "Shop"][..], "--namespace"),
        (&["--rate", "10", "--concurrency", "0"][..], "--concurrency"),
    ] {
        let mut args = http.to_vec();
        args.extend_from_slice(extra);
        let o = loadgen(&args, true);
        assert_eq!(o.status.code(), Some(64), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
    }
    let o = loadgen(
        &[
            "--endpoint",
            "http://127.0.0.1:9",
            "--rate",
            "10",
            "--duration",
            "soon",
        ],
        true,
    );
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("--duration: expected"),
        "{}",
        stderr(&o)
    );

    // Without a signing key.
    let o = loadgen(
        &[
            "--endpoint",
            "http://127.0.0.1:9",
            "--rate",
            "10",
            "--duration",
            "1s",
        ],
        false,
    );
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("PCS_HMAC_KEY"), "{}", stderr(&o));

    // A CA file that is not there.
    let missing = dir.path().join("nothing");
    let o = loadgen(&[&https[..], &["--certs", s(&missing)][..]].concat(), true);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
    assert!(stderr(&o).contains("ca.crt"), "{}", stderr(&o));
}

#[test]
fn an_unreachable_endpoint_exits_1_with_the_errors_counted() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let o = loadgen(
        &[
            "--endpoint",
            &endpoint,
            "--rate",
            "20",
            "--duration",
            "200ms",
        ],
        true,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["transport_errors"], 4, "{summary}");
    assert_eq!(summary["errors"]["connect"], 4, "{summary}");
    assert!(stderr(&o).contains(&endpoint), "{}", stderr(&o));
}
