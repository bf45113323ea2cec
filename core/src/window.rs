//! Rolling windows over sample timestamps, their statistics and drift risk.
//!
//! A window of span `w` ending at `t` holds the samples with `t − w < ts ≤ t` (the same
//! half-open interval as pandas' `rolling("1h")`). Updates are O(1) amortised and need no
//! division: the window keeps shifted sums `S1 = Σ(x − K)` and `S2 = Σ(x − K)²` around a centre
//! `K` close to the mean, so `μ = K + S1/n` and `σ² = (S2 − S1²/n)/(n − 1)` lose no digits to
//! cancellation. A push and the evictions it causes update each sum once
//! (`S1 += (x − K) − Σ(y − K)` over the evicted `y`), and a window left with only the new sample
//! starts again from it. The sums are recomputed from the buffer once for every `len` evictions
//! around the current mean (rounding cannot accumulate over a long stream), and around the exact
//! mean (two passes) when the evicted samples carried more than half of `S2` (an outlier leaving)
//! or when the mean has wandered more than four standard deviations from `K`. The drift risk is
//! read without a division or square root.

use crate::stats::volatility_index;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

mod rows;
pub use rows::{BLOCK_ROWS, RollingRisk, default_threads, rolling_risk, rolling_rows_par_into};

/// Shifted sums of a window: `n`, `Σ(x − k)`, `Σ(x − k)²`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ShiftedSums {
    n: u64,
    k: f64,
    s1: f64,
    s2: f64,
}

// `Σx` of the values of a slice of samples, in four interleaved partial sums (so the additions
// pipeline; the rounding error is no larger than one running sum's).
fn sum4(samples: &[(i64, f64)]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = samples.chunks_exact(4);
    for c in &mut chunks {
        for j in 0..4 {
            acc[j] += c[j].1;
        }
    }
    let mut tail = 0.0;
    for &(_, x) in chunks.remainder() {
        tail += x;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

// `(Σ(x − k), Σ(x − k)²)` of the values of a slice of samples, in four interleaved partial sums
// each.
fn shifted4(samples: &[(i64, f64)], k: f64) -> (f64, f64) {
    let (mut a1, mut a2) = ([0.0f64; 4], [0.0f64; 4]);
    let mut chunks = samples.chunks_exact(4);
    for c in &mut chunks {
        for j in 0..4 {
            let d = c[j].1 - k;
            a1[j] += d;
            a2[j] += d * d;
        }
    }
    let (mut t1, mut t2) = (0.0, 0.0);
    for &(_, x) in chunks.remainder() {
        let d = x - k;
        t1 += d;
        t2 += d * d;
    }
    (
        (a1[0] + a1[1]) + (a1[2] + a1[3]) + t1,
        (a2[0] + a2[1]) + (a2[2] + a2[3]) + t2,
    )
}

impl ShiftedSums {
    // The sums of the values in `parts` (one window's samples, in up to two pieces) recomputed
    // from scratch around `centre`, or around their own mean (an extra pass) when `centre` is
    // `None`.
    fn recomputed(parts: [&[(i64, f64)]; 2], centre: Option<f64>) -> Self {
        let n = (parts[0].len() + parts[1].len()) as u64;
        if n == 0 {
            return Self::default();
        }
        let k = centre.unwrap_or_else(|| (sum4(parts[0]) + sum4(parts[1])) / n as f64);
        let (a1, a2) = shifted4(parts[0], k);
        let (b1, b2) = shifted4(parts[1], k);
        Self {
            n,
            k,
            s1: a1 + b1,
            s2: a2 + b2,
        }
    }

    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.k + self.s1 / self.n as f64
        }
    }

    // Σ(x − μ)², never negative.
    fn m2(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.s2 - self.s1 * self.s1 / self.n as f64).max(0.0)
        }
    }

    fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2() / (self.n - 1) as f64
        }
    }

    // The mean is more than four standard deviations from the centre, `17·S1² > 16·n·S2`, and
    // further from it than rounding, `|S1| > n·OFF_CENTRE_FLOOR·|K|` (looked at only then).
    #[inline(always)]
    fn off_centre(&self) -> bool {
        let (n, q) = ((self.n as i64) as f64, self.s1 * self.s1);
        17.0 * q > 16.0 * n * self.s2 && {
            let floor = n * OFF_CENTRE_FLOOR * self.k;
            q > floor * floor
        }
    }
}

/// Below this fraction of the centre `K`, a distance between the mean and `K` is rounding, not
/// drift: `|S1/n| ≤ 2⁻³²·|K|` never triggers a recomputation, or a window of equal values whose
/// mean does not come out exactly would be recomputed at every sample.
const OFF_CENTRE_FLOOR: f64 = 1.0 / 4_294_967_296.0;

