//! The Gateway API mesh conformance tests (kubernetes-sigs/gateway-api `conformance/tests/mesh/`),
//! their YAML verbatim (`mesh-userspace/tests/gateway_api/`), each request of the Go test's table
//! routed through the compiled table and asserted on what the conformance test expects: the
//! backend, the path and headers the backend receives, the response headers, the redirect.
use std::path::Path;

use http::HeaderMap;
use rand::{rngs::StdRng, SeedableRng};

use super::super::*;
use crate::config::Config;

const NS: &str = "gateway-conformance-mesh";

macro_rules! fixture {
    ($f:literal) => {
        ($f, include_str!(concat!("../../tests/gateway_api/", $f)))
    };
}

fn registry() -> Registry {
    let mut r = Registry::default();
    for (f, text) in [fixture!("manifests.yaml"), fixture!("pods.yaml")] {
        r.add_yaml(Path::new(f), text).expect("registry");
    }
    r
}

fn table_of(files: &[(&str, &str)]) -> RouteTable {
    let mut c = Config::default();
    for (f, text) in files {
        c.add_str(f, text).unwrap_or_else(|e| panic!("{e}"));
    }
    RouteTable::compile(&c, &registry()).unwrap_or_else(|e| panic!("{e}"))
}

/// What the conformance client observes.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// The Service whose pods got the request (the echo server reports its pod name).
    backend: Option<String>,
    /// The path and headers the backend received.
    path: String,
    headers: HeaderMap,
    response_headers: HeaderMap,
    location: Option<String>,
}

/// Sends `path` with `headers` to `host` (`echo`, `echo-v1:8080`...; port 80 when left out) from a
/// meshed client, as the conformance client does.
fn send_with(t: &RouteTable, rng: &mut StdRng, host: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    let reg = registry();
    let (name, port) = host.split_once(':').map_or((host, 80), |(h, p)| (h, p.parse().unwrap()));
    let svc = reg.service_by_host(name, NS).unwrap_or_else(|| panic!("no service {name}")).clone();
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(), v.parse().unwrap());
    }
    let uri: http::Uri = path.parse().unwrap();
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some(host),
        scheme: "http",
        headers: &h,
    };
    let o = crate::routing::tests::observe(t, rng, &info);
    Seen {
        status: o.status,
        backend: o.service.map(|s| s.name.clone()),
        path: o.path,
        headers: o.headers,
        response_headers: o.response_headers,
        location: o.location,
    }
}

fn send(t: &RouteTable, host: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    send_with(t, &mut StdRng::seed_from_u64(7), host, path, headers)
}

fn all(h: &HeaderMap, name: &str) -> String {
    h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join(",")
}

#[test]
fn mesh_basic_no_route_is_plain_kubernetes() {
    let t = table_of(&[]);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo")));
}

