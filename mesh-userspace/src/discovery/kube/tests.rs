//! Discovery against the fake API server (`discovery/fake_api.rs`): kube-rs's real client and
//! watchers list, watch, resume from bookmarks and re-list after 410 Gone as they would against
//! a kube-apiserver.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::*;
use crate::discovery::fake_api::{namespace, FakeApi, Group, NAMESPACES};
use crate::discovery::sandbox::PodSandbox;
use crate::registry::Workload;

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";
const DESTINATION_RULES: &str = "/apis/networking.istio.io/v1/destinationrules";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
/// Served at v1beta1 only, as before Gateway API v1.3 ([`Group::gateway_api_v1_2`]): the
/// watcher must find it there.
const REFERENCE_GRANTS: &str = "/apis/gateway.networking.k8s.io/v1beta1/referencegrants";
const K8S_GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const GATEWAY_CLASSES: &str = "/apis/gateway.networking.k8s.io/v1/gatewayclasses";
/// The one namespace the Secret watch test looks into.
const INFRA_SECRETS: &str = "/api/v1/namespaces/infra/secrets";

/// Locates pods from a table the test edits (a pod not in it has no process yet).
#[derive(Default, Clone)]
struct TableLocator(Arc<Mutex<HashMap<String, PodSandbox>>>);

impl PodLocator for TableLocator {
    fn locate(&self, uid: &str, _qos: Option<&str>) -> Result<PodSandbox, LocateError> {
        self.0
            .lock()
            .unwrap()
            .get(uid)
            .cloned()
            .ok_or_else(|| LocateError::NoProcess { cgroup: PathBuf::from(format!("/kubepods/pod{uid}")) })
    }
}

impl TableLocator {
    fn add(&self, uid: &str) {
        let s = PodSandbox {
            cgroup: PathBuf::from(format!("/cg/pod{uid}")),
            netns: PathBuf::from(format!("/proc/{}/ns/net", uid.len())),
        };
        self.0.lock().unwrap().insert(uid.into(), s);
    }
}

fn service(name: &str, ns: &str, vip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": vip, "selector": {"app": name},
                    "ports": [{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"}]}})
}

fn slice(service: &str, ns: &str, endpoints: &[(&str, bool)]) -> Value {
    let eps: Vec<Value> =
        endpoints.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-abc"), "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 9080}]})
}

fn pod(name: &str, ns: &str, app: &str, version: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": app, "version": version}},
           "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 9080}]}]},
           "status": {"phase": "Running", "podIP": ip, "qosClass": "BestEffort"}})
}

/// The Bookinfo-ish cluster: `default` enrolled through Istio's label, `legacy` not; pods on
/// this node (`node-a`) and another.
fn seeded() -> (FakeApi, TableLocator) {
    let api = FakeApi::default();
    api.apply(NAMESPACES, namespace("default", json!({"istio-injection": "enabled"})));
    api.apply(NAMESPACES, namespace("legacy", json!({})));
    api.apply(
        NAMESPACES,
        namespace("kube-system", json!({"istio-injection": "enabled", "mesh-injection": "disabled"})),
    );
    api.apply(SERVICES, service("reviews", "default", "10.96.0.12"));
    api.apply(SERVICES, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}));
    api.apply(
        SLICES,
        slice("reviews", "default", &[("10.244.0.11", true), ("10.244.1.12", true), ("10.244.0.13", false)]),
    );
    api.apply(PODS, pod("reviews-v1", "default", "reviews", "v1", "node-a", "10.244.0.11"));
    api.apply(PODS, pod("reviews-v2", "default", "reviews", "v2", "node-b", "10.244.1.12"));
    api.apply(PODS, pod("reviews-v3", "default", "reviews", "v3", "node-a", "10.244.0.13"));
    let mut opted_out = pod("ratings-v1", "default", "ratings", "v1", "node-a", "10.244.0.14");
    opted_out["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
    api.apply(PODS, opted_out);
    api.apply(PODS, pod("old-app", "legacy", "old", "v1", "node-a", "10.244.0.15"));
    api.apply(PODS, pod("coredns", "kube-system", "dns", "v1", "node-a", "10.244.0.16"));
    let mut host_net = pod("node-exporter", "default", "exporter", "v1", "node-a", "192.0.2.1");
    host_net["spec"]["hostNetwork"] = json!(true);
    api.apply(PODS, host_net);
    let mut done = pod("migrate-job", "default", "job", "v1", "node-a", "10.244.0.11");
    done["status"]["phase"] = json!("Succeeded");
    api.apply(PODS, done);
    let locator = TableLocator::default();
    for uid in ["uid-reviews-v1", "uid-reviews-v3", "uid-ratings-v1", "uid-old-app", "uid-coredns", "uid-node-exporter"]
    {
        locator.add(uid);
    }
    (api, locator)
}

