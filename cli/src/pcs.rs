//! `coherence pcs sign|verify`: sign and verify Proof-of-Computation Summaries.

use crate::error::CliError;
use crate::error::CliResult;
use coherence_core::pcs::{self, KeyEnv, Outcome, Params, Pcs, Signer, Verifier};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

const SIGN_HELP: &str = "\
The record is the PCS JSON of schema fractal-lba-kakeya 0.1. A missing or empty pcs_id is
computed as sha256(merkle_root|epoch|shard_id); a pcs_id that differs from it is an error
(exit 65). The signature covers sha256 of the canonical JSON of {pcs_id, merkle_root, epoch,
shard_id, D_hat, coh_star, r, budget}.

Keys (flags override the environment):
  PCS_SIGN_ALG=hmac       PCS_HMAC_KEY (the key is the string's UTF-8 bytes)
  PCS_SIGN_ALG=ed25519    PCS_ED25519_KEY_B64 (base64 32-byte seed or 64-byte keypair)
`coherence keys gen` prints ready-to-use settings.

Examples:
  coherence pcs sign record.json --out signed.json
  cat record.json | coherence pcs sign - > signed.json";

const VERIFY_HELP: &str = "\
Checks, in order: the record's shape (a malformed field is named), the signature against every
configured key (rotation: any key may match), pcs_id = sha256(merkle_root|epoch|shard_id), and
then the recomputable claims: D_hat against the Theil-Sen slope of scales/N_j (tolerance 0.15),
coh_star within [0, 1.05], budget against its formula (1e-6) and regime against its thresholds.

Prints `valid: <pcs_id> (<alg>, key <VARIABLE[index]>)` and exits 0 when everything holds;
otherwise prints the reasons and exits 1 (`escalated:` when only a recomputation disagrees,
`invalid:` for a malformed record, a bad signature or a wrong pcs_id).

Keys (flags override the environment):
  PCS_SIGN_ALG=hmac       PCS_HMAC_KEY and/or PCS_HMAC_KEYS (comma list)
  PCS_SIGN_ALG=ed25519    PCS_ED25519_PUB_B64 (comma list) and/or PCS_ED25519_KEY_B64

Examples:
  coherence pcs verify signed.json
  PCS_HMAC_KEYS=old-key,new-key coherence pcs verify signed.json";

/// Subcommands of `coherence pcs`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign a PCS JSON record (computes pcs_id when missing) and write it with its `sig`.
    #[command(after_help = SIGN_HELP)]
    Sign(SignArgs),
    /// Verify a signed PCS JSON record: exit 0 when valid, 1 with the reasons otherwise.
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
}

/// The key flags `pcs sign` and `pcs verify` share, each with its environment fallback.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// Signature algorithm: hmac or ed25519 (default hmac).
    #[arg(long = "alg", env = "PCS_SIGN_ALG", value_name = "ALG")]
    sign_alg: Option<String>,
    /// HMAC key (its UTF-8 bytes are the key).
    #[arg(long, env = "PCS_HMAC_KEY", hide_env_values = true, value_name = "KEY")]
    hmac_key: Option<String>,
    /// Ed25519 signing key: base64 of the 32-byte seed (or of the 64-byte keypair); for verify,
    /// its public key is accepted too.
    #[arg(
        long,
        env = "PCS_ED25519_KEY_B64",
        hide_env_values = true,
        value_name = "B64"
    )]
    ed25519_key: Option<String>,
}

impl KeyArgs {
    fn into_env(self) -> KeyEnv {
        KeyEnv {
            sign_alg: self.sign_alg,
            hmac_key: self.hmac_key,
            ed25519_key_b64: self.ed25519_key,
            ..KeyEnv::default()
        }
    }
}

/// Flags of `coherence pcs sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The PCS JSON record to sign; `-` reads standard input.
    #[arg(value_name = "FILE.json")]
    file: PathBuf,
    /// Write the signed record here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    keys: KeyArgs,
}

