//! What one request contributes to Istio's standard metrics: a [`RequestRecord`] follows the
//! request from its head to the last byte of its response (or to the moment the client gave up)
//! and records it once, when it is dropped.
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
// tokio's clock: a paused test clock then drives the recorded durations too.
use tokio::time::Instant;

use super::{
    access_log::{AccessLogMode, Fields, Outcome},
    http::{BodyError, ProxyBody},
    ProxyState, Source,
};
use crate::metrics::{Flags, PeerLabels, Protocol, Reporter, ServiceLabels, TrafficLabels};

/// The source side of a downstream connection's metrics: the calling pod's labels (resolved once
/// per pod listener) and the connection's cache of metric handles.
pub struct ConnTelemetry {
    /// The source workload's Istio labels (unknown for ingress).
    pub labels: Arc<PeerLabels>,
    cache: crate::metrics::HandleCache,
}

impl ConnTelemetry {
    /// A connection from a peer with `labels`.
    pub fn new(labels: Arc<PeerLabels>) -> Arc<Self> {
        Arc::new(ConnTelemetry { labels, cache: Default::default() })
    }
}

/// One request's metric labels and sizes as the proxy learns them. Recorded when dropped: after
/// the response's last byte when its body is wrapped in [`RecordedBody`], or — when the request
/// future itself is dropped because the client went away — with response code 0 and `DC`, as
/// Envoy records an abandoned request.
pub struct RequestRecord {
    state: Arc<ProxyState>,
    conn: Arc<ConnTelemetry>,
    started: Instant,
    /// The destination service, once known.
    pub service: Option<Arc<ServiceLabels>>,
    /// The endpoint picked last, once one is.
    pub destination: Option<Arc<PeerLabels>>,
    protocol: Protocol,
    code: Option<u16>,
    grpc_status: Option<u16>,
    /// Envoy's response flags so far.
    pub flags: Flags,
    request_head: u64,
    request_body: u64,
    request_streamed: Option<Arc<AtomicU64>>,
    response_head: u64,
    response_body: u64,
    /// The response came from the endpoint (not a local reply): the server side saw it too.
    pub upstream_responded: bool,
    /// Istio metrics are on for this request (`--request-metrics`, read when it started).
    metrics: bool,
    /// The access log line's fields and format, when the log was on as the request started.
    log: Option<(AccessLogMode, Box<Fields>)>,
    done: bool,
}

