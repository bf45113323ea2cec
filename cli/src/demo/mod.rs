//! `coherence demo`: the whole system on one machine.
//!
//! Starts the real `coherence-verifier` (memory dedup, a WAL in a temporary directory) and one
//! real `coherence-sidecar` per workload, all over mTLS on loopback with a CA, certificates and
//! an HMAC key generated on the fly. The sidecars follow JSONL files that the flight simulator
//! fills in accelerated time ([`feed`]): calm telemetry for the healthy workloads, the cascade
//! (compute seizure → memory fever → retry storm → crash) for the stressed ones. While it runs
//! the demo shows a progress line and the verifier serves the dashboard on its admin port; at
//! the end it prints the verifier's view of every workload — drift risk, FinOps grade, PCS
//! counts, incidents with their narratives and veto recommendations — and removes everything it
//! made, also after Ctrl-C or SIGTERM.

pub mod feed;
pub mod procs;

use crate::error::{CliError, CliResult};
use coherence_verifier::client::Client;
use coherence_verifier::tls::certgen::{self, ClientSpec, Options};
use feed::{FeedPlan, FeedStats, FeedTarget};
use procs::{Proc, bin_dir, find_binary};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Namespace of every demo workload.
pub const NAMESPACE: &str = "demo";
/// Names of the healthy workloads, in order.
pub const HEALTHY_NAMES: [&str; 4] = ["catalog", "search", "inventory", "profile"];
/// Names of the stressed workloads, in order.
pub const STRESSED_NAMES: [&str; 4] = ["checkout", "payments", "orders", "shipping"];
/// Price of one demo pod, USD per hour (the simulator's host price).
pub const POD_USD_PER_HOUR: f64 = 0.20;

const AFTER_HELP: &str = "\
What runs (all on loopback, everything in a temporary directory removed at exit):
  coherence-verifier   --listen (mTLS) and --admin-listen (plain HTTP: /ui, /metrics, /v1/workloads)
  coherence-sidecar    one per workload, namespace demo: healthy (catalog, search, ...) and
                       stressed (checkout, payments, ...), each following its own JSONL file
The binaries are taken from the directory of this coherence executable (or --bin-dir):
`make build` builds all three. Samples carry simulated timestamps, --speed simulated seconds
per wall second; epochs close every wall second. Port 0 picks a free port; the URL printed is
the real one. --duration 0 serves until Ctrl-C or SIGTERM.

Example:
  make build && target/release/coherence demo --duration 90s";

/// Flags of `coherence demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// How long to run (`90`, `90s`, `2m`, `1h`); `0` keeps serving until Ctrl-C or SIGTERM.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// The verifier's mTLS address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The verifier's admin address: the dashboard is at http://ADDR/ui.
    #[arg(long, default_value = "127.0.0.1:9102")]
    admin_listen: SocketAddr,
    /// Healthy workloads (1 to 4).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    healthy: u8,
    /// Stressed workloads, each going through the cascade (1 to 4).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    stressed: u8,
    /// Simulated seconds per wall second.
    #[arg(long, default_value_t = 60.0, value_parser = parse_speed)]
    speed: f64,
    /// Seed of the flight simulator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory holding coherence-verifier and coherence-sidecar (default: this executable's).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// Parses `90`, `90s`, `1500ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 60s, 2m or 0, found {s:?}"))?;
    let ms = match unit {
        "" | "s" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(|| format!("expected a duration like 60s, 2m or 0, found {s:?}"))?;
    Ok(Duration::from_millis(ms))
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 1 to 3600, found {s:?}")),
    }
}

/// One demo workload.
#[derive(Debug, Clone)]
struct Workload {
    name: String,
    stressed: bool,
}

impl Workload {
    fn key(&self) -> String {
        format!("{NAMESPACE}/{}", self.name)
    }
}

