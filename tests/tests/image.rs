//! The agent image (`cargo xtask image`) run by a real container runtime, podman with runc, the
//! way the kubelet would run deploy/daemonset.yaml: security context (capabilities, privileged),
//! hostNetwork/hostPID, volume mounts, env and args are all read from the manifest, not copied.
//!
//! The agent runs in `--kubernetes` mode (the manifest's args) against the list/watch stand-in
//! for the API server, on the local node: pods are network namespaces + cgroups in the kubelet's
//! cgroupfs layout. What differs from a cluster, and why:
//! * each hostPath is mapped onto this machine (see [`host_path`]): the hybrid cgroup host's v2
//!   hierarchy is `/sys/fs/cgroup/unified`, mounted where the manifest mounts `/sys/fs/cgroup`;
//! * the API server is reached through a kubeconfig (`KUBECONFIG`, one extra read-only mount): the
//!   stand-in speaks plain HTTP and there is no service account token;
//! * the container's rlimits are set to values this sandbox lets runc set (podman's defaults
//!   exceed them; the kubelet sets none);
//! * the pods' cgroups sit below `mesh-kubelet/` in the v2 hierarchy, a nested kubelet cgroup root
//!   such as kind's, which the agent finds by its name.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::{
    api::{apps::v1::DaemonSet, core::v1::Container},
    apimachinery::pkg::util::intstr::IntOrString,
};
use mesh_e2e::{apiserver::*, *};
use serde_json::json;

/// What `cargo xtask image` builds (fully qualified: the manifest's `mesh-agent:latest`).
const IMAGE: &str = "docker.io/library/mesh-agent:latest";
const NODE: &str = "image-node";
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
/// Pods: (name, host part of the IP, uid, `version` label).
const NODE_PODS: [(&str, u8, &str, &str); 3] = [
    ("web-v1", 21, "6c1d0e2f-0000-4000-8000-0000000000a1", "v1"),
    ("web-v2", 22, "6c1d0e2f-0000-4000-8000-0000000000a2", "v2"),
    ("client", 10, "6c1d0e2f-0000-4000-8000-0000000000c1", "client"),
];
/// Where the test's kubeconfig is mounted in the container.
const KUBECONFIG_DIR: &str = "/var/run/mesh-test";

