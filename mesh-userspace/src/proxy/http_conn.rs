//! HTTP client connections: HTTP/1 (parked while idle) and HTTP/2 (h2c), each request through
//! [`http::handle`], until the client closes, a limit ends the connection, or the drain.
use std::{sync::Arc, time::Duration};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{
    fair,
    http::{self, Entry, ProxyBody},
    limits, telemetry, Limits, ProxyState, Source,
};

/// An HTTP/1 keep-alive connection idle this long gives its hyper connection back: hyper holds a
/// read and a write buffer (8 KiB each) and its parser state for as long as a connection lives,
/// which made an idle keep-alive connection cost the agent about 21 KB. Parked, the connection
/// is its socket and a few small structs until the client sends again; then it gets a fresh
/// hyper connection. A second is long past any request burst (re-creating hyper's state costs
/// about what one request's parsing does) and far below keep-alive lifetimes (minutes).
pub(super) const PARK_IDLE_HTTP1_AFTER: Duration = crate::settings::FIXED.park_idle_http1_after;

/// The HTTP/2 connection preface (RFC 9113 §3.4); any other first bytes are HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's service returns per request: boxed, so that an HTTP/1 connection can be
/// polled without shutdown (hyper requires an `Unpin` future for it) and taken apart when idle.
pub(super) type ServiceFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<::http::Response<ProxyBody>, std::convert::Infallible>> + Send>,
>;

/// The per-request service `serve_http` builds, as its HTTP/1 and HTTP/2 halves take it.
pub(super) trait ConnService:
    hyper::service::Service<
    ::http::Request<hyper::body::Incoming>,
    Response = ::http::Response<ProxyBody>,
    Error = std::convert::Infallible,
    Future = ServiceFuture,
>
{
}

impl<S> ConnService for S where
    S: hyper::service::Service<
        ::http::Request<hyper::body::Incoming>,
        Response = ::http::Response<ProxyBody>,
        Error = std::convert::Infallible,
        Future = ServiceFuture,
    >
{
}

/// Serves HTTP/1 and HTTP/2 (h2c) on one accepted connection, each request through
/// [`http::handle`], until the client closes, a limit ends it, or the drain closes it gracefully.
pub async fn serve_http(state: Arc<ProxyState>, source: Source, entry: Entry, stream: TcpStream) {
    // Responses are written whole; Nagle would only hold the next one back behind the client's
    // delayed ACK of the previous (Envoy and nginx set it too).
    let _ = stream.set_nodelay(true);
    let activity = limits::ConnActivity::counting(source.caps.as_ref().map(|c| c.head_counter()));
    let src = source.workload.as_ref().map_or("ingress", |w| w.name.as_str()).to_owned();
    let source_for_refusals = source.clone();
    let svc = conn_service(&state, source, entry, &activity, &src);
    let limits = &state.limits;
    let io = limits::ActivityIo::new(stream, activity.clone());
    // Until its first bytes the connection is parked: no hyper state at all.
    if !parked(&state, &activity, &io, &src, source_for_refusals.caps.as_deref(), true).await {
        return;
    }
    let http2 = match http2_preface(io.get_ref(), limits.request_headers_timeout).await {
        Some(h2) => h2,
        None => return,
    };
    if http2 {
        // Boxed, as the hyper connection is in `serve_http1`: the task of an idle connection
        // keeps the size of its largest state, so no hyper state may be inline in it.
        Box::pin(serve_http2(&state, &activity, io, svc, &src, source_for_refusals.caps.as_deref())).await;
    } else {
        serve_http1(&state, &activity, io, svc, &src, &source_for_refusals).await;
    }
}

