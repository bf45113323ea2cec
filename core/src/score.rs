//! Online anomaly score of one signal, without look-ahead.
//!
//! [`AnomalyScorer`] takes values one at a time. The score of a value depends only on that
//! value and the values pushed before it, so a score never changes when later values arrive and
//! a stream can be scored as it is produced.
//!
//! # Method
//!
//! For a value `x` and the trailing window `W` of the last `window` accepted values strictly
//! before it (default 64):
//!
//! 1. `m = median(W)`, `MAD = median(|wᵢ − m|)`.
//! 2. Robust z (the same statistic as the robust-z detector of the design, §5):
//!    - `z = 0.6745 · (x − m) / MAD` when `MAD > 0`;
//!    - else `z = (x − m) / (1.253314 · meanAbsDev)` with `meanAbsDev = mean(|wᵢ − m|)`, when that
//!      is positive (more than half of the window is one value, but not all of it);
//!    - else the window has no spread at all: `z = 0` when `x = m`, otherwise `z = ±∞` and the
//!      score is 1.
//! 3. The score maps `|z|` monotonically onto `[0, 1]`:
//!    `score = 1 − 2^(−u²)` with `u = max(0, |z| − z_floor) / (z_cutoff − z_floor)`.
//!    Defaults `z_floor = 2`, `z_cutoff = 3.5`: values within 2 robust sigmas score 0, a value
//!    exactly at the robust-z cutoff of the detectors scores 0.5, `|z| = 5` scores ≈ 0.94 and
//!    `|z| = 6` scores ≈ 0.99. This is a half-Gaussian hinge with
//!    `s = (z_cutoff − z_floor)/√(2 ln 2)`: `1 − exp(−(|z| − z_floor)² / (2s²))`.
//!
//! While fewer than `min_history` values (default 10) precede a value, the score is 0 and
//! [`Score::warmed_up`] is `false`: there is not enough data to call anything unusual.
//!
//! Values that are NaN or infinite are rejected with [`NonFinite`], counted, and do not enter
//! the window.
//!
//! # Cost
//!
//! The window is kept sorted incrementally, so the median is O(1); the MAD is a linear-time
//! selection over the deviations. A push costs O(window) time and no allocation once the
//! window is full.

use std::collections::VecDeque;
use std::fmt;

/// The scoring method in one line, for answers that say how a number was made.
pub const METHOD: &str = "robust z of the value against the trailing window (strictly before \
it): z = 0.6745·(x−median)/MAD, falling back to (x−median)/(1.253314·meanAbsDev) when MAD = 0; \
score = 1 − 2^(−u²), u = max(0, |z| − z_floor)/(z_cutoff − z_floor); score 0 during warm-up";

/// Scale that makes the MAD a consistent estimator of the standard deviation of a normal law.
const MAD_CONSISTENCY: f64 = 0.6745;
/// Scale that makes the mean absolute deviation a consistent estimator of a normal sigma (√(π/2)).
const MEAN_ABS_DEV_CONSISTENCY: f64 = 1.253314;

/// Parameters of the [`AnomalyScorer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreParams {
    /// How many trailing values form the baseline of a point (default 64).
    pub window: usize,
    /// How many prior values are needed before scoring (default 10); fewer is warm-up.
    pub min_history: usize,
    /// `|z|` at or below which the score is 0 (default 2.0).
    pub z_floor: f64,
    /// `|z|` that scores 0.5: the robust-z cutoff of the detectors (default 3.5).
    pub z_cutoff: f64,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self {
            window: 64,
            min_history: 10,
            z_floor: 2.0,
            z_cutoff: 3.5,
        }
    }
}

impl ScoreParams {
    /// Checks that the parameters can score anything; the error names the parameter.
    pub fn validate(&self) -> Result<(), InvalidParams> {
        if self.min_history == 0 {
            return Err(InvalidParams(
                "min_history: expected at least 1 prior value, got 0".into(),
            ));
        }
        if self.window < self.min_history {
            return Err(InvalidParams(format!(
                "window: expected at least min_history ({}) values, got {}",
                self.min_history, self.window
            )));
        }
        if !(self.z_floor.is_finite() && self.z_floor >= 0.0) {
            return Err(InvalidParams(format!(
                "z_floor: expected a finite number ≥ 0, got {}",
                self.z_floor
            )));
        }
        if !(self.z_cutoff.is_finite() && self.z_cutoff > self.z_floor) {
            return Err(InvalidParams(format!(
                "z_cutoff: expected a finite number above z_floor ({}), got {}",
                self.z_floor, self.z_cutoff
            )));
        }
        Ok(())
    }

