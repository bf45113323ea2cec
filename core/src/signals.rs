//! The numbers a PCS is made of: D̂, coh★, r, the regime and the budget.
//!
//! A window's values `x_0 … x_{n-1}` are min-max normalised to `[0, 1]` (a constant window maps
//! every value to 0.5) and delay-embedded into the `n − 2` points `(x_t, x_{t+1}, x_{t+2})` of
//! the unit cube. From those points:
//!
//! - `N_j` ([`box_counts`]): for each scale `s`, the number of occupied cells of the `s×s×s`
//!   grid over the unit cube; cell `⌊v·s⌋` per axis, with `v = 1.0` in the last cell;
//! - `D̂` ([`d_hat`]): the Theil–Sen slope of `log2(N_j)` against `log2(s)`;
//! - `coh★` ([`coh_star`]): for each of `directions` unit vectors drawn from
//!   `SplitMix64::new(seed)` (three standard normals, normalised), the points are projected on
//!   the vector and histogrammed into `bins` equal bins over the projections' min..max; the
//!   direction's coherence is the largest bin count over the number of points. `coh★` is the
//!   largest coherence and `v★` the first direction reaching it.
//!
//! `r` ([`compression_ratio`]) is the zlib-compressed size (level 6, the default of Python's
//! `zlib.compress`) over the raw size of the window's canonical bytes ([`window_bytes`]): the
//! canonical JSON array of the values (`[12.5,13.0,1e-05]`, each float as `repr(round(x, 9))`).
//! Different zlib implementations may emit different (equally valid) streams, so `r` is only
//! comparable between records made by the same engine; verifiers never recompute it.

use crate::canon::{self, CanonError};
use crate::rng::SplitMix64;
use flate2::Compression;
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write as _;
use thiserror::Error;

