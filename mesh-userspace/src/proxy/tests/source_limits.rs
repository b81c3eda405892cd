//! Per-source caps (connections, requests, buffered bytes), body timeouts, and the overload
//! manager shedding the heaviest source.
use super::fixtures::*;

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
