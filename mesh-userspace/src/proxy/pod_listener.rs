//! The in-pod listeners: connections a pod's `connect()` was redirected from, their original
//! destination recovered and their source the pod whose listener accepted.
use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{accept_paced_until_drain, dispatch::serve_service_conn, limits, telemetry, ProxyState, Source};
use crate::registry::Workload;

/// Accepts on the outbound listener inside `workload`'s network namespace until the listener fails.
/// `workload` is updated by the agent when the pod changes (its labels feed `sourceLabels`).
pub async fn serve_pod_listener(
    state: Arc<ProxyState>,
    workload: Arc<ArcSwap<Workload>>,
    listener: TcpListener,
    netns_cookie: u64,
) {
    let name = workload.load().name.clone();
    let st = state.clone();
    // One pod's listener is one source workload: its caps are shared by all its connections,
    // the node's flags unless the pod's annotations set its own.
    let caps = limits::SourceCaps::new(&state.limits);
    caps.apply(&state.limits, &workload.load().caps);
    state.sources.lock().unwrap_or_else(|e| e.into_inner()).push((name.clone(), Arc::downgrade(&caps)));
    // The pod's metric labels, resolved again only when the agent publishes a changed pod.
    let mut labels: Option<(Arc<Workload>, Arc<crate::metrics::PeerLabels>)> = None;
    // A pod flooding connects while the loop is behind waits in its own backlog (`fair.rs`).
    let paced = (&*st, name.as_str());
    accept_paced_until_drain(listener, &name, &st.drain, Some(paced), |stream, peer, in_flight| {
        let workload = workload.load_full();
        let pod_labels = match &labels {
            Some((w, l)) if Arc::ptr_eq(w, &workload) => l.clone(),
            _ => {
                // The pod changed (labels or annotations): its caps may have too.
                caps.apply(&state.limits, &workload.caps);
                let l = Arc::new(crate::metrics::PeerLabels::of(&workload));
                labels = Some((workload.clone(), l.clone()));
                l
            }
        };
        if caps.refusing() {
            // The overload manager is shedding this source: its new connections are closed at
            // once, before they hold anything.
            state.metrics.inc(
                "mesh_overload_shed_total",
                &[("source_workload", &workload.name), ("action", "connection_refused")],
            );
            drop(stream);
            return;
        }
        let Some(conn_slot) = caps.connection() else {
            // Over its connection cap: closed at once, so one pod's connection flood holds no
            // more of the proxy than its cap.
            state.metrics.inc(
                "mesh_downstream_overflow_total",
                &[("source_workload", &workload.name), ("limit", "connections")],
            );
            drop(stream);
            return;
        };
        let caps = caps.clone();
        let span = tracing::info_span!("conn", src = %workload.name, peer = %peer);
        let state = state.clone();
        let conn = Redirected { stream, peer, workload, caps, pod_labels };
        tokio::spawn(
            async move {
                let _held = (in_flight, conn_slot);
                serve_redirected(state, netns_cookie, conn).await;
            }
            .instrument(span),
        );
    })
    .await;
}

/// A connection a pod's listener accepted, with the pod as it was then.
struct Redirected {
    stream: TcpStream,
    peer: SocketAddr,
    workload: Arc<Workload>,
    caps: Arc<limits::SourceCaps>,
    pod_labels: Arc<crate::metrics::PeerLabels>,
}

/// Serves one redirected connection: its original destination (the eBPF maps, else conntrack)
/// names the service, and the pod that connected is its source.
async fn serve_redirected(state: Arc<ProxyState>, netns_cookie: u64, conn: Redirected) {
    let Redirected { stream, peer, workload, caps, pod_labels } = conn;
    let SocketAddr::V4(peer4) = peer else {
        tracing::warn!("IPv6 client on an IPv4 listener; dropping");
        return;
    };
    // connect4 records the original destination of what it rewrote; a connection an
    // iptables REDIRECT rule in the pod sent here (Istio's iptables mode, and the
    // benchmark's comparison) has it in conntrack instead.
    let Some(orig) = state.original_dst.take(netns_cookie, peer4).or_else(|| conntrack_original_dst(&stream)) else {
        // Anything else dialled 127.0.0.1:15001 directly and has no meaningful destination.
        tracing::warn!("no original destination recorded for this connection; closing");
        state.metrics.inc("mesh_connections_rejected_total", &[("reason", "no_original_dst")]);
        return;
    };
    let service = state.registry.load().service_by_vip(*orig.ip(), orig.port()).cloned();
    let Some(service) = service else {
        tracing::warn!(dst = %orig, "original destination is no longer a mesh service; closing");
        state.metrics.inc("mesh_connections_rejected_total", &[("reason", "unknown_service")]);
        return;
    };
    let source = Source {
        workload: Some(workload),
        peer: Some(peer),
        caps: Some(caps),
        telemetry: telemetry::ConnTelemetry::new(pod_labels),
    };
    serve_service_conn(state, source, service, orig.port(), stream).await;
}

/// The pre-NAT destination of a connection redirected by netfilter (`SO_ORIGINAL_DST`); None when
/// conntrack has no NAT entry for it, e.g. a client that dialled the listener directly.
fn conntrack_original_dst(stream: &TcpStream) -> Option<SocketAddrV4> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_in is plain old data, zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, which is that large; the fd is
    // a live socket owned by `stream`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let dst = SocketAddrV4::new(u32::from_be(addr.sin_addr.s_addr).into(), u16::from_be(addr.sin_port));
    // Without NAT conntrack reports the listener itself: not an original destination.
    (dst.port() != stream.local_addr().ok()?.port() || !dst.ip().is_loopback()).then_some(dst)
}
