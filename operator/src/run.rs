//! `coherence-operator run`: waits for the CRDs, takes the Lease, runs both controllers and
//! serves `/metrics` and `/healthz` until SIGTERM (or until the Lease is lost, which ends the
//! process with status 1 so the kubelet restarts it as a follower).
//!
//! Watches use `DeserializeGuard<T>` (policies through [`PackedPolicy`], which keeps them
//! compressed): a policy or gate the operator cannot parse (an older or newer schema, a
//! hand-edited object) becomes a counted `invalid_spec` error on that object instead of
//! stalling the whole watch.

use crate::alerts;
use crate::controller::verifier::HttpVerifier;
use crate::controller::{self, Context, Error, cache, gate, policy};
use crate::crd::{DEFAULT_VERIFIER_ENDPOINT, FinOpsGate};
use crate::lease::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::packed::PackedPolicy;
use crate::webhook;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DynamicObject;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::wait::Condition;
use kube::runtime::{WatchStreamExt, conditions, wait::await_condition, watcher};
use kube::{Api, ResourceExt};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Flags of `run`, each with an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The verifier's URL (`https://` needs the three TLS files).
    #[arg(long, env = "COHERENCE_VERIFIER_ENDPOINT", default_value = DEFAULT_VERIFIER_ENDPOINT)]
    pub verifier_endpoint: String,
    /// CA certificate the verifier's serving certificate must chain to.
    #[arg(long, env = "COHERENCE_TLS_CA")]
    pub verifier_ca: Option<PathBuf>,
    /// Client certificate presented to the verifier.
    #[arg(long, env = "COHERENCE_TLS_CERT")]
    pub verifier_cert: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long, env = "COHERENCE_TLS_KEY")]
    pub verifier_key: Option<PathBuf>,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "COHERENCE_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "coherence")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(
        long,
        env = "COHERENCE_LEASE_NAME",
        default_value = "coherence-operator"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease and in Events (the pod name; default the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Period of re-reading every object (the verifier's data changes without Kubernetes events).
    #[arg(long, env = "COHERENCE_RESYNC", default_value = "60s", value_parser = parse_duration)]
    pub resync: Duration,
    /// How long to wait for the CRDs to be established before giving up.
    #[arg(long, env = "COHERENCE_CRD_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub crd_timeout: Duration,
    /// Where the injection webhook listens (TLS, `POST /mutate`); every replica serves it.
    #[arg(long, env = "COHERENCE_WEBHOOK_LISTEN", default_value = webhook::DEFAULT_LISTEN)]
    pub webhook_listen: SocketAddr,
    /// The webhook's serving certificate (e.g. a cert-manager Secret mount, re-read when it is
    /// renewed). Without it a certificate is generated at start and the `caBundle` of the
    /// MutatingWebhookConfiguration is patched with its CA.
    #[arg(long, env = "COHERENCE_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The key of `--webhook-cert`.
    #[arg(long, env = "COHERENCE_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// The Service in front of the webhook (the generated certificate's DNS names).
    #[arg(long, env = "COHERENCE_WEBHOOK_SERVICE", default_value = webhook::DEFAULT_SERVICE)]
    pub webhook_service: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is patched.
    #[arg(long, env = "COHERENCE_WEBHOOK_CONFIGURATION", default_value = webhook::CONFIGURATION_NAME)]
    pub webhook_configuration: String,
    /// The sidecar image the webhook injects.
    #[arg(long, env = "COHERENCE_SIDECAR_IMAGE", default_value_t = crate::inject::default_image())]
    pub sidecar_image: String,
    /// Inject a native sidecar (Kubernetes ≥ 1.29); `false` injects a plain container.
    #[arg(long, env = "COHERENCE_NATIVE_SIDECARS", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecars: bool,
    /// Threads of the async runtime. One keeps the resident set smallest; the work is mostly
    /// waiting on the API server.
    #[arg(long, env = "COHERENCE_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Reconciles each controller runs at once. Each one in flight holds a request to the API
    /// server and its buffers: unbounded, a resync of 2,000 policies took about 800 MB.
    #[arg(long, env = "COHERENCE_RECONCILE_CONCURRENCY", default_value_t = DEFAULT_RECONCILE_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub reconcile_concurrency: u16,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::render::duration_ms(s)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("expected a duration like 30s, 5m or 1h, got {s:?}"))
}

/// Exit status for a bad configuration (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

/// Runs the operator; the process's exit status.
pub fn main(args: RunArgs) -> ExitCode {
    tracing_subscriber::fmt().json().with_target(false).init();
    // One process-wide rustls provider: kube's client and the verifier client both use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coherence-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

fn verifier(args: &RunArgs) -> Result<HttpVerifier, String> {
    let tls = match (&args.verifier_ca, &args.verifier_cert, &args.verifier_key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(coherence_verifier::tls::client_config(ca, cert, key).map_err(|e| e.to_string())?)
        }
        (None, None, None) if args.verifier_endpoint.starts_with("http://") => None,
        _ => {
            return Err(
                "--verifier-ca, --verifier-cert and --verifier-key: expected all three for an https:// verifier endpoint"
                    .into(),
            );
        }
    };
    HttpVerifier::new(&args.verifier_endpoint, tls).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let verifier = match verifier(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("coherence-operator: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coherence-operator: cannot configure the Kubernetes client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "coherence-operator".into());

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = match serve(args.metrics_listen, Arc::new(registry), stop_rx.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "coherence-operator: --metrics-listen {}: {e}",
                args.metrics_listen
            );
            return ExitCode::from(EX_USAGE);
        }
    };

    let (policies, policy_writer) = PolicyFeed::new();
    let hook = match start_webhook(
        &client,
        &args,
        policies.clone(),
        policy_writer,
        stop_rx.clone(),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("coherence-operator: {e}");
            let _ = stop_tx.send(true);
            let _ = server.await;
            return ExitCode::from(EX_USAGE);
        }
    };

    let code = lead(client, verifier, metrics, policies, &args, identity).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = hook.await;
    code
}

