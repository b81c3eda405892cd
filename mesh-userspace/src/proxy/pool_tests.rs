//! The HTTP/1 pool against a raw backend that counts its connections and requests.
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;
use crate::proxy::{connect::SkMsgUpstream, http::empty};

/// A keep-alive backend answering each request head with `reply`; counts connections accepted
/// and the request lines it read (as sent: `GET /x HTTP/1.1`, plus the Host header).
async fn backend(reply: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (c, h) = (conns.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4);
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let host = head.lines().find(|l| l.to_ascii_lowercase().starts_with("host:")).unwrap_or("");
                    h.lock().expect("heads").push(format!("{line} | {host}"));
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, heads)
}

fn pool(idle_timeout: Duration) -> Http1Pool {
    let connector = MeshConnector::new(Arc::new(SkMsgUpstream::default()), Duration::from_secs(1));
    Http1Pool::new(connector, idle_timeout, 4)
}

fn get(addr: SocketAddr, path: &str) -> Request<ProxyBody> {
    let mut req = Request::new(empty());
    *req.uri_mut() = format!("http://{addr}{path}").parse().expect("uri");
    req
}

async fn body_of(resp: Response<UpstreamBody>) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn a_connection_goes_back_when_its_body_ends_and_is_reused() {
    let (addr, conns, heads) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let pool = pool(Duration::from_secs(60));
    for i in 0..3 {
        let resp = pool.request(get(addr, "/reviews/0?x=1")).await.expect("response");
        assert_eq!(pool.idle_to(addr), 0, "request {i}: in use until its body is read");
        assert_eq!(body_of(resp).await, "ok");
        assert_eq!(pool.idle_to(addr), 1, "request {i}: back once the body ended");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection for sequential requests");
    // Origin form on the wire, the URI's authority as Host when the request has none.
    let heads = heads.lock().expect("heads").clone();
    assert_eq!(heads[0], format!("GET /reviews/0?x=1 HTTP/1.1 | host: {addr}"));
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let (addr, conns, _) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let pool = pool(Duration::from_secs(60));
    drop(pool.request(get(addr, "/")).await.expect("response"));
    assert_eq!(pool.idle_to(addr), 0);
    assert_eq!(body_of(pool.request(get(addr, "/")).await.expect("response")).await, "ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn chunked_bodies_and_bodiless_responses_return_their_connection() {
    let (addr, conns, _) = backend(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").await;
    let pool = pool(Duration::from_secs(60));
    for _ in 0..2 {
        assert_eq!(body_of(pool.request(get(addr, "/")).await.expect("response")).await, "ok");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    let (addr, conns, _) = backend(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    for _ in 0..2 {
        let resp = pool.request(get(addr, "/")).await.expect("response");
        assert_eq!(pool.idle_to(addr), 1, "nothing to read: back at once");
        drop(resp);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_connections_expire_and_a_zero_timeout_keeps_none() {
    let (addr, conns, _) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let timeout = Duration::from_millis(100);
    let pool = pool(timeout);
    body_of(pool.request(get(addr, "/")).await.expect("response")).await;
    assert_eq!(pool.idle_to(addr), 1);
    // Being idle is the behaviour under test: the reaper runs on the idle timeout.
    tokio::time::sleep(timeout * 3).await;
    assert_eq!(pool.idle_to(addr), 0, "closed once idle past the timeout");
    body_of(pool.request(get(addr, "/")).await.expect("response")).await;
    assert_eq!(conns.load(Ordering::SeqCst), 2);

    let none = self::pool(Duration::ZERO);
    body_of(none.request(get(addr, "/")).await.expect("response")).await;
    assert_eq!(none.idle_to(addr), 0);
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let err = pool(Duration::from_secs(1)).request(get(addr, "/")).await.err().expect("refused");
    assert!(matches!(err, UpstreamError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn a_connection_still_sending_its_request_body_is_not_lent_to_another_request() {
    // The backend answers on reading the head; the request's body never comes. The response
    // ends first, but the connection is busy until the body is sent: another request must
    // get another connection, not wait behind it.
    let (addr, conns, _) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let pool = pool(Duration::from_secs(60));
    let stalled = futures_util::stream::pending::<Result<Frame<Bytes>, crate::proxy::http::BodyError>>();
    let mut post = Request::new(http_body_util::StreamBody::new(stalled).boxed());
    *post.method_mut() = http::Method::POST;
    *post.uri_mut() = format!("http://{addr}/upload").parse().expect("uri");
    post.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    assert_eq!(body_of(pool.request(post).await.expect("early response")).await, "ok");
    let next = tokio::time::timeout(Duration::from_secs(5), pool.request(get(addr, "/")))
        .await
        .expect("the next request waited for the busy connection");
    assert_eq!(body_of(next.expect("response")).await, "ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}
