//! `coherence encrypt` (in progress).
use crate::error::CliResult;
/// Flags of `coherence encrypt`.
#[derive(Debug, clap::Args)]
pub struct EncryptArgs {}
/// Runs the command.
pub fn run_encrypt(_a: EncryptArgs) -> CliResult {
    Ok(())
}