/// Flags of `coherence pcs verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The signed PCS JSON record; `-` reads standard input.
    #[arg(value_name = "FILE.json")]
    file: PathBuf,
    /// Print the full verification report as JSON on standard output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    keys: KeyArgs,
    /// Further HMAC keys, comma-separated; a signature by any of them is valid (rotation).
    #[arg(
        long,
        env = "PCS_HMAC_KEYS",
        hide_env_values = true,
        value_name = "KEY,KEY"
    )]
    hmac_keys: Option<String>,
    /// Ed25519 public keys, base64, comma-separated; any of them may have signed.
    #[arg(long, env = "PCS_ED25519_PUB_B64", value_name = "B64,B64")]
    ed25519_pub: Option<String>,
}

/// Runs `coherence pcs`.
pub fn run(c: Command) -> CliResult {
    match c {
        Command::Sign(a) => sign(a),
        Command::Verify(a) => verify(a),
    }
}

fn read_input(path: &Path) -> Result<String, CliError> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::input(Path::new("<stdin>"), e))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| CliError::input(path, e))
    }
}

fn write_output(out: Option<&Path>, text: &str) -> CliResult {
    match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError::output(Path::new("<stdout>"), e))
        }
        Some(p) if p == Path::new("-") => write_output(None, text),
        Some(p) => std::fs::write(p, text).map_err(|e| CliError::output(p, e)),
    }
}

fn display_name(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    }
}

fn sign(a: SignArgs) -> CliResult {
    let env = a.keys.into_env();
    let signer = Signer::from_env(&env).map_err(|e| CliError::config(e.to_string()))?;
    let name = display_name(&a.file);
    let text = read_input(&a.file)?;
    let mut record = Pcs::from_json(&text).map_err(|e| CliError::data(format!("{name}: {e}")))?;
    let expected = record.expected_pcs_id();
    if record.pcs_id.is_empty() {
        record.pcs_id = expected;
    } else if record.pcs_id != expected {
        return Err(CliError::data(format!(
            "{name}: pcs_id: expected sha256(merkle_root|epoch|shard_id) = {expected}, found {}",
            record.pcs_id
        )));
    }
    // Signing a record that verifiers will escalate is allowed (it is what was computed), but
    // the signer should know.
    for e in pcs::check_claims(&record, &Params::default()) {
        eprintln!("coherence: warning: {name}: verifiers will escalate this record: {e}");
    }
    signer
        .sign(&mut record)
        .map_err(|e| CliError::data(format!("{name}: {e}")))?;
    let mut out = record.to_json_pretty();
    out.push('\n');
    write_output(a.out.as_deref(), &out)
}

fn verify(a: VerifyArgs) -> CliResult {
    let env = KeyEnv {
        hmac_keys: a.hmac_keys,
        ed25519_pub_b64: a.ed25519_pub,
        ..a.keys.into_env()
    };
    let verifier = Verifier::from_env(&env).map_err(|e| CliError::config(e.to_string()))?;
    let name = display_name(&a.file);
    let text = read_input(&a.file)?;
    let report = verifier.verify_json(&text, &Params::default());
    if a.json {
        let mut body = serde_json::to_string_pretty(&report).unwrap_or_default();
        body.push('\n');
        write_output(None, &body)?;
    }
    let id = if report.pcs_id.is_empty() {
        name
    } else {
        report.pcs_id.clone()
    };
    match report.outcome {
        Outcome::Accepted => {
            if !a.json {
                let alg = report.alg.map(|x| x.as_str()).unwrap_or("?");
                let key = report
                    .key
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                write_output(None, &format!("valid: {id} ({alg}, key {key})\n"))?;
            }
            Ok(())
        }
        Outcome::Escalated => Err(CliError::check(format!(
            "escalated: {id}: {}",
            report.reasons().join("; ")
        ))),
        Outcome::Rejected => Err(CliError::check(format!(
            "invalid: {id}: {}",
            report.reasons().join("; ")
        ))),
    }
}
