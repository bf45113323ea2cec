//! The offline collector behind `coherence analyze`: telemetry samples in, one explainable
//! analysis out — medians, FinOps grading, rolling window statistics and drift risk per host and
//! signal, detector findings and incidents.
//!
//! Samples are pushed one at a time (O(1) amortised each for the rolling windows); detection,
//! medians and FinOps run once in [`Collector::finish`].

use crate::detect::{self, DetectorConfig, DetectorSignals, Point, ScanSchedule};
use crate::finops::{self, Baseline, LambdaParams, Thresholds};
use crate::incident::{self, HostFinding, Incident, IncidentConfig};
use crate::stats::median_in_place;
use crate::telemetry::{SIGNALS, format_ts_ms};
use crate::window::{DriftRisk, DriftThresholds, RollingWindow, SignalSummary, WindowSpan};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

const N_SIGNALS: usize = SIGNALS.len();
const QPS: usize = 5;
const LATENCY: usize = 6;
const COST: usize = 7;

/// Configuration of an analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectConfig {
    /// Rolling window of the per-signal statistics.
    pub window: WindowSpan,
    /// Drift thresholds applied to every signal without its own entry in `drift_by_signal`.
    pub drift: DriftThresholds,
    /// Drift thresholds of particular signals.
    pub drift_by_signal: BTreeMap<String, DriftThresholds>,
    /// Detector thresholds.
    pub detectors: DetectorConfig,
    /// Which signals feed which detectors.
    pub detector_signals: DetectorSignals,
    /// Detection window and cadence.
    pub schedule: ScanSchedule,
    /// Incident correlation.
    pub incidents: IncidentConfig,
    /// FTI grade thresholds.
    pub fti: Thresholds,
    /// λ parameters.
    pub lambda: LambdaParams,
    /// Explicit baseline; `None` takes the medians of the data.
    pub baseline: Option<Baseline>,
    /// Days since the workload last changed; `None` takes the span of the data.
    pub days_since_change: Option<f64>,
    /// FinOps samples needed for a grade other than UNKNOWN.
    pub min_fti_samples: u64,
    /// Where the samples come from (carried in every summary's inputs).
    pub source: String,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            window: WindowSpan::from_secs(3600).unwrap_or_else(|_| unreachable_span()),
            drift: DriftThresholds::volatility_only(),
            drift_by_signal: default_drift_by_signal(),
            detectors: DetectorConfig::default(),
            detector_signals: DetectorSignals::default(),
            schedule: ScanSchedule::default(),
            incidents: IncidentConfig::default(),
            fti: Thresholds::default(),
            lambda: LambdaParams::default(),
            baseline: None,
            days_since_change: None,
            min_fti_samples: 10,
            source: "telemetry".into(),
        }
    }
}

// 3600 s is always a valid span; this keeps `Default` free of unwrap.
fn unreachable_span() -> WindowSpan {
    WindowSpan::from_secs(1).unwrap_or_else(|_| unreachable_span())
}

/// Per-signal drift defaults: error counts are small integers whose σ/μ is about `1/√λ` even
/// when nothing drifts (≈0.6 at 2.6 errors per step), so they get wider volatility bands.
pub fn default_drift_by_signal() -> BTreeMap<String, DriftThresholds> {
    let errors = DriftThresholds {
        volatility_medium: 0.75,
        volatility_high: 1.5,
        ..DriftThresholds::volatility_only()
    };
    [("errors".to_string(), errors)].into()
}

impl CollectConfig {
    /// The drift thresholds of one signal.
    pub fn drift_for(&self, signal: &str) -> &DriftThresholds {
        self.drift_by_signal.get(signal).unwrap_or(&self.drift)
    }

