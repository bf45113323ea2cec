//! CoherencePolicies as the operator keeps them between uses: compressed JSON.
//!
//! The webhook and the policy controller read the one watched store of policies, but a policy
//! is used only when a pod is admitted in its namespace or when it is reconciled. Kept as
//! decoded Rust values, a policy costs about 4 KB of heap (an `ObjectMeta` and a spec with every
//! optional section, B-tree nodes sized for eleven entries per map, conditions with their
//! messages), and 2,000 of them were a third of the operator's resident memory.
//!
//! A [`PackedPolicy`] keeps:
//! - the metadata the watch machinery reads (name, namespace, resourceVersion, uid);
//! - the selector, as sorted label pairs, so a pod or Deployment event finds the policies that
//!   select it without decoding any;
//! - the rest as its JSON, compressed with LZ4 against a dictionary: the JSON of a reference
//!   policy with every section and a reconciled status. Policies share their field names and most
//!   of their values with it, so one packs into a few hundred bytes.
//!
//! [`PackedPolicy::unpack`] gives the policy back, field for field (tests check the round trip);
//! the reconciler and the webhook unpack the policies they use, which costs microseconds.
//!
//! `managedFields` and `kubectl`'s copy of the last applied manifest are dropped before
//! packing: neither is read, and together they are often larger than the spec.

use crate::controller::cache::Selector;
use crate::crd::CoherencePolicy;
use crate::error::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::{DeserializeGuard, NamespaceResourceScope};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The annotation `kubectl apply` keeps its copy of the manifest in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A CoherencePolicy, compressed; see the [module](self).
#[derive(Clone, Debug)]
pub struct PackedPolicy {
    /// name, namespace, resourceVersion and uid: what `ObjectRef`s and the watcher read.
    meta: ObjectMeta,
    selector: Selector,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    /// The policy's JSON: LZ4 block, uncompressed size prepended, against [`dictionary`].
    Packed(Box<[u8]>),
    /// Why the object could not be read as a CoherencePolicy.
    Invalid(Box<str>),
}

impl PackedPolicy {
    /// Packs a policy as it is (metadata included; see [`PackedPolicy::from_watch`] for what
    /// the store drops first).
    pub fn pack(policy: &CoherencePolicy) -> Result<PackedPolicy, Error> {
        let json = serde_json::to_vec(policy)
            .map_err(|e| Error::invalid("object", format!("cannot be written as JSON: {e}")))?;
        Ok(PackedPolicy {
            meta: key_meta(&policy.metadata),
            selector: Selector::from(&policy.spec.selector),
            body: Body::Packed(
                lz4_flex::block::compress_prepend_size_with_dict(&json, dictionary())
                    .into_boxed_slice(),
            ),
        })
    }

    /// A watched object as the store keeps it: without `managedFields` and the last applied
    /// manifest; an object that is not a valid CoherencePolicy keeps its key and the reason.
    pub fn from_watch(object: DeserializeGuard<CoherencePolicy>) -> PackedPolicy {
        match object.0 {
            Ok(mut p) => {
                slim(&mut p.metadata);
                PackedPolicy::pack(&p).unwrap_or_else(|e| PackedPolicy::invalid(&p.metadata, e))
            }
            Err(invalid) => PackedPolicy::invalid(&invalid.metadata, invalid.error),
        }
    }

    fn invalid(meta: &ObjectMeta, why: impl ToString) -> PackedPolicy {
        PackedPolicy {
            meta: key_meta(meta),
            selector: Selector::default(),
            body: Body::Invalid(why.to_string().into()),
        }
    }

    /// The policy, decoded.
    pub fn unpack(&self) -> Result<CoherencePolicy, Error> {
        match &self.body {
            Body::Invalid(why) => Err(Error::invalid("object", why.to_string())),
            Body::Packed(bytes) => {
                let json =
                    lz4_flex::block::decompress_size_prepended_with_dict(bytes, dictionary())
                        .map_err(|e| Error::invalid("object", format!("packed policy: {e}")))?;
                serde_json::from_slice(&json)
                    .map_err(|e| Error::invalid("object", format!("packed policy: {e}")))
            }
        }
    }

    /// Why the watched object is not a valid CoherencePolicy, if it is not.
    pub fn invalid_reason(&self) -> Option<&str> {
        match &self.body {
            Body::Invalid(why) => Some(why),
            Body::Packed(_) => None,
        }
    }

    /// `true` when the policy's selector matches `labels` (never for an invalid policy or
    /// selector).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.invalid_reason().is_none() && self.selector.matches(labels).unwrap_or(false)
    }

    /// Bytes of the compressed JSON (0 for an invalid object).
    pub fn packed_len(&self) -> usize {
        match &self.body {
            Body::Packed(b) => b.len(),
            Body::Invalid(_) => 0,
        }
    }
}

impl<'de> Deserialize<'de> for PackedPolicy {
    /// Reads a CoherencePolicy (as `DeserializeGuard` does: an object whose metadata can be
    /// read is never an error) and packs it with [`PackedPolicy::from_watch`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DeserializeGuard::<CoherencePolicy>::deserialize(d).map(PackedPolicy::from_watch)
    }
}

