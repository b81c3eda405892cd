//! Compiling (config, registry) into a [`RouteTable`]: resolve hosts like Istio, build each
//! cluster once, check what Istio's validation checks, and collect every error with its place.
//! A VirtualService's HTTP rules are compiled in [`http_rules`], the Istio Gateways' listeners
//! (with their TLS certificates) in [`istio_gateways`].
mod http_rules;
mod istio_gateways;

use std::{collections::HashMap, sync::Arc};

use http::{HeaderName, HeaderValue};

use super::{matcher::*, *};
use crate::{
    config::{
        self, parse_duration, ConfigError, DestinationRuleSpec, HeaderOperations, Locator, Sourced, TrafficPolicy,
    },
    registry::Workload,
    registry::{split_host, Service, CLUSTER_DOMAIN},
};

pub(super) struct Builder<'a> {
    /// (namespace, name) → service: resolving a destination must not scan the registry.
    pub(super) services: HashMap<(&'a str, &'a str), &'a Arc<Service>>,
    pods_by_label: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Arc<Workload>>>,
    /// namespace → host name → the DestinationRule (nested: looked up by borrowed names).
    rules: HashMap<&'a str, HashMap<&'a str, &'a Sourced<DestinationRuleSpec>>>,
    /// Keyed by the service's address in the registry (one Arc per service), subset and port:
    /// hashing two names per destination was most of the compile time.
    clusters: HashMap<(usize, Option<String>, u16), Arc<Cluster>>,
    /// One stand-in per service the registry does not have (yet), so its clusters are built once
    /// too: 10k VirtualServices validated without a registry built 30k clusters before.
    placeholders: HashMap<(String, String), Arc<Service>>,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<String>,
    pub(super) default_retries: Arc<RetryPolicy>,
    /// Gateway API ReferenceGrants: which cross-namespace backendRefs resolve.
    pub(super) reference_grants: &'a [Sourced<crate::config::gateway_api::ReferenceGrantSpec>],
    /// Gateway API Gateways (served or not, with why), for routes' Gateway parentRefs.
    pub(super) served_gateways: Vec<super::gateway_api_ingress::ServedGateway>,
    /// Namespace labels, for listeners' `allowedRoutes.namespaces.selector`.
    pub(super) namespace_labels: &'a std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// (name, namespace) of a host as Istio resolves it relative to `ns`; FQDNs outside the cluster
/// domain and wildcards have none.
fn service_key<'h>(host: &'h str, ns: &'h str) -> Option<(&'h str, &'h str)> {
    if host.contains('*') {
        return None;
    }
    let bare = host.strip_suffix(CLUSTER_DOMAIN).and_then(|h| h.strip_suffix('.')).unwrap_or(host);
    let dots = bare.matches('.').count();
    if dots > 1 && !bare.ends_with(".svc") {
        return None; // an external name such as api.example.com
    }
    split_host(host, ns).map(|(n, s)| (s, n))
}

pub fn compile(config: &config::Config, registry: &Registry) -> (RouteTable, Vec<config::Rejected>) {
    let mut b = Builder::new(config, registry);
    let mut rejected = Vec::new();
    b.destination_rules(config, &mut rejected);
    let mut table = RouteTable { default_retries: b.default_retries.clone(), ..RouteTable::default() };
    b.default_clusters(registry, &mut table);
    b.istio_gateways(config, &mut table, &mut rejected);
    b.virtual_services(config, &mut table, &mut rejected);
    // Gateway API Gateways: served ones listen like Istio Gateways; routes attach below.
    b.served_gateways = b.kube_gateways(config, &mut table);
    // Gateway API HTTPRoutes bound to Services (GAMMA) or Gateways, compiled into the same form.
    // GRPCRoutes, held in their HTTPRoute form, are ordered and compiled with them.
    let routes: Vec<_> = config.http_routes.iter().chain(&config.grpc_routes).cloned().collect();
    for (object, file, errors) in b.http_routes(&routes, &mut table) {
        rejected.push(config::Rejected { object: Some(object), file, errors });
    }
    // Gateways sharing a port are served together: what cannot be merged is warned.
    b.shared_gateway_ports(&table);
    // Anything left was not attributed to an object (cannot happen today); never drop it silently.
    if !b.errors.is_empty() {
        let file: Arc<str> = Arc::from("config");
        rejected.push(config::Rejected { object: None, file, errors: std::mem::take(&mut b.errors) });
    }
    table.warnings = b.warnings;
    (table, rejected)
}

