//! `mesh explain` for Gateway API routes (HTTPRoute, GRPCRoute): the routes with a parentRef to
//! the Service dialled or the Gateway the request came through, whether each attached and why
//! not, which applies to this client, then the rules of the attached routes in the spec's
//! precedence order with why each earlier one did not match, and what the matching rule does.
//! Everything is read from the compiled table: the attachment reports and rule origins the
//! compiler keeps for this (`routing/gateway_api.rs`), and the same rules `route()` walks.
use std::fmt::Write;

use super::{
    super::{
        gateway_api::{ParentReport, ParentTarget, RouteReport, RuleOrigin},
        gateway_api_ingress::vhost_matches,
        matcher::Cond,
        *,
    },
    cluster_line, retries_line,
};

/// The namespace of the client pod, if the request has one.
fn client_namespace<'a>(req: &'a RequestInfo<'_>) -> Option<&'a str> {
    req.source.map(|w| w.namespace.as_str())
}

/// The request's host without its port (what virtual hosts are matched against).
fn request_host<'a>(req: &'a RequestInfo<'_>) -> &'a str {
    let a = req.authority.unwrap_or("");
    a.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(a, |(h, _)| h)
}

/// `file:line` of a field of a route's document.
fn place(at: &crate::config::Locator, path: &str) -> String {
    format!("{}:{}", at.file, at.at(path).0)
}

/// Whether a Service parentRef's `port` (None: every port) covers `port`.
fn port_covers(p: &ParentReport, port: u16) -> bool {
    match p.target {
        ParentTarget::Service { port: Some(want), .. } => want == i64::from(port),
        _ => true,
    }
}

fn target_text(t: &ParentTarget) -> String {
    match t {
        ParentTarget::Service { namespace, name, port } => {
            format!("Service {namespace}/{name}{}", port.map(|p| format!(" port {p}")).unwrap_or_default())
        }
        ParentTarget::Gateway { namespace, name, section_name, port } => format!(
            "Gateway {namespace}/{name}{}{}",
            section_name.as_ref().map(|s| format!(" sectionName {s:?}")).unwrap_or_default(),
            port.map(|p| format!(" port {p}")).unwrap_or_default()
        ),
        ParentTarget::Other(what) => what.clone(),
    }
}

/// What the attachment section found: routes listed, and how many of their parentRefs attached.
pub(super) struct Listed {
    pub routes: usize,
    pub attached: usize,
}

impl Listed {
    /// Writes `r`'s heading (name and place) the first time one of its parentRefs comes up:
    /// `refs` holds a route's parentRefs next to each other, `last` is the route written last.
    fn heading(&mut self, out: &mut String, last: &mut Option<*const RouteReport>, r: &RouteReport) {
        if *last != Some(r as *const RouteReport) {
            self.routes += 1;
            let _ = writeln!(out, "  {} ({})", r.title(), place(&r.at, "metadata"));
            *last = Some(r as *const RouteReport);
        }
    }
}

