//! The idle-connection cell: what idle keep-alive connections cost the agent in RSS, and the
//! client that holds them open (run inside the client pod).

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use mesh_e2e::*;

use crate::{contenders::start_mesh, load::proc_tree_status, report::Target, SVC_PORT, VIP};

/// What idle keep-alive connections cost the agent: its RSS before and with `n` of them open.
pub(crate) struct IdleConnections {
    pub(crate) n: usize,
    pub(crate) rss_idle_kb: u64,
    pub(crate) rss_loaded_kb: u64,
}

/// Issue 13's target for one idle keep-alive connection (downstream and whatever upstream state it keeps).
pub(crate) const IDLE_TARGET_KB: f64 = 8.0;
/// How long after the last response RSS is read: past the upstream pool's 1.5 s idle timeout, so
/// the upstream connections the responses came over are closed as they would be on a quiet node.
pub(crate) const IDLE_SETTLE: Duration = Duration::from_secs(3);

impl IdleConnections {
    pub(crate) fn kb_per_connection(&self) -> f64 {
        self.rss_loaded_kb.saturating_sub(self.rss_idle_kb) as f64 / self.n.max(1) as f64
    }

    pub(crate) fn target(&self) -> Target {
        let kb = self.kb_per_connection();
        Target {
            what: format!("mesh RSS per idle keep-alive HTTP/1.1 connection ≤ {IDLE_TARGET_KB} KB"),
            met: Some(kb <= IDLE_TARGET_KB),
            numbers: format!(
                "{kb:.1} KB ({} connections: {:.1} → {:.1} MB)",
                self.n,
                self.rss_idle_kb as f64 / 1024.0,
                self.rss_loaded_kb as f64 / 1024.0
            ),
        }
    }
}

/// The idle-connection cell: a fresh agent (the load cells' heap would hide what connections
/// cost), its RSS after one request, then with `n` keep-alive connections from the client pod,
/// each served one request and left open.
pub(crate) fn idle_connections(node: &mut Node, dir: &Path, n: usize) -> Result<IdleConnections> {
    node.stop("agent")?;
    // Room for all of them under the client pod's connection cap.
    let cap = n.saturating_add(64).to_string();
    start_mesh(node, dir, &["--source-max-connections", &cap])?;
    let pid = node.pid("agent").context("agent pid")?;
    let me = std::env::current_exe()?;
    let me = me.to_str().context("mesh-bench path")?;
    let target = format!("{VIP}:{SVC_PORT}");
    // One request first, so what the first request builds once (route caches, metric series,
    // the upstream client) is in the baseline, not charged to the connections.
    let out = node.exec("client", &[me, "--idle-client", "1", &target, "--exit"])?;
    if !out.status.success() {
        bail!("first request through the mesh failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(IDLE_SETTLE);
    let rss_idle_kb = proc_tree_status(pid, "VmRSS:");
    node.spawn("client", "idle-clients", &[me, "--idle-client", &n.to_string(), &target])?;
    let opened = wait_until(&format!("{n} idle connections served"), Duration::from_secs(120), || {
        let log = node.log("idle-clients");
        log.contains("ready") || log.contains("failed")
    });
    let log = node.log("idle-clients");
    if let Err(e) = opened.and_then(|()| if log.contains("ready") { Ok(()) } else { bail!("{log}") }) {
        let _ = node.stop("idle-clients");
        bail!("idle connections: {e:#}\nagent log:\n{}", node.log("agent"));
    }
    std::thread::sleep(IDLE_SETTLE);
    let rss_loaded_kb = proc_tree_status(pid, "VmRSS:");
    // To look at the agent with its connections open (gdb, /proc/PID/smaps): hold them this long.
    if let Some(secs) = std::env::var("MESH_BENCH_IDLE_HOLD").ok().and_then(|s| s.parse().ok()) {
        println!("   holding {n} idle connections for {secs} s (agent pid {pid})");
        std::thread::sleep(Duration::from_secs(secs));
    }
    node.stop("idle-clients")?;
    let r = IdleConnections { n, rss_idle_kb, rss_loaded_kb };
    println!("   {}", r.target().numbers);
    Ok(r)
}

/// The client side of the idle-connection cell, run in the client pod: `n` connections to
/// `addr`, one `GET /` on each (its response read whole), then all held open until killed;
/// prints `ready N` once every response is in (or `failed: ...`). With `--exit`, exits instead.
pub(crate) fn idle_client(n: usize, addr: SocketAddr) -> Result<()> {
    use std::io::{Read, Write};
    let once = std::env::args().any(|a| a == "--exit");
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let served = (|| -> Result<std::net::TcpStream> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")?;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then the body by Content-Length (the e2e backend sends it).
            let head_end = loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    bail!("closed before a response");
                }
                got.extend_from_slice(&buf[..k]);
                if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("{}", head.lines().next().unwrap_or(""));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            while got.len() < head_end + len {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    bail!("closed in the body");
                }
                got.extend_from_slice(&buf[..k]);
            }
            Ok(s)
        })();
        match served {
            Ok(s) => open.push(s),
            Err(e) => {
                println!("failed: connection {} of {n}: {e:#}", i + 1);
                bail!("connection {} of {n}: {e:#}", i + 1);
            }
        }
    }
    println!("ready {n}");
    std::io::stdout().flush()?;
    if once {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
