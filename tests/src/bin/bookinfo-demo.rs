//! `cargo xtask demo`: Istio's Bookinfo traffic-management walkthrough on a local node.
//!
//! Usage: bookinfo-demo [--api istio|gateway] [--step NAME] [--keep] [--loads-scale F]
use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use anyhow::{bail, Result};
use mesh_e2e::{
    bookinfo::*,
    prometheus::{self, Prometheus},
};

/// What the demo reads back from Prometheus after each step: productpage's calls to reviews by
/// the version that answered, as Istio's dashboards count them (one reporter, so a request
/// reported by both ends is not counted twice).
const REVIEWS_BY_VERSION: &str = "sum by (destination_version, response_code, response_flags) (istio_requests_total{destination_service_name=\"reviews\",source_workload=\"productpage-v1\",reporter=\"source\"})";
/// The same with HTTPRoutes: their backendRefs are the per-version Services, so the destination
/// service of a call is `reviews-v1`, `reviews-v2` or `reviews-v3`.
const REVIEWS_BY_VERSION_GATEWAY_API: &str = "sum by (destination_version, response_code, response_flags) (istio_requests_total{destination_service_name=~\"reviews|reviews-v[0-9]+\",source_workload=\"productpage-v1\",reporter=\"source\"})";

/// `(destination_version, response_code, response_flags)` -> count, from Prometheus.
type Calls = std::collections::BTreeMap<(String, String, String), f64>;

fn read_calls(p: &Prometheus, api: Api) -> Result<Calls> {
    let query = match api {
        Api::Istio => REVIEWS_BY_VERSION,
        Api::Gateway => REVIEWS_BY_VERSION_GATEWAY_API,
    };
    Ok(p.query(query)?
        .into_iter()
        .map(|s| {
            let key = |k: &str| s.label(k).to_owned();
            ((key("destination_version"), key("response_code"), key("response_flags")), s.value)
        })
        .collect())
}

