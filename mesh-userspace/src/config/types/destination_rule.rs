//! DestinationRule as users write it: subsets and traffic policies.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::PortSelector;

/// A DestinationRule `spec`: policies applied to traffic for a service after routing, and its named
/// subsets.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service the rule applies to (short name resolved in the rule's namespace, or FQDN; `*`
    /// wildcards allowed).
    pub host: String,
    /// `trafficPolicy`: load balancing, connection pool and outlier detection for the whole host;
    /// subsets and ports may override it.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named versions of the service (by endpoint labels) that routes can send to.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// `exportTo`: namespaces that may see this rule (`.`, `*`, names); validated, the routing
    /// engine does not read it.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// `workloadSelector`: the workloads (by labels) the rule applies to; not enforced by the node
    /// proxy.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
}

/// A `workloadSelector`: labels selecting the workloads a rule applies to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// `matchLabels`: labels a workload must all carry to be selected.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A subset: the service's endpoints that carry `labels`, under a name routes refer to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// The subset's name, as a route's `destination.subset` names it.
    pub name: String,
    /// Labels an endpoint must all carry to belong to the subset.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `trafficPolicy` for this subset, overriding the rule-level one field by field.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// A `trafficPolicy`: how traffic to a host (or subset, or port) is balanced, limited and ejected.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// `loadBalancer`: how an endpoint is picked; Istio's default is `LEAST_REQUEST`.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// `connectionPool`: limits on connections and requests to the upstream (Envoy's circuit
    /// breaker).
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// `outlierDetection`: ejecting endpoints that keep failing from the load-balancing pool.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionSettings>,
    /// Client TLS settings for upstream connections; validated, not applied by the node proxy.
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    /// `portLevelSettings`: policies for one port of the host, overriding the rule-level ones.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel the connection through a proxy (HTTP CONNECT or POST); not enforced by the node
    /// proxy.
    #[serde(default)]
    pub tunnel: Option<TunnelSettings>,
    /// `proxyProtocol`: send a PROXY protocol header upstream; not enforced by the node proxy.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `retryBudget`: cap retries as a share of active requests; not enforced by the node proxy.
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
}

/// A client `tls` policy: how the proxy originates TLS to the upstream (validated, not applied
/// here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `clientCertificate`: path of the client certificate file (`MUTUAL`).
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// `privateKey`: path of the client's private key file (`MUTUAL`).
    #[serde(default)]
    pub private_key: Option<String>,
    /// `caCertificates`: path of the CA bundle that verifies the server's certificate.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// `credentialName`: Secret holding the client certificate, key and CA (instead of the file
    /// paths).
    #[serde(default)]
    pub credential_name: Option<String>,
    /// `subjectAltNames`: names the server certificate's SAN must contain one of.
    #[serde(default)]
    pub subject_alt_names: Option<Vec<String>>,
    /// `sni`: the SNI sent in the TLS handshake.
    #[serde(default)]
    pub sni: Option<String>,
    /// `insecureSkipVerify`: skip verifying the server's certificate and SAN.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    /// `caCrl`: path of the certificate revocation list checked against the server's certificate.
    #[serde(default)]
    pub ca_crl: Option<String>,
}

/// A `tunnel`: carry connections to the upstream through a proxy (not enforced here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// How the connection is tunnelled: `CONNECT` or `POST`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `targetHost`: FQDN or IP the connection is tunnelled to.
    #[serde(default)]
    pub target_host: String,
    /// `targetPort`: port the connection is tunnelled to.
    #[serde(default)]
    pub target_port: u32,
}

/// A `proxyProtocol` setting (not enforced here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// PROXY protocol version: `V1` or `V2`.
    #[serde(default)]
    pub version: Option<String>,
}

/// A `retryBudget`: retries allowed as a share of active requests (not enforced here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// A plain double in the v1 CRD (not a `{value}` Percent).
    #[serde(default)]
    pub percent: Option<f64>,
    /// `minRetryConcurrency`: concurrent retries always allowed, whatever the share (Istio's
    /// default 3).
    #[serde(default)]
    pub min_retry_concurrency: Option<u32>,
    /// `budgetInterval`: the window of requests the budget is computed over, a duration; unset or
    /// 0, only active and pending requests count.
    #[serde(default)]
    pub budget_interval: Option<String>,
}

/// One of `portLevelSettings`: a policy for one port of the host.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port this policy applies to.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// `loadBalancer` for this port.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// `connectionPool` for this port.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// `outlierDetection` for this port.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionSettings>,
    /// Client `tls` for this port (validated, not applied here).
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

