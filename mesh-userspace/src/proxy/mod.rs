//! The node proxy: accepts redirected connections on in-pod listeners and ingress connections on
//! the node, recovers the original destination, and serves them at L7 (HTTP) or L4 (TCP).
pub mod access_log;
pub mod fair;
mod forward;
pub mod http;
pub mod lb;
pub mod limits;
pub mod overload;
pub mod telemetry;
pub mod tls;

pub use self::limits::Limits;

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use self::http::{Entry, ProxyBody};
use crate::{
    metrics::Metrics,
    registry::{AppProtocol, Registry, Service, Workload},
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
    /// The compiled routing table; replaced by the config reload task (`reload.rs`) only. A request
    /// routes on the table it loaded when it started.
    pub routes: ArcSwap<RouteTable>,
    /// Services and workloads; replaced by the agent when discovery publishes a new registry.
    pub registry: ArcSwap<Registry>,
    client: Client<HttpConnector, ProxyBody>,
    client_h2: Client<HttpConnector, ProxyBody>,
    /// Upstream clients for clusters whose DestinationRule sets `connectionPool.http.idleTimeout`
    /// or `tcp.connectTimeout`.
    pool_clients: std::sync::Mutex<std::collections::HashMap<UpstreamKey, Client<HttpConnector, ProxyBody>>>,
    /// Load-balancer and circuit-breaker state per cluster and endpoint, kept across reloads.
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
        Arc::new(ProxyState {
            routes: ArcSwap::from_pointee(routes),
            registry: ArcSwap::from_pointee(registry),
            client: upstream_client(UpstreamKey::default_for(UpstreamProtocol::Http1)),
            client_h2: upstream_client(UpstreamKey::default_for(UpstreamProtocol::Http2)),
            pool_clients: Default::default(),
            lb: lb::LoadBalancer::default(),
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

impl ProxyState {
    /// How to send a request the client made over `client_version` to `cluster`: the upstream
    /// protocol Istio would pick and the client (pool) for it.
    pub fn upstream(
        &self,
        cluster: &crate::routing::Cluster,
        client_version: ::http::Version,
    ) -> (UpstreamProtocol, Client<HttpConnector, ProxyBody>) {
        let protocol = cluster.upstream_protocol(client_version == ::http::Version::HTTP_2);
        (protocol, self.client_for(&cluster.connection_pool, protocol))
    }

    /// A client for `cluster` that never reuses a connection: for the one retry after a pooled
    /// connection closed under a request (see `forward::forward`).
    pub fn fresh_upstream(
        &self,
        cluster: &crate::routing::Cluster,
        protocol: UpstreamProtocol,
    ) -> Client<HttpConnector, ProxyBody> {
        let key = UpstreamKey {
            idle_timeout: Duration::ZERO,
            connect_timeout: cluster.connection_pool.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            protocol,
        };
        let mut clients = self.pool_clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key).or_insert_with(|| upstream_client(key)).clone()
    }

    /// The upstream client for a cluster's connection pool settings and upstream protocol.
    fn client_for(
        &self,
        pool: &crate::routing::ConnectionPool,
        protocol: UpstreamProtocol,
    ) -> Client<HttpConnector, ProxyBody> {
        if pool.idle_timeout.is_none() && pool.connect_timeout.is_none() {
            return match protocol {
                UpstreamProtocol::Http1 => self.client.clone(),
                UpstreamProtocol::Http2 => self.client_h2.clone(),
            };
        }
        let key = UpstreamKey {
            idle_timeout: pool.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            connect_timeout: pool.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            protocol,
        };
        let mut clients = self.pool_clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key).or_insert_with(|| upstream_client(key)).clone()
    }
}

/// Upstream connections idle this long are closed rather than reused. Below the shortest common
/// server keep-alive (gunicorn's 2 s, as Bookinfo's productpage runs; Node.js and Apache use 5 s),
/// so the proxy stops using a connection before the server may close it: reusing one at the
/// instant the server closes it fails the request. The half second margin dwarfs in-cluster RTTs,
/// and the server's timer started earlier than ours (when it wrote the response's last byte).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Envoy's default cluster connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What distinguishes one upstream client (hyper has one pool, idle timeout, connect timeout and
/// protocol per client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct UpstreamKey {
    idle_timeout: Duration,
    connect_timeout: Duration,
    protocol: UpstreamProtocol,
}

