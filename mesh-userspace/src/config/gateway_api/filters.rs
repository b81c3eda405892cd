//! The CRD's rules for one HTTPRoute rule's matches, filters, retries and mirrors.
use super::http_route::{check_plain_path, header_name_ok, hostname_ok};
use super::{
    cut, parse_gep_duration, HeaderModifier, HttpRouteFilter, HttpRouteMatch, HttpRouteRetry, PathModifier, PathType,
    RequestMirror, RequestRedirect, UrlRewrite, MAX_FILTERS, MAX_HEADER_MATCHES, MAX_HEADER_OPS, MAX_HEADER_VALUE,
    MAX_PATH_VALUE, METHODS,
};

/// `HTTPRouteRetry`: codes 400-599, a set; attempts at least 1; backoff a GEP-2257 duration.
pub(super) fn check_retry(rt: &HttpRouteRetry, at: &str, err: &mut dyn FnMut(String, String)) {
    for (i, c) in rt.codes.iter().enumerate() {
        if !(400..=599).contains(c) {
            err(format!("{at}.codes[{i}]"), format!("{c} must be between 400 and 599"));
        } else if rt.codes[..i].contains(c) {
            err(format!("{at}.codes[{i}]"), format!("Duplicate value: {c}"));
        }
    }
    if let Some(a) = rt.attempts {
        if a < 1 {
            err(format!("{at}.attempts"), format!("{a} should be greater than or equal to 1"));
        }
    }
    if let Some(b) = &rt.backoff {
        if let Err(e) = parse_gep_duration(b) {
            err(format!("{at}.backoff"), e);
        }
    }
}

/// `HTTPRequestMirrorFilter`: a backendRef like a backendRef's (name, port for a Service),
/// `percent` 0-100 or `fraction` (numerator <= denominator, denominator >= 1), not both.
fn check_mirror(m: &RequestMirror, at: &str, err: &mut dyn FnMut(String, String)) {
    let b = &m.backend_ref;
    if b.name.is_empty() {
        err(format!("{at}.backendRef.name"), "name is required".into());
    }
    match b.port {
        None if b.as_backend_ref().is_service() => {
            err(format!("{at}.backendRef"), "Must have port for Service reference".into())
        }
        Some(p) if !(1..=65535).contains(&p) => {
            err(format!("{at}.backendRef.port"), format!("{p} is not a port number (1-65535)"))
        }
        _ => {}
    }
    if m.percent.is_some() && m.fraction.is_some() {
        err(at.into(), "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter".into());
    }
    if let Some(p) = m.percent {
        if !(0..=100).contains(&p) {
            err(format!("{at}.percent"), format!("{p} must be between 0 and 100"));
        }
    }
    if let Some(f) = &m.fraction {
        if f.numerator < 0 {
            err(format!("{at}.fraction.numerator"), format!("{} should be greater than or equal to 0", f.numerator));
        }
        match f.denominator {
            Some(d) if d < 1 => {
                err(format!("{at}.fraction.denominator"), format!("{d} should be greater than or equal to 1"))
            }
            d if f.numerator > d.unwrap_or(100) => {
                err(format!("{at}.fraction"), "numerator must be less than or equal to denominator".into())
            }
            _ => {}
        }
    }
}

