//! Start-up of the kernel side: the eBPF programs and maps taken over from a running agent,
//! re-adopted from pins a dead one left, or loaded fresh; and this agent's own programs swapped
//! in behind adopted links once it is ready.
use std::{os::fd::OwnedFd, sync::Arc};

use anyhow::{Context as _, Result};

use super::AgentArgs;
use crate::{
    ebpf::{self, MeshEbpf},
    ebpf_pin, ebpf_upgrade,
    handover::{self, Inherited},
};

/// The kernel objects this agent runs on, and what came with them.
pub(super) struct Kernel {
    pub(super) bpf: Arc<MeshEbpf>,
    /// Listening sockets a predecessor handed over, claimed as the node is reconciled.
    pub(super) inherited: Inherited,
    /// The agent that handed over, told to drain once this one is ready.
    pub(super) predecessor: Option<handover::Predecessor>,
    /// Where the maps and links are pinned (`--bpf-pin-dir`).
    pub(super) pins: Option<ebpf_pin::PinDir>,
    /// The maps were re-adopted from the pins of an agent that died: enrollments of pods that
    /// left meanwhile are pruned after the first reconcile.
    pub(super) readopted: bool,
    /// The adopted programs are to be replaced by this agent's once it is ready.
    pub(super) replace_programs: bool,
}

/// Takes over the kernel objects of a running agent, or re-adopts pinned ones, or loads the
/// programs fresh; then pins them and applies the log level and fail mode.
pub(super) async fn start(args: &AgentArgs) -> Result<Kernel> {
    // A running agent hands over its sockets and kernel objects; otherwise start cold.
    let socket = args.handover_socket.clone();
    let received = tokio::task::spawn_blocking(move || handover::take_over(&socket))
        .await
        .context("handover thread")?
        .with_context(|| format!("taking over from the agent at {}", args.handover_socket.display()))?;
    let layout = args.map_layout();
    let pins = args.bpf_pin_dir.as_deref().map(|d| ebpf_pin::PinDir::open(d, layout)).transpose()?;
    let kernel = match received {
        Some(r) => take_over(args, pins, r)?,
        None => start_cold(args, pins)?,
    };
    configure(args, &kernel)?;
    Ok(kernel)
}

/// Runs on the maps and links a running agent handed over: adopted as they are when the layout
/// is this build's, else migrated, else (not migratable) fresh programs next to its.
fn take_over(args: &AgentArgs, pins: Option<ebpf_pin::PinDir>, r: handover::Received) -> Result<Kernel> {
    let layout = args.map_layout();
    let mut replace_programs = false;
    tracing::info!(pid = r.predecessor_pid, descriptors = r.items.len(), "taking over from the running agent");
    let mut inherited = Inherited::new(r.items);
    let maps = std::mem::take(&mut inherited.maps);
    let links = std::mem::take(&mut inherited.links);
    let bpf = if r.map_layout == layout {
        // Its programs keep running on its maps; ours are swapped in once we run.
        replace_programs = true;
        MeshEbpf::adopt(maps, links, &args.cgroup_root)?
    } else {
        let migrated = migrate_and_take_over(args, pins.as_ref(), &maps, &links, r.map_layout);
        // Its pins go either way: its links are ours now (pinned below under our
        // layout), or it holds them itself until it exits.
        if let Some(p) = &pins {
            p.remove_other_layouts(false);
        }
        match migrated {
            Ok(b) => b,
            Err(e) => {
                // Its maps mean something else to this version and cannot be migrated:
                // run our own programs next to its, which detach when it exits. Not
                // hitless for in-pod connections its programs redirect meanwhile.
                tracing::warn!(theirs = r.map_layout, ours = layout, error = %e, "eBPF map layout changed: loading fresh programs and maps next to the predecessor's");
                MeshEbpf::load_and_attach(&ebpf::find_object(args.ebpf_object.as_deref())?, &args.cgroup_root)?
            }
        }
    };
    Ok(Kernel {
        bpf: Arc::new(bpf),
        inherited,
        predecessor: Some(r.predecessor),
        pins,
        readopted: false,
        replace_programs,
    })
}

/// No running agent: re-adopts what a dead one left pinned, or loads and attaches the programs.
fn start_cold(args: &AgentArgs, pins: Option<ebpf_pin::PinDir>) -> Result<Kernel> {
    let mut readopted = false;
    let mut replace_programs = false;
    let bpf = match pins.as_ref().map(|p| readopt_pinned(args, p)).transpose()?.flatten() {
        Some((b, same_layout)) => {
            // A previous agent died without a successor: its links stayed attached
            // (applying --fail-mode) and its maps kept the pods and VIPs.
            readopted = true;
            replace_programs = same_layout;
            b
        }
        None => {
            if let Some(p) = &pins {
                // Nobody holds another version's pinned programs: detach them.
                p.remove_other_layouts(true);
                p.remove();
            }
            let object = ebpf::find_object(args.ebpf_object.as_deref())?;
            MeshEbpf::load_and_attach(&object, &args.cgroup_root)?
        }
    };
    Ok(Kernel {
        bpf: Arc::new(bpf),
        inherited: Inherited::default(),
        predecessor: None,
        pins,
        readopted,
        replace_programs,
    })
}