/// The steps of [`compile`], one kind of object each.
impl<'a> Builder<'a> {
    fn new(config: &'a config::Config, registry: &'a Registry) -> Self {
        let services = registry.services.iter().map(|s| ((s.namespace.as_str(), s.name.as_str()), s)).collect();
        Builder {
            services,
            pods_by_label: registry.label_index(),
            rules: HashMap::new(),
            clusters: HashMap::new(),
            placeholders: HashMap::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            default_retries: Arc::new(RetryPolicy::istio_default()),
            reference_grants: &config.reference_grants,
            served_gateways: Vec::new(),
            namespace_labels: &config.namespace_labels,
        }
    }

    /// The errors pushed since `before` belong to one object: it is rejected, the others go on.
    fn reject_since(
        &mut self,
        rejected: &mut Vec<config::Rejected>,
        before: usize,
        kind: &'static str,
        (name, ns): (&str, &str),
        file: &Arc<str>,
    ) -> bool {
        if self.errors.len() == before {
            return false;
        }
        let errors = self.errors.split_off(before);
        let object = Some(config::ObjectKey { kind, namespace: ns.to_owned(), name: name.to_owned() });
        rejected.push(config::Rejected { object, file: file.clone(), errors });
        true
    }

    /// Checks every DestinationRule and indexes the valid ones by host (the first one per host).
    fn destination_rules(&mut self, config: &'a config::Config, rejected: &mut Vec<config::Rejected>) {
        for dr in &config.destination_rules {
            let before = self.errors.len();
            self.check_destination_rule(dr);
            if self.reject_since(rejected, before, "DestinationRule", (&dr.name, &dr.namespace), &dr.at.file) {
                continue;
            }
            match service_key(&dr.spec.host, &dr.namespace) {
                Some(key) => {
                    if let Some(prev) = self.rules.get(key.0).and_then(|m| m.get(key.1)) {
                        self.warnings.push(format!(
                            "DestinationRules {} and {} both configure host {}; using {} (like Istio, the first one)",
                            prev.key(),
                            dr.key(),
                            dr.spec.host,
                            prev.key()
                        ));
                    } else {
                        self.rules.entry(key.0).or_default().insert(key.1, dr);
                    }
                }
                None => self.warnings.push(format!(
                    "DestinationRule {}: host {:?} is not a cluster service; ignored",
                    dr.key(),
                    config::cut(&dr.spec.host, 80)
                )),
            }
        }
    }

    /// The cluster of every service port, for traffic no VirtualService routes.
    fn default_clusters(&mut self, registry: &Registry, table: &mut RouteTable) {
        for svc in &registry.services {
            for p in &svc.ports {
                if let Some(c) = self.cluster(svc, None, p.port, &dr_path_none()) {
                    table
                        .defaults
                        .entry(svc.namespace.clone())
                        .or_default()
                        .entry(svc.name.clone())
                        .or_default()
                        .push((p.port, c));
                }
            }
        }
    }

    /// Compiles every VirtualService and files it under its mesh hosts and its Gateways.
    fn virtual_services(
        &mut self,
        config: &config::Config,
        table: &mut RouteTable,
        rejected: &mut Vec<config::Rejected>,
    ) {
        for vs in &config.virtual_services {
            let before = self.errors.len();
            let compiled = self.virtual_service(vs);
            if self.reject_since(rejected, before, "VirtualService", (&vs.name, &vs.namespace), &vs.at.file) {
                continue;
            }
            let Some(compiled) = compiled else { continue };
            let compiled = Arc::new(compiled);
            if compiled.mesh {
                self.mesh_hosts(vs, &compiled, table);
            }
            if !compiled.gateways.is_empty() {
                for (ns, name) in &compiled.gateways {
                    if !config.gateways.iter().any(|g| &g.name == name && &g.namespace == ns) {
                        self.warnings.push(format!("VirtualService {}: Gateway {ns}/{name} is not defined", vs.key()));
                    }
                }
                table.gateway_vs.push(compiled);
            }
        }
    }

