//! The pure routing engine: a route table compiled once from (Istio config, service registry)
//! that answers (source workload, request) → (destination cluster, fault, policies). No IO, no
//! clock, no global randomness (the caller passes the RNG), so it is testable to the last weight.
mod build;
mod decide;
pub mod explain;
mod gateway_api;
mod gateway_api_ingress;
mod gateway_merge;
mod gateway_tls;
pub mod matcher;
mod policy;

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};

pub use self::explain::Explanation;
use self::matcher::{Cond, MatchRequest};
pub use self::policy::*;
use crate::{
    config::{Config, ConfigErrors},
    registry::{Endpoint, Registry, Service, Workload},
};

/// Where a request entered: a pod's outbound connection to a service, or an ingress Gateway.
#[derive(Clone, Copy, Debug)]
pub enum Context<'a> {
    /// A connection a pod opened to a service VIP, redirected by the kernel to the node proxy.
    Mesh {
        /// The service whose VIP the pod connected to.
        service: &'a Service,
        /// The service port it connected to.
        port: u16,
    },
    /// A request that arrived on a Gateway server port (`--ingress-bind`).
    Gateway {
        /// The Gateway's `metadata.name`.
        name: &'a str,
        /// The Gateway's namespace.
        namespace: &'a str,
        /// The server port the request arrived on.
        port: u16,
    },
}

/// What the routing engine sees of an HTTP request: borrowed from the proxy's request, so routing
/// allocates nothing for it.
pub struct RequestInfo<'a> {
    /// Where the request entered (the service it was sent to, or the Gateway).
    pub context: Context<'a>,
    /// The pod that sent it, known from the in-pod listener that accepted; None at a Gateway.
    pub source: Option<&'a Workload>,
    /// The request method (`match.method`).
    pub method: &'a http::Method,
    /// The request target: path for `match.uri`, query for `match.queryParams`.
    pub uri: &'a http::Uri,
    /// `:authority` or `Host` (`match.authority`, Gateway host selection).
    pub authority: Option<&'a str>,
    /// `http` here: the node proxy terminates no TLS (`match.scheme`, redirect defaults).
    pub scheme: &'a str,
    /// The request headers (`match.headers`, `withoutHeaders`).
    pub headers: &'a HeaderMap,
}

impl RequestInfo<'_> {
    /// The destination port: the service port, or the Gateway server port.
    pub fn port(&self) -> u16 {
        match self.context {
            Context::Mesh { port, .. } | Context::Gateway { port, .. } => port,
        }
    }

    /// (name, namespace) of the Gateway the request came through.
    pub fn gateway(&self) -> Option<(&str, &str)> {
        match self.context {
            Context::Gateway { name, namespace, .. } => Some((name, namespace)),
            Context::Mesh { .. } => None,
        }
    }
}

/// What the proxy does with a request: the routing engine's answer.
#[derive(Debug)]
pub enum Decision {
    // Boxed (clippy's large_enum_variant): a Forward is ~310 bytes, the other variants ~30,
    // and every Decision would be that large; the cost is one allocation per routed request.
    /// Send it upstream as described.
    Forward(Box<Forward>),
    /// Answer with a redirect (`HTTPRoute.redirect`); the request goes nowhere.
    Redirect {
        /// 3xx status (`redirectCode`, 301 by default).
        status: u16,
        /// The `Location` header value.
        location: String,
    },
    /// Nothing routes the request: the proxy answers 404 with this reason.
    NoRoute {
        /// Why, for the response body and the access log.
        reason: String,
    },
}

/// The fault injection rolled for this request (`HTTPRoute.fault`, percentages already applied).
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Wait this long before forwarding.
    pub delay: Option<Duration>,
    /// Answer with this status instead of forwarding.
    pub abort: Option<u16>,
}