fn containers_conf() -> PathBuf {
    workspace().join("deploy/podman/containers.conf")
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

/// Why the image cannot be run here, if it cannot.
fn image_unavailable() -> Option<String> {
    if let Some(why) = ebpf_unavailable() {
        return Some(why);
    }
    let version = podman().arg("--version").output();
    if !version.is_ok_and(|o| o.status.success()) {
        return Some("podman is not installed: run `cargo xtask image`".into());
    }
    let exists = podman().args(["image", "exists", IMAGE]).status();
    if !exists.is_ok_and(|s| s.success()) {
        return Some(format!("no image {IMAGE}: run `cargo xtask image`"));
    }
    // The image must hold the agent this checkout built (`cargo xtask image` labels it).
    let label = podman()
        .args(["image", "inspect", "--format", "{{index .Labels \"mesh.binary-sha256\"}}", IMAGE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let built = Command::new("sha256sum")
        .arg(bin("mesh"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    if built.is_empty() || label != built {
        return Some(format!(
            "{IMAGE} holds another build of the agent than {} (label {label:?}): run `cargo xtask image`",
            bin("mesh").display()
        ));
    }
    None
}

fn daemonset() -> Result<DaemonSet> {
    let path = workspace().join("deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not a DaemonSet", path.display()))
}

/// The manifest's pod spec and its one container.
fn agent_container(ds: &DaemonSet) -> Result<(&k8s_openapi::api::core::v1::PodSpec, &Container)> {
    let pod = ds.spec.template.spec.as_ref().context("DaemonSet without a pod spec")?;
    ensure!(pod.containers.len() == 1, "the test knows one agent container, the manifest has {}", pod.containers.len());
    Ok((pod, &pod.containers[0]))
}

/// The manifest's capabilities: (drop, add).
fn capabilities(c: &Container) -> (Vec<String>, Vec<String>) {
    let caps = c.security_context.as_ref().and_then(|s| s.capabilities.as_ref());
    (caps.and_then(|c| c.drop.clone()).unwrap_or_default(), caps.and_then(|c| c.add.clone()).unwrap_or_default())
}

/// The admin port and path of an HTTP probe.
fn probe(p: Option<&k8s_openapi::api::core::v1::Probe>, what: &str) -> Result<(u16, String)> {
    let get = p.and_then(|p| p.http_get.as_ref()).with_context(|| format!("no httpGet {what}"))?;
    let port = match &get.port {
        IntOrString::Int(n) => u16::try_from(*n).with_context(|| format!("{what} port {n}"))?,
        IntOrString::String(s) => bail!("{what} names port {s:?}; the pod declares no ports"),
    };
    Ok((port, get.path.clone().unwrap_or_else(|| "/".into())))
}

/// The local node, the API server stand-in and the directories the container mounts.
struct Env {
    node: Node,
    /// Serves the agent's list/watch for as long as the test runs.
    _api: FakeApiServer,
    routing: PathBuf,
    run_mesh: PathBuf,
    kube: PathBuf,
}

/// This machine's directory for a volume of the manifest.
fn host_path(env: &Env, volume: &k8s_openapi::api::core::v1::Volume) -> Result<PathBuf> {
    if let Some(hp) = &volume.host_path {
        return Ok(match hp.path.as_str() {
            // A hybrid v1/v2 host: the pods' cgroup v2 hierarchy is mounted at /sys/fs/cgroup/unified.
            // Mounted where the manifest mounts /sys/fs/cgroup, the manifest's --cgroup-root names it.
            "/sys/fs/cgroup" => PathBuf::from(CGROUP2_ROOT),
            "/sys/fs/bpf" => PathBuf::from("/sys/fs/bpf"),
            // The handover socket's directory: the test's own, so the agent can never take over
            // from (or hand over to) another agent running on this machine.
            "/run/mesh" => env.run_mesh.clone(),
            other => bail!("volume {}: no mapping of hostPath {other} onto this machine", volume.name),
        });
    }
    if let Some(cm) = &volume.config_map {
        ensure!(cm.name == "mesh-routing", "volume {}: unknown ConfigMap {}", volume.name, cm.name);
        return Ok(env.routing.clone());
    }
    bail!("volume {}: neither hostPath nor the routing ConfigMap", volume.name)
}

/// `podman run` arguments for the manifest's agent container, with capability `without` removed
/// from the manifest's `add` list and the given seccomp profile.
fn run_args(env: &Env, ds: &DaemonSet, name: &str, without: Option<&str>, seccomp: Seccomp) -> Result<Vec<String>> {
    let (pod, c) = agent_container(ds)?;
    let mut args: Vec<String> = ["run", "--name", name, "--pull", "never"].map(String::from).to_vec();
    // The kubelet sets no rlimits (the container inherits the runtime's); podman's defaults are
    // above what runc may set in this sandbox (no CAP_SYS_RESOURCE): the test's own, capped at
    // what runc set here in a trial.
    let mut limits = BTreeMap::new();
    for (name, resource) in [("nofile", libc::RLIMIT_NOFILE), ("nproc", libc::RLIMIT_NPROC)] {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct we pass.
        if unsafe { libc::getrlimit(resource, &mut rl) } != 0 {
            bail!("getrlimit({name}): {}", std::io::Error::last_os_error());
        }
        limits.insert(name, rl.rlim_cur.min(32768));
    }
    for (name, v) in limits {
        args.extend(["--ulimit".into(), format!("{name}={v}:{v}")]);
    }
    // hostNetwork is also what keeps podman's network stack from writing netfilter rules.
    ensure!(pod.host_network == Some(true), "the manifest's pod must use hostNetwork");
    args.extend(["--network".into(), "host".into()]);
    if pod.host_pid == Some(true) {
        args.extend(["--pid".into(), "host".into()]);
    }
    let sc = c.security_context.as_ref().context("no securityContext")?;
    ensure!(sc.seccomp_profile.is_none(), "the test maps no seccompProfile yet");
    if seccomp == Seccomp::Unconfined {
        args.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
    }
    if sc.privileged == Some(true) {
        args.push("--privileged".into());
    }
    let (drop, add) = capabilities(c);
    for cap in drop {
        args.extend(["--cap-drop".into(), cap]);
    }
    for cap in add.into_iter().filter(|c| Some(c.as_str()) != without) {
        args.extend(["--cap-add".into(), cap]);
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) if f.field_path == "spec.nodeName" => NODE.to_owned(),
            _ => bail!("env {}: the test knows literal values and spec.nodeName", e.name),
        };
        args.extend(["--env".into(), format!("{}={value}", e.name)]);
    }
    args.extend(["--env".into(), format!("KUBECONFIG={KUBECONFIG_DIR}/kubeconfig")]);
    args.extend(["--volume".into(), format!("{}:{KUBECONFIG_DIR}:ro", env.kube.display())]);
    let volumes = pod.volumes.iter().flatten();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes.clone().find(|v| v.name == m.name).with_context(|| format!("no volume {}", m.name))?;
        let ro = if m.read_only == Some(true) { ":ro" } else { "" };
        args.extend(["--volume".into(), format!("{}:{}{ro}", host_path(env, v)?.display(), m.mount_path)]);
    }
    let image = c.image.as_deref().context("no image")?;
    ensure!(format!("docker.io/library/{image}") == IMAGE, "the manifest runs {image}, the test {IMAGE}");
    args.push(IMAGE.into());
    ensure!(c.command.is_none(), "the manifest overrides the image's entrypoint");
    args.extend(c.args.iter().flatten().cloned());
    Ok(args)
}

/// `iptables-save`, `ip6tables-save` and `nft list ruleset` in the host netns and every pod's. A
/// tool that fails is an error, not an empty ruleset.
fn netfilter_rules(node: &Node) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let namespaces = std::iter::once(None).chain(node.pods.iter().map(|p| Some(p.netns.clone())));
    for netns in namespaces {
        let mut text = String::new();
        for tool in [&["iptables-save"][..], &["ip6tables-save"][..], &["nft", "list", "ruleset"][..]] {
            let mut cmd = match &netns {
                None => Command::new(tool[0]),
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, tool[0]]);
                    c
                }
            };
            let res = cmd.args(&tool[1..]).output()?;
            ensure!(
                res.status.success(),
                "{} in netns {netns:?} failed ({}): {}",
                tool.join(" "),
                res.status,
                String::from_utf8_lossy(&res.stderr)
            );
            // Timestamps and packet counters change by themselves; the rules are what counts.
            for line in String::from_utf8_lossy(&res.stdout).lines().filter(|l| !l.starts_with('#')) {
                let line = match line.rfind(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                text += line;
                text.push('\n');
            }
        }
        out.insert(netns.unwrap_or_else(|| "host".into()), text);
    }
    Ok(out)
}

