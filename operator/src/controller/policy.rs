//! The CoherencePolicy reconciler.
//!
//! - **Read**: the metadata of the pods the selector matches in the policy's namespace
//!   (injected ones carry `coherence.dev/injected: <policy>`, set by the webhook and by
//!   `inject`), the namespace's Deployments — both from the watched caches under `run` — the
//!   objects the policy owns, and the verifier's summary of each target workload.
//! - **Targets** are the Deployments of the namespace whose *pod template* labels the selector
//!   matches. Chosen over "owners of the matched pods through their ReplicaSets": one list
//!   instead of a walk per pod, and a Deployment scaled to zero or not yet rolled out is still
//!   protected and can still be paused. A bare ReplicaSet or a StatefulSet is counted in the
//!   pods but gets no HPA/PDB/NetworkPolicy (`protect` is per Deployment).
//! - **Build**: `render::config_map`, `protect::protection` per target, `status::policy_status`.
//! - **Apply** by server-side apply with the field manager `coherence-operator`; owned objects
//!   the spec no longer asks for are deleted.
//! - **Alerts**: when the PrometheusRule kind exists, the policy's rules (`alerts`) by
//!   server-side apply too.
//! - **Veto**: `enforce` pauses the vetoed targets and releases what it paused
//!   (`veto::plan`, JSON merge patches).
//! - **Status** by server-side apply on the status subresource when it changed; an Event when
//!   a condition or the veto changed.
//!
//! Deleting a policy runs the cleanup under the finalizer `coherence.dev/cleanup`: every
//! Deployment it paused is released and every object it owns (PrometheusRule included) is
//! deleted.

use super::{
    Context, Error, FIELD_MANAGER, FINALIZER, apply, controlled_by, ignore_not_found, object_key,
    sync_prometheus_rule,
};
use crate::alerts;
use crate::crd::{CoherencePolicy, CoherencePolicyStatus};
use crate::owner::{self, PAUSED_BY_ANNOTATION, POLICY_LABEL};
use crate::protect::{self, Target};
use crate::render;
use crate::status::{self, PolicyObservation};
use crate::verifier::WorkloadSummary;
use crate::veto::{self, DeploymentState};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{PartialObjectMeta, Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

/// `controller` label of this reconciler's metrics.
pub const CONTROLLER: &str = "coherencepolicy";

/// Reconciles one policy (under the finalizer).
pub async fn reconcile(policy: Arc<CoherencePolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time(CONTROLLER);
    let key = object_key(policy.as_ref());
    let (ns, _) = owner::namespaced_name(policy.as_ref())?;
    let api: Api<CoherencePolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(policy) = super::with_finalizer(&api, policy).await? else {
        return Ok(Action::await_change());
    };
    let out = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Finalizer::Apply(p) => apply_policy(&p, &ctx).await,
            Finalizer::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&key);
    Ok(out)
}

/// After a failed reconcile: wait for a change (invalid spec) or back off.
pub fn error_policy(policy: Arc<CoherencePolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(CONTROLLER, &object_key(policy.as_ref()), error)
}

/// What the read stage found.
struct Observed {
    matched_pods: u32,
    injected_pods: u32,
    /// Every Deployment of the namespace (targets, and any this policy paused earlier).
    deployments: Vec<Deployment>,
    targets: Vec<Target>,
    workloads: Result<Vec<WorkloadSummary>, String>,
}

// A pod counts as injected when it carries the annotation the webhook (and `inject`) sets;
// its value names the policy that injected it. Metadata is all the count reads.
pub(crate) fn is_injected(meta: &kube::api::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(crate::inject::INJECTED_ANNOTATION))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

