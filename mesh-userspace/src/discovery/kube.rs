//! Discovery from the Kubernetes API server: Services, EndpointSlices, Pods and Namespaces are
//! watched (kube-rs watchers: list, then watch from the list's resourceVersion, bookmarks, and a
//! fresh list after `410 Gone`), kept as slim copies, and turned into the same [`Registry`] the
//! standalone YAML mode builds — the routing engine cannot tell the two apart.
//!
//! The turning-into is [`build_registry`], a pure function of the watched state and the node
//! name; the only IO after it is locating this node's enrolled pods' cgroups and netns.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service as K8sService},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource, ResourceExt as _,
};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use super::sandbox::{LocateError, PodLocator};
pub use crate::registry::convert::{pod_info, service_info, PodInfo, ISTIO_INJECT};
use crate::registry::{Registry, Service};

/// Namespace label that enrolls every pod of the namespace (`enabled`) or keeps it out even
/// when `istio-injection=enabled` is also set (`disabled`).
pub const LABEL_MESH_INJECTION: &str = "mesh-injection";
/// Istio's label, honoured so a namespace already set up for Istio joins the mesh unchanged.
pub const LABEL_ISTIO_INJECTION: &str = "istio-injection";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

type Key = (String, String);

/// One resource kind's objects, with a resync buffer: a re-list (first start, `410 Gone`)
/// replaces the whole set at once when it completes, so objects deleted while the watch was
/// down disappear and nothing is half-listed.
#[derive(Debug)]
pub struct Store<T> {
    live: BTreeMap<Key, Arc<T>>,
    resync: Option<BTreeMap<Key, Arc<T>>>,
    synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store { live: BTreeMap::new(), resync: None, synced: false }
    }
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store { live: self.live.clone(), resync: None, synced: self.synced }
    }
}

impl<T> Store<T> {
    /// Whether the kind's first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The live objects, in (namespace, name) order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.live.values()
    }

    fn get(&self, key: &Key) -> Option<&Arc<T>> {
        self.live.get(key)
    }

    /// Test and fixture helper: puts an object in the live set directly.
    pub fn insert(&mut self, key: (&str, &str), value: T) {
        self.live.insert((key.0.to_owned(), key.1.to_owned()), Arc::new(value));
    }
}

/// The ready addresses of one EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceInfo {
    /// The Service the slice belongs to (its `kubernetes.io/service-name` label).
    pub service: String,
    /// The addresses of its endpoints that are ready (or whose readiness is not given).
    pub ready: Vec<Ipv4Addr>,
    /// The slice's TCP ports by name (what a selectorless service's ports are paired with).
    pub ports: Vec<(Option<String>, u16)>,
}

/// A Namespace's enrollment decision from its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceInfo {
    /// Its pods are enrolled unless a pod opts out (mesh or Istio injection label).
    pub enrolled: bool,
}

/// Everything watched, as slim copies.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Services, converted to registry services (VIP, ports, selector).
    pub services: Store<Service>,
    /// EndpointSlices: the endpoints of selectorless Services.
    pub slices: Store<SliceInfo>,
    /// Pods of the whole cluster (endpoints), and which of them run on this node.
    pub pods: Store<PodInfo>,
    /// Namespaces' enrollment labels.
    pub namespaces: Store<NamespaceInfo>,
}

impl ClusterState {
    /// Every watcher has completed its first list: before that a registry would be missing
    /// objects and routing would answer 503 for services that exist.
    pub fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.pods.synced && self.namespaces.synced
    }
}

/// A pod of this node that should be enrolled, waiting for its sandbox to be located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// Its index in the registry's workloads.
    pub index: usize,
    /// The pod's UID (its cgroup's name).
    pub uid: String,
    /// Its QoS class (`Guaranteed`, `Burstable`, `BestEffort`): the kubelet's cgroup parent.
    pub qos_class: Option<String>,
}

