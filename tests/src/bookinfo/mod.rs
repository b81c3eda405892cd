//! The Bookinfo walkthrough on a local node: shared by `cargo xtask demo` and the e2e test.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::*;

pub const NODEPORT: u16 = 30080;
pub const GATEWAY_PORT: u16 = 80;
pub const ADMIN: &str = "127.0.0.1:15020";

/// (pod, service, version, host octet)
pub const PODS: &[(&str, &str, &str, u8)] = &[
    ("details-v1", "details", "v1", 10),
    ("ratings-v1", "ratings", "v1", 11),
    ("reviews-v1", "reviews", "v1", 12),
    ("reviews-v2", "reviews", "v2", 13),
    ("reviews-v3", "reviews", "v3", 14),
    ("productpage-v1", "productpage", "v1", 15),
];

pub const SERVICES: &[(&str, Ipv4Addr)] = &[
    ("details", Ipv4Addr::new(10, 96, 0, 10)),
    ("ratings", Ipv4Addr::new(10, 96, 0, 11)),
    ("reviews", Ipv4Addr::new(10, 96, 0, 12)),
    ("productpage", Ipv4Addr::new(10, 96, 0, 13)),
];

/// One step of the seed walkthrough: the routing files live in the ConfigMap after it.
pub struct Step {
    pub name: &'static str,
    pub title: &'static str,
    pub files: &'static [&'static str],
    /// Loads as an anonymous user and as jason.
    pub anonymous: usize,
    pub jason: usize,
    /// What the pages must show after the step ([`Expect::check`]).
    pub expect: Expect,
}

pub const STEPS: &[Step] = &[
    Step {
        name: "no-rules",
        title: "1. App deployed, namespace enrolled, no rules: plain Kubernetes balancing",
        files: &[],
        anonymous: 60,
        jason: 0,
        expect: Expect::Shown,
    },
    Step {
        name: "gateway",
        title: "2. Ingress: bookinfo-gateway (Gateway on port 80 + VirtualService)",
        files: &["bookinfo-gateway.yaml"],
        anonymous: 30,
        jason: 0,
        expect: Expect::Shown,
    },
    Step {
        name: "destination-rules",
        title: "3. destination-rule-all.yaml: subsets by version (no routing change yet)",
        files: &["bookinfo-gateway.yaml", "destination-rule-all.yaml"],
        anonymous: 60,
        jason: 0,
        expect: Expect::Shown,
    },
    Step {
        name: "all-v1",
        title: "4. virtual-service-all-v1.yaml: every service to v1",
        files: &["bookinfo-gateway.yaml", "destination-rule-all.yaml", "virtual-service-all-v1.yaml"],
        anonymous: 40,
        jason: 20,
        expect: Expect::Shown,
    },
    Step {
        name: "jason-v2",
        title: "5. virtual-service-reviews-test-v2.yaml: end-user jason to v2, others v1",
        files: &[
            "bookinfo-gateway.yaml",
            "destination-rule-all.yaml",
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-test-v2.yaml",
        ],
        anonymous: 40,
        jason: 40,
        expect: Expect::Shown,
    },
    Step {
        name: "jason-delay",
        title: "6. virtual-service-reviews-test-delay.yaml: jason gets a 7 s delay on reviews, others v3",
        files: &[
            "bookinfo-gateway.yaml",
            "destination-rule-all.yaml",
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-test-delay.yaml",
        ],
        anonymous: 40,
        jason: 4,
        expect: Expect::Shown,
    },
    Step {
        name: "back-to-v1",
        title: "7. Back to all-v1",
        files: &["bookinfo-gateway.yaml", "destination-rule-all.yaml", "virtual-service-all-v1.yaml"],
        anonymous: 40,
        jason: 10,
        expect: Expect::Shown,
    },
    Step {
        name: "50-v3",
        title: "8. virtual-service-reviews-50-v3.yaml: v1 50% / v3 50%",
        files: &[
            "bookinfo-gateway.yaml",
            "destination-rule-all.yaml",
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-50-v3.yaml",
        ],
        anonymous: 400,
        jason: 0,
        expect: Expect::Shown,
    },
    Step {
        name: "v3",
        title: "9. virtual-service-reviews-v3.yaml: 100% v3",
        files: &[
            "bookinfo-gateway.yaml",
            "destination-rule-all.yaml",
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-v3.yaml",
        ],
        anonymous: 60,
        jason: 0,
        expect: Expect::Shown,
    },
];

