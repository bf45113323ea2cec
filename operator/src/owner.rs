//! Names, labels and owner references of the objects a policy or gate owns.

use crate::error::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGER: &str = "coherence-operator";
/// Label naming the policy an object belongs to.
pub const POLICY_LABEL: &str = "coherence.dev/policy";
/// Label naming the workload an object protects.
pub const TARGET_LABEL: &str = "coherence.dev/target";
/// Annotation with the SHA-256 of a rendered configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "coherence.dev/config-hash";
/// Annotation on a Deployment the operator paused: who paused it.
pub const PAUSED_BY_ANNOTATION: &str = "coherence.dev/paused-by";

/// A controller owner reference to `owner`, which must come from the API server (uid set).
pub fn controller_ref<K>(owner: &K) -> Result<OwnerReference, Error>
where
    K: Resource<DynamicType = ()>,
{
    let meta = owner.meta();
    Ok(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().ok_or(Error::MissingMetadata("name"))?,
        uid: meta.uid.clone().ok_or(Error::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Namespace and name of `owner`.
pub fn namespaced_name<K: Resource>(owner: &K) -> Result<(String, String), Error> {
    let meta = owner.meta();
    Ok((
        meta.namespace
            .clone()
            .ok_or(Error::MissingMetadata("namespace"))?,
        meta.name.clone().ok_or(Error::MissingMetadata("name"))?,
    ))
}

/// A DNS-subdomain name from `parts` joined by `-`, at most `max` bytes: a longer one keeps
/// its start and ends in 10 hex digits of its hash, so distinct inputs stay distinct.
pub fn child_name(parts: &[&str], max: usize) -> String {
    let joined = parts.join("-");
    if joined.len() <= max {
        return joined;
    }
    let hash = hex::encode(Sha256::digest(joined.as_bytes()));
    let keep = max.saturating_sub(11);
    let head = joined[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{}", &hash[..10])
}

/// A label value (at most 63 bytes) for a name that may be longer.
pub fn label_value(name: &str) -> String {
    child_name(&[name], 63)
}

/// Labels of an object owned by `policy`.
pub fn labels(policy: &str, target: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
        (POLICY_LABEL.to_string(), label_value(policy)),
    ]);
    if let Some(t) = target {
        l.insert(TARGET_LABEL.to_string(), label_value(t));
    }
    l
}

/// Metadata of an object `owner` controls.
pub fn owned_meta(
    name: String,
    namespace: &str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_distinct() {
        assert_eq!(child_name(&["coherence", "web"], 253), "coherence-web");
        let a = child_name(&["x".repeat(300).as_str(), "a"], 63);
        let b = child_name(&["x".repeat(300).as_str(), "b"], 63);
        assert_eq!(a.len(), 63);
        assert_ne!(a, b);
        assert!(label_value(&"p".repeat(100)).len() <= 63);
    }
}
