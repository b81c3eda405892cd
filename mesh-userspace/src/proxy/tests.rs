//! Proxy behaviour over real loopback sockets with a fixed original-destination table: routing
//! by subset, fault injection, retries, no-endpoint replies, and config reloads racing requests.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};

use super::*;
use crate::{
    config::Config,
    registry::{AppProtocol, ContainerPort, ServicePort, TargetPort},
};

struct NoOriginalDst;
impl OriginalDst for NoOriginalDst {
    fn take(&self, _: u64, _: SocketAddrV4) -> Option<SocketAddrV4> {
        None
    }
}

/// A backend answering every request with its name; counts requests, can fail the first `fail` ones.
async fn backend(name: &'static str, fail: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    // A fresh gate: the port may be one an earlier test's backend had, and that backend's leftover
    // `release` permits would let this one's held requests through at once.
    fresh_hold(addr);
    connections().lock().unwrap().insert(addr, 0);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            *connections().lock().unwrap().entry(addr).or_default() += 1;
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: ::http::Request<hyper::body::Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let user = req.headers().get("end-user").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    let held = req.headers().contains_key("x-hold");
                    // What the backend saw: the request target and every header, one per line.
                    let mut seen = format!("path: {}\n", req.uri().path_and_query().map_or("/", |p| p.as_str()));
                    for (k, v) in req.headers() {
                        seen += &format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes()));
                    }
                    let h = hold(addr);
                    h.seen.lock().unwrap().push(seen.clone());
                    h.received.add_permits(1);
                    async move {
                        if held {
                            // Held until the test releases it: no timing assumption about how
                            // long "slow" must be for requests to overlap.
                            let hold = hold(addr);
                            hold.arrived.add_permits(1);
                            if let Ok(p) = hold.release.acquire().await {
                                p.forget();
                            };
                        }
                        let mut r =
                            ::http::Response::new(crate::proxy::http::full(format!("{name} end-user={user}\n{seen}")));
                        r.headers_mut().insert("x-backend", ::http::HeaderValue::from_static(name));
                        if n < fail {
                            *r.status_mut() = ::http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// A test backend's gate for requests sent with `x-hold`: each adds a permit to `arrived` when
/// it reaches the backend and is answered once the test adds a permit to `release`.
struct Hold {
    arrived: Semaphore,
    release: Semaphore,
    /// Every request the backend received (see `backend`), and a permit per request.
    seen: std::sync::Mutex<Vec<String>>,
    received: Semaphore,
}

fn holds() -> std::sync::MutexGuard<'static, std::collections::HashMap<SocketAddr, Arc<Hold>>> {
    static HOLDS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<Hold>>>> =
        std::sync::OnceLock::new();
    HOLDS.get_or_init(Default::default).lock().unwrap()
}

fn new_hold() -> Arc<Hold> {
    Arc::new(Hold {
        arrived: Semaphore::new(0),
        release: Semaphore::new(0),
        seen: Default::default(),
        received: Semaphore::new(0),
    })
}

/// Replaces whatever gate an earlier backend on the same port left behind.
fn fresh_hold(addr: SocketAddr) {
    holds().insert(addr, new_hold());
}

fn hold(addr: SocketAddr) -> Arc<Hold> {
    holds().entry(addr).or_insert_with(new_hold).clone()
}

/// Waits until `n` held requests have reached the backend at `addr` (bounded, so a bug fails the
/// test instead of hanging it).
async fn arrived(addr: SocketAddr, n: u32) {
    let h = hold(addr);
    let got = tokio::time::timeout(Duration::from_secs(10), h.arrived.acquire_many(n)).await;
    got.expect("held requests did not reach the backend").expect("semaphore").forget();
}

/// Connections each test backend accepted, by its address.
fn connections() -> &'static std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>> {
    static CONNS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>> =
        std::sync::OnceLock::new();
    CONNS.get_or_init(Default::default)
}

fn workload(name: &str, labels: &[(&str, &str)], port: u16) -> Arc<Workload> {
    Arc::new(Workload {
        name: name.into(),
        namespace: "default".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ip: Some(Ipv4Addr::LOCALHOST),
        container_ports: vec![ContainerPort { name: Some("http".into()), port }],
        netns: None,
        cgroup: None,
        enroll: true,
        caps: Default::default(),
    })
}

/// reviews (v1, v2 on their own loopback ports, selected through the named target port) and a
/// productpage client pod.
async fn setup(fail_v1: usize) -> (Registry, Arc<Service>, Arc<Workload>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (a1, h1) = backend("reviews-v1", fail_v1).await;
    let (a2, h2) = backend("reviews-v2", 0).await;
    let reviews = Arc::new(Service {
        name: "reviews".into(),
        namespace: "default".into(),
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 12)),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 9080,
            target_port: TargetPort::Name("http".into()),
            node_port: None,
            protocol: AppProtocol::Http,
        }],
        selector: [("app".to_string(), "reviews".to_string())].into_iter().collect(),
        ..Default::default()
    });
    let client = workload("productpage-v1", &[("app", "productpage"), ("version", "v1")], 9080);
    let registry = Registry {
        services: vec![reviews.clone()],
        workloads: vec![
            workload("reviews-v1", &[("app", "reviews"), ("version", "v1")], a1.port()),
            workload("reviews-v2", &[("app", "reviews"), ("version", "v2")], a2.port()),
            client.clone(),
        ],
        ..Default::default()
    };
    (registry, reviews, client, h1, h2)
}

/// A listener that hands every connection to the proxy as if connect4 had redirected it from `client` to reviews:9080.
async fn front(state: Arc<ProxyState>, reviews: Arc<Service>, client: Arc<Workload>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else { return };
            let source = Source::new(Some(client.clone()), Some(peer), None);
            tokio::spawn(serve_service_conn(state.clone(), source, reviews.clone(), 9080, s));
        }
    });
    addr
}

async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String, Duration) {
    let (status, _, body, took) = get_full(addr, "/reviews/0", headers).await;
    (status, body, took)
}

/// Like [`get`], with the response headers. Time is tokio's, so a paused test clock measures
/// exactly the proxy's timers.
async fn get_full(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, ::http::HeaderMap, String, Duration) {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = ::http::Request::builder().uri(path).header("host", "reviews:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Empty::<Bytes>::new()).expect("request")).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned(), started.elapsed())
}

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn vs(subset: &str) -> String {
    format!("{DR}---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n")
}

fn table(yaml: &str, registry: &Registry) -> RouteTable {
    let config = Config::parse_str("test.yaml", yaml).unwrap_or_else(|e| panic!("config: {e}"));
    RouteTable::compile(&config, registry).unwrap_or_else(|e| panic!("compile: {e}"))
}

// Paused clock: the only timer while jason's request waits is the fault delay, so the time it
// takes is the configured delay, not "at least" it (a real clock would need a loose upper bound).
#[tokio::test(start_paused = true)]
async fn header_route_and_delay_fault_apply_to_jason_only() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = format!(
        "{DR}---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    fault:\n      delay:\n        percentage:\n          value: 100.0\n        fixedDelay: 300ms\n    route:\n    - destination: {{host: reviews, subset: v2}}\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n"
    );
    let routes = table(&yaml, &registry);
    let state = ProxyState::new(registry, routes, Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let (s, body, took) = get(addr, &[("end-user", "jason")]).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("reviews-v2 end-user=jason"), "{body}");
    assert!(took >= Duration::from_millis(300), "delay not applied: {took:?}");
    assert!(took < Duration::from_millis(310), "delay longer than the configured 300ms: {took:?}");
    let (s, body, took) = get(addr, &[]).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("reviews-v1"), "{body}");
    assert!(took < Duration::from_millis(300), "delay applied to anonymous user: {took:?}");
    assert_eq!(
        state.metrics.get(
            "istio_requests_total",
            &[("reporter", "source"), ("destination_version", "v2"), ("response_code", "200")]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_reach_a_healthy_endpoint() {
    // v1 answers every request with 503, so only a retry sent to another endpoint can succeed.
    // The key is hashed (consistentHash): a retry that did not avoid the endpoint already tried
    // would land on v1 again, as round robin would hide by moving on anyway.
    let (registry, reviews, client, h1, h2) = setup(usize::MAX).await;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    // 16 keys: each hashes to v1 or v2; the chance that none is on v1 is 2^-16.
    for i in 0..16 {
        let user = format!("u{i}");
        let (s, body, _) = get(addr, &[("x-user", &user)]).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("reviews-v2"), "answered by {body}");
    }
    let (v1, v2) = (h1.load(Ordering::SeqCst), h2.load(Ordering::SeqCst));
    assert!(v1 >= 1, "no key hashed to v1: the retry path was not exercised");
    assert_eq!(v2, 16, "v2 answers every request exactly once");
    assert!(v1 <= 16, "v1 tried more than once per request: {v1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_without_endpoints_is_a_503_naming_it() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = format!("{}  - {{name: v3, labels: {{version: v3}}}}\n", DR) + &vs("v3")[DR.len()..];
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, _) = get(addr, &[]).await;
    assert_eq!(s, 503);
    assert!(body.contains("no healthy upstream") && body.contains("v3"), "{body}");
}

/// A config directory holding `yaml`, as the agent's `--config` would.
fn config_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("reviews.yaml"), yaml).expect("write config");
    dir
}

/// Loads `dir` and applies it through the agent's reload path (parse, compile, swap).
fn reload(state: &ProxyState, dir: &tempfile::TempDir) {
    let config =
        Config::load_dir(dir.path()).unwrap_or_else(|e| panic!("config in {} rejected: {e}", dir.path().display()));
    let registry = state.registry.load_full();
    assert!(crate::reload::apply_config(state, &mut crate::admission::Admission::default(), config, &registry));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_race_loses_no_request() {
    const RELOADS: usize = 200;
    let (registry, reviews, client, _, _) = setup(0).await;
    let v1 = v1_addr(&registry);
    let dirs = [config_dir(&vs("v1")), config_dir(&vs("v2"))];
    let state = ProxyState::new(registry, RouteTable::kubernetes_only(&Registry::default()), Arc::new(NoOriginalDst));
    reload(&state, &dirs[0]);
    let addr = front(state.clone(), reviews, client).await;

    // Held at the v1 backend across every reload below; must still be answered by v1.
    let held = tokio::spawn(get(addr, &[("x-hold", "1")]));
    arrived(v1, 1).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (done, completed) = (done.clone(), completed.clone());
        clients.push(tokio::spawn(async move {
            let (mut bad, mut seen) = (Vec::new(), [0usize; 2]);
            while !done.load(Ordering::SeqCst) {
                let (s, body, _) = get(addr, &[]).await;
                match (s, body.split(' ').next()) {
                    (200, Some("reviews-v1")) => seen[0] += 1,
                    (200, Some("reviews-v2")) => seen[1] += 1,
                    _ => bad.push((s, body)),
                }
                completed.fetch_add(1, Ordering::SeqCst);
            }
            (bad, seen)
        }));
    }
    // Every reload waits for a request to complete after the previous one, so requests are in
    // flight across all of them; the clients run until the last has been applied.
    for i in 0..RELOADS {
        let before = completed.load(Ordering::SeqCst);
        reload(&state, &dirs[(i + 1) % 2]);
        while completed.load(Ordering::SeqCst) == before {
            tokio::task::yield_now().await;
        }
    }
    done.store(true, Ordering::SeqCst);
    let (mut bad, mut seen) = (Vec::new(), [0usize; 2]);
    for c in clients {
        let (b, s) = c.await.expect("client");
        bad.extend(b);
        seen[0] += s[0];
        seen[1] += s[1];
    }
    assert!(bad.is_empty(), "requests failed during reloads: {bad:?}");
    assert!(seen[0] > 0 && seen[1] > 0, "both subsets must be served across the reloads: {seen:?}");
    assert!(seen[0] + seen[1] >= RELOADS, "{seen:?}");
    assert_eq!(state.metrics.get("mesh_config_reloads_total", &[("result", "applied")]), RELOADS as u64 + 1);

    // The held request was routed before the first reload: it finishes on v1.
    hold(v1).release.add_permits(1);
    let (s, body, _) = held.await.expect("held request");
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("reviews-v1"), "{body}");
}

