//! Routing documents from the fake API server: Istio objects, the Gateway API kinds (at the
//! version each is served at), TLS Secrets, and selectorless Services' endpoint slices.
use super::*;

fn virtual_service(user: &str, subset: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "default", "generation": 3, "managedFields": [{"manager": "kubectl"}]},
           "spec": {"hosts": ["reviews"], "http": [
               {"match": [{"headers": {"end-user": {"exact": user}}}], "route": [{"destination": {"host": "reviews", "subset": subset}}]},
               {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]},
           "status": {"observedGeneration": 3}})
}

#[tokio::test]
async fn istio_objects_are_read_from_the_api_server_as_routing_documents() {
    let api = FakeApi::default();
    api.install(Group::istio());
    api.apply(VIRTUAL_SERVICES, virtual_service("jason", "v2"));
    api.apply(DESTINATION_RULES, json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}));
    let mut rx = crate::discovery::istio::spawn(api.client()).await.expect("group discovered");

    let docs = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(d) = rx.borrow_and_update().clone() {
                return d;
            }
            rx.changed().await.expect("istio discovery running");
        }
    })
    .await
    .expect("documents within 5 s");
    let names: Vec<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["k8s:DestinationRule/default/reviews", "k8s:VirtualService/default/reviews"]);
    // The documents go through the strict parser: status and managedFields are not carried over.
    let mut config = crate::config::Config::default();
    for (source, text) in docs.iter() {
        config.add_str(source, text).unwrap_or_else(|e| panic!("{source}:\n{text}\n{e}"));
    }
    assert_eq!(config.virtual_services.len(), 1);
    assert_eq!(config.destination_rules[0].spec.subsets.len(), 2);

    // kubectl apply of a changed object reaches the agent as a new document set.
    wait_for(|| api.count(&format!("WATCH {VIRTUAL_SERVICES}")) >= 1).await;
    api.apply(VIRTUAL_SERVICES, virtual_service("kim", "v2"));
    let docs = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            rx.changed().await.expect("istio discovery running");
            let d = rx.borrow_and_update().clone().expect("synced");
            if d.iter().any(|(_, t)| t.contains("kim")) {
                return d;
            }
        }
    })
    .await
    .expect("updated VirtualService within 5 s");
    assert_eq!(docs.len(), 2);
}

/// No Istio CRDs: not an error, nothing watched (the group is looked up again later:
/// discovery/rediscovery_tests.rs).
#[tokio::test]
async fn missing_istio_crds_are_not_an_error() {
    let api = FakeApi::default();
    let mut rx = crate::discovery::istio::spawn(api.client()).await.expect("not an error");
    let docs = next_documents(&mut rx, "no documents", |_| true).await;
    // Only the group looked up: nothing listed or watched.
    assert!(docs.is_empty() && api.log().iter().all(|l| l == "DISCOVER /apis"), "{docs:?} {:?}", api.log());
}

const GATEWAY_FIXTURES: [(&str, &str); 2] = [
    ("manifests.yaml", include_str!("../../../../tests/gateway_api/manifests.yaml")),
    ("pods.yaml", include_str!("../../../../tests/gateway_api/pods.yaml")),
];

fn http_route(backend: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "echo-split", "namespace": "gateway-conformance-mesh", "creationTimestamp": "2026-11-27T10:00:00Z",
                        "managedFields": [{"manager": "kubectl"}]},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                    "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]},
           "status": {"parents": []}})
}

/// Where a meshed client's `GET /` to echo:80 goes under the API server's documents: the Service
/// whose pods get it.
fn echo_backend(docs: &crate::discovery::istio::Documents) -> String {
    let mut registry = Registry::default();
    for (f, text) in GATEWAY_FIXTURES {
        registry.add_yaml(std::path::Path::new(f), text).expect("registry fixture");
    }
    let mut config = crate::config::Config::default();
    for (source, text) in docs.iter() {
        config.add_str(source, text).unwrap_or_else(|e| panic!("{source}:\n{text}\n{e}"));
    }
    let table = crate::routing::RouteTable::compile(&config, &registry).expect("compiles");
    let svc = registry.service_by_host("echo", "gateway-conformance-mesh").expect("echo").clone();
    let (uri, headers) = ("/".parse::<http::Uri>().unwrap(), http::HeaderMap::new());
    let info = crate::routing::RequestInfo {
        context: crate::routing::Context::Mesh { service: &svc, port: 80 },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some("echo"),
        scheme: "http",
        headers: &headers,
    };
    match table.route(&info, &mut rand::thread_rng()) {
        crate::routing::Decision::Forward(f) => f.cluster.service.name.clone(),
        _ => panic!("not forwarded"),
    }
}