/// Everything that must go at exit: children first, then the directory.
struct Running {
    procs: Vec<Proc>,
    stop_feed: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    // Declared last: removed after the children are gone.
    dir: tempfile::TempDir,
}

impl Running {
    fn shutdown(&mut self) -> Result<(), CliError> {
        self.stop_feed.store(true, Ordering::Relaxed);
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        match self.feeder.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Err(e))) => Err(CliError::output(
                &self.dir.path().join("feed"),
                format!("the telemetry feed failed: {e}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Runs `coherence demo`.
pub fn run(a: Args) -> CliResult {
    let dir = bin_dir(a.bin_dir.as_deref())?;
    let verifier_bin = find_binary(&dir, "coherence-verifier")?;
    let sidecar_bin = find_binary(&dir, "coherence-sidecar")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::config(format!("demo: cannot start the async runtime: {e}")))?;
    runtime.block_on(demo(a, verifier_bin, sidecar_bin))
}

fn workloads(a: &Args) -> Vec<Workload> {
    let healthy = HEALTHY_NAMES
        .iter()
        .take(a.healthy as usize)
        .map(|n| Workload {
            name: (*n).to_owned(),
            stressed: false,
        });
    let stressed = STRESSED_NAMES
        .iter()
        .take(a.stressed as usize)
        .map(|n| Workload {
            name: (*n).to_owned(),
            stressed: true,
        });
    healthy.chain(stressed).collect()
}

/// SIGINT and SIGTERM, taken over from the start so that a signal during startup is not the
/// default "die now" (which would leave the children and the directory behind) but ends the
/// demo at its next look.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, CliError> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| CliError::config(format!("demo: cannot watch signals: {e}"));
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(err)?,
            term: signal(SignalKind::terminate()).map_err(err)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

async fn demo(a: Args, verifier_bin: PathBuf, sidecar_bin: PathBuf) -> CliResult {
    let mut signals = Signals::install()?;
    let tmp = tempfile::Builder::new()
        .prefix("coherence-demo-")
        .tempdir()
        .map_err(|e| CliError::output(&std::env::temp_dir(), e))?;
    let base = tmp.path().to_owned();
    let mut run = Running {
        procs: Vec::new(),
        stop_feed: Arc::new(AtomicBool::new(false)),
        feeder: None,
        dir: tmp,
    };
    let wls = workloads(&a);
    let mut out = std::io::stdout();

    // Certificates: a CA, the verifier's, one client certificate per workload (its namespace).
    let certs = base.join("certs");
    let clients = wls
        .iter()
        .map(|w| ClientSpec::new(&w.name, NAMESPACE))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::config)?;
    certgen::generate_with(
        &certs,
        &Options {
            days: 2,
            clients,
            extra_sans: Vec::new(),
            force: true,
        },
    )
    .map_err(|e| CliError::output(&certs, e))?;
    let key = hex::encode(rand::random::<[u8; 32]>());

    // The verifier.
    let verifier_log = base.join("verifier.log");
    let mut cmd = Command::new(&verifier_bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(a.listen.to_string())
        .arg("--admin-listen")
        .arg(a.admin_listen.to_string())
        .arg("--wal-dir")
        .arg(base.join("wal"))
        .arg("--tls-cert")
        .arg(certs.join("verifier.crt"))
        .arg("--tls-key")
        .arg(certs.join("verifier.key"))
        .arg("--tls-ca")
        .arg(certs.join("ca.crt"))
        .args(["--dedup-backend", "memory", "--token-rate", "0"])
        .args(["--drain-seconds", "1", "--log-format", "json"])
        .env("PCS_SIGN_ALG", "hmac")
        .env("PCS_HMAC_KEY", &key)
        .env("RUST_LOG", "info");
    for v in [
        "PCS_HMAC_KEYS",
        "PCS_ED25519_PUB_B64",
        "METRICS_USER",
        "METRICS_PASS",
    ] {
        cmd.env_remove(v);
    }
    run.procs
        .push(Proc::spawn("coherence-verifier", cmd, &verifier_log)?);
    let (listen, admin) = wait_serving(&mut run.procs[0]).await?;
    let admin_host = if admin.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], admin.port()))
    } else {
        admin
    };
    let admin_url = format!("http://{admin_host}");
    let api = Client::new(&admin_url, None)
        .map_err(|e| CliError::config(format!("demo: admin client: {e}")))?;
    wait_ready(&api, &mut run.procs[0]).await?;

    // The feed, then the sidecars that follow it.
    let started = Instant::now();
    let step_ms = i64::from(feed::STEP_S) * 1000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let t0_ms = now_ms - now_ms.rem_euclid(step_ms);
    let feed_dir = base.join("feed");
    std::fs::create_dir_all(&feed_dir).map_err(|e| CliError::output(&feed_dir, e))?;
    let target = |w: &Workload| FeedTarget {
        path: feed_dir.join(format!("{}.jsonl", w.name)),
        workload: w.name.clone(),
        pod: format!("{}-0", w.name),
    };
    let plan = FeedPlan {
        seed: a.seed,
        speed: a.speed,
        healthy: wls.iter().filter(|w| !w.stressed).map(target).collect(),
        stressed: wls.iter().filter(|w| w.stressed).map(target).collect(),
        t0_ms,
    };
    let stats = Arc::new(FeedStats::default());
    {
        let (plan, stop, stats) = (plan.clone(), run.stop_feed.clone(), stats.clone());
        run.feeder = Some(std::thread::spawn(move || {
            feed::play(&plan, started, &stop, &stats)
        }));
    }
    let endpoint = if listen.ip().is_unspecified() {
        format!("https://127.0.0.1:{}", listen.port())
    } else {
        format!("https://{listen}")
    };
    for w in &wls {
        let wdir = base.join("sidecars").join(&w.name);
        std::fs::create_dir_all(&wdir).map_err(|e| CliError::output(&wdir, e))?;
        let config = wdir.join("config.yaml");
        let yaml = sidecar_config(w, &target(w).path, &endpoint, &certs, &wdir);
        std::fs::write(&config, yaml).map_err(|e| CliError::output(&config, e))?;
        let mut cmd = Command::new(&sidecar_bin);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("PCS_SIGN_ALG", "hmac")
            .env("PCS_HMAC_KEY", &key)
            .env("RUST_LOG", "info");
        for v in [
            "ENDPOINT",
            "POD_NAMESPACE",
            "POD_NAME",
            "WORKLOAD_NAME",
            "COHERENCE_TLS_CERT",
            "COHERENCE_TLS_KEY",
            "COHERENCE_TLS_CA",
            "COHERENCE_AES_KEY",
            "PERSISTENCE",
            "POD_CPU_REQUEST",
            "POD_MEMORY_REQUEST",
            "PCS_ED25519_KEY_B64",
        ] {
            cmd.env_remove(v);
        }
        run.procs.push(Proc::spawn(
            &format!("coherence-sidecar of {}", w.key()),
            cmd,
            &wdir.join("sidecar.log"),
        )?);
    }

    let times = feed::cycle_times();
    let wall = |ms: i64| ms as f64 / 1000.0 / a.speed;
    let _ = writeln!(
        out,
        "Coherence demo: 1 verifier and {} sidecars over mTLS on loopback, the flight simulator at {}× (1 s = {} simulated)\n\
         \x20 healthy:  {}\n\
         \x20 stressed: {} (compute seizure at +{:.0} s, memory fever at +{:.0} s, retry storm at +{:.0} s, crash at +{:.0} s; again every {:.0} s)\n\
         \x20 verifier: https://{listen} (mTLS) · WAL, certificates and feeds in {}\n\
         Dashboard: {admin_url}/ui\n\
         {}",
        wls.len(),
        a.speed,
        human_sim(a.speed * 1000.0),
        names(&wls, false),
        names(&wls, true),
        wall(times.seizure_ms),
        wall(times.fever_ms),
        wall(times.storm_ms),
        wall(times.crash_ms),
        wall(times.len_ms),
        base.display(),
        if a.duration.is_zero() {
            "Serving until Ctrl-C (or SIGTERM).".to_owned()
        } else {
            format!(
                "Running for {} s (--duration 0 keeps serving).",
                a.duration.as_secs()
            )
        },
    );
    let _ = out.flush();

    // On an error, dropping `run` stops the children and removes the directory.
    let interrupted = watch(&a, &api, &mut run, started, &wls, &mut signals).await?;
    let summary = summarize(&api, &wls, started.elapsed(), a.speed, interrupted).await;
    let _ = writeln!(out, "{summary}The dashboard was at {admin_url}/ui");
    let _ = out.flush();
    run.shutdown()
}

