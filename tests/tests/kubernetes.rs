//! `mesh agent --kubernetes` on the real kernel: the agent discovers from an API server (a local
//! stand-in speaking list/watch), finds pods' cgroups in kubelet's layout and their netns through
//! /proc, enrolls a pod created after it started within a second, follows EndpointSlice
//! readiness, and unenrolls a deleted pod.
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use mesh_e2e::{apiserver::*, *};
use serde_json::json;

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// A selectorless service standing in for the API server's `kubernetes` service.
const APISERVER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const WEB_UID: &str = "7a1b2c3d-0000-4000-8000-00000000000a";
const CLIENT_UID: &str = "7a1b2c3d-0000-4000-8000-00000000000c";
const NODE: &str = "k8-node";

fn pod(name: &str, uid: &str, app: &str, ip: Ipv4Addr, qos: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"app": app}},
           "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": {"phase": "Running", "podIP": ip.to_string(), "qosClass": qos}})
}

fn web_slice(ip: Ipv4Addr, ready: bool) -> serde_json::Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-x1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": ready}}],
           "ports": [{"name": "http", "port": 8080}]})
}

#[test]
fn kubernetes_mode_enrolls_pods_as_the_api_server_reports_them() -> anyhow::Result<()> {
    if !require_ebpf("kubernetes_mode_enrolls_pods_as_the_api_server_reports_them") {
        return Ok(());
    }
    let api = FakeApiServer::start()?;
    let mut node = Node::new("k8", 203)?;
    let hosts = [("web", WEB_VIP), ("apiserver", APISERVER_VIP)];
    // The two kubelet cgroup drivers' layouts, one pod each.
    let client_cgroup =
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", CLIENT_UID.replace('-', "_"));
    node.add_pod_in_cgroup("web-a", 20, &hosts, &format!("kubepods/besteffort/pod{WEB_UID}"))?;
    node.add_pod_in_cgroup("client", 10, &hosts, &client_cgroup)?;
    let (web_ip, client_ip) = (node.pod("web-a")?.ip, node.pod("client")?.ip);
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default();
    node.spawn("web-a", "web-a", &[backend, "http", "web-a", "0.0.0.0:8080"])?;

    api.apply(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {"istio-injection": "enabled"}}}));
    api.apply(SERVICES, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": WEB_VIP.to_string(), "selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080, "targetPort": "http", "protocol": "TCP"}]}}));
    api.apply(SLICES, web_slice(web_ip, true));
    api.apply(PODS, pod("web-a", WEB_UID, "web", web_ip, "BestEffort"));

    let admin: SocketAddr = "127.0.0.1:15123".parse()?;
    let kubeconfig = api.kubeconfig(&node.dir)?;
    let before = attached_mesh_program_ids();
    node.spawn_host(
        "agent",
        Command::new(bin("mesh"))
            .args(["agent", "--kubernetes", "--node-name", NODE, "--kubelet-cgroup-root"])
            .arg(format!("{CGROUP2_ROOT}/mesh-k8"))
            .args(["--istio-crds", "--admin", &admin.to_string(), "--ingress-bind", "127.0.0.1"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            // One worker = the single-threaded runtime (the benchmark's setting); the other e2e
            // tests run the default multi-threaded one.
            .env("MESH_WORKER_THREADS", "1")
            .env("RUST_LOG", "info"),
    )?;
    let agent_log = |node: &Node| format!("agent log:\n{}", node.log("agent"));
    wait_until("agent /ready", Duration::from_secs(20), || {
        http_get(admin, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&node)))?;
    wait_for_port(SocketAddr::from((web_ip, 8080)), Duration::from_secs(10))?;
    let ours = programs_attached_by_agent(&before)?;
    let enrollments = |result: &str| {
        metric(&http_get(admin, "/metrics").unwrap_or_default(), "mesh_pod_enrollments_total", &[("result", result)])
    };
    assert_eq!(enrollments("enrolled"), 1, "web-a (cgroupfs layout) enrolled at start\n{}", agent_log(&node));

    // A pod created after the agent: its sandbox process starts, then the API server reports it.
    node.spawn("client", "client-sandbox", &["sleep", "600"])?;
    wait_until("client sandbox in its cgroup", Duration::from_secs(5), || {
        std::fs::read_to_string(node.pod("client").map(|p| p.cgroup.join("cgroup.procs")).unwrap_or_default())
            .is_ok_and(|s| !s.trim().is_empty())
    })?;
    wait_until("agent watching pods", Duration::from_secs(5), || api.watchers(PODS) > 0)?;
    let created = Instant::now();
    api.apply(PODS, pod("client", CLIENT_UID, "client", client_ip, "Burstable"));
    wait_until("client enrolled", Duration::from_secs(5), || enrollments("enrolled") == 2)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&node)))?;
    let took = created.elapsed();
    eprintln!("client pod enrolled {took:?} after the API server reported it");
    assert!(took < Duration::from_secs(1), "pod enrolled {took:?} after the API server reported it (want < 1 s)");

    let curl = |path: &str| node.exec("client", &["curl", "-sS", "--max-time", "5", &format!("http://web:9080{path}")]);
    let out = curl("/k8s")?;
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("backend=web-a path=/k8s"),
        "VIP not served through the mesh: {body} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent_log(&node)
    );

    // A selectorless service reaches the addresses its EndpointSlice lists (here web-a's, on the
    // slice's port), through the mesh: TCP passthrough for a port named https.
    api.apply(SERVICES, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "apiserver", "namespace": "default"},
        "spec": {"clusterIP": APISERVER_VIP.to_string(), "ports": [{"name": "https", "port": 443, "targetPort": 6443, "protocol": "TCP"}]}}));
    api.apply(SLICES, json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "apiserver", "namespace": "default", "labels": {"kubernetes.io/service-name": "apiserver"}},
        "addressType": "IPv4", "endpoints": [{"addresses": [web_ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": 8080, "protocol": "TCP"}]}));
    wait_until("selectorless service served from its EndpointSlice", Duration::from_secs(5), || {
        node.exec("client", &["curl", "-sS", "--max-time", "2", "http://apiserver:443/api"])
            .is_ok_and(|o| o.stdout.starts_with(b"backend=web-a path=/api"))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&node)))?;

    // Istio objects applied to the API server route traffic (--istio-crds), and changes apply live.
    let fault = |status: u16| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"hosts": ["web"], "http": [
            {"match": [{"headers": {"x-chaos": {"exact": "on"}}}], "fault": {"abort": {"httpStatus": status, "percentage": {"value": 100}}},
             "route": [{"destination": {"host": "web"}}]},
            {"route": [{"destination": {"host": "web"}}]}]}})
    };
    let chaos = || {
        node.exec(
            "client",
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "-H",
                "x-chaos: on",
                "http://web:9080/chaos",
            ],
        )
    };
    let code = |o: anyhow::Result<std::process::Output>| {
        o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    api.apply(VIRTUAL_SERVICES, fault(418));
    wait_until("VirtualService from the API server applied", Duration::from_secs(5), || code(chaos()) == "418")
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&node)))?;
    assert!(curl("/calm")?.stdout.starts_with(b"backend=web-a"), "requests without the header are routed normally");
    api.apply(VIRTUAL_SERVICES, fault(419));
    wait_until("VirtualService change applied", Duration::from_secs(5), || code(chaos()) == "419")?;
    // sourceLabels follow the pod's labels as the API server changes them (no re-enrollment).
    api.apply(VIRTUAL_SERVICES, json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"hosts": ["web"], "http": [
            {"match": [{"sourceLabels": {"track": "canary"}}], "fault": {"abort": {"httpStatus": 420, "percentage": {"value": 100}}},
             "route": [{"destination": {"host": "web"}}]},
            {"route": [{"destination": {"host": "web"}}]}]}}));
    let plain = || {
        node.exec(
            "client",
            &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "http://web:9080/plain"],
        )
    };
    // The new VirtualService has replaced the 419 one; the client is not a canary yet.
    wait_until("sourceLabels VirtualService applied", Duration::from_secs(5), || code(chaos()) == "200")?;
    assert_eq!(code(plain()), "200", "sourceLabels must not match a pod without the label");
    let mut canary = pod("client", CLIENT_UID, "client", client_ip, "Burstable");
    canary["metadata"]["labels"]["track"] = json!("canary");
    api.apply(PODS, canary);
    wait_until("relabelled client matched by sourceLabels", Duration::from_secs(5), || code(plain()) == "420")
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&node)))?;
    assert_eq!(enrollments("enrolled"), 2, "a label change must not re-enroll the pod");
    api.delete(VIRTUAL_SERVICES, "default", "web");
    wait_until("VirtualService deletion applied", Duration::from_secs(5), || code(chaos()) == "200")?;

    // A Gateway API HTTPRoute created in, changed in and deleted from the API server (the agent
    // watches the group by default): the path web-a receives follows it.
    let route = |path: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-11-27T10:00:00Z"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 9080}],
                        "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": path}}}],
                                   "backendRefs": [{"name": "web", "port": 9080}]}]}})
    };
    let got = |want: &str| {
        curl("/asked").is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("path={want} ")))
    };
    api.apply(HTTP_ROUTES, route("/rewritten"));
    wait_until("HTTPRoute from the API server applied", Duration::from_secs(5), || got("/rewritten"))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&node)))?;
    api.apply(HTTP_ROUTES, route("/changed"));
    wait_until("HTTPRoute change applied", Duration::from_secs(5), || got("/changed"))?;
    api.delete(HTTP_ROUTES, "default", "web");
    wait_until("HTTPRoute deletion applied", Duration::from_secs(5), || got("/asked"))?;

    // EndpointSlice readiness is the truth for endpoints: not ready → no healthy upstream.
    api.apply(SLICES, web_slice(web_ip, false));
    wait_until("web-a out of the endpoints", Duration::from_secs(5), || {
        curl("/probe").is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("no healthy upstream"))
    })?;
    api.apply(SLICES, web_slice(web_ip, true));
    wait_until("web-a back", Duration::from_secs(5), || {
        curl("/probe").is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("backend=web-a"))
    })?;

    // Deleted from the API: unenrolled, so its connects to the VIP are no longer redirected.
    api.delete(PODS, "default", "client");
    wait_until("client unenrolled", Duration::from_secs(1), || enrollments("removed") == 1)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", agent_log(&node)))?;
    let out = curl("/after-delete")?;
    assert!(!out.status.success(), "a deleted pod is still redirected: {}", String::from_utf8_lossy(&out.stdout));

    let status = node.stop("agent")?;
    assert!(status.success(), "agent exited with {status}\n{}", agent_log(&node));
    let left: Vec<u32> = attached_mesh_program_ids().intersection(&ours).copied().collect();
    assert!(left.is_empty(), "programs {left:?} still attached after the agent exited");
    Ok(())
}
