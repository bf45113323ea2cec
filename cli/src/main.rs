//! `coherence`: the command-line tool of Coherence.

mod aes;
mod analyze;
mod certs;
mod demo;
mod error;
mod files;
mod keys;
mod loadgen;
mod pcs;
mod score;
mod simulate;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   the check failed: `validate` found invalid lines, `pcs verify` rejected the record,
      `loadgen` got no answer at all, a process `demo` started exited
  2   usage error (unknown flag, missing argument)
  64  bad configuration: a flag or environment variable has a value that cannot be used
  65  bad input data: a file that must be valid as a whole is not (e.g. the PCS JSON of `pcs sign`)
  66  an input file cannot be opened or read (or a binary `demo` runs is missing)
  73  an output file already exists (`certs gen` without --force)
  74  an output file cannot be written";

/// Coherence: watch the variance of workloads, prove what was computed, gate what follows.
#[derive(Debug, Parser)]
#[command(name = "coherence", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system on this machine: a verifier and sidecars over mTLS on loopback, fed
    /// by the flight simulator in accelerated time; serves the dashboard and prints drift risk,
    /// FinOps grades, incidents with their narratives and veto recommendations.
    Demo(demo::Args),
    /// Write deterministic flight-simulator telemetry (JSONL): healthy hosts and a stressed host
    /// that goes through a compute seizure, a memory fever, a retry storm and a crash.
    Simulate(simulate::Args),
    /// Analyze a telemetry JSONL file: medians, FTI, grades, lambda, window statistics, drift
    /// risk, incidents, as one JSON document.
    Analyze(analyze::Args),
    /// Check every line of a telemetry JSONL file against the telemetry contract.
    Validate(validate::Args),
    /// Score a `timestamp,value` CSV: writes `timestamp,value,anomaly_score` without look-ahead.
    Score(score::Args),
    /// Encrypt every line of a JSONL file with AES-256-GCM (`COHERENCE_AES_KEY`).
    Encrypt(aes::EncryptArgs),
    /// Sign or verify Proof-of-Computation Summaries.
    #[command(subcommand)]
    Pcs(pcs::Command),
    /// Generate signing keys.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Generate a development CA and mTLS certificates for the verifier and its clients.
    #[command(subcommand)]
    Certs(certs::Command),
    /// Send signed records to a verifier at a fixed rate and summarise the answers.
    Loadgen(loadgen::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Analyze(a) => analyze::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Score(a) => score::run(a),
        Command::Encrypt(a) => aes::run_encrypt(a),
        Command::Pcs(c) => pcs::run(c),
        Command::Keys(c) => keys::run(c),
        Command::Certs(c) => certs::run(c),
        Command::Loadgen(a) => loadgen::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coherence: {e}");
            ExitCode::from(e.code)
        }
    }
}