#[test]
fn mesh_ports() {
    let t = table_of(&[fixture!("mesh-ports.yaml")]);
    let s = send(&t, "echo-v1", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v1")));
    assert_eq!(all(&s.response_headers, "x-header-set"), "v1");
    // The route is bound to port 80 only: 8080 is routed as if there were none.
    let s = send(&t, "echo-v1:8080", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v1")));
    assert!(s.response_headers.get("x-header-set").is_none());
    for host in ["echo-v2", "echo-v2:8080"] {
        let s = send(&t, host, "/", &[]);
        assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v2")), "{host}");
        assert_eq!(all(&s.response_headers, "x-header-set"), "v2", "{host}");
    }
}

#[test]
fn mesh_traffic_split() {
    let t = table_of(&[fixture!("mesh-split.yaml")]);
    assert_eq!(send(&t, "echo", "/v1", &[]).backend.as_deref(), Some("echo-v1"));
    assert_eq!(send(&t, "echo", "/v2", &[]).backend.as_deref(), Some("echo-v2"));
}

#[test]
fn mesh_httproute_matching() {
    let t = table_of(&[fixture!("httproute-matching.yaml")]);
    for (path, headers, backend) in [
        ("/", &[][..], "echo-v1"),
        ("/example", &[], "echo-v1"),
        ("/", &[("Version", "one")], "echo-v1"),
        ("/v2", &[], "echo-v2"),
        ("/v2/example", &[], "echo-v2"),
        ("/", &[("Version", "two")], "echo-v2"),
        ("/v2/", &[], "echo-v2"),
        // Not a path segment prefix, so it does not match /v2.
        ("/v2example", &[], "echo-v1"),
        ("/foo/v2/example", &[], "echo-v1"),
    ] {
        let s = send(&t, "echo", path, headers);
        assert_eq!(s.backend.as_deref(), Some(backend), "{path} {headers:?}");
        assert_eq!(s.path, path);
    }
}

#[test]
fn mesh_httproute_query_param_matching() {
    let t = table_of(&[fixture!("httproute-query-param-matching.yaml")]);
    for (path, headers, want) in [
        ("/?animal=whale", &[][..], Some("echo-v1")),
        ("/?animal=dolphin", &[], Some("echo-v2")),
        ("/?animal=whale&otherparam=irrelevant", &[], Some("echo-v1")),
        ("/?animal=dolphin&color=yellow", &[], Some("echo-v2")),
        ("/?color=blue", &[], None),
        ("/?animal=dog", &[], None),
        ("/?animal=whaledolphin", &[], None),
        ("/", &[], None),
        ("/path1?animal=whale", &[], Some("echo-v1")),
        ("/?animal=whale", &[("version", "one")], Some("echo-v2")),
        ("/path3?animal=shark", &[], Some("echo-v1")),
        ("/path4?animal=kraken", &[("version", "three")], Some("echo-v1")),
        ("/?animal=shark", &[], None),
        ("/path4?animal=kraken", &[], None),
        // Precedence: the longer path prefix beats a query match.
        ("/path5?animal=hydra", &[], Some("echo-v1")),
    ] {
        let s = send(&t, "echo", path, headers);
        match want {
            Some(b) => assert_eq!((s.status, s.backend.as_deref()), (200, Some(b)), "{path} {headers:?}"),
            None => assert_eq!(s.status, 404, "{path} {headers:?}: {s:?}"),
        }
    }
}

#[test]
fn mesh_httproute_weight_70_30() {
    let t = table_of(&[fixture!("httproute-weight.yaml")]);
    // Upstream sends 500 requests and allows ±5 % per backend.
    let mut rng = StdRng::seed_from_u64(1);
    let n = 500;
    let v1 = (0..n).filter(|_| send_with(&t, &mut rng, "echo", "/", &[]).backend.as_deref() == Some("echo-v1")).count();
    let share = v1 as f64 / n as f64;
    assert!((share - 0.7).abs() <= 0.05, "echo-v1 got {share}");
}

#[test]
fn mesh_httproute_simple_same_namespace() {
    let t = table_of(&[fixture!("httproute-simple-same-namespace.yaml")]);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v1")));
}

#[test]
fn mesh_httproute_request_header_modifier() {
    let t = table_of(&[fixture!("httproute-request-header-modifier.yaml")]);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "/set",
            &[("Some-Other-Header", "val")],
            &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")],
            &[],
        ),
        (
            "/set",
            &[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")],
            &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")],
            &[],
        ),
        (
            "/add",
            &[("Some-Other-Header", "val")],
            &[("Some-Other-Header", "val"), ("X-Header-Add", "add-appends-values")],
            &[],
        ),
        (
            "/add",
            &[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value")],
            &[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value,add-appends-values")],
            &[],
        ),
        ("/remove", &[("X-Header-Remove", "val")], &[], &["X-Header-Remove"]),
        (
            "/multiple",
            &[
                ("X-Header-Set-2", "set-val-2"),
                ("X-Header-Add-2", "add-val-2"),
                ("X-Header-Remove-2", "remove-val-2"),
                ("Another-Header", "another-header-val"),
            ],
            &[
                ("X-Header-Set-1", "header-set-1"),
                ("X-Header-Set-2", "header-set-2"),
                ("X-Header-Add-1", "header-add-1"),
                ("X-Header-Add-2", "add-val-2,header-add-2"),
                ("X-Header-Add-3", "header-add-3"),
                ("Another-Header", "another-header-val"),
            ],
            &["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
        (
            "/case-insensitivity",
            &[
                ("x-header-set", "original-val-set"),
                ("x-header-add", "original-val-add"),
                ("x-header-remove", "original-val-remove"),
                ("Another-Header", "another-header-val"),
            ],
            &[
                ("X-Header-Set", "header-set"),
                ("X-Header-Add", "original-val-add,header-add"),
                ("Another-Header", "another-header-val"),
            ],
            &["x-header-remove", "X-Header-Remove"],
        ),
    ];
    for (path, sent, want, absent) in cases {
        let s = send(&t, "echo", path, sent);
        assert_eq!(s.backend.as_deref(), Some("echo-v1"), "{path}");
        assert_eq!(s.path, *path);
        for (k, v) in *want {
            assert_eq!(all(&s.headers, k), *v, "{path}: {k}");
        }
        for k in *absent {
            assert!(s.headers.get(k.to_ascii_lowercase()).is_none(), "{path}: {k} present");
        }
    }
}

#[test]
fn mesh_httproute_rewrite_path() {
    let t = table_of(&[fixture!("httproute-rewrite-path.yaml")]);
    for (path, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        let s = send(&t, "echo", path, &[]);
        assert_eq!((s.backend.as_deref(), s.path.as_str()), (Some("echo-v1"), want), "{path}");
    }
    let sent =
        [("X-Header-Remove", "remove-val"), ("X-Header-Add-Append", "append-val-1"), ("X-Header-Set", "set-val")];
    for (path, want) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let s = send(&t, "echo", path, &sent);
        assert_eq!((s.backend.as_deref(), s.path.as_str()), (Some("echo-v1"), want), "{path}");
        assert_eq!(all(&s.headers, "x-header-add"), "header-val-1");
        assert_eq!(all(&s.headers, "x-header-add-append"), "append-val-1,header-val-2");
        assert_eq!(all(&s.headers, "x-header-set"), "set-overwrites-values");
        assert!(s.headers.get("x-header-remove").is_none());
    }
}

/// (path, status, Location) for the redirect tests: upstream checks the parts of Location it
/// names (scheme, host, port, path); the whole Location is asserted here.
fn redirects(file: (&str, &str), cases: &[(&str, u16, &str)]) {
    let t = table_of(&[file]);
    for (path, status, location) in cases {
        let s = send(&t, "echo", path, &[]);
        assert_eq!((s.status, s.location.as_deref()), (*status, Some(*location)), "{}: {path}", file.0);
    }
}

#[test]
fn mesh_httproute_redirect_host_and_status() {
    redirects(
        fixture!("httproute-redirect-host-and-status.yaml"),
        &[
            ("/hostname-redirect", 302, "http://example.org/hostname-redirect"),
            ("/host-and-status", 301, "http://example.org/host-and-status"),
        ],
    );
}

#[test]
fn mesh_httproute_redirect_path() {
    redirects(
        fixture!("httproute-redirect-path.yaml"),
        &[
            ("/original-prefix/lemon", 302, "http://echo/replacement-prefix/lemon"),
            ("/full/path/original", 302, "http://echo/full-path-replacement"),
            ("/path-and-host", 302, "http://example.org/replacement-prefix"),
            ("/path-and-status", 301, "http://echo/replacement-prefix"),
            ("/full-path-and-host", 302, "http://example.org/replacement-full"),
            ("/full-path-and-status", 301, "http://echo/replacement-full"),
        ],
    );
}

#[test]
fn mesh_httproute_redirect_port() {
    redirects(
        fixture!("httproute-redirect-port.yaml"),
        &[
            ("/port", 302, "http://echo:8083/port"),
            ("/port-and-host", 302, "http://example.org:8083/port-and-host"),
            ("/port-and-status", 301, "http://echo:8083/port-and-status"),
            ("/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"),
        ],
    );
}

#[test]
fn mesh_httproute_redirect_scheme() {
    redirects(
        fixture!("httproute-redirect-scheme.yaml"),
        &[
            ("/scheme", 302, "https://echo/scheme"),
            ("/scheme-and-host", 302, "https://example.org/scheme-and-host"),
            ("/scheme-and-status", 301, "https://echo/scheme-and-status"),
            ("/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status"),
        ],
    );
}

#[test]
fn mesh_httproute_303_307_308_redirects() {
    redirects(fixture!("httproute-303-redirect.yaml"), &[("/redirect", 303, "http://echo/redirect")]);
    redirects(fixture!("httproute-307-redirect.yaml"), &[("/temporary", 307, "http://echo/temporary")]);
    redirects(fixture!("httproute-308-redirect.yaml"), &[("/permanent", 308, "http://echo/permanent")]);
}

// Beyond the conformance suite: what the spec says that upstream's mesh tests do not exercise.

fn route(name: &str, extra_meta: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {NS}\n{extra_meta}spec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n{rules}"
    )
}

#[test]
fn precedence_across_routes_exact_prefix_method_headers_then_oldest() {
    let a = route(
        "a",
        "  creationTimestamp: \"2026-01-02T00:00:00Z\"\n",
        "  - matches: [{path: {type: PathPrefix, value: /x}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {type: RegularExpression, value: \"/x/.*\"}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n",
    );
    let b = route(
        "b",
        "  creationTimestamp: \"2026-01-01T00:00:00Z\"\n",
        "  - matches: [{path: {type: PathPrefix, value: /x}}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n  - matches: [{path: {type: Exact, value: /x/e}}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /x/long}, method: POST}, {path: {type: PathPrefix, value: /x/long}, headers: [{name: h, value: \"1\"}]}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n",
    );
    // Route a's file loads first; b is older, so b's equal /x prefix wins.
    let t = table_of(&[("a.yaml", &a), ("b.yaml", &b)]);
    assert_eq!(send(&t, "echo", "/x/y", &[]).backend.as_deref(), Some("echo-v2"));
    // Exact beats a longer prefix and a regex.
    assert_eq!(send(&t, "echo", "/x/e", &[]).backend.as_deref(), Some("echo-v2"));
    // The longest prefix beats a shorter one from an older route.
    assert_eq!(send(&t, "echo", "/x/long/1", &[("h", "1")]).backend.as_deref(), Some("echo-v1"));
    // Without creation times, namespace/name decides: a before b.
    let strip = |s: &str| s.lines().filter(|l| !l.contains("creationTimestamp")).collect::<Vec<_>>().join("\n") + "\n";
    let t = table_of(&[("b.yaml", &strip(&b)), ("a.yaml", &strip(&a))]);
    assert_eq!(send(&t, "echo", "/x/y", &[]).backend.as_deref(), Some("echo-v1"));
}

#[test]
fn unresolved_backends_get_500_for_their_share_and_weight_0_gets_nothing() {
    let r = route(
        "r",
        "",
        "  - matches: [{path: {value: /half}}]\n    backendRefs: [{name: nope, port: 80}, {name: echo-v1, port: 8080}]\n  - matches: [{path: {value: /zero}}]\n    backendRefs: [{name: echo-v1, port: 8080, weight: 0}, {name: echo-v2, port: 8080}]\n  - matches: [{path: {value: /none}}]\n    backendRefs: [{name: echo-v1, port: 8080, weight: 0}]\n  - matches: [{path: {value: /badport}}]\n    backendRefs: [{name: echo-v1, port: 1234}]\n  - matches: [{path: {value: /other-ns}}]\n    backendRefs: [{name: echo-v1, namespace: default, port: 8080}]\n",
    );
    let mut c = Config::default();
    c.add_str("r.yaml", &r).unwrap();
    let (t, rejected) = RouteTable::compile_admitting(&c, &registry());
    assert!(rejected.is_empty());
    assert!(
        t.warnings.iter().any(|w| w.contains(
            "Service gateway-conformance-mesh/nope is not in the registry; its share of the requests gets 500"
        )),
        "{:?}",
        t.warnings
    );
    let mut rng = StdRng::seed_from_u64(3);
    let statuses: Vec<u16> = (0..400).map(|_| send_with(&t, &mut rng, "echo", "/half", &[]).status).collect();
    let failed = statuses.iter().filter(|s| **s == 500).count();
    assert!((150..=250).contains(&failed), "{failed} of 400 got 500");
    assert!(statuses.iter().all(|s| *s == 500 || *s == 200));
    for _ in 0..50 {
        assert_eq!(send_with(&t, &mut rng, "echo", "/zero", &[]).backend.as_deref(), Some("echo-v2"));
    }
    for p in ["/none", "/badport", "/other-ns"] {
        assert_eq!(send(&t, "echo", p, &[]).status, 500, "{p}");
    }
}

#[test]
fn url_rewrite_hostname_timeout_method_and_regex_header() {
    let r = route(
        "r",
        "",
        "  - matches: [{method: POST}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n  - matches: [{headers: [{type: RegularExpression, name: x-id, value: \"[0-9]+\"}]}]\n    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example}}]\n    timeouts: {request: 1500ms}\n    backendRefs: [{name: echo-v1, port: 8080}]\n",
    );
    let t = table_of(&[("r.yaml", &r)]);
    let reg = registry();
    let svc = reg.service_by_host("echo", NS).unwrap().clone();
    let h: HeaderMap =
        [(http::HeaderName::from_static("x-id"), http::HeaderValue::from_static("42"))].into_iter().collect();
    let uri: http::Uri = "/a".parse().unwrap();
    let info = |method| RequestInfo {
        context: Context::Mesh { service: &svc, port: 80 },
        source: None,
        method,
        uri: &uri,
        authority: Some("echo"),
        scheme: "http",
        headers: &h,
    };
    let mut rng = StdRng::seed_from_u64(1);
    match t.route(&info(&http::Method::GET), &mut rng) {
        Decision::Forward(f) => {
            assert_eq!(f.cluster.service.name, "echo-v1");
            assert_eq!(f.timeout, Some(std::time::Duration::from_millis(1500)));
            assert_eq!(f.rewrite.and_then(|r| r.authority).as_deref(), Some("rewritten.example"));
        }
        d => panic!("{d:?}"),
    }
    match t.route(&info(&http::Method::POST), &mut rng) {
        Decision::Forward(f) => assert_eq!(f.cluster.service.name, "echo-v2"),
        d => panic!("{d:?}"),
    }
    // x-id not all digits: the regex matches the whole value, so no rule matches: 404.
    assert_eq!(send(&t, "echo", "/a", &[("x-id", "42a")]).status, 404);
}

#[test]
fn a_virtual_service_for_the_same_service_wins_and_is_warned() {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: {NS}}}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo-v2, port: {{number: 8080}}}}\n"
    );
    let c = {
        let mut c = Config::default();
        c.add_str("vs.yaml", &vs).unwrap();
        let (f, text) = fixture!("httproute-simple-same-namespace.yaml");
        c.add_str(f, text).unwrap();
        c
    };
    let t = RouteTable::compile(&c, &registry()).unwrap();
    assert_eq!(send(&t, "echo", "/", &[]).backend.as_deref(), Some("echo-v2"));
    assert!(
        t.warnings.iter().any(|w| w.contains("HTTPRoute gateway-conformance-mesh-test.gateway-conformance-mesh and VirtualService echo.gateway-conformance-mesh both route Service")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn routes_not_attached_are_warned_and_route_nothing() {
    let r = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: gateway-conformance-mesh}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: missing}\n  - {group: \"\", kind: Service, name: echo, port: 81}\n  - {group: \"\", kind: Service, name: echo, namespace: other}\n  - {name: some-gateway}\n  rules:\n  - backendRefs: [{name: echo-v2, port: 8080}]\n";
    let mut c = Config::default();
    c.add_str("r.yaml", r).unwrap();
    let t = RouteTable::compile(&c, &registry()).unwrap();
    let joined = format!("{:?} {:?}", t.warnings, c.warnings);
    for want in [
        "Service gateway-conformance-mesh/missing is not in the registry",
        "has no port 81",
        "Service other/echo is not in the registry",
        "Gateway gateway-conformance-mesh/some-gateway is not defined",
    ] {
        assert!(joined.contains(want), "{want}: {joined}");
    }
    assert_eq!(send(&t, "echo", "/", &[]).backend.as_deref(), Some("echo"));
}

#[test]
fn extension_ref_and_no_backend_answer_500_backend_filters_apply() {
    let r = route(
        "r",
        "",
        "  - matches: [{path: {value: /ext}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: F, name: f}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {value: /empty}}]\n  - matches: [{path: {value: /be}}]\n    timeouts: {request: 0s}\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: r}]}}]\n    backendRefs:\n    - name: echo-v2\n      port: 8080\n      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-backend, value: b}]}}, {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}]\n",
    );
    let t = table_of(&[("r.yaml", &r)]);
    assert_eq!(send(&t, "echo", "/ext", &[]).status, 500);
    assert_eq!(send(&t, "echo", "/empty", &[]).status, 500);
    let s = send(&t, "echo", "/be/1", &[]);
    assert_eq!(s.backend.as_deref(), Some("echo-v2"));
    assert_eq!((all(&s.headers, "x-rule"), all(&s.headers, "x-backend")), ("r".into(), "b".into()));
}

// RequestMirror, retry and timeouts.backendRequest: the rules of the upstream ingress conformance
// tests (HTTPRouteRequestMirror, HTTPRouteRequestPercentageMirror, HTTPRouteRequestMultipleMirrors,
// HTTPRouteRetry, HTTPRouteRetryConnectionError, HTTPRouteRetryWithTimeouts,
// HTTPRouteTimeoutBackendRequest) bound to the mesh Service (adapted-mirror-retry-timeouts.yaml).

fn forward(t: &RouteTable, rng: &mut StdRng, path: &str) -> Box<Forward> {
    forward_in(t, &registry(), rng, path)
}

fn forward_in(t: &RouteTable, reg: &Registry, rng: &mut StdRng, path: &str) -> Box<Forward> {
    let svc = reg.service_by_host("echo", NS).unwrap().clone();
    let uri: http::Uri = path.parse().unwrap();
    let h = HeaderMap::new();
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port: 80 },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some("echo"),
        scheme: "http",
        headers: &h,
    };
    match t.route(&info, rng) {
        Decision::Forward(f) => f,
        d => panic!("{path}: {d:?}"),
    }
}

