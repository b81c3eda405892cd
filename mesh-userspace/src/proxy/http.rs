//! L7 request handling: the request's entry checks (source caps, head limits, hop-by-hop
//! headers, request id), routing, and the reply for each routing decision; a routed request is
//! forwarded by [`super::forward`]. Also the body types every request and response shares.
use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use rand::Rng;

use super::{telemetry::RequestRecord, ProxyState, Source};
use crate::metrics::Flags;
use crate::routing::{Context, Decision, RequestInfo, RouteTable};

/// Errors of a body passing through the proxy: hyper's, or the proxy's own (a request body idle
/// timeout), which hyper then turns into a reset of the stream it was sending. A concrete type,
/// not a boxed trait object: hyper's server bounds on a boxed error defeat the `Send` proof of
/// the connection futures.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// hyper's own error (a connection reset, a malformed body...).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The client sent nothing of the body for the idle timeout.
    #[error(transparent)]
    IdleTimeout(#[from] super::limits::BodyIdleTimeout),
    /// The overload manager reset the request (its source holds the most of a proxy near its
    /// memory budget).
    #[error("request reset by the overload manager (the node proxy is near its memory budget)")]
    Overloaded,
}

/// The body type of every request and response the proxy sends: upstream bodies streamed through,
/// local replies built in memory.
pub type ProxyBody = BoxBody<Bytes, BodyError>;

/// A body holding `body`.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never: Infallible| match never {}).boxed()
}

/// A response the proxy itself produces, with a body that says what happened and what to do.
pub fn local_reply(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    let mut body = body.into();
    body.push('\n');
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut().insert("server", HeaderValue::from_static("mesh"));
    resp
}

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1). Names, not strings: removing by `&str`
/// parsed and hashed every name twice per request (it showed in the profile).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in listed {
            // A client cannot make the proxy drop what routing and tracing depend on.
            if n != header::HOST && n != X_REQUEST_ID {
                headers.remove(n);
            }
        }
    }
    // `te: trailers` is the one TE an HTTP/2 peer may send, and gRPC requires it end to end
    // (Envoy keeps it too); every other TE is hop-by-hop.
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A random (version 4) UUID, hex-encoded by hand: `format!` was one of the costlier calls per request.
fn new_request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(byte >> 4)];
        out[o + 1] = HEX[usize::from(byte & 0x0f)];
        o += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// Where a request entered the mesh: a pod's outbound listener (service known from the original
/// destination) or an ingress listener (NodePort service, or an Istio Gateway).
#[derive(Clone)]
pub enum Entry {
    /// A service port: a pod's redirected connection, or the service's NodePort.
    Service {
        /// The destination service.
        service: Arc<crate::registry::Service>,
        /// Its service port (not the NodePort).
        port: u16,
    },
    /// An Istio Gateway server port.
    Gateway {
        /// The Gateway's name.
        name: String,
        /// The Gateway's namespace.
        namespace: String,
        /// The server port.
        port: u16,
    },
}

