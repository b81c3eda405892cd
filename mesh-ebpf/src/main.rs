//! Kernel side of the mesh.
//!
//! * `mesh_connect4` (cgroup/connect4): when an enrolled workload connects to a mesh service VIP,
//!   rewrite the destination to the node proxy's listener inside the workload's own network
//!   namespace (127.0.0.1:15001) and remember where it really wanted to go, keyed by socket cookie.
//!   `mesh_connect6` does the same for IPv4-mapped IPv6 destinations (dual-stack sockets).
//! * `mesh_sock_ops` (sock_ops): when that connection is established its local port is known; move
//!   the record to a key the proxy can compute from `accept()`: (netns cookie, client ip, client port).
//!
//! Why not a `cgroup/getsockopt` SO_ORIGINAL_DST emulation: the proxy is ours, so it can read the
//! map directly; one program less in the kernel and no per-getsockopt hook on every process of the node.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext},
};
use mesh_common::{
    stats, Enrollment, OriginalDst, ServiceKey, ServiceValue, TupleKey, LOOPBACK_V4_BE, MAX_CONNECTIONS, MAX_SERVICES,
    MAX_WORKLOADS,
};

/// cgroup v2 id of an enrolled pod → its enrollment. Owned by the agent.
#[map(name = "MESH_ENROLLED")]
static MESH_ENROLLED: HashMap<u64, Enrollment> = HashMap::with_max_entries(MAX_WORKLOADS, 0);

/// Service VIP:port → service. Owned by the agent.
#[map(name = "MESH_SERVICES")]
static MESH_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "MESH_ORIG_BY_COOKIE")]
static MESH_ORIG_BY_COOKIE: LruHashMap<u64, OriginalDst> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "MESH_ORIG_BY_TUPLE")]
static MESH_ORIG_BY_TUPLE: LruHashMap<TupleKey, OriginalDst> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map(name = "MESH_STATS")]
static MESH_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[inline(always)]
fn count(idx: u32) {
    if let Some(slot) = MESH_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    // Returning 1 always lets the connect proceed; a mesh bug must never turn into a failed connect.
    let _ = try_connect4(&ctx);
    1
}

/// Dual-stack sockets (Java, some Node.js setups) reach IPv4 VIPs as `::ffff:a.b.c.d`; those are
/// redirected to `::ffff:127.0.0.1`, which the kernel hands to the proxy's IPv4 listener.
/// Native IPv6 service VIPs are not captured.
#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect6(&ctx);
    1
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET6 {
        return Ok(());
    }
    let (w0, w1, w2, w3) = (sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]);
    if w0 != 0 || w1 != 0 || w2 != 0xffffu32.to_be() {
        return Ok(());
    }
    if let Some(port) = redirect(ctx, w3, sa.user_port)? {
        sa.user_ip6[3] = LOOPBACK_V4_BE;
        sa.user_port = port;
    }
    Ok(())
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET {
        return Ok(());
    }
    if let Some(port) = redirect(ctx, sa.user_ip4, sa.user_port)? {
        sa.user_ip4 = LOOPBACK_V4_BE;
        sa.user_port = port;
    }
    Ok(())
}

/// Decides whether this connect is an enrolled workload calling a mesh service; if so records
/// the original destination and returns the proxy port (as `user_port` wants it, network order).
#[inline(always)]
fn redirect(ctx: &SockAddrContext, dst_ip: u32, user_port: u32) -> Result<Option<u32>, ()> {
    count(stats::CONNECT_SEEN);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let enrollment = match unsafe { MESH_ENROLLED.get(&cgroup_id) } {
        Some(e) => *e,
        None => return Ok(None),
    };
    let dst_port = u16::from_be(user_port as u16);
    let key = ServiceKey { ip4: dst_ip, port: dst_port, _pad: 0 };
    let service = match unsafe { MESH_SERVICES.get(&key) } {
        Some(s) => *s,
        None => return Ok(None),
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let orig = OriginalDst {
        ip4: dst_ip,
        port: dst_port,
        _pad: 0,
        workload_id: enrollment.workload_id,
        service_id: service.service_id,
    };
    MESH_ORIG_BY_COOKIE.insert(&cookie, &orig, 0).map_err(|_| ())?;
    count(stats::CONNECT_REDIRECTED);
    Ok(Some(enrollment.proxy_port.to_be() as u32))
}

#[sock_ops]
pub fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let _ = try_established(&ctx);
    } else if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // Nothing to do yet; present so future flags (sockhash bypass) have a hook point.
    }
    0
}

#[inline(always)]
fn try_established(ctx: &SockOpsContext) -> Result<(), ()> {
    // AF_INET6 too: a v4-mapped connection reports its IPv4 addresses in local_ip4.
    if ctx.family() != AF_INET && ctx.family() != AF_INET6 {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    let orig = match unsafe { MESH_ORIG_BY_COOKIE.get(&cookie) } {
        Some(o) => *o,
        None => return Ok(()),
    };
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) };
    let key = TupleKey { netns_cookie, src_ip4: ctx.local_ip4(), src_port: ctx.local_port() as u16, _pad: 0 };
    MESH_ORIG_BY_TUPLE.insert(&key, &orig, 0).map_err(|_| ())?;
    let _ = MESH_ORIG_BY_COOKIE.remove(&cookie);
    count(stats::ESTABLISHED_INDEXED);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
