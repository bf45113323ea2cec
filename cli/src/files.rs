//! Input and output files of the commands: `-` for stdin/stdout, complete-or-absent outputs.

use crate::error::{CliError, CliResult};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Stdout, Write};
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

    /// The path it reads (`-` for stdin).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next run of whole lines, about `size` bytes (more when a line is longer), with the
    /// number of its first line; `None` at the end. Lines read before by
    /// [`LineReader::next_line`] are counted, so the numbering carries on.
    pub(crate) fn next_chunk(&mut self, size: usize) -> Result<Option<Chunk>, CliError> {
        let mut bytes = Vec::with_capacity(size + 1024);
        (&mut self.input)
            .take(size as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::input(&self.path, e))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if !bytes.ends_with(b"\n") {
            self.input
                .read_until(b'\n', &mut bytes)
                .map_err(|e| CliError::input(&self.path, e))?;
        }
        let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        let lines = newlines + u64::from(!bytes.ends_with(b"\n"));
        let first_line = self.number + 1;
        self.number += lines;
        Ok(Some(Chunk { first_line, bytes }))
    }
}

/// Whole lines of an input, as read by [`LineReader::next_chunk`].
pub(crate) struct Chunk {
    /// 1-based number of the first line.
    pub(crate) first_line: u64,
    /// The lines with their endings; the last one may lack its `\n` at the end of the input.
    pub(crate) bytes: Vec<u8>,
}

impl Chunk {
    /// Each line's number and bytes without the line ending.
    pub(crate) fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.bytes
            .split_inclusive(|&b| b == b'\n')
            .zip(self.first_line..)
            .map(|(l, n)| (n, trim_newline(l)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(text: &[u8], size: usize) -> Vec<(u64, Vec<Vec<u8>>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        fs::write(&path, text).unwrap();
        let mut r = LineReader::open(&path).unwrap();
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk(size).unwrap() {
            let lines: Vec<(u64, Vec<u8>)> = c.lines().map(|(n, l)| (n, l.to_vec())).collect();
            for (i, (n, _)) in lines.iter().enumerate() {
                assert_eq!(*n, c.first_line + i as u64);
            }
            out.push((c.first_line, lines.into_iter().map(|(_, l)| l).collect()));
        }
        out
    }

    #[test]
    fn chunks_hold_whole_lines_numbered_across_chunks() {
        let text = b"a\nbb\r\n\nccccccccc\nd";
        // Every size gives the same lines with the same numbers.
        for size in [1, 2, 3, 5, 8, 100] {
            let chunks = chunks_of(text, size);
            let flat: Vec<(u64, Vec<u8>)> = chunks
                .iter()
                .flat_map(|(first, ls)| ls.iter().cloned().zip(*first..).map(|(l, n)| (n, l)))
                .collect();
            assert_eq!(
                flat,
                vec![
                    (1, b"a".to_vec()),
                    (2, b"bb".to_vec()),
                    (3, b"".to_vec()),
                    (4, b"ccccccccc".to_vec()),
                    (5, b"d".to_vec()),
                ],
                "chunk size {size}"
            );
            // A chunk never ends inside a line, and a long line is never split.
            assert!(chunks.iter().all(|(_, ls)| !ls.is_empty()), "size {size}");
        }
        assert_eq!(chunks_of(b"a\nb\n", 100).len(), 1);
        assert!(chunks_of(b"", 10).is_empty());
    }

    #[test]
    fn chunks_carry_on_the_numbering_of_single_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        fs::write(&path, b"x\ny\nz\n").unwrap();
        let mut r = LineReader::open(&path).unwrap();
        assert_eq!(r.next_line().unwrap().map(|(n, _)| n), Some(1));
        let c = r.next_chunk(1).unwrap().unwrap();
        assert_eq!(c.first_line, 2);
        assert_eq!(c.lines().collect::<Vec<_>>(), vec![(2, &b"y"[..])]);
        let c = r.next_chunk(1).unwrap().unwrap();
        assert_eq!(c.lines().collect::<Vec<_>>(), vec![(3, &b"z"[..])]);
        assert!(r.next_chunk(1).unwrap().is_none());
    }
}
