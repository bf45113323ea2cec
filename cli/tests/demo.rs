//! `coherence demo` end to end, as a user runs it: the real verifier and sidecars over mTLS on
//! free loopback ports for a short run, then the printed summary — the stressed workload at
//! high drift risk, an incident with its narrative and veto, FinOps grades — and nothing left
//! behind. The verifier and sidecar binaries are built first into this test's target directory
//! (next to the `coherence` under test), as `make build` puts them next to each other.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot run its binary should fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The directory of the `coherence` under test, with `coherence-verifier` and
/// `coherence-sidecar` built into it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_coherence"));
        let profile_dir = exe.parent().unwrap().to_owned();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--locked"])
            .args([
                "-p",
                "coherence-verifier",
                "-p",
                "coherence-sidecar",
                "--bins",
            ])
            .arg("--profile")
            .arg(&profile)
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of the verifier and sidecar failed"
        );
        profile_dir
    })
}

#[test]
fn a_short_demo_prints_a_high_risk_stressed_workload_incidents_and_grades() {
    let dir = bin_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(["demo", "--duration", "30s"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--bin-dir")
        .arg(dir)
        .output()
        .expect("run coherence demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);

    // The real URL of the dashboard, on the free port the verifier took.
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Dashboard: "))
        .expect("the dashboard URL");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/ui"), "{url}");
    assert!(!url.contains(":9102/"), "port 0 means a free port: {url}");
    // Progress lines while it ran.
    assert!(
        stdout.lines().any(|l| l.contains("records accepted")),
        "{stdout}"
    );

    let summary = stdout
        .split("== Summary after")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let row = |name: &str| -> Vec<&str> {
        summary
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{summary}"))
            .split_whitespace()
            .collect()
    };
    // WORKLOAD ROLE RISK <signal> over <window>: <vi> FTI GRADE PCS INCIDENTS
    let checkout = row("demo/checkout");
    assert_eq!(checkout[1], "stressed");
    assert_eq!(checkout[2], "high", "{summary}");
    for healthy in ["demo/catalog", "demo/search"] {
        let r = row(healthy);
        assert_eq!(r[1], "healthy");
        assert!(["low", "medium"].contains(&r[2]), "{healthy}: {summary}");
    }
    for r in [
        row("demo/checkout"),
        row("demo/catalog"),
        row("demo/search"),
    ] {
        let grade = r[r.len() - 3];
        assert!(
            ["OK", "WARN", "FAIL"].contains(&grade),
            "a FinOps grade for {}: {summary}",
            r[0]
        );
        let fti: f64 = r[r.len() - 4].parse().expect("an FTI");
        assert!(fti > 0.5 && fti < 50.0, "{fti}");
        let pcs: Vec<u64> = r[r.len() - 2]
            .split('/')
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(pcs[0] >= 10, "PCS accepted for {}: {summary}", r[0]);
        assert_eq!(pcs[2], 0, "nothing rejected: {summary}");
    }
    // The stressed workload costs more than it serves, and more than the healthy ones.
    assert!(
        ["WARN", "FAIL"].contains(&checkout[checkout.len() - 3]),
        "{summary}"
    );
    let fti = |r: &[&str]| -> f64 { r[r.len() - 4].parse().unwrap() };
    for healthy in ["demo/catalog", "demo/search"] {
        assert!(fti(&checkout) > fti(&row(healthy)), "{summary}");
    }
    let incidents: u64 = checkout.last().unwrap().parse().unwrap();
    assert!(incidents >= 1, "{summary}");

    // Incidents with their narratives and veto recommendations.
    let section = summary
        .split("== Incidents (")
        .nth(1)
        .unwrap_or_else(|| panic!("no incidents section:\n{summary}"));
    // The stressed workload's incident: the cascade told in order, and what to do about it.
    // (Healthy workloads may show weak findings of their own noise; their risk stays low.)
    let block = section
        .split("\n\n")
        .find(|b| b.trim_start().starts_with("demo/checkout: "))
        .unwrap_or_else(|| panic!("no incident of demo/checkout:\n{section}"));
    assert!(block.contains("compute seizure on cpu"), "{block}");
    let veto = block
        .lines()
        .find_map(|l| l.trim().strip_prefix("veto recommendation: "))
        .unwrap_or_else(|| panic!("no veto recommendation:\n{block}"));
    assert!(
        ["shed-load", "circuit-break", "pause-rollout"]
            .iter()
            .any(|v| veto.starts_with(v)),
        "{veto}"
    );

    // Everything it made is gone.
    let tmp = stdout
        .split("certificates and feeds in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the demo names its directory");
    assert!(!Path::new(tmp).exists(), "{tmp} was left behind");
}

#[test]
fn a_missing_binary_is_named_with_make_build() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(["demo", "--duration", "1s", "--bin-dir"])
        .arg(empty.path())
        .output()
        .expect("run coherence demo");
    assert_eq!(out.status.code(), Some(66));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("coherence-verifier not found"), "{err}");
    assert!(err.contains("make build"), "{err}");
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        ["demo", "--duration", "soon"],
        ["demo", "--stressed", "9"],
        ["demo", "--speed", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_coherence"))
            .args(args)
            .output()
            .expect("run coherence demo");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
