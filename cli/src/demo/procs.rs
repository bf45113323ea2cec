//! The demo's child processes: the real `coherence-verifier` and `coherence-sidecar` binaries,
//! found next to the running `coherence`, each logging to a file in the demo's directory and
//! killed when dropped, so no exit path leaves one behind.

use crate::error::CliError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// Exit code when a binary the demo runs is missing (as for an unreadable input).
pub const EXIT_MISSING_BINARY: u8 = 66;

/// Where the binaries are: `--bin-dir`, else the directory of the running executable.
pub fn bin_dir(flag: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(d) = flag {
        return Ok(d.to_owned());
    }
    let exe = std::env::current_exe()
        .map_err(|e| CliError::config(format!("cannot locate the coherence executable: {e}")))?;
    exe.parent()
        .map(Path::to_owned)
        .ok_or_else(|| CliError::config("cannot locate the coherence executable's directory"))
}

/// The path of binary `name` in `dir`, or an error naming it and how to build it.
pub fn find_binary(dir: &Path, name: &str) -> Result<PathBuf, CliError> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(CliError {
            code: EXIT_MISSING_BINARY,
            msg: format!(
                "demo: {name} not found at {}: the demo runs the real {name} binary next to coherence; \
                 build all three with `make build` (cargo build --release --locked -p coherence \
                 -p coherence-verifier -p coherence-sidecar) or name their directory with --bin-dir",
                path.display()
            ),
        })
    }
}

/// A running child process.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages (`verifier`, `sidecar demo/checkout`).
    pub name: String,
    /// Its log file (standard error).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `cmd` with standard error into `log` and no standard input or output.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, CliError> {
        let file = std::fs::File::create(log).map_err(|e| CliError::output(log, e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .map_err(|e| CliError::config(format!("demo: cannot start the {name}: {e}")))?;
        Ok(Proc {
            name: name.to_owned(),
            log: log.to_owned(),
            child: Some(child),
        })
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills it and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
