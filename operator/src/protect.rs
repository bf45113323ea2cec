//! `spec.protect`: the HPA, PDB and NetworkPolicy of each selected Deployment, owned by the
//! policy. `None` means the spec does not ask for that object: the reconciler deletes an
//! existing one.

use crate::crd::{CoherencePolicy, HpaSpec, NetworkPolicySpec, PdbSpec};
use crate::error::Error;
use crate::owner;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec as K8sNetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Port of the verifier's record endpoint (design §6).
pub const VERIFIER_PORT: i32 = 8443;
/// Namespace assumed for the verifier when the endpoint is not a `<svc>.<ns>.svc` name.
pub const DEFAULT_VERIFIER_NAMESPACE: &str = "coherence";

/// A Deployment the policy's selector reaches.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Deployment name.
    pub name: String,
    /// Its `spec.selector`.
    pub selector: LabelSelector,
}

/// The protection objects of one target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protection {
    /// `autoscaling/v2` HorizontalPodAutoscaler.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// `policy/v1` PodDisruptionBudget.
    pub pdb: Option<PodDisruptionBudget>,
    /// `networking.k8s.io/v1` NetworkPolicy.
    pub network_policy: Option<NetworkPolicy>,
}

/// Name of the objects protecting `target` for `policy`.
pub fn object_name(policy: &str, target: &str) -> String {
    owner::child_name(&["coherence", policy, target], 253)
}

/// Everything `spec.protect` asks for `target`.
pub fn protection(policy: &CoherencePolicy, target: &Target) -> Result<Protection, Error> {
    let Some(p) = &policy.spec.protect else {
        return Ok(Protection::default());
    };
    let meta = meta(policy, target)?;
    Ok(Protection {
        hpa: p.hpa.as_ref().map(|h| hpa(meta.clone(), target, h)),
        pdb: p
            .pdb
            .as_ref()
            .map(|d| pdb(meta.clone(), target, d))
            .transpose()?,
        network_policy: p
            .network_policy
            .as_ref()
            .and_then(|n| network_policy(meta.clone(), target, n, &policy.spec.verifier.endpoint)),
    })
}

fn meta(policy: &CoherencePolicy, target: &Target) -> Result<ObjectMeta, Error> {
    let (ns, name) = owner::namespaced_name(policy)?;
    Ok(owner::owned_meta(
        object_name(&name, &target.name),
        &ns,
        owner::controller_ref(policy)?,
        owner::labels(&name, Some(&target.name)),
    ))
}

fn hpa(metadata: ObjectMeta, target: &Target, h: &HpaSpec) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: target.name.clone(),
            },
            min_replicas: Some(h.min_replicas),
            max_replicas: h.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(h.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        }),
        status: None,
    }
}

fn pdb(metadata: ObjectMeta, target: &Target, d: &PdbSpec) -> Result<PodDisruptionBudget, Error> {
    let check = |field: &str, v: &IntOrString| match v {
        IntOrString::Int(n) if *n < 0 => Err(Error::invalid(
            format!("spec.protect.pdb.{field}"),
            format!("expected a number ≥ 0 or a percentage, got {n}"),
        )),
        IntOrString::String(s)
            if !(s.ends_with('%') && s[..s.len() - 1].parse::<u8>().is_ok_and(|p| p <= 100)) =>
        {
            Err(Error::invalid(
                format!("spec.protect.pdb.{field}"),
                format!("expected a number or a percentage like \"50%\", got {s:?}"),
            ))
        }
        _ => Ok(()),
    };
    match (&d.min_available, &d.max_unavailable) {
        (Some(v), None) => check("minAvailable", v)?,
        (None, Some(v)) => check("maxUnavailable", v)?,
        _ => {
            return Err(Error::invalid(
                "spec.protect.pdb",
                "expected exactly one of minAvailable and maxUnavailable",
            ));
        }
    }
    Ok(PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(target.selector.clone()),
            min_available: d.min_available.clone(),
            max_unavailable: d.max_unavailable.clone(),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The namespace of the verifier's Service from an endpoint like
/// `https://coherence-verifier.coherence.svc:8443` (`svc.ns`, `svc.ns.svc`,
/// `svc.ns.svc.cluster.local`); `None` for anything else.
pub fn verifier_namespace(endpoint: &str) -> Option<String> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))?;
    let host = rest.split(['/', ':']).next()?;
    let labels: Vec<&str> = host.split('.').collect();
    let ns_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let in_cluster = matches!(
        labels.as_slice(),
        [_, _] | [_, _, "svc"] | [_, _, "svc", "cluster", "local"]
    );
    (in_cluster && ns_ok(labels[1]) && labels[1].parse::<u32>().is_err())
        .then(|| labels[1].to_string())
}

fn network_policy(
    metadata: ObjectMeta,
    target: &Target,
    n: &NetworkPolicySpec,
    endpoint: &str,
) -> Option<NetworkPolicy> {
    let mut types = Vec::new();
    let mut ingress = None;
    let mut egress = None;
    if !n.ingress_from.is_empty() {
        types.push("Ingress".to_string());
        let mut rules = vec![NetworkPolicyIngressRule {
            from: Some(n.ingress_from.clone()),
            ports: None,
        }];
        // Prometheus scrapes the sidecar's `api.metricsListen` (and nothing else of the pod).
        if !n.metrics_from.is_empty() {
            rules.push(NetworkPolicyIngressRule {
                from: Some(n.metrics_from.clone()),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::String(crate::render::METRICS_PORT_NAME.into())),
                    end_port: None,
                }]),
            });
        }
        ingress = Some(rules);
    }
    if n.allow_verifier_egress {
        types.push("Egress".to_string());
        let port = |protocol: &str, p: i32| NetworkPolicyPort {
            protocol: Some(protocol.into()),
            port: Some(IntOrString::Int(p)),
            end_port: None,
        };
        // An endpoint outside the cluster cannot be named by selectors: the port alone.
        let to = verifier_namespace(endpoint).map(|ns| {
            vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        ns,
                    )])),
                    match_expressions: None,
                }),
                ..NetworkPolicyPeer::default()
            }]
        });
        egress = Some(vec![
            NetworkPolicyEgressRule {
                to,
                ports: Some(vec![port("TCP", VERIFIER_PORT)]),
            },
            NetworkPolicyEgressRule {
                to: None,
                ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
            },
        ]);
    }
    if types.is_empty() {
        return None;
    }
    Some(NetworkPolicy {
        metadata,
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(target.selector.clone()),
            policy_types: Some(types),
            ingress,
            egress,
        }),
    })
}