async fn observe(
    ns: &str,
    selector: &Selector,
    label_selector: &LabelSelector,
    ctx: &Context,
) -> Result<Observed, Error> {
    // From the watched caches when `run` keeps them, else by listing.
    let (matched_pods, injected_pods, deployments) = match &ctx.caches {
        Some(c) => {
            c.ready().await?;
            let (matched, injected) = c.count_pods(ns, label_selector)?;
            (count(matched), count(injected), c.deployments(ns))
        }
        None => {
            let pods: Api<PartialObjectMeta<Pod>> = Api::namespaced(ctx.client.clone(), ns);
            let pods = pods
                .list(&ListParams::default().labels_from(selector))
                .await?
                .items;
            let injected = pods.iter().filter(|p| is_injected(&p.metadata)).count();
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            let deployments = deployments.list(&ListParams::default()).await?.items;
            (count(pods.len()), count(injected), deployments)
        }
    };
    let targets: Vec<Target> = deployments
        .iter()
        .filter_map(|d| {
            let spec = d.spec.as_ref()?;
            let labels = spec.template.metadata.as_ref()?.labels.as_ref()?;
            selector.matches(labels).then(|| Target {
                name: d.name_any(),
                selector: spec.selector.clone(),
            })
        })
        .collect();

    let reads = targets.iter().map(|t| ctx.verifier.workload(ns, &t.name));
    let mut workloads = Ok(Vec::new());
    for r in futures::future::join_all(reads).await {
        match (r, &mut workloads) {
            (Ok(Some(w)), Ok(ws)) => ws.push(w),
            (Ok(None), _) | (_, Err(_)) => {}
            (Err(e), _) => workloads = Err(e.to_string()),
        }
    }
    Ok(Observed {
        matched_pods,
        injected_pods,
        deployments,
        targets,
        workloads,
    })
}

/// Lists the objects of a kind that `uid` controls, by the policy label.
async fn owned<K>(api: &Api<K>, policy: &str, uid: &str) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let lp =
        ListParams::default().labels(&format!("{POLICY_LABEL}={}", owner::label_value(policy)));
    Ok(api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|o| controlled_by(o, uid))
        .collect())
}

/// Applies `desired`, deletes what is `live` and no longer desired; counts the requests.
async fn sync<K>(api: &Api<K>, live: Vec<K>, desired: Vec<K>) -> Result<u32, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let mut writes = 0;
    let mut live: HashMap<String, K> = live.into_iter().map(|o| (o.name_any(), o)).collect();
    for d in desired {
        let l = live.remove(&d.name_any());
        if apply(api, l.as_ref(), d).await? {
            writes += 1;
        }
    }
    for name in live.keys() {
        ignore_not_found(api.delete(name, &DeleteParams::default()).await)?;
        writes += 1;
    }
    Ok(writes)
}

/// Patches the Deployments per the veto plan of `owner_name`; returns the changes made.
pub(crate) async fn enforce(
    api: &Api<Deployment>,
    owner_name: &str,
    enforce: bool,
    states: &[DeploymentState],
) -> Result<Vec<veto::PauseChange>, Error> {
    let changes = veto::plan(owner_name, enforce, states);
    for c in &changes {
        ignore_not_found(
            api.patch(
                &c.deployment,
                &PatchParams::default(),
                &Patch::Merge(&c.patch),
            )
            .await,
        )?;
        tracing::info!(
            deployment = c.deployment,
            owner = owner_name,
            pause = c.pause,
            "veto changed a rollout"
        );
    }
    Ok(changes)
}

/// How the veto sees a Deployment.
pub(crate) fn deployment_state(d: &Deployment, vetoed: bool) -> DeploymentState {
    DeploymentState {
        name: d.name_any(),
        paused: d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false),
        paused_by: d.annotations().get(PAUSED_BY_ANNOTATION).cloned(),
        vetoed,
    }
}

