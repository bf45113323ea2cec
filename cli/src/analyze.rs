//! `coherence analyze`: the offline collector. Telemetry JSONL in (optionally AES-GCM per
//! line), one explainable JSON document out — or a human report with `--format text`.

use crate::aes::LineCipher;
use crate::error::{CliError, CliResult};
use crate::files::LineReader;
use crate::validate::LineChecker;
use coherence_core::collect::{Analysis, CollectConfig, Collector};
use coherence_core::detect::ScanSchedule;
use coherence_core::finops::{Baseline, LambdaParams, Thresholds};
use coherence_core::telemetry::{SIGNALS, parse_ts_ms};
use coherence_core::window::WindowSpan;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON document.
    Json,
    /// A report for people.
    Text,
}

/// Flags of `coherence analyze`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Telemetry JSONL (`-` for stdin). With COHERENCE_AES_KEY set, every line is decrypted first.
    file: PathBuf,
    /// Rolling window of the per-signal statistics (Ns, Nm, Nh, Nd).
    #[arg(long, default_value = "1h")]
    window: WindowSpan,
    /// FinOps baseline as `qps=..,latency_p95_ms=..,infra_cost_usd=..`; default: the file's medians.
    #[arg(long)]
    baseline: Option<String>,
    /// Highest FTI graded OK.
    #[arg(long, default_value_t = 1.00)]
    fti_ok: f64,
    /// Highest FTI graded WARN.
    #[arg(long, default_value_t = 1.05)]
    fti_warn: f64,
    /// λ_SIBG of λ_effective.
    #[arg(long, default_value_t = LambdaParams::default().sibg)]
    lambda_sibg: f64,
    /// λ_ASDPI of λ_effective (per day).
    #[arg(long, default_value_t = LambdaParams::default().asdpi)]
    lambda_asdpi: f64,
    /// Days since the workload last changed; default: the span of the file.
    #[arg(long)]
    days_since_change: Option<f64>,
    /// Detection window of the detectors.
    #[arg(long, default_value = "15m")]
    detect_window: WindowSpan,
    /// Time between detector evaluations.
    #[arg(long, default_value = "5m")]
    detect_step: WindowSpan,
    /// At most this many skipped lines are listed (all are counted).
    #[arg(long, default_value_t = 1000)]
    max_skipped: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

// The fields analyze reads, borrowed from the line where possible.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    host: Cow<'a, str>,
    #[serde(borrow)]
    workload: Cow<'a, str>,
    cpu: f64,
    memory_mb: f64,
    requests_in: f64,
    requests_out: f64,
    errors: f64,
    qps: f64,
    latency_p95_ms: f64,
    infra_cost_usd: f64,
}

/// A line that was not analysed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// 1-based line number.
    pub line: u64,
    /// `field: problem`.
    pub reason: String,
}

#[derive(Serialize)]
struct Report<'a> {
    file: String,
    #[serde(rename = "skippedCount")]
    skipped_count: u64,
    skipped: &'a [Skipped],
    #[serde(flatten)]
    analysis: &'a Analysis,
}

fn parse_baseline(s: &str) -> Result<Baseline, CliError> {
    let (mut q, mut l, mut c) = (None, None, None);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CliError::config(format!("--baseline: expected key=value, got {part:?}"))
        })?;
        let v: f64 = v.trim().parse().map_err(|_| {
            CliError::config(format!("--baseline: {k}: expected a number, got {v:?}"))
        })?;
        match k.trim() {
            "qps" => q = Some(v),
            "latency_p95_ms" => l = Some(v),
            "infra_cost_usd" => c = Some(v),
            other => {
                return Err(CliError::config(format!(
                    "--baseline: unknown key {other:?}, expected qps, latency_p95_ms, infra_cost_usd"
                )));
            }
        }
    }
    let missing = |k: &str| CliError::config(format!("--baseline: {k}: missing"));
    let b = Baseline {
        qps: q.ok_or_else(|| missing("qps"))?,
        latency_p95_ms: l.ok_or_else(|| missing("latency_p95_ms"))?,
        infra_cost_usd: c.ok_or_else(|| missing("infra_cost_usd"))?,
    };
    b.validate()
        .map_err(|e| CliError::config(format!("--{e}")))?;
    Ok(b)
}

fn config(a: &Args) -> Result<CollectConfig, CliError> {
    let cfg = CollectConfig {
        window: a.window,
        schedule: ScanSchedule {
            window_ms: a.detect_window.as_millis(),
            step_ms: a.detect_step.as_millis(),
        },
        fti: Thresholds {
            ok: a.fti_ok,
            warn: a.fti_warn,
        },
        lambda: LambdaParams {
            sibg: a.lambda_sibg,
            asdpi: a.lambda_asdpi,
        },
        baseline: a.baseline.as_deref().map(parse_baseline).transpose()?,
        days_since_change: a.days_since_change,
        source: a.file.display().to_string(),
        ..CollectConfig::default()
    };
    cfg.validate().map_err(CliError::config)?;
    Ok(cfg)
}

