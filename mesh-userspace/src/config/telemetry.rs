//! Istio's `Telemetry` kind (`telemetry.istio.io/v1`, `v1alpha1`): parsed strictly, validated as
//! istio/istio `pkg/config/validation` (`ValidateTelemetry`) and the CRD's schema rules do, and
//! admitted object by object like the networking kinds. Of its sections the node proxy acts on
//! `accessLogging` ([`access_logging_enabled`]); `metrics` and `tracing` are accepted and warned
//! about as not implemented.
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{cut, validate::Validation, Config, Sourced};
use crate::registry::Workload;

/// The API group.
pub const GROUP: &str = "telemetry.istio.io";
/// The versions served (the same schema).
pub const VERSIONS: &[&str] = &["v1", "v1alpha1"];
/// Istio's root namespace: a Telemetry here with no selector applies to the whole mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// Istio's built-in access-log provider (Envoy's text format to stdout); the one this mesh has.
pub const ENVOY_PROVIDER: &str = "envoy";

/// `spec` of a Telemetry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The pods it applies to (in its namespace); none: the whole namespace (or mesh, in the root).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// A Service, ServiceEntry, Gateway or GatewayClass it attaches to (waypoints and gateways).
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// The same, several.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// Tracing: accepted, not implemented.
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    /// Metrics: accepted, not implemented (the standard metrics are always on).
    #[serde(default)]
    pub metrics: Vec<Metrics>,
    /// Access logging.
    #[serde(default)]
    pub access_logging: Vec<AccessLogging>,
}

/// `selector`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a pod must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `targetRef` / `targetRefs[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// API group (`""` is core).
    #[serde(default)]
    pub group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Must be empty: Istio does not support cross-namespace references.
    #[serde(default)]
    pub namespace: String,
}

/// `providers[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// A provider of the mesh config (`envoy`, `prometheus`, ...).
    #[serde(default)]
    pub name: String,
}

/// `match` of accessLogging and tracing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSelector {
    /// `CLIENT_AND_SERVER` (default), `CLIENT`, `SERVER`.
    #[serde(default)]
    pub mode: Option<WorkloadMode>,
}

/// Which side of a request a setting is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Both.
    #[default]
    ClientAndServer,
    /// The calling side: what the node proxy does for a source workload.
    Client,
    /// The called side.
    Server,
}

/// `accessLogging[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// Which side it applies to.
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelector>,
    /// Providers; none: the providers of the level above (or the mesh default).
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Turns logging off for those providers.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// A CEL expression choosing the requests to log ([`filter`]).
    #[serde(default)]
    pub filter: Option<Filter>,
}

/// `accessLogging[].filter`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// CEL over Envoy's attributes; a request is logged when it evaluates to `true`.
    #[serde(default)]
    pub expression: String,
    /// The expression compiled at admission (None until then, or if it does not parse).
    #[serde(skip)]
    pub compiled: Option<std::sync::Arc<filter::LogFilter>>,
}

impl Filter {
    /// The compiled program: the one admission made, else compiled now (an object built without
    /// admission); None when the expression does not parse.
    pub fn program(&self) -> Option<std::sync::Arc<filter::LogFilter>> {
        self.compiled.clone().or_else(|| filter::LogFilter::compile(&self.expression).ok().map(std::sync::Arc::new))
    }
}

