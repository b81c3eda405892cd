//! Per-route and per-cluster policies (retries, load balancing, connection pool, outlier
//! detection) resolved from the YAML with Istio's defaults made explicit.
use std::time::Duration;

use crate::config::{parse_duration, ConnectionPoolSettings, LoadBalancerSettings, OutlierDetectionSettings};

/// A route's `retries.retryOn`: which failures are retried (Envoy's retry conditions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, connect failures, resets and timeouts.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, connect failures and timeouts.
    pub gateway_error: bool,
    /// `connect-failure`: the upstream connection could not be made.
    pub connect_failure: bool,
    /// `reset` (and `reset-before-request`): the upstream reset, or did not answer within the
    /// per-try timeout ("does not respond at all (disconnect/reset/read timeout)", Envoy).
    pub reset: bool,
    /// `refused-stream`: an HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes` plus any numeric codes listed.
    pub status_codes: Vec<u16>,
    /// Names we accept but that only mean something for gRPC/HTTP/2 (cancelled, unavailable...).
    pub other: Vec<String>,
}

impl RetryOn {
    /// Parses the comma-separated `retryOn` string; an unknown condition is an error naming the known ones.
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut r = RetryOn::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "connect-failure" => r.connect_failure = true,
                "reset" | "reset-before-request" => r.reset = true,
                "refused-stream" => r.refused_stream = true,
                "retriable-4xx" => r.retriable_4xx = true,
                // Retries the codes listed beside it (Envoy's retriable_status_codes); alone, as in
                // Istio's default since 1.24, it retries no status at all.
                "retriable-status-codes" => {}
                "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted" | "unavailable" | "envoy-ratelimited"
                | "retriable-headers" | "http3-post-connect-failure" => r.other.push(item.to_owned()),
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => r.status_codes.push(c),
                    _ => return Err(format!("unknown retryOn condition {code:?}: expected 5xx, gateway-error, connect-failure, reset, refused-stream, retriable-4xx, retriable-status-codes or an HTTP status code")),
                },
            }
        }
        Ok(r)
    }

    /// Whether an upstream response with `status` should be retried.
    pub fn status(&self, status: u16) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && (502..=504).contains(&status))
            || (self.retriable_4xx && status == 409)
            || self.status_codes.contains(&status)
    }
}

/// A route's `retries`, Istio's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`).
    pub attempts: u32,
    /// `perTryTimeout`: the limit of each try; None: only the route timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// `retryOn`.
    pub retry_on: RetryOn,
    /// The shortest wait before a retry (Gateway API `retry.backoff`); None: Envoy's default
    /// back-off (25 ms base).
    pub backoff: Option<Duration>,
}

/// What Istio configures when a route says nothing about retries.
pub const ISTIO_DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::istio_default()
    }
}

impl RetryPolicy {
    /// What Istio applies to a route without `retries`: 2 retries on [`ISTIO_DEFAULT_RETRY_ON`].
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::parse(ISTIO_DEFAULT_RETRY_ON).unwrap_or_default(),
            backoff: None,
        }
    }
}

/// How long to wait before retry number `attempt` (1 = the first retry), `jitter` in [0, 1).
///
/// With no configured back-off: Envoy's default, 25 ms base, exponential, fully jittered (it may
/// retry at once). With one (Gateway API `retry.backoff`, "unsuccessful backend requests are not
/// retried before the configured minimum duration"): never less than it, doubling per retry up
/// to 8 times it, plus up to as much again of jitter.
pub fn retry_backoff(backoff: Option<Duration>, attempt: u32, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    match backoff {
        None => {
            let cap = Duration::from_millis(25u64 << attempt.min(4));
            scaled(cap, jitter)
        }
        Some(base) => {
            let floor = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(3));
            floor.saturating_add(scaled(floor, jitter))
        }
    }
}

/// `d` × `f` for `f` in [0, 1], as `Duration::mul_f64` computes it but without its panic when a
/// configured back-off saturated near `Duration::MAX` rounds past it in f64.
fn scaled(d: Duration, f: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * f).unwrap_or(d)
}

/// What a consistent-hash load balancer hashes (`consistentHash`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// `httpHeaderName` (lower-cased).
    Header(String),
    /// `httpCookie`.
    Cookie {
        /// The cookie's name.
        name: String,
        /// `ttl`: when set, the proxy sets the cookie on the response if the request lacked it.
        ttl: Option<Duration>,
    },
    /// `useSourceIp`: the client's address.
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParameter(String),
}