/// Which API the walkthrough configures routing with (`bookinfo-demo --api`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// VirtualServices and DestinationRules (`deploy/bookinfo/networking/`).
    Istio,
    /// Gateway API HTTPRoutes to per-version Services (`deploy/bookinfo/gateway-api/`).
    Gateway,
}

impl Api {
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "istio" => Some(Api::Istio),
            "gateway" => Some(Api::Gateway),
            _ => None,
        }
    }

    pub fn steps(self) -> &'static [Step] {
        match self {
            Api::Istio => STEPS,
            Api::Gateway => GATEWAY_STEPS,
        }
    }

    /// The directory holding the routing files the steps apply.
    pub fn networking(self) -> PathBuf {
        workspace().join(match self {
            Api::Istio => "deploy/bookinfo/networking",
            Api::Gateway => "deploy/bookinfo/gateway-api",
        })
    }

    /// The registry files beside `local-registry.yaml`: the Gateway API tasks route to one
    /// Service per version (Istio's `platform/kube/bookinfo-versions.yaml`), where the Istio
    /// tasks use DestinationRule subsets instead.
    pub fn extra_registries(self) -> Vec<PathBuf> {
        match self {
            Api::Istio => Vec::new(),
            Api::Gateway => vec![workspace().join("deploy/bookinfo/bookinfo-versions.yaml")],
        }
    }
}

/// The Gateway API variants of the Bookinfo tasks (Istio's `samples/bookinfo/gateway-api/`,
/// verbatim). Every HTTPRoute of these files is named after its Service, so a later file
/// replaces the earlier one's route of the same name (files load in name order, like a second
/// `kubectl apply`): `route-reviews-*.yaml` replaces the `reviews` route of `route-all-v1.yaml`.
pub const GATEWAY_STEPS: &[Step] = &[
    Step {
        name: "gateway",
        title: "1. Ingress: bookinfo-gateway.yaml (Gateway API Gateway on port 80 + HTTPRoute), no routes yet",
        files: &["bookinfo-gateway.yaml"],
        anonymous: 60,
        jason: 0,
        expect: Expect::Spread,
    },
    Step {
        name: "all-v1",
        title: "2. route-all-v1.yaml: HTTPRoutes send every service to its v1 Service",
        files: &["bookinfo-gateway.yaml", "route-all-v1.yaml"],
        anonymous: 40,
        jason: 20,
        expect: Expect::All("v1"),
    },
    Step {
        name: "jason-v2",
        title: "3. route-reviews-test-v2.yaml (request-routing task): end-user jason to reviews-v2, others reviews-v1",
        files: &["bookinfo-gateway.yaml", "route-all-v1.yaml", "route-reviews-test-v2.yaml"],
        anonymous: 40,
        jason: 40,
        expect: Expect::Jason { jason: "v2", others: "v1" },
    },
    Step {
        name: "jason-delay",
        title: "4. virtual-service-ratings-test-delay.yaml (fault-injection task): jason's calls to ratings get a 7 s delay",
        files: &[
            "bookinfo-gateway.yaml",
            "route-all-v1.yaml",
            "route-reviews-test-v2.yaml",
            "destination-rule-all.yaml",
            "virtual-service-ratings-test-delay.yaml",
        ],
        anonymous: 40,
        jason: 4,
        expect: Expect::JasonDelayed { others: "v1" },
    },
    Step {
        name: "reviews-v1",
        title: "5. route-reviews-v1.yaml: reviews back to reviews-v1 for everybody",
        files: &["bookinfo-gateway.yaml", "route-all-v1.yaml", "route-reviews-v1.yaml"],
        anonymous: 40,
        jason: 10,
        expect: Expect::All("v1"),
    },
    Step {
        name: "90-10",
        title: "6. route-reviews-90-10.yaml: reviews-v1 90% / reviews-v2 10%",
        files: &["bookinfo-gateway.yaml", "route-all-v1.yaml", "route-reviews-90-10.yaml"],
        anonymous: 400,
        jason: 0,
        expect: Expect::Split { first: "v1", second: "v2", second_share: 0.1 },
    },
    Step {
        name: "50-v3",
        title: "7. route-reviews-50-v3.yaml: reviews-v1 50% / reviews-v3 50%",
        files: &["bookinfo-gateway.yaml", "route-all-v1.yaml", "route-reviews-50-v3.yaml"],
        anonymous: 400,
        jason: 0,
        expect: Expect::Split { first: "v1", second: "v3", second_share: 0.5 },
    },
    Step {
        name: "v3",
        title: "8. route-reviews-v3.yaml: 100% reviews-v3",
        files: &["bookinfo-gateway.yaml", "route-all-v1.yaml", "route-reviews-v3.yaml"],
        anonymous: 60,
        jason: 0,
        expect: Expect::All("v3"),
    },
];

