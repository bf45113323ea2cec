//! The Helm chart `charts/coherence`, checked without a cluster: `helm lint --strict`, and
//! `helm template` over value combinations, every rendered object parsed strictly into its
//! Kubernetes type (an unknown or misspelled field fails with the object and the JSON path),
//! then the rules the chart promises: no wildcard RBAC, Pod Security "restricted" on every pod,
//! requests and limits on every container, selectors, ports and names that agree across
//! objects. Also: the chart's CRDs are the generated ones, `manifests/install.yaml` is a fresh
//! render, the values schema rejects typos, and the Dockerfiles build binaries that exist.
//!
//! helm is found as `$HELM`, then `.tools/bin/helm` (`scripts/install-tools.sh`, run by
//! `make test`), then on `PATH`; without one the tests fail and say how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, PodSpec, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RELEASE: &str = "coherence";
const NAMESPACE: &str = "coherence";
/// The user and group of every container (the distroless `nonroot` user).
const NONROOT: i64 = 65532;

// ---------------------------------------------------------------------------------------------
// helm
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace")
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("charts/coherence")
}

/// `$HELM`, `.tools/bin/helm`, or `helm` on `PATH`; a failure that says how to get one.
fn helm() -> PathBuf {
    if let Some(h) = std::env::var_os("HELM").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let local = repo().join(".tools/bin/helm");
    if local.is_file() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("helm");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "helm not found ($HELM, {}, PATH): run scripts/install-tools.sh (or `make tools`), which \
         installs helm v4 into .tools/bin",
        repo().join(".tools/bin/helm").display()
    );
}

fn run_helm(args: &[&str]) -> Output {
    let helm = helm();
    Command::new(&helm)
        .args(args)
        .current_dir(repo())
        // No cluster is involved; a developer's kubeconfig must not change what is rendered.
        .env("KUBECONFIG", "/dev/null")
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("coherence-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("coherence-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("coherence-helm-data"),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()))
}

fn set_args(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_string(), (*s).to_string()])
        .collect()
}