/// Starts the injection webhook on every replica: its policies are the store of
/// [`PolicyFeed`], filled by a watch of all CoherencePolicies (a malformed one is skipped,
/// not fatal); its certificate comes from files or is generated, in which case the
/// MutatingWebhookConfiguration's `caBundle` is patched.
async fn start_webhook(
    client: &kube::Client,
    args: &RunArgs,
    policies: PolicyFeed,
    writer: reflector::store::Writer<PackedPolicy>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let tls = match (&args.webhook_cert, &args.webhook_key) {
        (Some(cert), Some(key)) => webhook::ReloadingCert::new(cert, key, Duration::from_secs(60))
            .and_then(|c| c.server_config())
            .map_err(|e| format!("--webhook-cert/--webhook-key: {e}"))?,
        _ => {
            let generated =
                webhook::generate_serving_cert(&args.webhook_service, &args.lease_namespace)
                    .map_err(|e| format!("webhook certificate: {e}"))?;
            let patch = webhook::ca_bundle_patch(&args.webhook_configuration, &generated.ca_pem);
            let api: Api<
                k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
            > = Api::all(client.clone());
            // Its own field manager: the chart owns the rest of the object.
            let pp = kube::api::PatchParams::apply("coherence-operator-cabundle").force();
            match api
                .patch(
                    &args.webhook_configuration,
                    &pp,
                    &kube::api::Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(configuration = %args.webhook_configuration, "caBundle set")
                }
                Err(e) => tracing::warn!(
                    configuration = %args.webhook_configuration,
                    error = %e,
                    "caBundle not set; the API server will not trust the webhook until it is"
                ),
            }
            webhook::server_config(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())
                .map_err(|e| format!("webhook certificate: {e}"))?
        }
    };
    let listener = tokio::net::TcpListener::bind(args.webhook_listen)
        .await
        .map_err(|e| format!("--webhook-listen {}: {e}", args.webhook_listen))?;
    let options = crate::inject::InjectOptions {
        image: args.sidecar_image.clone(),
        native_sidecars: args.native_sidecars,
    };
    let app = webhook::router(
        Arc::new(webhook::StorePolicies(policies.store.clone())),
        options,
    );
    let watch_policies = follow_policies(client.clone(), writer, policies, stop.clone());
    let serve = webhook::serve(listener, tls, app, until(stop), Duration::from_secs(10));
    Ok(tokio::spawn(async move {
        tokio::join!(watch_policies, serve);
    }))
}

