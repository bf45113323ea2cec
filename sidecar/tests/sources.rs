//! The sources against real local HTTP servers and real files.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use coherence_core::linecipher::{LineCipher, NONCE_LEN};
use coherence_core::telemetry::{format_ts_ms, parse_ts_ms};
use coherence_sidecar::sample::{Batch, Sample, SourceStats, SourceStatsInner};
use coherence_sidecar::sources::{self, Context, SourceConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_KEY: &str = "HxwdHh8YGRobFBUWFxAREhMMDQ4PCAkKCwQFBgcAAQI=";

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

struct Running {
    rx: mpsc::Receiver<Batch>,
    stats: Arc<SourceStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn config(yaml: &str) -> SourceConfig {
    let cfg: SourceConfig = serde_yaml_ng::from_str(yaml).unwrap();
    cfg.validate("sources[0]").unwrap();
    cfg
}

fn start(cfg: SourceConfig, cipher: Option<LineCipher>) -> Running {
    let (tx, rx) = mpsc::channel(64);
    let (stop, shutdown) = watch::channel(false);
    let stats = Arc::new(SourceStats::default());
    let mut ctx = Context::new(tx, stats.clone(), shutdown);
    if let Some(c) = cipher {
        ctx = ctx.with_cipher(c);
    }
    let task = sources::spawn(cfg, ctx);
    Running {
        rx,
        stats,
        stop,
        task,
    }
}

impl Running {
    /// Batches until `done` holds for the samples so far (or 10 s pass).
    async fn samples_until(&mut self, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&all) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(b)) => all.extend(b.samples),
                _ => break,
            }
        }
        all
    }

    /// Stops the source (it must stop promptly) and returns its figures.
    async fn stop(self) -> SourceStatsInner {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the source stops promptly")
            .unwrap();
        self.stats.snapshot()
    }
}

fn of(samples: &[Sample], signal: &str) -> Vec<(i64, f64)> {
    samples
        .iter()
        .filter(|s| s.signal == signal)
        .map(|s| (s.ts_ms, s.value))
        .collect()
}

fn count(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Prometheus

const T0: i64 = 1_700_000_000_000;

async fn exposition(State(n): State<Arc<AtomicU64>>) -> String {
    let i = n.fetch_add(1, Ordering::SeqCst);
    // Grows by 50 per second of exposition time, restarts (a process restart) at scrape 4.
    let v = if i < 4 { i * 50 } else { (i - 4) * 50 + 10 };
    let ts = T0 + i64::try_from(i).unwrap() * 1000;
    format!(
        "# HELP reqs_total Requests.\n# TYPE reqs_total counter\n\
         reqs_total {v} {ts}\n\
         temp{{room=\"a \\\"b\\\"\"}} 20.5 {ts}\n\
         ignored_metric 1\n\
         this line is not valid\n\
         reqs_total{{bad=\"x\" 1\n"
    )
}

#[tokio::test]
async fn prometheus_counters_become_rates_and_malformed_lines_are_counted() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/metrics", get(exposition))
        .with_state(scrapes.clone());
    let addr = serve(app).await;
    let cfg = config(&format!(
        "type: prometheus\nname: node\nurl: http://{addr}/metrics\ninterval: 50ms\ntimeout: 50ms\nmetrics: [reqs_total, 're:te.p']\n"
    ));
    let mut run = start(cfg, None);
    let got = run.samples_until(|s| of(s, "temp").len() >= 6).await;
    let stats = run.stop().await;
    let temps = of(&got, "temp");
    assert_eq!(
        &temps[..6],
        &(0..6).map(|i| (T0 + i * 1000, 20.5)).collect::<Vec<_>>()[..]
    );
    // Scrapes 1..3: +50 per second; scrape 4 is a reset (no sample); scrape 5 again 50/s.
    let rates = of(&got, "reqs_total");
    assert_eq!(
        &rates[..4],
        &[
            (T0 + 1000, 50.0),
            (T0 + 2000, 50.0),
            (T0 + 3000, 50.0),
            (T0 + 5000, 50.0)
        ]
    );
    assert!(rates.iter().all(|r| r.1 == 50.0), "{rates:?}");
    assert_eq!(count(&stats.skipped, "counter_reset"), 1);
    assert_eq!(count(&stats.skipped, "malformed_line"), 2 * stats.polls_ok);
    let served = scrapes.load(Ordering::SeqCst);
    assert!(stats.polls_ok <= served && served - stats.polls_ok <= 1);
    assert!(stats.poll_errors.is_empty(), "{:?}", stats.poll_errors);
}

