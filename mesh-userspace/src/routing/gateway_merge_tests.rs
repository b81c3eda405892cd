//! Two Gateways on one port of the node: served together on one listener, by `Host`, whichever
//! Gateway the listener was opened for (Istio's merge of Gateways on a port); the same host of two
//! Gateway API Gateways is one virtual host with the first one's rules first; what cannot be
//! merged (the same host in VirtualServices of two Istio Gateways) is warned with both names.
use std::path::Path;

use super::super::*;
use crate::config::Config;

const NS: &str = "gateway-conformance-infra";

fn registry() -> Registry {
    let mut r = Registry::default();
    for (f, text) in [
        ("base-manifests.yaml", include_str!("../../tests/gateway_api/ingress/base-manifests.yaml")),
        ("pods.yaml", include_str!("../../tests/gateway_api/ingress/pods.yaml")),
    ] {
        r.add_yaml(Path::new(f), text).expect("registry");
    }
    r
}

fn table(yaml: &str) -> RouteTable {
    let mut c = Config::default();
    c.add_str("merge.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    RouteTable::compile(&c, &registry()).unwrap_or_else(|e| panic!("{e}"))
}

fn istio_gateway(name: &str, hosts: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: {hosts}\n---\n"
    )
}

fn virtual_service(name: &str, gateway: &str, hosts: &str, backend: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  hosts: {hosts}\n  gateways: [{gateway}]\n  http:\n  - route:\n    - destination: {{host: {backend}, port: {{number: 8080}}}}\n---\n"
    )
}

fn kube_gateway(name: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  gatewayClassName: mesh\n  listeners:\n  - {{name: http, port: 8080, protocol: HTTP}}\n---\n"
    )
}

fn http_route(name: &str, gateway: &str, host: &str, prefix: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{name: {gateway}}}]\n  hostnames: [{host}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n---\n"
    )
}

/// The Service a request to port 8080 of the listener opened for `gateway` goes to; None: 404.
fn backend(t: &RouteTable, gateway: &str, host: &str, path: &str) -> Option<String> {
    let (uri, headers) = (path.parse::<http::Uri>().expect("uri"), http::HeaderMap::new());
    let info = RequestInfo {
        context: Context::Gateway { name: gateway, namespace: NS, port: 8080 },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some(host),
        scheme: "http",
        headers: &headers,
    };
    match t.route(&info, &mut rand::thread_rng()) {
        Decision::Forward(f) => Some(f.cluster.service.name.clone()),
        Decision::NoRoute { .. } => None,
        other => panic!("{host}{path}: neither forwarded nor 404: {other:?}"),
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.into())
}

#[test]
fn two_istio_gateways_on_one_port_are_served_by_host() {
    let t = table(
        &[
            istio_gateway("gw-a", "[a.example]"),
            istio_gateway("gw-b", "[b.example]"),
            virtual_service("vs-a", "gw-a", "[a.example]", "infra-backend-v1"),
            virtual_service("vs-b", "gw-b", "[b.example]", "infra-backend-v2"),
        ]
        .concat(),
    );
    assert_eq!(t.gateway_ports(), [8080, 8080], "both listen on 8080");
    // The node's one listener on 8080 is opened for either: both serve every host of the port.
    for listener in ["gw-a", "gw-b"] {
        assert_eq!(backend(&t, listener, "a.example", "/"), some("infra-backend-v1"), "{listener}");
        assert_eq!(backend(&t, listener, "b.example:8080", "/"), some("infra-backend-v2"), "{listener}");
        assert_eq!(backend(&t, listener, "c.example", "/"), None, "{listener}: no server admits it");
    }
    assert!(t.warnings.iter().all(|w| !w.contains("share port")), "{:?}", t.warnings);
}

#[test]
fn the_same_host_in_virtual_services_of_two_istio_gateways_is_warned_with_both_names() {
    let t = table(
        &[
            istio_gateway("gw-a", "[same.example]"),
            istio_gateway("gw-b", "[same.example]"),
            virtual_service("vs-a", "gw-a", "[same.example]", "infra-backend-v1"),
            virtual_service("vs-b", "gw-b", "[same.example]", "infra-backend-v2"),
        ]
        .concat(),
    );
    assert_eq!(backend(&t, "gw-b", "same.example", "/"), some("infra-backend-v1"), "the first listed applies");
    let w: Vec<&String> = t.warnings.iter().filter(|w| w.contains("share port 8080")).collect();
    assert_eq!(w.len(), 1, "{:?}", t.warnings);
    for name in ["gateway-conformance-infra/gw-a", "gateway-conformance-infra/gw-b", "vs-a", "vs-b", "same.example"] {
        assert!(w[0].contains(name), "{name} not in {}", w[0]);
    }
}

#[test]
fn two_gateway_api_gateways_on_one_port_merge_their_virtual_hosts() {
    let t = table(
        &[
            kube_gateway("api-1"),
            kube_gateway("api-2"),
            http_route("r1", "api-1", "x.example", "/one", "infra-backend-v1"),
            http_route("r2", "api-2", "y.example", "/", "infra-backend-v2"),
            // The same host on the other Gateway: one virtual host, api-1's rules first.
            http_route("r3", "api-2", "x.example", "/", "infra-backend-v3"),
        ]
        .concat(),
    );
    for listener in ["api-1", "api-2"] {
        assert_eq!(backend(&t, listener, "y.example", "/"), some("infra-backend-v2"), "{listener}");
        assert_eq!(backend(&t, listener, "x.example", "/one/a"), some("infra-backend-v1"), "{listener}");
        assert_eq!(backend(&t, listener, "x.example", "/two"), some("infra-backend-v3"), "{listener}");
        assert_eq!(backend(&t, listener, "z.example", "/"), None, "{listener}");
    }
    let w: Vec<&String> = t.warnings.iter().filter(|w| w.contains("both serve host x.example on port 8080")).collect();
    assert_eq!(w.len(), 1, "{:?}", t.warnings);
    assert!(w[0].contains("gateway-conformance-infra/api-1 and gateway-conformance-infra/api-2"), "{}", w[0]);
}

#[test]
fn an_istio_and_a_gateway_api_gateway_on_one_port_share_it_by_host() {
    let t = table(
        &[
            istio_gateway("gw-a", "[\"*\"]"),
            virtual_service("vs-any", "gw-a", "[\"*\"]", "infra-backend-v1"),
            kube_gateway("api-1"),
            http_route("r1", "api-1", "y.example", "/", "infra-backend-v2"),
        ]
        .concat(),
    );
    for listener in ["gw-a", "api-1"] {
        // The most specific host name wins: the route's exact name over the VirtualService's `*`.
        assert_eq!(backend(&t, listener, "y.example", "/"), some("infra-backend-v2"), "{listener}");
        assert_eq!(backend(&t, listener, "other.example", "/"), some("infra-backend-v1"), "{listener}");
    }
}
