//! Helpers of the end-to-end tests: reach the cluster of `KUBECONFIG` (or say why not), run a
//! test in a namespace of its own that is deleted afterwards, and wait for a condition with a
//! timeout that names what was awaited and what was seen last.
//!
//! The tests assume Coherence is installed (CRDs, operator, verifier; see `e2e/README.md`).
//! Without a cluster [`cluster`] prints `e2e skipped: <reason>` and the test returns at once,
//! passing; with `COHERENCE_E2E_REQUIRED=1` the same reason fails the test instead.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{self, Condition as WaitCondition};
use kube::{Client, Config, Resource};
use rand::Rng;
use serde_json::Value;
use std::ffi::OsString;
use std::fmt::Debug;
use std::future::Future;
use std::io::Write;
use std::time::Duration;

/// Set to `1` (the cluster CI job) to fail instead of skipping when no cluster answers.
pub const REQUIRED_ENV: &str = "COHERENCE_E2E_REQUIRED";
/// Optional kubeconfig context to use instead of the current one.
pub const CONTEXT_ENV: &str = "COHERENCE_E2E_CONTEXT";
/// Set to keep the test namespaces (to look at what a failed test left).
pub const NO_CLEANUP_ENV: &str = "COHERENCE_E2E_NO_CLEANUP";
/// Label on every namespace the tests create (`kubectl delete ns -l coherence.dev/e2e`).
pub const NAMESPACE_LABEL: &str = "coherence.dev/e2e";
/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "coherence-e2e";
/// How long the API server has to answer before the cluster counts as absent.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the cluster in `KUBECONFIG`, or why there is none: `KUBECONFIG` unset, a file
/// it names missing, a kubeconfig that cannot be used, or an API server that does not answer
/// within [`PROBE_TIMEOUT`].
pub async fn connect() -> Result<Client, String> {
    connect_to(std::env::var_os("KUBECONFIG")).await
}

/// [`connect`] with the value of `KUBECONFIG` given: one path or a list, merged as kubectl does.
pub async fn connect_to(kubeconfig: Option<OsString>) -> Result<Client, String> {
    let paths = kubeconfig
        .filter(|p| !p.is_empty())
        .ok_or_else(|| "KUBECONFIG is not set".to_string())?;
    let mut merged: Option<Kubeconfig> = None;
    for path in std::env::split_paths(&paths) {
        if !path.is_file() {
            return Err(format!(
                "KUBECONFIG names {}, which does not exist",
                path.display()
            ));
        }
        let next = Kubeconfig::read_from(&path)
            .map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
        merged = Some(match merged {
            None => next,
            Some(m) => m
                .merge(next)
                .map_err(|e| format!("{} cannot be merged: {e}", path.display()))?,
        });
    }
    let kubeconfig = merged.ok_or_else(|| "KUBECONFIG names no file".to_string())?;
    // kube's client and this process share one rustls provider, ring (as in the operator).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = KubeConfigOptions {
        context: std::env::var(CONTEXT_ENV).ok().filter(|c| !c.is_empty()),
        ..KubeConfigOptions::default()
    };
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| format!("the kubeconfig cannot be used: {e}"))?;
    config.connect_timeout = Some(PROBE_TIMEOUT);
    let url = config.cluster_url.to_string();
    let client =
        Client::try_from(config).map_err(|e| format!("no client for the API server {url}: {e}"))?;
    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("the API server {url} does not answer: {e}")),
        Err(_) => Err(format!(
            "the API server {url} did not answer within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// `true` when `COHERENCE_E2E_REQUIRED` asks for a cluster.
pub fn required() -> bool {
    std::env::var(REQUIRED_ENV).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

/// The cluster's client, or `None` after printing `e2e skipped: <reason>` on standard error
/// (the calling test then returns and passes as skipped). With `COHERENCE_E2E_REQUIRED=1` a
/// missing cluster panics with the reason instead.
#[track_caller]
pub fn cluster() -> impl Future<Output = Option<Client>> {
    let caller = std::panic::Location::caller();
    async move {
        match connect().await {
            Ok(c) => Some(c),
            Err(reason) if required() => {
                panic!("e2e required ({REQUIRED_ENV}=1) but no cluster: {reason} (at {caller})")
            }
            Err(reason) => {
                // Straight to the process's stderr: libtest captures `eprintln!` of passing
                // tests, and a skip must be visible in a plain `cargo test`.
                let _ = writeln!(std::io::stderr().lock(), "e2e skipped: {reason}");
                None
            }
        }
    }
}

/// `len` random lowercase letters and digits (a DNS-label-safe suffix).
pub fn random_suffix(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

/// Runs `test` with a new namespace `coherence-e2e-<random>`, deleted afterwards whether the
/// test passed or panicked (unless `COHERENCE_E2E_NO_CLEANUP` is set); a panic of the test is
/// raised again after the cleanup.
pub async fn with_temp_ns<F, Fut>(client: &Client, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api: Api<Namespace> = Api::all(client.clone());
    let name = format!("coherence-e2e-{}", random_suffix(6));
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    if let Err(e) = api.create(&params, &ns).await {
        panic!("cannot create namespace {name}: {e}");
    }
    // Pods cannot be created before the namespace's default ServiceAccount exists.
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    let has_sa = |o: Option<&ServiceAccount>| o.is_some();
    let ready = tokio::time::timeout(
        Duration::from_secs(60),
        wait::await_condition(sa, "default", has_sa),
    )
    .await;
    // The test runs as a task so that its panic is caught, the namespace deleted, and the
    // panic raised again (its message was already printed by the hook, inside the task).
    let outcome: Result<(), Failure> = match ready {
        Ok(Ok(_)) => match tokio::spawn(test(name.clone())).await {
            Ok(()) => Ok(()),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => Err(Failure::Panicked(panic)),
                Err(e) => Err(Failure::Setup(format!("test task: {e}"))),
            },
        },
        Ok(Err(e)) => Err(Failure::Setup(format!("watching ServiceAccounts: {e}"))),
        Err(_) => Err(Failure::Setup("no default ServiceAccount after 60s".into())),
    };
    if std::env::var_os(NO_CLEANUP_ENV).is_some() {
        eprintln!("e2e: namespace {name} kept ({NO_CLEANUP_ENV} is set)");
    } else if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
        eprintln!("e2e: cannot delete namespace {name}: {e}");
    }
    match outcome {
        Ok(()) => {}
        Err(Failure::Panicked(panic)) => std::panic::resume_unwind(panic),
        Err(Failure::Setup(why)) => panic!("namespace {name}: {why}"),
    }
}

/// Why [`with_temp_ns`] fails.
enum Failure {
    /// The test panicked (the payload, to raise again).
    Panicked(Box<dyn std::any::Any + Send>),
    /// The namespace could not be prepared or the task could not be joined.
    Setup(String),
}

/// Waits up to `timeout` until `cond` holds for the object `name` (`None`: it does not exist)
/// and returns the object as then seen. On timeout it panics naming the object and quoting
/// its last `status`.
pub async fn await_condition<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    cond: impl WaitCondition<K>,
) -> Option<K>
where
    K: Resource + Clone + Debug + Send + serde::de::DeserializeOwned + serde::Serialize + 'static,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    match tokio::time::timeout(timeout, wait::await_condition(api.clone(), name, cond)).await {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => panic!("watching {kind} {name}: {e}"),
        Err(_) => {
            let last = match api.get_opt(name).await {
                Ok(Some(o)) => serde_json::to_value(&o)
                    .map(|v| v.get("status").cloned().unwrap_or(Value::Null).to_string())
                    .unwrap_or_default(),
                Ok(None) => "absent".into(),
                Err(e) => format!("unreadable: {e}"),
            };
            panic!(
                "{kind} {name}: condition not met within {}s; last status: {last}",
                timeout.as_secs()
            )
        }
    }
}

