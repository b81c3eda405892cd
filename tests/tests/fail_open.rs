//! Fail-open when the node proxy is gone, on the real kernel. The test gives the service VIP a
//! path of its own: the client pod routes the VIP to a "direct" pod that holds the VIP address
//! (as kube-proxy's path would serve it on a cluster); only the mesh sends the request to `web-a`,
//! so the answering backend tells the two paths apart.
//!
//! 1. An agent (default fail mode) is killed with SIGKILL: the kernel detaches its programs with
//!    the last link descriptor, and the same request is answered directly.
//! 2. An agent started with `--fail-mode closed` is killed with SIGKILL while this test holds its
//!    links (what a pinned link, or a successor that took the links over, does): the programs stay
//!    attached with no listener behind them. The connect is refused (EPERM) and counted; with the
//!    fail mode set to open in the same map, it is answered directly and counted. Dropping the
//!    links then leaves nothing attached.
//! 3. With `--bpf-pin-dir` the kernel state is pinned: an agent killed with SIGKILL leaves its
//!    programs attached with nothing held by the test — `--fail-mode closed` keeps refusing — and
//!    the restarted agent re-adopts the same links and maps, swaps its own programs in behind the
//!    links (BPF_LINK_UPDATE: new program ids, same link and map ids), prunes the enrollment of a pod that left meanwhile and redirects again; its SIGTERM removes the pins
//!    and detaches everything.
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::{FromRawFd, OwnedFd},
    process::Command,
    time::{Duration, Instant},
};

use mesh_e2e::*;

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);

