//! One HTTP route of a VirtualService: each field checked by its own function, in Istio's order.
use super::headers::{
    header_operations, is_authority_header, is_token, match_header_name, regex_syntax, string_match,
    string_match_regexp,
};
use super::virtual_service::{destination, weight};
use super::{enum_value, gateway_names, http_status, int32, is_dns1123_label, labels, percentage, port, q, Validation};
use crate::config::{
    cut, CorsPolicy, DirectResponse, FaultAbort, FaultDelay, HttpFault, HttpMatchRequest, HttpRedirect, HttpRetry,
    HttpRewrite, HttpRoute,
};

const GRPC_STATUSES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Whether Go's `net/http.StatusText(code)` knows the code (Istio accepts those in retryOn).
fn go_knows_status(code: i64) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

const CORS_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

/// `validateHTTPRoute`: each field in the order Istio checks it, so errors come out in Istio's
/// order too.
pub(super) fn http_route(v: &mut Validation, base: &str, r: &HttpRoute, delegate: bool) {
    route_conflicts(v, base, r, delegate);
    for (j, m) in r.matches.iter().enumerate() {
        match_request(v, &format!("{base}.match[{j}]"), m);
    }
    if let Some(h) = &r.headers {
        header_operations(v, &format!("{base}.headers"), h);
    }
    if let Some(c) = &r.cors_policy {
        cors_policy(v, &format!("{base}.corsPolicy"), c);
    }
    if let Some(f) = &r.fault {
        fault(v, &format!("{base}.fault"), f);
    }
    mirrors(v, base, r);
    if let Some(rd) = &r.redirect {
        redirect(v, &format!("{base}.redirect"), rd, &r.matches);
    }
    if let Some(d) = &r.direct_response {
        direct_response(v, &format!("{base}.directResponse"), d);
    }
    if let Some(rt) = &r.retries {
        retries(v, &format!("{base}.retries"), rt);
    }
    if let Some(rw) = &r.rewrite {
        rewrite(v, &format!("{base}.rewrite"), rw);
    }
    authority_rewrite(v, base, r);
    route_destinations(v, base, r);
    v.duration(format!("{base}.timeout"), r.timeout.as_deref());
}

