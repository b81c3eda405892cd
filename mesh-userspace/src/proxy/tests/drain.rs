//! Draining: listeners stop, idle connections close, requests in flight finish.
use super::fixtures::*;

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
