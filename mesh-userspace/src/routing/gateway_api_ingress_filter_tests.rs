//! The ingress conformance tests of filters and weights (redirects, rewrites, 70/30/0), the
//! hostname intersection the spec defines, and `mesh explain` for Gateway-bound routes.
use super::*;

fn redirects(file: (&str, &str), cases: &[(&str, u16, &str)]) {
    let t = table_of(&[file]);
    for (path, status, location) in cases {
        let s = send(&t, Req { path, ..Req::default() });
        assert_eq!((s.status, s.location.as_deref()), (*status, Some(*location)), "{path}");
    }
}

#[test]
fn httproute_redirects() {
    redirects(
        fixture!("httproute-redirect-host-and-status.yaml"),
        &[
            ("/hostname-redirect", 302, "http://example.org/hostname-redirect"),
            ("/host-and-status", 301, "http://example.org/host-and-status"),
        ],
    );
    redirects(
        fixture!("httproute-redirect-path.yaml"),
        &[
            ("/original-prefix/lemon", 302, "http://gw.example/replacement-prefix/lemon"),
            ("/full/path/original", 302, "http://gw.example/full-path-replacement"),
            ("/path-and-host", 302, "http://example.org/replacement-prefix"),
            ("/path-and-status", 301, "http://gw.example/replacement-prefix"),
            ("/full-path-and-host", 302, "http://example.org/replacement-full"),
            ("/full-path-and-status", 301, "http://gw.example/replacement-full"),
        ],
    );
    redirects(
        fixture!("httproute-redirect-port.yaml"),
        &[
            ("/port", 302, "http://gw.example:8083/port"),
            ("/port-and-host", 302, "http://example.org:8083/port-and-host"),
            ("/port-and-status", 301, "http://gw.example:8083/port-and-status"),
            ("/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"),
        ],
    );
    redirects(
        fixture!("httproute-redirect-scheme.yaml"),
        &[
            ("/scheme", 302, "https://gw.example/scheme"),
            ("/scheme-and-host", 302, "https://example.org/scheme-and-host"),
            ("/scheme-and-status", 301, "https://gw.example/scheme-and-status"),
            ("/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status"),
        ],
    );
}

#[test]
fn httproute_redirect_port_and_scheme_on_the_http_listeners() {
    // The HTTP listeners of upstream's Gateway (port 80 and 8080); its HTTPS listener is not
    // served (TLS not implemented), so the third table of the Go test is not run.
    let t = table_of(&[fixture!("httproute-redirect-port-and-scheme.yaml")]);
    for (port, path, location) in [
        (80, "/scheme-nil-and-port-nil", "http://example.org/scheme-nil-and-port-nil"),
        (80, "/scheme-nil-and-port-80", "http://example.org/scheme-nil-and-port-80"),
        (80, "/scheme-nil-and-port-8080", "http://example.org:8080/scheme-nil-and-port-8080"),
        (80, "/scheme-https-and-port-nil", "https://example.org/scheme-https-and-port-nil"),
        (80, "/scheme-https-and-port-443", "https://example.org/scheme-https-and-port-443"),
        (80, "/scheme-https-and-port-8443", "https://example.org:8443/scheme-https-and-port-8443"),
        (8080, "/scheme-nil-and-port-nil", "http://example.org:8080/scheme-nil-and-port-nil"),
        (8080, "/scheme-nil-and-port-80", "http://example.org/scheme-nil-and-port-80"),
        (8080, "/scheme-https-and-port-nil", "https://example.org/scheme-https-and-port-nil"),
    ] {
        let gateway = if port == 80 { "same-namespace" } else { "same-namespace-with-http-listener-on-8080" };
        let s = send(&t, Req { gateway, port, path, ..Req::default() });
        assert_eq!((s.status, s.location.as_deref()), (302, Some(location)), "{port} {path}");
    }
}

