//! The vertical slice on the real kernel: a pod's connect() to a service VIP that exists nowhere
//! but in the mesh's maps is rewritten by connect4, lands on the node proxy's listener in the
//! pod's netns, and is answered by a backend pod; un-enrolled pods are not redirected; TCP passes
//! through at L4; the agent's exit leaves nothing attached; no iptables/nft rule ever exists.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use mesh_e2e::*;

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const BANNER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);

/// `iptables-save` and `nft list ruleset` in the host netns and in every pod's, by netns. A tool
/// that is missing or fails is an error, not an empty ruleset.
fn netfilter_rules(node: &Node) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let namespaces = std::iter::once(None).chain(node.pods.iter().map(|p| Some(p.netns.clone())));
    for netns in namespaces {
        let mut text = String::new();
        for tool in [&["iptables-save"][..], &["nft", "list", "ruleset"][..]] {
            let mut cmd = match &netns {
                None => Command::new(tool[0]),
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, tool[0]]);
                    c
                }
            };
            let res = cmd.args(&tool[1..]).output()?;
            anyhow::ensure!(
                res.status.success(),
                "{} in netns {netns:?} failed ({}): {}",
                tool.join(" "),
                res.status,
                String::from_utf8_lossy(&res.stderr)
            );
            // iptables-save stamps every table with the time it ran; the rules are what counts.
            for line in String::from_utf8_lossy(&res.stdout).lines().filter(|l| !l.starts_with('#')) {
                text += line;
                text.push('\n');
            }
        }
        out.insert(netns.unwrap_or_else(|| "host".into()), text);
    }
    Ok(out)
}

/// No rule appeared anywhere since `before`, and the pods' namespaces (made by this test) have
/// no rule, no redirect and no DNAT at all.
fn no_netfilter_rules(node: &Node, before: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let now = netfilter_rules(node)?;
    assert_eq!(&now, before, "netfilter changed while the agent ran");
    for (netns, text) in now.iter().filter(|(ns, _)| *ns != "host") {
        assert!(
            !text.lines().any(|l| l.starts_with("-A") || l.contains("redirect") || l.contains("dnat")),
            "netns {netns} has netfilter rules:\n{text}"
        );
    }
    Ok(())
}

/// Waits for one line of the agent's log from target `mesh::ebpf` containing every one of `needles`.
fn wait_for_kernel_event(node: &Node, needles: &[&str]) -> anyhow::Result<()> {
    let found = || {
        strip_ansi(&node.log("agent"))
            .lines()
            .any(|l| l.contains("mesh::ebpf") && needles.iter().all(|n| l.contains(n)))
    };
    wait_until(&format!("kernel event {needles:?} in the agent log"), Duration::from_secs(5), found)
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", strip_ansi(&node.log("agent"))))
}

/// The agent's log may carry colour escapes; matching is on the text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A connect to a VIP that was not redirected hits the pod's blackhole route: curl exits 7 with
/// the kernel's EINVAL ("Invalid argument"), not "Connection refused" (redirected to a listener
/// that is gone), a timeout, or success.
fn assert_blackholed(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{what}: curl {}: {err}", out.status);
    assert!(err.contains("Invalid argument"), "{what}: not the blackhole route:\n{err}");
}

