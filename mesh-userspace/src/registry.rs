//! The service registry: which services exist (VIPs, ports, selectors) and which workloads (pods)
//! back them. It is plain state, built either from Kubernetes YAML files (standalone mode) or from
//! the API server; the routing engine only ever sees this type, so it cannot tell the difference.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use thiserror::Error;

pub mod convert;

/// Annotation naming the network namespace of a pod on a bare node (a path such as
/// `/var/run/netns/reviews-v1`). On Kubernetes the agent finds it through the CRI instead.
pub const ANNOTATION_NETNS: &str = "mesh/netns";
/// Annotation naming the pod's cgroup v2 directory on a bare node.
pub const ANNOTATION_CGROUP: &str = "mesh/cgroup";
/// Per-pod opt-out, like Istio's `sidecar.istio.io/inject: "false"`.
pub const ANNOTATION_ENROLL: &str = "mesh/enroll";
/// Per-pod override of `--source-max-connections`: connections the pod may hold open through the proxy.
pub const ANNOTATION_MAX_CONNECTIONS: &str = "mesh/max-connections";
/// Per-pod override of `--source-max-requests`: requests the pod may have in flight.
pub const ANNOTATION_MAX_REQUESTS: &str = "mesh/max-requests";
/// Per-pod override of `--source-max-buffered-body`: request body bytes the pod may hold in
/// read-ahead buffers (bytes, or a Kubernetes quantity: `64Mi`).
pub const ANNOTATION_MAX_BUFFERED_BODY: &str = "mesh/max-buffered-body";

/// One pod's own per-source caps, from its annotations; `None` keeps the node's flag. Only the
/// pod's own traffic is held to them (its listener's connections), so a tenant can be given more
/// room, or less, without changing its neighbours'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCaps {
    /// `mesh/max-connections`.
    pub max_connections: Option<u32>,
    /// `mesh/max-requests`.
    pub max_requests: Option<u32>,
    /// `mesh/max-buffered-body`, in bytes.
    pub max_buffered_body: Option<u64>,
}

impl PodCaps {
    /// The caps the annotations of pod `namespace/name` set. An invalid value (not a number,
    /// zero, past the flags' ranges) is logged once per pod, annotation and value, and ignored:
    /// the node default applies, and the pod is enrolled as usual. A bad annotation must never
    /// keep a pod out of the mesh or stop the agent.
    pub fn from_annotations<'a>(namespace: &str, name: &str, get: impl Fn(&str) -> Option<&'a str>) -> PodCaps {
        use crate::{proxy::limits, quantity};
        let checked = |key: &'static str, parse: &dyn Fn(&str) -> Result<u64, quantity::QuantityError>| {
            let value = get(key)?;
            match parse(value) {
                Ok(n) => Some(n),
                Err(e) => {
                    if first_warning(namespace, name, key, value) {
                        tracing::warn!(
                            pod = %format_args!("{namespace}/{name}"),
                            annotation = key,
                            error = %e,
                            "invalid per-pod cap annotation; using the node default"
                        );
                    }
                    None
                }
            }
        };
        let count = |s: &str| quantity::parse_count(s, 1, u64::from(limits::MAX_SOURCE_COUNT));
        let bytes = |s: &str| quantity::parse_bytes(s, 1, limits::MAX_BUFFER_BYTES);
        PodCaps {
            max_connections: checked(ANNOTATION_MAX_CONNECTIONS, &count).and_then(|n| u32::try_from(n).ok()),
            max_requests: checked(ANNOTATION_MAX_REQUESTS, &count).and_then(|n| u32::try_from(n).ok()),
            max_buffered_body: checked(ANNOTATION_MAX_BUFFERED_BODY, &bytes),
        }
    }
}

/// Whether this invalid annotation value of this pod has not been warned about yet. Registries
/// are rebuilt on every discovery event, so without this one bad annotation would be logged
/// again and again. Bounded: past 4096 entries (pods come and go) it starts over, at worst
/// warning about a still-bad pod once more.
fn first_warning(namespace: &str, name: &str, annotation: &str, value: &str) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if seen.len() >= 4096 {
        seen.clear();
    }
    seen.insert(format!("{namespace}/{name} {annotation}={value}"))
}

