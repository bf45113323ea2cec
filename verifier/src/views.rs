//! What the verifier knows of each workload, built from the records it applied first: the
//! latest window statistics of every pod, drift risk, detector findings correlated into
//! incidents, FinOps samples and PCS counts, and a bounded history of what each applied report
//! changed (the dashboard's time series). `GET /v1/workloads` serves it; a restart rebuilds it
//! from the WAL.

use coherence_core::finops::{self, Accumulator, Baseline, LambdaParams, Thresholds};
use coherence_core::incident::{self, HostFinding, Incident, IncidentConfig};
use coherence_core::pcs::{Outcome, Pcs};
use coherence_core::report::{FinopsSample, SignalReport, WindowReport};
use coherence_core::stats::median;
use coherence_core::window::DriftRisk;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Findings kept per workload (oldest dropped first).
pub const MAX_FINDINGS: usize = 10_000;
/// FinOps samples kept per workload.
pub const MAX_FINOPS: usize = 1_440;
/// FinOps samples needed before a grade other than UNKNOWN.
pub const MIN_FINOPS_SAMPLES: u64 = 10;
/// History points kept per workload (a ring buffer: the oldest is dropped first).
pub const HISTORY_POINTS: usize = 300;
/// Window statistics kept per history point (the report's first ones, in its order).
pub const HISTORY_WINDOWS: usize = 16;

/// `(namespace, workload)`.
pub type WorkloadKey = (String, String);

/// Splits `<namespace>/<workload>/<pod>`.
pub fn split_shard(shard_id: &str) -> Option<(&str, &str, &str)> {
    let mut it = shard_id.split('/');
    let (ns, w, p) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ns.is_empty() || w.is_empty() || p.is_empty() {
        return None;
    }
    Some((ns, w, p))
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodView {
    pod: String,
    epoch: u64,
    report_id: String,
    received_ms: i64,
    windows: Vec<WindowReport>,
}

/// PCS verdict counts and the latest accepted summary of a workload.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PcsView {
    /// First-applied records accepted (200).
    pub accepted: u64,
    /// First-applied records escalated (202).
    pub escalated: u64,
    /// Records rejected (400/401/403) that named this workload.
    pub rejected: u64,
    /// The newest PCS applied.
    pub last: Option<LastPcs>,
}

/// The newest PCS of a workload, as `GET /v1/workloads/{namespace}/{workload}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LastPcs {
    /// D̂ as claimed.
    #[serde(rename = "D_hat")]
    pub d_hat: f64,
    /// Budget as claimed.
    pub budget: f64,
    /// coh★ as claimed.
    pub coh_star: f64,
    /// Window number.
    pub epoch: u64,
    /// Accepted or escalated.
    pub outcome: Outcome,
    /// The record's id.
    pub pcs_id: String,
    /// The pod part of its `shard_id`.
    pub pod: String,
    /// Compression ratio as claimed.
    pub r: f64,
    /// When it was received (RFC 3339 on the wire).
    #[serde(rename = "receivedAt", serialize_with = "rfc3339_field")]
    pub received_ms: i64,
    /// Regime as claimed.
    pub regime: coherence_core::signals::Regime,
}

fn rfc3339_field<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

/// One point of a workload's history: the state right after one signal report was applied.
#[derive(Debug, Clone)]
struct HistoryPoint {
    at_ms: i64,
    pod: String,
    epoch: u64,
    report_id: String,
    drift_risk: DriftRisk,
    windows: Vec<WindowReport>,
    // Mean FTI of this report's FinOps samples against the baseline in force then.
    fti: Option<f64>,
    fti_avg: Option<f64>,
    grade: Option<finops::Grade>,
    finops_samples: usize,
    pcs: [u64; 3],
    incidents: usize,
}

