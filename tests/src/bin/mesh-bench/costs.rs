//! The cells that cost something other than proxied requests: request metrics on vs off,
//! agent restart time, connection disruption across restarts, and config scale.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use mesh_e2e::*;

use crate::{
    contenders::start_mesh,
    load::{measure, run_load, LoadGen},
    Load, Opts, Sample,
};

/// The mesh's CPU per request with its request metrics (`istio_*`) off and on: one run each of
/// the same load, each against a freshly started agent.
pub(crate) struct MetricsCost {
    /// One sample per repeat, interleaved off, on, off, on...
    pub(crate) off: Vec<Sample>,
    pub(crate) on: Vec<Sample>,
}

impl MetricsCost {
    /// One line per run on stdout, off and on alternating as they ran.
    pub(crate) fn print(&self) {
        for (setting, s) in self.off.iter().zip(&self.on).flat_map(|(a, b)| [("off", a), ("on", b)]) {
            println!(
                "   {setting:>8}: {:>9.0} req/s  p50 {:>7.3} ms  cpu {}{}",
                s.rps(),
                s.p50_us / 1e3,
                s.cpu_per_1k().map(|v| format!("{v:.3} s/1k req")).unwrap_or_else(|| "n/a".into()),
                if s.clean() { String::new() } else { format!("  errors {} non-2xx {}", s.errors, s.non2xx) }
            );
        }
    }

    /// The per-repeat ratios of CPU per request, on ÷ off; None when a run has no CPU reading
    /// or any failed or non-2xx request.
    pub(crate) fn ratios(&self) -> Option<Vec<f64>> {
        self.on
            .iter()
            .zip(&self.off)
            .map(|(a, b)| match (a.cpu_per_1k(), b.cpu_per_1k()) {
                (Some(x), Some(y)) if a.clean() && b.clean() && y > 0.0 => Some(x / y),
                _ => None,
            })
            .collect()
    }
}

/// Restarts the node's agent with `--request-metrics off`, runs the c32 keep-alive load (after a
/// warm-up run), then the same with `on`, `repeats` times interleaved (a single pair carries more
/// run-to-run noise than the 3 % it checks). The agent left running has them on, as by default.
pub(crate) fn metrics_cost(node: &mut Node, dir: &Path, o: &Opts, lua: &Path, warm: u32) -> Result<MetricsCost> {
    let load = Load::Wrk { conns: 32, jason: false, close: false };
    let mut run = |setting: &str| -> Result<Sample> {
        node.stop("agent")?;
        let c = start_mesh(node, dir, &["--request-metrics", setting])?;
        let g = LoadGen::client(lua, o.rate, dir);
        let _ = run_load(node, &g, &c, &load, warm)?;
        measure(node, &g, &c, &load, o.duration)
    };
    let (mut off, mut on) = (vec![], vec![]);
    for _ in 0..o.repeats.max(1) {
        off.push(run("off")?);
        on.push(run("on")?);
    }
    Ok(MetricsCost { off, on })
}

/// Agent start to ready on a node with many pods and routing objects: what a restart or an
/// upgrade without handover costs before the node's traffic is meshed again.
pub(crate) struct RestartCost {
    pub(crate) pods: usize,
    pub(crate) services: usize,
    pub(crate) virtual_services: usize,
    pub(crate) secs: Vec<f64>,
}

pub(crate) const RESTART_PODS: usize = 100;
pub(crate) const RESTART_SERVICES: usize = 1000;

