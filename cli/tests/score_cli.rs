//! `coherence score` run as a process on real files.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

fn coherence(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A calm, slightly wavy series with one spike, two bad rows, and a header.
fn spiky_csv(spike_at: usize) -> (String, usize) {
    let mut s = String::from("timestamp,value\n");
    let mut rows = 0;
    for i in 0..80usize {
        let v = if i == spike_at {
            500.0
        } else {
            100.0 + ((i * 7) % 5) as f64 - 2.0
        };
        s.push_str(&format!("2026-11-01T00:{:02}:{:02}Z,{v}\n", i / 60, i % 60));
        rows += 1;
        if i == 30 {
            s.push_str("2026-11-01T00:00:31Z,abc\n");
            s.push_str("2026-11-01T00:00:31Z,1,2\n");
        }
    }
    (s, rows)
}

#[test]
fn the_spike_scores_highest_and_bad_rows_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("series.csv");
    let output = dir.path().join("scored.csv");
    let spike_at = 57;
    let (csv, rows) = spiky_csv(spike_at);
    std::fs::write(&input, &csv).unwrap();

    let out = coherence(&[
        "score",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    // Header is line 1, row i is line i + 2, the bad rows follow row 30.
    assert!(
        err.contains("line 33: value: expected a finite number, got \"abc\""),
        "{err}"
    );
    assert!(err.contains("line 34: (row): expected 2 columns"), "{err}");
    assert!(err.contains("2 bad rows skipped"), "{err}");

    let scored = std::fs::read_to_string(&output).unwrap();
    let mut lines = scored.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
    let rows_out: Vec<(String, f64, f64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 3, "{l}");
            let decimals = f[2].split('.').nth(1).unwrap();
            assert_eq!(decimals.len(), 6, "{l}");
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows_out.len(), rows);
    for (i, (_, _, s)) in rows_out.iter().enumerate() {
        assert!((0.0..=1.0).contains(s), "row {i} score {s}");
    }
    for (i, (_, _, s)) in rows_out.iter().take(10).enumerate() {
        assert_eq!(*s, 0.0, "warm-up row {i} must score 0");
    }
    let top = rows_out
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.2.total_cmp(&b.1.2))
        .unwrap();
    assert_eq!(
        top.0, spike_at,
        "highest score at row {}: {:?}",
        top.0, top.1
    );
    assert!(top.1.2 > 0.9);
    assert_eq!(top.1.1, 500.0);
    assert_eq!(rows_out[spike_at].0, "2026-11-01T00:00:57Z");
}

#[test]
fn headerless_input_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("plain.csv");
    let body: String = (0..12).map(|i| format!("{i},{}\n", 10 + i % 2)).collect();
    std::fs::write(&input, body).unwrap();
    let out = coherence(&["score", input.to_str().unwrap(), "--window", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{stdout}");
    assert_eq!(lines[0], "timestamp,value,anomaly_score");
    assert_eq!(lines[1], "0,10,0.000000");
}

#[test]
fn the_future_does_not_change_past_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, _) = spiky_csv(70);
    let full = dir.path().join("full.csv");
    let cut = dir.path().join("cut.csv");
    std::fs::write(&full, &csv).unwrap();
    let prefix: String = csv.lines().take(50).map(|l| format!("{l}\n")).collect();
    std::fs::write(&cut, &prefix).unwrap();
    let a = text(&coherence(&["score", full.to_str().unwrap()]).stdout);
    let b = text(&coherence(&["score", cut.to_str().unwrap()]).stdout);
    let b_lines: Vec<&str> = b.lines().collect();
    assert!(b_lines.len() > 40);
    assert_eq!(a.lines().take(b_lines.len()).collect::<Vec<_>>(), b_lines);
}

#[test]
fn missing_file_is_66_and_a_tiny_window_is_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = coherence(&["score", dir.path().join("none.csv").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(66));
    let input = dir.path().join("x.csv");
    std::fs::write(&input, "t,1\n").unwrap();
    let out = coherence(&["score", input.to_str().unwrap(), "--window", "3"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("--window"),
        "{}",
        text(&out.stderr)
    );
}
