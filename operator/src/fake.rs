//! A stateful fake Kubernetes API server for reconcile tests and the benchmark: a
//! `tower::Service` that a `kube::Client` talks to (`kube::Client::new(fake.clone(), "default")`).
//!
//! It keeps every object as JSON by (group/version, plural, namespace, name) and answers the
//! requests the controllers make:
//!
//! - `GET` of one object and of a collection (namespaced or across namespaces), with
//!   `labelSelector` (`k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`);
//! - `POST` (create; `409 AlreadyExists`), `PUT` (replace; `409 Conflict` on a stale
//!   `metadata.resourceVersion`);
//! - `PATCH` as server-side apply (`application/apply-patch+yaml`, JSON body), JSON merge patch
//!   (strategic merge is treated the same) and JSON patch (`add`, `remove`, `replace`, `test`;
//!   a failed `test` is `422`), on the object or its `status` subresource;
//! - `DELETE`: while finalizers remain the object only gets `deletionTimestamp`; it disappears
//!   when the last finalizer is removed.
//!
//! - `GET …?watch=true`: a watch stream (`ADDED`, `MODIFIED`, `DELETED` events as JSON lines)
//!   from the requested `resourceVersion`, with `labelSelector`, ended after `timeoutSeconds`;
//!   a version older than the retained event log answers `410 Expired` in the stream, as a real
//!   API server does once etcd has compacted, so watchers relist;
//! - `Accept: …;as=PartialObjectMetadata…`: metadata-only objects, as `metadata_watcher` asks.
//!
//! `resourceVersion` is one counter for the whole store and moves only when an object really
//! changes (a no-op patch writes nothing, as on a real API server); `generation` moves when
//! anything outside `metadata` and `status` changes.
//!
//! Limits, chosen knowingly: server-side apply merges maps recursively and replaces lists
//! whole (no list-map keys), tracks per field manager only the last applied configuration
//! (fields it applied before and omits now are removed; conflicts between managers are never
//! reported), and ignores `dryRun`. There is no admission, no schema validation, no bookmarks
//! and no garbage collection through owner references.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// Where an object lives: `group/version` (`v1` for the core group), plural, namespace
/// (empty when cluster-scoped), name.
pub type Key = (String, String, String, String);

/// One write the fake accepted or refused: method, path (without query), and the patch type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `POST`, `PUT`, `PATCH`, `DELETE`.
    pub method: String,
    /// Request path.
    pub path: String,
    /// `apply`, `merge`, `json` for a `PATCH`; empty otherwise.
    pub patch: String,
    /// HTTP status of the answer.
    pub status: u16,
}

/// Events a watch can resume from; older ones are forgotten (a watch from before them gets
/// `410 Expired`).
const EVENT_LOG: usize = 200_000;

/// One change, for watches.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    key: Key,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    /// Changes, oldest first, at most [`EVENT_LOG`].
    events: VecDeque<Change>,
    /// The highest `resourceVersion` forgotten from `events`.
    forgotten: u64,
    /// Last configuration each field manager applied, per object and subresource.
    applied: HashMap<(Key, String, bool), Value>,
    resource_version: u64,
    uids: u64,
    writes: Vec<Write>,
    requests: u64,
    /// `GET`s (not watches) per resource plural.
    reads: HashMap<String, u64>,
}

/// The fake API server; clones share one store.
#[derive(Debug, Clone)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    /// The store's `resourceVersion` after the last write: wakes the watches.
    version: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self {
            store: Arc::default(),
            version: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

/// What [`FakeApi::seed`] puts in the store: `policies` CoherencePolicies `app-<i>`, 40 to a
/// namespace `ns-<i / 40>`, each selecting its own `deployments_per_policy` Deployments with
/// `pods_per_deployment` pods each (the first pod of a Deployment carries the injection
/// annotation). Every policy asks for an HPA, a PDB and a NetworkPolicy, in `enforce` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Population {
    /// CoherencePolicies.
    pub policies: usize,
    /// Deployments each policy selects.
    pub deployments_per_policy: usize,
    /// Pods of each Deployment.
    pub pods_per_deployment: usize,
}

impl Default for Population {
    /// 2,000 policies, one Deployment each with two pods.
    fn default() -> Self {
        Self {
            policies: 2000,
            deployments_per_policy: 1,
            pods_per_deployment: 2,
        }
    }
}

/// Policies per namespace in a [`Population`].
pub const POLICIES_PER_NAMESPACE: usize = 40;