impl UpstreamKey {
    const fn default_for(protocol: UpstreamProtocol) -> Self {
        UpstreamKey { idle_timeout: DEFAULT_IDLE_TIMEOUT, connect_timeout: DEFAULT_CONNECT_TIMEOUT, protocol }
    }
}

fn upstream_client(key: UpstreamKey) -> Client<HttpConnector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    // A zero idle timeout means no pool at all: every request gets its own connection.
    let max_idle = if key.idle_timeout.is_zero() { 0 } else { 256 };
    builder
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(max_idle)
        .pool_timer(hyper_util::rt::TokioTimer::new());
    if key.protocol == UpstreamProtocol::Http2 {
        // One multiplexed connection per endpoint, as Envoy keeps for HTTP/2 clusters.
        builder.http2_only(true).timer(hyper_util::rt::TokioTimer::new());
    }
    builder.build(connector)
}

/// The next connection on `listener`. Accept errors (the agent out of file descriptors, or
/// memory for socket buffers) are logged and retried after a pause rather than spun on, and
/// never end the listener: the condition is usually transient.
pub async fn accept(listener: &TcpListener, listener_of: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                let hint = match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        " (out of file descriptors: raise the agent's limit, e.g. LimitNOFILE or ulimit -n)"
                    }
                    _ => "",
                };
                tracing::warn!(listener = %listener_of, error = %e, "accept failed{hint}; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts on `listener` and hands each connection to `handle` until the drain starts; then
/// serves what the kernel had already queued (closing the listener would reset those) and
/// returns, dropping this task's handle on the socket. A successor holding the same socket keeps
/// accepting on it.
///
/// Each connection comes with its drain guard, taken as it leaves the kernel's queue: `handle`
/// moves it into the connection's task, so the drain waits for every connection accepted
/// before it. The listener holds one too until its last sweep of the queue is done.
pub async fn accept_until_drain(
    listener: TcpListener,
    listener_of: &str,
    drain: &crate::drain::Drain,
    handle: impl FnMut(TcpStream, SocketAddr, crate::drain::ConnGuard),
) {
    accept_paced_until_drain(listener, listener_of, drain, None, handle).await;
}

/// [`accept_until_drain`] for one source workload's listener: before each accept it waits for
/// the source's turn ([`fair::FairGate::accept_turn`]; only while the source is rate-limited),
/// counting each wait in `mesh_fair_share_total{source_workload,action="connection_paced"}`.
pub async fn accept_paced_until_drain(
    listener: TcpListener,
    listener_of: &str,
    drain: &crate::drain::Drain,
    pace: Option<(&ProxyState, &str)>,
    mut handle: impl FnMut(TcpStream, SocketAddr, crate::drain::ConnGuard),
) {
    use futures_util::FutureExt as _;
    let _sweeping = drain.track();
    loop {
        if let Some((state, source)) = pace {
            tokio::select! {
                biased;
                _ = drain.signaled() => break,
                waited = state.fair.accept_turn(source) => if waited {
                    state.metrics.inc("mesh_fair_share_total", &[("source_workload", source), ("action", "connection_paced")]);
                },
            }
        }
        tokio::select! {
            biased;
            _ = drain.signaled() => break,
            (stream, peer) = accept(&listener, listener_of) => handle(stream, peer, drain.track()),
        }
    }
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        handle(stream, peer, drain.track());
    }
    tracing::debug!(listener = %listener_of, "stopped accepting (draining)");
}

