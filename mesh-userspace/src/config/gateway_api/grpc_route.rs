//! GRPCRoute: its types, its conversion to an HTTPRoute, and the CRD's own rules.
use super::{
    cut, validate, HttpBackendRef, HttpHeaderMatch, HttpPathMatch, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
    HttpRouteSpec, ParentReference, Validation, MAX_MATCHES_TOTAL, MAX_RULES,
};
use serde::Deserialize;

/// `GRPCRoute` (v1): matches on gRPC service/method and headers; compiled as an HTTPRoute whose
/// path matches `/service/method`, as Istio does, with HTTP/2 to the backends.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    /// `parentRefs`: the Services (GAMMA mesh routing) or Gateways the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames matched against the request's `:authority` (wildcard `*.` prefix allowed); empty
    /// matches every host.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules tried for each call; none (or an empty list) is one rule matching every call.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// One entry of a GRPCRoute's `rules`: matches, filters and weighted backends.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    /// Name of the rule, unique within the route.
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions ORed together; none matches every call.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Same shape as HTTPRoute's; only RequestHeaderModifier, ResponseHeaderModifier,
    /// RequestMirror and ExtensionRef are GRPCRoute filter types.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// `backendRefs`: weighted backends the call is forwarded to (over HTTP/2).
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Experimental channel (GEP-1619): accepted, not enforced.
    #[serde(default)]
    pub session_persistence: Option<serde_yaml::Value>,
}

/// One entry of a rule's `matches`: the gRPC method and headers must all match.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// The gRPC service and/or method the call must be for; any when left out.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Conditions on request metadata (headers); all must hold.
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
}

/// A gRPC `method` match: service and/or method, exactly or by regex.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Fully qualified gRPC service (e.g. `helloworld.Greeter`); any when left out.
    #[serde(default)]
    pub service: Option<String>,
    /// Method name within the service (e.g. `SayHello`); any when left out.
    #[serde(default)]
    pub method: Option<String>,
}

const GRPC_FILTERS: &[&str] = &["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"];