/// The CoherencePolicy `name` in `ns` of a [`Population`]: it selects `app: <name>`.
pub fn population_policy(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "coherence.dev/v1alpha1", "kind": "CoherencePolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "sources": [{"name": "app", "prometheus": {"port": 9090, "path": "/metrics",
                "metrics": ["http_requests_total", "latency_p95_ms"], "interval": "15s"}}],
            "windows": ["5m", "1h"],
            "pcs": {"alg": "hmac", "secretRef": {"name": "coherence-pcs", "key": "PCS_HMAC_KEY"}, "epoch": "60s"},
            "protect": {
                "hpa": {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70},
                "pdb": {"minAvailable": 1},
                "networkPolicy": {"allowVerifierEgress": true},
            },
            "veto": {"mode": "enforce"},
        },
    })
}

/// The body of every answer: whole (`Full`) or a watch stream.
pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

/// A parsed request path.
#[derive(Debug, Clone)]
struct Target {
    group_version: String,
    plural: String,
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ((*v).to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => ((*ns).to_string(), rest),
        _ => (String::new(), rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_string()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_string()), true),
        _ => return None,
    };
    Some(Target {
        group_version: gv,
        plural: plural.to_string(),
        namespace,
        name,
        status,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

/// One requirement of a label selector string.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Splits a selector at commas outside parentheses.
fn split_selector(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn parse_selector(s: &str) -> Vec<Requirement> {
    let set = |v: &str| -> Vec<String> {
        v.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().to_string())
            .collect()
    };
    split_selector(s)
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .map(|r| {
            if let Some((k, v)) = r.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(v))
            } else if let Some((k, v)) = r.split_once(" in ") {
                Requirement::In(k.trim().into(), set(v))
            } else if let Some((k, v)) = r.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = r.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(r.into())
            }
        })
        .collect()
}