/// Accepts on the outbound listener inside `workload`'s network namespace until the listener fails.
/// `workload` is updated by the agent when the pod changes (its labels feed `sourceLabels`).
pub async fn serve_pod_listener(
    state: Arc<ProxyState>,
    workload: Arc<ArcSwap<Workload>>,
    listener: TcpListener,
    netns_cookie: u64,
) {
    let name = workload.load().name.clone();
    let st = state.clone();
    // One pod's listener is one source workload: its caps are shared by all its connections,
    // the node's flags unless the pod's annotations set its own.
    let caps = limits::SourceCaps::new(&state.limits);
    caps.apply(&state.limits, &workload.load().caps);
    state.sources.lock().unwrap_or_else(|e| e.into_inner()).push((name.clone(), Arc::downgrade(&caps)));
    // The pod's metric labels, resolved again only when the agent publishes a changed pod.
    let mut labels: Option<(Arc<Workload>, Arc<crate::metrics::PeerLabels>)> = None;
    // A pod flooding connects while the loop is behind waits in its own backlog (`fair.rs`).
    let paced = (&*st, name.as_str());
    accept_paced_until_drain(listener, &name, &st.drain, Some(paced), |stream, peer, in_flight| {
        let workload = workload.load_full();
        let pod_labels = match &labels {
            Some((w, l)) if Arc::ptr_eq(w, &workload) => l.clone(),
            _ => {
                // The pod changed (labels or annotations): its caps may have too.
                caps.apply(&state.limits, &workload.caps);
                let l = Arc::new(crate::metrics::PeerLabels::of(&workload));
                labels = Some((workload.clone(), l.clone()));
                l
            }
        };
        if caps.refusing() {
            // The overload manager is shedding this source: its new connections are closed at
            // once, before they hold anything.
            state.metrics.inc(
                "mesh_overload_shed_total",
                &[("source_workload", &workload.name), ("action", "connection_refused")],
            );
            drop(stream);
            return;
        }
        let Some(conn_slot) = caps.connection() else {
            // Over its connection cap: closed at once, so one pod's connection flood holds no
            // more of the proxy than its cap.
            state.metrics.inc(
                "mesh_downstream_overflow_total",
                &[("source_workload", &workload.name), ("limit", "connections")],
            );
            drop(stream);
            return;
        };
        let caps = caps.clone();
        let span = tracing::info_span!("conn", src = %workload.name, peer = %peer);
        let state = state.clone();
        tokio::spawn(
            async move {
                let _held = (in_flight, conn_slot);
                let SocketAddr::V4(peer4) = peer else {
                    tracing::warn!("IPv6 client on an IPv4 listener; dropping");
                    return;
                };
                // connect4 records the original destination of what it rewrote; a connection an
                // iptables REDIRECT rule in the pod sent here (Istio's iptables mode, and the
                // benchmark's comparison) has it in conntrack instead.
                let Some(orig) =
                    state.original_dst.take(netns_cookie, peer4).or_else(|| conntrack_original_dst(&stream))
                else {
                    // Anything else dialled 127.0.0.1:15001 directly and has no meaningful destination.
                    tracing::warn!("no original destination recorded for this connection; closing");
                    state.metrics.inc("mesh_connections_rejected_total", &[("reason", "no_original_dst")]);
                    return;
                };
                let service = state.registry.load().service_by_vip(*orig.ip(), orig.port()).cloned();
                let Some(service) = service else {
                    tracing::warn!(dst = %orig, "original destination is no longer a mesh service; closing");
                    state.metrics.inc("mesh_connections_rejected_total", &[("reason", "unknown_service")]);
                    return;
                };
                let source = Source {
                    workload: Some(workload),
                    peer: Some(peer),
                    caps: Some(caps),
                    telemetry: telemetry::ConnTelemetry::new(pod_labels),
                };
                serve_service_conn(state, source, service, orig.port(), stream).await;
            }
            .instrument(span),
        );
    })
    .await;
}

/// The pre-NAT destination of a connection redirected by netfilter (`SO_ORIGINAL_DST`); None when
/// conntrack has no NAT entry for it, e.g. a client that dialled the listener directly.
fn conntrack_original_dst(stream: &TcpStream) -> Option<SocketAddrV4> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_in is plain old data, zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, which is that large; the fd is
    // a live socket owned by `stream`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let dst = SocketAddrV4::new(u32::from_be(addr.sin_addr.s_addr).into(), u16::from_be(addr.sin_port));
    // Without NAT conntrack reports the listener itself: not an original destination.
    (dst.port() != stream.local_addr().ok()?.port() || !dst.ip().is_loopback()).then_some(dst)
}

/// Serves one connection bound for `service:port`, at L7 or L4 depending on the port's protocol.
pub async fn serve_service_conn(
    state: Arc<ProxyState>,
    source: Source,
    service: Arc<Service>,
    port: u16,
    stream: TcpStream,
) {
    let protocol = service.port(port).map(|p| p.protocol).unwrap_or(AppProtocol::Unknown);
    let http = match protocol {
        AppProtocol::Http | AppProtocol::Http2 => true,
        AppProtocol::Tcp => false,
        AppProtocol::Unknown => sniff_http(&stream).await,
    };
    if http {
        serve_http(state, source, Entry::Service { service, port }, stream).await;
    } else {
        serve_tcp(state, source, service, port, stream).await;
    }
}

