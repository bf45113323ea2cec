//! The real `coherence-sidecar` binary against the real `coherence-verifier` over mTLS, fed by a
//! real exporter (Debian's `prometheus-node-exporter` when it is installed, else the verifier's
//! own `/metrics`): records arrive and are accepted; a verifier outage and a SIGKILL of the
//! sidecar while records wait in its outbox lose nothing and double-count nothing; the shipped
//! example configuration runs as it is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coherence_sidecar::config::OutboxSettings;
use coherence_sidecar::outbox::Outbox;
use coherence_verifier::tls::certgen;
use common::{NodeExporter, Sidecar, Verifier, free_port, num, verifier_on_new_certs, wait_status};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the sidecar scrapes: `(url, metrics list, the exporter kept running)`. Debian's node
/// exporter on a free port when it is installed, else the verifier's own `/metrics`.
fn scrape_target(v: &Verifier) -> (String, &'static str, Option<NodeExporter>) {
    let addr = format!("127.0.0.1:{}", free_port());
    match NodeExporter::start(&addr) {
        Some(n) => {
            println!("scraping Debian's prometheus-node-exporter at {addr}");
            (
                format!("http://{addr}/metrics"),
                r#"[node_load1, node_memory_MemAvailable_bytes, "re:node_cpu_seconds_total"]
    aggregate: sum"#,
                Some(n),
            )
        }
        None => {
            println!(
                "{} is not installed: scraping the verifier's /metrics",
                common::NODE_EXPORTER
            );
            (
                format!("http://127.0.0.1:{}/metrics", v.admin),
                r#"["re:(flk|coherence)_.*"]"#,
                None,
            )
        }
    }
}

