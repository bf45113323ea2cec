//! The two reconcilers — [`policy`] for CoherencePolicy, [`gate`] for FinOpsGate — and what
//! they share: the [`Context`], the reconcile [`Error`], server-side apply with one field
//! manager, and the retry policy.
//!
//! Each reconcile runs in stages: **read** what the object refers to (pods, Deployments, owned
//! objects, the verifier), **build** the desired objects and status with the pure functions of
//! `render`, `protect`, `status`, `finops` and `veto`, **apply** what differs, **veto**
//! (pause/release Deployments in `enforce`), then write **status** and emit an Event when
//! something changed.

pub mod cache;
pub mod gate;
pub mod policy;
pub mod verifier;

#[cfg(test)]
mod scenarios;

use crate::metrics::Metrics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use verifier::VerifierApi;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = crate::owner::MANAGER;
/// Finalizer of policies and gates: their cleanup runs before they disappear.
pub const FINALIZER: &str = "coherence.dev/cleanup";
/// Annotation the injection webhook sets on a pod it injected (the policy's name).
pub use crate::inject::INJECTED_ANNOTATION;
/// Annotation on an owned object: hash of the desired object last applied, so an unchanged
/// object is not sent again and a changed one always is.
pub const APPLIED_HASH_ANNOTATION: &str = "coherence.dev/applied-hash";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The build step refused the object or what it refers to.
    #[error(transparent)]
    Build(#[from] crate::Error),
    /// A Kubernetes API request failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed, or the cleanup did.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A watched cache stopped (the process is shutting down).
    #[error("the {0} cache stopped")]
    Cache(&'static str),
}

impl Error {
    /// Bounded label for `coherence_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Build(e) => e.metric_label(),
            Error::Kube(_) => "kube",
            Error::Cache(_) => "cache",
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }

    /// `true` when retrying cannot help until the object changes: an invalid spec, or an
    /// object the API server refuses as invalid.
    pub fn is_permanent(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Build(e) => e.is_permanent(),
            Error::Kube(kube::Error::Api(s)) => s.code == 400 || s.code == 422,
            Error::Kube(_) | Error::Cache(_) => false,
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
        }
    }
}

/// The watched caches of what the policy reconciler reads on every pass ([`cache`]): per pod
/// its labels and whether it was injected, per Deployment its selector, template labels and
/// pause state.
#[derive(Clone)]
pub struct Caches {
    /// Every pod.
    pub pods: cache::Cache<cache::PodEntry>,
    /// Every Deployment.
    pub deployments: cache::Cache<cache::DeploymentEntry>,
}

impl Caches {
    /// Waits until both caches hold a complete first list (reads before that would see an
    /// empty cluster, and the reconciler would delete what it owns).
    pub async fn ready(&self) -> Result<(), Error> {
        self.pods.ready("pod").await?;
        self.deployments.ready("deployment").await
    }

    /// How many pods of `ns` `selector` matches, and how many of those were injected.
    pub fn count_pods(&self, ns: &str, selector: &LabelSelector) -> Result<(usize, usize), Error> {
        let (mut matched, mut injected) = (0, 0);
        let mut failed = None;
        self.pods.for_each_in(ns, |_, p| {
            match crate::selector::matches_with(selector, |k| p.labels.get(k)) {
                Ok(true) => {
                    matched += 1;
                    injected += usize::from(p.injected);
                }
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        });
        match failed {
            Some(e) => Err(e.into()),
            None => Ok((matched, injected)),
        }
    }

    /// The Deployments of `ns`, as far as the cache knows them
    /// ([`cache::DeploymentEntry::to_deployment`]).
    pub fn deployments(&self, ns: &str) -> Vec<Deployment> {
        let mut out = Vec::new();
        self.deployments
            .for_each_in(ns, |name, d| out.push(d.to_deployment(ns, name)));
        out
    }
}

/// Publishes Events as reporting controller `coherence-operator`, each through a fresh kube
/// [`Recorder`]. A long-lived recorder keeps a full copy of every Event it published for six
/// minutes, to count repeats into a series: with thousands of policies that cache was the
/// largest single item of the operator's heap (1.5 MB for 500 policies). The controllers
/// publish an Event only when something changed, so repeats are rare; each is its own Event.
#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    reporter: Reporter,
}

