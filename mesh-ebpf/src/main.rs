//! Kernel side of the mesh.
//!
//! * `mesh_connect4` (cgroup/connect4): when an enrolled workload connects to a mesh service VIP,
//!   rewrite the destination to the node proxy's listener inside the workload's own network
//!   namespace (127.0.0.1:15001) and remember where it really wanted to go, keyed by socket cookie.
//!   `mesh_connect6` does the same for IPv4-mapped IPv6 destinations (dual-stack sockets).
//! * `mesh_sock_ops` (sock_ops): when that connection is established its local port is known; move
//!   the record to a key the proxy can compute from `accept()`: (netns cookie, client ip, client port).
//!
//! * `mesh_sk_msg` (sk_msg, with `--sk-msg-bypass`): both ends of a redirected pod ↔ proxy
//!   connection go into a sockhash when established; a sendmsg on either end then queues its data
//!   straight on the peer socket, skipping TCP/IP and the loopback device. The first data of a
//!   connection can be sent before the proxy's end is established (and in the sockhash); it goes
//!   through TCP, and so does all later data of that socket, because the reader takes the peer
//!   queue before the TCP one and would otherwise read later bytes first. The proxy's upstream
//!   connections to pods on this node join too: the agent announces each socket by cookie before
//!   connecting (`MESH_SK_UPSTREAM`); sock_ops puts it in the sockhash when it is established
//!   and the pod's end when that one is (`MESH_SK_PEERS` carries the expectation between them).
//!
//! Why not a `cgroup/getsockopt` SO_ORIGINAL_DST emulation: the proxy is ours, so it can read the
//! map directly; one program less in the kernel and no per-getsockopt hook on every process of the node.
//!
//! Events an operator needs when a redirect does not happen are logged with aya-log (forwarded by
//! the agent into its `tracing` output under `mesh::ebpf`) behind a run-time level the agent
//! writes into `MESH_LOG_LEVEL`, and each is counted in `MESH_EVENT_STATS` whether logged or not.
//! Messages end in `key=value` words (`cgroup=`, `netns=`) the agent replaces with the pod's name.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, sk_action::SK_PASS, BPF_ANY, BPF_F_CURRENT_NETNS,
        BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_TCP_LISTEN,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sk_lookup_tcp, bpf_sk_release,
    },
    macros::{cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use mesh_common::{
    config, events, key_netns, log_level, stats, Enrollment, OriginalDst, ServiceKey, ServiceValue, SockKey, TupleKey,
    LOOPBACK_V4_BE, MAX_CONNECTIONS, MAX_SERVICES, MAX_WORKLOADS, PROXY_OUTBOUND_PORT,
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

#[map(name = "MESH_EVENT_STATS")]
static MESH_EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(events::COUNT, 0);

/// Entry 0: the level the programs log at (`mesh_common::log_level`), written by the agent at run
/// time. aya-log's own `AYA_LOG_LEVEL` is a read-only global fixed at load time, so it cannot be
/// the switch; an array lookup is what the verifier inlines into a few instructions.
#[map(name = "MESH_LOG_LEVEL")]
static MESH_LOG_LEVEL: Array<u32> = Array::with_max_entries(1, 0);

/// Per-node settings (`mesh_common::config`), written by the agent; zero is the default.
#[map(name = "MESH_CONFIG")]
static MESH_CONFIG: Array<u32> = Array::with_max_entries(config::COUNT, 0);

/// Both ends of each bypassed pod ↔ proxy connection. A socket leaves on close (the kernel's doing).
#[map(name = "MESH_SOCKS")]
static MESH_SOCKS: SockHash<SockKey> = SockHash::with_max_entries(MAX_CONNECTIONS, 0);

/// Sockhash sockets whose data once went through TCP. LRU: an entry outlives its socket (nothing
/// removes it on close), and a later connection with the same key clears it when established.
#[map(name = "MESH_SK_TCP")]
static MESH_SK_TCP: LruHashMap<SockKey, u8> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// The agent's upstream sockets to pods on this node, by cookie, announced before `connect()`.
/// LRU: an announced connect that fails leaves its entry behind.
#[map(name = "MESH_SK_UPSTREAM")]
static MESH_SK_UPSTREAM: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// The pods' ends of announced upstream connections, from the proxy's end being established to
/// the pod's (which sock_ops sees after: the proxy's final ACK establishes it).
#[map(name = "MESH_SK_PEERS")]
static MESH_SK_PEERS: LruHashMap<SockKey, u8> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, idx: u32) {
    if let Some(slot) = map.get_ptr_mut(idx) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array, valid for the whole run
        // (the map outlives the program). Only programs on this CPU write it; a sock_ops run in
        // softirq interrupting this increment can at worst lose one count, never corrupt memory.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count(idx: u32) {
    bump(&MESH_STATS, idx)
}

#[inline(always)]
fn event(idx: u32) {
    bump(&MESH_EVENT_STATS, idx)
}

/// Whether log statements at `level` run. With logging off this lookup and one branch is the
/// whole cost; the aya-log code behind it is never reached.
#[inline(always)]
fn log_on(level: u32) -> bool {
    MESH_LOG_LEVEL.get(0).is_some_and(|l| *l >= level)
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// What connect4/6 do with a connect.
enum Verdict {
    /// Leave it alone: not an enrolled pod calling a mesh service, a map failure, or fail open.
    Pass,
    /// Rewrite the destination to 127.0.0.1 and this port (network order, as `user_port` holds it).
    Redirect(u32),
    /// Fail closed: the redirect target has no listener and the node is configured to refuse.
    Refuse,
}

// The program entry points are not `pub`: aya's program macros drop their doc attributes, so a
// `pub fn` would trip `missing_docs`, and `#[no_mangle]` (which the macros add) exports the
// symbol whatever its visibility.

/// IPv4 connects of enrolled pods to a service VIP:port go to the in-pod proxy listener.
#[cgroup_sock_addr(connect4)]
fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    // 1 lets the connect proceed, 0 makes it fail with EPERM. Only a configured fail-closed
    // refuses; any other failure of the program leaves the connect alone, so a mesh bug never
    // turns into a failed connect.
    match try_connect4(&ctx) {
        Ok(Verdict::Refuse) => 0,
        _ => 1,
    }
}

/// Dual-stack sockets (Java, some Node.js setups) reach IPv4 VIPs as `::ffff:a.b.c.d`; those are
/// redirected to `::ffff:127.0.0.1`, which the kernel hands to the proxy's IPv4 listener.
/// Native IPv6 service VIPs are not captured.
#[cgroup_sock_addr(connect6)]
fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(Verdict::Refuse) => 0,
        _ => 1,
    }
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) -> Result<Verdict, ()> {
    // SAFETY: the kernel passes a valid, exclusively owned bpf_sock_addr for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET6 {
        return Ok(Verdict::Pass);
    }
    let (w0, w1, w2, w3) = (sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]);
    if w0 != 0 || w1 != 0 || w2 != 0xffffu32.to_be() {
        return Ok(Verdict::Pass);
    }
    let verdict = redirect(ctx, w3, sa.user_port)?;
    if let Verdict::Redirect(port) = verdict {
        sa.user_ip6[3] = LOOPBACK_V4_BE;
        sa.user_port = port;
    }
    Ok(verdict)
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Result<Verdict, ()> {
    // SAFETY: the kernel passes a valid, exclusively owned bpf_sock_addr for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET {
        return Ok(Verdict::Pass);
    }
    let verdict = redirect(ctx, sa.user_ip4, sa.user_port)?;
    if let Verdict::Redirect(port) = verdict {
        sa.user_ip4 = LOOPBACK_V4_BE;
        sa.user_port = port;
    }
    Ok(verdict)
}

