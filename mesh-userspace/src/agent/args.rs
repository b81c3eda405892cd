//! The `mesh agent` command line: every flag, its parser and range, and what the flags add up
//! to for the proxy (limits, fairness, memory budget).
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::Args;

use crate::{ebpf, handover, proxy, settings::Settings};

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["registry", "kubernetes"])))]
// Not documented here: clap would turn a doc comment into the command's help text (the
// subcommand's is in main.rs).
#[allow(missing_docs)]
pub struct AgentArgs {
    /// Kubernetes YAML with the node's Services and Pods (standalone mode). Repeatable.
    #[arg(long)]
    pub registry: Vec<PathBuf>,
    /// Discover Services, EndpointSlices, Pods and Namespaces from the Kubernetes API server
    /// (in-cluster service account, or $KUBECONFIG / ~/.kube/config) and enroll this node's pods
    /// in namespaces labelled mesh-injection=enabled or istio-injection=enabled.
    #[arg(long, conflicts_with = "registry")]
    pub kubernetes: bool,
    /// This node's name, to pick its pods (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME", required_if_eq("kubernetes", "true"))]
    pub node_name: Option<String>,
    /// The cgroup v2 hierarchy holding the kubelet's pod cgroups (default: --cgroup-root).
    #[arg(long)]
    pub kubelet_cgroup_root: Option<PathBuf>,
    /// The host's /proc (pods' network namespaces are found as /proc/<pid>/ns/net; needs hostPID).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Also read VirtualService / DestinationRule / Gateway objects from the API server (when the
    /// Istio CRDs are installed); they are merged after the --config files, an object replacing a
    /// file's document of the same kind, name and namespace.
    #[arg(long, requires = "kubernetes")]
    pub istio_crds: bool,
    /// With --kubernetes, also read the Gateway API objects (HTTPRoute, GRPCRoute,
    /// ReferenceGrant, Gateway, GatewayClass) from the API server when its CRDs are installed;
    /// merged after the --config files and the Istio objects, admitted one by one like them.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub gateway_api: Switch,
    /// Directory of Istio routing YAML (a mounted ConfigMap); watched and hot reloaded.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Compiled eBPF object (default: $MESH_EBPF_OBJECT, next to the binary, or target/mesh-ebpf.o).
    #[arg(long)]
    pub ebpf_object: Option<PathBuf>,
    /// cgroup v2 directory the programs attach to; every enrolled pod must be below it.
    #[arg(long, default_value = "/sys/fs/cgroup/unified")]
    pub cgroup_root: PathBuf,
    /// Health, readiness and Prometheus metrics (`/healthz`, `/ready`, `/metrics`,
    /// `/stats/prometheus`); see admin.rs.
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub admin: SocketAddr,
    /// Address the node-level ingress listeners (NodePorts, Gateway ports) bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub ingress_bind: IpAddr,
    /// How long in-flight requests and TCP streams may run after SIGTERM (or after a successor
    /// took over): listeners stop accepting at once, then the agent exits when its last
    /// connection ends or at this deadline. Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value = "30s", value_parser = crate::drain::parse_duration)]
    pub drain_timeout: Duration,
    /// A request head must be complete this long after its first byte (slowloris), or the
    /// client connection is closed.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub request_headers_timeout: Duration,
    /// A request whose body stops arriving for this long is answered 408 (or reset, once a
    /// response has started). Envoy's stream_idle_timeout default.
    #[arg(long, default_value = "5m", value_parser = positive_duration)]
    pub request_body_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (HTTP/2: GOAWAY
    /// first). Istio's default for HTTP connections.
    #[arg(long, default_value = "1h", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// Largest HTTP/1 request head (request line and headers), and HTTP/2 header list, in KiB;
    /// larger gets 431. Envoy's max_request_headers_kb (default 60, at most 8192).
    #[arg(long, default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(proxy::limits::MAX_REQUEST_HEADERS_KB)))]
    pub max_request_headers_kb: u32,
    /// Most request headers accepted; more gets 431. Envoy's max_headers_count (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = request_headers_count)]
    pub max_request_headers_count: usize,
    /// Concurrent streams an HTTP/2 client may open on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
    pub http2_max_concurrent_streams: u32,
    /// Request body bytes read ahead per request so it can be retried or mirrored (and a
    /// malformed one refused before any endpoint sees it); larger bodies stream through once,
    /// without retries. Bytes, or a Kubernetes quantity: 64Ki, 1Mi.
    #[arg(long, default_value = "1Mi", value_parser = buffer_bytes)]
    pub request_max_buffered_body: u64,
    /// Connections one enrolled pod may hold open through the proxy; more are closed at accept.
    /// A pod's `mesh/max-connections` annotation overrides it for that pod.
    #[arg(long, default_value_t = 2048, value_parser = source_count)]
    pub source_max_connections: u32,
    /// Requests one enrolled pod may have in flight; more are answered 503 (x-envoy-overloaded).
    /// A pod's `mesh/max-requests` annotation overrides it for that pod.
    #[arg(long, default_value_t = 1024, value_parser = source_count)]
    pub source_max_requests: u32,
    /// Request body bytes one enrolled pod may hold in the proxy's retry/mirror read-ahead
    /// buffers at once; past it, its requests stream through without retries. Bytes, or a
    /// Kubernetes quantity (16Mi). A pod's `mesh/max-buffered-body` annotation overrides it.
    #[arg(long, default_value = "16Mi", value_parser = buffer_bytes)]
    pub source_max_buffered_body: u64,
    /// Per-source fairness of the proxy's event loop: when the loop falls behind (see
    /// --fair-share-lag) while several pods send requests, the pod starting the most is rate
    /// limited until the loop is on time again, so a flood cannot slow its neighbours.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub fair_share: Switch,
    /// Requests of a rate-limited pod that may wait for their turn; past it they are answered
    /// 503 (x-envoy-overloaded, flag OM).
    #[arg(long, default_value_t = proxy::fair::FairConfig::default().max_queue, value_parser = source_count)]
    pub fair_share_queue: u32,
    /// How late the proxy's 5 ms timer must fire for the loop to count as behind.
    #[arg(long, default_value = "2ms", value_parser = positive_duration)]
    pub fair_share_lag: Duration,
    /// Requests per second below which a pod is never limited, and the lowest limit (limits
    /// rise again by 1000 req/s per second while the loop is on time).
    #[arg(long, default_value_t = 1000, value_parser = source_count)]
    pub fair_share_min_rate: u32,
    /// The node proxy's memory budget (RSS; e.g. 400Mi): past 90 % of it the sources holding the
    /// most are shed (new connections and requests refused, oldest unfinished requests reset)
    /// until it is under 75 %. Default: 80 % of the agent's cgroup memory.max, else 400Mi.
    #[arg(long, value_parser = proxy::overload::parse_bytes)]
    pub memory_budget: Option<u64>,
    /// Unix socket for hitless restarts. A starting agent that finds a running one here takes
    /// over its listening sockets and eBPF maps and links, and tells it to drain once ready;
    /// then it listens here itself for its own successor.
    #[arg(long, default_value = handover::DEFAULT_SOCKET)]
    pub handover_socket: PathBuf,
    /// What an enrolled pod's connect to a service VIP does when no node proxy listens in the
    /// pod (the agent is down, or the pod's listener is gone): `open` sends it to its original
    /// destination, outside the mesh; `closed` refuses it (EPERM). Checked by the kernel on every
    /// such connect; the last agent started on the node decides.
    #[arg(long, value_enum, default_value_t = ebpf::FailMode::Open)]
    pub fail_mode: ebpf::FailMode,
    /// Carry the bytes between a pod and its in-pod proxy listener, and between the proxy and a
    /// backend pod on this node, socket to socket (an sk_msg program on a sockhash) instead of
    /// through TCP/IP. Off by default: the kernel
    /// queues redirected bytes on the reading socket without the TCP window's limit, so a peer
    /// that stops reading lets the writer queue up to the node's TCP memory (see the README).
    /// Left off, with a warning, when the kernel cannot attach the program.
    #[arg(long)]
    pub sk_msg_bypass: bool,
    /// Pin the eBPF maps and links in this bpffs directory (bpffs is mounted at /sys/fs/bpf when
    /// the directory is below it and nothing is mounted there), so that a crashed agent leaves
    /// the programs attached — `--fail-mode` keeps holding for enrolled pods — and the restarted
    /// agent re-adopts the links and maps (running its own programs behind them). Without it a crash detaches
    /// everything (the pods' connects go to their original destinations). The DaemonSet sets
    /// /sys/fs/bpf/mesh.
    #[arg(long)]
    pub bpf_pin_dir: Option<PathBuf>,
    /// Tests only: advertise and pin under this map layout instead of this build's, to exercise a
    /// successor's migration between layouts with one binary.
    #[arg(long, hide = true)]
    pub pretend_map_layout: Option<u32>,
    /// Istio's standard request and TCP metrics (`istio_*` on /metrics): `off` records none of
    /// them (the agent's own `mesh_*` counters stay), to measure or save their cost per request.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub request_metrics: Switch,
    /// Per-request access log on stdout: `text` is Envoy's default format, `json` the same
    /// fields as JSON. Off by default, as in Istio. Lines the writer cannot keep up with are
    /// dropped and counted (`mesh_access_log_dropped_total`), never waited for.
    #[arg(long, value_enum, default_value_t = proxy::access_log::AccessLogMode::Off)]
    pub access_log: proxy::access_log::AccessLogMode,
    /// The proxy's worker threads (default one per core). `1` runs tokio's single-threaded
    /// scheduler, an event loop like one nginx worker: the multi-threaded one with one worker
    /// still pays for its shared queues and wake-ups.
    #[arg(long, env = "MESH_WORKER_THREADS", value_parser = worker_threads)]
    pub worker_threads: Option<usize>,
}

/// An on/off flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// A duration flag that must not be zero (a zero timeout would cut every request).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = crate::drain::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be greater than zero"));
    }
    Ok(d)
}