#[test]
fn vip_connect_is_redirected_through_the_node_proxy() -> anyhow::Result<()> {
    if !require_ebpf("vip_connect_is_redirected_through_the_node_proxy") {
        return Ok(());
    }
    let hosts = [("web", WEB_VIP), ("banner", BANNER_VIP)];
    let mut node = Node::new("rd", 201)?;
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("outsider", 11, &hosts)?;
    node.add_pod("web-a", 20, &hosts)?;
    node.add_pod("banner-a", 21, &hosts)?;

    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default();
    node.spawn("web-a", "web-a", &[backend, "http", "web-a", "0.0.0.0:8080"])?;
    node.spawn("banner-a", "banner-a", &[backend, "banner", "banner-a", "0.0.0.0:7000"])?;

    let mut registry = service_yaml("web", WEB_VIP, 9080, "http", &[("app", "web")]);
    registry += &service_yaml("banner", BANNER_VIP, 7000, "tcp-banner", &[("app", "banner")]);
    // Target port 8080 differs from the service port: the proxy must resolve it, like kube-proxy.
    registry = registry.replacen("    port: 9080\n", "    port: 9080\n    targetPort: 8080\n", 1);
    registry += &node.pod_yaml("client", &[("app", "client")], 1, true)?;
    registry += &node.pod_yaml("outsider", &[("app", "outsider")], 1, false)?;
    registry += &node.pod_yaml("web-a", &[("app", "web"), ("version", "v1")], 8080, true)?;
    registry += &node.pod_yaml("banner-a", &[("app", "banner")], 7000, true)?;
    let reg_file = node.dir.join("registry.yaml");
    std::fs::write(&reg_file, registry)?;

    let admin: SocketAddr = "127.0.0.1:15121".parse()?;
    let netfilter = netfilter_rules(&node)?;
    let before = attached_mesh_program_ids();
    node.spawn_host(
        "agent",
        Command::new(bin("mesh"))
            .args(["agent", "--registry"])
            .arg(&reg_file)
            .args(["--admin", &admin.to_string(), "--ingress-bind", "127.0.0.1"])
            // The kernel programs' debug events on, through the agent's tracing filter.
            .env("RUST_LOG", "info,mesh::ebpf=debug"),
    )?;
    wait_ready(admin, Duration::from_secs(20))
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", node.log("agent")))?;
    wait_for_port(SocketAddr::from((node.pod("web-a")?.ip, 8080)), Duration::from_secs(10))?;
    wait_for_port(SocketAddr::from((node.pod("banner-a")?.ip, 7000)), Duration::from_secs(10))?;

    let ours = programs_attached_by_agent(&before)?;

    // 1. An enrolled pod reaches the VIP through the proxy; the backend sees the original Host.
    let n = 5;
    for i in 0..n {
        let out = node.exec(
            "client",
            &["curl", "-sS", "--max-time", "5", "-H", "end-user: jason", &format!("http://web:9080/hello/{i}")],
        )?;
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl via VIP failed: {}\nmetrics:\n{}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            http_get(admin, "/metrics").unwrap_or_default(),
            node.log("agent")
        );
        assert!(
            body.contains("backend=web-a") && body.contains(&format!("path=/hello/{i}")),
            "unexpected body: {body}"
        );
        assert!(
            body.contains("end-user=jason") && body.contains("host=web:9080"),
            "headers not passed through: {body}"
        );
    }
    let metrics = http_get(admin, "/metrics")?;
    assert_eq!(
        metric(
            &metrics,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("source_workload", "client"),
                ("destination_service_name", "web"),
                ("response_code", "200")
            ]
        ),
        n,
        "proxy did not count the requests as client → web:\n{metrics}"
    );
    // Exactly the client's connects were redirected: the proxy's own upstream connects were not.
    assert_eq!(metric(&metrics, "mesh_kernel_connects_redirected_total", &[]), n, "{metrics}");
    // The kernel said so, naming the pod and the VIP.
    wait_for_kernel_event(&node, &["connect redirected to the node proxy: 10.96.0.20:9080", "pod=default/client"])?;

    // 1a. An enrolled pod's connect to a VIP:port no service has is not redirected (it fails on the
    // pod's blackhole route), is counted, and the kernel's debug event names pod and address.
    let out = node.exec("client", &["curl", "-sS", "--max-time", "3", "http://10.96.0.99:8080/"])?;
    assert!(!out.status.success(), "unknown VIP reached: {}", String::from_utf8_lossy(&out.stdout));
    wait_for_kernel_event(
        &node,
        &["connect not redirected: no service entry for 10.96.0.99:8080", "pod=default/client"],
    )?;
    assert_eq!(metric(&http_get(admin, "/metrics")?, "mesh_kernel_connects_no_service_total", &[]), 1);

    // 1b. A connection to the proxy port that connect4 did not record: sock_ops reports it.
    let _ = node.exec("client", &["curl", "-sS", "--max-time", "3", "http://127.0.0.1:15001/"])?;
    wait_for_kernel_event(&node, &["no original-destination record for connection", "pod=default/client"])?;
    assert_eq!(metric(&http_get(admin, "/metrics")?, "mesh_kernel_orig_dst_missing_total", &[]), 1);

    // 1c. A dual-stack socket reaching the VIP as an IPv4-mapped IPv6 address is redirected too.
    let out =
        node.exec("client", &["curl", "-sS", "--max-time", "5", "-g", "http://[::ffff:10.96.0.20]:9080/mapped"])?;
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("backend=web-a path=/mapped"),
        "v4-mapped VIP not redirected: {body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = n + 1;

    // 1c. The agent's own connects are not redirected. The proxy dials pod IPs, so the count
    // above cannot show it; here a process in the agent's cgroup (this test's: the agent was
    // started from it) connects to the VIP from the client pod's netns, where the in-pod
    // listener would serve it if it were redirected.
    let agent_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", node.pid("agent").unwrap_or(0)))?;
    assert_eq!(std::fs::read_to_string("/proc/self/cgroup")?, agent_cgroup, "test and agent cgroups differ");
    let client_netns = node.pod("client")?.netns.clone();
    let out = Command::new("ip")
        .args(["netns", "exec", &client_netns, "curl", "-v", "-sS", "--max-time", "3", "http://10.96.0.20:9080/"])
        .output()?;
    assert_blackholed(&out, "connect from the agent's cgroup");
    assert_eq!(metric(&http_get(admin, "/metrics")?, "mesh_kernel_connects_redirected_total", &[]), n);

    // 2. An un-enrolled pod is not redirected: its connect hits the blackhole route and fails locally.
    let out = node.exec("outsider", &["curl", "-v", "-sS", "--max-time", "3", "http://web:9080/"])?;
    assert_blackholed(&out, "un-enrolled pod");
    assert_eq!(metric(&http_get(admin, "/metrics")?, "mesh_kernel_connects_redirected_total", &[]), n);

    // 3. Non-HTTP (server-first) TCP passes through at L4.
    let out = node.exec("client", &[backend, "tcp-client", &format!("{BANNER_VIP}:7000"), "ping"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BANNER banner-a") && text.contains("ECHO ping"),
        "TCP passthrough failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = http_get(admin, "/metrics")?;
    assert_eq!(
        metric(&metrics, "mesh_tcp_connections_total", &[("destination_service", "banner"), ("result", "ok")]),
        1,
        "{metrics}"
    );

    // 4. Nothing in netfilter at any point, in the host's netns or the pods'.
    no_netfilter_rules(&node, &netfilter)?;

    // 5. A clean exit detaches everything; the VIP is unreachable again.
    let status = node.stop("agent")?;
    assert!(status.success(), "agent exited with {status}:\n{}", node.log("agent"));
    let left: Vec<u32> = attached_mesh_program_ids().intersection(&ours).copied().collect();
    assert!(left.is_empty(), "programs {left:?} still attached after agent exit");
    // The maps went with the agent, so there is no counter to read: the failure must be the
    // blackhole route (not redirected), not a refused connect to a stale redirect.
    let out = node.exec("client", &["curl", "-v", "-sS", "--max-time", "3", "http://web:9080/"])?;
    assert_blackholed(&out, "client after agent exit");
    no_netfilter_rules(&node, &netfilter)?;
    Ok(())
}

#[test]
fn killed_agent_leaves_nothing_attached() -> anyhow::Result<()> {
    if !require_ebpf("killed_agent_leaves_nothing_attached") {
        return Ok(());
    }
    let mut node = Node::new("kl", 202)?;
    node.add_pod("client", 10, &[])?;
    let reg_file = node.dir.join("registry.yaml");
    std::fs::write(
        &reg_file,
        node.pod_yaml("client", &[("app", "client")], 1, true)?
            + &service_yaml("web", WEB_VIP, 80, "http", &[("app", "web")]),
    )?;
    let admin: SocketAddr = "127.0.0.1:15122".parse()?;
    let before = attached_mesh_program_ids();
    let mut child = Command::new(bin("mesh"))
        .args(["agent", "--registry"])
        .arg(&reg_file)
        .args(["--admin", &admin.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    wait_ready(admin, Duration::from_secs(20))?;
    let ours = programs_attached_by_agent(&before)?;
    // SIGKILL: no chance to clean up. BPF links die with the process's file descriptors.
    child.kill()?;
    child.wait()?;
    wait_until("kernel to release the links", Duration::from_secs(5), || {
        attached_mesh_program_ids().is_disjoint(&ours)
    })?;
    Ok(())
}