fn start(api: &FakeApi, locator: &TableLocator) -> watch::Receiver<Option<Arc<Registry>>> {
    let options = KubeOptions { node: "node-a".into(), retry: Duration::from_millis(20) };
    spawn(api.client(), options, Arc::new(locator.clone()))
}

/// Waits (bounded) for a published registry satisfying `pred`.
async fn registry_where(
    rx: &mut watch::Receiver<Option<Arc<Registry>>>,
    what: &str,
    pred: impl Fn(&Registry) -> bool,
) -> Arc<Registry> {
    let wait = async {
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                if pred(&r) {
                    return r;
                }
            }
            if rx.changed().await.is_err() {
                panic!("discovery stopped");
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), wait).await {
        Ok(r) => r,
        Err(_) => {
            panic!("no registry where {what} within 5 s; last: {:#?}", rx.borrow().as_deref().map(|r| &r.workloads))
        }
    }
}

fn workload<'a>(r: &'a Registry, name: &str) -> Option<&'a Workload> {
    r.workloads.iter().map(|w| w.as_ref()).find(|w| w.name == name)
}

fn enrolled(r: &Registry) -> Vec<&str> {
    let mut v: Vec<&str> =
        r.workloads.iter().filter(|w| w.enroll && w.cgroup.is_some()).map(|w| w.name.as_str()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn initial_list_builds_the_registry_and_enrolls_this_nodes_pods() {
    let (api, locator) = seeded();
    let mut rx = start(&api, &locator);
    let r = registry_where(&mut rx, "anything", |_| true).await;

    // Services: ExternalName is not capturable; the EndpointSlice decides readiness.
    assert_eq!(r.services.len(), 1);
    let reviews = r.service_by_host("reviews", "default").expect("reviews").clone();
    assert_eq!(reviews.cluster_ip, Some("10.96.0.12".parse().unwrap()));
    let mut eps: Vec<String> =
        r.endpoints(&reviews, 9080).iter().map(|e| format!("{} {}", e.workload.name, e.addr)).collect();
    eps.sort();
    assert_eq!(
        eps,
        ["reviews-v1 10.244.0.11:9080", "reviews-v2 10.244.1.12:9080"],
        "not-ready reviews-v3 and the finished job sharing an IP are not endpoints"
    );

    // Workloads: every running pod of the cluster (labels for subsets), finished ones dropped.
    assert!(workload(&r, "reviews-v2").is_some_and(|w| w.labels.get("version").map(String::as_str) == Some("v2")));
    assert!(workload(&r, "migrate-job").is_none());
    // Enrollment: namespace label (Istio's too), per-pod opt-out, mesh-injection=disabled wins,
    // hostNetwork never, other nodes' pods not here.
    assert_eq!(enrolled(&r), ["reviews-v1", "reviews-v3"]);
    let v1 = workload(&r, "reviews-v1").unwrap();
    assert_eq!(v1.cgroup.as_deref(), Some(std::path::Path::new("/cg/poduid-reviews-v1")));
    assert!(!workload(&r, "ratings-v1").unwrap().enroll);
    assert!(!workload(&r, "old-app").unwrap().enroll);
    assert!(!workload(&r, "coredns").unwrap().enroll);
    assert!(!workload(&r, "node-exporter").unwrap().enroll);
    assert!(workload(&r, "node-exporter").unwrap().ip.is_none(), "a hostNetwork pod's IP is the node's");
    assert!(
        workload(&r, "reviews-v2").unwrap().enroll && workload(&r, "reviews-v2").unwrap().cgroup.is_none(),
        "node-b's pod: enrolled there, not here"
    );

    // The watchers asked for bookmarks and resumed from the list's resourceVersion.
    let log = api.log();
    assert!(
        log.iter().any(|l| l.starts_with(&format!("WATCH {PODS} rv=")) && l.ends_with("bookmarks=true")),
        "{log:?}"
    );
}

#[tokio::test]
async fn pods_added_and_deleted_after_start_are_enrolled_and_removed() {
    let (api, locator) = seeded();
    let mut rx = start(&api, &locator);
    registry_where(&mut rx, "initial", |r| enrolled(r) == ["reviews-v1", "reviews-v3"]).await;
    // Wait for the pod watch to be open, so the event below is delivered rather than listed.
    wait_for(|| api.count(&format!("WATCH {PODS}")) >= 1).await;

    // Scheduled, then given an IP: enrolled when its sandbox has a process (the locator retry).
    let mut new = pod("details-v1", "default", "details", "v1", "node-a", "");
    new["status"] = json!({"phase": "Pending"});
    api.apply(PODS, new.clone());
    let r = registry_where(&mut rx, "details-v1 listed", |r| workload(r, "details-v1").is_some()).await;
    assert!(workload(&r, "details-v1").unwrap().cgroup.is_none(), "no IP yet: nothing to enroll");
    new["status"] = json!({"phase": "Running", "podIP": "10.244.0.20"});
    api.apply(PODS, new);
    let started = tokio::time::Instant::now();
    locator.add("uid-details-v1");
    registry_where(&mut rx, "details-v1 enrolled", |r| enrolled(r).contains(&"details-v1")).await;
    assert!(started.elapsed() < Duration::from_secs(1), "enrolled {:?} after its sandbox appeared", started.elapsed());

    api.delete(PODS, "default", "reviews-v3");
    registry_where(&mut rx, "reviews-v3 gone", |r| workload(r, "reviews-v3").is_none()).await;

    // Namespace opt-out at runtime un-enrolls its pods.
    api.apply(NAMESPACES, namespace("default", json!({"istio-injection": "enabled", "mesh-injection": "disabled"})));
    registry_where(&mut rx, "default namespace out of the mesh", |r| enrolled(r).is_empty()).await;
}

#[tokio::test]
async fn gone_410_relists_and_drops_what_was_deleted_meanwhile() {
    let (api, locator) = seeded();
    let mut rx = start(&api, &locator);
    registry_where(&mut rx, "initial", |r| workload(r, "reviews-v3").is_some()).await;
    wait_for(|| api.count(&format!("WATCH {PODS}")) >= 1).await;
    let lists_before = api.count(&format!("LIST {PODS}"));

    // Events the watcher never saw (its watch was too old), then the apiserver says 410 Gone.
    api.delete_quietly(PODS, "default", "reviews-v3");
    api.apply_quietly(PODS, pod("reviews-v4", "default", "reviews", "v4", "node-a", "10.244.0.21"));
    api.event(PODS, json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}}));

    let r = registry_where(&mut rx, "re-listed pods", |r| workload(r, "reviews-v4").is_some()).await;
    assert!(workload(&r, "reviews-v3").is_none(), "an object deleted during the outage must go with the re-list");
    assert_eq!(api.count(&format!("LIST {PODS}")), lists_before + 1, "{:?}", api.log());
    // Services were untouched by the pods' re-list.
    assert!(r.service_by_host("reviews", "default").is_some());
}

