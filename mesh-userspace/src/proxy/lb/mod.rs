//! Endpoint selection and passive health (outlier detection). The mutable state it needs
//! (round-robin position, requests and retries in flight, endpoint health) is owned by the
//! compiled cluster it belongs to ([`ClusterRuntime`], in [`Cluster::runtime`]): a pick locks
//! nothing shared. A reload hands the state of every cluster and endpoint that still exists to
//! the new table before it is published ([`LoadBalancer::adopt`]), so round-robin positions,
//! in-flight counts and ejections survive it; what the new table no longer names is dropped
//! with the last table that did.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use http::uri::Authority;
use rand::Rng;
// tokio's Instant is std's outside tests; under a paused test clock it follows
// `tokio::time::advance`, so ejection times can be tested without waiting them out.
use tokio::time::Instant;

use crate::{
    registry::Endpoint,
    routing::{Cluster, LbPolicy, RouteTable},
};

#[derive(Default)]
struct EndpointHealth {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// One endpoint address's requests in flight and health. Shared by every cluster that has the
/// address (a subset's cluster and the service's plain one): Envoy ejects a host, not a
/// (host, cluster) pair, and least-request balancing counts all of a host's requests.
struct EndpointState {
    in_flight: AtomicU64,
    health: Mutex<EndpointHealth>,
    /// The address as an upstream URI's authority, parsed once rather than on every try; None
    /// if it does not parse (the try then parses the whole URI and answers that error).
    authority: Option<Authority>,
}

/// `addr` as a URI authority: `10.0.0.1:80`, `[fd00::1]:80`.
pub(super) fn authority_of(addr: SocketAddr) -> Option<Authority> {
    addr.to_string().parse().ok()
}

impl EndpointState {
    fn new(addr: SocketAddr) -> Self {
        EndpointState { in_flight: AtomicU64::new(0), health: Mutex::default(), authority: authority_of(addr) }
    }

    fn healthy(&self, now: Instant) -> bool {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.ejected_until.is_none_or(|t| t <= now)
    }
}

/// A cluster's counters, shared by every table that has a cluster of its name.
#[derive(Default)]
struct ClusterCounters {
    round_robin: AtomicUsize,
    /// Requests in flight, for the connection-pool limits (circuit breaking).
    active: Arc<AtomicU64>,
    /// Retries in flight, for `connectionPool.http.maxRetries`.
    retrying: Arc<AtomicU64>,
}

/// A compiled cluster's load-balancer state: its counters and, parallel to
/// [`Cluster::endpoints`], each endpoint's state.
pub struct ClusterRuntime {
    counters: Arc<ClusterCounters>,
    endpoints: Vec<Arc<EndpointState>>,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("active", &self.counters.active.load(Ordering::Relaxed))
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

/// Hands state to compiled clusters: the live state of every cluster name and endpoint address
/// some table still holds. Only weak references, so a table's drop frees what only it named;
/// locked once per cluster per table (when the table is adopted), never per request.
#[derive(Default)]
pub struct LoadBalancer {
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    clusters: HashMap<String, Weak<ClusterCounters>>,
    endpoints: HashMap<SocketAddr, Weak<EndpointState>>,
}

impl Live {
    fn counters(&mut self, name: &str) -> Arc<ClusterCounters> {
        if let Some(c) = self.clusters.get(name).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(ClusterCounters::default());
        self.clusters.insert(name.to_owned(), Arc::downgrade(&c));
        c
    }

    fn endpoint(&mut self, addr: SocketAddr) -> Arc<EndpointState> {
        if let Some(e) = self.endpoints.get(&addr).and_then(Weak::upgrade) {
            return e;
        }
        let e = Arc::new(EndpointState::new(addr));
        self.endpoints.insert(addr, Arc::downgrade(&e));
        e
    }

    fn runtime(&mut self, cluster: &Cluster) -> ClusterRuntime {
        ClusterRuntime {
            counters: self.counters(&cluster.name),
            endpoints: cluster.endpoints.iter().map(|e| self.endpoint(e.addr)).collect(),
        }
    }