const ROUTING: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
  namespace: default
spec:
  host: web
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  hosts:
  - web
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: web
        subset: v2
  - route:
    - destination:
        host: web
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: web-gateway
  namespace: default
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web-ingress
  namespace: default
spec:
  hosts:
  - "*"
  gateways:
  - web-gateway
  http:
  - route:
    - destination:
        host: web
        subset: v2
        port:
          number: 9080
"#;

/// The node: web-v1 and web-v2 serving HTTP on :8080 behind the `web` VIP, a client pod, all in
/// an injection-enabled namespace, known to the API server stand-in; the routing ConfigMap's
/// directory with a VirtualService (header route to subsets) and a Gateway on port 80.
fn setup() -> Result<Env> {
    // "kubelet": the node's cgroup directory (mesh-kubelet) is then a nested kubelet cgroup root.
    let mut node = Node::new("kubelet", 206)?;
    let hosts = [("web", WEB_VIP)];
    for (name, host, uid, _) in NODE_PODS {
        node.add_pod_in_cgroup(name, host, &hosts, &format!("kubepods/besteffort/pod{uid}"))?;
    }
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default().to_owned();
    node.spawn("web-v1", "web-v1", &[&backend, "http", "web-v1", "0.0.0.0:8080"])?;
    node.spawn("web-v2", "web-v2", &[&backend, "http", "web-v2", "0.0.0.0:8080"])?;
    node.spawn("client", "client-sandbox", &["sleep", "600"])?;
    for (name, ..) in NODE_PODS {
        let procs = node.pod(name)?.cgroup.join("cgroup.procs");
        wait_until(&format!("{name}'s sandbox process"), Duration::from_secs(5), || {
            std::fs::read_to_string(&procs).is_ok_and(|s| !s.trim().is_empty())
        })?;
    }
    let api = FakeApiServer::start()?;
    api.apply(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {"istio-injection": "enabled"}}}));
    api.apply(SERVICES, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": WEB_VIP.to_string(), "selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080, "protocol": "TCP"}]}}));
    let mut endpoints = Vec::new();
    for (name, _, uid, version) in NODE_PODS {
        let ip = node.pod(name)?.ip.to_string();
        let app = if name == "client" { "client" } else { "web" };
        api.apply(
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"app": app, "version": version}},
            "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "qosClass": "BestEffort"}}),
        );
        if app == "web" {
            endpoints.push(json!({"addresses": [ip], "conditions": {"ready": true}}));
        }
    }
    api.apply(
        SLICES,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "http", "port": 8080}]}),
    );
    let routing = node.dir.join("routing");
    let run_mesh = node.dir.join("run-mesh");
    let kube = node.dir.join("kube");
    for d in [&routing, &run_mesh, &kube] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(routing.join("web.yaml"), ROUTING)?;
    api.kubeconfig(&kube)?;
    Ok(Env { node, _api: api, routing, run_mesh, kube })
}

