//! The report rendered from synthetic results: every section, the targets' verdicts, and the
//! JSON and SVG agreeing with them. No node, no load: these run with the unit tests.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    cells::Results,
    costs::{ConfigScale, Disruption, MetricsCost, RestartCost},
    idle::IdleConnections,
    redirect::RedirectResult,
    report::Report,
    routing_check::RoutingCheck,
    tools::Tools,
    Cell, Contender, Load, Opts, Sample,
};

const NAMES: [&str; 5] = ["direct", "mesh", "envoy", "nginx", "haproxy"];
const KEYS: [&str; 6] = ["c1", "c32", "c256", "jason-c32", "rate", "h2-c32"];

/// A clean sample scaled by `k`: `10,000 k` requests in 5 s, latencies and CPU proportional.
fn sample(k: f64) -> Sample {
    Sample {
        requests: (10_000.0 * k) as u64,
        secs: 5.0,
        errors: 0,
        non2xx: 0,
        p50_us: 100.0 * k,
        p99_us: 300.0 * k,
        p999_us: 900.0 * k,
        cpu_s: Some(0.5 * k),
        sys_s: Some(0.2 * k),
    }
}

/// Everything a [`Report`] borrows, owned.
struct Fixture {
    opts: Opts,
    tools: Tools,
    contenders: Vec<Contender>,
    cells: Vec<Cell>,
    results: Results,
    redirect: RedirectResult,
    peaks: BTreeMap<&'static str, u64>,
    routing: RoutingCheck,
    config_scale: ConfigScale,
    restart: RestartCost,
    disruption: Disruption,
    idle: IdleConnections,
    metrics: MetricsCost,
}

impl Fixture {
    /// A full run of all five contenders in which the mesh's throughput is `mesh_k` times the
    /// base scale of the others (each contender a bit faster than the one before it otherwise).
    fn new(mesh_k: f64) -> Fixture {
        let opts = Opts {
            quick: false,
            out: "/nonexistent".into(),
            duration: 5,
            repeats: 3,
            rate: 4000,
            profile: true,
            only: None,
            redirect: true,
            idle_connections: 100,
            idle_only: false,
        };
        let tools = Tools { envoy: None, nginx: true, haproxy: true, versions: vec![("kernel".into(), "6".into())] };
        let contenders = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| Contender {
                name: n,
                proc_label: (i > 0).then_some(*n),
                url: String::new(),
                url_h2: None,
                idle_rss_kb: 1000 * i as u64,
            })
            .collect();
        let cells = KEYS
            .iter()
            .map(|k| Cell {
                key: k,
                title: format!("title {k}"),
                load: Load::Rate { clients: 1 },
                contenders: NAMES.to_vec(),
            })
            .collect();
        let mut results = Results::new();
        for (ki, key) in KEYS.iter().enumerate() {
            for (ni, name) in NAMES.iter().enumerate() {
                let base = if *name == "mesh" { mesh_k } else { 1.0 + ni as f64 * 0.7 };
                let v = (0..3).map(|r| sample(base + ki as f64 * 0.3 + r as f64 * 0.1)).collect();
                results.insert((*key, *name), v);
            }
        }
        Fixture {
            opts,
            tools,
            contenders,
            cells,
            results,
            redirect: RedirectResult {
                ebpf: vec![sample(1.0), sample(1.2)],
                iptables: vec![sample(0.9), sample(1.1)],
                conns: 32,
                note: "note".into(),
            },
            peaks: [("mesh", 30_000), ("envoy", 70_000), ("nginx", 5000)].into_iter().collect(),
            routing: RoutingCheck { rows: vec![("mesh".into(), "anonymous: x".into())] },
            config_scale: ConfigScale { objects: 10, bytes: 4096, secs: vec![0.5, 0.7], max_rss_kb: vec![1000, 2000] },
            restart: RestartCost { pods: 1, services: 2, virtual_services: 2, secs: vec![0.1, 0.2] },
            disruption: Disruption { rate: 100, restarts: 5, rows: vec![("handover", 100, 0), ("plain", 90, 10)] },
            idle: IdleConnections { n: 100, rss_idle_kb: 1000, rss_loaded_kb: 1800 },
            metrics: MetricsCost { off: vec![sample(1.0), sample(1.1)], on: vec![sample(1.02), sample(1.05)] },
        }
    }

    fn report(&self) -> Report<'_> {
        Report {
            idle: &self.idle,
            opts: &self.opts,
            metrics: &self.metrics,
            sk_msg: &[],
            loadavg: "1 2 3".into(),
            tools: &self.tools,
            cells: &self.cells,
            contenders: &self.contenders,
            results: &self.results,
            redirect: Some(&self.redirect),
            peaks: &self.peaks,
            routing: &self.routing,
            profile: Some("perf lines"),
            config_scale: &self.config_scale,
            restart: &self.restart,
            disruption: &self.disruption,
            elapsed: Duration::from_secs(3),
        }
    }
}

/// The verdict of the target whose description starts with `what`.
fn verdict(r: &Report, what: &str) -> Option<bool> {
    r.targets().into_iter().find(|t| t.what.starts_with(what)).unwrap_or_else(|| panic!("no target {what:?}")).met
}

