//! FinOpsGate evaluation: pricing from requests or per replica, FTI and grade through
//! `coherence_core::finops`, UNKNOWN with too few samples, λ_effective, explain, conditions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::crd::{FinOpsGateSpec, FinOpsGateStatus};
use coherence_operator::finops::{self, GateObservation, PodRequests};
use coherence_operator::verifier::FinopsSample;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

fn spec(v: Value) -> FinOpsGateSpec {
    serde_json::from_value(v).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn samples(from: &str, n: usize, qps: f64, lat: f64) -> Vec<FinopsSample> {
    let t0 = ts(from).as_millisecond();
    (0..n)
        .map(|i| FinopsSample {
            at_ms: t0 + i as i64 * 60_000,
            qps,
            latency_p95_ms: lat,
            infra_cost_usd: 0.0,
        })
        .collect()
}

fn cond<'a>(s: &'a FinOpsGateStatus, t: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

fn explicit() -> FinOpsGateSpec {
    spec(json!({
        "targetRef": {"kind": "Deployment", "name": "web"},
        "cost": {"costPerReplicaHourUsd": 0.02},
        "baseline": {"qps": 100.0, "latencyP95Ms": 80.0, "costUsdPerHour": 0.02},
    }))
}

#[test]
fn requests_are_summed_and_priced() {
    let pod: PodSpec = serde_json::from_value(json!({
        "containers": [
            {"name": "web", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}},
            {"name": "log", "resources": {"requests": {"cpu": "0.25", "memory": "0.25Gi"}}}
        ],
        "initContainers": [
            {"name": "coherence-sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}},
            {"name": "migrate", "resources": {"requests": {"cpu": "4", "memory": "8Gi"}}}
        ]
    }))
    .unwrap();
    let r = finops::pod_requests(&pod).unwrap();
    assert!((r.cpu_cores - 0.55).abs() < 1e-12, "{r:?}");
    assert!(
        (r.memory_gib - (0.25 + 0.25 + 32.0 / 1024.0)).abs() < 1e-12,
        "{r:?}"
    );
    let s = spec(json!({
        "targetRef": {"kind": "StatefulSet", "name": "db"},
        "cost": {"cpuHourUsd": 0.04, "memoryGibHourUsd": 0.005},
        "baseline": {"window": "1h"},
    }));
    let (cost, src) = finops::replica_cost(&s, r).unwrap();
    assert!((cost - (0.04 * 0.55 + 0.005 * r.memory_gib)).abs() < 1e-12);
    assert_eq!(src, "requests");
    assert_eq!(finops::parse_quantity("1e3"), Some(1000.0));
    assert_eq!(finops::parse_quantity("2k"), Some(2000.0));
    assert_eq!(finops::parse_quantity("abc"), None);
    let bad: PodSpec = serde_json::from_value(
        json!({"containers": [{"name": "x", "resources": {"requests": {"cpu": "lots"}}}]}),
    )
    .unwrap();
    assert!(
        finops::pod_requests(&bad)
            .unwrap_err()
            .to_string()
            .contains("resources.requests.cpu")
    );
}

#[test]
fn explicit_baseline_grades_and_explains() {
    // Same cost, qps down 10 %: FTI = 1 / 0.9 ≈ 1.111 > warn: FAIL.
    let xs = samples("2026-11-21T10:00:00Z", 12, 90.0, 80.0);
    let o = GateObservation {
        generation: Some(2),
        target: Ok(PodRequests::default()),
        samples: Ok(&xs),
        last_rollout: Some(ts("2026-11-19T10:00:00Z")),
        now: ts("2026-11-21T10:00:00Z"),
    };
    let s = finops::evaluate(&explicit(), None, &o);
    assert_eq!(s.grade.as_deref(), Some("FAIL"));
    assert!((s.fti.unwrap() - 100.0 / 90.0).abs() < 1e-9);
    assert_eq!(s.samples, 12);
    assert!((s.lambda_effective.unwrap() - 0.1 * (-0.05f64 * 2.0).exp()).abs() < 1e-12);
    assert_eq!(cond(&s, "Passed"), ("False", "Fail"));
    assert_eq!(cond(&s, "Ready"), ("True", "Evaluated"));
    let e = s.explain.as_ref().unwrap();
    assert_eq!(e.baseline.source, "explicit");
    assert_eq!(e.medians.qps, Some(90.0));
    assert_eq!(e.inputs.cost_source, "costPerReplicaHourUsd");
    assert_eq!(e.inputs.days_since_change, Some(2.0));
    assert!(e.formula.contains("FTI = (cost/cost0)"));
    assert_eq!(e.grades.get("FAIL"), Some(&12));
    assert!(finops::vetoes(
        &spec(json!({"targetRef": {"kind": "Deployment", "name": "web"},
        "cost": {"costPerReplicaHourUsd": 0.02}, "baseline": {"window": "1h"}, "enforce": true})),
        &s
    ));
    assert!(
        !finops::vetoes(&explicit(), &s),
        "enforce defaults to false"
    );
    // Same numbers as the baseline: FTI 1.0, OK, Passed.
    let ok = samples("2026-11-21T10:00:00Z", 12, 100.0, 80.0);
    let s = finops::evaluate(
        &explicit(),
        None,
        &GateObservation {
            samples: Ok(&ok),
            ..o.clone()
        },
    );
    assert_eq!(
        (s.grade.as_deref(), cond(&s, "Passed")),
        (Some("OK"), ("True", "Ok"))
    );
    // A status as JSON keeps its fields through the CRD type.
    let v = serde_json::to_value(&s).unwrap();
    let back: FinOpsGateStatus = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
}

#[test]
fn too_few_samples_is_unknown_never_ok() {
    let xs = samples("2026-11-21T10:00:00Z", 9, 100.0, 80.0);
    let o = GateObservation {
        generation: Some(1),
        target: Ok(PodRequests::default()),
        samples: Ok(&xs),
        last_rollout: None,
        now: ts("2026-11-21T11:00:00Z"),
    };
    let s = finops::evaluate(&explicit(), None, &o);
    assert_eq!(s.grade.as_deref(), Some("UNKNOWN"));
    assert_eq!(s.fti, None);
    assert_eq!(cond(&s, "Passed"), ("Unknown", "InsufficientSamples"));
    assert_eq!(s.lambda_effective, None, "no rollout time, no λ");
    let gone = finops::evaluate(
        &explicit(),
        None,
        &GateObservation {
            target: Err("deployment web not found".into()),
            ..o.clone()
        },
    );
    assert_eq!(
        (cond(&gone, "Ready"), gone.grade.as_deref()),
        (("False", "TargetUnavailable"), Some("UNKNOWN"))
    );
    let down = finops::evaluate(
        &explicit(),
        None,
        &GateObservation {
            samples: Err("timeout".into()),
            ..o
        },
    );
    assert_eq!(cond(&down, "Passed"), ("Unknown", "VerifierUnavailable"));
}

#[test]
fn window_baseline_compares_after_the_rollout_with_before() {
    let s = spec(json!({
        "targetRef": {"kind": "Deployment", "name": "web"},
        "cost": {"cpuHourUsd": 0.04, "memoryGibHourUsd": 0.005},
        "baseline": {"window": "1h"},
        "thresholds": {"ok": 1.0, "warn": 1.2},
    }));
    let rollout = ts("2026-11-21T10:00:00Z");
    let mut xs = samples("2026-11-21T09:00:00Z", 30, 100.0, 80.0); // the hour before
    xs.extend(samples("2026-11-21T08:00:00Z", 5, 10.0, 500.0)); // older than the window: ignored
    xs.extend(samples("2026-11-21T10:00:00Z", 20, 100.0, 88.0)); // after: latency +10 %
    let o = GateObservation {
        generation: Some(1),
        target: Ok(PodRequests {
            cpu_cores: 0.5,
            memory_gib: 1.0,
        }),
        samples: Ok(&xs),
        last_rollout: Some(rollout),
        now: ts("2026-11-21T10:30:00Z"),
    };
    let st = finops::evaluate(&s, None, &o);
    assert_eq!(st.samples, 20);
    assert!((st.fti.unwrap() - 1.1).abs() < 1e-9, "{:?}", st.fti);
    assert_eq!(st.grade.as_deref(), Some("WARN"));
    assert_eq!(cond(&st, "Passed"), ("True", "Warn"));
    let e = st.explain.unwrap();
    assert_eq!(
        (e.baseline.source.as_str(), e.baseline.samples),
        ("window", Some(30))
    );
    assert_eq!(
        (e.baseline.qps, e.baseline.latency_p95_ms),
        (Some(100.0), Some(80.0))
    );
    assert_eq!(e.inputs.samples_received, 55);
    assert_eq!(
        e.inputs.window_start.as_deref(),
        Some("2026-11-21T10:00:00Z")
    );
    // Without a known rollout there is no "before": Unknown, not a guess.
    let st = finops::evaluate(
        &s,
        None,
        &GateObservation {
            last_rollout: None,
            ..o
        },
    );
    assert_eq!(cond(&st, "Passed"), ("Unknown", "BaselineUnavailable"));
    assert_eq!(st.grade.as_deref(), Some("UNKNOWN"));
}