impl Events {
    /// Creates `ev` about `reference` in the reference's namespace.
    pub async fn publish(
        &self,
        ev: &kube::runtime::events::Event,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> Result<(), kube::Error> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(ev, reference)
            .await
    }
}

/// What both controllers share.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// The verifier.
    pub verifier: Arc<dyn VerifierApi>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event publisher (reporting controller `coherence-operator`).
    pub events: Events,
    /// Requeue interval of a healthy object: the verifier's data changes without any
    /// Kubernetes event, so objects are read again on this period.
    pub resync: Duration,
    /// A fixed clock (tests, benchmark); `None` is the system clock.
    pub clock: Option<Timestamp>,
    /// The `monitoring.coreos.com/v1` PrometheusRule kind exists: each policy and gate gets
    /// its alerting rules (`crate::alerts`). `run` sets it after looking the CRD up.
    pub prometheus_rules: bool,
    /// Watched caches the read stage uses instead of listing through the API (`run` sets
    /// them; without them every read is a request).
    pub caches: Option<Caches>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("resync", &self.resync)
            .field("prometheus_rules", &self.prometheus_rules)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context; `instance` names this replica in Events (the pod name).
    pub fn new(
        client: kube::Client,
        verifier: Arc<dyn VerifierApi>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let events = Events {
            client: client.clone(),
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance,
            },
        };
        Self {
            client,
            verifier,
            metrics,
            events,
            resync: Duration::from_secs(60),
            clock: None,
            prometheus_rules: false,
            caches: None,
            failures: Mutex::default(),
        }
    }

    /// Now, from the fixed clock if set.
    pub fn now(&self) -> Timestamp {
        self.clock.unwrap_or_else(Timestamp::now)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }

    /// What to do after a failed reconcile of `key`: wait for a change on a permanent error,
    /// else retry after 5 s, doubling per consecutive failure up to 5 minutes.
    pub fn retry(&self, controller: &str, key: &str, error: &Error) -> Action {
        self.metrics.error(controller, error.metric_label());
        if error.is_permanent() {
            tracing::warn!(controller, object = key, %error, "reconcile failed; waiting for a change");
            self.failures().remove(key);
            return Action::await_change();
        }
        let n = {
            let mut f = self.failures();
            let n = f.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = backoff(n);
        tracing::warn!(controller, object = key, %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }
}

/// Delay before the `n`th consecutive retry (1-based): 5 s · 2^(n−1), at most 300 s.
pub fn backoff(n: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << n.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

/// `namespace/name` of an object, for logs and retry bookkeeping.
pub fn object_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// `true` when every field of `want` is in `have` with the same value (maps recursively;
/// lists elementwise, same length).
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| wv.is_null() || h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        (h, w) => h == w,
    }
}

/// `desired` with [`APPLIED_HASH_ANNOTATION`] set to the SHA-256 of its JSON.
fn with_applied_hash<K: Resource + Serialize>(mut desired: K) -> Result<K, Error> {
    let json = serde_json::to_vec(&desired).map_err(|e| crate::Error::Serialize(e.to_string()))?;
    let hash = hex::encode(&Sha256::digest(&json)[..16]);
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    Ok(desired)
}

/// Server-side applies `desired` unless `live` already holds it: the same applied hash and
/// every desired field in place (so someone else's edit of our fields is put back). Returns
/// whether a request was made.
pub async fn apply<K>(api: &Api<K>, live: Option<&K>, desired: K) -> Result<bool, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let desired = with_applied_hash(desired)?;
    if let Some(live) = live {
        let have =
            serde_json::to_value(live).map_err(|e| crate::Error::Serialize(e.to_string()))?;
        let want =
            serde_json::to_value(&desired).map_err(|e| crate::Error::Serialize(e.to_string()))?;
        if contains(&have, &want) {
            return Ok(false);
        }
    }
    let name = desired.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await?;
    Ok(true)
}

