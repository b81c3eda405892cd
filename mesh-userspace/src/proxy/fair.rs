//! Per-source fairness of the proxy's event loop (issue 13): when the loop falls behind while
//! several pods send requests, the pod starting the most requests is slowed down until the loop
//! is on time again, so one pod's flood cannot take the loop (and the node's CPU) from the others.
//!
//! A ticker task ([`watch_lag`]) asks for a wake-up every [`TICK`] and measures how late it
//! comes: the time a ready task waits for a worker thread, which is what a flood adds to every
//! other pod's latency. Each tick it hands the lateness to [`FairGate::tick`]:
//!
//! - every source's request rate is measured (requests started per second, smoothed);
//! - a tick `lag` late, with two or more sources sending, gives the heaviest source (the highest
//!   rate, and above [`FairConfig::min_rate`]) a rate limit of half its rate, at most once per
//!   [`DECREASE_EVERY`] ticks (the loop needs a moment to catch up);
//! - a tick on time raises every limit by [`RISE`] per second of ticks; a limit
//!   far above the source's rate is lifted, and so is every limit once fewer than two sources
//!   are sending.
//!
//! A request of a limited source starts when its source has a token (tokens come at its limit,
//! at most [`BURST`] saved); otherwise it waits in its source's queue (at most
//! [`FairConfig::max_queue`]; past it the request is refused, answered `503` with
//! `x-envoy-overloaded`) and starts at a later tick. A limit never goes below `min_rate`, so a
//! pod with an ordinary request rate is never held, and a node with a single busy pod never
//! limits it (nobody to protect). The limits are rates, not concurrency: long-running requests
//! (long polls, slow upstreams) are not held back.
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::oneshot;

/// The gate's settings (`--fair-share*` flags).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FairConfig {
    /// Whether sources are ever limited.
    pub enabled: bool,
    /// Requests of one limited source that may wait; past it they are refused.
    pub max_queue: u32,
    /// Timer lateness that counts as the loop falling behind.
    #[serde(serialize_with = "crate::settings::duration")]
    pub lag: Duration,
    /// Requests per second below which a source is never limited, and the lowest limit.
    pub min_rate: f64,
}

impl Default for FairConfig {
    fn default() -> Self {
        FairConfig { enabled: true, max_queue: 256, lag: Duration::from_millis(2), min_rate: 1000.0 }
    }
}

/// How often [`watch_lag`] measures and [`FairGate::tick`] runs.
pub const TICK: Duration = crate::settings::FIXED.fair_share_tick;
/// Ticks between two decreases of a source's limit (50 ms).
pub const DECREASE_EVERY: u32 = 10;
/// How much a limit rises (requests per second) per second of ticks on time: apart from the
/// floor, so that a lower `--fair-share-min-rate` (closer tails for the neighbours of a flood)
/// does not also slow the recovery of a busy pod limited during a lag.
pub const RISE: f64 = 1000.0;
/// Tokens a limited source may save up: a short burst starts at once.
pub const BURST: f64 = 8.0;
/// Weight of the last tick in a source's smoothed rate (about 50 ms of memory).
const RATE_WEIGHT: f64 = 0.1;
/// A source whose smoothed rate is below this (requests per second) and that has nothing
/// waiting is not sending: it is not counted among the sources to protect, and is forgotten.
const SENDING: f64 = 1.0;

/// Why a request was not admitted: its source's queue was full.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

#[derive(Default)]
struct SourceState {
    /// Requests started since the last tick.
    started: u32,
    /// Smoothed requests started per second.
    rate: f64,
    /// Rate limit in requests per second, None: unlimited.
    limit: Option<f64>,
    tokens: f64,
    /// Requests waiting, oldest first; a dropped receiver is a request given up.
    queue: VecDeque<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    sources: HashMap<Arc<str>, SourceState>,
    /// Ticks since the last decrease.
    since_decrease: u32,
}

