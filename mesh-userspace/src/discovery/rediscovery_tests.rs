//! CRDs installed after the agent started, and deleted while it runs: the group is looked up
//! again every [`REDISCOVER`] (paused clock), its kinds are watched once it is served and
//! stopped once it is not, and the other documents of the feed (the Namespaces) stay.
use std::time::Duration;

use serde_json::{json, Value};
use tokio::{sync::watch, time::Instant};

use super::fake_api::{namespace, FakeApi, Group, NAMESPACES};
use super::group_watch::{Documents, REDISCOVER};

fn names(docs: &Documents) -> Vec<&str> {
    docs.iter().map(|(n, _)| n.as_str()).collect()
}

/// The newest documents once `cond` holds, within `within` of the (paused) clock.
async fn documents_where(
    rx: &mut watch::Receiver<Option<Documents>>,
    within: Duration,
    what: &str,
    cond: impl Fn(&Documents) -> bool,
) -> Documents {
    let wait = async {
        loop {
            if let Some(d) = rx.borrow_and_update().clone().filter(|d| cond(d)) {
                return d;
            }
            rx.changed().await.expect("discovery running");
        }
    };
    match tokio::time::timeout(within, wait).await {
        Ok(d) => d,
        Err(_) => panic!("{what} within {within:?}; last: {:?}", rx.borrow().as_deref()),
    }
}

fn http_route() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "echo", "namespace": "default"},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                    "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}})
}

const ROUTE: &str = "k8s:HTTPRoute/default/echo";
const NS: &str = "k8s:Namespace/default";

#[tokio::test(start_paused = true)]
async fn gateway_api_crds_installed_later_are_watched_and_removed_ones_dropped() {
    let api = FakeApi::default();
    api.apply(NAMESPACES, namespace("default", json!({"team": "a"})));
    let gateway_api = Group::gateway_api();
    let routes = gateway_api.path("httproutes");
    let start = Instant::now();
    let mut rx = super::gateway_api::spawn(api.client()).await.expect("no CRDs is not an error");
    let docs = documents_where(&mut rx, Duration::from_secs(1), "the Namespaces", |_| true).await;
    assert_eq!(names(&docs), [NS]);
    assert_eq!(api.count("DISCOVER"), 1, "{:?}", api.log());

    // Installed: not seen before the next look-up, watched after it.
    api.install(gateway_api.clone());
    api.apply(&routes, http_route());
    tokio::time::sleep(REDISCOVER - Duration::from_secs(1)).await;
    assert_eq!(names(rx.borrow().as_ref().expect("published")), [NS]);
    assert_eq!(api.count("DISCOVER"), 1, "looked up before {REDISCOVER:?}: {:?}", api.log());
    let docs = documents_where(&mut rx, Duration::from_secs(2), "the HTTPRoute", |d| d.len() == 2).await;
    assert!(start.elapsed() >= REDISCOVER, "{:?}", start.elapsed());
    assert_eq!(names(&docs), [ROUTE, NS]);
    for plural in ["httproutes", "grpcroutes", "referencegrants", "gateways", "gatewayclasses"] {
        assert_eq!(api.count(&format!("LIST {}", gateway_api.path(plural))), 1, "{plural}: {:?}", api.log());
    }
    // Still served: the next look-up starts nothing again.
    tokio::time::sleep(REDISCOVER).await;
    assert_eq!(api.count(&format!("LIST {routes}")), 1, "{:?}", api.log());

    // Deleted: the watchers stop at the next look-up and the route goes; the Namespaces stay,
    // and their watch goes on (a label change still arrives).
    api.uninstall(gateway_api.name);
    let docs = documents_where(&mut rx, REDISCOVER + Duration::from_secs(1), "the route gone", |d| d.len() == 1).await;
    assert_eq!(names(&docs), [NS]);
    api.apply(NAMESPACES, namespace("default", json!({"team": "b"})));
    let docs =
        documents_where(&mut rx, Duration::from_secs(1), "the relabelled Namespace", |d| d[0].1.contains("team: b"))
            .await;
    assert_eq!(names(&docs), [NS]);
    let lists = api.count(&format!("LIST {routes}"));
    tokio::time::sleep(REDISCOVER * 3).await;
    assert_eq!(api.count(&format!("LIST {routes}")), lists, "a stopped watcher lists no more: {:?}", api.log());
}

/// The Istio CRDs share the mechanism: installed later, their objects are read without a restart.
#[tokio::test(start_paused = true)]
async fn istio_crds_installed_later_are_watched() {
    let api = FakeApi::default();
    let mut rx = super::istio::spawn(api.client()).await.expect("no CRDs is not an error");
    let docs = documents_where(&mut rx, Duration::from_secs(1), "nothing", |_| true).await;
    assert!(docs.is_empty(), "{docs:?}");
    let istio = Group::istio();
    api.install(istio.clone());
    api.apply(
        &istio.path("virtualservices"),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "reviews", "namespace": "default"},
               "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}),
    );
    let docs =
        documents_where(&mut rx, REDISCOVER + Duration::from_secs(1), "the VirtualService", |d| !d.is_empty()).await;
    assert_eq!(names(&docs), ["k8s:VirtualService/default/reviews"]);
}
