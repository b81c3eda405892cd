//! Istio's routing objects read from the API server (`--istio-crds`), for clusters where the
//! Istio CRDs are installed and users `kubectl apply` VirtualServices rather than editing the
//! ConfigMap. The served version (v1, v1beta1 or v1alpha3) is discovered; each object is turned
//! back into the YAML document a user would have written and handed to the same strict parser
//! as the ConfigMap's files, under a source name such as `k8s:VirtualService/default/reviews`.
use kube::{
    api::{ApiResource, DynamicObject},
    discovery::ApiGroup,
    Client, ResourceExt as _,
};
use serde_json::json;
use tokio::sync::watch;

pub use super::group_watch::Documents;
use super::group_watch::{watch_group, GroupKinds, REDISCOVER};

/// The API group of Istio's networking CRDs.
pub const GROUP: &str = "networking.istio.io";
/// The Istio kinds watched (each at the version the cluster serves).
pub const KINDS: [&str; 3] = ["VirtualService", "DestinationRule", "Gateway"];

/// Discovers the Istio networking group and watches its routing kinds. A group that is not
/// served (the CRDs are not installed) is looked up again every [`REDISCOVER`], so CRDs
/// installed later are watched without a restart; Err only when the first look-up fails
/// otherwise: the caller says so and runs with the ConfigMap only.
pub async fn spawn(client: Client) -> Result<watch::Receiver<Option<Documents>>, kube::Error> {
    let what = GroupKinds { group: GROUP, kinds: &KINDS, resolve: recommended, document };
    watch_group(client, what, false, REDISCOVER).await
}

/// The resource of `kind` at the group's preferred version that serves it.
fn recommended(group: &ApiGroup, kind: &str) -> Option<ApiResource> {
    group.recommended_kind(kind).map(|(resource, _caps)| resource)
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
