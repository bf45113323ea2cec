//! The engine: rolling windows per signal, detectors, FinOps samples, and at the end of each
//! epoch one PCS and one SignalReport, both unsigned (the runner signs them and puts them in the
//! outbox). Pure and synchronous: time comes in as arguments, so every figure can be tested.
//!
//! An epoch is `floor(t / epoch_ms)`: a restarted sidecar numbers its epochs the same way, so a
//! record computed again after a crash carries the same ids and the verifier's dedup keeps one.

use crate::config::Config;
use crate::sample::{Batch, Sample};
use coherence_core::detect::{self, Finding, Point};
use coherence_core::incident::{self, HostFinding, Incident, IncidentConfig};
use coherence_core::pcs::{self, BuildInput, Params, Pcs};
use coherence_core::report::{self, FinopsSample, SignalReport, WindowReport};
use coherence_core::telemetry::format_ts_ms;
use coherence_core::window::{DriftThresholds, RollingWindow, WindowSpan, WindowStats};
use coherence_core::{ENGINE_VERSION, merkle};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Signals the engine keeps at most; samples of further signals are dropped and counted.
pub const MAX_SIGNALS: usize = 10_000;
/// Merkle leaves kept per epoch at most; beyond it samples still enter the windows but the
/// leaf list is cut and the cut is counted (the root then covers the first leaves only).
pub const MAX_EPOCH_LEAVES: usize = 200_000;
/// Recent findings kept for `/status` incidents.
const RECENT_FINDINGS: usize = 512;

/// One signal's state.
#[derive(Debug, Clone)]
struct SignalState {
    source: String,
    windows: Vec<RollingWindow>,
    epoch_sum: f64,
    epoch_n: u64,
}

/// Counts of what the engine refused, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejections {
    /// NaN or infinite values.
    pub non_finite: u64,
    /// Older than the longest window.
    pub late: u64,
    /// Signals beyond [`MAX_SIGNALS`].
    pub signal_limit: u64,
    /// Leaves beyond [`MAX_EPOCH_LEAVES`].
    pub leaf_limit: u64,
}

/// What one epoch produced.
#[derive(Debug, Clone)]
pub struct EpochOutput {
    /// The epoch number.
    pub epoch: u64,
    /// End of the epoch, ms.
    pub end_ms: i64,
    /// The PCS (unsigned), when one could be built.
    pub pcs: Option<Pcs>,
    /// Why no PCS was built.
    pub pcs_skipped: Option<String>,
    /// The SignalReport (unsigned).
    pub report: SignalReport,
    /// Window statistics left out of the report by `report.maxWindows`.
    pub windows_left_out: usize,
}

/// What `/status` shows of the last epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochStatus {
    /// The epoch number.
    pub epoch: u64,
    /// End of the epoch (RFC 3339).
    pub end: String,
    /// `pcs_id` of the epoch's PCS.
    pub pcs_id: Option<String>,
    /// Why no PCS was built.
    pub pcs_skipped: Option<String>,
    /// `report_id` of the epoch's SignalReport.
    pub report_id: String,
    /// Window statistics in the report.
    pub windows: usize,
    /// Findings in the report.
    pub findings: usize,
    /// Samples of the epoch.
    pub samples: usize,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    cfg: Arc<Config>,
    shard_id: String,
    signals: BTreeMap<String, SignalState>,
    // The epoch's Merkle leaves, hashed as they arrive (32 bytes each, no allocation per leaf).
    leaves: Vec<merkle::Hash>,
    rejections: Rejections,
    last_ingest_ms: Option<i64>,
    max_skew_ms: i64,
    recent: VecDeque<HostFinding>,
    last_epoch: Option<EpochStatus>,
}

