//! Detectors: variance escalation, spike, trend/leak and robust z on one signal, and the
//! seizure, fever and auto-immune patterns across signals of one host.
//!
//! Every detector looks at a detection window of points `(ts_ms, value)` and splits it by count
//! into thirds: the first two thirds are the *baseline*, the last third is *recent*. Findings
//! carry their risk in [0, 1] and the evidence that produced them — inputs, thresholds, the
//! window — so each can be explained and recomputed.
//!
//! The risk of a finding whose statistic `v` exceeds its threshold `t` is
//! `clamp(0.5 + 0.5·(v − t)/t, 0, 1)`: 0.5 right at the threshold, 1 at twice the threshold.
//! The spike and robust-z detectors blend frequency and magnitude instead: with `f` the
//! fraction of recent points beyond the cutoff `c` and `z` the largest excursion,
//! `risk = 0.5·min(1, f/0.2) + 0.5·clamp((z − c)/c, 0, 1)` — a couple of points just past the
//! cutoff stay weak evidence, many far past it are strong.

use crate::stats::{Moments, f_test_p, least_squares, mad, mean_abs_dev, median};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A point of a signal: timestamp (ms since the epoch) and value.
pub type Point = (i64, f64);

/// Detector thresholds; the defaults are those of the design contract (§5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DetectorConfig {
    /// Variance escalation: flag when recent variance / baseline variance exceeds this.
    pub variance_ratio: f64,
    /// Variance escalation: the ratio must also be significant at this level under a one-sided
    /// F test, so ordinary sampling noise in short windows does not flag.
    pub variance_alpha: f64,
    /// Spike: a point above `μ + k·σ` of the baseline is a spike.
    pub spike_sigma: f64,
    /// Spike: a finding needs at least this many spikes in the recent third.
    pub spike_min_count: usize,
    /// Trend/leak: flag when the fitted start→end change exceeds this fraction.
    pub trend_increase: f64,
    /// Trend/leak: the fit must explain at least this much variance (R²).
    pub trend_min_r2: f64,
    /// Robust z: a point with `|0.6745·(x − median)/MAD|` above this is an outlier.
    pub robust_z: f64,
    /// Robust z: a finding needs at least this many outliers in the recent third.
    pub robust_min_count: usize,
    /// Seizure: the recent mean may differ from the baseline mean by at most this fraction.
    pub seizure_mean_tolerance: f64,
    /// Auto-immune: flag when recent requests_out / requests_in exceeds this.
    pub retry_amplification: f64,
    /// Fever: flag when memory grows faster than this many MiB per second.
    pub alloc_velocity_mb_s: f64,
    /// Fewer points than this in the window: no finding.
    pub min_samples: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            variance_ratio: 1.5,
            variance_alpha: 0.0001,
            spike_sigma: 2.5,
            spike_min_count: 3,
            trend_increase: 0.30,
            trend_min_r2: 0.5,
            robust_z: 3.5,
            robust_min_count: 2,
            seizure_mean_tolerance: 0.15,
            retry_amplification: 3.0,
            alloc_velocity_mb_s: 1.0,
            min_samples: 10,
        }
    }
}

