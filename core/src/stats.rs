//! Batch statistics shared by windows, detectors and FinOps: mean, sample variance, median,
//! median absolute deviation and least-squares fits. All functions take finite values; the
//! callers reject NaN and infinities before they get here.

/// Running first and second moments (Welford), with removal so a sliding window can keep them
/// in O(1) per sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// Empty moments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moments of a slice, computed in two passes (the exact reference for the running form).
    pub fn of(values: impl IntoIterator<Item = f64> + Clone) -> Self {
        let mut n = 0u64;
        let mut sum = 0.0;
        for x in values.clone() {
            n += 1;
            sum += x;
        }
        if n == 0 {
            return Self::default();
        }
        let mean = sum / n as f64;
        // The compensation term corrects the rounding error left in `mean` (Chan, Golub, LeVeque).
        let (mut ss, mut comp) = (0.0, 0.0);
        for x in values {
            let d = x - mean;
            ss += d * d;
            comp += d;
        }
        let m2 = (ss - comp * comp / n as f64).max(0.0);
        Self { n, mean, m2 }
    }

    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Removes one value that was previously added. Returns `false` when the removal cancelled
    /// most of the accumulated sum of squares, so the result may have lost precision and should
    /// be recomputed from the remaining values.
    pub fn remove(&mut self, x: f64) -> bool {
        match self.n {
            0 => true,
            1 => {
                *self = Self::default();
                true
            }
            _ => {
                let old_mean = self.mean;
                self.n -= 1;
                self.mean = old_mean - (x - old_mean) / self.n as f64;
                let share = (x - old_mean) * (x - self.mean);
                let precise = share <= 0.5 * self.m2;
                self.m2 = (self.m2 - share).max(0.0);
                precise
            }
        }
    }

    /// Number of values.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Arithmetic mean (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Sample variance `Σ(x−μ)²/(n−1)` (0 with fewer than two values).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }

    /// Sample standard deviation.
    pub fn stdev(&self) -> f64 {
        self.variance().sqrt()
    }
}

/// Arithmetic mean of a slice (0 when empty).
pub fn mean(values: &[f64]) -> f64 {
    Moments::of(values.iter().copied()).mean()
}

/// Sample variance of a slice (0 with fewer than two values).
pub fn variance(values: &[f64]) -> f64 {
    Moments::of(values.iter().copied()).variance()
}

/// `σ/|μ|`, the volatility index; 0 when both are 0 and infinite when only the mean is 0.
pub fn volatility_index(mean: f64, stdev: f64) -> f64 {
    if stdev == 0.0 {
        0.0
    } else if mean == 0.0 {
        f64::INFINITY
    } else {
        stdev / mean.abs()
    }
}

/// Median of a slice (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    median_in_place(&mut v)
}

/// Median of a scratch buffer, reordering it (linear time selection).
pub fn median_in_place(v: &mut [f64]) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    let (lower, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        Some(m)
    } else {
        let lo = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((lo + m) / 2.0)
    }
}

/// Median absolute deviation from the median: `median(|xᵢ − median|)`.
pub fn mad(values: &[f64], median: f64) -> f64 {
    let mut dev: Vec<f64> = values.iter().map(|x| (x - median).abs()).collect();
    median_in_place(&mut dev).unwrap_or(0.0)
}

/// Mean absolute deviation from a centre.
pub fn mean_abs_dev(values: &[f64], centre: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().map(|x| (x - centre).abs()).sum::<f64>() / values.len() as f64
}

/// An ordinary least-squares line `y = intercept + slope·x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearFit {
    /// Change of y per unit of x.
    pub slope: f64,
    /// y at x = 0.
    pub intercept: f64,
    /// Coefficient of determination (1 for a perfect fit, 0 when x explains nothing or y is constant).
    pub r2: f64,
}

