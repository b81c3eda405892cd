//! The node proxy: accepts redirected connections on in-pod listeners and ingress connections on
//! the node, recovers the original destination, and serves them at L7 (HTTP) or L4 (TCP).
//!
//! One concern per module: [`accept`] the accept loops, [`pod_listener`] the in-pod listeners (redirected connections and their original
//! destination), [`ingress`] the NodePort and Gateway listeners, [`dispatch`] L7 or L4 for a
//! service port, [`http_conn`] HTTP/1 and HTTP/2 client connections, [`tcp`] the L4 relay,
//! [`upstream`] the upstream clients and their pools.
/// `AsyncWrite` for a wrapper that only watches or paces reads (`limits::ActivityIo`,
/// `limits::Prefixed`, `fair::PacedReads`): every write call goes to `$field` untouched.
macro_rules! forward_async_write {
    ($ty:ident, $field:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<T> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }
        }
    };
}

mod accept;
pub mod access_log;
pub mod connect;
mod dispatch;
pub mod fair;
mod forward;
pub mod http;
mod http_conn;
mod ingress;
pub mod lb;
pub mod limits;
pub mod overload;
mod pod_listener;
mod pool;
mod tcp;
pub mod telemetry;
pub mod tls;
mod upstream;

pub use self::{
    accept::{accept, accept_paced_until_drain, accept_until_drain},
    dispatch::serve_service_conn,
    http_conn::serve_http,
    ingress::{serve_gateway, serve_nodeport},
    limits::Limits,
    pod_listener::serve_pod_listener,
};

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use arc_swap::ArcSwap;

use self::upstream::{upstream_client, UpstreamClient, UpstreamKey};
use crate::{
    metrics::Metrics,
    registry::{Registry, Workload},
    routing::{RouteTable, UpstreamProtocol},
};

/// Where the proxy learns the original destination of a redirected connection (the eBPF maps in
/// production; a fixed table in unit tests).
pub trait OriginalDst: Send + Sync + 'static {
    /// The destination the pod connected to before the kernel redirected it, for the connection
    /// from `peer` accepted by the listener in the network namespace `netns_cookie`; the record is
    /// removed (each connection is looked up once).
    fn take(&self, netns_cookie: u64, peer: SocketAddrV4) -> Option<SocketAddrV4>;
}

impl OriginalDst for crate::ebpf::MeshEbpf {
    fn take(&self, netns_cookie: u64, peer: SocketAddrV4) -> Option<SocketAddrV4> {
        self.take_original_dst(netns_cookie, peer).map(|(a, _)| a)
    }
}

/// Who is calling: the enrolled pod whose listener accepted, or nobody (ingress).
#[derive(Clone)]
pub struct Source {
    /// The pod, None for ingress (a NodePort or Gateway connection has no mesh identity).
    pub workload: Option<Arc<Workload>>,
    /// The client address as accepted (consistent hashing on `useSourceIp`, logs).
    pub peer: Option<SocketAddr>,
    /// The per-source-workload caps of the listener that accepted (None: ingress).
    pub caps: Option<Arc<limits::SourceCaps>>,
    /// The source's metric labels and this connection's cache of metric handles.
    pub telemetry: Arc<telemetry::ConnTelemetry>,
}

impl Source {
    /// A connection from `workload` (None: ingress), its metric labels resolved now.
    pub fn new(
        workload: Option<Arc<Workload>>,
        peer: Option<SocketAddr>,
        caps: Option<Arc<limits::SourceCaps>>,
    ) -> Self {
        let labels = workload
            .as_deref()
            .map_or_else(crate::metrics::PeerLabels::unknown, |w| Arc::new(crate::metrics::PeerLabels::of(w)));
        Source { workload, peer, caps, telemetry: telemetry::ConnTelemetry::new(labels) }
    }
}

/// Everything the node proxy's connection and request tasks share. One per agent, behind an
/// `Arc`; the route table and registry are swapped whole (readers never lock), the rest is
/// fixed at start or internally synchronised.
pub struct ProxyState {
    /// The compiled routing table; replaced by the config reload task (`reload.rs`) only, through
    /// [`ProxyState::publish_routes`]. A request routes on the table it loaded when it started.
    pub routes: ArcSwap<RouteTable>,
    /// Services and workloads; replaced by the agent when discovery publishes a new registry.
    pub registry: ArcSwap<Registry>,
    client: UpstreamClient,
    client_h2: UpstreamClient,
    /// Upstream clients for clusters whose DestinationRule sets `connectionPool.http.idleTimeout`
    /// or `tcp.connectTimeout`.
    pool_clients: std::sync::Mutex<std::collections::HashMap<UpstreamKey, UpstreamClient>>,
    /// The sk_msg bypass's part in upstream connects (off until the agent enables it).
    pub sk_msg: Arc<connect::SkMsgUpstream>,
    /// Hands each table's clusters their load-balancer and circuit-breaker state, kept across
    /// reloads.
    pub lb: lb::LoadBalancer,
    /// The counters served at `/metrics`.
    pub metrics: Metrics,
    /// Whether requests are recorded in Istio's request metrics (`--request-metrics`);
    /// changeable at run time.
    pub request_metrics: std::sync::atomic::AtomicBool,
    /// The access log (`--access-log`): off, text or JSON, switchable at run time.
    pub access_log: access_log::AccessLog,
    /// Where redirected connections' original destinations are read (the eBPF maps).
    pub original_dst: Arc<dyn OriginalDst>,
    /// Stop accepting / finish in-flight connections (SIGTERM, or a successor took over).
    pub drain: crate::drain::Drain,
    /// Downstream limits, fixed for the proxy's lifetime.
    pub limits: Limits,
    /// Every pod listener's caps, for the per-source usage gauges on `/metrics` and the
    /// overload manager.
    sources: std::sync::Mutex<Vec<(String, std::sync::Weak<limits::SourceCaps>)>>,
    /// The memory budget and whether the overload manager is shedding (`overload.rs`).
    pub overload: overload::Overload,
    /// Per-source fairness of the event loop (`fair.rs`): limits nobody until the agent starts
    /// its lag watcher.
    pub fair: Arc<fair::FairGate>,
}