/// `helm template` of the release `coherence` in the namespace `coherence` with the CRDs:
/// the objects, or helm's standard error.
fn template(sets: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut args = vec![
        "template".to_string(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--include-crds".into(),
    ];
    args.extend(set_args(sets));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_helm(&refs);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse_documents(&String::from_utf8(out.stdout).unwrap()))
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("rendered YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// `Kind namespace/name` of a rendered object.
fn id(o: &Value) -> String {
    let kind = o["kind"].as_str().unwrap_or("?");
    let name = o["metadata"]["name"].as_str().unwrap_or("?");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Strict parsing
// ---------------------------------------------------------------------------------------------

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Every difference between what was written and what the type kept: a field the type does
/// not have (unknown or misspelled) is missing after the round trip. Nulls written are
/// ignored; numbers compare by value (1 and 1.0 are the same).
fn diff(path: &str, written: &Value, kept: &Value, out: &mut Vec<String>) {
    match (written, kept) {
        (Value::Null, _) => {}
        (Value::Object(w), Value::Object(k)) => {
            for (key, wv) in w {
                let p = format!("{path}.{key}");
                match k.get(key) {
                    None if wv.is_null() => {}
                    None => out.push(format!(
                        "{p}: not a field of the type (unknown or misspelled)"
                    )),
                    Some(kv) => diff(&p, wv, kv, out),
                }
            }
            for (key, kv) in k {
                if !w.contains_key(key) && !is_empty(kv) {
                    out.push(format!("{path}.{key}: added by the type: {kv}"));
                }
            }
        }
        (Value::Array(w), Value::Array(k)) if w.len() == k.len() => {
            for (i, (wv, kv)) in w.iter().zip(k).enumerate() {
                diff(&format!("{path}[{i}]"), wv, kv, out);
            }
        }
        (Value::Number(w), Value::Number(k)) if w.as_f64() == k.as_f64() => {}
        (w, k) if w == k => {}
        (w, k) => out.push(format!("{path}: {w} became {k}")),
    }
}

/// Deserializes `o` into `T` (the error names the JSON path), serializes it back and requires
/// that nothing was lost or changed.
fn roundtrip<T: DeserializeOwned + Serialize>(o: &Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(o.clone())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    diff("", o, &back, &mut diffs);
    if diffs.is_empty() {
        Ok(typed)
    } else {
        Err(diffs.join("; "))
    }
}

/// Kinds without a k8s-openapi type: the fields the chart uses, nothing else
/// (`deny_unknown_fields`), and the metadata as `ObjectMeta`.
mod custom {
    // The fields are there so that `deny_unknown_fields` knows them; not all are read.
    #![allow(dead_code)]
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Object<S> {
        pub api_version: String,
        pub kind: String,
        pub metadata: serde_json::Value,
        pub spec: S,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct KeyRef {
        pub name: String,
        pub key: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitorSpec {
        pub selector: serde_json::Value,
        pub namespace_selector: Option<NamespaceSelector>,
        pub endpoints: Vec<Endpoint>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NamespaceSelector {
        pub match_names: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Endpoint {
        pub port: String,
        pub path: Option<String>,
        pub interval: Option<String>,
        pub honor_labels: Option<bool>,
        pub basic_auth: Option<BasicAuth>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BasicAuth {
        pub username: KeyRef,
        pub password: KeyRef,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleGroups {
        pub groups: Vec<RuleGroup>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleGroup {
        pub name: String,
        pub interval: Option<String>,
        pub rules: Vec<Rule>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Rule {
        pub alert: Option<String>,
        pub record: Option<String>,
        pub expr: String,
        #[serde(rename = "for")]
        pub for_: Option<String>,
        pub keep_firing_for: Option<String>,
        pub labels: Option<BTreeMap<String, String>>,
        pub annotations: Option<BTreeMap<String, String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct IssuerSpec {
        pub self_signed: Option<serde_json::Map<String, serde_json::Value>>,
        pub ca: Option<CaIssuer>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CaIssuer {
        pub secret_name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CertificateSpec {
        pub secret_name: String,
        pub common_name: Option<String>,
        pub duration: Option<String>,
        pub renew_before: Option<String>,
        #[serde(rename = "isCA")]
        pub is_ca: Option<bool>,
        pub private_key: Option<PrivateKey>,
        pub usages: Option<Vec<String>>,
        pub dns_names: Option<Vec<String>>,
        pub uris: Option<Vec<String>>,
        pub issuer_ref: IssuerRef,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrivateKey {
        pub algorithm: String,
        pub size: Option<u32>,
        pub rotation_policy: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct IssuerRef {
        pub name: String,
        pub kind: Option<String>,
        pub group: Option<String>,
    }
}

fn parse_custom<S: DeserializeOwned>(o: &Value) -> Result<custom::Object<S>, String> {
    let obj: custom::Object<S> = serde_path_to_error::deserialize(o.clone())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    roundtrip::<ObjectMeta>(&obj.metadata).map_err(|e| format!("metadata{e}"))?;
    if obj.metadata["name"].as_str().is_none_or(str::is_empty) {
        return Err("metadata.name: expected a name".into());
    }
    Ok(obj)
}

/// `s` is a sequence of `<digits><unit>` with units from `units` (`1h30m`): a Go duration
/// for cert-manager (which has no `d`), a Prometheus duration for rules.
fn is_duration(s: &str, units: &[&str]) -> bool {
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        // Longest unit first, so `ms` is not read as `m`.
        let Some(u) = units
            .iter()
            .filter(|u| rest.starts_with(**u))
            .max_by_key(|u| u.len())
        else {
            return false;
        };
        rest = &rest[u.len()..];
    }
    !s.is_empty()
}

const GO_UNITS: [&str; 4] = ["ms", "s", "m", "h"];
const PROMETHEUS_UNITS: [&str; 7] = ["ms", "s", "m", "h", "d", "w", "y"];

/// Every object of a render, parsed.
#[derive(Default)]
struct Objects {
    raw: Vec<Value>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    network_policies: Vec<NetworkPolicy>,
    pvcs: Vec<PersistentVolumeClaim>,
    config_maps: Vec<ConfigMap>,
    cluster_roles: Vec<ClusterRole>,
    roles: Vec<Role>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
    service_accounts: Vec<ServiceAccount>,
    webhooks: Vec<MutatingWebhookConfiguration>,
    crds: Vec<CustomResourceDefinition>,
    service_monitors: Vec<(String, custom::ServiceMonitorSpec, Value)>,
    prometheus_rules: Vec<(String, custom::RuleGroups, Value)>,
    issuers: Vec<(String, custom::IssuerSpec)>,
    certificates: Vec<(String, custom::CertificateSpec)>,
}

impl Objects {
    /// Parses every object strictly; the errors name the object and the JSON path.
    fn parse(raw: Vec<Value>) -> Result<Objects, Vec<String>> {
        let mut o = Objects::default();
        let mut errors = Vec::new();
        for v in &raw {
            let api = v["apiVersion"].as_str().unwrap_or_default();
            let kind = v["kind"].as_str().unwrap_or_default();
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let r: Result<(), String> = match (api, kind) {
                ("v1", "Namespace") => roundtrip::<Namespace>(v).map(drop),
                ("v1", "ServiceAccount") => roundtrip(v).map(|x| o.service_accounts.push(x)),
                ("v1", "Service") => roundtrip(v).map(|x| o.services.push(x)),
                ("v1", "ConfigMap") => roundtrip(v).map(|x| o.config_maps.push(x)),
                ("v1", "Secret") => roundtrip::<Secret>(v).map(drop),
                ("v1", "PersistentVolumeClaim") => roundtrip(v).map(|x| o.pvcs.push(x)),
                ("apps/v1", "Deployment") => roundtrip(v).map(|x| o.deployments.push(x)),
                ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                    roundtrip(v).map(|x| o.hpas.push(x))
                }
                ("policy/v1", "PodDisruptionBudget") => roundtrip(v).map(|x| o.pdbs.push(x)),
                ("networking.k8s.io/v1", "NetworkPolicy") => {
                    roundtrip(v).map(|x| o.network_policies.push(x))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    roundtrip(v).map(|x| o.cluster_roles.push(x))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    roundtrip(v).map(|x| o.cluster_role_bindings.push(x))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => roundtrip(v).map(|x| o.roles.push(x)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    roundtrip(v).map(|x| o.role_bindings.push(x))
                }
                ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                    roundtrip(v).map(|x| o.webhooks.push(x))
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    roundtrip(v).map(|x| o.crds.push(x))
                }
                ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                    parse_custom::<custom::ServiceMonitorSpec>(v).map(|x| {
                        o.service_monitors
                            .push((name.clone(), x.spec, v["metadata"].clone()))
                    })
                }
                ("monitoring.coreos.com/v1", "PrometheusRule") => {
                    parse_custom::<custom::RuleGroups>(v).and_then(|x| {
                        check_rule_groups(&x.spec)?;
                        o.prometheus_rules
                            .push((name.clone(), x.spec, v["metadata"].clone()));
                        Ok(())
                    })
                }
                ("cert-manager.io/v1", "Issuer" | "ClusterIssuer") => {
                    parse_custom::<custom::IssuerSpec>(v).and_then(|x| {
                        let kinds = usize::from(x.spec.self_signed.is_some())
                            + usize::from(x.spec.ca.is_some());
                        if kinds != 1 {
                            return Err("spec: expected exactly one of selfSigned, ca".into());
                        }
                        o.issuers.push((name.clone(), x.spec));
                        Ok(())
                    })
                }
                ("cert-manager.io/v1", "Certificate") => parse_custom::<custom::CertificateSpec>(v)
                    .and_then(|x| {
                        check_certificate(&x.spec)?;
                        o.certificates.push((name.clone(), x.spec));
                        Ok(())
                    }),
                _ => Err(format!(
                    "no strict check for {api} {kind}: add its type to chart.rs"
                )),
            };
            if let Err(e) = r {
                errors.push(format!("{}: {e}", id(v)));
            }
        }
        o.raw = raw;
        if errors.is_empty() {
            Ok(o)
        } else {
            Err(errors)
        }
    }

    fn deployment(&self, name: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn container(&self, deployment: &str) -> &Container {
        &pod_spec(self.deployment(deployment)).containers[0]
    }

    fn service(&self, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }
}

fn check_rule_groups(g: &custom::RuleGroups) -> Result<(), String> {
    if g.groups.is_empty() {
        return Err("spec.groups: expected at least one group".into());
    }
    for (i, group) in g.groups.iter().enumerate() {
        if group.rules.is_empty() {
            return Err(format!(
                "spec.groups[{i}].rules: expected at least one rule"
            ));
        }
        for (j, r) in group.rules.iter().enumerate() {
            let at = format!("spec.groups[{i}].rules[{j}]");
            if r.alert.is_some() == r.record.is_some() {
                return Err(format!("{at}: expected exactly one of alert, record"));
            }
            if r.expr.trim().is_empty() {
                return Err(format!("{at}.expr: expected an expression"));
            }
            for (field, d) in [("for", &r.for_), ("keep_firing_for", &r.keep_firing_for)] {
                if d.as_deref()
                    .is_some_and(|d| !is_duration(d, &PROMETHEUS_UNITS))
                {
                    return Err(format!("{at}.{field}: {d:?} is not a duration"));
                }
            }
        }
    }
    Ok(())
}

fn check_certificate(c: &custom::CertificateSpec) -> Result<(), String> {
    const USAGES: [&str; 5] = [
        "digital signature",
        "key encipherment",
        "server auth",
        "client auth",
        "cert sign",
    ];
    for u in c.usages.iter().flatten() {
        if !USAGES.contains(&u.as_str()) {
            return Err(format!(
                "spec.usages: {u:?} is not a key usage the chart means"
            ));
        }
    }
    for (field, d) in [("duration", &c.duration), ("renewBefore", &c.renew_before)] {
        if d.as_deref().is_some_and(|d| !is_duration(d, &GO_UNITS)) {
            return Err(format!(
                "spec.{field}: {d:?} is not a Go duration (cert-manager has no `d`)"
            ));
        }
    }
    let identity = c.common_name.is_some()
        || c.dns_names.as_ref().is_some_and(|d| !d.is_empty())
        || c.uris.as_ref().is_some_and(|u| !u.is_empty());
    if !identity {
        return Err("spec: expected commonName, dnsNames or uris".into());
    }
    if let Some(k) = &c.private_key
        && !["RSA", "ECDSA", "Ed25519"].contains(&k.algorithm.as_str())
    {
        return Err(format!("spec.privateKey.algorithm: {:?}", k.algorithm));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The rules every render follows
// ---------------------------------------------------------------------------------------------

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a Deployment with a pod spec")
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let ml = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let me = sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| vals.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !vals.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    ml && me
}

fn map_matches(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn no_wildcards(what: &str, rules: &[PolicyRule], errors: &mut Vec<String>) {
    for (i, r) in rules.iter().enumerate() {
        let lists = [
            ("verbs", Some(&r.verbs)),
            ("resources", r.resources.as_ref()),
            ("apiGroups", r.api_groups.as_ref()),
            ("resourceNames", r.resource_names.as_ref()),
            ("nonResourceURLs", r.non_resource_urls.as_ref()),
        ];
        for (field, list) in lists {
            if list.is_some_and(|l| l.iter().any(|v| v.contains('*'))) {
                errors.push(format!("{what}: rules[{i}].{field}: a wildcard"));
            }
        }
        for v in &r.verbs {
            if ["escalate", "bind", "impersonate"].contains(&v.as_str()) {
                errors.push(format!("{what}: rules[{i}].verbs: {v}"));
            }
        }
        if r.resources
            .iter()
            .flatten()
            .any(|res| res == "secrets" || res.starts_with("secrets/"))
        {
            errors.push(format!("{what}: rules[{i}]: access to Secrets"));
        }
    }
}

/// Pod Security "restricted", resources, host access; containers and init containers.
fn restricted(what: &str, spec: &PodSpec, errors: &mut Vec<String>) {
    let psc = spec.security_context.clone().unwrap_or_default();
    let mut fail = |m: String| errors.push(format!("{what}: {m}"));
    if psc.run_as_non_root != Some(true) {
        fail("securityContext.runAsNonRoot: expected true".into());
    }
    if psc.run_as_user != Some(NONROOT) {
        fail(format!("securityContext.runAsUser: expected {NONROOT}"));
    }
    if psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()) != Some("RuntimeDefault") {
        fail("securityContext.seccompProfile.type: expected RuntimeDefault".into());
    }
    for (flag, on) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if on == Some(true) {
            fail(format!("{flag}: expected false"));
        }
    }
    let volumes: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for v in spec.volumes.iter().flatten() {
        if v.host_path.is_some() {
            fail(format!("volumes.{}: hostPath", v.name));
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c))
        .chain(spec.containers.iter().map(|c| ("containers", c)));
    for (list, c) in containers {
        let at = format!("{list}.{}", c.name);
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.allow_privilege_escalation != Some(false) {
            fail(format!(
                "{at}.securityContext.allowPrivilegeEscalation: expected false"
            ));
        }
        if sc.read_only_root_filesystem != Some(true) {
            fail(format!(
                "{at}.securityContext.readOnlyRootFilesystem: expected true"
            ));
        }
        if sc.privileged == Some(true) {
            fail(format!("{at}.securityContext.privileged: expected false"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            fail(format!(
                "{at}.securityContext.capabilities.drop: expected ALL"
            ));
        }
        if caps.add.is_some_and(|a| !a.is_empty()) {
            fail(format!(
                "{at}.securityContext.capabilities.add: expected none"
            ));
        }
        if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
            fail(format!("{at}.securityContext.runAsNonRoot: expected true"));
        }
        if sc.run_as_user.or(psc.run_as_user) != Some(NONROOT) {
            fail(format!(
                "{at}.securityContext.runAsUser: expected {NONROOT}"
            ));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .or(psc.seccomp_profile.as_ref())
            .map(|s| s.type_.as_str());
        if seccomp != Some("RuntimeDefault") {
            fail(format!(
                "{at}.securityContext.seccompProfile.type: expected RuntimeDefault"
            ));
        }
        let res = c.resources.clone().unwrap_or_default();
        for (kind, m) in [("requests", &res.requests), ("limits", &res.limits)] {
            for r in ["cpu", "memory"] {
                if !m.as_ref().is_some_and(|m| m.contains_key(r)) {
                    fail(format!("{at}.resources.{kind}.{r}: missing"));
                }
            }
        }
        for m in c.volume_mounts.iter().flatten() {
            if !volumes.contains(m.name.as_str()) {
                fail(format!("{at}.volumeMounts.{}: no such volume", m.name));
            }
        }
        if c.image.as_deref().is_none_or(|i| !i.contains(':')) {
            fail(format!("{at}.image: expected a pinned tag"));
        }
    }
}

const STANDARD_LABELS: [&str; 5] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
];

/// Everything a render must satisfy; the list of what does not.
fn policy(o: &Objects) -> Vec<String> {
    let mut errors = Vec::new();

    // Labels: every object the templates make (the CRDs are the generated files as they are).
    for v in &o.raw {
        if v["kind"] == "CustomResourceDefinition" {
            continue;
        }
        for l in STANDARD_LABELS {
            if v["metadata"]["labels"][l]
                .as_str()
                .is_none_or(str::is_empty)
            {
                errors.push(format!("{}: label {l} missing", id(v)));
            }
        }
        // The Grafana dashboard ConfigMap may go where Grafana looks.
        let ns = v["metadata"]["namespace"].as_str();
        if ns.is_some_and(|n| n != NAMESPACE) && v["kind"] != "ConfigMap" {
            errors.push(format!("{}: outside the release namespace", id(v)));
        }
    }

    // RBAC.
    for r in &o.cluster_roles {
        let what = format!(
            "ClusterRole {}",
            r.metadata.name.clone().unwrap_or_default()
        );
        no_wildcards(&what, r.rules.as_deref().unwrap_or_default(), &mut errors);
    }
    for r in &o.roles {
        let what = format!("Role {}", r.metadata.name.clone().unwrap_or_default());
        no_wildcards(&what, r.rules.as_deref().unwrap_or_default(), &mut errors);
    }
    let role_names: BTreeSet<(String, String)> = o
        .cluster_roles
        .iter()
        .map(|r| {
            (
                "ClusterRole".into(),
                r.metadata.name.clone().unwrap_or_default(),
            )
        })
        .chain(
            o.roles
                .iter()
                .map(|r| ("Role".into(), r.metadata.name.clone().unwrap_or_default())),
        )
        .collect();
    let accounts: BTreeSet<String> = o
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let bindings = o
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.metadata, &b.role_ref, &b.subjects))
        .chain(
            o.role_bindings
                .iter()
                .map(|b| (&b.metadata, &b.role_ref, &b.subjects)),
        );
    for (meta, role_ref, subjects) in bindings {
        let name = meta.name.clone().unwrap_or_default();
        if !role_names.contains(&(role_ref.kind.clone(), role_ref.name.clone())) {
            errors.push(format!(
                "binding {name}: roleRef {} not rendered",
                role_ref.name
            ));
        }
        for s in subjects.iter().flatten() {
            if s.kind != "ServiceAccount"
                || !accounts.contains(&s.name)
                || s.namespace.as_deref() != Some(NAMESPACE)
            {
                errors.push(format!("binding {name}: subject {} is not ours", s.name));
            }
        }
    }

    // Pods.
    for d in &o.deployments {
        let name = d.metadata.name.clone().unwrap_or_default();
        let what = format!("Deployment {name}");
        let spec = d.spec.as_ref().unwrap();
        let labels = template_labels(d);
        if !selector_matches(&spec.selector, &labels)
            || spec
                .selector
                .match_labels
                .as_ref()
                .is_none_or(BTreeMap::is_empty)
        {
            errors.push(format!("{what}: selector does not match its pod template"));
        }
        let ps = pod_spec(d);
        restricted(&what, ps, &mut errors);
        let sa = ps.service_account_name.clone().unwrap_or_default();
        if !accounts.contains(&sa) {
            errors.push(format!("{what}: serviceAccountName {sa:?} not rendered"));
        }
        for v in ps.volumes.iter().flatten() {
            if let Some(c) = &v.persistent_volume_claim {
                let found = o
                    .pvcs
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(c.claim_name.as_str()));
                if !found {
                    errors.push(format!("{what}: claim {} not rendered", c.claim_name));
                }
            }
        }
        // Other Deployments never select these pods.
        for other in &o.deployments {
            if other.metadata.name != d.metadata.name
                && selector_matches(&other.spec.as_ref().unwrap().selector, &labels)
            {
                errors.push(format!(
                    "{what}: also selected by Deployment {:?}",
                    other.metadata.name
                ));
            }
        }
    }

    // Services: one Deployment behind each, named target ports that its container declares.
    for s in &o.services {
        let name = s.metadata.name.clone().unwrap_or_default();
        let spec = s.spec.as_ref().unwrap();
        let sel = spec.selector.clone().unwrap_or_default();
        let behind: Vec<&Deployment> = o
            .deployments
            .iter()
            .filter(|d| map_matches(&sel, &template_labels(d)))
            .collect();
        if behind.len() != 1 {
            errors.push(format!(
                "Service {name}: selects {} Deployments, expected 1",
                behind.len()
            ));
            continue;
        }
        let ports: Vec<_> = pod_spec(behind[0])
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .collect();
        for p in spec.ports.iter().flatten() {
            let ok = match &p.target_port {
                Some(IntOrString::String(n)) => ports.iter().any(|c| c.name.as_ref() == Some(n)),
                Some(IntOrString::Int(n)) => ports.iter().any(|c| c.container_port == *n),
                None => ports.iter().any(|c| c.container_port == p.port),
            };
            if !ok {
                errors.push(format!(
                    "Service {name}: port {:?} targets no container port",
                    p.name
                ));
            }
        }
    }

    // PDBs, NetworkPolicies and HPAs point at the chart's Deployments.
    for p in &o.pdbs {
        let sel = p
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if !o
            .deployments
            .iter()
            .any(|d| selector_matches(&sel, &template_labels(d)))
        {
            errors.push(format!("PDB {:?}: selects no Deployment", p.metadata.name));
        }
    }
    for n in &o.network_policies {
        let sel = &n
            .spec
            .as_ref()
            .unwrap()
            .pod_selector
            .clone()
            .unwrap_or_default();
        let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
        if !empty
            && !o
                .deployments
                .iter()
                .any(|d| selector_matches(sel, &template_labels(d)))
        {
            errors.push(format!(
                "NetworkPolicy {:?}: selects no Deployment",
                n.metadata.name
            ));
        }
    }
    for h in &o.hpas {
        let target = &h.spec.as_ref().unwrap().scale_target_ref;
        match o
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(target.name.as_str()))
        {
            Some(d) if target.kind == "Deployment" => {
                if d.spec.as_ref().unwrap().replicas.is_some() {
                    errors.push(format!(
                        "HPA {}: its Deployment also sets replicas (they would fight)",
                        target.name
                    ));
                }
            }
            _ => errors.push(format!("HPA: target {} not rendered", target.name)),
        }
    }

    // ServiceMonitors select a Service and name its ports.
    for (name, spec, _) in &o.service_monitors {
        let sel: LabelSelector = serde_json::from_value(spec.selector.clone()).unwrap();
        let svc: Vec<&Service> = o
            .services
            .iter()
            .filter(|s| selector_matches(&sel, s.metadata.labels.as_ref().unwrap()))
            .collect();
        if svc.len() != 1 {
            errors.push(format!(
                "ServiceMonitor {name}: selects {} Services, expected 1",
                svc.len()
            ));
            continue;
        }
        for e in &spec.endpoints {
            let ports = svc[0]
                .spec
                .as_ref()
                .unwrap()
                .ports
                .clone()
                .unwrap_or_default();
            if !ports
                .iter()
                .any(|p| p.name.as_deref() == Some(e.port.as_str()))
            {
                errors.push(format!("ServiceMonitor {name}: no Service port {}", e.port));
            }
        }
    }

    // Certificates name issuers that exist (or one of the user's).
    for (name, c) in &o.certificates {
        let kind = c.issuer_ref.kind.as_deref().unwrap_or("Issuer");
        if kind == "Issuer" && !o.issuers.iter().any(|(n, _)| n == &c.issuer_ref.name) {
            errors.push(format!(
                "Certificate {name}: Issuer {} not rendered",
                c.issuer_ref.name
            ));
        }
    }

    // The webhook: the operator's flags name this configuration and its Service.
    let operator_args = o
        .container(&format!("{RELEASE}-operator"))
        .args
        .clone()
        .unwrap_or_default();
    let flag = |f: &str| {
        operator_args
            .iter()
            .find_map(|a| a.strip_prefix(&format!("--{f}=")).map(str::to_string))
    };
    for w in &o.webhooks {
        let name = w.metadata.name.clone().unwrap_or_default();
        if flag("webhook-configuration").as_deref() != Some(name.as_str()) {
            errors.push(format!(
                "webhook {name}: not the operator's --webhook-configuration"
            ));
        }
        for h in w.webhooks.iter().flatten() {
            if h.side_effects != "None" || h.admission_review_versions != ["v1"] {
                errors.push(format!("webhook {name}: sideEffects None and v1 reviews"));
            }
            let svc = h.client_config.service.as_ref().expect("a Service");
            if flag("webhook-service").as_deref() != Some(svc.name.as_str()) {
                errors.push(format!(
                    "webhook {name}: not the operator's --webhook-service"
                ));
            }
            let port = o.service(&svc.name).and_then(|s| {
                s.spec
                    .as_ref()?
                    .ports
                    .as_ref()?
                    .iter()
                    .find(|p| Some(p.port) == svc.port)
                    .cloned()
            });
            if svc.namespace != NAMESPACE || port.is_none() {
                errors.push(format!(
                    "webhook {name}: Service {}:{:?} not rendered",
                    svc.name, svc.port
                ));
            }
            let excluded = h
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_expressions.as_ref())
                .is_some_and(|es| {
                    es.iter().any(|e| {
                        e.key == "kubernetes.io/metadata.name"
                            && e.operator == "NotIn"
                            && e.values.iter().flatten().any(|v| v == NAMESPACE)
                    })
                });
            if !excluded {
                errors.push(format!(
                    "webhook {name}: the release namespace is not excluded"
                ));
            }
        }
    }

    // The operator reaches the verifier's Service on 8443, and holds a Lease it may write.
    let endpoint = flag("verifier-endpoint").unwrap_or_default();
    let verifier = format!("{RELEASE}-verifier");
    if !endpoint.ends_with(&format!("://{verifier}.{NAMESPACE}.svc:8443")) {
        errors.push(format!(
            "--verifier-endpoint {endpoint}: not the verifier's Service"
        ));
    }
    let lease = flag("lease-name").unwrap_or_default();
    let lease_ok = o.roles.iter().any(|r| {
        r.rules.iter().flatten().any(|rule| {
            rule.resources.iter().flatten().any(|x| x == "leases")
                && rule.resource_names.iter().flatten().any(|n| n == &lease)
                && rule.verbs.iter().any(|v| v == "update")
        })
    });
    if !lease_ok {
        errors.push(format!("Lease {lease}: no Role allows updating it"));
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// The value combinations
// ---------------------------------------------------------------------------------------------

fn env_of(c: &Container, name: &str) -> Option<Value> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .map(|e| serde_json::to_value(e).unwrap())
}

fn args_of(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

fn cluster_role_has(o: &Objects, group: &str, resource: &str) -> bool {
    o.cluster_roles.iter().any(|r| {
        r.rules.iter().flatten().any(|rule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|x| x == resource)
        })
    })
}

fn secret_volume(o: &Objects, deployment: &str, secret: &str) -> bool {
    pod_spec(o.deployment(deployment))
        .volumes
        .iter()
        .flatten()
        .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
}

/// A value combination: its name, the `--set` values, and what it must render.
struct Case {
    name: &'static str,
    sets: Vec<&'static str>,
    expect: fn(&Objects),
}

fn case(name: &'static str, sets: &[&'static str], expect: fn(&Objects)) -> Case {
    Case {
        name,
        sets: sets.to_vec(),
        expect,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("defaults", &[], |o| {
            let v = o.container("coherence-verifier");
            let a = args_of(v);
            assert!(
                a.contains(&"--tls-ca=/etc/coherence/tls/ca.crt".into()),
                "{a:?}"
            );
            assert!(!a.contains(&"--insecure-dev".into()));
            assert_eq!(env_of(v, "DEDUP_BACKEND").unwrap()["value"], "memory");
            assert_eq!(
                env_of(v, "PCS_HMAC_KEY").unwrap()["valueFrom"]["secretKeyRef"]["name"],
                "coherence-pcs"
            );
            assert!(secret_volume(
                o,
                "coherence-verifier",
                "coherence-verifier-tls"
            ));
            assert!(secret_volume(
                o,
                "coherence-operator",
                "coherence-operator-client"
            ));
            assert_eq!(o.pvcs.len(), 1, "the WAL claim");
            let op = args_of(o.container("coherence-operator"));
            for flag in [
                "--native-sidecars=true",
                "--sidecar-image=ghcr.io/coherence-dev/coherence-sidecar:0.1.0",
                "--webhook-configuration=coherence-sidecar-injector",
                "--webhook-service=coherence-operator-webhook",
                "--verifier-endpoint=https://coherence-verifier.coherence.svc:8443",
            ] {
                assert!(op.contains(&flag.to_string()), "{flag} not in {op:?}");
            }
            assert!(!op.iter().any(|a| a.starts_with("--webhook-cert")));
            // Without cert-manager the operator patches the caBundle of exactly its configuration.
            let rule = o.cluster_roles[0]
                .rules
                .iter()
                .flatten()
                .find(|r| {
                    r.resources
                        .iter()
                        .flatten()
                        .any(|x| x == "mutatingwebhookconfigurations")
                })
                .expect("a rule for the caBundle");
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["coherence-sidecar-injector".to_string()][..])
            );
            assert_eq!(rule.verbs, ["get", "patch"]);
            assert!(cluster_role_has(
                o,
                "monitoring.coreos.com",
                "prometheusrules"
            ));
            let w = &o.webhooks[0].webhooks.as_ref().unwrap()[0];
            assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
            assert!(o.webhooks[0].metadata.annotations.is_none());
            assert!(o.certificates.is_empty() && o.issuers.is_empty());
            assert!(o.hpas.is_empty());
            assert_eq!(o.pdbs.len(), 1);
            assert_eq!(
                o.network_policies.len(),
                3,
                "default deny, operator, verifier"
            );
            assert!(o.service_monitors.is_empty() && o.prometheus_rules.is_empty());
            assert_eq!(o.crds.len(), 2);
        }),
        case("cert-manager", &["certManager.enabled=true"], |o| {
            let names: BTreeSet<&str> = o.certificates.iter().map(|(n, _)| n.as_str()).collect();
            for n in [
                "coherence-ca",
                "coherence-operator-webhook",
                "coherence-verifier",
                "coherence-operator-client",
                "coherence-sidecar-client",
            ] {
                assert!(names.contains(n), "Certificate {n} missing: {names:?}");
            }
            assert_eq!(o.issuers.len(), 2, "self-signed and CA");
            let ann = o.webhooks[0].metadata.annotations.clone().unwrap();
            assert_eq!(
                ann["cert-manager.io/inject-ca-from"],
                "coherence/coherence-operator-webhook"
            );
            let (_, hook) = o
                .certificates
                .iter()
                .find(|(n, _)| n == "coherence-operator-webhook")
                .unwrap();
            assert!(
                hook.dns_names
                    .iter()
                    .flatten()
                    .any(|d| d == "coherence-operator-webhook.coherence.svc")
            );
            assert!(secret_volume(o, "coherence-operator", &hook.secret_name));
            let (_, ver) = o
                .certificates
                .iter()
                .find(|(n, _)| n == "coherence-verifier")
                .unwrap();
            assert!(
                ver.dns_names
                    .iter()
                    .flatten()
                    .any(|d| d == "coherence-verifier.coherence.svc")
            );
            assert!(secret_volume(o, "coherence-verifier", &ver.secret_name));
            let (_, side) = o
                .certificates
                .iter()
                .find(|(n, _)| n == "coherence-sidecar-client")
                .unwrap();
            assert_eq!(
                side.secret_name, "coherence-sidecar-client",
                "the Secret the e2e tests copy"
            );
            assert_eq!(
                side.uris.as_deref().unwrap(),
                ["spiffe://coherence.dev/ns/*/sa/coherence-sidecar"]
            );
            assert!(side.usages.iter().flatten().any(|u| u == "client auth"));
            let (_, ca) = o
                .certificates
                .iter()
                .find(|(n, _)| n == "coherence-ca")
                .unwrap();
            assert_eq!(ca.is_ca, Some(true));
            let op = args_of(o.container("coherence-operator"));
            assert!(
                op.contains(&"--webhook-cert=/etc/coherence/webhook/tls.crt".into()),
                "{op:?}"
            );
            assert!(!cluster_role_has(
                o,
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations"
            ));
        }),
        case(
            "cert-manager with a ClusterIssuer",
            &[
                "certManager.enabled=true",
                "certManager.issuerRef.kind=ClusterIssuer",
                "certManager.issuerRef.name=corp-ca",
            ],
            |o| {
                assert!(
                    o.issuers.is_empty(),
                    "no self-signed chain with an issuerRef"
                );
                for (n, c) in &o.certificates {
                    assert_eq!(c.issuer_ref.name, "corp-ca", "{n}");
                    assert_eq!(c.issuer_ref.kind.as_deref(), Some("ClusterIssuer"), "{n}");
                }
            },
        ),
        case(
            "redis",
            &[
                "dedup.backend=redis",
                "dedup.redis.secretName=coherence-redis",
                "verifier.replicas=3",
                "verifier.wal.volume=emptyDir",
            ],
            |o| {
                let v = o.container("coherence-verifier");
                assert_eq!(env_of(v, "DEDUP_BACKEND").unwrap()["value"], "redis");
                let addr = env_of(v, "REDIS_ADDR").unwrap();
                assert_eq!(addr["valueFrom"]["secretKeyRef"]["name"], "coherence-redis");
                assert_eq!(addr["valueFrom"]["secretKeyRef"]["key"], "REDIS_ADDR");
                assert!(env_of(v, "DATABASE_URL").is_none());
                let d = o.deployment("coherence-verifier").spec.clone().unwrap();
                assert_eq!(d.replicas, Some(3));
                assert!(
                    d.strategy.is_none(),
                    "rolling updates without a shared claim"
                );
                assert!(o.pvcs.is_empty());
                let wal = pod_spec(o.deployment("coherence-verifier"))
                    .volumes
                    .as_ref()
                    .unwrap()
                    .iter()
                    .find(|v| v.name == "wal")
                    .unwrap()
                    .clone();
                assert!(wal.empty_dir.is_some());
                let np = o
                    .network_policies
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some("coherence-verifier"))
                    .unwrap();
                let egress = serde_json::to_string(&np.spec.as_ref().unwrap().egress).unwrap();
                assert!(egress.contains("6379"), "{egress}");
            },
        ),
        case(
            "postgres with autoscaling",
            &[
                "dedup.backend=postgres",
                "dedup.postgres.secretName=coherence-postgres",
                "verifier.autoscaling.enabled=true",
                "verifier.wal.volume=emptyDir",
            ],
            |o| {
                let v = o.container("coherence-verifier");
                let url = env_of(v, "DATABASE_URL").unwrap();
                assert_eq!(
                    url["valueFrom"]["secretKeyRef"]["name"],
                    "coherence-postgres"
                );
                assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "DATABASE_URL");
                assert_eq!(env_of(v, "DATABASE_SCHEMA").unwrap()["value"], "public");
                assert_eq!(o.hpas.len(), 1);
                let h = o.hpas[0].spec.clone().unwrap();
                assert_eq!((h.min_replicas, h.max_replicas), (Some(2), 5));
            },
        ),
        case("ed25519", &["signing.alg=ed25519"], |o| {
            let v = o.container("coherence-verifier");
            assert_eq!(env_of(v, "PCS_SIGN_ALG").unwrap()["value"], "ed25519");
            let key = env_of(v, "PCS_ED25519_PUB_B64").unwrap();
            assert_eq!(key["valueFrom"]["secretKeyRef"]["name"], "coherence-pcs");
            assert!(env_of(v, "PCS_HMAC_KEY").is_none());
        }),
        case("mTLS off", &["mtls.enabled=false"], |o| {
            let v = o.container("coherence-verifier");
            let a = args_of(v);
            assert!(a.contains(&"--insecure-dev".into()));
            assert!(!a.iter().any(|x| x.starts_with("--tls-")));
            assert!(v.volume_mounts.iter().flatten().all(|m| m.name != "tls"));
            let op = args_of(o.container("coherence-operator"));
            assert!(op.contains(
                &"--verifier-endpoint=http://coherence-verifier.coherence.svc:8443".into()
            ));
            assert!(!op.iter().any(|x| x.starts_with("--verifier-ca")));
            assert!(
                pod_spec(o.deployment("coherence-operator"))
                    .volumes
                    .is_none()
            );
        }),
        case(
            "monitoring on",
            &[
                "monitoring.serviceMonitor.enabled=true",
                "monitoring.prometheusRule.enabled=true",
                "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
                "monitoring.grafanaDashboard.enabled=true",
                "verifier.metricsAuth.enabled=true",
                "verifier.metricsAuth.secretName=coherence-metrics",
            ],
            |o| {
                assert_eq!(o.service_monitors.len(), 2);
                let (_, sm, _) = o
                    .service_monitors
                    .iter()
                    .find(|(n, _, _)| n == "coherence-verifier")
                    .unwrap();
                let auth = sm.endpoints[0].basic_auth.as_ref().expect("basic auth");
                assert_eq!(
                    (auth.username.name.as_str(), auth.username.key.as_str()),
                    ("coherence-metrics", "METRICS_USER")
                );
                assert_eq!(auth.password.key, "METRICS_PASS");
                assert!(sm.endpoints.iter().all(|e| e.honor_labels == Some(true)));
                let v = o.container("coherence-verifier");
                assert_eq!(
                    env_of(v, "METRICS_USER").unwrap()["valueFrom"]["secretKeyRef"]["name"],
                    "coherence-metrics"
                );
                let (_, rules, meta) = &o.prometheus_rules[0];
                assert_eq!(meta["labels"]["release"], "kube-prometheus-stack");
                assert!(
                    rules
                        .groups
                        .iter()
                        .flat_map(|g| &g.rules)
                        .any(|r| r.alert.as_deref() == Some("CoherenceVerifierDown"))
                );
                let cm = o
                    .config_maps
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some("coherence-grafana-dashboard"))
                    .unwrap();
                assert_eq!(
                    cm.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
                    "1"
                );
                let json: Value =
                    serde_json::from_str(&cm.data.as_ref().unwrap()["coherence.json"]).unwrap();
                assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
            },
        ),
        case(
            "native sidecars off",
            &["sidecar.nativeSidecars=false", "sidecar.image.tag=dev"],
            |o| {
                let op = args_of(o.container("coherence-operator"));
                assert!(op.contains(&"--native-sidecars=false".into()), "{op:?}");
                assert!(
                    op.contains(
                        &"--sidecar-image=ghcr.io/coherence-dev/coherence-sidecar:dev".into()
                    ),
                    "{op:?}"
                );
            },
        ),
        case(
            "two operator replicas",
            &["operator.replicas=2", "certManager.enabled=true"],
            |o| {
                let d = o.deployment("coherence-operator");
                assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
                assert!(
                    pod_spec(d)
                        .affinity
                        .as_ref()
                        .and_then(|a| a.pod_anti_affinity.as_ref())
                        .is_some()
                );
            },
        ),
        case(
            "failurePolicy Fail",
            &[
                "webhook.failurePolicy=Fail",
                "webhook.excludeNamespaces={istio-system}",
            ],
            |o| {
                let w = &o.webhooks[0].webhooks.as_ref().unwrap()[0];
                assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
                let ns = serde_json::to_string(&w.namespace_selector).unwrap();
                assert!(ns.contains("istio-system"), "{ns}");
            },
        ),
        case(
            "network policies narrowed, no default deny, no PrometheusRule rights",
            &[
                "networkPolicy.defaultDeny=false",
                "networkPolicy.apiServerCIDRs={172.18.0.0/16}",
                "rbac.prometheusRules=false",
            ],
            |o| {
                assert_eq!(o.network_policies.len(), 2);
                let np = serde_json::to_string(&o.network_policies).unwrap();
                assert!(np.contains("172.18.0.0/16"));
                assert!(!cluster_role_has(
                    o,
                    "monitoring.coreos.com",
                    "prometheusrules"
                ));
            },
        ),
        case(
            "network policies off",
            &["networkPolicy.enabled=false"],
            |o| {
                assert!(o.network_policies.is_empty());
            },
        ),
        case(
            "another release name",
            &["fullnameOverride=coherence"],
            |o| {
                // The names the binaries default to, whatever the release is called.
                assert!(o.service("coherence-verifier").is_some());
            },
        ),
    ]
}

#[test]
fn helm_lint_strict_passes_for_every_combination() {
    let chart = chart().display().to_string();
    for Case { name, sets, .. } in cases() {
        let mut args = vec!["lint".to_string(), "--strict".into(), chart.clone()];
        args.extend(set_args(&sets));
        args.extend(["--namespace".into(), NAMESPACE.into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_helm(&refs);
        assert!(
            out.status.success(),
            "helm lint --strict ({name}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_combination_renders_strict_objects_that_follow_the_rules() {
    let mut failures = Vec::new();
    for Case { name, sets, expect } in cases() {
        let rendered = template(&sets).unwrap_or_else(|e| panic!("helm template ({name}): {e}"));
        let objects = match Objects::parse(rendered) {
            Ok(o) => o,
            Err(errors) => {
                failures.push(format!("{name}:\n  {}", errors.join("\n  ")));
                continue;
            }
        };
        let errors = policy(&objects);
        if !errors.is_empty() {
            failures.push(format!("{name}:\n  {}", errors.join("\n  ")));
            continue;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| expect(&objects)));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            failures.push(format!("{name}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_strict_parse_names_a_misspelled_field_and_its_path() {
    let bad: Value = serde_json::from_str(
        r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata":
            {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1",
            "securityContex": {}}]}}}}"#,
    )
    .unwrap();
    let errors = Objects::parse(vec![bad]).err().unwrap();
    assert!(
        errors[0].contains("Deployment x")
            && errors[0].contains(".spec.template.spec.containers[0].securityContex"),
        "{errors:?}"
    );
    let wrong_type: Value = serde_json::from_str(
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": "https"}]}}"#,
    )
    .unwrap();
    let errors = Objects::parse(vec![wrong_type]).err().unwrap();
    assert!(errors[0].contains("spec.ports[0].port"), "{errors:?}");
    let cert: Value = serde_json::from_str(
        r#"{"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"},
            "spec": {"secretName": "s", "dnsName": ["a"], "issuerRef": {"name": "i"}}}"#,
    )
    .unwrap();
    let errors = Objects::parse(vec![cert]).err().unwrap();
    assert!(errors[0].contains("dnsName"), "{errors:?}");
}

#[test]
fn the_values_schema_and_the_templates_reject_what_cannot_work() {
    let cases: [(&[&str], &str); 9] = [
        (&["dedup.backnd=redis"], "backnd"),
        (&["operator.replica=2"], "replica"),
        (&["webhook.failurePolicy=Sometimes"], "failurePolicy"),
        (&["dedup.backend=mysql"], "backend"),
        (&["signing.alg=rsa"], "alg"),
        (&["verifier.replicas=2"], "shared dedup store"),
        (&["dedup.backend=redis"], "dedup.redis.secretName"),
        (&["operator.replicas=2"], "certManager.enabled"),
        (
            &[
                "dedup.backend=postgres",
                "dedup.postgres.secretName=pg",
                "verifier.replicas=2",
            ],
            "ReadWriteOnce",
        ),
    ];
    for (sets, expected) in cases {
        match template(sets) {
            Ok(_) => {
                panic!("helm template {sets:?} rendered; expected a failure naming {expected}")
            }
            Err(e) => assert!(e.contains(expected), "{sets:?}: {e}"),
        }
    }
}

#[test]
fn notes_say_what_to_run_next_and_warn_without_mtls() {
    let notes = |sets: &[&str]| {
        let chart = chart().display().to_string();
        let mut args = vec![
            "install".to_string(),
            RELEASE.into(),
            chart,
            "--namespace".into(),
            NAMESPACE.into(),
            "--dry-run=client".into(),
        ];
        args.extend(set_args(sets));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_helm(&refs);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text[text.find("NOTES:").expect("NOTES")..].to_string()
    };
    let default = notes(&[]);
    for needle in [
        "kubectl get cpol,fgate -A",
        "kubectl -n coherence port-forward svc/coherence-verifier 9102:9102",
        "http://127.0.0.1:9102/ui",
        "coherence certs gen --out certs --san coherence-verifier.coherence.svc",
        "kubectl -n coherence create secret generic coherence-verifier-tls",
        "kubectl -n coherence create secret generic coherence-pcs",
    ] {
        assert!(
            default.contains(needle),
            "{needle:?} not in the NOTES:\n{default}"
        );
    }
    assert!(!default.contains("WARNING"));
    let insecure = notes(&["mtls.enabled=false"]);
    assert!(
        insecure.contains("WARNING: mtls.enabled=false"),
        "{insecure}"
    );
    assert!(insecure.contains("http://coherence-verifier.coherence.svc:8443"));
    let cm = notes(&["certManager.enabled=true"]);
    assert!(
        cm.contains("coherence-sidecar-tls") && !cm.contains("coherence certs gen"),
        "{cm}"
    );
}

#[test]
fn the_chart_crds_are_the_generated_crds() {
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect()
    };
    let generated = repo().join("crds");
    let copied = chart().join("crds");
    assert_eq!(
        names(&generated),
        names(&copied),
        "charts/coherence/crds/ must hold the files of crds/: cp crds/*.yaml charts/coherence/crds/"
    );
    for n in names(&generated) {
        let a = std::fs::read(generated.join(&n)).unwrap();
        let b = std::fs::read(copied.join(&n)).unwrap();
        assert!(
            a == b,
            "charts/coherence/crds/{n} differs from crds/{n}: cp crds/*.yaml charts/coherence/crds/"
        );
    }
}

#[test]
fn manifests_install_yaml_is_a_fresh_render() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("install.yaml");
    let out = Command::new("bash")
        .arg(repo().join("scripts/render-manifests.sh"))
        .arg(&fresh)
        .env("HELM", helm())
        .env("KUBECONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read_to_string(&fresh).unwrap();
    let committed = std::fs::read_to_string(repo().join("manifests/install.yaml"))
        .expect("manifests/install.yaml: run `make manifests`");
    assert!(
        fresh == committed,
        "manifests/install.yaml is stale: run `make manifests` (scripts/render-manifests.sh)"
    );
    // What it holds parses as strictly as the chart's renders, with the namespace first.
    let docs = parse_documents(&committed);
    assert_eq!(id(&docs[0]), "Namespace coherence");
    assert_eq!(
        docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let objects = Objects::parse(docs).unwrap_or_else(|e| panic!("{}", e.join("\n")));
    let errors = policy(&objects);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_chart_versions_are_the_workspace_version() {
    let chart: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

/// Every leaf of values.yaml is in the README's table of values.
#[test]
fn every_value_is_documented() {
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() && !prefix.ends_with("labels") => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    // Free-form maps are documented as a whole.
                    let free = [
                        "resources",
                        "nodeSelector",
                        "affinity",
                        "podAnnotations",
                        "podLabels",
                        "commonLabels",
                        "annotations",
                        "issuerRef",
                    ];
                    if free.contains(&k.as_str()) {
                        out.push(p);
                    } else {
                        leaves(&p, v, out);
                    }
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let mut keys = Vec::new();
    leaves("", &values, &mut keys);
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "values not in charts/coherence/README.md: {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles
// ---------------------------------------------------------------------------------------------

/// Packages of the workspace and their binaries, from `cargo metadata`.
fn workspace_bins() -> BTreeMap<String, Vec<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let bins = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), bins)
        })
        .collect()
}

/// Dockerfile lines with their continuations joined.
fn dockerfile(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(name)).unwrap();
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || (t.starts_with('#') && current.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(t);
            lines.push(std::mem::take(&mut current));
        }
    }
    lines
}