/// Why a signal cannot be computed; each variant names its input and what was expected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SignalError {
    /// `xs` and `ys` differ in length.
    #[error("xs, ys: expected the same length, found {xs} and {ys}")]
    LengthMismatch {
        /// Length of `xs`.
        xs: usize,
        /// Length of `ys`.
        ys: usize,
    },
    /// Fewer than two distinct x values: no slope exists.
    #[error("xs: expected at least 2 distinct values, found {distinct}")]
    TooFewDistinctX {
        /// Number of distinct finite x values.
        distinct: usize,
    },
    /// A value is NaN or infinite.
    #[error("{input}: expected finite numbers, found {value} at index {index}")]
    NonFinite {
        /// Which input.
        input: &'static str,
        /// Position in the input.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A box count is zero (its logarithm does not exist).
    #[error("N_j: expected a count >= 1 for scale {scale}, found {count}")]
    CountBelowOne {
        /// The scale of the count.
        scale: u32,
        /// The count.
        count: u64,
    },
    /// A scale is zero.
    #[error("scales: expected integers >= 1, found {scale}")]
    BadScale {
        /// The scale.
        scale: u32,
    },
    /// The window is too short to be embedded.
    #[error("values: expected at least 3 values to embed, found {found}")]
    WindowTooShort {
        /// Number of values in the window.
        found: usize,
    },
    /// `coh★` needs at least one direction and one bin.
    #[error("{param}: expected at least 1")]
    BadParam {
        /// The parameter's name.
        param: &'static str,
    },
    /// The window has no canonical form.
    #[error(transparent)]
    Canon(#[from] CanonError),
}

/// Theil–Sen estimator: the median of the slopes `(y_j − y_i)/(x_j − x_i)` over all pairs with
/// `x_i ≠ x_j`; an even number of slopes takes the mean of the two middle ones.
pub fn theil_sen_slope(xs: &[f64], ys: &[f64]) -> Result<f64, SignalError> {
    if xs.len() != ys.len() {
        return Err(SignalError::LengthMismatch {
            xs: xs.len(),
            ys: ys.len(),
        });
    }
    check_finite("xs", xs)?;
    check_finite("ys", ys)?;
    let mut slopes = Vec::with_capacity(xs.len() * xs.len().saturating_sub(1) / 2);
    for i in 0..xs.len() {
        for j in i + 1..xs.len() {
            let dx = xs[j] - xs[i];
            if dx != 0.0 {
                slopes.push((ys[j] - ys[i]) / dx);
            }
        }
    }
    if slopes.is_empty() {
        let mut distinct: Vec<f64> = xs.to_vec();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        return Err(SignalError::TooFewDistinctX {
            distinct: distinct.len(),
        });
    }
    slopes.sort_by(f64::total_cmp);
    let m = slopes.len();
    Ok(if m % 2 == 1 {
        slopes[m / 2]
    } else {
        (slopes[m / 2 - 1] + slopes[m / 2]) / 2.0
    })
}

fn check_finite(input: &'static str, values: &[f64]) -> Result<(), SignalError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(SignalError::NonFinite {
            input,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// D̂: the Theil–Sen slope of `log2(counts[j])` on `log2(scales[j])`.
pub fn d_hat(scales: &[u32], counts: &[u64]) -> Result<f64, SignalError> {
    if scales.len() != counts.len() {
        return Err(SignalError::LengthMismatch {
            xs: scales.len(),
            ys: counts.len(),
        });
    }
    if let Some(&scale) = scales.iter().find(|s| **s == 0) {
        return Err(SignalError::BadScale { scale });
    }
    if let Some((&scale, &count)) = scales.iter().zip(counts).find(|(_, c)| **c == 0) {
        return Err(SignalError::CountBelowOne { scale, count });
    }
    let xs: Vec<f64> = scales.iter().map(|s| f64::from(*s).log2()).collect();
    let ys: Vec<f64> = counts.iter().map(|c| (*c as f64).log2()).collect();
    theil_sen_slope(&xs, &ys)
}

/// Min-max normalises `values` and embeds them as `(x_t, x_{t+1}, x_{t+2})` points in the unit
/// cube (`n − 2` points; a constant window gives points at 0.5).
pub fn delay_embed(values: &[f64]) -> Result<Vec<[f64; 3]>, SignalError> {
    check_finite("values", values)?;
    if values.len() < 3 {
        return Err(SignalError::WindowTooShort {
            found: values.len(),
        });
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = max - min;
    let norm: Vec<f64> = if span > 0.0 && span.is_finite() {
        values
            .iter()
            .map(|v| ((v - min) / span).clamp(0.0, 1.0))
            .collect()
    } else if span > 0.0 {
        // The span overflows f64 (values near ±f64::MAX): halve before subtracting.
        let half_span = max / 2.0 - min / 2.0;
        values
            .iter()
            .map(|v| ((v / 2.0 - min / 2.0) / half_span).clamp(0.0, 1.0))
            .collect()
    } else {
        vec![0.5; values.len()]
    };
    Ok(norm.windows(3).map(|w| [w[0], w[1], w[2]]).collect())
}

/// `N_j` per scale: the number of occupied cells of the `s×s×s` grid over the unit cube.
pub fn box_counts(points: &[[f64; 3]], scales: &[u32]) -> Result<Vec<u64>, SignalError> {
    let mut out = Vec::with_capacity(scales.len());
    let mut cells: Vec<u64> = Vec::with_capacity(points.len());
    for &scale in scales {
        if scale == 0 {
            return Err(SignalError::BadScale { scale });
        }
        let s = u64::from(scale);
        cells.clear();
        cells.extend(points.iter().map(|p| {
            let cell = |v: f64| ((v * s as f64) as u64).min(s - 1);
            // Base-s digits of (i, j, k); s <= u32::MAX so s³ can exceed u64 only for absurd
            // scales, where wrapping merely merges cells of a grid finer than the data.
            cell(p[0])
                .wrapping_mul(s)
                .wrapping_add(cell(p[1]))
                .wrapping_mul(s)
                .wrapping_add(cell(p[2]))
        }));
        cells.sort_unstable();
        cells.dedup();
        out.push(cells.len() as u64);
    }
    Ok(out)
}

/// Parameters of coh★.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohParams {
    /// Number of projection directions sampled.
    pub directions: usize,
    /// Number of histogram bins over each projection's min..max.
    pub bins: usize,
}

impl Default for CohParams {
    fn default() -> Self {
        Self {
            directions: 64,
            bins: 32,
        }
    }
}

/// coh★ and the direction that attains it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coherence {
    /// Largest fraction of points in one histogram bin over all directions.
    pub coh_star: f64,
    /// The first direction reaching `coh_star` (unit vector).
    pub v_star: [f64; 3],
}

/// The `n` deterministic unit directions used by [`coh_star`] for `seed`.
pub fn directions(seed: u64, n: usize) -> Vec<[f64; 3]> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = [rng.normal(), rng.normal(), rng.normal()];
        let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        // A (practically impossible) near-zero draw has no direction; draw again.
        if norm > 1e-12 {
            out.push([v[0] / norm, v[1] / norm, v[2] / norm]);
        }
    }
    out
}