fn mirrored_to(f: &Forward) -> Vec<String> {
    f.mirrors.iter().map(|c| format!("{}:{}", c.service.name, c.port)).collect()
}

#[test]
fn request_mirror_and_multiple_mirrors() {
    let t = table_of(&[fixture!("adapted-mirror-retry-timeouts.yaml")]);
    let mut rng = StdRng::seed_from_u64(5);
    for (path, backend, mirrors) in [
        ("/mirror", "echo-v1", &["echo-v2:8080"][..]),
        ("/mirror-and-modify-headers", "echo-v1", &["echo-v2:8080"][..]),
        ("/multi-mirror", "echo-v1", &["echo-v2:8080", "echo:8080"][..]),
        ("/multi-mirror-and-modify-request-headers", "echo-v1", &["echo-v2:8080", "echo:8080"][..]),
    ] {
        let f = forward(&t, &mut rng, path);
        assert_eq!(f.cluster.service.name, backend, "{path}");
        assert_eq!(mirrored_to(&f), mirrors, "{path}");
        if path.contains("modify") {
            // The mirrored request is the modified one: header edits come first in the proxy.
            let mut h = HeaderMap::new();
            h.insert("x-header-remove", "x".parse().unwrap());
            f.request_headers.apply(&mut h);
            assert_eq!(all(&h, "x-header-set"), "set-overwrites-values", "{path}");
            assert!(h.get("x-header-remove").is_none(), "{path}");
        }
    }
}