/// Polls `probe` every second until it returns `Some` or `timeout` passes; the panic message
/// says `what` was awaited and the last answer of `probe` (`Err` is "not yet, because").
pub async fn poll<T, P, Fut>(what: &str, timeout: Duration, mut probe: P) -> T
where
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(why) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {}s; last: {why}", timeout.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// The condition of `type_` among `conditions`.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `true` when the condition `type_` has `status` (`"True"`, `"False"`, `"Unknown"`).
pub fn has_condition(conditions: &[Condition], type_: &str, status: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == status)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn suffixes_are_dns_label_safe() {
        let s = random_suffix(6);
        assert_eq!(s.len(), 6);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(random_suffix(12), random_suffix(12));
    }

    #[test]
    fn conditions_are_found_by_type_and_status() {
        let c: Vec<Condition> = serde_json::from_value(serde_json::json!([
            {"type": "Ready", "status": "False", "reason": "AwaitingSignals", "message": "",
             "lastTransitionTime": "2025-01-01T00:00:00Z"},
        ]))
        .unwrap();
        assert!(has_condition(&c, "Ready", "False"));
        assert!(!has_condition(&c, "Ready", "True"));
        assert!(find_condition(&c, "Vetoed").is_none());
    }

    fn kubeconfig(dir: &std::path::Path, server: &str) -> OsString {
        let path = dir.join("config");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
                 clusters: [{{name: k, cluster: {{server: \"{server}\"}}}}]\n\
                 users: [{{name: u, user: {{token: t}}}}]\n\
                 contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
            ),
        )
        .unwrap();
        path.into_os_string()
    }

    #[tokio::test]
    async fn no_cluster_is_a_reason_not_a_hang() {
        let err = |r: Result<Client, String>| r.err().expect("no cluster here");
        assert_eq!(err(connect_to(None).await), "KUBECONFIG is not set");
        assert_eq!(
            err(connect_to(Some("".into())).await),
            "KUBECONFIG is not set"
        );
        let missing = err(connect_to(Some("/nonexistent/kubeconfig".into())).await);
        assert!(missing.contains("/nonexistent/kubeconfig"), "{missing}");
        assert!(missing.contains("does not exist"), "{missing}");

        // A port nobody listens on: refused at once, or at worst after the probe timeout.
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let path = kubeconfig(dir.path(), &format!("https://127.0.0.1:{port}"));
        let silent = err(connect_to(Some(path)).await);
        assert!(silent.contains(&format!("127.0.0.1:{port}")), "{silent}");
    }
}