/// How a cluster picks an endpoint (`trafficPolicy.loadBalancer`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LbPolicy {
    /// `ROUND_ROBIN`.
    #[default]
    RoundRobin,
    /// `LEAST_REQUEST` (and `LEAST_CONN`, `UNSPECIFIED`): Istio's default.
    LeastRequest,
    /// `RANDOM`.
    Random,
    /// `PASSTHROUGH`.
    Passthrough,
    /// `consistentHash`: the same key goes to the same endpoint.
    ConsistentHash(HashOn),
}

impl LbPolicy {
    /// Resolves `loadBalancer`; an error is (field path, message).
    pub fn from_settings(s: &LoadBalancerSettings) -> Result<LbPolicy, (String, String)> {
        if let Some(simple) = &s.simple {
            return match simple.as_str() {
                "ROUND_ROBIN" => Ok(LbPolicy::RoundRobin),
                // UNSPECIFIED is Istio's default, which is LEAST_REQUEST since Istio 1.14.
                "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => Ok(LbPolicy::LeastRequest),
                "RANDOM" => Ok(LbPolicy::Random),
                "PASSTHROUGH" => Ok(LbPolicy::Passthrough),
                other => Err((
                    "simple".into(),
                    format!(
                        "unknown load balancer {other:?}: expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"
                    ),
                )),
            };
        }
        if let Some(ch) = &s.consistent_hash {
            if let Some(h) = &ch.http_header_name {
                return Ok(LbPolicy::ConsistentHash(HashOn::Header(h.to_ascii_lowercase())));
            }
            if let Some(c) = &ch.http_cookie {
                let ttl = c
                    .ttl
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| ("consistentHash.httpCookie.ttl".to_string(), e))?;
                return Ok(LbPolicy::ConsistentHash(HashOn::Cookie { name: c.name.clone(), ttl }));
            }
            if ch.use_source_ip == Some(true) {
                return Ok(LbPolicy::ConsistentHash(HashOn::SourceIp));
            }
            if let Some(q) = &ch.http_query_parameter_name {
                return Ok(LbPolicy::ConsistentHash(HashOn::QueryParameter(q.clone())));
            }
            // No hash key is valid Istio (config::validate warns): Envoy hashes nothing, so
            // requests spread as at random.
            return Ok(LbPolicy::Random);
        }
        Ok(LbPolicy::DEFAULT)
    }

    /// What Istio configures when a DestinationRule says nothing: LEAST_REQUEST.
    pub const DEFAULT: LbPolicy = LbPolicy::LeastRequest;
}

/// A cluster's `trafficPolicy.connectionPool`: limits the proxy enforces; None is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`.
    pub max_connections: Option<u32>,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `http.http1MaxPendingRequests`.
    pub http1_max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: concurrent requests.
    pub http2_max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`: an upstream connection is closed after this many.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`: concurrent retries to the cluster.
    pub max_retries: Option<u32>,
    /// `http.idleTimeout`: idle upstream connections are closed after this.
    pub idle_timeout: Option<Duration>,
    /// `http.h2UpgradePolicy: UPGRADE`: HTTP/1.1 ports are served to the upstream over HTTP/2.
    pub h2_upgrade: bool,
    /// `http.useClientProtocol`: the upstream gets the protocol the client used.
    pub use_client_protocol: bool,
}

/// The HTTP version the proxy speaks to a cluster's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (h2c), as Envoy does inside the mesh without TLS.
    Http2,
}

impl UpstreamProtocol {
    /// The `http::Version` to put on the upstream request.
    pub fn version(self) -> http::Version {
        match self {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::Http2 => http::Version::HTTP_2,
        }
    }

