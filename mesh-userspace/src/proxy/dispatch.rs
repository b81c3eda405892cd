//! L7 or L4 for a connection bound for a service port: the port's declared protocol, or a short
//! sniff for an HTTP request when it declares none.
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{http::Entry, http_conn::serve_http, tcp::serve_tcp, ProxyState, Source};
use crate::registry::{AppProtocol, Service};

/// Serves one connection bound for `service:port`, at L7 or L4 depending on the port's protocol.
pub async fn serve_service_conn(
    state: Arc<ProxyState>,
    source: Source,
    service: Arc<Service>,
    port: u16,
    stream: TcpStream,
) {
    let protocol = service.port(port).map(|p| p.protocol).unwrap_or(AppProtocol::Unknown);
    let http = match protocol {
        AppProtocol::Http | AppProtocol::Http2 => true,
        AppProtocol::Tcp => false,
        AppProtocol::Unknown => sniff_http(&stream).await,
    };
    if http {
        serve_http(state, source, Entry::Service { service, port }, stream).await;
    } else {
        serve_tcp(state, source, service, port, stream).await;
    }
}

/// Istio-style protocol sniffing for ports that declare nothing: an HTTP/1 request line or the
/// HTTP/2 preface within a short window means HTTP, anything else (or silence: server-first
/// protocols) means opaque TCP.
async fn sniff_http(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    let peek = tokio::time::timeout(crate::settings::FIXED.protocol_sniff_timeout, stream.peek(&mut buf)).await;
    let n = match peek {
        Ok(Ok(n)) => n,
        _ => return false,
    };
    let head = &buf[..n];
    const METHODS: &[&[u8]] =
        &[b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"PRI * ", b"CONNECT ", b"TRACE "];
    METHODS.iter().any(|m| head.starts_with(m) || (head.len() < m.len() && m.starts_with(head) && !head.is_empty()))
}
