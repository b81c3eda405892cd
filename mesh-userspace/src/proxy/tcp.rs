//! The L4 relay: a connection to a TCP port carried to the endpoint the route and the load
//! balancer pick.
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{telemetry, ProxyState, Source};
use crate::registry::Service;

pub(super) async fn serve_tcp(
    state: Arc<ProxyState>,
    source: Source,
    service: Arc<Service>,
    port: u16,
    stream: TcpStream,
) {
    // A byte stream has no message boundary to stop at: it runs until it ends or the drain
    // deadline ends the process.
    let cluster = {
        let table = state.routes.load();
        table.route_tcp(source.workload.as_deref(), &service, port, &mut rand::thread_rng())
    };
    let src = source.workload.as_ref().map(|w| w.name.clone()).unwrap_or_else(|| "ingress".into());
    let Some(cluster) = cluster else {
        tracing::warn!(service = %service.name, port, "no TCP route; closing");
        return;
    };
    // Metrics and the access log line: recorded when `record` is dropped, whichever way this
    // function ends.
    let mut record = telemetry::TcpRecord::new(state.clone(), &source, &cluster);
    let Some(picked) = state.lb.pick(&cluster, None, &[]) else {
        tracing::warn!(cluster = %cluster.name, "no healthy upstream for TCP connection; closing");
        state.metrics.inc(
            "mesh_tcp_connections_total",
            &[("source_workload", &src), ("destination_service", &service.name), ("result", "no_endpoint")],
        );
        record.refused(crate::metrics::Flags::UH);
        return;
    };
    record.set_endpoint(&cluster, picked.endpoint.addr);
    let mut upstream = match state.sk_msg.connect(picked.endpoint.addr).await {
        Ok(s) => s,
        Err(e) => {
            state.lb.report(&cluster, &picked, None);
            tracing::warn!(endpoint = %picked.endpoint.addr, error = %e, "TCP upstream connect failed");
            state.metrics.inc(
                "mesh_tcp_connections_total",
                &[("source_workload", &src), ("destination_service", &service.name), ("result", "connect_failure")],
            );
            record.refused(crate::metrics::Flags::UF);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    state.metrics.inc(
        "mesh_tcp_connections_total",
        &[("source_workload", &src), ("destination_service", &service.name), ("result", "ok")],
    );
    record.connected();
    let mut client = telemetry::CountedIo::new(stream, record.bytes());
    let relay = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(relay);
    // The byte counters while the connection is open, as Istio's stats filter reports them.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + telemetry::TCP_REPORTING_INTERVAL,
        telemetry::TCP_REPORTING_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let relayed = loop {
        tokio::select! {
            r = &mut relay => break r,
            _ = tick.tick(), if record.reporting() => record.report(),
        }
    };
    match relayed {
        Ok((up, down)) => {
            tracing::info!(endpoint = %picked.endpoint.addr, bytes_up = up, bytes_down = down, "tcp connection closed")
        }
        Err(e) => tracing::debug!(error = %e, "tcp connection ended with error"),
    }
}
