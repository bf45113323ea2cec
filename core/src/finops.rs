//! FinOps: the FinOps Trade-off Index (FTI), grades and λ_effective.
//!
//! Per sample, `FTI = (cost/cost₀) / ((qps/qps₀)·(lat₀/lat))` against a baseline: above 1 the
//! workload pays more per unit of delivered performance than its baseline did. `fti` is the
//! mean over the samples; a grade is `OK` when `FTI ≤ ok`, `WARN` when `ok < FTI ≤ warn`, `FAIL`
//! above `warn`. `λ_effective = λ_SIBG · exp(−λ_ASDPI · days_since_change)` weighs how much a
//! grade should count given how long ago the workload last changed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The formula carried in every explanation.
pub const FTI_FORMULA: &str =
    "FTI = (cost/cost0) / ((qps/qps0) * (lat0/lat)); fti = mean over samples";
/// The λ formula carried in every explanation.
pub const LAMBDA_FORMULA: &str = "lambda_effective = sibg * exp(-asdpi * days_since_change)";

/// The reference the samples are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Requests per second.
    pub qps: f64,
    /// p95 latency, ms.
    pub latency_p95_ms: f64,
    /// Cost per sample, USD.
    pub infra_cost_usd: f64,
}

impl Baseline {
    /// Checks every field is a positive finite number.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("qps", self.qps),
            ("latency_p95_ms", self.latency_p95_ms),
            ("infra_cost_usd", self.infra_cost_usd),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!(
                    "baseline.{name}: expected a positive number, got {v}"
                ));
            }
        }
        Ok(())
    }
}

/// One FinOps sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Requests per second.
    pub qps: f64,
    /// p95 latency, ms.
    pub latency_p95_ms: f64,
    /// Cost of the sample's interval, USD.
    pub infra_cost_usd: f64,
}

/// Grade of an FTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Grade {
    /// Too few samples to grade: never a pass.
    Unknown,
    /// `FTI ≤ ok`.
    Ok,
    /// `ok < FTI ≤ warn`.
    Warn,
    /// `FTI > warn`.
    Fail,
}

impl Grade {
    /// Gauge value of `coherence_finops_grade` (0 OK, 1 WARN, 2 FAIL; none for UNKNOWN).
    pub fn level(self) -> Option<u8> {
        match self {
            Grade::Unknown => None,
            Grade::Ok => Some(0),
            Grade::Warn => Some(1),
            Grade::Fail => Some(2),
        }
    }

    /// Upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Unknown => "UNKNOWN",
            Grade::Ok => "OK",
            Grade::Warn => "WARN",
            Grade::Fail => "FAIL",
        }
    }
}

/// Grade thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// Highest FTI graded OK.
    pub ok: f64,
    /// Highest FTI graded WARN.
    pub warn: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            ok: 1.00,
            warn: 1.05,
        }
    }
}

impl Thresholds {
    /// Checks `0 < ok ≤ warn`.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.ok.is_finite() && self.ok > 0.0) {
            return Err(format!(
                "thresholds.ok: expected a positive number, got {}",
                self.ok
            ));
        }
        if !(self.warn.is_finite() && self.warn >= self.ok) {
            return Err(format!(
                "thresholds.warn: expected a number ≥ ok ({}), got {}",
                self.ok, self.warn
            ));
        }
        Ok(())
    }

    /// Grade of one FTI.
    pub fn grade(&self, fti: f64) -> Grade {
        if fti <= self.ok {
            Grade::Ok
        } else if fti <= self.warn {
            Grade::Warn
        } else {
            Grade::Fail
        }
    }
}

/// Parameters of λ_effective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LambdaParams {
    /// λ_SIBG: the weight right after a change.
    pub sibg: f64,
    /// λ_ASDPI: decay per day since the change.
    pub asdpi: f64,
}

impl Default for LambdaParams {
    fn default() -> Self {
        Self {
            sibg: 0.10,
            asdpi: 0.05,
        }
    }
}

