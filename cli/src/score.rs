//! `coherence score` (in progress).
use crate::error::CliResult;
/// Flags of `coherence score`.
#[derive(Debug, clap::Args)]
pub struct Args {}
/// Runs the command.
pub fn run(_a: Args) -> CliResult {
    Ok(())
}
