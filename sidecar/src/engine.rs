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
    /// Σ value × seconds since the previous sample of the epoch's samples: for a rate (a
    /// counter scraped as per-second rates), how much the counter grew in the epoch.
    epoch_integral: f64,
    /// Time of the newest sample taken.
    last_ts: Option<i64>,
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
    /// The epoch's FinOps sample and how its latency was made.
    pub finops: Option<FinopsExplain>,
}

/// A FinOps sample with how its figures were made (`/status` `lastEpoch.finops`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FinopsExplain {
    /// Requests per second: the epoch mean of `finops.qpsSignal`.
    pub qps: f64,
    /// p95 latency, ms.
    pub latency_p95_ms: f64,
    /// How the latency was made: a histogram's p95 or a gauge's epoch mean.
    pub latency_method: String,
    /// Observations the histogram counted in the epoch (histograms only).
    pub latency_observations: Option<f64>,
    /// Cost of the epoch, USD.
    pub infra_cost_usd: f64,
}

/// The quantile the FinOps latency is taken at.
pub const LATENCY_QUANTILE: f64 = 0.95;

/// PromQL's `histogram_quantile(q, …)` over cumulative bucket counts `(le, count)` (any
/// order): the bucket where the rank `q × total` falls, and linear interpolation within it
/// (from 0 for the first bucket when its bound is positive). A rank in the `+Inf` bucket gives
/// the highest finite bound. Counts that go down with `le` are raised to the running maximum,
/// as PromQL does. `None` without a `+Inf` bucket, with fewer than two buckets, or with no
/// observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    if b.len() < 2 || b.last().map(|x| x.0) != Some(f64::INFINITY) {
        return None;
    }
    let mut max = 0.0f64;
    for x in &mut b {
        max = max.max(x.1);
        x.1 = max;
    }
    let total = b.last()?.1;
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let rank = q * total;
    let i = b.iter().position(|x| x.1 >= rank)?;
    if i == b.len() - 1 {
        return Some(b[b.len() - 2].0);
    }
    let (end, count) = b[i];
    if i == 0 && end <= 0.0 {
        return Some(end);
    }
    let (start, before) = if i == 0 { (0.0, 0.0) } else { b[i - 1] };
    let inside = count - before;
    if inside <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank - before) / inside)
}

