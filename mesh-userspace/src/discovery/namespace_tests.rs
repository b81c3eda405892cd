//! Namespace labels from the API server: a Gateway listener's `allowedRoutes.namespaces.from:
//! Selector` matches the labels of the cluster's Namespaces (watched, metadata only, with the
//! Gateway API objects), so a label added or removed attaches or detaches a route.
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::fake_api::{namespace, FakeApi, NAMESPACES};
use super::istio::Documents;
use crate::config::Config;
use crate::registry::Registry;
use crate::routing::{Context, Decision, RequestInfo, RouteTable};

const ROUTE_NS: &str = "gateway-conformance-mesh";

/// The config directory: a Gateway whose listener takes routes from namespaces labelled
/// `expose: "true"`, an HTTPRoute in another namespace attached to it, and a Namespace document
/// that labels the route's namespace (the API server's Namespace replaces it).
const DIR: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: infra}
spec:
  gatewayClassName: mesh
  listeners:
  - name: http
    port: 8080
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {expose: "true"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{name: ingress, namespace: infra}]
  rules:
  - backendRefs: [{name: echo, port: 80}]
---
apiVersion: v1
kind: Namespace
metadata: {name: gateway-conformance-mesh, labels: {expose: "true"}}
"#;

fn registry() -> Registry {
    let mut r = Registry::default();
    for (f, text) in [
        ("manifests.yaml", include_str!("../../tests/gateway_api/manifests.yaml")),
        ("pods.yaml", include_str!("../../tests/gateway_api/pods.yaml")),
    ] {
        r.add_yaml(std::path::Path::new(f), text).expect("registry fixture");
    }
    r
}

/// Where `GET /` on the Gateway's port goes with the directory and then the API server's
/// documents admitted (the agent's merge order): the backend Service, or None for a 404.
fn ingress_backend(docs: &Documents) -> Option<String> {
    let mut config = Config::default();
    config.add_str("dir.yaml", DIR).unwrap_or_else(|e| panic!("{e}"));
    for (source, text) in docs.iter() {
        config.add_str(source, text).unwrap_or_else(|e| panic!("{source}:\n{text}\n{e}"));
    }
    let table = RouteTable::compile(&config, &registry()).unwrap_or_else(|e| panic!("{e}"));
    let (uri, headers) = ("/".parse::<http::Uri>().expect("uri"), http::HeaderMap::new());
    let info = RequestInfo {
        context: Context::Gateway { name: "ingress", namespace: "infra", port: 8080 },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some("echo.example"),
        scheme: "http",
        headers: &headers,
    };
    match table.route(&info, &mut rand::thread_rng()) {
        Decision::Forward(f) => Some(f.cluster.service.name.clone()),
        Decision::NoRoute { .. } => None,
        _ => panic!("neither forwarded nor 404"),
    }
}

async fn documents_where(
    rx: &mut watch::Receiver<Option<Documents>>,
    what: &str,
    cond: impl Fn(&Documents) -> bool,
) -> Documents {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(d) = rx.borrow_and_update().clone().filter(|d| cond(d)) {
                return d;
            }
            rx.changed().await.expect("discovery running");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 5 s"))
}

fn labels_of<'a>(docs: &'a Documents, ns: &str) -> Option<&'a str> {
    docs.iter().find(|(s, _)| s == &format!("k8s:Namespace/{ns}")).map(|(_, t)| t.as_str())
}

/// Without the Gateway API CRDs, the Namespaces are still watched (metadata only) for the
/// directory's Gateways; the route attaches when its namespace gains the label and detaches when
/// it loses it, and the API server's Namespace wins over the directory's document.
#[tokio::test]
async fn a_namespace_label_change_attaches_and_detaches_a_route() {
    let api = FakeApi::default();
    api.apply(NAMESPACES, namespace("infra", json!({})));
    api.apply(NAMESPACES, namespace(ROUTE_NS, json!({"gateway-conformance": "mesh"})));
    let mut rx = super::gateway_api::spawn(api.client()).await.expect("no CRDs is not an error");

    let docs = documents_where(&mut rx, "the listed Namespaces", |_| true).await;
    let names: Vec<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [format!("k8s:Namespace/{ROUTE_NS}").as_str(), "k8s:Namespace/infra"]);
    assert!(labels_of(&docs, ROUTE_NS).is_some_and(|t| t.contains("gateway-conformance: mesh")), "{docs:?}");
    assert_eq!(ingress_backend(&docs), None, "the API server's Namespace has no expose label");
    assert_eq!(ingress_backend(&Documents::default()), Some("echo".into()), "the directory's label alone admits it");
    // Only the Namespaces are listed and watched: no Gateway API group to watch.
    let namespaces_or_lookup = |l: &String| l == "DISCOVER /apis" || l.split(' ').nth(1) == Some(NAMESPACES);
    assert!(api.log().iter().all(namespaces_or_lookup), "{:?}", api.log());

    api.logged(&format!("WATCH {NAMESPACES}"), 1).await;
    api.apply(NAMESPACES, namespace(ROUTE_NS, json!({"gateway-conformance": "mesh", "expose": "true"})));
    let docs = documents_where(&mut rx, "the labelled Namespace", |d| {
        labels_of(d, ROUTE_NS).is_some_and(|t| t.contains("expose"))
    })
    .await;
    assert_eq!(ingress_backend(&docs), Some("echo".into()), "attached once the label is there");

    api.apply(NAMESPACES, namespace(ROUTE_NS, json!({"expose": "false"})));
    let docs = documents_where(&mut rx, "the relabelled Namespace", |d| {
        labels_of(d, ROUTE_NS).is_some_and(|t| t.contains("expose: 'false'") || t.contains("expose: \"false\""))
    })
    .await;
    assert_eq!(ingress_backend(&docs), None, "detached once the label is gone");
}