pub(super) fn check_match(m: &HttpRouteMatch, at: &str, err: &mut dyn FnMut(String, String)) {
    if let Some(p) = &m.path {
        match p.resolved() {
            None => err(
                format!("{at}.path.type"),
                format!(
                    "Unsupported value {:?}: supported values: \"Exact\", \"PathPrefix\", \"RegularExpression\"",
                    cut(p.kind.as_deref().unwrap_or(""), 40)
                ),
            ),
            Some((_, v)) if v.len() > MAX_PATH_VALUE => {
                err(format!("{at}.path.value"), format!("must be at most {MAX_PATH_VALUE} characters"))
            }
            Some((PathType::RegularExpression, v)) => {
                if let Err(e) = regex::Regex::new(v) {
                    err(
                        format!("{at}.path.value"),
                        format!("invalid regular expression: {}", cut(&e.to_string(), 200)),
                    );
                }
            }
            Some((_, v)) => {
                if let Err(e) = check_plain_path(v) {
                    err(format!("{at}.path.value"), e);
                }
            }
        }
    }
    for (field, list, is_header) in [("headers", &m.headers, true), ("queryParams", &m.query_params, false)] {
        if list.len() > MAX_HEADER_MATCHES {
            err(format!("{at}.{field}"), format!("must have at most {MAX_HEADER_MATCHES} items"));
        }
        for (k, h) in list.iter().enumerate() {
            let hat = format!("{at}.{field}[{k}]");
            match h.kind.as_deref() {
                None | Some("Exact") => {}
                Some("RegularExpression") => {
                    if let Err(e) = regex::Regex::new(&h.value) {
                        err(
                            format!("{hat}.value"),
                            format!("invalid regular expression: {}", cut(&e.to_string(), 200)),
                        );
                    }
                }
                Some(o) => err(
                    format!("{hat}.type"),
                    format!("Unsupported value {:?}: supported values: \"Exact\", \"RegularExpression\"", cut(o, 40)),
                ),
            }
            let name_ok = if is_header { header_name_ok(&h.name) } else { !h.name.is_empty() && h.name.len() <= 256 };
            if !name_ok {
                err(format!("{hat}.name"), format!("{:?} is not a valid name", cut(&h.name, 60)));
            }
            if h.value.is_empty() || h.value.len() > MAX_HEADER_VALUE {
                err(format!("{hat}.value"), format!("must be 1 to {MAX_HEADER_VALUE} characters"));
            }
        }
    }
    if let Some(method) = &m.method {
        if !METHODS.contains(&method.as_str()) {
            err(
                format!("{at}.method"),
                format!("Unsupported value {:?}: supported values: {}", cut(method, 40), METHODS.join(", ")),
            );
        }
    }
}

/// The CRD's rules for a rule's `filters`: at most 16, no repeated kind, each well formed.
pub(super) fn check_filters(
    filters: &[HttpRouteFilter],
    at: &str,
    matches: &[HttpRouteMatch],
    err: &mut dyn FnMut(String, String),
    warns: &mut Vec<(String, String)>,
) {
    if filters.len() > MAX_FILTERS {
        err(format!("{at}.filters"), format!("must have at most {MAX_FILTERS} items"));
    }
    let count = |t: &str| filters.iter().filter(|f| f.kind == t).count();
    for t in ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "CORS"] {
        if count(t) > 1 {
            err(format!("{at}.filters"), format!("{t} filter cannot be repeated"));
        }
    }
    if count("RequestRedirect") > 0 && count("URLRewrite") > 0 {
        err(
            format!("{at}.filters"),
            "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both".into(),
        );
    }
    for (i, f) in filters.iter().enumerate() {
        check_filter(f, &format!("{at}.filters[{i}]"), matches, err, warns);
    }
}

