//! `mesh validate` and `mesh explain`: the routing engine, offline.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{
    config::Config,
    registry::Registry,
    routing::{Context, RequestInfo, RouteTable},
};

#[derive(Args, Debug)]
// Not documented here: clap would turn a doc comment into the command's help text (the
// subcommand's is in main.rs).
#[allow(missing_docs)]
pub struct ValidateArgs {
    /// Files or directories of Istio YAML.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Kubernetes YAML (Services, Pods) to check hosts and subsets against, like `istioctl analyze`.
    #[arg(long)]
    pub registry: Vec<PathBuf>,
}

/// Every file given, and every `*.yaml`/`*.yml` of every directory given, read as the agent
/// reads its directory; bad documents are recorded in `rejected`.
fn load_all(paths: &[PathBuf]) -> Result<Config> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(Config::list_dir(p).map_err(|e| anyhow::anyhow!("{e}"))?);
        } else {
            files.push(p.clone());
        }
    }
    Ok(Config::read_files(&files))
}

fn load(paths: &[PathBuf]) -> Result<Config, crate::config::ConfigErrors> {
    load_all(paths).map_err(|e| crate::config::ConfigErrors::single("config", e.to_string()))?.strict()
}

/// Checks routing YAML as the agent would admit it: every object on its own (Istio's verdicts),
/// then references between objects (warnings, as `istioctl analyze`). Exit status 1 when any
/// object would be rejected; the agent would still serve all the others.
pub fn validate(args: ValidateArgs) -> Result<ExitCode> {
    let mut config = load_all(&args.paths)?;
    let registry =
        if args.registry.is_empty() { Registry::default() } else { Registry::from_yaml_files(&args.registry)? };
    for s in &config.skipped {
        eprintln!("note: {s}");
    }
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let mut rejected = std::mem::take(&mut config.rejected);
    let (table, compile_rejects) = RouteTable::compile_admitting(&config, &registry);
    // Objects rejected while parsing are not in `config`; those rejected compiling are.
    let rejected_in_config = compile_rejects.iter().filter(|r| r.object.is_some()).count();
    rejected.extend(compile_rejects);
    // Without a registry every host is "unknown"; only say so when asked to check hosts.
    for w in table.warnings.iter().filter(|w| !args.registry.is_empty() || !w.contains("not a service in the registry"))
    {
        eprintln!("warning: {w}");
    }
    if !args.registry.is_empty() {
        warn_empty_subsets(&config, &registry);
    }
    for r in &rejected {
        let what = r.object.as_ref().map_or_else(|| format!("{} (whole file)", r.file), |o| o.to_string());
        eprintln!("rejected: {what}");
        for e in &r.errors {
            eprintln!("  {e}");
        }
    }
    let objects = config.virtual_services.len()
        + config.destination_rules.len()
        + config.gateways.len()
        + config.http_routes.len()
        + config.reference_grants.len()
        + config.grpc_routes.len()
        + config.telemetries.len()
        + config.kube_gateways.len()
        + config.gateway_classes.len();
    let accepted = objects.saturating_sub(rejected_in_config);
    println!(
        "{} VirtualServices, {} DestinationRules, {} Gateways, {} Gateway API Gateways, {} GatewayClasses, {} HTTPRoutes, {} GRPCRoutes, {} ReferenceGrants, {} Telemetries: {accepted} accepted, {} rejected",
        config.virtual_services.len(),
        config.destination_rules.len(),
        config.gateways.len(),
        config.kube_gateways.len(),
        config.gateway_classes.len(),
        config.http_routes.len(),
        config.grpc_routes.len(),
        config.reference_grants.len(),
        config.telemetries.len(),
        rejected.len()
    );
    Ok(if rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn warn_empty_subsets(config: &Config, registry: &Registry) {
    for vs in &config.virtual_services {
        for (i, r) in vs.spec.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                let Some(subset) = d.destination.subset.as_deref() else { continue };
                let host = &d.destination.host;
                let (name, ns) = crate::registry::split_host(host, &vs.namespace).unwrap_or((host, &vs.namespace));
                let Some(svc) = registry.services.iter().find(|s| s.name == name && s.namespace == ns) else {
                    continue;
                };
                let selects =
                    config.destination_rules.iter().flat_map(|dr| dr.spec.subsets.iter()).find(|s| s.name == subset);
                let count = registry
                    .workloads
                    .iter()
                    .filter(|w| w.matches(&svc.selector))
                    .filter(|w| selects.is_some_and(|s| s.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))))
                    .count();
                if count == 0 {
                    eprintln!(
                        "warning: VirtualService {}: http[{i}].route[{j}]: subset {subset} of {host} selects no pod",
                        vs.key()
                    );
                }
            }
        }
    }
}

