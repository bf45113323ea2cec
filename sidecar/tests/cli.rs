//! The `coherence-sidecar` binary's configuration handling: the shipped example works as it is,
//! bad configuration exits 64 with one line naming the field, and a running sidecar reloads a
//! changed file (refusing one that does not validate).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_verifier::tls::certgen;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn sidecar(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coherence-sidecar"));
    cmd.current_dir(dir).args(args);
    for k in [
        "PCS_HMAC_KEY",
        "PCS_SIGN_ALG",
        "ENDPOINT",
        "POD_NAMESPACE",
        "POD_NAME",
        "WORKLOAD_NAME",
        "COHERENCE_TLS_CA",
        "COHERENCE_TLS_CERT",
        "COHERENCE_TLS_KEY",
        "PERSISTENCE",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `coherence-sidecar run --config CONFIG` in `dir` with an HMAC key, stdout discarded.
fn run_sidecar(dir: &Path, config: &str, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_coherence-sidecar"))
        .current_dir(dir)
        .args(["run", "--config", config])
        .env("PCS_HMAC_KEY", "k")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Waits (at most 20 s) until `what` answers `/status` on `port`; it must not exit meanwhile.
fn serving(child: &mut Child, port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get(port, "/status").is_none() {
        assert!(child.try_wait().unwrap().is_none(), "{what} exited");
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM; the sidecar must exit 0.
fn terminated(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.yaml"))
        .unwrap()
}

#[test]
fn the_shipped_example_works_as_it_is_next_to_generated_certs() {
    let dir = tempfile::tempdir().unwrap();
    certgen::generate(&dir.path().join("certs"), &[], 30).unwrap();
    std::fs::write(dir.path().join("config.yaml"), example()).unwrap();
    let ok = sidecar(
        dir.path(),
        &["check", "--config", "config.yaml"],
        &[("PCS_HMAC_KEY", "secret")],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("http://127.0.0.1:9100/metrics"), "{out}");
    assert!(out.contains("https://localhost:8443"), "{out}");

    // Without the key it names the variable.
    let no_key = sidecar(dir.path(), &["check", "--config", "config.yaml"], &[]);
    assert_eq!(no_key.status.code(), Some(64));
    let err = String::from_utf8_lossy(&no_key.stderr);
    assert!(err.contains("PCS_HMAC_KEY"), "{err}");
}

#[test]
fn bad_configuration_exits_64_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    certgen::generate(&dir.path().join("certs"), &[], 30).unwrap();
    let cases: [(&str, &str, &str); 5] = [
        ("windows: [1m, 5m]", "windows: [1m, 5x]", "windows[1]:"),
        ("epoch: 10s", "epoch: 10s\nepochs: 3", "epochs"),
        (
            "    interval: 1s",
            "    interval: soon",
            "sources[0].interval:",
        ),
        (
            "  endpoint: https://localhost:8443",
            "  endpoint: ftp://x",
            "verifier.endpoint:",
        ),
        (
            "  namespace: default",
            "  namespace: Default",
            "identity.namespace:",
        ),
    ];
    for (from, to, field) in cases {
        let text = example();
        assert!(text.contains(from), "{from:?} not in the example");
        std::fs::write(dir.path().join("bad.yaml"), text.replacen(from, to, 1)).unwrap();
        for cmd in ["check", "run"] {
            let out = sidecar(
                dir.path(),
                &[cmd, "--config", "bad.yaml"],
                &[("PCS_HMAC_KEY", "secret")],
            );
            assert_eq!(out.status.code(), Some(64), "{cmd} {to:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), 1, "{err}");
            assert!(
                lines[0].starts_with(&format!("coherence-sidecar: {field}"))
                    || (field == "epochs" && lines[0].contains("epochs")),
                "{cmd} {to:?}: {err}"
            );
        }
    }
    let missing = sidecar(dir.path(), &["run", "--config", "nope.yaml"], &[]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.yaml"));
}

fn get(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

#[test]
fn a_changed_file_is_reloaded_and_a_bad_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = |windows: &str| {
        format!(
            "identity: {{namespace: shop, workload: web, pod: web-0}}\n\
             sources:\n  - {{name: app, type: jsonl, path: app.jsonl, interval: 100ms}}\n\
             epoch: 1s\nwindows: {windows}\n\
             verifier: {{endpoint: \"http://127.0.0.1:9\"}}\n\
             api: {{listen: \"127.0.0.1:{port}\"}}\n"
        )
    };
    std::fs::write(dir.path().join("c.yaml"), config("[1m]")).unwrap();
    let mut child = run_sidecar(dir.path(), "c.yaml", Stdio::null());
    let wait = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        for _ in 0..200 {
            if let Some(v) = get(port, "/status") {
                if pred(&v) {
                    return v;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("status never matched");
    };
    wait(&|v| v["windows"] == serde_json::json!(["1m"]));
    std::fs::write(dir.path().join("c.yaml"), config("[1m, 5m]")).unwrap();
    let v = wait(&|v| v["config"]["reloads"] == 1);
    assert_eq!(v["windows"], serde_json::json!(["1m", "5m"]));
    std::fs::write(dir.path().join("c.yaml"), config("[1m, 1m]")).unwrap();
    let v = wait(&|v| v["config"]["reloadErrors"] == 1);
    assert!(
        v["config"]["lastError"]
            .as_str()
            .unwrap()
            .starts_with("windows[1]:"),
        "{v}"
    );
    assert_eq!(v["windows"], serde_json::json!(["1m", "5m"]));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    terminated(child);
}

#[test]
fn a_second_sidecar_on_the_same_outbox_exits_74_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (first_port, second_port) = (port(), port());
    let config = |port: u16| {
        format!(
            "identity: {{namespace: shop, workload: web, pod: web-0}}\n\
             sources:\n  - {{name: app, type: jsonl, path: app.jsonl, interval: 100ms}}\n\
             epoch: 1s\nwindows: [1m]\n\
             verifier: {{endpoint: \"http://127.0.0.1:9\"}}\n\
             outbox: {{dir: shared-outbox}}\n\
             api: {{listen: \"127.0.0.1:{port}\"}}\n"
        )
    };
    std::fs::write(dir.path().join("a.yaml"), config(first_port)).unwrap();
    std::fs::write(dir.path().join("b.yaml"), config(second_port)).unwrap();
    let mut first = run_sidecar(dir.path(), "a.yaml", Stdio::null());
    serving(&mut first, first_port, "the first sidecar");
    let outbox = dir.path().join("shared-outbox");
    let files = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = files(&outbox);
    assert!(!before.is_empty());

    // Without the lock the second would run on: it must exit by itself, within the deadline.
    let mut second = run_sidecar(dir.path(), "b.yaml", Stdio::piped());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            second.kill().unwrap();
            panic!("the second sidecar kept running on the same outbox");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = second.wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(74));
    let err = String::from_utf8_lossy(&second.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("coherence-sidecar:"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("shared-outbox"), "{err}");
    assert!(lines[0].contains("another process"), "{err}");
    assert!(
        get(second_port, "/status").is_none(),
        "the second never served"
    );

    // The first one goes on, its outbox untouched by the second.
    assert!(first.try_wait().unwrap().is_none(), "still running");
    let after = files(&outbox);
    for (name, bytes) in &before {
        let now = after.iter().find(|(n, _)| n == name);
        if let Some((_, now)) = now {
            assert!(now.starts_with(bytes), "{name} was rewritten");
        }
    }
    terminated(first);

    // Once the first has stopped, the directory is free again.
    let mut again = run_sidecar(dir.path(), "b.yaml", Stdio::null());
    serving(&mut again, second_port, "the restarted sidecar");
    terminated(again);
}
