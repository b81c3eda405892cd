//! Upstream connects, and the sk_msg bypass's part in them: with `--sk-msg-bypass`, a connect to
//! a pod on this node is announced to the kernel (the socket's cookie, before `connect()`), so
//! sock_ops puts both ends in the sockhash as they are established and the proxy ↔ pod leg
//! skips TCP/IP like the pod ↔ proxy leg.
use std::{
    collections::HashSet,
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

/// The kernel side of the upstream bypass (the eBPF maps; a fake in tests).
pub trait UpstreamBypass: Send + Sync + 'static {
    /// Announces the socket with this cookie before it connects; false when the kernel map
    /// refused it (the connection then goes through TCP).
    fn expect(&self, cookie: u64) -> bool;
}

impl UpstreamBypass for crate::ebpf::MeshEbpf {
    fn expect(&self, cookie: u64) -> bool {
        self.expect_upstream(cookie).map_err(|e| tracing::debug!(error = %e, "upstream connect not announced")).is_ok()
    }
}

/// Whether and for which endpoints upstream connects are announced: set once the bypass is on,
/// and the pods on this node as the last registry listed them.
#[derive(Default)]
pub struct SkMsgUpstream {
    kernel: OnceLock<Arc<dyn UpstreamBypass>>,
    local_pods: ArcSwap<HashSet<Ipv4Addr>>,
}

impl SkMsgUpstream {
    /// Announces upstream connects to local pods from now on.
    pub fn enable(&self, kernel: Arc<dyn UpstreamBypass>) {
        let _ = self.kernel.set(kernel);
    }

    /// Whether upstream connects are announced (the bypass is on).
    pub fn enabled(&self) -> bool {
        self.kernel.get().is_some()
    }

    /// The addresses of the pods on this node (the bypass's sockhash can only join sockets of
    /// one kernel).
    pub fn set_local_pods(&self, pods: HashSet<Ipv4Addr>) {
        self.local_pods.store(Arc::new(pods));
    }

    /// The kernel to announce a connect to `addr` to, if any.
    fn announce_to(&self, addr: SocketAddr) -> Option<&Arc<dyn UpstreamBypass>> {
        let kernel = self.kernel.get()?;
        match addr {
            SocketAddr::V4(v4) if !v4.ip().is_loopback() && self.local_pods.load().contains(v4.ip()) => Some(kernel),
            _ => None,
        }
    }

    /// Connects to `addr`, announced to the kernel first when it is a pod on this node and the
    /// bypass is on; TCP_NODELAY set either way, as the hyper connector sets it.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = match self.announce_to(addr) {
            Some(kernel) => connect_announced(kernel.as_ref(), addr).await?,
            None => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Connects a new IPv4 socket to `addr` after announcing its cookie to `kernel`: the cookie is
/// the socket's identity in the kernel programs from creation on, so sock_ops recognises the
/// socket when its connection is established, before `connect()` returns here.
async fn connect_announced(kernel: &dyn UpstreamBypass, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Ok(cookie) = crate::ebpf::socket_cookie_of(&socket) {
        kernel.expect(cookie);
    }
    socket.connect(addr).await
}

/// The upstream clients' connector (in place of hyper-util's `HttpConnector`: the proxy dials
/// endpoint IPs only, so nothing is resolved): [`SkMsgUpstream::connect`] within the connect
/// timeout.
#[derive(Clone)]
pub struct MeshConnector {
    bypass: Arc<SkMsgUpstream>,
    connect_timeout: Duration,
}

impl MeshConnector {
    /// A connector announcing through `bypass`, giving up on a connect after `connect_timeout`.
    pub fn new(bypass: Arc<SkMsgUpstream>, connect_timeout: Duration) -> Self {
        MeshConnector { bypass, connect_timeout }
    }

    /// A connection to `addr` within the connect timeout.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        match tokio::time::timeout(self.connect_timeout, self.bypass.connect(addr)).await {
            Ok(stream) => stream,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out"))),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

impl tower_service::Service<::http::Uri> for MeshConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: ::http::Uri) -> Connecting {
        let this = self.clone();
        Box::pin(async move {
            // The proxy always dials an endpoint's IP address (the load balancer picked it).
            let addr = endpoint_addr(&uri)?;
            Ok(TokioIo::new(this.connect(addr).await?))
        })
    }
}

/// The socket address of an upstream URI (`http://ip:port/...`; the port defaults to 80).
pub(super) fn endpoint_addr(uri: &::http::Uri) -> io::Result<SocketAddr> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("upstream URI {uri} has no IP address"));
    let host = uri.host().ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip: std::net::IpAddr = host.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<u64>>);

    impl UpstreamBypass for Recorder {
        fn expect(&self, cookie: u64) -> bool {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(cookie);
            true
        }
    }

    #[test]
    fn endpoint_addresses_come_from_the_uri() {
        let addr = |u: &str| endpoint_addr(&u.parse().expect("uri")).ok();
        assert_eq!(addr("http://10.0.0.1:8080/x"), Some("10.0.0.1:8080".parse().expect("addr")));
        assert_eq!(addr("http://10.0.0.1/"), Some("10.0.0.1:80".parse().expect("addr")));
        assert_eq!(addr("http://[::1]:9/"), Some("[::1]:9".parse().expect("addr")));
        assert_eq!(addr("http://web:80/"), None, "the proxy never resolves names upstream");
    }

    #[tokio::test]
    async fn only_connects_to_local_pods_are_announced_and_only_once_enabled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = listener.local_addr().expect("addr");
        let bypass = SkMsgUpstream::default();
        let recorder = Arc::new(Recorder::default());
        // Loopback is never a pod's address: dial it, and check who would be announced.
        bypass.set_local_pods([Ipv4Addr::new(10, 0, 0, 7)].into_iter().collect());
        assert!(bypass.announce_to("10.0.0.7:80".parse().expect("addr")).is_none(), "not enabled yet");
        bypass.enable(recorder.clone());
        assert!(bypass.announce_to("10.0.0.7:80".parse().expect("addr")).is_some());
        assert!(bypass.announce_to("10.0.0.8:80".parse().expect("addr")).is_none(), "not a local pod");
        assert!(bypass.announce_to("127.0.0.1:80".parse().expect("addr")).is_none());
        let stream = bypass.connect(target).await.expect("connect");
        assert!(stream.nodelay().expect("nodelay"));
        assert!(recorder.0.lock().expect("lock").is_empty(), "a loopback connect was announced");

        // What is announced is the cookie the connected socket keeps (the kernel's key for it),
        // one per connect.
        let announced = connect_announced(recorder.as_ref(), target).await.expect("connect");
        let again = connect_announced(recorder.as_ref(), target).await.expect("connect");
        let cookies = recorder.0.lock().expect("lock").clone();
        let cookie = |s: &TcpStream| crate::ebpf::socket_cookie_of(s).expect("cookie");
        let expected = [cookie(&announced), cookie(&again)];
        assert_eq!(cookies, expected);
        assert!(expected[0] != 0 && expected[0] != expected[1]);
    }
}
