//! The upstream connection pool: connection-pool limits, retry caps, idle and per-connection
//! request limits, and pooled connections the server closes under a request.
use super::fixtures::*;

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

fn reviews_v1_with_pool(pool: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {pool}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n    retries: {{attempts: 3, retryOn: 5xx}}\n"
    )
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