impl DetectorConfig {
    /// Checks every threshold; the error names the field and what was expected.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, f64, f64); 8] = [
            ("varianceRatio", self.variance_ratio, 1.0),
            ("spikeSigma", self.spike_sigma, 0.0),
            ("trendIncrease", self.trend_increase, 0.0),
            ("robustZ", self.robust_z, 0.0),
            ("retryAmplification", self.retry_amplification, 0.0),
            ("allocVelocityMbS", self.alloc_velocity_mb_s, 0.0),
            ("seizureMeanTolerance", self.seizure_mean_tolerance, 0.0),
            ("trendMinR2", self.trend_min_r2, -f64::MIN_POSITIVE),
        ];
        for (name, v, above) in checks {
            if !(v.is_finite() && v > above) {
                return Err(format!(
                    "{name}: expected a finite number > {}, got {v}",
                    above.max(0.0)
                ));
            }
        }
        if !(self.variance_alpha > 0.0 && self.variance_alpha < 1.0) {
            return Err(format!(
                "varianceAlpha: expected a number in (0, 1), got {}",
                self.variance_alpha
            ));
        }
        if self.trend_min_r2 > 1.0 {
            return Err(format!(
                "trendMinR2: expected a number in [0, 1], got {}",
                self.trend_min_r2
            ));
        }
        if self.min_samples < 6 {
            return Err(format!(
                "minSamples: expected at least 6, got {}",
                self.min_samples
            ));
        }
        Ok(())
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Recent variance far above the baseline's.
    VarianceEscalation,
    /// Points above the baseline's `μ + kσ`.
    Spike,
    /// A sustained rise (a leak).
    Trend,
    /// Outliers by median and MAD.
    RobustZ,
    /// Compute seizure: CPU variance explodes while its mean holds.
    Seizure,
    /// Memory fever: allocation velocity above the limit.
    Fever,
    /// Auto-immune: a retry storm, outbound requests amplified over inbound.
    AutoImmune,
}

impl FindingKind {
    /// Snake-case name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::VarianceEscalation => "variance_escalation",
            FindingKind::Spike => "spike",
            FindingKind::Trend => "trend",
            FindingKind::RobustZ => "robust_z",
            FindingKind::Seizure => "seizure",
            FindingKind::Fever => "fever",
            FindingKind::AutoImmune => "auto_immune",
        }
    }
}

/// The evidence of a finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// How the statistic was computed.
    pub method: String,
    /// First point of the detection window (ms).
    pub window_start_ms: i64,
    /// Last point of the detection window (ms).
    pub window_end_ms: i64,
    /// Points in the window.
    pub n: usize,
    /// The computed inputs (e.g. `baselineVariance`, `recentVariance`, `ratio`).
    pub inputs: BTreeMap<String, f64>,
    /// The thresholds they were compared with.
    pub thresholds: BTreeMap<String, f64>,
}

/// A detector's finding on one signal (or pattern) of one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What was found.
    pub kind: FindingKind,
    /// The signal(s) it was found on (`requests_out/requests_in` for auto-immune).
    pub signal: String,
    /// When it was found: the end of the detection window (ms).
    pub at_ms: i64,
    /// Risk in [0, 1].
    pub risk: f64,
    /// Why.
    pub evidence: Evidence,
}

/// Risk of `count` of `n` recent points beyond cutoff `c`, the largest at `z_max`.
pub fn frequency_magnitude_risk(count: usize, n: usize, z_max: f64, c: f64) -> f64 {
    let f = if n == 0 { 0.0 } else { count as f64 / n as f64 };
    let magnitude = if c > 0.0 {
        ((z_max - c) / c).clamp(0.0, 1.0)
    } else {
        1.0
    };
    (0.5 * (f / 0.2).min(1.0) + 0.5 * magnitude).clamp(0.0, 1.0)
}

/// Risk of a statistic `v` that exceeds its threshold `t`.
pub fn exceedance_risk(v: f64, t: f64) -> f64 {
    if t <= 0.0 {
        return 1.0;
    }
    (0.5 + 0.5 * (v - t) / t).clamp(0.0, 1.0)
}

struct Split<'a> {
    base: &'a [Point],
    recent: &'a [Point],
}

fn split<'a>(points: &'a [Point], cfg: &DetectorConfig) -> Option<Split<'a>> {
    let n = points.len();
    if n < cfg.min_samples.max(6) {
        return None;
    }
    let third = n / 3;
    Some(Split {
        base: &points[..n - third],
        recent: &points[n - third..],
    })
}

fn values(p: &[Point]) -> Vec<f64> {
    p.iter().map(|&(_, v)| v).collect()
}

fn moments(p: &[Point]) -> Moments {
    Moments::of(p.iter().map(|&(_, v)| v))
}

// A floor for a variance or deviation so a perfectly flat baseline does not divide by zero:
// one millionth of the level, or of 1 for a level of 0.
fn floor_sd(level: f64) -> f64 {
    1e-6 * level.abs().max(1.0)
}