// Paused clock: the delayed request's 1 s fault delay is the only timer, so the reload below
// happens while it waits, after it was routed (virtual time, no race with a real clock).
#[tokio::test(start_paused = true)]
async fn a_delayed_request_finishes_on_the_route_table_it_started_with() {
    let (registry, reviews, client, h1, h2) = setup(0).await;
    let delayed_to_v1 = format!(
        "{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - fault:\n      delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}\n    route:\n    - destination: {{host: reviews, subset: v1}}\n"
    );
    let dirs = [config_dir(&delayed_to_v1), config_dir(&vs("v2"))];
    let state = ProxyState::new(registry, RouteTable::kubernetes_only(&Registry::default()), Arc::new(NoOriginalDst));
    reload(&state, &dirs[0]);
    let addr = front(state.clone(), reviews, client).await;
    let delayed = tokio::spawn(get(addr, &[]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 0, "the delayed request is still waiting");
    reload(&state, &dirs[1]);
    // New requests take the new table at once (v2, no delay)...
    let (s, body, took) = get(addr, &[]).await;
    assert_eq!((s, body.split(' ').next()), (200, Some("reviews-v2")), "{body}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // ...the one routed before the reload keeps its route: v1 after its 1 s delay.
    let (s, body, took) = delayed.await.expect("delayed request");
    assert_eq!((s, body.split(' ').next()), (200, Some("reviews-v1")), "{body}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1010), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_limits_overflow_with_503() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let v1 = v1_addr(&registry);
    // Five requests the backend holds: the pool admits 1 + 1 pending, the other 3 overflow and
    // are answered while the 2 admitted are still held.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..5 {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(get_full(addr, "/reviews/0", &[("x-hold", "1")]).await);
        });
    }
    arrived(v1, 2).await;
    for _ in 0..3 {
        let (status, headers, body, _) = next(&mut rx).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(headers.get("x-envoy-overloaded").map(|v| v.as_bytes()), Some(&b"true"[..]), "{headers:?}");
        assert!(body.contains("reset reason: overflow"), "{body}");
    }
    assert_eq!(
        state.metrics.get("mesh_overflow_total", &[("cluster", "outbound|9080|v1|reviews.default.svc.cluster.local")]),
        3
    );
    hold(v1).release.add_permits(2);
    for _ in 0..2 {
        let (status, _, body, _) = next(&mut rx).await;
        assert_eq!(status, 200, "{body}");
    }
    // Slots are released: a later request goes through.
    assert_eq!(get(addr, &[]).await.0, 200);
    assert_eq!(state.metrics.get("mesh_overflow_total", &[]), 3);
    // Envoy's UO on each refused request (recorded as its reply's body ends, a moment after).
    let uo = [("reporter", "source"), ("response_code", "503"), ("response_flags", "UO")];
    for _ in 0..2000 {
        if state.metrics.get("istio_requests_total", &uo) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(state.metrics.get("istio_requests_total", &uo), 3);
}

/// The next value on `rx`, within 10 s (a bug fails the test instead of hanging it).
async fn next<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("response").expect("sender")
}

fn reviews_v1_with_pool(pool: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {pool}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n    retries: {{attempts: 3, retryOn: 5xx}}\n"
    )
}

/// Lets one held request (`x-hold`) go at every backend of `registry`.
fn release_all(registry: &Registry) {
    for w in &registry.workloads {
        if let (Some(ip), Some(p)) = (w.ip, w.container_ports.first()) {
            hold(SocketAddr::from((ip, p.port))).release.add_permits(1);
        }
    }
}

