//! The accept loops: accept errors paused on, the drain honoured, a limited source paced, and
//! each accepted connection handed on with its drain guard.
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::ProxyState;
use crate::settings::FIXED;

/// The next connection on `listener`. Accept errors (the agent out of file descriptors, or
/// memory for socket buffers) are logged and retried after a pause rather than spun on, and
/// never end the listener: the condition is usually transient.
pub async fn accept(listener: &TcpListener, listener_of: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                let hint = match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        " (out of file descriptors: raise the agent's limit, e.g. LimitNOFILE or ulimit -n)"
                    }
                    _ => "",
                };
                tracing::warn!(listener = %listener_of, error = %e, retry_in = ?FIXED.accept_error_pause, "accept failed{hint}; retrying");
                tokio::time::sleep(FIXED.accept_error_pause).await;
            }
        }
    }
}

/// Accepts on `listener` and hands each connection to `handle` until the drain starts; then
/// serves what the kernel had already queued (closing the listener would reset those) and
/// returns, dropping this task's handle on the socket. A successor holding the same socket keeps
/// accepting on it.
///
/// Each connection comes with its drain guard, taken as it leaves the kernel's queue: `handle`
/// moves it into the connection's task, so the drain waits for every connection accepted
/// before it. The listener holds one too until its last sweep of the queue is done.
pub async fn accept_until_drain(
    listener: TcpListener,
    listener_of: &str,
    drain: &crate::drain::Drain,
    handle: impl FnMut(TcpStream, SocketAddr, crate::drain::ConnGuard),
) {
    accept_paced_until_drain(listener, listener_of, drain, None, handle).await;
}

/// [`accept_until_drain`] for one source workload's listener: before each accept it waits for
/// the source's turn ([`super::fair::FairGate::accept_turn`]; only while the source is rate-limited),
/// counting each wait in `mesh_fair_share_total{source_workload,action="connection_paced"}`.
pub async fn accept_paced_until_drain(
    listener: TcpListener,
    listener_of: &str,
    drain: &crate::drain::Drain,
    pace: Option<(&ProxyState, &str)>,
    mut handle: impl FnMut(TcpStream, SocketAddr, crate::drain::ConnGuard),
) {
    use futures_util::FutureExt as _;
    let _sweeping = drain.track();
    loop {
        if let Some((state, source)) = pace {
            tokio::select! {
                biased;
                _ = drain.signaled() => break,
                waited = state.fair.accept_turn(source) => if waited {
                    state.metrics.inc("mesh_fair_share_total", &[("source_workload", source), ("action", "connection_paced")]);
                },
            }
        }
        tokio::select! {
            biased;
            _ = drain.signaled() => break,
            (stream, peer) = accept(&listener, listener_of) => handle(stream, peer, drain.track()),
        }
    }
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        handle(stream, peer, drain.track());
    }
    tracing::debug!(listener = %listener_of, "stopped accepting (draining)");
}