fn names(wls: &[Workload], stressed: bool) -> String {
    wls.iter()
        .filter(|w| w.stressed == stressed)
        .map(Workload::key)
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_sim(ms: f64) -> String {
    let s = ms / 1000.0;
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

/// The sidecar configuration of one demo workload.
fn sidecar_config(w: &Workload, feed: &Path, endpoint: &str, certs: &Path, dir: &Path) -> String {
    format!(
        r#"# coherence demo: workload {key} ({role})
identity: {{namespace: {ns}, workload: {name}, pod: {name}-0}}
sources:
  - name: sim
    type: jsonl
    path: "{feed}"
    interval: 200ms
    from: start
    signals: [cpu, memory_mb, requests_in, requests_out, qps, latency_p95_ms]
epoch: 1s
windows: [5m, 15m]
pcs: {{signal: cpu, window: 5m}}
finops: {{qpsSignal: qps, latencySignal: latency_p95_ms, costPerReplicaHourUsd: {price}}}
verifier:
  endpoint: {endpoint}
  ca: "{ca}"
  cert: "{cert}"
  key: "{keyfile}"
  timeout: 5s
outbox: {{dir: "{outbox}"}}
delivery: {{backoffBase: 50ms, backoffMax: 1s}}
api: {{listen: "127.0.0.1:0"}}
persistence: {{kind: none}}
"#,
        key = w.key(),
        role = if w.stressed { "stressed" } else { "healthy" },
        ns = NAMESPACE,
        name = w.name,
        feed = feed.display(),
        price = POD_USD_PER_HOUR,
        ca = certs.join("ca.crt").display(),
        cert = certs.join(format!("{}.crt", w.name)).display(),
        keyfile = certs.join(format!("{}.key", w.name)).display(),
        outbox = dir.join("outbox").display(),
    )
}

/// Waits for the verifier's "serving" log line and returns the addresses it bound.
async fn wait_serving(p: &mut Proc) -> Result<(SocketAddr, SocketAddr), CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["message"] != "coherence-verifier serving" {
                continue;
            }
            let addr = |k: &str| v[k].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
            if let (Some(l), Some(a)) = (addr("listen"), addr("admin")) {
                return Ok((l, a));
            }
        }
        if let Some(status) = p.exited() {
            return Err(CliError::config(format!(
                "demo: the verifier exited ({status}) before serving; is another demo running? \
                 (--listen / --admin-listen choose other ports, 0 a free one). Its log:\n{}",
                p.log_tail(5)
            )));
        }
        if Instant::now() > deadline {
            return Err(CliError::config(format!(
                "demo: the verifier did not start serving within 30 s. Its log:\n{}",
                p.log_tail(5)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(api: &Client, p: &mut Proc) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = api.get("/readyz").await {
            if r.status == 200 {
                return Ok(());
            }
        }
        if let Some(status) = p.exited() {
            return Err(CliError::config(format!(
                "demo: the verifier exited ({status}). Its log:\n{}",
                p.log_tail(5)
            )));
        }
        if Instant::now() > deadline {
            return Err(CliError::config(
                "demo: the verifier was not ready within 30 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(api: &Client, path: &str) -> Option<Value> {
    let r = api.get(path).await.ok()?;
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

/// Sums the samples of one metric family in an OpenMetrics text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v.max(0.0) as u64)
        .sum()
}

/// Counts of the verifier, for the progress line and the summary.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    accepted: u64,
    escalated: u64,
    rejected: u64,
}

async fn counts(api: &Client) -> Counts {
    let Ok(r) = api.get("/metrics").await else {
        return Counts::default();
    };
    let text = r.text();
    Counts {
        accepted: metric_sum(&text, "flk_accepted"),
        escalated: metric_sum(&text, "flk_escalated"),
        rejected: metric_sum(&text, "coherence_rejected_total"),
    }
}

/// Runs until the duration is over (Ok(false)) or a signal arrives (Ok(true)); a child that
/// dies ends the demo with its log.
async fn watch(
    a: &Args,
    api: &Client,
    run: &mut Running,
    started: Instant,
    wls: &[Workload],
    signals: &mut Signals,
) -> Result<bool, CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = (!a.duration.is_zero()).then(|| started + a.duration);
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut out = std::io::stdout();
    let interrupted = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signals.recv() => break true,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break false;
        }
        for p in &mut run.procs {
            if let Some(status) = p.exited() {
                return Err(CliError::check(format!(
                    "demo: the {} exited unexpectedly ({status}). Its log:\n{}",
                    p.name,
                    p.log_tail(8)
                )));
            }
        }
        let c = counts(api).await;
        let list = get_json(api, "/v1/workloads").await.unwrap_or(Value::Null);
        let mut incidents = 0;
        let mut risks = Vec::new();
        for w in wls {
            let item = list["workloads"].as_array().and_then(|l| {
                l.iter()
                    .find(|x| x["namespace"] == NAMESPACE && x["workload"] == w.name.as_str())
            });
            incidents += item.and_then(|x| x["incidents"].as_u64()).unwrap_or(0);
            let risk = item
                .and_then(|x| x["driftRisk"].as_str())
                .unwrap_or("waiting");
            risks.push(format!("{} {}", w.name, risk));
        }
        let secs = started.elapsed().as_secs();
        let of = deadline.map_or(String::new(), |_| format!("/{}s", a.duration.as_secs()));
        let line = format!(
            "[{secs:>3}s{of}] records accepted {} · escalated {} · rejected {} · incidents {incidents} · drift risk: {}",
            c.accepted,
            c.escalated,
            c.rejected,
            risks.join(", ")
        );
        if tty {
            let _ = write!(out, "\r\x1b[2K{line}");
            let _ = out.flush();
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(out, "{line}");
            last_line = Instant::now();
        }
    };
    if tty {
        let _ = writeln!(out);
    }
    Ok(interrupted)
}

/// The verifier's view of every workload, as text.
async fn summarize(
    api: &Client,
    wls: &[Workload],
    elapsed: Duration,
    speed: f64,
    interrupted: bool,
) -> String {
    let c = counts(api).await;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== Summary after {} s{} ({} simulated): {} workloads; the verifier accepted {} records, escalated {}, rejected {}\n",
        elapsed.as_secs(),
        if interrupted { ", interrupted" } else { "" },
        human_sim(elapsed.as_secs_f64() * 1000.0 * speed),
        wls.len(),
        c.accepted,
        c.escalated,
        c.rejected
    );
    let _ = writeln!(
        s,
        "{:<16} {:<9} {:<11} {:<32} {:>7}  {:<8} {:<15} {:>9}",
        "WORKLOAD",
        "ROLE",
        "DRIFT RISK",
        "MOST VOLATILE WINDOW",
        "FTI",
        "GRADE",
        "PCS ok/esc/rej",
        "INCIDENTS"
    );
    let mut incidents: Vec<(String, Value)> = Vec::new();
    for w in wls {
        let path = format!("/v1/workloads/{NAMESPACE}/{}", w.name);
        let Some(v) = get_json(api, &path).await else {
            let _ = writeln!(
                s,
                "{:<16} {:<9} (no records reached the verifier)",
                w.key(),
                role(w)
            );
            continue;
        };
        let worst = v["signals"]
            .as_array()
            .and_then(|sigs| {
                sigs.iter().max_by(|x, y| {
                    let f = |z: &Value| z["volatilityIndex"].as_f64().unwrap_or(0.0);
                    f(x).total_cmp(&f(y))
                })
            })
            .map(|x| {
                format!(
                    "{} over {}: {:.3}",
                    x["signal"].as_str().unwrap_or("?"),
                    x["window"].as_str().unwrap_or("?"),
                    x["volatilityIndex"].as_f64().unwrap_or(0.0)
                )
            })
            .unwrap_or_else(|| "-".into());
        let report = &v["finops"]["report"];
        let fti = report["ftiAvg"]
            .as_f64()
            .map_or("-".into(), |f| format!("{f:.3}"));
        let grade = report["grade"].as_str().unwrap_or("UNKNOWN");
        let pcs = format!(
            "{}/{}/{}",
            v["pcs"]["accepted"], v["pcs"]["escalated"], v["pcs"]["rejected"]
        );
        let list = v["incidents"].as_array().cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<16} {:<9} {:<11} {:<32} {:>7}  {:<8} {:<15} {:>9}",
            w.key(),
            role(w),
            v["driftRisk"].as_str().unwrap_or("?"),
            worst,
            fti,
            grade,
            pcs,
            list.len()
        );
        incidents.extend(list.into_iter().map(|i| (w.key(), i)));
    }
    let _ = writeln!(s, "\n== Incidents ({})", incidents.len());
    if incidents.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for (key, i) in &incidents {
        let _ = writeln!(
            s,
            "\n  {key}: {} (risk {:.2}{}), {} → {}, {} findings",
            i["pattern"].as_str().unwrap_or("?"),
            i["risk"].as_f64().unwrap_or(0.0),
            if i["alert"] == true { ", alert" } else { "" },
            i["start"].as_str().unwrap_or("?"),
            i["end"].as_str().unwrap_or("?"),
            i["findings"]
        );
        let _ = writeln!(s, "    {}", i["narrative"].as_str().unwrap_or(""));
        match i["veto"].as_str() {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "    veto recommendation: {v} — {}",
                    i["vetoReason"].as_str().unwrap_or("")
                );
            }
            None => {
                let _ = writeln!(s, "    no veto (risk below the veto threshold)");
            }
        }
    }
    s.push('\n');
    s
}

fn role(w: &Workload) -> &'static str {
    if w.stressed { "stressed" } else { "healthy" }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_take_units_and_a_bare_number_is_seconds() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn metric_sums_add_every_labelled_sample_of_one_family() {
        let text = "# TYPE flk_accepted gauge\nflk_accepted 12\nflk_accepted_x 5\n\
                    coherence_rejected_total{reason=\"sig\"} 2\ncoherence_rejected_total{reason=\"ns\"} 3\n";
        assert_eq!(metric_sum(text, "flk_accepted"), 12);
        assert_eq!(metric_sum(text, "coherence_rejected_total"), 5);
        assert_eq!(metric_sum(text, "flk_escalated"), 0);
    }

    #[test]
    fn a_missing_binary_is_named_with_the_way_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = find_binary(dir.path(), "coherence-sidecar").unwrap_err();
        assert_eq!(e.code, procs::EXIT_MISSING_BINARY);
        assert!(e.msg.contains("coherence-sidecar not found"), "{}", e.msg);
        assert!(e.msg.contains("make build"), "{}", e.msg);
    }
}