/// A routed request: where it goes and everything the matched rule asks the proxy to do on the way.
#[derive(Debug)]
pub struct Forward {
    /// `name.namespace` of the VirtualService, None for plain Kubernetes routing.
    pub virtual_service: Option<Arc<str>>,
    /// Index in the VirtualService's `http[]`.
    pub rule: Option<usize>,
    /// The upstream picked (weights already rolled).
    pub cluster: Arc<Cluster>,
    /// Fault to inject before forwarding.
    pub fault: Fault,
    /// The route's `timeout` for the whole request, retries included; None: no limit (Istio's default).
    pub timeout: Option<Duration>,
    /// When and how often to retry (the route's, or Istio's default).
    pub retries: Arc<RetryPolicy>,
    /// Path and authority rewrite before forwarding.
    pub rewrite: Option<Rewrite>,
    /// Header edits on the request (the rule's, then the destination's).
    pub request_headers: HeaderOps,
    /// Header edits on the response (the rule's, then the destination's).
    pub response_headers: HeaderOps,
    /// Where copies of the request go, fire and forget (`mirror`, Gateway API `RequestMirror`
    /// filters; percentages already rolled).
    pub mirrors: Vec<Arc<Cluster>>,
}

/// `HTTPRoute.rewrite` as applied to one request.
#[derive(Clone, Debug)]
pub struct Rewrite {
    /// The new path (or path prefix, with `matched_prefix`).
    pub uri: Option<String>,
    /// The prefix the matching condition matched: `rewrite.uri` replaces just that part.
    pub matched_prefix: Option<String>,
    /// The new `Host`.
    pub authority: Option<String>,
}

impl Rewrite {
    /// The rewritten path of `path`; None when the rule rewrites no path.
    pub fn apply_path(&self, path: &str) -> Option<String> {
        let uri = self.uri.as_ref()?;
        let path = match &self.matched_prefix {
            Some(p) if path.starts_with(p.as_str()) => format!("{uri}{}", &path[p.len()..]),
            _ => uri.clone(),
        };
        // A request path is never empty: a rewrite that consumed all of it leaves `/`.
        Some(if path.is_empty() { "/".to_owned() } else { path })
    }
}

/// Request or response header edits, applied remove → set → add as Envoy does.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    /// Replace (or add) these headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these values, keeping existing ones.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// No edit at all (the proxy skips the header pass).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to `headers`: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }

    fn merged(&self, other: &HeaderOps) -> HeaderOps {
        let mut m = self.clone();
        m.set.extend(other.set.iter().cloned());
        m.add.extend(other.add.iter().cloned());
        m.remove.extend(other.remove.iter().cloned());
        m
    }
}

/// An upstream: a service port, optionally narrowed to a subset, with its endpoints and the
/// DestinationRule policy that applies to it. Built once per compile and shared.
#[derive(Debug)]
pub struct Cluster {
    /// Envoy style: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// The Kubernetes service.
    pub service: Arc<Service>,
    /// The DestinationRule subset, None for all endpoints.
    pub subset: Option<String>,
    /// The service port.
    pub port: u16,
    /// The pods behind it (the subset's labels applied), fixed at compile time.
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is picked (the subset's policy over the DestinationRule's, Istio's default otherwise).
    pub lb: LbPolicy,
    /// Connection and request limits (`trafficPolicy.connectionPool`).
    pub connection_pool: ConnectionPool,
    /// Ejection of failing endpoints (`trafficPolicy.outlierDetection`); None: never ejected.
    pub outlier_detection: Option<OutlierDetection>,
    /// The Istio metric labels of its service and endpoints, resolved on the first request that
    /// is recorded (not at compile: a reload with thousands of clusters pays nothing for it).
    pub telemetry: std::sync::OnceLock<Arc<crate::metrics::ClusterLabels>>,
    /// The load balancer's state for it (round-robin position, requests in flight, endpoint
    /// health): not part of what compiling decides, but owned here so a pick finds it without a
    /// lookup. Set when the proxy adopts the table ([`crate::proxy::lb::LoadBalancer::adopt`]).
    pub runtime: std::sync::OnceLock<crate::proxy::lb::ClusterRuntime>,
}

impl Cluster {
    /// The cluster's metric labels (resolved once).
    pub fn telemetry(&self) -> &Arc<crate::metrics::ClusterLabels> {
        self.telemetry.get_or_init(|| Arc::new(crate::metrics::ClusterLabels::of(self)))
    }