impl GrpcMethodMatch {
    /// The request path match a gRPC call `/service/method` is tested with (Istio's
    /// `createGRPCURIMatch`): Exact both → exact path, service only → the `/service/` prefix,
    /// otherwise a regex with `[^/]+` for the part left out.
    fn path(&self) -> HttpPathMatch {
        let regex = self.kind.as_deref() == Some("RegularExpression");
        let (kind, value) = match (regex, self.service.as_deref(), self.method.as_deref()) {
            (false, Some(s), Some(m)) => ("Exact", format!("/{s}/{m}")),
            (false, Some(s), None) => ("PathPrefix", format!("/{s}/")),
            (false, None, Some(m)) => ("RegularExpression", format!("/[^/]+/{}", regex::escape(m))),
            (true, s, m) => ("RegularExpression", format!("/{}/{}", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+"))),
            (false, None, None) => ("PathPrefix", "/".to_owned()),
        };
        HttpPathMatch { kind: Some(kind.into()), value: Some(value) }
    }
}

impl GrpcRouteSpec {
    /// The equivalent HTTPRoute (validated first with [`validate_grpc_route`]).
    pub fn to_http(&self, created: Option<String>) -> HttpRouteSpec {
        let rules = self
            .rules
            .iter()
            .map(|r| HttpRouteRule {
                name: r.name.clone(),
                matches_as_written: Some(
                    r.matches
                        .iter()
                        .map(|m| HttpRouteMatch {
                            grpc_rank: Some(m.method.as_ref().map_or((0, 0), |mm| {
                                (mm.service.as_deref().map_or(0, str::len), mm.method.as_deref().map_or(0, str::len))
                            })),
                            path: m.method.as_ref().map(GrpcMethodMatch::path),
                            headers: m.headers.clone(),
                            query_params: Vec::new(),
                            method: None,
                        })
                        .collect(),
                ),
                filters: r.filters.clone(),
                backend_refs: r.backend_refs.clone(),
                timeouts: None,
                retry: None,
                session_persistence: r.session_persistence.clone(),
            })
            .collect();
        HttpRouteSpec {
            parent_refs: self.parent_refs.clone(),
            hostnames: self.hostnames.clone(),
            rules_as_written: Some(rules),
            created,
            grpc: true,
        }
    }
}

/// The GRPCRoute CRD's own rules (method match, filter types); the rest (parents, backends,
/// header matches and modifiers, mirrors) is HTTPRoute's and checked on the converted route.
pub fn validate_grpc_route(spec: &GrpcRouteSpec) -> Validation {
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut err = |p: String, m: String| errors.push((p, m));
    if spec.rules.len() > MAX_RULES {
        err("spec.rules".into(), format!("must have at most {MAX_RULES} items"));
    }
    let total: usize = spec.rules.iter().map(|r| r.matches.len().max(1)).sum();
    if total > MAX_MATCHES_TOTAL {
        err("spec.rules".into(), format!("the total number of matches across all rules in a route must be less than {MAX_MATCHES_TOTAL} (has {total})"));
    }
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if r.matches.len() > 8 {
            err(format!("{at}.matches"), "must have at most 8 items".into());
        }
        for (j, m) in r.matches.iter().enumerate() {
            let Some(mm) = &m.method else { continue };
            check_method_match(mm, &format!("{at}.matches[{j}].method"), &mut err);
        }
        let lists = std::iter::once((at.clone(), &r.filters))
            .chain(r.backend_refs.iter().enumerate().map(|(j, b)| (format!("{at}.backendRefs[{j}]"), &b.filters)));
        for (fat, filters) in lists {
            for (k, f) in filters.iter().enumerate() {
                if !GRPC_FILTERS.contains(&f.kind.as_str()) {
                    err(
                        format!("{fat}.filters[{k}].type"),
                        format!(
                            "Unsupported value {:?}: supported values: {}",
                            cut(&f.kind, 40),
                            GRPC_FILTERS.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
    }
    let mut v = if errors.is_empty() { validate(&spec.to_http(None)) } else { Validation::default() };
    v.errors.splice(0..0, errors);
    v
}

/// A gRPC service name as the CRD's pattern has it: dot-separated identifiers.
fn service_ok(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty()
        && s.split('.').all(|p| {
            p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// A gRPC method name as the CRD's pattern has it: one identifier.
fn method_ok(m: &str) -> bool {
    m.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One `method` match: service and/or method, valid names for Exact, valid regexes otherwise.
fn check_method_match(mm: &GrpcMethodMatch, mat: &str, err: &mut dyn FnMut(String, String)) {
    if mm.service.is_none() && mm.method.is_none() {
        err(mat.to_owned(), "One or both of 'service' or 'method' must be specified".into());
    }
    match mm.kind.as_deref() {
        None | Some("Exact") => {
            if let Some(s) = mm.service.as_deref().filter(|s| !service_ok(s)) {
                err(
                    format!("{mat}.service"),
                    format!(
                        "{:?} must be a valid gRPC service name (e.g. com.example.Echo) when type is 'Exact'",
                        cut(s, 60)
                    ),
                );
            }
            if let Some(m) = mm.method.as_deref().filter(|m| !method_ok(m)) {
                err(
                    format!("{mat}.method"),
                    format!("{:?} must be a valid gRPC method name when type is 'Exact'", cut(m, 60)),
                );
            }
        }
        Some("RegularExpression") => {
            for (f, v) in [("service", &mm.service), ("method", &mm.method)] {
                if let Some(v) = v {
                    if let Err(e) = regex::Regex::new(v) {
                        err(format!("{mat}.{f}"), format!("invalid regular expression: {}", cut(&e.to_string(), 200)));
                    }
                }
            }
        }
        Some(o) => err(
            format!("{mat}.type"),
            format!("Unsupported value {:?}: supported values: \"Exact\", \"RegularExpression\"", cut(o, 40)),
        ),
    }
    for (f, v) in [("service", &mm.service), ("method", &mm.method)] {
        if v.as_ref().is_some_and(|v| v.len() > 1024) {
            err(format!("{mat}.{f}"), "must be at most 1024 characters".into());
        }
    }
}