/// The samples of a window, oldest first, as `(timestamp, value)` in a ring whose capacity is a
/// power of two, so a position wraps with a mask.
#[derive(Debug, Clone, Default)]
struct Ring {
    buf: Vec<(i64, f64)>,
    head: usize,
    len: usize,
}

impl Ring {
    // Storage index of the `i`-th oldest sample (`i < len`).
    #[inline(always)]
    fn slot(&self, i: usize) -> usize {
        (self.head + i) & (self.buf.len() - 1)
    }

    fn get(&self, i: usize) -> (i64, f64) {
        self.buf[self.slot(i)]
    }

    #[inline(always)]
    fn back_ts(&self) -> Option<i64> {
        (self.len > 0).then(|| self.buf[self.slot(self.len - 1)].0)
    }

    #[inline(always)]
    fn push_back(&mut self, ts: i64, value: f64) {
        if self.len == self.buf.len() {
            self.grow();
        }
        let p = self.slot(self.len);
        self.buf[p] = (ts, value);
        self.len += 1;
    }

    // The oldest sample, removed, if its timestamp is at or before `cutoff`.
    #[inline(always)]
    fn pop_front_until(&mut self, cutoff: i64) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let (t, v) = self.buf[self.head];
        if t > cutoff {
            return None;
        }
        self.head = (self.head + 1) & (self.buf.len() - 1);
        self.len -= 1;
        Some(v)
    }

    #[cold]
    fn grow(&mut self) {
        let cap = (2 * self.buf.len()).max(16);
        let mut buf = Vec::with_capacity(cap);
        buf.extend((0..self.len).map(|i| self.get(i)));
        buf.resize(cap, (0, 0.0));
        (self.buf, self.head) = (buf, 0);
    }

    // Inserts a sample after every sample with a timestamp at or before `ts`.
    #[cold]
    #[inline(never)]
    fn insert_sorted(&mut self, ts: i64, value: f64) {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).0 <= ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.push_back(ts, value);
        for i in (lo + 1..self.len).rev() {
            let (p, q) = (self.slot(i - 1), self.slot(i));
            self.buf.swap(p, q);
        }
    }

    // The samples, oldest first, in at most two pieces.
    fn pieces(&self) -> [&[(i64, f64)]; 2] {
        let cap = self.buf.len();
        if self.head + self.len <= cap {
            [&self.buf[self.head..self.head + self.len], &[]]
        } else {
            [
                &self.buf[self.head..],
                &self.buf[..self.head + self.len - cap],
            ]
        }
    }
}

/// Default minimum number of samples before a window's risk is assessed.
pub const DEFAULT_MIN_SAMPLES: u64 = 10;

/// The span of a window, parsed from `Ns`, `Nm`, `Nh` or `Nd` (e.g. `5m`, `1h`, `24h`, `90s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowSpan {
    ms: i64,
}

/// A window span that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("window: expected a positive duration like 90s, 5m, 1h or 7d, got {0:?}")]
pub struct SpanError(pub String);

impl WindowSpan {
    /// A span of whole seconds (at least one).
    pub fn from_secs(secs: u64) -> Result<Self, SpanError> {
        let ms = i64::try_from(secs).ok().and_then(|s| s.checked_mul(1000));
        match ms {
            Some(ms) if ms > 0 => Ok(Self { ms }),
            _ => Err(SpanError(format!("{secs}s"))),
        }
    }

    /// Length in milliseconds.
    pub fn as_millis(&self) -> i64 {
        self.ms
    }
}

impl FromStr for WindowSpan {
    type Err = SpanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SpanError(s.to_string());
        let t = s.trim();
        // The unit is the last character, which may be any character (not always one byte).
        let unit = t.chars().next_back().ok_or_else(err)?;
        let digits = &t[..t.len() - unit.len_utf8()];
        let mult: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        let secs = n.checked_mul(mult).ok_or_else(err)?;
        Self::from_secs(secs).map_err(|_| err())
    }
}

impl fmt::Display for WindowSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.ms / 1000;
        if self.ms % 1000 != 0 {
            write!(f, "{}ms", self.ms)
        } else if s % 86_400 == 0 {
            write!(f, "{}d", s / 86_400)
        } else if s % 3600 == 0 {
            write!(f, "{}h", s / 3600)
        } else if s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl Serialize for WindowSpan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WindowSpan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a sample was not taken into a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// NaN or ±infinity.
    #[error("value: expected a finite number")]
    NonFinite,
    /// Older than the window that already ended.
    #[error("ts: sample is older than the window")]
    Late,
}

/// A rolling window over sample timestamps.
#[derive(Debug, Clone)]
pub struct RollingWindow {
    span: WindowSpan,
    samples: Ring,
    sums: ShiftedSums,
    // The newest timestamp seen; i64::MIN before the first.
    end_ms: i64,
    evictions_since_exact: usize,
    rejected_non_finite: u64,
    rejected_late: u64,
}

