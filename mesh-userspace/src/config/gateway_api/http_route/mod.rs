//! HTTPRoute: its types as users write them, and the CRD's rules for the route as a whole.
use serde::Deserialize;

mod validate;
pub(super) use validate::{check_plain_path, header_name_ok, hostname_ok};
pub use validate::{parse_gep_duration, validate};

/// An HTTPRoute `spec` (`gateway.networking.k8s.io`): rules routing HTTP requests to backends,
/// attached to parent Services (mesh) or Gateways.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// `parentRefs`: what the route attaches to: a Service (GAMMA mesh routing, of that Service's
    /// traffic) or a Gateway (ingress).
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames matched against the request's `Host` (wildcard `*.` prefix allowed); empty matches
    /// every host.
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

/// A `parentRefs` entry: a Gateway or Service the route attaches to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    /// Default `gateway.networking.k8s.io`; `""` (or `core`) with kind `Service` is a mesh parent.
    #[serde(default)]
    pub group: Option<String>,
    /// Default `Gateway`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace of the parent; the route's own namespace when left out.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name of the parent.
    #[serde(default)]
    pub name: String,
    /// `sectionName`: the one Gateway listener (by name) to attach to; on a Service parent it is
    /// warned about and the whole Service is bound.
    #[serde(default)]
    pub section_name: Option<String>,
    /// Port of the parent to attach to (a Gateway listener's or a Service's port); all of them when
    /// left out.
    #[serde(default)]
    pub port: Option<i64>,
}

impl ParentReference {
    /// A GAMMA parent: a Service (core group).
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), Some("") | Some("core")) && self.kind.as_deref() == Some("Service")
    }
}

/// One entry of `rules`: matches, filters, backends, timeouts and retries.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Name of the rule, unique within the route (for status and policy attachment).
    #[serde(default)]
    pub name: Option<String>,
    /// `matches`: conditions ORed together; left out, one `PathPrefix /` match (see
    /// [`Self::matches`]).
    #[serde(default, rename = "matches")]
    pub matches_as_written: Option<Vec<HttpRouteMatch>>,
    /// Filters applied to requests matching the rule (header modifiers, redirect, rewrite,
    /// mirror...).
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// `backendRefs`: weighted backends the request is forwarded to; with none (or all weights 0) a
    /// matching request gets 500.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Request and per-try (`backendRequest`) timeouts.
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

/// One entry of a rule's `matches`: every condition set must hold.
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
    /// Conditions on request headers (case-insensitive names); all must hold.
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
    /// `queryParams`: conditions on query parameters (exact, case-sensitive names); all must hold.
    #[serde(default)]
    pub query_params: Vec<HttpHeaderMatch>,
    /// The HTTP method the request must have.
    #[serde(default)]
    pub method: Option<String>,
}

/// The `type` of a path match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathType {
    /// `Exact`: the path equals the value.
    Exact,
    /// `PathPrefix`: the path starts with the value, element by element (`/foo` matches `/foo/bar`,
    /// not `/foobar`).
    PathPrefix,
    /// `RegularExpression`: the whole path matches the regex (dialect implementation-specific).
    RegularExpression,
}

/// A `path` match: its `type` and `value`.
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
    /// `type`: `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Name of the header (case-insensitive) or query parameter (case-sensitive).
    #[serde(default)]
    pub name: String,
    /// The value to compare, or the regex for `RegularExpression`.
    #[serde(default)]
    pub value: String,
}

impl HttpHeaderMatch {
    /// Whether `type` is `RegularExpression`.
    pub fn is_regex(&self) -> bool {
        self.kind.as_deref() == Some("RegularExpression")
    }
}

/// One `filters` entry: its `type` and the field of that type (set exactly that one).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    /// `type`: `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`,
    /// `RequestRedirect`, `URLRewrite`, `ExtensionRef`, `CORS` or `ExternalAuth`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// `requestHeaderModifier`: set, add and remove request headers before forwarding.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// `responseHeaderModifier`: set, add and remove response headers before returning them.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// `requestMirror`: copy requests to another backend.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    /// `requestRedirect`: answer with a redirect instead of forwarding.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// `urlRewrite`: rewrite the hostname and/or path before forwarding.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    /// `extensionRef`: an implementation-specific filter; none is supported, so the rule answers
    /// 500, as the spec asks.
    #[serde(default)]
    pub extension_ref: Option<serde_yaml::Value>,
    /// `cors`: the CORS filter; accepted, not enforced (a warning says so).
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
    /// `backendRef`: the backend the copies are sent to (their responses are discarded).
    #[serde(default)]
    pub backend_ref: BackendObjectReference,
    /// Share of requests mirrored, 0 to 100; excludes `fraction`.
    #[serde(default)]
    pub percent: Option<i64>,
    /// Share of requests mirrored as a fraction; excludes `percent`.
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

