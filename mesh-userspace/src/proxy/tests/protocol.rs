//! The upstream protocol (HTTP/1, h2c) from the port's declaration, server-first protocols,
//! and plain TCP relaying with its byte reports and access log line.
use super::fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_follows_port_declaration_and_destination_rule() {
    // A port declared gRPC / HTTP/2 is HTTP/2 upstream whatever the client spoke; te: trailers
    // and the grpc-status trailer pass through.
    let grpc = greeter_proxy(AppProtocol::Http2, "{}").await;
    assert_eq!(call(grpc, true).await, ("HTTP/2.0 te=trailers".into(), Some("0".into())));
    assert_eq!(call(grpc, false).await.0, "HTTP/2.0 te=trailers");
    // A port declared http stays HTTP/1.1 upstream even for HTTP/2 clients (Istio's default) ...
    let http = greeter_proxy(AppProtocol::Http, "{}").await;
    assert_eq!(call(http, true).await.0, "HTTP/1.1 te=trailers");
    // ... unless the DestinationRule upgrades it, or asks for the client's protocol.
    let upgraded = greeter_proxy(AppProtocol::Http, "{h2UpgradePolicy: UPGRADE}").await;
    assert_eq!(call(upgraded, false).await.0, "HTTP/2.0 te=trailers");
    let follow = greeter_proxy(AppProtocol::Http, "{useClientProtocol: true}").await;
    assert_eq!(call(follow, true).await.0, "HTTP/2.0 te=trailers");
    assert_eq!(call(follow, false).await.0, "HTTP/1.1 te=trailers");
    // A port that declares nothing is sniffed, and the upstream gets the client's protocol.
    let sniffed = greeter_proxy(AppProtocol::Unknown, "{}").await;
    assert_eq!(call(sniffed, true).await, ("HTTP/2.0 te=trailers".into(), Some("0".into())));
    assert_eq!(call(sniffed, false).await.0, "HTTP/1.1 te=trailers");
}

/// A server-first backend (SMTP, MySQL, ...): greets every connection before the client says a
/// word, then answers each line with `got <line>`.
async fn banner_backend() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                if w.write_all(b"220 mail.example ready\r\n").await.is_err() {
                    return;
                }
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("got {line}\r\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_on_an_undeclared_port_falls_back_to_tcp() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let backend = banner_backend().await;
    // No protocol and no `name` prefix: Istio sniffs such a port.
    let (mail, client, registry) =
        one_endpoint_service("mail", [10, 96, 0, 25], (None, 25, AppProtocol::Unknown), backend);
    let state = ProxyState::new(registry.clone(), table("", &registry), Arc::new(NoOriginalDst));
    let addr = front_for(&state, client, mail, 25).await;
    // The client waits for the greeting, as an SMTP client does: the proxy must give up on
    // sniffing (the client is silent) and connect upstream, or both sides wait forever.
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = s.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    async fn read(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>) -> String {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.expect("no line in 5 s");
        line.expect("read").expect("connection closed")
    }
    assert_eq!(read(&mut lines).await, "220 mail.example ready");
    // Then it is a byte stream both ways, not HTTP (a line that is not a request line passes).
    w.write_all(b"HELO client.example\r\n").await.expect("write");
    assert_eq!(read(&mut lines).await, "got HELO client.example");
    w.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    assert_eq!(read(&mut lines).await, "got GET / HTTP/1.1");
}

/// A proxy for a `mail` service on a port declared TCP (the banner backend behind it) and a
/// listener handing it connections from a `client` pod.
async fn tcp_mail_proxy() -> (Arc<ProxyState>, SocketAddr, SocketAddr) {
    let backend = banner_backend().await;
    let (mail, client, registry) =
        one_endpoint_service("mail", [10, 96, 0, 25], (Some("tcp-smtp"), 25, AppProtocol::Tcp), backend);
    let state = ProxyState::new(registry.clone(), table("", &registry), Arc::new(NoOriginalDst));
    let addr = front_for(&state, client, mail, 25).await;
    (state, addr, backend)
}

/// One SMTP-like exchange over `s`: the greeting (24 bytes to the client), `HELO x` (8 bytes
/// from it) and its echo (12 bytes to it).
async fn tcp_exchange(s: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut greeting = [0u8; 24];
    s.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"220 mail.example ready\r\n");
    s.write_all(b"HELO x\r\n").await.expect("write");
    let mut echo = [0u8; 12];
    s.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"got HELO x\r\n");
}