impl RollingWindow {
    /// An empty window of the given span.
    pub fn new(span: WindowSpan) -> Self {
        Self {
            span,
            samples: Ring::default(),
            sums: ShiftedSums::default(),
            end_ms: i64::MIN,
            evictions_since_exact: 0,
            rejected_non_finite: 0,
            rejected_late: 0,
        }
    }

    /// The window's span.
    pub fn span(&self) -> WindowSpan {
        self.span
    }

    /// Adds a sample; the window's end moves to the newest timestamp seen. Samples that arrive
    /// out of order but still inside the window are kept; older ones are rejected as late.
    #[inline]
    pub fn push(&mut self, ts_ms: i64, value: f64) -> Result<(), Rejected> {
        if !value.is_finite() {
            return Err(self.reject(Rejected::NonFinite));
        }
        let end = self.end_ms.max(ts_ms);
        let cutoff = end - self.span.ms;
        if ts_ms <= cutoff {
            return Err(self.reject(Rejected::Late));
        }
        if self.samples.back_ts().is_some_and(|last| ts_ms < last) {
            self.samples.insert_sorted(ts_ms, value);
        } else {
            self.samples.push_back(ts_ms, value);
        }
        self.end_ms = end;
        self.settle(Some(value), cutoff);
        Ok(())
    }

    #[cold]
    fn reject(&mut self, why: Rejected) -> Rejected {
        match why {
            Rejected::NonFinite => self.rejected_non_finite += 1,
            Rejected::Late => self.rejected_late += 1,
        }
        why
    }

    /// Moves the window's end to `now_ms` (never backwards), evicting what falls out.
    pub fn advance_to(&mut self, now_ms: i64) {
        let end = self.end_ms.max(now_ms);
        self.end_ms = end;
        self.settle(None, end - self.span.ms);
    }

    // Takes `added` (already in the ring) into the sums and evicts the samples at or before
    // `cutoff`, with one update of each sum: `S1 += (x − K) − Σ evicted (y − K)`, and the same
    // for `S2`. A window left with nothing but `added` starts again from it. The sums are
    // recomputed when the evicted samples carried more than half of `S2` (an outlier left) or
    // the mean wandered off the centre — both around the exact mean — and, regardless, once per
    // `len` evictions (around the current mean) so rounding cannot accumulate.
    #[inline(always)]
    fn settle(&mut self, added: Option<f64>, cutoff: i64) {
        let old = self.sums;
        let (mut gone, mut e1, mut e2) = (0u64, 0.0, 0.0);
        while let Some(y) = self.samples.pop_front_until(cutoff) {
            let d = y - old.k;
            gone += 1;
            e1 += d;
            e2 += d * d;
        }
        let (d, dd, n) = match added {
            Some(x) if gone == old.n => {
                self.sums = ShiftedSums {
                    n: 1,
                    k: x,
                    s1: 0.0,
                    s2: 0.0,
                };
                self.evictions_since_exact = 0;
                return;
            }
            Some(x) => (x - old.k, (x - old.k) * (x - old.k), old.n + 1 - gone),
            None if gone == old.n => {
                self.sums = ShiftedSums::default();
                self.evictions_since_exact = 0;
                return;
            }
            None => (0.0, 0.0, old.n - gone),
        };
        let sums = ShiftedSums {
            n,
            k: old.k,
            s1: old.s1 + (d - e1),
            s2: old.s2 + (dd - e2),
        };
        self.evictions_since_exact += gone as usize;
        if e2 > 0.5 * (old.s2 + dd) || sums.off_centre() {
            self.recompute(None);
        } else if self.evictions_since_exact > self.samples.len.max(64) {
            self.recompute(Some(sums.mean()));
        } else {
            self.sums = sums;
        }
    }

    #[cold]
    fn recompute(&mut self, centre: Option<f64>) {
        self.sums = ShiftedSums::recomputed(self.samples.pieces(), centre);
        self.evictions_since_exact = 0;
    }

    /// Number of samples in the window.
    pub fn len(&self) -> usize {
        self.samples.len
    }