    /// Forgets what no table holds any more.
    fn prune(&mut self) {
        self.clusters.retain(|_, c| c.strong_count() > 0);
        self.endpoints.retain(|_, e| e.strong_count() > 0);
    }
}

/// A picked endpoint; dropping it ends the request for least-request accounting.
pub struct Picked {
    /// The endpoint to send the request to.
    pub endpoint: Endpoint,
    state: Arc<EndpointState>,
}

impl Picked {
    /// The endpoint's address as a URI authority (see [`authority_of`]).
    pub fn authority(&self) -> Option<&Authority> {
        self.state.authority.as_ref()
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request admitted by the cluster's connection pool; dropping it frees the slot.
pub struct Admitted(Arc<AtomicU64>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One more in flight on `counter`, unless `limit` are already: the slot is held until dropped.
fn take_slot(counter: &Arc<AtomicU64>, limit: Option<u64>) -> Option<Admitted> {
    let now = counter.fetch_add(1, Ordering::AcqRel);
    if limit.is_some_and(|l| now >= l) {
        counter.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Admitted(counter.clone()))
}

impl LoadBalancer {
    /// Gives every cluster of `table` its state before the table is published: the state of the
    /// same cluster name and endpoint addresses in the tables still live (the one being
    /// replaced), fresh state for new ones. Then forgets what no table holds any more (what
    /// only the table before the replaced one named).
    pub fn adopt(&self, table: &RouteTable) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        table.for_each_cluster(&mut |c| {
            c.runtime.get_or_init(|| live.runtime(c));
        });
        live.prune();
    }

    /// The cluster's state; a cluster no adopted table holds (a test's, or a table published
    /// without [`LoadBalancer::adopt`]) gets it on first use.
    fn runtime<'c>(&self, cluster: &'c Cluster) -> &'c ClusterRuntime {
        cluster.runtime.get_or_init(|| self.live.lock().unwrap_or_else(|e| e.into_inner()).runtime(cluster))
    }

    /// How many cluster names and endpoint addresses have state (what pruning bounds).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        (live.clusters.len(), live.endpoints.len())
    }

    /// Envoy's circuit breaker as Istio configures it: with HTTP/1.1 upstreams a request holds a
    /// connection, so at most `maxConnections` run and `http1MaxPendingRequests` more may wait;
    /// `http2MaxRequests` caps concurrent requests. Past that the request is refused (503) rather
    /// than queued without bound. None means the request overflowed.
    pub fn admit(&self, cluster: &Cluster) -> Option<Admitted> {
        let pool = &cluster.connection_pool;
        let by_connections =
            pool.max_connections.map(|c| u64::from(c) + u64::from(pool.http1_max_pending_requests.unwrap_or(0)));
        let limit = match (by_connections, pool.http2_max_requests.map(u64::from)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        take_slot(&self.runtime(cluster).counters.active, limit)
    }

    /// Envoy's retry circuit breaker (`maxRetries`): at most that many retries of requests to the
    /// cluster may be outstanding at once, so a failing upstream is not hit by a retry storm.
    /// None: the retry must not be made (the caller returns the response it has).
    pub fn admit_retry(&self, cluster: &Cluster) -> Option<Admitted> {
        take_slot(&self.runtime(cluster).counters.retrying, cluster.connection_pool.max_retries.map(u64::from))
    }

    /// Whether outlier detection has `addr` ejected right now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        self.ejected_for(addr).is_some()
    }

    /// How much longer outlier detection keeps `addr` ejected; None when it is not ejected.
    pub fn ejected_for(&self, addr: SocketAddr) -> Option<std::time::Duration> {
        let now = Instant::now();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let st = live.endpoints.get(&addr).and_then(Weak::upgrade)?;
        drop(live);
        let until = st.health.lock().unwrap_or_else(|e| e.into_inner()).ejected_until?;
        (until > now).then(|| until - now)
    }

    /// Picks an endpoint of `cluster`, skipping ejected ones and, when possible, those in
    /// `avoid` (already tried by this request's earlier attempts). `hash` is the consistent-hash
    /// key when the policy asks for one.
    pub fn pick(&self, cluster: &Cluster, hash: Option<u64>, avoid: &[SocketAddr]) -> Option<Picked> {
        let now = Instant::now();
        let rt = self.runtime(cluster);
        let pairs = || cluster.endpoints.iter().zip(rt.endpoints.iter());
        let mut candidates: Vec<(&Endpoint, &Arc<EndpointState>)> = pairs().filter(|(_, st)| st.healthy(now)).collect();
        // Envoy's panic threshold: with every endpoint ejected, balance over all of them rather
        // than fail everything.
        if candidates.is_empty() {
            candidates = pairs().collect();
            if candidates.is_empty() {
                return None;
            }
        }
        if candidates.len() > 1 && !avoid.is_empty() {
            let fresh: Vec<_> = candidates.iter().copied().filter(|(e, _)| !avoid.contains(&e.addr)).collect();
            if !fresh.is_empty() {
                candidates = fresh;
            }
        }
        let (chosen, state) = match (&cluster.lb, hash) {
            (LbPolicy::ConsistentHash(_), Some(h)) => {
                // Rendezvous hashing: stable under endpoint churn without a ring to rebuild.
                candidates.iter().max_by_key(|(e, _)| rendezvous_weight(h, e.addr)).copied()?
            }
            (LbPolicy::Random, _) => candidates[rand::thread_rng().gen_range(0..candidates.len())],
            (LbPolicy::LeastRequest, _) => {
                // Power of two choices, as Envoy's LEAST_REQUEST does.
                let mut rng = rand::thread_rng();
                let a = candidates[rng.gen_range(0..candidates.len())];
                let b = candidates[rng.gen_range(0..candidates.len())];
                let load = |st: &EndpointState| st.in_flight.load(Ordering::Relaxed);
                if load(b.1) < load(a.1) {
                    b
                } else {
                    a
                }
            }
            _ => {
                let i = rt.counters.round_robin.fetch_add(1, Ordering::Relaxed);
                candidates[i % candidates.len()]
            }
        };
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked { endpoint: chosen.clone(), state: state.clone() })
    }

