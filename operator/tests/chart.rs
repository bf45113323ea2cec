//! The chart's PodMonitor of the injected sidecars (`monitoring.podMonitor`), rendered with
//! `helm template`: off by default; when on, it scrapes the port the operator gives the
//! sidecar container (`coh-metrics`) in every namespace.
//!
//! helm is found as `$HELM`, then `.tools/bin/helm` (`make tools`), then on `PATH`; without
//! one the tests fail and say how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::render;
use serde::Deserialize as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate lives in the workspace")
        .to_path_buf()
}

fn helm() -> PathBuf {
    if let Some(h) = std::env::var_os("HELM").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let local = repo().join(".tools/bin/helm");
    if local.is_file() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("helm");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "helm not found ($HELM, {}, PATH): run scripts/install-tools.sh (or `make tools`)",
        local.display()
    );
}

/// `helm template coherence charts/coherence -n coherence --set …`: the objects, or helm's
/// standard error.
fn template(sets: &[&str]) -> Result<Vec<Value>, String> {
    let tmp = std::env::temp_dir();
    let mut cmd = Command::new(helm());
    cmd.args(["template", "coherence"])
        .arg(repo().join("charts/coherence"))
        .args(["--namespace", "coherence"])
        .env("KUBECONFIG", "/dev/null")
        .env("HELM_CACHE_HOME", tmp.join("coherence-helm-cache"))
        .env("HELM_CONFIG_HOME", tmp.join("coherence-helm-config"))
        .env("HELM_DATA_HOME", tmp.join("coherence-helm-data"));
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

fn pod_monitors(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "PodMonitor")
        .collect()
}

#[test]
fn there_is_no_pod_monitor_by_default() {
    let objects = template(&[]).unwrap();
    assert!(objects.iter().any(|o| o["kind"] == "Deployment"));
    assert!(pod_monitors(&objects).is_empty());
}

#[test]
fn the_pod_monitor_scrapes_the_sidecar_metrics_port_in_every_namespace() {
    let objects = template(&[
        "monitoring.podMonitor.enabled=true",
        "monitoring.podMonitor.interval=15s",
        "monitoring.podMonitor.labels.release=kube-prometheus-stack",
    ])
    .unwrap();
    let found = pod_monitors(&objects);
    assert_eq!(found.len(), 1, "{found:?}");
    let m = found[0];
    assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(m["metadata"]["name"], "coherence-sidecars");
    assert_eq!(m["metadata"]["namespace"], "coherence");
    assert_eq!(
        m["metadata"]["labels"]["release"], "kube-prometheus-stack",
        "{m}"
    );
    assert_eq!(
        m["spec"],
        json!({
            "selector": {},
            "namespaceSelector": {"any": true},
            "podMetricsEndpoints": [{"port": "coh-metrics", "path": "/metrics", "interval": "15s"}]
        })
    );
    // The port the PodMonitor names is the one the webhook gives the sidecar container.
    assert_eq!(
        m["spec"]["podMetricsEndpoints"][0]["port"],
        render::METRICS_PORT_NAME
    );
}

#[test]
fn a_bad_pod_monitor_value_is_refused_naming_it() {
    let e = template(&[
        "monitoring.podMonitor.enabled=true",
        "monitoring.podMonitor.interval=often",
    ])
    .unwrap_err();
    assert!(e.contains("podMonitor") && e.contains("interval"), "{e}");
    let e = template(&["monitoring.podMonitor.enable=true"]).unwrap_err();
    assert!(e.contains("podMonitor") && e.contains("enable"), "{e}");
}