    /// Whether the window holds no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.len == 0
    }

    /// The samples in the window, oldest first.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = (i64, f64)> + '_ {
        (0..self.samples.len).map(|i| self.samples.get(i))
    }

    /// The drift risk of the window now, by the same rules as [`DriftThresholds::risk`] but
    /// without a square root or division: with `n·μ = n·K + S1` and `n·(n − 1)·σ² = n·S2 − S1²`,
    /// `σ/|μ| > t` is tested as `n·(n·S2 − S1²) > t²·(n·K + S1)²·(n − 1)`. The mean itself is
    /// computed only for thresholds on the level.
    #[inline]
    pub fn risk(&self, t: &DriftThresholds) -> DriftRisk {
        let ShiftedSums { n, k, s1, s2 } = self.sums;
        if n < t.min_samples {
            return DriftRisk::InsufficientData;
        }
        // By way of i64, one instruction on x86-64 (a count is far below 2⁵³).
        let nf = (n as i64) as f64;
        let nm = nf * k + s1;
        // Below two samples σ² is 0 and nothing is above a threshold.
        let (lhs, rhs) = if n < 2 {
            (0.0, 0.0)
        } else {
            (nf * (nf * s2 - s1 * s1), nm * nm * (nf - 1.0))
        };
        let above = |thr: f64| lhs > thr * thr * rhs;
        let below = |limit: Option<f64>| limit.is_some_and(|l| self.sums.mean() < l);
        if above(t.volatility_high) || below(t.mean_high_below) {
            DriftRisk::High
        } else if above(t.volatility_medium) || below(t.mean_medium_below) {
            DriftRisk::Medium
        } else {
            DriftRisk::Low
        }
    }

    /// The window's statistics now.
    pub fn stats(&self) -> WindowStats {
        let end = if self.end_ms == i64::MIN {
            0
        } else {
            self.end_ms
        };
        let mean = self.sums.mean();
        let stdev = self.sums.variance().sqrt();
        WindowStats {
            window: self.span,
            start_ms: end - self.span.ms,
            end_ms: end,
            n: self.sums.n,
            mean,
            stdev,
            volatility_index: volatility_index(mean, stdev),
            rejected_non_finite: self.rejected_non_finite,
            rejected_late: self.rejected_late,
        }
    }
}

/// Columns that [`rolling_rows`] cannot take, naming the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ColumnError {
    /// Timestamps and values differ in length.
    #[error("columns: {ts} timestamps but {values} values")]
    Length {
        /// Timestamps.
        ts: usize,
        /// Values.
        values: usize,
    },
    /// A timestamp is smaller than the one before it.
    #[error("ts[{0}]: expected timestamps in non-decreasing order")]
    Unsorted(usize),
    /// A value is NaN or infinite.
    #[error("values[{0}]: expected a finite number")]
    NonFinite(usize),
}

/// Per-sample rolling statistics of `N` signals that share their timestamps, as
/// [`rolling_rows`] returns them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollingRows<const N: usize> {
    /// Samples in the window ending at each sample.
    pub n: Vec<u32>,
    /// Mean of each signal over that window.
    pub mean: Vec<[f64; N]>,
    /// Sample standard deviation of each signal over that window.
    pub stdev: Vec<[f64; N]>,
}

/// The batch form of [`RollingWindow`] for `N` signals sampled at the same times, one row per
/// sample (`N = 1` for a single column): for every sample `i`, the mean and sample stdev of each
/// signal over `(ts[i] − span, ts[i]]`, with the same shifted sums and recomputation rules as
/// the streaming window (see [`BLOCK_ROWS`] for how the rows are cut into blocks). The window
/// bounds move once per sample for all signals, and the per-signal arithmetic runs in `N`-wide
/// loops the compiler vectorises; a table of `1/n` keeps divisions out of the loop. `ts` must be
/// sorted and every value finite. The sums of all signals are recomputed at once when any one of
/// them needs it.
pub fn rolling_rows<const N: usize>(
    ts: &[i64],
    rows: &[[f64; N]],
    span: WindowSpan,
) -> Result<RollingRows<N>, ColumnError> {
    let mut out = RollingRows {
        n: Vec::new(),
        mean: Vec::new(),
        stdev: Vec::new(),
    };
    rolling_rows_into(ts, rows, span, &mut out)?;
    Ok(out)
}

/// [`rolling_rows`] into buffers the caller keeps: they are resized and overwritten, so a caller
/// that computes many windows allocates (and page-faults in) its output once. On error `out` is
/// left empty. One thread; [`rolling_rows_par_into`] computes the same on several.
pub fn rolling_rows_into<const N: usize>(
    ts: &[i64],
    rows: &[[f64; N]],
    span: WindowSpan,
    out: &mut RollingRows<N>,
) -> Result<(), ColumnError> {
    rolling_rows_par_into(ts, rows, span, out, 1)
}

/// Statistics of one window: the numbers and the interval they were computed over.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowStats {
    /// The window's span.
    pub window: WindowSpan,
    /// Exclusive start of the interval, ms since the epoch.
    pub start_ms: i64,
    /// Inclusive end of the interval, ms since the epoch.
    pub end_ms: i64,
    /// Number of samples.
    pub n: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub stdev: f64,
    /// `stdev / |mean|`.
    pub volatility_index: f64,
    /// Samples rejected for being NaN or infinite, since the window was created.
    pub rejected_non_finite: u64,
    /// Samples rejected for arriving after their window had passed.
    pub rejected_late: u64,
}