    /// Maps `|z|` onto `[0, 1]`: 0 up to `z_floor`, 0.5 at `z_cutoff`, towards 1 beyond.
    pub fn score_of_z(&self, z: f64) -> f64 {
        if z.is_nan() {
            return 0.0;
        }
        let u = (z.abs() - self.z_floor).max(0.0) / (self.z_cutoff - self.z_floor);
        let s = 1.0 - (-(u * u)).exp2();
        s.clamp(0.0, 1.0)
    }
}

/// Parameters that cannot be used, with the parameter named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParams(pub String);

impl fmt::Display for InvalidParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidParams {}

/// A value that is NaN or infinite and was therefore not scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite(pub f64);

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected a finite number, got {}", self.0)
    }
}

impl std::error::Error for NonFinite {}

/// How unusual one value is against the values before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Anomaly score in `[0, 1]`; 0 during warm-up.
    pub score: f64,
    /// Robust z of the value; 0 during warm-up, `±∞` when the baseline has no spread at all.
    pub z: f64,
    /// `false` while fewer than `min_history` values preceded this one (insufficient data).
    pub warmed_up: bool,
    /// How many prior values formed the baseline.
    pub history: usize,
}

/// Streaming robust-z anomaly scorer of one signal (see the module docs for the method).
#[derive(Debug, Clone)]
pub struct AnomalyScorer {
    params: ScoreParams,
    /// Window values in arrival order, to know which one leaves next.
    order: VecDeque<f64>,
    /// The same values, sorted, for the median.
    sorted: Vec<f64>,
    /// Reused buffer of absolute deviations.
    scratch: Vec<f64>,
    accepted: u64,
    rejected: u64,
}

impl Default for AnomalyScorer {
    fn default() -> Self {
        Self::with_valid_params(ScoreParams::default())
    }
}

impl AnomalyScorer {
    /// A scorer with the given parameters, or the reason they cannot be used.
    pub fn new(params: ScoreParams) -> Result<Self, InvalidParams> {
        params.validate()?;
        Ok(Self::with_valid_params(params))
    }

