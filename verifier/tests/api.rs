//! The routes driven in-process (`tower::ServiceExt::oneshot`), with a real WAL on disk and the
//! memory store; the caller identity is set as the connection layer would set it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::Request;
use coherence_core::pcs::{self, BuildInput, Params, Pcs, Signer, Verifier};
use coherence_core::report::{FinopsSample, SignalReport, WindowReport};
use coherence_core::window::DriftRisk;
use coherence_verifier::api::{self, AppState, Caller};
use coherence_verifier::dedup::{Store, memory::MemoryStore};
use coherence_verifier::ingest::{Ingest, IngestConfig};
use coherence_verifier::limit::RateLimiter;
use coherence_verifier::metrics::Metrics;
use coherence_verifier::wal::WalConfig;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const KEY: &[u8] = b"test-key";
const ALL: &str = "spiffe://coherence.dev/ns/*/sa/loadgen";
const SHOP: &str = "spiffe://coherence.dev/ns/shop/sa/checkout";

fn signer() -> Signer {
    Signer::hmac(KEY.to_vec())
}

fn make_pcs(shard: &str, epoch: u64) -> Pcs {
    let values: Vec<f64> = (0..120)
        .map(|i| 50.0 + ((i * 37 + epoch as usize * 11) % 23) as f64)
        .collect();
    let events: Vec<Vec<u8>> = values.iter().map(|v| format!("{v}").into_bytes()).collect();
    let mut p = pcs::build(
        &BuildInput {
            values: &values,
            events: &events,
            shard_id: shard,
            epoch,
            attempt: 1,
            sent_at: "2026-11-01T00:00:00Z",
            seed: 42,
            scales: &[2, 4, 8, 16, 32],
        },
        &Params::default(),
    )
    .unwrap();
    signer().sign(&mut p).unwrap();
    p
}

fn make_report(shard: &str, epoch: u64, risk: DriftRisk) -> SignalReport {
    let mut r = SignalReport {
        report_id: String::new(),
        schema: coherence_core::report::SCHEMA.into(),
        version: coherence_core::report::VERSION.into(),
        shard_id: shard.into(),
        epoch,
        sent_at: "2026-11-01T00:00:00Z".into(),
        engine_version: coherence_core::ENGINE_VERSION.into(),
        windows: vec![WindowReport {
            signal: "cpu".into(),
            window: "5m".parse().unwrap(),
            mean: 40.0,
            stdev: 16.0,
            volatility_index: 0.4,
            drift_risk: risk,
            n: 30,
            window_start_ms: 1_000,
            window_end_ms: 301_000,
        }],
        findings: vec![],
        finops: (0..12)
            .map(|i| FinopsSample {
                at_ms: 1_000 * i,
                qps: 100.0,
                latency_p95_ms: 80.0,
                infra_cost_usd: 0.001,
            })
            .collect(),
        sig: String::new(),
    };
    r.sign(&signer()).unwrap();
    r
}

struct Harness {
    ingest: Arc<Ingest>,
    app: axum::Router,
    admin: axum::Router,
}

async fn harness(dir: &Path, rate: f64, body_limit: usize) -> Harness {
    let (metrics, registry) = Metrics::new();
    let store = Store::Memory(MemoryStore::new(Duration::from_secs(3600)));
    let ingest = Ingest::open(
        IngestConfig {
            wal: WalConfig::new(dir),
            keys: Verifier::hmac(vec![b"old-key".to_vec(), KEY.to_vec()]),
            params: Params::default(),
            ed25519_batch: 64,
        },
        store,
        metrics,
    )
    .await
    .unwrap();
    let state = Arc::new(AppState {
        ingest: ingest.clone(),
        limiter: RateLimiter::new(rate),
        registry,
        metrics_auth: None,
        body_limit,
    });
    Harness {
        ingest,
        app: api::app(state.clone()),
        admin: api::admin(state),
    }
}

impl Harness {
    /// `GET path` as a caller allowed everywhere.
    async fn get(&self, path: &str) -> (u16, Value, Option<String>) {
        call(&self.app, Some(ALL), "GET", path, vec![]).await
    }

    /// `POST path` with `body` as `caller` (`None`: a certificate without an identity).
    async fn post(
        &self,
        caller: Option<&str>,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, Value, Option<String>) {
        call(&self.app, caller, "POST", path, body).await
    }
}

async fn call(
    app: &axum::Router,
    caller: Option<&str>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Value, Option<String>) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(Caller(caller.map(str::to_owned)));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v, retry)
}

