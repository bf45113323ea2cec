//! The mutating admission webhook that injects the sidecar (design §6: TLS on `:9443`,
//! `POST /mutate`).
//!
//! - [`router`]: `POST /mutate` takes an `admission.k8s.io/v1` `AdmissionReview` of a Pod and
//!   answers with the JSON Patch of [`inject::inject`] (`patchType: JSONPatch`), or allowed
//!   without a patch when the pod is skipped. A pod the webhook cannot inject (an invalid
//!   policy, a reserved volume name) is admitted unchanged with a warning: injection never
//!   blocks a workload. A body that is not an AdmissionReview of a Pod is a 400 with the reason.
//! - [`PolicySource`]: where the policies come from. `run` reads the watched policy store
//!   ([`StorePolicies`]) that the CoherencePolicy controller also reads; tests and the CLI use
//!   a fixed list ([`SharedPolicies`]).
//! - [`serve`]: the router over TLS (rustls with the `ring` provider, no client
//!   authentication: the API server calls it), from a cert-manager Secret mount
//!   ([`ReloadingCert`], which follows renewals) or a certificate generated at start
//!   ([`generate_serving_cert`], [`server_config`]).
//! - [`mutating_webhook_configuration`] and [`ca_bundle_patch`]: the
//!   `admissionregistration.k8s.io/v1` object and the patch that sets its `caBundle`.

use crate::crd::CoherencePolicy;
use crate::inject::{self, InjectOptions, Outcome};
use crate::packed::PackedPolicy;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Path of the webhook.
pub const MUTATE_PATH: &str = "/mutate";
/// Address the webhook listens on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9443";
/// Largest AdmissionReview accepted (a Pod is at most ~1.5 MiB in etcd).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Name of the MutatingWebhookConfiguration.
pub const CONFIGURATION_NAME: &str = "coherence-sidecar-injector";
/// Name of the webhook inside it.
pub const WEBHOOK_NAME: &str = "sidecar-injector.coherence.dev";
/// Default Service in front of the webhook (port 443 → the pod's 9443).
pub const DEFAULT_SERVICE: &str = "coherence-operator-webhook";
/// Default namespace of the operator.
pub const DEFAULT_NAMESPACE: &str = "coherence";

/// Where the webhook reads the policies of a namespace. The reconciler owns the data; the
/// webhook only reads it, on every review.
pub trait PolicySource: Send + Sync {
    /// The CoherencePolicies of `namespace`, as last seen.
    fn policies_in(&self, namespace: &str) -> Vec<CoherencePolicy>;

    /// The CoherencePolicies of `namespace` that may select a pod with `labels`: at least every
    /// one whose selector matches them (more is allowed; [`inject::select_policy`] decides).
    fn policies_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<CoherencePolicy> {
        let _ = labels;
        self.policies_in(namespace)
    }
}

/// A [`PolicySource`] in memory, shared with the reconciler (cheap to clone: one `Arc`).
#[derive(Debug, Clone, Default)]
pub struct SharedPolicies(pub Arc<RwLock<Vec<CoherencePolicy>>>);

impl SharedPolicies {
    /// A source holding `policies`.
    pub fn new(policies: Vec<CoherencePolicy>) -> Self {
        Self(Arc::new(RwLock::new(policies)))
    }

    /// Replaces every policy (after a relist).
    pub fn replace_all(&self, policies: Vec<CoherencePolicy>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = policies;
    }

    /// Adds `policy`, or replaces the one with its namespace and name.
    pub fn upsert(&self, policy: CoherencePolicy) {
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        let key = |p: &CoherencePolicy| (p.metadata.namespace.clone(), p.metadata.name.clone());
        match all.iter_mut().find(|p| key(p) == key(&policy)) {
            Some(slot) => *slot = policy,
            None => all.push(policy),
        }
    }

    /// Removes the policy `namespace/name`.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| {
                p.metadata.namespace.as_deref() != Some(namespace)
                    || p.metadata.name.as_deref() != Some(name)
            });
    }
}

impl PolicySource for SharedPolicies {
    fn policies_in(&self, namespace: &str) -> Vec<CoherencePolicy> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }
}