// Paused clock: the only timers are the proxy's reporting interval and the test's sleep, so the
// report after one interval is the interval's, with the connection still open.
#[tokio::test(start_paused = true)]
async fn a_tcp_connections_bytes_are_reported_every_interval_while_it_is_open() {
    use tokio::io::AsyncReadExt;
    let (state, addr, _) = tcp_mail_proxy().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    let source = [("reporter", "source"), ("source_workload", "client"), ("destination_workload", "mail-1")];
    let dest = [("reporter", "destination"), ("source_workload", "client"), ("destination_workload", "mail-1")];
    let m = |name: &str, labels: &[(&str, &str)]| state.metrics.get(name, labels);
    // Opened as soon as the upstream connection is up.
    assert_eq!(m("istio_tcp_connections_opened_total", &source), 1);
    assert_eq!(m("istio_tcp_connections_opened_total", &dest), 1);
    tokio::time::sleep(telemetry::TCP_REPORTING_INTERVAL + Duration::from_millis(1)).await;
    // Still open: the interval's report has the bytes so far.
    assert_eq!(m("istio_tcp_sent_bytes_total", &source), 36);
    assert_eq!(m("istio_tcp_received_bytes_total", &source), 8);
    assert_eq!(m("istio_tcp_sent_bytes_total", &dest), 36);
    assert_eq!(m("istio_tcp_connections_closed_total", &[]), 0);
    // More bytes, then the close: only what the reports have not counted is added.
    tokio::io::AsyncWriteExt::write_all(&mut s, b"QUIT\r\n").await.expect("write");
    let mut echo = [0u8; 10];
    s.read_exact(&mut echo).await.expect("echo");
    drop(s);
    for _ in 0..1000 {
        if m("istio_tcp_connections_closed_total", &source) == 1 {
            break;
        }
        // Lets the runtime poll the sockets (the close travels client → proxy → backend and back).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(m("istio_tcp_connections_closed_total", &source), 1);
    assert_eq!(m("istio_tcp_connections_closed_total", &dest), 1);
    assert_eq!(m("istio_tcp_sent_bytes_total", &source), 46);
    assert_eq!(m("istio_tcp_received_bytes_total", &source), 14);
    assert_eq!(m("istio_tcp_connections_opened_total", &source), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_tcp_connection_writes_one_access_log_line_at_close() {
    let (state, addr, backend) = tcp_mail_proxy().await;
    let mut lines = access_log_lines(&state);
    state.access_log.set_mode(access_log::AccessLogMode::Text);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    drop(s);
    let line = next_line(&mut lines).await;
    // Envoy's default format as its TCP proxy writes it: no request, code 0, bytes both ways.
    let re = regex::Regex::new(&format!(
        r#"^\[\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z\] "- - -" 0 - 8 36 \d+ - "-" "-" "-" "-" "{}"$"#,
        regex::escape(&backend.to_string())
    ))
    .expect("regex");
    assert!(re.is_match(&line), "not Envoy's TCP default format: {line}");

    state.access_log.set_mode(access_log::AccessLogMode::Json);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    drop(s);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    for key in ["method", "path", "protocol", "user_agent", "request_id", "authority", "upstream_service_time"] {
        assert!(v.get(key).is_some_and(serde_json::Value::is_null), "{key} null: {line}");
    }
    assert_eq!(v["response_code"], 0, "{line}");
    assert_eq!(v["response_flags"], "-", "{line}");
    assert_eq!((v["bytes_received"].as_u64(), v["bytes_sent"].as_u64()), (Some(8), Some(36)), "{line}");
    assert_eq!(v["upstream_host"], backend.to_string(), "{line}");
    assert_eq!(v["upstream_cluster"], "outbound|25||mail.default.svc.cluster.local", "{line}");

    // A Telemetry filter applies to TCP lines too: one on the response code is false (a TCP
    // connection has none), so the first connection writes nothing; the second, under a filter on
    // its cluster, writes its line (told apart by its bytes: one exchange more).
    let set = |expr: &str| {
        let filter = Some(Arc::new(access_log::LogFilter::compile(expr).expect("parses")));
        let mut m = access_log::WorkloadOverrides::new();
        m.entry("default".to_owned()).or_default().insert("client".to_owned(), access_log::PodLog::On(filter));
        state.access_log.set_overrides(Some(m));
    };
    set("response.code >= 400");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    drop(s);
    set("xds.cluster_name == 'outbound|25||mail.default.svc.cluster.local'");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp_exchange(&mut s).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"HELO x\r\n").await.expect("write");
        let mut echo = [0u8; 12];
        s.read_exact(&mut echo).await.expect("echo");
    }
    drop(s);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!((v["bytes_received"].as_u64(), v["bytes_sent"].as_u64()), (Some(16), Some(48)), "{line}");
}

#[test]
fn unknown_h2_upgrade_policy_is_rejected_with_its_path() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {h2UpgradePolicy: ALWAYS}\n";
    let config = Config::parse_str("dr.yaml", yaml).expect("parses");
    let err = RouteTable::compile(&config, &Registry::default()).map(|_| ()).expect_err("rejected").to_string();
    assert!(err.contains("h2UpgradePolicy") && err.contains("UPGRADE"), "{err}");
}
