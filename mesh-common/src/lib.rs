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

/// Map name: cgroup v2 id → [`Enrollment`] of every pod whose connects are redirected.
pub const MAP_ENROLLED: &str = "MESH_ENROLLED";
/// Map name: [`ServiceKey`] (VIP:port) → [`ServiceValue`], the destinations connect4 redirects.
pub const MAP_SERVICES: &str = "MESH_SERVICES";
/// Map name: socket cookie → [`OriginalDst`], written by connect4, moved by sock_ops.
pub const MAP_ORIG_BY_COOKIE: &str = "MESH_ORIG_BY_COOKIE";
/// Map name: [`TupleKey`] → [`OriginalDst`], what the proxy reads (and deletes) per accepted connection.
pub const MAP_ORIG_BY_TUPLE: &str = "MESH_ORIG_BY_TUPLE";
/// Map name: per-CPU counters indexed by [`stats`].
pub const MAP_STATS: &str = "MESH_STATS";
/// Map name: per-CPU counters indexed by [`events`].
pub const MAP_EVENT_STATS: &str = "MESH_EVENT_STATS";
/// Map name: one-entry array holding the [`log_level`] the programs log at.
pub const MAP_LOG_LEVEL: &str = "MESH_LOG_LEVEL";
/// Map name: per-node settings the programs read, indexed by [`config`].
pub const MAP_CONFIG: &str = "MESH_CONFIG";
/// Map name: [`SockKey`] → socket, both ends of each bypassed pod ↔ proxy connection (a sockhash
/// the `sk_msg` program redirects through).
pub const MAP_SOCKS: &str = "MESH_SOCKS";
/// Map name: [`SockKey`] → `u8`, the sockhash sockets whose data once went through TCP and must
/// keep doing so (see [`PROG_SK_MSG`]).
pub const MAP_SK_TCP: &str = "MESH_SK_TCP";
/// Map name: socket cookie (`u64`) → `u8`, the proxy's upstream sockets to pods on this node,
/// written by the agent before `connect()`: when one is established, sock_ops puts it in
/// [`MAP_SOCKS`] and expects its peer in [`MAP_SK_PEERS`].
pub const MAP_SK_UPSTREAM: &str = "MESH_SK_UPSTREAM";
/// Map name: [`SockKey`] → `u8`, the pods' ends of announced upstream connections, written by
/// sock_ops when the proxy's end is established, consumed when the pod's end is (it then joins
/// [`MAP_SOCKS`]).
pub const MAP_SK_PEERS: &str = "MESH_SK_PEERS";

/// Program name: the `cgroup/connect4` redirect.
pub const PROG_CONNECT4: &str = "mesh_connect4";
/// Program name: the `cgroup/connect6` program (IPv4-mapped destinations).
pub const PROG_CONNECT6: &str = "mesh_connect6";
/// Program name: the `sock_ops` program that re-keys original destinations by tuple.
pub const PROG_SOCK_OPS: &str = "mesh_sock_ops";
/// Program name: the `sk_msg` verdict on [`MAP_SOCKS`] that hands a bypassed socket's data to its
/// peer's receive queue instead of TCP. Bytes that went through TCP first would be read after
/// later bytes queued on the peer, so once a socket's data took TCP it always does ([`MAP_SK_TCP`]).
pub const PROG_SK_MSG: &str = "mesh_sk_msg";

/// Capacity of the per-connection maps; LRU so a burst of connections that the proxy never reads
/// (a client that connects and dies) cannot exhaust them.
pub const MAX_CONNECTIONS: u32 = 65536;
/// Capacity of the enrollment map: pods per node.
pub const MAX_WORKLOADS: u32 = 4096;
/// Capacity of the service map: captured VIP:port pairs.
pub const MAX_SERVICES: u32 = 65536;

/// Value of the enrollment map, keyed by the pod's cgroup v2 id (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enrollment {
    /// Agent-assigned workload id, copied into [`OriginalDst`]. The proxy does not use it: the source
    /// workload is the in-pod listener that accepted the connection.
    pub workload_id: u32,
    /// Port (host order) of the proxy listener in this workload's network namespace.
    pub proxy_port: u16,
    /// Explicit padding, always 0.
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
    /// Explicit padding, always 0.
    pub _pad: u16,
}

/// Value of the service map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Agent-assigned id, copied into [`OriginalDst`] and the redirect log event.
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
    /// Explicit padding, always 0.
    pub _pad: u16,
    /// [`Enrollment::workload_id`] of the connecting pod.
    pub workload_id: u32,
    /// [`ServiceValue::service_id`] of the destination.
    pub service_id: u32,
}

/// Key under which sock_ops publishes an [`OriginalDst`] for the proxy: the client side of the
/// redirected connection as the proxy sees it from `accept()` (peer address) plus the network
/// namespace, because every pod uses 127.0.0.1 and the same ports can exist in many pods.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// Cookie of the network namespace the connection lives in (`SO_NETNS_COOKIE` of the listener).
    pub netns_cookie: u64,
    /// Client address, network byte order.
    pub src_ip4: u32,
    /// Client port, host byte order.
    pub src_port: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
}

