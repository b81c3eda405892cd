//! Kubernetes Gateway API `HTTPRoute` (`gateway.networking.k8s.io` v1 and v1beta1) as users write
//! them, and the rules its CRD (OpenAPI schema and CEL `x-kubernetes-validations`) enforces.
//!
//! Strict like the Istio kinds: an unknown field is an error, because a misspelt field silently
//! ignored is a routing rule silently not applied. Fields of the spec the node proxy does not act
//! on are accepted and each use is a warning that says so. How a route is bound to a Service and
//! compiled is in `routing/gateway_api.rs`.
use serde::Deserialize;

use super::{cut, parse_duration, validate::Validation};

pub const GROUP: &str = "gateway.networking.k8s.io";
/// HTTPRoute is served at v1 and (deprecated, same schema) v1beta1; so is ReferenceGrant.
pub const VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Other kinds of the Gateway API group: valid, not acted on in this release (skipped, reported).
pub const OTHER_KINDS: &[&str] = &["TCPRoute", "TLSRoute", "UDPRoute", "BackendTLSPolicy", "ListenerSet"];
/// How a Gateway API `Gateway` is named in [`super::ObjectKey`] and messages: `Gateway` alone is
/// Istio's `networking.istio.io` kind.
pub const GATEWAY_KIND: &str = "Gateway.gateway.networking.k8s.io";
/// The GatewayClass `controllerName`s this mesh serves: its own, and Istio's (so an Istio
/// install's `istio` GatewayClass keeps working unchanged).
pub const CONTROLLER_NAMES: &[&str] = &["mesh/gateway-controller", "istio.io/gateway-controller"];
/// `gatewayClassName`s served even when no GatewayClass document names them (Istio's samples use
/// `istio`; ours is `mesh`). A GatewayClass of that name, when there is one, decides instead.
pub const CLASS_NAMES: &[&str] = &["mesh", "istio"];

// CRD limits (config/crd/standard/gateway.networking.k8s.io_httproutes.yaml).
const MAX_PARENT_REFS: usize = 32;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 16;
const MAX_MATCHES_PER_RULE: usize = 64;
/// CEL: "the total number of matches across all rules in a route must be less than 128".
const MAX_MATCHES_TOTAL: usize = 128;
const MAX_FILTERS: usize = 16;
const MAX_BACKEND_REFS: usize = 16;
const MAX_HEADER_MATCHES: usize = 16;
const MAX_HEADER_OPS: usize = 16;
const MAX_WEIGHT: i64 = 1_000_000;
const MAX_PATH_VALUE: usize = 1024;
const MAX_HEADER_VALUE: usize = 4096;
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

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

