//! Alerting rules: one `monitoring.coreos.com/v1` PrometheusRule per CoherencePolicy and per
//! FinOpsGate, controlled by it, built from plain values (no client).
//!
//! Every expression names a metric some Coherence component exports:
//!
//! | alert | metric | exported by |
//! |---|---|---|
//! | `CoherenceDriftRiskHigh` | `coherence_workload_drift_risk{namespace,workload}` | verifier |
//! | `CoherenceVetoActive` | `coherence_veto_active{namespace,policy,action}` | operator |
//! | `CoherenceOutboxBacklog` | `coherence_sidecar_outbox_pending` | sidecar |
//! | `CoherenceDeadLetterGrowth` | `coherence_sidecar_dlq_total` (a counter) | sidecar |
//! | `CoherenceFinOpsGateFail` | `coherence_finops_grade{namespace,gate}` | operator |
//!
//! The sidecar's series carry no `namespace` label of their own: the scrape adds it (a
//! PodMonitor does by default), so its rules select the policy's namespace that way. The
//! verifier's and the operator's series carry `namespace` themselves: they must be scraped with
//! `honorLabels: true`, or Prometheus renames it to `exported_namespace`.

use crate::crd::{CoherencePolicy, FinOpsGate};
use crate::error::Error;
use crate::owner;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Group of the PrometheusRule kind (the Prometheus Operator's).
pub const GROUP: &str = "monitoring.coreos.com";
/// Version of the PrometheusRule kind.
pub const VERSION: &str = "v1";
/// Kind of the rule objects.
pub const KIND: &str = "PrometheusRule";
/// Plural of the rule objects.
pub const PLURAL: &str = "prometheusrules";
/// Name of the PrometheusRule CRD, looked up at start.
pub const CRD_NAME: &str = "prometheusrules.monitoring.coreos.com";
/// Label naming the FinOpsGate an object belongs to.
pub const GATE_LABEL: &str = "coherence.dev/finopsgate";
/// Where the runbooks live; each alert links to its section.
pub const RUNBOOK_BASE: &str = concat!(
    env!("CARGO_PKG_REPOSITORY"),
    "/blob/main/docs/operations.md"
);

/// The API resource of PrometheusRule, for `Api::<DynamicObject>::namespaced_with`.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// Name of a policy's PrometheusRule.
pub fn policy_rule_name(policy: &str) -> String {
    owner::child_name(&["coherence-policy", policy], 253)
}

/// Name of a gate's PrometheusRule (distinct from a policy's of the same name).
pub fn gate_rule_name(gate: &str) -> String {
    owner::child_name(&["coherence-finopsgate", gate], 253)
}

/// A PromQL string literal: `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A PromQL regex (RE2, fully anchored by Prometheus) matching exactly `names`.
fn alternation(names: &[String]) -> String {
    let mut sorted: Vec<String> = names
        .iter()
        .map(|n| {
            n.chars()
                .flat_map(|c| {
                    let esc = "\\.+*?()|[]{}^$".contains(c);
                    esc.then_some('\\').into_iter().chain(std::iter::once(c))
                })
                .collect()
        })
        .collect();
    sorted.sort();
    sorted.dedup();
    sorted.join("|")
}

fn rule(
    alert: &str,
    expr: String,
    for_: Option<&str>,
    severity: &str,
    summary: &str,
    description: &str,
    anchor: &str,
) -> Value {
    let mut r = json!({
        "alert": alert,
        "expr": expr,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": format!("{RUNBOOK_BASE}#{anchor}"),
        },
    });
    if let Some(f) = for_ {
        r["for"] = json!(f);
    }
    r
}

fn object(
    name: String,
    ns: &str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    groups: Vec<Value>,
) -> DynamicObject {
    let mut obj = DynamicObject::new(&name, &api_resource()).within(ns);
    obj.metadata.labels = Some(labels);
    obj.metadata.owner_references = Some(vec![owner]);
    obj.data = json!({"spec": {"groups": groups}});
    obj
}

