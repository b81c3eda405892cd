//! Prometheus counters for the proxy and agent. Deliberately tiny: a few labelled counters
//! rendered as text on the admin port; no registry crate needed.
use std::{collections::BTreeMap, fmt::Write, sync::Mutex};

/// The agent's counters: (name, rendered labels) → value, behind one mutex, served at `/metrics`.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Info gauges (`name{labels} 1`): one label set per name, replaced on each set.
    infos: Mutex<BTreeMap<&'static str, String>>,
}

impl Metrics {
    /// Adds `n` to counter `name` with `labels` (pairs rendered in the given order).
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], n: u64) {
        let mut key = String::with_capacity(labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum());
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            if v.contains(['\\', '"']) {
                let _ = write!(key, "{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
            } else {
                // The common case, once per request: no escaping copies.
                key.push_str(k);
                key.push_str("=\"");
                key.push_str(v);
                key.push('"');
            }
        }
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((name, key)).or_default() += n;
    }

    /// Sets info gauge `name` to `labels` (the previous label set is gone, so a value that changes
    /// forever, like a config version, does not grow the exposition).
    pub fn set_info(&self, name: &'static str, labels: &[(&str, &str)]) {
        let rendered = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
            .collect::<Vec<_>>()
            .join(",");
        self.infos.lock().unwrap_or_else(|e| e.into_inner()).insert(name, rendered);
    }

    /// Adds 1 to counter `name` with `labels`.
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    /// The sum of counter `name` over every label set that includes `labels` (tests, readiness waits).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.iter()
            .filter(|((n, k), _)| *n == name && labels.iter().all(|(lk, lv)| k.contains(&format!("{lk}=\"{lv}\""))))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Prometheus text exposition format.
    pub fn render(&self, extra: &[(&str, u64)]) -> String {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), v) in c.iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
        for (name, v) in extra {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {v}");
        }
        for (name, labels) in self.infos.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name}{{{labels}}} 1");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders_with_escaping() {
        let m = Metrics::default();
        m.inc("mesh_requests_total", &[("dst", "reviews"), ("code", "200")]);
        m.inc("mesh_requests_total", &[("dst", "reviews"), ("code", "200")]);
        m.inc("mesh_requests_total", &[("dst", "a\"b"), ("code", "503")]);
        assert_eq!(m.get("mesh_requests_total", &[("dst", "reviews")]), 2);
        let text = m.render(&[("mesh_kernel_redirects_total", 7)]);
        assert!(text.contains("mesh_requests_total{dst=\"reviews\",code=\"200\"} 2"), "{text}");
        assert!(text.contains("dst=\"a\\\"b\""), "{text}");
        assert!(text.contains("mesh_kernel_redirects_total 7"));
    }

    #[test]
    fn an_info_gauge_holds_only_its_latest_labels() {
        let m = Metrics::default();
        m.set_info("mesh_config_version_info", &[("version", "..gen1")]);
        m.set_info("mesh_config_version_info", &[("version", "..gen\"2")]);
        let text = m.render(&[]);
        assert!(text.contains("mesh_config_version_info{version=\"..gen\\\"2\"} 1"), "{text}");
        assert!(!text.contains("..gen1"), "{text}");
    }
}
