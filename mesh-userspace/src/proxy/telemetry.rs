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
    request_bytes: u64,
    request_body: Option<Arc<AtomicU64>>,
    response_bytes: u64,
    /// The response came from the endpoint (not a local reply): the server side saw it too.
    pub upstream_responded: bool,
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
        RequestRecord {
            state,
            conn: source.telemetry.clone(),
            started: Instant::now(),
            service: None,
            destination: None,
            protocol: if grpc { Protocol::Grpc } else { Protocol::Http },
            code: None,
            grpc_status: None,
            flags: Flags::default(),
            request_bytes: head_len(line, req.headers()),
            request_body: None,
            response_bytes: 0,
            upstream_responded: false,
            done: false,
        }
    }

    /// Whether anything reads this record (metrics on); callers skip work for it otherwise.
    pub fn active(&self) -> bool {
        self.state.request_metrics.load(Ordering::Relaxed)
    }

    /// Adds a response flag.
    pub fn flag(&mut self, f: Flags) {
        self.flags.set(f);
    }

    /// The request went to `cluster`.
    pub fn set_cluster(&mut self, cluster: &crate::routing::Cluster) {
        if self.active() {
            self.service = Some(cluster.telemetry().service.clone());
        }
    }

    /// The request was sent to the endpoint `addr` of `cluster`.
    pub fn set_endpoint(&mut self, cluster: &crate::routing::Cluster, addr: std::net::SocketAddr) {
        if self.active() {
            self.destination = Some(cluster.telemetry().endpoint(addr));
        }
    }

    /// Adds a buffered request body's size.
    pub fn add_request_body(&mut self, n: usize) {
        self.request_bytes = self.request_bytes.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts a streamed request body as it passes.
    pub fn count_streamed_body(&mut self, body: ProxyBody) -> ProxyBody {
        if !self.active() {
            return body;
        }
        let n = self.request_body.get_or_insert_with(Default::default).clone();
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
        if !self.active() {
            return resp;
        }
        if self.protocol == Protocol::Grpc {
            self.grpc_status = grpc_status(resp.headers());
        }
        let reason = resp.status().canonical_reason().map_or(0, str::len);
        self.response_bytes = head_len(13 + reason, resp.headers());
        resp.map(|inner| http_body_util::BodyExt::boxed(RecordedBody { inner, record: Some(self) }))
    }

    /// Records the request now (once).
    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) || !self.active() {
            return;
        }
        let code = match self.code {
            Some(c) => c,
            None => {
                // The request future was dropped before any response: the client went away.
                self.flags.set(Flags::DC);
                0
            }
        };
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let req_bytes =
            self.request_bytes.saturating_add(self.request_body.as_ref().map_or(0, |n| n.load(Ordering::Relaxed)));
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
        self.conn.cache.get(metrics, &labels).record(ms, req_bytes, self.response_bytes);
        // The node proxy is also the server's proxy: for a request a mesh endpoint answered, the
        // series a server-side sidecar would report (Istio's dashboards read those). Only what
        // the server could see of the flags: a client leaving mid-response.
        if self.upstream_responded && labels.destination.mesh {
            labels.reporter = Reporter::Destination;
            labels.flags = self.flags.only(Flags::DC);
            self.conn.cache.get(metrics, &labels).record(ms, req_bytes, self.response_bytes);
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
                        rec.response_bytes = rec.response_bytes.saturating_add(d.len() as u64);
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

/// Records a request whose head hyper or the proxy refused before routing (431, 400).
pub fn record_refusal(state: &Arc<ProxyState>, source: &Source, code: u16) {
    let mut rec = RequestRecord::new(state.clone(), source, &Request::new(()));
    rec.code = Some(code);
}