fn v1_addr(registry: &Registry) -> SocketAddr {
    let w =
        registry.workloads.iter().find(|w| w.labels.get("version").map(String::as_str) == Some("v1")).expect("v1 pod");
    SocketAddr::from((w.ip.expect("ip"), w.container_ports[0].port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_caps_outstanding_retries() {
    // v1 always fails. With maxRetries: 0 the retry circuit breaker refuses every retry (Envoy
    // semantics), so each request reaches the backend once and the 503 is returned as is.
    let (registry, reviews, client, h1, _) = setup(usize::MAX).await;
    let state = ProxyState::new(
        registry.clone(),
        table(&reviews_v1_with_pool("{maxRetries: 0}"), &registry),
        Arc::new(NoOriginalDst),
    );
    let addr = front(state.clone(), reviews.clone(), client.clone()).await;
    for _ in 0..3 {
        assert_eq!(get(addr, &[]).await.0, 503);
    }
    assert_eq!(h1.load(Ordering::SeqCst), 3, "no retry may be made");
    assert_eq!(state.metrics.get("mesh_retry_overflow_total", &[]), 3);

    // Without the limit the same route retries 3 times per request.
    let (registry, reviews, client, h1, _) = setup(usize::MAX).await;
    let state = ProxyState::new(
        registry.clone(),
        table(&reviews_v1_with_pool("{maxRetries: 10}"), &registry),
        Arc::new(NoOriginalDst),
    );
    let addr = front(state.clone(), reviews, client).await;
    assert_eq!(get(addr, &[]).await.0, 503);
    assert_eq!(h1.load(Ordering::SeqCst), 4, "1 try + 3 retries");
    assert_eq!(state.metrics.get("mesh_retry_overflow_total", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_and_max_requests_per_connection_shape_upstream_connections() {
    // Default pool: keep-alive, one connection for sequential requests.
    let (registry, reviews, client, _, _) = setup(0).await;
    let state =
        ProxyState::new(registry.clone(), table(&reviews_v1_with_pool("{}"), &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    for _ in 0..3 {
        assert_eq!(get(addr, &[]).await.0, 200);
    }
    assert_eq!(connections().lock().unwrap()[&v1_addr(&registry)], 1, "keep-alive reuses the connection");

    // maxRequestsPerConnection: 1 turns keep-alive off.
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(
        registry.clone(),
        table(&reviews_v1_with_pool("{maxRequestsPerConnection: 1}"), &registry),
        Arc::new(NoOriginalDst),
    );
    let addr = front(state, reviews, client).await;
    for _ in 0..3 {
        assert_eq!(get(addr, &[]).await.0, 200);
    }
    assert_eq!(connections().lock().unwrap()[&v1_addr(&registry)], 3, "one connection per request");

    // idleTimeout: a connection idle longer than that is closed and not reused.
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(
        registry.clone(),
        table(&reviews_v1_with_pool("{idleTimeout: 100ms}"), &registry),
        Arc::new(NoOriginalDst),
    );
    let addr = front(state, reviews, client).await;
    assert_eq!(get(addr, &[]).await.0, 200);
    assert_eq!(get(addr, &[]).await.0, 200);
    assert_eq!(connections().lock().unwrap()[&v1_addr(&registry)], 1, "reused within the idle timeout");
    // Being idle is the behaviour under test: wait past the timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(addr, &[]).await.0, 200);
    assert_eq!(connections().lock().unwrap()[&v1_addr(&registry)], 2, "the idle connection was closed");
}

/// A backend that answers with the HTTP version and `te` it was sent, plus a gRPC-style trailer.
async fn protocol_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: ::http::Request<hyper::body::Incoming>| async move {
                    let te = req.headers().get("te").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    let mut trailers = ::http::HeaderMap::new();
                    trailers.insert("grpc-status", ::http::HeaderValue::from_static("0"));
                    let body = http_body_util::Full::new(Bytes::from(format!("{:?} te={te}", req.version())))
                        .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
                    Ok::<_, std::convert::Infallible>(::http::Response::new(body))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Service `name` at ClusterIP `vip` with one port (`name`, number, protocol) leading to its one
/// endpoint `NAME-1` at `backend`, in a registry with a `client` pod.
fn one_endpoint_service(
    name: &str,
    vip: [u8; 4],
    (port_name, port, protocol): (Option<&str>, u16, AppProtocol),
    backend: SocketAddr,
) -> (Arc<Service>, Arc<Workload>, Registry) {
    let service = Arc::new(Service {
        name: name.into(),
        namespace: "default".into(),
        cluster_ip: Some(Ipv4Addr::from(vip)),
        ports: vec![ServicePort {
            name: port_name.map(Into::into),
            port,
            target_port: TargetPort::Number(backend.port()),
            node_port: None,
            protocol,
        }],
        selector: [("app".to_string(), name.to_string())].into_iter().collect(),
        ..Default::default()
    });
    let client = workload("client", &[("app", "client")], 80);
    let registry = Registry {
        services: vec![service.clone()],
        workloads: vec![workload(&format!("{name}-1"), &[("app", name)], backend.port()), client.clone()],
        ..Default::default()
    };
    (service, client, registry)
}

/// A listener handing `state`'s proxy the connections it accepts as `client`'s to `port` of
/// `service` (what a pod's listener does after the original-destination lookup).
async fn front_for(state: &Arc<ProxyState>, client: Arc<Workload>, service: Arc<Service>, port: u16) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = l.local_addr().expect("addr");
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else { return };
            let source = Source::new(Some(client.clone()), Some(peer), None);
            tokio::spawn(serve_service_conn(st.clone(), source, service.clone(), port, s));
        }
    });
    addr
}

/// A proxy in front of one `greeter` service whose port 50051 is declared as `protocol`, with
/// `pool` as the DestinationRule's `connectionPool.http`.
async fn greeter_proxy(protocol: AppProtocol, pool: &str) -> SocketAddr {
    greeter_proxy_state(protocol, pool).await.0
}

/// [`greeter_proxy`] with its proxy state.
async fn greeter_proxy_state(protocol: AppProtocol, pool: &str) -> (SocketAddr, Arc<ProxyState>) {
    let backend = protocol_backend().await;
    let (greeter, client, registry) =
        one_endpoint_service("greeter", [10, 96, 0, 50], (None, 50051, protocol), backend);
    let dr = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: greeter}}\nspec:\n  host: greeter\n  trafficPolicy:\n    connectionPool:\n      http: {pool}\n");
    let state = ProxyState::new(registry.clone(), table(&dr, &registry), Arc::new(NoOriginalDst));
    (front_for(&state, client, greeter, 50051).await, state)
}

/// One request over HTTP/2 (prior knowledge) or HTTP/1.1 with `te: trailers`; returns the body
/// (the version and `te` the backend saw) and the `grpc-status` trailer if it came through.
async fn call(addr: SocketAddr, http2: bool) -> (String, Option<String>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = ::http::Request::builder()
        .method("POST")
        .uri("http://greeter:50051/helloworld.Greeter/SayHello")
        .header("host", "greeter:50051")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let resp = if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("response")
    };
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.expect("body");
    let status =
        collected.trailers().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok()).map(str::to_owned);
    (String::from_utf8_lossy(&collected.to_bytes()).into_owned(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_follows_port_declaration_and_destination_rule() {
    // A port declared gRPC / HTTP/2 is HTTP/2 upstream whatever the client spoke; te: trailers
    // and the grpc-status trailer pass through.
    let grpc = greeter_proxy(AppProtocol::Http2, "{}").await;
    assert_eq!(call(grpc, true).await, ("HTTP/2.0 te=trailers".into(), Some("0".into())));
    assert_eq!(call(grpc, false).await.0, "HTTP/2.0 te=trailers");
    // A port declared http stays HTTP/1.1 upstream even for HTTP/2 clients (Istio's default) ...
    let http = greeter_proxy(AppProtocol::Http, "{}").await;
    assert_eq!(call(http, true).await.0, "HTTP/1.1 te=trailers");
    // ... unless the DestinationRule upgrades it, or asks for the client's protocol.
    let upgraded = greeter_proxy(AppProtocol::Http, "{h2UpgradePolicy: UPGRADE}").await;
    assert_eq!(call(upgraded, false).await.0, "HTTP/2.0 te=trailers");
    let follow = greeter_proxy(AppProtocol::Http, "{useClientProtocol: true}").await;
    assert_eq!(call(follow, true).await.0, "HTTP/2.0 te=trailers");
    assert_eq!(call(follow, false).await.0, "HTTP/1.1 te=trailers");
    // A port that declares nothing is sniffed, and the upstream gets the client's protocol.
    let sniffed = greeter_proxy(AppProtocol::Unknown, "{}").await;
    assert_eq!(call(sniffed, true).await, ("HTTP/2.0 te=trailers".into(), Some("0".into())));
    assert_eq!(call(sniffed, false).await.0, "HTTP/1.1 te=trailers");
}

/// A server-first backend (SMTP, MySQL, ...): greets every connection before the client says a
/// word, then answers each line with `got <line>`.
async fn banner_backend() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                if w.write_all(b"220 mail.example ready\r\n").await.is_err() {
                    return;
                }
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("got {line}\r\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_on_an_undeclared_port_falls_back_to_tcp() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let backend = banner_backend().await;
    // No protocol and no `name` prefix: Istio sniffs such a port.
    let (mail, client, registry) =
        one_endpoint_service("mail", [10, 96, 0, 25], (None, 25, AppProtocol::Unknown), backend);
    let state = ProxyState::new(registry.clone(), table("", &registry), Arc::new(NoOriginalDst));
    let addr = front_for(&state, client, mail, 25).await;
    // The client waits for the greeting, as an SMTP client does: the proxy must give up on
    // sniffing (the client is silent) and connect upstream, or both sides wait forever.
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = s.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    async fn read(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>) -> String {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.expect("no line in 5 s");
        line.expect("read").expect("connection closed")
    }
    assert_eq!(read(&mut lines).await, "220 mail.example ready");
    // Then it is a byte stream both ways, not HTTP (a line that is not a request line passes).
    w.write_all(b"HELO client.example\r\n").await.expect("write");
    assert_eq!(read(&mut lines).await, "got HELO client.example");
    w.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    assert_eq!(read(&mut lines).await, "got GET / HTTP/1.1");
}

/// A proxy for a `mail` service on a port declared TCP (the banner backend behind it) and a
/// listener handing it connections from a `client` pod.
async fn tcp_mail_proxy() -> (Arc<ProxyState>, SocketAddr, SocketAddr) {
    let backend = banner_backend().await;
    let (mail, client, registry) =
        one_endpoint_service("mail", [10, 96, 0, 25], (Some("tcp-smtp"), 25, AppProtocol::Tcp), backend);
    let state = ProxyState::new(registry.clone(), table("", &registry), Arc::new(NoOriginalDst));
    let addr = front_for(&state, client, mail, 25).await;
    (state, addr, backend)
}

/// One SMTP-like exchange over `s`: the greeting (24 bytes to the client), `HELO x` (8 bytes
/// from it) and its echo (12 bytes to it).
async fn tcp_exchange(s: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut greeting = [0u8; 24];
    s.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"220 mail.example ready\r\n");
    s.write_all(b"HELO x\r\n").await.expect("write");
    let mut echo = [0u8; 12];
    s.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"got HELO x\r\n");
}

// Paused clock: the only timers are the proxy's reporting interval and the test's sleep, so the
// report after one interval is the interval's, with the connection still open.
#[tokio::test(start_paused = true)]
async fn a_tcp_connections_bytes_are_reported_every_interval_while_it_is_open() {
    use tokio::io::AsyncReadExt;
    let (state, addr, _) = tcp_mail_proxy().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    let source = [("reporter", "source"), ("source_workload", "client"), ("destination_workload", "mail-1")];
    let dest = [("reporter", "destination"), ("source_workload", "client"), ("destination_workload", "mail-1")];
    let m = |name: &str, labels: &[(&str, &str)]| state.metrics.get(name, labels);
    // Opened as soon as the upstream connection is up.
    assert_eq!(m("istio_tcp_connections_opened_total", &source), 1);
    assert_eq!(m("istio_tcp_connections_opened_total", &dest), 1);
    tokio::time::sleep(telemetry::TCP_REPORTING_INTERVAL + Duration::from_millis(1)).await;
    // Still open: the interval's report has the bytes so far.
    assert_eq!(m("istio_tcp_sent_bytes_total", &source), 36);
    assert_eq!(m("istio_tcp_received_bytes_total", &source), 8);
    assert_eq!(m("istio_tcp_sent_bytes_total", &dest), 36);
    assert_eq!(m("istio_tcp_connections_closed_total", &[]), 0);
    // More bytes, then the close: only what the reports have not counted is added.
    tokio::io::AsyncWriteExt::write_all(&mut s, b"QUIT\r\n").await.expect("write");
    let mut echo = [0u8; 10];
    s.read_exact(&mut echo).await.expect("echo");
    drop(s);
    for _ in 0..1000 {
        if m("istio_tcp_connections_closed_total", &source) == 1 {
            break;
        }
        // Lets the runtime poll the sockets (the close travels client → proxy → backend and back).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(m("istio_tcp_connections_closed_total", &source), 1);
    assert_eq!(m("istio_tcp_connections_closed_total", &dest), 1);
    assert_eq!(m("istio_tcp_sent_bytes_total", &source), 46);
    assert_eq!(m("istio_tcp_received_bytes_total", &source), 14);
    assert_eq!(m("istio_tcp_connections_opened_total", &source), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_tcp_connection_writes_one_access_log_line_at_close() {
    let (state, addr, backend) = tcp_mail_proxy().await;
    let mut lines = access_log_lines(&state);
    state.access_log.set_mode(access_log::AccessLogMode::Text);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    drop(s);
    let line = next_line(&mut lines).await;
    // Envoy's default format as its TCP proxy writes it: no request, code 0, bytes both ways.
    let re = regex::Regex::new(&format!(
        r#"^\[\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z\] "- - -" 0 - 8 36 \d+ - "-" "-" "-" "-" "{}"$"#,
        regex::escape(&backend.to_string())
    ))
    .expect("regex");
    assert!(re.is_match(&line), "not Envoy's TCP default format: {line}");

    state.access_log.set_mode(access_log::AccessLogMode::Json);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    drop(s);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    for key in ["method", "path", "protocol", "user_agent", "request_id", "authority", "upstream_service_time"] {
        assert!(v.get(key).is_some_and(serde_json::Value::is_null), "{key} null: {line}");
    }
    assert_eq!(v["response_code"], 0, "{line}");
    assert_eq!(v["response_flags"], "-", "{line}");
    assert_eq!((v["bytes_received"].as_u64(), v["bytes_sent"].as_u64()), (Some(8), Some(36)), "{line}");
    assert_eq!(v["upstream_host"], backend.to_string(), "{line}");
    assert_eq!(v["upstream_cluster"], "outbound|25||mail.default.svc.cluster.local", "{line}");

    // A Telemetry filter applies to TCP lines too: one on the response code is false (a TCP
    // connection has none), so the first connection writes nothing; the second, under a filter on
    // its cluster, writes its line (told apart by its bytes: one exchange more).
    let set = |expr: &str| {
        let filter = Some(Arc::new(access_log::LogFilter::compile(expr).expect("parses")));
        let mut m = access_log::WorkloadOverrides::new();
        m.entry("default".to_owned()).or_default().insert("client".to_owned(), access_log::PodLog::On(filter));
        state.access_log.set_overrides(Some(m));
    };
    set("response.code >= 400");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    drop(s);
    set("xds.cluster_name == 'outbound|25||mail.default.svc.cluster.local'");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"HELO x\r\n").await.expect("write");
        let mut echo = [0u8; 12];
        s.read_exact(&mut echo).await.expect("echo");
    }
    drop(s);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!((v["bytes_received"].as_u64(), v["bytes_sent"].as_u64()), (Some(16), Some(48)), "{line}");
}

#[test]
fn unknown_h2_upgrade_policy_is_rejected_with_its_path() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {h2UpgradePolicy: ALWAYS}\n";
    let config = Config::parse_str("dr.yaml", yaml).expect("parses");
    let err = RouteTable::compile(&config, &Registry::default()).map(|_| ()).expect_err("rejected").to_string();
    assert!(err.contains("h2UpgradePolicy") && err.contains("UPGRADE"), "{err}");
}

/// Drain (SIGTERM with no successor): the listener stops (a new connect is refused), an idle
/// keep-alive connection is closed, a connection accepted just before with no request yet still
/// gets its first one answered, a slow request in flight completes with `Connection: close`, and
/// the drain ends when that connection does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let (registry, reviews, _, h1, h2) = setup(0).await;
    let state = ProxyState::new(registry.clone(), RouteTable::kubernetes_only(&registry), Arc::new(NoOriginalDst));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind nodeport");
    let addr = l.local_addr().expect("addr");
    let listener = tokio::spawn(serve_nodeport(state.clone(), l, reviews, 9080));

    let request = |slow: bool| {
        let mut r = ::http::Request::builder().uri("/reviews/0").header("host", "reviews:9080");
        if slow {
            // Held at the backend until the test lets it go, so it is in flight at the drain.
            r = r.header("x-hold", "1");
        }
        r.body(Empty::<Bytes>::new()).expect("request")
    };
    // A: one request answered, then idle on keep-alive.
    let (mut idle, idle_conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tokio::net::TcpStream::connect(addr).await.expect("A")))
            .await
            .expect("handshake A");
    let idle_conn = tokio::spawn(idle_conn);
    assert_eq!(idle.send_request(request(false)).await.expect("A response").status(), 200);
    // B: a request the backend takes 300 ms to answer, in flight when the drain starts.
    let (mut busy, busy_conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tokio::net::TcpStream::connect(addr).await.expect("B")))
            .await
            .expect("handshake B");
    tokio::spawn(busy_conn);
    let slow = tokio::spawn(async move {
        let resp = busy.send_request(request(true)).await.expect("B response");
        let close = resp.headers().get("connection").map(|v| v.to_str().unwrap_or("").to_owned());
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("B body").to_bytes();
        (status, close, body)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "slow request never reached a backend");
        tokio::task::yield_now().await;
    }

    // C: connected just before the drain, its request not written yet (a connection-per-request
    // client between its connect and its write when a handover's drain starts).
    let fresh = tokio::net::TcpStream::connect(addr).await.expect("C");
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.drain.active() < 3 {
        assert!(Instant::now() < deadline, "connection C never accepted");
        tokio::task::yield_now().await;
    }

    state.drain.start();
    tokio::time::timeout(Duration::from_secs(2), listener).await.expect("listener stops").expect("listener task");
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "connect after drain start: {refused:?}"
    );
    tokio::time::timeout(Duration::from_secs(2), idle_conn).await.expect("idle keep-alive connection closed").ok();
    // C's request, written once the drain has closed A (so C's server side has seen the drain
    // too), is still answered (and told to close).
    let (mut late, late_conn) = hyper::client::conn::http1::handshake(TokioIo::new(fresh)).await.expect("handshake C");
    tokio::spawn(late_conn);
    let resp = late.send_request(request(false)).await.expect("C: answered, not closed unanswered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"));
    release_all(&registry);
    let (status, close, body) = slow.await.expect("slow request task");
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(close.as_deref(), Some("close"), "in-flight response must say Connection: close");
    assert_eq!(state.drain.wait_idle(Duration::from_secs(5)).await, 0, "every connection ended");
}