fn finding(
    kind: FindingKind,
    signal: &str,
    points: &[Point],
    risk: f64,
    method: &str,
    inputs: &[(&str, f64)],
    thresholds: &[(&str, f64)],
) -> Finding {
    let map = |kv: &[(&str, f64)]| kv.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    Finding {
        kind,
        signal: signal.to_string(),
        at_ms: points.last().map_or(0, |p| p.0),
        risk,
        evidence: Evidence {
            method: method.to_string(),
            window_start_ms: points.first().map_or(0, |p| p.0),
            window_end_ms: points.last().map_or(0, |p| p.0),
            n: points.len(),
            inputs: map(inputs),
            thresholds: map(thresholds),
        },
    }
}

struct VarianceRatio {
    base: Moments,
    recent: Moments,
    ratio: f64,
    p: f64,
}

impl VarianceRatio {
    fn escalated(&self, cfg: &DetectorConfig) -> bool {
        self.ratio > cfg.variance_ratio && self.p < cfg.variance_alpha
    }
}

fn variance_ratio(s: &Split<'_>) -> VarianceRatio {
    let base = moments(s.base);
    let recent = moments(s.recent);
    let floor = floor_sd(base.mean()).powi(2);
    let ratio = recent.variance() / base.variance().max(floor);
    let p = f_test_p(ratio, (recent.n() - 1) as f64, (base.n() - 1) as f64);
    VarianceRatio {
        base,
        recent,
        ratio,
        p,
    }
}

/// Variance escalation: variance of the recent third over the baseline's.
pub fn variance_escalation(
    signal: &str,
    points: &[Point],
    cfg: &DetectorConfig,
) -> Option<Finding> {
    let s = split(points, cfg)?;
    let v = variance_ratio(&s);
    v.escalated(cfg).then(|| {
        finding(
            FindingKind::VarianceEscalation,
            signal,
            points,
            exceedance_risk(v.ratio, cfg.variance_ratio),
            "sample variance of the last third / sample variance of the first two thirds; one-sided F test",
            &[
                ("baselineVariance", v.base.variance()),
                ("recentVariance", v.recent.variance()),
                ("ratio", v.ratio),
                ("pValue", v.p),
            ],
            &[("varianceRatio", cfg.variance_ratio), ("varianceAlpha", cfg.variance_alpha)],
        )
    })
}

/// Spike: recent points above `μ + k·σ` of the baseline. Needs `spike_min_count` of them; risk
/// by [`frequency_magnitude_risk`] with the excursion in baseline standard deviations.
pub fn spike(signal: &str, points: &[Point], cfg: &DetectorConfig) -> Option<Finding> {
    let s = split(points, cfg)?;
    let b = moments(s.base);
    let sd = b.stdev().max(floor_sd(b.mean()));
    let limit = b.mean() + cfg.spike_sigma * sd;
    let mut count = 0usize;
    let mut z_max = f64::NEG_INFINITY;
    for &(_, x) in s.recent {
        if x > limit {
            count += 1;
        }
        z_max = z_max.max((x - b.mean()) / sd);
    }
    if count < cfg.spike_min_count.max(1) {
        return None;
    }
    let risk = frequency_magnitude_risk(count, s.recent.len(), z_max, cfg.spike_sigma);
    Some(finding(
        FindingKind::Spike,
        signal,
        points,
        risk,
        "points of the last third above mean + k*stdev of the first two thirds",
        &[
            ("baselineMean", b.mean()),
            ("baselineStdev", sd),
            ("limit", limit),
            ("spikes", count as f64),
            ("recentPoints", s.recent.len() as f64),
            ("maxZ", z_max),
        ],
        &[
            ("spikeSigma", cfg.spike_sigma),
            ("spikeMinCount", cfg.spike_min_count as f64),
        ],
    ))
}

struct Trend {
    slope_per_s: f64,
    start: f64,
    end: f64,
    change: f64,
    r2: f64,
}

