//! `coherence keys` (in progress).
use crate::error::CliResult;
/// Subcommands of `coherence keys`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign.
    Sign,
}
/// Runs the command.
pub fn run(_c: Command) -> CliResult {
    Ok(())
}