async fn metrics_text(h: &Harness) -> String {
    let resp = h
        .admin
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn verdicts_duplicates_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), 0.0, 65_536).await;
    let p = make_pcs("shop/checkout/checkout-0", 1);
    let body = p.to_json().into_bytes();

    let (s, v, _) = h.post(Some(SHOP), "/v1/pcs/submit", body.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], p.pcs_id);
    assert_eq!(
        v["key"], "PCS_HMAC_KEYS[1]",
        "the second (rotated-in) key verified it"
    );

    // The answer carries what was decided, by which key, against which tolerances.
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "alg",
            "engineVersion",
            "escalations",
            "id",
            "key",
            "kind",
            "reasons",
            "seq",
            "status",
            "tolerances"
        ],
        "{v}"
    );
    assert_eq!(
        (&v["status"], &v["kind"], &v["alg"]),
        (&json!("accepted"), &json!("pcs"), &json!("hmac"))
    );
    assert_eq!(
        v["tolerances"],
        serde_json::to_value(Params::default().tolerances).unwrap()
    );
    let first = v;

    let (s, v, _) = h.post(Some(SHOP), "/v1/pcs/submit", body.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(v["duplicate"], true);
    // The duplicate is the first answer and where it was first applied.
    let mut want = first.clone();
    want["duplicate"] = json!(true);
    want["firstSeq"] = first["seq"].clone();
    assert_eq!(v, want);

    // Escalated: a claim that recomputation does not confirm, correctly signed.
    let mut e = make_pcs("shop/checkout/checkout-0", 2);
    e.d_hat += 0.5;
    signer().sign(&mut e).unwrap();
    let (s, v, _) = h
        .post(Some(SHOP), "/v1/pcs/submit", e.to_json().into_bytes())
        .await;
    assert_eq!(s, 202, "{v}");
    assert!(v["reasons"][0].as_str().unwrap().contains("D_hat"), "{v}");
    // The duplicate of an escalated record keeps 202.
    let (s, _, _) = h
        .post(Some(SHOP), "/v1/pcs/submit", e.to_json().into_bytes())
        .await;
    assert_eq!(s, 202);

    // Tampered after signing.
    let mut t = make_pcs("shop/checkout/checkout-0", 3);
    t.coh_star = (t.coh_star + 0.01).min(1.0);
    let (s, v, _) = h
        .post(Some(SHOP), "/v1/pcs/submit", t.to_json().into_bytes())
        .await;
    assert_eq!(s, 401, "{v}");

    // Malformed: the field is named.
    let mut m: Value =
        serde_json::from_str(&make_pcs("shop/checkout/checkout-0", 4).to_json()).unwrap();
    m["N_j"] = Value::from("lots");
    let (s, v, _) = h
        .post(Some(SHOP), "/v1/pcs/submit", m.to_string().into_bytes())
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["field"], "N_j");
    let (s, v, _) = h
        .post(Some(SHOP), "/v1/pcs/submit", b"{not json".to_vec())
        .await;
    assert_eq!(s, 400, "{v}");

    // Another namespace's record.
    let other = make_pcs("payments/api/api-0", 1);
    let (s, v, _) = h
        .post(Some(SHOP), "/v1/pcs/submit", other.to_json().into_bytes())
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, _, _) = h
        .post(Some(ALL), "/v1/pcs/submit", other.to_json().into_bytes())
        .await;
    assert_eq!(s, 200, "namespace * may submit anywhere");
    // A certificate without an identity.
    let (s, _, _) = h
        .post(None, "/v1/pcs/submit", other.to_json().into_bytes())
        .await;
    assert_eq!(s, 403);

    let text = metrics_text(&h).await;
    assert_eq!(metric(&text, "flk_accepted"), 2.0, "{text}");
    assert_eq!(metric(&text, "flk_escalated"), 1.0);
    assert_eq!(metric(&text, "flk_dedup_hits"), 2.0);
    // Every body that reached the WAL (the identity-less request never does).
    assert!(text.contains("flk_ingest_total{kind=\"pcs\"} 9"), "{text}");
    assert!(
        text.contains("coherence_requests_total{route=\"/v1/pcs/submit\",code=\"403\"} 2"),
        "{text}"
    );

    // The stored outcome can be looked up.
    let (s, v, _) = h.get(&format!("/v1/records/{}", p.pcs_id)).await;
    assert_eq!((s, v["status"].as_u64()), (200, Some(200)));
}

