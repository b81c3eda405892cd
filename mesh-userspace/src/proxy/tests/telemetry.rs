//! Istio's standard metrics (response flags, both reporters) and the access log.
use super::fixtures::*;

/// Sends one anonymous request through a proxy configured with `yaml` over `registry` and
/// returns its status and the response flags it was recorded with.
async fn one_request_flags(
    registry: Registry,
    reviews: Arc<Service>,
    client: Arc<Workload>,
    yaml: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Arc<ProxyState>) {
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let (s, body, _) = get(addr, headers).await;
    let code = s.to_string();
    let flags = recorded_flags(&state, &[("response_code", &code)]).await;
    assert!(!body.is_empty() || s == 200, "{body}");
    (s, flags, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_carry_both_reporters_and_istio_labels() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let (s, flags, state) = one_request_flags(registry, reviews, client, &vs("v2"), &[]).await;
    assert_eq!((s, flags.as_str()), (200, "-"));
    let want = [
        ("source_workload", "productpage-v1"),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("destination_workload", "reviews-v2"),
        ("destination_version", "v2"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("request_protocol", "http"),
        ("response_code", "200"),
    ];
    let source: Vec<_> =
        want.iter().copied().chain([("reporter", "source"), ("connection_security_policy", "unknown")]).collect();
    let dest: Vec<_> =
        want.iter().copied().chain([("reporter", "destination"), ("connection_security_policy", "none")]).collect();
    // The destination series is recorded with the source one (same drop).
    assert_eq!(state.metrics.get("istio_requests_total", &source), 1);
    assert_eq!(state.metrics.get("istio_requests_total", &dest), 1);
    assert_eq!(state.metrics.get("istio_request_duration_milliseconds_count", &source), 1);
    assert!(state.metrics.get("istio_response_bytes_sum", &source) > 20, "head and body counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_nr() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - match:\n    - headers:\n        end-user: {exact: jason}\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, state) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (404, "NR"));
    // The proxy answered: no server-side series.
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "destination")]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_subset_is_uh() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = format!("{}  - {{name: v3, labels: {{version: v3}}}}\n", DR) + &vs("v3")[DR.len()..];
    let (s, flags, _) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (503, "UH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_is_fi_and_fault_delay_is_di() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - fault:\n      abort:\n        percentage: {value: 100.0}\n        httpStatus: 500\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, _) = one_request_flags(registry.clone(), reviews.clone(), client.clone(), &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (500, "FI"));
    let yaml = vs_rule("  - fault:\n      delay:\n        percentage: {value: 100.0}\n        fixedDelay: 1ms\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, _) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (200, "DI"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_on_5xx_is_urx() {
    // v1 answers every request with 503.
    let (registry, reviews, client, h1, _) = setup(usize::MAX).await;
    let yaml = vs_rule(
        "  - retries: {attempts: 2, retryOn: 5xx}\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    let (s, flags, state) = one_request_flags(registry, reviews, client, &yaml, &[]).await;
    assert_eq!((s, flags.as_str()), (503, "URX"));
    assert_eq!(h1.load(Ordering::SeqCst), 3);
    // The endpoint's own answer: the server side reports its 503 without the client's flags.
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "destination"), ("response_flags", "-")]), 1);
}

#[tokio::test(start_paused = true)]
async fn route_timeout_is_ut() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - timeout: 100ms\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let (s, flags, _) = one_request_flags(registry, reviews, client, &yaml, &[("x-hold", "1")]).await;
    assert_eq!((s, flags.as_str()), (504, "UT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_uf_and_closed_connection_is_uc() {
    // v1's address with nothing listening: connect refused.
    let (mut registry, reviews, client, _, _) = setup(0).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    registry.workloads[0] = workload("reviews-v1", &[("app", "reviews"), ("version", "v1")], dead);
    let (s, flags, _) = one_request_flags(registry, reviews, client, &vs("v1"), &[]).await;
    // Istio's default retry policy retries connect failures (2 attempts): both refused, so
    // Envoy's "UF,URX", as an Istio access log shows it.
    assert_eq!((s, flags.as_str()), (503, "UF,URX"));

    // v1 accepts and closes every connection without answering.
    let (mut registry, reviews, client, _, _) = setup(0).await;
    let closer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closer.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = closer.accept().await {
            drop(s);
        }
    });
    registry.workloads[0] = workload("reviews-v1", &[("app", "reviews"), ("version", "v1")], port);
    let (s, flags, _) = one_request_flags(registry, reviews, client, &vs("v1"), &[]).await;
    assert_eq!((s, flags.as_str()), (503, "UC"));
}