/// `validateHTTPRouteConflict`: which of route, redirect, directResponse and delegate may be set
/// together.
fn route_conflicts(v: &mut Validation, base: &str, r: &HttpRoute, delegate: bool) {
    if r.delegate.is_some() {
        if r.redirect.is_some() {
            v.error(format!("{base}.redirect"), "root HTTP route must not specify redirect");
        }
        if !r.route.is_empty() {
            v.error(format!("{base}.route"), "root HTTP route must not specify route");
        }
        v.warn(format!("{base}.delegate"), "delegation is not supported by the node proxy; this rule routes nothing");
    } else {
        if delegate && r.delegate.is_some() {
            v.error(format!("{base}.delegate"), "delegate HTTP route cannot contain delegate");
        }
        if r.redirect.is_some() {
            if !r.route.is_empty() {
                v.error(format!("{base}.redirect"), "HTTP route cannot contain both route and redirect");
            }
            if r.fault.is_some() {
                v.error(format!("{base}.redirect"), "HTTP route cannot contain both fault and redirect");
            }
            if r.rewrite.is_some() {
                v.error(format!("{base}.redirect"), "HTTP route rule cannot contain both rewrite and redirect");
            }
            if r.direct_response.is_some() {
                v.error(format!("{base}.redirect"), "HTTP route rule cannot contain both direct_response and redirect");
            }
        } else if r.direct_response.is_some() {
            if !r.route.is_empty() {
                v.error(format!("{base}.directResponse"), "HTTP route cannot contain both route and direct_response");
            }
            if r.fault.is_some() {
                v.error(format!("{base}.directResponse"), "HTTP route cannot contain both fault and direct_response");
            }
            if r.rewrite.is_some() {
                v.error(
                    format!("{base}.directResponse"),
                    "HTTP route rule cannot contain both rewrite and direct_response",
                );
            }
        } else if r.route.is_empty() {
            v.error(base.to_owned(), "HTTP route, redirect or direct_response is required");
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        v.error(format!("{base}.mirrors"), "HTTP route cannot contain both mirror and mirrors");
    }
}

/// `validateHTTPRouteMatchRequest`: one entry of `match`.
fn match_request(v: &mut Validation, mp: &str, m: &HttpMatchRequest) {
    for (name, sm) in &m.headers {
        let p = format!("{mp}.headers.{name}");
        v.check(p.clone(), match_header_name(name));
        v.check(p, string_match(sm, "headers"));
    }
    for (name, sm) in &m.without_headers {
        let p = format!("{mp}.withoutHeaders.{name}");
        v.check(p.clone(), match_header_name(name));
        // `regex: "*"` is Istio's way to say "the header is present".
        if sm.regex.as_deref() != Some("*") {
            v.check(p, string_match(sm, "withoutHeaders"));
        }
    }
    if let Some(u) = &m.uri {
        v.check(format!("{mp}.uri"), string_match_regexp(u, "uri"));
    }
    for (field, sm) in [("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
        if let Some(sm) = sm {
            v.check(format!("{mp}.{field}"), string_match(sm, field));
        }
    }
    for (name, sm) in &m.query_params {
        v.check(format!("{mp}.queryParams.{name}"), string_match(sm, "queryParams"));
    }
    if let Some(p) = m.port.filter(|p| *p != 0) {
        v.check(format!("{mp}.port"), port(i64::from(p)));
    }
    v.check(format!("{mp}.sourceLabels"), labels(&m.source_labels));
    gateway_names(v, &format!("{mp}.gateways"), &m.gateways);
    if let Some(ns) = m.source_namespace.as_deref().filter(|n| !n.is_empty()) {
        if !is_dns1123_label(ns) {
            v.error(format!("{mp}.sourceNamespace"), format!("sourceNamespace match {} is invalid", cut(ns, 60)));
        }
    }
    if m.stat_prefix.is_some() {
        v.not_enforced(format!("{mp}.statPrefix"));
    }
}

/// `validateCORSPolicy`: origins, methods and header names; the policy itself is not enforced.
fn cors_policy(v: &mut Validation, cp: &str, c: &CorsPolicy) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        let p = format!("{cp}.allowOrigins[{i}]");
        let m = o.exact.as_deref().or(o.prefix.as_deref()).or(o.regex.as_deref()).unwrap_or("");
        if m.is_empty() {
            v.error(p, format!("'{}' is not a valid match type for CORS allow origins", cut(m, 60)));
        } else {
            v.check(p, string_match_regexp(o, "corsPolicy.allowOrigins"));
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            v.error(format!("{cp}.allowMethods[{i}]"), format!("{} is not a supported HTTP method", q(m)));
        }
    }
    for (field, list) in [("allowHeaders", &c.allow_headers), ("exposeHeaders", &c.expose_headers)] {
        for (i, h) in list.iter().enumerate() {
            let p = format!("{cp}.{field}[{i}]");
            if h.is_empty() {
                v.error(p, "header name cannot be empty");
            } else if h != "*" && !is_token(h) {
                v.error(p, format!("header name {} is not a valid header name", cut(h, 60)));
            }
        }
    }
    if let Some(d) = v.duration(format!("{cp}.maxAge"), c.max_age.as_deref()) {
        if d.subsec_nanos() != 0 {
            v.error(format!("{cp}.maxAge"), "max_age duration is accurate only to seconds precision");
        }
    }
    enum_value(
        v,
        format!("{cp}.unmatchedPreflights"),
        c.unmatched_preflights.as_deref(),
        &["UNSPECIFIED", "FORWARD", "IGNORE"],
    );
    v.not_enforced(cp.to_owned());
}