/// The registry the cluster state describes, as seen from `node`: all services (with the
/// EndpointSlices' ready addresses) and all running pods, and the pods of this node that the
/// mesh should enroll (their sandbox paths are filled in by [`attach_sandboxes`]).
pub fn build_registry(state: &ClusterState, node: &str) -> (Registry, Vec<LocalPod>) {
    let mut ready: BTreeMap<(&str, &str), BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let mut by_service: BTreeMap<(&str, &str), Vec<&SliceInfo>> = BTreeMap::new();
    for ((ns, _), slice) in &state.slices.live {
        ready.entry((ns.as_str(), slice.service.as_str())).or_default().extend(slice.ready.iter().copied());
        by_service.entry((ns.as_str(), slice.service.as_str())).or_default().push(slice);
    }
    let services = state
        .services
        .values()
        .map(|orig| {
            let key = (orig.namespace.as_str(), orig.name.as_str());
            let mut s = Service::clone(orig);
            s.ready_ips = Some(ready.remove(&key).unwrap_or_default());
            if s.selector.is_empty() {
                s.slice_endpoints = by_service
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .flat_map(|slice| {
                        slice.ready.iter().flat_map(|ip| {
                            slice.ports.iter().map(|(name, port)| (name.clone(), SocketAddrV4::new(*ip, *port)))
                        })
                    })
                    .collect();
                s.slice_endpoints.sort();
                s.slice_endpoints.dedup();
            }
            Arc::new(s)
        })
        .collect();
    let mut workloads = Vec::new();
    let mut local = Vec::new();
    for pod in state.pods.values() {
        let ns_enrolled =
            state.namespaces.get(&(String::new(), pod.workload.namespace.clone())).is_some_and(|n| n.enrolled);
        let mut w = pod.workload.clone();
        w.enroll = ns_enrolled && !pod.opted_out && !pod.host_network;
        if w.enroll && w.ip.is_some() && pod.node.as_deref() == Some(node) {
            local.push(LocalPod { index: workloads.len(), uid: pod.uid.clone(), qos_class: pod.qos_class.clone() });
        }
        workloads.push(Arc::new(w));
    }
    (Registry::new(services, workloads), local)
}

/// Fills in the cgroup and netns of this node's pods to enroll; returns those that could not be
/// located yet (sandbox still starting), to retry.
pub fn attach_sandboxes(
    registry: &mut Registry,
    local: &[LocalPod],
    locator: &dyn PodLocator,
) -> Vec<(String, LocateError)> {
    let mut pending = Vec::new();
    for pod in local {
        let Some(w) = registry.workloads.get_mut(pod.index) else { continue };
        match locator.locate(&pod.uid, pod.qos_class.as_deref()) {
            Ok(sandbox) => {
                let w = Arc::make_mut(w);
                w.cgroup = Some(sandbox.cgroup);
                w.netns = Some(sandbox.netns);
            }
            Err(e) => pending.push((format!("{}/{}", w.namespace, w.name), e)),
        }
    }
    pending
}

// ---- conversions from the API objects (nothing here trusts a field to be present) ----

/// A Namespace's enrollment: `mesh-injection` enabled/disabled, else Istio's `istio-injection`.
pub fn namespace_info(ns: &Namespace) -> NamespaceInfo {
    let labels = ns.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let enrolled = match label(LABEL_MESH_INJECTION) {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => label(LABEL_ISTIO_INJECTION) == Some("enabled"),
    };
    NamespaceInfo { enrolled }
}

/// An IPv4 EndpointSlice's Service, ready addresses and TCP ports; None for other address
/// types or a slice without its Service label.
pub fn slice_info(slice: &EndpointSlice) -> Option<SliceInfo> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    if slice.address_type != "IPv4" {
        return None;
    }
    let ready = slice
        .endpoints
        .iter()
        .flatten()
        // Kubernetes: a missing `ready` condition means ready.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .collect();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p.name.clone().filter(|n| !n.is_empty()), u16::try_from(p.port?).ok()?)))
        .collect();
    Some(SliceInfo { service, ready, ports })
}

// ---- the watchers ----

#[derive(Default)]
struct Shared {
    state: Mutex<ClusterState>,
    changed: Notify,
}

