//! Backends, proxies, clients and configs shared by the proxy tests.
pub(super) use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

pub(super) use bytes::Bytes;
pub(super) use http_body_util::{BodyExt, Empty};
pub(super) use hyper_util::rt::{TokioExecutor, TokioIo};
pub(super) use tokio::{net::TcpListener, sync::Semaphore, time::Instant};

pub(super) use super::super::{http_conn::PARK_IDLE_HTTP1_AFTER, *};
pub(super) use crate::{
    config::Config,
    registry::{AppProtocol, ContainerPort, Service, ServicePort, TargetPort},
};

pub(super) struct NoOriginalDst;
impl OriginalDst for NoOriginalDst {
    fn take(&self, _: u64, _: SocketAddrV4) -> Option<SocketAddrV4> {
        None
    }
}

/// A backend answering every request with its name; counts requests, can fail the first `fail` ones.
pub(super) async fn backend(name: &'static str, fail: usize) -> (SocketAddr, Arc<AtomicUsize>) {
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
pub(super) struct Hold {
    pub(super) arrived: Semaphore,
    pub(super) release: Semaphore,
    /// Every request the backend received (see `backend`), and a permit per request.
    pub(super) seen: std::sync::Mutex<Vec<String>>,
    pub(super) received: Semaphore,
}

pub(super) fn holds() -> std::sync::MutexGuard<'static, std::collections::HashMap<SocketAddr, Arc<Hold>>> {
    static HOLDS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<Hold>>>> =
        std::sync::OnceLock::new();
    HOLDS.get_or_init(Default::default).lock().unwrap()
}

pub(super) fn new_hold() -> Arc<Hold> {
    Arc::new(Hold {
        arrived: Semaphore::new(0),
        release: Semaphore::new(0),
        seen: Default::default(),
        received: Semaphore::new(0),
    })
}

/// Replaces whatever gate an earlier backend on the same port left behind.
pub(super) fn fresh_hold(addr: SocketAddr) {
    holds().insert(addr, new_hold());
}

pub(super) fn hold(addr: SocketAddr) -> Arc<Hold> {
    holds().entry(addr).or_insert_with(new_hold).clone()
}

/// Waits until `n` held requests have reached the backend at `addr` (bounded, so a bug fails the
/// test instead of hanging it).
pub(super) async fn arrived(addr: SocketAddr, n: u32) {
    let h = hold(addr);
    let got = tokio::time::timeout(Duration::from_secs(10), h.arrived.acquire_many(n)).await;
    got.expect("held requests did not reach the backend").expect("semaphore").forget();
}

/// Connections each test backend accepted, by its address.
pub(super) fn connections() -> &'static std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>> {
    static CONNS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>> =
        std::sync::OnceLock::new();
    CONNS.get_or_init(Default::default)
}

pub(super) fn workload(name: &str, labels: &[(&str, &str)], port: u16) -> Arc<Workload> {
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
pub(super) async fn setup(
    fail_v1: usize,
) -> (Registry, Arc<Service>, Arc<Workload>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
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
pub(super) async fn front(state: Arc<ProxyState>, reviews: Arc<Service>, client: Arc<Workload>) -> SocketAddr {
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

pub(super) async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String, Duration) {
    let (status, _, body, took) = get_full(addr, "/reviews/0", headers).await;
    (status, body, took)
}

/// Like [`get`], with the response headers. Time is tokio's, so a paused test clock measures
/// exactly the proxy's timers.
pub(super) async fn get_full(
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

pub(super) const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

pub(super) fn vs(subset: &str) -> String {
    format!("{DR}---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n")
}

pub(super) fn table(yaml: &str, registry: &Registry) -> RouteTable {
    let config = Config::parse_str("test.yaml", yaml).unwrap_or_else(|e| panic!("config: {e}"));
    RouteTable::compile(&config, registry).unwrap_or_else(|e| panic!("compile: {e}"))
}

/// The next value on `rx`, within 10 s (a bug fails the test instead of hanging it).
pub(super) async fn next<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("response").expect("sender")
}

/// Lets one held request (`x-hold`) go at every backend of `registry`.
pub(super) fn release_all(registry: &Registry) {
    for w in &registry.workloads {
        if let (Some(ip), Some(p)) = (w.ip, w.container_ports.first()) {
            hold(SocketAddr::from((ip, p.port))).release.add_permits(1);
        }
    }
}

pub(super) fn v1_addr(registry: &Registry) -> SocketAddr {
    let w =
        registry.workloads.iter().find(|w| w.labels.get("version").map(String::as_str) == Some("v1")).expect("v1 pod");
    SocketAddr::from((w.ip.expect("ip"), w.container_ports[0].port))
}

/// A backend that answers with the HTTP version and `te` it was sent, plus a gRPC-style trailer.
pub(super) async fn protocol_backend() -> SocketAddr {
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
pub(super) fn one_endpoint_service(
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
pub(super) async fn front_for(
    state: &Arc<ProxyState>,
    client: Arc<Workload>,
    service: Arc<Service>,
    port: u16,
) -> SocketAddr {
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
pub(super) async fn greeter_proxy(protocol: AppProtocol, pool: &str) -> SocketAddr {
    greeter_proxy_state(protocol, pool).await.0
}

/// [`greeter_proxy`] with its proxy state.
pub(super) async fn greeter_proxy_state(protocol: AppProtocol, pool: &str) -> (SocketAddr, Arc<ProxyState>) {
    let backend = protocol_backend().await;
    let (greeter, client, registry) =
        one_endpoint_service("greeter", [10, 96, 0, 50], (None, 50051, protocol), backend);
    let dr = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: greeter}}\nspec:\n  host: greeter\n  trafficPolicy:\n    connectionPool:\n      http: {pool}\n");
    let state = ProxyState::new(registry.clone(), table(&dr, &registry), Arc::new(NoOriginalDst));
    (front_for(&state, client, greeter, 50051).await, state)
}

/// One request over HTTP/2 (prior knowledge) or HTTP/1.1 with `te: trailers`; returns the body
/// (the version and `te` the backend saw) and the `grpc-status` trailer if it came through.
pub(super) async fn call(addr: SocketAddr, http2: bool) -> (String, Option<String>) {
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

/// A VirtualService for reviews (with the v1/v2 DestinationRule) whose single http rule is `rule`
/// (YAML indented for `http:`).
pub(super) fn vs_rule(rule: &str) -> String {
    format!("{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{rule}")
}

/// Writes `request` on a fresh connection to `addr` and reads until the server closes or
/// `until` appears in the reply; returns what was read.
pub(super) async fn raw(addr: SocketAddr, request: &[u8], until: &str) -> String {
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

/// A proxy for service `web` with one endpoint, `backend`: `attempts` retries on the route,
/// `extra` more YAML (a DestinationRule), `limits` for its clients.
pub(super) async fn single_backend_proxy(
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

/// The `response_flags` of the one `reporter="source"` request series matching `labels`, once the
/// proxy has recorded it (a request is recorded when its response body is done, which may be a
/// moment after the client read it).
pub(super) async fn recorded_flags(state: &ProxyState, labels: &[(&str, &str)]) -> String {
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

/// The proxy's access log lines, read from the writer's other end.
pub(super) fn access_log_lines(state: &ProxyState) -> tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>> {
    let (w, r) = tokio::io::duplex(64 * 1024);
    state.access_log.spawn_writer(w);
    tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(r))
}

pub(super) async fn next_line(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>) -> String {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    line.expect("no access log line").expect("read").expect("log ended")
}
