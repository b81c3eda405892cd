//! `mesh explain` for routes: the attachment of each parentRef, the rules in precedence order with
//! why each earlier one failed, and what the matching rule does.
use super::*;

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
