//! The agent's admin HTTP server (`--admin`, default `127.0.0.1:15020`): liveness, readiness,
//! Prometheus metrics (also at `/stats/prometheus`, the path Istio's scrape annotations name).
//!
//! It only reads shared state (the proxy's tables, the kernel counters, what the agent publishes
//! for it), so a request here never blocks the proxy or the reconciler.
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use http::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::{
    ebpf::KernelStats,
    proxy::{
        self,
        http::{full, ProxyBody},
        ProxyState,
    },
};

/// Where the kernel programs' counters come from: the loaded eBPF objects in the agent, a fixed
/// value in tests (which run without root or a kernel program).
pub trait KernelCounters: Send + Sync + 'static {
    /// The programs' counters now.
    fn stats(&self) -> KernelStats;
}

impl KernelCounters for crate::ebpf::MeshEbpf {
    fn stats(&self) -> KernelStats {
        crate::ebpf::MeshEbpf::stats(self)
    }
}

/// What the admin server reads.
#[derive(Clone)]
pub struct Admin {
    /// The proxy: route table, registry, load-balancer state, counters.
    pub state: Arc<ProxyState>,
    /// The kernel programs' counters.
    pub kernel: Arc<dyn KernelCounters>,
    /// Set once the node has been reconciled to a complete registry.
    pub ready: Arc<AtomicBool>,
}

/// The paths served, for the 404 answer.
const ENDPOINTS: &str = "endpoints: /healthz /ready /metrics /stats/prometheus\n";

/// Serves `listener` until the proxy drains.
pub async fn serve(admin: Admin, listener: TcpListener) {
    let drain = admin.state.clone();
    proxy::accept_until_drain(listener, "admin", &drain.drain, |stream, _| {
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    })
    .await;
}

/// Answers one admin request.
pub fn handle<B>(admin: &Admin, req: &http::Request<B>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/healthz" => Response::new(full("ok\n")),
        "/ready" if admin.ready.load(Ordering::Relaxed) => Response::new(full("ok\n")),
        "/ready" => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first complete registry (Kubernetes discovery still listing?)\n",
        ),
        // Istio's scrape annotations point Prometheus at /stats/prometheus (Envoy's admin path).
        "/metrics" | "/stats/prometheus" => Response::new(full(metrics(&admin.state, admin.kernel.as_ref()))),
        _ => status(StatusCode::NOT_FOUND, ENDPOINTS),
    }
}

/// The Prometheus text served at `/metrics` and `/stats/prometheus`.
fn metrics(state: &ProxyState, bpf: &dyn KernelCounters) -> String {
    let k = bpf.stats();
    let gauges = state.source_gauges();
    state.metrics.render(&[
        ("mesh_kernel_connects_seen_total", k.connects_seen),
        ("mesh_kernel_connects_redirected_total", k.connects_redirected),
        ("mesh_kernel_connections_indexed_total", k.established_indexed),
        ("mesh_kernel_connects_no_service_total", k.connects_no_service),
        ("mesh_kernel_orig_dst_missing_total", k.orig_dst_missing),
        ("mesh_kernel_map_insert_failures_total", k.map_insert_failures),
        ("mesh_kernel_program_errors_total", k.program_errors),
        ("mesh_kernel_connects_fail_open_total", k.connects_fail_open),
        ("mesh_kernel_connects_fail_closed_total", k.connects_fail_closed),
    ]) + &gauges
}

fn status(code: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r
}

#[cfg(test)]
mod tests;