fn selects(reqs: &[Requirement], obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Removes from `obj` what `old` applied and `new` no longer does (maps recursively).
fn prune(obj: &mut Value, old: &Value, new: &Value) {
    let (Value::Object(o), Value::Object(old)) = (obj, old) else {
        return;
    };
    for (k, old_v) in old {
        match new.get(k) {
            None => {
                o.remove(k);
            }
            Some(new_v) => {
                if let Some(child) = o.get_mut(k) {
                    prune(child, old_v, new_v);
                }
            }
        }
    }
}

/// Applies the JSON patch `ops` to `doc`; `Err` names the failing operation.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("expected a JSON array of operations")?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        let (parent, last) = match path.rfind('/') {
            Some(i) => (
                &path[..i],
                path[i + 1..].replace("~1", "/").replace("~0", "~"),
            ),
            None => return Err(format!("{kind} {path}: expected a JSON pointer")),
        };
        match kind {
            "test" => {
                let found = doc.pointer(path).cloned().unwrap_or(Value::Null);
                if found != value {
                    return Err(format!("test {path}: expected {value}, found {found}"));
                }
            }
            "add" | "replace" => {
                let p = doc
                    .pointer_mut(parent)
                    .ok_or_else(|| format!("{kind} {path}: no parent"))?;
                match p {
                    Value::Object(m) => {
                        if kind == "replace" && !m.contains_key(&last) {
                            return Err(format!("replace {path}: no such member"));
                        }
                        m.insert(last, value);
                    }
                    Value::Array(a) if last == "-" => a.push(value),
                    Value::Array(a) => {
                        let i: usize = last
                            .parse()
                            .map_err(|_| format!("{kind} {path}: expected an index"))?;
                        if i > a.len() || (kind == "replace" && i >= a.len()) {
                            return Err(format!("{kind} {path}: index out of range"));
                        }
                        if kind == "replace" {
                            a[i] = value;
                        } else {
                            a.insert(i, value);
                        }
                    }
                    _ => return Err(format!("{kind} {path}: parent is not a container")),
                }
            }
            "remove" => {
                let p = doc
                    .pointer_mut(parent)
                    .ok_or_else(|| format!("remove {path}: no parent"))?;
                let removed = match p {
                    Value::Object(m) => m.remove(&last).is_some(),
                    Value::Array(a) => match last.parse::<usize>() {
                        Ok(i) if i < a.len() => {
                            a.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !removed {
                    return Err(format!("remove {path}: nothing there"));
                }
            }
            other => return Err(format!("{other}: unsupported operation")),
        }
    }
    Ok(())
}

fn status_body(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl FakeApi {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `obj` (any serializable Kubernetes object with `apiVersion`, `kind`,
    /// `metadata.name`), as if created; returns it as stored. `plural` is the resource name
    /// (`deployments`).
    pub fn insert<T: serde::Serialize>(&self, plural: &str, obj: &T) -> Value {
        let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
        let gv = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("v1")
            .to_string();
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut s = self.lock();
        s.stamp_new(&mut v);
        s.put((gv, plural.to_string(), ns, name), v.clone(), "ADDED");
        let rv = s.resource_version;
        drop(s);
        self.version.send_replace(rv);
        v
    }

    /// Stores the CoherencePolicy and FinOpsGate CRDs of `crds/`, established.
    pub fn seed_crds(&self) {
        for doc in [
            include_str!("../../crds/coherencepolicy.yaml"),
            include_str!("../../crds/finopsgate.yaml"),
        ] {
            let Ok(mut crd) = serde_yaml_ng::from_str::<Value>(doc) else {
                continue;
            };
            crd["status"] = json!({"conditions": [
                {"type": "Established", "status": "True"},
                {"type": "NamesAccepted", "status": "True"},
            ]});
            self.insert("customresourcedefinitions", &crd);
        }
    }

    /// Stores `population` (see [`Population`]); returns the `(namespace, name)` of each
    /// policy, in order.
    pub fn seed(&self, population: Population) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(population.policies);
        for i in 0..population.policies {
            let ns = format!("ns-{}", i / POLICIES_PER_NAMESPACE);
            let name = format!("app-{i}");
            for d in 0..population.deployments_per_policy {
                let deployment = if population.deployments_per_policy == 1 {
                    name.clone()
                } else {
                    format!("{name}-{d}")
                };
                self.insert(
                    "deployments",
                    &json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": deployment, "namespace": ns},
                        "spec": {"selector": {"matchLabels": {"app": name, "deployment": deployment}},
                            "template": {"metadata": {"labels": {"app": name, "deployment": deployment}},
                                "spec": {"containers": [{"name": "app", "image": "app:1",
                                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}]}}},
                    }),
                );
                for p in 0..population.pods_per_deployment {
                    let mut pod = json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": format!("{deployment}-{p}"), "namespace": ns,
                            "labels": {"app": name, "deployment": deployment}},
                        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
                    });
                    if p == 0 {
                        pod["metadata"]["annotations"] = json!({"coherence.dev/injected": name});
                    }
                    self.insert("pods", &pod);
                }
            }
            self.insert("coherencepolicies", &population_policy(&ns, &name));
            out.push((ns, name));
        }
        out
    }

    /// The stored object, if any.
    pub fn get(&self, group_version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(group_version.into(), plural.into(), ns.into(), name.into()))
            .cloned()
    }

    /// Names of the stored objects of a kind in a namespace, sorted.
    pub fn names(&self, group_version: &str, plural: &str, ns: &str) -> Vec<String> {
        self.lock()
            .objects
            .keys()
            .filter(|k| k.0 == group_version && k.1 == plural && k.2 == ns)
            .map(|k| k.3.clone())
            .collect()
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    /// Forgets the write log.
    pub fn clear_writes(&self) {
        self.lock().writes.clear();
    }

    /// Requests served so far (reads and writes).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// `GET`s of one object or a list (watches excluded) of a resource so far.
    pub fn reads_of(&self, plural: &str) -> u64 {
        self.lock().reads.get(plural).copied().unwrap_or(0)
    }

    /// Objects stored.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Size of the stored objects as compact JSON, bytes (what the store holds, before the
    /// overhead of its in-memory form).
    pub fn stored_bytes(&self) -> usize {
        let s = self.lock();
        s.objects
            .values()
            .chain(s.applied.values())
            .map(|v| v.to_string().len())
            .sum()
    }

    /// `true` when the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes a stored object directly (as another client would), bumping its version.
    pub fn modify(
        &self,
        group_version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) {
        let mut s = self.lock();
        let key = (group_version.into(), plural.into(), ns.into(), name.into());
        let Some(mut obj) = s.objects.get(&key).cloned() else {
            return;
        };
        let before = obj.clone();
        f(&mut obj);
        s.commit(key, &before, obj);
        let rv = s.resource_version;
        drop(s);
        self.version.send_replace(rv);
    }

    /// Serves one request.
    pub fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        ct: &str,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let mut s = self.lock();
        s.requests += 1;
        let before = s.resource_version;
        let resp = s.handle(method, path, query, ct, body);
        if s.resource_version != before {
            self.version.send_replace(s.resource_version);
        }
        if *method != Method::GET {
            let patch = match (method, ct) {
                (&Method::PATCH, c) if c.contains("apply-patch") => "apply",
                (&Method::PATCH, c) if c.contains("json-patch") => "json",
                (&Method::PATCH, _) => "merge",
                _ => "",
            };
            s.writes.push(Write {
                method: method.to_string(),
                path: path.to_string(),
                patch: patch.into(),
                status: resp.status().as_u16(),
            });
        }
        resp
    }
}