/// The per-request service of one client connection (plain or TLS): each request through
/// [`http::handle`], held to its source's caps and fairness turn.
pub(super) fn conn_service(
    state: &Arc<ProxyState>,
    source: Source,
    entry: Entry,
    activity: &Arc<limits::ConnActivity>,
    src: &str,
) -> impl ConnService + Clone + Send + Unpin + 'static {
    let state = state.clone();
    let activity = activity.clone();
    // Shared, not copied, by each request's future.
    let src: Arc<str> = Arc::from(src);
    hyper::service::service_fn(move |req| -> ServiceFuture {
        // Held until hyper drops the response body (written, or the client left), so the
        // idle and header timers only run between requests.
        let guard = activity.begin();
        activity.request_has_body(!hyper::body::Body::is_end_stream(req.body()));
        // The source's requests in flight, held like the guard until the response is sent.
        let slot = match source.caps.as_ref().map(|c| c.request()) {
            Some(None) => {
                state
                    .metrics
                    .inc("mesh_downstream_overflow_total", &[("source_workload", &*src), ("limit", "requests")]);
                let mut r = http::local_reply(
                    ::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "source workload {src} has too many requests in flight (limit {})",
                        source.caps.as_ref().map_or(state.limits.per_source_max_requests, |c| c.maxima().1)
                    ),
                );
                r.headers_mut().insert("x-envoy-overloaded", ::http::HeaderValue::from_static("true"));
                // Counted like any request under its source, routed nowhere (Envoy's `UO`:
                // a concurrency limit full, answered with `x-envoy-overloaded`).
                let r = telemetry::record_request_cap_refusal(&state, &source, &req, r);
                return Box::pin(std::future::ready(Ok(r)));
            }
            Some(Some(slot)) => Some(slot),
            None => None,
        };
        let (state, source, entry, src) = (state.clone(), source.clone(), entry.clone(), src.clone());
        // The request's future is made inside the box: made here and moved in, its several KB
        // were copied twice per request (the largest memmove in the profile).
        Box::pin(async move {
            // At once, unless the event loop fell behind and this source is the one slowed
            // down (`fair.rs`).
            match state.fair.enter(&src).await {
                Ok(false) => {}
                Ok(true) => {
                    state.metrics.inc("mesh_fair_share_total", &[("source_workload", &*src), ("action", "queued")])
                }
                Err(fair::Refused) => return Ok(fair_share_refusal(&state, &source, &src)),
            }
            let resp = http::handle(state, source, entry, req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_frame(body, move |f| {
                    let _held = (&guard, &slot);
                    f
                }))
            }))
        })
    })
}

/// Serves an HTTP/2 connection (h2c, or h2 inside TLS) until the client closes, a limit ends it
/// or the drain.
pub(super) async fn serve_http2<S, T>(
    state: &Arc<ProxyState>,
    activity: &limits::ConnActivity,
    io: limits::ActivityIo<T>,
    svc: S,
    src: &str,
    caps: Option<&limits::SourceCaps>,
) where
    S: ConnService + Clone + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &state.limits;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_header_list_size(limits.max_request_headers_bytes)
        .max_concurrent_streams(limits.http2_max_concurrent_streams);
    // A pod's streams are read at its pace while the fairness gate holds it (`fair.rs`).
    let io = fair::PacedReads::new(io, caps.map(|_| (state.fair.clone(), Arc::from(src))));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let shed = shed_signal(caps);
    let expired = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended with error");
            }
            return;
        }
        e = activity.watch(limits) => e,
        () = shed => {
            // The overload manager sheds this source: GOAWAY, as Envoy's overload action
            // `disable_http_keepalive` does; its streams in flight finish (or are reset by the
            // manager), new ones go elsewhere or wait for a new connection, which is refused.
            state.metrics.inc("mesh_overload_shed_total", &[("source_workload", src), ("action", "goaway")]);
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.request_headers_timeout, conn).await;
            return;
        }
        _ = state.drain.signaled() => {
            // GOAWAY; streams in flight finish.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with error while draining");
            }
            return;
        }
    };
    count_expiry(state, src, expired);
    if expired == limits::Expired::Idle {
        // Nothing is in flight: GOAWAY first. A client that does not finish the goodbye within
        // a header timeout is cut.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(limits.request_headers_timeout, conn).await;
    }
}

/// The reply to a request the fairness gate refused: `503` with `x-envoy-overloaded`, counted
/// under its source (`mesh_fair_share_total{action="refused"}`, `istio_requests_total` with `OM`).
/// The connection stays open: closing it would only make the flooding client reconnect.
fn fair_share_refusal(state: &Arc<ProxyState>, source: &Source, src: &str) -> ::http::Response<ProxyBody> {
    state.metrics.inc("mesh_fair_share_total", &[("source_workload", src), ("action", "refused")]);
    telemetry::record_fair_share_refusal(state, source);
    let mut r = http::local_reply(
        ::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("envoy overloaded: the node proxy is behind and source workload {src} has too many requests waiting"),
    );
    r.headers_mut().insert("x-envoy-overloaded", ::http::HeaderValue::from_static("true"));
    r
}

