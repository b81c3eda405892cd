//! `cargo xtask image`: the agent image from the release binary and the eBPF object.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{
    build_userspace, root, run,
    setup::{apt_install, ensure_packages},
};

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
pub(crate) fn image(object: &Path) -> Result<()> {
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
