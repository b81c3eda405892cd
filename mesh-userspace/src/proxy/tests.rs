//! Proxy behaviour over real loopback sockets with a fixed original-destination table: routing
//! by subset, fault injection, retries, no-endpoint replies, and config reloads racing requests.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

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
                    let slow = req.headers().contains_key("x-slow");
                    async move {
                        if slow {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let mut r = ::http::Response::new(crate::proxy::http::full(format!("{name} end-user={user}")));
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
            let source = Source { workload: Some(client.clone()), peer: Some(peer), caps: None };
            tokio::spawn(serve_service_conn(state.clone(), source, reviews.clone(), 9080, s));
        }
    });
    addr
}

async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String, Duration) {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = ::http::Request::builder().uri("/reviews/0").header("host", "reviews:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Empty::<Bytes>::new()).expect("request")).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), started.elapsed())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    let (s, body, took) = get(addr, &[]).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("reviews-v1"), "{body}");
    assert!(took < Duration::from_millis(300), "delay applied to anonymous user: {took:?}");
    assert_eq!(state.metrics.get("mesh_requests_total", &[("destination_subset", "v2"), ("response_code", "200")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_reach_a_healthy_endpoint() {
    // v1 fails its first request with 503; retryOn 5xx moves the retry to the next endpoint.
    let (registry, reviews, client, h1, h2) = setup(1).await;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    for _ in 0..4 {
        let (s, body, _) = get(addr, &[]).await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 5, "one retry expected");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_race_loses_no_request() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let (t1, t2) = (Arc::new(table(&vs("v1"), &registry)), Arc::new(table(&vs("v2"), &registry)));
    let state = ProxyState::new(registry, RouteTable::kubernetes_only(&Registry::default()), Arc::new(NoOriginalDst));
    state.routes.store(t1.clone());
    let addr = front(state.clone(), reviews, client).await;
    let reloader = {
        let state = state.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                state.routes.store(if i % 2 == 0 { t2.clone() } else { t1.clone() });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for _ in 0..60 {
                let (s, body, _) = get(addr, &[]).await;
                if s != 200 || !(body.starts_with("reviews-v1") || body.starts_with("reviews-v2")) {
                    bad.push((s, body));
                }
            }
            bad
        }));
    }
    reloader.await.expect("reloader");
    for c in clients {
        let bad = c.await.expect("client");
        assert!(bad.is_empty(), "requests failed during reloads: {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_limits_overflow_with_503() {
    let (registry, reviews, client, _, _) = setup(0).await;
    // The backend takes 300 ms (x-slow) so the requests overlap; the pool admits 1 + 1 pending.
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: 1}}\n      http: {{http1MaxPendingRequests: 1}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n"
    );
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let calls: Vec<_> = (0..5).map(|_| tokio::spawn(get(addr, &[("x-slow", "1")]))).collect();
    let mut codes = Vec::new();
    for c in calls {
        codes.push(c.await.expect("call").0);
    }
    codes.sort();
    assert_eq!(codes, vec![200, 200, 503, 503, 503], "2 admitted (1 + 1 pending), 3 overflow");
    // Slots are released: a later request goes through.
    assert_eq!(get(addr, &[]).await.0, 200);
}

fn reviews_v1_with_pool(pool: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {pool}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n    retries: {{attempts: 3, retryOn: 5xx}}\n"
    )
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

/// A proxy in front of one `greeter` service whose port 50051 is declared as `protocol`, with
/// `pool` as the DestinationRule's `connectionPool.http`.
async fn greeter_proxy(protocol: AppProtocol, pool: &str) -> SocketAddr {
    let backend = protocol_backend().await;
    let greeter = Arc::new(Service {
        name: "greeter".into(),
        namespace: "default".into(),
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 50)),
        ports: vec![ServicePort {
            name: None,
            port: 50051,
            target_port: TargetPort::Number(backend.port()),
            node_port: None,
            protocol,
        }],
        selector: [("app".to_string(), "greeter".to_string())].into_iter().collect(),
        ..Default::default()
    });
    let client = workload("client", &[("app", "client")], 80);
    let registry = Registry {
        services: vec![greeter.clone()],
        workloads: vec![workload("greeter-1", &[("app", "greeter")], backend.port()), client.clone()],
    };
    let dr = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: greeter}}\nspec:\n  host: greeter\n  trafficPolicy:\n    connectionPool:\n      http: {pool}\n");
    let state = ProxyState::new(registry.clone(), table(&dr, &registry), Arc::new(NoOriginalDst));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else { return };
            let source = Source { workload: Some(client.clone()), peer: Some(peer), caps: None };
            tokio::spawn(serve_service_conn(state.clone(), source, greeter.clone(), 50051, s));
        }
    });
    addr
}