impl LambdaParams {
    /// Checks both are finite and non-negative.
    pub fn validate(&self) -> Result<(), String> {
        for (n, v) in [("lambda.sibg", self.sibg), ("lambda.asdpi", self.asdpi)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{n}: expected a number ≥ 0, got {v}"));
            }
        }
        Ok(())
    }

    /// `sibg · exp(−asdpi · days)`; negative days count as 0.
    pub fn effective(&self, days_since_change: f64) -> f64 {
        self.sibg * (-self.asdpi * days_since_change.max(0.0)).exp()
    }
}

/// A sample that cannot be priced, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unpriceable(pub &'static str);

/// FTI of one sample.
pub fn fti(s: &Sample, b: &Baseline) -> Result<f64, Unpriceable> {
    if !(s.qps.is_finite() && s.qps > 0.0) {
        return Err(Unpriceable("qps: expected a positive number"));
    }
    if !(s.latency_p95_ms.is_finite() && s.latency_p95_ms > 0.0) {
        return Err(Unpriceable("latency_p95_ms: expected a positive number"));
    }
    if !(s.infra_cost_usd.is_finite() && s.infra_cost_usd >= 0.0) {
        return Err(Unpriceable("infra_cost_usd: expected a number ≥ 0"));
    }
    let cost_ratio = s.infra_cost_usd / b.infra_cost_usd;
    let perf = (s.qps / b.qps) * (b.latency_p95_ms / s.latency_p95_ms);
    Ok(cost_ratio / perf)
}

/// Streaming FinOps grading: push samples, then [`Accumulator::finish`].
#[derive(Debug, Clone)]
pub struct Accumulator {
    baseline: Baseline,
    thresholds: Thresholds,
    n: u64,
    sum: f64,
    comp: f64,
    grades: BTreeMap<Grade, u64>,
    excluded: BTreeMap<&'static str, u64>,
}

impl Accumulator {
    /// An accumulator against a validated baseline and thresholds.
    pub fn new(baseline: Baseline, thresholds: Thresholds) -> Result<Self, String> {
        baseline.validate()?;
        thresholds.validate()?;
        Ok(Self {
            baseline,
            thresholds,
            n: 0,
            sum: 0.0,
            comp: 0.0,
            grades: BTreeMap::new(),
            excluded: BTreeMap::new(),
        })
    }

    /// Prices one sample; returns its FTI and grade, or why it was excluded (also counted).
    pub fn push(&mut self, s: &Sample) -> Result<(f64, Grade), Unpriceable> {
        match fti(s, &self.baseline) {
            Ok(f) => {
                self.n += 1;
                // Kahan summation: a million samples near 1.0 keep their last digits.
                let y = f - self.comp;
                let t = self.sum + y;
                self.comp = (t - self.sum) - y;
                self.sum = t;
                let g = self.thresholds.grade(f);
                *self.grades.entry(g).or_default() += 1;
                Ok((f, g))
            }
            Err(e) => {
                *self.excluded.entry(e.0).or_default() += 1;
                Err(e)
            }
        }
    }

    /// The report; fewer than `min_samples` priced samples grade `UNKNOWN`.
    pub fn finish(
        &self,
        lambda: &LambdaParams,
        days_since_change: f64,
        min_samples: u64,
    ) -> Report {
        let enough = self.n >= min_samples.max(1);
        let fti_avg = (self.n > 0).then(|| self.sum / self.n as f64);
        let grade = match fti_avg {
            Some(f) if enough => self.thresholds.grade(f),
            _ => Grade::Unknown,
        };
        let worst = if enough {
            self.grades.keys().copied().max().unwrap_or(Grade::Unknown)
        } else {
            Grade::Unknown
        };
        Report {
            samples: self.n,
            excluded: self
                .excluded
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            fti_avg,
            grade,
            grade_worst: worst,
            grades: self
                .grades
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect(),
            lambda_effective: lambda.effective(days_since_change),
            explain: Explain {
                formula: FTI_FORMULA,
                baseline: self.baseline,
                thresholds: self.thresholds,
                min_samples,
                lambda: LambdaExplain {
                    params: *lambda,
                    days_since_change,
                    formula: LAMBDA_FORMULA,
                },
                engine_version: crate::ENGINE_VERSION,
            },
        }
    }
}

