//! The label sets of Istio's standard metrics: the source pod's and destination's labels, resolved
//! once, and the values of `reporter`, `request_protocol` and `response_flags`.
use std::{
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

use crate::registry::{Service, Workload};

/// Which proxy of a sidecar pair a series stands for (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client's proxy.
    Source,
    /// The server's proxy.
    Destination,
}

/// Istio's `request_protocol`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2, not gRPC.
    Http,
    /// A request with `content-type: application/grpc*`.
    Grpc,
    /// An L4 connection.
    Tcp,
}

/// Envoy's response flags, as a set. Rendered in Envoy's order, comma-separated, `-` when empty.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// No healthy upstream (no endpoint, an empty subset).
    pub const UH: Flags = Flags(1);
    /// Upstream request timeout.
    pub const UT: Flags = Flags(1 << 1);
    /// Upstream connection failure.
    pub const UF: Flags = Flags(1 << 2);
    /// Upstream connection termination.
    pub const UC: Flags = Flags(1 << 3);
    /// Upstream overflow (circuit breaker, connection pool full).
    pub const UO: Flags = Flags(1 << 4);
    /// No route.
    pub const NR: Flags = Flags(1 << 5);
    /// Delay injected by the fault filter.
    pub const DI: Flags = Flags(1 << 6);
    /// Aborted by the fault filter.
    pub const FI: Flags = Flags(1 << 7);
    /// Downstream connection termination: the client went away before the response was done.
    pub const DC: Flags = Flags(1 << 8);
    /// Upstream retry limit exceeded.
    pub const URX: Flags = Flags(1 << 9);
    /// Refused or reset by the overload manager (the node proxy near its memory budget).
    pub const OM: Flags = Flags(1 << 10);

    /// Envoy's order (`ResponseFlagUtils`), which is how multiple flags are joined.
    const NAMES: [(Flags, &'static str); 11] = [
        (Flags::UH, "UH"),
        (Flags::UT, "UT"),
        (Flags::UF, "UF"),
        (Flags::UC, "UC"),
        (Flags::UO, "UO"),
        (Flags::NR, "NR"),
        (Flags::DI, "DI"),
        (Flags::FI, "FI"),
        (Flags::DC, "DC"),
        (Flags::URX, "URX"),
        (Flags::OM, "OM"),
    ];

    /// Adds `f`.
    pub fn set(&mut self, f: Flags) {
        self.0 |= f.0;
    }

    /// Whether `f` is in the set.
    pub fn contains(self, f: Flags) -> bool {
        self.0 & f.0 == f.0
    }

    /// Only the flags also in `mask`.
    pub fn only(self, mask: Flags) -> Flags {
        Flags(self.0 & mask.0)
    }

    /// `UH,URX`, or `-` for none (Envoy's `%RESPONSE_FLAGS%`).
    pub fn render(self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        if self.0 == 0 {
            return out.write_str("-");
        }
        let mut first = true;
        for (f, name) in Flags::NAMES {
            if self.contains(f) {
                if !first {
                    out.write_char(',')?;
                }
                out.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.render(f)
    }
}

/// The Istio labels of one peer (a pod, or unknown), resolved once per pod.
#[derive(Debug)]
pub struct PeerLabels {
    /// The workload (Deployment) name: the pod name without its ReplicaSet suffixes.
    pub workload: String,
    canonical_service: String,
    canonical_revision: String,
    /// The pod's namespace.
    pub namespace: String,
    principal: String,
    app: String,
    version: String,
    cluster: String,
    /// Whether the peer is a mesh workload (a pod the mesh serves, not an address outside it).
    pub mesh: bool,
    fingerprint: u64,
}

/// Istio's cluster ID when none is configured.
const CLUSTER_ID: &str = "Kubernetes";
const UNKNOWN: &str = "unknown";

fn label<'a>(w: &'a Workload, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| w.labels.get(*k)).map(String::as_str)
}