/// One workload.
#[derive(Debug, Clone, Default)]
pub struct WorkloadView {
    pods: BTreeMap<String, PodView>,
    findings: VecDeque<HostFinding>,
    finops: VecDeque<FinopsSample>,
    pcs: PcsView,
    incident_ids: BTreeSet<String>,
    reports: u64,
    updated_ms: i64,
    history: VecDeque<HistoryPoint>,
}

/// Every workload.
#[derive(Debug, Default)]
pub struct Views {
    workloads: BTreeMap<WorkloadKey, WorkloadView>,
    incident_cfg: IncidentConfig,
}

/// What applying a report changed, for the metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Incidents that appeared, by pattern.
    pub new_incidents: Vec<&'static str>,
    /// The workload's drift risk level after the report (0 low … 2 high), if known.
    pub drift_level: Option<u8>,
    /// `(signal, window, volatilityIndex)`: the worst over pods of the latest windows.
    pub volatility: Vec<(String, String, f64)>,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl WorkloadView {
    fn worst_risk(&self) -> DriftRisk {
        let mut worst: Option<DriftRisk> = None;
        for p in self.pods.values() {
            for w in &p.windows {
                if w.drift_risk != DriftRisk::InsufficientData {
                    worst = Some(worst.map_or(w.drift_risk, |x| x.max(w.drift_risk)));
                }
            }
        }
        worst.unwrap_or(DriftRisk::InsufficientData)
    }

    fn volatility(&self) -> Vec<(String, String, f64)> {
        let mut m: BTreeMap<(String, String), f64> = BTreeMap::new();
        for p in self.pods.values() {
            for w in &p.windows {
                let e = m
                    .entry((w.signal.clone(), w.window.to_string()))
                    .or_insert(0.0);
                *e = e.max(w.volatility_index);
            }
        }
        m.into_iter().map(|((s, w), v)| (s, w, v)).collect()
    }

    fn incidents(&self, cfg: &IncidentConfig) -> Vec<Incident> {
        incident::correlate(self.findings.iter().cloned().collect(), cfg)
    }

    fn finops_baseline(&self) -> Option<Baseline> {
        if self.finops.is_empty() {
            return None;
        }
        let col = |f: fn(&FinopsSample) -> f64| -> Vec<f64> { self.finops.iter().map(f).collect() };
        Some(Baseline {
            qps: median(&col(|s| s.qps))?,
            latency_p95_ms: median(&col(|s| s.latency_p95_ms))?,
            infra_cost_usd: median(&col(|s| s.infra_cost_usd))?,
        })
    }

    fn finops_report(&self) -> Option<finops::Report> {
        let baseline = self.finops_baseline()?;
        let mut acc = Accumulator::new(baseline, Thresholds::default()).ok()?;
        for s in &self.finops {
            let _ = acc.push(&finops::Sample {
                qps: s.qps,
                latency_p95_ms: s.latency_p95_ms,
                infra_cost_usd: s.infra_cost_usd,
            });
        }
        Some(acc.finish(&LambdaParams::default(), 0.0, MIN_FINOPS_SAMPLES))
    }
}

impl WorkloadView {
    // What the dashboard plots for one applied report. FinOps figures are computed only when
    // the report brought samples (they change only then); otherwise the previous point's stay.
    fn history_point(&self, r: &SignalReport, pod: &str, received_ms: i64) -> HistoryPoint {
        let (fti, fti_avg, grade) = if r.finops.is_empty() {
            self.history
                .back()
                .map_or((None, None, None), |p| (None, p.fti_avg, p.grade))
        } else {
            let own = self.finops_baseline().map(|b| {
                let f: Vec<f64> = r
                    .finops
                    .iter()
                    .filter_map(|s| {
                        finops::fti(
                            &finops::Sample {
                                qps: s.qps,
                                latency_p95_ms: s.latency_p95_ms,
                                infra_cost_usd: s.infra_cost_usd,
                            },
                            &b,
                        )
                        .ok()
                    })
                    .collect();
                (!f.is_empty()).then(|| f.iter().sum::<f64>() / f.len() as f64)
            });
            let rep = self.finops_report();
            (
                own.flatten(),
                rep.as_ref().and_then(|x| x.fti_avg),
                rep.map(|x| x.grade),
            )
        };
        HistoryPoint {
            at_ms: received_ms,
            pod: pod.to_owned(),
            epoch: r.epoch,
            report_id: r.report_id.clone(),
            drift_risk: self.worst_risk(),
            windows: r.windows.iter().take(HISTORY_WINDOWS).cloned().collect(),
            fti,
            fti_avg,
            grade,
            finops_samples: self.finops.len(),
            pcs: [self.pcs.accepted, self.pcs.escalated, self.pcs.rejected],
            incidents: self.incident_ids.len(),
        }
    }
}

