//! The report as an SVG bar chart of requests per second and as JSON (results.json).

use std::{collections::HashMap, fmt::Write as _};

use crate::{
    report::{spread, Report},
    Cell, Sample,
};

impl Report<'_> {
    pub(crate) fn svg_rps(&self) -> String {
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

    pub(crate) fn json(&self) -> String {
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