/// The one CoherencePolicy store of the process: the webhook reads it on every replica, and
/// the leader's policy controller reads it and is triggered by its changes (a second store
/// would hold every policy twice). Policies are kept packed ([`PackedPolicy`]).
#[derive(Clone)]
pub struct PolicyFeed {
    store: Store<PackedPolicy>,
    /// The policy controller's triggers, once it runs.
    subscriber: Arc<std::sync::Mutex<Option<PolicyTrigger>>>,
}

type PolicyTrigger = tokio::sync::mpsc::Sender<ObjectRef<PackedPolicy>>;

impl PolicyFeed {
    /// An empty feed and the writer [`follow_policies`] fills it with.
    pub fn new() -> (Self, reflector::store::Writer<PackedPolicy>) {
        let (store, writer) = reflector::store();
        let feed = Self {
            store,
            subscriber: Arc::default(),
        };
        (feed, writer)
    }

    fn subscriber(&self) -> std::sync::MutexGuard<'_, Option<PolicyTrigger>> {
        self.subscriber.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, every changed policy is sent to the returned stream; it starts with every
    /// policy the store holds (call once the store is ready).
    fn subscribe(&self) -> impl futures::Stream<Item = ObjectRef<PackedPolicy>> + Send + use<> {
        let (tx, rx) = tokio::sync::mpsc::channel(TRIGGER_BUFFER);
        *self.subscriber() = Some(tx);
        let now: Vec<_> = self
            .store
            .state()
            .iter()
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect();
        futures::stream::iter(now).chain(trigger_stream(rx))
    }
}

/// Keeps the store of `feed` equal to the cluster's CoherencePolicies until `stop`, and
/// passes each change on to the policy controller once it has subscribed.
async fn follow_policies(
    client: kube::Client,
    writer: reflector::store::Writer<PackedPolicy>,
    feed: PolicyFeed,
    mut stop: watch::Receiver<bool>,
) {
    // Each object is packed as it is read off the watch (`PackedPolicy`'s `Deserialize`).
    let api: Api<PackedPolicy> = Api::all(client);
    // Backs off (0.8 s doubling to 30 s) while the API server cannot be reached, instead of
    // retrying at once in a loop.
    let events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::pin!(events);
    loop {
        let next = tokio::select! {
            e = events.next() => e,
            _ = stop.wait_for(|s| *s) => return,
        };
        match next {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "policy watch; retrying"),
            Some(Ok(p)) => {
                if let Some(why) = p.invalid_reason() {
                    tracing::warn!(policy = %controller::object_key(&p), error = %why, "a CoherencePolicy that cannot be read is not used for injection");
                }
                let tx = feed.subscriber().clone();
                if let Some(tx) = tx
                    && tx.send(ObjectRef::from_obj(&p)).await.is_err()
                {
                    // The controller stopped (the lease was lost or the process is ending).
                    *feed.subscriber() = None;
                }
            }
        }
    }
}