fn trend_of(points: &[Point]) -> Option<Trend> {
    let t0 = points.first()?.0;
    let xs: Vec<f64> = points
        .iter()
        .map(|&(t, _)| (t - t0) as f64 / 1000.0)
        .collect();
    let ys = values(points);
    let fit = least_squares(&xs, &ys)?;
    let start = fit.at(0.0);
    let end = fit.at(*xs.last()?);
    let level = if start.abs() > 0.0 {
        start.abs()
    } else {
        crate::stats::mean(&ys).abs().max(f64::MIN_POSITIVE)
    };
    Some(Trend {
        slope_per_s: fit.slope,
        start,
        end,
        change: (end - start) / level,
        r2: fit.r2,
    })
}

/// Trend/leak: least-squares line over the window; flag when the fitted start→end change
/// exceeds `trend_increase` and the line explains at least `trend_min_r2` of the variance.
pub fn trend(signal: &str, points: &[Point], cfg: &DetectorConfig) -> Option<Finding> {
    if points.len() < cfg.min_samples {
        return None;
    }
    let t = trend_of(points)?;
    (t.change > cfg.trend_increase && t.r2 >= cfg.trend_min_r2).then(|| {
        finding(
            FindingKind::Trend,
            signal,
            points,
            exceedance_risk(t.change, cfg.trend_increase),
            "least-squares line over the window; change = (fit(end) - fit(start)) / |fit(start)|",
            &[
                ("slopePerSecond", t.slope_per_s),
                ("fittedStart", t.start),
                ("fittedEnd", t.end),
                ("change", t.change),
                ("r2", t.r2),
            ],
            &[
                ("trendIncrease", cfg.trend_increase),
                ("trendMinR2", cfg.trend_min_r2),
            ],
        )
    })
}

/// Robust z: `0.6745·(x − median)/MAD` of recent points against the baseline's median and MAD
/// (when MAD is 0, `(x − median)/(1.253314·meanAbsDev)`, Iglewicz and Hoaglin's fallback; when
/// that is 0 too, no finding). Needs `robust_min_count` outliers above `robust_z`; risk by
/// [`frequency_magnitude_risk`].
pub fn robust_z(signal: &str, points: &[Point], cfg: &DetectorConfig) -> Option<Finding> {
    let s = split(points, cfg)?;
    let base = values(s.base);
    let med = median(&base)?;
    let m = mad(&base, med);
    let scale = if m > 0.0 {
        m / 0.6745
    } else {
        let mean_ad = mean_abs_dev(&base, med);
        if mean_ad == 0.0 {
            return None;
        }
        1.253_314 * mean_ad
    };
    let mut count = 0usize;
    let mut z_max = 0.0f64;
    for &(_, x) in s.recent {
        let z = ((x - med) / scale).abs();
        if z > cfg.robust_z {
            count += 1;
        }
        z_max = z_max.max(z);
    }
    (count >= cfg.robust_min_count.max(1)).then(|| {
        finding(
            FindingKind::RobustZ,
            signal,
            points,
            frequency_magnitude_risk(count, s.recent.len(), z_max, cfg.robust_z),
            "|0.6745*(x - median)/MAD| of the last third against the first two thirds",
            &[
                ("median", med),
                ("mad", m),
                ("outliers", count as f64),
                ("maxZ", z_max),
            ],
            &[
                ("robustZ", cfg.robust_z),
                ("robustMinCount", cfg.robust_min_count as f64),
            ],
        )
    })
}

/// Seizure: variance escalation of CPU (ratio and F test as in [`variance_escalation`]) while
/// its mean holds within `seizure_mean_tolerance`.
pub fn seizure(cpu: &[Point], cfg: &DetectorConfig) -> Option<Finding> {
    let s = split(cpu, cfg)?;
    let v = variance_ratio(&s);
    let shift = (v.recent.mean() - v.base.mean()).abs() / v.base.mean().abs().max(floor_sd(0.0));
    (v.escalated(cfg) && shift <= cfg.seizure_mean_tolerance).then(|| {
        finding(
            FindingKind::Seizure,
            "cpu",
            cpu,
            exceedance_risk(v.ratio, cfg.variance_ratio),
            "cpu variance of the last third / first two thirds, with |mean shift| / |baseline mean| small",
            &[
                ("baselineVariance", v.base.variance()),
                ("recentVariance", v.recent.variance()),
                ("ratio", v.ratio),
                ("pValue", v.p),
                ("baselineMean", v.base.mean()),
                ("recentMean", v.recent.mean()),
                ("meanShift", shift),
            ],
            &[
                ("varianceRatio", cfg.variance_ratio),
                ("varianceAlpha", cfg.variance_alpha),
                ("seizureMeanTolerance", cfg.seizure_mean_tolerance),
            ],
        )
    })
}

