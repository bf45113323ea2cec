//! `coherence keys gen`: fresh PCS signing keys as shell `export` lines.

use crate::error::{CliError, CliResult};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore as _;
use std::io::Write as _;
use std::path::Path;

const GEN_HELP: &str = "\
hmac: 32 random bytes, hex-encoded; the 64-character string is the key (PCS_HMAC_KEY). Give
the same value to signers and verifiers; to rotate, add the old key to PCS_HMAC_KEYS.

ed25519: a random 32-byte seed (PCS_ED25519_KEY_B64, keep it on the signer) and its public key
(PCS_ED25519_PUB_B64, give it to verifiers; a comma list of them allows rotation).

Example:
  eval \"$(coherence keys gen --alg ed25519)\"
  coherence pcs sign record.json > signed.json && coherence pcs verify signed.json";

/// Subcommands of `coherence keys`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Generate a signing key and print `export NAME=value` lines for the PCS_* variables.
    #[command(after_help = GEN_HELP)]
    Gen(GenArgs),
}

/// Key algorithms `coherence keys gen` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Alg {
    /// HMAC-SHA256 shared key.
    Hmac,
    /// Ed25519 key pair.
    Ed25519,
}

/// Flags of `coherence keys gen`.
#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Which kind of key to generate.
    #[arg(long, value_enum, default_value = "hmac")]
    alg: Alg,
}

/// Runs `coherence keys`.
pub fn run(c: Command) -> CliResult {
    match c {
        Command::Gen(a) => gen_keys(a.alg),
    }
}

fn gen_keys(alg: Alg) -> CliResult {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let text = match alg {
        Alg::Hmac => format!(
            "export PCS_SIGN_ALG=hmac\nexport PCS_HMAC_KEY={}\n",
            hex::encode(secret)
        ),
        Alg::Ed25519 => {
            let sk = ed25519_dalek::SigningKey::from_bytes(&secret);
            format!(
                "export PCS_SIGN_ALG=ed25519\nexport PCS_ED25519_KEY_B64={}\nexport PCS_ED25519_PUB_B64={}\n",
                B64.encode(secret),
                B64.encode(sk.verifying_key().to_bytes())
            )
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::output(Path::new("<stdout>"), e))
}
