//! The FinOpsGate reconciler.
//!
//! - **Read**: the target (Deployment or StatefulSet, same namespace) and the requests of its
//!   pod template (`finops::pod_requests`), the verifier's FinOps samples of the workload, and
//!   the target's **last rollout**:
//!   - Deployment: the creation time of its newest ReplicaSet (highest
//!     `deployment.kubernetes.io/revision` among the ReplicaSets it controls). A new
//!     ReplicaSet is created exactly when the pod template changes, whereas the `Progressing`
//!     condition's `lastUpdateTime` also moves on scaling and on every rollout step. A rollback
//!     to an old template reuses an old ReplicaSet, so the time is then that ReplicaSet's
//!     creation (older than the rollback): the baseline window may then start too early.
//!   - StatefulSet: the creation time of the ControllerRevision named by
//!     `status.updateRevision`.
//! - **Build**: `finops::evaluate` (FTI, grade, λ_effective, explain, conditions).
//! - **Status** by server-side apply when it changed. `lastEvaluated` alone does not count as
//!   a change for ten minutes, so a steady gate is written at most every ten minutes.
//! - **Veto**: with `enforce`, a FAIL pauses the target Deployment (owner
//!   `finopsgate/<gate>`), and a later grade releases it.
//! - **Alerts**: when the PrometheusRule kind exists, the gate's rule (`alerts::gate_rule`)
//!   by server-side apply; the cleanup deletes it.
//! - An Event when the `Passed` condition or the grade changed.

use super::policy::{deployment_state, enforce};
use super::{
    Context, Error, FIELD_MANAGER, FINALIZER, ignore_not_found, object_key, sync_prometheus_rule,
};
use crate::alerts;
use crate::crd::{FinOpsGate, FinOpsGateStatus, TargetKind};
use crate::finops::{self, GateObservation, PodRequests};
use crate::owner;
use crate::verifier::FinopsSample;
use crate::veto;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;

/// `controller` label of this reconciler's metrics.
pub const CONTROLLER: &str = "finopsgate";

/// A steady gate's status is rewritten (for `lastEvaluated`) after this long, ms.
const REFRESH_MS: i64 = 10 * 60 * 1000;

