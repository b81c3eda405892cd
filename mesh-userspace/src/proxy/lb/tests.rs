//! The load balancer's picks, outlier detection and what a reload keeps of its state.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use crate::registry::{Endpoint, Workload};

/// An endpoint at `addr`, of a pod called `name`.
fn endpoint(name: String, addr: SocketAddr) -> Endpoint {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    };
    Endpoint {
        workload: Arc::new(Workload {
            name,
            namespace: "default".into(),
            labels: BTreeMap::new(),
            ip,
            container_ports: vec![],
            netns: None,
            cgroup: None,
            enroll: true,
            caps: Default::default(),
        }),
        addr,
    }
}

mod outlier {
    use std::net::Ipv4Addr;

    use super::{super::*, endpoint};
    use crate::{registry::Service, routing::OutlierDetection};

    fn cluster(n: usize, od: OutlierDetection) -> Cluster {
        let endpoints = (0..n)
            .map(|i| endpoint(format!("w{i}"), SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 1000 + i as u16))))
            .collect();
        Cluster {
            name: format!("outbound|80||c{n}"),
            service: Arc::new(Service::default()),
            subset: None,
            port: 80,
            endpoints,
            lb: LbPolicy::RoundRobin,
            connection_pool: Default::default(),
            outlier_detection: Some(od),
            telemetry: Default::default(),
            runtime: Default::default(),
        }
    }

    fn od(base: Duration, max_percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: Some(1),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: base,
            max_ejection_percent: max_percent,
        }
    }

    /// Fails the request on endpoint `i` once (consecutive5xxErrors is 1).
    fn fail(lb: &LoadBalancer, c: &Cluster, i: usize) {
        let state = lb.runtime(c).endpoints[i].clone();
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        let picked = Picked { endpoint: c.endpoints[i].clone(), state };
        lb.report(c, &picked, Some(503));
    }

    #[tokio::test(start_paused = true)]
    async fn one_host_may_always_be_ejected_but_no_more_than_max_percent() {
        // Istio's default 10% of 3 endpoints rounds to 0; Envoy still ejects one.
        let lb = LoadBalancer::default();
        let c = cluster(3, od(Duration::from_secs(30), 10));
        fail(&lb, &c, 0);
        assert!(lb.is_ejected(c.endpoints[0].addr), "one host may always be ejected");
        fail(&lb, &c, 1);
        assert!(!lb.is_ejected(c.endpoints[1].addr), "a second one would exceed 10%");
        // 50% of 4: two may be out, not three.
        let lb = LoadBalancer::default();
        let c = cluster(4, od(Duration::from_secs(30), 50));
        for i in 0..3 {
            fail(&lb, &c, i);
        }
        let out = c.endpoints.iter().filter(|e| lb.is_ejected(e.addr)).count();
        assert_eq!(out, 2);
        // 0% never ejects.
        let lb = LoadBalancer::default();
        let c = cluster(2, od(Duration::from_secs(30), 0));
        fail(&lb, &c, 0);
        assert!(!lb.is_ejected(c.endpoints[0].addr));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_per_ejection_up_to_max_ejection_time() {
        let lb = LoadBalancer::default();
        let c = cluster(1, od(Duration::from_secs(100), 100));
        let addr = c.endpoints[0].addr;
        // 100 s, 200 s, 300 s, then capped at 300 s (Envoy's max_ejection_time).
        for expected in [100u64, 200, 300, 300] {
            fail(&lb, &c, 0);
            assert!(lb.is_ejected(addr));
            tokio::time::advance(Duration::from_secs(expected) - Duration::from_millis(1)).await;
            assert!(lb.is_ejected(addr), "still out just before {expected} s");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(!lb.is_ejected(addr), "back after {expected} s");
        }
        // Healthy for 10 intervals: the multiplier decays back to the base time.
        tokio::time::advance(Duration::from_secs(100)).await;
        fail(&lb, &c, 0);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(!lb.is_ejected(addr), "after a long healthy spell the base time applies again");
    }

    #[tokio::test(start_paused = true)]
    async fn huge_base_ejection_time_does_not_overflow() {
        let lb = LoadBalancer::default();
        let c = cluster(1, od(Duration::MAX, 100));
        fail(&lb, &c, 0);
        assert!(lb.is_ejected(c.endpoints[0].addr));
        fail(&lb, &c, 0);
        assert_eq!(ejection_time(Duration::MAX, u32::MAX), EJECTION_CEILING);
        assert_eq!(ejection_time(Duration::from_secs(1), u32::MAX), MAX_EJECTION_TIME);
    }
}

