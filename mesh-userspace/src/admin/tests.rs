//! The admin server over a real loopback socket, on a proxy state built in the test (no kernel
//! programs, no root).
use std::net::{SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{proxy::OriginalDst, registry::Registry, routing::RouteTable};

struct NoOriginalDst;
impl OriginalDst for NoOriginalDst {
    fn take(&self, _: u64, _: SocketAddrV4) -> Option<SocketAddrV4> {
        None
    }
}

/// Fixed kernel counters, so the test can see them rendered.
struct FakeKernel;
impl KernelCounters for FakeKernel {
    fn stats(&self) -> KernelStats {
        KernelStats { connects_redirected: 7, ..KernelStats::default() }
    }
}

pub(super) fn admin_for(state: Arc<ProxyState>, ready: bool) -> Admin {
    Admin { state, kernel: Arc::new(FakeKernel), ready: Arc::new(AtomicBool::new(ready)) }
}

pub(super) fn empty_state() -> Arc<ProxyState> {
    let registry = Registry::default();
    let routes = RouteTable::kubernetes_only(&registry);
    ProxyState::new(registry, routes, Arc::new(NoOriginalDst))
}

/// Starts the admin server on an ephemeral port.
pub(super) async fn start(admin: Admin) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(serve(admin, l));
    addr
}

/// GET `path`: (status, body). HTTP/1.1 with `Connection: close`, read to the end.
pub(super) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    // hyper sends small bodies with Content-Length; a chunked body is decoded here.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

#[tokio::test]
async fn probes_answer_as_before() {
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Admin { ready: ready.clone(), ..admin_for(empty_state(), false) };
    let addr = start(admin).await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    let (code, body) = get(addr, "/ready").await;
    assert_eq!(code, 503, "{body}");
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/ready").await, (200, "ok\n".into()));
    let (code, body) = get(addr, "/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("/stats/prometheus"), "{body}");
}

#[tokio::test]
async fn stats_prometheus_is_the_metrics_page() {
    let addr = start(admin_for(empty_state(), true)).await;
    let (code, metrics) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("mesh_kernel_connects_redirected_total 7"), "{metrics}");
    assert_eq!(get(addr, "/stats/prometheus").await, (200, metrics));
}