#[derive(Args, Debug)]
// Not documented here: clap would turn a doc comment into the command's help text (the
// subcommand's is in main.rs).
#[allow(missing_docs)]
pub struct ExplainArgs {
    /// Directory (or file) of Istio routing YAML.
    #[arg(long, conflicts_with = "live")]
    pub config: Vec<PathBuf>,
    /// Kubernetes YAML with Services and Pods.
    #[arg(long, required_unless_present = "live", conflicts_with = "live")]
    pub registry: Vec<PathBuf>,
    /// Explain against a running agent's live tables instead of files: its admin address,
    /// e.g. http://127.0.0.1:15020
    #[arg(long, value_name = "ADMIN_URL")]
    pub live: Option<String>,
    #[command(flatten)]
    pub request: ExplainRequest,
}

/// The request to explain, as the command line (or the admin endpoint's query) describes it.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ExplainRequest {
    /// Calling pod: `name` or `namespace/name`. Omit with --gateway.
    #[arg(long)]
    pub from: Option<String>,
    /// Explain as ingress through this Gateway (`name` or `namespace/name`).
    #[arg(long)]
    pub gateway: Option<String>,
    /// Request URL, e.g. http://reviews:9080/reviews/0
    #[arg(long)]
    pub url: String,
    /// Request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub method: String,
}

impl ExplainRequest {
    /// The admin endpoint's query string for this request (`/explain?...`).
    pub fn to_query(&self) -> String {
        let mut q: Vec<(&str, &str)> = Vec::new();
        q.extend(self.from.as_deref().map(|f| ("from", f)));
        q.extend(self.gateway.as_deref().map(|g| ("gateway", g)));
        q.push(("url", &self.url));
        q.extend(self.headers.iter().map(|h| ("header", h.as_str())));
        q.push(("method", &self.method));
        q.iter().map(|(k, v)| format!("{k}={}", crate::admin::query_encode(v))).collect::<Vec<_>>().join("&")
    }

    /// Reads `from`, `gateway`, `url`, `header` (repeatable) and `method` (default GET) from a
    /// query string.
    pub fn from_query(query: &str) -> Result<ExplainRequest> {
        let mut r = ExplainRequest { method: "GET".into(), ..ExplainRequest::default() };
        let mut url = None;
        for (k, v) in crate::admin::query_pairs(query)? {
            match k.as_str() {
                "from" => r.from = Some(v),
                "gateway" => r.gateway = Some(v),
                "url" => url = Some(v),
                "header" => r.headers.push(v),
                "method" => r.method = v,
                other => bail!(
                    "unknown parameter {:?}: expected from, gateway, url, header, method",
                    crate::config::cut(other, 40)
                ),
            }
        }
        r.url = url.context("missing url=, e.g. url=http://reviews:9080/reviews/0")?;
        Ok(r)
    }
}

/// `mesh explain`: routes one request described on the command line through the route table
/// compiled from `--config` and `--registry` (or, with `--live`, the running agent's tables),
/// and prints each step.
pub fn explain(args: ExplainArgs) -> Result<ExitCode> {
    if let Some(admin) = &args.live {
        print!("{}", explain_live(admin, &args.request)?);
        return Ok(ExitCode::SUCCESS);
    }
    let registry = Registry::from_yaml_files(&args.registry)?;
    let config = if args.config.is_empty() {
        Config::empty()
    } else {
        load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let table = RouteTable::compile(&config, &registry)
        .map_err(|e| anyhow::anyhow!("the routing config does not compile:\n{e}"))?;
    print!("{}", explain_request(&table, &registry, &args.request)?);
    Ok(ExitCode::SUCCESS)
}

/// Asks the agent at `admin` (`http://host:port`) to explain `req` against its live tables:
/// the same text the offline explain prints.
pub fn explain_live(admin: &str, req: &ExplainRequest) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let uri: http::Uri = admin.parse().with_context(|| format!("invalid --live {admin:?}"))?;
    if uri.scheme_str().is_some_and(|s| s != "http") {
        bail!("--live {admin:?}: the admin endpoint speaks plain http");
    }
    let host = uri.host().with_context(|| format!("--live {admin:?} needs a host, e.g. http://127.0.0.1:15020"))?;
    let port = uri.port_u16().unwrap_or(15020);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let timeout = std::time::Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot reach the agent's admin endpoint at {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    let base = uri.path().trim_end_matches('/');
    write!(s, "GET {base}/explain?{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", req.to_query())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the agent's answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("the agent's answer has no HTTP head")?;
    let status: u16 =
        head.split(' ').nth(1).and_then(|c| c.parse().ok()).context("the agent's answer has no status")?;
    let body = if head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked")) {
        dechunk(body).context("the agent's chunked answer is cut short")?
    } else {
        body.to_owned()
    };
    match status {
        200 => Ok(body),
        404 => bail!("the agent at {admin} has no /explain endpoint (an older version?)"),
        _ => bail!("{}", body.trim_end()),
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n.checked_add(2)?..)?;
    }
}

