//! Istio's validation of one object on its own, as its admission webhook and CRD rules decide:
//! `pkg/config/validation/validation.go`, `virtualservice.go` and `agent/validation.go` of
//! istio/istio (1.32-dev), and the schema/CEL rules of the v1 CRDs (`crd-all.gen.yaml`). What
//! Istio rejects is an error here, with Istio's reason; what Istio only warns about is a warning;
//! a field Istio accepts that the node proxy does not act on is accepted with a warning saying
//! so. Nothing here looks at other objects or the registry: references between objects are
//! checked when the route table is built, as warnings.
//!
//! Every user value echoed in a message goes through [`cut`], so a 10 MB value cannot make a
//! 10 MB error line.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use super::{
    check_istio_duration, cut, parse_duration, ClientTlsSettings, ConnectionPoolSettings, Destination,
    DestinationRuleSpec, GatewaySpec, Headers, HttpRoute, LoadBalancerSettings, LocalityLbSetting,
    OutlierDetectionSettings, Percent, RouteDestination, Server, ServerTlsSettings, Sourced, StringMatch,
    TrafficPolicy, VirtualServiceSpec,
};

/// Errors and warnings, each with the field path it is about.
#[derive(Debug, Default)]
pub struct Validation {
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

/// A user value in a message, quoted and cut.
fn q(s: &str) -> String {
    format!("{:?}", cut(s, 60))
}

impl Validation {
    pub(crate) fn error(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push((path.into(), msg.into()));
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.warnings.push((path.into(), msg.into()));
    }

    fn check(&mut self, path: impl Into<String>, r: Result<(), String>) {
        if let Err(e) = r {
            self.error(path, e);
        }
    }

    /// A field Istio accepts and the node proxy parses but does not act on.
    fn not_enforced(&mut self, path: impl Into<String>) {
        self.warn(path, "accepted as Istio does, but not enforced by the node proxy");
    }

    /// A duration field Istio checks with `agent.ValidateDuration` (and the CRD's CEL rule):
    /// at least 1 ms, whole milliseconds, and a value Go's `time.Duration` can hold.
    fn duration(&mut self, path: impl Into<String>, value: Option<&str>) -> Option<Duration> {
        let path = path.into();
        let d = match parse_duration(value?) {
            Ok(d) => d,
            Err(e) => {
                self.error(path, e);
                return None;
            }
        };
        if let Err(e) = check_istio_duration(d) {
            self.error(path, e);
            return None;
        }
        Some(d)
    }
}

// ---------------------------------------------------------------------------------------------
// Names and hosts (pkg/config/labels, agent.ValidateWildcardDomain / ValidateFQDN).

/// `labels.IsDNS1123Label`: `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63 (Istio's
/// pattern allows upper case).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `labels.IsWildcardDNS1123Label`: `*`, or a label optionally prefixed by `*` or `*-`.
fn is_wildcard_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    is_dns1123_label(rest)
}

fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {} too long (max 255)", q(name)));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or("");
    if tld.parse::<i64>().is_ok() {
        return Err(format!("domain name {} invalid (top level domain {} cannot be all-numeric)", q(domain), q(tld)));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is allowed.
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(label)));
        }
    }
    Ok(())
}

/// `agent.ValidateWildcardDomain`: an FQDN whose first label may be a wildcard.
pub fn wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(first)));
    }
    // Go reports the rest as a domain of its own ("*.com" for "foo.*.com"); naming the whole
    // host says more.
    rest.map_or(Ok(()), dns1123_labels).map_err(|e| match e.strip_prefix("domain name ") {
        Some(_) if rest != Some(domain) => format!("{e} in {}", q(domain)),
        _ => e,
    })
}

/// `agent.ValidateFQDN`.
fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// `agent.ValidateIPSubnet`: CIDR or a plain address.
fn ip_subnet(s: &str) -> Result<(), String> {
    if s.matches('/').count() == 1 {
        let ok = s.split_once('/').is_some_and(|(ip, bits)| match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32 && !bits.starts_with('+'),
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128 && !bits.starts_with('+'),
            _ => false,
        });
        return if ok { Ok(()) } else { Err(format!("{} is not a valid CIDR block", cut(s, 60))) };
    }
    ip_address(s)
}

fn ip_address(s: &str) -> Result<(), String> {
    if is_ip(s) {
        Ok(())
    } else {
        Err(format!("{} is not a valid IP", cut(s, 60)))
    }
}

/// `agent.ValidatePort`.
fn port(p: i64) -> Result<(), String> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("port number {p} must be in the range 1..65535"))
    }
}

