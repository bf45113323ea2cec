//! The real `coherence-sidecar` binary in situations a running agent meets: sources with bad
//! input (a wrong AES key, malformed exposition lines, an HTTP API that pages and answers 5xx)
//! while records keep flowing, the local API's probes and errors, Ed25519 signing checked by a
//! verifier holding the public key, an outbox that overflows while the verifier is down, and a
//! latency spike that the detectors report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use coherence_core::linecipher::{LineCipher, NONCE_LEN};
use coherence_core::telemetry::{format_ts_ms, parse_ts_ms};
use common::{
    Feeder, Sidecar, Verifier, free_port, now_ms, num, verifier_on_new_certs, wait_status,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);
const SIDECAR_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_KEY: &str = "HxwdHh8YGRobFBUWFxAREhMMDQ4PCAkKCwQFBgcAAQI=";

/// A sidecar configuration for shard `shop/web/web-0` delivering to `v` with the `client`
/// certificate, its outbox in `dir/outbox` (at most `max_bytes`); `sources` and `extra` are
/// YAML put in as they are.
fn config(
    dir: &Path,
    v: &Verifier,
    api: u16,
    sources: &str,
    extra: &str,
    max_bytes: u64,
) -> PathBuf {
    let certs = &v.certs;
    let yaml = format!(
        r#"identity: {{namespace: shop, workload: web, pod: web-0}}
sources:
{sources}
epoch: 1s
verifier:
  endpoint: {endpoint}
  ca: {ca}
  cert: {cert}
  key: {key}
  timeout: 2s
outbox:
  dir: {outbox}
  maxBytes: {max_bytes}
  segmentBytes: {segment_bytes}
delivery:
  backoffBase: 50ms
  backoffMax: 300ms
  maxAttempts: 100000
api:
  listen: 127.0.0.1:{api}
{extra}
"#,
        endpoint = v.endpoint(),
        ca = certs.join("ca.crt").display(),
        cert = certs.join("client.crt").display(),
        key = certs.join("client.key").display(),
        outbox = dir.join("outbox").display(),
        segment_bytes = (max_bytes / 4).min(4 << 20),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn query_map(q: &Option<String>) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{}", q.as_deref().unwrap_or("")))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// What the summary API served.
#[derive(Default)]
struct Summary {
    requests: AtomicU64,
    failed: AtomicU64,
    later_pages: AtomicU64,
}

/// `/signals/summary`: items every 250 ms between `since` and `until`, `pageSize` per page,
/// pages numbered; every fourth request answers 503 instead.
async fn summary(State(s): State<Arc<Summary>>, RawQuery(q): RawQuery) -> (StatusCode, String) {
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    if n % 4 == 3 {
        s.failed.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "busy".into());
    }
    let q = query_map(&q);
    let since = parse_ts_ms(&q["since"]).unwrap();
    let until = parse_ts_ms(&q["until"]).unwrap();
    let size: usize = q["pageSize"].parse().unwrap();
    let page: usize = q.get("page").map_or(1, |p| p.parse().unwrap());
    if page > 1 {
        s.later_pages.fetch_add(1, Ordering::Relaxed);
    }
    let step = 250;
    let first = (since + step - 1).div_euclid(step) * step;
    let items: Vec<Value> = (0..)
        .map(|k| first + k * step)
        .take_while(|t| *t <= until)
        .skip((page - 1) * size)
        .take(size)
        .map(|t| {
            json!({"timestamp": format_ts_ms(t), "coherenceScore": 80 + (t / step) % 9,
                   "eventCount": (t / step) % 4})
        })
        .collect();
    (StatusCode::OK, json!({ "items": items }).to_string())
}

/// An exposition with good series and malformed lines among them.
async fn exposition(State(n): State<Arc<AtomicU64>>) -> String {
    let i = n.fetch_add(1, Ordering::Relaxed);
    format!(
        "# TYPE app_queue_depth gauge\n\
         app_queue_depth {}\n\
         app_queue_depth{{ broken\n\
         this is not a sample line\n\
         # TYPE app_temp gauge\n\
         app_temp {}\n\
         app_bad_value abc\n",
        10 + i % 4,
        36.0 + (i % 3) as f64 * 0.1
    )
}

/// Reads every body the verifier received, as JSON.
fn received(wal: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    coherence_verifier::wal::read_only(wal, |e| {
        let body = match e {
            coherence_verifier::wal::Entry::Body(b) => b.body,
            coherence_verifier::wal::Entry::AppliedBody(b, _) => b.body,
            coherence_verifier::wal::Entry::Applied(_) => return,
        };
        if let Ok(v) = serde_json::from_slice(&body) {
            out.push(v);
        }
    })
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_from_every_kind_of_source_is_counted_and_records_keep_flowing() {
    let started = now_ms();
    let (dir, _, v) = verifier_on_new_certs(&[], &[]).await;

    let api_state = Arc::new(Summary::default());
    let api_addr = serve(
        Router::new()
            .route("/signals/summary", get(summary))
            .with_state(api_state.clone()),
    )
    .await;
    let prom_addr = serve(
        Router::new()
            .route("/metrics", get(exposition))
            .with_state(Arc::new(AtomicU64::new(0))),
    )
    .await;
    // Lines sealed with another key than the sidecar's.
    let sealed = dir.path().join("sealed.jsonl");
    let other = LineCipher::from_key_b64(OTHER_KEY).unwrap();
    let _feeder = Feeder::start(&sealed, Duration::from_millis(100), move |i| {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&i.to_le_bytes());
        let line = json!({"ts": now_ms(), "qps": 5 + i % 3}).to_string();
        Value::String(other.encrypt_line_with_nonce(&line, nonce).unwrap())
    });
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    let sources = format!(
        r#"  - {{name: sealed, type: jsonl, path: {sealed}, interval: 200ms, encrypted: true}}
  - name: prom
    type: prometheus
    url: http://{prom_addr}/metrics
    interval: 250ms
    timeout: 200ms
    metrics: ["re:app_.*"]
  - name: summary
    type: http
    url: http://{api_addr}/signals/summary
    interval: 1s
    timeout: 900ms
    tokenFile: {token}
    pageSize: 2
    lookback: 5s
    retries: 3
    backoffBase: 20ms"#,
        sealed = sealed.display(),
        token = dir.path().join("token").display(),
    );
    let api = free_port();
    let cfg = config(
        dir.path(),
        &v,
        api,
        &sources,
        "windows: [10s, 1m]\npcs: {signal: coherenceScore}",
        64 << 20,
    );
    let mut s = Sidecar::start_with(
        &cfg,
        api,
        &dir.path().join("sidecar.log"),
        None,
        &[("COHERENCE_AES_KEY", SIDECAR_KEY)],
    );
    let st = wait_status(
        &mut s,
        "records from the summary API delivered while bad input is counted",
        LIMIT,
        |st| {
            num(st, &["epochs", "pcsBuilt"]) >= 2
                && num(st, &["delivery", "sent_ok"]) >= 4
                && num(st, &["sources", "sealed", "skipped", "decrypt"]) >= 10
                && num(st, &["sources", "summary", "pollErrors", "status_503"]) >= 1
                && num(st, &["sources", "prom", "skipped", "malformed_line"]) >= 3
        },
    )
    .await;
    assert!(s.exited().is_none(), "still running");

    // The wrong key: every line skipped as `decrypt`, none taken, the process goes on.
    let sealed_src = &st["sources"]["sealed"];
    assert_eq!(num(sealed_src, &["samples"]), 0, "{sealed_src}");
    let metrics = s.api().get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains(
            r#"coherence_sidecar_source_skipped_total{source="sealed",reason="decrypt"}"#
        ),
        "{metrics}"
    );
    // Malformed exposition lines counted; the good series are used.
    for signal in ["app_queue_depth", "app_temp"] {
        let (code, m) = s
            .get(&format!("/coherence/metrics?window=10s&signal={signal}"))
            .await;
        assert_eq!(code, 200, "{m}");
        assert!(m["n"].as_u64().unwrap() > 0, "{m}");
        assert_eq!(m["inputs"]["source"], "prom");
    }
    assert!(
        metrics.contains(
            r#"coherence_sidecar_source_skipped_total{source="prom",reason="malformed_line"}"#
        ),
        "{metrics}"
    );
    // The summary API paged and failed now and then; its signal is the PCS's.
    assert!(api_state.later_pages.load(Ordering::Relaxed) >= 1);
    assert!(api_state.failed.load(Ordering::Relaxed) >= 1);
    let summary_src = &st["sources"]["summary"];
    assert!(num(summary_src, &["samples"]) > 0, "{summary_src}");
    assert_eq!(st["primarySignal"], "coherenceScore");
    assert_eq!(num(&st, &["delivery", "dead_lettered"]), 0, "{st}");

    // When samples last arrived, and how long each source's last poll took.
    let last_ingest = parse_ts_ms(st["lastIngest"].as_str().unwrap()).unwrap();
    let now = parse_ts_ms(st["now"].as_str().unwrap()).unwrap();
    assert!(
        started <= last_ingest && last_ingest <= now,
        "{started} ≤ {last_ingest} ≤ {now}"
    );
    for name in ["prom", "summary"] {
        let src = &st["sources"][name];
        assert!(src["lastLatencyMs"].as_f64().unwrap() >= 0.0, "{src}");
        let ok = parse_ts_ms(src["lastOk"].as_str().unwrap()).unwrap();
        assert!(started <= ok && ok <= now, "{src}");
        assert!(
            metrics.contains(&format!(
                "coherence_sidecar_source_latency_seconds{{source=\"{name}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(st["sources"]["sealed"]["lastLatencyMs"].is_number());

    // The probes and the API's errors.
    let health = s.api().get("/healthz").await.unwrap();
    assert_eq!((health.status, health.text().trim()), (200, "ok"));
    let (code, e) = s.get("/coherence/predict?window=2h").await;
    assert_eq!(code, 400, "{e}");
    assert_eq!(e["field"], "window");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.starts_with("window:") && msg.contains("\"2h\"") && msg.contains("10s, 1m"),
        "{msg}"
    );

    // The PCS of an epoch is accepted by the verifier.
    let st = wait_status(&mut s, "an epoch's PCS delivered", LIMIT, |st| {
        num(st, &["outbox", "pending"]) == 0 && st["lastEpoch"]["pcsId"].is_string()
    })
    .await;
    let (code, rec) = v.record(st["lastEpoch"]["pcsId"].as_str().unwrap()).await;
    assert_eq!(code, 200, "{rec}");
    assert!(s.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_signed_with_ed25519_are_accepted_by_a_verifier_holding_the_public_key() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let seed = [7u8; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let (seed_b64, public_b64) = (b64.encode(seed), b64.encode(public));

    let (dir, _, v) = verifier_on_new_certs(
        &[],
        &[
            ("PCS_SIGN_ALG", "ed25519"),
            ("PCS_ED25519_PUB_B64", public_b64.as_str()),
        ],
    )
    .await;
    let app = dir.path().join("app.jsonl");
    let _feeder = Feeder::start(
        &app,
        Duration::from_millis(100),
        |i| json!({"lat": 20 + i % 7}),
    );
    let api = free_port();
    let cfg = config(
        dir.path(),
        &v,
        api,
        &format!(
            "  - {{name: app, type: jsonl, path: {}, interval: 200ms}}",
            app.display()
        ),
        "windows: [10s]",
        64 << 20,
    );
    let mut s = Sidecar::start_with(
        &cfg,
        api,
        &dir.path().join("sidecar.log"),
        None,
        &[
            ("PCS_SIGN_ALG", "ed25519"),
            ("PCS_ED25519_KEY_B64", seed_b64.as_str()),
        ],
    );
    let st = wait_status(&mut s, "Ed25519 records accepted", LIMIT, |st| {
        num(st, &["epochs", "pcsBuilt"]) >= 2
            && num(st, &["delivery", "sent_ok"]) >= 4
            && num(st, &["outbox", "pending"]) == 0
            && st["lastEpoch"]["pcsId"].is_string()
    })
    .await;
    assert_eq!(num(&st, &["delivery", "dead_lettered"]), 0, "{st}");
    let by_status = st["delivery"]["by_status"].as_object().unwrap();
    assert!(
        by_status.keys().all(|k| k == "200" || k == "202"),
        "{by_status:?}"
    );
    let (code, rec) = v.record(st["lastEpoch"]["pcsId"].as_str().unwrap()).await;
    assert_eq!(code, 200, "{rec}");
    assert!(matches!(rec["status"].as_u64(), Some(200 | 202)), "{rec}");
    assert!(s.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_that_overflows_marks_later_records_degraded_and_drops_the_oldest() {
    // The verifier is down from the start: its ports are known, nothing listens.
    let (dir, _, mut v) = verifier_on_new_certs(&[], &[]).await;
    v.kill();
    let app = dir.path().join("app.jsonl");
    // Sixty signals: each epoch's SignalReport is large, so the smallest outbox (64 KiB) fills
    // within a few epochs.
    let _feeder = Feeder::start(&app, Duration::from_millis(100), |i| {
        let mut m = serde_json::Map::new();
        m.insert("lat".into(), (20 + i % 7).into());
        for k in 0..60 {
            m.insert(format!("signal_{k:02}"), (k + i % 5).into());
        }
        Value::Object(m)
    });
    let api = free_port();
    let cfg = config(
        dir.path(),
        &v,
        api,
        &format!(
            "  - {{name: app, type: jsonl, path: {}, interval: 200ms}}",
            app.display()
        ),
        "windows: [10s]\npcs: {signal: lat}",
        65536,
    );
    let mut s = Sidecar::start(&cfg, api, &dir.path().join("sidecar.log"));
    let st = wait_status(&mut s, "the outbox overflowed", LIMIT, |st| {
        num(st, &["outbox", "overflow_total"]) >= 4 && num(st, &["epochs", "pcsBuilt"]) >= 4
    })
    .await;
    assert_eq!(st["outbox"]["degraded"], true, "{st}");
    assert!(num(&st, &["outbox", "pending_bytes"]) <= 65536, "{st}");
    let metrics = s.api().get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("coherence_sidecar_degraded 1"),
        "{metrics}"
    );

    // The verifier comes back: what is left is delivered and the outbox is no longer degraded.
    v.restart();
    v.ready().await;
    let st = wait_status(&mut s, "the outbox drained", LIMIT, |st| {
        num(st, &["outbox", "pending"]) == 0 && st["outbox"]["degraded"] == false
    })
    .await;
    // One more epoch after the drain, so a record built when no longer degraded is delivered.
    let next = num(&st, &["outbox", "next_seq"]);
    let st = wait_status(&mut s, "records after the drain", LIMIT, |st| {
        num(st, &["outbox", "next_seq"]) >= next + 2 && num(st, &["outbox", "pending"]) == 0
    })
    .await;
    assert!(s.terminate().success());
    let overflowed = num(&st, &["outbox", "overflow_total"]);

    // The dead-letter file holds the oldest records: nothing had been delivered, so exactly
    // seq 1 ..= overflowed, each once, for the overflow.
    let dlq: Vec<Value> = std::fs::read_to_string(dir.path().join("outbox/dlq.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = dlq.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=overflowed).collect::<Vec<_>>(), "{dlq:?}");
    assert!(dlq.iter().all(|l| l["reason"] == "outbox_overflow"));
    assert_eq!(num(&st, &["outbox", "dlq_total"]), overflowed);

    // What the verifier received: none of the dropped records, and the PCS records built while
    // the outbox was degraded say so; those built before and after do not.
    assert!(v.terminate().success());
    let mut pcs: Vec<(u64, bool, Value)> = received(&v.wal)
        .into_iter()
        .filter(|b| b.get("pcs_id").is_some())
        .map(|b| {
            (
                b["ft"]["outbox_seq"].as_u64().unwrap(),
                b["ft"]["degraded"].as_bool().unwrap(),
                b["ft"]["fallbacks"].clone(),
            )
        })
        .collect();
    pcs.sort_by_key(|p| p.0);
    pcs.dedup_by_key(|p| p.0);
    assert!(pcs.iter().all(|p| p.0 > overflowed), "{pcs:?}");
    let degraded: Vec<&(u64, bool, Value)> = pcs.iter().filter(|p| p.1).collect();
    assert!(!degraded.is_empty(), "{pcs:?}");
    assert!(
        degraded.iter().all(|p| p.2 == json!(["outbox_overflow"])),
        "{pcs:?}"
    );
    assert!(
        pcs.iter().filter(|p| !p.1).all(|p| p.2 == json!([])),
        "{pcs:?}"
    );
    // Degraded from the overflow until the drain: one run of degraded records, and the last
    // record (built after the drain) is not degraded.
    let flips = pcs.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert!(flips <= 2, "{pcs:?}");
    assert!(!pcs.last().unwrap().1, "{pcs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_spike_is_found_reported_and_shown_as_an_incident() {
    let (dir, _, v) = verifier_on_new_certs(&[], &[]).await;
    let app = dir.path().join("app.jsonl");
    // Steady for the first 8 s, then every other sample four times as high.
    let _feeder = Feeder::start(&app, Duration::from_millis(50), |i| {
        let v = if i >= 160 && i % 2 == 0 {
            400.0
        } else {
            100.0 + (i % 3) as f64
        };
        json!({ "latency_p95_ms": v })
    });
    let api = free_port();
    let cfg = config(
        dir.path(),
        &v,
        api,
        &format!(
            "  - {{name: app, type: jsonl, path: {}, interval: 100ms}}",
            app.display()
        ),
        "windows: [6s]",
        64 << 20,
    );
    let mut s = Sidecar::start(&cfg, api, &dir.path().join("sidecar.log"));
    let st = wait_status(&mut s, "an incident in /status", LIMIT, |st| {
        st["incidents"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let incident = &st["incidents"][0];
    assert_eq!(incident["workload"], "shop/web", "{incident}");
    assert!(
        ["spike", "variance_escalation", "robust_z", "trend"]
            .contains(&incident["pattern"].as_str().unwrap()),
        "{incident}"
    );
    assert!(
        incident["narrative"]
            .as_str()
            .unwrap()
            .contains("latency_p95_ms"),
        "{incident}"
    );
    assert!(incident["risk"].as_f64().unwrap() > 0.0, "{incident}");
    // The findings travel in the SignalReport to the verifier.
    wait_status(&mut s, "the reports delivered", LIMIT, |st| {
        num(st, &["outbox", "pending"]) == 0
    })
    .await;
    assert!(s.terminate().success());
    let mut v = v;
    assert!(v.terminate().success());
    let findings: Vec<Value> = received(&v.wal)
        .into_iter()
        .filter(|b| b.get("report_id").is_some())
        .flat_map(|b| b["findings"].as_array().cloned().unwrap_or_default())
        .collect();
    // The steady samples find nothing; every finding is about the spike, by the detectors that
    // compare the window's last third with the rest.
    assert!(!findings.is_empty());
    assert!(
        findings.iter().all(|f| f["signal"] == "latency_p95_ms"
            && ["spike", "variance_escalation", "robust_z", "trend"]
                .contains(&f["kind"].as_str().unwrap_or(""))
            && f["risk"].as_f64().unwrap() > 0.0),
        "{findings:?}"
    );
    assert!(
        findings.iter().any(|f| f["kind"] == "variance_escalation"),
        "{findings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_address_serves_metrics_and_health_only() {
    // No verifier is needed for the local API: its ports are known, nothing listens.
    let (dir, _, mut v) = verifier_on_new_certs(&[], &[]).await;
    v.kill();
    let app = dir.path().join("app.jsonl");
    let _feeder = Feeder::start(
        &app,
        Duration::from_millis(100),
        |i| json!({"lat": 20 + i % 7}),
    );
    let (api, metrics_port) = (free_port(), free_port());
    let cfg = config(
        dir.path(),
        &v,
        api,
        &format!(
            "  - {{name: app, type: jsonl, path: {}, interval: 200ms}}",
            app.display()
        ),
        &format!(
            "windows: [10s]\napi:\n  listen: 127.0.0.1:{api}\n  metricsListen: 127.0.0.1:{metrics_port}"
        ),
        64 << 20,
    );
    // `config` writes `api.listen` itself; the second `api` key replaces it with both.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let first = format!("api:\n  listen: 127.0.0.1:{api}\n");
    let text = text.replacen(&first, "", 1);
    std::fs::write(&cfg, text).unwrap();
    let mut s = Sidecar::start(&cfg, api, &dir.path().join("sidecar.log"));
    wait_status(&mut s, "the sidecar is up", LIMIT, |st| st.is_object()).await;

    let m =
        coherence_verifier::client::Client::new(&format!("http://127.0.0.1:{metrics_port}"), None)
            .unwrap();
    let health = m.get("/healthz").await.unwrap();
    assert_eq!((health.status, health.text().trim()), (200, "ok"));
    let metrics = m.get("/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(text.contains("coherence_sidecar_"), "{text}");
    for path in [
        "/status",
        "/coherence/metrics?window=10s",
        "/coherence/predict?window=10s",
    ] {
        let r = m.get(path).await.unwrap();
        assert_eq!(r.status, 404, "{path} on the metrics address");
        let (code, _) = s.get(path).await;
        assert_ne!(code, 404, "{path} on api.listen");
    }
    assert!(s.terminate().success());
}
