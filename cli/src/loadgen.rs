//! `coherence loadgen`: open-loop load against a verifier — signed PCS records (fresh,
//! resent, tampered) and signal reports at a fixed rate — with a JSON summary of what came back.
//!
//! Every body is built before the clock starts, so what is measured is the verifier, not the
//! generator: a few PCS templates are computed with `pcs::build`, and each request gets a copy
//! with its own shard and epoch (hence its own `pcs_id`) and a fresh signature.

use crate::error::{CliError, CliResult};
use crate::files::Output;
use bytes::Bytes;
use coherence_core::pcs::{self, BuildInput, KeyEnv, Params, Pcs, Signer};
use coherence_core::report::{self, FinopsSample, SignalReport, WindowReport};
use coherence_core::rng::SplitMix64;
use coherence_core::window::DriftRisk;
use coherence_verifier::client::{Client, Options as ClientOptions};
use coherence_verifier::tls::{self, Identity, TlsError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HELP: &str = "\
Requests are sent on a fixed schedule (request i at i/RATE seconds) whatever the answers, with
at most --concurrency in flight (one connection each). The mix:
  --dup-fraction F       resend the body of an earlier PCS (same pcs_id: the stored answer)
  --invalid-fraction F   a signed PCS with a digit of D_hat changed afterwards (expect 401)
  --signals-fraction F   a signed SignalReport to /v1/signals/submit
  the rest               a fresh signed PCS to /v1/pcs/submit
Fractions are spread evenly over the run, so the counts are exact to within one.

Records are signed with the keys of the environment: PCS_SIGN_ALG, PCS_HMAC_KEY or
PCS_ED25519_KEY_B64 (`coherence keys gen`). Shards are <namespace>/<workload>/<pod>; the
namespaces are --namespace, else the client certificate's, else shop, payments and search
(for a certificate of namespace *). Pods carry a run id from --seed, so two runs with the same
seed send the same pcs_ids.

On stdout (and in --out FILE): a JSON summary with the requested and achieved rate (answers
per second of the run), counts per status, transport errors by kind, latency p50/p95/p99/max
(ms, from sending to the whole answer), connections and TLS handshakes. --record FILE gets
one JSON line per request: {\"seq\", \"kind\", \"pcs_id\" or \"report_id\", \"status\"} (status
null and \"error\" for a transport error). A progress line goes to stderr every second when
stderr is a terminal, or with --progress. Requests still unsent at --duration plus --timeout
(a verifier far behind) are counted as not_sent; Ctrl-C stops sending and prints the summary.

Exits 0 when the run completed, 1 when no request got an answer at all.

Examples:
  coherence certs gen --out certs && eval \"$(coherence keys gen)\"
  coherence loadgen --endpoint https://127.0.0.1:8443 --certs certs --rate 500 --duration 30s \\
    --concurrency 32 --dup-fraction 0.05 --invalid-fraction 0.01 --signals-fraction 0.2";

/// Flags of `coherence loadgen`.
#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct Args {
    /// The verifier: https://HOST:PORT (mTLS) or http://HOST:PORT (a verifier in --insecure-dev).
    #[arg(long, env = "ENDPOINT", value_name = "URL")]
    endpoint: String,
    /// Requests per second.
    #[arg(long, value_name = "R")]
    rate: f64,
    /// How long to send: 500ms, 30s, 2m, 1h, or plain seconds.
    #[arg(long, value_name = "D")]
    duration: String,
    /// Most requests in flight, and so most connections.
    #[arg(long, default_value_t = 16, value_name = "C")]
    concurrency: usize,
    /// Fraction of requests that resend an earlier PCS body.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    dup_fraction: f64,
    /// Fraction of requests that are tampered PCS records (bad signature).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    invalid_fraction: f64,
    /// Fraction of requests that are signal reports.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    signals_fraction: f64,
    /// Put every shard in this namespace.
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// A directory from `coherence certs gen`: its ca.crt, client.crt and client.key.
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,
    /// CA certificate of the verifier (instead of --certs).
    #[arg(long, env = "COHERENCE_TLS_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (instead of --certs).
    #[arg(long, env = "COHERENCE_TLS_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Client key (instead of --certs).
    #[arg(long, env = "COHERENCE_TLS_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Also write the summary JSON to this file.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write one JSON line per request (id, kind, status) to this file.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Print the progress line even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Seed of the generated records and of the run id in pod names (default: random).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Limit on each request (connect, send, whole answer).
    #[arg(long, default_value = "10s", value_name = "D")]
    timeout: String,
}

// ---------------------------------------------------------------------------------------------
// Flags

/// Parses `500ms`, `30s`, `2m`, `1h` or plain (fractional) seconds.
pub(crate) fn parse_duration(flag: &str, s: &str) -> Result<Duration, CliError> {
    let err = || {
        CliError::config(format!(
            "{flag}: expected a positive duration like 500ms, 30s, 2m or 1h, found {s:?}"
        ))
    };
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| err())?;
    let secs = v * mult;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn check_fraction(flag: &str, v: f64) -> Result<f64, CliError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(CliError::config(format!(
            "{flag}: expected a fraction in [0, 1], found {v}"
        )))
    }
}