/// One filter: a known `type` whose field, and only that one, is set and valid.
fn check_filter(
    f: &HttpRouteFilter,
    fat: &str,
    matches: &[HttpRouteMatch],
    err: &mut dyn FnMut(String, String),
    warns: &mut Vec<(String, String)>,
) {
    let fields: [(&str, &str, bool); 8] = [
        ("RequestHeaderModifier", "requestHeaderModifier", f.request_header_modifier.is_some()),
        ("ResponseHeaderModifier", "responseHeaderModifier", f.response_header_modifier.is_some()),
        ("RequestMirror", "requestMirror", f.request_mirror.is_some()),
        ("RequestRedirect", "requestRedirect", f.request_redirect.is_some()),
        ("URLRewrite", "urlRewrite", f.url_rewrite.is_some()),
        ("ExtensionRef", "extensionRef", f.extension_ref.is_some()),
        ("CORS", "cors", f.cors.is_some()),
        ("ExternalAuth", "externalAuth", f.external_auth.is_some()),
    ];
    if !fields.iter().any(|(t, _, _)| *t == f.kind) {
        err(
            format!("{fat}.type"),
            format!(
                "Unsupported value {:?}: supported values: {}",
                cut(&f.kind, 40),
                fields.iter().map(|(t, _, _)| format!("{t:?}")).collect::<Vec<_>>().join(", ")
            ),
        );
        return;
    }
    for (t, field, set) in fields {
        if set && t != f.kind {
            err(format!("{fat}.{field}"), format!("filter.{field} must be nil if the filter.type is not {t}"));
        }
        if !set && t == f.kind {
            err(fat.to_owned(), format!("filter.{field} must be specified for {t} filter.type"));
        }
    }
    for (field, m) in
        [("requestHeaderModifier", &f.request_header_modifier), ("responseHeaderModifier", &f.response_header_modifier)]
    {
        if let Some(m) = m {
            check_header_modifier(m, &format!("{fat}.{field}"), err);
        }
    }
    if let Some(r) = &f.request_redirect {
        check_redirect(r, &format!("{fat}.requestRedirect"), matches, err);
    }
    if let Some(u) = &f.url_rewrite {
        check_url_rewrite(u, &format!("{fat}.urlRewrite"), matches, err);
    }
    if let Some(m) = &f.request_mirror {
        check_mirror(m, &format!("{fat}.requestMirror"), err);
    }
    let not_enforced = match f.kind.as_str() {
        "ExtensionRef" => Some("ExtensionRef filters are implementation-specific; none is supported, so the rule answers 500 as the spec asks"),
        "CORS" => Some("the CORS filter is not enforced"),
        "ExternalAuth" => Some("the ExternalAuth filter is not enforced"),
        _ => None,
    };
    if let Some(w) = not_enforced {
        warns.push((fat.to_owned(), w.into()));
    }
}

/// `requestHeaderModifier` / `responseHeaderModifier`: at most 16 of each operation, valid
/// distinct names, values without CR, LF or NUL.
fn check_header_modifier(m: &HeaderModifier, mat: &str, err: &mut dyn FnMut(String, String)) {
    for (op, list) in [("set", &m.set), ("add", &m.add)] {
        if list.len() > MAX_HEADER_OPS {
            err(format!("{mat}.{op}"), format!("must have at most {MAX_HEADER_OPS} items"));
        }
        let mut seen = std::collections::HashSet::new();
        for (k, h) in list.iter().enumerate() {
            if !header_name_ok(&h.name) {
                err(format!("{mat}.{op}[{k}].name"), format!("{:?} is not a valid header name", cut(&h.name, 60)));
            } else if !seen.insert(h.name.to_ascii_lowercase()) {
                // listType=map keyed on name: the API server rejects a duplicate key.
                err(format!("{mat}.{op}[{k}].name"), format!("Duplicate value: {:?}", cut(&h.name, 60)));
            }
            if h.value.len() > MAX_HEADER_VALUE || h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                err(
                    format!("{mat}.{op}[{k}].value"),
                    format!("must be at most {MAX_HEADER_VALUE} characters with no CR, LF or NUL"),
                );
            }
        }
    }
    if m.remove.len() > MAX_HEADER_OPS {
        err(format!("{mat}.remove"), format!("must have at most {MAX_HEADER_OPS} items"));
    }
    for (k, n) in m.remove.iter().enumerate() {
        if !header_name_ok(n) {
            err(format!("{mat}.remove[{k}]"), format!("{:?} is not a valid header name", cut(n, 60)));
        }
    }
}