/// Lists the routes with a parentRef to the request's Service (mesh, GAMMA) or Gateway, each
/// parentRef's fate and whether it applies to this request; for a Gateway, also its virtual
/// hosts on the port and which one the Host picks.
pub(super) fn parent_lines(out: &mut String, table: &RouteTable, req: &RequestInfo<'_>) -> Listed {
    let refs: Vec<(&RouteReport, &ParentReport)> = table
        .gateway_api_routes
        .iter()
        .flat_map(|r| r.parents.iter().map(move |p| (r, p)))
        .filter(|(_, p)| match (&p.target, req.context) {
            (ParentTarget::Service { namespace, name, .. }, Context::Mesh { service, .. }) => {
                *namespace == service.namespace && *name == service.name
            }
            (ParentTarget::Gateway { namespace, name, .. }, Context::Gateway { name: g, namespace: gns, .. }) => {
                namespace == gns && name == g
            }
            _ => false,
        })
        .collect();
    let mut listed = Listed { routes: 0, attached: refs.iter().filter(|(_, p)| p.attached).count() };
    match req.context {
        Context::Mesh { service, port } => {
            if refs.is_empty() {
                return listed;
            }
            let _ = writeln!(
                out,
                "\nGateway API routes with a parentRef to Service {}/{} (bound by the VIP dialled, not the Host header):",
                service.namespace, service.name
            );
            // For a client of a namespace that has consumer routes on this port, those replace
            // the producer routes.
            let client = client_namespace(req);
            let consumers_here = refs.iter().any(|(r, p)| {
                p.attached
                    && r.namespace != service.namespace
                    && Some(r.namespace.as_str()) == client
                    && port_covers(p, port)
            });
            let mut last: Option<*const RouteReport> = None;
            for (r, p) in &refs {
                listed.heading(out, &mut last, r);
                let verdict = mesh_verdict(r, p, &service.namespace, port, client, consumers_here);
                let _ = writeln!(out, "    parentRefs[{}] {}: {verdict}", p.index, target_text(&p.target));
            }
        }
        Context::Gateway { name, namespace, port } => {
            let vhosts: Vec<&GatewayApiVhost> = table
                .gateway_api_vs
                .iter()
                .filter(|v| v.port == port && v.name == name && v.namespace == namespace)
                .collect();
            if refs.is_empty() && vhosts.is_empty() {
                return listed;
            }
            let _ = writeln!(out, "\nGateway API routes with a parentRef to Gateway {namespace}/{name}:");
            let mut last: Option<*const RouteReport> = None;
            for (r, p) in &refs {
                listed.heading(out, &mut last, r);
                let verdict = gateway_verdict(p, port);
                let _ = writeln!(out, "    parentRefs[{}] {}: {verdict}", p.index, target_text(&p.target));
            }
            let host = request_host(req);
            let _ = writeln!(
                out,
                "  virtual hosts on port {port}, most specific first (the first that matches Host {host:?} serves the request):"
            );
            if vhosts.is_empty() {
                let _ = writeln!(out, "    none: no route is attached on this port");
            }
            let mut selected = false;
            for v in vhosts {
                let mark = if !selected && vhost_matches(&v.host, host) {
                    selected = true;
                    "  ← selected"
                } else {
                    ""
                };
                let _ = writeln!(out, "    {:?}: routes {}{mark}", v.host, v.vs.key);
            }
        }
    }
    listed
}

/// What happened to a Service parentRef `p` of route `r`, for a request to `port` of a Service in
/// `service_ns` from a client in `client` (`consumers_here`: that namespace has consumer routes
/// for this Service and port, which replace the producer routes).
fn mesh_verdict(
    r: &RouteReport,
    p: &ParentReport,
    service_ns: &str,
    port: u16,
    client: Option<&str>,
    consumers_here: bool,
) -> String {
    if !p.attached {
        format!("NOT ATTACHED: {}", p.refused.join("; "))
    } else if !port_covers(p, port) {
        format!("attached to that port only: does not apply to this request (port {port})")
    } else if r.namespace != service_ns {
        let who = client.map_or("the request has no source pod".to_string(), |c| format!("this client is in {c}"));
        if Some(r.namespace.as_str()) == client {
            format!(
                "attached; consumer route of namespace {}: APPLIES ({who}), and replaces the producer routes for its clients",
                r.namespace
            )
        } else {
            format!(
                "attached; consumer route of namespace {}: applies to that namespace's clients only, not this request ({who})",
                r.namespace
            )
        }
    } else if consumers_here {
        format!(
            "attached; producer route: does not apply to this client, whose namespace {} has consumer routes for this Service (they take precedence)",
            client.unwrap_or("")
        )
    } else {
        "attached; producer route: APPLIES (to clients of every namespace)".to_string()
    }
}

/// What happened to a Gateway parentRef `p`, for a request to the Gateway's `port`.
fn gateway_verdict(p: &ParentReport, port: u16) -> String {
    let here: Vec<&str> = p.vhosts.iter().filter(|v| v.2 == port).map(|v| v.3.as_str()).collect();
    if !p.attached {
        format!("NOT ATTACHED: {}", p.refused.join("; "))
    } else if here.is_empty() {
        let ports: std::collections::BTreeSet<u16> = p.vhosts.iter().map(|v| v.2).collect();
        format!("attached on port(s) {ports:?} only: does not apply to this request (port {port})")
    } else {
        let others = if p.refused.is_empty() {
            String::new()
        } else {
            format!(" (other listeners refused it: {})", p.refused.join("; "))
        };
        format!("attached on port {port} for host(s) {here:?}{others}")
    }
}