fn tls_error(e: TlsError) -> CliError {
    let code = match e {
        TlsError::Read { .. } => 66,
        TlsError::Content { .. } => 65,
        TlsError::Config { .. } => 64,
    };
    CliError {
        code,
        msg: e.to_string(),
    }
}

/// The client TLS files, when the endpoint needs them.
fn tls_files(a: &Args) -> Result<Option<(PathBuf, PathBuf, PathBuf)>, CliError> {
    if !a.endpoint.trim().starts_with("https://") {
        return Ok(None);
    }
    if let Some(dir) = &a.certs {
        return Ok(Some((
            dir.join("ca.crt"),
            dir.join("client.crt"),
            dir.join("client.key"),
        )));
    }
    match (&a.ca, &a.cert, &a.key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some((ca.clone(), cert.clone(), key.clone()))),
        _ => Err(CliError::config(format!(
            "--endpoint {}: expected client certificates for https: --certs DIR, or --ca, --cert and --key (COHERENCE_TLS_CA, COHERENCE_TLS_CERT, COHERENCE_TLS_KEY)",
            a.endpoint
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The plan: every request, decided and built before the clock starts

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A fresh signed PCS.
    Pcs,
    /// The body of an earlier PCS again.
    Dup,
    /// A PCS tampered after signing.
    Invalid,
    /// A signed signal report.
    Signals,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Pcs => "pcs",
            Kind::Dup => "dup",
            Kind::Invalid => "invalid",
            Kind::Signals => "signals",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Signals => "/v1/signals/submit",
            _ => "/v1/pcs/submit",
        }
    }
}

/// Spreads the kinds over `n` requests: each request goes to the kind (fresh PCS included,
/// with the remaining fraction) furthest behind its share `(i+1)·F`, so every count stays
/// within one of its share all along the run and ends within one of `n·F`.
pub(crate) fn mix(n: usize, dup: f64, invalid: f64, signals: f64) -> Vec<Kind> {
    let kinds = [
        (Kind::Pcs, (1.0 - dup - invalid - signals).max(0.0)),
        (Kind::Dup, dup),
        (Kind::Invalid, invalid),
        (Kind::Signals, signals),
    ];
    let mut counts = [0.0f64; 4];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let due = i as f64 + 1.0;
        let mut best = 0;
        let mut best_deficit = f64::NEG_INFINITY;
        for (c, (_, f)) in kinds.iter().enumerate() {
            let deficit = due * f - counts[c];
            // Strictly greater: a tie goes to the earlier kind, fresh PCS first.
            if *f > 0.0 && deficit > best_deficit + 1e-9 {
                best = c;
                best_deficit = deficit;
            }
        }
        counts[best] += 1.0;
        out.push(kinds[best].0);
    }
    // A resend needs an earlier record: swap the first resend with the first fresh PCS after
    // it (counts unchanged), or make it fresh when the mix has none.
    if let Some(first) = out.iter().position(|k| matches!(k, Kind::Pcs | Kind::Dup))
        && out[first] == Kind::Dup
    {
        match out[first..].iter().position(|k| *k == Kind::Pcs) {
            Some(j) => out.swap(first, first + j),
            None => out[first] = Kind::Pcs,
        }
    }
    out
}

/// One request, ready to send.
struct Planned {
    kind: Kind,
    id: Arc<str>,
    body: Bytes,
}

