//! The sk_msg/sockhash bypass on the real kernel (`mesh agent --sk-msg-bypass`): the leg from a
//! pod to the proxy's listener in its netns carries data socket to socket, skipping TCP. A splice
//! that loses, duplicates or reorders a chunk is invisible to TCP, so 4 connections push 256 MiB
//! each through a server-first TCP service to a byte-exact echo and check every byte of the 1 GiB
//! that comes back, while a second pod runs an HTTP load through the same proxy: no byte may be
//! wrong, no request may fail, and the kernel counters must show the bypass was really taken.
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mesh_e2e::*;

const STREAM_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 70);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 71);
const ADMIN: &str = "127.0.0.1:15130";
/// Per connection, each way: 4 × 256 MiB = 1 GiB sent and 1 GiB echoed.
const STREAM_BYTES: &str = "268435456";
const STREAM_CONNS: u64 = 4;
/// The load runs in rounds of this many seconds until the stream is done: its length is not
/// known in advance, and one process per round keeps every round's summary.
const LOAD_ROUND_S: &str = "3";
/// Bounds the whole stream; stream-check gives up by itself after 20 s without progress.
const STREAM_LIMIT: Duration = Duration::from_secs(600);

/// A value from the `key=value` fields of the first line of `log` starting with `prefix`.
fn field(log: &str, prefix: &str, key: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn metrics() -> anyhow::Result<String> {
    http_get(ADMIN.parse()?, "/metrics")
}

/// A node with pods client and loader (enrolled), stream-a (`echo-bytes` behind the `stream`
/// service) and web-a (`http` behind `web`), and the agent started with the bypass; returns it
/// and the e2e-backend binary's path.
fn start_node() -> anyhow::Result<(Node, String)> {
    let hosts = [("stream", STREAM_VIP), ("web", WEB_VIP)];
    let mut node = Node::new("sk", 210)?;
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("loader", 11, &hosts)?;
    node.add_pod("stream-a", 20, &hosts)?;
    node.add_pod("web-a", 21, &hosts)?;
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default().to_owned();
    node.spawn("stream-a", "stream-a", &[&backend, "echo-bytes", "stream-a", "0.0.0.0:7000"])?;
    node.spawn("web-a", "web-a", &[&backend, "http", "web-a", "0.0.0.0:8080"])?;

    let mut registry = service_yaml("stream", STREAM_VIP, 7000, "tcp-stream", &[("app", "stream")]);
    registry += &service_yaml("web", WEB_VIP, 8080, "http", &[("app", "web")]);
    registry += &node.pod_yaml("client", &[("app", "client")], 1, true)?;
    registry += &node.pod_yaml("loader", &[("app", "loader")], 1, true)?;
    registry += &node.pod_yaml("stream-a", &[("app", "stream")], 7000, true)?;
    registry += &node.pod_yaml("web-a", &[("app", "web")], 8080, true)?;
    let reg_file = node.dir.join("registry.yaml");
    std::fs::write(&reg_file, registry)?;
    node.spawn_host(
        "agent",
        Command::new(bin("mesh"))
            .args(["agent", "--registry"])
            .arg(&reg_file)
            .args(["--admin", ADMIN, "--ingress-bind", "127.0.0.1", "--sk-msg-bypass"])
            .env("RUST_LOG", "info,mesh::ebpf=debug"),
    )?;
    wait_ready(ADMIN.parse()?, Duration::from_secs(20))
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", node.log("agent")))?;
    wait_for_port(SocketAddr::from((node.pod("stream-a")?.ip, 7000)), Duration::from_secs(10))?;
    wait_for_port(SocketAddr::from((node.pod("web-a")?.ip, 8080)), Duration::from_secs(10))?;
    Ok((node, backend))
}

/// What the load rounds added up to: requests ok and failed, rounds run, and the first errors.
#[derive(Default)]
struct Load {
    ok: u64,
    failed: u64,
    rounds: u64,
    errors: Vec<String>,
}

/// HTTP load rounds (200 req/s, keep-alive) from the loader pod to `web` until `done` is set.
fn load_until(node: &Node, backend: &str, done: &AtomicBool) -> anyhow::Result<Load> {
    let mut load = Load::default();
    let started = Instant::now();
    // Checked after each round, so the load starts before the stream and outlasts it.
    while !done.load(Ordering::Acquire) && started.elapsed() < STREAM_LIMIT {
        let out = node.exec("loader", &[backend, "load", "web:8080", "200", LOAD_ROUND_S, "keepalive"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let get = |k| field(&text, "ok=", k);
        let (Some(ok), Some(failed), true) = (get("ok"), get("failed"), out.status.success()) else {
            anyhow::bail!(
                "load round {} failed ({}): {text}{}",
                load.rounds,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        load.ok += ok as u64;
        load.failed += failed as u64;
        load.rounds += 1;
        load.errors.extend(text.lines().filter(|l| l.starts_with("error:")).take(10).map(str::to_owned));
    }
    Ok(load)
}

#[test]
fn sk_msg_bypass_keeps_every_byte_in_order_under_load() -> anyhow::Result<()> {
    if !require_ebpf("sk_msg_bypass_keeps_every_byte_in_order_under_load") {
        return Ok(());
    }
    let (mut node, backend) = start_node()?;
    // A new pattern each run; printed with any failure so the run can be repeated.
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let done = AtomicBool::new(false);
    let (stream, load) = std::thread::scope(|s| {
        let load = s.spawn(|| load_until(&node, &backend, &done));
        let conns = STREAM_CONNS.to_string();
        let target = format!("{STREAM_VIP}:7000");
        let stream = node.exec("client", &[&backend, "stream-check", &target, STREAM_BYTES, &conns, &seed.to_string()]);
        done.store(true, Ordering::Release);
        (stream, load.join())
    });
    let load = load.map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let stream = stream?;
    let stream_out = String::from_utf8_lossy(&stream.stdout).into_owned();
    assert!(
        stream.status.success() && stream_out.starts_with("stream-check ok"),
        "stream-check (seed {seed}) failed: {stream_out}{}\nmetrics:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&stream.stderr),
        metrics().unwrap_or_default(),
        node.log("agent")
    );
    println!("{}", stream_out.trim_end());
    println!("load: {} rounds, ok={} failed={}", load.rounds, load.ok, load.failed);
    assert!(load.ok > 0, "the load ran no request");
    assert_eq!(load.failed, 0, "the load had failures while the stream ran:\n{}", load.errors.join("\n"));

    // The stream went through the proxy as L4 TCP, each connection to its end.
    wait_until("the stream's connections to be counted", Duration::from_secs(10), || {
        metrics().is_ok_and(|m| {
            metric(&m, "mesh_tcp_connections_total", &[("destination_service", "stream"), ("result", "ok")])
                == STREAM_CONNS
        })
    })
    .map_err(|e| anyhow::anyhow!("{e}\nmetrics:\n{}", metrics().unwrap_or_default()))?;
    // The bytes took the bypass on both legs: spliced sendmsg calls, the four sockets of every
    // stream connection in the sockhash (the client's and the in-pod listener's, the proxy's
    // upstream socket and the echo server's), the echo server's among the upstream peers.
    let m = metrics()?;
    let redirected = metric(&m, "mesh_kernel_sk_msg_redirected_total", &[]);
    let bypassed = metric(&m, "mesh_kernel_sockets_bypassed_total", &[]);
    let upstream = metric(&m, "mesh_kernel_upstream_sockets_bypassed_total", &[]);
    println!(
        "sk_msg: redirected={redirected} tcp={} sockets_bypassed={bypassed} upstream={upstream}",
        metric(&m, "mesh_kernel_sk_msg_tcp_total", &[])
    );
    assert!(redirected > 0, "no sendmsg was redirected by sk_msg:\n{m}");
    assert!(bypassed >= 4 * STREAM_CONNS, "fewer than {} sockets bypassed:\n{m}", 4 * STREAM_CONNS);
    assert!(upstream >= STREAM_CONNS, "the proxy ↔ pod leg was not bypassed:\n{m}");

    let status = node.stop("agent")?;
    assert!(status.success(), "agent exited with {status}:\n{}", node.log("agent"));
    Ok(())
}