/// Istio's verdict on one Telemetry (`ValidateTelemetry` and the CRD rules), plus warnings for
/// what the node proxy does not do.
pub fn validate(t: &TelemetrySpec) -> Validation {
    let mut v = Validation::default();
    // validateOneOfSelectorType / the CRD's x-kubernetes-validations.
    let set = usize::from(t.selector.is_some())
        + usize::from(t.target_ref.is_some())
        + usize::from(!t.target_refs.is_empty());
    if set > 1 {
        v.error("spec", "only one of targetRefs or workloadSelector can be set");
    }
    if let Some(s) = &t.selector {
        selector(&mut v, s);
    }
    let refs = t.target_ref.iter().map(|r| ("spec.targetRef".to_string(), r));
    let refs = refs.chain(t.target_refs.iter().enumerate().map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)));
    if t.target_refs.len() > 16 {
        v.error("spec.targetRefs", "at most 16 targetRefs");
    }
    for (path, r) in refs {
        target_ref(&mut v, &path, r);
        if !t.access_logging.is_empty() {
            v.warn(&path, "a Telemetry attached by targetRef applies to waypoints and gateways, which this mesh does not have: it applies to no pod");
        }
    }
    for (i, l) in t.access_logging.iter().enumerate() {
        access_logging(&mut v, &format!("spec.accessLogging[{i}]"), l);
    }
    if t.tracing.len() > 1 {
        v.warn("spec.tracing", "multiple tracing is not currently supported");
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        tracing(&mut v, &format!("spec.tracing[{i}]"), tr);
    }
    for (i, m) in t.metrics.iter().enumerate() {
        metrics(&mut v, &format!("spec.metrics[{i}]"), m);
    }
    v
}

/// `workloadSelector`: labels without wildcards, values of at most 63 characters.
fn selector(v: &mut Validation, s: &WorkloadSelector) {
    for (k, val) in &s.match_labels {
        let path = format!("spec.selector.matchLabels.{k}");
        if k.is_empty() {
            v.error(&path, format!("empty key is not supported in selector: {:?}", format!("{k}={val}")));
        }
        if k.contains('*') || val.contains('*') {
            v.error(
                &path,
                format!("wildcard is not supported in selector: {:?}", format!("{}={}", cut(k, 60), cut(val, 60))),
            );
        }
        if val.len() > 63 {
            v.error(&path, "label value may not be longer than 63 characters");
        }
    }
    if s.match_labels.is_empty() {
        v.warn("spec.selector", "workload selector specified without labels");
    }
    if s.match_labels.len() > 4096 {
        v.error("spec.selector.matchLabels", "at most 4096 labels");
    }
}

/// One `accessLogging` entry: its providers, and its filter (CEL, parsed as Istio's
/// `validateTelemetryFilter` does: syntax only).
fn access_logging(v: &mut Validation, path: &str, l: &AccessLogging) {
    providers(v, path, &l.providers);
    for (j, p) in l.providers.iter().enumerate() {
        if !p.name.is_empty() && p.name != ENVOY_PROVIDER {
            v.warn(
                format!("{path}.providers[{j}].name"),
                format!("provider {:?} is not one this mesh has (only {ENVOY_PROVIDER:?}, Envoy's log to stdout): it is ignored", cut(&p.name, 60)),
            );
        }
    }
    if let Some(f) = &l.filter {
        if let Err(e) = filter::LogFilter::compile(&f.expression) {
            v.error(format!("{path}.filter.expression"), e.to_string());
        } else if ["duration", "timestamp", "request.time"].iter().any(|w| f.expression.contains(w)) {
            // No CEL duration/timestamp type here: `request.duration`, `request.time` and the
            // `duration()`/`timestamp()` functions are errors when evaluated, i.e. not logged.
            v.warn(
                format!("{path}.filter.expression"),
                "durations and timestamps (request.duration, request.time, duration(), timestamp()) are not available here: an expression reading one is false for every request",
            );
        }
    }
}

