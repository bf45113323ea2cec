//! The dashboard's routes on the admin port, driven in-process (`tower::ServiceExt::oneshot`):
//! `/ui` and its embedded assets, the read-only workload API without a client certificate, the
//! per-workload history (a bounded ring buffer, rebuilt from the WAL) and Basic Auth when the
//! metrics credentials are set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::Request;
use coherence_core::pcs::{self, BuildInput, Params, Signer, Verifier};
use coherence_core::report::{FinopsSample, SignalReport, WindowReport};
use coherence_core::window::DriftRisk;
use coherence_verifier::api::{self, AppState, Caller, MetricsAuth};
use coherence_verifier::dedup::{Store, memory::MemoryStore};
use coherence_verifier::ingest::{Ingest, IngestConfig};
use coherence_verifier::limit::RateLimiter;
use coherence_verifier::metrics::Metrics;
use coherence_verifier::views::{HISTORY_POINTS, Views};
use coherence_verifier::wal::WalConfig;
use http_body_util::BodyExt;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const KEY: &[u8] = b"ui-test-key";
const SHOP: &str = "spiffe://coherence.dev/ns/shop/sa/checkout";
const SHARD: &str = "shop/checkout/checkout-0";

fn signer() -> Signer {
    Signer::hmac(KEY.to_vec())
}

fn report(epoch: u64, mean: f64, stdev: f64, risk: DriftRisk, qps: f64) -> SignalReport {
    let mut r = SignalReport {
        report_id: String::new(),
        schema: coherence_core::report::SCHEMA.into(),
        version: coherence_core::report::VERSION.into(),
        shard_id: SHARD.into(),
        epoch,
        sent_at: "2026-11-01T00:00:00Z".into(),
        engine_version: coherence_core::ENGINE_VERSION.into(),
        windows: vec![
            WindowReport {
                signal: "cpu".into(),
                window: "5m".parse().unwrap(),
                mean,
                stdev,
                volatility_index: stdev / mean,
                drift_risk: risk,
                n: 30,
                window_start_ms: epoch as i64 * 1_000,
                window_end_ms: epoch as i64 * 1_000 + 300_000,
            },
            WindowReport {
                signal: "qps".into(),
                window: "15m".parse().unwrap(),
                mean: qps,
                stdev: 1.0,
                volatility_index: 1.0 / qps,
                drift_risk: DriftRisk::Low,
                n: 90,
                window_start_ms: epoch as i64 * 1_000,
                window_end_ms: epoch as i64 * 1_000 + 900_000,
            },
        ],
        findings: vec![],
        finops: vec![FinopsSample {
            at_ms: epoch as i64 * 1_000,
            qps,
            latency_p95_ms: 80.0,
            infra_cost_usd: 0.001,
        }],
        sig: String::new(),
    };
    r.sign(&signer()).unwrap();
    r
}

struct Harness {
    app: axum::Router,
    admin: axum::Router,
}

async fn harness(dir: &Path, auth: Option<MetricsAuth>) -> Harness {
    let (metrics, registry) = Metrics::new();
    let ingest = Ingest::open(
        IngestConfig {
            wal: WalConfig::new(dir),
            keys: Verifier::hmac(vec![KEY.to_vec()]),
            params: Params::default(),
            ed25519_batch: 64,
        },
        Store::Memory(MemoryStore::new(Duration::from_secs(3600))),
        metrics,
    )
    .await
    .unwrap();
    let state = Arc::new(AppState {
        ingest,
        limiter: RateLimiter::new(0.0),
        registry,
        metrics_auth: auth,
        body_limit: 65_536,
    });
    Harness {
        app: api::app(state.clone()),
        admin: api::admin(state),
    }
}

/// `(status, content-type, headers as text, body)`.
async fn get(
    router: &axum::Router,
    path: &str,
    auth: Option<&str>,
) -> (u16, String, String, Vec<u8>) {
    let mut b = Request::get(path);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let resp = router
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let headers = format!("{:?}", resp.headers());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, headers, body)
}