/// Whether a TCP socket listens on 127.0.0.1:`port` (host order) in the caller's network
/// namespace: the node proxy's in-pod listener, which is closed when the agent dies. The lookup
/// takes a reference on the socket it finds, released here on every path.
#[inline(always)]
fn proxy_listening(ctx: &SockAddrContext, port: u16) -> bool {
    // SAFETY: an all-zero bpf_sock_tuple is a valid value (plain integers in a union).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // Remote 0.0.0.0:0 matches no established socket, so the lookup can only find a listener.
    tuple.__bindgen_anon_1.ipv4.daddr = LOOPBACK_V4_BE;
    tuple.__bindgen_anon_1.ipv4.dport = port.to_be();
    // SAFETY: the context pointer is the program's own; the tuple is a live stack value of the
    // size passed (its IPv4 member: the helper picks the family from the size); BPF_F_CURRENT_NETNS
    // looks in the connecting socket's netns; flags must be 0.
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.sock_addr as *mut _,
            &mut tuple,
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
            BPF_F_CURRENT_NETNS as u32 as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: non-null: a referenced bpf_sock the verifier lets us read until it is released.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took, exactly once.
    unsafe { bpf_sk_release(sk as *mut _) };
    state == BPF_TCP_LISTEN
}

/// Decides whether this connect is an enrolled workload calling a mesh service; if so records
/// the original destination and returns the proxy port (as `user_port` wants it, network order).
/// With no listener there (the agent is dead, or the pod's listener is gone) a redirect would be
/// refused by the kernel: the node's fail mode decides between the original destination and EPERM.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, dst_ip: u32, user_port: u32) -> Result<Verdict, ()> {
    count(stats::CONNECT_SEEN);
    // SAFETY: helper without arguments, allowed for cgroup sock_addr programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once; a concurrent delete cannot free it while this
    // program runs (RCU).
    let enrollment = match unsafe { MESH_ENROLLED.get(cgroup_id) } {
        Some(e) => *e,
        None => return Ok(Verdict::Pass),
    };
    let dst_port = u16::from_be(user_port as u16);
    let key = ServiceKey { ip4: dst_ip, port: dst_port, _pad: 0 };
    // SAFETY: as above, copied out at once under RCU.
    let service = match unsafe { MESH_SERVICES.get(key) } {
        Some(s) => *s,
        None => {
            event(events::CONNECT_NO_SERVICE);
            if log_on(log_level::DEBUG) {
                debug!(
                    ctx,
                    "connect not redirected: no service entry for {:i}:{} cgroup={}",
                    u32::from_be(dst_ip),
                    dst_port,
                    cgroup_id
                );
            }
            return Ok(Verdict::Pass);
        }
    };
    if !proxy_listening(ctx, enrollment.proxy_port) {
        // Checked before the record is written: a fail-open connect leaves nothing behind.
        return Ok(no_proxy(ctx, enrollment.proxy_port, dst_ip, dst_port, cgroup_id));
    }
    let orig = OriginalDst {
        ip4: dst_ip,
        port: dst_port,
        _pad: 0,
        workload_id: enrollment.workload_id,
        service_id: service.service_id,
    };
    record_original(ctx, &orig, cgroup_id)?;
    count(stats::CONNECT_REDIRECTED);
    if log_on(log_level::DEBUG) {
        debug!(
            ctx,
            "connect redirected to the node proxy: {:i}:{} service_id={} cgroup={}",
            u32::from_be(dst_ip),
            dst_port,
            service.service_id,
            cgroup_id
        );
    }
    Ok(Verdict::Redirect(enrollment.proxy_port.to_be() as u32))
}

