//! `coherence certs gen`: a development CA with the verifier's and the clients' certificates.

use crate::error::{CliError, CliResult};
use coherence_verifier::tls::certgen::{self, ClientSpec, GenError, Options};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Exit code when an output file exists and `--force` was not given (EX_CANTCREAT).
pub const EXIT_EXISTS: u8 = 73;

const GEN_HELP: &str = "\
Files written into DIR (created if missing):
  ca.crt, ca.key               the CA (its key is needed only to issue more certificates)
  verifier.crt, verifier.key   server certificate: SANs localhost, 127.0.0.1 and every --san
  client.crt, client.key       client certificate spiffe://coherence.dev/ns/*/sa/coherence-client
                               (namespace *: may submit for every namespace)
  NAME.crt, NAME.key           per --client NAME:NAMESPACE: spiffe://coherence.dev/ns/NAMESPACE/sa/NAME

Keys are ECDSA P-256 (PKCS#8 PEM) with mode 0600. Existing files are kept unless --force
is given (exit 73).

Example:
  coherence certs gen --out certs --client checkout:shop --san coherence-verifier.coherence.svc
  COHERENCE_TLS_CERT=certs/verifier.crt COHERENCE_TLS_KEY=certs/verifier.key \\
    COHERENCE_TLS_CA=certs/ca.crt coherence-verifier serve
  coherence loadgen --endpoint https://127.0.0.1:8443 --certs certs --rate 100 --duration 10s";

/// Subcommands of `coherence certs`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Generate a development CA, the verifier's server certificate and client certificates.
    #[command(after_help = GEN_HELP)]
    Gen(GenArgs),
}

/// Flags of `coherence certs gen`.
#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Directory to write the certificates and keys into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A further client certificate for service account NAME in NAMESPACE (`*`: every
    /// namespace); repeatable.
    #[arg(long = "client", value_name = "NAME:NAMESPACE")]
    clients: Vec<String>,
    /// A further DNS name or IP address of the verifier's certificate; repeatable.
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// Validity of every certificate, in days.
    #[arg(long, default_value_t = 365, value_name = "N")]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// Runs `coherence certs`.
pub fn run(c: Command) -> CliResult {
    match c {
        Command::Gen(a) => generate(a),
    }
}

fn generate(a: GenArgs) -> CliResult {
    let clients = a
        .clients
        .iter()
        .map(|s| {
            s.parse::<ClientSpec>()
                .map_err(|e| CliError::config(format!("--client {s:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = Options {
        days: a.days,
        clients,
        extra_sans: a.sans,
        force: a.force,
    };
    let out = certgen::generate_with(&a.out, &options).map_err(|e| match e {
        GenError::Exists { .. } => CliError {
            code: EXIT_EXISTS,
            msg: e.to_string(),
        },
        GenError::Write {
            ref path,
            ref source,
        } => CliError::output(path, source),
        GenError::Invalid { .. } | GenError::Cert { .. } => CliError::config(e.to_string()),
    })?;
    let mut text = String::new();
    for f in out.files() {
        text.push_str(&format!("wrote {}\n", f.display()));
    }
    text.push_str(&format!(
        "verifier: COHERENCE_TLS_CERT={} COHERENCE_TLS_KEY={} COHERENCE_TLS_CA={}\n",
        out.verifier.cert.display(),
        out.verifier.key.display(),
        out.ca.cert.display()
    ));
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::output(Path::new("<stdout>"), e))
}