#[test]
fn markdown_has_every_section_in_order_and_a_table_per_cell() {
    let f = Fixture::new(1.0);
    let md = f.report().markdown();
    let mut at = 0;
    for heading in [
        "# mesh benchmark\n",
        "## Machine and setup",
        "## Targets",
        "## Throughput and latency",
        "### title c1",
        "### title h2-c32",
        "## Where the proxy CPU goes (c256)",
        "## Memory",
        "### Idle keep-alive connections",
        "## Config scale",
        "## Restart cost",
        "## Connection disruption",
        "## Redirect mechanism alone",
        "## Same-node socket path",
        "## Profile of the mesh proxy",
    ] {
        let found = md[at..].find(heading).unwrap_or_else(|| panic!("{heading:?} missing or out of order"));
        at += found + heading.len();
    }
    assert_eq!(md.matches("| contender | req/s |").count(), KEYS.len());
    assert_eq!(md.matches("| target | result | numbers |").count(), 1);
    // One row per target in the table.
    let targets = f.report().targets().len();
    assert_eq!(md.matches("| **met** |").count() + md.matches("| **not met** |").count(), targets);
}

#[test]
fn targets_follow_the_numbers() {
    // The mesh 6× faster than anyone: both throughput targets met; at the others' scale, not.
    let fast = Fixture::new(6.0 * 3.8);
    assert_eq!(verdict(&fast.report(), "mesh req/s ≥ 1.2× nginx"), Some(true));
    assert_eq!(verdict(&fast.report(), "mesh req/s ≥ 5× envoy"), Some(true));
    let slow = Fixture::new(1.0);
    assert_eq!(verdict(&slow.report(), "mesh req/s ≥ 1.2× nginx"), Some(false));
    // A failed request makes a throughput target n/a rather than a verdict.
    let mut dirty = Fixture::new(6.0 * 3.8);
    dirty.results.get_mut(&("c32", "nginx")).expect("c32 nginx")[1].errors = 1;
    assert_eq!(verdict(&dirty.report(), "mesh req/s ≥ 1.2× nginx"), None);
    // 800 KB over 100 connections is exactly the 8 KB target; one more KB is over it.
    let mut idle = Fixture::new(1.0);
    assert_eq!(verdict(&idle.report(), "mesh RSS per idle keep-alive"), Some(true));
    idle.idle.rss_loaded_kb += 1;
    assert_eq!(verdict(&idle.report(), "mesh RSS per idle keep-alive"), Some(false));
    assert_eq!(verdict(&slow.report(), "0 failed requests across agent handovers"), Some(true));
    assert_eq!(verdict(&slow.report(), "eBPF redirect connection rate"), Some(true));
    assert_eq!(verdict(&slow.report(), "mesh peak RSS under load ≤ ⅓"), Some(false));
}

#[test]
fn peer_targets_follow_the_numbers() {
    // Every contender's samples scale with its index: haproxy (4) and nginx (3) are slower and
    // costlier per request than the mesh (1) at the base scale.
    let f = Fixture::new(1.0);
    assert_eq!(verdict(&f.report(), "mesh req/s ≥ 1.2× haproxy"), Some(false));
    let mut f = Fixture::new(1.0);
    for key in ["c32", "c256", "h2-c32"] {
        for s in f.results.get_mut(&(key, "haproxy")).expect("haproxy cell") {
            s.cpu_s = Some(1.0);
            s.sys_s = Some(0.9);
        }
    }
    // haproxy 0.1 s user over its requests; the mesh 0.3 s over fewer: over haproxy's.
    assert_eq!(verdict(&f.report(), "mesh user-space CPU per request ≤ haproxy"), Some(false));
    for key in ["c32", "c256", "h2-c32"] {
        for s in f.results.get_mut(&(key, "mesh")).expect("mesh cell") {
            s.sys_s = s.cpu_s;
        }
    }
    assert_eq!(verdict(&f.report(), "mesh user-space CPU per request ≤ haproxy"), Some(true));
    // One failed request makes it n/a.
    f.results.get_mut(&("c256", "haproxy")).expect("c256")[0].errors = 1;
    assert_eq!(verdict(&f.report(), "mesh user-space CPU per request ≤ haproxy"), None);
    let mut f = Fixture::new(1.0);
    assert_eq!(verdict(&f.report(), "mesh p99.9 ≤ nginx"), Some(true));
    f.results.get_mut(&("c256", "mesh")).expect("c256")[1].p999_us = 1e9;
    f.results.get_mut(&("c256", "mesh")).expect("c256")[2].p999_us = 1e9;
    assert_eq!(verdict(&f.report(), "mesh p99.9 ≤ nginx"), Some(false));
    assert_eq!(verdict(&f.report(), "mesh p99 at one connection ≤ nginx"), Some(true));
    f.peaks.insert("mesh", f.peaks["nginx"]);
    assert_eq!(verdict(&f.report(), "mesh peak RSS under load ≤ nginx"), Some(true));
    f.peaks.insert("mesh", f.peaks["nginx"] + 1);
    assert_eq!(verdict(&f.report(), "mesh peak RSS under load ≤ nginx"), Some(false));
}

#[test]
fn json_and_chart_carry_every_cell_and_target() {
    let f = Fixture::new(1.0);
    let r = f.report();
    let json: serde_json::Value = serde_json::from_str(&r.json()).expect("valid JSON");
    assert_eq!(json["targets"].as_array().map(Vec::len), Some(r.targets().len()));
    for key in KEYS {
        assert_eq!(json["cells"][key]["mesh"].as_array().map(Vec::len), Some(3), "{key}");
    }
    let svg = r.svg_rps();
    // A bar per cell and contender, with its tooltip, and a legend entry per contender.
    assert_eq!(svg.matches("<title>").count(), KEYS.len() * NAMES.len());
    assert_eq!(svg.matches("width=\"12\" height=\"12\"").count(), NAMES.len());
    assert!(svg.ends_with("</svg>\n"));
}