#[test]
fn httproute_rewrite_host_and_path() {
    let t = table_of(&[fixture!("httproute-rewrite-host.yaml")]);
    let s = send(&t, Req { host: "rewrite.example", path: "/one", ..Req::default() });
    assert_eq!((s.backend.as_deref(), s.host.as_str()), (Some(V1), "one.example.org"));
    let s = send(&t, Req { host: "rewrite.example", path: "/two", ..Req::default() });
    assert_eq!((s.backend.as_deref(), s.host.as_str()), (Some(V2), "example.org"));
    let s = send(
        &t,
        Req {
            host: "rewrite.example",
            path: "/rewrite-host-and-modify-headers",
            headers: &[("X-Header-Remove", "remove-val"), ("X-Header-Add-Append", "append-val-1")],
            ..Req::default()
        },
    );
    assert_eq!((s.backend.as_deref(), s.host.as_str()), (Some(V2), "test.example.org"));
    assert_eq!(all(&s.headers, "x-header-add"), "header-val-1");
    assert_eq!(all(&s.headers, "x-header-add-append"), "append-val-1,header-val-2");
    assert_eq!(all(&s.headers, "x-header-set"), "set-overwrites-values");
    assert!(s.headers.get("x-header-remove").is_none());

    let t = table_of(&[fixture!("httproute-rewrite-path.yaml")]);
    for (path, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let s = send(
            &t,
            Req {
                path,
                headers: &[
                    ("X-Header-Remove", "remove-val"),
                    ("X-Header-Add-Append", "append-val-1"),
                    ("X-Header-Set", "set-val"),
                ],
                ..Req::default()
            },
        );
        assert_eq!((s.backend.as_deref(), s.path.as_str()), (Some(V1), want), "{path}");
    }
}

#[test]
fn httproute_weight_70_30_0() {
    let t = table_of(&[fixture!("httproute-weight.yaml")]);
    let mut rng = StdRng::seed_from_u64(42);
    let mut seen: std::collections::BTreeMap<String, u32> = Default::default();
    let n = 1000;
    for _ in 0..n {
        let s = send_with(&t, &mut rng, &Req::default());
        *seen.entry(s.backend.unwrap()).or_default() += 1;
    }
    // The Go test's expectation and tolerance: 70/30/0, each within 5 percentage points (weight
    // 0 gets nothing at all).
    for (b, w) in [(V1, 0.7), (V2, 0.3)] {
        let got = f64::from(seen.get(b).copied().unwrap_or(0)) / f64::from(n);
        assert!((got - w).abs() <= 0.05, "{b}: {got} vs {w} ({seen:?})");
    }
    assert!(!seen.contains_key(V3), "{seen:?}");
}

#[test]
fn hostname_intersection_as_the_spec_defines_it() {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(intersect(None, &[]), s(&["*"]));
    assert_eq!(intersect(Some(""), &s(&["a.com"])), s(&["a.com"]));
    assert_eq!(intersect(Some("a.com"), &[]), s(&["a.com"]));
    assert_eq!(
        intersect(
            Some("very.specific.com"),
            &s(&["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"])
        ),
        s(&["very.specific.com"])
    );
    assert_eq!(
        intersect(
            Some("*.wildcard.io"),
            &s(&["non.matching.com", "wildcard.io", "foo.wildcard.io", "foo.bar.wildcard.io"])
        ),
        s(&["foo.wildcard.io", "foo.bar.wildcard.io"])
    );
    assert_eq!(intersect(Some("very.specific.com"), &s(&["*.specific.com"])), s(&["very.specific.com"]));
    assert_eq!(intersect(Some("*.example.com"), &s(&["*.foo.example.com"])), s(&["*.foo.example.com"]));
    assert_eq!(intersect(Some("*.foo.example.com"), &s(&["*.example.com"])), s(&["*.foo.example.com"]));
    assert!(intersect(Some("*.wildcard.io"), &s(&["specific.but.wrong.com", "wildcard.io"])).is_empty());
    assert!(vhost_matches("*.bar.com", "a.b.bar.com") && !vhost_matches("*.bar.com", "bar.com"));
    assert!(vhost_matches("Foo.com", "foo.COM") && vhost_matches("*", "x"));
}