// Messages from the parsing thread to the collecting one, sent in batches.
enum Msg {
    // A new workload/host, numbered from 0 in order of first sight.
    Entity(String, String),
    Sample {
        line: u64,
        entity: usize,
        ts: i64,
        values: [f64; SIGNALS.len()],
    },
    Skip(u64, String),
}

const BATCH: usize = 4096;

/// Runs `coherence analyze`: one thread reads, decrypts and parses lines, the other keeps the
/// windows, so parsing — most of the work — overlaps with the statistics.
pub fn run(a: Args) -> CliResult {
    let cfg = config(&a)?;
    let cipher = LineCipher::from_env()?;
    let mut input = LineReader::open(&a.file)?;
    let mut collector = Collector::new(cfg).map_err(CliError::config)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Msg>>(16);
    let mut skipped = Vec::new();
    let mut skipped_count = 0u64;
    std::thread::scope(|scope| -> CliResult {
        let parser = scope.spawn(|| parse_all(&mut input, cipher.as_ref(), tx));
        let mut ids: Vec<usize> = Vec::new();
        let mut skip = |line: u64, reason: String| {
            skipped_count += 1;
            if skipped.len() < a.max_skipped {
                skipped.push(Skipped { line, reason });
            }
        };
        for batch in rx {
            for m in batch {
                match m {
                    Msg::Entity(w, h) => ids.push(collector.entity(&w, &h)),
                    Msg::Sample {
                        line,
                        entity,
                        ts,
                        values,
                    } => {
                        let id = ids.get(entity).copied().unwrap_or(usize::MAX);
                        if let Err(e) = collector.push_to(id, ts, &values) {
                            skip(line, e.to_string());
                        }
                    }
                    Msg::Skip(line, reason) => skip(line, reason),
                }
            }
        }
        parser.join().map_err(|_| {
            CliError::data(format!(
                "{}: the parser stopped unexpectedly",
                a.file.display()
            ))
        })?
    })?;
    let analysis = collector.finish();
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let file = a.file.display().to_string();
    let res = match a.format {
        Format::Json => {
            let report = Report {
                file,
                skipped_count,
                skipped: &skipped,
                analysis: &analysis,
            };
            serde_json::to_writer_pretty(&mut w, &report)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(w))
        }
        Format::Text => write_text(&mut w, &file, skipped_count, &skipped, &analysis),
    };
    match res.and_then(|()| w.flush()) {
        // A reader that stops early (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| CliError::output(std::path::Path::new("stdout"), e)),
    }
}

fn parse_all(
    input: &mut LineReader,
    cipher: Option<&LineCipher>,
    tx: SyncSender<Vec<Msg>>,
) -> CliResult {
    let mut names: HashMap<Box<str>, HashMap<Box<str>, usize>> = HashMap::new();
    let mut count = 0usize;
    let mut checker: Option<LineChecker> = None;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some((line, raw)) = input.next_line()? {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut entity = |w: &str, h: &str, batch: &mut Vec<Msg>| -> usize {
            if let Some(&id) = names.get(w).and_then(|m| m.get(h)) {
                return id;
            }
            names.entry(w.into()).or_default().insert(h.into(), count);
            batch.push(Msg::Entity(w.to_string(), h.to_string()));
            count += 1;
            count - 1
        };
        let parsed = match cipher {
            Some(c) => std::str::from_utf8(raw)
                .map_err(|_| "(root): not valid UTF-8".to_string())
                .and_then(|l| {
                    c.decrypt_line(l)
                        .map_err(|e| format!("(root): cannot decrypt: {e}"))
                })
                .and_then(|plain| {
                    parse(plain.as_bytes(), &mut checker, |w, h| {
                        entity(w, h, &mut batch)
                    })
                }),
            None => parse(raw, &mut checker, |w, h| entity(w, h, &mut batch)),
        };
        batch.push(match parsed {
            Ok((entity, ts, values)) => Msg::Sample {
                line,
                entity,
                ts,
                values,
            },
            Err(reason) => Msg::Skip(line, reason),
        });
        if batch.len() >= BATCH
            && tx
                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            return Ok(());
        }
    }
    // The receiver only goes away when the collecting side has stopped; nothing left to tell it.
    let _ = tx.send(batch);
    Ok(())
}

type Parsed = (usize, i64, [f64; SIGNALS.len()]);