/// Everything after the HTTP server is up: CRDs, Lease, controllers.
async fn lead(
    client: kube::Client,
    verifier: HttpVerifier,
    metrics: Arc<Metrics>,
    policies: PolicyFeed,
    args: &RunArgs,
    identity: String,
) -> ExitCode {
    let elector = Elector::new(
        client.clone(),
        LeaseConfig::new(&args.lease_name, &args.lease_namespace, &identity),
    );
    let ready = async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for name in [
            "coherencepolicies.coherence.dev",
            "finopsgates.coherence.dev",
        ] {
            let established = await_condition(crds.clone(), name, conditions::is_crd_established());
            match tokio::time::timeout(args.crd_timeout, established).await {
                Ok(Ok(_)) => tracing::info!(crd = name, "established"),
                Ok(Err(e)) => {
                    tracing::error!(crd = name, error = %e, "cannot watch the CRD");
                    return false;
                }
                Err(_) => {
                    tracing::error!(crd = name, timeout = ?args.crd_timeout, "CRD not established; install crds/*.yaml");
                    return false;
                }
            }
        }
        elector.acquire().await;
        true
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // SIGTERM while waiting for the CRDs or the Lease ends the process at once.
    tokio::select! {
        ok = ready => if !ok { return ExitCode::FAILURE },
        () = shutdown_signal() => return ExitCode::SUCCESS,
    }

    let mut ctx = Context::new(client.clone(), Arc::new(verifier), metrics, Some(identity));
    ctx.resync = args.resync;
    ctx.prometheus_rules = prometheus_rules_served(&crds).await;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let controllers = run_controllers(
        client,
        ctx,
        policies,
        args.reconcile_concurrency,
        shutdown_rx,
    );
    tokio::pin!(controllers);

    tokio::select! {
        lost = elector.hold() => {
            tracing::error!(error = %lost, "lost the lease; exiting");
            ExitCode::FAILURE
        }
        () = &mut controllers => {
            tracing::error!("controllers stopped");
            ExitCode::FAILURE
        }
        () = shutdown_signal() => {
            tracing::info!("SIGTERM: draining the controllers");
            let _ = shutdown_tx.send(true);
            controllers.await;
            elector.release().await;
            ExitCode::SUCCESS
        }
    }
}

/// `true` when the PrometheusRule CRD (`monitoring.coreos.com/v1`, the Prometheus Operator's)
/// is established. Looked up once: installing the Prometheus Operator later takes a restart of
/// the operator to get the rules.
async fn prometheus_rules_served(crds: &Api<CustomResourceDefinition>) -> bool {
    let served = match crds.get_opt(alerts::CRD_NAME).await {
        Ok(crd) => {
            conditions::is_crd_established().matches_object(crd.as_ref())
                && crd.is_some_and(|c| {
                    c.spec
                        .versions
                        .iter()
                        .any(|v| v.name == alerts::VERSION && v.served)
                })
        }
        Err(e) => {
            tracing::warn!(crd = alerts::CRD_NAME, error = %e, "cannot look the CRD up; no PrometheusRules");
            false
        }
    };
    tracing::info!(
        crd = alerts::CRD_NAME,
        served,
        "PrometheusRules per policy and gate"
    );
    served
}

