//! `mesh agent`: the per-node process. Loads and attaches the eBPF programs, enrolls the node's
//! pods (listener in the pod's netns first, then the cgroup in the enrollment map, so a redirect
//! never lands on nothing), publishes service VIPs to the kernel, runs the proxy, reloads routing
//! config, and on SIGINT/SIGTERM unenrolls, drains and detaches everything. Started next to a
//! running agent it takes that agent's listeners and eBPF objects over instead (`handover`).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use clap::Args;
use mesh_common::{Enrollment, ServiceKey, ServiceValue, PROXY_OUTBOUND_PORT};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    admission::Admission,
    config::Config,
    discovery::{self, kube::KubeOptions, sandbox::KubeletLayout},
    ebpf::{self, MeshEbpf},
    ebpf_pin, ebpf_upgrade, enrollment,
    handover::{self, Inherited, Role},
    inpod,
    listeners::ListenerSet,
    proxy::{self, ProxyState},
    registry::{Registry, Service, Workload},
    routing::RouteTable,
};

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
    /// Requests per second below which a pod is never limited (the lowest limit, and how fast
    /// limits rise again per second).
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

    /// The proxy's downstream limits: the defaults, with what the flags set.
    pub fn limits(&self) -> proxy::Limits {
        proxy::Limits {
            memory_budget: self.memory_budget().0,
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

/// How often enrollments that failed (a pod's netns vanished between discovery and setns, say)
/// are tried again.
const ENROLL_RETRY: Duration = Duration::from_millis(250);

/// Runs the agent until SIGTERM/SIGINT or until a successor has taken over, then drains and
/// returns: take over from a running agent or load the eBPF programs, then reconcile the node to
/// every registry and routing config that arrives (see ARCHITECTURE.md).
pub async fn run(args: AgentArgs) -> Result<()> {
    // A running agent hands over its sockets and kernel objects; otherwise start cold.
    let socket = args.handover_socket.clone();
    let received = tokio::task::spawn_blocking(move || handover::take_over(&socket))
        .await
        .context("handover thread")?
        .with_context(|| format!("taking over from the agent at {}", args.handover_socket.display()))?;
    let layout = args.map_layout();
    let pins = args.bpf_pin_dir.as_deref().map(|d| ebpf_pin::PinDir::open(d, layout)).transpose()?;
    let mut readopted = false;
    let mut replace_programs = false;
    let (bpf, mut inherited, mut predecessor) = match received {
        Some(r) => {
            tracing::info!(pid = r.predecessor_pid, descriptors = r.items.len(), "taking over from the running agent");
            let mut inherited = Inherited::new(r.items);
            let maps = std::mem::take(&mut inherited.maps);
            let links = std::mem::take(&mut inherited.links);
            let bpf = if r.map_layout == layout {
                // Its programs keep running on its maps; ours are swapped in once we run.
                replace_programs = true;
                MeshEbpf::adopt(maps, links, &args.cgroup_root)?
            } else {
                let migrated = migrate_and_take_over(&args, pins.as_ref(), &maps, &links, r.map_layout);
                // Its pins go either way: its links are ours now (pinned below under our
                // layout), or it holds them itself until it exits.
                if let Some(p) = &pins {
                    p.remove_other_layouts(false);
                }
                match migrated {
                    Ok(b) => b,
                    Err(e) => {
                        // Its maps mean something else to this version and cannot be migrated:
                        // run our own programs next to its, which detach when it exits. Not
                        // hitless for in-pod connections its programs redirect meanwhile.
                        tracing::warn!(theirs = r.map_layout, ours = layout, error = %e, "eBPF map layout changed: loading fresh programs and maps next to the predecessor's");
                        MeshEbpf::load_and_attach(&ebpf::find_object(args.ebpf_object.as_deref())?, &args.cgroup_root)?
                    }
                }
            };
            (Arc::new(bpf), inherited, Some(r.predecessor))
        }
        None => {
            let bpf = match pins.as_ref().map(|p| readopt_pinned(&args, p)).transpose()?.flatten() {
                Some((b, same_layout)) => {
                    // A previous agent died without a successor: its links stayed attached
                    // (applying --fail-mode) and its maps kept the pods and VIPs.
                    readopted = true;
                    replace_programs = same_layout;
                    b
                }
                None => {
                    if let Some(p) = &pins {
                        // Nobody holds another version's pinned programs: detach them.
                        p.remove_other_layouts(true);
                        p.remove();
                    }
                    let object = ebpf::find_object(args.ebpf_object.as_deref())?;
                    MeshEbpf::load_and_attach(&object, &args.cgroup_root)?
                }
            };
            (Arc::new(bpf), Inherited::default(), None)
        }
    };
    if let Some(p) = &pins {
        bpf.pin(p)?;
        tracing::info!(dir = %p.layout_dir().display(), "eBPF maps and links pinned");
    }
    // The kernel logs at the level RUST_LOG gives `mesh::ebpf` (off unless asked for: the
    // default filter "info" is below the kernel's debug events).
    bpf.forward_kernel_logs().context("forwarding kernel log records")?;
    let kernel_level = crate::ebpf_log::level_from_tracing();
    bpf.set_log_level(kernel_level)?;
    tracing::debug!(level = kernel_level, "eBPF log level set");
    bpf.set_fail_mode(args.fail_mode)?;
    // SAFETY: malloc_trim has no preconditions. Loading parsed the kernel's BTF (megabytes, now freed); return it.
    unsafe { libc::malloc_trim(0) };
    let client = match args.kubernetes {
        true => Some(
            kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client: run in a pod with a service account, or set KUBECONFIG")?,
        ),
        false => None,
    };
    let mut registries = registry_source(&args, client.clone())?;
    let mut crds = match (&client, args.istio_crds) {
        (Some(client), true) => match discovery::istio::spawn(client.clone()).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch Istio routing objects (are the networking.istio.io CRDs installed?); using --config only");
                None
            }
        },
        _ => None,
    };
    let mut gateway_api = match (&client, args.gateway_api) {
        (Some(client), Switch::On) => match discovery::gateway_api::spawn(client.clone()).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "cannot discover the Gateway API objects; using --config only for them");
                None
            }
        },
        _ => None,
    };
    let mut sources = ConfigSources { dir: initial_config(&args), crds: Arc::default(), gateway_api: Arc::default() };
    let state = ProxyState::with_limits(
        Registry::default(),
        RouteTable::kubernetes_only(&Registry::default()),
        bpf.clone(),
        args.limits(),
    );
    state.request_metrics.store(args.request_metrics == Switch::On, Ordering::Relaxed);
    let (budget, origin) = args.memory_budget();
    tracing::info!(budget, ?origin, "memory budget");
    tokio::spawn(proxy::overload::run(state.clone()));
    let fair = args.fair_share();
    state.fair.configure(&fair);
    if fair.enabled {
        tokio::spawn(proxy::fair::watch_lag(state.fair.clone(), fair.lag));
    }
    // The writer runs even while the log is off, so switching it on later needs nothing else.
    state.access_log.set_mode(args.access_log);
    state.access_log.spawn_writer(tokio::io::stdout());
    let ready = Arc::new(AtomicBool::new(false));

    // Probes answer from the start: live as soon as the programs are attached, ready once the
    // node has been reconciled to a complete registry.
    let admin = match inherited.admin.take() {
        Some(fd) => Inherited::listener(fd).context("admin listener handed over")?,
        None => TcpListener::bind(args.admin).await.with_context(|| format!("admin address {}", args.admin))?,
    };
    let admin_fd = admin.as_fd().try_clone_to_owned().context("admin listener")?;
    let published = Arc::new(crate::admin::dump::Published::default());
    let admin_state = crate::admin::Admin {
        state: state.clone(),
        kernel: bpf.clone(),
        ready: ready.clone(),
        published: published.clone(),
    };
    tokio::spawn(crate::admin::serve(admin_state, admin));

    let mut updates = match args.config.clone() {
        Some(dir) => Some(crate::config::watch::spawn_watcher(dir)?),
        None => None,
    };
    let mut node = NodeReconciler::new(state.clone(), bpf.clone(), args.ingress_bind, inherited, published);
    node.prune_enrollments = readopted;
    let mut server: Option<handover::Server> = None;
    // Outcome of a handover in progress: true once the successor is ready.
    let (handed_over_tx, mut handed_over) = tokio::sync::mpsc::channel::<bool>(1);
    let mut handovers_pending = 0usize;
    let mut stop_requested = false;
    // The files as found at start; a bad object among them is rejected, the rest served.
    node.admission_candidate = Some(sources.merged());
    let initial = registries.borrow_and_update().clone();
    // The adopted programs serve on the same maps until this agent's own are swapped in, which
    // happens once it is ready, so the verifier's time never delays a take-over; a successor's
    // offer waits for it, so that its own swap cannot be overtaken by ours.
    let mut replacing: Option<tokio::task::JoinHandle<()>> = None;
    let mut replace_when_ready = |replacing: &mut Option<tokio::task::JoinHandle<()>>| {
        if std::mem::take(&mut replace_programs) {
            *replacing = Some(spawn_replace_programs(&args, pins.as_ref(), bpf.clone()));
        }
    };
    if let Some(registry) = initial {
        node.apply_registry(registry).await;
        ready.store(true, Ordering::Relaxed);
        became_ready(&args, &mut node, &mut predecessor, &mut server);
        replace_when_ready(&mut replacing);
    } else {
        tracing::info!("waiting for the first complete list of Services, EndpointSlices, Pods and Namespaces");
    }
    let mut registry_open = true;
    let mut successor = false;
    let mut retry = tokio::time::interval(ENROLL_RETRY);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        // Every change of the files or the API objects is admitted object by object.
        let mut candidate = false;
        tokio::select! {
            changed = registries.changed(), if registry_open => {
                if changed.is_err() {
                    // Standalone mode: the one registry has been applied; nothing more will come.
                    registry_open = false;
                    continue;
                }
                let registry = registries.borrow_and_update().clone();
                if let Some(registry) = registry {
                    node.apply_registry(registry).await;
                    ready.store(true, Ordering::Relaxed);
                    became_ready(&args, &mut node, &mut predecessor, &mut server);
                    replace_when_ready(&mut replacing);
                }
            }
            conn = async { match &server { Some(s) => s.accept().await, None => std::future::pending().await } } => {
                if let Some(swap) = replacing.take() {
                    let _ = swap.await;
                }
                match conn.and_then(|c| Ok((c, offer(&node, &bpf, &admin_fd, args.map_layout())?))) {
                    Ok((stream, offer)) => {
                        handovers_pending += 1;
                        hand_over(stream, offer, handed_over_tx.clone());
                    }
                    Err(e) => tracing::warn!(error = %e, "handover request failed"),
                }
            }
            Some(ready) = handed_over.recv() => {
                handovers_pending = handovers_pending.saturating_sub(1);
                if ready {
                    successor = true;
                    break;
                }
                if stop_requested && handovers_pending == 0 {
                    break;
                }
            }
            Some(update) = async { match updates.as_mut() { Some(u) => u.recv().await, None => std::future::pending().await } } => {
                match update {
                    Ok(dir) => { sources.dir = dir; candidate = true; }
                    Err(errors) => node.config_unreadable(&errors),
                }
            }
            changed = async { match crds.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                let docs = match (changed, crds.as_mut()) {
                    (Ok(()), Some(rx)) => rx.borrow_and_update().clone(),
                    _ => { crds = None; None }
                };
                if let Some(docs) = docs {
                    sources.crds = docs;
                    candidate = true;
                }
            }
            changed = async { match gateway_api.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                let docs = match (changed, gateway_api.as_mut()) {
                    (Ok(()), Some(rx)) => rx.borrow_and_update().clone(),
                    _ => { gateway_api = None; None }
                };
                if let Some(docs) = docs {
                    sources.gateway_api = docs;
                    candidate = true;
                }
            }
            _ = retry.tick(), if node.has_failed() => node.retry_failed().await,
            _ = &mut shutdown, if !stop_requested => {
                // A successor holding our maps may be about to say ready: unenrolling now would
                // unenroll its pods too. Wait for the outcome (the kubelet's SIGTERM to the old
                // pod can race the new pod's readiness, which either agent may answer).
                if handovers_pending == 0 {
                    break;
                }
                tracing::info!("SIGTERM during a handover: waiting for the new agent before draining");
                stop_requested = true;
            }
        }
        if candidate {
            node.apply_config(sources.merged()).await;
        }
    }
    if successor {
        // The maps, links and listening sockets are the successor's now (it holds duplicates):
        // leave the enrollments alone, just stop accepting and finish what is in flight.
        tracing::info!("the new agent is ready: stopping accepting, draining");
        if let Some(s) = server.take() {
            s.leave_file();
        }
        drop(node);
    } else {
        // No successor: pods' connects must stop landing here first (unenrolled, they go to
        // their original destination), then every listener stops accepting and connections drain.
        tracing::info!("shutting down: unenrolling pods, draining connections");
        drop(server);
        node.unenroll_all();
        drop(node);
        // The programs detach once the last descriptor closes, which a pin would prevent.
        if let Some(p) = &pins {
            p.remove();
        }
    }
    drain(&state, args.drain_timeout).await;
    tracing::info!("exiting; eBPF programs are detached unless a successor holds them");
    drop(state);
    // The proxy tasks hold clones of the Arc; the programs are detached when the last goes,
    // which is at the latest when the runtime is dropped as the process returns from main.
    Ok(())
}

