//! The load cells: which loads the contenders are measured under, and the measuring loop (a
//! warm-up per contender, then repeats interleaved across contenders).

use std::collections::BTreeMap;

use anyhow::Result;
use mesh_e2e::Node;

use crate::{
    load::{measure, run_load, LoadGen},
    Cell, Contender, Load, Opts, Sample,
};

/// Samples per (cell key, contender name), one per repeat in order.
pub(crate) type Results = BTreeMap<(&'static str, &'static str), Vec<Sample>>;

/// The cells of this run: two with `--quick`, six otherwise. `names` are the contenders
/// started; the HTTP/2 cell leaves out `direct` (the backends speak HTTP/1 only).
pub(crate) fn load_cells(o: &Opts, names: &[&'static str]) -> Vec<Cell> {
    let proxies: Vec<&'static str> = names.iter().copied().filter(|n| *n != "direct").collect();
    let wrk = |key, title: &str, conns, jason| Cell {
        key,
        title: title.to_string(),
        load: Load::Wrk { conns, jason, close: false },
        contenders: names.to_vec(),
    };
    let rate = Cell {
        key: "rate",
        title: format!("HTTP/1.1 at a fixed {} req/s (32 connections)", o.rate),
        load: Load::Rate { clients: 32 },
        contenders: names.to_vec(),
    };
    if o.quick {
        return vec![wrk("c32", "HTTP/1.1 keep-alive, 32 connections", 32, false), rate];
    }
    vec![
        wrk("c1", "HTTP/1.1 keep-alive, 1 connection", 1, false),
        wrk("c32", "HTTP/1.1 keep-alive, 32 connections", 32, false),
        wrk("c256", "HTTP/1.1 keep-alive, 256 connections", 256, false),
        wrk("jason-c32", "HTTP/1.1, `end-user: jason` (header rule → v2), 32 connections", 32, true),
        rate,
        Cell {
            key: "h2-c32",
            title: "HTTP/2 (h2c), 4 connections × 8 streams".into(),
            load: Load::H2 { clients: 4, streams: 8 },
            contenders: proxies,
        },
    ]
}

/// Measures every cell: a warm-up run per contender (upstream pools grow to the cell's
/// concurrency, caches fill), then `o.repeats` rounds over the contenders, each printed.
pub(crate) fn run_cells(
    node: &Node,
    contenders: &[Contender],
    cells: &[Cell],
    o: &Opts,
    g: &LoadGen,
) -> Result<Results> {
    let mut results = Results::new();
    let warm = if o.quick { 1 } else { 2 };
    for cell in cells {
        println!("== {} ==", cell.title);
        for c in contenders.iter().filter(|c| cell.contenders.contains(&c.name)) {
            let _ = run_load(node, g, c, &cell.load, warm)?;
        }
        for r in 0..o.repeats {
            for c in contenders.iter().filter(|c| cell.contenders.contains(&c.name)) {
                let s = measure(node, g, c, &cell.load, o.duration)?;
                print_sample(c.name, r, &s);
                results.entry((cell.key, c.name)).or_default().push(s);
            }
        }
    }
    Ok(results)
}

/// One measured run's line on stdout.
fn print_sample(name: &str, repeat: usize, s: &Sample) {
    println!(
        "   {:>8} #{}: {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms{}{}",
        name,
        repeat + 1,
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
        if s.errors + s.non2xx > 0 { format!("  errors {} non-2xx {}", s.errors, s.non2xx) } else { String::new() }
    );
}
