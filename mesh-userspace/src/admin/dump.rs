//! `/config_dump`: what the agent runs on, as JSON. View structs built from the live state on
//! each request (the live config is published by the agent after each reload, the clusters are
//! the proxy's route table, endpoint health is the load balancer's), so a dump never costs the
//! proxy or a reload anything.
use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use serde::Serialize;

use crate::{
    admission::RejectedObject,
    config::{Locator, ObjectKey},
    proxy::ProxyState,
    reload::Applied,
    routing::{Cluster, LbPolicy},
    settings::Settings,
};

/// The whole dump.
#[derive(Debug, Serialize)]
pub struct ConfigDump {
    /// The routing objects: every live one, every rejected one.
    pub config: ConfigView,
    /// The compiled clusters with their endpoints and health.
    pub clusters: Vec<ClusterView>,
    /// The pods this agent has enrolled.
    pub pods: Vec<PodView>,
    /// The flags' values and the build's fixed tunables (`settings.rs`).
    pub settings: Settings,
}

/// The routing config as last admitted.
#[derive(Debug, Serialize)]
pub struct ConfigView {
    /// The mounted ConfigMap's version (its `..data` target), None for a plain directory.
    pub version: Option<String>,
    /// Reloads applied since the agent started (`mesh_config_generation`).
    pub generation: u64,
    /// Every object, live or rejected, by kind, namespace and name.
    pub objects: Vec<ObjectView>,
    /// Files that could not be read as YAML at all (everything last loaded from them stays).
    pub rejected_files: Vec<RejectedFileView>,
    /// Istio's warnings about accepted objects and references nobody defines.
    pub warnings: Vec<String>,
}

/// One routing object.
#[derive(Debug, Serialize)]
pub struct ObjectView {
    /// `VirtualService`, `DestinationRule`, `Gateway`, `HTTPRoute`...
    pub kind: &'static str,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `accepted`, or `rejected` (the errors say why).
    pub status: Status,
    /// Where the version that is live came from; None when no version of it is live.
    pub live_source: Option<SourceView>,
    /// The rejection's errors (`file:line:col: field: reason`); empty when accepted.
    pub errors: Vec<String>,
}

/// Whether the last reload accepted an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Live as written.
    Accepted,
    /// Its newest version was rejected; `live_source` says whether an older one serves.
    Rejected,
}

/// Where an object came from: a file and line (`{"file": "...", "line": 3}`), or an object of
/// the API server (`{"api_object": "VirtualService/default/reviews"}`).
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SourceView {
    /// A file of the `--config` directory, and the line the document starts on.
    File {
        /// The file, as the agent was given it.
        file: String,
        /// 1-based line.
        line: usize,
    },
    /// An object read from the API server (`--istio-crds`).
    ApiObject {
        /// `Kind/namespace/name`.
        api_object: String,
    },
}

impl SourceView {
    fn of(at: &Locator) -> SourceView {
        // discovery::istio names API objects `k8s:Kind/namespace/name`.
        match at.file.strip_prefix("k8s:") {
            Some(object) => SourceView::ApiObject { api_object: object.to_owned() },
            None => SourceView::File { file: at.file.to_string(), line: at.first_line() },
        }
    }
}

/// A file no object could be read from.
#[derive(Debug, Serialize)]
pub struct RejectedFileView {
    /// The file.
    pub file: String,
    /// Why.
    pub errors: Vec<String>,
    /// Objects last loaded from it are still live.
    pub kept_previous: bool,
}

/// One compiled cluster (Envoy's naming: `outbound|port|subset|host`).
#[derive(Debug, Serialize)]
pub struct ClusterView {
    /// `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// The Kubernetes service, `namespace/name`.
    pub service: String,
    /// The service port.
    pub port: u16,
    /// The DestinationRule subset; None: all endpoints.
    pub subset: Option<String>,
    /// Istio's name of the load-balancer policy.
    pub load_balancer: &'static str,
    /// Outlier detection, when the DestinationRule sets it.
    pub outlier_detection: Option<OutlierView>,
    /// The pods behind it.
    pub endpoints: Vec<EndpointView>,
}