    fn with_valid_params(params: ScoreParams) -> Self {
        Self {
            params,
            order: VecDeque::with_capacity(params.window),
            sorted: Vec::with_capacity(params.window),
            scratch: Vec::with_capacity(params.window),
            accepted: 0,
            rejected: 0,
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &ScoreParams {
        &self.params
    }

    /// How many values were scored (accepted into the window).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// How many values were rejected as NaN or infinite.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Scores `value` against the values before it, then adds it to the window.
    pub fn push(&mut self, value: f64) -> Result<Score, NonFinite> {
        if !value.is_finite() {
            self.rejected += 1;
            return Err(NonFinite(value));
        }
        let score = self.score_against_window(value);
        self.insert(value);
        self.accepted += 1;
        Ok(score)
    }

    fn score_against_window(&mut self, x: f64) -> Score {
        let history = self.sorted.len();
        if history < self.params.min_history {
            return Score {
                score: 0.0,
                z: 0.0,
                warmed_up: false,
                history,
            };
        }
        let median = median_of_sorted(&self.sorted);
        self.scratch.clear();
        self.scratch
            .extend(self.sorted.iter().map(|w| (w - median).abs()));
        let mean_abs_dev = self.scratch.iter().sum::<f64>() / history as f64;
        let mad = median_in_place(&mut self.scratch);
        let dx = x - median;
        let z = if mad > 0.0 {
            MAD_CONSISTENCY * dx / mad
        } else if mean_abs_dev > 0.0 {
            dx / (MEAN_ABS_DEV_CONSISTENCY * mean_abs_dev)
        } else if dx == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(dx)
        };
        Score {
            score: self.params.score_of_z(z),
            z,
            warmed_up: true,
            history,
        }
    }

    fn insert(&mut self, value: f64) {
        if self.order.len() == self.params.window {
            if let Some(old) = self.order.pop_front() {
                // Every window value is finite, so total order and equality agree.
                if let Ok(i) = self.sorted.binary_search_by(|w| w.total_cmp(&old)) {
                    self.sorted.remove(i);
                }
            }
        }
        self.order.push_back(value);
        let at = self
            .sorted
            .binary_search_by(|w| w.total_cmp(&value))
            .unwrap_or_else(|i| i);
        self.sorted.insert(at, value);
    }
}

/// Scores a whole series in order; the result at `i` depends only on `values[..=i]`.
pub fn score_series(
    values: &[f64],
    params: ScoreParams,
) -> Result<Vec<Result<Score, NonFinite>>, InvalidParams> {
    let mut scorer = AnomalyScorer::new(params)?;
    Ok(values.iter().map(|&v| scorer.push(v)).collect())
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Median by selection; reorders `values`.
fn median_in_place(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let (left, &mut upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        upper
    } else {
        let lower = left.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Straightforward re-computation from scratch, to check the incremental window against.
    fn reference(values: &[f64], p: ScoreParams) -> Vec<(f64, f64, bool)> {
        let mut out = Vec::new();
        let mut past: Vec<f64> = Vec::new();
        for &x in values {
            let start = past.len().saturating_sub(p.window);
            let mut w = past[start..].to_vec();
            if w.len() < p.min_history {
                out.push((0.0, 0.0, false));
            } else {
                w.sort_by(f64::total_cmp);
                let med = median_of_sorted(&w);
                let mut dev: Vec<f64> = w.iter().map(|v| (v - med).abs()).collect();
                let mean_ad = dev.iter().sum::<f64>() / dev.len() as f64;
                dev.sort_by(f64::total_cmp);
                let mad = median_of_sorted(&dev);
                let z = if mad > 0.0 {
                    0.6745 * (x - med) / mad
                } else if mean_ad > 0.0 {
                    (x - med) / (1.253314 * mean_ad)
                } else if x == med {
                    0.0
                } else {
                    f64::INFINITY.copysign(x - med)
                };
                let u = (z.abs() - p.z_floor).max(0.0) / (p.z_cutoff - p.z_floor);
                out.push((1.0 - (-(u * u)).exp2(), z, true));
            }
            past.push(x);
        }
        out
    }

    fn scores(values: &[f64], p: ScoreParams) -> Vec<Score> {
        score_series(values, p)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect()
    }

    fn series() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(-1.0e6..1.0e6f64, 0..200)
    }

    /// Series with many repeated values, where MAD = 0 and the fallbacks are exercised.
    fn lumpy_series() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(prop_oneof![4 => Just(5.0), 1 => -50.0..50.0f64], 0..150)
    }

    fn params() -> impl Strategy<Value = ScoreParams> {
        (1usize..20, 0usize..80).prop_map(|(min_history, extra)| ScoreParams {
            window: min_history + extra,
            min_history,
            ..ScoreParams::default()
        })
    }

    proptest! {
        #[test]
        fn score_is_in_unit_interval(values in series(), p in params()) {
            for s in scores(&values, p) {
                prop_assert!((0.0..=1.0).contains(&s.score), "score {} out of [0,1]", s.score);
            }
        }

        #[test]
        fn prefix_scores_do_not_depend_on_the_future(
            values in series(), p in params(), cut in 0usize..200,
        ) {
            let cut = cut.min(values.len());
            let whole = scores(&values, p);
            let prefix = scores(&values[..cut], p);
            prop_assert_eq!(&whole[..cut], &prefix[..]);
        }

        #[test]
        fn different_futures_leave_past_scores_alone(
            past in series(), a in series(), b in series(), p in params(),
        ) {
            let mut with_a = past.clone();
            with_a.extend(&a);
            let mut with_b = past.clone();
            with_b.extend(&b);
            let sa = scores(&with_a, p);
            let sb = scores(&with_b, p);
            prop_assert_eq!(&sa[..past.len()], &sb[..past.len()]);
        }

        #[test]
        fn matches_recomputation_from_scratch(
            values in prop_oneof![series(), lumpy_series()], p in params(),
        ) {
            let got = scores(&values, p);
            let want = reference(&values, p);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(g.warmed_up, w.2, "warm-up at {}", i);
                prop_assert!((g.score - w.0).abs() <= 1e-9, "score at {}: {} vs {}", i, g.score, w.0);
                let z_close = g.z == w.1 || (g.z - w.1).abs() <= 1e-9 * w.1.abs().max(1.0);
                prop_assert!(z_close, "z at {}: {} vs {}", i, g.z, w.1);
            }
        }

        #[test]
        fn constant_series_scores_zero(c in -1.0e9..1.0e9f64, n in 0usize..300) {
            for s in scores(&vec![c; n], ScoreParams::default()) {
                prop_assert_eq!(s.score, 0.0);
                prop_assert_eq!(s.z, 0.0);
            }
        }

        #[test]
        fn spike_after_calm_scores_high(
            noise in prop::collection::vec(-1.0..1.0f64, 10..120),
            level in -1000.0..1000.0f64,
            size in 50.0..1.0e6f64,
            up in any::<bool>(),
        ) {
            let mut values: Vec<f64> = noise.iter().map(|e| level + e).collect();
            let spike = if up { level + size } else { level - size };
            values.push(spike);
            let last = scores(&values, ScoreParams::default()).pop().unwrap();
            prop_assert!(last.warmed_up);
            prop_assert!(last.score > 0.9, "spike of {} scored {}", size, last.score);
        }

        #[test]
        fn score_grows_with_distance(
            base in prop::collection::vec(-10.0..10.0f64, 10..64),
            a in 0.0..100.0f64, b in 0.0..100.0f64,
        ) {
            let (near, far) = if a <= b { (a, b) } else { (b, a) };
            let mut s = AnomalyScorer::default();
            for v in &base { s.push(*v).unwrap(); }
            let mut s2 = s.clone();
            let sn = s.push(near).unwrap();
            let sf = s2.push(far).unwrap();
            prop_assert!(sn.score <= sf.score, "|{}| scored {} > |{}| scored {}", near, sn.score, far, sf.score);
        }
    }