/// Istio-style protocol sniffing for ports that declare nothing: an HTTP/1 request line or the
/// HTTP/2 preface within a short window means HTTP, anything else (or silence: server-first
/// protocols) means opaque TCP.
async fn sniff_http(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    let peek = tokio::time::timeout(Duration::from_millis(200), stream.peek(&mut buf)).await;
    let n = match peek {
        Ok(Ok(n)) => n,
        _ => return false,
    };
    let head = &buf[..n];
    const METHODS: &[&[u8]] =
        &[b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"PRI * ", b"CONNECT ", b"TRACE "];
    METHODS.iter().any(|m| head.starts_with(m) || (head.len() < m.len() && m.starts_with(head) && !head.is_empty()))
}

/// An HTTP/1 keep-alive connection idle this long gives its hyper connection back: hyper holds a
/// read and a write buffer (8 KiB each) and its parser state for as long as a connection lives,
/// which made an idle keep-alive connection cost the agent about 21 KB. Parked, the connection
/// is its socket and a few small structs until the client sends again; then it gets a fresh
/// hyper connection. A second is long past any request burst (re-creating hyper's state costs
/// about what one request's parsing does) and far below keep-alive lifetimes (minutes).
const PARK_IDLE_HTTP1_AFTER: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface (RFC 9113 §3.4); any other first bytes are HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's service returns per request: boxed, so that an HTTP/1 connection can be
/// polled without shutdown (hyper requires an `Unpin` future for it) and taken apart when idle.
type ServiceFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<::http::Response<ProxyBody>, std::convert::Infallible>> + Send>,
>;

/// The per-request service `serve_http` builds, as its HTTP/1 and HTTP/2 halves take it.
trait ConnService:
    hyper::service::Service<
    ::http::Request<hyper::body::Incoming>,
    Response = ::http::Response<ProxyBody>,
    Error = std::convert::Infallible,
    Future = ServiceFuture,
>
{
}

impl<S> ConnService for S where
    S: hyper::service::Service<
        ::http::Request<hyper::body::Incoming>,
        Response = ::http::Response<ProxyBody>,
        Error = std::convert::Infallible,
        Future = ServiceFuture,
    >
{
}

/// Serves HTTP/1 and HTTP/2 (h2c) on one accepted connection, each request through
/// [`http::handle`], until the client closes, a limit ends it, or the drain closes it gracefully.
pub async fn serve_http(state: Arc<ProxyState>, source: Source, entry: Entry, stream: TcpStream) {
    // Responses are written whole; Nagle would only hold the next one back behind the client's
    // delayed ACK of the previous (Envoy and nginx set it too).
    let _ = stream.set_nodelay(true);
    let activity = limits::ConnActivity::counting(source.caps.as_ref().map(|c| c.head_counter()));
    let src = source.workload.as_ref().map_or("ingress", |w| w.name.as_str()).to_owned();
    let source_for_refusals = source.clone();
    let svc = conn_service(&state, source, entry, &activity, &src);
    let limits = &state.limits;
    let io = limits::ActivityIo::new(stream, activity.clone());
    // Until its first bytes the connection is parked: no hyper state at all.
    if !parked(&state, &activity, &io, &src, source_for_refusals.caps.as_deref(), true).await {
        return;
    }
    let http2 = match http2_preface(io.get_ref(), limits.request_headers_timeout).await {
        Some(h2) => h2,
        None => return,
    };
    if http2 {
        // Boxed, as the hyper connection is in `serve_http1`: the task of an idle connection
        // keeps the size of its largest state, so no hyper state may be inline in it.
        Box::pin(serve_http2(&state, &activity, io, svc, &src, source_for_refusals.caps.as_deref())).await;
    } else {
        serve_http1(&state, &activity, io, svc, &src, &source_for_refusals).await;
    }
}

