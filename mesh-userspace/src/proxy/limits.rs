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
    /// Connections one source workload (one enrolled pod's listener) may hold open at once; the
    /// excess is closed right after accept. Generous: a pod is one tenant, not one client.
    pub per_source_max_connections: u32,
    /// Requests one source workload may have in flight at once; the excess is answered 503 with
    /// `x-envoy-overloaded` and counted in `mesh_downstream_overflow_total{source_workload}`.
    pub per_source_max_requests: u32,
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
            per_source_max_connections: 2048,
            per_source_max_requests: 1024,
        }
    }
}

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
    changed: Notify,
}

impl ConnActivity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ConnActivity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            head_started: AtomicU64::new(NONE),
            idle_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            seen_bytes: AtomicBool::new(false),
            changed: Notify::new(),
        })
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
        if self.head_started.compare_exchange(NONE, self.now_ms(), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.changed.notify_one();
        }
    }

    /// A request head was parsed and handed to the proxy; the returned guard ends it when dropped
    /// (hyper drops the response body once it is written, or the handler when the client left).
    pub(crate) fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        RequestGuard(self.clone())
    }

    /// When the watchdog must look again, given the limits; None: not before something changes.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let head = self.head_started.load(Ordering::Acquire);
        if head != NONE {
            return Some(self.at(head).checked_add(limits.request_headers_timeout).unwrap_or_else(|| self.at(head)));
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = self.at(self.idle_since.load(Ordering::Acquire));
        Some(idle.checked_add(limits.idle_timeout).unwrap_or(idle))
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

/// The caps of one source workload (one enrolled pod's listener): connections open and requests
/// in flight, shared by all of its connections.
pub struct SourceCaps {
    connections: Arc<AtomicU32>,
    requests: Arc<AtomicU32>,
    max_connections: u32,
    max_requests: u32,
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

impl SourceCaps {
    /// Empty counters for one source workload, capped by `limits`.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(SourceCaps {
            connections: Arc::default(),
            requests: Arc::default(),
            max_connections: limits.per_source_max_connections,
            max_requests: limits.per_source_max_requests,
        })
    }

    /// One more connection, unless the source is at its cap.
    pub fn connection(&self) -> Option<CapSlot> {
        take(&self.connections, self.max_connections)
    }

    /// One more request in flight, unless the source is at its cap.
    pub fn request(&self) -> Option<CapSlot> {
        take(&self.requests, self.max_requests)
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
