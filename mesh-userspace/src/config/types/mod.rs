//! Istio `networking.istio.io` resources as users write them (v1alpha3, v1beta1 and v1 share one
//! schema). Strict: an unknown field is an error, as `kubectl apply` with Istio's CRD schemas
//! would say, because a misspelt field silently ignored is a routing rule silently not applied.
//! Fields Istio has but the node proxy does not act on are accepted and reported by `validate`.
use std::collections::BTreeMap;

use serde::Deserialize;

mod destination_rule;
mod gateway;

pub use destination_rule::*;
pub use gateway::*;

/// A list with no spare capacity (serde_yaml gives no length hint, so a Vec grows to 4 for one
/// element).
fn exact_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let mut v = Vec::<T>::deserialize(d)?;
    v.shrink_to_fit();
    Ok(v)
}

/// An object's `metadata`: the fields the mesh reads; any other key is accepted and ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// `metadata.name`: the object's name, unique per kind within its namespace.
    pub name: String,
    /// `metadata.namespace`; `default` when left out.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `metadata.labels`: the object's Kubernetes labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`; Istio's `istio.io/dry-run` is read from here.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; the Gateway API orders routes by it (the oldest wins a tie).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    // Anything else kubectl may print (uid, resourceVersion, managedFields...) is fine here.
}

/// A whole document: `apiVersion`, `kind`, `metadata`, `spec` (and a `status` we ignore).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S> {
    /// `apiVersion`: group and version, e.g. `networking.istio.io/v1`.
    pub api_version: String,
    /// `kind`: e.g. `VirtualService`.
    pub kind: String,
    /// `metadata`: name, namespace, labels and annotations.
    pub metadata: Metadata,
    /// `spec`: the object's desired state, typed per kind.
    pub spec: S,
    /// `status` as written by a controller (e.g. in `kubectl get -o yaml` output): accepted,
    /// ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// A VirtualService `spec`: how requests to a set of hosts are routed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to: short names (resolved in the VirtualService's
    /// namespace), FQDNs, `*` wildcards; none makes it a delegate.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (`name`, `namespace/name`) and/or the reserved `mesh` the rules apply to; empty
    /// means `mesh` only.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP rules, tried in order: the first one whose `match` applies wins.
    #[serde(default, deserialize_with = "exact_vec")]
    pub http: Vec<HttpRoute>,
    /// Rules for opaque TCP traffic, matched by port, source and destination subnets.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Rules for TLS traffic routed by SNI: validated, not served by the node proxy.
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// `exportTo`: namespaces that may see this VirtualService (`.`, `*`, names); validated, the
    /// routing engine does not read it.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// Rarely written parts are boxed, and lists kept at their length: with 10,000 VirtualServices
