//! `coherence-sidecar run --config FILE.yaml`.
//!
//! Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 64 bad configuration or keys (one line
//! naming the field), 74 a file or socket could not be used (outbox, listen address).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The Coherence sidecar agent.
#[derive(Debug, Parser)]
#[command(
    name = "coherence-sidecar",
    version,
    about,
    after_help = "Exit codes: 0 stopped cleanly, 64 bad configuration, 74 file or socket error."
)]
struct Cli {
    /// Log format: `json` (default) or `text`.
    #[arg(
        long,
        env = "COHERENCE_LOG_FORMAT",
        default_value = "json",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent with a configuration file (reloaded when it changes).
    Run {
        /// The YAML configuration (see sidecar/examples/config.yaml).
        #[arg(long, env = "COHERENCE_SIDECAR_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file and print it as the sidecar reads it, then exit.
    Check {
        /// The YAML configuration.
        #[arg(long, env = "COHERENCE_SIDECAR_CONFIG")]
        config: PathBuf,
    },
}

fn init_logging(format: &str) {
    // `RUST_LOG` as `level` or `target=level,...` directives. `Targets` needs no regex engine,
    // which keeps the binary (and so the resident set) small; a bad value falls back to info.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing_subscriber::filter::LevelFilter::INFO)
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if format == "json" {
        tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true))
            .with(filter)
            .init();
    } else {
        tracing_subscriber::registry().with(fmt).with(filter).init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let lookup: coherence_sidecar::run::Lookup = Arc::new(|k: &str| std::env::var(k).ok());
    match cli.command {
        Command::Check { config } => {
            match coherence_sidecar::config::Config::load(&config, &*lookup)
                .and_then(|c| coherence_sidecar::run::signer(&c, &*lookup).map(|_| c))
            {
                Ok(c) => {
                    println!("{c:#?}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("coherence-sidecar: {e}");
                    ExitCode::from(64)
                }
            }
        }
        Command::Run { config } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("coherence-sidecar: runtime: {e}");
                    return ExitCode::from(74);
                }
            };
            let (_keep, shutdown) = tokio::sync::watch::channel(false);
            match rt.block_on(coherence_sidecar::run::run(config, lookup, shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("coherence-sidecar: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
