//! `coherence score`: online anomaly score of a `timestamp,value` CSV, without look-ahead.
//!
//! The score of a row uses only the rows before it (see `coherence_core::score`). Rows that
//! cannot be scored are skipped with a message on stderr and counted; they never stop the run.

use crate::error::{CliError, CliResult};
use crate::files::LineReader;
use crate::files::Output;
use coherence_core::score::{AnomalyScorer, METHOD, ScoreParams};
use std::path::PathBuf;

/// Flags of `coherence score`.
#[derive(Debug, clap::Args)]
#[command(after_help = format!(
    "Input rows are `timestamp,value`; a first line whose value is not a number is a header. \
     Output is `timestamp,value,anomaly_score` with a header, the score with 6 decimals. \
     Bad rows are reported on stderr as `line N: FIELD: problem` and skipped; blank lines are \
     ignored.\n\nMethod: {METHOD}."
))]
pub struct Args {
    /// CSV file of `timestamp,value` rows (`-` reads stdin).
    #[arg(value_name = "FILE.csv")]
    pub file: PathBuf,
    /// Where to write the scored CSV (default stdout; `-` is stdout).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// How many trailing values form the baseline of a row (at least the 10-value warm-up).
    #[arg(long, value_name = "N", default_value_t = ScoreParams::default().window)]
    pub window: usize,
}

/// A row that could not be scored.
#[derive(Debug, PartialEq)]
struct BadRow {
    field: &'static str,
    problem: String,
}

/// Runs the command.
pub fn run(a: Args) -> CliResult {
    let params = ScoreParams {
        window: a.window,
        ..ScoreParams::default()
    };
    let mut scorer = AnomalyScorer::new(params).map_err(|e| {
        CliError::config(format!(
            "--window: expected at least {} (the warm-up), got {} ({e})",
            params.min_history, a.window
        ))
    })?;
    let mut input = LineReader::open(&a.file)?;
    let mut out = Output::create(a.out.as_deref())?;
    out.write_line("timestamp,value,anomaly_score")?;

    let mut scored = 0u64;
    let mut skipped = 0u64;
    let mut warming = 0u64;
    while let Some((line_no, raw)) = input.next_line()? {
        let Ok(line) = std::str::from_utf8(raw) else {
            eprintln!("line {line_no}: (row): not valid UTF-8");
            skipped += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let row = match parse_row(line) {
            Ok(row) => row,
            Err(_) if line_no == 1 && is_header(line) => continue,
            Err(bad) => {
                eprintln!("line {line_no}: {}: {}", bad.field, bad.problem);
                skipped += 1;
                continue;
            }
        };
        match scorer.push(row.value) {
            Ok(s) => {
                if !s.warmed_up {
                    warming += 1;
                }
                out.write_line(&format!(
                    "{},{},{:.6}",
                    row.timestamp, row.value_text, s.score
                ))?;
                scored += 1;
            }
            Err(e) => {
                eprintln!("line {line_no}: value: {e}");
                skipped += 1;
            }
        }
    }
    out.finish()?;
    eprintln!("{scored} rows scored ({warming} in warm-up, scored 0), {skipped} bad rows skipped");
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Row<'a> {
    timestamp: &'a str,
    value_text: &'a str,
    value: f64,
}

fn parse_row(line: &str) -> Result<Row<'_>, BadRow> {
    let fields: Vec<&str> = line.split(',').collect();
    let [timestamp, value_text] = fields[..] else {
        return Err(BadRow {
            field: "(row)",
            problem: format!("expected 2 columns (timestamp,value), got {}", fields.len()),
        });
    };
    let value_text = unquote(value_text.trim());
    let value = value_text
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| BadRow {
            field: "value",
            problem: format!("expected a finite number, got {value_text:?}"),
        })?;
    Ok(Row {
        timestamp: timestamp.trim(),
        value_text,
        value,
    })
}

/// A first line with two columns whose second is not a number at all (NaN or `inf` are
/// numbers, reported as bad values rather than taken for a header).
fn is_header(line: &str) -> bool {
    let fields: Vec<&str> = line.split(',').collect();
    matches!(fields[..], [_, v] if unquote(v.trim()).parse::<f64>().is_err())
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rows_parse_and_bad_rows_name_the_problem() {
        let r = parse_row("2026-11-01T00:00:00Z, 1.5 ").unwrap();
        assert_eq!(
            (r.timestamp, r.value_text, r.value),
            ("2026-11-01T00:00:00Z", "1.5", 1.5)
        );
        assert_eq!(parse_row("t,\"2\"").unwrap().value, 2.0);
        let e = parse_row("t,abc").unwrap_err();
        assert_eq!(
            format!("{}: {}", e.field, e.problem),
            "value: expected a finite number, got \"abc\""
        );
        assert_eq!(parse_row("t,NaN").unwrap_err().field, "value");
        assert_eq!(parse_row("t,inf").unwrap_err().field, "value");
        assert_eq!(
            parse_row("t,1,2").unwrap_err().problem,
            "expected 2 columns (timestamp,value), got 3"
        );
        assert_eq!(parse_row("12").unwrap_err().field, "(row)");
    }

    #[test]
    fn header_is_a_non_numeric_second_column() {
        assert!(is_header("timestamp,value"));
        assert!(is_header("time,\"cpu\""));
        assert!(!is_header("t,1.0"));
        assert!(!is_header("t,NaN"));
        assert!(!is_header("a,b,c"));
    }
}