/// The registry snapshots the node is reconciled to: the YAML files once, or the API server's
/// view as it changes.
fn registry_source(args: &AgentArgs, client: Option<kube::Client>) -> Result<watch::Receiver<Option<Arc<Registry>>>> {
    let Some(client) = client else {
        let registry = Registry::from_yaml_files(&args.registry)?;
        let (_tx, rx) = watch::channel(Some(Arc::new(registry)));
        return Ok(rx);
    };
    let node = args.node_name.clone().context("--node-name (or NODE_NAME) is required with --kubernetes")?;
    let layout = KubeletLayout {
        cgroup_root: args.kubelet_cgroup_root.clone().unwrap_or_else(|| args.cgroup_root.clone()),
        proc_root: args.proc_root.clone(),
    };
    tracing::info!(%node, kubelet_cgroup_root = %layout.cgroup_root.display(), "discovering from the Kubernetes API server");
    let options = KubeOptions { node, retry: Duration::from_millis(250) };
    Ok(discovery::kube::spawn(client, options, Arc::new(layout)))
}

/// Where routing config comes from: the --config directory as last read (bad documents
/// included, as rejects), the Istio objects and the Gateway API objects from the API server.
struct ConfigSources {
    dir: Config,
    crds: discovery::istio::Documents,
    gateway_api: discovery::istio::Documents,
}