/// `binaries`: each binary of the image with the cargo profile it is built with (whose
/// directory under `target/` it is copied from).
fn check_dockerfile(name: &str, binaries: &[(&str, &str)]) {
    let bins = workspace_bins();
    let all_bins: BTreeSet<&String> = bins.values().flatten().collect();
    let lines = dockerfile(name);
    // Every cargo command: from `cargo build` to the next `&&`.
    let builds: Vec<&str> = lines
        .iter()
        .flat_map(|l| l.split("&&"))
        .filter_map(|part| part.find("cargo build").map(|at| &part[at..]))
        .collect();
    assert!(!builds.is_empty(), "{name}: no cargo build");
    let profiles: BTreeSet<&str> = binaries.iter().map(|(_, p)| *p).collect();
    for b in &builds {
        let words: Vec<&str> = b.split_whitespace().collect();
        for w in words.windows(2) {
            if w[0] == "-p" || w[0] == "--package" {
                assert!(
                    bins.contains_key(w[1]),
                    "{name}: -p {}: no such package",
                    w[1]
                );
            }
            if w[0] == "--bin" {
                assert!(
                    all_bins.contains(&w[1].to_string()),
                    "{name}: --bin {}",
                    w[1]
                );
            }
            if w[0] == "--profile" {
                assert!(profiles.contains(w[1]), "{name}: --profile {}", w[1]);
            }
        }
        assert!(b.contains("--locked"), "{name}: cargo build --locked");
        assert!(
            b.contains("--release") || b.contains("--profile "),
            "{name}: {b}: neither --release nor --profile"
        );
    }
    for (bin, profile) in binaries {
        if *profile == "release" {
            assert!(
                builds.iter().any(|b| b.contains("--release")),
                "{name}: {bin}: no --release build"
            );
        } else {
            let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
            assert!(
                cargo.contains(&format!("[profile.{profile}]")),
                "Cargo.toml: no [profile.{profile}]"
            );
            assert!(
                builds
                    .iter()
                    .any(|b| b.contains(&format!("--profile {profile}"))),
                "{name}: {bin}: no --profile {profile} build"
            );
        }
        assert!(
            all_bins.contains(&bin.to_string()),
            "{bin}: not a binary of the workspace"
        );
        let built = format!("target/{profile}/{bin}");
        assert!(
            lines.iter().any(|l| l.contains(&built)),
            "{name}: {built} is never copied"
        );
        let installed = format!("/usr/local/bin/{bin}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("COPY --from=") && l.ends_with(&installed)),
            "{name}: {installed} not in the final image"
        );
    }
    // The final stage: distroless, non-root, labelled.
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    assert_eq!(
        lines[last_from], "FROM gcr.io/distroless/cc-debian12:nonroot",
        "{name}: final stage"
    );
    let final_stage = &lines[last_from..];
    let user = final_stage
        .iter()
        .rfind(|l| l.starts_with("USER "))
        .unwrap_or_else(|| panic!("{name}: no USER in the final stage"));
    let uid = user["USER ".len()..].split(':').next().unwrap();
    assert_eq!(uid, NONROOT.to_string(), "{name}: {user}");
    for label in ["title", "version", "source", "licenses", "revision"] {
        let key = format!("org.opencontainers.image.{label}=");
        assert!(
            final_stage
                .iter()
                .any(|l| l.starts_with("LABEL") && l.contains(&key)),
            "{name}: label {key}"
        );
    }
    let entry = final_stage
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .unwrap();
    assert!(
        entry.contains(&format!("/usr/local/bin/{}", binaries[0].0)),
        "{name}: {entry}"
    );
}