async fn next_documents(
    rx: &mut watch::Receiver<Option<crate::discovery::istio::Documents>>,
    what: &str,
    cond: impl Fn(&crate::discovery::istio::Documents) -> bool,
) -> crate::discovery::istio::Documents {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(d) = rx.borrow_and_update().clone().filter(|d| cond(d)) {
                return d;
            }
            rx.changed().await.expect("gateway API discovery running");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 5 s"))
}

/// The Gateway API kinds are listed and watched at the version each is served at (v1, else
/// v1beta1), and an HTTPRoute created, modified and deleted through the watch changes where the
/// route table sends echo's traffic. Every document passes the same admission as a file.
#[tokio::test]
async fn gateway_api_objects_from_the_api_server_drive_the_route_table() {
    let api = FakeApi::default();
    api.install(Group::gateway_api_v1_2());
    api.apply(
        REFERENCE_GRANTS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-routes", "namespace": "gateway-conformance-mesh"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "other"}],
                 "to": [{"group": "", "kind": "Service"}]}}),
    );
    api.apply(
        GATEWAY_CLASSES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "mesh"}, "spec": {"controllerName": "example.com/mesh"}}),
    );
    api.apply(
        K8S_GATEWAYS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "ingress", "namespace": "default"},
        "spec": {"gatewayClassName": "mesh", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    );
    let mut rx = crate::discovery::gateway_api::spawn(api.client()).await.expect("discovery");

    let docs = next_documents(&mut rx, "the listed objects", |_| true).await;
    let names: Vec<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "k8s:Gateway/default/ingress",
            "k8s:GatewayClass/mesh",
            "k8s:ReferenceGrant/gateway-conformance-mesh/from-routes"
        ]
    );
    let grant = &docs[2].1;
    assert!(grant.contains("apiVersion: gateway.networking.k8s.io/v1beta1"), "{grant}");
    // A cluster-scoped object has no namespace to carry over.
    assert!(!docs[1].1.contains("namespace"), "{}", docs[1].1);
    for kind in [HTTP_ROUTES, GRPC_ROUTES, REFERENCE_GRANTS, K8S_GATEWAYS, GATEWAY_CLASSES] {
        assert_eq!(api.count(&format!("LIST {kind}")), 1, "{kind}");
    }
    let mut config = crate::config::Config::default();
    for (source, text) in docs.iter() {
        config.add_str(source, text).unwrap_or_else(|e| panic!("{source}:\n{text}\n{e}"));
    }
    assert_eq!(config.reference_grants.len(), 1);
    assert!(config.rejected.is_empty());
    // No route: plain Kubernetes routing to echo's own pods.
    assert_eq!(echo_backend(&docs), "echo");

    wait_for(|| api.count(&format!("WATCH {HTTP_ROUTES}")) >= 1).await;
    api.apply(HTTP_ROUTES, http_route("echo-v1"));
    let docs = next_documents(&mut rx, "the created HTTPRoute", |d| d.len() == 4).await;
    let route = &docs.iter().find(|(n, _)| n == "k8s:HTTPRoute/gateway-conformance-mesh/echo-split").expect("route").1;
    // The tie-breaker between routes is kept; the API server's own fields are not.
    assert!(route.contains("creationTimestamp: 2026-11-27T10:00:00Z"), "{route}");
    assert!(!route.contains("managedFields") && !route.contains("status"), "{route}");
    assert_eq!(echo_backend(&docs), "echo-v1");

    api.apply(HTTP_ROUTES, http_route("echo-v2"));
    let docs =
        next_documents(&mut rx, "the modified HTTPRoute", |d| d.iter().any(|(_, t)| t.contains("echo-v2"))).await;
    assert_eq!(echo_backend(&docs), "echo-v2");

    api.delete(HTTP_ROUTES, "gateway-conformance-mesh", "echo-split");
    let docs = next_documents(&mut rx, "the deleted HTTPRoute", |d| d.len() == 3).await;
    assert_eq!(echo_backend(&docs), "echo");
}

/// A cluster without the Gateway API CRDs: no error, only the Namespaces watched (their labels
/// are for the --config directory's Gateways).
#[tokio::test]
async fn missing_gateway_api_crds_are_not_an_error() {
    let api = FakeApi::default();
    let mut rx = crate::discovery::gateway_api::spawn(api.client()).await.expect("not an error");
    let docs = next_documents(&mut rx, "the Namespaces", |_| true).await;
    assert!(docs.is_empty(), "{docs:?}");
    let namespaces_or_lookup = |l: &String| l == "DISCOVER /apis" || l.split(' ').nth(1) == Some(NAMESPACES);
    assert!(api.log().iter().all(namespaces_or_lookup), "only Namespaces listed: {:?}", api.log());
}