/// The value of header `name` as the backend saw it (the lines after the first of its answer).
fn seen_header<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines().skip(1).find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// A VirtualService for reviews (with the v1/v2 DestinationRule) whose single http rule is `rule`
/// (YAML indented for `http:`).
fn vs_rule(rule: &str) -> String {
    format!("{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{rule}")
}

// Paused clock: the held request never answers, so the route timeout (or each per-try timeout)
// is the only timer and the time to the 504 is exactly what is configured.
#[tokio::test(start_paused = true)]
async fn route_timeout_and_per_try_timeout_on_the_wire() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let v1 = v1_addr(&registry);
    let yaml = vs_rule("  - timeout: 500ms\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, took) = get(addr, &[("x-hold", "1")]).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("upstream request timeout"), "{body}");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(510), "{took:?}");
    arrived(v1, 1).await;

    // perTryTimeout 100ms, 2 retries: 3 tries reach the backend, each cut at 100 ms, plus
    // Envoy's jittered back-off between them (at most 50 + 100 ms).
    let (registry, reviews, client, _, _) = setup(0).await;
    let v1 = v1_addr(&registry);
    let yaml = vs_rule("  - retries: {attempts: 2, perTryTimeout: 100ms, retryOn: 5xx}\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, took) = get(addr, &[("x-hold", "1")]).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("per-try timeout"), "{body}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(460), "{took:?}");
    arrived(v1, 3).await;
    assert_eq!(hold(v1).arrived.available_permits(), 0, "more than 3 tries");
}

// Paused clock, as above: an HTTPRoute `retry` retries a try cut by `backendRequest` (the spec's
// "retry on ... timeout"), and waits at least `backoff` before each retry, doubling.
#[tokio::test(start_paused = true)]
async fn httproute_retry_backoff_and_backend_request_timeout_on_the_wire() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews}]\n  rules:\n  - retry: {attempts: 2, backoff: 100ms}\n    timeouts: {backendRequest: 50ms}\n    backendRefs: [{name: reviews, port: 9080}]\n";
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, took) = get(addr, &[("x-hold", "1")]).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("per-try timeout"), "{body}");
    // 3 tries of 50 ms, back-offs in [100, 200] and [200, 400] ms.
    assert!(took >= Duration::from_millis(450) && took <= Duration::from_millis(760), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_and_header_edits_as_the_backend_and_client_see_them() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule(
        "  - match:\n    - uri: {prefix: /reviews}\n    rewrite: {uri: /v2/reviews, authority: reviews.internal}\n    headers:\n      request:\n        set: {x-set: s}\n        add: {x-add: a}\n        remove: [x-drop]\n      response:\n        set: {x-resp: r}\n        remove: [x-backend]\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, headers, body, _) = get_full(addr, "/reviews/0?x=1", &[("x-drop", "1"), ("x-set", "client")]).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("reviews-v1"), "{body}");
    // Only the matched prefix is replaced; the query stays.
    assert_eq!(seen_header(&body, "path"), Some("/v2/reviews/0?x=1"), "{body}");
    assert_eq!(seen_header(&body, "host"), Some("reviews.internal"), "{body}");
    assert_eq!(seen_header(&body, "x-set"), Some("s"), "set replaces the client's value: {body}");
    assert_eq!(seen_header(&body, "x-add"), Some("a"), "{body}");
    assert_eq!(seen_header(&body, "x-drop"), None, "{body}");
    assert_eq!(headers.get("x-resp").map(|v| v.as_bytes()), Some(&b"r"[..]), "{headers:?}");
    assert!(headers.get("x-backend").is_none(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_is_answered_by_the_proxy() {
    let (registry, reviews, client, h1, h2) = setup(0).await;
    let yaml = vs_rule(
        "  - match:\n    - uri: {prefix: /reviews}\n    redirect: {uri: /new, authority: newhost, redirectCode: 302}\n",
    );
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, headers, body, _) = get_full(addr, "/reviews/0", &[]).await;
    assert_eq!(s, 302, "{body}");
    assert_eq!(headers.get("location").map(|v| v.as_bytes()), Some(&b"http://newhost/new"[..]), "{headers:?}");
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 0, "a redirect reaches no backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_shadow_copy_to_the_mirror_subset() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let v2 = registry
        .workloads
        .iter()
        .find(|w| w.labels.get("version").map(String::as_str) == Some("v2"))
        .map(|w| SocketAddr::from((w.ip.expect("ip"), w.container_ports[0].port)))
        .expect("v2 pod");
    let yaml = vs_rule("  - route:\n    - destination: {host: reviews, subset: v1}\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 100}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, _) = get(addr, &[("end-user", "jason")]).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("reviews-v1"), "the client gets the primary's answer: {body}");
    let mirror = hold(v2);
    let got = tokio::time::timeout(Duration::from_secs(10), mirror.received.acquire()).await;
    got.expect("mirror copy did not arrive").expect("semaphore").forget();
    let seen = hold(v2).seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let copy = format!("-\n{}", seen[0]);
    assert_eq!(seen_header(&copy, "path"), Some("/reviews/0"), "{copy}");
    assert_eq!(seen_header(&copy, "host"), Some("reviews-shadow:9080"), "{copy}");
    assert_eq!(seen_header(&copy, "end-user"), Some("jason"), "{copy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_is_generated_when_absent_and_kept_when_present() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, body, _) = get(addr, &[]).await;
        assert_eq!(s, 200, "{body}");
        let id = seen_header(&body, "x-request-id").unwrap_or_else(|| panic!("no x-request-id: {body}")).to_owned();
        // A UUID: 8-4-4-4-12 hex digits.
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12], "{id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "every request gets its own id");
    let (_, body, _) = get(addr, &[("x-request-id", "abc-123")]).await;
    assert_eq!(seen_header(&body, "x-request-id"), Some("abc-123"), "{body}");
}

/// Writes `request` on a fresh connection to `addr` and reads until the server closes or
/// `until` appears in the reply; returns what was read.
async fn raw(addr: SocketAddr, request: &[u8], until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&got).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn request_with_headers(extra: &[(String, String)]) -> Vec<u8> {
    let mut r = String::from("GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\n");
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_request_headers_get_431_and_never_reach_the_backend() {
    let (registry, reviews, client, h1, h2) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    // 61 KiB of headers (Envoy's limit is 60 KiB).
    let big = request_with_headers(&[("x-big".into(), "a".repeat(61 * 1024))]);
    let reply = raw(addr, &big, "\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    // 101 headers with host (Envoy's limit is 100).
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let reply = raw(addr, &request_with_headers(&many), "\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 0, "no request may reach the backend");
    // Just under both limits passes.
    let fine: Vec<(String, String)> =
        (0..98).map(|i| (format!("x-h{i}"), "v".repeat(500))).chain([("connection".into(), "close".into())]).collect();
    let reply = raw(addr, &request_with_headers(&fine), "reviews-v1").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.200}");
}

#[tokio::test(start_paused = true)]
async fn stalled_request_head_is_closed_after_the_header_timeout_but_idle_keep_alive_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;

    // Slowloris: half a request head, then silence.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /reviews/0 HTTP/1.1\r\nhost: rev").await.expect("write");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
    let took = started.elapsed();
    assert!((Duration::from_secs(30)..Duration::from_secs(31)).contains(&took), "closed after {took:?}");
    assert_eq!(state.metrics.get("mesh_downstream_timeouts_total", &[("reason", "request_headers_timeout")]), 1);

    // A keep-alive connection idle for longer than the header timeout is still served.
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = ::http::Request::builder().uri("/reviews/0").header("host", "reviews:9080");
        let resp = sender.send_request(req.body(Empty::<Bytes>::new()).expect("request")).await.expect("response");
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    // ... until the idle timeout (1 h) closes it.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(sender.ready().await.is_err() || sender.is_closed(), "idle connection must be closed after 1 h");
    assert_eq!(state.metrics.get("mesh_downstream_timeouts_total", &[("reason", "idle_timeout")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_head_size_and_count_limits_refuse_with_431_what_the_defaults_accept() {
    let (registry, reviews, client, h1, h2) = setup(0).await;
    let lowered = Limits { max_request_headers_bytes: 16 * 1024, max_request_headers_count: 20, ..Limits::default() };
    let state =
        ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst), lowered);
    let addr = front(state.clone(), reviews.clone(), client.clone()).await;
    let defaults = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    let default_addr = front(defaults, reviews, client).await;
    let close = ("connection".to_string(), "close".to_string());
    // 17 KiB of headers: over 16 KiB, well under Envoy's 60 KiB default.
    let big = request_with_headers(&[("x-big".into(), "a".repeat(17 * 1024)), close.clone()]);
    let reply = raw(addr, &big, "\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    // 21 headers with host: over 20, under the default 100.
    let many: Vec<(String, String)> = (0..19).map(|i| (format!("x-h{i}"), "v".into())).chain([close.clone()]).collect();
    let reply = raw(addr, &request_with_headers(&many), "\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 0, "no refused request may reach the backend");
    // The same two requests pass the default limits...
    for request in [big, request_with_headers(&many)] {
        let reply = raw(default_addr, &request, "reviews-v1").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.200}");
    }
    // ... and just under the lowered ones passes them: 15 KiB in 20 headers.
    let fine: Vec<(String, String)> = (0..18).map(|i| (format!("x-h{i}"), "v".repeat(800))).chain([close]).collect();
    let reply = raw(addr, &request_with_headers(&fine), "reviews-v1").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.200}");
}

#[tokio::test(start_paused = true)]
async fn a_lowered_idle_timeout_closes_an_idle_keep_alive_connection_then() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let limits = Limits { idle_timeout: Duration::from_secs(90), ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst), limits);
    let addr = front(state.clone(), reviews, client).await;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    // The client side of the connection ends when the proxy closes it.
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let req = ::http::Request::builder().uri("/reviews/0").header("host", "reviews:9080");
    let resp = sender.send_request(req.body(Empty::<Bytes>::new()).expect("request")).await.expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let idle_from = Instant::now();
    let at = closed.await.expect("client connection task");
    let idle = at - idle_from;
    assert!((Duration::from_secs(90)..Duration::from_secs(91)).contains(&idle), "closed after {idle:?} idle");
    assert_eq!(state.metrics.get("mesh_downstream_timeouts_total", &[("reason", "idle_timeout")]), 1);
}

// Real time, not tokio's paused clock: with real sockets the paused clock can jump to the next
// timer while a wake-up for arriving bytes is pending, which would fire the header timeout
// under a head split across a pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_is_parked_and_serves_its_next_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (registry, reviews, client, h1, _) = setup(0).await;
    let limits = Limits { idle_timeout: PARK_IDLE_HTTP1_AFTER * 4, ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst), limits);
    let addr = front(state.clone(), reviews, client).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    async fn response(s: &mut tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("reviews-v1") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }
    let get = b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\n\r\n";
    for _ in 0..2 {
        s.write_all(get).await.expect("write");
        assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
        // Idle past the park delay: hyper's connection is given back; the socket stays open.
        tokio::time::sleep(PARK_IDLE_HTTP1_AFTER * 2).await;
    }
    // A head cut by a pause longer than the park delay is not parked on, and not lost.
    s.write_all(&get[..20]).await.expect("write");
    tokio::time::sleep(PARK_IDLE_HTTP1_AFTER * 2).await;
    s.write_all(&get[20..]).await.expect("write");
    assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
    // The idle timeout still runs while parked: closed 4 s after the last response.
    let idle_from = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).await.expect("read"), 0, "closed by the idle timeout");
    let idle = idle_from.elapsed();
    assert!((PARK_IDLE_HTTP1_AFTER * 3..PARK_IDLE_HTTP1_AFTER * 6).contains(&idle), "closed after {idle:?}");
    assert_eq!(state.metrics.get("mesh_downstream_timeouts_total", &[("reason", "idle_timeout")]), 1);
    // Two pipelined requests right after a park are both answered.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(get).await.expect("write");
    assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(PARK_IDLE_HTTP1_AFTER * 2).await;
    let last = b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nconnection: close\r\n\r\n";
    s.write_all(&[&get[..], &last[..]].concat()).await.expect("write");
    let mut both = Vec::new();
    s.read_to_end(&mut both).await.expect("read");
    let both = String::from_utf8_lossy(&both);
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    assert_eq!(h1.load(Ordering::SeqCst), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_bodies_are_the_clients_fault_and_never_eject_an_endpoint() {
    let (registry, reviews, client, h1, _) = setup(0).await;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2, maxEjectionPercent: 100}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let cases: [&[u8]; 3] = [
        // A chunk size that is not hex.
        b"POST /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
        // A chunk longer than announced.
        b"POST /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
        // Truncated: the client half-closes mid-chunk (raw() does not shut down, so close by dropping).
        b"POST /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc",
    ];
    for i in 0..9 {
        let req = cases[i % cases.len()];
        if i % cases.len() == 2 {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(req).await.expect("write");
            s.shutdown().await.expect("half-close");
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
        } else {
            let reply = raw(addr, req, "\r\n\r\n").await;
            assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 400"), "{reply}");
        }
    }
    // Wait for the proxy to have handled all nine (the truncated ones have no reply to wait for).
    for _ in 0..200 {
        if state.metrics.get("istio_requests_total", &[("reporter", "source"), ("response_code", "400")]) >= 9 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "source"), ("response_code", "400")]), 9);
    assert_eq!(h1.load(Ordering::SeqCst), 0, "the backend must never see a broken request");
    assert!(!state.lb.is_ejected(v1_addr(&registry)), "a client's broken bodies ejected a healthy endpoint");
    assert_eq!(get(addr, &[]).await.0, 200);
}

