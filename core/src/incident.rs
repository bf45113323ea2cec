//! Incident correlation: findings of one workload close in time become one incident with a
//! risk, a primary pattern, a narrative and a veto recommendation.
//!
//! Findings weaker than `min_finding_risk` (0.4) are left out. The rest are sorted by time; a finding joins the open incident of its workload when it is
//! at most `merge_gap` (5 minutes) after that incident's latest finding, otherwise it opens a new
//! one. A cascade whose phases follow each other therefore stays one incident, told in order.
//!
//! The incident's risk is the noisy-or over evidence families of the strongest finding in each,
//! `1 − Π_f (1 − max risk in family f)`, with the families outliers {spike, robust z},
//! variance {variance escalation, seizure}, growth {trend, fever} and amplification
//! {auto-immune}: independent evidence adds up, two views of the same evidence do not. It alerts above `alert_risk` (0.8).

use crate::detect::{Finding, FindingKind};
use crate::telemetry::format_ts_ms;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the cluster is advised to do about an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VetoAction {
    /// Reduce offered load until variance settles.
    ShedLoad,
    /// Open the circuit to dependencies so retries stop amplifying load.
    CircuitBreak,
    /// Hold the rollout: a sustained rise points at the new version.
    PauseRollout,
}

impl VetoAction {
    /// The kebab-case name used in JSON, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            VetoAction::ShedLoad => "shed-load",
            VetoAction::CircuitBreak => "circuit-break",
            VetoAction::PauseRollout => "pause-rollout",
        }
    }

    /// Why this action follows from its pattern.
    pub fn reason(self) -> &'static str {
        match self {
            VetoAction::ShedLoad => "reduce offered load until variance settles",
            VetoAction::CircuitBreak => {
                "open the circuit so retries stop amplifying load on dependencies"
            }
            VetoAction::PauseRollout => {
                "hold the rollout: a sustained rise points at the new version"
            }
        }
    }
}

/// The veto that follows from a pattern.
pub fn veto_for(kind: FindingKind) -> VetoAction {
    match kind {
        FindingKind::AutoImmune => VetoAction::CircuitBreak,
        FindingKind::Fever | FindingKind::Trend => VetoAction::PauseRollout,
        FindingKind::Seizure
        | FindingKind::VarianceEscalation
        | FindingKind::Spike
        | FindingKind::RobustZ => VetoAction::ShedLoad,
    }
}

/// The evidence family of a kind: kinds in one family look at the same thing.
pub fn family(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::Spike | FindingKind::RobustZ => "outliers",
        FindingKind::VarianceEscalation | FindingKind::Seizure => "variance",
        FindingKind::Trend | FindingKind::Fever => "growth",
        FindingKind::AutoImmune => "amplification",
    }
}

// Ties in risk are broken by how much the pattern says about what will happen next.
fn precedence(kind: FindingKind) -> u8 {
    match kind {
        FindingKind::AutoImmune => 7,
        FindingKind::Seizure => 6,
        FindingKind::Fever => 5,
        FindingKind::Trend => 4,
        FindingKind::VarianceEscalation => 3,
        FindingKind::RobustZ => 2,
        FindingKind::Spike => 1,
    }
}

/// Correlation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IncidentConfig {
    /// A finding at most this long after an incident's latest finding joins it.
    pub merge_gap_ms: i64,
    /// Incidents with a risk above this alert.
    pub alert_risk: f64,
    /// Incidents below this risk carry no veto recommendation.
    pub veto_min_risk: f64,
    /// Findings below this risk are counted but neither open nor join an incident.
    pub min_finding_risk: f64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            merge_gap_ms: 5 * 60_000,
            alert_risk: 0.8,
            veto_min_risk: 0.5,
            min_finding_risk: 0.4,
        }
    }
}

/// A finding with the workload and host it was found on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFinding {
    /// Workload name (`namespace/name` or a plain name).
    pub workload: String,
    /// Host (pod) name.
    pub host: String,
    /// The finding.
    pub finding: Finding,
}

