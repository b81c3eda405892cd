//! Where the node's registry and routing config come from: the registry YAML files or the API
//! server's discovery, and the --config directory merged with the Istio and Gateway API objects
//! watched on the API server. Also what Telemetry objects say about each pod's access log.
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, watch};

use super::{AgentArgs, Switch};
use crate::{
    config::Config,
    discovery::{self, istio::Documents, kube::KubeOptions, sandbox::KubeletLayout},
    proxy::{self, ProxyState},
    registry::Registry,
};

/// What the agent watches for changes: the registry, the --config directory and the API
/// server's routing objects.
pub(super) struct Feeds {
    pub(super) registries: watch::Receiver<Option<Arc<Registry>>>,
    /// False once the standalone registry has been applied: nothing more will come.
    pub(super) registry_open: bool,
    /// The --config directory's watcher.
    pub(super) updates: Option<mpsc::Receiver<crate::config::watch::Update>>,
    /// The Istio routing objects (`--istio-crds`); None once the watch is gone.
    pub(super) crds: Option<watch::Receiver<Option<Documents>>>,
    /// The Gateway API objects (`--gateway-api`); None once the watch is gone.
    pub(super) gateway_api: Option<watch::Receiver<Option<Documents>>>,
    /// The `kubernetes.io/tls` Secrets of TLS Gateway listeners (`--kubernetes`); None once the
    /// watch is gone.
    pub(super) secrets: Option<watch::Receiver<Option<Documents>>>,
    /// The namespaces the Secret watch covers, set after each config merge.
    secret_namespaces: Option<watch::Sender<std::collections::BTreeSet<String>>>,
}

impl Feeds {
    /// Builds the Kubernetes client (with --kubernetes) and starts the registry and API object
    /// watches; the --config directory's watcher is started later (`updates`).
    pub(super) async fn start(args: &AgentArgs) -> Result<Feeds> {
        let client =
            match args.kubernetes {
                true => Some(kube::Client::try_default().await.context(
                    "cannot build a Kubernetes client: run in a pod with a service account, or set KUBECONFIG",
                )?),
                false => None,
            };
        let registries = registry_source(args, client.clone())?;
        let crds = match (&client, args.istio_crds) {
            (Some(client), true) => match discovery::istio::spawn(client.clone()).await {
                Ok(rx) => Some(rx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot look up the networking.istio.io API group; Istio routing objects from --config only");
                    None
                }
            },
            _ => None,
        };
        let gateway_api = match (&client, args.gateway_api) {
            (Some(client), Switch::On) => match discovery::gateway_api::spawn(client.clone()).await {
                Ok(rx) => Some(rx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot discover the Gateway API objects; using --config only for them");
                    None
                }
            },
            _ => None,
        };
        let (secret_namespaces, secrets) = match client {
            Some(client) => {
                let (tx, rx) = discovery::secrets::spawn(client);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        Ok(Feeds { registries, registry_open: true, updates: None, crds, gateway_api, secrets, secret_namespaces })
    }

    /// Points the Secret watch at the namespaces `config`'s Gateways take certificates from.
    pub(super) fn want_secrets(&self, config: &Config) {
        if let Some(tx) = &self.secret_namespaces {
            let wanted = config.tls_secret_namespaces();
            tx.send_if_modified(|w| {
                let changed = *w != wanted;
                *w = wanted;
                changed
            });
        }
    }
}

/// The newest documents of an API object watch that `changed`; a watch that ended is dropped.
pub(super) fn take_documents(
    rx: &mut Option<watch::Receiver<Option<Documents>>>,
    changed: Result<(), watch::error::RecvError>,
) -> Option<Documents> {
    match (changed, rx.as_mut()) {
        (Ok(()), Some(r)) => r.borrow_and_update().clone(),
        _ => {
            *rx = None;
            None
        }
    }
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
    let options = KubeOptions { node, retry: crate::settings::FIXED.kube_retry };
    Ok(discovery::kube::spawn(client, options, Arc::new(layout)))
}

/// Where routing config comes from: the --config directory as last read (bad documents
/// included, as rejects), the Istio objects and the Gateway API objects from the API server.
pub(super) struct ConfigSources {
    pub(super) dir: Config,
    pub(super) crds: Documents,
    pub(super) gateway_api: Documents,
    pub(super) secrets: Documents,
}

impl ConfigSources {
    /// The files, then the API objects (an object replaces a file document of the same name).
    pub(super) fn merged(&self) -> Config {
        let mut config = self.dir.clone();
        for (source, text) in self.crds.iter().chain(self.gateway_api.iter()).chain(self.secrets.iter()) {
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

/// The --config directory as found at start (plain Kubernetes routing when it cannot be read).
pub(super) fn initial_config(args: &AgentArgs) -> Config {
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
pub(super) fn access_log_overrides(
    config: &Config,
    registry: &Registry,
    state: &ProxyState,
) -> Option<proxy::access_log::WorkloadOverrides> {
    use crate::config::telemetry::{access_log_filters, ENVOY_PROVIDER};
    use proxy::access_log::PodLog;
    if !config.telemetries.iter().any(|t| !t.spec.access_logging.is_empty()) {
        return None;
    }
    let defaults: &[&str] =
        if state.access_log.mode() == proxy::access_log::AccessLogMode::Off { &[] } else { &[ENVOY_PROVIDER] };
    let mut map = proxy::access_log::WorkloadOverrides::new();
    for w in registry.workloads.iter().filter(|w| w.enroll && w.netns.is_some()) {
        let log = match access_log_filters(config, w, defaults).remove(ENVOY_PROVIDER) {
            None => PodLog::Off,
            // An expression that does not parse was rejected at admission; `program` is None
            // only for one that bypassed it, logged as with no filter.
            Some(f) => PodLog::On(f.and_then(|f| f.program())),
        };
        map.entry(w.namespace.clone()).or_default().insert(w.name.clone(), log);
    }
    Some(map)
}
