//! Compiling: semantic errors and warnings, the forms Istio accepts, `explain`, and a large
//! config.
use super::*;

#[test]
fn semantic_errors_carry_place_path_and_expectation() {
    // (http body, expected line, expected path, message fragment)
    let base_lines = vs("").lines().count();
    let cases = [
        ("  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 60\n    - destination: {host: reviews, subset: v2}\n      weight: -1\n", base_lines + 5, "spec.http[0].route[1].weight", "weight -1 < 0"),
        ("  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n", base_lines + 3, "spec.http[0].route[0].weight", "total destination weight = 0"),
        ("  - match:\n    - uri: {regex: '(unclosed'}\n    route:\n    - destination: {host: reviews}\n", base_lines + 2, "spec.http[0].match[0].uri", "error parsing regexp"),
        ("  - timeout: 3x\n    route:\n    - destination: {host: reviews}\n", base_lines + 1, "spec.http[0].timeout", "invalid duration \"3x\""),
        ("  - timeout: 0.5ms\n    route:\n    - destination: {host: reviews}\n", base_lines + 1, "spec.http[0].timeout", "duration must be greater than 1ms"),
        ("  - fault: {delay: {fixedDelay: 7s, percentage: {value: 120}}}\n    route:\n    - destination: {host: reviews}\n", base_lines + 1, "spec.http[0].fault.delay.percentage.value", "is neither 0.0, nor in range [0.0001, 100.0]"),
        ("  - fault: {abort: {httpStatus: 700, percentage: {value: 1}}}\n    route:\n    - destination: {host: reviews}\n", base_lines + 1, "spec.http[0].fault.abort.httpStatus", "HTTP status 700 is not in range 200-599"),
        ("  - retries: {attempts: 2, retryOn: 'sometimes'}\n    route:\n    - destination: {host: reviews}\n", base_lines + 1, "spec.http[0].retries.retryOn", "\"sometimes\" is not a valid retryOn policy"),
        ("  - match:\n    - uri: {exact: /a, prefix: /b}\n    route:\n    - destination: {host: reviews}\n", base_lines + 2, "spec.http[0].match[0].uri", "only one of exact, prefix, regex"),
        ("  - name: nothing\n", base_lines + 1, "spec.http[0]", "HTTP route, redirect or direct_response is required"),
        ("  - route:\n    - destination: {host: reviews}\n    headers: {response: {set: {Host: x}}}\n", base_lines + 3, "spec.http[0].headers.response.set.Host", "cannot set Host header"),
    ];
    for (http, line, path, fragment) in cases {
        let e = compile_err(&vs(http));
        let err = &e.0[0];
        assert_eq!((err.line, err.path.as_str()), (line, path), "{e}");
        assert!(err.message.contains(fragment), "{e}");
        assert_eq!(err.file, "t.yaml");
    }
}