/// The workload name Istio derives for a pod: a Deployment's pod `name-<rs hash>-<suffix>` is
/// `name` (the ReplicaSet hash is the `pod-template-hash` label); anything else is its own name.
pub fn workload_name(w: &Workload) -> &str {
    if let Some(hash) = w.labels.get("pod-template-hash") {
        if let Some(i) = w.name.rfind(&format!("-{hash}-")) {
            return &w.name[..i];
        }
    }
    &w.name
}

impl PeerLabels {
    /// The labels of a pod, as Istio derives them from its metadata.
    pub fn of(w: &Workload) -> PeerLabels {
        let workload = workload_name(w).to_owned();
        let canonical_service = label(w, &["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
            .unwrap_or(&workload)
            .to_owned();
        let canonical_revision =
            label(w, &["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
                .unwrap_or("latest")
                .to_owned();
        let app = label(w, &["app", "app.kubernetes.io/name"]).unwrap_or(UNKNOWN).to_owned();
        let version = label(w, &["version", "app.kubernetes.io/version"]).unwrap_or(UNKNOWN).to_owned();
        Self::build(
            workload,
            canonical_service,
            canonical_revision,
            w.namespace.clone(),
            app,
            version,
            CLUSTER_ID.into(),
            w.enroll,
        )
    }

    /// A peer nothing is known about (ingress clients, requests with no endpoint).
    pub fn unknown() -> Arc<PeerLabels> {
        static UNKNOWN_PEER: OnceLock<Arc<PeerLabels>> = OnceLock::new();
        UNKNOWN_PEER
            .get_or_init(|| {
                let u = || UNKNOWN.to_owned();
                Arc::new(Self::build(u(), u(), u(), u(), u(), u(), u(), false))
            })
            .clone()
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        workload: String,
        canonical_service: String,
        canonical_revision: String,
        namespace: String,
        app: String,
        version: String,
        cluster: String,
        mesh: bool,
    ) -> PeerLabels {
        // Without mTLS there is no peer certificate: Istio reports "unknown".
        let principal = UNKNOWN.to_owned();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&workload, &canonical_service, &canonical_revision, &namespace, &app, &version, &cluster).hash(&mut h);
        PeerLabels {
            workload,
            canonical_service,
            canonical_revision,
            namespace,
            principal,
            app,
            version,
            cluster,
            mesh,
            fingerprint: h.finish(),
        }
    }
}

// Hashing and comparing label sets happens per request: by the fingerprint computed once, and
// by pointer before content (the same pod's labels are one Arc).
impl Hash for PeerLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state)
    }
}

impl PartialEq for PeerLabels {
    fn eq(&self, o: &Self) -> bool {
        std::ptr::eq(self, o)
            || (self.fingerprint == o.fingerprint
                && self.workload == o.workload
                && self.canonical_service == o.canonical_service
                && self.canonical_revision == o.canonical_revision
                && self.namespace == o.namespace
                && self.app == o.app
                && self.version == o.version
                && self.cluster == o.cluster)
    }
}

impl Eq for PeerLabels {}

/// The destination service's labels.
#[derive(Debug)]
pub struct ServiceLabels {
    /// `name.namespace.svc.cluster.local`.
    pub fqdn: String,
    /// The Service's name.
    pub name: String,
    /// The Service's namespace.
    pub namespace: String,
    fingerprint: u64,
}

impl ServiceLabels {
    /// The labels of a Kubernetes service.
    pub fn of(s: &Service) -> ServiceLabels {
        Self::build(s.fqdn(), s.name.clone(), s.namespace.clone())
    }

    /// No service (a request no route took anywhere).
    pub fn unknown() -> Arc<ServiceLabels> {
        static UNKNOWN_SERVICE: OnceLock<Arc<ServiceLabels>> = OnceLock::new();
        UNKNOWN_SERVICE.get_or_init(|| Arc::new(Self::build(UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()))).clone()
    }

    pub(super) fn build(fqdn: String, name: String, namespace: String) -> ServiceLabels {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&fqdn, &name, &namespace).hash(&mut h);
        ServiceLabels { fqdn, name, namespace, fingerprint: h.finish() }
    }
}

impl Hash for ServiceLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state)
    }
}

