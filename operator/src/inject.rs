//! Sidecar injection, the pure part: from a Pod and the policies of its namespace to a JSON
//! Patch (RFC 6902) that adds the sidecar, or the reason not to. The webhook
//! ([`crate::webhook`]) and `coherence-operator inject` both call [`inject`]; nothing here
//! talks to a cluster.
//!
//! What the patch adds (see `docs/operator.md`, "Sidecar injection"):
//!
//! - the container [`CONTAINER_NAME`], first among the init containers with
//!   `restartPolicy: Always` (a native sidecar, Kubernetes ≥ 1.29), or last among the
//!   containers with [`InjectOptions::native_sidecars`] `false`;
//! - the volumes the rendered configuration expects ([`crate::render`]): the policy's
//!   ConfigMap at [`render::CONFIG_DIR`], the client certificate (and CA) at
//!   [`render::TLS_DIR`], each token Secret at `render::SECRETS_DIR/<source>/`, and an
//!   `emptyDir` outbox at [`render::OUTBOX_DIR`];
//! - the environment the file leaves to the pod: identity, signing key and algorithm, the
//!   JSONL line key, and the pod's requests when the policy prices from them;
//! - the annotations [`INJECTED_ANNOTATION`] (the policy) and
//!   [`owner::CONFIG_HASH_ANNOTATION`] (the hash of the configuration it was injected with).

use crate::crd::{CoherencePolicy, SignAlg};
use crate::error::Error;
use crate::{finops, owner, render, selector};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, KeyToPath, ObjectFieldSelector, Pod, PodSpec, ProjectedVolumeSource,
    ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretProjection, SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "coherence-sidecar";
/// Annotation (or label) that opts a pod out when it is `"false"`. The webhook's
/// `objectSelector` excludes pods with the label; the annotation is honoured by [`inject`].
pub const INJECT_ANNOTATION: &str = "coherence.dev/inject";
/// Annotation on an injected pod: the policy it was injected for.
pub const INJECTED_ANNOTATION: &str = "coherence.dev/injected";
/// Labels that name the workload, in order; then the controller owner, then the pod's name.
pub const WORKLOAD_LABELS: [&str; 2] = ["app.kubernetes.io/name", "app"];
/// Annotation `kubectl` uses to name a pod's main container.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Secret of the sidecar's client certificate when the policy names none
/// (`spec.verifier.clientCertSecretRef`): `tls.crt`, `tls.key` and `ca.crt`.
pub const DEFAULT_CLIENT_CERT_SECRET: &str = "coherence-sidecar-tls";
/// Repository of the sidecar image; the tag is this crate's version.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/coherence-dev/coherence-sidecar";
/// User and group the sidecar runs as (the image's non-root user).
pub const RUN_AS_USER: i64 = 65532;
/// Requests and limits of the sidecar: `(cpu, memory)`.
pub const REQUESTS: (&str, &str) = ("10m", "16Mi");
/// Limits of the sidecar: `(cpu, memory)`.
pub const LIMITS: (&str, &str) = ("100m", "32Mi");

/// Volume names the sidecar adds (token volumes are `coherence-token-<source index>`).
pub const CONFIG_VOLUME: &str = "coherence-config";
/// Volume of the client certificate and CA.
pub const TLS_VOLUME: &str = "coherence-tls";
/// Volume of the outbox.
pub const OUTBOX_VOLUME: &str = "coherence-outbox";
const TOKEN_VOLUME_PREFIX: &str = "coherence-token-";

/// `ghcr.io/coherence-dev/coherence-sidecar:<this crate's version>`.
pub fn default_image() -> String {
    format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// How to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    /// The sidecar image.
    pub image: String,
    /// `true` (default): a native sidecar (init container, `restartPolicy: Always`);
    /// `false`: a plain container, for clusters older than 1.29.
    pub native_sidecars: bool,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            image: default_image(),
            native_sidecars: true,
        }
    }
}

/// What [`inject`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pod gets the sidecar: apply the patch.
    Injected(Injection),
    /// The pod stays as it is.
    Skipped(Skip),
}

