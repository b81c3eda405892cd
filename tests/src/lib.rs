//! A local "node" on this machine's real kernel for end-to-end tests and the Bookinfo demo.
//!
//! A pod is a network namespace (veth into a per-node bridge, its own IP, a blackhole route for
//! the service VIP range so an unredirected connect to a VIP fails locally) plus a cgroup v2
//! directory its processes run in. Service names resolve to VIPs through `/etc/netns/<ns>/hosts`,
//! which `ip netns exec` bind-mounts over `/etc/hosts`. Nothing here ever routes a packet off the
//! machine: pods have no default route and the host only gains a route to the node's pod subnet.
// The harness is used only by this crate's tests and binaries; its items are documented where
// their behaviour is not obvious, not held to `missing_docs`.
#![allow(missing_docs)]
pub mod apiserver;

use std::{
    fs,
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// Service VIPs live here; pods blackhole it so only the mesh redirect can reach a VIP.
pub const VIP_RANGE: &str = "10.96.0.0/12";

/// The eBPF object the agents under test load: `$MESH_EBPF_OBJECT` (xtask sets it), else the one
/// `cargo xtask build-ebpf` writes.
pub fn ebpf_object() -> PathBuf {
    std::env::var_os("MESH_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| workspace().join("target/mesh-ebpf.o"))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A binary of this workspace built by `cargo xtask test` / `cargo build --release`.
pub fn bin(name: &str) -> PathBuf {
    let env_key = format!("MESH_{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(env_key) {
        return PathBuf::from(p);
    }
    for profile in ["release", "debug"] {
        let p = workspace().join("target").join(profile).join(name);
        if p.is_file() {
            return p;
        }
    }
    workspace().join("target/release").join(name)
}

pub fn sh(cmd: &str) -> Result<Output> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().with_context(|| format!("running {cmd}"))?;
    Ok(out)
}

/// Runs `cmd`, failing with its stderr when it does not succeed.
pub fn must(cmd: &str) -> Result<String> {
    let out = sh(cmd)?;
    if !out.status.success() {
        bail!("`{cmd}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why this machine cannot run the eBPF end-to-end tests, if it cannot.
pub fn ebpf_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: the e2e tests create network namespaces, cgroups and load eBPF".into());
    }
    if !Path::new(CGROUP2_ROOT).join("cgroup.procs").exists() {
        return Some(format!("no cgroup v2 hierarchy at {CGROUP2_ROOT}"));
    }
    if !bin("mesh").is_file() {
        return Some(format!("{} is not built: run `cargo xtask test`", bin("mesh").display()));
    }
    let obj = ebpf_object();
    if !obj.is_file() {
        return Some(format!("{} is not built: run `cargo xtask build-ebpf`", obj.display()));
    }
    None
}

/// Call first in every e2e test: returns false (test skipped, reason printed) on a machine that
/// cannot run it, and panics instead under CI=true, where a skip would hide a broken build.
pub fn require_ebpf(test: &str) -> bool {
    require(test, ebpf_unavailable())
}

/// [`require_ebpf`] for any reason a test cannot run here (`why`, None when it can): the test is
/// skipped with the reason printed and recorded, or fails under CI=true.
pub fn require(test: &str, why: Option<String>) -> bool {
    match why {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: cannot run the end-to-end test in CI: {why}");
            }
            // libtest has no runtime skip: the test returns and reports `ok`. Print the reason
            // (shown with --nocapture) and record the skip where `cargo xtask test` counts it.
            println!("SKIPPED: {test}: {why}");
            eprintln!("SKIPPED: {test}: {why}");
            if let Some(log) = std::env::var_os("MESH_E2E_SKIP_LOG") {
                use std::io::Write;
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| f.write_all(format!("{test}: {why}\n").as_bytes()));
                if let Err(e) = appended {
                    // The summary would count this skip as a pass: say so loudly instead.
                    panic!("{test}: skipped ({why}) but cannot record it in {}: {e}", PathBuf::from(log).display());
                }
            }
            false
        }
    }
}

pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub cgroup: PathBuf,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.netns)
    }
}

/// A node: a bridge, pods, the processes started in them. Dropping it removes everything.
pub struct Node {
    pub prefix: String,
    pub subnet: u8,
    bridge: String,
    pub pods: Vec<Pod>,
    children: Vec<(String, Child)>,
    pub dir: PathBuf,
}

impl Node {
    /// `prefix` names every object (netns `<prefix>-<pod>`, bridge `br-<prefix>`, cgroup
    /// `<CGROUP2_ROOT>/mesh-<prefix>`); leftovers of a crashed earlier run are removed first.
    /// Pods get 10.244.`subnet`.x.
    pub fn new(prefix: &str, subnet: u8) -> Result<Node> {
        cleanup(prefix);
        let bridge = format!("br-{prefix}");
        must(&format!("ip link add {bridge} type bridge && ip addr add 10.244.{subnet}.1/24 dev {bridge} && ip link set {bridge} up"))?;
        fs::create_dir_all(Path::new(CGROUP2_ROOT).join(format!("mesh-{prefix}")))?;
        let dir = std::env::temp_dir().join(format!("mesh-node-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Node { prefix: prefix.into(), subnet, bridge, pods: Vec::new(), children: Vec::new(), dir })
    }

    /// Creates a pod with IP 10.244.<subnet>.<host> and `/etc/hosts` entries for `hosts`.
    pub fn add_pod(&mut self, name: &str, host: u8, hosts: &[(&str, Ipv4Addr)]) -> Result<&Pod> {
        self.add_pod_in_cgroup(name, host, hosts, name)
    }

    /// [`Node::add_pod`] with the pod's cgroup at `<CGROUP2_ROOT>/mesh-<prefix>/<cgroup>`, for
    /// kubelet-style paths (`kubepods/besteffort/pod<uid>`).
    pub fn add_pod_in_cgroup(
        &mut self,
        name: &str,
        host: u8,
        hosts: &[(&str, Ipv4Addr)],
        cgroup: &str,
    ) -> Result<&Pod> {
        let netns = format!("{}-{name}", self.prefix);
        let ip = Ipv4Addr::new(10, 244, self.subnet, host);
        let idx = self.pods.len();
        let (veth_host, veth_pod) = (format!("v{}{idx}h", self.prefix), format!("v{}{idx}p", self.prefix));
        let bridge = &self.bridge;
        must(&format!(
            "ip netns add {netns} && ip link add {veth_host} type veth peer name {veth_pod} && \
             ip link set {veth_pod} netns {netns} && ip link set {veth_host} master {bridge} && ip link set {veth_host} up && \
             ip -n {netns} link set lo up && ip -n {netns} link set {veth_pod} name eth0 && \
             ip -n {netns} addr add {ip}/24 dev eth0 && ip -n {netns} link set eth0 up && \
             ip -n {netns} route add blackhole {VIP_RANGE}"
        ))?;
        let etc = Path::new("/etc/netns").join(&netns);
        fs::create_dir_all(&etc)?;
        let mut text = format!("127.0.0.1 localhost\n{ip} {name}\n");
        for (h, vip) in hosts {
            text.push_str(&format!("{vip} {h} {h}.default {h}.default.svc {h}.default.svc.cluster.local\n"));
        }
        fs::write(etc.join("hosts"), text)?;
        let cgroup = Path::new(CGROUP2_ROOT).join(format!("mesh-{}", self.prefix)).join(cgroup);
        fs::create_dir_all(&cgroup)?;
        self.pods.push(Pod { name: name.into(), netns, ip, cgroup });
        Ok(&self.pods[idx])
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods.iter().find(|p| p.name == name).with_context(|| format!("no pod {name}"))
    }

    /// The shell prefix that runs a command as a process of `pod`: in its cgroup (joined before
    /// exec, so the very first connect is seen by the cgroup programs) and its netns.
    fn pod_prefix(&self, pod: &str) -> Result<String> {
        let p = self.pod(pod)?;
        Ok(format!("echo $$ > {}/cgroup.procs && exec ip netns exec {}", p.cgroup.display(), p.netns))
    }

    /// Starts a long-running process in `pod`; its output goes to `<dir>/<label>.log`.
    pub fn spawn(&mut self, pod: &str, label: &str, args: &[&str]) -> Result<()> {
        let prefix = self.pod_prefix(pod)?;
        let log = fs::File::create(self.dir.join(format!("{label}.log")))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{prefix} \"$@\""))
            .arg("sh")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children.push((label.into(), child));
        Ok(())
    }