async fn write_status(
    api: &Api<CoherencePolicy>,
    name: &str,
    status: &CoherencePolicyStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": crate::crd::API_VERSION,
        "kind": "CoherencePolicy",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// A change worth an Event: the conditions other than `Vetoed` (type, status, reason).
fn condition_summary(s: Option<&CoherencePolicyStatus>) -> Vec<(String, String, String)> {
    s.map(|s| {
        s.conditions
            .iter()
            .filter(|c| c.type_ != status::types::VETOED)
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    })
    .unwrap_or_default()
}

async fn publish(ctx: &Context, policy: &CoherencePolicy, ev: Event) {
    // An Event is best effort: failing to record one must not fail the reconcile.
    if let Err(e) = ctx.events.publish(&ev, &policy.object_ref(&())).await {
        tracing::warn!(policy = object_key(policy), error = %e, "cannot record an Event");
    }
}

async fn events(
    ctx: &Context,
    policy: &CoherencePolicy,
    previous: Option<&CoherencePolicyStatus>,
    new: &CoherencePolicyStatus,
    veto_events: bool,
) {
    let (before, after) = (condition_summary(previous), condition_summary(Some(new)));
    if before != after {
        let ready = new
            .conditions
            .iter()
            .find(|c| c.type_ == status::types::READY);
        let note = new
            .conditions
            .iter()
            .filter(|c| c.type_ != status::types::VETOED)
            .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
            .collect::<Vec<_>>()
            .join(", ");
        let ok = ready.is_some_and(|c| c.status == "True");
        publish(
            ctx,
            policy,
            Event {
                type_: if ok {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: ready
                    .map(|c| c.reason.clone())
                    .unwrap_or_else(|| "Reconciled".into()),
                note: Some(note),
                action: "Reconcile".into(),
                secondary: None,
            },
        )
        .await;
    }
    let old_veto = previous.and_then(|p| p.veto.as_ref()).map(|v| &v.action);
    let new_veto = new.veto.as_ref();
    if veto_events && old_veto != new_veto.map(|v| &v.action) {
        let ev = match new_veto {
            Some(v) => Event {
                type_: EventType::Warning,
                reason: "VetoRaised".into(),
                note: Some(format!("{}: {}", v.action, v.reason)),
                action: "Veto".into(),
                secondary: None,
            },
            None => Event {
                type_: EventType::Normal,
                reason: "VetoCleared".into(),
                note: old_veto.map(|a| format!("{a} no longer recommended")),
                action: "Veto".into(),
                secondary: None,
            },
        };
        publish(ctx, policy, ev).await;
    }
}

async fn apply_policy(policy: &CoherencePolicy, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = owner::namespaced_name(policy)?;
    let uid = policy.uid().ok_or(crate::Error::MissingMetadata("uid"))?;
    let api: Api<CoherencePolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let previous = policy.status.as_ref();
    let now = ctx.now();

    // Validate: an invalid spec gets its status and waits for a change.
    let selector = Selector::try_from(policy.spec.selector.clone())
        .map_err(|e| crate::Error::invalid("spec.selector", e.to_string()));
    let valid = selector.and_then(|s| render::validate(&policy.spec).map(|()| s));
    let selector = match valid {
        Ok(s) => s,
        Err(e) => {
            let obs = PolicyObservation {
                generation: policy.metadata.generation,
                invalid: Some(e.to_string()),
                matched_pods: previous.map(|p| p.matched_pods).unwrap_or(0),
                injected_pods: previous.map(|p| p.injected_pods).unwrap_or(0),
                workloads: Ok(&[]),
                clear_after_ms: 0,
                now,
            };
            let new = status::policy_status(previous, &obs);
            if previous != Some(&new) {
                write_status(&api, &name, &new).await?;
                events(ctx, policy, previous, &new, false).await;
            }
            return Err(e.into());
        }
    };

    // Read.
    let seen = observe(&ns, &selector, &policy.spec.selector, ctx).await?;
    let client = ctx.client.clone();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);

    // Build.
    let config_map = render::config_map(policy)?;
    let mut want_hpa = Vec::new();
    let mut want_pdb = Vec::new();
    let mut want_np = Vec::new();
    for t in &seen.targets {
        let p = protect::protection(policy, t)?;
        want_hpa.extend(p.hpa);
        want_pdb.extend(p.pdb);
        want_np.extend(p.network_policy);
    }
    let clear_after_ms = render::duration_ms(&policy.spec.veto.clear_after)
        .and_then(|ms| i64::try_from(ms).ok())
        .ok_or_else(|| {
            crate::Error::invalid("spec.veto.clearAfter", "expected a duration like 15m")
        })?;
    let obs = PolicyObservation {
        generation: policy.metadata.generation,
        invalid: None,
        matched_pods: seen.matched_pods,
        injected_pods: seen.injected_pods,
        workloads: seen.workloads.as_deref().map_err(Clone::clone),
        clear_after_ms,
        now,
    };
    let new = status::policy_status(previous, &obs);

    // Apply.
    let live_cm =
        ignore_not_found(cms.get(&config_map.name_any()).await)?.filter(|c| controlled_by(c, &uid));
    let mut writes = sync(&cms, live_cm.into_iter().collect(), vec![config_map]).await?;
    writes += sync(&hpas, owned(&hpas, &name, &uid).await?, want_hpa).await?;
    writes += sync(&pdbs, owned(&pdbs, &name, &uid).await?, want_pdb).await?;
    writes += sync(&nps, owned(&nps, &name, &uid).await?, want_np).await?;
    if ctx.prometheus_rules {
        let workloads: Vec<String> = seen.targets.iter().map(|t| t.name.clone()).collect();
        let rule = alerts::policy_rule(policy, &workloads)?;
        let rule_name = rule.name_any();
        if sync_prometheus_rule(ctx, &ns, &uid, &rule_name, Some(rule)).await? {
            writes += 1;
        }
    }

    // Veto.
    let effects = veto::effects(policy.spec.veto.mode);
    let vetoed: Vec<&str> = new
        .veto
        .iter()
        .flat_map(|v| v.evidence.iter().map(|e| e.workload.as_str()))
        .collect();
    let states: Vec<DeploymentState> = seen
        .deployments
        .iter()
        .filter_map(|d| {
            let target = seen.targets.iter().any(|t| t.name == d.name_any());
            let ours = d.annotations().get(PAUSED_BY_ANNOTATION) == Some(&name);
            (target || ours)
                .then(|| deployment_state(d, target && vetoed.contains(&d.name_any().as_str())))
        })
        .collect();
    let changes = enforce(&deployments, &name, effects.pause, &states).await?;

    // Status, Event, metric.
    if previous != Some(&new) {
        write_status(&api, &name, &new).await?;
        events(ctx, policy, previous, &new, effects.event).await;
    }
    let action = new.veto.as_ref().map(|v| v.action.as_str());
    ctx.metrics
        .set_veto(&ns, &name, action.filter(|_| effects.metric));
    tracing::debug!(
        policy = %object_key(policy),
        writes,
        veto_changes = changes.len(),
        "reconciled"
    );
    Ok(Action::requeue(ctx.resync))
}

async fn cleanup(policy: &CoherencePolicy, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = owner::namespaced_name(policy)?;
    let uid = policy.uid().ok_or(crate::Error::MissingMetadata("uid"))?;
    let client = ctx.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let states: Vec<DeploymentState> = deployments
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|d| d.annotations().get(PAUSED_BY_ANNOTATION) == Some(&name))
        .map(|d| deployment_state(d, false))
        .collect();
    enforce(&deployments, &name, false, &states).await?;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let nps: Api<NetworkPolicy> = Api::namespaced(client, &ns);
    let live_cm = ignore_not_found(cms.get(&render::config_map_name(&name)).await)?
        .filter(|c| controlled_by(c, &uid));
    sync(&cms, live_cm.into_iter().collect(), Vec::new()).await?;
    sync(&hpas, owned(&hpas, &name, &uid).await?, Vec::new()).await?;
    sync(&pdbs, owned(&pdbs, &name, &uid).await?, Vec::new()).await?;
    sync(&nps, owned(&nps, &name, &uid).await?, Vec::new()).await?;
    // The owner reference would let the garbage collector remove it too, but only after the
    // policy is gone; deleting it here keeps the cleanup complete when the finalizer returns.
    sync_prometheus_rule(ctx, &ns, &uid, &alerts::policy_rule_name(&name), None).await?;
    ctx.metrics.set_veto(&ns, &name, None);
    publish(
        ctx,
        policy,
        Event {
            type_: EventType::Normal,
            reason: "CleanedUp".into(),
            note: Some("released paused rollouts and deleted owned objects".into()),
            action: "Delete".into(),
            secondary: None,
        },
    )
    .await;
    Ok(Action::await_change())
}