/// One `tracing` entry: providers, sampling percentage and custom tags (accepted, not acted on).
fn tracing(v: &mut Validation, path: &str, tr: &Tracing) {
    if tr.providers.len() > 1 {
        v.warn(path, "multiple providers is not currently supported");
    }
    providers(v, path, &tr.providers);
    if let Some(p) = tr.random_sampling_percentage {
        if !(0.0..=100.0).contains(&p) {
            v.error(
                format!("{path}.randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
    }
    for (name, tag) in &tr.custom_tags {
        custom_tag(v, &format!("{path}.customTags.{name}"), name, tag);
    }
    v.warn(path, "tracing is not implemented by the node proxy: accepted, no spans are sent");
}

/// One custom tag: a name and exactly one non-empty source.
fn custom_tag(v: &mut Validation, tp: &str, name: &str, tag: &CustomTag) {
    if name.is_empty() {
        v.error(tp, "tag name may not be empty");
    }
    let set = [tag.literal.is_some(), tag.environment.is_some(), tag.header.is_some(), tag.formatter.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        v.error(tp, "only one of literal, environment, header or formatter may be set");
    }
    if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
        v.error(format!("{tp}.literal.value"), "literal tag value may not be empty");
    }
    if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
        v.error(format!("{tp}.header.name"), "header tag name may not be empty");
    }
    if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
        v.error(format!("{tp}.environment.name"), "environment tag name may not be empty");
    }
    if tag.formatter.as_ref().is_some_and(|f| f.value.is_empty()) {
        v.error(format!("{tp}.formatter.value"), "formatter tag value may not be empty");
    }
}

/// One `metrics` entry: providers, reporting interval and tag overrides (accepted, not acted on).
fn metrics(v: &mut Validation, path: &str, m: &Metrics) {
    providers(v, path, &m.providers);
    if let Some(d) = &m.reporting_interval {
        let ok = super::parse_duration(d).is_ok_and(|d| d >= std::time::Duration::from_millis(1));
        if !ok {
            v.error(format!("{path}.reportingInterval"), "must be a valid duration greater than 1ms");
        }
    }
    for (j, o) in m.overrides.iter().enumerate() {
        let op = format!("{path}.overrides[{j}]");
        for (tag, to) in &o.tag_overrides {
            let tp = format!("{op}.tagOverrides.{tag}");
            if tag.is_empty() {
                v.warn(&tp, "tagOverrides.name may not be empty");
            }
            match to.operation {
                // UPSERT is the default operation.
                None | Some(TagOperation::Upsert) if to.value.as_deref().unwrap_or("").is_empty() => {
                    v.error(&tp, "value must be set when operation is UPSERT");
                }
                Some(TagOperation::Remove) if to.value.is_some() => {
                    v.error(&tp, "value must not be set when operation is REMOVE");
                }
                _ => {}
            }
        }
        if let Some(mm) = &o.match_ {
            if mm.metric.is_some() && mm.custom_metric.is_some() {
                v.error(format!("{op}.match"), "only one of metric or customMetric may be set");
            }
            if mm.custom_metric.as_deref() == Some("") {
                v.error(format!("{op}.match.customMetric"), "customMetric may not be empty");
            }
        }
    }
    v.warn(path, "metrics customisation is not implemented by the node proxy: accepted, the standard metrics are reported unchanged");
}

/// `validateTelemetryProviders` and the CRD's `minLength: 1`.
fn providers(v: &mut Validation, path: &str, providers: &[ProviderRef]) {
    for (i, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            v.error(format!("{path}.providers[{i}].name"), "providers.name may not be empty");
        }
    }
}