/// The verdict for a connect with no proxy listening in the pod: the node's fail mode picks
/// the original destination (open) or EPERM (closed).
#[inline(always)]
fn no_proxy(ctx: &SockAddrContext, proxy_port: u16, dst_ip: u32, dst_port: u16, cgroup_id: u64) -> Verdict {
    let closed = MESH_CONFIG.get(config::FAIL_MODE).is_some_and(|m| *m == config::FAIL_CLOSED);
    event(if closed { events::FAIL_CLOSED } else { events::FAIL_OPEN });
    if log_on(log_level::DEBUG) {
        if closed {
            debug!(
                ctx,
                "no node proxy listening on 127.0.0.1:{}: connect to {:i}:{} refused (fail closed) cgroup={}",
                proxy_port,
                u32::from_be(dst_ip),
                dst_port,
                cgroup_id
            );
        } else {
            debug!(
                ctx,
                "no node proxy listening on 127.0.0.1:{}: connect to {:i}:{} not redirected (fail open) cgroup={}",
                proxy_port,
                u32::from_be(dst_ip),
                dst_port,
                cgroup_id
            );
        }
    }
    if closed {
        Verdict::Refuse
    } else {
        Verdict::Pass
    }
}

/// Records the connect's original destination under its socket cookie, where sock_ops moves it
/// once the connection is established. A failed insert means no redirect: the connect goes where
/// it was going, which is the safe failure.
#[inline(always)]
fn record_original(ctx: &SockAddrContext, orig: &OriginalDst, cgroup_id: u64) -> Result<(), ()> {
    // SAFETY: ctx.sock_addr is the program's valid context pointer, which this helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    if let Err(err) = MESH_ORIG_BY_COOKIE.insert(cookie, *orig, 0) {
        event(events::MAP_INSERT_FAILED);
        if log_on(log_level::DEBUG) {
            debug!(
                ctx,
                "connect not redirected: MESH_ORIG_BY_COOKIE insert failed (errno {}) for {:i}:{} cgroup={}",
                -(err as i64),
                u32::from_be(orig.ip4),
                orig.port,
                cgroup_id
            );
        }
        return Err(());
    }
    Ok(())
}

