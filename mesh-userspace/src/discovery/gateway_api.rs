//! Kubernetes Gateway API objects read from the API server (on with `--kubernetes`, off with
//! `--gateway-api=off`): HTTPRoute, GRPCRoute, ReferenceGrant, Gateway and GatewayClass of
//! `gateway.networking.k8s.io`. Each object becomes the YAML document a user would have written
//! and goes through the same per-object admission as the `--config` files (`Config::add_str`), so
//! a kind the admission does not act on is skipped there exactly as in a file.
use kube::{
    api::{ApiResource, DynamicObject},
    discovery::ApiGroup,
    Client, ResourceExt as _,
};
use serde_json::json;
use tokio::sync::watch;

use super::group_watch::{watch_group, Documents, GroupKinds, REDISCOVER};

/// `gateway.networking.k8s.io`.
pub const GROUP: &str = crate::config::gateway_api::GROUP;
/// GatewayClass is cluster-scoped; the others are namespaced.
pub const KINDS: [&str; 5] = ["HTTPRoute", "GRPCRoute", "ReferenceGrant", "Gateway", "GatewayClass"];
/// In order of preference: v1, else v1beta1 where a release still serves a kind only there
/// (ReferenceGrant was v1beta1-only before Gateway API v1.3).
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// Watches the Gateway API kinds, and the cluster's Namespaces (their labels are what a
/// listener's `allowedRoutes` `Selector` matches, for Gateways of the API server and of
/// `--config` alike). A group that is not served (the CRDs are not installed) is not an error:
/// the Namespaces alone are watched, and the group is looked up again every [`REDISCOVER`], so
/// CRDs installed later are watched without a restart (and deleted ones stop being watched).
pub async fn spawn(client: Client) -> Result<watch::Receiver<Option<Documents>>, kube::Error> {
    let what = GroupKinds { group: GROUP, kinds: &KINDS, resolve: served_resource, document };
    watch_group(client, what, true, REDISCOVER).await
}

/// The resource of `kind` at the most preferred of [`VERSIONS`] that serves it. kube's
/// `recommended_kind` looks at the group's preferred version only, which would miss a kind
/// served at v1beta1 alone.
pub fn served_resource(group: &ApiGroup, kind: &str) -> Option<ApiResource> {
    VERSIONS
        .iter()
        .filter(|v| group.versions().any(|g| g == **v))
        .find_map(|v| group.versioned_resources(v).into_iter().find(|(ar, _)| ar.kind == kind).map(|(ar, _)| ar))
}

/// The object as the YAML a user applies: apiVersion, kind, metadata (name, namespace unless
/// cluster-scoped, and `creationTimestamp`, the spec's first tie-breaker between routes) and spec.
pub fn document(resource: &ApiResource, o: &DynamicObject) -> (String, String) {
    let name = o.name_any();
    let mut metadata = json!({ "name": name });
    let source = match o.namespace() {
        Some(ns) => {
            metadata["namespace"] = json!(ns);
            format!("k8s:{}/{ns}/{name}", resource.kind)
        }
        None => format!("k8s:{}/{name}", resource.kind),
    };
    if let Some(created) = o.metadata.creation_timestamp.as_ref().and_then(|t| serde_json::to_value(t).ok()) {
        metadata["creationTimestamp"] = created;
    }
    let doc = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": metadata,
        "spec": o.data.get("spec").cloned().unwrap_or(json!({})),
    });
    (source, serde_yaml::to_string(&doc).unwrap_or_default())
}