/// An incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    /// Stable id: `<workload>@<start>`.
    pub id: String,
    /// Workload.
    pub workload: String,
    /// Hosts with findings, sorted.
    pub hosts: Vec<String>,
    /// First finding (RFC 3339).
    pub start: String,
    /// Latest finding (RFC 3339).
    pub end: String,
    /// First finding, ms.
    pub start_ms: i64,
    /// Latest finding, ms.
    pub end_ms: i64,
    /// Risk in [0, 1] (noisy-or over finding kinds).
    pub risk: f64,
    /// Primary pattern: the kind with the highest risk (ties by precedence).
    pub pattern: FindingKind,
    /// Every kind seen, in order of first appearance.
    pub patterns: Vec<FindingKind>,
    /// What happened, in words, with the numbers.
    pub narrative: String,
    /// Recommended action, when the risk is at least `vetoMinRisk`.
    pub veto: Option<VetoAction>,
    /// Why that action.
    pub veto_reason: Option<String>,
    /// Risk above `alertRisk`.
    pub alert: bool,
    /// Number of findings merged.
    pub findings: usize,
    /// The strongest finding of each (kind, signal), in order of first appearance.
    pub evidence: Vec<HostFinding>,
}

/// Merges findings (of any workloads, in any order) into incidents, ordered by start.
pub fn correlate(mut findings: Vec<HostFinding>, cfg: &IncidentConfig) -> Vec<Incident> {
    findings.retain(|f| f.finding.risk >= cfg.min_finding_risk);
    findings.sort_by(|a, b| {
        (a.finding.at_ms, &a.workload, &a.host, a.finding.kind).cmp(&(
            b.finding.at_ms,
            &b.workload,
            &b.host,
            b.finding.kind,
        ))
    });
    let mut open: BTreeMap<String, Vec<HostFinding>> = BTreeMap::new();
    let mut groups: Vec<Vec<HostFinding>> = Vec::new();
    for f in findings {
        let joins = open
            .get(&f.workload)
            .and_then(|g| g.last())
            .is_some_and(|last| f.finding.at_ms - last.finding.at_ms <= cfg.merge_gap_ms);
        if !joins {
            if let Some(done) = open.remove(&f.workload) {
                groups.push(done);
            }
        }
        open.entry(f.workload.clone()).or_default().push(f);
    }
    groups.extend(open.into_values());
    let mut incidents: Vec<Incident> = groups.into_iter().filter_map(|g| build(g, cfg)).collect();
    incidents.sort_by(|a, b| (a.start_ms, &a.workload).cmp(&(b.start_ms, &b.workload)));
    incidents
}

fn build(group: Vec<HostFinding>, cfg: &IncidentConfig) -> Option<Incident> {
    let first = group.first()?;
    let workload = first.workload.clone();
    let start_ms = first.finding.at_ms;
    let end_ms = group
        .iter()
        .map(|f| f.finding.at_ms)
        .max()
        .unwrap_or(start_ms);
    let hosts: BTreeSet<String> = group.iter().map(|f| f.host.clone()).collect();

    let mut max_by_kind: BTreeMap<FindingKind, f64> = BTreeMap::new();
    let mut patterns = Vec::new();
    let mut strongest: Vec<HostFinding> = Vec::new();
    for f in &group {
        let k = f.finding.kind;
        if !patterns.contains(&k) {
            patterns.push(k);
        }
        let m = max_by_kind.entry(k).or_insert(0.0);
        *m = m.max(f.finding.risk);
        match strongest
            .iter_mut()
            .find(|s| s.finding.kind == k && s.finding.signal == f.finding.signal)
        {
            Some(s) if s.finding.risk >= f.finding.risk => {}
            Some(s) => *s = f.clone(),
            None => strongest.push(f.clone()),
        }
    }
    let mut max_by_family: BTreeMap<&str, f64> = BTreeMap::new();
    for (k, r) in &max_by_kind {
        let m = max_by_family.entry(family(*k)).or_insert(0.0);
        *m = m.max(*r);
    }
    let risk = 1.0
        - max_by_family
            .values()
            .fold(1.0, |acc, r| acc * (1.0 - r.clamp(0.0, 1.0)));
    // Of the patterns severe on their own, the most consequential decides; otherwise the
    // strongest evidence does.
    let severe = max_by_kind
        .iter()
        .filter(|(_, r)| **r >= cfg.alert_risk)
        .max_by_key(|(k, _)| precedence(**k));
    let pattern = severe
        .or_else(|| {
            max_by_kind.iter().max_by(|a, b| {
                a.1.total_cmp(b.1)
                    .then(precedence(*a.0).cmp(&precedence(*b.0)))
            })
        })
        .map(|(k, _)| *k)?;
    let veto = (risk >= cfg.veto_min_risk).then(|| veto_for(pattern));
    let hosts: Vec<String> = hosts.into_iter().collect();
    let mut first_seen: BTreeMap<(FindingKind, &str), i64> = BTreeMap::new();
    for f in &group {
        first_seen
            .entry((f.finding.kind, f.finding.signal.as_str()))
            .or_insert(f.finding.at_ms);
    }
    let phrases: Vec<(FindingKind, String)> = strongest
        .iter()
        .map(|f| {
            let first = first_seen
                .get(&(f.finding.kind, f.finding.signal.as_str()))
                .copied();
            (
                f.finding.kind,
                phrase(&f.finding, first.unwrap_or(f.finding.at_ms)),
            )
        })
        .collect();
    let narrative = narrate(&workload, &hosts, start_ms, end_ms, risk, &phrases, veto);
    Some(Incident {
        id: format!("{workload}@{}", format_ts_ms(start_ms)),
        workload,
        hosts,
        start: format_ts_ms(start_ms),
        end: format_ts_ms(end_ms),
        start_ms,
        end_ms,
        risk,
        pattern,
        patterns,
        narrative,
        veto,
        veto_reason: veto.map(|v| v.reason().to_string()),
        alert: risk > cfg.alert_risk,
        findings: group.len(),
        evidence: strongest,
    })
}

