//! Every metric that the alerting rules (`charts/coherence/files/prometheus-rules.yaml`) and the
//! Grafana dashboard (`charts/coherence/files/grafana-dashboard.json`) name is one that a
//! Coherence binary really exports, read from its real `/metrics`:
//!
//! - `coherence-verifier serve --insecure-dev` on free ports with a temporary WAL;
//! - `coherence-sidecar run`, scraping the verifier's own `/metrics` and delivering to it over
//!   plain HTTP, so the verifier's labelled families (requests by code, drift risk, volatility)
//!   get series from real records; a malformed record and a signed SignalReport with a
//!   finding give the rejection and incident families theirs (a family without series is not
//!   exported at all);
//! - the operator's registry, served in process. `coherence-operator run` serves `/metrics`
//!   only after it has a Kubernetes client and its webhook certificate, and its families get
//!   series only from reconciles against an API server. The test registers
//!   `coherence_operator::metrics::Metrics` in a registry as `run` does, serves it with
//!   `coherence_operator::run::app` (the router `run` serves), and sets the series through the
//!   methods the reconcilers call.
//!
//! The binaries come from this test's own target directory, built (or brought up to date) with
//! cargo on first use; `COHERENCE_VERIFIER_BIN` and `COHERENCE_SIDECAR_BIN` name others.
//!
//! Names are read from the PromQL with a small scanner that skips functions, aggregations,
//! keywords, grouping labels, label values, range durations and Grafana variables. A family
//! `F` of type counter is exported as `F_total`, a histogram as `F_bucket`, `F_sum` and
//! `F_count`, a gauge as `F`. Label names inside `{}` are checked too where the family has
//! series: each must be on a series or be one the scrape adds (`namespace`, `pod`, ...).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The HMAC key the verifier checks and the sidecar signs with.
const KEY: &str = "metrics-exist-test-key";
/// Series Prometheus makes itself for every target, not exported by any binary.
const SYNTHETIC: &[&str] = &["up"];
/// Labels the scrape adds to every series (target labels of a ServiceMonitor or PodMonitor).
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
];

// ---------------------------------------------------------------------------------------------
// PromQL names

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    Var,
    Punct(char),
}