    /// The HTTP version to speak to this cluster's endpoints for a request the client sent over
    /// HTTP/2 or not (see [`UpstreamProtocol::choose`]).
    pub fn upstream_protocol(&self, client_http2: bool) -> UpstreamProtocol {
        let port = self.service.port(self.port).map_or(crate::registry::AppProtocol::Unknown, |p| p.protocol);
        UpstreamProtocol::choose(port, &self.connection_pool, client_http2)
    }
}

/// A destination of a route: the cluster for an explicit port, or one per service port when the
/// rule leaves the port to the request (`destination: {host: reviews}`).
#[derive(Clone, Debug)]
pub(crate) struct DestClusters {
    pub host: String,
    pub subset: Option<String>,
    pub by_port: Vec<(u16, Arc<Cluster>)>,
    pub explicit_port: bool,
}

impl DestClusters {
    fn pick(&self, port: u16) -> Option<&Arc<Cluster>> {
        if self.explicit_port || self.by_port.len() == 1 {
            return self.by_port.first().map(|(_, c)| c);
        }
        self.by_port.iter().find(|(p, _)| *p == port).or(self.by_port.first()).map(|(_, c)| c)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct WeightedDest {
    pub dest: DestClusters,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Gateway API: this share of the traffic is answered with this status instead of being
    /// forwarded (500 for a backendRef that does not resolve, as the spec asks).
    pub fail_with: Option<u16>,
    /// Gateway API `RequestMirror` filters of this backendRef: mirrored when it is picked.
    pub mirrors: Vec<(DestClusters, f64)>,
    /// Why `fail_with` is set (the backendRef that does not resolve, and why), for `mesh explain`.
    pub fail_reason: Option<Arc<str>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    pub code: u16,
    /// `prefixRewrite`: replaces the prefix the matching `uri.prefix` matched.
    pub prefix_rewrite: Option<String>,
    /// Gateway API semantics (HTTPRoute `RequestRedirect`): the port is the explicit one, else
    /// the scheme's well-known port, else the service port, and is left out of Location when it
    /// is the scheme's default.
    pub gateway: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Action {
    Route(Vec<WeightedDest>),
    Redirect(Redirect),
    /// Accepted as Istio does; the proxy has no way yet to answer it (no `Decision` for it), so a
    /// request that matches the rule gets 404 with the reason.
    DirectResponse {
        status: u16,
        body: Option<String>,
    },
}

#[derive(Clone, Debug, Default)]
pub(crate) struct FaultSpec {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(u16, f64)>,
}

#[derive(Clone, Debug)]
pub(crate) struct HttpRule {
    pub name: Option<String>,
    pub matches: Vec<MatchRequest>,
    pub action: Action,
    pub fault: FaultSpec,
    pub timeout: Option<Duration>,
    pub retries: Arc<RetryPolicy>,
    pub rewrite_uri: Option<String>,
    /// `rewrite_uri` replaces the whole path (Gateway API `ReplaceFullPath`), not the prefix
    /// the rule matched.
    pub rewrite_whole_path: bool,
    pub rewrite_authority: Option<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Each mirror with the percentage of requests it gets.
    pub mirrors: Vec<(DestClusters, f64)>,
    /// Gateway API: the route, rule and match this rule was compiled from, for `mesh explain`
    /// (never read when routing).
    pub origin: Option<Arc<gateway_api::RuleOrigin>>,
}

impl HttpRule {
    /// A rule the engine makes itself (no fault, timeout, rewrite or header rules): `action` for
    /// requests meeting `conds`, under the default retry policy.
    pub(crate) fn generated(name: String, conds: Vec<Cond>, action: Action, retries: Arc<RetryPolicy>) -> HttpRule {
        HttpRule {
            name: Some(name),
            matches: vec![MatchRequest { name: None, conds }],
            action,
            fault: FaultSpec::default(),
            timeout: None,
            retries,
            rewrite_uri: None,
            rewrite_whole_path: false,
            rewrite_authority: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            mirrors: Vec::new(),
            origin: None,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct TcpRule {
    pub port: Option<u16>,
    pub source_labels: std::collections::BTreeMap<String, String>,
    pub route: Vec<WeightedDest>,
}

#[derive(Debug)]
pub(crate) struct CompiledVs {
    /// Its namespace: a Gateway server's `ns/host` entries admit only VirtualServices of `ns`.
    pub namespace: String,
    pub key: Arc<str>,
    /// Where it was written (`file:line` is worked out only when shown: see [`crate::config::Locator`]).
    pub origin: Arc<crate::config::Locator>,
    /// Hosts as written, and whether each is a wildcard (`*`, `*.example.com`).
    pub hosts: Vec<String>,
    pub http: Vec<HttpRule>,
    pub tcp: Vec<TcpRule>,
    /// Gateways (namespace, name) this VS is bound to, plus `mesh`.
    pub gateways: Vec<(String, String)>,
    pub mesh: bool,
    /// Compiled from Gateway API routes (HTTPRoute, GRPCRoute), not a VirtualService.
    pub gateway_api: bool,
}

/// One Gateway server port the agent listens on (`--ingress-bind`), with the hosts it admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayListener {
    /// The Gateway's name.
    pub name: String,
    /// The Gateway's namespace.
    pub namespace: String,
    /// The server's port number.
    pub port: u16,
    /// The server's `hosts` entries (`[namespace/]host`).
    pub hosts: Vec<String>,
}

/// A Gateway port served with TLS and its certificates, picked by SNI.
#[derive(Debug)]
pub(crate) struct GatewayTls {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub certs: crate::proxy::tls::ServerCerts,
}

/// The routes attached to one port of a Gateway API Gateway for one host name (`exact`,
/// `*.suffix` or `*`), in precedence order.
#[derive(Debug)]
pub(crate) struct GatewayApiVhost {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub host: String,
    pub vs: Arc<CompiledVs>,
}

/// A service's ports, each with its plain Kubernetes cluster (all endpoints).
pub(crate) type PortClusters = Vec<(u16, Arc<Cluster>)>;

/// The compiled routing state. Immutable; swapped whole on reload.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// namespace → service → the VirtualService that applies inside the mesh (nested so a
    /// lookup borrows the request's names instead of building a key).
    pub(crate) mesh_vs: HashMap<String, HashMap<String, Arc<CompiledVs>>>,
    /// VirtualServices whose hosts are wildcards, for services with no exact match.
    pub(crate) mesh_wildcard_vs: Vec<Arc<CompiledVs>>,
    /// VirtualServices bound to Gateways.
    pub(crate) gateway_vs: Vec<Arc<CompiledVs>>,
    /// Plain Kubernetes clusters: namespace → service → (port, all endpoints round robin).
    pub(crate) defaults: HashMap<String, HashMap<String, PortClusters>>,
    pub(crate) default_retries: Arc<RetryPolicy>,
    pub(crate) gateways: Vec<GatewayListener>,
    /// The certificates of Gateway ports served with TLS: (namespace, name, port) → certificates
    /// by SNI (`gateway_tls.rs`).
    pub(crate) gateway_tls: Vec<GatewayTls>,
    /// Gateway API Gateways' virtual hosts, most specific host name first.
    pub(crate) gateway_api_vs: Vec<GatewayApiVhost>,
    /// Every admitted HTTPRoute/GRPCRoute with where each parentRef attached or why not: what
    /// `mesh explain` says about routes (the rules themselves are in the compiled tables).
    pub(crate) gateway_api_routes: Vec<gateway_api::RouteReport>,
    /// Things `mesh validate` reports that do not stop the config from applying.
    pub warnings: Vec<String>,
}

impl RouteTable {
    /// Compiles `config` against `registry`, all or nothing: every semantic error is reported
    /// together (what `mesh validate` and tests want).
    pub fn compile(config: &Config, registry: &Registry) -> Result<RouteTable, ConfigErrors> {
        let (table, rejected) = build::compile(config, registry);
        if rejected.is_empty() {
            Ok(table)
        } else {
            Err(ConfigErrors(rejected.into_iter().flat_map(|r| r.errors).collect()))
        }
    }

    /// Compiles `config` object by object: an object with a semantic error is left out of the
    /// table and returned with its errors; every other object is in the table. References
    /// between objects (a subset, a host, a Gateway) never reject anything: what they name may
    /// arrive later, and until then the route answers 503 (Istio's behaviour).
    pub fn compile_admitting(config: &Config, registry: &Registry) -> (RouteTable, Vec<crate::config::Rejected>) {
        build::compile(config, registry)
    }

    /// Plain Kubernetes routing: every service port to all its endpoints.
    pub fn kubernetes_only(registry: &Registry) -> RouteTable {
        build::compile(&Config::empty(), registry).0
    }

    /// The Gateway servers to listen for (the agent reconciles its ingress listeners to this).
    pub fn gateways(&self) -> Vec<GatewayListener> {
        self.gateways.clone()
    }

    /// Whether a Gateway port terminates TLS: its requests' scheme is `https` (what `scheme`
    /// matches see and what a redirect without a scheme keeps).
    pub fn gateway_terminates_tls(&self, namespace: &str, name: &str, port: u16) -> bool {
        self.gateway_tls.iter().any(|t| t.port == port && t.name == name && t.namespace == namespace)
    }

    /// The certificates a Gateway port terminates TLS with; None: the port is plain HTTP.
    pub fn gateway_tls(&self, namespace: &str, name: &str, port: u16) -> Option<crate::proxy::tls::ServerCerts> {
        // Once per accepted connection, over a handful of Gateway ports.
        self.gateway_tls
            .iter()
            .find(|t| t.port == port && t.name == name && t.namespace == namespace)
            .map(|t| t.certs.clone())
    }

    /// The ports of [`RouteTable::gateways`].
    pub fn gateway_ports(&self) -> Vec<u16> {
        self.gateways.iter().map(|g| g.port).collect()
    }

    /// Every cluster of the table, once each, by name: the plain Kubernetes ones and every one a
    /// VirtualService routes or mirrors to (`/config_dump`).
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let mut all: std::collections::BTreeMap<&str, &Arc<Cluster>> = std::collections::BTreeMap::new();
        self.for_each_cluster(&mut |c| {
            all.entry(&c.name).or_insert(c);
        });
        all.into_values().cloned().collect()
    }

    /// Calls `f` with every cluster the table can send a request to, as often as it appears.
    pub fn for_each_cluster<'a>(&'a self, f: &mut dyn FnMut(&'a Arc<Cluster>)) {
        for ports in self.defaults.values().flat_map(|by_name| by_name.values()) {
            for (_, c) in ports {
                f(c);
            }
        }
        let vses = self
            .mesh_vs
            .values()
            .flat_map(|m| m.values())
            .chain(&self.mesh_wildcard_vs)
            .chain(&self.gateway_vs)
            .chain(self.gateway_api_vs.iter().map(|v| &v.vs));
        for vs in vses {
            let routed = vs.http.iter().flat_map(|r| match &r.action {
                Action::Route(dests) => dests.as_slice(),
                _ => &[],
            });
            let dests = routed.chain(vs.tcp.iter().flat_map(|t| &t.route)).map(|d| &d.dest);
            let backend_mirrors = vs.http.iter().flat_map(|r| match &r.action {
                Action::Route(dests) => dests.iter().flat_map(|d| &d.mirrors).collect::<Vec<_>>(),
                _ => Vec::new(),
            });
            let mirrors = vs.http.iter().flat_map(|r| &r.mirrors).chain(backend_mirrors).map(|(d, _)| d);
            for d in dests.chain(mirrors) {
                for (_, c) in &d.by_port {
                    f(c);
                }
            }
        }
    }

    /// The VirtualService that applies to this request's destination, if any.
    pub(crate) fn virtual_service(&self, req: &RequestInfo<'_>) -> Option<&Arc<CompiledVs>> {
        match req.context {
            Context::Mesh { service, .. } => self.mesh_vs_for(service).or_else(|| {
                if self.mesh_wildcard_vs.is_empty() {
                    return None;
                }
                let fqdn = service.fqdn();
                self.mesh_wildcard_vs.iter().find(|vs| vs.hosts.iter().any(|h| host_matches(h, &fqdn)))
            }),
            Context::Gateway { port, .. } => {
                let host = req
                    .authority
                    .map(|a| a.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(a, |(h, _)| h));
                // Every Gateway with servers (Istio) or HTTP listeners (Gateway API) on `port`
                // shares the node's one listener there, whichever Gateway it was opened for: as
                // Istio merges the servers of Gateways on one port into one route config, their
                // virtual hosts are served together and the most specific host name matching
                // `Host` wins (exact, longest `*.` suffix, `*`; a tie: the Istio Gateway's).
                // A Gateway API virtual host is the most specific of its port (sorted at compile
                // time, the same host of two Gateways merged: gateway_merge.rs).
                let api = self
                    .gateway_api_vs
                    .iter()
                    .find(|v| v.port == port && gateway_api_ingress::vhost_matches(&v.host, host.unwrap_or("")));
                match (api, self.istio_gateway_vs(port, host)) {
                    (Some(a), Some((_, rank))) if rank > gateway_api_ingress::vhost_rank(&a.host) => Some(&a.vs),
                    (_, Some((vs, _))) => Some(vs),
                    (Some(a), None) => Some(&a.vs),
                    (None, None) => None,
                }
            }
        }
    }

    /// The first VirtualService bound to an Istio Gateway with a server on `port` that admits
    /// `host`, with the rank of its most specific host name matching it. Istio serves on a
    /// Gateway port only the hosts its servers admit there (the virtual host is the intersection
    /// of the server's and the VirtualService's hosts); any other host gets 404, whatever the
    /// VirtualService says.
    fn istio_gateway_vs(
        &self,
        port: u16,
        host: Option<&str>,
    ) -> Option<(&Arc<CompiledVs>, gateway_api_ingress::VhostRank)> {
        let servers: Vec<&GatewayListener> = self.gateways.iter().filter(|g| g.port == port).collect();
        self.gateway_vs.iter().find_map(|vs| {
            let rank = vs
                .hosts
                .iter()
                .filter(|h| host.is_some_and(|host| host_matches(h, host)) || *h == "*")
                .map(|h| gateway_api_ingress::vhost_rank(h))
                .min()?;
            let admitted = servers.iter().any(|g| {
                vs.gateways.iter().any(|(ns, n)| *n == g.name && *ns == g.namespace)
                    && g.hosts.iter().any(|sh| server_host_admits(sh, &g.namespace, &vs.namespace, host.unwrap_or("")))
            });
            admitted.then_some((vs, rank))
        })
    }

    pub(crate) fn mesh_vs_for(&self, service: &Service) -> Option<&Arc<CompiledVs>> {
        self.mesh_vs.get(service.namespace.as_str())?.get(service.name.as_str())
    }

    pub(crate) fn default_cluster(&self, service: &Service, port: u16) -> Option<&Arc<Cluster>> {
        let ports = self.defaults.get(service.namespace.as_str())?.get(service.name.as_str())?;
        ports.iter().find(|(p, _)| *p == port).map(|(_, c)| c)
    }

    /// What [`RouteTable::route`] would do with `req` and why, for `mesh explain`.
    pub fn explain(&self, req: &RequestInfo<'_>) -> Explanation {
        explain::explain(self, req)
    }
}

/// A Gateway server's `hosts` entry (`[namespace/]host`, `*` wildcards, `.` for the Gateway's
/// own namespace) admits `host` routed by a VirtualService of `vs_namespace`.
pub fn server_host_admits(entry: &str, gateway_namespace: &str, vs_namespace: &str, host: &str) -> bool {
    let (ns, pattern) = entry.split_once('/').unwrap_or(("*", entry));
    let ns_ok = match ns {
        "*" => true,
        "." => vs_namespace == gateway_namespace,
        ns => ns == vs_namespace,
    };
    ns_ok && host_matches(pattern, host)
}

/// Istio host matching: exact (ASCII case-insensitive), or a `*.suffix` / `*` wildcard.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

impl Redirect {
    fn location(&self, req: &RequestInfo<'_>) -> String {
        self.location_after(req, None)
    }

    /// The Location header; `matched_prefix` is what the rule's `uri.prefix` matched, for
    /// `prefixRewrite` (without one, the rewrite replaces the whole path, as Envoy does for `/`).
    fn location_after(&self, req: &RequestInfo<'_>, matched_prefix: Option<&str>) -> String {
        if self.gateway {
            return self.gateway_location(req, matched_prefix);
        }
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let authority = self.authority.as_deref().or(req.authority).unwrap_or("");
        let authority = match self.port {
            Some(p) => format!("{}:{p}", authority.rsplit_once(':').map_or(authority, |(h, _)| h)),
            None => authority.to_owned(),
        };
        let uri = match (&self.uri, &self.prefix_rewrite) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => {
                let path = req.uri.path();
                let rest = path.strip_prefix(matched_prefix.unwrap_or("/")).unwrap_or(path);
                let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                format!("{p}{rest}{query}")
            }
            (None, None) => req.uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned()),
        };
        format!("{scheme}://{authority}{uri}")
    }
}

#[cfg(test)]
pub(crate) mod tests;
