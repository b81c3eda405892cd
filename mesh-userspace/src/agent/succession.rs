//! Hitless handover, both sides: once ready, this agent tells its predecessor to drain and
//! listens for a successor; a successor's request is answered with every listening socket and
//! the eBPF objects, and the main loop is told when the successor is ready.
use std::os::fd::OwnedFd;

use super::{node::NodeReconciler, AgentArgs};
use crate::{
    ebpf::MeshEbpf,
    handover::{self, Role},
};

/// Once the node is reconciled for the first time: inherited descriptors nobody claimed are
/// closed, the predecessor (if any) is told to drain, and this agent listens for its own successor.
pub(super) fn became_ready(
    args: &AgentArgs,
    node: &mut NodeReconciler,
    predecessor: &mut Option<handover::Predecessor>,
    server: &mut Option<handover::Server>,
) {
    if server.is_some() {
        return;
    }
    node.inherited_done();
    if let Some(p) = predecessor.take() {
        match p.ready() {
            Ok(()) => tracing::info!("took over from the previous agent; it is draining"),
            Err(e) => tracing::warn!(error = %e, "cannot tell the previous agent to drain (gone already?)"),
        }
    }
    match handover::Server::bind(&args.handover_socket) {
        Ok(s) => {
            tracing::info!(socket = %s.path().display(), "ready to hand over to a successor");
            *server = Some(s);
        }
        Err(e) => tracing::warn!(error = %e, "no hitless handover possible: cannot listen for a successor"),
    }
}

/// Everything a successor needs: every listening socket, and the eBPF maps and links.
pub(super) fn offer(
    node: &NodeReconciler,
    bpf: &MeshEbpf,
    admin: &OwnedFd,
    layout: u32,
) -> std::io::Result<handover::Offer> {
    let mut items = node.export()?;
    items.push((Role::Admin, admin.try_clone()?));
    items.extend(bpf.export().map_err(std::io::Error::other)?);
    Ok(handover::Offer { map_layout: layout, items })
}

/// Sends the offer and waits (in the background: this agent keeps serving) for the successor
/// to say it is ready; then the main loop is told to drain.
pub(super) fn hand_over(
    stream: std::os::unix::net::UnixStream,
    offer: handover::Offer,
    done: tokio::sync::mpsc::Sender<bool>,
) {
    tokio::spawn(async move {
        let descriptors = offer.items.len();
        let sent = tokio::task::spawn_blocking(move || handover::send(&stream, &offer).map(|()| stream)).await;
        let stream = match sent {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "handover to a new agent failed; carrying on");
                let _ = done.send(false).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "handover thread failed; carrying on");
                let _ = done.send(false).await;
                return;
            }
        };
        tracing::info!(descriptors, "handed listeners and eBPF objects to a new agent; serving until it is ready");
        if handover::wait_ready(stream).await {
            let _ = done.send(true).await;
        } else {
            tracing::warn!("the new agent went away before it was ready; carrying on");
            let _ = done.send(false).await;
        }
    });
}