    /// Feeds a result into outlier detection. `status` None means a connect failure or reset.
    pub fn report(&self, cluster: &Cluster, picked: &Picked, status: Option<u16>) {
        let Some(od) = &cluster.outlier_detection else { return };
        let gateway_error = matches!(status, None | Some(502..=504));
        let server_error = matches!(status, None | Some(500..=599));
        let mut h = picked.state.health.lock().unwrap_or_else(|e| e.into_inner());
        if server_error {
            h.consecutive_5xx += 1;
        } else {
            h.consecutive_5xx = 0;
        }
        if gateway_error {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let trip = od.consecutive_5xx_errors.is_some_and(|n| n > 0 && h.consecutive_5xx >= n)
            || od.consecutive_gateway_errors.is_some_and(|n| n > 0 && h.consecutive_gateway >= n);
        if !trip {
            return;
        }
        drop(h);
        let now = Instant::now();
        let total = cluster.endpoints.len();
        let ejected = self.runtime(cluster).endpoints.iter().filter(|st| !st.healthy(now)).count();
        if !may_eject(total, ejected, od.max_ejection_percent) {
            return;
        }
        let mut h = picked.state.health.lock().unwrap_or_else(|e| e.into_inner());
        // Envoy lowers the ejection multiplier once per interval the host stays in: a host that
        // behaved since its last ejection ended starts over rather than at its old maximum.
        if let (Some(until), Some(interval)) = (h.ejected_until, Some(od.interval).filter(|i| !i.is_zero())) {
            let healthy_for = now.saturating_duration_since(until);
            let intervals = u32::try_from(healthy_for.as_nanos() / interval.as_nanos()).unwrap_or(u32::MAX);
            h.ejections = h.ejections.saturating_sub(intervals);
        }
        h.ejections = h.ejections.saturating_add(1);
        let time = ejection_time(od.base_ejection_time, h.ejections);
        let Some(until) = now.checked_add(time) else {
            tracing::warn!(endpoint = %picked.endpoint.addr, "ejection time out of the clock's range; not ejecting");
            return;
        };
        h.ejected_until = Some(until);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        tracing::warn!(endpoint = %picked.endpoint.addr, cluster = %cluster.name, for_ms = time.as_millis() as u64, "outlier detection ejected endpoint");
    }
}

/// Envoy's default `max_ejection_time`: ejections grow with each one but never past this (or
/// past `baseEjectionTime`, when that is larger). Istio does not expose the field.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Whatever the configuration says, no ejection outlasts this (a year): it keeps `Instant`
/// arithmetic far from overflow and an absurd `baseEjectionTime` from meaning "forever".
const EJECTION_CEILING: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long the `times`-th ejection lasts: baseEjectionTime × times, capped.
/// An endpoint's rendezvous (highest random weight) score for a request's hash key: xxHash64
/// (seed 0) of the key's 8 little-endian bytes, the endpoint's IP octets and its port's 2
/// big-endian bytes. Specified bytes and a specified hash: agents of different builds pick the
/// same endpoint for the same key.
pub(crate) fn rendezvous_weight(key: u64, endpoint: SocketAddr) -> u64 {
    let mut bytes = [0u8; 8 + 16 + 2];
    bytes[..8].copy_from_slice(&key.to_le_bytes());
    let ip_len = match endpoint.ip() {
        std::net::IpAddr::V4(ip) => {
            bytes[8..12].copy_from_slice(&ip.octets());
            4
        }
        std::net::IpAddr::V6(ip) => {
            bytes[8..24].copy_from_slice(&ip.octets());
            16
        }
    };
    let end = 8 + ip_len;
    bytes[end..end + 2].copy_from_slice(&endpoint.port().to_be_bytes());
    twox_hash::XxHash64::oneshot(0, &bytes[..end + 2])
}

fn ejection_time(base: Duration, times: u32) -> Duration {
    let cap = MAX_EJECTION_TIME.max(base).min(EJECTION_CEILING);
    base.checked_mul(times).map_or(cap, |t| t.min(cap))
}

/// maxEjectionPercent bounds how much of the cluster may be out at once, but as in Envoy one
/// host may always be ejected, so Istio's default 10% works in clusters under 10 endpoints.
/// 0% means never eject.
fn may_eject(total: usize, ejected: usize, max_percent: u32) -> bool {
    if max_percent == 0 || total == 0 {
        return false;
    }
    if ejected == 0 {
        return true;
    }
    let wanted = (ejected as u128 + 1) * 100;
    wanted <= total as u128 * u128::from(max_percent.min(100))
}

#[cfg(test)]
mod tests;
