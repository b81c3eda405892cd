//! `mesh agent`: the per-node process. Loads and attaches the eBPF programs, enrolls the node's
//! pods (listener in the pod's netns first, then the cgroup in the enrollment map, so a redirect
//! never lands on nothing), publishes service VIPs to the kernel, runs the proxy, reloads routing
//! config, and detaches everything on SIGINT/SIGTERM.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context as _, Result};
use clap::Args;
use http::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_common::{Enrollment, ServiceKey, ServiceValue, PROXY_OUTBOUND_PORT};
use tokio::net::TcpListener;

use crate::{
    config::Config,
    ebpf::{self, MeshEbpf},
    inpod,
    proxy::{self, http::full, ProxyState},
    registry::Registry,
    routing::RouteTable,
};

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Kubernetes YAML with the node's Services and Pods (standalone mode). Repeatable.
    #[arg(long, required = true)]
    pub registry: Vec<PathBuf>,
    /// Directory of Istio routing YAML (a mounted ConfigMap); watched and hot reloaded.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Compiled eBPF object (default: $MESH_EBPF_OBJECT, next to the binary, or target/mesh-ebpf.o).
    #[arg(long)]
    pub ebpf_object: Option<PathBuf>,
    /// cgroup v2 directory the programs attach to; every enrolled pod must be below it.
    #[arg(long, default_value = "/sys/fs/cgroup/unified")]
    pub cgroup_root: PathBuf,
    /// Health, readiness and Prometheus metrics (`/healthz`, `/ready`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub admin: SocketAddr,
    /// Address the node-level ingress listeners (NodePorts, Gateway ports) bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub ingress_bind: IpAddr,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let registry = Registry::from_yaml_files(&args.registry)?;
    let routes = initial_routes(&args, &registry);
    let object = ebpf::find_object(args.ebpf_object.as_deref())?;
    let bpf = Arc::new(MeshEbpf::load_and_attach(&object, &args.cgroup_root)?);
    // SAFETY: malloc_trim has no preconditions. Loading parsed the kernel's BTF (megabytes, now freed); return it.
    unsafe { libc::malloc_trim(0) };
    let state = ProxyState::new(registry.clone(), routes, bpf.clone());

    let mut enrolled = Vec::new();
    for (index, workload) in registry.workloads.iter().enumerate() {
        let (Some(netns), Some(cgroup)) = (&workload.netns, &workload.cgroup) else {
            tracing::debug!(pod = %workload.name, "no netns/cgroup annotation: not on this node");
            continue;
        };
        if !workload.enroll {
            tracing::info!(pod = %workload.name, "opted out of the mesh");
            continue;
        }
        let listener = inpod::listen_in_netns(netns, SocketAddr::from((Ipv4Addr::LOCALHOST, PROXY_OUTBOUND_PORT)))?;
        let cookie = ebpf::netns_cookie_of(&listener).context("reading the pod netns cookie (needs Linux >= 5.14)")?;
        let listener = TcpListener::from_std(listener)?;
        tokio::spawn(proxy::serve_pod_listener(state.clone(), workload.clone(), listener, cookie));
        let id = ebpf::cgroup_id(cgroup).with_context(|| format!("pod {}: cgroup {}", workload.name, cgroup.display()))?;
        bpf.enroll(id, Enrollment { workload_id: index as u32, proxy_port: PROXY_OUTBOUND_PORT, _pad: 0 })?;
        tracing::info!(pod = %workload.name, cgroup_id = id, netns = %netns.display(), "pod enrolled");
        enrolled.push(id);
    }
    bpf.sync_services(&service_map(&registry))?;

    for service in &registry.services {
        for port in &service.ports {
            let Some(node_port) = port.node_port else { continue };
            let addr = SocketAddr::new(args.ingress_bind, node_port);
            let l = TcpListener::bind(addr).await.with_context(|| format!("NodePort {addr} for {}", service.name))?;
            tracing::info!(service = %service.name, %addr, "NodePort listening");
            tokio::spawn(proxy::serve_nodeport(state.clone(), l, service.clone(), port.port));
        }
    }
    let mut gateways = GatewayListeners { bind: args.ingress_bind, running: HashMap::new() };
    gateways.reconcile(&state).await;

    if let Some(dir) = args.config.clone() {
        let mut updates = crate::config::watch::spawn_watcher(dir.clone())?;
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(update) = updates.recv().await {
                if apply_config(&state, update) {
                    gateways.reconcile(&state).await;
                }
            }
        });
    }

    let admin = TcpListener::bind(args.admin).await.with_context(|| format!("admin address {}", args.admin))?;
    tokio::spawn(serve_admin(state.clone(), bpf.clone(), admin));
    tracing::info!(admin = %args.admin, pods = enrolled.len(), services = registry.services.len(), "mesh agent ready");

    shutdown_signal().await;
    tracing::info!("shutting down: unenrolling pods and detaching eBPF programs");
    for id in enrolled {
        let _ = bpf.unenroll(id);
    }
    drop(state);
    // The proxy tasks hold clones of the Arc; the programs are detached when the last goes,
    // which is at the latest when the runtime is dropped as the process returns from main.
    Ok(())
}

