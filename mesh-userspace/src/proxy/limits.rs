//! Downstream protection: the limits every client connection of the shared node proxy is held to,
//! so that one pod's slow, oversized or idle connections cannot hold the proxy's memory and
//! sockets for everyone else (issue 13). One typed struct with Envoy's/Istio's defaults; flags or
//! annotations can fill it later without touching the enforcement.
use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use std::future::Future as _;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// Downstream (client-side) limits of the node proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// An HTTP/1 request head must be complete this long after its first byte arrived, or the
    /// connection is closed. Envoy's `request_headers_timeout` is off by default; hyper's default
    /// (and the middle of nginx's 60 s `client_header_timeout` and Apache mod_reqtimeout's 20–40 s)
    /// is 30 s: far beyond what a pod on the same node needs for a few KB of headers, short enough
    /// that a slowloris client holds a connection for 30 s instead of forever. The timer starts at
    /// the first byte, as Envoy's does, so an idle keep-alive connection is not cut by it.
    pub request_headers_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (HTTP/2: GOAWAY
    /// first). Istio's default for HTTP connections (Envoy `common_http_protocol_options.idle_timeout`).
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

/// Why the proxy closed a client connection on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// A request head was started and not finished within `request_headers_timeout`.
    Headers,
    /// No request in flight for `idle_timeout`.
    Idle,
}

impl Expired {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Expired::Headers => "request_headers_timeout",
            Expired::Idle => "idle_timeout",
        }
    }
}

const NONE: u64 = u64::MAX;

