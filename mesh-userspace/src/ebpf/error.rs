//! The one error type of the eBPF loader and maps ([`EbpfError`]), re-exported as
//! `ebpf::EbpfError`.
use std::path::PathBuf;

use thiserror::Error;

/// Why loading, attaching, adopting or using the eBPF programs and maps failed; each message says
/// what to check or do.
#[derive(Debug, Error)]
pub enum EbpfError {
    #[error(
        "eBPF object not found (looked in: {looked}); build it with `cargo xtask build-ebpf` \
         or point MESH_EBPF_OBJECT / --ebpf-object at it"
    )]
    /// No eBPF object where the agent looked.
    ObjectMissing {
        /// The places tried.
        looked: String,
    },
    #[error("cannot load eBPF object {path}: {source}; the kernel needs CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF, and the agent CAP_SYS_ADMIN (CAP_BPF + CAP_NET_ADMIN alone do not load these programs, and container runtimes' default seccomp profiles allow bpf() only with CAP_SYS_ADMIN)")]
    // Boxed: aya 0.14's EbpfError is 128 bytes and would make every Result here that large.
    /// The object could not be loaded into the kernel.
    Load {
        /// The object file.
        path: PathBuf,
        /// aya's reason.
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF object has no program {0}; rebuild it with `cargo xtask build-ebpf`")]
    /// The object lacks a program (built from another version).
    NoProgram(&'static str),
    #[error("eBPF object has no map {0}; rebuild it with `cargo xtask build-ebpf`")]
    /// The object lacks a map (built from another version).
    NoMap(&'static str),
    #[error("loading/attaching program {name}: {source}")]
    /// A program could not be loaded (the verifier's verdict is in `source`).
    Program {
        /// The program.
        name: &'static str,
        /// aya's reason.
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    /// Reading or writing a map failed.
    Map {
        /// The map.
        name: &'static str,
        /// aya's reason.
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot open cgroup {path}: {source}; is cgroup v2 mounted there? (hybrid layouts mount it at /sys/fs/cgroup/unified)")]
    /// The cgroup to attach to cannot be opened.
    Cgroup {
        /// The cgroup directory (`--cgroup-root`).
        path: PathBuf,
        /// The open error.
        source: std::io::Error,
    },
    #[error("eBPF object has no aya-log ring buffer; rebuild it with `cargo xtask build-ebpf`: {0}")]
    /// aya-log could not be set up on the object.
    Log(#[from] aya_log::Error),
    #[error("attaching program {name} (BPF_LINK_CREATE, Linux >= 5.7): {source}")]
    /// A program could not be attached (`BPF_LINK_CREATE`).
    Link {
        /// The program.
        name: &'static str,
        /// The kernel's error.
        source: std::io::Error,
    },
    #[error("handed-over map {name}: {source}")]
    /// A map descriptor received from the predecessor is not the map expected.
    Adopt {
        /// The map.
        name: &'static str,
        /// aya's reason.
        source: Box<aya::maps::MapError>,
    },
    #[error("the predecessor handed over no map {0}")]
    /// The predecessor did not send this map.
    AdoptMissing(&'static str),
    #[error("duplicating a descriptor for the handover: {0}")]
    /// A descriptor could not be duplicated for a successor.
    Dup(std::io::Error),
    #[error("the predecessor's maps are of layout {theirs} and this agent (layout {ours}) has no migration from it")]
    /// A layout this version cannot migrate from.
    NoMigration {
        /// The predecessor's layout.
        theirs: u32,
        /// This agent's.
        ours: u32,
    },
    #[error("map {name}: the loader created map {new} instead of reusing the predecessor's map {old}")]
    /// The loader did not reuse a pinned map (nothing was changed in the kernel).
    NotShared {
        /// The map.
        name: &'static str,
        /// The predecessor's map id.
        old: u32,
        /// The id of the map the loader holds.
        new: u32,
    },
    #[error("replacing the program behind link {name} (BPF_LINK_UPDATE): {source}")]
    /// A link's program could not be replaced.
    LinkUpdate {
        /// The program.
        name: &'static str,
        /// The kernel's error.
        source: std::io::Error,
    },
    #[error("handing the predecessor's maps to the loader: {0}")]
    /// The maps could not be pinned for the loader to reuse.
    Scratch(#[from] crate::ebpf_pin::PinError),
    #[error("migrating the predecessor's maps: {0}")]
    /// A map's entries could not be carried into this layout.
    Migrate(#[from] crate::ebpf_upgrade::MigrateError),
    /// The sk_msg bypass was asked for but this agent's program is not attached.
    #[error("the sk_msg bypass is unavailable: {0}; the kernel needs CONFIG_NET_SOCK_MSG (Linux >= 4.17; 5.15 for the netns cookie the program keys sockets by)")]
    SkMsgUnavailable(String),
}