/// The cluster's DNS domain: service hosts are `name.namespace.svc.cluster.local`.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// How the mesh treats a service port, decided like Istio does: `appProtocol` first, then the
/// port name prefix (`http`, `http-web`, `tcp-db`, `grpc`...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1 (the proxy speaks what the client spoke upstream).
    Http,
    /// HTTP/2: gRPC, h2c; HTTP/2 upstream whatever the client spoke.
    Http2,
    /// Opaque TCP: bytes are relayed, no L7 routing.
    Tcp,
    /// Neither named nor declared: the proxy sniffs the first bytes.
    Unknown,
}

impl AppProtocol {
    /// Classifies a service port by its `appProtocol`, else its name's prefix.
    pub fn from_port(name: Option<&str>, app_protocol: Option<&str>) -> Self {
        let classify = |s: &str| {
            let s = s.to_ascii_lowercase();
            // gRPC-Web is HTTP/1.1 on the wire (Istio: GRPC-Web is HTTP); the Kubernetes standard
            // application protocol for cleartext HTTP/2 is `kubernetes.io/h2c`.
            match s.as_str() {
                "grpc-web" => return Some(AppProtocol::Http),
                "kubernetes.io/h2c" => return Some(AppProtocol::Http2),
                _ => {}
            }
            let head = s.split('-').next().unwrap_or("");
            match head {
                "http" => Some(AppProtocol::Http),
                "http2" | "grpc" | "grpc-web" | "h2c" => Some(AppProtocol::Http2),
                "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(AppProtocol::Tcp),
                _ => None,
            }
        };
        app_protocol.and_then(classify).or_else(|| name.and_then(classify)).unwrap_or(AppProtocol::Unknown)
    }
}

/// A service port's `targetPort`: where its endpoints listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number on the pod.
    Number(u16),
    /// A container port's name, resolved per pod.
    Name(String),
}

/// One TCP port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (Istio reads the protocol from its prefix).
    pub name: Option<String>,
    /// The service (VIP) port.
    pub port: u16,
    /// Where the endpoints listen.
    pub target_port: TargetPort,
    /// The NodePort the node's ingress listener serves this port on, if any.
    pub node_port: Option<u16>,
    /// How the proxy treats the port's traffic.
    pub protocol: AppProtocol,
}

/// A Kubernetes Service as the mesh needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// The Service's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its VIP; `None` for a headless service (nothing to capture).
    pub cluster_ip: Option<Ipv4Addr>,
    /// Its TCP ports.
    pub ports: Vec<ServicePort>,
    /// The pod labels that make a pod an endpoint (empty: selectorless).
    pub selector: BTreeMap<String, String>,
    /// The addresses Kubernetes' EndpointSlices mark ready for this service (Kubernetes mode):
    /// a selected pod outside this set (starting, failing its readiness probe, terminating) is
    /// not an endpoint, exactly as for kube-proxy. `None` in standalone mode: every selected
    /// pod with an IP is an endpoint.
    pub ready_ips: Option<BTreeSet<Ipv4Addr>>,
    /// For a service without a selector (the API server's `kubernetes`, or addresses outside
    /// the cluster managed by hand), the ready endpoints its EndpointSlices list, by the name of
    /// the port they serve (Kubernetes pairs service and endpoint ports by name).
    pub slice_endpoints: Vec<(Option<String>, SocketAddrV4)>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`, the key Istio uses for a service host.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.{}", self.name, self.namespace, CLUSTER_DOMAIN)
    }

    /// The service port numbered `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// A port a pod's container declares (what a named `targetPort` resolves to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// The port's name.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
}

/// A pod: the unit of identity (source workload) and the thing endpoints point at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The pod's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels (subsets, `sourceLabels`, selectors).
    pub labels: BTreeMap<String, String>,
    /// Its pod IP; `None` before it has one, and for a hostNetwork pod.
    pub ip: Option<Ipv4Addr>,
    /// Its containers' declared ports.
    pub container_ports: Vec<ContainerPort>,
    /// Its network namespace on this node, where its in-pod listener is opened.
    pub netns: Option<PathBuf>,
    /// Its cgroup on this node, which the eBPF programs are keyed by.
    pub cgroup: Option<PathBuf>,
    /// Whether the mesh enrolls it: false when the pod (or, in Kubernetes mode, its
    /// namespace) opted out, or for a hostNetwork pod.
    pub enroll: bool,
    /// Its own per-source caps (`mesh/max-*` annotations), overriding the node's flags.
    pub caps: PodCaps,
}