// Paused clock: the client waits 100 ms of a 5 s injected delay before leaving; nothing else
// runs, so the proxy is in the delay when the client closes.
#[tokio::test(start_paused = true)]
async fn a_client_leaving_during_an_injected_delay_is_dc_with_code_0() {
    use tokio::io::AsyncWriteExt as _;
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - fault:\n      delay:\n        percentage: {value: 100.0}\n        fixedDelay: 5s\n    route:\n    - destination: {host: reviews, subset: v2}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nend-user: jason\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state.metrics.get("istio_requests_total", &[]), 0, "nothing recorded while in flight");
    drop(c);
    let flags = recorded_flags(&state, &[("response_code", "0"), ("destination_service_name", "reviews")]).await;
    assert_eq!(flags, "DI,DC");
    assert_eq!(state.metrics.get("istio_requests_total", &[]), 1, "one series, the client's side only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_off_records_no_istio_series_and_can_be_turned_back_on() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    state.request_metrics.store(false, Ordering::Relaxed);
    let addr = front(state.clone(), reviews, client).await;
    assert_eq!(get(addr, &[]).await.0, 200);
    // A request is recorded before its last byte is written: had it been, it would show now.
    assert_eq!(state.metrics.get("istio_requests_total", &[]), 0);
    state.request_metrics.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, &[]).await.0, 200);
    assert_eq!(state.metrics.get("istio_requests_total", &[("reporter", "source")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_a_text_line_per_request_and_json_when_switched() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v2"), &registry), Arc::new(NoOriginalDst));
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client).await;
    // Off by default: this request writes nothing (the next line read is the next request's).
    assert_eq!(get(addr, &[("x-request-id", "r-0")]).await.0, 200);

    state.access_log.set_mode(access_log::AccessLogMode::Text);
    let (s, body, _) = get(addr, &[("x-request-id", "r-1"), ("user-agent", "curl/8")]).await;
    assert_eq!(s, 200);
    let line = next_line(&mut lines).await;
    // [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS RECEIVED SENT DURATION UPSTREAM_TIME
    // "XFF" "UA" "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST"
    let re = regex::Regex::new(
        r#"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /reviews/0 HTTP/1\.1" 200 - 0 (\d+) \d+ \d+ "-" "curl/8" "r-1" "reviews:9080" "127\.0\.0\.1:\d+"$"#,
    )
    .expect("regex");
    let caps = re.captures(&line).unwrap_or_else(|| panic!("not Envoy's default format: {line}"));
    assert_eq!(caps[1].parse::<usize>().expect("bytes"), body.len(), "{line}");

    state.access_log.set_mode(access_log::AccessLogMode::Json);
    assert_eq!(get(addr, &[("x-request-id", "r-2")]).await.0, 200);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "r-2", "{line}");
    assert_eq!(v["response_code"], 200, "{line}");
    assert_eq!(v["response_flags"], "-", "{line}");
    assert_eq!(v["method"], "GET", "{line}");
    assert_eq!(v["upstream_cluster"], "outbound|9080|v2|reviews.default.svc.cluster.local", "{line}");
    assert_eq!(state.metrics.get("mesh_access_log_dropped_total", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_overrides_turn_the_access_log_on_or_off_per_source_pod() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v2"), &registry), Arc::new(NoOriginalDst));
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client.clone()).await;
    let set = |on: bool| {
        let mut m = access_log::WorkloadOverrides::new();
        m.entry(client.namespace.clone()).or_default().insert(client.name.clone(), on.into());
        state.access_log.set_overrides(Some(m));
    };
    // The flag is off; a Telemetry turns the log on for this pod: Envoy's text format.
    set(true);
    assert_eq!(get(addr, &[("x-request-id", "t-1")]).await.0, 200);
    let line = next_line(&mut lines).await;
    assert!(line.starts_with('[') && line.contains("\"t-1\""), "{line}");
    // The flag says JSON; a Telemetry turns it off for this pod: nothing, until it is gone.
    state.access_log.set_mode(access_log::AccessLogMode::Json);
    set(false);
    assert_eq!(get(addr, &[("x-request-id", "t-2")]).await.0, 200);
    state.access_log.set_overrides(None);
    assert_eq!(get(addr, &[("x-request-id", "t-3")]).await.0, 200);
    let line = next_line(&mut lines).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "t-3", "t-2 must not be logged: {line}");
}