// Written out so the bound can say `Sync`, which `graceful_shutdown_on` requires.
#[allow(clippy::manual_async_fn)]
fn until(mut rx: watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + Sync {
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The policies of `ns` whose selector matches `labels` (read from the packed selectors: no
/// policy is unpacked).
fn policies_selecting(
    store: &Store<PackedPolicy>,
    ns: Option<&str>,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<ObjectRef<PackedPolicy>> {
    store
        .state_filter(|p| p.namespace().as_deref() == ns && p.selects(labels))
        .iter()
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

async fn reconcile_policy(obj: Arc<PackedPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Unpacked for this reconcile only; the store keeps the packed form.
    let policy = obj.unpack()?;
    policy::reconcile(Arc::new(policy), ctx).await
}

fn policy_error(obj: Arc<PackedPolicy>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(policy::CONTROLLER, &controller::object_key(obj.as_ref()), e)
}

async fn reconcile_gate(
    obj: Arc<DeserializeGuard<FinOpsGate>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &obj.0 {
        Ok(g) => gate::reconcile(Arc::new(g.clone()), ctx).await,
        Err(invalid) => Err(crate::Error::invalid("object", invalid.error.clone()).into()),
    }
}

fn gate_error(obj: Arc<DeserializeGuard<FinOpsGate>>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(gate::CONTROLLER, &controller::object_key(obj.as_ref()), e)
}

/// Default of `--reconcile-concurrency`. Unbounded, a resync of thousands of objects opens a
/// connection to the API server per reconcile in flight, each with its buffers: at 2,000
/// policies that was about 800 MB of resident memory.
pub const DEFAULT_RECONCILE_CONCURRENCY: u16 = 16;

fn controller_config(concurrency: u16) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(concurrency)
}

/// Triggers waiting for a controller to take them; a full buffer holds the watch back.
const TRIGGER_BUFFER: usize = 1024;

/// The receiving end of a trigger channel, as the stream `Controller::reconcile_on` takes.
fn trigger_stream<K: kube::Resource + 'static>(
    rx: tokio::sync::mpsc::Receiver<ObjectRef<K>>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K::DynamicType: Send,
{
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

/// The gates of `d`'s namespace whose target is `d`.
fn gates_targeting(
    store: &Store<DeserializeGuard<FinOpsGate>>,
    d: &Deployment,
) -> Vec<ObjectRef<DeserializeGuard<FinOpsGate>>> {
    let (ns, name) = (d.namespace(), d.name_any());
    store
        .state()
        .iter()
        .filter(|g| g.namespace() == ns)
        .filter(|g| g.0.as_ref().is_ok_and(|g| g.spec.target_ref.name == name))
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// The pod template labels of `d` (what a policy's selector is matched against).
fn template_labels(d: &Deployment) -> std::collections::BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Runs both controllers until `stop`, `concurrency` reconciles each at once. Pods (metadata)
/// and Deployments are each watched once, into the compact caches of [`controller::Caches`]
/// ([`cache`]) that the reconcilers read instead of listing; every change of one
/// triggers the policies (and, for a Deployment, the gates) that refer to it. Policies come
/// from `feed` (its watch runs beside, in [`follow_policies`]).
pub async fn run_controllers(
    client: kube::Client,
    mut ctx: Context,
    feed: PolicyFeed,
    concurrency: u16,
    stop: watch::Receiver<bool>,
) {
    let (pod_cache, mut pod_writer) = cache::cache(cache::PodEntry::of);
    let (deploy_cache, mut deploy_writer) = cache::cache(cache::DeploymentEntry::of);
    ctx.caches = Some(controller::Caches {
        pods: pod_cache,
        deployments: deploy_cache,
    });
    let caches = ctx.caches.clone();
    let ctx = Arc::new(ctx);
    let (policy_tx, policy_rx) = tokio::sync::mpsc::channel(TRIGGER_BUFFER);
    let (gate_tx, gate_rx) = tokio::sync::mpsc::channel(TRIGGER_BUFFER);

    let managed =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=coherence-operator");
    // The feed's stream of changed policies, handed over once the stores are ready.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let policy_changes = futures::stream::once(ready_rx)
        .filter_map(|r| async move { r.ok() })
        .flatten();
    let policy_store = feed.store.clone();
    // The policy store is filled by the webhook's watch: no second watch of the policies.
    let policies = Controller::for_stream(futures::stream::pending(), policy_store.clone())
        .with_config(controller_config(concurrency));
    let policies = policies
        .owns(Api::<ConfigMap>::all(client.clone()), managed.clone())
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            managed.clone(),
        )
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            managed.clone(),
        )
        .owns(Api::<NetworkPolicy>::all(client.clone()), managed.clone());
    let rules = alerts::api_resource();
    let policies = if ctx.prometheus_rules {
        policies.owns_with(
            Api::<DynamicObject>::all_with(client.clone(), &rules),
            rules.clone(),
            managed.clone(),
        )
    } else {
        policies
    };
    let policies = policies
        // Pods come and go (injected or not), Deployments appear, change their template or
        // are paused by someone else: the caches' watches say which policies to reconcile.
        .reconcile_on(futures::stream::select(
            policy_changes,
            trigger_stream(policy_rx),
        ))
        .graceful_shutdown_on(until(stop.clone()))
        .run(reconcile_policy, policy_error, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "policy controller");
            }
        });

    let gates = Controller::new(
        Api::<DeserializeGuard<FinOpsGate>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(controller_config(concurrency));
    let gate_store = gates.store();
    let gates = if ctx.prometheus_rules {
        gates.owns_with(
            Api::<DynamicObject>::all_with(client.clone(), &rules),
            rules,
            managed,
        )
    } else {
        gates
    };
    let gates = gates
        .reconcile_on(trigger_stream(gate_rx))
        .graceful_shutdown_on(until(stop))
        .run(reconcile_gate, gate_error, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "gate controller");
            }
        });

    // Set when the controllers start; until then a trigger would wait for a reader that has
    // not started, and hold back the first list the controllers wait for.
    let started = Arc::new(AtomicBool::new(false));
    let pods = {
        let started = started.clone();
        let policy_store = policy_store.clone();
        let policy_tx = policy_tx.clone();
        let client = client.clone();
        async move {
            // `PartialObjectMeta<Pod>`: metadata-only lists and watches.
            let events = watcher(
                Api::<PartialObjectMeta<Pod>>::all(client),
                watcher::Config::default().any_semantic(),
            )
            .default_backoff()
            .inspect_ok(move |e| pod_writer.apply(e))
            .touched_objects();
            tokio::pin!(events);
            while let Some(e) = events.next().await {
                match e {
                    // Before the controllers start, nothing to trigger: they begin with every
                    // policy, once the caches hold their first list.
                    Ok(_) if !started.load(Ordering::Acquire) => {}
                    Ok(pod) => {
                        let refs = policies_selecting(
                            &policy_store,
                            pod.namespace().as_deref(),
                            pod.labels(),
                        );
                        for r in refs {
                            if policy_tx.send(r).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "pod watch; retrying"),
                }
            }
        }
    };
    let deployments = {
        let started = started.clone();
        async move {
            let events = watcher(
                Api::<Deployment>::all(client),
                watcher::Config::default().any_semantic(),
            )
            .default_backoff()
            .inspect_ok(move |e| deploy_writer.apply(e))
            .touched_objects();
            tokio::pin!(events);
            while let Some(e) = events.next().await {
                match e {
                    Ok(_) if !started.load(Ordering::Acquire) => {}
                    Ok(d) => {
                        let labels = template_labels(&d);
                        for r in
                            policies_selecting(&policy_store, d.namespace().as_deref(), &labels)
                        {
                            if policy_tx.send(r).await.is_err() {
                                return;
                            }
                        }
                        for r in gates_targeting(&gate_store, &d) {
                            if gate_tx.send(r).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "deployment watch; retrying"),
                }
            }
        }
    };
    // The controllers start once both caches hold their first list (and the policy store
    // its): a reconcile never waits for them.
    let controllers = async move {
        if let Some(c) = caches
            && let Err(e) = c.ready().await
        {
            tracing::error!(error = %e, "controllers not started");
            return;
        }
        if feed.store.wait_until_ready().await.is_err() {
            tracing::error!("controllers not started: the policy watch stopped");
            return;
        }
        // Every policy now in the store, then every change.
        started.store(true, Ordering::Release);
        let _ = ready_tx.send(feed.subscribe());
        futures::future::join(policies, gates).await;
    };
    let watches = futures::future::join(pods, deployments);
    tokio::pin!(controllers, watches);
    // The watches run as long as the controllers; they end only if both controllers stop.
    futures::future::select(controllers, watches).await;
}

/// The admin router: `/metrics` (Prometheus text) and `/healthz`.
pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(registry)
}