impl Store {
    /// Stores `obj` under `key` and logs the change.
    fn put(&mut self, key: Key, obj: Value, kind: &'static str) {
        self.log(key.clone(), obj.clone(), kind);
        self.objects.insert(key, obj);
    }

    /// Removes `key`; `last` is the object as it was, with the deleting `resourceVersion`.
    fn remove(&mut self, key: &Key, last: Value) {
        self.objects.remove(key);
        self.applied.retain(|(k, _, _), _| k != key);
        self.log(key.clone(), last, "DELETED");
    }

    fn log(&mut self, key: Key, object: Value, kind: &'static str) {
        if self.events.len() >= EVENT_LOG
            && let Some(old) = self.events.pop_front()
        {
            self.forgotten = old.rv;
        }
        self.events.push_back(Change {
            rv: self.resource_version,
            key,
            kind,
            object,
        });
    }

    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn stamp_new(&mut self, v: &mut Value) {
        self.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uids);
        let rv = self.next_rv();
        let has_spec = !spec_part(v).as_object().is_none_or(Map::is_empty);
        merge_patch(
            v,
            &json!({"metadata": {
                "uid": uid, "resourceVersion": rv,
                "creationTimestamp": "2025-01-01T00:00:00Z",
            }}),
        );
        if has_spec {
            merge_patch(v, &json!({"metadata": {"generation": 1}}));
        }
    }

    /// Stores `new` in place of `before` when it differs: bumps `resourceVersion`, and
    /// `generation` when the spec changed; removes the object when it is being deleted and
    /// has no finalizers left.
    fn commit(&mut self, key: Key, before: &Value, mut new: Value) -> Value {
        if &new == before {
            return new;
        }
        if spec_part(&new) != spec_part(before) {
            let g = before
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            merge_patch(&mut new, &json!({"metadata": {"generation": g + 1}}));
        }
        let rv = self.next_rv();
        merge_patch(&mut new, &json!({"metadata": {"resourceVersion": rv}}));
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            self.remove(&key, new.clone());
        } else {
            self.put(key, new.clone(), "MODIFIED");
        }
        new
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
        ct: &str,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let Some(t) = parse_path(path) else {
            return status_body(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {path}"),
            );
        };
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return status_body(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("body: {e}"),
                    );
                }
            }
        };
        if method == Method::GET {
            *self.reads.entry(t.plural.clone()).or_insert(0) += 1;
        }
        match (method, &t.name) {
            (&Method::GET, None) => self.list(&t, query),
            (&Method::GET, Some(name)) => match self.objects.get(&self.key(&t, name)) {
                Some(o) => respond(StatusCode::OK, o),
                None => self.not_found(&t, name),
            },
            (&Method::POST, None) => self.create(&t, body),
            (&Method::PUT, Some(name)) => self.replace(&t, name, body),
            (&Method::PATCH, Some(name)) => self.patch(&t, name, ct, query, body),
            (&Method::DELETE, Some(name)) => self.delete(&t, name),
            _ => status_body(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path} is not supported by the fake"),
            ),
        }
    }

    fn key(&self, t: &Target, name: &str) -> Key {
        (
            t.group_version.clone(),
            t.plural.clone(),
            t.namespace.clone(),
            name.to_string(),
        )
    }

    fn not_found(&self, t: &Target, name: &str) -> Response<Full<Bytes>> {
        status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", t.plural),
        )
    }

    fn list(&self, t: &Target, query: &str) -> Response<Full<Bytes>> {
        let reqs = query_param(query, "labelSelector")
            .map(|s| parse_selector(&s))
            .unwrap_or_default();
        // Keys sort by (group/version, plural, namespace, name): a namespaced list is a range.
        let from: Key = (
            t.group_version.clone(),
            t.plural.clone(),
            t.namespace.clone(),
            String::new(),
        );
        let items: Vec<Value> = self
            .objects
            .range(from..)
            .take_while(|(k, _)| {
                k.0 == t.group_version
                    && k.1 == t.plural
                    && (t.namespace.is_empty() || k.2 == t.namespace)
            })
            .filter(|(_, v)| selects(&reqs, v))
            .map(|(_, v)| v.clone())
            .collect();
        respond(
            StatusCode::OK,
            &json!({
                "apiVersion": t.group_version, "kind": "List",
                "metadata": {"resourceVersion": self.resource_version.to_string()},
                "items": items,
            }),
        )
    }

    fn create(&mut self, t: &Target, mut body: Value) -> Response<Full<Bytes>> {
        let Some(name) = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return status_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: required".into(),
            );
        };
        let key = self.key(t, &name);
        if self.objects.contains_key(&key) {
            return status_body(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.plural),
            );
        }
        if !t.namespace.is_empty() {
            merge_patch(&mut body, &json!({"metadata": {"namespace": t.namespace}}));
        }
        self.stamp_new(&mut body);
        self.put(key, body.clone(), "ADDED");
        respond(StatusCode::CREATED, &body)
    }

    fn stale(&self, stored: &Value, body: &Value) -> bool {
        match body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) => {
                stored
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    != Some(rv)
            }
            None => false,
        }
    }

    fn conflict(t: &Target, name: &str) -> Response<Full<Bytes>> {
        status_body(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.plural
            ),
        )
    }

    fn replace(&mut self, t: &Target, name: &str, body: Value) -> Response<Full<Bytes>> {
        let key = self.key(t, name);
        let Some(stored) = self.objects.get(&key).cloned() else {
            return self.not_found(t, name);
        };
        if self.stale(&stored, &body) {
            return Self::conflict(t, name);
        }
        let mut new = stored.clone();
        if t.status {
            merge_patch(
                &mut new,
                &json!({"status": body.get("status").cloned().unwrap_or(Value::Null)}),
            );
        } else {
            let status = stored.get("status").cloned();
            let keep = stored.get("metadata").cloned().unwrap_or(Value::Null);
            new = body;
            // Server-owned metadata survives a replace.
            for f in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ] {
                if let Some(v) = keep.get(f) {
                    merge_patch(&mut new, &json!({"metadata": {f: v}}));
                }
            }
            if let (Value::Object(m), Some(s)) = (&mut new, status) {
                m.insert("status".into(), s);
            }
        }
        let out = self.commit(key, &stored, new);
        respond(StatusCode::OK, &out)
    }

    fn patch(
        &mut self,
        t: &Target,
        name: &str,
        ct: &str,
        query: &str,
        body: Value,
    ) -> Response<Full<Bytes>> {
        let key = self.key(t, name);
        let stored = self.objects.get(&key).cloned();
        if ct.contains("apply-patch") {
            let manager = query_param(query, "fieldManager").unwrap_or_default();
            if manager.is_empty() {
                return status_body(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "PatchOptions.meta.k8s.io: fieldManager is required for apply requests".into(),
                );
            }
            if let Some(s) = &stored
                && self.stale(s, &body)
            {
                return Self::conflict(t, name);
            }
            let mut applied = body.clone();
            if let Value::Object(m) = &mut applied {
                if t.status {
                    m.retain(|k, _| k == "status");
                } else {
                    m.remove("status");
                    if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                        meta.remove("resourceVersion");
                    }
                }
            }
            let akey = (key.clone(), manager, t.status);
            let Some(stored) = stored else {
                if t.status {
                    return self.not_found(t, name);
                }
                let mut new = body;
                if let Value::Object(m) = &mut new {
                    m.remove("status");
                }
                merge_patch(
                    &mut new,
                    &json!({"metadata": {"name": name, "namespace": if t.namespace.is_empty() { Value::Null } else { Value::String(t.namespace.clone()) }, "resourceVersion": null}}),
                );
                self.stamp_new(&mut new);
                self.put(key, new.clone(), "ADDED");
                self.applied.insert(akey, applied);
                return respond(StatusCode::CREATED, &new);
            };
            let mut new = stored.clone();
            if let Some(old) = self.applied.get(&akey) {
                prune(&mut new, old, &applied);
            }
            merge_apply(&mut new, &applied);
            self.applied.insert(akey, applied);
            let out = self.commit(key, &stored, new);
            return respond(StatusCode::OK, &out);
        }
        let Some(stored) = stored else {
            return self.not_found(t, name);
        };
        let mut new = stored.clone();
        if ct.contains("json-patch") {
            if let Err(e) = json_patch(&mut new, &body) {
                return status_body(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e);
            }
        } else {
            if self.stale(&stored, &body) {
                return Self::conflict(t, name);
            }
            let mut body = body;
            if let Value::Object(m) = &mut body {
                if t.status {
                    m.retain(|k, _| k == "status");
                } else {
                    m.remove("status");
                }
                if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                    meta.remove("resourceVersion");
                }
            }
            merge_patch(&mut new, &body);
        }
        let out = self.commit(key, &stored, new);
        respond(StatusCode::OK, &out)
    }

    fn delete(&mut self, t: &Target, name: &str) -> Response<Full<Bytes>> {
        let key = self.key(t, name);
        let Some(stored) = self.objects.get(&key).cloned() else {
            return self.not_found(t, name);
        };
        let finalizers = stored
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if finalizers {
            if stored.pointer("/metadata/deletionTimestamp").is_some() {
                return respond(StatusCode::OK, &stored);
            }
            let mut new = stored.clone();
            merge_patch(
                &mut new,
                &json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:01Z"}}),
            );
            let out = self.commit(key, &stored, new);
            return respond(StatusCode::OK, &out);
        }
        let rv = self.next_rv();
        let mut last = stored.clone();
        merge_patch(&mut last, &json!({"metadata": {"resourceVersion": rv}}));
        self.remove(&key, last);
        respond(StatusCode::OK, &stored)
    }
}