impl Outcome {
    /// The patch, when there is one.
    pub fn patch(&self) -> Option<&json_patch::Patch> {
        match self {
            Outcome::Injected(i) => Some(&i.patch),
            Outcome::Skipped(_) => None,
        }
    }
}

/// An injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// The policy injected for.
    pub policy: String,
    /// Other policies that select the pod too, not used (newer, or same age and later name).
    pub also_selected_by: Vec<String>,
    /// `WORKLOAD_NAME` as resolved from the pod.
    pub workload: String,
    /// SHA-256 of the rendered configuration (the pod's `coherence.dev/config-hash`).
    pub config_hash: String,
    /// JSON Patch against the Pod (or a pod template: the paths are the same).
    pub patch: json_patch::Patch,
}

impl Injection {
    /// When several policies select the pod: which was used and why.
    pub fn note(&self) -> Option<String> {
        (!self.also_selected_by.is_empty()).then(|| {
            format!(
                "policies {} also select this pod; {} (the oldest) was used",
                self.also_selected_by.join(", "),
                self.policy
            )
        })
    }
}

/// Why a pod is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The pod already has the sidecar (container name or annotation); never twice.
    AlreadyInjected,
    /// `coherence.dev/inject: "false"` (annotation or label).
    OptedOut,
    /// No policy of the pod's namespace selects it.
    NoPolicy,
}

impl Skip {
    /// Short, stable reason (also the webhook's audit annotation).
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::AlreadyInjected => "already injected",
            Skip::OptedOut => "opted out (coherence.dev/inject: \"false\")",
            Skip::NoPolicy => "no CoherencePolicy selects the pod",
        }
    }
}

/// The policy that selects a pod, and the others that do too.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection<'a> {
    /// The oldest selecting policy (by `creationTimestamp`, then name).
    pub policy: &'a CoherencePolicy,
    /// Names of the other selecting policies.
    pub others: Vec<String>,
}

/// The policy for a pod with `labels` in `namespace`: among `policies` of that namespace
/// (a policy without a namespace counts everywhere — a file given to the CLI) whose non-empty
/// selector matches, the oldest by `creationTimestamp` (missing counts as newest), then by
/// name. A selector that cannot be evaluated (an unknown operator) selects nothing.
pub fn select_policy<'a>(
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
    policies: &'a [CoherencePolicy],
) -> Option<Selection<'a>> {
    let mut matching: Vec<&CoherencePolicy> = policies
        .iter()
        .filter(|p| match (namespace, p.metadata.namespace.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .filter(|p| {
            let s = &p.spec.selector;
            let empty = s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && s.match_expressions.as_ref().is_none_or(Vec::is_empty);
            !empty && selector::matches(s, labels).unwrap_or(false)
        })
        .collect();
    matching.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let age = match (ta, tb) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        age.then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let (first, rest) = matching.split_first()?;
    Some(Selection {
        policy: first,
        others: rest
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect(),
    })
}

/// `true` when the pod already runs the sidecar or carries [`INJECTED_ANNOTATION`].
pub fn is_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    let named = pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == CONTAINER_NAME)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == CONTAINER_NAME)
    });
    annotated || named
}

/// `true` when the pod opts out with `coherence.dev/inject: "false"` (annotation or label).
pub fn is_opted_out(meta: &ObjectMeta) -> bool {
    let off = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref()
            .and_then(|m| m.get(INJECT_ANNOTATION))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    };
    off(&meta.annotations) || off(&meta.labels)
}

/// A name the sidecar accepts as its workload (lowercase letters, digits, `-`, `.`; ≤ 253).
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `name` without the `-<pod-template-hash>` a Deployment's ReplicaSet adds.
fn without_template_hash<'a>(name: &'a str, meta: &ObjectMeta) -> &'a str {
    meta.labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .and_then(|h| name.strip_suffix(h.as_str()))
        .and_then(|n| n.strip_suffix('-'))
        .filter(|n| !n.is_empty())
        .unwrap_or(name)
}