/// Drift risk of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftRisk {
    /// Too few samples to judge: never a pass.
    InsufficientData,
    /// Volatility and level within bounds.
    Low,
    /// Volatility or level in the warning band.
    Medium,
    /// Volatility or level beyond the warning band.
    High,
}

impl DriftRisk {
    /// The gauge value exported as `coherence_workload_drift_risk` (0 low, 1 medium, 2 high;
    /// `None` for insufficient data, which is not exported as a level).
    pub fn level(self) -> Option<u8> {
        match self {
            DriftRisk::InsufficientData => None,
            DriftRisk::Low => Some(0),
            DriftRisk::Medium => Some(1),
            DriftRisk::High => Some(2),
        }
    }

    /// The lowercase name used in JSON and status fields.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftRisk::InsufficientData => "insufficient_data",
            DriftRisk::Low => "low",
            DriftRisk::Medium => "medium",
            DriftRisk::High => "high",
        }
    }
}

/// Thresholds of the drift-risk rules for one signal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DriftThresholds {
    /// High when `volatilityIndex` is above this.
    pub volatility_high: f64,
    /// Medium when `volatilityIndex` is above this (and not high).
    pub volatility_medium: f64,
    /// High when the mean is below this (for level-like signals such as a 0–100 score).
    pub mean_high_below: Option<f64>,
    /// Medium when the mean is below this (and not high).
    pub mean_medium_below: Option<f64>,
    /// Fewer samples than this is `insufficient_data`.
    pub min_samples: u64,
}

impl Default for DriftThresholds {
    fn default() -> Self {
        Self::coherence_score()
    }
}

impl DriftThresholds {
    /// The rules for a 0–100 coherence score: volatility 0.10 / 0.25, mean 80 / 60.
    pub fn coherence_score() -> Self {
        Self {
            volatility_high: 0.25,
            volatility_medium: 0.10,
            mean_high_below: Some(60.0),
            mean_medium_below: Some(80.0),
            min_samples: DEFAULT_MIN_SAMPLES,
        }
    }

    /// The rules for a signal whose level carries no meaning of its own (qps, latency, cost):
    /// volatility only.
    pub fn volatility_only() -> Self {
        Self {
            mean_high_below: None,
            mean_medium_below: None,
            ..Self::coherence_score()
        }
    }

    /// Checks that the thresholds are ordered; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if !finite_nonneg(self.volatility_medium) {
            return Err("volatilityMedium: expected a finite number ≥ 0".into());
        }
        if !(finite_nonneg(self.volatility_high) && self.volatility_high >= self.volatility_medium)
        {
            return Err("volatilityHigh: expected a finite number ≥ volatilityMedium".into());
        }
        if let (Some(h), Some(m)) = (self.mean_high_below, self.mean_medium_below) {
            if !(h.is_finite() && m.is_finite() && m >= h) {
                return Err("meanMediumBelow: expected a finite number ≥ meanHighBelow".into());
            }
        }
        Ok(())
    }

    /// The risk of a window's statistics (the fast path of [`DriftThresholds::assess`]).
    pub fn risk(&self, s: &WindowStats) -> DriftRisk {
        let vi = s.volatility_index;
        if s.n < self.min_samples {
            DriftRisk::InsufficientData
        } else if vi > self.volatility_high || self.mean_high_below.is_some_and(|h| s.mean < h) {
            DriftRisk::High
        } else if vi > self.volatility_medium || self.mean_medium_below.is_some_and(|m| s.mean < m)
        {
            DriftRisk::Medium
        } else {
            DriftRisk::Low
        }
    }

    /// Assesses a window's statistics, returning the risk and the rule that decided it.
    pub fn assess(&self, s: &WindowStats) -> (DriftRisk, String) {
        if s.n < self.min_samples {
            return (
                DriftRisk::InsufficientData,
                format!("n = {} < minSamples = {}", s.n, self.min_samples),
            );
        }
        let vi = s.volatility_index;
        if vi > self.volatility_high {
            return (
                DriftRisk::High,
                format!("volatilityIndex {vi:.4} > {}", self.volatility_high),
            );
        }
        if let Some(h) = self.mean_high_below.filter(|&h| s.mean < h) {
            return (DriftRisk::High, format!("mean {:.4} < {h}", s.mean));
        }
        if vi > self.volatility_medium {
            return (
                DriftRisk::Medium,
                format!(
                    "{} < volatilityIndex {vi:.4} ≤ {}",
                    self.volatility_medium, self.volatility_high
                ),
            );
        }
        if let Some(m) = self.mean_medium_below.filter(|&m| s.mean < m) {
            return (DriftRisk::Medium, format!("mean {:.4} < {m}", s.mean));
        }
        let mut rule = format!("volatilityIndex {vi:.4} ≤ {}", self.volatility_medium);
        if let Some(m) = self.mean_medium_below {
            rule.push_str(&format!(" and mean {:.4} ≥ {m}", s.mean));
        }
        (DriftRisk::Low, rule)
    }
}