#[tokio::test]
async fn prometheus_unreachable_endpoint_is_a_counted_poll_error() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cfg = config(&format!(
        "type: prometheus\nname: node\nurl: http://{addr}/metrics\ninterval: 50ms\ntimeout: 50ms\nmetrics: [x]\n"
    ));
    let run = start(cfg, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = run.stop().await;
    assert!(count(&stats.poll_errors, "connect") >= 2, "{stats:?}");
    assert_eq!(stats.polls_ok, 0);
}

// ---------------------------------------------------------------------------------------------
// HTTP summaries

#[derive(Default)]
struct Api {
    items: Mutex<Vec<serde_json::Value>>,
    requests: AtomicU64,
    unavailable: AtomicU64,
    unauthorised: AtomicU64,
}

fn query_map(q: &Option<String>) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{}", q.as_deref().unwrap_or("")))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn item_ts(v: &serde_json::Value) -> i64 {
    match (v.get("timestamp"), v.get("ts")) {
        (Some(t), _) => parse_ts_ms(t.as_str().unwrap()).unwrap(),
        (_, Some(t)) => t.as_i64().unwrap(),
        _ => unreachable!(),
    }
}

/// Items with `since ≤ ts ≤ until`, in pages; every third request answers 503 instead.
fn answer(
    api: &Api,
    headers: &HeaderMap,
    q: &Option<String>,
    cursor_mode: bool,
) -> (StatusCode, String) {
    let n = api.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tok-1") {
        api.unauthorised.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, "{}".into());
    }
    if n % 3 == 0 {
        api.unavailable.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "busy".into());
    }
    let q = query_map(q);
    let since = parse_ts_ms(&q["since"]).unwrap();
    let until = parse_ts_ms(&q["until"]).unwrap();
    let size: usize = q["pageSize"].parse().unwrap();
    let items: Vec<serde_json::Value> = api
        .items
        .lock()
        .unwrap()
        .iter()
        .filter(|i| (since..=until).contains(&item_ts(i)))
        .cloned()
        .collect();
    let start = if cursor_mode {
        q.get("cursor").map_or(0, |c| c.parse().unwrap())
    } else {
        (q.get("page").map_or(1, |p| p.parse::<usize>().unwrap()) - 1) * size
    };
    let page: Vec<_> = items.iter().skip(start).take(size).cloned().collect();
    let body = if cursor_mode {
        let next = (start + size < items.len()).then(|| (start + size).to_string());
        serde_json::json!({"data": page, "nextCursor": next})
    } else {
        serde_json::Value::Array(page)
    };
    (StatusCode::OK, body.to_string())
}

fn item(i: i64, base: i64) -> serde_json::Value {
    let ts = base + i * 1000;
    if i % 2 == 0 {
        serde_json::json!({"timestamp": format_ts_ms(ts), "coherenceScore": i as f64 / 100.0,
            "agentStates": {"a": "ok", "b": "degraded"}, "eventCount": i})
    } else {
        serde_json::json!({"ts": ts, "coherence_score": i as f64 / 100.0,
            "agent_states": ["ok", "ok", "down"], "event_count": i})
    }
}

/// A summaries API serving 25 items from a minute ago: `(api, address, first timestamp)`.
async fn summary_api(cursor_mode: bool) -> (Arc<Api>, SocketAddr, i64) {
    let base = (coherence_now_ms() - 60_000) / 1000 * 1000;
    let api = Arc::new(Api::default());
    *api.items.lock().unwrap() = (0..25).map(|i| item(i, base)).collect();
    let app =
        Router::new()
            .route(
                "/signals/summary",
                get(
                    move |State(api): State<Arc<Api>>,
                          headers: HeaderMap,
                          RawQuery(q): RawQuery| async move {
                        answer(&api, &headers, &q, cursor_mode)
                    },
                ),
            )
            .with_state(api.clone());
    (api, serve(app).await, base)
}