/// `validateHTTPFaultInjection`: an abort and/or a delay.
fn fault(v: &mut Validation, fp: &str, f: &HttpFault) {
    if f.abort.is_none() && f.delay.is_none() {
        v.error(fp.to_owned(), "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        fault_abort(v, &format!("{fp}.abort"), a);
    }
    if let Some(d) = &f.delay {
        fault_delay(v, &format!("{fp}.delay"), d);
    }
}

/// `validateHTTPFaultInjectionAbort`: one error type, a known HTTP or gRPC status.
fn fault_abort(v: &mut Validation, ap: &str, a: &FaultAbort) {
    v.check(format!("{ap}.percentage.value"), percentage(&a.percentage));
    let set =
        [a.http_status.is_some(), a.grpc_status.is_some(), a.http2_error.is_some()].iter().filter(|b| **b).count();
    if set > 1 {
        v.error(
            ap.to_owned(),
            "must validate one and only one schema (oneOf): set only one of httpStatus, grpcStatus, http2Error",
        );
    } else if let Some(s) = a.http_status {
        v.check(format!("{ap}.httpStatus"), http_status(s));
    } else if let Some(g) = &a.grpc_status {
        if GRPC_STATUSES.contains(&g.as_str()) {
            v.warn(
                format!("{ap}.grpcStatus"),
                "gRPC status aborts are accepted as Istio does, but not injected by the node proxy",
            );
        } else {
            v.error(
                format!("{ap}.grpcStatus"),
                format!(
                    "gRPC status {} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'",
                    q(g)
                ),
            );
        }
    } else if a.http2_error.is_some() {
        v.error(format!("{ap}.http2Error"), "HTTP/2 abort fault injection not supported yet");
    } else {
        v.warn(ap.to_owned(), "abort configured, but error type not set");
    }
}

/// `validateHTTPFaultInjectionDelay`: a fixed delay (exponential ones Istio does not support).
fn fault_delay(v: &mut Validation, dp: &str, d: &FaultDelay) {
    v.check(format!("{dp}.percentage.value"), percentage(&d.percentage));
    int32(v, format!("{dp}.percent"), d.percent);
    match (&d.fixed_delay, &d.exponential_delay) {
        (Some(_), Some(_)) => v.error(
            dp.to_owned(),
            "must validate one and only one schema (oneOf): set only one of fixedDelay, exponentialDelay",
        ),
        (Some(fd), None) => {
            v.duration(format!("{dp}.fixedDelay"), Some(fd));
        }
        (None, Some(ed)) => {
            v.duration(format!("{dp}.exponentialDelay"), Some(ed));
            v.error(format!("{dp}.exponentialDelay"), "exponentialDelay not supported yet");
        }
        (None, None) => v.warn(dp.to_owned(), "delay configured without fixedDelay: nothing is delayed"),
    }
}

/// `mirrorPercent`, `mirrorPercentage`, `mirror` and `mirrors`.
fn mirrors(v: &mut Validation, base: &str, r: &HttpRoute) {
    if let Some(p) = r.mirror_percent {
        if p > 100 {
            v.error(
                format!("{base}.mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {p})"),
            );
        }
        v.warn(
            format!("{base}.mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &r.mirror_percentage {
        if p.value > 100.0 {
            v.error(
                format!("{base}.mirrorPercentage.value"),
                format!("mirror_percentage must have a max value of 100 (it has {:.6})", p.value),
            );
        }
        if p.value < 0.0 {
            v.error(
                format!("{base}.mirrorPercentage.value"),
                format!("mirror_percentage must have a min value of 0 (it has {:.6})", p.value),
            );
        }
    }
    if let Some(m) = &r.mirror {
        destination(v, &format!("{base}.mirror"), m);
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let mp = format!("{base}.mirrors[{i}]");
        let Some(d) = &m.destination else {
            v.error(mp, "destination is required for mirrors");
            continue;
        };
        destination(v, &format!("{mp}.destination"), d);
        if let Some(p) = &m.percentage {
            if p.value > 100.0 {
                v.error(
                    format!("{mp}.percentage.value"),
                    format!("mirror percentage must have a max value of 100 (it has {:.6})", p.value),
                );
            }
            if p.value < 0.0 {
                v.error(
                    format!("{mp}.percentage.value"),
                    format!("mirror percentage must have a min value of 0 (it has {:.6})", p.value),
                );
            }
        }
    }
    if !r.mirrors.is_empty() {
        v.not_enforced(format!("{base}.mirrors"));
    }
}

/// `validateHTTPRedirect`.
fn redirect(v: &mut Validation, rp: &str, rd: &HttpRedirect, matches: &[HttpMatchRequest]) {
    let uri = rd.uri.as_deref().unwrap_or("");
    let prefix_rewrite = rd.prefix_rewrite.as_deref().unwrap_or("");
    let err = if !uri.is_empty() && !prefix_rewrite.is_empty() {
        Some("redirect may only specify one of uri or prefix_rewrite".to_owned())
    } else if !prefix_rewrite.is_empty() && matches.iter().any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none())) {
        Some("redirect prefix_rewrite requires all URI matches to use prefix match type".to_owned())
    } else if uri.is_empty()
        && prefix_rewrite.is_empty()
        && rd.authority.as_deref().unwrap_or("").is_empty()
        && rd.port.is_none()
        && rd.derive_port.is_none()
        && rd.scheme.as_deref().unwrap_or("").is_empty()
    {
        Some("redirect must specify URI, authority, scheme, or port".to_owned())
    } else if rd.redirect_code.is_some_and(|c| c != 0 && !(300..=399).contains(&c)) {
        Some(format!("{} is not a valid redirect code, must be 3xx", rd.redirect_code.unwrap_or(0)))
    } else if rd.scheme.as_deref().is_some_and(|s| !s.is_empty() && s != "http" && s != "https") {
        Some("invalid redirect scheme, must be \"http\" or \"https\"".to_owned())
    } else {
        rd.port.filter(|p| *p > 0).and_then(|p| port(i64::from(p)).err())
    };
    if let Some(e) = err {
        v.error(rp.to_owned(), e);
    }
    if rd.port.is_some() && rd.derive_port.is_some() {
        v.error(rp.to_owned(), "must validate one and only one schema (oneOf): set only one of port, derivePort");
    }
    enum_value(
        v,
        format!("{rp}.derivePort"),
        rd.derive_port.as_deref(),
        &["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"],
    );
    if rd.derive_port.is_some() {
        v.not_enforced(format!("{rp}.derivePort"));
    }
}

/// `validateHTTPDirectResponse`: one body of at most 1 MB, a valid status.
fn direct_response(v: &mut Validation, dp: &str, d: &DirectResponse) {
    let size = match &d.body {
        Some(b) if b.string.is_some() && b.bytes.is_some() => {
            v.error(
                format!("{dp}.body"),
                "must validate one and only one schema (oneOf): set only one of string, bytes",
            );
            0
        }
        Some(b) => b.string.as_ref().map_or(0, String::len).max(b.bytes.as_ref().map_or(0, |s| s.len() / 4 * 3)),
        None => 0,
    };
    if size > 1024 * 1024 {
        v.error(
            format!("{dp}.body"),
            "large direct_responses may impact control plane performance, must be less than 1MB",
        );
    } else if size > 100 * 1024 {
        v.warn(format!("{dp}.body"), "large direct_responses may impact control plane performance");
    }
    v.check(format!("{dp}.status"), http_status(i64::from(d.status)));
}

/// `agent.ValidateHTTPRetry`.
fn retries(v: &mut Validation, rp: &str, rt: &HttpRetry) {
    if rt.attempts < 0 {
        v.error(format!("{rp}.attempts"), "attempts cannot be negative");
    } else {
        int32(v, format!("{rp}.attempts"), Some(rt.attempts));
    }
    if rt.attempts == 0
        && (rt.per_try_timeout.is_some()
            || rt.retry_on.as_deref().is_some_and(|s| !s.is_empty())
            || rt.retry_remote_localities.is_some())
    {
        v.error(rp.to_owned(), "http retry policy configured when attempts are set to 0 (disabled)");
    }
    v.duration(format!("{rp}.perTryTimeout"), rt.per_try_timeout.as_deref());
    if let Some(on) = rt.retry_on.as_deref().filter(|s| !s.is_empty()) {
        for p in on.split(',') {
            let code = p.parse::<i64>().unwrap_or(0);
            if !go_knows_status(code) && !RETRY_ON_POLICIES.contains(&p) {
                v.error(format!("{rp}.retryOn"), format!("{} is not a valid retryOn policy", q(p)));
            }
        }
    }
    v.duration(format!("{rp}.backoff"), rt.backoff.as_deref());
    for (field, set) in [
        ("backoff", rt.backoff.is_some()),
        ("retryIgnorePreviousHosts", rt.retry_ignore_previous_hosts.is_some()),
        ("retryRemoteLocalities", rt.retry_remote_localities.is_some()),
    ] {
        if set {
            v.not_enforced(format!("{rp}.{field}"));
        }
    }
}

/// `validateHTTPRewrite`.
fn rewrite(v: &mut Validation, wp: &str, rw: &HttpRewrite) {
    let uri = rw.uri.as_deref().unwrap_or("");
    if !uri.is_empty() && rw.uri_regex_rewrite.is_some() {
        v.error(wp.to_owned(), "rewrite may only contain one of URI or UriRegexRewrite");
    } else if uri.is_empty() && rw.uri_regex_rewrite.is_none() && rw.authority.as_deref().unwrap_or("").is_empty() {
        v.error(
            wp.to_owned(),
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
        );
    } else if let Some(rr) = &rw.uri_regex_rewrite {
        let m = rr.matches.as_deref().unwrap_or("");
        if m.is_empty() || rr.rewrite.as_deref().unwrap_or("").is_empty() {
            v.error(
                format!("{wp}.uriRegexRewrite"),
                "UriRegexRewrite has errors: UriRegexRewrite requires both Rewrite and Match fields to be specified",
            );
        } else if let Err(e) = regex_syntax(m, "HTTPRewrite.UriRegexRewrite.Match") {
            v.error(format!("{wp}.uriRegexRewrite.match"), format!("UriRegexRewrite has errors: {e}"));
        } else {
            v.not_enforced(format!("{wp}.uriRegexRewrite"));
        }
    }
}

/// `validateAuthorityRewrite`: one authority, whether from rewrite or a header.
fn authority_rewrite(v: &mut Validation, base: &str, r: &HttpRoute) {
    let mut current = r.rewrite.as_ref().and_then(|rw| rw.authority.clone()).filter(|a| !a.is_empty());
    if let Some(req) = r.headers.as_ref().and_then(|h| h.request.as_ref()) {
        for (k, val) in req.set.iter().chain(&req.add) {
            if !is_authority_header(k) {
                continue;
            }
            if let Some(c) = &current {
                v.error(
                    format!("{base}.headers.request"),
                    format!(
                        "authority header cannot be set multiple times: have {}, attempting to set {}",
                        q(c),
                        q(val)
                    ),
                );
                break;
            }
            current = Some(val.clone());
        }
    }
}

/// `validateHTTPRouteDestinations`: headers, destination and weight of each, a weight in total.
fn route_destinations(v: &mut Validation, base: &str, r: &HttpRoute) {
    let mut total = 0i64;
    for (i, d) in r.route.iter().enumerate() {
        let dp = format!("{base}.route[{i}]");
        if let Some(h) = &d.headers {
            header_operations(v, &format!("{dp}.headers"), h);
        }
        destination(v, &format!("{dp}.destination"), &d.destination);
        weight(v, format!("{dp}.weight"), d.weight, &mut total);
    }
    if r.route.len() > 1 && total == 0 {
        v.error(format!("{base}.route[0].weight"), "total destination weight = 0");
    }
}
