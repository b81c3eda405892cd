//! The performance issue's goals against the fastest peers (haproxy, nginx), judged per run:
//! user-space CPU per request, tail latency, and peak memory. Ratios are per repeat (repeats are
//! interleaved), the verdict on their median.

use crate::{
    report::{fmt_ratio, median, Report, Target},
    Sample,
};

/// Microseconds of user-space CPU (utime) per request, when the run measured CPU.
fn user_us(s: &Sample) -> Option<f64> {
    Some((s.cpu_s? - s.sys_s?).max(0.0) * 1e6 / s.requests.max(1) as f64)
}

impl Report<'_> {
    /// The cells of `keys` in which both the mesh and `peer` ran with no failed request, or why
    /// the target is n/a.
    pub(crate) fn clean_cells<'k>(&self, keys: &[&'k str], peer: &str) -> Result<Vec<&'k str>, String> {
        if !self.has(peer) {
            return Err(format!("{peer} not in this run"));
        }
        let cells: Vec<&str> = keys.iter().copied().filter(|c| self.samples(c, "mesh").is_some()).collect();
        let dirty: Vec<String> = cells
            .iter()
            .flat_map(|c| ["mesh", peer].map(|w| (c, w)))
            .filter(|(c, w)| self.samples(c, w).is_none_or(|v| v.iter().any(|s| !s.clean())))
            .map(|(c, w)| format!("{w} in {c}"))
            .collect();
        if !dirty.is_empty() {
            return Err(format!("invalid: failed, non-2xx or missing runs ({})", dirty.join(", ")));
        }
        if cells.is_empty() {
            return Err("no such cell in this run".into());
        }
        Ok(cells)
    }

    /// One target over several cells: met when the median per-repeat ratio mesh ÷ `peer` of
    /// `f` is at most `limit` in every cell.
    fn ratio_target(
        &self,
        what: String,
        keys: &[&str],
        peer: &str,
        limit: f64,
        f: impl Fn(&Sample) -> Option<f64>,
    ) -> Target {
        let cells = match self.clean_cells(keys, peer) {
            Ok(c) => c,
            Err(why) => return Target { what, met: None, numbers: why },
        };
        let mut met = true;
        let mut nums = vec![];
        for c in cells {
            let (m, p) = (self.samples(c, "mesh"), self.samples(c, peer));
            let pairs: Vec<f64> =
                m.into_iter().flatten().zip(p.into_iter().flatten()).filter_map(|(a, b)| Some(f(a)? / f(b)?)).collect();
            if pairs.is_empty() {
                return Target { what, met: None, numbers: format!("{c}: not measured") };
            }
            met &= median(&pairs) <= limit;
            let mine = median(&m.into_iter().flatten().filter_map(&f).collect::<Vec<_>>());
            let theirs = median(&p.into_iter().flatten().filter_map(&f).collect::<Vec<_>>());
            nums.push(format!("{c}: {} ({mine:.1} vs {theirs:.1})", fmt_ratio(&pairs)));
        }
        Target { what, met: Some(met), numbers: nums.join("; ") }
    }

    /// User-space CPU per request against haproxy; p99.9 and the one-connection p99 against
    /// nginx; peak RSS under load against nginx.
    pub(crate) fn peer_targets(&self, t: &mut Vec<Target>) {
        t.push(self.ratio_target(
            "mesh user-space CPU per request ≤ haproxy's (µs/req, c32, c256, h2c)".into(),
            &["c32", "c256", "h2-c32"],
            "haproxy",
            1.0,
            user_us,
        ));
        t.push(self.ratio_target(
            "mesh p99.9 ≤ nginx's (ms, c32, c256)".into(),
            &["c32", "c256"],
            "nginx",
            1.0,
            |s| Some(s.p999_us / 1e3),
        ));
        t.push(self.ratio_target(
            "mesh p99 at one connection ≤ nginx's (ms, c1)".into(),
            &["c1"],
            "nginx",
            1.0,
            |s| Some(s.p99_us / 1e3),
        ));
        if let (Some(m), Some(n)) = (self.peaks.get("mesh"), self.peaks.get("nginx")) {
            t.push(Target {
                what: "mesh peak RSS under load ≤ nginx's".into(),
                met: Some(m <= n),
                numbers: format!(
                    "mesh {:.1} MB, nginx {:.1} MB ({:.2}×)",
                    *m as f64 / 1024.0,
                    *n as f64 / 1024.0,
                    *m as f64 / (*n).max(1) as f64
                ),
            });
        }
    }
}
