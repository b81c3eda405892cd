//! HTTPRoute: its types as users write them, and the CRD's rules for the route as a whole.
use super::filters::{check_filters, check_match, check_retry};
use super::{
    cut, Validation, GROUP, MAX_BACKEND_REFS, MAX_HOSTNAMES, MAX_MATCHES_PER_RULE, MAX_MATCHES_TOTAL, MAX_PARENT_REFS,
    MAX_RULES, MAX_WEIGHT,
};
use crate::config::parse_duration;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Left out, the API server defaults it to one rule matching every path (see [`Self::rules`]).
    #[serde(default, rename = "rules")]
    pub rules_as_written: Option<Vec<HttpRouteRule>>,
    /// `metadata.creationTimestamp` (RFC 3339), the spec's first tie-breaker between routes.
    #[serde(skip)]
    pub created: Option<String>,
    /// Converted from a GRPCRoute (see [`GrpcRouteSpec::to_http`]): backends are spoken to over
    /// HTTP/2, and references and messages name a GRPCRoute.
    #[serde(skip)]
    pub grpc: bool,
}

impl HttpRouteSpec {
    /// The kind as written: `HTTPRoute`, or `GRPCRoute` for a converted one.
    pub fn kind(&self) -> &'static str {
        if self.grpc {
            "GRPCRoute"
        } else {
            "HTTPRoute"
        }
    }

    /// The rules with the API server's defaulting applied: no rules is one catch-all rule.
    pub fn rules(&self) -> std::borrow::Cow<'_, [HttpRouteRule]> {
        match &self.rules_as_written {
            Some(r) if !r.is_empty() => std::borrow::Cow::Borrowed(r),
            _ => std::borrow::Cow::Owned(vec![HttpRouteRule::default()]),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    /// Default `gateway.networking.k8s.io`; `""` (or `core`) with kind `Service` is a mesh parent.
    #[serde(default)]
    pub group: Option<String>,
    /// Default `Gateway`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
}

impl ParentReference {
    /// A GAMMA parent: a Service (core group).
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), Some("") | Some("core")) && self.kind.as_deref() == Some("Service")
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "matches")]
    pub matches_as_written: Option<Vec<HttpRouteMatch>>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// GEP-1731 (experimental channel; Istio reads it): retried status codes, attempts, backoff.
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
    /// Experimental channel (GEP-1619): accepted, not enforced.
    #[serde(default)]
    pub session_persistence: Option<serde_yaml::Value>,
}

impl HttpRouteRule {
    /// The matches with the API server's defaulting: none is one match of path prefix `/`.
    pub fn matches(&self) -> std::borrow::Cow<'_, [HttpRouteMatch]> {
        match &self.matches_as_written {
            Some(m) if !m.is_empty() => std::borrow::Cow::Borrowed(m),
            _ => std::borrow::Cow::Owned(vec![HttpRouteMatch::default()]),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// A converted GRPCRoute match: (service, method) characters, the GRPCRoute precedence keys
    /// that replace the path's.
    #[serde(skip)]
    pub grpc_rank: Option<(usize, usize)>,
    /// Left out: `PathPrefix /` (the CRD default).
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
    #[serde(default)]
    pub query_params: Vec<HttpHeaderMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// Default `PathPrefix`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Default `/`.
    #[serde(default)]
    pub value: Option<String>,
}

impl HttpPathMatch {
    /// (type, value) with the CRD defaults; None for a type validation rejects.
    pub fn resolved(&self) -> Option<(PathType, &str)> {
        let t = match self.kind.as_deref().unwrap_or("PathPrefix") {
            "Exact" => PathType::Exact,
            "PathPrefix" => PathType::PathPrefix,
            "RegularExpression" => PathType::RegularExpression,
            _ => return None,
        };
        Some((t, self.value.as_deref().unwrap_or("/")))
    }
}

/// A header or query parameter match (same shape): `type` Exact (default) or RegularExpression.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

impl HttpHeaderMatch {
    pub fn is_regex(&self) -> bool {
        self.kind.as_deref() == Some("RegularExpression")
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    pub extension_ref: Option<serde_yaml::Value>,
    #[serde(default)]
    pub cors: Option<serde_yaml::Value>,
    /// Experimental channel.
    #[serde(default)]
    pub external_auth: Option<serde_yaml::Value>,
}

/// `HTTPRequestMirrorFilter`: a copy of each request (or of `percent` / `fraction` of them) goes
/// to `backendRef`, fire and forget.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    #[serde(default)]
    pub backend_ref: BackendObjectReference,
    #[serde(default)]
    pub percent: Option<i64>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

impl RequestMirror {
    /// The share of requests mirrored, in percent: `percent`, else `fraction` (denominator
    /// default 100), else all of them. None for values validation rejects.
    pub fn percentage(&self) -> Option<f64> {
        match (self.percent, &self.fraction) {
            (Some(p), None) if (0..=100).contains(&p) => Some(p as f64),
            (None, Some(f)) => {
                let d = f.denominator.unwrap_or(100);
                (d >= 1 && (0..=d).contains(&f.numerator)).then(|| 100.0 * f.numerator as f64 / d as f64)
            }
            (None, None) => Some(100.0),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    #[serde(default)]
    pub numerator: i64,
    /// Default 100.
    #[serde(default)]
    pub denominator: Option<i64>,
}

/// A reference to a backend without weight or filters (a mirror's `backendRef`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
}

impl BackendObjectReference {
    /// As a weighted backendRef (weight 1, no filters), to resolve it the same way.
    pub fn as_backend_ref(&self) -> HttpBackendRef {
        HttpBackendRef {
            group: self.group.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            port: self.port,
            weight: None,
            filters: Vec::new(),
        }
    }
}

/// `HTTPRouteRetry` (GEP-1731).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// Status codes retried (400-599).
    #[serde(default)]
    pub codes: Vec<i64>,
    /// Retries after the first try; default (implementation-specific) 2, as Istio.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Minimum wait between tries (GEP-2257 duration).
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default)]
    pub port: Option<i64>,
    /// Default 302.
    #[serde(default)]
    pub status_code: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// What a path modifier does, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    Full(String),
    Prefix(String),
}

impl PathModifier {
    pub fn resolved(&self) -> Option<PathRewrite> {
        match self.kind.as_str() {
            "ReplaceFullPath" => self.replace_full_path.clone().map(PathRewrite::Full),
            "ReplacePrefixMatch" => self.replace_prefix_match.clone().map(PathRewrite::Prefix),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    /// Default `""` (core).
    #[serde(default)]
    pub group: Option<String>,
    /// Default `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    /// Default 1.
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

impl HttpBackendRef {
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), None | Some("") | Some("core"))
            && matches!(self.kind.as_deref(), None | Some("Service"))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

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

pub(super) fn header_name_ok(n: &str) -> bool {
    // RFC 7230 token, as the CRD's pattern `^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$`, at most 256.
    !n.is_empty() && n.len() <= 256 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 1123 host name, as the CRD's `PreciseHostname` (no wildcard) or `Hostname` (`*.` prefix allowed).
pub(super) fn hostname_ok(h: &str, wildcard: bool) -> bool {
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
pub(super) fn check_plain_path(v: &str) -> Result<(), String> {
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

/// Every rule of the HTTPRoute CRD that decides what traffic does (see the README's Gateway API
/// section for the ones not checked).
/// The CRD's rules for an HTTPRoute: parents, hostnames, then each rule.
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
