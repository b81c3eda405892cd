//! A routed request's way to its upstream, one phase per function, in the order they run: the
//! route's fault, the request body read ahead, the cluster's circuit breaker, the upstream head
//! (header rules, rewrite), the mirrors, then the tries — pick an endpoint, send under the per-try
//! timeout, judge the answer, retry or give up. [`Failure`] is the one place an upstream failure
//! becomes a reply and a response flag; downstream (client) failures never reach it.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{
    header,
    uri::{Authority, InvalidUri, PathAndQuery, Scheme},
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri,
};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use rand::Rng;
// tokio's clock, as the timers it is compared with: a paused test clock then drives both.
use tokio::time::Instant;

use super::{
    http::{
        downstream_body_error, empty, local_reply, read_body, strip_hop_by_hop, BodyError, Chunks, ProxyBody, ReadBody,
        ReqBody,
    },
    lb::{Admitted, Picked},
    limits::{BodyBudget, StreamActivity},
    pool::{UpstreamBody, UpstreamError},
    telemetry::RequestRecord,
    ProxyState, Source,
};
use crate::metrics::Flags;
use crate::routing::{Forward, HashOn, LbPolicy, UpstreamProtocol};

/// Forwards a routed request and returns the response to send back (the upstream's, or a local
/// reply saying what failed). Never fails.
pub(super) async fn forward(
    state: &Arc<ProxyState>,
    source: &Source,
    fwd: Forward,
    req: Request<Incoming>,
    rec: &mut RequestRecord,
    ticket: Option<Arc<super::limits::Ticket>>,
) -> Response<ProxyBody> {
    if let Some(reply) = inject_fault(&fwd, rec).await {
        return reply;
    }
    let (mut parts, body) = req.into_parts();
    // The body is read (ahead) before the cluster's circuit breakers are asked: a client that
    // stalls its body holds its own caps, never a slot of the connection pool everyone shares.
    let activity = StreamActivity::new();
    // `_budget` holds the source's read-ahead bytes until the request is forwarded (returned).
    let (body, _budget) = match read_ahead(state, source, &parts, body, &activity, ticket).await {
        Ok(read) => read,
        Err(reply) => return reply,
    };
    let Some(_admitted) = state.lb.admit(&fwd.cluster) else {
        return overflow_reply(state, &fwd, rec);
    };
    let path_and_query = upstream_head(&fwd, &mut parts);
    if let ReqBody::Buffered(bytes) = &body {
        for mirror in &fwd.mirrors {
            spawn_mirror(state, mirror.clone(), &parts, &path_and_query, bytes.clone());
        }
        rec.add_request_body(bytes.len());
    }
    Tries::new(state, source, &fwd, parts, path_and_query, body, activity).run(rec).await
}

/// The route's fault injection: waits out the delay, then answers the abort if there is one.
async fn inject_fault(fwd: &Forward, rec: &mut RequestRecord) -> Option<Response<ProxyBody>> {
    if let Some(delay) = fwd.fault.delay {
        // Flagged before the wait: a client giving up during it is recorded as DI,DC.
        rec.flag(Flags::DI);
        tokio::time::sleep(delay).await;
    }
    let status = fwd.fault.abort?;
    rec.flag(Flags::FI);
    Some(local_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "fault filter abort"))
}