    /// Files a mesh VirtualService under each of its hosts (the first loaded wins a host).
    fn mesh_hosts(
        &mut self,
        vs: &Sourced<config::VirtualServiceSpec>,
        compiled: &Arc<CompiledVs>,
        table: &mut RouteTable,
    ) {
        for host in &vs.spec.hosts {
            match service_key(host, &vs.namespace) {
                Some(key) => {
                    if !self.services.contains_key(&key) {
                        self.warnings.push(format!(
                            "VirtualService {}: host {host:?} is not a service in the registry",
                            vs.key()
                        ));
                    }
                    if let Some(prev) = table.mesh_vs.get(key.0).and_then(|m| m.get(key.1)) {
                        self.warnings.push(format!(
                            "VirtualServices {} and {} both route host {host}; {} applies (first loaded)",
                            prev.key, compiled.key, prev.key
                        ));
                    } else {
                        table.mesh_vs.entry(key.0.to_owned()).or_default().insert(key.1.to_owned(), compiled.clone());
                    }
                }
                None if host.contains('*') => table.mesh_wildcard_vs.push(compiled.clone()),
                None => self.warnings.push(format!(
                    "VirtualService {}: host {:?} is outside the cluster; no ServiceEntry support",
                    vs.key(),
                    config::cut(host, 80)
                )),
            }
        }
    }
}

fn dr_path_none() -> (Arc<Locator>, &'static dyn Fn() -> String) {
    (Arc::new(Locator::default()), &String::new)
}