/// The gate all requests pass (see the module doc): one short lock per request.
pub struct FairGate {
    inner: Mutex<Inner>,
    enabled: AtomicBool,
    max_queue: AtomicU32,
    /// Sources with a rate limit after the last tick: while it is 0, [`FairGate::holding`]
    /// (asked on every read of an HTTP/2 connection) answers without taking the lock.
    limited: AtomicU32,
    /// Sources that may have requests waiting (a superset: a waiter may have given up since),
    /// so that during a flood only the limited source's reads take the lock, not every pod's.
    queued: arc_swap::ArcSwap<Vec<Arc<str>>>,
    /// `min_rate` as f64 bits.
    min_rate: std::sync::atomic::AtomicU64,
}

impl Default for FairGate {
    fn default() -> Self {
        let g = FairGate {
            inner: Mutex::default(),
            enabled: AtomicBool::new(true),
            max_queue: AtomicU32::new(0),
            limited: AtomicU32::new(0),
            queued: Default::default(),
            min_rate: Default::default(),
        };
        g.configure(&FairConfig::default());
        g
    }
}

impl FairGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn min_rate(&self) -> f64 {
        f64::from_bits(self.min_rate.load(Ordering::Relaxed))
    }

    /// Sets the gate's settings (the agent's flags). Turning it off lifts every limit and
    /// starts every waiting request.
    pub fn configure(&self, config: &FairConfig) {
        self.enabled.store(config.enabled, Ordering::Relaxed);
        self.max_queue.store(config.max_queue, Ordering::Relaxed);
        self.min_rate.store(config.min_rate.max(1.0).to_bits(), Ordering::Relaxed);
        if !config.enabled {
            self.limited.store(0, Ordering::Relaxed);
            self.queued.store(Default::default());
            for s in self.lock().sources.values_mut() {
                s.limit = None;
                for w in s.queue.drain(..) {
                    let _ = w.send(());
                }
            }
        }
    }

    /// `source`'s rate limit (requests per second; None: unlimited) and waiting requests.
    pub fn usage(&self, source: &str) -> (Option<f64>, usize) {
        self.lock().sources.get(source).map_or((None, 0), |s| (s.limit, s.queue.len()))
    }

    /// Whether `source` has requests waiting for tokens: its HTTP/2 connections stop reading
    /// new streams until they have started ([`PacedReads`]).
    pub fn holding(&self, source: &str) -> bool {
        self.limited.load(Ordering::Relaxed) > 0
            && self.queued.load().iter().any(|q| **q == *source)
            && self.lock().sources.get(source).is_some_and(|s| s.queue.iter().any(|w| !w.is_closed()))
    }

    /// Admits a request of `source`: at once (false), after waiting for a token (true), or
    /// `Refused` when its source already has `max_queue` requests waiting. Cancel-safe: a
    /// request dropped while waiting gives its place up.
    pub async fn enter(&self, source: &str) -> Result<bool, Refused> {
        match self.admit(source, true)? {
            None => Ok(false),
            // The sender is dropped unsent only when the gate is: never while the proxy runs.
            Some(rx) => rx.await.map(|()| true).map_err(|_| Refused),
        }
    }

    /// Paces `source`'s new connections: its pod's listener awaits this before each accept. A
    /// limited source's connection takes one of its tokens as a request does, so a pod flooding
    /// connects waits in its own listen backlog instead of taking the loop's turns for accepts
    /// and tasks; an unlimited source passes at once and is not counted (its requests are).
    /// Returns whether it waited. A full queue is tried again a tick later. Cancel-safe.
    pub async fn accept_turn(&self, source: &str) -> bool {
        loop {
            match self.admit(source, false) {
                Ok(None) => return false,
                Ok(Some(rx)) => {
                    if rx.await.is_ok() {
                        return true;
                    }
                }
                Err(Refused) => tokio::time::sleep(TICK).await,
            }
        }
    }

    /// At once (None), or the place in the queue a token will be sent to; `Refused` past
    /// `max_queue`. An unlimited source is counted only when `count_unlimited`.
    fn admit(&self, source: &str, count_unlimited: bool) -> Result<Option<oneshot::Receiver<()>>, Refused> {
        let mut inner = self.lock();
        let state = match inner.sources.get_mut(source) {
            Some(s) => s,
            None if !count_unlimited => return Ok(None),
            None => inner.sources.entry(Arc::from(source)).or_default(),
        };
        if state.limit.is_none() {
            if count_unlimited {
                state.started = state.started.saturating_add(1);
            }
            return Ok(None);
        }
        if state.queue.is_empty() && state.tokens >= 1.0 {
            state.tokens -= 1.0;
            state.started = state.started.saturating_add(1);
            return Ok(None);
        }
        let max_queue = usize::try_from(self.max_queue.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        if state.queue.len() >= max_queue {
            // Requests that gave up while waiting do not hold places.
            state.queue.retain(|w| !w.is_closed());
        }
        if state.queue.len() >= max_queue {
            return Err(Refused);
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push_back(tx);
        if !self.queued.load().iter().any(|q| **q == *source) {
            // Under the gate's lock: the only other writer (tick) holds it too.
            let mut queued = Vec::clone(&self.queued.load());
            queued.push(Arc::from(source));
            self.queued.store(Arc::new(queued));
        }
        Ok(Some(rx))
    }

    /// One tick: `late` is how late the ticker's timer fired. Updates rates and limits and
    /// starts the waiting requests their sources' new tokens allow.
    pub fn tick(&self, late: Duration, lag: Duration) {
        let secs = TICK.as_secs_f64();
        let min_rate = self.min_rate();
        let enabled = self.enabled.load(Ordering::Relaxed);
        let mut inner = self.lock();
        inner.since_decrease = inner.since_decrease.saturating_add(1);
        let mut sending = 0;
        let mut heaviest: Option<(Arc<str>, f64)> = None;
        for (name, s) in inner.sources.iter_mut() {
            let now = f64::from(s.started) / secs;
            s.started = 0;
            s.rate += RATE_WEIGHT * (now - s.rate);
            if s.rate >= SENDING || !s.queue.is_empty() {
                sending += 1;
            }
            if heaviest.as_ref().is_none_or(|(_, r)| s.rate > *r) {
                heaviest = Some((name.clone(), s.rate));
            }
        }
        let behind = enabled && late >= lag;
        if behind && sending >= 2 && inner.since_decrease >= DECREASE_EVERY {
            if let Some((name, rate)) = heaviest.filter(|(_, r)| *r > min_rate) {
                if let Some(s) = inner.sources.get_mut(&name) {
                    let limit = (s.limit.unwrap_or(f64::INFINITY).min(rate) / 2.0).max(min_rate);
                    tracing::debug!(source = %name, rate, limit, late_us = late.as_micros() as u64, "event loop behind: limiting the heaviest source");
                    s.limit = Some(limit);
                    s.tokens = s.tokens.min(BURST);
                    inner.since_decrease = 0;
                }
            }
        }
        for s in inner.sources.values_mut() {
            let Some(limit) = s.limit.as_mut() else { continue };
            if !behind {
                *limit += RISE * secs;
            }
            // Lifted when far above what the source sends, or when it is the only one left
            // sending: nobody to protect. A limit set while a neighbour sent would otherwise
            // outlive the neighbour (it only rises by RISE per second of ticks on time).
            if !enabled || sending < 2 || (*limit > 4.0 * s.rate.max(min_rate) && s.queue.is_empty()) {
                s.limit = None;
                for w in s.queue.drain(..) {
                    let _ = w.send(());
                }
                continue;
            }
            s.tokens = (s.tokens + *limit * secs).min(BURST);
            while s.tokens >= 1.0 {
                let Some(w) = s.queue.pop_front() else { break };
                if w.send(()).is_ok() {
                    s.tokens -= 1.0;
                    s.started = s.started.saturating_add(1);
                }
            }
        }
        inner.sources.retain(|_, s| s.rate >= SENDING / 100.0 || s.started > 0 || !s.queue.is_empty());
        let limited = inner.sources.values().filter(|s| s.limit.is_some()).count();
        self.limited.store(u32::try_from(limited).unwrap_or(u32::MAX), Ordering::Relaxed);
        let queued: Vec<Arc<str>> =
            inner.sources.iter().filter(|(_, s)| !s.queue.is_empty()).map(|(name, _)| name.clone()).collect();
        if *self.queued.load().as_slice() != *queued {
            self.queued.store(Arc::new(queued));
        }
    }
}

/// The read side of a pod's HTTP/2 connection, paced by its source's turn. An HTTP/1 connection
/// is held back by its request waiting in [`FairGate::enter`] (hyper reads the next request
/// only after the response), but an HTTP/2 connection keeps reading: every new stream of a
/// limited source would be decoded, queued and, past `max_queue`, refused — loop time the flood
/// takes from the other pods, and a refusal the client answers by sending again. So while the
/// source has requests waiting, its HTTP/2 connections read nothing more: new streams stay in
/// the socket (TCP pushes back on the client) until the waiting ones have started, checked once
/// per [`TICK`], when tokens come. Writes are never held: responses in flight keep flowing.
///
/// A stream already started whose request body is still arriving waits too, while its source
/// has others waiting; that is the limited source slowing itself, never another pod.
pub struct PacedReads<IO> {
    io: IO,
    /// The gate and the pod's source name; None: ingress, never paced.
    pace: Option<(Arc<FairGate>, Arc<str>)>,
    /// Set while reads are held: the tick to look again at.
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> PacedReads<IO> {
    /// `io` read at `source`'s pace (None: not paced).
    pub fn new(io: IO, pace: Option<(Arc<FairGate>, Arc<str>)>) -> Self {
        PacedReads { io, pace, pause: None }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for PacedReads<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future as _;
        let this = &mut *self;
        if let Some((gate, source)) = &this.pace {
            loop {
                if let Some(pause) = this.pause.as_mut() {
                    std::task::ready!(pause.as_mut().poll(cx));
                    this.pause = None;
                }
                if !gate.holding(source) {
                    break;
                }
                this.pause = Some(Box::pin(tokio::time::sleep(TICK)));
            }
        }
        std::pin::Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

forward_async_write!(PacedReads, io);

/// Measures the loop's lateness every [`TICK`] and hands it to `gate` (see the module doc).
/// Runs for the agent's lifetime.
pub async fn watch_lag(gate: Arc<FairGate>, lag: Duration) {
    loop {
        let asked = tokio::time::Instant::now();
        tokio::time::sleep(TICK).await;
        gate.tick(asked.elapsed().saturating_sub(TICK), lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_millis(2);
    const LATE: Duration = Duration::from_millis(3);

    fn gate(max_queue: u32) -> Arc<FairGate> {
        let g = Arc::new(FairGate::default());
        g.configure(&FairConfig { enabled: true, max_queue, lag: LAG, min_rate: 1000.0 });
        g
    }

    /// Polls `f` once: Some(output) if it is ready.
    fn now<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        use futures_util::FutureExt as _;
        f.now_or_never()
    }

    /// `n` requests of `source` that started at once (panics if one waited).
    async fn send(g: &FairGate, source: &str, n: u32) {
        for _ in 0..n {
            assert_eq!(g.enter(source).await, Ok(false), "{source}'s request must start at once");
        }
    }

    /// `n` requests of `source`, each polled once (a request that must wait gives up).
    fn try_send(g: &FairGate, source: &str, n: u32) {
        for _ in 0..n {
            let _ = now(&mut Box::pin(g.enter(source)));
        }
    }

    /// Ticks with `b` trying 100 requests a tick (20,000/s) and `a` sending one a tick
    /// (200/s, never held), until the smoothed rates are close to that.
    async fn warm_up(g: &FairGate, late: Duration) {
        for _ in 0..60 {
            try_send(g, "b", 100);
            send(g, "a", 1).await;
            g.tick(late, LAG);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_on_time_limits_nobody() {
        let g = gate(8);
        warm_up(&g, Duration::from_micros(500)).await;
        assert_eq!(g.usage("b"), (None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_busy_source_is_never_limited() {
        let g = gate(8);
        for _ in 0..60 {
            send(&g, "b", 100).await;
            g.tick(LATE, LAG);
        }
        assert_eq!(g.usage("b"), (None, 0), "nobody to protect");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_is_lifted_once_its_source_is_the_only_one_sending() {
        let g = gate(8);
        warm_up(&g, LATE).await;
        assert!(g.usage("b").0.is_some(), "b is limited while a sends");
        // Spend b's tokens and queue one request.
        while now(&mut Box::pin(g.enter("b"))).is_some() {}
        let mut waiting = Box::pin(g.enter("b"));
        assert!(now(&mut waiting).is_none(), "b waits for a token");
        // a stops; the loop stays late (b's flood). Once a's smoothed rate is under one request
        // a second, b is alone: its limit goes and its queue starts.
        for _ in 0..80 {
            try_send(&g, "b", 100);
            g.tick(LATE, LAG);
        }
        assert_eq!(g.usage("b"), (None, 0), "nobody left to protect");
        assert_eq!(now(&mut waiting), Some(Ok(true)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_loop_halves_the_heaviest_source_and_never_limits_the_light_one() {
        let g = gate(8);
        warm_up(&g, LATE).await;
        let (limit, _) = g.usage("b");
        let limit = limit.expect("b is limited");
        assert!((1000.0..=10_000.0).contains(&limit), "b's limit {limit}");
        assert_eq!(g.usage("a"), (None, 0), "a is under min_rate");
        // Decreases come at most once per DECREASE_EVERY ticks, down to min_rate.
        for _ in 0..DECREASE_EVERY * 10 {
            send(&g, "a", 1).await;
            try_send(&g, "b", 100);
            g.tick(LATE, LAG);
        }
        assert_eq!(g.usage("b").0, Some(1000.0), "at min_rate");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_source_waits_for_tokens_and_past_its_queue_is_refused() {
        let g = gate(3);
        warm_up(&g, LATE).await;
        // Spend b's saved tokens.
        while now(&mut Box::pin(g.enter("b"))).is_some() {}
        // The pending request above gave up when dropped; queue three.
        let mut waiting: Vec<_> = (0..3).map(|_| Box::pin(g.enter("b"))).collect();
        for w in &mut waiting {
            assert!(now(w).is_none(), "b waits for a token");
        }
        assert_eq!(g.enter("b").await, Err(Refused), "b's queue is full");
        drop(waiting.pop()); // a client gave up: its place is free again
        let mut w3 = Box::pin(g.enter("b"));
        assert!(now(&mut w3).is_none());
        // The light source is never held.
        send(&g, "a", 5).await;
        // b's limit is at least min_rate: 5 tokens per tick, the three start at the next tick.
        g.tick(LATE, LAG);
        assert_eq!(now(&mut waiting[0]), Some(Ok(true)));
        assert_eq!(now(&mut waiting[1]), Some(Ok(true)));
        assert_eq!(now(&mut w3), Some(Ok(true)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_sources_connections_take_its_tokens_and_an_unlimited_ones_pass() {
        let g = gate(3);
        // Unlimited: at once, and not counted as sending (a source the gate never saw stays
        // unseen).
        assert_eq!(now(&mut Box::pin(g.accept_turn("c"))), Some(false));
        assert_eq!(g.usage("c"), (None, 0));
        warm_up(&g, LATE).await;
        assert!(g.usage("b").0.is_some(), "b is limited");
        // b's saved tokens go to connections as to requests; then a connection waits.
        let mut spent = 0;
        while now(&mut Box::pin(g.accept_turn("b"))) == Some(false) {
            spent += 1;
            assert!(spent <= 2 * BURST as usize, "b's connections never wait for tokens");
        }
        let mut next = Box::pin(g.accept_turn("b"));
        assert_eq!(now(&mut next), None, "b's next connection waits for a token");
        // In b's queue like a request (behind the place the loop's last try gave up).
        assert_eq!(g.usage("b").1, 2);
        g.tick(LATE, LAG);
        assert_eq!(now(&mut next), Some(true), "accepted at the next tick");
        // The light source's connections pass.
        assert_eq!(now(&mut Box::pin(g.accept_turn("a"))), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_sources_http2_reads_wait_until_its_waiting_requests_start() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let g = gate(8);
        assert!(!g.holding("b"), "nobody limited");
        warm_up(&g, LATE).await;
        while now(&mut Box::pin(g.enter("b"))).is_some() {}
        // The request polled last gave up: a place nobody waits in does not hold b.
        assert!(!g.holding("b"));
        let mut waiting = Box::pin(g.enter("b"));
        assert!(now(&mut waiting).is_none());
        assert!(g.holding("b"));
        assert!(!g.holding("a"));
        // Another pod's reads never wait for the gate's lock (the flood's requests take it).
        let held = g.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = g.clone();
        std::thread::spawn(move || tx.send(other.holding("a")));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(false), "a's read waited for the lock");
        drop(held);

        let (mut b_client, b_server) = tokio::io::duplex(64);
        let (mut a_client, a_server) = tokio::io::duplex(64);
        let mut b_conn = PacedReads::new(b_server, Some((g.clone(), Arc::from("b"))));
        let mut a_conn = PacedReads::new(a_server, Some((g.clone(), Arc::from("a"))));
        b_client.write_all(b"next").await.expect("write");
        a_client.write_all(b"next").await.expect("write");
        // Responses are never held.
        assert!(matches!(now(&mut Box::pin(b_conn.write_all(b"resp"))), Some(Ok(()))));
        let mut resp = [0u8; 4];
        b_client.read_exact(&mut resp).await.expect("response");

        let mut a_buf = [0u8; 4];
        let a_read = now(&mut Box::pin(a_conn.read(&mut a_buf))).map(|r| r.expect("read"));
        assert_eq!(a_read, Some(4), "another pod's connection reads at once");
        let mut b_buf = [0u8; 4];
        let mut b_read = Box::pin(b_conn.read(&mut b_buf));
        assert!(now(&mut b_read).is_none(), "b's new streams wait in the socket");
        tokio::time::advance(TICK).await;
        assert!(now(&mut b_read).is_none(), "still held: b's request has not started");
        g.tick(LATE, LAG);
        assert_eq!(now(&mut waiting), Some(Ok(true)));
        tokio::time::advance(TICK).await;
        assert_eq!(now(&mut b_read).map(|r| r.expect("read")), Some(4), "read once b's queue has started");
    }

    #[tokio::test(start_paused = true)]
    async fn limits_rise_when_the_loop_is_on_time_and_are_lifted_when_unneeded() {
        let g = gate(8);
        warm_up(&g, LATE).await;
        let before = g.usage("b").0.expect("limited");
        // b now sends 2 a tick (400/s): the limit rises each tick on time, then is lifted.
        for _ in 0..10 {
            send(&g, "a", 1).await;
            g.tick(Duration::ZERO, LAG);
        }
        let after = g.usage("b").0.expect("still limited");
        assert!(after >= before + 10.0 * 1000.0 * TICK.as_secs_f64() - 1e-6, "{before} -> {after}");
        for _ in 0..4000 {
            g.tick(Duration::ZERO, LAG);
        }
        assert_eq!(g.usage("b"), (None, 0), "lifted");
    }

    #[tokio::test(start_paused = true)]
    async fn turned_off_it_limits_nobody_and_releases_the_waiting() {
        let g = gate(8);
        warm_up(&g, LATE).await;
        while now(&mut Box::pin(g.enter("b"))).is_some() {}
        let mut w = Box::pin(g.enter("b"));
        assert!(now(&mut w).is_none());
        g.configure(&FairConfig { enabled: false, ..FairConfig::default() });
        assert_eq!(now(&mut w), Some(Ok(true)));
        assert_eq!(g.usage("b"), (None, 0));
        for _ in 0..60 {
            send(&g, "b", 100).await;
            send(&g, "a", 1).await;
            g.tick(LATE, LAG);
        }
        assert_eq!(g.usage("b"), (None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_measures_the_timers_lateness() {
        // On the paused clock a blocked worker is the clock advanced past a tick's deadline.
        let g = gate(8);
        tokio::spawn(watch_lag(g.clone(), LAG));
        warm_up(&g, Duration::ZERO).await;
        for _ in 0..DECREASE_EVERY + 2 {
            send(&g, "b", 100).await;
            send(&g, "a", 1).await;
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(g.usage("b").0, None, "ticks on time");
        send(&g, "b", 100).await;
        send(&g, "a", 1).await;
        tokio::time::advance(TICK * 2).await;
        tokio::task::yield_now().await;
        assert!(g.usage("b").0.is_some(), "a tick 5 ms late limits b");
    }
}