/// The outcome of FinOps grading, with its explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Samples priced.
    pub samples: u64,
    /// Samples excluded, by reason.
    pub excluded: BTreeMap<String, u64>,
    /// Mean FTI (none without samples).
    pub fti_avg: Option<f64>,
    /// Grade of the mean FTI.
    pub grade: Grade,
    /// Worst per-sample grade.
    pub grade_worst: Grade,
    /// Per-sample grade counts.
    pub grades: BTreeMap<String, u64>,
    /// λ_effective.
    pub lambda_effective: f64,
    /// How the numbers were made.
    pub explain: Explain,
}

/// Inputs and formulas of a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explain {
    /// FTI formula.
    pub formula: &'static str,
    /// Baseline used.
    pub baseline: Baseline,
    /// Grade thresholds.
    pub thresholds: Thresholds,
    /// Samples needed for a grade other than UNKNOWN.
    pub min_samples: u64,
    /// λ inputs.
    pub lambda: LambdaExplain,
    /// Engine version.
    pub engine_version: &'static str,
}

/// Inputs of λ_effective.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LambdaExplain {
    /// λ_SIBG and λ_ASDPI.
    pub params: LambdaParams,
    /// Days since the workload's last change.
    pub days_since_change: f64,
    /// Formula.
    pub formula: &'static str,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const B: Baseline = Baseline {
        qps: 100.0,
        latency_p95_ms: 80.0,
        infra_cost_usd: 0.01,
    };

    #[test]
    fn fti_matches_the_formula() {
        let same = Sample {
            qps: 100.0,
            latency_p95_ms: 80.0,
            infra_cost_usd: 0.01,
        };
        assert!((fti(&same, &B).unwrap() - 1.0).abs() < 1e-12);
        // Double cost, same performance: 2.
        let dear = Sample {
            infra_cost_usd: 0.02,
            ..same
        };
        assert!((fti(&dear, &B).unwrap() - 2.0).abs() < 1e-12);
        // Half the qps and double the latency at the same cost: 4.
        let slow = Sample {
            qps: 50.0,
            latency_p95_ms: 160.0,
            ..same
        };
        assert!((fti(&slow, &B).unwrap() - 4.0).abs() < 1e-12);
        assert_eq!(
            fti(&Sample { qps: 0.0, ..same }, &B).unwrap_err().0,
            "qps: expected a positive number"
        );
    }

    #[test]
    fn grades_and_worst_and_unknown() {
        let t = Thresholds::default();
        assert_eq!(t.grade(1.0), Grade::Ok);
        assert_eq!(t.grade(1.03), Grade::Warn);
        assert_eq!(t.grade(1.05), Grade::Warn);
        assert_eq!(t.grade(1.06), Grade::Fail);
        let mut acc = Accumulator::new(B, t).unwrap();
        for i in 0..20 {
            let cost = if i == 7 { 0.02 } else { 0.0099 };
            acc.push(&Sample {
                qps: 100.0,
                latency_p95_ms: 80.0,
                infra_cost_usd: cost,
            })
            .unwrap();
        }
        assert!(
            acc.push(&Sample {
                qps: f64::NAN,
                latency_p95_ms: 80.0,
                infra_cost_usd: 0.01
            })
            .is_err()
        );
        let r = acc.finish(&LambdaParams::default(), 2.0, 10);
        assert_eq!(r.samples, 20);
        assert_eq!(r.grade_worst, Grade::Fail);
        assert_eq!(r.grades["OK"], 19);
        assert_eq!(r.excluded["qps: expected a positive number"], 1);
        let expected = (19.0 * 0.99 + 2.0) / 20.0;
        assert!((r.fti_avg.unwrap() - expected).abs() < 1e-12);
        assert_eq!(r.grade, Grade::Warn);
        assert!((r.lambda_effective - 0.1 * (-0.1f64).exp()).abs() < 1e-15);
        let few = acc.finish(&LambdaParams::default(), 0.0, 100);
        assert_eq!(
            (few.grade, few.grade_worst),
            (Grade::Unknown, Grade::Unknown)
        );
        assert!(
            Thresholds { ok: 1.1, warn: 1.0 }
                .validate()
                .unwrap_err()
                .starts_with("thresholds.warn")
        );
        assert!(
            Accumulator::new(Baseline { qps: 0.0, ..B }, t)
                .unwrap_err()
                .starts_with("baseline.qps")
        );
    }
}