#[test]
fn request_percentage_mirror() {
    let t = table_of(&[fixture!("adapted-mirror-retry-timeouts.yaml")]);
    let mut rng = StdRng::seed_from_u64(9);
    // Upstream: percent 20, fraction 25/50 (= 50 %), percent 35, checked within 3 standard
    // deviations of the binomial over its requests; here over 1000 requests each.
    let n = 1000;
    for (path, pct) in
        [("/percent-mirror", 20.0), ("/percent-mirror-fraction", 50.0), ("/percent-mirror-and-modify-headers", 35.0)]
    {
        let hits = (0..n).filter(|_| !forward(&t, &mut rng, path).mirrors.is_empty()).count() as f64;
        let p: f64 = pct / 100.0;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!((hits - n as f64 * p).abs() <= 3.0 * sd, "{path}: {hits} of {n} mirrored, want {pct}%");
    }
}

#[test]
fn retry_codes_attempts_and_backend_request_timeout() {
    use std::time::Duration;
    let t = table_of(&[fixture!("adapted-mirror-retry-timeouts.yaml")]);
    let mut rng = StdRng::seed_from_u64(1);
    let f = forward(&t, &mut rng, "/retry/code-500-attempts-3");
    assert_eq!(f.retries.attempts, 3);
    assert!(f.retries.retry_on.status(500) && !f.retries.retry_on.status(502));
    let f = forward(&t, &mut rng, "/retry/code-all-attempts-2");
    assert_eq!(f.retries.attempts, 2);
    assert!([500, 502, 503, 504].iter().all(|c| f.retries.retry_on.status(*c)));
    assert!(!f.retries.retry_on.status(501));
    // No codes: connection errors only ("SHOULD retry on connection errors").
    let f = forward(&t, &mut rng, "/retry/no-status-code-attempts-3");
    assert_eq!(f.retries.attempts, 3);
    let on = &f.retries.retry_on;
    assert!(on.connect_failure && on.reset && on.refused_stream && !on.status(500) && !on.five_xx);
    // backendRequest is the per-try timeout, request the whole request's.
    let f = forward(&t, &mut rng, "/retry/backend-request-timeout-200ms");
    assert_eq!((f.retries.attempts, f.retries.per_try_timeout, f.timeout), (2, Some(Duration::from_millis(200)), None));
    let f = forward(&t, &mut rng, "/retry/request-timeout-200ms");
    assert_eq!(f.retries.per_try_timeout, Some(Duration::from_millis(200)));
    assert_eq!((f.retries.attempts, f.timeout), (5, Some(Duration::from_millis(400))));
    // No retry stanza: Istio's default policy, each try bounded by backendRequest; 0s: none.
    let f = forward(&t, &mut rng, "/backend-timeout");
    let want = RetryPolicy { per_try_timeout: Some(Duration::from_millis(500)), ..RetryPolicy::istio_default() };
    assert_eq!(*f.retries, want);
    let f = forward(&t, &mut rng, "/disable-backend-timeout");
    assert_eq!(*f.retries, RetryPolicy::istio_default());
    // A route with none of these keeps Istio's default, as before.
    let f = forward(&t, &mut rng, "/mirror");
    assert_eq!(*f.retries, RetryPolicy::istio_default());
}

