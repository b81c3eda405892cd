//! TLS termination on Gateway ports: the SNI choice, key pairs that must be refused, and HTTPS
//! requests over loopback through a Gateway API `HTTPS` listener to a backend (HTTP/1.1 and h2
//! by ALPN), with the Secret rotated under a running listener.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use super::{test_pki::*, *};
use crate::{
    config::Config,
    proxy::{serve_gateway, OriginalDst, ProxyState},
    registry::{AppProtocol, ContainerPort, Registry, Service, ServicePort, TargetPort, Workload},
    routing::RouteTable,
};

fn certs(entries: &[(Option<&str>, &Leaf)]) -> ServerCerts {
    ServerCerts::new(
        entries
            .iter()
            .map(|(h, l)| {
                (h.map(str::to_owned), certified_key(l.cert_pem.as_bytes(), l.key_pem.as_bytes()).expect("key pair"))
            })
            .collect(),
    )
    .expect("server certs")
}

fn picked(c: &ServerCerts, sni: Option<&str>) -> Option<CertificateDer<'static>> {
    c.pick(sni).map(|k| k.cert[0].clone())
}

#[test]
fn sni_picks_the_exact_name_then_the_longest_wildcard_then_the_listener_without_hostname() {
    let ca = Ca::new();
    let (any, wild, deeper, exact) = (
        ca.leaf(&["any.test"]),
        ca.leaf(&["*.example.com"]),
        ca.leaf(&["*.a.example.com"]),
        ca.leaf(&["www.example.com"]),
    );
    let c = certs(&[
        (None, &any),
        (Some("*.example.com"), &wild),
        (Some("*.a.example.com"), &deeper),
        (Some("www.example.com"), &exact),
    ]);
    assert_eq!(picked(&c, Some("www.example.com")), Some(exact.der.clone()));
    assert_eq!(picked(&c, Some("WWW.Example.com")), Some(exact.der.clone()), "names are case-insensitive");
    assert_eq!(picked(&c, Some("x.a.example.com")), Some(deeper.der.clone()), "longest wildcard suffix");
    assert_eq!(picked(&c, Some("b.example.com")), Some(wild.der.clone()));
    assert_eq!(picked(&c, Some("x.y.example.com")), Some(wild.der.clone()), "a wildcard covers several labels");
    assert_eq!(picked(&c, Some("example.com")), Some(any.der.clone()), "*.example.com does not cover example.com");
    assert_eq!(picked(&c, Some("other.org")), Some(any.der.clone()));
    assert_eq!(picked(&c, None), Some(any.der.clone()), "no SNI: the listener without hostname");
    // No listener without hostname: a name no listener has, or no SNI, is refused.
    let c = certs(&[(Some("www.example.com"), &exact), (Some("*.example.com"), &wild)]);
    assert_eq!(picked(&c, Some("other.org")), None);
    assert_eq!(picked(&c, None), None);
    assert_eq!(picked(&c, Some("www.example.com")), Some(exact.der.clone()));
}

#[test]
fn key_pairs_that_cannot_serve_are_refused_with_the_reason() {
    let ca = Ca::new();
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    assert!(certified_key(a.cert_pem.as_bytes(), a.key_pem.as_bytes()).is_ok());
    let err =
        |c: &str, k: &str| certified_key(c.as_bytes(), k.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(&a.cert_pem, &b.key_pem).contains("do not belong together"), "{}", err(&a.cert_pem, &b.key_pem));
    assert!(err("not pem at all", &a.key_pem).contains("no PEM CERTIFICATE"));
    assert!(err(&a.cert_pem, "").contains("no PEM private key"));
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(err(garbage, &a.key_pem).contains("not an X.509"), "{}", err(garbage, &a.key_pem));
    // The messages never carry key material.
    assert!(!err(&a.cert_pem, &b.key_pem).contains("PRIVATE KEY"));
}

struct NoOriginalDst;
impl OriginalDst for NoOriginalDst {
    fn take(&self, _: u64, _: SocketAddrV4) -> Option<SocketAddrV4> {
        None
    }
}

/// A backend answering each request with what it saw: its HTTP version, Host and path.
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: ::http::Request<hyper::body::Incoming>| async move {
                    let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    let body = format!("echo {} {}", host, req.uri().path());
                    Ok::<_, std::convert::Infallible>(::http::Response::new(http_body_util::Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn registry_with_echo(backend: SocketAddr) -> Registry {
    let echo = Arc::new(Service {
        name: "echo".into(),
        namespace: "default".into(),
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 80)),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Number(backend.port()),
            node_port: None,
            protocol: AppProtocol::Http,
        }],
        selector: [("app".to_string(), "echo".to_string())].into_iter().collect(),
        ..Default::default()
    });
    let pod = Arc::new(Workload {
        name: "echo-1".into(),
        namespace: "default".into(),
        labels: [("app".to_string(), "echo".to_string())].into_iter().collect(),
        ip: Some(Ipv4Addr::LOCALHOST),
        container_ports: vec![ContainerPort { name: Some("http".into()), port: backend.port() }],
        netns: None,
        cgroup: None,
        enroll: true,
        caps: Default::default(),
    });
    Registry { services: vec![echo], workloads: vec![pod], ..Default::default() }
}