/// The watched CoherencePolicy store as a [`PolicySource`]: `run` keeps one reflector of the
/// policies, packed ([`PackedPolicy`]), for both the webhook and the policy controller. A
/// review unpacks only the policies of the pod's namespace whose packed selector matches the
/// pod's labels. A policy that cannot be read is not used for injection.
#[derive(Clone)]
pub struct StorePolicies(pub kube::runtime::reflector::Store<PackedPolicy>);

impl PolicySource for StorePolicies {
    fn policies_in(&self, namespace: &str) -> Vec<CoherencePolicy> {
        self.0
            .state_filter(|p| kube::Resource::meta(p).namespace.as_deref() == Some(namespace))
            .iter()
            .filter_map(|p| p.unpack().ok())
            .collect()
    }

    fn policies_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<CoherencePolicy> {
        self.0
            .state_filter(|p| {
                kube::Resource::meta(p).namespace.as_deref() == Some(namespace) && p.selects(labels)
            })
            .iter()
            .filter_map(|p| p.unpack().ok())
            .collect()
    }
}

#[derive(Clone)]
struct AppState {
    policies: Arc<dyn PolicySource>,
    options: Arc<InjectOptions>,
}

/// The webhook's routes: `POST /mutate`.
pub fn router(policies: Arc<dyn PolicySource>, options: InjectOptions) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState {
            policies,
            options: Arc::new(options),
        })
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

async fn mutate(State(state): State<AppState>, body: Bytes) -> Response {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("expected an AdmissionReview (JSON): {e}")),
    };
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return bad_request(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {} {}",
            review.types.api_version, review.types.kind
        ));
    }
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return bad_request("expected request in the AdmissionReview".into()),
    };
    match review_pod(&state, &req) {
        Ok(response) => axum::Json(review_json(response)).into_response(),
        Err(message) => bad_request(message),
    }
}

/// The AdmissionReview answering with `response`, as JSON. The patch is written base64, as
/// the API server reads `[]byte` fields (kube's own serialization writes an array of numbers).
pub fn review_json(response: AdmissionResponse) -> Value {
    use base64::Engine as _;
    let patch = response
        .patch
        .as_deref()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let mut v = serde_json::to_value(response.into_review()).unwrap_or_default();
    if let (Some(p), Some(r)) = (patch, v.get_mut("response")) {
        r["patch"] = Value::String(p);
    }
    v
}

/// The answer to one admission request: allowed, with a patch when injected; `Err` (a 400)
/// when a Pod CREATE carries no Pod.
fn review_pod(
    state: &AppState,
    req: &AdmissionRequest<DynamicObject>,
) -> Result<AdmissionResponse, String> {
    let allowed = AdmissionResponse::from(req);
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    if !is_pod || req.operation != Operation::Create || req.sub_resource.is_some() {
        return Ok(allowed);
    }
    let Some(object) = &req.object else {
        return Err("request.object: expected the Pod being created".into());
    };
    let mut pod: Pod = serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("request.object: expected a Pod: {e}"))?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .or_else(|| req.namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    pod.metadata.namespace = Some(namespace.clone());
    let policies = state.policies.policies_for(
        &namespace,
        pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
    );
    Ok(match inject::inject(&pod, &policies, &state.options) {
        Ok(Outcome::Injected(i)) => {
            tracing::info!(
                namespace, pod = %describe(&pod), policy = %i.policy, workload = %i.workload,
                "injecting the sidecar"
            );
            let note = i.note();
            match allowed.clone().with_patch(i.patch) {
                Ok(mut r) => {
                    r.warnings = note.map(|n| vec![n]);
                    r
                }
                Err(e) => warn(allowed, format!("patch not serialized: {e}")),
            }
        }
        Ok(Outcome::Skipped(skip)) => {
            tracing::debug!(namespace, pod = %describe(&pod), reason = skip.reason(), "not injected");
            allowed
        }
        Err(e) => {
            tracing::warn!(namespace, pod = %describe(&pod), error = %e, "not injected");
            warn(allowed, e.to_string())
        }
    })
}

fn warn(mut r: AdmissionResponse, message: String) -> AdmissionResponse {
    r.warnings = Some(vec![format!("coherence sidecar not injected: {message}")]);
    r
}