pub(super) fn count_expiry(state: &ProxyState, src: &str, expired: limits::Expired) {
    state.metrics.inc("mesh_downstream_timeouts_total", &[("source_workload", src), ("reason", expired.as_str())]);
    tracing::debug!(reason = expired.as_str(), "closing client connection");
}

/// How long the drain waits for the first request of a connection accepted just before it: the
/// client connected to send one (a connection-per-request client would otherwise see its new
/// connection closed unanswered when a handover's drain starts between its connect and its write).
#[cfg(not(test))]
const DRAIN_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// Unit tests write that first request after other steps of the drain, which take more than a
/// second now and then on a loaded 2-core machine running every test at once; the grace is what
/// they check, not its length (0 fails them).
#[cfg(test)]
const DRAIN_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(10);

/// Waits, holding no buffer, until the client sends something (true), or the idle timeout, the
/// overload manager shedding its source (`caps`) or the drain closes the connection (false): an idle connection is closed at once by the drain,
/// as hyper's graceful shutdown closes an idle HTTP/1 connection — except a `fresh` one (no
/// request yet), which gets [`DRAIN_FIRST_REQUEST_GRACE`] to send its first (answered with
/// `Connection: close`).
async fn parked(
    state: &ProxyState,
    activity: &limits::ConnActivity,
    io: &limits::ActivityIo<TcpStream>,
    src: &str,
    caps: Option<&limits::SourceCaps>,
    fresh: bool,
) -> bool {
    let _parked = caps.map(limits::SourceCaps::park);
    let shed = shed_signal(caps);
    tokio::select! {
        r = client_sent(io.get_ref()) => r.is_ok(),
        e = activity.watch(&state.limits) => {
            count_expiry(state, src, e);
            false
        }
        () = shed => {
            // The overload manager sheds this source: its idle connections are closed (Envoy's
            // overload manager stops keep-alive the same way).
            state.metrics.inc("mesh_overload_shed_total", &[("source_workload", src), ("action", "idle_closed")]);
            false
        }
        _ = state.drain.signaled() => {
            fresh && matches!(tokio::time::timeout(DRAIN_FIRST_REQUEST_GRACE, client_sent(io.get_ref())).await, Ok(Ok(())))
        }
    }
}