/// productpage's budget for reviews: a 3 s timeout, tried twice (`bookinfo/`, as Istio's).
pub const PRODUCTPAGE_REVIEWS_TIMEOUT: Duration = Duration::from_secs(3);

/// The documented outcome of a step, checked on the page loads.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Printed, not checked (the Istio walkthrough).
    Shown,
    /// No routes: reviews v1, v2 and v3 a third each (binomial 99.9%).
    Spread,
    /// Every page, anonymous and jason's, showed this reviews version.
    All(&'static str),
    /// jason's pages showed `jason`, everybody else's `others`.
    Jason { jason: &'static str, others: &'static str },
    /// The anonymous pages showed `first` or `second`, `second_share` of them `second`
    /// (binomial 99.9%).
    Split { first: &'static str, second: &'static str, second_share: f64 },
    /// jason's calls from reviews-v2 to ratings are delayed (the fault's `fixedDelay`): at or
    /// above productpage's 3 s timeout to reviews, tried twice, his page gives up after ~6 s
    /// showing reviews unavailable; below it, his page shows v2 after the delay. Everybody else
    /// gets `others` without delay.
    JasonDelayed { others: &'static str },
}

impl Expect {
    /// Checks the loads of one step; `Ok` says what held. `delay` is the fault's `fixedDelay`.
    pub fn check(self, anonymous: &Tally, jason: &Tally, delay: Duration) -> Result<String, String> {
        let all = |t: &Tally, v: &str, who: &str| -> Result<(), String> {
            if t.count_reviews(v) == t.loads.len() {
                Ok(())
            } else {
                Err(format!("{who}: expected reviews {v} on every page, got {}", t.summary()))
            }
        };
        for (t, who) in [(anonymous, "anonymous"), (jason, "jason")] {
            if t.errors() > 0 {
                return Err(format!("{who}: {} pages failed: {}", t.errors(), t.summary()));
            }
        }
        match self {
            Expect::Shown => Ok("not checked".into()),
            Expect::Spread => {
                let n = anonymous.loads.len();
                for v in ["v1", "v2", "v3"] {
                    if !within_binomial(anonymous.count_reviews(v), n, 1.0 / 3.0) {
                        return Err(format!("reviews {v} is not a third of {n}: {}", anonymous.summary()));
                    }
                }
                Ok(format!("v1, v2 and v3 each a third of {n} (binomial 99.9%)"))
            }
            Expect::All(v) => {
                all(anonymous, v, "anonymous")?;
                all(jason, v, "jason")?;
                Ok(format!("every page showed reviews {v}"))
            }
            Expect::Jason { jason: j, others } => {
                all(jason, j, "jason")?;
                all(anonymous, others, "anonymous")?;
                Ok(format!("jason's pages showed reviews {j}, everybody else's {others}"))
            }
            Expect::Split { first, second, second_share } => {
                let n = anonymous.loads.len();
                let (a, b) = (anonymous.count_reviews(first), anonymous.count_reviews(second));
                if a + b != n {
                    return Err(format!("expected only reviews {first} and {second}: {}", anonymous.summary()));
                }
                if !within_binomial(b, n, second_share) {
                    return Err(format!(
                        "reviews {second} {b} of {n} is not {:.0}% (binomial 99.9%): {}",
                        second_share * 100.0,
                        anonymous.summary()
                    ));
                }
                Ok(format!(
                    "{first} {a} / {second} {b} of {n}: within the binomial 99.9% bound of {:.0}%",
                    second_share * 100.0
                ))
            }
            Expect::JasonDelayed { others } => {
                all(anonymous, others, "anonymous")?;
                if let Some(l) = anonymous.loads.iter().find(|l| l.latency >= delay) {
                    return Err(format!("an anonymous page took {:?}: the delay is jason's only", l.latency));
                }
                // productpage tries reviews twice, each cut at 3 s.
                let budget = PRODUCTPAGE_REVIEWS_TIMEOUT * 2;
                let (shown, lo, hi) = if delay >= PRODUCTPAGE_REVIEWS_TIMEOUT {
                    // It gives up before the delay ends: after both timeouts, never after the delay.
                    ("unavailable", budget, delay.max(budget.saturating_add(Duration::from_millis(500))))
                } else {
                    // The page's own work is a few ms; half a second more fails a delay applied
                    // twice while leaving room for a loaded machine.
                    ("v2", delay, delay.saturating_add(Duration::from_millis(500)))
                };
                all(jason, shown, "jason")?;
                if let Some(l) = jason.loads.iter().find(|l| l.latency < lo || l.latency >= hi) {
                    return Err(format!("jason's page took {:?}, expected {lo:?}..{hi:?}", l.latency));
                }
                Ok(format!(
                    "jason's pages showed reviews {shown} after {lo:?}..{hi:?}, everybody else's {others} without delay"
                ))
            }
        }
    }
}

/// What one page load showed.
#[derive(Clone, Debug)]
pub struct PageLoad {
    pub status: u16,
    pub reviews: String,
    pub stars: String,
    pub latency: Duration,
}

#[derive(Default, Debug)]
pub struct Tally {
    pub loads: Vec<PageLoad>,
}

impl Tally {
    pub fn count_reviews(&self, v: &str) -> usize {
        self.loads.iter().filter(|l| l.reviews == v).count()
    }
    pub fn errors(&self) -> usize {
        self.loads.iter().filter(|l| l.status != 200).count()
    }
    pub fn by_reviews(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in &self.loads {
            *m.entry(l.reviews.clone()).or_default() += 1;
        }
        m
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut v: Vec<Duration> = self.loads.iter().map(|l| l.latency).collect();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    /// `v1 49%  v3 51%  (n=400)  stars: red 204  p50 3 ms  max 9 ms  errors 0`
    pub fn summary(&self) -> String {
        let n = self.loads.len().max(1);
        let versions: Vec<String> =
            self.by_reviews().iter().map(|(k, c)| format!("{k} {}%", (c * 100 + n / 2) / n)).collect();
        let mut stars = BTreeMap::<&str, usize>::new();
        for l in &self.loads {
            *stars.entry(l.stars.as_str()).or_default() += 1;
        }
        let stars: Vec<String> = stars.iter().map(|(k, c)| format!("{k} {c}")).collect();
        format!(
            "reviews: {}  (n={})   stars: {}   p50 {} ms  max {} ms   errors {}",
            versions.join("  "),
            self.loads.len(),
            stars.join(", "),
            self.percentile(0.5).as_millis(),
            self.percentile(1.0).as_millis(),
            self.errors()
        )
    }
}

/// A running Bookinfo node: pods, app servers and the mesh agent.
pub struct Bookinfo {
    pub node: Node,
    pub config_dir: PathBuf,
    networking: PathBuf,
    generation: u32,
}

impl Bookinfo {
    /// Starts the node. `networking` holds the routing YAML files the steps apply.
    pub fn start(networking: &Path) -> Result<Bookinfo> {
        Bookinfo::start_with(networking, &[])
    }

    /// Starts the node with `files` already in the watched directory when the agent starts.
    pub fn start_with(networking: &Path, files: &[&str]) -> Result<Bookinfo> {
        Bookinfo::start_with_registries(networking, files, &[])
    }

    /// Like [`start_with`](Self::start_with), the agent also given `registries` after
    /// `local-registry.yaml` (e.g. the per-version Services the Gateway API tasks route to).
    pub fn start_with_registries(networking: &Path, files: &[&str], registries: &[PathBuf]) -> Result<Bookinfo> {
        let mut node = Node::new("bk", 0)?;
        for (pod, _, _, octet) in PODS {
            node.add_pod(pod, *octet, SERVICES)?;
        }
        let app = bin("bookinfo");
        let app = app.to_str().context("bookinfo binary path")?.to_owned();
        for (pod, svc, version, _) in PODS {
            let mut args = vec![app.as_str(), svc, "--listen", "0.0.0.0:9080", "--pod-name", pod];
            if *svc == "reviews" {
                args.extend(["--version", version]);
            }
            node.spawn(pod, pod, &args)?;
        }
        let registry = workspace().join("deploy/bookinfo/local-registry.yaml");
        let config_dir = node.dir.join("routing");
        fs::create_dir_all(&config_dir)?;
        let mut bk = Bookinfo { node, config_dir, networking: networking.to_path_buf(), generation: 0 };
        bk.apply(files)?;
        bk.node.spawn_host(
            "agent",
            Command::new(bin("mesh"))
                .args(["agent", "--registry"])
                .arg(&registry)
                .args(registries.iter().flat_map(|r| [std::ffi::OsStr::new("--registry"), r.as_os_str()]))
                .arg("--config")
                .arg(&bk.config_dir)
                .args(["--admin", ADMIN, "--ingress-bind", "127.0.0.1"])
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())),
        )?;
        let admin: SocketAddr = ADMIN.parse()?;
        wait_ready(admin, Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", bk.node.log("agent")))?;
        for (pod, ..) in PODS {
            let ip = bk.node.pod(pod)?.ip;
            wait_for_port(SocketAddr::from((ip, 9080)), Duration::from_secs(10))
                .map_err(|e| anyhow::anyhow!("{e}\n{pod} log:\n{}", bk.node.log(pod)))?;
        }
        Ok(bk)
    }

    /// The agent's `mesh_config_reloads_total{result}`.
    pub fn reloads(&self, result: &str) -> u64 {
        http_get(ADMIN.parse().expect("admin addr"), "/metrics")
            .map(|m| metric(&m, "mesh_config_reloads_total", &[("result", result)]))
            .unwrap_or(0)
    }

    /// Whether the agent's live routing config is exactly the ConfigMap version `..gen{generation}`
    /// (it reads the directory through `..data`, so that version is whole, never half-linked).
    pub fn serves_version(&self, generation: u32) -> bool {
        http_get(ADMIN.parse().expect("admin addr"), "/metrics")
            .is_ok_and(|m| metric(&m, "mesh_config_version_info", &[("version", &format!("..gen{generation}"))]) == 1)
    }

    /// Like [`apply`](Self::apply) for a config with an object the agent must reject (waits for
    /// the reload that rejected it; everything else in it is applied).
    pub fn apply_rejected(&mut self, files: &[&str]) -> Result<()> {
        self.swap(files, "partial")
    }

    /// Puts exactly `files` in the watched ConfigMap directory the way the kubelet does: a new
    /// timestamped dir, then an atomic rename of the `..data` symlink, then top-level links.
    pub fn apply(&mut self, files: &[&str]) -> Result<()> {
        self.swap(files, "applied")
    }

    fn swap(&mut self, files: &[&str], expect: &str) -> Result<()> {
        let before = self.reloads(expect);
        self.generation += 1;
        let gen_dir = self.config_dir.join(format!("..gen{}", self.generation));
        fs::create_dir_all(&gen_dir)?;
        for f in files {
            fs::copy(self.networking.join(f), gen_dir.join(f)).with_context(|| format!("copy {f}"))?;
        }
        let tmp = self.config_dir.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..gen{}", self.generation), &tmp)?;
        fs::rename(&tmp, self.config_dir.join("..data"))?;
        for entry in fs::read_dir(&self.config_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !files.contains(&name.as_str()) {
                fs::remove_file(entry.path())?;
            }
        }
        for f in files {
            let link = self.config_dir.join(f);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{f}"), &link)?;
            }
        }
        if self.generation > 1 {
            let old = self.config_dir.join(format!("..gen{}", self.generation - 1));
            let _ = fs::remove_dir_all(old);
        }
        // Readiness, not a sleep: the agent publishes which ConfigMap version is live, and
        // counts how each reload went.
        if self.generation > 1 {
            wait_until(
                &format!("the agent to serve config version ..gen{} ({expect})", self.generation),
                Duration::from_secs(10),
                || self.serves_version(self.generation) && self.reloads(expect) > before,
            )
            .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", self.node.log("agent")))?;
        }
        Ok(())
    }

    /// Loads the product page `n` times through the NodePort (or the gateway), as `user`.
    pub fn load_pages(
        &self,
        n: usize,
        user: Option<&str>,
        via_gateway: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tally> {
        let port = if via_gateway { GATEWAY_PORT } else { NODEPORT };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let workers = 4.min(n.max(1));
        let per = n.div_ceil(workers);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for w in 0..workers {
            let count = per.min(n.saturating_sub(w * per));
            let tx = tx.clone();
            let user = user.map(str::to_owned);
            handles.push(std::thread::spawn(move || {
                for _ in 0..count {
                    let _ = tx.send(page_load(addr, user.as_deref()));
                }
            }));
        }
        drop(tx);
        let mut tally = Tally::default();
        for r in rx {
            tally.loads.push(r?);
            progress(tally.loads.len());
        }
        for h in handles {
            let _ = h.join();
        }
        Ok(tally)
    }
}

/// One `GET /productpage` (a logged-in user carries the session cookie, as after `/login`).
pub fn page_load(addr: SocketAddr, user: Option<&str>) -> Result<PageLoad> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let cookie = user.map(|u| format!("cookie: session={u}\r\n")).unwrap_or_default();
    write!(s, "GET /productpage HTTP/1.1\r\nhost: bookinfo.local\r\n{cookie}connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let marker = text.split("<!-- bookinfo:").nth(1).and_then(|r| r.split("-->").next()).unwrap_or("");
    let field = |k: &str| {
        marker.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap_or("none").to_owned()
    };
    let (reviews, stars) =
        if status == 200 { (field("reviews"), field("stars")) } else { (format!("http-{status}"), "-".into()) };
    Ok(PageLoad { status, reviews, stars, latency: started.elapsed() })
}

/// The `fixedDelay` (whole seconds or milliseconds, as Istio's samples write it) of the fault in
/// the step's files, if any: what [`Expect::JasonDelayed`] checks against.
pub fn fixed_delay(networking: &Path, files: &[&str]) -> Option<Duration> {
    files.iter().find_map(|f| {
        let text = fs::read_to_string(networking.join(f)).ok()?;
        let v = text.lines().find_map(|l| l.trim().strip_prefix("fixedDelay:"))?.trim();
        match v.strip_suffix("ms") {
            Some(ms) => ms.parse().ok().map(Duration::from_millis),
            None => v.strip_suffix('s')?.parse().ok().map(Duration::from_secs),
        }
    })
}

/// Two-sided binomial bound: is `k` of `n` consistent with probability `p` at ~99.9% (z=3.29)?
pub fn within_binomial(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 3.29 * sd + 0.5
}

pub fn fail_if(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        bail!(msg());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