fn lex(expr: &str) -> Vec<Tok> {
    let cs: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            while i < cs.len() && cs[i] != c {
                if cs[i] == '\\' && c != '`' && i + 1 < cs.len() {
                    i += 1;
                }
                s.push(cs[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c.is_ascii_digit()
            || (c == '.' && cs.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers, durations (5m, 1h30m), hex and exponents: one token.
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '.' || cs[i] == '_') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if c == '$' {
            // Grafana variables: $__rate_interval, ${datasource}.
            i += 1;
            if cs.get(i) == Some(&'{') {
                while i < cs.len() && cs[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < cs.len() && word(cs[i]) {
                    i += 1;
                }
            }
            out.push(Tok::Var);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < cs.len() && word(cs[i]) {
                i += 1;
            }
            out.push(Tok::Ident(cs[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// Index after the bracket that closes the one at `i` (`(`, `[` or `{`).
fn close(toks: &[Tok], i: usize) -> usize {
    let (open, shut) = match toks[i] {
        Tok::Punct('(') => ('(', ')'),
        Tok::Punct('[') => ('[', ']'),
        _ => ('{', '}'),
    };
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(i) {
        if *t == Tok::Punct(open) {
            depth += 1;
        } else if *t == Tok::Punct(shut) {
            depth -= 1;
            if depth == 0 {
                return j + 1;
            }
        }
    }
    toks.len()
}

/// The label names of the matchers `{...}` at `i`, and the metric name a `__name__` matcher
/// gives.
fn matchers(toks: &[Tok], i: usize) -> (Vec<String>, Option<String>, usize) {
    let end = close(toks, i);
    let mut labels = Vec::new();
    let mut name = None;
    let mut j = i + 1;
    while j < end.saturating_sub(1) {
        if let Tok::Ident(l) = &toks[j] {
            if l == "__name__" {
                name = toks[j + 1..end].iter().find_map(|t| match t {
                    Tok::Str(s) => Some(s.clone()),
                    _ => None,
                });
            } else {
                labels.push(l.clone());
            }
        }
        j += 1;
    }
    (labels, name, end)
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// A series selector: the metric name and the label names of its matchers.
type Selector = (String, Vec<String>);

/// Where a query is used (a rule, a panel, a variable) and its selectors.
type Uses = Vec<(String, Vec<Selector>)>;

/// The series selectors of a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let toks = lex(expr);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            // Range and subquery durations, `[$__rate_interval]`.
            Tok::Punct('[') => i = close(&toks, i),
            // A selector without a name: `{__name__="x"}`.
            Tok::Punct('{') => {
                let (labels, name, next) = matchers(&toks, i);
                if let Some(n) = name {
                    out.push((n, labels));
                }
                i = next;
            }
            Tok::Ident(w) => {
                let lw = w.to_ascii_lowercase();
                let next = toks.get(i + 1);
                if GROUPING.contains(&lw.as_str()) {
                    // by (a, b), on (instance), group_left (x): label names.
                    i = if next == Some(&Tok::Punct('(')) {
                        close(&toks, i + 1)
                    } else {
                        i + 1
                    };
                } else if KEYWORDS.contains(&lw.as_str())
                    || AGGREGATIONS.contains(&w.as_str())
                    || next == Some(&Tok::Punct('('))
                {
                    // Operators, functions, aggregations (`sum by (le) (...)` included).
                    i += 1;
                } else if next == Some(&Tok::Punct('{')) {
                    let (labels, name, next) = matchers(&toks, i + 1);
                    out.push((name.unwrap_or_else(|| w.clone()), labels));
                    i = next;
                } else {
                    out.push((w.clone(), Vec::new()));
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The selectors of a Grafana variable query: `label_values(selector, label)`,
/// `label_values(label)` (none), `query_result(promql)` or plain PromQL.
fn variable_selectors(query: &str) -> Vec<Selector> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match inner.rsplit_once(',') {
            Some((selector, _label)) => selectors(selector),
            None => Vec::new(),
        };
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return selectors(inner);
    }
    if q.starts_with("label_names(") || q.starts_with("metrics(") {
        return Vec::new();
    }
    selectors(q)
}

/// `(where, expression)` of every alerting and recording rule.
fn rule_exprs(rules: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            out.push((
                format!("rule {name}"),
                r["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

fn panel_exprs(panels: &[Value], out: &mut Vec<(String, String)>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(e) = t["expr"].as_str() {
                out.push((format!("panel {title:?}"), e.to_string()));
            }
        }
        if let Some(inner) = p["panels"].as_array() {
            panel_exprs(inner, out);
        }
    }
}

/// `(where, selectors)` of the dashboard's panels and query variables.
fn dashboard_selectors(d: &Value) -> Uses {
    let mut exprs = Vec::new();
    panel_exprs(d["panels"].as_array().expect("panels"), &mut exprs);
    let mut out: Vec<_> = exprs.into_iter().map(|(w, e)| (w, selectors(&e))).collect();
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        out.push((
            format!("variable {}", v["name"].as_str().unwrap_or("?")),
            variable_selectors(q),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Expositions

/// What one `/metrics` exposes: families by type, and the label names of each sample name.
#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    e.families.insert(name.into(), kind.into());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..end];
            let labels = e.samples.entry(name.to_string()).or_default();
            if line[end..].starts_with('{') {
                // name="value", with escapes in the value.
                let body: Vec<char> = line[end + 1..].chars().collect();
                let (mut k, mut i) = (String::new(), 0);
                while i < body.len() && body[i] != '}' {
                    match body[i] {
                        '=' => {
                            labels.insert(std::mem::take(&mut k).trim().to_string());
                            i += 2; // `="`
                            while i < body.len() && body[i] != '"' {
                                i += if body[i] == '\\' { 2 } else { 1 };
                            }
                        }
                        ',' => {}
                        c => k.push(c),
                    }
                    i += 1;
                }
            }
        }
        e
    }

    /// The sample names the families are exported as (a counter `F` as `F_total`, …), with
    /// every sample name seen.
    fn names(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.samples.keys().cloned().collect();
        for (f, kind) in &self.families {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            out.extend(suffixes.iter().map(|s| format!("{f}{s}")));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `(coherence-verifier, coherence-sidecar)`: from the environment, else built with cargo in
/// this test's target directory and profile.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let verifier = std::env::var_os("COHERENCE_VERIFIER_BIN").map(PathBuf::from);
        let sidecar = std::env::var_os("COHERENCE_SIDECAR_BIN").map(PathBuf::from);
        if let (Some(v), Some(s)) = (&verifier, &sidecar) {
            return (v.clone(), s.clone());
        }
        // <target>/<profile>/deps/metrics_exist-<hash>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bin", "coherence-verifier"])
            .args(["--bin", "coherence-sidecar"])
            .args(["-p", "coherence-verifier", "-p", "coherence-sidecar"])
            .arg("--profile")
            .arg(&profile)
            .arg("--manifest-path")
            .arg(root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo build of coherence-verifier and coherence-sidecar");
        assert!(
            status.success(),
            "cargo build of coherence-verifier and coherence-sidecar failed"
        );
        let v = verifier.unwrap_or_else(|| profile_dir.join("coherence-verifier"));
        let s = sidecar.unwrap_or_else(|| profile_dir.join("coherence-sidecar"));
        for b in [&v, &s] {
            assert!(b.exists(), "{} is missing after the build", b.display());
        }
        (v, s)
    })
}

/// A child process, killed when dropped; its standard error goes to `log`.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(cmd: &mut Command, log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("create log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Proc {
            child,
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited ({status}); its log:\n{}", self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request to 127.0.0.1 (no chunked answers): `(status, body)`.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn scrape(port: u16) -> String {
    match http(port, "GET", "/metrics", "") {
        Some((200, body)) => body,
        other => panic!("GET /metrics on port {port}: {other:?}"),
    }
}

/// Polls `probe` every 200 ms for at most `limit`; panics with `what` and the last `detail`.
fn wait_for(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(()) => return,
            Err(detail) => assert!(
                Instant::now() < deadline,
                "{what}: not reached within {limit:?}; {detail}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has_sample(text: &str, prefix: &str) -> bool {
    text.lines().any(|l| l.starts_with(prefix))
}

/// A signed SignalReport of `shop/web/web-1` with one window and a compute-seizure finding
/// strong enough to open an incident.
fn incident_report() -> String {
    use coherence_core::detect::{Evidence, Finding, FindingKind};
    use coherence_core::report::{SignalReport, WindowReport};
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let mut r = SignalReport {
        report_id: String::new(),
        schema: coherence_core::report::SCHEMA.into(),
        version: coherence_core::report::VERSION.into(),
        shard_id: "shop/web/web-1".into(),
        epoch: 1,
        sent_at: "2026-11-01T00:00:00Z".into(),
        engine_version: coherence_core::ENGINE_VERSION.into(),
        windows: vec![WindowReport {
            signal: "cpu".into(),
            window: "5m".parse().expect("window span"),
            mean: 40.0,
            stdev: 16.0,
            volatility_index: 0.4,
            drift_risk: coherence_core::window::DriftRisk::High,
            n: 30,
            window_start_ms: now_ms - 300_000,
            window_end_ms: now_ms,
        }],
        findings: vec![Finding {
            kind: FindingKind::Seizure,
            signal: "cpu".into(),
            at_ms: now_ms,
            risk: 0.95,
            evidence: Evidence {
                method: "variance ratio and F test".into(),
                window_start_ms: now_ms - 900_000,
                window_end_ms: now_ms,
                n: 90,
                inputs: [("ratio".to_string(), 13.0)].into(),
                thresholds: [("varianceRatio".to_string(), 1.5)].into(),
            },
        }],
        finops: Vec::new(),
        sig: String::new(),
    };
    r.sign(&coherence_core::pcs::Signer::hmac(KEY.as_bytes().to_vec()))
        .expect("sign the report");
    serde_json::to_string(&r).expect("report JSON")
}

/// The verifier's and the sidecar's `/metrics`, after the sidecar has delivered records.
fn processes_metrics() -> (String, String) {
    let (verifier_bin, sidecar_bin) = binaries();
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin, api) = (free_port(), free_port(), free_port());

    let mut verifier = Proc::start(
        Command::new(verifier_bin)
            .env_clear()
            .args(["serve", "--insecure-dev"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--wal-dir")
            .arg(dir.path().join("wal"))
            .env("PCS_HMAC_KEY", KEY)
            .env("TOKEN_RATE", "0")
            .env("DEDUP_BACKEND", "memory")
            .env("COHERENCE_DRAIN_SECONDS", "1"),
        &dir.path().join("verifier.log"),
    );
    wait_for("the verifier's /readyz", Duration::from_secs(30), || {
        verifier.assert_running("coherence-verifier");
        match http(admin, "GET", "/readyz", "") {
            Some((200, _)) => Ok(()),
            other => Err(format!("last answer {other:?}")),
        }
    });
    // A malformed record, and a report whose finding opens an incident: the rejection and
    // incident families get series of their own.
    let answer = http(port, "POST", "/v1/pcs/submit", "{\"pcs_id\": 1}");
    assert_eq!(answer.as_ref().map(|a| a.0), Some(400), "{answer:?}");
    let answer = http(port, "POST", "/v1/signals/submit", &incident_report());
    assert_eq!(answer.as_ref().map(|a| a.0), Some(200), "{answer:?}");

    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            r#"identity: {{namespace: shop, workload: web, pod: web-0}}
sources:
  - name: verifier
    type: prometheus
    url: http://127.0.0.1:{admin}/metrics
    interval: 200ms
    timeout: 150ms
    metrics: ["re:(flk|coherence)_.*"]
epoch: 1s
windows: [10s]
drift:
  default: {{minSamples: 3}}
verifier:
  endpoint: http://127.0.0.1:{port}
  timeout: 2s
outbox:
  dir: {outbox}
delivery:
  backoffBase: 50ms
  backoffMax: 500ms
api:
  listen: 127.0.0.1:{api}
"#,
            outbox = dir.path().join("outbox").display(),
        ),
    )
    .expect("write the sidecar configuration");
    let mut sidecar = Proc::start(
        Command::new(sidecar_bin)
            .env_clear()
            .args(["run", "--config"])
            .arg(&config)
            .env("PCS_HMAC_KEY", KEY),
        &dir.path().join("sidecar.log"),
    );

    // The sidecar has delivered records (a PCS and a report per epoch) and the verifier shows
    // the families that need series.
    let (mut verifier_text, mut sidecar_text) = (String::new(), String::new());
    wait_for(
        "the sidecar's records in the verifier's metrics",
        Duration::from_secs(90),
        || {
            sidecar.assert_running("coherence-sidecar");
            verifier.assert_running("coherence-verifier");
            sidecar_text = match http(api, "GET", "/metrics", "") {
                Some((200, body)) => body,
                other => return Err(format!("the sidecar's GET /metrics: {other:?}")),
            };
            let delivered = sidecar_text
                .lines()
                .find_map(|l| l.strip_prefix("coherence_sidecar_delivered_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if delivered < 2.0 {
                return Err(format!(
                    "the sidecar delivered {delivered} records; its log:\n{}",
                    sidecar.log()
                ));
            }
            verifier_text = match http(admin, "GET", "/metrics", "") {
                Some((200, body)) => body,
                other => {
                    return Err(format!(
                        "the verifier's GET /metrics: {other:?}; its log:\n{}",
                        verifier.log()
                    ));
                }
            };
            let wanted = [
                "coherence_requests_total{",
                "coherence_workload_drift_risk{",
                "coherence_workload_volatility_index{",
                "coherence_verify_duration_seconds_bucket",
                "coherence_wal_fsync_duration_seconds_bucket",
                "coherence_incidents_total{",
                "coherence_rejected_total{",
            ];
            let missing: Vec<_> = wanted
                .iter()
                .filter(|w| !has_sample(&verifier_text, w))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("the verifier has no sample of {missing:?}"))
            }
        },
    );
    (verifier_text, sidecar_text)
}

/// The operator's `/metrics`, served in process by the router `coherence-operator run` serves,
/// with series set as the reconcilers set them.
fn operator_metrics() -> String {
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    drop(metrics.time("coherencepolicy"));
    drop(metrics.time("finopsgate"));
    metrics.error("coherencepolicy", "kube");
    metrics.set_veto("shop", "web", Some("pause-rollout"));
    metrics.set_gate("shop", "web", Some(1.25), Some(2));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    let app = coherence_operator::run::app(Arc::new(registry));
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let text = scrape(port);
    rt.shutdown_background();
    text
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_metric_of_the_rules_and_the_dashboard_is_exported() {
    let rules: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("charts/coherence/files/prometheus-rules.yaml"))
            .expect("read the rules"),
    )
    .expect("parse the rules");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/coherence/files/grafana-dashboard.json"))
            .expect("read the dashboard"),
    )
    .expect("parse the dashboard");
    let mut uses: Uses = rule_exprs(&rules)
        .into_iter()
        .map(|(w, e)| (w, selectors(&e)))
        .collect();
    uses.extend(dashboard_selectors(&dashboard));
    let referenced: BTreeSet<&str> = uses
        .iter()
        .flat_map(|(_, s)| s.iter().map(|(n, _)| n.as_str()))
        .collect();

    let (verifier, sidecar) = processes_metrics();
    let operator = operator_metrics();
    let exports: Vec<(&str, Exposition)> = vec![
        ("coherence-verifier", Exposition::parse(&verifier)),
        ("coherence-sidecar", Exposition::parse(&sidecar)),
        ("coherence-operator", Exposition::parse(&operator)),
    ];

    // Not vacuous: the scan finds names of every binary, and the expositions are read.
    for (bin, name) in [
        ("coherence-verifier", "coherence_requests_total"),
        (
            "coherence-verifier",
            "coherence_wal_fsync_duration_seconds_bucket",
        ),
        ("coherence-sidecar", "coherence_sidecar_dlq_total"),
        ("coherence-operator", "coherence_reconcile_errors_total"),
        ("coherence-operator", "coherence_finops_grade"),
    ] {
        assert!(referenced.contains(name), "{name} not found by the scan");
        let e = &exports.iter().find(|(b, _)| *b == bin).expect("binary").1;
        assert!(
            e.names().contains(name),
            "{bin} does not export {name}: {:?}",
            e.names()
        );
    }

    let mut missing = Vec::new();
    let mut bad_labels = Vec::new();
    for (place, sels) in &uses {
        for (name, labels) in sels {
            if SYNTHETIC.contains(&name.as_str()) {
                continue;
            }
            let exporters: Vec<&(&str, Exposition)> = exports
                .iter()
                .filter(|(_, e)| e.names().contains(name))
                .collect();
            if exporters.is_empty() {
                missing.push(format!("{name} ({place})"));
                continue;
            }
            let seen: BTreeSet<&String> = exporters
                .iter()
                .filter_map(|(_, e)| e.samples.get(name))
                .flatten()
                .collect();
            let has_series = exporters.iter().any(|(_, e)| e.samples.contains_key(name));
            for l in labels {
                if has_series
                    && !TARGET_LABELS.contains(&l.as_str())
                    && !seen.iter().any(|s| *s == l)
                {
                    bad_labels.push(format!(
                        "{name}{{{l}}} ({place}): its series carry only {seen:?}"
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics named by the rules or the dashboard that no binary exports:\n  {}\n\
         verifier: {:?}\nsidecar: {:?}\noperator: {:?}",
        missing.join("\n  "),
        exports[0].1.names(),
        exports[1].1.names(),
        exports[2].1.names(),
    );
    assert!(
        bad_labels.is_empty(),
        "label names the exported series do not carry:\n  {}",
        bad_labels.join("\n  ")
    );
}

#[test]
fn the_scanner_finds_metric_names_only() {
    let names = |e: &str| -> Vec<Selector> { selectors(e) };
    let s = |n: &str, l: &[&str]| (n.to_string(), l.iter().map(|x| x.to_string()).collect());
    assert_eq!(
        names(
            r#"sum by (route) (rate(coherence_requests_total{code=~"5.."}[5m]))
                 / sum by (route) (rate(coherence_requests_total[5m])) > 0.05"#
        ),
        vec![
            s("coherence_requests_total", &["code"]),
            s("coherence_requests_total", &[])
        ]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (instance, le) (rate(x_bucket[$__rate_interval])))"),
        vec![s("x_bucket", &[])]
    );
    assert_eq!(
        names("coherence_wal_pending > 0 and on (instance) coherence_dedup_store_up == 1"),
        vec![
            s("coherence_wal_pending", &[]),
            s("coherence_dedup_store_up", &[])
        ]
    );
    assert_eq!(
        names(r#"absent(up{job=~".*coherence-operator.*"} == 1)"#),
        vec![s("up", &["job"])]
    );
    assert_eq!(
        names("predict_linear(a[6h], 24 * 3600) > 8 * 1024 * 1024 and a <= 1e9 unless b offset 5m"),
        vec![s("a", &[]), s("a", &[]), s("b", &[])]
    );
    assert_eq!(
        names(r#"max by (namespace, gate) (g{namespace=~"$namespace", gate!="x,y"}) > bool 1"#),
        vec![s("g", &["namespace", "gate"])]
    );
    assert_eq!(
        names(
            r#"{__name__="foo", job="x"} + sum(rate(y[5m])) by (le) * ignoring (a) group_left (b) z"#
        ),
        vec![s("foo", &["job"]), s("y", &[]), s("z", &[])]
    );
    assert_eq!(
        names(r#"label_replace(m, "dst", "$1", "src", "(.*)") / max_over_time(n[1h:5m])"#),
        vec![s("m", &[]), s("n", &[])]
    );
    assert_eq!(
        names("sum(increase(c_total[$__range])) / count(Inf) + NaN"),
        vec![s("c_total", &[])]
    );
    assert_eq!(
        variable_selectors(r#"label_values(m{namespace=~"$namespace"}, workload)"#),
        vec![s("m", &["namespace"])]
    );
    assert_eq!(variable_selectors("label_values(namespace)"), vec![]);
}

#[test]
fn expositions_give_families_their_sample_names() {
    let e = Exposition::parse(
        "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
         a_requests_total{route=\"/x\",code=\"200\"} 3\n\
         # TYPE a_seconds histogram\na_seconds_bucket{le=\"0.5\"} 1\na_seconds_sum 0.1\n\
         a_seconds_count 1\n# TYPE a_up gauge\na_up 1\n# TYPE a_empty gauge\n\
         a_odd{v=\"x\\\"y,z\",w=\"\"} 2\n# EOF\n",
    );
    let names = e.names();
    for n in [
        "a_requests_total",
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "a_up",
        "a_empty",
        "a_odd",
    ] {
        assert!(names.contains(n), "{n}: {names:?}");
    }
    assert!(!names.contains("a_requests"));
    assert_eq!(
        e.samples["a_requests_total"].iter().collect::<Vec<_>>(),
        ["code", "route"]
    );
    assert_eq!(e.samples["a_odd"].iter().collect::<Vec<_>>(), ["v", "w"]);
}