/// Key of the sockhash: one end of a connection as that end sees it (`getsockname` / `getpeername`)
/// plus its network namespace. A socket's peer has the same key with local and remote swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Cookie of the network namespace the socket lives in.
    pub netns_cookie: u64,
    /// Local address, network byte order.
    pub local_ip4: u32,
    /// Remote address, network byte order.
    pub remote_ip4: u32,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Explicit padding, always 0.
    pub _pad: u32,
}

/// The network namespace cookie a [`SockKey`] carries: the pod ↔ in-pod listener leg is on
/// loopback, where every pod has the same addresses, so its keys need the namespace; the proxy ↔
/// pod leg crosses namespaces (each end sees its own) with addresses unique on the node, so its
/// keys carry 0.
pub const fn key_netns(local_ip4: u32, remote_ip4: u32, netns_cookie: u64) -> u64 {
    if local_ip4 == LOOPBACK_V4_BE || remote_ip4 == LOOPBACK_V4_BE {
        netns_cookie
    } else {
        0
    }
}

impl SockKey {
    /// The key the other end of the same connection has.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            netns_cookie: self.netns_cookie,
            local_ip4: self.remote_ip4,
            remote_ip4: self.local_ip4,
            local_port: self.remote_port,
            remote_port: self.local_port,
            _pad: 0,
        }
    }
}

/// Indexes of the per-CPU counters in the stats array map.
pub mod stats {
    /// connect4/6 ran for an IPv4 (or IPv4-mapped) destination, from any process, enrolled or not.
    pub const CONNECT_SEEN: u32 = 0;
    /// connect4/6 rewrote the destination to the proxy.
    pub const CONNECT_REDIRECTED: u32 = 1;
    /// sock_ops moved an original destination to its tuple key.
    pub const ESTABLISHED_INDEXED: u32 = 2;
    /// sock_ops put a socket in the sockhash (either end of a bypassed connection).
    pub const SOCKETS_BYPASSED: u32 = 3;
    /// sk_msg handed a sendmsg's data straight to the peer socket.
    pub const SK_MSG_REDIRECTED: u32 = 4;
    /// sk_msg let a sendmsg's data go through TCP (the peer was not in the sockhash yet, or this
    /// socket's data had gone through TCP before).
    pub const SK_MSG_TCP: u32 = 5;
    /// sock_ops put a pod's end of one of the proxy's upstream connections in the sockhash (also
    /// counted in [`SOCKETS_BYPASSED`]).
    pub const UPSTREAM_PEERS_BYPASSED: u32 = 6;
    /// Number of counters (the map's size).
    pub const COUNT: u32 = 7;
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
    /// Number of counters (the map's size).
    pub const COUNT: u32 = 6;
}

/// Per-node settings the programs read from `MESH_CONFIG` (an array map of `u32`, written by the
/// agent at start). A zeroed map (before the agent has written it) means the defaults.
pub mod config {
    /// Index of the fail mode: what connect4/6 do when a VIP connect should be redirected but no
    /// socket listens at the redirect target in the caller's network namespace.
    pub const FAIL_MODE: u32 = 0;
    /// Index of the sk_msg bypass switch: non-zero puts new pod ↔ proxy connections in the
    /// sockhash (0, the default, leaves every byte to TCP).
    pub const SK_MSG_BYPASS: u32 = 1;
    /// Number of settings (the map's size).
    pub const COUNT: u32 = 2;
    /// Leave the connect to its original destination (kube-proxy / the CNI serves the VIP,
    /// outside the mesh). The default, and the map's initial value.
    pub const FAIL_OPEN: u32 = 0;
    /// Refuse the connect (`connect()` fails with EPERM) rather than bypass the mesh's policy.
    pub const FAIL_CLOSED: u32 = 1;
}

/// The level the kernel programs log at, in `MESH_LOG_LEVEL[0]` (an array map the agent writes at
/// run time). Same numbering as aya-log's `Level`; 0 means off, which is the map's initial value.
pub mod log_level {
    /// No events (the default).
    pub const OFF: u32 = 0;
    /// Errors only.
    pub const ERROR: u32 = 1;
    /// Warnings and above.
    pub const WARN: u32 = 2;
    /// Info and above.
    pub const INFO: u32 = 3;
    /// Debug and above: every event the programs have.
    pub const DEBUG: u32 = 4;
    /// Everything.
    pub const TRACE: u32 = 5;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // aya::Pod promises that any byte pattern is a valid value and that the type has no
    // uninitialised bytes: each type below is repr(C), Copy, holds only integers (no pointers,
    // no bool/enum niches) and names its padding as `_pad` fields.
    // SAFETY: repr(C) u32 + u16 + u16 `_pad`: integers only, no implicit padding.
    unsafe impl aya::Pod for Enrollment {}
    // SAFETY: repr(C) u32 + u16 + u16 `_pad`: integers only, no implicit padding.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: repr(C) single u32.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: repr(C) u32 + u16 + u16 `_pad` + u32 + u32: integers only, no implicit padding.
    unsafe impl aya::Pod for OriginalDst {}
    // SAFETY: repr(C) u64 + u32 + u16 + u16 `_pad` (16 bytes, 8-aligned): no implicit padding.
    unsafe impl aya::Pod for TupleKey {}
    // SAFETY: repr(C) u64 + u32 + u32 + u16 + u16 + u32 `_pad` (24 bytes, 8-aligned): no implicit padding.
    unsafe impl aya::Pod for SockKey {}
}
