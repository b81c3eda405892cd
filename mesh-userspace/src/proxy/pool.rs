//! The HTTP/1 upstream connection pool: idle keep-alive connections per endpoint, owned by the
//! proxy rather than by hyper-util's generic client. The generic client paid, per request, for a
//! pool key of scheme and authority strings hashed with SipHash, a boxed future of several KB,
//! and a task spawned to put the connection back once its response body ended. Here a
//! connection goes back the moment its response body's last byte is read (a task waits only
//! for one still sending its request body), and a request takes the endpoint's most recently
//! used idle connection.
//!
//! A connection is never reused once idle for the pool's idle timeout (the server may be closing
//! it at that instant), nor after its server closed it; a request that a pooled connection never
//! sent (it closed while the request was handed over) goes on another, or a new one.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, uri::Uri, HeaderValue, Request, Response};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1,
};
use hyper_util::rt::TokioIo;
// tokio's clock: a paused test clock drives the idle timeout.
use tokio::time::Instant;

use super::{connect::MeshConnector, http::ProxyBody};

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection to the endpoint could be made (refused, unreachable, connect timeout).
    #[error("connect error: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request was sent or its response head awaited.
    #[error("request error: {0}")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A pool of HTTP/1 connections to upstream endpoints; cheap to clone (one shared pool).
#[derive(Clone)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: MeshConnector,
    /// Zero: no connection is kept (each request gets its own).
    idle_timeout: Duration,
    max_idle_per_endpoint: usize,
    idle: Mutex<IdleConns>,
}

#[derive(Default)]
struct IdleConns {
    by_endpoint: HashMap<SocketAddr, Vec<IdleConn>>,
    /// Whether a task is closing the connections idle past the timeout (one while any is idle).
    reaping: bool,
}

struct IdleConn {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

impl IdleConn {
    /// Still open and idle for less than `timeout` at `now`: the one test for reuse and for
    /// keeping it at all.
    fn usable(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) < timeout && !self.sender.is_closed()
    }
}

impl Http1Pool {
    /// A pool dialling through `connector`, keeping up to `max_idle_per_endpoint` connections
    /// per endpoint for `idle_timeout` (zero: none).
    pub fn new(connector: MeshConnector, idle_timeout: Duration, max_idle_per_endpoint: usize) -> Self {
        let inner = Inner { connector, idle_timeout, max_idle_per_endpoint, idle: Mutex::default() };
        Http1Pool { inner: Arc::new(inner) }
    }