/// The pod's workload name (`WORKLOAD_NAME`), resolved at injection time: the first of the
/// labels [`WORKLOAD_LABELS`] that is a valid name; else the controller owner's name (a
/// ReplicaSet's without its `pod-template-hash` suffix, i.e. the Deployment's); else the
/// pod's `generateName` (trimmed the same way) or name.
pub fn workload_name(meta: &ObjectMeta) -> Option<String> {
    let labels = meta.labels.as_ref();
    for key in WORKLOAD_LABELS {
        if let Some(v) = labels.and_then(|l| l.get(key)).filter(|v| is_name(v)) {
            return Some(v.clone());
        }
    }
    let owner = meta.owner_references.as_ref().and_then(|refs| {
        refs.iter()
            .find(|r| r.controller == Some(true))
            .or_else(|| refs.first())
    });
    if let Some(o) = owner {
        let name = if o.kind == "ReplicaSet" {
            without_template_hash(&o.name, meta)
        } else {
            &o.name
        };
        if is_name(name) {
            return Some(name.to_string());
        }
    }
    if let Some(g) = meta.generate_name.as_deref() {
        let g = without_template_hash(g.trim_end_matches('-'), meta);
        if is_name(g) {
            return Some(g.to_string());
        }
    }
    meta.name.clone().filter(|n| is_name(n))
}

/// The container whose requests stand for the pod: the one named by
/// `kubectl.kubernetes.io/default-container`, else the first.
pub fn main_container<'a>(meta: &ObjectMeta, spec: &'a PodSpec) -> Option<&'a Container> {
    let named = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .and_then(|n| spec.containers.iter().find(|c| &c.name == n));
    named.or_else(|| spec.containers.first())
}

/// Decides and builds the injection of `pod` for `policies` (the pod's namespace is its
/// `metadata.namespace`; set it from the admission request when the object lacks it).
///
/// In order: a pod that already has the sidecar is skipped ([`Skip::AlreadyInjected`]), then
/// one that opts out, then one no policy selects. Errors: a pod without containers, a
/// workload name that cannot be resolved, a volume name the sidecar needs already in use, an
/// invalid policy (as [`render::validate`] says).
pub fn inject(
    pod: &Pod,
    policies: &[CoherencePolicy],
    opts: &InjectOptions,
) -> Result<Outcome, Error> {
    if is_injected(pod) {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    if is_opted_out(&pod.metadata) {
        return Ok(Outcome::Skipped(Skip::OptedOut));
    }
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let Some(sel) = select_policy(pod.metadata.namespace.as_deref(), labels, policies) else {
        return Ok(Outcome::Skipped(Skip::NoPolicy));
    };
    let policy = sel.policy;
    let name = policy
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Error::invalid("spec", "expected a pod spec"))?;
    let main = main_container(&pod.metadata, spec)
        .ok_or_else(|| Error::invalid("spec.containers", "expected at least one container"))?;
    let workload = workload_name(&pod.metadata).ok_or_else(|| {
        Error::invalid(
            "metadata",
            "cannot resolve WORKLOAD_NAME: set the label app.kubernetes.io/name or app to a Kubernetes name",
        )
    })?;
    let yaml = render::sidecar_config_yaml(&policy.spec)?;
    let config_hash = render::config_hash(&yaml);

    let volumes = volumes(policy, &name);
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if volumes.iter().any(|w| w.name == v.name) {
            return Err(Error::invalid(
                format!("spec.volumes[{i}].name"),
                format!("{:?} is reserved for the Coherence sidecar", v.name),
            ));
        }
    }
    let container = sidecar_container(policy, opts, &workload, main);

    let mut ops: Vec<Value> = Vec::new();
    let c = to_json(&container)?;
    if opts.native_sidecars {
        if spec.init_containers.is_some() {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": c}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [c]}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": c}));
    }
    if spec.volumes.is_some() {
        for v in &volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": to_json(v)?}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": to_json(&volumes)?}));
    }
    let annotations = [
        (INJECTED_ANNOTATION, name.clone()),
        (owner::CONFIG_HASH_ANNOTATION, config_hash.clone()),
    ];
    if pod.metadata.annotations.is_some() {
        for (k, v) in annotations {
            let path = format!("/metadata/annotations/{}", escape_pointer(k));
            ops.push(json!({"op": "add", "path": path, "value": v}));
        }
    } else {
        let map: BTreeMap<&str, String> = annotations.into_iter().collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(|e| Error::Serialize(e.to_string()))?;
    Ok(Outcome::Injected(Injection {
        policy: name,
        also_selected_by: sel.others,
        workload,
        config_hash,
        patch,
    }))
}

