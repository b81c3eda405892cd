//! Gateway API HTTPRoutes bound to a Service (GAMMA), compiled into the engine's own
//! VirtualService form, as Istio does (`pilot/pkg/config/kube/gateway/conversion.go` turns each
//! HTTPRoute into a VirtualService with "gateway semantics"): one compile path, one `route()`.
//!
//! What differs from a VirtualService is decided here, at compile time:
//! * every (rule, match) pair becomes its own rule, and the rules of all routes of one Service are
//!   ordered as the spec orders matches (Exact path, longest prefix, regex, method, most headers,
//!   most query params, then the oldest route, then namespace/name, then rule and match order);
//! * `PathPrefix` matches whole segments ([`StrMatch::SegmentPrefix`]);
//! * a backendRef that does not resolve answers 500 for its share, a rule with no backend 500;
//! * redirects default to 302 and take their port as the spec says ([`Redirect::gateway`]);
//! * a route bound to one `port` of a Service leaves the other ports to plain Kubernetes routing.
//!
//! A route's rules and matches are compiled in [`rules`].
mod rules;

use std::{collections::BTreeMap, sync::Arc};

use http::{HeaderName, HeaderValue};
use regex::Regex;

use super::{build::Builder, gateway_api_ingress::VhostKey, matcher::*, *};
use crate::config::{
    self,
    gateway_api::{self as gw, HttpRouteSpec, PathRewrite, PathType},
    ConfigError, Locator, ObjectKey, Sourced,
};

/// The spec's precedence, as a sort key (smaller sorts first).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    /// Consumer routes' rules 0, then their catch-all 404 (1), then producer routes (2): for a
    /// client in a consumer route's namespace, that namespace's routes replace the producer's.
    tier: u8,
    /// Exact 0, PathPrefix 1, RegularExpression 2 (regex order is implementation-specific; Istio
    /// puts it after prefixes).
    path_rank: u8,
    /// Longest path value first.
    path_len: std::cmp::Reverse<usize>,
    /// A method match first.
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    /// The oldest route first; a route with no creationTimestamp (as in a ConfigMap) after those.
    created: (bool, String),
    namespace: String,
    name: String,
    rule: usize,
    index: usize,
}

/// What a compiled rule is bound to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// A Service (namespace, name): mesh traffic to it (GAMMA).
    Service(String, String),
    /// A Gateway's virtual host (namespace, name, port, host name): ingress traffic.
    Vhost(VhostKey),
}

struct Entry {
    target: Target,
    order: Precedence,
    rule: HttpRule,
}

/// Where a compiled rule came from, for `mesh explain` (never read when routing).
#[derive(Debug)]
pub(crate) struct RuleOrigin {
    /// `HTTPRoute namespace/name` (or `GRPCRoute ...`).
    pub route: String,
    /// Index in the route's `rules`, and the rule's `name` if it has one.
    pub rule: usize,
    pub rule_name: Option<String>,
    /// Index in the rule's `matches` (each match is compiled into its own rule).
    pub match_index: usize,
    /// The route's document and the match's field path in it (`file:line` worked out when shown).
    pub at: Arc<Locator>,
    pub path: String,
    /// The match's precedence key in words (the spec's order: path, method, headers, query
    /// params, age).
    pub precedence: String,
}

/// An admitted HTTPRoute or GRPCRoute and what became of each of its parentRefs, for `mesh
/// explain` (the warnings of `mesh validate` say the same for the refs that did not attach).
#[derive(Debug)]
pub(crate) struct RouteReport {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub at: Arc<Locator>,
    pub parents: Vec<ParentReport>,
}

/// One parentRef of a route: what it names, whether it attached, and why not.
#[derive(Debug)]
pub(crate) struct ParentReport {
    /// Index in `spec.parentRefs`.
    pub index: usize,
    pub target: ParentTarget,
    /// The route attached there (for a Gateway: to at least one listener).
    pub attached: bool,
    /// A Gateway parent's virtual hosts (Gateway, port, host name) the route attached to.
    pub vhosts: Vec<VhostKey>,
    /// Why it did not attach; for a Gateway, why each listener it picked refused it.
    pub refused: Vec<String>,
}

/// What a parentRef names.
#[derive(Debug)]
pub(crate) enum ParentTarget {
    /// A Service (mesh binding, GAMMA), and the `port` if the parentRef gives one.
    Service { namespace: String, name: String, port: Option<i64> },
    /// A Gateway (ingress binding) and the `sectionName` / `port` that pick its listeners.
    Gateway { namespace: String, name: String, section_name: Option<String>, port: Option<i64> },
    /// Another kind: no route attaches to it here.
    Other(String),
}