/// `v1 40 (50.9/s)  unknown 8 (1.1/s; 8 × 0 DI,DC)`: the calls of a step by version, with the
/// answers other than a plain 200 spelled out (response code and Envoy's flags).
fn describe_calls(before: &Calls, after: &Calls, secs: f64) -> String {
    let mut by_version = std::collections::BTreeMap::<&str, (f64, Vec<String>)>::new();
    for ((version, code, flags), n) in after {
        let d = n - before.get(&(version.clone(), code.clone(), flags.clone())).copied().unwrap_or(0.0);
        if d <= 0.0 {
            continue;
        }
        let e = by_version.entry(version).or_default();
        e.0 += d;
        if code != "200" || flags != "-" {
            e.1.push(format!("{d:.0} × {code} {flags}"));
        }
    }
    if by_version.is_empty() {
        return "no calls".into();
    }
    by_version
        .iter()
        .map(|(v, (n, other))| {
            let other = if other.is_empty() { String::new() } else { format!("; {}", other.join(", ")) };
            format!("{v} {n:.0} ({:.1}/s{other})", n / secs)
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// The demo's command line.
struct DemoArgs {
    /// Run only this step.
    only: Option<String>,
    /// Leave the node running at the end.
    keep: bool,
    /// Multiplies every step's page loads.
    scale: f64,
    /// Istio's VirtualServices or the Gateway API's HTTPRoutes.
    api: Api,
}

/// The arguments, or None after `--help` was printed.
fn parse_args() -> Result<Option<DemoArgs>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut demo = DemoArgs { only: None, keep: false, scale: 1.0, api: Api::Istio };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--step" => demo.only = it.next().cloned(),
            "--keep" => demo.keep = true,
            "--api" => {
                let v = it.next().map(String::as_str).unwrap_or("");
                demo.api = Api::parse(v).ok_or_else(|| anyhow::anyhow!("--api {v:?}: istio or gateway"))?;
            }
            "--loads-scale" => demo.scale = it.next().and_then(|s| s.parse().ok()).unwrap_or(1.0),
            "-h" | "--help" => {
                println!(
                    "bookinfo-demo [--api istio|gateway] [--step NAME] [--keep] [--loads-scale F]\nsteps (--api istio, the default): {}\nsteps (--api gateway): {}",
                    STEPS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
                    GATEWAY_STEPS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                );
                return Ok(None);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if let Some(name) = &demo.only {
        let steps = demo.api.steps();
        if !steps.iter().any(|s| s.name == name) {
            bail!("no step {name:?}; steps: {}", steps.iter().map(|s| s.name).collect::<Vec<_>>().join(", "));
        }
    }
    Ok(Some(demo))
}

/// A real Prometheus scraping the agent every second, when installed (required under CI=true):
/// after each step the demo prints what a dashboard would show next to what the pages showed.
fn start_prometheus() -> Result<Option<Prometheus>> {
    let started = match prometheus::unavailable() {
        None => Prometheus::start(ADMIN.parse()?).map_err(|e| format!("{e:#}")),
        Some(why) => Err(why),
    };
    match started {
        Ok(p) => {
            println!("Prometheus scraping the agent every 1 s: http://{}/graph\n", p.addr);
            Ok(Some(p))
        }
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            bail!("no Prometheus under CI=true: {why}")
        }
        Err(why) => {
            println!("No read-back from Prometheus: {why}\n");
            Ok(None)
        }
    }
}

fn main() -> Result<()> {
    let Some(demo) = parse_args()? else { return Ok(()) };
    if let Some(why) = mesh_e2e::ebpf_unavailable() {
        bail!("cannot start the local node: {why}");
    }
    println!(
        "Starting a local node: 6 Bookinfo pods (network namespaces + cgroups), the mesh agent (eBPF + node proxy)..."
    );
    let api = demo.api;
    let networking = api.networking();
    let mut bk = Bookinfo::start_with_registries(&networking, &[], &api.extra_registries())?;
    if api == Api::Gateway {
        println!("Routing with the Kubernetes Gateway API: Istio's samples/bookinfo/gateway-api/ HTTPRoutes to the per-version Services of bookinfo-versions.yaml (reviews-v1, reviews-v2, ...).");
    }
    println!("Node up. productpage: NodePort http://127.0.0.1:{NODEPORT}/productpage ; agent metrics: http://{ADMIN}/metrics");
    let prom = start_prometheus()?;
    let mut failed = Vec::new();
    for step in api.steps().iter().filter(|s| demo.only.as_ref().is_none_or(|o| o == s.name)) {
        if let Err(why) = run_step(&mut bk, prom.as_ref(), &demo, &networking, step)? {
            failed.push(format!("{}: {why}", step.name));
        }
    }
    if demo.keep {
        println!("--keep: node left running. Try:\n  curl -s http://127.0.0.1:{NODEPORT}/productpage | grep bookinfo:\n  curl -s -H 'cookie: session=jason' http://127.0.0.1:{GATEWAY_PORT}/productpage | grep bookinfo:\nPress Ctrl-C to tear it down.");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Ctrl-C ends the process; Drop of the node does not run then, but the next run's
        // cleanup removes everything a node named "bk" left.
        let _tx = tx;
        let _ = rx.recv_timeout(Duration::from_secs(u64::MAX / 4));
    }
    drop(bk);
    println!("Node torn down.");
    if !failed.is_empty() {
        bail!("{} step(s) did not show the documented outcome:\n  {}", failed.len(), failed.join("\n  "));
    }
    Ok(())
}

/// One step: apply its files, load pages as anonymous and as jason, print what they showed (and
/// what Prometheus counted), and check the documented outcome: Ok(Err(why)) when it differs.
fn run_step(
    bk: &mut Bookinfo,
    prom: Option<&Prometheus>,
    demo: &DemoArgs,
    networking: &std::path::Path,
    step: &Step,
) -> Result<Result<(), String>> {
    let api = demo.api;
    println!("== {} ==", step.title);
    if !step.files.is_empty() {
        println!("   ConfigMap now holds: {}", step.files.join(", "));
    }
    if api == Api::Gateway && step.name == "jason-delay" {
        println!(
            "   Fault injection has no Gateway API form (HTTPRoute has no fault filter): as Istio's fault-injection"
        );
        println!("   task does, this step applies the VirtualService virtual-service-ratings-test-delay.yaml (and");
        println!(
            "   destination-rule-all.yaml for its subset v1). For ratings the VirtualService applies and the HTTPRoute"
        );
        println!("   ratings of route-all-v1.yaml is ignored (the agent warns); reviews stays on its HTTPRoute.");
    }
    bk.apply(step.files)?;
    let via_gateway = step.files.contains(&"bookinfo-gateway.yaml");
    println!(
        "   page loads via {}",
        if via_gateway {
            format!("bookinfo-gateway http://127.0.0.1:{GATEWAY_PORT}/productpage")
        } else {
            format!("NodePort http://127.0.0.1:{NODEPORT}/productpage")
        }
    );
    let before = match prom {
        Some(p) => Some((read_calls(p, api)?, std::time::Instant::now())),
        None => None,
    };
    let mut shown = std::collections::BTreeMap::<String, usize>::new();
    let mut tallies = [Tally::default(), Tally::default()];
    for (i, (user, n)) in [(None, step.anonymous), (Some("jason"), step.jason)].into_iter().enumerate() {
        let n = ((n as f64) * demo.scale).ceil() as usize;
        if n == 0 {
            continue;
        }
        let tally = load_pages(bk, user, n, via_gateway)?;
        for (version, count) in tally.by_reviews() {
            *shown.entry(version).or_default() += count;
        }
        tallies[i] = tally;
    }
    if let (Some(p), Some((before, started))) = (prom, before) {
        p.wait_scraped_after(std::time::SystemTime::now(), Duration::from_secs(10))?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let calls = describe_calls(&before, &read_calls(p, api)?, secs);
        let pages: Vec<String> = shown.iter().map(|(v, n)| format!("{v} {n}")).collect();
        println!("   pages showed reviews   {}", pages.join("  "));
        println!(
            "   Prometheus read back   {}   (productpage -> reviews calls by destination_version, over {secs:.1} s)",
            calls
        );
    }
    explain_delay(api, step.name);
    let mut outcome = Ok(());
    if !matches!(step.expect, Expect::Shown) {
        let delay = fixed_delay(networking, step.files).unwrap_or_default();
        match step.expect.check(&tallies[0], &tallies[1], delay) {
            Ok(held) => println!("   expected and seen: {held}"),
            Err(why) => {
                println!("   NOT AS DOCUMENTED: {why}");
                outcome = Err(why);
            }
        }
    }
    println!();
    Ok(outcome)
}

/// `n` page loads as `user` (None: anonymous), with live progress on a terminal (every 25 % in
/// a log), and their one-line summary.
fn load_pages(bk: &mut Bookinfo, user: Option<&str>, n: usize, via_gateway: bool) -> Result<Tally> {
    let who = user.unwrap_or("anonymous");
    let tty = std::io::stdout().is_terminal();
    let mut progress = |done: usize| {
        if tty {
            print!("\r   {who:>9}: {done}/{n} loads");
            let _ = std::io::stdout().flush();
        } else if n >= 20 && done.is_multiple_of(n / 4) && done < n {
            println!("   {who:>9}: {done}/{n} loads...");
        }
    };
    let tally = bk.load_pages(n, user, via_gateway, &mut progress)?;
    if tty {
        print!("\r");
    }
    println!("   {who:>9}: {}", tally.summary());
    Ok(tally)
}

/// What the fault-injection step really does to jason's page, in the demo's own words.
fn explain_delay(api: Api, step: &str) {
    if step != "jason-delay" {
        return;
    }
    if api == Api::Gateway {
        println!("   What really happens: reviews-v2 waits up to 10 s for ratings, but productpage gives up on reviews after 3 s,");
        println!("   twice; so jason's page returns after ~6 s with \"Sorry, product reviews are currently unavailable for this book.\"");
        println!(
            "   (reviews=unavailable above); everyone else sees reviews v1, which does not call ratings, immediately."
        );
    } else {
        println!(
            "   What really happens: the 7 s delay exceeds productpage's 3 s timeout to reviews, which it tries twice;"
        );
        println!("   so jason's page returns after ~6 s with \"Sorry, product reviews are currently unavailable for this book.\"");
        println!("   (reviews=unavailable above); everyone else sees reviews v3 with red stars immediately.");
    }
}