#[test]
fn retry_backoff_and_backend_ref_mirror() {
    use std::time::Duration;
    let r = route(
        "r",
        "",
        "  - matches: [{path: {value: /b}}]\n    retry: {codes: [503], backoff: 100ms}\n    backendRefs:\n    - name: echo-v1\n      port: 8080\n      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}, fraction: {numerator: 1}}}]\n    - name: echo-v2\n      port: 8080\n      weight: 0\n  - matches: [{path: {value: /gone}}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nope, port: 80}}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n",
    );
    let mut c = Config::default();
    c.add_str("r.yaml", &r).unwrap();
    let (t, rejected) = RouteTable::compile_admitting(&c, &registry());
    assert!(rejected.is_empty());
    let mut rng = StdRng::seed_from_u64(2);
    let f = forward(&t, &mut rng, "/b");
    assert_eq!((f.retries.attempts, f.retries.backoff), (2, Some(Duration::from_millis(100))));
    // fraction 1/100 at the backendRef level: mirrored about 1 % of the times it is picked.
    let hits = (0..2000).filter(|_| !forward(&t, &mut rng, "/b").mirrors.is_empty()).count();
    assert!((5..=40).contains(&hits), "{hits} of 2000");
    // A mirror whose backend does not resolve is dropped (warned), the route still forwards.
    let f = forward(&t, &mut rng, "/gone");
    assert!(f.mirrors.is_empty());
    assert!(
        t.warnings.iter().any(|w| w.contains("nope is not in the registry; nothing is mirrored")),
        "{:?}",
        t.warnings
    );
    // Never sooner than the configured back-off, growing per retry; Envoy's default may be 0.
    let b = Some(Duration::from_millis(100));
    assert_eq!(retry_backoff(b, 1, 0.0), Duration::from_millis(100));
    assert_eq!(retry_backoff(b, 2, 0.0), Duration::from_millis(200));
    assert_eq!(retry_backoff(b, 9, 0.99), Duration::from_millis(800).mul_f64(1.99));
    assert_eq!(retry_backoff(None, 1, 0.0), Duration::ZERO);
    // A back-off that saturates stays at the maximum rather than panic in f64 rounding.
    assert_eq!(retry_backoff(Some(Duration::MAX), 4, 1.0), Duration::MAX);
    assert_eq!(retry_backoff(None, 1, 1.0), Duration::from_millis(50));
}

// ReferenceGrant: upstream's HTTPRouteReferenceGrant and
// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant, bound to the mesh Service.

/// The backend namespaces of those tests (not in the mesh manifests): a Service and a Pod each.
const OTHER_NAMESPACES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web-backend, namespace: gateway-conformance-web-backend}\nspec:\n  selector: {app: web-backend}\n  ports: [{name: http, port: 8080, targetPort: 3000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-backend-1, namespace: gateway-conformance-web-backend, labels: {app: web-backend}}\nstatus: {podIP: 10.244.2.1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app-backend-v1, namespace: gateway-conformance-app-backend}\nspec:\n  selector: {app: app-backend-v1}\n  ports: [{name: http, port: 8080, targetPort: 3000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: app-backend-v1-1, namespace: gateway-conformance-app-backend, labels: {app: app-backend-v1}}\nstatus: {podIP: 10.244.2.2}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app-backend-v2, namespace: gateway-conformance-app-backend}\nspec:\n  selector: {app: app-backend-v2}\n  ports: [{name: http, port: 8080, targetPort: 3000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: app-backend-v2-1, namespace: gateway-conformance-app-backend, labels: {app: app-backend-v2}}\nstatus: {podIP: 10.244.2.3}\n";

fn table_with_other_namespaces(files: &[(&str, &str)]) -> RouteTable {
    let reg = registry_with_others();
    let mut c = Config::default();
    for (f, text) in files {
        c.add_str(f, text).unwrap_or_else(|e| panic!("{e}"));
    }
    RouteTable::compile(&c, &reg).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn reference_grant_allows_a_backend_in_another_namespace() {
    let (f, text) = fixture!("adapted-httproute-reference-grant.yaml");
    let t = table_with_other_namespaces(&[(f, text)]);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("web-backend")));
    // Without the grant (only the route): RefNotPermitted, 500, warned.
    let route_only = text.split("\n---\n").nth(1).unwrap();
    let t = table_with_other_namespaces(&[("route.yaml", route_only)]);
    assert_eq!(send(&t, "echo", "/", &[]).status, 500);
    assert!(
        t.warnings.iter().any(|w| w.contains("RefNotPermitted: backendRef gateway-conformance-web-backend/web-backend is not accessible to a HTTPRoute in namespace \"gateway-conformance-mesh\"")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn reference_grant_for_another_service_leaves_that_backend_500() {
    let t = table_with_other_namespaces(&[fixture!(
        "adapted-httproute-partially-invalid-via-invalid-reference-grant.yaml"
    )]);
    // The grant names app-backend-v1 only: /v2 (to app-backend-v2) is 500, the rest is served.
    assert_eq!(send(&t, "echo", "/v2", &[]).status, 500);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("app-backend-v1")));
    assert!(
        t.warnings
            .iter()
            .any(|w| w.contains("RefNotPermitted: backendRef gateway-conformance-app-backend/app-backend-v2")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn reference_grant_must_match_kind_namespace_group_and_name() {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: gateway-conformance-mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: app-backend-v2, namespace: gateway-conformance-app-backend, port: 8080}}}]\n    backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]\n";
    let grant = |from: &str, to: &str, ns: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: {ns}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n")
    };
    let ok_from = "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-mesh}";
    let web = "gateway-conformance-web-backend";
    let app = "gateway-conformance-app-backend";
    // (grant, the backend is served, the mirror is sent)
    for (g, served, mirrored) in [
        (grant(ok_from, "{group: \"\", kind: Service}", web), true, false),
        (grant(ok_from, "{group: core, kind: Service, name: web-backend}", web), true, false),
        (grant(ok_from, "{group: \"\", kind: Service, name: other}", web), false, false),
        (grant(ok_from, "{group: \"\", kind: Service}", app), false, true),
        (
            grant(
                "{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: gateway-conformance-mesh}",
                "{group: \"\", kind: Service}",
                web,
            ),
            false,
            false,
        ),
        (
            grant(
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}",
                "{group: \"\", kind: Service}",
                web,
            ),
            false,
            false,
        ),
        (
            grant(
                "{group: \"\", kind: HTTPRoute, namespace: gateway-conformance-mesh}",
                "{group: \"\", kind: Service}",
                web,
            ),
            false,
            false,
        ),
        (grant(ok_from, "{group: apps, kind: Service}", web), false, false),
    ] {
        let reg = registry_with_others();
        let t = table_with_other_namespaces(&[("g.yaml", &g), ("r.yaml", route)]);
        let f = forward_in(&t, &reg, &mut StdRng::seed_from_u64(1), "/");
        assert_eq!(f.fault.abort.is_none(), served, "{g}");
        assert_eq!(!f.mirrors.is_empty(), mirrored, "{g}");
    }
}

#[test]
fn reference_grant_crd_rules() {
    for (spec, want) in [
        ("  from: []\n  to: [{group: \"\", kind: Service}]\n", "spec.from: Required value"),
        ("  from: [{kind: HTTPRoute, namespace: a}]\n  to: [{group: \"\", kind: Service}]\n", "spec.from[0].group: Required value"),
        ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: A_b}]\n  to: [{group: \"\", kind: Service}]\n", "spec.from[0].namespace"),
        ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: a}]\n  to: [{group: \"\", kind: \"\"}]\n", "spec.to[0].kind"),
        ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: a}]\n  to: [{group: \"\", kind: Service, nam: x}]\n", "unknown field `nam`"),
    ] {
        let y = format!("apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: b}}\nspec:\n{spec}");
        let e = Config::parse_str("g.yaml", &y).unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: want {want:?}, got {e}");
        assert!(e.starts_with("g.yaml:"), "{e}");
    }
}

fn registry_with_others() -> Registry {
    let mut reg = registry();
    reg.add_yaml(Path::new("other.yaml"), OTHER_NAMESPACES).expect("registry");
    reg
}