/// Applies the PrometheusRule `desired` of the owner with `uid`, or deletes the rule `name`
/// the owner controls when `desired` is `None`. Nothing when the PrometheusRule kind is not
/// served ([`Context::prometheus_rules`]). Returns whether a request changed something.
pub async fn sync_prometheus_rule(
    ctx: &Context,
    ns: &str,
    uid: &str,
    name: &str,
    desired: Option<DynamicObject>,
) -> Result<bool, Error> {
    if !ctx.prometheus_rules {
        return Ok(false);
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &crate::alerts::api_resource());
    // A same-named rule this owner does not control is someone else's: never changed, never
    // deleted.
    let live = ignore_not_found(api.get(name).await)?;
    if let Some(other) = live.as_ref().filter(|r| !controlled_by(*r, uid)) {
        if desired.is_some() {
            tracing::warn!(
                namespace = ns,
                rule = %other.name_any(),
                "a PrometheusRule of this name belongs to someone else; not applied"
            );
        }
        return Ok(false);
    }
    match desired {
        Some(d) => apply(&api, live.as_ref(), d).await,
        None if live.is_some() => {
            Ok(ignore_not_found(api.delete(name, &DeleteParams::default()).await)?.is_some())
        }
        None => Ok(false),
    }
}

/// `true` when `obj` is controlled by the object with `uid`.
pub fn controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// `obj` carrying [`FINALIZER`], as the API server holds it, so `kube`'s `finalizer` goes
/// straight to `Apply` in this same pass; `None` when the object is gone.
///
/// A trigger may hand over a copy from before an earlier pass added the finalizer (the
/// watch that delivers the change has not caught up): such a copy is read again instead of
/// being patched, since the patch's `test` of the finalizer list would be refused with 422.
/// A deleting object is returned as it is (the cleanup does not need the finalizer added).
pub async fn with_finalizer<K>(api: &Api<K>, obj: Arc<K>) -> Result<Option<Arc<K>>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let ready = |o: &K| {
        o.meta().deletion_timestamp.is_some() || o.finalizers().iter().any(|f| f == FINALIZER)
    };
    if ready(&obj) {
        return Ok(Some(obj));
    }
    let name = obj.name_any();
    let Some(fresh) = api.get_opt(&name).await? else {
        return Ok(None);
    };
    if ready(&fresh) {
        return Ok(Some(Arc::new(fresh)));
    }
    let finalizers = fresh.finalizers();
    let op = |v: Value| serde_json::from_value::<json_patch::PatchOperation>(v);
    let ops = if finalizers.is_empty() {
        [
            op(serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": null})),
            op(
                serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}),
            ),
        ]
    } else {
        // Kubernetes keeps duplicate finalizers: the `test` fails (and the pass is retried)
        // if someone else changed the list in between.
        [
            op(
                serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": finalizers}),
            ),
            op(
                serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}),
            ),
        ]
    };
    let ops = ops
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::Error::Serialize(e.to_string()))?;
    let patched = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch::Patch(ops)),
        )
        .await
        .map_err(|e| {
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(e)))
        })?;
    Ok(Some(Arc::new(patched)))
}

/// Ignores a 404 (the object is already gone).
pub fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let s: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn containment_is_recursive_and_lists_must_match() {
        let have = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        assert!(contains(&have, &json!({"a": {"b": 1}})));
        assert!(contains(&have, &json!({"a": {"c": [1, 2]}, "d": "x"})));
        assert!(!contains(&have, &json!({"a": {"c": [1]}})));
        assert!(!contains(&have, &json!({"a": {"b": 2}})));
        assert!(!contains(&have, &json!({"e": 1})));
    }
}