/// coh★ of `points` with directions drawn from `seed` (see the module documentation).
pub fn coh_star(
    points: &[[f64; 3]],
    seed: u64,
    params: &CohParams,
) -> Result<Coherence, SignalError> {
    if params.directions == 0 {
        return Err(SignalError::BadParam {
            param: "directions",
        });
    }
    if params.bins == 0 {
        return Err(SignalError::BadParam { param: "bins" });
    }
    if points.is_empty() {
        return Err(SignalError::WindowTooShort { found: 0 });
    }
    let mut best = Coherence {
        coh_star: -1.0,
        v_star: [0.0; 3],
    };
    let mut proj = vec![0.0; points.len()];
    let mut hist = vec![0usize; params.bins];
    for dir in directions(seed, params.directions) {
        for (p, out) in points.iter().zip(proj.iter_mut()) {
            *out = p[0] * dir[0] + p[1] * dir[1] + p[2] * dir[2];
        }
        let lo = proj.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = proj.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        hist.iter_mut().for_each(|h| *h = 0);
        let width = hi - lo;
        for &x in &proj {
            let bin = if width > 0.0 {
                (((x - lo) / width * params.bins as f64) as usize).min(params.bins - 1)
            } else {
                0
            };
            hist[bin] += 1;
        }
        let top = hist.iter().copied().max().unwrap_or(0);
        let coh = top as f64 / points.len() as f64;
        if coh > best.coh_star {
            best = Coherence {
                coh_star: coh,
                v_star: dir,
            };
        }
    }
    Ok(best)
}

/// The window's canonical bytes: the canonical JSON array of its values (see [`canon`]).
pub fn window_bytes(values: &[f64]) -> Result<Vec<u8>, SignalError> {
    check_finite("values", values)?;
    let mut out = String::with_capacity(values.len() * 12 + 2);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&canon::canonical_float(*v, "values")?);
    }
    out.push(']');
    Ok(out.into_bytes())
}

/// r: zlib (level 6) compressed size over raw size of [`window_bytes`].
pub fn compression_ratio(values: &[f64]) -> Result<f64, SignalError> {
    let raw = window_bytes(values)?;
    Ok(zlib_len(&raw) as f64 / raw.len() as f64)
}

fn zlib_len(raw: &[u8]) -> usize {
    let mut enc = ZlibEncoder::new(Vec::with_capacity(raw.len() / 2 + 64), Compression::new(6));
    // Writing into a Vec cannot fail.
    match enc.write_all(raw).and_then(|()| enc.finish()) {
        Ok(v) => v.len(),
        Err(_) => raw.len(),
    }
}

/// The dynamical regime a record claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// High coherence, low dimension: the workload keeps to a narrow pattern.
    Sticky,
    /// Neither sticky nor non-sticky.
    Mixed,
    /// High dimension: the workload wanders.
    NonSticky,
}

impl Regime {
    /// The wire name (`sticky`, `mixed`, `non_sticky`).
    pub fn as_str(self) -> &'static str {
        match self {
            Regime::Sticky => "sticky",
            Regime::Mixed => "mixed",
            Regime::NonSticky => "non_sticky",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sticky" => Some(Regime::Sticky),
            "mixed" => Some(Regime::Mixed),
            "non_sticky" => Some(Regime::NonSticky),
            _ => None,
        }
    }
}

impl fmt::Display for Regime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds of the regime classification.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegimeThresholds {
    /// `sticky` needs `coh★ >=` this.
    pub sticky_coh_min: f64,
    /// `sticky` needs `D̂ <=` this.
    pub sticky_d_max: f64,
    /// `non_sticky` when `D̂ >=` this.
    pub non_sticky_d_min: f64,
}

impl Default for RegimeThresholds {
    fn default() -> Self {
        Self {
            sticky_coh_min: 0.70,
            sticky_d_max: 1.5,
            non_sticky_d_min: 2.6,
        }
    }
}

/// `sticky` if `coh★ ≥ 0.70` and `D̂ ≤ 1.5`; `non_sticky` if `D̂ ≥ 2.6`; else `mixed`.
pub fn regime(coh_star: f64, d_hat: f64, t: &RegimeThresholds) -> Regime {
    if coh_star >= t.sticky_coh_min && d_hat <= t.sticky_d_max {
        Regime::Sticky
    } else if d_hat >= t.non_sticky_d_min {
        Regime::NonSticky
    } else {
        Regime::Mixed
    }
}

/// Parameters of the budget formula.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetParams {
    /// Constant term.
    pub base: f64,
    /// Weight of `1 − r` (incompressibility).
    pub alpha: f64,
    /// Weight of the dimension above `d0`.
    pub beta: f64,
    /// Weight of coh★.
    pub gamma: f64,
    /// Dimension above which the budget grows.
    pub d0: f64,
}

impl Default for BudgetParams {
    fn default() -> Self {
        Self {
            base: 0.10,
            alpha: 0.30,
            beta: 0.50,
            gamma: 0.20,
            d0: 2.2,
        }
    }
}