/// A `fraction`: `numerator / denominator` of the requests.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    /// The numerator; at most the denominator.
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
    /// API group of the backend; `""` (core) when left out.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind of the backend; `Service` when left out.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name of the backend.
    #[serde(default)]
    pub name: String,
    /// Namespace of the backend; the route's own when left out (another needs a ReferenceGrant
    /// there).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port of the backend; required when the backend is a Service.
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

/// A `requestHeaderModifier` / `responseHeaderModifier`: header operations.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers overwritten with the value (or added when absent).
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    /// Headers appended with the value, keeping any existing values.
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    /// Names of headers removed (case-insensitive).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value, as `set` and `add` take them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    /// The header's name (case-insensitive).
    #[serde(default)]
    pub name: String,
    /// The header's value.
    #[serde(default)]
    pub value: String,
}

/// A `requestRedirect`: the request is answered with a redirect whose `Location` replaces parts of
/// the URL.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// Scheme of the `Location` (`http` or `https`); the request's when left out.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Hostname of the `Location`; the request's `Host` when left out.
    #[serde(default)]
    pub hostname: Option<String>,
    /// How the path of the `Location` is rewritten; the request's path when left out.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// Port of the `Location`; left out, the well-known port of `scheme` when set, else the
    /// listener's port.
    #[serde(default)]
    pub port: Option<i64>,
    /// Default 302.
    #[serde(default)]
    pub status_code: Option<i64>,
}

/// A `urlRewrite`: changes to the request before it is forwarded.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// Replaces the `Host` header.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Rewrites the path (the whole path, or the prefix matched by a `PathPrefix` match).
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// A path modifier of `requestRedirect` / `urlRewrite`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `type`: `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// `replaceFullPath`: the new path (for `ReplaceFullPath`).
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// `replacePrefixMatch`: what replaces the prefix the rule's `PathPrefix` match matched (for
    /// `ReplacePrefixMatch`).
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// What a path modifier does, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    /// `ReplaceFullPath`: the whole path becomes this.
    Full(String),
    /// `ReplacePrefixMatch`: the matched prefix becomes this.
    Prefix(String),
}

impl PathModifier {
    /// What the modifier does; None when its `type` is unknown or the type's field is missing.
    pub fn resolved(&self) -> Option<PathRewrite> {
        match self.kind.as_str() {
            "ReplaceFullPath" => self.replace_full_path.clone().map(PathRewrite::Full),
            "ReplacePrefixMatch" => self.replace_prefix_match.clone().map(PathRewrite::Prefix),
            _ => None,
        }
    }
}

/// A `backendRefs` entry: a weighted backend with its own filters.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    /// Default `""` (core).
    #[serde(default)]
    pub group: Option<String>,
    /// Default `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name of the backend.
    #[serde(default)]
    pub name: String,
    /// Namespace of the backend; the route's own when left out (another needs a ReferenceGrant
    /// there).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port of the backend; required when the backend is a Service.
    #[serde(default)]
    pub port: Option<i64>,
    /// Default 1.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Filters applied only to requests sent to this backend.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

impl HttpBackendRef {
    /// Whether the backend is a core `Service` (group and kind left out, or `""`/`core` and
    /// `Service`).
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), None | Some("") | Some("core"))
            && matches!(self.kind.as_deref(), None | Some("Service"))
    }
}

/// A rule's `timeouts` (GEP-2257 durations; `0s` means none).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// Timeout of the whole request, retries included, from the client's side.
    #[serde(default)]
    pub request: Option<String>,
    /// `backendRequest`: timeout of each request to a backend (each try).
    #[serde(default)]
    pub backend_request: Option<String>,
}