/// Fever: memory allocation velocity (least-squares slope of `memory_mb`, MiB/s) above the
/// limit, with the line explaining at least `trend_min_r2` of the variance.
pub fn fever(memory_mb: &[Point], cfg: &DetectorConfig) -> Option<Finding> {
    if memory_mb.len() < cfg.min_samples {
        return None;
    }
    let t = trend_of(memory_mb)?;
    (t.slope_per_s > cfg.alloc_velocity_mb_s && t.r2 >= cfg.trend_min_r2).then(|| {
        finding(
            FindingKind::Fever,
            "memory_mb",
            memory_mb,
            exceedance_risk(t.slope_per_s, cfg.alloc_velocity_mb_s),
            "least-squares slope of memory_mb over the window, MiB per second",
            &[
                ("velocityMbPerS", t.slope_per_s),
                ("fittedStart", t.start),
                ("fittedEnd", t.end),
                ("r2", t.r2),
            ],
            &[
                ("allocVelocityMbS", cfg.alloc_velocity_mb_s),
                ("trendMinR2", cfg.trend_min_r2),
            ],
        )
    })
}

/// Auto-immune: the recent third's Σ requests_out / Σ requests_in above the limit (a retry
/// storm). The two series must be sampled at the same times.
pub fn auto_immune(
    requests_in: &[Point],
    requests_out: &[Point],
    cfg: &DetectorConfig,
) -> Option<Finding> {
    let n = requests_in.len().min(requests_out.len());
    let s_in = split(&requests_in[..n], cfg)?;
    let s_out = split(&requests_out[..n], cfg)?;
    let sum = |p: &[Point]| p.iter().map(|&(_, v)| v).sum::<f64>();
    let (rin, rout) = (sum(s_in.recent), sum(s_out.recent));
    if rin <= 0.0 {
        return None;
    }
    let amp = rout / rin;
    let base_in = sum(s_in.base);
    let base_amp = if base_in > 0.0 {
        sum(s_out.base) / base_in
    } else {
        f64::NAN
    };
    (amp > cfg.retry_amplification).then(|| {
        finding(
            FindingKind::AutoImmune,
            "requests_out/requests_in",
            &requests_in[..n],
            exceedance_risk(amp, cfg.retry_amplification),
            "sum(requests_out) / sum(requests_in) over the last third of the window",
            &[
                ("amplification", amp),
                ("baselineAmplification", base_amp),
                ("requestsIn", rin),
                ("requestsOut", rout),
            ],
            &[("retryAmplification", cfg.retry_amplification)],
        )
    })
}

/// Which signals feed which detectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DetectorSignals {
    /// Signals that get the generic detectors (variance escalation, spike, trend, robust z).
    pub generic: Vec<String>,
    /// CPU signal for the seizure pattern.
    pub cpu: String,
    /// Memory signal (MiB) for the fever pattern.
    pub memory_mb: String,
    /// Inbound request count for the auto-immune pattern.
    pub requests_in: String,
    /// Outbound request count for the auto-immune pattern.
    pub requests_out: String,
}

impl Default for DetectorSignals {
    fn default() -> Self {
        Self {
            generic: vec![
                "latency_p95_ms".into(),
                "cpu".into(),
                "memory_mb".into(),
                "qps".into(),
            ],
            cpu: "cpu".into(),
            memory_mb: "memory_mb".into(),
            requests_in: "requests_in".into(),
            requests_out: "requests_out".into(),
        }
    }
}

