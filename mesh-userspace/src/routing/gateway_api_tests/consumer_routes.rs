//! Consumer routes (a route in the client's namespace) against producer routes.
use super::*;

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