/// `GRPCRoute` (v1): matches on gRPC service/method and headers; compiled as an HTTPRoute whose
/// path matches `/service/method`, as Istio does, with HTTP/2 to the backends.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Same shape as HTTPRoute's; only RequestHeaderModifier, ResponseHeaderModifier,
    /// RequestMirror and ExtensionRef are GRPCRoute filter types.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Experimental channel (GEP-1619): accepted, not enforced.
    #[serde(default)]
    pub session_persistence: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
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
    let service_ok = |s: &str| {
        let s = s.strip_prefix('.').unwrap_or(s);
        !s.is_empty()
            && s.split('.').all(|p| {
                p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
    };
    let method_ok = |m: &str| {
        m.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if r.matches.len() > 8 {
            err(format!("{at}.matches"), "must have at most 8 items".into());
        }
        for (j, m) in r.matches.iter().enumerate() {
            let Some(mm) = &m.method else { continue };
            let mat = format!("{at}.matches[{j}].method");
            if mm.service.is_none() && mm.method.is_none() {
                err(mat.clone(), "One or both of 'service' or 'method' must be specified".into());
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
                                err(
                                    format!("{mat}.{f}"),
                                    format!("invalid regular expression: {}", cut(&e.to_string(), 200)),
                                );
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

/// `ReferenceGrant`: kinds in other namespaces (`from`) trusted to reference kinds of this
/// namespace (`to`). A backendRef to a Service in another namespace resolves only when one allows it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    #[serde(default)]
    pub from: Vec<ReferenceGrantFrom>,
    #[serde(default)]
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantFrom {
    /// Required; `""` is the core group.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantTo {
    /// Required; `""` is the core group.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
    /// None: every object of the kind in the grant's namespace.
    #[serde(default)]
    pub name: Option<String>,
}

/// The core API group as a reference spells it: `""`, and `core` as Istio also accepts.
fn core_group(g: &str) -> bool {
    g.is_empty() || g == "core"
}

impl ReferenceGrantSpec {
    /// Whether this grant (in the Service's namespace) lets a `from_kind` (`HTTPRoute`,
    /// `GRPCRoute`) of `from_namespace` reference the Service `name`.
    pub fn allows_service(&self, from_kind: &str, from_namespace: &str, name: &str) -> bool {
        self.from
            .iter()
            .any(|f| f.group.as_deref() == Some(GROUP) && f.kind == from_kind && f.namespace == from_namespace)
            && self.to.iter().any(|t| {
                t.group.as_deref().is_some_and(core_group)
                    && t.kind == "Service"
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
    }
}

/// The ReferenceGrant CRD's schema: 1 to 16 `from` and `to` entries, group and kind required,
/// `from.namespace` required; names are DNS labels / subdomains.
pub fn validate_reference_grant(spec: &ReferenceGrantSpec) -> Validation {
    let mut v = Validation::default();
    let mut err = |p: String, m: String| v.errors.push((p, m));
    for (field, len) in [("from", spec.from.len()), ("to", spec.to.len())] {
        if len == 0 {
            err(format!("spec.{field}"), "Required value: at least 1 item".into());
        } else if len > 16 {
            err(format!("spec.{field}"), "must have at most 16 items".into());
        }
    }
    let group_ok = |g: &str| g.is_empty() || hostname_ok(g, false);
    let kind_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= 63
            && k.starts_with(|c: char| c.is_ascii_alphabetic())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let label_ok = |n: &str| n.len() <= 63 && hostname_ok(n, false) && !n.contains('.');
    for (i, f) in spec.from.iter().enumerate() {
        let at = format!("spec.from[{i}]");
        match &f.group {
            None => err(format!("{at}.group"), "Required value".into()),
            Some(g) if !group_ok(g) => err(format!("{at}.group"), format!("{:?} is not a valid group", cut(g, 60))),
            _ => {}
        }
        if !kind_ok(&f.kind) {
            err(format!("{at}.kind"), format!("{:?} is not a valid kind", cut(&f.kind, 60)));
        }
        if !label_ok(&f.namespace) {
            err(
                format!("{at}.namespace"),
                format!("{:?} is not a valid namespace (RFC 1123 label)", cut(&f.namespace, 60)),
            );
        }
    }
    for (i, t) in spec.to.iter().enumerate() {
        let at = format!("spec.to[{i}]");
        match &t.group {
            None => err(format!("{at}.group"), "Required value".into()),
            Some(g) if !group_ok(g) => err(format!("{at}.group"), format!("{:?} is not a valid group", cut(g, 60))),
            _ => {}
        }
        if !kind_ok(&t.kind) {
            err(format!("{at}.kind"), format!("{:?} is not a valid kind", cut(&t.kind, 60)));
        }
        if let Some(n) = &t.name {
            if !hostname_ok(n, false) {
                err(format!("{at}.name"), format!("{:?} is not a valid object name", cut(n, 60)));
            }
        }
    }
    v
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

fn header_name_ok(n: &str) -> bool {
    // RFC 7230 token, as the CRD's pattern `^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$`, at most 256.
    !n.is_empty() && n.len() <= 256 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 1123 host name, as the CRD's `PreciseHostname` (no wildcard) or `Hostname` (`*.` prefix allowed).
fn hostname_ok(h: &str, wildcard: bool) -> bool {
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
fn check_plain_path(v: &str) -> Result<(), String> {
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
pub fn validate(spec: &HttpRouteSpec) -> Validation {
    let mut v = Validation::default();
    let mut err = |p: String, m: String| v.errors.push((p, m));
    let mut warns: Vec<(String, String)> = Vec::new();
    if spec.parent_refs.len() > MAX_PARENT_REFS {
        err("spec.parentRefs".into(), format!("must have at most {MAX_PARENT_REFS} items"));
    }
    for (i, p) in spec.parent_refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        if p.name.is_empty() {
            err(format!("{at}.name"), "name is required".into());
        }
        if let Some(port) = p.port {
            if !(1..=65535).contains(&port) {
                err(format!("{at}.port"), format!("{port} is not a port number (1-65535)"));
            }
        }
        for (j, q) in spec.parent_refs.iter().enumerate().take(i) {
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
        let matches = r.matches();
        if matches.len() > MAX_MATCHES_PER_RULE {
            err(format!("{at}.matches"), format!("must have at most {MAX_MATCHES_PER_RULE} items"));
        }
        for (j, m) in matches.iter().enumerate() {
            check_match(m, &format!("{at}.matches[{j}]"), &mut err);
        }
        check_filters(&r.filters, &at, &matches, &mut err, &mut warns);
        if r.backend_refs.len() > MAX_BACKEND_REFS {
            err(format!("{at}.backendRefs"), format!("must have at most {MAX_BACKEND_REFS} items"));
        }
        let redirects = r.filters.iter().any(|f| f.kind == "RequestRedirect");
        if redirects && !r.backend_refs.is_empty() {
            // The spec: RequestRedirect "MUST NOT be used on a rule that also has backendRefs"
            // (webhook rule); a redirect answers, nothing is forwarded.
            err(
                format!("{at}.backendRefs"),
                "RequestRedirect filter must not be used together with backendRefs".into(),
            );
        }
        for (j, b) in r.backend_refs.iter().enumerate() {
            let bat = format!("{at}.backendRefs[{j}]");
            if b.name.is_empty() {
                err(format!("{bat}.name"), "name is required".into());
            }
            if let Some(w) = b.weight {
                if !(0..=MAX_WEIGHT).contains(&w) {
                    err(format!("{bat}.weight"), format!("{w} must be between 0 and {MAX_WEIGHT}"));
                }
            }
            match b.port {
                None if b.is_service() => err(bat.clone(), "Must have port for Service reference".into()),
                Some(p) if !(1..=65535).contains(&p) => {
                    err(format!("{bat}.port"), format!("{p} is not a port number (1-65535)"))
                }
                _ => {}
            }
            check_filters(&b.filters, &bat, &matches, &mut err, &mut warns);
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
        if let Some(t) = &r.timeouts {
            let parse = |f: &Option<String>, name: &str, err: &mut dyn FnMut(String, String)| {
                f.as_deref().and_then(|s| match parse_gep_duration(s) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        err(format!("{at}.timeouts.{name}"), e);
                        None
                    }
                })
            };
            let req = parse(&t.request, "request", &mut err);
            let backend = parse(&t.backend_request, "backendRequest", &mut err);
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
        if let Some(rt) = &r.retry {
            check_retry(rt, &format!("{at}.retry"), &mut err);
        }
        if r.session_persistence.is_some() {
            warns
                .push((format!("{at}.sessionPersistence"), "sessionPersistence (experimental) is not enforced".into()));
        }
    }
    v.warnings = warns;
    v
}

/// `HTTPRouteRetry`: codes 400-599, a set; attempts at least 1; backoff a GEP-2257 duration.
fn check_retry(rt: &HttpRouteRetry, at: &str, err: &mut dyn FnMut(String, String)) {
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

fn check_match(m: &HttpRouteMatch, at: &str, err: &mut dyn FnMut(String, String)) {
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

fn check_filters(
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
        let fat = format!("{at}.filters[{i}]");
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
            continue;
        }
        for (t, field, set) in fields {
            if set && t != f.kind {
                err(format!("{fat}.{field}"), format!("filter.{field} must be nil if the filter.type is not {t}"));
            }
            if !set && t == f.kind {
                err(fat.clone(), format!("filter.{field} must be specified for {t} filter.type"));
            }
        }
        for (field, m) in [
            ("requestHeaderModifier", &f.request_header_modifier),
            ("responseHeaderModifier", &f.response_header_modifier),
        ] {
            let Some(m) = m else { continue };
            let mat = format!("{fat}.{field}");
            for (op, list) in [("set", &m.set), ("add", &m.add)] {
                if list.len() > MAX_HEADER_OPS {
                    err(format!("{mat}.{op}"), format!("must have at most {MAX_HEADER_OPS} items"));
                }
                let mut seen = std::collections::HashSet::new();
                for (k, h) in list.iter().enumerate() {
                    if !header_name_ok(&h.name) {
                        err(
                            format!("{mat}.{op}[{k}].name"),
                            format!("{:?} is not a valid header name", cut(&h.name, 60)),
                        );
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
        let check_path_mod = |pm: &PathModifier, pat: String, err: &mut dyn FnMut(String, String)| {
            match pm.kind.as_str() {
                "ReplaceFullPath" if pm.replace_full_path.is_none() => {
                    err(pat.clone(), "replaceFullPath must be specified when type is set to 'ReplaceFullPath'".into())
                }
                "ReplacePrefixMatch" if pm.replace_prefix_match.is_none() => err(
                    pat.clone(),
                    "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'".into(),
                ),
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
            for (field, v) in
                [("replaceFullPath", &pm.replace_full_path), ("replacePrefixMatch", &pm.replace_prefix_match)]
            {
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
                    && matches[0]
                        .path
                        .as_ref()
                        .is_none_or(|p| p.resolved().is_some_and(|(t, _)| t == PathType::PathPrefix));
                if !prefix_only {
                    err(pat, "When using a filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified".into());
                }
            }
        };
        if let Some(r) = &f.request_redirect {
            let rat = format!("{fat}.requestRedirect");
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
                check_path_mod(pm, format!("{rat}.path"), err);
            }
        }
        if let Some(u) = &f.url_rewrite {
            let uat = format!("{fat}.urlRewrite");
            if let Some(h) = &u.hostname {
                if !hostname_ok(h, false) {
                    err(
                        format!("{uat}.hostname"),
                        format!("{:?} is not a valid host name (RFC 1123, no wildcard)", cut(h, 60)),
                    );
                }
            }
            if let Some(pm) = &u.path {
                check_path_mod(pm, format!("{uat}.path"), err);
            }
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
            warns.push((fat, w.into()));
        }
    }
}

/// `GatewayClass` (cluster-scoped): which controller serves the Gateways of this class.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayClassSpec {
    #[serde(default)]
    pub controller_name: String,
    /// Accepted, not used (no parameters are defined for this mesh).
    #[serde(default)]
    pub parameters_ref: Option<serde_yaml::Value>,
    #[serde(default)]
    pub description: Option<String>,
}

impl GatewayClassSpec {
    /// Whether this mesh is the class's controller.
    pub fn is_ours(&self) -> bool {
        CONTROLLER_NAMES.contains(&self.controller_name.as_str())
    }
}

/// The GatewayClass CRD's rules: `controllerName` required, a domain-prefixed path of at most
/// 253 characters.
pub fn validate_gateway_class(spec: &GatewayClassSpec) -> Validation {
    let mut v = Validation::default();
    let c = &spec.controller_name;
    let ok = c.len() <= 253
        && c.split_once('/').is_some_and(|(domain, path)| {
            hostname_ok(domain, false)
                && !path.is_empty()
                && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b))
        });
    if c.is_empty() {
        v.errors.push(("spec.controllerName".into(), "Required value".into()));
    } else if !ok {
        v.errors.push((
            "spec.controllerName".into(),
            format!("{:?} is not a domain-prefixed path (e.g. example.com/controller)", cut(c, 60)),
        ));
    }
    if spec.parameters_ref.is_some() {
        v.warnings.push(("spec.parametersRef".into(), "not used by this mesh".into()));
    }
    v
}

/// A Gateway API `Gateway`: listeners (port, protocol, hostname) that routes attach to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeGatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Accepted, not used: the node listens on `--ingress-bind`, whatever address is asked for.
    #[serde(default)]
    pub addresses: Vec<serde_yaml::Value>,
    /// Accepted, not used (labels and annotations for generated infrastructure; none is generated).
    #[serde(default)]
    pub infrastructure: Option<serde_yaml::Value>,
    /// Accepted, not used (no TLS is implemented).
    #[serde(default)]
    pub tls: Option<serde_yaml::Value>,
    /// Accepted, not used (ListenerSets are not implemented).
    #[serde(default)]
    pub allowed_listeners: Option<serde_yaml::Value>,
    /// Accepted, not used (experimental channel).
    #[serde(default, rename = "backendTLS")]
    pub backend_tls: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    #[serde(default)]
    pub name: String,
    /// None: every host name.
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: i64,
    #[serde(default)]
    pub protocol: String,
    /// Accepted (the CRD's rules are checked); a listener with TLS is not served.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// Default `Terminate`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub options: Option<serde_yaml::Value>,
    #[serde(default)]
    pub frontend_validation: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Empty: the kinds the listener's protocol carries (HTTPRoute, GRPCRoute for HTTP).
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `All`, `Same` (the default) or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Kubernetes label selector semantics: every matchLabels pair and every expression holds
    /// (an empty selector selects everything).
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let has = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => has.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => has.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => has.is_some(),
                    "DoesNotExist" => has.is_none(),
                    _ => false, // rejected at admission
                }
            })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteGroupKind {
    /// Default `gateway.networking.k8s.io`.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
}

/// Which namespaces' routes a listener admits.
#[derive(Clone, Debug)]
pub enum FromNamespaces {
    All,
    Same,
    Selector(LabelSelector),
}

impl Listener {
    /// `allowedRoutes.namespaces` with the CRD's default (`Same`).
    pub fn from_namespaces(&self) -> FromNamespaces {
        let ns = self.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
        match ns.and_then(|n| n.from.as_deref()) {
            Some("All") => FromNamespaces::All,
            Some("Selector") => FromNamespaces::Selector(ns.and_then(|n| n.selector.clone()).unwrap_or_default()),
            _ => FromNamespaces::Same,
        }
    }

    /// Whether a route of `kind` (HTTPRoute, GRPCRoute) may attach: one of `allowedRoutes.kinds`,
    /// or, when none are listed, one the protocol carries.
    pub fn allows_kind(&self, kind: &str) -> bool {
        let kinds = self.allowed_routes.as_ref().map(|a| a.kinds.as_slice()).unwrap_or(&[]);
        if kinds.is_empty() {
            return match self.protocol.as_str() {
                "HTTP" | "HTTPS" => kind == "HTTPRoute" || kind == "GRPCRoute",
                "TLS" => kind == "TLSRoute",
                "TCP" => kind == "TCPRoute",
                "UDP" => kind == "UDPRoute",
                _ => false,
            };
        }
        kinds.iter().any(|k| k.group.as_deref().unwrap_or(GROUP) == GROUP && k.kind == kind)
    }
}

const LISTENER_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "TLS", "TCP", "UDP"];
const MAX_LISTENERS: usize = 64;
const MAX_ROUTE_KINDS: usize = 8;

/// The Gateway CRD's schema and CEL rules that matter for serving: listeners 1-64, names
/// (section names) unique, port 1-65535, protocol, hostname syntax, the protocol/tls/hostname
/// pairings, unique port+protocol+hostname, allowedRoutes (`from`, selector operators, kinds).
pub fn validate_gateway(spec: &KubeGatewaySpec) -> Validation {
    let mut v = Validation::default();
    let mut err = |p: String, m: String| v.errors.push((p, m));
    let mut warns: Vec<(String, String)> = Vec::new();
    if spec.gateway_class_name.is_empty() {
        err("spec.gatewayClassName".into(), "Required value".into());
    } else if spec.gateway_class_name.len() > 253 {
        err("spec.gatewayClassName".into(), "must be at most 253 characters".into());
    }
    if spec.listeners.is_empty() {
        err("spec.listeners".into(), "Required value: at least 1 item".into());
    } else if spec.listeners.len() > MAX_LISTENERS {
        err("spec.listeners".into(), format!("must have at most {MAX_LISTENERS} items"));
    }
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        if l.name.is_empty() || l.name.len() > 253 || !hostname_ok(&l.name, false) {
            err(
                format!("{at}.name"),
                format!("{:?} is not a valid section name (RFC 1123 subdomain)", cut(&l.name, 60)),
            );
        }
        if let Some(j) = spec.listeners[..i].iter().position(|o| o.name == l.name) {
            err(
                format!("{at}.name"),
                format!("Listener name must be unique within the Gateway (spec.listeners[{j}] has it)"),
            );
        }
        if !(1..=65535).contains(&l.port) {
            err(format!("{at}.port"), format!("{} is not a port number (1-65535)", l.port));
        }
        if !LISTENER_PROTOCOLS.contains(&l.protocol.as_str()) {
            err(
                format!("{at}.protocol"),
                format!(
                    "Unsupported value {:?}: supported values: \"HTTP\", \"HTTPS\", \"TLS\", \"TCP\", \"UDP\"",
                    cut(&l.protocol, 40)
                ),
            );
        }
        if let Some(h) = &l.hostname {
            if !h.is_empty() && !hostname_ok(h, true) {
                err(
                    format!("{at}.hostname"),
                    format!("{:?} is not a valid host name (RFC 1123, optionally *. first)", cut(h, 60)),
                );
            }
            if !h.is_empty() && matches!(l.protocol.as_str(), "TCP" | "UDP") {
                err(format!("{at}.hostname"), "hostname must not be specified for protocols ['TCP', 'UDP']".into());
            }
        }
        match (&l.tls, l.protocol.as_str()) {
            (Some(_), "HTTP" | "TCP" | "UDP") => {
                err(format!("{at}.tls"), "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']".into())
            }
            (Some(t), "HTTPS") if t.mode.as_deref().is_some_and(|m| m != "Terminate") => {
                err(format!("{at}.tls.mode"), "tls mode must be Terminate for protocol HTTPS".into())
            }
            (None, "TLS") => err(format!("{at}.tls"), "tls mode must be set for protocol TLS".into()),
            (Some(t), "TLS") if t.mode.is_none() => {
                err(format!("{at}.tls.mode"), "tls mode must be set for protocol TLS".into())
            }
            _ => {}
        }
        if let Some(t) = &l.tls {
            if let Some(m) = t.mode.as_deref().filter(|m| !["Terminate", "Passthrough"].contains(m)) {
                err(
                    format!("{at}.tls.mode"),
                    format!("Unsupported value {:?}: supported values: \"Terminate\", \"Passthrough\"", cut(m, 40)),
                );
            }
            if t.mode.as_deref().unwrap_or("Terminate") == "Terminate"
                && t.certificate_refs.is_empty()
                && t.options.is_none()
            {
                err(format!("{at}.tls"), "certificateRefs or options must be specified when mode is Terminate".into());
            }
        }
        let same_host = spec.listeners[..i].iter().position(|o| {
            o.port == l.port
                && o.protocol == l.protocol
                && o.hostname.as_deref().unwrap_or("") == l.hostname.as_deref().unwrap_or("")
        });
        if let Some(j) = same_host {
            err(at.clone(), format!("Combination of port, protocol and hostname must be unique for each listener (spec.listeners[{j}] has the same)"));
        }
        if let Some(a) = &l.allowed_routes {
            if let Some(ns) = &a.namespaces {
                match ns.from.as_deref() {
                    None | Some("All" | "Same") => {}
                    Some("Selector") => {}
                    Some(f) => err(
                        format!("{at}.allowedRoutes.namespaces.from"),
                        format!(
                            "Unsupported value {:?}: supported values: \"All\", \"Selector\", \"Same\"",
                            cut(f, 40)
                        ),
                    ),
                }
                for (k, e) in ns.selector.iter().flat_map(|s| s.match_expressions.iter()).enumerate() {
                    let ep = format!("{at}.allowedRoutes.namespaces.selector.matchExpressions[{k}]");
                    match (e.operator.as_str(), e.values.is_empty()) {
                        ("In" | "NotIn", false) | ("Exists" | "DoesNotExist", true) => {}
                        ("In" | "NotIn", true) => err(format!("{ep}.values"), "must be specified when `operator` is 'In' or 'NotIn'".into()),
                        ("Exists" | "DoesNotExist", false) => err(format!("{ep}.values"), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'".into()),
                        (o, _) => err(format!("{ep}.operator"), format!("Unsupported value {:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"", cut(o, 40))),
                    }
                }
                if ns.from.as_deref() != Some("Selector") && ns.selector.is_some() {
                    warns.push((
                        format!("{at}.allowedRoutes.namespaces.selector"),
                        "ignored: `from` is not Selector".into(),
                    ));
                }
            }
            if a.kinds.len() > MAX_ROUTE_KINDS {
                err(format!("{at}.allowedRoutes.kinds"), format!("must have at most {MAX_ROUTE_KINDS} items"));
            }
            for (k, rk) in a.kinds.iter().enumerate() {
                let kp = format!("{at}.allowedRoutes.kinds[{k}]");
                let kind_ok = !rk.kind.is_empty()
                    && rk.kind.len() <= 63
                    && rk.kind.starts_with(|c: char| c.is_ascii_alphabetic())
                    && rk.kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !kind_ok {
                    err(format!("{kp}.kind"), format!("{:?} is not a valid kind", cut(&rk.kind, 60)));
                }
                if let Some(g) = &rk.group {
                    if !g.is_empty() && !hostname_ok(g, false) {
                        err(format!("{kp}.group"), format!("{:?} is not a valid group", cut(g, 60)));
                    }
                }
            }
        }
    }
    for (field, set) in [
        ("addresses", !spec.addresses.is_empty()),
        ("infrastructure", spec.infrastructure.is_some()),
        ("tls", spec.tls.is_some()),
        ("allowedListeners", spec.allowed_listeners.is_some()),
        ("backendTLS", spec.backend_tls.is_some()),
    ] {
        if set {
            warns.push((format!("spec.{field}"), "accepted, not used by this mesh".into()));
        }
    }
    v.warnings = warns;
    v
}

impl super::Config {
    /// A document of the Gateway API group: an HTTPRoute is typed, validated and admitted on its
    /// own like the Istio kinds; the group's other kinds are skipped with a note.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_gateway_api_document(
        &mut self,
        file: &std::sync::Arc<str>,
        (text, line_offset): (&str, usize),
        at: std::sync::Arc<super::Locator>,
        api_version: &str,
        kind: &str,
        name: String,
        namespace: String,
    ) -> Result<(), (Option<super::ObjectKey>, Vec<super::ConfigError>)> {
        let static_kind = match kind {
            "HTTPRoute" => Some("HTTPRoute"),
            "ReferenceGrant" => Some("ReferenceGrant"),
            "GRPCRoute" => Some("GRPCRoute"),
            "Gateway" => Some(GATEWAY_KIND),
            "GatewayClass" => Some("GatewayClass"),
            _ => None,
        };
        let key = static_kind.map(|kind| super::ObjectKey { kind, namespace: namespace.clone(), name: name.clone() });
        let reject = |path: &str, msg: String| Err((key.clone(), vec![at.error(path, msg)]));
        if static_kind.is_none() {
            if OTHER_KINDS.contains(&kind) {
                self.skipped
                    .push(format!("{file}: {kind} {} (Gateway API kind not supported yet; ignored)", cut(&name, 60)));
                return Ok(());
            }
            let known = OTHER_KINDS
                .iter()
                .chain(["HTTPRoute", "ReferenceGrant", "GRPCRoute", "Gateway", "GatewayClass"].iter());
            if let Some(k) = known.clone().find(|k| k.eq_ignore_ascii_case(kind)) {
                return reject(
                    "kind",
                    format!("unknown kind {:?}: kinds are case-sensitive; did you mean {k}?", cut(kind, 40)),
                );
            }
            if kind.is_empty() {
                return reject("kind", "missing `kind`".into());
            }
            return reject("kind", format!("unknown kind {:?} in {GROUP}", cut(kind, 40)));
        }
        let version = api_version.split('/').nth(1).unwrap_or("");
        if !VERSIONS.contains(&version) {
            return reject(
                "apiVersion",
                format!("unsupported apiVersion {:?}: {kind} is {GROUP}/v1 (or v1beta1)", cut(api_version, 60)),
            );
        }
        if name.is_empty() {
            return reject("metadata.name", "missing metadata.name".into());
        }
        if let Err(e) = super::check_object_name(&name).and_then(|()| super::check_object_name(&namespace)) {
            return reject("metadata", e);
        }
        if kind == "ReferenceGrant" {
            let r: super::Resource<ReferenceGrantSpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let o = super::sourced(r, at);
            let v = validate_reference_grant(&o.spec);
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            super::upsert(&mut self.reference_grants, o, kind, &mut self.skipped);
            return Ok(());
        }
        if kind == "GatewayClass" {
            let r: super::Resource<GatewayClassSpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let o = super::sourced(r, at);
            let v = validate_gateway_class(&o.spec);
            self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            super::upsert(&mut self.gateway_classes, o, kind, &mut self.skipped);
            return Ok(());
        }
        if kind == "Gateway" {
            let r: super::Resource<KubeGatewaySpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let o = super::sourced(r, at);
            let v = validate_gateway(&o.spec);
            self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            super::upsert(&mut self.kube_gateways, o, GATEWAY_KIND, &mut self.skipped);
            return Ok(());
        }
        if kind == "GRPCRoute" {
            let r: super::Resource<GrpcRouteSpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let created = r.metadata.creation_timestamp.clone();
            let o = super::sourced(r, at);
            let v = validate_grpc_route(&o.spec);
            self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            let converted = super::Sourced {
                name: o.name,
                namespace: o.namespace,
                api_version: o.api_version,
                annotations: o.annotations,
                spec: o.spec.to_http(created),
                at: o.at,
            };
            super::upsert(&mut self.grpc_routes, converted, kind, &mut self.skipped);
            return Ok(());
        }
        let r: super::Resource<HttpRouteSpec> =
            super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
        let created = r.metadata.creation_timestamp.clone();
        let mut o = super::sourced(r, at);
        o.spec.created = created;
        let v = validate(&o.spec);
        self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
        if !v.errors.is_empty() {
            return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
        }
        super::upsert(&mut self.http_routes, o, kind, &mut self.skipped);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n";

    fn errors(rules: &str) -> String {
        let y = format!("{HEAD}  rules:\n{rules}");
        match Config::parse_str("r.yaml", &y) {
            Ok(c) => panic!("accepted: {:?}", c.http_routes),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn httproute_v1_and_v1beta1_are_admitted_with_defaults() {
        for v in ["v1", "v1beta1"] {
            let y = HEAD.replace("/v1\n", &format!("/{v}\n"));
            let c = Config::parse_str("r.yaml", &y).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(c.http_routes.len(), 1, "{v}");
            // No rules: one rule with one match, PathPrefix "/".
            let rules = c.http_routes[0].spec.rules();
            assert_eq!(rules.len(), 1);
            assert!(rules[0].matches()[0].path.is_none());
        }
        let e = Config::parse_str("r.yaml", &HEAD.replace("/v1\n", "/v1alpha2\n")).unwrap_err().to_string();
        assert!(e.contains("unsupported apiVersion"), "{e}");
    }

    #[test]
    fn unknown_fields_are_errors_with_their_position() {
        let e = errors("  - backendRefs:\n    - name: echo-v1\n      prot: 80\n");
        assert!(e.starts_with("r.yaml:9:7: spec.rules[0].backendRefs[0].prot"), "{e}");
        assert!(e.contains("unknown field `prot`"), "{e}");
    }

    #[test]
    fn crd_rules_reject_what_the_api_server_would() {
        for (rules, want) in [
            ("  - matches: [{path: {type: PathPrefix, value: foo}}]\n", "spec.rules[0].matches[0].path.value: must be an absolute path"),
            ("  - matches: [{path: {type: Exact, value: /a//b}}]\n", "must not contain \"//\""),
            ("  - matches: [{path: {type: Prefix, value: /a}}]\n", "path.type: Unsupported value \"Prefix\""),
            ("  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n", "invalid regular expression"),
            ("  - matches: [{method: get}]\n", "method: Unsupported value \"get\""),
            ("  - backendRefs: [{name: a, port: 80, weight: 1000001}]\n", "weight: 1000001 must be between 0 and 1000000"),
            ("  - backendRefs: [{name: a, port: 80, weight: -1}]\n", "must be between 0 and 1000000"),
            ("  - backendRefs: [{name: a}]\n", "Must have port for Service reference"),
            ("  - filters: [{type: RequestRedirect, requestRedirect: {port: 8080}}, {type: URLRewrite, urlRewrite: {hostname: a.b}}]\n", "May specify either"),
            ("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]\n", "RequestHeaderModifier filter cannot be repeated"),
            ("  - filters: [{type: RequestHeaderModifier}]\n", "filter.requestHeaderModifier must be specified"),
            ("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, urlRewrite: {}}]\n", "filter.urlRewrite must be nil"),
            ("  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]\n", "statusCode: Unsupported value 305"),
            ("  - filters: [{type: RequestRedirect, requestRedirect: {port: 80}}]\n    backendRefs: [{name: a, port: 80}]\n", "must not be used together with backendRefs"),
            ("  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n", "exactly one PathPrefix match"),
            ("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /b}}}]\n", "replaceFullPath must be specified"),
            ("  - timeouts: {request: 1s, backendRequest: 2s}\n", "backendRequest timeout cannot be longer"),
            ("  - timeouts: {request: 1.5s}\n", "invalid duration"),
            ("  - retry: {codes: [399]}\n", "retry.codes[0]: 399 must be between 400 and 599"),
            ("  - retry: {codes: [500, 500]}\n", "retry.codes[1]: Duplicate value: 500"),
            ("  - retry: {attempts: 0}\n", "retry.attempts: 0 should be greater than or equal to 1"),
            ("  - retry: {backoff: 1.5s}\n", "retry.backoff: invalid duration"),
            ("  - retry: {tries: 1}\n", "unknown field `tries`"),
            ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, percent: 101}}]\n", "requestMirror.percent: 101 must be between 0 and 100"),
            ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, percent: 1, fraction: {numerator: 1}}}]\n", "Only one of percent or fraction"),
            ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, fraction: {numerator: 3, denominator: 2}}}]\n", "numerator must be less than or equal to denominator"),
            ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, fraction: {numerator: 101}}}]\n", "numerator must be less than or equal to denominator"),
            ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, fraction: {numerator: 0, denominator: 0}}}]\n", "fraction.denominator: 0 should be greater than or equal to 1"),
            ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}]\n", "requestMirror.backendRef: Must have port for Service reference"),
            ("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {port: 80}}}]\n", "requestMirror.backendRef.name: name is required"),
            ("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: x}, {name: A, value: y}]}}]\n", "Duplicate value"),
        ] {
            let e = errors(rules);
            assert!(e.contains(want), "{rules}: want {want:?}, got {e}");
        }
        let many: String = (0..17).map(|_| "  - backendRefs: [{name: a, port: 80}]\n").collect();
        assert!(errors(&many).contains("spec.rules: must have at most 16 items"));
    }

    #[test]
    fn a_bad_route_does_not_block_the_others_and_other_kinds_are_skipped() {
        let y = format!(
            "{HEAD}  rules: [{{backendRefs: [{{name: a, port: 0}}]}}]\n---\n{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata: {{name: g}}\nspec: {{}}\n",
            HEAD.replace("name: r,", "name: good,")
        );
        let mut c = Config::default();
        assert!(c.add_str("r.yaml", &y).is_err());
        assert_eq!(c.http_routes.len(), 1);
        assert_eq!(c.http_routes[0].name, "good");
        assert_eq!(c.rejected.len(), 1);
        assert_eq!(c.rejected[0].object.as_ref().map(|k| k.to_string()).as_deref(), Some("HTTPRoute ns/r"));
        assert!(
            c.skipped.iter().any(|s| s.contains("TCPRoute g (Gateway API kind not supported yet")),
            "{:?}",
            c.skipped
        );
        let e =
            Config::parse_str("r.yaml", &HEAD.replace("kind: HTTPRoute", "kind: HttpRoute")).unwrap_err().to_string();
        assert!(e.contains("did you mean HTTPRoute?"), "{e}");
    }

    const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: ns}\nspec:\n  gatewayClassName: mesh\n  listeners:\n";

    fn gateway_errors(listeners: &str) -> String {
        match Config::parse_str("g.yaml", &format!("{GW}{listeners}")) {
            Ok(c) => panic!("accepted: {:?}", c.kube_gateways),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn gateway_and_gateway_class_v1_and_v1beta1_are_admitted() {
        for v in ["v1", "v1beta1"] {
            let y = format!(
                "{}  - {{name: http, port: 80, protocol: HTTP, hostname: \"*.example.com\", allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{a: b}}}}}}, kinds: [{{kind: HTTPRoute}}]}}}}\n---\napiVersion: gateway.networking.k8s.io/{v}\nkind: GatewayClass\nmetadata: {{name: mesh}}\nspec: {{controllerName: mesh/gateway-controller}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: team, labels: {{a: b}}}}\n",
                GW.replace("/v1\n", &format!("/{v}\n"))
            );
            let c = Config::parse_str("g.yaml", &y).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!((c.kube_gateways.len(), c.gateway_classes.len()), (1, 1), "{v}");
            assert!(c.gateway_classes[0].spec.is_ours());
            assert!(c.gateways.is_empty(), "not an Istio Gateway");
            assert_eq!(c.namespace_labels["team"].get("a").map(String::as_str), Some("b"));
            let l = &c.kube_gateways[0].spec.listeners[0];
            assert!(l.allows_kind("HTTPRoute") && !l.allows_kind("GRPCRoute"));
            let crate::config::gateway_api::FromNamespaces::Selector(sel) = l.from_namespaces() else { panic!() };
            assert!(sel.matches(&c.namespace_labels["team"]) && !sel.matches(&Default::default()));
        }
    }

    #[test]
    fn gateway_crd_rules_reject_what_the_api_server_would() {
        for (listeners, want) in [
            ("  - {name: a, port: 80, protocol: HTTP}\n  - {name: a, port: 81, protocol: HTTP}\n", "g.yaml:8:6: spec.listeners[1].name: Listener name must be unique"),
            ("  - {name: a, port: 0, protocol: HTTP}\n", "spec.listeners[0].port: 0 is not a port number (1-65535)"),
            ("  - {name: a, port: 65536, protocol: HTTP}\n", "65536 is not a port number"),
            ("  - {name: a, port: 80, protocol: HTTP2}\n", "spec.listeners[0].protocol: Unsupported value \"HTTP2\""),
            ("  - {name: a, port: 80, protocol: HTTP, hostname: Foo.com}\n", "spec.listeners[0].hostname: \"Foo.com\" is not a valid host name"),
            ("  - {name: a, port: 80, protocol: HTTP, hostname: \"*\"}\n", "is not a valid host name"),
            ("  - {name: a, port: 80, protocol: TCP, hostname: a.com}\n", "hostname must not be specified for protocols ['TCP', 'UDP']"),
            ("  - {name: a, port: 80, protocol: HTTP, tls: {certificateRefs: [{name: c}]}}\n", "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"),
            ("  - {name: a, port: 443, protocol: HTTPS, tls: {mode: Terminate}}\n", "certificateRefs or options must be specified when mode is Terminate"),
            ("  - {name: a, port: 443, protocol: TLS}\n", "tls mode must be set for protocol TLS"),
            ("  - {name: A_B, port: 80, protocol: HTTP}\n", "spec.listeners[0].name: \"A_B\" is not a valid section name"),
            ("  - {name: a, port: 80, protocol: HTTP}\n  - {name: b, port: 80, protocol: HTTP}\n", "Combination of port, protocol and hostname must be unique"),
            ("  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Others}}}\n", "allowedRoutes.namespaces.from: Unsupported value \"Others\""),
            ("  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: [{key: k, operator: In}]}}}}\n", "must be specified when `operator` is 'In' or 'NotIn'"),
            ("  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: \"HTTP Route\"}]}}\n", "allowedRoutes.kinds[0].kind: \"HTTP Route\" is not a valid kind"),
            ("  - {name: a, port: 80, protocol: HTTP, prot: 1}\n", "unknown field `prot`"),
            ("    []\n", "spec.listeners: Required value"),
        ] {
            let e = gateway_errors(listeners);
            assert!(e.contains(want), "{listeners}: want {want:?}, got {e}");
        }
        let e = Config::parse_str("g.yaml", &GW.replace("  gatewayClassName: mesh\n", "")).unwrap_err().to_string();
        assert!(e.contains("spec.gatewayClassName: Required value"), "{e}");
        let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: c}\nspec: {controllerName: no-domain}\n";
        let e = Config::parse_str("c.yaml", class).unwrap_err().to_string();
        assert!(e.contains("c.yaml:4:8: spec.controllerName: \"no-domain\" is not a domain-prefixed path"), "{e}");
        // A Gateway API Gateway rejected is keyed apart from an Istio Gateway of the same name.
        let mut c = Config::default();
        assert!(c.add_str("g.yaml", &format!("{GW}  - {{name: a, port: 0, protocol: HTTP}}\n")).is_err());
        assert_eq!(
            c.rejected[0].object.as_ref().map(|k| k.to_string()).as_deref(),
            Some("Gateway.gateway.networking.k8s.io ns/g")
        );
    }
}