impl Resource for PackedPolicy {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        CoherencePolicy::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        CoherencePolicy::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        CoherencePolicy::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        CoherencePolicy::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// The metadata a store key needs.
fn key_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        resource_version: m.resource_version.clone(),
        uid: m.uid.clone(),
        ..ObjectMeta::default()
    }
}

/// Drops what is never read of a watched object's metadata.
fn slim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The LZ4 dictionary: the JSON of a reference policy with every section of the spec and a
/// reconciled status, written by the same serializer as the packed policies, so their field
/// names, defaults and condition texts are found in it.
fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        serde_json::from_value::<CoherencePolicy>(reference_policy())
            .and_then(|p| serde_json::to_vec(&p))
            // A constant the tests read back; without it, packing works the same, only larger.
            .unwrap_or_default()
    })
}

fn reference_policy() -> serde_json::Value {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z",
        })
    };
    serde_json::json!({
        "apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy",
        "metadata": {
            "name": "web", "namespace": "demo", "generation": 1,
            "resourceVersion": "100000", "uid": "00000000-0000-0000-0000-000000000000",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "finalizers": [crate::controller::FINALIZER],
            "labels": {"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "web"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sources": [
                {"name": "app", "prometheus": {"port": 9090, "path": "/metrics",
                    "metrics": ["http_requests_total", "latency_p95_ms", "request_latency_p95_ms"],
                    "interval": "15s"}},
                {"name": "events", "jsonl": {"path": "/var/log/app/telemetry.jsonl"}},
                {"name": "api", "http": {"url": "http://127.0.0.1:8080/stats", "interval": "30s"}},
            ],
            "windows": ["5m", "1h"],
            "drift": {"volatilityMedium": 0.1, "volatilityHigh": 0.25},
            "pcs": {"alg": "hmac", "secretRef": {"name": "coherence-pcs", "key": "PCS_HMAC_KEY"},
                "epoch": "60s", "window": "5m"},
            "verifier": {"endpoint": "https://coherence-verifier.coherence.svc:8443",
                "clientCertSecretRef": {"name": "coherence-sidecar-client"}},
            "finops": {"qpsSignal": "http_requests_total", "latencySignal": "latency_p95_ms",
                "cpuHourUsd": 0.04, "memoryGibHourUsd": 0.005},
            "protect": {
                "hpa": {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70},
                "pdb": {"minAvailable": 1},
                "networkPolicy": {"allowVerifierEgress": true},
            },
            "veto": {"mode": "enforce"},
        },
        "status": {
            "conditions": [
                condition("SidecarsInjected", "True", "AllInjected", "2 of 2 pods run the sidecar"),
                condition("SignalsHealthy", "Unknown", "NoData", "the verifier has no reports of the selected workloads yet"),
                condition("Vetoed", "False", "NoVeto", "no incident recommends an action"),
                condition("Ready", "False", "AwaitingSignals", "the verifier has no reports of the selected workloads yet"),
                // The texts of a policy whose workloads report.
                condition("SignalsHealthy", "True", "SignalsArriving", "worst drift risk low (web)"),
                condition("Ready", "True", "Ready", "sidecars injected and reporting"),
                condition("SidecarsInjected", "False", "NoMatchingPods", "the selector matches no pods"),
            ],
            "matchedPods": 2, "injectedPods": 2, "driftRisk": "low",
            "lastReportTime": "2026-01-01T00:00:00Z", "observedGeneration": 1,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn policy(ns: &str, name: &str) -> CoherencePolicy {
        let mut v = crate::fake::population_policy(ns, name);
        v["metadata"]["uid"] = format!("uid-{ns}-{name}").into();
        v["metadata"]["resourceVersion"] = "42".into();
        v["metadata"]["managedFields"] =
            serde_json::json!([{"manager": "kubectl", "operation": "Apply"}]);
        v["metadata"]["annotations"] = serde_json::json!({
            LAST_APPLIED: "{\"apiVersion\":\"coherence.dev/v1alpha1\"}",
            "team": "payments",
        });
        // The status a reconcile writes, at another time than the dictionary's.
        let mut status = reference_policy()["status"].clone();
        let conditions = status["conditions"].as_array_mut().unwrap();
        conditions.truncate(4);
        for c in conditions {
            c["lastTransitionTime"] = "2026-11-22T04:01:02Z".into();
        }
        v["status"] = status;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_packed_policy_unpacks_to_the_same_policy_less_what_is_never_read() {
        let p = policy("ns-1", "app-7");
        let packed = PackedPolicy::from_watch(DeserializeGuard(Ok(p.clone())));
        let back = packed.unpack().unwrap();
        let mut want = p.clone();
        want.metadata.managed_fields = None;
        want.metadata.annotations = Some(BTreeMap::from([("team".into(), "payments".into())]));
        assert_eq!(back, want);
        // Packed as it is, nothing is dropped.
        assert_eq!(PackedPolicy::pack(&p).unwrap().unpack().unwrap(), p);
        // The key the store and the controller use.
        assert_eq!(packed.meta().name.as_deref(), Some("app-7"));
        assert_eq!(packed.meta().namespace.as_deref(), Some("ns-1"));
        assert_eq!(packed.meta().resource_version.as_deref(), Some("42"));
        assert_eq!(packed.meta().uid.as_deref(), Some("uid-ns-1-app-7"));
        assert_eq!(packed.meta().labels, None);
    }

    #[test]
    fn the_example_policy_round_trips_and_is_stored_slim() {
        let mut doc: serde_json::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/examples/coherencepolicy.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        doc["metadata"]["annotations"] =
            serde_json::json!({LAST_APPLIED: "{\"spec\": {}}", "team": "a"});
        doc["metadata"]["managedFields"] =
            serde_json::json!([{"manager": "kubectl", "operation": "Apply"}]);
        let p: CoherencePolicy = serde_json::from_value(doc.clone()).unwrap();
        let stored: PackedPolicy = serde_json::from_value(doc.clone()).unwrap();
        let back = stored.unpack().unwrap();
        assert_eq!(back.metadata.managed_fields, None);
        assert_eq!(
            back.metadata.annotations,
            Some(BTreeMap::from([("team".into(), "a".into())]))
        );
        assert_eq!(back.spec, p.spec);
        assert!(stored.selects(&BTreeMap::from([("app".into(), "web".into())])));

        // One that cannot be read keeps its key for the warning.
        doc["spec"] = serde_json::json!({"selector": 7});
        let bad: PackedPolicy = serde_json::from_value(doc).unwrap();
        assert_eq!(bad.meta().name.as_deref(), Some("web"));
        assert_eq!(bad.meta().annotations, None);
        assert!(bad.invalid_reason().is_some());
    }

    #[test]
    fn a_policy_packs_into_a_fraction_of_its_json() {
        assert!(dictionary().len() > 1000, "{}", dictionary().len());
        let p = policy("ns-1", "app-7");
        let json = serde_json::to_vec(&p).unwrap().len();
        let packed = PackedPolicy::pack(&p).unwrap().packed_len();
        assert!(packed * 3 < json, "{packed} bytes packed of {json}");
        // Without the dictionary the same policy takes more than twice as much.
        let plain = lz4_flex::block::compress_prepend_size(&serde_json::to_vec(&p).unwrap());
        assert!(packed * 2 < plain.len(), "{packed} vs {}", plain.len());
    }

    #[test]
    fn the_packed_selector_selects_as_the_spec_does() {
        let mut p = policy("ns-1", "app-7");
        let packed = PackedPolicy::pack(&p).unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(packed.selects(&labels(&[("app", "app-7"), ("tier", "web")])));
        assert!(!packed.selects(&labels(&[("app", "app-8")])));
        assert!(!packed.selects(&labels(&[])));
        p.spec.selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "NotIn".into(),
            values: Some(vec!["batch".into()]),
        }]);
        let packed = PackedPolicy::pack(&p).unwrap();
        assert!(packed.selects(&labels(&[("app", "app-7"), ("tier", "web")])));
        assert!(!packed.selects(&labels(&[("app", "app-7"), ("tier", "batch")])));
        // A selector the API server would refuse selects nothing.
        p.spec.selector.match_expressions.as_mut().unwrap()[0].operator = "Near".into();
        assert!(
            !PackedPolicy::pack(&p)
                .unwrap()
                .selects(&labels(&[("app", "app-7")]))
        );
    }

    #[test]
    fn an_object_that_is_not_a_policy_keeps_its_key_and_the_reason() {
        let v = serde_json::json!({
            "apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy",
            "metadata": {"name": "broken", "namespace": "ns-1", "resourceVersion": "7",
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"selector": "app=web"},
        });
        let packed: PackedPolicy = serde_json::from_value(v).unwrap();
        assert_eq!(packed.meta().name.as_deref(), Some("broken"));
        assert_eq!(packed.meta().resource_version.as_deref(), Some("7"));
        assert_eq!(packed.meta().managed_fields, None);
        let why = packed.invalid_reason().unwrap();
        assert!(why.contains("LabelSelector"), "{why}");
        let e = packed.unpack().unwrap_err().to_string();
        assert!(e.contains("object"), "{e}");
        assert!(!packed.selects(&BTreeMap::new()));
        assert_eq!(packed.packed_len(), 0);
    }

    #[test]
    fn watched_json_deserializes_into_a_packed_policy() {
        let p = policy("ns-2", "app-81");
        let packed: PackedPolicy =
            serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(packed.invalid_reason(), None);
        let back = packed.unpack().unwrap();
        assert_eq!(back.spec, p.spec);
        assert_eq!(back.status, p.status);
        assert_eq!(back.metadata.managed_fields, None);
        // Corrupt bytes are an error naming the object, not a panic.
        let mut bad = packed.clone();
        bad.body = Body::Packed(vec![16, 0, 0, 0, 0xf0, 1, 2, 3].into());
        assert!(
            bad.unpack()
                .unwrap_err()
                .to_string()
                .contains("packed policy")
        );
    }
}
