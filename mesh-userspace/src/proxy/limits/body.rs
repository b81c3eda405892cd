//! The request-body idle timeout: a body that fails when the client stops sending.
use std::{
    future::Future as _,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use super::conn::NONE;

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
pub(super) fn saturating_later(at: Instant, d: Duration) -> Instant {
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
    B::Error: Into<super::super::http::BodyError>,
{
    type Data = B::Data;
    type Error = super::super::http::BodyError;

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
