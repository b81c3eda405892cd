//! `kubernetes.io/tls` Secrets read from the API server (with `--kubernetes`) for TLS Gateway
//! listeners. Only the namespaces the config's Gateways take certificates from are watched (the
//! agent names them after each config merge, [`Config::tls_secret_namespaces`]), one watch per
//! namespace with `fieldSelector=type=kubernetes.io/tls`, and of each Secret only `tls.crt` and
//! `tls.key` are kept. Each becomes the YAML document a user would have written and is admitted
//! as a `--config` file's Secret is (`config::secrets`): a changed Secret recompiles the table,
//! and the next handshake uses the new certificate.
//!
//! [`Config::tls_secret_namespaces`]: crate::config::Config::tls_secret_namespaces
use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, ResourceExt as _,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::istio::Documents;
use crate::config::secrets::{TLS_CERT_KEY, TLS_PRIVATE_KEY, TLS_SECRET_TYPE};

/// One namespace's Secrets: (source, YAML) by name, and whether its first list is in.
#[derive(Default)]
struct Namespace {
    live: BTreeMap<String, (String, String)>,
    resync: Option<BTreeMap<String, (String, String)>>,
    synced: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Starts the Secret watches: send the namespaces to watch on the returned sender (none at
/// first); the receiver gets the Secret documents of all of them once each has been listed, and
/// after every change.
pub fn spawn(client: Client) -> (watch::Sender<BTreeSet<String>>, watch::Receiver<Option<Documents>>) {
    let (wanted_tx, mut wanted_rx) = watch::channel(BTreeSet::<String>::new());
    let (docs_tx, docs_rx) = watch::channel(None);
    tokio::spawn(async move {
        let (events_tx, mut events) = mpsc::unbounded_channel::<(String, watcher::Event<Secret>)>();
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        // Nothing wanted yet is a complete (empty) set: published at once.
        let mut changed = true;
        loop {
            if changed && namespaces.values().all(|n| n.synced) {
                let docs: Vec<(String, String)> = namespaces.values().flat_map(|n| n.live.values().cloned()).collect();
                if docs_tx.borrow().as_deref() != Some(&docs) && docs_tx.send(Some(std::sync::Arc::new(docs))).is_err()
                {
                    return;
                }
            }
            changed = tokio::select! {
                r = wanted_rx.changed() => {
                    if r.is_err() {
                        return; // the agent is gone; dropping `namespaces` ends the watches
                    }
                    let wanted = wanted_rx.borrow_and_update().clone();
                    namespaces.retain(|ns, _| wanted.contains(ns));
                    for ns in wanted {
                        if let std::collections::btree_map::Entry::Vacant(slot) = namespaces.entry(ns) {
                            let ns = slot.key().clone();
                            tracing::info!(namespace = %ns, "watching kubernetes.io/tls Secrets for Gateway listeners");
                            let task = tokio::spawn(watch_namespace(client.clone(), ns, events_tx.clone()));
                            slot.insert(Namespace { live: BTreeMap::new(), resync: None, synced: false, task: Some(task) });
                        }
                    }
                    true
                }
                Some((ns, event)) = events.recv() => match namespaces.get_mut(&ns) {
                    Some(n) => apply(n, event),
                    // A namespace no longer watched: its last events are dropped.
                    None => false,
                },
            };
        }
    });
    (wanted_tx, docs_rx)
}

/// Applies one watch event to a namespace's Secrets; true when what is published changed.
fn apply(n: &mut Namespace, event: watcher::Event<Secret>) -> bool {
    match event {
        watcher::Event::Init => {
            n.resync = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(s) => {
            if let (Some(buf), Some(d)) = (n.resync.as_mut(), document(&s)) {
                buf.insert(s.name_any(), d);
            }
            false
        }
        watcher::Event::InitDone => {
            n.live = n.resync.take().unwrap_or_default();
            n.synced = true;
            true
        }
        watcher::Event::Apply(s) => match document(&s) {
            Some(d) => n.live.insert(s.name_any(), d.clone()) != Some(d),
            None => n.live.remove(&s.name_any()).is_some(),
        },
        watcher::Event::Delete(s) => n.live.remove(&s.name_any()).is_some(),
    }
}

async fn watch_namespace(client: Client, ns: String, events: mpsc::UnboundedSender<(String, watcher::Event<Secret>)>) {
    let api: Api<Secret> = Api::namespaced(client, &ns);
    let config = watcher::Config::default().fields(&format!("type={TLS_SECRET_TYPE}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => {
                if events.send((ns.clone(), e)).is_err() {
                    return;
                }
            }
            // Retried with backoff by the watcher (re-listing after 410 Gone); the last Secrets
            // stay in use meanwhile. A 403 here means the RBAC lacks `secrets` get/list/watch.
            Err(e) => tracing::warn!(namespace = %ns, error = %e, "Secret watch error; retrying"),
        }
    }
}

/// The Secret as the YAML a user applies: name, namespace, type and the two keys a Gateway
/// certificate needs (any other key, such as `ca.crt`, is left out).
fn document(s: &Secret) -> Option<(String, String)> {
    let ns = s.namespace()?;
    let name = s.name_any();
    let data: BTreeMap<&str, &k8s_openapi::ByteString> = s
        .data
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == TLS_CERT_KEY || k.as_str() == TLS_PRIVATE_KEY)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": s.type_.as_deref().unwrap_or("Opaque"),
        "data": data,
    });
    Some((format!("k8s:Secret/{ns}/{name}"), serde_yaml::to_string(&doc).ok()?))
}