/// Explains `r` against `table` and `registry`: what `mesh explain` prints, offline or (through
/// the agent's `/explain`) live.
pub fn explain_request(table: &RouteTable, registry: &Registry, r: &ExplainRequest) -> Result<String> {
    let uri: http::Uri = r.url.parse().with_context(|| format!("invalid --url {:?}", r.url))?;
    let host = uri.host().context("--url needs a host, e.g. http://reviews:9080/")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host.clone());
    let mut headers = http::HeaderMap::new();
    for h in &r.headers {
        let (k, v) = h.split_once(':').with_context(|| format!("header {h:?} must look like 'Name: value'"))?;
        headers.append(http::HeaderName::from_bytes(k.trim().as_bytes())?, http::HeaderValue::from_str(v.trim())?);
    }
    let method: http::Method = r.method.parse().with_context(|| format!("invalid method {:?}", r.method))?;
    let source = match &r.from {
        None => None,
        Some(f) => {
            let (ns, name) = f.split_once('/').unwrap_or(("default", f.as_str()));
            Some(
                registry
                    .workload_by_name(ns, name)
                    .with_context(|| format!("no pod {ns}/{name} in the registry"))?
                    .clone(),
            )
        }
    };
    let client_ns = source.as_ref().map_or("default".to_string(), |w| w.namespace.clone());
    let path_uri: http::Uri = uri.path_and_query().map_or("/".to_string(), |p| p.to_string()).parse()?;
    let (gw_name, gw_ns);
    let service;
    let context = match &r.gateway {
        Some(g) => {
            let (ns, n) = g.split_once('/').unwrap_or(("default", g.as_str()));
            (gw_name, gw_ns) = (n.to_owned(), ns.to_owned());
            let ports: Vec<u16> =
                table.gateways().iter().filter(|l| l.name == n && l.namespace == ns).map(|l| l.port).collect();
            if ports.is_empty() {
                bail!("no Gateway {ns}/{n} in the config");
            }
            if !ports.contains(&port) {
                bail!(
                    "Gateway {ns}/{n} does not listen on port {port} (its servers: {}); put the port in --url",
                    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
                );
            }
            Context::Gateway { name: &gw_name, namespace: &gw_ns, port }
        }
        None => {
            service = registry.service_by_host(&host, &client_ns).cloned();
            let Some(svc) = service.as_deref() else {
                bail!(
                    "{host} is not a service in the registry (known: {})",
                    // A cluster has thousands: the first few say what the names look like.
                    registry.services.iter().take(20).map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            };
            Context::Mesh { service: svc, port }
        }
    };
    let req = RequestInfo {
        context,
        source: source.as_deref(),
        method: &method,
        uri: &path_uri,
        authority: Some(&authority),
        scheme: uri.scheme_str().unwrap_or("http"),
        headers: &headers,
    };
    Ok(table.explain(&req).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_each_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let vs = |name: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n")
        };
        let single = dir.path().join("a.yaml");
        std::fs::write(&single, vs("a")).unwrap();
        let sub = dir.path().join("dir");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("b.yaml"), vs("b")).unwrap();
        std::fs::write(sub.join("c.yml"), vs("c")).unwrap();
        // `mesh validate a.yaml dir/` once dropped a.yaml and read dir/ twice.
        let c = load_all(&[single.clone(), sub.clone()]).unwrap();
        let mut names: Vec<&str> = c.virtual_services.iter().map(|v| v.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(c.skipped.is_empty(), "no document replaced another: {:?}", c.skipped);
        let c = load_all(&[sub, single]).unwrap();
        assert_eq!(c.virtual_services.len(), 3);
    }
}
