//! The CLI's error: a message for the user and the process exit code it maps to.

use std::fmt;
use std::path::Path;

/// An error that ends a command, with the exit code documented in `coherence --help`.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// One-line reason naming the input that was wrong.
    pub msg: String,
}

impl CliError {
    /// The check failed (exit 1): invalid lines, a rejected record.
    pub fn check(msg: impl Into<String>) -> Self {
        Self {
            code: 1,
            msg: msg.into(),
        }
    }
    /// Bad configuration (exit 64): a flag or environment variable that cannot be used.
    pub fn config(msg: impl Into<String>) -> Self {
        Self {
            code: 64,
            msg: msg.into(),
        }
    }
    /// Bad input data (exit 65).
    pub fn data(msg: impl Into<String>) -> Self {
        Self {
            code: 65,
            msg: msg.into(),
        }
    }
    /// An input cannot be opened or read (exit 66).
    pub fn input(path: &Path, err: impl fmt::Display) -> Self {
        Self {
            code: 66,
            msg: format!("{}: {err}", path.display()),
        }
    }
    /// An output cannot be written (exit 74).
    pub fn output(path: &Path, err: impl fmt::Display) -> Self {
        Self {
            code: 74,
            msg: format!("{}: {err}", path.display()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for CliError {}

/// Result of a CLI command.
pub type CliResult = Result<(), CliError>;