impl PartialEq for ServiceLabels {
    fn eq(&self, o: &Self) -> bool {
        std::ptr::eq(self, o)
            || (self.fingerprint == o.fingerprint
                && self.fqdn == o.fqdn
                && self.name == o.name
                && self.namespace == o.namespace)
    }
}

impl Eq for ServiceLabels {}

/// A cluster's destination labels, resolved on its first request and kept with the cluster
/// (a reload compiles new clusters, so they follow pod changes).
#[derive(Debug)]
pub struct ClusterLabels {
    /// The cluster's service.
    pub service: Arc<ServiceLabels>,
    endpoints: Vec<(SocketAddr, Arc<PeerLabels>)>,
}

impl ClusterLabels {
    /// The labels of `cluster`'s service and endpoints.
    pub fn of(cluster: &crate::routing::Cluster) -> ClusterLabels {
        ClusterLabels {
            service: Arc::new(ServiceLabels::of(&cluster.service)),
            endpoints: cluster.endpoints.iter().map(|e| (e.addr, Arc::new(PeerLabels::of(&e.workload)))).collect(),
        }
    }

    /// The labels of the endpoint at `addr` (unknown when it is not one of the cluster's).
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<PeerLabels> {
        self.endpoints.iter().find(|(a, _)| *a == addr).map_or_else(PeerLabels::unknown, |(_, l)| l.clone())
    }
}

/// The label set of one Istio request or TCP series.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TrafficLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
    /// The calling pod.
    pub source: Arc<PeerLabels>,
    /// The endpoint the request went to.
    pub destination: Arc<PeerLabels>,
    /// The destination service.
    pub service: Arc<ServiceLabels>,
    /// `http`, `grpc` or `tcp`.
    pub protocol: Protocol,
    /// The response code (HTTP only; 0 when the client left before a response).
    pub code: u16,
    /// `grpc-status` of a gRPC response.
    pub grpc_status: Option<u16>,
    /// Envoy's response flags.
    pub flags: Flags,
}

impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        fn l(e: &mut LabelSetEncoder, k: &str, v: &str) -> std::fmt::Result {
            (k, v).encode(e.encode_label())
        }
        let (s, d, svc) = (&*self.source, &*self.destination, &*self.service);
        l(e, "reporter", if self.reporter == Reporter::Source { "source" } else { "destination" })?;
        l(e, "source_workload", &s.workload)?;
        l(e, "source_canonical_service", &s.canonical_service)?;
        l(e, "source_canonical_revision", &s.canonical_revision)?;
        l(e, "source_workload_namespace", &s.namespace)?;
        l(e, "source_principal", &s.principal)?;
        l(e, "source_app", &s.app)?;
        l(e, "source_version", &s.version)?;
        l(e, "source_cluster", &s.cluster)?;
        l(e, "destination_workload", &d.workload)?;
        l(e, "destination_workload_namespace", &d.namespace)?;
        l(e, "destination_principal", &d.principal)?;
        l(e, "destination_app", &d.app)?;
        l(e, "destination_version", &d.version)?;
        l(e, "destination_service", &svc.fqdn)?;
        l(e, "destination_canonical_service", &d.canonical_service)?;
        l(e, "destination_canonical_revision", &d.canonical_revision)?;
        l(e, "destination_service_name", &svc.name)?;
        l(e, "destination_service_namespace", &svc.namespace)?;
        l(e, "destination_cluster", &d.cluster)?;
        let protocol = match self.protocol {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        };
        l(e, "request_protocol", protocol)?;
        if self.protocol != Protocol::Tcp {
            ("response_code", self.code).encode(e.encode_label())?;
            match self.grpc_status {
                Some(g) => ("grpc_response_status", g).encode(e.encode_label())?,
                None => l(e, "grpc_response_status", "")?,
            }
        }
        let mut flags = String::new();
        self.flags.render(&mut flags)?;
        l(e, "response_flags", &flags)?;
        // No mTLS between the node proxy and pods: a server-side proxy would see plaintext
        // ("none"); the client side does not know ("unknown"), as Istio reports.
        let policy = if self.reporter == Reporter::Source { UNKNOWN } else { "none" };
        l(e, "connection_security_policy", policy)
    }
}
