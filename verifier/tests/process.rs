//! The real `coherence-verifier` binary on free ports with generated certificates, spoken to
//! over mTLS: verdicts, duplicates, identity, limits, a refused handshake, a real dedup store
//! outage (503, then every WAL'd body applied) and SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use coherence_core::pcs::{self, BuildInput, Params, Pcs, Signer};
use coherence_verifier::client::Client;
use coherence_verifier::tls::{self, certgen};
use common::{Proxy, eventually, free_port, tag};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const KEY: &str = "process-test-key";

fn make_pcs(shard: &str, epoch: u64) -> Pcs {
    let values: Vec<f64> = (0..90)
        .map(|i| 10.0 + ((i * 7 + epoch as usize) % 13) as f64)
        .collect();
    let events: Vec<Vec<u8>> = values.iter().map(|v| v.to_string().into_bytes()).collect();
    let mut p = pcs::build(
        &BuildInput {
            values: &values,
            events: &events,
            shard_id: shard,
            epoch,
            attempt: 1,
            sent_at: "2026-11-01T00:00:00Z",
            seed: 7,
            scales: &[2, 4, 8, 16],
        },
        &Params::default(),
    )
    .unwrap();
    Signer::hmac(KEY.as_bytes().to_vec()).sign(&mut p).unwrap();
    p
}

struct Verifier {
    child: Child,
    port: u16,
    admin: u16,
    certs: PathBuf,
    _dir: tempfile::TempDir,
    wal: PathBuf,
}

impl Verifier {
    fn start(env: &[(&str, String)]) -> Verifier {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        certgen::generate(
            &certs,
            &[
                "checkout:shop".parse().unwrap(),
                "other:payments".parse().unwrap(),
            ],
            30,
        )
        .unwrap();
        let wal = dir.path().join("wal");
        let (port, admin) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coherence-verifier"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg("--wal-dir")
        .arg(&wal)
        .env("COHERENCE_TLS_CERT", certs.join("verifier.crt"))
        .env("COHERENCE_TLS_KEY", certs.join("verifier.key"))
        .env("COHERENCE_TLS_CA", certs.join("ca.crt"))
        .env("PCS_HMAC_KEY", KEY)
        .env("TOKEN_RATE", "0")
        .env("DEDUP_TIMEOUT_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Verifier {
            child,
            port,
            admin,
            certs,
            _dir: dir,
            wal,
        }
    }

    fn client(&self, name: &str) -> Client {
        let cfg = tls::client_config(
            &self.certs.join("ca.crt"),
            &self.certs.join(format!("{name}.crt")),
            &self.certs.join(format!("{name}.key")),
        )
        .unwrap();
        Client::new(&format!("https://127.0.0.1:{}", self.port), Some(cfg)).unwrap()
    }

