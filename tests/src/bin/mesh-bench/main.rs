//! `cargo xtask bench`: the mesh against what users would pick instead, in one run, on this
//! machine, with the same backends, the same routing rules and the same load.
//!
//! Usage: `mesh-bench --help` (flags in `opts.rs`); `mesh-bench --idle-only [--quick]
//! [--idle-connections N]` runs just the idle-connection cell. Each cell has its module; this
//! file holds the shared types and runs the cells in order.
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
use std::{collections::BTreeMap, fs, net::Ipv4Addr, path::Path, time::Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mesh_e2e::*;

mod cells;
mod contenders;
mod costs;
mod export;
mod idle;
mod load;
mod markdown;
mod opts;
mod peer_targets;
mod profile;
mod redirect;
mod report;
mod routing_check;
mod skmsg;
mod tools;

#[cfg(test)]
mod report_tests;

use cells::{load_cells, run_cells, Results};
use contenders::{setup_pods, start_backends, start_envoy, start_haproxy, start_mesh, start_nginx};
use costs::{config_scale, connection_disruption, metrics_cost, restart_cost, MetricsCost};
use idle::{idle_client, idle_connections, IdleConnections};
use load::{proc_tree, proc_tree_status, LoadGen, WRK_LUA};
use opts::{Args, Opts};
use profile::profile_mesh;
use redirect::{redirect_comparison, RedirectResult};
use report::Report;
use routing_check::{check_routing, RoutingCheck};
use skmsg::{sk_msg_cost, SkMsgPair};
use tools::Tools;

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
        return idle_only(&o);
    }
    run(&o)
}

/// `--idle-only`: the node, its backends and the mesh, then just the idle-connection cell.
fn idle_only(o: &Opts) -> Result<()> {
    let mut node = Node::new(PREFIX, SUBNET)?;
    let run_dir = node.dir.clone();
    setup_pods(&mut node)?;
    start_backends(&mut node)?;
    start_mesh(&mut node, &run_dir, &[])?;
    let idle = idle_connections(&mut node, &run_dir, o.idle_connections)?;
    println!("{}", idle.target().line());
    Ok(())
}

/// The whole bench: the cells with a node of their own first, on a quiet machine, then the
/// contenders' node; writes the report, the chart and the JSON into `o.out`.
fn run(o: &Opts) -> Result<()> {
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
    let m = contenders_node(o, &tools)?;
    let report = Report {
        idle: &m.idle,
        opts: o,
        metrics: &m.metrics,
        sk_msg: &m.sk_msg,
        loadavg,
        tools: &tools,
        cells: &m.cells,
        contenders: &m.contenders,
        results: &m.results,
        redirect: m.redirect.as_ref(),
        peaks: &m.peaks,
        routing: &m.routing,
        profile: m.profile.as_deref(),
        config_scale: &config_scale,
        restart: &restart,
        disruption: &disruption,
        elapsed: started.elapsed(),
    };
    write_report(&report, o, started)?;
    drop(m);
    Ok(())
}

/// What the contenders' node measured, owned until the report borrows it.
struct NodeResults {
    contenders: Vec<Contender>,
    cells: Vec<Cell>,
    results: Results,
    routing: RoutingCheck,
    redirect: Option<RedirectResult>,
    peaks: BTreeMap<&'static str, u64>,
    profile: Option<String>,
    metrics: MetricsCost,
    sk_msg: Vec<SkMsgPair>,
    idle: IdleConnections,
    /// Kept until the report is written, so its teardown is not in the report's elapsed time.
    /// Dropping it removes the pods, and the ipt pod's iptables rule with its netns.
    _node: Node,
}