async fn http_source_case(cursor_mode: bool) {
    let (api, addr, base) = summary_api(cursor_mode).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let mut cfg = config(&format!(
        "type: http\nname: summary\nurl: http://{addr}/signals/summary\ninterval: 100ms\ntimeout: 100ms\n\
         pageSize: 10\nretries: 3\nbackoffBase: 5ms\n{}",
        if cursor_mode {
            "tokenEnv: SUMMARY_TOKEN\n".to_string()
        } else {
            format!("tokenFile: {}\n", token.display())
        }
    ));
    cfg.resolve_env("sources[0]", &|k| {
        (k == "SUMMARY_TOKEN").then(|| "tok-1".into())
    })
    .unwrap();
    let mut run = start(cfg, None);
    let first = run.samples_until(|s| s.len() >= 75).await;
    // A new item later: it arrives once too.
    api.items.lock().unwrap().push(item(25, base));
    let later = run.samples_until(|s| !s.is_empty()).await;
    // A few more polls: nothing arrives twice.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = run.stop().await;
    let mut all = first.clone();
    all.extend(later.clone());
    let mut keys: Vec<(String, i64)> = all.iter().map(|s| (s.signal.clone(), s.ts_ms)).collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "a sample arrived twice");
    assert_eq!(first.len(), 75);
    assert_eq!(of(&first, "coherenceScore")[3], (base + 3000, 0.03));
    assert_eq!(of(&first, "agentStates")[2], (base + 2000, 2.0));
    assert_eq!(of(&first, "agentStates")[3], (base + 3000, 3.0));
    assert_eq!(of(&first, "eventCount")[24], (base + 24_000, 24.0));
    assert_eq!(
        of(&later, "eventCount"),
        vec![(base + 25_000, 25.0)],
        "{later:?}"
    );
    assert_eq!(later.len(), 3);
    let served_503 = api.unavailable.load(Ordering::SeqCst);
    assert!(served_503 >= 1);
    // A request in flight when the source stops may be served but not recorded.
    let recorded = count(&stats.poll_errors, "status_503");
    assert!(
        recorded <= served_503 && served_503 - recorded <= 1,
        "{recorded} {served_503}"
    );
    assert_eq!(api.unauthorised.load(Ordering::SeqCst), 0);
    assert_eq!(stats.samples, 78);
}

fn coherence_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn http_source_pages_by_number_retries_503_and_dedups() {
    http_source_case(false).await;
}

#[tokio::test]
async fn http_source_follows_cursors_with_a_token_from_the_environment() {
    http_source_case(true).await;
}

#[tokio::test]
async fn http_source_keeps_only_the_listed_signals() {
    let (_api, addr, base) = summary_api(false).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let cfg = config(&format!(
        "type: http\nname: summary\nurl: http://{addr}/signals/summary\ninterval: 100ms\ntimeout: 100ms\n\
         pageSize: 10\nretries: 3\nbackoffBase: 5ms\ntokenFile: {}\nsignals: [eventCount]\n",
        token.display()
    ));
    let mut run = start(cfg, None);
    let got = run.samples_until(|s| s.len() >= 25).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = run.stop().await;
    assert!(got.iter().all(|s| s.signal == "eventCount"), "{got:?}");
    assert_eq!(of(&got, "eventCount")[24], (base + 24_000, 24.0));
    assert_eq!(stats.samples, 25);
}