/// The per-request service of one client connection (plain or TLS): each request through
/// [`http::handle`], held to its source's caps and fairness turn.
fn conn_service(
    state: &Arc<ProxyState>,
    source: Source,
    entry: Entry,
    activity: &Arc<limits::ConnActivity>,
    src: &str,
) -> impl ConnService + Clone + Send + Unpin + 'static {
    let state = state.clone();
    let activity = activity.clone();
    let src = src.to_owned();
    hyper::service::service_fn(move |req| -> ServiceFuture {
        // Held until hyper drops the response body (written, or the client left), so the
        // idle and header timers only run between requests.
        let guard = activity.begin();
        activity.request_has_body(!hyper::body::Body::is_end_stream(req.body()));
        // The source's requests in flight, held like the guard until the response is sent.
        let slot = match source.caps.as_ref().map(|c| c.request()) {
            Some(None) => {
                state
                    .metrics
                    .inc("mesh_downstream_overflow_total", &[("source_workload", &src), ("limit", "requests")]);
                let mut r = http::local_reply(
                    ::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "source workload {src} has too many requests in flight (limit {})",
                        source.caps.as_ref().map_or(state.limits.per_source_max_requests, |c| c.maxima().1)
                    ),
                );
                r.headers_mut().insert("x-envoy-overloaded", ::http::HeaderValue::from_static("true"));
                // Counted like any request under its source, routed nowhere (Envoy's `UO`:
                // a concurrency limit full, answered with `x-envoy-overloaded`).
                let r = telemetry::record_request_cap_refusal(&state, &source, &req, r);
                return Box::pin(std::future::ready(Ok(r)));
            }
            Some(Some(slot)) => Some(slot),
            None => None,
        };
        let handled = http::handle(state.clone(), source.clone(), entry.clone(), req);
        let (state, source, src) = (state.clone(), source.clone(), src.clone());
        Box::pin(async move {
            // At once, unless the event loop fell behind and this source is the one slowed
            // down (`fair.rs`).
            match state.fair.enter(&src).await {
                Ok(false) => {}
                Ok(true) => {
                    state.metrics.inc("mesh_fair_share_total", &[("source_workload", &src), ("action", "queued")])
                }
                Err(fair::Refused) => return Ok(fair_share_refusal(&state, &source, &src)),
            }
            let resp = handled.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_frame(body, move |f| {
                    let _held = (&guard, &slot);
                    f
                }))
            }))
        })
    })
}

/// Serves an HTTP/2 connection (h2c, or h2 inside TLS) until the client closes, a limit ends it
/// or the drain.
async fn serve_http2<S, T>(
    state: &Arc<ProxyState>,
    activity: &limits::ConnActivity,
    io: limits::ActivityIo<T>,
    svc: S,
    src: &str,
    caps: Option<&limits::SourceCaps>,
) where
    S: ConnService + Clone + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &state.limits;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_header_list_size(limits.max_request_headers_bytes)
        .max_concurrent_streams(limits.http2_max_concurrent_streams);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let shed = shed_signal(caps);
    let expired = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended with error");
            }
            return;
        }
        e = activity.watch(limits) => e,
        () = shed => {
            // The overload manager sheds this source: GOAWAY, as Envoy's overload action
            // `disable_http_keepalive` does; its streams in flight finish (or are reset by the
            // manager), new ones go elsewhere or wait for a new connection, which is refused.
            state.metrics.inc("mesh_overload_shed_total", &[("source_workload", src), ("action", "goaway")]);
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.request_headers_timeout, conn).await;
            return;
        }
        _ = state.drain.signaled() => {
            // GOAWAY; streams in flight finish.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with error while draining");
            }
            return;
        }
    };
    count_expiry(state, src, expired);
    if expired == limits::Expired::Idle {
        // Nothing is in flight: GOAWAY first. A client that does not finish the goodbye within
        // a header timeout is cut.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(limits.request_headers_timeout, conn).await;
    }
}

/// The reply to a request the fairness gate refused: `503` with `x-envoy-overloaded`, counted
/// under its source (`mesh_fair_share_total{action="refused"}`, `istio_requests_total` with `OM`).
/// The connection stays open: closing it would only make the flooding client reconnect.
fn fair_share_refusal(state: &Arc<ProxyState>, source: &Source, src: &str) -> ::http::Response<ProxyBody> {
    state.metrics.inc("mesh_fair_share_total", &[("source_workload", src), ("action", "refused")]);
    telemetry::record_fair_share_refusal(state, source);
    let mut r = http::local_reply(
        ::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("envoy overloaded: the node proxy is behind and source workload {src} has too many requests waiting"),
    );
    r.headers_mut().insert("x-envoy-overloaded", ::http::HeaderValue::from_static("true"));
    r
}

