//! `coherence certs gen` as a user runs it: the files, their modes and what the certificates say.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot run its binary should fail loudly

use std::path::Path;
use std::process::{Command, Output};
use x509_parser::extensions::GeneralName;

fn coherence(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(args)
        .output()
        .expect("run coherence")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The SANs of the first certificate of a PEM file, as `DNS:x`, `IP:x`, `URI:x`, and whether
/// it is for server and for client authentication.
fn inspect(path: &Path) -> (Vec<String>, bool, bool) {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::IPAddress(b) if b.len() == 4 => {
                        format!("IP:{}.{}.{}.{}", b[0], b[1], b[2], b[3])
                    }
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let eku = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
    (
        sans,
        eku.as_ref().is_some_and(|e| e.server_auth),
        eku.as_ref().is_some_and(|e| e.client_auth),
    )
}

#[test]
fn gen_writes_the_ca_the_verifier_the_clients_and_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let o = coherence(&[
        "certs",
        "gen",
        "--out",
        out.to_str().unwrap(),
        "--client",
        "a:shop",
        "--san",
        "coherence-verifier.coherence.svc",
        "--days",
        "30",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = String::from_utf8_lossy(&o.stdout);
    for name in [
        "ca.crt",
        "ca.key",
        "verifier.crt",
        "verifier.key",
        "client.crt",
        "client.key",
        "a.crt",
        "a.key",
    ] {
        let p = out.join(name);
        assert!(p.is_file(), "{name} missing");
        assert!(
            listed.contains(&format!("wrote {}", p.display())),
            "{listed}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            if name.ends_with(".key") {
                assert_eq!(mode, 0o600, "{name}");
            } else {
                assert_eq!(mode & 0o077, 0o044, "{name}: {mode:o}");
            }
        }
    }

    let (sans, server, client) = inspect(&out.join("a.crt"));
    assert_eq!(sans, vec!["URI:spiffe://coherence.dev/ns/shop/sa/a"]);
    assert!(client && !server);
    let (sans, _, client) = inspect(&out.join("client.crt"));
    assert_eq!(
        sans,
        vec!["URI:spiffe://coherence.dev/ns/*/sa/coherence-client"]
    );
    assert!(client);
    let (sans, server, client) = inspect(&out.join("verifier.crt"));
    assert_eq!(
        sans,
        vec![
            "DNS:localhost",
            "IP:127.0.0.1",
            "DNS:coherence-verifier.coherence.svc"
        ]
    );
    assert!(server && !client);
    // The keys are PKCS#8 PEM.
    let key = std::fs::read_to_string(out.join("a.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
}

#[test]
fn existing_files_are_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    assert!(coherence(&["certs", "gen", "--out", out]).status.success());
    let before = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let o = coherence(&["certs", "gen", "--out", out]);
    assert_eq!(o.status.code(), Some(73), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before);
    let o = coherence(&["certs", "gen", "--out", out, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before);
}

#[test]
fn a_bad_client_spec_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    for bad in ["nonamespace", "a:Shop", "ca:shop"] {
        let o = coherence(&[
            "certs",
            "gen",
            "--out",
            out.to_str().unwrap(),
            "--client",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(64), "{bad}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(&format!("--client {bad:?}")), "{e}");
        assert!(e.contains("expected NAME:NAMESPACE"), "{e}");
    }
    assert!(!out.exists(), "nothing is written on a usage error");
    let o = coherence(&[
        "certs",
        "gen",
        "--out",
        out.to_str().unwrap(),
        "--san",
        "a b",
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--san"), "{}", stderr(&o));
}