/// Server-side apply's merge as the fake does it: maps merge recursively, anything else
/// (lists included) replaces; an applied `null` is ignored.
fn merge_apply(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                match t.get_mut(k) {
                    Some(child) if child.is_object() && v.is_object() => merge_apply(child, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

impl tower::Service<Request<kube::client::Body>> for FakeApi {
    type Response = Response<FakeBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(status_body(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("body: {e}"),
                    )
                    .map(BodyExt::boxed_unsync));
                }
            };
            Ok(this.serve(&parts, &bytes))
        })
    }
}

/// `true` when the client asked for metadata-only objects (`metadata_watcher`).
fn wants_metadata(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// `obj` reduced to its metadata, as `PartialObjectMetadata`.
fn metadata_only(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

impl FakeApi {
    /// Serves one request given its head and whole body: a watch when `watch=true|1`,
    /// otherwise [`FakeApi::handle`].
    pub fn serve(&self, parts: &http::request::Parts, body: &[u8]) -> Response<FakeBody> {
        let query = parts.uri.query().unwrap_or_default();
        let meta = wants_metadata(&parts.headers);
        if parts.method == Method::GET
            && matches!(query_param(query, "watch").as_deref(), Some("true" | "1"))
            && let Some(t) = parse_path(parts.uri.path())
        {
            self.lock().requests += 1;
            return self.watch(t, query, meta);
        }
        let ct = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let resp = self.handle(&parts.method, parts.uri.path(), query, ct, body);
        if meta && parts.method == Method::GET && resp.status() == StatusCode::OK {
            return Self::reduce_to_metadata(resp);
        }
        resp.map(BodyExt::boxed_unsync)
    }

    fn reduce_to_metadata(resp: Response<Full<Bytes>>) -> Response<FakeBody> {
        let (parts, body) = resp.into_parts();
        // A `Full` body is ready at once.
        let bytes = futures::FutureExt::now_or_never(body.collect())
            .and_then(Result::ok)
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
            return Response::from_parts(parts, Full::new(bytes).boxed_unsync());
        };
        if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
            for i in items.iter_mut() {
                *i = metadata_only(i);
            }
            v["kind"] = "PartialObjectMetadataList".into();
            v["apiVersion"] = "meta.k8s.io/v1".into();
        } else {
            v = metadata_only(&v);
        }
        Response::from_parts(parts, Full::new(Bytes::from(v.to_string())).boxed_unsync())
    }

    /// A watch stream of the objects `t` names, from the query's `resourceVersion` (none or
    /// `0`: every current object as `ADDED` first), until `timeoutSeconds` (default 300 s).
    fn watch(&self, t: Target, query: &str, meta: bool) -> Response<FakeBody> {
        let reqs = query_param(query, "labelSelector")
            .map(|s| parse_selector(&s))
            .unwrap_or_default();
        let timeout = query_param(query, "timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(300);
        let from = query_param(query, "resourceVersion")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let matches = move |key: &Key, obj: &Value| {
            key.0 == t.group_version
                && key.1 == t.plural
                && (t.namespace.is_empty() || key.2 == t.namespace)
                && t.name.as_ref().is_none_or(|n| &key.3 == n)
                && selects(&reqs, obj)
        };
        let line = move |kind: &str, obj: &Value| {
            let object = if meta {
                metadata_only(obj)
            } else {
                obj.clone()
            };
            let mut l = json!({"type": kind, "object": object}).to_string();
            l.push('\n');
            Bytes::from(l)
        };
        // What is already there: every current object (`from` 0) or the changes after `from`.
        let (pending, seen) = {
            let s = self.lock();
            if from == 0 {
                let now = s
                    .objects
                    .iter()
                    .filter(|(k, v)| matches(k, v))
                    .map(|(_, v)| line("ADDED", v))
                    .collect::<VecDeque<_>>();
                (now, s.resource_version)
            } else if from < s.forgotten {
                let gone = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", s.forgotten + 1),
                    "reason": "Expired", "code": 410,
                });
                let mut l = json!({"type": "ERROR", "object": gone}).to_string();
                l.push('\n');
                let body = Full::new(Bytes::from(l)).boxed_unsync();
                return Response::new(body);
            } else {
                (VecDeque::new(), from)
            }
        };
        let state = WatchState {
            pending,
            seen,
            store: self.store.clone(),
            version: self.version.subscribe(),
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(timeout),
            matches: Box::new(matches),
            line: Box::new(line),
        };
        let frames = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(l) = st.next_line() {
                    return Some((Ok(hyper::body::Frame::data(l)), st));
                }
                tokio::select! {
                    r = st.version.changed() => if r.is_err() { return None },
                    () = tokio::time::sleep_until(st.deadline) => return None,
                }
            }
        });
        Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(frames).boxed_unsync())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
    }
}