#[test]
fn the_dockerfiles_build_workspace_binaries_into_non_root_images() {
    check_dockerfile(
        "Dockerfile.operator",
        &[
            ("coherence-operator", "operator"),
            ("coherence-verifier", "release"),
        ],
    );
    check_dockerfile("Dockerfile.sidecar", &[("coherence-sidecar", "sidecar")]);
    // The chart runs the binaries where the operator image puts them.
    let rendered = template(&[]).unwrap();
    let objects = Objects::parse(rendered).unwrap_or_else(|e| panic!("{}", e.join("\n")));
    for (d, bin) in [
        ("coherence-operator", "coherence-operator"),
        ("coherence-verifier", "coherence-verifier"),
    ] {
        let command = objects.container(d).command.clone().unwrap_or_default();
        assert_eq!(command, [format!("/usr/local/bin/{bin}")], "{d}");
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for entry in ["target", ".tools", ".git", "fuzz/target", "node_modules"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore: {entry}"
        );
    }
}

// The PodMonitor of the injected sidecars (`monitoring.podMonitor`): off by default; when on, it
// scrapes the port the operator gives the sidecar container (`coh-metrics`) in every namespace.

fn pod_monitors(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "PodMonitor")
        .collect()
}

#[test]
fn there_is_no_pod_monitor_by_default() {
    let objects = template(&[]).unwrap();
    assert!(objects.iter().any(|o| o["kind"] == "Deployment"));
    assert!(pod_monitors(&objects).is_empty());
}