/// The node the contenders share: every contender started, routing checked, the load cells,
/// the redirect comparison, peak memory and the profile; last the cells that restart the agent
/// (request metrics, idle connections).
fn contenders_node(o: &Opts, tools: &Tools) -> Result<NodeResults> {
    let mut node = Node::new(PREFIX, SUBNET)?;
    let run_dir = node.dir.clone();
    setup_pods(&mut node)?;
    start_backends(&mut node)?;
    let mut contenders = start_contenders(&mut node, &run_dir, tools, o)?;
    let names: Vec<&'static str> = contenders.iter().map(|c| c.name).collect();
    let lua = run_dir.join("report.lua");
    fs::write(&lua, WRK_LUA)?;

    reset_peak_rss(&node, &contenders);
    // Correctness first: every proxy applies the same rules (jason → v2 only; others v1/v3).
    let routing = check_routing(&node, &contenders)?;
    // Idle RSS now, for every contender alike: up, routes compiled, pods enrolled, requests served.
    for c in &mut contenders {
        if let Some(pid) = c.proc_label.and_then(|l| node.pid(l)) {
            c.idle_rss_kb = proc_tree_status(pid, "VmRSS:");
        }
    }

    let cells = load_cells(o, &names);
    let results = run_cells(&node, &contenders, &cells, o, &LoadGen::client(&lua, o.rate, &run_dir))?;

    // Redirect mechanism alone: a new connection per request through the same node proxy,
    // redirected by connect4 (client pod) or by iptables REDIRECT (ipt pod, not enrolled cgroup).
    if o.redirect {
        println!("== redirect mechanism: new connection per request ==");
    }
    let mesh = contenders.iter().find(|c| c.name == "mesh").context("no mesh")?;
    let redirect = if o.redirect { Some(redirect_comparison(&mut node, mesh, o, &lua, &run_dir)?) } else { None };
    let peaks = peak_rss(&node, &contenders)?;
    let profile = if o.profile {
        profile_mesh(&node, mesh, &lua, &run_dir).map_err(|e| eprintln!("mesh-bench: no profile: {e:#}")).ok()
    } else {
        None
    };

    // Last, as it restarts the agent: what the request metrics cost.
    println!("== request metrics: --request-metrics off vs on, HTTP/1.1 keep-alive, 32 connections ==");
    let metrics = metrics_cost(&mut node, &run_dir, o, &lua, if o.quick { 1 } else { 2 })?;
    metrics.print();
    println!("== sk_msg bypass: --sk-msg-bypass off vs on, HTTP/1.1 keep-alive, 32 and 256 connections ==");
    let sk_msg = sk_msg_cost(&mut node, &run_dir, o, &lua, if o.quick { 1 } else { 2 })?;
    // After the other cells (it restarts the agent): what idle keep-alive connections cost.
    println!("== {} idle keep-alive HTTP/1.1 connections ==", o.idle_connections);
    let idle = idle_connections(&mut node, &run_dir, o.idle_connections)?;
    Ok(NodeResults {
        contenders,
        cells,
        results,
        routing,
        redirect,
        peaks,
        profile,
        metrics,
        sk_msg,
        idle,
        _node: node,
    })
}

/// `direct` (unless `--contenders` leaves it out), the mesh (always), and each peer proxy that
/// is installed and wanted.
fn start_contenders(node: &mut Node, run_dir: &Path, tools: &Tools, o: &Opts) -> Result<Vec<Contender>> {
    let wanted = |name: &str| o.only.as_ref().is_none_or(|l| l.iter().any(|w| w == name));
    let mut contenders = vec![];
    if wanted("direct") {
        contenders.push(Contender {
            name: "direct",
            proc_label: None,
            url: format!("http://10.244.{SUBNET}.{}:{BACKEND_PORT}/", BACKENDS[0].2),
            url_h2: None,
            idle_rss_kb: 0,
        });
    }
    contenders.push(start_mesh(node, run_dir, &[])?);
    if let Some(envoy) = tools.envoy.as_ref().filter(|_| wanted("envoy")) {
        contenders.push(start_envoy(node, run_dir, envoy)?);
    }
    if tools.nginx && wanted("nginx") {
        contenders.push(start_nginx(node, run_dir)?);
    }
    if tools.haproxy && wanted("haproxy") {
        contenders.push(start_haproxy(node, run_dir)?);
    }
    Ok(contenders)
}

/// Peak RSS "under load": the kernel's high-water mark is reset once every proxy is up, so
/// start-up transients (the agent's eBPF load parses the kernel BTF) are not counted.
fn reset_peak_rss(node: &Node, contenders: &[Contender]) {
    for c in contenders {
        if let Some(pid) = c.proc_label.and_then(|l| node.pid(l)) {
            for p in proc_tree(pid) {
                let _ = fs::write(format!("/proc/{p}/clear_refs"), "5");
            }
        }
    }
}

/// Each proxy's peak RSS (VmHWM over its process tree) since [`reset_peak_rss`].
fn peak_rss(node: &Node, contenders: &[Contender]) -> Result<BTreeMap<&'static str, u64>> {
    let mut peaks = BTreeMap::new();
    for c in contenders {
        if let Some(label) = c.proc_label {
            let pid = node.pid(label).context("proxy pid")?;
            peaks.insert(c.name, proc_tree_status(pid, "VmHWM:"));
        }
    }
    Ok(peaks)
}

/// Writes report.md, rps.svg, results.json (and profile.txt) and prints the targets.
fn write_report(report: &Report, o: &Opts, started: Instant) -> Result<()> {
    let md = report.markdown();
    fs::write(o.out.join("report.md"), &md)?;
    fs::write(o.out.join("rps.svg"), report.svg_rps())?;
    fs::write(o.out.join("results.json"), report.json())?;
    if let Some(p) = report.profile {
        fs::write(o.out.join("profile.txt"), p)?;
    }
    println!("\n{}", report.targets_text());
    println!(
        "report: {}  chart: {}  ({:.0} s)",
        o.out.join("report.md").display(),
        o.out.join("rps.svg").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
