//! The one converter from Kubernetes objects to registry entries, for both sources: the API
//! server's watch (`discovery::kube`) and the standalone registry files (`Registry::add_yaml`),
//! so a Service or Pod means the same whichever way it arrives — TCP ports only, finished and
//! hostNetwork pods handled alike, the same opt-outs. Nothing here trusts a field to be present.
use k8s_openapi::{
    api::core::v1::{Pod, Service as K8sService},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{AppProtocol, ContainerPort, PodCaps, Service, ServicePort, TargetPort, Workload, ANNOTATION_ENROLL};
use std::net::Ipv4Addr;

/// Istio's per-pod opt-out (label in current Istio, annotation in older releases).
pub const ISTIO_INJECT: &str = "sidecar.istio.io/inject";

/// A Pod as the mesh needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// The API server's uid (finds the pod's sandbox on its node).
    pub uid: String,
    /// The node it is scheduled on.
    pub node: Option<String>,
    /// Its QoS class (part of its cgroup path).
    pub qos_class: Option<String>,
    /// It shares the node's network namespace: never enrolled, its IP is not its own.
    pub host_network: bool,
    /// Per-pod opt-out (`mesh/enroll: "false"` or `sidecar.istio.io/inject: "false"`).
    pub opted_out: bool,
    /// The registry entry.
    pub workload: Workload,
}

/// A Service as the registry keeps it: `None` for an ExternalName service (no VIP, no endpoints:
/// nothing to capture) or one without a name. Ports other than TCP are left out (the proxy is
/// TCP only; a UDP port of the same number must not be captured).
pub fn service_info(svc: &K8sService) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    // ExternalName services have no VIP and no endpoints: nothing for the mesh to capture.
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let name = svc.metadata.name.clone()?;
    let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            Some(ServicePort {
                protocol: AppProtocol::from_port(p.name.as_deref(), p.app_protocol.as_deref()),
                name: p.name.clone(),
                port,
                target_port,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect();
    Some(Service {
        name,
        namespace: svc.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        cluster_ip,
        ports,
        selector: spec.selector.clone().unwrap_or_default(),
        ..Default::default()
    })
}

/// A Pod as the registry keeps it: `None` for a finished pod (Succeeded, Failed: it may keep an
/// IP a new pod reuses) or one without a name or uid. A hostNetwork pod has no pod IP of its own.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let status = pod.status.as_ref();
    // Finished pods keep their object (and sometimes their IP, reused by a new pod): not workloads.
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return None;
    }
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let annotations = meta.annotations.as_ref();
    let labels = meta.labels.clone().unwrap_or_default();
    let is_false = |v: Option<&String>| v.is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let opted_out = is_false(annotations.and_then(|a| a.get(ANNOTATION_ENROLL)))
        || is_false(annotations.and_then(|a| a.get(ISTIO_INJECT)))
        || is_false(labels.get(ISTIO_INJECT));
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let container_ports = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some(ContainerPort { name: p.name.clone(), port: u16::try_from(p.container_port).ok()? }))
        .collect();
    // A hostNetwork pod's IP is the node's: it is never an endpoint the mesh should dial as a pod.
    let ip = if host_network { None } else { status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) };
    let name = meta.name.clone()?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let caps = PodCaps::from_annotations(&namespace, &name, |k| annotations.and_then(|a| a.get(k)).map(String::as_str));
    Some(PodInfo {
        uid: meta.uid.clone()?,
        node: spec.and_then(|s| s.node_name.clone()),
        qos_class: status.and_then(|s| s.qos_class.clone()),
        host_network,
        opted_out,
        workload: Workload {
            name,
            namespace,
            labels,
            ip,
            container_ports,
            netns: None,
            cgroup: None,
            enroll: false,
            caps,
        },
    })
}
