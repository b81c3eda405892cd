//! Routing on the wire: subsets, header matches, faults, retries, timeouts, rewrites,
//! redirects, mirrors, request ids, and config reloads racing requests.
use super::fixtures::*;

// Paused clock: the only timer while jason's request waits is the fault delay, so the time it
// takes is the configured delay, not "at least" it (a real clock would need a loose upper bound).
#[tokio::test(start_paused = true)]
async fn header_route_and_delay_fault_apply_to_jason_only() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = format!(
        "{DR}---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    fault:\n      delay:\n        percentage:\n          value: 100.0\n        fixedDelay: 300ms\n    route:\n    - destination: {{host: reviews, subset: v2}}\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n"
    );
    let routes = table(&yaml, &registry);
    let state = ProxyState::new(registry, routes, Arc::new(NoOriginalDst));
    let addr = front(state.clone(), reviews, client).await;
    let (s, body, took) = get(addr, &[("end-user", "jason")]).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("reviews-v2 end-user=jason"), "{body}");
    assert!(took >= Duration::from_millis(300), "delay not applied: {took:?}");
    assert!(took < Duration::from_millis(310), "delay longer than the configured 300ms: {took:?}");
    let (s, body, took) = get(addr, &[]).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("reviews-v1"), "{body}");
    assert!(took < Duration::from_millis(300), "delay applied to anonymous user: {took:?}");
    assert_eq!(
        state.metrics.get(
            "istio_requests_total",
            &[("reporter", "source"), ("destination_version", "v2"), ("response_code", "200")]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_reach_a_healthy_endpoint() {
    // v1 answers every request with 503, so only a retry sent to another endpoint can succeed.
    // The key is hashed (consistentHash): a retry that did not avoid the endpoint already tried
    // would land on v1 again, as round robin would hide by moving on anyway.
    let (registry, reviews, client, h1, h2) = setup(usize::MAX).await;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    // 16 keys: each hashes to v1 or v2; the chance that none is on v1 is 2^-16.
    for i in 0..16 {
        let user = format!("u{i}");
        let (s, body, _) = get(addr, &[("x-user", &user)]).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("reviews-v2"), "answered by {body}");
    }
    let (v1, v2) = (h1.load(Ordering::SeqCst), h2.load(Ordering::SeqCst));
    assert!(v1 >= 1, "no key hashed to v1: the retry path was not exercised");
    assert_eq!(v2, 16, "v2 answers every request exactly once");
    assert!(v1 <= 16, "v1 tried more than once per request: {v1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_without_endpoints_is_a_503_naming_it() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = format!("{}  - {{name: v3, labels: {{version: v3}}}}\n", DR) + &vs("v3")[DR.len()..];
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, _) = get(addr, &[]).await;
    assert_eq!(s, 503);
    assert!(body.contains("no healthy upstream") && body.contains("v3"), "{body}");
}

/// A config directory holding `yaml`, as the agent's `--config` would.
fn config_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("reviews.yaml"), yaml).expect("write config");
    dir
}

/// Loads `dir` and applies it through the agent's reload path (parse, compile, swap).
fn reload(state: &ProxyState, dir: &tempfile::TempDir) {
    let config =
        Config::load_dir(dir.path()).unwrap_or_else(|e| panic!("config in {} rejected: {e}", dir.path().display()));
    let registry = state.registry.load_full();
    assert!(crate::reload::apply_config(state, &mut crate::admission::Admission::default(), config, &registry));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_race_loses_no_request() {
    const RELOADS: usize = 200;
    let (registry, reviews, client, _, _) = setup(0).await;
    let v1 = v1_addr(&registry);
    let dirs = [config_dir(&vs("v1")), config_dir(&vs("v2"))];
    let state = ProxyState::new(registry, RouteTable::kubernetes_only(&Registry::default()), Arc::new(NoOriginalDst));
    reload(&state, &dirs[0]);
    let addr = front(state.clone(), reviews, client).await;

    // Held at the v1 backend across every reload below; must still be answered by v1.
    let held = tokio::spawn(get(addr, &[("x-hold", "1")]));
    arrived(v1, 1).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (done, completed) = (done.clone(), completed.clone());
        clients.push(tokio::spawn(async move {
            let (mut bad, mut seen) = (Vec::new(), [0usize; 2]);
            while !done.load(Ordering::SeqCst) {
                let (s, body, _) = get(addr, &[]).await;
                match (s, body.split(' ').next()) {
                    (200, Some("reviews-v1")) => seen[0] += 1,
                    (200, Some("reviews-v2")) => seen[1] += 1,
                    _ => bad.push((s, body)),
                }
                completed.fetch_add(1, Ordering::SeqCst);
            }
            (bad, seen)
        }));
    }
    // Every reload waits for a request to complete after the previous one, so requests are in
    // flight across all of them; the clients run until the last has been applied.
    for i in 0..RELOADS {
        let before = completed.load(Ordering::SeqCst);
        reload(&state, &dirs[(i + 1) % 2]);
        while completed.load(Ordering::SeqCst) == before {
            tokio::task::yield_now().await;
        }
    }
    done.store(true, Ordering::SeqCst);
    let (mut bad, mut seen) = (Vec::new(), [0usize; 2]);
    for c in clients {
        let (b, s) = c.await.expect("client");
        bad.extend(b);
        seen[0] += s[0];
        seen[1] += s[1];
    }
    assert!(bad.is_empty(), "requests failed during reloads: {bad:?}");
    assert!(seen[0] > 0 && seen[1] > 0, "both subsets must be served across the reloads: {seen:?}");
    assert!(seen[0] + seen[1] >= RELOADS, "{seen:?}");
    assert_eq!(state.metrics.get("mesh_config_reloads_total", &[("result", "applied")]), RELOADS as u64 + 1);

    // The held request was routed before the first reload: it finishes on v1.
    hold(v1).release.add_permits(1);
    let (s, body, _) = held.await.expect("held request");
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("reviews-v1"), "{body}");
}