/// A raw HTTP/1.1 backend for keep-alive races: it answers `per_conn` requests on a connection
/// and then closes it on reading the next one without answering, and closes any connection idle
/// for `keep_alive` (gunicorn-style). Returns its address and the responses it sent.
async fn racing_backend(per_conn: usize, keep_alive: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                loop {
                    // Read one request head (the test sends no bodies).
                    while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match tokio::time::timeout(keep_alive, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return, // idle past keep-alive, or closed: close
                        }
                    }
                    let end = String::from_utf8_lossy(&buf).find("\r\n\r\n").map_or(0, |i| i + 4);
                    buf.drain(..end);
                    if served == per_conn {
                        return;
                    }
                    served += 1;
                    counter.fetch_add(1, Ordering::SeqCst);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, answered)
}

/// A proxy in front of one racing backend, with `attempts` retries configured on the route.
async fn racing_proxy(backend: SocketAddr, attempts: u32) -> SocketAddr {
    single_backend_proxy(backend, attempts, "", Limits::default()).await.0
}

/// A proxy for service `web` with one endpoint, `backend`: `attempts` retries on the route,
/// `extra` more YAML (a DestinationRule), `limits` for its clients.
async fn single_backend_proxy(
    backend: SocketAddr,
    attempts: u32,
    extra: &str,
    limits: Limits,
) -> (SocketAddr, Arc<ProxyState>) {
    let (svc, client, registry) =
        one_endpoint_service("web", [10, 96, 0, 60], (Some("http"), 80, AppProtocol::Http), backend);
    let vs = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  http:\n  - route:\n    - destination: {{host: web}}\n    retries: {{attempts: {attempts}}}\n{extra}");
    let state = ProxyState::with_limits(registry.clone(), table(&vs, &registry), Arc::new(NoOriginalDst), limits);
    (front_for(&state, client, svc, 80).await, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_under_a_request_is_retried_once_on_a_new_one() {
    // Every connection answers one request and closes on the second without a reply: the
    // second request through the proxy rides the pooled connection and loses it.
    let (backend, answered) = racing_backend(1, Duration::from_secs(60)).await;
    let addr = racing_proxy(backend, 0).await;
    for i in 0..5 {
        let (s, body, _) = get(addr, &[]).await;
        assert_eq!((s, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_at_the_servers_keep_alive_boundary_never_fail() {
    // gunicorn's 2 s keep-alive, requests 1.9–2.1 s apart: the wall clock is the subject here.
    let (backend, _) = racing_backend(usize::MAX, Duration::from_secs(2)).await;
    let addr = racing_proxy(backend, 0).await;
    let mut failures = Vec::new();
    for gap_ms in [0u64, 1900, 1950, 2000, 2050, 2100, 1990] {
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let (s, body, _) = get(addr, &[]).await;
        if s != 200 {
            failures.push((gap_ms, s, body));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_host_rules_and_connection_options_are_applied_before_routing() {
    let (registry, reviews, client, h1, h2) = setup(0).await;
    // jason → v2 and a fixed x-request-id → v2; everything else → v1.
    let yaml = format!(
        "{DR}---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    - headers: {{x-request-id: {{exact: fixed-id}}}}\n    route:\n    - destination: {{host: reviews, subset: v2}}\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n"
    );
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let two_hosts = b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nhost: evil:80\r\n\r\n";
    assert!(raw(addr, two_hosts, "\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    let no_host = b"GET /reviews/0 HTTP/1.1\r\nend-user: jason\r\n\r\n";
    assert!(raw(addr, no_host, "\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 0, "refused requests reach no backend");
    // A header named in Connection is gone before routing: end-user no longer selects v2.
    let (s, body, _) = get(addr, &[("end-user", "jason"), ("connection", "end-user")]).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("reviews-v1 end-user=-"), "{body}");
    // ... but Host and x-request-id cannot be dropped that way.
    let (s, body, _) = get(addr, &[("x-request-id", "fixed-id"), ("connection", "host, x-request-id")]).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("reviews-v2"), "{body}");
}

/// Every connection was redirected to reviews:9080.
struct ToReviews;
impl OriginalDst for ToReviews {
    fn take(&self, _: u64, _: SocketAddrV4) -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 12), 9080))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_caps_is_refused_while_another_is_served() {
    let (registry, _, _, _, _) = setup(0).await;
    let limits = Limits { per_source_max_connections: 2, per_source_max_requests: 1, ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(ToReviews), limits);
    let mut addrs = Vec::new();
    for name in ["noisy", "quiet"] {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(l.local_addr().expect("addr"));
        let w = Arc::new(ArcSwap::from(workload(name, &[("app", name)], 80)));
        tokio::spawn(serve_pod_listener(state.clone(), w, l, 0));
    }
    let (noisy, quiet) = (addrs[0], addrs[1]);
    // noisy holds its two allowed connections open; a third is closed before any response.
    let held: Vec<_> = [
        tokio::net::TcpStream::connect(noisy).await.expect("c1"),
        tokio::net::TcpStream::connect(noisy).await.expect("c2"),
    ]
    .into();
    let reply = raw(noisy, b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n", "\r\n\r\n").await;
    assert!(reply.is_empty(), "a connection over the cap must be closed: {reply}");
    // quiet is served meanwhile.
    assert_eq!(get(quiet, &[]).await.0, 200);
    drop(held);
    assert!(
        state.metrics.get("mesh_downstream_overflow_total", &[("source_workload", "noisy"), ("limit", "connections")])
            >= 1
    );
    assert_eq!(state.metrics.get("mesh_downstream_overflow_total", &[("source_workload", "quiet")]), 0);

    // The request cap, on its own (a connection cap that cannot interfere): two requests held at
    // the backend at once from one source, the second is over the cap.
    let limits = Limits { per_source_max_connections: 16, per_source_max_requests: 1, ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(ToReviews), limits);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let noisy = l.local_addr().expect("addr");
    let w = Arc::new(ArcSwap::from(workload("noisy", &[("app", "noisy")], 80)));
    tokio::spawn(serve_pod_listener(state.clone(), w, l, 0));
    let calls: Vec<_> = (0..2).map(|_| tokio::spawn(get(noisy, &[("x-hold", "1")]))).collect();
    let overflowed =
        || state.metrics.get("mesh_downstream_overflow_total", &[("source_workload", "noisy"), ("limit", "requests")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while overflowed() == 0 {
        assert!(Instant::now() < deadline, "the second request was never refused");
        tokio::task::yield_now().await;
    }
    release_all(&registry);
    let mut codes = Vec::new();
    for c in calls {
        codes.push(c.await.expect("call").0);
    }
    codes.sort();
    assert_eq!(codes, vec![200, 503]);
    assert_eq!(overflowed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_its_sources_cap_is_an_istio_503_uo_to_an_unknown_destination() {
    let (registry, _, _, _, _) = setup(0).await;
    let limits = Limits { per_source_max_requests: 1, ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(ToReviews), limits);
    state.access_log.set_mode(access_log::AccessLogMode::Text);
    let mut lines = access_log_lines(&state);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let noisy = l.local_addr().expect("addr");
    let w = Arc::new(ArcSwap::from(workload("noisy", &[("app", "noisy"), ("version", "v7")], 80)));
    tokio::spawn(serve_pod_listener(state.clone(), w, l, 0));
    // The first request holds the source's one slot at the backend; the second is refused.
    let held = tokio::spawn(get(noisy, &[("x-hold", "1"), ("x-request-id", "held")]));
    arrived(v1_addr(&registry), 1).await;
    let (status, headers, _, _) = get_full(noisy, "/reviews/0", &[("x-request-id", "over")]).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("x-envoy-overloaded"), "{headers:?}");
    let refused = [
        ("source_workload", "noisy"),
        ("source_version", "v7"),
        ("response_code", "503"),
        ("destination_service", "unknown"),
        ("destination_service_name", "unknown"),
        ("destination_workload", "unknown"),
    ];
    assert_eq!(recorded_flags(&state, &refused).await, "UO");
    let source: Vec<_> = refused.iter().copied().chain([("reporter", "source")]).collect();
    assert_eq!(state.metrics.get("istio_request_duration_milliseconds_count", &source), 1);
    assert_eq!(state.metrics.get("istio_request_bytes_count", &source), 1);
    assert!(state.metrics.get("istio_response_bytes_sum", &source) > 0, "the 503's head and body");
    // No server saw it.
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "destination")]), 0);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"GET /reviews/0 HTTP/1.1\" 503 UO 0 "), "{line}");
    assert!(line.contains("\"over\"") && line.ends_with("\"-\""), "no upstream host: {line}");
    release_all(&registry);
    assert_eq!(held.await.expect("held").0, 200);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"held\"") && line.contains(" 200 - "), "{line}");
}

/// Opens `n` connections to `addr` and has each served one request (200); returns them, still
/// open (keep-alive).
async fn served_connections(addr: SocketAddr, n: usize) -> Vec<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let mut open = Vec::new();
    for i in 0..n {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        let req = ::http::Request::builder().uri("/reviews/0").header("host", "reviews:9080");
        let resp = sender.send_request(req.body(Empty::new()).expect("request")).await;
        let resp = resp.unwrap_or_else(|e| panic!("connection {} of {n} to {addr} was not served: {e}", i + 1));
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
        open.push(sender);
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_cap_annotation_caps_that_pod_only() {
    use crate::registry::PodCaps;
    let (registry, _, _, _, _) = setup(0).await;
    let limits = Limits { per_source_max_connections: 3, ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(ToReviews), limits);
    let pod = |name: &str, max_connections: Option<u32>| {
        let mut w = (*workload(name, &[("app", name)], 80)).clone();
        w.caps = PodCaps { max_connections, ..PodCaps::default() };
        Arc::new(w)
    };
    // x is annotated down to 2 connections, z up to 5; y has no annotation (the node's 3).
    let mut pods = Vec::new();
    for (name, cap) in [("x", Some(2)), ("y", None), ("z", Some(5))] {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let w = Arc::new(ArcSwap::from(pod(name, cap)));
        pods.push((l.local_addr().expect("addr"), w.clone()));
        tokio::spawn(serve_pod_listener(state.clone(), w, l, 0));
    }
    let refused =
        |addr| async move { raw(addr, b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n", "\r\n\r\n").await.is_empty() };
    let mut held = Vec::new();
    for ((addr, _), n) in pods.iter().zip([2, 3, 5]) {
        held.push(served_connections(*addr, n).await);
        assert!(refused(*addr).await, "connection {} to {addr} must be refused", n + 1);
    }
    for name in ["x", "y", "z"] {
        let overflowed =
            state.metrics.get("mesh_downstream_overflow_total", &[("source_workload", name), ("limit", "connections")]);
        assert_eq!(overflowed, 1, "{name}");
    }
    // x's annotation edited to 3: its next connection is served, the one after is not.
    let (x, swap) = &pods[0];
    swap.store(pod("x", Some(3)));
    held.push(served_connections(*x, 1).await);
    assert!(refused(*x).await);
    drop(held);
}

/// A backend that reads each request's whole body before answering, and reports what became of
/// each body: its length, or the error that cut it.
async fn reading_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Result<usize, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: ::http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let got =
                            req.into_body().collect().await.map(|b| b.to_bytes().len()).map_err(|e| e.to_string());
                        let _ = tx.send(got);
                        Ok::<_, std::convert::Infallible>(::http::Response::new(crate::proxy::http::full("read\n")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, rx)
}

/// Sends `head` and `body` on a fresh connection, then nothing; returns everything read until the
/// proxy closes the connection and how long after the last byte was sent that was.
async fn stall(addr: SocketAddr, head: &str, body: &[u8]) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let stalled = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    (String::from_utf8_lossy(&got).into_owned(), stalled.elapsed())
}

const OUTLIER_ONE_5XX: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\nspec:\n  host: web\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 1, maxEjectionPercent: 100}\n";

// Paused clock: the only timer that can end these requests is the body idle timeout, so the
// time they take is exactly it.
#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_gets_408_before_a_response_and_a_reset_after() {
    let timeout = Duration::from_secs(10);
    let limits = Limits { request_body_idle_timeout: timeout, ..Limits::default() };
    let (backend, mut bodies) = reading_backend().await;
    let (addr, state) = single_backend_proxy(backend, 2, OUTLIER_ONE_5XX, limits.clone()).await;
    let in_window = |took: Duration| (timeout..timeout + Duration::from_secs(1)).contains(&took);

    // 1. A small body, read ahead for retries: stalls before anything went upstream.
    let head = "POST /small HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\n";
    let (reply, took) = stall(addr, head, b"0123456789").await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.to_ascii_lowercase().contains("connection: close"), "{reply}");
    assert!(in_window(took), "answered after {took:?}");
    assert!(bodies.try_recv().is_err(), "the backend never saw the stalled request");

    // 2. A body over the read-ahead buffer streams: 100 KiB of 2 MiB reach the backend, then the
    // client stalls. No response yet, so 408 to the client; the upstream request is reset.
    let head = "POST /big HTTP/1.1\r\nhost: web\r\ncontent-length: 2097152\r\n\r\n";
    let (reply, took) = stall(addr, head, &vec![b'a'; 100 * 1024]).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:.300}");
    assert!(in_window(took), "answered after {took:?}");
    let upstream = tokio::time::timeout(Duration::from_secs(5), bodies.recv()).await.expect("backend saw it");
    assert!(upstream.expect("a body outcome").is_err(), "the upstream request must be cut, not completed");
    assert!(!state.lb.is_ejected(backend), "a client's stall must not eject the endpoint");

    // 3. An endpoint that answers before the body ends: the response reaches the client whole,
    // then the stall resets the stream: both connections are closed.
    let early = early_backend().await;
    let (addr, state3) = single_backend_proxy(early, 0, OUTLIER_ONE_5XX, limits).await;
    let head = "POST /early HTTP/1.1\r\nhost: web\r\ncontent-length: 2097152\r\n\r\n";
    let (reply, took) = stall(addr, head, &vec![b'a'; 100 * 1024]).await;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("early"), "{reply:.300}");
    assert!(in_window(took), "closed after {took:?}");

    let timeouts =
        |s: &ProxyState| s.metrics.get("mesh_downstream_timeouts_total", &[("reason", "request_body_timeout")]);
    assert_eq!(timeouts(&state), 2);
    assert_eq!(timeouts(&state3), 1);
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "source"), ("response_code", "408")]), 2);
}

