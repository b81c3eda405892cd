//! Request matching and weighted splits: the match conditions, rule order, the seed scenarios,
//! and the distribution of a weighted split.
use super::*;

#[test]
fn match_conditions_table() {
    // (match block, request, expected subset). The rule routes matches to v2, else v1.
    let cases: &[(&str, Req, &str)] = &[
        ("headers: {end-user: {exact: jason}}", req("/r", &[("end-user", "jason")]), "v2"),
        ("headers: {end-user: {exact: jason}}", req("/r", &[("end-user", "Jason")]), "v1"),
        ("headers: {end-user: {exact: jason}}", req("/r", &[]), "v1"),
        ("headers: {end-user: {prefix: ja}}", req("/r", &[("end-user", "jason")]), "v2"),
        ("headers: {end-user: {regex: 'j.*n'}}", req("/r", &[("end-user", "jason")]), "v2"),
        ("headers: {end-user: {regex: 'j.*'}}", req("/r", &[("end-user", "xjason")]), "v1"),
        ("headers: {x-canary: {}}", req("/r", &[("x-canary", "anything")]), "v2"),
        ("headers: {x-canary: {}}", req("/r", &[]), "v1"),
        ("withoutHeaders: {x-canary: {}}", req("/r", &[]), "v2"),
        ("withoutHeaders: {x-canary: {}}", req("/r", &[("x-canary", "1")]), "v1"),
        // Istio reads withoutHeaders `regex: "*"` as "the header is present".
        ("withoutHeaders: {x-canary: {regex: '*'}}", req("/r", &[]), "v2"),
        ("withoutHeaders: {x-canary: {regex: '*'}}", req("/r", &[("x-canary", "1")]), "v1"),
        // Pseudo headers name the request's authority, method, path.
        ("headers: {':authority': {exact: 'reviews:9080'}}", req("/r", &[]), "v2"),
        ("headers: {':authority': {exact: 'other:9080'}}", req("/r", &[]), "v1"),
        ("headers: {':method': {exact: GET}}", req("/r", &[]), "v2"),
        ("headers: {':path': {prefix: /r}}", req("/r", &[]), "v2"),
        ("headers: {':status': {exact: '200'}}", req("/r", &[]), "v1"),
        ("uri: {exact: /reviews/0}", req("/reviews/0", &[]), "v2"),
        ("uri: {exact: /reviews/0}", req("/reviews/0/x", &[]), "v1"),
        ("uri: {prefix: /reviews}", req("/reviews/0?x=1", &[]), "v2"),
        ("uri: {regex: '/reviews/[0-9]+'}", req("/reviews/12", &[]), "v2"),
        ("uri: {regex: '/reviews/[0-9]+'}", req("/reviews/12/x", &[]), "v1"),
        ("uri: {prefix: /REVIEWS}\n      ignoreUriCase: true", req("/reviews/1", &[]), "v2"),
        ("uri: {exact: /REVIEWS/1}", req("/reviews/1", &[]), "v1"),
        ("method: {exact: GET}", req("/", &[]), "v2"),
        ("method: {exact: POST}", req("/", &[]), "v1"),
        ("scheme: {exact: http}", req("/", &[]), "v2"),
        ("authority: {prefix: reviews}", req("/", &[]), "v2"),
        ("authority: {exact: ratings}", req("/", &[]), "v1"),
        ("queryParams: {debug: {exact: '1'}}", req("/r?a=b&debug=1", &[]), "v2"),
        ("queryParams: {debug: {regex: '[0-9]'}}", req("/r?debug=x", &[]), "v1"),
        ("port: 9080", req("/", &[]), "v2"),
        ("port: 8080", req("/", &[]), "v1"),
        ("sourceLabels: {app: productpage}", req("/", &[]), "v2"),
        ("sourceLabels: {app: productpage, version: v2}", req("/", &[]), "v1"),
        ("sourceNamespace: default", req("/", &[]), "v2"),
        ("sourceNamespace: prod", req("/", &[]), "v1"),
        ("gateways: [mesh]", req("/", &[]), "v2"),
        ("gateways: [bookinfo-gateway]", req("/", &[]), "v1"),
        // Conditions inside one match are ANDed.
        ("headers: {end-user: {exact: jason}}\n      uri: {prefix: /x}", req("/r", &[("end-user", "jason")]), "v1"),
    ];
    for (m, r, want) in cases {
        let t = table(&vs(&format!(
            "  - match:\n    - {m}\n    route:\n    - destination: {{host: reviews, subset: v2}}\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n"
        )));
        assert_eq!(&subset_of(&t, r), want, "match {m} on {} {:?}", r.uri, r.headers);
    }
}