/// The explainable answer for one signal over one window, in the original engine's JSON shape
/// (`coherenceMean`, `volatilityIndex`, `predictedDriftRisk`, `timestamp`) plus its inputs and
/// method.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalSummary {
    /// Signal name.
    pub signal: String,
    /// Window label (`1h`).
    pub window: WindowSpan,
    /// Mean of the window.
    pub coherence_mean: f64,
    /// Sample standard deviation of the window.
    pub stdev: f64,
    /// `stdev / |mean|`.
    pub volatility_index: f64,
    /// Drift risk by the thresholds in `meta`.
    pub predicted_drift_risk: DriftRisk,
    /// Number of samples in the window.
    pub n: u64,
    /// End of the window (RFC 3339).
    pub timestamp: String,
    /// What went in: interval, counts, source.
    pub inputs: SummaryInputs,
    /// How it was made: method, rule, thresholds, engine version.
    pub meta: SummaryMeta,
}

/// The inputs of a [`SignalSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryInputs {
    /// Exclusive start of the window (RFC 3339).
    pub window_start: String,
    /// Inclusive end of the window (RFC 3339).
    pub window_end: String,
    /// Samples in the window.
    pub n: u64,
    /// Samples rejected as NaN/infinite.
    pub rejected_non_finite: u64,
    /// Samples rejected as late.
    pub rejected_late: u64,
    /// Where the samples came from (a file, a scrape target).
    pub source: String,
}

/// The method of a [`SignalSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryMeta {
    /// Method name.
    pub method: &'static str,
    /// The rule that decided the risk.
    pub rule: String,
    /// The thresholds applied.
    pub thresholds: DriftThresholds,
    /// Engine version.
    pub engine_version: &'static str,
}

/// Method name carried in [`SummaryMeta`].
pub const WINDOW_METHOD: &str =
    "rolling window over sample timestamps (t-w, t]; Welford mean and sample stdev (n-1)";