    #[test]
    fn warm_up_needs_min_history_prior_values() {
        let mut s = AnomalyScorer::default();
        for i in 0..10 {
            let r = s.push(1000.0 * f64::from(i)).unwrap();
            assert!(!r.warmed_up, "point {i} should still be warming up");
            assert_eq!(r.score, 0.0);
            assert_eq!(r.history, i as usize);
        }
        let r = s.push(0.0).unwrap();
        assert!(r.warmed_up);
        assert_eq!(r.history, 10);
    }

    #[test]
    fn non_finite_values_are_rejected_counted_and_kept_out() {
        let mut s = AnomalyScorer::default();
        let mut clean = AnomalyScorer::default();
        for i in 0..30 {
            let v = f64::from(i % 7);
            if i % 5 == 0 {
                for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let e = s.push(bad).unwrap_err();
                    assert!(e.to_string().starts_with("expected a finite number"));
                }
            }
            assert_eq!(s.push(v).unwrap(), clean.push(v).unwrap());
        }
        assert_eq!(s.rejected(), 18);
        assert_eq!(s.accepted(), 30);
        assert_eq!(clean.rejected(), 0);
    }

    #[test]
    fn mapping_hits_its_documented_points() {
        let p = ScoreParams::default();
        assert_eq!(p.score_of_z(0.0), 0.0);
        assert_eq!(p.score_of_z(-2.0), 0.0);
        assert!((p.score_of_z(3.5) - 0.5).abs() < 1e-12);
        assert!((p.score_of_z(-3.5) - 0.5).abs() < 1e-12);
        assert!(p.score_of_z(5.0) > 0.9 && p.score_of_z(5.0) < 0.95);
        assert_eq!(p.score_of_z(f64::INFINITY), 1.0);
    }

    #[test]
    fn no_spread_baseline_scores_any_change_as_one() {
        let mut s = AnomalyScorer::default();
        for _ in 0..12 {
            s.push(4.0).unwrap();
        }
        let mut same = s.clone();
        assert_eq!(same.push(4.0).unwrap().score, 0.0);
        let r = s.push(4.5).unwrap();
        assert_eq!(r.score, 1.0);
        assert_eq!(r.z, f64::INFINITY);
    }

    #[test]
    fn mad_zero_falls_back_to_mean_absolute_deviation() {
        // 7 equal values and 3 others: MAD is 0, the mean absolute deviation is not.
        let mut s = AnomalyScorer::default();
        for v in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0] {
            s.push(v).unwrap();
        }
        let r = s.push(2.0).unwrap();
        let mean_abs_dev = (1.0 + 2.0 + 3.0) / 10.0;
        assert!(
            (r.z - 1.0 / (1.253314 * mean_abs_dev)).abs() < 1e-12,
            "z = {}",
            r.z
        );
    }

    #[test]
    fn window_forgets_old_values() {
        let p = ScoreParams {
            window: 10,
            ..ScoreParams::default()
        };
        let mut s = AnomalyScorer::new(p).unwrap();
        for i in 0..10 {
            s.push(1000.0 + f64::from(i % 3)).unwrap();
        }
        // The old level is still the baseline: zero is far away.
        assert!(s.clone().push(0.0).unwrap().score > 0.99);
        for i in 0..10 {
            s.push(f64::from(i % 3)).unwrap();
        }
        // After a full window at the new level, zero is ordinary and the old level is not.
        assert_eq!(s.clone().push(0.0).unwrap().score, 0.0);
        assert!(s.push(1000.0).unwrap().score > 0.99);
    }

    #[test]
    fn unusable_params_are_named() {
        let e = AnomalyScorer::new(ScoreParams {
            window: 5,
            ..ScoreParams::default()
        })
        .unwrap_err();
        assert!(e.0.starts_with("window:"), "{e}");
        let e = AnomalyScorer::new(ScoreParams {
            z_cutoff: 1.0,
            ..ScoreParams::default()
        })
        .unwrap_err();
        assert!(e.0.starts_with("z_cutoff:"), "{e}");
    }
}