impl Views {
    /// Applies a signal report that was stored first.
    pub fn apply_signals(&mut self, r: &SignalReport, received_ms: i64) -> Changes {
        let Some((ns, wl, pod)) = split_shard(&r.shard_id) else {
            return Changes::default();
        };
        let workload = format!("{ns}/{wl}");
        let cfg = self.incident_cfg;
        let v = self
            .workloads
            .entry((ns.to_owned(), wl.to_owned()))
            .or_default();
        let newer = v.pods.get(pod).is_none_or(|p| p.epoch <= r.epoch);
        if newer {
            v.pods.insert(
                pod.to_owned(),
                PodView {
                    pod: pod.to_owned(),
                    epoch: r.epoch,
                    report_id: r.report_id.clone(),
                    received_ms,
                    windows: r.windows.clone(),
                },
            );
        }
        v.reports += 1;
        v.updated_ms = v.updated_ms.max(received_ms);
        for f in &r.findings {
            push_capped(
                &mut v.findings,
                HostFinding {
                    workload: workload.clone(),
                    host: pod.to_owned(),
                    finding: f.clone(),
                },
                MAX_FINDINGS,
            );
        }
        for s in &r.finops {
            push_capped(&mut v.finops, *s, MAX_FINOPS);
        }
        let mut changes = Changes {
            drift_level: v.worst_risk().level(),
            volatility: v.volatility(),
            ..Changes::default()
        };
        if !r.findings.is_empty() {
            for i in v.incidents(&cfg) {
                if v.incident_ids.insert(i.id.clone()) {
                    changes.new_incidents.push(i.pattern.as_str());
                }
            }
        }
        let point = v.history_point(r, pod, received_ms);
        push_capped(&mut v.history, point, HISTORY_POINTS);
        changes
    }

    /// Counts a PCS verdict against its workload (the summary of a first-applied one is kept).
    pub fn apply_pcs(&mut self, pcs: &Pcs, outcome: Outcome, received_ms: i64) {
        let Some((ns, wl, pod)) = split_shard(&pcs.shard_id) else {
            return;
        };
        let v = self
            .workloads
            .entry((ns.to_owned(), wl.to_owned()))
            .or_default();
        v.updated_ms = v.updated_ms.max(received_ms);
        match outcome {
            Outcome::Accepted => v.pcs.accepted += 1,
            Outcome::Escalated => v.pcs.escalated += 1,
            Outcome::Rejected => {
                v.pcs.rejected += 1;
                return;
            }
        }
        let newer = v.pcs.last.as_ref().is_none_or(|l| l.epoch <= pcs.epoch);
        if newer {
            v.pcs.last = Some(LastPcs {
                d_hat: pcs.d_hat,
                budget: pcs.budget,
                coh_star: pcs.coh_star,
                epoch: pcs.epoch,
                outcome,
                pcs_id: pcs.pcs_id.clone(),
                pod: pod.to_owned(),
                r: pcs.r,
                received_ms,
                regime: pcs.regime,
            });
        }
    }