async fn metrics_text(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, app(registry))
            .with_graceful_shutdown(until(stop))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics server");
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn metrics_and_health_are_served() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.error("coherencepolicy", "kube");
        metrics.set_veto("demo", "web", Some("pause-rollout"));
        metrics.set_gate("demo", "web", Some(1.25), Some(2));
        let app = app(Arc::new(registry));
        let r = app
            .clone()
            .oneshot(
                axum::http::Request::get("/healthz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = app
            .oneshot(
                axum::http::Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        for line in [
            "coherence_reconcile_errors_total{controller=\"coherencepolicy\",reason=\"kube\"} 1",
            "coherence_veto_active{namespace=\"demo\",policy=\"web\",action=\"pause-rollout\"} 1",
            "coherence_finops_fti{namespace=\"demo\",gate=\"web\"} 1.25",
            "coherence_finops_grade{namespace=\"demo\",gate=\"web\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    /// Every policy of a 2,000-policy population reaches its reconciled status through
    /// `run_controllers`, the reconcilers reading pods and Deployments from the caches: each
    /// kind is listed through the API by its one watch, not once per reconcile.
    #[cfg(feature = "fake")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_policies_converge_through_the_caches() {
        use crate::controller::verifier::StaticVerifier;
        use crate::fake::{FakeApi, Population};
        let fake = FakeApi::new();
        let names = fake.seed(Population::default());
        assert_eq!(names.len(), 2000);
        let ctx = Context::new(
            fake.client(),
            Arc::new(StaticVerifier::new()),
            Arc::new(Metrics::default()),
            None,
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let (feed, writer) = PolicyFeed::new();
        let follow = tokio::spawn(follow_policies(
            fake.client(),
            writer,
            feed.clone(),
            stop_rx.clone(),
        ));
        let controllers = tokio::spawn(run_controllers(
            fake.client(),
            ctx,
            feed,
            DEFAULT_RECONCILE_CONCURRENCY,
            stop_rx,
        ));
        // Reconciled: status written for this generation, pods counted from the pod cache.
        let reconciled = |p: &serde_json::Value| {
            p["status"]["observedGeneration"] == p["metadata"]["generation"]
                && p["status"]["matchedPods"] == 2
                && p["status"]["injectedPods"] == 1
        };
        let policy = |ns: &str, name: &str| {
            fake.get("coherence.dev/v1alpha1", "coherencepolicies", ns, name)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let pending: Vec<_> = names
                .iter()
                .filter(|(ns, name)| !policy(ns, name).is_some_and(|p| reconciled(&p)))
                .collect();
            if pending.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} policies not reconciled, e.g. {:?}",
                pending.len(),
                names.len(),
                policy(&pending[0].0, &pending[0].1)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // One list per watch (the fake does not page), a relist at most: never per reconcile.
        // The policies are watched once, for the webhook and the controller; a policy is read
        // again only before its finalizer is added (by the first trigger, and by a trigger
        // holding a copy from before).
        let reads = fake.reads_of("coherencepolicies");
        assert!(
            (1..=2 * names.len() as u64).contains(&reads),
            "policies read {reads} times through the API"
        );
        for plural in ["pods", "deployments"] {
            let reads = fake.reads_of(plural);
            assert!(
                (1..=2).contains(&reads),
                "{plural} read {reads} times through the API"
            );
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(60), controllers)
            .await
            .expect("the controllers stop on shutdown")
            .unwrap();
        follow.await.unwrap();
    }

    #[tokio::test]
    async fn the_policy_watch_backs_off_while_the_api_server_is_gone() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let gone = tower::service_fn(move |_: http::Request<kube::client::Body>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async {
                Err::<http::Response<http_body_util::Full<bytes::Bytes>>, _>(std::io::Error::other(
                    "connection refused",
                ))
            }
        });
        let client = kube::Client::new(gone, "default");
        let (stop_tx, stop_rx) = watch::channel(false);
        let (feed, writer) = PolicyFeed::new();
        let follow = tokio::spawn(follow_policies(client, writer, feed, stop_rx));
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), follow)
            .await
            .expect("the watch stops on shutdown")
            .unwrap();
        // Without a backoff the watch retries at once, thousands of times in 2 s.
        let n = calls.load(Ordering::Relaxed);
        assert!((1..=6).contains(&n), "{n} requests in 2 s");
    }

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn runtime_threads_and_concurrency_are_flags_with_small_defaults() {
        use clap::Parser as _;
        let f = Flags::try_parse_from(["run"]).unwrap();
        assert_eq!(
            (f.run.worker_threads, f.run.reconcile_concurrency),
            (1, DEFAULT_RECONCILE_CONCURRENCY)
        );
        let f = Flags::try_parse_from([
            "run",
            "--worker-threads",
            "2",
            "--reconcile-concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!((f.run.worker_threads, f.run.reconcile_concurrency), (2, 4));
        for (flag, value) in [
            ("--worker-threads", "0"),
            ("--reconcile-concurrency", "0"),
            ("--worker-threads", "many"),
        ] {
            let e = Flags::try_parse_from(["run", flag, value])
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn durations_parse_like_the_crds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }
}
