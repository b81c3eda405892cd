//! The node reconciler: makes the node match a registry and a routing config (routes compiled,
//! service VIPs in the kernel, this node's pods enrolled, NodePort and Gateway listeners open),
//! and the kernel and in-pod listener halves the enrollment state machine drives.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use mesh_common::{Enrollment, ServiceKey, ServiceValue, PROXY_OUTBOUND_PORT};
use tokio::{net::TcpListener, task::JoinHandle};

use super::config_sources::access_log_overrides;
use crate::{
    admission::Admission,
    config::Config,
    ebpf::{self, MeshEbpf},
    enrollment,
    handover::{Inherited, Role},
    inpod,
    listeners::ListenerSet,
    proxy::{self, ProxyState},
    registry::{Registry, Service, Workload},
};

/// The eBPF enrollment map, as the enrollment state machine sees it.
struct KernelMap(Arc<MeshEbpf>);

impl enrollment::KernelEnrollments for KernelMap {
    fn enroll(&self, cgroup_id: u64, netns_cookie: u64, enrollment: Enrollment, name: String) -> Result<()> {
        Ok(self.0.enroll(cgroup_id, netns_cookie, enrollment, name)?)
    }
    fn unenroll(&self, cgroup_id: u64) -> Result<()> {
        Ok(self.0.unenroll(cgroup_id)?)
    }
}

/// Real in-pod listeners: bound from a thread inside the pod netns, served by the proxy.
struct InPodListeners(Arc<ProxyState>);

impl enrollment::PodListeners for InPodListeners {
    type Listener = TcpListener;
    type Serving = JoinHandle<()>;
    fn open(&self, netns: &Path, inherited: Option<OwnedFd>) -> Result<enrollment::OpenedListener<TcpListener>> {
        // The predecessor's listener in this pod, if any: connections queued on it are served by
        // whichever agent accepts first, none refused.
        let listener = match inherited {
            Some(fd) => std::net::TcpListener::from(fd),
            None => inpod::listen_in_netns(netns, SocketAddr::from((Ipv4Addr::LOCALHOST, PROXY_OUTBOUND_PORT)))?,
        };
        let fd = listener.as_fd().try_clone_to_owned()?;
        let netns_cookie =
            ebpf::netns_cookie_of(&listener).context("reading the pod netns cookie (needs Linux >= 5.14)")?;
        listener.set_nonblocking(true)?;
        Ok(enrollment::OpenedListener { listener: TcpListener::from_std(listener)?, netns_cookie, fd })
    }
    fn cgroup_id(&self, cgroup: &Path) -> Result<u64> {
        Ok(ebpf::cgroup_id(cgroup)?)
    }
    fn serve(&self, listener: TcpListener, workload: Arc<ArcSwap<Workload>>, netns_cookie: u64) -> JoinHandle<()> {
        tokio::spawn(proxy::serve_pod_listener(self.0.clone(), workload, listener, netns_cookie))
    }
    fn stop(&self, serving: &JoinHandle<()>) {
        // Connections already accepted keep running in their own tasks; only accepting stops.
        serving.abort();
    }
}

/// Makes the node match a registry and a routing config: routes compiled, service VIPs in the
/// kernel, this node's pods enrolled (and no others), NodePort and Gateway listeners open.
pub(super) struct NodeReconciler {
    state: Arc<ProxyState>,
    bpf: Arc<MeshEbpf>,
    pods: enrollment::Enrollments<KernelMap, InPodListeners>,
    nodeports: ListenerSet<NodePortTarget>,
    gateways: ListenerSet<GatewayRef>,
    /// Routing objects admitted one by one; a rejected object keeps its last good version.
    admission: Admission,
    /// A config that arrived before the first registry, admitted with it.
    pub(super) admission_candidate: Option<Config>,
    /// Listening sockets handed over by a predecessor, claimed as the node is reconciled.
    inherited: Inherited,
    /// The enrollment map was re-adopted from pins: after the first reconcile, remove the
    /// cgroups of pods that left while no agent ran.
    pub(super) prune_enrollments: bool,
    /// The live config and enrolled pods, for `/config_dump`.
    published: Arc<crate::admin::dump::Published>,
}

impl NodeReconciler {
    pub(super) fn new(
        state: Arc<ProxyState>,
        bpf: Arc<MeshEbpf>,
        ingress_bind: IpAddr,
        mut inherited: Inherited,
        published: Arc<crate::admin::dump::Published>,
    ) -> Self {
        NodeReconciler {
            nodeports: ListenerSet::new("NodePort", ingress_bind, std::mem::take(&mut inherited.nodeports)),
            gateways: ListenerSet::new(
                "Gateway",
                ingress_bind,
                std::mem::take(&mut inherited.gateways).into_iter().map(|(port, (_, _, fd))| (port, fd)).collect(),
            ),
            pods: enrollment::Enrollments::new(
                KernelMap(bpf.clone()),
                InPodListeners(state.clone()),
                std::mem::take(&mut inherited.pods),
            ),
            inherited,
            state,
            bpf,
            admission: Admission::default(),
            admission_candidate: None,
            prune_enrollments: false,
            published,
        }
    }

