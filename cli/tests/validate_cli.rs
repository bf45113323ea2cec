//! `coherence validate` run as a process on real files.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn coherence(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(args)
        .output()
        .unwrap()
}

fn line(step: u64, qps: &str) -> String {
    format!(
        r#"{{"ts":"2026-11-01T00:00:{:02}Z","domain":"payments","host":"api-1","workload":"api","step":{step},"qps":{qps},"latency_p95_ms":40.5,"infra_cost_usd":0.01,"cpu":140.0,"memory_mb":512,"requests_in":100,"requests_out":105,"errors":0}}"#,
        step % 60
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_good_file_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.jsonl");
    let body: String = (0..25).map(|i| line(i, "12.5") + "\n").collect();
    std::fs::write(&path, body).unwrap();
    let out = coherence(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("25 lines valid"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn each_bad_line_is_reported_with_its_number_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let missing_host = line(4, "1").replace(r#""host":"api-1","#, "");
    let lines = [
        line(1, "1"),
        line(2, "-3"),
        "not json".to_string(),
        missing_host,
        String::new(),
        line(6, "2"),
        line(7, r#""fast""#).replace("2026-11-01T", "2026-13-01T"),
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = coherence(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let reported: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        reported,
        [
            "line 2: qps: expected a number ≥ 0, got -3",
            "line 3: (root): not valid JSON: expected ident at column 2",
            "line 4: host: missing required field",
            "line 5: (root): blank line, expected a JSON object",
            "line 7: ts: expected an RFC 3339 date-time string such as 2026-11-01T00:00:00Z, got \"2026-13-01T00:00:07Z\"",
            "line 7: qps: expected a number ≥ 0, got \"fast\"",
        ],
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("5 of 7 lines invalid"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stdin_is_read_with_a_dash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = format!("{}\n{}\n", line(1, "1"), line(2, "-0.5"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "line 2: qps: expected a number ≥ 0, got -0.5\n"
    );
    assert!(text(&out.stderr).contains("1 of 2 lines invalid"));
}

#[test]
fn a_missing_file_is_exit_66() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.jsonl");
    let out = coherence(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(66));
    assert!(
        text(&out.stderr).contains("nope.jsonl"),
        "{}",
        text(&out.stderr)
    );
}
