//! The real `coherence-sidecar` binary against the real `coherence-verifier` over mTLS, fed by a
//! real exporter (the verifier's own `/metrics`): records arrive and are accepted; a verifier
//! outage and a SIGKILL of the sidecar lose nothing and double-count nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coherence_verifier::client::Client;
use coherence_verifier::tls::certgen;
use common::{KEY, Verifier, free_port};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running sidecar.
struct Sidecar {
    child: Option<Child>,
    config: PathBuf,
    api: u16,
    log: PathBuf,
}

impl Sidecar {
    fn start(config: &Path, api: u16, log: &Path) -> Sidecar {
        let mut s = Sidecar {
            child: None,
            config: config.to_owned(),
            api,
            log: log.to_owned(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_coherence-sidecar"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("PCS_HMAC_KEY", KEY)
            .env_remove("ENDPOINT")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("WORKLOAD_NAME")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start coherence-sidecar");
        self.child = Some(child);
    }

    fn api(&self) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.api), None).unwrap()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        match self.api().get(path).await {
            Ok(r) => (
                r.status,
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            ),
            Err(_) => (0, Value::Null),
        }
    }

    async fn status(&self) -> Value {
        self.get("/status").await.1
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(dir: &Path, v: &Verifier, api: u16, client: &str) -> PathBuf {
    let certs = &v.certs;
    let yaml = format!(
        r#"identity: {{namespace: shop, workload: web, pod: web-0}}
sources:
  - name: verifier
    type: prometheus
    url: http://127.0.0.1:{admin}/metrics
    interval: 200ms
    timeout: 150ms
    metrics: ["re:(flk|coherence)_.*"]
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
        admin = v.admin,
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

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

async fn wait_status(
    s: &mut Sidecar,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(exit) = s.exited() {
            panic!(
                "{what}: the sidecar exited ({exit:?}); log: {}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
        }
        let st = s.status().await;
        if pred(&st) {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {limit:?}; last status: {st}; log: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_flow_from_an_exporter_through_the_sidecar_to_the_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certgen::generate(&certs, &["web:shop".parse().unwrap()], 30).unwrap();
    let v = Verifier::start(&certs, &dir.path().join("wal"));
    v.ready().await;
    let api = free_port();
    let config = write_config(dir.path(), &v, api, "web");
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
    assert!(num(&st, &["sources", "verifier", "samples"]) > 0, "{st}");

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
    assert_eq!(m["inputs"]["source"], "verifier");
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
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certgen::generate(&certs, &[], 30).unwrap();
    let mut v = Verifier::start(&certs, &dir.path().join("wal"));
    v.ready().await;
    let api = free_port();
    let config = write_config(dir.path(), &v, api, "client");
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
    v.restart();
    v.ready().await;
    wait_status(
        &mut s,
        "outbox drained after the outage",
        Duration::from_secs(60),
        |st| num(st, &["outbox", "pending"]) == 0,
    )
    .await;

    // The sidecar is killed mid-flight and started again on the same outbox.
    s.kill();
    s.spawn();
    let st = wait_status(
        &mut s,
        "new records delivered after the restart",
        Duration::from_secs(60),
        |st| num(st, &["delivery", "sent_ok"]) >= 2 && num(st, &["outbox", "pending"]) == 0,
    )
    .await;
    assert!(s.terminate().success());
    let appended = num(&st, &["outbox", "next_seq"]) - 1;
    assert_eq!(num(&st, &["outbox", "dlq_total"]), 0, "{st}");
    assert!(
        !dir.path().join("outbox/dlq.jsonl").exists()
            || std::fs::read_to_string(dir.path().join("outbox/dlq.jsonl"))
                .unwrap()
                .is_empty()
    );

    // Every record the sidecar ever stored was applied exactly once by the verifier.
    assert!(v.terminate().success());
    let audit = coherence_verifier::wal::audit(&v.wal).unwrap();
    assert!(audit.applied_more_than_once.is_empty(), "{audit:?}");
    assert_eq!(audit.first_applications, appended, "{audit:?}; status {st}");
}