fn initial_routes(args: &AgentArgs, registry: &Registry) -> RouteTable {
    let Some(dir) = &args.config else { return RouteTable::kubernetes_only(registry) };
    match Config::load_dir(dir).and_then(|c| RouteTable::compile(&c, registry)) {
        Ok(t) => t,
        Err(errors) => {
            // No last good config exists yet: serve plain Kubernetes routing rather than nothing.
            tracing::error!(dir = %dir.display(), "routing config rejected at start, serving plain Kubernetes routing:\n{errors}");
            RouteTable::kubernetes_only(registry)
        }
    }
}

/// Compiles and swaps in a new config; returns whether it was applied.
fn apply_config(state: &ProxyState, update: Result<Config, crate::config::ConfigErrors>) -> bool {
    let compiled = update.and_then(|c| RouteTable::compile(&c, &state.registry.load()));
    match compiled {
        Ok(table) => {
            state.routes.store(Arc::new(table));
            state.metrics.inc("mesh_config_reloads_total", &[("result", "applied")]);
            tracing::info!("routing config reloaded");
            true
        }
        Err(errors) => {
            state.metrics.inc("mesh_config_reloads_total", &[("result", "rejected")]);
            tracing::error!("routing config rejected, the previous config stays live:\n{errors}");
            false
        }
    }
}

/// Ingress listeners for the ports of the Gateways in the live config, opened and closed as
/// Gateways come and go with config reloads.
struct GatewayListeners {
    bind: IpAddr,
    running: HashMap<u16, (String, String, tokio::task::JoinHandle<()>)>,
}

impl GatewayListeners {
    async fn reconcile(&mut self, state: &Arc<ProxyState>) {
        let wanted = state.routes.load().gateways();
        let keep = |port: u16, name: &str, ns: &str| wanted.iter().any(|g| g.port == port && g.name == name && g.namespace == ns);
        let stale: Vec<u16> = self.running.iter().filter(|(p, (n, ns, _))| !keep(**p, n, ns)).map(|(p, _)| *p).collect();
        for port in stale {
            if let Some((name, _, task)) = self.running.remove(&port) {
                task.abort();
                tracing::info!(gateway = %name, port, "Gateway listener closed");
            }
        }
        for gw in wanted {
            if let Some((other, _, _)) = self.running.get(&gw.port) {
                if *other != gw.name {
                    tracing::warn!(gateway = %gw.name, port = gw.port, serving = %other, "port already served by another Gateway");
                }
                continue;
            }
            let addr = SocketAddr::new(self.bind, gw.port);
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(gateway = %gw.name, %addr, "Gateway listening");
                    let task = tokio::spawn(proxy::serve_gateway(state.clone(), l, gw.name.clone(), gw.namespace.clone(), gw.port));
                    self.running.insert(gw.port, (gw.name.clone(), gw.namespace.clone(), task));
                }
                Err(e) => tracing::error!(gateway = %gw.name, %addr, error = %e, "cannot listen for Gateway"),
            }
        }
    }
}

/// Every ClusterIP:port the kernel must capture.
pub fn service_map(registry: &Registry) -> HashMap<ServiceKey, ServiceValue> {
    let mut m = HashMap::new();
    for (i, s) in registry.services.iter().enumerate() {
        let Some(ip) = s.cluster_ip else { continue };
        for p in &s.ports {
            m.insert(ServiceKey { ip4: u32::from(ip).to_be(), port: p.port, _pad: 0 }, ServiceValue { service_id: i as u32 });
        }
    }
    m
}

async fn serve_admin(state: Arc<ProxyState>, bpf: Arc<MeshEbpf>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        let bpf = bpf.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let state = state.clone();
                let bpf = bpf.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/healthz" | "/ready" => Response::new(full("ok\n")),
                        "/metrics" => {
                            let k = bpf.stats();
                            Response::new(full(state.metrics.render(&[
                                ("mesh_kernel_connects_seen_total", k.connects_seen),
                                ("mesh_kernel_connects_redirected_total", k.connects_redirected),
                                ("mesh_kernel_connections_indexed_total", k.established_indexed),
                            ])))
                        }
                        _ => {
                            let mut r = Response::new(full("endpoints: /healthz /ready /metrics\n"));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
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
