//! The binary: `crdgen` prints both CRDs (or writes them), `--help` names every command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_coherence-operator"))
}

#[test]
fn crdgen_prints_both_crds() {
    let out = bin().arg("crdgen").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<String> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            CustomResourceDefinition::deserialize(d)
                .unwrap()
                .metadata
                .name
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "coherencepolicies.coherence.dev",
            "finopsgates.coherence.dev"
        ]
    );
}

#[test]
fn crdgen_writes_the_checked_in_files() {
    let dir = std::env::temp_dir().join(format!("coherence-crdgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = bin()
        .args(["crdgen", "--out-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["coherencepolicy.yaml", "finopsgate.yaml"] {
        let written = std::fs::read_to_string(dir.join(f)).unwrap();
        let checked_in =
            std::fs::read_to_string(format!("{}/../crds/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(written, checked_in, "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_names_every_command() {
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in ["run", "crdgen", "inject"] {
        assert!(help.contains(cmd), "{help}");
    }
}
