//! `mesh explain`: how a request would be routed and why, evaluated on the same compiled table
//! the proxy uses.
use std::fmt::{self, Write};

use super::{matcher::fmt_labels, *};

mod gateway_api;

/// The answer of `mesh explain`: a human-readable trace of the routing decision.
pub struct Explanation {
    /// The trace, one step a line.
    pub text: String,
    /// The VirtualService and rule that matched, if any.
    pub matched: Option<(String, usize)>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn cluster_line(out: &mut String, indent: &str, c: &Cluster) {
    let upstream = match c.upstream_protocol(false) {
        super::UpstreamProtocol::Http1 => "HTTP/1.1",
        super::UpstreamProtocol::Http2 => "HTTP/2",
    };
    let _ = writeln!(out, "{indent}cluster {}  (lb {:?}, upstream {upstream} for an HTTP/1.1 client)", c.name, c.lb);
    if c.endpoints.is_empty() {
        let _ = writeln!(out, "{indent}  endpoints: NONE → the proxy answers 503 \"no healthy upstream\"");
    }
    for e in &c.endpoints {
        let _ = writeln!(out, "{indent}  endpoint {} {} {}", e.workload.name, e.addr, fmt_labels(&e.workload.labels));
    }
    if let Some(od) = &c.outlier_detection {
        let _ = writeln!(out, "{indent}  outlierDetection: {od:?}");
    }
    if c.connection_pool != ConnectionPool::default() {
        let _ = writeln!(out, "{indent}  connectionPool: {:?}", c.connection_pool);
    }
}

fn dest_lines(out: &mut String, dests: &[WeightedDest], port: u16) {
    // The engine splits by weight / total (weights need not sum to 100); one destination is 100%.
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    for d in dests {
        let pct = match total {
            _ if dests.len() == 1 => 100,
            0 => 0,
            t => u64::from(d.weight) * 100 / t,
        };
        let _ = writeln!(
            out,
            "    → {pct:>3}%  host {} subset {}",
            d.dest.host,
            d.dest.subset.as_deref().unwrap_or("(all endpoints)")
        );
        if let Some(status) = d.fail_with {
            let _ = writeln!(out, "           answers {status} (the backendRef does not resolve)");
            continue;
        }
        if let Some(c) = d.dest.pick(port) {
            cluster_line(out, "           ", c);
        }
        for (m, pct) in &d.mirrors {
            let _ = writeln!(out, "           mirror {pct}% to host {}", m.host);
        }
    }
}

fn retries_line(r: &RetryPolicy) -> String {
    let mut on = Vec::new();
    for (flag, name) in [
        (r.retry_on.five_xx, "5xx"),
        (r.retry_on.gateway_error, "gateway-error"),
        (r.retry_on.connect_failure, "connect-failure"),
        (r.retry_on.reset, "reset"),
        (r.retry_on.refused_stream, "refused-stream"),
        (r.retry_on.retriable_4xx, "retriable-4xx"),
    ] {
        if flag {
            on.push(name.to_string());
        }
    }
    on.extend(r.retry_on.status_codes.iter().map(|c| c.to_string()));
    on.extend(r.retry_on.other.iter().cloned());
    format!(
        "{} retries on [{}]{}",
        r.attempts,
        on.join(","),
        r.per_try_timeout.map(|t| format!(", perTryTimeout {t:?}")).unwrap_or_default()
    )
}

/// Walks `table` for `req` as [`RouteTable::route`] does, writing down each VirtualService and
/// condition tried and why it did or did not match.
pub fn explain(table: &RouteTable, req: &RequestInfo<'_>) -> Explanation {
    let mut out = String::new();
    request_lines(&mut out, req);
    let listed = gateway_api::parent_lines(&mut out, table, req);
    let Some(vs) = table.virtual_service(req) else {
        no_virtual_service(&mut out, table, req, &listed);
        return Explanation { text: out, matched: None };
    };
    if vs.gateway_api {
        let Some(i) = gateway_api::first_matching_rule(&mut out, vs, req) else {
            let _ = writeln!(out, "\nNo rule matched: the proxy answers 404 (route not found).");
            return Explanation { text: out, matched: None };
        };
        gateway_api::rule_lines(&mut out, &vs.http[i], req);
        return Explanation { text: out, matched: Some((vs.key.to_string(), i)) };
    }
    if listed.attached > 0 {
        if let Context::Mesh { service, .. } = req.context {
            // The rule the compiler applies (routing/gateway_api.rs), documented in the README.
            let _ = writeln!(
                out,
                "\nVirtualService {} also routes Service {}/{}: the VirtualService applies and the routes above are \
                 ignored for this Service (an HTTPRoute never silently changes routing a VirtualService already does; \
                 `mesh validate` warns).",
                vs.key, service.namespace, service.name
            );
        }
    }
    let origin = format!("{}:{}", vs.origin.file, vs.origin.at("metadata").0);
    let _ = writeln!(out, "\nVirtualService {} ({origin}) hosts {:?}", vs.key, vs.hosts);
    let Some(i) = first_matching_rule(&mut out, vs, req) else {
        let _ = writeln!(out, "\nNo http rule matched: the proxy answers 404 (route not found).");
        return Explanation { text: out, matched: None };
    };
    rule_lines(&mut out, &vs.http[i], req);
    Explanation { text: out, matched: Some((vs.key.to_string(), i)) }
}

/// The request, where it comes from and where it goes.
fn request_lines(out: &mut String, req: &RequestInfo<'_>) {
    let src = req.source.map_or("(ingress: no source workload)".to_string(), |w| {
        format!("{}/{} {}", w.namespace, w.name, fmt_labels(&w.labels))
    });
    let _ = writeln!(
        out,
        "request:  {} {}{}  authority {:?}",
        req.method,
        req.uri.path(),
        req.uri.query().map(|q| format!("?{q}")).unwrap_or_default(),
        req.authority.unwrap_or("")
    );
    let _ = writeln!(out, "from:     {src}");
    match req.context {
        Context::Mesh { service, port } => {
            let _ = writeln!(
                out,
                "to:       service {} port {port} (VIP {})",
                service.fqdn(),
                service.cluster_ip.map_or("none".into(), |ip| ip.to_string())
            );
        }
        Context::Gateway { name, namespace, port } => {
            let _ = writeln!(out, "via:      Gateway {namespace}/{name} port {port}");
        }
    }
}

/// No VirtualService applies: plain Kubernetes routing in the mesh, 404 at a Gateway.
fn no_virtual_service(out: &mut String, table: &RouteTable, req: &RequestInfo<'_>, listed: &gateway_api::Listed) {
    match req.context {
        Context::Mesh { service, port } => {
            let what = if listed.routes > 0 { "No VirtualService and no attached route" } else { "No VirtualService" };
            let _ = writeln!(
                out,
                "\n{what} applies to {}: plain Kubernetes routing (all endpoints, round robin).",
                service.fqdn()
            );
            if let Some(c) = table.default_cluster(service, port) {
                cluster_line(out, "  ", c);
            }
            let _ = writeln!(out, "  retries: {} (Istio's default)", retries_line(&RetryPolicy::istio_default()));
        }
        Context::Gateway { name, namespace, port } => {
            if table.gateway_api_vs.iter().any(|v| v.port == port && v.name == name && v.namespace == namespace) {
                let _ = writeln!(out, "\nNo virtual host of this Gateway port matches the host: 404.");
            } else {
                let _ = writeln!(out, "\nNo VirtualService bound to this Gateway matches the host: 404.");
            }
        }
    }
}

/// Tries the http rules in order, saying why each that does not match fails; the index of the
/// first that matches.
fn first_matching_rule(out: &mut String, vs: &CompiledVs, req: &RequestInfo<'_>) -> Option<usize> {
    for (i, rule) in vs.http.iter().enumerate() {
        let label = rule.name.as_ref().map(|n| format!(" \"{n}\"")).unwrap_or_default();
        if rule.matches.is_empty() {
            let _ = writeln!(out, "  http[{i}]{label}: MATCHES (no match conditions: catches everything)");
            return Some(i);
        }
        if let Some(m) = rule.matches.iter().find(|m| m.test(req)) {
            let _ = writeln!(out, "  http[{i}]{label}: MATCHES ({} condition(s) hold)", m.conds.len());
            return Some(i);
        }
        let _ = writeln!(out, "  http[{i}]{label}: no match");
        for (j, m) in rule.matches.iter().enumerate() {
            if let Some(why) = m.why_not(req) {
                let _ = writeln!(out, "      match[{j}]: {why}");
            }
        }
    }
    None
}

/// What the matched rule does with the request.
fn rule_lines(out: &mut String, rule: &HttpRule, req: &RequestInfo<'_>) {
    match &rule.action {
        Action::Redirect(r) => {
            let _ = writeln!(out, "\n  redirect {} to {}", r.code, r.location(req));
        }
        Action::Route(dests) => {
            let _ = writeln!(out, "\n  destinations (weighted pick per request):");
            dest_lines(out, dests, req.port());
        }
        Action::DirectResponse { status, body } => {
            let _ = writeln!(
                out,
                "\n  directResponse {status} ({} bytes of body): not served by the node proxy, which answers 404 (route not found)",
                body.as_ref().map_or(0, String::len)
            );
        }
    }
    let f = &rule.fault;
    let fault = match (f.delay, f.abort) {
        (None, None) => "none".to_string(),
        (d, a) => [
            d.map(|(d, p)| format!("delay {d:?} on {p}% of requests")),
            a.map(|(s, p)| format!("abort with HTTP {s} on {p}% of requests")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", "),
    };
    let _ = writeln!(out, "  fault:   {fault}");
    let _ = writeln!(
        out,
        "  timeout: {}",
        rule.timeout.map_or("none (Istio default: disabled)".into(), |t| format!("{t:?}"))
    );
    let _ = writeln!(out, "  retries: {}", retries_line(&rule.retries));
    if let Some(u) = &rule.rewrite_uri {
        let _ = writeln!(out, "  rewrite uri → {u}");
    }
    if let Some(a) = &rule.rewrite_authority {
        let _ = writeln!(out, "  rewrite authority → {a}");
    }
    if !rule.request_headers.is_empty() || !rule.response_headers.is_empty() {
        let _ = writeln!(out, "  headers: request {:?} response {:?}", rule.request_headers, rule.response_headers);
    }
    for (m, pct) in &rule.mirrors {
        let _ = writeln!(out, "  mirror:  {pct}% to {} subset {}", m.host, m.subset.as_deref().unwrap_or("-"));
    }
}