/// Handles one HTTP request: routes it on the current table, applies the route's fault, rewrites,
/// header edits, retries and timeout, forwards it (mirroring a copy if asked), records metrics and
/// the access log. Never fails: every error becomes a local reply (404, 503, 504...).
pub async fn handle(
    state: Arc<ProxyState>,
    source: Source,
    entry: Entry,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // Recorded when the response ends, or with code 0 and DC if this future is dropped first
    // (the client went away).
    let mut rec = RequestRecord::new(state.clone(), &source, &req);
    let http1 = req.version() < http::Version::HTTP_2;
    if source.caps.as_ref().is_some_and(|c| c.refusing()) {
        // The overload manager is shedding this source: no new request until it is back under
        // its fair share, or the node under its low watermark.
        rec.flag(Flags::OM);
        shed_count(&state, &source, "request_refused");
        return Ok(rec.respond(overloaded_reply(http1)));
    }
    // The request's place among its source's unfinished ones, for the overload manager; held
    // until the response body ends.
    let ticket = source.caps.as_ref().map(|c| c.ticket());
    let shed = ticket.as_ref().map(|t| t.ticket.clone());
    if let Some(reply) = check_request_head(&state.limits, &req) {
        // Counted like every other request, under its source: a pod sending oversized heads
        // shows up as that pod's 431s.
        return Ok(rec.respond(reply));
    }
    // Hop-by-hop headers are the client's connection's business: gone before routing sees them.
    strip_hop_by_hop(req.headers_mut());
    if !req.headers().contains_key(X_REQUEST_ID) {
        req.headers_mut().insert(X_REQUEST_ID, new_request_id());
    }
    rec.note_request_id(req.headers());
    // The table is pinned for the whole request: a reload while it runs does not change its route.
    let table = state.routes.load_full();
    let decision = route(&table, &entry, &source, &req);
    let resp = match decision {
        Decision::NoRoute { reason } => {
            rec.flag(Flags::NR);
            if let (Entry::Service { service, .. }, true) = (&entry, rec.active()) {
                rec.service = Some(Arc::new(crate::metrics::ServiceLabels::of(service)));
            }
            local_reply(StatusCode::NOT_FOUND, format!("no route: {reason}"))
        }
        Decision::Redirect { status, location } => {
            let mut r = local_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY), "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Decision::Forward(fwd) => {
            rec.set_cluster(&fwd.cluster);
            forward_unless_shed(&state, &source, *fwd, req, &mut rec, shed, http1).await
        }
    };
    // After the head, a reset ends the response body with an error: hyper resets the stream
    // (HTTP/2) or closes the connection (HTTP/1).
    let resp = match ticket {
        // Not the overload reply itself: that one must reach the client.
        Some(ticket) if !ticket.ticket.is_shed() => resp.map(|body| Sheddable { body, ticket }.boxed()),
        _ => resp,
    };
    // Metrics and the access log line are made when the response ends (see RequestRecord).
    Ok(rec.respond(resp))
}

/// Asks `table` for the route of `req`, which arrived at `entry` from `source`.
fn route(table: &RouteTable, entry: &Entry, source: &Source, req: &Request<Incoming>) -> Decision {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let context = match entry {
        Entry::Service { service, port } => Context::Mesh { service, port: *port },
        Entry::Gateway { name, namespace, port } => Context::Gateway { name, namespace, port: *port },
    };
    let info = RequestInfo {
        context,
        source: source.workload.as_deref(),
        method: req.method(),
        uri: req.uri(),
        authority: authority.as_deref(),
        scheme: match entry {
            Entry::Gateway { name, namespace, port } if table.gateway_terminates_tls(namespace, name, *port) => "https",
            _ => "http",
        },
        headers: req.headers(),
    };
    table.route(&info, &mut rand::thread_rng())
}

/// Forwards a routed request ([`super::forward::forward`]); when the overload manager resets it
/// (`shed`) before a response came, the request (its read-ahead body, its upstream request) is
/// dropped and the client gets the overload reply.
async fn forward_unless_shed(
    state: &Arc<ProxyState>,
    source: &Source,
    fwd: crate::routing::Forward,
    req: Request<Incoming>,
    rec: &mut RequestRecord,
    shed: Option<Arc<super::limits::Ticket>>,
    http1: bool,
) -> Response<ProxyBody> {
    // Pinned where it is made: the forward future is the bulk of the request's state, and
    // moving it into the select (and again into this future's await slot) copied it each time.
    let done = {
        let mut forwarded = std::pin::pin!(super::forward::forward(state, source, fwd, req, rec, shed.clone()));
        let Some(t) = &shed else {
            return forwarded.await;
        };
        tokio::select! {
            biased;
            _ = t.shed_signal() => None,
            r = forwarded.as_mut() => Some(r),
        }
    };
    match done {
        Some(r) => r,
        None => {
            rec.flag(Flags::OM);
            overloaded_reply(http1)
        }
    }
}