#[tokio::test]
async fn bookmarks_move_the_resume_point_and_errors_keep_the_last_state() {
    let (api, locator) = seeded();
    let mut rx = start(&api, &locator);
    let first = registry_where(&mut rx, "initial", |_| true).await;
    wait_for(|| api.count(&format!("WATCH {SERVICES}")) >= 1).await;

    api.event(SERVICES, json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "777"}}}));
    // A non-410 error event is reported and the watch goes on.
    api.event(SERVICES, json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "reason": "InternalError", "message": "hiccup"}}));
    // The apiserver ends the watch (timeout); the watcher resumes from the bookmark, not from 0.
    api.close_watches(SERVICES);
    wait_for(|| api.log().iter().any(|l| l.starts_with(&format!("WATCH {SERVICES} rv=777")))).await;
    assert_eq!(api.count(&format!("LIST {SERVICES}")), 1, "a bookmark resume must not re-list: {:?}", api.log());

    // The state survived all that.
    api.apply(SERVICES, service("ratings", "default", "10.96.0.13"));
    let r = registry_where(&mut rx, "ratings added", |r| r.service_by_host("ratings", "default").is_some()).await;
    assert_eq!(r.services.len(), first.services.len() + 1);
}

#[tokio::test]
async fn nothing_is_published_until_every_kind_is_listed_and_failed_lists_are_retried() {
    let (api, locator) = seeded();
    api.fail_next_list(SLICES);
    let mut rx = start(&api, &locator);
    let r = registry_where(&mut rx, "anything", |_| true).await;
    // Had the registry been published before the slices were listed, reviews would have had no
    // ready endpoints; it must come out complete the first time.
    let reviews = r.service_by_host("reviews", "default").unwrap().clone();
    assert_eq!(r.endpoints(&reviews, 9080).len(), 2);
    assert_eq!(api.count(&format!("LIST {SLICES}")), 2, "{:?}", api.log());
}

