//! FinOpsGate evaluation: the target's price per replica-hour (from `costPerReplicaHourUsd`,
//! or the pod's requests × unit prices) and the verifier's per-pod samples give FTI, grade and
//! λ_effective through `coherence_core::finops`. Too few samples is `UNKNOWN`, never `OK`.

use crate::crd::{
    FinOpsGateSpec, FinOpsGateStatus, GateBaseline, GateExplain, GateInputs, GateMedians,
};
use crate::error::Error;
use crate::status::condition;
use crate::verifier::FinopsSample;
use coherence_core::finops::{
    Accumulator, Baseline, FTI_FORMULA, Grade, LAMBDA_FORMULA, LambdaParams, Sample, Thresholds,
};
use coherence_core::stats::median;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Requests of one pod.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodRequests {
    /// CPU, cores.
    pub cpu_cores: f64,
    /// Memory, GiB.
    pub memory_gib: f64,
}

/// Parses a Kubernetes quantity (`250m`, `1.5`, `512Mi`, `1G`, `1e3`) into its plain value.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            return n
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v * mult);
        }
    }
    for (s, mult) in [("P", 1e15), ("E", 1e18)] {
        if let Some(n) = q.strip_suffix(s) {
            return n
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v * mult);
        }
    }
    q.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// The summed requests of a pod's containers (init containers that keep running — native
/// sidecars — count too; others end before the pod serves).
pub fn pod_requests(spec: &PodSpec) -> Result<PodRequests, Error> {
    let mut r = PodRequests::default();
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    for c in spec.containers.iter().chain(sidecars) {
        let Some(req) = c.resources.as_ref().and_then(|r| r.requests.as_ref()) else {
            continue;
        };
        for (key, slot, div) in [
            ("cpu", &mut r.cpu_cores, 1.0),
            ("memory", &mut r.memory_gib, 1073741824.0),
        ] {
            if let Some(q) = req.get(key) {
                let v = parse_quantity(&q.0).ok_or_else(|| Error::Reference {
                    kind: "Pod template",
                    name: c.name.clone(),
                    message: format!("resources.requests.{key}: cannot read quantity {:?}", q.0),
                })?;
                *slot += v / div;
            }
        }
    }
    Ok(r)
}

/// What the reconciler found for a gate.
#[derive(Debug, Clone)]
pub struct GateObservation<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The target's pod requests, or why the target cannot be used.
    pub target: Result<PodRequests, String>,
    /// The verifier's samples of the target, or why they could not be read.
    pub samples: Result<&'a [FinopsSample], String>,
    /// The target's last rollout, when known.
    pub last_rollout: Option<Timestamp>,
    /// Now.
    pub now: Timestamp,
}

/// Price of one replica-hour, with the source and requests behind it.
pub fn replica_cost(spec: &FinOpsGateSpec, req: PodRequests) -> Result<(f64, &'static str), Error> {
    let c = &spec.cost;
    match (
        c.cost_per_replica_hour_usd,
        c.cpu_hour_usd,
        c.memory_gib_hour_usd,
    ) {
        (Some(p), None, None) => Ok((p, "costPerReplicaHourUsd")),
        (None, Some(cpu), Some(mem)) => {
            Ok((cpu * req.cpu_cores + mem * req.memory_gib, "requests"))
        }
        _ => Err(Error::invalid(
            "spec.cost",
            "expected costPerReplicaHourUsd, or cpuHourUsd with memoryGibHourUsd",
        )),
    }
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
}

