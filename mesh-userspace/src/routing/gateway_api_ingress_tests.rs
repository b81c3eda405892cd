//! Gateway API ingress conformance tests (kubernetes-sigs/gateway-api `conformance/tests/`,
//! commit 4564255), their YAML verbatim (`mesh-userspace/tests/gateway_api/ingress/`) on top of
//! `conformance/base/manifests.yaml` (its Gateways `same-namespace`, `all-namespaces`,
//! `backend-namespaces`), `{GATEWAY_CLASS_NAME}` replaced by `mesh` as the suite's harness does.
//! Each request of the Go test's table is routed through `RouteTable::route` with the Gateway's
//! listener as the source and checked on the backend, the path and headers the backend gets, the
//! response headers and the redirect `Location`.
use std::path::Path;

use http::HeaderMap;
use rand::{rngs::StdRng, SeedableRng};

use super::super::*;
use super::{intersect, vhost_matches};
use crate::config::Config;

const INFRA: &str = "gateway-conformance-infra";

macro_rules! fixture {
    ($f:literal) => {
        ($f, include_str!(concat!("../../tests/gateway_api/ingress/", $f)))
    };
}

fn registry() -> Registry {
    let mut r = Registry::default();
    for (f, text) in [fixture!("base-manifests.yaml"), fixture!("pods.yaml")] {
        r.add_yaml(Path::new(f), text).expect("registry");
    }
    r
}

/// The base manifests plus `files`, as the conformance harness applies them.
fn config_of(files: &[(&str, &str)]) -> Config {
    let mut c = Config::default();
    for (f, text) in [fixture!("base-manifests.yaml")].iter().chain(files) {
        c.add_str(f, &text.replace("{GATEWAY_CLASS_NAME}", "mesh")).unwrap_or_else(|e| panic!("{e}"));
    }
    c
}

fn table_of(files: &[(&str, &str)]) -> RouteTable {
    RouteTable::compile(&config_of(files), &registry()).unwrap_or_else(|e| panic!("{e}"))
}

/// What the conformance client observes.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// The Service whose pods got the request (the echo server reports its pod name).
    backend: Option<String>,
    /// The path, Host and headers the backend received.
    path: String,
    host: String,
    headers: HeaderMap,
    location: Option<String>,
}

/// A request as the conformance client sends it to a Gateway's listener.
struct Req<'a> {
    gateway: &'a str,
    port: u16,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

impl Default for Req<'_> {
    fn default() -> Self {
        Req { gateway: "same-namespace", port: 80, method: "GET", host: "gw.example", path: "/", headers: &[] }
    }
}

fn send_with(t: &RouteTable, rng: &mut StdRng, r: &Req<'_>) -> Seen {
    let mut h = HeaderMap::new();
    for (k, v) in r.headers {
        h.append(http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(), v.parse().unwrap());
    }
    let uri: http::Uri = r.path.parse().unwrap();
    let method: http::Method = r.method.parse().unwrap();
    let info = RequestInfo {
        context: Context::Gateway { name: r.gateway, namespace: INFRA, port: r.port },
        source: None,
        method: &method,
        uri: &uri,
        authority: Some(r.host),
        scheme: "http",
        headers: &h,
    };
    let o = crate::routing::tests::observe(t, rng, &info);
    Seen {
        status: o.status,
        backend: o.service.map(|s| format!("{}/{}", s.namespace, s.name)),
        path: o.path,
        host: o.host,
        headers: o.headers,
        location: o.location,
    }
}

fn send(t: &RouteTable, r: Req<'_>) -> Seen {
    send_with(t, &mut StdRng::seed_from_u64(7), &r)
}

fn all(h: &HeaderMap, name: &str) -> String {
    h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join(",")
}

const V1: &str = "gateway-conformance-infra/infra-backend-v1";
const V2: &str = "gateway-conformance-infra/infra-backend-v2";
const V3: &str = "gateway-conformance-infra/infra-backend-v3";

/// (host, path, headers, expected backend or None for 404).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