// `f` is the strongest finding of its (kind, signal); `first_ms` is when that kind was first seen.
fn phrase(f: &Finding, first_ms: i64) -> String {
    let i = |k: &str| f.evidence.inputs.get(k).copied().unwrap_or(f64::NAN);
    let t = |k: &str| f.evidence.thresholds.get(k).copied().unwrap_or(f64::NAN);
    let at = format_ts_ms(first_ms);
    match f.kind {
        FindingKind::Seizure => format!(
            "compute seizure on cpu from {at} (variance up to ×{:.1} with the mean steady at {:.1})",
            i("ratio"),
            i("recentMean")
        ),
        FindingKind::Fever => format!(
            "memory fever from {at} (memory_mb growing up to {:.2} MiB/s, limit {})",
            i("velocityMbPerS"),
            t("allocVelocityMbS")
        ),
        FindingKind::AutoImmune => format!(
            "retry storm from {at} (requests_out/requests_in up to {:.1}×, was {:.1}×, limit {}×)",
            i("amplification"),
            i("baselineAmplification"),
            t("retryAmplification")
        ),
        FindingKind::Trend => format!(
            "{} rising up to {:.0}% across the window from {at}",
            f.signal,
            100.0 * i("change")
        ),
        FindingKind::VarianceEscalation => {
            format!("{} variance up to ×{:.1} from {at}", f.signal, i("ratio"))
        }
        FindingKind::Spike => format!(
            "{:.0} spikes on {} up to {:.1}σ from {at}",
            i("spikes"),
            f.signal,
            i("maxZ")
        ),
        FindingKind::RobustZ => format!(
            "{:.0} outliers on {} (robust z up to {:.1}) from {at}",
            i("outliers"),
            f.signal,
            i("maxZ")
        ),
    }
}

