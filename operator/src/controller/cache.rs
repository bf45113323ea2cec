//! The watched caches the policy reconciler reads instead of listing: per namespace, for each
//! pod its labels and whether it was injected, and for each Deployment what the reconciler
//! reads of it — nothing else.
//!
//! A cache entry is a few small allocations of exactly the sizes needed, where a reflector
//! store of Kubernetes objects keeps the whole object model per item (an `ObjectMeta` with
//! every optional field, label maps as B-tree nodes sized for eleven entries, an
//! `ObjectRef` key of cloned strings): with 1,000 pods and 500 Deployments the two stores
//! were most of the operator's heap.
//!
//! A [`Writer`] follows a watch: `Apply`/`Delete` change one entry; a re-list (`Init`,
//! `InitApply`…, `InitDone`) is gathered aside and replaces the whole cache at `InitDone`, as
//! kube's reflector does, so a reader never sees half a list. The [`Cache`] is ready after the
//! first complete list; every waiter is woken then.

use super::Error;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// Labels as a sorted list of pairs: exactly as large as its contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The pairs, sorted by key.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// There is no label.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As the map the Kubernetes types hold.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    // A BTreeMap iterates in key order: the list comes out sorted.
    fn from(m: &BTreeMap<String, String>) -> Self {
        Labels(
            m.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

/// A label selector held compactly: `matchLabels` as sorted pairs (a map would take a B-tree
/// node sized for eleven pairs), `matchExpressions` as given. Deployments' selectors in the
/// cache and policies' selectors in the packed policy store ([`crate::packed`]) are held so.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    /// `matchLabels`.
    pub match_labels: Labels,
    /// `matchExpressions`.
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

impl From<&LabelSelector> for Selector {
    fn from(s: &LabelSelector) -> Self {
        Selector {
            match_labels: s
                .match_labels
                .as_ref()
                .map(Labels::from)
                .unwrap_or_default(),
            match_expressions: s.match_expressions.clone(),
        }
    }
}

impl Selector {
    /// As the Kubernetes type (no `matchLabels` when there is no pair).
    pub fn to_label_selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.to_map()),
            match_expressions: self.match_expressions.clone(),
        }
    }

    /// `true` when `labels` satisfy the selector ([`crate::selector::matches`]).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> Result<bool, crate::Error> {
        crate::selector::matches_parts(
            self.match_labels.pairs(),
            self.match_expressions.as_deref().unwrap_or_default(),
            |k| labels.get(k).map(String::as_str),
        )
    }
}

/// What the policy reconciler reads of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// The pod's labels (what a policy's selector is matched against).
    pub labels: Labels,
    /// It carries the annotation the injection webhook sets.
    pub injected: bool,
}

impl PodEntry {
    /// The entry of a pod's metadata.
    pub fn of(p: &PartialObjectMeta<Pod>) -> Self {
        PodEntry {
            labels: Labels::from(p.labels()),
            injected: super::policy::is_injected(&p.metadata),
        }
    }
}

/// What the policy reconciler reads of a Deployment: its selector and pod template labels
/// (the policy's targets and their protection objects), and `spec.paused` with our
/// `coherence.dev/paused-by` annotation (the veto).
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentEntry {
    /// `spec.selector`.
    pub selector: Selector,
    /// `spec.template.metadata.labels`.
    pub template_labels: Labels,
    /// `spec.paused`.
    pub paused: Option<bool>,
    /// The value of the `coherence.dev/paused-by` annotation.
    pub paused_by: Option<Box<str>>,
}

impl DeploymentEntry {
    /// The entry of a Deployment.
    pub fn of(d: &Deployment) -> Self {
        let spec = d.spec.as_ref();
        DeploymentEntry {
            selector: spec
                .map(|s| Selector::from(&s.selector))
                .unwrap_or_default(),
            template_labels: spec
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
                .map(Labels::from)
                .unwrap_or_default(),
            paused: spec.and_then(|s| s.paused),
            paused_by: d
                .annotations()
                .get(crate::owner::PAUSED_BY_ANNOTATION)
                .map(|v| v.as_str().into()),
        }
    }