// Paused clock: the delayed request's 1 s fault delay is the only timer, so the reload below
// happens while it waits, after it was routed (virtual time, no race with a real clock).
#[tokio::test(start_paused = true)]
async fn a_delayed_request_finishes_on_the_route_table_it_started_with() {
    let (registry, reviews, client, h1, h2) = setup(0).await;
    let delayed_to_v1 = format!(
        "{DR}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - fault:\n      delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}\n    route:\n    - destination: {{host: reviews, subset: v1}}\n"
    );
    let dirs = [config_dir(&delayed_to_v1), config_dir(&vs("v2"))];
    let state = ProxyState::new(registry, RouteTable::kubernetes_only(&Registry::default()), Arc::new(NoOriginalDst));
    reload(&state, &dirs[0]);
    let addr = front(state.clone(), reviews, client).await;
    let delayed = tokio::spawn(get(addr, &[]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 0, "the delayed request is still waiting");
    reload(&state, &dirs[1]);
    // New requests take the new table at once (v2, no delay)...
    let (s, body, took) = get(addr, &[]).await;
    assert_eq!((s, body.split(' ').next()), (200, Some("reviews-v2")), "{body}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // ...the one routed before the reload keeps its route: v1 after its 1 s delay.
    let (s, body, took) = delayed.await.expect("delayed request");
    assert_eq!((s, body.split(' ').next()), (200, Some("reviews-v1")), "{body}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1010), "{took:?}");
}

/// The value of header `name` as the backend saw it (the lines after the first of its answer).
fn seen_header<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines().skip(1).find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

// Paused clock: the held request never answers, so the route timeout (or each per-try timeout)
// is the only timer and the time to the 504 is exactly what is configured.
#[tokio::test(start_paused = true)]
async fn route_timeout_and_per_try_timeout_on_the_wire() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let v1 = v1_addr(&registry);
    let yaml = vs_rule("  - timeout: 500ms\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, took) = get(addr, &[("x-hold", "1")]).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("upstream request timeout"), "{body}");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(510), "{took:?}");
    arrived(v1, 1).await;

    // perTryTimeout 100ms, 2 retries: 3 tries reach the backend, each cut at 100 ms, plus
    // Envoy's jittered back-off between them (at most 50 + 100 ms).
    let (registry, reviews, client, _, _) = setup(0).await;
    let v1 = v1_addr(&registry);
    let yaml = vs_rule("  - retries: {attempts: 2, perTryTimeout: 100ms, retryOn: 5xx}\n    route:\n    - destination: {host: reviews, subset: v1}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, took) = get(addr, &[("x-hold", "1")]).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("per-try timeout"), "{body}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(460), "{took:?}");
    arrived(v1, 3).await;
    assert_eq!(hold(v1).arrived.available_permits(), 0, "more than 3 tries");
}

// Paused clock, as above: an HTTPRoute `retry` retries a try cut by `backendRequest` (the spec's
// "retry on ... timeout"), and waits at least `backoff` before each retry, doubling.
#[tokio::test(start_paused = true)]
async fn httproute_retry_backoff_and_backend_request_timeout_on_the_wire() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews}]\n  rules:\n  - retry: {attempts: 2, backoff: 100ms}\n    timeouts: {backendRequest: 50ms}\n    backendRefs: [{name: reviews, port: 9080}]\n";
    let state = ProxyState::new(registry.clone(), table(yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, took) = get(addr, &[("x-hold", "1")]).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("per-try timeout"), "{body}");
    // 3 tries of 50 ms, back-offs in [100, 200] and [200, 400] ms.
    assert!(took >= Duration::from_millis(450) && took <= Duration::from_millis(760), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_and_header_edits_as_the_backend_and_client_see_them() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let yaml = vs_rule(
        "  - match:\n    - uri: {prefix: /reviews}\n    rewrite: {uri: /v2/reviews, authority: reviews.internal}\n    headers:\n      request:\n        set: {x-set: s}\n        add: {x-add: a}\n        remove: [x-drop]\n      response:\n        set: {x-resp: r}\n        remove: [x-backend]\n    route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, headers, body, _) = get_full(addr, "/reviews/0?x=1", &[("x-drop", "1"), ("x-set", "client")]).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("reviews-v1"), "{body}");
    // Only the matched prefix is replaced; the query stays.
    assert_eq!(seen_header(&body, "path"), Some("/v2/reviews/0?x=1"), "{body}");
    assert_eq!(seen_header(&body, "host"), Some("reviews.internal"), "{body}");
    assert_eq!(seen_header(&body, "x-set"), Some("s"), "set replaces the client's value: {body}");
    assert_eq!(seen_header(&body, "x-add"), Some("a"), "{body}");
    assert_eq!(seen_header(&body, "x-drop"), None, "{body}");
    assert_eq!(headers.get("x-resp").map(|v| v.as_bytes()), Some(&b"r"[..]), "{headers:?}");
    assert!(headers.get("x-backend").is_none(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_is_answered_by_the_proxy() {
    let (registry, reviews, client, h1, h2) = setup(0).await;
    let yaml = vs_rule(
        "  - match:\n    - uri: {prefix: /reviews}\n    redirect: {uri: /new, authority: newhost, redirectCode: 302}\n",
    );
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, headers, body, _) = get_full(addr, "/reviews/0", &[]).await;
    assert_eq!(s, 302, "{body}");
    assert_eq!(headers.get("location").map(|v| v.as_bytes()), Some(&b"http://newhost/new"[..]), "{headers:?}");
    assert_eq!(h1.load(Ordering::SeqCst) + h2.load(Ordering::SeqCst), 0, "a redirect reaches no backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_shadow_copy_to_the_mirror_subset() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let v2 = registry
        .workloads
        .iter()
        .find(|w| w.labels.get("version").map(String::as_str) == Some("v2"))
        .map(|w| SocketAddr::from((w.ip.expect("ip"), w.container_ports[0].port)))
        .expect("v2 pod");
    let yaml = vs_rule("  - route:\n    - destination: {host: reviews, subset: v1}\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 100}\n");
    let state = ProxyState::new(registry.clone(), table(&yaml, &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let (s, body, _) = get(addr, &[("end-user", "jason")]).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("reviews-v1"), "the client gets the primary's answer: {body}");
    let mirror = hold(v2);
    let got = tokio::time::timeout(Duration::from_secs(10), mirror.received.acquire()).await;
    got.expect("mirror copy did not arrive").expect("semaphore").forget();
    let seen = hold(v2).seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let copy = format!("-\n{}", seen[0]);
    assert_eq!(seen_header(&copy, "path"), Some("/reviews/0"), "{copy}");
    assert_eq!(seen_header(&copy, "host"), Some("reviews-shadow:9080"), "{copy}");
    assert_eq!(seen_header(&copy, "end-user"), Some("jason"), "{copy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_is_generated_when_absent_and_kept_when_present() {
    let (registry, reviews, client, _, _) = setup(0).await;
    let state = ProxyState::new(registry.clone(), table(&vs("v1"), &registry), Arc::new(NoOriginalDst));
    let addr = front(state, reviews, client).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, body, _) = get(addr, &[]).await;
        assert_eq!(s, 200, "{body}");
        let id = seen_header(&body, "x-request-id").unwrap_or_else(|| panic!("no x-request-id: {body}")).to_owned();
        // A UUID: 8-4-4-4-12 hex digits.
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12], "{id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "every request gets its own id");
    let (_, body, _) = get(addr, &[("x-request-id", "abc-123")]).await;
    assert_eq!(seen_header(&body, "x-request-id"), Some("abc-123"), "{body}");
}