    /// Counts a rejected record that named a workload.
    pub fn note_rejected(&mut self, shard_id: &str) {
        if let Some((ns, wl, _)) = split_shard(shard_id) {
            if let Some(v) = self.workloads.get_mut(&(ns.to_owned(), wl.to_owned())) {
                v.pcs.rejected += 1;
            }
        }
    }

    /// The workloads known, sorted.
    pub fn keys(&self) -> Vec<WorkloadKey> {
        self.workloads.keys().cloned().collect()
    }

    /// The summary of one workload, with how it was made.
    pub fn summary(&self, ns: &str, wl: &str) -> Option<Value> {
        let v = self.workloads.get(&(ns.to_owned(), wl.to_owned()))?;
        let risk = v.worst_risk();
        let incidents = v.incidents(&self.incident_cfg);
        let veto = incidents.iter().rev().find(|i| i.veto.is_some()).map(|i| {
            json!({
                "action": i.veto, "reason": i.veto_reason, "since": i.start,
                "risk": i.risk, "incidentId": i.id, "pattern": i.pattern,
            })
        });
        let signals: Vec<Value> = v
            .pods
            .values()
            .flat_map(|p| {
                p.windows.iter().map(move |w| {
                    json!({
                        "pod": p.pod, "signal": w.signal, "window": w.window.to_string(),
                        "mean": w.mean, "stdev": w.stdev, "volatilityIndex": w.volatility_index,
                        "driftRisk": w.drift_risk, "n": w.n,
                        "windowStart": rfc3339(w.window_start_ms), "windowEnd": rfc3339(w.window_end_ms),
                    })
                })
            })
            .collect();
        let recent: Vec<&FinopsSample> = v.finops.iter().rev().take(120).rev().collect();
        Some(json!({
            "namespace": ns,
            "workload": wl,
            "driftRisk": risk,
            "driftRiskLevel": risk.level(),
            "updatedAt": rfc3339(v.updated_ms),
            "pods": v.pods.values().map(|p| json!({
                "pod": p.pod, "epoch": p.epoch, "reportId": p.report_id,
                "receivedAt": rfc3339(p.received_ms),
            })).collect::<Vec<_>>(),
            "signals": signals,
            "incidents": incidents,
            "veto": veto,
            "finops": {
                "samples": v.finops.len(),
                "recent": recent,
                "report": v.finops_report(),
            },
            "pcs": v.pcs,
            "meta": {
                "method": "driftRisk is the worst drift risk over the latest window of every signal of every pod (insufficient_data ignored unless nothing else is known); incidents correlate the retained findings of all pods (merge gap, noisy-or risk); FinOps grades the retained samples against their own medians",
                "inputs": {
                    "reports": v.reports,
                    "pods": v.pods.len(),
                    "findingsRetained": v.findings.len(),
                    "findingsLimit": MAX_FINDINGS,
                    "finopsRetained": v.finops.len(),
                    "finopsLimit": MAX_FINOPS,
                },
                "incidentConfig": self.incident_cfg,
                "engineVersion": coherence_core::ENGINE_VERSION,
            },
        }))
    }