/// loaded, the inline size of a route and Vec's spare capacity were most of the config's memory.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name of the rule, for debugging: Istio logs it (with the match's name) in access logs.
    #[serde(default)]
    pub name: Option<String>,
    /// `match`: conditions ORed together (the fields of each ANDed); none matches every request.
    #[serde(default, rename = "match", deserialize_with = "exact_vec")]
    pub matches: Vec<HttpMatchRequest>,
    /// Destinations the request is forwarded to, split by `weight`.
    #[serde(default, deserialize_with = "exact_vec")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a 3xx redirect instead of forwarding (excludes `route`, `fault` and `rewrite`).
    #[serde(default)]
    pub redirect: Option<Box<HttpRedirect>>,
    /// `directResponse`: answer with a fixed status and body; not served by the node proxy (404
    /// with the reason).
    #[serde(default)]
    pub direct_response: Option<Box<DirectResponse>>,
    /// Hand matching requests to another VirtualService (`name`, `namespace`); not supported by the
    /// node proxy, which warns.
    #[serde(default)]
    pub delegate: Option<serde_yaml::Value>,
    /// Rewrite the path (the matched prefix) and/or authority before forwarding.
    #[serde(default)]
    pub rewrite: Option<Box<HttpRewrite>>,
    /// Timeout of the whole request, a duration (`10s`); Istio's default is none (disabled).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy; left out, Istio's default applies (2 retries on connect-failure,
    /// refused-stream, unavailable, cancelled, retriable-status-codes).
    #[serde(default)]
    pub retries: Option<Box<HttpRetry>>,
    /// Fault injection (delay and/or abort) applied before forwarding.
    #[serde(default)]
    pub fault: Option<Box<HttpFault>>,
    /// A destination that also gets a copy of each matched request; its responses are discarded.
    #[serde(default)]
    pub mirror: Option<Box<Destination>>,
    /// Several mirror destinations, each with its own percentage (excludes `mirror`); not enforced
    /// by the node proxy.
    #[serde(default)]
    pub mirrors: Vec<MirrorPolicy>,
    /// `mirrorPercentage`: share of requests copied to `mirror`, 0 to 100; 100 when left out.
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form; the v1 CRD also spells it `mirror_percent`.
    #[serde(default, alias = "mirror_percent")]
    pub mirror_percent: Option<u32>,
    /// `corsPolicy`: Cross-Origin Resource Sharing settings; validated, not enforced by the node
    /// proxy.
    #[serde(default)]
    pub cors_policy: Option<Box<CorsPolicy>>,
    /// Header operations on the requests and responses of this rule.
    #[serde(default)]
    pub headers: Option<Box<Headers>>,
}

/// A `directResponse`: the fixed response Istio sends instead of forwarding.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// Required by the CRD; 0 when left out, which Istio's range check rejects.
    #[serde(default)]
    pub status: u32,
    /// The response body; none for an empty body.
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// A `directResponse` body: set exactly one of `string` and `bytes`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBody {
    /// The body as text.
    #[serde(default)]
    pub string: Option<String>,
    /// Base64, as the CRD's `format: byte`.
    #[serde(default)]
    pub bytes: Option<String>,
}

/// One entry of `mirrors`: a destination and the share of requests copied to it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    /// Where the copies are sent.
    #[serde(default)]
    pub destination: Option<Destination>,
    /// Share of requests mirrored, 0 to 100; Istio mirrors all of them when left out.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// A `corsPolicy`: what Istio answers to browsers' cross-origin checks (not enforced here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// `allowOrigins`: origins allowed, each an exact, prefix or regex match.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated list of exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// `allowMethods`: methods allowed (`Access-Control-Allow-Methods`).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `allowHeaders`: request headers allowed (`Access-Control-Allow-Headers`).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `exposeHeaders`: response headers browsers may read (`Access-Control-Expose-Headers`).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `maxAge`: how long browsers may cache a preflight's result (`Access-Control-Max-Age`), a
    /// duration.
    #[serde(default)]
    pub max_age: Option<String>,
    /// `allowCredentials`: whether credentialed requests are allowed
    /// (`Access-Control-Allow-Credentials`).
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `unmatchedPreflights`: what to do with a preflight from an origin that is not allowed:
    /// `FORWARD` it upstream (Istio's default) or `IGNORE` it.
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

/// One entry of an HTTP rule's `match`: every condition set must hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name of the match, appended to the rule's name in Istio's access logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Condition on the request path (case-sensitive unless `ignoreUriCase`).
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// Condition on the URI scheme (`http`, `https`).
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// Condition on the HTTP method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// Condition on the authority (`:authority` / `Host`).
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Conditions on request headers, by lower-case name; `{}` means the header is present.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// `withoutHeaders`: the opposite of `headers`: the match fails if any of these headers
    /// matches.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// `queryParams`: conditions on query parameters, by name.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Condition on the destination port of the request.
    #[serde(default)]
    pub port: Option<u32>,
    /// `sourceLabels`: labels the calling workload must carry.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// `sourceNamespace`: namespace the calling workload must be in.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Gateways this match applies to, overriding the VirtualService's `gateways`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// `ignoreUriCase`: match `uri` case-insensitively (exact and prefix matches only).
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// `statPrefix`: prefix of Envoy's statistics for this match; not enforced by the node proxy.
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// One of `exact`, `prefix`, `regex`; none at all (`{}`) means "present" for headers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Matches the whole value exactly.
    #[serde(default)]
    pub exact: Option<String>,
    /// Matches a value that starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Matches a value this RE2 regex matches as a whole.
    #[serde(default)]
    pub regex: Option<String>,
}