/// `trafficPolicy.outlierDetection` as the proxy applies it (defaults filled in).
#[derive(Debug, Serialize)]
pub struct OutlierView {
    /// `consecutive5xxErrors`.
    pub consecutive_5xx_errors: Option<u32>,
    /// `consecutiveGatewayErrors`.
    pub consecutive_gateway_errors: Option<u32>,
    /// `interval`, in milliseconds.
    pub interval_ms: u128,
    /// `baseEjectionTime`, in milliseconds.
    pub base_ejection_time_ms: u128,
    /// `maxEjectionPercent`.
    pub max_ejection_percent: u32,
}

/// One endpoint of a cluster.
#[derive(Debug, Serialize)]
pub struct EndpointView {
    /// `ip:port`.
    pub address: String,
    /// The pod.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels (what subsets select on).
    pub labels: BTreeMap<String, String>,
    /// Outlier detection has it ejected now (requests skip it).
    pub ejected: bool,
    /// For how many more milliseconds it stays ejected (absent when it is not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
}

/// A pod the agent enrolled: its listener runs in the pod's network namespace and its cgroup is
/// in the kernel's enrollment map.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PodView {
    /// Pod name (the source workload its requests are reported as).
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// `status.podIP`.
    pub ip: Option<Ipv4Addr>,
    /// Its labels (`app`, `version`, ... as routing sees them).
    pub labels: BTreeMap<String, String>,
    /// The network namespace the listener was opened in.
    pub netns: PathBuf,
    /// The kernel's cookie of that network namespace (what original destinations are keyed by).
    pub netns_cookie: u64,
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
    /// Its cgroup id (the enrollment map's key).
    pub cgroup_id: u64,
}

/// What the agent publishes for the dump beyond the proxy's own tables.
#[derive(Debug, Default)]
pub struct Published {
    /// The last applied reload and the generation it was.
    pub config: arc_swap::ArcSwap<(Applied, u64)>,
    /// The enrolled pods.
    pub pods: arc_swap::ArcSwap<Vec<PodView>>,
    /// What the agent runs with, fixed for its lifetime.
    pub settings: Settings,
}

impl Published {
    /// Nothing applied or enrolled yet.
    pub fn new(settings: Settings) -> Self {
        Published { config: Default::default(), pods: Default::default(), settings }
    }

    /// Records an applied reload: the next one's generation is one more.
    pub fn config_applied(&self, applied: Applied) {
        let generation = self.config.load().1.saturating_add(1);
        self.config.store(std::sync::Arc::new((applied, generation)));
    }
}

/// Builds the dump from the proxy and what the agent published.
pub fn config_dump(state: &ProxyState, published: &Published) -> ConfigDump {
    let config = published.config.load();
    let (applied, generation) = &**config;
    ConfigDump {
        config: config_view(applied, *generation),
        clusters: state.routes.load().clusters().iter().map(|c| cluster_view(state, c)).collect(),
        pods: published.pods.load().to_vec(),
        settings: published.settings.clone(),
    }
}

fn errors_of(r: &RejectedObject) -> Vec<String> {
    r.errors.iter().map(ToString::to_string).collect()
}

