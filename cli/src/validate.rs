//! `coherence validate` (in progress).
use crate::error::CliResult;
/// Flags of `coherence validate`.
#[derive(Debug, clap::Args)]
pub struct Args {}
/// Runs the command.
pub fn run(_a: Args) -> CliResult {
    Ok(())
}
