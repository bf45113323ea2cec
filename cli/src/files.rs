//! Input and output files of the commands: `-` for stdin/stdout, complete-or-absent outputs.

use crate::error::{CliError, CliResult};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Stdout, Write};
use std::path::{Path, PathBuf};

/// Opens a file for buffered reading, or stdin for `-`; a file that cannot be opened is exit 66.
pub(crate) fn open_input(path: &Path) -> Result<Box<dyn BufRead + Send>, CliError> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(io::stdin())));
    }
    let f = File::open(path).map_err(|e| CliError::input(path, e))?;
    Ok(Box::new(BufReader::new(f)))
}

/// Reads an input line by line with 1-based line numbers, reusing one buffer.
pub(crate) struct LineReader {
    input: Box<dyn BufRead + Send>,
    path: PathBuf,
    buf: Vec<u8>,
    number: u64,
}

impl LineReader {
    /// Opens a file, or stdin for `-` (exit 66 when it cannot be opened).
    pub(crate) fn open(path: &Path) -> Result<Self, CliError> {
        Ok(Self {
            input: open_input(path)?,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(512),
            number: 0,
        })
    }

    /// The next line's number and bytes without the line ending; `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &[u8])>, CliError> {
        self.buf.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| CliError::input(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        Ok(Some((self.number, trim_newline(&self.buf))))
    }
}

/// A line without its `\n` or `\r\n` ending.
pub(crate) fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where a command writes its result: stdout, or a file that appears only once complete
/// (written to a temporary sibling and renamed), so a failed run leaves no half file behind.
pub(crate) struct Output {
    target: Target,
}

enum Target {
    Stdout(BufWriter<Stdout>),
    File {
        writer: Option<BufWriter<File>>,
        tmp: PathBuf,
        dest: PathBuf,
    },
}

impl Output {
    /// Stdout for `None` or `-`, else the file at `path` (exit 74 when it cannot be created).
    pub(crate) fn create(path: Option<&Path>) -> Result<Self, CliError> {
        let dest = match path {
            None => return Ok(Self::stdout()),
            Some(p) if p == Path::new("-") => return Ok(Self::stdout()),
            Some(p) => p.to_path_buf(),
        };
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".partial-{}", std::process::id()));
        let tmp = dest.with_file_name(name);
        let file = File::create(&tmp).map_err(|e| CliError::output(&dest, e))?;
        Ok(Self {
            target: Target::File {
                writer: Some(BufWriter::new(file)),
                tmp,
                dest,
            },
        })
    }

    fn stdout() -> Self {
        Self {
            target: Target::Stdout(BufWriter::new(io::stdout())),
        }
    }

    fn name(&self) -> &Path {
        match &self.target {
            Target::Stdout(_) => Path::new("stdout"),
            Target::File { dest, .. } => dest,
        }
    }

    /// Writes `line` and a newline.
    pub(crate) fn write_line(&mut self, line: &str) -> CliResult {
        let res = match &mut self.target {
            Target::Stdout(w) => writeln!(w, "{line}"),
            Target::File { writer, .. } => match writer {
                Some(w) => writeln!(w, "{line}"),
                None => Ok(()),
            },
        };
        res.map_err(|e| CliError::output(self.name(), e))
    }

    /// Flushes, and moves a file into place.
    pub(crate) fn finish(mut self) -> CliResult {
        let name = self.name().to_path_buf();
        match &mut self.target {
            Target::Stdout(w) => w.flush().map_err(|e| CliError::output(&name, e)),
            Target::File { writer, tmp, dest } => {
                if let Some(w) = writer.take() {
                    let file = w
                        .into_inner()
                        .map_err(|e| CliError::output(dest, e.error()))?;
                    file.sync_all().map_err(|e| CliError::output(dest, e))?;
                }
                fs::rename(&*tmp, &*dest).map_err(|e| CliError::output(dest, e))
            }
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Target::File { tmp, .. } = &self.target {
            // After a successful rename the temporary name is gone and this is a no-op.
            let _ = fs::remove_file(tmp);
        }
    }
}