    /// The Deployment `name` in `ns` as far as the entry knows it: what the reconciler reads
    /// (name, namespace, the paused-by annotation, selector, `paused`, template labels).
    pub fn to_deployment(&self, ns: &str, name: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                annotations: self.paused_by.as_ref().map(|v| {
                    BTreeMap::from([(
                        crate::owner::PAUSED_BY_ANNOTATION.to_string(),
                        v.to_string(),
                    )])
                }),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                selector: self.selector.to_label_selector(),
                paused: self.paused,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.template_labels.to_map()),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }
}

/// Namespace → object name → entry.
type Entries<T> = HashMap<Box<str>, HashMap<Box<str>, T>>;

/// The reading side: cheap to clone, shared by every reconcile.
pub struct Cache<T> {
    entries: Arc<RwLock<Entries<T>>>,
    ready: watch::Receiver<bool>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Cache {
            entries: self.entries.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// The writing side, fed by one watch.
pub struct Writer<K, T> {
    entries: Arc<RwLock<Entries<T>>>,
    ready: watch::Sender<bool>,
    // A re-list being gathered, swapped in at `InitDone`.
    relist: Option<Entries<T>>,
    entry: fn(&K) -> T,
}

/// A cache and the writer that fills it from watch events of `K`, each kept as `entry(obj)`.
pub fn cache<K, T>(entry: fn(&K) -> T) -> (Cache<T>, Writer<K, T>) {
    let entries = Arc::new(RwLock::new(HashMap::new()));
    let (tx, rx) = watch::channel(false);
    (
        Cache {
            entries: entries.clone(),
            ready: rx,
        },
        Writer {
            entries,
            ready: tx,
            relist: None,
            entry,
        },
    )
}

fn insert<T>(map: &mut Entries<T>, ns: &str, name: &str, v: T) {
    match map.get_mut(ns) {
        Some(m) => {
            m.insert(name.into(), v);
        }
        None => {
            map.insert(ns.into(), HashMap::from([(name.into(), v)]));
        }
    }
}

impl<K: ResourceExt, T> Writer<K, T> {
    /// Applies one watch event.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(o) => {
                let v = (self.entry)(o);
                let ns = o.namespace().unwrap_or_default();
                insert(&mut self.write(), &ns, &o.name_any(), v);
            }
            watcher::Event::Delete(o) => {
                let ns = o.namespace().unwrap_or_default();
                let mut map = self.write();
                if let Some(m) = map.get_mut(ns.as_str()) {
                    m.remove(o.name_any().as_str());
                    if m.is_empty() {
                        map.remove(ns.as_str());
                    }
                }
            }
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let v = (self.entry)(o);
                let ns = o.namespace().unwrap_or_default();
                insert(self.relist.get_or_insert_default(), &ns, &o.name_any(), v);
            }
            watcher::Event::InitDone => {
                let mut new = self.relist.take().unwrap_or_default();
                new.shrink_to_fit();
                for m in new.values_mut() {
                    m.shrink_to_fit();
                }
                *self.write() = new;
                self.ready.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries<T>> {
        // A panic while holding the lock leaves whole entries behind (each insert or remove
        // is one call): the map is still consistent.
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> Cache<T> {
    /// Waits for the first complete list (reads before it would see an empty cluster, and the
    /// reconciler would delete what it owns). `what` names the cache in the error when its
    /// watch has stopped.
    pub async fn ready(&self, what: &'static str) -> Result<(), Error> {
        let mut rx = self.ready.clone();
        rx.wait_for(|r| *r)
            .await
            .map(|_| ())
            .map_err(|_| Error::Cache(what))
    }

    /// Calls `f` with every entry of `ns` and its name.
    pub fn for_each_in(&self, ns: &str, mut f: impl FnMut(&str, &T)) {
        if let Some(m) = self.read().get(ns) {
            for (name, v) in m {
                f(name, v);
            }
        }
    }

    /// How many entries the cache holds.
    pub fn len(&self) -> usize {
        self.read().values().map(HashMap::len).sum()
    }

    // Poisoning leaves whole entries behind (see `Writer::write`): the map is still consistent.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries<T>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn pod(ns: &str, name: &str, app: &str, injected: bool) -> PartialObjectMeta<Pod> {
        let mut annotations = json!({"other": "x"});
        if injected {
            annotations[crate::inject::INJECTED_ANNOTATION] = json!("web");
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("u-{name}"),
                "labels": {"app": app, "pod-template-hash": "abc"}, "annotations": annotations,
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]}
        }))
        .unwrap()
    }

    fn names(c: &Cache<PodEntry>, ns: &str) -> Vec<String> {
        let mut v = Vec::new();
        c.for_each_in(ns, |n, _| v.push(n.to_string()));
        v.sort();
        v
    }

    #[test]
    fn labels_are_looked_up_by_key_and_convert_back_to_the_map() {
        let m: BTreeMap<String, String> = [("tier", "web"), ("app", "shop"), ("zone", "a")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let l = Labels::from(&m);
        assert_eq!(l.get("app"), Some("shop"));
        assert_eq!(l.get("zone"), Some("a"));
        assert_eq!(l.get("tier"), Some("web"));
        assert_eq!(l.get("missing"), None);
        assert_eq!(l.to_map(), m);
        assert_eq!(Labels::default().get("app"), None);
        assert!(Labels::default().is_empty() && !l.is_empty());
    }

    #[test]
    fn a_pod_entry_keeps_its_labels_and_whether_it_was_injected() {
        let e = PodEntry::of(&pod("demo", "a", "web", true));
        assert!(e.injected);
        assert_eq!(e.labels.get("app"), Some("web"));
        assert_eq!(e.labels.get("pod-template-hash"), Some("abc"));
        assert!(!PodEntry::of(&pod("demo", "b", "web", false)).injected);
    }

    #[test]
    fn the_deployment_entry_keeps_what_the_policy_reconciler_reads_and_nothing_else() {
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "demo", "uid": "u-1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {
                    "coherence.dev/paused-by": "coherencepolicy/web",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {
                "replicas": 3, "paused": true,
                "selector": {"matchLabels": {"app": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "a"}, "annotations": {"a": "b"}},
                    "spec": {
                        "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}],
                            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}],
                        "volumes": [{"name": "data", "emptyDir": {}}]
                    }
                }
            },
            "status": {"replicas": 3, "conditions": [{"type": "Available", "status": "True"}]}
        }))
        .unwrap();
        let back = DeploymentEntry::of(&d).to_deployment("demo", "web");
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {
                    "name": "web", "namespace": "demo",
                    "annotations": {"coherence.dev/paused-by": "coherencepolicy/web"}
                },
                "spec": {
                    "paused": true,
                    "selector": {"matchLabels": {"app": "web"},
                        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
                    "template": {"metadata": {"labels": {"app": "web", "tier": "a"}}}
                }
            })
        );
        // What the veto reads of it.
        let state = crate::controller::policy::deployment_state(&back, true);
        assert_eq!(
            (
                state.name.as_str(),
                state.paused,
                state.paused_by.as_deref()
            ),
            ("web", true, Some("coherencepolicy/web"))
        );
        // Without the annotation and `paused`, none comes back.
        let mut plain = d.clone();
        plain.metadata.annotations = None;
        plain.spec.as_mut().unwrap().paused = None;
        plain.spec.as_mut().unwrap().selector.match_labels = None;
        let back = DeploymentEntry::of(&plain).to_deployment("demo", "web");
        assert_eq!(back.metadata.annotations, None);
        let spec = back.spec.unwrap();
        assert_eq!(spec.paused, None);
        assert_eq!(
            spec.selector.match_labels, None,
            "no matchLabels stays none"
        );
        assert_eq!(
            spec.selector.match_expressions,
            d.spec.as_ref().unwrap().selector.match_expressions
        );
    }

    #[tokio::test]
    async fn applies_and_deletes_change_one_entry_and_a_relist_replaces_the_whole_cache() {
        let (c, mut w) = cache(PodEntry::of);
        // Not ready before the first complete list, however many objects arrived.
        w.apply(&watcher::Event::Init);
        w.apply(&watcher::Event::InitApply(pod("demo", "a", "web", true)));
        w.apply(&watcher::Event::InitApply(pod("demo", "b", "web", false)));
        w.apply(&watcher::Event::InitApply(pod("other", "c", "db", false)));
        assert!(c.is_empty(), "a list is swapped in whole at InitDone");
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.ready("pod").await }
        });
        let also_waiting = tokio::spawn({
            let c = c.clone();
            async move { c.ready("pod").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        w.apply(&watcher::Event::InitDone);
        // Every waiter is woken.
        waiting.await.unwrap().unwrap();
        also_waiting.await.unwrap().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(names(&c, "demo"), ["a", "b"]);
        assert_eq!(names(&c, "other"), ["c"]);

        // One object changes, one goes.
        w.apply(&watcher::Event::Apply(pod("demo", "b", "web", true)));
        w.apply(&watcher::Event::Delete(pod("other", "c", "db", false)));
        let mut injected = 0;
        c.for_each_in("demo", |_, p| injected += usize::from(p.injected));
        assert_eq!(injected, 2);
        assert!(names(&c, "other").is_empty());
        assert_eq!(c.len(), 2);

        // A re-list: until it is done the old contents stay; then what it did not list is gone.
        w.apply(&watcher::Event::Init);
        w.apply(&watcher::Event::InitApply(pod("demo", "d", "web", false)));
        assert_eq!(names(&c, "demo"), ["a", "b"]);
        w.apply(&watcher::Event::InitDone);
        assert_eq!(names(&c, "demo"), ["d"]);
        c.ready("pod").await.unwrap();
    }

    #[test]
    fn pods_are_counted_per_namespace_by_the_policy_selector() {
        let (pods, mut w) = cache(PodEntry::of);
        let (deployments, _dw) = cache(DeploymentEntry::of);
        w.apply(&watcher::Event::Init);
        for (ns, name, app, injected) in [
            ("demo", "a", "web", true),
            ("demo", "b", "web", false),
            ("demo", "c", "db", true),
            ("other", "d", "web", true),
        ] {
            w.apply(&watcher::Event::InitApply(pod(ns, name, app, injected)));
        }
        w.apply(&watcher::Event::InitDone);
        let caches = super::super::Caches { pods, deployments };
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        let web = sel(json!({"matchLabels": {"app": "web"}}));
        assert_eq!(caches.count_pods("demo", &web).unwrap(), (2, 1));
        assert_eq!(caches.count_pods("other", &web).unwrap(), (1, 1));
        assert_eq!(caches.count_pods("nowhere", &web).unwrap(), (0, 0));
        let not_web = sel(json!({"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": ["web"]},
            {"key": "pod-template-hash", "operator": "Exists"}]}));
        assert_eq!(caches.count_pods("demo", &not_web).unwrap(), (1, 1));
        let bad = sel(json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}));
        let err = caches.count_pods("demo", &bad).unwrap_err().to_string();
        assert!(err.contains("selector.matchExpressions[0]"), "{err}");
    }

    #[tokio::test]
    async fn a_cache_whose_watch_stopped_before_its_first_list_says_which() {
        let (c, w) = cache(PodEntry::of);
        drop(w);
        match c.ready("pod").await {
            Err(Error::Cache(what)) => assert_eq!(what, "pod"),
            other => panic!("expected Error::Cache(\"pod\"), got {other:?}"),
        }
    }
}