/// A JSON Pointer reference token (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Serialize(e.to_string()))
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn literal_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn request_of<'a>(c: &'a Container, resource: &str) -> Option<&'a Quantity> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(resource))
}

/// The sidecar's environment (design §7, `sidecar/src/config.rs`).
fn env(policy: &CoherencePolicy, workload: &str, main: &Container) -> Vec<EnvVar> {
    let spec = &policy.spec;
    let mut env = vec![
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_NAME", "metadata.name"),
        literal_env("WORKLOAD_NAME", workload),
        literal_env("PCS_SIGN_ALG", spec.pcs.alg.as_str()),
    ];
    let key_var = match spec.pcs.alg {
        SignAlg::Hmac => "PCS_HMAC_KEY",
        SignAlg::Ed25519 => "PCS_ED25519_KEY_B64",
    };
    env.push(secret_env(
        key_var,
        &spec.pcs.secret_ref.name,
        &spec.pcs.secret_ref.key,
    ));
    if let Some(k) = spec
        .sources
        .iter()
        .find_map(|s| s.jsonl.as_ref().and_then(|j| j.aes_key_secret_ref.as_ref()))
    {
        env.push(secret_env("COHERENCE_AES_KEY", &k.name, &k.key));
    }
    // The pod's requests, when the policy prices the pod from them: memory through the
    // downward API (bytes); CPU as written at injection time, in cores, because the downward
    // API gives only whole cores (rounded up) or millicores and the sidecar reads cores.
    // A request the main container does not set is left out (the downward API would say 0).
    let priced_from_requests = spec
        .finops
        .as_ref()
        .is_some_and(|f| f.cost_per_replica_hour_usd.is_none());
    if priced_from_requests {
        if let Some(cores) = request_of(main, "cpu")
            .and_then(|q| finops::parse_quantity(&q.0))
            .filter(|c| *c > 0.0)
        {
            env.push(literal_env("POD_CPU_REQUEST", cores.to_string()));
        }
        if request_of(main, "memory").is_some() {
            env.push(EnvVar {
                name: "POD_MEMORY_REQUEST".into(),
                value_from: Some(EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        container_name: Some(main.name.clone()),
                        resource: "requests.memory".into(),
                        divisor: Some(Quantity("1".into())),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    env
}

fn token_volume(i: usize) -> String {
    format!("{TOKEN_VOLUME_PREFIX}{i}")
}

/// The sidecar's volumes: configuration, certificates, outbox and one per token Secret.
fn volumes(policy: &CoherencePolicy, name: &str) -> Vec<Volume> {
    let spec = &policy.spec;
    let item = |k: &str| KeyToPath {
        key: k.into(),
        path: k.into(),
        mode: None,
    };
    let client = spec
        .verifier
        .client_cert_secret_ref
        .as_ref()
        .map_or(DEFAULT_CLIENT_CERT_SECRET, |r| r.name.as_str());
    let mut client_items = vec![item("tls.crt"), item("tls.key")];
    if spec.verifier.ca_secret_ref.is_none() {
        client_items.insert(0, item("ca.crt"));
    }
    let mut sources = vec![VolumeProjection {
        secret: Some(SecretProjection {
            name: client.into(),
            items: Some(client_items),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    }];
    if let Some(ca) = &spec.verifier.ca_secret_ref {
        sources.push(VolumeProjection {
            secret: Some(SecretProjection {
                name: ca.name.clone(),
                items: Some(vec![item("ca.crt")]),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        });
    }
    let mut v = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: render::config_map_name(name),
                items: Some(vec![item(render::CONFIG_KEY)]),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TLS_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: OUTBOX_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    for (i, s) in spec.sources.iter().enumerate() {
        if let Some(t) = s.http.as_ref().and_then(|h| h.token_secret_ref.as_ref()) {
            v.push(Volume {
                name: token_volume(i),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(t.name.clone()),
                    items: Some(vec![item(&t.key)]),
                    optional: Some(false),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }
    v
}

fn mounts(policy: &CoherencePolicy) -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let mut m = vec![
        mount(CONFIG_VOLUME, render::CONFIG_DIR, true),
        mount(TLS_VOLUME, render::TLS_DIR, true),
        mount(OUTBOX_VOLUME, render::OUTBOX_DIR, false),
    ];
    for (i, s) in policy.spec.sources.iter().enumerate() {
        if s.http
            .as_ref()
            .and_then(|h| h.token_secret_ref.as_ref())
            .is_some()
        {
            m.push(mount(
                &token_volume(i),
                &format!("{}/{}", render::SECRETS_DIR, s.name),
                true,
            ));
        }
    }
    m
}

/// The restricted security context of the sidecar (Pod Security Standards `restricted`).
pub fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn sidecar_container(
    policy: &CoherencePolicy,
    opts: &InjectOptions,
    workload: &str,
    main: &Container,
) -> Container {
    let q = |s: &str| Quantity(s.into());
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![
            "run".into(),
            "--config".into(),
            format!("{}/{}", render::CONFIG_DIR, render::CONFIG_KEY),
        ]),
        env: Some(env(policy, workload, main)),
        ports: Some(vec![ContainerPort {
            name: Some(render::METRICS_PORT_NAME.into()),
            container_port: render::METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), q(REQUESTS.0)),
                ("memory".into(), q(REQUESTS.1)),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), q(LIMITS.0)),
                ("memory".into(), q(LIMITS.1)),
            ])),
            ..ResourceRequirements::default()
        }),
        restart_policy: opts.native_sidecars.then(|| "Always".into()),
        security_context: Some(security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts(policy)),
        ..Container::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests (`coherence-operator inject`)
// ---------------------------------------------------------------------------------------------

/// A manifest document that cannot be injected: its 1-based index, the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index}{}: {field}: {message}", describe_doc(.kind, .name))]
pub struct DocumentError {
    /// 1-based index of the document in the file.
    pub index: usize,
    /// Its kind, when known.
    pub kind: Option<String>,
    /// Its name, when known.
    pub name: Option<String>,
    /// Path of the field (`spec.template.spec.containers`).
    pub field: String,
    /// What was expected.
    pub message: String,
}

/// A policy the injection can use: it has a name, and its spec renders
/// ([`render::validate`]).
pub fn check_policy(policy: &CoherencePolicy) -> Result<(), Error> {
    if policy.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(Error::MissingMetadata("name"));
    }
    render::validate(&policy.spec)
}

fn describe_doc(kind: &Option<String>, name: &Option<String>) -> String {
    match (kind, name) {
        (Some(k), Some(n)) => format!(" ({k} {n})"),
        (Some(k), None) => format!(" ({k})"),
        _ => String::new(),
    }
}

/// What happened to one document of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentReport {
    /// 1-based index of the document.
    pub index: usize,
    /// `Kind name` of the document.
    pub object: String,
    /// `injected (policy P)`, `skipped: <reason>`, or `passed through` for other kinds.
    pub result: String,
}

/// The injected manifest and what happened to each document.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestOutput {
    /// The documents, in order, as JSON values (write them as YAML).
    pub documents: Vec<Value>,
    /// One line per document.
    pub reports: Vec<DocumentReport>,
}

impl ManifestOutput {
    /// The documents as multi-document YAML.
    pub fn to_yaml(&self) -> Result<String, Error> {
        let mut out = String::new();
        for (i, d) in self.documents.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(
                &serde_yaml_ng::to_string(d).map_err(|e| Error::Serialize(e.to_string()))?,
            );
        }
        Ok(out)
    }
}

/// Where the pod template of a workload kind is (JSON Pointer); `None` for kinds without one.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn pointer_to_field(prefix: &str, field: &str) -> String {
    let p = prefix.trim_start_matches('/').replace('/', ".");
    match (p.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (false, true) => p,
        (false, false) => format!("{p}.{field}"),
    }
}