/// Tries the rules of the compiled routes in order (the spec's precedence, decided at compile
/// time), saying for each earlier rule every condition that failed; the index of the first
/// that matches.
pub(super) fn first_matching_rule(out: &mut String, vs: &CompiledVs, req: &RequestInfo<'_>) -> Option<usize> {
    let grpc = vs.http.iter().any(|r| r.origin.as_ref().is_some_and(|o| o.route.starts_with("GRPCRoute")));
    let _ = writeln!(
        out,
        "\nRules of the attached routes in the spec's precedence order (a client's consumer routes first; then {}, \
         oldest route, namespace/name, rule and match order); the first that matches applies:",
        if grpc {
            "the most characters in the matched service, then method, most header matches"
        } else {
            "Exact path, longest PathPrefix, RegularExpression, method, most header matches, most query param matches"
        }
    );
    for (i, rule) in vs.http.iter().enumerate() {
        let label = match &rule.origin {
            Some(o) => origin_label(o),
            None => rule.name.clone().unwrap_or_default(),
        };
        let failing: Vec<&Cond> =
            rule.matches.first().map_or(Vec::new(), |m| m.conds.iter().filter(|c| !c.test(req)).collect());
        let verdict = if failing.is_empty() { "MATCHES" } else { "no match" };
        let _ = writeln!(out, "  [{i}] {label}: {verdict}");
        if let Some(o) = &rule.origin {
            let _ = writeln!(out, "        precedence: {}", o.precedence);
        }
        if failing.is_empty() {
            return Some(i);
        }
        for c in failing {
            let _ = writeln!(out, "        ✗ {}", failure(c, req));
        }
    }
    None
}

/// `HTTPRoute ns/name rules[1] "name" matches[0] (file:line)`.
fn origin_label(o: &RuleOrigin) -> String {
    format!(
        "{} rules[{}]{} matches[{}] ({})",
        o.route,
        o.rule,
        o.rule_name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default(),
        o.match_index,
        place(&o.at, &o.path)
    )
}

/// One failed condition in the words of the Gateway API.
fn failure(c: &Cond, req: &RequestInfo<'_>) -> String {
    match c {
        Cond::Uri(m, _) => format!("path: {m} ≠ {:?}", req.uri.path()),
        Cond::Port(p) => format!("port: the parentRef binds port {p}, the request is to port {}", req.port()),
        Cond::SourceNamespace(ns) => format!(
            "client namespace: only clients in {ns} (a consumer route), the client is {}",
            client_namespace(req).map_or("no pod".to_string(), |c| format!("in {c}"))
        ),
        c => c.explain_failure(req),
    }
}

