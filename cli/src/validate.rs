//! `coherence validate`: checks every line of a telemetry JSONL file against the telemetry
//! contract, `schemas/telemetry.schema.json` (JSON Schema 2020-12, embedded in the binary).
//!
//! Each problem is one line on stdout, `line N: FIELD: problem`, where FIELD is the JSON
//! pointer of the field without its leading slash (`qps`) or `(root)` for the line as a whole.
//! The summary goes to stderr: `N lines valid` (exit 0) or `M of N lines invalid` (exit 1).

use crate::error::{CliError, CliResult};
use crate::files::LineReader;
use coherence_core::telemetry::{TelemetryRecord, parse_ts_ms};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, ValidationError, Validator};
use serde_json::Value;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The telemetry contract: JSON Schema 2020-12 of one JSONL line.
pub const TELEMETRY_SCHEMA: &str = include_str!("../../schemas/telemetry.schema.json");

/// How much of an offending value is echoed back in a message.
const MAX_ECHO_CHARS: usize = 60;

/// Flags of `coherence validate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Problems are printed on stdout as `line N: FIELD: problem`; \
the summary (`N lines valid` or `M of N lines invalid`) on stderr. Fields not in the contract \
are allowed."
)]
pub struct Args {
    /// Telemetry JSONL file to check (`-` reads stdin).
    #[arg(value_name = "FILE.jsonl")]
    pub file: PathBuf,
}

/// Runs the command.
pub fn run(a: Args) -> CliResult {
    let checker = LineChecker::new()?;
    let mut input = LineReader::open(&a.file)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let out_err = |e: io::Error| CliError::output(Path::new("stdout"), e);

    let mut invalid = 0u64;
    let mut lines = 0u64;
    while let Some((line_no, raw)) = input.next_line()? {
        lines = line_no;
        let problems = checker.check_bytes(raw);
        if !problems.is_empty() {
            invalid += 1;
            for p in problems {
                writeln!(out, "line {line_no}: {}: {}", p.field, p.problem).map_err(out_err)?;
            }
        }
    }
    out.flush().map_err(out_err)?;

    if invalid == 0 {
        eprintln!("{lines} lines valid");
        Ok(())
    } else {
        Err(CliError::check(format!(
            "{invalid} of {lines} lines invalid"
        )))
    }
}

/// One problem of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON pointer of the field without the leading slash, or `(root)`.
    pub field: String,
    /// What is wrong, in plain words.
    pub problem: String,
}

impl Problem {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The compiled telemetry contract.
pub struct LineChecker {
    schema: Value,
    validator: Validator,
}

impl LineChecker {
    /// Compiles the embedded schema, with `format` checked (2020-12 only annotates by default).
    pub fn new() -> Result<Self, CliError> {
        let schema: Value = serde_json::from_str(TELEMETRY_SCHEMA)
            .map_err(|e| CliError::config(format!("embedded telemetry schema: {e}")))?;
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| CliError::config(format!("embedded telemetry schema: {e}")))?;
        Ok(Self { schema, validator })
    }

    /// The problems of one raw line (without its newline); empty when the line is valid.
    pub fn check_bytes(&self, line: &[u8]) -> Vec<Problem> {
        match std::str::from_utf8(line) {
            Ok(s) => self.check_line(s),
            Err(e) => vec![Problem::new(
                "(root)",
                format!(
                    "not valid UTF-8 (byte {} is not part of a character)",
                    e.valid_up_to() + 1
                ),
            )],
        }
    }