/// What one client connection is doing, shared by its socket wrapper (bytes arriving), its
/// request handlers (requests starting and finishing) and its watchdog (timeouts).
pub(crate) struct ConnActivity {
    epoch: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` when the first byte of a request head arrived while no request
    /// was in flight; NONE when no head is pending.
    head_started: AtomicU64,
    /// Milliseconds since `epoch` when the last request in flight finished (or the connection opened).
    idle_since: AtomicU64,
    /// Set once the client is seen speaking HTTP/2 (the connection preface): its frames between
    /// requests (PING, SETTINGS) are not request heads, and h2 bounds header blocks itself.
    http2: AtomicBool,
    seen_bytes: AtomicBool,
    /// The last request started had a body.
    last_had_body: AtomicBool,
    changed: Notify,
    /// Bytes of the pending request head read so far (hyper holds them until the head parses),
    /// also added to the source's count for the overload manager.
    head_bytes: AtomicU64,
    source_head_bytes: Option<Arc<AtomicU64>>,
}

impl ConnActivity {
    #[cfg(test)]
    pub(crate) fn new() -> Arc<Self> {
        Self::counting(None)
    }

    /// A connection whose pending head bytes are also counted in `source_head_bytes` (its source
    /// workload's, for the overload manager).
    pub(crate) fn counting(source_head_bytes: Option<Arc<AtomicU64>>) -> Arc<Self> {
        Arc::new(ConnActivity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            head_started: AtomicU64::new(NONE),
            idle_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            seen_bytes: AtomicBool::new(false),
            last_had_body: AtomicBool::new(false),
            changed: Notify::new(),
            head_bytes: AtomicU64::new(0),
            source_head_bytes,
        })
    }

    /// The pending head is done (parsed, or the connection ended): its bytes are no longer held.
    fn release_head(&self) {
        let n = self.head_bytes.swap(0, Ordering::AcqRel);
        if let (Some(src), true) = (&self.source_head_bytes, n > 0) {
            src.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch.checked_add(Duration::from_millis(ms)).unwrap_or(self.epoch)
    }

    /// Bytes arrived from the client (`first` holds the start of what was read).
    fn on_read(&self, first: &[u8]) {
        if !self.seen_bytes.swap(true, Ordering::Relaxed) && first.starts_with(b"PRI * HTTP/2") {
            self.http2.store(true, Ordering::Relaxed);
        }
        if self.http2.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        if let Some(src) = &self.source_head_bytes {
            let n = first.len() as u64;
            self.head_bytes.fetch_add(n, Ordering::AcqRel);
            src.fetch_add(n, Ordering::AcqRel);
        }
        if self.head_started.compare_exchange(NONE, self.now_ms(), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.changed.notify_one();
        }
    }

    /// A request head was parsed and handed to the proxy; the returned guard ends it when dropped
    /// (hyper drops the response body once it is written, or the handler when the client left).
    pub(crate) fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        self.release_head();
        RequestGuard(self.clone())
    }

    /// Whether the connection can be taken from hyper now: no request in flight, no byte of a
    /// next request head read, and the last request had no body. A body can outlive its
    /// response (a server that answers early) or be left unread, and then hyper is not between
    /// requests even with nothing in flight.
    pub(crate) fn parkable(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NONE
            && !self.last_had_body.load(Ordering::Acquire)
    }

    /// Notes whether the request just begun has a body (see [`ConnActivity::parkable`]).
    pub(crate) fn request_has_body(&self, body: bool) {
        self.last_had_body.store(body, Ordering::Release);
    }

    /// When the watchdog must look again, given the limits; None: not before something changes.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let head = self.head_started.load(Ordering::Acquire);
        if head != NONE {
            return Some(saturating_later(self.at(head), limits.request_headers_timeout));
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = self.at(self.idle_since.load(Ordering::Acquire));
        Some(saturating_later(idle, limits.idle_timeout))
    }

    /// The limit this connection has run past at `now`, if any.
    pub(crate) fn expired(&self, limits: &Limits, now: Instant) -> Option<Expired> {
        let deadline = self.deadline(limits)?;
        if now < deadline {
            return None;
        }
        Some(if self.head_started.load(Ordering::Acquire) != NONE { Expired::Headers } else { Expired::Idle })
    }

    /// Waits until `limits` are exceeded; re-arms itself whenever requests start or end.
    pub(crate) async fn watch(&self, limits: &Limits) -> Expired {
        loop {
            let changed = self.changed.notified();
            if let Some(e) = self.expired(limits, Instant::now()) {
                return e;
            }
            match self.deadline(limits) {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

impl Drop for ConnActivity {
    fn drop(&mut self) {
        self.release_head();
    }
}

/// One request in flight on a connection.
pub(crate) struct RequestGuard(Arc<ConnActivity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        // Stamp the idle start before the count drops, so a watchdog that sees zero in flight
        // never reads a stale idle start.
        a.idle_since.store(a.now_ms(), Ordering::Release);
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.changed.notify_one();
        }
    }
}

/// The caps of one source workload (one enrolled pod's listener): connections open, requests
/// in flight and request body bytes buffered, shared by all of its connections; and its state
/// under the overload manager (`overload.rs`): what it holds, whether it is refused, and its
/// unfinished requests oldest first, so the oldest can be reset. The maxima are the node's flags
/// unless the pod's annotations set its own ([`SourceCaps::apply`]); they can change while the
/// pod runs (its annotations were edited), for new connections and requests.
pub struct SourceCaps {
    connections: Arc<AtomicU32>,
    /// Of `connections`, those parked (no hyper state; see `proxy::parked`).
    parked: Arc<AtomicU32>,
    requests: Arc<AtomicU32>,
    body_bytes: Arc<AtomicU64>,
    head_bytes: Arc<AtomicU64>,
    max_connections: AtomicU32,
    max_requests: AtomicU32,
    max_body_bytes: AtomicU64,
    /// Set by the overload manager while this source is shed: new connections and requests are
    /// refused, and its idle connections closed.
    refusing: AtomicBool,
    /// Wakes this source's idle (parked) connections when it starts being shed.
    shed_idle: Notify,
    /// Unfinished requests by start order (the key), each with what it holds.
    tickets: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<Ticket>>>,
    next_ticket: AtomicU64,
}

/// One unfinished request of a source, as the overload manager sees it: the read-ahead body
/// bytes it holds, and the signal that resets it.
#[derive(Default)]
pub(crate) struct Ticket {
    held: AtomicU64,
    shed: AtomicBool,
    /// The request's one waiter: its handler while the request is forwarded, then its response
    /// body (never both at once).
    waker: futures_util::task::AtomicWaker,
}

impl Ticket {
    fn shed(&self) {
        self.shed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the overload manager reset this request.
    pub(crate) fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    /// Ready once the overload manager reset this request.
    pub(crate) fn poll_shed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Shed between the first look and the registration: its wake went to the old waker.
        if self.shed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Resolves once the overload manager reset this request.
    pub(crate) async fn shed_signal(&self) {
        std::future::poll_fn(|cx| self.poll_shed(cx)).await
    }
}

/// A request's place in its source's table of unfinished requests, left when dropped.
pub(crate) struct TicketGuard {
    caps: Arc<SourceCaps>,
    id: u64,
    /// The request's ticket.
    pub(crate) ticket: Arc<Ticket>,
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        self.caps.tickets.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// A slot under a [`SourceCaps`] cap, released on drop.
pub struct CapSlot(Arc<AtomicU32>);

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take(counter: &Arc<AtomicU32>, max: u32) -> Option<CapSlot> {
    let prev = counter.fetch_add(1, Ordering::AcqRel);
    if prev >= max {
        counter.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(CapSlot(counter.clone()))
}

/// Request body bytes one request holds under its source's buffered-body cap; all of them are
/// given back when it is dropped (the request ended). `None` inside: no cap (ingress).
pub(crate) struct BodyBudget {
    counter: Option<(Arc<AtomicU64>, u64)>,
    held: u64,
    /// The request's ticket, which shows the overload manager what it holds.
    ticket: Option<Arc<Ticket>>,
}

impl BodyBudget {
    /// A budget with no cap.
    pub(crate) fn unlimited() -> Self {
        BodyBudget { counter: None, held: 0, ticket: None }
    }

    /// The same budget, its bytes also shown on `ticket`.
    pub(crate) fn for_ticket(mut self, ticket: Option<Arc<Ticket>>) -> Self {
        self.ticket = ticket;
        self
    }

    /// Takes `n` more bytes, unless the source would go over its cap.
    pub(crate) fn try_take(&mut self, n: u64) -> bool {
        let Some((counter, max)) = &self.counter else { return true };
        let mut cur = counter.load(Ordering::Acquire);
        loop {
            let Some(next) = cur.checked_add(n).filter(|next| next <= max) else { return false };
            match counter.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.held = self.held.saturating_add(n);
                    if let Some(t) = &self.ticket {
                        t.held.fetch_add(n, Ordering::AcqRel);
                    }
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

impl Drop for BodyBudget {
    fn drop(&mut self) {
        if let Some((counter, _)) = &self.counter {
            counter.fetch_sub(self.held, Ordering::AcqRel);
        }
        if let Some(t) = &self.ticket {
            t.held.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

impl SourceCaps {
    /// Empty counters for one source workload, capped by `limits`.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(SourceCaps {
            connections: Arc::default(),
            parked: Arc::default(),
            requests: Arc::default(),
            body_bytes: Arc::default(),
            head_bytes: Arc::default(),
            max_connections: AtomicU32::new(limits.per_source_max_connections),
            max_requests: AtomicU32::new(limits.per_source_max_requests),
            max_body_bytes: AtomicU64::new(limits.per_source_max_buffered_body),
            refusing: AtomicBool::new(false),
            shed_idle: Notify::new(),
            tickets: Default::default(),
            next_ticket: AtomicU64::new(0),
        })
    }

    /// Counts one of its connections as parked until the slot is dropped (no cap: a parked
    /// connection already holds a connection slot).
    pub(crate) fn park(&self) -> CapSlot {
        self.parked.fetch_add(1, Ordering::AcqRel);
        CapSlot(self.parked.clone())
    }

    /// How many of its connections are parked.
    pub fn parked(&self) -> u32 {
        self.parked.load(Ordering::Acquire)
    }

    /// The counter of request head bytes its connections hold (see [`ConnActivity::counting`]).
    pub(crate) fn head_counter(&self) -> Arc<AtomicU64> {
        self.head_bytes.clone()
    }

    /// What the source is counted as holding in the proxy, in bytes: its buffered request bodies
    /// and pending request heads as they are, plus a fixed estimate per connection (less for a
    /// parked one) and per request in flight (`overload::CONNECTION_BYTES`,
    /// `overload::PARKED_CONNECTION_BYTES`, `overload::REQUEST_BYTES`).
    pub fn held_bytes(&self) -> u64 {
        use super::overload::{CONNECTION_BYTES, PARKED_CONNECTION_BYTES, REQUEST_BYTES};
        let (c, r, b) = self.usage();
        // Read after the total: a connection parking in between is counted once, as parked.
        let parked = self.parked.load(Ordering::Acquire).min(c);
        u64::from(c - parked)
            .saturating_mul(CONNECTION_BYTES)
            .saturating_add(u64::from(parked).saturating_mul(PARKED_CONNECTION_BYTES))
            .saturating_add(u64::from(r).saturating_mul(REQUEST_BYTES))
            .saturating_add(b)
            .saturating_add(self.head_bytes.load(Ordering::Acquire))
    }

    /// Whether the overload manager has this source refuse new connections and requests.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    pub(crate) fn set_refusing(&self, on: bool) {
        if on && !self.refusing.swap(true, Ordering::Relaxed) {
            // Its idle keep-alive connections go too: each is counted as holding
            // `overload::CONNECTION_BYTES`, and the source could not send on them anyway.
            self.shed_idle.notify_waiters();
        } else if !on {
            self.refusing.store(false, Ordering::Relaxed);
        }
    }

    /// Resolves while the overload manager sheds this source (at once if it does already): an
    /// idle connection of the source waiting on it is closed.
    pub(crate) async fn idle_shed(&self) {
        let notified = self.shed_idle.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a shed starting in between is not missed.
        notified.as_mut().enable();
        if self.refusing() {
            return;
        }
        notified.await;
    }

    /// Registers a request that has started; it stays in the table until the guard is dropped.
    pub(crate) fn ticket(self: &Arc<Self>) -> TicketGuard {
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let ticket = Arc::new(Ticket::default());
        self.tickets.lock().unwrap_or_else(|e| e.into_inner()).insert(id, ticket.clone());
        TicketGuard { caps: self.clone(), id, ticket }
    }

    /// Resets the oldest unfinished requests until they hold `bytes` (each counted as its
    /// read-ahead body plus `overload::REQUEST_BYTES`); requests already reset and not gone yet
    /// count toward it without being counted again. Returns how many were reset now.
    pub(crate) fn shed_oldest(&self, bytes: u64) -> u32 {
        let tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let mut freed = 0u64;
        let mut reset = 0u32;
        for t in tickets.values() {
            if freed >= bytes {
                break;
            }
            freed = freed.saturating_add(t.held.load(Ordering::Acquire)).saturating_add(super::overload::REQUEST_BYTES);
            if !t.shed.load(Ordering::Acquire) {
                t.shed();
                reset = reset.saturating_add(1);
            }
        }
        reset
    }

    /// Sets the maxima to the pod's own caps where its annotations set one, the node's `limits`
    /// elsewhere. What the source holds already is kept (a lowered cap refuses new connections
    /// and requests until it is under again; nothing in flight is cut).
    pub fn apply(&self, limits: &Limits, pod: &crate::registry::PodCaps) {
        let connections = pod.max_connections.unwrap_or(limits.per_source_max_connections);
        let requests = pod.max_requests.unwrap_or(limits.per_source_max_requests);
        let body = pod.max_buffered_body.unwrap_or(limits.per_source_max_buffered_body);
        self.max_connections.store(connections, Ordering::Release);
        self.max_requests.store(requests, Ordering::Release);
        self.max_body_bytes.store(body, Ordering::Release);
    }

    /// The maxima in force: (connections, requests in flight, buffered body bytes).
    pub fn maxima(&self) -> (u32, u32, u64) {
        (
            self.max_connections.load(Ordering::Acquire),
            self.max_requests.load(Ordering::Acquire),
            self.max_body_bytes.load(Ordering::Acquire),
        )
    }

    /// One more connection, unless the source is at its cap.
    pub fn connection(&self) -> Option<CapSlot> {
        take(&self.connections, self.max_connections.load(Ordering::Acquire))
    }

    /// One more request in flight, unless the source is at its cap.
    pub fn request(&self) -> Option<CapSlot> {
        take(&self.requests, self.max_requests.load(Ordering::Acquire))
    }

    /// An empty share of the source's buffered-body cap for one request (the cap in force when
    /// the request started holds for all of it).
    pub(crate) fn body_budget(&self) -> BodyBudget {
        BodyBudget {
            counter: Some((self.body_bytes.clone(), self.max_body_bytes.load(Ordering::Acquire))),
            held: 0,
            ticket: None,
        }
    }

    /// What the source holds now: (connections open, requests in flight, body bytes buffered).
    pub fn usage(&self) -> (u32, u32, u64) {
        (
            self.connections.load(Ordering::Acquire),
            self.requests.load(Ordering::Acquire),
            self.body_bytes.load(Ordering::Acquire),
        )
    }
}

/// The activity clock of one request stream, for the request-body idle timeout: the request
/// body (the client's data) and the response body (the server's) both restart it.
pub(crate) struct StreamActivity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last body event in either direction.
    last: AtomicU64,
    timed_out: AtomicBool,
}

/// `at + d`, or, when that is past what the clock holds, a day after `at`: a timeout that large is
/// no timeout, and a deadline a day away is as good as never here (the watchdogs look again then).
/// Never panics, and never yields a deadline that fires at once for a huge timeout.
fn saturating_later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).or_else(|| at.checked_add(Duration::from_secs(86_400))).unwrap_or(at)
}

impl StreamActivity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(StreamActivity { epoch: Instant::now(), last: AtomicU64::new(0), timed_out: AtomicBool::new(false) })
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE);
        self.last.store(ms, Ordering::Release);
    }

    fn deadline(&self, timeout: Duration) -> Instant {
        let last = self.epoch.checked_add(Duration::from_millis(self.last.load(Ordering::Acquire)));
        let last = last.unwrap_or(self.epoch);
        saturating_later(last, timeout)
    }

    /// Whether the request body idle timeout ended this stream.
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }
}

/// The request body stopped arriving: no data for the request-body idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no request body data from the client for {0:?} (request body idle timeout)")]
pub struct BodyIdleTimeout(pub Duration);

/// A request body that fails with [`BodyIdleTimeout`] when the client sends nothing for
/// `timeout` while the proxy waits for it. The clock runs only while the body is polled and has
/// nothing (time the upstream takes to want more is not the client's), and restarts on every
/// frame and on response data (`StreamActivity::touch`).
pub(crate) struct IdleTimeoutBody<B> {
    inner: B,
    activity: Arc<StreamActivity>,
    timeout: Duration,
    waiting: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    on_timeout: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<B> IdleTimeoutBody<B> {
    /// `on_timeout` runs once, when the timeout fires (the metric).
    pub(crate) fn new(
        inner: B,
        activity: Arc<StreamActivity>,
        timeout: Duration,
        on_timeout: Box<dyn FnOnce() + Send + Sync>,
    ) -> Self {
        IdleTimeoutBody { inner, activity, timeout, waiting: false, sleep: None, on_timeout: Some(on_timeout) }
    }
}

impl<B> hyper::body::Body for IdleTimeoutBody<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<super::http::BodyError>,
{
    type Data = B::Data;
    type Error = super::http::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.activity.timed_out() {
            return Poll::Ready(Some(Err(BodyIdleTimeout(this.timeout).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.waiting = false;
                this.activity.touch();
                return Poll::Ready(Some(Ok(f)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if !this.waiting {
            // The proxy starts waiting for the client now: the clock starts here, whatever
            // happened while nobody asked for the body.
            this.waiting = true;
            this.activity.touch();
        }
        loop {
            let deadline = this.activity.deadline(this.timeout);
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Response data may have moved the deadline while the timer ran.
            if this.activity.deadline(this.timeout) > Instant::now() {
                continue;
            }
            this.activity.timed_out.store(true, Ordering::Release);
            if let Some(f) = this.on_timeout.take() {
                f();
            }
            return Poll::Ready(Some(Err(BodyIdleTimeout(this.timeout).into())));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket that reports arriving bytes to its connection's [`ConnActivity`].
pub(crate) struct ActivityIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
}

impl<T> ActivityIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<ConnActivity>) -> Self {
        ActivityIo { inner, activity }
    }

    /// The socket.
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// A socket with bytes already read from it in front (what an earlier hyper connection on it
/// had read and not parsed), given to the next hyper connection on it.
pub(crate) struct Prefixed<T> {
    prefix: bytes::Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: bytes::Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    /// The prefix bytes not read yet, and the socket.
    pub(crate) fn into_parts(self) -> (bytes::Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.activity.on_read(new);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            request_headers_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            ..Limits::default()
        }
    }

    #[test]
    fn a_parked_connection_is_counted_as_holding_less_than_a_served_one() {
        use crate::proxy::overload::{CONNECTION_BYTES, PARKED_CONNECTION_BYTES};
        let caps = SourceCaps::new(&limits());
        let (_a, _b) = (caps.connection().expect("a"), caps.connection().expect("b"));
        assert_eq!(caps.held_bytes(), 2 * CONNECTION_BYTES);
        let parked = caps.park();
        assert_eq!(caps.parked(), 1);
        assert_eq!(caps.held_bytes(), CONNECTION_BYTES + PARKED_CONNECTION_BYTES);
        drop(parked);
        assert_eq!(caps.held_bytes(), 2 * CONNECTION_BYTES, "served again: counted in full");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_expires_after_idle_timeout_not_header_timeout() {
        let a = ConnActivity::new();
        let l = limits();
        let started = Instant::now();
        assert_eq!(a.watch(&l).await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_finish_within_the_header_timeout() {
        let a = ConnActivity::new();
        let l = limits();
        tokio::time::advance(Duration::from_secs(100)).await;
        a.on_read(b"GET / HTTP/1.1\r\n");
        let started = Instant::now();
        assert_eq!(a.watch(&l).await, Expired::Headers);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_stop_both_timers_and_idle_restarts_when_they_end() {
        let a = ConnActivity::new();
        let l = limits();
        a.on_read(b"GET / HTTP/1.1\r\n");
        let guard = a.begin();
        // Bytes during a request (its body) are not a new head.
        a.on_read(b"body");
        let watch = {
            let a = a.clone();
            let l = l.clone();
            tokio::spawn(async move { (a.watch(&l).await, Instant::now()) })
        };
        tokio::time::advance(Duration::from_secs(7200)).await;
        assert!(!watch.is_finished(), "nothing may expire while a request is in flight");
        let ended = Instant::now();
        drop(guard);
        let (why, at) = watch.await.expect("watch");
        assert_eq!(why, Expired::Idle);
        assert_eq!(at - ended, Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_are_not_request_heads() {
        let a = ConnActivity::new();
        let l = limits();
        a.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        a.on_read(b"\0\0\0\x06\0\0\0\0\0");
        assert_eq!(a.watch(&l).await, Expired::Idle);
    }
}

#[cfg(test)]
mod body_timeout_tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::{Body, Frame};

    impl From<std::convert::Infallible> for super::super::http::BodyError {
        fn from(never: std::convert::Infallible) -> Self {
            match never {}
        }
    }

    /// A request body fed by the test.
    struct Fed(tokio::sync::mpsc::UnboundedReceiver<&'static str>);

    impl Body for Fed {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|s| Ok(Frame::data(bytes::Bytes::from_static(s.as_bytes())))))
        }
    }

    const T: Duration = Duration::from_secs(300);

    fn fed(
    ) -> (tokio::sync::mpsc::UnboundedSender<&'static str>, IdleTimeoutBody<Fed>, Arc<StreamActivity>, Arc<AtomicU32>)
    {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let activity = StreamActivity::new();
        let fired = Arc::new(AtomicU32::new(0));
        let f = fired.clone();
        let body = IdleTimeoutBody::new(
            Fed(rx),
            activity.clone(),
            T,
            Box::new(move || {
                f.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (tx, body, activity, fired)
    }

    #[tokio::test(start_paused = true)]
    async fn data_keeps_a_body_alive_and_silence_ends_it_after_the_timeout() {
        let (tx, mut body, activity, fired) = fed();
        for _ in 0..3 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(200)).await;
                let _ = tx.send("x");
            });
            // 200 s apart, each under the 300 s timeout.
            assert!(body.frame().await.expect("frame").is_ok());
        }
        let stalled = Instant::now();
        let e = body.frame().await.expect("an error frame").expect_err("timed out");
        assert!(matches!(e, super::super::http::BodyError::IdleTimeout(_)), "{e}");
        assert_eq!(stalled.elapsed(), T);
        assert!(activity.timed_out());
        assert_eq!(fired.load(Ordering::SeqCst), 1, "counted once");
        // It stays ended.
        assert!(body.frame().await.expect("frame").is_err());
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn time_nobody_asked_for_the_body_and_response_data_do_not_count() {
        let (tx, mut body, activity, _) = fed();
        tx.send("x").expect("send");
        assert!(body.frame().await.expect("frame").is_ok());
        // The upstream does not want more for an hour (backpressure): not the client's fault.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let waiting = Instant::now();
        // Response data arrives 250 s into the wait, which moves the deadline to 550 s.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(250)).await;
            activity.touch();
        });
        assert!(body.frame().await.expect("frame").is_err());
        assert_eq!(waiting.elapsed(), Duration::from_secs(550));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_body_never_times_out() {
        let (tx, mut body, activity, fired) = fed();
        tx.send("x").expect("send");
        drop(tx);
        assert!(body.frame().await.expect("frame").is_ok());
        assert!(body.frame().await.is_none());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!activity.timed_out());
        assert_eq!(fired.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_source_buffered_body_budget_is_shared_and_given_back() {
        let caps = SourceCaps::new(&Limits { per_source_max_buffered_body: 1000, ..Limits::default() });
        let mut a = caps.body_budget();
        let mut b = caps.body_budget();
        assert!(a.try_take(600));
        assert!(a.try_take(300));
        assert!(!b.try_take(200), "900 + 200 is over the cap");
        assert!(b.try_take(100));
        assert_eq!(caps.usage().2, 1000);
        drop(a);
        assert_eq!(caps.usage().2, 100);
        assert!(b.try_take(u64::MAX).eq(&false), "no overflow past u64");
        drop(b);
        assert_eq!(caps.usage().2, 0);
        assert!(BodyBudget::unlimited().try_take(u64::MAX));
    }

    #[test]
    fn a_pods_annotations_override_the_node_caps_for_its_source_only() {
        use crate::registry::PodCaps;
        let node = Limits {
            per_source_max_connections: 3,
            per_source_max_requests: 2,
            per_source_max_buffered_body: 100,
            ..Limits::default()
        };
        let mine = SourceCaps::new(&node);
        let other = SourceCaps::new(&node);
        mine.apply(&node, &PodCaps { max_connections: Some(1), max_requests: Some(5), max_buffered_body: None });
        other.apply(&node, &PodCaps::default());
        assert_eq!(mine.maxima(), (1, 5, 100), "lowered, raised, and the node default where unset");
        assert_eq!(other.maxima(), (3, 2, 100));
        let held = mine.connection().expect("first connection");
        assert!(mine.connection().is_none(), "its own lowered cap");
        let others: Vec<_> = (0..3).map(|_| other.connection().expect("the node cap")).collect();
        assert!(other.connection().is_none());
        let requests: Vec<_> = (0..5).map(|_| mine.request().expect("its raised cap")).collect();
        assert!(mine.request().is_none());
        // The annotation edited away: the node default again, for what comes next.
        mine.apply(&node, &PodCaps::default());
        assert_eq!(mine.maxima(), (3, 2, 100));
        assert!(mine.connection().is_some());
        assert!(mine.request().is_none(), "5 held, over the restored cap of 2");
        mine.apply(&node, &PodCaps { max_buffered_body: Some(10), ..PodCaps::default() });
        let mut budget = mine.body_budget();
        assert!(!budget.try_take(11));
        assert!(budget.try_take(10));
        drop((held, others, requests));
    }
}