fn parse(
    raw: &[u8],
    checker: &mut Option<LineChecker>,
    entity: impl FnOnce(&str, &str) -> usize,
) -> Result<Parsed, String> {
    let line: Line<'_> = match serde_json::from_slice(raw) {
        Ok(l) => l,
        Err(e) => return Err(explain(raw, checker).unwrap_or_else(|| format!("(root): {e}"))),
    };
    let ts = parse_ts_ms(&line.ts).map_err(|e| e.to_string())?;
    // In the order of SIGNALS.
    let values = [
        line.cpu,
        line.memory_mb,
        line.requests_in,
        line.requests_out,
        line.errors,
        line.qps,
        line.latency_p95_ms,
        line.infra_cost_usd,
    ];
    Ok((entity(&line.workload, &line.host), ts, values))
}

// The telemetry contract names the field; it is only built for the first bad line.
fn explain(raw: &[u8], checker: &mut Option<LineChecker>) -> Option<String> {
    if checker.is_none() {
        *checker = LineChecker::new().ok();
    }
    let problems = checker.as_ref()?.check_bytes(raw);
    let first = problems.first()?;
    Some(format!("{}: {}", first.field, first.problem))
}

fn write_text(
    w: &mut impl Write,
    file: &str,
    skipped_count: u64,
    skipped: &[Skipped],
    a: &Analysis,
) -> std::io::Result<()> {
    let f = |x: Option<f64>, d: usize| x.map_or("n/a".to_string(), |v| format!("{v:.d$}"));
    writeln!(
        w,
        "Coherence analysis of {file} (engine {})",
        a.engine_version
    )?;
    writeln!(
        w,
        "  {} samples from {} to {}, {} lines skipped",
        a.count,
        a.first_ts.as_deref().unwrap_or("-"),
        a.last_ts.as_deref().unwrap_or("-"),
        skipped_count
    )?;
    for s in skipped.iter().take(5) {
        writeln!(w, "    line {}: {}", s.line, s.reason)?;
    }
    writeln!(
        w,
        "  medians: qps {}, latency_p95_ms {}, infra_cost_usd {}",
        f(a.medians.qps, 2),
        f(a.medians.latency_p95_ms, 2),
        f(a.medians.infra_cost_usd, 6)
    )?;
    writeln!(
        w,
        "  FinOps: FTI {} ({}), worst sample {}, lambda_effective {:.4} (baseline: {})",
        f(a.fti_avg, 4),
        a.fti_grade.as_str(),
        a.fti_grade_worst.as_str(),
        a.lambda_effective,
        a.baseline.source
    )?;
    writeln!(
        w,
        "\nDrift risk per host ({} window, last window):",
        a.window
    )?;
    for h in &a.workloads {
        let hot: Vec<String> = h
            .signals
            .values()
            .filter(|s| s.summary.predicted_drift_risk > coherence_core::window::DriftRisk::Low)
            .map(|s| {
                format!(
                    "{} {} (vi {:.3})",
                    s.summary.signal,
                    s.summary.predicted_drift_risk.as_str(),
                    s.summary.volatility_index
                )
            })
            .collect();
        writeln!(
            w,
            "  {:<32} {:<18} {}",
            format!("{}/{}", h.workload, h.host),
            h.drift_risk.as_str(),
            if hot.is_empty() {
                String::new()
            } else {
                hot.join(", ")
            }
        )?;
    }
    writeln!(
        w,
        "\nIncidents: {} ({} alerting, from {} findings)",
        a.incidents.len(),
        a.alerts,
        a.findings
    )?;
    for (n, i) in a.incidents.iter().enumerate() {
        writeln!(
            w,
            "\n  #{} {} risk {:.2}{} pattern {} veto {}",
            n + 1,
            i.workload,
            i.risk,
            if i.alert { " ALERT" } else { "" },
            i.pattern.as_str(),
            i.veto.map_or("none", |v| v.as_str())
        )?;
        writeln!(w, "     {} .. {} on {}", i.start, i.end, i.hosts.join(", "))?;
        writeln!(w, "     {}", i.narrative)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_flag_parses_and_names_bad_keys() {
        let b = parse_baseline("qps=100, latency_p95_ms=80,infra_cost_usd=0.01").unwrap();
        assert_eq!(
            b,
            Baseline {
                qps: 100.0,
                latency_p95_ms: 80.0,
                infra_cost_usd: 0.01
            }
        );
        let e = parse_baseline("qps=100,latency_p95_ms=80").unwrap_err();
        assert_eq!(e.msg, "--baseline: infra_cost_usd: missing");
        let e = parse_baseline("qps=fast,latency_p95_ms=80,infra_cost_usd=1").unwrap_err();
        assert!(e.msg.contains("qps: expected a number"), "{}", e.msg);
        let e = parse_baseline("qps=0,latency_p95_ms=80,infra_cost_usd=1").unwrap_err();
        assert!(
            e.msg.contains("baseline.qps: expected a positive number"),
            "{}",
            e.msg
        );
        assert!(
            parse_baseline("rps=1")
                .unwrap_err()
                .msg
                .contains("unknown key")
        );
    }
}
