//! The worked examples of `docs/metrics.md`, recomputed: if a formula changes, the page must too.

use coherence_core::detect::{self, DetectorConfig, Point};
use coherence_core::finops::{Accumulator, Baseline, Grade, LambdaParams, Sample, Thresholds};
use coherence_core::window::{DriftRisk, DriftThresholds, RollingWindow, WindowSpan};

#[test]
fn window_example() {
    let xs = [
        92.0, 95.0, 91.0, 94.0, 90.0, 96.0, 93.0, 89.0, 97.0, 93.0, 70.0, 98.0,
    ];
    let mut w = RollingWindow::new("1h".parse::<WindowSpan>().unwrap());
    for (i, x) in xs.iter().enumerate() {
        w.push(i as i64 * 60_000, *x).unwrap();
    }
    let s = w.stats();
    assert_eq!(s.mean, 91.5);
    assert!((s.stdev - 7.305_041_845).abs() < 1e-9);
    assert!((s.volatility_index - 0.079_836_5).abs() < 1e-7);
    let (risk, rule) = DriftThresholds::coherence_score().assess(&s);
    assert_eq!(risk, DriftRisk::Low);
    assert_eq!(rule, "volatilityIndex 0.0798 ≤ 0.1 and mean 91.5000 ≥ 80");

    let mut nine = RollingWindow::new("1h".parse::<WindowSpan>().unwrap());
    for (i, x) in xs[..9].iter().enumerate() {
        nine.push(i as i64 * 60_000, *x).unwrap();
    }
    assert_eq!(
        DriftThresholds::coherence_score().risk(&nine.stats()),
        DriftRisk::InsufficientData
    );
}

#[test]
fn robust_z_example() {
    let base = [
        100.0, 101.0, 99.0, 100.0, 102.0, 98.0, 100.0, 101.0, 99.0, 100.0,
    ];
    // 60 baseline points (the ten above, six times) and 30 recent ones, two of them at 110.
    let mut pts: Vec<Point> = (0..60)
        .map(|i| (i * 10_000, base[i as usize % 10]))
        .collect();
    for i in 60..90 {
        let v = if i == 70 || i == 80 {
            110.0
        } else {
            base[i as usize % 10]
        };
        pts.push((i * 10_000, v));
    }
    let f = detect::robust_z("latency", &pts, &DetectorConfig::default()).unwrap();
    assert_eq!(f.evidence.inputs["median"], 100.0);
    assert_eq!(f.evidence.inputs["mad"], 1.0);
    assert!((f.evidence.inputs["maxZ"] - 6.745).abs() < 1e-9);
    assert!((f.risk - 0.63).abs() < 0.005, "{}", f.risk);
}

#[test]
fn finops_example() {
    let b = Baseline {
        qps: 120.0,
        latency_p95_ms: 80.0,
        infra_cost_usd: 0.000556,
    };
    let mut acc = Accumulator::new(b, Thresholds::default()).unwrap();
    let samples = [
        (120.0, 80.0, 0.000556),
        (100.0, 96.0, 0.000556),
        (130.0, 78.0, 0.000700),
    ];
    let mut ftis = Vec::new();
    for (q, l, c) in samples {
        ftis.push(
            acc.push(&Sample {
                qps: q,
                latency_p95_ms: l,
                infra_cost_usd: c,
            })
            .unwrap(),
        );
    }
    assert!((ftis[0].0 - 1.0).abs() < 1e-12);
    assert!((ftis[1].0 - 1.44).abs() < 1e-12);
    assert!((ftis[2].0 - 1.1331).abs() < 1e-4);
    assert_eq!(ftis[1].1, Grade::Fail);
    let r = acc.finish(&LambdaParams::default(), 0.25, 1);
    assert!((r.fti_avg.unwrap() - 1.1910).abs() < 1e-4);
    assert_eq!((r.grade, r.grade_worst), (Grade::Fail, Grade::Fail));
    assert!((r.lambda_effective - 0.098_757_78).abs() < 1e-8);
    assert!((LambdaParams::default().effective(14.0) - 0.049_658_53).abs() < 1e-8);
}
