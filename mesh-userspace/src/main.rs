//! `mesh`: the node agent and its tools.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "Sidecarless service mesh: eBPF redirect into one node-level L7 proxy, configured by Istio YAML",
    after_help = "Examples:
  mesh agent --registry deploy/bookinfo/local-registry.yaml --config deploy/bookinfo/networking
  mesh validate deploy/bookinfo/networking --registry deploy/bookinfo/local-registry.yaml
  mesh explain --config deploy/bookinfo/networking --registry deploy/bookinfo/local-registry.yaml \\
       --from productpage-v1 --url http://reviews:9080/reviews/0 -H 'end-user: jason'

Logs: RUST_LOG=debug (default info). Proxy worker threads: --worker-threads or MESH_WORKER_THREADS=N (default one per core)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start and matched once: the agent's many flags cost nothing to carry inline.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent: load eBPF, enroll pods, run the proxy (needs root, or CAP_SYS_ADMIN + CAP_SYS_PTRACE).
    #[command(
        after_help = "Example:\n  mesh agent --registry node.yaml --config /etc/mesh/routing --ingress-bind 127.0.0.1"
    )]
    Agent(mesh::agent::AgentArgs),
    /// Check Istio routing YAML (VirtualService, DestinationRule, Gateway) like `istioctl analyze`.
    #[command(
        after_help = "Example:\n  mesh validate deploy/bookinfo/networking/ --registry deploy/bookinfo/local-registry.yaml"
    )]
    Validate(mesh::cli_routing::ValidateArgs),
    /// Show how a request from a pod would be routed, offline, and why.
    #[command(
        after_help = "Example:\n  mesh explain --config deploy/bookinfo/networking --registry deploy/bookinfo/local-registry.yaml \\\n       --from productpage-v1 --url http://reviews:9080/reviews/0 -H 'end-user: jason'"
    )]
    Explain(mesh::cli_routing::ExplainArgs),
}

/// The agent's runtime: multi-threaded, one worker per core unless `--worker-threads` says
/// otherwise (benchmarks give every proxy one worker); one worker is tokio's current-thread
/// scheduler.
fn runtime(worker_threads: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut b = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build().map_err(|e| e.to_string())
}

/// jemalloc, so memory freed by bursts and idle connections goes back (see `mesh::allocator`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The C `const char *malloc_conf` jemalloc reads at its first allocation: a thin pointer to
/// the first byte of the NUL-terminated options.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: &u8 = &mesh::allocator::MALLOC_CONF[0];

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().cmd {
        Cmd::Agent(args) => runtime(args.worker_threads)
            .map_err(anyhow::Error::msg)
            .and_then(|rt| rt.block_on(mesh::agent::run(args)))
            .map(|()| ExitCode::SUCCESS),
        Cmd::Validate(args) => mesh::cli_routing::validate(args),
        Cmd::Explain(args) => mesh::cli_routing::explain(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
