//! The mesh's telemetry read back by a real Prometheus server, as a user's dashboards would read
//! it: the local-node Bookinfo (one agent), Debian's `prometheus` scraping the agent's admin port
//! every second, and the queries of the issue and of Istio's Grafana dashboards.
//!
//! Every check polls its query until the expected value or a deadline (the server scrapes and
//! evaluates every second); none sleeps a fixed time.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use mesh_e2e::{
    bookinfo::*,
    prometheus::{self, Prometheus, Sample},
    require, require_ebpf, workspace,
};

/// productpage's calls to reviews, as the issue's queries select them.
const PP_TO_REVIEWS: &str = r#"destination_service_name="reviews",source_workload="productpage-v1""#;

/// Extra routing files next to the seed ones: the `reviews` DestinationRule with a subset `v4`
/// whose labels match no pod, and jason routed to it (everyone else to v1).
fn write_networking() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join("mesh-e2e-telemetry-networking");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(workspace().join("deploy/bookinfo/networking"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    let dr = std::fs::read_to_string(dir.join("destination-rule-all.yaml"))?;
    let v3 = "  - name: v3\n    labels:\n      version: v3\n";
    if !dr.contains(v3) {
        bail!("destination-rule-all.yaml no longer has reviews' subset v3 as this test expects:\n{dr}");
    }
    std::fs::write(
        dir.join("destination-rule-all-v4.yaml"),
        dr.replacen(v3, &format!("{v3}  - name: v4\n    labels:\n      version: v4\n"), 1),
    )?;
    let vs = std::fs::read_to_string(dir.join("virtual-service-reviews-test-v2.yaml"))?;
    if !vs.contains("subset: v2") {
        bail!("virtual-service-reviews-test-v2.yaml no longer routes jason to subset v2:\n{vs}");
    }
    std::fs::write(dir.join("virtual-service-reviews-jason-v4.yaml"), vs.replacen("subset: v2", "subset: v4", 1))?;
    Ok(dir)
}

fn step(name: &str) -> &'static Step {
    STEPS.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name}"))
}

/// Loads `n` pages through the gateway as `user`, failing on a load that did not complete.
fn load(bk: &Bookinfo, n: usize, user: Option<&str>) -> Result<Tally> {
    bk.load_pages(n, user, true, &mut |_| {})
}

/// `{label value: sample value}` of `samples` by `label`, summed.
fn by(samples: &[Sample], label: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for s in samples {
        *m.entry(s.label(label).to_owned()).or_insert(0.0) += s.value;
    }
    m
}

