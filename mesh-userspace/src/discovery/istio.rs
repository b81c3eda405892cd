//! Istio's routing objects read from the API server (`--istio-crds`), for clusters where the
//! Istio CRDs are installed and users `kubectl apply` VirtualServices rather than editing the
//! ConfigMap. The served version (v1, v1beta1 or v1alpha3) is discovered; each object is turned
//! back into the YAML document a user would have written and handed to the same strict parser
//! as the ConfigMap's files, under a source name such as `k8s:VirtualService/default/reviews`.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{ApiResource, DynamicObject},
    core::PartialObjectMeta,
    Api, Client, ResourceExt as _,
};
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::kube::{locked, watch_into, Store};

pub const GROUP: &str = "networking.istio.io";
pub const KINDS: [&str; 3] = ["VirtualService", "DestinationRule", "Gateway"];

/// Routing documents from the API server: (source name, YAML text), in a stable order.
pub type Documents = Arc<Vec<(String, String)>>;

#[derive(Default)]
struct Shared {
    /// One store per watched kind, by kind name: the map's order is the documents' order.
    stores: Mutex<BTreeMap<&'static str, Store<(String, String)>>>,
    changed: Notify,
}

/// Discovers the Istio networking group and watches its routing kinds. Fails when the group is
/// not served (the CRDs are not installed): the caller says so and runs with the ConfigMap only.
pub async fn spawn(client: Client) -> Result<watch::Receiver<Option<Documents>>, kube::Error> {
    let group = kube::discovery::group(&client, GROUP).await?;
    let mut served = Vec::new();
    for kind in KINDS {
        match group.recommended_kind(kind) {
            Some((resource, _caps)) => served.push((kind, resource)),
            None => tracing::warn!(%kind, group = GROUP, "kind not served by the API server; skipped"),
        }
    }
    Ok(watch_kinds(client, served, document, false))
}

/// Watches each (kind, served resource) and publishes the documents of all of them, in a stable
/// order (kind, then namespace/name), once every kind has been listed and after each change.
/// With `namespaces`, the cluster's Namespaces are watched too (metadata only) and published as
/// `v1` `Namespace` documents carrying their labels. Nothing is published while nothing is
/// watched.
pub(super) fn watch_kinds(
    client: Client,
    served: Vec<(&'static str, ApiResource)>,
    document: fn(&ApiResource, &DynamicObject) -> (String, String),
    namespaces: bool,
) -> watch::Receiver<Option<Documents>> {
    let shared = Arc::new(Shared::default());
    if namespaces {
        locked(&shared.stores, |s| s.insert(NAMESPACE, Store::default()));
        let (a, b) = (shared.clone(), shared.clone());
        tokio::spawn(watch_into(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            (),
            move |f| locked(&a.stores, |s| s.get_mut(NAMESPACE).is_some_and(f)),
            move || b.changed.notify_one(),
            |o| Some(namespace_document(o)),
        ));
    }
    for (kind, resource) in served {
        tracing::info!(%kind, api_version = %resource.api_version, "watching routing objects");
        locked(&shared.stores, |s| s.insert(kind, Store::default()));
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let (a, b) = (shared.clone(), shared.clone());
        let ar = resource.clone();
        tokio::spawn(watch_into(
            api,
            resource,
            move |f| locked(&a.stores, |s| s.get_mut(kind).is_some_and(f)),
            move || b.changed.notify_one(),
            move |o| Some(document(&ar, o)),
        ));
    }
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            shared.changed.notified().await;
            let docs = locked(&shared.stores, |stores| {
                stores
                    .values()
                    .all(|s| s.synced())
                    .then(|| stores.values().flat_map(|s| s.values().map(|d| (**d).clone())).collect::<Vec<_>>())
            });
            let Some(docs) = docs else { continue };
            if tx.borrow().as_deref() != Some(&docs) && tx.send(Some(Arc::new(docs))).is_err() {
                return;
            }
        }
    });
    rx
}

/// The store key of the Namespaces (no kind of a watched group is called that).
const NAMESPACE: &str = "Namespace";

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

/// The object as the YAML a user applies: apiVersion, kind, name, namespace and spec (status,
/// managedFields and the like are the API server's, not routing input).
pub fn document(resource: &ApiResource, o: &DynamicObject) -> (String, String) {
    let namespace = o.namespace().unwrap_or_else(|| "default".into());
    let name = o.name_any();
    let doc = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": o.data.get("spec").cloned().unwrap_or(json!({})),
    });
    let text = serde_yaml::to_string(&doc).unwrap_or_default();
    (format!("k8s:{}/{namespace}/{name}", resource.kind), text)
}
