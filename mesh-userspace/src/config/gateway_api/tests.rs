//! HTTPRoute, GRPCRoute, Gateway and GatewayClass documents through `Config`: admitted, or rejected as the API server's CRD rules would.
use crate::config::Config;

const HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n";

fn errors(rules: &str) -> String {
    let y = format!("{HEAD}  rules:\n{rules}");
    match Config::parse_str("r.yaml", &y) {
        Ok(c) => panic!("accepted: {:?}", c.http_routes),
        Err(e) => e.to_string(),
    }
}

#[test]
fn httproute_v1_and_v1beta1_are_admitted_with_defaults() {
    for v in ["v1", "v1beta1"] {
        let y = HEAD.replace("/v1\n", &format!("/{v}\n"));
        let c = Config::parse_str("r.yaml", &y).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(c.http_routes.len(), 1, "{v}");
        // No rules: one rule with one match, PathPrefix "/".
        let rules = c.http_routes[0].spec.rules();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].matches()[0].path.is_none());
    }
    let e = Config::parse_str("r.yaml", &HEAD.replace("/v1\n", "/v1alpha2\n")).unwrap_err().to_string();
    assert!(e.contains("unsupported apiVersion"), "{e}");
}

#[test]
fn unknown_fields_are_errors_with_their_position() {
    let e = errors("  - backendRefs:\n    - name: echo-v1\n      prot: 80\n");
    assert!(e.starts_with("r.yaml:9:7: spec.rules[0].backendRefs[0].prot"), "{e}");
    assert!(e.contains("unknown field `prot`"), "{e}");
}

#[test]
fn crd_rules_reject_what_the_api_server_would() {
    for (rules, want) in [
        ("  - matches: [{path: {type: PathPrefix, value: foo}}]\n", "spec.rules[0].matches[0].path.value: must be an absolute path"),
        ("  - matches: [{path: {type: Exact, value: /a//b}}]\n", "must not contain \"//\""),
        ("  - matches: [{path: {type: Prefix, value: /a}}]\n", "path.type: Unsupported value \"Prefix\""),
        ("  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n", "invalid regular expression"),
        ("  - matches: [{method: get}]\n", "method: Unsupported value \"get\""),
        ("  - backendRefs: [{name: a, port: 80, weight: 1000001}]\n", "weight: 1000001 must be between 0 and 1000000"),
        ("  - backendRefs: [{name: a, port: 80, weight: -1}]\n", "must be between 0 and 1000000"),
        ("  - backendRefs: [{name: a}]\n", "Must have port for Service reference"),
        ("  - filters: [{type: RequestRedirect, requestRedirect: {port: 8080}}, {type: URLRewrite, urlRewrite: {hostname: a.b}}]\n", "May specify either"),
        ("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]\n", "RequestHeaderModifier filter cannot be repeated"),
        ("  - filters: [{type: RequestHeaderModifier}]\n", "filter.requestHeaderModifier must be specified"),
        ("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, urlRewrite: {}}]\n", "filter.urlRewrite must be nil"),
        ("  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]\n", "statusCode: Unsupported value 305"),
        ("  - filters: [{type: RequestRedirect, requestRedirect: {port: 80}}]\n    backendRefs: [{name: a, port: 80}]\n", "must not be used together with backendRefs"),
        ("  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n", "exactly one PathPrefix match"),
        ("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /b}}}]\n", "replaceFullPath must be specified"),
        ("  - timeouts: {request: 1s, backendRequest: 2s}\n", "backendRequest timeout cannot be longer"),
        ("  - timeouts: {request: 1.5s}\n", "invalid duration"),
        ("  - retry: {codes: [399]}\n", "retry.codes[0]: 399 must be between 400 and 599"),
        ("  - retry: {codes: [500, 500]}\n", "retry.codes[1]: Duplicate value: 500"),
        ("  - retry: {attempts: 0}\n", "retry.attempts: 0 should be greater than or equal to 1"),
        ("  - retry: {backoff: 1.5s}\n", "retry.backoff: invalid duration"),
        ("  - retry: {tries: 1}\n", "unknown field `tries`"),
        ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, percent: 101}}]\n", "requestMirror.percent: 101 must be between 0 and 100"),
        ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, percent: 1, fraction: {numerator: 1}}}]\n", "Only one of percent or fraction"),
        ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, fraction: {numerator: 3, denominator: 2}}}]\n", "numerator must be less than or equal to denominator"),
        ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, fraction: {numerator: 101}}}]\n", "numerator must be less than or equal to denominator"),
        ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, fraction: {numerator: 0, denominator: 0}}}]\n", "fraction.denominator: 0 should be greater than or equal to 1"),
        ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}]\n", "requestMirror.backendRef: Must have port for Service reference"),
        ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {port: 80}}}]\n", "requestMirror.backendRef.name: name is required"),
        ("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: x}, {name: A, value: y}]}}]\n", "Duplicate value"),
    ] {
        let e = errors(rules);
        assert!(e.contains(want), "{rules}: want {want:?}, got {e}");
    }
    let many: String = (0..17).map(|_| "  - backendRefs: [{name: a, port: 80}]\n").collect();
    assert!(errors(&many).contains("spec.rules: must have at most 16 items"));
}