async fn get_json(router: &axum::Router, path: &str) -> (u16, Value) {
    let (s, _, _, body) = get(router, path, None).await;
    (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn submit(app: &axum::Router, path: &str, body: Vec<u8>) -> u16 {
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut().insert(Caller(Some(SHOP.to_owned())));
    app.clone().oneshot(req).await.unwrap().status().as_u16()
}

async fn submit_pcs(app: &axum::Router, epoch: u64) -> u16 {
    let values: Vec<f64> = (0..120)
        .map(|i| 50.0 + ((i * 37 + epoch as usize * 11) % 23) as f64)
        .collect();
    let events: Vec<Vec<u8>> = values.iter().map(|v| format!("{v}").into_bytes()).collect();
    let mut p = pcs::build(
        &BuildInput {
            values: &values,
            events: &events,
            shard_id: SHARD,
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
    submit(app, "/v1/pcs/submit", p.to_json().into_bytes()).await
}

#[tokio::test]
async fn the_page_and_every_asset_it_loads_are_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), None).await;
    let (s, ct, headers, body) = get(&h.admin, "/ui", None).await;
    assert_eq!(s, 200);
    assert_eq!(ct, "text/html; charset=utf-8");
    assert!(headers.contains("content-security-policy"), "{headers}");
    assert!(headers.contains("default-src 'self'"), "{headers}");
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("data-testid=\"risk-panel\""), "{html}");
    assert!(!html.contains("://cdn"), "no CDN: {html}");

    // Every /ui/assets/ reference of the page answers, with a fitting type and a body.
    let refs: Vec<&str> = html
        .split("\"/ui/assets/")
        .skip(1)
        .map(|r| r.split('"').next().unwrap())
        .collect();
    for want in [
        "app.js",
        "style.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
        "uPlot.LICENSE",
    ] {
        assert!(refs.contains(&want), "the page loads {want}: {refs:?}");
    }
    for r in &refs {
        let (s, ct, _, body) = get(&h.admin, &format!("/ui/assets/{r}"), None).await;
        assert_eq!(s, 200, "{r}");
        let expected = match r.rsplit('.').next().unwrap() {
            "js" => "text/javascript",
            "css" => "text/css",
            _ => "text/plain",
        };
        assert!(ct.starts_with(expected), "{r}: {ct}");
        assert!(body.len() > 100, "{r}: {} bytes", body.len());
    }
    let (s, _, _, body) = get(&h.admin, "/ui/assets/uPlot.LICENSE", None).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8(body).unwrap().contains("MIT"));
    let (s, _, _, _) = get(&h.admin, "/ui/assets/../Cargo.toml", None).await;
    assert_eq!(s, 404);
    let (s, _, _, _) = get(&h.admin, "/ui/assets/nope.js", None).await;
    assert_eq!(s, 404);
    // The page polls the admin port's own workload API: no script may call another origin.
    let (_, _, _, js) = get(&h.admin, "/ui/assets/app.js", None).await;
    let js = String::from_utf8(js).unwrap();
    assert!(
        js.contains("'/v1/workloads'"),
        "the page reads /v1/workloads"
    );
    assert!(js.contains("/history"), "the page reads the history");
    assert!(!js.contains("http://") && !js.contains("https://"), "{js}");
}

