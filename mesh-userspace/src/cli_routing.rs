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
pub struct ValidateArgs {
    /// Files or directories of Istio YAML.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Kubernetes YAML (Services, Pods) to check hosts and subsets against, like `istioctl analyze`.
    #[arg(long)]
    pub registry: Vec<PathBuf>,
}

fn load(paths: &[PathBuf]) -> Result<Config, crate::config::ConfigErrors> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut c = Config::load_dir(p)?;
            // load_dir reads a directory as the agent does; merge it in.
            let mut all = Config::empty();
            all.virtual_services.append(&mut c.virtual_services);
            all.destination_rules.append(&mut c.destination_rules);
            all.gateways.append(&mut c.gateways);
            all.skipped.append(&mut c.skipped);
            return merge(all, &paths[1..]);
        }
        files.push(p.clone());
    }
    Config::load_files(&files)
}

fn merge(mut acc: Config, rest: &[PathBuf]) -> Result<Config, crate::config::ConfigErrors> {
    if rest.is_empty() {
        return Ok(acc);
    }
    let mut more = load(rest)?;
    acc.virtual_services.append(&mut more.virtual_services);
    acc.destination_rules.append(&mut more.destination_rules);
    acc.gateways.append(&mut more.gateways);
    acc.skipped.append(&mut more.skipped);
    Ok(acc)
}

pub fn validate(args: ValidateArgs) -> Result<ExitCode> {
    let config = match load(&args.paths) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s)", errors.0.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    let registry =
        if args.registry.is_empty() { Registry::default() } else { Registry::from_yaml_files(&args.registry)? };
    for s in &config.skipped {
        eprintln!("note: {s}");
    }
    match RouteTable::compile(&config, &registry) {
        Ok(table) => {
            // Without a registry every host is "unknown"; only say so when asked to check hosts.
            for w in table
                .warnings
                .iter()
                .filter(|w| !args.registry.is_empty() || !w.contains("not a service in the registry"))
            {
                eprintln!("warning: {w}");
            }
            if !args.registry.is_empty() {
                for vs in &config.virtual_services {
                    for (i, r) in vs.spec.http.iter().enumerate() {
                        for (j, d) in r.route.iter().enumerate() {
                            if d.destination.subset.is_some() {
                                let host = &d.destination.host;
                                let (name, ns) =
                                    crate::registry::split_host(host, &vs.namespace).unwrap_or((host, &vs.namespace));
                                if let Some(svc) =
                                    registry.services.iter().find(|s| s.name == name && s.namespace == ns)
                                {
                                    let subset = d.destination.subset.as_deref().unwrap_or("");
                                    let selects = config
                                        .destination_rules
                                        .iter()
                                        .flat_map(|dr| dr.spec.subsets.iter())
                                        .find(|s| s.name == subset);
                                    let count = registry
                                        .workloads
                                        .iter()
                                        .filter(|w| w.matches(&svc.selector))
                                        .filter(|w| {
                                            selects.is_some_and(|s| {
                                                s.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                                            })
                                        })
                                        .count();
                                    if count == 0 {
                                        eprintln!("warning: VirtualService {}: http[{i}].route[{j}]: subset {subset} of {host} selects no pod", vs.key());
                                    }
                                }
                            }
                        }
                    }
                }
            }
            println!(
                "{} VirtualServices, {} DestinationRules, {} Gateways: ok",
                config.virtual_services.len(),
                config.destination_rules.len(),
                config.gateways.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s)", errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Directory (or file) of Istio routing YAML.
    #[arg(long)]
    pub config: Vec<PathBuf>,
    /// Kubernetes YAML with Services and Pods.
    #[arg(long, required = true)]
    pub registry: Vec<PathBuf>,
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

pub fn explain(args: ExplainArgs) -> Result<ExitCode> {
    let registry = Registry::from_yaml_files(&args.registry)?;
    let config = if args.config.is_empty() {
        Config::empty()
    } else {
        load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let table = RouteTable::compile(&config, &registry)
        .map_err(|e| anyhow::anyhow!("the routing config does not compile:\n{e}"))?;
    let uri: http::Uri = args.url.parse().with_context(|| format!("invalid --url {:?}", args.url))?;
    let host = uri.host().context("--url needs a host, e.g. http://reviews:9080/")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host.clone());
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h.split_once(':').with_context(|| format!("header {h:?} must look like 'Name: value'"))?;
        headers.append(http::HeaderName::from_bytes(k.trim().as_bytes())?, http::HeaderValue::from_str(v.trim())?);
    }
    let method: http::Method = args.method.parse().with_context(|| format!("invalid method {:?}", args.method))?;
    let source = match &args.from {
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
    let context = match &args.gateway {
        Some(g) => {
            let (ns, n) = g.split_once('/').unwrap_or(("default", g.as_str()));
            (gw_name, gw_ns) = (n.to_owned(), ns.to_owned());
            Context::Gateway { name: &gw_name, namespace: &gw_ns, port }
        }
        None => {
            service = registry.service_by_host(&host, &client_ns).cloned();
            let Some(svc) = service.as_deref() else {
                bail!(
                    "{host} is not a service in the registry (known: {})",
                    registry.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
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
    print!("{}", table.explain(&req));
    Ok(ExitCode::SUCCESS)
}
