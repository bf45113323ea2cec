//! `coherence encrypt` (and `--decrypt`) run as a process on real files.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_KEY: &str = "HxwdHh8YGRobFBUWFxAREhMMDQ4PCAkKCwQFBgcAAQI=";

fn coherence(key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coherence"));
    cmd.args(args).env_remove("COHERENCE_AES_KEY");
    if let Some(k) = key {
        cmd.env("COHERENCE_AES_KEY", k);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

const PLAIN: &str = "{\"ts\":\"2026-11-01T00:00:00Z\",\"qps\":1}\n\n{\"ts\":\"2026-11-01T00:00:10Z\",\"qps\":2,\"note\":\"ünï\"}\n{\"ts\":\"2026-11-01T00:00:10Z\",\"qps\":2,\"note\":\"ünï\"}\n";

#[test]
fn encrypt_then_decrypt_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.jsonl");
    let sealed = dir.path().join("sealed.jsonl");
    let back = dir.path().join("back.jsonl");
    std::fs::write(&plain, PLAIN).unwrap();

    let out = coherence(Some(KEY), &["encrypt", p(&plain), "--out", p(&sealed)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let enc = std::fs::read_to_string(&sealed).unwrap();
    let enc_lines: Vec<&str> = enc.lines().collect();
    assert_eq!(enc_lines.len(), 3, "empty lines are dropped: {enc}");
    assert!(!enc.contains("qps"), "ciphertext leaks plaintext: {enc}");
    assert_ne!(
        enc_lines[1], enc_lines[2],
        "equal lines must get fresh nonces"
    );

    let out = coherence(
        Some(KEY),
        &["encrypt", "--decrypt", p(&sealed), "--out", p(&back)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let want: String = PLAIN
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(std::fs::read_to_string(&back).unwrap(), want);

    // Default output is stdout.
    let out = coherence(Some(KEY), &["encrypt", "--decrypt", p(&sealed)]);
    assert_eq!(text(&out.stdout), want);
}

#[test]
fn the_wrong_key_is_exit_65_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.jsonl");
    let sealed = dir.path().join("sealed.jsonl");
    let back = dir.path().join("back.jsonl");
    std::fs::write(&plain, PLAIN).unwrap();
    let out = coherence(Some(KEY), &["encrypt", p(&plain), "--out", p(&sealed)]);
    assert_eq!(out.status.code(), Some(0));

    let out = coherence(
        Some(OTHER_KEY),
        &["encrypt", "--decrypt", p(&sealed), "--out", p(&back)],
    );
    assert_eq!(out.status.code(), Some(65));
    let err = text(&out.stderr);
    assert!(err.contains("line 1: authentication failed"), "{err}");
    assert!(!back.exists(), "a failed run must not leave an output file");

    // A tampered second line is reported as line 2.
    let enc = std::fs::read_to_string(&sealed).unwrap();
    let mut lines: Vec<String> = enc.lines().map(str::to_owned).collect();
    lines[1] = "not base64 at all!".into();
    std::fs::write(&sealed, lines.join("\n")).unwrap();
    let out = coherence(Some(KEY), &["encrypt", "--decrypt", p(&sealed)]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        text(&out.stderr).contains("line 2: not base64"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_or_malformed_key_is_exit_64_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, PLAIN).unwrap();
    for key in [None, Some("not base64!"), Some("AAAA")] {
        let out = coherence(key, &["encrypt", p(&plain)]);
        assert_eq!(out.status.code(), Some(64), "key {key:?}");
        let err = text(&out.stderr);
        assert!(err.contains("COHERENCE_AES_KEY"), "key {key:?}: {err}");
        assert!(err.contains("32 bytes"), "key {key:?}: {err}");
        assert_eq!(text(&out.stdout), "");
    }
}

#[test]
fn a_missing_input_is_exit_66() {
    let dir = tempfile::tempdir().unwrap();
    let out = coherence(Some(KEY), &["encrypt", p(&dir.path().join("absent.jsonl"))]);
    assert_eq!(out.status.code(), Some(66));
    assert!(text(&out.stderr).contains("absent.jsonl"));
}
