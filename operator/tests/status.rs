//! Policy status from observations: conditions, drift risk, veto, transition times; and the
//! veto's effects and pause plan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::crd::{CoherencePolicyStatus, VetoMode};
use coherence_operator::status::{PolicyObservation, policy_status};
use coherence_operator::verifier::WorkloadSummary;
use coherence_operator::veto::{self, DeploymentState};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

const MIN: i64 = 60_000;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A verifier summary as `verifier/src/views.rs` writes it.
fn summary(workload: &str, risk: &str, veto: Option<(&str, i64)>) -> WorkloadSummary {
    let end_ms = ts("2026-11-21T12:00:00Z").as_millisecond();
    let v: Value = json!({
        "namespace": "demo", "workload": workload, "driftRisk": risk, "driftRiskLevel": 2,
        "updatedAt": "2026-11-21T12:00:30Z",
        "pods": [{"pod": format!("{workload}-0"), "epoch": 7, "reportId": "ab", "receivedAt": "2026-11-21T12:00:30Z"}],
        "signals": [], "incidents": veto.map(|(_, ago)| vec![json!({
            "id": format!("demo/{workload}@x"), "workload": workload, "hosts": [], "start": "2026-11-21T11:50:00Z",
            "end": "", "startMs": 0, "endMs": end_ms - ago * MIN, "risk": 0.8})]).unwrap_or_default(),
        "veto": veto.map(|(a, _)| json!({
            "action": a, "reason": "hold the rollout", "since": "2026-11-21T11:50:00Z",
            "risk": if workload == "api" { 0.9 } else { 0.7 }, "incidentId": format!("demo/{workload}@x"), "pattern": "fever"})),
        "finops": {"samples": 0, "recent": [], "report": null},
        "pcs": {"accepted": 1, "escalated": 0, "rejected": 0, "last": null},
        "meta": {}
    });
    WorkloadSummary::from_json(&v).unwrap()
}

fn obs<'a>(
    m: u32,
    i: u32,
    ws: Result<&'a [WorkloadSummary], String>,
    now: &str,
) -> PolicyObservation<'a> {
    PolicyObservation {
        generation: Some(4),
        invalid: None,
        matched_pods: m,
        injected_pods: i,
        workloads: ws,
        clear_after_ms: 15 * MIN,
        now: ts(now),
    }
}

fn cond<'a>(s: &'a CoherencePolicyStatus, t: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn no_data_is_unknown_never_healthy() {
    let s = policy_status(None, &obs(2, 2, Ok(&[]), "2026-11-21T12:01:00Z"));
    assert_eq!(cond(&s, "SidecarsInjected"), ("True", "AllInjected"));
    assert_eq!(cond(&s, "SignalsHealthy"), ("Unknown", "NoData"));
    assert_eq!(cond(&s, "Ready"), ("False", "AwaitingSignals"));
    assert_eq!(cond(&s, "Vetoed"), ("False", "NoVeto"));
    assert_eq!(
        (s.drift_risk.as_deref(), s.last_report_time.as_ref()),
        (None, None)
    );
    let insufficient = [summary("web", "insufficient_data", None)];
    let s = policy_status(None, &obs(2, 2, Ok(&insufficient), "2026-11-21T12:01:00Z"));
    assert_eq!(cond(&s, "SignalsHealthy"), ("Unknown", "InsufficientData"));
    assert_eq!(cond(&s, "Ready").0, "False");
    let down = policy_status(
        None,
        &obs(2, 2, Err("connect refused".into()), "2026-11-21T12:01:00Z"),
    );
    assert_eq!(
        cond(&down, "SignalsHealthy"),
        ("Unknown", "VerifierUnavailable")
    );
    assert_eq!(cond(&down, "Vetoed").0, "Unknown");
    assert_eq!(cond(&down, "Ready").0, "False");
    assert_eq!(s.observed_generation, Some(4));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(4))
    );
}

#[test]
fn counts_risk_and_ready() {
    let ws = [summary("web", "medium", None), summary("api", "low", None)];
    let s = policy_status(None, &obs(3, 3, Ok(&ws), "2026-11-21T12:01:00Z"));
    assert_eq!((s.matched_pods, s.injected_pods), (3, 3));
    assert_eq!(s.drift_risk.as_deref(), Some("medium"));
    assert_eq!(
        s.last_report_time.as_ref().unwrap().0,
        ts("2026-11-21T12:00:30Z")
    );
    assert_eq!(cond(&s, "SignalsHealthy"), ("True", "SignalsArriving"));
    assert_eq!(cond(&s, "Ready"), ("True", "Ready"));
    let partial = policy_status(None, &obs(3, 1, Ok(&ws), "2026-11-21T12:01:00Z"));
    assert_eq!(
        cond(&partial, "SidecarsInjected"),
        ("False", "NotAllInjected")
    );
    assert_eq!(cond(&partial, "Ready"), ("False", "NotAllInjected"));
    let none = policy_status(None, &obs(0, 0, Ok(&ws), "2026-11-21T12:01:00Z"));
    assert_eq!(cond(&none, "SidecarsInjected"), ("False", "NoMatchingPods"));
    let high = [summary("web", "high", None)];
    let s = policy_status(None, &obs(1, 1, Ok(&high), "2026-11-21T12:01:00Z"));
    assert_eq!(cond(&s, "SignalsHealthy"), ("False", "HighDriftRisk"));
    let mut o = obs(1, 1, Ok(&high), "2026-11-21T12:01:00Z");
    o.invalid = Some("spec.windows[0]: bad".into());
    assert_eq!(
        cond(&policy_status(None, &o), "Ready"),
        ("False", "InvalidSpec")
    );
}

