//! `coherence-operator inject`: a multi-document manifest in, the same manifest with the
//! sidecar in every selected pod template out, as the webhook would inject it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coherence-operator"))
        .args(args)
        .output()
        .unwrap()
}

fn inject(manifest: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coherence-operator"))
        .arg("inject")
        .arg("-f")
        .arg(manifest)
        .arg("--policy")
        .arg(data("policy-web.yaml"))
        .args(extra)
        .output()
        .unwrap()
}

fn documents(yaml: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(yaml).unwrap();
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn containers_of(template: &Value, list: &str) -> Vec<String> {
    template["spec"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_selected_template_is_injected_and_the_rest_passes_through() {
    let out = inject(&data("manifest.yaml"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let docs = documents(&out.stdout);
    let input = documents(&std::fs::read(data("manifest.yaml")).unwrap());
    assert_eq!(docs.len(), 6);

    let deploy = &docs[0]["spec"]["template"];
    assert_eq!(
        containers_of(deploy, "initContainers"),
        ["coherence-sidecar"]
    );
    assert_eq!(containers_of(deploy, "containers"), ["web"]);
    assert_eq!(
        deploy["metadata"]["annotations"]["coherence.dev/injected"],
        "web"
    );
    let env = deploy["spec"]["initContainers"][0]["env"]
        .as_array()
        .unwrap();
    let wl = env.iter().find(|e| e["name"] == "WORKLOAD_NAME").unwrap();
    assert_eq!(wl["value"], "web");
    // Everything but the template is the input.
    let mut d = docs[0].clone();
    let mut i = input[0].clone();
    d["spec"]["template"] = Value::Null;
    i["spec"]["template"] = Value::Null;
    assert_eq!(d, i);

    assert_eq!(docs[1], input[1], "a Service passes through unchanged");

    let sts = &docs[2]["spec"]["template"];
    assert_eq!(containers_of(sts, "initContainers"), ["coherence-sidecar"]);
    let env = sts["spec"]["initContainers"][0]["env"].as_array().unwrap();
    let wl = env.iter().find(|e| e["name"] == "WORKLOAD_NAME").unwrap();
    assert_eq!(wl["value"], "web", "the app label names the workload");

    assert_eq!(docs[3], input[3], "the DaemonSet's pods are not selected");
    assert_eq!(
        containers_of(&docs[4]["spec"]["template"], "initContainers"),
        ["coherence-sidecar"]
    );
    assert_eq!(docs[5], input[5], "the opted-out Pod is unchanged");

    for line in [
        "document 1 (Deployment web): injected (policy web)",
        "document 2 (Service web): passed through",
        "document 3 (StatefulSet db): injected (policy web)",
        "document 4 (DaemonSet agent): skipped: no CoherencePolicy selects the pod",
        "document 5 (Job backfill): injected (policy web)",
        "document 6 (Pod debug): skipped: opted out",
    ] {
        assert!(stderr.contains(line), "{line:?} not in\n{stderr}");
    }

    // Injecting the output again changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.yaml");
    std::fs::write(&once, &out.stdout).unwrap();
    let twice = inject(&once, &[]);
    assert!(twice.status.success());
    assert_eq!(documents(&twice.stdout), docs);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("skipped: already injected"));
}

#[test]
fn plain_containers_and_another_image() {
    let out = inject(
        &data("manifest.yaml"),
        &[
            "--native-sidecars=false",
            "--image",
            "registry.local/sidecar:dev",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&out.stdout);
    let t = &docs[0]["spec"]["template"];
    assert_eq!(containers_of(t, "containers"), ["web", "coherence-sidecar"]);
    assert!(t["spec"].get("initContainers").is_none());
    assert_eq!(
        t["spec"]["containers"][1]["image"],
        "registry.local/sidecar:dev"
    );
}

#[test]
fn bad_input_names_the_document_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: {name: web}\n",
    )
    .unwrap();
    let out = inject(&bad, &[]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("document 2 (Deployment web): spec.template.spec.containers"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let no_template = dir.path().join("nt.yaml");
    std::fs::write(
        &no_template,
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {}\n",
    )
    .unwrap();
    let out = inject(&no_template, &[]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("document 1 (Job j): spec.template: expected a pod template"),
        "{err}"
    );

    // The policy is an argument: 64.
    let out = run(&[
        "inject",
        "-f",
        data("manifest.yaml").to_str().unwrap(),
        "--policy",
        data("manifest.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a CoherencePolicy"));
    let out = run(&[
        "inject",
        "-f",
        "/nonexistent/m.yaml",
        "--policy",
        data("policy-web.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/m.yaml: cannot read"));
}
