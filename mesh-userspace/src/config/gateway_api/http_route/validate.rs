//! The HTTPRoute CRD's validation rules (its OpenAPI schema and CEL rules), checked when an
//! object is admitted, with the error paths the API server would print.
use super::super::filters::{check_filters, check_match, check_retry};
use super::super::{
    cut, Validation, GROUP, MAX_BACKEND_REFS, MAX_HOSTNAMES, MAX_MATCHES_PER_RULE, MAX_MATCHES_TOTAL, MAX_PARENT_REFS,
    MAX_RULES, MAX_WEIGHT,
};
use super::*;
use crate::config::parse_duration;

/// Gateway API durations (GEP-2257): 1 to 4 of `<1-5 digits><h|m|s|ms>`, e.g. `10s`, `1h30m`, `500ms`.
pub fn parse_gep_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {:?}: expected e.g. \"10s\", \"500ms\", \"1h30m\" (GEP-2257)", cut(s, 40));
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let after = &rest[digits..];
        let unit = if after.starts_with("ms") {
            2
        } else if after.starts_with(['h', 'm', 's']) {
            1
        } else {
            return Err(bad());
        };
        rest = &after[unit..];
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    parse_duration(s)
}

pub(in crate::config::gateway_api) fn header_name_ok(n: &str) -> bool {
    // RFC 7230 token, as the CRD's pattern `^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$`, at most 256.
    !n.is_empty() && n.len() <= 256 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 1123 host name, as the CRD's `PreciseHostname` (no wildcard) or `Hostname` (`*.` prefix allowed).
pub(in crate::config::gateway_api) fn hostname_ok(h: &str, wildcard: bool) -> bool {
    let h = if wildcard { h.strip_prefix("*.").unwrap_or(h) } else { h };
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The CEL rules on an Exact / PathPrefix value.
pub(in crate::config::gateway_api) fn check_plain_path(v: &str) -> Result<(), String> {
    if !v.starts_with('/') {
        return Err("must be an absolute path (start with '/')".into());
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if v.contains(bad) {
            return Err(format!("must not contain {bad:?}"));
        }
    }
    if v.ends_with("/..") || v.ends_with("/.") {
        return Err("must not end with '/..' or '/.'".into());
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@%".contains(&b);
    if !v.bytes().all(allowed) {
        return Err("must only contain valid path characters (RFC 3986 pchar and '/')".into());
    }
    Ok(())
}

/// The HTTPRoute CRD's rules that decide what traffic does: parents, hostnames, then each rule
/// (the README's Gateway API section lists the ones not checked).
pub fn validate(spec: &HttpRouteSpec) -> Validation {
    let mut v = Validation::default();
    let mut err = |p: String, m: String| v.errors.push((p, m));
    let mut warns: Vec<(String, String)> = Vec::new();
    if spec.parent_refs.len() > MAX_PARENT_REFS {
        err("spec.parentRefs".into(), format!("must have at most {MAX_PARENT_REFS} items"));
    }
    check_parent_refs(&spec.parent_refs, &mut err, &mut warns);
    if spec.hostnames.len() > MAX_HOSTNAMES {
        err("spec.hostnames".into(), format!("must have at most {MAX_HOSTNAMES} items"));
    }
    for (i, h) in spec.hostnames.iter().enumerate() {
        if !hostname_ok(h, true) {
            err(
                format!("spec.hostnames[{i}]"),
                format!("{:?} is not a valid host name (RFC 1123, optionally prefixed by '*.')", cut(h, 60)),
            );
        }
    }
    let rules = spec.rules();
    if rules.len() > MAX_RULES {
        err("spec.rules".into(), format!("must have at most {MAX_RULES} items"));
    }
    let total: usize = rules.iter().map(|r| r.matches().len()).sum();
    if total > MAX_MATCHES_TOTAL {
        err("spec.rules".into(), format!("the total number of matches across all rules in a route must be less than {MAX_MATCHES_TOTAL} (has {total})"));
    }
    let mut names = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(n) = &r.name {
            if !names.insert(n.as_str()) {
                err(format!("{at}.name"), format!("rule name {:?} must be unique within the route", cut(n, 60)));
            }
        }
        check_rule(r, &at, &mut err, &mut warns);
    }
    v.warnings = warns;
    v
}

/// `parentRefs`: named, valid ports, no two the same; kinds other than Service and Gateway warned.
fn check_parent_refs(refs: &[ParentReference], err: &mut dyn FnMut(String, String), warns: &mut Vec<(String, String)>) {
    for (i, p) in refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        if p.name.is_empty() {
            err(format!("{at}.name"), "name is required".into());
        }
        if let Some(port) = p.port {
            if !(1..=65535).contains(&port) {
                err(format!("{at}.port"), format!("{port} is not a port number (1-65535)"));
            }
        }
        for (j, q) in refs.iter().enumerate().take(i) {
            let same = p.group == q.group
                && p.kind == q.kind
                && p.namespace == q.namespace
                && p.name == q.name
                && p.section_name == q.section_name
                && p.port == q.port;
            if same {
                err(at.clone(), format!("duplicates spec.parentRefs[{j}]: sectionName or port must be unique when parentRefs includes 2 or more references to the same parent"));
            }
        }
        let group = p.group.as_deref().unwrap_or(GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if !p.is_service() {
            // A Gateway parent (ingress) is attached, or warned about, when routes are compiled.
            if group != GROUP || kind != "Gateway" {
                warns.push((
                    at.clone(),
                    format!("parent kind {:?} of group {:?} is not supported; ignored", cut(kind, 40), cut(group, 60)),
                ));
            }
        } else if p.section_name.is_some() {
            warns.push((
                format!("{at}.sectionName"),
                "sectionName on a Service parent is not supported; the route is bound to the whole Service (use port)"
                    .into(),
            ));
        }
    }
}

/// One rule: its matches, filters, backendRefs, timeouts and retry.
fn check_rule(r: &HttpRouteRule, at: &str, err: &mut dyn FnMut(String, String), warns: &mut Vec<(String, String)>) {
    let matches = r.matches();
    if matches.len() > MAX_MATCHES_PER_RULE {
        err(format!("{at}.matches"), format!("must have at most {MAX_MATCHES_PER_RULE} items"));
    }
    for (j, m) in matches.iter().enumerate() {
        check_match(m, &format!("{at}.matches[{j}]"), err);
    }
    check_filters(&r.filters, at, &matches, err, warns);
    if r.backend_refs.len() > MAX_BACKEND_REFS {
        err(format!("{at}.backendRefs"), format!("must have at most {MAX_BACKEND_REFS} items"));
    }
    let redirects = r.filters.iter().any(|f| f.kind == "RequestRedirect");
    if redirects && !r.backend_refs.is_empty() {
        // The spec: RequestRedirect "MUST NOT be used on a rule that also has backendRefs"
        // (webhook rule); a redirect answers, nothing is forwarded.
        err(format!("{at}.backendRefs"), "RequestRedirect filter must not be used together with backendRefs".into());
    }
    for (j, b) in r.backend_refs.iter().enumerate() {
        check_backend_ref(b, &format!("{at}.backendRefs[{j}]"), &matches, err, warns);
    }
    if let Some(t) = &r.timeouts {
        check_timeouts(t, at, err);
    }
    if let Some(rt) = &r.retry {
        check_retry(rt, &format!("{at}.retry"), err);
    }
    if r.session_persistence.is_some() {
        warns.push((format!("{at}.sessionPersistence"), "sessionPersistence (experimental) is not enforced".into()));
    }
}

/// One backendRef: a name, a weight in range, a port for a Service, and its filters.
fn check_backend_ref(
    b: &HttpBackendRef,
    bat: &str,
    matches: &[HttpRouteMatch],
    err: &mut dyn FnMut(String, String),
    warns: &mut Vec<(String, String)>,
) {
    if b.name.is_empty() {
        err(format!("{bat}.name"), "name is required".into());
    }
    if let Some(w) = b.weight {
        if !(0..=MAX_WEIGHT).contains(&w) {
            err(format!("{bat}.weight"), format!("{w} must be between 0 and {MAX_WEIGHT}"));
        }
    }
    match b.port {
        None if b.is_service() => err(bat.to_owned(), "Must have port for Service reference".into()),
        Some(p) if !(1..=65535).contains(&p) => {
            err(format!("{bat}.port"), format!("{p} is not a port number (1-65535)"))
        }
        _ => {}
    }
    check_filters(&b.filters, bat, matches, err, warns);
    for (k, f) in b.filters.iter().enumerate() {
        if !matches!(f.kind.as_str(), "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror") {
            warns.push((
                format!("{bat}.filters[{k}]"),
                format!(
                    "a {} filter on a backendRef is not enforced (only header modifiers and RequestMirror are)",
                    cut(&f.kind, 40)
                ),
            ));
        }
    }
}

/// `timeouts`: GEP-2257 durations, backendRequest no longer than request.
fn check_timeouts(t: &HttpRouteTimeouts, at: &str, err: &mut dyn FnMut(String, String)) {
    let parse = |f: &Option<String>, name: &str, err: &mut dyn FnMut(String, String)| {
        f.as_deref().and_then(|s| match parse_gep_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                err(format!("{at}.timeouts.{name}"), e);
                None
            }
        })
    };
    let req = parse(&t.request, "request", err);
    let backend = parse(&t.backend_request, "backendRequest", err);
    if let (Some(rq), Some(b)) = (req, backend) {
        // 0 is "no timeout", which no backend timeout can exceed.
        if !rq.is_zero() && b > rq {
            err(
                format!("{at}.timeouts.backendRequest"),
                "backendRequest timeout cannot be longer than request timeout".into(),
            );
        }
    }
}