/// A `loadBalancer`: one of `simple`, `consistentHash` and `backendUtilization`, plus locality
/// settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// `ROUND_ROBIN`, `LEAST_REQUEST` (also `LEAST_CONN`, `UNSPECIFIED`: Istio's default), `RANDOM`
    /// or `PASSTHROUGH`.
    #[serde(default)]
    pub simple: Option<String>,
    /// `consistentHash`: send requests with the same key (header, cookie, source IP, query
    /// parameter) to the same endpoint.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    /// `localityLbSetting`: weights and failover between localities; not enforced by the node
    /// proxy.
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// `zoneAwareLbSetting`: Envoy's zone-aware routing; not enforced by the node proxy.
    #[serde(default)]
    pub zone_aware_lb_setting: Option<LocalityLbSetting>,
    /// `warmupDurationSecs`: deprecated form of `warmup.duration`; not enforced by the node proxy.
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
    /// Ramp up new endpoints' share of traffic over a period; not enforced by the node proxy.
    #[serde(default)]
    pub warmup: Option<Warmup>,
    /// `backendUtilization`: balance by endpoint-reported utilization (kept unparsed); not enforced
    /// by the node proxy.
    #[serde(default)]
    pub backend_utilization: Option<serde_yaml::Value>,
}

/// `localityLbSetting` and `zoneAwareLbSetting` (the latter has no `distribute` but a
/// `minClusterSize`; one struct keeps the checks shared).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// How traffic from each locality is split among destination localities (`localityLbSetting`
    /// only).
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    /// Where traffic goes when a locality's endpoints are unhealthy (`from` region to `to` region).
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// `failoverPriority`: ordered labels; endpoints sharing more of them with the client get
    /// priority.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Turns locality load balancing on or off for this rule, overriding the mesh-wide setting.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `minClusterSize`: the smallest cluster zone-aware routing applies to (`zoneAwareLbSetting`
    /// only).
    #[serde(default)]
    pub min_cluster_size: Option<u64>,
}

/// One `distribute` entry: the share of traffic from a locality that goes to each locality.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityDistribute {
    /// The originating locality, `region/zone/subzone` (wildcards allowed).
    #[serde(default)]
    pub from: String,
    /// Destination locality to weight (percent); the weights add up to 100.
    #[serde(default)]
    pub to: BTreeMap<String, i64>,
}

/// One `failover` entry: the region to fail over to from a region.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityFailover {
    /// The region whose traffic fails over.
    #[serde(default)]
    pub from: String,
    /// The region it fails over to.
    #[serde(default)]
    pub to: String,
}

/// A `warmup`: new endpoints get a growing share of traffic (not enforced here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Warmup {
    /// How long an endpoint is warmed up, a duration.
    #[serde(default)]
    pub duration: Option<String>,
    /// `minimumPercent`: the share of traffic a new endpoint starts with (Envoy's default 10).
    #[serde(default)]
    pub minimum_percent: Option<f64>,
    /// How fast traffic grows during warmup (Envoy's default 1.0: linear).
    #[serde(default)]
    pub aggression: Option<f64>,
}

/// A `consistentHash` load balancer: the key requests are hashed on (one of four), and the hash
/// table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// `httpHeaderName`: hash on this request header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// `httpCookie`: hash on this cookie, which the proxy sets when a `ttl` is given and the
    /// request lacks it.
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    /// `useSourceIp`: hash on the client's IP address.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// `httpQueryParameterName`: hash on this query parameter.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// `minimumRingSize`: deprecated form of `ringHash.minimumRingSize`; Istio warns about it.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
    /// `ringHash`: Envoy's ring-hash table; validated, the node proxy uses rendezvous hashing
    /// whatever is set.
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    /// `maglev`: Envoy's Maglev table; validated, the node proxy uses rendezvous hashing whatever
    /// is set.
    #[serde(default)]
    pub maglev: Option<Maglev>,
}

/// Envoy's ring-hash settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// `minimumRingSize`: the smallest number of virtual nodes on the ring (Envoy's default 1024).
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

/// Envoy's Maglev settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// `tableSize`: the lookup table's size, a prime below 5000011 (Envoy's default 65537).
    #[serde(default)]
    pub table_size: u64,
}

/// A hash cookie (`consistentHash.httpCookie`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    /// Required; empty when left out, which Istio rejects with its own message.
    #[serde(default)]
    pub name: String,
    /// Path of the cookie; not enforced by the node proxy.
    #[serde(default)]
    pub path: Option<String>,
    /// Lifetime of the cookie the proxy sets, a duration; unset, the proxy does not set it.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Extra attributes of the generated cookie; not enforced by the node proxy.
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