impl RouteReport {
    /// `HTTPRoute namespace/name`.
    pub(crate) fn title(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

type Rejections = Vec<(ObjectKey, Arc<str>, Vec<ConfigError>)>;
/// Per Service (namespace, name): where its first route was written, the routes' names, and the
/// port of each parentRef to it (None: every port).
type Attached = BTreeMap<(String, String), (Arc<Locator>, Vec<String>, Vec<Option<u16>>)>;

impl Builder<'_> {
    /// Compiles every HTTPRoute with a Service parent into `table.mesh_vs`; a route with an
    /// error is returned with it and left out.
    pub(super) fn http_routes(&mut self, routes: &[Sourced<HttpRouteSpec>], table: &mut RouteTable) -> Rejections {
        let mut rejected = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut names: Attached = BTreeMap::new();
        for route in routes {
            let before = self.errors.len();
            let mut reports = Vec::new();
            let mine = self.http_route(route, &mut names, &mut reports);
            if self.errors.len() > before {
                let errors = self.errors.split_off(before);
                let key =
                    ObjectKey { kind: route.spec.kind(), namespace: route.namespace.clone(), name: route.name.clone() };
                rejected.push((key, route.at.file.clone(), errors));
                continue;
            }
            reports.sort_by_key(|p: &ParentReport| p.index);
            table.gateway_api_routes.push(RouteReport {
                kind: route.spec.kind(),
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                at: route.at.clone(),
                parents: reports,
            });
            entries.extend(mine);
        }
        // Stable: equal keys keep the order they were compiled in.
        entries.sort_by(|a, b| a.target.cmp(&b.target).then_with(|| a.order.cmp(&b.order)));
        let mut by_service: BTreeMap<(String, String), Vec<HttpRule>> = BTreeMap::new();
        let mut by_vhost: BTreeMap<VhostKey, Vec<HttpRule>> = BTreeMap::new();
        for e in entries {
            match e.target {
                Target::Service(ns, name) => by_service.entry((ns, name)).or_default().push(e.rule),
                Target::Vhost(key) => by_vhost.entry(key).or_default().push(e.rule),
            }
        }
        self.gateway_vhosts(by_vhost, &names, table);
        for ((ns, name), mut http) in by_service {
            let Some(svc) = self.services.get(&(ns.as_str(), name.as_str())).map(|s| (*s).clone()) else { continue };
            let Some((origin, route_names, ports)) = names.remove(&(ns.clone(), name.clone())) else { continue };
            let key: Arc<str> = Arc::from(route_names.join("+"));
            // Ports no route is bound to keep plain Kubernetes routing (MeshPorts): a trailing
            // rule per such port, disjoint from the others by its port condition.
            if !ports.contains(&None) {
                for p in svc.ports.iter().map(|p| p.port).filter(|p| !ports.contains(&Some(*p))) {
                    if let Some(c) = self.cluster(&svc, None, p, &(origin.clone(), &String::new)) {
                        http.push(self.plain_rule(&svc, p, c));
                    }
                }
            }
            if let Some(vs) = table.mesh_vs.get(&ns).and_then(|m| m.get(&name)) {
                // Istio keeps one route list per host and the first one wins; here the
                // VirtualService does, so adding an HTTPRoute never silently changes live routing.
                self.warnings.push(format!(
                    "HTTPRoute {key} and VirtualService {} both route Service {ns}/{name}; the VirtualService applies and the HTTPRoute is ignored for it",
                    vs.key
                ));
                continue;
            }
            let compiled = Arc::new(CompiledVs {
                namespace: ns.clone(),
                key,
                origin,
                hosts: vec![svc.fqdn()],
                http,
                tcp: Vec::new(),
                gateways: Vec::new(),
                mesh: true,
                gateway_api: true,
            });
            table.mesh_vs.entry(ns).or_default().insert(name, compiled);
        }
        rejected
    }

    /// One virtual host per (port, host name) with the rules attached there, most specific host
    /// name first (see `gateway_api_ingress`). Gateways sharing a port share the node's listener
    /// there, so the same host name of two of them is one virtual host: as Istio appends the
    /// routes of a host its merged route config already has, the rules of the first Gateway
    /// (namespace/name order) come first, then the next one's (warned with both names).
    fn gateway_vhosts(
        &mut self,
        by_vhost: BTreeMap<VhostKey, Vec<HttpRule>>,
        names: &Attached,
        table: &mut RouteTable,
    ) {
        // (port, host) → per Gateway: namespace, name, where, route names, rules.
        type Part = (String, String, Arc<Locator>, String, Vec<HttpRule>);
        let mut merged: BTreeMap<(u16, String), Vec<Part>> = BTreeMap::new();
        for ((ns, name, port, host), http) in by_vhost {
            let (origin, route_names) = match names.get(&(format!("{ns}/{name}:{port}"), host.clone())) {
                Some((origin, route_names, _)) => (origin.clone(), route_names.join("+")),
                None => (Arc::new(Locator::default()), String::new()),
            };
            merged.entry((port, host.to_ascii_lowercase())).or_default().push((ns, name, origin, route_names, http));
        }
        for ((port, host), parts) in merged {
            if let [(ns_a, a, ..), rest @ ..] = parts.as_slice() {
                for (ns_b, b, ..) in rest {
                    self.warnings.push(format!(
                        "Gateways {ns_a}/{a} and {ns_b}/{b} (gateway.networking.k8s.io) both serve host {host} on port \
                         {port}: merged on one listener, the rules of {ns_a}/{a} first"
                    ));
                }
            }
            let mut parts = parts.into_iter();
            let Some((ns, name, origin, mut key, mut http)) = parts.next() else { continue };
            let mut gateways = vec![(ns.clone(), name.clone())];
            for (ns_b, b, _, key_b, http_b) in parts {
                key = format!("{key}+{key_b}");
                http.extend(http_b);
                gateways.push((ns_b, b));
            }
            let vs = Arc::new(CompiledVs {
                namespace: ns.clone(),
                key: Arc::from(key),
                origin,
                hosts: vec![host.clone()],
                http,
                tcp: Vec::new(),
                gateways,
                mesh: false,
                gateway_api: true,
            });
            table.gateway_api_vs.push(GatewayApiVhost { namespace: ns, name, port, host, vs });
        }
        // Stable: ties keep (port, host) order.
        table.gateway_api_vs.sort_by_key(|v| gateway_api_ingress::vhost_rank(&v.host));
    }

    /// One route's entries (a consumer route's catch-alls, then its rules), recording in `names`
    /// where it attaches.
    fn http_route(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        names: &mut Attached,
        reports: &mut Vec<ParentReport>,
    ) -> Vec<Entry> {
        let at = &route.at;
        let parents = self.service_parents(route, reports);
        let vhosts = self.gateway_parents(route, reports);
        if parents.is_empty() && vhosts.is_empty() {
            return Vec::new();
        }
        if !parents.is_empty() && !route.spec.hostnames.is_empty() {
            self.warnings.push(
                at.error(
                    "spec.hostnames",
                    "hostnames do not apply to a Service parent (GAMMA): traffic is selected by the Service dialled",
                )
                .to_string(),
            );
        }
        let key = route.key();
        let mut out = Vec::new();
        for (svc, port) in &parents {
            let e = names
                .entry((svc.namespace.clone(), svc.name.clone()))
                .or_insert_with(|| (at.clone(), Vec::new(), Vec::new()));
            if !e.1.contains(&key) {
                e.1.push(key.clone());
            }
            if svc.namespace == route.namespace {
                e.2.push(*port);
            } else {
                // A consumer route (GAMMA): it applies to clients of its own namespace only, and
                // for them replaces the producer routes on the ports it is bound to, so those
                // clients' requests no consumer rule matches get 404 rather than a producer rule.
                let mut conds = vec![Cond::SourceNamespace(route.namespace.clone())];
                conds.extend(port.map(Cond::Port));
                out.push(Entry {
                    target: Target::Service(svc.namespace.clone(), svc.name.clone()),
                    order: Precedence { tier: 1, ..Precedence::default() },
                    rule: self.consumer_catch_all(&route.namespace, conds),
                });
            }
        }
        for (ns, name, port, host) in &vhosts {
            // Keyed apart from Services by the `:port` in the first part.
            let e = names
                .entry((format!("{ns}/{name}:{port}"), host.clone()))
                .or_insert_with(|| (at.clone(), Vec::new(), Vec::new()));
            if !e.1.contains(&key) {
                e.1.push(key.clone());
            }
        }
        out.extend(self.rule_entries(route, &parents, &vhosts));
        out
    }

    /// The Service parentRefs of a route that resolve (Service, and port if given); the others
    /// are warned about. Each is reported in `reports`.
    fn service_parents(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        reports: &mut Vec<ParentReport>,
    ) -> Vec<(Arc<Service>, Option<u16>)> {
        let at = &route.at;
        let mut parents: Vec<(Arc<Service>, Option<u16>)> = Vec::new();
        for (i, p) in route.spec.parent_refs.iter().enumerate() {
            if !p.is_service() {
                continue; // warned by config::gateway_api::validate
            }
            let ns = p.namespace.as_deref().unwrap_or(&route.namespace);
            let mut report = ParentReport {
                index: i,
                target: ParentTarget::Service { namespace: ns.to_owned(), name: p.name.clone(), port: p.port },
                attached: false,
                vhosts: Vec::new(),
                refused: Vec::new(),
            };
            let refuse = |b: &mut Self, report: &mut ParentReport, msg: String| {
                b.warnings.push(
                    at.error(format!("spec.parentRefs[{i}]"), format!("{msg}; the route is not attached")).to_string(),
                );
                report.refused.push(msg);
            };
            let Some(svc) = self.services.get(&(ns, p.name.as_str())).map(|s| (*s).clone()) else {
                refuse(self, &mut report, format!("Service {ns}/{} is not in the registry", config::cut(&p.name, 60)));
                reports.push(report);
                continue;
            };
            let port = match p.port.map(u16::try_from) {
                None => None,
                Some(Ok(port)) if svc.port(port).is_some() => Some(port),
                Some(_) => {
                    let ports = svc.ports.iter().map(|p| p.port.to_string()).collect::<Vec<_>>().join(", ");
                    let msg =
                        format!("Service {ns}/{} has no port {} (its ports: {ports})", svc.name, p.port.unwrap_or(0));
                    refuse(self, &mut report, msg);
                    reports.push(report);
                    continue;
                }
            };
            report.attached = true;
            reports.push(report);
            parents.push((svc, port));
        }
        parents
    }

    /// One entry per (rule, match, parent): the rule with that match's conditions, filed under
    /// the Service or virtual host and ordered by the match's precedence.
    fn rule_entries(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        parents: &[(Arc<Service>, Option<u16>)],
        vhosts: &[VhostKey],
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let title = format!("{} {}/{}", route.spec.kind(), route.namespace, route.name);
        for (ri, rule) in route.spec.rules().iter().enumerate() {
            let Some(mut base) = self.gateway_rule(route, ri, rule) else { continue };
            for (mi, m) in rule.matches().iter().enumerate() {
                let (conds, order) = self.gateway_match(route, ri, mi, m);
                base.origin = Some(Arc::new(RuleOrigin {
                    route: title.clone(),
                    rule: ri,
                    rule_name: rule.name.clone(),
                    match_index: mi,
                    at: route.at.clone(),
                    path: format!("spec.rules[{ri}].matches[{mi}]"),
                    precedence: rules::precedence_words(route, m),
                }));
                for (svc, port) in parents {
                    let mut conds = conds.clone();
                    if let Some(p) = port {
                        conds.push(Cond::Port(*p));
                    }
                    let consumer = svc.namespace != route.namespace;
                    if consumer {
                        conds.push(Cond::SourceNamespace(route.namespace.clone()));
                    }
                    let mut r = base.clone();
                    r.matches = vec![MatchRequest { name: None, conds }];
                    if rule.matches().len() > 1 {
                        r.name = r.name.map(|n| format!("{n} matches[{mi}]"));
                    }
                    out.push(Entry {
                        target: Target::Service(svc.namespace.clone(), svc.name.clone()),
                        order: Precedence { tier: if consumer { 0 } else { 2 }, ..order.clone() },
                        rule: r,
                    });
                }
                for v in vhosts {
                    let mut r = base.clone();
                    r.matches = vec![MatchRequest { name: None, conds: conds.clone() }];
                    if rule.matches().len() > 1 {
                        r.name = r.name.map(|n| format!("{n} matches[{mi}]"));
                    }
                    out.push(Entry { target: Target::Vhost(v.clone()), order: order.clone(), rule: r });
                }
            }
        }
        out
    }

    /// Resolves a backendRef to its Service port's cluster, or says why it does not resolve
    /// (not a Service, another namespace without ReferenceGrant support, a Service or port the
    /// registry does not have).
    fn resolve_backend(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        b: &gw::HttpBackendRef,
        path: &str,
    ) -> Result<DestClusters, String> {
        let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        let ns = b.namespace.as_deref().unwrap_or(&route.namespace);
        if !b.is_service() {
            return Err(format!("backend kind {:?} is not supported", b.kind.as_deref().unwrap_or("")));
        }
        // "References to objects with a different namespace ... MUST be rejected unless a
        // ReferenceGrant in the target namespace allows them" (the spec; Istio's
        // InvalidDestinationPermit). Checked before the Service is looked up, so an answer never
        // tells whether a Service the route may not see exists.
        let kind = route.spec.kind();
        // A consumer route's backendRef to its own parent Service needs no grant (the producer
        // namespace is where the parent is; upstream's MeshConsumerRoute does exactly this).
        let own_parent =
            route.spec.parent_refs.iter().any(|p| {
                p.is_service() && p.namespace.as_deref().unwrap_or(&route.namespace) == ns && p.name == b.name
            });
        if ns != route.namespace
            && !own_parent
            && !self
                .reference_grants
                .iter()
                .any(|g| g.namespace == ns && g.spec.allows_service(kind, &route.namespace, &b.name))
        {
            return Err(format!(
                "RefNotPermitted: backendRef {ns}/{} is not accessible to a {kind} in namespace {:?} (no ReferenceGrant in {ns} allows it)",
                config::cut(&b.name, 60),
                route.namespace
            ));
        }
        let Some(svc) = self.services.get(&(ns, b.name.as_str())).map(|s| (*s).clone()) else {
            return Err(format!("Service {ns}/{} is not in the registry", config::cut(&b.name, 60)));
        };
        if svc.port(port).is_none() {
            return Err(format!("Service {ns}/{} has no port {port}", svc.name));
        }
        let field = || format!("{path}.name");
        match self.cluster(&svc, None, port, &(route.at.clone(), &field)) {
            Some(c) => {
                let c = if route.spec.grpc { http2_cluster(&c) } else { c };
                Ok(DestClusters { host: svc.name.clone(), subset: None, by_port: vec![(port, c)], explicit_port: true })
            }
            None => Err(format!("Service {ns}/{} has no cluster for port {port}", svc.name)),
        }
    }

    /// One backendRef: its Service port's cluster with the backendRef's filters, or a share
    /// answered with 500 when it does not resolve.
    fn backend(&mut self, route: &Sourced<HttpRouteSpec>, b: &gw::HttpBackendRef, path: &str) -> WeightedDest {
        let at = &route.at;
        let weight = b.weight.map_or(1, |w| u32::try_from(w).unwrap_or(0));
        match self.resolve_backend(route, b, path) {
            Ok(dest) => {
                let (mut rq, mut rs) = (HeaderOps::default(), HeaderOps::default());
                let mut mirrors = Vec::new();
                for (k, f) in b.filters.iter().enumerate() {
                    let fat = format!("{path}.filters[{k}]");
                    if let Some(m) = &f.request_header_modifier {
                        rq = self.header_modifier(m, at, &format!("{fat}.requestHeaderModifier"));
                    }
                    if let Some(m) = &f.response_header_modifier {
                        rs = self.header_modifier(m, at, &format!("{fat}.responseHeaderModifier"));
                    }
                    if let Some(m) = &f.request_mirror {
                        mirrors.extend(self.mirror(route, m, &format!("{fat}.requestMirror")));
                    }
                }
                WeightedDest {
                    dest,
                    weight,
                    request_headers: rq,
                    response_headers: rs,
                    fail_with: None,
                    mirrors,
                    fail_reason: None,
                }
            }
            Err(why) => {
                self.warnings.push(at.error(path, format!("{why}; its share of the requests gets 500")).to_string());
                let ns = b.namespace.as_deref().unwrap_or(&route.namespace);
                let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
                WeightedDest { weight, fail_reason: Some(Arc::from(why)), ..self.failing(ns, &b.name, port) }
            }
        }
    }

    /// A `RequestMirror` filter: the mirror's destination and percentage; None (warned) when its
    /// backendRef does not resolve, since the spec says such a mirror is dropped.
    fn mirror(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        m: &gw::RequestMirror,
        path: &str,
    ) -> Option<(DestClusters, f64)> {
        let pct = m.percentage()?; // validated
        match self.resolve_backend(route, &m.backend_ref.as_backend_ref(), &format!("{path}.backendRef")) {
            Ok(d) => Some((d, pct)),
            Err(why) => {
                self.warnings.push(
                    route.at.error(format!("{path}.backendRef"), format!("{why}; nothing is mirrored")).to_string(),
                );
                None
            }
        }
    }

    /// A destination that answers 500: a cluster with no endpoints, never dialled.
    fn failing(&mut self, ns: &str, name: &str, port: u16) -> WeightedDest {
        let svc = Arc::new(Service { name: name.to_owned(), namespace: ns.to_owned(), ..Default::default() });
        let cluster = Arc::new(Cluster {
            name: format!("gateway-api-unresolved|{port}||{name}.{ns}"),
            service: svc,
            subset: None,
            port,
            endpoints: Vec::new(),
            lb: LbPolicy::DEFAULT,
            connection_pool: ConnectionPool::default(),
            outlier_detection: None,
            telemetry: Default::default(),
            runtime: Default::default(),
        });
        WeightedDest {
            dest: DestClusters {
                host: name.to_owned(),
                subset: None,
                by_port: vec![(port, cluster)],
                explicit_port: true,
            },
            weight: 1,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            fail_with: Some(500),
            mirrors: Vec::new(),
            fail_reason: None,
        }
    }

    /// For clients of a consumer route's namespace (and port): 404 once no rule of that
    /// namespace's routes matched, instead of falling through to the producer's.
    fn consumer_catch_all(&self, namespace: &str, conds: Vec<Cond>) -> HttpRule {
        HttpRule::generated(
            format!("consumer routes of namespace {namespace}: no rule matched"),
            conds,
            Action::DirectResponse { status: 404, body: None },
            self.default_retries.clone(),
        )
    }

    /// Plain Kubernetes routing for a port of a Service that no route is bound to.
    fn plain_rule(&self, svc: &Arc<Service>, port: u16, cluster: Arc<Cluster>) -> HttpRule {
        let dest = WeightedDest {
            dest: DestClusters {
                host: svc.name.clone(),
                subset: None,
                by_port: vec![(port, cluster)],
                explicit_port: true,
            },
            weight: 1,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            fail_with: None,
            mirrors: Vec::new(),
            fail_reason: None,
        };
        HttpRule::generated(
            format!("port {port}: no HTTPRoute is bound to it (plain Kubernetes routing)"),
            vec![Cond::Port(port)],
            Action::Route(vec![dest]),
            self.default_retries.clone(),
        )
    }

    fn header_modifier(&mut self, m: &gw::HeaderModifier, at: &Locator, path: &str) -> HeaderOps {
        let mut out = HeaderOps::default();
        let pair = |b: &mut Self, h: &gw::HttpHeader, field: String| -> Option<(HeaderName, HeaderValue)> {
            match (HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()), HeaderValue::from_str(&h.value)) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    b.errors.push(
                        at.error(field, format!("header {:?} cannot be sent over HTTP", config::cut(&h.name, 60))),
                    );
                    None
                }
            }
        };
        for (k, h) in m.set.iter().enumerate() {
            out.set.extend(pair(self, h, format!("{path}.set[{k}]")));
        }
        for (k, h) in m.add.iter().enumerate() {
            out.add.extend(pair(self, h, format!("{path}.add[{k}]")));
        }
        for (k, n) in m.remove.iter().enumerate() {
            match HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
                Ok(n) => out.remove.push(n),
                Err(_) => self.errors.push(at.error(format!("{path}.remove[{k}]"), "not a valid header name")),
            }
        }
        out
    }
}

/// The cluster for a GRPCRoute backend: gRPC is HTTP/2, so the backend is spoken to over HTTP/2
/// (cleartext, prior knowledge) whatever its Service port declares. A Service port already
/// declared HTTP/2 or gRPC keeps its cluster.
fn http2_cluster(c: &Arc<Cluster>) -> Arc<Cluster> {
    if c.upstream_protocol(false) == UpstreamProtocol::Http2 && c.upstream_protocol(true) == UpstreamProtocol::Http2 {
        return c.clone();
    }
    Arc::new(Cluster {
        name: c.name.clone(),
        service: c.service.clone(),
        subset: c.subset.clone(),
        port: c.port,
        endpoints: c.endpoints.clone(),
        lb: c.lb.clone(),
        connection_pool: ConnectionPool { h2_upgrade: true, use_client_protocol: false, ..c.connection_pool.clone() },
        outlier_detection: c.outlier_detection.clone(),
        telemetry: Default::default(),
        runtime: Default::default(),
    })
}

#[cfg(test)]
#[path = "gateway_api_tests/mod.rs"]
mod tests;
