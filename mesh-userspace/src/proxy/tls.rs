//! TLS termination on ingress Gateway ports: Gateway API `HTTPS` listeners (`tls.mode:
//! Terminate`) and Istio Gateway servers with `tls.mode: SIMPLE`. The routing table holds, per
//! Gateway port, the certificates of its TLS listeners ([`ServerCerts`], compiled from their
//! Secrets by `routing::gateway_tls`); each accepted connection looks its port up in the table
//! of the moment, so a Secret that changes (a reload) is used by the next handshake without the
//! listener being reopened. After the handshake the connection is served exactly as a plain one:
//! the same per-request service, routed by `Host` on that Gateway port.
use std::{fmt, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio::net::TcpStream;

use super::{http::Entry, http_conn, limits, ProxyState, Source};

/// Why a Secret's key pair cannot serve TLS. The messages name the Secret key (`tls.crt`,
/// `tls.key`) and never any of its bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls.crt` has no certificate.
    #[error("tls.crt holds no PEM CERTIFICATE block")]
    NoCertificate,
    /// `tls.crt` is not well-formed PEM.
    #[error("tls.crt is not PEM: {0}")]
    BadCertificatePem(String),
    /// `tls.key` has no private key.
    #[error("tls.key holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    /// `tls.key` is not well-formed PEM.
    #[error("tls.key is not PEM: {0}")]
    BadKeyPem(String),
    /// The key is of a kind or shape the crypto provider cannot sign with.
    #[error("tls.key is not a usable private key: {0}")]
    BadKey(rustls::Error),
    /// The certificate does not parse, or is not the key's.
    #[error("tls.crt and tls.key do not belong together, or tls.crt is not an X.509 certificate: {0}")]
    Mismatch(rustls::Error),
    /// rustls refused the configuration.
    #[error("no TLS configuration can be built: {0}")]
    Config(rustls::Error),
}

/// The certificate chain and private key of a Secret (`tls.crt`, `tls.key`, PEM), checked to
/// belong together: the first certificate is the server's, the rest its chain.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificatePem(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
        e => TlsError::BadKeyPem(e.to_string()),
    })?;
    let signing = provider().key_provider.load_private_key(key).map_err(TlsError::BadKey)?;
    let certified = CertifiedKey::new(chain, signing);
    // Parses the end-entity certificate and compares its public key with the private key's: a
    // listener must not come up with a pair every client would refuse.
    certified.keys_match().map_err(TlsError::Mismatch)?;
    Ok(Arc::new(certified))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One TLS listener's certificate and the server names (SNI) it answers for.
struct SniCert {
    /// `exact.name`, `*.suffix`, or None for any name (a listener with no hostname).
    host: Option<String>,
    key: Arc<CertifiedKey>,
}

/// The certificates of one Gateway port, picked per handshake by the client's SNI.
#[derive(Clone)]
pub struct ServerCerts {
    certs: Arc<Vec<SniCert>>,
    config: Arc<ServerConfig>,
}

impl ServerCerts {
    /// The certificates of a port's TLS listeners, each with the host name it serves (None:
    /// every name). ALPN offers `h2` and `http/1.1`.
    pub fn new(certs: Vec<(Option<String>, Arc<CertifiedKey>)>) -> Result<ServerCerts, TlsError> {
        let certs: Arc<Vec<SniCert>> = Arc::new(
            certs
                .into_iter()
                .map(|(host, key)| SniCert { host: host.filter(|h| !h.is_empty() && h != "*"), key })
                .collect(),
        );
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(certs.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerCerts { certs, config: Arc::new(config) })
    }

    /// The rustls configuration for this port's handshakes.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The certificate for a client hello naming `sni`: the listener whose hostname is that name
    /// exactly, else the wildcard with the longest suffix covering it, else the listener with no
    /// hostname; with no SNI, that last one. None: the handshake is refused.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        pick(&self.certs, sni)
    }
}

fn pick<'a>(certs: &'a [SniCert], sni: Option<&str>) -> Option<&'a Arc<CertifiedKey>> {
    let named = sni.and_then(|name| {
        let name = name.strip_suffix('.').unwrap_or(name);
        certs
            .iter()
            .find(|c| c.host.as_deref().is_some_and(|h| !h.starts_with('*') && h.eq_ignore_ascii_case(name)))
            .or_else(|| {
                certs
                    .iter()
                    .filter(|c| c.host.as_deref().is_some_and(|h| wildcard_covers(h, name)))
                    .max_by_key(|c| c.host.as_deref().map_or(0, str::len))
            })
    });
    named.or_else(|| certs.iter().find(|c| c.host.is_none())).map(|c| &c.key)
}