/// One request over HTTP/2 (prior knowledge) or HTTP/1.1 with `te: trailers`; returns the body
/// (the version and `te` the backend saw) and the `grpc-status` trailer if it came through.
async fn call(addr: SocketAddr, http2: bool) -> (String, Option<String>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = ::http::Request::builder()
        .method("POST")
        .uri(format!("http://greeter:50051/helloworld.Greeter/SayHello"))
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

#[test]
fn unknown_h2_upgrade_policy_is_rejected_with_its_path() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {h2UpgradePolicy: ALWAYS}\n";
    let config = Config::parse_str("dr.yaml", yaml).expect("parses");
    let err = RouteTable::compile(&config, &Registry::default()).err().expect("rejected").to_string();
    assert!(err.contains("h2UpgradePolicy") && err.contains("UPGRADE"), "{err}");
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
        if state.metrics.get("mesh_requests_total", &[("response_code", "400")]) >= 9 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state.metrics.get("mesh_requests_total", &[("response_code", "400")]), 9);
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
    let svc = Arc::new(Service {
        name: "web".into(),
        namespace: "default".into(),
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 60)),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Number(backend.port()),
            node_port: None,
            protocol: AppProtocol::Http,
        }],
        selector: [("app".to_string(), "web".to_string())].into_iter().collect(),
        ..Default::default()
    });
    let client = workload("client", &[("app", "client")], 80);
    let registry = Registry {
        services: vec![svc.clone()],
        workloads: vec![workload("web-1", &[("app", "web")], backend.port()), client.clone()],
    };
    let vs = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  http:\n  - route:\n    - destination: {{host: web}}\n    retries: {{attempts: {attempts}}}\n");
    let state = ProxyState::new(registry.clone(), table(&vs, &registry), Arc::new(NoOriginalDst));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else { return };
            let source = Source { workload: Some(client.clone()), peer: Some(peer), caps: None };
            tokio::spawn(serve_service_conn(state.clone(), source, svc.clone(), 80, s));
        }
    });
    addr
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
    // Ready when the proxy has seen them close: a request on a new connection is answered.
    for _ in 0..100 {
        if !raw(noisy, b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n", "\r\n\r\n").await.is_empty() {
            break;
        }
    }
    // Two slow requests at once: one is over the request cap.
    let calls: Vec<_> = (0..2).map(|_| tokio::spawn(get(noisy, &[("x-slow", "1")]))).collect();
    let mut codes = Vec::new();
    for c in calls {
        codes.push(c.await.expect("call").0);
    }
    codes.sort();
    assert_eq!(codes, vec![200, 503]);
    assert_eq!(
        state.metrics.get("mesh_downstream_overflow_total", &[("source_workload", "noisy"), ("limit", "requests")]),
        1
    );
    assert!(
        state.metrics.get("mesh_downstream_overflow_total", &[("source_workload", "noisy"), ("limit", "connections")])
            >= 1
    );
    assert_eq!(state.metrics.get("mesh_downstream_overflow_total", &[("source_workload", "quiet")]), 0);
}