    fn admin(&self) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.admin), None).unwrap()
    }

    async fn ready(&self) {
        let admin = self.admin();
        eventually(
            "verifier /readyz",
            Duration::from_secs(20),
            async || match admin.get("/readyz").await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(r.text()),
                Err(e) => Err(e.to_string()),
            },
        )
        .await;
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.admin().get("/metrics").await.unwrap().text();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
            .unwrap_or(0.0)
    }

    /// SIGTERM, wait, then audit the WAL it left.
    fn terminate(mut self) -> (std::process::ExitStatus, Value) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        (status, audit(&self.wal))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn audit(wal: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_coherence-verifier"))
        .args(["wal", "audit", "--wal-dir"])
        .arg(wal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn post(c: &Client, path: &str, body: impl Into<Bytes>) -> (u16, Value) {
    let r = c.post_json(path, body.into()).await.unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_verdicts_identity_and_limits() {
    let v = Verifier::start(&[("COHERENCE_BODY_LIMIT", "4096".into())]);
    v.ready().await;
    let shop = v.client("checkout");
    let p = make_pcs("shop/checkout/checkout-0", 1);

    let (s, body) = post(&shop, "/v1/pcs/submit", p.to_json()).await;
    assert_eq!(s, 200, "{body}");
    let hits = v.metric("flk_dedup_hits").await;
    let (s, body) = post(&shop, "/v1/pcs/submit", p.to_json()).await;
    assert_eq!((s, &body["duplicate"]), (200, &Value::Bool(true)), "{body}");
    assert_eq!(v.metric("flk_dedup_hits").await, hits + 1.0);

    let mut t = p.clone();
    t.epoch = 2; // changes nothing signed but pcs_id's inputs: signature no longer matches
    t.pcs_id = t.expected_pcs_id();
    let (s, body) = post(&shop, "/v1/pcs/submit", t.to_json()).await;
    assert_eq!(s, 401, "{body}");

    let (s, body) = post(&shop, "/v1/pcs/submit", r#"{"schema": 1}"#).await;
    assert_eq!(s, 400, "{body}");
    assert!(body["field"].is_string(), "{body}");

    let other = make_pcs("payments/api/api-0", 1);
    let (s, body) = post(&shop, "/v1/pcs/submit", other.to_json()).await;
    assert_eq!(s, 403, "{body}");
    let (s, _) = post(&v.client("other"), "/v1/pcs/submit", other.to_json()).await;
    assert_eq!(s, 200);

    let (s, body) = post(&shop, "/v1/pcs/submit", vec![b'x'; 8192]).await;
    assert_eq!(s, 413, "{body}");

    // No client certificate: the handshake is refused.
    let roots = tls::load_roots("ca", &v.certs.join("ca.crt")).unwrap();
    let no_cert = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let anon = Client::new(
        &format!("https://127.0.0.1:{}", v.port),
        Some(std::sync::Arc::new(no_cert)),
    )
    .unwrap();
    let err = anon
        .post_json("/v1/pcs/submit", Bytes::from(p.to_json()))
        .await;
    assert!(
        err.is_err() || err.as_ref().is_ok_and(|r| r.status >= 400),
        "anonymous request got through: {:?}",
        err.map(|r| r.status)
    );
    assert!(
        err.is_err(),
        "the server must refuse the handshake, not answer"
    );

    let (s, body) = {
        let r = shop.get("/v1/workloads/shop/checkout").await.unwrap();
        (r.status, serde_json::from_slice::<Value>(&r.body).unwrap())
    };
    assert_eq!(s, 200);
    assert_eq!(body["pcs"]["accepted"], 1, "{body}");
    let (status, a) = v.terminate();
    assert!(status.success(), "SIGTERM drains and exits 0: {status:?}");
    assert_eq!(a["first_applications"], 2, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let v = Verifier::start(&[("TOKEN_RATE", "3".into())]);
    v.ready().await;
    let shop = v.client("checkout");
    let mut codes = Vec::new();
    let mut retry = None;
    for epoch in 0..10 {
        let r = shop
            .post_json(
                "/v1/pcs/submit",
                Bytes::from(make_pcs("shop/checkout/c-0", epoch).to_json()),
            )
            .await
            .unwrap();
        retry = retry.or(r.retry_after());
        codes.push(r.status);
    }
    assert_eq!(
        codes.iter().filter(|c| **c == 200).count(),
        6,
        "burst of 2 × rate: {codes:?}"
    );
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 4, "{codes:?}");
    assert_eq!(retry, Some(Duration::from_secs(1)));
}

async fn outage_then_recovery(backend: &str, target: &str, extra: Vec<(&str, String)>) {
    let mut proxy = Proxy::start(target).await;
    let mut env = vec![("DEDUP_BACKEND", backend.to_owned())];
    env.extend(
        extra
            .into_iter()
            .map(|(k, v)| (k, v.replace("{port}", &proxy.port().to_string()))),
    );
    let v = Verifier::start(&env);
    v.ready().await;
    let shop = v.client("checkout");
    let base = rand::random::<u32>() as u64 * 1000;
    let first = make_pcs("shop/checkout/outage-0", base);
    assert_eq!(post(&shop, "/v1/pcs/submit", first.to_json()).await.0, 200);

    proxy.cut().await;
    let mut waiting = Vec::new();
    for i in 1..=5 {
        let p = make_pcs("shop/checkout/outage-0", base + i);
        let r = shop
            .post_json("/v1/pcs/submit", Bytes::from(p.to_json()))
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.retry_after().is_some(), "503 carries Retry-After");
        waiting.push(p);
    }
    // Not ready while the store is down.
    eventually("readyz turns 503", Duration::from_secs(10), async || {
        let r = v.admin().get("/readyz").await.map_err(|e| e.to_string())?;
        if r.status == 503 {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
    assert!(v.metric("coherence_wal_pending").await >= 5.0);

    proxy.restore();
    v.ready().await;
    for p in &waiting {
        let id = p.pcs_id.clone();
        let r = eventually(
            "pending body applied",
            Duration::from_secs(20),
            async || {
                let r = shop
                    .get(&format!("/v1/records/{id}"))
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status == 200 {
                    Ok(r)
                } else {
                    Err(r.text())
                }
            },
        )
        .await;
        let stored: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(stored["status"], 200, "{stored}");
    }
    // The client's retry of a body applied from the WAL is a duplicate with the first answer.
    let (s, body) = post(&shop, "/v1/pcs/submit", waiting[0].to_json()).await;
    assert_eq!((s, &body["duplicate"]), (200, &Value::Bool(true)), "{body}");
    assert_eq!(v.metric("coherence_wal_pending").await, 0.0);
    let (status, a) = v.terminate();
    assert!(status.success());
    assert_eq!(a["applied_more_than_once"], Value::Array(vec![]), "{a}");
    assert_eq!(a["bodies_without_outcome"], 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers() {
    let prefix = format!("coherence-test-{}:", tag());
    outage_then_recovery(
        "redis",
        "127.0.0.1:6379",
        vec![
            ("REDIS_ADDR", "127.0.0.1:{port}".into()),
            ("REDIS_PREFIX", prefix),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_closed_and_recovers() {
    let schema = format!("coh_proc_{}", tag());
    outage_then_recovery(
        "postgres",
        "127.0.0.1:5432",
        vec![
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:{port}/test".into(),
            ),
            ("DATABASE_SCHEMA", schema.clone()),
        ],
    )
    .await;
    let _ = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-c",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .output();
}

#[tokio::test]
async fn bad_configuration_exits_64_naming_the_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_coherence-verifier"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--wal-dir",
            "/tmp/never",
        ])
        .env_remove("COHERENCE_TLS_CERT")
        .env("PCS_HMAC_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("COHERENCE_TLS_CERT"), "{err}");
}
