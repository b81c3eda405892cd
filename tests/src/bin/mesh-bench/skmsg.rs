//! The sk_msg bypass cell: the mesh with and without `--sk-msg-bypass` under the same HTTP/1.1
//! keep-alive loads, each run against a freshly started agent (the switch only applies to new
//! connections), off and on interleaved; and the bypass's req/s against the peers' in the main
//! cells of the same run.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use mesh_e2e::Node;

use crate::{
    contenders::start_mesh,
    load::{measure, run_load, LoadGen},
    report::{fmt_ratio, fmt_rps, median, Report, Target},
    Load, Opts, Sample,
};

/// One load's runs without and with the bypass, one sample each per repeat, interleaved.
pub(crate) struct SkMsgPair {
    pub(crate) cell: &'static str,
    pub(crate) off: Vec<Sample>,
    pub(crate) on: Vec<Sample>,
}

impl SkMsgPair {
    /// `f(on) ÷ f(off)` per repeat, over repeats where both runs were clean.
    fn ratios(&self, f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
        self.on
            .iter()
            .zip(&self.off)
            .filter(|(a, b)| a.clean() && b.clean())
            .filter_map(|(a, b)| Some(f(a)? / f(b).filter(|y| *y > 0.0)?))
            .collect()
    }

    fn clean(&self) -> bool {
        !self.on.is_empty() && self.on.iter().chain(&self.off).all(Sample::clean)
    }
}

/// µs of the proxy's user-space (or kernel) CPU per request.
fn us_per_req(s: &Sample, kernel: bool) -> Option<f64> {
    let sys = s.sys_s?;
    let cpu = if kernel { sys } else { s.cpu_s? - sys };
    Some(cpu * 1e6 / s.requests.max(1) as f64)
}

/// Runs c32 and c256 off and on, `repeats` times interleaved. The agent left running has the
/// bypass off, as by default.
pub(crate) fn sk_msg_cost(node: &mut Node, dir: &Path, o: &Opts, lua: &Path, warm: u32) -> Result<Vec<SkMsgPair>> {
    let mut pairs = vec![];
    for (cell, conns) in [("c32", 32), ("c256", 256)] {
        let load = Load::Wrk { conns, jason: false, close: false };
        let mut run = |extra: &[&str]| -> Result<Sample> {
            node.stop("agent")?;
            let c = start_mesh(node, dir, extra)?;
            let g = LoadGen::client(lua, o.rate, dir);
            let _ = run_load(node, &g, &c, &load, warm)?;
            measure(node, &g, &c, &load, o.duration)
        };
        let mut pair = SkMsgPair { cell, off: vec![], on: vec![] };
        for _ in 0..o.repeats.max(1) {
            pair.off.push(run(&[])?);
            pair.on.push(run(&["--sk-msg-bypass"])?);
        }
        for (setting, s) in pair.off.iter().zip(&pair.on).flat_map(|(a, b)| [("off", a), ("on", b)]) {
            println!(
                "   {cell:>5} {setting:>3}: {:>9.0} req/s  p99 {:>7.3} ms  user {} µs/req  kernel {} µs/req{}",
                s.rps(),
                s.p99_us / 1e3,
                us_per_req(s, false).map_or("n/a".into(), |v| format!("{v:.1}")),
                us_per_req(s, true).map_or("n/a".into(), |v| format!("{v:.1}")),
                if s.clean() { String::new() } else { format!("  errors {} non-2xx {}", s.errors, s.non2xx) }
            );
        }
        pairs.push(pair);
    }
    node.stop("agent")?;
    start_mesh(node, dir, &[])?;
    Ok(pairs)
}

impl Report<'_> {
    /// The bypass's section: req/s, p99 and CPU per request off and on.
    pub(crate) fn md_sk_msg(&self, m: &mut String) {
        let _ = writeln!(
            m,
            "\n## Same-node socket path: sk_msg / sockhash bypass\n\n`mesh agent --sk-msg-bypass` (off by default, see the README) carries both legs of a request between pods of this node (client pod ↔ in-pod listener, proxy ↔ backend pod) socket to socket instead of through TCP/IP. Each run below starts a fresh agent (the switch applies to new connections), off and on interleaved, HTTP/1.1 keep-alive, {} s per run. Medians over repeats (min–max); CPU is the agent's, split into user space and kernel.\n",
            self.opts.duration
        );
        let _ = writeln!(
            m,
            "| load | bypass | req/s | p99 ms | user µs/req | kernel µs/req | errors |\n|---|---|---|---|---|---|---|"
        );
        for p in self.sk_msg {
            for (setting, v) in [("off", &p.off), ("on", &p.on)] {
                let col = |f: &dyn Fn(&Sample) -> Option<f64>| {
                    let xs: Vec<f64> = v.iter().filter_map(f).collect();
                    if xs.is_empty() {
                        "n/a".to_string()
                    } else {
                        let (mid, lo, hi) = crate::report::spread(&xs);
                        format!("{mid:.1} ({lo:.1}–{hi:.1})")
                    }
                };
                let rps: Vec<f64> = v.iter().map(Sample::rps).collect();
                let _ = writeln!(
                    m,
                    "| {} | {setting} | {} | {} | {} | {} | {} |",
                    p.cell,
                    fmt_rps(&rps),
                    col(&|s| Some(s.p99_us / 1e3)),
                    col(&|s| us_per_req(s, false)),
                    col(&|s| us_per_req(s, true)),
                    v.iter().map(|s| s.errors + s.non2xx).sum::<u64>()
                );
            }
        }
        for p in self.sk_msg {
            let _ = writeln!(
                m,
                "\n{}: on ÷ off req/s {}, kernel CPU per request {}\n",
                p.cell,
                fmt_ratio(&p.ratios(|s| Some(s.rps()))),
                fmt_ratio(&p.ratios(|s| us_per_req(s, true)))
            );
        }
    }

    /// The target for the bypass: ≥ 1.2× the peers' req/s at c32 and c256. The peers ran
    /// in the main cells of this run, not interleaved with these runs, so the ratio is of medians.
    pub(crate) fn sk_msg_targets(&self, t: &mut Vec<Target>) {
        if self.sk_msg.is_empty() {
            return;
        }
        for peer in ["nginx", "haproxy"] {
            let what = format!(
                "mesh --sk-msg-bypass req/s ≥ 1.2× {peer}'s (c32, c256; medians, the peer from the main cells)"
            );
            let mut nums = vec![];
            let mut met = Some(true);
            for p in self.sk_msg {
                let theirs = self.series(p.cell, peer, Sample::rps);
                let peer_clean = self.samples(p.cell, peer).is_some_and(|v| v.iter().all(Sample::clean));
                if theirs.is_empty() || !p.clean() || !peer_clean {
                    met = None;
                    let why =
                        if theirs.is_empty() { format!("no {peer} run in this cell") } else { "not clean".into() };
                    nums.push(format!("{}: n/a ({why})", p.cell));
                    continue;
                }
                let ours = median(&p.on.iter().map(Sample::rps).collect::<Vec<_>>());
                let r = ours / median(&theirs);
                met = met.map(|m| m && r >= 1.2);
                nums.push(format!("{}: {r:.2}× ({ours:.0} vs {:.0})", p.cell, median(&theirs)));
            }
            t.push(Target { what, met, numbers: nums.join("; ") });
        }
    }
}