impl Workload {
    /// An endpoint address that is not a pod the registry knows (a selectorless service's
    /// EndpointSlice entry): no labels, so no subset selects it, and never enrolled.
    pub fn external(ip: Ipv4Addr, namespace: &str) -> Workload {
        Workload {
            name: ip.to_string(),
            namespace: namespace.to_owned(),
            labels: BTreeMap::new(),
            ip: Some(ip),
            container_ports: Vec::new(),
            netns: None,
            cgroup: None,
            enroll: false,
            caps: PodCaps::default(),
        }
    }

    /// The pod carries every label of a non-empty `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        !selector.is_empty() && selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// One backend of a service port: a pod and the address its container listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod (or, for a selectorless service, a stand-in for the address).
    pub workload: Arc<Workload>,
    /// Where to connect: the pod IP and the resolved target port.
    pub addr: SocketAddr,
}

/// Every service and workload the agent knows, from the registry files or the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// Services, in the order their source listed them.
    pub services: Vec<Arc<Service>>,
    /// Pods, in the order their source listed them.
    pub workloads: Vec<Arc<Workload>>,
    /// (VIP, port) → index into `services`, built on the first lookup: the proxy looks a VIP up
    /// for every connection it accepts, and a scan would cost a comparison per service.
    pub vip_index: VipIndex,
}

/// The VIP index of a [`Registry`]. It belongs to one `services` list: it remembers how many
/// services it indexed, and a registry changed after its first lookup is scanned instead (the
/// loaders push services before anyone looks one up, so that is never the fast path's case).
#[derive(Default)]
pub struct VipIndex(std::sync::OnceLock<(usize, VipMap)>);

/// (VIP, port) → index into `Registry::services`.
type VipMap = HashMap<(Ipv4Addr, u16), usize>;

impl Clone for VipIndex {
    /// A clone starts without an index: the clone's services may be changed before its first lookup.
    fn clone(&self) -> Self {
        VipIndex::default()
    }
}

impl PartialEq for VipIndex {
    /// A cache: two registries with the same services are equal whether or not one was indexed.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for VipIndex {}

impl std::fmt::Debug for VipIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VipIndex")
    }
}

impl Registry {
    /// Resolves a host as Istio does for a client in `client_ns`: a short name is looked up in
    /// the client's namespace, `name.ns` and `name.ns.svc` and the FQDN name their namespace. A
    /// VIP literal (`10.96.0.20`) also resolves.
    pub fn service_by_host(&self, host: &str, client_ns: &str) -> Option<&Arc<Service>> {
        let host = host.trim_end_matches('.');
        let host = host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host, |(h, _)| h);
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return self.services.iter().find(|s| s.cluster_ip == Some(ip));
        }
        let (name, ns) = split_host(host, client_ns)?;
        self.services.iter().find(|s| s.name == name && s.namespace == ns)
    }

    /// Builds a registry (its VIP index is built on the first lookup).
    pub fn new(services: Vec<Arc<Service>>, workloads: Vec<Arc<Workload>>) -> Registry {
        Registry { services, workloads, vip_index: VipIndex::default() }
    }

    /// The service a connection to `ip:port` was meant for: the one whose ClusterIP is `ip` and
    /// that has `port` (the first one listed when two claim it, as a scan would find).
    pub fn service_by_vip(&self, ip: Ipv4Addr, port: u16) -> Option<&Arc<Service>> {
        let (indexed, index) = self.vip_index.0.get_or_init(|| {
            let mut index = HashMap::new();
            for (i, s) in self.services.iter().enumerate() {
                let Some(vip) = s.cluster_ip else { continue };
                for p in &s.ports {
                    index.entry((vip, p.port)).or_insert(i);
                }
            }
            (self.services.len(), index)
        });
        if *indexed != self.services.len() {
            return self.services.iter().find(|s| s.cluster_ip == Some(ip) && s.port(port).is_some());
        }
        self.services.get(*index.get(&(ip, port))?)
    }

    /// The pod `namespace/name`.
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads.iter().find(|w| w.name == name && w.namespace == namespace)
    }

    /// Endpoints of `service`'s `port`, like an EndpointSlice: pods in the service's namespace
    /// whose labels match the selector and that have an IP, with the target port resolved.
    pub fn endpoints(&self, service: &Service, port: u16) -> Vec<Endpoint> {
        endpoints_among(self.workloads.iter(), service, port)
    }

    /// Workloads by (namespace, label key, label value), so selecting a service's pods looks at
    /// the pods carrying its first selector label rather than every pod of the cluster.
    pub fn label_index(&self) -> HashMap<(&str, &str, &str), Vec<&Arc<Workload>>> {
        let mut index: HashMap<(&str, &str, &str), Vec<&Arc<Workload>>> = HashMap::new();
        for w in &self.workloads {
            for (k, v) in &w.labels {
                index.entry((w.namespace.as_str(), k.as_str(), v.as_str())).or_default().push(w);
            }
        }
        index
    }
}