/// Runs `f` on state behind a mutex. A panic while holding the lock cannot leave a Store
/// half-updated in a way that matters more than stopping discovery would: keep going.
pub(super) fn locked<S, R>(m: &Mutex<S>, f: impl FnOnce(&mut S) -> R) -> R {
    let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// Options of the Kubernetes discovery.
#[derive(Clone)]
pub struct KubeOptions {
    /// This node's name (the DaemonSet passes `spec.nodeName` as `NODE_NAME`).
    pub node: String,
    /// How often pods of this node whose sandbox was not found yet are looked for again.
    pub retry: Duration,
}

/// Starts the watchers; the receiver sees `None` until every kind has been listed once, then
/// each distinct registry. Runs until the client's runtime stops.
pub fn spawn(
    client: Client,
    options: KubeOptions,
    locator: Arc<dyn PodLocator>,
) -> watch::Receiver<Option<Arc<Registry>>> {
    let shared = Arc::new(Shared::default());
    let w = |s: &Arc<Shared>| (s.clone(), s.clone());
    let (a, b) = w(&shared);
    tokio::spawn(watch_into(
        Api::<K8sService>::all(client.clone()),
        (),
        move |f| locked(&a.state, |s| f(&mut s.services)),
        move || b.changed.notify_one(),
        service_info,
    ));
    let (a, b) = w(&shared);
    tokio::spawn(watch_into(
        Api::<EndpointSlice>::all(client.clone()),
        (),
        move |f| locked(&a.state, |s| f(&mut s.slices)),
        move || b.changed.notify_one(),
        slice_info,
    ));
    let (a, b) = w(&shared);
    tokio::spawn(watch_into(
        Api::<Pod>::all(client.clone()),
        (),
        move |f| locked(&a.state, |s| f(&mut s.pods)),
        move || b.changed.notify_one(),
        pod_info,
    ));
    let (a, b) = w(&shared);
    tokio::spawn(watch_into(
        Api::<Namespace>::all(client),
        (),
        move |f| locked(&a.state, |s| f(&mut s.namespaces)),
        move || b.changed.notify_one(),
        |o| Some(namespace_info(o)),
    ));
    let (tx, rx) = watch::channel(None);
    tokio::spawn(publish(shared, options, locator, tx));
    rx
}

/// Keeps one [`Store`] equal to the API server's objects of one kind: `with_store` runs a change
/// on the store (under whatever lock holds it), `changed` is called after each change that
/// matters, `convert` keeps what the mesh needs of an object (`None`: not relevant, as if absent).
pub(super) async fn watch_into<K, T>(
    api: Api<K>,
    dynamic: K::DynamicType,
    with_store: impl Fn(&mut dyn FnMut(&mut Store<T>) -> bool) -> bool,
    changed: impl Fn(),
    convert: impl Fn(&K) -> Option<T>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    let kind = K::kind(&dynamic).into_owned();
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let mut apply = |store: &mut Store<T>| match &event {
            Ok(watcher::Event::Init) => {
                store.resync = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(o)) => {
                if let (Some(buf), Some(v)) = (store.resync.as_mut(), convert(o)) {
                    buf.insert(key(o), Arc::new(v));
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                store.live = store.resync.take().unwrap_or_default();
                store.synced = true;
                tracing::info!(%kind, objects = store.live.len(), "listed");
                true
            }
            Ok(watcher::Event::Apply(o)) => {
                match convert(o) {
                    Some(v) => store.live.insert(key(o), Arc::new(v)),
                    // An object that stopped being relevant (a pod that finished) is a deletion.
                    None => store.live.remove(&key(o)),
                };
                true
            }
            Ok(watcher::Event::Delete(o)) => store.live.remove(&key(o)).is_some(),
            Err(e) => {
                // The watcher retries with backoff and re-lists after 410 Gone by itself; the
                // last known objects stay in use meanwhile.
                tracing::warn!(%kind, error = %e, "Kubernetes watch error; retrying");
                false
            }
        };
        if with_store(&mut apply) {
            changed();
        }
    }
}

async fn publish(
    shared: Arc<Shared>,
    options: KubeOptions,
    locator: Arc<dyn PodLocator>,
    tx: watch::Sender<Option<Arc<Registry>>>,
) {
    let mut last_pending: Vec<(String, LocateError)> = Vec::new();
    loop {
        if last_pending.is_empty() {
            shared.changed.notified().await;
        } else {
            tokio::select! {
                _ = shared.changed.notified() => {}
                _ = tokio::time::sleep(options.retry) => {}
            }
        }
        let snapshot = locked(&shared.state, |s| s.synced().then(|| s.clone()));
        let Some(snapshot) = snapshot else { continue };
        let (mut registry, local) = build_registry(&snapshot, &options.node);
        let pending = attach_sandboxes(&mut registry, &local, locator.as_ref());
        for (pod, why) in &pending {
            if !last_pending.iter().any(|(p, w)| p == pod && w == why) {
                tracing::info!(%pod, reason = %why, "pod not enrolled yet; will retry");
            }
        }
        last_pending = pending;
        let unchanged = tx.borrow().as_deref() == Some(&registry);
        if !unchanged && tx.send(Some(Arc::new(registry))).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