/// Pins the objects, forwards the kernel's log records and sets the log level and fail mode.
fn configure(args: &AgentArgs, kernel: &Kernel) -> Result<()> {
    let bpf = &kernel.bpf;
    if let Some(p) = &kernel.pins {
        bpf.pin(p)?;
        tracing::info!(dir = %p.layout_dir().display(), "eBPF maps and links pinned");
    }
    // The kernel logs at the level RUST_LOG gives `mesh::ebpf` (off unless asked for: the
    // default filter "info" is below the kernel's debug events).
    bpf.forward_kernel_logs().context("forwarding kernel log records")?;
    let kernel_level = crate::ebpf_log::level_from_tracing();
    bpf.set_log_level(kernel_level)?;
    tracing::debug!(level = kernel_level, "eBPF log level set");
    bpf.set_fail_mode(args.fail_mode)?;
    // Written either way: a predecessor's setting stays in the shared map otherwise.
    match bpf.set_sk_msg_bypass(args.sk_msg_bypass) {
        Ok(()) if args.sk_msg_bypass => tracing::info!("sk_msg bypass on: pod ↔ proxy bytes skip TCP/IP"),
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "--sk-msg-bypass ignored"),
    }
    // Loading parsed the kernel's BTF (megabytes, now freed); return it.
    crate::allocator::purge();
    Ok(())
}

/// Runs this agent's programs behind the links of a predecessor of another layout (see
/// [`MeshEbpf::migrate_and_take_over`]).
fn migrate_and_take_over(
    args: &AgentArgs,
    pins: Option<&ebpf_pin::PinDir>,
    maps: &std::collections::HashMap<String, OwnedFd>,
    links: &[(String, OwnedFd)],
    theirs: u32,
) -> Result<MeshEbpf> {
    let object = ebpf::find_object(args.ebpf_object.as_deref())?;
    let scratch = ebpf_pin::scratch_root(pins);
    Ok(MeshEbpf::migrate_and_take_over(
        &object,
        maps,
        links,
        (theirs, args.map_layout()),
        scratch.as_deref(),
        &args.cgroup_root,
    )?)
}

/// Swaps this agent's programs in behind the links it adopted, in the background (see
/// [`MeshEbpf::replace_programs`]); on failure the adopted programs stay, which is logged.
pub(super) fn spawn_replace_programs(
    args: &AgentArgs,
    pins: Option<&ebpf_pin::PinDir>,
    bpf: Arc<MeshEbpf>,
) -> tokio::task::JoinHandle<()> {
    let object = ebpf::find_object(args.ebpf_object.as_deref());
    let pins = pins.cloned();
    tokio::spawn(async move {
        let replaced = tokio::task::spawn_blocking({
            let bpf = bpf.clone();
            move || -> Result<()> {
                let scratch = ebpf_pin::scratch_root(pins.as_ref())
                    .context("no bpffs to share the maps with this agent's programs")?;
                Ok(bpf.replace_programs(&object?, &scratch)?)
            }
        })
        .await;
        match replaced {
            Ok(Ok(())) => {
                if let Err(e) = bpf.forward_kernel_logs() {
                    tracing::warn!(error = %e, "kernel log records are not forwarded");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot run this agent's eBPF programs behind the adopted links: the previous agent's programs stay")
            }
            Err(e) => {
                tracing::warn!(error = %e, "replacing the eBPF programs panicked: the previous agent's programs stay")
            }
        }
    })
}

/// Re-adopts what an agent that died without a successor left pinned: its links and maps (of
/// this layout, true; this agent's programs are swapped in later), or its links with this
/// agent's programs on fresh maps its entries were migrated into (another layout this version
/// migrates from, false). None when nothing usable is pinned.
fn readopt_pinned(args: &AgentArgs, pins: &ebpf_pin::PinDir) -> Result<Option<(MeshEbpf, bool)>> {
    let ours = args.map_layout();
    for layout in std::iter::once(ours).chain(pins.other_layouts()) {
        let names: Vec<&str> = match layout == ours {
            true => ebpf::SHARED_MAPS.to_vec(),
            false => ebpf::SHARED_MAPS.into_iter().filter(|m| ebpf_upgrade::can_migrate_map(layout, m)).collect(),
        };
        if names.is_empty() {
            continue;
        }
        let Some((maps, links)) = pins.load_layout(layout, &names, &ebpf::LINKED_PROGRAMS)? else { continue };
        let adopted = match layout == ours {
            true => MeshEbpf::adopt(maps, links, &args.cgroup_root).map_err(anyhow::Error::from),
            false => migrate_and_take_over(args, Some(pins), &maps, &links, layout),
        };
        match adopted {
            Ok(b) => {
                tracing::info!(layout, "re-adopted the eBPF links and maps pinned by a previous agent");
                // The links are pinned again under our layout; the other sets' pins go (a link
                // whose last pin goes and that no process holds detaches).
                pins.remove_other_layouts(false);
                return Ok(Some((b, layout == ours)));
            }
            Err(e) => tracing::warn!(layout, error = %format!("{e:#}"), "cannot re-adopt the pinned eBPF state"),
        }
    }
    Ok(None)
}
