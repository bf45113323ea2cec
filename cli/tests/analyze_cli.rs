//! `coherence simulate` and `coherence analyze` as a user runs them, on real files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot run its binary should fail loudly

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn coherence(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coherence"));
    cmd.args(args).env_remove("COHERENCE_AES_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run coherence")
}

fn simulate(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let out = dir.join(name);
    let mut args = vec!["simulate", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = coherence(&args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn analyze_json(file: &Path, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = vec!["analyze", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = coherence(&args, env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("analyze prints one JSON document")
}

#[test]
fn simulate_is_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(simulate(dir.path(), "a.jsonl", &["--hours", "1"])).unwrap();
    let b = std::fs::read(simulate(dir.path(), "b.jsonl", &["--hours", "1"])).unwrap();
    let c = std::fs::read(simulate(
        dir.path(),
        "c.jsonl",
        &["--hours", "1", "--seed", "7"],
    ))
    .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let first: Value = serde_json::from_slice(a.split(|&b| b == b'\n').next().unwrap()).unwrap();
    for k in [
        "ts",
        "domain",
        "host",
        "workload",
        "step",
        "qps",
        "latency_p95_ms",
        "infra_cost_usd",
        "cpu",
        "memory_mb",
    ] {
        assert!(first.get(k).is_some(), "line lacks {k}: {first}");
    }
    let o = coherence(&["simulate", "--hours", "0"], &[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("hours"));
}

#[test]
fn analyze_reports_the_cascade_and_skips_corrupt_lines_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let clean = simulate(dir.path(), "sim.jsonl", &[]);
    let text = std::fs::read_to_string(&clean).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let total = lines.len();
    lines.insert(3, "not json at all");
    lines.insert(10, r#"{"ts":"2026-11-01T00:00:00Z","host":"h"}"#);
    lines.insert(20, r#"{"ts":"2026-11-01T00:00:00Z","domain":"d","host":"h","workload":"w","step":1,"qps":"fast","latency_p95_ms":1,"infra_cost_usd":1,"cpu":1,"memory_mb":1,"requests_in":1,"requests_out":1,"errors":0}"#);
    let dirty = dir.path().join("dirty.jsonl");
    std::fs::write(&dirty, lines.join("\n") + "\n").unwrap();

    let a = analyze_json(&dirty, &[], &[]);
    assert_eq!(a["count"], total as u64);
    assert_eq!(a["skippedCount"], 3);
    let skipped = a["skipped"].as_array().unwrap();
    assert_eq!(skipped[0]["line"], 4);
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert_eq!(skipped[1]["line"], 11);
    assert!(
        skipped[1]["reason"]
            .as_str()
            .unwrap()
            .contains("missing required field"),
        "{}",
        skipped[1]
    );
    assert_eq!(skipped[2]["line"], 21);
    assert!(
        skipped[2]["reason"].as_str().unwrap().starts_with("qps:"),
        "{}",
        skipped[2]
    );

    // The contract's fields are there and hold numbers.
    for k in ["qps", "latency_p95_ms", "infra_cost_usd"] {
        assert!(a["medians"][k].as_f64().unwrap() > 0.0);
    }
    assert!(a["fti_avg"].as_f64().unwrap() > 0.5);
    assert!(["OK", "WARN", "FAIL"].contains(&a["fti_grade_worst"].as_str().unwrap()));
    assert!(a["lambda_effective"].as_f64().unwrap() > 0.0);
    let host = &a["workloads"][0];
    let qps = &host["signals"]["qps"];
    for k in [
        "coherenceMean",
        "volatilityIndex",
        "predictedDriftRisk",
        "n",
        "inputs",
        "meta",
    ] {
        assert!(qps.get(k).is_some(), "qps lacks {k}: {qps}");
    }
    assert_eq!(qps["meta"]["engineVersion"], env!("CARGO_PKG_VERSION"));

    // The stressed host's cascade ends in a retry storm that recommends circuit-break.
    let incidents = a["incidents"].as_array().unwrap();
    assert!(
        incidents
            .iter()
            .any(|i| i["veto"] == "circuit-break" && i["alert"] == true),
        "{incidents:?}"
    );
    assert!(incidents.iter().all(|i| {
        i["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().contains("stressed"))
    }));

    // Same analysis on the clean file: corrupt lines changed nothing else.
    let c = analyze_json(&clean, &[], &[]);
    assert_eq!(c["medians"], a["medians"]);
    assert_eq!(c["incidents"], a["incidents"]);
}

#[test]
fn baseline_flag_is_used_and_bad_flags_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = simulate(
        dir.path(),
        "sim.jsonl",
        &["--hours", "1", "--stressed", "0"],
    );
    let a = analyze_json(
        &f,
        &[
            "--baseline",
            "qps=100,latency_p95_ms=100,infra_cost_usd=0.001",
        ],
        &[],
    );
    assert_eq!(a["baseline"]["source"], "flag");
    assert_eq!(a["baseline"]["qps"], 100.0);
    // Cheaper and faster than that baseline: every sample grades OK.
    assert_eq!(a["fti_grade_worst"], "OK");

    let o = coherence(
        &["analyze", f.to_str().unwrap(), "--baseline", "qps=100"],
        &[],
    );
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("latency_p95_ms: missing"));
    let o = coherence(&["analyze", f.to_str().unwrap(), "--window", "1y"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("window: expected"));
    let o = coherence(
        &["analyze", dir.path().join("absent.jsonl").to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(66));
}

#[test]
fn encrypted_telemetry_is_analyzed_like_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let plain = simulate(dir.path(), "sim.jsonl", &["--hours", "1"]);
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let enc = dir.path().join("sim.enc");
    let o = coherence(
        &[
            "encrypt",
            plain.to_str().unwrap(),
            "--out",
            enc.to_str().unwrap(),
        ],
        &[("COHERENCE_AES_KEY", key)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = analyze_json(&enc, &[], &[("COHERENCE_AES_KEY", key)]);
    let p = analyze_json(&plain, &[], &[]);
    assert_eq!(a["count"], p["count"]);
    assert_eq!(a["medians"], p["medians"]);
    assert_eq!(a["skippedCount"], 0);
    // With another key nothing decrypts: every line is skipped with the reason, none is fatal.
    let wrong = "HwECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let w = analyze_json(&enc, &[], &[("COHERENCE_AES_KEY", wrong)]);
    assert_eq!(w["count"], 0);
    assert_eq!(w["skippedCount"], p["count"]);
    assert!(
        w["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot decrypt")
    );
}

#[test]
fn text_report_prints_incidents_with_narrative_and_veto() {
    let dir = tempfile::tempdir().unwrap();
    let f = simulate(dir.path(), "sim.jsonl", &[]);
    let o = coherence(&["analyze", f.to_str().unwrap(), "--format", "text"], &[]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("Incidents:"), "{out}");
    assert!(out.contains("veto circuit-break"), "{out}");
    assert!(out.contains("retry storm"), "{out}");
    assert!(out.contains("FinOps: FTI"), "{out}");
}
