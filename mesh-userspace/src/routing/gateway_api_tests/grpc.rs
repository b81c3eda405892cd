//! GRPCRoute: weights, header modifiers, service/method matching and its precedence.
use super::*;

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