fn count_expiry(state: &ProxyState, src: &str, expired: limits::Expired) {
    state.metrics.inc("mesh_downstream_timeouts_total", &[("source_workload", src), ("reason", expired.as_str())]);
    tracing::debug!(reason = expired.as_str(), "closing client connection");
}

/// How long the drain waits for the first request of a connection accepted just before it: the
/// client connected to send one (a connection-per-request client would otherwise see its new
/// connection closed unanswered when a handover's drain starts between its connect and its write).
#[cfg(not(test))]
const DRAIN_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// Unit tests write that first request after other steps of the drain, which take more than a
/// second now and then on a loaded 2-core machine running every test at once; the grace is what
/// they check, not its length (0 fails them).
#[cfg(test)]
const DRAIN_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(10);

/// Waits, holding no buffer, until the client sends something (true), or the idle timeout, the
/// overload manager shedding its source (`caps`) or the drain closes the connection (false): an idle connection is closed at once by the drain,
/// as hyper's graceful shutdown closes an idle HTTP/1 connection — except a `fresh` one (no
/// request yet), which gets [`DRAIN_FIRST_REQUEST_GRACE`] to send its first (answered with
/// `Connection: close`).
async fn parked(
    state: &ProxyState,
    activity: &limits::ConnActivity,
    io: &limits::ActivityIo<TcpStream>,
    src: &str,
    caps: Option<&limits::SourceCaps>,
    fresh: bool,
) -> bool {
    let _parked = caps.map(limits::SourceCaps::park);
    let shed = shed_signal(caps);
    tokio::select! {
        r = client_sent(io.get_ref()) => r.is_ok(),
        e = activity.watch(&state.limits) => {
            count_expiry(state, src, e);
            false
        }
        () = shed => {
            // The overload manager sheds this source: its idle connections are closed (Envoy's
            // overload manager stops keep-alive the same way).
            state.metrics.inc("mesh_overload_shed_total", &[("source_workload", src), ("action", "idle_closed")]);
            false
        }
        _ = state.drain.signaled() => {
            fresh && matches!(tokio::time::timeout(DRAIN_FIRST_REQUEST_GRACE, client_sent(io.get_ref())).await, Ok(Ok(())))
        }
    }
}