/// Envoy's overload manager reply: 503 with `x-envoy-overloaded`. HTTP/1 closes the connection:
/// the rest of the request body is never read.
fn overloaded_reply(http1: bool) -> Response<ProxyBody> {
    let mut r = local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "envoy overloaded: the node proxy is near its memory budget and this source workload holds the most of it",
    );
    r.headers_mut().insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    if http1 {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

fn shed_count(state: &ProxyState, source: &Source, action: &str) {
    let src = source.workload.as_ref().map_or("ingress", |w| w.name.as_str());
    state.metrics.inc("mesh_overload_shed_total", &[("source_workload", src), ("action", action)]);
}

/// A response body that fails once the overload manager resets its request, and keeps the
/// request in its source's table of unfinished requests until it ends.
struct Sheddable {
    body: ProxyBody,
    ticket: super::limits::TicketGuard,
}

impl hyper::body::Body for Sheddable {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        if self.ticket.ticket.poll_shed(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(BodyError::Overloaded)));
        }
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The head size of a request as Envoy's `max_request_headers_kb` counts it, roughly: the request
/// line and every header line. hyper's read buffer limit (set to the same size) already refuses
/// a head that does not fit, but only when it arrives in more than one read; this catches the rest.
fn request_head_len<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 11;
    req.headers().iter().fold(line, |n, (k, v)| n.saturating_add(k.as_str().len() + v.len() + 4))
}