#[test]
fn pod_cap_annotations_are_read_from_the_api_servers_pods() {
    let mut p: Pod = serde_json::from_value(pod("batch", "default", "batch", "v1", "node-a", "10.244.0.20")).unwrap();
    p.metadata.annotations = Some(
        [("mesh/max-connections", "3"), ("mesh/max-requests", "bad"), ("mesh/max-buffered-body", "2Mi")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let info = pod_info(&p).expect("a running pod");
    assert_eq!(
        info.workload.caps,
        crate::registry::PodCaps { max_connections: Some(3), max_requests: None, max_buffered_body: Some(2 << 20) }
    );
    assert!(!info.opted_out, "a bad cap annotation never keeps a pod out");
    let plain: Pod = serde_json::from_value(pod("plain", "default", "plain", "v1", "node-a", "10.244.0.21")).unwrap();
    assert_eq!(pod_info(&plain).expect("pod").workload.caps, crate::registry::PodCaps::default());
}

#[test]
fn pure_build_is_deterministic() {
    let mut st = ClusterState::default();
    st.namespaces.insert(("", "default"), NamespaceInfo { enrolled: true });
    st.namespaces.synced = true;
    for (name, node) in [("b", "n1"), ("a", "n1"), ("c", "n2")] {
        let p: Pod = serde_json::from_value(pod(name, "default", "x", "v1", node, "10.0.0.1")).unwrap();
        st.pods.insert(("default", name), pod_info(&p).unwrap());
    }
    let (r1, local1) = build_registry(&st, "n1");
    let (r2, local2) = build_registry(&st, "n1");
    assert_eq!(r1, r2);
    assert_eq!(local1, local2);
    assert_eq!(local1.iter().map(|l| l.uid.as_str()).collect::<Vec<_>>(), ["uid-a", "uid-b"]);
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

mod documents;