fn describe(pod: &Pod) -> String {
    pod.metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone().map(|g| format!("{g}*")))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A serving certificate or its configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM holds no usable certificate or key.
    #[error("{what}: {message}")]
    Pem {
        /// Which input (`tls.crt`, `tls.key`).
        what: String,
        /// What was expected.
        message: String,
    },
    /// rcgen refused to build a certificate.
    #[error("generate {what}: {source}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// The certificate and key do not make a configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A generated serving certificate (PEM): leaf, its key, and the CA that signed it (the
/// `caBundle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCert {
    /// The leaf certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// The CA certificate, for the MutatingWebhookConfiguration's `caBundle`.
    pub ca_pem: String,
}

/// DNS names the API server may use for `service` in `namespace`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A fresh CA and a serving certificate for the Service `service` in `namespace` (its DNS
/// names per [`service_dns_names`]), ECDSA P-256, valid one year (an hour back, for skew).
/// The operator generates one at start when no cert-manager Secret is mounted, and patches
/// the `caBundle` with [`ca_bundle_patch`].
pub fn generate_serving_cert(service: &str, namespace: &str) -> Result<ServingCert, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let now = time::OffsetDateTime::now_utc();
    let base = |cn: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "Coherence");
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(365);
        p
    };
    let err = |what| move |source| TlsError::Generate { what, source };
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err("ca key"))?;
    let mut ca = base(&format!("coherence-operator webhook CA {namespace}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(err("ca"))?;
    let issuer = Issuer::new(ca, ca_key);
    let names = service_dns_names(service, namespace);
    let mut leaf = base(&format!("{service}.{namespace}.svc"));
    leaf.subject_alt_names = names
        .iter()
        .map(|n| {
            n.as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(err("serving certificate name"))
        })
        .collect::<Result<_, _>>()?;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err("key"))?;
    let cert = leaf
        .signed_by(&key, &issuer)
        .map_err(err("serving certificate"))?;
    Ok(ServingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    })
}

/// The webhook's rustls configuration from a PEM chain and key: `ring` provider, TLS 1.2 and
/// 1.3, no client authentication, ALPN `http/1.1`.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = parse_pair(cert_pem, key_pem)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("expected the key of the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] from files read once; for a cert-manager Secret mount, which is renewed
/// in place, use [`ReloadingCert`].
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    server_config(&read(cert)?, &read(key)?)
}

/// The serving certificate from files that may change under the running server (a
/// cert-manager Secret mount is renewed in place): the files are read again at most every
/// `check_every`, at a handshake, and a new pair is used from then on; a pair that cannot be
/// used (half-written, key of another certificate) is logged and the previous one kept.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    check_every: Duration,
    state: std::sync::Mutex<LoadedCert>,
}

#[derive(Debug)]
struct LoadedCert {
    bytes: (Vec<u8>, Vec<u8>),
    key: Arc<rustls::sign::CertifiedKey>,
    checked: std::time::Instant,
}

type Pair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn parse_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<Pair, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "tls.crt".into(),
            message: format!("expected PEM certificates: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "tls.crt".into(),
            message: "expected a PEM certificate, found none".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "tls.key".into(),
        message: format!("expected a PEM private key: {e}"),
    })?;
    Ok((chain, key))
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let (chain, key) = parse_pair(cert_pem, key_pem)?;
    rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| TlsError::Config(format!("expected the key of the certificate: {e}")))
}

impl ReloadingCert {
    /// Reads `cert` and `key` (PEM) now; an error names the file or what is wrong.
    pub fn new(cert: &Path, key: &Path, check_every: Duration) -> Result<Arc<Self>, TlsError> {
        let bytes = Self::read(cert, key)?;
        let ck = certified_key(&bytes.0, &bytes.1)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            check_every,
            state: std::sync::Mutex::new(LoadedCert {
                bytes,
                key: Arc::new(ck),
                checked: std::time::Instant::now(),
            }),
        }))
    }

    fn read(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Ok((read(cert)?, read(key)?))
    }

    /// Reads the files again; `Ok(true)` when a new pair is in use, `Ok(false)` when they did
    /// not change, `Err` (the previous pair stays) when they cannot be used.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = Self::read(&self.cert, &self.key)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.checked = std::time::Instant::now();
        if state.bytes == bytes {
            return Ok(false);
        }
        let ck = certified_key(&bytes.0, &bytes.1)?;
        state.key = Arc::new(ck);
        state.bytes = bytes;
        Ok(true)
    }

    /// The webhook's rustls configuration serving this certificate (as [`server_config`]).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let due = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.checked.elapsed() >= self.check_every
        };
        if due {
            match self.reload() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert.display(), "webhook serving certificate reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "webhook serving certificate not reloaded; keeping the previous one")
                }
            }
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Some(state.key.clone())
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then lets open
/// connections finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "webhook TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "webhook TLS handshake timed out");
                        return;
                    }
                };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("webhook drain timed out; closing remaining connections");
    }
}