/// Resolves while the overload manager sheds the connection's source (never for ingress, which
/// has no source caps): its idle connections are closed, its HTTP/2 ones told GOAWAY.
async fn shed_signal(caps: Option<&limits::SourceCaps>) {
    match caps {
        Some(c) => c.idle_shed().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the client has sent something (or closed, or the socket failed). Tokio's
/// `readable()` alone is not that: it reports a freshly accepted socket readable before any byte
/// arrived, which took never-used connections out of [`parked`] at once — to wait in the
/// preface peek instead, where neither the overload manager's shedding nor the drain reached
/// them. A peek that would block clears that readiness and waits again.
async fn client_sent(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = 0u8;
            // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the byte for hyper, and the
            // socket is non-blocking (tokio's), so this never waits.
            let n = unsafe { libc::recv(stream.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
        match peeked {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // Bytes or end of stream: the caller reads either. An error: the socket is done.
            _ => return Ok(()),
        }
    }
}

/// Whether the client's first bytes are the HTTP/2 preface (`None`: it closed, or sent no
/// whole preface within the header timeout). Only peeks: hyper reads the bytes.
async fn http2_preface(stream: &TcpStream, within: Duration) -> Option<bool> {
    let look = async {
        let mut buf = [0u8; 24];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            let seen = &buf[..n];
            if n == 0 {
                return None;
            }
            if !H2_PREFACE.starts_with(seen) {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // Part of the preface so far (it is one segment in practice): look again shortly
            // rather than spin on the same peeked bytes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(within, look).await.ok().flatten()
}

/// Serves an HTTP/1 connection: a hyper connection while requests come, given back after
/// [`PARK_IDLE_HTTP1_AFTER`] of idleness (the socket is parked with no buffer, see [`parked`])
/// and made anew when the client sends again.
async fn serve_http1<S>(
    state: &Arc<ProxyState>,
    activity: &limits::ConnActivity,
    mut io: limits::ActivityIo<TcpStream>,
    mut svc: S,
    src: &str,
    source_for_refusals: &Source,
) where
    S: ConnService + Unpin,
{
    let limits = &state.limits;
    let h1 = http1_builder(limits);
    // While hyper serves, the idle clock parks the connection first (unless the idle timeout
    // itself is that short); the idle timeout proper then runs while it is parked.
    let park = limits.idle_timeout > PARK_IDLE_HTTP1_AFTER;
    let round_limits = Limits { idle_timeout: limits.idle_timeout.min(PARK_IDLE_HTTP1_AFTER), ..limits.clone() };
    let mut unread = bytes::Bytes::new();
    loop {
        // Boxed: freed when parked (see `serve_http2`).
        let mut conn = Box::new(h1.serve_connection(TokioIo::new(limits::Prefixed::new(unread, io)), svc));
        let mut parking = false;
        let ended = loop {
            tokio::select! {
                // hyper first: bytes that woke a parked connection are read (and start the
                // header clock) before the idle clock is asked, which would otherwise find the
                // connection still idle and park it again at once.
                biased;
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                e = activity.watch(&round_limits), if !parking => {
                    if e == limits::Expired::Idle && park && activity.parkable() {
                        // Nothing in flight and no byte of a next head read: hyper is between
                        // requests and ends the connection without a word to the client.
                        parking = true;
                        std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        continue;
                    }
                    count_expiry(state, src, e);
                    if e == limits::Expired::Idle {
                        // Nothing is in flight: closes at once.
                        std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        let _ = tokio::time::timeout(limits.request_headers_timeout, std::future::poll_fn(|cx| conn.poll_without_shutdown(cx))).await;
                    }
                    // A stalled request head: dropping the connection closes the socket.
                    return;
                }
                _ = state.drain.signaled() => {
                    // Closes the connection if idle, else answers the request in flight with
                    // `Connection: close` and then closes.
                    std::pin::Pin::new(&mut *conn).graceful_shutdown();
                    if let Err(e) = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await {
                        tracing::debug!(error = %e, "http connection ended with error while draining");
                    }
                    let mut io = conn.into_parts().io.into_inner();
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                    return;
                }
            }
        };
        if let Err(e) = ended {
            http1_failed(state, source_for_refusals, &e);
            return;
        }
        let parts = conn.into_parts();
        let (mut prefixed, read_buf) = (parts.io.into_inner(), parts.read_buf);
        if !parking {
            // The client closed, or asked to (`Connection: close`): hyper wrote the last
            // response; close our side too.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut prefixed).await;
            return;
        }
        svc = parts.service;
        let (rest, inner) = prefixed.into_parts();
        io = inner;
        // Bytes hyper read but had not parsed (none when parked idle, but never lost).
        unread = if rest.is_empty() { read_buf } else { [read_buf, rest].concat().into() };
        if unread.is_empty() && !parked(state, activity, &io, src, source_for_refusals.caps.as_deref(), false).await {
            return;
        }
    }
}

/// The HTTP/1 server of a client connection, held to the downstream limits.
pub(super) fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // The header timeout is ours (ConnActivity): hyper's would start as soon as the connection
    // is idle and cut idle keep-alive connections. It is left at hyper's default, which with no
    // timer installed is off; an explicit `None` is not the same to hyper 1.12: its graceful
    // shutdown then no longer marks the response in flight `Connection: close` (the drain test
    // catches it). The read buffer limit is a head-size limit: a head that does not fit is
    // answered 431 (hyper's Parse::TooLarge). Bodies are read in chunks of it.
    h1.max_buf_size(
        usize::try_from(limits.max_request_headers_bytes).unwrap_or(usize::MAX).max(limits::HYPER_MIN_BUF_SIZE),
    );
    if limits.max_request_headers_count != limits::HYPER_DEFAULT_MAX_HEADERS {
        h1.max_headers(limits.max_request_headers_count);
    }
    h1
}

/// An HTTP/1 connection hyper ended with an error: logged, and a head hyper refused itself (too
/// large across reads, unparsable) was answered by hyper and never reached `http::handle`:
/// counted here, under its source.
pub(super) fn http1_failed(state: &Arc<ProxyState>, source: &Source, e: &hyper::Error) {
    tracing::debug!(error = %e, "http connection ended with error");
    if let Some(code) = hyper_refusal(e) {
        telemetry::record_refusal(state, source, code);
    }
}

/// The status hyper's HTTP/1 server answered a request head it refused with, if it did.
fn hyper_refusal(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let h = e.downcast_ref::<hyper::Error>()?;
    if h.is_parse_too_large() {
        Some(431)
    } else if h.is_parse() {
        Some(400)
    } else {
        None
    }
}
