//! The rules and matches of an HTTPRoute or GRPCRoute: each rule's filters, backends, timeouts
//! and retries, and each match's conditions with its precedence.
use super::*;

impl Builder<'_> {
    pub(super) fn gateway_match(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        ri: usize,
        mi: usize,
        m: &gw::HttpRouteMatch,
    ) -> (Vec<Cond>, Precedence) {
        let at = &route.at;
        let path_at = || format!("spec.rules[{ri}].matches[{mi}]");
        let mut conds = Vec::new();
        let (ptype, value) = m.path.as_ref().and_then(|p| p.resolved()).unwrap_or((PathType::PathPrefix, "/"));
        let path = match ptype {
            PathType::Exact => Some(StrMatch::Exact(value.to_owned())),
            // Istio trims a trailing `/` ("/foo/" matches as "/foo"); "/" is everything.
            PathType::PathPrefix => Some(StrMatch::SegmentPrefix(value.trim_end_matches('/').to_owned())),
            PathType::RegularExpression => match Regex::new(&format!("^(?:{value})$")) {
                Ok(r) => Some(StrMatch::Regex(r)),
                Err(e) => {
                    self.errors.push(
                        at.error(format!("{}.path.value", path_at()), format!("invalid regular expression: {e}")),
                    );
                    None
                }
            },
        };
        if let Some(p) = path {
            conds.push(Cond::Uri(p, false));
        }
        if let Some(method) = &m.method {
            conds.push(Cond::Method(StrMatch::Exact(method.clone())));
        }
        let (headers, query) = self.header_and_query_conds(m, at, &path_at, &mut conds);
        // GRPCRoute: "largest number of characters in a matching service, then method, then
        // most header matches" (service and method are at most 1024 characters each).
        let (path_rank, path_len) = match m.grpc_rank {
            Some((service, method)) => (0, service.saturating_mul(2048).saturating_add(method)),
            None => (
                match ptype {
                    PathType::Exact => 0,
                    PathType::PathPrefix => 1,
                    PathType::RegularExpression => 2,
                },
                value.len(),
            ),
        };
        let order = Precedence {
            tier: 2,
            path_rank,
            path_len: std::cmp::Reverse(path_len),
            no_method: m.method.is_none(),
            headers: std::cmp::Reverse(headers),
            query: std::cmp::Reverse(query),
            created: (route.spec.created.is_none(), route.spec.created.clone().unwrap_or_default()),
            namespace: route.namespace.clone(),
            name: route.name.clone(),
            rule: ri,
            index: mi,
        };
        (conds, order)
    }

    /// The header and query parameter conditions of a match; how many of each (for precedence).
    fn header_and_query_conds(
        &mut self,
        m: &gw::HttpRouteMatch,
        at: &Locator,
        path_at: &dyn Fn() -> String,
        conds: &mut Vec<Cond>,
    ) -> (usize, usize) {
        // "If multiple entries specify equivalent header names, only the first entry with an
        // equivalent name MUST be considered" (header names case-insensitively, query names exactly).
        let mut seen = std::collections::HashSet::new();
        let mut headers = 0;
        for (k, h) in m.headers.iter().enumerate() {
            if !seen.insert(h.name.to_ascii_lowercase()) {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) else {
                self.errors.push(at.error(format!("{}.headers[{k}].name", path_at()), "not a valid header name"));
                continue;
            };
            if let Some(v) = self.value_match(h, at, || format!("{}.headers[{k}].value", path_at())) {
                conds.push(Cond::Header(name, v));
                headers += 1;
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut query = 0;
        for (k, q) in m.query_params.iter().enumerate() {
            if !seen.insert(q.name.as_str()) {
                continue;
            }
            if let Some(v) = self.value_match(q, at, || format!("{}.queryParams[{k}].value", path_at())) {
                conds.push(Cond::Query(q.name.clone(), v));
                query += 1;
            }
        }
        (headers, query)
    }

    fn value_match(
        &mut self,
        h: &gw::HttpHeaderMatch,
        at: &Locator,
        path: impl FnOnce() -> String,
    ) -> Option<StrMatch> {
        if !h.is_regex() {
            return Some(StrMatch::Exact(h.value.clone()));
        }
        match Regex::new(&format!("^(?:{})$", h.value)) {
            Ok(r) => Some(StrMatch::Regex(r)),
            Err(e) => {
                self.errors.push(at.error(path(), format!("invalid regular expression: {e}")));
                None
            }
        }
    }

    /// The rule without its matches (filled in per match and parent).
    pub(super) fn gateway_rule(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        ri: usize,
        rule: &gw::HttpRouteRule,
    ) -> Option<HttpRule> {
        let at = &route.at;
        let base = format!("spec.rules[{ri}]");
        let (mut request_headers, mut response_headers) = (HeaderOps::default(), HeaderOps::default());
        let mut redirect = None;
        let (mut rewrite_uri, mut rewrite_whole_path, mut rewrite_authority) = (None, false, None);
        let mut unresolvable_filter = false;
        let mut mirrors = Vec::new();
        for (i, f) in rule.filters.iter().enumerate() {
            let fat = format!("{base}.filters[{i}]");
            if let Some(m) = &f.request_mirror {
                mirrors.extend(self.mirror(route, m, &format!("{fat}.requestMirror")));
            }
            if let Some(m) = &f.request_header_modifier {
                request_headers = self.header_modifier(m, at, &format!("{fat}.requestHeaderModifier"));
            }
            if let Some(m) = &f.response_header_modifier {
                response_headers = self.header_modifier(m, at, &format!("{fat}.responseHeaderModifier"));
            }
            if let Some(r) = &f.request_redirect {
                redirect = Some(gateway_redirect(r));
            }
            if let Some(u) = &f.url_rewrite {
                rewrite_authority = u.hostname.clone();
                match u.path.as_ref().and_then(|p| p.resolved()) {
                    Some(PathRewrite::Full(p)) => {
                        rewrite_uri = Some(p);
                        rewrite_whole_path = true;
                    }
                    // The matched prefix is held without its trailing `/` (see SegmentPrefix), so
                    // the replacement is too: `/` replacing `/foo` in `/foo/bar` gives `/bar`.
                    Some(PathRewrite::Prefix(p)) => rewrite_uri = Some(p.trim_end_matches('/').to_owned()),
                    None => {}
                }
            }
            // "If a reference to a custom filter type cannot be resolved, the filter MUST NOT be
            // skipped. Instead, requests that would have been processed by that filter MUST
            // receive a HTTP error response" (500).
            if f.kind == "ExtensionRef" {
                unresolvable_filter = true;
            }
        }
        let action = self.gateway_action(route, rule, &base, redirect, unresolvable_filter);
        let (timeout, retries) = self.gateway_timeouts(rule);
        Some(HttpRule {
            name: Some(match &rule.name {
                Some(n) => format!("{} {n}", route.key()),
                None => format!("{} rules[{ri}]", route.key()),
            }),
            matches: Vec::new(),
            action,
            fault: FaultSpec::default(),
            timeout,
            retries,
            rewrite_uri,
            rewrite_whole_path,
            rewrite_authority,
            request_headers,
            response_headers,
            mirrors,
            origin: None,
        })
    }

    /// The redirect, else the backends (none while an ExtensionRef filter cannot be resolved).
    fn gateway_action(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        rule: &gw::HttpRouteRule,
        base: &str,
        redirect: Option<Redirect>,
        unresolvable_filter: bool,
    ) -> Action {
        match redirect {
            Some(r) if !unresolvable_filter => Action::Redirect(r),
            _ => {
                let mut dests = Vec::new();
                if !unresolvable_filter {
                    for (j, b) in rule.backend_refs.iter().enumerate() {
                        dests.push(self.backend(route, b, &format!("{base}.backendRefs[{j}]")));
                    }
                }
                // No backend, or all weights 0: nothing may be forwarded, so every request that
                // matches gets 500 (as Istio configures Envoy for gateway-semantics routes).
                if dests.iter().all(|d| d.weight == 0) {
                    let why = if unresolvable_filter {
                        "an ExtensionRef filter cannot be resolved (the spec: such a rule answers 500)"
                    } else if dests.is_empty() {
                        "the rule has no backendRefs"
                    } else {
                        "every backendRef has weight 0"
                    };
                    dests = vec![WeightedDest {
                        fail_reason: Some(Arc::from(why)),
                        ..self.failing(&route.namespace, "(no backend)", 0)
                    }];
                }
                Action::Route(dests)
            }
        }
    }

    /// The rule's request timeout and retry policy.
    fn gateway_timeouts(&self, rule: &gw::HttpRouteRule) -> (Option<std::time::Duration>, Arc<RetryPolicy>) {
        // Durations were validated at admission; `0s` means no timeout.
        let duration = |s: Option<&str>| s.and_then(|s| gw::parse_gep_duration(s).ok()).filter(|d| !d.is_zero());
        let timeout = duration(rule.timeouts.as_ref().and_then(|t| t.request.as_deref()));
        let per_try_timeout = duration(rule.timeouts.as_ref().and_then(|t| t.backend_request.as_deref()));
        let retries = match (&rule.retry, per_try_timeout) {
            (Some(rt), _) => Arc::new(gateway_retry(rt, per_try_timeout)),
            // No retry stanza: Istio's default policy, as on the VirtualServices Istio generates
            // from HTTPRoutes, each try bounded by backendRequest. (Istio sets the route timeout to
            // backendRequest instead; with the default policy, which does not retry a timed-out
            // try, the two answer the same.)
            (None, Some(t)) => Arc::new(RetryPolicy { per_try_timeout: Some(t), ..(*self.default_retries).clone() }),
            (None, None) => self.default_retries.clone(),
        };
        (timeout, retries)
    }
}

/// An HTTPRoute `RequestRedirect` filter as the engine's redirect.
fn gateway_redirect(r: &gw::RequestRedirect) -> Redirect {
    let (uri, prefix_rewrite) = match r.path.as_ref().and_then(|p| p.resolved()) {
        Some(PathRewrite::Full(p)) => (Some(p), None),
        Some(PathRewrite::Prefix(p)) => (None, Some(p)),
        None => (None, None),
    };
    Redirect {
        uri,
        authority: r.hostname.clone(),
        port: r.port.and_then(|p| u16::try_from(p).ok()),
        scheme: r.scheme.clone(),
        // Validated to 301/302/303/307/308; the spec's default is 302.
        code: r.status_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(302),
        prefix_rewrite,
        gateway: true,
    }
}

/// HTTPRoute `retry` as the engine's policy, as Istio converts it: `attempts` (default 2) retries
/// on connection errors plus the listed `codes`, each try bounded by `backendRequest`. The spec
/// asks to retry "on connection errors (disconnect, reset, timeout, TCP failure)": Istio's list
/// (connect-failure, refused-stream, unavailable, cancelled) plus `reset`, which also retries a try
/// that timed out (conformance HTTPRouteRetryWithTimeouts expects that).
fn gateway_retry(rt: &gw::HttpRouteRetry, per_try_timeout: Option<std::time::Duration>) -> RetryPolicy {
    let mut retry_on = RetryOn {
        connect_failure: true,
        refused_stream: true,
        reset: true,
        other: vec!["unavailable".into(), "cancelled".into()],
        ..RetryOn::default()
    };
    // Validated to 400-599.
    retry_on.status_codes = rt.codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect();
    RetryPolicy {
        // Validated to >= 1; a value past u32 is as good as unlimited.
        attempts: rt.attempts.map_or(2, |a| u32::try_from(a).unwrap_or(u32::MAX)),
        per_try_timeout,
        retry_on,
        backoff: rt.backoff.as_deref().and_then(|b| gw::parse_gep_duration(b).ok()),
    }
}

/// A match's precedence key in words, for `mesh explain`: what the spec sorts matches by.
pub(super) fn precedence_words(route: &Sourced<HttpRouteSpec>, m: &gw::HttpRouteMatch) -> String {
    let plural = |n: usize, what: &str| match (n, what.ends_with("ch")) {
        (1, _) => format!("1 {what}"),
        (_, true) => format!("{n} {what}es"),
        (_, false) => format!("{n} {what}s"),
    };
    let mut out = Vec::new();
    match m.grpc_rank {
        Some((service, method)) => out.push(match (service, method) {
            (0, 0) => "no gRPC service or method match".to_string(),
            _ => format!("gRPC service {}, method {}", plural(service, "char"), plural(method, "char")),
        }),
        None => {
            let (ptype, value) = m.path.as_ref().and_then(|p| p.resolved()).unwrap_or((PathType::PathPrefix, "/"));
            out.push(match ptype {
                PathType::Exact => format!("Exact path {value:?}"),
                PathType::PathPrefix => format!("PathPrefix {value:?} ({})", plural(value.len(), "char")),
                PathType::RegularExpression => format!("RegularExpression path {value:?}"),
            });
            out.push(m.method.as_ref().map_or("any method".into(), |method| format!("method {method}")));
        }
    }
    // As compiled: a repeated name counts once (only the first is considered).
    let headers: std::collections::HashSet<String> = m.headers.iter().map(|h| h.name.to_ascii_lowercase()).collect();
    out.push(plural(headers.len(), "header match"));
    if m.grpc_rank.is_none() {
        let query: std::collections::HashSet<&str> = m.query_params.iter().map(|q| q.name.as_str()).collect();
        out.push(plural(query.len(), "query param match"));
    }
    out.push(route.spec.created.as_ref().map_or("no creationTimestamp".into(), |c| format!("created {c}")));
    out.join(", ")
}

impl Redirect {
    /// Location for an HTTPRoute `RequestRedirect`: scheme, then host (the filter's, else the
    /// request's without its port), then the port: the filter's, else the scheme's well-known
    /// one when the filter sets a scheme, else the port the request was sent to (the "listener
    /// port", here the Service port); left out when it is the scheme's default.
    pub(in crate::routing) fn gateway_location(&self, req: &RequestInfo<'_>, matched_prefix: Option<&str>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let host = match &self.authority {
            Some(h) => h.as_str(),
            None => {
                let a = req.authority.unwrap_or("");
                a.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(a, |(h, _)| h)
            }
        };
        let port = self.port.unwrap_or(match (self.scheme.as_deref(), scheme) {
            (Some(_), "http") => 80,
            (Some(_), "https") => 443,
            _ => req.port(),
        });
        let default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
        let path = req.uri.path();
        let path = match (&self.uri, &self.prefix_rewrite) {
            (Some(full), _) => full.clone(),
            (None, Some(p)) => {
                let rest = matched_prefix.and_then(|m| path.strip_prefix(m)).unwrap_or(path);
                let s = format!("{}{rest}", p.trim_end_matches('/'));
                if s.is_empty() {
                    "/".to_owned()
                } else {
                    s
                }
            }
            (None, None) => path.to_owned(),
        };
        let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        if default_port {
            format!("{scheme}://{host}{path}{query}")
        } else {
            format!("{scheme}://{host}:{port}{path}{query}")
        }
    }
}
