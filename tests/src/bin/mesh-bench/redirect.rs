//! The redirect mechanism alone: eBPF connect4 against iptables REDIRECT, through the same node
//! proxy, with a new connection per request.

use std::{fs, path::Path};

use anyhow::Result;
use mesh_e2e::*;

use crate::{
    load::{measure, run_load, LoadGen},
    Contender, Load, Opts, Sample, PREFIX, PROXY_OUTBOUND_PORT, SVC_PORT, VIP,
};

pub(crate) struct RedirectResult {
    pub(crate) ebpf: Vec<Sample>,
    pub(crate) iptables: Vec<Sample>,
    pub(crate) conns: u32,
    pub(crate) note: String,
}

pub(crate) fn redirect_comparison(
    node: &mut Node,
    mesh: &Contender,
    o: &Opts,
    lua: &Path,
    dir: &Path,
) -> Result<RedirectResult> {
    let ns = node.pod("ipt")?.netns.clone();
    // In the ipt pod only: the VIP range becomes local (connect() must get past routing for the
    // NAT hook to see the SYN; a packet the rule missed is answered by the pod's own stack with a
    // reset, it never leaves the pod) and iptables sends VIP connections to the proxy's in-pod
    // listener, as Istio's iptables mode would. The netns, and the rule with it, is deleted with
    // the node.
    must(&format!(
        "ip -n {ns} route del blackhole {VIP_RANGE} && ip -n {ns} route add local {VIP_RANGE} dev lo && \
         ip netns exec {ns} iptables -t nat -A OUTPUT -d {VIP}/32 -p tcp --dport {SVC_PORT} -j REDIRECT --to-ports {PROXY_OUTBOUND_PORT}"
    ))?;
    // The iptables client runs in the ipt pod's netns but in a cgroup the mesh did not enroll,
    // so connect4 leaves its connect() alone and only iptables redirects it.
    let cg = Path::new(CGROUP2_ROOT).join(format!("mesh-{PREFIX}")).join("ipt-unenrolled");
    fs::create_dir_all(&cg)?;
    let conns = 32;
    let load = Load::Wrk { conns, jason: false, close: true };
    let warm = 1;
    let ebpf_client = LoadGen::client(lua, 0, dir);
    let ipt_client = LoadGen { pod: "ipt", cgroup: Some(&cg), ..ebpf_client };
    let _ = run_load(node, &ebpf_client, mesh, &load, warm)?;
    let _ = run_load(node, &ipt_client, mesh, &load, warm)?;
    let (mut ebpf, mut iptables) = (vec![], vec![]);
    for r in 0..o.repeats {
        let a = measure(node, &ebpf_client, mesh, &load, o.duration)?;
        let b = measure(node, &ipt_client, mesh, &load, o.duration)?;
        for (name, s) in [("eBPF connect4", &a), ("iptables REDIRECT", &b)] {
            println!(
                "   {name:>17} #{}: {:>8.0} conn/s  p50 {:.3} ms  p99 {:.3} ms{}",
                r + 1,
                s.rps(),
                s.p50_us / 1e3,
                s.p99_us / 1e3,
                if s.errors + s.non2xx > 0 {
                    format!("  errors {} non-2xx {}", s.errors, s.non2xx)
                } else {
                    String::new()
                }
            );
        }
        ebpf.push(a);
        iptables.push(b);
    }
    // Proof that the iptables run went through iptables, not connect4: the rule's packet counter.
    let counters = must(&format!("ip netns exec {ns} iptables -t nat -L OUTPUT -v -n -x"))?;
    let pkts = counters
        .lines()
        .find(|l| l.contains("REDIRECT"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let note = format!("the REDIRECT rule matched {pkts} connections in the ipt pod (the rule lived only in that pod's netns, deleted with it)");
    Ok(RedirectResult { ebpf, iptables, conns, note })
}