/// Refuses a request whose head breaks the downstream limits with Envoy's reply, 431.
fn check_request_head<B>(limits: &super::Limits, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let max = usize::try_from(limits.max_request_headers_bytes).unwrap_or(usize::MAX);
    if request_head_len(req) > max {
        return Some(local_reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large"));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, is a 400.
    // (HTTP/1.0 may omit it; HTTP/2 carries :authority.)
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if req.version() == http::Version::HTTP_11 && hosts != 1 || req.version() < http::Version::HTTP_11 && hosts > 1 {
        let why = if hosts == 0 { "missing Host header" } else { "more than one Host header" };
        return Some(local_reply(StatusCode::BAD_REQUEST, why));
    }
    // hyper enforces the count for HTTP/1; HTTP/2 header blocks only have a size limit there.
    if req.headers().len() > limits.max_request_headers_count {
        return Some(local_reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many request headers"));
    }
    None
}

pub(super) enum ReqBody {
    /// Read whole: replayable for retries and mirrors.
    Buffered(Chunks),
    /// Streams through once; `.1` is set when the *client's* side of it failed (malformed chunk,
    /// client reset), so the upstream error that follows is not blamed on the endpoint.
    Streaming(ProxyBody, Arc<std::sync::OnceLock<String>>),
}

/// A request body read ahead, kept as the frames it arrived in: joining them into one buffer
/// would hold the body twice for a moment, uncounted by the memory budget, for every body that
/// completes (what took the noisy-neighbour e2e's peak past its budget's cgroup limit).
#[derive(Clone, Default)]
pub(super) struct Chunks(Vec<Bytes>);

impl Chunks {
    /// The body's length in bytes.
    pub(super) fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// A body sending these chunks (sharing them: a retry or a mirror copies nothing), with an
    /// exact size, so an HTTP/1 upstream gets a Content-Length as it would for one buffer.
    pub(super) fn body(&self) -> ProxyBody {
        let remaining = self.len() as u64;
        ChunksBody { chunks: self.0.clone().into_iter(), remaining }.boxed()
    }
}

struct ChunksBody {
    chunks: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl hyper::body::Body for ChunksBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let next = self.chunks.next();
        if let Some(b) = &next {
            self.remaining = self.remaining.saturating_sub(b.len() as u64);
        }
        std::task::Poll::Ready(next.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// The request body as the proxy reads it: the client's, under the body idle timeout.
type ClientBody = super::limits::IdleTimeoutBody<Incoming>;

/// Why a request body could not be read from the client: the client's fault, never counted
/// against an endpoint. 408 when it stopped arriving (the connection is closed: the rest of the
/// body would otherwise be read as the next request), 400 when it was malformed or cut.
pub(super) fn downstream_body_error(e: &BodyError) -> Response<ProxyBody> {
    if let BodyError::IdleTimeout(_) = e {
        let mut r = local_reply(StatusCode::REQUEST_TIMEOUT, format!("request body timeout: {e}"));
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    local_reply(StatusCode::BAD_REQUEST, format!("downstream request body error: {e}"))
}

/// A request body read as far as the proxy reads ahead.
pub(super) struct ReadBody {
    pub(super) body: ReqBody,
    /// The source's buffered-body cap stopped the read-ahead: the body streams, not retried.
    pub(super) over_budget: bool,
}

/// Reads the request body before any endpoint is picked, up to `limit` bytes and as far as the
/// source's `budget` allows: a body that ends within both is replayable (retries, mirroring) and
/// a malformed or stalled one is refused here, never reaching an endpoint. A longer one streams
/// on with what was read so far in front. HTTP/2 bodies of unknown length (gRPC streams, which
/// may wait for a response before sending more) stream at once; so does anything announcing
/// more than `limit`.
pub(super) async fn read_body(
    body: ClientBody,
    limit: u64,
    http2: bool,
    budget: &mut super::limits::BodyBudget,
) -> Result<ReadBody, Response<ProxyBody>> {
    if body.is_end_stream() {
        return Ok(ReadBody { body: ReqBody::Buffered(Chunks::default()), over_budget: false });
    }
    let failed: Arc<std::sync::OnceLock<String>> = Arc::default();
    let flag = failed.clone();
    let mark = move |e: BodyError| {
        let _ = flag.set(e.to_string());
        e
    };
    let upper = body.size_hint().upper();
    if let Some(n) = upper.filter(|n| *n <= limit) {
        if budget.try_take(n) {
            let mut body = body;
            let mut chunks = Vec::new();
            // Trailers after a Content-Length body are dropped, as a one-buffer copy did.
            while let Some(frame) = body.frame().await {
                match frame.map(hyper::body::Frame::into_data) {
                    Ok(Ok(data)) if !data.is_empty() => chunks.push(data),
                    Ok(_) => {}
                    Err(e) => return Err(downstream_body_error(&e)),
                }
            }
            return Ok(ReadBody { body: ReqBody::Buffered(Chunks(chunks)), over_budget: false });
        }
        return Ok(ReadBody { body: ReqBody::Streaming(body.map_err(mark).boxed(), failed), over_budget: true });
    }
    if upper.is_some() || http2 {
        return Ok(ReadBody { body: ReqBody::Streaming(body.map_err(mark).boxed(), failed), over_budget: false });
    }
    // HTTP/1 chunked: read ahead up to the limit.
    let mut body = body;
    let mut head: Vec<hyper::body::Frame<Bytes>> = Vec::new();
    let mut read: u64 = 0;
    let mut over_budget = false;
    while read <= limit && !over_budget {
        match body.frame().await {
            None => {
                if head.iter().any(|f| f.is_trailers()) {
                    // Trailers cannot be replayed from bytes; stream them instead.
                    let stream = futures_util::stream::iter(head.into_iter().map(Ok));
                    let body = ReqBody::Streaming(http_body_util::StreamBody::new(stream).boxed(), failed);
                    return Ok(ReadBody { body, over_budget: false });
                }
                let chunks = head.into_iter().filter_map(|f| f.into_data().ok()).filter(|d| !d.is_empty()).collect();
                return Ok(ReadBody { body: ReqBody::Buffered(Chunks(chunks)), over_budget: false });
            }
            Some(Err(e)) => return Err(downstream_body_error(&e)),
            Some(Ok(f)) => {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                read = read.saturating_add(n);
                // A frame is at most hyper's read buffer: the one that finds the budget spent is
                // held (unaccounted) until it is sent, and reading ahead stops.
                over_budget = !budget.try_take(n);
                head.push(f);
            }
        }
    }
    let rest = http_body_util::BodyStream::new(body.map_err(mark));
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(head.into_iter().map(Ok)), rest);
    Ok(ReadBody { body: ReqBody::Streaming(http_body_util::StreamBody::new(stream).boxed(), failed), over_budget })
}

#[cfg(test)]
mod chunks_tests {
    use super::*;

    #[tokio::test]
    async fn a_read_ahead_body_replays_its_frames_with_an_exact_size() {
        let chunks = Chunks(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde"), Bytes::from_static(b"f")]);
        assert_eq!(chunks.len(), 6);
        // Twice (a retry), sharing the frames: same bytes, and an exact size each time so an
        // HTTP/1 upstream gets Content-Length.
        for _ in 0..2 {
            let body = chunks.body();
            assert_eq!(body.size_hint().exact(), Some(6));
            assert_eq!(body.collect().await.expect("body").to_bytes(), Bytes::from_static(b"abcdef"));
        }
        let empty = Chunks::default().body();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }
}