/// One destination of an HTTP rule's `route`, with its share of the traffic.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Required; left out it is empty and marked so, and validate says "destination is required"
    /// as Istio does.
    #[serde(default = "Destination::left_out")]
    pub destination: Destination,
    /// Share of the rule's requests, relative to the other destinations' weights (need not sum to
    /// 100); a lone destination gets all.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Header operations applied when this destination is picked.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// Where traffic goes: a service host, optionally narrowed to a subset and a port.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service name (short, `name.namespace` or FQDN); short names are resolved in the rule's
    /// namespace.
    #[serde(default)]
    pub host: String,
    /// Name of a subset defined by the host's DestinationRule.
    #[serde(default)]
    pub subset: Option<String>,
    /// Port on the host; needed only when the service has several ports.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Not a field: true when the document left the whole `destination` out (Istio's "destination
    /// is required" differs from an empty one's "invalid host").
    #[serde(skip)]
    pub left_out: bool,
}

impl Destination {
    fn left_out() -> Destination {
        Destination { left_out: true, ..Destination::default() }
    }
}

/// A port chosen by number.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The port number.
    #[serde(default)]
    pub number: u32,
}

/// A `redirect`: the request is answered with a 3xx whose `Location` replaces parts of the URL.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replaces the whole path in the `Location`.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the authority (host) in the `Location`.
    #[serde(default)]
    pub authority: Option<String>,
    /// Replaces the port in the `Location`.
    #[serde(default)]
    pub port: Option<u32>,
    /// Replaces the scheme (`http` or `https`) in the `Location`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// `redirectCode`: the 3xx status; 301 when left out (or 0).
    #[serde(default)]
    pub redirect_code: Option<u32>,
    /// `derivePort`: take the port from the scheme's default (`FROM_PROTOCOL_DEFAULT`) or the
    /// request (`FROM_REQUEST_PORT`); not enforced by the node proxy.
    #[serde(default)]
    pub derive_port: Option<String>,
    /// Replaces the matched prefix of the path in the redirect's Location.
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
}

/// A `rewrite` applied to the request before it is forwarded.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replaces the part of the path the match selected (the prefix for a `uri.prefix` match, else
    /// the whole path).
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the authority (`Host`) header.
    #[serde(default)]
    pub authority: Option<String>,
    /// `uriRegexRewrite`: rewrites the path with a regex and a replacement (excludes `uri`); not
    /// enforced by the node proxy.
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A `uriRegexRewrite`: a regex over the path and its replacement.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// `match`: the RE2 regex applied to the path.
    #[serde(default, rename = "match")]
    pub matches: Option<String>,
    /// The replacement; may refer to capture groups (`\1`).
    #[serde(default)]
    pub rewrite: Option<String>,
}

/// A `retries` policy of an HTTP rule.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries allowed after the first try; 0 disables retries.
    #[serde(default)]
    pub attempts: i64,
    /// `perTryTimeout`: timeout of each try, a duration; left out, only the rule's `timeout`
    /// applies.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// `retryOn`: comma-separated conditions to retry on (Envoy's `5xx`, `gateway-error`,
    /// `connect-failure`, `reset`..., or status codes); Istio's default list when left out.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// `retryRemoteLocalities`: whether retries may go to endpoints in other localities; not
    /// enforced by the node proxy.
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    /// Base interval between retries, a duration (Envoy's default 25 ms); not enforced by the node
    /// proxy.
    #[serde(default)]
    pub backoff: Option<String>,
    /// `retryIgnorePreviousHosts`: retry on other endpoints than those already tried (Istio's
    /// default: true); not enforced by the node proxy.
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
}

