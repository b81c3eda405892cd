//! DestinationRule: subsets, traffic policies, connection pools, outlier detection, client TLS.
use super::load_balancer::load_balancer;
use super::virtual_service::subset_name;
use super::{enum_value, export_to, fqdn, int32, ip_address, labels, metadata, port, q, wildcard_domain, Validation};
use crate::config::{
    cut, parse_duration, ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, HttpSettings,
    OutlierDetectionSettings, PortTrafficPolicy, Sourced, TcpSettings, TrafficPolicy, TunnelSettings,
};

/// `ValidateDestinationRule`: host, subsets (unique names, labels), every traffic policy,
/// `exportTo` and `workloadSelector`.
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
        port_traffic_policy(v, &format!("{base}.portLevelSettings[{i}]"), pl, namespace);
    }
    if let Some(t) = &tp.tunnel {
        tunnel(v, &format!("{base}.tunnel"), t);
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

/// `connectionPool.http`: non-negative int32 limits, keepalive interval and timeout.
fn http_pool(v: &mut Validation, hp: &str, h: &HttpSettings) {
    for (field, n, msg) in [
        ("http1MaxPendingRequests", h.http1_max_pending_requests, "http1 max pending requests must be non-negative"),
        ("http2MaxRequests", h.http2_max_requests, "http2 max requests must be non-negative"),
        ("maxRequestsPerConnection", h.max_requests_per_connection, "max requests per connection must be non-negative"),
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

/// `connectionPool.tcp`: connection limit, timeouts and keepalive.
fn tcp_pool(v: &mut Validation, tp: &str, t: &TcpSettings) {
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

/// One of `portLevelSettings`: a port and at least one policy.
fn port_traffic_policy(v: &mut Validation, pp: &str, pl: &PortTrafficPolicy, namespace: &str) {
    match &pl.port {
        None => v.error(pp.to_owned(), "portTrafficPolicy must have valid port"),
        Some(p) => v.check(format!("{pp}.port.number"), port(i64::from(p.number))),
    }
    if pl.outlier_detection.is_none() && pl.connection_pool.is_none() && pl.load_balancer.is_none() && pl.tls.is_none()
    {
        v.error(pp, "port traffic policy must have at least one field");
        return;
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

/// `tunnel`: CONNECT or POST to a valid host and port; not enforced.
fn tunnel(v: &mut Validation, tp_: &str, t: &TunnelSettings) {
    if let Some(p) = t.protocol.as_deref().filter(|p| !p.is_empty()) {
        if p != "CONNECT" && p != "POST" {
            v.error(format!("{tp_}.protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"");
        }
    }
    if let (Err(f), Err(i)) = (fqdn(&t.target_host), ip_address(&t.target_host)) {
        v.error(format!("{tp_}.targetHost"), format!("tunnel target host must be valid FQDN or IP address: {f}; {i}"));
    }
    if let Err(e) = port(i64::from(t.target_port)) {
        v.error(format!("{tp_}.targetPort"), format!("tunnel target port is invalid: {e}"));
    }
    v.not_enforced(tp_.to_owned());
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
        http_pool(v, &format!("{base}.http"), h);
    }
    if let Some(t) = &c.tcp {
        tcp_pool(v, &format!("{base}.tcp"), t);
    }
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