/// A per-source connection or request cap: 1 to [`proxy::limits::MAX_SOURCE_COUNT`].
fn source_count(s: &str) -> Result<u32, String> {
    let n =
        crate::quantity::parse_count(s, 1, u64::from(proxy::limits::MAX_SOURCE_COUNT)).map_err(|e| e.to_string())?;
    u32::try_from(n).map_err(|_| format!("{s:?}: too large"))
}

/// A request header count: 1 to [`proxy::limits::MAX_REQUEST_HEADERS_COUNT`].
fn request_headers_count(s: &str) -> Result<usize, String> {
    let max = u64::try_from(proxy::limits::MAX_REQUEST_HEADERS_COUNT).unwrap_or(u64::MAX);
    let n = crate::quantity::parse_count(s, 1, max).map_err(|e| e.to_string())?;
    usize::try_from(n).map_err(|_| format!("{s:?}: too large"))
}

/// A worker thread count: 1 to 1024.
fn worker_threads(s: &str) -> Result<usize, String> {
    let n = crate::quantity::parse_count(s, 1, 1024).map_err(|e| e.to_string())?;
    usize::try_from(n).map_err(|_| format!("{s:?}: too large"))
}

/// A read-ahead budget in bytes (Kubernetes quantity suffixes allowed): 1 byte to
/// [`proxy::limits::MAX_BUFFER_BYTES`].
fn buffer_bytes(s: &str) -> Result<u64, String> {
    crate::quantity::parse_bytes(s, 1, proxy::limits::MAX_BUFFER_BYTES).map_err(|e| e.to_string())
}