// GRPCRoute: the mesh conformance tests MeshGRPCRouteWeight and MeshGRPCRouteRequestHeaderModifier
// (verbatim), and the spec's service/method matching and precedence.

const ECHO_CALL: &str = "/grpc.gateway_api_conformance.echo_basic.v1.GrpcEcho/Echo";

#[test]
fn mesh_grpcroute_weight_70_30() {
    let t = table_of(&[fixture!("grpcroute-weight.yaml")]);
    let mut rng = StdRng::seed_from_u64(4);
    let n = 500;
    let mut v1 = 0;
    for _ in 0..n {
        let s = send_with(&t, &mut rng, "echo:7070", ECHO_CALL, &[]);
        assert_eq!(s.status, 200, "echo-v3 has weight 0 and gets nothing");
        v1 += usize::from(s.backend.as_deref() == Some("echo-v1"));
    }
    let share = v1 as f64 / n as f64;
    assert!((share - 0.7).abs() <= 0.05, "echo-v1 got {share}");
}

#[test]
fn mesh_grpcroute_request_header_modifier() {
    let t = table_of(&[fixture!("grpcroute-request-header-modifier.yaml")]);
    let s = send(
        &t,
        "echo:7070",
        ECHO_CALL,
        &[
            ("x-test-case", "set"),
            ("some-other-header", "this-header-should-be-set"),
            ("x-header-set", "this-value-should-be-overwritten"),
        ],
    );
    assert_eq!(s.backend.as_deref(), Some("echo-v1"));
    assert_eq!(all(&s.headers, "x-header-set"), "set-overwrites-values");
    assert_eq!(all(&s.headers, "some-other-header"), "this-header-should-be-set");
    let s =
        send(&t, "echo:7070", ECHO_CALL, &[("x-test-case", "add"), ("x-header-add", "this-value-should-be-appended")]);
    assert_eq!(all(&s.headers, "x-header-add"), "this-value-should-be-appended,add-appends-values");
    let s =
        send(&t, "echo:7070", ECHO_CALL, &[("x-test-case", "remove"), ("x-header-remove", "this-should-be-removed")]);
    assert!(s.headers.get("x-header-remove").is_none());
    let s = send(
        &t,
        "echo:7070",
        ECHO_CALL,
        &[
            ("x-test-case", "multi"),
            ("x-header-set-2", "set-header-2"),
            ("x-header-add-2", "add-header-2"),
            ("x-header-remove-2", "remove-header-2"),
        ],
    );
    assert_eq!(s.backend.as_deref(), Some("echo-v2"));
    assert_eq!(all(&s.headers, "x-header-set-1"), "header-set-1");
    assert_eq!(all(&s.headers, "x-header-set-2"), "header-set-2");
    assert_eq!(all(&s.headers, "x-header-add-2"), "add-header-2,header-add-2");
    assert!(s.headers.get("x-header-remove-2").is_none());
    // No rule matches: 404 (a gRPC client sees UNIMPLEMENTED).
    assert_eq!(send(&t, "echo:7070", ECHO_CALL, &[]).status, 404);
}

fn grpc_route(rules: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 8080}}]\n  rules:\n{rules}")
}

#[test]
fn grpcroute_service_method_matching_precedence_and_http2_backends() {
    // After upstream's GRPCRouteExactMethodMatching / GRPCRouteHeaderMatching (ingress tests).
    let y = grpc_route(
        "  - matches: [{method: {service: a.Svc, method: Get}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{method: {service: a.Svc}}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n  - matches: [{method: {method: Get}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - matches: [{method: {type: RegularExpression, service: \"b\\\\..*\", method: \"Li.t\"}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{headers: [{name: x-v, value: \"2\"}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n",
    );
    let t = table_of(&[("g.yaml", &y)]);
    for (path, headers, want) in [
        ("/a.Svc/Get", &[][..], Some("echo-v1")),
        // Service only: every method of it; a longer service beats a method-only match.
        ("/a.Svc/Put", &[][..], Some("echo-v2")),
        ("/c.Other/Get", &[][..], Some("echo")),
        ("/b.x/List", &[][..], Some("echo-v1")),
        ("/b.x/Lint", &[][..], Some("echo-v1")),
        ("/b.x/Lost", &[][..], None),
        ("/b.x/Get", &[][..], Some("echo")),
        ("/z.Z/Nope", &[("x-v", "2")][..], Some("echo-v2")),
        ("/z.Z/Nope", &[][..], None),
        // Whole names: a prefix of the service is not it.
        ("/a.Sv/Get", &[][..], Some("echo")),
        ("/a.SvcX/Put", &[][..], None),
    ] {
        let s = send(&t, "echo:8080", path, headers);
        assert_eq!(s.backend.as_deref(), want, "{path} {headers:?}");
    }
    // gRPC is HTTP/2: the backend (port 8080, declared `http`) is spoken to over HTTP/2 even
    // when the client's request arrived over HTTP/1.1.
    let reg = registry();
    let svc = reg.service_by_host("echo", NS).unwrap().clone();
    let uri: http::Uri = "/a.Svc/Get".parse().unwrap();
    let h = HeaderMap::new();
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port: 8080 },
        source: None,
        method: &http::Method::POST,
        uri: &uri,
        authority: Some("echo:8080"),
        scheme: "http",
        headers: &h,
    };
    match t.route(&info, &mut StdRng::seed_from_u64(1)) {
        Decision::Forward(f) => {
            assert_eq!(f.cluster.service.name, "echo-v1");
            assert_eq!(f.cluster.upstream_protocol(false), UpstreamProtocol::Http2);
        }
        d => panic!("{d:?}"),
    }
    // The same backend from an HTTPRoute keeps HTTP/1.1.
    let t = table_of(&[fixture!("httproute-simple-same-namespace.yaml")]);
    match t.route(
        &RequestInfo { context: Context::Mesh { service: &svc, port: 80 }, ..info },
        &mut StdRng::seed_from_u64(1),
    ) {
        Decision::Forward(f) => assert_eq!(f.cluster.upstream_protocol(false), UpstreamProtocol::Http1),
        d => panic!("{d:?}"),
    }
}

#[test]
fn grpcroute_crd_rules() {
    for (rules, want) in [
        ("  - matches: [{method: {}}]\n", "One or both of 'service' or 'method' must be specified"),
        ("  - matches: [{method: {service: \"a/b\"}}]\n", "must be a valid gRPC service name"),
        ("  - matches: [{method: {method: \"Get.x\"}}]\n", "must be a valid gRPC method name"),
        ("  - matches: [{method: {type: RegularExpression, service: \"(\"}}]\n", "invalid regular expression"),
        ("  - matches: [{method: {type: Prefix, service: a}}]\n", "Unsupported value \"Prefix\""),
        (
            "  - filters: [{type: URLRewrite, urlRewrite: {hostname: a}}]\n",
            "spec.rules[0].filters[0].type: Unsupported value \"URLRewrite\"",
        ),
        ("  - backendRefs: [{name: a}]\n", "Must have port for Service reference"),
        ("  - matches: [{path: {value: /a}}]\n", "unknown field `path`"),
    ] {
        let e = Config::parse_str("g.yaml", &grpc_route(rules)).unwrap_err().to_string();
        assert!(e.contains(want), "{rules}: want {want:?}, got {e}");
        assert!(e.starts_with("g.yaml:"), "{e}");
    }
}

