//! Where the registry comes from: Kubernetes YAML files on a bare node (standalone mode) or the
//! Kubernetes API server (`--kubernetes`). Either way the agent receives whole [`Registry`]
//! snapshots on a watch channel and reconciles the node (enrollment, VIPs, routes) to each.
pub mod gateway_api;
pub mod group_watch;
pub mod istio;
pub mod kube;
pub mod sandbox;
pub mod secrets;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod rediscovery_tests;