/// A Telemetry `filter` decides per request: a line only where the CEL expression is true over
/// Envoy's attributes (the response code, a request header); an attribute the proxy does not
/// have makes it false. Fails when the filter is ignored (every request would have a line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_filter_expressions_choose_the_requests_logged() {
    // reviews-v1 answers its first request with a 503.
    let (registry, reviews, client, _, _) = setup(1).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client.clone()).await;
    let set = |expr: Option<&str>| {
        let filter = expr.map(|e| Arc::new(access_log::LogFilter::compile(e).expect("parses")));
        let mut m = access_log::WorkloadOverrides::new();
        m.entry(client.namespace.clone()).or_default().insert(client.name.clone(), access_log::PodLog::On(filter));
        state.access_log.set_overrides(Some(m));
    };
    set(Some("response.code >= 400 || request.headers['x-log'] == 'yes'"));
    assert_eq!(get(addr, &[("x-request-id", "f-1")]).await.0, 503);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\" 503 ") && line.contains("\"f-1\""), "{line}");
    // A 200 without the header: no line.
    assert_eq!(get(addr, &[("x-request-id", "f-2")]).await.0, 200);
    assert_eq!(get(addr, &[("x-request-id", "f-3"), ("x-log", "yes")]).await.0, 200);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"f-3\""), "f-2 must not be logged: {line}");
    // Envoy's other attributes, as this request saw them.
    set(Some(
        "request.method == 'GET' && request.url_path == '/reviews/0' && request.host == 'reviews:9080' && \
         upstream.address.startsWith('127.0.0.1:') && xds.cluster_name.startsWith('outbound|9080|v1|reviews') && \
         response.flags == 0 && source.port > 0 && request.id == 'f-4' && request.headers['x-request-id'] == 'f-4' && \
         response.headers['content-length'] != ''",
    ));
    assert_eq!(get(addr, &[("x-request-id", "f-4")]).await.0, 200);
    assert!(next_line(&mut lines).await.contains("\"f-4\""));
    // No duration type here: an expression reading one errors, and errors are false (Envoy).
    set(Some("request.duration > duration('0s') || !(request.duration > duration('0s'))"));
    assert_eq!(get(addr, &[("x-request-id", "f-5")]).await.0, 200);
    set(None);
    assert_eq!(get(addr, &[("x-request-id", "f-6")]).await.0, 200);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"f-6\""), "f-5 must not be logged: {line}");
}

// Paused clock, as in the DC metrics test: the client leaves 100 ms into a 5 s delay.
#[tokio::test(start_paused = true)]
async fn access_log_records_an_abandoned_request_with_code_0_and_dc() {
    use tokio::io::AsyncWriteExt as _;
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule("  - fault:\n      delay:\n        percentage: {value: 100.0}\n        fixedDelay: 5s\n    route:\n    - destination: {host: reviews, subset: v2}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    state.access_log.set_mode(access_log::AccessLogMode::Text);
    let mut lines = access_log_lines(&state);
    let addr = front(state.clone(), reviews, client).await;
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nx-request-id: gone\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    let line = next_line(&mut lines).await;
    assert!(line.contains("\"GET /reviews/0 HTTP/1.1\" 0 DI,DC 0 0 100 - "), "{line}");
    assert!(line.contains("\"gone\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_are_grpc_with_the_status_from_the_trailers() {
    let (addr, state) = greeter_proxy_state(AppProtocol::Http2, "{}").await;
    assert_eq!(call(addr, true).await.1.as_deref(), Some("0"));
    let flags = recorded_flags(&state, &[("request_protocol", "grpc"), ("grpc_response_status", "0")]).await;
    assert_eq!(flags, "-");
    assert_eq!(state.metrics.get("istio_requests_total", &[("request_protocol", "http")]), 0);
}

/// The drain counts a connection from the moment its listener accepts it, not from when its
/// task first runs: a drain that starts in between (a handover's, just after an accept) waits
/// for it rather than finding nothing in flight and letting the agent exit with it unanswered.
#[tokio::test(flavor = "current_thread")]
async fn drain_waits_for_a_connection_accepted_just_before_it() {
    let drain = Arc::new(crate::drain::Drain::default());
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d, s) = (drain.clone(), served.clone());
    let listener = tokio::spawn(async move {
        accept_until_drain(l, "test", &d, |stream, _, in_flight| {
            // The drain starts before the connection's task has run at all.
            d.start();
            let s = s.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                drop(stream);
                s.store(true, Ordering::SeqCst);
                drop(in_flight);
            });
        })
        .await
    });
    // The agent's side, a task like the connection's (the test's own future is polled after
    // the runtime's tasks, which would hide the order this is about).
    let agent = tokio::spawn({
        let drain = drain.clone();
        async move {
            drain.signaled().await;
            drain.wait_idle(Duration::from_secs(5)).await
        }
    });
    let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(agent.await.expect("agent task"), 0, "drained");
    assert!(served.load(Ordering::SeqCst), "the drain ended before the connection accepted before it");
    listener.await.expect("listener task");
}