#[tokio::test]
async fn http_source_does_not_retry_4xx() {
    let api = Arc::new(Api::default());
    let app = Router::new()
        .route(
            "/s",
            get(
                |State(api): State<Arc<Api>>, h: HeaderMap, RawQuery(q): RawQuery| async move {
                    answer(&api, &h, &q, false)
                },
            ),
        )
        .with_state(api.clone());
    let addr = serve(app).await;
    let cfg = config(&format!(
        "type: http\nname: s\nurl: http://{addr}/s\ninterval: 100ms\ntimeout: 100ms\nretries: 3\nbackoffBase: 5ms\n"
    ));
    let run = start(cfg, None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let stats = run.stop().await;
    // No token: every request is a 401, one per poll, never retried.
    let requests = api.requests.load(Ordering::SeqCst);
    assert!(requests >= 2);
    let recorded = count(&stats.poll_errors, "status_401");
    assert!(
        recorded <= requests && requests - recorded <= 1,
        "{recorded} {requests}"
    );
    assert_eq!(stats.polls_ok, 0);
}

// ---------------------------------------------------------------------------------------------
// Datadog

#[derive(Default)]
struct Dd {
    calls: Mutex<BTreeMap<String, u64>>,
}

async fn dd_query(
    State(dd): State<Arc<Dd>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> (StatusCode, String) {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    if h("dd-api-key") != "api-1" || h("dd-application-key") != "app-1" {
        return (StatusCode::FORBIDDEN, r#"{"errors":["Forbidden"]}"#.into());
    }
    let q = query_map(&q);
    assert!(q["from"].parse::<i64>().unwrap() <= q["to"].parse::<i64>().unwrap());
    let query = q["query"].clone();
    let n = {
        let mut calls = dd.calls.lock().unwrap();
        let c = calls.entry(query.clone()).or_default();
        *c += 1;
        *c
    };
    let t = |s: i64| (T0 + s * 1000) as f64;
    let series = |scope: &str, points: serde_json::Value| {
        serde_json::json!({"metric": "m", "display_name": "m", "scope": scope, "interval": 10,
            "length": 3, "expression": "m", "unit": null, "pointlist": points,
            "start": T0, "end": T0 + 40_000, "aggr": "sum", "tag_set": []})
    };
    let body = match (query.as_str(), n) {
        ("sum:requests{*}.as_rate()", 1) => {
            serde_json::json!({"status": "ok", "res_type": "time_series", "query": query,
                "series": [series("*", serde_json::json!([[t(0), 2.0], [t(10), 4.0], [t(20), null]]))]})
        }
        ("sum:requests{*}.as_rate()", 2) => {
            return (StatusCode::BAD_GATEWAY, "upstream".into());
        }
        ("sum:requests{*}.as_rate()", _) => {
            serde_json::json!({"status": "ok", "res_type": "time_series", "query": query,
                "series": [series("*", serde_json::json!([[t(10), 4.0], [t(20), null], [t(30), 1.0], [t(40), 0.5]]))]})
        }
        ("avg:cpu{*} by {host}", _) => serde_json::json!({"status": "ok", "series": [
            series("host:a", serde_json::json!([[t(0), 10.0], [t(10), 11.0]])),
            series("host:b", serde_json::json!([[t(0), 20.0]])),
        ]}),
        _ => serde_json::json!({"status": "error", "error": "Error parsing query"}),
    };
    (StatusCode::OK, body.to_string())
}

#[tokio::test]
async fn datadog_rates_are_integrated_and_errors_counted() {
    let dd = Arc::new(Dd::default());
    let app = Router::new()
        .route("/api/v1/query", get(dd_query))
        .with_state(dd.clone());
    let addr = serve(app).await;
    let mut cfg = config(&format!(
        "type: datadog\nname: dd\nsite: http://{addr}\ninterval: 100ms\ntimeout: 100ms\nbackoffBase: 5ms\n\
         queries:\n\
         - {{signal: requests, query: 'sum:requests{{*}}.as_rate()', kind: rate}}\n\
         - {{signal: cpu, query: 'avg:cpu{{*}} by {{host}}'}}\n\
         - {{signal: broken, query: 'avg:(('}}\n"
    ));
    cfg.resolve_env("sources[0]", &|k| match k {
        "DD_API_KEY" => Some("api-1".into()),
        "DD_APP_KEY" => Some("app-1".into()),
        _ => None,
    })
    .unwrap();
    let mut run = start(cfg, None);
    let got = run.samples_until(|s| of(s, "requests").len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let stats = run.stop().await;
    // total += rate × 10 s: 2·10 = 20, +4·10 = 60, (null), +1·10 = 70, +0.5·10 = 75.
    assert_eq!(
        of(&got, "requests"),
        vec![
            (T0, 20.0),
            (T0 + 10_000, 60.0),
            (T0 + 30_000, 70.0),
            (T0 + 40_000, 75.0)
        ]
    );
    assert_eq!(
        of(&got, "cpu{host:a}"),
        vec![(T0, 10.0), (T0 + 10_000, 11.0)]
    );
    assert_eq!(of(&got, "cpu{host:b}"), vec![(T0, 20.0)]);
    assert_eq!(count(&stats.skipped, "null_point"), 1);
    assert_eq!(count(&stats.poll_errors, "status_502"), 1);
    let broken_calls = dd.calls.lock().unwrap()["avg:(("];
    let recorded = count(&stats.poll_errors, "api_error");
    assert!(
        recorded >= 2 && broken_calls - recorded <= 1,
        "{recorded} {broken_calls}"
    );
    assert!(stats.last_error.is_some());
}

#[tokio::test]
async fn datadog_without_keys_reports_and_a_forbidden_answer_is_not_retried() {
    let dd = Arc::new(Dd::default());
    let app = Router::new()
        .route("/api/v1/query", get(dd_query))
        .with_state(dd.clone());
    let addr = serve(app).await;
    let yaml = format!(
        "type: datadog\nname: dd\nsite: http://{addr}\ninterval: 100ms\ntimeout: 100ms\nretries: 3\n\
         queries: [{{signal: cpu, query: 'avg:cpu{{*}} by {{host}}'}}]\n"
    );
    let mut cfg = config(&yaml);
    cfg.resolve_env("s", &|_| Some("wrong".into())).unwrap();
    let run = start(cfg, None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let stats = run.stop().await;
    assert!(count(&stats.poll_errors, "status_403") >= 2);
    assert!(stats.last_error.as_deref().unwrap().contains("Forbidden"));
    assert!(dd.calls.lock().unwrap().is_empty());
    assert_eq!(stats.polls_ok, 0);
}

// ---------------------------------------------------------------------------------------------
// JSONL

fn line(ts_s: i64, qps: f64) -> String {
    format!(
        "{{\"ts\":\"{}\",\"host\":\"web-0\",\"qps\":{qps},\"step\":{ts_s}}}\n",
        format_ts_ms(ts_s * 1000)
    )
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn jsonl_follows_growth_truncation_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.jsonl");
    append(&path, &line(1, 1.0));
    append(&path, "{not json}\n");
    append(
        &path,
        "{\"ts\":\"2026-11-01T00:00:02Z\",\"host\":\"web-1\",\"qps\":99}\n",
    );
    let cfg = config(&format!(
        "type: jsonl\nname: sim\npath: {}\ninterval: 20ms\nsignals: [qps]\nmatch: {{host: web-0}}\n",
        path.display()
    ));
    let mut run = start(cfg, None);
    let qps = |s: &[Sample]| of(s, "qps");
    assert_eq!(
        qps(&run.samples_until(|s| !s.is_empty()).await),
        vec![(1000, 1.0)]
    );
    // Growth, with a line written in two parts.
    let l2 = line(2, 2.0);
    let (a, b) = l2.split_at(10);
    append(&path, a);
    tokio::time::sleep(Duration::from_millis(80)).await;
    append(&path, b);
    assert_eq!(
        qps(&run.samples_until(|s| !s.is_empty()).await),
        vec![(2000, 2.0)]
    );
    // Truncation in place (copytruncate), then new lines from the start.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    append(&path, &line(3, 3.0));
    assert_eq!(
        qps(&run.samples_until(|s| !s.is_empty()).await),
        vec![(3000, 3.0)]
    );
    // Rotation: a last line in the old file, then a new file at the path.
    append(&path, &line(4, 4.0));
    std::fs::rename(&path, dir.path().join("telemetry.jsonl.1")).unwrap();
    append(&dir.path().join("telemetry.jsonl.1"), &line(5, 5.0));
    tokio::time::sleep(Duration::from_millis(80)).await;
    append(&path, &line(6, 6.0));
    append(&path, &line(7, 7.0));
    let got = run.samples_until(|s| s.len() >= 4).await;
    assert_eq!(
        qps(&got),
        vec![(4000, 4.0), (5000, 5.0), (6000, 6.0), (7000, 7.0)]
    );
    let stats = run.stop().await;
    assert_eq!(count(&stats.skipped, "bad_json"), 1);
    assert_eq!(stats.samples, 7);
    assert!(stats.poll_errors.is_empty(), "{:?}", stats.poll_errors);
}

fn encrypted_file(dir: &std::path::Path) -> std::path::PathBuf {
    let cipher = LineCipher::from_key_b64(KEY).unwrap();
    let path = dir.join("sealed.jsonl");
    let mut text = String::new();
    for i in 0..5u8 {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0] = i;
        let l = line(i64::from(i) + 1, f64::from(i) * 1.5);
        text.push_str(&cipher.encrypt_line_with_nonce(l.trim_end(), nonce).unwrap());
        text.push('\n');
    }
    // A plaintext line in an encrypted file does not decrypt.
    text.push_str(&line(9, 9.0));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn encrypted_jsonl_with_the_right_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = encrypted_file(dir.path());
    let cfg = config(&format!(
        "type: jsonl\nname: sealed\npath: {}\ninterval: 20ms\nencrypted: true\n",
        path.display()
    ));
    let mut run = start(cfg, Some(LineCipher::from_key_b64(KEY).unwrap()));
    // Every number but the timestamp: qps and step.
    let got = run.samples_until(|s| s.len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let stats = run.stop().await;
    assert_eq!(
        of(&got, "qps"),
        vec![
            (1000, 0.0),
            (2000, 1.5),
            (3000, 3.0),
            (4000, 4.5),
            (5000, 6.0)
        ]
    );
    assert_eq!(of(&got, "step").len(), 5);
    assert_eq!(count(&stats.skipped, "decrypt"), 1);
    assert_eq!(stats.samples, 10);
}

#[tokio::test]
async fn encrypted_jsonl_with_a_wrong_or_missing_key_skips_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = encrypted_file(dir.path());
    let yaml = format!(
        "type: jsonl\nname: sealed\npath: {}\ninterval: 20ms\nencrypted: true\n",
        path.display()
    );
    let run = start(
        config(&yaml),
        Some(LineCipher::from_key_b64(OTHER_KEY).unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut run = run;
    assert!(
        run.rx.try_recv().is_err(),
        "nothing decrypts with the wrong key"
    );
    let stats = run.stop().await;
    assert_eq!(count(&stats.skipped, "decrypt"), 6);
    assert_eq!(stats.samples, 0);
    assert!(stats.polls_ok >= 2);

    let run = start(config(&yaml), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = run.stop().await;
    assert!(count(&stats.poll_errors, "missing_key") >= 1);
    assert_eq!(stats.samples, 0);
}

#[tokio::test]
async fn a_missing_file_is_a_poll_error_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.jsonl");
    let cfg = config(&format!(
        "type: jsonl\nname: later\npath: {}\ninterval: 20ms\nfrom: end\n",
        path.display()
    ));
    let mut run = start(cfg, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // `from: end` applies to the file as first opened: it is empty here.
    std::fs::write(&path, "").unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    append(&path, &line(1, 1.0));
    let got = run.samples_until(|s| s.len() >= 2).await;
    let stats = run.stop().await;
    assert_eq!(of(&got, "qps"), vec![(1000, 1.0)]);
    assert!(count(&stats.poll_errors, "not_found") >= 2);
}

#[test]
fn configuration_errors_name_the_field() {
    let bad = [
        (
            "type: prometheus\nname: p\nurl: http://h/m\nmetrics: []\n",
            "sources[0].metrics",
        ),
        (
            "type: prometheus\nname: p\nurl: https://h/m\nmetrics: [a]\n",
            "sources[0].ca",
        ),
        ("type: jsonl\nname: ''\npath: /x\n", "sources[0].name"),
        (
            "type: http\nname: h\nurl: http://h/\npageSize: 0\n",
            "sources[0].pageSize",
        ),
        (
            "type: datadog\nname: d\nsite: http://h\nqueries: []\n",
            "sources[0].queries",
        ),
        (
            "type: http\nname: h\nurl: http://h/\nsignals: [coherenceScore, nope]\n",
            "sources[0].signals[1]",
        ),
    ];
    for (yaml, field) in bad {
        let cfg: SourceConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(
            cfg.validate("sources[0]").unwrap_err().field,
            field,
            "{yaml}"
        );
    }
    // Unknown keys and kinds are rejected by serde.
    assert!(
        serde_yaml_ng::from_str::<SourceConfig>("type: jsonl\nname: j\npath: /x\nbogus: 1\n")
            .is_err()
    );
    assert!(serde_yaml_ng::from_str::<SourceConfig>("type: kafka\nname: k\n").is_err());
}

#[tokio::test]
async fn https_sources_load_their_ca_and_report_an_unreadable_one() {
    let dir = tempfile::tempdir().unwrap();
    let generated = coherence_verifier::tls::certgen::generate(dir.path(), &[], 1).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let yaml = |ca: &std::path::Path| {
        format!(
            "type: prometheus\nname: tls\nurl: https://{addr}/metrics\ninterval: 50ms\ntimeout: 50ms\nmetrics: [x]\nca: {}\n",
            ca.display()
        )
    };
    // A good CA: the client is built and requests are tried (nothing listens: `connect`).
    let run = start(config(&yaml(&generated.ca.cert)), None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = run.stop().await;
    assert!(count(&stats.poll_errors, "connect") >= 1, "{stats:?}");
    assert_eq!(count(&stats.poll_errors, "ca"), 0);
    // A CA file that is missing or holds no certificate: reported, the task keeps running.
    for bad in [dir.path().join("missing.pem"), generated.ca.key.clone()] {
        let run = start(config(&yaml(&bad)), None);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let stats = run.stop().await;
        assert!(count(&stats.poll_errors, "ca") >= 2, "{stats:?}");
        assert!(
            stats.last_error.as_deref().unwrap().contains("ca "),
            "{stats:?}"
        );
    }
}