#[test]
fn match_entries_are_ored_and_first_rule_wins() {
    let t = table(&vs("  - match:\n    - headers: {end-user: {exact: jason}}\n    - uri: {prefix: /beta}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - match:\n    - uri: {prefix: /}\n    route:\n    - destination: {host: reviews, subset: v3}\n"));
    assert_eq!(subset_of(&t, &req("/x", &[("end-user", "jason")])), "v2");
    assert_eq!(subset_of(&t, &req("/beta/1", &[])), "v2");
    assert_eq!(subset_of(&t, &req("/x", &[])), "v3");
    // No rule matches: 404 (Envoy's "route not found"), not a fallback to plain Kubernetes.
    let t = table(&vs(
        "  - match:\n    - uri: {prefix: /only}\n    route:\n    - destination: {host: reviews, subset: v2}\n",
    ));
    assert_eq!(subset_of(&t, &req("/x", &[])), "404");
}

#[test]
fn seed_scenarios_route_as_the_walkthrough_says() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bookinfo/networking");
    let load = |files: &[&str]| {
        let c = Config::load_files(&files.iter().map(|f| seeds.join(f)).collect::<Vec<_>>()).unwrap();
        RouteTable::compile(&c, &registry()).unwrap()
    };
    let jason = req("/reviews/0", &[("end-user", "jason")]);
    let anon = req("/reviews/0", &[]);
    let t = load(&["destination-rule-all.yaml", "virtual-service-all-v1.yaml"]);
    assert_eq!((subset_of(&t, &jason), subset_of(&t, &anon)), ("v1".into(), "v1".into()));
    let t = load(&["destination-rule-all.yaml", "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml"]);
    assert_eq!((subset_of(&t, &jason), subset_of(&t, &anon)), ("v2".into(), "v1".into()));
    let t = load(&["destination-rule-all.yaml", "virtual-service-reviews-test-delay.yaml"]);
    assert_eq!((subset_of(&t, &jason), subset_of(&t, &anon)), ("v2".into(), "v3".into()));
    let t = load(&["destination-rule-all.yaml", "virtual-service-reviews-v3.yaml"]);
    assert_eq!(subset_of(&t, &anon), "v3");
}

fn distribution(weights: &[u32], seed: u64) -> Vec<u64> {
    let names = ["v1", "v2", "v3"];
    let mut http = String::from("  - route:\n");
    for (i, w) in weights.iter().enumerate() {
        http += &format!("    - destination: {{host: reviews, subset: {}}}\n      weight: {w}\n", names[i]);
    }
    let t = table(&vs(&http));
    let reg = registry();
    let svc = reg.service_by_host("reviews", "default").unwrap().clone();
    let r = req("/", &[]);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = vec![0u64; weights.len()];
    for _ in 0..10_000 {
        let info = RequestInfo {
            context: Context::Mesh { service: &svc, port: 9080 },
            source: None,
            method: &r.method,
            uri: &r.uri,
            authority: None,
            scheme: "http",
            headers: &r.headers,
        };
        if let Decision::Forward(f) = t.route(&info, &mut rng) {
            let i = names.iter().position(|n| Some(*n) == f.cluster.subset.as_deref()).unwrap();
            counts[i] += 1;
        }
    }
    counts
}

#[test]
fn weights_follow_the_configured_split() {
    // Weights need not sum to 100 (Istio does not ask it): Envoy splits by weight / total.
    for (weights, seed) in [
        (vec![50, 50], 1),
        (vec![20, 30, 50], 2),
        (vec![90, 10], 13),
        (vec![3, 1], 5),
        (vec![550, 500], 6),
        // int32 maxima: the total overflows u32.
        (vec![2_147_483_647, 2_147_483_647, 1_000_000_000], 7),
    ] {
        let counts = distribution(&weights, seed);
        let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
        let expected: Vec<f64> = weights.iter().map(|w| f64::from(*w) / total).collect();
        let (ok, chi) = chi_square_ok(&counts, &expected);
        assert!(ok, "weights {weights:?}: counts {counts:?} chi² {chi:.2}");
    }
    // Weight 0 never receives traffic.
    assert_eq!(distribution(&[100, 0], 4)[1], 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
    #[test]
    fn any_valid_split_is_respected(a in 0u32..=100, seed in 0u64..1000) {
        let counts = distribution(&[a, 100 - a], seed);
        let total = counts[0] + counts[1];
        proptest::prop_assert_eq!(total, 10_000);
        if a == 0 || a == 100 {
            proptest::prop_assert_eq!(counts[0], if a == 100 { 10_000 } else { 0 });
        } else {
            let (ok, chi) = chi_square_ok(&counts, &[a as f64 / 100.0, (100 - a) as f64 / 100.0]);
            proptest::prop_assert!(ok, "{a}/{} counts {counts:?} chi² {chi:.2}", 100 - a);
        }
    }
}