pub(crate) fn restart_cost(runs: usize) -> Result<RestartCost> {
    const PREFIX_RC: &str = "brc";
    const ADMIN_RC: &str = "127.0.0.1:15321";
    println!(
        "== restart cost: agent exec → /ready, {RESTART_PODS} pods, {RESTART_SERVICES} services and VirtualServices =="
    );
    let mut node = Node::new(PREFIX_RC, 239)?;
    let mut registry = String::new();
    for i in 0..RESTART_PODS {
        let name = format!("p{i}");
        let host = u8::try_from(10 + i).context("pod address")?;
        node.add_pod(&name, host, &[])?;
        registry += &node.pod_yaml(&name, &[("app", &format!("a{}", i % 10))], 8080, true)?;
    }
    let mut routing = String::new();
    for i in 0..RESTART_SERVICES {
        let vip = Ipv4Addr::new(10, 96, 239 - u8::try_from(i / 250).context("vip")?, u8::try_from(i % 250 + 1)?);
        registry += &service_yaml(&format!("s{i}"), vip, 80, "http", &[("app", &format!("a{}", i % 10))]);
        let _ = write!(
            routing,
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: s{i}}}\nspec:\n  hosts: [s{i}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: s{i}}}\n    timeout: 2s\n  - route:\n    - destination: {{host: s{i}}}\n"
        );
    }
    let reg = node.dir.join("registry.yaml");
    fs::write(&reg, registry)?;
    let cfg = node.dir.join("routing");
    fs::create_dir_all(&cfg)?;
    fs::write(cfg.join("vs.yaml"), routing)?;
    let admin: SocketAddr = ADMIN_RC.parse()?;
    let mut secs = vec![];
    for r in 0..runs {
        let t = Instant::now();
        node.spawn_host(
            "agent",
            Command::new(bin("mesh"))
                .args(["agent", "--registry"])
                .arg(&reg)
                .arg("--config")
                .arg(&cfg)
                .args(["--admin", ADMIN_RC, "--ingress-bind", "127.0.0.1"])
                .env("MESH_EBPF_OBJECT", ebpf_object()),
        )?;
        // Polled every 25 ms: the figure is up to that much late, never early.
        wait_ready(admin, Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", node.log("agent")))?;
        let took = t.elapsed().as_secs_f64();
        let enrolled = http_get(admin, "/metrics")
            .map(|m| metric(&m, "mesh_pod_enrollments_total", &[("result", "enrolled")]))
            .unwrap_or(0);
        if enrolled < RESTART_PODS as u64 {
            bail!("ready with {enrolled} of {RESTART_PODS} pods enrolled\nagent log:\n{}", node.log("agent"));
        }
        println!("   #{}: ready after {:.3} s ({enrolled} pods enrolled)", r + 1, took);
        secs.push(took);
        node.stop("agent")?;
    }
    Ok(RestartCost { pods: RESTART_PODS, services: RESTART_SERVICES, virtual_services: RESTART_SERVICES, secs })
}

/// Connection disruption across agent restarts under fixed-rate load (what Cilium's upgrade
/// test measures): failed requests per handover (a second agent takes the first one's sockets
/// and kernel state, then the first drains) next to failed requests per plain restart (SIGTERM,
/// then a new agent: the gap the handover exists to close).
pub(crate) struct Disruption {
    pub(crate) rate: u32,
    pub(crate) restarts: usize,
    /// (how, requests ok, requests failed) per way of restarting.
    pub(crate) rows: Vec<(&'static str, u64, u64)>,
}

pub(crate) const DISRUPTION_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 238, 1);

pub(crate) fn connection_disruption(restarts: usize) -> Result<Disruption> {
    const ADMIN_CD: &str = "127.0.0.1:15322";
    const RATE: u32 = 100;
    println!(
        "== connection disruption: {restarts} handovers, then {restarts} plain restarts, under 2 × {RATE} req/s =="
    );
    let mut node = Node::new("bcd", 238)?;
    let hosts = [("web", DISRUPTION_VIP)];
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("web", 20, &hosts)?;
    let backend = bin("e2e-backend");
    let backend = backend.to_str().unwrap_or_default().to_owned();
    node.spawn("web", "web", &[&backend, "http", "web", "0.0.0.0:8080"])?;
    let mut registry = service_yaml("web", DISRUPTION_VIP, 9080, "http", &[("app", "web")]).replacen(
        "    port: 9080\n",
        "    port: 9080\n    targetPort: 8080\n",
        1,
    );
    registry += &node.pod_yaml("client", &[("app", "client")], 1, true)?;
    registry += &node.pod_yaml("web", &[("app", "web")], 8080, true)?;
    let reg = node.dir.join("registry.yaml");
    fs::write(&reg, registry)?;
    let socket = node.dir.join("handover.sock");
    let admin: SocketAddr = ADMIN_CD.parse()?;
    let spawn = |node: &mut Node, label: &str| -> Result<()> {
        node.spawn_host(
            label,
            Command::new(bin("mesh"))
                .args(["agent", "--registry"])
                .arg(&reg)
                .args(["--admin", ADMIN_CD, "--ingress-bind", "127.0.0.1", "--drain-timeout", "5s"])
                .arg("--handover-socket")
                .arg(&socket)
                .env("MESH_EBPF_OBJECT", ebpf_object()),
        )
    };
    wait_for_port(SocketAddr::from((node.pod("web")?.ip, 8080)), Duration::from_secs(10))?;
    let mut n = 0usize;
    spawn(&mut node, "agent-0")?;
    wait_ready(admin, Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("{e}\n{}", node.log("agent-0")))?;
    let mut rows = vec![];
    for (how, handover) in
        [("handover (second agent, then SIGTERM)", true), ("plain restart (SIGTERM, then start)", false)]
    {
        // Long enough for every restart; the load clients end on their own.
        let secs = (restarts * 2 + 2).to_string();
        let rate = RATE.to_string();
        let (keep, close) = (format!("keep-{handover}"), format!("close-{handover}"));
        node.spawn("client", &keep, &[&backend, "load", "web:9080", &rate, &secs, "keepalive"])?;
        node.spawn("client", &close, &[&backend, "load", "web:9080", &rate, &secs, "close"])?;
        // Spacing, not synchronisation: the load is in its steady state before the first restart.
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..restarts {
            let (old, new) = (format!("agent-{n}"), format!("agent-{}", n + 1));
            n += 1;
            if handover {
                spawn(&mut node, &new)?;
                wait_until(&format!("{new} to take over"), Duration::from_secs(20), || {
                    node.log(&new).contains("took over from the previous agent")
                })
                .map_err(|e| anyhow::anyhow!("{e}\n{}", node.log(&new)))?;
                node.stop(&old)?;
            } else {
                node.stop(&old)?;
                spawn(&mut node, &new)?;
                wait_ready(admin, Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("{e}\n{}", node.log(&new)))?;
            }
            // The load runs on between restarts, so each one starts from a steady state.
            std::thread::sleep(Duration::from_millis(1500));
        }
        let (ok, failed) = load_tally(&mut node, &[&keep, &close])?;
        println!("   {how}: {ok} ok, {failed} failed over {restarts} restarts");
        rows.push((how, ok, failed));
    }
    node.stop(&format!("agent-{n}"))?;
    Ok(Disruption { rate: RATE, restarts, rows })
}