/// A raw backend that answers `early` as soon as it has a request head, then keeps reading the
/// request body (and discarding it) until the connection closes: a server that responds
/// before the upload ends and does not close on the client.
async fn early_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nearly\n").await.is_err() {
                    return;
                }
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_buffered_body_cap_streams_without_retries() {
    // reviews-v1 fails its first two requests; the route retries 5xx twice.
    let (registry, _, _, h1, _) = setup(2).await;
    let yaml = format!(
        "{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n    retries: {{attempts: 2, retryOn: 5xx}}\n"
    );
    let limits = Limits { per_source_max_buffered_body: 1000, ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&yaml, &registry), Arc::new(ToReviews), limits);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pod = l.local_addr().expect("addr");
    let w = Arc::new(ArcSwap::from(workload("uploader", &[("app", "uploader")], 80)));
    tokio::spawn(serve_pod_listener(state.clone(), w, l, 0));

    // One upload of 900 bytes is read ahead (and held: the client sends 10 bytes of it) ...
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(pod).await.expect("connect");
    slow.write_all(b"POST /reviews/0 HTTP/1.1\r\nhost: reviews\r\ncontent-length: 900\r\n\r\n0123456789")
        .await
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.source_gauges().contains("mesh_downstream_buffered_body_bytes{source_workload=\"uploader\"} 900") {
        assert!(Instant::now() < deadline, "the first upload was never read ahead:\n{}", state.source_gauges());
        tokio::task::yield_now().await;
    }
    // ... so a 200-byte one from the same pod is over its 1000-byte cap: streamed once, and the
    // backend's 503 comes back unretried.
    let body = "b".repeat(200);
    let req =
        format!("POST /reviews/0 HTTP/1.1\r\nhost: reviews\r\ncontent-length: 200\r\nconnection: close\r\n\r\n{body}");
    let reply = raw(pod, req.as_bytes(), "\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert_eq!(h1.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(
        state
            .metrics
            .get("mesh_downstream_overflow_total", &[("source_workload", "uploader"), ("limit", "buffered_body")]),
        1
    );
    // The held upload completes within the cap: its 503 is retried, and it succeeds.
    slow.write_all(&[b'c'; 890]).await.expect("write rest");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("reviews-v1") {
        let n = slow.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    assert_eq!(h1.load(Ordering::SeqCst), 3, "503 then a retried 200");
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.source_gauges().contains("mesh_downstream_buffered_body_bytes{source_workload=\"uploader\"} 0") {
        assert!(Instant::now() < deadline, "the budget was not given back:\n{}", state.source_gauges());
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overload_manager_resets_the_heaviest_sources_oldest_requests_and_refuses_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (registry, _, _, _, _) = setup(0).await;
    // high watermark 9 MiB, low 7.5 MiB.
    let limits = Limits { memory_budget: 10 << 20, ..Limits::default() };
    let state = ProxyState::with_limits(registry.clone(), table(&vs("v1"), &registry), Arc::new(ToReviews), limits);
    let mut addrs = Vec::new();
    for name in ["noisy", "quiet"] {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(l.local_addr().expect("addr"));
        let w = Arc::new(ArcSwap::from(workload(name, &[("app", name)], 80)));
        tokio::spawn(serve_pod_listener(state.clone(), w, l, 0));
    }
    let (noisy, quiet) = (addrs[0], addrs[1]);
    // quiet holds a keep-alive connection; noisy starts four uploads of 1,000,000 bytes, one
    // after the other, and stalls each after 10 bytes: each holds its read-ahead reservation.
    assert_eq!(get(quiet, &[]).await.0, 200);
    let mut uploads = Vec::new();
    for i in 1..=4u64 {
        let mut s = tokio::net::TcpStream::connect(noisy).await.expect("connect");
        s.write_all(b"POST /reviews/0 HTTP/1.1\r\nhost: reviews\r\ncontent-length: 1000000\r\n\r\n0123456789")
            .await
            .expect("write");
        let want = format!("mesh_downstream_buffered_body_bytes{{source_workload=\"noisy\"}} {}", i * 1_000_000);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !state.source_gauges().contains(&want) {
            assert!(Instant::now() < deadline, "upload {i} was never read ahead:\n{}", state.source_gauges());
            tokio::task::yield_now().await;
        }
        uploads.push(s);
    }
    // noisy also holds an idle connection, kept alive after a request.
    let mut idle_kept = tokio::net::TcpStream::connect(noisy).await.expect("connect");
    idle_kept.write_all(b"GET /reviews/0 HTTP/1.1\r\nhost: reviews\r\n\r\n").await.expect("write");
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 4096];
        let n = idle_kept.read(&mut buf).await.expect("read");
        assert!(n > 0, "the keep-alive request was not answered");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    // And an HTTP/2 connection after one request,
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(tokio::net::TcpStream::connect(noisy).await.expect("connect")),
    )
    .await
    .expect("h2 handshake");
    let h2_conn = tokio::spawn(h2_conn);
    let req = ::http::Request::builder().uri("http://reviews/reviews/0").body(Empty::<Bytes>::new()).expect("req");
    assert_eq!(h2.send_request(req).await.expect("h2 response").status(), 200);
    // and a connection it opened and never used.
    let mut never_used = tokio::net::TcpStream::connect(noisy).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.source_gauges().contains("mesh_downstream_connections{source_workload=\"noisy\"} 7") {
        assert!(Instant::now() < deadline, "never-used connection not accepted:\n{}", state.source_gauges());
        tokio::task::yield_now().await;
    }
    // Under the high watermark nothing happens.
    let plan = overload::look(&state, 9 << 20);
    assert!(!plan.overloaded);
    // 9.5 MiB: 2 MiB over the low watermark. noisy holds ~4 MB, quiet 20 KiB; the ~5.6 MiB
    // nobody holds leave ~0.95 MiB a source: noisy gives back 2 MiB, its three oldest uploads
    // (each 1,000,000 bytes + 16 KiB).
    let plan = overload::look(&state, (19 << 20) / 2);
    assert!(plan.overloaded);
    let reset =
        state.metrics.get("mesh_overload_shed_total", &[("source_workload", "noisy"), ("action", "request_reset")]);
    assert_eq!(reset, 3, "{plan:?}");
    for (i, s) in uploads.iter_mut().enumerate() {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_millis(if i < 3 { 10_000 } else { 300 }), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let reply = String::from_utf8_lossy(&got).to_ascii_lowercase();
        if i < 3 {
            assert!(read.is_ok(), "upload {i}: the connection must be closed after the 503");
            assert!(reply.starts_with("http/1.1 503"), "upload {i}: {reply}");
            assert!(reply.contains("x-envoy-overloaded: true") && reply.contains("connection: close"), "{reply}");
        } else {
            assert!(read.is_err() && got.is_empty(), "the newest upload is not reset: {reply}");
        }
    }
    // Its idle keep-alive connection is closed once it is parked (a second after its request;
    // the idle timeout is an hour).
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while matches!(idle_kept.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "noisy's idle keep-alive connection must be closed while it is shed");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 16];
        while matches!(never_used.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "noisy's never-used connection must be closed while it is shed");
    // Its HTTP/2 connection is told GOAWAY, and ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), h2_conn).await;
    assert!(ended.is_ok(), "noisy's HTTP/2 connection must get GOAWAY while it is shed");
    assert_eq!(state.metrics.get("mesh_overload_shed_total", &[("source_workload", "noisy"), ("action", "goaway")]), 1);
    let idle_closed =
        state.metrics.get("mesh_overload_shed_total", &[("source_workload", "noisy"), ("action", "idle_closed")]);
    assert_eq!(idle_closed, 2);
    // While overloaded noisy's new connections are closed at once; quiet is served.
    let reply = raw(noisy, b"GET /reviews/0 HTTP/1.1\r\nhost: reviews\r\n\r\n", "\r\n\r\n").await;
    assert!(reply.is_empty(), "a shed source's new connection must be closed: {reply}");
    assert_eq!(get(quiet, &[]).await.0, 200);
    let refused = state
        .metrics
        .get("mesh_overload_shed_total", &[("source_workload", "noisy"), ("action", "connection_refused")]);
    assert_eq!(refused, 1);
    assert_eq!(state.metrics.get("mesh_overload_shed_total", &[("source_workload", "quiet")]), 0);
    let om = state.metrics.get("istio_requests_total", &[("source_workload", "noisy"), ("response_flags", "OM")]);
    assert_eq!(om, 3, "the resets are in Istio's metrics with Envoy's OM flag");
    // Under the low watermark the overload is over and noisy is served again.
    assert!(!overload::look(&state, 7 << 20).overloaded);
    let reply = raw(noisy, b"GET /reviews/0 HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n", "\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(state.source_gauges().contains("mesh_overload_active 0"));
}

