//! Watching the routing kinds of one API group whose CRDs may come and go: the group is looked
//! up at start and again every [`REDISCOVER`] (one discovery request per served version), the
//! kinds it serves are watched, and a kind that stops being served (CRDs deleted) or changes
//! version stops being watched — without touching the other sources of routing config.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{ApiResource, DynamicObject},
    core::PartialObjectMeta,
    discovery::ApiGroup,
    error::DiscoveryError,
    Api, Client, ResourceExt as _,
};
use serde_json::json;
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};

use super::kube::{locked, watch_into, Store};

/// Routing documents from the API server: (source name, YAML text), in a stable order.
pub type Documents = Arc<Vec<(String, String)>>;

/// How often the group is looked up again: CRDs installed after the agent started are watched
/// within this time, and deleted ones stop being watched.
pub const REDISCOVER: Duration = crate::settings::FIXED.crd_rediscover;

/// What to watch of one API group.
pub(super) struct GroupKinds {
    pub group: &'static str,
    pub kinds: &'static [&'static str],
    /// The resource serving a kind in the discovered group (which version), if any.
    pub resolve: fn(&ApiGroup, &str) -> Option<ApiResource>,
    /// An object as the YAML document a user applies, with its source name.
    pub document: fn(&ApiResource, &DynamicObject) -> (String, String),
}

#[derive(Default)]
struct Stores {
    /// One store per watched kind, by kind name: the map's order is the documents' order.
    by_kind: BTreeMap<&'static str, Store<(String, String)>>,
    /// The group has been looked up once (served or not): before, an empty set of documents
    /// would say "no objects" when it means "not asked yet".
    discovered: bool,
}

#[derive(Default)]
struct Shared {
    stores: Mutex<Stores>,
    changed: Notify,
}

/// The store key of the Namespaces (no kind of a watched group is called that).
const NAMESPACE: &str = "Namespace";

/// Watches `what`'s kinds, as the group serves them now and after each look-up every `every`,
/// and publishes the documents of all of them in a stable order (kind, then namespace/name) once
/// every watched kind has been listed and after each change. With `namespaces`, the cluster's
/// Namespaces are watched too (metadata only) and published as `v1` `Namespace` documents
/// carrying their labels. A group that is not served is not an error (nothing of it is watched
/// until it is); Err only when the first look-up fails otherwise (API server unreachable,
/// forbidden).
pub(super) async fn watch_group(
    client: Client,
    what: GroupKinds,
    namespaces: bool,
    every: Duration,
) -> Result<watch::Receiver<Option<Documents>>, kube::Error> {
    let shared = Arc::new(Shared::default());
    let mut watching = Watching { client, what, shared: shared.clone(), running: BTreeMap::new() };
    match kube::discovery::group(&watching.client, watching.what.group).await {
        Ok(group) => watching.serve(Some(&group)).await,
        Err(kube::Error::Discovery(DiscoveryError::MissingApiGroup(_))) => {
            tracing::info!(
                group = watching.what.group,
                every_s = every.as_secs(),
                "API group not served (CRDs not installed); looked up again periodically"
            );
            watching.serve(None).await;
        }
        Err(e) => return Err(e),
    }
    if namespaces {
        locked(&shared.stores, |s| s.by_kind.insert(NAMESPACE, Store::default()));
        let (a, b) = (shared.clone(), shared.clone());
        tokio::spawn(watch_into(
            Api::<PartialObjectMeta<Namespace>>::all(watching.client.clone()),
            (),
            move |f| locked(&a.stores, |s| s.by_kind.get_mut(NAMESPACE).is_some_and(f)),
            move || b.changed.notify_one(),
            |o| Some(namespace_document(o)),
        ));
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match kube::discovery::group(&watching.client, watching.what.group).await {
                Ok(group) => watching.serve(Some(&group)).await,
                Err(kube::Error::Discovery(DiscoveryError::MissingApiGroup(_))) => watching.serve(None).await,
                // Keep watching what was served: a failed look-up says nothing about the CRDs.
                Err(e) => tracing::warn!(group = watching.what.group, error = %e, "API group look-up failed; retried"),
            }
        }
    });
    let (tx, rx) = watch::channel(None);
    tokio::spawn(publish(shared, tx));
    Ok(rx)
}