/// What a fresh body is made of.
#[derive(Clone, Copy)]
struct Spec {
    kind: Kind,
    shard: usize,
    epoch: u64,
    template: usize,
}

const TEMPLATES: usize = 8;
const WORKLOADS: &[&str] = &["checkout-api", "worker", "web"];
const PODS: usize = 4;
const DEFAULT_NAMESPACES: &[&str] = &["shop", "payments", "search"];

fn templates(seed: u64) -> Result<Vec<Pcs>, CliError> {
    let mut rng = SplitMix64::new(seed);
    let events: Vec<Vec<u8>> = (0..16).map(|i| format!("event-{i}").into_bytes()).collect();
    (0..TEMPLATES)
        .map(|t| {
            let freq = 0.05 + 0.07 * t as f64;
            let amp = 5.0 + 3.0 * t as f64;
            let values: Vec<f64> = (0..256)
                .map(|i| 50.0 + amp * (i as f64 * freq).sin() + rng.normal())
                .collect();
            pcs::build(
                &BuildInput {
                    values: &values,
                    events: &events[..8 + t],
                    shard_id: "loadgen/template/template-0",
                    epoch: 1,
                    attempt: 1,
                    sent_at: "2026-01-01T00:00:00Z",
                    seed: seed ^ t as u64,
                    scales: &[2, 4, 8, 16, 32],
                },
                &Params::default(),
            )
            .map_err(|e| CliError::data(format!("loadgen: cannot build a PCS template: {e}")))
        })
        .collect()
}

/// Changes the first digit after the decimal point of `D_hat` (the integer's last digit when
/// there is none): a change of at least 0.1, which the signature's 9-decimal rounding sees.
pub(crate) fn tamper_d_hat(json: &str) -> Option<String> {
    let key = "\"D_hat\":";
    let start = json.find(key)? + key.len();
    let rest = &json[start..];
    let len = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    let number = &rest[..len];
    let at = match number.find('.') {
        Some(dot) if number[dot + 1..].starts_with(|c: char| c.is_ascii_digit()) => dot + 1,
        _ => number
            .find(['e', 'E'])
            .unwrap_or(number.len())
            .checked_sub(1)?,
    };
    let digit = number.as_bytes().get(at).filter(|b| b.is_ascii_digit())?;
    let flipped = char::from(b'0' + (digit - b'0' + 1) % 10);
    let mut out = String::with_capacity(json.len());
    out.push_str(&json[..start + at]);
    out.push(flipped);
    out.push_str(&json[start + at + 1..]);
    Some(out)
}

struct Builder<'a> {
    signer: &'a Signer,
    templates: &'a [Pcs],
    shards: &'a [String],
    sent_at: String,
    at_ms: i64,
}

impl Builder<'_> {
    fn build(&self, spec: Spec) -> Result<Planned, CliError> {
        let shard = &self.shards[spec.shard];
        let fail = |e: &dyn std::fmt::Display| CliError::data(format!("loadgen: {shard}: {e}"));
        if spec.kind == Kind::Signals {
            let mut r = SignalReport {
                report_id: String::new(),
                schema: report::SCHEMA.to_owned(),
                version: report::VERSION.to_owned(),
                shard_id: shard.clone(),
                epoch: spec.epoch,
                sent_at: self.sent_at.clone(),
                engine_version: coherence_core::ENGINE_VERSION.to_owned(),
                windows: vec![WindowReport {
                    signal: "latency_p95_ms".to_owned(),
                    window: "5m".parse().map_err(|e| fail(&e))?,
                    mean: 80.0 + spec.template as f64,
                    stdev: 4.0,
                    volatility_index: 4.0 / (80.0 + spec.template as f64),
                    drift_risk: DriftRisk::Low,
                    n: 30,
                    window_start_ms: self.at_ms - 300_000,
                    window_end_ms: self.at_ms,
                }],
                findings: Vec::new(),
                finops: vec![FinopsSample {
                    at_ms: self.at_ms,
                    qps: 120.0,
                    latency_p95_ms: 80.0,
                    infra_cost_usd: 0.0005,
                }],
                sig: String::new(),
            };
            r.sign(self.signer).map_err(|e| fail(&e))?;
            let body = serde_json::to_string(&r).map_err(|e| fail(&e))?;
            return Ok(Planned {
                kind: Kind::Signals,
                id: Arc::from(r.report_id.as_str()),
                body: Bytes::from(body),
            });
        }
        let mut p = self.templates[spec.template].clone();
        p.shard_id.clone_from(shard);
        p.epoch = spec.epoch;
        p.sent_at.clone_from(&self.sent_at);
        p.pcs_id = pcs::pcs_id(&p.merkle_root, p.epoch, &p.shard_id);
        self.signer.sign(&mut p).map_err(|e| fail(&e))?;
        let mut body = p.to_json();
        if spec.kind == Kind::Invalid {
            body = tamper_d_hat(&body)
                .ok_or_else(|| fail(&"the record has no D_hat number to change"))?;
        }
        Ok(Planned {
            kind: spec.kind,
            id: Arc::from(p.pcs_id.as_str()),
            body: Bytes::from(body),
        })
    }
}