    /// The history of one workload, oldest point first (at most `limit` of the newest points),
    /// with how each number was made.
    pub fn history(&self, ns: &str, wl: &str, limit: Option<usize>) -> Option<Value> {
        let v = self.workloads.get(&(ns.to_owned(), wl.to_owned()))?;
        let take = limit.unwrap_or(HISTORY_POINTS).min(v.history.len());
        let points: Vec<Value> = v
            .history
            .iter()
            .skip(v.history.len() - take)
            .map(|p| {
                json!({
                    "at": rfc3339(p.at_ms), "atMs": p.at_ms, "pod": p.pod, "epoch": p.epoch,
                    "reportId": p.report_id, "driftRisk": p.drift_risk,
                    "driftRiskLevel": p.drift_risk.level(),
                    "windows": p.windows.iter().map(|w| json!({
                        "signal": w.signal, "window": w.window.to_string(), "mean": w.mean,
                        "stdev": w.stdev, "volatilityIndex": w.volatility_index,
                        "driftRisk": w.drift_risk, "n": w.n,
                        "windowStart": rfc3339(w.window_start_ms), "windowEnd": rfc3339(w.window_end_ms),
                    })).collect::<Vec<_>>(),
                    "finops": {"fti": p.fti, "ftiAvg": p.fti_avg, "grade": p.grade, "samples": p.finops_samples},
                    "pcs": {"accepted": p.pcs[0], "escalated": p.pcs[1], "rejected": p.pcs[2]},
                    "incidents": p.incidents,
                })
            })
            .collect();
        Some(json!({
            "namespace": ns,
            "workload": wl,
            "points": points,
            "meta": {
                "method": "one point per signal report applied first, taken right after it was applied: driftRisk is the workload's worst drift risk then (as in GET /v1/workloads/{namespace}/{workload}); windows are the report's own window statistics (mean, sample stdev, volatilityIndex = stdev/|mean|, over the window ending at windowEnd); finops.fti is the mean FTI of the report's FinOps samples against the baseline then in force (medians of the retained samples), finops.ftiAvg and grade those of every retained sample; pcs and incidents are the workload's running counts",
                "inputs": {
                    "retained": v.history.len(),
                    "returned": take,
                    "capacity": HISTORY_POINTS,
                    "windowsPerPointLimit": HISTORY_WINDOWS,
                },
                "finopsThresholds": Thresholds::default(),
                "minFinopsSamples": MIN_FINOPS_SAMPLES,
                "engineVersion": coherence_core::ENGINE_VERSION,
            },
        }))
    }

    /// The short list of every workload.
    pub fn list(&self) -> Value {
        let items: Vec<Value> = self
            .workloads
            .iter()
            .map(|((ns, wl), v)| {
                let risk = v.worst_risk();
                json!({
                    "namespace": ns, "workload": wl, "driftRisk": risk,
                    "driftRiskLevel": risk.level(), "pods": v.pods.len(),
                    "incidents": v.incident_ids.len(), "updatedAt": rfc3339(v.updated_ms),
                    "pcs": {"accepted": v.pcs.accepted, "escalated": v.pcs.escalated, "rejected": v.pcs.rejected},
                })
            })
            .collect();
        json!({ "workloads": items, "engineVersion": coherence_core::ENGINE_VERSION })
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, item: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(item);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use coherence_core::pcs::{BuildInput, Params, build};

    fn pcs(epoch: u64) -> Pcs {
        let values: Vec<f64> = (0..64).map(|i| f64::from(i % 7) + 1.0).collect();
        let events: Vec<Vec<u8>> = vec![b"e".to_vec()];
        build(
            &BuildInput {
                values: &values,
                events: &events,
                shard_id: "shop/web/web-1",
                epoch,
                attempt: 1,
                sent_at: "2026-11-01T00:00:00Z",
                seed: 7,
                scales: &[2, 4, 8],
            },
            &Params::default(),
        )
        .unwrap()
    }

    #[test]
    fn the_newest_pcs_is_kept_and_shown_with_its_claims_and_receipt_time() {
        let mut v = Views::default();
        let newer = pcs(5);
        v.apply_pcs(&newer, Outcome::Accepted, 1_700_000_000_000);
        v.apply_pcs(&pcs(3), Outcome::Escalated, 1_700_000_001_000);
        let s = v.summary("shop", "web").unwrap();
        let last = &s["pcs"]["last"];
        assert_eq!(last["epoch"], 5, "{s}");
        assert_eq!(last["pcs_id"], newer.pcs_id.as_str());
        assert_eq!(last["pod"], "web-1");
        assert_eq!(last["outcome"], "accepted");
        assert_eq!(last["D_hat"], newer.d_hat);
        assert_eq!(last["receivedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(s["pcs"]["accepted"], 1);
        assert_eq!(s["pcs"]["escalated"], 1);
    }
}
