//! The report's data, the statistics over repeats, and the targets each run is judged by.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use crate::{
    costs::{ConfigScale, Disruption, MetricsCost, RestartCost},
    idle::IdleConnections,
    redirect::RedirectResult,
    routing_check::RoutingCheck,
    tools::Tools,
    Cell, Contender, Opts, Sample,
};

/// Everything one run measured, borrowed for rendering (markdown, SVG chart, JSON).
pub(crate) struct Report<'a> {
    pub(crate) idle: &'a IdleConnections,
    pub(crate) opts: &'a Opts,
    pub(crate) metrics: &'a MetricsCost,
    pub(crate) sk_msg: &'a [crate::skmsg::SkMsgPair],
    pub(crate) loadavg: String,
    pub(crate) tools: &'a Tools,
    pub(crate) cells: &'a [Cell],
    pub(crate) contenders: &'a [Contender],
    pub(crate) results: &'a BTreeMap<(&'static str, &'static str), Vec<Sample>>,
    pub(crate) redirect: Option<&'a RedirectResult>,
    pub(crate) peaks: &'a BTreeMap<&'static str, u64>,
    pub(crate) routing: &'a RoutingCheck,
    pub(crate) profile: Option<&'a str>,
    pub(crate) config_scale: &'a ConfigScale,
    pub(crate) restart: &'a RestartCost,
    pub(crate) disruption: &'a Disruption,
    pub(crate) elapsed: Duration,
}

pub(crate) fn median(v: &[f64]) -> f64 {
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

pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), lo, hi)
}

pub(crate) fn fmt_rps(v: &[f64]) -> String {
    let (m, lo, hi) = spread(v);
    format!("{m:.0} ({lo:.0}–{hi:.0})")
}

pub(crate) fn fmt_ms(v: &[f64]) -> String {
    let (m, lo, hi) = spread(v);
    format!("{:.3} ({:.3}–{:.3})", m / 1e3, lo / 1e3, hi / 1e3)
}

pub(crate) fn fmt_ratio(v: &[f64]) -> String {
    let (m, lo, hi) = spread(v);
    format!("{m:.2}× ({lo:.2}–{hi:.2})")
}

pub(crate) struct Target {
    pub(crate) what: String,
    pub(crate) met: Option<bool>,
    pub(crate) numbers: String,
}

impl Target {
    pub(crate) fn line(&self) -> String {
        let v = match self.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "n/a",
        };
        format!("  [{v:>7}] {}: {}", self.what, self.numbers)
    }
}

impl Report<'_> {
    pub(crate) fn samples(&self, cell: &str, who: &str) -> Option<&Vec<Sample>> {
        self.results.iter().find(|((c, w), _)| *c == cell && *w == who).map(|(_, v)| v)
    }

    pub(crate) fn series(&self, cell: &str, who: &str, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.samples(cell, who).map(|v| v.iter().map(f).collect()).unwrap_or_default()
    }

    /// Per-repeat ratios a/b of `f` (repeats are interleaved, so each pair ran back to back).
    pub(crate) fn ratios(&self, cell: &str, a: &str, b: &str, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        let (x, y) = (self.series(cell, a, &f), self.series(cell, b, &f));
        x.iter().zip(&y).map(|(x, y)| x / y).collect()
    }

    pub(crate) fn has(&self, who: &str) -> bool {
        self.contenders.iter().any(|c| c.name == who)
    }

    /// What the run is judged by, in the report's order; a target whose inputs are missing or
    /// invalid (a peer not installed, failed requests) is n/a rather than met or not.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let mut t = vec![];
        self.throughput_targets(&mut t);
        self.latency_targets(&mut t);
        self.cost_targets(&mut t);
        self.memory_targets(&mut t);
        self.peer_targets(&mut t);
        self.metrics_target(&mut t);
        self.sk_msg_targets(&mut t);
        self.redirect_target(&mut t);
        t
    }

    /// Requests per second against nginx and Envoy in the saturating cells.
    fn throughput_targets(&self, t: &mut Vec<Target>) {
        let sat_cells: Vec<&str> = ["c32", "c256"].into_iter().filter(|c| self.samples(c, "mesh").is_some()).collect();
        for (peer, factor) in [("nginx", 1.2), ("haproxy", 1.2), ("envoy", 5.0)] {
            let what = format!("mesh req/s ≥ {factor}× {peer}'s at one worker ({})", sat_cells.join(", "));
            let cells = match self.clean_cells(&sat_cells, peer) {
                Ok(c) => c,
                Err(numbers) => {
                    t.push(Target { what, met: None, numbers });
                    continue;
                }
            };
            let mut met = true;
            let mut nums = vec![];
            for c in &cells {
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
    }

    /// Added median latency against nginx, tail latency at a fixed rate against Envoy.
    fn latency_targets(&self, t: &mut Vec<Target>) {
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
    }

    /// Config scale, restart time and handover disruption.
    fn cost_targets(&self, t: &mut Vec<Target>) {
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
    }

    /// Idle and peak RSS, and RSS per idle connection.
    fn memory_targets(&self, t: &mut Vec<Target>) {
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
    }

    /// The CPU cost of the request metrics.
    fn metrics_target(&self, t: &mut Vec<Target>) {
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
    }

    /// eBPF connect4 against iptables REDIRECT, when the comparison ran.
    fn redirect_target(&self, t: &mut Vec<Target>) {
        let Some(redirect) = self.redirect else { return };
        let (e, i): (Vec<f64>, Vec<f64>) =
            (redirect.ebpf.iter().map(Sample::rps).collect(), redirect.iptables.iter().map(Sample::rps).collect());
        let r: Vec<f64> = e.iter().zip(&i).map(|(a, b)| a / b).collect();
        t.push(Target {
            what: "eBPF redirect connection rate ≥ iptables REDIRECT's".into(),
            met: Some(median(&r) >= 1.0),
            numbers: format!("eBPF {} conn/s, iptables {} conn/s; ratio {}", fmt_rps(&e), fmt_rps(&i), fmt_ratio(&r)),
        });
    }

    pub(crate) fn targets_text(&self) -> String {
        let mut s = String::from("Targets:\n");
        for t in self.targets() {
            let _ = writeln!(s, "{}", t.line());
        }
        s
    }
}
