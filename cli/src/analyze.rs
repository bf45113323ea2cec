//! `coherence analyze`: the offline collector. Telemetry JSONL in (optionally AES-GCM per
//! line), one explainable JSON document out — or a human report with `--format text`.

use crate::aes::LineCipher;
use crate::error::{CliError, CliResult};
use crate::files::{Chunk, LineReader};
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

// One chunk of lines, parsed: what the collecting thread needs, in file order.
#[derive(Default)]
struct Parsed {
    // Workload/host pairs first seen in this chunk, in order; samples name them by index.
    names: Vec<(String, String)>,
    items: Vec<Item>,
}

enum Item {
    Sample {
        line: u64,
        // Index into the chunk's `names`.
        entity: usize,
        ts: i64,
        values: [f64; SIGNALS.len()],
    },
    Skip(u64, String),
}

/// Bytes per chunk of lines handed to a parsing thread (about 4,000 telemetry lines).
const CHUNK_BYTES: usize = 1 << 20;

/// Runs `coherence analyze`. One thread reads the input in chunks of whole lines and deals
/// them in turn to the parsing threads (one per core, at most 8), which decrypt and parse them;
/// this thread takes the parsed chunks back in the same turn — so in file order — and keeps
/// the windows. Parsing, most of the work, runs on every core.
pub fn run(a: Args) -> CliResult {
    let cfg = config(&a)?;
    let cipher = LineCipher::from_env()?;
    let input = LineReader::open(&a.file)?;
    let collector = Collector::new(cfg).map_err(CliError::config)?;
    let parsers = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8));
    let fed = feed(
        input,
        cipher.as_ref(),
        collector,
        Pipeline {
            parsers,
            chunk_bytes: CHUNK_BYTES,
            max_skipped: a.max_skipped,
        },
    )?;
    let (analysis, skipped_count, skipped) =
        (fed.collector.finish(), fed.skipped_count, fed.skipped);
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

/// How [`feed`] splits its work.
struct Pipeline {
    /// Parsing threads.
    parsers: usize,
    /// Bytes per chunk of lines.
    chunk_bytes: usize,
    /// At most this many skipped lines are kept (all are counted).
    max_skipped: usize,
}

/// A collector fed every line of an input, and the lines it skipped.
struct Fed {
    collector: Collector,
    skipped_count: u64,
    skipped: Vec<Skipped>,
}

// Reads, parses and collects the whole input (see `run`).
fn feed(
    mut input: LineReader,
    cipher: Option<&LineCipher>,
    mut collector: Collector,
    p: Pipeline,
) -> Result<Fed, CliError> {
    let parsers = p.parsers.max(1);
    let input_path = input.path().display().to_string();
    let mut skipped = Vec::new();
    let mut skipped_count = 0u64;
    std::thread::scope(|scope| -> CliResult {
        let mut to_parsers = Vec::with_capacity(parsers);
        let mut from_parsers = Vec::with_capacity(parsers);
        let mut workers = Vec::with_capacity(parsers);
        for _ in 0..parsers {
            let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Chunk>(2);
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Parsed>(2);
            workers.push(scope.spawn(move || {
                let mut checker = None;
                for chunk in chunk_rx {
                    if done_tx
                        .send(parse_chunk(&chunk, cipher, &mut checker))
                        .is_err()
                    {
                        break;
                    }
                }
            }));
            to_parsers.push(chunk_tx);
            from_parsers.push(done_rx);
        }
        let reader = scope.spawn(move || -> CliResult {
            let mut turn = 0usize;
            while let Some(chunk) = input.next_chunk(p.chunk_bytes)? {
                if to_parsers[turn % parsers].send(chunk).is_err() {
                    // A parser stopped; the join below says why.
                    break;
                }
                turn += 1;
            }
            Ok(())
        });
        let mut ids: Vec<usize> = Vec::new();
        let mut skip = |line: u64, reason: String| {
            skipped_count += 1;
            if skipped.len() < p.max_skipped {
                skipped.push(Skipped { line, reason });
            }
        };
        // Chunk k went to parser k mod n; a parser with nothing more means the input ended.
        for turn in 0.. {
            let Ok(parsed) = from_parsers[turn % parsers].recv() else {
                break;
            };
            ids.clear();
            ids.extend(parsed.names.iter().map(|(w, h)| collector.entity(w, h)));
            for item in parsed.items {
                match item {
                    Item::Sample {
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
                    Item::Skip(line, reason) => skip(line, reason),
                }
            }
        }
        drop(from_parsers);
        let stopped = || {
            CliError::data(format!(
                "{}: a parsing thread stopped unexpectedly",
                input_path
            ))
        };
        for w in workers {
            w.join().map_err(|_| stopped())?;
        }
        reader.join().map_err(|_| stopped())?
    })?;
    Ok(Fed {
        collector,
        skipped_count,
        skipped,
    })
}

// Decrypts (when asked) and parses every line of a chunk.
fn parse_chunk(
    chunk: &Chunk,
    cipher: Option<&LineCipher>,
    checker: &mut Option<LineChecker>,
) -> Parsed {
    let mut out = Parsed {
        names: Vec::new(),
        items: Vec::with_capacity(chunk.bytes.len() / 200),
    };
    let mut names: HashMap<Box<str>, HashMap<Box<str>, usize>> = HashMap::new();
    for (line, raw) in chunk.lines() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut entity = |w: &str, h: &str| -> usize {
            if let Some(&id) = names.get(w).and_then(|m| m.get(h)) {
                return id;
            }
            let id = out.names.len();
            names.entry(w.into()).or_default().insert(h.into(), id);
            out.names.push((w.to_string(), h.to_string()));
            id
        };
        let parsed = match cipher {
            Some(c) => std::str::from_utf8(raw)
                .map_err(|_| "(root): not valid UTF-8".to_string())
                .and_then(|l| {
                    c.decrypt_line(l)
                        .map_err(|e| format!("(root): cannot decrypt: {e}"))
                })
                .and_then(|plain| parse(plain.as_bytes(), checker, &mut entity)),
            None => parse(raw, checker, &mut entity),
        };
        out.items.push(match parsed {
            Ok((entity, ts, values)) => Item::Sample {
                line,
                entity,
                ts,
                values,
            },
            Err(reason) => Item::Skip(line, reason),
        });
    }
    out
}