impl Engine {
    /// An engine with no data.
    pub fn new(cfg: Arc<Config>) -> Self {
        Self {
            shard_id: cfg.identity.shard_id(),
            cfg,
            signals: BTreeMap::new(),
            leaves: Vec::new(),
            rejections: Rejections::default(),
            last_ingest_ms: None,
            max_skew_ms: 0,
            recent: VecDeque::new(),
            last_epoch: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// Takes a new configuration: windows whose span is still configured keep their samples,
    /// new spans start empty (filled from the longest kept window's samples).
    pub fn reconfigure(&mut self, cfg: Arc<Config>) {
        let spans = cfg.windows.clone();
        for st in self.signals.values_mut() {
            let longest: Vec<(i64, f64)> = st
                .windows
                .iter()
                .max_by_key(|w| w.span())
                .map(|w| w.samples().collect())
                .unwrap_or_default();
            let mut next = Vec::with_capacity(spans.len());
            for span in &spans {
                if let Some(pos) = st.windows.iter().position(|w| w.span() == *span) {
                    next.push(st.windows.swap_remove(pos));
                } else {
                    let mut w = RollingWindow::new(*span);
                    for (t, v) in &longest {
                        let _ = w.push(*t, *v);
                    }
                    next.push(w);
                }
            }
            st.windows = next;
        }
        self.shard_id = cfg.identity.shard_id();
        self.cfg = cfg;
    }

    /// `<namespace>/<workload>/<pod>`.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Takes a batch of samples received at `now_ms`.
    pub fn ingest(&mut self, batch: &Batch, now_ms: i64) {
        for s in &batch.samples {
            self.ingest_sample(&batch.source, s, now_ms);
        }
        if !batch.samples.is_empty() {
            self.last_ingest_ms = Some(now_ms);
        }
    }

    fn ingest_sample(&mut self, source: &str, s: &Sample, now_ms: i64) {
        if !s.value.is_finite() {
            self.rejections.non_finite += 1;
            return;
        }
        if !self.signals.contains_key(&s.signal) {
            if self.signals.len() >= MAX_SIGNALS {
                self.rejections.signal_limit += 1;
                return;
            }
            let windows = self
                .cfg
                .windows
                .iter()
                .map(|w| RollingWindow::new(*w))
                .collect();
            self.signals.insert(
                s.signal.clone(),
                SignalState {
                    source: source.to_string(),
                    windows,
                    epoch_sum: 0.0,
                    epoch_n: 0,
                },
            );
        }
        let Some(st) = self.signals.get_mut(&s.signal) else {
            return;
        };
        let mut taken = false;
        for w in &mut st.windows {
            taken |= w.push(s.ts_ms, s.value).is_ok();
        }
        if !taken {
            self.rejections.late += 1;
            return;
        }
        st.epoch_sum += s.value;
        st.epoch_n += 1;
        // A sample stamped ahead of this clock means one of the two clocks is off.
        self.max_skew_ms = self.max_skew_ms.max(s.ts_ms - now_ms);
        if self.leaves.len() < MAX_EPOCH_LEAVES {
            let leaf = format!("{}|{}|{}", s.signal, s.ts_ms, s.value);
            self.leaves.push(merkle::leaf_hash(leaf.as_bytes()));
        } else {
            self.rejections.leaf_limit += 1;
        }
    }

    /// What was refused so far.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// When samples last arrived, ms.
    pub fn last_ingest_ms(&self) -> Option<i64> {
        self.last_ingest_ms
    }

    /// Names of the signals seen, in order.
    pub fn signal_names(&self) -> impl Iterator<Item = &str> {
        self.signals.keys().map(String::as_str)
    }

    /// Number of signals seen.
    pub fn signal_count(&self) -> usize {
        self.signals.len()
    }

    /// Samples held in all windows.
    pub fn samples_held(&self) -> usize {
        self.signals
            .values()
            .flat_map(|s| s.windows.iter())
            .map(RollingWindow::len)
            .sum()
    }

    /// The signal the PCS and the local API answer for by default: `pcs.signal`, else the
    /// first signal in name order.
    pub fn primary_signal(&self) -> Option<&str> {
        match &self.cfg.pcs.signal {
            Some(s) => Some(s.as_str()),
            None => self.signals.keys().next().map(String::as_str),
        }
    }

    /// The thresholds of a signal.
    pub fn thresholds(&self, signal: &str) -> &DriftThresholds {
        self.cfg.drift.for_signal(signal)
    }

    /// Statistics of one signal over one window, as of `now_ms` (the window's end moves to now,
    /// so a signal that stopped reporting empties out and turns `insufficient_data`).
    pub fn window_stats(
        &self,
        signal: &str,
        span: WindowSpan,
        now_ms: i64,
    ) -> Option<(WindowStats, &str)> {
        let st = self.signals.get(signal)?;
        let w = st.windows.iter().find(|w| w.span() == span)?;
        let mut w = w.clone();
        w.advance_to(now_ms);
        Some((w.stats(), st.source.as_str()))
    }

    /// Recent findings, correlated into incidents.
    pub fn incidents(&self) -> Vec<Incident> {
        incident::correlate(
            self.recent.iter().cloned().collect(),
            &IncidentConfig::default(),
        )
    }

    /// The last epoch's summary.
    pub fn last_epoch(&self) -> Option<&EpochStatus> {
        self.last_epoch.as_ref()
    }

    /// Closes epoch `epoch`, which ends at `end_ms`; `sent_at_ms` is the wall-clock time.
    pub fn close_epoch(&mut self, epoch: u64, end_ms: i64, sent_at_ms: i64) -> EpochOutput {
        for st in self.signals.values_mut() {
            for w in &mut st.windows {
                w.advance_to(end_ms);
            }
        }
        let sent_at = format_ts_ms(sent_at_ms);
        let samples = self.leaves.len();
        let (pcs, pcs_skipped) = match self.build_pcs(epoch, &sent_at) {
            Ok(p) => (Some(p), None),
            Err(why) => (None, Some(why)),
        };
        let (windows, windows_left_out) = self.window_reports();
        let mut findings = self.findings(end_ms);
        for f in &findings {
            if self.recent.len() == RECENT_FINDINGS {
                self.recent.pop_front();
            }
            self.recent.push_back(HostFinding {
                workload: format!(
                    "{}/{}",
                    self.cfg.identity.namespace, self.cfg.identity.workload
                ),
                host: self.cfg.identity.pod.clone(),
                finding: f.clone(),
            });
        }
        findings.sort_by(|a, b| b.risk.total_cmp(&a.risk));
        findings.truncate(self.cfg.report.max_findings);
        let finops = self.finops_sample(end_ms).into_iter().collect();
        let report = SignalReport {
            report_id: report::report_id(&self.shard_id, epoch),
            schema: report::SCHEMA.to_string(),
            version: report::VERSION.to_string(),
            shard_id: self.shard_id.clone(),
            epoch,
            sent_at,
            engine_version: ENGINE_VERSION.to_string(),
            windows,
            findings,
            finops,
            sig: String::new(),
        };
        for st in self.signals.values_mut() {
            st.epoch_sum = 0.0;
            st.epoch_n = 0;
        }
        self.leaves.clear();
        self.last_epoch = Some(EpochStatus {
            epoch,
            end: format_ts_ms(end_ms),
            pcs_id: pcs.as_ref().map(|p| p.pcs_id.clone()),
            pcs_skipped: pcs_skipped.clone(),
            report_id: report.report_id.clone(),
            windows: report.windows.len(),
            findings: report.findings.len(),
            samples,
        });
        EpochOutput {
            epoch,
            end_ms,
            pcs,
            pcs_skipped,
            report,
            windows_left_out,
        }
    }

    /// Clock skew seen since the last call (largest amount a sample was ahead), then reset.
    pub fn take_clock_skew_ms(&mut self) -> i64 {
        std::mem::take(&mut self.max_skew_ms)
    }

    fn build_pcs(&self, epoch: u64, sent_at: &str) -> Result<Pcs, String> {
        let signal = self
            .primary_signal()
            .ok_or_else(|| "no signal has reported yet".to_string())?;
        let span = self
            .cfg
            .pcs_window()
            .ok_or_else(|| "no window is configured".to_string())?;
        let st = self
            .signals
            .get(signal)
            .ok_or_else(|| format!("pcs.signal {signal:?} has not reported yet"))?;
        let w = st
            .windows
            .iter()
            .find(|w| w.span() == span)
            .ok_or_else(|| format!("window {span} is not kept"))?;
        let values: Vec<f64> = w.samples().map(|(_, v)| v).collect();
        let min = self.cfg.detectors.min_samples.max(3);
        if values.len() < min {
            return Err(format!(
                "{signal} has {} samples in {span}, fewer than {min}",
                values.len()
            ));
        }
        let mut pcs = pcs::build(
            &BuildInput {
                values: &values,
                events: &[] as &[Vec<u8>],
                shard_id: &self.shard_id,
                epoch,
                attempt: 1,
                sent_at,
                seed: self.cfg.pcs.seed,
                scales: &self.cfg.pcs.scales,
            },
            &Params::default(),
        )
        .map_err(|e| format!("{signal} over {span}: {e}"))?;
        // The leaves were hashed on arrival: the root is taken over those hashes.
        pcs.merkle_root = hex::encode(merkle::root_of_leaf_hashes(&self.leaves));
        pcs.pcs_id = pcs::pcs_id(&pcs.merkle_root, epoch, &self.shard_id);
        Ok(pcs)
    }

    /// Signals that must be in every report when they exist: detector, FinOps and PCS signals.
    fn key_signals(&self) -> Vec<&str> {
        let ds = &self.cfg.detector_signals;
        let mut out: Vec<&str> = ds.generic.iter().map(String::as_str).collect();
        out.extend([
            ds.cpu.as_str(),
            ds.memory_mb.as_str(),
            ds.requests_in.as_str(),
            ds.requests_out.as_str(),
        ]);
        if let Some(f) = &self.cfg.finops {
            out.extend([f.qps_signal.as_str(), f.latency_signal.as_str()]);
        }
        out.extend(self.primary_signal());
        out
    }

    fn window_reports(&self) -> (Vec<WindowReport>, usize) {
        let key = self.key_signals();
        let mut all: Vec<(bool, u8, WindowReport)> = Vec::new();
        for (name, st) in &self.signals {
            let t = self.thresholds(name);
            for w in &st.windows {
                let s = w.stats();
                let risk = w.risk(t);
                all.push((
                    key.contains(&name.as_str()),
                    risk.level().map_or(0, |l| l + 1),
                    WindowReport {
                        signal: name.clone(),
                        window: s.window,
                        mean: finite_or_zero(s.mean),
                        stdev: finite_or_zero(s.stdev),
                        volatility_index: finite_or_zero(s.volatility_index),
                        drift_risk: risk,
                        n: s.n,
                        window_start_ms: s.start_ms,
                        window_end_ms: s.end_ms,
                    },
                ));
            }
        }
        let max = self.cfg.report.max_windows;
        let left_out = all.len().saturating_sub(max);
        if left_out > 0 {
            // Key signals first, then the riskiest; the sort is stable, so name order remains.
            all.sort_by_key(|w| std::cmp::Reverse((w.0, w.1)));
            all.truncate(max);
            all.sort_by(|a, b| (&a.2.signal, a.2.window).cmp(&(&b.2.signal, b.2.window)));
        }
        (all.into_iter().map(|(_, _, w)| w).collect(), left_out)
    }

    fn findings(&self, end_ms: i64) -> Vec<Finding> {
        let Some(span) = self.cfg.windows.iter().max().copied() else {
            return Vec::new();
        };
        // Only the signals a detector reads are copied out of their windows.
        let ds = &self.cfg.detector_signals;
        let wanted =
            ds.generic
                .iter()
                .chain([&ds.cpu, &ds.memory_mb, &ds.requests_in, &ds.requests_out]);
        let mut points: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
        for name in wanted {
            let Some((key, st)) = self.signals.get_key_value(name) else {
                continue;
            };
            if let Some(w) = st.windows.iter().find(|w| w.span() == span) {
                points.insert(key.as_str(), w.samples().collect());
            }
        }
        let series: BTreeMap<&str, &[Point]> =
            points.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let mut out =
            detect::detect_window(&series, &self.cfg.detector_signals, &self.cfg.detectors);
        for f in &mut out {
            f.at_ms = f.at_ms.min(end_ms);
        }
        out
    }

    fn finops_sample(&self, end_ms: i64) -> Option<FinopsSample> {
        let f = self.cfg.finops.as_ref()?;
        let mean = |name: &str| {
            self.signals
                .get(name)
                .filter(|s| s.epoch_n > 0)
                .map(|s| s.epoch_sum / s.epoch_n as f64)
        };
        let qps = mean(&f.qps_signal)?;
        let latency = mean(&f.latency_signal)?;
        let hours = self.cfg.epoch.get().as_secs_f64() / 3600.0;
        let cost = f.cost_per_hour()? * hours;
        Some(FinopsSample {
            at_ms: end_ms,
            qps,
            latency_p95_ms: latency,
            infra_cost_usd: cost,
        })
    }
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// The epoch `now_ms` falls in.
pub fn epoch_of(now_ms: i64, epoch_ms: i64) -> u64 {
    u64::try_from(now_ms.div_euclid(epoch_ms.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use coherence_core::merkle::merkle_root_hex;
    use coherence_core::window::DriftRisk;

    fn cfg(extra: &str) -> Arc<Config> {
        let yaml = format!(
            "identity: {{namespace: shop, workload: web, pod: web-0}}\nsources: []\nepoch: 10s\nwindows: [1m, 5m]\n{extra}"
        );
        Arc::new(Config::from_yaml(&yaml).unwrap())
    }

    fn batch(signal: &str, points: &[(i64, f64)]) -> Batch {
        Batch {
            source: "test".into(),
            samples: points
                .iter()
                .map(|&(ts_ms, value)| Sample {
                    signal: signal.into(),
                    ts_ms,
                    value,
                })
                .collect(),
        }
    }

    #[test]
    fn epochs_are_numbered_from_the_unix_epoch() {
        assert_eq!(epoch_of(0, 10_000), 0);
        assert_eq!(epoch_of(9_999, 10_000), 0);
        assert_eq!(epoch_of(10_000, 10_000), 1);
    }

    #[test]
    fn an_epoch_reports_exact_window_statistics_and_a_pcs_over_its_samples() {
        let mut e = Engine::new(cfg("pcs: {signal: lat}"));
        // 60 samples at 1 Hz ending at t = 120 s: the 1m window holds the last 60 (61..=120 s).
        let pts: Vec<(i64, f64)> = (1..=120)
            .map(|i| (i * 1000, f64::from(i as i32 % 7) + 10.0))
            .collect();
        e.ingest(&batch("lat", &pts), 120_000);
        let out = e.close_epoch(11, 120_000, 120_500);
        let w1 = out
            .report
            .windows
            .iter()
            .find(|w| w.window.to_string() == "1m")
            .unwrap();
        let last60: Vec<f64> = pts[60..].iter().map(|p| p.1).collect();
        let mean = last60.iter().sum::<f64>() / 60.0;
        let var = last60.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 59.0;
        assert_eq!(w1.n, 60);
        assert!((w1.mean - mean).abs() < 1e-12, "{} vs {mean}", w1.mean);
        assert!((w1.stdev - var.sqrt()).abs() < 1e-12);
        assert_eq!(w1.window_end_ms, 120_000);
        assert_eq!(w1.window_start_ms, 60_000);
        let pcs = out.pcs.expect("a PCS");
        assert_eq!(pcs.shard_id, "shop/web/web-0");
        assert_eq!(pcs.epoch, 11);
        let leaves: Vec<Vec<u8>> = pts
            .iter()
            .map(|(t, v)| format!("lat|{t}|{v}").into_bytes())
            .collect();
        assert_eq!(pcs.merkle_root, merkle_root_hex(&leaves));
        assert_eq!(
            pcs.pcs_id,
            pcs::pcs_id(&pcs.merkle_root, 11, "shop/web/web-0")
        );
        assert_eq!(
            out.report.report_id,
            report::report_id("shop/web/web-0", 11)
        );
        assert_eq!(e.last_epoch().unwrap().samples, 120);
        // The next epoch starts with no leaves: its root is the empty tree's.
        let next = e.close_epoch(12, 130_000, 130_000);
        assert_eq!(
            next.pcs.unwrap().merkle_root,
            merkle_root_hex::<Vec<u8>>(&[])
        );
    }

    #[test]
    fn too_few_samples_give_no_pcs_and_insufficient_data() {
        let mut e = Engine::new(cfg(""));
        e.ingest(&batch("cpu", &[(1000, 1.0), (2000, 2.0)]), 2000);
        let out = e.close_epoch(0, 10_000, 10_000);
        assert!(out.pcs.is_none());
        assert!(out.pcs_skipped.unwrap().contains("fewer than"));
        assert!(
            out.report
                .windows
                .iter()
                .all(|w| w.drift_risk == DriftRisk::InsufficientData)
        );
    }

    #[test]
    fn non_finite_and_late_samples_are_counted_not_kept() {
        let mut e = Engine::new(cfg(""));
        e.ingest(
            &batch("cpu", &[(400_000, 1.0), (400_001, f64::NAN), (1000, 3.0)]),
            400_001,
        );
        assert_eq!(e.rejections().non_finite, 1);
        assert_eq!(e.rejections().late, 1);
        assert_eq!(e.samples_held(), 2); // one sample, in two windows
    }

    #[test]
    fn the_report_keeps_key_signals_and_the_riskiest_within_its_limit() {
        let mut e = Engine::new(cfg(
            "report: {maxWindows: 4}\npcs: {signal: zeta}\ndetectorSignals: {generic: [zeta]}",
        ));
        for (i, name) in ["a", "b", "c", "zeta"].iter().enumerate() {
            // `b` swings wildly (high risk); the rest are steady.
            let pts: Vec<(i64, f64)> = (1..=30)
                .map(|t| {
                    let v = if *name == "b" {
                        if t % 2 == 0 { 1.0 } else { 100.0 }
                    } else {
                        50.0 + i as f64
                    };
                    (t * 1000, v)
                })
                .collect();
            e.ingest(&batch(name, &pts), 30_000);
        }
        let out = e.close_epoch(2, 30_000, 30_000);
        assert_eq!(out.windows_left_out, 4);
        let names: Vec<(&str, String)> = out
            .report
            .windows
            .iter()
            .map(|w| (w.signal.as_str(), w.window.to_string()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("b", "1m".into()),
                ("b", "5m".into()),
                ("zeta", "1m".into()),
                ("zeta", "5m".into())
            ]
        );
    }

    #[test]
    fn finops_sample_is_the_epoch_mean_priced_by_requests() {
        let mut e = Engine::new(cfg(
            "finops: {qpsSignal: qps, latencySignal: p95, cpuHourUsd: 0.04, cpuRequestCores: 0.5, memoryGibHourUsd: 0.01, memoryRequestGib: 2}",
        ));
        e.ingest(&batch("qps", &[(1000, 100.0), (2000, 300.0)]), 2000);
        e.ingest(&batch("p95", &[(1000, 20.0)]), 2000);
        let out = e.close_epoch(0, 10_000, 10_000);
        let f = out.report.finops[0];
        assert_eq!((f.qps, f.latency_p95_ms), (200.0, 20.0));
        let expected = (0.04 * 0.5 + 0.01 * 2.0) * 10.0 / 3600.0;
        assert!((f.infra_cost_usd - expected).abs() < 1e-15);
        // No qps in the next epoch: no sample rather than a made-up one.
        assert!(e.close_epoch(1, 20_000, 20_000).report.finops.is_empty());
    }

    #[test]
    fn reconfiguring_keeps_samples_of_kept_windows_and_fills_new_ones() {
        let mut e = Engine::new(cfg(""));
        let pts: Vec<(i64, f64)> = (1..=200).map(|t| (t * 1000, t as f64)).collect();
        e.ingest(&batch("x", &pts), 200_000);
        let before = e
            .window_stats("x", "5m".parse().unwrap(), 200_000)
            .unwrap()
            .0;
        let yaml = "identity: {namespace: shop, workload: web, pod: web-0}\nsources: []\nwindows: [5m, 2m]\n";
        e.reconfigure(Arc::new(Config::from_yaml(yaml).unwrap()));
        let after = e
            .window_stats("x", "5m".parse().unwrap(), 200_000)
            .unwrap()
            .0;
        assert_eq!(before, after);
        let two = e
            .window_stats("x", "2m".parse().unwrap(), 200_000)
            .unwrap()
            .0;
        assert_eq!(two.n, 120);
        assert!(
            e.window_stats("x", "1m".parse().unwrap(), 200_000)
                .is_none()
        );
    }
}