#[tokio::test]
async fn history_answers_on_the_admin_port_with_each_number_and_how_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), None).await;
    // Nothing yet: 404 naming the workload.
    let (s, v) = get_json(&h.admin, "/v1/workloads/shop/checkout/history").await;
    assert_eq!(s, 404, "{v}");
    assert!(v["message"].as_str().unwrap().contains("shop/checkout"));

    let steps = [
        (1, 50.0, 2.0, DriftRisk::Low, 100.0),
        (2, 50.0, 9.0, DriftRisk::Medium, 100.0),
        (3, 50.0, 20.0, DriftRisk::High, 50.0),
    ];
    for (i, (epoch, mean, sd, risk, qps)) in steps.iter().enumerate() {
        let r = report(*epoch, *mean, *sd, *risk, *qps);
        let s = submit(
            &h.app,
            "/v1/signals/submit",
            serde_json::to_vec(&r).unwrap(),
        )
        .await;
        assert_eq!(s, 200);
        if i < 2 {
            assert_eq!(submit_pcs(&h.app, *epoch).await, 200);
        }
    }

    // The admin port answers without any caller identity (no client certificate).
    let (s, v) = get_json(&h.admin, "/v1/workloads/shop/checkout/history").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["namespace"], "shop");
    assert_eq!(v["workload"], "checkout");
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 3, "{v}");
    let risks: Vec<&str> = pts
        .iter()
        .map(|p| p["driftRisk"].as_str().unwrap())
        .collect();
    assert_eq!(risks, ["low", "medium", "high"]);
    assert_eq!(pts[2]["driftRiskLevel"], 2);
    let epochs: Vec<u64> = pts.iter().map(|p| p["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [1, 2, 3]);
    assert!(pts.iter().all(|p| p["pod"] == "checkout-0"));
    assert!(
        pts.windows(2)
            .all(|w| w[0]["atMs"].as_i64() <= w[1]["atMs"].as_i64())
    );
    // Each window statistic carries its signal, window, n and bounds.
    let w = &pts[1]["windows"][0];
    assert_eq!(w["signal"], "cpu");
    assert_eq!(w["window"], "5m");
    assert_eq!(w["mean"], 50.0);
    assert_eq!(w["stdev"], 9.0);
    assert_eq!(w["n"], 30);
    assert_eq!(w["driftRisk"], "medium");
    assert!(w["windowStart"].as_str().unwrap().ends_with('Z'));
    assert!(w["windowEnd"].as_str().unwrap().ends_with('Z'));
    assert_eq!(pts[1]["windows"][1]["window"], "15m");
    // PCS counts are the running counts when the report was applied (PCS 1 came after report 1).
    assert_eq!(pts[0]["pcs"]["accepted"], 0);
    assert_eq!(pts[1]["pcs"]["accepted"], 1);
    assert_eq!(pts[2]["pcs"]["accepted"], 2);
    // FinOps: the third report's sample has half the qps of the baseline (median 100): FTI 2.
    assert_eq!(pts[0]["finops"]["fti"], 1.0);
    let f3 = pts[2]["finops"]["fti"].as_f64().unwrap();
    assert!((f3 - 2.0).abs() < 1e-9, "{f3}");
    let avg = pts[2]["finops"]["ftiAvg"].as_f64().unwrap();
    assert!((avg - 4.0 / 3.0).abs() < 1e-9, "{avg}");
    assert_eq!(pts[2]["finops"]["samples"], 3);
    assert_eq!(
        pts[2]["finops"]["grade"], "UNKNOWN",
        "fewer than 10 samples"
    );
    // How it was made.
    let meta = &v["meta"];
    assert_eq!(meta["engineVersion"], coherence_core::ENGINE_VERSION);
    assert!(meta["method"].as_str().unwrap().contains("volatilityIndex"));
    assert_eq!(meta["inputs"]["capacity"], HISTORY_POINTS);
    assert_eq!(meta["inputs"]["retained"], 3);
    assert_eq!(meta["finopsThresholds"]["ok"], 1.0);
    assert_eq!(meta["finopsThresholds"]["warn"], 1.05);

    // ?limit keeps the newest points; a bad limit names the field.
    let (s, v) = get_json(&h.admin, "/v1/workloads/shop/checkout/history?limit=2").await;
    assert_eq!(s, 200);
    let epochs: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [2, 3]);
    let (s, v) = get_json(&h.admin, "/v1/workloads/shop/checkout/history?limit=many").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["field"], "limit");

    // The same workload answers on the admin port exactly as on the TLS port.
    let (s, admin_list) = get_json(&h.admin, "/v1/workloads").await;
    assert_eq!(s, 200);
    assert_eq!(admin_list["workloads"][0]["driftRisk"], "high");
    let (s, admin_one) = get_json(&h.admin, "/v1/workloads/shop/checkout").await;
    assert_eq!(s, 200);
    let (s, tls_one) = get_json(&h.app, "/v1/workloads/shop/checkout").await;
    assert_eq!(s, 200);
    assert_eq!(admin_one, tls_one);
    let (s, tls_hist) = get_json(&h.app, "/v1/workloads/shop/checkout/history").await;
    assert_eq!(s, 200);
    assert_eq!(tls_hist["points"].as_array().unwrap().len(), 3);
    // Submitting stays on the TLS port only.
    let (s, _, _, _) = get(&h.admin, "/v1/signals/submit", None).await;
    assert_eq!(s, 404);

    // A restart rebuilds the history from the WAL.
    drop(h);
    let h = harness(dir.path(), None).await;
    let (s, again) = get_json(&h.admin, "/v1/workloads/shop/checkout/history").await;
    assert_eq!(s, 200);
    let risks: Vec<&str> = again["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["driftRisk"].as_str().unwrap())
        .collect();
    assert_eq!(risks, ["low", "medium", "high"]);
}