#[test]
fn prometheus_reads_back_bookinfo() -> Result<()> {
    if !require_ebpf("prometheus_reads_back_bookinfo")
        || !require("prometheus_reads_back_bookinfo", prometheus::unavailable())
    {
        return Ok(());
    }
    let networking = write_networking()?;
    let mut bk = Bookinfo::start_with(&networking, step("jason-v2").files)?;
    let prom = Prometheus::start(ADMIN.parse()?)?;
    let agent_log = |bk: &Bookinfo| {
        let log = bk.node.log("agent");
        let lines: Vec<&str> = log.lines().collect();
        format!("\nagent log (tail):\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    };
    let ctx = |bk: &Bookinfo| format!("{}\n{}", agent_log(bk), prom.log_tail());
    let within = Duration::from_secs(20);

    // The harness itself: what Prometheus scraped is what the admin port serves.
    let reloads = bk.reloads("applied");
    prom.wait_for("sum(mesh_config_reloads_total{result=\"applied\"})", within, |s| {
        s.len() == 1 && s[0].value == reloads as f64
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;

    // --- 5. jason -> v2. -----------------------------------------------------------------------
    // `increase()` does not count what a series held at its first scrape, so each version's
    // series is created (one load each) and scraped before the loads that are counted.
    let raw = format!("sum by (reporter, destination_version) (istio_requests_total{{{PP_TO_REVIEWS}}})");
    load(&bk, 1, None)?;
    load(&bk, 1, Some("jason"))?;
    let primed = prom
        .wait_for(&raw, within, |s| {
            let v = |ver: &str| s.iter().filter(|x| x.label("destination_version") == ver).count();
            v("v1") > 0 && v("v2") > 0 && s.iter().all(|x| x.value == 1.0)
        })
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;
    // Istio counts a request once per reporting proxy (`reporter` source and/or destination);
    // every expected count below is per reporter.
    let reporters = by(&primed, "reporter").len();
    let (jason_n, anon_n) = (4, 2);
    let t = load(&bk, jason_n, Some("jason"))?;
    assert_eq!(t.count_reviews("v2"), jason_n, "{}", t.summary());
    let t = load(&bk, anon_n, None)?;
    assert_eq!(t.count_reviews("v1"), anon_n, "{}", t.summary());
    // The counters, exactly: one per page load per reporter, on the version the page showed.
    prom.wait_for(&raw, within, |s| {
        s.iter().all(|x| match x.label("destination_version") {
            "v1" => x.value == (1 + anon_n) as f64,
            "v2" => x.value == (1 + jason_n) as f64,
            _ => false,
        }) && s.len() == 2 * reporters
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;
    // The issue's query. `increase()` extrapolates each series' samples to the window's ends, by
    // up to 1.5 scrape intervals over the time the series has been sampled (S), so the sum reads
    // high, never low (the priming scrape is in the window until S = 60 s), and rounds to the
    // count once S > 3 × count seconds: 24 s for jason's 4 pages counted by 2 reporters.
    let issue_query = format!("sum by (destination_version) (increase(istio_requests_total{{{PP_TO_REVIEWS}}}[1m]))");
    let expect = BTreeMap::from([
        ("v1".to_owned(), (anon_n * reporters) as f64),
        ("v2".to_owned(), (jason_n * reporters) as f64),
    ]);
    prom.wait_for(&issue_query, Duration::from_secs(55), |s| {
        let got = by(s, "destination_version");
        got.len() == expect.len() && expect.iter().all(|(k, v)| got.get(k).is_some_and(|g| g.round() == *v))
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\nexpected {expect:?}\n{}", ctx(&bk)))?;

    // --- 6. The delay: jason's calls to reviews are delayed 7 s and cut by productpage at 3 s,
    // twice per page. The histogram's window must hold only those calls for its median to be
    // theirs: wait until step 5's v2 calls have left the 1 m window.
    let v2_recent = format!("sum(increase(istio_requests_total{{{PP_TO_REVIEWS},destination_version=\"v2\"}}[1m]))");
    prom.wait_for(&v2_recent, Duration::from_secs(75), |s| s.iter().all(|x| x.value == 0.0))
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;
    bk.apply(step("jason-delay").files)?;
    let jason_delayed = 2;
    let t = load(&bk, jason_delayed, Some("jason"))?;
    assert_eq!(t.count_reviews("unavailable"), jason_delayed, "{}", t.summary());
    let t = load(&bk, 4, None)?;
    assert_eq!(t.count_reviews("v3"), 4, "{}", t.summary());
    // Every abandoned call counted, as Envoy counts it: response code 0, flag DC.
    let dc = format!(
        "sum by (reporter, response_code, response_flags) (istio_requests_total{{{PP_TO_REVIEWS},response_flags=~\".*DC.*\"}})"
    );
    let dc_samples = prom
        .wait_for(&dc, within, |s| {
            !s.is_empty()
                && s.iter().all(|x| x.label("response_code") == "0")
                && by(s, "reporter").values().all(|v| *v == (2 * jason_delayed) as f64)
        })
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;
    // The median of jason's calls reads at least what productpage waited: 3 s of the 7 s delay.
    // Jason's calls are those not answered by v1 or v3: routed to v2, they carry v2 or, cut
    // before an endpoint was picked, Istio's "unknown"; step 5's v2 calls have left the window.
    let p50 = format!(
        "histogram_quantile(0.5, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{PP_TO_REVIEWS},destination_version!~\"v1|v3\"}}[1m])))"
    );
    prom.wait_for(&p50, within, |s| s.len() == 1 && s[0].value >= 3000.0)
        .map_err(|e| anyhow::anyhow!("{e:#}\nDC series: {dc_samples:?}\n{}", ctx(&bk)))?;
    // What a dashboard's flag breakdown shows for the window.
    let flags = format!("sum by (response_flags) (increase(istio_requests_total{{{PP_TO_REVIEWS}}}[1m]))");
    prom.wait_for(&flags, within, |s| s.iter().any(|x| x.label("response_flags").contains("DC") && x.value > 0.0))
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;

    // --- Istio's Grafana dashboards, while Bookinfo serves traffic over every version.
    bk.apply(&["bookinfo-gateway.yaml", "destination-rule-all.yaml"])?;
    dashboards(&prom).map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;

    // --- An empty subset: jason's calls to reviews go to subset v4, which no pod matches; the
    // mesh answers 503 (productpage tries twice), flagged as Envoy flags it: UH (no healthy
    // upstream) or NR (no route).
    bk.apply(&[
        "bookinfo-gateway.yaml",
        "destination-rule-all-v4.yaml",
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-jason-v4.yaml",
    ])?;
    let empty_n = 2;
    let t = load(&bk, empty_n, Some("jason"))?;
    assert_eq!(t.count_reviews("unavailable"), empty_n, "{}", t.summary());
    let uh =
        format!("sum by (reporter, response_flags) (istio_requests_total{{{PP_TO_REVIEWS},response_code=\"503\"}})");
    prom.wait_for(&uh, within, |s| {
        !s.is_empty()
            && s.iter().all(|x| matches!(x.label("response_flags"), "UH" | "NR"))
            && by(s, "reporter").values().all(|v| *v == (2 * empty_n) as f64)
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx(&bk)))?;
    Ok(())
}

/// The request volume, success rate and duration panels of Istio's Service and Workload
/// dashboards (tests/dashboards/istio-dashboard-queries.json, verbatim from istio/istio), with
/// the template variables set for Bookinfo, each returning data while page loads run.
fn dashboards(prom: &Prometheus) -> Result<()> {
    let file = workspace().join("tests/dashboards/istio-dashboard-queries.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let vars = &doc["bookinfo"];
    let one = |k: &str| vars[k].as_str().map(str::to_owned).with_context(|| format!("{k} in {}", file.display()));
    let list = |k: &str| -> Result<Vec<String>> {
        Ok(vars[k]
            .as_array()
            .with_context(|| k.to_string())?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    };
    let mut queries = Vec::new();
    for panel in doc["panels"].as_array().context("panels")? {
        let expr = panel["expr"].as_str().context("expr")?;
        let name = format!(
            "{} / {} {}",
            panel["dashboard"].as_str().unwrap_or_default(),
            panel["panel"].as_str().unwrap_or_default(),
            panel["legend"].as_str().unwrap_or_default()
        );
        let mut fixed = expr.to_owned();
        for k in ["$qrep", "$namespace", "$srcwl", "$srcns", "$dstsvc", "$__rate_interval"] {
            fixed = fixed.replace(k, &one(k)?);
        }
        // One query per Bookinfo service or workload the panel is about; the workload
        // dashboard's outgoing panels only for the workloads that call another service.
        if fixed.contains("$service") {
            for s in list("$service")? {
                queries.push((format!("{name} [{s}]"), fixed.replace("$service", &s)));
            }
        } else if fixed.contains("$workload") {
            let outgoing = panel["panel"].as_str().unwrap_or_default().starts_with("Outgoing");
            for w in list("$workload")? {
                if outgoing && !["productpage-v1", "reviews-v2", "reviews-v3"].contains(&w.as_str()) {
                    continue;
                }
                queries.push((format!("{name} [{w}]"), fixed.replace("$workload", &w)));
            }
        } else {
            queries.push((name, fixed));
        }
    }
    if queries.len() < 20 {
        bail!("only {} dashboard queries in {}", queries.len(), file.display());
    }

    // Page loads through the gateway for the whole check: `irate` reads the last two samples.
    let stop = Arc::new(AtomicBool::new(false));
    let loads = Arc::new(AtomicUsize::new(0));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], GATEWAY_PORT));
    let loader = {
        let (stop, loads) = (stop.clone(), loads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if page_load(addr, None).is_ok_and(|l| l.status == 200) {
                    loads.fetch_add(1, Ordering::Relaxed);
                }
                // Paced (about 50 pages/s): a steady load for `irate`, not a saturating one on a
                // machine other tests and builds share.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut result = Ok(());
    for (name, q) in &queries {
        // Data: at least one series reading a number above zero (a per-destination panel may
        // also hold a series whose rate is 0 now, or whose quantile over no observations is NaN).
        let checked =
            prom.wait_for(q, Duration::from_secs(20), |s| s.iter().any(|x| x.value.is_finite() && x.value > 0.0));
        match checked {
            Ok(s) => println!("{name}: {}", s.iter().map(|x| format!("{:.4}", x.value)).collect::<Vec<_>>().join(", ")),
            Err(e) => {
                result = Err(anyhow::anyhow!("dashboard query {name} returned no data: {e:#}"));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = loader.join();
    println!("{} dashboard queries answered during {} page loads", queries.len(), loads.load(Ordering::Relaxed));
    result
}