/// Injects every pod and pod template of a multi-document YAML manifest (Pod, Deployment,
/// StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, and the items of a `List`) through
/// [`inject`], as the webhook would; other kinds pass through unchanged. A workload's pod
/// template is seen as a pod of the workload's namespace, owned by the workload (so
/// `WORKLOAD_NAME` falls back to the workload's name). Check the policies first with
/// [`check_policy`]: an invalid one would otherwise fail the first document it selects.
pub fn inject_manifest(
    text: &str,
    policies: &[CoherencePolicy],
    opts: &InjectOptions,
) -> Result<ManifestOutput, DocumentError> {
    use serde::Deserialize as _;
    let mut out = ManifestOutput {
        documents: Vec::new(),
        reports: Vec::new(),
    };
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let doc = Value::deserialize(de).map_err(|e| DocumentError {
            index,
            kind: None,
            name: None,
            field: "(yaml)".into(),
            message: e.to_string(),
        })?;
        if doc.is_null() {
            continue;
        }
        let mut doc = doc;
        let report = inject_document(index, &mut doc, policies, opts)?;
        out.reports.extend(report);
        out.documents.push(doc);
    }
    Ok(out)
}

fn inject_document(
    index: usize,
    doc: &mut Value,
    policies: &[CoherencePolicy],
    opts: &InjectOptions,
) -> Result<Vec<DocumentReport>, DocumentError> {
    let kind = doc.get("kind").and_then(Value::as_str).map(str::to_string);
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let fail = |field: String, message: String| DocumentError {
        index,
        kind: kind.clone(),
        name: name.clone(),
        field,
        message,
    };
    let Some(k) = kind.clone() else {
        return Err(fail(
            "kind".into(),
            "expected a Kubernetes object with a kind".into(),
        ));
    };
    let object = format!("{k} {}", name.clone().unwrap_or_default());
    if k == "List" {
        let mut reports = Vec::new();
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for (j, item) in items.iter_mut().enumerate() {
                let r = inject_document(index, item, policies, opts).map_err(|mut e| {
                    e.field = format!("items[{j}].{}", e.field);
                    e
                })?;
                reports.extend(r);
            }
        }
        return Ok(reports);
    }
    let Some(ptr) = template_pointer(&k) else {
        return Ok(vec![DocumentReport {
            index,
            object,
            result: "passed through".into(),
        }]);
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(template) = doc.pointer_mut(ptr).filter(|t| t.is_object()) else {
        return Err(fail(
            pointer_to_field(ptr, ""),
            "expected a pod template".into(),
        ));
    };
    if let Some(t) = template.as_object_mut() {
        t.entry("metadata").or_insert_with(|| json!({}));
    }
    let mut pod_value = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": template.get("spec").cloned().unwrap_or(Value::Null),
    });
    if k != "Pod" {
        let meta = &mut pod_value["metadata"];
        if let Some(ns) = &namespace {
            meta["namespace"] = json!(ns);
        }
        if let Some(n) = &name {
            meta["ownerReferences"] = json!([{
                "apiVersion": api_version, "kind": k, "name": n, "uid": "", "controller": true,
            }]);
        }
    }
    let pod: Pod = serde_path_to_error::deserialize(&pod_value).map_err(|e| {
        let path = e.path().to_string();
        fail(pointer_to_field(ptr, &path), e.into_inner().to_string())
    })?;
    if pod.spec.is_none() {
        return Err(fail(
            pointer_to_field(ptr, "spec"),
            "expected a pod spec".into(),
        ));
    }
    // Policies are checked before the documents (see `inject_manifest`), so what remains
    // is about the pod.
    let result = match inject(&pod, policies, opts).map_err(|e| match e {
        Error::InvalidSpec { field, message } => fail(pointer_to_field(ptr, &field), message),
        other => fail(pointer_to_field(ptr, ""), other.to_string()),
    })? {
        Outcome::Injected(inj) => {
            json_patch::patch(template, &inj.patch)
                .map_err(|e| fail(pointer_to_field(ptr, ""), format!("patch: {e}")))?;
            match inj.note() {
                Some(n) => format!("injected (policy {}; {n})", inj.policy),
                None => format!("injected (policy {})", inj.policy),
            }
        }
        Outcome::Skipped(s) => format!("skipped: {}", s.reason()),
    };
    Ok(vec![DocumentReport {
        index,
        object,
        result,
    }])
}