/// Reads the request body ahead (see [`read_body`]) under the body idle timeout, counting a
/// timeout and a source past its read-ahead budget under that source. The budget returned holds
/// the source's read-ahead bytes until it is dropped.
async fn read_ahead(
    state: &Arc<ProxyState>,
    source: &Source,
    parts: &http::request::Parts,
    body: Incoming,
    activity: &Arc<StreamActivity>,
    ticket: Option<Arc<super::limits::Ticket>>,
) -> Result<(ReqBody, BodyBudget), Response<ProxyBody>> {
    let mut budget = source.caps.as_ref().map_or_else(BodyBudget::unlimited, |c| c.body_budget().for_ticket(ticket));
    if body.is_end_stream() {
        // Most requests: nothing to wait for, no timer to set up.
        return Ok((ReqBody::Buffered(Chunks::default()), budget));
    }
    let on_timeout = {
        let state = state.clone();
        let workload = source.workload.clone();
        move || {
            let src = workload.as_ref().map_or("ingress", |w| w.name.as_str());
            tracing::debug!(src = %src, "request body idle timeout");
            state
                .metrics
                .inc("mesh_downstream_timeouts_total", &[("source_workload", src), ("reason", "request_body_timeout")]);
        }
    };
    let timeout = state.limits.request_body_idle_timeout;
    let body = super::limits::IdleTimeoutBody::new(body, activity.clone(), timeout, Box::new(on_timeout));
    let http2 = parts.version == http::Version::HTTP_2;
    let ReadBody { body, over_budget } = read_body(body, state.limits.max_buffered_body, http2, &mut budget).await?;
    if over_budget {
        let src = source.workload.as_ref().map_or("ingress", |w| w.name.as_str());
        state.metrics.inc("mesh_downstream_overflow_total", &[("source_workload", src), ("limit", "buffered_body")]);
    }
    Ok((body, budget))
}

/// The cluster's circuit breaker is open (connectionPool limits): Envoy's 503 with
/// `x-envoy-overloaded` and flag UO.
fn overflow_reply(state: &ProxyState, fwd: &Forward, rec: &mut RequestRecord) -> Response<ProxyBody> {
    rec.flag(Flags::UO);
    state.metrics.inc("mesh_overflow_total", &[("cluster", &fwd.cluster.name)]);
    let mut r = local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "upstream connect error or disconnect/reset before headers. reset reason: overflow ({} connection pool is full)",
            fwd.cluster.name
        ),
    );
    r.headers_mut().insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    r
}

/// Applies the route's request header rules and rewrite to the request head; returns the path
/// and query to send upstream.
fn upstream_head(fwd: &Forward, parts: &mut http::request::Parts) -> UpstreamPath {
    fwd.request_headers.apply(&mut parts.headers);
    let mut path_and_query = UpstreamPath::of(&parts.uri);
    if let Some(rw) = &fwd.rewrite {
        if let Some(p) = rw.apply_path(parts.uri.path()) {
            let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            path_and_query = UpstreamPath::from(format!("{p}{query}"));
        }
        if let Some(a) = &rw.authority {
            if let Ok(v) = HeaderValue::from_str(a) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    path_and_query
}

/// The path and query every try and mirror sends: what `http://{endpoint}{path}` parses to.
#[derive(Debug)]
enum UpstreamPath {
    /// An origin-form path whose parse kept its text as is: put behind the endpoint's authority
    /// it is the URI that text parses to, with no parse per try.
    Parsed(PathAndQuery),
    /// Anything else (`*`, a rewritten path without its leading `/` or with a fragment): each
    /// try parses the whole text, since that text's URI (or its error) is what the request gets.
    Raw(String),
}

impl UpstreamPath {
    /// The downstream request's path and query; none is `/`.
    fn of(uri: &Uri) -> Self {
        match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => UpstreamPath::Parsed(pq.clone()),
            Some(pq) => UpstreamPath::Raw(pq.as_str().to_owned()),
            None => UpstreamPath::Parsed(PathAndQuery::from_static("/")),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            UpstreamPath::Parsed(pq) => pq.as_str(),
            UpstreamPath::Raw(s) => s,
        }
    }
}

impl From<String> for UpstreamPath {
    fn from(text: String) -> Self {
        match PathAndQuery::try_from(text.as_str()) {
            Ok(pq) if text.starts_with('/') && pq.as_str() == text => UpstreamPath::Parsed(pq),
            _ => UpstreamPath::Raw(text),
        }
    }
}

/// `http://{addr}{path}` as a URI, or why that text is not one. `authority` is `addr`'s (see
/// [`super::lb::authority_of`]).
fn upstream_uri(authority: Option<&Authority>, addr: SocketAddr, path: &UpstreamPath) -> Result<Uri, InvalidUri> {
    // The parser refuses a URI text longer than this; the joined one must be refused alike.
    const MAX_URI_LEN: usize = u16::MAX as usize - 1;
    if let (Some(authority), UpstreamPath::Parsed(pq)) = (authority, path) {
        if "http://".len() + authority.as_str().len() + pq.as_str().len() <= MAX_URI_LEN {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(pq.clone());
            if let Ok(uri) = Uri::from_parts(parts) {
                return Ok(uri);
            }
        }
    }
    format!("http://{addr}{}", path.as_str()).parse()
}

/// What a request does after one try.
enum Next {
    /// Try again, after the retry back-off.
    Retry,
    /// Try again at once, on a new connection (the pooled one closed under the request).
    RetryNow,
    /// Send this back to the client.
    Respond(Response<ProxyBody>),
}

/// The tries of one request at its cluster: what every try sends, and what the tries so far did.
struct Tries<'a> {
    state: &'a Arc<ProxyState>,
    fwd: &'a Forward,
    /// The downstream head: its headers are moved into the last possible try, cloned for others.
    parts: http::request::Parts,
    path_and_query: UpstreamPath,
    /// `None` once a streamed body was sent (it is sent once) or for an empty one.
    body: Option<ReqBody>,
    /// Set when the client broke its own streamed body (see [`ReqBody::Streaming`]).
    downstream_failed: Option<Arc<std::sync::OnceLock<String>>>,
    activity: Arc<StreamActivity>,
    hash: Option<u64>,
    deadline: Option<Instant>,
    max_attempts: u32,
    attempt: u32,
    /// Endpoints tried so far: a retry goes to another one while another one is left.
    tried: Vec<SocketAddr>,
    /// The retry slot held while a retry is outstanding (connectionPool.http.maxRetries).
    retry_slot: Option<Admitted>,
    protocol: UpstreamProtocol,
    client: super::upstream::UpstreamClient,
    fresh_retry_done: bool,
}