type Fields = (usize, i64, [f64; SIGNALS.len()]);

fn parse(
    raw: &[u8],
    checker: &mut Option<LineChecker>,
    entity: impl FnOnce(&str, &str) -> usize,
) -> Result<Fields, String> {
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
    use coherence_core::sim::{SimConfig, Simulator};

    // Six simulated hours of three hosts (5,730 lines, about 1.6 MB) with bad lines and
    // blank lines in between, the last line without its newline.
    fn dirty_telemetry(dir: &std::path::Path) -> PathBuf {
        let sim = Simulator::new(SimConfig::default()).unwrap();
        let mut lines: Vec<String> = sim.map(|r| serde_json::to_string(&r).unwrap()).collect();
        lines.insert(1, "not json".into());
        lines.insert(700, String::new());
        lines.insert(2500, r#"{"ts":"2026-11-01T00:00:00Z","host":"h"}"#.into());
        lines.insert(4100, "   ".into());
        lines.insert(5500, r#"{"ts":"yesterday","host":"h","workload":"w","cpu":1,"memory_mb":1,"requests_in":1,"requests_out":1,"errors":0,"qps":1,"latency_p95_ms":1,"infra_cost_usd":1}"#.into());
        let text = lines.join("\r\n");
        let path = dir.join("t.jsonl");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn analyse(
        path: &std::path::Path,
        parsers: usize,
        chunk_bytes: usize,
    ) -> (String, Vec<Skipped>, u64) {
        let input = LineReader::open(path).unwrap();
        let collector = Collector::new(CollectConfig::default()).unwrap();
        let fed = feed(
            input,
            None,
            collector,
            Pipeline {
                parsers,
                chunk_bytes,
                max_skipped: 2,
            },
        )
        .unwrap();
        let json = serde_json::to_string(&fed.collector.finish()).unwrap();
        (json, fed.skipped, fed.skipped_count)
    }

    #[test]
    fn any_split_into_chunks_and_threads_gives_the_same_answer_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dirty_telemetry(dir.path());
        let (one, skipped, count) = analyse(&path, 1, 64 << 20);
        assert_eq!(count, 3, "{skipped:?}");
        // Only the first two are listed; line numbers are 1-based and count blank lines.
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0].line, 2);
        assert!(skipped[0].reason.contains("not valid JSON"), "{skipped:?}");
        assert_eq!(skipped[1].line, 2501);
        for (parsers, chunk) in [(2, 1 << 20), (3, 4096), (8, 1), (5, 100_000)] {
            let (other, other_skipped, other_count) = analyse(&path, parsers, chunk);
            assert_eq!(other_count, count, "{parsers} parsers, {chunk}-byte chunks");
            assert_eq!(
                other_skipped, skipped,
                "{parsers} parsers, {chunk}-byte chunks"
            );
            assert!(
                other == one,
                "{parsers} parsers, {chunk}-byte chunks: analysis differs"
            );
        }
        let a: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(a["count"], 5730);
        assert_eq!(a["workloads"].as_array().unwrap().len(), 3);
        assert!(
            a["incidents"].as_array().is_some_and(|i| !i.is_empty()),
            "{}",
            a["incidents"]
        );
    }

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