/// Resolves while the overload manager sheds the connection's source (never for ingress, which
/// has no source caps): its idle connections are closed, its HTTP/2 ones told GOAWAY.
async fn shed_signal(caps: Option<&limits::SourceCaps>) {
    match caps {
        Some(c) => c.idle_shed().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the client has sent something (or closed, or the socket failed). Tokio's
/// `readable()` alone is not that: it reports a freshly accepted socket readable before any byte
/// arrived, which took never-used connections out of [`parked`] at once — to wait in the
/// preface peek instead, where neither the overload manager's shedding nor the drain reached
/// them. A peek that would block clears that readiness and waits again.
async fn client_sent(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = 0u8;
            // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the byte for hyper, and the
            // socket is non-blocking (tokio's), so this never waits.
            let n = unsafe { libc::recv(stream.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
        match peeked {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // Bytes or end of stream: the caller reads either. An error: the socket is done.
            _ => return Ok(()),
        }
    }
}

/// Whether the client's first bytes are the HTTP/2 preface (`None`: it closed, or sent no
/// whole preface within the header timeout). Only peeks: hyper reads the bytes.
async fn http2_preface(stream: &TcpStream, within: Duration) -> Option<bool> {
    let look = async {
        let mut buf = [0u8; 24];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            let seen = &buf[..n];
            if n == 0 {
                return None;
            }
            if !H2_PREFACE.starts_with(seen) {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // Part of the preface so far (it is one segment in practice): look again shortly
            // rather than spin on the same peeked bytes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(within, look).await.ok().flatten()
}

/// Serves an HTTP/1 connection: a hyper connection while requests come, given back after
/// [`PARK_IDLE_HTTP1_AFTER`] of idleness (the socket is parked with no buffer, see [`parked`])
/// and made anew when the client sends again.
async fn serve_http1<S>(
    state: &Arc<ProxyState>,
    activity: &limits::ConnActivity,
    mut io: limits::ActivityIo<TcpStream>,
    mut svc: S,
    src: &str,
    source_for_refusals: &Source,
) where
    S: ConnService + Unpin,
{
    let limits = &state.limits;
    let h1 = http1_builder(limits);
    // While hyper serves, the idle clock parks the connection first (unless the idle timeout
    // itself is that short); the idle timeout proper then runs while it is parked.
    let park = limits.idle_timeout > PARK_IDLE_HTTP1_AFTER;
    let round_limits = Limits { idle_timeout: limits.idle_timeout.min(PARK_IDLE_HTTP1_AFTER), ..limits.clone() };
    let mut unread = bytes::Bytes::new();
    loop {
        // Boxed: freed when parked (see `serve_http2`).
        let mut conn = Box::new(h1.serve_connection(TokioIo::new(limits::Prefixed::new(unread, io)), svc));
        let mut parking = false;
        let ended = loop {
            tokio::select! {
                // hyper first: bytes that woke a parked connection are read (and start the
                // header clock) before the idle clock is asked, which would otherwise find the
                // connection still idle and park it again at once.
                biased;
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                e = activity.watch(&round_limits), if !parking => {
                    if e == limits::Expired::Idle && park && activity.parkable() {
                        // Nothing in flight and no byte of a next head read: hyper is between
                        // requests and ends the connection without a word to the client.
                        parking = true;
                        std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        continue;
                    }
                    count_expiry(state, src, e);
                    if e == limits::Expired::Idle {
                        // Nothing is in flight: closes at once.
                        std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        let _ = tokio::time::timeout(limits.request_headers_timeout, std::future::poll_fn(|cx| conn.poll_without_shutdown(cx))).await;
                    }
                    // A stalled request head: dropping the connection closes the socket.
                    return;
                }
                _ = state.drain.signaled() => {
                    // Closes the connection if idle, else answers the request in flight with
                    // `Connection: close` and then closes.
                    std::pin::Pin::new(&mut *conn).graceful_shutdown();
                    if let Err(e) = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await {
                        tracing::debug!(error = %e, "http connection ended with error while draining");
                    }
                    let mut io = conn.into_parts().io.into_inner();
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                    return;
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "http connection ended with error");
            // A head hyper refused itself (too large across reads, unparsable) was answered by
            // hyper and never reached `http::handle`: counted here, under its source.
            if let Some(code) = hyper_refusal(&e) {
                telemetry::record_refusal(state, source_for_refusals, code);
            }
            return;
        }
        let parts = conn.into_parts();
        let (mut prefixed, read_buf) = (parts.io.into_inner(), parts.read_buf);
        if !parking {
            // The client closed, or asked to (`Connection: close`): hyper wrote the last
            // response; close our side too.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut prefixed).await;
            return;
        }
        svc = parts.service;
        let (rest, inner) = prefixed.into_parts();
        io = inner;
        // Bytes hyper read but had not parsed (none when parked idle, but never lost).
        unread = if rest.is_empty() { read_buf } else { [read_buf, rest].concat().into() };
        if unread.is_empty() && !parked(state, activity, &io, src, source_for_refusals.caps.as_deref(), false).await {
            return;
        }
    }
}

/// hyper's HTTP/1 server as the downstream limits configure it (plain and TLS connections).
fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // The header timeout is ours (ConnActivity): hyper's would start as soon as the connection
    // is idle and cut idle keep-alive connections. It is left at hyper's default, which with no
    // timer installed is off; an explicit `None` is not the same to hyper 1.12: its graceful
    // shutdown then no longer marks the response in flight `Connection: close` (the drain test
    // catches it). The read buffer limit is a head-size limit: a head that does not fit is
    // answered 431 (hyper's Parse::TooLarge). Bodies are read in chunks of it.
    h1.max_buf_size(
        usize::try_from(limits.max_request_headers_bytes).unwrap_or(usize::MAX).max(limits::HYPER_MIN_BUF_SIZE),
    );
    if limits.max_request_headers_count != limits::HYPER_DEFAULT_MAX_HEADERS {
        h1.max_headers(limits.max_request_headers_count);
    }
    h1
}

/// The status hyper's HTTP/1 server answered a request head it refused with, if it did.
fn hyper_refusal(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let h = e.downcast_ref::<hyper::Error>()?;
    if h.is_parse_too_large() {
        Some(431)
    } else if h.is_parse() {
        Some(400)
    } else {
        None
    }
}

async fn serve_tcp(state: Arc<ProxyState>, source: Source, service: Arc<Service>, port: u16, stream: TcpStream) {
    // A byte stream has no message boundary to stop at: it runs until it ends or the drain
    // deadline ends the process.
    let cluster = {
        let table = state.routes.load();
        table.route_tcp(source.workload.as_deref(), &service, port, &mut rand::thread_rng())
    };
    let src = source.workload.as_ref().map(|w| w.name.clone()).unwrap_or_else(|| "ingress".into());
    let Some(cluster) = cluster else {
        tracing::warn!(service = %service.name, port, "no TCP route; closing");
        return;
    };
    // Metrics and the access log line: recorded when `record` is dropped, whichever way this
    // function ends.
    let mut record = telemetry::TcpRecord::new(state.clone(), &source, &cluster);
    let Some(picked) = state.lb.pick(&cluster, None, &[]) else {
        tracing::warn!(cluster = %cluster.name, "no healthy upstream for TCP connection; closing");
        state.metrics.inc(
            "mesh_tcp_connections_total",
            &[("source_workload", &src), ("destination_service", &service.name), ("result", "no_endpoint")],
        );
        record.refused(crate::metrics::Flags::UH);
        return;
    };
    record.set_endpoint(&cluster, picked.endpoint.addr);
    let mut upstream = match TcpStream::connect(picked.endpoint.addr).await {
        Ok(s) => s,
        Err(e) => {
            state.lb.report(&cluster, &picked, None);
            tracing::warn!(endpoint = %picked.endpoint.addr, error = %e, "TCP upstream connect failed");
            state.metrics.inc(
                "mesh_tcp_connections_total",
                &[("source_workload", &src), ("destination_service", &service.name), ("result", "connect_failure")],
            );
            record.refused(crate::metrics::Flags::UF);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    state.metrics.inc(
        "mesh_tcp_connections_total",
        &[("source_workload", &src), ("destination_service", &service.name), ("result", "ok")],
    );
    record.connected();
    let mut client = telemetry::CountedIo::new(stream, record.bytes());
    let relay = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(relay);
    // The byte counters while the connection is open, as Istio's stats filter reports them.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + telemetry::TCP_REPORTING_INTERVAL,
        telemetry::TCP_REPORTING_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let relayed = loop {
        tokio::select! {
            r = &mut relay => break r,
            _ = tick.tick(), if record.reporting() => record.report(),
        }
    };
    match relayed {
        Ok((up, down)) => {
            tracing::info!(endpoint = %picked.endpoint.addr, bytes_up = up, bytes_down = down, "tcp connection closed")
        }
        Err(e) => tracing::debug!(error = %e, "tcp connection ended with error"),
    }
}

/// Runs an accepted connection's task, holding its drain guard until the task ends.
fn spawn_counted(served: impl std::future::Future<Output = ()> + Send + 'static, in_flight: crate::drain::ConnGuard) {
    tokio::spawn(async move {
        served.await;
        drop(in_flight)
    });
}

/// Ingress listener for a NodePort service: no source workload, destination fixed.
pub async fn serve_nodeport(state: Arc<ProxyState>, listener: TcpListener, service: Arc<Service>, port: u16) {
    let st = state.clone();
    let name = service.name.clone();
    accept_until_drain(listener, &name, &st.drain, |stream, peer, in_flight| {
        let state = state.clone();
        let service = service.clone();
        let span = tracing::info_span!("ingress", nodeport_service = %service.name, peer = %peer);
        let served = serve_service_conn(state, Source::new(None, Some(peer), None), service, port, stream);
        spawn_counted(served.instrument(span), in_flight);
    })
    .await;
}

/// Ingress listener for a Gateway port (an Istio Gateway's servers, a Gateway API Gateway's
/// listeners).
pub async fn serve_gateway(state: Arc<ProxyState>, listener: TcpListener, name: String, namespace: String, port: u16) {
    let st = state.clone();
    accept_until_drain(listener, &name, &st.drain, |stream, peer, in_flight| {
        let state = state.clone();
        let entry = Entry::Gateway { name: name.clone(), namespace: namespace.clone(), port };
        let span = tracing::info_span!("gateway", gateway = %name, peer = %peer);
        // TLS-terminated when the live table has certificates for the port (looked up per
        // connection, so a rotated Secret applies to the next handshake), else plain HTTP.
        let served = tls::serve_gateway_conn(state, Source::new(None, Some(peer), None), entry, stream);
        spawn_counted(served.instrument(span), in_flight);
    })
    .await;
}

#[cfg(test)]
mod tests;
