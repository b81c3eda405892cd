//! The `tracing` and `metrics` sections of a Telemetry: parsed strictly and checked as Istio
//! does, then warned about, since the node proxy does not apply them.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ModeSelector, ProviderRef, WorkloadMode};

/// `tracing[]` (not implemented: checked, then warned about).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Which side of a request the tracing is for.
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelector>,
    /// The tracing providers of the mesh config.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// The share of requests traced, 0 to 100.
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    /// Propagates the trace context without reporting spans.
    #[serde(default)]
    pub disable_span_reporting: Option<bool>,
    /// Does not propagate the trace context.
    #[serde(default)]
    pub disable_context_propagation: Option<bool>,
    /// Adds Istio's own tags to spans.
    #[serde(default)]
    pub enable_istio_tags: Option<bool>,
    /// Samples by `x-request-id` rather than at random.
    #[serde(default)]
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Tags added to every span, by name.
    #[serde(default)]
    pub custom_tags: BTreeMap<String, CustomTag>,
}

/// `tracing[].customTags.<name>`: exactly one of its fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    /// A fixed value.
    #[serde(default)]
    pub literal: Option<TagValue>,
    /// The value of an environment variable of the proxy.
    #[serde(default)]
    pub environment: Option<TagNamed>,
    /// The value of a request header.
    #[serde(default)]
    pub header: Option<TagNamed>,
    /// An access-log format string.
    #[serde(default)]
    pub formatter: Option<TagValue>,
}

/// A literal or formatter tag.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagValue {
    /// The literal value or the format string.
    #[serde(default)]
    pub value: String,
}

/// An environment or header tag.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagNamed {
    /// The environment variable's or header's name.
    #[serde(default)]
    pub name: String,
    /// The value when it is not set.
    #[serde(default)]
    pub default_value: Option<String>,
}

/// `metrics[]` (not implemented: checked, then warned about).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// The metrics providers of the mesh config (`prometheus`).
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Changes to the standard metrics, applied in order.
    #[serde(default)]
    pub overrides: Vec<MetricsOverride>,
    /// How often TCP metrics are reported, a duration (`15s`).
    #[serde(default)]
    pub reporting_interval: Option<String>,
}

/// `metrics[].overrides[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverride {
    /// The metrics this override applies to (all when absent).
    #[serde(default, rename = "match")]
    pub match_: Option<MetricSelector>,
    /// Turns the selected metrics off.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Labels to add, change or remove, by label name.
    #[serde(default)]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `metrics[].overrides[].match`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's standard metrics.
    #[serde(default)]
    pub metric: Option<IstioMetric>,
    /// A metric by its name.
    #[serde(default)]
    pub custom_metric: Option<String>,
    /// Which side of a request the metrics are for.
    #[serde(default)]
    pub mode: Option<WorkloadMode>,
}

/// The standard metrics a Telemetry can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// Every standard metric.
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total`.
    GrpcRequestMessages,
    /// `istio_response_messages_total`.
    GrpcResponseMessages,
}

/// `tagOverrides.<tag>`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (default) or `REMOVE`.
    #[serde(default)]
    pub operation: Option<TagOperation>,
    /// The label's value, a CEL expression (for `UPSERT`).
    #[serde(default)]
    pub value: Option<String>,
}

/// `tagOverrides.<tag>.operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    /// Adds the label or replaces its value.
    Upsert,
    /// Removes the label.
    Remove,
}
