//! Project automation: `cargo xtask build-ebpf | lint | test | image | demo | bench`.
//!
//! Everything a fresh machine lacks (rust-src for nightly, bpf-linker, Debian packages the tests
//! use) is installed here, idempotently, so the README's two commands work on a clean clone.
//!
//! The installers are in `setup`, the image build in `image`, the test, demo, bench and fuzz
//! runners in `runners`.
mod image;
mod runners;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::{
    image::image,
    runners::{bench, demo, fuzz, test},
    setup::{ensure_bpf_linker, ensure_cargo_deny, ensure_components},
};

#[derive(Parser)]
#[command(about = "Build, test and demo the mesh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object (installs nightly rust-src and bpf-linker when missing).
    BuildEbpf,
    /// rustfmt --check and clippy -D warnings for the workspace and for mesh-ebpf (nightly, BPF target).
    Lint,
    /// cargo-deny: licences, bans and sources of the workspace and mesh-ebpf (installs cargo-deny).
    Deny,
    /// Lint (as `lint`), install what the tests need, build everything (eBPF included) and run
    /// every test.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Install the contenders (nginx, haproxy, Envoy, wrk, h2load), build everything and compare
    /// the mesh with them; writes target/bench/report.md, rps.svg and results.json.
    Bench {
        /// Arguments passed to the bench driver (`--quick`, `--repeats N`, `--duration SECS`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz routing config parsing + validation + compiling (cargo fuzz, nightly), seeded with every
    /// YAML in the repository; a crash is copied to mesh-userspace/fuzz/regressions/ (a test
    /// replays that directory) and fails the run.
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// Report a finding (and keep it in fuzz/regressions/) without failing: what CI runs,
        /// where a finding cannot be committed and must not hide the test results.
        #[arg(long)]
        report_only: bool,
        /// libFuzzer's sanitizer: `address` (default; catches memory errors in the unsafe code of
        /// the YAML parsers) or `none` (about twice the executions per second, for long runs).
        #[arg(long, default_value = "address")]
        sanitizer: String,
    },
    /// Build the agent image with podman (installed when missing) without pulling anything: the
    /// final stage of deploy/Dockerfile over a root filesystem assembled here by
    /// deploy/image-rootfs.sh; saves target/mesh-agent-image.tar for `kind load image-archive`
    /// and `k3s ctr images import`. Fails if the host's netfilter ruleset changed meanwhile.
    Image,
    /// Build everything and run the Bookinfo walkthrough on a local node.
    Demo {
        /// Arguments passed to the demo (e.g. `--step all-v1`, `--keep`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf => build_ebpf().map(|p| println!("eBPF object: {}", p.display())),
        Cmd::Lint => lint(),
        Cmd::Deny => deny(),
        Cmd::Test { args } => test(&args),
        Cmd::Image => {
            let object = match std::env::var_os("MESH_EBPF_OBJECT") {
                Some(p) => PathBuf::from(p),
                None => build_ebpf()?,
            };
            image(&object)
        }
        Cmd::Demo { args } => demo(&args),
        Cmd::Bench { args } => bench(&args),
        Cmd::Fuzz { seconds, report_only, sanitizer } => fuzz(seconds, report_only, &sanitizer),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly --print sysroot`; is rustup's nightly toolchain installed?")?;
    if !out.status.success() {
        bail!("no nightly toolchain: run `rustup toolchain install nightly`");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// `cargo +nightly <subcommand>` in mesh-ebpf/ for the BPF target, with what it needs installed.
fn ebpf_cargo(subcommand: &str) -> Result<Command> {
    ensure_components(Some("nightly"), &["rust-src"])?;
    ensure_bpf_linker()?;
    let root = root();
    // PATH gets ~/.cargo/bin so rustc finds the bpf-linker we may just have installed.
    let path = format!("{}:{}", cargo_bin("").display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("mesh-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("PATH", path)
        .args(["+nightly", subcommand, "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/ebpf"));
    Ok(cmd)
}

fn build_ebpf() -> Result<PathBuf> {
    run(&mut ebpf_cargo("build")?)?;
    let root = root();
    let target_dir = root.join("target/ebpf");
    let built = target_dir.join("bpfel-unknown-none/release/mesh-ebpf");
    let dest = root.join(EBPF_OBJECT);
    std::fs::copy(&built, &dest).with_context(|| format!("copy {} to {}", built.display(), dest.display()))?;
    Ok(dest)
}

/// The gates every change passes: formatting and clippy with warnings denied, for the workspace
/// (stable) and for the eBPF crate (nightly, BPF target; it is not a workspace member). Both
/// apply the `[workspace.lints]` tables (undocumented unsafe, missing docs). `test` runs it first.
fn lint() -> Result<()> {
    ensure_components(None, &["clippy", "rustfmt"])?;
    ensure_components(Some("nightly"), &["clippy", "rustfmt"])?;
    let root = root();
    // Every gate runs, so one report lists every failure.
    let mut failed = Vec::new();
    let mut gate = |name: &str, result: Result<()>| {
        if let Err(e) = result {
            eprintln!("xtask lint: {name} failed: {e}");
            failed.push(name.to_string());
        }
    };
    gate("workspace rustfmt", run(Command::new("cargo").current_dir(&root).args(["fmt", "--all", "--", "--check"])));
    gate(
        "workspace clippy",
        run(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
    );
    gate(
        "mesh-ebpf rustfmt",
        run(Command::new("cargo").current_dir(root.join("mesh-ebpf")).args(["+nightly", "fmt", "--", "--check"])),
    );
    gate("mesh-ebpf clippy", ebpf_cargo("clippy").and_then(|mut c| run(c.args(["--", "-D", "warnings"]))));
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Licences, banned/duplicate crates and crate sources against deny.toml. Advisories are left
/// out: they need the advisory database from the network, the other checks read only Cargo.lock.
fn deny() -> Result<()> {
    ensure_cargo_deny()?;
    let path = format!("{}:{}", cargo_bin("").display(), std::env::var("PATH").unwrap_or_default());
    let root = root();
    // mesh-ebpf is its own workspace (BPF target), so it is checked on its own, same rules.
    for manifest in [root.join("Cargo.toml"), root.join("mesh-ebpf/Cargo.toml")] {
        run(Command::new("cargo")
            .current_dir(&root)
            .env("PATH", &path)
            .arg("deny")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--workspace", "--locked", "--config"])
            .arg(root.join("deny.toml"))
            .args(["check", "--hide-inclusion-graph", "licenses", "bans", "sources"]))?;
    }
    Ok(())
}

/// Whether this is a CI run (`CI=true`, as the e2e harness reads it).
fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn build_userspace() -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "--workspace", "--bins"]))
}

/// Where `build-ebpf` writes the eBPF object, relative to the workspace; the agent, the e2e tests
/// and the bench look for it there when `$MESH_EBPF_OBJECT` is not set.
const EBPF_OBJECT: &str = "target/mesh-ebpf.o";
/// The package holding the kernel end-to-end tests (tests/).
const E2E_PACKAGE: &str = "mesh-e2e";
/// Read by `mesh_e2e::require_ebpf`: where a skipped e2e test writes its name and reason.
const SKIP_LOG_ENV: &str = "MESH_E2E_SKIP_LOG";
