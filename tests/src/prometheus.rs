//! A real Prometheus server (Debian's `prometheus` package, installed by `cargo xtask test` and
//! `cargo xtask demo`) scraping one agent's admin port, for the telemetry e2e test and the demo.
//!
//! It listens on 127.0.0.1 (a free port), keeps its TSDB in a temporary directory, scrapes only
//! the agent, every second, and evaluates every second. Dropping it stops it and removes the data.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Where Debian's package puts the server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// The scrape and rule-evaluation interval the server runs with.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// Why no Prometheus server can be started here, if it cannot.
pub fn unavailable() -> Option<String> {
    let bin = binary();
    if !bin.is_file() {
        return Some(format!(
            "{} is missing: `cargo xtask test` / `cargo xtask demo` install Debian's `prometheus` package",
            bin.display()
        ));
    }
    None
}

/// `MESH_PROMETHEUS_BIN`, else the Debian package's binary.
fn binary() -> PathBuf {
    std::env::var_os("MESH_PROMETHEUS_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(PROMETHEUS_BIN))
}

/// One sample of an instant vector: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name` ("" when absent, as PromQL treats it).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A running Prometheus server.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    pub target: SocketAddr,
}

impl Prometheus {
    /// Starts a server scraping `target`'s `/metrics` and waits (bounded) until it reports the
    /// target up: a scrape has succeeded, so a query from now on sees the agent's metrics.
    pub fn start(target: SocketAddr) -> Result<Prometheus> {
        if let Some(why) = unavailable() {
            bail!("cannot start Prometheus: {why}");
        }
        let dir = std::env::temp_dir().join(format!("mesh-prometheus-{}-{}", std::process::id(), target.port()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n- job_name: mesh-agent\n  metrics_path: /metrics\n  static_configs:\n  \
                 - targets: ['{target}']\n"
            ),
        )?;
        // A free port: bind :0, read it, let it go. Another process could take it in between;
        // then the server fails to start and says so in its log, which the error below carries.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        let prom = Prometheus { child, dir, addr, target };
        prom.wait_target_up(Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("{e}\n{}", prom.log_tail()))?;
        Ok(prom)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("prometheus log (tail):\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
    }

    /// Polls `/api/v1/targets` until the agent's target has `health: "up"`, bounded.
    pub fn wait_target_up(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.api("/api/v1/targets?state=active") {
                Ok(v) => {
                    let targets = v["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
                    let ours = targets.iter().find(|t| t["labels"]["instance"] == self.target.to_string());
                    match ours {
                        Some(t) if t["health"] == "up" => return Ok(()),
                        Some(t) => {
                            format!("target {}: health {}, lastError {}", self.target, t["health"], t["lastError"])
                        }
                        None => format!("target {} not listed yet", self.target),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("Prometheus at {} did not report {} up within {within:?}: {last}", self.addr, self.target);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query (`/api/v1/query`); the result must be a vector (or a scalar, returned as
    /// one sample without labels).
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        let data = &v["data"];
        let value = |x: &serde_json::Value| -> Result<f64> {
            let s = x[1].as_str().context("sample value is not a string")?;
            // Prometheus writes NaN and infinities as "NaN", "+Inf", "-Inf", which f64 parses.
            s.parse::<f64>().with_context(|| format!("sample value {s:?}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .context("vector result is not an array")?
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                        })
                        .unwrap_or_default();
                    Ok(Sample { labels, value: value(&s["value"])? })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample { labels: BTreeMap::new(), value: value(&data["result"])? }]),
            other => bail!("query {promql:?}: result type {other:?}, expected a vector"),
        }
    }

    /// `query`, as a map from the value of label `by` to the sample's value.
    pub fn query_by(&self, promql: &str, by: &str) -> Result<BTreeMap<String, f64>> {
        Ok(self.query(promql)?.into_iter().map(|s| (s.label(by).to_owned(), s.value)).collect())
    }

    /// Polls `promql` every scrape interval until `check` accepts the result, bounded; the error
    /// names the query and its last result.
    pub fn wait_for(
        &self,
        promql: &str,
        within: Duration,
        mut check: impl FnMut(&[Sample]) -> bool,
    ) -> Result<Vec<Sample>> {
        let deadline = Instant::now() + within;
        loop {
            let last = self.query(promql);
            if let Ok(samples) = &last {
                if check(samples) {
                    return Ok(samples.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting on {promql}\nlast result: {last:?}");
            }
            // Results change only when a scrape lands; polling faster would only load the machine.
            std::thread::sleep(SCRAPE_INTERVAL / 4);
        }
    }

    /// Waits (bounded) until the agent has been scraped at or after `t`: from then on a query
    /// sees every request that completed before `t`.
    pub fn wait_scraped_after(&self, t: std::time::SystemTime, within: Duration) -> Result<()> {
        let t = t.duration_since(std::time::UNIX_EPOCH).context("clock before 1970")?.as_secs_f64();
        let q = format!("timestamp(up{{instance=\"{}\"}})", self.target);
        self.wait_for(&q, within, |s| s.iter().any(|x| x.value >= t)).map(|_| ())
    }

    /// GET `path_and_query` from the server's HTTP API and parse the JSON answer; an answer with
    /// `status` other than `success` is an error carrying Prometheus's message.
    fn api(&self, path_and_query: &str) -> Result<serde_json::Value> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // HTTP/1.0: the server answers without chunked encoding and closes, so the body is
        // everything after the head.
        write!(s, "GET {path_and_query} HTTP/1.0\r\nhost: {}\r\n\r\n", self.addr)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (_, body) = text.split_once("\r\n\r\n").context("HTTP answer without a head")?;
        let v: serde_json::Value =
            serde_json::from_str(body).with_context(|| format!("GET {path_and_query}: not JSON: {body:.200}"))?;
        if v["status"] != "success" {
            bail!("GET {path_and_query}: {} {}", v["errorType"], v["error"]);
        }
        Ok(v)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the server we spawned and have not reaped. SIGTERM lets it
        // close its TSDB; SIGKILL below if it does not exit in time.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a PromQL query holds braces,
/// quotes, `=~`, spaces...).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::url_encode;

    #[test]
    fn url_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(url_encode("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(url_encode(r#"x{a="b c"}[1m]"#), "x%7Ba%3D%22b%20c%22%7D%5B1m%5D");
        assert_eq!(url_encode("é"), "%C3%A9");
    }
}