#[test]
fn a_bad_route_does_not_block_the_others_and_other_kinds_are_skipped() {
    let y = format!(
        "{HEAD}  rules: [{{backendRefs: [{{name: a, port: 0}}]}}]\n---\n{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata: {{name: g}}\nspec: {{}}\n",
        HEAD.replace("name: r,", "name: good,")
    );
    let mut c = Config::default();
    assert!(c.add_str("r.yaml", &y).is_err());
    assert_eq!(c.http_routes.len(), 1);
    assert_eq!(c.http_routes[0].name, "good");
    assert_eq!(c.rejected.len(), 1);
    assert_eq!(c.rejected[0].object.as_ref().map(|k| k.to_string()).as_deref(), Some("HTTPRoute ns/r"));
    assert!(c.skipped.iter().any(|s| s.contains("TCPRoute g (Gateway API kind not supported yet")), "{:?}", c.skipped);
    let e = Config::parse_str("r.yaml", &HEAD.replace("kind: HTTPRoute", "kind: HttpRoute")).unwrap_err().to_string();
    assert!(e.contains("did you mean HTTPRoute?"), "{e}");
}

const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: ns}\nspec:\n  gatewayClassName: mesh\n  listeners:\n";

fn gateway_errors(listeners: &str) -> String {
    match Config::parse_str("g.yaml", &format!("{GW}{listeners}")) {
        Ok(c) => panic!("accepted: {:?}", c.kube_gateways),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gateway_and_gateway_class_v1_and_v1beta1_are_admitted() {
    for v in ["v1", "v1beta1"] {
        let y = format!(
            "{}  - {{name: http, port: 80, protocol: HTTP, hostname: \"*.example.com\", allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{a: b}}}}}}, kinds: [{{kind: HTTPRoute}}]}}}}\n---\napiVersion: gateway.networking.k8s.io/{v}\nkind: GatewayClass\nmetadata: {{name: mesh}}\nspec: {{controllerName: mesh/gateway-controller}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: team, labels: {{a: b}}}}\n",
            GW.replace("/v1\n", &format!("/{v}\n"))
        );
        let c = Config::parse_str("g.yaml", &y).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!((c.kube_gateways.len(), c.gateway_classes.len()), (1, 1), "{v}");
        assert!(c.gateway_classes[0].spec.is_ours());
        assert!(c.gateways.is_empty(), "not an Istio Gateway");
        assert_eq!(c.namespace_labels["team"].get("a").map(String::as_str), Some("b"));
        let l = &c.kube_gateways[0].spec.listeners[0];
        assert!(l.allows_kind("HTTPRoute") && !l.allows_kind("GRPCRoute"));
        let crate::config::gateway_api::FromNamespaces::Selector(sel) = l.from_namespaces() else { panic!() };
        assert!(sel.matches(&c.namespace_labels["team"]) && !sel.matches(&Default::default()));
    }
}

#[test]
fn gateway_crd_rules_reject_what_the_api_server_would() {
    for (listeners, want) in [
        ("  - {name: a, port: 80, protocol: HTTP}\n  - {name: a, port: 81, protocol: HTTP}\n", "g.yaml:8:6: spec.listeners[1].name: Listener name must be unique"),
        ("  - {name: a, port: 0, protocol: HTTP}\n", "spec.listeners[0].port: 0 is not a port number (1-65535)"),
        ("  - {name: a, port: 65536, protocol: HTTP}\n", "65536 is not a port number"),
        ("  - {name: a, port: 80, protocol: HTTP2}\n", "spec.listeners[0].protocol: Unsupported value \"HTTP2\""),
        ("  - {name: a, port: 80, protocol: HTTP, hostname: Foo.com}\n", "spec.listeners[0].hostname: \"Foo.com\" is not a valid host name"),
        ("  - {name: a, port: 80, protocol: HTTP, hostname: \"*\"}\n", "is not a valid host name"),
        ("  - {name: a, port: 80, protocol: TCP, hostname: a.com}\n", "hostname must not be specified for protocols ['TCP', 'UDP']"),
        ("  - {name: a, port: 80, protocol: HTTP, tls: {certificateRefs: [{name: c}]}}\n", "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"),
        ("  - {name: a, port: 443, protocol: HTTPS, tls: {mode: Terminate}}\n", "certificateRefs or options must be specified when mode is Terminate"),
        ("  - {name: a, port: 443, protocol: TLS}\n", "tls mode must be set for protocol TLS"),
        ("  - {name: A_B, port: 80, protocol: HTTP}\n", "spec.listeners[0].name: \"A_B\" is not a valid section name"),
        ("  - {name: a, port: 80, protocol: HTTP}\n  - {name: b, port: 80, protocol: HTTP}\n", "Combination of port, protocol and hostname must be unique"),
        ("  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Others}}}\n", "allowedRoutes.namespaces.from: Unsupported value \"Others\""),
        ("  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: [{key: k, operator: In}]}}}}\n", "must be specified when `operator` is 'In' or 'NotIn'"),
        ("  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: \"HTTP Route\"}]}}\n", "allowedRoutes.kinds[0].kind: \"HTTP Route\" is not a valid kind"),
        ("  - {name: a, port: 80, protocol: HTTP, prot: 1}\n", "unknown field `prot`"),
        ("    []\n", "spec.listeners: Required value"),
    ] {
        let e = gateway_errors(listeners);
        assert!(e.contains(want), "{listeners}: want {want:?}, got {e}");
    }
    let e = Config::parse_str("g.yaml", &GW.replace("  gatewayClassName: mesh\n", "")).unwrap_err().to_string();
    assert!(e.contains("spec.gatewayClassName: Required value"), "{e}");
    let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: c}\nspec: {controllerName: no-domain}\n";
    let e = Config::parse_str("c.yaml", class).unwrap_err().to_string();
    assert!(e.contains("c.yaml:4:8: spec.controllerName: \"no-domain\" is not a domain-prefixed path"), "{e}");
    // A Gateway API Gateway rejected is keyed apart from an Istio Gateway of the same name.
    let mut c = Config::default();
    assert!(c.add_str("g.yaml", &format!("{GW}  - {{name: a, port: 0, protocol: HTTP}}\n")).is_err());
    assert_eq!(
        c.rejected[0].object.as_ref().map(|k| k.to_string()).as_deref(),
        Some("Gateway.gateway.networking.k8s.io ns/g")
    );
}
