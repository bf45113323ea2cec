//! `coherence-verifier`: the mTLS evidence store sidecars push to.

use clap::{Parser, Subcommand};
use coherence_verifier::serve::{ServeArgs, serve};
use std::process::ExitCode;

// Every request allocates its body, parsed record, answer and WAL frames: under load, glibc's
// malloc and free took about a fifth of the verifier's CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "coherence-verifier",
    version,
    about = "Coherence verifier: mTLS ingest, WAL, verification, dedup, metrics",
    after_help = "Exit codes: 0 stopped cleanly, 1 runtime failure, 64 bad configuration (one line names the flag or variable)."
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "COHERENCE_LOG_FORMAT", value_parser = ["json", "text"], default_value = "json", global = true)]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the submit API (TLS) and the admin port.
    Serve(Box<ServeArgs>),
    /// Inspect a WAL directory.
    #[command(subcommand)]
    Wal(WalCmd),
}

#[derive(Subcommand)]
enum WalCmd {
    /// Read a WAL directory without changing it; print what it holds as JSON and exit 1 if an
    /// id was stored first more than once.
    Audit {
        /// The WAL directory.
        #[arg(long, env = "COHERENCE_WAL_DIR")]
        wal_dir: std::path::PathBuf,
    },
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logs(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coherence-verifier: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let args = match cli.cmd {
        Cmd::Serve(args) => args,
        Cmd::Wal(WalCmd::Audit { wal_dir }) => {
            return match coherence_verifier::wal::audit(&wal_dir) {
                Ok(a) => {
                    println!("{}", serde_json::to_string_pretty(&a).unwrap_or_default());
                    ExitCode::from(u8::from(!a.applied_more_than_once.is_empty()))
                }
                Err(e) => {
                    eprintln!("coherence-verifier: {e}");
                    ExitCode::from(1)
                }
            };
        }
    };
    match rt.block_on(serve(*args, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config = e
                .downcast_ref::<coherence_verifier::serve::ConfigError>()
                .is_some();
            eprintln!("coherence-verifier: {e}");
            tracing::error!(error = %e, "coherence-verifier failed");
            ExitCode::from(if config { 64 } else { 1 })
        }
    }
}
