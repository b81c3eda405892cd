//! Endpoint selection and passive health (outlier detection): the only mutable per-cluster
//! state of the proxy, kept apart from the immutable route table so a config reload keeps
//! round-robin position, in-flight counts and ejections of endpoints that still exist.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rand::Rng;

use crate::{
    registry::Endpoint,
    routing::{Cluster, LbPolicy},
};

#[derive(Default)]
struct EndpointHealth {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

#[derive(Default)]
struct EndpointState {
    in_flight: AtomicU64,
    health: Mutex<EndpointHealth>,
}

#[derive(Default)]
pub struct LoadBalancer {
    rr: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Requests in flight per cluster, for the connection-pool limits (circuit breaking).
    active: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Retries in flight per cluster, for `connectionPool.http.maxRetries`.
    retrying: Mutex<HashMap<String, Arc<AtomicU64>>>,
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
}

/// A picked endpoint; dropping it ends the request for least-request accounting.
pub struct Picked {
    pub endpoint: Endpoint,
    state: Arc<EndpointState>,
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

/// The per-cluster counter, created on first use; no allocation once it exists (the hot path).
fn counter_for<T: Default>(map: &Mutex<HashMap<String, Arc<T>>>, cluster: &str) -> Arc<T> {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = m.get(cluster) {
        return c.clone();
    }
    m.entry(cluster.to_owned()).or_default().clone()
}

/// One more in flight on `counter`, unless `limit` are already: the slot is held until dropped.
fn take_slot(counter: Arc<AtomicU64>, limit: Option<u64>) -> Option<Admitted> {
    let now = counter.fetch_add(1, Ordering::AcqRel);
    if limit.is_some_and(|l| now >= l) {
        counter.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Admitted(counter))
}

impl LoadBalancer {
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
        take_slot(counter_for(&self.active, &cluster.name), limit)
    }

    /// Envoy's retry circuit breaker (`maxRetries`): at most that many retries of requests to the
    /// cluster may be outstanding at once, so a failing upstream is not hit by a retry storm.
    /// None: the retry must not be made (the caller returns the response it has).
    pub fn admit_retry(&self, cluster: &Cluster) -> Option<Admitted> {
        take_slot(counter_for(&self.retrying, &cluster.name), cluster.connection_pool.max_retries.map(u64::from))
    }

    fn state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut m = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(addr).or_default().clone()
    }

    fn healthy(&self, now: Instant, ep: &Endpoint) -> bool {
        let st = self.state(ep.addr);
        let h = st.health.lock().unwrap_or_else(|e| e.into_inner());
        h.ejected_until.is_none_or(|t| t <= now)
    }

    /// Whether outlier detection has `addr` ejected right now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        let st = self.endpoints.lock().unwrap_or_else(|e| e.into_inner()).get(&addr).cloned();
        st.is_some_and(|st| st.health.lock().unwrap_or_else(|e| e.into_inner()).ejected_until.is_some_and(|t| t > now))
    }

    /// Picks an endpoint of `cluster`, skipping ejected ones and, when possible, those in
    /// `avoid` (already tried by this request's earlier attempts). `hash` is the consistent-hash
    /// key when the policy asks for one.
    pub fn pick(&self, cluster: &Cluster, hash: Option<u64>, avoid: &[SocketAddr]) -> Option<Picked> {
        let now = Instant::now();
        let all = &cluster.endpoints;
        if all.is_empty() {
            return None;
        }
        let mut candidates: Vec<&Endpoint> = all.iter().filter(|e| self.healthy(now, e)).collect();
        // Envoy's panic threshold: with every endpoint ejected, balance over all of them rather
        // than fail everything.
        if candidates.is_empty() {
            candidates = all.iter().collect();
        }
        if candidates.len() > 1 && !avoid.is_empty() {
            let fresh: Vec<&Endpoint> = candidates.iter().copied().filter(|e| !avoid.contains(&e.addr)).collect();
            if !fresh.is_empty() {
                candidates = fresh;
            }
        }
        let chosen: &Endpoint = match (&cluster.lb, hash) {
            (LbPolicy::ConsistentHash(_), Some(h)) => {
                // Rendezvous hashing: stable under endpoint churn without a ring to rebuild.
                candidates
                    .iter()
                    .max_by_key(|e| {
                        let mut s = std::collections::hash_map::DefaultHasher::new();
                        (h, e.addr).hash(&mut s);
                        s.finish()
                    })
                    .copied()?
            }
            (LbPolicy::Random, _) => candidates[rand::thread_rng().gen_range(0..candidates.len())],
            (LbPolicy::LeastRequest, _) => {
                // Power of two choices, as Envoy's LEAST_REQUEST does.
                let mut rng = rand::thread_rng();
                let a = candidates[rng.gen_range(0..candidates.len())];
                let b = candidates[rng.gen_range(0..candidates.len())];
                let load = |e: &Endpoint| self.state(e.addr).in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
            _ => {
                let counter = counter_for(&self.rr, &cluster.name);
                let i = counter.fetch_add(1, Ordering::Relaxed);
                candidates[i % candidates.len()]
            }
        };
        let state = self.state(chosen.addr);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked { endpoint: chosen.clone(), state })
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
        // maxEjectionPercent bounds how much of the cluster may be out at once.
        let now = Instant::now();
        let total = cluster.endpoints.len().max(1);
        let ejected = cluster.endpoints.iter().filter(|e| !self.healthy(now, e)).count();
        if (ejected + 1) * 100 > total * od.max_ejection_percent as usize {
            return;
        }
        let mut h = picked.state.health.lock().unwrap_or_else(|e| e.into_inner());
        h.ejections += 1;
        let base: Duration = od.base_ejection_time;
        h.ejected_until = Some(now + base * h.ejections);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        tracing::warn!(endpoint = %picked.endpoint.addr, cluster = %cluster.name, for_ms = (base * h.ejections).as_millis() as u64, "outlier detection ejected endpoint");
    }
}