/// The container's seccomp profile. The manifest sets none: Kubernetes then runs the pod
/// Unconfined, unless the kubelet runs with --seccomp-default (the runtime's default profile).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seccomp {
    /// podman's default profile (containers-common's seccomp.json): like a runtime's default.
    RuntimeDefault,
    Unconfined,
}

/// Removes the container however the test ends (a killed `podman run` client leaves it running).
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.0]).output();
    }
}

fn start(
    env: &mut Env,
    ds: &DaemonSet,
    label: &str,
    without: Option<&str>,
    seccomp: Seccomp,
) -> Result<ContainerGuard> {
    let name = format!("mesh-image-test-{label}");
    let _ = podman().args(["rm", "--force", "--time", "0", &name]).output();
    let args = run_args(env, ds, &name, without, seccomp)?;
    let guard = ContainerGuard(name);
    env.node.spawn_host(label, podman().args(&args))?;
    Ok(guard)
}

fn running(name: &str) -> bool {
    podman()
        .args(["inspect", "--format", "{{.State.Running}}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
}

fn status_of(admin: SocketAddr, path: &str) -> Option<u16> {
    let r = http_get(admin, path).ok()?;
    r.split_whitespace().nth(1)?.parse().ok()
}

fn curl(node: &Node, pod: &str, url: &str, headers: &[&str]) -> String {
    let mut args = vec!["curl", "-sS", "--max-time", "3"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    node.exec(pod, &args).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn enrolled(admin: SocketAddr) -> u64 {
    metric(&http_get(admin, "/metrics").unwrap_or_default(), "mesh_pod_enrollments_total", &[("result", "enrolled")])
}

#[test]
fn agent_image_runs_with_the_daemonsets_security_context() -> Result<()> {
    if !require("agent_image_runs_with_the_daemonsets_security_context", image_unavailable()) {
        return Ok(());
    }
    let ds = daemonset()?;
    let (pod, c) = agent_container(&ds)?;
    let (ready_port, ready_path) = probe(c.readiness_probe.as_ref(), "readinessProbe")?;
    let (live_port, live_path) = probe(c.liveness_probe.as_ref(), "livenessProbe")?;
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    let mut env = setup()?;
    let before_rules = netfilter_rules(&env.node)?;
    let before = attached_mesh_program_ids();
    let guard = start(&mut env, &ds, "agent", None, Seccomp::RuntimeDefault)?;
    let log = |env: &Env| format!("agent log:\n{}", env.node.log("agent"));

    // The kubelet's readiness probe: the port and path the manifest names.
    let ready: SocketAddr = (Ipv4Addr::LOCALHOST, ready_port).into();
    let started = Instant::now();
    wait_until("readinessProbe 200", Duration::from_secs(30), || {
        // An agent that exited will not become ready: fail with its log at once.
        status_of(ready, &ready_path) == Some(200) || (!running(&guard.0) && started.elapsed() > Duration::from_secs(2))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", log(&env)))?;
    assert_eq!(status_of(ready, &ready_path), Some(200), "the agent exited\n{}", log(&env));
    eprintln!("image: agent ready {:?} after `podman run`", started.elapsed());
    let live: SocketAddr = (Ipv4Addr::LOCALHOST, live_port).into();
    assert_eq!(status_of(live, &live_path), Some(200), "livenessProbe {live_path} on {live_port}");
    let ours = programs_attached_by_agent(&before)?;
    wait_until("every pod enrolled", Duration::from_secs(5), || enrolled(ready) == NODE_PODS.len() as u64)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", log(&env)))?;

    // VIP traffic from the client pod, routed by the ConfigMap's VirtualService.
    let plain = curl(&env.node, "client", "http://web:9080/plain", &[]);
    assert!(plain.starts_with("backend=web-v1 path=/plain"), "default route to v1: {plain:?}\n{}", log(&env));
    let jason = curl(&env.node, "client", "http://web:9080/jason", &["end-user: jason"]);
    assert!(jason.starts_with("backend=web-v2 path=/jason"), "header route to v2: {jason:?}\n{}", log(&env));
    // The Gateway on port 80 (NET_BIND_SERVICE), from the host network.
    let out = Command::new("curl").args(["-sS", "--max-time", "3", "http://127.0.0.1:80/gw"]).output()?;
    let gw = String::from_utf8_lossy(&out.stdout);
    assert!(gw.starts_with("backend=web-v2 path=/gw"), "gateway on :80: {gw:?}\n{}", log(&env));
    assert_eq!(netfilter_rules(&env.node)?, before_rules, "netfilter changed while the container ran");

    // What the kubelet does on delete/rollout: SIGTERM, SIGKILL after the grace period.
    let stopping = Instant::now();
    let stopped = podman().args(["stop", "--time", &grace.to_string(), &guard.0]).output()?;
    assert!(stopped.status.success(), "podman stop: {}", String::from_utf8_lossy(&stopped.stderr));
    let status = env.node.wait("agent", Duration::from_secs(10))?;
    eprintln!("image: `podman stop` returned after {:?}", stopping.elapsed());
    assert!(status.success(), "the agent exited with {status} on SIGTERM\n{}", log(&env));
    let left: Vec<u32> = attached_mesh_program_ids().intersection(&ours).copied().collect();
    assert!(left.is_empty(), "programs {left:?} still attached after `podman stop`");
    assert!(!env.run_mesh.join("handover.sock").exists(), "the handover socket is left in the hostPath");
    let vip = curl(&env.node, "client", "http://web:9080/after", &[]);
    assert!(vip.is_empty(), "the VIP is still redirected after the agent stopped: {vip:?}");
    assert_eq!(netfilter_rules(&env.node)?, before_rules, "netfilter changed by `podman stop`");
    drop(guard);
    assert_eq!(netfilter_rules(&env.node)?, before_rules, "netfilter changed by `podman rm`");
    Ok(())
}

/// What works in one run of the agent container.
#[derive(Debug, Default, PartialEq)]
struct Features {
    /// `/healthz` 200: the container runs and the programs are attached.
    live: bool,
    /// `/ready` 200.
    ready: bool,
    /// Every pod enrolled.
    enrolled: bool,
    /// The client pod's VIP connect redirected and routed to web-v1.
    vip: bool,
    /// The Gateway on port 80 answers.
    gateway: bool,
}

impl Features {
    fn broken(&self) -> Vec<&'static str> {
        let all = [
            (self.live, "agent start (programs attached, /healthz)"),
            (self.ready, "/ready"),
            (self.enrolled, "pod enrollment"),
            (self.vip, "VIP redirect"),
            (self.gateway, "Gateway :80"),
        ];
        all.iter().filter(|(ok, _)| !ok).map(|(_, what)| *what).collect()
    }
}

/// Runs the manifest's container without capability `without` and sees what works.
fn features_without(
    env: &mut Env,
    ds: &DaemonSet,
    without: Option<&str>,
    seccomp: Seccomp,
) -> Result<(Features, String)> {
    let (_, c) = agent_container(ds)?;
    let (port, _) = probe(c.readiness_probe.as_ref(), "readinessProbe")?;
    let admin: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let label = format!("without-{}", without.unwrap_or("nothing").to_ascii_lowercase());
    let guard = start(env, ds, &label, without, seccomp)?;
    let mut f = Features::default();
    // Started, or given up: the container exited, or 15 s passed.
    let started = Instant::now();
    let _ = wait_until("the agent to answer /healthz or exit", Duration::from_secs(15), || {
        status_of(admin, "/healthz") == Some(200) || (!running(&guard.0) && started.elapsed() > Duration::from_secs(2))
    });
    f.live = status_of(admin, "/healthz") == Some(200);
    if f.live {
        f.ready = wait_until("/ready", Duration::from_secs(10), || status_of(admin, "/ready") == Some(200)).is_ok();
        f.enrolled =
            wait_until("enrollments", Duration::from_secs(3), || enrolled(admin) == NODE_PODS.len() as u64).is_ok();
        f.vip = curl(&env.node, "client", "http://web:9080/cap", &[]).starts_with("backend=web-v1");
        let gw = Command::new("curl").args(["-sS", "--max-time", "3", "http://127.0.0.1:80/gw"]).output()?;
        f.gateway = gw.stdout.starts_with(b"backend=web-v2");
    }
    let _ = podman().args(["stop", "--time", "10", &guard.0]).output();
    let _ = env.node.wait(&label, Duration::from_secs(15));
    drop(guard);
    // The agent's complaints: what a user would read in `kubectl logs`.
    let log = env.node.log(&label);
    let why = log
        .lines()
        .find(|l| l.contains("ERROR") || l.contains("WARN") || l.to_ascii_lowercase().starts_with("error"))
        .unwrap_or_default();
    Ok((f, why.to_owned()))
}

/// Drops each capability the manifest adds, one at a time, and records what breaks: every
/// capability in deploy/daemonset.yaml must be needed by something (the README's table).
#[test]
fn agent_image_needs_every_capability_the_daemonset_adds() -> Result<()> {
    if !require("agent_image_needs_every_capability_the_daemonset_adds", image_unavailable()) {
        return Ok(());
    }
    let ds = daemonset()?;
    let (_, c) = agent_container(&ds)?;
    let (drop, add) = capabilities(c);
    assert_eq!(drop, ["ALL"], "the manifest drops every capability it does not add");
    let mut env = setup()?;
    let before_rules = netfilter_rules(&env.node)?;
    let mut table = Vec::new();
    for seccomp in [Seccomp::RuntimeDefault, Seccomp::Unconfined] {
        let (all, why) = features_without(&mut env, &ds, None, seccomp)?;
        assert!(all.broken().is_empty(), "{seccomp:?}, the manifest's capabilities: {:?} broken ({why})", all.broken());
        for cap in &add {
            let (f, why) = features_without(&mut env, &ds, Some(cap), seccomp)?;
            eprintln!("{seccomp:?} without {cap}: broken {:?}; log: {why}", f.broken());
            table.push((cap.clone(), seccomp, f.broken(), why));
        }
    }
    eprintln!("| capability dropped | seccomp | what breaks | the agent's log |\n|---|---|---|---|");
    for (cap, seccomp, broken, why) in &table {
        let broken = if broken.is_empty() { "nothing".into() } else { broken.join(", ") };
        eprintln!("| {cap} | {seccomp:?} | {broken} | {why} |");
    }
    // Needed under either profile: the kubelet may run the pod under either.
    let unneeded: Vec<&String> =
        add.iter().filter(|cap| table.iter().all(|(c, _, broken, _)| c != *cap || broken.is_empty())).collect();
    assert!(unneeded.is_empty(), "the agent works without {unneeded:?}: remove them from deploy/daemonset.yaml");
    assert_eq!(netfilter_rules(&env.node)?, before_rules, "netfilter changed");
    Ok(())
}
