//! The subset of Kubernetes objects the standalone registry reads. Unknown fields are allowed:
//! these are ordinary manifests full of things (containers, probes) the mesh does not need.
//! Numbers and addresses are checked strictly (a registry file is written by hand: an error
//! names it), then the object is handed to the converter the API server's objects go through
//! ([`convert`]), so both sources mean the same by the same manifest.
use k8s_openapi::{api::core::v1 as api, apimachinery::pkg::apis::meta::v1::ObjectMeta};

use super::*;

#[derive(Deserialize)]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Meta {
    fn into_object_meta(self) -> ObjectMeta {
        ObjectMeta {
            // The API server's uid only finds a pod's sandbox; files name the sandbox instead.
            uid: Some(
                self.uid.unwrap_or_else(|| format!("{}/{}", self.namespace.as_deref().unwrap_or("default"), self.name)),
            ),
            name: Some(self.name),
            namespace: self.namespace,
            labels: Some(self.labels),
            annotations: Some(self.annotations),
            ..Default::default()
        }
    }
}

#[derive(Deserialize)]
pub struct Service {
    pub metadata: Meta,
    pub spec: ServiceSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    // Kubernetes spells it clusterIP, which camelCase would not produce.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub target_port: Option<serde_yaml::Value>,
    #[serde(default)]
    pub node_port: Option<u16>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl Service {
    pub fn into_service(self) -> Result<Option<super::Service>, String> {
        let name = self.metadata.name.clone();
        match self.spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => {}
            Some(ip) => {
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| format!("Service {name}: spec.clusterIP {ip:?} is not an IPv4 address"))?;
            }
        }
        let ports = self
            .spec
            .ports
            .into_iter()
            .map(|p| {
                let target_port = match p.target_port {
                    None => None,
                    Some(serde_yaml::Value::Number(n)) => Some(IntOrString::Int(
                        n.as_u64()
                            .and_then(|n| u16::try_from(n).ok())
                            .map(i32::from)
                            .ok_or_else(|| format!("Service {name}: targetPort {n} is not a port number"))?,
                    )),
                    Some(serde_yaml::Value::String(s)) => Some(IntOrString::String(s)),
                    Some(other) => {
                        return Err(format!(
                            "Service {name}: targetPort must be a number or a port name, got {other:?}"
                        ))
                    }
                };
                Ok(api::ServicePort {
                    name: p.name,
                    port: i32::from(p.port),
                    protocol: p.protocol,
                    target_port,
                    node_port: p.node_port.map(i32::from),
                    app_protocol: p.app_protocol,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let svc = api::Service {
            metadata: self.metadata.into_object_meta(),
            spec: Some(api::ServiceSpec {
                cluster_ip: self.spec.cluster_ip,
                type_: self.spec.type_,
                ports: Some(ports),
                selector: Some(self.spec.selector),
                ..Default::default()
            }),
            status: None,
        };
        Ok(convert::service_info(&svc))
    }
}

#[derive(Deserialize)]
pub struct Pod {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: Option<PodSpec>,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub host_network: Option<bool>,
}

#[derive(Deserialize)]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<CPort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
}

impl Pod {
    /// `None` for a pod that is not a workload (finished); see [`convert::pod_info`].
    pub fn into_workload(self) -> Result<Option<Workload>, String> {
        let status = self.status.unwrap_or(PodStatus { pod_ip: None, phase: None });
        if let Some(ip) = &status.pod_ip {
            ip.parse::<Ipv4Addr>()
                .map_err(|_| format!("Pod {}: status.podIP {ip:?} is not an IPv4 address", self.metadata.name))?;
        }
        let netns = self.metadata.annotations.get(ANNOTATION_NETNS).map(PathBuf::from);
        let cgroup = self.metadata.annotations.get(ANNOTATION_CGROUP).map(PathBuf::from);
        let spec = self.spec.unwrap_or(PodSpec { containers: Vec::new(), host_network: None });
        let containers = spec
            .containers
            .into_iter()
            .map(|c| api::Container {
                name: c.name,
                ports: Some(
                    c.ports
                        .into_iter()
                        .map(|p| api::ContainerPort {
                            name: p.name,
                            container_port: i32::from(p.container_port),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            })
            .collect();
        let pod = api::Pod {
            metadata: self.metadata.into_object_meta(),
            spec: Some(api::PodSpec { containers, host_network: spec.host_network, ..Default::default() }),
            status: Some(api::PodStatus { pod_ip: status.pod_ip, phase: status.phase, ..Default::default() }),
        };
        let Some(info) = convert::pod_info(&pod) else { return Ok(None) };
        // No node and no namespace labels here: every pod of the file is this node's, and
        // enrolled unless it opts out (or shares the node's network) — given its sandbox.
        let mut w = info.workload;
        w.enroll = !info.opted_out && !info.host_network;
        w.netns = netns;
        w.cgroup = cgroup;
        Ok(Some(w))
    }
}