impl<'a> Tries<'a> {
    fn new(
        state: &'a Arc<ProxyState>,
        source: &Source,
        fwd: &'a Forward,
        parts: http::request::Parts,
        path_and_query: UpstreamPath,
        body: ReqBody,
        activity: Arc<StreamActivity>,
    ) -> Self {
        let hash = hash_key(&fwd.cluster.lb, &parts.headers, parts.uri.query(), source.peer);
        // Durations are bounded at parse time, but a deadline past what the clock can hold is
        // just no deadline, never a panic.
        let deadline = fwd.timeout.and_then(|t| Instant::now().checked_add(t));
        let (max_attempts, downstream_failed) = match &body {
            ReqBody::Buffered(_) => (fwd.retries.attempts.saturating_add(1), None),
            ReqBody::Streaming(_, failed) => (1, Some(failed.clone())),
        };
        let (protocol, client) = state.upstream(&fwd.cluster, parts.version);
        Tries {
            state,
            fwd,
            parts,
            path_and_query,
            body: Some(body),
            downstream_failed,
            activity,
            hash,
            deadline,
            max_attempts,
            attempt: 0,
            tried: Vec::new(),
            retry_slot: None,
            protocol,
            client,
            fresh_retry_done: false,
        }
    }

    async fn run(mut self, rec: &mut RequestRecord) -> Response<ProxyBody> {
        loop {
            self.attempt += 1;
            let last = self.attempt >= self.max_attempts;
            let Some(picked) = self.state.lb.pick(&self.fwd.cluster, self.hash, &self.tried) else {
                rec.flag(Flags::UH);
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no healthy upstream: {} has no endpoints (does any pod match its selector and subset labels?)",
                        self.fwd.cluster.name
                    ),
                );
            };
            self.tried.push(picked.endpoint.addr);
            rec.set_endpoint(&self.fwd.cluster, picked.endpoint.addr);
            let up = match self.upstream_request(rec, &picked) {
                Ok(up) => up,
                Err(e) => return local_reply(StatusCode::BAD_REQUEST, format!("invalid request path: {e}")),
            };
            let sent = Instant::now();
            let result = self.send(up, sent).await;
            let deadline_passed = self.deadline.is_some_and(|d| Instant::now() >= d);
            let next = match result {
                Ok(resp) => self.on_response(rec, &picked, resp, last, deadline_passed, sent),
                Err(failure) => self.on_failure(rec, &picked, failure, last, deadline_passed),
            };
            match next {
                Next::Respond(reply) => return reply,
                Next::Retry => backoff(self.fwd.retries.backoff, self.attempt).await,
                Next::RetryNow => {}
            }
        }
    }

    /// This try's request to `picked`: the head prepared once, the body replayed or streamed.
    fn upstream_request(&mut self, rec: &mut RequestRecord, picked: &Picked) -> Result<Request<ProxyBody>, InvalidUri> {
        let body = match self.body.as_mut() {
            Some(ReqBody::Buffered(b)) => b.body(),
            Some(ReqBody::Streaming(..)) => match self.body.take() {
                Some(ReqBody::Streaming(s, _)) => rec.count_streamed_body(s),
                _ => empty(),
            },
            None => empty(),
        };
        let uri = upstream_uri(picked.authority(), picked.endpoint.addr, &self.path_and_query)?;
        let headers = if self.attempt >= self.max_attempts && !self.fresh_retry_possible() {
            // No try can follow this one: nothing needs the headers after it.
            std::mem::take(&mut self.parts.headers)
        } else {
            self.parts.headers.clone()
        };
        let mut up = Request::new(body);
        *up.method_mut() = self.parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers;
        *up.version_mut() = self.protocol.version();
        if self.protocol == UpstreamProtocol::Http1
            && self.fwd.cluster.connection_pool.max_requests_per_connection == Some(1)
        {
            // Istio's way of turning upstream keep-alive off.
            up.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(up)
    }

    /// Sends one try, under the per-try timeout or what is left of the route's, whichever ends first.
    async fn send(&self, up: Request<ProxyBody>, now: Instant) -> Result<Response<UpstreamBody>, Failure> {
        let remaining = self.deadline.map(|d| d.saturating_duration_since(now));
        let try_timeout = match (self.fwd.retries.per_try_timeout, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // One request future for both ways to await it (two would each take its size here).
        let mut request = std::pin::pin!(self.client.request(up));
        match try_timeout {
            Some(t) => match tokio::time::timeout(t, request.as_mut()).await {
                Ok(r) => r.map_err(Failure::from_client),
                Err(_) => Err(Failure::Timeout),
            },
            None => request.await.map_err(Failure::from_client),
        }
    }

    /// The client broke or stalled its own body: whatever the upstream answered is not the
    /// endpoint's doing.
    fn client_failed(&self) -> bool {
        self.downstream_failed.as_ref().is_some_and(|f| f.get().is_some()) || self.activity.timed_out()
    }

    /// An upstream answered: retry on a retriable status while tries and time are left, else
    /// pass the response on with the route's response header rules.
    fn on_response(
        &mut self,
        rec: &mut RequestRecord,
        picked: &Picked,
        resp: Response<UpstreamBody>,
        last: bool,
        deadline_passed: bool,
        sent: Instant,
    ) -> Next {
        let status = resp.status().as_u16();
        if !self.client_failed() {
            self.state.lb.report(&self.fwd.cluster, picked, Some(status));
        }
        let retriable = self.fwd.retries.retry_on.status(status);
        if !last && !deadline_passed && retriable && self.retry_admitted() {
            tracing::debug!(status, attempt = self.attempt, "retrying");
            return Next::Retry;
        }
        if last && self.attempt > 1 && retriable {
            // Still a retriable answer, and no attempt left: Envoy's URX.
            rec.flag(Flags::URX);
        }
        rec.upstream_responded = true;
        rec.upstream_service_time(sent.elapsed());
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        self.fwd.response_headers.apply(&mut rparts.headers);
        let rbody = rbody.map_err(BodyError::Hyper);
        if self.downstream_failed.is_none() {
            return Next::Respond(Response::from_parts(rparts, rbody.boxed()));
        }
        // The request body may still be streaming: response data is activity too (Envoy's stream
        // idle timer counts both directions), so a server talking keeps it alive.
        let activity = self.activity.clone();
        let rbody = rbody.map_frame(move |f| {
            activity.touch();
            f
        });
        Next::Respond(Response::from_parts(rparts, rbody.boxed()))
    }

    /// A try failed before any response: the client's fault (408/400, nothing held against the
    /// endpoint), a pooled connection closed under the request (once more on a new connection),
    /// or the endpoint's (reported to outlier detection; retried by the policy, else the reply).
    fn on_failure(
        &mut self,
        rec: &mut RequestRecord,
        picked: &Picked,
        failure: Failure,
        last: bool,
        deadline_passed: bool,
    ) -> Next {
        if failure.closed_before_response() && self.fresh_retry_possible() && !deadline_passed {
            // Most likely the server's keep-alive timer fired as the connection was reused
            // (Istio retries this as `reset-before-request` by default). Once, on a new
            // connection, whatever the retry policy says, and not held against the endpoint.
            tracing::debug!(?failure, "upstream connection closed before the response; retrying on a new connection");
            self.fresh_retry_done = true;
            self.client = self.state.fresh_upstream(&self.fwd.cluster, self.protocol);
            self.tried.pop();
            self.attempt -= 1;
            return Next::RetryNow;
        }
        if self.activity.timed_out() {
            // The client stopped sending its body before any response came back: 408 (Envoy's
            // stream idle timeout reply); the upstream request was reset with it.
            let timeout = super::limits::BodyIdleTimeout(self.state.limits.request_body_idle_timeout);
            return Next::Respond(downstream_body_error(&BodyError::IdleTimeout(timeout)));
        }
        if let Some(e) = self.downstream_failed.as_ref().and_then(|f| f.get()) {
            // The client broke its own request body mid-stream: not the endpoint's failure, so
            // no outlier report and no retry.
            return Next::Respond(local_reply(StatusCode::BAD_REQUEST, format!("downstream request body error: {e}")));
        }
        self.state.lb.report(&self.fwd.cluster, picked, None);
        let retriable = failure.retriable(self.fwd);
        if !last && !deadline_passed && retriable && self.retry_admitted() {
            tracing::debug!(?failure, attempt = self.attempt, "retrying");
            return Next::Retry;
        }
        if last && self.attempt > 1 && retriable {
            rec.flag(Flags::URX);
        }
        rec.flag(failure.flag());
        Next::Respond(failure.reply(deadline_passed))
    }

    /// A try closed under the request may be made once more, past the retry policy's tries
    /// (see [`Self::on_failure`]): only with a body that can be sent again.
    fn fresh_retry_possible(&self) -> bool {
        !self.fresh_retry_done && matches!(self.body, Some(ReqBody::Buffered(_)))
    }

    fn retry_admitted(&mut self) -> bool {
        retry_admitted(self.state, self.fwd, &mut self.retry_slot)
    }
}

/// Takes a retry slot of the cluster (replacing the one the previous retry held); counts and
/// refuses the retry when `maxRetries` are already outstanding.
fn retry_admitted(state: &ProxyState, fwd: &Forward, slot: &mut Option<super::lb::Admitted>) -> bool {
    *slot = None;
    match state.lb.admit_retry(&fwd.cluster) {
        Some(s) => {
            *slot = Some(s);
            true
        }
        None => {
            state.metrics.inc("mesh_retry_overflow_total", &[("cluster", &fwd.cluster.name)]);
            false
        }
    }
}

/// The wait before a retry: the route's back-off, else Envoy's default (see [`retry_backoff`]).
async fn backoff(base: Option<Duration>, attempt: u32) {
    let jitter = rand::thread_rng().gen::<f64>();
    tokio::time::sleep(crate::routing::retry_backoff(base, attempt, jitter)).await;
}

#[derive(Debug)]
enum Failure {
    Connect(String),
    /// `.1`: the connection closed before any response byte (not a malformed response).
    Reset(String, bool),
    Timeout,
}

impl Failure {
    /// The connection closed (EOF or reset) before any response byte arrived.
    fn closed_before_response(&self) -> bool {
        match self {
            Failure::Reset(_, closed) => *closed,
            _ => false,
        }
    }

    fn from_client(e: UpstreamError) -> Self {
        if let UpstreamError::Connect(e) = e {
            Failure::Connect(format!("{e:?}"))
        } else {
            let mut closed = false;
            let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
            while let Some(s) = source {
                if let Some(h) = s.downcast_ref::<hyper::Error>() {
                    closed |= h.is_incomplete_message() || h.is_canceled();
                }
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    closed |= matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    );
                }
                source = s.source();
            }
            Failure::Reset(format!("{e:?}"), closed)
        }
    }

    fn retriable(&self, fwd: &Forward) -> bool {
        let on = &fwd.retries.retry_on;
        match self {
            Failure::Connect(_) => on.connect_failure || on.reset || on.gateway_error || on.five_xx,
            Failure::Reset(..) => on.reset || on.five_xx,
            // Envoy's `reset` covers a read timeout too: the upstream did not respond at all.
            Failure::Timeout => on.five_xx || on.gateway_error || on.reset,
        }
    }

    /// Envoy's response flag for a request that ended with this failure.
    fn flag(&self) -> Flags {
        match self {
            Failure::Connect(_) => Flags::UF,
            Failure::Reset(..) => Flags::UC,
            Failure::Timeout => Flags::UT,
        }
    }

    fn reply(self, deadline_passed: bool) -> Response<ProxyBody> {
        match self {
            Failure::Timeout if deadline_passed => local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            Failure::Timeout => local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream per-try timeout"),
            Failure::Connect(e) => local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error or disconnect/reset before headers. reset reason: connection failure: {e}"),
            ),
            Failure::Reset(e, _) => local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error or disconnect/reset before headers. reset reason: connection termination: {e}"),
            ),
        }
    }
}

