//! Where a pod lives on this node: its cgroup v2 directory (what the eBPF programs key enrollment
//! on) and its network namespace (where the agent opens the pod's outbound listener), found from
//! the pod UID the way the kubelet lays pods out, without talking to the container runtime.
//!
//! Kubelet names a pod's cgroup after its UID and QoS class:
//! - cgroupfs driver: `kubepods/pod<uid>`, `kubepods/burstable/pod<uid>`, `kubepods/besteffort/pod<uid>`
//! - systemd driver:  `kubepods.slice/kubepods-pod<u_i_d>.slice`,
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<u_i_d>.slice`, ...
//!   (dashes in the UID become underscores, because a dash nests slices in systemd)
//!
//! and both may sit below a kubelet `--cgroup-root` (kind nodes use `kubelet.slice/kubelet-kubepods.slice/...`),
//! so after the well-known places a bounded search below the cgroup root looks for the UID.
//! The network namespace is that of any process in the pod's cgroup tree (they all share the
//! pod sandbox's): `/proc/<pid>/ns/net`, which needs the agent to see host PIDs (`hostPID: true`).
use std::{
    fs,
    path::{Path, PathBuf},
};

/// A pod's place on the node, as the agent needs it to enroll the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSandbox {
    /// The pod's cgroup v2 directory: the cgroup programs attach there.
    pub cgroup: PathBuf,
    /// The pod's network namespace (`/proc/<pid>/ns/net` of one of its processes): its
    /// listener is opened inside it.
    pub netns: PathBuf,
}

/// Why a pod on this node cannot be enrolled (yet); logged, and retried while it lasts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error(
        "no cgroup for pod UID {uid} below {root} (looked for kubelet's cgroupfs and systemd layouts); \
         is --kubelet-cgroup-root the cgroup v2 mount the kubelet uses?"
    )]
    /// No cgroup of the pod below the kubelet's cgroup root (not started, or another layout).
    NoCgroup {
        /// The pod's UID.
        uid: String,
        /// The cgroup root looked below (`--kubelet-cgroup-root`).
        root: PathBuf,
    },
    #[error("cgroup {cgroup} has no process yet (pod sandbox starting?)")]
    /// The cgroup exists but holds no process to find the network namespace by.
    NoProcess {
        /// The pod's cgroup.
        cgroup: PathBuf,
    },
    #[error(
        "the processes in cgroup {cgroup} are still in the node's network namespace \
         (pod sandbox starting, or a hostNetwork pod)"
    )]
    /// The pod's processes share the node's network namespace.
    HostNetns {
        /// The pod's cgroup.
        cgroup: PathBuf,
    },
}

/// Finds pods' sandboxes. A trait so discovery can be tested without a kubelet on the machine.
pub trait PodLocator: Send + Sync {
    /// The sandbox of the pod with `uid` (and QoS class, which picks the kubelet's cgroup
    /// parent), or why it cannot be found yet.
    fn locate(&self, uid: &str, qos_class: Option<&str>) -> Result<PodSandbox, LocateError>;
}

/// The kubelet's layout on this node's filesystems.
#[derive(Clone, Debug)]
pub struct KubeletLayout {
    /// The cgroup v2 hierarchy the kubelet's pod cgroups are in (`/sys/fs/cgroup` on a pure v2
    /// host, `/sys/fs/cgroup/unified` on a hybrid one).
    pub cgroup_root: PathBuf,
    /// The host's `/proc`.
    pub proc_root: PathBuf,
}

impl PodLocator for KubeletLayout {
    fn locate(&self, uid: &str, qos_class: Option<&str>) -> Result<PodSandbox, LocateError> {
        let cgroup = self
            .pod_cgroup(uid, qos_class)
            .ok_or_else(|| LocateError::NoCgroup { uid: uid.into(), root: self.cgroup_root.clone() })?;
        let mut pids = Vec::new();
        collect_pids(&cgroup, 3, &mut pids);
        if pids.is_empty() {
            return Err(LocateError::NoProcess { cgroup });
        }
        // A runtime puts a sandbox process in the pod's cgroup a moment before it joins the pod's
        // network namespace; a listener opened in that moment would be in the node's namespace,
        // where the pod's redirected connections never arrive. Such a process is passed over
        // (and the pod retried) — only a netns we can read and that is ours is rejected.
        let host = netns_id(Path::new("/proc/self/ns/net"));
        let netns = pids
            .iter()
            .map(|pid| self.proc_root.join(pid.to_string()).join("ns/net"))
            .find(|ns| host.is_none() || netns_id(ns) != host)
            .ok_or_else(|| LocateError::HostNetns { cgroup: cgroup.clone() })?;
        Ok(PodSandbox { netns, cgroup })
    }
}

impl KubeletLayout {
    /// The pod's cgroup directory, trying the QoS class the API server reported first.
    pub fn pod_cgroup(&self, uid: &str, qos_class: Option<&str>) -> Option<PathBuf> {
        let root = &self.cgroup_root;
        let systemd_uid = uid.replace('-', "_");
        let mut tiers = vec!["guaranteed", "burstable", "besteffort"];
        if let Some(q) = qos_class.map(str::to_ascii_lowercase) {
            if let Some(i) = tiers.iter().position(|t| *t == q) {
                let t = tiers.remove(i);
                tiers.insert(0, t);
            }
        }
        for tier in tiers {
            let (cgroupfs, systemd) = if tier == "guaranteed" {
                (
                    root.join(format!("kubepods/pod{uid}")),
                    root.join(format!("kubepods.slice/kubepods-pod{systemd_uid}.slice")),
                )
            } else {
                (
                    root.join(format!("kubepods/{tier}/pod{uid}")),
                    root.join(format!("kubepods.slice/kubepods-{tier}.slice/kubepods-{tier}-pod{systemd_uid}.slice")),
                )
            };
            for candidate in [cgroupfs, systemd] {
                if candidate.is_dir() {
                    return Some(candidate);
                }
            }
        }
        search(root, &format!("pod{uid}"), &format!("-pod{systemd_uid}.slice"), 6)
    }
}

/// Breadth-first search for the pod's directory, only through directories that belong to the
/// kubelet's tree (names with `kubepods` or `kubelet`, and the cgroupfs QoS tiers), so a busy host's other cgroups are not walked.
fn search(root: &Path, cgroupfs_name: &str, systemd_suffix: &str, max_depth: usize) -> Option<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..max_depth {
        let mut next = Vec::new();
        for dir in level {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name == cgroupfs_name || name.ends_with(systemd_suffix) {
                    return Some(entry.path());
                }
                if name.contains("kubepods") || name.contains("kubelet") || name == "burstable" || name == "besteffort"
                {
                    next.push(entry.path());
                }
            }
        }
        if next.is_empty() {
            return None;
        }
        level = next;
    }
    None
}

/// The processes in the cgroup and its children, the cgroup's own first (containers have their
/// own child cgroups; the pause process may be in one of them).
fn collect_pids(cgroup: &Path, depth: usize, out: &mut Vec<u32>) {
    if let Ok(text) = fs::read_to_string(cgroup.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir(cgroup) else { return };
    let mut children: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()).collect();
    children.sort();
    for child in children {
        collect_pids(&child, depth - 1, out);
    }
}

/// Identity of a network namespace (nsfs device and inode), if it can be read.
fn netns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c2a8e-5b1d-4c2e-9a77-123456789abc";

    fn layout(dir: &Path) -> KubeletLayout {
        KubeletLayout { cgroup_root: dir.join("cgroup"), proc_root: dir.join("proc") }
    }

    /// Builds a kubelet-like tree under a temporary directory with a container child cgroup
    /// holding `pid`, and checks the pod is found with the netns of that pid.
    fn check_layout(pod_dir: &str, qos: Option<&str>) {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let pod = l.cgroup_root.join(pod_dir);
        // An empty pod-level cgroup.procs and the process in the container's cgroup, as runc does.
        fs::create_dir_all(pod.join("cri-containerd-abc.scope")).unwrap();
        fs::write(pod.join("cgroup.procs"), "").unwrap();
        fs::write(pod.join("cri-containerd-abc.scope/cgroup.procs"), "4242\n4243\n").unwrap();
        let found = l.locate(UID, qos).unwrap_or_else(|e| panic!("{pod_dir}: {e}"));
        assert_eq!(found.cgroup, pod, "{pod_dir}");
        assert_eq!(found.netns, l.proc_root.join("4242/ns/net"), "{pod_dir}");
    }

    #[test]
    fn cgroupfs_driver_layouts() {
        check_layout(&format!("kubepods/pod{UID}"), Some("Guaranteed"));
        check_layout(&format!("kubepods/burstable/pod{UID}"), Some("Burstable"));
        check_layout(&format!("kubepods/besteffort/pod{UID}"), Some("BestEffort"));
        // The QoS class is only a hint: a wrong or missing one still finds the pod.
        check_layout(&format!("kubepods/besteffort/pod{UID}"), Some("Guaranteed"));
        check_layout(&format!("kubepods/burstable/pod{UID}"), None);
    }

    #[test]
    fn systemd_driver_layouts() {
        let u = UID.replace('-', "_");
        check_layout(&format!("kubepods.slice/kubepods-pod{u}.slice"), Some("Guaranteed"));
        check_layout(
            &format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
            Some("Burstable"),
        );
        check_layout(&format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"), None);
    }

    #[test]
    fn nested_kubelet_cgroup_root_is_searched() {
        let u = UID.replace('-', "_");
        // kind: kubelet --cgroup-root=/kubelet with the systemd driver.
        check_layout(
            &format!("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice"),
            Some("BestEffort"),
        );
        check_layout(&format!("kubelet/kubepods/burstable/pod{UID}"), Some("Burstable"));
    }

    #[test]
    fn missing_pod_and_empty_sandbox_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        fs::create_dir_all(l.cgroup_root.join("kubepods/besteffort/podsomeone-else")).unwrap();
        // An unrelated busy tree is not walked into.
        fs::create_dir_all(l.cgroup_root.join(format!("system.slice/pod{UID}"))).unwrap();
        let err = l.locate(UID, None).unwrap_err();
        assert!(matches!(err, LocateError::NoCgroup { .. }), "{err}");
        assert!(err.to_string().contains("--kubelet-cgroup-root"), "{err}");

        fs::create_dir_all(l.cgroup_root.join(format!("kubepods/pod{UID}/container"))).unwrap();
        let err = l.locate(UID, None).unwrap_err();
        assert!(matches!(err, LocateError::NoProcess { .. }), "{err}");
    }

    /// A process still in the node's network namespace (ours, here) is passed over for one in
    /// the pod's; with only such processes the pod is not located yet.
    #[test]
    fn process_still_in_the_node_netns_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let pod = l.cgroup_root.join(format!("kubepods/pod{UID}"));
        fs::create_dir_all(pod.join("sandbox")).unwrap();
        fs::write(pod.join("cgroup.procs"), "100\n").unwrap();
        fs::write(pod.join("sandbox/cgroup.procs"), "").unwrap();
        // pid 100 "is" the agent's netns; pid 200 has a different namespace (any other nsfs file).
        fs::create_dir_all(l.proc_root.join("100/ns")).unwrap();
        std::os::unix::fs::symlink("/proc/self/ns/net", l.proc_root.join("100/ns/net")).unwrap();
        let err = l.locate(UID, None).unwrap_err();
        assert!(matches!(err, LocateError::HostNetns { .. }), "{err}");

        fs::write(pod.join("sandbox/cgroup.procs"), "200\n").unwrap();
        fs::create_dir_all(l.proc_root.join("200/ns")).unwrap();
        std::os::unix::fs::symlink("/proc/self/ns/mnt", l.proc_root.join("200/ns/net")).unwrap();
        assert_eq!(l.locate(UID, None).unwrap().netns, l.proc_root.join("200/ns/net"));
    }

    /// The same mapping against real cgroup v2 directories and a real network namespace: a
    /// process is moved into a kubelet-style pod cgroup on this kernel, and the located netns is
    /// that process's (not ours).
    #[test]
    fn real_cgroup_v2_and_netns() {
        use std::os::unix::fs::MetadataExt;
        let unified = Path::new("/sys/fs/cgroup/unified");
        let root_ok = nix::unistd::Uid::effective().is_root();
        if !root_ok || !unified.join("cgroup.procs").exists() {
            let why = format!("needs root and cgroup v2 at {} (root: {root_ok})", unified.display());
            assert!(std::env::var("CI").as_deref() != Ok("true"), "real_cgroup_v2_and_netns cannot run in CI: {why}");
            eprintln!("SKIPPED real_cgroup_v2_and_netns: {why}");
            return;
        }
        let base = unified.join(format!("mesh-unit-{}", std::process::id()));
        let pod = base.join(format!("kubepods/burstable/pod{UID}"));
        let container = pod.join("cri-containerd-0123.scope");
        fs::create_dir_all(&container).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {}/cgroup.procs && exec unshare --net sleep 30", container.display()))
            .spawn()
            .unwrap();
        let l = KubeletLayout { cgroup_root: base.clone(), proc_root: PathBuf::from("/proc") };
        let ours = fs::metadata("/proc/self/ns/net").unwrap().ino();
        // The child joins the cgroup and unshares before sleeping; poll until its netns differs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            if let Ok(s) = l.locate(UID, Some("Burstable")) {
                if fs::metadata(&s.netns).map(|m| m.ino() != ours).unwrap_or(false) {
                    break Some(s);
                }
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::yield_now();
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir(&container);
        let _ = fs::remove_dir(&pod);
        let _ = fs::remove_dir(base.join("kubepods/burstable"));
        let _ = fs::remove_dir(base.join("kubepods"));
        let _ = fs::remove_dir(&base);
        let found = found.expect("pod sandbox not located within 5 s");
        assert_eq!(found.cgroup, pod);
        assert_eq!(found.netns, PathBuf::from(format!("/proc/{}/ns/net", child.id())));
    }
}