    /// Istio's choice: a port declared HTTP/2 or gRPC (`grpc`, `http2`, `h2c`, `appProtocol`) is
    /// always HTTP/2 upstream; `useClientProtocol` follows the client; `h2UpgradePolicy: UPGRADE`
    /// upgrades; a port that declares nothing (sniffed) uses the client's protocol, as Istio's
    /// auto-detection does; a port declared `http` stays HTTP/1.1 even for HTTP/2 clients.
    pub fn choose(port: crate::registry::AppProtocol, pool: &ConnectionPool, client_http2: bool) -> UpstreamProtocol {
        use crate::registry::AppProtocol;
        let client = if client_http2 { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
        match port {
            AppProtocol::Http2 => UpstreamProtocol::Http2,
            _ if pool.use_client_protocol => client,
            _ if pool.h2_upgrade => UpstreamProtocol::Http2,
            AppProtocol::Unknown => client,
            AppProtocol::Http | AppProtocol::Tcp => UpstreamProtocol::Http1,
        }
    }
}

impl ConnectionPool {
    /// Resolves `connectionPool`; an error is (field path, message).
    pub fn from_settings(s: &ConnectionPoolSettings) -> Result<ConnectionPool, (String, String)> {
        let dur = |field: &str, v: &Option<String>| {
            v.as_deref().map(parse_duration).transpose().map_err(|e| (field.to_string(), e))
        };
        // Counts are int32 in Istio's API, negative ones rejected by config::validate.
        let count = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok());
        Ok(ConnectionPool {
            max_connections: count(s.tcp.as_ref().and_then(|t| t.max_connections)),
            connect_timeout: dur("tcp.connectTimeout", &s.tcp.as_ref().and_then(|t| t.connect_timeout.clone()))?,
            http1_max_pending_requests: count(s.http.as_ref().and_then(|h| h.http1_max_pending_requests)),
            http2_max_requests: count(s.http.as_ref().and_then(|h| h.http2_max_requests)),
            max_requests_per_connection: count(s.http.as_ref().and_then(|h| h.max_requests_per_connection)),
            max_retries: count(s.http.as_ref().and_then(|h| h.max_retries)),
            idle_timeout: dur("http.idleTimeout", &s.http.as_ref().and_then(|h| h.idle_timeout.clone()))?,
            h2_upgrade: match s.http.as_ref().and_then(|h| h.h2_upgrade_policy.as_deref()) {
                None | Some("DEFAULT") | Some("DO_NOT_UPGRADE") => false,
                Some("UPGRADE") => true,
                // The CRD's enum, with the API server's words.
                Some(other) => {
                    return Err((
                        "http.h2UpgradePolicy".into(),
                        format!(
                            "Unsupported value: {:?}: supported values: \"DEFAULT\", \"DO_NOT_UPGRADE\", \"UPGRADE\"",
                            crate::config::cut(other, 60)
                        ),
                    ))
                }
            },
            use_client_protocol: s.http.as_ref().and_then(|h| h.use_client_protocol).unwrap_or(false),
        })
    }
}

/// A cluster's `trafficPolicy.outlierDetection`, Envoy's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `consecutive5xxErrors`: ejected after this many 5xx in a row.
    pub consecutive_5xx_errors: Option<u32>,
    /// `consecutiveGatewayErrors`: ejected after this many 502/503/504 in a row.
    pub consecutive_gateway_errors: Option<u32>,
    /// `interval`: each interval an endpoint stays in lowers its ejection multiplier by one.
    pub interval: Duration,
    /// `baseEjectionTime`: the first ejection's length, multiplied by the number of ejections.
    pub base_ejection_time: Duration,
    /// `maxEjectionPercent`: at most this share of the endpoints is ejected at once.
    pub max_ejection_percent: u32,
}

impl OutlierDetection {
    /// Envoy's defaults where Istio leaves a field out (5 consecutive 5xx, 10 s, 30 s, 10%).
    pub fn from_settings(s: &OutlierDetectionSettings) -> Result<OutlierDetection, (String, String)> {
        let dur = |field: &str, v: &Option<String>, d: u64| {
            v.as_deref()
                .map(parse_duration)
                .transpose()
                .map(|o| o.unwrap_or(Duration::from_secs(d)))
                .map_err(|e| (field.to_string(), e))
        };
        let max = s.max_ejection_percent.unwrap_or(10);
        let max = match u32::try_from(max) {
            Ok(m) if m <= 100 => m,
            _ => return Err(("maxEjectionPercent".into(), format!("percentage {max} is not in range 0..100"))),
        };
        Ok(OutlierDetection {
            consecutive_5xx_errors: s.consecutive_5xx_errors.or(s.consecutive_errors).or(Some(5)),
            consecutive_gateway_errors: s.consecutive_gateway_errors,
            interval: dur("interval", &s.interval, 10)?,
            base_ejection_time: dur("baseEjectionTime", &s.base_ejection_time, 30)?,
            max_ejection_percent: max,
        })
    }
}
