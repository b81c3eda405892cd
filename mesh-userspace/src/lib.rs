//! The node agent of a sidecarless service mesh: eBPF loader and enrollment (`ebpf`, `inpod`,
//! `agent`), the node proxy (`proxy`), the pure routing engine (`routing`) compiled from Istio
//! YAML (`config`) and a service registry (`registry`).
pub mod admission;
pub mod agent;
pub mod cli_routing;
pub mod config;
pub mod discovery;
pub mod drain;
pub mod ebpf;
pub mod ebpf_log;
pub mod handover;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod routing;
