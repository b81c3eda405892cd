//! The agent's admin HTTP server (`--admin`, default `127.0.0.1:15020`): liveness, readiness,
//! Prometheus metrics (also at `/stats/prometheus`, the path Istio's scrape annotations name),
//! and `/config_dump` (JSON: every routing object with its source and status, the compiled
//! clusters with endpoint health, the enrolled pods; see [`dump`]), and `/explain?from=&url=&header=`
//! (`mesh explain --live`: the offline explanation, computed on the live route table and registry).
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
    /// What the agent publishes for `/config_dump`: the live config, the enrolled pods.
    pub published: Arc<dump::Published>,
}

/// The paths served, for the 404 answer.
const ENDPOINTS: &str =
    "endpoints: /healthz /ready /metrics /stats/prometheus /config_dump /explain?from=POD&url=URL&header=NAME:VALUE\n";

/// Serves `listener` until the proxy drains.
pub async fn serve(admin: Admin, listener: TcpListener) {
    let drain = admin.state.clone();
    // Admin connections (probes, scrapes on keep-alive) do not hold up the drain: its guard is
    // dropped at once.
    proxy::accept_until_drain(listener, "admin", &drain.drain, |stream, _, _not_held| {
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
        "/metrics" | "/stats/prometheus" => {
            let mut r = Response::new(full(metrics(&admin.state, admin.kernel.as_ref())));
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
            r
        }
        "/config_dump" => json(&dump::config_dump(&admin.state, &admin.published)),
        "/explain" => explain(&admin.state, req.uri().query().unwrap_or("")),
        _ => status(StatusCode::NOT_FOUND, ENDPOINTS),
    }
}

/// The Prometheus text served at `/metrics` and `/stats/prometheus`.
fn metrics(state: &ProxyState, bpf: &dyn KernelCounters) -> String {
    let k = bpf.stats();
    let gauges = state.source_gauges();
    state.metrics.render(
        &[
            ("mesh_kernel_connects_seen_total", k.connects_seen),
            ("mesh_kernel_connects_redirected_total", k.connects_redirected),
            ("mesh_kernel_connections_indexed_total", k.established_indexed),
            ("mesh_kernel_connects_no_service_total", k.connects_no_service),
            ("mesh_kernel_orig_dst_missing_total", k.orig_dst_missing),
            ("mesh_kernel_map_insert_failures_total", k.map_insert_failures),
            ("mesh_kernel_program_errors_total", k.program_errors),
            ("mesh_kernel_connects_fail_open_total", k.connects_fail_open),
            ("mesh_kernel_connects_fail_closed_total", k.connects_fail_closed),
            ("mesh_kernel_sockets_bypassed_total", k.sockets_bypassed),
            ("mesh_kernel_sk_msg_redirected_total", k.sk_msg_redirected),
            ("mesh_kernel_sk_msg_tcp_total", k.sk_msg_tcp),
            ("mesh_kernel_upstream_sockets_bypassed_total", k.upstream_sockets_bypassed),
        ],
        &gauges,
    )
}

/// `mesh explain --live`: the same text as the offline explain, on the tables the proxy routes
/// with right now. A request that cannot be explained (unknown pod or host) is a 400 saying why.
fn explain(state: &ProxyState, query: &str) -> Response<ProxyBody> {
    let explained = crate::cli_routing::ExplainRequest::from_query(query)
        .and_then(|r| crate::cli_routing::explain_request(&state.routes.load(), &state.registry.load(), &r));
    match explained {
        Ok(text) => Response::new(full(text)),
        Err(e) => status(StatusCode::BAD_REQUEST, format!("{e:#}\n")),
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `name=value` pairs of a query string, decoded (`%XX`, `+` as space).
pub fn query_pairs(query: &str) -> anyhow::Result<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((query_decode(k)?, query_decode(v)?))
        })
        .collect()
}

fn query_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    anyhow::bail!("bad percent-encoding in {:?}", crate::config::cut(s, 60));
                };
                out.push(v);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("query value is not UTF-8: {:?}", crate::config::cut(s, 60)))
}

fn json(value: &impl serde::Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut r = Response::new(full(body));
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
        // Only a map with non-string keys could fail; none of the views has one.
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot serialise: {e}\n")),
    }
}

fn status(code: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r
}

pub mod dump;
#[cfg(test)]
mod tests;
