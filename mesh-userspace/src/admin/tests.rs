//! The admin server over a real loopback socket, on a proxy state built in the test (no kernel
//! programs, no root).
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{config::Config, proxy::OriginalDst, registry::Registry, routing::RouteTable};

struct NoOriginalDst;
impl OriginalDst for NoOriginalDst {
    fn take(&self, _: u64, _: SocketAddrV4) -> Option<SocketAddrV4> {
        None
    }
}

/// Fixed kernel counters, so the test can see them rendered.
struct FakeKernel;
impl KernelCounters for FakeKernel {
    fn stats(&self) -> KernelStats {
        KernelStats { connects_redirected: 7, ..KernelStats::default() }
    }
}

pub(super) fn admin_for(state: Arc<ProxyState>, ready: bool) -> Admin {
    Admin { state, kernel: Arc::new(FakeKernel), ready: Arc::new(AtomicBool::new(ready)), published: Arc::default() }
}

pub(super) fn empty_state() -> Arc<ProxyState> {
    let registry = Registry::default();
    let routes = RouteTable::kubernetes_only(&registry);
    ProxyState::new(registry, routes, Arc::new(NoOriginalDst))
}

/// Starts the admin server on an ephemeral port.
pub(super) async fn start(admin: Admin) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(serve(admin, l));
    addr
}

/// GET `path`: (status, body). HTTP/1.1 with `Connection: close`, read to the end.
pub(super) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    // hyper sends small bodies with Content-Length; a chunked body is decoded here.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

#[tokio::test]
async fn probes_answer_as_before() {
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Admin { ready: ready.clone(), ..admin_for(empty_state(), false) };
    let addr = start(admin).await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    let (code, body) = get(addr, "/ready").await;
    assert_eq!(code, 503, "{body}");
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/ready").await, (200, "ok\n".into()));
    let (code, body) = get(addr, "/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("/stats/prometheus"), "{body}");
}

#[tokio::test]
async fn stats_prometheus_is_the_metrics_page() {
    let addr = start(admin_for(empty_state(), true)).await;
    let (code, metrics) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("mesh_kernel_connects_redirected_total 7"), "{metrics}");
    assert_eq!(get(addr, "/stats/prometheus").await, (200, metrics));
}

fn bookinfo_registry() -> Registry {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bookinfo/local-registry.yaml");
    Registry::from_yaml_files(&[path]).expect("bookinfo registry")
}

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn vs(weight_field: &str) -> String {
    format!(
        "# the reviews rule\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n      {weight_field}: 100\n"
    )
}

