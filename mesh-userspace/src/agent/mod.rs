//! `mesh agent`: the per-node process. Loads and attaches the eBPF programs, enrolls the node's
//! pods (listener in the pod's netns first, then the cgroup in the enrollment map, so a redirect
//! never lands on nothing), publishes service VIPs to the kernel, runs the proxy, reloads routing
//! config, and on SIGINT/SIGTERM unenrolls, drains and detaches everything. Started next to a
//! running agent it takes that agent's listeners and eBPF objects over instead (`handover`).
//!
//! [`run`] is a sequence of phases: the kernel objects ([`kernel`]), the sources of registry and
//! config ([`config_sources`]), the proxy and admin server, then [`Agent`]'s reconcile loop
//! (the node itself is made to match by [`node::NodeReconciler`]; handing over to a successor
//! is [`succession`]), and last the shutdown, handover or drain.
mod args;
mod config_sources;
mod kernel;
mod node;
mod succession;
#[cfg(test)]
mod tests;

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

pub use self::{
    args::{AgentArgs, Switch},
    node::service_map,
};
use self::{
    config_sources::{initial_config, take_documents, ConfigSources, Feeds},
    kernel::Kernel,
    node::NodeReconciler,
    succession::{became_ready, hand_over, offer},
};
use crate::{
    ebpf::MeshEbpf,
    ebpf_pin,
    handover::{self, Inherited},
    proxy::{self, ProxyState},
    registry::Registry,
    routing::RouteTable,
    settings::Settings,
};

/// How often enrollments that failed are tried again.
const ENROLL_RETRY: Duration = crate::settings::FIXED.enroll_retry;

/// Runs the agent until SIGTERM/SIGINT or until a successor has taken over, then drains and
/// returns: take over from a running agent or load the eBPF programs, then reconcile the node to
/// every registry and routing config that arrives (see ARCHITECTURE.md).
pub async fn run(args: AgentArgs) -> Result<()> {
    let mut kernel = kernel::start(&args).await?;
    let mut feeds = Feeds::start(&args).await?;
    let sources = ConfigSources {
        dir: initial_config(&args),
        crds: Arc::default(),
        gateway_api: Arc::default(),
        secrets: Arc::default(),
    };
    let settings = args.settings();
    let state = start_proxy(&args, &settings, &kernel.bpf);
    let admin = start_admin(&args, settings, &state, &kernel.bpf, &mut kernel.inherited).await?;
    feeds.updates = match args.config.clone() {
        Some(dir) => Some(crate::config::watch::spawn_watcher(dir)?),
        None => None,
    };
    let mut agent = Agent::new(args, kernel, state, admin, feeds, sources);
    agent.start_serving().await;
    let successor = agent.reconcile().await;
    agent.shut_down(successor).await;
    Ok(())
}

/// The proxy's shared state, configured from the flags, with its overload, fairness and access
/// log tasks running.
fn start_proxy(args: &AgentArgs, settings: &Settings, bpf: &Arc<MeshEbpf>) -> Arc<ProxyState> {
    let state = ProxyState::with_limits(
        Registry::default(),
        RouteTable::kubernetes_only(&Registry::default()),
        bpf.clone(),
        settings.limits.clone(),
    );
    state.request_metrics.store(args.request_metrics == Switch::On, Ordering::Relaxed);
    // kernel::start wrote the switch; the upstream leg joins only if that worked.
    if args.sk_msg_bypass && bpf.sk_msg_available() {
        state.sk_msg.enable(bpf.clone());
    }
    let origin = &settings.memory_budget_origin;
    tracing::info!(budget = settings.limits.memory_budget, ?origin, "memory budget");
    tokio::spawn(proxy::overload::run(state.clone()));
    let fair = settings.fair_share;
    state.fair.configure(&fair);
    if fair.enabled {
        tokio::spawn(proxy::fair::watch_lag(state.fair.clone(), fair.lag));
    }
    // The writer runs even while the log is off, so switching it on later needs nothing else.
    state.access_log.set_mode(args.access_log);
    state.access_log.spawn_writer(tokio::io::stdout());
    state
}

/// The admin server's handles the agent keeps.
struct AdminHandles {
    /// Set once the node has been reconciled to a complete registry (`/ready`).
    ready: Arc<AtomicBool>,
    /// A duplicate of the admin listener, for a successor.
    fd: OwnedFd,
    /// The live config and enrolled pods, for `/config_dump`.
    published: Arc<crate::admin::dump::Published>,
}