/// A descriptor of BPF link `id`, as a pin in bpffs would hold it: the link (and its program)
/// stays attached while this is open, whatever happens to the agent.
fn hold_link(id: u64) -> anyhow::Result<OwnedFd> {
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    // union bpf_attr for *_GET_FD_BY_ID: { u32 id; u32 next_id; u32 open_flags; }.
    let attr: [u32; 4] = [u32::try_from(id)?, 0, 0, 0];
    // SAFETY: bpf(2) reads `size` bytes of an initialised attr.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_GET_FD_BY_ID, attr.as_ptr(), 16 as libc::c_uint) };
    anyhow::ensure!(fd >= 0, "BPF_LINK_GET_FD_BY_ID {id}: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Per-CPU counter `idx` of a `PerCpuArray<u64>`, summed over CPUs.
fn percpu_counter(map: u64, idx: u32) -> anyhow::Result<u64> {
    let k = idx.to_le_bytes();
    let v = bpftool_json(&format!("map lookup id {map} key {} {} {} {}", k[0], k[1], k[2], k[3]))?;
    let mut sum = 0u64;
    for cpu in v["values"].as_array().into_iter().flatten() {
        let bytes: Vec<u8> = cpu["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect();
        let bytes: [u8; 8] = bytes.try_into().map_err(|b| anyhow::anyhow!("not a u64 value: {b:?}"))?;
        sum += u64::from_le_bytes(bytes);
    }
    Ok(sum)
}

fn curl(node: &Node, path: &str) -> anyhow::Result<std::process::Output> {
    node.exec("client", &["curl", "-sS", "--max-time", "5", &format!("http://web:9080{path}")])
}

fn answered_by(out: &std::process::Output, backend: &str, path: &str, what: &str) {
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains(&format!("backend={backend} path={path}")),
        "{what}: expected backend {backend}, got {out:?}"
    );
}

/// SIGKILL, then reaps it; returns when the kill was sent.
fn kill9(node: &mut Node, label: &str) -> anyhow::Result<Instant> {
    let pid = node.pid(label).ok_or_else(|| anyhow::anyhow!("no process {label}"))?;
    let killed = Instant::now();
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let status = node.wait(label, Duration::from_secs(10))?;
    anyhow::ensure!(!status.success(), "{label} exited by itself: {status}");
    Ok(killed)
}

#[test]
fn killed_agent_fails_open_or_closed_as_configured() -> anyhow::Result<()> {
    if !require_ebpf("killed_agent_fails_open_or_closed_as_configured") {
        return Ok(());
    }
    let hosts = [("web", WEB_VIP)];
    let mut node = Node::new("fo", 205)?;
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("web-a", 20, &hosts)?;
    node.add_pod("direct", 30, &hosts)?;
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default().to_owned();
    node.spawn("web-a", "web-a", &[&backend, "http", "web-a", "0.0.0.0:8080"])?;
    node.spawn("direct", "direct", &[&backend, "http", "direct", "0.0.0.0:9080"])?;
    // The VIP's own path, inside this test's namespaces only: the direct pod owns the address and
    // the client routes it there (more specific than the pod's blackhole for the VIP range).
    let (client_ns, direct) = (node.pod("client")?.netns.clone(), node.pod("direct")?);
    must(&format!(
        "ip -n {} addr add {WEB_VIP}/32 dev eth0 && ip -n {client_ns} route add {WEB_VIP}/32 via {} dev eth0",
        direct.netns, direct.ip
    ))?;
    let mut registry = service_yaml("web", WEB_VIP, 9080, "http", &[("app", "web")]);
    registry = registry.replacen("    port: 9080\n", "    port: 9080\n    targetPort: 8080\n", 1);
    registry += &node.pod_yaml("client", &[("app", "client")], 1, true)?;
    registry += &node.pod_yaml("web-a", &[("app", "web")], 8080, true)?;
    let reg_file = node.dir.join("registry.yaml");
    std::fs::write(&reg_file, registry)?;
    let admin: SocketAddr = "127.0.0.1:15125".parse()?;
    let socket = node.dir.join("handover.sock");
    let agent = |extra: &[&str]| {
        let mut c = Command::new(bin("mesh"));
        c.args(["agent", "--registry"])
            .arg(&reg_file)
            .args(["--admin", &admin.to_string(), "--ingress-bind", "127.0.0.1", "--drain-timeout", "1s"])
            .arg("--handover-socket")
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "info");
        c
    };
    wait_for_port(SocketAddr::from((node.pod("web-a")?.ip, 8080)), Duration::from_secs(10))?;
    wait_for_port(SocketAddr::from((node.pod("direct")?.ip, 9080)), Duration::from_secs(10))?;
    let out = curl(&node, "/before")?;
    answered_by(&out, "direct", "/before", "no agent yet: the VIP's own path");

    // 1. Nothing holds the links but the agent: SIGKILL detaches the programs.
    let before = attached_mesh_program_ids();
    node.spawn_host("agent-1", &mut agent(&[]))?;
    let ready = |node: &Node, label: &str| {
        wait_until(&format!("{label} to be ready"), Duration::from_secs(20), || {
            http_get(admin, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{label} log:\n{}", node.log(label)))
    };
    ready(&node, "agent-1")?;
    let ours = programs_attached_by_agent(&before)?;
    answered_by(&curl(&node, "/mesh-1")?, "web-a", "/mesh-1", "agent-1 running: routed by the mesh");
    // The counters are exported (nothing failed open while the agent listens in every pod).
    let metrics = http_get(admin, "/metrics")?;
    for name in ["mesh_kernel_connects_fail_open_total", "mesh_kernel_connects_fail_closed_total"] {
        assert!(metrics.lines().any(|l| l == format!("{name} 0")), "{name} 0 not in /metrics:\n{metrics}");
    }
    let killed = kill9(&mut node, "agent-1")?;
    let reaped = killed.elapsed();
    wait_until("agent-1's programs to be detached", Duration::from_secs(5), || {
        attached_mesh_program_ids().is_disjoint(&ours)
    })?;
    let detached = killed.elapsed();
    answered_by(&curl(&node, "/after-kill-1")?, "direct", "/after-kill-1", "agent-1 killed: programs detached");
    eprintln!(
        "kill -9: agent reaped {reaped:?}, programs seen detached {detached:?}, first direct answer {:?} after the signal",
        killed.elapsed()
    );
    // agent-1's handover socket is left behind; connecting to it is refused, so agent-2 starts cold.

    // 2. The links outlive the agent: the programs check for the listener themselves.
    node.spawn_host("agent-2", &mut agent(&["--fail-mode", "closed"]))?;
    ready(&node, "agent-2")?;
    let ours = programs_attached_by_agent(&before)?;
    answered_by(&curl(&node, "/mesh-2")?, "web-a", "/mesh-2", "agent-2 running: routed by the mesh");
    let held: Vec<OwnedFd> = links_of(&ours)?.into_iter().map(hold_link).collect::<anyhow::Result<_>>()?;
    assert_eq!(held.len(), 3, "connect4, connect6 and sock_ops links of {ours:?}");
    let events = map_of(&ours, "MESH_EVENT_STATS")?;
    let config = map_of(&ours, "MESH_CONFIG")?;
    // mesh_common::events::{FAIL_OPEN, FAIL_CLOSED}.
    let (fail_open, fail_closed) = (4, 5);
    assert_eq!(percpu_counter(events, fail_closed)?, 0);
    kill9(&mut node, "agent-2")?;
    assert!(!attached_mesh_program_ids().is_disjoint(&ours), "held links must stay attached");

    // -v: curl names the connect's errno only in its verbose log. EPERM is connect4's refusal;
    // a redirect to the dead listener would be ECONNREFUSED.
    // The same through connect6: a dual-stack socket to the IPv4-mapped VIP.
    let mapped = format!("http://[::ffff:{WEB_VIP}]:9080");
    for (url, what) in [("http://web:9080/closed".to_owned(), "connect4"), (format!("{mapped}/closed"), "connect6")] {
        let out = node.exec("client", &["curl", "-sS", "-v", "-g", "--max-time", "5", &url])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "fail closed ({what}): curl {}: {err}", out.status);
        assert!(err.contains("Operation not permitted"), "fail closed: not EPERM from {what}:\n{err}");
    }
    assert_eq!(percpu_counter(events, fail_closed)?, 2, "fail-closed connects counted");

    // What an agent with the default --fail-mode open writes.
    must(&format!("bpftool map update id {config} key 0 0 0 0 value 0 0 0 0"))?;
    let open_before = percpu_counter(events, fail_open)?;
    answered_by(&curl(&node, "/open")?, "direct", "/open", "fail open with the programs attached");
    let out = node.exec("client", &["curl", "-sS", "-g", "--max-time", "5", &format!("{mapped}/open6")])?;
    answered_by(&out, "direct", "/open6", "fail open through connect6");
    assert_eq!(percpu_counter(events, fail_open)?, open_before + 2, "fail-open connects counted");

    drop(held);
    wait_until("agent-2's programs to be detached", Duration::from_secs(5), || {
        attached_mesh_program_ids().is_disjoint(&ours)
    })?;
    Ok(())
}

#[test]
fn pinned_state_outlives_a_killed_agent_and_is_readopted() -> anyhow::Result<()> {
    if !require_ebpf("pinned_state_outlives_a_killed_agent_and_is_readopted") {
        return Ok(());
    }
    let hosts = [("web", WEB_VIP)];
    let mut node = Node::new("fp", 207)?;
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("web-a", 20, &hosts)?;
    node.add_pod("leaver", 40, &hosts)?;
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default().to_owned();
    node.spawn("web-a", "web-a", &[&backend, "http", "web-a", "0.0.0.0:8080"])?;
    let mut registry = service_yaml("web", WEB_VIP, 9080, "http", &[("app", "web")]);
    registry = registry.replacen("    port: 9080\n", "    port: 9080\n    targetPort: 8080\n", 1);
    registry += &node.pod_yaml("client", &[("app", "client")], 1, true)?;
    registry += &node.pod_yaml("web-a", &[("app", "web")], 8080, true)?;
    let leaver = node.pod_yaml("leaver", &[("app", "leaver")], 1, true)?;
    let reg_file = node.dir.join("registry.yaml");
    std::fs::write(&reg_file, format!("{registry}{leaver}"))?;
    let pins = std::path::PathBuf::from("/sys/fs/bpf/mesh-e2e-fp");
    let _ = std::fs::remove_dir_all(&pins);
    // Removes the pins however the test ends: with no pin and no agent, the links detach.
    let _unpin = RemoveOnDrop(pins.clone());
    let admin: SocketAddr = "127.0.0.1:15127".parse()?;
    let socket = node.dir.join("handover.sock");
    let agent = || {
        let mut c = Command::new(bin("mesh"));
        c.args(["agent", "--registry"])
            .arg(&reg_file)
            .args(["--admin", &admin.to_string(), "--ingress-bind", "127.0.0.1", "--drain-timeout", "1s"])
            .arg("--handover-socket")
            .arg(&socket)
            .arg("--bpf-pin-dir")
            .arg(&pins)
            .args(["--fail-mode", "closed"])
            .env("RUST_LOG", "info");
        c
    };
    wait_for_port(SocketAddr::from((node.pod("web-a")?.ip, 8080)), Duration::from_secs(10))?;
    let before = attached_mesh_program_ids();
    node.spawn_host("agent-1", &mut agent())?;
    wait_ready(admin, Duration::from_secs(20)).map_err(|e| anyhow::anyhow!("{e}\n{}", node.log("agent-1")))?;
    let ours = programs_attached_by_agent(&before)?;
    answered_by(&curl(&node, "/mesh-1")?, "web-a", "/mesh-1", "agent-1 running: routed by the mesh");
    let layout = std::fs::read_dir(&pins)?.flatten().map(|e| e.path()).find(|p| p.is_dir());
    let layout = layout.ok_or_else(|| anyhow::anyhow!("nothing pinned in {}", pins.display()))?;
    let pinned: std::collections::BTreeSet<String> =
        std::fs::read_dir(&layout)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(pinned.iter().filter(|p| p.starts_with("link-")).count(), 3, "{pinned:?}");
    assert_eq!(pinned.iter().filter(|p| p.starts_with("map-")).count(), 12, "{pinned:?}");
    let links = links_of(&ours)?;
    assert_eq!(links.len(), 3, "one link per program: {links:?}");
    let enrolled_map = map_of(&ours, "MESH_ENROLLED")?;
    let enrolled = || -> anyhow::Result<usize> {
        Ok(bpftool_json(&format!("map dump id {enrolled_map}"))?.as_array().map_or(0, Vec::len))
    };
    assert_eq!(enrolled()?, 3, "client, web-a and leaver enrolled");

    kill9(&mut node, "agent-1")?;
    // Nothing but the pins holds the links now.
    assert!(ours.is_subset(&attached_mesh_program_ids()), "pinned programs must stay attached after kill -9");
    let out = node.exec("client", &["curl", "-sS", "-v", "--max-time", "5", "http://web:9080/closed"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "fail closed with no agent running: {err}");

    // The leaver pod goes while no agent runs.
    std::fs::write(&reg_file, &registry)?;
    let restarted = Instant::now();
    node.spawn_host("agent-2", &mut agent())?;
    wait_ready(admin, Duration::from_secs(20)).map_err(|e| anyhow::anyhow!("{e}\n{}", node.log("agent-2")))?;
    answered_by(&curl(&node, "/mesh-2")?, "web-a", "/mesh-2", "agent-2: routed by the mesh again");
    let again = restarted.elapsed();
    let log = node.log("agent-2");
    assert!(log.contains("re-adopted the eBPF links and maps pinned by a previous agent"), "{log}");
    // The same links and maps, with agent-2's own programs swapped in behind the links (once it
    // runs: the pinned programs serve meanwhile).
    let mut now = std::collections::BTreeSet::new();
    wait_until("agent-2's programs to replace agent-1's", Duration::from_secs(20), || {
        now = attached_mesh_program_ids().difference(&before).copied().collect();
        assert_eq!(now.len(), 3, "one set of programs attached at every moment: {now:?}");
        now.is_disjoint(&ours)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", node.log("agent-2")))?;
    assert_eq!(links_of(&now)?, links, "the pinned links, not new ones");
    assert_eq!(map_of(&now, "MESH_ENROLLED")?, enrolled_map, "agent-2's programs use the pinned map");
    assert_eq!(enrolled()?, 2, "the leaver's enrollment pruned:\n{log}");
    eprintln!("restart over pinned state: redirected again {again:?} after the new agent's exec");
    assert!(again < Duration::from_secs(1), "redirected again only {again:?} after the restart");

    let status = node.stop("agent-2")?;
    assert!(status.success(), "agent-2 exited with {status}:\n{}", node.log("agent-2"));
    assert!(attached_mesh_program_ids().is_disjoint(&now), "a SIGTERM with no successor detaches everything");
    assert!(!layout.exists(), "pins left behind in {}", layout.display());
    Ok(())
}