/// What `mesh explain` says for a request to `host` on port 80 of Gateway `gateway`.
fn explain_at(t: &RouteTable, gateway: &str, host: &str, path: &str) -> String {
    let uri: http::Uri = path.parse().unwrap();
    let info = RequestInfo {
        context: Context::Gateway { name: gateway, namespace: INFRA, port: 80 },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some(host),
        scheme: "http",
        headers: &HeaderMap::new(),
    };
    t.explain(&info).text
}

#[test]
fn explain_gateway_bound_routes_attachment_vhosts_and_rule() {
    // HTTPRouteListenerHostnameMatching verbatim, plus routes that do not attach: a listener the
    // Gateway does not have, a host name no listener takes, a namespace the listeners refuse.
    let gw = "httproute-listener-hostname-matching";
    let extra = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: no-section, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: {gw}, sectionName: listener-9}}]\n  rules:\n  - backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: other-host, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: {gw}, sectionName: listener-1}}]\n  hostnames: [example.org]\n  rules:\n  - backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: elsewhere, namespace: other}}\nspec:\n  parentRefs: [{{name: {gw}, namespace: {INFRA}, sectionName: listener-1}}]\n  rules:\n  - backendRefs: [{{name: infra-backend-v1, namespace: {INFRA}, port: 8080}}]\n"
    );
    let t = table_of(&[fixture!("httproute-listener-hostname-matching.yaml"), ("extra.yaml", &extra)]);
    let text = explain_at(&t, gw, "baz.bar.com", "/");
    for want in [
        format!("Gateway API routes with a parentRef to Gateway {INFRA}/{gw}:"),
        format!("  HTTPRoute {INFRA}/backend-v3 (httproute-listener-hostname-matching.yaml:"),
        format!("    parentRefs[0] Gateway {INFRA}/{gw} sectionName \"listener-3\": attached on port 80 for host(s) [\"*.bar.com\"]"),
        format!("    parentRefs[1] Gateway {INFRA}/{gw} sectionName \"listener-4\": attached on port 80 for host(s) [\"*.foo.com\"]"),
        format!("    parentRefs[0] Gateway {INFRA}/{gw} sectionName \"listener-9\": NOT ATTACHED: Gateway {INFRA}/{gw} has no listener \"listener-9\" (NoMatchingParent)"),
        format!("    parentRefs[0] Gateway {INFRA}/{gw} sectionName \"listener-1\": NOT ATTACHED: no host name of the route matches listener \"listener-1\" (bar.com) (NoMatchingListenerHostname)"),
        "  HTTPRoute other/elsewhere (extra.yaml:".into(),
        format!("    parentRefs[0] Gateway {INFRA}/{gw} sectionName \"listener-1\": NOT ATTACHED: listener \"listener-1\" does not allow routes from namespace \"other\" (NotAllowedByListeners)"),
        "  virtual hosts on port 80, most specific first (the first that matches Host \"baz.bar.com\" serves the request):".into(),
        "    \"*.bar.com\": routes backend-v3.gateway-conformance-infra  ← selected".into(),
        format!("  [0] HTTPRoute {INFRA}/backend-v3 rules[0] matches[0] (httproute-listener-hostname-matching.yaml:"),
        format!("    → weight 1 (100%)  Service {V3} port 8080"),
    ] {
        assert!(text.contains(&want), "want {want:?} in\n{text}");
    }
    // The exact names come first; the selected one is the most specific that matches.
    let exact = text.find("    \"foo.bar.com\": routes").expect("foo.bar.com listed");
    assert!(exact < text.find("    \"*.bar.com\"").unwrap(), "{text}");
    assert!(!text.contains("\"foo.bar.com\": routes backend-v2.gateway-conformance-infra  ← selected"), "{text}");
    // No virtual host serves foo.com: 404, and explain says so.
    let text = explain_at(&t, gw, "foo.com", "/");
    assert!(!text.contains("← selected"), "{text}");
    assert!(text.contains("No virtual host of this Gateway port matches the host: 404."), "{text}");
}
