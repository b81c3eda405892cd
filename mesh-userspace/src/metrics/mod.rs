//! Prometheus metrics of the proxy and agent, kept in a `prometheus-client` registry and served
//! at `/metrics` in the OpenMetrics text format.
//!
//! Two kinds live here:
//! * the agent's own counters (`mesh_*`: reloads, enrollments, overflows, timeouts...), few and
//!   off the per-request path, labelled with a small `Vec` of pairs;
//! * Istio's standard metrics (`istio_requests_total`, the duration and size histograms, the TCP
//!   counters) with Istio's names, label names and buckets, recorded per request. Their label
//!   sets are built from parts resolved once — the source pod's labels per pod listener, the
//!   destination service's and endpoints' per cluster — and the metric handles for a label set are
//!   cached per downstream connection, so a request neither builds a String nor takes a lock
//!   shared with other connections.
//!
//! The label sets, their parts and the values of Istio's labels are in [`labels`].
use std::{collections::HashMap, fmt::Write as _, sync::Mutex};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

mod labels;

pub use self::labels::{
    workload_name, ClusterLabels, Flags, PeerLabels, Protocol, Reporter, ServiceLabels, TrafficLabels,
};

/// The `Content-Type` of the exposition `render` produces (what Prometheus negotiates for
/// OpenMetrics; ztunnel answers the same).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the agent's own counters: a few pairs, built only where the event is rare.
type DynLabels = Vec<(&'static str, String)>;

/// The agent's own counters: name (as exposed, with `_total`) and help.
const COUNTERS: &[(&str, &str)] = &[
    ("mesh_config_reloads_total", "Routing config reloads, by result (applied, partial, failed)"),
    ("mesh_config_objects_rejected_total", "Routing objects rejected by admission, by object"),
    ("mesh_config_compile_panics_total", "Routing config compilations that panicked (nothing applied)"),
    ("mesh_pod_enrollments_total", "Pod enrollments, by result"),
    ("mesh_connections_rejected_total", "Redirected connections closed before serving, by reason"),
    ("mesh_tcp_connections_total", "TCP (L4) connections proxied, by source, service and result"),
    ("mesh_overflow_total", "Requests refused by a cluster's connection pool limits (circuit breaker)"),
    ("mesh_retry_overflow_total", "Retries not made because the cluster's maxRetries were outstanding"),
    ("mesh_downstream_timeouts_total", "Client connections or requests ended by a downstream timeout"),
    ("mesh_tls_handshake_failures_total", "TLS handshakes on ingress Gateway ports that failed or timed out"),
    ("mesh_downstream_overflow_total", "Connections or requests refused by a source workload's caps"),
    (
        "mesh_overload_shed_total",
        "Connections refused, requests refused and requests reset by the overload manager, by source and action",
    ),
    ("mesh_access_log_dropped_total", "Access log lines dropped because the writer fell behind"),
    (
        "mesh_fair_share_total",
        "Requests of a source workload the event loop's fairness made wait (queued) or refused, by source and action",
    ),
];

/// The agent's own gauges.
const GAUGES: &[(&str, &str)] = &[
    ("mesh_config_generation", "Routing config reloads admitted since start"),
    ("mesh_config_version_info", "The live routing ConfigMap version (the ..data target it was read from)"),
];

/// Envoy's default histogram buckets, which Istio's standard histograms use (duration in
/// milliseconds, sizes in bytes) unless a pod annotation overrides them.
pub const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

fn istio_histogram() -> Histogram {
    Histogram::new(ISTIO_BUCKETS)
}

type HistogramFamily = Family<TrafficLabels, Histogram, fn() -> Histogram>;

/// Istio's standard metrics.
pub struct IstioMetrics {
    requests: Family<TrafficLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    tcp_opened: Family<TrafficLabels, Counter>,
    tcp_closed: Family<TrafficLabels, Counter>,
    tcp_sent: Family<TrafficLabels, Counter>,
    tcp_received: Family<TrafficLabels, Counter>,
}

/// The handles of one request label set (each a shared atomic): what a connection caches.
#[derive(Clone)]
pub struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestHandles {
    /// Records one request.
    pub fn record(&self, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

impl IstioMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = IstioMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(istio_histogram as fn() -> Histogram),
            request_bytes: Family::new_with_constructor(istio_histogram as fn() -> Histogram),
            response_bytes: Family::new_with_constructor(istio_histogram as fn() -> Histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
        };
        registry.register("istio_requests", "Requests, as Istio's istio_requests_total", m.requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request durations in milliseconds, until the response's last byte",
            m.duration.clone(),
        );
        registry.register("istio_request_bytes", "Request sizes (head and body) in bytes", m.request_bytes.clone());
        registry.register("istio_response_bytes", "Response sizes (head and body) in bytes", m.response_bytes.clone());
        registry.register("istio_tcp_connections_opened", "TCP connections opened", m.tcp_opened.clone());
        registry.register("istio_tcp_connections_closed", "TCP connections closed", m.tcp_closed.clone());
        registry.register("istio_tcp_sent_bytes", "Bytes sent to the client of a TCP connection", m.tcp_sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client of a TCP connection",
            m.tcp_received.clone(),
        );
        m
    }

    /// The handles for `labels` (created on first use). Takes the families' locks: callers on
    /// the request path go through a [`HandleCache`].
    pub fn request_handles(&self, labels: &TrafficLabels) -> RequestHandles {
        RequestHandles {
            requests: self.requests.get_or_create_owned(labels),
            duration: self.duration.get_or_create_owned(labels),
            request_bytes: self.request_bytes.get_or_create_owned(labels),
            response_bytes: self.response_bytes.get_or_create_owned(labels),
        }
    }

    /// Counts a TCP connection opened.
    pub fn tcp_opened(&self, labels: &TrafficLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// Counts a TCP connection closed (its last bytes are reported by [`Self::tcp_bytes`] first).
    pub fn tcp_closed(&self, labels: &TrafficLabels) {
        self.tcp_closed.get_or_create(labels).inc();
    }

    /// Adds bytes a TCP connection carried (`sent` to the client, `received` from it): at every
    /// reporting interval while it is open, and the rest at close.
    pub fn tcp_bytes(&self, labels: &TrafficLabels, sent: u64, received: u64) {
        if sent > 0 {
            self.tcp_sent.get_or_create(labels).inc_by(sent);
        }
        if received > 0 {
            self.tcp_received.get_or_create(labels).inc_by(received);
        }
    }
}

/// Per-connection cache of request metric handles: one connection's requests look their label
/// set up here (a lock no other connection takes) and reach the shared families only for a label
/// set the connection has not used yet.
#[derive(Default)]
pub struct HandleCache(Mutex<HashMap<TrafficLabels, RequestHandles>>);

/// A connection talking to more distinct label sets than this starts its cache over (a client
/// cycling through response codes or destinations cannot grow it without bound).
const HANDLE_CACHE_MAX: usize = 64;

impl HandleCache {
    /// The handles of `labels`, from the cache or from `metrics`.
    pub fn get(&self, metrics: &IstioMetrics, labels: &TrafficLabels) -> RequestHandles {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = c.get(labels) {
            return h.clone();
        }
        if c.len() >= HANDLE_CACHE_MAX {
            c.clear();
        }
        let h = metrics.request_handles(labels);
        c.insert(labels.clone(), h.clone());
        h
    }
}

/// The agent's counters and Istio's request metrics, served at `/metrics`.
pub struct Metrics {
    registry: Registry,
    counters: HashMap<&'static str, Family<DynLabels, Counter>>,
    gauges: HashMap<&'static str, Family<DynLabels, Gauge>>,
    /// Istio's standard metrics.
    pub istio: IstioMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counters = HashMap::new();
        for (name, help) in COUNTERS {
            let f = Family::<DynLabels, Counter>::default();
            // prometheus-client appends `_total` to a counter's samples itself (and a full stop to the
            // help text).
            registry.register(name.strip_suffix("_total").unwrap_or(name), *help, f.clone());
            counters.insert(*name, f);
        }
        let mut gauges = HashMap::new();
        for (name, help) in GAUGES {
            let f = Family::<DynLabels, Gauge>::default();
            registry.register(*name, *help, f.clone());
            gauges.insert(*name, f);
        }
        let istio = IstioMetrics::new(&mut registry);
        Metrics { registry, counters, gauges, istio }
    }
}

fn dyn_labels(labels: &[(&'static str, &str)]) -> DynLabels {
    labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Metrics {
    /// Adds `n` to counter `name` (one of the agent's `mesh_*` counters) with `labels`. A gauge
    /// name (`mesh_config_generation`) is incremented as a gauge.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        if let Some(f) = self.counters.get(name) {
            f.get_or_create(&dyn_labels(labels)).inc_by(n);
        } else if let Some(f) = self.gauges.get(name) {
            f.get_or_create(&dyn_labels(labels)).inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        } else {
            // A name missing from COUNTERS is a bug in this crate, never input: say so loudly
            // rather than panic the proxy.
            tracing::error!(metric = name, "counter not registered; not counted");
        }
    }

    /// Adds 1 to counter `name` with `labels`.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    /// Sets info gauge `name` to `labels` (the previous label set is gone, so a value that changes
    /// forever, like a config version, does not grow the exposition).
    pub fn set_info(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        if let Some(f) = self.gauges.get(name) {
            f.clear();
            f.get_or_create(&dyn_labels(labels)).set(1);
        } else {
            tracing::error!(metric = name, "gauge not registered; not set");
        }
    }

    /// The sum of the samples named `name` (as exposed: `x_total`, `x_bucket`, `x_count`...) over
    /// every series whose labels include `labels`. Renders the whole exposition: for tests and
    /// readiness waits, not the request path.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.render(&[], "");
        text.lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
            .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// The OpenMetrics text exposition: the registry, then `extra` counters (the kernel's, read
    /// at scrape time) and `more` (already rendered gauge families), then `# EOF`.
    pub fn render(&self, extra: &[(&str, u64)], more: &str) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        for (name, v) in extra {
            let family = name.strip_suffix("_total").unwrap_or(name);
            let _ = writeln!(out, "# TYPE {family} counter\n{family}_total {v}");
        }
        out.push_str(more);
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::Workload;

    #[test]
    fn counts_and_renders_with_escaping() {
        let m = Metrics::default();
        m.inc("mesh_overflow_total", &[("cluster", "reviews")]);
        m.inc("mesh_overflow_total", &[("cluster", "reviews")]);
        m.inc("mesh_overflow_total", &[("cluster", "a\"b")]);
        assert_eq!(m.get("mesh_overflow_total", &[("cluster", "reviews")]), 2);
        assert_eq!(m.get("mesh_overflow_total", &[]), 3);
        let text = m.render(&[("mesh_kernel_redirects_total", 7)], "");
        assert!(text.contains("# TYPE mesh_overflow counter"), "{text}");
        assert!(text.contains("mesh_overflow_total{cluster=\"reviews\"} 2"), "{text}");
        assert!(text.contains("cluster=\"a\\\"b\""), "{text}");
        assert!(text.contains("# TYPE mesh_kernel_redirects counter\nmesh_kernel_redirects_total 7"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn an_info_gauge_holds_only_its_latest_labels() {
        let m = Metrics::default();
        m.set_info("mesh_config_version_info", &[("version", "..gen1")]);
        m.set_info("mesh_config_version_info", &[("version", "..gen\"2")]);
        let text = m.render(&[], "");
        assert!(text.contains("mesh_config_version_info{version=\"..gen\\\"2\"} 1"), "{text}");
        assert!(!text.contains("..gen1"), "{text}");
    }

    fn pod(name: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: name.into(),
            namespace: "default".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ip: None,
            container_ports: Vec::new(),
            netns: None,
            cgroup: None,
            enroll: true,
            caps: Default::default(),
        }
    }

    #[test]
    fn istio_labels_of_a_pod_and_request_series_render_with_istio_names_and_buckets() {
        let src = Arc::new(PeerLabels::of(&pod(
            "productpage-v1-6b746f74dc-9stvt",
            &[("app", "productpage"), ("version", "v1"), ("pod-template-hash", "6b746f74dc")],
        )));
        assert_eq!(src.workload, "productpage-v1");
        let dst = Arc::new(PeerLabels::of(&pod("reviews-v2", &[("app", "reviews"), ("version", "v2")])));
        let svc = Arc::new(ServiceLabels::build(
            "reviews.default.svc.cluster.local".into(),
            "reviews".into(),
            "default".into(),
        ));
        let m = Metrics::default();
        let mut flags = Flags::default();
        flags.set(Flags::DC);
        flags.set(Flags::DI);
        let labels = TrafficLabels {
            reporter: Reporter::Source,
            source: src,
            destination: dst,
            service: svc,
            protocol: Protocol::Http,
            code: 0,
            grpc_status: None,
            flags,
        };
        m.istio.request_handles(&labels).record(7.0, 100, 0);
        let text = m.render(&[], "");
        let line = text.lines().find(|l| l.starts_with("istio_requests_total{")).expect(&text);
        for want in [
            "reporter=\"source\"",
            "source_workload=\"productpage-v1\"",
            "source_app=\"productpage\"",
            "source_version=\"v1\"",
            "source_principal=\"unknown\"",
            "source_cluster=\"Kubernetes\"",
            "destination_workload=\"reviews-v2\"",
            "destination_version=\"v2\"",
            "destination_service=\"reviews.default.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "request_protocol=\"http\"",
            "response_code=\"0\"",
            "grpc_response_status=\"\"",
            "response_flags=\"DI,DC\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        assert!(line.ends_with("} 1"), "{line}");
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"), "{text}");
        assert!(text.contains("le=\"3600000.0\""), "{text}");
        assert_eq!(m.get("istio_request_duration_milliseconds_count", &[("response_flags", "DI,DC")]), 1);
        assert_eq!(m.get("istio_request_bytes_sum", &[]), 100);
    }
}