/// The consistent-hash key of a request: xxHash64 (seed 0) of the configured header's value,
/// cookie value, source IP octets or query parameter value, as Envoy hashes them — a specified
/// function, so every agent build of a rollout agrees on it.
pub(crate) fn hash_key(
    lb: &LbPolicy,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<SocketAddr>,
) -> Option<u64> {
    let LbPolicy::ConsistentHash(on) = lb else { return None };
    let xxh64 = |bytes: &[u8]| twox_hash::XxHash64::oneshot(0, bytes);
    match on {
        HashOn::Header(name) => Some(xxh64(headers.get(name.as_str())?.as_bytes())),
        HashOn::Cookie { name, .. } => {
            let cookie = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)?;
            Some(xxh64(cookie.1.as_bytes()))
        }
        HashOn::SourceIp => Some(match peer?.ip() {
            std::net::IpAddr::V4(ip) => xxh64(&ip.octets()),
            std::net::IpAddr::V6(ip) => xxh64(&ip.octets()),
        }),
        HashOn::QueryParameter(name) => {
            let value = query?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| k == name))?.1;
            Some(xxh64(value.as_bytes()))
        }
    }
}

fn spawn_mirror(
    state: &Arc<ProxyState>,
    cluster: Arc<crate::routing::Cluster>,
    parts: &http::request::Parts,
    path_and_query: &UpstreamPath,
    body: Chunks,
) {
    let Some(picked) = state.lb.pick(&cluster, None, &[]) else { return };
    let Ok(uri) = upstream_uri(picked.authority(), picked.endpoint.addr, path_and_query) else { return };
    let mut req = Request::new(body.body());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = parts.headers.clone();
    // Istio appends "-shadow" to the authority of mirrored requests so backends can tell.
    if let Some(host) = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let (h, port) = host.rsplit_once(':').map_or((host, None), |(h, p)| (h, Some(p)));
        let shadow = match port {
            Some(p) => format!("{h}-shadow:{p}"),
            None => format!("{h}-shadow"),
        };
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let (protocol, client) = state.upstream(&cluster, parts.version);
    *req.version_mut() = protocol.version();
    tokio::spawn(async move {
        let _picked = picked;
        if let Ok(resp) = client.request(req).await {
            let _ = resp.into_body().collect().await;
        }
    });
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
