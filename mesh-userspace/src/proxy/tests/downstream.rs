//! What a client connection may send: request-head limits and timeouts, keep-alive idling,
//! malformed bodies, and HTTP/1 host rules and connection options.
use super::fixtures::*;

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
