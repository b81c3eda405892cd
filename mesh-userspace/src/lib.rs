//! The node agent of a sidecarless service mesh: eBPF loader and enrollment (`ebpf`, `agent`),
//! the node proxy (`proxy`), the pure routing engine (`routing`) compiled from Istio YAML
//! (`config`) and a service registry (`registry`).
pub mod registry;
pub mod config;
pub mod routing;