    /// The problems of one line of text; empty when the line is valid.
    pub fn check_line(&self, line: &str) -> Vec<Problem> {
        if line.trim().is_empty() {
            return vec![Problem::new("(root)", "blank line, expected a JSON object")];
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return vec![Problem::new(
                    "(root)",
                    format!("not valid JSON: {}", json_error_words(&e)),
                )];
            }
        };
        let mut problems: Vec<Problem> = Vec::new();
        for err in self.validator.iter_errors(&value) {
            let p = self.explain(&err);
            // One message per field is enough to fix it; a wrong type can trip several keywords.
            if !problems.iter().any(|q| q.field == p.field) {
                problems.push(p);
            }
        }
        if problems.is_empty() {
            problems.extend(decode_problems(value));
        }
        // Report in the contract's field order, so output is stable and reads like the record.
        problems.sort_by_key(|p| self.field_rank(&p.field));
        problems
    }

    fn field_rank(&self, field: &str) -> usize {
        if field == "(root)" {
            return 0;
        }
        self.schema["required"]
            .as_array()
            .and_then(|r| r.iter().position(|f| f.as_str() == Some(field)))
            .map_or(usize::MAX, |i| i + 1)
    }

    fn explain(&self, err: &ValidationError<'_>) -> Problem {
        let pointer = err.instance_path.as_str();
        if let ValidationErrorKind::Required { property } = &err.kind {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            let field = if pointer.is_empty() {
                name
            } else {
                format!("{}/{name}", &pointer[1..])
            };
            return Problem::new(field, "missing required field");
        }
        let field = pointer
            .strip_prefix('/')
            .map_or_else(|| "(root)".to_string(), str::to_owned);
        let got = echo(&err.instance);
        let problem = match &err.kind {
            ValidationErrorKind::Maximum { limit } => {
                format!("expected at most {limit}, got {got}")
            }
            ValidationErrorKind::Type {
                kind: TypeKind::Single(_) | TypeKind::Multiple(_),
            }
            | ValidationErrorKind::Minimum { .. }
            | ValidationErrorKind::MinLength { .. }
            | ValidationErrorKind::Format { .. } => {
                format!("expected {}, got {got}", self.expectation(pointer))
            }
            other => format!("{} (got {got})", describe_kind(other)),
        };
        Problem::new(field, problem)
    }

    /// What the contract expects at a JSON pointer, in words, from the schema itself.
    fn expectation(&self, pointer: &str) -> String {
        let mut node = &self.schema;
        for segment in pointer.split('/').skip(1) {
            let key = segment.replace("~1", "/").replace("~0", "~");
            match node.get("properties").and_then(|p| p.get(&key)) {
                Some(n) => node = n,
                None => return "a value the contract allows".into(),
            }
        }
        describe_schema(node)
    }
}

/// A schema node in words: `a number ≥ 0`, `a non-empty string`, `an RFC 3339 date-time ...`.
fn describe_schema(node: &Value) -> String {
    if node.get("format").and_then(Value::as_str) == Some("date-time") {
        return "an RFC 3339 date-time string such as 2026-11-01T00:00:00Z".into();
    }
    let noun = match node.get("type").and_then(Value::as_str) {
        Some("object") => "a JSON object",
        Some("string") => "a string",
        Some("integer") => "a whole number",
        Some("number") => "a number",
        Some("boolean") => "true or false",
        Some("array") => "an array",
        _ => "a value",
    };
    let mut s = String::from(noun);
    if node.get("minLength").and_then(Value::as_u64) == Some(1) {
        s = s.replacen("a string", "a non-empty string", 1);
    }
    if let Some(min) = node.get("minimum") {
        s.push_str(&format!(" ≥ {min}"));
    }
    s
}

fn describe_kind(kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::Enum { options } => format!("expected one of {options}"),
        ValidationErrorKind::Constant { expected_value } => format!("expected {expected_value}"),
        ValidationErrorKind::Pattern { pattern } => format!("expected to match {pattern}"),
        ValidationErrorKind::MaxLength { limit } => {
            format!("expected at most {limit} characters")
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            format!("unexpected fields {}", unexpected.join(", "))
        }
        _ => "does not match the telemetry contract".into(),
    }
}

/// Checks what the schema cannot say but the record type needs, so that a valid line is a line
/// `coherence analyze` can read.
fn decode_problems(value: Value) -> Vec<Problem> {
    if let Some(step) = value.get("step") {
        if step.as_u64().is_none() {
            return vec![Problem::new(
                "step",
                format!(
                    "expected a whole number ≥ 0 written without a fraction, got {}",
                    echo(step)
                ),
            )];
        }
    }
    match serde_json::from_value::<TelemetryRecord>(value) {
        Ok(record) => match parse_ts_ms(&record.ts) {
            Ok(_) => Vec::new(),
            Err(_) => vec![Problem::new(
                "ts",
                format!(
                    "expected an RFC 3339 date-time string such as 2026-11-01T00:00:00Z, got {}",
                    echo(&Value::String(record.ts))
                ),
            )],
        },
        Err(e) => vec![Problem::new(
            "(root)",
            format!("does not decode as a telemetry record: {e}"),
        )],
    }
}

/// A JSON value as it appeared, shortened when long.
fn echo(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= MAX_ECHO_CHARS {
        s
    } else {
        let head: String = s.chars().take(MAX_ECHO_CHARS).collect();
        format!("{head}…")
    }
}

