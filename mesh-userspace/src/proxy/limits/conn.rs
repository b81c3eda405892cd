//! A client connection's activity (bytes arriving, requests in flight) and the watchdog that
//! closes it on the header or idle timeout; the socket wrappers that report to it.
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
    io::{AsyncRead, ReadBuf},
    sync::Notify,
    time::Instant,
};

use super::{body::saturating_later, Limits};

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

pub(super) const NONE: u64 = u64::MAX;

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
    pub(super) fn on_read(&self, first: &[u8]) {
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

forward_async_write!(Prefixed, inner);

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

forward_async_write!(ActivityIo, inner);
