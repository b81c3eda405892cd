//! The caps of one source workload and its standing under the overload manager.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::sync::Notify;

use super::Limits;

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
        use super::super::overload::{CONNECTION_BYTES, PARKED_CONNECTION_BYTES, REQUEST_BYTES};
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
            freed = freed
                .saturating_add(t.held.load(Ordering::Acquire))
                .saturating_add(super::super::overload::REQUEST_BYTES);
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