/// Runs every detector on one detection window of one host's signals (each slice sorted by time).
pub fn detect_window(
    series: &BTreeMap<&str, &[Point]>,
    signals: &DetectorSignals,
    cfg: &DetectorConfig,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for name in &signals.generic {
        if let Some(&pts) = series.get(name.as_str()) {
            out.extend(variance_escalation(name, pts, cfg));
            out.extend(spike(name, pts, cfg));
            out.extend(trend(name, pts, cfg));
            out.extend(robust_z(name, pts, cfg));
        }
    }
    if let Some(&cpu) = series.get(signals.cpu.as_str()) {
        out.extend(seizure(cpu, cfg));
    }
    if let Some(&mem) = series.get(signals.memory_mb.as_str()) {
        out.extend(fever(mem, cfg));
    }
    if let (Some(&rin), Some(&rout)) = (
        series.get(signals.requests_in.as_str()),
        series.get(signals.requests_out.as_str()),
    ) {
        out.extend(auto_immune(rin, rout, cfg));
    }
    out
}

/// How a whole series is scanned: a detection window of `window_ms` evaluated every `step_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanSchedule {
    /// Length of the detection window.
    pub window_ms: i64,
    /// Time between evaluations.
    pub step_ms: i64,
}

impl Default for ScanSchedule {
    /// A 15-minute window every 5 minutes, so each recent third is examined exactly once.
    fn default() -> Self {
        Self {
            window_ms: 15 * 60_000,
            step_ms: 5 * 60_000,
        }
    }
}

