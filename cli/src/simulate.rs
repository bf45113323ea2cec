//! `coherence simulate`: deterministic flight-simulator telemetry as JSONL.

use crate::error::{CliError, CliResult};
use crate::files::Output;
use coherence_core::sim::{SimConfig, Simulator};
use coherence_core::telemetry::{format_ts_ms, parse_ts_ms};
use std::path::PathBuf;

/// Flags of `coherence simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seed of every random stream: the same seed writes the same lines.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Simulated hours.
    #[arg(long, default_value_t = 6.0)]
    hours: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    step: u32,
    /// Healthy hosts.
    #[arg(long, default_value_t = 2)]
    healthy: u32,
    /// Stressed hosts (each goes through the cascade).
    #[arg(long, default_value_t = 1)]
    stressed: u32,
    /// Start of the run, RFC 3339.
    #[arg(long, default_value = "2026-11-01T00:00:00Z")]
    start: String,
    /// Workload name.
    #[arg(long, default_value = "checkout-api")]
    workload: String,
    /// Domain name.
    #[arg(long, default_value = "checkout")]
    domain: String,
    /// Output file (stdout when absent or `-`).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// Runs `coherence simulate`.
pub fn run(a: Args) -> CliResult {
    let start_ms = parse_ts_ms(&a.start).map_err(|e| CliError::config(format!("--start: {e}")))?;
    let cfg = SimConfig {
        seed: a.seed,
        hours: a.hours,
        step_s: a.step,
        healthy_hosts: a.healthy,
        stressed_hosts: a.stressed,
        start_ms,
        domain: a.domain,
        workload: a.workload,
        ..SimConfig::default()
    };
    let sim = Simulator::new(cfg).map_err(|e| CliError::config(format!("--{e}")))?;
    let tl = sim.timeline();
    let mut out = Output::create(a.out.as_deref())?;
    let mut n = 0u64;
    let mut line = String::with_capacity(320);
    for rec in sim {
        line.clear();
        // Serialising a plain struct of strings and floats cannot fail.
        line.push_str(&serde_json::to_string(&rec).map_err(|e| CliError::data(e.to_string()))?);
        out.write_line(&line)?;
        n += 1;
    }
    out.finish()?;
    if a.stressed > 0 {
        eprintln!(
            "simulate: {n} lines; stressed hosts: seizure {}, fever {}, retry storm {}, crash {}",
            format_ts_ms(tl.seizure_start_ms),
            format_ts_ms(tl.fever_start_ms),
            format_ts_ms(tl.storm_start_ms),
            format_ts_ms(tl.crash_ms)
        );
    } else {
        eprintln!("simulate: {n} lines");
    }
    Ok(())
}
