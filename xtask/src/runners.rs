//! The test, demo, bench and fuzz runners.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{
    build_ebpf, build_userspace, cargo_bin, deny,
    image::image,
    lint, root, run,
    setup::{ensure_bench_tools, ensure_bpffs, ensure_packages, ensure_prometheus},
    succeeds, E2E_PACKAGE, EBPF_OBJECT, SKIP_LOG_ENV,
};

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

pub(crate) fn test(args: &[String]) -> Result<()> {
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

pub(crate) fn demo(args: &[String]) -> Result<()> {
    ensure_packages()?;
    ensure_prometheus()?;
    build_ebpf()?;
    build_userspace()?;
    run(Command::new(root().join("target/release/bookinfo-demo"))
        .args(args)
        .env("MESH_EBPF_OBJECT", root().join(EBPF_OBJECT))
        .current_dir(root()))
}

pub(crate) fn bench(args: &[String]) -> Result<()> {
    ensure_packages()?;
    ensure_bench_tools(args.iter().any(|a| a == "--quick"))?;
    build_ebpf()?;
    build_userspace()?;
    run(Command::new(root().join("target/release/mesh-bench"))
        .args(args)
        .env("MESH_EBPF_OBJECT", root().join(EBPF_OBJECT))
        .current_dir(root()))
}

pub(crate) fn fuzz(seconds: u64, report_only: bool, sanitizer: &str) -> Result<()> {
    if !succeeds(Command::new("rustup").args(["+nightly", "component", "list", "--installed"])) {
        bail!("no nightly toolchain: run `rustup toolchain install nightly`");
    }
    if !succeeds(Command::new(cargo_bin("cargo-fuzz")).arg("--version")) {
        eprintln!("xtask: installing cargo-fuzz (once)");
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let root = root();
    let corpus = root.join("target/fuzz-corpus/config");
    let seeds = fuzz_seeds(&root, &corpus)?;
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

/// Writes the fuzzer's seed corpus into `corpus`: every YAML file of the deployment and of the
/// verdict tables, and each case of a verdict table on its own. Returns how many seeds it wrote.
fn fuzz_seeds(root: &Path, corpus: &Path) -> Result<usize> {
    std::fs::create_dir_all(corpus)?;
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
    Ok(seeds)
}