impl Builder<'_> {
    fn check_destination_rule(&mut self, dr: &Sourced<DestinationRuleSpec>) {
        let mut seen = std::collections::HashSet::new();
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if !seen.insert(s.name.as_str()) {
                self.errors.push(
                    dr.at.error(format!("spec.subsets[{i}].name"), format!("subset {:?} is defined twice", s.name)),
                );
            }
        }
        let mut check = |path: String, p: &Option<TrafficPolicy>| {
            if let Some(p) = p {
                if let Err((field, msg)) = resolve_policy(Some(p), None, 0) {
                    self.errors.push(dr.at.error(format!("{path}.{field}"), msg));
                }
            }
        };
        check("spec.trafficPolicy".into(), &dr.spec.traffic_policy);
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            check(format!("spec.subsets[{i}].trafficPolicy"), &s.traffic_policy);
        }
    }

    /// The cluster for (service, subset, port), built once. `at` is where the reference was
    /// written, for the error when the subset does not exist.
    /// `at` says where the reference was written; its path is built only for an error.
    pub(super) fn cluster(
        &mut self,
        svc: &Arc<Service>,
        subset: Option<&str>,
        port: u16,
        at: &(Arc<Locator>, &dyn Fn() -> String),
    ) -> Option<Arc<Cluster>> {
        let cache_key = (Arc::as_ptr(svc) as usize, subset.map(str::to_owned), port);
        if let Some(c) = self.clusters.get(&cache_key) {
            return Some(c.clone());
        }
        let dr = self.rules.get(svc.namespace.as_str()).and_then(|m| m.get(svc.name.as_str())).copied();
        // A subset no DestinationRule defines (yet) is a warning, as in `istioctl analyze`: the
        // cluster exists with no endpoints, so the route answers 503 until the rule arrives.
        let mut undefined_subset = false;
        let subset_spec = match subset {
            None => None,
            Some(name) => match dr.and_then(|d| d.spec.subsets.iter().find(|s| s.name == name)) {
                Some(s) => Some(s),
                None => {
                    let msg = match dr {
                        Some(d) => format!(
                            "subset {:?} is not defined in DestinationRule {} for host {} (it defines: {}); requests get 503",
                            config::cut(name, 60),
                            d.key(),
                            svc.fqdn(),
                            d.spec.subsets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                        None => format!(
                            "subset {:?} is not defined in any DestinationRule for host {}; requests get 503",
                            config::cut(name, 60),
                            svc.fqdn()
                        ),
                    };
                    self.warnings.push(at.0.error((at.1)(), msg).to_string());
                    undefined_subset = true;
                    None
                }
            },
        };
        let policy = resolve_policy(
            dr.and_then(|d| d.spec.traffic_policy.as_ref()),
            subset_spec.and_then(|s| s.traffic_policy.as_ref()),
            port,
        );
        let (lb, connection_pool, outlier_detection) = match policy {
            Ok(p) => p,
            // Reported once by check_destination_rule with its exact place.
            Err(_) => (LbPolicy::DEFAULT, ConnectionPool::default(), None),
        };
        let mut endpoints = match svc.selector.iter().next() {
            Some((k, v)) => match self.pods_by_label.get(&(svc.namespace.as_str(), k.as_str(), v.as_str())) {
                Some(pods) => crate::registry::endpoints_among(pods.iter().copied(), svc, port),
                None => Vec::new(),
            },
            // No selector: the EndpointSlices' addresses, if any.
            None => crate::registry::endpoints_among(std::iter::empty(), svc, port),
        };
        if undefined_subset {
            endpoints.clear();
        }
        if let Some(s) = subset_spec {
            endpoints.retain(|e| s.labels.iter().all(|(k, v)| e.workload.labels.get(k) == Some(v)));
        }
        let cluster = Arc::new(Cluster {
            name: format!("outbound|{port}|{}|{}.{}.{CLUSTER_DOMAIN}", subset.unwrap_or(""), svc.name, svc.namespace),
            service: svc.clone(),
            subset: subset.map(str::to_owned),
            port,
            endpoints,
            lb,
            connection_pool,
            outlier_detection,
            telemetry: Default::default(),
            runtime: Default::default(),
        });
        self.clusters.insert(cache_key, cluster.clone());
        Some(cluster)
    }

    /// `base` gives the destination's field path; paths are only needed for errors, so they are
    /// built then, not for every destination.
    fn destination(
        &mut self,
        d: &config::Destination,
        ns: &str,
        at: &Arc<Locator>,
        base: &dyn Fn() -> String,
    ) -> Option<DestClusters> {
        let field = |suffix: &str| format!("{}{suffix}", base());
        let explicit = match &d.port {
            Some(p) => match u16::try_from(p.number) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.errors.push(at.error(field(".port.number"), format!("{} is not a port number", p.number)));
                    return None;
                }
            },
            None => None,
        };
        let svc = match service_key(&d.host, ns) {
            Some((sns, name)) => self
                .services
                .get(&(sns, name))
                .map(|s| (*s).clone())
                // Unknown to the registry: keep the reference (it may appear later) with no
                // endpoints, so traffic gets "no healthy upstream" rather than a wrong backend.
                .unwrap_or_else(|| {
                    self.placeholders
                        .entry((sns.to_owned(), name.to_owned()))
                        .or_insert_with(|| {
                            Arc::new(Service { name: name.to_owned(), namespace: sns.to_owned(), ..Default::default() })
                        })
                        .clone()
                }),
            None => {
                self.warnings.push(format!(
                    "{}: {}: host {:?} is outside the cluster; requests get 503",
                    at.file,
                    field(""),
                    d.host
                ));
                self.placeholders
                    .entry((ns.to_owned(), d.host.clone()))
                    .or_insert_with(|| {
                        Arc::new(Service { name: d.host.clone(), namespace: ns.to_owned(), ..Default::default() })
                    })
                    .clone()
            }
        };
        let subset_at: (Arc<Locator>, &dyn Fn() -> String) = (at.clone(), &|| field(".subset"));
        let mut by_port = Vec::with_capacity(svc.ports.len().max(1));
        match explicit {
            Some(p) => by_port.push((p, self.cluster(&svc, d.subset.as_deref(), p, &subset_at)?)),
            None if svc.ports.is_empty() => by_port.push((0, self.cluster(&svc, d.subset.as_deref(), 0, &subset_at)?)),
            None => {
                for p in svc.ports.iter().map(|p| p.port) {
                    by_port.push((p, self.cluster(&svc, d.subset.as_deref(), p, &subset_at)?));
                }
            }
        }
        Some(DestClusters {
            host: d.host.clone(),
            subset: d.subset.clone(),
            by_port,
            explicit_port: explicit.is_some(),
        })
    }

    fn weighted<'d>(
        &mut self,
        dests: impl ExactSizeIterator<Item = (&'d config::Destination, Option<i64>, Option<&'d config::Headers>)>,
        ns: &str,
        at: &Arc<Locator>,
        path: &dyn Fn() -> String,
    ) -> Vec<WeightedDest> {
        let count = dests.len();
        let mut out = Vec::with_capacity(count);
        for (i, (d, w, h)) in dests.enumerate() {
            // Istio's only weight rules (checked in config::validate): no negative weight, not all
            // zero; Envoy splits by weight / total, so the sum need not be 100.
            let w = match w {
                Some(w) => u32::try_from(w).unwrap_or(0),
                None if count == 1 => 100,
                None => 0,
            };
            let (rq, rs) = h.map(|h| self.header_ops(h, at, &format!("{}[{i}].headers", path()))).unwrap_or_default();
            if let Some(dc) = self.destination(d, ns, at, &|| format!("{}[{i}].destination", path())) {
                out.push(WeightedDest {
                    dest: dc,
                    weight: w,
                    request_headers: rq,
                    response_headers: rs,
                    fail_with: None,
                    mirrors: Vec::new(),
                    fail_reason: None,
                });
            }
        }
        out
    }

    fn header_ops(&mut self, h: &config::Headers, at: &Arc<Locator>, path: &str) -> (HeaderOps, HeaderOps) {
        let mut one = |ops: &Option<HeaderOperations>, which: &str| {
            let mut out = HeaderOps::default();
            let Some(ops) = ops else { return out };
            let mut pair = |k: &String, v: &String, field: &str| -> Option<(HeaderName, HeaderValue)> {
                // Setting `:authority` (or `Host`) on a request is Istio's authority rewrite; on
                // HTTP/1.1 upstreams that is the Host header.
                let lower = k.to_ascii_lowercase();
                let lower = if which == "request" && lower == ":authority" { "host".to_owned() } else { lower };
                let name = HeaderName::from_bytes(lower.as_bytes());
                let value = HeaderValue::from_bytes(v.as_bytes());
                match (name, value) {
                    (Ok(n), Ok(v)) => Some((n, v)),
                    // Istio accepted it (config::validate); HTTP cannot carry it: skipped, said so.
                    _ => {
                        self.warnings.push(
                            at.error(
                                format!("{path}.{which}.{field}.{k}"),
                                format!(
                                    "header {:?} cannot be sent over HTTP; this operation is skipped",
                                    config::cut(k, 60)
                                ),
                            )
                            .to_string(),
                        );
                        None
                    }
                }
            };
            out.set = ops.set.iter().filter_map(|(k, v)| pair(k, v, "set")).collect();
            out.add = ops.add.iter().filter_map(|(k, v)| pair(k, v, "add")).collect();
            for (i, k) in ops.remove.iter().enumerate() {
                match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
                    Ok(n) => out.remove.push(n),
                    Err(_) => self.warnings.push(
                        at.error(
                            format!("{path}.{which}.remove[{i}]"),
                            format!("header {:?} cannot be sent over HTTP; nothing to remove", config::cut(k, 60)),
                        )
                        .to_string(),
                    ),
                }
            }
            out
        };
        (one(&h.request, "request"), one(&h.response, "response"))
    }

    fn duration(&mut self, v: &Option<String>, at: &Locator, path: impl FnOnce() -> String) -> Option<Duration> {
        match v.as_deref().map(parse_duration) {
            Some(Ok(d)) if d.is_zero() => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                self.errors.push(at.error(path(), e));
                None
            }
            None => None,
        }
    }

    fn string_match(
        &mut self,
        at: &Locator,
        sm: &config::StringMatch,
        ignore_case: bool,
        field: impl FnOnce() -> String,
    ) -> Option<StrMatch> {
        match StrMatch::compile(sm, ignore_case) {
            Ok(c) => Some(c),
            Err(e) => {
                self.errors.push(at.error(field(), e));
                None
            }
        }
    }

    fn percent(&mut self, p: Option<f64>, at: &Locator, path: String) -> f64 {
        match p {
            Some(v) if (0.0..=100.0).contains(&v) => v,
            Some(v) => {
                self.errors.push(at.error(path, format!("{v} is not a percentage (0-100)")));
                0.0
            }
            None => 0.0,
        }
    }

    fn virtual_service(&mut self, vs: &Sourced<config::VirtualServiceSpec>) -> Option<CompiledVs> {
        let at = &vs.at;
        let errors_before = self.errors.len();
        if vs.spec.hosts.is_empty() {
            // A delegate: valid Istio, reported by config::validate; it routes nothing here.
            return None;
        }
        let mut mesh = vs.spec.gateways.is_empty();
        let mut gateways = Vec::new();
        for g in &vs.spec.gateways {
            if g == "mesh" {
                mesh = true;
            } else {
                let (ns, name) = g.split_once('/').unwrap_or((vs.namespace.as_str(), g.as_str()));
                gateways.push((ns.to_owned(), name.to_owned()));
            }
        }
        let mut http = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            if let Some(rule) = self.http_rule(r, vs, i) {
                http.push(rule);
            }
        }
        let mut tcp = Vec::new();
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            let path = format!("spec.tcp[{i}]");
            let route =
                self.weighted(r.route.iter().map(|d| (&d.destination, d.weight, None)), &vs.namespace, at, &|| {
                    format!("{path}.route")
                });
            let m = r.matches.first();
            if r.matches.len() > 1 {
                self.warnings.push(format!("VirtualService {}: {path}: only the first tcp match is used", vs.key()));
            }
            tcp.push(TcpRule {
                port: m.and_then(|m| m.port).and_then(|p| u16::try_from(p).ok()),
                source_labels: m.map(|m| m.source_labels.clone()).unwrap_or_default(),
                route,
            });
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(CompiledVs {
            namespace: vs.namespace.clone(),
            key: Arc::from(vs.key()),
            origin: at.clone(),
            hosts: vs.spec.hosts.clone(),
            http,
            tcp,
            gateways,
            mesh,
            gateway_api: false,
        })
    }
}

