//! Unit tests of the registry: standalone YAML, lookups by VIP and host, endpoints, caps.
use super::*;

const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  labels: {app: reviews, version: v1}
  annotations: {mesh/netns: /var/run/netns/reviews-v1}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata:
  name: ratings-v1
  labels: {app: ratings, version: v1}
status: {podIP: 10.244.0.12}
"#;

/// The same manifests through the registry file and through the API server's watch give
/// the same registry (issue 16: the two converters had drifted).
#[test]
fn registry_files_and_the_api_server_give_identical_registries() {
    use crate::discovery::kube::{build_registry, pod_info, service_info, ClusterState, NamespaceInfo};
    let manifests = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: dns}
  ports:
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  - {name: metrics, port: 9153, targetPort: metrics, appProtocol: http, nodePort: 30053}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: default}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Pod
metadata: {name: dns-1, namespace: default, labels: {app: dns}, annotations: {mesh/max-connections: "10"}}
spec:
  containers: [{name: dns, ports: [{name: metrics, containerPort: 9153}]}]
status: {podIP: 10.244.0.5, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: job-1, namespace: default, labels: {app: dns}}
spec: {containers: [{name: job}]}
status: {podIP: 10.244.0.6, phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: default, labels: {app: agent}}
spec: {hostNetwork: true, containers: [{name: agent}]}
status: {podIP: 192.168.1.10, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: default, labels: {app: legacy, sidecar.istio.io/inject: "False"}}
spec: {containers: [{name: app}]}
status: {podIP: 10.244.0.7, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: default, labels: {app: x}, annotations: {mesh/enroll: "FALSE"}}
spec: {containers: [{name: app}]}
status: {podIP: 10.244.0.8, phase: Running}
"#;
    let mut from_file = Registry::default();
    from_file.add_yaml(Path::new("r.yaml"), manifests).expect("registry file");

    let mut state = ClusterState::default();
    state.namespaces.insert(("", "default"), NamespaceInfo { enrolled: true });
    for doc in serde_yaml::Deserializer::from_str(manifests) {
        let value = serde_yaml::Value::deserialize(doc).expect("yaml");
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => {
                let svc: k8s_openapi::api::core::v1::Service = serde_yaml::from_value(value).expect("service");
                let name = svc.metadata.name.clone().expect("name");
                if let Some(info) = service_info(&svc) {
                    state.services.insert(("default", &name), info);
                }
            }
            Some("Pod") => {
                let mut pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_value(value).expect("pod");
                let name = pod.metadata.name.clone().expect("name");
                pod.metadata.uid = Some(format!("default/{name}"));
                if let Some(info) = pod_info(&pod) {
                    state.pods.insert(("default", &name), info);
                }
            }
            _ => {}
        }
    }
    let (from_api, _) = build_registry(&state, "node-a");

    let services = |r: &Registry| {
        let mut v: Vec<Service> = r
            .services
            .iter()
            .map(|s| Service { ready_ips: None, slice_endpoints: Vec::new(), ..Service::clone(s) })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    let workloads = |r: &Registry| {
        let mut v: Vec<Workload> = r.workloads.iter().map(|w| Workload::clone(w)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    assert_eq!(services(&from_file), services(&from_api));
    assert_eq!(workloads(&from_file), workloads(&from_api));
    // And what they agree on is what Kubernetes means: TCP ports only, no ExternalName, no
    // finished pod, no pod IP for a hostNetwork pod, Istio's and the mesh's opt-outs.
    let dns = &services(&from_file)[0];
    assert_eq!(dns.ports.iter().map(|p| p.port).collect::<Vec<_>>(), vec![53, 9153]);
    assert_eq!(services(&from_file).len(), 1);
    let w = workloads(&from_file);
    let names: Vec<(&str, bool, bool)> = w.iter().map(|w| (w.name.as_str(), w.ip.is_some(), w.enroll)).collect();
    assert_eq!(
        names,
        vec![("dns-1", true, true), ("legacy", true, false), ("node-agent", false, false), ("opted-out", true, false)]
    );
}

#[test]
fn service_by_vip_uses_the_index_and_agrees_with_a_scan() {
    let mut reg = Registry::default();
    let extra = r#"
apiVersion: v1
kind: Service
metadata: {name: details, namespace: default}
spec:
  clusterIP: 10.96.0.21
  selector: {app: details}
  ports: [{name: http, port: 9080}, {name: admin, port: 15000}]
---
apiVersion: v1
kind: Service
metadata: {name: details-alias, namespace: default}
spec:
  clusterIP: 10.96.0.21
  selector: {app: details}
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
"#;
    reg.add_yaml(Path::new("r.yaml"), YAML).expect("registry");
    reg.add_yaml(Path::new("x.yaml"), extra).expect("registry");
    let vip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let name = |r: &Registry, ip: &str, port: u16| r.service_by_vip(vip(ip), port).map(|s| s.name.clone());
    assert_eq!(name(&reg, "10.96.0.20", 9080).as_deref(), Some("reviews"));
    // Two services on one VIP: the port tells them apart; a shared port goes to the first listed.
    assert_eq!(name(&reg, "10.96.0.21", 15000).as_deref(), Some("details"));
    assert_eq!(name(&reg, "10.96.0.21", 9090).as_deref(), Some("details-alias"));
    assert_eq!(name(&reg, "10.96.0.21", 9080).as_deref(), Some("details"));
    assert_eq!(name(&reg, "10.96.0.20", 9090), None);
    assert_eq!(name(&reg, "10.96.0.99", 9080), None);
    assert!(reg.vip_index.0.get().is_some(), "the lookups went through the index");
    // A registry changed after its first lookup is scanned, never answered from a stale index.
    let more = extra.replace("details-alias", "late").replace("10.96.0.21", "10.96.0.22");
    reg.add_yaml(Path::new("y.yaml"), &more).expect("registry");
    assert_eq!(name(&reg, "10.96.0.22", 9090).as_deref(), Some("late"));
    assert_eq!(name(&reg.clone(), "10.96.0.22", 15000).as_deref(), Some("details"));
}

#[test]
fn endpoints_follow_selector_and_namespace() {
    let mut reg = Registry::default();
    reg.add_yaml(Path::new("t.yaml"), YAML).unwrap();
    let svc = reg.service_by_host("reviews", "default").unwrap().clone();
    assert_eq!(svc.ports[0].protocol, AppProtocol::Http);
    let eps = reg.endpoints(&svc, 9080);
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].addr, "10.244.0.11:9080".parse().unwrap());
    assert_eq!(eps[0].workload.netns.as_deref(), Some(Path::new("/var/run/netns/reviews-v1")));
    assert!(reg.endpoints(&svc, 9999).is_empty());
}