/// Sends each case to `gateway`'s port 80 and checks where it went.
fn expect_backends(t: &RouteTable, gateway: &str, cases: &[Case<'_>]) {
    for (host, path, headers, want) in cases {
        let s = send(t, Req { gateway, host, path, headers, ..Req::default() });
        match want {
            Some(b) => assert_eq!((s.status, s.backend.as_deref()), (200, Some(*b)), "{host}{path} {headers:?}"),
            None => assert_eq!(s.status, 404, "{host}{path} {headers:?}: {s:?}"),
        }
    }
}

#[test]
fn served_gateways_listen_once_per_port_and_tls_listeners_are_warned() {
    let t = table_of(&[]);
    let mut ports: Vec<(String, u16)> = t.gateways().iter().map(|g| (g.name.clone(), g.port)).collect();
    ports.sort();
    assert_eq!(
        ports,
        [("all-namespaces".to_owned(), 80), ("backend-namespaces".to_owned(), 80), ("same-namespace".to_owned(), 80)]
    );
    assert!(
        // The base manifests' HTTPS listener names a Secret they do not define.
        t.warnings.iter().any(|w| w.contains("listener \"https\" (HTTPS port 443) not served: Secret")
            && w.contains("(InvalidCertificateRef)")),
        "{:?}",
        t.warnings
    );
    // A class that is not ours is not served; a GatewayClass of ours makes any name served.
    let other = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: theirs}\nspec: {controllerName: example.com/other}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: ours}\nspec: {controllerName: mesh/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: a, namespace: gateway-conformance-infra}\nspec:\n  gatewayClassName: theirs\n  listeners: [{name: http, port: 8080, protocol: HTTP}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: b, namespace: gateway-conformance-infra}\nspec:\n  gatewayClassName: ours\n  listeners: [{name: http, port: 8081, protocol: HTTP}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: c, namespace: gateway-conformance-infra}\nspec:\n  gatewayClassName: nobody\n  listeners: [{name: http, port: 8082, protocol: HTTP}]\n";
    let t = table_of(&[("classes.yaml", other)]);
    let ports: Vec<u16> = t.gateway_ports();
    assert!(ports.contains(&8081) && !ports.contains(&8080) && !ports.contains(&8082), "{ports:?}");
    let joined = t.warnings.join("\n");
    assert!(joined.contains("controllerName \"example.com/other\""), "{joined}");
    assert!(joined.contains("GatewayClass \"nobody\" is not defined"), "{joined}");
}

#[test]
fn httproute_simple_same_namespace() {
    let t = table_of(&[fixture!("httproute-simple-same-namespace.yaml")]);
    expect_backends(&t, "same-namespace", &[("gw.example", "/", &[], Some(V1))]);
    // Another Gateway on the same port shares the node's listener there: the port's virtual
    // hosts are served whichever Gateway it was opened for (routing/gateway_merge_tests.rs).
    expect_backends(&t, "all-namespaces", &[("gw.example", "/", &[], Some(V1))]);
}

#[test]
fn httproute_hostname_intersection() {
    let t = table_of(&[fixture!("httproute-hostname-intersection.yaml")]);
    let g = "httproute-hostname-intersection";
    expect_backends(
        &t,
        g,
        &[
            ("very.specific.com", "/s1", &[], Some(V1)),
            ("very.specific.com:1234", "/s1", &[], Some(V1)),
            ("non.matching.com", "/s1", &[], None),
            ("foo.nonmatchingwildcard.io", "/s1", &[], None),
            ("foo.wildcard.io", "/s1", &[], None),
            ("very.specific.com", "/non-matching-prefix", &[], None),
            ("foo.wildcard.io", "/s2", &[], Some(V2)),
            ("bar.wildcard.io", "/s2", &[], Some(V2)),
            ("foo.bar.wildcard.io", "/s2", &[], Some(V2)),
            ("non.matching.com", "/s2", &[], None),
            ("wildcard.io", "/s2", &[], None),
            ("very.specific.com", "/s2", &[], None),
            ("foo.wildcard.io", "/non-matching-prefix", &[], None),
            ("very.specific.com", "/s3", &[], Some(V3)),
            ("non.matching.com", "/s3", &[], None),
            ("foo.specific.com", "/s3", &[], None),
            ("foo.wildcard.io", "/s3", &[], None),
            ("foo.anotherwildcard.io", "/s4", &[], Some(V1)),
            ("bar.anotherwildcard.io", "/s4", &[], Some(V1)),
            ("foo.bar.anotherwildcard.io", "/s4", &[], Some(V1)),
            ("anotherwildcard.io", "/s4", &[], None),
            ("foo.wildcard.io", "/s4", &[], None),
            ("very.specific.com", "/s4", &[], None),
            ("foo.anotherwildcard.io", "/non-matching-prefix", &[], None),
            // no-intersecting-hosts is not attached.
            ("specific.but.wrong.com", "/s5", &[], None),
            ("wildcard.io", "/s5", &[], None),
        ],
    );
    assert!(
        t.warnings.iter().any(|w| w.contains("no-intersecting-hosts") || w.contains("NoMatchingListenerHostname")),
        "{:?}",
        t.warnings
    );
    // The listener with no hostname: the route's hostnames, nothing else.
    expect_backends(
        &t,
        "httproute-hostname-intersection-all",
        &[
            ("first.com", "/", &[], Some(V2)),
            ("sub.first.com", "/", &[], Some(V2)),
            ("second.com", "/", &[], Some(V2)),
            ("sub.second.com", "/", &[], Some(V2)),
            ("third.com", "/", &[], None),
        ],
    );
}