/// Routes `path` to `service` port 80 as a client pod of `client_ns` sends it.
fn send_from(t: &RouteTable, client_ns: &str, service: &str, path: &str) -> Decision {
    let reg = registry();
    let svc = reg.service_by_host(service, NS).unwrap().clone();
    let client = crate::registry::Workload::external(std::net::Ipv4Addr::new(10, 244, 9, 9), client_ns);
    let uri: http::Uri = path.parse().unwrap();
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port: 80 },
        source: Some(&client),
        method: &http::Method::GET,
        uri: &uri,
        authority: Some(service),
        scheme: "http",
        headers: &HeaderMap::new(),
    };
    t.route(&info, &mut StdRng::seed_from_u64(3))
}

#[test]
fn mesh_consumer_route() {
    // MeshConsumerRoute, verbatim: a route in gateway-conformance-mesh-consumer whose parent is
    // echo-v1 of gateway-conformance-mesh applies to that namespace's clients only.
    let t = table_of(&[fixture!("mesh-consumer-route.yaml")]);
    let set_header = |d: Decision| match d {
        Decision::Forward(f) => {
            assert_eq!(f.cluster.service.name, "echo-v1");
            let mut h = HeaderMap::new();
            f.response_headers.apply(&mut h);
            all(&h, "x-header-set")
        }
        d => panic!("{d:?}"),
    };
    let consumer = "gateway-conformance-mesh-consumer";
    assert_eq!(set_header(send_from(&t, consumer, "echo-v1.gateway-conformance-mesh", "/")), "set");
    assert_eq!(set_header(send_from(&t, NS, "echo-v1.gateway-conformance-mesh", "/")), "");
    assert_eq!(set_header(send_from(&t, "elsewhere", "echo-v1", "/")), "");
}

#[test]
fn consumer_routes_take_precedence_over_producer_routes_for_their_namespace_only() {
    // A producer route sends /v2 to echo-v2; a consumer route of namespace c sends only /c to
    // echo-v1: c's clients get /c, and 404 for /v2 (the producer's rules do not apply to them).
    let producer = route(
        "producer",
        "",
        "  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n",
    );
    let consumer = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: mine, namespace: c}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, namespace: gateway-conformance-mesh}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /c}}]\n    backendRefs: [{name: echo-v1, namespace: gateway-conformance-mesh, port: 8080}]\n";
    let t = table_of(&[("p.yaml", &producer), ("c.yaml", consumer)]);
    let backend = |d: Decision| match d {
        Decision::Forward(f) => f.cluster.service.name.clone(),
        Decision::NoRoute { .. } => "404".into(),
        d => panic!("{d:?}"),
    };
    assert_eq!(backend(send_from(&t, "c", "echo", "/c")), "echo-v1");
    assert_eq!(backend(send_from(&t, "c", "echo", "/v2")), "404");
    assert_eq!(backend(send_from(&t, NS, "echo", "/v2")), "echo-v2");
    assert_eq!(backend(send_from(&t, NS, "echo", "/c")), "404");
    assert_eq!(backend(send_from(&t, "other", "echo", "/v2")), "echo-v2");
}

// `mesh explain` for routes: the attachment of each parentRef, the rules in precedence order with
// why each earlier one failed, and what the matching rule does.

/// What `mesh explain` says for `path` sent to `host` (`echo`, `echo-v1:8080`...) by a client pod
/// of `client_ns`.
fn explain_from(t: &RouteTable, client_ns: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let reg = registry();
    let (name, port) = host.split_once(':').map_or((host, 80), |(h, p)| (h, p.parse().unwrap()));
    let svc = reg.service_by_host(name, NS).unwrap_or_else(|| panic!("no service {name}")).clone();
    let client = crate::registry::Workload::external(std::net::Ipv4Addr::new(10, 244, 9, 9), client_ns);
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(), v.parse().unwrap());
    }
    let uri: http::Uri = path.parse().unwrap();
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port },
        source: Some(&client),
        method: &http::Method::GET,
        uri: &uri,
        authority: Some(host),
        scheme: "http",
        headers: &h,
    };
    t.explain(&info).text
}

/// The line `needle` is on in `text`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not found")) + 1
}

