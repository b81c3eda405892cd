//! The node agent of a sidecarless service mesh: eBPF loader and enrollment (`ebpf`, `inpod`,
//! `agent`), the node proxy (`proxy`), the pure routing engine (`routing`) compiled from Istio
//! YAML (`config`) and a service registry (`registry`).
// `missing_docs` (workspace lint, denied by `cargo xtask lint`) holds every public item to a doc
// comment. The only items allowed without one are clap argument structs (`agent::args`,
// `cli_routing`), where a doc comment would become the command's help text.
pub mod admin;
pub mod admission;
pub mod agent;
pub mod allocator;
pub mod cli_routing;
pub mod config;
pub mod discovery;
pub mod drain;
pub mod ebpf;
pub mod ebpf_log;
pub mod ebpf_pin;
pub mod ebpf_upgrade;
pub mod enrollment;
pub mod handover;
pub mod inpod;
pub mod listeners;
pub mod metrics;
pub mod proxy;
pub mod quantity;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod settings;