impl SignalSummary {
    /// Builds the explainable summary of a window's statistics.
    pub fn new(
        signal: &str,
        stats: &WindowStats,
        thresholds: &DriftThresholds,
        source: &str,
    ) -> Self {
        let (risk, rule) = thresholds.assess(stats);
        let ts = crate::telemetry::format_ts_ms;
        Self {
            signal: signal.to_string(),
            window: stats.window,
            coherence_mean: stats.mean,
            stdev: stats.stdev,
            volatility_index: stats.volatility_index,
            predicted_drift_risk: risk,
            n: stats.n,
            timestamp: ts(stats.end_ms),
            inputs: SummaryInputs {
                window_start: ts(stats.start_ms),
                window_end: ts(stats.end_ms),
                n: stats.n,
                rejected_non_finite: stats.rejected_non_finite,
                rejected_late: stats.rejected_late,
                source: source.to_string(),
            },
            meta: SummaryMeta {
                method: WINDOW_METHOD,
                rule,
                thresholds: *thresholds,
                engine_version: crate::ENGINE_VERSION,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::stats::Moments;
    use proptest::prelude::*;

    fn span(s: &str) -> WindowSpan {
        s.parse().unwrap()
    }

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(span("5m").as_millis(), 300_000);
        assert_eq!(span("24h").as_millis(), 86_400_000);
        assert_eq!(span("90s").to_string(), "90s");
        assert_eq!(span("120s").to_string(), "2m");
        assert_eq!(span("2d").to_string(), "2d");
        for bad in [
            "",
            "h",
            "0m",
            "5",
            "5w",
            "-5m",
            "1.5h",
            "99999999999999999999d",
            // A last character of more than one byte (found by fuzzing: it used to panic).
            "5\u{333d}",
            "\u{333d}",
            "1\u{e9}",
        ] {
            let e = bad.parse::<WindowSpan>().unwrap_err();
            assert!(e.to_string().starts_with("window: expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn window_is_half_open_and_evicts() {
        let mut w = RollingWindow::new(span("10s"));
        for (t, v) in [(0, 1.0), (5_000, 2.0), (10_000, 3.0)] {
            w.push(t, v).unwrap();
        }
        // (0, 10s]: the sample at t = 0 is out.
        let s = w.stats();
        assert_eq!(s.n, 2);
        assert_eq!(s.mean, 2.5);
        assert!((s.stdev - 0.5f64.sqrt()).abs() < 1e-12);
        w.advance_to(25_000);
        assert_eq!(w.stats().n, 0);
    }

    #[test]
    fn rejects_non_finite_and_late_samples_and_counts_them() {
        let mut w = RollingWindow::new(span("1m"));
        w.push(120_000, 5.0).unwrap();
        assert_eq!(w.push(121_000, f64::NAN), Err(Rejected::NonFinite));
        assert_eq!(w.push(121_000, f64::INFINITY), Err(Rejected::NonFinite));
        assert_eq!(w.push(60_000, 1.0), Err(Rejected::Late));
        w.push(90_000, 7.0).unwrap(); // out of order, still inside
        let s = w.stats();
        assert_eq!((s.n, s.rejected_non_finite, s.rejected_late), (2, 2, 1));
        assert_eq!(s.mean, 6.0);
        assert!(s.mean.is_finite() && s.stdev.is_finite());
        let order: Vec<i64> = w.samples().map(|(t, _)| t).collect();
        assert_eq!(order, vec![90_000, 120_000]);
    }

    #[test]
    fn drift_rules_follow_the_contract() {
        let t = DriftThresholds::coherence_score();
        let stats = |n, mean, vi| WindowStats {
            window: span("1h"),
            start_ms: 0,
            end_ms: 0,
            n,
            mean,
            stdev: vi * mean,
            volatility_index: vi,
            rejected_non_finite: 0,
            rejected_late: 0,
        };
        assert_eq!(
            t.assess(&stats(9, 95.0, 0.01)).0,
            DriftRisk::InsufficientData
        );
        assert_eq!(t.assess(&stats(10, 95.0, 0.01)).0, DriftRisk::Low);
        assert_eq!(t.assess(&stats(10, 95.0, 0.10)).0, DriftRisk::Low);
        assert_eq!(t.assess(&stats(10, 95.0, 0.11)).0, DriftRisk::Medium);
        assert_eq!(t.assess(&stats(10, 95.0, 0.25)).0, DriftRisk::Medium);
        assert_eq!(t.assess(&stats(10, 95.0, 0.26)).0, DriftRisk::High);
        assert_eq!(t.assess(&stats(10, 79.9, 0.01)).0, DriftRisk::Medium);
        assert_eq!(t.assess(&stats(10, 80.0, 0.01)).0, DriftRisk::Low);
        assert_eq!(t.assess(&stats(10, 59.9, 0.01)).0, DriftRisk::High);
        for (n, mean, vi) in [
            (9, 95.0, 0.01),
            (10, 95.0, 0.11),
            (10, 95.0, 0.3),
            (10, 70.0, 0.0),
            (10, 50.0, 0.2),
        ] {
            assert_eq!(t.risk(&stats(n, mean, vi)), t.assess(&stats(n, mean, vi)).0);
        }
        let v = DriftThresholds::volatility_only();
        assert_eq!(v.assess(&stats(10, 5.0, 0.01)).0, DriftRisk::Low);
        assert!(
            DriftThresholds {
                volatility_high: 0.05,
                ..t
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn summary_carries_inputs_and_method() {
        let mut w = RollingWindow::new(span("1h"));
        for i in 0..12 {
            w.push(1_793_491_200_000 + i * 10_000, 90.0 + (i % 2) as f64)
                .unwrap();
        }
        let s = SignalSummary::new("coherence", &w.stats(), &DriftThresholds::default(), "test");
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["predictedDriftRisk"], "low");
        assert_eq!(j["n"], 12);
        assert_eq!(j["window"], "1h");
        assert_eq!(j["inputs"]["windowEnd"], "2026-11-01T00:01:50Z");
        assert_eq!(j["meta"]["thresholds"]["meanHighBelow"], 60.0);
        assert!(
            j["meta"]["rule"]
                .as_str()
                .unwrap()
                .contains("volatilityIndex")
        );
    }

    #[test]
    fn equal_values_whose_mean_is_inexact_are_not_recomputed_at_every_push() {
        // When the outlier leaves, the sums are recomputed around the exact mean of the 0.1s,
        // which does not come out as 0.1.
        for c in [0.1, 1.0 / 3.0] {
            let mut w = RollingWindow::new(span("50s"));
            let mut longest = 0;
            for i in 0..400 {
                w.push(i * 1000, if i == 60 { 1e6 } else { c }).unwrap();
                if i > 120 {
                    longest = longest.max(w.evictions_since_exact);
                }
            }
            assert!(
                longest > 50,
                "{c}: at most {longest} pushes between recomputations"
            );
            assert_eq!(w.stats().stdev, 0.0);
        }
    }

    #[test]
    fn rows_reject_bad_input_by_position() {
        let w = span("1m");
        assert_eq!(
            rolling_rows(&[0, 1], &[[1.0]], w),
            Err(ColumnError::Length { ts: 2, values: 1 })
        );
        assert_eq!(
            rolling_rows(&[0, 5, 3], &[[1.0]; 3], w),
            Err(ColumnError::Unsorted(2))
        );
        assert_eq!(
            rolling_rows(&[0, 1], &[[1.0], [f64::NAN]], w),
            Err(ColumnError::NonFinite(1))
        );
        assert_eq!(rolling_rows::<1>(&[], &[], w).unwrap().n.len(), 0);
    }

    proptest! {
        #[test]
        fn rolling_matches_recomputation(
            steps in prop::collection::vec((0i64..20_000, -1e4f64..1e4), 1..400)
        ) {
            let mut w = RollingWindow::new(span("30s"));
            let mut t = 0i64;
            let mut all = Vec::new();
            for (dt, v) in steps {
                t += dt;
                w.push(t, v).unwrap();
                all.push((t, v));
                let inside: Vec<f64> =
                    all.iter().filter(|&&(ts, _)| ts > t - 30_000).map(|&(_, v)| v).collect();
                let exact = Moments::of(inside.iter().copied());
                let s = w.stats();
                prop_assert_eq!(s.n as usize, inside.len());
                prop_assert!((s.mean - exact.mean()).abs() <= 1e-7 * (1.0 + exact.mean().abs()));
                prop_assert!((s.stdev - exact.stdev()).abs() <= 1e-6 * (1.0 + exact.stdev()));
                for t in [DriftThresholds::coherence_score(), DriftThresholds::volatility_only()] {
                    let slow = t.risk(&s);
                    let fast = w.risk(&t);
                    // Only a value within rounding of a threshold may fall on the other side.
                    let near = |thr: f64| (s.volatility_index - thr).abs() < 1e-9 * (1.0 + thr);
                    prop_assert!(slow == fast || near(t.volatility_high) || near(t.volatility_medium), "{:?} {:?} {:?}", s, slow, fast);
                }
            }
        }

        #[test]
        fn out_of_order_late_and_idle_steps_match_a_reference(
            steps in prop::collection::vec((-45i64..20, -1e3f64..1e3, 0u8..8), 1..400)
        ) {
            // Whole seconds, so that equal timestamps arrive out of order too.
            let mut w = RollingWindow::new(span("30s"));
            let mut end: Option<i64> = None;
            let mut kept: Vec<(i64, f64)> = Vec::new();
            let mut late = 0u64;
            let mut t = 0i64;
            for (dt, v, op) in steps {
                t += dt * 1000;
                if op == 0 {
                    // Time passes without a sample.
                    w.advance_to(t);
                    end = Some(end.map_or(t, |e| e.max(t)));
                } else {
                    let e = end.map_or(t, |e| e.max(t));
                    if t <= e - 30_000 {
                        prop_assert_eq!(w.push(t, v), Err(Rejected::Late));
                        late += 1;
                        continue;
                    }
                    w.push(t, v).unwrap();
                    end = Some(e);
                    let at = kept.partition_point(|&(ts, _)| ts <= t);
                    kept.insert(at, (t, v));
                }
                let e = end.unwrap_or(0);
                kept.retain(|&(ts, _)| ts > e - 30_000);
                prop_assert_eq!(w.samples().collect::<Vec<_>>(), kept.clone());
                let exact = Moments::of(kept.iter().map(|&(_, v)| v));
                let s = w.stats();
                prop_assert_eq!((s.n, s.end_ms, s.rejected_late), (exact.n(), e, late));
                prop_assert!((s.mean - exact.mean()).abs() <= 1e-9 * (1.0 + exact.mean().abs()));
                prop_assert!((s.stdev - exact.stdev()).abs() <= 1e-8 * (1.0 + exact.stdev()));
            }
        }

        #[test]
        fn rows_match_a_streaming_window_per_signal(
            steps in prop::collection::vec((0i64..20_000, -1e4f64..1e4, 0f64..1e6), 1..300)
        ) {
            let ts: Vec<i64> = steps.iter().scan(0i64, |t, s| { *t += s.0; Some(*t) }).collect();
            let rows: Vec<[f64; 2]> = steps.iter().map(|s| [s.1, s.2]).collect();
            let r = rolling_rows(&ts, &rows, span("30s")).unwrap();
            for j in 0..2 {
                let mut w = RollingWindow::new(span("30s"));
                for (i, (&t, row)) in ts.iter().zip(&rows).enumerate() {
                    w.push(t, row[j]).unwrap();
                    let s = w.stats();
                    prop_assert_eq!(u64::from(r.n[i]), s.n);
                    prop_assert!((r.mean[i][j] - s.mean).abs() <= 1e-7 * (1.0 + s.mean.abs()));
                    prop_assert!((r.stdev[i][j] - s.stdev).abs() <= 1e-6 * (1.0 + s.stdev));
                }
            }
        }
    }
}
