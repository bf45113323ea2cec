//! The operator's metrics (design §8), registered once and shared by both controllers and the
//! `/metrics` endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// `{controller}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `coherencepolicy` or `finopsgate`.
    pub controller: String,
}

/// `{controller, reason}` of an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `coherencepolicy` or `finopsgate`.
    pub controller: String,
    /// `Error::metric_label()` of the error.
    pub reason: String,
}

/// `{namespace, policy, action}` of a veto.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VetoLabels {
    /// Policy namespace.
    pub namespace: String,
    /// Policy name.
    pub policy: String,
    /// Vetoed action (`pause-rollout`, …).
    pub action: String,
}

/// `{namespace, gate}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    /// Gate namespace.
    pub namespace: String,
    /// Gate name.
    pub gate: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    /// `coherence_reconcile_duration_seconds{controller}`.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// `coherence_reconcile_errors_total{controller, reason}`.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// `coherence_veto_active{namespace,policy,action}`: 1 while the veto holds.
    pub veto_active: Family<VetoLabels, Gauge>,
    /// `coherence_finops_fti{namespace,gate}`.
    pub finops_fti: Family<GateLabels, Gauge<f64, AtomicU64>>,
    /// `coherence_finops_grade{namespace,gate}`: 0 OK, 1 WARN, 2 FAIL (absent when UNKNOWN).
    pub finops_grade: Family<GateLabels, Gauge>,
    /// The action exported per policy, to remove its series when it changes or clears.
    veto_actions: Mutex<HashMap<(String, String), String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            }),
            reconcile_errors: Family::default(),
            veto_active: Family::default(),
            finops_fti: Family::default(),
            finops_grade: Family::default(),
            veto_actions: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` (names without the `_total` suffix the client adds).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coherence_reconcile_duration_seconds",
            "Time of one reconcile",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "coherence_reconcile_errors",
            "Reconciles that failed, by error reason",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "coherence_veto_active",
            "1 while a policy's veto holds (recommend and enforce modes)",
            self.veto_active.clone(),
        );
        registry.register(
            "coherence_finops_fti",
            "Mean FinOps Trade-off Index of a gate",
            self.finops_fti.clone(),
        );
        registry.register(
            "coherence_finops_grade",
            "Grade of a gate: 0 OK, 1 WARN, 2 FAIL",
            self.finops_grade.clone(),
        );
    }

    /// Starts timing a reconcile of `controller`; the time is observed when the guard drops.
    pub fn time(&self, controller: &str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller: controller.to_string(),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, controller: &str, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Sets the veto of a policy: exactly one action (or none) is active per policy.
    pub fn set_veto(&self, namespace: &str, policy: &str, action: Option<&str>) {
        let key = (namespace.to_string(), policy.to_string());
        let mut last = self.veto_actions.lock().unwrap_or_else(|e| e.into_inner());
        let previous = match action {
            Some(a) => last.insert(key, a.to_string()),
            None => last.remove(&key),
        };
        // Drop the series of an action that no longer holds, so a cleared veto disappears.
        if let Some(p) = previous.filter(|p| Some(p.as_str()) != action) {
            self.veto_active.remove(&VetoLabels {
                namespace: namespace.into(),
                policy: policy.into(),
                action: p,
            });
        }
        if let Some(a) = action {
            self.veto_active
                .get_or_create(&VetoLabels {
                    namespace: namespace.into(),
                    policy: policy.into(),
                    action: a.into(),
                })
                .set(1);
        }
    }

    /// Sets or clears a gate's FTI and grade.
    pub fn set_gate(&self, namespace: &str, gate: &str, fti: Option<f64>, grade: Option<i64>) {
        let l = GateLabels {
            namespace: namespace.into(),
            gate: gate.into(),
        };
        match fti {
            Some(f) => {
                self.finops_fti.get_or_create(&l).set(f);
            }
            None => {
                self.finops_fti.remove(&l);
            }
        }
        match grade {
            Some(g) => {
                self.finops_grade.get_or_create(&l).set(g);
            }
            None => {
                self.finops_grade.remove(&l);
            }
        }
    }
}

/// Observes a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: String,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: std::mem::take(&mut self.controller),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}