#[test]
fn the_pod_monitor_scrapes_the_sidecar_metrics_port_in_every_namespace() {
    let objects = template(&[
        "monitoring.podMonitor.enabled=true",
        "monitoring.podMonitor.interval=15s",
        "monitoring.podMonitor.labels.release=kube-prometheus-stack",
    ])
    .unwrap();
    let found = pod_monitors(&objects);
    assert_eq!(found.len(), 1, "{found:?}");
    let m = found[0];
    assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(m["metadata"]["name"], "coherence-sidecars");
    assert_eq!(m["metadata"]["namespace"], "coherence");
    assert_eq!(
        m["metadata"]["labels"]["release"], "kube-prometheus-stack",
        "{m}"
    );
    assert_eq!(
        m["spec"],
        serde_json::json!({
            "selector": {},
            "namespaceSelector": {"any": true},
            "podMetricsEndpoints": [{"port": "coh-metrics", "path": "/metrics", "interval": "15s"}]
        })
    );
    // The port the PodMonitor names is the one the webhook gives the sidecar container.
    assert_eq!(
        m["spec"]["podMetricsEndpoints"][0]["port"],
        coherence_operator::render::METRICS_PORT_NAME
    );
}

#[test]
fn a_bad_pod_monitor_value_is_refused_naming_it() {
    let e = template(&[
        "monitoring.podMonitor.enabled=true",
        "monitoring.podMonitor.interval=often",
    ])
    .unwrap_err();
    assert!(e.contains("podMonitor") && e.contains("interval"), "{e}");
    let e = template(&["monitoring.podMonitor.enable=true"]).unwrap_err();
    assert!(e.contains("podMonitor") && e.contains("enable"), "{e}");
}