/// Istio's `host.Name.Matches`: one host (or wildcard) covers the other.
fn hosts_match(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if a.len() < b.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`.
fn host_subset_of(n: &str, o: &str) -> bool {
    match (n.strip_prefix('*'), o.strip_prefix('*')) {
        (Some(sn), Some(so)) => sn.ends_with(so),
        (Some(_), None) => false,
        (None, Some(so)) => n.ends_with(so),
        (None, None) => n == o,
    }
}

/// Kubernetes qualified name: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `labels.Instance.Validate`: label keys and values as Kubernetes allows them.
fn labels(l: &BTreeMap<String, String>) -> Result<(), String> {
    let mut errs = Vec::new();
    for (k, v) in l {
        let key_ok = match k.split_once('/') {
            Some((prefix, name)) => {
                prefix.len() <= 253
                    && prefix.split('.').all(is_dns1123_label)
                    && is_qualified_name(name)
                    && name.len() <= 63
            }
            None => is_qualified_name(k) && k.len() <= 63,
        };
        if !key_ok {
            errs.push(format!("invalid tag key: {}", q(k)));
        }
        if !(v.is_empty() || is_qualified_name(v)) {
            errs.push(format!("invalid tag value: {}", q(v)));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// `validateExportTo` (not a ServiceEntry).
fn export_to(v: &mut Validation, namespace: &str, list: &[String], dr_with_selector: bool) {
    if list.is_empty() {
        return;
    }
    let mut set: Vec<&str> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        let key = if e == "." { namespace } else { e.as_str() };
        if set.contains(&key) {
            if key != e {
                v.error(path, format!("duplicate entries in exportTo: . and current namespace {}", cut(namespace, 60)));
            } else {
                v.error(path, format!("duplicate entries in exportTo for entry {}", cut(e, 60)));
            }
            continue;
        }
        match key {
            "*" => set.push(key),
            "~" => v.error(path, "exportTo ~ (none) is not allowed for Istio configuration objects"),
            _ if e == "." || is_dns1123_label(key) => set.push(key),
            _ => v.error(path, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"),
        }
    }
    if dr_with_selector && !set.is_empty() {
        if set.contains(&namespace) {
            if set.len() > 1 {
                v.error(
                    "spec.exportTo",
                    "destination rule with workload selector cannot have multiple entries in exportTo",
                );
            }
        } else {
            v.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        }
    }
    if set.contains(&"*") && list.len() > 1 {
        v.error("spec.exportTo", "cannot have both public (*) and non-public exportTo values for a resource");
    }
}

/// `checkDryRunAnnotation`: only an AuthorizationPolicy may carry `istio.io/dry-run`.
fn metadata<S>(v: &mut Validation, o: &Sourced<S>) {
    if o.annotations.contains_key("istio.io/dry-run") {
        v.error(
            "metadata.annotations",
            format!(
                "{}/{} has unsupported annotation istio.io/dry-run, please remove the annotation",
                o.namespace, o.name
            ),
        );
    }
}

/// `validateGatewayNames`: `mesh`, `name`, or `namespace/name` (Go returns after the first
/// name without a slash; so do we).
fn gateway_names(v: &mut Validation, base: &str, names: &[String]) {
    for (i, g) in names.iter().enumerate() {
        let path = format!("{base}[{i}]");
        match g.split_once('/') {
            None => {
                if g.contains('.') {
                    v.warn(
                        path.clone(),
                        format!("using legacy gatewayName format {}; prefer <namespace>/<name>", q(g)),
                    );
                }
                v.check(path, fqdn(g));
                return;
            }
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    v.error(path.clone(), "config namespace and gateway name cannot be empty");
                }
                if !is_dns1123_label(ns) {
                    v.error(path.clone(), format!("invalid value for namespace: {}", q(ns)));
                }
                if !is_dns1123_label(name) {
                    v.error(path, format!("invalid value for gateway name: {}", q(name)));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Headers and string matches.

/// RFC 7230 token characters, Istio's `validHeaderNameRegex`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// `jwt.ToRoutingClaim(name).Match`: `@request.auth.claims.x` or `@request.auth.claims[x]`.
pub fn is_jwt_claim(name: &str) -> bool {
    const P: &str = "@request.auth.claims";
    // Compared as bytes: slicing the str at P.len() could split a multi-byte character.
    if name.len() < P.len() || !name.as_bytes()[..P.len()].eq_ignore_ascii_case(P.as_bytes()) {
        return false;
    }
    // The first P.len() bytes are ASCII, so P.len() is a character boundary.
    let rest = &name[P.len()..];
    (rest.starts_with('.') && rest.len() > 1) || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// The pseudo headers a match may name.
pub const PSEUDO_HEADERS: &[&str] = &[":method", ":scheme", ":authority", ":path", ":status"];

fn match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim(name) || PSEUDO_HEADERS.contains(&name) || is_token(name) {
        return Ok(());
    }
    Err(format!("header name {} is not a valid header name", cut(name, 60)))
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// `ValidateHTTPHeaderWithAuthorityOperationName`: request add/set.
fn header_name_with_authority(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.starts_with(':') && !is_authority_header(name) {
        return Err(format!("invalid header {}: header cannot have \":\" prefix", q(name)));
    }
    Ok(())
}

/// `ValidateHTTPHeaderOperationName`: request remove and every response operation.
fn header_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {}: cannot set Host header", q(name)));
    }
    if name.starts_with(':') {
        return Err(format!("invalid header {}: header cannot have \":\" prefix", q(name)));
    }
    Ok(())
}

/// `ValidateHTTPHeaderValue`: no control characters, and `%` only as `%%` or around an Envoy
/// `%COMMAND%` / `%COMMAND(args)%` (header_value_validator.go, state for state).
pub fn header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|c| (c <= 0x08) || (0x0a..=0x1f).contains(&c) || c == 0x7f) {
        return Err(format!("header value configuration {} is invalid", q(value)));
    }
    #[derive(PartialEq)]
    enum S {
        Literal,
        VarName,
        ExpectArray,
        ExpectString,
        Str,
        DelimOrEnd,
        ArgsEnd,
        VarEnd,
    }
    let b = value.as_bytes();
    let mut state = S::Literal;
    let mut pos = 0;
    let err = |m: &str| Err(format!("header value configuration: invalid header configuration. {m}"));
    while pos < b.len() {
        let ch = b[pos];
        let has_next = pos + 1 < b.len();
        match state {
            S::Literal => {
                if ch == b'%' {
                    if !has_next {
                        return err("Un-escaped %");
                    }
                    if b[pos + 1] == b'%' {
                        pos += 1;
                    } else {
                        state = S::VarName;
                    }
                }
            }
            S::VarName => {
                if ch == b'%' {
                    state = S::Literal;
                } else if ch == b'(' {
                    state = S::ExpectArray;
                }
            }
            S::ExpectArray => {
                if ch == b'[' {
                    state = S::ExpectString;
                } else if ch != b' ' {
                    state = S::Str;
                }
            }
            S::DelimOrEnd => {
                if ch == b',' {
                    state = S::ExpectString;
                } else if ch == b']' {
                    state = S::ArgsEnd;
                } else if ch != b' ' {
                    return err("Expecting ',', ']', or whitespace");
                }
            }
            S::ExpectString => {
                if ch == b'"' {
                    state = S::Str;
                } else if ch != b' ' {
                    return err("Expecting '\"'");
                }
            }
            S::Str => {
                if ch == b'\\' {
                    if !has_next {
                        return err("Un-terminated backslash in JSON string");
                    }
                    pos += 1;
                } else if ch == b')' {
                    state = S::VarEnd;
                } else if ch == b'"' {
                    state = S::DelimOrEnd;
                }
            }
            S::ArgsEnd => {
                if ch == b')' {
                    state = S::VarEnd;
                } else if ch != b' ' {
                    return err("Expecting ')' or whitespace");
                }
            }
            S::VarEnd => {
                if ch == b'%' {
                    state = S::Literal;
                } else if ch != b' ' {
                    return err("Expecting '%' or whitespace after");
                }
            }
        }
        pos += 1;
    }
    if state != S::Literal {
        return Err(format!(
            "header value configuration: invalid header configuration. Un-terminated variable expression {}",
            q(value)
        ));
    }
    Ok(())
}

fn header_operations(v: &mut Validation, base: &str, h: &Headers) {
    if let Some(r) = &h.request {
        for (which, map) in [("add", &r.add), ("set", &r.set)] {
            for (name, val) in map {
                let p = format!("{base}.request.{which}.{name}");
                v.check(p.clone(), header_name_with_authority(name));
                v.check(p, header_value(val));
            }
        }
        for (i, name) in r.remove.iter().enumerate() {
            v.check(format!("{base}.request.remove[{i}]"), header_operation_name(name));
        }
    }
    if let Some(r) = &h.response {
        for (which, map) in [("add", &r.add), ("set", &r.set)] {
            for (name, val) in map {
                let p = format!("{base}.response.{which}.{name}");
                v.check(p.clone(), header_operation_name(name));
                v.check(p, header_value(val));
            }
        }
        for (i, name) in r.remove.iter().enumerate() {
            v.check(format!("{base}.response.remove[{i}]"), header_operation_name(name));
        }
    }
}

/// The CRD's oneOf on StringMatch: at most one of exact, prefix, regex.
fn string_match_one_of(sm: &StringMatch) -> Result<(), String> {
    let n = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()].iter().filter(|b| **b).count();
    if n > 1 {
        return Err("must validate one and only one schema (oneOf): set only one of exact, prefix, regex".into());
    }
    Ok(())
}

/// `validateStringRegexp`: at most 1024 bytes, RE2 syntax.
fn regex_syntax(re: &str, where_: &str) -> Result<(), String> {
    if re.len() > 1024 {
        return Err(format!("{where_:?}: regex is too large, max length allowed is 1024"));
    }
    // The regex crate's syntax is RE2's (no look-around, no backreferences).
    match regex::Regex::new(re) {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = e.to_string();
            let last = e.lines().last().unwrap_or("").trim();
            Err(format!(
                "{where_:?}: error parsing regexp: {}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)",
                cut(last, 80)
            ))
        }
    }
}

/// `validateStringMatchRegexp`.
fn string_match_regexp(sm: &StringMatch, where_: &str) -> Result<(), String> {
    string_match_one_of(sm)?;
    match &sm.regex {
        None => Ok(()),
        Some(r) if r.is_empty() => Err(format!("{where_:?}: regex string match should not be empty")),
        Some(r) => regex_syntax(r, where_),
    }
}

/// `validateStringMatch`: also no empty prefix.
fn string_match(sm: &StringMatch, where_: &str) -> Result<(), String> {
    string_match_one_of(sm)?;
    if sm.prefix.as_deref() == Some("") {
        return Err(format!("{where_:?}: prefix string match should not be empty"));
    }
    string_match_regexp(sm, where_)
}

fn percentage(p: &Option<Percent>) -> Result<(), String> {
    match p {
        Some(p) if !(0.0..=100.0).contains(&p.value) || (p.value > 0.0 && p.value < 0.0001) => {
            Err(format!("percentage {} is neither 0.0, nor in range [0.0001, 100.0]", p.value))
        }
        _ => Ok(()),
    }
}

/// `validateHTTPStatus`: Istio's range is 200..=600 (its message says 200-599).
fn http_status(s: i64) -> Result<(), String> {
    if (200..=600).contains(&s) {
        Ok(())
    } else {
        Err(format!("HTTP status {s} is not in range 200-599"))
    }
}

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

/// An int32 field of the CRD given a larger number.
fn int32(v: &mut Validation, path: String, n: Option<i64>) {
    if let Some(n) = n {
        if i32::try_from(n).is_err() {
            v.error(path, format!("{n} is out of range for int32"));
        }
    }
}

/// The CRD enums: the API server answers `Unsupported value`.
fn enum_value(v: &mut Validation, path: String, value: Option<&str>, allowed: &[&str]) {
    if let Some(x) = value {
        if !allowed.contains(&x) {
            let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
            v.error(path, format!("Unsupported value: {}: supported values: {list}", q(x)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService.

pub fn virtual_service(vs: &Sourced<VirtualServiceSpec>) -> Validation {
    let mut v = Validation::default();
    metadata(&mut v, vs);
    let spec = &vs.spec;
    let has_mesh = spec.gateways.iter().any(|g| g == "mesh");
    // Istio's isGateway: no `mesh` among the gateways (true also when there are none).
    let is_gateway = !has_mesh;
    let applies_to_gateway = !spec.gateways.is_empty() && !has_mesh;
    let applies_to_mesh = !applies_to_gateway;
    if spec.hosts.is_empty() {
        // A delegate VirtualService (Istio validates it only through its root).
        if !spec.gateways.is_empty() {
            v.error("spec.gateways", "delegate virtual service must have no gateways specified");
        }
        if !spec.tls.is_empty() {
            v.error("spec.tls", "delegate virtual service must have no tls route specified");
        }
        if !spec.tcp.is_empty() {
            v.error("spec.tcp", "delegate virtual service must have no tcp route specified");
        }
        v.warn("spec.hosts", "a VirtualService without hosts is a delegate; delegation is not supported by the node proxy, so it routes nothing");
    }
    if !spec.gateways.is_empty() {
        gateway_names(&mut v, "spec.gateways", &spec.gateways);
    }
    if !applies_to_gateway {
        for (i, r) in spec.http.iter().enumerate() {
            for (j, m) in r.matches.iter().enumerate() {
                for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
                    for name in map.keys().filter(|n| is_jwt_claim(n)) {
                        v.error(
                            format!("spec.http[{i}].match[{j}].{field}.{name}"),
                            format!(
                                "JWT claim based routing (key: {}) is only supported for gateway, found no gateways: {:?}",
                                cut(name, 60),
                                spec.gateways
                            ),
                        );
                    }
                }
            }
        }
    }
    let sni = spec.tls.iter().any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, h) in spec.hosts.iter().enumerate() {
        let r = if applies_to_gateway { gateway_bound_domain(sni, h) } else { wildcard_domain(h) };
        match r {
            Err(e) if !is_ip(h) => {
                v.error(format!("spec.hosts[{i}]"), e);
                all_hosts_valid = false;
            }
            Err(_) => {}
            Ok(()) if applies_to_mesh && h == "*" => {
                v.error(
                    format!("spec.hosts[{i}]"),
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            Ok(()) => {}
        }
    }
    if all_hosts_valid {
        for i in 0..spec.hosts.len() {
            for j in i + 1..spec.hosts.len() {
                if hosts_match(&spec.hosts[i], &spec.hosts[j]) {
                    v.error(
                        format!("spec.hosts[{j}]"),
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            cut(&spec.hosts[i], 60),
                            cut(&spec.hosts[j], 60)
                        ),
                    );
                }
            }
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        v.error("spec", "http, tcp or tls must be provided in virtual service");
    }
    for (i, r) in spec.http.iter().enumerate() {
        http_route(&mut v, &format!("spec.http[{i}]"), r, spec.hosts.is_empty());
    }
    for (i, t) in spec.tls.iter().enumerate() {
        let base = format!("spec.tls[{i}]");
        if t.matches.is_empty() {
            v.error(base.clone(), "TLS route must have at least one match condition");
        }
        for (j, m) in t.matches.iter().enumerate() {
            let mp = format!("{base}.match[{j}]");
            if m.sni_hosts.is_empty() {
                v.error(mp.clone(), "TLS match must have at least one SNI host");
            }
            for (k, h) in m.sni_hosts.iter().enumerate() {
                sni_host(&mut v, format!("{mp}.sniHosts[{k}]"), h, is_gateway, &spec.hosts);
            }
            for (k, s) in m.destination_subnets.iter().enumerate() {
                v.check(format!("{mp}.destinationSubnets[{k}]"), ip_subnet(s));
            }
            if let Some(p) = m.port.filter(|p| *p != 0) {
                v.check(format!("{mp}.port"), port(i64::from(p)));
            }
            v.check(format!("{mp}.sourceLabels"), labels(&m.source_labels));
            gateway_names(&mut v, &format!("{mp}.gateways"), &m.gateways);
        }
        if t.route.is_empty() {
            v.error(base.clone(), "TLS route is required");
        }
        route_destinations(&mut v, &format!("{base}.route"), &t.route);
    }
    if !spec.tls.is_empty() {
        v.warn("spec.tls", "tls routes are accepted as Istio does, but not served by the node proxy");
    }
    for (i, t) in spec.tcp.iter().enumerate() {
        let base = format!("spec.tcp[{i}]");
        for (j, m) in t.matches.iter().enumerate() {
            let mp = format!("{base}.match[{j}]");
            for (k, s) in m.destination_subnets.iter().enumerate() {
                v.check(format!("{mp}.destinationSubnets[{k}]"), ip_subnet(s));
            }
            if !m.destination_subnets.is_empty() || m.source_subnet.is_some() {
                v.not_enforced(format!("{mp}.destinationSubnets"));
            }
            if let Some(p) = m.port.filter(|p| *p != 0) {
                v.check(format!("{mp}.port"), port(i64::from(p)));
            }
            v.check(format!("{mp}.sourceLabels"), labels(&m.source_labels));
            gateway_names(&mut v, &format!("{mp}.gateways"), &m.gateways);
        }
        if t.route.is_empty() {
            v.error(base.clone(), "TCP route is required");
        }
        route_destinations(&mut v, &format!("{base}.route"), &t.route);
    }
    export_to(&mut v, &vs.namespace, &spec.export_to, false);
    v
}

/// `agent.ValidateWildcardDomainForVirtualServiceBoundToGateway`: also the `outbound_.<port>_._.<host>`
/// SNI names of AUTO_PASSTHROUGH.
fn gateway_bound_domain(sni: bool, domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    if sni && domain.starts_with("outbound_") {
        let parts: Vec<&str> = domain.split('_').collect();
        if parts.len() < 4 {
            return Err(format!(
                "domain name {} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format",
                q(domain)
            ));
        }
        let port = parts[1].trim_matches('.');
        let host = parts[3].trim_matches('.');
        if parts[0] != "outbound" {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(parts[0])));
        }
        if !port.bytes().any(|c| c.is_ascii_digit()) {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(port)));
        }
        if !host.bytes().any(|c| c.is_ascii_alphabetic()) {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(host)));
        }
        return Ok(());
    }
    wildcard_domain(domain)
}

fn sni_host(v: &mut Validation, path: String, h: &str, is_gateway: bool, hosts: &[String]) {
    let r = if is_gateway { gateway_bound_domain(true, h) } else { wildcard_domain(h) };
    if let Err(e) = r {
        if is_ip(h) {
            v.warn(
                path,
                format!("using an IP address ({}) goes against SNI spec and most clients do not support this", q(h)),
            );
        } else {
            v.error(path, e);
        }
        return;
    }
    if hosts.iter().any(|o| host_subset_of(h, o)) {
        return;
    }
    v.error(
        path,
        format!(
            "SNI host {} is not a compatible subset of any of the virtual service hosts: [{}]",
            q(h),
            cut(&hosts.join(", "), 200)
        ),
    );
}

/// `validateDestination`.
fn destination(v: &mut Validation, base: &str, d: &Destination) {
    if d.left_out {
        // Left out entirely (serde fills in an empty one).
        v.error(base.to_owned(), "destination is required");
        return;
    }
    if d.host == "*" {
        v.error(format!("{base}.host"), "invalid destination host *");
    } else {
        v.check(format!("{base}.host"), wildcard_domain(&d.host));
    }
    if let Some(s) = d.subset.as_deref().filter(|s| !s.is_empty()) {
        v.check(format!("{base}.subset"), subset_name(s));
    }
    if let Some(p) = &d.port {
        v.check(format!("{base}.port.number"), port(i64::from(p.number)));
    }
}

fn subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {}", cut(name, 60)));
    }
    Ok(())
}

fn weight(v: &mut Validation, path: String, w: Option<i64>, total: &mut i64) {
    let w = w.unwrap_or(0);
    if w < 0 {
        v.error(path, format!("weight {w} < 0"));
    } else if i32::try_from(w).is_err() {
        v.error(path, format!("weight {w} is out of range for int32"));
    } else {
        *total = total.saturating_add(w);
    }
}

/// `validateRouteDestinations` (tcp and tls).
fn route_destinations(v: &mut Validation, base: &str, dests: &[RouteDestination]) {
    let mut total = 0i64;
    for (i, d) in dests.iter().enumerate() {
        destination(v, &format!("{base}[{i}].destination"), &d.destination);
        weight(v, format!("{base}[{i}].weight"), d.weight, &mut total);
    }
    if dests.len() > 1 && total == 0 {
        v.error(format!("{base}[0].weight"), "total destination weight = 0");
    }
}

fn http_route(v: &mut Validation, base: &str, r: &HttpRoute, delegate: bool) {
    // validateHTTPRouteConflict
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

    // validateHTTPRouteMatchRequest
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{base}.match[{j}]");
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

    if let Some(h) = &r.headers {
        header_operations(v, &format!("{base}.headers"), h);
    }

    if let Some(c) = &r.cors_policy {
        let cp = format!("{base}.corsPolicy");
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
        v.not_enforced(cp);
    }

    // validateHTTPFaultInjection
    if let Some(f) = &r.fault {
        let fp = format!("{base}.fault");
        if f.abort.is_none() && f.delay.is_none() {
            v.error(fp.clone(), "HTTP fault injection must have an abort and/or a delay");
        }
        if let Some(a) = &f.abort {
            let ap = format!("{fp}.abort");
            v.check(format!("{ap}.percentage.value"), percentage(&a.percentage));
            let set = [a.http_status.is_some(), a.grpc_status.is_some(), a.http2_error.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if set > 1 {
                v.error(
                    ap.clone(),
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
                v.warn(ap, "abort configured, but error type not set");
            }
        }
        if let Some(d) = &f.delay {
            let dp = format!("{fp}.delay");
            v.check(format!("{dp}.percentage.value"), percentage(&d.percentage));
            int32(v, format!("{dp}.percent"), d.percent);
            match (&d.fixed_delay, &d.exponential_delay) {
                (Some(_), Some(_)) => v.error(
                    dp.clone(),
                    "must validate one and only one schema (oneOf): set only one of fixedDelay, exponentialDelay",
                ),
                (Some(fd), None) => {
                    v.duration(format!("{dp}.fixedDelay"), Some(fd));
                }
                (None, Some(ed)) => {
                    v.duration(format!("{dp}.exponentialDelay"), Some(ed));
                    v.error(format!("{dp}.exponentialDelay"), "exponentialDelay not supported yet");
                }
                (None, None) => v.warn(dp.clone(), "delay configured without fixedDelay: nothing is delayed"),
            }
        }
    }

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

    // validateHTTPRedirect
    if let Some(rd) = &r.redirect {
        let rp = format!("{base}.redirect");
        let uri = rd.uri.as_deref().unwrap_or("");
        let prefix_rewrite = rd.prefix_rewrite.as_deref().unwrap_or("");
        let err = if !uri.is_empty() && !prefix_rewrite.is_empty() {
            Some("redirect may only specify one of uri or prefix_rewrite".to_owned())
        } else if !prefix_rewrite.is_empty()
            && r.matches.iter().any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
        {
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
            v.error(rp.clone(), e);
        }
        if rd.port.is_some() && rd.derive_port.is_some() {
            v.error(rp.clone(), "must validate one and only one schema (oneOf): set only one of port, derivePort");
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

    // validateHTTPDirectResponse
    if let Some(d) = &r.direct_response {
        let dp = format!("{base}.directResponse");
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

    // agent.ValidateHTTPRetry
    if let Some(rt) = &r.retries {
        let rp = format!("{base}.retries");
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
            v.error(rp.clone(), "http retry policy configured when attempts are set to 0 (disabled)");
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

    // validateHTTPRewrite
    if let Some(rw) = &r.rewrite {
        let wp = format!("{base}.rewrite");
        let uri = rw.uri.as_deref().unwrap_or("");
        if !uri.is_empty() && rw.uri_regex_rewrite.is_some() {
            v.error(wp, "rewrite may only contain one of URI or UriRegexRewrite");
        } else if uri.is_empty() && rw.uri_regex_rewrite.is_none() && rw.authority.as_deref().unwrap_or("").is_empty() {
            v.error(
                wp,
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

    // validateAuthorityRewrite: one authority, whether from rewrite or a header.
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

    // validateHTTPRouteDestinations
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
    v.duration(format!("{base}.timeout"), r.timeout.as_deref());
}

// ---------------------------------------------------------------------------------------------
// DestinationRule.

pub fn destination_rule(dr: &Sourced<DestinationRuleSpec>) -> Validation {
    let mut v = Validation::default();
    metadata(&mut v, dr);
    let spec = &dr.spec;
    v.check("spec.host", wildcard_domain(&spec.host));
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(&mut v, "spec.trafficPolicy", tp, &dr.namespace);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let sp = format!("spec.subsets[{i}]");
        if !seen.insert(s.name.as_str()) {
            v.error(format!("{sp}.name"), format!("duplicate subset names: {}", cut(&s.name, 60)));
        }
        v.check(format!("{sp}.name"), subset_name(&s.name));
        v.check(format!("{sp}.labels"), labels(&s.labels));
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&mut v, &format!("{sp}.trafficPolicy"), tp, &dr.namespace);
        }
    }
    export_to(&mut v, &dr.namespace, &spec.export_to, spec.workload_selector.is_some());
    if let Some(ws) = &spec.workload_selector {
        for (k, val) in &ws.match_labels {
            let p = format!("spec.workloadSelector.matchLabels.{k}");
            if k.is_empty() {
                v.error(p.clone(), "key must not be empty");
            }
            if k.contains('*') {
                v.error(p.clone(), "wildcard not allowed in label key match");
            }
            if val.contains('*') {
                v.error(p.clone(), "wildcard not allowed in label value match");
            }
            if val.len() > 63 {
                v.error(p, "Too long: may not be more than 63 bytes");
            }
        }
        v.not_enforced("spec.workloadSelector");
    }
    v
}

fn traffic_policy(v: &mut Validation, base: &str, tp: &TrafficPolicy, namespace: &str) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        v.error(base.to_owned(), "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        v.error(base.to_owned(), "tunnel and proxyProtocol must not be set together");
        return;
    }
    if let Some(o) = &tp.outlier_detection {
        outlier_detection(v, &format!("{base}.outlierDetection"), o);
    }
    if let Some(c) = &tp.connection_pool {
        connection_pool(v, &format!("{base}.connectionPool"), c);
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(v, &format!("{base}.loadBalancer"), lb, tp.outlier_detection.is_some());
    }
    if let Some(t) = &tp.tls {
        client_tls(v, &format!("{base}.tls"), t, namespace);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{base}.portLevelSettings[{i}]");
        match &pl.port {
            None => v.error(pp.clone(), "portTrafficPolicy must have valid port"),
            Some(p) => v.check(format!("{pp}.port.number"), port(i64::from(p.number))),
        }
        if pl.outlier_detection.is_none()
            && pl.connection_pool.is_none()
            && pl.load_balancer.is_none()
            && pl.tls.is_none()
        {
            v.error(pp, "port traffic policy must have at least one field");
            continue;
        }
        if let Some(o) = &pl.outlier_detection {
            outlier_detection(v, &format!("{pp}.outlierDetection"), o);
        }
        if let Some(c) = &pl.connection_pool {
            connection_pool(v, &format!("{pp}.connectionPool"), c);
        }
        if let Some(lb) = &pl.load_balancer {
            load_balancer(v, &format!("{pp}.loadBalancer"), lb, pl.outlier_detection.is_some());
        }
        if let Some(t) = &pl.tls {
            client_tls(v, &format!("{pp}.tls"), t, namespace);
        }
    }
    if let Some(t) = &tp.tunnel {
        let tp_ = format!("{base}.tunnel");
        if let Some(p) = t.protocol.as_deref().filter(|p| !p.is_empty()) {
            if p != "CONNECT" && p != "POST" {
                v.error(format!("{tp_}.protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"");
            }
        }
        if let (Err(f), Err(i)) = (fqdn(&t.target_host), ip_address(&t.target_host)) {
            v.error(
                format!("{tp_}.targetHost"),
                format!("tunnel target host must be valid FQDN or IP address: {f}; {i}"),
            );
        }
        if let Err(e) = port(i64::from(t.target_port)) {
            v.error(format!("{tp_}.targetPort"), format!("tunnel target port is invalid: {e}"));
        }
        v.not_enforced(tp_);
    }
    if let Some(pp) = &tp.proxy_protocol {
        enum_value(v, format!("{base}.proxyProtocol.version"), pp.version.as_deref(), &["V1", "V2"]);
        v.not_enforced(format!("{base}.proxyProtocol"));
    }
    if let Some(rb) = &tp.retry_budget {
        let rp = format!("{base}.retryBudget");
        if let Some(p) = rb.percent {
            if !(0.0..=100.0).contains(&p) {
                v.error(format!("{rp}.percent"), format!("percentage {p} is not in range 0..100"));
            }
        }
        v.duration(format!("{rp}.budgetInterval"), rb.budget_interval.as_deref());
        v.not_enforced(rp);
    }
}

fn percent_0_100(v: &mut Validation, path: String, p: Option<i64>) {
    if let Some(p) = p {
        if !(0..=100).contains(&p) {
            v.error(path, format!("percentage {p} is not in range 0..100"));
        }
    }
}

fn outlier_detection(v: &mut Validation, base: &str, o: &OutlierDetectionSettings) {
    v.duration(format!("{base}.baseEjectionTime"), o.base_ejection_time.as_deref());
    if o.consecutive_errors.is_some_and(|n| n != 0) {
        v.warn(
            format!("{base}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if o.split_external_local_origin_errors != Some(true) && o.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        v.error(
            format!("{base}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    v.duration(format!("{base}.interval"), o.interval.as_deref());
    percent_0_100(v, format!("{base}.maxEjectionPercent"), o.max_ejection_percent);
    percent_0_100(v, format!("{base}.minHealthPercent"), o.min_health_percent);
    for (i, c) in o.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            v.error(
                format!("{base}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{c} is not an HTTP status (100..599)"),
            );
        }
    }
    for (field, set) in [
        ("consecutiveLocalOriginFailures", o.consecutive_local_origin_failures.is_some()),
        ("minHealthPercent", o.min_health_percent.is_some()),
        ("outlierDetectionHttpErrorCodes", !o.outlier_detection_http_error_codes.is_empty()),
    ] {
        if set {
            v.not_enforced(format!("{base}.{field}"));
        }
    }
}

fn connection_pool(v: &mut Validation, base: &str, c: &ConnectionPoolSettings) {
    if c.http.is_none() && c.tcp.is_none() {
        v.error(base.to_owned(), "connection pool must have at least one field");
        return;
    }
    if let Some(h) = &c.http {
        let hp = format!("{base}.http");
        for (field, n, msg) in [
            (
                "http1MaxPendingRequests",
                h.http1_max_pending_requests,
                "http1 max pending requests must be non-negative",
            ),
            ("http2MaxRequests", h.http2_max_requests, "http2 max requests must be non-negative"),
            (
                "maxRequestsPerConnection",
                h.max_requests_per_connection,
                "max requests per connection must be non-negative",
            ),
            ("maxRetries", h.max_retries, "max retries must be non-negative"),
            ("maxConcurrentStreams", h.max_concurrent_streams, "max concurrent streams must be non-negative"),
        ] {
            match n {
                Some(n) if n < 0 => v.error(format!("{hp}.{field}"), msg),
                n => int32(v, format!("{hp}.{field}"), n),
            }
        }
        v.duration(format!("{hp}.idleTimeout"), h.idle_timeout.as_deref());
        // h2UpgradePolicy's enum is checked when the route table is compiled (policy.rs), with
        // the same path and the values it accepts.
        if h.h2_upgrade_policy.as_deref() == Some("UPGRADE") && h.use_client_protocol == Some(true) {
            v.error(
                format!("{hp}.useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(k) = &h.http2_keep_alive {
            let kp = format!("{hp}.http2KeepAlive");
            if k.interval.is_none() {
                v.error(kp.clone(), "http2 keepalive interval is required");
            }
            v.duration(format!("{kp}.interval"), k.interval.as_deref());
            if k.timeout.is_none() {
                v.error(kp.clone(), "http2 keepalive timeout is required");
            }
            v.duration(format!("{kp}.timeout"), k.timeout.as_deref());
            v.not_enforced(kp);
        }
        if h.max_concurrent_streams.is_some() {
            v.not_enforced(format!("{hp}.maxConcurrentStreams"));
        }
    }
    if let Some(t) = &c.tcp {
        let tp = format!("{base}.tcp");
        match t.max_connections {
            Some(n) if n < 0 => v.error(format!("{tp}.maxConnections"), "max connections must be non-negative"),
            n => int32(v, format!("{tp}.maxConnections"), n),
        }
        v.duration(format!("{tp}.connectTimeout"), t.connect_timeout.as_deref());
        v.duration(format!("{tp}.maxConnectionDuration"), t.max_connection_duration.as_deref());
        if let Some(it) = t.idle_timeout.as_deref() {
            // Whole milliseconds of 0 disable the timeout and are not checked further (Istio).
            match parse_duration(it) {
                Ok(d) if d.as_millis() == 0 => {}
                _ => {
                    v.duration(format!("{tp}.idleTimeout"), Some(it));
                }
            }
        }
        if let Some(k) = &t.tcp_keepalive {
            v.duration(format!("{tp}.tcpKeepalive.time"), k.time.as_deref());
            v.duration(format!("{tp}.tcpKeepalive.interval"), k.interval.as_deref());
            v.not_enforced(format!("{tp}.tcpKeepalive"));
        }
        for (field, set) in
            [("maxConnectionDuration", t.max_connection_duration.is_some()), ("idleTimeout", t.idle_timeout.is_some())]
        {
            if set {
                v.not_enforced(format!("{tp}.{field}"));
            }
        }
    }
}

fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

fn load_balancer(v: &mut Validation, base: &str, lb: &LoadBalancerSettings, has_outlier: bool) {
    let policies = [lb.simple.is_some(), lb.consistent_hash.is_some(), lb.backend_utilization.is_some()];
    if policies.iter().filter(|b| **b).count() > 1 {
        v.error(
            base.to_owned(),
            "must validate one and only one schema (oneOf): set only one of simple, consistentHash, backendUtilization",
        );
    }
    enum_value(
        v,
        format!("{base}.simple"),
        lb.simple.as_deref(),
        &["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"],
    );
    if lb.backend_utilization.is_some() {
        v.not_enforced(format!("{base}.backendUtilization"));
    }
    if let Some(ch) = &lb.consistent_hash {
        let cp = format!("{base}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|b| **b).count() > 1 {
            v.error(
                cp.clone(),
                "must validate one and only one schema (oneOf): set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            v.error(cp.clone(), "must validate one and only one schema (oneOf): set only one of ringHash, maglev");
        }
        if let Some(c) = &ch.http_cookie {
            let kp = format!("{cp}.httpCookie");
            if c.name.is_empty() {
                v.error(format!("{kp}.name"), "name required for HttpCookie");
            }
            let mut names = std::collections::HashSet::new();
            for (i, a) in c.attributes.iter().enumerate() {
                if a.name.is_empty() {
                    v.error(format!("{kp}.attributes[{i}].name"), "cookie attribute name cannot be empty");
                } else if !names.insert(a.name.as_str()) {
                    v.error(
                        format!("{kp}.attributes[{i}].name"),
                        format!("duplicate cookie attribute name: {}", cut(&a.name, 60)),
                    );
                }
            }
            if let Some(ttl) = c.ttl.as_deref() {
                if let Err(e) = parse_duration(ttl) {
                    v.error(format!("{kp}.ttl"), e);
                }
            }
            if c.path.is_some() || !c.attributes.is_empty() {
                v.not_enforced(format!("{kp}.attributes"));
            }
        }
        if ch.minimum_ring_size.is_some_and(|n| n != 0) {
            v.warn(
                format!("{cp}.minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                v.error(
                    format!("{cp}.minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(m) = &ch.maglev {
            let mp = format!("{cp}.maglev.tableSize");
            if m.table_size == 0 {
                v.error(mp.clone(), "tableSize must be set for maglev");
            }
            if m.table_size >= 5_000_011 {
                v.error(mp.clone(), "tableSize must be less than 5000011 for maglev");
            }
            if !is_prime(m.table_size) {
                v.error(mp, "tableSize must be a prime number for maglev");
            }
        }
        if ch.http_header_name.is_none()
            && ch.http_cookie.is_none()
            && ch.use_source_ip.is_none()
            && ch.http_query_parameter_name.is_none()
        {
            v.warn(cp, "consistentHash without a hash key: requests are spread at random");
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        v.error(base.to_owned(), "only one of localityLbSetting and zoneAwareLbSetting can be set");
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb(v, &format!("{base}.localityLbSetting"), l, has_outlier);
        v.not_enforced(format!("{base}.localityLbSetting"));
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        zone_aware_lb(v, &format!("{base}.zoneAwareLbSetting"), z, has_outlier);
        v.not_enforced(format!("{base}.zoneAwareLbSetting"));
    }
    if let Some(w) = &lb.warmup {
        let wp = format!("{base}.warmup");
        match &w.duration {
            None => v.error(format!("{wp}.duration"), "duration is required"),
            Some(d) => {
                v.duration(format!("{wp}.duration"), Some(d));
            }
        }
        if w.minimum_percent.is_some_and(|p| p > 100.0) {
            v.error(format!("{wp}.minimumPercent"), "minimumPercent value should be less than or equal to 100");
        }
        if w.minimum_percent.is_some_and(|p| p < 0.0) {
            v.error(format!("{wp}.minimumPercent"), "minimumPercent should be greater than or equal to 0");
        }
        if w.aggression.is_some_and(|a| a <= 0.0) {
            v.error(format!("{wp}.aggression"), "aggression should be greater than 0");
        }
        v.not_enforced(wp);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        v.duration(format!("{base}.warmupDurationSecs"), Some(d));
        v.not_enforced(format!("{base}.warmupDurationSecs"));
    }
}

fn failover_labels() -> [&'static str; 3] {
    ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"]
}

/// `agent.ValidateLocalityLbSetting`.
fn locality_lb(v: &mut Validation, base: &str, l: &LocalityLbSetting, has_outlier: bool) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        v.error(base.to_owned(), "can not simultaneously specify 'distribute' and 'failover'");
        return;
    }
    if !l.failover.is_empty() {
        if let Some(p) = l.failover_priority.iter().find(|p| failover_labels().contains(&p.as_str())) {
            v.error(
                format!("{base}.failoverPriority"),
                format!(
                    "can not simultaneously set 'failover' and topology label '{}' in 'failover_priority'",
                    cut(p, 60)
                ),
            );
            return;
        }
    }
    let mut src = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        src.push(d.from.as_str());
        let mut total: i64 = 0;
        for w in d.to.values() {
            if *w <= 0 || *w > 100 {
                v.error(format!("{base}.distribute[{i}].to"), "locality weight must be in range [1, 100]");
                return;
            }
            total += w;
        }
        if total != 100 {
            v.error(format!("{base}.distribute[{i}].to"), format!("total locality weight {total} != 100"));
            return;
        }
        let dst: Vec<&str> = d.to.keys().map(String::as_str).collect();
        v.check(format!("{base}.distribute[{i}].to"), localities(&dst));
    }
    v.check(format!("{base}.distribute"), localities(&src));
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        v.warn(base.to_owned(), "outlier detection policy must be provided for failover");
    }
    for (i, f) in l.failover.iter().enumerate() {
        let fp = format!("{base}.failover[{i}]");
        if f.from == f.to {
            v.error(fp.clone(), "locality lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            v.error(fp.clone(), "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            v.error(fp, "locality lb failover region should not contain '*' wildcard");
        }
    }
}

/// `agent.ValidateZoneAwareLbSetting`.
fn zone_aware_lb(v: &mut Validation, base: &str, z: &LocalityLbSetting, has_outlier: bool) {
    if !z.distribute.is_empty() {
        v.error(format!("{base}.distribute"), "unknown field \"distribute\"");
    }
    for (i, p) in z.failover_priority.iter().enumerate() {
        if failover_labels().contains(&p.as_str()) {
            v.error(
                format!("{base}.failoverPriority[{i}]"),
                format!(
                    "'failover_priority' for zone aware lb must not use topology label '{}'; region- and zone-level routing are handled automatically",
                    cut(p, 60)
                ),
            );
        }
    }
    if (!z.failover.is_empty() || !z.failover_priority.is_empty()) && !has_outlier {
        v.warn(base.to_owned(), "outlier detection policy must be provided for failover");
    }
    for (i, f) in z.failover.iter().enumerate() {
        let fp = format!("{base}.failover[{i}]");
        if f.from == f.to {
            v.error(fp.clone(), "zone aware lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            v.error(
                fp.clone(),
                "zone aware lb failover only specifies region; zone and subzone failover are handled automatically",
            );
        }
        if f.from.contains('*') || f.to.contains('*') {
            v.error(fp, "zone aware lb failover region should not contain '*' wildcard");
        }
    }
    if z.min_cluster_size == Some(0) {
        v.error(format!("{base}.minClusterSize"), "should be greater than or equal to 1");
    }
}

/// `validateLocalities`: `region[/zone[/subzone]]` with at most one trailing `*`, no overlaps.
fn localities(list: &[&str]) -> Result<(), String> {
    // region → zone → subzones; "*" marks "everything below".
    let mut map: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for loc in list {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality {} wildcard '*' number can not exceed 1 and must be in the end",
                cut(loc, 60)
            ));
        }
        let overlap = || format!("locality {} overlap with previous specified ones", cut(loc, 60));
        if map.contains_key("*") {
            return Err(overlap());
        }
        let items: Vec<&str> = loc.splitn(3, '/').collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(format!("locality {} must not contain empty region/zone/subzone info", cut(loc, 60)));
        }
        match items.as_slice() {
            [region] => {
                if map.contains_key(region) {
                    return Err(overlap());
                }
                map.insert(region, BTreeMap::from([("*", vec!["*"])]));
            }
            [region, zone] => {
                let r = map.entry(region).or_default();
                if r.contains_key("*") || r.contains_key(zone) {
                    return Err(overlap());
                }
                r.insert(zone, vec!["*"]);
            }
            [region, zone, sub] => {
                let r = map.entry(region).or_default();
                if r.contains_key("*") {
                    return Err(overlap());
                }
                let z = r.entry(zone).or_default();
                if z.contains(&"*") || z.contains(sub) {
                    return Err(overlap());
                }
                z.push(sub);
            }
            _ => {}
        }
    }
    Ok(())
}

/// `agent.ValidateTLS` (client side, DestinationRule).
fn client_tls(v: &mut Validation, base: &str, t: &ClientTlsSettings, namespace: &str) {
    enum_value(v, format!("{base}.mode"), t.mode.as_deref(), &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]);
    let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    let mode = t.mode.as_deref().unwrap_or("DISABLE");
    if let Some(cn) = t.credential_name.as_deref().and_then(|c| c.strip_prefix("configmap://")) {
        let ns = cn.split_once('/').map_or(namespace, |(ns, _)| ns);
        if ns != namespace {
            v.error(
                format!("{base}.credentialName"),
                format!(
                    "invalid configmap:// credentialName: namespace must match the configuration namespace {}",
                    q(namespace)
                ),
            );
        }
    }
    if t.insecure_skip_verify == Some(true) {
        if mode == "SIMPLE" && (set(&t.ca_certificates) || set(&t.credential_name) || t.subject_alt_names.is_some()) {
            v.error(
                base.to_owned(),
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
        if mode == "MUTUAL" && (set(&t.ca_certificates) || t.subject_alt_names.is_some()) {
            v.error(
                base.to_owned(),
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    if (mode == "SIMPLE" || mode == "MUTUAL") && set(&t.credential_name) {
        if set(&t.client_certificate) || set(&t.ca_certificates) || set(&t.private_key) || set(&t.ca_crl) {
            v.error(
                base.to_owned(),
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
    } else if mode == "MUTUAL" {
        if !set(&t.client_certificate) {
            v.error(base.to_owned(), "client certificate required for mutual tls");
        }
        if !set(&t.private_key) {
            v.error(base.to_owned(), "private key required for mutual tls");
        }
    }
    if mode != "DISABLE" {
        v.warn(base.to_owned(), "TLS origination is accepted as Istio does, but not performed by the node proxy");
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway.

/// Istio's `protocol.Parse`, for a Gateway port: None is `Unsupported`.
fn protocol(p: &str) -> Option<&'static str> {
    Some(match p.to_ascii_lowercase().as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        "grpc" => "GRPC",
        "grpc-web" => "GRPC-Web",
        "http" => "HTTP",
        "http_proxy" => "HTTP_PROXY",
        "http2" => "HTTP2",
        "https" => "HTTPS",
        "tls" => "TLS",
        "mongo" => "Mongo",
        "redis" => "Redis",
        "mysql" => "MySQL",
        _ => return None,
    })
}

pub fn gateway(gw: &Sourced<GatewaySpec>) -> Validation {
    let mut v = Validation::default();
    metadata(&mut v, gw);
    if !is_dns1123_label(&gw.name) {
        v.error("metadata.name", format!("invalid gateway name: {}", q(&gw.name)));
    }
    if gw.spec.servers.is_empty() {
        v.error("spec.servers", "gateway must have at least one server");
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in gw.spec.servers.iter().enumerate() {
        let sp = format!("spec.servers[{i}]");
        server(&mut v, &sp, s);
        let name = s.port.name.as_deref().unwrap_or("");
        if !names.insert(name) {
            v.error(
                format!("{sp}.port.name"),
                format!("port names in servers must be unique: duplicate name {}", cut(name, 60)),
            );
        }
        let http = protocol(s.port.protocol.as_deref().unwrap_or(""))
            .is_some_and(|p| matches!(p, "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-Web"));
        if !http && s.tls.as_ref().and_then(|t| t.https_redirect) == Some(true) {
            v.warn(format!("{sp}.tls.httpsRedirect"), "tls.httpsRedirect should only be used with http servers");
        }
    }
    v
}

fn server(v: &mut Validation, base: &str, s: &Server) {
    if s.hosts.is_empty() {
        v.error(format!("{base}.hosts"), "server config must contain at least one host");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        gateway_host(v, format!("{base}.hosts[{i}]"), h);
    }
    // validateServerPort
    let pp = format!("{base}.port");
    let bind = s.bind.as_deref().unwrap_or("");
    let before = v.errors.len();
    let proto = s.port.protocol.as_deref().unwrap_or("");
    let parsed = protocol(proto);
    if parsed.is_none() {
        v.error(
            format!("{pp}.protocol"),
            format!(
                "invalid protocol {}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                q(proto)
            ),
        );
    }
    if s.port.number > 0 || !bind.starts_with("unix://") {
        v.check(format!("{pp}.number"), port(i64::from(s.port.number)));
    }
    if s.port.target_port.is_some_and(|t| t > 0) {
        v.error(format!("{pp}.targetPort"), "targetPort has no impact on Gateways");
    }
    if s.port.name.as_deref().unwrap_or("").is_empty() {
        v.error(format!("{pp}.name"), format!("port name must be set: number:{} protocol:{}", s.port.number, q(proto)));
    }
    let port_ok = v.errors.len() == before;
    // validateServerBind
    if let Some(path) = bind.strip_prefix("unix://") {
        if path.is_empty() {
            v.error(format!("{base}.bind"), "unix address must not be empty");
        } else if !path.starts_with('@') && (!path.starts_with('/') || path.ends_with('/')) {
            v.error(format!("{base}.bind"), format!("{} is not an absolute path to a file", cut(path, 60)));
        }
        if s.port.number != 0 {
            v.error(
                format!("{base}.bind"),
                format!("port number must be 0 for unix domain socket: number:{}", s.port.number),
            );
        }
    } else if !bind.is_empty() {
        v.check(format!("{base}.bind"), ip_address(bind));
    }
    if let Some(t) = &s.tls {
        server_tls(v, &format!("{base}.tls"), t);
    }
    if port_ok {
        let p = parsed.unwrap_or("");
        let is_tls = p == "HTTPS" || p == "TLS";
        let is_http = matches!(p, "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-Web");
        match &s.tls {
            None if is_tls => v.error(format!("{base}.tls"), "server must have TLS settings for HTTPS/TLS protocols"),
            Some(t) if !is_tls => {
                let passthrough =
                    matches!(t.mode.as_deref().unwrap_or("PASSTHROUGH"), "PASSTHROUGH" | "AUTO_PASSTHROUGH");
                let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
                if is_http {
                    if !passthrough || set(&t.ca_certificates) || set(&t.private_key) || set(&t.server_certificate) {
                        v.error(format!("{base}.tls"), "server cannot have TLS settings for plain text HTTP ports");
                    }
                } else {
                    v.error(format!("{base}.tls"), "server cannot have TLS settings for non HTTPS/TLS ports");
                }
            }
            _ => {}
        }
    }
    if s.bind.is_some() || s.default_endpoint.is_some() {
        v.not_enforced(format!("{base}.bind"));
    }
}

/// `agent.ValidateNamespaceSlashWildcardHostname(host, isGateway=true)`.
fn gateway_host(v: &mut Validation, path: String, h: &str) {
    let name = match h.split_once('/') {
        None => h,
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() {
                v.error(path.clone(), "config namespace and dnsName in host entry cannot be empty");
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                v.error(path.clone(), format!("invalid namespace value {} in gateway", q(ns)));
            }
            name
        }
    };
    if name != "*" && !name.contains('.') {
        v.error(path.clone(), "short names (non FQDN) are not allowed");
    }
    if let Err(e) = wildcard_domain(name) {
        if !is_ip(name) {
            v.error(path.clone(), e);
        }
    }
    if name.contains('*') && name.len() != 1 && !name.starts_with("*.") {
        v.error(path, format!("partial wildcard {} not allowed", q(name)));
    }
}

/// `validateTLSOptions` (server side, Gateway).
fn server_tls(v: &mut Validation, base: &str, t: &ServerTlsSettings) {
    enum_value(
        v,
        format!("{base}.mode"),
        t.mode.as_deref(),
        &["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"],
    );
    let versions = &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];
    enum_value(v, format!("{base}.minProtocolVersion"), t.min_protocol_version.as_deref(), versions);
    enum_value(v, format!("{base}.maxProtocolVersion"), t.max_protocol_version.as_deref(), versions);
    if t.credential_names.len() > 2 {
        v.error(format!("{base}.credentialNames"), "Too many: must have at most 2 items");
    }
    let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    let mode = t.mode.as_deref().unwrap_or("PASSTHROUGH");
    if matches!(t.min_protocol_version.as_deref(), Some("TLSV1_0" | "TLSV1_1")) && t.cipher_suites.is_empty() {
        v.warn(
            base.to_owned(),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    if mode == "ISTIO_MUTUAL" {
        for (is, what) in [
            (set(&t.server_certificate), "server certificate"),
            (set(&t.private_key), "private key"),
            (set(&t.ca_certificates), "CA bundle"),
            (!t.tls_certificates.is_empty(), "tlsCertificates"),
            (set(&t.credential_name), "credentialName"),
            (!t.credential_names.is_empty(), "credentialNames"),
        ] {
            if is {
                v.error(base.to_owned(), format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
            }
        }
        return;
    }
    if (mode == "PASSTHROUGH" || mode == "AUTO_PASSTHROUGH")
        && (set(&t.ca_crl)
            || set(&t.server_certificate)
            || set(&t.private_key)
            || set(&t.ca_certificates)
            || !t.tls_certificates.is_empty()
            || set(&t.credential_name)
            || !t.credential_names.is_empty())
    {
        v.warn(base.to_owned(), format!("{mode} mode does not use certificates, they will be ignored"));
    }
    let sources = [
        set(&t.server_certificate) && set(&t.private_key),
        set(&t.credential_name),
        !t.credential_names.is_empty(),
        !t.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|b| **b).count() > 1 {
        v.error(
            base.to_owned(),
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminating = matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL");
    if terminating && (set(&t.credential_name) || !t.credential_names.is_empty()) {
        return;
    }
    if terminating {
        let prefix = if mode == "SIMPLE" { "SIMPLE TLS" } else { "MUTUAL TLS" };
        if mode != "SIMPLE" && !set(&t.ca_certificates) {
            v.error(base.to_owned(), format!("{prefix} requires a client CA bundle"));
        }
        // The CRD says maxItems 2; Istio's webhook (and its tests) only warn.
        if t.tls_certificates.len() > 2 {
            v.warn(format!("{base}.tlsCertificates"), format!("{prefix} can support up to 2 server certificates"));
        }
        let certs: Vec<(bool, bool)> = if t.tls_certificates.is_empty() {
            vec![(set(&t.server_certificate), set(&t.private_key))]
        } else {
            t.tls_certificates.iter().map(|c| (set(&c.server_certificate), set(&c.private_key))).collect()
        };
        for (cert, key) in certs {
            if !cert {
                v.error(base.to_owned(), format!("{prefix} requires a server certificate"));
            }
            if !key {
                v.error(base.to_owned(), format!("{prefix} requires a private key"));
            }
        }
    }
    if set(&t.ca_crl) {
        if set(&t.credential_name) {
            v.error(
                base.to_owned(),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == "SIMPLE" {
            v.error(base.to_owned(), "CRL is not supported with SIMPLE TLS");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_follow_istio() {
        assert!(wildcard_domain("foo.bar").is_ok());
        assert!(wildcard_domain("*.bar.com").is_ok());
        assert!(wildcard_domain("*").is_ok());
        assert!(wildcard_domain("Foo.Bar").is_ok(), "Istio's label pattern allows upper case");
        // Go checks the labels after the first one as a domain of their own, and so do we.
        assert!(wildcard_domain("foo.*.com").unwrap_err().contains("label \"*\" invalid"));
        assert!(wildcard_domain("foo*.bar.com").unwrap_err().contains("foo*.bar.com"));
        assert!(wildcard_domain("1.2.3.4").unwrap_err().contains("all-numeric"));
        assert!(wildcard_domain(&"a".repeat(256)).unwrap_err().contains("too long"));
        assert!(wildcard_domain("").unwrap_err().contains("empty domain name"));
        assert!(hosts_match("*.foo.bar", "*.bar"));
        assert!(hosts_match("a.b", "a.b"));
        assert!(!hosts_match("a.b", "c.b"));
        assert!(host_subset_of("a.foo.com", "*.foo.com"));
        assert!(!host_subset_of("*.foo.com", "a.foo.com"));
    }

    #[test]
    fn header_values_follow_envoys_format_rules() {
        for ok in ["foo", "%HOSTNAME%", "100%%", "prefix %HOSTNAME% suffix", "%REQ(x-a)%", "%F([\"a\", \"b\"])%"] {
            assert!(header_value(ok).is_ok(), "{ok}");
        }
        for bad in ["abc%123", "%START_TIME%%", "50%", "a\u{1}b"] {
            assert!(header_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_cut_long_values() {
        let long = "x".repeat(10_000_000);
        let e = wildcard_domain(&long).unwrap_err();
        assert!(e.len() < 300, "{} bytes", e.len());
        let e = header_value(&format!("{long}%")).unwrap_err();
        assert!(e.len() < 400, "{} bytes", e.len());
    }

    #[test]
    fn localities_reject_overlaps_and_inner_wildcards() {
        assert!(localities(&["us-east/*", "us-west"]).is_ok());
        assert!(localities(&["*/zone"]).unwrap_err().contains("must be in the end"));
        assert!(localities(&["us-east", "us-east/a"]).unwrap_err().contains("overlap"));
        assert!(localities(&["us-east/"]).unwrap_err().contains("empty"));
    }

    #[test]
    fn jwt_claim_names_never_split_a_character() {
        assert!(is_jwt_claim("@request.auth.claims.sub"));
        assert!(is_jwt_claim("@REQUEST.auth.claims[a][b]"));
        assert!(!is_jwt_claim("@request.auth.claims"));
        assert!(!is_jwt_claim("@request.auth.claimé.x"));
        assert!(!is_jwt_claim("é@request.auth.claims.x"));
    }

    #[test]
    fn maglev_primes() {
        assert!(is_prime(65537) && is_prime(2) && !is_prime(65536) && !is_prime(9));
    }
}
