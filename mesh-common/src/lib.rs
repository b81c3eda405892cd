//! Map keys and values shared by the eBPF programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so the kernel and userspace agree byte for byte.
//! IPv4 addresses are stored in network byte order exactly as the kernel hands them to sock_addr and
//! sock_ops programs; ports are stored in host byte order (the programs convert), so userspace never
//! has to guess.
#![no_std]

/// Port the node proxy listens on inside every enrolled pod's network namespace (like Istio's 15001).
pub const PROXY_OUTBOUND_PORT: u16 = 15001;
/// 127.0.0.1 in network byte order, as a sock_addr program writes it into `user_ip4`.
pub const LOOPBACK_V4_BE: u32 = u32::from_be_bytes([127, 0, 0, 1]).to_be();

pub const MAP_ENROLLED: &str = "MESH_ENROLLED";
pub const MAP_SERVICES: &str = "MESH_SERVICES";
pub const MAP_ORIG_BY_COOKIE: &str = "MESH_ORIG_BY_COOKIE";
pub const MAP_ORIG_BY_TUPLE: &str = "MESH_ORIG_BY_TUPLE";
pub const MAP_STATS: &str = "MESH_STATS";
pub const MAP_EVENT_STATS: &str = "MESH_EVENT_STATS";
pub const MAP_LOG_LEVEL: &str = "MESH_LOG_LEVEL";
pub const MAP_CONFIG: &str = "MESH_CONFIG";

pub const PROG_CONNECT4: &str = "mesh_connect4";
pub const PROG_CONNECT6: &str = "mesh_connect6";
pub const PROG_SOCK_OPS: &str = "mesh_sock_ops";

/// Capacity of the per-connection maps; LRU so a burst of connections that the proxy never reads
/// (a client that connects and dies) cannot exhaust them.
pub const MAX_CONNECTIONS: u32 = 65536;
pub const MAX_WORKLOADS: u32 = 4096;
pub const MAX_SERVICES: u32 = 65536;

/// Value of the enrollment map, keyed by the pod's cgroup v2 id (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enrollment {
    /// Agent-assigned workload id, echoed into [`OriginalDst`] so the proxy can cross-check identity.
    pub workload_id: u32,
    /// Port (host order) of the proxy listener in this workload's network namespace.
    pub proxy_port: u16,
    pub _pad: u16,
}

/// Key of the service map: a ClusterIP (VIP) and port that the mesh captures.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Network byte order.
    pub ip4: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    pub service_id: u32,
}

/// The destination the application asked for before connect4 rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst {
    /// Network byte order.
    pub ip4: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    pub workload_id: u32,
    pub service_id: u32,
}

/// Key under which sock_ops publishes an [`OriginalDst`] for the proxy: the client side of the
/// redirected connection as the proxy sees it from `accept()` (peer address) plus the network
/// namespace, because every pod uses 127.0.0.1 and the same ports can exist in many pods.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns_cookie: u64,
    /// Client address, network byte order.
    pub src_ip4: u32,
    /// Client port, host byte order.
    pub src_port: u16,
    pub _pad: u16,
}

/// Indexes of the per-CPU counters in the stats array map.
pub mod stats {
    pub const CONNECT_SEEN: u32 = 0;
    pub const CONNECT_REDIRECTED: u32 = 1;
    pub const ESTABLISHED_INDEXED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Indexes of the per-CPU counters in the event stats array map: one beside each kernel log
/// event, counted whether or not logging is on. A separate map so `MESH_STATS` keeps its layout.
pub mod events {
    /// An enrolled pod connected to an address:port with no service entry (not redirected).
    pub const CONNECT_NO_SERVICE: u32 = 0;
    /// sock_ops saw an established connection to the proxy port with no original-destination
    /// record (an iptables REDIRECT, a direct connect to 127.0.0.1:15001, or a record lost).
    pub const ORIG_DST_MISSING: u32 = 1;
    /// Inserting into an original-destination map failed (map full, out of memory).
    pub const MAP_INSERT_FAILED: u32 = 2;
    /// Any other helper or map failure that ended a program run early.
    pub const PROGRAM_ERROR: u32 = 3;
    /// An enrolled pod connected to a service VIP but nothing listened on the proxy port in its
    /// network namespace (the agent is dead or the pod's listener is gone); the connect went to
    /// its original destination (fail open, [`config::FAIL_OPEN`]).
    pub const FAIL_OPEN: u32 = 4;
    /// The same, with [`config::FAIL_CLOSED`]: the connect was refused (EPERM).
    pub const FAIL_CLOSED: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// Per-node settings the programs read from `MESH_CONFIG` (an array map of `u32`, written by the
/// agent at start). A zeroed map (before the agent has written it) means the defaults.
pub mod config {
    /// Index of the fail mode: what connect4/6 do when a VIP connect should be redirected but no
    /// socket listens at the redirect target in the caller's network namespace.
    pub const FAIL_MODE: u32 = 0;
    pub const COUNT: u32 = 1;
    /// Leave the connect to its original destination (kube-proxy / the CNI serves the VIP,
    /// outside the mesh). The default, and the map's initial value.
    pub const FAIL_OPEN: u32 = 0;
    /// Refuse the connect (`connect()` fails with EPERM) rather than bypass the mesh's policy.
    pub const FAIL_CLOSED: u32 = 1;
}

/// The level the kernel programs log at, in `MESH_LOG_LEVEL[0]` (an array map the agent writes at
/// run time). Same numbering as aya-log's `Level`; 0 means off, which is the map's initial value.
pub mod log_level {
    pub const OFF: u32 = 0;
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const DEBUG: u32 = 4;
    pub const TRACE: u32 = 5;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain no pointers and have explicit padding fields.
    unsafe impl aya::Pod for Enrollment {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for OriginalDst {}
    unsafe impl aya::Pod for TupleKey {}
}