#[test]
fn the_history_is_a_ring_buffer_of_the_newest_points() {
    let mut views = Views::default();
    let extra = 7;
    for epoch in 1..=(HISTORY_POINTS as u64 + extra) {
        let r = report(epoch, 50.0, 1.0, DriftRisk::Low, 100.0);
        views.apply_signals(&r, epoch as i64 * 1_000);
    }
    let h = views.history("shop", "checkout", None).unwrap();
    let pts = h["points"].as_array().unwrap();
    assert_eq!(pts.len(), HISTORY_POINTS);
    assert_eq!(pts[0]["epoch"], extra + 1);
    assert_eq!(
        pts[HISTORY_POINTS - 1]["epoch"],
        HISTORY_POINTS as u64 + extra
    );
    assert_eq!(h["meta"]["inputs"]["retained"], HISTORY_POINTS);
    let h = views.history("shop", "checkout", Some(5)).unwrap();
    assert_eq!(h["points"].as_array().unwrap().len(), 5);
    assert_eq!(h["meta"]["inputs"]["returned"], 5);
    assert!(views.history("shop", "other", None).is_none());
}

#[tokio::test]
async fn with_metrics_credentials_the_dashboard_and_its_data_take_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(
        dir.path(),
        Some(MetricsAuth {
            user: "ops".into(),
            pass: "s3cret".into(),
        }),
    )
    .await;
    // base64("ops:s3cret")
    let good = "Basic b3BzOnMzY3JldA==";
    for path in [
        "/ui",
        "/ui/assets/app.js",
        "/v1/workloads",
        "/v1/workloads/shop/checkout/history",
        "/metrics",
    ] {
        let (s, _, headers, _) = get(&h.admin, path, None).await;
        assert_eq!(s, 401, "{path}");
        assert!(headers.contains("www-authenticate"), "{path}: {headers}");
        let (s, _, _, _) = get(&h.admin, path, Some("Basic b3BzOndyb25n")).await;
        assert_eq!(s, 401, "{path} with a wrong password");
    }
    let (s, _, _, _) = get(&h.admin, "/ui", Some(good)).await;
    assert_eq!(s, 200);
    let (s, _, _, _) = get(&h.admin, "/v1/workloads", Some(good)).await;
    assert_eq!(s, 200);
    // Probes stay open for the kubelet.
    let (s, _, _, _) = get(&h.admin, "/healthz", None).await;
    assert_eq!(s, 200);
}