/// `clamp(base + α(1−r) + β·max(0, D̂−D0) + γ·coh★, 0, 1)`; NaN inputs give 0.
pub fn budget(r: f64, d_hat: f64, coh_star: f64, p: &BudgetParams) -> f64 {
    let raw =
        p.base + p.alpha * (1.0 - r) + p.beta * f64::max(0.0, d_hat - p.d0) + p.gamma * coh_star;
    if raw.is_nan() {
        0.0
    } else {
        raw.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn theil_sen_on_a_line_and_with_an_outlier() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        let ys = [2.0, 4.0, 6.0, 8.0, 100.0];
        // 10 slopes: six are 2, four involve the outlier and are large; median of 2 and 2.
        assert_eq!(theil_sen_slope(&xs, &ys).unwrap(), 2.0);
        // Three slopes 1, 2, 3: the middle one.
        assert_eq!(
            theil_sen_slope(&[0.0, 1.0, 2.0], &[0.0, 1.0, 4.0]).unwrap(),
            2.0
        );
        // The pair with equal x is skipped; the two slopes 1 and 3 average to 2.
        assert_eq!(
            theil_sen_slope(&[0.0, 1.0, 1.0], &[0.0, 1.0, 3.0]).unwrap(),
            2.0
        );
        assert_eq!(
            theil_sen_slope(&[1.0, 1.0], &[0.0, 5.0]).unwrap_err(),
            SignalError::TooFewDistinctX { distinct: 1 }
        );
        assert!(theil_sen_slope(&[1.0, f64::NAN], &[0.0, 5.0]).is_err());
    }

    #[test]
    fn d_hat_of_a_plane_is_two() {
        let scales = [2, 4, 8, 16, 32];
        let counts: Vec<u64> = scales
            .iter()
            .map(|s| u64::from(*s) * u64::from(*s))
            .collect();
        assert_eq!(d_hat(&scales, &counts).unwrap(), 2.0);
        assert_eq!(
            d_hat(&[2, 4], &[1, 0]).unwrap_err().to_string(),
            "N_j: expected a count >= 1 for scale 4, found 0"
        );
    }

    #[test]
    fn embedding_and_box_counts() {
        let pts = delay_embed(&[0.0, 1.0, 0.5, 1.0]).unwrap();
        assert_eq!(pts, vec![[0.0, 1.0, 0.5], [1.0, 0.5, 1.0]]);
        assert_eq!(delay_embed(&[3.0; 5]).unwrap(), vec![[0.5; 3]; 3]);
        assert!(delay_embed(&[1.0, 2.0]).is_err());
        // 1.0 falls in the last cell: at scale 2 the cells are (0,1,1) and (1,1,1).
        assert_eq!(box_counts(&pts, &[1, 2, 4]).unwrap(), vec![1, 2, 2]);
        assert_eq!(
            box_counts(&[[1.0, 1.0, 1.0], [0.99, 0.99, 0.99]], &[2]).unwrap(),
            vec![1]
        );
    }

    #[test]
    fn coherence_of_a_constant_window_is_one() {
        let pts = delay_embed(&[7.0; 10]).unwrap();
        let c = coh_star(&pts, 42, &CohParams::default()).unwrap();
        assert_eq!(c.coh_star, 1.0);
        let norm: f64 = c.v_star.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-12);
        // Directions are a pure function of the seed.
        assert_eq!(directions(42, 8), directions(42, 8));
        assert_ne!(directions(42, 8), directions(43, 8));
    }

    #[test]
    fn compression_ratio_of_repetitive_data_is_small() {
        let r_rep = compression_ratio(&[1.5; 1000]).unwrap();
        let mut rng = SplitMix64::new(1);
        let noise: Vec<f64> = (0..1000).map(|_| rng.next_f64()).collect();
        let r_noise = compression_ratio(&noise).unwrap();
        assert!(r_rep < 0.05, "{r_rep}");
        assert!(r_noise > r_rep * 5.0, "{r_noise}");
        assert_eq!(
            window_bytes(&[1.0, 1e-5, 0.1234567891]).unwrap(),
            b"[1.0,1e-05,0.123456789]"
        );
    }

    #[test]
    fn regime_and_budget_follow_the_design() {
        let t = RegimeThresholds::default();
        assert_eq!(regime(0.70, 1.5, &t), Regime::Sticky);
        assert_eq!(regime(0.69, 1.0, &t), Regime::Mixed);
        assert_eq!(regime(0.9, 2.6, &t), Regime::NonSticky);
        let p = BudgetParams::default();
        // 0.10 + 0.30·0.5 + 0.50·0.3 + 0.20·0.5 = 0.50
        assert!((budget(0.5, 2.5, 0.5, &p) - 0.5).abs() < 1e-12);
        assert_eq!(budget(-10.0, 10.0, 1.0, &p), 1.0);
        assert_eq!(budget(10.0, 0.0, 0.0, &p), 0.0);
    }
}
