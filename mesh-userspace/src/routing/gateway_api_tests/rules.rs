//! HTTPRoute rules beyond the conformance suite: precedence across routes, unresolved backends,
//! rewrites, timeouts, mirrors, retries, and a VirtualService for the same service.
use super::*;

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
