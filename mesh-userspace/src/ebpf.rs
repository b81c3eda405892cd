//! Loads the mesh's eBPF programs, attaches them to the cgroup v2 hierarchy and owns their maps.
//!
//! Programs are attached with BPF links (not legacy `BPF_PROG_ATTACH`) and never pinned: the
//! kernel detaches them when the last link fd closes, so an agent that crashes or is killed
//! leaves nothing attached. `Drop` detaches explicitly on a clean exit as well.
use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps},
    Ebpf,
};
use mesh_common::{
    Enrollment, OriginalDst, ServiceKey, ServiceValue, TupleKey, MAP_ENROLLED, MAP_ORIG_BY_TUPLE, MAP_SERVICES,
    MAP_STATS, PROG_CONNECT4, PROG_CONNECT6, PROG_SOCK_OPS,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EbpfError {
    #[error(
        "eBPF object not found (looked in: {looked}); build it with `cargo xtask build-ebpf` \
         or point MESH_EBPF_OBJECT / --ebpf-object at it"
    )]
    ObjectMissing { looked: String },
    #[error("cannot load eBPF object {path}: {source}; the kernel needs CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF, and the agent CAP_BPF + CAP_NET_ADMIN (or root)")]
    Load { path: PathBuf, source: aya::EbpfError },
    #[error("eBPF object has no program {0}; rebuild it with `cargo xtask build-ebpf`")]
    NoProgram(&'static str),
    #[error("eBPF object has no map {0}; rebuild it with `cargo xtask build-ebpf`")]
    NoMap(&'static str),
    #[error("loading/attaching program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("cannot open cgroup {path}: {source}; is cgroup v2 mounted there? (hybrid layouts mount it at /sys/fs/cgroup/unified)")]
    Cgroup { path: PathBuf, source: std::io::Error },
}

/// Where to find the compiled eBPF object: explicit path, `MESH_EBPF_OBJECT`, next to the
/// binary, then the workspace build output.
pub fn find_object(explicit: Option<&Path>) -> Result<PathBuf, EbpfError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("MESH_EBPF_OBJECT") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        candidates.push(dir.join("mesh-ebpf.o"));
        candidates.push(dir.join("../mesh-ebpf.o"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mesh-ebpf.o"));
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| EbpfError::ObjectMissing {
        looked: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// The cgroup v2 id the kernel reports for a cgroup directory (`bpf_get_current_cgroup_id`) is
/// the kernfs inode number of that directory.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

/// Counters the programs keep (summed over CPUs).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelStats {
    pub connects_seen: u64,
    pub connects_redirected: u64,
    pub established_indexed: u64,
}

pub struct MeshEbpf {
    // Held for the links: dropping `Ebpf` drops the programs, which detaches them.
    bpf: Ebpf,
    enrolled: Mutex<BpfHashMap<MapData, u64, Enrollment>>,
    services: Mutex<BpfHashMap<MapData, ServiceKey, ServiceValue>>,
    orig_by_tuple: Mutex<BpfHashMap<MapData, TupleKey, OriginalDst>>,
    stats: PerCpuArray<MapData, u64>,
    cgroup_root: PathBuf,
}

impl MeshEbpf {
    /// Loads the object and attaches connect4 and sock_ops to `cgroup_root` (normally the root
    /// of the cgroup v2 hierarchy, so every pod below it is seen; only enrolled cgroups are acted on).
    pub fn load_and_attach(object: &Path, cgroup_root: &Path) -> Result<MeshEbpf, EbpfError> {
        let mut bpf =
            Ebpf::load_file(object).map_err(|source| EbpfError::Load { path: object.to_path_buf(), source })?;
        let cgroup =
            File::open(cgroup_root).map_err(|source| EbpfError::Cgroup { path: cgroup_root.to_path_buf(), source })?;

        for name in [PROG_CONNECT4, PROG_CONNECT6] {
            let prog: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .ok_or(EbpfError::NoProgram(name))?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            prog.load().map_err(|source| EbpfError::Program { name, source })?;
            // On kernels >= 5.7 aya attaches with bpf_link_create, whose cgroup links always
            // coexist with other programs (a CNI's own connect4); the kernel rejects
            // BPF_F_ALLOW_MULTI there, so "Single" (flags 0) is the mode that means "a link".
            prog.attach(&cgroup, CgroupAttachMode::Single).map_err(|source| EbpfError::Program { name, source })?;
        }

        let sock_ops: &mut SockOps = bpf
            .program_mut(PROG_SOCK_OPS)
            .ok_or(EbpfError::NoProgram(PROG_SOCK_OPS))?
            .try_into()
            .map_err(|source| EbpfError::Program { name: PROG_SOCK_OPS, source })?;
        sock_ops.load().map_err(|source| EbpfError::Program { name: PROG_SOCK_OPS, source })?;
        sock_ops
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|source| EbpfError::Program { name: PROG_SOCK_OPS, source })?;

        let enrolled = take_hash(&mut bpf, MAP_ENROLLED)?;
        let services = take_hash(&mut bpf, MAP_SERVICES)?;
        let orig_by_tuple = take_hash(&mut bpf, MAP_ORIG_BY_TUPLE)?;
        let stats = PerCpuArray::try_from(bpf.take_map(MAP_STATS).ok_or(EbpfError::NoMap(MAP_STATS))?)
            .map_err(|source| EbpfError::Map { name: MAP_STATS, source })?;
        tracing::info!(object = %object.display(), cgroup = %cgroup_root.display(), "eBPF programs attached");
        Ok(MeshEbpf {
            bpf,
            enrolled: Mutex::new(enrolled),
            services: Mutex::new(services),
            orig_by_tuple: Mutex::new(orig_by_tuple),
            stats,
            cgroup_root: cgroup_root.to_path_buf(),
        })
    }

    pub fn enroll(&self, cgroup_id: u64, enrollment: Enrollment) -> Result<(), EbpfError> {
        lock(&self.enrolled)
            .insert(cgroup_id, enrollment, 0)
            .map_err(|source| EbpfError::Map { name: MAP_ENROLLED, source })
    }

    pub fn unenroll(&self, cgroup_id: u64) -> Result<(), EbpfError> {
        match lock(&self.enrolled).remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(EbpfError::Map { name: MAP_ENROLLED, source }),
        }
    }

    /// Makes the service map exactly `wanted`: inserts new VIPs before removing stale ones so a
    /// live VIP is never briefly absent.
    pub fn sync_services(&self, wanted: &std::collections::HashMap<ServiceKey, ServiceValue>) -> Result<(), EbpfError> {
        let mut map = lock(&self.services);
        let err = |source| EbpfError::Map { name: MAP_SERVICES, source };
        for (k, v) in wanted {
            map.insert(k, v, 0).map_err(err)?;
        }
        let stale: Vec<ServiceKey> = map.keys().filter_map(Result::ok).filter(|k| !wanted.contains_key(k)).collect();
        for k in stale {
            let _ = map.remove(&k);
        }
        Ok(())
    }

    /// Where a redirected connection was really going, looked up by what the proxy sees on
    /// `accept()`. The entry is consumed: each connection is read once.
    pub fn take_original_dst(&self, netns_cookie: u64, peer: SocketAddrV4) -> Option<(SocketAddrV4, OriginalDst)> {
        let key = TupleKey { netns_cookie, src_ip4: u32::from(*peer.ip()).to_be(), src_port: peer.port(), _pad: 0 };
        let mut map = lock(&self.orig_by_tuple);
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        let ip = Ipv4Addr::from(u32::from_be(orig.ip4));
        Some((SocketAddrV4::new(ip, orig.port), orig))
    }

    pub fn stats(&self) -> KernelStats {
        let sum = |idx: u32| self.stats.get(&idx, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        KernelStats {
            connects_seen: sum(mesh_common::stats::CONNECT_SEEN),
            connects_redirected: sum(mesh_common::stats::CONNECT_REDIRECTED),
            established_indexed: sum(mesh_common::stats::ESTABLISHED_INDEXED),
        }
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Detaches both programs now (also happens on drop).
    pub fn detach(self) {
        drop(self.bpf);
        tracing::info!("eBPF programs detached");
    }
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, EbpfError> {
    let map = bpf.take_map(name).ok_or(EbpfError::NoMap(name))?;
    BpfHashMap::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a map handle cannot leave the kernel map inconsistent; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `SO_NETNS_COOKIE`: the same cookie `bpf_get_netns_cookie` returns in the kernel.
pub fn netns_cookie_of(fd: &impl AsRawFd) -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, pointer and length for an 8-byte option.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