impl ConfigSources {
    /// The files, then the API objects (an object replaces a file document of the same name).
    fn merged(&self) -> Config {
        let mut config = self.dir.clone();
        for (source, text) in self.crds.iter().chain(self.gateway_api.iter()) {
            let skipped = config.skipped.len();
            // A bad object is recorded in `config.rejected`; admission decides what to keep.
            let _ = config.add_str(source, text);
            // A watched kind the admission does not act on yet (Gateway, GatewayClass) is
            // skipped there, as in a file; said at debug level, since it recurs on every merge.
            for note in config.skipped.get(skipped..).unwrap_or_default() {
                tracing::debug!(%source, %note, "API object skipped by admission");
            }
        }
        config
    }
}

fn initial_config(args: &AgentArgs) -> Config {
    let Some(dir) = args.config.as_ref() else { return Config::default() };
    match Config::load_dir_all(dir) {
        Ok(c) => c,
        Err(errors) => {
            // Nothing to fall back on yet: serve plain Kubernetes routing until the directory
            // can be read (the watcher delivers it then).
            tracing::error!(dir = %dir.display(), "cannot read the routing config directory; serving plain Kubernetes routing:\n{errors}");
            Config::default()
        }
    }
}

/// What Istio's `Telemetry` resources say about the access log of each pod on this node, with the
/// `--access-log` flag standing for Istio's default provider (`meshConfig.accessLogFile`); None
/// when no Telemetry has `accessLogging` (the flag alone decides, nothing to look up per request).
fn access_log_overrides(
    config: &Config,
    registry: &Registry,
    state: &ProxyState,
) -> Option<proxy::access_log::WorkloadOverrides> {
    use crate::config::telemetry::{access_log_providers, ENVOY_PROVIDER};
    if !config.telemetries.iter().any(|t| !t.spec.access_logging.is_empty()) {
        return None;
    }
    let defaults: &[&str] =
        if state.access_log.mode() == proxy::access_log::AccessLogMode::Off { &[] } else { &[ENVOY_PROVIDER] };
    let mut map = proxy::access_log::WorkloadOverrides::new();
    for w in registry.workloads.iter().filter(|w| w.enroll && w.netns.is_some()) {
        let on = access_log_providers(config, w, defaults).contains(ENVOY_PROVIDER);
        map.entry(w.namespace.clone()).or_default().insert(w.name.clone(), on);
    }
    Some(map)
}

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
struct NodeReconciler {
    state: Arc<ProxyState>,
    bpf: Arc<MeshEbpf>,
    pods: enrollment::Enrollments<KernelMap, InPodListeners>,
    nodeports: ListenerSet<NodePortTarget>,
    gateways: ListenerSet<GatewayRef>,
    /// Routing objects admitted one by one; a rejected object keeps its last good version.
    admission: Admission,
    /// A config that arrived before the first registry, admitted with it.
    admission_candidate: Option<Config>,
    /// Listening sockets handed over by a predecessor, claimed as the node is reconciled.
    inherited: Inherited,
    /// The enrollment map was re-adopted from pins: after the first reconcile, remove the
    /// cgroups of pods that left while no agent ran.
    prune_enrollments: bool,
    /// The live config and enrolled pods, for `/config_dump`.
    published: Arc<crate::admin::dump::Published>,
}