// ---- Istio standard metrics: response flags and reporters ----

/// The `response_flags` of the one `reporter="source"` request series matching `labels`, once the
/// proxy has recorded it (a request is recorded when its response body is done, which may be a
/// moment after the client read it).
async fn recorded_flags(state: &ProxyState, labels: &[(&str, &str)]) -> String {
    let mut want: Vec<(&str, &str)> = vec![("reporter", "source")];
    want.extend_from_slice(labels);
    for _ in 0..2000 {
        if state.metrics.get("istio_requests_total", &want) >= 1 {
            let text = state.metrics.render(&[], "");
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .filter(|l| want.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
                .collect();
            assert_eq!(lines.len(), 1, "one series expected:\n{text}");
            let flags = lines[0].split("response_flags=\"").nth(1).and_then(|r| r.split('"').next());
            return flags.expect("response_flags label").to_owned();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no request recorded with {want:?}:\n{}", state.metrics.render(&[], ""));
}

/// Sends one anonymous request through a proxy configured with `yaml` over `registry` and
/// returns its status and the response flags it was recorded with.
async fn one_request_flags(
    registry: Registry,
    reviews: Arc<Service>,
    client: Arc<Workload>,
    yaml: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Arc<ProxyState>) {
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let (s, body, _) = get(addr, headers).await;
    let code = s.to_string();
    let flags = recorded_flags(&state, &[("response_code", &code)]).await;
    assert!(!body.is_empty() || s == 200, "{body}");
    (s, flags, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_carry_both_reporters_and_istio_labels() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let (s, flags, state) = one_request_flags(registry, reviews, client, &vs("v2"), &[]).await;
    assert_eq!((s, flags.as_str()), (200, "-"));
    let want = [
        ("source_workload", "productpage-v1"),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("destination_workload", "reviews-v2"),
        ("destination_version", "v2"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("request_protocol", "http"),
        ("response_code", "200"),
    ];
    let source: Vec<_> =
        want.iter().copied().chain([("reporter", "source"), ("connection_security_policy", "unknown")]).collect();
    let dest: Vec<_> =
        want.iter().copied().chain([("reporter", "destination"), ("connection_security_policy", "none")]).collect();
    // The destination series is recorded with the source one (same drop).
    assert_eq!(state.metrics.get("istio_requests_total", &source), 1);
    assert_eq!(state.metrics.get("istio_requests_total", &dest), 1);
    assert_eq!(state.metrics.get("istio_request_duration_milliseconds_count", &source), 1);
    assert!(state.metrics.get("istio_response_bytes_sum", &source) > 20, "head and body counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_nr() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - match:\n    - headers:\n        end-user: {exact: jason}\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, state) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (404, "NR"));
    // The proxy answered: no server-side series.
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "destination")]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_subset_is_uh() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = format!("{}  - {{name: v3, labels: {{version: v3}}}}\n", DR) + &vs("v3")[DR.len()..];
    let (s, flags, _) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (503, "UH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_is_fi_and_fault_delay_is_di() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - fault:\n      abort:\n        percentage: {value: 100.0}\n        httpStatus: 500\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, _) = one_request_flags(registry.clone(), reviews.clone(), client.clone(), &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (500, "FI"));
    let yaml = vs_rule("  - fault:\n      delay:\n        percentage: {value: 100.0}\n        fixedDelay: 1ms\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, _) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (200, "DI"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_on_5xx_is_urx() {
    // v1 answers every request with 503.
    let (registry, reviews, client, h1, _) = setup(usize::MAX).await;
    let yaml = vs_rule(
        "  - retries: {attempts: 2, retryOn: 5xx}\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    let (s, flags, state) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (503, "URX"));
    assert_eq!(h1.load(Ordering::SeqCst), 3);
    // The endpoint's own answer: the server side reports its 503 without the client's flags.
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "destination"), ("response_flags", "-")]), 1);
}

#[tokio::test(start_paused = true)]
async fn route_timeout_is_ut() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - timeout: 100ms\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, _) = one_request_flags(registry, reviews, client, &yaml, &[("x-hold", "1")]).await;
    assert_eq!((s, flags.as_str()), (504, "UT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_uf_and_closed_connection_is_uc() {
    // v1's address with nothing listening: connect refused.
    let (mut registry, reviews, client, _, _) = setup(0).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    registry.workloads[0] = workload("reviews-v1", &[("app", "reviews"), ("version", "v1")], dead);
    let (s, flags, _) = one_request_flags(registry, reviews, client, &vs("v1"), &[]).await;
    // Istio's default retry policy retries connect failures (2 attempts): both refused, so
    // Envoy's "UF,URX", as an Istio access log shows it.
    assert_eq!((s, flags.as_str()), (503, "UF,URX"));

    // v1 accepts and closes every connection without answering.
    let (mut registry, reviews, client, _, _) = setup(0).await;
    let closer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closer.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = closer.accept().await {
            drop(s);
        }
    });
    registry.workloads[0] = workload("reviews-v1", &[("app", "reviews"), ("version", "v1")], port);
    let (s, flags, _) = one_request_flags(registry, reviews, client, &vs("v1"), &[]).await;
    assert_eq!((s, flags.as_str()), (503, "UC"));
}

// Paused clock: the client waits 100 ms of a 5 s injected delay before leaving; nothing else
// runs, so the proxy is in the delay when the client closes.
#[tokio::test(start_paused = true)]
async fn a_client_leaving_during_an_injected_delay_is_dc_with_code_0() {
    use tokio::io::AsyncWriteExt as _;
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - fault:\n      delay:\n        percentage: {value: 100.0}\n        fixedDelay: 5s\n    route:\n    - destination: {host: reviews, subset: v2}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nend-user: jason\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state.metrics.get("istio_requests_total", &[]), 0, "nothing recorded while in flight");
    drop(c);
    let flags = recorded_flags(&state, &[("response_code", "0"), ("destination_service_name", "reviews")]).await;
    assert_eq!(flags, "DI,DC");
    assert_eq!(state.metrics.get("istio_requests_total", &[]), 1, "one series, the client's side only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_off_records_no_istio_series_and_can_be_turned_back_on() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    state.request_metrics.store(false, Ordering::Relaxed);
    let addr = front(state.clone(), reviews, client).await;
    assert_eq!(get(addr, &[]).await.0, 200);
    // A request is recorded before its last byte is written: had it been, it would show now.
    assert_eq!(state.metrics.get("istio_requests_total", &[]), 0);
    state.request_metrics.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, &[]).await.0, 200);
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "source")]), 1);
}