/// A `fault`: delays and/or aborts injected into a share of the requests.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFault {
    /// Delay the request before forwarding it.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Answer with an error instead of forwarding.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// A `fault.delay`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// `fixedDelay`: how long to wait before forwarding, a duration.
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// `exponentialDelay`: rejected, as Istio does ("not supported yet").
    #[serde(default)]
    pub exponential_delay: Option<String>,
    /// Share of requests delayed, 0 to 100; left out, none are (as in Istio).
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer form, still accepted by Istio.
    #[serde(default)]
    pub percent: Option<i64>,
}

/// A `fault.abort`: the error to answer with (one of `httpStatus`, `grpcStatus`, `http2Error`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// `httpStatus`: the HTTP status to answer with (200 to 599).
    #[serde(default)]
    pub http_status: Option<i64>,
    /// `grpcStatus`: the gRPC status to return (e.g. `UNAVAILABLE`); not enforced by the node
    /// proxy.
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// `http2Error`: an HTTP/2 error to reset the stream with; rejected, as Istio does ("not
    /// supported yet").
    #[serde(default)]
    pub http2_error: Option<String>,
    /// Share of requests aborted, 0 to 100; left out, none are (as in Istio).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// A percentage, `value` from 0.0 to 100.0.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The percentage, 0.0 to 100.0 (fractions allowed).
    pub value: f64,
}

/// Header operations on a request and on its response.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// Operations on the request forwarded upstream.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// Operations on the response returned to the client.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// Header operations on one message (a request or a response).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Headers overwritten with the value (or added when absent).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers appended with the value, keeping any existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Names of headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A `tcp` rule of a VirtualService: matches and destinations for opaque TCP.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// `match`: conditions ORed together; none matches all TCP traffic to the hosts.
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    /// Destinations the connection is forwarded to, split by `weight`.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// One entry of a TCP (L4) rule's `match`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Match {
    /// `destinationSubnets`: IPv4/IPv6 destination subnets (`a.b.c.d/xx`); not enforced by the node
    /// proxy.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port of the connection.
    #[serde(default)]
    pub port: Option<u32>,
    /// `sourceLabels`: labels the calling workload must carry.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// `sourceNamespace`: namespace the calling workload must be in.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Gateways this match applies to, overriding the VirtualService's `gateways`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// `sourceSubnet`: the client's subnet; not enforced by the node proxy.
    #[serde(default)]
    pub source_subnet: Option<String>,
}

/// A `tls[]` route of a VirtualService: validated as Istio does, not served by the node proxy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// `match`: conditions ORed together; at least one needs `sniHosts`.
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatch>,
    /// Destinations the connection is forwarded to, split by `weight`.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// One entry of a TLS rule's `match`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatch {
    /// `sniHosts`: SNI names to match (wildcards allowed); each must be among the VirtualService's
    /// hosts.
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// `destinationSubnets`: IPv4/IPv6 destination subnets.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port of the connection.
    #[serde(default)]
    pub port: Option<u32>,
    /// `sourceLabels`: labels the calling workload must carry.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// `sourceNamespace`: namespace the calling workload must be in.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Gateways this match applies to, overriding the VirtualService's `gateways`.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// One destination of a TCP or TLS rule's `route`, with its share of connections.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where the connection goes; required.
    #[serde(default = "Destination::left_out")]
    pub destination: Destination,
    /// Share of connections, relative to the other destinations' weights; a lone destination gets
    /// all.
    #[serde(default)]
    pub weight: Option<i64>,
}