/// The value of the `le` label in a signal name such as `x_bucket{code="200",le="0.25"}`.
fn le_of(name: &str) -> Option<f64> {
    let labels = &name[name.find('{')?..];
    let at = labels.find("{le=\"").or_else(|| labels.find(",le=\""))?;
    let rest = &labels[at + 5..];
    let v = &rest[..rest.find('"')?];
    match v {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        _ => v.parse().ok(),
    }
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
                    epoch_integral: 0.0,
                    last_ts: None,
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
        if let Some(prev) = st.last_ts {
            if s.ts_ms > prev {
                st.epoch_integral += s.value * (s.ts_ms - prev) as f64 / 1000.0;
            }
        }
        st.last_ts = Some(st.last_ts.map_or(s.ts_ms, |p| p.max(s.ts_ms)));
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
        let (finops, finops_explain) = match self.finops_sample(end_ms) {
            Some((sample, explain)) => (vec![sample], Some(explain)),
            None => (Vec::new(), None),
        };
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
            st.epoch_integral = 0.0;
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
            finops: finops_explain,
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

    fn epoch_mean(&self, name: &str) -> Option<f64> {
        self.signals
            .get(name)
            .filter(|s| s.epoch_n > 0)
            .map(|s| s.epoch_sum / s.epoch_n as f64)
    }

    /// The epoch's p95 latency in ms, how it was made, and the observations counted: from the
    /// histogram `<family>_bucket{…,le="…"}` when the sources yield its buckets, else the epoch
    /// mean of the signal (a gauge that already holds a p95).
    fn latency_p95(&self, signal: &str) -> Option<(f64, String, Option<f64>)> {
        let family = signal.strip_suffix("_bucket").unwrap_or(signal);
        let prefix = format!("{family}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let mut series = 0usize;
        for (name, st) in self.signals.range(prefix.clone()..) {
            if !name.starts_with(&prefix) {
                break;
            }
            let Some(le) = le_of(name) else { continue };
            series += 1;
            match buckets.iter_mut().find(|b| b.0 == le) {
                Some(b) => b.1 += st.epoch_integral,
                None => buckets.push((le, st.epoch_integral)),
            }
        }
        if series == 0 {
            let mean = self.epoch_mean(signal)?;
            return Some((
                mean,
                format!(
                    "epoch mean of {signal}, a gauge taken to hold a p95 in ms already (no {prefix}le=…}} histogram buckets)"
                ),
                None,
            ));
        }
        let total = buckets
            .iter()
            .filter(|b| b.0 == f64::INFINITY)
            .map(|b| b.1)
            .sum::<f64>();
        let q = histogram_quantile(LATENCY_QUANTILE, &buckets)?;
        let (scale, unit) = if family.ends_with("_seconds") {
            (1000.0, "seconds × 1000")
        } else {
            (1.0, "taken as ms")
        };
        Some((
            q * scale,
            format!(
                "p95 of histogram {family} over the epoch: count deltas of {n} bucket series (rate × seconds between scrapes) summed by le into {b} buckets, linear interpolation within the bucket as PromQL histogram_quantile; {unit}",
                n = series,
                b = buckets.len(),
            ),
            Some(total),
        ))
    }

    fn finops_sample(&self, end_ms: i64) -> Option<(FinopsSample, FinopsExplain)> {
        let f = self.cfg.finops.as_ref()?;
        let qps = self.epoch_mean(&f.qps_signal)?;
        let (latency, method, observations) = self.latency_p95(&f.latency_signal)?;
        let hours = self.cfg.epoch.get().as_secs_f64() / 3600.0;
        let cost = f.cost_per_hour()? * hours;
        Some((
            FinopsSample {
                at_ms: end_ms,
                qps,
                latency_p95_ms: latency,
                infra_cost_usd: cost,
            },
            FinopsExplain {
                qps,
                latency_p95_ms: latency,
                latency_method: method,
                latency_observations: observations,
                infra_cost_usd: cost,
            },
        ))
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
    fn histogram_quantile_interpolates_within_the_bucket_like_promql() {
        let inf = f64::INFINITY;
        let b = [
            (0.25, 80.0),
            (0.1, 50.0),
            (0.5, 95.0),
            (1.0, 100.0),
            (inf, 100.0),
        ];
        // Rank 90 falls in (0.25, 0.5], 10 of its 15: 0.25 + 0.25 × 10/15.
        let q90 = histogram_quantile(0.9, &b).unwrap();
        assert!((q90 - (0.25 + 0.25 * 10.0 / 15.0)).abs() < 1e-12, "{q90}");
        assert_eq!(histogram_quantile(0.95, &b), Some(0.5));
        // In the first bucket: from 0. In +Inf: the highest finite bound.
        let first = histogram_quantile(0.95, &[(0.1, 100.0), (inf, 100.0)]).unwrap();
        assert!((first - 0.095).abs() < 1e-12);
        assert_eq!(
            histogram_quantile(0.95, &[(0.1, 10.0), (inf, 100.0)]),
            Some(0.1)
        );
        // Counts going down are raised to the running maximum.
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 10.0), (2.0, 8.0), (inf, 10.0)]),
            Some(0.5)
        );
        assert_eq!(histogram_quantile(0.95, &[(0.1, 10.0), (1.0, 20.0)]), None);
        assert_eq!(histogram_quantile(0.95, &[(0.1, 0.0), (inf, 0.0)]), None);
        assert_eq!(histogram_quantile(0.95, &[(inf, 5.0)]), None);
        assert_eq!(le_of("x_bucket{code=\"200\",le=\"0.25\"}"), Some(0.25));
        assert_eq!(le_of("x_bucket{le=\"+Inf\"}"), Some(inf));
        assert_eq!(le_of("x_bucket{handle=\"a\"}"), None);
    }

    #[test]
    fn finops_latency_is_the_p95_of_the_epochs_histogram_bucket_deltas() {
        let mut e = Engine::new(cfg(
            "finops: {qpsSignal: qps, latencySignal: http_request_duration_seconds, costPerReplicaHourUsd: 0.36}",
        ));
        // Two handlers' buckets, as the prometheus source names them: per-second rates.
        let le = ["0.05", "0.1", "0.25", "0.5", "+Inf"];
        // Rates per second of each cumulative bucket, two series; the counts grow by rate × Δt.
        let rates: [[f64; 5]; 2] = [
            [10.0, 30.0, 40.0, 45.0, 50.0],
            [0.0, 10.0, 20.0, 28.0, 30.0],
        ];
        for (h, r) in rates.iter().enumerate() {
            for (i, l) in le.iter().enumerate() {
                let name =
                    format!("http_request_duration_seconds_bucket{{handler=\"h{h}\",le=\"{l}\"}}");
                // The first sample opens the series (its interval is unknown), then 1 s and 2 s.
                e.ingest(
                    &batch(&name, &[(1000, 99.0), (2000, r[i]), (4000, r[i])]),
                    4000,
                );
            }
        }
        e.ingest(&batch("qps", &[(1000, 80.0), (4000, 80.0)]), 4000);
        let out = e.close_epoch(0, 10_000, 10_000);
        let f = out.report.finops[0];
        // Deltas over 3 s: cumulative counts by le 30, 120, 180, 219, 240. Rank 0.95 × 240 = 228
        // falls in (0.5, +Inf]: the highest finite bound, 0.5 s.
        assert_eq!(f.latency_p95_ms, 500.0);
        let x = e.last_epoch().unwrap().finops.clone().unwrap();
        assert!(
            x.latency_method
                .starts_with("p95 of histogram http_request_duration_seconds"),
            "{}",
            x.latency_method
        );
        assert_eq!(x.latency_observations, Some(240.0));

        // The next epoch, with the rank inside a finite bucket: rates 30, 120, 180, 240, 240
        // (counts in the same proportions): rank 0.95 × 240 = 228 in (0.25, 0.5]:
        // 0.25 + 0.25 × (228 − 180)/60 = 0.45 s.
        let rates: [f64; 5] = [30.0, 120.0, 180.0, 240.0, 240.0];
        for (i, l) in le.iter().enumerate() {
            let name = format!("http_request_duration_seconds_bucket{{handler=\"h0\",le=\"{l}\"}}");
            e.ingest(&batch(&name, &[(11_000, rates[i])]), 11_000);
            let other =
                format!("http_request_duration_seconds_bucket{{handler=\"h1\",le=\"{l}\"}}");
            e.ingest(&batch(&other, &[(11_000, 0.0)]), 11_000);
        }
        e.ingest(&batch("qps", &[(11_000, 80.0)]), 11_000);
        // 7 s since the previous sample: the deltas are rate × 7.
        let f = e.close_epoch(1, 20_000, 20_000).report.finops[0];
        assert!(
            (f.latency_p95_ms - 450.0).abs() < 1e-9,
            "{}",
            f.latency_p95_ms
        );

        // A gauge is taken as it is, and says so.
        let mut g = Engine::new(cfg(
            "finops: {qpsSignal: qps, latencySignal: p95_ms, costPerReplicaHourUsd: 0.36}",
        ));
        g.ingest(&batch("qps", &[(1000, 10.0)]), 1000);
        g.ingest(&batch("p95_ms", &[(1000, 20.0), (2000, 40.0)]), 2000);
        assert_eq!(
            g.close_epoch(0, 10_000, 10_000).report.finops[0].latency_p95_ms,
            30.0
        );
        let x = g.last_epoch().unwrap().finops.clone().unwrap();
        assert!(
            x.latency_method
                .starts_with("epoch mean of p95_ms, a gauge"),
            "{}",
            x.latency_method
        );
        assert_eq!(x.latency_observations, None);
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