#[test]
fn port_protocol_is_classified_like_istio() {
    use AppProtocol::*;
    let cases = [
        (Some("http"), None, Http),
        (Some("http-web"), None, Http),
        (Some("grpc"), None, Http2),
        (Some("grpc-greeter"), None, Http2),
        (Some("grpc-web"), None, Http),
        (Some("http2"), None, Http2),
        (Some("h2c-api"), None, Http2),
        (Some("tcp-db"), None, Tcp),
        (Some("mysql"), None, Tcp),
        (Some("web"), None, Unknown),
        (None, None, Unknown),
        // appProtocol wins over the name.
        (Some("http"), Some("grpc"), Http2),
        (Some("grpc"), Some("kubernetes.io/h2c"), Http2),
        (Some("web"), Some("HTTP"), Http),
        (Some("grpc"), Some("tcp"), Tcp),
    ];
    for (name, app, want) in cases {
        assert_eq!(AppProtocol::from_port(name, app), want, "name {name:?} appProtocol {app:?}");
    }
}

#[test]
fn hosts_resolve_like_istio() {
    let mut reg = Registry::default();
    reg.add_yaml(Path::new("t.yaml"), YAML).unwrap();
    for host in [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "10.96.0.20",
        "reviews:9080",
    ] {
        assert!(reg.service_by_host(host, "default").is_some(), "{host}");
    }
    assert!(reg.service_by_host("reviews", "other").is_none());
    assert!(reg.service_by_host("reviews.other", "default").is_none());
}

#[test]
fn cap_annotations_set_only_their_pods_caps_and_bad_values_fall_back_to_the_node_default() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: batch
  annotations: {mesh/max-connections: "2", mesh/max-requests: "5000", mesh/max-buffered-body: 64Mi}
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
---
apiVersion: v1
kind: Pod
metadata:
  name: typo
  namespace: shop
  annotations: {mesh/max-connections: "0", mesh/max-requests: lots, mesh/max-buffered-body: 1.5Gi}
"#;
    let mut reg = Registry::default();
    reg.add_yaml(Path::new("pods.yaml"), yaml).expect("a bad cap annotation never rejects the pod");
    let caps = |name: &str| reg.workloads.iter().find(|w| w.name == name).expect(name).caps;
    assert_eq!(
        caps("batch"),
        PodCaps { max_connections: Some(2), max_requests: Some(5000), max_buffered_body: Some(64 << 20) }
    );
    assert_eq!(caps("plain"), PodCaps::default());
    assert_eq!(caps("typo"), PodCaps::default(), "invalid values: the node defaults");
    assert!(reg.workloads.iter().find(|w| w.name == "typo").expect("typo").enroll);
    // Warned once per pod, annotation and value: the registry is rebuilt on every change.
    assert!(!first_warning("shop", "typo", ANNOTATION_MAX_REQUESTS, "lots"), "already warned while parsing");
    assert!(first_warning("shop", "typo", ANNOTATION_MAX_REQUESTS, "many"), "a new bad value is warned again");
    assert!(!first_warning("shop", "typo", ANNOTATION_MAX_REQUESTS, "many"));
}

#[test]
fn bad_cluster_ip_is_reported_with_file() {
    let mut reg = Registry::default();
    let err = reg
        .add_yaml(Path::new("bad.yaml"), "kind: Service\nmetadata: {name: x}\nspec: {clusterIP: nope}\n")
        .unwrap_err();
    assert!(err.to_string().contains("bad.yaml") && err.to_string().contains("clusterIP"), "{err}");
}