impl LinearFit {
    /// The fitted y at `x`.
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// Least-squares fit of `ys` on `xs` (centred, so large x such as epoch seconds stay exact);
/// `None` with fewer than two points or when every x is the same.
pub fn least_squares(xs: &[f64], ys: &[f64]) -> Option<LinearFit> {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return None;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs[..n].iter().zip(&ys[..n]) {
        let (dx, dy) = (x - mx, y - my);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        0.0
    } else {
        (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0)
    };
    Some(LinearFit {
        slope,
        intercept: my - slope * mx,
        r2,
    })
}

/// Natural logarithm of the gamma function for `x > 0` (Lanczos, g = 7, n = 9; relative error
/// below 1e-13).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function `I_x(a, b)` (continued fraction, modified Lentz).
pub fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The fraction converges fast only below the mean; use the symmetry above it.
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(1.0 - x, b, a);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..300 {
        let m = f64::from(m);
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    (ln_front.exp() * f / a).clamp(0.0, 1.0)
}

/// Probability that an F(d1, d2) variable exceeds `f` (the p-value of a one-sided F test).
pub fn f_test_p(f: f64, d1: f64, d2: f64) -> f64 {
    if f.is_nan() || f <= 0.0 || d1 <= 0.0 || d2 <= 0.0 {
        return 1.0;
    }
    if f.is_infinite() {
        return 0.0;
    }
    inc_beta(d2 / (d2 + d1 * f), d2 / 2.0, d1 / 2.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&v), 5.0);
        // Σ(x−μ)² = 32, n−1 = 7.
        assert!((variance(&v) - 32.0 / 7.0).abs() < 1e-12);
        assert_eq!(median(&v), Some(4.5));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(mad(&v, 4.5), 0.5);
        let fit = least_squares(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 5.0, 7.0]).unwrap();
        assert!((fit.slope - 2.0).abs() < 1e-12 && (fit.intercept - 1.0).abs() < 1e-12);
        assert!((fit.r2 - 1.0).abs() < 1e-12);
        assert!(least_squares(&[1.0, 1.0], &[1.0, 2.0]).is_none());
        assert_eq!(volatility_index(0.0, 0.0), 0.0);
        assert_eq!(volatility_index(-10.0, 2.0), 0.2);
        assert!(volatility_index(0.0, 1.0).is_infinite());
    }

    #[test]
    fn gamma_beta_and_f_test_match_reference_values() {
        // ln Γ(5) = ln 24; Γ(0.5) = √π.
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        // I_x(1, 1) = x; I_0.5(a, a) = 0.5.
        assert!((inc_beta(0.3, 1.0, 1.0) - 0.3).abs() < 1e-12);
        assert!((inc_beta(0.5, 7.0, 7.0) - 0.5).abs() < 1e-12);
        // Reference values from scipy 1.x: f.sf(2.5, 29, 59), f.sf(1.5, 29, 59),
        // special.betainc(2.5, 4.5, 0.2).
        assert!((f_test_p(2.5, 29.0, 59.0) - 0.001_436_769_084_329_882_1).abs() < 1e-13);
        assert!((f_test_p(1.5, 29.0, 59.0) - 0.093_636_899_266_782_1).abs() < 1e-13);
        assert!((inc_beta(0.2, 2.5, 4.5) - 0.196_392_949_247_583_44).abs() < 1e-13);
        assert_eq!(f_test_p(f64::INFINITY, 5.0, 5.0), 0.0);
        assert_eq!(f_test_p(0.0, 5.0, 5.0), 1.0);
    }

    #[test]
    fn large_offsets_keep_precision() {
        // A naive Σx² − (Σx)²/n loses every digit here.
        let v: Vec<f64> = (0..1000).map(|i| 1e9 + (i % 2) as f64).collect();
        let m = Moments::of(v.iter().copied());
        let expected = 0.25 * 1000.0 / 999.0;
        assert!((m.variance() - expected).abs() < 1e-9, "{}", m.variance());
        let mut r = Moments::new();
        v.iter().for_each(|&x| r.push(x));
        assert!((r.variance() - expected).abs() < 1e-6, "{}", r.variance());
    }

    proptest! {
        #[test]
        fn stdev_of_a_constant_is_zero(c in -1e12f64..1e12, n in 1usize..200) {
            let v = vec![c; n];
            let m = Moments::of(v.iter().copied());
            prop_assert_eq!(m.stdev(), 0.0);
            let mut r = Moments::new();
            v.iter().for_each(|&x| r.push(x));
            prop_assert_eq!(r.stdev(), 0.0);
        }

        #[test]
        fn running_moments_match_two_pass_after_removals(
            v in prop::collection::vec(-1e6f64..1e6, 2..300), drop in 0usize..150
        ) {
            let drop = drop.min(v.len() - 2);
            let mut r = Moments::new();
            v.iter().for_each(|&x| r.push(x));
            v[..drop].iter().for_each(|&x| {
                r.remove(x);
            });
            let exact = Moments::of(v[drop..].iter().copied());
            prop_assert_eq!(r.n(), exact.n());
            prop_assert!((r.mean() - exact.mean()).abs() <= 1e-6 * (1.0 + exact.mean().abs()));
            prop_assert!((r.variance() - exact.variance()).abs() <= 1e-6 * (1.0 + exact.variance()));
        }

        #[test]
        fn median_is_order_invariant(mut v in prop::collection::vec(-1e6f64..1e6, 1..100)) {
            let a = median(&v);
            v.reverse();
            prop_assert_eq!(a, median(&v));
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            let n = s.len();
            let expected = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
            prop_assert_eq!(a, Some(expected));
        }
    }
}