impl ProxyState {
    /// A proxy state with the default downstream [`Limits`].
    pub fn new(registry: Registry, routes: RouteTable, original_dst: Arc<dyn OriginalDst>) -> Arc<Self> {
        Self::with_limits(registry, routes, original_dst, Limits::default())
    }

    /// A proxy state with the given downstream limits.
    pub fn with_limits(
        registry: Registry,
        routes: RouteTable,
        original_dst: Arc<dyn OriginalDst>,
        limits: Limits,
    ) -> Arc<Self> {
        let lb = lb::LoadBalancer::default();
        lb.adopt(&routes);
        let sk_msg = Arc::new(connect::SkMsgUpstream::default());
        Arc::new(ProxyState {
            routes: ArcSwap::from_pointee(routes),
            registry: ArcSwap::from_pointee(registry),
            client: upstream_client(UpstreamKey::default_for(UpstreamProtocol::Http1), &sk_msg),
            client_h2: upstream_client(UpstreamKey::default_for(UpstreamProtocol::Http2), &sk_msg),
            pool_clients: Default::default(),
            sk_msg,
            lb,
            metrics: Metrics::default(),
            request_metrics: std::sync::atomic::AtomicBool::new(true),
            access_log: Default::default(),
            original_dst,
            drain: Default::default(),
            overload: overload::Overload::new(limits.memory_budget),
            limits,
            sources: Default::default(),
            fair: Default::default(),
        })
    }

    /// Makes `table` the one new requests route on, its clusters holding on to the state (ejections,
    /// in-flight counts, round-robin positions) of the same clusters and endpoints in the table
    /// it replaces.
    pub fn publish_routes(&self, table: RouteTable) {
        self.lb.adopt(&table);
        self.routes.store(Arc::new(table));
    }

    /// Every live pod listener's caps, with its source workload's name.
    pub fn live_sources(&self) -> Vec<(String, Arc<limits::SourceCaps>)> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|(_, caps)| caps.strong_count() > 0);
        sources.iter().filter_map(|(name, caps)| Some((name.clone(), caps.upgrade()?))).collect()
    }

    /// Current use of each source workload's caps as Prometheus gauges:
    /// `mesh_downstream_connections`, `mesh_downstream_requests_active`,
    /// `mesh_downstream_buffered_body_bytes` and `mesh_downstream_held_bytes` (what the overload
    /// manager counts it as holding), by `source_workload`; and the node's memory:
    /// `mesh_memory_budget_bytes`, `mesh_memory_resident_bytes` (the manager's last RSS sample),
    /// `mesh_memory_socket_bytes` (its last sample of the kernel's socket buffers charged to the
    /// agent's cgroup) and `mesh_overload_active`.
    pub fn source_gauges(&self) -> String {
        use std::fmt::Write as _;
        let mut usage: std::collections::BTreeMap<String, [u64; 4]> = Default::default();
        for (name, caps) in self.live_sources() {
            // A pod re-enrolled under the same name may briefly have two listeners.
            let (c, r, b) = caps.usage();
            let u = usage.entry(name).or_default();
            for (i, v) in [u64::from(c), u64::from(r), b, caps.held_bytes()].into_iter().enumerate() {
                u[i] = u[i].saturating_add(v);
            }
        }
        let mut out = String::new();
        for (i, name) in [
            "mesh_downstream_connections",
            "mesh_downstream_requests_active",
            "mesh_downstream_buffered_body_bytes",
            "mesh_downstream_held_bytes",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (src, u) in &usage {
                let _ = writeln!(out, "{name}{{source_workload=\"{}\"}} {}", src.replace(['\\', '"'], "_"), u[i]);
            }
        }
        let o = &self.overload;
        for (name, v) in [
            ("mesh_memory_budget_bytes", o.watermarks.budget),
            ("mesh_memory_resident_bytes", o.resident()),
            ("mesh_memory_socket_bytes", o.socket()),
            ("mesh_overload_active", u64::from(o.active())),
        ] {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests;
