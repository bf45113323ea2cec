//! The status of a policy, from what the reconciler observed: pod counts, the verifier's
//! workload summaries, and the previous status (so a condition's `lastTransitionTime` moves
//! only when its status does). No data is `Unknown`, never healthy.

use crate::crd::{CoherencePolicyStatus, VetoEvidence, VetoStatus};
use crate::verifier::WorkloadSummary;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types of a policy.
pub mod types {
    /// The policy is in effect: valid, every matched pod injected, signals arriving.
    pub const READY: &str = "Ready";
    /// Every matched pod runs the sidecar.
    pub const SIDECARS_INJECTED: &str = "SidecarsInjected";
    /// Signals arrive and no workload is at high drift risk.
    pub const SIGNALS_HEALTHY: &str = "SignalsHealthy";
    /// A veto holds.
    pub const VETOED: &str = "Vetoed";
}

/// What the reconciler saw of a policy this round.
#[derive(Debug, Clone)]
pub struct PolicyObservation<'a> {
    /// `metadata.generation` of the policy.
    pub generation: Option<i64>,
    /// Why the spec cannot be used, if it cannot.
    pub invalid: Option<String>,
    /// Pods the selector matches.
    pub matched_pods: u32,
    /// Matched pods running the sidecar.
    pub injected_pods: u32,
    /// The verifier's summaries of the selected workloads, or why they could not be read.
    pub workloads: Result<&'a [WorkloadSummary], String>,
    /// A veto is released this long after its incident's newest finding, ms.
    pub clear_after_ms: i64,
    /// Now.
    pub now: Timestamp,
}

/// A condition, keeping the previous `lastTransitionTime` when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

/// The veto that holds over `workloads` at `now`: every workload whose recommended incident
/// had a finding within `clear_after_ms`; the action of the riskiest.
pub fn active_veto(
    workloads: &[WorkloadSummary],
    now: Timestamp,
    clear_after_ms: i64,
) -> Option<VetoStatus> {
    let now_ms = now.as_millisecond();
    let mut evidence: Vec<(VetoEvidence, String, String)> = Vec::new();
    for w in workloads {
        let Some(v) = &w.veto else { continue };
        if v.action.is_empty() {
            continue;
        }
        let end_ms = w
            .incident_end_ms(&v.incident_id)
            .or_else(|| parse_time(&v.since).map(|t| t.as_millisecond()));
        let Some(end_ms) = end_ms else { continue };
        if now_ms.saturating_sub(end_ms) > clear_after_ms {
            continue;
        }
        let last_finding = Timestamp::from_millisecond(end_ms)
            .ok()
            .map(|t| t.to_string());
        evidence.push((
            VetoEvidence {
                workload: w.workload.clone(),
                incident_id: v.incident_id.clone(),
                pattern: v.pattern.clone(),
                risk: v.risk,
                action: v.action.clone(),
                last_finding,
            },
            v.reason.clone(),
            v.since.clone(),
        ));
    }
    evidence.sort_by(|a, b| {
        b.0.risk
            .total_cmp(&a.0.risk)
            .then_with(|| a.0.workload.cmp(&b.0.workload))
    });
    let (top, reason, since) = evidence.first()?.clone();
    let since = parse_time(&since).unwrap_or(now);
    Some(VetoStatus {
        action: top.action.clone(),
        reason,
        since: Time(since),
        evidence: evidence.into_iter().map(|e| e.0).collect(),
    })
}

fn risk_rank(r: &str) -> Option<u8> {
    match r {
        "low" => Some(0),
        "medium" => Some(1),
        "high" => Some(2),
        _ => None,
    }
}