/// A Gateway API Gateway `web` with an HTTPS listener on 8443 for `www.example.com` (Secret
/// `www`) and one with no hostname (Secret `fallback`), and a route of both to echo.
fn gateway_config(www: &Leaf, fallback: &Leaf) -> Config {
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: web, namespace: default}\nspec:\n  gatewayClassName: mesh\n  listeners:\n  - {name: www, port: 8443, protocol: HTTPS, hostname: www.example.com, tls: {certificateRefs: [{name: www}]}}\n  - {name: any, port: 8443, protocol: HTTPS, tls: {mode: Terminate, certificateRefs: [{kind: Secret, group: '', name: fallback}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: echo, namespace: default}\nspec:\n  parentRefs: [{name: web}]\n  rules:\n  - backendRefs: [{name: echo, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {hostname: moved.example.com}}]\n";
    let mut config = Config::default();
    for (f, text) in [
        ("gateway.yaml", gateway.to_owned()),
        ("www.yaml", secret_yaml("default", "www", www)),
        ("fallback.yaml", secret_yaml("default", "fallback", fallback)),
    ] {
        config.add_str(f, &text).expect("config");
    }
    config
}

fn compile(config: &Config, registry: &Registry) -> RouteTable {
    let (table, rejected) = RouteTable::compile_admitting(config, registry);
    assert!(rejected.is_empty(), "{rejected:?}");
    table
}

/// A TLS client trusting `ca`, offering `alpn`.
fn client(ca: &Ca, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` naming `sni`, with the certificate the server presented.
async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    let tls = connector.connect(name, tcp).await?;
    let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned().expect("a server certificate");
    Ok((tls, presented))
}

/// GET `path` with `host` over an established TLS connection, as HTTP/1.1 or h2 (what ALPN
/// chose): the response's version, status and body (a redirect's: its `Location`).
async fn get(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> (::http::Version, u16, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = ::http::Request::get(format!("https://{host}{path}"))
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("h1 handshake");
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path.parse().expect("path");
        send.send_request(req).await.expect("h1 response")
    };
    let (version, status) = (resp.version(), resp.status().as_u16());
    if resp.status().is_redirection() {
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        return (version, status, location);
    }
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_through_a_gateway_listener_by_sni_over_http1_and_h2_and_a_rotated_secret_applies_to_new_handshakes() {
    let backend = echo_backend().await;
    let registry = registry_with_echo(backend);
    let ca = Ca::new();
    let (www, fallback) = (ca.leaf(&["www.example.com"]), ca.leaf(&["*.example.org"]));
    let table = compile(&gateway_config(&www, &fallback), &registry);
    assert!(table.gateway_tls("default", "web", 8443).is_some(), "{:?}", table.warnings);
    let state = ProxyState::new(registry.clone(), table, Arc::new(NoOriginalDst));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(serve_gateway(state.clone(), l, "web".into(), "default".into(), 8443));

    // HTTP/1.1 (ALPN), SNI www.example.com: that listener's certificate, routed to echo.
    let h1 = client(&ca, &[b"http/1.1"]);
    let (tls, presented) = connect(&h1, addr, "www.example.com").await.expect("handshake www");
    assert_eq!(presented, www.der);
    assert_eq!(
        get(tls, "www.example.com", "/hello").await,
        (::http::Version::HTTP_11, 200, "echo www.example.com /hello".into())
    );
    // h2 by ALPN, another name: the listener without hostname answers.
    let h2 = client(&ca, &[b"h2", b"http/1.1"]);
    let (tls, presented) = connect(&h2, addr, "api.example.org").await.expect("handshake fallback");
    assert_eq!(presented, fallback.der);
    let (version, status, body) = get(tls, "api.example.org", "/h2").await;
    assert_eq!((version, status), (::http::Version::HTTP_2, 200));
    assert!(body.starts_with("echo ") && body.ends_with(" /h2"), "{body}");

    // The Secret rotated: the listener is not reopened (same task, same socket), and the next
    // handshake presents the new certificate.
    let rotated = ca.leaf(&["www.example.com"]);
    state.publish_routes(compile(&gateway_config(&rotated, &fallback), &registry));
    let (tls, presented) = connect(&h1, addr, "www.example.com").await.expect("handshake after rotation");
    assert_eq!(presented, rotated.der, "the rotated certificate was not used");
    assert_eq!(get(tls, "www.example.com", "/again").await.1, 200);

    // A redirect with no scheme keeps the request's, which on a TLS port is https.
    let (tls, _) = connect(&h1, addr, "www.example.com").await.expect("handshake");
    let (_, status, location) = get(tls, "www.example.com", "/old").await;
    assert_eq!(status, 302);
    assert!(location.starts_with("https://moved.example.com"), "Location {location:?}");
}

#[tokio::test]
async fn a_name_no_listener_serves_is_refused_at_the_handshake() {
    let backend = echo_backend().await;
    let registry = registry_with_echo(backend);
    let ca = Ca::new();
    let www = ca.leaf(&["www.example.com"]);
    // Only the hostname listener: the other's Secret is not defined, so it is not served.
    let mut config = gateway_config(&www, &www);
    config.secrets.remove(&("default".to_owned(), "fallback".to_owned()));
    let table = compile(&config, &registry);
    assert!(
        table.warnings.iter().any(
            |w| w.contains("listener \"any\" (HTTPS port 8443) not served: Secret default/fallback is not defined")
        ),
        "{:?}",
        table.warnings
    );
    let state = ProxyState::new(registry, table, Arc::new(NoOriginalDst));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(serve_gateway(state.clone(), l, "web".into(), "default".into(), 8443));
    let c = client(&ca, &[b"http/1.1"]);
    assert!(connect(&c, addr, "other.example.org").await.is_err(), "a name no listener serves got a certificate");
    // The refusal is counted (the server task counts it after the client saw the alert).
    let counted = async {
        while state.metrics.get("mesh_tls_handshake_failures_total", &[("reason", "refused")]) == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), counted).await.expect("refusal counted");
    // The listener still serves its own name.
    let (tls, presented) = connect(&c, addr, "www.example.com").await.expect("handshake www");
    assert_eq!(presented, www.der);
    assert_eq!(get(tls, "www.example.com", "/").await.1, 200);
}
