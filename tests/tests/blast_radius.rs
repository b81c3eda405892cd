//! The routing ConfigMap is shared by every node: whatever a bad object does to one agent it does
//! to all of them. Here bad updates land in the watched directory one after another, each with a
//! good change to another object, while page loads run through the mesh at a fixed rate:
//! no request may fail, the agent process may never restart, every good change must take effect
//! and every bad object must be reported.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use mesh_e2e::{bookinfo::*, metric, require_ebpf, wait_until, workspace};

const RATE_INTERVAL: Duration = Duration::from_millis(20);

fn reviews_vs(subset: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n")
}

/// A VirtualService for ratings (the object that goes bad) with `http` as its rules.
fn ratings_vs(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n{http}")
}

#[test]
fn bad_routing_objects_never_cost_a_request() -> anyhow::Result<()> {
    if !require_ebpf("bad_routing_objects_never_cost_a_request") {
        return Ok(());
    }
    let dir = std::env::temp_dir().join("mesh-e2e-blast-radius");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for f in ["bookinfo-gateway.yaml", "destination-rule-all.yaml"] {
        std::fs::copy(workspace().join("deploy/bookinfo/networking").join(f), dir.join(f))?;
    }
    for v in ["v1", "v2", "v3"] {
        std::fs::write(dir.join(format!("reviews-{v}.yaml")), reviews_vs(v))?;
    }
    let route = "  - route:\n    - destination: {host: ratings}\n";
    let alias_bomb = {
        let mut y = String::from("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, c) in ('b'..='j').enumerate() {
            let prev = (b'a' + i as u8) as char;
            y += &format!("  {c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n");
        }
        y
    };
    // (file, content, what the agent must say about it)
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "bad.yaml",
            ratings_vs("  - timeout: 99999999999999999999s\n    route:\n    - destination: {host: ratings}\n"),
            "out of range",
        ),
        (
            "bad.yaml",
            ratings_vs("  - timeout: 3000000000000000h\n    route:\n    - destination: {host: ratings}\n"),
            "out of range",
        ),
        ("bad.yaml", ratings_vs(route).replace("hosts: [ratings]", "hosts: [\"*\"]"), "wildcard host * is not allowed"),
        (
            "bad.yaml",
            ratings_vs(
                "  - match:\n    - uri: {regex: \"(unclosed\"}\n    route:\n    - destination: {host: ratings}\n",
            ),
            "regex",
        ),
        ("bad.yaml", ratings_vs(route).replace("networking.istio.io/v1", "networking.istio.io.v1"), "apiVersion"),
        (
            "bad.yaml",
            format!("{}    headers: {{request: {{set: {{x-pad: \"{}\"}}}}}}\n", ratings_vs(route), "p".repeat(5 << 20)),
            "larger than any Kubernetes object",
        ),
        ("bad.yaml", alias_bomb, "ratings"),
    ];
    // A VirtualService naming a subset whose DestinationRule arrives only in the next update
    // (kubectl apply -f dir/ in name order): accepted, and working once the rule lands.
    let details_vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: details}\nspec:\n  hosts: [details]\n  http:\n  - route:\n    - destination: {host: details, subset: v1}\n";
    let details_dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: details-extra}\nspec:\n  host: details\n  subsets:\n  - {name: v1, labels: {version: v1}}\n";
    std::fs::write(dir.join("details-vs.yaml"), details_vs)?;
    std::fs::write(dir.join("details-dr.yaml"), details_dr)?;
    // The seed's DestinationRules without the one for details.
    let all = std::fs::read_to_string(dir.join("destination-rule-all.yaml"))?;
    let without: Vec<&str> = all.split("\n---").filter(|d| !d.contains("name: details")).collect();
    std::fs::write(dir.join("dr-no-details.yaml"), without.join("\n---"))?;

    // The agent starts with a bad object present: it is rejected, the rest is served.
    std::fs::write(dir.join("bad.yaml"), &bad[0].1)?;
    let base = ["bookinfo-gateway.yaml", "destination-rule-all.yaml"];
    let mut bk = Bookinfo::start_with(&dir, &[base[0], base[1], "reviews-v1.yaml", "bad.yaml"])?;
    let pid = bk.node.pid("agent").expect("agent pid");
    wait_until("the first page served through the gateway", Duration::from_secs(10), || {
        page_load(([127, 0, 0, 1], GATEWAY_PORT).into(), None).is_ok_and(|p| p.status == 200)
    })?;
    let t = bk.load_pages(10, None, true, &mut |_| {})?;
    assert_eq!(t.count_reviews("v1"), 10, "served from the good objects at start: {}", t.summary());
    assert!(bk.node.log("agent").contains("out of range"), "the bad object at start is reported");
    // /config_dump says the same as the log: the bad object rejected with its error and no live
    // version, the good ones accepted with their file, the enrolled pods, the compiled clusters.
    let response = mesh_e2e::http_get("127.0.0.1:15020".parse()?, "/config_dump")?;
    let dump: serde_json::Value = serde_json::from_str(response.split_once("\r\n\r\n").map_or("", |(_, b)| b))?;
    let objects = dump["config"]["objects"].as_array().cloned().unwrap_or_default();
    let bad_object = objects.iter().find(|o| o["status"] == "rejected").expect("a rejected object in /config_dump");
    assert!(
        bad_object["errors"].to_string().contains("bad.yaml")
            && bad_object["errors"].to_string().contains("out of range"),
        "{bad_object}"
    );
    assert_eq!(bad_object["live_source"], serde_json::Value::Null, "{bad_object}");
    let reviews = objects
        .iter()
        .find(|o| o["kind"] == "VirtualService" && o["name"] == "reviews")
        .expect("reviews in /config_dump");
    assert_eq!(reviews["status"], "accepted");
    assert!(reviews["live_source"]["file"].as_str().is_some_and(|f| f.ends_with("reviews-v1.yaml")), "{reviews}");
    let pods = dump["pods"].as_array().cloned().unwrap_or_default();
    let productpage = pods.iter().find(|p| p["workload"] == "productpage-v1").expect("productpage enrolled");
    assert!(
        productpage["cgroup_id"].as_u64().is_some_and(|id| id > 0)
            && productpage["netns_cookie"].as_u64().is_some_and(|c| c > 0),
        "{productpage}"
    );
    let clusters = dump["clusters"].as_array().cloned().unwrap_or_default();
    assert!(
        clusters.iter().any(|c| c["subset"] == "v1"
            && c["service"] == "default/reviews"
            && c["endpoints"][0]["workload"] == "reviews-v1"),
        "reviews v1 cluster in {clusters:?}"
    );
    // `mesh explain --live` against this agent names the route and subset the offline explain
    // names for the same (good) objects: the rejected object is in neither.
    let explain = |extra: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(mesh_e2e::bin("mesh"))
            .arg("explain")
            .args(extra)
            .args(["--from", "productpage-v1", "--url", "http://reviews:9080/reviews/0", "-H", "end-user: jason"])
            .output()?;
        anyhow::ensure!(out.status.success(), "mesh explain {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let live = explain(&["--live", &format!("http://{ADMIN}")])?;
    let registry = workspace().join("deploy/bookinfo/local-registry.yaml");
    let mut offline_args = vec!["--registry".to_owned(), registry.display().to_string()];
    for f in [base[0], base[1], "reviews-v1.yaml"] {
        offline_args.extend(["--config".to_owned(), dir.join(f).display().to_string()]);
    }
    let offline = explain(&offline_args.iter().map(String::as_str).collect::<Vec<_>>())?;
    // The route's object, its destination and cluster: the lines that do not name a file (the
    // agent read the objects from its own ConfigMap directory).
    let named: Vec<&str> = offline
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("VirtualService reviews.default") || l.starts_with('→') || l.starts_with("cluster "))
        .map(|l| l.split(" (").next().unwrap_or(l))
        .collect();
    assert!(
        named.iter().any(|l| l.contains("subset v1"))
            && named.iter().any(|l| l.starts_with("cluster outbound|9080|v1|reviews.default.svc.cluster.local")),
        "offline explain:\n{offline}"
    );
    for l in &named {
        assert!(live.contains(l), "live explain lacks {l:?}:\n{live}\noffline:\n{offline}");
    }

    // A fixed-rate load through the gateway (productpage → reviews/details/ratings, all
    // redirected by the kernel into the node proxy) for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (stop, sent, failed, failures) = (stop.clone(), sent.clone(), failed.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut next = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let r = page_load(([127, 0, 0, 1], GATEWAY_PORT).into(), None);
                sent.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(p) if p.status == 200 && p.reviews != "unavailable" && p.stars != "unavailable" => {}
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{other:?}"));
                    }
                }
                next += RATE_INTERVAL;
                if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait); // pacing the load, not synchronisation
                }
            }
        })
    };

    for (i, (file, content, reported)) in bad.iter().enumerate() {
        // The good change in the same update: reviews moves to the next version.
        let good = ["v2", "v3", "v1"][i % 3];
        std::fs::write(dir.join(file), content)?;
        let before = bk.reloads("partial");
        bk.apply_rejected(&[base[0], base[1], &format!("reviews-{good}.yaml"), file])?;
        assert!(bk.reloads("partial") > before);
        let t = bk.load_pages(6, None, true, &mut |_| {})?;
        assert_eq!(t.count_reviews(good), 6, "update {i}: the good change took effect: {}", t.summary());
        let log = bk.node.log("agent");
        assert!(log.contains(reported), "update {i}: the bad object is reported ({reported:?}):\n{}", tail(&log));
        assert_eq!(bk.node.pid("agent"), Some(pid), "the agent never restarts");
        // The fixed-rate load runs through every update: wait for 10 more loads before the next.
        let at = sent.load(Ordering::Relaxed);
        wait_until("10 more page loads of the background load", Duration::from_secs(10), || {
            sent.load(Ordering::Relaxed) >= at + 10
        })?;
    }
    // Subset before its DestinationRule, then the rule.
    bk.apply(&[base[0], "dr-no-details.yaml", "reviews-v1.yaml", "details-vs.yaml"])?;
    let t = bk.load_pages(4, None, true, &mut |_| {})?;
    assert!(
        t.loads.iter().all(|l| l.status == 200),
        "productpage degrades gracefully without details: {}",
        t.summary()
    );
    assert!(bk.node.log("agent").contains("subset \"v1\" is not defined"), "warned");
    bk.apply(&[base[0], "dr-no-details.yaml", "reviews-v1.yaml", "details-vs.yaml", "details-dr.yaml"])?;
    let metrics = mesh_e2e::http_get("127.0.0.1:15020".parse()?, "/metrics")?;
    let before_details = metric(
        &metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service_name", "details"),
            ("destination_version", "v1"),
            ("response_code", "200"),
        ],
    );
    let t = bk.load_pages(4, None, true, &mut |_| {})?;
    assert_eq!(t.errors(), 0, "{}", t.summary());
    let metrics = mesh_e2e::http_get("127.0.0.1:15020".parse()?, "/metrics")?;
    let after_details = metric(
        &metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service_name", "details"),
            ("destination_version", "v1"),
            ("response_code", "200"),
        ],
    );
    assert!(
        after_details >= before_details + 4,
        "details v1 is served once its DestinationRule arrived: {before_details} → {after_details}"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent >= 7 * 10, "the load ran through every update: {sent} page loads");
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} page loads failed: {:?}",
        failures.lock().unwrap_or_else(|e| e.into_inner())
    );
    assert_eq!(bk.node.pid("agent"), Some(pid), "the agent never restarts");
    Ok(())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