    /// Closes handed-over sockets nothing claimed (pods, ports the new registry or config no
    /// longer has); the predecessor closes its copies when it drains.
    pub(super) fn inherited_done(&mut self) {
        self.inherited = Inherited::default();
        self.pods.inherited_done();
        self.nodeports.inherited_done();
        self.gateways.inherited_done();
    }

    /// Duplicates of every listening socket, with what it is.
    pub(super) fn export(&self) -> std::io::Result<Vec<(Role, OwnedFd)>> {
        let mut out = Vec::new();
        for ((namespace, name), netns, cgroup, fd) in self.pods.export()? {
            out.push((Role::Pod { namespace, name, netns, cgroup }, fd));
        }
        for (port, _, fd) in self.nodeports.export()? {
            out.push((Role::NodePort { port }, fd));
        }
        for (port, gw, fd) in self.gateways.export()? {
            out.push((Role::Gateway { port, namespace: gw.namespace, name: gw.name }, fd));
        }
        Ok(out)
    }

    pub(super) async fn apply_registry(&mut self, registry: Arc<Registry>) {
        self.state.registry.store(registry.clone());
        // The first registry also brings the config read at start; later ones recompile the
        // objects live now against the new services and pods.
        let candidate = self.admission_candidate.take().unwrap_or_else(|| self.admission.live().clone());
        self.admit(candidate, &registry);
        if let Err(e) = self.bpf.sync_services(&service_map(&registry)) {
            tracing::error!(error = %e, "cannot update the service VIP map");
        }
        self.reconcile_enrollment();
        if self.state.sk_msg.enabled() {
            // Pods on this node: those enrolled, and those whose network namespace the registry
            // names (the local node's directory); on Kubernetes an un-enrolled pod is not known
            // as local. Only the bypass asks (it is enabled before the first registry).
            let enrolled: Vec<_> = self.pods.views().filter_map(|p| p.workload.load().ip).collect();
            let named = registry.workloads.iter().filter(|w| w.netns.is_some()).filter_map(|w| w.ip);
            self.state.sk_msg.set_local_pods(enrolled.into_iter().chain(named).collect());
        }
        if std::mem::take(&mut self.prune_enrollments) {
            match self.bpf.prune_enrolled(&self.pods.cgroup_ids()) {
                Ok(n) => tracing::info!(removed = n, "pruned pinned enrollments of pods no longer on the node"),
                Err(e) => tracing::error!(error = %e, "cannot prune the pinned enrollment map"),
            }
        }
        self.reconcile_nodeports(&registry).await;
        self.reconcile_gateways().await;
        tracing::info!(
            pods = self.pods.len(),
            services = registry.services.len(),
            workloads = registry.workloads.len(),
            "node reconciled"
        );
    }

    /// Admits a new routing config object by object and swaps in the resulting table.
    pub(super) async fn apply_config(&mut self, candidate: Config) {
        if self.admission_candidate.is_some() {
            // No registry yet: the newest files wait for it.
            self.admission_candidate = Some(candidate);
            return;
        }
        let registry = self.state.registry.load_full();
        self.admit(candidate, &registry);
        self.reconcile_gateways().await;
    }

    fn admit(&mut self, candidate: Config, registry: &Registry) {
        if let Some(applied) =
            crate::reload::apply_config_reporting(&self.state, &mut self.admission, candidate, registry)
        {
            self.published.config_applied(applied);
        }
        self.state.access_log.set_overrides(access_log_overrides(self.admission.live(), registry, &self.state));
    }