#[test]
fn explain_consumer_route_beats_producer_route() {
    // MeshConsumerRoute verbatim, plus a producer route on the same Service.
    let producer = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: producer, namespace: gateway-conformance-mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo-v1}]\n  rules:\n  - backendRefs: [{name: echo-v2, port: 8080}]\n";
    let consumer_file = fixture!("mesh-consumer-route.yaml");
    let t = table_of(&[consumer_file, ("p.yaml", producer)]);
    let consumer = "gateway-conformance-mesh-consumer";
    let text = explain_from(&t, consumer, "echo-v1", "/", &[]);
    let at = line_of(consumer_file.1, "name: mesh-echo-add-header") - 1; // metadata: is the line above
    for want in [
        format!("Gateway API routes with a parentRef to Service {NS}/echo-v1 (bound by the VIP dialled"),
        format!("  HTTPRoute {consumer}/mesh-echo-add-header (mesh-consumer-route.yaml:{at})"),
        format!("    parentRefs[0] Service {NS}/echo-v1: attached; consumer route of namespace {consumer}: APPLIES (this client is in {consumer}), and replaces the producer routes for its clients"),
        format!("  HTTPRoute {NS}/producer (p.yaml:3)"),
        format!("    parentRefs[0] Service {NS}/echo-v1: attached; producer route: does not apply to this client, whose namespace {consumer} has consumer routes for this Service (they take precedence)"),
        format!("  [0] HTTPRoute {consumer}/mesh-echo-add-header rules[0] matches[0] (mesh-consumer-route.yaml:"),
        "ResponseHeaderModifier set [x-header-set: \"set\"]".into(),
        format!("  picked: Service {NS}/echo-v1 port 80 (the only backendRef with weight > 0)"),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
    assert!(text.contains(": MATCHES\n") && !text.contains("[1] "), "the consumer rule is the first tried:\n{text}");

    // A client of the producer's namespace: the consumer route is not for it, the producer's is.
    let text = explain_from(&t, NS, "echo-v1", "/", &[]);
    for want in [
        format!("consumer route of namespace {consumer}: applies to that namespace's clients only, not this request (this client is in {NS})"),
        "producer route: APPLIES (to clients of every namespace)".into(),
        format!("  [0] HTTPRoute {consumer}/mesh-echo-add-header rules[0] matches[0]"),
        format!("        ✗ client namespace: only clients in {consumer} (a consumer route), the client is in {NS}"),
        format!("  [1] consumer routes of namespace {consumer}: no rule matched: no match"),
        format!("  [2] HTTPRoute {NS}/producer rules[0] matches[0] (p.yaml:7): MATCHES"),
        format!("  picked: Service {NS}/echo-v2 port 8080"),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
}

#[test]
fn explain_rule_skipped_for_a_header_mismatch() {
    let file = fixture!("httproute-matching.yaml");
    let t = table_of(&[file]);
    let text = explain_from(&t, NS, "echo", "/", &[("version", "two")]);
    let route = format!("HTTPRoute {NS}/mesh-matching");
    // The spec's order: the longest prefix (/v2) first, then the "/" matches with a header
    // before the one without; of the two header matches, rule 0's first.
    let first_header = line_of(file.1, "- headers:");
    for want in [
        format!("    parentRefs[0] Service {NS}/echo port 80: attached; producer route: APPLIES"),
        format!("  [0] {route} rules[1] matches[0] (httproute-matching.yaml:"),
        "        precedence: PathPrefix \"/v2\" (3 chars), any method, 0 header matches, 0 query param matches, no creationTimestamp".into(),
        "        ✗ path: path prefix \"/v2\" (whole segments) ≠ \"/\"".into(),
        format!("  [1] {route} rules[0] matches[1] (httproute-matching.yaml:{first_header}): no match"),
        "        precedence: PathPrefix \"/\" (1 char), any method, 1 header match, 0 query param matches".into(),
        "        ✗ header version exact \"one\" ≠ \"two\"".into(),
        format!("  [2] {route} rules[1] matches[1] (httproute-matching.yaml:"),
        format!("    → weight 1 (100%)  Service {NS}/echo-v2 port 8080"),
        "  timeouts.request: none".into(),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
    assert!(text.contains("matches[1] (httproute-matching.yaml:") && text.contains("): MATCHES\n"), "{text}");
    assert!(!text.contains("[3] "), "rules after the match are not tried:\n{text}");
}

#[test]
fn explain_route_not_attached_for_a_port_mismatch() {
    // A parentRef to a port the Service does not have: not attached, plain Kubernetes routing.
    let r = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: gateway-conformance-mesh}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: echo, port: 81}\n  rules:\n  - backendRefs: [{name: echo-v2, port: 8080}]\n";
    let t = table_of(&[("r.yaml", r)]);
    let text = explain_from(&t, NS, "echo", "/", &[]);
    for want in [
        format!("  HTTPRoute {NS}/r (r.yaml:3)"),
        format!("    parentRefs[0] Service {NS}/echo port 81: NOT ATTACHED: Service {NS}/echo has no port 81 (its ports: 80, 8080, 443, 9090, 7070)"),
        "No VirtualService and no attached route applies to echo.gateway-conformance-mesh.svc.cluster.local: plain Kubernetes routing".into(),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
    // MeshPorts verbatim: mesh-split-v1 is bound to port 80 of echo-v1; a request to 8080 keeps
    // plain Kubernetes routing, and explain says the route is bound elsewhere.
    let t = table_of(&[fixture!("mesh-ports.yaml")]);
    let text = explain_from(&t, NS, "echo-v1:8080", "/", &[]);
    for want in [
        format!("    parentRefs[0] Service {NS}/echo-v1 port 80: attached to that port only: does not apply to this request (port 8080)"),
        "        ✗ port: the parentRef binds port 80, the request is to port 8080".into(),
        "  [1] port 8080: no HTTPRoute is bound to it (plain Kubernetes routing): MATCHES".into(),
        format!("    → weight 1 (100%)  Service {NS}/echo-v1 port 8080"),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
}

#[test]
fn explain_backends_weights_and_why_a_share_gets_500() {
    let r = route(
        "r",
        "",
        "  - matches: [{path: {value: /half}}]\n    backendRefs: [{name: nope, port: 80}, {name: echo-v1, port: 8080}]\n  - matches: [{path: {value: /zero}}]\n    backendRefs: [{name: echo-v1, port: 8080, weight: 0}, {name: echo-v2, port: 8080}]\n  - matches: [{path: {value: /other-ns}}]\n    backendRefs: [{name: echo-v1, namespace: default, port: 8080}]\n",
    );
    let t = table_of(&[("r.yaml", &r)]);
    let text = explain_from(&t, NS, "echo", "/half", &[]);
    for want in [
        format!("    → weight 1 (50%)  Service {NS}/nope port 80\n           answers 500: Service {NS}/nope is not in the registry"),
        format!("    → weight 1 (50%)  Service {NS}/echo-v1 port 8080"),
        "  picked: one of the 2 above with weight > 0, at random by weight, per request".into(),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
    let text = explain_from(&t, NS, "echo", "/zero", &[]);
    assert!(
        text.contains("→ weight 0 (weight 0: never picked)  Service gateway-conformance-mesh/echo-v1 port 8080"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  picked: Service {NS}/echo-v2 port 8080 (the only backendRef with weight > 0)")),
        "{text}"
    );
    let text = explain_from(&t, NS, "echo", "/other-ns", &[]);
    assert!(text.contains("answers 500: RefNotPermitted: backendRef default/echo-v1 is not accessible to a HTTPRoute in namespace \"gateway-conformance-mesh\" (no ReferenceGrant in default allows it)"), "{text}");
    assert!(text.contains("  picked: nothing is forwarded; the request gets 500"), "{text}");
}

#[test]
fn explain_says_a_virtual_service_for_the_same_service_wins() {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: {NS}}}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo-v2, port: {{number: 8080}}}}\n"
    );
    let t = table_of(&[("vs.yaml", &vs), fixture!("httproute-simple-same-namespace.yaml")]);
    let text = explain_from(&t, NS, "echo", "/", &[]);
    for want in [
        format!("  HTTPRoute {NS}/gateway-conformance-mesh-test (httproute-simple-same-namespace.yaml:"),
        format!("VirtualService echo.{NS} also routes Service {NS}/echo: the VirtualService applies and the routes above are ignored for this Service"),
        format!("\nVirtualService echo.{NS} (vs.yaml:3)"),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
}

#[test]
fn explain_grpcroute_rules_in_grpc_precedence() {
    // MeshGRPCRouteRequestHeaderModifier verbatim: header-only matches, bound to port 7070.
    let t = table_of(&[fixture!("grpcroute-request-header-modifier.yaml")]);
    let path = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo";
    let text = explain_from(&t, NS, "echo:7070", path, &[("x-test-case", "add")]);
    let route = format!("GRPCRoute {NS}/grpc-request-header-modifier");
    for want in [
        format!("  {route} (grpcroute-request-header-modifier.yaml:3)"),
        format!("    parentRefs[0] Service {NS}/echo port 7070: attached; producer route: APPLIES"),
        "then the most characters in the matched service, then method, most header matches,".into(),
        format!("  [0] {route} rules[0] matches[0] (grpcroute-request-header-modifier.yaml:14): no match"),
        "        precedence: no gRPC service or method match, 1 header match, no creationTimestamp".into(),
        "        ✗ header x-test-case exact \"set\" ≠ \"add\"".into(),
        format!("  [1] {route} rules[1] matches[0] (grpcroute-request-header-modifier.yaml:27): MATCHES"),
        format!("    → weight 1 (100%)  Service {NS}/echo-v1 port 7070"),
        "  filter:  RequestHeaderModifier add [x-header-add: \"add-appends-values\"]".into(),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
}
