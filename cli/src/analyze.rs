//! `coherence analyze` (in progress).
use crate::error::CliResult;
/// Flags of `coherence analyze`.
#[derive(Debug, clap::Args)]
pub struct Args {}
/// Runs the command.
pub fn run(_a: Args) -> CliResult {
    Ok(())
}
