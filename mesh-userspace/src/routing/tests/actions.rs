//! What a matched route does (faults, timeouts, retries, rewrites, headers, mirrors,
//! redirects), DestinationRule policies, hosts, Gateways and TCP routes.
use super::*;

#[test]
fn fault_timeout_retries_rewrite_headers_mirror() {
    let t = table(&vs("  - match:\n    - uri: {prefix: /api}\n    fault:\n      delay: {fixedDelay: 7s, percentage: {value: 100.0}}\n      abort: {httpStatus: 503, percentage: {value: 100}}\n    timeout: 3s\n    retries: {attempts: 3, perTryTimeout: 1s, retryOn: 'gateway-error,connect-failure,reset,5xx'}\n    rewrite: {uri: /v2, authority: reviews-new}\n    headers:\n      request: {set: {x-a: '1'}, add: {x-b: '2'}, remove: [x-c]}\n      response: {set: {x-served-by: mesh}}\n    mirror: {host: reviews, subset: v3}\n    mirrorPercentage: {value: 100}\n    route:\n    - destination: {host: reviews, subset: v1}\n      headers:\n        request: {set: {x-dest: v1}}\n"));
    let f = forward(&t, &req("/api/books?x=1", &[]));
    assert_eq!(f.fault.delay, Some(Duration::from_secs(7)));
    assert_eq!(f.fault.abort, Some(503));
    assert_eq!(f.timeout, Some(Duration::from_secs(3)));
    assert_eq!(f.retries.attempts, 3);
    assert_eq!(f.retries.per_try_timeout, Some(Duration::from_secs(1)));
    assert!(f.retries.retry_on.gateway_error && f.retries.retry_on.connect_failure && f.retries.retry_on.reset);
    assert!(f.retries.retry_on.status(500) && f.retries.retry_on.status(503) && !f.retries.retry_on.status(404));
    let rw = f.rewrite.as_ref().unwrap();
    assert_eq!(
        rw.apply_path("/api/books").as_deref(),
        Some("/v2/books"),
        "prefix rewrite replaces only the matched prefix"
    );
    assert_eq!(rw.authority.as_deref(), Some("reviews-new"));
    let mut h = http::HeaderMap::new();
    h.insert("x-c", http::HeaderValue::from_static("gone"));
    f.request_headers.apply(&mut h);
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!((get("x-a"), get("x-b"), get("x-dest")), ("1".into(), "2".into(), "v1".into()));
    assert!(h.get("x-c").is_none());
    assert_eq!(f.mirrors.first().and_then(|m| m.subset.clone()).as_deref(), Some("v3"));
    assert_eq!(f.mirrors.len(), 1);
    assert_eq!(f.virtual_service.as_deref(), Some("reviews.default"));
    assert_eq!(f.rule, Some(0));
}

#[test]
fn fault_percentages_are_honoured() {
    let t = table(&vs("  - fault:\n      abort: {httpStatus: 500, percentage: {value: 25}}\n    route:\n    - destination: {host: reviews}\n"));
    let reg = registry();
    let svc = reg.service_by_host("reviews", "default").unwrap().clone();
    let r = req("/", &[]);
    let mut rng = StdRng::seed_from_u64(9);
    let aborted = (0..10_000)
        .filter(|_| {
            let info = RequestInfo {
                context: Context::Mesh { service: &svc, port: 9080 },
                source: None,
                method: &r.method,
                uri: &r.uri,
                authority: None,
                scheme: "http",
                headers: &r.headers,
            };
            matches!(t.route(&info, &mut rng), Decision::Forward(f) if f.fault.abort == Some(500))
        })
        .count();
    let (ok, chi) = chi_square_ok(&[aborted as u64, 10_000 - aborted as u64], &[0.25, 0.75]);
    assert!(ok, "aborted {aborted}/10000, chi² {chi:.2}");
}