/// The PrometheusRule of `policy`, whose target workloads (the Deployments it selects) are
/// `workloads`: drift risk high for 10 m on those workloads (no such rule without any),
/// the policy's veto active for 5 m, and the sidecars of its namespace holding more than 100
/// undelivered records for 10 m or dead-lettering any in 15 m.
pub fn policy_rule(policy: &CoherencePolicy, workloads: &[String]) -> Result<DynamicObject, Error> {
    let (ns, name) = owner::namespaced_name(policy)?;
    let owner_ref = owner::controller_ref(policy)?;
    let (qns, qname) = (quote(&ns), quote(&name));
    let mut verdicts = Vec::new();
    if !workloads.is_empty() {
        verdicts.push(rule(
            "CoherenceDriftRiskHigh",
            format!(
                "coherence_workload_drift_risk{{namespace={qns},workload=~{}}} >= 2",
                quote(&alternation(workloads))
            ),
            Some("10m"),
            "warning",
            "Drift risk of {{ $labels.namespace }}/{{ $labels.workload }} is high",
            &format!(
                "The verifier has judged the drift risk of workload {{{{ $labels.workload }}}} \
                 (CoherencePolicy {ns}/{name}) high for 10 minutes."
            ),
            "drift-risk-high",
        ));
    }
    verdicts.push(rule(
        "CoherenceVetoActive",
        format!("coherence_veto_active{{namespace={qns},policy={qname}}} > 0"),
        Some("5m"),
        "warning",
        "CoherencePolicy {{ $labels.namespace }}/{{ $labels.policy }} vetoes {{ $labels.action }}",
        &format!(
            "A veto of CoherencePolicy {ns}/{name} ({{{{ $labels.action }}}}) has held for 5 \
             minutes; see the policy's status.veto for the evidence."
        ),
        "veto-active",
    ));
    let sidecars = vec![
        rule(
            "CoherenceOutboxBacklog",
            format!("coherence_sidecar_outbox_pending{{namespace={qns}}} > 100"),
            Some("10m"),
            "warning",
            "Sidecar outbox backlog in {{ $labels.namespace }}",
            &format!(
                "The sidecar of pod {{{{ $labels.pod }}}} (CoherencePolicy {ns}/{name}) has held \
                 more than 100 undelivered records for 10 minutes: the verifier is not \
                 accepting them."
            ),
            "outbox-backlog",
        ),
        rule(
            "CoherenceDeadLetterGrowth",
            format!("increase(coherence_sidecar_dlq_total{{namespace={qns}}}[15m]) > 0"),
            None,
            "critical",
            "Sidecar records dead-lettered in {{ $labels.namespace }}",
            &format!(
                "The sidecar of pod {{{{ $labels.pod }}}} (CoherencePolicy {ns}/{name}) moved \
                 records to its dead-letter file in the last 15 minutes; they will not be \
                 verified."
            ),
            "dead-letter-growth",
        ),
    ];
    let groups = vec![
        json!({"name": "coherence.policy", "rules": verdicts}),
        json!({"name": "coherence.sidecar", "rules": sidecars}),
    ];
    let labels = owner::labels(&name, None);
    Ok(object(
        policy_rule_name(&name),
        &ns,
        owner_ref,
        labels,
        groups,
    ))
}