/// `validatePolicyTargetReference` and the CRD's patterns.
fn target_ref(v: &mut Validation, path: &str, r: &TargetRef) {
    if r.name.is_empty() {
        v.error(format!("{path}.name"), "targetRef name must be set");
    }
    if r.name.len() > 253 {
        v.error(format!("{path}.name"), "may not be longer than 253 characters");
    }
    if !r.namespace.is_empty() {
        v.error(
            format!("{path}.namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if r.group.is_empty() { "core" } else { r.group.as_str() };
    let allowed = [
        ("core", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    ];
    if !allowed.contains(&(group, r.kind.as_str())) {
        v.error(
            format!("{path}.kind"),
            format!(
                "targetRef must be to one of Service, ServiceEntry, gateway.networking.k8s.io Gateway or GatewayClass but was {}/{}",
                cut(&r.group, 60),
                cut(&r.kind, 60)
            ),
        );
    }
}

fn mode_applies(m: Option<&ModeSelector>, mode: WorkloadMode) -> bool {
    match m.and_then(|m| m.mode) {
        None | Some(WorkloadMode::ClientAndServer) => true,
        Some(m) => m == mode,
    }
}

/// The Telemetries that apply to `source`, in Istio's order (each overrides the ones before):
/// the root namespace's mesh-wide one, its namespace's namespace-wide one, then every one in its
/// namespace whose selector matches its labels. Istio takes the oldest of several namespace-wide
/// ones; with no creation time here, the first by name. A Telemetry with a targetRef attaches
/// to waypoints and gateways, never to a pod.
fn applicable<'a>(config: &'a Config, source: &Workload) -> Vec<&'a Sourced<TelemetrySpec>> {
    let namespace_wide = |ns: &str| {
        config
            .telemetries
            .iter()
            .filter(|t| t.namespace == ns && is_namespace_wide(&t.spec))
            .min_by(|a, b| a.name.cmp(&b.name))
    };
    let mut out: Vec<&Sourced<TelemetrySpec>> = Vec::new();
    out.extend(namespace_wide(ROOT_NAMESPACE));
    if source.namespace != ROOT_NAMESPACE {
        out.extend(namespace_wide(&source.namespace));
    }
    let mut selected: Vec<&Sourced<TelemetrySpec>> = config
        .telemetries
        .iter()
        .filter(|t| t.namespace == source.namespace)
        .filter(|t| {
            t.spec.selector.as_ref().is_some_and(|s| {
                !s.match_labels.is_empty() && s.match_labels.iter().all(|(k, v)| source.labels.get(k) == Some(v))
            })
        })
        .collect();
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(selected);
    out
}

fn is_namespace_wide(t: &TelemetrySpec) -> bool {
    t.selector.as_ref().is_none_or(|s| s.match_labels.is_empty()) && t.target_ref.is_none() && t.target_refs.is_empty()
}

/// The access-log providers enabled for requests `source` sends, Istio's `mergeLogs` for the
/// client side: the levels' `accessLogging` entries in order, an entry with no providers meaning
/// the providers of the entry before it (at first `default_providers`, the mesh config's
/// `defaultProviders.accessLogging`), a `disabled: true` entry turning its providers off. With
/// no Telemetry at all, the default providers.
pub fn access_log_providers(config: &Config, source: &Workload, default_providers: &[&str]) -> BTreeSet<String> {
    access_log_filters(config, source, default_providers).into_keys().collect()
}

/// [`access_log_providers`] with each enabled provider's filter, as Istio's `mergeLogs` picks
/// it: the filter of the last entry (of any level, for this side) that names the provider in its
/// `providers`; an entry with no `providers`, or a default provider never named, has none.
pub fn access_log_filters<'a>(
    config: &'a Config,
    source: &Workload,
    default_providers: &[&str],
) -> BTreeMap<String, Option<&'a Filter>> {
    let mode = WorkloadMode::Client;
    let levels: Vec<&[AccessLogging]> = applicable(config, source)
        .into_iter()
        .map(|t| t.spec.access_logging.as_slice())
        .filter(|l| !l.is_empty())
        .collect();
    let defaults = || default_providers.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    if levels.is_empty() {
        return defaults().into_iter().map(|p| (p, None)).collect();
    }
    let names = |l: &AccessLogging| l.providers.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let mut filters: BTreeMap<String, Option<&Filter>> = BTreeMap::new();
    for l in levels.iter().flat_map(|level| level.iter()).filter(|l| mode_applies(l.match_.as_ref(), mode)) {
        for p in names(l) {
            filters.insert(p, l.filter.as_ref());
        }
    }
    // Which providers are in scope: those the last level naming any (for this side) names.
    let mut in_scope = defaults();
    for level in &levels {
        let named: BTreeSet<String> =
            level.iter().filter(|l| mode_applies(l.match_.as_ref(), mode)).flat_map(names).collect();
        if !named.is_empty() {
            in_scope = named.into_iter().collect();
        }
    }
    // Per provider: Some(filter) enabled, None disabled.
    let mut enabled: BTreeMap<String, Option<Option<&Filter>>> = BTreeMap::new();
    let mut parent = defaults();
    for l in levels.iter().flat_map(|level| level.iter()) {
        let mut providers = names(l);
        if providers.is_empty() {
            providers = parent.clone();
        }
        parent = providers.clone();
        if !mode_applies(l.match_.as_ref(), mode) {
            continue;
        }
        for p in providers.into_iter().filter(|p| in_scope.contains(p)) {
            let on = (!l.disabled.unwrap_or(false)).then(|| filters.get(&p).copied().flatten());
            enabled.insert(p, on);
        }
    }
    enabled.into_iter().filter_map(|(p, f)| f.map(|f| (p, f))).collect()
}