fn write_config(
    dir: &Path,
    v: &Verifier,
    api: u16,
    client: &str,
    (url, metrics): (&str, &str),
) -> PathBuf {
    let certs = &v.certs;
    let yaml = format!(
        r#"identity: {{namespace: shop, workload: web, pod: web-0}}
sources:
  - name: exporter
    type: prometheus
    url: {url}
    interval: 200ms
    timeout: 150ms
    metrics: {metrics}
epoch: 1s
windows: [10s, 1m]
verifier:
  endpoint: {endpoint}
  ca: {ca}
  cert: {cert}
  key: {key}
  timeout: 2s
outbox:
  dir: {outbox}
delivery:
  backoffBase: 50ms
  backoffMax: 500ms
api:
  listen: 127.0.0.1:{api}
persistence:
  kind: sqlite
"#,
        endpoint = v.endpoint(),
        ca = certs.join("ca.crt").display(),
        cert = certs.join(format!("{client}.crt")).display(),
        key = certs.join(format!("{client}.key")).display(),
        outbox = dir.join("outbox").display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_flow_from_an_exporter_through_the_sidecar_to_the_verifier() {
    let (dir, _, v) = verifier_on_new_certs(&["web:shop"], &[]).await;
    let api = free_port();
    let (url, metrics, _exporter) = scrape_target(&v);
    let config = write_config(dir.path(), &v, api, "web", (&url, metrics));
    let mut s = Sidecar::start(&config, api, &dir.path().join("sidecar.log"));

    let st = wait_status(
        &mut s,
        "three PCS delivered",
        Duration::from_secs(60),
        |st| num(st, &["epochs", "pcsBuilt"]) >= 3 && num(st, &["delivery", "sent_ok"]) >= 6,
    )
    .await;
    assert_eq!(st["shardId"], "shop/web/web-0");
    assert_eq!(num(&st, &["delivery", "dead_lettered"]), 0, "{st}");
    assert!(num(&st, &["sources", "exporter", "samples"]) > 0, "{st}");

    // The verifier has them, under the workload the sidecar speaks for.
    let wl = v
        .client("client")
        .get("/v1/workloads/shop/web")
        .await
        .unwrap();
    assert_eq!(wl.status, 200, "{}", wl.text());
    let body: Value = serde_json::from_slice(&wl.body).unwrap();
    assert!(body.to_string().contains("web-0"), "{body}");

    // The local API answers in the original engine's shape, and refuses what it does not know.
    let signal = st["primarySignal"].as_str().unwrap().to_string();
    let (code, m) = s
        .get(&format!("/coherence/metrics?window=10s&signal={signal}"))
        .await;
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["windowSec"], 10);
    assert!(m["n"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["inputs"]["source"], "exporter");
    assert!(m["meta"]["engine_version"].is_string());
    let (code, e) = s.get("/coherence/metrics?window=1h").await;
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().starts_with("window:"), "{e}");
    let (code, e) = s.get("/coherence/predict?window=10s&signal=nope").await;
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().starts_with("signal:"), "{e}");
    let (code, p) = s.get("/coherence/predict?window=1m").await;
    assert_eq!(code, 200, "{p}");
    assert!(!p["signals"].as_object().unwrap().is_empty());

    // Metrics name the outbox and the dead-letter count.
    let metrics = s.api().get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("coherence_sidecar_outbox_pending "),
        "{metrics}"
    );
    assert!(
        metrics.contains("coherence_sidecar_dlq_total 0"),
        "{metrics}"
    );

    // Rolling persistence wrote rows.
    let conn = rusqlite::Connection::open(dir.path().join("outbox/rolling_metrics.db")).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM rolling_metrics", [], |r| r.get(0))
        .unwrap();
    assert!(rows > 0);

    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_outage_and_a_sigkill_of_the_sidecar_lose_and_double_nothing() {
    let (dir, _, mut v) = verifier_on_new_certs(&[], &[]).await;
    let api = free_port();
    let url = format!("http://127.0.0.1:{}/metrics", v.admin);
    let config = write_config(
        dir.path(),
        &v,
        api,
        "client",
        (&url, r#"["re:(flk|coherence)_.*"]"#),
    );
    let mut s = Sidecar::start(&config, api, &dir.path().join("sidecar.log"));
    wait_status(&mut s, "first deliveries", Duration::from_secs(60), |st| {
        num(st, &["delivery", "sent_ok"]) >= 2
    })
    .await;

    // The verifier goes away: records pile up in the outbox while the sender retries.
    v.kill();
    wait_status(
        &mut s,
        "records pending during the outage",
        Duration::from_secs(30),
        |st| num(st, &["outbox", "pending"]) >= 4 && num(st, &["delivery", "retries"]) >= 1,
    )
    .await;

    // The sidecar is killed while those records wait, in the middle of its retries.
    s.kill();
    let outbox_dir = dir.path().join("outbox");
    let (pending_at_kill, appended_at_kill) = {
        let ob = Outbox::open(&OutboxSettings {
            dir: outbox_dir.clone(),
            max_bytes: 64 << 20,
            segment_bytes: 4 << 20,
        })
        .unwrap();
        let ids: Vec<String> = ob
            .peek_batch(usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        (ids, ob.next_seq() - 1)
    };
    assert!(
        pending_at_kill.len() >= 4,
        "the outbox held records at the kill: {pending_at_kill:?}"
    );

    // Both come back: what waited is delivered, then the new epochs.
    v.restart();
    v.ready().await;
    s.spawn();
    let st = wait_status(
        &mut s,
        "the records of before the kill and new ones delivered after the restart",
        Duration::from_secs(90),
        |st| {
            num(st, &["outbox", "pending"]) == 0
                && num(st, &["delivery", "sent_ok"]) as usize >= pending_at_kill.len() + 2
        },
    )
    .await;
    assert!(s.terminate().success());
    let appended = num(&st, &["outbox", "next_seq"]) - 1;
    assert!(appended > appended_at_kill, "{st}");
    assert_eq!(num(&st, &["outbox", "dlq_total"]), 0, "{st}");
    assert!(
        !outbox_dir.join("dlq.jsonl").exists()
            || std::fs::read_to_string(outbox_dir.join("dlq.jsonl"))
                .unwrap()
                .is_empty()
    );
    for id in &pending_at_kill {
        let (code, body) = v.record(id).await;
        assert_eq!(code, 200, "{id} pending at the kill: {body}");
        assert!(
            matches!(body["status"].as_u64(), Some(200 | 202)),
            "{id}: {body}"
        );
    }

    // Every record the sidecar ever stored was applied exactly once by the verifier.
    assert!(v.terminate().success());
    let audit = coherence_verifier::wal::audit(&v.wal).unwrap();
    assert!(audit.applied_more_than_once.is_empty(), "{audit:?}");
    assert_eq!(audit.first_applications, appended, "{audit:?}; status {st}");
}

/// Whether nothing listens on `addr` right now.
fn free(addr: &str) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// A stand-in for a node exporter, serving the series the example selects.
async fn node_like_exporter(addr: &str) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let n = std::sync::Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            async move {
                format!(
                    "# TYPE node_load1 gauge\nnode_load1 {}\n\
                     # TYPE node_memory_MemAvailable_bytes gauge\nnode_memory_MemAvailable_bytes {}\n\
                     # TYPE node_cpu_seconds_total counter\n\
                     node_cpu_seconds_total{{cpu=\"0\",mode=\"idle\"}} {}\n\
                     node_cpu_seconds_total{{cpu=\"0\",mode=\"user\"}} {}\n",
                    1.0 + (i % 5) as f64 * 0.1,
                    4.0e9 - (i % 3) as f64 * 1.0e6,
                    100.0 + i as f64 * 0.8,
                    50.0 + i as f64 * 0.2,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_example_runs_as_it_is_against_a_real_verifier() {
    let dir = tempfile::tempdir().unwrap();
    // What `coherence certs gen --out certs` writes (the same generator).
    certgen::generate(&dir.path().join("certs"), &[], 30).unwrap();
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.yaml"))
            .unwrap();
    // The file is used as it is; only an address that is taken on this machine is moved.
    let mut text = example.clone();
    let mut scrape = "127.0.0.1:9100".to_string();
    if !free(&scrape) {
        scrape = format!("127.0.0.1:{}", free_port());
        text = text.replace(
            "http://127.0.0.1:9100/metrics",
            &format!("http://{scrape}/metrics"),
        );
        println!("127.0.0.1:9100 is taken: the copy scrapes {scrape}");
    }
    let mut api = 9103;
    if !free("127.0.0.1:9103") {
        api = free_port();
        text = text.replace(
            "listen: 127.0.0.1:9103",
            &format!("listen: 127.0.0.1:{api}"),
        );
        println!("127.0.0.1:9103 is taken: the copy's API listens on {api}");
    }
    std::fs::write(dir.path().join("config.yaml"), &text).unwrap();
    let _node = NodeExporter::start(&scrape);
    let _stand_in = match &_node {
        Some(_) => {
            println!("scraping Debian's prometheus-node-exporter at {scrape}");
            None
        }
        None => {
            println!(
                "{} is not installed: a stand-in exporter serves {scrape}",
                common::NODE_EXPORTER
            );
            Some(node_like_exporter(&scrape).await)
        }
    };

    // The verifier with its defaults but the port (ENDPOINT tells the sidecar where it is), and
    // the HMAC key the example signs with.
    let mut v = Verifier::start(&dir.path().join("certs"), &dir.path().join("wal"));
    v.ready().await;
    let endpoint = format!("https://localhost:{}", v.port);
    let mut s = Sidecar::start_with(
        Path::new("config.yaml"),
        api,
        &dir.path().join("sidecar.log"),
        Some(dir.path()),
        &[("ENDPOINT", endpoint.as_str())],
    );
    let st = wait_status(
        &mut s,
        "the example's records accepted",
        Duration::from_secs(120),
        |st| {
            num(st, &["epochs", "pcsBuilt"]) >= 1
                && num(st, &["delivery", "sent_ok"]) >= 3
                && num(st, &["outbox", "pending"]) == 0
                && st["lastEpoch"]["pcsId"].is_string()
        },
    )
    .await;
    assert_eq!(st["shardId"], "default/node/node-0", "{st}");
    assert_eq!(st["windows"], serde_json::json!(["1m", "5m"]));
    assert_eq!(st["epochSec"], 10.0);
    assert_eq!(num(&st, &["delivery", "dead_lettered"]), 0, "{st}");
    assert!(num(&st, &["sources", "node", "samples"]) > 0, "{st}");
    let pcs_id = st["lastEpoch"]["pcsId"].as_str().unwrap();
    let (code, rec) = v.record(pcs_id).await;
    assert_eq!(code, 200, "{rec}");
    assert!(matches!(rec["status"].as_u64(), Some(200 | 202)), "{rec}");
    let (code, m) = s
        .get("/coherence/metrics?window=1m&signal=node_load1")
        .await;
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["inputs"]["source"], "node");
    assert!(dir.path().join("outbox").is_dir(), "the outbox is ./outbox");
    let wl = v
        .client("client")
        .get("/v1/workloads/default/node")
        .await
        .unwrap();
    assert_eq!(wl.status, 200, "{}", wl.text());
    assert!(s.terminate().success());
}