#[test]
fn undefined_subsets_are_warnings_with_their_place_and_routes_answer_503() {
    let t = table(&vs("  - route:\n    - destination: {host: reviews, subset: v9}\n"));
    let line = vs("").lines().count() + 2;
    let w = t.warnings.iter().find(|w| w.contains("subset \"v9\"")).expect("a warning");
    assert!(w.starts_with(&format!("t.yaml:{line}:")) && w.contains("spec.http[0].route[0].destination.subset"), "{w}");
    assert!(w.contains("is not defined in DestinationRule reviews.default"), "{w}");
    assert_eq!(cluster_endpoints(&t, &req("/", &[])), 0);
    // A subset referenced with no DestinationRule at all.
    let t = table("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings, subset: v1}\n");
    assert!(
        t.warnings.iter().any(|w| w.starts_with("t.yaml:8:") && w.contains("not defined in any DestinationRule")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn no_virtual_service_is_plain_kubernetes_round_robin() {
    let t = RouteTable::kubernetes_only(&registry());
    let r = req("/", &[]);
    assert_eq!(subset_of(&t, &r), "all");
    let reg = registry();
    let svc = reg.service_by_host("reviews", "default").unwrap();
    let c = t.default_cluster(svc, 9080).unwrap();
    assert_eq!(c.endpoints.len(), 3);
    assert_eq!(c.lb, LbPolicy::LeastRequest, "Istio's default load balancer");
    assert_eq!(c.name, "outbound|9080||reviews.default.svc.cluster.local");
}

#[test]
fn forms_istio_accepts_route_as_istio_does() {
    let v1 = "  - route:\n    - destination: {host: reviews, subset: v1}\n";
    // prefixRewrite replaces the matched prefix in Location; redirectCode 0 is unset (301).
    let t = table(&vs(&format!(
        "  - match:\n    - uri: {{prefix: /old}}\n    redirect: {{prefixRewrite: /new, redirectCode: 0}}\n{v1}"
    )));
    assert_eq!(subset_of(&t, &req("/old/0?x=1", &[])), "redirect 301 http://reviews:9080/new/0?x=1");
    let t = table(&vs(&format!(
        "  - match:\n    - uri: {{prefix: /old}}\n    redirect: {{uri: /x, redirectCode: 399}}\n{v1}"
    )));
    assert_eq!(subset_of(&t, &req("/old", &[])), "redirect 399 http://reviews:9080/x");
    // directResponse is accepted; the proxy cannot serve it yet, so the request gets 404 (with
    // the reason) rather than reaching a backend.
    let t = table(&vs(&format!(
        "  - match:\n    - uri: {{prefix: /dr}}\n    directResponse: {{status: 503, body: {{string: down}}}}\n{v1}"
    )));
    assert_eq!(subset_of(&t, &req("/dr", &[])), "404");
    assert_eq!(subset_of(&t, &req("/x", &[])), "v1");
    // A gRPC-status abort is accepted and injects nothing.
    let t = table(&vs(
        "  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    ));
    assert_eq!(forward(&t, &req("/", &[])).fault.abort, None);
    // Setting :authority on the request is Istio's authority rewrite: the Host header.
    let t = table(&vs(&format!("{v1}    headers: {{request: {{set: {{':authority': new.example}}}}}}\n")));
    let set = forward(&t, &req("/", &[])).request_headers.set;
    assert_eq!(set, vec![(http::header::HOST, http::HeaderValue::from_static("new.example"))]);
}

#[test]
fn explain_says_why_earlier_rules_did_not_match() {
    let t = table(&vs("  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 75\n    - destination: {host: reviews, subset: v3}\n      weight: 25\n"));
    let reg = registry();
    let svc = reg.service_by_host("reviews", "default").unwrap().clone();
    let src = reg.workload_by_name("default", "productpage-v1").cloned();
    let r = req("/reviews/0", &[("end-user", "alice")]);
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port: 9080 },
        source: src.as_deref(),
        method: &r.method,
        uri: &r.uri,
        authority: Some("reviews:9080"),
        scheme: "http",
        headers: &r.headers,
    };
    let e = t.explain(&info);
    let text = e.to_string();
    assert_eq!(e.matched, Some(("reviews.default".into(), 1)));
    assert!(
        text.contains("http[0]: no match") && text.contains("header end-user exact \"jason\" ≠ \"alice\""),
        "{text}"
    );
    assert!(text.contains("75%") && text.contains("25%") && text.contains("10.244.0.14:9080"), "{text}");
}

#[test]
fn compiles_ten_thousand_virtual_services() {
    // Not a timing assertion (that lives in the criterion bench): it must work and route right.
    let mut reg = registry();
    let mut yaml = String::new();
    for i in 0..10_000u32 {
        let name = format!("svc{i}");
        reg.services.push(Arc::new(Service {
            name: name.clone(),
            namespace: "default".into(),
            cluster_ip: Some(Ipv4Addr::from(0x0a60_0000 + i + 100)),
            ports: vec![crate::registry::ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: crate::registry::TargetPort::Number(80),
                node_port: None,
                protocol: crate::registry::AppProtocol::Http,
            }],
            selector: BTreeMap::from([("app".to_string(), name.clone())]),
            ..Default::default()
        }));
        yaml += &format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: {name}}}\n");
    }
    let c = Config::parse_str("big.yaml", &yaml).unwrap();
    let t = RouteTable::compile(&c, &reg).unwrap();
    assert_eq!(t.mesh_vs.values().map(|m| m.len()).sum::<usize>(), 10_000);
}