/// A service without a selector — the API server's own `kubernetes` service, which every
/// in-cluster client reaches through its VIP — has the endpoints its EndpointSlices list, paired
/// by port name; adding an address reaches the registry like any other change.
#[tokio::test]
async fn selectorless_services_take_their_endpoints_from_endpoint_slices() {
    let (api, locator) = seeded();
    api.apply(SERVICES, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443, "protocol": "TCP"}]}}));
    let apiserver_slice = |addrs: &[&str]| {
        let eps: Vec<Value> =
            addrs.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
               "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]})
    };
    api.apply(SLICES, apiserver_slice(&["192.0.2.10"]));
    let mut rx = start(&api, &locator);
    let addrs = |r: &Registry| {
        let svc = r.service_by_host("kubernetes", "default").expect("kubernetes service").clone();
        r.endpoints(&svc, 443).iter().map(|e| e.addr.to_string()).collect::<Vec<_>>()
    };
    let r = registry_where(&mut rx, "the API server endpoint", |r| addrs(r) == ["192.0.2.10:6443"]).await;
    // The routing engine sees the same endpoints (plain Kubernetes behaviour, no VirtualService).
    let table = crate::routing::RouteTable::kubernetes_only(&r);
    let svc = r.service_by_host("kubernetes", "default").unwrap().clone();
    let cluster = table.route_tcp(None, &svc, 443, &mut rand::thread_rng()).expect("a TCP route");
    assert_eq!(cluster.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(), ["192.0.2.10:6443"]);
    // No pod became an endpoint, and none of these addresses is a workload to enroll.
    assert!(r.workloads.iter().all(|w| w.ip != Some("192.0.2.10".parse().unwrap())));

    api.apply(SLICES, apiserver_slice(&["192.0.2.10", "192.0.2.11"]));
    registry_where(&mut rx, "a second API server", |r| addrs(r) == ["192.0.2.10:6443", "192.0.2.11:6443"]).await;
}

fn tls_secret(name: &str, crt: &str) -> Value {
    // base64 of "crt-<crt>" would do as well: the watch does not parse certificates.
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "infra"},
        "type": "kubernetes.io/tls", "data": {"tls.crt": crt, "tls.key": "a2V5", "ca.crt": "Y2E="}})
}

/// The Secret documents once `cond` holds for them.
async fn secret_docs_where(
    rx: &mut watch::Receiver<Option<crate::discovery::istio::Documents>>,
    mut cond: impl FnMut(&[(String, String)]) -> bool,
) -> crate::discovery::istio::Documents {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(d) = rx.borrow_and_update().clone().filter(|d| cond(d)) {
                return d;
            }
            rx.changed().await.expect("secret watch running");
        }
    })
    .await
    .expect("secret documents within 5 s")
}

#[tokio::test]
async fn tls_secrets_are_watched_only_in_the_namespaces_asked_for_and_follow_changes() {
    let api = FakeApi::default();
    api.apply(INFRA_SECRETS, tls_secret("cert", "Y3J0"));
    let (want, mut rx) = crate::discovery::secrets::spawn(api.client());
    // Nothing asked for: an empty set, and nothing listed.
    secret_docs_where(&mut rx, <[_]>::is_empty).await;
    assert_eq!(api.count("LIST"), 0, "{:?}", api.log());

    want.send_replace(["infra".to_owned()].into());
    let docs = secret_docs_where(&mut rx, |d| !d.is_empty()).await;
    assert_eq!(docs.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["k8s:Secret/infra/cert"]);
    // Listed with the type selector; admitted as a config Secret, with only the two keys.
    let listed = |l: &String| {
        l.starts_with(&format!("LIST {INFRA_SECRETS} fieldSelector=type"))
            && l.contains("kubernetes.io")
            && l.ends_with("tls")
    };
    assert!(api.log().iter().any(listed), "{:?}", api.log());
    let mut config = crate::config::Config::default();
    config.add_str(&docs[0].0, &docs[0].1).expect("document");
    let secret = &config.secrets[&("infra".to_owned(), "cert".to_owned())];
    assert_eq!(secret.secret_type, "kubernetes.io/tls");
    assert_eq!(secret.data.keys().map(String::as_str).collect::<Vec<_>>(), ["tls.crt", "tls.key"]);
    assert_eq!(&*secret.data["tls.crt"], b"crt");

    // Rotated: the new data arrives; deleted: gone.
    wait_for(|| api.count(&format!("WATCH {INFRA_SECRETS}")) >= 1).await;
    api.apply(INFRA_SECRETS, tls_secret("cert", "bmV3"));
    secret_docs_where(&mut rx, |d| d.iter().any(|(_, t)| t.contains("bmV3"))).await;
    api.delete(INFRA_SECRETS, "infra", "cert");
    secret_docs_where(&mut rx, <[_]>::is_empty).await;

    // The namespace no longer asked for: its Secrets leave the set.
    api.apply(INFRA_SECRETS, tls_secret("cert", "Y3J0"));
    secret_docs_where(&mut rx, |d| !d.is_empty()).await;
    want.send_replace(Default::default());
    secret_docs_where(&mut rx, <[_]>::is_empty).await;
}