/// The kinds being watched, each with the resource (version) it is watched at.
struct Watching {
    client: Client,
    what: GroupKinds,
    shared: Arc<Shared>,
    running: BTreeMap<&'static str, (ApiResource, JoinHandle<()>)>,
}

impl Watching {
    /// Watches exactly the kinds `group` serves (none when it is not served): a kind no longer
    /// served, or served at another version, is stopped and its objects dropped; a new one is
    /// started (published once listed).
    async fn serve(&mut self, group: Option<&ApiGroup>) {
        let what = &self.what;
        let served: BTreeMap<&'static str, ApiResource> = group
            .map(|g| what.kinds.iter().filter_map(|k| (what.resolve)(g, k).map(|r| (*k, r))).collect())
            .unwrap_or_default();
        let stale: Vec<&'static str> = self
            .running
            .iter()
            .filter(|(k, (r, _))| served.get(*k).is_none_or(|s| s.api_version != r.api_version))
            .map(|(k, _)| *k)
            .collect();
        let mut changed = false;
        for kind in stale {
            if let Some((resource, task)) = self.running.remove(kind) {
                // Awaited, so the aborted watcher cannot write into the store of a successor.
                task.abort();
                let _ = task.await;
                locked(&self.shared.stores, |s| s.by_kind.remove(kind));
                tracing::info!(%kind, api_version = %resource.api_version, "no longer served; stopped watching");
                changed = true;
            }
        }
        for (kind, resource) in served {
            if self.running.contains_key(kind) {
                continue;
            }
            tracing::info!(%kind, api_version = %resource.api_version, "watching routing objects");
            locked(&self.shared.stores, |s| s.by_kind.insert(kind, Store::default()));
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
            let (a, b) = (self.shared.clone(), self.shared.clone());
            let (ar, document) = (resource.clone(), self.what.document);
            let task = tokio::spawn(watch_into(
                api,
                resource.clone(),
                move |f| locked(&a.stores, |s| s.by_kind.get_mut(kind).is_some_and(f)),
                move || b.changed.notify_one(),
                move |o| Some(document(&ar, o)),
            ));
            self.running.insert(kind, (resource, task));
        }
        let first = locked(&self.shared.stores, |s| !std::mem::replace(&mut s.discovered, true));
        if changed || first {
            self.shared.changed.notify_one();
        }
    }
}

/// Publishes the documents of every store once all are listed, and after each change.
async fn publish(shared: Arc<Shared>, tx: watch::Sender<Option<Documents>>) {
    loop {
        shared.changed.notified().await;
        let docs = locked(&shared.stores, |s| {
            (s.discovered && s.by_kind.values().all(|s| s.synced()))
                .then(|| s.by_kind.values().flat_map(|s| s.values().map(|d| (**d).clone())).collect::<Vec<_>>())
        });
        let Some(docs) = docs else { continue };
        if tx.borrow().as_deref() != Some(&docs) && tx.send(Some(Arc::new(docs))).is_err() {
            return;
        }
    }
}

/// A Namespace as the `v1` document a user would put in the config directory: its name and
/// labels, all a Gateway listener's `allowedRoutes.namespaces.selector` looks at. It goes through
/// the same admission as the directory's (which keeps the labels), so a Namespace of the API
/// server replaces a directory document of the same name.
pub fn namespace_document(o: &PartialObjectMeta<Namespace>) -> (String, String) {
    let name = o.name_any();
    let labels = o.metadata.labels.clone().unwrap_or_default();
    let doc = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    (format!("k8s:Namespace/{name}"), serde_yaml::to_string(&doc).unwrap_or_default())
}