/// A serde_json error as words and a column (the line number is the file's, not serde's).
fn json_error_words(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let words = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    format!("{words} at column {}", e.column())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn good() -> TelemetryRecord {
        TelemetryRecord {
            ts: "2026-11-01T00:00:00Z".into(),
            domain: "payments".into(),
            host: "api-7f9c-1".into(),
            workload: "api".into(),
            step: 3,
            qps: 120.5,
            latency_p95_ms: 41.0,
            infra_cost_usd: 0.012,
            cpu: 135.0,
            memory_mb: 512.0,
            requests_in: 1200.0,
            requests_out: 1300.0,
            errors: 0.0,
        }
    }

    fn with(field: &str, v: Value) -> String {
        let mut o = serde_json::to_value(good()).unwrap();
        o[field] = v;
        o.to_string()
    }

    fn without(field: &str) -> String {
        let mut o = serde_json::to_value(good()).unwrap();
        o.as_object_mut().unwrap().remove(field);
        o.to_string()
    }

    #[test]
    fn schema_requires_exactly_the_record_fields_and_describes_each() {
        let schema: Value = serde_json::from_str(TELEMETRY_SCHEMA).unwrap();
        let record = serde_json::to_value(good()).unwrap();
        let mut fields: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        fields.sort_unstable();
        required.sort_unstable();
        assert_eq!(fields, required);
        for (name, prop) in schema["properties"].as_object().unwrap() {
            let d = prop["description"].as_str().unwrap_or("");
            assert!(!d.is_empty(), "{name} has no description");
        }
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }

    #[test]
    fn a_serialized_record_is_valid_and_extra_fields_are_allowed() {
        let c = LineChecker::new().unwrap();
        assert_eq!(
            c.check_line(&serde_json::to_string(&good()).unwrap()),
            vec![]
        );
        assert_eq!(
            c.check_line(&with("zone", Value::from("eu-west-1a"))),
            vec![]
        );
        assert_eq!(c.check_line(&with("cpu", Value::from(250.0))), vec![]);
    }

    #[test]
    fn each_kind_of_problem_names_its_field() {
        let c = LineChecker::new().unwrap();
        let one = |line: String| {
            let p = c.check_line(&line);
            assert_eq!(p.len(), 1, "{line}: {p:?}");
            format!("{}: {}", p[0].field, p[0].problem)
        };
        assert_eq!(
            one(with("qps", Value::from(-3))),
            "qps: expected a number ≥ 0, got -3"
        );
        assert_eq!(
            one(with("errors", Value::from("abc"))),
            "errors: expected a number ≥ 0, got \"abc\""
        );
        assert_eq!(
            one(without("memory_mb")),
            "memory_mb: missing required field"
        );
        assert_eq!(
            one(with("host", Value::from(""))),
            "host: expected a non-empty string, got \"\""
        );
        assert_eq!(
            one(with("step", Value::from(-1))),
            "step: expected a whole number ≥ 0, got -1"
        );
        assert!(
            one(with("step", Value::from(2.5))).starts_with("step: expected a whole number ≥ 0")
        );
        assert!(
            one(with("step", serde_json::json!(3.0)))
                .starts_with("step: expected a whole number ≥ 0 written without a fraction")
        );
        assert_eq!(
            one(with("ts", Value::from("yesterday"))),
            "ts: expected an RFC 3339 date-time string such as 2026-11-01T00:00:00Z, got \"yesterday\""
        );
        assert_eq!(
            one(with("latency_p95_ms", Value::Null)),
            "latency_p95_ms: expected a number ≥ 0, got null"
        );
        assert_eq!(
            one("[1,2]".into()),
            "(root): expected a JSON object, got [1,2]"
        );
        assert!(one("{\"ts\": ".into()).starts_with("(root): not valid JSON: "));
        assert_eq!(
            one("   ".into()),
            "(root): blank line, expected a JSON object"
        );
        assert!(
            c.check_bytes(b"{\"a\":\"\xff\"}")[0]
                .problem
                .starts_with("not valid UTF-8")
        );
    }

    #[test]
    fn every_missing_field_is_reported() {
        let c = LineChecker::new().unwrap();
        let p = c.check_line("{}");
        assert_eq!(p.len(), 13, "{p:?}");
        assert!(p.iter().all(|p| p.problem == "missing required field"));
    }
}