/// Whether the Telemetry objects in `config` turn Envoy's access log (provider `envoy`) on for
/// the requests `source` sends, with Istio's default of no default provider (logging off unless
/// a Telemetry enables it). Pure: the proxy's access-log switch is set from it.
pub fn access_logging_enabled(config: &Config, source: &Workload) -> bool {
    access_log_providers(config, source, &[]).contains(ENVOY_PROVIDER)
}

mod checked;
pub mod filter;

pub use self::checked::{
    CustomTag, IstioMetric, MetricSelector, Metrics, MetricsOverride, TagNamed, TagOperation, TagOverride, TagValue,
    Tracing,
};

#[cfg(test)]
mod tests;

impl Config {
    /// One `telemetry.istio.io` document: a Telemetry admitted on its own, or rejected with
    /// `file:line:col` errors like the networking kinds.
    pub(super) fn add_telemetry_document(
        &mut self,
        (text, line_offset): (&str, usize),
        at: std::sync::Arc<super::Locator>,
        api_version: &str,
        kind: &str,
        name: String,
        namespace: String,
    ) -> Result<(), (Option<super::ObjectKey>, Vec<super::ConfigError>)> {
        let key = (kind == "Telemetry").then(|| super::ObjectKey {
            kind: "Telemetry",
            namespace: namespace.clone(),
            name: name.clone(),
        });
        let reject = |path: &str, msg: String| Err((key.clone(), vec![at.error(path, msg)]));
        if kind != "Telemetry" {
            if kind.eq_ignore_ascii_case("Telemetry") {
                return reject(
                    "kind",
                    format!("unknown kind {:?}: kinds are case-sensitive; did you mean Telemetry?", cut(kind, 40)),
                );
            }
            if kind.is_empty() {
                return reject("kind", "missing `kind`: expected Telemetry".into());
            }
            return reject("kind", format!("unknown kind {:?} in {GROUP}", cut(kind, 40)));
        }
        let version = api_version.split('/').nth(1).unwrap_or("");
        if !VERSIONS.contains(&version) {
            return reject(
                "apiVersion",
                format!("unsupported apiVersion {:?}: Telemetry is {GROUP}/v1 (or v1alpha1)", cut(api_version, 60)),
            );
        }
        if name.is_empty() {
            return reject("metadata.name", "missing metadata.name".into());
        }
        if let Err(e) = super::check_object_name(&name).and_then(|()| super::check_object_name(&namespace)) {
            return reject("metadata", e);
        }
        let r: super::Resource<TelemetrySpec> =
            super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
        let o = super::sourced(r, at);
        let v = validate(&o.spec);
        self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
        if !v.errors.is_empty() {
            return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
        }
        let mut o = o;
        for f in o.spec.access_logging.iter_mut().filter_map(|l| l.filter.as_mut()) {
            // Parsed once more (validation did not keep it): the proxy evaluates this one.
            f.compiled = f.program();
        }
        super::upsert(&mut self.telemetries, o, kind, &mut self.skipped);
        Ok(())
    }
}