/// The status of a policy.
pub fn policy_status(
    previous: Option<&CoherencePolicyStatus>,
    obs: &PolicyObservation<'_>,
) -> CoherencePolicyStatus {
    let prev_conditions: &[Condition] = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let cond = |t: &str, s: &str, r: &str, m: String| {
        condition(prev_conditions, t, s, r, m, obs.generation, obs.now)
    };
    let (m, i) = (obs.matched_pods, obs.injected_pods.min(obs.matched_pods));
    let injected = if m == 0 {
        cond(
            types::SIDECARS_INJECTED,
            "False",
            "NoMatchingPods",
            "the selector matches no pods".into(),
        )
    } else if i == m {
        cond(
            types::SIDECARS_INJECTED,
            "True",
            "AllInjected",
            format!("{i} of {m} pods run the sidecar"),
        )
    } else {
        cond(
            types::SIDECARS_INJECTED,
            "False",
            "NotAllInjected",
            format!("{i} of {m} pods run the sidecar"),
        )
    };

    let drift_risk;
    let last_report;
    let veto;
    let vetoed;
    let healthy = match &obs.workloads {
        Err(e) => {
            // The veto is what was last known: a verifier outage neither raises nor lifts it.
            veto = previous.and_then(|p| p.veto.clone());
            vetoed = prev_conditions
                .iter()
                .find(|c| c.type_ == types::VETOED)
                .cloned()
                .unwrap_or_else(|| {
                    cond(types::VETOED, "Unknown", "VerifierUnavailable", e.clone())
                });
            drift_risk = previous.and_then(|p| p.drift_risk.clone());
            last_report = previous.and_then(|p| p.last_report_time.clone());
            cond(
                types::SIGNALS_HEALTHY,
                "Unknown",
                "VerifierUnavailable",
                format!("cannot read the verifier: {e}"),
            )
        }
        Ok(ws) => {
            let with_data: Vec<&WorkloadSummary> =
                ws.iter().filter(|w| !w.pods.is_empty()).collect();
            last_report = with_data
                .iter()
                .filter_map(|w| parse_time(&w.updated_at))
                .max()
                .map(Time);
            let worst = with_data
                .iter()
                .filter_map(|w| risk_rank(&w.drift_risk).map(|r| (r, w)))
                .max_by_key(|(r, _)| *r);
            drift_risk = worst.map(|(_, w)| w.drift_risk.clone());
            let mut v = active_veto(ws, obs.now, obs.clear_after_ms);
            if let (Some(v), Some(p)) = (v.as_mut(), previous.and_then(|p| p.veto.as_ref()))
                && p.action == v.action
            {
                v.since = p.since.clone().min(v.since.clone());
            }
            vetoed = match &v {
                Some(v) => cond(
                    types::VETOED,
                    "True",
                    &reason_word(&v.action),
                    format!("{}: {}", v.action, v.reason),
                ),
                None => cond(
                    types::VETOED,
                    "False",
                    "NoVeto",
                    "no incident recommends an action".into(),
                ),
            };
            veto = v;
            match worst {
                _ if with_data.is_empty() => cond(
                    types::SIGNALS_HEALTHY,
                    "Unknown",
                    "NoData",
                    "the verifier has no reports of the selected workloads yet".into(),
                ),
                None => cond(
                    types::SIGNALS_HEALTHY,
                    "Unknown",
                    "InsufficientData",
                    "too few samples in every window to judge drift".into(),
                ),
                Some((2, w)) => cond(
                    types::SIGNALS_HEALTHY,
                    "False",
                    "HighDriftRisk",
                    format!("{} is at high drift risk", w.workload),
                ),
                Some((_, w)) => cond(
                    types::SIGNALS_HEALTHY,
                    "True",
                    "SignalsArriving",
                    format!("worst drift risk {} ({})", w.drift_risk, w.workload),
                ),
            }
        }
    };

    let ready = if let Some(e) = &obs.invalid {
        cond(types::READY, "False", "InvalidSpec", e.clone())
    } else if injected.status != "True" {
        cond(
            types::READY,
            "False",
            &injected.reason,
            injected.message.clone(),
        )
    } else if healthy.status == "Unknown" {
        cond(
            types::READY,
            "False",
            "AwaitingSignals",
            healthy.message.clone(),
        )
    } else {
        cond(
            types::READY,
            "True",
            "Ready",
            "sidecars injected and reporting".into(),
        )
    };
    CoherencePolicyStatus {
        conditions: vec![ready, injected, healthy, vetoed],
        matched_pods: m,
        injected_pods: i,
        drift_risk,
        last_report_time: last_report,
        veto,
        observed_generation: obs.generation,
    }
}

/// `pause-rollout` → `PauseRollout`: a condition reason is CamelCase letters and digits,
/// starting with a letter (anything else from the verifier becomes `Vetoed`).
pub fn reason_word(action: &str) -> String {
    let word: String = action
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    if word.starts_with(|c: char| c.is_ascii_alphabetic()) {
        word
    } else {
        "Vetoed".to_string()
    }
}
