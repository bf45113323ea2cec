//! `coherence-operator`: the Kubernetes operator of Coherence.

use clap::{Parser, Subcommand};
use coherence_operator::crd::CoherencePolicy;
use coherence_operator::inject::{self, InjectOptions};
use serde::Deserialize as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The Kubernetes operator of Coherence: CoherencePolicy and FinOpsGate controllers, sidecar
/// injection, protection objects and vetoes.
#[derive(Debug, Parser)]
#[command(name = "coherence-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the controllers, the injection webhook and the metrics endpoint.
    Run(Box<coherence_operator::run::RunArgs>),
    /// Print the CoherencePolicy and FinOpsGate CRDs as multi-document YAML.
    Crdgen {
        /// Write one file per CRD into this directory instead (`crds/`).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print workload manifests with the sidecar injected, as the webhook would.
    ///
    /// Exit status: 0 printed; 64 the arguments cannot be used (a file that cannot be read,
    /// a policy file without a valid CoherencePolicy); 65 a manifest document cannot be used.
    Inject {
        /// Manifest (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, List;
        /// multi-document); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The CoherencePolicy to inject for (a file with one or more).
        #[arg(long)]
        policy: PathBuf,
        /// `false`: a plain container instead of a native sidecar (clusters older than 1.29).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        native_sidecars: bool,
        /// The sidecar image (default `ghcr.io/coherence-dev/coherence-sidecar:<version>`).
        #[arg(long)]
        image: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out_dir: Some(dir) } => match coherence_operator::crdgen::write(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("coherence-operator: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Crdgen { out_dir: None } => match coherence_operator::crdgen::multi_document() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("coherence-operator: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Inject {
            file,
            policy,
            native_sidecars,
            image,
        } => inject(&file, &policy, native_sidecars, image),
        Command::Run(args) => coherence_operator::run::main(*args),
    }
}

/// Exit status of arguments that cannot be used (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;
/// Exit status of input data that cannot be used (sysexits `EX_DATAERR`).
const EX_DATAERR: u8 = 65;

fn read_input(path: &Path) -> Result<String, String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("standard input: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn read_policies(path: &Path) -> Result<Vec<CoherencePolicy>, String> {
    let text = read_input(path)?;
    let mut policies = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let at = || format!("{}: document {}", path.display(), i + 1);
        let v = serde_json::Value::deserialize(de).map_err(|e| format!("{}: {e}", at()))?;
        if v.is_null() || v.get("kind").and_then(|k| k.as_str()) != Some("CoherencePolicy") {
            continue;
        }
        let p: CoherencePolicy = serde_path_to_error::deserialize(&v)
            .map_err(|e| format!("{}: {}: {}", at(), e.path(), e.inner()))?;
        inject::check_policy(&p).map_err(|e| format!("{}: {e}", at()))?;
        policies.push(p);
    }
    if policies.is_empty() {
        return Err(format!(
            "{}: expected a CoherencePolicy (kind: CoherencePolicy), found none",
            path.display()
        ));
    }
    Ok(policies)
}

fn inject(file: &Path, policy: &Path, native_sidecars: bool, image: Option<String>) -> ExitCode {
    let fail = |code: u8, message: String| {
        eprintln!("coherence-operator inject: {message}");
        ExitCode::from(code)
    };
    let policies = match read_policies(policy) {
        Ok(p) => p,
        Err(e) => return fail(EX_USAGE, e),
    };
    let text = match read_input(file) {
        Ok(t) => t,
        Err(e) => return fail(EX_USAGE, e),
    };
    let opts = InjectOptions {
        image: image.unwrap_or_else(inject::default_image),
        native_sidecars,
    };
    let out = match inject::inject_manifest(&text, &policies, &opts) {
        Ok(o) => o,
        Err(e) => return fail(EX_DATAERR, format!("{}: {e}", file.display())),
    };
    let yaml = match out.to_yaml() {
        Ok(y) => y,
        Err(e) => return fail(EX_DATAERR, e.to_string()),
    };
    print!("{yaml}");
    for r in &out.reports {
        eprintln!("document {} ({}): {}", r.index, r.object, r.result);
    }
    ExitCode::SUCCESS
}
