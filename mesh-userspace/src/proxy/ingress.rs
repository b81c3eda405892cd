//! The ingress listeners: NodePort and Gateway ports on the node, with no source workload.
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::Instrument;

use super::{accept_until_drain, dispatch::serve_service_conn, http::Entry, ProxyState, Source};
use crate::registry::Service;

/// Runs an accepted connection's task, holding its drain guard until the task ends.
fn spawn_counted(served: impl std::future::Future<Output = ()> + Send + 'static, in_flight: crate::drain::ConnGuard) {
    tokio::spawn(async move {
        served.await;
        drop(in_flight)
    });
}

/// Ingress listener for a NodePort service: no source workload, destination fixed.
pub async fn serve_nodeport(state: Arc<ProxyState>, listener: TcpListener, service: Arc<Service>, port: u16) {
    let st = state.clone();
    let name = service.name.clone();
    accept_until_drain(listener, &name, &st.drain, |stream, peer, in_flight| {
        let state = state.clone();
        let service = service.clone();
        let span = tracing::info_span!("ingress", nodeport_service = %service.name, peer = %peer);
        let served = serve_service_conn(state, Source::new(None, Some(peer), None), service, port, stream);
        spawn_counted(served.instrument(span), in_flight);
    })
    .await;
}

/// Ingress listener for a Gateway port (an Istio Gateway's servers, a Gateway API Gateway's
/// listeners).
pub async fn serve_gateway(state: Arc<ProxyState>, listener: TcpListener, name: String, namespace: String, port: u16) {
    let st = state.clone();
    accept_until_drain(listener, &name, &st.drain, |stream, peer, in_flight| {
        let state = state.clone();
        let entry = Entry::Gateway { name: name.clone(), namespace: namespace.clone(), port };
        let span = tracing::info_span!("gateway", gateway = %name, peer = %peer);
        // TLS-terminated when the live table has certificates for the port (looked up per
        // connection, so a rotated Secret applies to the next handshake), else plain HTTP.
        let served = super::tls::serve_gateway_conn(state, Source::new(None, Some(peer), None), entry, stream);
        spawn_counted(served.instrument(span), in_flight);
    })
    .await;
}