mod picks {
    use std::net::Ipv4Addr;

    use super::{super::*, endpoint};
    use crate::{
        registry::Service,
        routing::{ConnectionPool, HashOn, OutlierDetection},
    };

    fn cluster(n: u8, lb: LbPolicy, outlier_detection: Option<OutlierDetection>) -> Cluster {
        let endpoints = (0..n).map(|i| endpoint(format!("reviews-{i}"), addr(i))).collect();
        Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            service: Arc::new(Service::default()),
            subset: None,
            port: 9080,
            endpoints,
            lb,
            connection_pool: ConnectionPool::default(),
            outlier_detection,
            telemetry: Default::default(),
            runtime: Default::default(),
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 244, 0, 10 + i), 9080))
    }

    /// Endpoint index of `n` picks (each released at once).
    fn picks(lb: &LoadBalancer, c: &Cluster, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let p = lb.pick(c, None, &[]).expect("endpoint");
                (0..c.endpoints.len() as u8).find(|i| addr(*i) == p.endpoint.addr).expect("known endpoint")
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let lb = LoadBalancer::default();
        let c = cluster(3, LbPolicy::RoundRobin, None);
        let seq = picks(&lb, &c, 9);
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2, 0, 1, 2]);
        // An endpoint a retry already tried is skipped while another is left.
        let p = lb.pick(&c, None, &[addr(0), addr(1)]).expect("endpoint");
        assert_eq!(p.endpoint.addr, addr(2));
    }

    #[test]
    fn consistent_hash_is_xxhash64_of_specified_bytes() {
        // Known xxHash64 (seed 0) vectors, from the reference implementation (Python `xxhash`
        // 3.x): a change of hash function or of the bytes hashed moves users between endpoints
        // across a rollout, so it must fail here.
        let xxh64 = |b: &[u8]| twox_hash::XxHash64::oneshot(0, b);
        assert_eq!(xxh64(b""), 0xef46db3751d8e999);
        assert_eq!(xxh64(b"abc"), 0x44bc2cf5ad770999);
        let on_header = LbPolicy::ConsistentHash(HashOn::Header("end-user".into()));
        let mut headers = http::HeaderMap::new();
        headers.insert("end-user", http::HeaderValue::from_static("jason"));
        assert_eq!(crate::proxy::forward::hash_key(&on_header, &headers, None, None), Some(0xbae90e0841dcabff));
        let on_query = LbPolicy::ConsistentHash(HashOn::QueryParameter("u".into()));
        assert_eq!(
            crate::proxy::forward::hash_key(&on_query, &headers, Some("x=1&u=abc"), None),
            Some(0x44bc2cf5ad770999)
        );
        // key 1 (LE) ++ 10.0.0.1 ++ port 9080 (BE) = 01 00.. 0a 00 00 01 23 78
        let endpoint: SocketAddr = "10.0.0.1:9080".parse().expect("addr");
        assert_eq!(rendezvous_weight(1, endpoint), 0xd67afe764e5998e1);
    }

    #[test]
    fn consistent_hash_keeps_a_key_on_its_endpoint_and_spreads_keys() {
        let lb = LoadBalancer::default();
        let c = cluster(4, LbPolicy::ConsistentHash(HashOn::Header("x-user".into())), None);
        let mut per_endpoint: HashMap<SocketAddr, u32> = HashMap::new();
        let mut first: HashMap<u64, SocketAddr> = HashMap::new();
        for key in 0..2000u64 {
            let a = lb.pick(&c, Some(key), &[]).expect("endpoint").endpoint.addr;
            for _ in 0..3 {
                assert_eq!(lb.pick(&c, Some(key), &[]).expect("endpoint").endpoint.addr, a, "key {key} moved");
            }
            *per_endpoint.entry(a).or_default() += 1;
            first.insert(key, a);
        }
        // 2000 keys over 4 endpoints: 500 each expected, sd 19; ±100 is more than 5 sd, so this
        // fails only for a hash that does not spread (e.g. everything on one endpoint).
        for i in 0..4 {
            let n = per_endpoint.get(&addr(i)).copied().unwrap_or(0);
            assert!((400..=600).contains(&n), "endpoint {i} got {n} of 2000 keys: {per_endpoint:?}");
        }
        // Rendezvous hashing: removing an endpoint moves only the keys that were on it.
        let mut three = cluster(4, c.lb.clone(), None);
        three.endpoints.remove(3);
        for (key, a) in &first {
            let now = lb.pick(&three, Some(*key), &[]).expect("endpoint").endpoint.addr;
            if *a != addr(3) {
                assert_eq!(now, *a, "key {key} moved although its endpoint stayed");
            }
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded_endpoint() {
        let lb = LoadBalancer::default();
        let rr = cluster(2, LbPolicy::RoundRobin, None);
        // Three requests in flight on endpoint 0 (the in-flight count is per endpoint address,
        // whichever cluster picked it).
        let held: Vec<Picked> = (0..3).map(|_| lb.pick(&rr, None, &[addr(1)]).expect("endpoint")).collect();
        assert!(held.iter().all(|p| p.endpoint.addr == addr(0)));
        let least = cluster(2, LbPolicy::LeastRequest, None);
        let seq = picks(&lb, &least, 400);
        let idle = seq.iter().filter(|i| **i == 1).count();
        // Power of two choices over 2 endpoints picks the idle one unless both draws hit the
        // busy one: 3/4 of 400 = 300 expected (sd 8.7). Round robin or random would give 200.
        assert!(idle >= 250, "the idle endpoint got {idle} of 400 picks");
        drop(held);
        // Released: both are idle again and both get picks.
        let seq = picks(&lb, &least, 100);
        assert!(seq.contains(&0) && seq.contains(&1), "{seq:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn outlier_detection_ejects_after_consecutive_5xx_and_readmits_after_base_ejection_time() {
        let od = OutlierDetection {
            consecutive_5xx_errors: Some(3),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
        };
        let lb = LoadBalancer::default();
        let c = cluster(2, LbPolicy::RoundRobin, Some(od));
        let report = |status: u16| {
            let p = lb.pick(&c, None, &[addr(1)]).expect("endpoint");
            assert_eq!(p.endpoint.addr, addr(0), "endpoint 0 is ejected already");
            lb.report(&c, &p, Some(status));
        };
        // Two 5xx, a success (resets the count), two 5xx: never 3 in a row, not ejected.
        for status in [503, 500, 200, 503, 502] {
            report(status);
        }
        assert!(picks(&lb, &c, 4).contains(&0), "ejected without 3 consecutive 5xx");
        // The third consecutive one ejects it for baseEjectionTime.
        report(503);
        assert_eq!(picks(&lb, &c, 6), vec![1; 6], "not ejected after 3 consecutive 5xx");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(picks(&lb, &c, 6), vec![1; 6], "back before baseEjectionTime");
        // maxEjectionPercent 50: endpoint 1 failing cannot take the cluster to 100% ejected.
        for _ in 0..3 {
            let p = lb.pick(&c, None, &[]).expect("endpoint");
            assert_eq!(p.endpoint.addr, addr(1));
            lb.report(&c, &p, Some(503));
        }
        assert_eq!(picks(&lb, &c, 6), vec![1; 6], "endpoint 1 ejected beyond maxEjectionPercent");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(picks(&lb, &c, 4).contains(&0), "not back after baseEjectionTime");
        // The second ejection lasts twice as long.
        for _ in 0..3 {
            report(503);
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(picks(&lb, &c, 6), vec![1; 6], "second ejection shorter than 2 x baseEjectionTime");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(picks(&lb, &c, 4).contains(&0), "not back after 2 x baseEjectionTime");
    }
}

mod reload {
    use std::net::Ipv4Addr;

    use super::super::*;
    use crate::{
        registry::Service,
        routing::{ConnectionPool, OutlierDetection},
    };

    fn endpoint(i: u8) -> Endpoint {
        super::endpoint(format!("reviews-{i}"), SocketAddr::from((Ipv4Addr::new(10, 244, 1, i), 9080)))
    }

    /// A freshly compiled cluster (as every reload makes): one request at a time, one 5xx ejects.
    fn cluster(name: &str, endpoints: &[u8]) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.into(),
            service: Arc::new(Service::default()),
            subset: None,
            port: 9080,
            endpoints: endpoints.iter().map(|i| endpoint(*i)).collect(),
            lb: LbPolicy::RoundRobin,
            connection_pool: ConnectionPool { max_connections: Some(1), ..Default::default() },
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx_errors: Some(1),
                consecutive_gateway_errors: None,
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: 100,
            }),
            telemetry: Default::default(),
            runtime: Default::default(),
        })
    }

    fn table(clusters: &[&Arc<Cluster>]) -> RouteTable {
        let mut t = RouteTable::default();
        let by_name = t.defaults.entry("default".into()).or_default();
        for c in clusters {
            by_name.entry(c.name.clone()).or_default().push((9080, Arc::clone(c)));
        }
        t
    }

    const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
    const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
    const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_ejections_and_requests_in_flight_and_forgets_what_is_gone() {
        let lb = LoadBalancer::default();
        let (reviews, ratings) = (cluster(REVIEWS, &[1, 2]), cluster(RATINGS, &[9]));
        let first = table(&[&reviews, &ratings]);
        lb.adopt(&first);
        assert_eq!(lb.tracked(), (2, 3));
        // Endpoint 1 fails once and is ejected; a request to reviews is in flight.
        let p = lb.pick(&reviews, None, &[]).expect("endpoint");
        assert_eq!(p.endpoint.addr, endpoint(1).addr);
        lb.report(&reviews, &p, Some(503));
        drop(p);
        let in_flight = lb.admit(&reviews).expect("the first request is admitted");

        // The reload compiles new clusters: reviews again, its v1 subset (endpoint 1 only), no
        // ratings.
        let (reviews2, v1) = (cluster(REVIEWS, &[1, 2]), cluster(V1, &[1]));
        let second = table(&[&reviews2, &v1]);
        lb.adopt(&second);
        assert!(lb.admit(&reviews2).is_none(), "the request in flight before the reload no longer counts");
        drop(in_flight);
        assert!(lb.admit(&reviews2).is_some());
        for _ in 0..4 {
            let p = lb.pick(&reviews2, None, &[]).expect("endpoint");
            assert_eq!(p.endpoint.addr, endpoint(2).addr, "the ejection was lost in the reload");
        }
        // The subset's cluster shares the endpoint's health with the service's.
        assert!(lb.is_ejected(endpoint(1).addr));
        let v1_state = &v1.runtime.get().expect("adopted").endpoints[0];
        assert!(Arc::ptr_eq(v1_state, &reviews2.runtime.get().expect("adopted").endpoints[0]));
        assert!(!v1_state.healthy(Instant::now()));

        // Once the first table is gone, the next adoption forgets ratings and its endpoint.
        drop((first, reviews, ratings));
        lb.adopt(&second);
        assert_eq!(lb.tracked(), (2, 2));
        drop((second, reviews2, v1));
        lb.adopt(&RouteTable::default());
        assert_eq!(lb.tracked(), (0, 0), "state outlived every table that named it");
    }
}