    /// Sends `req` (an absolute `http://ip:port/...` URI, as the load balancer picked the
    /// endpoint) on an idle connection to its endpoint, or a new one.
    pub async fn request(&self, mut req: Request<ProxyBody>) -> Result<Response<UpstreamBody>, UpstreamError> {
        let addr = super::connect::endpoint_addr(req.uri()).map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        to_origin_form(&mut req);
        while let Some(mut sender) = self.inner.checkout(addr) {
            if sender.ready().await.is_err() {
                continue; // closed by the server while idle
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(resp, sender, addr)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed as it was handed over.
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Request(Box::new(e.into_error()))),
                },
            }
        }
        // Cold (a connect per new connection), boxed so the request's future stays small.
        let mut sender = Box::pin(self.inner.connect(addr)).await?;
        let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Request(Box::new(e)))?;
        Ok(self.returning(resp, sender, addr))
    }

    /// The response, its body handing the connection back to the pool when it ends.
    fn returning(
        &self,
        resp: Response<Incoming>,
        sender: http1::SendRequest<ProxyBody>,
        addr: SocketAddr,
    ) -> Response<UpstreamBody> {
        let back = ReturnTo { pool: Arc::downgrade(&self.inner), addr, sender };
        resp.map(|body| {
            let mut body = UpstreamBody { body, back: Some(back) };
            body.return_if_ended(false);
            body
        })
    }

    /// Idle connections kept to `addr` now (tests).
    #[cfg(test)]
    fn idle_to(&self, addr: SocketAddr) -> usize {
        self.inner.lock().by_endpoint.get(&addr).map_or(0, Vec::len)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleConns> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint's most recently used idle connection still usable, if any.
    fn checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.lock();
        let conns = idle.by_endpoint.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = conns.pop() {
            if conn.usable(now, self.idle_timeout) {
                return Some(conn.sender);
            }
        }
        idle.by_endpoint.remove(&addr);
        None
    }

    /// Keeps `sender` for the next request to `addr` once its connection can take one: at once
    /// as a rule (the response's end left it idle), else when it becomes ready — a connection
    /// whose request body is still being sent (the server answered early) is lent to no other
    /// request until then, which would wait behind it.
    fn put_back_when_ready(self: &Arc<Self>, addr: SocketAddr, mut sender: http1::SendRequest<ProxyBody>) {
        if self.idle_timeout.is_zero() || self.max_idle_per_endpoint == 0 {
            return; // the pool keeps none
        }
        if sender.is_ready() {
            self.put_back(addr, sender);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            if sender.ready().await.is_ok() {
                if let Some(pool) = pool.upgrade() {
                    pool.put_back(addr, sender);
                }
            }
        });
    }

    /// Keeps `sender` (of a pool that keeps connections) for the next request to `addr`; the
    /// endpoint's oldest goes when it is full.
    fn put_back(self: &Arc<Self>, addr: SocketAddr, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let conns = idle.by_endpoint.entry(addr).or_default();
        if conns.len() >= self.max_idle_per_endpoint {
            conns.remove(0);
        }
        conns.push(IdleConn { sender, since: Instant::now() });
        if !idle.reaping {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                idle.reaping = true;
                runtime.spawn(reap(Arc::downgrade(self), self.idle_timeout));
            }
        }
    }

    /// A new connection to `addr`, its connection task spawned.
    async fn connect(&self, addr: SocketAddr) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
        let stream = self.connector.connect(addr).await.map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        let (sender, conn) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %addr, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Closes the connections idle past `timeout` (dropping a connection's sender ends its task,
/// which closes the socket); ends when none is left idle, or the pool is gone.
async fn reap(pool: Weak<Inner>, timeout: Duration) {
    loop {
        tokio::time::sleep(timeout).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.lock();
        let now = Instant::now();
        idle.by_endpoint.retain(|_, conns| {
            conns.retain(|c| c.usable(now, timeout));
            !conns.is_empty()
        });
        if idle.by_endpoint.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}

/// The origin-form request line HTTP/1 sends (`/path?query`), the URI's authority moved to
/// `Host` if the request has none (an HTTP/2 client's request carries it in the URI).
fn to_origin_form(req: &mut Request<ProxyBody>) {
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let origin = match req.uri().path_and_query() {
        Some(pq) if pq.as_str() != "/" => Uri::from(pq.clone()),
        _ => Uri::default(),
    };
    *req.uri_mut() = origin;
}

/// Where a connection goes when its response body has ended.
struct ReturnTo {
    pool: Weak<Inner>,
    addr: SocketAddr,
    sender: http1::SendRequest<ProxyBody>,
}

/// An upstream response body; a pooled connection's goes back to the pool as its last byte is
/// read (dropped before that, the connection closes with it).
pub struct UpstreamBody {
    body: Incoming,
    back: Option<ReturnTo>,
}

impl UpstreamBody {
    /// A body with no connection to return (HTTP/2: the connection is shared, never checked out).
    pub fn shared(body: Incoming) -> Self {
        UpstreamBody { body, back: None }
    }

    /// Hands the connection back once the body has ended (`ended`: it said so by its last poll;
    /// a chunked body only knows then).
    fn return_if_ended(&mut self, ended: bool) {
        if ended || self.body.is_end_stream() {
            if let Some(ReturnTo { pool, addr, sender }) = self.back.take() {
                if let Some(pool) = pool.upgrade() {
                    pool.put_back_when_ready(addr, sender);
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.return_if_ended(true),
            Poll::Ready(Some(Ok(_))) => self.return_if_ended(false),
            // A failed body leaves the connection unusable: it closes with the sender.
            Poll::Ready(Some(Err(_))) => self.back = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