    /// Runs a command in `pod` to completion.
    pub fn exec(&self, pod: &str, args: &[&str]) -> Result<Output> {
        let prefix = self.pod_prefix(pod)?;
        Ok(Command::new("sh").arg("-c").arg(format!("{prefix} \"$@\"")).arg("sh").args(args).output()?)
    }

    /// Starts a host process (the agent) with output in `<dir>/<label>.log`.
    pub fn spawn_host(&mut self, label: &str, cmd: &mut Command) -> Result<()> {
        let log = fs::File::create(self.dir.join(format!("{label}.log")))?;
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        self.children.push((label.into(), child));
        Ok(())
    }

    /// The pid of the process started as `label` (the command itself: the pod prefix execs into it).
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children.iter().find(|(l, _)| l == label).map(|(_, c)| c.id())
    }

    pub fn log(&self, label: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// Sends SIGTERM to the process `label` and waits for it (bounded).
    pub fn stop(&mut self, label: &str) -> Result<std::process::ExitStatus> {
        let i = self.children.iter().position(|(l, _)| l == label).with_context(|| format!("no process {label}"))?;
        let (_, mut child) = self.children.remove(i);
        // SAFETY: plain kill(2) on a pid we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{label} did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process `label` to exit by itself.
    pub fn wait(&mut self, label: &str, within: Duration) -> Result<std::process::ExitStatus> {
        let i = self.children.iter().position(|(l, _)| l == label).with_context(|| format!("no process {label}"))?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.children[i].1.try_wait()? {
                self.children.remove(i);
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("{label} still running after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A YAML registry (Services + Pods with netns/cgroup annotations) for the agent.
    pub fn pod_yaml(&self, pod: &str, labels: &[(&str, &str)], port: u16, enroll: bool) -> Result<String> {
        let p = self.pod(pod)?;
        let labels: String = labels.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect();
        Ok(format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: default\n  labels:\n{labels}  annotations:\n    mesh/netns: {}\n    mesh/cgroup: {}\n    mesh/enroll: \"{enroll}\"\nspec:\n  containers:\n  - name: app\n    ports:\n    - containerPort: {port}\nstatus:\n  podIP: {}\n",
            p.name,
            p.netns_path().display(),
            p.cgroup.display(),
            p.ip
        ))
    }
}

pub fn service_yaml(name: &str, vip: Ipv4Addr, port: u16, port_name: &str, selector: &[(&str, &str)]) -> String {
    let sel: String = selector.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  selector:\n{sel}  ports:\n  - name: {port_name}\n    port: {port}\n"
    )
}

/// Polls until something accepts on `addr` (a readiness check, not a sleep), bounded.
pub fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listening on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until the agent's admin endpoint at `admin` answers `/ready` with 200: programs attached,
/// a complete registry applied, pods enrolled, the routing config admitted. An open admin port
/// says none of that (it answers from the start, for the liveness probe).
pub fn wait_ready(admin: SocketAddr, within: Duration) -> Result<()> {
    wait_until(&format!("the agent at {admin} to be ready"), within, || {
        http_get(admin, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
}

/// Polls until `check` succeeds, bounded.
pub fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// IDs of the mesh programs attached to the cgroup v2 root right now. Tests compare sets taken
/// before and while their agent runs, so an agent another process runs on the machine (a
/// benchmark, a developer's) cannot make them pass or fail.
pub fn attached_mesh_program_ids() -> std::collections::BTreeSet<u32> {
    let out = sh(&format!("bpftool cgroup tree {CGROUP2_ROOT} 2>&1"))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.unwrap_or_default()
        .lines()
        .filter(|l| l.contains("mesh_"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits until the programs an agent attached (those in `while_running` but not in `before`) are
/// attached, and returns them.
pub fn programs_attached_by_agent(before: &std::collections::BTreeSet<u32>) -> Result<std::collections::BTreeSet<u32>> {
    let mut ours = std::collections::BTreeSet::new();
    wait_until("the agent's programs to be attached", Duration::from_secs(20), || {
        ours = attached_mesh_program_ids().difference(before).copied().collect();
        ours.len() >= 3
    })?;
    Ok(ours)
}

/// Removes a directory tree (a bpffs pin directory of a test) however the test ends.
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// bpftool's JSON output (`bpftool -j ARGS`).
pub fn bpftool_json(args: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&must(&format!("bpftool -j {args}"))?)?)
}

/// The ids of the links attaching `progs`.
pub fn links_of(progs: &std::collections::BTreeSet<u32>) -> anyhow::Result<Vec<u64>> {
    let links = bpftool_json("link show")?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| progs.contains(&(p as u32))))
        .filter_map(|l| l["id"].as_u64())
        .collect())
}

/// The id of the map whose name starts with `name` among the maps `progs` use (the kernel keeps
/// 15 characters of a map's name).
pub fn map_of(progs: &std::collections::BTreeSet<u32>, name: &str) -> anyhow::Result<u64> {
    let short: String = name.chars().take(15).collect();
    for prog in progs {
        let info = bpftool_json(&format!("prog show id {prog}"))?;
        for id in info["map_ids"].as_array().into_iter().flatten().filter_map(|m| m.as_u64()) {
            if bpftool_json(&format!("map show id {id}"))?["name"].as_str() == Some(short.as_str()) {
                return Ok(id);
            }
        }
    }
    anyhow::bail!("no map {name} among programs {progs:?}")
}

/// A plain HTTP GET from the host side (admin endpoint), std only.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sum of a Prometheus counter over the series whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Removes every object a node with `prefix` may have left behind (processes, netns, links,
/// cgroups, hosts files). Safe to call when nothing exists.
pub fn cleanup(prefix: &str) {
    let cg = Path::new(CGROUP2_ROOT).join(format!("mesh-{prefix}"));
    kill_cgroup_tree(&cg);
    if let Ok(out) = sh("ip netns list") {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let ns = line.split_whitespace().next().unwrap_or("");
            if ns.starts_with(&format!("{prefix}-")) {
                let _ = sh(&format!("ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}"));
                let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
            }
        }
    }
    let _ = sh(&format!("ip link del br-{prefix} 2>/dev/null"));
    remove_cgroup_tree(&cg);
}

fn kill_cgroup_tree(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on pids of processes in our own test cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            kill_cgroup_tree(&e.path());
        }
    }
}

/// Removes a cgroup and its children, deepest first (rmdir only works on an empty cgroup).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    // A cgroup can only be removed once its last process is reaped; give them a moment.
    let _ = wait_until("cgroup to empty", Duration::from_secs(2), || {
        fs::read_to_string(dir.join("cgroup.procs")).map(|s| s.trim().is_empty()).unwrap_or(true)
    });
    let _ = fs::remove_dir(dir);
}

impl Drop for Node {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        cleanup(&self.prefix);
    }
}

pub mod bookinfo;
pub mod prometheus;