    /// The enrolled pods as `/config_dump` shows them.
    fn publish_pods(&self) {
        let mut pods: Vec<crate::admin::dump::PodView> = self
            .pods
            .views()
            .map(|p| {
                let w = p.workload.load();
                crate::admin::dump::PodView {
                    workload: w.name.clone(),
                    namespace: w.namespace.clone(),
                    ip: w.ip,
                    labels: w.labels.clone(),
                    netns: p.netns.to_path_buf(),
                    netns_cookie: p.netns_cookie,
                    cgroup: p.cgroup.to_path_buf(),
                    cgroup_id: p.cgroup_id,
                }
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
        self.published.pods.store(Arc::new(pods));
    }

    /// The config directory could not be read at all: nothing changes.
    pub(super) fn config_unreadable(&self, errors: &crate::config::ConfigErrors) {
        self.state.metrics.inc("mesh_config_reloads_total", &[("result", "failed")]);
        tracing::error!("cannot read the routing config directory; the live config stays:\n{errors}");
    }

    /// Something to retry: a pod that could not be enrolled, a port that could not be bound.
    pub(super) fn has_failed(&self) -> bool {
        self.pods.has_failed() || self.nodeports.has_failed() || self.gateways.has_failed()
    }

    /// Retries what failed (see [`NodeReconciler::has_failed`]).
    pub(super) async fn retry_failed(&mut self) {
        if self.pods.has_failed() {
            self.reconcile_enrollment();
        }
        if self.nodeports.has_failed() {
            let registry = self.state.registry.load_full();
            self.reconcile_nodeports(&registry).await;
        }
        if self.gateways.has_failed() {
            self.reconcile_gateways().await;
        }
    }

    /// Enrolls the registry's pods of this node that are not enrolled yet and unenrolls the
    /// ones that left (ordering and retries: `enrollment`).
    fn reconcile_enrollment(&mut self) {
        let registry = self.state.registry.load_full();
        let wanted = registry.workloads.iter().filter(|w| w.enroll).filter_map(|w| {
            Some(enrollment::Wanted { workload: w, netns: w.netns.as_deref()?, cgroup: w.cgroup.as_deref()? })
        });
        let out = self.pods.reconcile(wanted);
        self.report(out);
        self.publish_pods();
    }

    pub(super) fn unenroll_all(&mut self) {
        let out = self.pods.unenroll_all();
        self.report(out);
        self.publish_pods();
    }

    /// Logs and counts what an enrollment reconcile did.
    fn report(&self, out: enrollment::Outcome) {
        for ((namespace, pod), cgroup_id, netns) in &out.enrolled {
            tracing::info!(pod = %pod, namespace = %namespace, cgroup_id, netns = %netns.display(), "pod enrolled");
            self.state.metrics.inc("mesh_pod_enrollments_total", &[("result", "enrolled")]);
        }
        for ((namespace, pod), error) in &out.failed {
            tracing::warn!(pod = %pod, namespace = %namespace, error = %error, "cannot enroll pod yet; retrying");
            self.state.metrics.inc("mesh_pod_enrollments_total", &[("result", "failed")]);
        }
        for ((namespace, pod), error) in &out.unenroll_errors {
            tracing::error!(pod = %pod, namespace = %namespace, error = %error, "cannot remove pod from the enrollment map");
        }
        for (namespace, pod) in &out.removed {
            self.state.metrics.inc("mesh_pod_enrollments_total", &[("result", "removed")]);
            tracing::info!(pod = %pod, namespace = %namespace, "pod unenrolled");
        }
        self.publish_pods();
    }

    /// One ingress listener per NodePort, rebound when the service behind it changes.
    async fn reconcile_nodeports(&mut self, registry: &Registry) {
        let wanted: HashMap<u16, NodePortTarget> = registry
            .services
            .iter()
            .flat_map(|s| {
                s.ports
                    .iter()
                    .filter_map(move |p| Some((p.node_port?, NodePortTarget { service: s.clone(), port: p.port })))
            })
            .collect();
        let state = &self.state;
        self.nodeports
            .reconcile(&wanted, |l, _, t| {
                tokio::spawn(proxy::serve_nodeport(state.clone(), l, t.service.clone(), t.port))
            })
            .await;
    }

    /// One ingress listener per port of the Gateways in the live config, opened and closed as
    /// Gateways come and go with config reloads. Two Gateways on one port share its listener,
    /// opened for the first listed: the route table serves the virtual hosts of every Gateway
    /// on the port (routing/gateway_merge.rs), so another joining does not re-bind it.
    async fn reconcile_gateways(&mut self) {
        let mut wanted: HashMap<u16, GatewayRef> = HashMap::new();
        for gw in self.state.routes.load().gateways() {
            let want = GatewayRef { name: gw.name, namespace: gw.namespace };
            match wanted.get(&gw.port) {
                Some(other) if *other != want => {
                    tracing::debug!(gateway = %want, port = gw.port, listener = %other, "Gateways share the port's listener");
                }
                Some(_) => {}
                None => {
                    wanted.insert(gw.port, want);
                }
            }
        }
        let state = &self.state;
        self.gateways
            .reconcile(&wanted, |l, port, gw| {
                tokio::spawn(proxy::serve_gateway(state.clone(), l, gw.name.clone(), gw.namespace.clone(), port))
            })
            .await;
    }
}

/// What a NodePort listener serves: a service port.
#[derive(Clone, PartialEq)]
struct NodePortTarget {
    service: Arc<Service>,
    port: u16,
}

impl std::fmt::Display for NodePortTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.service.namespace, self.service.name, self.port)
    }
}

/// What a Gateway listener serves: the Gateway (its servers on that port).
#[derive(Clone, PartialEq)]
struct GatewayRef {
    name: String,
    namespace: String,
}

impl std::fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Every ClusterIP:port the kernel must capture.
pub fn service_map(registry: &Registry) -> HashMap<ServiceKey, ServiceValue> {
    let mut m = HashMap::new();
    for (i, s) in registry.services.iter().enumerate() {
        let Some(ip) = s.cluster_ip else { continue };
        // A selectorless service's endpoints come only from EndpointSlices, which a standalone
        // registry file does not have: capturing its VIP would turn a working kube-proxy path
        // into a dead end, so it is left alone.
        if s.selector.is_empty() && s.ready_ips.is_none() {
            continue;
        }
        for p in &s.ports {
            m.insert(
                ServiceKey { ip4: u32::from(ip).to_be(), port: p.port, _pad: 0 },
                ServiceValue { service_id: i as u32 },
            );
        }
    }
    m
}
