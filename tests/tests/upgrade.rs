//! Hitless restart on the real kernel: under fixed-rate load from a pod to service VIPs — HTTP/1
//! keep-alive, HTTP/1 connection-per-request, h2c streams on one connection, gRPC-shaped unary
//! calls (h2 on both legs, trailers), requests that take 3 s to answer and one long TCP stream —
//! a second `mesh agent` with the same arguments takes the running one's listeners and eBPF maps
//! and links over; the first is then sent SIGTERM and drains. No request may fail, every long
//! request completes, the stream stays intact, the links attached afterwards are exactly the
//! ones attached before (never detached) with the second agent's own programs swapped in behind
//! them (BPF_LINK_UPDATE), and none is left once the second agent stops with no successor. Then
//! twenty handovers in a row under HTTP/1 load: still no failed request, and nothing (programs,
//! links, descriptors) grows from one agent to the next. Last, a handover between agents of two
//! map layouts (the first pretends to be of layout 2) migrates the maps' entries and loses
//! nothing either.
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use mesh_e2e::*;

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const GRPC_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 41);
const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 42);

fn load_result(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().find(|l| l.starts_with("ok="))?;
    let field =
        |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok());
    Some((field("ok")?, field("failed")?))
}

/// Spawns `n` clients in `pod`, each one request to `url` that takes a while to answer.
fn spawn_slow(node: &mut Node, pod: &str, label: &str, n: usize, url: &str) -> anyhow::Result<Vec<String>> {
    let mut labels = vec![];
    for i in 0..n {
        let l = format!("{label}-{i}");
        node.spawn(pod, &l, &["curl", "-sS", "--max-time", "15", "-w", " code=%{http_code}\n", url])?;
        labels.push(l);
    }
    Ok(labels)
}