#[test]
fn default_retries_are_istios() {
    let t = table(&vs("  - route:\n    - destination: {host: reviews, subset: v1}\n"));
    let f = forward(&t, &req("/", &[]));
    assert_eq!(*f.retries, RetryPolicy::istio_default());
    assert_eq!(f.retries.attempts, 2);
    // Istio >= 1.24: connect-failure, refused-stream, unavailable, cancelled and
    // retriable-status-codes with no codes, so no HTTP status is retried by default.
    assert!(f.retries.retry_on.connect_failure && f.retries.retry_on.refused_stream);
    assert!(!f.retries.retry_on.status(503) && !f.retries.retry_on.status(500));
    let t = table(&vs("  - retries: {attempts: 1, retryOn: \"503,retriable-status-codes\"}\n    route:\n    - destination: {host: reviews, subset: v1}\n"));
    assert!(forward(&t, &req("/", &[])).retries.retry_on.status(503));
    assert_eq!(f.timeout, None);
}

#[test]
fn redirect_rule() {
    let t = table(&vs("  - match:\n    - uri: {exact: /old}\n    redirect: {uri: /new, authority: example.local}\n"));
    assert_eq!(subset_of(&t, &req("/old", &[])), "redirect 301 http://example.local/new");
}

#[test]
fn destination_rule_policies_merge_subset_over_top_level() {
    let dr = "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, maxRequestsPerConnection: 5}
    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 100}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie: {name: user, ttl: 0s}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer:
        consistentHash: {useSourceIp: true}
";
    let route = |s: &str| {
        format!("{dr}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {s}}}\n")
    };
    let f = forward(&table(&route("v1")), &req("/", &[]));
    assert_eq!(f.cluster.lb, LbPolicy::ConsistentHash(HashOn::Header("x-user".into())));
    assert_eq!(f.cluster.connection_pool.max_connections, Some(100));
    assert_eq!(f.cluster.connection_pool.connect_timeout, Some(Duration::from_millis(30)));
    assert_eq!(f.cluster.connection_pool.http1_max_pending_requests, Some(10));
    let od = f.cluster.outlier_detection.clone().unwrap();
    assert_eq!(
        (od.consecutive_5xx_errors, od.interval, od.base_ejection_time, od.max_ejection_percent),
        (Some(7), Duration::from_secs(300), Duration::from_secs(900), 100)
    );
    assert_eq!(f.cluster.endpoints.len(), 1);
    assert!(matches!(
        forward(&table(&route("v2")), &req("/", &[])).cluster.lb,
        LbPolicy::ConsistentHash(HashOn::Cookie { .. })
    ));
    assert_eq!(forward(&table(&route("v3")), &req("/", &[])).cluster.lb, LbPolicy::ConsistentHash(HashOn::SourceIp));
    // Without a subset override the top-level policy applies.
    let t = table(dr);
    let reg = registry();
    let svc = reg.service_by_host("reviews", "default").unwrap();
    assert_eq!(t.default_cluster(svc, 9080).unwrap().lb, LbPolicy::LeastRequest);
    for simple in ["ROUND_ROBIN", "RANDOM", "PASSTHROUGH", "LEAST_CONN"] {
        table(&dr.replace("LEAST_REQUEST", simple));
    }
    // Outside the CRD's enum: rejected when the object is read, as the API server would.
    let e = compile_err(&dr.replace("LEAST_REQUEST", "FASTEST"));
    assert!(
        e.to_string().contains("spec.trafficPolicy.loadBalancer.simple")
            && e.to_string().contains("Unsupported value")
            && e.to_string().contains("ROUND_ROBIN"),
        "{e}"
    );
}

#[test]
fn hosts_resolve_in_the_virtual_service_namespace() {
    for host in ["reviews", "reviews.default", "reviews.default.svc.cluster.local"] {
        let y = format!("{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x}}\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    - destination: {{host: {host}, subset: v2}}\n");
        assert_eq!(subset_of(&table(&y), &req("/", &[])), "v2", "{host}");
    }
    // A VirtualService in another namespace naming the short host means that namespace's service.
    let y = format!("{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x, namespace: prod}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews.default.svc.cluster.local, subset: v2}}\n");
    assert_eq!(subset_of(&table(&y), &req("/", &[])), "all");
}