/// Moves a redirected connection's original destination to the key the proxy computes from
/// `accept()`, once the connection is established.
#[sock_ops]
fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        if !upstream_established(&ctx) {
            let _ = try_established(&ctx);
        }
    } else if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // The proxy's end of a pod's connection to its in-pod listener, or a pod's end of an
        // upstream connection the agent announced.
        if ctx.local_ip4() == LOOPBACK_V4_BE {
            if ctx.local_port() == PROXY_OUTBOUND_PORT as u32 {
                bypass(&ctx);
            }
        } else {
            let key = sock_key(&ctx);
            // SAFETY: the value is only tested for presence; RCU keeps it valid for the run.
            if unsafe { MESH_SK_PEERS.get(key) }.is_some() {
                let _ = MESH_SK_PEERS.remove(key);
                if bypass(&ctx) {
                    count(stats::UPSTREAM_PEERS_BYPASSED);
                }
            }
        }
    }
    0
}

/// A sock_ops or sk_msg context's remote port, host order. The kernel hands it in network order,
/// in the upper 16 bits on little-endian hosts; either half is taken, whichever holds it.
#[inline(always)]
fn remote_port(raw: u32) -> u16 {
    let be = if raw >> 16 != 0 { raw >> 16 } else { raw };
    u16::from_be(be as u16)
}

/// A socket's sockhash key from a sock_ops or sk_msg context's fields (the same layout in both):
/// one function, so sock_ops inserts under exactly the key sk_msg looks up.
#[inline(always)]
fn key_of(netns_cookie: u64, local_ip4: u32, remote_ip4: u32, local_port: u32, raw_remote_port: u32) -> SockKey {
    SockKey {
        netns_cookie: key_netns(local_ip4, remote_ip4, netns_cookie),
        local_ip4,
        remote_ip4,
        local_port: local_port as u16,
        remote_port: remote_port(raw_remote_port),
        _pad: 0,
    }
}

/// An established socket's sockhash key.
#[inline(always)]
fn sock_key(ctx: &SockOpsContext) -> SockKey {
    // SAFETY: ctx.ops is the program's valid context pointer, which this helper takes.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) };
    key_of(netns_cookie, ctx.local_ip4(), ctx.remote_ip4(), ctx.local_port(), ctx.remote_port())
}

/// The proxy's end of an upstream connection the agent announced: into the sockhash, and its
/// peer expected. Returns whether the socket was one (then it is not a pod's redirected connect).
#[inline(always)]
fn upstream_established(ctx: &SockOpsContext) -> bool {
    // SAFETY: ctx.ops is the program's valid context pointer, which this helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    // SAFETY: the value is only tested for presence; RCU keeps it valid for the run.
    if unsafe { MESH_SK_UPSTREAM.get(cookie) }.is_none() {
        return false;
    }
    let _ = MESH_SK_UPSTREAM.remove(cookie);
    // Expected before this end joins: the pod's end is established by the ACK this end sends
    // after this program returns.
    if MESH_SK_PEERS.insert(sock_key(ctx).peer(), 1, 0).is_err() {
        event(events::MAP_INSERT_FAILED);
    }
    bypass(ctx);
    true
}

/// Puts an established socket in the sockhash when the bypass is on; whether it did. Failing
/// leaves the connection to TCP, which is always correct.
#[inline(always)]
fn bypass(ctx: &SockOpsContext) -> bool {
    if !MESH_CONFIG.get(config::SK_MSG_BYPASS).is_some_and(|on| *on != 0) {
        return false;
    }
    let key = sock_key(ctx);
    // A connection that reuses a closed one's addresses starts on the bypass again.
    let _ = MESH_SK_TCP.remove(key);
    // SAFETY: ctx.ops points at the kernel's bpf_sock_ops for this run, valid and not aliased
    // by anything else the program holds; the helper only reads the socket from it.
    let ops = unsafe { &mut *ctx.ops };
    if MESH_SOCKS.update(key, ops, BPF_ANY as u64).is_ok() {
        count(stats::SOCKETS_BYPASSED);
        true
    } else {
        event(events::PROGRAM_ERROR);
        false
    }
}