impl AgentArgs {
    /// The map layout this agent advertises to a successor and pins under.
    pub fn map_layout(&self) -> u32 {
        self.pretend_map_layout.unwrap_or(ebpf::MAP_LAYOUT)
    }

    /// Everything the flags set, with the build's fixed tunables: what the agent runs with and
    /// `/config_dump` shows. Reads the agent's cgroup once, for the default memory budget.
    pub fn settings(&self) -> Settings {
        let (budget, memory_budget_origin) = self.memory_budget();
        Settings {
            limits: proxy::Limits { memory_budget: budget, ..self.limits() },
            memory_budget_origin,
            fair_share: self.fair_share(),
            drain_timeout: self.drain_timeout,
            fail_mode: self.fail_mode,
            sk_msg_bypass: self.sk_msg_bypass,
            worker_threads: self.worker_threads,
            fixed: crate::settings::FIXED,
        }
    }

    /// The proxy's downstream limits: the defaults, with what the flags set (the memory budget
    /// is the default one; [`AgentArgs::settings`] resolves the real one).
    pub fn limits(&self) -> proxy::Limits {
        proxy::Limits {
            memory_budget: self.memory_budget.unwrap_or(proxy::overload::DEFAULT_BUDGET),
            request_headers_timeout: self.request_headers_timeout,
            idle_timeout: self.idle_timeout,
            // At most 8192 KiB (the flag's range), so this never saturates in practice.
            max_request_headers_bytes: self.max_request_headers_kb.saturating_mul(1024),
            max_request_headers_count: self.max_request_headers_count,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            max_buffered_body: self.request_max_buffered_body,
            request_body_idle_timeout: self.request_body_timeout,
            per_source_max_connections: self.source_max_connections,
            per_source_max_requests: self.source_max_requests,
            per_source_max_buffered_body: self.source_max_buffered_body,
        }
    }
}

impl AgentArgs {
    /// The event loop's fairness settings (`--fair-share-*`).
    pub fn fair_share(&self) -> proxy::fair::FairConfig {
        proxy::fair::FairConfig {
            enabled: self.fair_share == Switch::On,
            max_queue: self.fair_share_queue,
            lag: self.fair_share_lag,
            min_rate: f64::from(self.fair_share_min_rate),
        }
    }

    /// The memory budget and where it came from: the flag, else the agent's cgroup limit.
    pub fn memory_budget(&self) -> (u64, proxy::overload::BudgetOrigin) {
        if let Some(b) = self.memory_budget {
            return (b, proxy::overload::BudgetOrigin::Flag);
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        proxy::overload::default_budget(&own, std::path::Path::new("/sys/fs/cgroup"))
    }
}