/// What a watch stream still has to send and where it is in the event log.
struct WatchState {
    pending: VecDeque<Bytes>,
    /// Changes up to this `resourceVersion` were looked at.
    seen: u64,
    store: Arc<Mutex<Store>>,
    version: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    matches: Box<Matches>,
    line: Box<Line>,
}

/// Whether a stored object belongs to a watch.
type Matches = dyn Fn(&Key, &Value) -> bool + Send;
/// An event as the line a watch sends.
type Line = dyn Fn(&str, &Value) -> Bytes + Send;

impl WatchState {
    /// The next event line: a pending one, else one of the changes after `seen`.
    fn next_line(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            // Marked seen before reading, so a write after the read wakes the stream.
            self.version.borrow_and_update();
            let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let start = s.events.partition_point(|c| c.rv <= self.seen);
            for c in s.events.range(start..) {
                if (self.matches)(&c.key, &c.object) {
                    self.pending.push_back((self.line)(c.kind, &c.object));
                }
            }
            self.seen = s.resource_version;
        }
        self.pending.pop_front()
    }
}

impl FakeApi {
    /// A `kube::Client` talking to this store.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use std::collections::BTreeMap;

    fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("a".to_string(), "1".to_string())])),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn selectors_versions_conflicts_and_finalizers() {
        let fake = FakeApi::new();
        let api: Api<ConfigMap> = Api::namespaced(fake.client(), "ns");
        api.create(
            &PostParams::default(),
            &cm("a", &[("app", "web"), ("tier", "x")]),
        )
        .await
        .unwrap();
        api.create(&PostParams::default(), &cm("b", &[("app", "db")]))
            .await
            .unwrap();
        let dup = api.create(&PostParams::default(), &cm("b", &[])).await;
        assert!(matches!(dup, Err(kube::Error::Api(e)) if e.code == 409));

        let names = |l: kube::core::ObjectList<ConfigMap>| {
            l.items
                .into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect::<Vec<_>>()
        };
        let sel = |s: &str| ListParams::default().labels(s);
        assert_eq!(names(api.list(&sel("app=web")).await.unwrap()), ["a"]);
        assert_eq!(
            names(api.list(&sel("app in (web,db)")).await.unwrap()),
            ["a", "b"]
        );
        assert_eq!(
            names(api.list(&sel("app notin (web),!tier")).await.unwrap()),
            ["b"]
        );
        assert_eq!(names(api.list(&sel("tier")).await.unwrap()), ["a"]);

        // A replace with a stale resourceVersion is refused.
        let mut a = api.get("a").await.unwrap();
        let rv = a.metadata.resource_version.clone().unwrap();
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
        a.metadata.resource_version = Some(rv.clone());
        let r = api.replace("a", &PostParams::default(), &a).await;
        assert!(matches!(r, Err(kube::Error::Api(e)) if e.code == 409));

        // A no-op apply keeps the version; dropping an applied field removes it.
        let pp = PatchParams::apply("m");
        let apply = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
        let c1 = api
            .patch("c", &pp, &Patch::Apply(apply(json!({"x": "1", "y": "2"}))))
            .await
            .unwrap();
        let c2 = api
            .patch("c", &pp, &Patch::Apply(apply(json!({"x": "1", "y": "2"}))))
            .await
            .unwrap();
        assert_eq!(c1.metadata.resource_version, c2.metadata.resource_version);
        let c3 = api
            .patch("c", &pp, &Patch::Apply(apply(json!({"x": "1"}))))
            .await
            .unwrap();
        assert_eq!(
            c3.data.unwrap(),
            BTreeMap::from([("x".to_string(), "1".to_string())])
        );

        // Deletion waits for the finalizers.
        api.patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["f"]}})),
        )
        .await
        .unwrap();
        api.delete("b", &DeleteParams::default()).await.unwrap();
        let b = api.get("b").await.unwrap();
        assert!(b.metadata.deletion_timestamp.is_some());
        api.patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        assert!(api.get_opt("b").await.unwrap().is_none());
    }

    /// Watches stream every change after the listed version, honour label selectors and
    /// metadata-only requests, and answer `410 Expired` from before the retained log.
    #[tokio::test]
    async fn watches_follow_changes_and_expire() {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        let fake = FakeApi::new();
        fake.insert("configmaps", &cm("a", &[("app", "x")]));
        fake.insert("configmaps", &cm("other", &[("app", "y")]));
        let api: Api<ConfigMap> = Api::namespaced(fake.client(), "ns");
        let (cms, writer) = reflector::store();
        tokio::spawn(
            watcher(api.clone(), watcher::Config::default().labels("app=x"))
                .reflect(writer)
                .for_each(|_| async {}),
        );
        let (metas, meta_writer) = reflector::store();
        tokio::spawn(
            watcher(
                Api::<kube::core::PartialObjectMeta<ConfigMap>>::namespaced(fake.client(), "ns"),
                watcher::Config::default(),
            )
            .reflect(meta_writer)
            .for_each(|_| async {}),
        );
        cms.wait_until_ready().await.unwrap();
        metas.wait_until_ready().await.unwrap();
        let names = |s: &reflector::Store<ConfigMap>| {
            let mut n: Vec<String> = s.state().iter().map(|c| c.name_any()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&cms), ["a"]);

        api.create(&PostParams::default(), &cm("b", &[("app", "x")]))
            .await
            .unwrap();
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "2"}})),
        )
        .await
        .unwrap();
        api.delete("other", &DeleteParams::default()).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let a = cms.get(&reflector::ObjectRef::new("a").within("ns"));
            if names(&cms) == ["a", "b"]
                && a.is_some_and(|a| a.data.as_ref().unwrap()["a"] == "2")
                && metas.state().len() == 2
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{:?} {}",
                names(&cms),
                metas.state().len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Metadata only: the data never reaches a metadata watch.
        let m: Vec<_> = metas.state();
        assert!(m.iter().all(|p| p.metadata.name.is_some()));
        let listed = api.list_metadata(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items.len(), 2);
        let raw = fake.serve(
            &http::Request::get("/api/v1/namespaces/ns/configmaps/a")
                .header(
                    "accept",
                    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                )
                .body(())
                .unwrap()
                .into_parts()
                .0,
            b"",
        );
        let body = raw.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "PartialObjectMetadata");
        assert!(v.get("data").is_none(), "{v}");

        // A version older than the log: 410 in the stream.
        fake.lock().forgotten = 100;
        let gone = fake.serve(
            &http::Request::get("/api/v1/namespaces/ns/configmaps?watch=true&resourceVersion=3")
                .body(())
                .unwrap()
                .into_parts()
                .0,
            b"",
        );
        let body = gone.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
    }
}