/// Reconciles one gate (under the finalizer).
pub async fn reconcile(gate: Arc<FinOpsGate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time(CONTROLLER);
    let key = object_key(gate.as_ref());
    let (ns, _) = owner::namespaced_name(gate.as_ref())?;
    let api: Api<FinOpsGate> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(gate) = super::with_finalizer(&api, gate).await? else {
        return Ok(Action::await_change());
    };
    let out = finalizer(&api, FINALIZER, gate, |event| async {
        match event {
            Finalizer::Apply(g) => apply_gate(&g, &ctx).await,
            Finalizer::Cleanup(g) => cleanup(&g, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&key);
    Ok(out)
}

/// After a failed reconcile: wait for a change (invalid spec) or back off.
pub fn error_policy(gate: Arc<FinOpsGate>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(CONTROLLER, &object_key(gate.as_ref()), error)
}

fn time_of<K: Resource>(o: &K) -> Option<Timestamp> {
    o.meta().creation_timestamp.as_ref().map(|t| t.0)
}

/// The target's pod template and last rollout, or why it cannot be used.
async fn read_target(
    gate: &FinOpsGate,
    ns: &str,
    ctx: &Context,
) -> Result<Result<(PodTemplateSpec, Option<Timestamp>, Option<Deployment>), String>, Error> {
    let t = &gate.spec.target_ref;
    let c = ctx.client.clone();
    match t.kind {
        TargetKind::Deployment => {
            // Read through the API even where `run` keeps a Deployment cache: the cache holds
            // no pod specs (they are most of a Deployment's size, and only gates price them).
            let api: Api<Deployment> = Api::namespaced(c.clone(), ns);
            let d = ignore_not_found(api.get(&t.name).await)?;
            let Some(d) = d else {
                return Ok(Err(format!("Deployment {} not found", t.name)));
            };
            let Some(spec) = d.spec.clone() else {
                return Ok(Err(format!("Deployment {} has no spec", t.name)));
            };
            let uid = d.uid().unwrap_or_default();
            let rollout = match Selector::try_from(spec.selector.clone()) {
                Ok(sel) => {
                    let rs: Api<ReplicaSet> = Api::namespaced(c, ns);
                    rs.list(&ListParams::default().labels_from(&sel))
                        .await?
                        .items
                        .into_iter()
                        .filter(|r| super::controlled_by(r, &uid))
                        .max_by_key(|r| {
                            r.annotations()
                                .get("deployment.kubernetes.io/revision")
                                .and_then(|v| v.parse::<u64>().ok())
                                .unwrap_or(0)
                        })
                        .and_then(|r| time_of(&r))
                }
                Err(_) => None,
            };
            Ok(Ok((spec.template, rollout, Some(d))))
        }
        TargetKind::StatefulSet => {
            let api: Api<StatefulSet> = Api::namespaced(c.clone(), ns);
            let Some(s) = ignore_not_found(api.get(&t.name).await)? else {
                return Ok(Err(format!("StatefulSet {} not found", t.name)));
            };
            let Some(spec) = s.spec.clone() else {
                return Ok(Err(format!("StatefulSet {} has no spec", t.name)));
            };
            let revision = s.status.as_ref().and_then(|st| st.update_revision.clone());
            let rollout = match revision {
                Some(r) => {
                    let api: Api<ControllerRevision> = Api::namespaced(c, ns);
                    ignore_not_found(api.get(&r).await)?.and_then(|cr| time_of(&cr))
                }
                None => None,
            };
            Ok(Ok((spec.template, rollout, None)))
        }
    }
}

fn grade_rank(grade: Option<&str>) -> Option<i64> {
    match grade? {
        "OK" => Some(0),
        "WARN" => Some(1),
        "FAIL" => Some(2),
        _ => None,
    }
}

fn passed(s: Option<&FinOpsGateStatus>) -> Option<(String, String)> {
    s?.conditions
        .iter()
        .find(|c| c.type_ == "Passed")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// `true` when `new` differs from `previous` in more than a recent `lastEvaluated`.
fn changed(previous: Option<&FinOpsGateStatus>, new: &FinOpsGateStatus, now: Timestamp) -> bool {
    let Some(p) = previous else { return true };
    let recent = p
        .last_evaluated
        .as_ref()
        .is_some_and(|t| now.as_millisecond() - t.0.as_millisecond() < REFRESH_MS);
    let mut same = new.clone();
    same.last_evaluated = p.last_evaluated.clone();
    !(recent && &same == p)
}

async fn apply_gate(gate: &FinOpsGate, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = owner::namespaced_name(gate)?;
    let api: Api<FinOpsGate> = Api::namespaced(ctx.client.clone(), &ns);
    let now = ctx.now();
    let previous = gate.status.as_ref();

    // Read.
    let target = read_target(gate, &ns, ctx).await?;
    let requests: Result<PodRequests, String> = match &target {
        Ok((tpl, _, _)) => match &tpl.spec {
            Some(spec) => finops::pod_requests(spec).map_err(|e| e.to_string()),
            None => Err("the pod template has no spec".into()),
        },
        Err(e) => Err(e.clone()),
    };
    let samples: Result<Vec<FinopsSample>, String> = ctx
        .verifier
        .workload(&ns, &gate.spec.target_ref.name)
        .await
        .map(|w| w.map(|w| w.finops.recent).unwrap_or_default())
        .map_err(|e| e.to_string());
    let last_rollout = target.as_ref().ok().and_then(|t| t.1);

    // Build.
    let obs = GateObservation {
        generation: gate.metadata.generation,
        target: requests,
        samples: samples.as_deref().map_err(Clone::clone),
        last_rollout,
        now,
    };
    let new = finops::evaluate(&gate.spec, previous, &obs);

    // Veto: only a Deployment can be paused; a missing target has nothing to release.
    if let Ok((_, _, Some(d))) = &target {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let state = deployment_state(d, finops::vetoes(&gate.spec, &new));
        enforce(
            &deployments,
            &veto::gate_owner(&name),
            gate.spec.enforce,
            &[state],
        )
        .await?;
    }

    // Alerts.
    if ctx.prometheus_rules {
        let uid = gate.uid().ok_or(crate::Error::MissingMetadata("uid"))?;
        let rule = alerts::gate_rule(gate)?;
        let rule_name = rule.name_any();
        sync_prometheus_rule(ctx, &ns, &uid, &rule_name, Some(rule)).await?;
    }

    // Status, Event, metrics.
    if changed(previous, &new, now) {
        let patch = json!({
            "apiVersion": crate::crd::API_VERSION,
            "kind": "FinOpsGate",
            "status": new,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    let grade_changed = previous.and_then(|p| p.grade.as_deref()) != new.grade.as_deref();
    if passed(previous) != passed(Some(&new)) || grade_changed {
        let grade = new.grade.clone().unwrap_or_else(|| "UNKNOWN".into());
        let fail = grade == "FAIL";
        let ev = Event {
            type_: if fail {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: format!("Grade{}", grade_word(&grade)),
            note: Some(match new.fti {
                Some(f) => format!("FTI {f:.3}, grade {grade}"),
                None => format!("grade {grade}"),
            }),
            action: "Evaluate".into(),
            secondary: None,
        };
        if let Err(e) = ctx.events.publish(&ev, &gate.object_ref(&())).await {
            tracing::warn!(gate = object_key(gate), error = %e, "cannot record an Event");
        }
    }
    ctx.metrics
        .set_gate(&ns, &name, new.fti, grade_rank(new.grade.as_deref()));
    Ok(Action::requeue(ctx.resync))
}

fn grade_word(g: &str) -> String {
    let mut c = g.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn cleanup(gate: &FinOpsGate, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = owner::namespaced_name(gate)?;
    if gate.spec.target_ref.kind == TargetKind::Deployment {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(d) = ignore_not_found(api.get(&gate.spec.target_ref.name).await)? {
            enforce(
                &api,
                &veto::gate_owner(&name),
                false,
                &[deployment_state(&d, false)],
            )
            .await?;
        }
    }
    if let Some(uid) = gate.uid() {
        sync_prometheus_rule(ctx, &ns, &uid, &alerts::gate_rule_name(&name), None).await?;
    }
    ctx.metrics.set_gate(&ns, &name, None, None);
    Ok(Action::await_change())
}
