//! Downstream protection: the limits every client connection of the shared node proxy is held to,
//! so that one pod's slow, oversized or idle connections cannot hold the proxy's memory and
//! sockets for everyone else (issue 13). One typed struct with Envoy's/Istio's defaults; flags or
//! annotations can fill it later without touching the enforcement.
//!
//! The enforcement, one concern per module: [`conn`] a client connection's activity and its
//! timeouts, [`source`] a source workload's caps and its standing under the overload manager,
//! [`body`] the request-body idle timeout.
mod body;
mod conn;
mod source;

pub use self::body::BodyIdleTimeout;
pub(crate) use self::body::{IdleTimeoutBody, StreamActivity};
pub(crate) use self::conn::{ActivityIo, ConnActivity, Expired, Prefixed};
pub(crate) use self::source::{BodyBudget, Ticket, TicketGuard};
pub use self::source::{CapSlot, SourceCaps};

use std::time::Duration;

/// Downstream (client-side) limits of the node proxy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// An HTTP/1 request head must be complete this long after its first byte arrived, or the
    /// connection is closed. Envoy's `request_headers_timeout` is off by default; hyper's default
    /// (and the middle of nginx's 60 s `client_header_timeout` and Apache mod_reqtimeout's 20–40 s)
    /// is 30 s: far beyond what a pod on the same node needs for a few KB of headers, short enough
    /// that a slowloris client holds a connection for 30 s instead of forever. The timer starts at
    /// the first byte, as Envoy's does, so an idle keep-alive connection is not cut by it.
    #[serde(serialize_with = "crate::settings::duration")]
    pub request_headers_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (HTTP/2: GOAWAY
    /// first). Istio's default for HTTP connections (Envoy `common_http_protocol_options.idle_timeout`).
    #[serde(serialize_with = "crate::settings::duration")]
    pub idle_timeout: Duration,
    /// Largest HTTP/1 request head (request line and headers) accepted; larger gets
    /// `431 Request Header Fields Too Large`. Envoy's `max_request_headers_kb` default, 60 KiB.
    /// HTTP/2: the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_request_headers_bytes: u32,
    /// Most HTTP/1 request headers accepted; more gets 431. Envoy's `max_headers_count` default.
    pub max_request_headers_count: usize,
    /// Concurrent streams an HTTP/2 client may open on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// Envoy's edge-proxy recommendation is 100.
    pub http2_max_concurrent_streams: u32,
    /// Request bodies up to this size are buffered before the upstream request so they can be
    /// retried and mirrored, and a malformed one is answered 400 without reaching any endpoint;
    /// larger ones stream through once. Envoy's per-connection buffer limit default, 1 MiB.
    pub max_buffered_body: u64,
    /// A request whose body stops arriving for this long is ended: `408` (connection closed) when
    /// no response has come from upstream yet, whether or not part of the body was already
    /// streamed to it (the upstream request is reset); after a response started, both sides are
    /// reset. Counted in `mesh_downstream_timeouts_total{reason="request_body_timeout"}`. Only
    /// time the proxy spends waiting for the client counts (not time the upstream takes to read),
    /// and response data restarts it, so a bidirectional stream is not cut while the server
    /// talks. Envoy's `stream_idle_timeout` default, 5 min, with Envoy's 408-or-reset rule: an
    /// app that works behind Istio's sidecars is never cut sooner here. What keeps one pod's
    /// stalled uploads from hurting others is its caps below, not this timer; the timer returns
    /// what a stalled request holds (a task, buffered bytes, an upstream connection).
    #[serde(serialize_with = "crate::settings::duration")]
    pub request_body_idle_timeout: Duration,
    /// Request body bytes one source workload may hold in read-ahead buffers at once (the
    /// `max_buffered_body` buffers of all its requests in flight). A request that would go over
    /// it streams on with what was read so far, once, without retries or mirroring — what Envoy's
    /// router does past its retry/shadow buffer limit (`retry_or_shadow_abandoned`). Counted in
    /// `mesh_downstream_overflow_total{limit="buffered_body"}`. 16 full buffers: without it
    /// one pod's 1024 requests in flight could pin 1 GiB, twice the DaemonSet's memory limit.
    pub per_source_max_buffered_body: u64,
    /// Connections one source workload (one enrolled pod's listener) may hold open at once; the
    /// excess is closed right after accept. Generous: a pod is one tenant, not one client.
    pub per_source_max_connections: u32,
    /// Requests one source workload may have in flight at once; the excess is answered 503 with
    /// `x-envoy-overloaded` and counted in `mesh_downstream_overflow_total{source_workload}`.
    pub per_source_max_requests: u32,
    /// The proxy's memory budget in bytes of RSS: past 90 % of it the overload manager sheds the
    /// sources holding most until usage is under 75 % (see `overload.rs`). The agent derives it
    /// from its cgroup's `memory.max` unless `--memory-budget` sets it.
    pub memory_budget: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_headers_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            max_request_headers_bytes: 60 * 1024,
            max_request_headers_count: 100,
            http2_max_concurrent_streams: 100,
            max_buffered_body: 1 << 20,
            request_body_idle_timeout: Duration::from_secs(300),
            per_source_max_buffered_body: 16 << 20,
            per_source_max_connections: 2048,
            per_source_max_requests: 1024,
            memory_budget: super::overload::DEFAULT_BUDGET,
        }
    }
}

/// The largest per-source connection or request cap a flag or annotation may set: Linux's default
/// `fs.nr_open` (1,048,576), past which the proxy could not hold the sockets anyway.
pub const MAX_SOURCE_COUNT: u32 = 1 << 20;
/// The largest read-ahead budget (per request or per source) a flag or annotation may set, 4 GiB:
/// eight times the DaemonSet's memory limit. A larger value is a typo, not a budget.
pub const MAX_BUFFER_BYTES: u64 = 1 << 32;
/// The largest `--max-request-headers-kb`: Envoy's own maximum for `max_request_headers_kb`.
pub const MAX_REQUEST_HEADERS_KB: u32 = 8192;
/// The largest `--max-request-headers-count`: hyper reserves a parser slot per allowed header
/// for every HTTP/1 request head, so the limit costs memory per request; no real client sends
/// more than a few dozen.
pub const MAX_REQUEST_HEADERS_COUNT: usize = 1000;

/// hyper's own default header count: setting it explicitly moves the parser's header array from
/// the stack to the heap (hyper documents ~5% cost), so it is only set when it differs.
pub(crate) const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// hyper refuses a read buffer limit below this.
pub(crate) const HYPER_MIN_BUF_SIZE: usize = 8192;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod body_timeout_tests;