fn config_view(applied: &Applied, generation: u64) -> ConfigView {
    let live = &applied.config;
    let mut rejected: BTreeMap<&ObjectKey, &RejectedObject> = BTreeMap::new();
    let mut rejected_files = Vec::new();
    for r in &applied.rejected {
        match &r.object {
            Some(key) => {
                rejected.entry(key).or_insert(r);
            }
            None => rejected_files.push(RejectedFileView {
                file: r.file.to_string(),
                errors: errors_of(r),
                kept_previous: r.kept_previous,
            }),
        }
    }
    let mut objects: Vec<ObjectView> = Vec::new();
    let mut view = |kind: &'static str, namespace: &str, name: &str, at: &Locator| {
        let key = ObjectKey { kind, namespace: namespace.to_owned(), name: name.to_owned() };
        let r = rejected.remove(&key);
        objects.push(ObjectView {
            kind,
            namespace: key.namespace,
            name: key.name,
            status: if r.is_some() { Status::Rejected } else { Status::Accepted },
            live_source: Some(SourceView::of(at)),
            errors: r.map(errors_of).unwrap_or_default(),
        });
    };
    for o in &live.virtual_services {
        view("VirtualService", &o.namespace, &o.name, &o.at);
    }
    for o in &live.destination_rules {
        view("DestinationRule", &o.namespace, &o.name, &o.at);
    }
    for o in &live.gateways {
        view("Gateway", &o.namespace, &o.name, &o.at);
    }
    for o in &live.http_routes {
        view("HTTPRoute", &o.namespace, &o.name, &o.at);
    }
    for o in &live.reference_grants {
        view("ReferenceGrant", &o.namespace, &o.name, &o.at);
    }
    for o in &live.grpc_routes {
        view("GRPCRoute", &o.namespace, &o.name, &o.at);
    }
    for o in &live.telemetries {
        view("Telemetry", &o.namespace, &o.name, &o.at);
    }
    for o in &live.gateway_classes {
        view("GatewayClass", &o.namespace, &o.name, &o.at);
    }
    for o in &live.kube_gateways {
        view(crate::config::gateway_api::GATEWAY_KIND, &o.namespace, &o.name, &o.at);
    }
    // Rejected with no good version to fall back on: nothing of it is live.
    for (key, r) in rejected {
        objects.push(ObjectView {
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            status: Status::Rejected,
            live_source: None,
            errors: errors_of(r),
        });
    }
    objects.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    ConfigView {
        version: live.version.clone(),
        generation,
        objects,
        rejected_files,
        warnings: live.warnings.iter().chain(&applied.warnings).cloned().collect(),
    }
}

/// Istio's `loadBalancer.simple` names (and `CONSISTENT_HASH` for `consistentHash`).
fn lb_name(lb: &LbPolicy) -> &'static str {
    match lb {
        LbPolicy::RoundRobin => "ROUND_ROBIN",
        LbPolicy::LeastRequest => "LEAST_REQUEST",
        LbPolicy::Random => "RANDOM",
        LbPolicy::Passthrough => "PASSTHROUGH",
        LbPolicy::ConsistentHash(_) => "CONSISTENT_HASH",
    }
}

fn cluster_view(state: &ProxyState, c: &Cluster) -> ClusterView {
    ClusterView {
        name: c.name.clone(),
        service: format!("{}/{}", c.service.namespace, c.service.name),
        port: c.port,
        subset: c.subset.clone(),
        load_balancer: lb_name(&c.lb),
        outlier_detection: c.outlier_detection.as_ref().map(|od| OutlierView {
            consecutive_5xx_errors: od.consecutive_5xx_errors,
            consecutive_gateway_errors: od.consecutive_gateway_errors,
            interval_ms: od.interval.as_millis(),
            base_ejection_time_ms: od.base_ejection_time.as_millis(),
            max_ejection_percent: od.max_ejection_percent,
        }),
        endpoints: c
            .endpoints
            .iter()
            .map(|e| {
                let ejected_for = state.lb.ejected_for(e.addr);
                EndpointView {
                    address: e.addr.to_string(),
                    workload: e.workload.name.clone(),
                    namespace: e.workload.namespace.clone(),
                    labels: e.workload.labels.clone(),
                    ejected: ejected_for.is_some(),
                    ejected_for_ms: ejected_for.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }
            })
            .collect(),
    }
}