/// Serves health, readiness and metrics on the admin listener (the predecessor's, or bound).
async fn start_admin(
    args: &AgentArgs,
    settings: Settings,
    state: &Arc<ProxyState>,
    bpf: &Arc<MeshEbpf>,
    inherited: &mut Inherited,
) -> Result<AdminHandles> {
    let ready = Arc::new(AtomicBool::new(false));
    // Probes answer from the start: live as soon as the programs are attached, ready once the
    // node has been reconciled to a complete registry.
    let admin = match inherited.admin.take() {
        Some(fd) => Inherited::listener(fd).context("admin listener handed over")?,
        None => TcpListener::bind(args.admin).await.with_context(|| format!("admin address {}", args.admin))?,
    };
    let fd = admin.as_fd().try_clone_to_owned().context("admin listener")?;
    let published = Arc::new(crate::admin::dump::Published::new(settings));
    let admin_state = crate::admin::Admin {
        state: state.clone(),
        kernel: bpf.clone(),
        ready: ready.clone(),
        published: published.clone(),
    };
    tokio::spawn(crate::admin::serve(admin_state, admin));
    Ok(AdminHandles { ready, fd, published })
}

/// What the reconcile loop does after an event.
enum Flow {
    /// Nothing more.
    Continue,
    /// A config source changed: admit the merged config.
    Reconfigure,
    /// Leave the loop; true when a successor has taken over.
    Exit(bool),
}

/// The running agent: the node reconciler, the sources it watches, and the handover state.
struct Agent {
    args: AgentArgs,
    state: Arc<ProxyState>,
    bpf: Arc<MeshEbpf>,
    pins: Option<ebpf_pin::PinDir>,
    node: NodeReconciler,
    admin: AdminHandles,
    feeds: Feeds,
    sources: ConfigSources,
    /// The adopted programs are still to be replaced by this agent's (once it is ready).
    replace_programs: bool,
    /// The replacement in progress, which a successor's offer waits for.
    replacing: Option<JoinHandle<()>>,
    predecessor: Option<handover::Predecessor>,
    /// Listens for a successor once this agent is ready.
    server: Option<handover::Server>,
    /// Outcome of a handover in progress: true once the successor is ready.
    handed_over_tx: mpsc::Sender<bool>,
    handed_over: mpsc::Receiver<bool>,
    handovers_pending: usize,
    stop_requested: bool,
}

impl Agent {
    fn new(
        args: AgentArgs,
        kernel: Kernel,
        state: Arc<ProxyState>,
        admin: AdminHandles,
        feeds: Feeds,
        sources: ConfigSources,
    ) -> Agent {
        let Kernel { bpf, inherited, predecessor, pins, readopted, replace_programs } = kernel;
        let mut node =
            NodeReconciler::new(state.clone(), bpf.clone(), args.ingress_bind, inherited, admin.published.clone());
        node.prune_enrollments = readopted;
        let (handed_over_tx, handed_over) = mpsc::channel::<bool>(1);
        Agent {
            args,
            state,
            bpf,
            pins,
            node,
            admin,
            feeds,
            sources,
            replace_programs,
            replacing: None,
            predecessor,
            server: None,
            handed_over_tx,
            handed_over,
            handovers_pending: 0,
            stop_requested: false,
        }
    }

    /// Reconciles the node to the registry already there (a standalone file), else waits for
    /// the first; the config read at start is admitted with it.
    async fn start_serving(&mut self) {
        // The files as found at start; a bad object among them is rejected, the rest served.
        let config = self.sources.merged();
        self.feeds.want_secrets(&config);
        self.node.admission_candidate = Some(config);
        let initial = self.feeds.registries.borrow_and_update().clone();
        if let Some(registry) = initial {
            self.registry_arrived(registry).await;
        } else {
            tracing::info!("waiting for the first complete list of Services, EndpointSlices, Pods and Namespaces");
        }
    }

    /// Applies a complete registry; the first makes the agent ready (see [`became_ready`]).
    async fn registry_arrived(&mut self, registry: Arc<Registry>) {
        self.node.apply_registry(registry).await;
        self.admin.ready.store(true, Ordering::Relaxed);
        became_ready(&self.args, &mut self.node, &mut self.predecessor, &mut self.server);
        self.replace_when_ready();
    }

    /// The adopted programs serve on the same maps until this agent's own are swapped in, which
    /// happens once it is ready, so the verifier's time never delays a take-over; a successor's
    /// offer waits for it, so that its own swap cannot be overtaken by ours.
    fn replace_when_ready(&mut self) {
        if std::mem::take(&mut self.replace_programs) {
            self.replacing = Some(kernel::spawn_replace_programs(&self.args, self.pins.as_ref(), self.bpf.clone()));
        }
    }