fn plan(
    kinds: &[Kind],
    signer: &Signer,
    namespaces: &[String],
    seed: u64,
) -> Result<Vec<Planned>, CliError> {
    let run_id = format!("{:06x}", seed & 0xff_ffff);
    let shards: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| {
            let run_id = &run_id;
            WORKLOADS
                .iter()
                .flat_map(move |w| (0..PODS).map(move |p| format!("{ns}/{w}/{w}-{run_id}-{p}")))
        })
        .collect();
    let templates = templates(seed)?;
    let mut pcs_epochs = vec![0u64; shards.len()];
    let mut signal_epochs = vec![0u64; shards.len()];
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    // Fresh bodies are independent of each other: decide each one's shard and epoch here, build
    // them in parallel, then point every resend at an earlier fresh PCS.
    let specs: Vec<Option<Spec>> = kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            if kind == Kind::Dup {
                return None;
            }
            let shard = (rng.next_u64() % shards.len() as u64) as usize;
            let epochs = if kind == Kind::Signals {
                &mut signal_epochs
            } else {
                &mut pcs_epochs
            };
            epochs[shard] += 1;
            Some(Spec {
                kind,
                shard,
                epoch: epochs[shard],
                template: i % TEMPLATES,
            })
        })
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let builder = Builder {
        signer,
        templates: &templates,
        shards: &shards,
        sent_at: coherence_core::telemetry::format_ts_ms(now_ms),
        at_ms: now_ms,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = specs.len().div_ceil(threads).max(1);
    let built: Vec<Result<Vec<Option<Planned>>, CliError>> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .chunks(chunk)
            .map(|part| {
                let builder = &builder;
                s.spawn(move || {
                    part.iter()
                        .map(|spec| spec.map(|sp| builder.build(sp)).transpose())
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(CliError::data("loadgen: a body-building thread panicked"))
                })
            })
            .collect()
    });
    let mut out: Vec<Planned> = Vec::with_capacity(kinds.len());
    let mut fresh: Vec<usize> = Vec::new();
    for item in built
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        match item {
            Some(p) => {
                if p.kind == Kind::Pcs {
                    fresh.push(out.len());
                }
                out.push(p);
            }
            None => {
                // `mix` makes the first PCS of the run fresh, so there is always one before.
                let Some(&last) = fresh.last() else {
                    return Err(CliError::data("loadgen: a resend before any fresh PCS"));
                };
                let pick = fresh
                    .get((rng.next_u64() % fresh.len() as u64) as usize)
                    .copied()
                    .unwrap_or(last);
                let original = &out[pick];
                out.push(Planned {
                    kind: Kind::Dup,
                    id: original.id.clone(),
                    body: original.body.clone(),
                });
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Latency histogram

/// A lock-free log-linear histogram of microseconds: 64 linear sub-buckets per power of two,
/// so a reported percentile is within 1/64 (1.6 %) of the recorded value.
pub(crate) struct Histogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
    sum: AtomicU64,
    total: AtomicU64,
}

const SUB_BITS: u32 = 7;
const HALF: usize = 1 << (SUB_BITS - 1);

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            counts: (0..HALF * 66).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < (1 << SUB_BITS) {
            return v as usize;
        }
        let shift = 64 - v.leading_zeros() - SUB_BITS;
        ((shift as usize) << (SUB_BITS - 1)) + (v >> shift) as usize
    }

    /// The largest value that falls into bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < (1 << SUB_BITS) {
            return i as u64;
        }
        let shift = (i >> (SUB_BITS - 1)) - 1;
        let top = (i - (shift << (SUB_BITS - 1))) as u128;
        // u128: the top buckets end past u64::MAX.
        u64::try_from(((top + 1) << shift) - 1).unwrap_or(u64::MAX)
    }

    pub(crate) fn record(&self, micros: u64) {
        let i = Self::index(micros).min(self.counts.len() - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
        self.sum.fetch_add(micros, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0..=1) in microseconds; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max.load(Ordering::Relaxed));
            }
        }
        self.max.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub(crate) fn mean(&self) -> f64 {
        let n = self.count();
        if n == 0 {
            0.0
        } else {
            self.sum.load(Ordering::Relaxed) as f64 / n as f64
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Default)]
struct Tally {
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    first_error: Option<String>,
}