/// The gate's status. `previous` keeps condition transition times.
pub fn evaluate(
    spec: &FinOpsGateSpec,
    previous: Option<&FinOpsGateStatus>,
    obs: &GateObservation<'_>,
) -> FinOpsGateStatus {
    let prev: &[_] = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let cond =
        |t: &str, s: &str, r: &str, m: String| condition(prev, t, s, r, m, obs.generation, obs.now);
    let not_ready = |reason: &str, msg: String| FinOpsGateStatus {
        grade: Some(Grade::Unknown.as_str().to_string()),
        last_evaluated: Some(Time(obs.now)),
        conditions: vec![
            cond("Passed", "Unknown", reason, msg.clone()),
            cond("Ready", "False", reason, msg),
        ],
        observed_generation: obs.generation,
        ..FinOpsGateStatus::default()
    };
    let req = match &obs.target {
        Ok(r) => *r,
        Err(e) => return not_ready("TargetUnavailable", e.clone()),
    };
    let samples = match &obs.samples {
        Ok(s) => *s,
        Err(e) => return not_ready("VerifierUnavailable", e.clone()),
    };
    let (cost, cost_source) = match replica_cost(spec, req) {
        Ok(c) => c,
        Err(e) => return not_ready("InvalidSpec", e.to_string()),
    };
    let rollout_ms = obs.last_rollout.map(|t| t.as_millisecond());
    let evaluated: Vec<&FinopsSample> = samples
        .iter()
        .filter(|s| rollout_ms.is_none_or(|r| s.at_ms >= r))
        .collect();
    let col = |v: &[&FinopsSample], f: fn(&FinopsSample) -> f64| -> Vec<f64> {
        v.iter().map(|s| f(s)).collect()
    };
    let b = &spec.baseline;
    let baseline = match (&b.window, b.qps, b.latency_p95_ms, b.cost_usd_per_hour) {
        (None, Some(q), Some(l), Some(c)) => Ok((
            Baseline {
                qps: q,
                latency_p95_ms: l,
                infra_cost_usd: c,
            },
            None,
        )),
        (Some(w), _, _, _) => {
            let span = crate::render::duration_ms(w).and_then(|ms| i64::try_from(ms).ok());
            match (span, rollout_ms) {
                (None, _) => Err(format!("spec.baseline.window: cannot read {w:?}")),
                (_, None) => {
                    Err("the target's last rollout is unknown: no window before it".to_string())
                }
                (Some(span), Some(r)) => {
                    let before: Vec<&FinopsSample> = samples
                        .iter()
                        .filter(|s| s.at_ms < r && s.at_ms >= r - span)
                        .collect();
                    match (
                        median(&col(&before, |s| s.qps)),
                        median(&col(&before, |s| s.latency_p95_ms)),
                    ) {
                        (Some(q), Some(l)) if (before.len() as u64) >= spec.min_samples => {
                            // The operator has no price history: the baseline is priced now.
                            Ok((
                                Baseline {
                                    qps: q,
                                    latency_p95_ms: l,
                                    infra_cost_usd: cost,
                                },
                                Some(before.len() as u64),
                            ))
                        }
                        _ => Err(format!(
                            "{} samples in the {w} before the last rollout, {} needed",
                            before.len(),
                            spec.min_samples
                        )),
                    }
                }
            }
        }
        _ => Err(
            "spec.baseline: expected window, or qps, latencyP95Ms and costUsdPerHour".to_string(),
        ),
    };
    let thresholds = Thresholds {
        ok: spec.thresholds.ok,
        warn: spec.thresholds.warn,
    };
    let lambda = LambdaParams {
        sibg: spec.lambda.sibg,
        asdpi: spec.lambda.asdpi,
    };
    let days = obs
        .last_rollout
        .map(|t| ((obs.now.as_millisecond() - t.as_millisecond()) as f64 / 86_400_000.0).max(0.0));
    let mut inputs = GateInputs {
        cost_per_replica_hour_usd: cost,
        cost_source: cost_source.to_string(),
        cpu_request_cores: (cost_source == "requests").then_some(req.cpu_cores),
        memory_request_gib: (cost_source == "requests").then_some(req.memory_gib),
        samples_received: samples.len() as u64,
        samples_evaluated: evaluated.len() as u64,
        window_start: evaluated.iter().map(|s| s.at_ms).min().and_then(rfc3339_ms),
        window_end: evaluated.iter().map(|s| s.at_ms).max().and_then(rfc3339_ms),
        last_rollout: obs.last_rollout.map(|t| t.to_string()),
        days_since_change: days,
        min_samples: spec.min_samples,
        thresholds: spec.thresholds.clone(),
        lambda: spec.lambda.clone(),
    };
    let medians = GateMedians {
        qps: median(&col(&evaluated, |s| s.qps)),
        latency_p95_ms: median(&col(&evaluated, |s| s.latency_p95_ms)),
    };
    let (base, base_samples) = match baseline {
        Ok(b) => b,
        Err(msg) => {
            let mut st = not_ready("BaselineUnavailable", msg);
            st.samples = 0;
            inputs.samples_evaluated = evaluated.len() as u64;
            st.explain = Some(GateExplain {
                formula: FTI_FORMULA.into(),
                lambda_formula: LAMBDA_FORMULA.into(),
                inputs,
                medians,
                baseline: GateBaseline {
                    source: "window".into(),
                    ..GateBaseline::default()
                },
                engine_version: coherence_core::ENGINE_VERSION.into(),
                ..GateExplain::default()
            });
            st.lambda_effective = days.map(|d| lambda.effective(d));
            return st;
        }
    };
    let mut acc = match Accumulator::new(base, thresholds) {
        Ok(a) => a,
        Err(e) => return not_ready("InvalidSpec", e),
    };
    for s in &evaluated {
        // Every sample is priced at the gate's price: the sidecar's own price may differ.
        let _ = acc.push(&Sample {
            qps: s.qps,
            latency_p95_ms: s.latency_p95_ms,
            infra_cost_usd: cost,
        });
    }
    let report = acc.finish(&lambda, days.unwrap_or(0.0), spec.min_samples);
    let grade = report.grade;
    let passed = match grade {
        Grade::Unknown => cond(
            "Passed",
            "Unknown",
            "InsufficientSamples",
            format!(
                "{} priced samples, {} needed",
                report.samples, spec.min_samples
            ),
        ),
        Grade::Ok | Grade::Warn => cond(
            "Passed",
            "True",
            grade_word(grade),
            format!(
                "FTI {:.4} ≤ warn {}",
                report.fti_avg.unwrap_or(0.0),
                spec.thresholds.warn
            ),
        ),
        Grade::Fail => cond(
            "Passed",
            "False",
            "Fail",
            format!(
                "FTI {:.4} > warn {}",
                report.fti_avg.unwrap_or(0.0),
                spec.thresholds.warn
            ),
        ),
    };
    let ready = cond(
        "Ready",
        "True",
        "Evaluated",
        format!("{} samples evaluated", report.samples),
    );
    FinOpsGateStatus {
        fti: if grade == Grade::Unknown {
            None
        } else {
            report.fti_avg
        },
        grade: Some(grade.as_str().to_string()),
        lambda_effective: days.map(|_| report.lambda_effective),
        samples: report.samples,
        last_evaluated: Some(Time(obs.now)),
        explain: Some(GateExplain {
            formula: FTI_FORMULA.into(),
            lambda_formula: LAMBDA_FORMULA.into(),
            inputs,
            medians,
            baseline: GateBaseline {
                source: if base_samples.is_some() {
                    "window"
                } else {
                    "explicit"
                }
                .into(),
                qps: Some(base.qps),
                latency_p95_ms: Some(base.latency_p95_ms),
                cost_usd_per_hour: Some(base.infra_cost_usd),
                samples: base_samples,
            },
            excluded: report.excluded,
            grades: report.grades,
            engine_version: coherence_core::ENGINE_VERSION.into(),
        }),
        conditions: vec![passed, ready],
        observed_generation: obs.generation,
    }
}

fn grade_word(g: Grade) -> &'static str {
    match g {
        Grade::Unknown => "Unknown",
        Grade::Ok => "Ok",
        Grade::Warn => "Warn",
        Grade::Fail => "Fail",
    }
}

/// `true` when the gate's status is a veto on the target's rollout.
pub fn vetoes(spec: &FinOpsGateSpec, status: &FinOpsGateStatus) -> bool {
    spec.enforce && status.grade.as_deref() == Some(Grade::Fail.as_str())
}