    /// Reacts to every source, handover and signal until the agent is to stop; true when a
    /// successor took over.
    async fn reconcile(&mut self) -> bool {
        let mut retry = tokio::time::interval(ENROLL_RETRY);
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            let flow = tokio::select! {
                changed = self.feeds.registries.changed(), if self.feeds.registry_open => {
                    self.registry_changed(changed.is_ok()).await
                }
                conn = async { match &self.server { Some(s) => s.accept().await, None => std::future::pending().await } } => {
                    self.handover_requested(conn).await
                }
                Some(ready) = self.handed_over.recv() => self.handover_finished(ready),
                Some(update) = async { match self.feeds.updates.as_mut() { Some(u) => u.recv().await, None => std::future::pending().await } } => {
                    self.config_dir_changed(update)
                }
                changed = async { match self.feeds.crds.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                    match take_documents(&mut self.feeds.crds, changed) {
                        Some(docs) => { self.sources.crds = docs; Flow::Reconfigure }
                        None => Flow::Continue,
                    }
                }
                changed = async { match self.feeds.gateway_api.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                    match take_documents(&mut self.feeds.gateway_api, changed) {
                        Some(docs) => { self.sources.gateway_api = docs; Flow::Reconfigure }
                        None => Flow::Continue,
                    }
                }
                changed = async { match self.feeds.secrets.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                    match take_documents(&mut self.feeds.secrets, changed) {
                        Some(docs) => { self.sources.secrets = docs; Flow::Reconfigure }
                        None => Flow::Continue,
                    }
                }
                _ = retry.tick(), if self.node.has_failed() => { self.node.retry_failed().await; Flow::Continue }
                _ = &mut shutdown, if !self.stop_requested => self.shutdown_requested(),
            };
            match flow {
                Flow::Continue => {}
                // Every change of the files or the API objects is admitted object by object.
                Flow::Reconfigure => {
                    let config = self.sources.merged();
                    // The Secret watch follows the Gateways: a namespace newly named is watched,
                    // and its Secrets arrive as another reconfigure.
                    self.feeds.want_secrets(&config);
                    self.node.apply_config(config).await
                }
                Flow::Exit(successor) => return successor,
            }
        }
    }

    /// A new registry snapshot, or (`open` false) the end of the registry source.
    async fn registry_changed(&mut self, open: bool) -> Flow {
        if !open {
            // Standalone mode: the one registry has been applied; nothing more will come.
            self.feeds.registry_open = false;
            return Flow::Continue;
        }
        let registry = self.feeds.registries.borrow_and_update().clone();
        if let Some(registry) = registry {
            self.registry_arrived(registry).await;
        }
        Flow::Continue
    }

    /// A successor asks for the sockets and kernel objects: offered once our own programs are
    /// in, and its readiness awaited in the background.
    async fn handover_requested(&mut self, conn: std::io::Result<std::os::unix::net::UnixStream>) -> Flow {
        if let Some(swap) = self.replacing.take() {
            let _ = swap.await;
        }
        match conn.and_then(|c| Ok((c, offer(&self.node, &self.bpf, &self.admin.fd, self.args.map_layout())?))) {
            Ok((stream, offer)) => {
                self.handovers_pending += 1;
                hand_over(stream, offer, self.handed_over_tx.clone());
            }
            Err(e) => tracing::warn!(error = %e, "handover request failed"),
        }
        Flow::Continue
    }

    /// A handover ended: the successor is ready (exit), or it failed (exit only if SIGTERM
    /// waited for it and none is left).
    fn handover_finished(&mut self, ready: bool) -> Flow {
        self.handovers_pending = self.handovers_pending.saturating_sub(1);
        if ready {
            return Flow::Exit(true);
        }
        if self.stop_requested && self.handovers_pending == 0 {
            return Flow::Exit(false);
        }
        Flow::Continue
    }

    /// The --config directory was read again (or could not be).
    fn config_dir_changed(&mut self, update: crate::config::watch::Update) -> Flow {
        match update {
            Ok(dir) => {
                self.sources.dir = dir;
                Flow::Reconfigure
            }
            Err(errors) => {
                self.node.config_unreadable(&errors);
                Flow::Continue
            }
        }
    }

    /// SIGTERM or SIGINT.
    fn shutdown_requested(&mut self) -> Flow {
        // A successor holding our maps may be about to say ready: unenrolling now would
        // unenroll its pods too. Wait for the outcome (the kubelet's SIGTERM to the old
        // pod can race the new pod's readiness, which either agent may answer).
        if self.handovers_pending == 0 {
            return Flow::Exit(false);
        }
        tracing::info!("SIGTERM during a handover: waiting for the new agent before draining");
        self.stop_requested = true;
        Flow::Continue
    }

    /// Leaves the node to the successor, or unenrolls every pod and unpins; then drains.
    async fn shut_down(self, successor: bool) {
        let Agent { args, state, pins, mut node, server, .. } = self;
        if successor {
            // The maps, links and listening sockets are the successor's now (it holds duplicates):
            // leave the enrollments alone, just stop accepting and finish what is in flight.
            tracing::info!("the new agent is ready: stopping accepting, draining");
            if let Some(s) = server {
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
    }
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