/// One cookie attribute (`name=value`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieAttribute {
    /// The attribute's name.
    #[serde(default)]
    pub name: String,
    /// The attribute's value; none for a flag attribute like `Secure`.
    #[serde(default)]
    pub value: Option<String>,
}

/// A `connectionPool`: limits shared by TCP and HTTP traffic to the host.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// Limits common to TCP and HTTP connections.
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    /// Limits of HTTP/1.1 and HTTP/2 traffic.
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

/// `connectionPool.tcp`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// `maxConnections`: the most connections to the host (Envoy's default: 2^32-1).
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// `connectTimeout`: TCP connect timeout, a duration (Envoy's default 10 s, applied here too).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// `tcpKeepalive`: SO_KEEPALIVE settings on upstream sockets; not enforced by the node proxy.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `maxConnectionDuration`: the longest a connection may live; not enforced by the node proxy.
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    /// `idleTimeout`: idle time after which a TCP connection closes (Istio's default 1 h; 0
    /// disables); not enforced by the node proxy.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// `connectionPool.http`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// `http1MaxPendingRequests`: requests that may wait for a connection (Envoy's default 2^32-1).
    #[serde(default, rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<i64>,
    /// `http2MaxRequests`: requests in flight to the host at once (Envoy's default 2^32-1).
    #[serde(default, rename = "http2MaxRequests")]
    pub http2_max_requests: Option<i64>,
    /// `maxRequestsPerConnection`: requests per upstream connection; 1 disables keep-alive (the
    /// only value enforced here).
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    /// `maxRetries`: retries outstanding to all of the host's endpoints at once (Envoy's default
    /// 2^32-1).
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// `idleTimeout`: how long an upstream connection may stay idle before it is closed (Istio's
    /// default 1 h; unset, the node proxy closes them after 1.5 s).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// `h2UpgradePolicy`: `DEFAULT`, `DO_NOT_UPGRADE` or `UPGRADE` (HTTP/1.1 upstream ports spoken
    /// as HTTP/2).
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    /// `useClientProtocol`: speak to the upstream the HTTP version the client used.
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    /// `maxConcurrentStreams`: concurrent streams per HTTP/2 connection; not enforced by the node
    /// proxy.
    #[serde(default)]
    pub max_concurrent_streams: Option<i64>,
    /// `http2KeepAlive`: HTTP/2 PING keep-alive to upstreams; not enforced by the node proxy.
    #[serde(default, rename = "http2KeepAlive")]
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// An `http2KeepAlive` setting (not enforced here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2KeepAlive {
    /// How often a PING is sent, a duration.
    #[serde(default)]
    pub interval: Option<String>,
    /// How long to wait for the PING's reply before closing the connection, a duration.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A `tcpKeepalive` setting (not enforced here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped (the OS's default when unset).
    #[serde(default)]
    pub probes: Option<u32>,
    /// Idle time before the first probe, a duration (the OS's default when unset).
    #[serde(default)]
    pub time: Option<String>,
    /// Time between probes, a duration (the OS's default when unset).
    #[serde(default)]
    pub interval: Option<String>,
}

/// An `outlierDetection`: ejects endpoints that fail repeatedly.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSettings {
    /// `consecutiveErrors`: deprecated; read as `consecutive5xxErrors` when that is unset (Istio
    /// warns).
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    /// `consecutive5xxErrors`: 5xx responses in a row that eject an endpoint (Envoy's default 5,
    /// applied here).
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// `consecutiveGatewayErrors`: 502, 503 or 504 responses in a row that eject an endpoint.
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// `consecutiveLocalOriginFailures`: local failures (connect errors...) in a row that eject an
    /// endpoint; not enforced by the node proxy.
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    /// `splitExternalLocalOriginErrors`: count local failures apart from upstream errors; needed by
    /// `consecutiveLocalOriginFailures`.
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    /// How often endpoints are scanned for ejection, a duration (Envoy's default 10 s, applied
    /// here).
    #[serde(default)]
    pub interval: Option<String>,
    /// `baseEjectionTime`: the first ejection's length, multiplied by the number of ejections
    /// (Envoy's default 30 s, applied here).
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// `maxEjectionPercent`: the most of the host's endpoints ejected at once (Envoy's default 10,
    /// applied here).
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    /// `minHealthPercent`: outlier detection stops below this share of healthy endpoints; not
    /// enforced by the node proxy.
    #[serde(default)]
    pub min_health_percent: Option<i64>,
    /// `outlierDetectionHttpErrorCodes`: statuses counted as errors instead of 5xx; not enforced by
    /// the node proxy.
    #[serde(default)]
    pub outlier_detection_http_error_codes: Vec<u32>,
}