/// Hands a bypassed socket's sendmsg to the peer's receive queue, unless this socket's data has
/// gone through TCP before (see the module comment). Always passes: data that cannot be redirected
/// goes through TCP.
#[sk_msg]
fn mesh_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel passes a valid sk_msg_md for the program's run.
    let md = unsafe { &*ctx.msg };
    // SAFETY: ctx.msg is the program's valid context pointer, which this helper takes.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.msg as *mut _) };
    let me = key_of(netns_cookie, md.local_ip4, md.remote_ip4, md.local_port, md.remote_port);
    // SAFETY: the value is only tested for presence; RCU keeps it valid for the run.
    if unsafe { MESH_SK_TCP.get(me) }.is_some() {
        count(stats::SK_MSG_TCP);
        return SK_PASS;
    }
    if MESH_SOCKS.redirect_msg(&ctx, me.peer(), BPF_F_INGRESS as u64) == SK_PASS as i64 {
        count(stats::SK_MSG_REDIRECTED);
        return SK_PASS;
    }
    // The peer is not in the sockhash (not established yet, or already closed): this data goes
    // through TCP, so everything after it must too. A failed insert (the LRU map is never full)
    // would let a later sendmsg overtake this one; count it where an operator looks.
    if MESH_SK_TCP.insert(me, 1, 0).is_err() {
        event(events::MAP_INSERT_FAILED);
    }
    count(stats::SK_MSG_TCP);
    SK_PASS
}

#[inline(always)]
fn try_established(ctx: &SockOpsContext) -> Result<(), ()> {
    // AF_INET6 too: a v4-mapped connection reports its IPv4 addresses in local_ip4.
    if ctx.family() != AF_INET && ctx.family() != AF_INET6 {
        return Ok(());
    }
    // SAFETY: ctx.ops is the program's valid context pointer, which this helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    // SAFETY: the value is copied out at once; a concurrent delete cannot free it while this
    // program runs (RCU).
    let orig = match unsafe { MESH_ORIG_BY_COOKIE.get(cookie) } {
        Some(o) => *o,
        None => {
            orig_missing(ctx);
            return Ok(());
        }
    };
    // SAFETY: ctx.ops is the program's valid context pointer, which this helper takes.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) };
    let key = TupleKey { netns_cookie, src_ip4: ctx.local_ip4(), src_port: ctx.local_port() as u16, _pad: 0 };
    if let Err(err) = MESH_ORIG_BY_TUPLE.insert(key, orig, 0) {
        // The proxy will find no record and fall back to SO_ORIGINAL_DST, which fails for a
        // connect4 redirect: this connection cannot be routed, so say why.
        event(events::MAP_INSERT_FAILED);
        if log_on(log_level::DEBUG) {
            debug!(
                ctx,
                "original destination {:i}:{} lost: MESH_ORIG_BY_TUPLE insert failed (errno {}) netns={}",
                u32::from_be(orig.ip4),
                orig.port,
                -(err as i64),
                netns_cookie
            );
        }
        return Err(());
    }
    if let Err(err) = MESH_ORIG_BY_COOKIE.remove(cookie) {
        // Harmless (the LRU map evicts it) but unexpected right after a successful lookup.
        event(events::PROGRAM_ERROR);
        if log_on(log_level::DEBUG) {
            debug!(ctx, "MESH_ORIG_BY_COOKIE remove failed (errno {}) netns={}", -(err as i64), netns_cookie);
        }
    }
    count(stats::ESTABLISHED_INDEXED);
    bypass(ctx);
    Ok(())
}

/// An established connection to the proxy's in-pod listener with no record: connect4 did not
/// record it (a direct connect to 127.0.0.1:15001, an iptables REDIRECT) or the record was lost
/// (evicted from the LRU map before the handshake completed).
#[inline(always)]
fn orig_missing(ctx: &SockOpsContext) {
    let remote_port = remote_port(ctx.remote_port());
    if ctx.remote_ip4() != LOOPBACK_V4_BE || remote_port != PROXY_OUTBOUND_PORT {
        return;
    }
    event(events::ORIG_DST_MISSING);
    if log_on(log_level::DEBUG) {
        // SAFETY: ctx.ops is the program's valid context pointer, which this helper takes.
        let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) };
        debug!(
            ctx,
            "no original-destination record for connection 127.0.0.1:{} -> 127.0.0.1:{} netns={}",
            ctx.local_port(),
            remote_port,
            netns_cookie
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Cargo.toml says `Apache-2.0 OR GPL-2.0-only`. The kernel only reads whether the string is one of
/// its GPL-compatible names (it has no Apache dual-licence entry); "GPL v2" is the GPL-2.0 side.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 7] = *b"GPL v2\0";