impl NodeReconciler {
    fn new(
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
    fn inherited_done(&mut self) {
        self.inherited = Inherited::default();
        self.pods.inherited_done();
        self.nodeports.inherited_done();
        self.gateways.inherited_done();
    }

    /// Duplicates of every listening socket, with what it is.
    fn export(&self) -> std::io::Result<Vec<(Role, OwnedFd)>> {
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

    async fn apply_registry(&mut self, registry: Arc<Registry>) {
        self.state.registry.store(registry.clone());
        // The first registry also brings the config read at start; later ones recompile the
        // objects live now against the new services and pods.
        let candidate = self.admission_candidate.take().unwrap_or_else(|| self.admission.live().clone());
        self.admit(candidate, &registry);
        if let Err(e) = self.bpf.sync_services(&service_map(&registry)) {
            tracing::error!(error = %e, "cannot update the service VIP map");
        }
        self.reconcile_enrollment();
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
    async fn apply_config(&mut self, candidate: Config) {
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
    fn config_unreadable(&self, errors: &crate::config::ConfigErrors) {
        self.state.metrics.inc("mesh_config_reloads_total", &[("result", "failed")]);
        tracing::error!("cannot read the routing config directory; the live config stays:\n{errors}");
    }

    /// Something to retry: a pod that could not be enrolled, a port that could not be bound.
    fn has_failed(&self) -> bool {
        self.pods.has_failed() || self.nodeports.has_failed() || self.gateways.has_failed()
    }

    /// Retries what failed (see [`NodeReconciler::has_failed`]).
    async fn retry_failed(&mut self) {
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

    fn unenroll_all(&mut self) {
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
    /// Gateways come and go with config reloads. Two Gateways on one port: the first listed
    /// gets it, the other is warned about.
    async fn reconcile_gateways(&mut self) {
        let mut wanted: HashMap<u16, GatewayRef> = HashMap::new();
        for gw in self.state.routes.load().gateways() {
            let want = GatewayRef { name: gw.name, namespace: gw.namespace };
            match wanted.get(&gw.port) {
                Some(other) if *other != want => {
                    tracing::warn!(gateway = %want, port = gw.port, serving = %other, "port already served by another Gateway");
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

/// Once the node is reconciled for the first time: inherited descriptors nobody claimed are
/// closed, the predecessor (if any) is told to drain, and this agent listens for its own successor.
fn became_ready(
    args: &AgentArgs,
    node: &mut NodeReconciler,
    predecessor: &mut Option<handover::Predecessor>,
    server: &mut Option<handover::Server>,
) {
    if server.is_some() {
        return;
    }
    node.inherited_done();
    if let Some(p) = predecessor.take() {
        match p.ready() {
            Ok(()) => tracing::info!("took over from the previous agent; it is draining"),
            Err(e) => tracing::warn!(error = %e, "cannot tell the previous agent to drain (gone already?)"),
        }
    }
    match handover::Server::bind(&args.handover_socket) {
        Ok(s) => {
            tracing::info!(socket = %s.path().display(), "ready to hand over to a successor");
            *server = Some(s);
        }
        Err(e) => tracing::warn!(error = %e, "no hitless handover possible: cannot listen for a successor"),
    }
}

/// Runs this agent's programs behind the links of a predecessor of another layout (see
/// [`MeshEbpf::migrate_and_take_over`]).
fn migrate_and_take_over(
    args: &AgentArgs,
    pins: Option<&ebpf_pin::PinDir>,
    maps: &std::collections::HashMap<String, OwnedFd>,
    links: &[(String, OwnedFd)],
    theirs: u32,
) -> Result<MeshEbpf> {
    let object = ebpf::find_object(args.ebpf_object.as_deref())?;
    let scratch = ebpf_pin::scratch_root(pins);
    Ok(MeshEbpf::migrate_and_take_over(
        &object,
        maps,
        links,
        (theirs, args.map_layout()),
        scratch.as_deref(),
        &args.cgroup_root,
    )?)
}

/// Swaps this agent's programs in behind the links it adopted, in the background (see
/// [`MeshEbpf::replace_programs`]); on failure the adopted programs stay, which is logged.
fn spawn_replace_programs(
    args: &AgentArgs,
    pins: Option<&ebpf_pin::PinDir>,
    bpf: Arc<MeshEbpf>,
) -> tokio::task::JoinHandle<()> {
    let object = ebpf::find_object(args.ebpf_object.as_deref());
    let pins = pins.cloned();
    tokio::spawn(async move {
        let replaced = tokio::task::spawn_blocking({
            let bpf = bpf.clone();
            move || -> Result<()> {
                let scratch = ebpf_pin::scratch_root(pins.as_ref())
                    .context("no bpffs to share the maps with this agent's programs")?;
                Ok(bpf.replace_programs(&object?, &scratch)?)
            }
        })
        .await;
        match replaced {
            Ok(Ok(())) => {
                if let Err(e) = bpf.forward_kernel_logs() {
                    tracing::warn!(error = %e, "kernel log records are not forwarded");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot run this agent's eBPF programs behind the adopted links: the previous agent's programs stay")
            }
            Err(e) => {
                tracing::warn!(error = %e, "replacing the eBPF programs panicked: the previous agent's programs stay")
            }
        }
    })
}

/// Re-adopts what an agent that died without a successor left pinned: its links and maps (of
/// this layout, true; this agent's programs are swapped in later), or its links with this
/// agent's programs on fresh maps its entries were migrated into (another layout this version
/// migrates from, false). None when nothing usable is pinned.
fn readopt_pinned(args: &AgentArgs, pins: &ebpf_pin::PinDir) -> Result<Option<(MeshEbpf, bool)>> {
    let ours = args.map_layout();
    for layout in std::iter::once(ours).chain(pins.other_layouts()) {
        let names: Vec<&str> = match layout == ours {
            true => ebpf::SHARED_MAPS.to_vec(),
            false => ebpf::SHARED_MAPS.into_iter().filter(|m| ebpf_upgrade::can_migrate_map(layout, m)).collect(),
        };
        if names.is_empty() {
            continue;
        }
        let Some((maps, links)) = pins.load_layout(layout, &names, &ebpf::LINKED_PROGRAMS)? else { continue };
        let adopted = match layout == ours {
            true => MeshEbpf::adopt(maps, links, &args.cgroup_root).map_err(anyhow::Error::from),
            false => migrate_and_take_over(args, Some(pins), &maps, &links, layout),
        };
        match adopted {
            Ok(b) => {
                tracing::info!(layout, "re-adopted the eBPF links and maps pinned by a previous agent");
                // The links are pinned again under our layout; the other sets' pins go (a link
                // whose last pin goes and that no process holds detaches).
                pins.remove_other_layouts(false);
                return Ok(Some((b, layout == ours)));
            }
            Err(e) => tracing::warn!(layout, error = %format!("{e:#}"), "cannot re-adopt the pinned eBPF state"),
        }
    }
    Ok(None)
}

/// Everything a successor needs: every listening socket, and the eBPF maps and links.
fn offer(node: &NodeReconciler, bpf: &MeshEbpf, admin: &OwnedFd, layout: u32) -> std::io::Result<handover::Offer> {
    let mut items = node.export()?;
    items.push((Role::Admin, admin.try_clone()?));
    items.extend(bpf.export().map_err(std::io::Error::other)?);
    Ok(handover::Offer { map_layout: layout, items })
}

/// Sends the offer and waits (in the background: this agent keeps serving) for the successor
/// to say it is ready; then the main loop is told to drain.
fn hand_over(stream: std::os::unix::net::UnixStream, offer: handover::Offer, done: tokio::sync::mpsc::Sender<bool>) {
    tokio::spawn(async move {
        let descriptors = offer.items.len();
        let sent = tokio::task::spawn_blocking(move || handover::send(&stream, &offer).map(|()| stream)).await;
        let stream = match sent {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "handover to a new agent failed; carrying on");
                let _ = done.send(false).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "handover thread failed; carrying on");
                let _ = done.send(false).await;
                return;
            }
        };
        tracing::info!(descriptors, "handed listeners and eBPF objects to a new agent; serving until it is ready");
        if handover::wait_ready(stream).await {
            let _ = done.send(true).await;
        } else {
            tracing::warn!("the new agent went away before it was ready; carrying on");
            let _ = done.send(false).await;
        }
    });
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

/// Stops every listener and waits for in-flight connections, at most `deadline`.
async fn drain(state: &ProxyState, deadline: Duration) {
    state.drain.start();
    let active = state.drain.active();
    if active > 0 {
        // Each listener counts too until it has taken what the kernel had queued.
        tracing::info!(connections_and_listeners = active, deadline = ?deadline, "draining in-flight connections");
    }
    let left = state.drain.wait_idle(deadline).await;
    if left > 0 {
        tracing::warn!(connections = left, "drain deadline reached; closing the remaining connections");
    } else {
        tracing::info!("drained");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers we could not clean up; wait forever like a plain server would.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AppProtocol, Service, ServicePort, TargetPort};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn telemetry_access_logging_decides_per_pod_with_the_flag_as_the_default_provider() {
        let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: logs, namespace: default}\nspec:\n  selector: {matchLabels: {app: productpage}}\n  accessLogging:\n  - providers: [{name: envoy}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: quiet, namespace: default}\nspec:\n  selector: {matchLabels: {app: ratings}}\n  accessLogging:\n  - disabled: true\n";
        let config = Config::parse_str("telemetry.yaml", yaml).expect("telemetry parses");
        let pod = |name: &str, app: &str| {
            let mut w = Workload::external(Ipv4Addr::new(10, 0, 0, 1), "default");
            w.name = name.into();
            w.labels = [("app".to_string(), app.to_string())].into_iter().collect();
            w.enroll = true;
            w.netns = Some("/run/netns/x".into());
            Arc::new(w)
        };
        let registry = Registry {
            workloads: vec![
                pod("productpage-v1", "productpage"),
                pod("ratings-v1", "ratings"),
                pod("details-v1", "details"),
            ],
            ..Registry::default()
        };
        struct NoOriginalDst;
        impl proxy::OriginalDst for NoOriginalDst {
            fn take(&self, _: u64, _: std::net::SocketAddrV4) -> Option<std::net::SocketAddrV4> {
                None
            }
        }
        let state = ProxyState::new(registry.clone(), RouteTable::kubernetes_only(&registry), Arc::new(NoOriginalDst));
        let on = |state: &ProxyState| {
            let o = access_log_overrides(&config, &registry, state).expect("a Telemetry has accessLogging");
            let mut v: Vec<(String, bool)> = o["default"].iter().map(|(k, v)| (k.clone(), *v)).collect();
            v.sort();
            v
        };
        // --access-log off (Istio's default: no default provider): only the selected pod logs.
        assert_eq!(
            on(&state),
            [("details-v1".into(), false), ("productpage-v1".into(), true), ("ratings-v1".into(), false)]
        );
        // --access-log text (meshConfig.accessLogFile set): everyone but the pod turned off.
        state.access_log.set_mode(proxy::access_log::AccessLogMode::Text);
        assert_eq!(
            on(&state),
            [("details-v1".into(), true), ("productpage-v1".into(), true), ("ratings-v1".into(), false)]
        );
        assert!(access_log_overrides(&Config::default(), &registry, &state).is_none());
    }

    /// Gateway API objects from the API server go through the files' admission: an HTTPRoute is
    /// admitted beside the files' documents, a kind the admission does not act on is skipped
    /// (not rejected), and `--gateway-api` is on by default.
    #[test]
    fn gateway_api_objects_are_merged_through_the_same_admission() {
        use clap::Parser as _;
        let mut dir = Config::default();
        dir.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n").expect("file");
        let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n";
        let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: mesh}\nspec: {controllerName: example.com/mesh}\n";
        let tls = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: ns}\nspec: {}\n";
        let sources = ConfigSources {
            dir,
            crds: Arc::default(),
            gateway_api: Arc::new(vec![
                ("k8s:GatewayClass/mesh".into(), class.into()),
                ("k8s:HTTPRoute/ns/r".into(), route.into()),
                ("k8s:TLSRoute/ns/t".into(), tls.into()),
            ]),
        };
        let merged = sources.merged();
        assert_eq!(merged.virtual_services.len(), 1);
        assert_eq!(merged.http_routes.len(), 1);
        assert!(merged.rejected.is_empty());
        assert_eq!(merged.gateway_classes.len(), 1, "GatewayClass admitted");
        assert!(merged.skipped.iter().any(|s| s.contains("TLSRoute")), "{:?}", merged.skipped);
        let on = Cli::try_parse_from(["mesh", "--registry", "r.yaml"]).expect("parse");
        assert_eq!(on.agent.gateway_api, Switch::On);
        let off = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--gateway-api", "off"]).expect("parse");
        assert_eq!(off.agent.gateway_api, Switch::Off);
    }

    #[test]
    fn request_metrics_flag_defaults_on_and_turns_off() {
        use clap::Parser as _;
        let on = Cli::try_parse_from(["mesh", "--registry", "r.yaml"]).expect("parse");
        assert_eq!(on.agent.request_metrics, Switch::On);
        let off = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--request-metrics", "off"]).expect("parse");
        assert_eq!(off.agent.request_metrics, Switch::Off);
        assert!(Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--request-metrics", "maybe"]).is_err());
        assert_eq!(on.agent.access_log, proxy::access_log::AccessLogMode::Off);
        let json = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--access-log", "json"]).expect("parse");
        assert_eq!(json.agent.access_log, proxy::access_log::AccessLogMode::Json);
    }

    #[test]
    fn limit_flags_default_to_envoys_values_and_each_reaches_the_proxy_limits() {
        use clap::Parser as _;
        let defaults = Cli::try_parse_from(["mesh", "--registry", "r.yaml"]).expect("parse").agent.limits();
        assert_eq!(defaults, proxy::Limits::default(), "the flags' defaults are the proxy's");
        let set = Cli::try_parse_from([
            "mesh",
            "--registry",
            "r.yaml",
            "--idle-timeout",
            "90s",
            "--max-request-headers-kb",
            "16",
            "--max-request-headers-count",
            "20",
            "--http2-max-concurrent-streams",
            "7",
            "--request-max-buffered-body",
            "64Ki",
            "--request-headers-timeout",
            "5s",
            "--request-body-timeout",
            "1m",
            "--source-max-connections",
            "3",
            "--source-max-requests",
            "4",
            "--source-max-buffered-body",
            "2Mi",
        ])
        .expect("parse")
        .agent
        .limits();
        assert_eq!(
            set,
            proxy::Limits {
                request_headers_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(90),
                max_request_headers_bytes: 16 * 1024,
                max_request_headers_count: 20,
                http2_max_concurrent_streams: 7,
                max_buffered_body: 64 * 1024,
                request_body_idle_timeout: Duration::from_secs(60),
                per_source_max_buffered_body: 2 << 20,
                per_source_max_connections: 3,
                per_source_max_requests: 4,
                // Derived from this machine's cgroup (overload.rs has its own tests).
                memory_budget: set.memory_budget,
            }
        );
        // The old plain-bytes spelling still works.
        let plain = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--source-max-buffered-body", "1000"]);
        assert_eq!(plain.expect("parse").agent.source_max_buffered_body, 1000);
    }

    #[test]
    fn zero_or_absurd_limit_flags_are_usage_errors_naming_the_flag() {
        use clap::Parser as _;
        for (flag, value) in [
            ("--idle-timeout", "0"),
            ("--idle-timeout", "0s"),
            ("--idle-timeout", "1y"),
            ("--max-request-headers-kb", "0"),
            ("--max-request-headers-kb", "8193"),
            ("--max-request-headers-kb", "4294967296"),
            ("--max-request-headers-count", "0"),
            ("--max-request-headers-count", "1001"),
            ("--http2-max-concurrent-streams", "0"),
            ("--http2-max-concurrent-streams", "2147483648"),
            ("--request-max-buffered-body", "0"),
            ("--request-max-buffered-body", "5Gi"),
            ("--request-max-buffered-body", "1.5Mi"),
            ("--request-max-buffered-body", "1MB"),
            ("--source-max-buffered-body", "0"),
            ("--source-max-connections", "0"),
            ("--source-max-connections", "1048577"),
            ("--source-max-requests", "-1"),
            ("--request-headers-timeout", "0ms"),
        ] {
            // `--flag=value`: a separate "-1" would be read as an unknown flag, not as the value.
            let Err(e) = Cli::try_parse_from(["mesh", "--registry", "r.yaml", &format!("{flag}={value}")]) else {
                panic!("{flag} {value} must be refused");
            };
            // What `mesh agent` does with it: print and exit 2 (clap's usage error).
            assert_eq!(e.exit_code(), 2, "{flag} {value}");
            let msg = e.to_string();
            assert!(msg.contains(flag), "{flag} {value}: the message names the flag: {msg}");
            assert!(msg.contains(value), "{flag} {value}: and the value: {msg}");
        }
    }

    fn service(
        name: &str,
        vip: [u8; 4],
        selector: &[(&str, &str)],
        ready_ips: Option<std::collections::BTreeSet<Ipv4Addr>>,
    ) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            namespace: "default".into(),
            cluster_ip: Some(Ipv4Addr::from(vip)),
            ports: vec![ServicePort {
                name: None,
                port: 443,
                target_port: TargetPort::Number(6443),
                node_port: None,
                protocol: AppProtocol::Tcp,
            }],
            selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ready_ips,
            ..Default::default()
        })
    }

    #[test]
    fn selectorless_vips_are_captured_only_when_endpoint_slices_say_where_they_go() {
        let key = |vip: [u8; 4]| ServiceKey { ip4: u32::from(Ipv4Addr::from(vip)).to_be(), port: 443, _pad: 0 };
        let standalone = Registry {
            services: vec![
                service("web", [10, 96, 0, 5], &[("app", "web")], None),
                service("kubernetes", [10, 96, 0, 1], &[], None),
            ],
            workloads: Vec::new(),
            ..Default::default()
        };
        let m = service_map(&standalone);
        assert!(m.contains_key(&key([10, 96, 0, 5])));
        assert!(
            !m.contains_key(&key([10, 96, 0, 1])),
            "no EndpointSlices in a registry file: leave the VIP to kube-proxy"
        );
        let kubernetes_mode = Registry {
            services: vec![service("kubernetes", [10, 96, 0, 1], &[], Some(Default::default()))],
            workloads: Vec::new(),
            ..Default::default()
        };
        assert!(service_map(&kubernetes_mode).contains_key(&key([10, 96, 0, 1])));
    }
}