#[tokio::test]
async fn body_limit_and_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), 2.0, 1024).await;
    let (s, v, _) = h.post(Some(ALL), "/v1/pcs/submit", vec![b' '; 2048]).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["limit"], 1024);
    let p = make_pcs("shop/checkout/checkout-0", 1)
        .to_json()
        .into_bytes();
    let mut codes = Vec::new();
    let mut retry = None;
    for _ in 0..6 {
        let (s, _, r) = h.post(Some(SHOP), "/v1/pcs/submit", p.clone()).await;
        codes.push(s);
        retry = retry.or(r);
    }
    // A burst of twice the rate (4), then 429 with Retry-After; another caller is unaffected.
    assert_eq!(&codes[..4], &[200, 200, 200, 200], "{codes:?}");
    assert!(codes[4..].iter().all(|c| *c == 429), "{codes:?}");
    assert_eq!(retry.as_deref(), Some("1"));
    let (s, _, _) = h.post(Some(ALL), "/v1/pcs/submit", p).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn restart_remembers_outcomes_and_rebuilds_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_pcs("shop/checkout/checkout-0", 1);
    {
        let h = harness(dir.path(), 0.0, 65_536).await;
        let (s, _, _) = h
            .post(Some(SHOP), "/v1/pcs/submit", p.to_json().into_bytes())
            .await;
        assert_eq!(s, 200);
        for (pod, risk) in [
            ("checkout-0", DriftRisk::Low),
            ("checkout-1", DriftRisk::High),
        ] {
            let r = make_report(&format!("shop/checkout/{pod}"), 1, risk);
            let (s, v, _) = h
                .post(
                    Some(SHOP),
                    "/v1/signals/submit",
                    serde_json::to_vec(&r).unwrap(),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
        let (s, v, _) = h.get("/v1/workloads/shop/checkout").await;
        assert_eq!(s, 200);
        assert_eq!(v["driftRisk"], "high", "{v}");
        assert_eq!(v["pcs"]["accepted"], 1);
        h.ingest.sync().await.unwrap();
        // No snapshot: the restart must rebuild from the WAL alone.
    }
    let h = harness(dir.path(), 0.0, 65_536).await;
    let (s, v, _) = h
        .post(Some(SHOP), "/v1/pcs/submit", p.to_json().into_bytes())
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["duplicate"], true,
        "the restarted verifier remembers the id: {v}"
    );
    let (s, v, _) = h.get("/v1/workloads/shop/checkout").await;
    assert_eq!(s, 200);
    assert_eq!(v["driftRisk"], "high", "{v}");
    assert_eq!(v["pods"].as_array().unwrap().len(), 2);
    assert_eq!(v["pcs"]["accepted"], 1);
    assert_eq!(v["finops"]["samples"], 24);
    assert_eq!(v["meta"]["engineVersion"], coherence_core::ENGINE_VERSION);
    let (s, v, _) = h.get("/v1/workloads").await;
    assert_eq!(s, 200);
    assert_eq!(v["workloads"][0]["workload"], "checkout");
    let (s, _, _) = h.get("/v1/workloads/shop/nothing").await;
    assert_eq!(s, 404);
    let text = metrics_text(&h).await;
    assert!(
        text.contains("coherence_workload_drift_risk{namespace=\"shop\",workload=\"checkout\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn bodies_without_an_outcome_are_applied_once_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_pcs("shop/checkout/checkout-0", 9);
    // A body made durable by a verifier that died before applying it.
    {
        let (wal, _) =
            coherence_verifier::wal::Wal::open(WalConfig::new(dir.path()), None, |_| {}).unwrap();
        for _ in 0..2 {
            wal.append_body(
                coherence_verifier::dedup::RecordKind::Pcs,
                SHOP,
                "r1",
                bytes::Bytes::from(p.to_json()),
                coherence_verifier::dedup::now_ms(),
            )
            .await
            .unwrap();
        }
        wal.shutdown();
    }
    let h = harness(dir.path(), 0.0, 65_536).await;
    let (ready, detail) = h.ingest.is_ready();
    assert!(ready, "{detail}");
    assert_eq!(detail["replay"]["unapplied"], 2, "{detail}");
    assert_eq!(detail["replay"]["appliedAtStart"], 2, "{detail}");
    let (s, v, _) = h.get("/v1/workloads/shop/checkout").await;
    assert_eq!(s, 200);
    assert_eq!(
        v["pcs"]["accepted"], 1,
        "the second copy is a duplicate: {v}"
    );
    let (s, v, _) = h.get(&format!("/v1/records/{}", p.pcs_id)).await;
    assert_eq!(s, 200);
    assert_eq!(v["seq"], 1, "the first body is the one applied: {v}");
}