struct Stats {
    hist: Histogram,
    sent: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    tally: Mutex<Tally>,
}

/// One line of the record file.
struct Outcome {
    seq: usize,
    kind: Kind,
    id: Arc<str>,
    result: Result<u16, &'static str>,
}

fn record_line(o: &Outcome) -> String {
    let id_key = if o.kind == Kind::Signals {
        "report_id"
    } else {
        "pcs_id"
    };
    let mut v = json!({ "seq": o.seq, "kind": o.kind.as_str(), id_key: &*o.id });
    match o.result {
        Ok(status) => v["status"] = json!(status),
        Err(kind) => {
            v["status"] = Value::Null;
            v["error"] = json!(kind);
        }
    }
    v.to_string()
}

/// Writes the record file as answers arrive, on its own thread.
fn spawn_recorder(
    path: &Path,
) -> Result<
    (
        std::sync::mpsc::Sender<Outcome>,
        std::thread::JoinHandle<CliResult>,
    ),
    CliError,
> {
    let file = std::fs::File::create(path).map_err(|e| CliError::output(path, e))?;
    let (tx, rx) = std::sync::mpsc::channel::<Outcome>();
    let path = path.to_owned();
    let handle = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(file);
        for o in rx {
            writeln!(w, "{}", record_line(&o)).map_err(|e| CliError::output(&path, e))?;
        }
        w.flush().map_err(|e| CliError::output(&path, e))?;
        w.into_inner()
            .map_err(|e| CliError::output(&path, e.error()))?
            .sync_all()
            .map_err(|e| CliError::output(&path, e))
    });
    Ok((tx, handle))
}

struct RunResult {
    elapsed: Duration,
    sent: usize,
    interrupted: bool,
    max_lag: Duration,
}

/// How to send.
struct Pace {
    /// Requests per second.
    rate: f64,
    /// Nothing is sent later than this after the start.
    deadline: Duration,
    /// Most requests in flight.
    concurrency: usize,
    /// Print a progress line every second.
    progress: bool,
}