#[test]
fn httproute_listener_hostname_matching() {
    let t = table_of(&[fixture!("httproute-listener-hostname-matching.yaml")]);
    expect_backends(
        &t,
        "httproute-listener-hostname-matching",
        &[
            ("bar.com", "/", &[], Some(V1)),
            ("foo.bar.com", "/", &[], Some(V2)),
            ("baz.bar.com", "/", &[], Some(V3)),
            ("boo.bar.com", "/", &[], Some(V3)),
            ("multiple.prefixes.bar.com", "/", &[], Some(V3)),
            ("multiple.prefixes.foo.com", "/", &[], Some(V3)),
            ("foo.com", "/", &[], None),
            ("no.matching.host", "/", &[], None),
        ],
    );
}

#[test]
fn httproute_cross_namespace_by_selector_and_invalid_parent_refs_not_attached() {
    let t = table_of(&[fixture!("httproute-cross-namespace.yaml")]);
    expect_backends(
        &t,
        "backend-namespaces",
        &[("gw.example", "/", &[], Some("gateway-conformance-web-backend/web-backend"))],
    );
    // HTTPRouteInvalidCrossNamespaceParentRef: same-namespace admits routes of its own namespace only.
    let t = table_of(&[fixture!("httproute-invalid-cross-namespace-parent-ref.yaml")]);
    expect_backends(&t, "same-namespace", &[("gw.example", "/", &[], None)]);
    assert!(
        t.warnings
            .iter()
            .any(|w| w.contains("does not allow routes from namespace \"gateway-conformance-web-backend\"")),
        "{:?}",
        t.warnings
    );
    // HTTPRouteDisallowedKind: a listener allowing TLSRoute only.
    let t = table_of(&[fixture!("httproute-disallowed-kind.yaml")]);
    assert!(t.gateway_api_vs.is_empty());
    assert!(
        t.warnings.iter().any(|w| w.contains("does not allow kind HTTPRoute (NotAllowedByListeners)")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn httproute_matching_and_across_routes() {
    let t = table_of(&[fixture!("httproute-matching.yaml")]);
    expect_backends(
        &t,
        "same-namespace",
        &[
            ("gw.example", "/", &[], Some(V1)),
            ("gw.example", "/example", &[], Some(V1)),
            ("gw.example", "/", &[("Version", "one")], Some(V1)),
            ("gw.example", "/v2", &[], Some(V2)),
            ("gw.example", "/v2/example", &[], Some(V2)),
            ("gw.example", "/", &[("Version", "two")], Some(V2)),
            ("gw.example", "/v2/", &[], Some(V2)),
            ("gw.example", "/v2example", &[], Some(V1)),
            ("gw.example", "/foo/v2/example", &[], Some(V1)),
        ],
    );
    let t = table_of(&[fixture!("httproute-matching-across-routes.yaml")]);
    expect_backends(
        &t,
        "same-namespace",
        &[
            ("example.com", "/", &[], Some(V1)),
            ("example.com", "/example", &[], Some(V1)),
            ("example.net", "/example", &[], Some(V1)),
            ("example.com", "/example", &[("Version", "one")], Some(V1)),
            ("example.com", "/v2", &[], Some(V2)),
            ("example.net", "/v2", &[], Some(V1)),
            ("example.com", "/v2/example", &[], Some(V2)),
            ("example.com", "/", &[("Version", "two")], Some(V2)),
        ],
    );
}

#[test]
fn httproute_exact_path_header_and_method_matching() {
    let t = table_of(&[fixture!("httproute-exact-path-matching.yaml")]);
    expect_backends(
        &t,
        "same-namespace",
        &[
            ("gw.example", "/one", &[], Some(V1)),
            ("gw.example", "/two", &[], Some(V2)),
            ("gw.example", "/", &[], None),
            ("gw.example", "/one/example", &[], None),
            ("gw.example", "/two/", &[], None),
            ("gw.example", "/Two", &[], None),
        ],
    );
    let t = table_of(&[fixture!("httproute-header-matching.yaml")]);
    expect_backends(
        &t,
        "same-namespace",
        &[
            ("gw.example", "/", &[("Version", "one")], Some(V1)),
            ("gw.example", "/", &[("Version", "two")], Some(V2)),
            ("gw.example", "/", &[("Version", "two"), ("Color", "orange")], Some(V1)),
            ("gw.example", "/", &[("Version", "two"), ("Color", "blue")], Some(V2)),
            ("gw.example", "/", &[("Color", "orange")], None),
            ("gw.example", "/", &[("Some-Other-Header", "one")], None),
            ("gw.example", "/", &[("Color", "blue")], Some(V1)),
            ("gw.example", "/", &[("Color", "green")], Some(V1)),
            ("gw.example", "/", &[("Color", "red")], Some(V2)),
            ("gw.example", "/", &[("Color", "yellow")], Some(V2)),
            ("gw.example", "/", &[("Color", "purple")], None),
        ],
    );
    let t = table_of(&[fixture!("httproute-method-matching.yaml")]);
    for (method, path, headers, want) in [
        ("POST", "/", &[][..], Some(V1)),
        ("GET", "/", &[], Some(V2)),
        ("HEAD", "/", &[], None),
        ("GET", "/path1", &[], Some(V1)),
        ("PUT", "/", &[("version", "one")], Some(V2)),
        ("POST", "/path2", &[("version", "two")], Some(V3)),
        ("PATCH", "/path3", &[], Some(V1)),
        ("DELETE", "/path4", &[("version", "three")], Some(V1)),
        ("PUT", "/", &[], None),
        ("DELETE", "/path4", &[], None),
        ("PATCH", "/path5", &[], Some(V1)),
        ("PATCH", "/", &[("version", "four")], Some(V2)),
    ] {
        let s = send(&t, Req { method, path, headers, ..Req::default() });
        match want {
            Some(b) => assert_eq!((s.status, s.backend.as_deref()), (200, Some(b)), "{method} {path} {headers:?}"),
            None => assert_eq!(s.status, 404, "{method} {path}: {s:?}"),
        }
    }
}

#[test]
fn httproute_query_param_matching() {
    let t = table_of(&[fixture!("httproute-query-param-matching.yaml")]);
    expect_backends(
        &t,
        "same-namespace",
        &[
            ("gw.example", "/?animal=whale", &[], Some(V1)),
            ("gw.example", "/?animal=dolphin", &[], Some(V2)),
            ("gw.example", "/?animal=dolphin&color=blue", &[], Some(V3)),
            ("gw.example", "/?ANIMAL=Whale", &[], Some(V3)),
            ("gw.example", "/?animal=whale&otherparam=irrelevant", &[], Some(V1)),
            ("gw.example", "/?animal=dolphin&color=yellow", &[], Some(V2)),
            ("gw.example", "/?color=blue", &[], None),
            ("gw.example", "/?animal=dog", &[], None),
            ("gw.example", "/?animal=whaledolphin", &[], None),
            ("gw.example", "/", &[], None),
            ("gw.example", "/path1?animal=whale", &[], Some(V1)),
            ("gw.example", "/?animal=whale", &[("version", "one")], Some(V2)),
            ("gw.example", "/path2?animal=whale", &[("version", "two")], Some(V3)),
            ("gw.example", "/path3?animal=shark", &[], Some(V1)),
            ("gw.example", "/path4?animal=kraken", &[("version", "three")], Some(V1)),
            ("gw.example", "/?animal=shark", &[], None),
            ("gw.example", "/path4?animal=kraken", &[], None),
            ("gw.example", "/path5?animal=hydra", &[], Some(V1)),
            ("gw.example", "/?animal=hydra", &[("version", "four")], Some(V3)),
        ],
    );
}

#[test]
fn httproute_request_and_response_header_modifier() {
    let t = table_of(&[fixture!("httproute-request-header-modifier.yaml")]);
    let s = send(
        &t,
        Req {
            path: "/set",
            headers: &[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")],
            ..Req::default()
        },
    );
    assert_eq!(s.backend.as_deref(), Some(V1));
    assert_eq!(all(&s.headers, "x-header-set"), "set-overwrites-values");
    assert_eq!(all(&s.headers, "some-other-header"), "val");
    let s = send(&t, Req { path: "/add", headers: &[("X-Header-Add", "some-other-value")], ..Req::default() });
    assert_eq!(all(&s.headers, "x-header-add"), "some-other-value,add-appends-values");
    let s = send(&t, Req { path: "/remove", headers: &[("X-Header-Remove", "val")], ..Req::default() });
    assert!(s.headers.get("x-header-remove").is_none());
    let s = send(
        &t,
        Req {
            path: "/multiple",
            headers: &[
                ("X-Header-Set-2", "set-val-2"),
                ("X-Header-Add-2", "add-val-2"),
                ("X-Header-Remove-2", "remove-val-2"),
                ("Another-Header", "another-header-val"),
            ],
            ..Req::default()
        },
    );
    for (k, v) in [
        ("x-header-set-1", "header-set-1"),
        ("x-header-set-2", "header-set-2"),
        ("x-header-add-1", "header-add-1"),
        ("x-header-add-2", "add-val-2,header-add-2"),
        ("x-header-add-3", "header-add-3"),
        ("another-header", "another-header-val"),
    ] {
        assert_eq!(all(&s.headers, k), v, "{k}");
    }
    assert!(s.headers.get("x-header-remove-1").is_none() && s.headers.get("x-header-remove-2").is_none());
    let s = send(
        &t,
        Req {
            path: "/case-insensitivity",
            headers: &[
                ("x-header-set", "original-val-set"),
                ("x-header-add", "original-val-add"),
                ("x-header-remove", "original-val-remove"),
            ],
            ..Req::default()
        },
    );
    assert_eq!(all(&s.headers, "x-header-set"), "header-set");
    assert_eq!(all(&s.headers, "x-header-add"), "original-val-add,header-add");
    assert!(s.headers.get("x-header-remove").is_none());

    // Response headers: what the backend set, after the filter (the echo server's headers are
    // stood in for by applying the compiled operations to them).
    let t = table_of(&[fixture!("httproute-response-header-modifier.yaml")]);
    let backend_set = |path: &str, set: &[(&str, &str)]| {
        let uri: http::Uri = path.parse().unwrap();
        let info = RequestInfo {
            context: Context::Gateway { name: "same-namespace", namespace: INFRA, port: 80 },
            source: None,
            method: &http::Method::GET,
            uri: &uri,
            authority: Some("gw.example"),
            scheme: "http",
            headers: &HeaderMap::new(),
        };
        let Decision::Forward(f) = t.route(&info, &mut StdRng::seed_from_u64(1)) else { panic!("{path}") };
        assert_eq!(f.cluster.service.name, "infra-backend-v1");
        let mut h = HeaderMap::new();
        for (k, v) in set {
            h.append(http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(), v.parse().unwrap());
        }
        f.response_headers.apply(&mut h);
        h
    };
    let h = backend_set("/set", &[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")]);
    assert_eq!(
        (all(&h, "x-header-set").as_str(), all(&h, "some-other-header").as_str()),
        ("set-overwrites-values", "val")
    );
    let h = backend_set("/add", &[("X-Header-Add", "some-other-value")]);
    assert_eq!(all(&h, "x-header-add"), "some-other-value,add-appends-values");
    let h = backend_set("/remove", &[("X-Header-Remove", "val")]);
    assert!(h.get("x-header-remove").is_none());
    let h = backend_set(
        "/case-insensitivity",
        &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
        ],
    );
    for (k, v) in [
        ("x-header-set", "header-set"),
        ("x-header-add", "original-val-add,header-add"),
        ("x-lowercase-add", "lowercase-add"),
        ("x-mixedcase-add-1", "mixedcase-add-1"),
        ("x-mixedcase-add-2", "mixedcase-add-2"),
        ("x-uppercase-add", "uppercase-add"),
    ] {
        assert_eq!(all(&h, k), v, "{k}");
    }
    assert!(h.get("x-header-remove").is_none());
}

#[path = "gateway_api_ingress_filter_tests.rs"]
mod filters;