fn header_ops(h: &HeaderOps) -> String {
    let pairs = |v: &[(http::HeaderName, http::HeaderValue)]| {
        v.iter().map(|(n, v)| format!("{n}: {:?}", v.to_str().unwrap_or("<binary>"))).collect::<Vec<_>>().join(", ")
    };
    let mut parts = Vec::new();
    if !h.set.is_empty() {
        parts.push(format!("set [{}]", pairs(&h.set)));
    }
    if !h.add.is_empty() {
        parts.push(format!("add [{}]", pairs(&h.add)));
    }
    if !h.remove.is_empty() {
        parts.push(format!("remove [{}]", h.remove.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")));
    }
    parts.join(", ")
}

fn dest_name(d: &DestClusters) -> String {
    match d.by_port.first() {
        Some((port, c)) => format!("Service {}/{} port {port}", c.service.namespace, d.host),
        None => format!("Service {}", d.host),
    }
}

/// What the matched rule does: its redirect or backendRefs (weights, the one picked), filters,
/// timeouts and retry policy.
pub(super) fn rule_lines(out: &mut String, rule: &HttpRule, req: &RequestInfo<'_>) {
    let matched_prefix = rule.matches.first().and_then(|m| m.uri_prefix());
    match &rule.action {
        Action::Redirect(r) => {
            let _ = writeln!(out, "\n  RequestRedirect: {} Location {}", r.code, r.location_after(req, matched_prefix));
        }
        Action::DirectResponse { status, .. } if rule.origin.is_none() => {
            let _ = writeln!(
                out,
                "\n  → {status}: this client's namespace has consumer routes for this Service and none of their rules matched; the producer routes do not apply to it"
            );
            return;
        }
        Action::DirectResponse { status, .. } => {
            let _ = writeln!(out, "\n  → {status}");
        }
        Action::Route(dests) => backend_lines(out, dests, rule.origin.is_some(), req),
    }
    if rule.origin.is_none() {
        // A generated rule (a port no route is bound to): plain Kubernetes routing.
        let _ = writeln!(out, "  retries: {} (Istio's default)", retries_line(&rule.retries));
        return;
    }
    let mut filters = Vec::new();
    if !rule.request_headers.is_empty() {
        filters.push(format!("RequestHeaderModifier {}", header_ops(&rule.request_headers)));
    }
    if !rule.response_headers.is_empty() {
        filters.push(format!("ResponseHeaderModifier {}", header_ops(&rule.response_headers)));
    }
    if let Some(u) = &rule.rewrite_uri {
        let rw = Rewrite {
            uri: Some(u.clone()),
            matched_prefix: if rule.rewrite_whole_path { None } else { matched_prefix.map(str::to_owned) },
            authority: None,
        };
        let how = if rule.rewrite_whole_path {
            format!("ReplaceFullPath {u:?}")
        } else {
            format!("ReplacePrefixMatch {:?} → {u:?}", matched_prefix.unwrap_or("/"))
        };
        let now = rw.apply_path(req.uri.path()).unwrap_or_default();
        filters.push(format!("URLRewrite path {how} (this request: {:?} → {now:?})", req.uri.path()));
    }
    if let Some(a) = &rule.rewrite_authority {
        filters.push(format!("URLRewrite hostname → {a:?}"));
    }
    for (m, pct) in &rule.mirrors {
        filters.push(format!("RequestMirror {pct}% to {}", dest_name(m)));
    }
    if filters.is_empty() {
        let _ = writeln!(out, "  filters: none");
    }
    for f in filters {
        let _ = writeln!(out, "  filter:  {f}");
    }
    let _ = writeln!(out, "  timeouts.request: {}", rule.timeout.map_or("none".into(), |t| format!("{t:?}")));
    let _ = writeln!(
        out,
        "  timeouts.backendRequest: {}",
        rule.retries.per_try_timeout.map_or("none".into(), |t| format!("{t:?} per try"))
    );
    let _ = writeln!(out, "  retry:   {}", retries_line(&rule.retries));
}

/// The backendRefs with their weights and share, what each resolves to, and which is picked.
fn backend_lines(out: &mut String, dests: &[WeightedDest], from_route: bool, req: &RequestInfo<'_>) {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    let _ = writeln!(
        out,
        "\n  {} (one picked per request, with probability weight / total weight {total}):",
        if from_route { "backendRefs" } else { "destination" }
    );
    for d in dests {
        let share = match total {
            0 => "never picked".to_string(),
            _ if d.weight == 0 => "weight 0: never picked".to_string(),
            t => format!("{}%", u64::from(d.weight) * 100 / t),
        };
        if d.fail_with.is_some() && d.dest.host == "(no backend)" {
            let _ = writeln!(
                out,
                "    → answers {}: {}",
                d.fail_with.unwrap_or(500),
                d.fail_reason.as_deref().unwrap_or("no backend")
            );
            continue;
        }
        let _ = writeln!(out, "    → weight {} ({share})  {}", d.weight, dest_name(&d.dest));
        if let Some(status) = d.fail_with {
            let _ = writeln!(
                out,
                "           answers {status}: {}",
                d.fail_reason.as_deref().unwrap_or("the backendRef does not resolve")
            );
            continue;
        }
        if let Some(c) = d.dest.pick(req.port()) {
            cluster_line(out, "           ", c);
        }
        if !d.request_headers.is_empty() {
            let _ = writeln!(out, "           RequestHeaderModifier {}", header_ops(&d.request_headers));
        }
        if !d.response_headers.is_empty() {
            let _ = writeln!(out, "           ResponseHeaderModifier {}", header_ops(&d.response_headers));
        }
        for (m, pct) in &d.mirrors {
            let _ = writeln!(out, "           RequestMirror {pct}% to {}", dest_name(m));
        }
    }
    let live: Vec<&WeightedDest> = dests.iter().filter(|d| d.weight > 0).collect();
    match live.as_slice() {
        [] => {}
        [one] => match one.fail_with {
            Some(status) => {
                let _ = writeln!(out, "  picked: nothing is forwarded; the request gets {status}");
            }
            None => {
                let _ = writeln!(out, "  picked: {} (the only backendRef with weight > 0)", dest_name(&one.dest));
            }
        },
        _ => {
            let _ = writeln!(
                out,
                "  picked: one of the {} above with weight > 0, at random by weight, per request",
                live.len()
            );
        }
    }
}
