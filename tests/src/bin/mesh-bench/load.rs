//! Load generation (wrk, h2load) and measurement: a run's requests, latencies and the proxy's
//! CPU time, read from /proc over its process tree.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};
use mesh_e2e::Node;

use crate::{Contender, Load, Sample, CORE_LOAD};

pub(crate) const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MESHBENCH %d %d %d %d %.1f %.1f %.1f\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// Where a load generator runs and what it is given besides the load itself.
#[derive(Clone, Copy)]
pub(crate) struct LoadGen<'a> {
    /// The pod whose netns (and, without `cgroup`, whose cgroup) the generator runs in.
    pub(crate) pod: &'a str,
    /// A cgroup to run in instead of the pod's: the redirect comparison's un-enrolled client.
    pub(crate) cgroup: Option<&'a Path>,
    /// The wrk script that prints the MESHBENCH line ([`WRK_LUA`]).
    pub(crate) lua: &'a Path,
    /// Total request rate of a [`Load::Rate`] load.
    pub(crate) rate: u32,
    /// The run directory (h2load's request log goes there).
    pub(crate) dir: &'a Path,
}

impl<'a> LoadGen<'a> {
    /// The enrolled client pod, in its own cgroup.
    pub(crate) fn client(lua: &'a Path, rate: u32, dir: &'a Path) -> Self {
        LoadGen { pod: "client", cgroup: None, lua, rate, dir }
    }
}

/// Runs a load from `g` against `c` for `secs` seconds and parses it.
pub(crate) fn run_load(node: &Node, g: &LoadGen, c: &Contender, load: &Load, secs: u32) -> Result<Sample> {
    let log = g.dir.join("h2load.log");
    let (args, h2load) = load_command(g, c, load, secs, &log)?;
    let _ = fs::remove_file(&log);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = match g.cgroup {
        None => node.exec(g.pod, &args)?,
        Some(cg) => {
            let ns = &node.pod(g.pod)?.netns;
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

/// The pinned load generator's command line for `load`, and whether it is h2load (which reports
/// through its request log `log`) rather than wrk.
fn load_command(g: &LoadGen, c: &Contender, load: &Load, secs: u32, log: &Path) -> Result<(Vec<String>, bool)> {
    let core = CORE_LOAD.to_string();
    let d = format!("{secs}s");
    let log_arg = format!("--log-file={}", log.display());
    let mut args: Vec<String> = vec!["taskset".into(), "-c".into(), core];
    let h2load = match load {
        Load::Wrk { conns, jason, close } => {
            args.extend(["wrk", "-t1", "-c", &conns.to_string(), "-d", &d, "--timeout", "5s", "-s"].map(String::from));
            args.push(g.lua.display().to_string());
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
            let per = (g.rate / clients).max(1);
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
    Ok((args, h2load))
}

pub(crate) fn parse_wrk(out: &str) -> Result<Sample> {
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

pub(crate) fn parse_h2load(out: &str, log: &Path, secs: u32) -> Result<Sample> {
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
pub(crate) fn measure(node: &Node, g: &LoadGen, c: &Contender, load: &Load, secs: u32) -> Result<Sample> {
    let pid = c.proc_label.and_then(|l| node.pid(l));
    let before = pid.map(proc_tree_cpu);
    let mut s = run_load(node, g, c, load, secs)?;
    if let (Some(pid), Some((user, sys))) = (pid, before) {
        let (u, y) = proc_tree_cpu(pid);
        s.cpu_s = Some(u - user + y - sys);
        s.sys_s = Some(y - sys);
    }
    Ok(s)
}

/// pid and every descendant.
pub(crate) fn proc_tree(root: u32) -> Vec<u32> {
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
pub(crate) fn proc_tree_cpu(root: u32) -> (f64, f64) {
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
pub(crate) fn proc_tree_status(root: u32, field: &str) -> u64 {
    proc_tree(root)
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}