/// The dump of a proxy state whose config went through two reloads: the second one rejects the
/// reviews VirtualService (its first version stays live), a new VirtualService with no good
/// version, and a file that is not YAML.
#[tokio::test]
async fn config_dump_shows_objects_clusters_health_and_pods() {
    let registry = bookinfo_registry();
    let state = ProxyState::new(registry.clone(), RouteTable::kubernetes_only(&registry), Arc::new(NoOriginalDst));
    let admin = admin_for(state.clone(), true);
    let mut admission = crate::admission::Admission::default();
    let mut first = Config::default();
    first.add_str("routing/dr.yaml", DR).expect("good DestinationRule");
    first.add_str("routing/vs.yaml", &vs("weight")).expect("good VirtualService");
    let applied = crate::reload::apply_config_reporting(&state, &mut admission, first, &registry).expect("applied");
    admin.published.config_applied(applied);

    let mut second = Config { version: Some("..2026_11_27_04_00_00.1".into()), ..Config::default() };
    let _ = second.add_str("routing/dr.yaml", DR);
    let _ = second.add_str("routing/vs.yaml", &vs("wieght"));
    let bad_new = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - timeout: 0.1ms\n    route:\n    - destination: {host: ratings}\n";
    let _ = second.add_str("routing/ratings.yaml", bad_new);
    let _ = second.add_str("routing/broken.yaml", "key: [unclosed\n");
    let applied = crate::reload::apply_config_reporting(&state, &mut admission, second, &registry).expect("applied");
    admin.published.config_applied(applied);

    // One failure ejects reviews-v1 (consecutive5xxErrors: 1).
    let table = state.routes.load_full();
    let v1 = table
        .clusters()
        .into_iter()
        .find(|c| c.name == "outbound|9080|v1|reviews.default.svc.cluster.local")
        .expect("the v1 cluster");
    let picked = state.lb.pick(&v1, None, &[]).expect("an endpoint");
    state.lb.report(&v1, &picked, Some(503));
    drop(picked);

    let pod = dump::PodView {
        workload: "productpage-v1".into(),
        namespace: "default".into(),
        ip: Some(Ipv4Addr::new(10, 244, 0, 10)),
        labels: [("app".to_string(), "productpage".to_string())].into(),
        netns: "/var/run/netns/productpage-v1".into(),
        netns_cookie: 4097,
        cgroup: "/sys/fs/cgroup/unified/mesh/productpage-v1".into(),
        cgroup_id: 1234,
    };
    admin.published.pods.store(Arc::new(vec![pod]));

    let addr = start(admin).await;
    let (code, body) = get(addr, "/config_dump").await;
    assert_eq!(code, 200, "{body}");
    // Shown with --nocapture: the README's example is cut from it.
    println!("{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let config = &dump["config"];
    assert_eq!(config["generation"], 2);
    assert_eq!(config["version"], "..2026_11_27_04_00_00.1");
    let object = |kind: &str, name: &str| {
        config["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .find(|o| o["kind"] == kind && o["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} in {body}"))
            .clone()
    };
    let dr = object("DestinationRule", "reviews");
    assert_eq!(dr["status"], "accepted");
    assert_eq!(dr["namespace"], "default");
    assert_eq!(dr["live_source"], serde_json::json!({"file": "routing/dr.yaml", "line": 1}));
    assert_eq!(dr["errors"], serde_json::json!([]));
    // Rejected, its first version still serving: the document after the comment and `---`.
    let reviews = object("VirtualService", "reviews");
    assert_eq!(reviews["status"], "rejected");
    assert_eq!(reviews["live_source"], serde_json::json!({"file": "routing/vs.yaml", "line": 3}));
    let errors = reviews["errors"].to_string();
    assert!(errors.contains("routing/vs.yaml:11:7") && errors.contains("wieght"), "{errors}");
    let ratings = object("VirtualService", "ratings");
    assert_eq!(ratings["status"], "rejected");
    assert_eq!(ratings["live_source"], serde_json::Value::Null);
    assert!(ratings["errors"].to_string().contains("routing/ratings.yaml:7"), "{}", ratings["errors"]);
    let files = &config["rejected_files"];
    assert_eq!(files.as_array().map(Vec::len), Some(1), "{files}");
    assert_eq!(files[0]["file"], "routing/broken.yaml");

    let clusters = dump["clusters"].as_array().expect("clusters");
    let cluster =
        |name: &str| clusters.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} in {body}"));
    let v1 = cluster("outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(v1["service"], "default/reviews");
    assert_eq!(v1["subset"], "v1");
    assert_eq!(v1["load_balancer"], "LEAST_REQUEST");
    assert_eq!(v1["outlier_detection"]["consecutive_5xx_errors"], 1);
    assert_eq!(v1["outlier_detection"]["base_ejection_time_ms"], 30000);
    // Ejected for the base ejection time (30 s), counting down from when it was ejected.
    let left = v1["endpoints"][0]["ejected_for_ms"].as_u64().unwrap_or(0);
    assert!((20_000..=30_000).contains(&left), "ejected_for_ms {left} in {body}");
    let mut v1_endpoints = v1["endpoints"].clone();
    v1_endpoints[0].as_object_mut().map(|o| o.remove("ejected_for_ms"));
    assert_eq!(
        v1_endpoints,
        serde_json::json!([{"address": "10.244.0.12:9080", "workload": "reviews-v1", "namespace": "default",
            "labels": {"app": "reviews", "version": "v1"}, "ejected": true}])
    );
    // Health is per endpoint: reviews-v1 is ejected in the plain Kubernetes cluster too.
    let all = cluster("outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(all["subset"], serde_json::Value::Null);
    let ejected: Vec<(&str, bool)> = all["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| (e["workload"].as_str().unwrap_or(""), e["ejected"].as_bool().unwrap_or(false)))
        .collect();
    assert_eq!(ejected, [("reviews-v1", true), ("reviews-v2", false), ("reviews-v3", false)]);
    let all = cluster("outbound|9080||ratings.default.svc.cluster.local");
    assert_eq!(all["outlier_detection"], serde_json::Value::Null);

    assert_eq!(
        dump["pods"],
        serde_json::json!([{"workload": "productpage-v1", "namespace": "default", "ip": "10.244.0.10",
            "labels": {"app": "productpage"}, "netns": "/var/run/netns/productpage-v1", "netns_cookie": 4097,
            "cgroup": "/sys/fs/cgroup/unified/mesh/productpage-v1", "cgroup_id": 1234}])
    );
    // The tunables, durations as the flags write them (the test's Published has the defaults).
    let settings = &dump["settings"];
    assert_eq!(settings["limits"]["idle_timeout"], "1h", "{settings}");
    assert_eq!(settings["limits"]["max_request_headers_bytes"], 61440);
    assert_eq!(settings["memory_budget_origin"], "default");
    assert_eq!(settings["fair_share"]["lag"], "2ms");
    assert_eq!(settings["drain_timeout"], "30s");
    assert_eq!(settings["fail_mode"], "open");
    assert_eq!(settings["worker_threads"], serde_json::Value::Null);
    assert_eq!(settings["fixed"]["protocol_sniff_timeout"], "200ms");
    assert_eq!(settings["fixed"]["upstream_max_idle_per_host"], 256);
}

/// `/explain` for a Service bound by an HTTPRoute: the live text is the offline one too (the
/// Gateway API explanation is computed from the same table), route attachment and all.
#[tokio::test]
async fn live_explain_of_an_httproute_is_the_offline_explanation() {
    use crate::cli_routing::{explain_request, ExplainRequest};
    let registry = bookinfo_registry();
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reviews, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]\n  rules:\n  - name: jason\n    matches: [{headers: [{name: end-user, value: jason}]}]\n    backendRefs: [{name: ratings, port: 9080}]\n  - backendRefs: [{name: reviews, port: 9080}]\n";
    let mut config = Config::default();
    config.add_str("route.yaml", route).expect("the route");
    let table = RouteTable::compile(&config, &registry).expect("compiles");
    let req = ExplainRequest {
        from: Some("default/productpage-v1".into()),
        url: "http://reviews:9080/reviews/0".into(),
        headers: vec!["end-user: alice".into()],
        method: "GET".into(),
        ..ExplainRequest::default()
    };
    let offline = explain_request(&table, &registry, &req).expect("offline explain");
    for want in [
        "parentRefs[0] Service default/reviews port 9080: attached; producer route: APPLIES",
        "[0] HTTPRoute default/reviews rules[0] \"jason\" matches[0] (route.yaml:8): no match",
        "✗ header end-user exact \"jason\" ≠ \"alice\"",
        "[1] HTTPRoute default/reviews rules[1] matches[0] (route.yaml:10): MATCHES",
    ] {
        assert!(offline.contains(want), "want {want:?} in\n{offline}");
    }
    let state = ProxyState::new(registry, table, Arc::new(NoOriginalDst));
    let addr = start(admin_for(state, true)).await;
    let (code, live) = get(addr, &format!("/explain?{}", req.to_query())).await;
    assert_eq!((code, &live), (200, &offline));
}

/// `mesh explain --live` through the admin server: the same text as the offline explain over the
/// same config and registry, and a 400 saying why for a request it cannot explain.
#[tokio::test]
async fn live_explain_is_the_offline_explanation_of_the_live_tables() {
    use crate::cli_routing::{explain_live, explain_request, ExplainRequest};
    let registry = bookinfo_registry();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bookinfo/networking");
    let config =
        Config::load_files(&[dir.join("destination-rule-all.yaml"), dir.join("virtual-service-reviews-test-v2.yaml")])
            .expect("Bookinfo's rules");
    let table = RouteTable::compile(&config, &registry).expect("compiles");
    let req = ExplainRequest {
        from: Some("default/productpage-v1".into()),
        url: "http://reviews:9080/reviews/0?x=1&y=%2F".into(),
        headers: vec!["end-user: jason".into()],
        method: "GET".into(),
        ..ExplainRequest::default()
    };
    let offline = explain_request(&table, &registry, &req).expect("offline explain");
    assert!(offline.contains("MATCHES") && offline.contains("subset v2"), "{offline}");

    let state = ProxyState::new(registry, table, Arc::new(NoOriginalDst));
    let addr = start(admin_for(state, true)).await;
    let (code, live) = get(addr, &format!("/explain?{}", req.to_query())).await;
    assert_eq!((code, &live), (200, &offline));
    // The query survives the round trip: the header's space, the URL's own query and escapes.
    assert_eq!(ExplainRequest::from_query(&req.to_query()).expect("parses"), req);
    // The CLI's client (blocking std, as `mesh explain` runs) gets the same.
    let base = format!("http://{addr}");
    let r = req.clone();
    let via_cli = tokio::task::spawn_blocking(move || explain_live(&base, &r)).await.expect("join");
    assert_eq!(via_cli.expect("live explain"), offline);

    let unknown = ExplainRequest { from: Some("nope".into()), ..req.clone() };
    let (code, body) = get(addr, &format!("/explain?{}", unknown.to_query())).await;
    assert_eq!(code, 400);
    assert_eq!(body, "no pod default/nope in the registry\n");
    let base = format!("http://{addr}");
    let e = tokio::task::spawn_blocking(move || explain_live(&base, &unknown)).await.expect("join");
    assert_eq!(e.expect_err("an error").to_string(), "no pod default/nope in the registry");
    let (code, body) = get(addr, "/explain?from=productpage-v1").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("missing url="), "{body}");
}
