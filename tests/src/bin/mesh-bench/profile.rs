//! A perf profile of the mesh proxy under load, for the report.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use mesh_e2e::Node;

use crate::{
    load::{run_load, LoadGen},
    tools::have,
    Contender, Load,
};

pub(crate) fn profile_mesh(node: &Node, mesh: &Contender, lua: &Path, dir: &Path) -> Result<String> {
    if !have("perf") {
        bail!("perf not installed");
    }
    let pid = node.pid("agent").context("agent pid")?;
    let data = dir.join("perf.data");
    let mut rec = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "2999", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let wrk = Load::Wrk { conns: 32, jason: false, close: false };
    let _ = run_load(node, &LoadGen::client(lua, 0, dir), mesh, &wrk, 5);
    // SAFETY: SIGINT to the perf process we spawned; it writes its data and exits.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    rec.wait()?;
    let out = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "dso,symbol", "--percent-limit", "0.7", "-i"])
        .arg(&data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // perf pads each line to the terminal-less default width and appends empty "-  -" columns.
    let tidy = |l: &str| l.trim_end().trim_end_matches(['-', ' ']).to_owned();
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(40)
        .map(tidy)
        .collect::<Vec<_>>()
        .join("\n"))
}