/// `*.example.com` covers `a.example.com` and `a.b.example.com` (Gateway API: one or more labels).
fn wildcard_covers(pattern: &str, name: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|suffix| {
        suffix.starts_with('.')
            && name.len() > suffix.len()
            && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    })
}

impl fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<&str> = self.certs.iter().map(|c| c.host.as_deref().unwrap_or("*")).collect();
        f.debug_struct("ServerCerts").field("hosts", &hosts).finish()
    }
}

/// Two tables are the same when they serve the same names with the same certificates.
impl PartialEq for ServerCerts {
    fn eq(&self, other: &Self) -> bool {
        self.certs.len() == other.certs.len()
            && self.certs.iter().zip(other.certs.iter()).all(|(a, b)| a.host == b.host && a.key.cert == b.key.cert)
    }
}

struct Resolver(Arc<Vec<SniCert>>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("gateway SNI resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = pick(&self.0, hello.server_name()).cloned();
        if picked.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no Gateway listener serves this server name; handshake refused");
        }
        picked
    }
}

/// Serves one connection accepted on an ingress Gateway port: TLS-terminated when the live table
/// has certificates for the port, else plain HTTP ([`http_conn::serve_http`]).
pub(super) async fn serve_gateway_conn(state: Arc<ProxyState>, source: Source, entry: Entry, stream: TcpStream) {
    let certs = match &entry {
        Entry::Gateway { name, namespace, port } => state.routes.load().gateway_tls(namespace, name, *port),
        _ => None,
    };
    let Some(certs) = certs else {
        return http_conn::serve_http(state, source, entry, stream).await;
    };
    // As for plain connections: responses are written whole.
    let _ = stream.set_nodelay(true);
    let gateway = match &entry {
        Entry::Gateway { name, namespace, port } => format!("{namespace}/{name}:{port}"),
        _ => String::new(),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.config());
    // The handshake is bounded like a request head: a client that connects and stalls holds a
    // socket only that long. The drain closes a connection still in its handshake.
    let handshake = tokio::select! {
        r = tokio::time::timeout(state.limits.request_headers_timeout, acceptor.accept(stream)) => r,
        _ = state.drain.signaled() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            state.metrics.inc("mesh_tls_handshake_failures_total", &[("gateway", &gateway), ("reason", "refused")]);
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            state.metrics.inc("mesh_tls_handshake_failures_total", &[("gateway", &gateway), ("reason", "timeout")]);
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = limits::ConnActivity::counting(None);
    let src = "ingress";
    let svc = http_conn::conn_service(&state, source.clone(), entry, &activity, src);
    let io = limits::ActivityIo::new(tls, activity.clone());
    if h2 {
        Box::pin(http_conn::serve_http2(&state, &activity, io, svc, src, None)).await;
    } else {
        Box::pin(serve_http1(&state, &activity, io, svc, &source)).await;
    }
}

/// HTTP/1 inside TLS: one hyper connection for the connection's life. Unlike a plain connection
/// it is not parked while idle (the TLS session's state would have to be kept anyway); the idle
/// and header timeouts, hyper's head refusals and the drain are handled as for plain ones.
async fn serve_http1<S, T>(
    state: &Arc<ProxyState>,
    activity: &limits::ConnActivity,
    io: limits::ActivityIo<T>,
    svc: S,
    source: &Source,
) where
    S: http_conn::ConnService + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &state.limits;
    let conn = http_conn::http1_builder(limits).serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    let ended = tokio::select! {
        biased;
        r = conn.as_mut() => r,
        e = activity.watch(limits) => {
            http_conn::count_expiry(state, "ingress", e);
            if e == limits::Expired::Idle {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.request_headers_timeout, conn.as_mut()).await;
            }
            return;
        }
        _ = state.drain.signaled() => {
            // Closes the connection if idle, else answers the request in flight with
            // `Connection: close` and then closes.
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = ended {
        http_conn::http1_failed(state, source, &e);
    }
}

#[cfg(test)]
#[path = "tls_test_pki.rs"]
pub(crate) mod test_pki;

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