/// The proxy's access log lines, read from the writer's other end.
fn access_log_lines(state: &ProxyState) -> tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>> {
    let (w, r) = tokio::io::duplex(64 * 1024);
    state.access_log.spawn_writer(w);
    tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(r))
}

async fn next_line(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>) -> String {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    line.expect("no access log line").expect("read").expect("log ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_a_text_line_per_request_and_json_when_switched() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v2"), &registry), Arc::new(NoOriginalDst));
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client).await;
    // Off by default: this request writes nothing (the next line read is the next request's).
    assert_eq!(get(addr, &[("x-request-id", "r-0")]).await.0, 200);

    state.access_log.set_mode(access_log::AccessLogMode::Text);
    let (s, body, _) = get(addr, &[("x-request-id", "r-1"), ("user-agent", "curl/8")]).await;
    assert_eq!(s, 200);
    let line = next_line(&mut lines).await;
    // [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS RECEIVED SENT DURATION UPSTREAM_TIME
    // "XFF" "UA" "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST"
    let re = regex::Regex::new(
        r#"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /reviews/0 HTTP/1\.1" 200 - 0 (\d+) \d+ \d+ "-" "curl/8" "r-1" "reviews:9080" "127\.0\.0\.1:\d+"$"#,
    )
    .expect("regex");
    let caps = re.captures(&line).unwrap_or_else(|| panic!("not Envoy's default format: {line}"));
    assert_eq!(caps[1].parse::<usize>().expect("bytes"), body.len(), "{line}");

    state.access_log.set_mode(access_log::AccessLogMode::Json);
    assert_eq!(get(addr, &[("x-request-id", "r-2")]).await.0, 200);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "r-2", "{line}");
    assert_eq!(v["response_code"], 200, "{line}");
    assert_eq!(v["response_flags"], "-", "{line}");
    assert_eq!(v["method"], "GET", "{line}");
    assert_eq!(v["upstream_cluster"], "outbound|9080|v2|reviews.default.svc.cluster.local", "{line}");
    assert_eq!(state.metrics.get("mesh_access_log_dropped_total", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_overrides_turn_the_access_log_on_or_off_per_source_pod() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v2"), &registry), Arc::new(NoOriginalDst));
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client.clone()).await;
    let set = |on: bool| {
        let mut m = access_log::WorkloadOverrides::new();
        m.entry(client.namespace.clone()).or_default().insert(client.name.clone(), on.into());
        state.access_log.set_overrides(Some(m));
    };
    // The flag is off; a Telemetry turns the log on for this pod: Envoy's text format.
    set(true);
    assert_eq!(get(addr, &[("x-request-id", "t-1")]).await.0, 200);
    let line = next_line(&mut lines).await;
    assert!(line.starts_with('[') && line.contains("\"t-1\""), "{line}");
    // The flag says JSON; a Telemetry turns it off for this pod: nothing, until it is gone.
    state.access_log.set_mode(access_log::AccessLogMode::Json);
    set(false);
    assert_eq!(get(addr, &[("x-request-id", "t-2")]).await.0, 200);
    state.access_log.set_overrides(None);
    assert_eq!(get(addr, &[("x-request-id", "t-3")]).await.0, 200);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "t-3", "t-2 must not be logged: {line}");
}

/// A Telemetry `filter` decides per request: a line only where the CEL expression is true over
/// Envoy's attributes (the response code, a request header); an attribute the proxy does not
/// have makes it false. Fails when the filter is ignored (every request would have a line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_filter_expressions_choose_the_requests_logged() {
    // reviews-v1 answers its first request with a 503.
    let (registry, reviews, client, _, _) = setup(1).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client.clone()).await;
    let set = |expr: Option<&str>| {
        let filter = expr.map(|e| Arc::new(access_log::LogFilter::compile(e).expect("parses")));
        let mut m = access_log::WorkloadOverrides::new();
        m.entry(client.namespace.clone()).or_default().insert(client.name.clone(), access_log::PodLog::On(filter));
        state.access_log.set_overrides(Some(m));
    };
    set(Some("response.code >= 400 || request.headers['x-log'] == 'yes'"));
    assert_eq!(get(addr, &[("x-request-id", "f-1")]).await.0, 503);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\" 503 ") && line.contains("\"f-1\""), "{line}");
    // A 200 without the header: no line.
    assert_eq!(get(addr, &[("x-request-id", "f-2")]).await.0, 200);
    assert_eq!(get(addr, &[("x-request-id", "f-3"), ("x-log", "yes")]).await.0, 200);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"f-3\""), "f-2 must not be logged: {line}");
    // Envoy's other attributes, as this request saw them.
    set(Some(
        "request.method == 'GET' && request.url_path == '/reviews/0' && request.host == 'reviews:9080' && \
         upstream.address.startsWith('127.0.0.1:') && xds.cluster_name.startsWith('outbound|9080|v1|reviews') && \
         response.flags == 0 && source.port > 0 && request.id == 'f-4' && request.headers['x-request-id'] == 'f-4' && \
         response.headers['content-length'] != ''",
    ));
    assert_eq!(get(addr, &[("x-request-id", "f-4")]).await.0, 200);
    assert!(next_line(&mut lines).await.contains("\"f-4\""));
    // No duration type here: an expression reading one errors, and errors are false (Envoy).
    set(Some("request.duration > duration('0s') || !(request.duration > duration('0s'))"));
    assert_eq!(get(addr, &[("x-request-id", "f-5")]).await.0, 200);
    set(None);
    assert_eq!(get(addr, &[("x-request-id", "f-6")]).await.0, 200);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"f-6\""), "f-5 must not be logged: {line}");
}

// Paused clock, as in the DC metrics test: the client leaves 100 ms into a 5 s delay.
#[tokio::test(start_paused = true)]
async fn access_log_records_an_abandoned_request_with_code_0_and_dc() {
    use tokio::io::AsyncWriteExt as _;
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - fault:\n      delay:\n        percentage: {value: 100.0}\n        fixedDelay: 5s\n    route:\n    - destination: {host: reviews, subset: v2}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    state.access_log.set_mode(access_log::AccessLogMode::Text);
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client).await;
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nx-request-id: gone\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"GET /reviews/0 HTTP/1.1\" 0 DI,DC 0 0 100 - "), "{line}");
    assert!(line.contains("\"gone\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_are_grpc_with_the_status_from_the_trailers() {
    let (addr, state) = greeter_proxy_state(AppProtocol::Http2, "{}").await;
    assert_eq!(call(addr, true).await.1.as_deref(), Some("0"));
    let flags = recorded_flags(&state, &[("request_protocol", "grpc"), ("grpc_response_status", "0")]).await;
    assert_eq!(flags, "-");
    assert_eq!(state.metrics.get("istio_requests_total", &[("request_protocol", "http")]), 0);
}

/// The drain counts a connection from the moment its listener accepts it, not from when its
/// task first runs: a drain that starts in between (a handover's, just after an accept) waits
/// for it rather than finding nothing in flight and letting the agent exit with it unanswered.
#[tokio::test(flavor = "current_thread")]
async fn drain_waits_for_a_connection_accepted_just_before_it() {
    let drain = Arc::new(crate::drain::Drain::default());
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d, s) = (drain.clone(), served.clone());
    let listener = tokio::spawn(async move {
        accept_until_drain(l, "test", &d, |stream, _, in_flight| {
            // The drain starts before the connection's task has run at all.
            d.start();
            let s = s.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                drop(stream);
                s.store(true, Ordering::SeqCst);
                drop(in_flight);
            });
        })
        .await
    });
    // The agent's side, a task like the connection's (the test's own future is polled after
    // the runtime's tasks, which would hide the order this is about).
    let agent = tokio::spawn({
        let drain = drain.clone();
        async move {
            drain.signaled().await;
            drain.wait_idle(Duration::from_secs(5)).await
        }
    });
    let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(agent.await.expect("agent task"), 0, "drained");
    assert!(served.load(Ordering::SeqCst), "the drain ended before the connection accepted before it");
    listener.await.expect("listener task");
}