/// The size of a request head as Envoy counts it in `request.total_size`, roughly: the request
/// line and every header line.
fn head_len(line: usize, headers: &HeaderMap) -> u64 {
    let n = headers.iter().fold(line, |n, (k, v)| n.saturating_add(k.as_str().len() + v.len() + 4));
    u64::try_from(n.saturating_add(2)).unwrap_or(u64::MAX)
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl RequestRecord {
    /// Starts the record of `req` from `source`.
    pub fn new<B>(state: Arc<ProxyState>, source: &Source, req: &Request<B>) -> Self {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let line = req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 11;
        let (mode, filter) = state.access_log.for_source(source.workload.as_deref());
        let log = (mode != AccessLogMode::Off).then(|| {
            let h = |n: http::header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let fields = Fields {
                start: Some(std::time::SystemTime::now()),
                method: req.method().as_str().to_owned(),
                path: req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
                protocol: match req.version() {
                    http::Version::HTTP_10 => "HTTP/1.0",
                    http::Version::HTTP_11 => "HTTP/1.1",
                    http::Version::HTTP_2 => "HTTP/2",
                    http::Version::HTTP_3 => "HTTP/3",
                    _ => "-",
                },
                forwarded_for: h(http::header::HeaderName::from_static("x-forwarded-for")),
                user_agent: h(http::header::USER_AGENT),
                request_id: None,
                authority: h(http::header::HOST).or_else(|| req.uri().authority().map(|a| a.to_string())),
                peer: source.peer,
                // Copied only for a Telemetry filter that reads `request.headers`.
                request_headers: filter.as_ref().filter(|f| f.wants_request_headers()).map(|_| req.headers().clone()),
                filter,
                ..Default::default()
            };
            (mode, Box::new(fields))
        });
        RequestRecord {
            conn: source.telemetry.clone(),
            started: Instant::now(),
            service: None,
            destination: None,
            protocol: if grpc { Protocol::Grpc } else { Protocol::Http },
            code: None,
            grpc_status: None,
            flags: Flags::default(),
            request_head: head_len(line, req.headers()),
            request_body: 0,
            request_streamed: None,
            response_head: 0,
            response_body: 0,
            upstream_responded: false,
            metrics: state.request_metrics.load(Ordering::Relaxed),
            log,
            state,
            done: false,
        }
    }

    /// Whether anything reads this record (metrics or the access log on); callers skip work for
    /// it otherwise.
    pub fn active(&self) -> bool {
        self.metrics || self.log.is_some()
    }

    /// The request's `x-request-id`, for the access log (once the proxy made sure it has one).
    pub fn note_request_id(&mut self, headers: &HeaderMap) {
        if let Some((_, f)) = self.log.as_mut() {
            f.request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
            // The filter's `request.headers` has the id the proxy generated, as Envoy's does.
            if let (Some(kept), Some(id)) = (f.request_headers.as_mut(), headers.get("x-request-id")) {
                kept.insert("x-request-id", id.clone());
            }
        }
    }

    /// The upstream answered its response head this long after the request was sent.
    pub fn upstream_service_time(&mut self, d: std::time::Duration) {
        if let Some((_, f)) = self.log.as_mut() {
            f.upstream_service_time = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
    }

    /// Adds a response flag.
    pub fn flag(&mut self, f: Flags) {
        self.flags.set(f);
    }

    /// The request went to `cluster`.
    pub fn set_cluster(&mut self, cluster: &crate::routing::Cluster) {
        if self.metrics {
            self.service = Some(cluster.telemetry().service.clone());
        }
    }

    /// The request was sent to the endpoint `addr` of `cluster`.
    pub fn set_endpoint(&mut self, cluster: &crate::routing::Cluster, addr: std::net::SocketAddr) {
        if self.metrics {
            self.destination = Some(cluster.telemetry().endpoint(addr));
        }
        if let Some((_, f)) = self.log.as_mut() {
            f.upstream_host = Some(addr);
            if f.upstream_cluster.as_deref() != Some(cluster.name.as_str()) {
                f.upstream_cluster = Some(cluster.name.clone());
            }
        }
    }

    /// Adds a buffered request body's size.
    pub fn add_request_body(&mut self, n: usize) {
        self.request_body = self.request_body.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts a streamed request body as it passes.
    pub fn count_streamed_body(&mut self, body: ProxyBody) -> ProxyBody {
        if !self.active() {
            return body;
        }
        let n = self.request_streamed.get_or_insert_with(Default::default).clone();
        http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_frame(body, move |f| {
            if let Some(d) = f.data_ref() {
                n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            f
        }))
    }

    /// The response is `resp`: its code and head size; then its body is wrapped so the record is
    /// made when the body ends (or the client leaves during it).
    pub fn respond(mut self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        self.code = Some(resp.status().as_u16());
        if let Some((_, f)) = self.log.as_mut() {
            if f.filter.as_ref().is_some_and(|f| f.wants_response_headers()) {
                f.response_headers = Some(resp.headers().clone());
            }
        }
        if !self.active() {
            return resp;
        }
        if self.protocol == Protocol::Grpc {
            self.grpc_status = grpc_status(resp.headers());
        }
        let reason = resp.status().canonical_reason().map_or(0, str::len);
        self.response_head = head_len(13 + reason, resp.headers());
        resp.map(|inner| http_body_util::BodyExt::boxed(RecordedBody { inner, record: Some(self) }))
    }

    /// Records the request now (once).
    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) || !self.active() {
            return;
        }
        let request_body =
            self.request_body.saturating_add(self.request_streamed.as_ref().map_or(0, |n| n.load(Ordering::Relaxed)));
        let code = match self.code {
            Some(c) => c,
            None => {
                // The request future was dropped before any response: the client went away.
                self.flags.set(Flags::DC);
                0
            }
        };
        let elapsed = self.started.elapsed();
        if let Some((mode, fields)) = self.log.take() {
            let outcome = Outcome {
                code,
                flags: self.flags,
                bytes_received: request_body,
                bytes_sent: self.response_body,
                duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                grpc_status: self.grpc_status,
            };
            self.state.access_log.write(mode, &fields, &outcome, &self.state.metrics);
        }
        if !self.metrics {
            return;
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        let req_bytes = self.request_head.saturating_add(request_body);
        let resp_bytes = self.response_head.saturating_add(self.response_body);
        let metrics = &self.state.metrics.istio;
        let mut labels = TrafficLabels {
            reporter: Reporter::Source,
            source: self.conn.labels.clone(),
            destination: self.destination.clone().unwrap_or_else(PeerLabels::unknown),
            service: self.service.clone().unwrap_or_else(ServiceLabels::unknown),
            protocol: self.protocol,
            code,
            grpc_status: self.grpc_status,
            flags: self.flags,
        };
        self.conn.cache.get(metrics, &labels).record(ms, req_bytes, resp_bytes);
        // The node proxy is also the server's proxy: for a request a mesh endpoint answered, the
        // series a server-side sidecar would report (Istio's dashboards read those). Only what
        // the server could see of the flags: a client leaving mid-response.
        if self.upstream_responded && labels.destination.mesh {
            labels.reporter = Reporter::Destination;
            labels.flags = self.flags.only(Flags::DC);
            self.conn.cache.get(metrics, &labels).record(ms, req_bytes, resp_bytes);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A response body that counts its bytes and makes the request's record when it ends or is
/// dropped (a client that leaves mid-response is `DC`).
struct RecordedBody {
    inner: ProxyBody,
    record: Option<RequestRecord>,
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(rec) = this.record.as_mut() {
                    if let Some(d) = f.data_ref() {
                        rec.response_body = rec.response_body.saturating_add(d.len() as u64);
                    } else if let Some(t) = f.trailers_ref() {
                        if rec.protocol == Protocol::Grpc {
                            rec.grpc_status = grpc_status(t).or(rec.grpc_status);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    // The last frame: recorded now, before it is written, so whoever reads the
                    // response has it counted (hyper may not poll again for the end).
                    this.record = None;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // The upstream's body broke off after the head was sent.
                if let Some(rec) = this.record.as_mut() {
                    rec.flag(Flags::UC);
                }
            }
            Poll::Ready(None) => this.record = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        if let Some(rec) = self.record.as_mut() {
            // hyper stops polling a body that says it has ended; one dropped before that was
            // abandoned by the client.
            if !self.inner.is_end_stream() {
                rec.flag(Flags::DC);
            }
        }
    }
}

/// Records a request the fairness gate refused (its source's queue was full): `503` with
/// Envoy's `OM` flag (the proxy is overloaded, and this source holds more than its share).
pub fn record_fair_share_refusal(state: &Arc<ProxyState>, source: &Source) {
    let mut rec = RequestRecord::new(state.clone(), source, &Request::new(()));
    rec.code = Some(503);
    rec.flag(crate::metrics::Flags::OM);
}

/// Records a request its source's in-flight cap refused before routing, as `resp` (the 503 with
/// `x-envoy-overloaded`) is sent: under its source, every destination label `unknown` (as Istio
/// reports a request no route took anywhere) and Envoy's `UO`, the flag Envoy sets when a
/// concurrency limit (a circuit breaker's `max_requests`) refuses a request with that same reply.
/// The request's own head goes to the access log line when the log is on.
pub fn record_request_cap_refusal<B>(
    state: &Arc<ProxyState>,
    source: &Source,
    req: &Request<B>,
    resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let mut rec = RequestRecord::new(state.clone(), source, req);
    rec.note_request_id(req.headers());
    rec.flag(Flags::UO);
    rec.respond(resp)
}

/// Records a request whose head hyper or the proxy refused before routing (431, 400).
pub fn record_refusal(state: &Arc<ProxyState>, source: &Source, code: u16) {
    let mut rec = RequestRecord::new(state.clone(), source, &Request::new(()));
    rec.code = Some(code);
}

/// How often a relayed TCP connection's byte counters are reported while it is open: Istio's
/// stats filter default `tcp_reporting_duration` (5 s, istio/proxy `istio_stats`), so a long
/// connection's traffic shows in `istio_tcp_*_bytes_total` as it flows, not only at its close.
pub const TCP_REPORTING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes a relayed TCP connection has carried so far, counted as they pass its client side.
#[derive(Default)]
pub struct TcpBytes {
    /// To the client.
    sent: AtomicU64,
    /// From the client.
    received: AtomicU64,
}

impl TcpBytes {
    fn load(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

/// The client's socket of a relayed TCP connection, counting what is read from it and written to
/// it into a [`TcpBytes`] the reporting ticks read while the relay runs.
pub struct CountedIo<S> {
    inner: S,
    bytes: Arc<TcpBytes>,
}

impl<S> CountedIo<S> {
    /// `inner`, counted into `bytes`.
    pub fn new(inner: S, bytes: Arc<TcpBytes>) -> Self {
        CountedIo { inner, bytes }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.bytes.received.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.bytes.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.bytes.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One relayed TCP connection's Istio metrics and access log line, as Istio's stats filter and
/// Envoy's TCP proxy make them: `istio_tcp_connections_opened_total` when the upstream connection
/// is up, the byte counters every [`TCP_REPORTING_INTERVAL`] while it is open ([`report`]), and at
/// the end (when dropped) the rest of the bytes, `istio_tcp_connections_closed_total` and one
/// access log line. A connection that could not be relayed (no endpoint, connect failure) is
/// opened and closed at once with its flag, as Envoy reports it.
///
/// [`report`]: TcpRecord::report
pub struct TcpRecord {
    state: Arc<ProxyState>,
    /// The client side's series (`reporter="source"`).
    labels: TrafficLabels,
    /// Whether the server side's series is reported too: the endpoint is a mesh pod.
    server_side: bool,
    metrics: bool,
    opened: bool,
    log: Option<(AccessLogMode, Box<Fields>)>,
    started: Instant,
    bytes: Arc<TcpBytes>,
    /// What the counters had at the last report.
    reported: (u64, u64),
}

impl TcpRecord {
    /// A connection from `source` to the service of `cluster`.
    pub fn new(state: Arc<ProxyState>, source: &Source, cluster: &crate::routing::Cluster) -> Self {
        let metrics = state.request_metrics.load(Ordering::Relaxed);
        let (mode, filter) = state.access_log.for_source(source.workload.as_deref());
        // Envoy's TCP proxy has no request: the HTTP fields stay empty and print as `-`. A
        // Telemetry filter applies as to requests (one on `response.code` is false here: no code).
        let log = (mode != AccessLogMode::Off).then(|| {
            let fields = Fields {
                start: Some(std::time::SystemTime::now()),
                protocol: "-",
                upstream_cluster: Some(cluster.name.clone()),
                filter,
                ..Default::default()
            };
            (mode, Box::new(fields))
        });
        TcpRecord {
            labels: TrafficLabels {
                reporter: Reporter::Source,
                source: source.telemetry.labels.clone(),
                destination: PeerLabels::unknown(),
                service: cluster.telemetry().service.clone(),
                protocol: Protocol::Tcp,
                code: 0,
                grpc_status: None,
                flags: Flags::default(),
            },
            server_side: false,
            metrics,
            opened: false,
            log,
            started: Instant::now(),
            bytes: Default::default(),
            reported: (0, 0),
            state,
        }
    }

    /// The connection goes to the endpoint `addr` of `cluster`.
    pub fn set_endpoint(&mut self, cluster: &crate::routing::Cluster, addr: std::net::SocketAddr) {
        self.labels.destination = cluster.telemetry().endpoint(addr);
        if let Some((_, f)) = self.log.as_mut() {
            f.upstream_host = Some(addr);
        }
    }

    /// The connection could not be relayed, for the reason `flag` names; recorded at once.
    pub fn refused(mut self, flag: Flags) {
        self.labels.flags.set(flag);
    }

    /// The upstream connection is up: counted opened, on both sides' series when the endpoint
    /// is a mesh pod (see README, Telemetry: reporter).
    pub fn connected(&mut self) {
        self.server_side = self.labels.destination.mesh;
        self.open();
    }

    fn open(&mut self) {
        if std::mem::replace(&mut self.opened, true) || !self.metrics {
            return;
        }
        let istio = &self.state.metrics.istio;
        istio.tcp_opened(&self.labels);
        if self.server_side {
            istio.tcp_opened(&self.server_labels());
        }
    }

    fn server_labels(&self) -> TrafficLabels {
        TrafficLabels { reporter: Reporter::Destination, ..self.labels.clone() }
    }

    /// The counters the relay adds to (wrap the client's socket in a [`CountedIo`] with them).
    pub fn bytes(&self) -> Arc<TcpBytes> {
        self.bytes.clone()
    }

    /// Whether the periodic reports have anything to do (metrics on).
    pub fn reporting(&self) -> bool {
        self.metrics
    }

    /// Adds the bytes carried since the last report to the byte counters.
    pub fn report(&mut self) {
        if !self.metrics {
            return;
        }
        let (sent, received) = self.bytes.load();
        let delta = (sent.saturating_sub(self.reported.0), received.saturating_sub(self.reported.1));
        self.reported = (sent, received);
        let istio = &self.state.metrics.istio;
        istio.tcp_bytes(&self.labels, delta.0, delta.1);
        if self.server_side {
            istio.tcp_bytes(&self.server_labels(), delta.0, delta.1);
        }
    }
}

impl Drop for TcpRecord {
    fn drop(&mut self) {
        self.open();
        self.report();
        if self.metrics {
            let istio = &self.state.metrics.istio;
            istio.tcp_closed(&self.labels);
            if self.server_side {
                istio.tcp_closed(&self.server_labels());
            }
        }
        if let Some((mode, fields)) = self.log.take() {
            let (sent, received) = self.bytes.load();
            let outcome = Outcome {
                code: 0,
                flags: self.labels.flags,
                bytes_received: received,
                bytes_sent: sent,
                duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                grpc_status: None,
            };
            self.state.access_log.write(mode, &fields, &outcome, &self.state.metrics);
        }
    }
}