// ---------------------------------------------------------------------------------------------
// MutatingWebhookConfiguration
// ---------------------------------------------------------------------------------------------

/// What the MutatingWebhookConfiguration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfigOptions {
    /// Name of the configuration object.
    pub name: String,
    /// The Service in front of the webhook.
    pub service: String,
    /// Its namespace (the operator's; also excluded from injection).
    pub namespace: String,
    /// Its port (the Service maps it to the pod's 9443).
    pub port: i32,
    /// `Ignore` (default: pods are created without the sidecar while the webhook is down) or
    /// `Fail` (pod creation in selected namespaces waits for the webhook).
    pub failure_policy: String,
    /// The CA of the serving certificate (PEM), when known; cert-manager's CA injector can
    /// fill it instead.
    pub ca_bundle: Option<String>,
}

impl Default for WebhookConfigOptions {
    fn default() -> Self {
        Self {
            name: CONFIGURATION_NAME.into(),
            service: DEFAULT_SERVICE.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            port: 443,
            failure_policy: "Ignore".into(),
            ca_bundle: None,
        }
    }
}

/// Namespaces never injected: the control plane's and the operator's own (so the operator's
/// pods never wait for themselves).
pub fn excluded_namespaces(operator_namespace: &str) -> Vec<String> {
    let mut v: Vec<String> = ["kube-system", "kube-public", "kube-node-lease"]
        .map(String::from)
        .to_vec();
    if !v.iter().any(|n| n == operator_namespace) {
        v.push(operator_namespace.to_string());
    }
    v
}

/// The `admissionregistration.k8s.io/v1` MutatingWebhookConfiguration of the injector: Pods
/// on CREATE, `objectSelector` excluding `coherence.dev/inject: "false"`, the namespaces of
/// [`excluded_namespaces`] left out, `sideEffects: None`, `admissionReviewVersions: [v1]`,
/// `timeoutSeconds: 5`, `reinvocationPolicy: IfNeeded` (injection is idempotent).
pub fn mutating_webhook_configuration(opts: &WebhookConfigOptions) -> MutatingWebhookConfiguration {
    let not_in = |key: &str, values: Vec<String>| LabelSelectorRequirement {
        key: key.into(),
        operator: "NotIn".into(),
        values: Some(values),
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(opts.name.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    crate::owner::MANAGER.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                ca_bundle: opts
                    .ca_bundle
                    .as_ref()
                    .map(|pem| ByteString(pem.as_bytes().to_vec())),
                service: Some(ServiceReference {
                    name: opts.service.clone(),
                    namespace: opts.namespace.clone(),
                    path: Some(MUTATE_PATH.into()),
                    port: Some(opts.port),
                }),
                url: None,
            },
            failure_policy: Some(opts.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![not_in(
                    "kubernetes.io/metadata.name",
                    excluded_namespaces(&opts.namespace),
                )]),
                match_labels: None,
            }),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![not_in(
                    inject::INJECT_ANNOTATION,
                    vec!["false".into()],
                )]),
                match_labels: None,
            }),
            reinvocation_policy: Some("IfNeeded".into()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            match_conditions: None,
        }]),
    }
}

/// The patch that sets the `caBundle` of the injector's webhook in the configuration `name`
/// to `ca_pem`: a partial object keyed by webhook name, for a strategic merge patch
/// (`webhooks` merge on `name`) or a server-side apply with a field manager of its own
/// (e.g. `coherence-operator-ca`, so it does not drop fields another apply owns).
pub fn ca_bundle_patch(name: &str, ca_pem: &str) -> Value {
    let bundle = serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec())).unwrap_or_default();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{"name": WEBHOOK_NAME, "clientConfig": {"caBundle": bundle}}],
    })
}
