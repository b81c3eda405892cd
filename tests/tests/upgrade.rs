//! Hitless restart on the real kernel: under fixed-rate HTTP/1 load from a pod to a service VIP
//! (one keep-alive client, one connection-per-request client), a second `mesh agent` with the
//! same arguments takes the running one's listeners and eBPF maps and links over; the first is
//! then sent SIGTERM and drains. No request may fail, the programs attached afterwards are
//! exactly the ones attached before (the same links, never detached), and none is left once
//! the second agent stops with no successor. Then twenty handovers in a row under the same
//! load: still no failed request, and nothing (programs, descriptors) grows from one agent to
//! the next.
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use mesh_e2e::*;

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);

fn load_result(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().find(|l| l.starts_with("ok="))?;
    let field =
        |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok());
    Some((field("ok")?, field("failed")?))
}

#[test]
fn agent_handover_under_load_loses_no_request() -> anyhow::Result<()> {
    if !require_ebpf("agent_handover_under_load_loses_no_request") {
        return Ok(());
    }
    let hosts = [("web", WEB_VIP)];
    let mut node = Node::new("up", 204)?;
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
    wait_for_port(SocketAddr::from((node.pod("web-a")?.ip, 8080)), Duration::from_secs(10))?;
    let ours = programs_attached_by_agent(&before)?;

    // 100 req/s each for 6 s: one keep-alive connection, and a new connection per request.
    let (rate, secs) = ("100", "6");
    node.spawn("client", "load-keepalive", &[&backend, "load", "web:9080", rate, secs, "keepalive"])?;
    node.spawn("client", "load-close", &[&backend, "load", "web:9080", rate, secs, "close"])?;
    wait_until("load through the first agent", Duration::from_secs(10), || {
        http_get(admin, "/metrics").is_ok_and(|m| {
            metric(&m, "istio_requests_total", &[("reporter", "source"), ("response_code", "200")]) >= 100
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

    // The same links stay attached: no detach, no second set.
    let now: std::collections::BTreeSet<u32> = attached_mesh_program_ids().difference(&before).copied().collect();
    assert_eq!(now, ours, "programs attached after the handover");

    for load in ["load-keepalive", "load-close"] {
        node.wait(load, Duration::from_secs(30))?;
        let log = node.log(load);
        let (ok, failed) = load_result(&log).ok_or_else(|| anyhow::anyhow!("{load} printed no result:\n{log}"))?;
        eprintln!("{load}: {}", log.lines().next().unwrap_or_default());
        assert_eq!(failed, 0, "{load}: {log}\nagent-1:\n{old_log}\nagent-2:\n{}", node.log("agent-2"));
        assert!(ok >= 500, "{load}: fewer requests than the rate asks for: {log}");
    }
    assert!(old_log.contains("the new agent is ready: stopping accepting, draining"), "{old_log}");
    assert!(!old_log.contains("pod unenrolled"), "the old agent must leave the enrollments to the new one:\n{old_log}");
    // The second agent served traffic after the first had gone.
    let out = node.exec("client", &["curl", "-sS", "--max-time", "5", "http://web:9080/after"])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend=web-a path=/after"), "{out:?}");
    eprintln!("handover: second agent took over {took_over:?} after its start");

    let status = node.stop("agent-2")?;
    assert!(status.success(), "second agent exited with {status}:\n{}", node.log("agent-2"));
    let left: Vec<u32> = attached_mesh_program_ids().intersection(&ours).copied().collect();
    assert!(left.is_empty(), "programs {left:?} still attached after the last agent's SIGTERM");
    assert!(!socket.exists(), "the last agent removes its handover socket");
    Ok(())
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
    const HANDOVERS: usize = 20;
    let hosts = [("web", WEB_VIP)];
    let mut node = Node::new("up20", 205)?;
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
    let admin: SocketAddr = "127.0.0.1:15125".parse()?;
    let spawn_agent = |node: &mut Node, label: &str| -> anyhow::Result<()> {
        node.spawn_host(
            label,
            Command::new(bin("mesh"))
                .args(["agent", "--registry"])
                .arg(&reg_file)
                .args(["--admin", &admin.to_string(), "--ingress-bind", "127.0.0.1", "--drain-timeout", "5s"])
                .arg("--handover-socket")
                .arg(&socket)
                .env("RUST_LOG", "info"),
        )
    };

    let before = attached_mesh_program_ids();
    spawn_agent(&mut node, "agent-0")?;
    wait_ready(admin, Duration::from_secs(20)).map_err(|e| anyhow::anyhow!("{e}\n{}", node.log("agent-0")))?;
    wait_for_port(SocketAddr::from((node.pod("web-a")?.ip, 8080)), Duration::from_secs(10))?;
    let ours = programs_attached_by_agent(&before)?;

    // Long enough for every handover; the load clients end on their own.
    let (rate, secs) = ("100", "40");
    node.spawn("client", "load-keepalive", &[&backend, "load", "web:9080", rate, secs, "keepalive"])?;
    node.spawn("client", "load-close", &[&backend, "load", "web:9080", rate, secs, "close"])?;
    wait_until("load through the first agent", Duration::from_secs(10), || {
        http_get(admin, "/metrics").is_ok_and(|m| {
            metric(&m, "istio_requests_total", &[("reporter", "source"), ("response_code", "200")]) >= 100
        })
    })?;

    let mut fds = vec![];
    let started = Instant::now();
    for i in 1..=HANDOVERS {
        let (old, new) = (format!("agent-{}", i - 1), format!("agent-{i}"));
        spawn_agent(&mut node, &new)?;
        wait_until(&format!("{new} to take over"), Duration::from_secs(20), || {
            node.log(&new).contains("took over from the previous agent")
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{new} log:\n{}", node.log(&new)))?;
        let status = node.stop(&old)?;
        assert!(status.success(), "{old} exited with {status}:\n{}", node.log(&old));
        let now: std::collections::BTreeSet<u32> = attached_mesh_program_ids().difference(&before).copied().collect();
        assert_eq!(now, ours, "programs attached after handover {i}");
        let pid = node.pid(&new).ok_or_else(|| anyhow::anyhow!("no pid for {new}"))?;
        fds.push(fd_count(pid));
    }
    eprintln!("{HANDOVERS} handovers in {:?}; descriptors of each new agent: {fds:?}", started.elapsed());
    // The same sockets, maps and links pass from agent to agent: the count may differ by the
    // connections in flight at the moment it is read, never grow with the number of handovers.
    let (first, last) = (fds[0], fds[HANDOVERS - 1]);
    assert!(last <= first + 8, "descriptors grow across handovers: {fds:?}");

    for load in ["load-keepalive", "load-close"] {
        node.wait(load, Duration::from_secs(60))?;
        let log = node.log(load);
        let (ok, failed) = load_result(&log).ok_or_else(|| anyhow::anyhow!("{load} printed no result:\n{log}"))?;
        eprintln!("{load}: {}", log.lines().next().unwrap_or_default());
        assert_eq!(failed, 0, "{load}: {log}");
        assert!(ok >= 3000, "{load}: fewer requests than the rate asks for: {log}");
    }
    let last = format!("agent-{HANDOVERS}");
    let status = node.stop(&last)?;
    assert!(status.success(), "{last} exited with {status}:\n{}", node.log(&last));
    let left: Vec<u32> = attached_mesh_program_ids().intersection(&ours).copied().collect();
    assert!(left.is_empty(), "programs {left:?} still attached after the last agent's SIGTERM");
    Ok(())
}