/// Waits for the e2e-backend load clients `labels` to end and sums their `ok=` and `failed=`
/// counts.
fn load_tally(node: &mut Node, labels: &[&str]) -> Result<(u64, u64)> {
    let (mut ok, mut failed) = (0, 0);
    for load in labels {
        node.wait(load, Duration::from_secs(60))?;
        let log = node.log(load);
        let line = log.lines().find(|l| l.starts_with("ok=")).with_context(|| format!("{load}: {log}"))?;
        let field = |name: &str| {
            line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        ok += field("ok").unwrap_or(0);
        failed += field("failed").unwrap_or(0);
    }
    Ok((ok, failed))
}

/// `mesh validate` of one file of 10,000 VirtualServices (parse, Istio's validation, compile):
/// what a reload of a ConfigMap that size costs, wall time and peak RSS of the process.
pub(crate) struct ConfigScale {
    pub(crate) objects: usize,
    pub(crate) bytes: usize,
    pub(crate) secs: Vec<f64>,
    pub(crate) max_rss_kb: Vec<u64>,
}

pub(crate) const SCALE_OBJECTS: usize = 10_000;

pub(crate) fn config_scale(out: &Path, runs: usize) -> Result<ConfigScale> {
    let mut yaml = String::new();
    for i in 0..SCALE_OBJECTS {
        let _ = write!(
            yaml,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{i}}}\nspec:\n  hosts: [svc{i}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: svc{i}}}\n  - match:\n    - uri: {{prefix: /api}}\n    route:\n    - destination: {{host: svc{i}}}\n      weight: 50\n    - destination: {{host: svc{i}}}\n      weight: 50\n---\n"
        );
    }
    let file = out.join("vs10k.yaml");
    fs::write(&file, &yaml)?;
    let mut scale = ConfigScale { objects: SCALE_OBJECTS, bytes: yaml.len(), secs: vec![], max_rss_kb: vec![] };
    println!("== config scale: mesh validate of {SCALE_OBJECTS} VirtualServices ({} KB) ==", yaml.len() / 1024);
    for r in 0..runs {
        let t = Instant::now();
        let child = Command::new(bin("mesh"))
            .arg("validate")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("running mesh validate")?;
        let mut status = 0;
        // SAFETY: rusage is plain integers and timevals, for which all-zero bytes are valid.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // SAFETY: wait4 on our own child (not reaped elsewhere: `child` is never waited on), with
        // pointers to two live locals that the kernel fills.
        if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
            bail!("wait4 on mesh validate: {}", std::io::Error::last_os_error());
        }
        let secs = t.elapsed().as_secs_f64();
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("mesh validate of the generated 10k VirtualServices failed (status {status})");
        }
        let kb = u64::try_from(ru.ru_maxrss).unwrap_or(0);
        println!("   #{}: {secs:.3} s, max RSS {:.1} MB", r + 1, kb as f64 / 1024.0);
        scale.secs.push(secs);
        scale.max_rss_kb.push(kb);
    }
    let _ = fs::remove_file(&file);
    Ok(scale)
}