#[test]
fn gateway_bound_virtual_service_applies_only_at_the_gateway() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bookinfo/networking");
    let c = Config::load_files(&[seeds.join("bookinfo-gateway.yaml")]).unwrap();
    let t = RouteTable::compile(&c, &registry()).unwrap();
    assert_eq!(
        t.gateways(),
        vec![GatewayListener {
            name: "bookinfo-gateway".into(),
            namespace: "default".into(),
            port: 80,
            hosts: vec!["*".into()]
        }]
    );
    let r = req("/productpage", &[]);
    let gw = |path: &str| {
        let uri: http::Uri = path.parse().unwrap();
        let info = RequestInfo {
            context: Context::Gateway { name: "bookinfo-gateway", namespace: "default", port: 80 },
            source: None,
            method: &r.method,
            uri: &uri,
            authority: Some("bookinfo.local"),
            scheme: "http",
            headers: &r.headers,
        };
        match t.route(&info, &mut StdRng::seed_from_u64(1)) {
            Decision::Forward(f) => f.cluster.service.name.clone(),
            Decision::NoRoute { .. } => "404".into(),
            Decision::Redirect { .. } => "redirect".into(),
        }
    };
    assert_eq!(gw("/productpage"), "productpage");
    assert_eq!(gw("/static/img.png"), "productpage");
    assert_eq!(gw("/api/v1/products/0/reviews"), "productpage");
    assert_eq!(gw("/admin"), "404");
    // Inside the mesh the gateway VS does not apply: reviews keeps plain routing.
    assert_eq!(subset_of(&t, &req("/productpage", &[])), "all");
}

#[test]
fn gateway_server_hosts_are_enforced() {
    let t = table(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [httpbin.example.com, \"other-ns/admin.example.com\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: everything}
spec:
  hosts: [\"*\"]
  gateways: [httpbin-gateway]
  http:
  - route:
    - destination: {host: reviews}
",
    );
    let headers = http::HeaderMap::new();
    let uri: http::Uri = "/".parse().unwrap();
    let route = |host: &str, port: u16| {
        let info = RequestInfo {
            context: Context::Gateway { name: "httpbin-gateway", namespace: "default", port },
            source: None,
            method: &http::Method::GET,
            uri: &uri,
            authority: Some(host),
            scheme: "http",
            headers: &headers,
        };
        match t.route(&info, &mut StdRng::seed_from_u64(1)) {
            Decision::Forward(f) => f.cluster.service.name.clone(),
            Decision::NoRoute { .. } => "404".into(),
            Decision::Redirect { .. } => "redirect".into(),
        }
    };
    assert_eq!(route("httpbin.example.com", 80), "reviews");
    assert_eq!(route("httpbin.example.com:80", 80), "reviews");
    // A host no server admits is 404 even though the VirtualService says "*" (Istio).
    assert_eq!(route("other.example.com", 80), "404");
    // `other-ns/admin.example.com` admits only VirtualServices of other-ns.
    assert_eq!(route("admin.example.com", 80), "404");
    // No server on that port.
    assert_eq!(route("httpbin.example.com", 8080), "404");
}

#[test]
fn tcp_routes_pick_weighted_destinations() {
    let y = format!("{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  tcp:\n  - match:\n    - port: 9080\n    route:\n    - destination: {{host: reviews, subset: v3}}\n");
    let t = table(&y);
    let reg = registry();
    let svc = reg.service_by_host("reviews", "default").unwrap();
    let c = t.route_tcp(None, svc, 9080, &mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(c.subset.as_deref(), Some("v3"));
    let plain = RouteTable::kubernetes_only(&reg).route_tcp(None, svc, 9080, &mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(plain.endpoints.len(), 3);
}