/// Scans one host's full series (each sorted by time): the detection window `(t − w, t]` is
/// evaluated at `t = first + w, first + w + step, …` and once more at the last sample.
pub fn scan(
    series: &BTreeMap<String, Vec<Point>>,
    signals: &DetectorSignals,
    cfg: &DetectorConfig,
    schedule: ScanSchedule,
) -> Vec<Finding> {
    let first = series.values().filter_map(|v| v.first().map(|p| p.0)).min();
    let last = series.values().filter_map(|v| v.last().map(|p| p.0)).max();
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    let step = schedule.step_ms.max(1);
    let mut ends = Vec::new();
    let mut t = first + schedule.window_ms;
    while t < last {
        ends.push(t);
        t += step;
    }
    ends.push(last);
    let mut out = Vec::new();
    // Each series' window bounds only move forward, so they are advanced, not searched.
    let mut bounds: Vec<(usize, usize)> = vec![(0, 0); series.len()];
    for end in ends {
        let view: BTreeMap<&str, &[Point]> = series
            .iter()
            .zip(bounds.iter_mut())
            .map(|((k, v), (lo, hi))| {
                while *hi < v.len() && v[*hi].0 <= end {
                    *hi += 1;
                }
                while *lo < *hi && v[*lo].0 <= end - schedule.window_ms {
                    *lo += 1;
                }
                (k.as_str(), &v[*lo..*hi])
            })
            .collect();
        out.extend(detect_window(&view, signals, cfg));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rng::SplitMix64;

    fn series(n: usize, f: impl Fn(usize, &mut SplitMix64) -> f64) -> Vec<Point> {
        let mut r = SplitMix64::new(9);
        (0..n).map(|i| (i as i64 * 10_000, f(i, &mut r))).collect()
    }

    #[test]
    fn calm_noise_triggers_nothing() {
        let cfg = DetectorConfig::default();
        let pts = series(90, |_, r| 100.0 + 2.0 * r.normal());
        assert!(variance_escalation("x", &pts, &cfg).is_none());
        assert!(trend("x", &pts, &cfg).is_none());
        assert!(spike("x", &pts, &cfg).is_none());
        assert!(robust_z("x", &pts, &cfg).is_none());
    }

    #[test]
    fn variance_escalation_and_seizure() {
        let cfg = DetectorConfig::default();
        let pts = series(90, |i, r| {
            if i < 60 {
                50.0 + r.normal()
            } else {
                50.0 + 20.0 * r.normal()
            }
        });
        let f = variance_escalation("cpu", &pts, &cfg).unwrap();
        assert!(f.evidence.inputs["ratio"] > 100.0);
        assert_eq!(f.risk, 1.0);
        let s = seizure(&pts, &cfg).unwrap();
        assert_eq!(s.kind, FindingKind::Seizure);
        // A mean that moves is not a seizure.
        let moved = series(90, |i, r| {
            if i < 60 {
                50.0 + r.normal()
            } else {
                80.0 + 20.0 * r.normal()
            }
        });
        assert!(seizure(&moved, &cfg).is_none());
        assert!(variance_escalation("cpu", &moved, &cfg).is_some());
    }

    #[test]
    fn risk_rises_with_the_excess() {
        assert_eq!(exceedance_risk(1.5, 1.5), 0.5);
        assert_eq!(exceedance_risk(3.0, 1.5), 1.0);
        assert!(exceedance_risk(2.0, 1.5) > 0.5 && exceedance_risk(2.0, 1.5) < 1.0);
        // Two points just past the cutoff are weak; a third of the points far past it is strong.
        assert!(frequency_magnitude_risk(2, 30, 3.6, 3.5) < 0.2);
        assert_eq!(frequency_magnitude_risk(10, 30, 7.0, 3.5), 1.0);
        assert_eq!(frequency_magnitude_risk(0, 0, 0.0, 3.5), 0.0);
    }

    #[test]
    fn spikes_and_outliers() {
        let cfg = DetectorConfig::default();
        let pts = series(90, |i, r| {
            100.0 + r.normal() + if [70, 75, 80].contains(&i) { 30.0 } else { 0.0 }
        });
        let f = spike("latency", &pts, &cfg).unwrap();
        assert_eq!(f.evidence.inputs["spikes"], 3.0);
        let z = robust_z("latency", &pts, &cfg).unwrap();
        assert_eq!(z.evidence.inputs["outliers"], 3.0);
        // Two spikes are below the minimum count.
        let two = series(90, |i, r| {
            100.0 + r.normal() + if [70, 75].contains(&i) { 30.0 } else { 0.0 }
        });
        assert!(spike("latency", &two, &cfg).is_none());
    }

    #[test]
    fn trend_and_fever() {
        let cfg = DetectorConfig::default();
        let leak = series(90, |i, r| 1000.0 + 16.0 * i as f64 + 2.0 * r.normal());
        let f = fever(&leak, &cfg).unwrap();
        assert!((f.evidence.inputs["velocityMbPerS"] - 1.6).abs() < 0.01);
        let t = trend("memory_mb", &leak, &cfg).unwrap();
        assert!(t.evidence.inputs["change"] > 1.0);
        let slow = series(90, |i, r| 1000.0 + 0.5 * i as f64 + 2.0 * r.normal());
        assert!(fever(&slow, &cfg).is_none());
        assert!(trend("memory_mb", &slow, &cfg).is_none());
    }

    #[test]
    fn retry_storm() {
        let cfg = DetectorConfig::default();
        let rin = series(90, |_, _| 1000.0);
        let rout = series(90, |i, _| if i < 60 { 1300.0 } else { 5000.0 });
        let f = auto_immune(&rin, &rout, &cfg).unwrap();
        assert_eq!(f.evidence.inputs["amplification"], 5.0);
        assert!((f.evidence.inputs["baselineAmplification"] - 1.3).abs() < 1e-12);
        assert!(auto_immune(&rin, &series(90, |_, _| 1300.0), &cfg).is_none());
    }

    #[test]
    fn too_few_points_never_flag() {
        let cfg = DetectorConfig::default();
        let pts = series(9, |i, _| if i < 6 { 1.0 } else { 1000.0 * i as f64 });
        assert!(variance_escalation("x", &pts, &cfg).is_none());
        assert!(spike("x", &pts, &cfg).is_none());
        assert!(trend("x", &pts, &cfg).is_none());
        assert!(
            DetectorConfig {
                variance_ratio: f64::NAN,
                ..cfg
            }
            .validate()
            .unwrap_err()
            .starts_with("varianceRatio")
        );
        assert!(cfg.validate().is_ok());
    }
}