async fn run_load(
    client: &Client,
    plan: Vec<Planned>,
    pace: Pace,
    stats: &Arc<Stats>,
    recorder: Option<std::sync::mpsc::Sender<Outcome>>,
) -> RunResult {
    let Pace {
        rate,
        deadline,
        concurrency,
        progress,
    } = pace;
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = tokio::time::Instant::now();
    let stop_progress = Arc::new(AtomicBool::new(false));
    let progress_task = progress.then(|| {
        let stats = stats.clone();
        let stop = stop_progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let done = stats.done.load(Ordering::Relaxed);
                let failed = stats.failed.load(Ordering::Relaxed);
                eprintln!(
                    "loadgen: {:>4.0}s sent {} answered {} ({}/s) p95 {:.1} ms errors {}",
                    start.elapsed().as_secs_f64(),
                    stats.sent.load(Ordering::Relaxed),
                    done,
                    done + failed - last,
                    stats.hist.quantile(0.95) as f64 / 1000.0,
                    failed
                );
                last = done + failed;
            }
        })
    });

    // Where no handler can be installed, Ctrl-C simply ends the process as usual.
    let mut ctrl_c = std::pin::pin!(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let mut interrupted = false;
    let mut max_lag = Duration::ZERO;
    let mut sent = 0;
    for (seq, item) in plan.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(seq as f64 / rate);
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = &mut ctrl_c => { interrupted = true; break; }
        }
        // A verifier that falls far behind would otherwise keep the run going long after
        // --duration: what could not be sent by the deadline is counted as not sent.
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = tokio::time::sleep_until(start + deadline) => break,
            () = &mut ctrl_c => { interrupted = true; break; }
        };
        max_lag = max_lag.max(due.elapsed());
        sent += 1;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let client = client.clone();
        let stats = stats.clone();
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let result = client.post_json(item.kind.path(), item.body).await;
            let micros = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            let result = match result {
                Ok(resp) => {
                    stats.hist.record(micros);
                    stats.done.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut t) = stats.tally.lock() {
                        *t.status.entry(resp.status).or_default() += 1;
                    }
                    Ok(resp.status)
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut t) = stats.tally.lock() {
                        *t.errors.entry(e.kind()).or_default() += 1;
                        t.first_error.get_or_insert_with(|| e.to_string());
                    }
                    Err(e.kind())
                }
            };
            if let Some(r) = recorder {
                let _ = r.send(Outcome {
                    seq,
                    kind: item.kind,
                    id: item.id,
                    result,
                });
            }
            drop(permit);
        });
    }
    // Every permit back means every request sent has its answer (or its error).
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let _ = sem.acquire_many(all).await;
    let elapsed = start.elapsed();
    stop_progress.store(true, Ordering::Relaxed);
    if let Some(t) = progress_task {
        t.abort();
    }
    RunResult {
        elapsed,
        sent,
        interrupted,
        max_lag,
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Runs `coherence loadgen`.
pub fn run(a: Args) -> CliResult {
    if !(a.rate.is_finite() && a.rate > 0.0) {
        return Err(CliError::config(format!(
            "--rate: expected requests per second > 0, found {}",
            a.rate
        )));
    }
    let duration = parse_duration("--duration", &a.duration)?;
    let timeout = parse_duration("--timeout", &a.timeout)?;
    if a.concurrency == 0 || a.concurrency > 100_000 {
        return Err(CliError::config(format!(
            "--concurrency: expected 1 to 100000, found {}",
            a.concurrency
        )));
    }
    let dup = check_fraction("--dup-fraction", a.dup_fraction)?;
    let invalid = check_fraction("--invalid-fraction", a.invalid_fraction)?;
    let signals = check_fraction("--signals-fraction", a.signals_fraction)?;
    if dup + invalid + signals > 1.0 + 1e-9 {
        return Err(CliError::config(format!(
            "--dup-fraction, --invalid-fraction, --signals-fraction: expected a sum of at most 1, found {}",
            dup + invalid + signals
        )));
    }
    let planned = (a.rate * duration.as_secs_f64()).round();
    if planned > 50_000_000.0 {
        return Err(CliError::config(format!(
            "--rate × --duration: expected at most 50000000 requests, found {planned}"
        )));
    }
    let n = (planned as usize).max(1);
    if let Some(ns) = &a.namespace
        && (!tls::is_namespace(ns) || ns == tls::ANY_NAMESPACE)
    {
        return Err(CliError::config(format!(
            "--namespace: expected a namespace name (lowercase letters, digits, -), found {ns:?}"
        )));
    }

    let env = KeyEnv::from_lookup(|k| std::env::var(k).ok());
    let signer = Signer::from_env(&env).map_err(|e| CliError::config(e.to_string()))?;

    let files = tls_files(&a)?;
    let (tls_config, identity) = match &files {
        Some((ca, cert, key)) => {
            let config = tls::client_config(ca, cert, key).map_err(tls_error)?;
            let identity = match Identity::from_cert_file(tls::ENV_CERT, cert) {
                Ok(id) => Some(id),
                Err(e) => {
                    eprintln!("coherence: warning: {e}; the verifier will refuse its records");
                    None
                }
            };
            (Some(config), identity)
        }
        None => (None, None),
    };
    let namespaces: Vec<String> = match (&a.namespace, &identity) {
        (Some(ns), id) => {
            if let Some(id) = id
                && !id.allows(ns)
            {
                eprintln!(
                    "coherence: warning: --namespace {ns}: the client certificate {id} may not submit for it; expect 403"
                );
            }
            vec![ns.clone()]
        }
        (None, Some(id)) if id.namespace != tls::ANY_NAMESPACE => vec![id.namespace.clone()],
        _ => DEFAULT_NAMESPACES.iter().map(|s| (*s).to_owned()).collect(),
    };

    let seed = a.seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        u64::from_le_bytes(b)
    });
    let show_progress = a.progress || std::io::stderr().is_terminal();
    if show_progress {
        eprintln!("loadgen: building {n} request bodies");
    }
    let kinds = mix(n, dup, invalid, signals);
    let plan = plan(&kinds, &signer, &namespaces, seed)?;
    let mut mix_counts: BTreeMap<&str, u64> = BTreeMap::new();
    for p in &plan {
        *mix_counts.entry(p.kind.as_str()).or_default() += 1;
    }

    let client = Client::with_options(
        &a.endpoint,
        tls_config,
        ClientOptions {
            connect_timeout: timeout.min(Duration::from_secs(5)),
            request_timeout: timeout,
            max_idle: a.concurrency,
        },
    )
    .map_err(|e| CliError::config(e.to_string()))?;

    let (recorder, recorder_thread) = match &a.record {
        Some(p) => {
            let (tx, h) = spawn_recorder(p)?;
            (Some(tx), Some(h))
        }
        None => (None, None),
    };
    let stats = Arc::new(Stats {
        hist: Histogram::new(),
        sent: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        tally: Mutex::new(Tally::default()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::config(format!("loadgen: cannot start the async runtime: {e}")))?;
    let pace = Pace {
        rate: a.rate,
        deadline: duration + timeout,
        concurrency: a.concurrency,
        progress: show_progress,
    };
    let result = runtime.block_on(run_load(&client, plan, pace, &stats, recorder));
    drop(runtime);
    if let Some(h) = recorder_thread {
        h.join()
            .unwrap_or_else(|_| Err(CliError::data("loadgen: the record writer panicked")))?;
    }

    let tally = stats
        .tally
        .lock()
        .map(|t| (t.status.clone(), t.errors.clone(), t.first_error.clone()))
        .unwrap_or_default();
    let (status, errors, first_error) = tally;
    let answered = stats.done.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let elapsed = result.elapsed.as_secs_f64().max(1e-9);
    let h = &stats.hist;
    let summary = json!({
        "endpoint": client.endpoint(),
        "requested_rate": a.rate,
        "achieved_rate": round3(answered as f64 / elapsed),
        "duration_s": duration.as_secs_f64(),
        "elapsed_s": round3(elapsed),
        "concurrency": a.concurrency,
        "planned": n,
        "sent": result.sent,
        "not_sent": n - result.sent,
        "interrupted": result.interrupted,
        "mix": mix_counts,
        "answered": answered,
        "status": status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "transport_errors": failed,
        "errors": errors,
        "latency_ms": {
            "p50": ms(h.quantile(0.50)),
            "p95": ms(h.quantile(0.95)),
            "p99": ms(h.quantile(0.99)),
            "max": ms(h.max()),
            "mean": round3(h.mean() / 1000.0),
        },
        "max_schedule_lag_ms": round3(result.max_lag.as_secs_f64() * 1000.0),
        "connections": client.connections(),
        "handshakes": client.handshakes(),
        "resumed_handshakes": client.resumed_handshakes(),
        "handshakes_per_s": round3(client.handshakes() as f64 / elapsed),
        "namespaces": namespaces,
        "seed": seed,
    });
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    if let Some(path) = &a.out {
        let mut out = Output::create(Some(path))?;
        out.write_line(&text)?;
        out.finish()?;
    }
    let mut stdout = Output::create(None)?;
    stdout.write_line(&text)?;
    stdout.finish()?;
    if let Some(e) = &first_error {
        eprintln!("coherence: loadgen: {failed} transport error(s), the first: {e}");
    }
    if answered == 0 && result.sent > 0 {
        return Err(CliError::check(format!(
            "loadgen: no request to {} got an answer",
            client.endpoint()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mix_counts_are_exact_to_within_one() {
        for (n, d, i, s) in [
            (200, 0.1, 0.1, 0.0),
            (1000, 0.05, 0.01, 0.2),
            (7, 0.4, 0.5, 0.0),
            (999, 0.33, 0.33, 0.3),
            (10, 0.9, 0.0, 0.0),
            (333, 0.0, 0.0, 1.0),
            (50, 0.0, 0.0, 0.0),
        ] {
            let kinds = mix(n, d, i, s);
            assert_eq!(kinds.len(), n);
            let count = |k| kinds.iter().filter(|x| **x == k).count() as f64;
            for (k, f) in [(Kind::Dup, d), (Kind::Invalid, i), (Kind::Signals, s)] {
                assert!(
                    (count(k) - n as f64 * f).abs() <= 1.0,
                    "{n} {k:?} {f}: {}",
                    count(k)
                );
            }
            let first = kinds
                .iter()
                .find(|k| matches!(k, Kind::Pcs | Kind::Dup))
                .copied();
            assert_ne!(first, Some(Kind::Dup));
        }
        let k = mix(200, 0.1, 0.1, 0.0);
        assert_eq!(k.iter().filter(|x| **x == Kind::Dup).count(), 20);
        assert_eq!(k.iter().filter(|x| **x == Kind::Invalid).count(), 20);
    }

    #[test]
    fn tampering_changes_a_digit_that_matters() {
        let j = r#"{"a":1,"D_hat":1.410000001,"r":0.5}"#;
        assert_eq!(
            tamper_d_hat(j).unwrap(),
            r#"{"a":1,"D_hat":1.510000001,"r":0.5}"#
        );
        assert_eq!(
            tamper_d_hat(r#"{"D_hat":2,"x":1}"#).unwrap(),
            r#"{"D_hat":3,"x":1}"#
        );
        assert_eq!(
            tamper_d_hat(r#"{"D_hat":1.9}"#).unwrap(),
            r#"{"D_hat":1.0}"#
        );
        assert!(tamper_d_hat(r#"{"x":1}"#).is_none());
    }

    #[test]
    fn planned_bodies_verify_and_tampered_ones_do_not() {
        let signer = Signer::hmac("k");
        let verifier = signer.verifier();
        let kinds = mix(60, 0.2, 0.2, 0.2);
        let plan = plan(&kinds, &signer, &["shop".to_owned()], 7).unwrap();
        let mut ids = std::collections::HashSet::new();
        for p in &plan {
            let text = std::str::from_utf8(&p.body).unwrap();
            match p.kind {
                Kind::Signals => {
                    let r = SignalReport::from_json(text).unwrap();
                    assert!(r.shard_id.starts_with("shop/"));
                    r.verify(&verifier).unwrap();
                    assert!(ids.insert(p.id.clone()));
                }
                Kind::Pcs | Kind::Dup | Kind::Invalid => {
                    let report = verifier.verify_json(text, &Params::default());
                    let want = if p.kind == Kind::Invalid { 401 } else { 200 };
                    assert_eq!(report.http_status(), want, "{:?}", report.reasons());
                    assert_eq!(report.pcs_id, &*p.id);
                    if p.kind != Kind::Dup {
                        assert!(ids.insert(p.id.clone()), "{}", p.id);
                    } else {
                        assert!(ids.contains(&p.id));
                    }
                }
            }
        }
    }

    #[test]
    fn histogram_buckets_round_trip() {
        assert_eq!(Histogram::upper(Histogram::index(u64::MAX)), u64::MAX);
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 123_456, 10_000_000] {
            let i = Histogram::index(v);
            assert!(Histogram::upper(i) >= v, "{v}");
            assert!(
                (Histogram::upper(i) - v) as f64 <= v as f64 / 64.0 + 1.0,
                "{v} {}",
                Histogram::upper(i)
            );
            if i > 0 {
                assert!(Histogram::upper(i - 1) < v, "{v}");
            }
        }
        let h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5);
        assert!((495..=510).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(h.max(), 1000);
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration("--duration", s);
        assert_eq!(d("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(d("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(d("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(d("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "0s", "-1s", "abc", "1d"] {
            let e = d(bad).unwrap_err();
            assert_eq!(e.code, 64);
            assert!(e.msg.starts_with("--duration: expected"), "{}", e.msg);
        }
    }
}