#[test]
fn transition_times_move_only_when_the_status_does() {
    let ws = [summary("web", "low", None)];
    let first = policy_status(None, &obs(1, 1, Ok(&ws), "2026-11-21T12:01:00Z"));
    let second = policy_status(Some(&first), &obs(1, 1, Ok(&ws), "2026-11-21T12:05:00Z"));
    assert_eq!(
        first, second,
        "nothing changed: the same status, byte for byte"
    );
    let high = [summary("web", "high", None)];
    let third = policy_status(Some(&second), &obs(1, 1, Ok(&high), "2026-11-21T12:09:00Z"));
    let t = |s: &CoherencePolicyStatus, ty: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .unwrap()
            .last_transition_time
            .0
    };
    assert_eq!(t(&third, "SignalsHealthy"), ts("2026-11-21T12:09:00Z"));
    assert_eq!(t(&third, "SidecarsInjected"), ts("2026-11-21T12:01:00Z"));
    assert_eq!(
        t(&third, "Ready"),
        ts("2026-11-21T12:01:00Z"),
        "Ready stayed True"
    );
}

#[test]
fn veto_holds_while_recent_and_names_its_evidence() {
    let ws = [
        summary("web", "high", Some(("pause-rollout", 2))),
        summary("api", "high", Some(("circuit-break", 5))),
        summary("old", "low", Some(("shed-load", 60))),
    ];
    let s = policy_status(None, &obs(3, 3, Ok(&ws), "2026-11-21T12:01:00Z"));
    let v = s.veto.as_ref().unwrap();
    assert_eq!(v.action, "circuit-break", "the riskiest workload's action");
    assert_eq!(v.since.0, ts("2026-11-21T11:50:00Z"));
    let names: Vec<_> = v.evidence.iter().map(|e| e.workload.as_str()).collect();
    assert_eq!(
        names,
        ["api", "web"],
        "the incident an hour old no longer holds"
    );
    assert_eq!(v.evidence[1].incident_id, "demo/web@x");
    assert_eq!(
        v.evidence[1].last_finding.as_deref(),
        Some("2026-11-21T11:58:00Z")
    );
    assert_eq!(cond(&s, "Vetoed"), ("True", "CircuitBreak"));
    // The status keeps every field through the CRD's JSON.
    let v = serde_json::to_value(&s).unwrap();
    let back: CoherencePolicyStatus = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
    assert_eq!(v["veto"]["since"], "2026-11-21T11:50:00Z");
    assert_eq!(
        v["conditions"][3]["lastTransitionTime"],
        "2026-11-21T12:01:00Z"
    );
    // The verifier going away neither raises nor lifts the veto.
    let down = policy_status(
        Some(&s),
        &obs(3, 3, Err("timeout".into()), "2026-11-21T12:02:00Z"),
    );
    assert_eq!(down.veto, s.veto);
    assert_eq!(cond(&down, "Vetoed"), ("True", "CircuitBreak"));
    // Later, with no new findings, it clears.
    let later = policy_status(Some(&s), &obs(3, 3, Ok(&ws), "2026-11-21T12:30:00Z"));
    assert_eq!(later.veto, None);
    assert_eq!(cond(&later, "Vetoed"), ("False", "NoVeto"));
}

#[test]
fn veto_modes_and_the_pause_plan() {
    assert_eq!(
        veto::effects(VetoMode::Shadow),
        veto::Effects {
            event: false,
            metric: false,
            pause: false
        }
    );
    assert_eq!(
        veto::effects(VetoMode::Recommend),
        veto::Effects {
            event: true,
            metric: true,
            pause: false
        }
    );
    assert!(veto::effects(VetoMode::Enforce).pause);
    let d = |name: &str, paused: bool, by: Option<&str>, vetoed: bool| DeploymentState {
        name: name.into(),
        paused,
        paused_by: by.map(str::to_string),
        vetoed,
    };
    let fleet = [
        d("a", false, None, true),          // vetoed, running: pause
        d("b", true, Some("web"), true),    // already ours: leave
        d("c", true, Some("web"), false),   // ours, veto gone: release
        d("e", true, None, true),           // paused by a person: leave
        d("f", true, Some("other"), false), // another policy's: leave
        d("g", false, None, false),         // nothing to do
    ];
    let plan = veto::plan("web", true, &fleet);
    let summary: Vec<_> = plan
        .iter()
        .map(|c| (c.deployment.as_str(), c.pause))
        .collect();
    assert_eq!(summary, [("a", true), ("c", false)]);
    assert_eq!(
        plan[0].patch,
        json!({"metadata": {"annotations": {"coherence.dev/paused-by": "web"}}, "spec": {"paused": true}})
    );
    assert_eq!(
        plan[1].patch,
        json!({"metadata": {"annotations": {"coherence.dev/paused-by": null}}, "spec": {"paused": false}})
    );
    // Not enforcing (another mode, or the policy is being deleted): release only ours.
    let release: Vec<_> = veto::plan("web", false, &fleet)
        .into_iter()
        .map(|c| (c.deployment, c.pause))
        .collect();
    assert_eq!(
        release,
        [("b".to_string(), false), ("c".to_string(), false)]
    );
    assert_eq!(veto::gate_owner("web"), "finopsgate/web");
}

#[test]
fn condition_reasons_are_valid_words() {
    use coherence_operator::status::reason_word;
    assert_eq!(reason_word("pause-rollout"), "PauseRollout");
    assert_eq!(reason_word("shed_load"), "ShedLoad");
    assert_eq!(reason_word("a.b c"), "ABC");
    assert_eq!(reason_word("42-x"), "Vetoed");
    assert_eq!(reason_word(""), "Vetoed");
}