fn narrate(
    workload: &str,
    hosts: &[String],
    start_ms: i64,
    end_ms: i64,
    risk: f64,
    phrases: &[(FindingKind, String)],
    veto: Option<VetoAction>,
) -> String {
    // Patterns first (they name what is happening), then at most four supporting findings.
    let is_pattern = |k: &FindingKind| {
        matches!(
            k,
            FindingKind::Seizure | FindingKind::Fever | FindingKind::AutoImmune
        )
    };
    let pats: Vec<&str> = phrases
        .iter()
        .filter(|(k, _)| is_pattern(k))
        .map(|(_, p)| p.as_str())
        .collect();
    let sup: Vec<&str> = phrases
        .iter()
        .filter(|(k, _)| !is_pattern(k))
        .map(|(_, p)| p.as_str())
        .take(4)
        .collect();
    let mut s = format!("{workload} on {}: ", hosts.join(", "));
    if pats.is_empty() {
        s.push_str(&sup.join("; "));
    } else {
        s.push_str(&pats.join(", then "));
        if !sup.is_empty() {
            s.push_str(&format!("; alongside {}", sup.join("; ")));
        }
    }
    s.push_str(&format!(
        ". From {} to {}, risk {risk:.2}.",
        format_ts_ms(start_ms),
        format_ts_ms(end_ms)
    ));
    match veto {
        Some(v) => s.push_str(&format!(" Recommend {}: {}.", v.as_str(), v.reason())),
        None => s.push_str(" No veto: risk below the veto threshold."),
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::detect::Evidence;

    fn hf(workload: &str, host: &str, kind: FindingKind, at_min: i64, risk: f64) -> HostFinding {
        HostFinding {
            workload: workload.into(),
            host: host.into(),
            finding: Finding {
                kind,
                signal: "cpu".into(),
                at_ms: at_min * 60_000,
                risk,
                evidence: Evidence {
                    method: "m".into(),
                    window_start_ms: 0,
                    window_end_ms: at_min * 60_000,
                    n: 90,
                    inputs: [("ratio".to_string(), 9.0)].into(),
                    thresholds: BTreeMap::new(),
                },
            },
        }
    }

    #[test]
    fn merges_within_five_minutes_and_splits_beyond() {
        let cfg = IncidentConfig::default();
        let inc = correlate(
            vec![
                hf("api", "a", FindingKind::Seizure, 10, 1.0),
                hf("api", "a", FindingKind::Fever, 15, 0.9),
                hf("api", "b", FindingKind::AutoImmune, 20, 1.0),
                hf("api", "a", FindingKind::Spike, 26, 0.45),
                hf("api", "a", FindingKind::Spike, 40, 0.3),
                hf("db", "x", FindingKind::Trend, 12, 0.6),
            ],
            &cfg,
        );
        assert_eq!(inc.len(), 3);
        let cascade = &inc[0];
        assert_eq!(cascade.workload, "api");
        assert_eq!(
            cascade.patterns,
            vec![
                FindingKind::Seizure,
                FindingKind::Fever,
                FindingKind::AutoImmune
            ]
        );
        // Both severe: the retry storm takes precedence over the seizure.
        assert_eq!(cascade.pattern, FindingKind::AutoImmune);
        assert_eq!(cascade.veto, Some(VetoAction::CircuitBreak));
        assert_eq!(cascade.hosts, vec!["a".to_string(), "b".to_string()]);
        assert!(cascade.alert);
        assert!(
            cascade.narrative.contains("compute seizure"),
            "{}",
            cascade.narrative
        );
        assert!(
            cascade.narrative.contains("then memory fever"),
            "{}",
            cascade.narrative
        );
        assert_eq!(inc[1].workload, "db");
        assert_eq!(inc[1].veto, Some(VetoAction::PauseRollout));
        assert!(!inc[1].alert);
        // The lone spike 6 minutes later is its own incident, too weak for a veto; the one at
        // 0.3 is below the finding floor and forms none.
        assert_eq!(inc[2].findings, 1);
        assert_eq!(inc[2].veto, None);
        assert!((inc[2].risk - 0.45).abs() < 1e-12);
    }

    #[test]
    fn risk_is_noisy_or_over_kinds() {
        let inc = correlate(
            vec![
                hf("api", "a", FindingKind::Spike, 1, 0.5),
                hf("api", "a", FindingKind::Spike, 2, 0.6),
                hf("api", "a", FindingKind::Trend, 3, 0.5),
            ],
            &IncidentConfig::default(),
        );
        assert_eq!(inc.len(), 1);
        assert!((inc[0].risk - (1.0 - 0.4 * 0.5)).abs() < 1e-12);
        // Spike and robust z are one family: the stronger counts, they do not add up.
        let same = correlate(
            vec![
                hf("api", "a", FindingKind::Spike, 1, 0.6),
                hf("api", "a", FindingKind::RobustZ, 1, 0.7),
            ],
            &IncidentConfig::default(),
        );
        assert!((same[0].risk - 0.7).abs() < 1e-12);
        // Nothing severe on its own: the strongest evidence decides.
        assert_eq!(inc[0].pattern, FindingKind::Spike);
        let severe = correlate(
            vec![
                hf("api", "a", FindingKind::Seizure, 1, 1.0),
                hf("api", "a", FindingKind::AutoImmune, 2, 0.85),
            ],
            &IncidentConfig::default(),
        );
        assert_eq!(severe[0].pattern, FindingKind::AutoImmune);
        let weak_storm = correlate(
            vec![
                hf("api", "a", FindingKind::Seizure, 1, 1.0),
                hf("api", "a", FindingKind::AutoImmune, 2, 0.6),
            ],
            &IncidentConfig::default(),
        );
        assert_eq!(weak_storm[0].pattern, FindingKind::Seizure);
        assert!(correlate(Vec::new(), &IncidentConfig::default()).is_empty());
    }
}