/// [`Registry::endpoints`] over a candidate set of workloads (all of them, or an index hit).
pub fn endpoints_among<'a>(
    candidates: impl Iterator<Item = &'a Arc<Workload>>,
    service: &Service,
    port: u16,
) -> Vec<Endpoint> {
    let Some(sp) = service.port(port) else { return Vec::new() };
    if service.selector.is_empty() {
        return service
            .slice_endpoints
            .iter()
            .filter(|(name, _)| *name == sp.name)
            .map(|(_, addr)| Endpoint {
                workload: Arc::new(Workload::external(*addr.ip(), &service.namespace)),
                addr: SocketAddr::V4(*addr),
            })
            .collect();
    }
    {
        candidates
            .filter(|w| w.namespace == service.namespace && w.matches(&service.selector))
            .filter_map(|w| {
                let ip = w.ip?;
                if service.ready_ips.as_ref().is_some_and(|ready| !ready.contains(&ip)) {
                    return None;
                }
                let target = match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(name) => w.container_ports.iter().find(|c| c.name.as_deref() == Some(name))?.port,
                };
                Some(Endpoint { workload: w.clone(), addr: SocketAddr::V4(SocketAddrV4::new(ip, target)) })
            })
            .collect()
    }
}

impl Registry {
    /// Loads every `v1 Service` and `v1 Pod` (and the pod template of `apps/v1 Deployment`s is
    /// ignored: on a bare node pods are given explicitly) from multi-document YAML files.
    pub fn from_yaml_files(paths: &[PathBuf]) -> Result<Registry, RegistryError> {
        let mut reg = Registry::default();
        for path in paths {
            let text =
                std::fs::read_to_string(path).map_err(|e| RegistryError::Io { path: path.clone(), source: e })?;
            reg.add_yaml(path, &text)?;
        }
        Ok(reg)
    }

    /// Adds the Services and Pods of one multi-document YAML text (read from `path`, named in
    /// errors); `List` documents are unpacked, other kinds skipped.
    pub fn add_yaml(&mut self, path: &Path, text: &str) -> Result<(), RegistryError> {
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| RegistryError::Yaml {
                path: path.to_path_buf(),
                document: index,
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            let at = |message: String| RegistryError::Yaml { path: path.to_path_buf(), document: index, message };
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            match kind {
                "Service" => {
                    let svc: k8s::Service = serde_yaml::from_value(value).map_err(|e| at(e.to_string()))?;
                    if let Some(svc) = svc.into_service().map_err(at)? {
                        self.services.push(Arc::new(svc));
                    }
                }
                "Pod" => {
                    let pod: k8s::Pod = serde_yaml::from_value(value).map_err(|e| at(e.to_string()))?;
                    if let Some(w) = pod.into_workload().map_err(at)? {
                        self.workloads.push(Arc::new(w));
                    }
                }
                "List" => {
                    let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
                    for item in items {
                        let text = serde_yaml::to_string(&item).map_err(|e| at(e.to_string()))?;
                        self.add_yaml(path, &text)?;
                    }
                }
                // Deployments, Namespaces, ServiceAccounts... are valid in the same files; the
                // standalone registry needs only Services and Pods.
                _ => {}
            }
        }
        Ok(())
    }
}

/// Splits an Istio host into (service name, namespace).
pub fn split_host<'a>(host: &'a str, client_ns: &'a str) -> Option<(&'a str, &'a str)> {
    let host = host.strip_suffix(CLUSTER_DOMAIN).and_then(|h| h.strip_suffix('.')).unwrap_or(host);
    let host = host.strip_suffix(".svc").unwrap_or(host);
    let mut parts = host.split('.');
    let name = parts.next().filter(|n| !n.is_empty())?;
    match (parts.next(), parts.next()) {
        (None, _) => Some((name, client_ns)),
        (Some(ns), None) => Some((name, ns)),
        _ => None,
    }
}

/// Why a registry file could not be loaded.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("cannot read registry file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// A document is not YAML, or not a valid Service or Pod.
    #[error("{path}: YAML document {document}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The document's index in the file (0-based).
        document: usize,
        /// What is wrong.
        message: String,
    },
}

mod k8s;

#[cfg(test)]
mod tests;