#[test]
fn agent_handover_under_load_loses_no_request() -> anyhow::Result<()> {
    if !require_ebpf("agent_handover_under_load_loses_no_request") {
        return Ok(());
    }
    let hosts = [("web", WEB_VIP), ("grpc", GRPC_VIP), ("echo", ECHO_VIP)];
    let mut node = Node::new("up", 204)?;
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("web-a", 20, &hosts)?;
    node.add_pod("grpc-a", 21, &hosts)?;
    node.add_pod("echo-a", 22, &hosts)?;
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default().to_owned();
    let h2 = bin("e2e-h2");
    let h2 = h2.to_str().unwrap_or_default().to_owned();
    node.spawn("web-a", "web-a", &[&backend, "http", "web-a", "0.0.0.0:8080"])?;
    node.spawn("grpc-a", "grpc-a", &[&h2, "serve", "grpc-a", "0.0.0.0:8080"])?;
    node.spawn("echo-a", "echo-a", &[&backend, "banner", "echo-a", "0.0.0.0:7000"])?;
    let mut registry = service_yaml("web", WEB_VIP, 9080, "http", &[("app", "web")]);
    registry = registry.replacen("    port: 9080\n", "    port: 9080\n    targetPort: 8080\n", 1);
    // Port name `grpc`: HTTP/2 to the backend too, so GOAWAY and trailers cross both legs.
    registry += &service_yaml("grpc", GRPC_VIP, 9090, "grpc", &[("app", "grpc")]).replacen(
        "    port: 9090\n",
        "    port: 9090\n    targetPort: 8080\n",
        1,
    );
    registry += &service_yaml("echo", ECHO_VIP, 7000, "tcp-echo", &[("app", "echo")]);
    registry += &node.pod_yaml("client", &[("app", "client")], 1, true)?;
    registry += &node.pod_yaml("web-a", &[("app", "web")], 8080, true)?;
    registry += &node.pod_yaml("grpc-a", &[("app", "grpc")], 8080, true)?;
    registry += &node.pod_yaml("echo-a", &[("app", "echo")], 7000, true)?;
    let reg_file = node.dir.join("registry.yaml");
    std::fs::write(&reg_file, registry)?;
    let socket = node.dir.join("handover.sock");
    let admin: SocketAddr = "127.0.0.1:15124".parse()?;
    let agent = |log: &str| {
        let mut c = Command::new(bin("mesh"));
        c.args(["agent", "--registry"])
            .arg(&reg_file)
            .args(["--admin", &admin.to_string(), "--ingress-bind", "127.0.0.1", "--drain-timeout", "5s"])
            .arg("--handover-socket")
            .arg(&socket)
            .env("RUST_LOG", "info");
        (log.to_owned(), c)
    };

    let before = attached_mesh_program_ids();
    let (label, mut cmd) = agent("agent-1");
    node.spawn_host(&label, &mut cmd)?;
    wait_until("the first agent to be ready", Duration::from_secs(20), || {
        http_get(admin, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", node.log("agent-1")))?;
    for (pod, port) in [("web-a", 8080), ("grpc-a", 8080), ("echo-a", 7000)] {
        wait_for_port(SocketAddr::from((node.pod(pod)?.ip, port)), Duration::from_secs(10))?;
    }
    let ours = programs_attached_by_agent(&before)?;
    let links = links_of(&ours)?;

    // 100 req/s each for 6 s: one keep-alive connection, and a new connection per request;
    // 50 req/s each of h2c streams (HTTP/1 upstream) and gRPC-shaped calls (h2 upstream).
    let (rate, secs) = ("100", "6");
    node.spawn("client", "load-keepalive", &[&backend, "load", "web:9080", rate, secs, "keepalive"])?;
    node.spawn("client", "load-close", &[&backend, "load", "web:9080", rate, secs, "close"])?;
    node.spawn("client", "load-h2c", &[&h2, "load", "web:9080", "50", secs, "h2c"])?;
    node.spawn("client", "load-grpc", &[&h2, "load", "grpc:9090", "50", secs, "grpc"])?;
    wait_until("load through the first agent", Duration::from_secs(10), || {
        http_get(admin, "/metrics").is_ok_and(|m| {
            metric(&m, "istio_requests_total", &[("reporter", "source"), ("response_code", "200")]) >= 100
        })
    })?;
    // In flight through the first agent when it is told to stop: requests that take 3 s (HTTP/1
    // and h2c) and a TCP stream sending a line every 20 ms for 3.5 s; the drain deadline is 5 s.
    let mut slow = spawn_slow(&mut node, "client", "slow-h1", 3, "http://web:9080/slow/3000")?;
    node.spawn(
        "client",
        "slow-h2",
        &[
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "15",
            "-w",
            " code=%{http_code}\n",
            "http://web:9080/slow/3000",
        ],
    )?;
    slow.push("slow-h2".into());
    node.spawn("client", "stream", &[&backend, "tcp-stream", "echo:7000", "3.5", "20"])?;
    wait_until("the slow requests and the stream to reach the first agent", Duration::from_secs(5), || {
        http_get(admin, "/metrics").is_ok_and(|m| {
            metric(&m, "mesh_tcp_connections_total", &[("result", "ok")]) >= 1
                && metric(&m, "mesh_downstream_requests_active", &[("source_workload", "client")]) >= 4
        })
    })?;

    let started = Instant::now();
    let (label, mut cmd) = agent("agent-2");
    node.spawn_host(&label, &mut cmd)?;
    wait_until("the second agent to take over", Duration::from_secs(20), || {
        node.log("agent-2").contains("took over from the previous agent")
    })
    .map_err(|e| anyhow::anyhow!("{e}\nagent-2 log:\n{}", node.log("agent-2")))?;
    let took_over = started.elapsed();
    // What the kubelet does once the new pod is ready: SIGTERM the old one.
    let status = node.stop("agent-1")?;
    assert!(status.success(), "first agent exited with {status}:\n{}", node.log("agent-1"));
    let old_log = node.log("agent-1");

    // The same links stay attached, no second set, agent-2's programs behind them.
    let now = programs_replaced(&before, &ours, &links, "after the handover")?;

    // Requests sent after the handover that take 3 s too, through the second agent.
    let slow_after = spawn_slow(&mut node, "client", "slow-after", 2, "http://web:9080/slow/3000")?;
    for (load, min_ok) in [("load-keepalive", 500), ("load-close", 500), ("load-h2c", 250), ("load-grpc", 250)] {
        node.wait(load, Duration::from_secs(30))?;
        let log = node.log(load);
        let (ok, failed) = load_result(&log).ok_or_else(|| anyhow::anyhow!("{load} printed no result:\n{log}"))?;
        eprintln!("{load}: {}", log.lines().next().unwrap_or_default());
        assert_eq!(failed, 0, "{load}: {log}\nagent-1:\n{old_log}\nagent-2:\n{}", node.log("agent-2"));
        assert!(ok >= min_ok, "{load}: fewer requests than the rate asks for: {log}");
    }
    for label in slow.iter().chain(&slow_after) {
        node.wait(label, Duration::from_secs(15))?;
        let log = node.log(label);
        assert!(log.contains("backend=web-a path=/slow/3000") && log.contains("code=200"), "{label}: {log}\n{old_log}");
    }
    node.wait("stream", Duration::from_secs(10))?;
    let stream = node.log("stream");
    eprintln!("stream: {stream}");
    assert!(stream.contains(" intact after"), "the TCP stream broke: {stream}\nagent-1:\n{old_log}");
    assert!(old_log.contains("the new agent is ready: stopping accepting, draining"), "{old_log}");
    assert!(!old_log.contains("pod unenrolled"), "the old agent must leave the enrollments to the new one:\n{old_log}");
    // The second agent served traffic after the first had gone.
    let out = node.exec("client", &["curl", "-sS", "--max-time", "5", "http://web:9080/after"])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend=web-a path=/after"), "{out:?}");
    eprintln!("handover: second agent took over {took_over:?} after its start");

    let status = node.stop("agent-2")?;
    assert!(status.success(), "second agent exited with {status}:\n{}", node.log("agent-2"));
    let left: Vec<u32> = attached_mesh_program_ids().intersection(&now).copied().collect();
    assert!(left.is_empty(), "programs {left:?} still attached after the last agent's SIGTERM");
    assert!(!socket.exists(), "the last agent removes its handover socket");
    Ok(())
}

/// After a handover: exactly one set of mesh programs is attached at every moment, and within
/// 20 s (the successor swaps its own in once it runs) none of them is `previous`, behind the very
/// `links` the first agent created. Returns them.
fn programs_replaced(
    before: &std::collections::BTreeSet<u32>,
    previous: &std::collections::BTreeSet<u32>,
    links: &[u64],
    what: &str,
) -> anyhow::Result<std::collections::BTreeSet<u32>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now: std::collections::BTreeSet<u32> = attached_mesh_program_ids().difference(before).copied().collect();
        anyhow::ensure!(now.len() == 3, "{what}: one set of programs attached, found {now:?}");
        if now.is_disjoint(previous) {
            let behind = links_of(&now)?;
            anyhow::ensure!(
                behind == links,
                "{what}: programs behind links {behind:?}, expected the first agent's {links:?}"
            );
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: the predecessor's programs {previous:?} still run: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Descriptors a process holds.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn twenty_consecutive_handovers_under_load_lose_nothing_and_leak_nothing() -> anyhow::Result<()> {
    if !require_ebpf("twenty_consecutive_handovers_under_load_lose_nothing_and_leak_nothing") {
        return Ok(());
    }
    handovers_under_load("up20", 205, 15125, 20, &[], &[])
}

#[test]
fn handovers_with_the_sk_msg_bypass_lose_nothing() -> anyhow::Result<()> {
    if !require_ebpf("handovers_with_the_sk_msg_bypass_lose_nothing") {
        return Ok(());
    }
    // Every agent bypasses TCP on the pod leg: the sockhash (and the bytes queued on its
    // sockets) passes from agent to agent, each attaching its own sk_msg program to it.
    handovers_under_load("upsk", 211, 15131, 3, &[], &["--sk-msg-bypass"])
}

#[test]
fn handover_to_another_map_layout_migrates_the_maps_and_loses_nothing() -> anyhow::Result<()> {
    if !require_ebpf("handover_to_another_map_layout_migrates_the_maps_and_loses_nothing") {
        return Ok(());
    }
    // agent-0 pretends to be of layout 2 (it advertises and pins under it), so agent-1 loads
    // fresh maps, copies every entry into them, then swaps its programs in behind agent-0's links.
    handovers_under_load("uplay", 208, 15128, 1, &["--pretend-map-layout", "2"], &[])
}

/// A client pod under two HTTP/1 loads (keep-alive, connection per request) to a service VIP
/// while `handovers` agents in turn take over from the one before (the first started with
/// `first_args` too, and every one with `every`), each with the bpffs pins of a node (`--bpf-pin-dir`): no request fails,
/// each successor runs its own programs behind the first agent's links, only one set of pins
/// is left, descriptors do not grow, and the last agent's SIGTERM detaches and unpins all.
fn handovers_under_load(
    name: &str,
    subnet: u8,
    admin_port: u16,
    handovers: usize,
    first_args: &[&str],
    every: &[&str],
) -> anyhow::Result<()> {
    let hosts = [("web", WEB_VIP)];
    let mut node = Node::new(name, subnet)?;
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("web-a", 20, &hosts)?;
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default().to_owned();
    node.spawn("web-a", "web-a", &[&backend, "http", "web-a", "0.0.0.0:8080"])?;
    let mut registry = service_yaml("web", WEB_VIP, 9080, "http", &[("app", "web")]);
    registry = registry.replacen("    port: 9080\n", "    port: 9080\n    targetPort: 8080\n", 1);
    registry += &node.pod_yaml("client", &[("app", "client")], 1, true)?;
    registry += &node.pod_yaml("web-a", &[("app", "web")], 8080, true)?;
    let reg_file = node.dir.join("registry.yaml");
    std::fs::write(&reg_file, registry)?;
    let socket = node.dir.join("handover.sock");
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/mesh-e2e-{name}"));
    let _unpin = RemoveOnDrop(pins.clone());
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let spawn_agent = |node: &mut Node, label: &str, extra: &[&str]| -> anyhow::Result<()> {
        node.spawn_host(
            label,
            Command::new(bin("mesh"))
                .args(["agent", "--registry"])
                .arg(&reg_file)
                .args(["--admin", &admin.to_string(), "--ingress-bind", "127.0.0.1", "--drain-timeout", "5s"])
                .arg("--handover-socket")
                .arg(&socket)
                .arg("--bpf-pin-dir")
                .arg(&pins)
                .args(extra)
                .args(every)
                .env("RUST_LOG", "info"),
        )
    };
    let pinned_layouts = || -> Vec<String> {
        let mut l: Vec<String> = std::fs::read_dir(&pins)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        l.sort();
        l
    };

    let before = attached_mesh_program_ids();
    spawn_agent(&mut node, "agent-0", first_args)?;
    wait_ready(admin, Duration::from_secs(20)).map_err(|e| anyhow::anyhow!("{e}\n{}", node.log("agent-0")))?;
    wait_for_port(SocketAddr::from((node.pod("web-a")?.ip, 8080)), Duration::from_secs(10))?;
    let mut ours = programs_attached_by_agent(&before)?;
    let links = links_of(&ours)?;
    assert_eq!(links.len(), 3, "one link per program: {links:?}");
    let first_layouts = pinned_layouts();

    // Long enough for every handover; the load clients end on their own.
    let (rate, secs) = ("100", if handovers > 1 { "40" } else { "8" });
    node.spawn("client", "load-keepalive", &[&backend, "load", "web:9080", rate, secs, "keepalive"])?;
    node.spawn("client", "load-close", &[&backend, "load", "web:9080", rate, secs, "close"])?;
    wait_until("load through the first agent", Duration::from_secs(10), || {
        http_get(admin, "/metrics").is_ok_and(|m| {
            metric(&m, "istio_requests_total", &[("reporter", "source"), ("response_code", "200")]) >= 100
        })
    })?;

    let mut fds = vec![];
    let started = Instant::now();
    for i in 1..=handovers {
        let (old, new) = (format!("agent-{}", i - 1), format!("agent-{i}"));
        spawn_agent(&mut node, &new, &[])?;
        wait_until(&format!("{new} to take over"), Duration::from_secs(20), || {
            node.log(&new).contains("took over from the previous agent")
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{new} log:\n{}", node.log(&new)))?;
        let status = node.stop(&old)?;
        assert!(status.success(), "{old} exited with {status}:\n{}", node.log(&old));
        ours = programs_replaced(&before, &ours, &links, &format!("handover {i}"))
            .map_err(|e| anyhow::anyhow!("{e}\n{new} log:\n{}", node.log(&new)))?;
        let pid = node.pid(&new).ok_or_else(|| anyhow::anyhow!("no pid for {new}"))?;
        fds.push(fd_count(pid));
    }
    eprintln!("{handovers} handovers in {:?}; descriptors of each new agent: {fds:?}", started.elapsed());
    // The same sockets, maps and links pass from agent to agent: the count may differ by the
    // connections in flight at the moment it is read, never grow with the number of handovers.
    let (first, last) = (fds[0], fds[handovers - 1]);
    assert!(last <= first + 8, "descriptors grow across handovers: {fds:?}");
    let last_label = format!("agent-{handovers}");
    let layouts = pinned_layouts();
    assert_eq!(layouts.len(), 1, "one set of pins left: {layouts:?}");
    let how = if first_args.is_empty() {
        assert_eq!(layouts, first_layouts, "the same layout pinned throughout");
        "behind the adopted links (BPF_LINK_UPDATE)"
    } else {
        assert_ne!(layouts, first_layouts, "the predecessor's layout is unpinned: {layouts:?}");
        "of a predecessor of another map layout (BPF_LINK_UPDATE)"
    };
    wait_until(&format!("{last_label} to log that its programs run {how}"), Duration::from_secs(5), || {
        node.log(&last_label).contains(how)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", node.log(&last_label)))?;
    let last_log = node.log(&last_label);

    for load in ["load-keepalive", "load-close"] {
        node.wait(load, Duration::from_secs(60))?;
        let log = node.log(load);
        let (ok, failed) = load_result(&log).ok_or_else(|| anyhow::anyhow!("{load} printed no result:\n{log}"))?;
        eprintln!("{load}: {}", log.lines().next().unwrap_or_default());
        assert_eq!(failed, 0, "{load}: {log}\nlast agent:\n{last_log}");
        let min_ok = if handovers > 1 { 3000 } else { 600 };
        assert!(ok >= min_ok, "{load}: fewer requests than the rate asks for: {log}");
    }
    if every.contains(&"--sk-msg-bypass") {
        let m = http_get(admin, "/metrics")?;
        let (redirected, sockets) = (
            metric(&m, "mesh_kernel_sk_msg_redirected_total", &[]),
            metric(&m, "mesh_kernel_sockets_bypassed_total", &[]),
        );
        eprintln!("sk_msg: redirected={redirected} sockets_bypassed={sockets}");
        // Every connection-per-request request is a new pair of bypassed sockets.
        assert!(redirected >= 600 && sockets >= 600, "the bypass was not taken through the handovers:\n{m}");
    }
    let last = format!("agent-{handovers}");
    let status = node.stop(&last)?;
    assert!(status.success(), "{last} exited with {status}:\n{}", node.log(&last));
    let left: Vec<u32> = attached_mesh_program_ids().intersection(&ours).copied().collect();
    assert!(left.is_empty(), "programs {left:?} still attached after the last agent's SIGTERM");
    assert!(pinned_layouts().is_empty(), "pins left after the last agent's SIGTERM: {:?}", pinned_layouts());
    Ok(())
}