type Policy = (LbPolicy, ConnectionPool, Option<OutlierDetection>);

/// Istio's merge: top-level policy, overridden by its port-level settings for this port, then by
/// the subset's policy (and its port-level settings), field by field.
fn resolve_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u16,
) -> Result<Policy, (String, String)> {
    let (mut lb, mut pool, mut od) = (None, None, None);
    let mut overlay = |l: &Option<config::LoadBalancerSettings>,
                       p: &Option<config::ConnectionPoolSettings>,
                       o: &Option<config::OutlierDetectionSettings>| {
        if l.is_some() {
            lb = l.clone();
        }
        if p.is_some() {
            pool = p.clone();
        }
        if o.is_some() {
            od = o.clone();
        }
    };
    for tp in [top, subset].into_iter().flatten() {
        overlay(&tp.load_balancer, &tp.connection_pool, &tp.outlier_detection);
        if let Some(pl) =
            tp.port_level_settings.iter().find(|p| p.port.as_ref().is_some_and(|p| p.number == u32::from(port)))
        {
            overlay(&pl.load_balancer, &pl.connection_pool, &pl.outlier_detection);
        }
    }
    let lb = match &lb {
        Some(l) => LbPolicy::from_settings(l).map_err(|(f, m)| (format!("loadBalancer.{f}"), m))?,
        None => LbPolicy::DEFAULT,
    };
    let pool = match &pool {
        Some(p) => ConnectionPool::from_settings(p).map_err(|(f, m)| (format!("connectionPool.{f}"), m))?,
        None => ConnectionPool::default(),
    };
    let od = match &od {
        Some(o) => Some(OutlierDetection::from_settings(o).map_err(|(f, m)| (format!("outlierDetection.{f}"), m))?),
        None => None,
    };
    Ok((lb, pool, od))
}