    /// Checks every part; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.drift.validate()?;
        for (name, t) in &self.drift_by_signal {
            if !SIGNALS.contains(&name.as_str()) {
                return Err(format!(
                    "drift signal {name:?}: expected one of {}",
                    SIGNALS.join(", ")
                ));
            }
            t.validate().map_err(|e| format!("drift.{name}.{e}"))?;
        }
        self.detectors.validate()?;
        self.fti.validate()?;
        self.lambda.validate()?;
        if let Some(b) = &self.baseline {
            b.validate()?;
        }
        if let Some(d) = self.days_since_change {
            if !(d.is_finite() && d >= 0.0) {
                return Err(format!("days_since_change: expected a number ≥ 0, got {d}"));
            }
        }
        if self.schedule.window_ms <= 0 || self.schedule.step_ms <= 0 {
            return Err("detect window and step: expected positive durations".into());
        }
        for name in self.detector_signals.generic.iter().chain([
            &self.detector_signals.cpu,
            &self.detector_signals.memory_mb,
            &self.detector_signals.requests_in,
            &self.detector_signals.requests_out,
        ]) {
            if !SIGNALS.contains(&name.as_str()) {
                return Err(format!(
                    "detector signal {name:?}: expected one of {}",
                    SIGNALS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// A sample that cannot be used, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: expected a finite number ≥ 0, got {value}")]
pub struct InvalidSample {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: f64,
}

fn check_values(values: &[f64; N_SIGNALS]) -> Result<(), InvalidSample> {
    for (i, &v) in values.iter().enumerate() {
        if !(v.is_finite() && v >= 0.0) {
            return Err(InvalidSample {
                field: SIGNALS[i],
                value: v,
            });
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Entity {
    workload: String,
    host: String,
    windows: Vec<RollingWindow>,
    risk_counts: [[u64; 4]; N_SIGNALS],
    series: Vec<(usize, Vec<Point>)>,
    first_ms: i64,
    last_ms: i64,
    samples: u64,
}

/// Streaming collector.
#[derive(Debug)]
pub struct Collector {
    cfg: CollectConfig,
    index: HashMap<Box<str>, HashMap<Box<str>, usize>>,
    drift: [DriftThresholds; N_SIGNALS],
    entities: Vec<Entity>,
    detect_idx: Vec<usize>,
    finops: [Vec<f64>; 3],
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl Collector {
    /// A collector for a validated configuration.
    pub fn new(cfg: CollectConfig) -> Result<Self, String> {
        cfg.validate()?;
        let ds = &cfg.detector_signals;
        let mut detect_idx: Vec<usize> = ds
            .generic
            .iter()
            .chain([&ds.cpu, &ds.memory_mb, &ds.requests_in, &ds.requests_out])
            .filter_map(|n| SIGNALS.iter().position(|s| s == n))
            .collect();
        detect_idx.sort_unstable();
        detect_idx.dedup();
        let drift = std::array::from_fn(|i| *cfg.drift_for(SIGNALS[i]));
        Ok(Self {
            cfg,
            drift,
            index: HashMap::new(),
            entities: Vec::new(),
            detect_idx,
            finops: [Vec::new(), Vec::new(), Vec::new()],
            first_ms: None,
            last_ms: None,
        })
    }

    /// Adds one sample of `workload`/`host` with the values of [`SIGNALS`], in that order.
    pub fn push(
        &mut self,
        workload: &str,
        host: &str,
        ts_ms: i64,
        values: &[f64; N_SIGNALS],
    ) -> Result<(), InvalidSample> {
        check_values(values)?;
        let idx = self.entity(workload, host);
        self.push_checked(idx, ts_ms, values);
        Ok(())
    }

    /// The id of `workload`/`host`, registering it on first sight (ids count up from 0).
    pub fn entity(&mut self, workload: &str, host: &str) -> usize {
        match self.index.get(workload).and_then(|h| h.get(host)) {
            Some(&i) => i,
            None => self.add_entity(workload, host),
        }
    }

    /// Adds one sample to an entity returned by [`Collector::entity`].
    pub fn push_to(
        &mut self,
        entity: usize,
        ts_ms: i64,
        values: &[f64; N_SIGNALS],
    ) -> Result<(), InvalidSample> {
        check_values(values)?;
        if entity >= self.entities.len() {
            return Err(InvalidSample {
                field: "entity",
                value: entity as f64,
            });
        }
        self.push_checked(entity, ts_ms, values);
        Ok(())
    }

    fn push_checked(&mut self, idx: usize, ts_ms: i64, values: &[f64; N_SIGNALS]) {
        let e = &mut self.entities[idx];
        for (i, w) in e.windows.iter_mut().enumerate() {
            // Values were checked finite above; a late sample is counted by the window itself.
            if w.push(ts_ms, values[i]).is_ok() {
                let r = w.risk(&self.drift[i]);
                e.risk_counts[i][r as usize] += 1;
            }
        }
        for (sig, pts) in &mut e.series {
            pts.push((ts_ms, values[*sig]));
        }
        e.first_ms = e.first_ms.min(ts_ms);
        e.last_ms = e.last_ms.max(ts_ms);
        e.samples += 1;
        self.finops[0].push(values[QPS]);
        self.finops[1].push(values[LATENCY]);
        self.finops[2].push(values[COST]);
        self.first_ms = Some(self.first_ms.map_or(ts_ms, |f| f.min(ts_ms)));
        self.last_ms = Some(self.last_ms.map_or(ts_ms, |l| l.max(ts_ms)));
    }

    fn add_entity(&mut self, workload: &str, host: &str) -> usize {
        let idx = self.entities.len();
        self.entities.push(Entity {
            workload: workload.to_string(),
            host: host.to_string(),
            windows: (0..N_SIGNALS)
                .map(|_| RollingWindow::new(self.cfg.window))
                .collect(),
            risk_counts: [[0; 4]; N_SIGNALS],
            series: self.detect_idx.iter().map(|&i| (i, Vec::new())).collect(),
            first_ms: i64::MAX,
            last_ms: i64::MIN,
            samples: 0,
        });
        self.index
            .entry(workload.into())
            .or_default()
            .insert(host.into(), idx);
        idx
    }

    /// Number of samples taken.
    pub fn count(&self) -> u64 {
        self.finops[0].len() as u64
    }

    /// Runs detection, correlation and FinOps, and returns the analysis.
    pub fn finish(self) -> Analysis {
        let cfg = self.cfg;
        let span_days = match (self.first_ms, self.last_ms) {
            (Some(f), Some(l)) => (l - f) as f64 / 86_400_000.0,
            _ => 0.0,
        };
        let days = cfg.days_since_change.unwrap_or(span_days);
        let finops_series = &self.finops;
        let cfg_ref = &cfg;
        // The medians and FTI of all samples run beside the per-host detector scans, and the
        // hosts are shared among the cores; the results are put back in host order, so the
        // answer is the same as one thread's.
        let ((medians, baseline, baseline_source, finops), per_host) = std::thread::scope(|s| {
            let fin = s.spawn(move || finops_of(finops_series, cfg_ref, days));
            let per_host = par_map(self.entities, |mut e| {
                // A host registered by lines that all turned out invalid has nothing to report.
                if e.samples == 0 {
                    return None;
                }
                let mut series = BTreeMap::new();
                for (sig, mut pts) in std::mem::take(&mut e.series) {
                    pts.sort_by_key(|p| p.0);
                    series.insert(SIGNALS[sig].to_string(), pts);
                }
                let found = detect::scan(
                    &series,
                    &cfg_ref.detector_signals,
                    &cfg_ref.detectors,
                    cfg_ref.schedule,
                );
                Some((e, found))
            });
            let fin = match fin.join() {
                Ok(f) => f,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            (fin, per_host)
        });
        let mut findings = Vec::new();
        let mut hosts = Vec::new();
        for (e, found) in per_host.into_iter().flatten() {
            for f in found {
                findings.push(HostFinding {
                    workload: e.workload.clone(),
                    host: e.host.clone(),
                    finding: f,
                });
            }
            hosts.push(host_report(&e, &cfg));
        }
        hosts.sort_by(|a, b| (&a.workload, &a.host).cmp(&(&b.workload, &b.host)));
        let findings_count = findings.len();
        let incidents = incident::correlate(findings, &cfg.incidents);
        Analysis {
            count: self.finops[0].len() as u64,
            window: cfg.window,
            first_ts: self.first_ms.map(format_ts_ms),
            last_ts: self.last_ms.map(format_ts_ms),
            medians,
            baseline: BaselineUsed {
                values: baseline,
                source: baseline_source,
            },
            fti_avg: finops.as_ref().and_then(|r| r.fti_avg),
            fti_grade: finops.as_ref().map_or(finops::Grade::Unknown, |r| r.grade),
            fti_grade_worst: finops
                .as_ref()
                .map_or(finops::Grade::Unknown, |r| r.grade_worst),
            lambda_effective: cfg.lambda.effective(days),
            finops,
            workloads: hosts,
            findings: findings_count,
            alerts: incidents.iter().filter(|i| i.alert).count(),
            incidents,
            engine_version: crate::ENGINE_VERSION,
        }
    }
}

type FinopsOutcome = (
    Medians,
    Option<Baseline>,
    &'static str,
    Option<finops::Report>,
);

// The medians of the three FinOps signals, the baseline they give (unless one was set) and the
// FTI of every sample against it.
fn finops_of(series: &[Vec<f64>; 3], cfg: &CollectConfig, days: f64) -> FinopsOutcome {
    let mut scratch = Vec::new();
    let mut med = |v: &Vec<f64>| {
        scratch.clear();
        scratch.extend_from_slice(v);
        median_in_place(&mut scratch)
    };
    let medians = Medians {
        qps: med(&series[0]),
        latency_p95_ms: med(&series[1]),
        infra_cost_usd: med(&series[2]),
    };
    let (baseline, baseline_source) = match (cfg.baseline, medians.as_baseline()) {
        (Some(b), _) => (Some(b), "flag"),
        (None, Some(b)) if b.validate().is_ok() => (Some(b), "medians"),
        _ => (None, "none: no positive medians"),
    };
    let finops = baseline
        .and_then(|b| finops::Accumulator::new(b, cfg.fti).ok())
        .map(|mut acc| {
            for ((&q, &l), &c) in series[0].iter().zip(&series[1]).zip(&series[2]) {
                let _excluded_and_counted = acc.push(&finops::Sample {
                    qps: q,
                    latency_p95_ms: l,
                    infra_cost_usd: c,
                });
            }
            acc.finish(&cfg.lambda, days, cfg.min_fti_samples)
        });
    (medians, baseline, baseline_source, finops)
}

/// `f` of every item on up to one thread per core, the results in the items' order.
fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let n = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        // A poisoned lock means another worker panicked; its join re-raises it.
                        let next = match queue.lock() {
                            Ok(mut q) => q.next(),
                            Err(_) => None,
                        };
                        let Some((i, item)) = next else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            match w.join() {
                Ok(part) => all.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn host_report(e: &Entity, cfg: &CollectConfig) -> HostReport {
    let mut signals = BTreeMap::new();
    let mut worst: Option<DriftRisk> = None;
    for (i, w) in e.windows.iter().enumerate() {
        let summary = SignalSummary::new(
            SIGNALS[i],
            &w.stats(),
            cfg.drift_for(SIGNALS[i]),
            &cfg.source,
        );
        let r = summary.predicted_drift_risk;
        worst = Some(worst.map_or(r, |x| x.max(r)));
        let c = e.risk_counts[i];
        signals.insert(
            SIGNALS[i].to_string(),
            SignalReport {
                summary,
                drift_risk_counts: RiskCounts {
                    insufficient_data: c[0],
                    low: c[1],
                    medium: c[2],
                    high: c[3],
                },
            },
        );
    }
    HostReport {
        workload: e.workload.clone(),
        host: e.host.clone(),
        samples: e.samples,
        first_ts: format_ts_ms(e.first_ms),
        last_ts: format_ts_ms(e.last_ms),
        drift_risk: worst.unwrap_or(DriftRisk::InsufficientData),
        signals,
    }
}

/// Medians of the FinOps signals over every sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Medians {
    /// Median qps.
    pub qps: Option<f64>,
    /// Median p95 latency.
    pub latency_p95_ms: Option<f64>,
    /// Median cost per sample.
    pub infra_cost_usd: Option<f64>,
}

impl Medians {
    fn as_baseline(&self) -> Option<Baseline> {
        Some(Baseline {
            qps: self.qps?,
            latency_p95_ms: self.latency_p95_ms?,
            infra_cost_usd: self.infra_cost_usd?,
        })
    }
}

/// The baseline FinOps was graded against, and where it came from (`flag` or `medians`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BaselineUsed {
    /// The values (none when no usable baseline exists).
    #[serde(flatten)]
    pub values: Option<Baseline>,
    /// `flag`, `medians`, or why there is none.
    pub source: &'static str,
}

/// Drift risk of every sample's window, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RiskCounts {
    /// Windows with too few samples.
    pub insufficient_data: u64,
    /// Low.
    pub low: u64,
    /// Medium.
    pub medium: u64,
    /// High.
    pub high: u64,
}

/// One signal of one host: the last window's summary and the risk over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalReport {
    /// The last window.
    #[serde(flatten)]
    pub summary: SignalSummary,
    /// Drift risk of the window ending at each sample.
    pub drift_risk_counts: RiskCounts,
}

/// One host of one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostReport {
    /// Workload.
    pub workload: String,
    /// Host.
    pub host: String,
    /// Samples taken.
    pub samples: u64,
    /// First sample.
    pub first_ts: String,
    /// Last sample.
    pub last_ts: String,
    /// Worst drift risk over the signals' last windows.
    pub drift_risk: DriftRisk,
    /// Per signal.
    pub signals: BTreeMap<String, SignalReport>,
}

/// The analysis of a telemetry stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Samples analysed.
    pub count: u64,
    /// Rolling window of the statistics.
    pub window: WindowSpan,
    /// First sample time.
    pub first_ts: Option<String>,
    /// Last sample time.
    pub last_ts: Option<String>,
    /// Medians of qps, latency and cost.
    pub medians: Medians,
    /// The FinOps baseline.
    pub baseline: BaselineUsed,
    /// Mean FTI.
    pub fti_avg: Option<f64>,
    /// Grade of the mean FTI.
    pub fti_grade: finops::Grade,
    /// Worst per-sample grade.
    pub fti_grade_worst: finops::Grade,
    /// λ_effective.
    pub lambda_effective: f64,
    /// The full FinOps report with its explanation.
    pub finops: Option<finops::Report>,
    /// Per host: window statistics and drift risk per signal.
    pub workloads: Vec<HostReport>,
    /// Detector findings before correlation.
    pub findings: usize,
    /// Incidents above the alert threshold.
    pub alerts: usize,
    /// Incidents.
    pub incidents: Vec<Incident>,
    /// Engine version.
    pub engine_version: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::FindingKind;
    use crate::incident::VetoAction;
    use crate::sim::{SimConfig, Simulator};

    fn analyse(cfg: SimConfig) -> (Analysis, crate::sim::Timeline) {
        let sim = Simulator::new(cfg).unwrap();
        let tl = sim.timeline();
        let mut c = Collector::new(CollectConfig::default()).unwrap();
        for r in sim {
            let v: [f64; N_SIGNALS] = std::array::from_fn(|i| r.value(SIGNALS[i]).unwrap());
            c.push(&r.workload, &r.host, r.ts_ms().unwrap(), &v)
                .unwrap();
        }
        (c.finish(), tl)
    }

    #[test]
    fn the_simulated_cascade_is_found_in_order_and_healthy_hosts_stay_quiet() {
        let (a, tl) = analyse(SimConfig::default());
        assert_eq!(a.workloads.len(), 3);
        let on_stressed = |i: &&Incident| i.hosts.iter().any(|h| h.contains("stressed"));
        let stressed: Vec<&Incident> = a.incidents.iter().filter(on_stressed).collect();
        // Every incident is on the stressed host, inside the cascade.
        assert_eq!(stressed.len(), a.incidents.len(), "{:#?}", a.incidents);
        for i in &stressed {
            assert!(
                i.start_ms >= tl.seizure_start_ms && i.end_ms <= tl.crash_ms,
                "{}",
                i.id
            );
        }
        // Seizure, then fever, then the retry storm, in the order they happened.
        let order: Vec<FindingKind> = stressed
            .iter()
            .flat_map(|i| i.patterns.iter().copied())
            .filter(|k| {
                matches!(
                    k,
                    FindingKind::Seizure | FindingKind::Fever | FindingKind::AutoImmune
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                FindingKind::Seizure,
                FindingKind::Fever,
                FindingKind::AutoImmune
            ]
        );
        let first = stressed.first().unwrap();
        assert_eq!(
            (first.pattern, first.veto),
            (FindingKind::Seizure, Some(VetoAction::ShedLoad))
        );
        assert!(first.start_ms < tl.fever_start_ms);
        let last = stressed.last().unwrap();
        assert_eq!(
            (last.pattern, last.veto),
            (FindingKind::AutoImmune, Some(VetoAction::CircuitBreak))
        );
        assert!(
            last.alert && last.narrative.contains("then retry storm"),
            "{}",
            last.narrative
        );
        assert_eq!(a.alerts, a.incidents.iter().filter(|i| i.alert).count());
    }

    #[test]
    fn medians_and_finops_are_computed_from_the_samples() {
        let (a, _) = analyse(SimConfig {
            hours: 2.0,
            ..SimConfig::default()
        });
        let m = a.medians;
        assert!(m.qps.unwrap() > 80.0 && m.qps.unwrap() < 160.0);
        let r = a.finops.as_ref().unwrap();
        assert_eq!(r.samples, a.count);
        // Against its own medians the run's mean FTI is close to 1.
        assert!((a.fti_avg.unwrap() - 1.0).abs() < 0.2, "{:?}", a.fti_avg);
        assert_eq!(a.baseline.source, "medians");
        let h = &a.workloads[0];
        // Healthy hosts do not drift, error counts included.
        assert!(
            a.workloads
                .iter()
                .filter(|h| h.host.contains("healthy"))
                .all(|h| h.drift_risk == DriftRisk::Low)
        );
        assert_eq!(
            h.signals["errors"].summary.meta.thresholds.volatility_high,
            1.5
        );
        let s = &h.signals["qps"];
        let c = s.drift_risk_counts;
        assert_eq!(c.insufficient_data + c.low + c.medium + c.high, h.samples);
        assert_eq!(c.insufficient_data, 9);
    }

    #[test]
    fn the_fused_kernel_counts_the_drift_risk_the_collector_counts() {
        let cfg = CollectConfig::default();
        let sim = Simulator::new(SimConfig::default()).unwrap();
        let mut c = Collector::new(cfg.clone()).unwrap();
        let mut series: BTreeMap<String, (Vec<i64>, Vec<[f64; N_SIGNALS]>)> = BTreeMap::new();
        for r in sim {
            let v: [f64; N_SIGNALS] = std::array::from_fn(|i| r.value(SIGNALS[i]).unwrap());
            let ts = r.ts_ms().unwrap();
            c.push(&r.workload, &r.host, ts, &v).unwrap();
            let s = series.entry(r.host.clone()).or_default();
            s.0.push(ts);
            s.1.push(v);
        }
        let a = c.finish();
        let t: [DriftThresholds; N_SIGNALS] = std::array::from_fn(|i| *cfg.drift_for(SIGNALS[i]));
        assert_eq!(a.workloads.len(), series.len());
        for h in &a.workloads {
            let (ts, rows) = &series[&h.host];
            let fused = crate::window::rolling_risk(ts, rows, cfg.window, &t, 2).unwrap();
            for (j, name) in SIGNALS.iter().enumerate() {
                let report = &h.signals[*name];
                let c = report.drift_risk_counts;
                assert_eq!(
                    fused.counts[j],
                    [c.insufficient_data, c.low, c.medium, c.high],
                    "{} {name}",
                    h.host
                );
                let s = &report.summary;
                assert_eq!(fused.last_n, s.n);
                assert!(
                    (fused.last_mean[j] - s.coherence_mean).abs() <= 1e-12 * s.coherence_mean.abs()
                );
                assert!((fused.last_stdev[j] - s.stdev).abs() <= 1e-9 * s.stdev);
            }
        }
    }

    #[test]
    fn invalid_samples_name_the_field() {
        let mut c = Collector::new(CollectConfig::default()).unwrap();
        let mut v = [1.0; N_SIGNALS];
        v[6] = -3.0;
        let e = c.push("w", "h", 0, &v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "latency_p95_ms: expected a finite number ≥ 0, got -3"
        );
        v[6] = f64::NAN;
        assert!(c.push("w", "h", 0, &v).is_err());
        assert_eq!(c.count(), 0);
        let bad = CollectConfig {
            days_since_change: Some(-1.0),
            ..CollectConfig::default()
        };
        assert!(
            Collector::new(bad)
                .unwrap_err()
                .starts_with("days_since_change")
        );
        let mut by = default_drift_by_signal();
        by.insert("rps".into(), DriftThresholds::default());
        let bad = CollectConfig {
            drift_by_signal: by,
            ..CollectConfig::default()
        };
        assert!(
            Collector::new(bad)
                .unwrap_err()
                .starts_with("drift signal \"rps\"")
        );
    }
}
#[cfg(test)]
mod seeds {
    use super::*;
    use crate::detect::FindingKind;
    use crate::sim::{SimConfig, Simulator};

    #[test]
    fn across_seeds_the_cascade_is_found_and_healthy_hosts_never_alert() {
        for seed in 1..=6 {
            let sim = Simulator::new(SimConfig {
                seed,
                ..SimConfig::default()
            })
            .unwrap();
            let mut c = Collector::new(CollectConfig::default()).unwrap();
            for r in sim {
                let v: [f64; N_SIGNALS] = std::array::from_fn(|i| r.value(SIGNALS[i]).unwrap());
                c.push(&r.workload, &r.host, r.ts_ms().unwrap(), &v)
                    .unwrap();
            }
            let a = c.finish();
            let healthy_only: Vec<&Incident> = a
                .incidents
                .iter()
                .filter(|i| i.hosts.iter().all(|h| h.contains("healthy")))
                .collect();
            assert!(
                healthy_only.iter().all(|i| !i.alert),
                "seed {seed}: {healthy_only:#?}"
            );
            let kinds: Vec<FindingKind> = a
                .incidents
                .iter()
                .flat_map(|i| i.patterns.clone())
                .collect();
            for k in [
                FindingKind::Seizure,
                FindingKind::Fever,
                FindingKind::AutoImmune,
            ] {
                assert!(kinds.contains(&k), "seed {seed}: {k:?} not found");
            }
            eprintln!(
                "seed {seed}: {} incidents, {} healthy-only",
                a.incidents.len(),
                healthy_only.len()
            );
        }
    }
}
