//! Istio's Bookinfo sample, re-implemented as one small binary with a subcommand per service, so
//! the mesh can be demonstrated and tested on a node with no container runtime.
//!
//! The behaviour the traffic-management task depends on is kept: productpage calls details (3 s
//! timeout) and reviews (3 s timeout, 2 attempts) and forwards `end-user`, `x-request-id` and
//! trace headers; reviews v2/v3 call ratings (10 s / 2.5 s timeout) and show black / red stars.
mod app;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Bookinfo sample services (productpage, details, reviews, ratings)")]
struct Cli {
    #[command(subcommand)]
    service: Service,
    /// Address to listen on.
    #[arg(long, global = true, default_value = "0.0.0.0:9080")]
    listen: SocketAddr,
    /// Pod name reported in responses and logs (default: $POD_NAME, then the hostname).
    #[arg(long, global = true)]
    pod_name: Option<String>,
}

#[derive(Subcommand)]
enum Service {
    /// The front page: calls details and reviews.
    Productpage {
        #[arg(long, default_value = "http://details:9080")]
        details: String,
        #[arg(long, default_value = "http://reviews:9080")]
        reviews: String,
    },
    /// Book details.
    Details,
    /// Book reviews: v1 no stars, v2 black stars, v3 red stars (v2/v3 call ratings).
    Reviews {
        #[arg(long, default_value = "v1")]
        version: String,
        #[arg(long, default_value = "http://ratings:9080")]
        ratings: String,
    },
    /// Book ratings.
    Ratings,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let pod = cli
        .pod_name
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "bookinfo".into());
    let role = match cli.service {
        Service::Productpage { details, reviews } => app::Role::Productpage { details, reviews },
        Service::Details => app::Role::Details,
        Service::Reviews { version, ratings } => {
            let (color, timeout) = match version.as_str() {
                "v1" => (None, Duration::ZERO),
                "v2" => (Some("black"), Duration::from_secs(10)),
                "v3" => (Some("red"), Duration::from_millis(2500)),
                other => anyhow::bail!("unknown reviews version {other:?}: use v1, v2 or v3"),
            };
            app::Role::Reviews { version, color, ratings, ratings_timeout: timeout }
        }
        Service::Ratings => app::Role::Ratings,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(app::serve(cli.listen, pod, role))
}