/// The PrometheusRule of `gate`: its grade FAIL for 10 m.
pub fn gate_rule(gate: &FinOpsGate) -> Result<DynamicObject, Error> {
    let (ns, name) = owner::namespaced_name(gate)?;
    let mut labels = owner::labels(&name, None);
    labels.remove(owner::POLICY_LABEL);
    labels.insert(GATE_LABEL.into(), owner::label_value(&name));
    let owner_ref = owner::controller_ref(gate)?;
    let target = &gate.spec.target_ref.name;
    let fail = rule(
        "CoherenceFinOpsGateFail",
        format!(
            "coherence_finops_grade{{namespace={},gate={}}} == 2",
            quote(&ns),
            quote(&name)
        ),
        Some("10m"),
        "warning",
        "FinOpsGate {{ $labels.namespace }}/{{ $labels.gate }} grades FAIL",
        &format!(
            "The FTI of {target} (FinOpsGate {ns}/{name}) has been above the warn threshold \
             for 10 minutes; see the gate's status.explain."
        ),
        "finops-gate-fail",
    );
    let groups = vec![json!({"name": "coherence.finops", "rules": [fail]})];
    Ok(object(
        gate_rule_name(&name),
        &ns,
        owner_ref,
        labels,
        groups,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn policy() -> CoherencePolicy {
        let mut p: CoherencePolicy = serde_yaml_ng::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/examples/coherencepolicy.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        p.metadata.uid = Some("uid-p".into());
        p
    }

    fn gate() -> FinOpsGate {
        let mut g: FinOpsGate = serde_yaml_ng::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/examples/finopsgate.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        g.metadata.uid = Some("uid-g".into());
        g
    }

    fn rules(obj: &DynamicObject) -> Vec<(String, String, String, Option<String>, String)> {
        let v = serde_json::to_value(obj).unwrap();
        v["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| {
                let group = g["name"].as_str().unwrap().to_string();
                g["rules"].as_array().unwrap().iter().map(move |r| {
                    (
                        group.clone(),
                        r["alert"].as_str().unwrap().to_string(),
                        r["expr"].as_str().unwrap().to_string(),
                        r["for"].as_str().map(str::to_string),
                        r["labels"]["severity"].as_str().unwrap().to_string(),
                    )
                })
            })
            .collect()
    }

    fn t(
        g: &str,
        a: &str,
        e: &str,
        f: Option<&str>,
        s: &str,
    ) -> (String, String, String, Option<String>, String) {
        (g.into(), a.into(), e.into(), f.map(Into::into), s.into())
    }

    #[test]
    fn a_policy_rule_has_exact_expressions_and_durations() {
        let obj = policy_rule(&policy(), &["web".into(), "api.v2".into()]).unwrap();
        assert_eq!(
            rules(&obj),
            vec![
                t(
                    "coherence.policy",
                    "CoherenceDriftRiskHigh",
                    r#"coherence_workload_drift_risk{namespace="demo",workload=~"api\\.v2|web"} >= 2"#,
                    Some("10m"),
                    "warning"
                ),
                t(
                    "coherence.policy",
                    "CoherenceVetoActive",
                    r#"coherence_veto_active{namespace="demo",policy="web"} > 0"#,
                    Some("5m"),
                    "warning"
                ),
                t(
                    "coherence.sidecar",
                    "CoherenceOutboxBacklog",
                    r#"coherence_sidecar_outbox_pending{namespace="demo"} > 100"#,
                    Some("10m"),
                    "warning"
                ),
                t(
                    "coherence.sidecar",
                    "CoherenceDeadLetterGrowth",
                    r#"increase(coherence_sidecar_dlq_total{namespace="demo"}[15m]) > 0"#,
                    None,
                    "critical"
                ),
            ]
        );
    }

    #[test]
    fn without_targets_there_is_no_drift_rule() {
        let obj = policy_rule(&policy(), &[]).unwrap();
        let alerts: Vec<String> = rules(&obj).into_iter().map(|r| r.1).collect();
        assert_eq!(
            alerts,
            [
                "CoherenceVetoActive",
                "CoherenceOutboxBacklog",
                "CoherenceDeadLetterGrowth"
            ]
        );
    }

    #[test]
    fn a_policy_rule_is_controlled_by_the_policy_and_labelled() {
        let v = serde_json::to_value(policy_rule(&policy(), &["web".into()]).unwrap()).unwrap();
        assert_eq!(v["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(v["kind"], "PrometheusRule");
        assert_eq!(v["metadata"]["name"], "coherence-policy-web");
        assert_eq!(v["metadata"]["namespace"], "demo");
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy",
                "name": "web", "uid": "uid-p", "controller": true, "blockOwnerDeletion": true,
            }])
        );
        assert_eq!(
            v["metadata"]["labels"],
            json!({"app.kubernetes.io/managed-by": "coherence-operator", "coherence.dev/policy": "web"})
        );
        for r in v["spec"]["groups"][0]["rules"].as_array().unwrap() {
            let a = &r["annotations"];
            assert!(!a["summary"].as_str().unwrap().is_empty());
            assert!(a["description"].as_str().unwrap().contains("demo/web"));
            assert!(a["runbook_url"].as_str().unwrap().starts_with(
                "https://github.com/coherence-dev/coherence/blob/main/docs/operations.md#"
            ));
        }
        assert_eq!(
            v["spec"]["groups"][0]["rules"][0]["annotations"]["runbook_url"]
                .as_str()
                .unwrap()
                .rsplit_once('#')
                .unwrap()
                .1,
            "drift-risk-high"
        );
    }

    #[test]
    fn a_gate_rule_grades_fail_for_ten_minutes() {
        let obj = gate_rule(&gate()).unwrap();
        assert_eq!(
            rules(&obj),
            vec![t(
                "coherence.finops",
                "CoherenceFinOpsGateFail",
                r#"coherence_finops_grade{namespace="demo",gate="web"} == 2"#,
                Some("10m"),
                "warning"
            )]
        );
        let v = serde_json::to_value(&obj).unwrap();
        assert_eq!(v["metadata"]["name"], "coherence-finopsgate-web");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "FinOpsGate");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-g");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["metadata"]["labels"]["coherence.dev/finopsgate"], "web");
        assert!(
            v["metadata"]["labels"]
                .get("coherence.dev/policy")
                .is_none()
        );
    }

    #[test]
    fn an_object_without_a_uid_cannot_own_a_rule() {
        let mut p = policy();
        p.metadata.uid = None;
        assert!(matches!(
            policy_rule(&p, &[]),
            Err(Error::MissingMetadata("uid"))
        ));
    }

    #[test]
    fn label_values_are_quoted_for_promql() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(
            alternation(&["b".into(), "a.b".into(), "b".into()]),
            r"a\.b|b"
        );
    }
}