/// A redirect or rewrite's `path`: the type matching the field set, an absolute path, and for
/// ReplacePrefixMatch exactly one PathPrefix match.
fn check_path_mod(pm: &PathModifier, pat: String, matches: &[HttpRouteMatch], err: &mut dyn FnMut(String, String)) {
    match pm.kind.as_str() {
        "ReplaceFullPath" if pm.replace_full_path.is_none() => {
            err(pat.clone(), "replaceFullPath must be specified when type is set to 'ReplaceFullPath'".into())
        }
        "ReplacePrefixMatch" if pm.replace_prefix_match.is_none() => {
            err(pat.clone(), "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'".into())
        }
        "ReplaceFullPath" | "ReplacePrefixMatch" => {}
        o => err(
            format!("{pat}.type"),
            format!(
                "Unsupported value {:?}: supported values: \"ReplaceFullPath\", \"ReplacePrefixMatch\"",
                cut(o, 40)
            ),
        ),
    }
    if pm.replace_full_path.is_some() && pm.kind != "ReplaceFullPath" {
        err(pat.clone(), "type must be 'ReplaceFullPath' when replaceFullPath is set".into());
    }
    if pm.replace_prefix_match.is_some() && pm.kind != "ReplacePrefixMatch" {
        err(pat.clone(), "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set".into());
    }
    for (field, v) in [("replaceFullPath", &pm.replace_full_path), ("replacePrefixMatch", &pm.replace_prefix_match)] {
        if let Some(v) = v {
            if !v.starts_with('/')
                || v.len() > MAX_PATH_VALUE
                || v.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
            {
                err(format!("{pat}.{field}"), format!("{:?} must be an absolute path of at most {MAX_PATH_VALUE} characters, without a query or fragment", cut(v, 60)));
            }
        }
    }
    if pm.kind == "ReplacePrefixMatch" {
        // CEL: exactly one PathPrefix match, since the rewrite replaces what it matched.
        let prefix_only = matches.len() == 1
            && matches[0].path.as_ref().is_none_or(|p| p.resolved().is_some_and(|(t, _)| t == PathType::PathPrefix));
        if !prefix_only {
            err(
                pat,
                "When using a filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
                    .into(),
            );
        }
    }
}

/// `requestRedirect`: scheme, hostname, port, status code and path.
fn check_redirect(r: &RequestRedirect, rat: &str, matches: &[HttpRouteMatch], err: &mut dyn FnMut(String, String)) {
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            err(
                format!("{rat}.scheme"),
                format!("Unsupported value {:?}: supported values: \"http\", \"https\"", cut(s, 40)),
            );
        }
    }
    if let Some(h) = &r.hostname {
        if !hostname_ok(h, false) {
            err(
                format!("{rat}.hostname"),
                format!("{:?} is not a valid host name (RFC 1123, no wildcard)", cut(h, 60)),
            );
        }
    }
    if let Some(p) = r.port {
        if !(1..=65535).contains(&p) {
            err(format!("{rat}.port"), format!("{p} is not a port number (1-65535)"));
        }
    }
    if let Some(c) = r.status_code {
        if ![301, 302, 303, 307, 308].contains(&c) {
            err(
                format!("{rat}.statusCode"),
                format!("Unsupported value {c}: supported values: 301, 302, 303, 307, 308"),
            );
        }
    }
    if let Some(pm) = &r.path {
        check_path_mod(pm, format!("{rat}.path"), matches, err);
    }
}

/// `urlRewrite`: hostname and path.
fn check_url_rewrite(u: &UrlRewrite, uat: &str, matches: &[HttpRouteMatch], err: &mut dyn FnMut(String, String)) {
    if let Some(h) = &u.hostname {
        if !hostname_ok(h, false) {
            err(
                format!("{uat}.hostname"),
                format!("{:?} is not a valid host name (RFC 1123, no wildcard)", cut(h, 60)),
            );
        }
    }
    if let Some(pm) = &u.path {
        check_path_mod(pm, format!("{uat}.path"), matches, err);
    }
}
